package supervisor

import (
	"errors"
	"maps"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// status asks the loop for a Status as the control server would.
func (r *loopRig) status() Status {
	r.t.Helper()
	reply := make(chan Status, 1)
	r.s.handle(statusRequested{reply: reply})
	return <-reply
}

func TestStatusShowsWorkersCountersAndBackoff(t *testing.T) {
	r := newRig(t, "services:\n  w:\n    command: [/bin/true]\n    workers: 3\n    restart: {min_uptime: 1s, backoff_initial: 100ms, backoff_max: 400ms}\n")
	tokens := r.startAllRunning()
	st := r.status()
	if !st.Started || len(st.Services) != 1 {
		t.Fatalf("status %+v, want started with one service", st)
	}
	sv := st.Services[0]
	if sv.Name != "w" || sv.Desired != 3 || sv.Configured != 3 || sv.Running != 3 || len(sv.Workers) != 3 {
		t.Fatalf("service %+v, want w with 3 of 3 running", sv)
	}
	for i, w := range sv.Workers {
		if w.ID != i || w.State != "running" || w.PID == 0 || w.StartedAt.IsZero() {
			t.Errorf("worker %d: %+v, want running with a pid, in id order", i, w)
		}
	}
	// Worker 1 dies at once, a second time in a row: it goes to backoff;
	// worker 2 is killed by a signal nobody sent, a second time too.
	for _, tok := range slices.Collect(maps.Keys(tokens)) {
		if id := tokens[tok]; id == 1 || id == 2 {
			delete(tokens, tok)
			tokens[r.quickDeathRestartedAtOnce(tok, 100+id)] = id
		}
	}
	r.clock.now = r.clock.now.Add(10 * time.Millisecond)
	for tok, id := range tokens {
		switch id {
		case 1:
			r.s.handle(workerExited{token: tok, pid: 101, status: exitStatus(2), at: r.clock.now})
		case 2:
			r.s.handle(workerExited{token: tok, pid: 102, status: signalStatus(syscall.SIGSEGV), at: r.clock.now})
		}
	}
	st = r.status()
	sv = st.Services[0]
	if sv.Running != 1 || sv.Backoff != 2 {
		t.Errorf("running %d, backoff %d; want 1 and 2", sv.Running, sv.Backoff)
	}
	w1 := sv.Workers[1]
	if w1.State != "backoff" || w1.PID != 0 || w1.LastExit != "exit code 2" || w1.Failures != 2 ||
		w1.Restarts != 2 || !w1.RetryAt.Equal(r.clock.now.Add(100*time.Millisecond)) {
		t.Errorf("worker 1: %+v, want backoff after exit code 2, retry in 100ms", w1)
	}
	if c := sv.Counters; c.Restarts != 2 || c.Exits[ExitError] != 3 || c.Exits[ExitSignal] != 1 || c.Exits[ExitClean] != 0 {
		t.Errorf("counters %+v, want the 2 restarts at once (the second ones wait), 3 error exits and 1 signal exit", c)
	}
	// A restart counts when it happens: the backoff timers fire.
	for _, tm := range r.clock.pending() {
		tm.fire()
	}
	r.deliver()
	if c := r.status().Services[0].Counters; c.Restarts != 4 {
		t.Errorf("%d restarts after the delays, want 4", c.Restarts)
	}
}

// A rescale while the first workers are still starting must not keep the
// manager from having started: each first start is answered once, whatever
// became of its slot.
func TestStartedDespiteAScaleDuringTheFirstStart(t *testing.T) {
	for _, n := range []int{1, 5} {
		r := newRig(t, strings.Replace(scaled, "%d", "3", 1))
		r.s.startAll()
		first := spawned(r.requests())
		if err := r.reconfigure("w", n); err != nil {
			t.Fatal(err)
		}
		select {
		case <-r.s.Started():
			t.Fatalf("scale to %d: started before any start was answered", n)
		default:
		}
		for i, sp := range first {
			r.s.handle(workerStarted{token: sp.token, pid: 100 + i, at: r.clock.now})
		}
		select {
		case <-r.s.Started():
		default:
			t.Errorf("scale to %d during the first start: never started (pending %d)", n, r.s.pendingUp)
		}
	}
}

func TestStatusShowsReconfigureOverrideUntilTheFileWins(t *testing.T) {
	r := newRig(t, strings.Replace(scaled, "%d", "2", 1))
	file := r.s.cfg
	r.startAllRunning()
	if err := r.reconfigure("w", 5); err != nil {
		t.Fatal(err)
	}
	if sv := r.status().Services[0]; sv.Desired != 5 || sv.Configured != 2 {
		t.Errorf("after Reconfigure to 5: desired %d, configured %d; want 5 and 2", sv.Desired, sv.Configured)
	}
	if r.status().LastReload != nil {
		t.Error("a Reconfigure was reported as a reload")
	}
	if err := r.s.onReload(file, ReloadBySignal, nil); err != nil {
		t.Fatal(err)
	}
	st := r.status()
	if sv := st.Services[0]; sv.Desired != 2 || sv.Configured != 2 {
		t.Errorf("after the reload: desired %d, configured %d; want 2 and 2", sv.Desired, sv.Configured)
	}
	if st.LastReload == nil || st.LastReload.Source != ReloadBySignal || st.LastReload.Error != "" || st.ReloadsOK != 1 {
		t.Errorf("last reload %+v (ok %d), want a good one from SIGHUP", st.LastReload, st.ReloadsOK)
	}
}

func TestStatusShowsAFailedReload(t *testing.T) {
	r := newRig(t, oneWorker)
	r.startOne(100)
	r.s.ReloadRefused(ReloadByFile, errors.New("loop.yaml:3:14: workers must be a whole number"))
	r.deliver()
	st := r.status()
	if st.LastReload == nil || st.LastReload.Source != ReloadByFile || !strings.Contains(st.LastReload.Error, "loop.yaml:3:14") ||
		st.ReloadsFailed != 1 || st.ReloadsOK != 0 {
		t.Errorf("status %+v / %+v, want one failed reload from the file, with its position", st, st.LastReload)
	}
	if st.Services[0].Running != 1 {
		t.Error("a failed reload changed the workers")
	}
}

func TestReplaceAllStopsEveryOutdatedWorkerAtOnce(t *testing.T) {
	const base = "services:\n  w:\n    command: [/bin/true, %s]\n    workers: 3\n    replace: %s\n"
	for _, tc := range []struct {
		replace string
		stops   int
	}{{"rolling", 1}, {"all", 3}} {
		t.Run(tc.replace, func(t *testing.T) {
			cfgFor := func(arg string) string {
				return strings.Replace(strings.Replace(base, "%s", arg, 1), "%s", tc.replace, 1)
			}
			r := newRig(t, cfgFor("a"))
			r.startAllRunning()
			if err := r.s.onReload(parse(t, cfgFor("b")), ReloadByProgram, nil); err != nil {
				t.Fatal(err)
			}
			if sg := signals(r.requests()); len(sg) != tc.stops {
				t.Errorf("replace %s stopped %d workers at once, want %d", tc.replace, len(sg), tc.stops)
			}
		})
	}
}

func exitStatus(code int) unix.WaitStatus { return unix.WaitStatus(code << 8) }

func signalStatus(sig syscall.Signal) unix.WaitStatus { return unix.WaitStatus(sig) }
