package supervisor_test

// The test binary is its own cast of processes, as in os/exec's tests:
//
//   - run with GOTYLEDON_TEST_MANAGER=1 it is a gotyledon manager (a
//     program.Program with the Go services below registered);
//   - re-executed by that manager for a `run:` service it is a Go worker
//     (Program.Main sees the worker environment);
//   - run with TEST_HELPER=name it is a small command (helperCommands), for
//     `command:` services and for the grandchildren of workers.
//
// Tests start a manager with --log-format json and wait, with deadlines, for
// the events it logs; nothing waits on a bare sleep.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/coreos/go-systemd/v22/daemon"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/gotyledon/gotyledon/config"
	"github.com/gotyledon/gotyledon/ipc"
	"github.com/gotyledon/gotyledon/service"
	"github.com/gotyledon/gotyledon/supervisor"
	"github.com/gotyledon/gotyledon/supervisor/program"
)

const envTestManager = "GOTYLEDON_TEST_MANAGER"
const envHelper = "TEST_HELPER"

func TestMain(m *testing.M) {
	if service.IsWorker() || os.Getenv(envTestManager) == "1" {
		p := program.New()
		addTestServices(p.Registry())
		p.SetHooks(testHooks())
		os.Exit(p.Main(os.Args))
	}
	if name := os.Getenv(envHelper); name != "" {
		os.Exit(helperCommands[name]())
	}
	os.Exit(m.Run())
}

// addTestServices registers the Go services the tests' managers can run.
func addTestServices(reg *service.Registry) {
	// sleeper says who it is, then works until asked to stop.
	reg.Register("sleeper", func(w service.Worker) (service.Service, error) {
		return service.Func(func(ctx context.Context) error {
			fmt.Printf("ready service=%s id=%d pid=%d\n", w.Service, w.ID, w.PID)
			<-ctx.Done()
			fmt.Printf("bye id=%d\n", w.ID)
			return nil
		}), nil
	})
	// hog grows its memory by 2 MiB every 20ms, up to 256 MiB, touching
	// every page, until asked to stop.
	reg.Register("hog", func(w service.Worker) (service.Service, error) {
		return service.Func(func(ctx context.Context) error {
			fmt.Printf("hog up pid=%d\n", w.PID)
			var held [][]byte
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					fmt.Printf("hog stopping, holding %d MiB\n", 2*len(held))
					return nil
				case <-tick.C:
				}
				if len(held) < 128 {
					b := make([]byte, 2<<20)
					for i := 0; i < len(b); i += 4096 {
						b[i] = 1
					}
					held = append(held, b)
				}
			}
		}), nil
	})
	// late-ready reports its own readiness: STATUS=loading at once, READY=1
	// and STATUS=loaded on SIGUSR1.
	reg.Register("late-ready", func(w service.Worker) (service.Service, error) { return lateReady{}, nil })
	// reloader says "reloaded N" each time the manager tells it to reload.
	reg.Register("reloader", func(w service.Worker) (service.Service, error) { return &reloadingSleeper{}, nil })
	// crasher fails at once, every time.
	reg.Register("crasher", func(w service.Worker) (service.Service, error) {
		return service.Func(func(context.Context) error {
			return errors.New("crashing on purpose")
		}), nil
	})
	// stubborn ignores the request to stop; only SIGKILL ends it.
	reg.Register("stubborn", func(w service.Worker) (service.Service, error) {
		return service.Func(func(ctx context.Context) error {
			fmt.Printf("ready id=%d\n", w.ID)
			select {} // never returns, ctx or not
		}), nil
	})
	// parent starts a child in the worker's process group, on the worker's
	// stdout and stderr, reports its pid, and returns as soon as its context
	// ends, leaving the child (which takes a while to clean up on SIGTERM)
	// behind.
	reg.Register("parent", func(w service.Worker) (service.Service, error) {
		return service.Func(func(ctx context.Context) error {
			child := helperCmd("clean-up-on-term")
			child.Stdout, child.Stderr = os.Stdout, os.Stderr
			if err := child.Start(); err != nil {
				return err
			}
			fmt.Printf("child pid=%d\n", child.Process.Pid)
			<-ctx.Done()
			return nil
		}), nil
	})
	// orphaner starts grandchildren in sessions of their own (beyond the
	// reach of its process group), reports their pids, and exits with code
	// 10+id on SIGUSR1: its grandchildren, which read its pipe, then die with
	// it, as orphans of the manager.
	reg.Register("orphaner", func(w service.Worker) (service.Service, error) {
		return service.Func(func(ctx context.Context) error {
			usr1 := make(chan os.Signal, 1)
			signal.Notify(usr1, syscall.SIGUSR1)
			n, _ := strconv.Atoi(os.Getenv("ORPHANS"))
			r, wr, err := os.Pipe()
			if err != nil {
				return err
			}
			var pids []string
			for range n {
				// cat reads the pipe until it closes; stdout and stderr
				// are /dev/null.
				c := exec.Command("/bin/cat")
				c.Stdin = r
				c.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
				if err := c.Start(); err != nil {
					return err
				}
				pids = append(pids, strconv.Itoa(c.Process.Pid))
			}
			r.Close()
			fmt.Printf("orphans pids=%s\n", strings.Join(pids, ","))
			select {
			case <-usr1:
				os.Exit(10 + w.ID)
			case <-ctx.Done():
			}
			wr.Close()
			return nil
		}), nil
	})
	// drainer, when asked to stop, writes 3000 numbered lines and "LAST" in
	// one go, and returns at once: its output is still in the pipe when it
	// exits.
	reg.Register("drainer", func(w service.Worker) (service.Service, error) {
		return service.Func(func(ctx context.Context) error {
			fmt.Printf("ready id=%d\n", w.ID)
			<-ctx.Done()
			out := bufio.NewWriterSize(os.Stdout, 64<<10)
			for i := range drainLines {
				fmt.Fprintf(out, "n=%d\n", i)
			}
			fmt.Fprintln(out, "LAST")
			return out.Flush()
		}), nil
	})
	// byer, when its context ends, writes to stdout until a write fails (as
	// it does once the manager, its reader, is gone; for 300ms at most),
	// then creates $DIR/bye-ID holding that write's error, and returns. A
	// worker killed by SIGPIPE would never get to the file.
	reg.Register("byer", func(w service.Worker) (service.Service, error) {
		return service.Func(func(ctx context.Context) error {
			fmt.Printf("ready id=%d\n", w.ID)
			<-ctx.Done()
			werr := errors.New("stdout still writable after 300ms")
			for end := time.Now().Add(300 * time.Millisecond); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
				if _, err := fmt.Printf("bye id=%d\n", w.ID); err != nil {
					werr = err
					break
				}
			}
			return os.WriteFile(filepath.Join(os.Getenv("DIR"), fmt.Sprintf("bye-%d", w.ID)), []byte(werr.Error()), 0o644)
		}), nil
	})
	// fdlister writes where each of its open descriptors leads, then waits.
	reg.Register("fdlister", func(w service.Worker) (service.Service, error) {
		return service.Func(func(ctx context.Context) error {
			entries, err := os.ReadDir("/proc/self/fd")
			if err != nil {
				return err
			}
			for _, e := range entries {
				target, _ := os.Readlink("/proc/self/fd/" + e.Name())
				fmt.Printf("fd %s -> %s\n", e.Name(), target)
			}
			fmt.Println("fds listed")
			<-ctx.Done()
			return nil
		}), nil
	})
	// longline writes one line longer than the manager logs in one entry.
	reg.Register("longline", func(w service.Worker) (service.Service, error) {
		return service.Func(func(ctx context.Context) error {
			fmt.Println(strings.Repeat("0123456789", 4000)) // 40,000 bytes
			fmt.Println("after the long line")
			<-ctx.Done()
			return nil
		}), nil
	})
	// consumer takes items from $QUEUE one at a time and prints each as
	// "got ITEM deliveries N", then acknowledges it; with HOLD=1 it keeps
	// the first item it gets, unacknowledged, until it is killed.
	// streamer consumes QUEUE with a prefetch of 8, says "done ITEM" for
	// each item, 10ms apart, and acknowledges it; drained, it says so and
	// waits for its stop.
	reg.Register("streamer", func(w service.Worker) (service.Service, error) {
		return service.Func(func(ctx context.Context) error {
			q, err := ipc.DialEnv(ctx)
			if err != nil {
				return err
			}
			defer q.Close()
			c, err := q.Consume(ctx, os.Getenv("QUEUE"), 8)
			if err != nil {
				return err
			}
			for {
				d, err := c.Next(ctx)
				switch {
				case errors.Is(err, ipc.ErrDraining):
					fmt.Println("drained")
					<-ctx.Done()
					return nil
				case ctx.Err() != nil:
					return nil
				case err != nil:
					return err
				}
				time.Sleep(10 * time.Millisecond)
				fmt.Printf("done %s\n", d.Body)
				if err := c.Ack(d); err != nil {
					return err
				}
			}
		}), nil
	})
	reg.Register("consumer", func(w service.Worker) (service.Service, error) {
		return service.Func(func(ctx context.Context) error {
			q, err := ipc.DialEnv(ctx)
			if err != nil {
				return err
			}
			defer q.Close()
			for {
				d, err := q.Get(ctx, os.Getenv("QUEUE"))
				if err != nil {
					if ctx.Err() != nil {
						return nil
					}
					return err
				}
				fmt.Printf("got %s deliveries %d\n", d.Body, d.Deliveries)
				if os.Getenv("HOLD") == "1" {
					<-ctx.Done()
					return nil
				}
				if err := q.Ack(ctx, d); err != nil {
					return err
				}
			}
		}), nil
	})
}

// reloadingSleeper works until stopped and reloads in place.
type reloadingSleeper struct{ reloads int }

func (r *reloadingSleeper) Run(ctx context.Context) error {
	fmt.Println("ready")
	<-ctx.Done()
	return nil
}

func (r *reloadingSleeper) Reload(context.Context) error {
	r.reloads++
	fmt.Printf("reloaded %d\n", r.reloads)
	return nil
}

// testHooks are the test manager's hooks, driven by its environment:
// TEST_HOOK_LOG=1 has each hook say on stderr that it ran ("hook ..."), and
// TEST_RELOAD_GROW=SERVICE=N has the reload hook Reconfigure SERVICE to N.
func testHooks() supervisor.Hooks {
	say := func(format string, args ...any) {
		if os.Getenv("TEST_HOOK_LOG") == "1" {
			fmt.Fprintf(os.Stderr, "hook "+format+"\n", args...)
		}
	}
	return supervisor.Hooks{
		OnReload: func(m *supervisor.Supervisor) {
			say("reload")
			if svc, n, ok := strings.Cut(os.Getenv("TEST_RELOAD_GROW"), "="); ok {
				workers, _ := strconv.Atoi(n)
				if err := m.Reconfigure(context.Background(), svc, workers); err != nil {
					say("reconfigure failed: %v", err)
				}
			}
		},
		OnNewWorker: func(w supervisor.WorkerEvent) { say("new-worker %s %d %d", w.Service, w.ID, w.PID) },
		OnDeadWorker: func(w supervisor.WorkerEvent) supervisor.DeadWorkerAction {
			say("dead-worker %s %d %d %s %d %d", w.Service, w.ID, w.PID, w.Status, w.ExitCode, w.Signal)
			// A service named so is essential by the hook's word.
			if w.Service == "essential-by-hook" && !w.Stopped {
				return supervisor.StopManager
			}
			return supervisor.KeepRunning
		},
		OnTerminate: func() { say("terminate") },
	}
}

// lateReady is the late-ready service.
type lateReady struct{}

func (lateReady) ReportsReady() bool { return true }

func (lateReady) Run(ctx context.Context) error {
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	if err := service.Status("loading"); err != nil {
		return err
	}
	fmt.Println("loading")
	select {
	case <-usr1:
	case <-ctx.Done():
		return nil
	}
	if err := service.Ready(); err != nil {
		return err
	}
	if err := service.Status("loaded"); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}

// helperCommands are the test binary's small commands (TEST_HELPER=name).
var helperCommands = map[string]func() int{
	// clean-up-on-term says it is ready once it catches SIGTERM; on SIGTERM
	// it takes 300ms to clean up, says so, and exits 0.
	"clean-up-on-term": func() int {
		term := make(chan os.Signal, 1)
		signal.Notify(term, syscall.SIGTERM)
		fmt.Println("child ready")
		<-term
		time.Sleep(300 * time.Millisecond) // the clean-up
		fmt.Println("child cleaned up")
		return 0
	},
	// bench-worker tells the benchmark it runs, by connecting to
	// $BENCH_SOCKET and writing its pid, then lives until the benchmark
	// closes the connection or kills it. With a notify socket, it says
	// READY=1 first.
	"bench-worker": func() int {
		// Ready at once, under a ready: notify service (BenchmarkRollout).
		if _, err := daemon.SdNotify(false, "READY=1"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		c, err := net.Dial("unix", os.Getenv("BENCH_SOCKET"))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Fprintf(c, "%d\n", os.Getpid())
		_, _ = io.Copy(io.Discard, c)
		return 0
	},
	// early-shutdown runs a Supervisor whose Shutdown came before Run, and
	// says how many workers it started.
	"early-shutdown": func() int {
		cfg, err := config.Parse("early.yaml", []byte("services:\n  s: {command: [/bin/sleep, '1000'], workers: 3}\n"), nil)
		if err != nil {
			fmt.Println(err)
			return 1
		}
		core, logs := observer.New(zap.InfoLevel)
		sup, err := supervisor.New(cfg, supervisor.Options{Logger: zap.New(core)})
		if err != nil {
			fmt.Println(err)
			return 1
		}
		sup.Shutdown(false)
		err = sup.Run(context.Background())
		fmt.Printf("run returned %v; workers started: %d\n", err, logs.FilterMessage("worker started").Len())
		return 0
	},
	// stopped-first runs a Supervisor of two workers and shuts it down
	// once both have started. Its OnDeadWorker hook looks whether Stopped
	// is closed while it runs (it must not be: Stopped waits for the
	// hooks). It prints how many of the workers had exited (pidfds
	// readable) when Stopped was closed, whether Status then failed with
	// ErrStopped, and Run's error.
	"stopped-first": func() int {
		cfg, err := config.Parse("stopped.yaml", []byte("services:\n  s: {command: [/bin/sleep, '1000'], workers: 2}\n"), nil)
		if err != nil {
			fmt.Println(err)
			return 1
		}
		pids := make(chan int, 2)
		var sup *supervisor.Supervisor
		sup, err = supervisor.New(cfg, supervisor.Options{Logger: zap.NewNop(), Hooks: supervisor.Hooks{
			OnNewWorker: func(w supervisor.WorkerEvent) { pids <- w.PID },
			OnDeadWorker: func(supervisor.WorkerEvent) supervisor.DeadWorkerAction {
				time.Sleep(50 * time.Millisecond) // the sweep and more would be done by now
				select {
				case <-sup.Stopped():
					fmt.Println("stopped while a hook ran")
				default:
				}
				return supervisor.KeepRunning
			},
		}})
		if err != nil {
			fmt.Println(err)
			return 1
		}
		ran := make(chan error, 1)
		go func() { ran <- sup.Run(context.Background()) }()
		var fds []int
		for range 2 {
			fd, err := unix.PidfdOpen(<-pids, 0)
			if err != nil {
				fmt.Println("pidfd:", err)
				return 1
			}
			fds = append(fds, fd)
		}
		sup.Shutdown(false)
		<-sup.Stopped()
		exited := 0
		for _, fd := range fds {
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			if n, _ := unix.Poll(pfd, 0); n == 1 {
				exited++
			}
		}
		fmt.Printf("workers exited at stopped: %d\n", exited)
		_, err = sup.Status(context.Background())
		fmt.Printf("status: %v\n", errors.Is(err, supervisor.ErrStopped))
		fmt.Printf("run returned %v\n", <-ran)
		return 0
	},
	// command-at-stop runs a Supervisor of one worker that stops only
	// once its OnTerminate hook's command has started; that command would
	// run 30s, and the shutdown's final sweep stops it. It prints how the
	// command ended, as RunCommand says.
	"command-at-stop": func() int {
		dir, err := os.MkdirTemp("", "cmdstop")
		if err != nil {
			fmt.Println(err)
			return 1
		}
		defer os.RemoveAll(dir)
		// The worker says on a FIFO that its trap is set: a SIGTERM before
		// that would end it at once, and the loop with it.
		fifo := filepath.Join(dir, "armed")
		if err := unix.Mkfifo(fifo, 0o600); err != nil {
			fmt.Println(err)
			return 1
		}
		// The worker stops only once the hook's command has started and
		// said so on another FIFO: the command is surely running when the
		// loop ends, whatever the machine's load.
		begun := filepath.Join(dir, "begun")
		if err := unix.Mkfifo(begun, 0o600); err != nil {
			fmt.Println(err)
			return 1
		}
		cfg, err := config.Parse("cmdstop.yaml", []byte(fmt.Sprintf(`services:
  s: {command: [/bin/sh, -c, 'trap "read x < %s; exit 0" TERM; echo > %s; while :; do sleep 0.05; done']}
`, begun, fifo)), nil)
		if err != nil {
			fmt.Println(err)
			return 1
		}
		var sup *supervisor.Supervisor
		sup, err = supervisor.New(cfg, supervisor.Options{Logger: zap.NewNop(), Hooks: supervisor.Hooks{
			OnTerminate: func() {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				res, err := sup.RunCommand(ctx, supervisor.Command{Path: "/bin/sh", Args: []string{"-c", "echo > " + begun + "; exec sleep 30"}})
				fmt.Printf("command: %s, failed %v, stopped %v\n", res.Status, errors.Is(err, supervisor.ErrCommandFailed), errors.Is(err, supervisor.ErrStopped))
			},
		}})
		if err != nil {
			fmt.Println(err)
			return 1
		}
		ran := make(chan error, 1)
		go func() { ran <- sup.Run(context.Background()) }()
		if _, err := os.ReadFile(fifo); err != nil { // until the worker has written and closed it
			fmt.Println(err)
			return 1
		}
		sup.Shutdown(false)
		fmt.Printf("run returned %v\n", <-ran)
		return 0
	},
	// calls-after-end runs a Supervisor of one worker, which it shuts down
	// as soon as the worker starts. Its OnDeadWorker hook, run as the
	// shutdown reaps the worker, asks for Status until one fails (the loop
	// has ended), then calls Reconfigure and Reload; it prints what each
	// returned, then "hook done", and the program "run returned" once Run
	// has. shutdown_timeout is 30s, and each call may wait 10s: a call that
	// waited for Run to return, which waits for the hook, would show.
	"calls-after-end": func() int {
		cfg, err := config.Parse("end.yaml", []byte("shutdown_timeout: 30s\nservices:\n  s: {command: [/bin/sleep, '1000']}\n"), nil)
		if err != nil {
			fmt.Println(err)
			return 1
		}
		var sup *supervisor.Supervisor
		call := func(what string, f func(context.Context) error) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			fmt.Printf("%s: %v\n", what, f(ctx))
		}
		hooks := supervisor.Hooks{
			OnNewWorker: func(supervisor.WorkerEvent) { sup.Shutdown(false) },
			OnDeadWorker: func(supervisor.WorkerEvent) supervisor.DeadWorkerAction {
				for {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					_, err := sup.Status(ctx)
					cancel()
					if err != nil {
						fmt.Printf("status: %v\n", err)
						break
					}
				}
				call("reconfigure", func(ctx context.Context) error { return sup.Reconfigure(ctx, "s", 2) })
				call("reload", func(ctx context.Context) error { return sup.Reload(ctx, supervisor.ReloadByProgram, cfg) })
				fmt.Println("hook done")
				return supervisor.KeepRunning
			},
		}
		if sup, err = supervisor.New(cfg, supervisor.Options{Hooks: hooks}); err != nil {
			fmt.Println(err)
			return 1
		}
		err = sup.Run(context.Background())
		fmt.Printf("run returned %v\n", err)
		return 0
	},
	// hook-commands runs a Supervisor of a worker that crashes again and
	// again (so that the manager reaps all the while) and one that
	// sleeps. Once the sleeper has started, its OnNewWorker hook runs, from
	// 4 goroutines at once, 200 commands in all with RunCommand: each must
	// come back with its own exit code (its number mod 7) and output. Then
	// one that outlives its context: the context's error, killed. Then one
	// that does not exist: the error. It prints a line for each check and
	// shuts the supervisor down.
	"hook-commands": func() int {
		cfg, err := config.Parse("cmds.yaml", []byte(`services:
  sleeper: {command: [/bin/sleep, '1000']}
  crasher: {command: [/bin/sh, -c, 'exit 1'], workers: 2, restart: {min_uptime: 100ms, backoff_initial: 10ms, backoff_max: 20ms}}
`), nil)
		if err != nil {
			fmt.Println(err)
			return 1
		}
		var sup *supervisor.Supervisor
		hooks := supervisor.Hooks{OnNewWorker: func(w supervisor.WorkerEvent) {
			if w.Service != "sleeper" {
				return
			}
			defer w.Supervisor.Shutdown(false)
			ctx := context.Background()
			var wg sync.WaitGroup
			bad := make(chan string, 200)
			for g := range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := g; i < 200; i += 4 {
						res, err := w.Supervisor.RunCommand(ctx, supervisor.Command{Path: "sh", Args: []string{"-c", fmt.Sprintf("echo out %d; echo err %d >&2; exit %d", i, i, i%7)}})
						want := fmt.Sprintf("out %d\nerr %d\n", i, i)
						if res.ExitCode != i%7 || string(res.Output) != want || (i%7 == 0) != (err == nil) || (err != nil && !errors.Is(err, supervisor.ErrCommandFailed)) {
							bad <- fmt.Sprintf("command %d: %+v, %v", i, res, err)
						}
					}
				}()
			}
			wg.Wait()
			close(bad)
			n := 0
			for b := range bad {
				fmt.Println(b)
				n++
			}
			fmt.Printf("200 commands, %d wrong\n", n)
			short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
			defer cancel()
			res, err := w.Supervisor.RunCommand(short, supervisor.Command{Path: "/bin/sleep", Args: []string{"1000"}})
			fmt.Printf("cancelled: %v; %s\n", errors.Is(err, context.DeadlineExceeded), res.Status)
			_, err = w.Supervisor.RunCommand(ctx, supervisor.Command{Path: "/no/such/program"})
			fmt.Printf("missing: %v\n", err)
		}}
		if sup, err = supervisor.New(cfg, supervisor.Options{Hooks: hooks, Logger: zap.NewNop()}); err != nil {
			fmt.Println(err)
			return 1
		}
		if err := sup.Run(context.Background()); err != nil {
			fmt.Println(err)
			return 1
		}
		return 0
	},
	// cli is the gotyledon command line, for a worker that runs one
	// (queue get, say): workers do not inherit GOTYLEDON_TEST_MANAGER.
	"cli": func() int { return program.New().Main(os.Args) },
	// notifier speaks sd_notify to $NOTIFY_SOCKET: STATUS=waiting, then,
	// on SIGUSR1 (at once with NOTIFY_AT_ONCE=1; never with
	// NOTIFY_NEVER=1), READY=1 and STATUS=serving. It prints "waiting GEN"
	// and "serving GEN" ($GEN), and exits 0 on SIGTERM. With
	// NOTIFY_PING=1 it sends WATCHDOG=1 fifty times per $WATCHDOG_USEC.
	"notifier": func() int {
		sigs := make(chan os.Signal, 2)
		signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGTERM)
		notify := func(state string) {
			if _, err := daemon.SdNotify(false, state); err != nil {
				fmt.Fprintln(os.Stderr, "sd_notify:", err)
			}
		}
		if os.Getenv("NOTIFY_PING") == "1" {
			us, _ := strconv.Atoi(os.Getenv("WATCHDOG_USEC"))
			go func() {
				for range time.Tick(time.Duration(us) * time.Microsecond / 50) {
					notify("WATCHDOG=1")
				}
			}()
		}
		gen := os.Getenv("GEN")
		notify("STATUS=waiting")
		fmt.Printf("waiting %s\n", gen)
		goAhead := os.Getenv("NOTIFY_AT_ONCE") == "1"
		for {
			if goAhead && os.Getenv("NOTIFY_NEVER") != "1" {
				notify("READY=1\nSTATUS=serving")
				fmt.Printf("serving %s\n", gen)
				goAhead = false
			}
			if sig := <-sigs; sig == syscall.SIGTERM {
				return 0
			}
			goAhead = true
		}
	},
	// env prints the variables a worker may or may not see, then waits.
	"env": func() int {
		for _, k := range []string{"GOTYLEDON_SERVICE", "GOTYLEDON_WORKER_ID", "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "WATCHDOG_USEC", "JOURNAL_STREAM", "GOTYLEDON_RUN", "GOTYLEDON_EXTRA", "FOO"} {
			v, ok := os.LookupEnv(k)
			if !ok {
				v = "<unset>"
			}
			fmt.Printf("env %s=%s\n", k, v)
		}
		wd, _ := os.Getwd()
		fmt.Printf("cwd %s\n", wd)
		select {}
	},
}

// goraceEnv is the race detector's setting for every process the tests
// start (managers, and so their workers, and helpers): stop at the first
// race, so that a racy process fails (exit 66) rather than run on, and do not
// wait the default second at each exit, since managers and workers exit
// often. A manager's race report is on its stderr, which startManager's
// cleanup checks; a worker's is logged by its manager.
const goraceEnv = "GORACE=halt_on_error=1 atexit_sleep_ms=0"

// drainLines is how many numbered lines a drainer writes when it stops.
const drainLines = 3000

// helperCmd is a command that runs the test binary as helper name.
func helperCmd(name string) *exec.Cmd {
	exe, _ := os.Executable()
	c := exec.Command(exe)
	c.Env = append(os.Environ(), envHelper+"="+name, goraceEnv)
	return c
}

// entry is one log line of a manager: a JSON object, or {"raw": line}.
type entry map[string]any

func (e entry) str(k string) string { s, _ := e[k].(string); return s }
func (e entry) int(k string) int {
	f, ok := e[k].(float64)
	if !ok {
		return -1
	}
	return int(f)
}
func (e entry) has(k string) bool { _, ok := e[k]; return ok }

// at is when the manager logged e: its "ts", ISO8601 to the millisecond
// (2026-11-25T18:36:11.397Z).
func (e entry) at(t *testing.T) time.Time {
	t.Helper()
	ts, err := time.Parse("2006-01-02T15:04:05.000Z0700", e.str("ts"))
	if err != nil {
		t.Fatalf("entry %q: bad ts: %v", e.str("msg"), err)
	}
	return ts
}

// is reports whether e's message is msg and its fields hold the given
// values (strings or ints).
func (e entry) is(msg string, kv ...any) bool {
	if e.str("msg") != msg {
		return false
	}
	for i := 0; i+1 < len(kv); i += 2 {
		k := kv[i].(string)
		switch v := kv[i+1].(type) {
		case string:
			if e.str(k) != v {
				return false
			}
		case int:
			if e.int(k) != v {
				return false
			}
		}
	}
	return true
}

// manager is a gotyledon manager process under test.
type manager struct {
	t      *testing.T
	cmd    *exec.Cmd
	config string

	// runtimeDir is the manager's $RUNTIME_DIRECTORY: its default sockets
	// are there.
	runtimeDir string

	mu      sync.Mutex
	entries []entry
	changed chan struct{} // closed and replaced when entries grow or the process ends
	exited  bool
	code    int
}

// waitTimeout bounds every wait for an event; generous, for -race on a
// loaded two-core machine. A test that needs it is failing anyway.
const waitTimeout = 20 * time.Second

// startManager writes yaml to a file and runs a manager on it.
func startManager(t *testing.T, yaml string, extraEnv ...string) *manager {
	t.Helper()
	return startManagerFiles(t, yaml, nil, extraEnv...)
}

// startManagerFiles is startManager for a manager that inherits files, as
// descriptors 3, 4... (exec.Cmd.ExtraFiles).
func startManagerFiles(t *testing.T, yaml string, files []*os.File, extraEnv ...string) *manager {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "gotyledon.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return launchManager(t, path, []string{"run", "--log-format", "json", "--log-level", "debug", "-c", path}, files, extraEnv...)
}

func startManagerArgs(t *testing.T, config string, args []string, extraEnv ...string) *manager {
	t.Helper()
	return launchManager(t, config, args, nil, extraEnv...)
}

func launchManager(t *testing.T, config string, args []string, files []*os.File, extraEnv ...string) *manager {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	m := &manager{t: t, config: config, changed: make(chan struct{})}
	m.cmd = exec.Command(exe, args...)
	// Each manager gets its own socket directory, as systemd's
	// RuntimeDirectory gives one: managers of tests that run in parallel
	// must not meet on the default control socket. A short path, since a
	// socket's path has at most 107 bytes.
	runtimeDir, err := os.MkdirTemp("", "gty")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(runtimeDir) })
	m.runtimeDir = runtimeDir
	m.cmd.Env = append(append(os.Environ(), envTestManager+"=1", goraceEnv, "RUNTIME_DIRECTORY="+runtimeDir), extraEnv...)
	m.cmd.ExtraFiles = files
	stderr, err := m.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go m.read(stderr)
	t.Cleanup(func() {
		if !m.hasExited() {
			_ = m.cmd.Process.Kill()
			m.waitExit()
		}
		removeDeadCgroups(m.cmd.Process.Pid)
		// A race fails the test even if it did not look at the exit code:
		// the manager's own report comes as raw lines on its stderr, a
		// worker's as lines of the worker's output that the manager logged.
		for _, e := range m.all(func(e entry) bool { return strings.Contains(e.str("msg"), "DATA RACE") }) {
			if e.has("raw") {
				t.Errorf("the manager reported a data race: %s", e.str("raw"))
			} else {
				t.Errorf("worker %s %d (pid %d) reported a data race", e.str("service"), e.int("worker"), e.int("pid"))
			}
		}
		if t.Failed() {
			m.dump()
		}
	})
	return m
}

// removeDeadCgroups removes the cgroup subtree of a manager that has
// exited, if it left one (killed with SIGKILL, its sentinel may still wait
// out its grace, which a test need not), killing what is in it: runs
// must leave nothing behind.
func removeDeadCgroups(pid int) {
	prefix := "gotyledon-" + strconv.Itoa(pid) + "-"
	for _, mount := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		var dirs []string
		_ = filepath.WalkDir(mount, func(p string, d fs.DirEntry, err error) error {
			switch {
			case err != nil || !d.IsDir():
				return nil
			case strings.HasPrefix(d.Name(), prefix):
				_ = filepath.WalkDir(p, func(q string, d fs.DirEntry, err error) error {
					if err == nil && d.IsDir() {
						dirs = append(dirs, q)
					}
					return nil
				})
				return fs.SkipDir
			case strings.Count(strings.TrimPrefix(p, mount), "/") > 6:
				return fs.SkipDir // deep enough: the tests' cgroup is near the top
			}
			return nil
		})
		if len(dirs) == 0 {
			continue
		}
		if f, err := os.OpenFile(filepath.Join(dirs[0], "cgroup.kill"), os.O_WRONLY, 0); err == nil {
			_, _ = f.WriteString("1")
			f.Close()
		}
		events := filepath.Join(dirs[0], "cgroup.events")
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
			if b, err := os.ReadFile(events); err != nil || strings.Contains(string(b), "populated 0") {
				break
			}
			time.Sleep(10 * time.Millisecond) // the kill takes effect; polled with a deadline, as cgroup.events offers no simple event
		}
		for i := len(dirs) - 1; i >= 0; i-- {
			os.Remove(dirs[i])
		}
	}
}

func (m *manager) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var e entry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			e = entry{"raw": sc.Text(), "msg": sc.Text()}
		}
		m.mu.Lock()
		m.entries = append(m.entries, e)
		close(m.changed)
		m.changed = make(chan struct{})
		m.mu.Unlock()
	}
	err := m.cmd.Wait()
	m.mu.Lock()
	m.exited = true
	m.code = m.cmd.ProcessState.ExitCode()
	if err != nil && m.code == 0 {
		m.code = -1
	}
	close(m.changed)
	m.changed = make(chan struct{})
	m.mu.Unlock()
}

func (m *manager) hasExited() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.exited
}

// snapshot returns the entries so far and a channel closed on the next change.
func (m *manager) snapshot() ([]entry, chan struct{}, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.entries, m.changed, m.exited
}

// waitN waits until n entries match and returns them; it fails the test at
// the deadline or if the manager exits first.
func (m *manager) waitN(what string, n int, match func(entry) bool) []entry {
	m.t.Helper()
	deadline := time.After(waitTimeout)
	for {
		entries, changed, exited := m.snapshot()
		var got []entry
		for _, e := range entries {
			if match(e) {
				got = append(got, e)
			}
		}
		if len(got) >= n {
			return got
		}
		if exited {
			m.t.Fatalf("manager exited while waiting for %s (%d of %d seen)", what, len(got), n)
		}
		select {
		case <-changed:
		case <-deadline:
			m.t.Fatalf("timed out after %v waiting for %s (%d of %d seen)", waitTimeout, what, len(got), n)
		}
	}
}

// waitFor waits for the first entry that matches.
func (m *manager) waitFor(what string, match func(entry) bool) entry {
	m.t.Helper()
	return m.waitN(what, 1, match)[0]
}

// all returns the entries so far that match.
func (m *manager) all(match func(entry) bool) []entry {
	entries, _, _ := m.snapshot()
	var got []entry
	for _, e := range entries {
		if match(e) {
			got = append(got, e)
		}
	}
	return got
}

// signal sends sig to the manager process.
func (m *manager) signal(sig syscall.Signal) {
	m.t.Helper()
	if err := m.cmd.Process.Signal(sig); err != nil {
		m.t.Fatalf("signal manager: %v", err)
	}
}

// waitExit waits for the manager to exit and returns its exit code.
func (m *manager) waitExit() int {
	m.t.Helper()
	deadline := time.After(waitTimeout)
	for {
		_, changed, exited := m.snapshot()
		if exited {
			m.mu.Lock()
			defer m.mu.Unlock()
			return m.code
		}
		select {
		case <-changed:
		case <-deadline:
			m.t.Fatalf("manager did not exit within %v", waitTimeout)
		}
	}
}

func (m *manager) dump() {
	entries, _, _ := m.snapshot()
	start := max(0, len(entries)-80)
	m.t.Logf("last %d manager log lines:", len(entries)-start)
	for _, e := range entries[start:] {
		b, _ := json.Marshal(e)
		m.t.Log(string(b))
	}
}

// started matches the manager's "worker started" entry for service/id.
func started(svc string, id int) func(entry) bool {
	return func(e entry) bool { return e.is("worker started", "service", svc, "worker", id) }
}

// output matches a line a worker wrote on stdout that starts with prefix.
func output(svc string, prefix string) func(entry) bool {
	return func(e entry) bool {
		return e.str("service") == svc && e.str("stream") == "stdout" && strings.HasPrefix(e.str("msg"), prefix)
	}
}

// waitGone waits until process pid has ended (exited, zombie or not), using
// a pidfd, which becomes readable exactly when the process terminates.
func waitGone(t *testing.T, pid int, within time.Duration) {
	t.Helper()
	waitGoneBy(t, pid, time.Now().Add(within))
}

// waitGoneBy waits until process pid has ended, failing the test if it still
// runs at deadline. A process that has already ended passes even if the
// deadline is past.
func waitGoneBy(t *testing.T, pid int, deadline time.Time) {
	t.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return
	}
	if err != nil {
		t.Fatalf("pidfd_open %d: %v", pid, err)
	}
	defer unix.Close(fd)
	for {
		ms := 0
		if left := time.Until(deadline); left > 0 {
			ms = int(left.Milliseconds()) + 1
		}
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, ms)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			t.Fatalf("poll pidfd of %d: %v", pid, err)
		}
		if n > 0 {
			return
		}
		if time.Until(deadline) <= 0 {
			t.Fatalf("process %d still runs at its deadline (%v ago)", pid, time.Since(deadline).Round(time.Millisecond))
		}
	}
}

// alive reports whether pid runs now (a zombie does not).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] != 'Z' && s[i+2] != 'X'
}

// delayedMsg is the manager's entry for a restart put off by the backoff.
const delayedMsg = "worker is failing soon after start; restart delayed"

// checkDelaysHonoured checks svc's restart history in entries (in log order),
// a single streak of quick deaths, and returns its delayed-restart entries.
// Attempts to run the worker (entries with message attempt: "worker
// started", or "worker failed to start") and delayed restarts must
// alternate from the second attempt on (the first quick death is restarted
// at once), so that no later attempt comes without a delay; and each
// attempt must come at least
// the logged delay after the delayed restart before it, less 2ms (ts has
// millisecond resolution, and is taken just after the timer was armed), so
// that a timer that is not honoured fails.
func checkDelaysHonoured(t *testing.T, entries []entry, svc, attempt string) (delayed []entry) {
	t.Helper()
	attempts := 0
	var pending entry // the delayed restart the next attempt must follow
	for _, e := range entries {
		switch {
		case e.is(attempt, "service", svc):
			attempts++
			if attempts > 2 && pending == nil {
				t.Errorf("%s: attempt %d (%s at %s) came without a delayed restart before it", svc, attempts, attempt, e.str("ts"))
			}
			if pending != nil {
				d, err := time.ParseDuration(pending.str("delay"))
				if err != nil {
					t.Fatalf("%s: delayed restart with delay %q: %v", svc, pending.str("delay"), err)
				}
				if gap := e.at(t).Sub(pending.at(t)); gap < d-2*time.Millisecond {
					t.Errorf("%s: attempt %d came %v after the restart delayed by %v (at %s, then %s)",
						svc, attempts, gap, d, pending.str("ts"), e.str("ts"))
				}
			}
			pending = nil
		case e.is(delayedMsg, "service", svc):
			if attempts < 2 || pending != nil {
				t.Errorf("%s: delayed restart at %s does not follow an attempt", svc, e.str("ts"))
			}
			pending = e
			delayed = append(delayed, e)
		}
	}
	return delayed
}
