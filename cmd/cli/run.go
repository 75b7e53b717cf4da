package cli

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"

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
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(signals)
	// Catching SIGPIPE (and never reading it) turns a write to a closed
	// stderr, say when the log reader dies, into an error zap drops instead
	// of the signal's default action: killing the manager and, with it,
	// every worker. Caught, not ignored, so workers still start with the
	// default action.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)

	log, err := newLogger(cl.LogFormat, cl.LogLevel, e.stderr)
	if err != nil {
		return err
	}
	defer log.Sync() //nolint:errcheck // stderr; nothing to do if it fails

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
		log.Info("queue broker listening", zap.String("socket", socket), zap.Int("queues", len(cfg.Queues)))
	}

	var g run.Group
	// Signals: SIGTERM stops gracefully; SIGINT too, and a SIGINT while a
	// stop is under way (Ctrl-C twice, or after SIGTERM) kills what is left.
	// SIGHUP reloads the file and applies the difference; so does an edit
	// of the file, seen by the config watch below.
	changes := make(chan []byte, 1)
	{
		cancel := make(chan struct{})
		current := cfg // the configuration last handed to the supervisor
		apply := func(data []byte) {
			next := c.reload(e, log, current, data)
			if next == nil {
				return
			}
			// The broker's queues change first: if it refuses (a queue
			// to remove still holds items), nothing changes at all.
			if broker != nil && !sameQueues(current.Queues, next.Queues) {
				if err := broker.SetQueues(brokerQueues(next.Queues)); err != nil {
					log.Error("reload refused: the running services are unchanged", zap.Error(err))
					return
				}
			}
			current = next
			sup.Reload(next)
		}
		g.Add(func() error {
			stopping := false
			for {
				select {
				case <-cancel:
					return nil
				case data := <-changes:
					if !stopping {
						apply(data)
					}
				case sig := <-signals:
					switch sig {
					case syscall.SIGINT:
						log.Info("signal received", zap.Stringer("signal", sig), zap.Bool("fast", stopping))
						sup.Shutdown(stopping)
						stopping = true
					case syscall.SIGTERM:
						log.Info("signal received", zap.Stringer("signal", sig))
						sup.Shutdown(false)
						stopping = true
					case syscall.SIGHUP:
						log.Info("signal received", zap.Stringer("signal", sig))
						if stopping {
							log.Warn("reload ignored: the manager is stopping")
							continue
						}
						data, err := os.ReadFile(c.Config)
						if err != nil {
							logConfigError(log, fmt.Errorf("load config: %w", err), "reload failed: the running services are unchanged")
							continue
						}
						apply(data)
					}
				}
			}
		}, func(error) {
			close(cancel)
		})
	}
	// Config watch: edits of the file, applied as SIGHUP is. Without it
	// (no inotify, say) the manager still runs, and SIGHUP still reloads.
	if w, err := newConfigWatch(c.Config, data, log); err != nil {
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
	return g.Run()
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
func allowPeer(b config.Broker, self int, groupsOf func(pid int) []int) func(ipc.Peer) bool {
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

// reload parses the configuration file's new content, for a SIGHUP or an
// edit. It returns the new configuration, or nil if it cannot be applied:
// then it has logged why, and the running services are left exactly as they
// are.
func (c *runCommand) reload(e *env, log *zap.Logger, current *config.Config, data []byte) *config.Config {
	next, err := config.Parse(c.Config, data, e.registry.Names())
	if err != nil {
		logConfigError(log, err, "reload failed: the running services are unchanged")
		return nil
	}
	if why := brokerChange(current, next); why != "" {
		log.Error("reload refused: the running services are unchanged", zap.String("reason", why))
		return nil
	}
	return next
}

// brokerChange says what a reload cannot change: the broker's socket and
// peer rules (the socket is bound and its path given to every worker), and
// queues where there is no broker (none was configured at start, so no
// socket exists). Queues of a running broker change by reload.
func brokerChange(old, new *config.Config) string {
	if len(old.Queues) == 0 && len(new.Queues) > 0 {
		return "the first queues take a restart of the manager: it started without a queue socket"
	}
	ob, nb := old.Broker, new.Broker
	if ob.Socket != nb.Socket || ob.GID != nb.GID || !slices.Equal(ob.AllowUIDs, nb.AllowUIDs) || !slices.Equal(ob.AllowGIDs, nb.AllowGIDs) {
		return "the broker settings changed; they take a restart of the manager for now"
	}
	return ""
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
