package supervisor

// The loop's handling of depends_on, event by event (see loop_test.go).

import (
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// spawnsOf returns the spawns in msgs of service's workers.
func spawnsOf(msgs []procMsg, service string) []spawnReq {
	var out []spawnReq
	for _, sp := range spawned(msgs) {
		if sp.spec.service == service {
			out = append(out, sp)
		}
	}
	return out
}

// startService reports every spawn in msgs started, and returns their
// tokens by service.
func (r *loopRig) startSpawns(msgs []procMsg) map[string][]uint64 {
	out := map[string][]uint64{}
	for i, sp := range spawned(msgs) {
		r.s.handle(workerStarted{token: sp.token, pid: 100 + len(r.s.byToken) + i, at: r.clock.now})
		out[sp.spec.service] = append(out[sp.spec.service], sp.token)
	}
	return out
}

// A one-shot that runs past its min_uptime is "ready" as a worker, but has
// not completed: its dependent waits, and so does the manager's start,
// without giving up on either.
func TestLoopCompletedWaitsForTheExitNotForReadiness(t *testing.T) {
	r := newRig(t, "services:\n  migrate: {command: [/bin/true], restart: {policy: never, min_uptime: 1s}}\n"+
		"  web: {command: [/bin/true], depends_on: {migrate: completed}}\n")
	r.s.startAll()
	tok := r.startSpawns(r.requests())["migrate"]
	if len(tok) != 1 || r.s.workers[workerKey{"web", 0}].state != stateWaiting {
		t.Fatalf("first start: migrate %v, web %v; want migrate alone started", tok, r.s.workers[workerKey{"web", 0}].state)
	}
	r.clock.now = r.clock.now.Add(2 * time.Second)
	r.readyAll(tok[0])
	if sp := r.requests(); len(spawned(sp)) != 0 || r.s.readyNoted || len(r.s.notReadyAtStart) != 0 {
		t.Fatalf("migrate ready but running: spawns %+v, manager ready %v, not ready %v; want web still waited for", spawned(sp), r.s.readyNoted, r.s.notReadyAtStart)
	}
	r.s.handle(workerExited{token: tok[0], pid: 100, status: 0, at: r.clock.now})
	web := r.startSpawns(r.requests())["web"]
	if len(web) != 1 {
		t.Fatalf("after migrate completed: web spawns %v, want 1", web)
	}
	r.readyAll(web[0])
	if !r.s.readyNoted || len(r.s.notReadyAtStart) != 0 {
		t.Errorf("manager ready %v, not ready %v; want ready, every worker", r.s.readyNoted, r.s.notReadyAtStart)
	}
}

// A dependency that was ready and restarts once holds its dependents
// back again, without the start giving up on them.
func TestLoopARestartingDependencyIsWaitedFor(t *testing.T) {
	r := newRig(t, "services:\n  db: {command: [/bin/true], restart: {min_uptime: 1s}}\n  cache: {command: [/bin/true], restart: {min_uptime: 1s}}\n"+
		"  api: {command: [/bin/true], depends_on: {db: ready, cache: ready}}\n")
	r.s.startAll()
	toks := r.startSpawns(r.requests())
	r.clock.now = r.clock.now.Add(2 * time.Second)
	r.readyAll(toks["db"][0])
	r.s.handle(workerExited{token: toks["db"][0], pid: 1, status: unix.WaitStatus(1 << 8), at: r.clock.now})
	again := r.startSpawns(r.requests())
	if len(again["db"]) != 1 || len(again["api"]) != 0 {
		t.Fatalf("after db's crash: %v, want db alone started again", again)
	}
	if len(r.s.notReadyAtStart) != 0 || !r.s.workers[workerKey{"api", 0}].awaited {
		t.Fatalf("the start gave up on api (%v) for a dependency that restarts", r.s.notReadyAtStart)
	}
	r.clock.now = r.clock.now.Add(2 * time.Second)
	r.readyAll(again["db"][0], toks["cache"][0])
	if api := spawnsOf(r.requests(), "api"); len(api) != 1 {
		t.Fatalf("db and cache ready: api spawns %+v, want 1", api)
	}
}

// In a shutdown, a dependency that exits while its dependent stops is not
// started again; it is dropped in its turn.
func TestLoopADependencyThatExitsDuringTheShutdownIsNotRestarted(t *testing.T) {
	r := newRig(t, "services:\n  db: {command: [/bin/true], restart: {min_uptime: 1s}}\n  web: {command: [/bin/true], depends_on: [db]}\n")
	r.s.startAll()
	db := r.startSpawns(r.requests())["db"]
	web := r.startSpawns(r.requests())["web"]
	r.s.Shutdown(false)
	r.deliver()
	sg := signals(r.requests())
	if len(sg) != 1 || sg[0].token != web[0] {
		t.Fatalf("shutdown signals %+v, want web's alone", sg)
	}
	r.s.handle(workerExited{token: db[0], pid: 1, status: unix.WaitStatus(1 << 8), at: r.clock.now})
	if msgs := r.requests(); len(spawned(msgs)) != 0 || len(r.clock.pending()) != 0 {
		for _, tm := range r.clock.pending() {
			t.Logf("timer %v", tm.d)
		}
		t.Fatalf("db crashed in the shutdown: spawns %+v, timers %d; want neither", spawned(msgs), len(r.clock.pending()))
	}
	r.s.handle(workerExited{token: web[0], pid: 2, status: unix.WaitStatus(syscall.SIGTERM), at: r.clock.now})
	if !r.s.done() {
		t.Errorf("not done once web stopped: %d slots left", len(r.s.workers))
	}
}

// A service a reload removes and the next adds back, whose old worker
// exits only then, waits for its new dependencies; so do its new slots.
func TestLoopAServiceAddedBackWaitsForItsDependencies(t *testing.T) {
	both := "services:\n  db: {command: [/bin/true], restart: {min_uptime: 1s}}\n  web: {command: [/bin/true], depends_on: {db: ready}}\n"
	r := newRig(t, both)
	r.s.startAll()
	db := r.startSpawns(r.requests())["db"]
	r.clock.now = r.clock.now.Add(2 * time.Second)
	r.readyAll(db[0])
	web := r.startSpawns(r.requests())["web"]
	if len(web) != 1 {
		t.Fatalf("web spawns %v after db ready", web)
	}
	r.reloadSettled(parse(t, "services:\n  db: {command: [/bin/true], restart: {min_uptime: 1s}}\n"))
	r.requests() // web's stop
	// web is back with a dependency on cache, which is not ready yet.
	r.reloadSettled(parse(t, "services:\n  db: {command: [/bin/true], restart: {min_uptime: 1s}}\n  cache: {command: [/bin/true], restart: {min_uptime: 1s}}\n"+
		"  web: {command: [/bin/true], workers: 2, depends_on: {db: ready, cache: ready}}\n"))
	r.s.handle(workerExited{token: web[0], pid: 1, status: unix.WaitStatus(syscall.SIGTERM), at: r.clock.now})
	if sp := spawnsOf(r.requests(), "web"); len(sp) != 0 {
		t.Fatalf("web started again while cache is not ready: %+v", sp)
	}
	for id := range 2 {
		if st := r.s.workers[workerKey{"web", id}].state; st != stateWaiting {
			t.Errorf("web/%d is %v, want waiting", id, st)
		}
	}
}
