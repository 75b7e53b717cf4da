package manager

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/gotyledon/gotyledon/config"
	"github.com/gotyledon/gotyledon/ipc"
)

// fakeClock is a clock the test moves: after's channels fire when
// Advance passes their time, and armed reports each wait the scheduler
// starts, so that the test moves the clock only once it waits.
type fakeClock struct {
	mu      sync.Mutex
	t       time.Time
	waiters []fakeWaiter
	armed   chan time.Time // the time each wait ends at
}

type fakeWaiter struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock(t time.Time) *fakeClock {
	return &fakeClock{t: t, armed: make(chan time.Time, 64)}
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) after(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := fakeWaiter{at: c.t.Add(d), ch: make(chan time.Time, 1)}
	c.waiters = append(c.waiters, w)
	c.armed <- w.at
	return w.ch
}

// Advance moves the clock by d and fires the waits it passes.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if w.at.After(c.t) {
			kept = append(kept, w)
			continue
		}
		w.ch <- c.t
	}
	c.waiters = kept
}

// waitArmed returns the end of the next wait the scheduler starts.
func (c *fakeClock) waitArmed(t *testing.T) time.Time {
	t.Helper()
	select {
	case at := <-c.armed:
		return at
	case <-time.After(10 * time.Second):
		t.Fatal("the scheduler did not start waiting")
		return time.Time{}
	}
}

// fakePut records the puts, and answers each with err.
type fakePut struct {
	puts chan string // queue/item
	err  error
}

func (p *fakePut) put(_ context.Context, queue string, item []byte) error {
	p.puts <- queue + "/" + string(item)
	return p.err
}

// startScheduler runs a scheduler of queues on clock and put until the
// test ends.
func startScheduler(t *testing.T, queues []*config.Queue, clock *fakeClock, put *fakePut, log *zap.Logger) *queueScheduler {
	t.Helper()
	s := newQueueScheduler(queues, put.put, log)
	s.now, s.after = clock.now, clock.after
	done := make(chan error, 1)
	go func() { done <- s.Run() }()
	t.Cleanup(func() {
		s.Interrupt(nil)
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return s
}

// queueWith is a queue called name with the schedules of a file.
func queueWith(t *testing.T, name string, schedules ...config.QueueOption) *config.Queue {
	t.Helper()
	var d config.Declaration
	d.Service("s", config.Command("/bin/true"))
	d.Queue(name, schedules...)
	cfg, err := d.Resolve(nil)
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Queues[0]
}

// A one-minute schedule puts exactly one item a minute, none early: the
// clock moved a second short of each minute puts nothing.
func TestQueueSchedulerPutsOneItemAMinute(t *testing.T) {
	start := time.Date(2026, 12, 6, 10, 0, 30, 0, time.Local)
	clock := newFakeClock(start)
	put := &fakePut{puts: make(chan string, 16)}
	core, logs := observer.New(zap.InfoLevel)
	s := startScheduler(t, []*config.Queue{queueWith(t, "jobs", config.Scheduled("* * * * *", "tick", ""))}, clock, put, zap.New(core))

	want := time.Date(2026, 12, 6, 10, 1, 0, 0, time.Local)
	if at := clock.waitArmed(t); !at.Equal(want) {
		t.Fatalf("first wait ends at %v, want %v", at, want)
	}
	clock.Advance(29 * time.Second) // 10:00:59
	for minute := 1; minute <= 5; minute++ {
		select {
		case p := <-put.puts:
			t.Fatalf("minute %d: %s put a second early", minute, p)
		default:
		}
		clock.Advance(time.Second) // on the minute
		select {
		case p := <-put.puts:
			if p != "jobs/tick" {
				t.Fatalf("put %q", p)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("minute %d: nothing put", minute)
		}
		want = want.Add(time.Minute)
		if at := clock.waitArmed(t); !at.Equal(want) {
			t.Fatalf("after minute %d the wait ends at %v, want %v", minute, at, want)
		}
		clock.Advance(59 * time.Second)
	}
	select {
	case p := <-put.puts:
		t.Fatalf("a sixth item %s put a second before its minute", p)
	default:
	}
	st := s.addStats([]ipc.QueueStats{{Name: "jobs"}, {Name: "other"}})
	if sc := st[0].Scheduled; sc == nil || sc.Put != 5 || sc.Failed != 0 || len(sc.Next) != 1 || !sc.Next[0].At.Equal(want) || sc.Next[0].TimeZone != "Local" {
		t.Errorf("jobs' figures %+v, want 5 put and the next at %v", sc, want)
	}
	if st[1].Scheduled != nil {
		t.Errorf("a queue without schedules has figures %+v", st[1].Scheduled)
	}
	if n := logs.FilterMessage("scheduled item put").FilterField(zap.String("cron", "* * * * *")).FilterField(zap.String("time_zone", "Local")).Len(); n != 5 {
		t.Errorf("logged %d puts with their cron and zone, want 5", n)
	}
}

// A put that fails is counted and logged, and the schedule goes on.
func TestQueueSchedulerCountsFailedPuts(t *testing.T) {
	clock := newFakeClock(time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC))
	put := &fakePut{puts: make(chan string, 16), err: ipc.ErrTimeout}
	core, logs := observer.New(zap.InfoLevel)
	s := startScheduler(t, []*config.Queue{queueWith(t, "jobs", config.Scheduled("@every 10s", "x", "UTC"))}, clock, put, zap.New(core))
	for range 2 {
		clock.waitArmed(t)
		clock.Advance(10 * time.Second)
		<-put.puts
	}
	clock.waitArmed(t)
	if sc := s.addStats([]ipc.QueueStats{{Name: "jobs"}})[0].Scheduled; sc.Put != 0 || sc.Failed != 2 {
		t.Errorf("figures %+v, want 2 failed", sc)
	}
	if n := logs.FilterMessage("scheduled item skipped: the queue stayed full").Len(); n != 2 {
		t.Errorf("logged %v", logs.All())
	}
}

// A reload replaces the schedules: a changed one counts from the reload,
// an unchanged one keeps its next time, a removed one puts nothing more.
func TestQueueSchedulerReload(t *testing.T) {
	start := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	clock := newFakeClock(start)
	put := &fakePut{puts: make(chan string, 16)}
	kept := config.Scheduled("@every 7m", "kept", "UTC")
	s := startScheduler(t, []*config.Queue{
		queueWith(t, "a", kept, config.Scheduled("@every 5m", "changed", "UTC")),
		queueWith(t, "b", config.Scheduled("* * * * *", "removed", "UTC")),
	}, clock, put, zap.NewNop())
	clock.waitArmed(t)
	// minute moves the clock a minute on, to the end of the wait the
	// scheduler started (it looks at the clock at least every minute),
	// and returns what it put then.
	minute := func() []string {
		t.Helper()
		clock.Advance(time.Minute)
		var puts []string
		for {
			select {
			case p := <-put.puts:
				puts = append(puts, p)
			case <-clock.armed:
				// Its puts came before the wait: any left are buffered.
				for {
					select {
					case p := <-put.puts:
						puts = append(puts, p)
					default:
						return puts
					}
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the scheduler did not start waiting again")
			}
		}
	}
	for range 3 { // to 10:03
		if p := minute(); len(p) != 1 || p[0] != "b/removed" {
			t.Fatalf("put %v, want b/removed", p)
		}
	}

	s.SetQueues([]*config.Queue{queueWith(t, "a", kept, config.Scheduled("@every 3m", "changed", "UTC")), queueWith(t, "b")})
	if at := clock.waitArmed(t); !at.Equal(start.Add(4 * time.Minute)) {
		t.Fatalf("after the reload the wait ends at %v, want 10:04", at)
	}
	next := map[string]time.Time{}
	for _, q := range s.addStats([]ipc.QueueStats{{Name: "a"}, {Name: "b"}}) {
		for _, n := range q.Scheduled.Next {
			next[q.Name+" "+n.Cron] = n.At
		}
	}
	if len(next) != 2 || !next["a @every 7m"].Equal(start.Add(7*time.Minute)) || !next["a @every 3m"].Equal(start.Add(6*time.Minute)) {
		t.Errorf("next times after the reload %v, want @every 7m kept at 10:07 and @every 3m from the reload, 10:06", next)
	}
	for m := 4; m <= 10; m++ {
		var want []string
		switch m {
		case 6, 9:
			want = []string{"a/changed"}
		case 7:
			want = []string{"a/kept"}
		}
		if p := minute(); !slices.Equal(p, want) {
			t.Fatalf("10:%02d: put %v, want %v", m, p, want)
		}
	}
	st := s.addStats([]ipc.QueueStats{{Name: "b"}})[0].Scheduled
	if st == nil || st.Put != 3 || len(st.Next) != 0 {
		t.Errorf("b's figures after its schedule was removed %+v, want its 3 puts and no schedule", st)
	}
}

// Interrupt ends a put that waits for room.
func TestQueueSchedulerInterruptEndsAWaitingPut(t *testing.T) {
	clock := newFakeClock(time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC))
	entered := make(chan struct{})
	s := newQueueScheduler([]*config.Queue{queueWith(t, "jobs", config.Scheduled("@every 1s", "x", "UTC"))},
		func(ctx context.Context, _ string, _ []byte) error {
			close(entered)
			<-ctx.Done()
			return ctx.Err()
		}, zap.NewNop())
	s.now, s.after, s.putWait = clock.now, clock.after, time.Hour
	done := make(chan error, 1)
	go func() { done <- s.Run() }()
	clock.waitArmed(t)
	clock.Advance(time.Second)
	<-entered
	s.Interrupt(nil)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return while a put waited")
	}
	if !errors.Is(s.ctx.Err(), context.Canceled) {
		t.Errorf("context %v", s.ctx.Err())
	}
}
