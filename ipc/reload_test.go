package ipc

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// waitingOn polls until queue q of h has gets waiting GETs and puts waiting
// PUTs (the broker has no event for a request starting to wait).
func waitingOn(t *testing.T, h *brokerHarness, name string, gets, puts int) {
	t.Helper()
	q := h.b.queue(name)
	eventually(t, fmt.Sprintf("%d GETs and %d PUTs waiting on %s", gets, puts, name), func() bool {
		q.mu.Lock()
		defer q.mu.Unlock()
		return q.liveGets() == gets && q.livePuts() == puts
	})
}

func queueNames(b *Broker) []string {
	var names []string
	for _, s := range b.Stats() {
		names = append(names, s.Name)
	}
	return names
}

func TestSetQueuesAddsQueue(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{})
	c := h.dial()
	ctx := ctxT(t)
	if err := c.TryPut("new", []byte("x")); !errors.Is(err, ErrNoSuchQueue) {
		t.Fatalf("put on a queue not yet configured: %v, want ErrNoSuchQueue", err)
	}
	if err := c.Put(ctx, "jobs", []byte("j")); err != nil {
		t.Fatal(err)
	}
	if err := h.b.SetQueues([]QueueConfig{{Name: "jobs"}, {Name: "new", Capacity: 3}}); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(queueNames(h.b), ","); got != "jobs,new" {
		t.Fatalf("Stats after adding: %s", got)
	}
	// The connection, opened before, uses the new queue.
	if err := c.Put(ctx, "new", []byte("x")); err != nil {
		t.Fatal(err)
	}
	d, err := c.Get(ctx, "new")
	if err != nil || string(d.Body) != "x" {
		t.Fatalf("get on the added queue: %v", err)
	}
	if err := c.Ack(ctx, d); err != nil {
		t.Fatal(err)
	}
	if s := h.stats("new"); s.Capacity != 3 || s.Put != 1 || s.Acked != 1 || s.Depth != 0 {
		t.Fatalf("added queue stats %+v", s)
	}
	// The unchanged queue keeps its item and counters.
	if s := h.stats("jobs"); s.Depth != 1 || s.Put != 1 || s.Capacity != DefaultCapacity {
		t.Fatalf("unchanged queue stats %+v", s)
	}
}

func TestSetQueuesGrowLetsWaitingPutIn(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{Queues: []QueueConfig{{Name: "small", Capacity: 1}}})
	p := h.dial()
	ctx := ctxT(t)
	if err := p.TryPut("small", []byte("1")); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Put(ctx, "small", []byte("2")) }()
	waitingOn(t, h, "small", 0, 1)
	if err := h.b.SetQueues([]QueueConfig{{Name: "small", Capacity: 2}}); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("waiting Put after the queue grew: %v", err)
	}
	if s := h.stats("small"); s.Capacity != 2 || s.Depth != 2 {
		t.Fatalf("stats %+v", s)
	}
}

func TestSetQueuesShrinkKeepsItems(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{Queues: []QueueConfig{{Name: "q", Capacity: 5}}})
	p, g := h.dial(), h.dial()
	ctx := ctxT(t)
	for i := range 5 {
		if err := p.TryPut("q", []byte{byte('0' + i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.b.SetQueues([]QueueConfig{{Name: "q", Capacity: 2}}); err != nil {
		t.Fatal(err)
	}
	if s := h.stats("q"); s.Capacity != 2 || s.Depth != 5 {
		t.Fatalf("after shrinking: %+v, want capacity 2 and every item kept", s)
	}
	if err := p.TryPut("q", []byte("x")); !errors.Is(err, ErrFull) {
		t.Fatalf("TryPut over the new capacity: %v, want ErrFull", err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Put(ctx, "q", []byte("5")) }()
	waitingOn(t, h, "q", 0, 1)
	// Depth 5 → 4 → 3 → 2: not under capacity, the PUT keeps waiting;
	// the fourth GET brings it to 1.
	for want := '0'; want < '4'; want++ {
		d, err := g.Get(ctx, "q")
		if err != nil || d.Body[0] != byte(want) {
			t.Fatalf("get: %q, %v; want %c", d.Body, err, want)
		}
		if err := g.Ack(ctx, d); err != nil {
			t.Fatal(err)
		}
		if want < '3' {
			select {
			case err := <-done:
				t.Fatalf("Put returned %v at depth %d, capacity 2", err, h.stats("q").Depth)
			default:
			}
			waitingOn(t, h, "q", 0, 1)
		}
	}
	// Depth 1 < 2: the PUT got in.
	if err := <-done; err != nil {
		t.Fatalf("Put once depth < capacity: %v", err)
	}
	for _, want := range []string{"4", "5"} {
		d, err := g.Get(ctx, "q")
		if err != nil || string(d.Body) != want {
			t.Fatalf("get: %v; want %s", err, want)
		}
		g.Ack(ctx, d)
	}
	if s := h.stats("q"); s.Depth != 0 || s.Put != 6 || s.Acked != 6 || s.Capacity != 2 {
		t.Fatalf("stats %+v", s)
	}
}

func TestSetQueuesRemovesEmptyQueue(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{Queues: []QueueConfig{{Name: "jobs"}, {Name: "old"}}})
	c, g := h.dial(), h.dial()
	ctx := ctxT(t)
	if err := c.Put(ctx, "jobs", []byte("j")); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := g.Get(ctx, "old"); done <- err }()
	waitingOn(t, h, "old", 1, 0)
	if err := h.b.SetQueues([]QueueConfig{{Name: "jobs"}}); err != nil {
		t.Fatal(err)
	}
	err := <-done
	var se *StatusError
	if !errors.Is(err, ErrNoSuchQueue) || !errors.As(err, &se) || se.Message != "queue removed" {
		t.Fatalf("GET waiting on a removed queue: %v, want NO_SUCH_QUEUE \"queue removed\"", err)
	}
	if err := c.TryPut("old", []byte("x")); !errors.Is(err, ErrNoSuchQueue) {
		t.Fatalf("put on a removed queue: %v", err)
	}
	if _, err := c.Get(ctx, "old"); !errors.Is(err, ErrNoSuchQueue) {
		t.Fatalf("get on a removed queue: %v", err)
	}
	if got := strings.Join(queueNames(h.b), ","); got != "jobs" {
		t.Fatalf("Stats after removing: %s", got)
	}
	// The connection that waited still works.
	if d, err := g.Get(ctx, "jobs"); err != nil || string(d.Body) != "j" {
		t.Fatalf("get on the kept queue: %v", err)
	}
	// Adding it back gives a new, empty queue.
	if err := h.b.SetQueues([]QueueConfig{{Name: "jobs"}, {Name: "old"}}); err != nil {
		t.Fatal(err)
	}
	if err := c.TryPut("old", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if s := h.stats("old"); s.Put != 1 || s.Depth != 1 {
		t.Fatalf("re-added queue %+v", s)
	}
}

func TestSetQueuesRefusesRemovingNonEmptyQueue(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{Queues: []QueueConfig{{Name: "a", Capacity: 4}, {Name: "waiting"}, {Name: "flying"}}})
	c := h.dial()
	ctx := ctxT(t)
	if err := c.Put(ctx, "waiting", []byte("w")); err != nil {
		t.Fatal(err)
	}
	if err := c.Put(ctx, "flying", []byte("f")); err != nil {
		t.Fatal(err)
	}
	d, err := c.Get(ctx, "flying")
	if err != nil {
		t.Fatal(err)
	}
	before := h.b.Stats()
	// Each call also adds a queue and resizes "a": none of it may happen.
	for _, tc := range []struct {
		keep, want string
	}{
		{"flying", `"waiting": 1 items waiting, 0 in flight`},
		{"waiting", `"flying": 0 items waiting, 1 in flight`},
	} {
		err := h.b.SetQueues([]QueueConfig{{Name: "a", Capacity: 1}, {Name: tc.keep}, {Name: "b"}})
		if !errors.Is(err, ErrQueueNotEmpty) || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("SetQueues removing a queue with items: %v, want ErrQueueNotEmpty naming %s", err, tc.want)
		}
		if after := h.b.Stats(); fmt.Sprint(after) != fmt.Sprint(before) {
			t.Fatalf("a refused SetQueues changed the queues:\n%+v\nwas\n%+v", after, before)
		}
		if err := c.TryPut("b", []byte("x")); !errors.Is(err, ErrNoSuchQueue) {
			t.Fatalf("queue added by a refused SetQueues: %v", err)
		}
	}
	// Invalid lists change nothing either.
	for _, qs := range [][]QueueConfig{
		{{Name: "a"}, {Name: "a"}},
		{{Name: "a"}, {Name: "9bad"}},
		{{Name: "a"}, {Name: strings.Repeat("x", 64)}},
	} {
		if err := h.b.SetQueues(qs); err == nil {
			t.Fatalf("SetQueues(%v) accepted", qs)
		}
	}
	if after := h.b.Stats(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("an invalid SetQueues changed the queues:\n%+v\nwas\n%+v", after, before)
	}
	// Once the in-flight item is acked, the queue may go.
	if err := c.Ack(ctx, d); err != nil {
		t.Fatal(err)
	}
	if err := h.b.SetQueues([]QueueConfig{{Name: "a"}, {Name: "waiting"}}); err != nil {
		t.Fatal(err)
	}
	if s := h.stats("waiting"); s.Depth != 1 || s.Put != 1 {
		t.Fatalf("kept queue %+v", s)
	}
}

// Producers and consumers use queue A while SetQueues adds and removes
// queue B (and resizes A): every item of A is consumed exactly once.
func TestSetQueuesWhileServing(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{Queues: []QueueConfig{{Name: "A", Capacity: 8}}})
	ctx := ctxT(t)
	const producers, consumers, perProducer = 3, 3, 300
	total := producers * perProducer
	var wg sync.WaitGroup
	errs := make(chan error, producers+consumers+2)
	for p := range producers {
		c := h.dial()
		wg.Go(func() {
			for i := range perProducer {
				if err := c.Put(ctx, "A", fmt.Appendf(nil, "%d-%d", p, i)); err != nil {
					errs <- fmt.Errorf("put: %w", err)
					return
				}
			}
		})
	}
	var mu sync.Mutex
	seen := make(map[string]int)
	got := make(chan struct{})
	count := 0
	for range consumers {
		c := h.dial()
		wg.Go(func() {
			for {
				ds, err := c.GetBatch(ctx, "A", 4)
				if err != nil {
					select {
					case <-got:
						return
					default:
					}
					errs <- fmt.Errorf("get: %w", err)
					return
				}
				if err := c.Ack(ctx, ds...); err != nil {
					errs <- fmt.Errorf("ack: %w", err)
					return
				}
				mu.Lock()
				for _, d := range ds {
					seen[string(d.Body)]++
				}
				count += len(ds)
				if count == total {
					close(got)
				}
				mu.Unlock()
			}
		})
	}
	// B users: requests on B succeed or get NO_SUCH_QUEUE, never hang.
	bc := h.dial()
	var bAnswered atomic.Int64 // GETs waiting on B answered by its removal
	wg.Go(func() {
		for {
			select {
			case <-got:
				return
			default:
			}
			_, err := bc.GetAutoAck(ctx, "B")
			var se *StatusError
			if errors.As(err, &se) && se.Message == "queue removed" {
				bAnswered.Add(1)
			}
			if err != nil && !errors.Is(err, ErrNoSuchQueue) {
				errs <- fmt.Errorf("get on B: %w", err)
				return
			}
		}
	})
	var reconf sync.WaitGroup
	reconf.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-got:
				return
			default:
			}
			qs := []QueueConfig{{Name: "A", Capacity: 4 + i%8}}
			if i%2 == 0 {
				qs = append(qs, QueueConfig{Name: "B"})
			}
			if err := h.b.SetQueues(qs); err != nil {
				errs <- fmt.Errorf("SetQueues: %w", err)
				return
			}
			h.b.Stats()
		}
	})
	select {
	case <-got:
	case err := <-errs:
		t.Fatal(err)
	case <-ctx.Done():
		t.Fatalf("timed out with %d of %d items consumed", count, total)
	}
	// Consumers still waiting on an empty A, and the B user: removing
	// every queue answers them, once the reloads stopped (a reload racing
	// this one would put the queues back).
	reconf.Wait()
	if err := h.b.SetQueues([]QueueConfig{}); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("%d GETs waiting on B answered by its removal", bAnswered.Load())
	for p := range producers {
		for i := range perProducer {
			if n := seen[fmt.Sprintf("%d-%d", p, i)]; n != 1 {
				t.Fatalf("item %d-%d consumed %d times", p, i, n)
			}
		}
	}
}
