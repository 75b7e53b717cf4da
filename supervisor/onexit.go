package supervisor

import (
	"fmt"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/gotyledon/gotyledon/config"
)

// An essential service (on_exit: stop_manager, or an OnDeadWorker hook
// that answers StopManager) ends the manager when one of its workers
// exits on its own: the loop stops every service in order, as for a
// graceful shutdown, and Run returns a *ServiceExitError that carries the
// worker's exit code, for the program to exit with. Only the first such
// exit counts; exits during the shutdown it started, or any other, change
// nothing.

// ServiceExitError is Run's error when an essential service's exit
// stopped the manager: the program exits with Code (the manager's `run`
// does). It is returned even when the exit was clean (Code 0): the
// manager stopped because of it all the same. If the shutdown it caused
// also had to kill, Run's error wraps a *ShutdownKillError as well.
type ServiceExitError struct {
	// Service and ID name the worker whose exit stopped the manager.
	Service string
	ID      int
	// Status is how it ended ("exit code 3", "killed by SIGSEGV",
	// "failed to start: ...").
	Status string
	// Code is the exit code the manager exits with: the worker's exit
	// code, 128 plus the signal's number if a signal ended it (as shells
	// report it), or 127 if it could not be started.
	Code int
	// ByHook: an OnDeadWorker hook asked for it, rather than on_exit.
	ByHook bool
}

func (e *ServiceExitError) Error() string {
	by := "on_exit: stop_manager"
	if e.ByHook {
		by = "the OnDeadWorker hook"
	}
	return fmt.Sprintf("%s worker %d %s; %s stopped the manager (exit code %d)", e.Service, e.ID, e.Status, by, e.Code)
}

// DeadWorkerAction is what an OnDeadWorker hook asks of the manager.
type DeadWorkerAction int

const (
	// KeepRunning: nothing more; the worker's restart policy applies.
	KeepRunning DeadWorkerAction = iota
	// StopManager: stop every service in order and have Run return a
	// *ServiceExitError with the worker's exit code, as on_exit:
	// stop_manager does. The worker may have been restarted before the
	// hook ran: hooks run beside the loop; the shutdown stops it.
	StopManager
)

// stopManagerRequested: an OnDeadWorker hook answered StopManager.
type stopManagerRequested struct{ cause *ServiceExitError }

func (stopManagerRequested) isEvent() {}

// managerExitCode is the code a manager stopped by a worker that ended with
// status exits with.
func managerExitCode(status unix.WaitStatus) int {
	if status.Signaled() {
		return 128 + int(status.Signal())
	}
	return status.ExitStatus()
}

// startFailedCode is the exit code for a worker that could not be started,
// the shell's for a command it could not run.
const startFailedCode = 127

// stopsManager reports whether an exit of w's process on its own, clean
// or not, stops the manager: its service is essential, and the exit is
// one its restart policy restarts, or ends it (on-failure: a failure).
func (s *Supervisor) stopsManager(w *worker, clean bool) bool {
	svc := s.cfg.Service(w.key.service)
	if svc == nil || svc.OnExit != config.OnExitStopManager || s.stopping {
		return false
	}
	return !(clean && svc.Restart.Policy == config.RestartOnFailure)
}

// stopManager ends w's slot, whose process is gone, and stops the
// manager for cause.
func (s *Supervisor) stopManager(w *worker, cause *ServiceExitError, fields []zap.Field) {
	w.state = stateCompleted
	w.pid = 0
	s.log.Error("an essential service's worker exited; stopping the manager", append(fields,
		zap.String("on_exit", config.OnExitStopManager.String()), zap.Int("exit_code", cause.Code))...)
	s.onStopManager(cause)
}

// onStopManager records cause, if it is the first, and starts a graceful
// shutdown.
func (s *Supervisor) onStopManager(cause *ServiceExitError) {
	if s.stopping {
		return
	}
	s.exitCause = cause
	s.onShutdown(false)
}
