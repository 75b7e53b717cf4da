package supervisor_test

// on_exit: stop_manager and the OnDeadWorker hook's StopManager, with
// real processes.

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// An essential service's worker that exits on its own stops the manager:
// its dependent stops first, then the rest, and the manager exits with
// the worker's exit code (128 + the signal for a signal), without
// restarting it. An exit the manager asked for (a rescale) does not.
func TestEssentialServiceExitStopsTheManagerWithItsCode(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, exit string
		code       int
	}{
		{"exit code", "exit 42", 42},
		{"signal", "kill -SEGV $$", 128 + int(syscall.SIGSEGV)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			stop := filepath.Join(dir, "stop")
			conf := fmt.Sprintf(`
services:
  ingest:
    command: ["/bin/sh", "-c", "echo ingest up; while [ ! -f %s ]; do sleep 0.02; done; %s"]
    on_exit: stop_manager
    workers: 2
  web:
    command: ["/bin/sh", "-c", "echo web up; trap 'sleep 0.3; echo web stopped; exit 0' TERM; while :; do sleep 0.05; done"]
    depends_on: {ingest: started}
  other:
    command: ["/bin/sh", "-c", "trap 'echo other stopping; exit 0' TERM; while :; do sleep 0.05; done"]
`, stop, tc.exit)
			m := startManager(t, conf)
			m.waitFor("web up", output("web", "web up"))
			m.waitFor("the manager ready", func(e entry) bool { return strings.HasPrefix(e.str("msg"), "manager ready") })
			// A rescale's stop is the manager's doing: it stops nothing.
			m.rewrite(strings.Replace(conf, "workers: 2", "workers: 1", 1))
			m.waitFor("ingest/1 stopped", func(e entry) bool { return e.is("worker stopped", "service", "ingest", "worker", 1) })
			if err := os.WriteFile(stop, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			if code := m.waitExit(); code != tc.code {
				m.dump()
				t.Fatalf("manager exit code %d, want %d", code, tc.code)
			}
			cause := m.all(func(e entry) bool {
				return e.is("an essential service's worker exited; stopping the manager", "service", "ingest", "worker", 0) && e.int("exit_code") == tc.code
			})
			if len(cause) != 1 {
				t.Errorf("%d log entries for the essential exit, want 1", len(cause))
			}
			if n := len(m.all(started("ingest", 0))); n != 1 {
				t.Errorf("ingest/0 started %d times, want once: an essential worker is not restarted", n)
			}
			webStopped := indexOf(m, output("web", "web stopped"))
			if webStopped < 0 || indexOf(m, output("other", "other stopping")) < 0 {
				t.Errorf("web and other were not stopped gracefully")
			}
		})
	}
}

// on-failure: a clean exit completes the essential one-shot and the
// manager goes on; the OnDeadWorker hook's StopManager stops it as
// on_exit would, with the worker's code.
func TestStopManagerOnFailureOnlyAndByHook(t *testing.T) {
	t.Parallel()
	m := startManager(t, `
services:
  warmup:
    command: ["/bin/sh", "-c", "echo warm; exit 0"]
    restart: {policy: on-failure}
    on_exit: stop_manager
  essential-by-hook:
    command: ["/bin/sh", "-c", "echo hook up; sleep 0.5; exit 5"]
    restart: {min_uptime: 100ms}
`)
	m.waitFor("warmup completed", func(e entry) bool { return e.is("worker completed", "service", "warmup") })
	if code := m.waitExit(); code != 5 {
		m.dump()
		t.Fatalf("manager exit code %d, want 5 (the hook's worker's)", code)
	}
	if len(m.all(func(e entry) bool {
		return e.is("an OnDeadWorker hook asked to stop the manager", "service", "essential-by-hook")
	})) != 1 {
		t.Error("no log of the hook's request")
	}
	if len(m.all(func(e entry) bool {
		return e.str("msg") == "an essential service's worker exited; stopping the manager"
	})) != 0 {
		t.Error("warmup's clean exit under on-failure stopped the manager")
	}
}
