// Command chaos proves the whole system under abuse: it starts a manager
// (this same binary, as cmd/seed is) with a producer and consumers of the
// queue "jobs", then for -duration kills, stops and rescales workers,
// edits the configuration badly and well, and throws garbage and stalled
// connections at both sockets. At the end it stops production, lets the
// queue drain and proves, from the manager's log, its status and /proc:
// no item lost, every duplicate explained by a kill, every service back at
// its count, no fd/goroutine/memory growth, no zombie, no process outside
// the tree, and a clean SIGTERM. It exits 1 if any proof fails.
//
//	go run ./cmd/chaos -duration 60s [-seed N] [-rate 500] [-consumers 3]
//	go run ./cmd/chaos -store jetstream -bridge bin/gotyledon-jetstream
//
// With -store jetstream the queue is kept in JetStream (a local server,
// the bridge a service of the manager), and the chaos also kills the
// manager itself, starting another on the same files: no item may be lost
// across it.
//
// One binary is three things: with a worker's environment (set by the
// manager) it is a Go worker, with CHAOS_MANAGER=1 it is the manager
// (program.Main), and otherwise it is the driver.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/gotyledon/gotyledon/service"
)

// envManager marks the process the driver starts as the manager.
const envManager = "CHAOS_MANAGER"

func main() {
	if isManagerOrWorker() {
		os.Exit(chaosProgram().Main(os.Args))
	}
	opts := defaultOptions()
	flag.DurationVar(&opts.Duration, "duration", opts.Duration, "how long the chaos lasts (then the queue drains and the proofs run)")
	flag.Uint64Var(&opts.Seed, "seed", 0, "seed of the chaos schedule (0: from the clock; printed, so a run can be replayed)")
	flag.IntVar(&opts.Rate, "rate", opts.Rate, "items per second the producer puts")
	flag.IntVar(&opts.Consumers, "consumers", opts.Consumers, "consumer workers at start and at the end")
	flag.DurationVar(&opts.Work, "work", opts.Work, "how long a consumer holds an item between taking it and acknowledging it")
	flag.IntVar(&opts.Capacity, "capacity", opts.Capacity, "capacity of the queue jobs")
	flag.StringVar(&opts.Store, "store", opts.Store, "the queue's store: memory, or jetstream (then the manager is killed and restarted too)")
	flag.StringVar(&opts.Bridge, "bridge", "", "with -store jetstream: the gotyledon-jetstream program (go build ./cmd/gotyledon-jetstream)")
	flag.BoolVar(&opts.Keep, "keep", false, "keep the temporary directory (config, manager log) even when every proof passes")
	flag.Parse()
	if flag.NArg() != 0 {
		fmt.Fprintf(os.Stderr, "chaos: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}
	if opts.Seed == 0 {
		opts.Seed = uint64(time.Now().UnixNano())
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, opts, os.Stdout); err != nil {
		fmt.Fprintf(os.Stdout, "chaos: FAIL: %v\n", err)
		os.Exit(1)
	}
	fmt.Fprintln(os.Stdout, "chaos: PASS")
}

// isManagerOrWorker reports whether this process is the manager the driver
// started, or one of its Go workers.
func isManagerOrWorker() bool {
	return service.IsWorker() || os.Getenv(envManager) == "1"
}
