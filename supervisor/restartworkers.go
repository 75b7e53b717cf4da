package supervisor

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"
)

// Restarting workers on purpose: `gotyledon restart SERVICE[/ID]`.
//
// A restart is a rolling change whose definition did not change: the
// workers asked for are marked outdated, and replaced as a reload's
// rollout replaces them (rollout.go): one at a time, the next once the
// new process before it is ready (all at once with replace: all); a new
// process that fails before it is ready halts it. It settles as a reload
// does, and joins a rollout already under way (it then settles with it).
// It is not a reload: it is not counted among them, nor recorded as the
// last one.

// ErrNoSuchWorker is wrapped by Restart's error for a worker id its
// service does not have.
var ErrNoSuchWorker = errors.New("no such worker")

// restartRequested: replace service's workers (only worker id, if id >=
// 0); answer reply once marked, settled once done.
type restartRequested struct {
	service string
	id      int
	reply   chan<- error // buffered
	settled chan<- error // buffered
}

func (restartRequested) isEvent() {}

// Restart replaces the running workers of service (only worker id if id
// >= 0) with new processes of its current definition, as a rolling change
// (see above). It returns, once the workers are marked, a channel that
// receives the outcome when the change has settled, as ReloadSettled's
// does. The error wraps ErrNoSuchService, ErrNoSuchWorker, or ErrStopped
// (also at once once the loop has ended); ctx bounds the wait for the
// loop. Safe from any goroutine.
func (s *Supervisor) Restart(ctx context.Context, service string, id int) (<-chan error, error) {
	reply, settled := make(chan error, 1), make(chan error, 1)
	ev := restartRequested{service: service, id: id, reply: reply, settled: settled}
	return s.askSettled(ctx, "restart "+service, ev, reply, settled)
}

func (s *Supervisor) onRestart(r restartRequested) {
	svc := s.cfg.Service(r.service)
	switch {
	case s.stopping:
		r.reply <- fmt.Errorf("restart %s: %w", r.service, ErrStopped)
		return
	case svc == nil:
		r.reply <- fmt.Errorf("restart %s: %w", r.service, ErrNoSuchService)
		return
	case r.id >= svc.Workers:
		r.reply <- fmt.Errorf("restart %s/%d: %w (it has %d)", r.service, r.id, ErrNoSuchWorker, svc.Workers)
		return
	}
	marked := 0
	for _, w := range s.workers {
		if w.key.service != r.service || r.id >= 0 && w.key.id != r.id {
			continue
		}
		switch {
		case w.state == stateCompleted || w.state == stateScheduled:
			// A one-shot asked for again runs again, a scheduled one
			// outside its schedule: nothing to replace.
			s.start(w)
			marked++
		case w.state == stateRunning && w.prevSvc == nil:
			w.stale = true
			marked++
		}
	}
	s.log.Info("restarting workers on request", zap.String("service", r.service), zap.Int("worker", r.id), zap.Int("workers", marked))
	if s.rollout == nil {
		s.rollout = &rollout{restart: true}
	}
	s.rollout.waiters = append(s.rollout.waiters, r.settled)
	r.reply <- nil
	s.replaceNext(r.service)
}
