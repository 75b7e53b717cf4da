package main

// The Go services the manager runs: a producer that puts numbered items on
// the queue and a consumer that takes them. Their stdout lines, which the
// manager logs as entries with msg = the line and the worker's pid, are
// the driver's record of what happened to every item:
//
//	producer ORIGIN         printed first, ORIGIN = PID.NONCE, unique to the process
//	produced ORIGIN-SEQ     printed after the Put returned success
//	consumed ORIGIN-SEQ     printed after the Get, before the Ack
//
// An origin carries a random nonce beside the pid: over a long run pids are
// reused (pid_max is often 32768), and an item id must never be.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"time"

	"github.com/gotyledon/gotyledon/ipc"
	"github.com/gotyledon/gotyledon/service"
	"github.com/gotyledon/gotyledon/supervisor/program"
)

const (
	queueName = "jobs"
	// envRate is the producer's items per second, from the config's env.
	envRate = "CHAOS_RATE"
	// envWork is how long a consumer holds an item between its print and
	// its Ack (a Go duration), so that kills find items in flight.
	envWork = "CHAOS_WORK"
)

func chaosProgram() *program.Program {
	p := program.New()
	p.Register("producer", func(w service.Worker) (service.Service, error) { return producer{}, nil })
	p.Register("consumer", func(w service.Worker) (service.Service, error) { return consumer{w}, nil })
	return p
}

type producer struct{}

// Run puts ORIGIN-0, ORIGIN-1 ... at the configured rate. Ids are unique
// across restarts, and across reuses of a pid (the nonce). A Put is never withdrawn half-way: it runs
// without the stop's cancellation, so an item is either put and announced,
// or the worker was killed (SIGKILL by the chaos or by the manager's
// stop_timeout) between the Put and the print.
func (producer) Run(ctx context.Context) error {
	rate, err := strconv.Atoi(os.Getenv(envRate))
	if err != nil || rate <= 0 {
		return fmt.Errorf("%s=%q: want a positive number", envRate, os.Getenv(envRate))
	}
	q, err := ipc.DialEnv(ctx)
	if err != nil {
		return fmt.Errorf("connect to the queue: %w", err)
	}
	defer q.Close()
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	origin := fmt.Sprintf("%d.%08x", os.Getpid(), rand.Uint32())
	fmt.Printf("producer %s\n", origin)
	for seq := 0; ; seq++ {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		id := origin + "-" + strconv.Itoa(seq)
		if err := q.Put(context.WithoutCancel(ctx), queueName, []byte(id)); err != nil {
			return fmt.Errorf("put %s: %w", id, err)
		}
		fmt.Printf("produced %s\n", id)
	}
}

type consumer struct{ w service.Worker }

// consumerPrefetch is what the consumers with an even worker id prefetch;
// those with an odd id get one item at a time, so that a run exercises both.
const consumerPrefetch = 8

// Run takes items, prints each, works on it (sleeps CHAOS_WORK), then
// acknowledges it. An item printed and not acknowledged (the worker was
// killed in between) is delivered again: a duplicate, whose first consumer
// must be a killed process. A prefetching consumer killed also holds items
// pushed and not yet printed: they are delivered again, and printed once.
func (c consumer) Run(ctx context.Context) error {
	q, err := ipc.DialEnv(ctx)
	if err != nil {
		return fmt.Errorf("connect to the queue: %w", err)
	}
	defer q.Close() // sends a prefetching consumer's queued acks
	work, err := time.ParseDuration(os.Getenv(envWork))
	if err != nil || work < 0 {
		return fmt.Errorf("%s=%q: want a duration", envWork, os.Getenv(envWork))
	}
	next := func() (*ipc.Delivery, error) { return q.Get(ctx, queueName) }
	ack := func(d *ipc.Delivery) error { return q.Ack(context.WithoutCancel(ctx), d) }
	if c.w.ID%2 == 0 {
		jobs, err := q.Consume(ctx, queueName, consumerPrefetch)
		if err != nil {
			return fmt.Errorf("consume: %w", err)
		}
		next = func() (*ipc.Delivery, error) { return jobs.Next(ctx) }
		ack = func(d *ipc.Delivery) error { return jobs.Ack(d) }
	}
	for {
		job, err := next()
		if errors.Is(err, ipc.ErrDraining) {
			// Drained before a recycle: what was taken is acknowledged;
			// the stop comes next.
			<-ctx.Done()
			return nil
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("take: %w", err)
		}
		fmt.Printf("consumed %s\n", job.Body)
		if work > 0 {
			time.Sleep(work) // the "work": the item is in flight meanwhile
		}
		if err := ack(job); err != nil {
			return fmt.Errorf("ack %s: %w", job.Body, err)
		}
	}
}
