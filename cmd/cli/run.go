package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/oklog/run"
	"go.uber.org/zap"

	"github.com/gotyledon/gotyledon/config"
	"github.com/gotyledon/gotyledon/ipc"
	"github.com/gotyledon/gotyledon/supervisor"
)

type runCommand struct {
	Config string `short:"c" required:"" placeholder:"FILE" help:"Configuration file (YAML)."`
}

// Run is the manager: one run.Group, one actor per long-lived job. The group
// ends when the supervisor returns, which it does once a requested shutdown
// has stopped every worker; if any actor fails, the others are interrupted.
func (c *runCommand) Run(e *env, cl *commandLine) error {
	// Subscribe before anything else, so that a signal that arrives during
	// start-up is acted on once the actors run, not lost or fatal.
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1)
	defer signal.Stop(signals)
	// Catching SIGPIPE (and never reading it) turns a write to a closed
	// stderr, say when the log reader dies, into an error zap drops instead
	// of the signal's default action: killing the manager and, with it,
	// every worker. Caught, not ignored, so workers still start with the
	// default action.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)

	log, logFile, err := newLogger(cl.LogFormat, cl.LogLevel, cl.LogFile, e.stderr, os.Getenv)
	if err != nil {
		return err
	}
	if logFile != nil {
		defer logFile.Close() // after the Sync below
	}
	defer log.Sync() //nolint:errcheck // nothing to do if it fails

	data, err := os.ReadFile(c.Config)
	if err != nil {
		logConfigError(log, fmt.Errorf("load config: %w", err), "nothing was started")
		return exitCode(ExitError)
	}
	cfg, err := config.Parse(c.Config, data, e.registry.Names())
	if err != nil {
		logConfigError(log, err, "configuration is invalid; nothing was started")
		return exitCode(ExitError)
	}
	// The broker listens before the first worker starts, since workers
	// dial it at once. Without queues there is no broker and no socket.
	socket := cfg.Broker.Socket
	if socket == "" {
		socket = ipc.DefaultSocketPath(os.Getenv)
	}
	var workerEnv []string
	if len(cfg.Queues) > 0 {
		workerEnv = append(workerEnv, ipc.EnvSocket+"="+socket)
	}
	sup, err := supervisor.New(cfg, supervisor.Options{Logger: log, ProgramName: e.program, WorkerEnv: workerEnv, Hooks: e.hooks})
	if err != nil {
		return err
	}
	var (
		broker   *ipc.Broker
		listener net.Listener
		queues   func() []ipc.QueueStats // nil without a broker
	)
	if len(cfg.Queues) > 0 {
		broker, err = ipc.NewBroker(ipc.BrokerOptions{
			Queues: brokerQueues(cfg.Queues),
			Allow:  allowPeer(cfg.Broker, os.Getuid(), processGroups),
			Logger: log.Named("broker"),
		})
		if err != nil {
			return fmt.Errorf("start the queue broker: %w", err)
		}
		if listener, err = ipc.Listen(socket, cfg.Broker.GID); err != nil {
			log.Error("cannot serve the queues", zap.String("socket", socket), zap.Error(err))
			return exitCode(ExitError)
		}
		queues = broker.Stats
		log.Info("queue broker listening", zap.String("socket", socket), zap.Int("queues", len(cfg.Queues)))
	}
	// The control socket listens before the workers start, so that status
	// answers during start-up. A live manager on it means this one must
	// not start: it would run every worker a second time. Any other
	// failure (no right to create it, say) leaves the manager running
	// without status, scale and reload, as it ran before they existed.
	controlPath := controlSocketPath(cfg, os.Getenv)
	controlListener, err := ipc.Listen(controlPath, cfg.Control.GID)
	switch {
	case errors.Is(err, ipc.ErrInUse):
		log.Error("another manager runs with this control socket; not starting a second one", zap.String("socket", controlPath), zap.Error(err))
		return exitCode(ExitError)
	case err != nil:
		log.Error("cannot serve the control socket: status, scale and reload will not answer (set control.socket to a writable place)",
			zap.String("socket", controlPath), zap.Error(err))
	}
	var metricsListener net.Listener
	if addr := cfg.Control.MetricsListen; addr != "" {
		if metricsListener, err = net.Listen("tcp", addr); err != nil {
			log.Error("cannot serve metrics", zap.String("address", addr), zap.Error(err))
			return exitCode(ExitError)
		}
		log.Info("metrics listening", zap.String("address", metricsListener.Addr().String()))
	}
	notify := newSystemdNotifier(os.Getenv, log)
	reloads := make(chan reloadAsk)
	summary := func() string {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := sup.Status(ctx)
		if err != nil {
			return "status unavailable: " + err.Error()
		}
		var qs []ipc.QueueStats
		if queues != nil {
			qs = queues()
		}
		return statusSummary(st, qs)
	}

	var g run.Group
	// Manager events: signals, edits of the file, and reloads asked for on
	// the control socket, handled one at a time in the order they come.
	// SIGTERM stops gracefully; SIGINT too, and a SIGINT while a stop is
	// under way (Ctrl-C twice, or after SIGTERM) kills what is left. SIGHUP
	// reloads the file and applies the difference, as an edit of the file
	// does; a reload asked for before the first start is done waits for it.
	// SIGUSR1 reopens the log file (after logrotate moved it).
	changes := make(chan struct{}, 1)
	{
		cancel := make(chan struct{})
		m := &manager{cmd: c, env: e, log: log, sup: sup, broker: broker, notify: notify, summary: summary, current: cfg, lastRead: data}
		g.Add(func() error {
			stopping := false
			ready := sup.Ready()
			var pending []reloadAsk
			ask := func(r reloadAsk) {
				switch {
				case stopping:
					log.Warn("reload ignored: the manager is stopping", zap.String("source", r.source))
					r.answer(fmt.Errorf("reload: %w", supervisor.ErrStopped))
				case ready != nil && r.source == "file":
					// One read of the file once started covers every
					// change of its directory meanwhile.
					if !slices.ContainsFunc(pending, func(p reloadAsk) bool { return p.source == "file" }) {
						log.Debug("config directory changed during the first start; the file is read once it is done")
						pending = append(pending, r)
					}
				case ready != nil:
					log.Info("reload waits until the first start is done", zap.String("source", r.source))
					pending = append(pending, r)
				default:
					m.reload(r)
				}
			}
			stop := func(fast bool) {
				if !stopping {
					notify.stopping()
					for _, r := range pending {
						r.answer(fmt.Errorf("reload: %w", supervisor.ErrStopped))
					}
					pending = nil
				}
				sup.Shutdown(fast)
				stopping = true
			}
			for {
				select {
				case <-cancel:
					for _, r := range pending {
						r.answer(fmt.Errorf("reload: %w", supervisor.ErrStopped))
					}
					return nil
				case <-ready:
					ready = nil
					if stopping {
						break // systemd has been told STOPPING=1 already
					}
					notify.ready(summary())
					for _, r := range pending {
						m.reload(r)
					}
					pending = nil
				case <-changes:
					ask(reloadAsk{source: "file"})
				case r := <-reloads:
					ask(r)
				case sig := <-signals:
					switch sig {
					case syscall.SIGINT:
						log.Info("signal received", zap.Stringer("signal", sig), zap.Bool("fast", stopping))
						stop(stopping)
					case syscall.SIGTERM:
						log.Info("signal received", zap.Stringer("signal", sig))
						stop(false)
					case syscall.SIGHUP:
						log.Info("signal received", zap.Stringer("signal", sig))
						ask(reloadAsk{source: "SIGHUP"})
					case syscall.SIGUSR1:
						if logFile == nil {
							log.Info("SIGUSR1 ignored: the log goes to stderr, not to a file")
						} else if err := logFile.Reopen(); err != nil {
							log.Error("cannot reopen the log file; still writing to the old one", zap.Error(err))
						} else {
							log.Info("log file reopened", zap.String("file", cl.LogFile))
						}
					}
				}
			}
		}, func(error) {
			close(cancel)
		})
	}
	// Config watch: edits of the file, applied as SIGHUP is. Without it
	// (no inotify, say) the manager still runs, and SIGHUP still reloads.
	if w, err := newConfigWatch(c.Config, log); err != nil {
		log.Warn("config file not watched; SIGHUP still reloads it", zap.Error(err))
	} else {
		g.Add(func() error {
			return w.run(changes)
		}, func(error) {
			w.stop()
		})
	}
	// Supervisor: starts, restarts and stops the workers. Its return, once
	// every worker is gone, ends the group.
	{
		g.Add(sup.Run, func(error) {
			sup.Shutdown(false)
		})
	}
	// Queue broker: serves until the group ends, so that stopping workers
	// can still ack what they finish; items in flight when it closes are
	// lost with the manager (at least once holds while the manager lives).
	if broker != nil {
		g.Add(func() error {
			return broker.Serve(listener)
		}, func(error) {
			broker.Close()
		})
	}
	// Control socket: status, scale, reload and metrics, until the group
	// ends. The queues' rates are sampled beside it.
	metrics := newMetricsHandler(sup.Status, queues, log)
	{
		quit := make(chan struct{})
		ctl := &controlServer{
			status: sup.Status,
			scale:  sup.Reconfigure,
			reload: func(ctx context.Context) error {
				answer := make(chan error, 1)
				select {
				case reloads <- reloadAsk{source: "control", reply: answer}:
				case <-ctx.Done():
					return ctx.Err()
				case <-quit:
					return fmt.Errorf("reload: %w", supervisor.ErrStopped)
				}
				select {
				case err := <-answer:
					return err
				case <-ctx.Done():
					return ctx.Err()
				case <-quit:
					return fmt.Errorf("reload: %w", supervisor.ErrStopped)
				}
			},
			queues:  queues,
			allow:   allowPeer(cfg.Control.SocketAccess, os.Getuid(), processGroups),
			log:     log.Named("control"),
			now:     time.Now,
			rates:   &queueRates{},
			metrics: metrics,
		}
		if controlListener != nil {
			g.Add(func() error {
				go ctl.rates.runSampler(queues, quit)
				log.Info("control socket listening", zap.String("socket", controlPath))
				return ctl.serve(controlListener)
			}, func(error) {
				close(quit)
				ctl.close()
			})
		}
	}
	// Metrics on TCP, when the file asks for it: /metrics only.
	if metricsListener != nil {
		srv := &http.Server{
			Handler:           metricsOnly(metrics),
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       30 * time.Second,
			WriteTimeout:      30 * time.Second,
			IdleTimeout:       60 * time.Second,
			MaxHeaderBytes:    8 << 10,
		}
		g.Add(func() error {
			if err := srv.Serve(metricsListener); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("metrics: %w", err)
			}
			return nil
		}, func(error) {
			srv.Close()
		})
	}
	// systemd: STATUS= kept current and, when systemd asks for it, the
	// watchdog pinged, each only after the supervisor's loop has answered.
	if notify.enabled() {
		interval, watchdog := watchdogInterval(), true
		if interval == 0 {
			interval, watchdog = 5*time.Second, false
		}
		quit := make(chan struct{})
		g.Add(func() error {
			notify.watch(interval, watchdog, sup.Status, queues, quit)
			return nil
		}, func(error) {
			close(quit)
		})
	}
	return g.Run()
}

// metricsOnly serves GET /metrics and nothing else.
func metricsOnly(metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics)
	return mux
}

// reloadAsk is one request to reload the configuration file.
type reloadAsk struct {
	source string       // "SIGHUP", "file" (the watch saw its directory change) or "control"
	reply  chan<- error // buffered, or nil when nobody waits
}

func (r reloadAsk) answer(err error) {
	if r.reply != nil {
		r.reply <- err
	}
}

// manager carries out reloads for the events actor, which alone calls it.
type manager struct {
	cmd     *runCommand
	env     *env
	log     *zap.Logger
	sup     *supervisor.Supervisor
	broker  *ipc.Broker // nil without queues
	notify  *notifier
	summary func() string
	current *config.Config // the configuration last handed to the supervisor
	// lastRead is the file's content as the last reload (or the start)
	// read it, good or bad.
	lastRead []byte
}

// reload reads and applies the file. A file that does not load, or that the
// broker refuses, changes nothing; either way the outcome is logged,
// recorded for status, told to systemd and answered.
func (m *manager) reload(r reloadAsk) {
	data, readErr := os.ReadFile(m.cmd.Config)
	// The watch reports any change of the file's directory. A content the
	// last reload read already is not reloaded: a touch, the same bytes
	// written again, and an edit saved and then signalled (or `systemctl
	// reload` after an edit), which reaches us from the watch and as
	// SIGHUP, are applied, counted and told to systemd once. Compared with
	// what any reload read, good or bad, so that putting back the file a
	// refused edit replaced applies it. SIGHUP and `gotyledon reload`
	// always reload: they are asked for on purpose. The file is read here,
	// not by the watch, so that what is applied is never older than what
	// a reload before it applied.
	if r.source == "file" {
		switch {
		case readErr != nil:
			// Mid-swap, or removed: the next change says more.
			m.log.Warn("config file changed but cannot be read; waiting for the next change", zap.Error(readErr))
			r.answer(nil)
			return
		case bytes.Equal(data, m.lastRead):
			m.log.Debug("config file unchanged; nothing to do", zap.String("config", m.cmd.Config))
			r.answer(nil)
			return
		}
		m.log.Info("config file changed; reloading", zap.String("config", m.cmd.Config))
	}
	m.notify.reloading()
	err := m.apply(r.source, data, readErr)
	if err != nil {
		m.sup.ReloadFailed(r.source, err)
	}
	m.notify.ready(m.summary())
	r.answer(err)
}

func (m *manager) apply(source string, data []byte, readErr error) error {
	if readErr != nil {
		err := fmt.Errorf("load config: %w", readErr)
		logConfigError(m.log, err, "reload failed: the running services are unchanged")
		return err
	}
	m.lastRead = data
	next, err := m.cmd.reload(m.env, m.log, m.current, data)
	if err != nil {
		return err
	}
	// The broker's queues change first: if it refuses (a queue to remove
	// still holds items), nothing changes at all.
	if m.broker != nil && !sameQueues(m.current.Queues, next.Queues) {
		if err := m.broker.SetQueues(brokerQueues(next.Queues)); err != nil {
			m.log.Error("reload refused: the running services are unchanged", zap.Error(err))
			return err
		}
	}
	m.current = next
	return m.sup.ApplyReload(context.Background(), next, source)
}

// brokerQueues turns the configuration's queues into the broker's.
func brokerQueues(qs []*config.Queue) []ipc.QueueConfig {
	out := make([]ipc.QueueConfig, len(qs))
	for i, q := range qs {
		out[i] = ipc.QueueConfig{Name: q.Name, Capacity: q.Capacity}
	}
	return out
}

// allowPeer is the broker's peer check: the manager's own user and root
// always; then the users the configuration names, and the members of the
// groups it names and of the socket's group (whose members the 0660 file
// mode already lets connect). Membership is the peer's primary group or one
// of its process's supplementary groups (groupsOf), the ones the kernel
// consulted when it let the peer open the socket.
func allowPeer(b config.SocketAccess, self int, groupsOf func(pid int) []int) func(ipc.Peer) bool {
	groups := slices.Clone(b.AllowGIDs)
	if b.GID >= 0 {
		groups = append(groups, b.GID)
	}
	return func(p ipc.Peer) bool {
		if p.UID == self || p.UID == 0 || slices.Contains(b.AllowUIDs, p.UID) || slices.Contains(groups, p.GID) {
			return true
		}
		if len(groups) == 0 {
			return false
		}
		for _, g := range groupsOf(p.PID) {
			if slices.Contains(groups, g) {
				return true
			}
		}
		return false
	}
}

// processGroups returns the supplementary group ids of process pid, from
// /proc/PID/status; none if it cannot be read (the process is gone).
func processGroups(pid int) []int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Groups:"); ok {
			var gids []int
			for _, f := range strings.Fields(rest) {
				if g, err := strconv.Atoi(f); err == nil {
					gids = append(gids, g)
				}
			}
			return gids
		}
	}
	return nil
}

// reload parses the configuration file's new content, for a reload. It
// returns the new configuration, or why it cannot be applied: then it has
// logged that, and the running services are left exactly as they are.
func (c *runCommand) reload(e *env, log *zap.Logger, current *config.Config, data []byte) (*config.Config, error) {
	next, err := config.Parse(c.Config, data, e.registry.Names())
	if err != nil {
		logConfigError(log, err, "reload failed: the running services are unchanged")
		return nil, err
	}
	if why := socketsChange(current, next); why != "" {
		log.Error("reload refused: the running services are unchanged", zap.String("reason", why))
		return nil, errors.New(why)
	}
	return next, nil
}

// socketsChange says what a reload cannot change: the broker's and the
// control socket's paths and peer rules, and the metrics address (the
// sockets are bound, and the queue socket's path given to every worker),
// and queues where there is no broker (none was configured at start, so no
// socket exists). Queues of a running broker change by reload.
func socketsChange(old, new *config.Config) string {
	if len(old.Queues) == 0 && len(new.Queues) > 0 {
		return "the first queues take a restart of the manager: it started without a queue socket"
	}
	if !sameAccess(old.Broker, new.Broker) {
		return "the broker settings changed; they take a restart of the manager for now"
	}
	if !sameAccess(old.Control.SocketAccess, new.Control.SocketAccess) || old.Control.MetricsListen != new.Control.MetricsListen {
		return "the control settings changed; they take a restart of the manager for now"
	}
	return ""
}

func sameAccess(a, b config.SocketAccess) bool {
	return a.Socket == b.Socket && a.GID == b.GID && slices.Equal(a.AllowUIDs, b.AllowUIDs) && slices.Equal(a.AllowGIDs, b.AllowGIDs)
}

// sameQueues reports whether two configurations' queues are the same
// names with the same capacities.
func sameQueues(a, b []*config.Queue) bool {
	return slices.EqualFunc(a, b, func(x, y *config.Queue) bool { return x.Name == y.Name && x.Capacity == y.Capacity })
}

// logConfigError logs each configuration error as its own entry, so that
// every FILE:LINE:COL stands at the start of a line an editor can jump to,
// then outcome.
func logConfigError(log *zap.Logger, err error, outcome string) {
	var list config.ErrorList
	if !errors.As(err, &list) {
		log.Error("cannot load configuration", zap.Error(err))
		log.Error(outcome)
		return
	}
	for _, e := range list {
		log.Error(e.Error())
	}
	log.Error(outcome, zap.Int("errors", len(list)))
}
