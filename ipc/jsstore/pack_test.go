package jsstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

func TestBatchesRoundTrip(t *testing.T) {
	in := [][]byte{[]byte("a"), {}, []byte(strings.Repeat("b", 300)), []byte("c"), []byte("d")}
	id := 0
	next := func() string { id++; return strconv.Itoa(id) }
	// Three items to a message at most, and 310 bytes: the long item
	// closes the first message.
	bs := batches(in, 3, 310, next)
	var sizes []int
	for _, b := range bs {
		sizes = append(sizes, len(b.Items))
	}
	if !slices.Equal(sizes, []int{3, 2}) || bs[0].ID != "1" || bs[1].ID != "2" {
		t.Fatalf("batches: %d items each, ids %q %q; want 3 and 2, ids 1 and 2", sizes, bs[0].ID, bs[1].ID)
	}
	if one := batches(in[:1], 3, 310, next); len(one) != 1 || one[0].message("s").Header.Get(headerItems) != "" {
		t.Errorf("a batch of one item must be stored as the item alone, for any client to read")
	}
	bs[0].delivered = []int{0, 4, 1}
	var got [][]byte
	for _, b := range bs {
		m := b.message("s")
		items, delivered, err := unpack(m.Data, m.Header)
		if err != nil {
			t.Fatal(err)
		}
		if b.delivered != nil && !slices.Equal(delivered, b.delivered) {
			t.Errorf("delivered counts %v, want %v", delivered, b.delivered)
		}
		got = append(got, items...)
	}
	if !slices.EqualFunc(got, in, func(a, b []byte) bool { return string(a) == string(b) }) {
		t.Errorf("unpacked %q, want %q", got, in)
	}
}

func TestUnpackRefusesMalformedMessages(t *testing.T) {
	hdr := func(kv ...string) nats.Header {
		h := nats.Header{}
		for i := 0; i < len(kv); i += 2 {
			h.Set(kv[i], kv[i+1])
		}
		return h
	}
	for _, c := range []struct {
		name   string
		data   string
		header nats.Header
	}{
		{"count not a number", "\x01a", hdr(headerItems, "x")},
		{"count zero", "", hdr(headerItems, "0")},
		{"item overruns", "\x05ab", hdr(headerItems, "1")},
		{"fewer items than said", "\x01a", hdr(headerItems, "2")},
		{"bytes after the items", "\x01ab", hdr(headerItems, "1")},
		{"delivered count missing", "\x01a\x01b", hdr(headerItems, "2", headerDelivered, "1")},
		{"delivered count negative", "\x01a", hdr(headerItems, "1", headerDelivered, "-1")},
	} {
		if _, _, err := unpack([]byte(c.data), c.header); !errors.Is(err, errBadPack) {
			t.Errorf("%s: err %v, want errBadPack", c.name, err)
		}
	}
}

// putTogether stores items through Queues: one message for them all.
func putTogether(t *testing.T, st *Store, items ...string) {
	t.Helper()
	in := make([][]byte, len(items))
	for i, it := range items {
		in[i] = []byte(it)
	}
	if n, err := NewQueues(nil, st).Put(context.Background(), st.cfg.Queue, in, 0, nil); n != len(items) || err != nil {
		t.Fatalf("Put = %d, %v; want %d, nil", n, err, len(items))
	}
}

func deliveries(ds []Delivery) []int {
	out := make([]int, len(ds))
	for i, d := range ds {
		out[i] = d.Deliveries
	}
	return out
}

func TestItemsOfOnePutShareAMessageAndAreHandedOutInOrder(t *testing.T) {
	st := open(t, startServer(t, t.TempDir()), Config{AckWait: time.Hour, Pack: 10})
	ctx := context.Background()
	putTogether(t, st, "a", "b", "c", "d", "e")
	// The stream has the message once the put returns; the consumer's
	// count of messages pending catches up on its own (nats-server updates
	// it apart from the store), with no event to wait on: polled.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(5 * time.Millisecond) {
		stats, err := st.Stats(ctx)
		if err == nil && stats.Put == 1 && stats.Waiting == 1 {
			break
		}
		if err != nil || stats.Put != 1 || time.Now().After(deadline) {
			t.Fatalf("stats after a put of 5: %+v, %v; want one message stored, and waiting within a minute", stats, err)
		}
	}
	var got []Delivery
	for _, limit := range []int{2, 2, 2} {
		got = append(got, get(t, st, limit, time.Second)...)
	}
	if names := data(got); !slices.Equal(names, []string{"a", "b", "c", "d", "e"}) {
		t.Fatalf("gets of 2 = %q, want a b c d e", names)
	}
	for i, d := range got {
		var err error
		if i == len(got)-1 {
			err = d.AckSync(ctx)
		} else {
			err = d.Ack()
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := got[0].Ack(); !errors.Is(err, errSettled) {
		t.Errorf("a second Ack: %v, want errSettled", err)
	}
	if stats, err := st.Stats(ctx); err != nil || stats.Acked != 1 || stats.Waiting+stats.InFlight != 0 {
		t.Errorf("stats after every item acked: %+v, %v; want the message acked", stats, err)
	}
}

func TestItemsAllRefusedComeBackTogether(t *testing.T) {
	st := open(t, startServer(t, t.TempDir()), Config{AckWait: time.Hour, Pack: 10})
	putTogether(t, st, "a", "b", "c")
	ds := get(t, st, 3, time.Second)
	for _, d := range ds {
		if err := d.Nak(); err != nil {
			t.Fatal(err)
		}
	}
	ds = get(t, st, 3, 10*time.Second)
	if names := data(ds); !slices.Equal(names, []string{"a", "b", "c"}) || !slices.Equal(deliveries(ds), []int{2, 2, 2}) {
		t.Fatalf("after NAKs: %q deliveries %v, want a b c each delivered twice", names, deliveries(ds))
	}
}

// Some items of a message acknowledged, others refused: the refused ones
// come back, counting their deliveries on, and the acknowledged ones do
// not.
func TestItemsRefusedBesideAcknowledgedOnesComeBackAlone(t *testing.T) {
	st := open(t, startServer(t, t.TempDir()), Config{AckWait: time.Hour, Pack: 10})
	ctx := context.Background()
	putTogether(t, st, "a", "b", "c", "d")
	ds := get(t, st, 4, time.Second)
	for i, d := range ds {
		settle := d.Ack
		if i%2 == 1 {
			settle = d.Nak
		}
		if err := settle(); err != nil {
			t.Fatal(err)
		}
	}
	ds = get(t, st, 4, 10*time.Second)
	if names := data(ds); !slices.Equal(names, []string{"b", "d"}) || !slices.Equal(deliveries(ds), []int{2, 2}) {
		t.Fatalf("after acking a c and refusing b d: %q deliveries %v, want b d delivered twice", names, deliveries(ds))
	}
	// Refused again, alone this time: the count goes on.
	for _, d := range ds {
		if err := d.Nak(); err != nil {
			t.Fatal(err)
		}
	}
	ds = get(t, st, 4, 10*time.Second)
	if names := data(ds); !slices.Equal(names, []string{"b", "d"}) || !slices.Equal(deliveries(ds), []int{3, 3}) {
		t.Fatalf("refused again: %q deliveries %v, want b d delivered three times", names, deliveries(ds))
	}
	for _, d := range ds {
		if err := d.AckSync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if stats, err := st.Stats(ctx); err != nil || stats.Waiting+stats.InFlight != 0 {
		t.Errorf("stats after all acked: %+v, %v; want nothing left", stats, err)
	}
}

// Items fetched that no Get takes for a while go back, and are handed
// out again counted as never handed out.
func TestItemsNotTakenGoBack(t *testing.T) {
	// AckWait 300 ms: what waits 100 ms goes back.
	st := open(t, startServer(t, t.TempDir()), Config{AckWait: 300 * time.Millisecond, Pack: 10})
	ctx := context.Background()
	putTogether(t, st, "a", "b", "c")
	ds := get(t, st, 1, time.Second)
	if names := data(ds); !slices.Equal(names, []string{"a"}) {
		t.Fatalf("Get of 1 = %q, want a", names)
	}
	if err := ds[0].AckSync(ctx); err != nil {
		t.Fatal(err)
	}
	// b and c, not taken, go back: stored again as a message of their
	// own, and the first one is acknowledged.
	deadline := time.Now().Add(time.Minute)
	for {
		stats, err := st.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if stats.Put == 2 && stats.Acked == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("b and c not stored again in a minute: %+v", stats)
		}
		time.Sleep(10 * time.Millisecond)
	}
	ds = get(t, st, 2, 10*time.Second)
	if names := data(ds); !slices.Equal(names, []string{"b", "c"}) || !slices.Equal(deliveries(ds), []int{1, 1}) {
		t.Fatalf("after going back: %q deliveries %v, want b c handed out once", names, deliveries(ds))
	}
}

// Several Gets waiting share the pulls: one message of three items
// serves three Gets of one item.
func TestWaitingGetsShareAMessage(t *testing.T) {
	st := open(t, startServer(t, t.TempDir()), Config{AckWait: time.Hour, Pack: 10})
	var wg sync.WaitGroup
	got := make(chan string, 3)
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ds, err := st.Get(context.Background(), 1, 20*time.Second)
			if err != nil || len(ds) != 1 {
				got <- fmt.Sprintf("Get = %q, %v", data(ds), err)
				return
			}
			got <- string(ds[0].Data)
		}()
	}
	awaitFetched(t, st, "the three Gets waiting", func(f *fetched) bool { return f.demand == 3 })
	putTogether(t, st, "a", "b", "c")
	wg.Wait()
	close(got)
	var names []string
	for g := range got {
		names = append(names, g)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"a", "b", "c"}) {
		t.Fatalf("the waiting Gets got %q, want a, b and c, one each", names)
	}
}

// Drain gives back what was fetched and not handed out: another process
// gets it.
func TestDrainGivesBackItemsNotHandedOut(t *testing.T) {
	s := startServer(t, t.TempDir())
	st := open(t, s, Config{AckWait: time.Hour, Pack: 10})
	ctx := context.Background()
	putTogether(t, st, "a", "b", "c")
	ds := get(t, st, 1, time.Second)
	if err := ds[0].Nak(); err != nil {
		t.Fatal(err)
	}
	if err := NewQueues(nil, st).Drain(ctx); err != nil {
		t.Fatal(err)
	}
	if ds := get(t, st, 3, 50*time.Millisecond); len(ds) != 0 {
		t.Errorf("Get after Drain = %q, want nothing", data(ds))
	}
	other := open(t, s, Config{AckWait: time.Hour, Pack: 10})
	ds = get(t, other, 3, 10*time.Second)
	if names := data(ds); !slices.Equal(names, []string{"a", "b", "c"}) || !slices.Equal(deliveries(ds), []int{2, 2, 2}) {
		t.Fatalf("another getter got %q deliveries %v, want a b c, delivered twice (a NAK gives the whole message back)", names, deliveries(ds))
	}
}

// Drain ends the pulls out before it gives anything back: an item given
// back does not bounce between NAKs and a pull of the draining store.
func TestDrainEndsThePullsOutFirst(t *testing.T) {
	s := startServer(t, t.TempDir())
	st := open(t, s, Config{AckWait: time.Hour})
	ctx := context.Background()
	got := make(chan []Delivery, 1)
	// A Get of 5 whose pull outlives it: one item satisfies it.
	go func() { ds, _ := st.Get(ctx, 5, 20*time.Second); got <- ds }()
	awaitFetched(t, st, "a pull out", func(f *fetched) bool { return f.pulls == 1 })
	if _, err := st.Put(ctx, items("a", 1)); err != nil {
		t.Fatal(err)
	}
	ds := <-got
	if len(ds) != 1 {
		t.Fatalf("Get = %q, want a", data(ds))
	}
	if err := ds[0].Nak(); err != nil { // it may come back to the pull still out
		t.Fatal(err)
	}
	if err := NewQueues(nil, st).Drain(ctx); err != nil {
		t.Fatal(err)
	}
	st.fetched.mu.Lock()
	pulls := st.fetched.pulls
	st.fetched.mu.Unlock()
	if pulls != 0 {
		t.Errorf("%d pulls out after Drain", pulls)
	}
	ds = get(t, open(t, s, Config{AckWait: time.Hour}), 1, 10*time.Second)
	// Handed out, NAKed, perhaps back to the pull and given back once: 3
	// at most.
	if len(ds) != 1 || ds[0].Deliveries > 3 {
		t.Fatalf("after Drain, another getter got %q deliveries %v; want a, delivered 3 times at most", data(ds), deliveries(ds))
	}
}

// A message partly acknowledged in a full queue: the rest waits for room
// to be stored again, rather than the whole message, acknowledged items
// too, coming back.
func TestPartlyAcknowledgedMessageInAFullQueueWaitsForRoom(t *testing.T) {
	st := open(t, startServer(t, t.TempDir()), Config{AckWait: time.Hour, Pack: 10, Capacity: 2})
	ctx := context.Background()
	putTogether(t, st, "a", "b")
	putTogether(t, st, "c", "d") // full: two messages
	ds := get(t, st, 2, 5*time.Second)
	if names := data(ds); !slices.Equal(names, []string{"a", "b"}) {
		t.Fatalf("Get = %q, want a b", names)
	}
	if err := ds[0].Ack(); err != nil {
		t.Fatal(err)
	}
	if err := ds[1].Nak(); err != nil { // b cannot be stored again yet
		t.Fatal(err)
	}
	cd := get(t, st, 2, 5*time.Second)
	if names := data(cd); !slices.Equal(names, []string{"c", "d"}) {
		t.Fatalf("Get = %q, want c d (a b's message is still in flight)", names)
	}
	for _, d := range cd {
		if err := d.AckSync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	ds = get(t, st, 2, 10*time.Second)
	if names := data(ds); !slices.Equal(names, []string{"b"}) || ds[0].Deliveries != 2 {
		t.Fatalf("once there was room: %q deliveries %v; want b alone, delivered twice", names, deliveries(ds))
	}
	if err := ds[0].AckSync(ctx); err != nil {
		t.Fatal(err)
	}
	if ds := get(t, st, 2, 200*time.Millisecond); len(ds) != 0 {
		t.Errorf("after all acknowledged: %q came back", data(ds))
	}
}

// Items stored again whose counts make the message larger than a message
// may be go one to a message: none is lost, each counted on.
func TestItemsStoredAgainSplitWhenTheirCountsDoNotFit(t *testing.T) {
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		NoSigs: true, NoLog: true, MaxPayload: 4096})
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(s.Shutdown)
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("JetStream server not ready in 10s")
	}
	st := open(t, s, Config{AckWait: time.Hour, Pack: 1024})
	ctx := context.Background()
	const n = 1000
	in := make([]string, n)
	for i := range in {
		in[i] = strconv.Itoa(i % 10)
	}
	putTogether(t, st, in...) // 1000 one-byte items: one message of 2000 bytes
	if stats, err := st.Stats(ctx); err != nil || stats.Put != 1 {
		t.Fatalf("stats after the put: %+v, %v; want one message", stats, err)
	}
	ds := get(t, st, n, 5*time.Second)
	if len(ds) != n {
		t.Fatalf("Get = %d items, want %d", len(ds), n)
	}
	// One acknowledged, 999 refused: their counts ("1 1 1 ...", 1998
	// bytes) and their bytes do not fit 4096 with the headers.
	if err := ds[0].Ack(); err != nil {
		t.Fatal(err)
	}
	for _, d := range ds[1:] {
		if err := d.Nak(); err != nil {
			t.Fatal(err)
		}
	}
	// The 999 are stored again one message each, one publish after the
	// other: a second alone, over 20 s once beside a second go test and
	// the chaos run. The deadline only stops an item that never comes.
	var back []Delivery
	deadline := time.Now().Add(2 * time.Minute)
	for len(back) < n-1 && time.Now().Before(deadline) {
		back = append(back, get(t, st, n, 5*time.Second)...)
	}
	if len(back) != n-1 {
		t.Fatalf("%d items came back, want %d", len(back), n-1)
	}
	for _, d := range back {
		if d.Deliveries != 2 {
			t.Fatalf("an item came back with deliveries %d, want 2", d.Deliveries)
		}
	}
	if stats, err := st.Stats(ctx); err != nil || stats.Put != n {
		t.Errorf("stats: %+v, %v; want the first message and %d stored again, one item each", stats, err, n-1)
	}
}

// awaitFetched waits (a minute at most: the deadline only stops a hang,
// on however loaded a machine) until cond holds of st's fetched
// state, which has no event to wait on: it is polled.
func awaitFetched(t *testing.T, st *Store, what string, cond func(*fetched) bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		st.fetched.mu.Lock()
		ok := cond(&st.fetched)
		st.fetched.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within a minute: %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
