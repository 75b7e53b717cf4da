package ipc

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// fakeStore is an in-memory Store for the StoreServer's tests: a FIFO per
// queue, bounded by capacity (the items waiting, not those in flight), that
// records every acknowledgement so that tests can assert on them. Every
// change of its state closes changed, so that tests wait for events with
// a deadline instead of sleeping.
type fakeStore struct {
	capacity int // per queue; <= 0: unbounded

	mu      sync.Mutex
	queues  map[string][]*fakeRecord
	changed chan struct{} // closed and replaced at every change (for tests)
	moved   chan struct{} // closed and replaced when a queue's items change (for Put and Get)

	seq          uint64
	inFlight     int // handed out, not settled
	maxInFlight  int // the most ever in flight at once
	putWaiting   int // Puts waiting for room
	getWaiting   int // Gets waiting for an item
	gets         int // Get calls
	acks, nacks  []string
	ackCount     map[string]int // by body
	doubleSettle int            // Ack or Nack of an item already settled
}

// fakeRecord is an item of the fake store, queued or in flight.
type fakeRecord struct {
	queue      string
	body       []byte
	deliveries uint32 // the times it was handed out
	seq        uint64
}

// fakeItem is one delivery of a record: a StoredItem.
type fakeItem struct {
	s          *fakeStore
	rec        *fakeRecord
	deliveries uint32
	settled    bool // under s.mu
}

var errFakeNoQueue = errors.New("fake store: no such queue")

func newFakeStore(capacity int, queues ...string) *fakeStore {
	s := &fakeStore{
		capacity: capacity,
		queues:   make(map[string][]*fakeRecord),
		changed:  make(chan struct{}),
		moved:    make(chan struct{}),
		ackCount: make(map[string]int),
	}
	for _, q := range queues {
		s.queues[q] = nil
	}
	return s
}

// notifyLocked wakes the tests that wait for a change. Called with s.mu
// held.
func (s *fakeStore) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// movedLocked wakes the Puts and Gets that wait: items came or went (and
// the tests, as any change). Called with s.mu held.
func (s *fakeStore) movedLocked() {
	close(s.moved)
	s.moved = make(chan struct{})
	s.notifyLocked()
}

// fakeWait sleeps until ch closes, ctx ends or timer fires; it reports why
// it woke: nil for a change.
func fakeWait(ctx context.Context, ch <-chan struct{}, timer <-chan time.Time) error {
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-timer:
		return errFakeWaitOver
	}
}

var errFakeWaitOver = errors.New("fake store: wait over")

func storeTimer(wait time.Duration) (<-chan time.Time, func()) {
	if wait < 0 {
		return nil, func() {}
	}
	t := time.NewTimer(wait)
	return t.C, func() { t.Stop() }
}

func (s *fakeStore) Put(ctx context.Context, queue string, items [][]byte, wait time.Duration, waiting func()) (int, error) {
	timer, stop := storeTimer(wait)
	defer stop()
	n := 0
	for {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		s.mu.Lock()
		q, ok := s.queues[queue]
		if !ok {
			s.mu.Unlock()
			return n, errFakeNoQueue
		}
		stored := false
		for n < len(items) && (s.capacity <= 0 || len(q) < s.capacity) {
			s.seq++
			// The server's items are slices of its frame buffer: copy.
			q = append(q, &fakeRecord{queue: queue, body: append([]byte(nil), items[n]...), seq: s.seq})
			n++
			stored = true
		}
		s.queues[queue] = q
		if stored {
			s.movedLocked()
		}
		if n == len(items) {
			s.mu.Unlock()
			return n, nil
		}
		if wait == 0 {
			s.mu.Unlock()
			return n, fmt.Errorf("fake store: %s: %w", queue, ErrFull)
		}
		ch := s.moved
		if waiting != nil { // before the tests can see it wait
			waiting()
			waiting = nil
		}
		s.putWaiting++
		s.notifyLocked()
		s.mu.Unlock()
		err := fakeWait(ctx, ch, timer)
		s.mu.Lock()
		s.putWaiting--
		s.notifyLocked()
		s.mu.Unlock()
		switch {
		case errors.Is(err, errFakeWaitOver):
			return n, fmt.Errorf("fake store: %s: room did not come: %w", queue, ErrFull)
		case err != nil:
			return n, err
		}
	}
}

func (s *fakeStore) Get(ctx context.Context, queue string, maxItems int, wait time.Duration, waiting func()) ([]StoredItem, error) {
	timer, stop := storeTimer(wait)
	defer stop()
	s.mu.Lock()
	s.gets++
	s.mu.Unlock()
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		s.mu.Lock()
		q, ok := s.queues[queue]
		if !ok {
			s.mu.Unlock()
			return nil, errFakeNoQueue
		}
		if len(q) > 0 {
			n := min(maxItems, len(q))
			out := make([]StoredItem, n)
			for i, rec := range q[:n] {
				rec.deliveries++
				out[i] = &fakeItem{s: s, rec: rec, deliveries: rec.deliveries}
			}
			s.queues[queue] = append([]*fakeRecord(nil), q[n:]...)
			s.inFlight += n
			s.maxInFlight = max(s.maxInFlight, s.inFlight)
			s.movedLocked()
			s.mu.Unlock()
			return out, nil
		}
		if wait == 0 {
			s.mu.Unlock()
			return nil, nil
		}
		ch := s.moved
		if waiting != nil {
			waiting()
			waiting = nil
		}
		s.getWaiting++
		s.notifyLocked()
		s.mu.Unlock()
		err := fakeWait(ctx, ch, timer)
		s.mu.Lock()
		s.getWaiting--
		s.notifyLocked()
		s.mu.Unlock()
		switch {
		case errors.Is(err, errFakeWaitOver):
			return nil, nil
		case err != nil:
			return nil, err
		}
	}
}

func (it *fakeItem) Body() []byte       { return it.rec.body }
func (it *fakeItem) Deliveries() uint32 { return it.deliveries }

// settleLocked marks the item settled, and reports false (counting a
// double settle) if it was already. Called with s.mu held.
func (it *fakeItem) settleLocked() bool {
	s := it.s
	if it.settled {
		s.doubleSettle++
		s.notifyLocked()
		return false
	}
	it.settled = true
	s.inFlight--
	return true
}

func (it *fakeItem) Ack() error {
	s := it.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if !it.settleLocked() {
		return errors.New("fake store: ack of an item already settled")
	}
	s.acks = append(s.acks, string(it.rec.body))
	s.ackCount[string(it.rec.body)]++
	s.notifyLocked()
	return nil
}

// Nack puts the item back at the head of its queue, past capacity if need
// be (rule 6).
func (it *fakeItem) Nack() error {
	s := it.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if !it.settleLocked() {
		return errors.New("fake store: nack of an item already settled")
	}
	s.nacks = append(s.nacks, string(it.rec.body))
	s.queues[it.rec.queue] = append([]*fakeRecord{it.rec}, s.queues[it.rec.queue]...)
	s.movedLocked()
	return nil
}

// fakeState is a copy of what tests look at.
type fakeState struct {
	inFlight, maxInFlight  int
	putWaiting, getWaiting int
	gets                   int
	acks, nacks            []string
	doubleSettle           int
	queued                 map[string][]string
}

func (s *fakeStore) state() fakeState {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := fakeState{
		inFlight: s.inFlight, maxInFlight: s.maxInFlight,
		putWaiting: s.putWaiting, getWaiting: s.getWaiting, gets: s.gets,
		acks:         append([]string(nil), s.acks...),
		nacks:        append([]string(nil), s.nacks...),
		doubleSettle: s.doubleSettle,
		queued:       make(map[string][]string),
	}
	for name, q := range s.queues {
		for _, rec := range q {
			st.queued[name] = append(st.queued[name], string(rec.body))
		}
	}
	return st
}

// ackCounts copies the count of acks by body.
func (s *fakeStore) ackCounts() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := make(map[string]int, len(s.ackCount))
	for k, v := range s.ackCount {
		m[k] = v
	}
	return m
}

// await waits until cond holds of the store's state, woken by its changes,
// failing the test after testTimeout.
func (s *fakeStore) await(t testing.TB, what string, cond func(fakeState) bool) fakeState {
	t.Helper()
	deadline := time.NewTimer(testTimeout)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		ch := s.changed
		s.mu.Unlock()
		st := s.state()
		if cond(st) {
			return st
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("timed out waiting for the store: %s (state: in flight %d, put waiting %d, get waiting %d, acks %q, nacks %q, queued %q)",
				what, st.inFlight, st.putWaiting, st.getWaiting, st.acks, st.nacks, st.queued)
		}
	}
}

// preload queues bodies directly, as if put earlier.
func (s *fakeStore) preload(queue string, bodies ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, b := range bodies {
		s.seq++
		s.queues[queue] = append(s.queues[queue], &fakeRecord{queue: queue, body: []byte(b), seq: s.seq})
	}
	s.movedLocked()
}
