package supervisor

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const oneShotPair = "services:\n  w:\n    command: [/bin/true]\n    workers: 2\n    restart: {min_uptime: 1s, policy: on-failure}\n"

// A worker that ends (and completes) while it waits its turn in a rolling
// change runs again at once on the new definition, and the reload settles.
func TestLoopOneShotCompletingBeforeItsTurnRunsTheNewDefinition(t *testing.T) {
	r := newRig(t, oneShotPair)
	byID := r.startAllReady()
	settled := r.reloadSettled(parse(t, strings.Replace(oneShotPair, "/bin/true", "/bin/false", 1)))
	r.requests() // slot 0's stop
	r.s.handle(workerExited{token: byID[1], pid: 101, status: 0, at: r.clock.now})
	sp := spawned(r.requests())
	if len(sp) != 1 || sp[0].spec.argv0 != "/bin/false" {
		t.Fatalf("spawns after slot 1 completed before its turn: %+v, want one of /bin/false", sp)
	}
	r.s.handle(workerStarted{token: sp[0].token, pid: 201, at: r.clock.now})
	r.s.handle(workerExited{token: byID[0], pid: 100, status: unix.WaitStatus(syscall.SIGTERM), at: r.clock.now})
	sp0 := spawned(r.requests())
	if len(sp0) != 1 {
		t.Fatalf("slot 0's replacement: %+v", sp0)
	}
	r.s.handle(workerStarted{token: sp0[0].token, pid: 200, at: r.clock.now})
	r.clock.now = r.clock.now.Add(2 * time.Second)
	r.readyAll(sp0[0].token, sp[0].token)
	if err, ok := pendingOutcome(settled); !ok || err != nil {
		t.Errorf("the reload settled %v with %v, want nil", ok, err)
	}
	if got := r.s.rolling(); got != RollingNone {
		t.Errorf("rolling %v after the reload", got)
	}
}

// Under policy never, a worker its watchdog aborted, and one that could
// not start, complete (failed): no new process.
func TestLoopNeverCompletesAbortedAndUnstartableWorkers(t *testing.T) {
	r := newRig(t, "services:\n  w:\n    command: [/bin/true]\n    watchdog: 1s\n    restart: {min_uptime: 1s, policy: never}\n")
	tok := r.startOne(100)
	r.clock.now = r.clock.now.Add(2 * time.Second)
	r.readyAll(tok)
	w := r.s.byToken[tok]
	r.s.handle(watchdogDue{token: tok, seq: w.watchdogSeq})
	r.requests()
	r.s.handle(workerExited{token: tok, pid: 100, status: unix.WaitStatus(syscall.SIGABRT), at: r.clock.now})
	if sp := spawned(r.requests()); len(sp) != 0 || w.state != stateCompleted {
		t.Errorf("aborted by its watchdog under never: state %v, spawns %+v; want completed, none", w.state, sp)
	}

	r = newRig(t, "services:\n  w:\n    command: [/bin/true]\n    restart: {min_uptime: 1s, policy: never}\n")
	r.s.startAll()
	sp := spawned(r.requests())
	r.s.handle(startFailed{token: sp[0].token, err: syscall.ENOENT, at: r.clock.now})
	w = r.s.workers[workerKey{"w", 0}]
	if again := spawned(r.requests()); len(again) != 0 || w.state != stateCompleted || !strings.HasPrefix(w.lastExit, "failed to start") || len(r.clock.pending()) != 0 {
		t.Errorf("a start failure under never: state %v, last exit %q, spawns %+v, timers %d; want completed, no retry", w.state, w.lastExit, again, len(r.clock.pending()))
	}
}
