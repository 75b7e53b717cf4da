package ipc

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// forwardHarness is a broker with a memory queue "mem" and a forwarded
// queue "js", whose store server (a StoreServer over a fakeStore) serves
// "js" with delivery ids from StoreDeliveryBase, as gotyledon-jetstream
// serves a manager.
type forwardHarness struct {
	*brokerHarness
	store *storeHarness
}

func newForwardHarness(t *testing.T, capacity int, setup ...func(*Broker)) *forwardHarness {
	t.Helper()
	fake := newFakeStore(capacity, "js")
	sh := newStoreHarness(t, fake, StoreServerOptions{Queues: []string{"js"}, FirstDelivery: StoreDeliveryBase})
	bh := newBrokerHarness(t, BrokerOptions{
		Queues:      []QueueConfig{{Name: "mem"}, {Name: "js", Forward: true}},
		StoreSocket: sh.path,
	}, setup...)
	return &forwardHarness{brokerHarness: bh, store: sh}
}

// A forwarded queue works through the broker as the store server serves
// it: the items are the store's (the broker holds none), their delivery
// ids are the store server's, and an ACK reaches the store.
func TestForwardedQueuePutGetAck(t *testing.T) {
	h := newForwardHarness(t, 0)
	c := h.dial()
	ctx := ctxT(t)
	if n, err := c.PutBatch(ctx, "js", [][]byte{[]byte("a"), []byte("b")}); n != 2 || err != nil {
		t.Fatalf("PutBatch = %d, %v", n, err)
	}
	if st := h.store.store.state(); len(st.queued["js"]) != 2 {
		t.Fatalf("the store holds %q; want a and b", st.queued["js"])
	}
	ds, err := c.GetBatch(ctx, "js", 2)
	if err != nil || len(ds) != 2 {
		t.Fatalf("GetBatch = %d items, %v", len(ds), err)
	}
	for _, d := range ds {
		if d.ID <= StoreDeliveryBase {
			t.Errorf("delivery %d of %s is not the store server's (from %d)", d.ID, d.Body, StoreDeliveryBase)
		}
	}
	if err := c.Ack(ctx, ds...); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	h.store.store.await(t, "both acked", func(st fakeState) bool { return len(st.acks) == 2 })
}

// One ACK naming deliveries of both a memory queue and a forwarded one
// settles each where it belongs and answers once, with both counts; one
// unknown delivery makes it UNKNOWN_DELIVERY without stopping the others.
func TestAckSplitBetweenBrokerAndStore(t *testing.T) {
	h := newForwardHarness(t, 0)
	c := h.dial()
	ctx := ctxT(t)
	for _, q := range []string{"mem", "js"} {
		if err := c.Put(ctx, q, []byte(q+"-item")); err != nil {
			t.Fatalf("Put %s: %v", q, err)
		}
	}
	mem, err := c.Get(ctx, "mem")
	if err != nil {
		t.Fatal(err)
	}
	js, err := c.Get(ctx, "js")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Ack(ctx, mem, js); err != nil {
		t.Fatalf("Ack of both: %v", err)
	}
	h.store.store.await(t, "the store's item acked", func(st fakeState) bool { return len(st.acks) == 1 })
	if st := h.stats("mem"); st.InFlight != 0 || st.Acked != 1 {
		t.Fatalf("mem: %d in flight, %d acked; want 0, 1", st.InFlight, st.Acked)
	}

	// Both again: neither is in flight now.
	err = c.Ack(ctx, mem, js)
	var se *StatusError
	if !errors.As(err, &se) || se.Code != statusUnknownDelivery {
		t.Fatalf("second Ack of both = %v; want UNKNOWN_DELIVERY", err)
	}
}

// A forwarded queue's items in flight go back to the store when their
// client's connection closes: the broker closes the connection it
// forwarded them on.
func TestForwardedInFlightGoBackOnClose(t *testing.T) {
	h := newForwardHarness(t, 0)
	c := h.dial()
	ctx := ctxT(t)
	if err := c.Put(ctx, "js", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, "js"); err != nil {
		t.Fatal(err)
	}
	c.Close()
	h.store.store.await(t, "x NACKed", func(st fakeState) bool { return len(st.nacks) == 1 })
	d, err := h.dial().Get(ctx, "js")
	if err != nil || string(d.Body) != "x" || d.Deliveries != 2 {
		t.Fatalf("Get after the close = %+v, %v; want x delivered twice", d, err)
	}
}

// A CONSUME of a forwarded queue is pushed to through the broker, its
// credit given back by ACKs forwarded.
func TestForwardedConsume(t *testing.T) {
	h := newForwardHarness(t, 0)
	c := h.dial()
	ctx := ctxT(t)
	cons, err := c.Consume(ctx, "js", 2)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if err := c.Put(ctx, "js", fmt.Appendf(nil, "%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 10 {
		d, err := cons.Next(ctx)
		if err != nil {
			t.Fatalf("Next %d: %v", i, err)
		}
		if string(d.Body) != fmt.Sprint(i) {
			t.Fatalf("item %d is %q", i, d.Body)
		}
		if err := cons.Ack(d); err != nil {
			t.Fatal(err)
		}
	}
	if st := h.store.store.await(t, "ten acked", func(st fakeState) bool { return len(st.acks) == 10 }); st.maxInFlight > 2 {
		t.Errorf("%d items in flight at once; prefetch is 2", st.maxInFlight)
	}
	if err := cons.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// A PUT on a full forwarded queue waits for room as on the broker's own.
func TestForwardedFullQueue(t *testing.T) {
	h := newForwardHarness(t, 1)
	c := h.dial()
	ctx := ctxT(t)
	if err := c.Put(ctx, "js", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if err := c.TryPut("js", []byte("2")); !errors.Is(err, ErrFull) {
		t.Fatalf("TryPut on a full queue = %v; want ErrFull", err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Put(ctx, "js", []byte("2")) }()
	h.store.store.await(t, "the put waiting", func(st fakeState) bool { return st.putWaiting == 1 })
	other := h.dial()
	d, err := other.Get(ctx, "js")
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Ack(ctx, d); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("the waiting Put: %v", err)
	}
}

// With no store server to reach, a request on a forwarded queue is
// answered TIMEOUT saying so, once its timeout has passed (at most the
// dial's bound); the connection and the broker's own queues go on.
func TestForwardedQueueWithoutStoreServer(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{
		Queues:      []QueueConfig{{Name: "mem"}, {Name: "js", Forward: true}},
		StoreSocket: t.TempDir() + "/none.sock",
	})
	c := h.dial()
	err := c.TryPut("js", []byte("x"))
	var se *StatusError
	if !errors.As(err, &se) || se.Code != statusTimeout {
		t.Fatalf("TryPut with no store server = %v; want TIMEOUT", err)
	}
	ctx := ctxT(t)
	if err := c.Put(ctx, "mem", []byte("y")); err != nil {
		t.Fatalf("Put on the memory queue after: %v", err)
	}
}

// When the store server goes away, what waits there is answered TIMEOUT,
// and the next request dials it again.
func TestForwardedStoreServerGoesAway(t *testing.T) {
	h := newForwardHarness(t, 0)
	c := h.dial()
	ctx := ctxT(t)
	got := make(chan error, 1)
	go func() {
		_, err := c.Get(ctx, "js")
		got <- err
	}()
	h.store.store.await(t, "the get waiting", func(st fakeState) bool { return st.getWaiting == 1 })
	h.store.closeServer()
	select {
	case err := <-got:
		var se *StatusError
		if !errors.As(err, &se) || se.Code != statusTimeout {
			t.Fatalf("Get when the store server closed = %v; want TIMEOUT (the broker is not the one stopping)", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("the waiting Get was not answered")
	}
}

// A forwarded request answered while queued behind one that waits (CANCEL
// here) frees its place at once: behind a GET that waits for ever, more
// GET and CANCEL pairs than a connection may have waiting requests are
// each answered, and the connection goes on.
func TestForwardedCancelledRequestsFreeTheirPlace(t *testing.T) {
	h := newForwardHarness(t, 0)
	rc := h.raw(true)
	rc.write(appendGet(nil, &getFrame{ID: 1, TimeoutMS: waitForever, Queue: "js", Max: 1}))
	h.store.store.await(t, "the get waiting", func(st fakeState) bool { return st.getWaiting == 1 })
	for i := uint32(2); i < maxWaiting+200; i++ {
		rc.write(appendGet(nil, &getFrame{ID: i, TimeoutMS: waitForever, Queue: "js", Max: 1}))
		rc.write(appendCancel(nil, &cancelFrame{ID: i}))
		rc.expectResult(i, statusCancelled, 0)
	}
	h.store.store.preload("js", "x")
	if f, ok := rc.read().(*itemsFrame); !ok || f.ID != 1 || string(f.Items[0].Body) != "x" {
		t.Fatalf("the first GET got %#v; want ITEMS x", f)
	}
}

// An ACK of a forwarded queue's delivery after the store server went away
// is answered UNKNOWN_DELIVERY without trying to reach a store server (no
// store server knows that delivery any more, and waiting for one would
// hold up a stopping worker); the broker's own deliveries in it are acked
// all the same.
func TestForwardedAckAfterStoreServerGone(t *testing.T) {
	h := newForwardHarness(t, 0)
	c := h.dial()
	ctx := ctxT(t)
	for _, q := range []string{"mem", "js"} {
		if err := c.Put(ctx, q, []byte(q)); err != nil {
			t.Fatal(err)
		}
	}
	mem, err := c.Get(ctx, "mem")
	if err != nil {
		t.Fatal(err)
	}
	js, err := c.Get(ctx, "js")
	if err != nil {
		t.Fatal(err)
	}
	h.store.closeServer()
	// The upstream's end is seen by its reader: wait for it, as a reply
	// to a request on the store's queue tells.
	eventually(t, "the upstream seen gone", func() bool {
		err := c.TryPut("js", []byte("x"))
		var se *StatusError
		return errors.As(err, &se) && se.Code == statusTimeout && strings.Contains(se.Message, "unavailable")
	})
	err = c.Ack(ctx, mem, js)
	var se *StatusError
	// Not "queue store unavailable", which says it tried to reach one.
	if !errors.As(err, &se) || se.Code != statusUnknownDelivery || !strings.Contains(se.Message, "ended") {
		t.Fatalf("Ack after the store server went away = %v; want UNKNOWN_DELIVERY, the connection having ended", err)
	}
	if st := h.stats("mem"); st.Acked != 1 {
		t.Errorf("mem: %d acked; want 1", st.Acked)
	}
}

// Stats lists a forwarded queue in its place, its figures unknown to the
// broker; WithStoreStatus takes them from the store server's status
// socket, or says why it could not.
func TestForwardedQueueStats(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{Queues: []QueueConfig{{Name: "mem"}, {Name: "js", Capacity: 50, Forward: true}}})
	stats := h.b.Stats()
	if len(stats) != 2 || stats[0].Name != "mem" || stats[0].Forwarded || stats[1].Name != "js" || !stats[1].Forwarded || stats[1].Capacity != 50 {
		t.Fatalf("Stats = %+v; want mem, then js forwarded with capacity 50", stats)
	}

	socket := filepath.Join(t.TempDir(), "status.sock")
	got := WithStoreStatus(slices.Clone(stats), "jetstream", socket)
	if got[1].Store != "jetstream" || !strings.HasPrefix(got[1].StoreState, "unavailable: ") || got[0].Store != "" {
		t.Fatalf("with no status socket: %+v", got)
	}

	l, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/queues" {
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode([]StoreQueueStatus{{Queue: "js", Waiting: 7, InFlight: 2, Redelivered: 1, Getters: 3,
			Put: 30, Delivered: 25, Acked: 21, Connection: "connected"}})
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	got = WithStoreStatus(slices.Clone(stats), "jetstream", socket)
	want := QueueStats{Name: "js", Capacity: 50, Depth: 7, InFlight: 2, Consumers: 3, Put: 30, Delivered: 25, Acked: 21,
		Forwarded: true, Store: "jetstream", StoreState: "connected", StoreRedelivered: 1}
	if got[1] != want || got[0] != stats[0] {
		t.Fatalf("WithStoreStatus = %+v\nwant mem as it was and %+v", got, want)
	}
}

// Tasks are the broker's: a SUBMIT to a forwarded queue is UNSUPPORTED,
// and a REPLY of a store delivery (a plain item) acknowledges it there.
func TestForwardedQueueAndTasks(t *testing.T) {
	h := newForwardHarness(t, 0)
	c := h.dial()
	ctx := ctxT(t)
	if _, err := c.Submit(ctx, "js", []byte("task")); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("Submit to a forwarded queue: %v, want ErrUnsupported", err)
	}
	if err := c.Put(ctx, "js", []byte("item")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Submit(ctx, "mem", []byte("task")); err != nil {
		t.Fatal(err)
	}
	js, err := c.Get(ctx, "js")
	if err != nil {
		t.Fatal(err)
	}
	mem, err := c.Get(ctx, "mem")
	if err != nil {
		t.Fatal(err)
	}
	// One REPLY naming both, raw: the store's part goes on as an ACK.
	cl := &call{ch: make(chan clientReply, 1)}
	id, err := c.send(ctx, cl, func(dst []byte, id uint32) []byte {
		return appendReply(dst, &replyFrame{ID: id, Answers: []answer{{Delivery: mem.ID, Body: []byte("r")}, {Delivery: js.ID, Body: []byte("x")}}})
	})
	if err != nil {
		t.Fatal(err)
	}
	r, err := c.wait(ctx, id, cl, false, true)
	if err != nil || r.result == nil || r.result.Status != statusOK || r.result.N != 2 {
		t.Fatalf("REPLY of both answered %#v, %v; want OK n 2", r.result, err)
	}
	h.store.store.await(t, "the store's item acked", func(st fakeState) bool { return len(st.acks) == 1 })
}
