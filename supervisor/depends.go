package supervisor

import (
	"fmt"
	"strings"

	"go.uber.org/zap"

	"github.com/gotyledon/gotyledon/config"
)

// Dependencies (a service's depends_on), as the loop applies them:
//
//   - A service is released once every service it depends on meets its
//     condition, checked over each of that service's workers: started (a
//     process is up, or the worker completed), ready (it is ready, or
//     completed with exit code 0), completed (it completed with exit code
//     0). A dependency with no workers is met. Until then the service's
//     slots wait, with no process (stateWaiting), and Status says what
//     each waits for.
//   - Released is for good: its workers are restarted as any others,
//     whatever then becomes of its dependencies, and a reload that adds a
//     dependency to a released service changes nothing that runs. A
//     service a reload adds, or one whose slots all waited and that a
//     reload freed of a dependency, is checked as at the first start.
//   - The first start's readiness (Ready, systemd's READY=1) waits for a
//     held service's workers too, their ready_timeout counted from their
//     release; it stops waiting for a held service whose dependency it has
//     stopped waiting for (failed, or not ready within its ready_timeout).
//   - A graceful shutdown stops a service's workers only once no worker of
//     a service that depends on it is left: dependents first, each with its
//     own stop signal and timeout. A fast one stops all at once.

// DependencyWait is a dependency a held service waits for, in Status.
type DependencyWait struct {
	// Service is the dependency, Condition what is waited for ("started",
	// "ready", "completed").
	Service, Condition string
	// Reason says which of its workers do not meet the condition and what
	// they are doing: "worker 0 running, not ready", "worker 1 failed (exit
	// code 2)".
	Reason string
	// Failed: a worker of the dependency failed and is not going to run
	// again on its own (its restart policy does not restart it): the wait
	// lasts until a reload or `gotyledon restart` runs it again.
	Failed bool
}

// waitsFor returns the dependencies of svc that are not met, in the
// order svc lists them; nil when svc may start.
func (s *Supervisor) waitsFor(svc *config.Service) []DependencyWait {
	var out []DependencyWait
	for _, dep := range svc.DependsOn {
		target := s.cfg.Service(dep.Service)
		if target == nil {
			continue // the config refuses it; a service removed since is no reason to wait
		}
		var notes []string
		failed := false
		for id := range target.Workers {
			w := s.workers[workerKey{dep.Service, id}]
			note, ok, gone := meets(w, dep.Condition)
			if ok {
				continue
			}
			failed = failed || gone
			notes = append(notes, fmt.Sprintf("worker %d %s", id, note))
		}
		if len(notes) == 0 {
			continue
		}
		out = append(out, DependencyWait{Service: dep.Service, Condition: dep.Condition.String(),
			Reason: strings.Join(notes, "; "), Failed: failed})
	}
	return out
}

// meets reports whether w, a worker of a dependency, meets c; if not,
// note says what it is doing instead, and gone that it failed and its
// restart policy does not run it again.
func meets(w *worker, c config.Condition) (note string, ok, gone bool) {
	if w == nil {
		return "not started", false, false
	}
	switch w.state {
	case stateCompleted:
		if w.succeeded {
			return "", true, false
		}
		if c == config.ConditionStarted && w.ran {
			return "", true, false // it did start
		}
		return fmt.Sprintf("failed (%s)", w.lastExit), false, true
	case stateRunning:
		switch {
		case c == config.ConditionStarted:
			return "", true, false
		case c == config.ConditionReady && w.ready:
			return "", true, false
		case c == config.ConditionReady:
			return "running, not ready", false, false
		}
		return "running, not completed", false, false
	case stateBackoff:
		return fmt.Sprintf("in backoff (%s)", w.lastExit), false, false
	case stateWaiting:
		return "waiting for its own dependencies", false, false
	}
	return w.state.String(), false, false
}

// releaseWaiting starts the waiting slots of each held service whose
// dependencies are met, and stops the first start's readiness waiting for
// held services whose dependencies it no longer waits for. It runs after
// every event: a service released may be what another waits for.
func (s *Supervisor) releaseWaiting() {
	if s.waiting == 0 || s.stopping || s.startedAt.IsZero() {
		return
	}
	for changed := true; changed && s.waiting > 0; {
		changed = false
		held := make(map[string]bool)
		for _, w := range s.workers {
			if w.state == stateWaiting {
				held[w.key.service] = true
			}
		}
		for _, svc := range s.cfg.Services {
			if !held[svc.Name] {
				continue
			}
			// Released already: a rescale's new slots started, these
			// did not yet.
			waits := s.waitsFor(svc)
			if s.released[svc.Name] || len(waits) == 0 {
				s.release(svc)
				changed = true
				continue
			}
			if s.giveUpHeld(svc, waits) {
				changed = true
			}
		}
	}
}

// addSlot adds w to the worker table.
func (s *Supervisor) addSlot(w *worker) {
	s.workers[w.key] = w
	s.slotsOf[w.key.service]++
}

// dropSlot removes w from the worker table.
func (s *Supervisor) dropSlot(w *worker) {
	delete(s.workers, w.key)
	if s.slotsOf[w.key.service]--; s.slotsOf[w.key.service] == 0 {
		delete(s.slotsOf, w.key.service)
		s.emptied = true
	}
}

// wait puts w's slot, which has no process, in stateWaiting.
func (s *Supervisor) wait(w *worker) {
	w.state = stateWaiting
	w.pid = 0
	s.waiting++
}

// mayStart reports whether a new slot of svc may start now (its service is
// released, or may be), rather than wait; it releases the service if so.
func (s *Supervisor) mayStart(svc *config.Service) bool {
	if s.released[svc.Name] {
		return true
	}
	if len(s.waitsFor(svc)) > 0 {
		return false
	}
	s.released[svc.Name] = true
	return true
}

// release starts svc's waiting slots: its dependencies are met.
func (s *Supervisor) release(svc *config.Service) {
	s.released[svc.Name] = true
	s.changed = true
	s.log.Info("dependencies met; starting service", zap.String("service", svc.Name))
	awaited := false
	for id := range svc.Workers {
		if w := s.workers[workerKey{svc.Name, id}]; w != nil && w.state == stateWaiting {
			awaited = awaited || w.awaited
			if svc.Schedule != nil {
				s.waiting--
				s.schedule(w) // its time will come
				continue
			}
			s.start(w)
		}
	}
	if awaited && !s.readyNoted {
		// Its ready_timeout counts from now, not from the first start:
		// the wait for its dependencies is not its workers' fault.
		s.awaitInitialReady([]*config.Service{svc})
	}
}

// giveUpHeld stops the first start's readiness waiting for svc, held by
// waits, if it no longer waits for one of the dependencies in waits: one
// that failed for good, or one it gave up on itself (its ready_timeout
// passed, or it is held by a dependency given up on). A dependency that
// is merely slow, or restarting, is waited for. It reports whether it
// did.
func (s *Supervisor) giveUpHeld(svc *config.Service, waits []DependencyWait) bool {
	if s.readyNoted {
		return false
	}
	var why *DependencyWait
	for i, wt := range waits {
		if wt.Failed || s.gaveUp[wt.Service] {
			why = &waits[i]
			break
		}
	}
	if why == nil || s.gaveUp[svc.Name] {
		return false
	}
	s.gaveUp[svc.Name] = true
	gave := false
	for _, w := range s.workers {
		if w.key.service == svc.Name && w.awaited {
			w.awaited = false
			gave = true
			s.notReadyAtStart = append(s.notReadyAtStart,
				fmt.Sprintf("%s worker %d (waiting for %s %s)", svc.Name, w.key.id, why.Service, why.Condition))
		}
	}
	if gave {
		s.log.Warn("the manager's start stops waiting for a service whose dependency did not come up",
			zap.String("service", svc.Name), zap.String("dependency", why.Service),
			zap.String("condition", why.Condition), zap.String("reason", why.Reason))
		s.checkReady()
	}
	return gave
}

// stopInOrder, in a shutdown, stops every worker whose service nothing
// left depends on: no worker of a service that depends on it remains and,
// for a StopLast service, no worker of any other service. It runs when
// the shutdown starts or turns fast, and after an event that left a
// service without workers, which may free those it depends on. A fast
// shutdown stops every worker at once.
func (s *Supervisor) stopInOrder() {
	if !s.stopping {
		return
	}
	for progress := true; progress; {
		progress = false
		s.emptied = false
		// Who depends on whom: by the configuration, and by the
		// definitions the workers run (a removed service still
		// stopping, a process a reload has yet to replace).
		dependents := make(map[string][]string)
		addDeps := func(svc *config.Service) {
			for _, dep := range svc.DependsOn {
				dependents[dep.Service] = append(dependents[dep.Service], svc.Name)
			}
		}
		for _, svc := range s.cfg.Services {
			addDeps(svc)
		}
		left := make(map[string]bool, len(s.cfg.Services))
		othersLeft := false
		for _, w := range s.workers {
			left[w.key.service] = true
			othersLeft = othersLeft || !w.svc.StopLast
			if s.cfg.Service(w.key.service) != w.svc {
				addDeps(w.svc)
			}
		}
		for _, w := range s.workers {
			// A fast shutdown kills a stopping worker too, once.
			if w.state == stateStopping && (!s.fast || w.killedAtStop) || !s.fast && !mayStop(w, dependents, left, othersLeft) {
				continue
			}
			s.stop(w)
			// A slot without a process is gone at once: what waited
			// for it may stop now.
			progress = progress || s.emptied
		}
	}
}

// mayStop reports whether w may be stopped in a graceful shutdown:
// dependents names the services that depend on each, left the services
// with workers, othersLeft says a worker of a service that is not
// StopLast remains.
func mayStop(w *worker, dependents map[string][]string, left map[string]bool, othersLeft bool) bool {
	if w.svc.StopLast {
		return !othersLeft
	}
	for _, d := range dependents[w.key.service] {
		if d != w.key.service && left[d] {
			return false
		}
	}
	return true
}
