package ipc

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// storeHarness is a StoreServer over a fakeStore, serving a real Unix
// socket in a fresh directory, closed when the test ends.
type storeHarness struct {
	t      *testing.T
	s      *StoreServer
	store  *fakeStore
	path   string
	served chan error
}

// newStoreHarness serves store's queues (opts.Queues nil: "jobs") with
// opts, through opts.Store if set (a wrapper of store).
func newStoreHarness(t *testing.T, store *fakeStore, opts StoreServerOptions) *storeHarness {
	t.Helper()
	if opts.Queues == nil {
		opts.Queues = []string{"jobs"}
	}
	if opts.Store == nil {
		opts.Store = store
	}
	s, err := NewStoreServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "store.sock")
	if len(path) > 100 { // sun_path is 108 bytes
		dir, err = os.MkdirTemp("", "gtqs")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		path = filepath.Join(dir, "store.sock")
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	h := &storeHarness{t: t, s: s, store: store, path: path, served: make(chan error, 1)}
	go func() { h.served <- s.Serve(l) }()
	t.Cleanup(func() {
		done := make(chan struct{})
		go func() { s.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(testTimeout):
			t.Errorf("StoreServer.Close did not return")
			return
		}
		select {
		case err := <-h.served:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(testTimeout):
			t.Errorf("Serve did not return after Close")
		}
	})
	return h
}

func (h *storeHarness) dial() *Client {
	h.t.Helper()
	return h.dialT(h.t)
}

func (h *storeHarness) dialT(t *testing.T) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	c, err := Dial(ctx, h.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// raw dials a hand-driven connection, after HELLO and WELCOME if hello.
func (h *storeHarness) raw(t *testing.T, hello bool) *rawConn {
	t.Helper()
	return dialRaw(t, h.path, hello)
}

// closeServer closes the server, failing the test if Close does not return
// within testTimeout.
func (h *storeHarness) closeServer() {
	h.t.Helper()
	done := make(chan struct{})
	go func() { h.s.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(testTimeout):
		h.t.Fatal("StoreServer.Close did not return")
	}
}

// expectResult reads the next frame, which must be RESULT id with status
// (and n, unless n < 0).
func (rc *rawConn) expectStoreResult(id uint32, status uint16, n int) *resultFrame {
	rc.t.Helper()
	f := rc.read()
	r, ok := f.(*resultFrame)
	if !ok || r.ID != id || r.Status != status || (n >= 0 && r.N != uint32(n)) {
		rc.t.Fatalf("got %#v, want RESULT id %d %s n %d", f, id, statusName(status), n)
	}
	return r
}

// expectItems reads the next frame, which must be ITEMS for id.
func (rc *rawConn) expectItems(id uint32) *itemsFrame {
	rc.t.Helper()
	f := rc.read()
	it, ok := f.(*itemsFrame)
	if !ok || it.ID != id {
		rc.t.Fatalf("got %#v, want ITEMS id %d", f, id)
	}
	return it
}

// statusCode is the protocol status an error carries (a *StatusError), or
// -1.
func statusCode(err error) int {
	var se *StatusError
	if errors.As(err, &se) {
		return int(se.Code)
	}
	return -1
}

func deliveryBodies(ds []*Delivery) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = string(d.Body)
	}
	return out
}

// A put, a get and an ack through the real client: delivery ids count up
// from FirstDelivery+1, deliveries is 1, and the store sees each ack.
func TestStoreServerPutGetAckRoundTrip(t *testing.T) {
	for _, first := range []uint64{0, StoreDeliveryBase, 1000} {
		t.Run(fmt.Sprint(first), func(t *testing.T) {
			store := newFakeStore(0, "jobs")
			h := newStoreHarness(t, store, StoreServerOptions{FirstDelivery: first})
			c := h.dialT(t)
			ctx := ctxT(t)
			if err := c.Put(ctx, "jobs", []byte("one")); err != nil {
				t.Fatal(err)
			}
			if n, err := c.PutBatch(ctx, "jobs", [][]byte{[]byte("two"), []byte("three")}); err != nil || n != 2 {
				t.Fatalf("PutBatch: %d, %v", n, err)
			}
			if st := store.state(); !slices.Equal(st.queued["jobs"], []string{"one", "two", "three"}) {
				t.Fatalf("store holds %q, want one two three in order", st.queued["jobs"])
			}
			d1, err := c.Get(ctx, "jobs")
			if err != nil {
				t.Fatal(err)
			}
			if string(d1.Body) != "one" || d1.Deliveries != 1 || d1.Queue != "jobs" {
				t.Fatalf("got %+v, want one, delivered once", d1)
			}
			if d1.ID != first+1 {
				t.Fatalf("first delivery id %d, want FirstDelivery+1 = %d", d1.ID, first+1)
			}
			ds, err := c.GetBatch(ctx, "jobs", 5)
			if err != nil {
				t.Fatal(err)
			}
			if got := deliveryBodies(ds); !slices.Equal(got, []string{"two", "three"}) {
				t.Fatalf("GetBatch: %q, want two three", got)
			}
			for i, d := range ds {
				if d.ID != first+2+uint64(i) || d.Deliveries != 1 {
					t.Fatalf("delivery %d: id %d deliveries %d, want id %d, 1", i, d.ID, d.Deliveries, first+2+uint64(i))
				}
			}
			if st := store.state(); st.inFlight != 3 || len(st.acks) != 0 {
				t.Fatalf("store: %d in flight, acks %q; want 3, none", st.inFlight, st.acks)
			}
			if err := c.Ack(ctx, d1); err != nil {
				t.Fatal(err)
			}
			if err := c.Ack(ctx, ds...); err != nil {
				t.Fatal(err)
			}
			// The ack is settled with the store before the RESULT is sent.
			st := store.state()
			if !slices.Equal(st.acks, []string{"one", "two", "three"}) || st.inFlight != 0 || len(st.nacks) != 0 || len(st.queued["jobs"]) != 0 {
				t.Fatalf("store after acks: acks %q nacks %q in flight %d queued %q", st.acks, st.nacks, st.inFlight, st.queued["jobs"])
			}
		})
	}
}

// Delivery ids are unique across connections.
func TestStoreServerDeliveryIDsUniqueAcrossConnections(t *testing.T) {
	store := newFakeStore(0, "jobs")
	h := newStoreHarness(t, store, StoreServerOptions{FirstDelivery: StoreDeliveryBase})
	ctx := ctxT(t)
	a, b := h.dial(), h.dial()
	putN(t, a, "jobs", 4)
	seen := map[uint64]bool{}
	for i := range 4 {
		c := a
		if i%2 == 1 {
			c = b
		}
		d, err := c.Get(ctx, "jobs")
		if err != nil {
			t.Fatal(err)
		}
		if seen[d.ID] || d.ID <= StoreDeliveryBase {
			t.Fatalf("delivery id %d repeated or not above the base", d.ID)
		}
		seen[d.ID] = true
	}
}

// NO_SUCH_QUEUE for PUT, GET and CONSUME of a queue not served; TOO_LARGE
// for an item over MaxItem, nothing of that PUT stored.
func TestStoreServerNoSuchQueueAndTooLarge(t *testing.T) {
	store := newFakeStore(0, "jobs", "other")
	h := newStoreHarness(t, store, StoreServerOptions{MaxItem: 100})
	c := h.dial()
	ctx := ctxT(t)

	if err := c.Put(ctx, "nope", []byte("x")); !errors.Is(err, ErrNoSuchQueue) || statusCode(err) != int(statusNoSuchQueue) {
		t.Errorf("Put on an unknown queue: %v, want NO_SUCH_QUEUE", err)
	}
	// "other" is the store's, not the server's.
	if err := c.Put(ctx, "other", []byte("x")); !errors.Is(err, ErrNoSuchQueue) {
		t.Errorf("Put on a queue not served: %v, want NO_SUCH_QUEUE", err)
	}
	if _, err := c.Get(ctx, "nope"); !errors.Is(err, ErrNoSuchQueue) {
		t.Errorf("Get on an unknown queue: %v, want NO_SUCH_QUEUE", err)
	}
	if _, err := c.GetAutoAck(ctx, "nope"); !errors.Is(err, ErrNoSuchQueue) {
		t.Errorf("GetAutoAck on an unknown queue: %v, want NO_SUCH_QUEUE", err)
	}
	s, err := c.Consume(ctx, "nope", 3)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Next(ctx); !errors.Is(err, ErrNoSuchQueue) {
		t.Errorf("Consume of an unknown queue: Next: %v, want NO_SUCH_QUEUE", err)
	}
	// The client itself refuses an item over the WELCOME's max_item.
	if err := c.Put(ctx, "jobs", bytesOf('x', 101)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Put of 101 bytes, max 100: %v, want TOO_LARGE", err)
	}
	if err := c.Put(ctx, "jobs", bytesOf('x', 100)); err != nil {
		t.Errorf("Put of exactly max_item: %v", err)
	}

	// The server's own checks, on the wire.
	rc := h.raw(t, true)
	rc.write(appendPut(nil, &putFrame{ID: 1, Queue: "jobs", Items: [][]byte{[]byte("small"), bytesOf('y', 101)}}))
	if r := rc.expectStoreResult(1, statusTooLarge, 0); r.Message == "" {
		t.Error("TOO_LARGE without a message")
	}
	rc.write(appendPut(nil, &putFrame{ID: 2, Queue: "nope", Items: [][]byte{bytesOf('y', 101)}}))
	rc.expectStoreResult(2, statusNoSuchQueue, 0) // NO_SUCH_QUEUE wins over TOO_LARGE
	rc.write(appendPut(nil, &putFrame{ID: 3, Queue: "nope"}))
	rc.expectStoreResult(3, statusNoSuchQueue, 0) // count 0 on an unknown queue
	rc.write(appendPut(nil, &putFrame{ID: 4, Queue: "jobs"}))
	rc.expectStoreResult(4, statusOK, 0) // count 0 on a known one
	rc.write(appendGet(nil, &getFrame{ID: 5, Queue: "nope", Max: 1}))
	rc.expectStoreResult(5, statusNoSuchQueue, 0)
	rc.write(appendConsume(nil, &consumeFrame{ID: 6, Queue: "nope", Prefetch: 1}))
	rc.expectStoreResult(6, statusNoSuchQueue, 0)
	rc.write(appendAck(nil, &ackFrame{ID: 7}))
	rc.expectStoreResult(7, statusOK, 0) // ACK of nothing
	rc.write(appendAck(nil, &ackFrame{ID: 8, Nack: true}))
	rc.expectStoreResult(8, statusOK, 0)

	if st := store.state(); !slices.Equal(st.queued["jobs"], []string{string(bytesOf('x', 100))}) || len(st.queued["other"]) != 0 {
		t.Fatalf("store holds %d items on jobs, %d on other; want only the one of max_item", len(st.queued["jobs"]), len(st.queued["other"]))
	}
}

// A PUT on a full queue: timeout 0 is FULL, a timeout is TIMEOUT with the
// items accepted, and a waiting PUT is served when room comes.
func TestStoreServerPutOnFullQueue(t *testing.T) {
	store := newFakeStore(2, "jobs")
	h := newStoreHarness(t, store, StoreServerOptions{})
	c := h.dial()
	ctx := ctxT(t)
	putN(t, c, "jobs", 2)

	if err := c.TryPut("jobs", []byte("x")); !errors.Is(err, ErrFull) || statusCode(err) != int(statusFull) {
		t.Fatalf("TryPut on a full queue: %v, want FULL", err)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	n, err := c.PutBatch(short, "jobs", [][]byte{[]byte("x")})
	cancel()
	if !errors.Is(err, ErrTimeout) || n != 0 {
		t.Fatalf("Put with a deadline on a full queue: %d, %v; want 0, TIMEOUT", n, err)
	}

	// Room for one of two: TIMEOUT with n 1, the first one stored.
	d, err := c.Get(ctx, "jobs") // in flight: not counted by the store's capacity
	if err != nil {
		t.Fatal(err)
	}
	rc := h.raw(t, true)
	rc.write(appendPut(nil, &putFrame{ID: 1, TimeoutMS: 30, Queue: "jobs", Items: [][]byte{[]byte("a"), []byte("b")}}))
	if r := rc.expectStoreResult(1, statusTimeout, 1); r.Message != "timed out" {
		t.Errorf("PUT TIMEOUT message %q, want \"timed out\"", r.Message)
	}
	rc.write(appendPut(nil, &putFrame{ID: 2, TimeoutMS: 0, Queue: "jobs", Items: [][]byte{[]byte("c")}}))
	rc.expectStoreResult(2, statusFull, 0)
	if st := store.state(); !slices.Equal(st.queued["jobs"], []string{"1", "a"}) {
		t.Fatalf("store holds %q, want 1 a", st.queued["jobs"])
	}
	if err := c.Ack(ctx, d); err != nil {
		t.Fatal(err)
	}

	// The same through the client: one of two accepted, then TIMEOUT.
	if _, err := c.Get(ctx, "jobs"); err != nil { // "1" goes in flight: room for one
		t.Fatal(err)
	}
	short, cancel = context.WithTimeout(ctx, 100*time.Millisecond)
	n, err = c.PutBatch(short, "jobs", [][]byte{[]byte("p"), []byte("q")})
	cancel()
	if !errors.Is(err, ErrTimeout) || n != 1 {
		t.Fatalf("PutBatch of two with room for one: %d, %v; want 1, TIMEOUT", n, err)
	}

	// A PUT that waits is served when a consumer takes an item.
	putDone := make(chan error, 1)
	go func() { putDone <- c.Put(ctx, "jobs", []byte("late")) }()
	store.await(t, "the PUT waits for room", func(st fakeState) bool { return st.putWaiting == 1 })
	select {
	case err := <-putDone:
		t.Fatalf("the PUT on a full queue returned %v before there was room", err)
	default:
	}
	other := h.dial()
	got, err := other.Get(ctx, "jobs")
	if err != nil {
		t.Fatal(err)
	}
	if string(got.Body) != "a" {
		t.Fatalf("got %q, want a", got.Body)
	}
	select {
	case err := <-putDone:
		if err != nil {
			t.Fatalf("the waiting PUT: %v", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("the waiting PUT was not served when room came")
	}
	if st := store.state(); !slices.Equal(st.queued["jobs"], []string{"p", "late"}) {
		t.Fatalf("store holds %q, want p late", st.queued["jobs"])
	}
}

// A PUT waiting for room, cancelled: CANCELLED with the count stored.
func TestStoreServerCancelWaitingPut(t *testing.T) {
	store := newFakeStore(1, "jobs")
	h := newStoreHarness(t, store, StoreServerOptions{})
	rc := h.raw(t, true)
	rc.write(appendPut(nil, &putFrame{ID: 1, TimeoutMS: waitForever, Queue: "jobs", Items: [][]byte{[]byte("a"), []byte("b")}}))
	store.await(t, "the PUT waits with one stored", func(st fakeState) bool { return st.putWaiting == 1 })
	rc.write(appendCancel(nil, &cancelFrame{ID: 1}))
	rc.expectStoreResult(1, statusCancelled, 1)
	// Cancelling again, or an unknown id, does nothing: the next reply is
	// that of the next request.
	rc.write(appendCancel(nil, &cancelFrame{ID: 1}))
	rc.write(appendCancel(nil, &cancelFrame{ID: 99}))
	rc.write(appendAck(nil, &ackFrame{ID: 2}))
	rc.expectStoreResult(2, statusOK, 0)
	if st := store.state(); !slices.Equal(st.queued["jobs"], []string{"a"}) || st.putWaiting != 0 {
		t.Fatalf("store holds %q (put waiting %d), want a", st.queued["jobs"], st.putWaiting)
	}
}

// GET with timeout 0 on an empty queue is TIMEOUT "queue empty"; one that
// waits is served by a later PUT from another connection.
func TestStoreServerGetTimeouts(t *testing.T) {
	store := newFakeStore(0, "jobs")
	h := newStoreHarness(t, store, StoreServerOptions{})
	ctx := ctxT(t)

	rc := h.raw(t, true)
	rc.write(appendGet(nil, &getFrame{ID: 1, TimeoutMS: 0, Queue: "jobs", Max: 1}))
	if r := rc.expectStoreResult(1, statusTimeout, 0); r.Message != "queue empty" {
		t.Errorf("GET timeout 0: message %q, want \"queue empty\"", r.Message)
	}
	rc.write(appendGet(nil, &getFrame{ID: 2, TimeoutMS: 20, Queue: "jobs", Max: 1, Flags: flagAutoAck}))
	if r := rc.expectStoreResult(2, statusTimeout, 0); r.Message != "timed out" {
		t.Errorf("GET timeout 20: message %q, want \"timed out\"", r.Message)
	}

	c := h.dial()
	short, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
	_, err := c.Get(short, "jobs")
	cancel()
	if !errors.Is(err, ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Get with a deadline on an empty queue: %v, want TIMEOUT", err)
	}

	got := make(chan *Delivery, 1)
	errs := make(chan error, 1)
	go func() {
		d, err := c.Get(ctx, "jobs")
		if err != nil {
			errs <- err
			return
		}
		got <- d
	}()
	store.await(t, "the GET waits", func(st fakeState) bool { return st.getWaiting == 1 })
	if err := h.dial().Put(ctx, "jobs", []byte("hello")); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-got:
		if string(d.Body) != "hello" || d.Deliveries != 1 {
			t.Fatalf("the waiting GET got %+v, want hello", d)
		}
		if err := c.Ack(ctx, d); err != nil {
			t.Fatal(err)
		}
	case err := <-errs:
		t.Fatalf("the waiting GET: %v", err)
	case <-time.After(testTimeout):
		t.Fatal("the waiting GET was not served by the PUT")
	}
}

// A waiting GET cancelled: CANCELLED, and it takes nothing from the store.
func TestStoreServerCancelWaitingGet(t *testing.T) {
	store := newFakeStore(0, "jobs")
	h := newStoreHarness(t, store, StoreServerOptions{})
	rc := h.raw(t, true)
	rc.write(appendGet(nil, &getFrame{ID: 1, TimeoutMS: waitForever, Queue: "jobs", Max: 1}))
	store.await(t, "the GET waits", func(st fakeState) bool { return st.getWaiting == 1 })
	rc.write(appendCancel(nil, &cancelFrame{ID: 1}))
	rc.expectStoreResult(1, statusCancelled, 0)
	store.preload("jobs", "x")
	// The id is free again: a new GET under it gets the item.
	rc.write(appendGet(nil, &getFrame{ID: 1, TimeoutMS: waitForever, Queue: "jobs", Max: 1}))
	if it := rc.expectItems(1); len(it.Items) != 1 || string(it.Items[0].Body) != "x" {
		t.Fatalf("got %+v, want x", it)
	}
}

// NACK puts the item back: the store sees the Nack and delivers it again
// with deliveries 2 under a new id. An ACK of a delivery not in flight here
// is UNKNOWN_DELIVERY, and does not stop the others.
func TestStoreServerNackAndUnknownDelivery(t *testing.T) {
	store := newFakeStore(0, "jobs")
	h := newStoreHarness(t, store, StoreServerOptions{})
	c := h.dial()
	ctx := ctxT(t)
	putN(t, c, "jobs", 2)

	d1, err := c.Get(ctx, "jobs")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Nack(ctx, d1); err != nil {
		t.Fatal(err)
	}
	if st := store.state(); !slices.Equal(st.nacks, []string{"0"}) || len(st.acks) != 0 || st.inFlight != 0 {
		t.Fatalf("store after NACK: nacks %q acks %q in flight %d", st.nacks, st.acks, st.inFlight)
	}
	d2, err := c.Get(ctx, "jobs")
	if err != nil {
		t.Fatal(err)
	}
	if string(d2.Body) != "0" || d2.Deliveries != 2 || d2.ID == d1.ID {
		t.Fatalf("redelivered %+v, want \"0\", deliveries 2, a new id (old %d)", d2, d1.ID)
	}
	// The old id is unknown from then on.
	if err := c.Ack(ctx, d1); statusCode(err) != int(statusUnknownDelivery) {
		t.Fatalf("ACK of the NACKed id: %v, want UNKNOWN_DELIVERY", err)
	}
	if err := c.Nack(ctx, d1); statusCode(err) != int(statusUnknownDelivery) {
		t.Fatalf("NACK of the NACKed id: %v, want UNKNOWN_DELIVERY", err)
	}
	if err := c.Ack(ctx, d2); err != nil {
		t.Fatal(err)
	}
	if err := c.Ack(ctx, d2); statusCode(err) != int(statusUnknownDelivery) {
		t.Fatalf("second ACK: %v, want UNKNOWN_DELIVERY", err)
	}
	// Another connection's delivery is unknown here, and stays in flight
	// there.
	other := h.dial()
	d3, err := other.Get(ctx, "jobs")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Ack(ctx, d3); statusCode(err) != int(statusUnknownDelivery) {
		t.Fatalf("ACK of another connection's delivery: %v, want UNKNOWN_DELIVERY", err)
	}
	if st := store.state(); st.inFlight != 1 {
		t.Fatalf("%d in flight, want the other connection's 1", st.inFlight)
	}

	// On the wire: one known, one unknown: n 1, UNKNOWN_DELIVERY, the known
	// one acked.
	store.preload("jobs", "w")
	rc := h.raw(t, true)
	rc.write(appendGet(nil, &getFrame{ID: 1, TimeoutMS: waitForever, Queue: "jobs", Max: 1}))
	it := rc.expectItems(1)
	rc.write(appendAck(nil, &ackFrame{ID: 2, Deliveries: []uint64{12345, it.Items[0].Delivery, d3.ID}}))
	rc.expectStoreResult(2, statusUnknownDelivery, 1)
	st := store.state()
	if !slices.Equal(st.acks, []string{"0", "w"}) || st.inFlight != 1 {
		t.Fatalf("store: acks %q, %d in flight; want 0 w, 1", st.acks, st.inFlight)
	}
	if err := other.Ack(ctx, d3); err != nil {
		t.Fatalf("the owner's ACK: %v", err)
	}
	if st := store.state(); st.doubleSettle != 0 {
		t.Fatalf("%d items settled twice", st.doubleSettle)
	}
}

// Closing a connection NACKs every item it holds in flight, GETs' and
// CONSUME pushes' alike; they are delivered again with deliveries 2.
func TestStoreServerConnectionCloseNacksInFlight(t *testing.T) {
	store := newFakeStore(0, "jobs", "mail")
	h := newStoreHarness(t, store, StoreServerOptions{Queues: []string{"jobs", "mail"}})
	ctx := ctxT(t)
	p := h.dial()
	putNamed(t, p, "jobs", "j", 5)
	putNamed(t, p, "mail", "m", 2)

	c, err := Dial(ctx, h.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ds, err := c.GetBatch(ctx, "jobs", 3)
	if err != nil || len(ds) != 3 {
		t.Fatalf("GetBatch: %d, %v", len(ds), err)
	}
	s, err := c.Consume(ctx, "mail", 2)
	if err != nil {
		t.Fatal(err)
	}
	next(t, s) // one handed out, one perhaps pushed and not yet
	store.await(t, "both mail items in flight", func(st fakeState) bool { return st.inFlight == 5 })
	if err := c.Ack(ctx, ds[0]); err != nil { // acked: not NACKed at close
		t.Fatal(err)
	}
	c.Close()
	st := store.await(t, "the connection's items NACKed", func(st fakeState) bool { return st.inFlight == 0 })
	nacked := slices.Sorted(slices.Values(st.nacks))
	if !slices.Equal(nacked, []string{"j1", "j2", "m0", "m1"}) || !slices.Equal(st.acks, []string{"j0"}) {
		t.Fatalf("after close: nacks %q acks %q; want j1 j2 m0 m1 nacked, j0 acked", st.nacks, st.acks)
	}
	// Delivered again, twice delivered now.
	again, err := p.GetBatch(ctx, "jobs", 10)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range again {
		want := 1
		if string(d.Body) == "j1" || string(d.Body) == "j2" {
			want = 2
		}
		if d.Deliveries != want {
			t.Errorf("%s: deliveries %d, want %d", d.Body, d.Deliveries, want)
		}
	}
	if got := slices.Sorted(slices.Values(deliveryBodies(again))); !slices.Equal(got, []string{"j1", "j2", "j3", "j4"}) {
		t.Fatalf("jobs after the close: %q", got)
	}
}

// CONSUME with prefetch 2 keeps at most 2 unacknowledged; an ACK lets one
// more come; CANCEL ends it with CANCELLED, its items still this
// connection's to ack.
func TestStoreServerConsumePrefetch(t *testing.T) {
	store := newFakeStore(0, "jobs")
	h := newStoreHarness(t, store, StoreServerOptions{})
	store.preload("jobs", "0", "1", "2", "3", "4")

	rc := h.raw(t, true)
	rc.write(appendConsume(nil, &consumeFrame{ID: 7, Queue: "jobs", Prefetch: 2}))
	var held []wireItem
	for len(held) < 2 {
		held = append(held, rc.expectItems(7).Items...)
	}
	if len(held) != 2 || string(held[0].Body) != "0" || string(held[1].Body) != "1" {
		t.Fatalf("pushed %+v, want 0 1", held)
	}
	// ACK one: its RESULT and one more push come, in either order, and
	// nothing else.
	rc.write(appendAck(nil, &ackFrame{ID: 8, Deliveries: []uint64{held[0].Delivery}}))
	var pushed []wireItem
	for gotResult := false; !gotResult || len(pushed) < 1; {
		switch f := rc.read().(type) {
		case *resultFrame:
			if f.ID != 8 || f.Status != statusOK || f.N != 1 {
				t.Fatalf("got %#v, want RESULT 8 OK n 1", f)
			}
			gotResult = true
		case *itemsFrame:
			if f.ID != 7 {
				t.Fatalf("got ITEMS for %d, want 7", f.ID)
			}
			pushed = append(pushed, f.Items...)
		default:
			t.Fatalf("got %#v", f)
		}
	}
	if len(pushed) != 1 || string(pushed[0].Body) != "2" {
		t.Fatalf("after one ACK pushed %+v, want just 2", pushed)
	}
	held = append(held[1:], pushed...)
	// A NACK gives credit back too, and the item comes again.
	rc.write(appendAck(nil, &ackFrame{ID: 9, Nack: true, Deliveries: []uint64{held[0].Delivery}}))
	pushed = pushed[:0]
	for gotResult := false; !gotResult || len(pushed) < 1; {
		switch f := rc.read().(type) {
		case *resultFrame:
			if f.ID != 9 || f.Status != statusOK || f.N != 1 {
				t.Fatalf("got %#v, want RESULT 9 OK n 1", f)
			}
			gotResult = true
		case *itemsFrame:
			pushed = append(pushed, f.Items...)
		default:
			t.Fatalf("got %#v", f)
		}
	}
	if len(pushed) != 1 || string(pushed[0].Body) != "1" || pushed[0].Deliveries != 2 {
		t.Fatalf("after a NACK pushed %+v, want 1 again, deliveries 2", pushed)
	}
	held = append(held[1:], pushed...)
	if st := store.state(); st.maxInFlight > 2 {
		t.Fatalf("the store had %d in flight at once; prefetch is 2", st.maxInFlight)
	}

	rc.write(appendCancel(nil, &cancelFrame{ID: 7}))
	rc.expectStoreResult(7, statusCancelled, 0)
	// Ended: its items stay in flight, ackable, and acks push no more.
	rc.write(appendAck(nil, &ackFrame{ID: 10, Deliveries: []uint64{held[0].Delivery, held[1].Delivery}}))
	rc.expectStoreResult(10, statusOK, 2)
	rc.write(appendGet(nil, &getFrame{ID: 11, Queue: "jobs", Max: 10}))
	it := rc.expectItems(11) // the next frame is this one's: no push
	var rest []string
	for _, w := range it.Items {
		rest = append(rest, string(w.Body))
	}
	if !slices.Equal(rest, []string{"3", "4"}) {
		t.Fatalf("left after the CANCEL: %q, want 3 4", rest)
	}
	st := store.state()
	if !slices.Equal(st.acks, []string{"0", "2", "1"}) || !slices.Equal(st.nacks, []string{"1"}) || st.maxInFlight != 2 {
		t.Fatalf("store: acks %q nacks %q max in flight %d", st.acks, st.nacks, st.maxInFlight)
	}
}

// The same through the client's Consumer: prefetch bounds what it holds,
// Ack lets more come, Close ends it.
func TestStoreServerConsumerClient(t *testing.T) {
	store := newFakeStore(0, "jobs")
	h := newStoreHarness(t, store, StoreServerOptions{})
	c := h.dial()
	ctx := ctxT(t)
	putN(t, c, "jobs", 5)
	s, err := c.Consume(ctx, "jobs", 2)
	if err != nil {
		t.Fatal(err)
	}
	a, b := next(t, s), next(t, s)
	if string(a.Body) != "0" || string(b.Body) != "1" {
		t.Fatalf("got %q %q, want 0 1", a.Body, b.Body)
	}
	nothingWithin(t, s, 50*time.Millisecond)
	if st := store.state(); st.inFlight != 2 || st.maxInFlight != 2 {
		t.Fatalf("store: %d in flight (at most %d), want 2", st.inFlight, st.maxInFlight)
	}
	if err := s.Ack(a); err != nil {
		t.Fatal(err)
	}
	if d := next(t, s); string(d.Body) != "2" {
		t.Fatalf("after an ack got %q, want 2", d.Body)
	}
	store.await(t, "0 acked", func(st fakeState) bool { return slices.Equal(st.acks, []string{"0"}) })
	if st := store.state(); st.maxInFlight != 2 {
		t.Fatalf("the store had %d in flight at once; prefetch is 2", st.maxInFlight)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Next(ctx); !errors.Is(err, ErrConsumerClosed) {
		t.Fatalf("Next after Close: %v", err)
	}
	// The items handed out stay this connection's: acking them works.
	if err := c.Ack(ctx, b); err != nil {
		t.Fatal(err)
	}
	// The CONSUME is over on the server: a GET of this connection gets
	// what is left.
	ds, err := c.GetBatch(ctx, "jobs", 10)
	if err != nil {
		t.Fatal(err)
	}
	if got := deliveryBodies(ds); !slices.Equal(got, []string{"3", "4"}) {
		t.Fatalf("left after Close: %q, want 3 4", got)
	}
}

// An auto-ack GET acks the item with the store once written; its delivery
// id is 0, which no ACK finds.
func TestStoreServerAutoAck(t *testing.T) {
	store := newFakeStore(0, "jobs")
	h := newStoreHarness(t, store, StoreServerOptions{FirstDelivery: StoreDeliveryBase})
	c := h.dial()
	ctx := ctxT(t)
	putN(t, c, "jobs", 2)
	body, err := c.GetAutoAck(ctx, "jobs")
	if err != nil || string(body) != "0" {
		t.Fatalf("GetAutoAck: %q, %v", body, err)
	}
	store.await(t, "the auto-ack item acked", func(st fakeState) bool {
		return slices.Equal(st.acks, []string{"0"}) && st.inFlight == 0
	})

	rc := h.raw(t, true)
	rc.write(appendGet(nil, &getFrame{ID: 1, TimeoutMS: waitForever, Queue: "jobs", Max: 5, Flags: flagAutoAck}))
	it := rc.expectItems(1)
	if len(it.Items) != 1 || it.Items[0].Delivery != 0 || string(it.Items[0].Body) != "1" || it.Items[0].Deliveries != 1 {
		t.Fatalf("auto-ack ITEMS %+v, want 1 under delivery 0", it.Items)
	}
	store.await(t, "the second auto-ack item acked", func(st fakeState) bool {
		return slices.Equal(st.acks, []string{"0", "1"}) && st.inFlight == 0
	})
	rc.write(appendAck(nil, &ackFrame{ID: 2, Deliveries: []uint64{0}}))
	rc.expectStoreResult(2, statusUnknownDelivery, 0)
	// Closing the connection NACKs nothing: nothing was in flight.
	rc.nc.Close()
	if st := store.state(); len(st.nacks) != 0 {
		t.Fatalf("nacks %q after auto-ack", st.nacks)
	}
}

// Close answers waiting requests SHUTTING_DOWN, then FATAL, NACKs what is
// in flight, and may be called twice.
func TestStoreServerCloseAnswersWaitersAndNacks(t *testing.T) {
	store := newFakeStore(1, "jobs", "mail")
	h := newStoreHarness(t, store, StoreServerOptions{Queues: []string{"jobs", "mail"}})
	ctx := ctxT(t)

	holder := h.dial()
	putN(t, holder, "jobs", 1)
	held, err := holder.Get(ctx, "jobs")
	if err != nil {
		t.Fatal(err)
	}
	store.preload("jobs", "full") // the queue is full now

	rc := h.raw(t, true)
	rc.write(appendPut(nil, &putFrame{ID: 1, TimeoutMS: waitForever, Queue: "jobs", Items: [][]byte{[]byte("p")}}))
	rc.write(appendConsume(nil, &consumeFrame{ID: 2, Queue: "mail", Prefetch: 1}))
	rc.write(appendGet(nil, &getFrame{ID: 3, TimeoutMS: waitForever, Queue: "mail", Max: 1}))
	store.await(t, "the PUT and the GET wait", func(st fakeState) bool { return st.putWaiting == 1 && st.getWaiting == 2 })
	h.closeServer()
	h.closeServer() // twice is fine

	// The raw connection: its waiting PUT, CONSUME and GET are answered
	// SHUTTING_DOWN, then FATAL SHUTTING_DOWN, then the end.
	got := map[uint32]uint16{}
	for range 3 {
		f := rc.read()
		r, ok := f.(*resultFrame)
		if !ok {
			t.Fatalf("want RESULTs before the FATAL, got %#v", f)
		}
		got[r.ID] = r.Status
	}
	if got[1] != statusShuttingDown || got[2] != statusShuttingDown || got[3] != statusShuttingDown {
		t.Fatalf("waiting requests answered %v, want SHUTTING_DOWN", got)
	}
	rc.expectFatalAndClose(statusShuttingDown)

	select {
	case err := <-h.served:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
		h.served <- nil // for the cleanup
	case <-time.After(testTimeout):
		t.Fatal("Serve did not return after Close")
	}
	st := store.state()
	if st.inFlight != 0 || !slices.Equal(st.nacks, []string{"0"}) {
		t.Fatalf("after Close: %d in flight, nacks %q; want 0 NACKed", st.inFlight, st.nacks)
	}
	if !slices.Equal(st.queued["jobs"], []string{"0", "full"}) || st.putWaiting != 0 || st.getWaiting != 0 {
		t.Fatalf("after Close the store holds %q, %d PUTs and %d GETs waiting", st.queued["jobs"], st.putWaiting, st.getWaiting)
	}
	if err := holder.Ack(ctx, held); !errors.Is(err, ErrClosed) && !errors.Is(err, ErrShuttingDown) {
		t.Fatalf("Ack after Close: %v, want the connection closed", err)
	}
	if _, err := Dial(ctx, h.path); err == nil {
		t.Fatal("Dial after Close succeeded")
	}
}

// Close answers a GET that waits, through the client, ErrShuttingDown.
func TestStoreServerCloseAnswersWaitingGet(t *testing.T) {
	store := newFakeStore(0, "jobs")
	h := newStoreHarness(t, store, StoreServerOptions{})
	ctx := ctxT(t)
	holder := h.dial()
	putN(t, holder, "jobs", 2)
	held, err := holder.GetBatch(ctx, "jobs", 2)
	if err != nil || len(held) != 2 {
		t.Fatalf("GetBatch: %d, %v", len(held), err)
	}
	waiter := h.dial()
	getErr := make(chan error, 1)
	go func() {
		_, err := waiter.Get(ctx, "jobs")
		getErr <- err
	}()
	store.await(t, "the GET waits", func(st fakeState) bool { return st.getWaiting == 1 })
	h.closeServer()
	select {
	case err := <-getErr:
		if !errors.Is(err, ErrShuttingDown) {
			t.Fatalf("the waiting GET: %v, want SHUTTING_DOWN", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("the waiting GET was not answered at Close")
	}
	st := store.state()
	if got := slices.Sorted(slices.Values(st.nacks)); st.inFlight != 0 || !slices.Equal(got, []string{"0", "1"}) {
		t.Fatalf("after Close: %d in flight, nacks %q; want 0 1 NACKed", st.inFlight, st.nacks)
	}
	h.closeServer()
}

// Serve after Close returns nil at once and closes its listener.
func TestStoreServerServeAfterClose(t *testing.T) {
	s, err := NewStoreServer(StoreServerOptions{Store: newFakeStore(0, "jobs"), Queues: []string{"jobs"}})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	path := filepath.Join(t.TempDir(), "s.sock")
	if len(path) > 100 {
		t.Skip("temp dir path too long for a socket")
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(l); err != nil {
		t.Fatalf("Serve after Close: %v", err)
	}
	if _, err := net.Dial("unix", path); err == nil {
		t.Fatal("the listener is still open")
	}
}

// NewStoreServer refuses a missing store, bad queue names and a MaxItem
// too large for a frame.
func TestStoreServerNewValidates(t *testing.T) {
	store := newFakeStore(0)
	for name, opts := range map[string]StoreServerOptions{
		"no store":   {Queues: []string{"jobs"}},
		"bad name":   {Store: store, Queues: []string{"1jobs"}},
		"empty name": {Store: store, Queues: []string{""}},
		"huge item":  {Store: store, Queues: []string{"jobs"}, MaxItem: 1 << 31},
	} {
		if _, err := NewStoreServer(opts); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if _, err := NewStoreServer(StoreServerOptions{Store: store, Queues: []string{"jobs", "a-b_C9"}}); err != nil {
		t.Errorf("good options: %v", err)
	}
}

// A malformed frame gets FATAL BAD_FRAME and closes only that connection
// (its items in flight NACKed); another client goes on.
func TestStoreServerBadFrameClosesOnlyThatConnection(t *testing.T) {
	store := newFakeStore(0, "jobs")
	h := newStoreHarness(t, store, StoreServerOptions{})
	good := h.dial()
	ctx := ctxT(t)
	for name, bad := range map[string][]byte{
		"garbage":          []byte("\x00\x00\x00\x09GARBAGE!!"),
		"oversized length": {0x7f, 0xff, 0xff, 0xff, 0x02},
		"zero length":      {0, 0, 0, 0},
		"trailing bytes":   unhex(t, "00000006 06 00000001 00"),
		"broker frame":     appendWelcome(nil, &welcomeFrame{}),
		"second HELLO":     appendHello(nil, &helloFrame{Magic: [4]byte{'G', 'T', 'Y', 'Q'}, Version: 1}),
		"GET max 0":        appendGet(nil, &getFrame{ID: 1, Queue: "jobs", Max: 0}),
		"GET flag bit 1":   appendGet(nil, &getFrame{ID: 1, Queue: "jobs", Max: 1, Flags: 0x02}),
		"CONSUME prefetch": appendConsume(nil, &consumeFrame{ID: 1, Queue: "jobs", Prefetch: 0}),
		"CONSUME flag":     appendConsume(nil, &consumeFrame{ID: 1, Queue: "jobs", Prefetch: 1, Flags: 1}),
		"non-UTF-8 queue":  appendGet(nil, &getFrame{ID: 1, Queue: "jo\xffbs", Max: 1}),
	} {
		t.Run(name, func(t *testing.T) {
			store.preload("jobs", name)
			rc := h.raw(t, true)
			// It holds an item in flight when it breaks the protocol.
			rc.write(appendGet(nil, &getFrame{ID: 100, TimeoutMS: waitForever, Queue: "jobs", Max: 1}))
			if it := rc.expectItems(100); string(it.Items[0].Body) != name {
				t.Fatalf("got %q, want %q", it.Items[0].Body, name)
			}
			rc.write(bad)
			rc.expectFatalAndClose(statusBadFrame)
			store.await(t, "its item NACKed", func(st fakeState) bool {
				return st.inFlight == 0 && slices.Contains(st.nacks, name)
			})
			if err := good.Put(ctx, "jobs", []byte("good "+name)); err != nil {
				t.Fatalf("the other client: %v", err)
			}
			d, err := good.Get(ctx, "jobs")
			if err != nil {
				t.Fatalf("the other client: %v", err)
			}
			if string(d.Body) != name || d.Deliveries != 2 {
				t.Fatalf("the other client got %q (deliveries %d), want %q again", d.Body, d.Deliveries, name)
			}
			if err := good.Ack(ctx, d); err != nil {
				t.Fatal(err)
			}
			if _, err := good.GetAutoAck(ctx, "jobs"); err != nil {
				t.Fatal(err)
			}
		})
	}
	// PROTOCOL.md: "BAD_HELLO for the first frame, whatever is wrong with
	// it", a length the reader refuses (0, or over a HELLO's) included.
	t.Run("garbage before HELLO", func(t *testing.T) {
		rc := h.raw(t, false)
		rc.write([]byte("GET / HTTP/1.1\r\n\r\n")) // length 0x47455420
		rc.expectFatalAndClose(statusBadHello)
	})
	t.Run("zero length before HELLO", func(t *testing.T) {
		rc := h.raw(t, false)
		rc.write([]byte{0, 0, 0, 0})
		rc.expectFatalAndClose(statusBadHello)
	})
	t.Run("HELLO too long", func(t *testing.T) {
		rc := h.raw(t, false)
		long := appendHello(nil, &helloFrame{Magic: [4]byte{'G', 'T', 'Y', 'Q'}, Version: 1, Client: "x"})
		long = append(long, make([]byte, maxHelloLen)...)
		binary.BigEndian.PutUint32(long, uint32(len(long)-frameHeaderLen))
		rc.write(long)
		rc.expectFatalAndClose(statusBadHello)
	})
	t.Run("a request before HELLO", func(t *testing.T) {
		rc := h.raw(t, false)
		rc.write(appendGet(nil, &getFrame{ID: 1, Queue: "jobs", Max: 1}))
		f, ok := rc.read().(*fatalFrame)
		if !ok || f.Status != statusBadHello {
			t.Fatalf("got %#v, want FATAL BAD_HELLO", f)
		}
	})
	t.Run("bad version", func(t *testing.T) {
		rc := h.raw(t, false)
		rc.write(appendHello(nil, &helloFrame{Magic: [4]byte{'G', 'T', 'Y', 'Q'}, Version: ProtocolVersion + 1}))
		rc.expectFatalAndClose(statusBadHello)
	})
	t.Run("refused", func(t *testing.T) {
		hr := newStoreHarness(t, newFakeStore(0, "jobs"), StoreServerOptions{Allow: func(Peer) bool { return false }})
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		if _, err := Dial(ctx, hr.path); !errors.Is(err, ErrRefused) {
			t.Fatalf("Dial: %v, want REFUSED", err)
		}
	})
	if err := good.Put(ctx, "jobs", []byte("last")); err != nil {
		t.Fatalf("the other client at the end: %v", err)
	}
}

// Pipelined requests right behind the HELLO, in one write, are all served.
func TestStoreServerPipelinedAfterHello(t *testing.T) {
	store := newFakeStore(0, "jobs")
	h := newStoreHarness(t, store, StoreServerOptions{})
	rc := h.raw(t, false)
	var b []byte
	b = appendHello(b, &helloFrame{Magic: [4]byte{'G', 'T', 'Y', 'Q'}, Version: 1, Client: "pipe"})
	b = appendPut(b, &putFrame{ID: 1, TimeoutMS: waitForever, Queue: "jobs", Items: [][]byte{[]byte("a"), []byte("b")}})
	b = appendGet(b, &getFrame{ID: 2, TimeoutMS: waitForever, Queue: "jobs", Max: 1, Flags: flagAutoAck})
	rc.write(b)
	if _, ok := rc.read().(*welcomeFrame); !ok {
		t.Fatal("no WELCOME")
	}
	rc.expectStoreResult(1, statusOK, 2)
	if it := rc.expectItems(2); string(it.Items[0].Body) != "a" {
		t.Fatalf("got %+v", it)
	}
}

// Many producers and consumers at once, GETs and CONSUMEs, some items
// NACKed once: every item acked exactly once, nothing lost.
func TestStoreServerManyProducersAndConsumers(t *testing.T) {
	const producers, consumers, perProducer = 4, 4, 500
	const total = producers * perProducer
	store := newFakeStore(64, "jobs") // small: producers wait for room
	h := newStoreHarness(t, store, StoreServerOptions{FirstDelivery: StoreDeliveryBase})
	ctx := ctxT(t)
	stop, stopAll := context.WithCancel(ctx)
	defer stopAll()

	var wg sync.WaitGroup
	errc := make(chan error, producers+consumers)
	for p := range producers {
		c := h.dial()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perProducer; {
				n := min(1+rand.IntN(8), perProducer-i)
				batch := make([][]byte, n)
				for j := range batch {
					batch[j] = []byte(fmt.Sprintf("p%d-%d", p, i+j))
				}
				got, err := c.PutBatch(ctx, "jobs", batch)
				if err != nil {
					errc <- fmt.Errorf("producer %d: %d of %d accepted: %w", p, got, n, err)
					return
				}
				i += n
			}
		}()
	}
	// Whether a body was NACKed once already.
	var nackedMu sync.Mutex
	nacked := map[string]bool{}
	nackOnce := func(body string) bool {
		if body[len(body)-1] != '7' {
			return false
		}
		nackedMu.Lock()
		defer nackedMu.Unlock()
		if nacked[body] {
			return false
		}
		nacked[body] = true
		return true
	}
	for k := range consumers {
		c := h.dial()
		wg.Add(1)
		if k%2 == 0 {
			go func() { // GETs, a few at a time
				defer wg.Done()
				for stop.Err() == nil {
					w, cancel := context.WithTimeout(stop, 20*time.Millisecond)
					ds, err := c.GetBatch(w, "jobs", 1+k)
					cancel()
					if err != nil {
						if errors.Is(err, ErrTimeout) || stop.Err() != nil {
							continue
						}
						errc <- fmt.Errorf("getter %d: %w", k, err)
						return
					}
					var acks, nacks []*Delivery
					for _, d := range ds {
						if nackOnce(string(d.Body)) {
							nacks = append(nacks, d)
						} else {
							acks = append(acks, d)
						}
					}
					if len(nacks) > 0 {
						if err := c.Nack(ctx, nacks...); err != nil {
							errc <- fmt.Errorf("getter %d: nack: %w", k, err)
							return
						}
					}
					if len(acks) > 0 {
						if err := c.Ack(ctx, acks...); err != nil {
							errc <- fmt.Errorf("getter %d: ack: %w", k, err)
							return
						}
					}
				}
			}()
			continue
		}
		s, err := c.Consume(ctx, "jobs", 4*k)
		if err != nil {
			t.Fatal(err)
		}
		go func() { // a consumer
			defer wg.Done()
			for {
				d, err := s.Next(stop)
				if err != nil {
					if stop.Err() == nil {
						errc <- fmt.Errorf("consumer %d: %w", k, err)
					}
					s.Close()
					return
				}
				if nackOnce(string(d.Body)) {
					err = s.Nack(d)
				} else {
					err = s.Ack(d)
				}
				if err != nil {
					errc <- fmt.Errorf("consumer %d: %w", k, err)
					return
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	store.await(t, "every item acked", func(st fakeState) bool {
		select {
		case err := <-errc:
			t.Fatal(err)
		default:
		}
		return len(st.acks) >= total
	})
	stopAll()
	select {
	case <-done:
	case <-time.After(testTimeout):
		t.Fatal("producers and consumers did not stop")
	}
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	counts := store.ackCounts()
	for p := range producers {
		for i := range perProducer {
			if b := fmt.Sprintf("p%d-%d", p, i); counts[b] != 1 {
				t.Errorf("%s acked %d times, want once", b, counts[b])
			}
		}
	}
	st := store.state()
	if len(st.acks) != total || len(st.queued["jobs"]) != 0 || st.doubleSettle != 0 {
		t.Fatalf("store: %d acks (want %d), %d queued, %d settled twice", len(st.acks), total, len(st.queued["jobs"]), st.doubleSettle)
	}
	if len(st.nacks) < total/10/2 {
		t.Errorf("only %d NACKs; the test NACKs every item ending in 7 once", len(st.nacks))
	}
}

// Per PROTOCOL.md, timeout_ms 0 means "do not wait at all", and a CANCEL
// of a waiting request "is answered at once". A GET of timeout 0 behind a
// GET that waits on the same queue, from the same connection, must be
// answered TIMEOUT at once; a GET waiting behind another must be answered
// CANCELLED at once when cancelled, and one with a timeout within it.
func TestStoreServerRequestBehindWaitingOneIsAnsweredInTime(t *testing.T) {
	store := newFakeStore(0, "jobs")
	h := newStoreHarness(t, store, StoreServerOptions{})
	rc := h.raw(t, true)
	rc.write(appendGet(nil, &getFrame{ID: 1, TimeoutMS: waitForever, Queue: "jobs", Max: 1}))
	store.await(t, "the first GET waits", func(st fakeState) bool { return st.getWaiting == 1 })
	rc.write(appendGet(nil, &getFrame{ID: 2, TimeoutMS: 0, Queue: "jobs", Max: 1}))
	rc.write(appendGet(nil, &getFrame{ID: 3, TimeoutMS: 50, Queue: "jobs", Max: 1}))
	rc.write(appendGet(nil, &getFrame{ID: 4, TimeoutMS: waitForever, Queue: "jobs", Max: 1}))
	rc.write(appendCancel(nil, &cancelFrame{ID: 4}))
	rc.nc.SetReadDeadline(time.Now().Add(2 * time.Second))
	got := map[uint32]uint16{}
	for len(got) < 3 {
		p, err := rc.fr.read(1<<21, nil)
		if err != nil {
			t.Fatalf("answers after 2 s: %v; want GET 2 TIMEOUT (timeout 0), GET 3 TIMEOUT (50 ms), GET 4 CANCELLED at once, while GET 1 waits; got %v", err, got)
		}
		f, err := decodeFrame(p)
		if err != nil {
			t.Fatal(err)
		}
		r, ok := f.(*resultFrame)
		if !ok {
			t.Fatalf("got %#v", f)
		}
		got[r.ID] = r.Status
	}
	if got[2] != statusTimeout || got[3] != statusTimeout || got[4] != statusCancelled {
		t.Fatalf("got %v, want 2 and 3 TIMEOUT, 4 CANCELLED", got)
	}
}

// The same for PUTs: a TryPut (timeout 0) behind a PUT that waits for room,
// from the same connection, gets FULL at once (PROTOCOL.md: "a later PUT
// with timeout_ms 0 gets FULL").
func TestStoreServerTryPutBehindWaitingPutDoesNotWait(t *testing.T) {
	store := newFakeStore(1, "jobs")
	h := newStoreHarness(t, store, StoreServerOptions{})
	store.preload("jobs", "full")
	c := h.dial()
	ctx := ctxT(t)
	go c.Put(ctx, "jobs", []byte("waits"))
	store.await(t, "the PUT waits", func(st fakeState) bool { return st.putWaiting == 1 })
	res := make(chan error, 1)
	go func() { res <- c.TryPut("jobs", []byte("try")) }()
	select {
	case err := <-res:
		if !errors.Is(err, ErrFull) {
			t.Fatalf("TryPut: %v, want FULL", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("TryPut behind a waiting PUT on the same connection has not returned after 2 s; timeout_ms 0 must not wait")
	}
}

// A client that does not read its replies must not keep Close waiting for
// ever: Broker.Close bounds the write of its FATAL by the frame deadline
// (10 s). Slow by nature (the bound is the frame deadline): skipped with
// -short.
func TestStoreServerCloseWithClientNotReading(t *testing.T) {
	const deadline = 300 * time.Millisecond
	store := newFakeStore(0, "jobs")
	h := newStoreHarness(t, store, StoreServerOptions{MaxItem: 64 << 10, FrameDeadline: deadline})
	body := bytesOf('z', 64<<10)
	for range 64 { // 4 MiB: far more than a socket buffer
		store.preload("jobs", string(body))
	}
	rc := h.raw(t, true)
	rc.write(appendConsume(nil, &consumeFrame{ID: 1, Queue: "jobs", Prefetch: 64}))
	// The server pushes all 64 (its writer blocked on the full socket).
	store.await(t, "all pushed", func(st fakeState) bool { return st.inFlight == 64 })
	done := make(chan struct{})
	go func() { h.s.Close(); close(done) }()
	bound := deadline + testTimeout
	select {
	case <-done:
	case <-time.After(bound):
		rc.nc.Close() // lets the cleanup's Close end
		<-done
		t.Fatalf("StoreServer.Close has not returned %v after it was called, its writer blocked on a client that does not read", bound)
	}
	if st := store.state(); st.inFlight != 0 {
		t.Fatalf("%d in flight after Close", st.inFlight)
	}
}

// Close while a connection's reader is starting requests (a GET on each of
// many queues, each starting a lane) must not hang. Close's shutdown
// cancels the connection and waits for its requests; a request start()
// counted before the cancel but handed to its lane only after the lane's
// goroutine saw the cancel and drained its channel is never finished, and
// Close waits for it for ever. The window is narrow: the test tries for
// about a second, which has caught it many times over on every run so far.
func TestStoreServerCloseWhileRequestsStart(t *testing.T) {
	queues := make([]string, 64)
	var frames []byte
	for i := range queues {
		queues[i] = fmt.Sprintf("q%d", i)
		frames = appendGet(frames, &getFrame{ID: uint32(i + 1), TimeoutMS: waitForever, Queue: queues[i], Max: 1})
	}
	dir := t.TempDir()
	if len(dir) > 90 {
		var err error
		if dir, err = os.MkdirTemp("", "gtqs"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
	}
	budget := time.Now().Add(time.Second)
	for round := 0; time.Now().Before(budget); round++ {
		s, err := NewStoreServer(StoreServerOptions{Store: newFakeStore(0, queues...), Queues: queues})
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, fmt.Sprintf("%d.sock", round))
		l, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		served := make(chan error, 1)
		go func() { served <- s.Serve(l) }()
		nc, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		nc.SetDeadline(time.Now().Add(testTimeout))
		rc := &rawConn{t: t, nc: nc, fr: frameReader{r: bufio.NewReader(nc)}}
		rc.write(appendHello(nil, &helloFrame{Magic: [4]byte{'G', 'T', 'Y', 'Q'}, Version: 1, Client: "raw"}))
		if _, ok := rc.read().(*welcomeFrame); !ok {
			t.Fatal("no WELCOME")
		}
		rc.write(frames)
		time.Sleep(time.Duration(round%7) * 50 * time.Microsecond) // varies when Close lands
		done := make(chan struct{})
		go func() { s.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			// Its goroutines stay blocked: nothing the test can end.
			t.Fatalf("round %d: StoreServer.Close hangs: a request started during the shutdown was queued to a lane whose goroutine had already exited", round)
		}
		if err := <-served; err != nil {
			t.Fatalf("Serve: %v", err)
		}
		nc.Close()
	}
}

// Items in flight when their connection ends go back to the store in
// delivery order (rule 4: "items requeued together keep their delivery
// order", which the StoreServer's doc says it follows): a store that
// redelivers in the order NACKs came, as JetStream does, then delivers
// them again in their order.
func TestStoreServerCloseNacksInDeliveryOrder(t *testing.T) {
	store := newFakeStore(0, "jobs")
	h := newStoreHarness(t, store, StoreServerOptions{})
	ctx := ctxT(t)
	c, err := Dial(ctx, h.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	putN(t, c, "jobs", 20)
	ds, err := c.GetBatch(ctx, "jobs", 20)
	if err != nil || len(ds) != 20 {
		t.Fatalf("GetBatch: %d, %v", len(ds), err)
	}
	want := deliveryBodies(ds)
	c.Close()
	st := store.await(t, "all NACKed", func(st fakeState) bool { return len(st.nacks) == 20 })
	if !slices.Equal(st.nacks, want) {
		t.Fatalf("NACKed at the connection's end in the order %q; want delivery order %q", st.nacks, want)
	}
}

// A GET takes from the store no more than one ITEMS frame holds, a frame
// no longer than max_item + 64 (what any broker forwarding to the server
// announces as its max_frame); what does not fit goes back to the store
// and comes with the next GET.
func TestStoreServerItemsFitOneFrame(t *testing.T) {
	store := newFakeStore(0, "jobs")
	h := newStoreHarness(t, store, StoreServerOptions{MaxItem: 100})
	var want []string
	for i := range 10 {
		want = append(want, fmt.Sprintf("%02d%s", i, bytesOf('x', 58))) // 60 bytes
	}
	store.preload("jobs", want...)
	rc := h.raw(t, true)
	var got []string
	for id := uint32(1); len(got) < len(want); id++ {
		if id > 20 {
			t.Fatalf("after 20 GETs only %d items", len(got))
		}
		rc.write(appendGet(nil, &getFrame{ID: id, TimeoutMS: waitForever, Queue: "jobs", Max: 10, Flags: flagAutoAck}))
		it := rc.expectItems(id)
		if n := len(appendItems(nil, it)) - frameHeaderLen; n > 100+frameSlack {
			t.Fatalf("ITEMS of %d items is %d bytes long, over max_item + 64 = %d", len(it.Items), n, 100+frameSlack)
		}
		for _, w := range it.Items {
			got = append(got, string(w.Body))
		}
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("got %d items %q, want each of the 10 once", len(got), got)
	}
	store.await(t, "all acked", func(st fakeState) bool { return len(st.acks) == 10 && st.inFlight == 0 })
}

// Once the server has handed out a big item, it asks the store for no
// more such items than one ITEMS frame holds: a CONSUME of big items with
// a prefetch of 10 gets each item on its first delivery, and none goes
// back unseen (which would count a delivery its consumer never had).
func TestStoreServerAsksForWhatFitsAFrame(t *testing.T) {
	fake := newFakeStore(0, "jobs")
	h := newStoreHarness(t, fake, StoreServerOptions{})
	c := h.dial()
	ctx := ctxT(t)
	big := make([]byte, DefaultMaxItem/2+100) // one to a frame
	for range 11 {
		if err := c.Put(ctx, "jobs", big); err != nil {
			t.Fatal(err)
		}
	}
	first, err := c.Get(ctx, "jobs")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Ack(ctx, first); err != nil {
		t.Fatal(err)
	}
	cons, err := c.Consume(ctx, "jobs", 10)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		d, err := cons.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if d.Deliveries != 1 {
			t.Errorf("item %d came with deliveries %d; want 1", i, d.Deliveries)
		}
		if err := cons.Ack(d); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(fake.state().nacks); n != 0 {
		t.Errorf("%d items went back to the store unseen", n)
	}
}

// What the server asks the store for follows each queue's own last items:
// a big item on one queue does not make another queue's gets ask for one
// item at a time, nor its own once its items are small again.
func TestStoreServerFitsEachQueueOnItsOwn(t *testing.T) {
	fake := newFakeStore(0, "big", "small")
	h := newStoreHarness(t, fake, StoreServerOptions{Queues: []string{"big", "small"}})
	c := h.dial()
	ctx := ctxT(t)
	if err := c.Put(ctx, "big", make([]byte, DefaultMaxItem)); err != nil {
		t.Fatal(err)
	}
	d, err := c.Get(ctx, "big")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Ack(ctx, d); err != nil {
		t.Fatal(err)
	}
	items := make([][]byte, 100)
	for i := range items {
		items[i] = []byte{'x'}
	}
	for _, q := range []string{"small", "big", "big"} {
		if n, err := c.PutBatch(ctx, q, items); n != 100 || err != nil {
			t.Fatalf("PutBatch %s: %d, %v", q, n, err)
		}
		ds, err := c.GetBatch(ctx, q, 100)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Ack(ctx, ds...); err != nil {
			t.Fatal(err)
		}
		if q == "small" && len(ds) != 100 {
			t.Errorf("a get of 100 small items on %s got %d", q, len(ds))
		}
	}
	// big's first get of small items was asked for one (its last item was
	// big); its next asks for all.
	ds, err := c.GetBatch(ctx, "big", 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 99 {
		t.Errorf("a get of the 99 small items left on big got %d", len(ds))
	}
}
