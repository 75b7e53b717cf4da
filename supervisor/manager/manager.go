// Package manager is a running gotyledon manager: the actors it is made
// of, each a type with its own execute and interrupt, wired in one
// run.Group (see Manager.Run, read top to bottom). If any actor returns,
// the others are interrupted; the group ends once a shutdown has left no
// process (the supervisor's Stopped), and Run returns when the supervisor
// has also removed its cgroups.
//
// New does everything that can fail before a worker starts (read the
// configuration, bind the sockets, refuse to run a second manager on the
// same control socket) and starts nothing if it fails. Run runs until
// SIGTERM, SIGINT or the end of its context.
//
// A manager owns its process as supervisors must: it handles SIGTERM,
// SIGINT, SIGHUP and SIGUSR1 while it runs, catches SIGPIPE for good, makes
// the process a child subreaper, reaps every child of the process (nothing
// else in it may wait for children: os/exec's Wait would steal statuses),
// and marks the descriptors the process inherited close-on-exec so that
// workers do not inherit them. A program whose main also runs Go workers
// must hand them to service.Main before anything else (package
// supervisor/program does), or each worker would start a manager of its
// own.
package manager

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/gotyledon/gotyledon/config"
	"github.com/gotyledon/gotyledon/ipc"
	"github.com/gotyledon/gotyledon/service"
	"github.com/gotyledon/gotyledon/supervisor"
	"github.com/gotyledon/gotyledon/supervisor/configwatch"
	"github.com/gotyledon/gotyledon/supervisor/control"
	"github.com/gotyledon/gotyledon/supervisor/logging"
	"github.com/gotyledon/gotyledon/supervisor/metrics"
	"github.com/gotyledon/gotyledon/supervisor/sdnotify"
)

// Options configure a Manager.
type Options struct {
	// ConfigFile is the YAML configuration to run, applied on top of
	// Declaration. It is read again on each reload: SIGHUP, an edit of the
	// file or of an env file the running configuration uses (their
	// directories are watched), or `gotyledon reload`. Empty: the
	// Declaration alone, which each reload applies again (running the
	// OnReload hook), and which an edit of its env files reloads.
	ConfigFile string
	// Declaration is what the program declares in Go; nil: nothing.
	Declaration *config.Declaration
	// GoServices are the names of the Go services the program registers
	// (service.Registry.Names): a configuration's run: must name one. The
	// manager runs their workers by re-executing the program, whose main
	// must then run service.Main (see the package comment).
	GoServices []string
	// Hooks are the program's callbacks (supervisor.Hooks).
	Hooks supervisor.Hooks
	// Logger receives the manager's events and every line workers write.
	// Default: none.
	Logger *zap.Logger
	// LogFile, when the log goes to a file, is reopened on SIGUSR1.
	LogFile *logging.File
	// ProgramName starts a Go worker's process title ("NAME: printer
	// worker 3"). Default: the base name of os.Args[0].
	ProgramName string
	// Getenv reads the socket directories ($RUNTIME_DIRECTORY,
	// $XDG_RUNTIME_DIR) and whether systemd listens ($NOTIFY_SOCKET).
	// Default os.Getenv. The messages to systemd go where the process's
	// own environment says (go-systemd reads it).
	Getenv func(string) string
	// ExitAfterRun says the process exits once Run returns, as the
	// gotyledon command's does. Run then leaves the signals it catches
	// (SIGCHLD among them) caught, each one doing nothing, rather than
	// give them back their default actions: giving back one takes a round
	// trip to the Go runtime's signal thread, a tenth of a millisecond or
	// more on a busy machine, and the five were a tenth of the time from
	// SIGTERM to the manager's exit. Default false: Run gives them back,
	// for a program that goes on after it.
	ExitAfterRun bool
}

// ErrNotStarted is wrapped by New's errors that New has logged in full.
var ErrNotStarted = errors.New("manager not started")

// Manager is one manager process's supervision: a supervisor, its queue
// broker, control socket, metrics, systemd notifier, configuration watch
// and signal handling. Create it with New and call Run once; if Run is
// never called, call Close to release what New took.
type Manager struct {
	log     *zap.Logger
	signals *signals
	reloads *reloader
	sup     *supervisor.Supervisor

	broker        *ipc.Broker  // nil without queues
	queueListener net.Listener // nil without queues
	schedules     *queueScheduler
	schedulePut   *brokerPut // the schedules' connection to the broker; nil without queues
	control       *control.Server
	metricsServer *metrics.Server // nil without control.metrics_listen
	notify        *sdnotify.Notifier
	watch         *configwatch.Watch // nil without a file or without inotify
	exitAfterRun  bool
	closeOnce     sync.Once
}

// New prepares a manager: it subscribes to the signals, reads the
// configuration, and binds the queue socket, the control socket and the
// metrics address, so that all of them answer as soon as the first worker
// starts. On any failure it releases what it took, starts nothing, and
// returns the error. Failures it has logged in full (a configuration's
// every FILE:LINE:COL error on a line of its own, a socket it cannot
// serve) wrap ErrNotStarted: the caller need not say them again.
//
// A manager whose control socket cannot be created still runs, without
// status, scale and reload; one that finds another manager answering on
// its control socket does not (it would run every worker a second time).
func New(opts Options) (_ *Manager, err error) {
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	getenv := opts.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	m := &Manager{log: log, signals: subscribeSignals(log, opts.LogFile), notify: sdnotify.New(getenv, log), exitAfterRun: opts.ExitAfterRun}
	defer func() {
		if err != nil {
			m.Close()
		}
	}()

	var data []byte
	parse := func([]byte) (*config.Config, error) { return opts.Declaration.Resolve(opts.GoServices) }
	if opts.ConfigFile != "" {
		if data, err = os.ReadFile(opts.ConfigFile); err != nil {
			err = fmt.Errorf("load config: %w", err)
			logConfigError(log, err, "nothing was started")
			return nil, fmt.Errorf("%w: %w", ErrNotStarted, err)
		}
		parse = func(data []byte) (*config.Config, error) {
			return config.ParseOver(opts.Declaration, opts.ConfigFile, data, opts.GoServices)
		}
	}
	cfg, err := parse(data)
	if err != nil {
		logConfigError(log, err, "configuration is invalid; nothing was started")
		return nil, fmt.Errorf("%w: %w", ErrNotStarted, err)
	}

	// The broker listens before the first worker starts, since workers
	// dial it at once. Without queues there is no broker and no socket.
	socket := cfg.Broker.Socket
	if socket == "" {
		socket = ipc.DefaultSocketPath(getenv)
	}
	// JetStream queues: the bridge is one more service (jetstream.go),
	// in every configuration the file gives, reloads' too.
	parseFile := parse
	parse = func(data []byte) (*config.Config, error) {
		cfg, err := parseFile(data)
		if err != nil {
			return nil, err
		}
		return withBridge(cfg, socket)
	}
	if cfg, err = withBridge(cfg, socket); err != nil {
		log.Error("cannot serve the JetStream queues; nothing was started", zap.Error(err))
		return nil, fmt.Errorf("%w: %w", ErrNotStarted, err)
	}
	var workerEnv []string
	if len(cfg.Queues) > 0 {
		workerEnv = append(workerEnv, ipc.EnvSocket+"="+socket)
	}
	var queues func() []ipc.QueueStats // nil without a broker
	if len(cfg.Queues) > 0 {
		m.broker, err = ipc.NewBroker(ipc.BrokerOptions{
			Queues: brokerQueues(cfg.Queues),
			Allow:  ipc.AllowPeers(os.Getuid(), peerRules(cfg.Broker), ipc.ProcessGroups),
			// A worker's service is in the environment the manager started
			// it with (and its children inherit).
			PeerService: func(p ipc.Peer) string { return ipc.ProcessEnv(p.PID, service.EnvService) },
			Logger:      log.Named("broker"),
			StoreSocket: bridgeSocket(socket),
		})
		if err != nil {
			return nil, fmt.Errorf("start the queue broker: %w", err)
		}
		if m.queueListener, err = ipc.Listen(socket, cfg.Broker.GID); err != nil {
			if inUse, ok := errors.AsType[*ipc.InUseError](err); ok {
				log.Error("another manager serves this queue socket; not starting a second one",
					inUseFields(inUse, "broker.socket")...)
			} else if errors.Is(err, fs.ErrPermission) {
				log.Error("cannot serve the queues: permission denied", zap.String("socket", socket), zap.Error(err),
					zap.String("fix", "set broker.socket and control.socket to a directory this user may write, or run with $XDG_RUNTIME_DIR set"))
			} else {
				log.Error("cannot serve the queues", zap.String("socket", socket), zap.Error(err))
			}
			return nil, fmt.Errorf("%w: %w", ErrNotStarted, err)
		}
		// The queues' schedules put through the queue socket, as any
		// producer does.
		m.schedulePut = &brokerPut{socket: socket}
		m.schedules = newQueueScheduler(cfg.Queues, m.schedulePut.put, log.Named("schedule"))
		queues = func() []ipc.QueueStats {
			return m.schedules.addStats(ipc.WithStoreStatus(m.broker.Stats(), string(config.StoreJetStream), bridgeStatusSocket(socket)))
		}
		log.Info("queue broker listening", zap.String("socket", socket), zap.Int("queues", len(cfg.Queues)))
	}

	// The broker drains the workers recycling replaces, and counts the
	// items they acknowledge (recycle.max_jobs).
	var drainer supervisor.QueueDrainer
	if m.broker != nil {
		drainer = m.broker
	}
	m.sup, err = supervisor.New(cfg, supervisor.Options{Logger: log, ProgramName: opts.ProgramName, WorkerEnv: workerEnv, Hooks: opts.Hooks,
		ExitAfterRun: opts.ExitAfterRun, Queue: drainer})
	if err != nil {
		return nil, err
	}
	m.reloads = newReloader(cfg, data)
	m.reloads.file, m.reloads.parse, m.reloads.log = opts.ConfigFile, parse, log
	m.reloads.sup, m.reloads.notify = m.sup, m.notify
	if m.broker != nil {
		m.reloads.broker = m.broker
		m.reloads.schedules = m.schedules
	}
	m.reloads.summary = func() string {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var withStatus func(supervisor.Status) []ipc.QueueStats
		if queues != nil {
			withStatus = func(supervisor.Status) []ipc.QueueStats { return queues() }
		}
		s, err := m.summary(ctx, withStatus)
		if err != nil {
			return "status unavailable: " + err.Error()
		}
		return s
	}
	m.signals.to = m.reloads

	// The control socket listens before the workers start, so that status
	// answers during start-up.
	var metricsOpts []metrics.HandlerOption
	if m.broker != nil {
		metricsOpts = append(metricsOpts, metrics.WithServiceTasks(m.broker.ServiceTaskStats))
	}
	metricsHandler := metrics.NewHandler(m.sup.Status, queues, log, metricsOpts...)
	if err := m.listenControl(cfg, getenv, queues, metricsHandler); err != nil {
		return nil, err
	}
	if addr := cfg.Control.MetricsListen; addr != "" {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			log.Error("cannot serve metrics", zap.String("address", addr), zap.Error(err))
			return nil, fmt.Errorf("%w: serve metrics on %s: %w", ErrNotStarted, addr, err)
		}
		m.metricsServer = metrics.NewServer(l, metricsHandler)
		log.Info("metrics listening", zap.String("address", l.Addr().String()))
	}
	// Without the watch (no inotify, say) the manager still runs, and
	// SIGHUP still reloads. The env files are watched too, a declared
	// configuration's without a file; the reloader has the watch follow
	// them from one configuration to the next.
	envFiles := envFilePaths(cfg)
	if opts.ConfigFile == "" && len(envFiles) == 0 {
		return m, nil
	}
	if m.watch, err = configwatch.New(opts.ConfigFile, log); err != nil {
		log.Warn("config file not watched; SIGHUP still reloads it", zap.Error(err))
		m.watch, err = nil, nil
	} else {
		watch, sup := m.watch, m.sup
		watch.WatchFiles(envFiles)
		m.reloads.fileChanges, m.reloads.watchFiles = watch.Changes(), watch.WatchFiles
		m.reloads.unwatch = func() { go releaseAfterStopSignals(watch, sup) }
	}
	return m, nil
}

// releaseAfterStopSignals lets the configuration watch go once the
// workers' stop signals are out, as a rule: a probe is answered after
// every message the loop and the process table held when it was asked,
// and the shutdown's is usually among them (the supervisor is told of the
// shutdown just after the reloader is asked: a probe that overtakes it
// only lets the watch go sooner). Let go at once, the watch's goroutines
// and the kernel's release of its inotify descriptor took the CPU from
// the loop just as the shutdown began; let go at the end, that release
// (which waits for an RCU grace period) held up the manager's exit. The
// probe returns once the loop has answered, or has ended.
func releaseAfterStopSignals(watch *configwatch.Watch, sup *supervisor.Supervisor) {
	_ = sup.Probe(context.Background())
	watch.Release()
}

// listenControl binds the control socket: the single-instance guard. A
// live manager on it means this one must not start. Any other failure (no
// right to create it, say) leaves the manager running without status,
// scale and reload.
func (m *Manager) listenControl(cfg *config.Config, getenv func(string) string, queues func() []ipc.QueueStats, metricsHandler http.Handler) error {
	path := control.SocketPath(cfg, getenv)
	l, err := ipc.Listen(path, cfg.Control.GID)
	inUse, _ := errors.AsType[*ipc.InUseError](err)
	switch {
	case inUse != nil:
		m.log.Error("another manager runs with this control socket; not starting a second one", inUseFields(inUse, "control.socket")...)
		return fmt.Errorf("%w: control socket %s: %w", ErrNotStarted, path, err)
	case err != nil:
		m.log.Error("cannot serve the control socket: status, scale and reload will not answer (set control.socket to a writable place)",
			zap.String("socket", path), zap.Error(err))
		return nil
	}
	m.control = control.NewServer(l, control.Options{
		Status: m.sup.Status,
		Scale: func(ctx context.Context, service string, workers int) error {
			if service == BridgeService {
				// Two bridges would serve one socket.
				return fmt.Errorf("scale %s: the JetStream bridge runs one worker (its queues scale with their consumers)", service)
			}
			return m.sup.Reconfigure(ctx, service, workers)
		},
		Reload: func(ctx context.Context, settle bool) error {
			return m.reloads.Reload(ctx, supervisor.ReloadByControl, settle)
		},
		Restart: func(ctx context.Context, service string, worker int, settle bool) error {
			done, err := m.sup.Restart(ctx, service, worker)
			if err != nil || !settle {
				return err
			}
			select {
			case err := <-done:
				return err
			case <-ctx.Done():
				return ctx.Err()
			}
		},
		Queues: queues,
		ServiceTasks: func() map[string]ipc.TaskStats {
			if m.broker == nil {
				return nil
			}
			return m.broker.ServiceTaskStats()
		},
		Allow:   ipc.AllowPeers(os.Getuid(), peerRules(cfg.Control.SocketAccess), ipc.ProcessGroups),
		Metrics: metricsHandler,
		Logger:  m.log,
		Path:    path,
	})
	return nil
}

// inUseFields say which process holds a socket, and which configuration
// key gives a second manager a socket of its own.
func inUseFields(e *ipc.InUseError, key string) []zap.Field {
	f := []zap.Field{zap.String("socket", e.Path)}
	if e.PID > 0 {
		f = append(f, zap.Int("manager_pid", e.PID))
	}
	return append(f, zap.String("fix", "stop that manager first, or set "+key+" to another path to run a second one beside it"))
}

// summary is the one-line status systemd shows, taken from the loop: it
// fails if the loop does not answer before ctx ends.
func (m *Manager) summary(ctx context.Context, queues func(supervisor.Status) []ipc.QueueStats) (string, error) {
	st, err := m.sup.Status(ctx)
	if err != nil {
		return "", err
	}
	var qs []ipc.QueueStats
	if queues != nil {
		qs = queues(st)
	}
	doc := control.NewStatus(st, qs, nil, os.Getpid(), time.Now())
	return doc.Summary(), nil
}

// Run runs the manager until a shutdown has stopped every worker: after
// SIGTERM or SIGINT, or once ctx ends (a graceful shutdown either way). It
// returns nil then, or the error of an actor that failed. By then it has
// released what New took (see Close), but for the signals under
// Options.ExitAfterRun. Run may be called once.
func (m *Manager) Run(ctx context.Context) error {
	defer m.release(!m.exitAfterRun)
	g := newActorGroup(m.exitAfterRun)
	// Signals: SIGTERM, SIGINT, SIGHUP, SIGUSR1 become requests to the
	// reload path.
	g.Add(m.signals.Run, m.signals.Interrupt)
	// Reloads: the owner of the configuration; applies each reload, and
	// each shutdown, in the order asked.
	// Awaited under ExitAfterRun too: a stop it has not read yet is still
	// told to systemd (STOPPING=1) as it ends.
	g.AddAwaited(func() error { return m.reloads.Run(ctx) }, m.reloads.Interrupt)
	// Config watch: edits of the file, applied as SIGHUP is.
	if m.watch != nil {
		g.Add(m.watch.Run, m.watch.Interrupt)
	}
	// Supervisor: starts, restarts and stops the workers. Once a shutdown
	// has left no process the group ends: the other actors stop while the
	// supervisor ends its process table and removes its cgroups, and Run
	// returns when all are done (under ExitAfterRun, when the supervisor
	// is and every other actor has been told to stop).
	var supErr error
	g.AddAwaited(func() error { supErr = m.sup.Run(ctx); return supErr }, func(error) { m.sup.Shutdown(false) })
	groupEnd := make(chan struct{})
	g.Add(func() error {
		select {
		case <-m.sup.Stopped():
		case <-groupEnd:
		}
		return nil
	}, func(error) { close(groupEnd) })
	// Queue broker: serves until the group ends, so that stopping workers
	// can still ack what they finish; items in flight when it closes are
	// lost with the manager (at least once holds while the manager lives).
	if m.broker != nil {
		g.Add(func() error { return m.broker.Serve(m.queueListener) }, func(error) { m.broker.Close() })
	}
	// Queue schedules: each schedule's item put at its times, through the
	// broker; a reload hands it the new schedules.
	if m.schedules != nil {
		g.Add(func() error { defer m.schedulePut.close(); return m.schedules.Run() }, m.schedules.Interrupt)
	}
	// Control socket: status, scale, reload and metrics.
	if m.control != nil {
		g.Add(m.control.Run, m.control.Interrupt)
	}
	// Metrics on TCP, when the configuration asks for it: /metrics only.
	if m.metricsServer != nil {
		g.Add(m.metricsServer.Run, m.metricsServer.Interrupt)
	}
	// systemd: STATUS= kept current as the workers change and, when
	// systemd asks for it, the watchdog pinged, each only after the
	// supervisor's loop and process table have answered.
	if m.notify.Enabled() {
		reporter := sdnotify.NewReporter(m.notify, m.sup.Changes(), func(ctx context.Context) (string, error) {
			// The loop and the thread that forks and reaps: a watchdog
			// ping says neither is stuck.
			if err := m.sup.Probe(ctx); err != nil {
				return "", err
			}
			var queues func(supervisor.Status) []ipc.QueueStats
			if m.broker != nil {
				queues = func(st supervisor.Status) []ipc.QueueStats { return watchdogQueues(m.broker.Stats(), st) }
			}
			return m.summary(ctx, queues)
		})
		g.Add(reporter.Run, reporter.Interrupt)
	}
	if err := g.Run(); err != nil {
		return err
	}
	return supErr // the group may have ended at Stopped, before Run's error
}

// Close releases what New took: the signals (given back their default
// actions), the sockets, the watch. Run does the same when it returns
// (without the signals under Options.ExitAfterRun); call Close yourself
// only for a Manager whose Run is never called. Safe to call more than
// once.
func (m *Manager) Close() { m.release(true) }

// release is Close, but for the signals when restoreSignals is false
// (Options.ExitAfterRun): a later Close does not give them back either.
func (m *Manager) release(restoreSignals bool) {
	m.closeOnce.Do(func() {
		if restoreSignals {
			m.signals.unsubscribe()
		}
		if m.queueListener != nil {
			m.queueListener.Close()
		}
		if m.control != nil {
			m.control.Interrupt(nil)
		}
		if m.metricsServer != nil {
			m.metricsServer.Interrupt(nil)
		}
		if m.broker != nil {
			m.broker.Close()
		}
		if m.watch != nil {
			m.watch.Close()
		}
	})
}

// peerRules are a socket's peer rules from its configuration: its allowed
// users, and its allowed groups and own group.
func peerRules(a config.SocketAccess) ipc.PeerRules {
	r := ipc.PeerRules{UIDs: a.AllowUIDs, GIDs: a.AllowGIDs}
	if a.GID >= 0 {
		r.GIDs = append(append([]int(nil), a.AllowGIDs...), a.GID)
	}
	return r
}
