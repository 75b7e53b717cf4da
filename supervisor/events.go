package supervisor

import (
	"time"

	"github.com/gotyledon/gotyledon/config"

	"golang.org/x/sys/unix"
)

// event is a message to the supervisor loop. Every change of worker state
// arrives as one; the loop is the only goroutine that reads or writes the
// worker table.
type event interface{ isEvent() }

// workerStarted: the process table forked and exec'd token's process.
type workerStarted struct {
	token  uint64
	pid    int
	at     time.Time
	cgroup string // its own cgroup; "" without one
}

// startFailed: token's process could not be started (no such program,
// permission denied, bad working directory...).
type startFailed struct {
	token uint64
	err   error
	at    time.Time
}

// workerExited: token's process was reaped with status (at is when), and
// its output has been logged to the end.
type workerExited struct {
	token  uint64
	pid    int
	status unix.WaitStatus
	at     time.Time
}

// stopSignalSent: the stop signal has gone out to token's process group;
// its stop timeout starts now.
type stopSignalSent struct {
	token uint64
	at    time.Time
}

// restartDue: a worker's backoff delay is over. seq tells a stale timer
// (one the loop has since cancelled or replaced) from the current one.
type restartDue struct {
	key workerKey
	seq uint64
}

// killDue: a stopping process's stop timeout is over.
type killDue struct{ token uint64 }

// readyDue: token's process has run its service's min_uptime. seq tells
// the current readiness timer from one the loop has since replaced.
type readyDue struct{ token, seq uint64 }

// reloadRequested: apply cfg, read for source, in place of the running
// configuration; then answer on reply, if any (buffered), and on settled,
// if any (buffered), once the reload has settled (ReloadSettled).
type reloadRequested struct {
	cfg     *config.Config
	source  ReloadSource
	reply   chan<- error
	settled chan<- error
}

// shutdownRequested: stop every worker and return from Run. fast skips the
// polite stop signal and kills at once.
type shutdownRequested struct{ fast bool }

func (workerStarted) isEvent()     {}
func (startFailed) isEvent()       {}
func (workerExited) isEvent()      {}
func (stopSignalSent) isEvent()    {}
func (restartDue) isEvent()        {}
func (killDue) isEvent()           {}
func (readyDue) isEvent()          {}
func (shutdownRequested) isEvent() {}
func (reloadRequested) isEvent()   {}

// workerKey names a worker slot: a service's worker id. The slot outlives
// the processes that fill it, which is how a restarted worker keeps its id
// and its restart history.
type workerKey struct {
	service string
	id      int
}

// workerState is where a worker slot is in its life.
type workerState int

const (
	// stateStarting: a spawn was requested; no pid yet.
	stateStarting workerState = iota
	// stateRunning: the process is up.
	stateRunning
	// stateStopping: the stop signal was sent; SIGKILL follows at the
	// stop timeout if the process is still there.
	stateStopping
	// stateBackoff: the process exited soon after its start and the slot
	// waits out its restart delay with no process.
	stateBackoff
	// stateCompleted: the process exited and its service's restart policy
	// does not restart it (a one-shot task); the slot stays, with no
	// process, until a reload changes its definition, a restart asks for
	// it, or the service goes.
	stateCompleted
	// stateWaiting: the slot has not started: its service waits for its
	// dependencies to meet their conditions (depends.go).
	stateWaiting
	// stateScheduled: the slot, of a scheduled service, has not run since
	// the manager started (or since it was added): it waits for the
	// schedule's next time (schedule.go).
	stateScheduled
)

var stateNames = [...]string{"starting", "running", "stopping", "backoff", "completed", "waiting", "scheduled"}

func (s workerState) String() string { return stateNames[s] }
