package supervisor_test

// One-shot services: restart.policy on-failure and never.

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// A migration that fails once, then succeeds, under on-failure: restarted
// after the failure, completed after the success, and never run again
// unless a reload changes it or a restart asks for it; a never task that
// fails stays failed; the manager is ready, and stops cleanly.
func TestOneShotServices(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	conf := `
services:
  web:
    run: sleeper
  migrate:
    command: ["/bin/sh", "-c", "echo migrate $GEN; if [ -f %[1]s/ran ]; then exit 0; fi; touch %[1]s/ran; exit 1"]
    env: {GEN: "%[2]s"}
    restart: {policy: on-failure, min_uptime: 100ms, backoff_initial: 10ms}
  check:
    command: ["/bin/sh", "-c", "echo check; exit 3"]
    restart: {policy: never}
`
	m := startManager(t, fmt.Sprintf(conf, dir, "1"))
	m.waitFor("migrate completed", func(e entry) bool { return e.is("worker completed", "service", "migrate") })
	m.waitFor("check failed", func(e entry) bool {
		return e.is("worker failed; its restart policy does not restart it", "service", "check") && e.str("status") == "exit code 3"
	})
	m.waitFor("the manager ready", func(e entry) bool { return strings.HasPrefix(e.str("msg"), "manager ready") })
	if n := len(m.all(output("migrate", "migrate 1"))); n != 2 {
		t.Errorf("migrate ran %d times, want 2 (a failure, then a success)", n)
	}
	st := m.statusJSON()
	mig, chk := st.Service("migrate"), st.Service("check")
	if mig.Completed != 1 || mig.Running != 0 || mig.Workers[0].State != "completed" || mig.Workers[0].LastExit != "exit code 0" || mig.Workers[0].LastExitAt == nil {
		t.Errorf("migrate in status: %+v", mig)
	}
	if chk.Completed != 1 || chk.Workers[0].State != "completed" || chk.Workers[0].LastExit != "exit code 3" || chk.Workers[0].PID != 0 {
		t.Errorf("check in status: %+v", chk)
	}

	// A reload that changes nothing of migrate leaves it completed.
	m.rewrite(fmt.Sprintf(conf, dir, "1") + "# an edit elsewhere\n")
	m.waitFor("the reload", func(e entry) bool { return e.str("msg") == "configuration applied" })
	// One that changes it runs it again.
	m.rewrite(fmt.Sprintf(conf, dir, "2"))
	m.waitFor("migrate 2", output("migrate", "migrate 2"))
	m.waitN("migrate completed twice", 2, func(e entry) bool { return e.is("worker completed", "service", "migrate") })
	if n := len(m.all(output("migrate", "migrate 1"))); n != 2 {
		t.Errorf("migrate 1 ran %d times, want 2: the unchanged reload ran it again", n)
	}
	// gotyledon restart runs a completed one again.
	if err := os.Remove(filepath.Join(dir, "ran")); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := m.ctl(nil, "", "restart", "--no-wait", "check"); code != 0 {
		t.Fatalf("restart check: exit %d: %s", code, errOut)
	}
	m.waitN("check run twice", 2, output("check", "check"))
	if n := len(m.all(output("check", "check"))); n != 2 {
		t.Errorf("check ran %d times, want 2", n)
	}

	m.signal(syscall.SIGTERM)
	if code := m.waitExit(); code != 0 {
		t.Fatalf("manager exit code %d, want 0", code)
	}
}
