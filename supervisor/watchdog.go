package supervisor

import (
	"syscall"

	"go.uber.org/zap"
)

// Per-worker watchdog, as systemd's WatchdogSec= for a service: a worker of
// a service with `watchdog: D` gets WATCHDOG_USEC (D in µs) and a notify
// socket, and once it is ready it must send WATCHDOG=1 at least every D.
// One that misses (hung, deadlocked, stopped by SIGSTOP) or sends
// WATCHDOG=trigger is aborted: SIGABRT to its process group as its stop
// signal (then SIGCONT, so a stopped one acts on it), SIGKILL after its
// stop_timeout, and it is started again once it has exited, as after a
// crash: a worker aborted before min_uptime again and again backs off.
// Each abort is logged and counted (ServiceCounters.WatchdogAborts).

// watchdogDue: token's watchdog ran out. seq tells the current timer from
// one a ping replaced.
type watchdogDue struct {
	token uint64
	seq   uint64
}

func (watchdogDue) isEvent() {}

// armWatchdog (re)starts w's watchdog timer, if its service has one.
func (s *Supervisor) armWatchdog(w *worker) {
	cancel(&w.cancelWatchdog)
	if w.svc.Watchdog <= 0 {
		return
	}
	w.watchdogSeq++
	token, seq := w.token, w.watchdogSeq
	w.cancelWatchdog = s.afterFunc(w.svc.Watchdog, func() { s.inbox.put(watchdogDue{token: token, seq: seq}) })
}

// onWatchdogPing handles WATCHDOG=1 (or =trigger) from w's process. Pings
// before the worker is ready are ignored: its watchdog starts then.
func (s *Supervisor) onWatchdogPing(w *worker, trigger bool) {
	if w.state != stateRunning || !w.ready || w.svc.Watchdog <= 0 {
		return
	}
	if trigger {
		s.onWatchdogMissed(w)
		return
	}
	s.armWatchdog(w)
}

// onWatchdogMissed aborts w's process.
func (s *Supervisor) onWatchdogMissed(w *worker) {
	w.cancelWatchdog = nil
	s.counters(w.key.service).WatchdogAborts++
	s.log.Error("worker missed its watchdog; aborting it", s.fields(w, zap.Duration("watchdog", w.svc.Watchdog))...)
	w.aborted = true
	s.stopWith(w, syscall.SIGABRT)
}
