package manager

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/gotyledon/gotyledon/config"
	"github.com/gotyledon/gotyledon/ipc"
	"github.com/gotyledon/gotyledon/supervisor/control"
)

// declared is a declaration of one command service whose sockets are in dir.
func declared(dir string) *config.Declaration {
	var d config.Declaration
	d.Service("sleeper", config.Command("/bin/sleep", "60"))
	d.Queue("jobs")
	d.Broker(config.Socket(filepath.Join(dir, "queue.sock")))
	d.Control(config.Socket(filepath.Join(dir, "control.sock")))
	return &d
}

// A configuration that does not load starts nothing: New logs every
// FILE:LINE:COL and what became of the start, and fails.
func TestNewRefusesABadConfiguration(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "g.yaml")
	if err := os.WriteFile(path, []byte("services:\n  a: {command: [/bin/true], workers: x}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.InfoLevel)
	_, err := New(Options{ConfigFile: path, Logger: zap.New(core), Getenv: func(string) string { return dir }})
	var list config.ErrorList
	if !errors.As(err, &list) || !errors.Is(err, ErrNotStarted) {
		t.Fatalf("New: %v, want the configuration's errors, logged", err)
	}
	if logs.FilterMessageSnippet(path+":2:38: workers must be").Len() != 1 || logs.FilterMessage("configuration is invalid; nothing was started").Len() != 1 {
		t.Errorf("logged %v", logs.All())
	}
	if _, err := New(Options{ConfigFile: filepath.Join(dir, "missing.yaml"), Logger: zap.New(core)}); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("New of a missing file: %v", err)
	}
}

// New binds the sockets: a second manager on the same control socket is
// refused and says why; Close releases them, so that a status finds no
// manager there any more and a new manager may take them.
func TestNewTakesTheSocketsAndCloseReleasesThem(t *testing.T) {
	dir := t.TempDir()
	first, err := New(Options{Declaration: declared(dir)})
	if err != nil {
		t.Fatal(err)
	}
	// Another queue socket: only the control socket is shared.
	second := declared(dir)
	second.Broker(config.Socket(filepath.Join(dir, "other-queue.sock")))
	core, logs := observer.New(zap.InfoLevel)
	if _, err := New(Options{Declaration: second, Logger: zap.New(core)}); !errors.Is(err, ipc.ErrInUse) || !errors.Is(err, ErrNotStarted) {
		t.Errorf("a second manager on the same control socket: %v, want ErrInUse and ErrNotStarted", err)
	}
	if errs := logs.FilterLevelExact(zap.ErrorLevel).All(); len(errs) != 1 || errs[0].Message != "another manager runs with this control socket; not starting a second one" {
		t.Errorf("the second manager logged the errors %v, want one line saying why", errs)
	}
	first.Close()
	first.Close() // twice is fine
	if _, err := control.NewClient(filepath.Join(dir, "control.sock")).Status(context.Background()); !errors.Is(err, control.ErrNoManager) {
		t.Errorf("status after Close: %v, want ErrNoManager", err)
	}
	again, err := New(Options{Declaration: declared(dir)})
	if err != nil {
		t.Fatalf("a manager after the first closed: %v", err)
	}
	again.Close()
}
