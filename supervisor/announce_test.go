package supervisor

// The loop's announcements (announce.go): when the manager is ready, when
// a reload has settled, that something changed. Driven by hand, with the
// fake clock of loop_test.go.

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gotyledon/gotyledon/config"
)

func closed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// readyAll reports each of tokens ready, as min_uptime's timer would.
func (r *loopRig) readyAll(tokens ...uint64) {
	r.t.Helper()
	for _, tok := range tokens {
		r.s.handle(readyDue{token: tok, seq: r.s.byToken[tok].readySeq})
	}
}

// The manager is ready once every worker of the first start is: started
// is not enough.
func TestLoopReadyWaitsForEveryWorkerOfTheFirstStart(t *testing.T) {
	r := newRig(t, "services:\n  w:\n    command: [/bin/true]\n    workers: 2\n    restart: {min_uptime: 1s}\n")
	byID := map[int]uint64{}
	for tok, id := range r.startAllRunning() {
		byID[id] = tok
	}
	if !closed(r.s.Started()) {
		t.Fatal("not started once every first start was answered")
	}
	if closed(r.s.Ready()) || r.status().Ready {
		t.Fatal("ready before any worker ran min_uptime")
	}
	r.clock.now = r.clock.now.Add(time.Second)
	r.readyAll(byID[0])
	if closed(r.s.Ready()) {
		t.Fatal("ready with worker 1 not ready")
	}
	r.readyAll(byID[1])
	if !closed(r.s.Ready()) || !r.status().Ready {
		t.Fatal("not ready once both workers were")
	}
	if n := r.logs.FilterMessage("manager ready: every worker is ready").Len(); n != 1 {
		t.Errorf("%d 'manager ready' entries, want 1", n)
	}
	// The ready_timeout timer of the first start is cancelled: only the
	// workers' own timers are left (none here).
	for _, p := range r.clock.timers {
		if p.initial && (p.d != config.DefaultReadyTimeout || !p.stopped) {
			t.Errorf("the first start's ready_timeout timer: %+v, want the default's, stopped", p)
		}
	}
}

// A worker that is not ready within its service's ready_timeout does not
// hold the manager back past it: the manager is ready, and says which
// workers are not.
func TestLoopReadyAfterTheFirstStartsReadyTimeout(t *testing.T) {
	r := newRig(t, "services:\n  w:\n    command: [/bin/true]\n    workers: 2\n    ready: notify\n    ready_timeout: 5s\n")
	byID := map[int]uint64{}
	for tok, id := range r.startAllRunning() {
		byID[id] = tok
	}
	r.s.handle(workerNotified{token: byID[0], ready: true})
	if closed(r.s.Ready()) {
		t.Fatal("ready with worker 1 silent")
	}
	var initial *fakeTimer
	for _, p := range r.clock.timers {
		if p.initial && p.d == 5*time.Second {
			initial = p
		}
	}
	if initial == nil {
		t.Fatal("startAll armed no 5s bound on the first start's readiness")
	}
	r.clock.now = r.clock.now.Add(5 * time.Second)
	initial.fire()
	r.deliver()
	if !closed(r.s.Ready()) {
		t.Fatal("not ready after the first start's ready_timeout")
	}
	e := r.logs.FilterMessage("manager ready: not every worker was ready within its ready_timeout").All()
	if len(e) != 1 || e[0].ContextMap()["not_ready"] != "w worker 1 (running)" {
		t.Errorf("entries %v, want one naming w worker 1", e)
	}
}

// Slots a rescale removes during the first start are not waited for.
func TestLoopReadyDespiteSlotsScaledAway(t *testing.T) {
	r := newRig(t, "services:\n  w:\n    command: [/bin/true]\n    workers: 3\n    restart: {min_uptime: 1s}\n")
	tokens := r.startAllRunning()
	if err := r.reconfigure("w", 1); err != nil {
		t.Fatal(err)
	}
	r.requests()
	for tok, id := range tokens {
		if id == 0 {
			r.clock.now = r.clock.now.Add(time.Second)
			r.readyAll(tok)
			continue
		}
		if closed(r.s.Ready()) {
			t.Fatal("ready while a slot scaled away still stops")
		}
		r.s.handle(workerExited{token: tok, pid: 100 + id, status: unix.WaitStatus(syscall.SIGTERM), at: r.clock.now})
	}
	if !closed(r.s.Ready()) {
		t.Fatal("not ready: worker 0 is ready, and slots 1 and 2 are gone")
	}
}

// reloadSettled asks the loop for cfg as ReloadSettled does, and returns
// the settlement's channel once the reload is applied.
func (r *loopRig) reloadSettled(cfg *config.Config) <-chan error {
	r.t.Helper()
	reply, settled := make(chan error, 1), make(chan error, 1)
	r.s.handle(reloadRequested{cfg: cfg, source: ReloadByControl, reply: reply, settled: settled})
	if err := <-reply; err != nil {
		r.t.Fatalf("reload not applied: %v", err)
	}
	return settled
}

func pendingOutcome(c <-chan error) (error, bool) {
	select {
	case err := <-c:
		return err, true
	default:
		return nil, false
	}
}

const twoTrue = "services:\n  w:\n    command: [/bin/true]\n    workers: 2\n    restart: {min_uptime: 1s}\n"

// replaceSlot plays the replacement of slot id, whose process is tok: the
// old process exits on its stop signal, the new one starts as pid. It
// returns the new process's token.
func (r *loopRig) replaceSlot(tok uint64, pid int) uint64 {
	r.t.Helper()
	if sg := signals(r.requests()); len(sg) != 1 || sg[0].token != tok || !sg[0].stop {
		r.t.Fatalf("requests %+v, want token %d stopped", sg, tok)
	}
	r.s.handle(workerExited{token: tok, pid: pid - 100, status: unix.WaitStatus(syscall.SIGTERM), at: r.clock.now})
	sp := spawned(r.requests())
	if len(sp) != 1 {
		r.t.Fatalf("%d spawns, want the replacement", len(sp))
	}
	r.s.handle(workerStarted{token: sp[0].token, pid: pid, at: r.clock.now})
	return sp[0].token
}

// A reload settles once every replaced worker is ready, not when it is
// applied.
func TestLoopReloadSettlesWhenItsRolloutIsComplete(t *testing.T) {
	r := newRig(t, twoTrue)
	byID := r.startAllReady()
	settled := r.reloadSettled(parse(t, strings.Replace(twoTrue, "/bin/true", "/bin/false", 1)))
	new0 := r.replaceSlot(byID[0], 200)
	if err, ok := pendingOutcome(settled); ok {
		t.Fatalf("settled (%v) with slot 0's replacement not ready", err)
	}
	r.clock.now = r.clock.now.Add(time.Second)
	r.readyAll(new0)
	new1 := r.replaceSlot(byID[1], 201)
	if err, ok := pendingOutcome(settled); ok {
		t.Fatalf("settled (%v) with slot 1's replacement not ready", err)
	}
	r.clock.now = r.clock.now.Add(time.Second)
	r.readyAll(new1)
	if err, ok := pendingOutcome(settled); !ok || err != nil {
		t.Fatalf("outcome %v (received %v), want nil once both replacements are ready", err, ok)
	}
}

// A halted rollout settles its reload with the reason.
func TestLoopReloadSettlesWithTheHalt(t *testing.T) {
	r := newRig(t, twoTrue)
	byID := r.startAllReady()
	settled := r.reloadSettled(parse(t, strings.Replace(twoTrue, "/bin/true", "/bin/false", 1)))
	new0 := r.replaceSlot(byID[0], 200)
	r.s.handle(workerExited{token: new0, pid: 200, status: 256, at: r.clock.now.Add(10 * time.Millisecond)})
	err, ok := pendingOutcome(settled)
	var halted *RolloutHaltedError
	if !ok || !errors.Is(err, ErrRolloutHalted) || !errors.As(err, &halted) || halted.Reason != "w worker 0 exit code 1 before ready" {
		t.Fatalf("outcome %v (received %v), want the halt: w worker 0 exit code 1 before ready", err, ok)
	}
}

// A reload that changes no process settles before it is answered; one that
// a later reload supersedes settles with that one; a shutdown settles what
// is left with ErrStopped.
func TestLoopReloadSettlementAtOnceSupersededAndStopped(t *testing.T) {
	r := newRig(t, twoTrue)
	byID := r.startAllReady()
	same := r.reloadSettled(parse(t, strings.Replace(twoTrue, "min_uptime: 1s", "min_uptime: 2s", 1)))
	if err, ok := pendingOutcome(same); !ok || err != nil {
		t.Fatalf("a reload that restarts nothing settled with %v (received %v), want nil at once", err, ok)
	}
	first := r.reloadSettled(parse(t, strings.Replace(twoTrue, "/bin/true", "/bin/false", 1)))
	r.replaceSlot(byID[0], 200)
	second := r.reloadSettled(parse(t, strings.Replace(twoTrue, "/bin/true", "/bin/echo", 1)))
	if _, ok := pendingOutcome(first); ok {
		t.Fatal("the superseded reload settled when the next one came")
	}
	r.s.handle(shutdownRequested{})
	for name, c := range map[string]<-chan error{"superseded": first, "second": second} {
		if err, ok := pendingOutcome(c); !ok || !errors.Is(err, ErrStopped) {
			t.Errorf("%s reload at the shutdown: %v (received %v), want ErrStopped", name, err, ok)
		}
	}
}

// Changes is told of what a summary shows, and not of status requests or
// a worker's pings.
func TestLoopSignalsChanges(t *testing.T) {
	r := newRig(t, "services:\n  w:\n    command: [/bin/true]\n    watchdog: 1s\n")
	tok := r.startOne(100)
	r.s.signalChange()
	if !closed(r.s.Changes()) {
		t.Fatal("no change signalled after the first start")
	}
	r.status()
	r.s.handle(workerNotified{token: tok, watchdog: true})
	r.s.signalChange()
	if closed(r.s.Changes()) {
		t.Fatal("a status request and a watchdog ping signalled a change")
	}
	text := "warming up"
	r.s.handle(workerNotified{token: tok, status: &text})
	r.s.signalChange()
	if !closed(r.s.Changes()) {
		t.Fatal("no change signalled for a worker's STATUS=")
	}
	r.clock.now = r.clock.now.Add(time.Second)
	r.readyAll(tok)
	r.s.signalChange()
	if !closed(r.s.Changes()) {
		t.Fatal("no change signalled when the worker became ready")
	}
}

// replace: all stops every outdated worker at once, and its reload settles
// once every new process is ready; one that dies before it is ready halts
// it, and the service goes back to its previous definition.
func TestLoopReplaceAllSettlesOnReadinessAndHalts(t *testing.T) {
	const conf = "services:\n  w:\n    command: [%s]\n    workers: 2\n    replace: all\n    restart: {min_uptime: 1s}\n"
	for _, halt := range []bool{false, true} {
		r := newRig(t, strings.Replace(conf, "%s", "/bin/true", 1))
		byID := r.startAllReady()
		settled := r.reloadSettled(parse(t, strings.Replace(conf, "%s", "/bin/false", 1)))
		if sg := signals(r.requests()); len(sg) != 2 {
			t.Fatalf("%d stops, want both workers at once", len(sg))
		}
		var fresh []uint64
		for id := range 2 {
			r.s.handle(workerExited{token: byID[id], pid: 100 + id, status: unix.WaitStatus(syscall.SIGTERM), at: r.clock.now})
			sp := spawned(r.requests())
			if len(sp) != 1 {
				t.Fatalf("%d spawns after worker %d stopped, want its replacement", len(sp), id)
			}
			r.s.handle(workerStarted{token: sp[0].token, pid: 200 + id, at: r.clock.now})
			fresh = append(fresh, sp[0].token)
		}
		if err, ok := pendingOutcome(settled); ok {
			t.Fatalf("settled (%v) before the new workers were ready", err)
		}
		r.clock.now = r.clock.now.Add(time.Second)
		r.readyAll(fresh[0])
		if !halt {
			r.readyAll(fresh[1])
			if err, ok := pendingOutcome(settled); !ok || err != nil {
				t.Errorf("outcome %v (received %v), want nil once both are ready", err, ok)
			}
			continue
		}
		// Worker 1's new process dies 10ms after its start: not ready.
		r.s.handle(workerExited{token: fresh[1], pid: 201, status: 256, at: r.clock.now.Add(-time.Second + 10*time.Millisecond)})
		if err, ok := pendingOutcome(settled); !ok || !errors.Is(err, ErrRolloutHalted) {
			t.Errorf("outcome %v (received %v), want the halt", err, ok)
		}
		if sp := spawned(r.requests()); len(sp) != 1 || sp[0].spec.argv0 != "/bin/true" {
			t.Errorf("spawns %+v after the halt, want worker 1 on /bin/true again", sp)
		}
	}
}

// Probe is answered only once the process table has answered too: the
// loop alone does not make the watchdog's ping.
func TestProbeNeedsTheProcessTableToo(t *testing.T) {
	r := newRig(t, oneWorker)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- r.s.Probe(ctx) }()
	<-r.s.inbox.wake
	r.deliver()
	select {
	case err := <-errc:
		t.Fatalf("Probe returned %v with only the loop having answered", err)
	default:
	}
	var probes []procMsg
	for _, m := range r.requests() {
		if _, ok := m.(procProbe); ok {
			probes = append(probes, m)
		}
	}
	if len(probes) != 1 {
		t.Fatalf("%d probes forwarded to the process table, want 1", len(probes))
	}
	r.s.procs.handle(probes[0])
	if err := <-errc; err != nil {
		t.Fatalf("Probe: %v, want nil once the table answered", err)
	}
}

// A restart replaces the workers asked for one at a time, as a rollout of
// an unchanged definition, settles once the new ones are ready, and is
// not a reload: no reload is recorded.
func TestLoopRestartIsARollingReplacement(t *testing.T) {
	r := newRig(t, twoTrue)
	byID := r.startAllReady()
	reply, settled := make(chan error, 1), make(chan error, 1)
	r.s.handle(restartRequested{service: "w", id: -1, reply: reply, settled: settled})
	if err := <-reply; err != nil {
		t.Fatal(err)
	}
	new0 := r.replaceSlot(byID[0], 200)
	if err, ok := pendingOutcome(settled); ok {
		t.Fatalf("settled (%v) with worker 0's new process not ready", err)
	}
	if sg := signals(r.requests()); len(sg) != 0 {
		t.Fatalf("worker 1 stopped (%+v) before worker 0's new process was ready", sg)
	}
	r.clock.now = r.clock.now.Add(time.Second)
	r.readyAll(new0)
	new1 := r.replaceSlot(byID[1], 201)
	r.clock.now = r.clock.now.Add(time.Second)
	r.readyAll(new1)
	if err, ok := pendingOutcome(settled); !ok || err != nil {
		t.Fatalf("outcome %v (received %v), want nil once both were replaced and ready", err, ok)
	}
	if st := r.status(); st.LastReload != nil || st.ReloadsOK != 0 {
		t.Errorf("a restart was recorded as a reload: %+v, %d ok", st.LastReload, st.ReloadsOK)
	}
	// One worker, by id; and ids or services that are not there.
	r.s.handle(restartRequested{service: "w", id: 1, reply: reply, settled: settled})
	if err := <-reply; err != nil {
		t.Fatal(err)
	}
	if sg := signals(r.requests()); len(sg) != 1 || sg[0].token != new1 {
		t.Errorf("restart w/1 stopped %+v, want worker 1 alone", sg)
	}
	for _, tc := range []struct {
		service string
		id      int
		want    error
	}{{"w", 2, ErrNoSuchWorker}, {"nope", -1, ErrNoSuchService}} {
		r.s.handle(restartRequested{service: tc.service, id: tc.id, reply: reply, settled: make(chan error, 1)})
		if err := <-reply; !errors.Is(err, tc.want) {
			t.Errorf("restart %s/%d: %v, want %v", tc.service, tc.id, err, tc.want)
		}
	}
}
