package supervisor

// Recycling, event by event (see loop_test.go), over a fake broker.

import (
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gotyledon/gotyledon/config"
)

// fakeDrainer is a broker whose drains end when the test says.
type fakeDrainer struct {
	acked   map[int]uint64
	drains  map[int]chan struct{}
	order   []int // pids in the order they were drained
	forgot  []int
	drained bool // Drain's channels are closed at once
}

func (f *fakeDrainer) Acked(pgid int) uint64 { return f.acked[pgid] }
func (f *fakeDrainer) Forget(pgid int)       { f.forgot = append(f.forgot, pgid) }
func (f *fakeDrainer) Drain(pgid int) <-chan struct{} {
	if f.drains[pgid] == nil {
		f.drains[pgid] = make(chan struct{})
		f.order = append(f.order, pgid)
		if f.drained {
			close(f.drains[pgid])
		}
	}
	return f.drains[pgid]
}

const recycled = "services:\n  w:\n    command: [/bin/true]\n    workers: 2\n    stop_timeout: 7s\n    restart: {min_uptime: 1s}\n    recycle: {max_jobs: 10, jitter: 0}\nqueues:\n  jobs: {}\n"

// waitEvent delivers the loop's mailbox until it holds an event, for a
// drain's goroutine to post.
func (r *loopRig) waitEvent() {
	r.t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		// A wake left by an event delivered already brings nothing.
		select {
		case <-r.s.inbox.wake:
			evs := r.s.inbox.take(nil)
			for _, ev := range evs {
				r.s.handle(ev)
			}
			if len(evs) > 0 {
				return
			}
		case <-deadline:
			r.t.Fatal("no event from the drain")
		}
	}
}

// Two due workers are recycled one at a time: drained, stopped once
// drained, replaced, and the second only once the first's new process is
// ready; each counted.
func TestLoopRecyclesOneWorkerAtATimeAfterItsDrain(t *testing.T) {
	r := newRig(t, recycled)
	q := &fakeDrainer{acked: map[int]uint64{}, drains: map[int]chan struct{}{}}
	r.s.queue = q
	byID := r.startAllReady()
	pid := map[uint64]int{}
	for _, w := range r.s.workers {
		pid[w.token] = w.pid
	}
	r.s.handle(recycleDue{token: byID[0], reason: RecycleMaxJobs})
	r.s.handle(recycleDue{token: byID[1], reason: RecycleMaxJobs})
	if len(q.order) != 1 || q.order[0] != pid[byID[0]] {
		t.Fatalf("drained %v, want worker 0 (pid %d) alone", q.order, pid[byID[0]])
	}
	if st := r.s.status(); st.Services[0].Workers[0].State != "draining" || st.Services[0].Workers[1].State != "running" {
		t.Errorf("states %q and %q, want draining and running", st.Services[0].Workers[0].State, st.Services[0].Workers[1].State)
	}
	if sg := signals(r.requests()); len(sg) != 0 {
		t.Fatalf("signals before the drain ended: %+v", sg)
	}
	close(q.drains[pid[byID[0]]])
	r.waitEvent()
	sg := signals(r.requests())
	if len(sg) != 1 || sg[0].token != byID[0] || sg[0].sig != syscall.SIGTERM || !sg[0].stop {
		t.Fatalf("once drained: %+v, want worker 0's stop signal", sg)
	}
	r.s.handle(workerExited{token: byID[0], pid: pid[byID[0]], status: unix.WaitStatus(syscall.SIGTERM), at: r.clock.now})
	sp := spawned(r.requests())
	if len(sp) != 1 || sp[0].spec.id != 0 || len(q.forgot) != 1 {
		t.Fatalf("after worker 0 stopped: spawns %+v, forgotten %v; want worker 0's new process, its pid forgotten", sp, q.forgot)
	}
	r.s.handle(workerStarted{token: sp[0].token, pid: 300, at: r.clock.now})
	if len(q.order) != 1 {
		t.Fatalf("worker 1 drained before worker 0's replacement is ready: %v", q.order)
	}
	r.clock.now = r.clock.now.Add(2 * time.Second)
	r.readyAll(sp[0].token)
	if len(q.order) != 2 || q.order[1] != pid[byID[1]] {
		t.Fatalf("after the replacement is ready: drained %v, want worker 1 next", q.order)
	}
	if n := r.s.counters("w").Recycles[RecycleMaxJobs]; n != 2 {
		t.Errorf("%d recycles counted, want 2", n)
	}
}

// A drain that does not end within the stop_timeout stops the worker all
// the same; a worker that exits while it drains lets the next go, and its
// new process is not due.
func TestLoopDrainTimeoutAndExitWhileDraining(t *testing.T) {
	r := newRig(t, recycled)
	q := &fakeDrainer{acked: map[int]uint64{}, drains: map[int]chan struct{}{}}
	r.s.queue = q
	byID := r.startAllReady()
	r.s.handle(recycleDue{token: byID[0], reason: RecycleMaxAge})
	r.s.handle(recycleDue{token: byID[1], reason: RecycleMaxAge})
	var timer *fakeTimer
	for _, tm := range r.clock.pending() {
		if tm.d == 7*time.Second {
			timer = tm
		}
	}
	if timer == nil {
		t.Fatal("no stop_timeout bound on the drain")
	}
	timer.fire()
	r.deliver()
	sg := signals(r.requests())
	if len(sg) != 1 || sg[0].token != byID[0] {
		t.Fatalf("drain timed out: %+v, want worker 0 stopped", sg)
	}
	// Worker 0 dies of itself before its stop signal lands: a crash.
	r.s.handle(workerExited{token: byID[0], pid: 1, status: unix.WaitStatus(1 << 8), at: r.clock.now})
	sp := spawned(r.requests())
	if len(sp) != 1 {
		t.Fatalf("spawns %+v", sp)
	}
	r.s.handle(workerStarted{token: sp[0].token, pid: 400, at: r.clock.now})
	r.clock.now = r.clock.now.Add(2 * time.Second)
	r.readyAll(sp[0].token)
	if len(q.order) != 2 {
		t.Fatalf("drained %v, want worker 1 next", q.order)
	}
	if c := r.s.recycleCandidates(); len(c) != 1 || c[0].token != sp[0].token {
		t.Errorf("candidates %+v, want worker 0's new process alone (worker 1 drains)", c)
	}
}

func TestRecycleReasonFor(t *testing.T) {
	r := config.Recycle{MaxJobs: 1000, MaxAge: time.Hour, MemoryMax: 100 << 20, Jitter: 0.1}
	for _, tc := range []struct {
		jitter  float64
		age     time.Duration
		jobs    uint64
		mem     uint64
		haveMem bool
		want    RecycleReason
	}{
		{0, 0, 999, 0, false, ""},
		{0, 0, 1000, 0, false, RecycleMaxJobs},
		{1, 0, 900, 0, false, RecycleMaxJobs}, // the whole jitter: 10% lower
		{0.5, 0, 949, 0, false, ""},
		{0, 59 * time.Minute, 0, 0, false, ""},
		{1, 54 * time.Minute, 0, 0, false, RecycleMaxAge},
		{0, 0, 5000, 100 << 20, true, RecycleMemoryMax}, // memory first
		{0, 0, 0, 100 << 20, false, ""},                 // unknown memory
	} {
		got, detail := recycleReasonFor(r, tc.jitter, tc.age, tc.jobs, tc.mem, tc.haveMem)
		if got != tc.want || (got != "") != (detail != "") {
			t.Errorf("%+v: %q (%s), want %q", tc, got, detail, tc.want)
		}
	}
}

// A drain that ends during a graceful shutdown does not stop the worker
// before what depends on it; a worker that crashes mid-drain lets the
// next due one go.
func TestLoopDrainsInAShutdownAndACrashMidDrain(t *testing.T) {
	r := newRig(t, "services:\n  db:\n    command: [/bin/true]\n    restart: {min_uptime: 1s}\n    recycle: {max_age: 1h, jitter: 0}\n"+
		"  web: {command: [/bin/true], depends_on: [db]}\n")
	q := &fakeDrainer{acked: map[int]uint64{}, drains: map[int]chan struct{}{}}
	r.s.queue = q
	r.s.startAll()
	db := r.startSpawns(r.requests())["db"]
	web := r.startSpawns(r.requests())["web"]
	r.clock.now = r.clock.now.Add(2 * time.Second)
	r.readyAll(db[0])
	r.s.handle(recycleDue{token: db[0], reason: RecycleMaxAge})
	r.s.Shutdown(false)
	r.deliver()
	if sg := signals(r.requests()); len(sg) != 1 || sg[0].token != web[0] {
		t.Fatalf("shutdown: %+v, want web's stop alone", sg)
	}
	close(q.drains[r.s.byToken[db[0]].pid])
	r.waitEvent()
	if sg := signals(r.requests()); len(sg) != 0 {
		t.Fatalf("the drain ended while web stops: %+v, want db left alone", sg)
	}
	r.s.handle(workerExited{token: web[0], pid: 1, status: unix.WaitStatus(syscall.SIGTERM), at: r.clock.now})
	if sg := signals(r.requests()); len(sg) != 1 || sg[0].token != db[0] {
		t.Fatalf("web gone: %+v, want db's stop", sg)
	}

	// A crash mid-drain.
	r = newRig(t, recycled)
	q = &fakeDrainer{acked: map[int]uint64{}, drains: map[int]chan struct{}{}}
	r.s.queue = q
	byID := r.startAllReady()
	r.s.handle(recycleDue{token: byID[0], reason: RecycleMaxJobs})
	r.s.handle(recycleDue{token: byID[1], reason: RecycleMaxJobs})
	r.s.handle(workerExited{token: byID[0], pid: 1, status: unix.WaitStatus(syscall.SIGSEGV), at: r.clock.now})
	// Restarted at once; once its new process runs, worker 1's turn.
	for _, sp := range spawned(r.requests()) {
		r.s.handle(workerStarted{token: sp.token, pid: 500, at: r.clock.now})
	}
	if len(q.order) != 2 {
		t.Errorf("after worker 0 crashed mid-drain: drained %v, want worker 1 next", q.order)
	}
	if w := r.s.workers[workerKey{"w", 0}]; w.recycling != recycleNone || w.recycleReason != "" {
		t.Errorf("worker 0 after its crash: phase %v, reason %q; want its recycling over", w.recycling, w.recycleReason)
	}
}
