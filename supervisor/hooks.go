package supervisor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/gotyledon/gotyledon/config"
)

// Hooks are a program's callbacks on the manager's life, as cotyledon's
// register_hooks. They run in the manager process, one at a time and in the
// order of the events, on a goroutine of their own: a slow hook delays the
// hooks after it, never supervision. Any may be nil.
//
// A hook that runs a program must do it with the Supervisor's RunCommand,
// not os/exec: the manager reaps every child of its process, and os/exec's
// Wait would find its child gone ("waitid: no child processes").
type Hooks struct {
	// OnReload runs after a reload of the configuration (SIGHUP, an edit
	// of the file, `gotyledon reload`, Reload) has been applied. It may call
	// the Supervisor's Reconfigure, as the seed's cotyledon program grows
	// its printers on reload; it must not call Reload (see Reload).
	OnReload func(s *Supervisor)
	// OnNewWorker runs when a worker process has started.
	OnNewWorker func(w WorkerEvent)
	// OnDeadWorker runs when a worker process has exited, for any reason;
	// w.Status says how, w.Stopped whether the manager stopped it. Its
	// result is what the manager does next: KeepRunning, or StopManager
	// (as `on_exit: stop_manager`, cotyledon's use of on_dead_worker for
	// an essential worker).
	OnDeadWorker func(w WorkerEvent) DeadWorkerAction
	// OnTerminate runs once, when a shutdown begins.
	OnTerminate func()
}

// WorkerEvent describes a worker process to a hook.
type WorkerEvent struct {
	Service string
	ID      int
	PID     int
	// Status is how an exited worker ended ("exit code 1", "killed by
	// SIGKILL"); empty for a new worker. ExitCode is its exit code, or -1
	// when a signal ended it; Signal is that signal, or 0.
	Status   string
	ExitCode int
	Signal   syscall.Signal
	// Stopped: the manager asked the process to stop (a shutdown, a
	// rescale, a replacement, its watchdog); false for an exit of its
	// own.
	Stopped bool
	// Supervisor is the one that runs the worker, for a hook to call its
	// Reconfigure, RunCommand or Shutdown.
	Supervisor *Supervisor
}

// ErrNoSuchService is wrapped by Reconfigure's error for a service the
// running configuration does not have.
var ErrNoSuchService = errors.New("no such service")

// ErrStopped is wrapped by Reconfigure's error when the supervisor is
// shutting down or has stopped.
var ErrStopped = errors.New("supervisor stopping or stopped")

// reconfigureRequested: set a service's worker count without a file.
type reconfigureRequested struct {
	service string
	workers int
	reply   chan<- error // buffered: the loop never waits on it
}

func (reconfigureRequested) isEvent() {}

// Reconfigure sets service's worker count to workers without editing the
// configuration file, as cotyledon's reconfigure: missing ids start, surplus
// ones stop gracefully, highest first. The change lasts until the next
// reload of the file, which applies the file's count again (the file wins).
//
// It blocks until the loop has applied the change (not until the workers
// have started or stopped), ctx ends, or the supervisor stops. It is safe
// from any goroutine and from a hook; asked before Run, it is applied
// before the first workers start; asked once the loop has ended (the last
// worker of a shutdown is gone), it returns an error wrapping ErrStopped at
// once.
func (s *Supervisor) Reconfigure(ctx context.Context, service string, workers int) error {
	if workers < 0 || workers > config.MaxWorkers {
		return fmt.Errorf("reconfigure %s: %d workers: want 0 to %d", service, workers, config.MaxWorkers)
	}
	reply := make(chan error, 1)
	if !s.inbox.put(reconfigureRequested{service: service, workers: workers, reply: reply}) {
		return fmt.Errorf("reconfigure %s: %w", service, ErrStopped)
	}
	select {
	case err := <-reply:
		return err
	case <-s.loopEnded:
		return fmt.Errorf("reconfigure %s: %w", service, ErrStopped)
	case <-ctx.Done():
		return fmt.Errorf("reconfigure %s: %w", service, ctx.Err())
	}
}

func (s *Supervisor) onReconfigure(r reconfigureRequested) {
	if s.stopping {
		r.reply <- fmt.Errorf("reconfigure %s: %w", r.service, ErrStopped)
		return
	}
	if s.cfg.Service(r.service) == nil {
		r.reply <- fmt.Errorf("reconfigure %s: %w", r.service, ErrNoSuchService)
		return
	}
	s.log.Info("reconfigure", zap.String("service", r.service), zap.Int("workers", r.workers))
	s.overrides[r.service] = r.workers
	s.apply(withOverrides(s.received, s.overrides), false)
	r.reply <- nil
}

// withOverrides returns cfg, or a copy of it in which each service of
// counts has that many workers.
func withOverrides(cfg *config.Config, counts map[string]int) *config.Config {
	if len(counts) == 0 {
		return cfg
	}
	c := *cfg
	c.Services = slices.Clone(cfg.Services)
	for i, svc := range c.Services {
		if n, ok := counts[svc.Name]; ok {
			changed := *svc
			changed.Workers = n
			c.Services[i] = &changed
		}
	}
	return &c
}

// hook queues f for the hook goroutine.
func (s *Supervisor) hook(f func()) {
	s.hooksInbox.put(f)
}

// runHooks runs queued hooks in order until quit is closed, then runs what
// is still queued and closes done. A panicking hook is logged and the next
// one runs: a program's bug in a hook must not take the manager down.
func (s *Supervisor) runHooks(quit <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	var batch []func()
	for {
		select {
		case <-s.hooksInbox.wake:
			batch = s.hooksInbox.take(batch)
			for _, f := range batch {
				s.callHook(f)
			}
		case <-quit:
			for _, f := range s.hooksInbox.take(batch) {
				s.callHook(f)
			}
			return
		}
	}
}

func (s *Supervisor) callHook(f func()) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("a hook panicked", zap.Any("panic", r))
		}
	}()
	f()
}

// waitHooks waits, up to limit, for the hooks still queued to run.
func (s *Supervisor) waitHooks(done <-chan struct{}, limit time.Duration) {
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		s.log.Warn("hooks still running at exit; not waiting for them", zap.Duration("waited", limit))
	}
}
