// Package supervisor is gotyledon's manager: it starts the workers of every
// configured service as child processes, restarts them when they exit, and
// stops them all on shutdown.
//
// One goroutine, the loop, owns all worker state. Everything that can change
// it (a process started or exited, a backoff or stop timer fired, a shutdown
// was asked for) reaches the loop as a message in its mailbox. The process
// table (procs.go) is the only code that forks, reaps or signals a process,
// from one locked OS thread. Nothing else holds worker state, so the worker
// table needs no locks.
//
// A Supervisor is one of the actors of the manager's run.Group (package
// supervisor/manager wires them): Run is its execute function, and the end
// of Run's context (or Shutdown) its interrupt. It does not own the
// configuration: it is handed one by New and each Reload, and keeps only
// the worker counts Reconfigure set until the next Reload.
package supervisor

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/gotyledon/gotyledon/config"
)

// Options are a Supervisor's collaborators. The zero value works.
type Options struct {
	// Logger receives the manager's events and every line workers write.
	// Default: no logging.
	Logger *zap.Logger
	// Executable is the program re-executed to run a Go service's worker.
	// Default "/proc/self/exe": the running binary, even if the file on disk
	// has been replaced since it started.
	Executable string
	// ProgramName starts a Go worker's argv[0] ("NAME: printer worker 3").
	// Default: the base name of os.Args[0].
	ProgramName string
	// Environ is the environment workers inherit (before the manager-only
	// variables are removed). Default os.Environ().
	Environ []string
	// Hooks are the program's callbacks on reloads, workers' starts and
	// exits, and shutdown.
	Hooks Hooks
	// WorkerEnv are "KEY=value" variables the manager sets in every worker,
	// over Environ (the queue socket's path, for one). A service's own env
	// cannot override them: the config refuses GOTYLEDON_ names.
	WorkerEnv []string
	// Queue is the queue broker, for recycle.max_jobs (the items a
	// worker acknowledged) and for draining a worker before it is
	// recycled. Default nil: no max_jobs is ever reached, and a recycled
	// worker is stopped at once.
	Queue QueueDrainer
	// ExitAfterRun says the process exits once Run returns: Run then
	// leaves SIGCHLD caught (see manager.Options.ExitAfterRun) rather
	// than give it back, and the cgroup sentinel, told to leave, to be
	// reaped by whoever adopts it. Default false.
	ExitAfterRun bool
}

// Supervisor runs the services of one configuration. Create it with New,
// call Run once; Shutdown may be called from any goroutine at any time.
type Supervisor struct {
	// cfg is what the loop runs now: received with its worker counts
	// overridden by Reconfigure's. Owned by the loop once Run starts.
	cfg     *config.Config
	log     *zap.Logger
	exe     string
	program string
	baseEnv []string
	now     func() time.Time
	// afterFunc runs f after d on its own goroutine; the returned function
	// cancels it. Injected so timer logic can be driven without sleeping.
	afterFunc func(d time.Duration, f func()) (cancel func() bool)
	rnd       func() float64

	inbox    *mailbox[event]
	ran      atomic.Bool   // set by the first Run
	finished chan struct{} // closed when Run returns
	// loopEnded is closed when the loop stops reading its inbox, which is
	// closed then too: a request made later is refused at once, not left
	// waiting for Run to return (which waits for the hooks, which may be
	// the ones asking).
	loopEnded chan struct{}
	// tableEnded is closed when the process table has stopped: no command
	// of RunCommand is answered after it.
	tableEnded chan struct{}
	// stopped is closed once the shutdown has left no process: Stopped.
	stopped     chan struct{}
	nextCommand atomic.Uint64 // RunCommand's ids
	outputGrace time.Duration
	hooks       Hooks
	hooksInbox  *mailbox[func()]

	// exitAfterRun: Options.ExitAfterRun.
	exitAfterRun bool

	// Below: owned by the loop goroutine (Run) alone.
	procs     *procTable
	workers   map[workerKey]*worker
	byToken   map[uint64]*worker // slots with a live or starting process
	nextToken uint64
	nextSeq   uint64
	stopping  bool // shutdown asked for: start nothing new
	// killedAtStop counts the workers the shutdown had to SIGKILL.
	killedAtStop int
	fast         bool // and kill rather than ask
	pendingUp    int  // initial starts not yet answered
	failedUp     int  // initial starts that failed
	startedUp    int  // initial starts that succeeded
	startedAt    time.Time
	// startedNoted: every initial start is answered (started is closed);
	// readyNoted: every worker of the first start is ready, or no longer
	// waited for (ready is closed). See announce.go.
	startedNoted, readyNoted bool
	started, ready           chan struct{}
	// cancelInitialReady cancels the first start's ready_timeout timers;
	// notReadyAtStart names the workers they gave up on.
	cancelInitialReady []func() bool
	notReadyAtStart    []string
	// changed: an event since the last signal on changes may have changed
	// a summary of Status (Changes).
	changed bool
	changes chan struct{}

	// received is the configuration as New or the last Reload handed it
	// over; overrides are the worker counts Reconfigure set since, by
	// service, which the next Reload clears (the file wins).
	received      *config.Config
	overrides     map[string]int
	totals        map[string]*ServiceCounters
	lastReload    *ReloadResult
	reloadsOK     uint64
	reloadsFailed uint64
	// rollout is the reload whose rolling replacements are under way;
	// its result is recorded, and its waiters answered, when they end
	// (rollout.go, announce.go).
	rollout *rollout
	// notifyDir holds the workers' notify sockets; made on first use.
	notifyDir string
	// exitCause is the essential service's exit that stopped the manager
	// (onexit.go); nil otherwise.
	exitCause *ServiceExitError
	// released holds the services whose dependencies were met, or that
	// have none: their slots start; a service not in it has its slots
	// wait (depends.go). waiting counts the slots in stateWaiting, so
	// that a configuration without dependencies pays nothing for them;
	// gaveUp holds the services whose first start's readiness is no
	// longer waited for.
	released map[string]bool
	waiting  int
	gaveUp   map[string]bool
	// slotsOf counts each service's slots; emptied says a service lost
	// its last one since a shutdown last looked, which may let what it
	// depends on stop (stopInOrder).
	slotsOf map[string]int
	emptied bool
	// queue is Options.Queue; recycleQueue holds the services with a
	// worker due for recycling that waits its turn (recycle.go).
	queue        QueueDrainer
	recycleQueue map[string]bool
	// schedules are the scheduled services' timers (schedule.go).
	schedules map[string]*scheduleTimer
}

// worker is one slot: a service's worker id, and the process filling it.
type worker struct {
	svc   *config.Service
	key   workerKey
	state workerState

	// The current process; token is 0 in stateBackoff.
	token     uint64
	pid       int
	startedAt time.Time

	// stale: the process runs a definition the configuration has since
	// changed; it is replaced, one slot of its service at a time.
	stale bool
	// initial: the slot's first start, from startAll, is not answered yet;
	// the manager has started once no slot is. awaited: the slot is of
	// the first start and not ready yet; the manager is ready once no slot
	// is (announce.go).
	initial, awaited bool

	// ready: the process is ready (rollout.go): it has run its service's
	// min_uptime, or sent READY=1 (notify.go). cancelReady cancels the
	// timer that makes it ready (min_uptime) or gives up on it
	// (ready_timeout).
	ready       bool
	cancelReady func() bool
	// readyEarly: READY=1 came before the loop heard of the process's start.
	readyEarly bool
	readySeq   uint64 // identifies the current readiness timer
	// notify is the process's notify socket (ready: notify); statusText
	// the last STATUS= it sent.
	notify     *notifySocket
	statusText string
	// watchdogSeq identifies the current watchdog timer (watchdog.go);
	// cancelWatchdog cancels it.
	watchdogSeq    uint64
	cancelWatchdog func() bool
	aborted        bool // stopped by its watchdog or ready_timeout: restarted as after a crash
	killedAtStop   bool // counted in Supervisor.killedAtStop

	// prevSvc is set while the slot is replaced for a rolling change, from
	// the stop of its old process until its new one is ready: the
	// definition the slot ran before, to go back to if the new process
	// exits before it is ready.
	prevSvc *config.Service

	failures      int    // quick exits in a row: sets the backoff delay
	restarts      int    // processes started after the first
	timerSeq      uint64 // identifies the pending restart timer
	cancelRestart func() bool
	cancelKill    func() bool
	retryAt       time.Time
	lastExit      string // how the previous process ended
	lastExitAt    time.Time
	cgroup        string // the current process's own cgroup; "" without one
	// recycling is where the slot is in its recycling, recycleReason and
	// recycleDetail why it is due; jitterShare (0 to 1) is the share of
	// its service's recycle jitter that lowers the current process's
	// limits; cancelDrain ends the wait for its drain (recycle.go).
	recycling     recyclePhase
	recycleReason RecycleReason
	recycleDetail string
	jitterShare   float64
	cancelDrain   func() bool
	// ran: the current or last process started (not a failed start);
	// succeeded: the slot completed with exit code 0. For its dependents
	// (depends.go).
	ran, succeeded bool
}

// New prepares a Supervisor for cfg, which must come from config.Load or
// config.Parse (it is not validated again).
func New(cfg *config.Config, opts Options) (*Supervisor, error) {
	if cfg == nil || len(cfg.Services) == 0 {
		return nil, errors.New("supervisor: a configuration with at least one service is required")
	}
	s := &Supervisor{
		cfg:          cfg,
		log:          opts.Logger,
		exe:          opts.Executable,
		program:      opts.ProgramName,
		now:          time.Now,
		afterFunc:    func(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop },
		rnd:          rand.Float64,
		inbox:        newMailbox[event](),
		finished:     make(chan struct{}),
		loopEnded:    make(chan struct{}),
		tableEnded:   make(chan struct{}),
		stopped:      make(chan struct{}),
		outputGrace:  defaultOutputGrace,
		hooks:        opts.Hooks,
		hooksInbox:   newMailbox[func()](),
		workers:      make(map[workerKey]*worker),
		byToken:      make(map[uint64]*worker),
		started:      make(chan struct{}),
		ready:        make(chan struct{}),
		changes:      make(chan struct{}, 1),
		received:     cfg,
		overrides:    make(map[string]int),
		totals:       make(map[string]*ServiceCounters),
		released:     make(map[string]bool),
		gaveUp:       make(map[string]bool),
		slotsOf:      make(map[string]int),
		recycleQueue: make(map[string]bool),
		schedules:    make(map[string]*scheduleTimer),
		queue:        opts.Queue,
	}
	s.exitAfterRun = opts.ExitAfterRun
	if s.log == nil {
		s.log = zap.NewNop()
	}
	if s.exe == "" {
		s.exe = "/proc/self/exe"
	}
	if s.program == "" {
		s.program = filepath.Base(os.Args[0])
	}
	environ := opts.Environ
	if environ == nil {
		environ = os.Environ()
	}
	s.baseEnv = workerBaseEnv(environ)
	for _, kv := range opts.WorkerEnv {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("supervisor: worker variable %q is not KEY=value", kv)
		}
		s.baseEnv = setEnv(s.baseEnv, k, v)
	}
	return s, nil
}

// Shutdown asks Run to stop every worker and return. A graceful shutdown
// sends each worker its service's stop signal and SIGKILL after its stop
// timeout; a fast one sends SIGKILL at once, and may follow a graceful one
// that is taking too long. It does not block, and is safe to call any number
// of times from any goroutine, before or during Run.
func (s *Supervisor) Shutdown(fast bool) {
	s.inbox.put(shutdownRequested{fast: fast})
}

// Reload applies cfg, which must come from package config (Load, Parse,
// a Declaration's Resolve), in place of the running configuration, for the
// reason source says (see onReload for what changes). It blocks until the
// loop has applied it: every start and stop it calls for has been asked of
// the process table, not waited for. Worker counts set by Reconfigure give
// way to cfg's. Reloads are applied in the order they are asked for; one
// asked for before Run is applied before the first workers start.
//
// It returns an error wrapping ErrStopped if the manager is shutting down
// or has stopped (the reload is then ignored), or ctx's error if ctx ends
// first (the reload is applied all the same). Safe from any goroutine.
//
// Reload is for a program that runs a Supervisor itself. Under a
// supervisor/manager Manager, the manager's reload path owns the
// configuration (it also hands the broker its queues): ask it for a reload
// (SIGHUP, or the control socket's), and do not call Reload from a hook;
// from OnReload it would run OnReload again, without end.
func (s *Supervisor) Reload(ctx context.Context, source ReloadSource, cfg *config.Config) error {
	reply := make(chan error, 1)
	_, err := s.askSettled(ctx, "reload", reloadRequested{cfg: cfg, source: source, reply: reply}, reply, nil)
	return err
}

// Run makes the manager process a child subreaper, starts every service's
// workers and supervises them until ctx ends or Shutdown is called. It then
// stops them all in parallel (gracefully when ctx ends) and returns nil
// once every one has been reaped, or an error if supervision could not
// start. Run may be called only once per Supervisor and, since it reaps
// every child of the process, by only one Supervisor per process; nothing
// else in the process may wait for children.
func (s *Supervisor) Run(ctx context.Context) error {
	if !s.ran.CompareAndSwap(false, true) {
		return errors.New("supervisor: Run called twice")
	}
	defer close(s.finished)
	var endOnce sync.Once
	endLoop := func() {
		endOnce.Do(func() {
			s.inbox.close()
			close(s.loopEnded)
		})
	}
	defer endLoop()
	// The end of ctx is a graceful Shutdown, asked for from a goroutine
	// that lives only as long as Run; a ctx that has ended already asks
	// now, so that nothing starts.
	if ctx.Err() != nil {
		s.Shutdown(false)
	}
	stopWatch := context.AfterFunc(ctx, func() { s.Shutdown(false) })
	defer stopWatch()
	hooksQuit, hooksDone := make(chan struct{}), make(chan struct{})
	go s.runHooks(hooksQuit, hooksDone)
	recyclerQuit := make(chan struct{})
	go s.runRecycler(recyclerQuit)
	defer close(recyclerQuit)
	var hooksOnce sync.Once
	endHooks := func() {
		hooksOnce.Do(func() {
			close(hooksQuit)
			s.waitHooks(hooksDone, s.cfg.ShutdownTimeout)
		})
	}
	defer endHooks()
	// Orphans of our workers are reparented to us, not to PID 1, so that
	// they are reaped here and do not escape supervision.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("become child subreaper: %w", err)
	}
	// Descriptors the manager inherited (systemd's LISTEN_FDS sockets, a
	// pipe from whatever started us) must not reach workers: a worker
	// holding the write end of its launcher's pipe would keep the launcher
	// waiting for end of file as long as it lives.
	if err := closeInheritedOnExec(); err != nil {
		return fmt.Errorf("mark inherited descriptors close-on-exec: %w", err)
	}
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		return fmt.Errorf("open %s for worker stdin: %w", os.DevNull, err)
	}
	defer devNull.Close()
	// Only this process holds the write end (close-on-exec), so Go workers
	// see end of file on the read end exactly when the manager is gone.
	managerR, managerW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("create manager pipe: %w", err)
	}
	defer managerR.Close()
	defer managerW.Close()

	// Go's time package opens the zone file without close-on-exec, the first
	// time a local time is formatted (here: the first log entry). Done while
	// the process table forks, it would leak into a worker; done now, it
	// cannot.
	_, _ = time.Now().Zone()

	cg, err := setupCgroups(s.log)
	if err != nil {
		s.log.Info("workers share the manager's cgroup: what a worker's descendants move out of its process group outlives a manager killed with SIGKILL",
			zap.String("why", err.Error()))
	} else {
		s.log.Debug("each worker in a cgroup of its own", zap.String("cgroup", cg.root))
	}

	s.procs = &procTable{
		cg:            cg,
		sentinelGrace: s.cfg.ShutdownTimeout,
		sentinelName:  s.program + ": cgroup sentinel",
		exitNext:      s.exitAfterRun,
		log:           s.log,
		now:           s.now,
		inbox:         newMailbox[procMsg](),
		post:          func(ev event) { s.inbox.put(ev) },
		devNull:       devNull,
		managerPipe:   managerR,
		outputGrace:   s.outputGrace,
		procs:         make(map[uint64]*proc),
		byPid:         make(map[int]*proc),
	}
	stopProcs := startProcTable(s.procs)
	defer func() {
		stopProcs()
		close(s.tableEnded)
	}()
	defer s.removeNotifyDir() // done before Stopped; this covers an end by panic

	// A shutdown asked for before Run (a signal during start-up) is
	// honoured before anything is started.
	var batch []event
	select {
	case <-s.inbox.wake:
		batch = s.inbox.take(batch)
		for _, ev := range batch {
			s.handle(ev)
		}
	default:
	}
	if !s.stopping {
		s.startAll()
	}
	s.signalChange()
	for !s.done() {
		<-s.inbox.wake
		batch = s.inbox.take(batch)
		for _, ev := range batch {
			s.handle(ev)
		}
		s.signalChange()
	}
	endLoop()
	swept := make(chan int, 1)
	s.procs.inbox.put(sweepReq{fast: s.fast, timeout: s.cfg.ShutdownTimeout, done: swept})
	leftoversKilled := <-swept
	// The hooks' last calls (OnDeadWorker of the last workers) may still
	// use what runs beside the supervisor, the queue socket say: Stopped
	// waits for them.
	endHooks()
	// The process table removes the cgroup subtree as it ends, beside
	// this (Run waits for it): once the last worker is gone the subtree is
	// empty, and removing it is one rmdir, the kernel's work of a tenth of
	// a millisecond. The notify directory is removed before Stopped.
	s.removeNotifyDir()
	// Not followed by a Gosched: the caller's goroutine that this wakes
	// is taken by the other P soon enough, and this one, on the global
	// queue, would wait behind everything the caller then stops.
	close(s.stopped)
	if s.killedAtStop > 0 || leftoversKilled > 0 {
		err := &ShutdownKillError{Workers: s.killedAtStop, Leftovers: leftoversKilled}
		s.log.Warn("manager stopped: every worker has exited, "+err.Error(),
			zap.Int("workers_killed", s.killedAtStop), zap.Int("leftovers_killed", leftoversKilled))
		if s.exitCause != nil {
			return fmt.Errorf("%w; %w", s.exitCause, err)
		}
		return err
	}
	s.log.Info("manager stopped: every worker has exited")
	if s.exitCause != nil {
		return s.exitCause
	}
	return nil
}

// ShutdownKillError is Run's error when the shutdown had to use SIGKILL:
// workers that did not stop within their stop_timeout (or a fast
// shutdown, a second Ctrl-C, killed them), or processes they left behind
// that did not stop within shutdown_timeout. Every worker is gone all the
// same; the error says the stop was not graceful.
type ShutdownKillError struct {
	Workers, Leftovers int
}

func (e *ShutdownKillError) Error() string {
	var parts []string
	if e.Workers > 0 {
		parts = append(parts, fmt.Sprintf("%d %s killed (SIGKILL: not stopped within stop_timeout, or a fast shutdown)", e.Workers, plural(e.Workers, "worker", "workers")))
	}
	if e.Leftovers > 0 {
		parts = append(parts, fmt.Sprintf("%d %s the workers left behind killed (not stopped within shutdown_timeout)", e.Leftovers, plural(e.Leftovers, "process", "processes")))
	}
	return "the shutdown was not graceful: " + strings.Join(parts, "; ")
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// closeInheritedOnExec sets close-on-exec on every descriptor above stderr.
// The ones Go opens have it already; this catches what we inherited.
func closeInheritedOnExec() error {
	err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	if err == nil {
		return nil
	}
	// Before Linux 5.11: one by one.
	entries, rerr := os.ReadDir("/proc/self/fd")
	if rerr != nil {
		return fmt.Errorf("close_range: %w; list /proc/self/fd: %w", err, rerr)
	}
	for _, e := range entries {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			syscall.CloseOnExec(fd)
		}
	}
	return nil
}

// defaultOutputGrace bounds how long the manager waits, after a worker that
// died on its own is reaped, for its stdout and stderr to reach end of file
// before it closes them. Only a process that left the worker's process group
// (and so outlived it) can hold them that long.
const defaultOutputGrace = time.Second

// startAll starts every worker of every service, in the file's order,
// but for those of services that wait for their dependencies: their slots
// wait (depends.go), and are not part of the first round of starts.
func (s *Supervisor) startAll() {
	s.startedAt = s.now()
	total := 0
	for _, svc := range s.cfg.Services {
		total += svc.Workers
		start := s.mayStart(svc)
		for id := range svc.Workers {
			w := &worker{svc: svc, key: workerKey{svc.Name, id}, awaited: svc.Schedule == nil}
			s.addSlot(w)
			if !start {
				s.wait(w)
				continue
			}
			if svc.Schedule != nil {
				s.schedule(w)
				continue
			}
			w.initial = true
			s.pendingUp++
			s.start(w)
		}
	}
	s.log.Info("manager started", zap.Int("pid", os.Getpid()), zap.Int("services", len(s.cfg.Services)),
		zap.Int("workers", total), zap.String("config", s.cfg.File))
	s.changed = true
	s.updateSchedules(s.cfg)
	s.awaitInitialReady(s.cfg.Services)
	s.noteStarted()
}

// done reports whether a shutdown has finished: no process is left.
func (s *Supervisor) done() bool { return s.stopping && len(s.byToken) == 0 }

func (s *Supervisor) handle(ev event) {
	if isChange(ev) {
		s.changed = true
	}
	// After whatever ev did: in a shutdown, it may have ended the last
	// worker of a service that another waits for to stop; otherwise, it
	// may have met the dependencies of a service that waits.
	defer func() {
		if s.stopping && s.emptied {
			s.stopInOrder()
		}
		s.releaseWaiting()
		s.recyclePending()
	}()
	switch ev := ev.(type) {
	case workerStarted:
		s.onStarted(ev)
	case startFailed:
		s.onStartFailed(ev)
	case workerExited:
		s.onExited(ev)
	case stopSignalSent:
		if w := s.byToken[ev.token]; w != nil && w.state == stateStopping && w.cancelKill == nil && !s.fast {
			token := w.token
			w.cancelKill = s.afterFunc(w.svc.StopTimeout, func() { s.inbox.put(killDue{token: token}) })
		}
	case readyDue:
		if w := s.byToken[ev.token]; w != nil && w.state == stateRunning && !w.ready && w.readySeq == ev.seq {
			s.onReady(w)
		}
	case workerNotified:
		s.onNotified(ev)
	case watchdogDue:
		if w := s.byToken[ev.token]; w != nil && w.state == stateRunning && w.watchdogSeq == ev.seq {
			s.onWatchdogMissed(w)
		}
	case readyTimedOut:
		if w := s.byToken[ev.token]; w != nil && w.state == stateRunning && !w.ready && w.readySeq == ev.seq {
			s.onReadyTimedOut(w)
		}
	case restartDue:
		if w := s.workers[ev.key]; w != nil && w.state == stateBackoff && w.timerSeq == ev.seq && !s.stopping {
			w.cancelRestart = nil
			s.counters(w.key.service).Restarts++
			s.start(w)
		}
	case killDue:
		if w := s.byToken[ev.token]; w != nil && w.state == stateStopping {
			s.log.Warn("worker did not stop in time; killing it", s.fields(w, zap.Duration("stop_timeout", w.svc.StopTimeout))...)
			s.procs.inbox.put(signalReq{token: w.token, sig: syscall.SIGKILL})
			s.countKilledAtStop(w)
		}
	case shutdownRequested:
		s.onShutdown(ev.fast)
	case scheduleDue:
		s.onScheduleDue(ev)
	case stopManagerRequested:
		if !s.stopping {
			s.log.Error("an OnDeadWorker hook asked to stop the manager", zap.String("service", ev.cause.Service),
				zap.Int("worker", ev.cause.ID), zap.String("status", ev.cause.Status), zap.Int("exit_code", ev.cause.Code))
		}
		s.onStopManager(ev.cause)
	case reloadRequested:
		err := s.onReload(ev.cfg, ev.source, ev.settled)
		if ev.reply != nil {
			ev.reply <- err
		}
	case initialReadyDue:
		s.onInitialReadyDue(ev.service)
	case reloadRefused:
		s.recordReload(ev.source, ev.err)
	case reconfigureRequested:
		s.onReconfigure(ev)
	case restartRequested:
		s.onRestart(ev)
	case statusRequested:
		ev.reply <- s.status()
	case recycleCandidatesRequested:
		ev.reply <- s.recycleCandidates()
	case recycleDue:
		s.onRecycleDue(ev)
	case drainDone:
		s.onDrainDone(ev)
	case probeRequested:
		s.procs.inbox.put(procProbe(ev))
	case commandRequested:
		s.procs.inbox.put(ev.req)
	case commandCancelRequested:
		s.procs.inbox.put(commandCancel{id: ev.id})
	}
}

// start asks the process table for a new process in w's slot.
func (s *Supervisor) start(w *worker) {
	if svc := s.cfg.Service(w.key.service); svc != nil {
		w.svc = svc // the current definition, after a reload too
	}
	if w.state == stateWaiting {
		s.waiting--
	}
	w.stale = false
	w.ran, w.succeeded = false, false
	w.jitterShare = s.rnd()
	w.recycleReason, w.recycleDetail = "", ""
	s.nextToken++
	w.token = s.nextToken
	w.pid = 0
	w.state = stateStarting
	s.byToken[w.token] = w
	w.readyEarly, w.statusText = false, ""
	spec := buildSpawnSpec(w.svc, w.key.id, s.baseEnv, s.exe, s.program)
	spec.restarts = w.restarts
	if w.svc.Ready == config.ReadyNotify || w.svc.Watchdog > 0 {
		ns, err := s.openNotify(w.token)
		if err != nil {
			s.inbox.put(startFailed{token: w.token, err: err, at: s.now()})
			return
		}
		w.notify = ns
		spec.env = setEnv(spec.env, "NOTIFY_SOCKET", ns.path)
		if w.svc.Watchdog > 0 {
			spec.env = setEnv(spec.env, "WATCHDOG_USEC", strconv.FormatInt(w.svc.Watchdog.Microseconds(), 10))
		}
	}
	s.procs.inbox.put(spawnReq{token: w.token, spec: spec})
}

func (s *Supervisor) onStarted(ev workerStarted) {
	w := s.byToken[ev.token]
	if w == nil {
		return
	}
	w.pid = ev.pid
	w.cgroup = ev.cgroup
	w.startedAt = ev.at
	w.ran = true
	if w.initial {
		s.startedUp++
	}
	s.initialStartDone(w)
	if w.state == stateStopping {
		// Shutdown came while the spawn was under way; its stop signal is
		// queued behind the spawn in the process table.
		return
	}
	w.state = stateRunning
	s.armReady(w)
	if s.hooks.OnNewWorker != nil {
		ev := WorkerEvent{Service: w.key.service, ID: w.key.id, PID: w.pid, Supervisor: s}
		s.hook(func() { s.hooks.OnNewWorker(ev) })
	}
	s.replaceNext(w.key.service)
}

func (s *Supervisor) onStartFailed(ev startFailed) {
	w := s.byToken[ev.token]
	if w == nil {
		return
	}
	delete(s.byToken, ev.token)
	w.token = 0
	w.notify.close()
	w.notify = nil
	if w.recycling != recycleNone || w.recycleReason != "" {
		s.endRecycle(w)
	}
	s.log.Error("worker failed to start", s.fields(w, zap.Error(ev.err))...)
	w.lastExit, w.lastExitAt = "failed to start: "+ev.err.Error(), ev.at
	s.counters(w.key.service).Exits[ExitStartFailed]++
	if w.initial {
		s.failedUp++
	}
	s.initialStartDone(w)
	if w.state == stateStopping {
		cancel(&w.cancelKill)
		if !s.wanted(w.key) {
			s.dropSlot(w)
			s.checkReady()
			s.replaceNext(w.key.service)
			return
		}
	}
	if s.replacementFailed(w) {
		s.halt(w, fmt.Errorf("%s worker %d failed to start: %w", w.key.service, w.key.id, ev.err))
		return
	}
	if s.stopsManager(w, false) {
		s.stopManager(w, &ServiceExitError{Service: w.key.service, ID: w.key.id, Status: "failed to start: " + ev.err.Error(), Code: startFailedCode},
			s.fields(w, zap.Error(ev.err)))
		return
	}
	if s.policy(w) == config.RestartNever {
		s.complete(w, false, "failed to start: "+ev.err.Error(), s.fields(w, zap.Error(ev.err)))
		return
	}
	// A start that fails is the quickest of quick exits.
	s.scheduleRestart(w, 0)
}

// policy is the restart policy of w's service as the configuration has it
// now (it applies from a reload on), else of w's own definition.
func (s *Supervisor) policy(w *worker) config.RestartPolicy {
	if svc := s.cfg.Service(w.key.service); svc != nil {
		return svc.Restart.Policy
	}
	return w.svc.Restart.Policy
}

func (s *Supervisor) onExited(ev workerExited) {
	w := s.byToken[ev.token]
	if w == nil {
		return
	}
	delete(s.byToken, ev.token)
	w.token = 0
	w.notify.close()
	w.notify = nil
	cancel(&w.cancelReady)
	cancel(&w.cancelWatchdog)
	if s.queue != nil {
		s.queue.Forget(ev.pid)
	}
	// A recycled worker's old process that stopped is replaced below, and
	// its new one is waited for; any other exit ends its recycling.
	recycled := w.recycling == recycleStopping
	if w.recycling != recycleNone || w.recycleReason != "" {
		s.endRecycle(w)
	}
	uptime := ev.at.Sub(w.startedAt)
	// An exit after min_uptime is a healthy one (restartDelay), even if its
	// readiness timer's event is still on its way.
	wasReady := w.ready || !w.notifyMode() && uptime >= w.svc.Restart.MinUptime
	w.ready = false
	status := describeStatus(ev.status)
	w.lastExit, w.lastExitAt = status, ev.at
	s.counters(w.key.service).Exits[exitReason(w.state, ev.status)]++
	fields := s.fields(w, zap.String("status", status), zap.Duration("uptime", uptime))
	if s.hooks.OnDeadWorker != nil {
		dead := WorkerEvent{Service: w.key.service, ID: w.key.id, PID: ev.pid, Status: status, ExitCode: ev.status.ExitStatus(),
			Stopped: w.state == stateStopping, Supervisor: s}
		if ev.status.Signaled() {
			dead.Signal = ev.status.Signal()
		}
		cause := &ServiceExitError{Service: w.key.service, ID: w.key.id, Status: status, Code: managerExitCode(ev.status), ByHook: true}
		s.hook(func() {
			if s.hooks.OnDeadWorker(dead) == StopManager {
				s.inbox.put(stopManagerRequested{cause: cause})
			}
		})
	}
	if w.state == stateStopping {
		cancel(&w.cancelKill)
		s.log.Info("worker stopped", fields...)
		aborted := w.aborted
		w.aborted = false
		// A slot stopped for a reload whose configuration still wants it
		// (its definition changed, or a later reload scaled back up) is
		// started again, with the current definition; one aborted by its
		// watchdog or its ready_timeout as after a crash, with the backoff
		// of quick exits.
		if s.wanted(w.key) {
			if aborted {
				// Its watchdog or ready_timeout stopped it: a failure,
				// restarted as after a crash, unless its policy says
				// never, or its service is essential.
				if s.stopsManager(w, false) {
					s.stopManager(w, &ServiceExitError{Service: w.key.service, ID: w.key.id, Status: status, Code: managerExitCode(ev.status)}, fields)
					return
				}
				if completes(s.policy(w), ev.status) {
					s.complete(w, false, status, fields)
					return
				}
				s.scheduleRestart(w, uptime)
				return
			}
			// A service a reload removed and added back waits for its
			// dependencies again.
			svc := s.cfg.Service(w.key.service)
			if !s.mayStart(svc) {
				s.wait(w)
				return
			}
			if svc.Schedule != nil && w.prevSvc == nil && !recycled {
				// Scaled down and up again, or removed and added back,
				// while it stopped: its next run comes at its time. (A
				// replacement, `gotyledon restart`'s, or a recycle runs
				// again now.)
				s.schedule(w)
				return
			}
			if recycled && w.stale {
				// A reload changed it while it drained: its new process
				// is that change's replacement too, followed as one.
				w.prevSvc = w.svc
			}
			s.start(w)
			if recycled {
				w.recycling = recycleReplacing
			}
			return
		}
		s.dropSlot(w)
		s.checkReady()
		s.replaceNext(w.key.service)
		return
	}
	clean := ev.status.Exited() && ev.status.ExitStatus() == 0
	if s.stopsManager(w, clean) {
		// A rolling change's new process that fails halts the change, as
		// for any service: the previous definition is still there.
		if !wasReady && s.replacementFailed(w) {
			s.log.Warn("worker exited", fields...)
			s.halt(w, fmt.Errorf("%s worker %d %s before ready", w.key.service, w.key.id, status))
			return
		}
		s.stopManager(w, &ServiceExitError{Service: w.key.service, ID: w.key.id, Status: status, Code: managerExitCode(ev.status)}, fields)
		return
	}
	if completes(s.policy(w), ev.status) {
		s.complete(w, clean, status, fields)
		return
	}
	s.log.Warn("worker exited", fields...)
	if !wasReady && s.replacementFailed(w) {
		s.halt(w, fmt.Errorf("%s worker %d %s before ready", w.key.service, w.key.id, status))
		return
	}
	s.scheduleRestart(w, uptime)
}

// completes reports whether an exit with status ends a worker under
// policy rather than being restarted.
func completes(policy config.RestartPolicy, status unix.WaitStatus) bool {
	switch policy {
	case config.RestartNever:
		return true
	case config.RestartOnFailure:
		return status.Exited() && status.ExitStatus() == 0
	}
	return false
}

// complete leaves w's slot without a process, not to be restarted: its
// one-shot task is done (ok), or failed (under restart policy never; how
// says how). A success counts as ready for the manager's start and for a
// rolling change; a failure as a worker that never became ready, and, if
// it was a rolling change's new process, halts it. A slot a rolling
// change had yet to replace runs again at once on the new definition.
func (s *Supervisor) complete(w *worker, ok bool, how string, fields []zap.Field) {
	if !ok && s.replacementFailed(w) {
		s.log.Warn("worker exited", fields...)
		s.halt(w, fmt.Errorf("%s worker %d %s", w.key.service, w.key.id, how))
		return
	}
	if w.stale {
		w.stale = false
		w.svc = s.cfg.Service(w.key.service)
		s.log.Info("worker ended before its turn in a rolling change; starting it on the new definition", fields...)
		s.start(w)
		s.rolloutProgressed()
		return
	}
	w.state = stateCompleted
	w.pid = 0
	w.failures = 0
	w.succeeded = ok
	if ok {
		s.log.Info("worker completed", fields...)
	} else {
		s.log.Warn("worker failed; its restart policy does not restart it", append(fields, zap.Stringer("policy", s.policy(w)))...)
	}
	if w.awaited {
		w.awaited = false
		if !ok {
			s.notReadyAtStart = append(s.notReadyAtStart, fmt.Sprintf("%s/%d (%s)", w.key.service, w.key.id, how))
		}
		s.checkReady()
	}
	if w.prevSvc != nil {
		w.prevSvc = nil
		s.log.Info("replacement worker completed", s.fields(w)...)
	}
	s.replaceNext(w.key.service)
	s.rolloutProgressed()
}

// exitReason classifies how a process in state ended, for the counters.
func exitReason(state workerState, ws unix.WaitStatus) ExitReason {
	switch {
	case state == stateStopping:
		return ExitStopped
	case ws.Signaled():
		return ExitSignal
	case ws.ExitStatus() == 0:
		return ExitClean
	default:
		return ExitError
	}
}

// scheduleRestart starts w again, at once or after its backoff delay.
func (s *Supervisor) scheduleRestart(w *worker, uptime time.Duration) {
	if s.stopping {
		// A worker a shutdown has yet to stop (its dependents stop
		// first) that exits is not started again: the shutdown drops
		// its slot in its turn.
		s.log.Info("worker exited during the shutdown; not restarted", s.fields(w)...)
		w.state = stateCompleted
		w.pid = 0
		return
	}
	w.restarts++
	delay, failures := restartDelay(w.svc.Restart, uptime, w.failures, s.rnd)
	w.failures = failures
	// A slot that could not start leaves the starting state: a rolling
	// change it held back goes on.
	defer s.replaceNext(w.key.service)
	if delay == 0 {
		s.log.Info("restarting worker", s.fields(w)...)
		s.counters(w.key.service).Restarts++
		s.start(w)
		return
	}
	w.state = stateBackoff
	w.pid = 0
	w.retryAt = s.now().Add(delay)
	s.nextSeq++
	w.timerSeq = s.nextSeq
	key, seq := w.key, w.timerSeq
	w.cancelRestart = s.afterFunc(delay, func() { s.inbox.put(restartDue{key: key, seq: seq}) })
	s.log.Warn("worker is failing soon after start; restart delayed",
		s.fields(w, zap.Int("failures", failures), zap.Duration("delay", delay),
			zap.Duration("min_uptime", w.svc.Restart.MinUptime))...)
}

// wanted reports whether the current configuration wants slot key filled:
// its service exists with more workers than its id, and no shutdown is
// under way.
func (s *Supervisor) wanted(key workerKey) bool {
	svc := s.cfg.Service(key.service)
	return !s.stopping && svc != nil && key.id < svc.Workers
}

// onReload applies cfg in place of the running configuration, changing
// only what differs: slots beyond a service's new worker count, and every
// slot of a removed service, are stopped (gracefully, highest ids first);
// missing slots are started; slots whose process runs a changed definition
// (command, run, env, dir, stop_signal) are replaced one at a time per
// service, a new process started before the next old one is stopped. A
// slot whose definition did not change keeps its process, restart count and
// backoff state; a changed stop_timeout or restart policy applies from now
// on. A reload during another's replacements supersedes it: every slot is
// measured against the newest configuration.
//
// settled, if not nil, receives the reload's outcome once it has settled
// (ReloadSettled).
func (s *Supervisor) onReload(cfg *config.Config, source ReloadSource, settled chan<- error) error {
	if s.stopping {
		s.log.Warn("reload ignored: the manager is stopping")
		return fmt.Errorf("reload: %w", ErrStopped)
	}
	s.received = cfg
	clear(s.overrides)
	next := &rollout{source: source}
	if prev := s.rollout; prev != nil {
		// Superseded: what it changed is measured against cfg now, and
		// those who wait for it wait for this one.
		if !prev.restart {
			s.recordReload(prev.source, nil)
		}
		next.waiters = prev.waiters
	}
	if settled != nil {
		next.waiters = append(next.waiters, settled)
	}
	s.rollout = next
	s.apply(cfg, true)
	s.rolloutProgressed()
	if s.hooks.OnReload != nil {
		s.hook(func() { s.hooks.OnReload(s) })
	}
	return nil
}

// apply makes cfg the running configuration and changes the workers to
// match it, as onReload describes. With fromFile, the workers left running
// of a service with a reload_signal get that signal; without (a rescale),
// no worker is replaced.
func (s *Supervisor) apply(cfg *config.Config, fromFile bool) {
	s.cfg = cfg
	if s.startedAt.IsZero() {
		return // before the first start: startAll will start what cfg says
	}
	var stopping, starting, replacing int
	// Highest ids first, so that a scale-down stops them in that order.
	slots := make([]*worker, 0, len(s.workers))
	for _, w := range s.workers {
		slots = append(slots, w)
	}
	slices.SortFunc(slots, func(a, b *worker) int {
		if c := strings.Compare(a.key.service, b.key.service); c != 0 {
			return c
		}
		return b.key.id - a.key.id
	})
	for _, w := range slots {
		svc := cfg.Service(w.key.service)
		switch {
		case svc == nil || w.key.id >= svc.Workers:
			if w.state != stateStopping {
				stopping++
				s.stop(w)
			}
		case w.state == stateBackoff || w.state == stateWaiting:
			w.svc = svc // its next start uses the new definition
		case w.state == stateScheduled && svc.Schedule == nil:
			// No longer scheduled: it runs as any service.
			w.svc = svc
			starting++
			s.start(w)
		case w.state == stateScheduled || w.state == stateCompleted && svc.Schedule != nil:
			w.svc = svc // its next run, at its next time, uses it
		case w.state == stateCompleted:
			// A one-shot runs again when what it runs changed (by the
			// file: a rescale changes nothing), or when its policy now
			// restarts it.
			// A rescale leaves the definition it ran on record.
			if processChanged(w.svc, svc) && fromFile || svc.Restart.Policy == config.RestartAlways {
				w.svc = svc
				starting++
				s.start(w)
			}
		case processChanged(w.svc, svc) && svc.Schedule != nil:
			// A scheduled run goes on as it started; the next run runs
			// the new definition.
		case processChanged(w.svc, svc) && !fromFile:
			// A rescale: a process that runs another definition than the
			// configuration's (one a halted rollout left on the new
			// definition) keeps running until it exits.
		case processChanged(w.svc, svc):
			w.stale = true
			replacing++
		default:
			w.svc = svc
			if fromFile && svc.ReloadSignal != 0 && w.state == stateRunning {
				s.log.Info("telling worker to reload", s.fields(w, zap.Stringer("signal", svc.ReloadSignal))...)
				s.procs.inbox.put(signalReq{token: w.token, sig: svc.ReloadSignal})
			}
		}
	}
	for name := range s.released {
		if cfg.Service(name) == nil {
			delete(s.released, name) // added again, it waits for its dependencies again
		}
	}
	for _, svc := range cfg.Services {
		for id := range svc.Workers {
			key := workerKey{svc.Name, id}
			if s.workers[key] == nil {
				w := &worker{svc: svc, key: key}
				s.addSlot(w)
				if !s.mayStart(svc) {
					s.wait(w)
					continue
				}
				if svc.Schedule != nil {
					s.schedule(w)
					continue
				}
				starting++
				s.start(w)
			}
		}
		s.replaceNext(svc.Name)
	}
	s.updateSchedules(cfg)
	desired := 0
	for _, svc := range cfg.Services {
		desired += svc.Workers
	}
	s.log.Info("configuration applied", zap.String("config", cfg.File), zap.Int("workers", desired), zap.Int("starting", starting),
		zap.Int("stopping", stopping), zap.Int("replacing", replacing))
}

// processChanged reports whether a worker running definition old must be
// replaced to run new: what its process was started with differs (the
// watchdog too: the worker gets it in its environment). The stop
// timeout and the restart policy are the manager's business and apply
// without a restart.
func processChanged(old, new *config.Service) bool {
	return !slices.Equal(old.Command, new.Command) || old.Run != new.Run || !maps.Equal(old.Env, new.Env) ||
		old.Dir != new.Dir || old.StopSignal != new.StopSignal || old.Watchdog != new.Watchdog
}

// replaceNext stops the lowest stale slot of service, unless one of its
// slots is already starting or stopping: replacements go one at a time, so
// a service keeps all but one of its workers through a rolling change.
// With `replace: all`, every stale slot is stopped at once instead.
func (s *Supervisor) replaceNext(service string) {
	if svc := s.cfg.Service(service); svc != nil && svc.Replace == config.ReplaceAll {
		// Not gated, but followed all the same: each slot's new process
		// must be ready for the reload to settle, and one that fails
		// before it is ready halts it, as a rolling one would.
		for _, w := range s.workers {
			if w.key.service == service && w.stale && w.state == stateRunning {
				w.stale = false
				w.prevSvc = w.svc
				s.log.Info("replacing worker: its definition changed", s.fields(w)...)
				s.stop(w)
			}
		}
		s.rolloutProgressed()
		return
	}
	var next *worker
	for _, w := range s.workers {
		if w.key.service != service {
			continue
		}
		// A replacement under way (its old process stopping, its new one
		// starting or not yet ready), or a recycling, holds the next one
		// back.
		if w.state == stateStarting || w.state == stateStopping || w.prevSvc != nil || w.recycling != recycleNone {
			return
		}
		if w.stale && w.state == stateRunning && (next == nil || w.key.id < next.key.id) {
			next = w
		}
	}
	if next != nil {
		next.stale = false
		next.prevSvc = next.svc
		s.log.Info("replacing worker: its definition changed", s.fields(next)...)
		s.stop(next)
		return
	}
	s.rolloutProgressed()
}

// onShutdown stops every worker. A fast shutdown, or a fast request while a
// graceful one is under way, kills what is left.
func (s *Supervisor) onShutdown(fast bool) {
	if s.stopping && (s.fast || !fast) {
		return
	}
	if !s.stopping {
		s.log.Info("stopping all workers", zap.Bool("fast", fast), zap.Int("running", len(s.byToken)))
		if s.hooks.OnTerminate != nil {
			s.hook(s.hooks.OnTerminate)
		}
	} else {
		s.log.Warn("fast shutdown: killing workers still running", zap.Int("running", len(s.byToken)))
	}
	s.stopping, s.fast = true, fast
	s.settle(fmt.Errorf("reload: %w", ErrStopped))
	s.stopInOrder()
}

// stop ends w's slot: its process group gets the stop signal (SIGKILL in a
// fast shutdown), and SIGKILL when the stop timeout, counted from the
// signal's delivery, is over; a slot without a process (waiting out a
// backoff, completed, waiting for its dependencies) is dropped.
func (s *Supervisor) stop(w *worker) {
	switch w.state {
	case stateBackoff, stateCompleted, stateWaiting, stateScheduled:
		if w.state == stateWaiting {
			s.waiting--
		}
		cancel(&w.cancelRestart)
		s.dropSlot(w)
		s.checkReady()
		return
	case stateStopping:
		if !s.fast {
			return
		}
		cancel(&w.cancelKill)
	}
	sig := w.svc.StopSignal
	if s.fast {
		sig = syscall.SIGKILL
		s.countKilledAtStop(w)
	}
	s.stopWith(w, sig)
}

// stopWith sends sig as w's stop signal: the stop timeout starts once it
// is delivered, and SIGKILL follows at its end.
func (s *Supervisor) stopWith(w *worker, sig syscall.Signal) {
	w.state = stateStopping
	cancel(&w.cancelReady) // a stopping process is not going to be ready
	cancel(&w.cancelWatchdog)
	s.log.Debug("stopping worker", s.fields(w, zap.Stringer("signal", sig))...)
	s.procs.inbox.put(signalReq{token: w.token, sig: sig, stop: true})
}

// countKilledAtStop counts w among the workers a shutdown had to SIGKILL
// (ShutdownKillError), once.
func (s *Supervisor) countKilledAtStop(w *worker) {
	if s.stopping && !w.killedAtStop {
		w.killedAtStop = true
		s.killedAtStop++
	}
}

// cancel stops the timer *c refers to, if any, and forgets it.
func cancel(c *func() bool) {
	if *c != nil {
		(*c)()
		*c = nil
	}
}

// initialStartDone counts the answers to the first round of starts, so the
// manager can say when it is up.
func (s *Supervisor) initialStartDone(w *worker) {
	if w.initial {
		w.initial = false
		s.pendingUp--
		s.noteStarted()
	}
}

func (s *Supervisor) noteStarted() {
	if s.pendingUp == 0 && !s.startedNoted {
		s.startedNoted = true
		close(s.started)
		level := zap.InfoLevel
		if s.failedUp > 0 {
			level = zap.WarnLevel // each failure was logged with its reason
		}
		s.log.Log(level, "initial start done", zap.Int("started", s.startedUp),
			zap.Int("failed", s.failedUp), zap.Duration("took", s.now().Sub(s.startedAt)))
		s.checkReady()
	}
}

func (s *Supervisor) fields(w *worker, extra ...zap.Field) []zap.Field {
	f := append(make([]zap.Field, 0, 3+len(extra)), zap.String("service", w.key.service), zap.Int("worker", w.key.id))
	if w.pid != 0 {
		f = append(f, zap.Int("pid", w.pid))
	}
	return append(f, extra...)
}
