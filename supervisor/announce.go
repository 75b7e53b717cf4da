package supervisor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"go.uber.org/zap"

	"github.com/gotyledon/gotyledon/config"
)

// What the supervisor announces to those who speak for the manager
// (systemd's notify socket, the control socket):
//
//   - Started: every worker's first start has been answered (started, or
//     failed and put in backoff). Reloads asked for during the first start
//     wait for it.
//   - Ready: every worker of the first start is ready (rollout.go), or its
//     service's ready_timeout, counted from the first start, has passed.
//     This is when systemd is told READY=1: a unit that comes up is one
//     whose workers can serve, not merely ones that were exec'd.
//   - A reload's settlement: its rolling changes are complete (each
//     replaced worker is ready) or one of them halted. `gotyledon reload`
//     and systemd's reload job wait for it.
//   - Changes: something a summary shows may have changed (a worker
//     started, became ready, sent a STATUS=, exited; a reload's result),
//     so that systemd's STATUS= follows the workers instead of a clock.

// ErrRolloutHalted is matched by the settlement of a reload whose rolling
// change halted (a *RolloutHaltedError): a new worker exited (or could not
// start) before it was ready, or was not ready within ready_timeout. Its
// service went back to its previous definition (see rollout.go).
var ErrRolloutHalted = errors.New("rollout halted")

// initialReadyDue: the ready_timeout of service's first start is over;
// the manager stops waiting for its workers to be ready.
type initialReadyDue struct{ service string }

func (initialReadyDue) isEvent() {}

// rollout is a reload whose rolling changes are under way, and those who
// wait for it to settle: its own waiters and those of the reloads it
// superseded, which settle with it.
type rollout struct {
	source  ReloadSource
	waiters []chan<- error
	// restart: no reload started it, only Restart (restartworkers.go):
	// nothing to record as a reload's result.
	restart bool
}

// Started returns a channel closed once every worker's first start has
// been answered (started, or failed and put in backoff). It is never
// closed if a shutdown comes first.
func (s *Supervisor) Started() <-chan struct{} { return s.started }

// Ready returns a channel closed once every worker of the first start is
// ready (it has run its service's min_uptime, or sent READY=1 with ready:
// notify), or its service's ready_timeout has passed since the first
// start: then Status shows which workers are not ready. Slots a reload
// removes are not waited for once they are gone, nor are those it adds.
// It is never closed if a shutdown comes first.
func (s *Supervisor) Ready() <-chan struct{} { return s.ready }

// Changes returns a channel that receives a value (it holds one at most)
// after the loop handled an event that may change a summary of Status:
// a worker started, became ready, sent a STATUS=, exited or stopped, a
// reload or a rescale, a shutdown. Pings from workers and status
// requests do not count. Read it, then take a Status: the one taken after
// the value was received shows the change.
func (s *Supervisor) Changes() <-chan struct{} { return s.changes }

// ReloadSettled applies cfg as Reload does and returns, once it is
// applied, a channel that receives the reload's outcome when it has
// settled: nil once every rolling change it started is complete (every
// replaced worker's new process is ready), an error wrapping
// ErrRolloutHalted (with the reason: "printer worker 0 exit code 1 before
// ready") if one halted, or one wrapping ErrStopped if a shutdown comes
// first. A reload that changes no process settles at once; one that a
// later reload supersedes settles with that one. New workers of a
// scale-up are not waited for. The channel receives exactly one value.
//
// The error is that of Reload: the reload was not applied, and there is
// no channel. Safe from any goroutine.
func (s *Supervisor) ReloadSettled(ctx context.Context, source ReloadSource, cfg *config.Config) (<-chan error, error) {
	reply, settled := make(chan error, 1), make(chan error, 1)
	ev := reloadRequested{cfg: cfg, source: source, reply: reply, settled: settled}
	return s.askSettled(ctx, "reload", ev, reply, settled)
}

// askSettled sends ev, which answers reply once applied and settled (if
// not nil) once done, and returns settled once reply says it was applied
// (what names the request in errors).
func (s *Supervisor) askSettled(ctx context.Context, what string, ev event, reply <-chan error, settled <-chan error) (<-chan error, error) {
	if !s.inbox.put(ev) {
		return nil, fmt.Errorf("%s: %w", what, ErrStopped)
	}
	select {
	case err := <-reply:
		if err != nil {
			return nil, err
		}
		return settled, nil
	case <-s.loopEnded:
		return nil, fmt.Errorf("%s: %w", what, ErrStopped)
	case <-ctx.Done():
		return nil, fmt.Errorf("%s: %w", what, ctx.Err())
	}
}

// settle answers everyone waiting for the rollout under way, and ends it.
func (s *Supervisor) settle(err error) {
	if s.rollout == nil {
		return
	}
	for _, c := range s.rollout.waiters {
		c <- err
	}
	s.rollout = nil
}

// RolloutHaltedError is the settlement of a reload whose rolling change
// halted. It matches ErrRolloutHalted (errors.Is).
type RolloutHaltedError struct {
	// Reason says which worker failed, and how: "printer worker 0 exit
	// code 1 before ready", "printer worker 2 not ready within 5s".
	Reason string
}

func (e *RolloutHaltedError) Error() string {
	return "rollout halted: " + e.Reason + "; the service is back on its previous definition"
}

// Is makes errors.Is(err, ErrRolloutHalted) hold.
func (e *RolloutHaltedError) Is(target error) bool { return target == ErrRolloutHalted }

// haltedError is the settlement of a reload whose rollout halted for
// reason.
func haltedError(reason error) error { return &RolloutHaltedError{Reason: reason.Error()} }

// awaitInitialReady arms, for each of services, of the first start, the
// timer after which the manager stops waiting for its workers to be
// ready.
func (s *Supervisor) awaitInitialReady(services []*config.Service) {
	for _, svc := range services {
		if svc.Workers == 0 || !s.released[svc.Name] {
			continue // a held service's timer starts at its release
		}
		service := svc.Name
		s.cancelInitialReady = append(s.cancelInitialReady,
			s.afterFunc(svc.ReadyTimeout, func() { s.inbox.put(initialReadyDue{service: service}) }))
	}
}

// onInitialReadyDue gives up waiting for the first start of service's
// workers that are not ready yet.
func (s *Supervisor) onInitialReadyDue(service string) {
	if s.readyNoted {
		return
	}
	var late []string
	for _, w := range s.workers {
		if w.key.service == service && w.awaited {
			w.awaited = false
			late = append(late, fmt.Sprintf("%s worker %d (%s)", service, w.key.id, w.state))
		}
	}
	if len(late) > 0 {
		s.gaveUp[service] = true
		slices.Sort(late)
		s.notReadyAtStart = append(s.notReadyAtStart, late...)
		svc := s.cfg.Service(service)
		var timeout zap.Field
		if svc != nil {
			timeout = zap.Duration("ready_timeout", svc.ReadyTimeout)
		} else {
			timeout = zap.Skip()
		}
		s.log.Warn("workers not ready within ready_timeout of the first start; the manager stops waiting for them",
			zap.String("service", service), timeout, zap.String("not_ready", strings.Join(late, ", ")))
	}
	s.checkReady()
}

// checkReady closes Ready once the first start is answered and no worker
// of it is still awaited.
func (s *Supervisor) checkReady() {
	if s.readyNoted || !s.startedNoted || s.stopping {
		return
	}
	for _, w := range s.workers {
		if w.awaited {
			return
		}
	}
	s.readyNoted = true
	for _, c := range s.cancelInitialReady {
		c()
	}
	s.cancelInitialReady = nil
	close(s.ready)
	took := zap.Duration("took", s.now().Sub(s.startedAt))
	if len(s.notReadyAtStart) > 0 {
		s.log.Warn("manager ready: not every worker was ready within its ready_timeout", took,
			zap.String("not_ready", strings.Join(s.notReadyAtStart, ", ")))
		return
	}
	s.log.Info("manager ready: every worker is ready", took)
}

// isChange reports whether ev may change what a summary of Status shows
// (see Changes).
func isChange(ev event) bool {
	switch ev := ev.(type) {
	case workerNotified:
		// A READY=1 marks the change itself (onReady); WATCHDOG=trigger
		// stops the worker; a STATUS= is shown for a worker not ready.
		// Pings alone change nothing.
		return ev.trigger || ev.status != nil
	case statusRequested, probeRequested, commandRequested, commandCancelRequested, recycleCandidatesRequested:
		return false
	}
	return true
}

// signalChange tells Changes' reader, if anything changed since it was
// last told.
func (s *Supervisor) signalChange() {
	if !s.changed {
		return
	}
	s.changed = false
	select {
	case s.changes <- struct{}{}:
	default: // a value waits already: the reader will see this change too
	}
}
