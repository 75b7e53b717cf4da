// Command compute is the seed's compute example in Go: eight tasks, each
// summing a million random integers from 1 to 100, mapped over the workers
// of a compute service, then the pool's statistics, as futurist's
// executor.statistics prints them. One binary is the manager, every
// worker, and the client that maps:
//
//	go run ./cmd/compute                 a manager of 4 compute workers in the background, the map, then its stop
//	go run ./cmd/compute demo [FLAGS]    the same, with map's flags
//	go run ./cmd/compute run             the manager alone (a whole gotyledon: status, scale, reload)
//	go run ./cmd/compute map [FLAGS]     the map, against a manager already running
//
// Task i sums numbers drawn from a generator seeded with i, so that a task
// run twice (its worker died) gives the same sum, and the results can be
// checked. With --kill-worker, map SIGKILLs a worker while tasks run: its
// task is delivered again to another, and every result still arrives once.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gotyledon/gotyledon/config"
	"github.com/gotyledon/gotyledon/ipc"
	"github.com/gotyledon/gotyledon/service"
	"github.com/gotyledon/gotyledon/supervisor/control"
	"github.com/gotyledon/gotyledon/supervisor/program"
)

const (
	queue   = "compute" // the queue of the tasks
	workers = 4         // the compute service's workers
)

func main() {
	p := program.New()
	p.Queue(queue)
	p.Go("compute", newWorker, config.Workers(workers))
	switch {
	case service.IsWorker():
	case len(os.Args) > 1 && os.Args[1] == "map":
		os.Exit(mapCommand(os.Args[2:], os.Stdout, os.Stderr))
	case len(os.Args) == 1 || os.Args[1] == "demo":
		os.Exit(demo(os.Args[min(2, len(os.Args)):], os.Stdout, os.Stderr))
	}
	os.Exit(p.Main(os.Args))
}

// newWorker is a compute worker: it answers tasks "I N" with the sum of N
// integers from 1 to 100 drawn from a generator seeded with I.
func newWorker(service.Worker) (service.Service, error) {
	return service.Func(func(ctx context.Context) error {
		q, err := ipc.DialEnv(ctx)
		if err != nil {
			return fmt.Errorf("connect to the queue: %w", err)
		}
		defer q.Close()
		// One task at a time: a task is long, and one taken ahead would
		// wait here while another worker could run it.
		tasks, err := q.Consume(ctx, queue, 1)
		if err != nil {
			return fmt.Errorf("consume: %w", err)
		}
		for {
			t, err := tasks.Next(ctx)
			if errors.Is(err, ipc.ErrDraining) {
				// Recycled: the task in hand was answered; wait for
				// the stop rather than end as a crash would.
				<-ctx.Done()
				return nil
			}
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("next task: %w", err)
			}
			sum, err := compute(string(t.Body))
			if err != nil {
				err = t.Fail(ctx, err)
			} else {
				err = t.Reply(ctx, []byte(strconv.FormatInt(sum, 10)))
			}
			if err != nil {
				return fmt.Errorf("answer task %q: %w", t.Body, err)
			}
		}
	}), nil
}

// compute is the seed's compute(): the sum of n random integers from 1 to
// 100, for the task "seed n".
func compute(task string) (int64, error) {
	var seed uint64
	var n int
	if _, err := fmt.Sscanf(task, "%d %d", &seed, &n); err != nil {
		return 0, fmt.Errorf("task %q is not \"SEED COUNT\": %w", task, err)
	}
	r := rand.New(rand.NewPCG(seed, 0))
	var sum int64
	for range n {
		sum += int64(r.IntN(100) + 1)
	}
	return sum, nil
}

// mapOptions are map's flags.
type mapOptions struct {
	tasks, size int
	kill        bool
	queueSocket string
	ctlSocket   string
	timeout     time.Duration
}

func parseMap(name string, args []string, stderr io.Writer) (mapOptions, error) {
	var o mapOptions
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&o.tasks, "tasks", 8, "tasks to map")
	fs.IntVar(&o.size, "size", 1_000_000, "integers each task sums")
	fs.BoolVar(&o.kill, "kill-worker", false, "SIGKILL a compute worker while tasks run")
	fs.StringVar(&o.queueSocket, "socket", ipc.DefaultSocketPath(os.Getenv), "the manager's queue socket")
	fs.StringVar(&o.ctlSocket, "control-socket", control.SocketPath(&config.Config{}, os.Getenv), "the manager's control socket")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Minute, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if o.tasks < 1 || o.size < 0 {
		err := fmt.Errorf("%s: --tasks must be at least 1 and --size at least 0", name)
		fmt.Fprintln(stderr, err)
		return o, err
	}
	return o, nil
}

// mapCommand is `compute map`: it returns the exit code.
func mapCommand(args []string, stdout, stderr io.Writer) int {
	o, err := parseMap("compute map", args, stderr)
	if err != nil {
		return 2
	}
	if err := runMap(o, stdout); err != nil {
		fmt.Fprintln(stderr, "compute:", err)
		return 1
	}
	return 0
}

// runMap maps the tasks over the compute service and prints the results and
// the statistics.
func runMap(o mapOptions, stdout io.Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	q, err := ipc.Dial(ctx, o.queueSocket)
	if err != nil {
		return err
	}
	defer q.Close()
	ctl := control.NewClient(o.ctlSocket)
	inputs := make([][]byte, o.tasks)
	for i := range inputs {
		inputs[i] = []byte(fmt.Sprintf("%d %d", i, o.size))
	}
	killed := make(chan string, 1)
	killCtx, stopKilling := context.WithCancel(ctx)
	defer stopKilling()
	if o.kill {
		go func() { killed <- killWorker(killCtx, ctl) }()
	}
	start := time.Now()
	results, err := q.Map(ctx, queue, inputs)
	elapsed := time.Since(start)
	stopKilling()
	if err != nil {
		return err
	}
	if o.kill {
		fmt.Fprintln(stdout, <-killed)
	}
	sums := make([]string, len(results))
	for i, r := range results {
		sums[i] = string(r)
	}
	fmt.Fprintf(stdout, "rlt =  [%s]\n", strings.Join(sums, ", "))
	fmt.Fprintf(stdout, "time = %.3f\n", elapsed.Seconds())
	st, err := ctl.Status(ctx)
	if err != nil {
		return fmt.Errorf("statistics: %w", err)
	}
	for _, qs := range st.Queues {
		if qs.Name == queue && qs.Tasks != nil {
			t := qs.Tasks
			fmt.Fprintf(stdout, "statistics: submitted %d, done %d, failed %d, cancelled %d, redelivered %d, running %d; runtime p50 %s, p99 %s\n",
				t.Submitted, t.Done, t.Failed, t.Cancelled, t.Redelivered, t.Running,
				seconds(t.RuntimeP50Seconds), seconds(t.RuntimeP99Seconds))
		}
	}
	return nil
}

func seconds(s float64) string {
	return time.Duration(s * float64(time.Second)).Round(10 * time.Microsecond).String()
}

// killWorker waits until every compute worker runs a task, SIGKILLs one of
// them, and says which.
func killWorker(ctx context.Context, ctl *control.Client) string {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		st, err := ctl.Status(ctx)
		if err == nil {
			if s := st.Service("compute"); s != nil && s.Tasks != nil && s.Running > 0 && s.Tasks.Running >= s.Running {
				for _, w := range s.Workers {
					if w.PID != 0 && syscall.Kill(w.PID, syscall.SIGKILL) == nil {
						return fmt.Sprintf("killed compute worker %d (pid %d) while tasks ran", w.ID, w.PID)
					}
				}
			}
		}
		select {
		case <-ctx.Done():
			return "killed no worker: the tasks were done before every worker ran one"
		case <-tick.C: // the status has no event for a task taken: polled
		}
	}
}

// demo runs a manager of this program in the background, in a runtime
// directory of its own, maps the tasks over it, and stops it.
func demo(args []string, stdout, stderr io.Writer) int {
	o, err := parseMap("compute demo", args, stderr)
	if err != nil {
		return 2
	}
	dir, err := os.MkdirTemp("", "compute")
	if err != nil {
		fmt.Fprintln(stderr, "compute:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(stderr, "compute:", err)
		return 1
	}
	logPath := filepath.Join(dir, "manager.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		fmt.Fprintln(stderr, "compute:", err)
		return 1
	}
	defer logFile.Close()
	mgr := exec.Command(exe, "run")
	mgr.Env = append(os.Environ(), "RUNTIME_DIRECTORY="+dir)
	mgr.Stdout, mgr.Stderr = logFile, logFile
	if err := mgr.Start(); err != nil {
		fmt.Fprintln(stderr, "compute: start the manager:", err)
		return 1
	}
	fmt.Fprintf(stdout, "manager pid %d: %d compute workers (its log: %s, removed at the end)\n", mgr.Process.Pid, workers, logPath)
	o.queueSocket, o.ctlSocket = filepath.Join(dir, "queue.sock"), filepath.Join(dir, "control.sock")
	code := 0
	if err := waitReady(control.NewClient(o.ctlSocket), 30*time.Second); err != nil {
		fmt.Fprintln(stderr, "compute:", err)
		code = 1
	} else if err := runMap(o, stdout); err != nil {
		fmt.Fprintln(stderr, "compute:", err)
		code = 1
	}
	_ = mgr.Process.Signal(syscall.SIGTERM)
	if err := mgr.Wait(); err != nil {
		fmt.Fprintf(stderr, "compute: the manager: %v (its log follows)\n", err)
		if b, rerr := os.ReadFile(logPath); rerr == nil {
			stderr.Write(b)
		}
		code = 1
	}
	return code
}

// waitReady waits until the manager says it is ready: its workers are up,
// as a pool's are before its first submit.
func waitReady(ctl *control.Client, within time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	for {
		st, err := ctl.Status(ctx)
		if err == nil && st.Ready {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the manager was not ready within %v (last: %v)", within, err)
		case <-time.After(10 * time.Millisecond): // nothing to wait on before the socket exists: polled
		}
	}
}
