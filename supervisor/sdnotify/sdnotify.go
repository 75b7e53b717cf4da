// Package sdnotify tells systemd how the manager is doing, in the protocol
// of sd_notify(3): EXTEND_TIMEOUT_USEC while the first start waits for its
// workers to be ready, READY=1 once they are, RELOADING=1 with
// MONOTONIC_USEC when a reload begins and READY=1 when it has settled (so
// the same manager serves Type=notify with ExecReload on systemd 252 and
// Type=notify-reload on 253 and later), STOPPING=1 when a shutdown begins,
// STATUS= a one-line summary, and WATCHDOG=1 when systemd asks for it.
//
// A Notifier sends the messages; a Reporter is the actor that keeps STATUS=
// current, as the workers change, and pings the watchdog, each only after
// the supervisor has answered (its loop and its process table: see the
// manager's summary function), so that a stuck supervisor misses its ping
// and systemd restarts the manager.
package sdnotify

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Notifier sends the manager's state to systemd. Its methods are safe from
// any goroutine; messages go out whole, one datagram each, in the order
// the calls are made. Without $NOTIFY_SOCKET every method does nothing.
type Notifier struct {
	// send delivers one message; nil when the manager is not run by
	// systemd (no NOTIFY_SOCKET).
	send func(state string) error
	log  *zap.Logger

	mu         sync.Mutex
	lastStatus string
	// sent counts the READY, RELOADING and STOPPING messages, so that a
	// summary taken before one of them is not sent after it.
	sent uint64
}

// New returns a Notifier for systemd, or one that does nothing when getenv
// finds no $NOTIFY_SOCKET. The messages go to the socket the process's own
// environment names (go-systemd reads it): pass os.Getenv outside tests.
// Failed sends are logged to log (nil: not logged).
func New(getenv func(string) string, log *zap.Logger) *Notifier {
	if log == nil {
		log = zap.NewNop()
	}
	n := &Notifier{log: log}
	if getenv("NOTIFY_SOCKET") != "" {
		n.send = func(state string) error {
			_, err := daemon.SdNotify(false, state)
			return err
		}
	}
	return n
}

// Enabled reports whether anyone listens.
func (n *Notifier) Enabled() bool { return n.send != nil }

func (n *Notifier) notify(lines ...string) {
	if n.send == nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.sendLocked(lines)
}

func (n *Notifier) sendLocked(lines []string) {
	switch lines[0] {
	case "READY=1", "RELOADING=1", "STOPPING=1":
		n.sent++
	}
	for _, l := range lines {
		if s, ok := strings.CutPrefix(l, "STATUS="); ok {
			n.lastStatus = s
		}
	}
	if err := n.send(strings.Join(lines, "\n")); err != nil {
		n.log.Warn("cannot notify systemd", zap.Error(err))
	}
}

// Ready says the manager is up, or a reload is over, with its summary.
func (n *Notifier) Ready(status string) { n.notify("READY=1", "STATUS="+status) }

// ExtendTimeout asks systemd to wait d more for the next message (here:
// READY=1), beyond TimeoutStartSec if need be: the first start waits for
// its workers' readiness up to their ready_timeout, which the unit's
// start timeout must not cut short.
func (n *Notifier) ExtendTimeout(d time.Duration) {
	if d > 0 {
		n.notify("EXTEND_TIMEOUT_USEC=" + strconv.FormatInt(d.Microseconds(), 10))
	}
}

// Reloading says a reload begins, with the time systemd matches it by.
func (n *Notifier) Reloading() {
	n.notify("RELOADING=1", "MONOTONIC_USEC="+strconv.FormatInt(monotonicUsec(), 10))
}

// Stopping says a shutdown begins.
func (n *Notifier) Stopping() { n.notify("STOPPING=1", "STATUS=stopping: workers are being stopped") }

// Status updates the summary, if it changed.
func (n *Notifier) Status(s string) { n.statusSince(n.generation(), s) }

// generation is to be read before a summary is taken, and given with it to
// statusSince.
func (n *Notifier) generation() uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.sent
}

// statusSince updates the summary, if it changed and no READY, RELOADING
// or STOPPING went out since generation gen: such a message carried a
// newer summary (or a reload is under way), which this one must not
// overwrite.
func (n *Notifier) statusSince(gen uint64, s string) {
	if n.send == nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if s != n.lastStatus && gen == n.sent {
		n.sendLocked([]string{"STATUS=" + s})
	}
}

// Watchdog pings systemd's watchdog.
func (n *Notifier) Watchdog() { n.notify("WATCHDOG=1") }

func monotonicUsec() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return ts.Nano() / 1000
}

// watchdogInterval is how often systemd wants WATCHDOG=1: half of
// WATCHDOG_USEC, as sd_watchdog_enabled(3) advises; 0 if it wants none.
func watchdogInterval() time.Duration {
	d, err := daemon.SdWatchdogEnabled(false)
	if err != nil || d <= 0 {
		return 0
	}
	return d / 2
}

// statusEvery is how often a Reporter refreshes STATUS= when systemd wants
// no watchdog: the figures that change without a worker changing (queue
// depths) are that stale at most.
const statusEvery = 5 * time.Second

// statusGap is the least time between two STATUS= updates made for
// changes: a burst of changes (a whole service restarting) makes one
// update at its start and one at most every statusGap after, the last of
// which shows where the burst ended.
const statusGap = 100 * time.Millisecond

// Reporter is the Notifier's actor. Every interval it asks for a summary,
// which takes an answer from the supervisor's loop, and when one comes in
// time it pings the watchdog (if systemd asked for one) and updates
// STATUS=. Whenever the supervisor reports a change it updates STATUS=
// too, at most once every statusGap. Run is its execute function and
// Interrupt its interrupt.
type Reporter struct {
	n        *Notifier
	interval time.Duration
	watchdog bool
	// summary returns the one-line STATUS= text. It must fail when the
	// loop does not answer before ctx ends: then no ping goes out.
	summary func(ctx context.Context) (string, error)
	// changes receives a value when the summary may have changed
	// (supervisor.Supervisor.Changes); nil: none.
	changes <-chan struct{}
	gap     time.Duration

	quit     chan struct{}
	quitOnce sync.Once
}

// NewReporter returns the Reporter of n: it pings every half of
// $WATCHDOG_USEC when systemd asked for a watchdog, and otherwise
// refreshes STATUS= every 5 s; and it updates STATUS= on every value from
// changes (nil: never).
func NewReporter(n *Notifier, changes <-chan struct{}, summary func(ctx context.Context) (string, error)) *Reporter {
	interval, watchdog := watchdogInterval(), true
	if interval == 0 {
		interval, watchdog = statusEvery, false
	}
	r := newReporter(n, interval, watchdog, summary)
	r.changes = changes
	return r
}

func newReporter(n *Notifier, interval time.Duration, watchdog bool, summary func(context.Context) (string, error)) *Reporter {
	return &Reporter{n: n, interval: interval, watchdog: watchdog, summary: summary, gap: statusGap, quit: make(chan struct{})}
}

// Run reports until Interrupt. It returns nil.
func (r *Reporter) Run() error {
	t := time.NewTicker(r.interval)
	defer t.Stop()
	var (
		lastChange time.Time
		held       <-chan time.Time // a change waits for the gap to end
	)
	for {
		select {
		case <-r.quit:
			return nil
		case <-t.C:
			r.report(true)
			continue
		case <-r.changes:
			if wait := r.gap - time.Since(lastChange); wait > 0 {
				if held == nil {
					held = time.After(wait)
				}
				continue
			}
		case <-held:
		}
		held = nil
		lastChange = time.Now()
		r.report(false)
	}
}

// report takes a summary and updates STATUS=, and pings the watchdog if
// ping and systemd wants one.
func (r *Reporter) report(ping bool) {
	// A loop that cannot answer within an interval is stuck: no ping,
	// and systemd, after WATCHDOG_USEC, restarts the manager.
	gen := r.n.generation()
	ctx, cancel := context.WithTimeout(context.Background(), r.interval)
	s, err := r.summary(ctx)
	cancel()
	if err != nil {
		if ping {
			r.n.log.Warn("supervisor loop did not answer; watchdog not pinged", zap.Error(err), zap.Duration("waited", r.interval))
		}
		return
	}
	if ping && r.watchdog {
		r.n.Watchdog()
	}
	r.n.statusSince(gen, s)
}

// Interrupt ends Run. Safe to call more than once, and before Run.
func (r *Reporter) Interrupt(error) { r.quitOnce.Do(func() { close(r.quit) }) }
