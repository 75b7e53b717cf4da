package supervisor

// Deterministic tests of the loop's decisions. No process is started: the
// process table is only an inbox the test reads, events are fed by hand,
// and time is a fake clock whose timers fire when the test says so.

import (
	"context"
	"errors"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/gotyledon/gotyledon/config"
)

// fakeClock is the loop's now and afterFunc, advanced by the test.
type fakeClock struct {
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	d              time.Duration
	f              func()
	stopped, fired bool
	// initial: armed by awaitInitialReady, the bound on the first start's
	// readiness (pending leaves it out).
	initial bool
}

func (c *fakeClock) afterFunc(d time.Duration, f func()) func() bool {
	t := &fakeTimer{d: d, f: f}
	if pc, _, _, ok := runtime.Caller(1); ok {
		t.initial = strings.HasSuffix(runtime.FuncForPC(pc).Name(), ".awaitInitialReady")
	}
	c.timers = append(c.timers, t)
	return func() bool {
		pending := !t.stopped && !t.fired
		t.stopped = true
		return pending
	}
}

// pending returns the timers neither stopped nor fired, but for the
// bounds on the first start's readiness that startAll arms: the tests of
// announce.go check those.
func (c *fakeClock) pending() []*fakeTimer {
	var p []*fakeTimer
	for _, t := range c.timers {
		if !t.stopped && !t.fired && !t.initial {
			p = append(p, t)
		}
	}
	return p
}

// fire runs t's function as its expiry would, stopped or not: a timer whose
// stop came too late still fires, and the loop must cope.
func (t *fakeTimer) fire() {
	t.fired = true
	t.f()
}

type loopRig struct {
	t     *testing.T
	s     *Supervisor
	clock *fakeClock
	logs  *observer.ObservedLogs
}

// newRig builds a Supervisor over yaml whose process table is never run.
func newRig(t *testing.T, yaml string) *loopRig {
	t.Helper()
	cfg, err := config.Parse("loop.yaml", []byte(yaml), []string{"svc"})
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.DebugLevel)
	s, err := New(cfg, Options{Logger: zap.New(core), Environ: []string{"PATH=/bin"}})
	if err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{now: time.Unix(1_000_000, 0)}
	s.now = func() time.Time { return clock.now }
	s.afterFunc = clock.afterFunc
	s.rnd = func() float64 { return 0.5 } // no jitter
	s.procs = &procTable{inbox: newMailbox[procMsg]()}
	t.Cleanup(func() {
		for _, w := range s.workers {
			w.notify.close()
		}
		s.removeNotifyDir()
	})
	return &loopRig{t: t, s: s, clock: clock, logs: logs}
}

// deliver hands the loop everything in its mailbox, as Run would.
func (r *loopRig) deliver() {
	for _, ev := range r.s.inbox.take(nil) {
		r.s.handle(ev)
	}
}

// requests returns what the loop asked of the process table since last time.
func (r *loopRig) requests() []procMsg { return r.s.procs.inbox.take(nil) }

// spawned returns the tokens of the spawn requests in msgs.
func spawned(msgs []procMsg) []spawnReq {
	var out []spawnReq
	for _, m := range msgs {
		if sp, ok := m.(spawnReq); ok {
			out = append(out, sp)
		}
	}
	return out
}

func signals(msgs []procMsg) []signalReq {
	var out []signalReq
	for _, m := range msgs {
		if sg, ok := m.(signalReq); ok {
			out = append(out, sg)
		}
	}
	return out
}

const oneWorker = "services:\n  w:\n    command: [/bin/true]\n    stop_timeout: 7s\n    restart: {min_uptime: 1s, backoff_initial: 100ms, backoff_max: 400ms}\n"

// startOne starts the single worker and reports it running as pid.
func (r *loopRig) startOne(pid int) uint64 {
	r.t.Helper()
	r.s.startAll()
	sp := spawned(r.requests())
	if len(sp) != 1 {
		r.t.Fatalf("%d spawns, want 1", len(sp))
	}
	r.s.handle(workerStarted{token: sp[0].token, pid: pid, at: r.clock.now})
	return sp[0].token
}

func TestLoopRestartsAHealthyWorkerAtOnceInItsSlot(t *testing.T) {
	r := newRig(t, oneWorker)
	tok := r.startOne(100)
	r.clock.now = r.clock.now.Add(time.Second)
	r.s.handle(workerExited{token: tok, pid: 100, status: unix.WaitStatus(9), at: r.clock.now})
	sp := spawned(r.requests())
	if len(sp) != 1 || sp[0].spec.service != "w" || sp[0].spec.id != 0 || sp[0].spec.restarts != 1 || sp[0].token == tok {
		t.Fatalf("after a healthy exit: spawns %+v, want one new token for w/0 with restarts 1", sp)
	}
	if n := len(r.clock.pending()); n != 0 {
		t.Errorf("%d timers armed for an immediate restart", n)
	}
}

// quickDeathRestartedAtOnce has the worker running as token tok exit 10ms
// after its start, the first quick death of a streak: it must be restarted
// at once, with no timer. It returns the new token, running as pid.
func (r *loopRig) quickDeathRestartedAtOnce(tok uint64, pid int) uint64 {
	r.t.Helper()
	r.clock.now = r.clock.now.Add(10 * time.Millisecond)
	before := len(r.clock.pending()) // with the exiting worker's readiness timer
	r.s.handle(workerExited{token: tok, pid: pid - 1, status: 256, at: r.clock.now})
	sp := spawned(r.requests())
	if len(sp) != 1 {
		r.t.Fatalf("the first quick exit: %d spawns, want 1 at once", len(sp))
	}
	if p := r.clock.pending(); len(p) != before-1 {
		r.t.Fatalf("the first quick exit left timers %v (%d before, its readiness timer among them), want no new one", durations(p), before)
	}
	r.s.handle(workerStarted{token: sp[0].token, pid: pid, at: r.clock.now})
	return sp[0].token
}

func TestLoopBacksOffWithTimersAndResetsAfterAHealthyRun(t *testing.T) {
	r := newRig(t, oneWorker)
	tok := r.quickDeathRestartedAtOnce(r.startOne(99), 100)
	var delays []time.Duration
	for i := range 4 {
		r.clock.now = r.clock.now.Add(10 * time.Millisecond)
		r.s.handle(workerExited{token: tok, pid: 100 + i, status: 256, at: r.clock.now})
		if sp := spawned(r.requests()); len(sp) != 0 {
			t.Fatalf("quick exit %d restarted at once", i)
		}
		p := r.clock.pending()
		if len(p) != 1 {
			t.Fatalf("quick exit %d: %d pending timers, want 1", i, len(p))
		}
		delays = append(delays, p[0].d)
		p[0].fire()
		r.deliver()
		sp := spawned(r.requests())
		if len(sp) != 1 {
			t.Fatalf("restart timer %d fired: %d spawns, want 1", i, len(sp))
		}
		tok = sp[0].token
		r.s.handle(workerStarted{token: tok, pid: 101 + i, at: r.clock.now})
	}
	if want := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 400 * time.Millisecond}; !slices.Equal(delays, want) {
		t.Errorf("delays %v, want %v", delays, want)
	}
	// A run past min_uptime: restarted at once, and the next quick exit
	// starts again from the first delay.
	r.clock.now = r.clock.now.Add(2 * time.Second)
	r.s.handle(workerExited{token: tok, pid: 200, status: 256, at: r.clock.now})
	sp := spawned(r.requests())
	if len(sp) != 1 {
		t.Fatalf("healthy exit after backoff: %d spawns, want 1", len(sp))
	}
	r.s.handle(workerStarted{token: sp[0].token, pid: 201, at: r.clock.now})
	tok = r.quickDeathRestartedAtOnce(sp[0].token, 202)
	r.s.handle(workerExited{token: tok, pid: 202, status: 256, at: r.clock.now.Add(time.Millisecond)})
	if p := r.clock.pending(); len(p) != 1 || p[0].d != 100*time.Millisecond {
		t.Errorf("after a reset, the first delay is %v, want 100ms", durations(p))
	}
}

func TestLoopStopDuringBackoffDropsTheSlotAndIgnoresTheStaleTimer(t *testing.T) {
	r := newRig(t, oneWorker)
	tok := r.quickDeathRestartedAtOnce(r.startOne(99), 100)
	r.s.handle(workerExited{token: tok, pid: 100, status: 256, at: r.clock.now.Add(time.Millisecond)})
	timer := r.clock.pending()[0]
	r.s.Shutdown(false)
	r.deliver()
	if !r.s.done() {
		t.Fatal("shutdown with the only worker in backoff is not done")
	}
	if !timer.stopped {
		t.Error("the restart timer was not stopped")
	}
	timer.fire() // as if the stop had come too late
	r.deliver()
	if msgs := r.requests(); len(spawned(msgs)) != 0 || len(signals(msgs)) != 0 {
		t.Errorf("a stale restart timer acted after shutdown: %v", msgs)
	}
}

func TestLoopArmsTheKillTimerWhenTheStopSignalIsSent(t *testing.T) {
	r := newRig(t, oneWorker)
	tok := r.startOne(100)
	r.s.Shutdown(false)
	r.deliver()
	sg := signals(r.requests())
	if len(sg) != 1 || sg[0].sig != syscall.SIGTERM || !sg[0].stop || sg[0].token != tok {
		t.Fatalf("stop requests %+v, want one SIGTERM stop for the worker", sg)
	}
	if n := len(r.clock.pending()); n != 0 {
		t.Fatalf("kill timer armed before the signal was sent (%d timers)", n)
	}
	r.s.handle(stopSignalSent{token: tok, at: r.clock.now})
	p := r.clock.pending()
	if len(p) != 1 || p[0].d != 7*time.Second {
		t.Fatalf("after delivery: timers %v, want one of the 7s stop timeout", p)
	}
	p[0].fire()
	r.deliver()
	if sg := signals(r.requests()); len(sg) != 1 || sg[0].sig != syscall.SIGKILL {
		t.Fatalf("at the stop timeout: %+v, want SIGKILL", sg)
	}
	r.s.handle(workerExited{token: tok, pid: 100, status: unix.WaitStatus(syscall.SIGKILL), at: r.clock.now})
	if !r.s.done() {
		t.Error("not done after the last worker exited")
	}
}

func TestLoopCancelsTheKillTimerWhenTheWorkerStopsInTime(t *testing.T) {
	r := newRig(t, oneWorker)
	tok := r.startOne(100)
	r.s.Shutdown(false)
	r.deliver()
	r.requests()
	r.s.handle(stopSignalSent{token: tok, at: r.clock.now})
	kill := r.clock.pending()[0]
	r.s.handle(workerExited{token: tok, pid: 100, status: 0, at: r.clock.now})
	if !kill.stopped {
		t.Error("kill timer still armed after the worker stopped")
	}
	kill.fire() // too late to stop
	r.deliver()
	if sg := signals(r.requests()); len(sg) != 0 {
		t.Errorf("a stale kill timer signalled %+v", sg)
	}
	if got := r.logs.FilterMessage("worker stopped").Len(); got != 1 {
		t.Errorf("%d 'worker stopped' entries, want 1", got)
	}
}

func TestLoopFastShutdownDuringAGracefulOneKillsWhileStarting(t *testing.T) {
	r := newRig(t, oneWorker)
	r.s.startAll() // spawn requested, no answer yet
	r.s.Shutdown(false)
	r.s.Shutdown(false) // a repeat changes nothing
	r.s.Shutdown(true)
	r.deliver()
	msgs := r.requests()
	if len(spawned(msgs)) != 1 {
		t.Fatalf("want the spawn first: %v", msgs)
	}
	sg := signals(msgs)
	if len(sg) != 2 || sg[0].sig != syscall.SIGTERM || sg[1].sig != syscall.SIGKILL {
		t.Fatalf("signals %+v, want SIGTERM then SIGKILL, in the order they were asked", sg)
	}
	// The spawn then fails: the slot is gone and nothing restarts.
	r.s.handle(startFailed{token: spawned(msgs)[0].token, err: syscall.ENOENT, at: r.clock.now})
	if !r.s.done() || len(r.requests()) != 0 || len(r.clock.pending()) != 0 {
		t.Errorf("after a failed start while stopping: done %v, requests or timers left", r.s.done())
	}
}

func TestLoopReportsFailedInitialStarts(t *testing.T) {
	r := newRig(t, "services:\n  a: {command: [/bin/true], workers: 2}\n")
	r.s.startAll()
	sp := spawned(r.requests())
	r.s.handle(workerStarted{token: sp[0].token, pid: 10, at: r.clock.now})
	r.s.handle(startFailed{token: sp[1].token, err: syscall.EACCES, at: r.clock.now})
	e := r.logs.FilterMessage("initial start done").All()
	if len(e) != 1 || e[0].ContextMap()["started"] != int64(1) || e[0].ContextMap()["failed"] != int64(1) || e[0].Level != zap.WarnLevel {
		t.Errorf("initial start entries %v, want one warning with started 1, failed 1", e)
	}
}

func TestRunTwiceIsAnError(t *testing.T) {
	r := newRig(t, oneWorker)
	r.s.ran.Store(true) // as if Run had been called; a real Run would make this process a subreaper
	if err := r.s.Run(context.Background()); err == nil {
		t.Error("a second Run did not fail")
	}
}

func parse(t *testing.T, yaml string) *config.Config {
	t.Helper()
	cfg, err := config.Parse("loop.yaml", []byte(yaml), nil)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

const scaled = "services:\n  w:\n    command: [/bin/true]\n    workers: %d\n"

// startAllRunning starts the rig's workers and reports each running; it
// returns their tokens and ids.
func (r *loopRig) startAllRunning() map[uint64]int {
	r.t.Helper()
	r.s.startAll()
	tokens := map[uint64]int{}
	for i, sp := range spawned(r.requests()) {
		r.s.handle(workerStarted{token: sp.token, pid: 100 + i, at: r.clock.now})
		tokens[sp.token] = sp.spec.id
	}
	return tokens
}

func TestLoopReloadSupersededBeforeItsWorkersStarted(t *testing.T) {
	r := newRig(t, strings.Replace(scaled, "%d", "1", 1))
	r.startAllRunning()
	r.reload(parse(t, strings.Replace(scaled, "%d", "5", 1)))
	r.reload(parse(t, strings.Replace(scaled, "%d", "1", 1)))
	r.deliver()
	msgs := r.requests()
	sp, sg := spawned(msgs), signals(msgs)
	if len(sp) != 4 || len(sg) != 4 {
		t.Fatalf("%d spawns and %d stops, want ids 1-4 started then stopped", len(sp), len(sg))
	}
	for i, sp := range sp {
		r.s.handle(workerStarted{token: sp.token, pid: 200 + i, at: r.clock.now})
		r.s.handle(workerExited{token: sp.token, pid: 200 + i, status: 0, at: r.clock.now})
	}
	if got := len(r.s.workers); got != 1 || r.s.workers[workerKey{"w", 0}] == nil {
		t.Errorf("%d slots left, want only w/0", got)
	}
	if len(spawned(r.requests())) != 0 {
		t.Error("a superseded slot was started again")
	}
}

func TestLoopScaleDownReversedWhileStopping(t *testing.T) {
	r := newRig(t, strings.Replace(scaled, "%d", "3", 1))
	tokens := r.startAllRunning()
	r.reload(parse(t, strings.Replace(scaled, "%d", "1", 1)))
	r.deliver()
	if sg := signals(r.requests()); len(sg) != 2 {
		t.Fatalf("%d stops, want 2", len(sg))
	}
	r.reload(parse(t, strings.Replace(scaled, "%d", "3", 1))) // back up before they exit
	r.deliver()
	if msgs := r.requests(); len(spawned(msgs)) != 0 {
		t.Fatalf("slots still stopping were started twice: %v", msgs)
	}
	for tok, id := range tokens {
		if id > 0 {
			r.s.handle(workerExited{token: tok, pid: 100 + id, status: 0, at: r.clock.now})
		}
	}
	sp := spawned(r.requests())
	if len(sp) != 2 {
		t.Fatalf("%d restarts after the stops, want ids 1 and 2 started again for the newest configuration", len(sp))
	}
	if len(r.s.workers) != 3 {
		t.Errorf("%d slots, want 3", len(r.s.workers))
	}
}

// reload asks the loop for a reload as Reload does, without waiting for
// the answer: the test delivers it.
func (r *loopRig) reload(cfg *config.Config) {
	r.s.inbox.put(reloadRequested{cfg: cfg, source: ReloadByProgram})
}

// reconfigure calls Reconfigure as another goroutine would, serving the
// loop's mailbox, as Run does, until the call returns.
func (r *loopRig) reconfigure(service string, n int) error {
	r.t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- r.s.Reconfigure(context.Background(), service, n) }()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case err := <-errc:
			return err
		case <-r.s.inbox.wake:
			for _, ev := range r.s.inbox.take(nil) {
				r.s.handle(ev)
			}
		case <-deadline:
			r.t.Fatal("Reconfigure did not return")
		}
	}
}

func TestLoopReconfigureLastsUntilTheFileIsReloaded(t *testing.T) {
	r := newRig(t, strings.Replace(scaled, "%d", "1", 1))
	file := r.s.cfg
	r.startAllRunning()
	if err := r.reconfigure("w", 3); err != nil {
		t.Fatal(err)
	}
	sp := spawned(r.requests())
	if len(sp) != 2 || sp[0].spec.id+sp[1].spec.id != 3 {
		t.Fatalf("Reconfigure to 3 spawned %v, want ids 1 and 2", sp)
	}
	for i, p := range sp {
		r.s.handle(workerStarted{token: p.token, pid: 300 + i, at: r.clock.now})
	}
	// The next reload of the file wins: back to 1.
	r.reload(file)
	r.deliver()
	if sg := signals(r.requests()); len(sg) != 2 {
		t.Errorf("reload of the file stopped %d workers, want the 2 Reconfigure added", len(sg))
	}
	if err := r.reconfigure("nope", 2); !errors.Is(err, ErrNoSuchService) {
		t.Errorf("Reconfigure of an unknown service: %v, want ErrNoSuchService", err)
	}
	if err := r.s.Reconfigure(context.Background(), "w", -1); err == nil {
		t.Error("Reconfigure to -1 workers was accepted")
	}
}

func TestHooksRunInOrderAndSurviveAPanic(t *testing.T) {
	r := newRig(t, oneWorker)
	var ran []string
	r.s.hook(func() { ran = append(ran, "first") })
	r.s.hook(func() { panic("a program's bug") })
	r.s.hook(func() { ran = append(ran, "third") })
	quit, done := make(chan struct{}), make(chan struct{})
	close(quit) // run what is queued, then return
	r.s.runHooks(quit, done)
	<-done
	if !slices.Equal(ran, []string{"first", "third"}) {
		t.Errorf("hooks ran %v, want first and third, in order", ran)
	}
	if r.logs.FilterMessage("a hook panicked").Len() != 1 {
		t.Error("the panicking hook was not logged")
	}
}

// envOf returns the value of k in env, and whether it is set.
func envOf(env []string, k string) (string, bool) {
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, k+"="); ok {
			return v, true
		}
	}
	return "", false
}

// A halted rollout puts everything back that the new definition changed
// for its processes: the command, and how they say they are ready and
// their watchdog too. The slot's next process runs the old definition
// whole: no notify socket, no WATCHDOG_USEC, ready after min_uptime.
func TestLoopHaltRevertsReadinessAndWatchdog(t *testing.T) {
	r := newRig(t, "services:\n  w:\n    command: [/bin/true]\n    restart: {min_uptime: 1s}\n")
	tok := r.startOne(100)
	r.clock.now = r.clock.now.Add(2 * time.Second)
	r.s.handle(readyDue{token: tok, seq: r.s.byToken[tok].readySeq})
	r.reload(parse(t, "services:\n  w:\n    command: [/bin/false]\n    restart: {min_uptime: 1s}\n    ready: notify\n    ready_timeout: 5s\n    watchdog: 7s\n"))
	r.deliver()
	if sg := signals(r.requests()); len(sg) != 1 || !sg[0].stop {
		t.Fatalf("requests %+v, want the old worker stopped", sg)
	}
	r.s.handle(workerExited{token: tok, pid: 100, status: unix.WaitStatus(syscall.SIGTERM), at: r.clock.now})
	sp := spawned(r.requests())
	if len(sp) != 1 {
		t.Fatalf("%d spawns, want the replacement", len(sp))
	}
	if _, ok := envOf(sp[0].spec.env, "NOTIFY_SOCKET"); !ok {
		t.Fatal("the replacement has no NOTIFY_SOCKET")
	}
	if v, _ := envOf(sp[0].spec.env, "WATCHDOG_USEC"); v != "7000000" {
		t.Fatalf("the replacement's WATCHDOG_USEC is %q, want 7000000", v)
	}
	r.s.handle(workerStarted{token: sp[0].token, pid: 101, at: r.clock.now})
	r.clock.now = r.clock.now.Add(10 * time.Millisecond)
	r.s.handle(workerExited{token: sp[0].token, pid: 101, status: 256, at: r.clock.now})
	sp = spawned(r.requests())
	if len(sp) != 1 || sp[0].spec.argv0 != "/bin/true" {
		t.Fatalf("after the halt: spawns %+v, want one of /bin/true", sp)
	}
	for _, k := range []string{"NOTIFY_SOCKET", "WATCHDOG_USEC"} {
		if v, ok := envOf(sp[0].spec.env, k); ok {
			t.Errorf("the slot back on the old definition has %s=%s", k, v)
		}
	}
	before := len(r.clock.pending())
	r.s.handle(workerStarted{token: sp[0].token, pid: 102, at: r.clock.now})
	p := r.clock.pending()
	if len(p) != before+1 || p[len(p)-1].d != time.Second {
		t.Errorf("timers %v after the start, want min_uptime's (1s) added: ready as the old definition says", durations(p))
	}
	if st := r.s.status(); st.LastReload == nil || st.LastReload.Error != "w worker 0 exit code 1 before ready" {
		t.Errorf("last reload %+v, want failed: w worker 0 exit code 1 before ready", st.LastReload)
	}
}

// A rescale after a halted rollout does not touch the workers the rollout
// had already replaced: they run the new definition until they next exit.
func TestLoopRescaleAfterAHaltReplacesNothing(t *testing.T) {
	r := newRig(t, "services:\n  w:\n    command: [/bin/true]\n    workers: 2\n    restart: {min_uptime: 1s}\n")
	byID := r.startAllReady()
	slot1 := r.rollOutUntilSlot1Starts(parse(t, "services:\n  w:\n    command: [/bin/false]\n    workers: 2\n    restart: {min_uptime: 1s}\n"), byID)
	if got := r.s.status().Rolling; got != RollingReload {
		t.Errorf("status during the rollout: rolling %q, want %q", got, RollingReload)
	}
	// Slot 1's replacement dies before it is ready: halt.
	r.s.handle(workerExited{token: slot1, pid: 201, status: 256, at: r.clock.now.Add(time.Millisecond)})
	r.requests()
	if got := r.s.status().Rolling; got != RollingNone {
		t.Errorf("status after the halt: rolling %q, want none", got)
	}
	if err := r.reconfigure("w", 3); err != nil {
		t.Fatal(err)
	}
	for _, m := range r.requests() {
		if sg, ok := m.(signalReq); ok {
			t.Errorf("the rescale sent %+v: it replaced a worker", sg)
		}
	}
	for _, w := range r.s.status().Services[0].Workers {
		if w.Outdated {
			t.Errorf("worker %d outdated after a rescale", w.ID)
		}
	}
}

// A reload that changes a service again while its rollout is under way
// supersedes the rollout: a replacement of the old rollout that then dies
// before it is ready is restarted on the new definition, and does not halt
// (and fail) the new reload.
func TestLoopSupersededReplacementDoesNotHalt(t *testing.T) {
	a := "services:\n  w:\n    command: [/bin/true]\n    workers: 2\n    restart: {min_uptime: 1s}\n"
	r := newRig(t, a)
	byID := r.startAllReady()
	slot1 := r.rollOutUntilSlot1Starts(parse(t, strings.Replace(a, "/bin/true", "/bin/false", 1)), byID)
	// Back to /bin/true while slot 1's /bin/false is not ready yet; then it
	// dies.
	r.reload(parse(t, a))
	r.deliver()
	r.requests()
	r.s.handle(workerExited{token: slot1, pid: 201, status: 256, at: r.clock.now.Add(time.Millisecond)})
	if n := r.logs.FilterMessage("rollout halted: the service goes back to its previous definition").Len(); n != 0 {
		t.Errorf("%d halts: the superseded replacement halted the new reload", n)
	}
	sp := spawned(r.requests())
	if len(sp) != 1 || sp[0].spec.argv0 != "/bin/true" {
		t.Fatalf("spawns %+v, want slot 1 started again on /bin/true", sp)
	}
	if st := r.s.status(); st.LastReload == nil || st.LastReload.Error != "" || st.ReloadsFailed != 0 {
		t.Errorf("last reload %+v, %d failed; want no failure", st.LastReload, st.ReloadsFailed)
	}
}

// startAllReady starts the rig's workers, reports each running, then ready
// once their min_uptime (at most 2s) has passed; it returns their tokens by
// worker id.
func (r *loopRig) startAllReady() map[int]uint64 {
	r.t.Helper()
	tokens := r.startAllRunning()
	byID := map[int]uint64{}
	for tok, id := range tokens {
		byID[id] = tok
	}
	r.clock.now = r.clock.now.Add(2 * time.Second)
	for tok := range tokens {
		r.s.handle(readyDue{token: tok, seq: r.s.byToken[tok].readySeq})
	}
	return byID
}

// rollOutUntilSlot1Starts reloads cfg, a new definition for the rig's two
// ready workers (byID, from startAllReady), and plays its rolling change
// until slot 1's replacement runs, not yet ready, slot 0's being ready. It
// returns the token of slot 1's replacement.
func (r *loopRig) rollOutUntilSlot1Starts(cfg *config.Config, byID map[int]uint64) uint64 {
	r.t.Helper()
	r.reload(cfg)
	r.deliver()
	r.requests()
	r.s.handle(workerExited{token: byID[0], pid: 100, status: unix.WaitStatus(syscall.SIGTERM), at: r.clock.now})
	sp := spawned(r.requests())
	if len(sp) != 1 {
		r.t.Fatalf("%d spawns, want slot 0's replacement", len(sp))
	}
	r.s.handle(workerStarted{token: sp[0].token, pid: 200, at: r.clock.now})
	r.clock.now = r.clock.now.Add(2 * time.Second)
	r.s.handle(readyDue{token: sp[0].token, seq: r.s.byToken[sp[0].token].readySeq})
	if sg := signals(r.requests()); len(sg) != 1 || sg[0].token != byID[1] {
		r.t.Fatalf("requests %+v, want slot 1 stopped next", sg)
	}
	r.s.handle(workerExited{token: byID[1], pid: 101, status: unix.WaitStatus(syscall.SIGTERM), at: r.clock.now})
	sp = spawned(r.requests())
	if len(sp) != 1 {
		r.t.Fatalf("%d spawns, want slot 1's replacement", len(sp))
	}
	r.s.handle(workerStarted{token: sp[0].token, pid: 201, at: r.clock.now})
	return sp[0].token
}

// A StopLast service gets its stop signal once the other services'
// workers have exited, unless the shutdown turns fast.
func TestLoopStopsAStopLastServiceOnceTheOthersHaveExited(t *testing.T) {
	for _, fast := range []bool{false, true} {
		r := newRig(t, "services:\n  bridge: {command: [/bin/true]}\n  w: {command: [/bin/true], workers: 2}\n")
		r.s.cfg.Service("bridge").StopLast = true
		r.s.startAll()
		service := map[uint64]string{}
		for i, sp := range spawned(r.requests()) {
			r.s.handle(workerStarted{token: sp.token, pid: 100 + i, at: r.clock.now})
			service[sp.token] = sp.spec.service
		}
		r.s.Shutdown(false)
		r.deliver()
		var others []uint64
		for _, sg := range signals(r.requests()) {
			if service[sg.token] == "bridge" {
				t.Fatalf("the StopLast service got %v while the others stop", sg.sig)
			}
			others = append(others, sg.token)
		}
		if len(others) != 2 {
			t.Fatalf("%d stop signals, want one for each worker of w", len(others))
		}
		r.s.handle(workerExited{token: others[0], pid: 1, status: 0, at: r.clock.now})
		if sg := signals(r.requests()); len(sg) != 0 {
			t.Fatalf("after one of w's two workers exited: %+v, want nothing yet", sg)
		}
		if fast {
			r.s.Shutdown(true)
			r.deliver()
			sg := signals(r.requests())
			if len(sg) != 2 || sg[0].sig != syscall.SIGKILL || sg[1].sig != syscall.SIGKILL {
				t.Fatalf("fast shutdown: %+v, want SIGKILL for the worker of w left and the bridge", sg)
			}
			continue
		}
		r.s.handle(workerExited{token: others[1], pid: 2, status: 0, at: r.clock.now})
		sg := signals(r.requests())
		if len(sg) != 1 || service[sg[0].token] != "bridge" || sg[0].sig != syscall.SIGTERM || !sg[0].stop {
			t.Fatalf("after w's workers exited: %+v, want the bridge's SIGTERM stop", sg)
		}
		r.s.handle(workerExited{token: sg[0].token, pid: 3, status: 0, at: r.clock.now})
		if !r.s.done() {
			t.Error("not done after the bridge exited")
		}
	}
}
