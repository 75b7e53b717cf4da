package manager

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/gotyledon/gotyledon/config"
	"github.com/gotyledon/gotyledon/ipc"
	"github.com/gotyledon/gotyledon/supervisor"
)

// reloader is the one owner of the running configuration. It reads and
// applies the configuration file for every reload, whoever asks (SIGHUP,
// an edit seen by the watch, `gotyledon reload`), one at a time and in
// the order asked; the broker and the supervisor receive what it applied
// and hold no configuration of their own. Because a shutdown ends every
// reload still waiting, it sequences shutdowns too; the supervisor hears
// of one at once all the same (stop).
//
// Run is its execute function, Interrupt its interrupt. Reload, request
// and stop are safe from any goroutine.
type reloader struct {
	file string // the configuration file; "" when the program declares it all
	// parse turns the file's content into a configuration: config.ParseOver
	// with the program's declaration and Go services. Without a file it
	// is called with nil, and resolves the declaration alone.
	parse  func(data []byte) (*config.Config, error)
	log    *zap.Logger
	sup    loop
	broker queueSetter // nil without queues
	// schedules receives the queues of each configuration applied, for
	// their schedules; nil without queues.
	schedules scheduleSetter
	notify    notifier
	summary   func() string
	// fileChanges reports edits of the file's directory, and of the env
	// files' (configwatch); nil without a watch. unwatch, called once a shutdown is under way
	// (nil without a watch), lets the watch go beside the workers'
	// stopping, rather than after it, when the manager's own stop waits
	// for it. It must not block.
	fileChanges <-chan struct{}
	unwatch     func()
	// watchFiles, told the env files of each configuration applied, has
	// the watch follow them (nil without a watch). It must not block.
	watchFiles func(paths []string)

	asks     chan any // reloadAsk and stopAsk, in the order they were made
	quit     chan struct{}
	quitOnce sync.Once
	// shutdownTold: the supervisor has been asked for a graceful
	// shutdown, by stop or by Run.
	shutdownTold atomic.Bool

	// Owned by Run.
	current *config.Config
	// lastRead is the file's content as the last reload (or the start)
	// read it, good or bad.
	lastRead []byte
	// lastEnv is what the env files of the configuration then running
	// held just before the last reload read them, good or bad (at the
	// start, just after the first load, before the watch begins).
	lastEnv envSnapshot
	// announced: systemd has been told the first READY=1; reloads are
	// told to it only from then on. reloading: a RELOADING=1 went out and
	// its READY=1 has not. stopping: a shutdown is under way.
	announced, reloading, stopping bool
	// unreadable: the watch's last report found the file unreadable (and
	// said so once).
	unreadable bool
	// settling are the applied reloads that have not settled yet, oldest
	// first; latest is the newest one's outcome, which comes once every
	// older one's has (a reload settles with the one that supersedes it).
	settling []settlingReload
	latest   <-chan error
}

// settlingReload is an applied reload waiting for its rolling changes to
// end.
type settlingReload struct {
	ask     reloadAsk
	outcome <-chan error
}

// loop is what the reloader asks of the supervisor (*supervisor.Supervisor).
type loop interface {
	Started() <-chan struct{}
	Ready() <-chan struct{}
	Shutdown(fast bool)
	ReloadSettled(ctx context.Context, source supervisor.ReloadSource, cfg *config.Config) (<-chan error, error)
	ReloadRefused(source supervisor.ReloadSource, err error)
}

// queueSetter is what the reloader asks of the broker (*ipc.Broker).
type queueSetter interface {
	SetQueues(qs []ipc.QueueConfig) error
}

// scheduleSetter is what the reloader asks of the queues' scheduler
// (*queueScheduler).
type scheduleSetter interface {
	SetQueues(qs []*config.Queue)
}

// notifier is what the reloader tells systemd (*sdnotify.Notifier).
type notifier interface {
	ExtendTimeout(d time.Duration)
	Ready(status string)
	Reloading()
	Stopping()
}

// reloadAsk asks for one reload; reply (buffered) gets its outcome, or is
// nil when nobody waits. With settle, the outcome is the reload's
// settlement (supervisor.Supervisor.ReloadSettled) rather than its
// application.
type reloadAsk struct {
	source supervisor.ReloadSource
	settle bool
	reply  chan<- error
}

func (r reloadAsk) answer(err error) {
	if r.reply != nil {
		r.reply <- err
	}
}

// stopAsk asks for a shutdown. escalate turns a shutdown already under way
// into a fast one (a second Ctrl-C).
type stopAsk struct{ escalate bool }

// newReloader returns the reloader of the configuration cfg, read from the
// file's content data.
func newReloader(cfg *config.Config, data []byte) *reloader {
	return &reloader{current: cfg, lastRead: data, lastEnv: takeEnvSnapshot(cfg), asks: make(chan any, 16), quit: make(chan struct{})}
}

// Reload asks for a reload, as SIGHUP does, and waits for its outcome:
// nil once applied, or why it changed nothing. With settle, it waits
// longer, until the reload has settled: nil once its rolling changes are
// complete, an error wrapping supervisor.ErrRolloutHalted if one halted.
// ctx bounds the wait, not the reload.
func (r *reloader) Reload(ctx context.Context, source supervisor.ReloadSource, settle bool) error {
	reply := make(chan error, 1)
	select {
	case r.asks <- reloadAsk{source: source, settle: settle, reply: reply}:
	case <-ctx.Done():
		return ctx.Err()
	case <-r.quit:
		return fmt.Errorf("reload: %w", supervisor.ErrStopped)
	}
	select {
	case err := <-reply:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-r.quit:
		return fmt.Errorf("reload: %w", supervisor.ErrStopped)
	}
}

// request asks for a reload without waiting for it.
func (r *reloader) request(source supervisor.ReloadSource) { r.ask(reloadAsk{source: source}) }

// stop asks for a graceful shutdown, or, with escalate, a fast one if a
// shutdown is under way already. The supervisor is told of the graceful
// one at once, not after a reload being read: the workers' stop signals
// go out without waiting for that reload, which the supervisor then
// refuses, as it refuses any during a shutdown.
//
// The ask is queued before the supervisor is told, when the queue has
// room: of the goroutines a goroutine wakes, Go's scheduler runs the one
// woken last first, and the supervisor's loop should send the stop
// signals before the reloader's own work on the stop. Told first, the
// loop waited behind it, 0.15 ms on a 2-core machine.
func (r *reloader) stop(escalate bool) {
	tell := !r.shutdownTold.Swap(true)
	asked := false
	select {
	case r.asks <- stopAsk{escalate: escalate}:
		asked = true
	default:
	}
	if tell {
		r.sup.Shutdown(false)
	}
	if !asked {
		r.ask(stopAsk{escalate: escalate})
	}
}

func (r *reloader) ask(a any) {
	select {
	case r.asks <- a:
	case <-r.quit:
	}
}

// startMargin is how much longer than the longest ready_timeout the
// manager asks systemd to wait for its first READY=1.
const startMargin = 10 * time.Second

// Run serves asks until Interrupt. The end of ctx is a graceful shutdown.
// A reload asked for before the supervisor's first start is done waits for
// it; one asked for during a shutdown is refused.
func (r *reloader) Run(ctx context.Context) error {
	started, ready := r.sup.Started(), r.sup.Ready()
	r.notify.ExtendTimeout(longestReadyTimeout(r.current) + startMargin)
	var pending []reloadAsk
	refuseAll := func() {
		for _, p := range pending {
			p.answer(fmt.Errorf("reload: %w", supervisor.ErrStopped))
		}
		pending = nil
	}
	reload := func(a reloadAsk) {
		switch {
		case r.stopping || r.shutdownTold.Load():
			// stop told the supervisor already: its stopAsk is on its way.
			r.log.Warn("reload ignored: the manager is stopping", zap.Stringer("source", a.source))
			a.answer(fmt.Errorf("reload: %w", supervisor.ErrStopped))
		case started != nil && a.source == supervisor.ReloadByFile:
			// One read of the file once started covers every change of
			// its directory meanwhile.
			if !slices.ContainsFunc(pending, func(p reloadAsk) bool { return p.source == supervisor.ReloadByFile }) {
				r.log.Debug("config directory changed during the first start; the file is read once it is done")
				pending = append(pending, a)
			}
		case started != nil:
			r.log.Info("reload waits until the first start is done", zap.Stringer("source", a.source))
			pending = append(pending, a)
		default:
			r.reload(a)
		}
	}
	stop := func(fast bool) {
		if !r.stopping {
			r.notify.Stopping()
			refuseAll()
			if r.unwatch != nil {
				r.unwatch()
			}
		}
		if fast || !r.shutdownTold.Swap(true) {
			r.sup.Shutdown(fast)
		}
		r.stopping = true
	}
	done := ctx.Done()
	for {
		select {
		case <-r.quit:
			if r.shutdownTold.Load() && !r.stopping {
				// The stop ended before its stopAsk was read: systemd
				// still hears of it.
				r.notify.Stopping()
			}
			refuseAll()
			for _, s := range r.settling {
				s.ask.answer(fmt.Errorf("reload: %w", supervisor.ErrStopped))
			}
			return nil
		case <-done:
			done = nil
			stop(false)
		case <-started:
			started = nil
			for _, p := range pending {
				r.reload(p)
			}
			pending = nil
		case <-ready:
			ready = nil
			if r.stopping {
				break // systemd has been told STOPPING=1 already
			}
			r.notify.Ready(r.summary())
			r.announced = true
		case err := <-r.latest:
			r.settled(err)
		case <-r.fileChanges:
			reload(reloadAsk{source: supervisor.ReloadByFile})
		case a := <-r.asks:
			switch a := a.(type) {
			case reloadAsk:
				reload(a)
			case stopAsk:
				stop(a.escalate && r.stopping)
			}
		}
	}
}

// longestReadyTimeout is the longest ready_timeout of cfg's services.
func longestReadyTimeout(cfg *config.Config) time.Duration {
	var d time.Duration
	for _, svc := range cfg.Services {
		d = max(d, svc.ReadyTimeout)
	}
	return d
}

// Interrupt ends Run; reloads still waiting are refused. Safe to call more
// than once.
func (r *reloader) Interrupt(error) { r.quitOnce.Do(func() { close(r.quit) }) }

// reload reads and applies the file. A file that does not load, or that
// the broker refuses, changes nothing; either way the outcome is logged,
// recorded for status, told to systemd and answered.
func (r *reloader) reload(a reloadAsk) {
	var data []byte
	var readErr error
	if r.file != "" {
		data, readErr = os.ReadFile(r.file)
	}
	// The watch reports any change of the file's directory (or an env
	// file's). A content the last reload read already, the env files'
	// too, is not reloaded: a touch, the same bytes
	// written again, and an edit saved and then signalled (or `systemctl
	// reload` after an edit), which reaches us from the watch and as
	// SIGHUP, are applied, counted and told to systemd once. Compared with
	// what any reload read, good or bad, so that putting back the file a
	// refused edit replaced applies it. SIGHUP and `gotyledon reload`
	// always reload: they are asked for on purpose. The file is read here,
	// not by the watch, so that what is applied is never older than what
	// a reload before it applied.
	// The env files are looked at before the configuration is loaded, so
	// that an edit made meanwhile, which the load may or may not read, is
	// one a later report sees as a change.
	env := takeEnvSnapshot(r.current)
	if a.source == supervisor.ReloadByFile {
		switch {
		case readErr != nil:
			// Mid-swap, or removed: the next change says more. Said once
			// (whatever else in the directory keeps changing meanwhile),
			// and again when the file is back.
			if !r.unreadable {
				r.log.Warn("config file cannot be read; the running services are unchanged, and the file is read again when it changes", zap.Error(readErr))
			} else {
				r.log.Debug("config file still cannot be read", zap.Error(readErr))
			}
			r.unreadable = true
			a.answer(nil)
			return
		case r.unreadable:
			r.unreadable = false
			r.log.Info("config file can be read again", zap.String("config", r.file))
		}
		changedEnv := env.changedSince(r.lastEnv)
		switch {
		case !bytes.Equal(data, r.lastRead):
			r.log.Info("config file changed; reloading", zap.String("config", r.file))
		case len(changedEnv) > 0:
			r.log.Info("env file changed; reloading", zap.Strings("env_files", changedEnv))
		default:
			r.log.Debug("config file unchanged; nothing to do", zap.String("config", r.file))
			a.answer(nil)
			return
		}
	}
	// A stop told while the file was read: the reload would be refused
	// anyway; it must not reach systemd or the broker first.
	if r.shutdownTold.Load() {
		r.log.Warn("reload ignored: the manager is stopping", zap.Stringer("source", a.source))
		a.answer(fmt.Errorf("reload: %w", supervisor.ErrStopped))
		return
	}
	// systemd hears of reloads once it has heard the manager is ready: a
	// reload before that is part of the start. One RELOADING=1 covers
	// every reload until none is left settling.
	if r.announced && !r.reloading {
		r.notify.Reloading()
		r.reloading = true
	}
	outcome, err := r.apply(a.source, data, readErr, env)
	if err != nil {
		r.sup.ReloadRefused(a.source, err)
		r.reloadDone()
		a.answer(err)
		return
	}
	waiter := settlingReload{outcome: outcome}
	if a.settle {
		waiter.ask = a
	}
	r.settling = append(r.settling, waiter)
	r.latest = outcome
	// A reload that replaces no process has settled already (the
	// supervisor settles it before it answers): told at once, so that
	// systemd hears READY=1 before the reload's asker hears back.
	select {
	case err := <-outcome:
		r.settled(err)
	default:
	}
	if !a.settle {
		a.answer(nil)
	}
}

// settled answers every reload waiting for its settlement, now that the
// newest one has settled with err; the older ones have their outcomes
// already (they settle with the newest, or settled before it).
func (r *reloader) settled(err error) {
	settling := r.settling
	r.settling, r.latest = nil, nil
	r.reloadDone()
	for i, s := range settling {
		outcome := err
		if i < len(settling)-1 {
			outcome = <-s.outcome
		}
		s.ask.answer(outcome)
	}
}

// reloadDone tells systemd the reloads are over (READY=1, with the
// summary), once none is left settling.
func (r *reloader) reloadDone() {
	if r.reloading && len(r.settling) == 0 && !r.stopping && !r.shutdownTold.Load() {
		r.notify.Ready(r.summary())
		r.reloading = false
	}
}

// apply loads the file's content data (or reports readErr) and hands the
// result to the broker and the supervisor. It returns the channel of the
// reload's settlement, or why it changed nothing.
func (r *reloader) apply(source supervisor.ReloadSource, data []byte, readErr error, env envSnapshot) (<-chan error, error) {
	if readErr != nil {
		err := fmt.Errorf("load config: %w", readErr)
		logConfigError(r.log, err, "reload failed: the running services are unchanged")
		return nil, err
	}
	r.lastRead, r.lastEnv = data, env
	next, err := r.parse(data)
	if err != nil {
		logConfigError(r.log, err, "reload failed: the running services are unchanged")
		return nil, err
	}
	// The env files only next names were not in the snapshot: what they
	// hold now is what a later report is measured against, lest the
	// next report of anything in a watched directory reload again. (An
	// edit of one between the parse and this read is seen at the next
	// reload only; the window is the parse's.)
	for p, v := range takeEnvSnapshot(next) {
		if _, ok := env[p]; !ok {
			env[p] = v
		}
	}
	if why := socketsChange(r.current, next); why != "" {
		r.log.Error("reload refused: the running services are unchanged", zap.String("reason", why))
		return nil, errors.New(why)
	}
	// The broker's queues change first: if it refuses (a queue to remove
	// still holds items), nothing changes at all.
	if r.broker != nil && !sameQueues(r.current.Queues, next.Queues) {
		if err := r.broker.SetQueues(brokerQueues(next.Queues)); err != nil {
			r.log.Error("reload refused: the running services are unchanged", zap.Error(err))
			return nil, err
		}
	}
	r.current = next
	if r.watchFiles != nil {
		r.watchFiles(envFilePaths(next))
	}
	if r.schedules != nil {
		r.schedules.SetQueues(next.Queues)
	}
	return r.sup.ReloadSettled(context.Background(), source, next)
}

// envFilePaths are the env files cfg's services read, each once (none
// for a nil cfg).
func envFilePaths(cfg *config.Config) []string {
	var paths []string
	if cfg == nil {
		return nil
	}
	for _, svc := range cfg.Services {
		for _, f := range svc.EnvFiles {
			if !slices.Contains(paths, f.Path) {
				paths = append(paths, f.Path)
			}
		}
	}
	return paths
}

// envSnapshot is what env files held: by path, a digest of the content,
// or why it could not be read.
type envSnapshot map[string]string

// takeEnvSnapshot reads the env files of cfg.
func takeEnvSnapshot(cfg *config.Config) envSnapshot {
	s := envSnapshot{}
	for _, p := range envFilePaths(cfg) {
		data, err := config.ReadEnvFile(p)
		if err != nil {
			s[p] = "error: " + err.Error()
			continue
		}
		s[p] = fmt.Sprintf("%x", sha256.Sum256(data))
	}
	return s
}

// changedSince lists the files of s that hold something else than in
// old, or that old did not look at, sorted.
func (s envSnapshot) changedSince(old envSnapshot) []string {
	var changed []string
	for _, p := range slices.Sorted(maps.Keys(s)) {
		if was, ok := old[p]; !ok || was != s[p] {
			changed = append(changed, p)
		}
	}
	return changed
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
// names with the same capacities and stores.
func sameQueues(a, b []*config.Queue) bool {
	return slices.EqualFunc(a, b, func(x, y *config.Queue) bool {
		return x.Name == y.Name && x.Capacity == y.Capacity && x.Store == y.Store
	})
}

// brokerQueues turns the configuration's queues into the broker's.
func brokerQueues(qs []*config.Queue) []ipc.QueueConfig {
	out := make([]ipc.QueueConfig, len(qs))
	for i, q := range qs {
		out[i] = ipc.QueueConfig{Name: q.Name, Capacity: q.Capacity, Forward: q.Store == config.StoreJetStream}
	}
	return out
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
