package cli

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/gotyledon/gotyledon/ipc"
	"github.com/gotyledon/gotyledon/supervisor"
)

// sentLog records what a notifier sends, in order.
type sentLog struct {
	mu   sync.Mutex
	msgs []string
	ch   chan string // each message as well, if not nil
}

func (s *sentLog) send(state string) error {
	s.mu.Lock()
	s.msgs = append(s.msgs, state)
	s.mu.Unlock()
	if s.ch != nil {
		s.ch <- state
	}
	return nil
}

func (s *sentLog) all() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.msgs...)
}

func testMonotonicUsec(t *testing.T) int64 {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return ts.Nano() / 1000
}

// A loop that does not answer within the interval gets no ping: the
// watchdog is pinged only after the loop answers.
func TestWatchdogMissedWhileLoopIsStuck(t *testing.T) {
	t.Parallel()
	sent := &sentLog{ch: make(chan string, 100)}
	core, logs := observer.New(zapcore.WarnLevel)
	n := &notifier{send: sent.send, log: zap.New(core)}

	const stuck = 3
	calls := make(chan int, stuck+1)
	var mu sync.Mutex
	count := 0
	noPingYet := func(when string) {
		for _, m := range sent.all() {
			if m == "WATCHDOG=1" {
				t.Errorf("WATCHDOG=1 sent %s", when)
			}
		}
	}
	status := func(ctx context.Context) (supervisor.Status, error) {
		mu.Lock()
		count++
		call := count
		mu.Unlock()
		if call <= stuck+1 {
			calls <- call
		}
		if call <= stuck {
			noPingYet("while the loop was stuck (call " + strconv.Itoa(call) + ")")
			<-ctx.Done()
			return supervisor.Status{}, ctx.Err()
		}
		if call == stuck+1 {
			noPingYet("before the loop first answered")
		}
		return supervisor.Status{Services: []supervisor.ServiceStatus{{Name: "w", Desired: 1, Running: 1}}}, nil
	}
	queues := func() []ipc.QueueStats { return []ipc.QueueStats{{Name: "jobs", Depth: 2}} }
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		n.watch(10*time.Millisecond, true, status, queues, quit)
	}()

	timeout := time.After(10 * time.Second)
	for want := 1; want <= stuck+1; want++ {
		select {
		case got := <-calls:
			if got != want {
				t.Fatalf("status call %d, want %d", got, want)
			}
		case <-timeout:
			t.Fatalf("status call %d did not come", want)
		}
	}
	// The 4th call answers: the ping follows, then the summary.
	for _, want := range []string{"WATCHDOG=1", "STATUS=w 1/1; jobs: 2 queued, 0 in flight"} {
		select {
		case got := <-sent.ch:
			if got != want {
				t.Fatalf("sent %q, want %q", got, want)
			}
		case <-timeout:
			t.Fatalf("%q not sent after the loop answered", want)
		}
	}
	if got := logs.FilterMessage("supervisor loop did not answer; watchdog not pinged").Len(); got != stuck {
		t.Errorf("%d warnings about a stuck loop, want %d", got, stuck)
	}
	// Later answers ping again; the unchanged summary is not sent again.
	select {
	case got := <-sent.ch:
		if got != "WATCHDOG=1" {
			t.Errorf("sent %q, want WATCHDOG=1 (the summary did not change)", got)
		}
	case <-timeout:
		t.Fatal("no second ping")
	}

	close(quit)
	// Drain what the ticks in flight send, so that watch is never blocked
	// on the channel.
	for {
		select {
		case <-done:
			for _, m := range sent.all()[2:] {
				if m != "WATCHDOG=1" {
					t.Errorf("sent %q after the first summary, want only pings", m)
				}
			}
			return
		case <-sent.ch:
		case <-timeout:
			t.Fatal("watch did not return after quit was closed")
		}
	}
}

// Without pingWatchdog, watch only keeps STATUS= current.
func TestWatchdogNotAskedForOnlyStatus(t *testing.T) {
	t.Parallel()
	sent := &sentLog{ch: make(chan string, 100)}
	n := &notifier{send: sent.send, log: zap.NewNop()}
	answers := make(chan supervisor.Status)
	status := func(ctx context.Context) (supervisor.Status, error) {
		select {
		case st := <-answers:
			return st, nil
		case <-ctx.Done():
			return supervisor.Status{}, ctx.Err()
		}
	}
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		n.watch(time.Millisecond, false, status, nil, quit)
	}()
	timeout := time.After(10 * time.Second)
	for _, st := range []supervisor.Status{
		{Services: []supervisor.ServiceStatus{{Name: "w", Desired: 2, Running: 1}}},
		{Services: []supervisor.ServiceStatus{{Name: "w", Desired: 2, Running: 1}}}, // unchanged: not sent
		{Services: []supervisor.ServiceStatus{{Name: "w", Desired: 2, Running: 2}}},
	} {
		select {
		case answers <- st:
		case <-timeout:
			t.Fatal("watch did not ask for the status")
		}
	}
	close(quit)
	select {
	case <-done:
	case <-timeout:
		t.Fatal("watch did not return after quit was closed")
	}
	got := strings.Join(sent.all(), " | ")
	if want := "STATUS=w 1/2 | STATUS=w 2/2"; got != want {
		t.Errorf("sent %q, want %q", got, want)
	}
}

func TestStatusSummary(t *testing.T) {
	t.Parallel()
	services := []supervisor.ServiceStatus{
		{Name: "printer", Desired: 5, Configured: 5, Running: 5},
		{Name: "producer", Desired: 2, Configured: 1, Running: 1, Backoff: 1},
	}
	queues := []ipc.QueueStats{{Name: "jobs", Depth: 12, InFlight: 2, Capacity: 100}, {Name: "mail"}}
	for _, tc := range []struct {
		name   string
		st     supervisor.Status
		queues []ipc.QueueStats
		want   string
	}{
		{"services and queues", supervisor.Status{Ready: true, Services: services}, queues,
			"printer 5/5, producer 1/2 (1 in backoff); jobs: 12 queued, 2 in flight, mail: 0 queued, 0 in flight"},
		{"services only", supervisor.Status{Services: services[:1]}, nil, "printer 5/5"},
		{"stopping", supervisor.Status{Stopping: true, Services: services}, queues[:1],
			"stopping: printer 5/5, producer 1/2 (1 in backoff); jobs: 12 queued, 2 in flight"},
		{"last reload applied", supervisor.Status{Services: services[:1], LastReload: &supervisor.ReloadResult{Source: "SIGHUP"}}, nil,
			"printer 5/5"},
		{"last reload failed", supervisor.Status{
			Services:   services,
			LastReload: &supervisor.ReloadResult{Source: "file", Error: "/etc/g.yaml:4:14: workers must be a number\n/etc/g.yaml:9:3: unknown field"},
		}, queues[1:],
			"printer 5/5, producer 1/2 (1 in backoff); mail: 0 queued, 0 in flight; last reload failed: /etc/g.yaml:4:14: workers must be a number"},
		{"stopping after a failed reload", supervisor.Status{
			Stopping: true, Services: services[:1], LastReload: &supervisor.ReloadResult{Error: "broker: queue jobs holds 3 items"},
		}, nil, "stopping: printer 5/5; last reload failed: broker: queue jobs holds 3 items"},
	} {
		if got := statusSummary(tc.st, tc.queues); got != tc.want {
			t.Errorf("%s:\n got %q\nwant %q", tc.name, got, tc.want)
		}
	}
}

// Without NOTIFY_SOCKET the notifier does nothing, and does not fail.
func TestNotifyWithoutSocketDoesNothing(t *testing.T) {
	t.Parallel()
	n := newSystemdNotifier(func(string) string { return "" }, zap.NewNop())
	if n.enabled() {
		t.Fatal("enabled without NOTIFY_SOCKET")
	}
	n.ready("x")
	n.reloading()
	n.status("y")
	n.stopping()
	n.watchdog()
	// watch too: it asks, and sends nothing.
	quit := make(chan struct{})
	asked := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		n.watch(time.Millisecond, true, func(context.Context) (supervisor.Status, error) {
			select {
			case asked <- struct{}{}:
			default:
			}
			return supervisor.Status{}, nil
		}, nil, quit)
	}()
	select {
	case <-asked:
	case <-time.After(10 * time.Second):
		t.Fatal("watch did not ask for the status")
	}
	close(quit)
	<-done
	if n2 := newSystemdNotifier(func(k string) string {
		if k == "NOTIFY_SOCKET" {
			return "/run/systemd/notify"
		}
		return ""
	}, zap.NewNop()); !n2.enabled() {
		t.Error("not enabled with NOTIFY_SOCKET set")
	}
}

// STATUS= goes out only when the summary changed, counting the summaries
// READY=1 and STOPPING=1 carried.
func TestNotifyStatusOnlyWhenChanged(t *testing.T) {
	t.Parallel()
	sent := &sentLog{}
	n := &notifier{send: sent.send, log: zap.NewNop()}
	n.status("a 1/1")
	n.status("a 1/1")
	n.ready("a 2/2")
	n.status("a 2/2")
	n.status("a 1/2")
	n.watchdog()
	n.status("a 1/2")
	n.stopping()
	n.status("stopping: workers are being stopped")
	n.status("stopping: a 0/2")
	want := []string{
		"STATUS=a 1/1",
		"READY=1\nSTATUS=a 2/2",
		"STATUS=a 1/2",
		"WATCHDOG=1",
		"STOPPING=1\nSTATUS=stopping: workers are being stopped",
		"STATUS=stopping: a 0/2",
	}
	if got := sent.all(); strings.Join(got, " | ") != strings.Join(want, " | ") {
		t.Errorf("sent %q,\nwant %q", got, want)
	}
}

// RELOADING=1 carries CLOCK_MONOTONIC in µs, taken when it is sent.
func TestNotifyReloadingMonotonicUsec(t *testing.T) {
	t.Parallel()
	sent := &sentLog{}
	n := &notifier{send: sent.send, log: zap.NewNop()}
	before := testMonotonicUsec(t)
	n.reloading()
	after := testMonotonicUsec(t)
	got := sent.all()
	if len(got) != 1 {
		t.Fatalf("sent %q, want one message", got)
	}
	rest, ok := strings.CutPrefix(got[0], "RELOADING=1\nMONOTONIC_USEC=")
	if !ok {
		t.Fatalf("sent %q, want RELOADING=1 and MONOTONIC_USEC", got[0])
	}
	usec, err := strconv.ParseInt(rest, 10, 64)
	if err != nil {
		t.Fatalf("MONOTONIC_USEC=%q: %v", rest, err)
	}
	if usec < before || usec > after {
		t.Errorf("MONOTONIC_USEC=%d, not within [%d, %d]", usec, before, after)
	}
}

// A send that fails is logged, and the manager goes on.
func TestNotifySendErrorIsLogged(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zapcore.WarnLevel)
	n := &notifier{send: func(string) error { return errors.New("connection refused") }, log: zap.New(core)}
	n.ready("a 1/1")
	n.watchdog()
	if got := logs.FilterMessage("cannot notify systemd").Len(); got != 2 {
		t.Errorf("%d warnings, want 2", got)
	}
}

// An edit that SIGHUP has applied already reaches the manager a second time
// from the file watch: that report is dropped, with nothing told to
// systemd; so is one while the file cannot be read (mid-swap).
func TestWatchReportOfAnAppliedEditIsDropped(t *testing.T) {
	var sent []string
	n := &notifier{send: func(s string) error { sent = append(sent, s); return nil }, log: zap.NewNop()}
	path := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(path, []byte("services: {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	m := &manager{cmd: &runCommand{Config: path}, log: zap.NewNop(), notify: n, lastRead: []byte("services: {}\n")}
	reply := make(chan error, 2)
	m.reload(reloadAsk{source: "file", reply: reply})
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	m.reload(reloadAsk{source: "file", reply: reply})
	for range 2 {
		if err := <-reply; err != nil {
			t.Errorf("dropped reload answered %v, want nil", err)
		}
	}
	if len(sent) != 0 {
		t.Errorf("systemd was told %q about a reload that did not happen", sent)
	}
}
