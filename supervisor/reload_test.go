package supervisor_test

// Live reconfiguration by SIGHUP: the file is edited, the manager applies
// the difference, and what did not change keeps its processes.

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gotyledon/gotyledon/supervisor/control"
)

// rewrite replaces the manager's config file and sends SIGHUP.
func (m *manager) rewrite(yaml string) {
	m.t.Helper()
	if err := os.WriteFile(m.config, []byte(yaml), 0o644); err != nil {
		m.t.Fatal(err)
	}
	m.signal(syscall.SIGHUP)
}

// startsOf returns the pids the manager logged starting for svc, by worker id.
func startsOf(m *manager, svc string) map[int][]int {
	out := map[int][]int{}
	for _, e := range m.all(func(e entry) bool { return e.is("worker started", "service", svc) }) {
		out[e.int("worker")] = append(out[e.int("worker")], e.int("pid"))
	}
	return out
}

const reloadBase = `
services:
  other:
    run: sleeper
  sleeper:
    run: sleeper
    workers: %d
`

func TestReloadScalesUpAndDownLeavingTheRestAlone(t *testing.T) {
	t.Parallel()
	m := startManager(t, strings.Replace(reloadBase, "%d", "2", 1))
	m.waitN("3 ready", 3, func(e entry) bool { return strings.HasPrefix(e.str("msg"), "ready ") })
	before := startsOf(m, "sleeper")
	other := startsOf(m, "other")

	m.rewrite(strings.Replace(reloadBase, "%d", "5", 1))
	for id := 2; id < 5; id++ {
		m.waitFor("new worker", started("sleeper", id))
	}
	m.waitN("5 sleepers ready", 5, output("sleeper", "ready"))

	m.rewrite(strings.Replace(reloadBase, "%d", "1", 1))
	stops := m.waitN("4 stops", 4, func(e entry) bool { return e.is("worker stopped", "service", "sleeper") })
	var order []int
	for _, e := range m.all(func(e entry) bool { return e.is("stopping worker", "service", "sleeper") }) {
		order = append(order, e.int("worker"))
	}
	if len(order) != 4 || order[0] != 4 || order[1] != 3 || order[2] != 2 || order[3] != 1 {
		t.Errorf("stopped in the order %v, want [4 3 2 1]", order)
	}
	for _, e := range stops {
		if e.str("status") != "exit code 0" || e.int("worker") == 0 {
			t.Errorf("stop of worker %d: %s, want a graceful exit of ids 1-4", e.int("worker"), e.str("status"))
		}
	}
	after := startsOf(m, "sleeper")
	if len(after[0]) != 1 || after[0][0] != before[0][0] || len(after[1]) != 1 {
		t.Errorf("sleeper 0 or 1 restarted by a rescale: before %v, after %v", before, after)
	}
	if got := startsOf(m, "other"); len(got[0]) != 1 || got[0][0] != other[0][0] {
		t.Errorf("an unchanged service was touched: before %v, after %v", other, got)
	}
	m.signal(syscall.SIGTERM)
	if code := m.waitExit(); code != 0 {
		t.Fatalf("manager exit code %d, want 0", code)
	}
}

func TestBadReloadChangesNothingAndAGoodOneApplies(t *testing.T) {
	t.Parallel()
	m := startManager(t, strings.Replace(reloadBase, "%d", "2", 1))
	m.waitN("3 ready", 3, func(e entry) bool { return strings.HasPrefix(e.str("msg"), "ready ") })
	m.rewrite("services:\n  sleeper:\n    run: sleeper\n    workers: many\n")
	m.waitFor("reload failure", func(e entry) bool { return e.str("msg") == "reload failed: the running services are unchanged" })
	if len(m.all(func(e entry) bool { return strings.HasPrefix(e.str("msg"), m.config+":4:14: workers must be") })) != 1 {
		t.Error("the reload's error does not name FILE:LINE:COL")
	}
	if n := len(m.all(func(e entry) bool { return e.str("msg") == "stopping worker" || e.str("msg") == "worker stopped" })); n != 0 {
		t.Errorf("a bad reload stopped %d workers", n/2)
	}
	m.rewrite(strings.Replace(reloadBase, "%d", "3", 1))
	m.waitFor("the good reload", started("sleeper", 2))
	if n := len(m.all(func(e entry) bool { return e.str("msg") == "worker started" })); n != 4 {
		t.Errorf("%d starts in all, want the 3 first and 1 new", n)
	}
}

func TestReloadReplacesAChangedServiceOneWorkerAtATime(t *testing.T) {
	t.Parallel()
	conf := `
services:
  other:
    run: sleeper
  gen:
    command: ["/bin/sh", "-c", "echo gen $GEN; exec /bin/sleep 1000"]
    workers: 3
    env: {GEN: "%s"}
`
	m := startManager(t, strings.Replace(conf, "%s", "1", 1))
	m.waitN("3 of gen 1", 3, output("gen", "gen 1"))
	other := startsOf(m, "other")
	m.rewrite(strings.Replace(conf, "%s", "2", 1))
	m.waitN("3 of gen 2", 3, output("gen", "gen 2"))

	// Through the change, at most one of the three was down at any time,
	// and each was replaced by a new process in its own slot.
	down, maxDown, seenReload := 0, 0, false
	for _, e := range m.all(func(e entry) bool { return true }) {
		switch {
		case e.str("msg") == "configuration applied":
			seenReload = true
		case !seenReload || e.str("service") != "gen":
		case e.str("msg") == "worker stopped":
			down++
			maxDown = max(maxDown, down)
		case e.str("msg") == "worker started":
			down--
		}
	}
	if maxDown != 1 || down != 0 {
		t.Errorf("during the rolling replacement up to %d workers were down (end: %d), want 1 (0)", maxDown, down)
	}
	for id, pids := range startsOf(m, "gen") {
		if len(pids) != 2 {
			t.Errorf("gen worker %d started %d times, want 2 (the first and its replacement)", id, len(pids))
		}
	}
	if got := startsOf(m, "other"); len(got[0]) != 1 || got[0][0] != other[0][0] {
		t.Errorf("an unchanged service was touched: before %v, after %v", other, got)
	}
}

func TestReloadStopsRemovedAndStartsAddedServices(t *testing.T) {
	t.Parallel()
	m := startManager(t, "services:\n  keep:\n    run: sleeper\n  old:\n    run: sleeper\n    workers: 2\n")
	m.waitN("3 ready", 3, func(e entry) bool { return strings.HasPrefix(e.str("msg"), "ready ") })
	keep := startsOf(m, "keep")
	m.rewrite("services:\n  keep:\n    run: sleeper\n  new:\n    run: sleeper\n")
	m.waitN("old stopped", 2, func(e entry) bool { return e.is("worker stopped", "service", "old") })
	m.waitFor("new ready", output("new", "ready"))
	if got := startsOf(m, "keep"); len(got[0]) != 1 || got[0][0] != keep[0][0] {
		t.Errorf("an unchanged service was touched: before %v, after %v", keep, got)
	}
	if n := len(m.all(func(e entry) bool { return e.is("worker started", "service", "old") })); n != 2 {
		t.Errorf("the removed service was started again (%d starts)", n)
	}
}

// The hooks run in the manager on their events, and a reload hook may
// Reconfigure, as the seed's program grows its printers on SIGHUP.
func TestHooksAndReconfigureFromTheReloadHook(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := dir + "/gotyledon.yaml"
	if err := os.WriteFile(path, []byte("services:\n  sleeper:\n    run: sleeper\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	m := startManagerArgs(t, path, []string{"run", "--log-format", "json", "--log-level", "debug", "-c", path},
		"TEST_HOOK_LOG=1", "TEST_RELOAD_GROW=sleeper=3")
	first := m.waitFor("worker 0", started("sleeper", 0))
	m.waitFor("new-worker hook", func(e entry) bool {
		return e.str("msg") == fmt.Sprintf("hook new-worker sleeper 0 %d", first.int("pid"))
	})
	m.signal(syscall.SIGHUP) // the file is unchanged: only the hook grows it
	m.waitFor("reload hook", func(e entry) bool { return e.str("msg") == "hook reload" })
	for id := 1; id < 3; id++ {
		m.waitFor("grown by the hook", started("sleeper", id))
	}
	if err := syscall.Kill(first.int("pid"), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	m.waitFor("dead-worker hook", func(e entry) bool {
		return e.str("msg") == fmt.Sprintf("hook dead-worker sleeper 0 %d killed by SIGKILL -1 9", first.int("pid"))
	})
	m.signal(syscall.SIGTERM)
	if code := m.waitExit(); code != 0 {
		t.Fatalf("manager exit code %d, want 0", code)
	}
	if len(m.all(func(e entry) bool { return e.str("msg") == "hook terminate" })) != 1 {
		t.Error("the terminate hook did not run once")
	}
	if n := len(m.all(func(e entry) bool { return strings.HasPrefix(e.str("msg"), "hook reconfigure failed") })); n != 0 {
		t.Error("Reconfigure from the reload hook failed")
	}
}

// An edit of the file is applied without a signal, however the editor saves
// it; the same bytes written again change nothing.
func TestConfigFileEditsAreApplied(t *testing.T) {
	t.Parallel()
	yaml := func(n int) string { return strings.Replace(reloadBase, "%d", fmt.Sprint(n), 1) }
	for _, tc := range []struct {
		name string
		save func(t *testing.T, path string, content string)
	}{
		{"in place", func(t *testing.T, path, content string) {
			if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
		{"rename over it", func(t *testing.T, path, content string) {
			tmp := path + ".swp"
			if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, path); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := startManager(t, yaml(1))
			m.waitN("2 ready", 2, func(e entry) bool { return strings.HasPrefix(e.str("msg"), "ready ") })
			// The same bytes again: seen, and nothing to do.
			tc.save(t, m.config, yaml(1))
			m.waitFor("unchanged", func(e entry) bool { return e.str("msg") == "config file unchanged; nothing to do" })
			tc.save(t, m.config, yaml(3))
			m.waitFor("worker 2", started("sleeper", 2))
			// The loop logs "configuration applied" after it asked for the
			// starts, which the process table may log first.
			m.waitFor("configuration applied", func(e entry) bool { return e.str("msg") == "configuration applied" })
			if n := len(m.all(func(e entry) bool { return e.str("msg") == "configuration applied" })); n != 1 {
				t.Errorf("%d configurations applied, want 1 (the touch must not count)", n)
			}
		})
	}
}

// A Kubernetes ConfigMap volume: the file is a symlink through "..data",
// which is swapped to a new directory in one rename.
func TestConfigMapSymlinkSwapIsApplied(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	version := func(name string, n int) {
		if err := os.Mkdir(dir+"/"+name, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dir+"/"+name+"/gotyledon.yaml", []byte(strings.Replace(reloadBase, "%d", fmt.Sprint(n), 1)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	version("..2026_11_25_v1", 1)
	if err := os.Symlink("..2026_11_25_v1", dir+"/..data"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("..data/gotyledon.yaml", dir+"/gotyledon.yaml"); err != nil {
		t.Fatal(err)
	}
	path := dir + "/gotyledon.yaml"
	m := startManagerArgs(t, path, []string{"run", "--log-format", "json", "--log-level", "debug", "-c", path})
	m.waitN("2 ready", 2, func(e entry) bool { return strings.HasPrefix(e.str("msg"), "ready ") })
	version("..2026_11_25_v2", 4)
	if err := os.Symlink("..2026_11_25_v2", dir+"/..data_tmp"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(dir+"/..data_tmp", dir+"/..data"); err != nil {
		t.Fatal(err)
	}
	m.waitFor("worker 3", started("sleeper", 3))
}

// Twenty edits in a burst converge on the last file: intermediate ones may
// or may not be applied, the last one is, and the workers end as it says.
func TestABurstOfEditsConvergesOnTheLast(t *testing.T) {
	t.Parallel()
	m := startManager(t, strings.Replace(reloadBase, "%d", "1", 1))
	m.waitN("2 ready", 2, func(e entry) bool { return strings.HasPrefix(e.str("msg"), "ready ") })
	for i := range 20 {
		// 6 to 25 workers: no intermediate total equals the last one's.
		m.rewriteQuietly(strings.Replace(reloadBase, "%d", fmt.Sprint(5+i), 1))
	}
	m.rewriteQuietly(strings.Replace(reloadBase, "%d", "3", 1))
	m.waitFor("the last file applied", func(e entry) bool { return e.is("configuration applied", "workers", 4) })
	// Every worker an intermediate file started beyond id 2 is stopped.
	m.waitFor("worker 2", started("sleeper", 2))
	for id := 3; id < 25; id++ {
		starts := len(m.all(started("sleeper", id)))
		if starts > 0 {
			m.waitN("surplus stopped", starts, func(e entry) bool { return e.is("worker stopped", "service", "sleeper", "worker", id) })
		}
	}
}

// rewriteQuietly replaces the manager's config file without a signal.
func (m *manager) rewriteQuietly(yaml string) {
	m.t.Helper()
	if err := os.WriteFile(m.config, []byte(yaml), 0o644); err != nil {
		m.t.Fatal(err)
	}
}

// A worker that takes its whole stop timeout does not hold up the next
// reload: it is accepted and applied while that worker still stops.
func TestSlowStopDoesNotBlockTheNextReload(t *testing.T) {
	t.Parallel()
	conf := "services:\n  stubborn:\n    run: stubborn\n    workers: %d\n    stop_timeout: 1h\n  sleeper:\n    run: sleeper\n    workers: %d\n"
	m := startManager(t, fmt.Sprintf(conf, 2, 1))
	m.waitN("ready", 3, func(e entry) bool { return strings.HasPrefix(e.str("msg"), "ready ") })
	m.rewrite(fmt.Sprintf(conf, 1, 1)) // stubborn 1 will not stop for an hour
	m.waitFor("stop sent", func(e entry) bool { return e.is("stopping worker", "service", "stubborn", "worker", 1) })
	m.rewrite(fmt.Sprintf(conf, 1, 3))
	m.waitFor("second reload applied", started("sleeper", 2))
	if n := len(m.all(func(e entry) bool { return e.is("worker stopped", "service", "stubborn") })); n != 0 {
		t.Fatalf("the stubborn worker stopped (%d); the test proves nothing", n)
	}
}

// A service with a reload_signal is told to reload in place by each reload
// of the file: same process, its Reload called; others are left alone.
func TestReloadSignalReachesGoServicesInPlace(t *testing.T) {
	t.Parallel()
	conf := "services:\n  inplace:\n    run: reloader\n    reload_signal: SIGHUP\n  plain:\n    run: reloader\n"
	m := startManager(t, conf)
	m.waitN("ready", 2, func(e entry) bool { return e.str("msg") == "ready" })
	first := m.waitFor("inplace started", started("inplace", 0))
	m.signal(syscall.SIGHUP)
	got := m.waitFor("reloaded", output("inplace", "reloaded 1"))
	if got.int("pid") != first.int("pid") {
		t.Errorf("reloaded in pid %d, want the running %d", got.int("pid"), first.int("pid"))
	}
	m.signal(syscall.SIGHUP)
	m.waitFor("reloaded again", output("inplace", "reloaded 2"))
	if n := len(m.all(output("plain", "reloaded"))); n != 0 {
		t.Error("a service without reload_signal was told to reload")
	}
	if n := len(m.all(func(e entry) bool { return e.str("msg") == "worker started" })); n != 2 {
		t.Errorf("%d starts, want 2: a reload in place restarts nothing", n)
	}
}

func TestReloadWithReplaceAllStopsEveryWorkerAtOnce(t *testing.T) {
	t.Parallel()
	conf := `
services:
  gen:
    command: ["/bin/sh", "-c", "echo gen $GEN; exec /bin/sleep 1000"]
    workers: 3
    replace: all
    env: {GEN: "%s"}
`
	m := startManager(t, strings.Replace(conf, "%s", "1", 1))
	m.waitN("3 of gen 1", 3, output("gen", "gen 1"))
	m.rewrite(strings.Replace(conf, "%s", "2", 1))
	m.waitN("3 of gen 2", 3, output("gen", "gen 2"))

	// All three were asked to stop before the first replacement started.
	var order []string
	seenReload := false
	for _, e := range m.all(func(e entry) bool { return true }) {
		switch {
		case e.str("msg") == "signal received" && e.str("signal") == "hangup":
			seenReload = true
		case !seenReload || e.str("service") != "gen":
		case e.str("msg") == "replacing worker: its definition changed":
			order = append(order, "stop")
		case e.str("msg") == "worker started":
			order = append(order, "start")
		}
	}
	want := []string{"stop", "stop", "stop", "start", "start", "start"}
	if strings.Join(order, " ") != strings.Join(want, " ") {
		t.Errorf("replace: all went %v, want %v", order, want)
	}
}

// A bad edit of a running service's command halts its rolling replacement
// at the first new worker that exits before it is ready: the slot goes back
// to the previous definition, the other workers keep running, and the
// reload is reported failed with the reason. The next good edit rolls out,
// replacing each worker only once the one before is ready.
func TestBadEditHaltsTheRolloutAndKeepsTheOldWorkers(t *testing.T) {
	t.Parallel()
	conf := `
services:
  gen:
    command: ["/bin/sh", "-c", %q]
    workers: 4
    restart: {min_uptime: 200ms}
`
	good := func(gen int) string {
		return fmt.Sprintf(conf, fmt.Sprintf("echo gen %d; exec /bin/sleep 1000", gen))
	}
	m := startManager(t, good(1))
	first := m.waitN("4 of gen 1", 4, output("gen", "gen 1"))
	original := map[int]int{}
	for _, e := range first {
		original[e.int("worker")] = e.int("pid")
	}

	// Each edit reaches the manager by the file watch alone: an edit and a
	// SIGHUP would be two reloads, or one, as they race, and the counts
	// below would not be known.
	m.rewriteQuietly(fmt.Sprintf(conf, "exit 1"))
	halted := m.waitFor("the rollout halted", func(e entry) bool {
		return e.is("rollout halted: the service goes back to its previous definition", "service", "gen")
	})
	if r := halted.str("reason"); r != "gen worker 0 exit code 1 before ready" {
		t.Errorf("halt reason %q, want gen worker 0 exit code 1 before ready", r)
	}
	// Slot 0 runs the previous definition again.
	m.waitFor("worker 0 back on gen 1", func(e entry) bool {
		return output("gen", "gen 1")(e) && e.int("worker") == 0 && e.int("pid") != original[0]
	})
	for id := 1; id < 4; id++ {
		if !alive(original[id]) {
			t.Errorf("gen worker %d (pid %d) is gone: the halted rollout took it down", id, original[id])
		}
	}
	if n := len(m.all(func(e entry) bool { return e.is("replacing worker: its definition changed", "service", "gen") })); n != 1 {
		t.Errorf("%d workers replaced for the bad edit, want only the first", n)
	}
	st := m.statusJSON()
	if st.LastReload == nil || st.LastReload.OK || !st.LastReload.Halted || st.LastReload.Error != "gen worker 0 exit code 1 before ready" || st.Reloads.Failed != 1 {
		t.Errorf("status last reload %+v, reloads %+v; want failed, halted, with the reason, counted", st.LastReload, st.Reloads)
	}
	if code, out, _ := m.ctl(nil, "", "status"); code != 0 || !strings.Contains(out, "its rolling change halted, the service is back on its previous definition:\n  gen worker 0 exit code 1 before ready") {
		t.Errorf("status (exit %d) says\n%s\nwant the halted rollout and why", code, out)
	}

	m.rewriteQuietly(good(2))
	m.waitN("4 of gen 2", 4, output("gen", "gen 2"))
	// From the good edit on: each worker's replacement is ready before the
	// next worker is replaced.
	entries, _, _ := m.snapshot()
	var order []string
	seen := false
	for _, e := range entries {
		switch {
		case e.is("rollout halted: the service goes back to its previous definition"):
			seen = true
		case !seen:
		case e.is("replacing worker: its definition changed", "service", "gen"):
			order = append(order, fmt.Sprintf("replace %d", e.int("worker")))
		case e.is("replacement worker ready", "service", "gen"):
			order = append(order, fmt.Sprintf("ready %d", e.int("worker")))
		}
	}
	want := []string{"replace 0", "ready 0", "replace 1", "ready 1", "replace 2", "ready 2", "replace 3"}
	if len(order) < len(want) || !slices.Equal(order[:len(want)], want) {
		t.Errorf("the good rollout went %v, want %v then ready 3", order, want)
	}
	m.waitFor("the good reload complete", func(e entry) bool {
		return e.is("reload complete: every worker runs the new configuration")
	})
	if st := m.statusJSON(); st.LastReload == nil || !st.LastReload.OK || st.Reloads.OK != 1 || st.Reloads.Failed != 1 {
		t.Errorf("status last reload %+v, reloads %+v; want the good one recorded", st.LastReload, st.Reloads)
	}
}

// A ready: notify service's rollout waits for each new worker's READY=1 on
// its own NOTIFY_SOCKET; status shows its STATUS= text; a new worker that
// is not ready within ready_timeout halts the rollout.
func TestNotifyReadinessGatesTheRollout(t *testing.T) {
	t.Parallel()
	conf := notifierConf(t)
	m := startManager(t, conf("1", ", NOTIFY_AT_ONCE: '1'", "1h"))
	first := m.waitN("2 of gen 1 serving", 2, output("gen", "serving 1"))
	original := map[int]int{}
	for _, e := range first {
		original[e.int("worker")] = e.int("pid")
	}

	// Gen 2 is ready only when told: worker 0's replacement waits, and
	// worker 1 is not replaced meanwhile.
	m.rewrite(conf("2", "", "1h"))
	waiting := m.waitFor("worker 0 of gen 2 waiting", func(e entry) bool { return output("gen", "waiting 2")(e) && e.int("worker") == 0 })
	m.eventuallyWorker(t, 0, 0, "worker 0 shows its STATUS=", func(w control.WorkerStatus) bool {
		return w.PID == waiting.int("pid") && w.StatusText == "waiting" && !w.Ready
	})
	if st := m.statusJSON(); !st.Services[0].Workers[1].Outdated || st.Services[0].Workers[1].PID != original[1] {
		t.Errorf("worker 1 %+v, want the original process, outdated, while worker 0 is not ready", st.Services[0].Workers[1])
	}
	if err := syscall.Kill(waiting.int("pid"), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	next := m.waitFor("worker 1 of gen 2 waiting", func(e entry) bool { return output("gen", "waiting 2")(e) && e.int("worker") == 1 })
	if err := syscall.Kill(next.int("pid"), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	m.waitFor("the rollout complete", func(e entry) bool { return e.is("reload complete: every worker runs the new configuration") })
	m.eventuallyWorker(t, 0, 1, "worker 1 serving", func(w control.WorkerStatus) bool { return w.StatusText == "serving" && w.Ready })

	// Gen 3 never says READY=1: the rollout halts at worker 0 after
	// ready_timeout, and worker 1 keeps its gen 2 process.
	m.rewrite(conf("3", ", NOTIFY_NEVER: '1'", "500ms"))
	halted := m.waitFor("the rollout halted", func(e entry) bool {
		return e.is("rollout halted: the service goes back to its previous definition", "service", "gen")
	})
	if r := halted.str("reason"); r != "gen worker 0 not ready within 500ms" {
		t.Errorf("halt reason %q, want gen worker 0 not ready within 500ms", r)
	}
	m.waitFor("worker 0 back on gen 2", func(e entry) bool {
		return output("gen", "waiting 2")(e) && e.int("worker") == 0 && e.int("pid") != waiting.int("pid")
	})
	if !alive(next.int("pid")) {
		t.Errorf("worker 1's gen 2 process %d is gone: the halted rollout took it down", next.int("pid"))
	}
	if st := m.statusJSON(); st.LastReload == nil || st.LastReload.Error != "gen worker 0 not ready within 500ms" {
		t.Errorf("last reload %+v, want failed: gen worker 0 not ready within 500ms", st.LastReload)
	}
}

// notifierConf returns the configuration of a service gen of 2 notifier
// helpers (harness_test.go) that say READY=1 under ready: notify: generation
// gen, with the notifier's extra environment (", NOTIFY_AT_ONCE: '1'") and
// readyTimeout.
func notifierConf(t *testing.T) func(gen, extra, readyTimeout string) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return func(gen, extra, readyTimeout string) string {
		return fmt.Sprintf(`
services:
  gen:
    command: [%q]
    workers: 2
    env: {TEST_HELPER: notifier, GEN: %q%s}
    ready: notify
    ready_timeout: %s
`, exe, gen, extra, readyTimeout)
	}
}

// eventuallyWorker polls `status --json` until worker id of the service
// at index svc satisfies cond, for at most waitTimeout.
func (m *manager) eventuallyWorker(t *testing.T, svc, id int, what string, cond func(control.WorkerStatus) bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		st := m.statusJSON()
		var w control.WorkerStatus
		if svc < len(st.Services) && id < len(st.Services[svc].Workers) {
			w = st.Services[svc].Workers[id]
			if cond(w) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v (worker %+v)", what, waitTimeout, w)
		}
		time.Sleep(20 * time.Millisecond) // polling the control socket: a STATUS= datagram has no event the test can wait on
	}
}

// A Go service under ready: notify is ready as its Run starts, unless it
// reports its readiness itself (service.ReadyReporter), with its status.
func TestGoServiceReadiness(t *testing.T) {
	t.Parallel()
	m := startManager(t, `
services:
  late:
    run: late-ready
    ready: notify
    ready_timeout: 1h
  plain:
    run: sleeper
    ready: notify
    ready_timeout: 1h
`)
	loading := m.waitFor("late loading", output("late", "loading"))
	m.waitFor("plain ready", output("plain", "ready"))
	m.eventuallyWorker(t, 0, 0, "late reports loading, not ready", func(w control.WorkerStatus) bool {
		return w.StatusText == "loading" && !w.Ready
	})
	m.eventuallyWorker(t, 1, 0, "plain ready once its Run started", func(w control.WorkerStatus) bool { return w.Ready })
	if err := syscall.Kill(loading.int("pid"), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	m.eventuallyWorker(t, 0, 0, "late ready", func(w control.WorkerStatus) bool { return w.StatusText == "loaded" && w.Ready })
}

// A ready worker that stops sending WATCHDOG=1 within its service's
// watchdog is aborted and started again, and counted; one that keeps
// pinging is left alone until it is stopped by SIGSTOP, which its watchdog
// catches the same way.
func TestWatchdogAbortsAWorkerThatStopsPinging(t *testing.T) {
	t.Parallel()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	m := startManager(t, fmt.Sprintf(`
services:
  silent:
    command: [%[1]q]
    env: {TEST_HELPER: notifier, GEN: s, NOTIFY_AT_ONCE: '1'}
    ready: notify
    watchdog: 300ms
  pinger:
    command: [%[1]q]
    env: {TEST_HELPER: notifier, GEN: p, NOTIFY_AT_ONCE: '1', NOTIFY_PING: '1'}
    ready: notify
    watchdog: 2s
`, exe))
	pinger := m.waitFor("pinger serving", output("pinger", "serving p"))
	missed := func(svc string) func(entry) bool {
		return func(e entry) bool { return e.is("worker missed its watchdog; aborting it", "service", svc) }
	}
	// Six aborts of the silent worker take at least 6 × 300ms plus its
	// backoff (0, 100, 200, 400, 800ms): over 3s, more than the pinger's
	// watchdog, which its pings must have kept from running out.
	aborts := m.waitN("silent aborted six times", 6, missed("silent"))
	if span := aborts[5].at(t).Sub(pinger.at(t)); span < 2*time.Second {
		t.Fatalf("six aborts took %v from the pinger's start, less than its 2s watchdog: the test proves nothing", span)
	}
	if n := len(m.all(missed("pinger"))); n != 0 {
		t.Errorf("the pinging worker was aborted %d times", n)
	}
	if st := m.statusJSON(); st.Services[0].WatchdogAborts < 6 || st.Services[1].WatchdogAborts != 0 {
		t.Errorf("watchdog aborts: silent %d, pinger %d; want at least 6 and 0", st.Services[0].WatchdogAborts, st.Services[1].WatchdogAborts)
	}

	if err := syscall.Kill(pinger.int("pid"), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	m.waitFor("the stopped pinger aborted", missed("pinger"))
	m.waitFor("the pinger serving again", func(e entry) bool {
		return output("pinger", "serving p")(e) && e.int("pid") != pinger.int("pid")
	})
}

// Env files: later over earlier, env over both; a reload rereads them and
// replaces only the workers whose environment changed; a broken one is
// refused with its line, and nothing stops.
func TestEnvFilesAreReadAtEachReload(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, text string) {
		t.Helper()
		if err := os.WriteFile(dir+"/"+name, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("a.env", "A=a1\nB=a1\nC=a1\n")
	write("b.env", "B=b1\n")
	m := startManager(t, fmt.Sprintf(`
services:
  other:
    run: sleeper
  gen:
    command: ["/bin/sh", "-c", "echo gen $A $B $C; exec /bin/sleep 1000"]
    workers: 2
    env: {C: env}
    env_file: [%[1]s/a.env, %[1]s/b.env, {path: %[1]s/none.env, optional: true}]
`, dir))
	m.waitN("2 of gen a1 b1 env", 2, output("gen", "gen a1 b1 env"))
	other := startsOf(m, "other")

	write("b.env", "B=b2\n")
	m.signal(syscall.SIGHUP)
	m.waitN("2 of gen a1 b2 env", 2, output("gen", "gen a1 b2 env"))
	if got := startsOf(m, "other"); len(got[0]) != 1 || got[0][0] != other[0][0] {
		t.Errorf("a service without env files was replaced: before %v, after %v", other, got)
	}

	write("a.env", "A=a1\nthis is not a variable\n")
	m.signal(syscall.SIGHUP)
	m.waitFor("the refused reload", func(e entry) bool { return e.str("msg") == "reload failed: the running services are unchanged" })
	if len(m.all(func(e entry) bool { return strings.Contains(e.str("msg"), "env_file "+dir+"/a.env:2: missing =") })) != 1 {
		t.Error("the refused reload does not name the env file's line")
	}
	stopped := m.all(func(e entry) bool { return e.str("msg") == "worker stopped" })
	if len(stopped) != 2 { // gen's two, replaced by the first reload
		t.Errorf("%d workers stopped, want the 2 the good reload replaced", len(stopped))
	}
}
