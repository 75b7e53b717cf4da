package supervisor

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// Worker notify sockets: the worker side of systemd's sd_notify protocol.
//
// Each process of a `ready: notify` service, or of one with a watchdog,
// gets a socket of its own: a Unix datagram socket in the manager's notify
// directory (0700, removed when Run returns), named by the process's token,
// whose path is the worker's NOTIFY_SOCKET. What arrives on it is that process's, whoever in its
// process tree sent it. A datagram is sd_notify's: KEY=VALUE assignments,
// one per line. The manager acts on
//
//	READY=1               the worker is ready
//	STATUS=text           the worker's own one-line status, shown by status
//	STOPPING=1            logged
//	EXTEND_TIMEOUT_USEC=N before READY=1: ready_timeout is now N µs away
//	WATCHDOG=1            with a watchdog: the worker is alive (watchdog.go)
//	WATCHDOG=trigger      with a watchdog: abort it now
//
// and ignores the rest. The socket is closed once the process has exited.

// notifyMaxDatagram bounds a datagram read; systemd takes the same.
const notifyMaxDatagram = 4096

// workerNotified: token's process sent a notify datagram.
type workerNotified struct {
	token    uint64
	ready    bool
	stopping bool
	watchdog bool          // WATCHDOG=1
	trigger  bool          // WATCHDOG=trigger: act as on a missed ping, now
	status   *string       // STATUS=, if the datagram had one
	extend   time.Duration // EXTEND_TIMEOUT_USEC=, if it had one
}

// readyTimedOut: a ready: notify process did not send READY=1 within its
// ready_timeout; seq as readyDue's.
type readyTimedOut struct{ token, seq uint64 }

func (workerNotified) isEvent() {}
func (readyTimedOut) isEvent()  {}

// notifySocket is one process's notify socket.
type notifySocket struct {
	conn *net.UnixConn
	path string
}

// openNotify creates the notify socket of token's process and starts
// reading it. The directory is made on first use.
func (s *Supervisor) openNotify(token uint64) (*notifySocket, error) {
	ns, err := s.listenNotify(token)
	if errors.Is(err, syscall.ENOENT) {
		// The directory is gone (a clean-up of /tmp): make a new one.
		s.notifyDir = ""
		ns, err = s.listenNotify(token)
	}
	return ns, err
}

func (s *Supervisor) listenNotify(token uint64) (*notifySocket, error) {
	if s.notifyDir == "" {
		base := os.Getenv("XDG_RUNTIME_DIR")
		if d, _, _ := strings.Cut(os.Getenv("RUNTIME_DIRECTORY"), ":"); d != "" {
			base = d
		}
		if base == "" {
			base = os.TempDir()
		}
		dir, err := os.MkdirTemp(base, "gotyledon-notify-")
		if err != nil {
			return nil, fmt.Errorf("create notify directory: %w", err)
		}
		s.notifyDir = dir
	}
	path := filepath.Join(s.notifyDir, strconv.FormatUint(token, 10))
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("create notify socket: %w", err)
	}
	go readNotify(conn, token, func(ev event) { s.inbox.put(ev) }, s.log)
	return &notifySocket{conn: conn, path: path}, nil
}

// close closes the socket (its reader returns) and removes its file. Safe
// on nil.
func (n *notifySocket) close() {
	if n == nil {
		return
	}
	n.conn.Close()
	os.Remove(n.path)
}

// removeNotifyDir removes the notify directory, once every socket in it is
// closed.
func (s *Supervisor) removeNotifyDir() {
	if s.notifyDir != "" {
		os.RemoveAll(s.notifyDir)
		s.notifyDir = ""
	}
}

// readNotify reads token's datagrams until conn is closed, posting each as
// a workerNotified.
func readNotify(conn *net.UnixConn, token uint64, post func(event), log *zap.Logger) {
	buf := make([]byte, notifyMaxDatagram)
	for {
		n, _, err := conn.ReadFromUnix(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				log.Warn("read worker notify socket", zap.Error(err))
			}
			return
		}
		if ev, ok := parseNotify(token, buf[:n]); ok {
			post(ev)
		}
	}
}

// parseNotify reads one datagram; ok is false if nothing in it concerns
// the manager.
func parseNotify(token uint64, b []byte) (ev workerNotified, ok bool) {
	ev.token = token
	for line := range strings.SplitSeq(string(b), "\n") {
		k, v, found := strings.Cut(line, "=")
		if !found {
			continue
		}
		switch k {
		case "READY":
			if v == "1" {
				ev.ready, ok = true, true
			}
		case "STOPPING":
			if v == "1" {
				ev.stopping, ok = true, true
			}
		case "WATCHDOG":
			switch v {
			case "1":
				ev.watchdog, ok = true, true
			case "trigger":
				ev.trigger, ok = true, true
			}
		case "STATUS":
			status := v
			ev.status, ok = &status, true
		case "EXTEND_TIMEOUT_USEC":
			if us, err := strconv.ParseUint(v, 10, 63); err == nil && us > 0 {
				ev.extend, ok = time.Duration(min(us, uint64(time.Duration(1<<62)/time.Microsecond)))*time.Microsecond, true
			}
		}
	}
	return ev, ok
}

// onNotified acts on what token's process sent.
func (s *Supervisor) onNotified(ev workerNotified) {
	w := s.byToken[ev.token]
	if w == nil {
		return
	}
	if ev.status != nil {
		w.statusText = *ev.status
	}
	if ev.stopping {
		s.log.Debug("worker says it is stopping", s.fields(w)...)
	}
	if ev.watchdog || ev.trigger {
		s.onWatchdogPing(w, ev.trigger)
	}
	if !w.notifyMode() {
		return // readiness is min_uptime's: READY=1 and EXTEND mean nothing
	}
	if ev.extend > 0 && !w.ready && w.cancelReady != nil {
		s.armReadyTimer(w, ev.extend, true)
	}
	if ev.ready && !w.ready {
		switch w.state {
		case stateStarting:
			w.readyEarly = true // READY=1 overtook the start's report
		case stateRunning:
			cancel(&w.cancelReady)
			s.onReady(w)
		}
	}
}

// onReadyTimedOut stops a process that was not ready in time: one that
// replaces a worker for a rolling change halts the change, and its slot
// starts again at once on the previous definition; any other is started
// again once it has stopped, as after a crash (backing off if it keeps
// failing).
func (s *Supervisor) onReadyTimedOut(w *worker) {
	w.cancelReady = nil
	reason := fmt.Errorf("%s worker %d not ready within %v", w.key.service, w.key.id, w.svc.ReadyTimeout)
	s.log.Warn("worker not ready in time; stopping it", s.fields(w, zap.Duration("ready_timeout", w.svc.ReadyTimeout))...)
	if s.replacementFailed(w) {
		s.revert(w, reason)
		w.failures = 0
	} else {
		w.aborted = true // restarted as after a crash, with its backoff
	}
	s.stop(w)
}
