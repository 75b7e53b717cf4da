package supervisor_test

// depends_on, with real processes: the order of starts and stops, and a
// failed dependency.

import (
	"strings"
	"syscall"
	"testing"
)

// indexOf is the position of the first entry of m's log that matches, or
// -1.
func indexOf(m *manager, match func(entry) bool) int {
	entries, _, _ := m.snapshot()
	for i, e := range entries {
		if match(e) {
			return i
		}
	}
	return -1
}

// A chain listed backwards, db ready → migrate completed → web: each
// starts once what it waits for is met, a reload that adds a dependency
// to the running web leaves it running, and the shutdown stops web (which
// takes its time) before it signals db.
func TestDependencyChainStartsInOrderAndStopsInReverse(t *testing.T) {
	t.Parallel()
	conf := `
services:
  web:
    command: ["/bin/sh", "-c", "echo web up; trap 'sleep 0.3; echo web stopped; exit 0' TERM; while :; do sleep 0.05; done"]
    depends_on: {db: ready, migrate: completed}%s
  migrate:
    command: ["/bin/sh", "-c", "echo migrate ran; exit 0"]
    restart: {policy: never}
    depends_on: {db: ready}
  db:
    command: ["/bin/sh", "-c", "echo db up; trap 'echo db stopping; exit 0' TERM; while :; do sleep 0.05; done"]
    workers: 2
    restart: {min_uptime: 300ms}
`
	m := startManager(t, strings.Replace(conf, "%s", "", 1))
	m.waitFor("web up", output("web", "web up"))
	m.waitFor("the manager ready", func(e entry) bool { return strings.HasPrefix(e.str("msg"), "manager ready") })
	dbReady := max(indexOf(m, func(e entry) bool { return e.is("worker ready", "service", "db", "worker", 0) }),
		indexOf(m, func(e entry) bool { return e.is("worker ready", "service", "db", "worker", 1) }))
	migrateStarted := indexOf(m, started("migrate", 0))
	migrateDone := indexOf(m, func(e entry) bool { return e.is("worker completed", "service", "migrate") })
	webStarted := indexOf(m, started("web", 0))
	if indexOf(m, func(e entry) bool { return e.is("worker ready", "service", "db", "worker", 1) }) < 0 || dbReady > migrateStarted || migrateDone > webStarted || migrateStarted < 0 {
		m.dump()
		t.Fatalf("log order: db ready at %d, migrate started at %d and completed at %d, web started at %d; want them in that order",
			dbReady, migrateStarted, migrateDone, webStarted)
	}
	st := m.statusJSON()
	if web := st.Service("web"); web.Running != 1 || web.Waiting != 0 || len(web.WaitingFor) != 0 {
		t.Errorf("web in status: %+v", web)
	}

	m.rewrite(strings.Replace(conf, "{db: ready, migrate: completed}%s", "{db: ready, migrate: completed, nothing: started}", 1))
	m.waitFor("the bad save refused", func(e entry) bool {
		return strings.Contains(e.str("msg"), `service "web" depends on "nothing", which is not a service`)
	})
	m.rewrite(strings.Replace(strings.Replace(conf, "%s", "", 1), "{db: ready, migrate: completed}", "{db: ready, migrate: completed, api: started}", 1) +
		"  api:\n    command: [\"/bin/sh\", \"-c\", \"echo api up; exec sleep 60\"]\n")
	m.waitFor("api up", output("api", "api up"))
	if n := len(m.all(func(e entry) bool { return e.is("worker started", "service", "web") })); n != 1 {
		t.Errorf("web started %d times, want once: reloads that add dependencies leave it running", n)
	}

	m.signal(syscall.SIGTERM)
	if code := m.waitExit(); code != 0 {
		t.Fatalf("manager exit code %d, want 0", code)
	}
	webStopped := indexOf(m, func(e entry) bool { return e.is("worker stopped", "service", "web") })
	apiStopped := indexOf(m, func(e entry) bool { return e.is("worker stopped", "service", "api") })
	dbStopping := indexOf(m, output("db", "db stopping"))
	if webStopped < 0 || dbStopping < webStopped || apiStopped < webStopped {
		m.dump()
		t.Errorf("web stopped at %d, api at %d, db told to stop at %d: want web (its dependent) first", webStopped, apiStopped, dbStopping)
	}
	if n := len(m.all(output("db", "db stopping"))); n != 2 {
		t.Errorf("%d db workers told to stop, want 2", n)
	}
}

// A one-shot that fails under policy never holds its dependents, and theirs,
// with a status that says why; the manager's start does not wait for them
// for ever; a reload that fixes it runs it again, and they start.
func TestFailingOneShotBlocksItsDependents(t *testing.T) {
	t.Parallel()
	conf := `
services:
  migrate:
    command: ["/bin/sh", "-c", "echo migrate; exit $CODE"]
    env: {CODE: "%s"}
    restart: {policy: never}
  web:
    command: ["/bin/sh", "-c", "echo web up; exec sleep 60"]
    depends_on: {migrate: completed}
  api:
    command: ["/bin/sh", "-c", "echo api up; exec sleep 60"]
    depends_on: [web]
`
	m := startManager(t, strings.Replace(conf, "%s", "3", 1))
	m.waitFor("migrate failed", func(e entry) bool {
		return e.is("worker failed; its restart policy does not restart it", "service", "migrate")
	})
	m.waitFor("the manager ready", func(e entry) bool { return strings.HasPrefix(e.str("msg"), "manager ready") })
	st := m.statusJSON()
	web, api := st.Service("web"), st.Service("api")
	if web.Waiting != 1 || web.Running != 0 || web.Workers[0].State != "waiting" || web.Workers[0].PID != 0 ||
		len(web.WaitingFor) != 1 || web.WaitingFor[0].Service != "migrate" || web.WaitingFor[0].Condition != "completed" ||
		web.WaitingFor[0].Reason != "worker 0 failed (exit code 3)" || !web.WaitingFor[0].Failed {
		t.Errorf("web in status: %+v", web)
	}
	if api.Waiting != 1 || len(api.WaitingFor) != 1 || api.WaitingFor[0].Reason != "worker 0 waiting for its own dependencies" || api.WaitingFor[0].Failed {
		t.Errorf("api in status: %+v", api)
	}
	code, out, errOut := m.ctl(nil, "", "status")
	if code != 0 || !strings.Contains(out, "web waits for migrate completed: worker 0 failed (exit code 3); a reload that changes migrate") ||
		!strings.Contains(out, "api waits for web started: worker 0 waiting for its own dependencies\n") {
		t.Errorf("gotyledon status: exit %d\n%s%s", code, out, errOut)
	}
	if n := len(m.all(func(e entry) bool { return e.is("worker started", "service", "web") })); n != 0 {
		t.Fatalf("web started %d times behind a failed migrate", n)
	}

	m.rewrite(strings.Replace(conf, "%s", "0", 1))
	m.waitFor("api up", output("api", "api up"))
	webUp, apiStarted := indexOf(m, started("web", 0)), indexOf(m, started("api", 0))
	if migrated := indexOf(m, func(e entry) bool { return e.is("worker completed", "service", "migrate") }); migrated > webUp || webUp > apiStarted {
		t.Errorf("migrate completed at %d, web started at %d, api at %d: want that order", migrated, webUp, apiStarted)
	}
	m.signal(syscall.SIGTERM)
	if code := m.waitExit(); code != 0 {
		t.Fatalf("manager exit code %d, want 0", code)
	}
}
