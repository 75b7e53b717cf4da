package supervisor

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/gotyledon/gotyledon/config"
)

// Status is a snapshot of the supervisor, taken by its loop at one instant:
// every figure in it is consistent with the others.
type Status struct {
	// Config is the file the running configuration came from.
	Config string
	// StartedAt is when the first workers were started; zero before.
	StartedAt time.Time
	// Started: every worker's first start has been answered (started or
	// failed). Ready: every worker of the first start is ready, or its
	// service's ready_timeout has passed (see Supervisor.Ready); systemd
	// is told READY=1 then. Stopping: a shutdown is under way.
	Started, Ready, Stopping bool
	// Rolling says what rolling change is under way, one worker at a
	// time: RollingReload (a reload's), RollingRestart (Restart's), or
	// RollingNone.
	Rolling Rolling
	// Services in the running configuration's order, then services a
	// reload removed whose workers are still stopping.
	Services []ServiceStatus
	// LastReload is the result of the newest reload; nil before the first.
	LastReload *ReloadResult
	// ReloadsOK and ReloadsFailed count reloads since the manager started.
	ReloadsOK, ReloadsFailed uint64
}

// ServiceStatus is one service in a Status.
type ServiceStatus struct {
	Name string
	// Desired is how many workers the manager keeps running now. It
	// differs from Configured, the file's count, after a Reconfigure and
	// until the next reload of the file (which wins).
	Desired, Configured int
	// Running counts the workers whose process is up and not stopping;
	// Ready those of them that are ready; Backoff those waiting out a
	// restart delay; Completed those whose process exited and that their
	// restart policy does not restart (one-shot tasks); Waiting those
	// not started because the service waits for its dependencies.
	Running, Ready, Backoff, Completed, Waiting int
	// WaitingFor are the dependencies not met yet, while Waiting is not 0.
	WaitingFor []DependencyWait
	// Schedule is the service's schedule, nil if it has none; NextRunAt
	// its next time (zero if none comes).
	Schedule  *config.Schedule
	NextRunAt time.Time
	// Counters since the manager started, kept across reloads.
	Counters ServiceCounters
	// Workers by id, including surplus ones still stopping.
	Workers []WorkerStatus
}

// ServiceCounters are a service's totals since the manager started.
type ServiceCounters struct {
	// Restarts counts processes started to replace one that exited on its
	// own (not those started for a reload or a rescale).
	Restarts uint64
	// Exits counts processes that ended, by ExitReason.
	Exits map[ExitReason]uint64
	// WatchdogAborts counts processes aborted for missing their watchdog.
	WatchdogAborts uint64
	// ScheduledRuns counts the runs a schedule started; ScheduleSkips
	// the times it skipped (a run still going, dependencies not met).
	ScheduledRuns, ScheduleSkips uint64
	// Recycles counts workers recycled (drained, stopped and replaced),
	// by the limit they crossed.
	Recycles map[RecycleReason]uint64
}

// ExitReason says why a worker's process ended, for counting.
type ExitReason string

const (
	// ExitStopped: it ended after the manager asked it to stop (a
	// shutdown, a rescale, a replacement), however it ended.
	ExitStopped ExitReason = "stopped"
	// ExitClean: it exited with code 0 on its own.
	ExitClean ExitReason = "clean"
	// ExitError: it exited with a non-zero code on its own.
	ExitError ExitReason = "error"
	// ExitSignal: a signal the manager did not send ended it.
	ExitSignal ExitReason = "signal"
	// ExitStartFailed: it could not be started at all (exec failed).
	ExitStartFailed ExitReason = "start_failed"
)

// ExitReasons lists every ExitReason, for those who report all of them.
var ExitReasons = []ExitReason{ExitStopped, ExitClean, ExitError, ExitSignal, ExitStartFailed}

// WorkerStatus is one worker slot in a ServiceStatus.
type WorkerStatus struct {
	ID int
	// State is "starting", "running", "draining" (running, and being
	// recycled: it gets no new item), "stopping", "backoff", "completed",
	// "waiting" (for the service's dependencies) or "scheduled" (not run
	// yet: it waits for its schedule's next time).
	State string
	// PID of the current process; 0 when there is none (backoff, or a
	// start not yet answered).
	PID int
	// StartedAt is when the current process started; zero without one.
	StartedAt time.Time
	// Restarts counts the restarts of this slot since its first start,
	// including one that waits out its backoff delay.
	Restarts int
	// Failures counts quick exits in a row (below min_uptime); it sets
	// the backoff delay and resets once a process stays up.
	Failures int
	// LastExit says how the slot's previous process ended ("exit code 1",
	// "killed by SIGKILL"), and LastExitAt when; empty before any exit.
	LastExit   string
	LastExitAt time.Time
	// RetryAt is when a slot in backoff starts again.
	RetryAt time.Time
	// Outdated: the process runs a definition a reload changed, and waits
	// its turn to be replaced.
	Outdated bool
	// Ready: the process is ready: it has run its service's min_uptime
	// (ready: uptime) or sent READY=1 (ready: notify). A rolling
	// replacement waits for it before it replaces the next worker.
	Ready bool
	// StatusText is the last STATUS= the process sent (ready: notify).
	StatusText string
	// Usage is what the process and everything it forked use, read from
	// its own cgroup (see cgroup.go); for a worker without one, what the
	// process alone uses, read from /proc (Usage.ProcessOnly); nil
	// without a process, or once it is gone.
	Usage *WorkerUsage

	cgroup string // where Usage is read from
}

// WorkerUsage is a worker process's resource use, its descendants'
// included.
type WorkerUsage struct {
	// CPU is the CPU time (user and system) used since it started.
	CPU time.Duration
	// Memory is its memory in bytes: the cgroup's memory.current where the
	// memory controller is enabled, else its processes' resident sets.
	Memory uint64
	// ProcessOnly: the worker has no cgroup, and the figures are of its
	// process alone (what it forked is not counted), from /proc/PID/stat
	// and statm.
	ProcessOnly bool
}

// Rolling is the kind of rolling change under way.
type Rolling int

const (
	// RollingNone: no rolling change is under way.
	RollingNone Rolling = iota
	// RollingReload: a reload replaces the workers whose definition it
	// changed.
	RollingReload
	// RollingRestart: Restart replaces workers.
	RollingRestart
)

// String is how the status document names it: "", "reload", "restart".
func (r Rolling) String() string {
	switch r {
	case RollingReload:
		return "reload"
	case RollingRestart:
		return "restart"
	}
	return ""
}

// ReloadResult is what became of one reload.
type ReloadResult struct {
	At     time.Time
	Source ReloadSource
	// Error is why the reload changed nothing, or why its rolling change
	// halted; empty when it was applied.
	Error string
	// Halted: the reload was applied, and its rolling change halted (Error
	// says why): the service went back to its previous definition.
	Halted bool
}

// ReloadSource says what asked for a reload.
type ReloadSource int

const (
	// ReloadByProgram: the program that embeds the supervisor called
	// Reload itself.
	ReloadByProgram ReloadSource = iota
	// ReloadBySignal: SIGHUP.
	ReloadBySignal
	// ReloadByFile: the configuration file's watch saw an edit.
	ReloadByFile
	// ReloadByControl: `gotyledon reload`, on the control socket.
	ReloadByControl
)

// String is how logs and the status document name the source: "SIGHUP",
// "file", "control", or "" for the program.
func (r ReloadSource) String() string {
	switch r {
	case ReloadBySignal:
		return "SIGHUP"
	case ReloadByFile:
		return "file"
	case ReloadByControl:
		return "control"
	}
	return ""
}

// statusRequested: answer with a Status.
type statusRequested struct{ reply chan<- Status } // buffered

// reloadRefused: a reload could not be applied; record why.
type reloadRefused struct {
	source ReloadSource
	err    error
}

func (statusRequested) isEvent() {}
func (reloadRefused) isEvent()   {}

// Status returns a snapshot of the supervisor. It blocks until the loop
// answers, ctx ends or the loop ends (the last worker of a shutdown is
// gone: then, and at once for a Status asked later, the error wraps
// ErrStopped). The loop answers between two events, so a Status that comes
// back also shows the loop is not stuck: the systemd watchdog relies on it.
// Safe from any goroutine; asked before Run, it is answered once Run starts.
func (s *Supervisor) Status(ctx context.Context) (Status, error) {
	reply := make(chan Status, 1)
	if !s.inbox.put(statusRequested{reply: reply}) {
		return Status{}, fmt.Errorf("status: %w", ErrStopped)
	}
	select {
	case st := <-reply:
		st.readUsage() // here, not in the loop: file reads per worker
		return st, nil
	case <-s.loopEnded:
		return Status{}, fmt.Errorf("status: %w", ErrStopped)
	case <-ctx.Done():
		return Status{}, fmt.Errorf("status: %w", ctx.Err())
	}
}

// readUsage fills in each worker's Usage: from its cgroup, else from
// /proc for its process alone.
func (st *Status) readUsage() {
	for i := range st.Services {
		for j := range st.Services[i].Workers {
			w := &st.Services[i].Workers[j]
			switch {
			case w.cgroup != "":
				if u, ok := readCgroupStats(w.cgroup); ok {
					w.Usage = &WorkerUsage{CPU: u.CPU, Memory: u.Memory}
				}
			case w.PID != 0:
				if u, ok := readProcessStats(w.PID); ok {
					w.Usage = &u
				}
			}
		}
	}
}

// probeRequested: answer reply once the process table has answered too
// (Probe).
type probeRequested struct{ reply chan<- struct{} } // buffered

// procProbe: the process table answers reply (buffered).
type procProbe struct{ reply chan<- struct{} }

func (probeRequested) isEvent() {}
func (procProbe) isProcMsg()    {}

// Probe returns nil once both the loop and the process table (the thread
// that forks and reaps) have answered, each between two of its messages:
// neither is stuck. It fails if ctx ends first, or, wrapping ErrStopped,
// if the loop has ended. The systemd watchdog is pinged only after a
// Probe returns. Safe from any goroutine.
func (s *Supervisor) Probe(ctx context.Context) error {
	reply := make(chan struct{}, 1)
	if !s.inbox.put(probeRequested{reply: reply}) {
		return fmt.Errorf("probe: %w", ErrStopped)
	}
	select {
	case <-reply:
		return nil
	case <-s.loopEnded:
		return fmt.Errorf("probe: %w", ErrStopped)
	case <-ctx.Done():
		return fmt.Errorf("probe: the loop or the process table did not answer: %w", ctx.Err())
	}
}

// ReloadRefused records that a reload for source changed nothing, and
// why (the file did not load, or the broker refused its queues), for
// Status and the reload counters: the manager's reload path calls it where
// it would have called Reload. It does not block and is safe from any
// goroutine.
func (s *Supervisor) ReloadRefused(source ReloadSource, err error) {
	s.inbox.put(reloadRefused{source: source, err: err})
}

// Done returns a channel closed when Run has returned.
func (s *Supervisor) Done() <-chan struct{} { return s.finished }

// Stopped returns a channel closed once a shutdown has left no process
// and the hooks' last calls have returned (or shutdown_timeout has passed
// waiting for them): every worker has exited and been reaped, and so has
// whatever they left behind, but for a process that survived SIGKILL
// (logged), and the workers' cgroups are removed (but for one holding such
// a process). Calls made from then on
// fail with ErrStopped; Run still ends its process table and releases
// what it holds (the cgroup subtree that held the workers' cgroups among
// it) before it returns, which a caller may overlap with
// stopping what it runs beside the supervisor (a control socket, a
// broker). A hook must not wait for it. Never closed if Run fails to
// start.
func (s *Supervisor) Stopped() <-chan struct{} { return s.stopped }

// serviceCounters are the loop's running totals of one service; they
// outlive reloads, and a removed service's too, as counters must.
func (s *Supervisor) counters(service string) *ServiceCounters {
	c := s.totals[service]
	if c == nil {
		c = &ServiceCounters{Exits: make(map[ExitReason]uint64), Recycles: make(map[RecycleReason]uint64)}
		s.totals[service] = c
	}
	return c
}

func (s *Supervisor) recordReload(source ReloadSource, err error) {
	s.recordReloadResult(source, err, false)
}

// recordReloadResult records a reload's result; halted: it was applied,
// and its rolling change halted for err.
func (s *Supervisor) recordReloadResult(source ReloadSource, err error, halted bool) {
	r := &ReloadResult{At: s.now(), Source: source, Halted: halted}
	if err != nil {
		r.Error = err.Error()
		s.reloadsFailed++
	} else {
		s.reloadsOK++
	}
	s.lastReload = r
}

// rolling says what rolling change is under way.
func (s *Supervisor) rolling() Rolling {
	switch {
	case s.rollout == nil:
		return RollingNone
	case s.rollout.restart:
		return RollingRestart
	}
	return RollingReload
}

// status builds the snapshot Status returns. Only the loop calls it.
func (s *Supervisor) status() Status {
	st := Status{
		Config:        s.cfg.File,
		StartedAt:     s.startedAt,
		Started:       s.startedNoted,
		Ready:         s.readyNoted,
		Stopping:      s.stopping,
		Rolling:       s.rolling(),
		ReloadsOK:     s.reloadsOK,
		ReloadsFailed: s.reloadsFailed,
	}
	if s.lastReload != nil {
		r := *s.lastReload
		st.LastReload = &r
	}
	index := make(map[string]int)
	add := func(name string, desired, configured int) {
		index[name] = len(st.Services)
		c := s.counters(name)
		st.Services = append(st.Services, ServiceStatus{
			Name: name, Desired: desired, Configured: configured,
			Counters: ServiceCounters{Restarts: c.Restarts, Exits: cloneExits(c.Exits), WatchdogAborts: c.WatchdogAborts, Recycles: cloneRecycles(c.Recycles),
				ScheduledRuns: c.ScheduledRuns, ScheduleSkips: c.ScheduleSkips},
		})
	}
	for _, svc := range s.cfg.Services {
		configured := svc.Workers
		if f := s.received.Service(svc.Name); f != nil {
			configured = f.Workers
		}
		add(svc.Name, svc.Workers, configured)
	}
	for _, w := range s.workers {
		i, ok := index[w.key.service]
		if !ok {
			add(w.key.service, 0, 0) // removed by a reload, still stopping
			i = index[w.key.service]
		}
		sv := &st.Services[i]
		switch w.state {
		case stateRunning:
			sv.Running++
			if w.ready {
				sv.Ready++
			}
		case stateBackoff:
			sv.Backoff++
		case stateCompleted:
			sv.Completed++
		case stateWaiting:
			sv.Waiting++
		}
		ws := WorkerStatus{
			ID: w.key.id, State: w.stateName(), PID: w.pid, Restarts: w.restarts, Failures: w.failures,
			LastExit: w.lastExit, LastExitAt: w.lastExitAt, Outdated: w.stale, Ready: w.ready, StatusText: w.statusText,
		}
		if w.pid != 0 {
			ws.StartedAt = w.startedAt
			ws.cgroup = w.cgroup
		}
		if w.state == stateBackoff {
			ws.RetryAt = w.retryAt
		}
		sv.Workers = append(sv.Workers, ws)
	}
	for i := range st.Services {
		sv := &st.Services[i]
		if svc := s.cfg.Service(sv.Name); svc != nil && sv.Waiting > 0 {
			sv.WaitingFor = s.waitsFor(svc)
		}
		if t := s.schedules[sv.Name]; t != nil {
			sv.Schedule, sv.NextRunAt = t.schedule, t.next
		}
		slices.SortFunc(st.Services[i].Workers, func(a, b WorkerStatus) int { return cmp.Compare(a.ID, b.ID) })
	}
	return st
}

func cloneRecycles(m map[RecycleReason]uint64) map[RecycleReason]uint64 {
	out := make(map[RecycleReason]uint64, len(RecycleReasons))
	for _, r := range RecycleReasons {
		out[r] = m[r]
	}
	return out
}

func cloneExits(m map[ExitReason]uint64) map[ExitReason]uint64 {
	out := make(map[ExitReason]uint64, len(ExitReasons))
	for _, r := range ExitReasons {
		out[r] = m[r]
	}
	return out
}
