package supervisor_test

// systemd's notification protocol, end to end: a real manager sends its
// READY=1, RELOADING=1, STOPPING=1, STATUS= and WATCHDOG=1 datagrams to a
// unixgram socket the test listens on as NOTIFY_SOCKET.
//
// That workers never see NOTIFY_SOCKET or WATCHDOG_USEC is checked by
// TestCommandWorkerEnvironment (process_test.go) and workerBaseEnv's unit
// test; not again here.

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// notifyMsg is one datagram the manager sent.
type notifyMsg struct {
	text string
	// at is the test's CLOCK_MONOTONIC, in µs, when it read the datagram:
	// after the manager sent it.
	at int64
}

// notifySocket is systemd's end of NOTIFY_SOCKET.
type notifySocket struct {
	path string
	msgs chan notifyMsg

	mu  sync.Mutex
	all []notifyMsg // every datagram read, pure STATUS= updates included
}

// notifyEnd is what the test sends itself to mark the end of the
// manager's datagrams, which all came before it.
const notifyEnd = "TEST-END"

// listenNotify listens on a unixgram socket in a short temporary directory
// (a socket's path has at most 107 bytes).
func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	dir, err := os.MkdirTemp("", "gtyn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := &notifySocket{path: filepath.Join(dir, "notify"), msgs: make(chan notifyMsg, 256)}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: s.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		close(done)
		conn.Close()
	})
	go func() {
		defer close(s.msgs)
		buf := make([]byte, 64<<10)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			m := notifyMsg{text: string(buf[:n]), at: monoUsec()}
			s.mu.Lock()
			s.all = append(s.all, m)
			s.mu.Unlock()
			select {
			case s.msgs <- m:
			case <-done:
				return
			}
		}
	}()
	return s
}

// isStatusOnly reports whether text is a pure STATUS= update, which the
// notifier sends on its own when the summary changes.
func isStatusOnly(text string) bool {
	return strings.HasPrefix(text, "STATUS=") && !strings.Contains(text, "\n")
}

// next returns the next datagram that is not a pure STATUS= update,
// failing the test if none comes within timeout.
func (s *notifySocket) next(t *testing.T, timeout time.Duration) notifyMsg {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case m, ok := <-s.msgs:
			if !ok {
				t.Fatal("the notify socket was closed")
			}
			if !isStatusOnly(m.text) {
				return m
			}
		case <-deadline:
			t.Fatalf("no notification within %v", timeout)
		}
	}
}

// end sends notifyEnd to the socket; next returns it after every datagram
// sent before.
func (s *notifySocket) end(t *testing.T) {
	t.Helper()
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: s.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(notifyEnd)); err != nil {
		t.Fatal(err)
	}
}

func (s *notifySocket) received() []notifyMsg {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]notifyMsg(nil), s.all...)
}

// monoUsec is CLOCK_MONOTONIC in µs, the clock of MONOTONIC_USEC.
func monoUsec() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err) // Linux always has it
	}
	return ts.Nano() / 1000
}

var reloadingRE = regexp.MustCompile(`^RELOADING=1\nMONOTONIC_USEC=([0-9]+)$`)

// checkReloading checks that m is RELOADING=1 with a MONOTONIC_USEC taken
// between before and m's arrival.
func checkReloading(t *testing.T, m notifyMsg, before int64) {
	t.Helper()
	sub := reloadingRE.FindStringSubmatch(m.text)
	if sub == nil {
		t.Fatalf("got %q, want RELOADING=1 and MONOTONIC_USEC", m.text)
	}
	usec, err := strconv.ParseInt(sub[1], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	if usec < before || usec > m.at {
		t.Errorf("MONOTONIC_USEC=%d, not within [%d, %d] (before the signal, when it came)", usec, before, m.at)
	}
}

var extendRE = regexp.MustCompile(`^EXTEND_TIMEOUT_USEC=[1-9][0-9]*$`)

// notifyProtocol checks the whole run's datagrams: each is a known
// message; EXTEND_TIMEOUT_USEC= comes only before the first READY; the
// first of READY, RELOADING and STOPPING is READY; every RELOADING is
// followed by exactly one READY before the next RELOADING, or by
// STOPPING (a shutdown during a rolling change ends the reload);
// nothing but STATUS= and WATCHDOG=1 after STOPPING; MONOTONIC_USEC never
// goes back. It returns how many RELOADING=1 it saw, and what is wrong.
func notifyProtocol(msgs []notifyMsg) (reloads int, problems []string) {
	var ready, reloading, stopping bool
	var lastUsec int64
	for i, m := range msgs {
		fail := func(why string) { problems = append(problems, fmt.Sprintf("datagram %d %q: %s", i, m.text, why)) }
		lines := strings.Split(m.text, "\n")
		switch {
		case m.text == notifyEnd:
		case isStatusOnly(m.text):
		case extendRE.MatchString(m.text):
			if ready || stopping {
				fail("EXTEND_TIMEOUT_USEC after the first READY or STOPPING")
			}
		case lines[0] == "READY=1":
			if len(lines) != 2 || !strings.HasPrefix(lines[1], "STATUS=") {
				fail("READY=1 without one STATUS=")
			}
			switch {
			case stopping:
				fail("READY after STOPPING")
			case !ready:
				ready = true
			case reloading:
				reloading = false
			default:
				fail("a second READY=1 without a RELOADING=1 before it")
			}
		case lines[0] == "RELOADING=1":
			sub := reloadingRE.FindStringSubmatch(m.text)
			if sub == nil {
				fail("RELOADING=1 without MONOTONIC_USEC")
			} else if usec, _ := strconv.ParseInt(sub[1], 10, 64); usec < lastUsec {
				fail(fmt.Sprintf("MONOTONIC_USEC went back from %d", lastUsec))
			} else {
				lastUsec = usec
			}
			reloads++
			switch {
			case stopping:
				fail("RELOADING after STOPPING")
			case !ready:
				fail("RELOADING before the first READY")
			case reloading:
				fail("RELOADING before the previous reload's READY")
			}
			reloading = true
		case lines[0] == "STOPPING=1":
			if stopping {
				fail("a second STOPPING")
			}
			stopping, reloading = true, false
		case m.text == "WATCHDOG=1":
		default:
			fail("not a message the manager sends")
		}
	}
	if reloading {
		problems = append(problems, "the last RELOADING=1 was never followed by READY=1")
	}
	return reloads, problems
}

// checkNotifyProtocol fails the test where msgs break notifyProtocol's
// rules, and returns how many reloads they notified.
func checkNotifyProtocol(t *testing.T, msgs []notifyMsg) int {
	t.Helper()
	reloads, problems := notifyProtocol(msgs)
	for _, p := range problems {
		t.Error(p)
	}
	return reloads
}

// The protocol check itself catches what it is there to catch.
func TestNotifyProtocolCheck(t *testing.T) {
	t.Parallel()
	const (
		ready   = "READY=1\nSTATUS=s 1/1"
		reload1 = "RELOADING=1\nMONOTONIC_USEC=100"
		reload2 = "RELOADING=1\nMONOTONIC_USEC=200"
		stop    = "STOPPING=1\nSTATUS=stopping: workers are being stopped"
	)
	for _, tc := range []struct {
		msgs    []string
		reloads int
		bad     bool
	}{
		{[]string{"EXTEND_TIMEOUT_USEC=100", "STATUS=s 0/1", ready, reload1, "STATUS=s 0/1", ready, reload2, ready, stop, "STATUS=x", "WATCHDOG=1", notifyEnd}, 2, false},
		{[]string{ready, reload1, stop}, 1, false}, // a shutdown during a rolling change
		{[]string{ready, "EXTEND_TIMEOUT_USEC=100"}, 0, true},
		{[]string{reload1, ready}, 1, true},                 // RELOADING before READY
		{[]string{ready, reload1, reload2, ready}, 2, true}, // two RELOADING in a row
		{[]string{ready, ready}, 0, true},                   // READY without RELOADING
		{[]string{ready, reload1}, 1, true},                 // RELOADING never answered
		{[]string{ready, stop, ready}, 0, true},             // READY after STOPPING
		{[]string{ready, stop, reload1, ready}, 1, true},    // RELOADING after STOPPING
		{[]string{ready, reload2, ready, reload1, ready}, 2, true},
		{[]string{ready, "RELOADING=1", ready}, 1, true},
		{[]string{"READY=1"}, 0, true},
		{[]string{ready, "FOO=1"}, 0, true},
	} {
		var msgs []notifyMsg
		for _, m := range tc.msgs {
			msgs = append(msgs, notifyMsg{text: m})
		}
		reloads, problems := notifyProtocol(msgs)
		if reloads != tc.reloads || (len(problems) > 0) != tc.bad {
			t.Errorf("%q: %d reloads, problems %q; want %d reloads, bad=%v", tc.msgs, reloads, problems, tc.reloads, tc.bad)
		}
	}
}

const notifyBase = `services:
  other:
    run: sleeper
  sleeper:
    run: sleeper
    workers: %s
queues:
  jobs: {}
`

// The manager asks systemd to wait past its start timeout for the
// workers' ready_timeout, tells it it is ready once every worker is,
// brackets each reload, good or bad, with RELOADING=1 and READY=1, and
// says STOPPING=1 on SIGTERM, and nothing after.
func TestNotifySequence(t *testing.T) {
	t.Parallel()
	ns := listenNotify(t)
	m := startManager(t, fmt.Sprintf(notifyBase, "2"), "NOTIFY_SOCKET="+ns.path)

	// (1) The default ready_timeout (90s) and 10s: EXTEND_TIMEOUT_USEC
	// first. Then READY=1 once all three workers are ready: the summary
	// names none as not ready.
	if got, want := ns.next(t, waitTimeout).text, "EXTEND_TIMEOUT_USEC=100000000"; got != want {
		t.Fatalf("first notification %q, want %q", got, want)
	}
	if got, want := ns.next(t, waitTimeout).text, "READY=1\nSTATUS=other 1/1, sleeper 2/2; jobs: 0 queued, 0 in flight"; got != want {
		t.Fatalf("first notification %q, want %q", got, want)
	}
	m.waitN("3 starts", 3, func(e entry) bool { return e.str("msg") == "worker started" })
	applied := func(e entry) bool { return e.str("msg") == "configuration applied" }
	failed := func(e entry) bool { return e.str("msg") == "reload failed: the running services are unchanged" }
	write := func(yaml string) {
		t.Helper()
		if err := os.WriteFile(m.config, []byte(yaml), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// (2) A good reload, to 3 sleepers, by an edit the watch sees. It
	// replaces no worker, so it has settled once applied: the new worker
	// may not run, nor be ready, when READY=1 goes out.
	readyAfterGood := regexp.MustCompile(`^READY=1\nSTATUS=other 1/1, sleeper [23]/3( \(not ready: worker 2\))?; jobs: 0 queued, 0 in flight$`)
	before := monoUsec()
	write(fmt.Sprintf(notifyBase, "3"))
	checkReloading(t, ns.next(t, waitTimeout), before)
	if got := ns.next(t, waitTimeout).text; !readyAfterGood.MatchString(got) {
		t.Fatalf("after a good reload: %q, want READY=1 with sleeper ?/3", got)
	}
	m.waitFor("reload applied", applied)
	m.waitFor("worker 2", started("sleeper", 2))

	// (3) A bad reload, by an edit and then by SIGHUP (which reloads even
	// when the file has not changed since): READY=1 all the same, and the
	// STATUS says why, by FILE:LINE:COL.
	readyAfterBad := regexp.MustCompile(`^READY=1\nSTATUS=other 1/1, sleeper [23]/3( \(not ready: worker 2\))?; jobs: 0 queued, 0 in flight; last reload failed: ` +
		regexp.QuoteMeta(m.config+":6:14: ") + `[^\n]+$`)
	before = monoUsec()
	write(fmt.Sprintf(notifyBase, "many"))
	checkReloading(t, ns.next(t, waitTimeout), before)
	if got := ns.next(t, waitTimeout).text; !readyAfterBad.MatchString(got) {
		t.Fatalf("after a bad edit: %q, want READY=1 with the reload's error at %s:6:14", got, m.config)
	}
	m.waitFor("reload failed", failed)
	before = monoUsec()
	m.signal(syscall.SIGHUP)
	checkReloading(t, ns.next(t, waitTimeout), before)
	if got := ns.next(t, waitTimeout).text; !readyAfterBad.MatchString(got) {
		t.Fatalf("after SIGHUP of a bad file: %q, want READY=1 with the reload's error at %s:6:14", got, m.config)
	}
	m.waitN("reloads failed", 2, failed)

	// (4) SIGTERM: STOPPING=1, then nothing but STATUS= updates.
	m.signal(syscall.SIGTERM)
	if got, want := ns.next(t, waitTimeout).text, "STOPPING=1\nSTATUS=stopping: workers are being stopped"; got != want {
		t.Fatalf("on SIGTERM: %q, want %q", got, want)
	}
	if code := m.waitExit(); code != 0 {
		t.Fatalf("manager exit code %d, want 0", code)
	}
	ns.end(t)
	for {
		got := ns.next(t, waitTimeout)
		if got.text == notifyEnd {
			break
		}
		t.Errorf("after STOPPING=1: %q", got.text)
	}

	all := ns.received()
	if n := checkNotifyProtocol(t, all); n != 3 {
		t.Errorf("%d reloads notified, want 3", n)
	}
	if n := len(m.all(applied)) + len(m.all(failed)); n != 3 {
		t.Errorf("%d reload outcomes logged, want 3", n)
	}
	for _, msg := range all {
		if isStatusOnly(msg.text) {
			t.Logf("STATUS update: %q", msg.text)
		}
	}
}

// With WATCHDOG_USEC set (and no WATCHDOG_PID, which means the manager),
// the manager pings the watchdog at half that interval while its loop
// answers.
func TestNotifyWatchdog(t *testing.T) {
	t.Parallel()
	ns := listenNotify(t)
	m := startManager(t, "services:\n  sleeper:\n    run: sleeper\n", "NOTIFY_SOCKET="+ns.path, "WATCHDOG_USEC=300000")
	pings, ready := 0, false
	for pings < 3 || !ready {
		switch got := ns.next(t, waitTimeout).text; {
		case got == "WATCHDOG=1":
			pings++
		case extendRE.MatchString(got) && !ready:
		case got == "READY=1\nSTATUS=sleeper 1/1" && !ready:
			ready = true
		default:
			t.Fatalf("got %q, want WATCHDOG=1 or the first READY=1", got)
		}
	}
	stopAndCheckProtocol(t, m, ns)
}

// statusUntil reads datagrams until one is want, and fails the test if a
// READY=1 comes first or want does not come within waitTimeout.
func (s *notifySocket) statusUntil(t *testing.T, want string) {
	t.Helper()
	deadline := time.After(waitTimeout)
	var seen []string
	for {
		select {
		case m, ok := <-s.msgs:
			if !ok {
				t.Fatal("the notify socket was closed")
			}
			if strings.HasPrefix(m.text, "READY=1") {
				t.Fatalf("%q before %q (after %q)", m.text, want, seen)
			}
			if m.text == want {
				return
			}
			seen = append(seen, m.text)
		case <-deadline:
			t.Fatalf("no %q within %v; got %q", want, waitTimeout, seen)
		}
	}
}

// The manager's READY=1 waits for every worker of the first start to be
// ready (here: to send READY=1 itself), and STATUS= follows each worker
// as it becomes ready. The watchdog interval (10 min) makes the
// Reporter's periodic refresh 5 min apart: every STATUS= seen here was
// sent for a change.
func TestNotifyReadyWaitsForEveryWorker(t *testing.T) {
	t.Parallel()
	ns := listenNotify(t)
	m := startManager(t, "services:\n  late:\n    run: late-ready\n    workers: 2\n    ready: notify\n",
		"NOTIFY_SOCKET="+ns.path, "WATCHDOG_USEC=600000000")
	m.waitN("2 workers loading", 2, output("late", "loading"))
	ns.statusUntil(t, "STATUS=starting: late 2/2 (not ready: workers 0 (loading), 1 (loading))")
	pids := map[int]int{}
	for _, e := range m.all(func(e entry) bool { return e.str("msg") == "worker started" }) {
		pids[e.int("worker")] = e.int("pid")
	}
	if len(pids) != 2 {
		t.Fatalf("worker pids %v, want 2", pids)
	}
	if err := syscall.Kill(pids[0], syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	ns.statusUntil(t, "STATUS=starting: late 2/2 (not ready: worker 1 (loading))")
	if err := syscall.Kill(pids[1], syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	if got, want := ns.next(t, waitTimeout).text, "READY=1\nSTATUS=late 2/2"; got != want {
		t.Fatalf("after both workers said READY=1: %q, want %q", got, want)
	}
	m.waitFor("manager ready", func(e entry) bool { return e.str("msg") == "manager ready: every worker is ready" })
	stopAndCheckProtocol(t, m, ns)
}

// A worker that is not ready within its ready_timeout does not hold the
// manager's READY=1 back past it; STATUS= then says which worker is not
// ready.
func TestNotifyReadyAfterTheReadyTimeout(t *testing.T) {
	t.Parallel()
	ns := listenNotify(t)
	// quick never says READY=1 and has 1s for it; late says it when told,
	// and has all the time it needs.
	m := startManager(t, `services:
  late:
    run: late-ready
    ready: notify
    ready_timeout: 1h
  quick:
    run: late-ready
    ready: notify
    ready_timeout: 1s
`, "NOTIFY_SOCKET="+ns.path)
	if got, want := ns.next(t, waitTimeout).text, "EXTEND_TIMEOUT_USEC=3610000000"; got != want {
		t.Fatalf("first notification %q, want %q (the longest ready_timeout and 10s)", got, want)
	}
	late := m.waitFor("late loading", output("late", "loading"))
	if err := syscall.Kill(late.int("pid"), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	// quick's worker stays silent: the manager gives up on it (and
	// restarts it) after its ready_timeout.
	want := regexp.MustCompile(`^READY=1\nSTATUS=late 1/1, quick [01]/1 \(not ready: worker 0( \(loading\))?\)$`)
	if got := ns.next(t, waitTimeout).text; !want.MatchString(got) {
		t.Fatalf("READY=1 after the ready_timeout: %q, want %s", got, want)
	}
	e := m.waitFor("manager ready", func(e entry) bool {
		return e.str("msg") == "manager ready: not every worker was ready within its ready_timeout"
	})
	if got := e.str("not_ready"); !strings.HasPrefix(got, "quick worker 0 (") {
		t.Errorf("not_ready %q, want quick worker 0", got)
	}
	stopAndCheckProtocol(t, m, ns)
}

// stopAndCheckProtocol stops m with SIGTERM, waits for its exit (code 0)
// and checks every datagram it sent ns against notifyProtocol.
func stopAndCheckProtocol(t *testing.T, m *manager, ns *notifySocket) {
	t.Helper()
	m.signal(syscall.SIGTERM)
	if code := m.waitExit(); code != 0 {
		t.Fatalf("manager exit code %d, want 0", code)
	}
	ns.end(t)
	for ns.next(t, waitTimeout).text != notifyEnd {
	}
	checkNotifyProtocol(t, ns.received())
}
