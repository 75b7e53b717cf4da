package supervisor

// Scheduled services, event by event, on a fake clock (see loop_test.go).

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// timerOf returns the pending timer that fires after d, or fails.
func (r *loopRig) timerOf(d time.Duration) *fakeTimer {
	r.t.Helper()
	for _, tm := range r.clock.pending() {
		if tm.d == d {
			return tm
		}
	}
	r.t.Fatalf("no pending timer of %v (pending: %d)", d, len(r.clock.pending()))
	return nil
}

// A one-minute schedule: nothing at the start, a run at each minute, a
// minute whose run is still going skipped, the next run once it ended, and
// a timer that fires early by the wall clock runs nothing.
func TestLoopOneMinuteSchedule(t *testing.T) {
	r := newRig(t, "services:\n  tick:\n    command: [/bin/true]\n    schedule: {cron: \"* * * * *\", time_zone: UTC}\n    restart: {policy: never, min_uptime: 1s}\n")
	r.clock.now = time.Date(2026, 12, 6, 10, 0, 20, 0, time.UTC)
	r.s.startAll()
	if sp := spawned(r.requests()); len(sp) != 0 {
		t.Fatalf("a scheduled service started with the manager: %+v", sp)
	}
	st := r.s.status()
	if sv := st.Services[0]; sv.Workers[0].State != "scheduled" || !sv.NextRunAt.Equal(time.Date(2026, 12, 6, 10, 1, 0, 0, time.UTC)) || !r.s.readyNoted {
		t.Fatalf("at the start: state %q, next run %v, manager ready %v", sv.Workers[0].State, sv.NextRunAt, r.s.readyNoted)
	}
	// 10:01: the first run.
	tm := r.timerOf(40 * time.Second)
	r.clock.now = r.clock.now.Add(40 * time.Second)
	tm.fire()
	r.deliver()
	sp := spawned(r.requests())
	if len(sp) != 1 {
		t.Fatalf("10:01: %d spawns, want the run", len(sp))
	}
	r.s.handle(workerStarted{token: sp[0].token, pid: 100, at: r.clock.now})
	// 10:02: still running, skipped.
	tm = r.timerOf(time.Minute)
	r.clock.now = r.clock.now.Add(time.Minute)
	tm.fire()
	r.deliver()
	if sp := spawned(r.requests()); len(sp) != 0 || r.s.counters("tick").ScheduleSkips != 1 {
		t.Fatalf("10:02 with the run still going: spawns %+v, skips %d; want none and one", sp, r.s.counters("tick").ScheduleSkips)
	}
	r.clock.now = r.clock.now.Add(10 * time.Second)
	r.s.handle(workerExited{token: sp[0].token, pid: 100, status: 0, at: r.clock.now})
	if st := r.s.status(); st.Services[0].Workers[0].State != "completed" {
		t.Fatalf("after its exit: %q, want completed", st.Services[0].Workers[0].State)
	}
	// 10:03: the next run. The timer was armed at 10:02 for a minute.
	tm = r.timerOf(time.Minute)
	r.clock.now = time.Date(2026, 12, 6, 10, 3, 0, 0, time.UTC)
	tm.fire()
	r.deliver()
	sp = spawned(r.requests())
	if len(sp) != 1 || r.s.counters("tick").ScheduledRuns != 2 {
		t.Fatalf("10:03: spawns %+v, runs %d; want a second run", sp, r.s.counters("tick").ScheduledRuns)
	}
	r.s.handle(workerStarted{token: sp[0].token, pid: 101, at: r.clock.now})
	r.s.handle(workerExited{token: sp[0].token, pid: 101, status: 0, at: r.clock.now})
	// The 10:04 timer fires while the wall clock says 10:03:59: nothing
	// runs until 10:04 itself.
	tm = r.timerOf(time.Minute)
	r.clock.now = time.Date(2026, 12, 6, 10, 3, 59, 0, time.UTC)
	tm.fire()
	r.deliver()
	if sp := spawned(r.requests()); len(sp) != 0 {
		t.Fatalf("early by the clock: %+v", sp)
	}
	r.timerOf(time.Second).fire()
	r.clock.now = time.Date(2026, 12, 6, 10, 4, 0, 0, time.UTC)
	r.deliver()
	if sp := spawned(r.requests()); len(sp) != 1 {
		t.Fatalf("10:04: %d spawns, want a run", len(sp))
	}
}

// A reload that keeps the schedule keeps its next time; one that changes
// it counts from the reload; one that removes it runs the service as any.
func TestLoopScheduleAcrossReloads(t *testing.T) {
	conf := "services:\n  job:\n    command: [/bin/true]\n    schedule: {cron: \"%s\", time_zone: UTC}\n    restart: {policy: never}\n"
	r := newRig(t, fmt.Sprintf(conf, "0 * * * *"))
	r.clock.now = time.Date(2026, 12, 6, 10, 30, 0, 0, time.UTC)
	r.s.startAll()
	r.clock.now = r.clock.now.Add(10 * time.Minute)
	r.reloadSettled(parse(t, fmt.Sprintf(conf, "0 * * * *")+"# edited\n"))
	if next := r.s.schedules["job"].next; !next.Equal(time.Date(2026, 12, 6, 11, 0, 0, 0, time.UTC)) {
		t.Errorf("unchanged: next %v, want 11:00", next)
	}
	r.reloadSettled(parse(t, fmt.Sprintf(conf, "*/15 * * * *")))
	if next := r.s.schedules["job"].next; !next.Equal(time.Date(2026, 12, 6, 10, 45, 0, 0, time.UTC)) {
		t.Errorf("changed: next %v, want 10:45", next)
	}
	r.reloadSettled(parse(t, "services:\n  job:\n    command: [/bin/true]\n    restart: {policy: never}\n"))
	if sp := spawned(r.requests()); len(sp) != 1 || len(r.s.schedules) != 0 {
		t.Errorf("unscheduled: spawns %+v, timers %d; want it run, no timer", sp, len(r.s.schedules))
	}
}

// An @every schedule whose timer fires early by the wall clock runs at
// its time, not an interval later; a reload that changes a scheduled
// service mid-run lets the run go on.
func TestLoopEveryScheduleEarlyAndAChangeMidRun(t *testing.T) {
	conf := "services:\n  job:\n    command: [%s]\n    workers: 2\n    schedule: \"@every 1m\"\n    restart: {policy: never}\n"
	r := newRig(t, fmt.Sprintf(conf, "/bin/true"))
	r.clock.now = time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	r.s.startAll()
	tm := r.timerOf(time.Minute)
	r.clock.now = time.Date(2026, 12, 6, 10, 0, 59, 500_000_000, time.UTC)
	tm.fire()
	r.deliver()
	if tm := r.timerOf(500 * time.Millisecond); tm == nil {
		t.Fatal("not re-armed for its time")
	}
	r.clock.now = time.Date(2026, 12, 6, 10, 1, 0, 0, time.UTC)
	r.timerOf(500 * time.Millisecond).fire()
	r.deliver()
	sp := spawned(r.requests())
	if len(sp) != 2 {
		t.Fatalf("at 10:01: %d spawns, want the run of both workers", len(sp))
	}
	for i, x := range sp {
		r.s.handle(workerStarted{token: x.token, pid: 100 + i, at: r.clock.now})
	}
	r.reloadSettled(parse(t, fmt.Sprintf(conf, "/bin/false")))
	if sg := signals(r.requests()); len(sg) != 0 {
		t.Fatalf("a reload mid-run stopped %+v, want the run to go on", sg)
	}
	r.s.handle(workerExited{token: sp[1].token, pid: 101, status: 0, at: r.clock.now})
	if sp := spawned(r.requests()); len(sp) != 0 {
		t.Fatalf("a worker that ended its run started again: %+v", sp)
	}
	r.s.handle(workerExited{token: sp[0].token, pid: 100, status: 0, at: r.clock.now})
	r.clock.now = time.Date(2026, 12, 6, 10, 2, 0, 0, time.UTC)
	r.timerOf(time.Minute).fire()
	r.deliver()
	if next := spawned(r.requests()); len(next) != 2 || next[0].spec.argv0 != "/bin/false" {
		t.Fatalf("the next run: %+v, want both on the new definition", next)
	}
}

// A scheduled worker scaled down and up again while it stops waits for
// the next time; one `gotyledon restart` replaces runs again at once,
// and the restart settles.
func TestLoopScheduledWorkerStoppedThenWantedAgain(t *testing.T) {
	conf := "services:\n  job:\n    command: [/bin/true]\n    workers: %d\n    schedule: \"@every 1m\"\n    restart: {policy: never, min_uptime: 1s}\n"
	r := newRig(t, fmt.Sprintf(conf, 2))
	r.clock.now = time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	r.s.startAll()
	r.clock.now = r.clock.now.Add(time.Minute)
	r.timerOf(time.Minute).fire()
	r.deliver()
	sp := spawned(r.requests())
	for i, x := range sp {
		r.s.handle(workerStarted{token: x.token, pid: 100 + i, at: r.clock.now})
	}
	if err := r.reconfigure("job", 1); err != nil {
		t.Fatal(err)
	}
	if err := r.reconfigure("job", 2); err != nil {
		t.Fatal(err)
	}
	r.requests() // worker 1's stop
	r.s.handle(workerExited{token: sp[1].token, pid: 101, status: unix.WaitStatus(syscall.SIGTERM), at: r.clock.now})
	if again := spawned(r.requests()); len(again) != 0 || r.s.workers[workerKey{"job", 1}].state != stateScheduled {
		t.Fatalf("scaled down and up mid-run: spawns %+v, state %v; want it scheduled", again, r.s.workers[workerKey{"job", 1}].state)
	}
	r.clock.now = r.clock.now.Add(2 * time.Second)
	r.readyAll(sp[0].token)
	reply, settled := make(chan error, 1), make(chan error, 1)
	r.s.handle(restartRequested{service: "job", id: 0, reply: reply, settled: settled})
	if err := <-reply; err != nil {
		t.Fatal(err)
	}
	sg := signals(r.requests())
	if len(sg) != 1 || sg[0].token != sp[0].token {
		t.Fatalf("restart of worker 0: %+v, want its stop", sg)
	}
	r.s.handle(workerExited{token: sp[0].token, pid: 100, status: unix.WaitStatus(syscall.SIGTERM), at: r.clock.now})
	now := spawned(r.requests())
	if len(now) != 1 || now[0].spec.id != 0 {
		t.Fatalf("after the restart's stop: %+v, want worker 0 run again now", now)
	}
	r.s.handle(workerStarted{token: now[0].token, pid: 200, at: r.clock.now})
	r.clock.now = r.clock.now.Add(2 * time.Second)
	r.readyAll(now[0].token)
	if err, ok := pendingOutcome(settled); !ok || err != nil {
		t.Errorf("the restart settled %v with %v, want nil", ok, err)
	}
}
