package supervisor_test

// Scheduled services with real processes.

import (
	"strings"
	"syscall"
	"testing"
)

// A service on a schedule runs at its times and not at the start; a run
// still going when the next time comes makes it skipped; status says when
// the next run is.
func TestScheduledServicesRun(t *testing.T) {
	t.Parallel()
	m := startManager(t, `
services:
  tick:
    command: ["/bin/sh", "-c", "echo tick"]
    schedule: "@every 1s"
    restart: {policy: never}
  slow:
    command: ["/bin/sh", "-c", "echo slow; exec sleep 2.5"]
    schedule: {cron: "@every 1s", time_zone: UTC}
    restart: {policy: on-failure}
`)
	m.waitFor("the manager ready", func(e entry) bool { return strings.HasPrefix(e.str("msg"), "manager ready") })
	if n := len(m.all(output("tick", "tick"))); n != 0 {
		t.Fatalf("tick ran %d times at the start", n)
	}
	m.waitN("tick run twice", 2, output("tick", "tick"))
	m.waitFor("a slow run skipped", func(e entry) bool {
		return e.is("scheduled run skipped: the previous run is still going", "service", "slow")
	})
	code, out, errOut := m.ctl(nil, "", "status")
	if code != 0 || !strings.Contains(out, `tick runs on schedule "@every 1s" (Local): next run in `) ||
		!strings.Contains(out, `slow runs on schedule "@every 1s" (UTC): next run in `) {
		t.Errorf("gotyledon status: exit %d\n%s%s", code, out, errOut)
	}
	st := m.statusJSON()
	if sc := st.Service("slow").Schedule; sc == nil || sc.Skipped < 1 || sc.Runs < 1 || sc.NextRunAt == nil {
		t.Errorf("slow's schedule in status: %+v", sc)
	}
	m.signal(syscall.SIGTERM)
	if code := m.waitExit(); code != 0 {
		t.Fatalf("manager exit code %d", code)
	}
}
