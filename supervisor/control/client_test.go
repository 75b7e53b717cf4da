package control

import (
	"context"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/gotyledon/gotyledon/config"
	"github.com/gotyledon/gotyledon/ipc"
	"github.com/gotyledon/gotyledon/supervisor"
)

// The Client against a Server on a real Unix socket: each call reaches its
// collaborator and comes back typed; Interrupt ends Run with nil.
func TestClientAndServerOverTheSocket(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "control.sock")
	l, err := ipc.Listen(path, -1)
	if err != nil {
		t.Fatal(err)
	}
	scaled := make(chan string, 2)
	srv := NewServer(l, Options{
		Status: func(context.Context) (supervisor.Status, error) { return fullStatus(time.Now()), nil },
		Scale: func(_ context.Context, service string, n int) error {
			scaled <- service
			if service != "printer" {
				return supervisor.ErrNoSuchService
			}
			return nil
		},
		Reload: func(context.Context, bool) error {
			return config.ErrorList{{Pos: config.Position{File: "c.yaml", Line: 3, Col: 7}, Msg: "workers must be a number"}}
		},
		Queues:  func() []ipc.QueueStats { return []ipc.QueueStats{{Name: "jobs", Depth: 3}} },
		Allow:   func(ipc.Peer) bool { return true },
		Metrics: http.NotFoundHandler(),
		Logger:  zap.NewNop(),
	})
	done := make(chan error, 1)
	go func() { done <- srv.Run() }()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl := NewClient(path)
	st, err := cl.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Schema != Schema || st.Service("printer") == nil || st.Service("printer").Desired != 5 || len(st.Queues) != 1 || st.Queues[0].Depth != 3 {
		t.Errorf("status %+v: want schema 1, printer desired 5, queue jobs depth 3", st)
	}
	if st.Service("nosuch") != nil {
		t.Error("Service found a service that is not there")
	}
	raw, err := cl.StatusJSON(ctx)
	if err != nil || len(raw) == 0 || raw[0] != '{' {
		t.Errorf("StatusJSON: %q, %v", raw, err)
	}
	if err := cl.Scale(ctx, "printer", 5); err != nil {
		t.Errorf("scale printer: %v", err)
	}
	var ce *Error
	if err := cl.Scale(ctx, "nosuch", 1); !errors.As(err, &ce) || ce.Code != http.StatusNotFound {
		t.Errorf("scale nosuch: %v, want a 404 *Error", err)
	}
	if got := []string{<-scaled, <-scaled}; got[0] != "printer" || got[1] != "nosuch" {
		t.Errorf("scaled %v", got)
	}
	err = cl.Reload(ctx)
	if !errors.As(err, &ce) || ce.Code != http.StatusUnprocessableEntity || len(ce.Details) != 1 || ce.Details[0] != "c.yaml:3:7: workers must be a number" {
		t.Errorf("reload: %v, want a 422 *Error with the FILE:LINE:COL detail", err)
	}
	if want := "reload failed: the running services are unchanged:\n  c.yaml:3:7: workers must be a number"; err == nil || err.Error() != want {
		t.Errorf("reload error %q, want %q", err, want)
	}

	srv.Interrupt(nil)
	// Nothing accepts on the socket once Interrupt has returned.
	if c, err := net.Dial("unix", path); !errors.Is(err, syscall.ECONNREFUSED) {
		if c != nil {
			c.Close()
		}
		t.Errorf("connect after Interrupt: %v, want connection refused", err)
	}
	srv.Interrupt(nil)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after Interrupt: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after Interrupt")
	}
	if _, err := cl.Status(ctx); !errors.Is(err, ErrNoManager) {
		t.Errorf("status after Interrupt: %v, want ErrNoManager", err)
	}
}

// A request that outlives its context says that what was asked may still
// be done.
func TestClientTimeout(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "control.sock")
	l, err := ipc.Listen(path, -1)
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	srv := NewServer(l, Options{
		Reload: func(ctx context.Context, _ bool) error {
			<-release
			return nil
		},
		Allow: func(ipc.Peer) bool { return true },
	})
	go srv.Run() //nolint:errcheck // ended below
	defer srv.Interrupt(nil)
	defer close(release)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err = NewClient(path).Reload(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("reload past its deadline: %v, want DeadlineExceeded", err)
	}
}

// Run after Interrupt fails at once, and the listener is closed.
func TestServerInterruptBeforeRun(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "control.sock")
	l, err := ipc.Listen(path, -1)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(l, Options{Allow: func(ipc.Peer) bool { return true }})
	srv.Interrupt(nil)
	if err := srv.Run(); err == nil {
		t.Error("Run after Interrupt did not fail")
	}
	if _, err := NewClient(path).Status(context.Background()); !errors.Is(err, ErrNoManager) {
		t.Errorf("status on an interrupted server: %v, want ErrNoManager", err)
	}
}

func TestSocketPaths(t *testing.T) {
	t.Parallel()
	env := func(kv map[string]string) func(string) string { return func(k string) string { return kv[k] } }
	cfg := &config.Config{}
	if got := SocketPath(cfg, env(map[string]string{"RUNTIME_DIRECTORY": "/run/g:/run/h"})); got != "/run/g/control.sock" {
		t.Errorf("default path %q", got)
	}
	cfg.Control.Socket = "/tmp/c.sock"
	if got := SocketPath(cfg, env(nil)); got != "/tmp/c.sock" {
		t.Errorf("configured path %q", got)
	}
	dir, system := t.TempDir(), t.TempDir()
	_, err := findSocket(env(map[string]string{"RUNTIME_DIRECTORY": dir}), system)
	if !errors.Is(err, ErrNoManager) || !strings.Contains(err.Error(), dir+"/control.sock, "+system+"/control.sock") {
		t.Errorf("findSocket with nothing there: %v, want ErrNoManager naming both places", err)
	}
	l, err := ipc.Listen(filepath.Join(system, "control.sock"), -1)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if got, err := findSocket(env(map[string]string{"RUNTIME_DIRECTORY": dir}), system); err != nil || got != filepath.Join(system, "control.sock") {
		t.Errorf("findSocket: %q, %v; want the system directory's socket", got, err)
	}
	l2, err := ipc.Listen(filepath.Join(dir, "control.sock"), -1)
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if got, err := findSocket(env(map[string]string{"RUNTIME_DIRECTORY": dir}), system); err != nil || got != filepath.Join(dir, "control.sock") {
		t.Errorf("findSocket: %q, %v; want $RUNTIME_DIRECTORY's first", got, err)
	}
}
