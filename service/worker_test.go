package service_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gotyledon/gotyledon/service"
)

// Re-executed with a worker environment, the test binary is a Go worker.
func TestMain(m *testing.M) {
	if service.IsWorker() {
		os.Exit(service.Main(registry()))
	}
	os.Exit(m.Run())
}

func registry() *service.Registry {
	reg := service.NewRegistry()
	reg.Register("waiter", func(w service.Worker) (service.Service, error) {
		return service.Func(func(ctx context.Context) error {
			fmt.Printf("ready %s %d %s\n", w.Service, w.ID, os.Getenv(service.EnvRun))
			<-ctx.Done()
			fmt.Println("context ended")
			return ctx.Err()
		}), nil
	})
	// fdlister runs a child and prints the descriptors the child has.
	reg.Register("fdlister", func(w service.Worker) (service.Service, error) {
		return service.Func(func(ctx context.Context) error {
			out, err := exec.Command("/bin/ls", "-l", "/proc/self/fd").Output()
			if err != nil {
				return err
			}
			fmt.Printf("child fds: %s\n", strings.Join(strings.Fields(string(out)), " "))
			<-ctx.Done()
			return nil
		}), nil
	})
	reg.Register("reloader", func(w service.Worker) (service.Service, error) { return &reloader{}, nil })
	reg.Register("failer", func(w service.Worker) (service.Service, error) {
		return service.Func(func(context.Context) error { return errors.New("disk on fire") }), nil
	})
	reg.Register("badsetup", func(w service.Worker) (service.Service, error) {
		return nil, errors.New("no config")
	})
	return reg
}

// lockedBuffer is a stderr that a test may read while the process writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type worker struct {
	cmd    *exec.Cmd
	lines  chan string
	stderr lockedBuffer
	pipeW  *os.File
}

// startWorker runs the test binary as Go worker run, with the write end of
// a manager pipe held by the test (pipeW) and its read end as fd 3.
func startWorker(t *testing.T, run string, env ...string) *worker {
	t.Helper()
	exe, _ := os.Executable()
	w := &worker{lines: make(chan string, 16)}
	w.cmd = exec.Command(exe)
	w.cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0", service.EnvRun+"="+run, service.EnvService+"=svc", service.EnvWorkerID+"=4")
	w.cmd.Env = append(w.cmd.Env, env...)
	r, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	w.pipeW = pw
	w.cmd.ExtraFiles = []*os.File{r}
	w.cmd.Env = append(w.cmd.Env, service.EnvManagerFD+"=3")
	out, err := w.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	w.cmd.Stderr = &w.stderr
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r.Close()
	t.Cleanup(func() { pw.Close(); _ = w.cmd.Process.Kill(); _ = w.cmd.Wait() })
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			w.lines <- sc.Text()
		}
		close(w.lines)
	}()
	return w
}

func (w *worker) expect(t *testing.T, want string) {
	t.Helper()
	select {
	case got, ok := <-w.lines:
		if !ok || got != want {
			t.Fatalf("worker wrote %q (open %v), want %q; stderr %q", got, ok, want, w.stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("timed out waiting for %q", want)
	}
}

// exitCode drains stdout and waits for the worker to exit.
func (w *worker) exitCode(t *testing.T) int {
	t.Helper()
	for range w.lines {
	}
	_ = w.cmd.Wait()
	return w.cmd.ProcessState.ExitCode()
}

func TestWorkerStopsGracefullyOnSIGTERM(t *testing.T) {
	w := startWorker(t, "waiter")
	// The runtime hides its private variables from the service's children.
	w.expect(t, "ready svc 4 ")
	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	w.expect(t, "context ended")
	if code := w.exitCode(t); code != 0 {
		t.Errorf("exit code %d, want 0 (stderr %q)", code, w.stderr.String())
	}
}

func TestWorkerStopsOnItsServiceStopSignal(t *testing.T) {
	w := startWorker(t, "waiter", service.EnvStopSignal+"="+strconv.Itoa(int(syscall.SIGUSR2)))
	w.expect(t, "ready svc 4 ")
	if err := w.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	w.expect(t, "context ended")
	if code := w.exitCode(t); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
}

func TestWorkerStopsWhenTheManagerIsGone(t *testing.T) {
	w := startWorker(t, "waiter")
	w.expect(t, "ready svc 4 ")
	w.pipeW.Close() // what the kernel does when the manager dies
	w.expect(t, "context ended")
	if code := w.exitCode(t); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	if !strings.Contains(w.stderr.String(), "manager is gone") {
		t.Errorf("stderr %q does not say why the worker stopped", w.stderr.String())
	}
}

func TestWorkerExitCodes(t *testing.T) {
	for _, tc := range []struct {
		run, env, stderr string
		code             int
	}{
		{"failer", "", "svc worker 4: disk on fire\n", 1},
		{"badsetup", "", "svc worker 4: set up: no config\n", 1},
		{"nosuch", "", "svc worker 4: no Go service \"nosuch\" is registered in this program (it registers [badsetup failer fdlister reloader waiter])\n", 2},
		{"waiter", service.EnvWorkerID + "=-1", "gotyledon worker: GOTYLEDON_WORKER_ID=\"-1\" is not a worker id\n", 2},
		{"waiter", service.EnvStopSignal + "=99", "gotyledon worker: GOTYLEDON_STOP_SIGNAL=\"99\" is not a signal number\n", 2},
	} {
		t.Run(tc.run, func(t *testing.T) {
			var env []string
			if tc.env != "" {
				env = append(env, tc.env)
			}
			w := startWorker(t, tc.run, env...)
			if code := w.exitCode(t); code != tc.code || w.stderr.String() != tc.stderr {
				t.Errorf("exit %d stderr %q, want %d %q", code, w.stderr.String(), tc.code, tc.stderr)
			}
		})
	}
}

func TestRegisterRejectsProgrammingErrors(t *testing.T) {
	f := func(service.Worker) (service.Service, error) { return nil, nil }
	for name, register := range map[string]func(*service.Registry){
		"bad name":   func(r *service.Registry) { r.Register("9x", f) },
		"empty":      func(r *service.Registry) { r.Register("", f) },
		"dot":        func(r *service.Registry) { r.Register("a.b", f) },
		"dash first": func(r *service.Registry) { r.Register("-a", f) },
		"64 bytes":   func(r *service.Registry) { r.Register("a"+strings.Repeat("b", 63), f) },
		"nil":        func(r *service.Registry) { r.Register("x", nil) },
		"duplicate":  func(r *service.Registry) { r.Register("x", f); r.Register("x", f) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: Register did not panic", name)
				}
			}()
			register(service.NewRegistry())
		}()
	}
	for _, good := range []string{"a", "Printer_2", "a-b", "a" + strings.Repeat("b", 62)} {
		service.NewRegistry().Register(good, f) // panics if refused
	}
	r := service.NewRegistry()
	r.Register("b", f)
	r.Register("a", f)
	if got := strings.Join(r.Names(), ","); got != "a,b" {
		t.Errorf("Names() = %s, want a,b", got)
	}
}

// The manager pipe is the worker's alone: a child it starts does not inherit
// it (ls's own directory descriptor is 3; the pipe would push it to 4).
func TestManagerPipeDoesNotReachTheWorkersChildren(t *testing.T) {
	w := startWorker(t, "fdlister")
	var st syscall.Stat_t
	if err := syscall.Fstat(int(w.pipeW.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	pipe := fmt.Sprintf("pipe:[%d]", st.Ino)
	select {
	case line := <-w.lines:
		if !strings.HasPrefix(line, "child fds: ") || !strings.Contains(line, "-> /proc/") {
			t.Fatalf("worker wrote %q, want its child's descriptor listing", line)
		}
		if strings.Contains(line, pipe) {
			t.Errorf("the worker's child holds the manager pipe %s: %s", pipe, line)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("timed out waiting for the listing")
	}
}

// reloader prints "reloaded N" on each Reload.
type reloader struct{ n int }

func (r *reloader) Run(ctx context.Context) error {
	fmt.Println("ready")
	<-ctx.Done()
	return nil
}

func (r *reloader) Reload(context.Context) error {
	r.n++
	fmt.Printf("reloaded %d\n", r.n)
	return nil
}

func TestReloadSignalCallsReload(t *testing.T) {
	w := startWorker(t, "reloader")
	w.expect(t, "ready")
	for i := 1; i <= 2; i++ {
		if err := w.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		w.expect(t, fmt.Sprintf("reloaded %d", i))
	}
	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := w.exitCode(t); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
}

// Without Reload, the reload signal is ignored, not the death SIGHUP's
// default action would be.
func TestReloadSignalWithoutReloadIsIgnored(t *testing.T) {
	w := startWorker(t, "waiter", service.EnvReloadSignal+"="+strconv.Itoa(int(syscall.SIGUSR1)))
	w.expect(t, "ready svc 4 ")
	if err := w.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(w.stderr.String(), "reload signal ignored") {
		if time.Now().After(deadline) {
			t.Fatalf("no word of the ignored reload signal; stderr %q", w.stderr.String())
		}
		time.Sleep(5 * time.Millisecond) // stderr has no event to wait on
	}
	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	w.expect(t, "context ended")
	if code := w.exitCode(t); code != 0 {
		t.Errorf("exit code %d, want 0: the reload signal must not have killed it", code)
	}
}
