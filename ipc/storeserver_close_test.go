package ipc

import (
	"context"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// gatedStore is a fakeStore whose Ack of the item gated waits for gate,
// saying on entered that it has begun.
type gatedStore struct {
	*fakeStore
	gated   string
	entered chan struct{}
	gate    chan struct{}
}

type gatedItem struct {
	StoredItem
	s *gatedStore
}

func (it gatedItem) Ack() error {
	if string(it.Body()) == it.s.gated {
		close(it.s.entered)
		<-it.s.gate
	}
	return it.StoredItem.Ack()
}

func (g *gatedStore) Get(ctx context.Context, queue string, max int, wait time.Duration, waiting func()) ([]StoredItem, error) {
	items, err := g.fakeStore.Get(ctx, queue, max, wait, waiting)
	for i := range items {
		items[i] = gatedItem{items[i], g}
	}
	return items, err
}

// A client that sends ACKs and closes its connection while the server's
// writes to it fail (it left ITEMS unread): the server still reads those
// ACKs, whatever its writer met, before the connection's end gives back
// what is in flight.
func TestStoreServerReadsAcksSentBeforeAClientGoes(t *testing.T) {
	store := newFakeStore(0, "jobs")
	g := &gatedStore{fakeStore: store, gated: "slow", entered: make(chan struct{}), gate: make(chan struct{})}
	core, logs := observer.New(zapcore.DebugLevel)
	h := newStoreHarness(t, store, StoreServerOptions{Store: g, Logger: zap.New(core)})
	p := h.dial()
	for _, it := range []string{"slow", "first"} {
		if err := p.Put(ctxT(t), "jobs", []byte(it)); err != nil {
			t.Fatal(err)
		}
	}
	big := make([][]byte, 64)
	for i := range big {
		big[i] = []byte(strings.Repeat("x", 64<<10))
	}
	if _, err := p.PutBatch(ctxT(t), "jobs", big); err != nil {
		t.Fatal(err)
	}

	rc := h.raw(t, true)
	rc.write(appendGet(nil, &getFrame{ID: 1, TimeoutMS: 1000, Queue: "jobs", Max: 2}))
	items := rc.expectItems(1)
	if len(items.Items) != 2 {
		t.Fatalf("GET of 2: %d items", len(items.Items))
	}
	slow, first := items.Items[0].Delivery, items.Items[1].Delivery
	// 4 MB pushed and not read: the server's writer blocks.
	rc.write(appendConsume(nil, &consumeFrame{ID: 2, Queue: "jobs", Prefetch: 64}))
	store.await(t, "every item in flight", func(st fakeState) bool { return st.inFlight == 66 })
	// The reader busy with the first ACK while the second arrives.
	rc.write(appendAck(nil, &ackFrame{ID: 3, Deliveries: []uint64{slow}}))
	<-g.entered
	rc.write(appendAck(nil, &ackFrame{ID: 4, Deliveries: []uint64{first}}))
	rc.nc.Close() // ITEMS unread: the blocked write fails
	deadline := time.Now().Add(testTimeout)
	for logs.FilterMessageSnippet("store client gone or not reading").Len() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the server's writer did not fail")
		}
		time.Sleep(time.Millisecond) // polling the log: no other event says so
	}
	close(g.gate)
	st := store.await(t, "the connection's items given back", func(st fakeState) bool { return st.inFlight == 0 })
	for _, n := range st.nacks {
		if n == "first" || n == "slow" {
			t.Fatalf("%s, acknowledged before the client went, was given back; acks %q", n, st.acks)
		}
	}
	if len(st.acks) != 2 {
		t.Errorf("acks %q, want slow and first", st.acks)
	}
}
