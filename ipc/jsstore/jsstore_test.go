package jsstore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/gotyledon/gotyledon/ipc"
)

// The tests run a JetStream server in the test process, on a loopback
// port the kernel picks and a file store in the test's directory; the
// crash test runs one in a helper process (the test binary run again,
// envHelper naming what it does) and kills it.
const envHelper = "JSSTORE_TEST_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(envHelper) {
	case "":
		os.Exit(m.Run())
	case "put-take-and-hang":
		os.Exit(putTakeAndHang())
	default:
		fmt.Fprintf(os.Stderr, "unknown helper %q\n", os.Getenv(envHelper))
		os.Exit(2)
	}
}

// startHelper runs this test binary as helper name with env, and returns
// it and the first line it prints; a later line, if more is not nil, goes
// to more. The helper is killed when the test ends, and ends itself at
// the end of its stdin if the test dies.
func startHelper(b testing.TB, name string, more chan<- string, env ...string) (*exec.Cmd, string) {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), envHelper+"="+name), env...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if _, err := cmd.StdinPipe(); err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := make(chan string, 2)
	go func() {
		r := bufio.NewReader(out)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				close(lines)
				return
			}
			lines <- strings.TrimSpace(line)
		}
	}()
	var first string
	select {
	case l, ok := <-lines:
		if !ok {
			b.Fatalf("helper %s ended before it was ready", name)
		}
		first = l
	case <-time.After(30 * time.Second):
		b.Fatalf("helper %s not ready in 30s", name)
	}
	if more != nil {
		go func() {
			if l, ok := <-lines; ok {
				more <- l
			}
		}()
	}
	return cmd, first
}

// startServer runs a JetStream server on dir until the test ends.
func startServer(t *testing.T, dir string) *server.Server {
	t.Helper()
	s, err := newServer(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	return s
}

// newServer starts a JetStream server on a loopback port, its store in
// dir; syncAlways syncs the store at every message.
func newServer(dir string, syncAlways bool) (*server.Server, error) {
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: dir,
		NoSigs: true, NoLog: true, SyncAlways: syncAlways})
	if err != nil {
		return nil, err
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, errors.New("JetStream server not ready in 10s")
	}
	return s, nil
}

// open connects to s and opens the queue "jobs" with cfg's settings.
func open(t *testing.T, s *server.Server, cfg Config) *Store {
	t.Helper()
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	cfg.Queue = "jobs"
	st, err := Open(context.Background(), nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// items is n batches of one item each, the item its id.
func items(prefix string, n int) []Batch {
	out := make([]Batch, n)
	for i := range out {
		out[i] = Batch{ID: prefix + strconv.Itoa(i), Items: [][]byte{[]byte(prefix + strconv.Itoa(i))}}
	}
	return out
}

func data(ds []Delivery) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = string(d.Data)
	}
	return out
}

func get(t *testing.T, st *Store, limit int, wait time.Duration) []Delivery {
	t.Helper()
	ds, err := st.Get(context.Background(), limit, wait)
	if err != nil {
		t.Fatal(err)
	}
	return ds
}

func TestPutGetAckInOrder(t *testing.T) {
	st := open(t, startServer(t, t.TempDir()), Config{Capacity: 10})
	ctx := context.Background()
	if n, err := st.Put(ctx, items("a", 3)); n != 3 || err != nil {
		t.Fatalf("Put = %d, %v; want 3, nil", n, err)
	}
	ds := get(t, st, 10, time.Second)
	if got := data(ds); !slices.Equal(got, []string{"a0", "a1", "a2"}) {
		t.Fatalf("Get = %q, want a0 a1 a2", got)
	}
	// Plain acks for the first two, a confirmed one for the last: the
	// server takes one connection's acks in order, so once the last is
	// confirmed the others have been taken too.
	for i, d := range ds {
		if d.Deliveries != 1 {
			t.Errorf("%s: deliveries %d, want 1", d.Data, d.Deliveries)
		}
		ack := d.Ack
		if i == len(ds)-1 {
			ack = func() error { return d.AckSync(ctx) }
		}
		if err := ack(); err != nil {
			t.Fatal(err)
		}
	}
	if stats, err := st.Stats(ctx); err != nil || stats != (Stats{Put: 3, Delivered: 3, Acked: 3}) {
		t.Errorf("stats after every ack: %+v, %v; want 3 put, delivered and acked, nothing waiting or in flight", stats, err)
	}
	if ds := get(t, st, 10, 50*time.Millisecond); len(ds) != 0 {
		t.Errorf("Get after every ack = %q, want nothing", data(ds))
	}
}

func TestRetriedPutStoresEachItemOnce(t *testing.T) {
	st := open(t, startServer(t, t.TempDir()), Config{})
	ctx := context.Background()
	if _, err := st.Put(ctx, items("b", 2)); err != nil {
		t.Fatal(err)
	}
	// The reply was lost, say: the same two again, and a third.
	if n, err := st.Put(ctx, items("b", 3)); n != 3 || err != nil {
		t.Fatalf("retried Put = %d, %v; want 3, nil", n, err)
	}
	if got := data(get(t, st, 10, time.Second)); !slices.Equal(got, []string{"b0", "b1", "b2"}) {
		t.Errorf("Get = %q, want each item once: b0 b1 b2", got)
	}
}

func TestFullQueueStoresWhatFitsAndRefusesTheRest(t *testing.T) {
	st := open(t, startServer(t, t.TempDir()), Config{Capacity: 2})
	ctx := context.Background()
	n, err := st.Put(ctx, items("c", 3))
	if n != 2 || !errors.Is(err, ErrFull) {
		t.Fatalf("Put of 3 into room for 2 = %d, %v; want 2, ErrFull", n, err)
	}
	ds := get(t, st, 1, time.Second)
	if len(ds) != 1 {
		t.Fatalf("Get = %q, want one item", data(ds))
	}
	// In flight still counts: room comes with the ack.
	if n, err := st.Put(ctx, items("c", 3)[2:]); n != 0 || !errors.Is(err, ErrFull) {
		t.Fatalf("Put with an item in flight = %d, %v; want 0, ErrFull", n, err)
	}
	if err := ds[0].AckSync(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := st.Put(ctx, items("c", 3)[2:]); n != 1 || err != nil {
		t.Fatalf("Put after an ack = %d, %v; want 1, nil", n, err)
	}
	if got := data(get(t, st, 10, time.Second)); !slices.Equal(got, []string{"c1", "c2"}) {
		t.Errorf("Get = %q, want c1 c2", got)
	}
}

func TestNakDeliversAgainAtOnce(t *testing.T) {
	st := open(t, startServer(t, t.TempDir()), Config{AckWait: time.Hour})
	ctx := context.Background()
	if _, err := st.Put(ctx, items("d", 1)); err != nil {
		t.Fatal(err)
	}
	ds := get(t, st, 1, time.Second)
	if len(ds) != 1 {
		t.Fatalf("Get = %q, want d0", data(ds))
	}
	if err := ds[0].Nak(); err != nil {
		t.Fatal(err)
	}
	ds = get(t, st, 1, 10*time.Second)
	if len(ds) != 1 || string(ds[0].Data) != "d0" || ds[0].Deliveries != 2 {
		t.Fatalf("Get after Nak = %q (deliveries %v), want d0 delivered twice", data(ds), ds)
	}
}

// A getter that goes away with items in hand: another gets them once
// AckWait has passed, delivered twice.
func TestItemsOfAGetterThatWentAwayComeBackAfterAckWait(t *testing.T) {
	s := startServer(t, t.TempDir())
	cfg := Config{AckWait: time.Second}
	gone := open(t, s, cfg)
	if _, err := gone.Put(context.Background(), items("e", 2)); err != nil {
		t.Fatal(err)
	}
	if ds := get(t, gone, 2, time.Second); len(ds) != 2 {
		t.Fatalf("Get = %q, want e0 e1", data(ds))
	}
	other := open(t, s, cfg)
	var got []Delivery
	deadline := time.Now().Add(time.Minute)
	for len(got) < 2 && time.Now().Before(deadline) {
		got = append(got, get(t, other, 2-len(got), 10*time.Second)...)
	}
	if names := data(got); !slices.Equal(names, []string{"e0", "e1"}) {
		t.Fatalf("the other getter got %q, want e0 e1", names)
	}
	for _, d := range got {
		if d.Deliveries != 2 {
			t.Errorf("%s: deliveries %d, want 2", d.Data, d.Deliveries)
		}
	}
}

// The server's process killed with SIGKILL, with items waiting and items
// in flight: a server started again on its directory has them all.
func TestItemsSurviveTheServersProcessKilled(t *testing.T) {
	const queued, taken = 100, 10
	dir := t.TempDir()
	cmd, line := startHelper(t, "put-take-and-hang", nil, "JSSTORE_DIR="+dir,
		"JSSTORE_QUEUED="+strconv.Itoa(queued), "JSSTORE_TAKEN="+strconv.Itoa(taken))
	if line != "ready" {
		t.Fatalf("helper said %q, want ready", line)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()

	// AckWait long enough that nothing taken here comes back before it
	// is acknowledged, even on a loaded machine.
	st := open(t, startServer(t, dir), Config{AckWait: 5 * time.Second})
	seen := map[string]int{}
	deadline := time.Now().Add(60 * time.Second)
	for len(seen) < queued && time.Now().Before(deadline) {
		for _, d := range get(t, st, queued, 10*time.Second) {
			seen[string(d.Data)] = d.Deliveries
			if err := d.AckSync(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
	}
	if len(seen) != queued {
		t.Fatalf("after the restart %d of %d items came, want all", len(seen), queued)
	}
	// The consumer's record of what it delivered is written behind: the
	// items in flight at the kill come back counted as delivered again,
	// or as never delivered. Either way none is lost, and no other item
	// counts a delivery before the restart.
	redelivered := 0
	for _, n := range seen {
		if n > 1 {
			redelivered++
		}
	}
	if redelivered > taken {
		t.Errorf("%d items delivered again, want at most the %d in flight at the kill", redelivered, taken)
	}
}

// putTakeAndHang runs a server on $JSSTORE_DIR, puts $JSSTORE_QUEUED
// items, takes $JSSTORE_TAKEN without acknowledging them, says "ready"
// and waits to be killed.
func putTakeAndHang() int {
	queued, _ := strconv.Atoi(os.Getenv("JSSTORE_QUEUED"))
	taken, _ := strconv.Atoi(os.Getenv("JSSTORE_TAKEN"))
	s, err := newServer(os.Getenv("JSSTORE_DIR"), false)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx := context.Background()
	st, err := Open(ctx, nc, Config{Queue: "jobs", AckWait: time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if n, err := st.Put(ctx, items("f", queued)); n != queued || err != nil {
		fmt.Fprintln(os.Stderr, "put:", n, err)
		return 1
	}
	for got := 0; got < taken; {
		ds, err := st.Get(ctx, taken-got, 5*time.Second)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		got += len(ds)
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin) // until the test kills us, or is gone
	return 1
}

// A Get waiting for an item ends with its context, not after its wait.
func TestGetEndsWithItsContext(t *testing.T) {
	st := open(t, startServer(t, t.TempDir()), Config{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ds, err := st.Get(ctx, 1, time.Hour)
	if len(ds) != 0 || !errors.Is(err, context.Canceled) {
		t.Fatalf("Get with its context cancelled = %q, %v; want nothing and context.Canceled", data(ds), err)
	}
}

// Items given back just before a local server shuts down (the bridge's
// stop) are deliverable at once after its restart: Drain waits until
// the server has taken the NAKs, which a flush does not (the consumer
// takes them on a goroutine of its own, and a shutdown drops what it has
// not taken, leaving the items to AckWait, an hour here).
func TestDrainKeepsItemsGivenBackAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	const n = 50
	for round := range 30 {
		s, err := newServer(dir, false)
		if err != nil {
			t.Fatal(err)
		}
		nc, err := nats.Connect(s.ClientURL())
		if err != nil {
			t.Fatal(err)
		}
		st, err := Open(context.Background(), nc, Config{Queue: "jobs", AckWait: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		if round == 0 {
			if _, err := st.Put(context.Background(), items("x", n)); err != nil {
				t.Fatal(err)
			}
		}
		q := NewQueues(nil, st)
		var got []ipc.StoredItem
		// Lost NAKs would hold the items for AckWait, an hour: a minute
		// tells them from a restarted server slow to hand them out on a
		// loaded machine.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		for len(got) < n {
			more, err := q.Get(ctx, "jobs", n-len(got), time.Minute, nil)
			if err != nil || len(more) == 0 {
				cancel()
				t.Fatalf("round %d: %d of %d items deliverable (%v): the NAKs before the last restart were lost", round, len(got), n, err)
			}
			got = append(got, more...)
		}
		for _, it := range got {
			if err := it.Nack(); err != nil {
				t.Fatal(err)
			}
		}
		if err := q.Drain(ctx); err != nil {
			t.Fatalf("Drain: %v", err)
		}
		cancel()
		nc.Close()
		s.Shutdown()
		s.WaitForShutdown()
	}
}

// An item that the servers' max_payload cannot take (their default is
// 1 MiB, the protocol's max_item 1 MiB - 64, and the item's headers come
// on top) is TOO_LARGE at once, whatever the put's wait, and nothing of
// its put is stored; what fits is stored.
func TestPutOverMaxPayloadIsTooLarge(t *testing.T) {
	q := NewQueues(nil, open(t, startServer(t, t.TempDir()), Config{}))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n, err := q.Put(ctx, "jobs", [][]byte{[]byte("small"), make([]byte, ipc.DefaultMaxItem)}, -1, nil)
	if n != 0 || !errors.Is(err, ipc.ErrTooLarge) {
		t.Fatalf("Put with an item over max_payload, waiting for ever = %d, %v; want 0, ErrTooLarge", n, err)
	}
	if n, err := q.Put(ctx, "jobs", [][]byte{make([]byte, 1<<19)}, -1, nil); n != 1 || err != nil {
		t.Fatalf("Put of half a MiB = %d, %v; want 1", n, err)
	}
}
