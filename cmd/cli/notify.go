package cli

// Telling systemd how the manager is doing (sd_notify): READY=1 once the
// queue socket listens and every worker's first start has been answered;
// RELOADING=1 with MONOTONIC_USEC when a reload begins and READY=1 when it
// has been applied or refused (Type=notify with ExecReload on systemd 252,
// Type=notify-reload on 253 and later); STOPPING=1 when a shutdown begins;
// STATUS= a one-line summary; WATCHDOG=1 when systemd asks for it, sent
// only after the supervisor's loop has answered a status request, so that
// a stuck loop misses its ping and systemd restarts the manager.

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/gotyledon/gotyledon/ipc"
	"github.com/gotyledon/gotyledon/supervisor"
)

// notifier sends the manager's state to systemd. Its methods are safe from
// any goroutine; messages go out whole, one datagram each, in the order
// the calls are made.
type notifier struct {
	// send delivers one message; nil when the manager is not run by
	// systemd (no NOTIFY_SOCKET), and then every method does nothing.
	send func(state string) error
	log  *zap.Logger

	mu         sync.Mutex
	lastStatus string
	// sent counts the READY, RELOADING and STOPPING messages, so that a
	// summary taken before one of them is not sent after it.
	sent uint64
}

// newSystemdNotifier returns a notifier over $NOTIFY_SOCKET, or one that
// does nothing when it is not set.
func newSystemdNotifier(getenv func(string) string, log *zap.Logger) *notifier {
	n := &notifier{log: log}
	if getenv("NOTIFY_SOCKET") != "" {
		n.send = func(state string) error {
			_, err := daemon.SdNotify(false, state)
			return err
		}
	}
	return n
}

// enabled reports whether anyone listens.
func (n *notifier) enabled() bool { return n.send != nil }

func (n *notifier) notify(lines ...string) {
	if n.send == nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.sendLocked(lines)
}

func (n *notifier) sendLocked(lines []string) {
	if !strings.HasPrefix(lines[0], "STATUS=") && lines[0] != "WATCHDOG=1" {
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

// ready says the manager is up, or a reload is over.
func (n *notifier) ready(status string) { n.notify("READY=1", "STATUS="+status) }

// reloading says a reload begins, with the time systemd matches it by.
func (n *notifier) reloading() {
	n.notify("RELOADING=1", "MONOTONIC_USEC="+strconv.FormatInt(monotonicUsec(), 10))
}

// stopping says a shutdown begins.
func (n *notifier) stopping() { n.notify("STOPPING=1", "STATUS=stopping: workers are being stopped") }

// status updates the summary, if it changed.
func (n *notifier) status(s string) { n.statusSince(n.generation(), s) }

// generation is to be read before a summary is taken, and given with it to
// statusSince.
func (n *notifier) generation() uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.sent
}

// statusSince updates the summary, if it changed and no READY, RELOADING
// or STOPPING went out since generation gen: such a message carried a
// newer summary (or a reload is under way), which this one must not
// overwrite.
func (n *notifier) statusSince(gen uint64, s string) {
	if n.send == nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if s != n.lastStatus && gen == n.sent {
		n.sendLocked([]string{"STATUS=" + s})
	}
}

// watchdog pings systemd's watchdog.
func (n *notifier) watchdog() { n.notify("WATCHDOG=1") }

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

// statusSummary is the one line of STATUS=: each service's running and
// desired workers, then each queue's depth.
//
//	printer 5/5, producer 1/1 (1 in backoff); jobs: 12 queued, 2 in flight
func statusSummary(st supervisor.Status, queues []ipc.QueueStats) string {
	var b strings.Builder
	if st.Stopping {
		b.WriteString("stopping: ")
	}
	for i, s := range st.Services {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %d/%d", s.Name, s.Running, s.Desired)
		if s.Backoff > 0 {
			fmt.Fprintf(&b, " (%d in backoff)", s.Backoff)
		}
	}
	for i, q := range queues {
		if i == 0 {
			b.WriteString("; ")
		} else {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s: %d queued, %d in flight", q.Name, q.Depth, q.InFlight)
	}
	if r := st.LastReload; r != nil && r.Error != "" {
		first, _, _ := strings.Cut(r.Error, "\n")
		fmt.Fprintf(&b, "; last reload failed: %s", first)
	}
	return b.String()
}

// watch is the notifier's actor: every interval it asks the supervisor's
// loop for its status and, when the loop answers in time, pings the
// watchdog (if systemd asked for one) and updates STATUS=. It returns when
// quit is closed.
func (n *notifier) watch(interval time.Duration, pingWatchdog bool, status func(context.Context) (supervisor.Status, error),
	queues func() []ipc.QueueStats, quit <-chan struct{},
) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-quit:
			return
		case <-t.C:
		}
		// A loop that cannot answer within an interval is stuck: no ping,
		// and systemd, after WATCHDOG_USEC, restarts the manager.
		gen := n.generation()
		ctx, cancel := context.WithTimeout(context.Background(), interval)
		st, err := status(ctx)
		cancel()
		if err != nil {
			n.log.Warn("supervisor loop did not answer; watchdog not pinged", zap.Error(err), zap.Duration("waited", interval))
			continue
		}
		if pingWatchdog {
			n.watchdog()
		}
		var qs []ipc.QueueStats
		if queues != nil {
			qs = queues()
		}
		n.statusSince(gen, statusSummary(st, qs))
	}
}
