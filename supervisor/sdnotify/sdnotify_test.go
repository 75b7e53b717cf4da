package sdnotify

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"
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
	n := &Notifier{send: sent.send, log: zap.New(core)}

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
	summary := func(ctx context.Context) (string, error) {
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
			return "", ctx.Err()
		}
		if call == stuck+1 {
			noPingYet("before the loop first answered")
		}
		return "w 1/1; jobs: 2 queued, 0 in flight", nil
	}
	r := newReporter(n, 10*time.Millisecond, true, summary)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = r.Run()
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

	r.Interrupt(nil)
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
	n := &Notifier{send: sent.send, log: zap.NewNop()}
	answers := make(chan string)
	summary := func(ctx context.Context) (string, error) {
		select {
		case st := <-answers:
			return st, nil
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	r := newReporter(n, time.Millisecond, false, summary)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = r.Run()
	}()
	timeout := time.After(10 * time.Second)
	for _, st := range []string{
		"w 1/2",
		"w 1/2", // unchanged: not sent
		"w 2/2",
	} {
		select {
		case answers <- st:
		case <-timeout:
			t.Fatal("watch did not ask for the status")
		}
	}
	r.Interrupt(nil)
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

// Without NOTIFY_SOCKET the notifier does nothing, and does not fail.
func TestNotifyWithoutSocketDoesNothing(t *testing.T) {
	t.Parallel()
	n := New(func(string) string { return "" }, zap.NewNop())
	if n.Enabled() {
		t.Fatal("enabled without NOTIFY_SOCKET")
	}
	n.Ready("x")
	n.Reloading()
	n.Status("y")
	n.Stopping()
	n.Watchdog()
	// The reporter too: it asks, and sends nothing.
	asked := make(chan struct{}, 1)
	r := newReporter(n, time.Millisecond, true, func(context.Context) (string, error) {
		select {
		case asked <- struct{}{}:
		default:
		}
		return "", nil
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = r.Run()
	}()
	select {
	case <-asked:
	case <-time.After(10 * time.Second):
		t.Fatal("the reporter did not ask for the status")
	}
	r.Interrupt(nil)
	r.Interrupt(nil) // twice is fine
	<-done
	if n2 := New(func(k string) string {
		if k == "NOTIFY_SOCKET" {
			return "/run/systemd/notify"
		}
		return ""
	}, zap.NewNop()); !n2.Enabled() {
		t.Error("not enabled with NOTIFY_SOCKET set")
	}
}

// STATUS= goes out only when the summary changed, counting the summaries
// READY=1 and STOPPING=1 carried.
func TestNotifyStatusOnlyWhenChanged(t *testing.T) {
	t.Parallel()
	sent := &sentLog{}
	n := &Notifier{send: sent.send, log: zap.NewNop()}
	n.Status("a 1/1")
	n.Status("a 1/1")
	n.Ready("a 2/2")
	n.Status("a 2/2")
	n.Status("a 1/2")
	n.Watchdog()
	n.Status("a 1/2")
	n.Stopping()
	n.Status("stopping: workers are being stopped")
	n.Status("stopping: a 0/2")
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
	n := &Notifier{send: sent.send, log: zap.NewNop()}
	before := testMonotonicUsec(t)
	n.Reloading()
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
	n := &Notifier{send: func(string) error { return errors.New("connection refused") }, log: zap.New(core)}
	n.Ready("a 1/1")
	n.Watchdog()
	if got := logs.FilterMessage("cannot notify systemd").Len(); got != 2 {
		t.Errorf("%d warnings, want 2", got)
	}
}

// A change reported by the supervisor updates STATUS= at once, without a
// watchdog ping, however far the next tick is; a burst of changes makes
// one update at its start and one for where it ended, not one each.
func TestStatusFollowsChanges(t *testing.T) {
	t.Parallel()
	sent := &sentLog{ch: make(chan string, 100)}
	n := &Notifier{send: sent.send, log: zap.NewNop()}
	var mu sync.Mutex
	summaries, text := 0, "a 0/2"
	summary := func(context.Context) (string, error) {
		mu.Lock()
		defer mu.Unlock()
		summaries++
		return text, nil
	}
	set := func(s string) {
		mu.Lock()
		defer mu.Unlock()
		text = s
	}
	changes := make(chan struct{}, 1)
	r := newReporter(n, time.Hour, true, summary)
	r.changes = changes
	// A gap far longer than the burst below takes, even on a loaded
	// machine: the burst falls within one gap.
	r.gap = time.Second
	go r.Run()
	defer r.Interrupt(nil)

	changes <- struct{}{}
	if got := <-sent.ch; got != "STATUS=a 0/2" {
		t.Fatalf("after a change: %q, want STATUS=a 0/2", got)
	}
	// A burst: the first is taken within the gap after the last update,
	// so it waits for the gap to end; those after it find it waiting.
	// (Summaries meanwhile: none.)
	for i := 1; i <= 50; i++ {
		set("a " + strconv.Itoa(i%3) + "/2")
		select {
		case changes <- struct{}{}:
		default:
		}
	}
	set("a 2/2")
	changes <- struct{}{}
	if got := <-sent.ch; got != "STATUS=a 2/2" {
		t.Fatalf("after the burst: %q, want where it ended, STATUS=a 2/2", got)
	}
	mu.Lock()
	taken := summaries
	mu.Unlock()
	// 2; 3 if the machine stalled for a gap between the first update and
	// the burst.
	if taken < 2 || taken > 3 {
		t.Errorf("%d summaries taken for a change and a burst of 51, want one per update: 2 (3 after a stall)", taken)
	}
	for _, m := range sent.all() {
		if m == "WATCHDOG=1" {
			t.Error("a change pinged the watchdog: only the interval's tick may")
		}
	}
}
