package supervisor

import (
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/gotyledon/gotyledon/config"
)

// Readiness and rolling changes.
//
// A worker is ready once its process has run its service's min_uptime (the
// time after which an exit no longer counts as a failure to start), or,
// with ready: notify, once it has sent READY=1 (notify.go). A rolling
// replacement (a reload that changes what processChanged compares)
// replaces one slot at a time, and starts on the next only when the new
// process of the previous one is ready. If that process exits before it is
// ready, cannot be started, or is not ready within ready_timeout, the
// rollout halts:
//
//   - the service goes back to its previous definition, for every start
//     from then on (withDefinition: the running configuration's service is
//     reverted but for what applies without a restart);
//   - the failed slot is started again at once on that definition;
//   - the workers not yet replaced keep running; those already replaced,
//     and ready, keep running too, on the new definition, until they next
//     exit (a rescale does not replace them);
//   - the reload is recorded as failed and halted, with the reason
//     (Status's LastReload, the reload counters).
//
// The next reload that changes the service starts a new rollout, measured
// against what each slot runs; one that comes during a rollout supersedes
// it (replacementFailed). `replace: all` is not gated: every stale slot is
// stopped at once.

// notifyMode reports whether w's process says itself when it is ready: its
// service is ready: notify, and it was started with a notify socket (a
// reload may have changed the mode since it started).
func (w *worker) notifyMode() bool {
	return w.notify != nil && w.svc.Ready == config.ReadyNotify
}

// armReady starts w's readiness clock, now that its process has started:
// with ready: uptime, the process is ready after its service's
// min_uptime; with ready: notify, it has ready_timeout to send READY=1.
func (s *Supervisor) armReady(w *worker) {
	w.ready = false
	if w.notifyMode() {
		if w.readyEarly {
			w.readyEarly = false
			cancel(&w.cancelReady)
			s.onReady(w)
			return
		}
		s.armReadyTimer(w, w.svc.ReadyTimeout, true)
		return
	}
	s.armReadyTimer(w, w.svc.Restart.MinUptime, false)
}

// armReadyTimer (re)arms w's readiness timer: after d, the process is
// ready (uptime mode) or has run out of time to say so (timeout). The
// sequence number tells the current timer's event from one it replaced.
func (s *Supervisor) armReadyTimer(w *worker, d time.Duration, timeout bool) {
	cancel(&w.cancelReady)
	w.readySeq++
	token, seq := w.token, w.readySeq
	if timeout {
		w.cancelReady = s.afterFunc(d, func() { s.inbox.put(readyTimedOut{token: token, seq: seq}) })
		return
	}
	w.cancelReady = s.afterFunc(d, func() { s.inbox.put(readyDue{token: token, seq: seq}) })
}

// replacementFailed reports whether w's process, which exited or could not
// start before it was ready, was a rolling change's replacement that the
// configuration still wants. One whose definition a later reload changed
// again is not: that change supersedes the rollout, and the slot is
// restarted as after any other failure, on the current definition.
func (s *Supervisor) replacementFailed(w *worker) bool {
	if w.prevSvc == nil {
		return false
	}
	if w.stale {
		w.prevSvc = nil
		return false
	}
	return true
}

// onReady records that w's process is ready, and moves its service's
// rolling change on.
func (s *Supervisor) onReady(w *worker) {
	s.log.Debug("worker ready", s.fields(w)...)
	w.ready = true
	w.cancelReady = nil
	s.changed = true
	if w.awaited {
		w.awaited = false
		s.checkReady()
	}
	s.armWatchdog(w)
	if w.prevSvc != nil {
		w.prevSvc = nil
		s.log.Info("replacement worker ready", s.fields(w)...)
	}
	if w.recycling == recycleReplacing {
		s.log.Info("recycled worker's replacement ready", s.fields(w)...)
		s.endRecycle(w)
	}
	s.replaceNext(w.key.service)
}

// halt stops the rolling change of w's service: w's new process exited (or
// could not start) before it was ready, for reason. See the notes above.
// The slot starts again at once, on the previous definition.
func (s *Supervisor) halt(w *worker, reason error) {
	s.revert(w, reason)
	w.failures = 0
	s.start(w)
}

// revert puts w's service back on the definition its slot ran before the
// rolling change that w's process was part of, and records the reload as
// failed for reason.
func (s *Supervisor) revert(w *worker, reason error) {
	service := w.key.service
	prev := w.prevSvc
	s.log.Error("rollout halted: the service goes back to its previous definition",
		s.fields(w, zap.String("reason", reason.Error()))...)
	s.cfg = withDefinition(s.cfg, service, prev)
	s.received = withDefinition(s.received, service, prev)
	for _, other := range s.workers {
		if other.key.service == service {
			other.prevSvc = nil
			other.stale = false
			if other.state == stateBackoff {
				other.svc = s.cfg.Service(service)
			}
		}
	}
	// The reload's result is recorded, and its waiters answered, once: a
	// second halt from the same reload (another service's rollout) is only
	// logged.
	if s.rollout != nil {
		if !s.rollout.restart {
			s.recordReloadResult(s.rollout.source, reason, true)
		}
		s.settle(haltedError(reason))
	}
}

// rolloutProgressed records the result of the reload whose rolling changes
// were under way, once none is left.
func (s *Supervisor) rolloutProgressed() {
	if s.rollout == nil {
		return
	}
	for _, w := range s.workers {
		if w.stale || w.prevSvc != nil {
			return
		}
	}
	if s.rollout.restart {
		s.settle(nil)
		s.log.Info("restart complete: every worker asked for runs a new process")
		return
	}
	s.recordReload(s.rollout.source, nil)
	s.settle(nil)
	s.log.Info("reload complete: every worker runs the new configuration")
}

// withDefinition returns a copy of cfg whose service named service is
// prev, the definition before a rolling change (what its processes run,
// how they say they are ready, their watchdog), but for what applies
// without a restart, kept from cfg: the worker count, the restart policy,
// the stop timeout, replace, reload_signal, depends_on, on_exit,
// recycle and schedule. cfg is returned as is if it has no such service.
func withDefinition(cfg *config.Config, service string, prev *config.Service) *config.Config {
	i := slices.IndexFunc(cfg.Services, func(svc *config.Service) bool { return svc.Name == service })
	if i < 0 || prev == nil {
		return cfg
	}
	c := *cfg
	c.Services = slices.Clone(cfg.Services)
	cur := cfg.Services[i]
	reverted := *prev
	reverted.Workers, reverted.Restart, reverted.StopTimeout, reverted.Replace, reverted.ReloadSignal, reverted.Pos =
		cur.Workers, cur.Restart, cur.StopTimeout, cur.Replace, cur.ReloadSignal, cur.Pos
	reverted.DependsOn, reverted.OnExit, reverted.Recycle, reverted.Schedule = cur.DependsOn, cur.OnExit, cur.Recycle, cur.Schedule
	c.Services[i] = &reverted
	return &c
}
