package supervisor

// Deterministic tests of the process table over a fake operating system
// (fakeOS) and the loop tests' fake clock: forks, exits, reaps, /proc and
// timers happen when the test says so. The only real things are the output
// pipes and their readers (see procOS), so a test waits for what a reader
// posts, bounded, but never sleeps.
//
import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"
)

// fakeOS is a process table's operating system in memory: a set of
// processes that exist until the test ends them and the table reaps them.
// Safe for concurrent use, as sweep runs on its own goroutine.
type fakeOS struct {
	t    *testing.T
	self int // the manager's pid: the parent of workers and orphans

	mu     sync.Mutex
	procs  map[int]*fakeProc // alive, or exited and not yet reaped
	exited []int             // unreaped exits, oldest first: wait4's order
	forks  []fakeFork        // what the coming forks return, in order
	kills  []killCall
	// held: by worker pid, copies of the write ends of its stdout and
	// stderr, kept by something outside its group until releaseOutput.
	held map[int][]*os.File
	// signalled, if not nil, is sent every signal as it is sent.
	signalled chan<- killCall
}

type fakeProc struct {
	pid, ppid, pgrp int
	dead            bool
	status          unix.WaitStatus
}

// fakeFork is what one fork does: fail with err, or start pid.
type fakeFork struct {
	pid int
	err error
	// holdOutput keeps the worker's output open (by a process outside its
	// group) until releaseOutput; without it the output ends at the fork.
	holdOutput bool
}

type killCall struct {
	pid int
	sig syscall.Signal
}

func newFakeOS(t *testing.T) *fakeOS {
	f := &fakeOS{t: t, self: os.Getpid(), procs: make(map[int]*fakeProc), held: make(map[int][]*os.File)}
	t.Cleanup(func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, held := range f.held {
			for _, h := range held {
				h.Close()
			}
		}
	})
	return f
}

// sys returns the procOS of f; its timers are those of clock.
func (f *fakeOS) sys(clock *fakeClock) *procOS {
	return &procOS{
		forkExec:  f.forkExec,
		kill:      f.kill,
		wait4:     f.wait4,
		processes: f.processes,
		afterFunc: clock.afterFunc,
		newTicker: func(time.Duration) (<-chan time.Time, func()) {
			f.t.Error("a ticker outside sweep")
			return nil, func() {}
		},
	}
}

// plan queues what the next forks do.
func (f *fakeOS) plan(forks ...fakeFork) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.forks = append(f.forks, forks...)
}

func (f *fakeOS) forkExec(argv0 string, argv []string, attr *syscall.ProcAttr) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.forks) == 0 {
		f.t.Errorf("unplanned fork of %s", argv0)
		return 0, syscall.EAGAIN
	}
	fk := f.forks[0]
	f.forks = f.forks[1:]
	if fk.err != nil {
		return 0, fk.err
	}
	if attr.Sys == nil || !attr.Sys.Setpgid || attr.Sys.Pdeathsig == 0 {
		f.t.Errorf("fork of pid %d without its own process group or a parent-death signal: %+v", fk.pid, attr.Sys)
	}
	if _, ok := f.procs[fk.pid]; ok {
		// The kernel never does this: the test itself is wrong.
		f.t.Fatalf("planned pid %d is still in use", fk.pid)
	}
	if _, ok := f.held[fk.pid]; ok && fk.holdOutput {
		f.t.Fatalf("output of an earlier pid %d is still held", fk.pid)
	}
	if fk.holdOutput {
		for _, fd := range attr.Files[1:3] {
			// Close-on-exec, so that a real worker forked by a test running
			// in parallel does not hold it too.
			dup, err := unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
			if err != nil {
				f.t.Fatalf("hold output of pid %d: %v", fk.pid, err)
			}
			f.held[fk.pid] = append(f.held[fk.pid], os.NewFile(uintptr(dup), "held output"))
		}
	}
	f.procs[fk.pid] = &fakeProc{pid: fk.pid, ppid: f.self, pgrp: fk.pid}
	return fk.pid, nil
}

// kill records every call, as a signal sent; it fails with ESRCH when no
// process or group has the id, as kill(2) does, but ends no process: the
// test decides what dies.
func (f *fakeOS) kill(pid int, sig syscall.Signal) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.kills = append(f.kills, killCall{pid: pid, sig: sig})
	if f.signalled != nil {
		f.signalled <- killCall{pid: pid, sig: sig}
	}
	for _, p := range f.procs {
		if p.pid == pid || p.pgrp == -pid {
			return nil
		}
	}
	return unix.ESRCH
}

func (f *fakeOS) wait4(pid int, ws *unix.WaitStatus, options int, _ *unix.Rusage) (int, error) {
	if pid != -1 || options != unix.WNOHANG {
		f.t.Errorf("wait4(%d, %#x): the table only ever waits for any child without blocking", pid, options)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, id := range f.exited {
		if p := f.procs[id]; p.ppid == f.self {
			f.exited = slices.Delete(f.exited, i, i+1)
			delete(f.procs, id)
			*ws = p.status
			return id, nil
		}
	}
	for _, p := range f.procs {
		if p.ppid == f.self {
			return 0, nil
		}
	}
	return 0, unix.ECHILD
}

func (f *fakeOS) processes() []procStat {
	f.mu.Lock()
	defer f.mu.Unlock()
	var list []procStat
	for _, p := range f.procs {
		list = append(list, procStat{pid: p.pid, ppid: p.ppid, pgrp: p.pgrp})
	}
	slices.SortFunc(list, func(a, b procStat) int { return a.pid - b.pid })
	return list
}

// start adds a process the table did not fork: a worker's child, or an
// orphan reparented to the manager (parent f.self).
func (f *fakeOS) start(pid, parent, pgrp int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.procs[pid]; ok {
		f.t.Fatalf("pid %d is in use", pid)
	}
	f.procs[pid] = &fakeProc{pid: pid, ppid: parent, pgrp: pgrp}
}

// exit ends pid with status ws; its children are reparented to the
// manager, the child subreaper. It stays listed until reaped.
func (f *fakeOS) exit(pid int, ws unix.WaitStatus) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.procs[pid]
	if p == nil || p.dead {
		f.t.Fatalf("exit of pid %d, which is not running", pid)
	}
	p.dead, p.status = true, ws
	f.exited = append(f.exited, pid)
	for _, c := range f.procs {
		if c.ppid == pid {
			c.ppid = f.self
		}
	}
}

// releaseOutput closes what held worker pid's output open.
func (f *fakeOS) releaseOutput(pid int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.held[pid]) == 0 {
		f.t.Fatalf("nothing holds the output of pid %d", pid)
	}
	for _, h := range f.held[pid] {
		h.Close()
	}
	delete(f.held, pid)
}

// killed returns the signals sent so far.
func (f *fakeOS) killed() []killCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.kills)
}

func exitCode(n int) unix.WaitStatus { return unix.WaitStatus(n << 8) }

// tableRig is a process table over a fake OS and clock that is never run:
// the test handles its messages and collects what it posts to the loop.
type tableRig struct {
	t      *testing.T
	p      *procTable
	os     *fakeOS
	clock  *fakeClock
	logs   *observer.ObservedLogs
	posted []event
	queued []procMsg      // taken from the inbox, not handled yet
	closed map[uint64]int // output streams at end of file, by token, as handled
}

func newTableRig(t *testing.T, grace time.Duration) *tableRig {
	core, logs := observer.New(zap.DebugLevel)
	r := &tableRig{t: t, os: newFakeOS(t), clock: &fakeClock{now: time.Unix(1_000_000, 0)}, logs: logs, closed: make(map[uint64]int)}
	r.p = &procTable{
		log:         zap.New(core),
		sys:         r.os.sys(r.clock),
		now:         func() time.Time { return r.clock.now },
		inbox:       newMailbox[procMsg](),
		post:        func(ev event) { r.posted = append(r.posted, ev) },
		outputGrace: grace,
		procs:       make(map[uint64]*proc),
		byPid:       make(map[int]*proc),
	}
	return r
}

// spawn starts token's worker and returns its pid.
func (r *tableRig) spawn(token uint64) int {
	r.t.Helper()
	spec := &spawnSpec{service: "w", id: int(token), argv0: "/fake/worker", argv: []string{"worker"}, deathSignal: syscall.SIGKILL}
	r.p.handle(spawnReq{token: token, spec: spec})
	if n := len(r.posted); n > 0 {
		if ws, ok := r.posted[n-1].(workerStarted); ok && ws.token == token {
			return ws.pid
		}
	}
	r.t.Fatalf("spawn of token %d: posted %v, want workerStarted last", token, r.posted)
	return 0
}

// awaitOutputClosed handles the table's messages in order until n of
// token's output streams have reached end of file in all. Readers post
// those on their own goroutines; the bound only keeps a broken table from
// hanging.
func (r *tableRig) awaitOutputClosed(token uint64, n int) {
	r.t.Helper()
	for r.closed[token] < n {
		for len(r.queued) == 0 {
			select {
			case <-r.p.inbox.wake:
				r.queued = r.p.inbox.take(nil)
			case <-time.After(10 * time.Second):
				r.t.Fatalf("token %d: %d of %d output streams reached end of file", token, r.closed[token], n)
			}
		}
		r.handleNext()
	}
}

// deliver handles what is in the table's inbox now, as run would.
func (r *tableRig) deliver() {
	r.queued = append(r.queued, r.p.inbox.take(nil)...)
	for len(r.queued) > 0 {
		r.handleNext()
	}
}

func (r *tableRig) handleNext() {
	m := r.queued[0]
	r.queued = r.queued[1:]
	r.p.handle(m)
	if oc, ok := m.(outputClosed); ok {
		r.closed[oc.token]++
	}
}

// fire fires the one pending timer, which must have duration d, and
// delivers what it posted.
func (r *tableRig) fire(d time.Duration) {
	r.t.Helper()
	pending := r.clock.pending()
	if len(pending) != 1 || pending[0].d != d {
		r.t.Fatalf("pending timers %v, want one of %v", durations(pending), d)
	}
	pending[0].fire()
	r.deliver()
}

func durations(timers []*fakeTimer) []time.Duration {
	var ds []time.Duration
	for _, t := range timers {
		ds = append(ds, t.d)
	}
	return ds
}

// exits returns the workerExited events posted so far.
func (r *tableRig) exits() []workerExited {
	var out []workerExited
	for _, ev := range r.posted {
		if ex, ok := ev.(workerExited); ok {
			out = append(out, ex)
		}
	}
	return out
}

func TestProcTableFinishesAWorkerThatDiedOnItsOwnWhenItsOutputGraceEnds(t *testing.T) {
	r := newTableRig(t, 3*time.Second)
	r.os.plan(fakeFork{pid: 101, holdOutput: true})
	pid := r.spawn(1)
	r.clock.now = r.clock.now.Add(time.Second)
	exitAt := r.clock.now
	r.os.exit(pid, exitCode(3))
	r.p.reap()
	if ex := r.exits(); len(ex) != 0 {
		t.Fatalf("finished at the reap with its output held: %v", ex)
	}
	if p := r.clock.pending(); len(p) != 1 || p[0].d != 3*time.Second {
		t.Fatalf("pending timers %v after the reap, want the 3s output grace", durations(p))
	}
	// Time passing and messages arriving finish nothing: only the timer.
	r.clock.now = r.clock.now.Add(time.Hour)
	r.deliver()
	r.p.handle(outputClosed{token: 99}) // some other token's
	if ex := r.exits(); len(ex) != 0 {
		t.Fatalf("finished before the grace timer fired: %v", ex)
	}
	r.fire(3 * time.Second)
	want := []workerExited{{token: 1, pid: 101, status: exitCode(3), at: exitAt}}
	if ex := r.exits(); !slices.Equal(ex, want) {
		t.Fatalf("after the grace: exits %v, want %v (timed at the reap)", ex, want)
	}
	if n := r.logs.FilterMessage("worker exited but its output is still open: a process outside its group holds it; closing it").Len(); n != 1 {
		t.Errorf("%d warnings about the held output, want 1", n)
	}
	// The timer firing again (a stop that came too late) changes nothing.
	r.clock.timers[0].fire()
	r.deliver()
	if ex := r.exits(); len(ex) != 1 {
		t.Errorf("a second grace expiry posted again: %v", ex)
	}
}

func TestProcTableFinishesAWorkerAtOnceWhenItsOutputClosesFirst(t *testing.T) {
	r := newTableRig(t, 3*time.Second)
	r.os.plan(fakeFork{pid: 102}, fakeFork{pid: 103, holdOutput: true})

	// The output ends before the process is reaped: finished at the reap.
	pid := r.spawn(1)
	r.awaitOutputClosed(1, 2)
	if ex := r.exits(); len(ex) != 0 {
		t.Fatalf("finished before it was reaped: %v", ex)
	}
	r.os.exit(pid, exitCode(0))
	r.p.reap()
	if ex := r.exits(); len(ex) != 1 || ex[0].token != 1 || ex[0].pid != 102 {
		t.Fatalf("at the reap: exits %v, want token 1's", ex)
	}
	if len(r.clock.timers) != 0 {
		t.Errorf("timers %v armed for a worker whose output had closed", durations(r.clock.timers))
	}

	// The output ends after the reap, within the grace: finished at the
	// second end of file, and the grace timer is stopped.
	pid = r.spawn(2)
	r.os.exit(pid, exitCode(0))
	r.p.reap()
	r.os.releaseOutput(pid)
	r.awaitOutputClosed(2, 1)
	if ex := r.exits(); len(ex) != 1 {
		t.Fatalf("finished with one stream open: %v", ex)
	}
	r.awaitOutputClosed(2, 2)
	if ex := r.exits(); len(ex) != 2 || ex[1].token != 2 || ex[1].pid != 103 {
		t.Fatalf("after both streams closed: exits %v, want token 2's too", ex)
	}
	if p := r.clock.pending(); len(p) != 0 {
		t.Errorf("timers %v still pending after the worker finished", durations(p))
	}
}

func TestProcTableRechecksAStoppingWorkersGroupUntilItIsEmpty(t *testing.T) {
	r := newTableRig(t, 3*time.Second)
	r.os.plan(fakeFork{pid: 201, holdOutput: true}) // held by a daemon outside the group
	pid := r.spawn(1)
	r.os.start(202, pid, pid) // a member of its group
	r.p.handle(signalReq{token: 1, sig: syscall.SIGTERM, stop: true})
	if ev := r.posted[len(r.posted)-1]; ev != (stopSignalSent{token: 1, at: r.clock.now}) {
		t.Fatalf("after the stop signal: posted %v, want stopSignalSent last", ev)
	}
	r.os.exit(pid, unix.WaitStatus(syscall.SIGTERM))
	r.p.reap()
	// The member outlives its leader, as a stop allows: the group is
	// looked at again every groupCheck, and nothing else happens.
	for range 3 {
		r.fire(groupCheck)
		if ex := r.exits(); len(ex) != 0 {
			t.Fatalf("finished while its group still had a member: %v", ex)
		}
	}
	r.os.exit(202, exitCode(0))
	r.p.reap() // an orphan now: only logged
	if len(r.exits()) != 0 || len(r.clock.pending()) != 1 {
		t.Fatalf("the member's reap finished the worker (%v) or armed a timer (%v)", r.exits(), durations(r.clock.pending()))
	}
	// The next check finds the group empty: what still holds the output is
	// outside it, and gets the output grace, after which the worker is done.
	r.fire(groupCheck)
	if ex := r.exits(); len(ex) != 0 {
		t.Fatalf("finished at the check with its output held: %v", ex)
	}
	r.fire(3 * time.Second)
	want := []workerExited{{token: 1, pid: 201, status: unix.WaitStatus(syscall.SIGTERM), at: r.clock.now}}
	if ex := r.exits(); !slices.Equal(ex, want) {
		t.Fatalf("exits %v, want %v", ex, want)
	}
	if k := r.os.killed(); !slices.Equal(k, []killCall{{-201, syscall.SIGTERM}, {-201, syscall.SIGCONT}}) {
		t.Errorf("signals %v, want only the stop signal and SIGCONT: a stopping group is spared", k)
	}
}

func TestProcTableKeepsSignalsAndStatusesWithTheirTokenAcrossPidReuse(t *testing.T) {
	r := newTableRig(t, 3*time.Second)
	r.os.plan(fakeFork{pid: 300}, fakeFork{pid: 300})
	r.spawn(1)
	r.awaitOutputClosed(1, 2)
	r.os.exit(300, exitCode(1))
	r.p.reap()

	// The kernel hands pid 300 to the next worker.
	if pid := r.spawn(2); pid != 300 {
		t.Fatalf("second worker got pid %d, want the reused 300", pid)
	}
	r.awaitOutputClosed(2, 2)

	// An orphan reaped with a pid that is no worker's is only logged.
	r.os.start(350, r.os.self, 340)
	r.os.exit(350, exitCode(7))
	before := len(r.posted)
	r.p.reap()
	if len(r.posted) != before {
		t.Errorf("reaping an orphan posted %v", r.posted[before:])
	}
	orphans := r.logs.FilterMessage("reaped orphan").AllUntimed()
	if len(orphans) != 1 || orphans[0].ContextMap()["pid"] != int64(350) || orphans[0].ContextMap()["status"] != "exit code 7" {
		t.Errorf("orphan log entries %v, want one for pid 350 with exit code 7", orphans)
	}

	// Signals for the finished token reach nobody; the new one's, its group.
	before = len(r.posted)
	r.p.handle(signalReq{token: 1, sig: syscall.SIGTERM, stop: true})
	r.p.handle(signalReq{token: 1, sig: syscall.SIGKILL})
	if len(r.posted) != before {
		t.Errorf("signals for the finished token posted %v", r.posted[before:])
	}
	r.p.handle(signalReq{token: 2, sig: syscall.SIGHUP})
	wantKills := []killCall{{-300, syscall.SIGKILL}, {-300, syscall.SIGHUP}} // token 1's own death, token 2's HUP
	if k := r.os.killed(); !slices.Equal(k, wantKills) {
		t.Errorf("signals %v, want %v: none of the finished token's", k, wantKills)
	}
	r.os.exit(300, unix.WaitStatus(syscall.SIGHUP))
	r.p.reap()
	ex := r.exits()
	if len(ex) != 2 || ex[0].token != 1 || ex[0].status != exitCode(1) || ex[1].token != 2 || ex[1].status != unix.WaitStatus(syscall.SIGHUP) {
		t.Fatalf("exits %v, want token 1 with exit code 1, then token 2 killed by SIGHUP", ex)
	}

	// Two exits in one reap, in the other order: each status to its token.
	r.os.plan(fakeFork{pid: 310}, fakeFork{pid: 311})
	r.spawn(3)
	r.spawn(4)
	r.awaitOutputClosed(3, 2)
	r.awaitOutputClosed(4, 2)
	r.os.exit(311, exitCode(44))
	r.os.exit(310, exitCode(33))
	r.p.reap()
	ex = r.exits()[2:]
	want := []workerExited{{token: 4, pid: 311, status: exitCode(44), at: r.clock.now}, {token: 3, pid: 310, status: exitCode(33), at: r.clock.now}}
	if !slices.Equal(ex, want) {
		t.Errorf("exits %v, want %v", ex, want)
	}
}

func TestProcTableSignalsNoGroupAfterTheReapOnceNoChildIsInIt(t *testing.T) {
	r := newTableRig(t, 3*time.Second)
	r.os.plan(fakeFork{pid: 400, holdOutput: true})
	pid := r.spawn(1)
	r.p.handle(signalReq{token: 1, sig: syscall.SIGTERM, stop: true})
	r.os.exit(pid, unix.WaitStatus(syscall.SIGTERM))
	r.p.reap()
	// Group 400 is empty: the id is free for the kernel to reuse, so the
	// loop's SIGKILL at the stop timeout must not be sent to it. The
	// worker counts as killed: its output gets the grace.
	r.p.handle(signalReq{token: 1, sig: syscall.SIGKILL})
	if k := r.os.killed(); !slices.Equal(k, []killCall{{-400, syscall.SIGTERM}, {-400, syscall.SIGCONT}}) {
		t.Errorf("signals %v, want only the SIGTERM and SIGCONT sent while the leader was unreaped", k)
	}
	if p := r.clock.pending(); len(p) != 2 || !slices.Contains(durations(p), 3*time.Second) {
		t.Errorf("pending timers %v, want the group check and the output grace", durations(p))
	}
	// With a child of ours still in the group, the same SIGKILL is sent.
	r.os.plan(fakeFork{pid: 410, holdOutput: true})
	pid = r.spawn(2)
	r.os.start(411, pid, pid)
	r.p.handle(signalReq{token: 2, sig: syscall.SIGTERM, stop: true})
	r.os.exit(pid, unix.WaitStatus(syscall.SIGTERM))
	r.p.reap()
	r.p.handle(signalReq{token: 2, sig: syscall.SIGKILL})
	if k := r.os.killed(); !slices.Contains(k, killCall{-410, syscall.SIGKILL}) {
		t.Errorf("signals %v: the SIGKILL did not reach the group's surviving member", k)
	}
}

func TestProcTableReportsAFailedForkAndTracksNothing(t *testing.T) {
	r := newTableRig(t, 3*time.Second)
	r.os.plan(fakeFork{err: syscall.EAGAIN})
	r.p.handle(spawnReq{token: 1, spec: &spawnSpec{service: "w", argv0: "/fake/worker", argv: []string{"worker"}, deathSignal: syscall.SIGKILL}})
	if len(r.posted) != 1 {
		t.Fatalf("posted %v, want one startFailed", r.posted)
	}
	sf, ok := r.posted[0].(startFailed)
	if !ok || sf.token != 1 || !errors.Is(sf.err, syscall.EAGAIN) || sf.at != r.clock.now {
		t.Fatalf("posted %#v, want startFailed for token 1 wrapping EAGAIN", r.posted[0])
	}
	if len(r.p.procs) != 0 || len(r.p.byPid) != 0 {
		t.Errorf("a failed fork left entries: procs %v byPid %v", r.p.procs, r.p.byPid)
	}
	r.p.handle(signalReq{token: 1, sig: syscall.SIGKILL})
	if k := r.os.killed(); len(k) != 0 {
		t.Errorf("signals %v for a token that never had a process", k)
	}
}

func TestProcTableKillsTheGroupOnlyOfAWorkerThatDiedOnItsOwn(t *testing.T) {
	r := newTableRig(t, 3*time.Second)
	r.os.plan(fakeFork{pid: 600}, fakeFork{pid: 601})
	died, stopped := r.spawn(1), r.spawn(2)
	r.awaitOutputClosed(1, 2)
	r.awaitOutputClosed(2, 2)
	r.os.start(610, died, died)
	r.os.start(611, stopped, stopped)
	r.p.handle(signalReq{token: 2, sig: syscall.SIGTERM, stop: true})
	r.os.exit(died, exitCode(2))
	r.os.exit(stopped, unix.WaitStatus(syscall.SIGTERM))
	r.p.reap()
	want := []killCall{{-601, syscall.SIGTERM}, {-601, syscall.SIGCONT}, {-600, syscall.SIGKILL}}
	if k := r.os.killed(); !slices.Equal(k, want) {
		t.Errorf("signals %v, want %v: SIGKILL for the group of the worker that died on its own, none for the stopping one's", k, want)
	}
	if ex := r.exits(); len(ex) != 2 {
		t.Errorf("exits %v, want both workers'", ex)
	}
}

// sweepRig runs sweep on its own goroutine over a fake OS whose ticker
// never ticks. The test changes the fake's processes only at points where
// sweep has nothing left to look at before it waits again: after it armed
// its deadline and sent the signals the test expects (each reported on
// signalled as it is sent). SIGCHLD is unbuffered, so a SIGCHLD the test
// sends is taken by sweep's wait, not left for a later one.
type sweepRig struct {
	*tableRig
	signalled chan killCall
	armed     chan *fakeTimer // each deadline sweep arms, as it arms it
	tickers   int             // started and not stopped
	done      chan struct{}
}

func newSweepRig(t *testing.T) *sweepRig {
	s := &sweepRig{tableRig: newTableRig(t, time.Second), signalled: make(chan killCall, 16),
		armed: make(chan *fakeTimer, 8), done: make(chan struct{})}
	s.os.signalled = s.signalled
	s.p.sigchld = make(chan os.Signal)
	s.p.sys.afterFunc = func(d time.Duration, f func()) func() bool {
		tm := &fakeTimer{d: d, f: f}
		s.armed <- tm
		return func() bool {
			pending := !tm.stopped && !tm.fired
			tm.stopped = true
			return pending
		}
	}
	s.p.sys.newTicker = func(time.Duration) (<-chan time.Time, func()) {
		s.tickers++
		return make(chan time.Time), func() { s.tickers-- }
	}
	return s
}

func (s *sweepRig) start(fast bool, timeout time.Duration) {
	go func() {
		defer close(s.done)
		s.p.sweep(fast, timeout)
	}()
}

// bound keeps a broken sweep from hanging the test; nothing waits for it
// to pass.
const bound = 10 * time.Second

// awaitSignals waits for sweep to send want, in order, and nothing else.
func (s *sweepRig) awaitSignals(want ...killCall) {
	s.t.Helper()
	for _, w := range want {
		select {
		case k := <-s.signalled:
			if k != w {
				s.t.Fatalf("sweep sent %v, want %v; all: %v", k, w, s.os.killed())
			}
		case <-s.done:
			s.t.Fatalf("sweep returned before sending %v", w)
		case <-time.After(bound):
			s.t.Fatalf("sweep never sent %v", w)
		}
	}
}

func (s *sweepRig) nextDeadline() *fakeTimer {
	s.t.Helper()
	select {
	case tm := <-s.armed:
		return tm
	case <-time.After(bound):
		s.t.Fatal("sweep armed no deadline")
		return nil
	}
}

func (s *sweepRig) sigchld() {
	s.t.Helper()
	select {
	case s.p.sigchld <- syscall.SIGCHLD:
	case <-s.done:
		s.t.Fatal("sweep returned before the SIGCHLD")
	case <-time.After(bound):
		s.t.Fatal("sweep never waited for SIGCHLD")
	}
}

func (s *sweepRig) awaitReturn() {
	s.t.Helper()
	select {
	case <-s.done:
	case <-time.After(bound):
		s.t.Fatalf("sweep did not return; signals sent: %v", s.os.killed())
	}
}

func TestProcTableSweepTermsLeftoversThenKillsThemAtTheDeadline(t *testing.T) {
	s := newSweepRig(t)
	self := s.os.self
	s.os.start(700, self, 690) // daemons the workers left behind
	s.os.start(701, self, 701)
	s.os.start(800, 1, 800) // not ours
	s.start(false, 10*time.Second)
	first := s.nextDeadline()
	if first.d != 10*time.Second {
		t.Errorf("deadline %v, want the 10s timeout", first.d)
	}
	s.awaitSignals(killCall{700, syscall.SIGTERM}, killCall{701, syscall.SIGTERM})
	// One goes on SIGTERM and is reaped; the other is not asked again.
	s.os.exit(700, unix.WaitStatus(syscall.SIGTERM))
	s.sigchld()
	// At the deadline: SIGKILL, and a last, bounded wait.
	first.fire()
	if second := s.nextDeadline(); second.d != sweepKillWait {
		t.Errorf("after the deadline, a wait of %v, want %v", second.d, sweepKillWait)
	}
	s.awaitSignals(killCall{701, syscall.SIGKILL})
	s.os.exit(701, unix.WaitStatus(syscall.SIGKILL))
	s.sigchld()
	s.awaitReturn()

	want := []killCall{{700, syscall.SIGTERM}, {701, syscall.SIGTERM}, {701, syscall.SIGKILL}}
	if k := s.os.killed(); !slices.Equal(k, want) {
		t.Errorf("signals %v, want %v", k, want)
	}
	if left := s.os.processes(); len(left) != 1 || left[0].pid != 800 {
		t.Errorf("processes left %v, want only the one that is not ours", left)
	}
	if s.tickers != 0 {
		t.Error("the ticker was not stopped")
	}
	var reaped []any
	for _, e := range s.logs.FilterMessage("reaped orphan").AllUntimed() {
		reaped = append(reaped, e.ContextMap()["pid"])
	}
	if !slices.Equal(reaped, []any{int64(700), int64(701)}) {
		t.Errorf("reaped %v, want 700 then 701", reaped)
	}
}

func TestProcTableSweepLeavesWhatSurvivesSIGKILL(t *testing.T) {
	s := newSweepRig(t)
	s.start(false, time.Second)
	s.awaitReturn() // no leftovers: nothing to wait for
	if k := s.os.killed(); len(k) != 0 {
		t.Fatalf("signals %v with no leftovers", k)
	}

	s = newSweepRig(t)
	s.os.start(900, s.os.self, 900)
	s.start(true, 2*time.Second)
	deadline := s.nextDeadline()
	s.awaitSignals(killCall{900, syscall.SIGKILL}) // fast: SIGKILL at once
	deadline.fire()
	s.awaitReturn()
	if len(s.armed) != 0 {
		t.Error("sweep waited again after SIGKILL had had its time")
	}
	if k := s.os.killed(); len(k) != 1 {
		t.Errorf("signals %v, want the one SIGKILL", k)
	}
	if n := s.logs.FilterMessage("processes the workers left behind survive SIGKILL; leaving them").Len(); n != 1 {
		t.Errorf("%d errors about the survivors, want 1", n)
	}
}

// An exited worker's output that is still being read when its grace ends
// (a backlog the log was slow to take) is waited for again, grace after
// grace, until a grace passes with nothing read, or maxOutputDrain in all.
func TestProcTableWaitsWhileAnExitedWorkersOutputIsStillRead(t *testing.T) {
	r := newTableRig(t, 3*time.Second)
	r.os.plan(fakeFork{pid: 101, holdOutput: true})
	pid := r.spawn(1)
	r.os.exit(pid, exitCode(0))
	r.p.reap()
	pr := r.p.procs[1]
	write := func(line string) {
		t.Helper()
		before := pr.output.steps.Load()
		if _, err := r.os.held[pid][0].WriteString(line); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for pr.output.steps.Load() < before+2 || pr.output.busy.Load() != 0 { // the read, the line logged
			if time.Now().After(deadline) {
				t.Fatalf("the reader did not read %q", line)
			}
			time.Sleep(time.Millisecond) // the reader's progress, polled with a deadline
		}
	}
	write("still draining\n")
	r.clock.now = r.clock.now.Add(3 * time.Second)
	r.fire(3 * time.Second)
	if ex := r.exits(); len(ex) != 0 {
		t.Fatalf("finished while its output was still being read: %v", ex)
	}
	write("more\n")
	r.clock.now = r.clock.now.Add(3 * time.Second)
	r.fire(3 * time.Second) // read again: another grace
	r.clock.now = r.clock.now.Add(3 * time.Second)
	r.fire(3 * time.Second) // nothing read during this one: done
	if ex := r.exits(); len(ex) != 1 || ex[0].token != 1 {
		t.Fatalf("exits %v, want token 1 once a grace passed with nothing read", ex)
	}
	if n := r.logs.FilterMessage("worker exited and its output is still being read; waiting").Len(); n != 2 {
		t.Errorf("%d waits logged, want 2", n)
	}

	// A leftover that writes without end holds the slot maxOutputDrain at
	// most.
	r.os.plan(fakeFork{pid: 102, holdOutput: true})
	pid = r.spawn(2)
	r.os.exit(pid, exitCode(0))
	r.p.reap()
	pr = r.p.procs[2]
	for waited := time.Duration(0); ; waited += 3 * time.Second {
		write("chatter\n")
		r.clock.now = r.clock.now.Add(3 * time.Second)
		r.fire(3 * time.Second)
		if len(r.exits()) == 2 {
			if waited+3*time.Second < maxOutputDrain {
				t.Fatalf("finished after %v of chatter, before maxOutputDrain", waited+3*time.Second)
			}
			break
		}
		if waited > 2*maxOutputDrain {
			t.Fatal("a leftover that keeps writing held the slot past maxOutputDrain")
		}
	}
	r.os.releaseOutput(101)
	r.os.releaseOutput(102)
}

// A stopping worker whose leader (pid P) was reaped while its output is
// still held keeps its place in the table. When P is handed to a new worker,
// which leads a new group P, the old worker's group is gone: its group check
// must not take the new worker for a member, and its stop timeout's SIGKILL
// must not reach the new worker, whose exit stays its own.
func TestProcTableNeverSignalsAReusedGroupForTheOldWorker(t *testing.T) {
	r := newTableRig(t, 3*time.Second)
	const P = 500
	r.os.plan(fakeFork{pid: P, holdOutput: true}, fakeFork{pid: P})
	r.spawn(1)
	r.p.handle(signalReq{token: 1, sig: syscall.SIGTERM, stop: true})
	r.os.exit(P, exitCode(0))
	r.p.reap()
	if p := durations(r.clock.pending()); !slices.Equal(p, []time.Duration{groupCheck}) {
		t.Fatalf("pending timers %v after the stopping leader's reap, want the group check", p)
	}
	// The group is empty, so the kernel may hand P out again: to token 2.
	if pid := r.spawn(2); pid != P {
		t.Fatalf("second fork got pid %d, want %d", pid, P)
	}
	if p := durations(r.clock.pending()); !slices.Contains(p, 3*time.Second) {
		t.Errorf("pending timers %v once P was reused, want the output grace armed (the old group is gone)", p)
	}
	before := len(r.os.killed())
	r.p.handle(signalReq{token: 1, sig: syscall.SIGKILL}) // the old worker's stop timeout
	for _, k := range r.os.killed()[before:] {
		t.Errorf("the old worker's SIGKILL was sent as %v: it would reach the new worker %d", k, P)
	}
	// The group check that was on its way finds nothing left either.
	for _, tm := range r.clock.pending() {
		if tm.d == groupCheck {
			tm.fire()
		}
	}
	r.deliver()
	if n := len(r.os.killed()); n != before {
		t.Errorf("signals sent after the reuse: %v", r.os.killed()[before:])
	}
	// The new worker's own stop reaches its group, and its exit is its own.
	before = len(r.os.killed())
	r.p.handle(signalReq{token: 2, sig: syscall.SIGTERM, stop: true})
	if k, want := r.os.killed()[before:], []killCall{{-P, syscall.SIGTERM}, {-P, syscall.SIGCONT}}; !slices.Equal(k, want) {
		t.Errorf("the new worker's stop was sent as %v, want %v", k, want)
	}
	r.os.exit(P, exitCode(7))
	r.p.reap()
	r.awaitOutputClosed(2, 2)
	if ex := r.exits(); len(ex) != 1 || ex[0].token != 2 || ex[0].status != exitCode(7) {
		t.Errorf("exits %v, want token 2's exit code 7 (token 1 still waits for its output)", ex)
	}
	r.os.releaseOutput(P)
	r.awaitOutputClosed(1, 2)
	if ex := r.exits(); len(ex) != 2 || ex[1].token != 1 || ex[1].status != exitCode(0) {
		t.Errorf("exits %v, want token 1's exit code 0 once its output closed", ex)
	}
}

// The pid of a reaped leader seen on any process (not a worker: a daemon
// that made itself leader of a new group) also means the old group is gone.
func TestProcTableTakesAnyProcessWithTheReapedLeadersPidForReuse(t *testing.T) {
	r := newTableRig(t, 3*time.Second)
	const P = 600
	r.os.plan(fakeFork{pid: P, holdOutput: true})
	r.spawn(1)
	r.p.handle(signalReq{token: 1, sig: syscall.SIGTERM, stop: true})
	r.os.start(700, r.os.self, P) // a member of the group, reparented to us
	r.os.exit(P, exitCode(0))
	r.p.reap()
	before := len(r.os.killed())
	r.p.handle(signalReq{token: 1, sig: syscall.SIGKILL})
	if k := r.os.killed()[before:]; len(k) != 1 || k[0] != (killCall{-P, syscall.SIGKILL}) {
		t.Fatalf("signals %v while a member was left, want SIGKILL to group %d", k, P)
	}
	// The member is gone, and a stranger now has pid P and leads group P,
	// with a child of its own that ends up ours.
	r.os.exit(700, exitCode(0))
	r.p.reap()
	r.os.start(P, 1, P)
	r.os.start(701, r.os.self, P)
	before = len(r.os.killed())
	r.p.handle(signalReq{token: 1, sig: syscall.SIGKILL})
	if k := r.os.killed()[before:]; len(k) != 0 {
		t.Errorf("signals %v after pid %d was reused by a stranger, want none", k, P)
	}
	r.os.exit(701, exitCode(0)) // not reaped by the test: it is the stranger's
	r.os.releaseOutput(P)
}

// A reader still handling what it read (a log write blocked on a slow
// reader of the manager's output) holds the slot too, with no new read.
func TestProcTableWaitsWhileAReaderIsStillLogging(t *testing.T) {
	r := newTableRig(t, 3*time.Second)
	r.os.plan(fakeFork{pid: 103, holdOutput: true})
	pid := r.spawn(1)
	r.os.exit(pid, exitCode(0))
	r.p.reap()
	pr := r.p.procs[1]
	pr.output.busy.Add(1) // as logOutput does around the lines of one read
	r.clock.now = r.clock.now.Add(3 * time.Second)
	r.fire(3 * time.Second)
	if ex := r.exits(); len(ex) != 0 {
		t.Fatalf("finished while a reader was still logging: %v", ex)
	}
	pr.output.busy.Add(-1)
	r.clock.now = r.clock.now.Add(3 * time.Second)
	r.fire(3 * time.Second)
	if ex := r.exits(); len(ex) != 1 {
		t.Fatalf("exits %v, want the worker finished once its readers were idle for a grace", ex)
	}
	r.os.releaseOutput(pid)
}

// The sweep reads /proc for what workers left only when the manager has a
// child at all (reading every process's stat file is the slow part of a
// stop on a busy machine).
func TestLeftoversReadProcOnlyWithChildren(t *testing.T) {
	f := newFakeOS(t)
	f.start(500, f.self, 500) // an orphan reparented to the manager
	scans := 0
	sys := f.sys(&fakeClock{})
	sys.processes = func() []procStat { scans++; return f.processes() }
	none := true
	sys.noChildren = func() bool { return none }
	p := &procTable{sys: sys}
	if got := p.leftovers(f.self); got != nil || scans != 0 {
		t.Errorf("no children: leftovers %v after %d scans of /proc, want none and no scan", got, scans)
	}
	none = false
	if got := p.leftovers(f.self); !slices.Equal(got, []int{500}) || scans != 1 {
		t.Errorf("with a child: leftovers %v after %d scans, want [500] after one", got, scans)
	}
}

// With cgroups, a leftover that has left its cgroup as it dies (the
// subtree says it is empty) but is not reaped yet is still one of ours:
// the sweep finds it among the manager's children, the sentinel aside, so
// that it is reaped before the process table ends.
func TestLeftoversWithCgroupsIncludeChildrenNotReapedYet(t *testing.T) {
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "cgroup.events"), []byte("populated 0\nfrozen 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f := newFakeOS(t)
	sys := f.sys(&fakeClock{})
	kids := []int{700}
	sys.children = func() ([]int, bool) { return slices.Clone(kids), true }
	p := &procTable{sys: sys, cg: &cgroupTree{root: root}, sentinelPid: 700}
	if got := p.leftovers(f.self); len(got) != 0 {
		t.Errorf("only the sentinel as a child: leftovers %v, want none", got)
	}
	kids = []int{700, 701}
	if got := p.leftovers(f.self); !slices.Equal(got, []int{701}) {
		t.Errorf("a child outside the emptied cgroups: leftovers %v, want [701]", got)
	}
}
