package service

import (
	"fmt"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Readiness, for services the configuration marks `ready: notify`: the
// manager gives each of their workers a notify socket of its own
// (NOTIFY_SOCKET) and reads systemd's sd_notify protocol on it. A rolling
// replacement moves on to the next worker only once the new one is ready.
//
// By default the worker runtime says READY=1 as it calls the service's Run.
// A service that is ready only later (a cache to load, a port to bind)
// implements ReadyReporter and calls Ready itself.

// ReadyReporter is implemented by a Service that tells the manager itself
// when it is ready, by calling Ready from Run. Without it, or when
// ReportsReady returns false, the worker runtime calls Ready as Run starts.
type ReadyReporter interface {
	ReportsReady() bool
}

// Ready tells the manager this worker is ready (READY=1). It does nothing,
// and returns nil, when the worker has no notify socket (its service is
// not `ready: notify`, or it does not run under gotyledon or systemd).
// Safe to call more than once and from any goroutine.
func Ready() error { return Notify("READY=1") }

// Status sets the worker's one-line status, which `gotyledon status --json`
// shows (STATUS=). Like Ready, it does nothing without a notify socket.
func Status(text string) error { return Notify("STATUS=" + text) }

// Notify sends state, newline-separated KEY=VALUE assignments of
// sd_notify(3), to the worker's notify socket ($NOTIFY_SOCKET), in one
// datagram. It does nothing, and returns nil, without a notify socket.
func Notify(state string) error {
	if _, err := daemon.SdNotify(false, state); err != nil {
		return fmt.Errorf("notify the manager: %w", err)
	}
	return nil
}
