package ipc

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// testTimeout bounds every wait of these tests: a hang fails, it does not
// sleep.
const testTimeout = 20 * time.Second

// brokerHarness is a broker serving on a real Unix socket in a fresh
// directory, closed when the test ends.
type brokerHarness struct {
	t      *testing.T
	b      *Broker
	path   string
	logs   *observer.ObservedLogs
	served chan error
}

// newBrokerHarness starts a harness; each setup runs on the broker before
// it serves (to replace its clock, say).
func newBrokerHarness(t *testing.T, opts BrokerOptions, setup ...func(*Broker)) *brokerHarness {
	t.Helper()
	dir, err := os.MkdirTemp("", "gtq")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	core, logs := observer.New(zapcore.DebugLevel)
	if opts.Logger == nil {
		opts.Logger = zap.New(core)
	}
	if opts.Queues == nil {
		opts.Queues = []QueueConfig{{Name: "jobs"}}
	}
	b, err := NewBroker(opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range setup {
		f(b)
	}
	h := &brokerHarness{t: t, b: b, path: filepath.Join(dir, "run", "queue.sock"), logs: logs, served: make(chan error, 1)}
	l, err := Listen(h.path, -1)
	if err != nil {
		t.Fatal(err)
	}
	go func() { h.served <- b.Serve(l) }()
	t.Cleanup(func() {
		b.Close()
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

func (h *brokerHarness) dial() *Client {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	c, err := Dial(ctx, h.path)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { c.Close() })
	return c
}

func (h *brokerHarness) stats(name string) QueueStats {
	for _, s := range h.b.Stats() {
		if s.Name == name {
			return s
		}
	}
	h.t.Fatalf("no queue %q", name)
	return QueueStats{}
}

// eventually polls cond (a condition on the broker's state, which has no
// event to wait on) until it holds or the test timeout passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// rawConn is a hand-driven protocol connection, for what the Client never
// sends.
type rawConn struct {
	t  *testing.T
	nc net.Conn
	fr frameReader
}

func (h *brokerHarness) raw(hello bool) *rawConn {
	return h.rawT(h.t, hello)
}

func (h *brokerHarness) rawT(t *testing.T, hello bool) *rawConn {
	t.Helper()
	return dialRaw(t, h.path, hello)
}

// dialRaw dials a hand-driven connection to the socket at path, after
// HELLO and WELCOME if hello.
func dialRaw(t *testing.T, path string, hello bool) *rawConn {
	t.Helper()
	nc, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(testTimeout))
	rc := &rawConn{t: t, nc: nc, fr: frameReader{r: bufio.NewReader(nc)}}
	if hello {
		f := helloFrame{Magic: [4]byte{'G', 'T', 'Y', 'Q'}, Version: 1, Client: "raw"}
		rc.write(appendHello(nil, &f))
		if _, ok := rc.read().(*welcomeFrame); !ok {
			t.Fatal("no WELCOME")
		}
	}
	return rc
}

func (rc *rawConn) write(b []byte) {
	rc.t.Helper()
	if _, err := rc.nc.Write(b); err != nil {
		rc.t.Fatal(err)
	}
}

func (rc *rawConn) read() any {
	rc.t.Helper()
	p, err := rc.fr.read(1<<21, func(byte) bool { return true })
	if err != nil {
		rc.t.Fatalf("reading a frame: %v", err)
	}
	f, err := decodeFrame(p)
	if err != nil {
		rc.t.Fatal(err)
	}
	return f
}

// expectFatalAndClose reads a FATAL with status, then end of stream.
func (rc *rawConn) expectFatalAndClose(status uint16) {
	rc.t.Helper()
	f, ok := rc.read().(*fatalFrame)
	if !ok || f.Status != status {
		rc.t.Fatalf("got %#v, want FATAL %s", f, statusName(status))
	}
	rc.expectClosed()
}

func (rc *rawConn) expectClosed() {
	rc.t.Helper()
	var buf [1]byte
	if _, err := rc.nc.Read(buf[:]); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		rc.t.Fatalf("connection still open (read: %v)", err)
	}
}

func TestPutGetAckNack(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{})
	c := h.dial()
	ctx := ctxT(t)
	if err := c.Put(ctx, "jobs", []byte("one")); err != nil {
		t.Fatal(err)
	}
	d, err := c.Get(ctx, "jobs")
	if err != nil {
		t.Fatal(err)
	}
	if string(d.Body) != "one" || d.Deliveries != 1 || d.Queue != "jobs" || d.ID == 0 {
		t.Fatalf("got %+v", d)
	}
	if s := h.stats("jobs"); s.InFlight != 1 || s.Depth != 0 {
		t.Fatalf("stats %+v", s)
	}
	if err := c.Nack(ctx, d); err != nil {
		t.Fatal(err)
	}
	d2, err := c.Get(ctx, "jobs")
	if err != nil {
		t.Fatal(err)
	}
	if string(d2.Body) != "one" || d2.Deliveries != 2 || d2.ID == d.ID {
		t.Fatalf("redelivery %+v", d2)
	}
	if err := c.Ack(ctx, d2); err != nil {
		t.Fatal(err)
	}
	var se *StatusError
	if err := c.Ack(ctx, d2); !errors.As(err, &se) || se.Code != statusUnknownDelivery {
		t.Fatalf("second ack: %v, want UNKNOWN_DELIVERY", err)
	}
	// auto-ack: nothing in flight afterwards
	if err := c.Put(ctx, "jobs", []byte("two")); err != nil {
		t.Fatal(err)
	}
	body, err := c.GetAutoAck(ctx, "jobs")
	if err != nil || string(body) != "two" {
		t.Fatalf("auto-ack get: %q, %v", body, err)
	}
	eventually(t, "auto-ack item counted acked", func() bool { return h.stats("jobs").Acked == 2 })
	s := h.stats("jobs")
	want := QueueStats{Name: "jobs", Capacity: DefaultCapacity, Put: 2, Delivered: 3, Acked: 2, Redelivered: 1}
	if s != want {
		t.Fatalf("stats %+v, want %+v", s, want)
	}
	// errors a caller tells apart
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := c.Get(short, "jobs"); !errors.Is(err, ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("get on empty queue: %v, want ErrTimeout and DeadlineExceeded", err)
	}
	if err := c.Put(ctx, "nope", nil); !errors.Is(err, ErrNoSuchQueue) {
		t.Fatalf("put on unknown queue: %v", err)
	}
	if _, err := c.Get(ctx, "nope"); !errors.Is(err, ErrNoSuchQueue) {
		t.Fatalf("get on unknown queue: %v", err)
	}
	if _, err := c.GetBatch(ctx, "jobs", 0); err == nil {
		t.Fatal("GetBatch max 0: no error")
	}
}

func TestFIFOAndBatches(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{})
	p, g := h.dial(), h.dial()
	ctx := ctxT(t)
	var items [][]byte
	for i := range 1000 {
		items = append(items, fmt.Appendf(nil, "%04d", i))
	}
	if n, err := p.PutBatch(ctx, "jobs", items); n != 1000 || err != nil {
		t.Fatalf("PutBatch: %d, %v", n, err)
	}
	next := 0
	for next < 1000 {
		ds, err := g.GetBatch(ctx, "jobs", 37)
		if err != nil {
			t.Fatal(err)
		}
		if len(ds) > 37 {
			t.Fatalf("got %d > max items", len(ds))
		}
		for _, d := range ds {
			if want := fmt.Sprintf("%04d", next); string(d.Body) != want {
				t.Fatalf("got %q, want %q", d.Body, want)
			}
			next++
		}
		if err := g.Ack(ctx, ds...); err != nil {
			t.Fatal(err)
		}
	}
}

// A PutBatch over max_frame goes in several frames, in order.
func TestPutBatchSplits(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{MaxItem: 1000})
	c := h.dial()
	ctx := ctxT(t)
	var items [][]byte
	for i := range 50 {
		items = append(items, append(fmt.Appendf(nil, "%02d", i), make([]byte, 500)...))
	}
	if n, err := c.PutBatch(ctx, "jobs", items); n != 50 || err != nil {
		t.Fatalf("PutBatch: %d, %v", n, err)
	}
	for i := range 50 {
		d, err := c.Get(ctx, "jobs")
		if err != nil {
			t.Fatal(err)
		}
		if string(d.Body[:2]) != fmt.Sprintf("%02d", i) {
			t.Fatalf("item %d: got %q", i, d.Body[:2])
		}
	}
}

// A consumer whose connection closes while it holds items: they go to the
// next consumer first, in their delivery order, with deliveries 2.
func TestClosedConsumerRequeuesAtHead(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{})
	p := h.dial()
	ctx := ctxT(t)
	for _, s := range []string{"a", "b", "c", "d", "e"} {
		if err := p.Put(ctx, "jobs", []byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	dying := h.dial()
	first, err := dying.Get(ctx, "jobs")
	if err != nil {
		t.Fatal(err)
	}
	rest, err := dying.GetBatch(ctx, "jobs", 2)
	if err != nil || len(rest) != 2 {
		t.Fatalf("GetBatch: %d, %v", len(rest), err)
	}
	if string(first.Body)+string(rest[0].Body)+string(rest[1].Body) != "abc" {
		t.Fatal("not FIFO")
	}
	if err := dying.Ack(ctx, rest[0]); err != nil { // b is done
		t.Fatal(err)
	}
	dying.Close()
	// The broker learns of the close when it reads end of file, after
	// Close returns: wait for the requeue before a new consumer asks.
	eventually(t, "the closed consumer's items requeued", func() bool { return h.stats("jobs").InFlight == 0 })
	other := h.dial()
	var got []string
	for range 4 {
		d, err := other.Get(ctx, "jobs")
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s%d", d.Body, d.Deliveries))
	}
	if fmt.Sprint(got) != "[a2 c2 d1 e1]" {
		t.Fatalf("after the close got %v, want [a2 c2 d1 e1]", got)
	}
	s := h.stats("jobs")
	if s.Redelivered != 2 || s.InFlight != 4 || s.Acked != 1 {
		t.Fatalf("stats %+v", s)
	}
}

// 10,000 items through 3 consumers whose connections close at random
// points: every item is consumed, and only items in flight at a close are
// seen twice.
func TestConsumersKilledAtRandom(t *testing.T) {
	const total = 10000
	h := newBrokerHarness(t, BrokerOptions{Queues: []QueueConfig{{Name: "jobs", Capacity: 500}}, Logger: zap.NewNop()})
	ctx := ctxT(t)
	go func() {
		p := h.dial()
		for i := 0; i < total; i += 100 {
			var batch [][]byte
			for j := i; j < i+100; j++ {
				batch = append(batch, fmt.Appendf(nil, "%d", j))
			}
			if _, err := p.PutBatch(ctx, "jobs", batch); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	var mu sync.Mutex
	seen := make(map[string]int)   // times handed to a consumer
	acked := make(map[string]bool) // acked at least once
	inFlightAtClose := make(map[string]bool)
	closes := 0
	var wg sync.WaitGroup
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(uint64(w), 42))
			for {
				if s := h.stats("jobs"); s.Acked == total {
					return
				} else if ctx.Err() != nil {
					// A lost item would keep the consumers looking for it
					// for ever: give up with the test's context.
					t.Errorf("test context done with %d of %d items acked: %+v", s.Acked, total, s)
					return
				}
				c := h.dial()
				// Also close from outside at a random moment, to catch ITEMS in transit.
				killer := time.AfterFunc(time.Duration(rnd.IntN(20000))*time.Microsecond, func() { c.Close() })
				for life := rnd.IntN(40); ; life-- {
					short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
					ds, err := c.GetBatch(short, "jobs", 1+rnd.IntN(20))
					cancel()
					if errors.Is(err, ErrTimeout) {
						break // maybe done; the loop above checks
					}
					if err != nil {
						if !errors.Is(err, ErrClosed) && ctx.Err() == nil { // the loop above reports ctx
							t.Error(err)
						}
						break
					}
					mu.Lock()
					for _, d := range ds {
						seen[string(d.Body)]++
					}
					mu.Unlock()
					if life <= 0 { // die holding them
						c.Close()
						mu.Lock()
						closes++
						for _, d := range ds {
							inFlightAtClose[string(d.Body)] = true
						}
						mu.Unlock()
						break
					}
					err = c.Ack(ctx, ds...)
					mu.Lock()
					if err != nil { // closed under us: maybe acked, maybe not
						closes++
						for _, d := range ds {
							inFlightAtClose[string(d.Body)] = true
						}
					} else {
						for _, d := range ds {
							acked[string(d.Body)] = true
						}
					}
					mu.Unlock()
					if err != nil {
						break
					}
				}
				killer.Stop()
				c.Close()
			}
		}()
	}
	wg.Wait()
	dups := 0
	for k, n := range seen {
		if n > 1 {
			dups += n - 1
			if !inFlightAtClose[k] {
				t.Errorf("item %s seen %d times but never in flight at a close", k, n)
			}
		}
	}
	for i := range total {
		// Consumed: acked, or handled by a consumer whose ack was cut by
		// the close (the broker's count below says it was acked).
		if k := fmt.Sprint(i); !acked[k] && !(inFlightAtClose[k] && seen[k] > 0) {
			t.Errorf("item %d never consumed", i)
		}
	}
	s := h.stats("jobs")
	if s.Depth != 0 || s.InFlight != 0 || s.Put != total || s.Acked != total {
		t.Errorf("stats at the end %+v", s)
	}
	t.Logf("%d closes, %d items in flight at a close, %d duplicate deliveries, %d redelivered", closes, len(inFlightAtClose), dups, s.Redelivered)
}

func TestFullQueueHoldsProducerBack(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{Queues: []QueueConfig{{Name: "small", Capacity: 2}}})
	p, g := h.dial(), h.dial()
	ctx := ctxT(t)
	for _, s := range []string{"1", "2"} {
		if err := p.TryPut("small", []byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.TryPut("small", []byte("3")); !errors.Is(err, ErrFull) {
		t.Fatalf("TryPut on a full queue: %v, want ErrFull", err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Put(ctx, "small", []byte("3")) }()
	q := h.b.queue("small")
	eventually(t, "the PUT to wait", func() bool { q.mu.Lock(); defer q.mu.Unlock(); return q.livePuts() == 1 })
	select {
	case err := <-done:
		t.Fatalf("Put returned %v on a full queue", err)
	default:
	}
	d, err := g.Get(ctx, "small")
	if err != nil || string(d.Body) != "1" {
		t.Fatalf("get: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Put after room freed: %v", err)
	}
	// in flight does not count against capacity
	if s := h.stats("small"); s.Depth != 2 || s.InFlight != 1 {
		t.Fatalf("stats %+v", s)
	}
	// A timed-out PutBatch reports what it got in.
	if _, err := g.Get(ctx, "small"); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	n, err := p.PutBatch(short, "small", [][]byte{[]byte("a"), []byte("b"), []byte("c")})
	if n != 1 || !errors.Is(err, ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("PutBatch with timeout: %d, %v; want 1 and ErrTimeout", n, err)
	}
	// A cancelled Put: the CANCEL withdraws it.
	cctx, ccancel := context.WithCancel(ctx)
	go func() { done <- p.Put(cctx, "small", []byte("x")) }()
	eventually(t, "the PUT to wait", func() bool { q.mu.Lock(); defer q.mu.Unlock(); return q.livePuts() == 1 })
	ccancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Put: %v", err)
	}
	eventually(t, "the PUT withdrawn", func() bool { q.mu.Lock(); defer q.mu.Unlock(); return q.livePuts() == 0 })
}

// A GET withdrawn by its context takes nothing: a later item goes to the
// next GET.
func TestCancelledGet(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{})
	c := h.dial()
	ctx := ctxT(t)
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { _, err := c.Get(cctx, "jobs"); done <- err }()
	q := h.b.queue("jobs")
	eventually(t, "the GET to wait", func() bool { q.mu.Lock(); defer q.mu.Unlock(); return q.liveGets() == 1 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Get: %v", err)
	}
	eventually(t, "the GET withdrawn", func() bool { q.mu.Lock(); defer q.mu.Unlock(); return q.liveGets() == 0 })
	if err := c.Put(ctx, "jobs", []byte("x")); err != nil {
		t.Fatal(err)
	}
	d, err := c.Get(ctx, "jobs")
	if err != nil || d.Deliveries != 1 {
		t.Fatalf("get after cancel: %+v, %v", d, err)
	}
}

// An ITEMS for a GET nobody waits for any more is NACKed by the client.
func TestLateItemsAreNacked(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{})
	c := h.dial()
	ctx := ctxT(t)
	if err := c.Put(ctx, "jobs", []byte("x")); err != nil {
		t.Fatal(err)
	}
	// Register a GET as its caller would, then abandon it before the reply.
	cl := &call{ch: make(chan clientReply, 1), queue: "jobs", abandoned: true}
	if _, err := c.send(ctx, cl, func(dst []byte, id uint32) []byte {
		return appendGet(dst, &getFrame{ID: id, TimeoutMS: waitForever, Queue: "jobs", Max: 1})
	}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the item sent to the abandoned GET", func() bool { s := h.stats("jobs"); return s.Depth == 0 && s.InFlight == 1 })
	// A caller that gives up leaves its wait (leaveWait), which has the
	// background reader read what can still come.
	c.mu.Lock()
	c.waiters++
	c.mu.Unlock()
	c.leaveWait()
	eventually(t, "the late item requeued", func() bool { s := h.stats("jobs"); return s.Depth == 1 && s.InFlight == 0 })
	d, err := c.Get(ctx, "jobs")
	if err != nil || d.Deliveries != 2 {
		t.Fatalf("get: %+v, %v", d, err)
	}
}

func TestTooLarge(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{MaxItem: 100})
	c := h.dial()
	ctx := ctxT(t)
	if err := c.Put(ctx, "jobs", make([]byte, 101)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("client-side: %v, want ErrTooLarge", err)
	}
	// The broker checks too: a raw PUT of a good and a too large item
	// queues nothing.
	rc := h.raw(true)
	rc.write(appendPut(nil, &putFrame{ID: 7, TimeoutMS: 0, Queue: "jobs", Items: [][]byte{[]byte("ok"), make([]byte, 101)}}))
	r, ok := rc.read().(*resultFrame)
	if !ok || r.ID != 7 || r.Status != statusTooLarge || r.N != 0 {
		t.Fatalf("got %#v, want RESULT TOO_LARGE", r)
	}
	if s := h.stats("jobs"); s.Depth != 0 {
		t.Fatalf("depth %d after TOO_LARGE", s.Depth)
	}
}

// Bad frames close that connection with FATAL BAD_FRAME; others go on.
func TestBadFramesCloseOnlyThatConnection(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{})
	good := h.dial()
	ctx := ctxT(t)
	for name, bad := range map[string][]byte{
		"garbage":          []byte("\x00\x00\x00\x09GARBAGE!!"),
		"oversized length": {0x7f, 0xff, 0xff, 0xff, 0x02},
		"zero length":      {0, 0, 0, 0},
		"trailing bytes":   unhex(t, "00000006 06 00000001 00"),
		"broker frame":     appendWelcome(nil, &welcomeFrame{}),
		"second HELLO":     appendHello(nil, &helloFrame{Magic: [4]byte{'G', 'T', 'Y', 'Q'}, Version: 1}),
		"GET flag bit 1":   appendGet(nil, &getFrame{ID: 1, Queue: "jobs", Max: 1, Flags: 0x02}),
		"non-UTF-8 queue":  appendGet(nil, &getFrame{ID: 1, Queue: "jo\xffbs", Max: 1}),
	} {
		t.Run(name, func(t *testing.T) {
			rc := h.rawT(t, true)
			rc.write(bad)
			rc.expectFatalAndClose(statusBadFrame)
			if err := good.Put(ctx, "jobs", []byte(name)); err != nil {
				t.Fatalf("the other client: %v", err)
			}
		})
	}
	// Whatever is wrong with the first frame is BAD_HELLO.
	t.Run("garbage before HELLO", func(t *testing.T) {
		rc := h.raw(false)
		rc.write([]byte("GET / HTTP/1.1\r\n\r\n"))
		rc.expectFatalAndClose(statusBadHello)
	})
	t.Run("a request before HELLO", func(t *testing.T) {
		rc := h.raw(false)
		rc.write(appendGet(nil, &getFrame{ID: 1, Queue: "jobs", Max: 1}))
		f, ok := rc.read().(*fatalFrame)
		if !ok || f.Status != statusBadHello || f.Message != "expected HELLO, got GET" {
			t.Fatalf("got %#v, want FATAL BAD_HELLO expected HELLO, got GET", f)
		}
	})
	t.Run("second HELLO says so", func(t *testing.T) {
		rc := h.rawT(t, true)
		rc.write(appendHello(nil, &helloFrame{Magic: [4]byte{'G', 'T', 'Y', 'Q'}, Version: 1}))
		f, ok := rc.read().(*fatalFrame)
		if !ok || f.Status != statusBadFrame || f.Message != "malformed frame: HELLO is not a request a client sends" {
			t.Fatalf("got %#v, want FATAL BAD_FRAME naming HELLO (no Go type)", f)
		}
	})
	t.Run("bad magic", func(t *testing.T) {
		rc := h.raw(false)
		rc.write(appendHello(nil, &helloFrame{Magic: [4]byte{'N', 'O', 'P', 'E'}, Version: 1}))
		rc.expectFatalAndClose(statusBadHello)
	})
	t.Run("bad version", func(t *testing.T) {
		rc := h.raw(false)
		rc.write(appendHello(nil, &helloFrame{Magic: [4]byte{'G', 'T', 'Y', 'Q'}, Version: ProtocolVersion + 1}))
		rc.expectFatalAndClose(statusBadHello)
	})
	if h.logs.FilterMessageSnippet("broke the protocol").Len() == 0 {
		t.Error("no log line for the protocol violations")
	}
	if s := h.stats("jobs"); s.Put != 8 {
		t.Errorf("the good client put %d items, want 8 (one after each bad frame)", s.Put)
	}
}

// Connections that send nothing, or half a frame, are dropped after the
// frame deadline while another client is served.
func TestFrameDeadline(t *testing.T) {
	const deadline = 200 * time.Millisecond
	h := newBrokerHarness(t, BrokerOptions{FrameDeadline: deadline})
	good := h.dial()
	ctx := ctxT(t)
	silent := h.raw(false)
	noHello := h.raw(false)
	noHello.write([]byte{0, 0, 0, 13, 1, 'G'}) // half a HELLO
	half := h.raw(true)
	half.write(unhex(t, "00000018 02 00000001 ffffffff 046a6f6273")) // half a PUT
	start := time.Now()
	// Meanwhile the good client is served, many times over.
	for i := 0; time.Since(start) < deadline/2; i++ {
		if err := good.Put(ctx, "jobs", []byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, err := good.GetAutoAck(ctx, "jobs"); err != nil {
			t.Fatal(err)
		}
	}
	for name, rc := range map[string]*rawConn{"silent": silent, "half HELLO": noHello, "half PUT": half} {
		rc.expectClosed()
		if el := time.Since(start); el < deadline/2 {
			t.Errorf("%s: closed after %v, before the deadline %v", name, el, deadline)
		}
	}
	if err := good.Put(ctx, "jobs", []byte("still")); err != nil {
		t.Fatal(err)
	}
	// An idle connection between frames is not a late frame.
	idle := h.dial()
	time.Sleep(3 * deadline) // the point of the test: idleness longer than the deadline
	if err := idle.Put(ctx, "jobs", []byte("idle")); err != nil {
		t.Fatalf("idle client dropped: %v", err)
	}
	if h.logs.FilterMessageSnippet("within the frame deadline").Len() < 3 {
		t.Errorf("want a log line for each dropped connection, got %v", h.logs.FilterMessageSnippet("deadline").All())
	}
}

func TestAllowRefuses(t *testing.T) {
	var asked Peer
	var mu sync.Mutex
	h := newBrokerHarness(t, BrokerOptions{Allow: func(p Peer) bool { mu.Lock(); asked = p; mu.Unlock(); return false }})
	_, err := Dial(ctxT(t), h.path)
	if !errors.Is(err, ErrRefused) {
		t.Fatalf("Dial: %v, want ErrRefused", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if asked.PID != os.Getpid() || asked.UID != os.Getuid() || asked.GID != os.Getgid() {
		t.Errorf("Allow saw %+v, want this process", asked)
	}
	logs := h.logs.FilterMessageSnippet("refused").All()
	if len(logs) != 1 {
		t.Fatalf("refusal logs: %v", logs)
	}
	f := logs[0].ContextMap()
	if f["pid"] != int64(os.Getpid()) || f["uid"] != int64(os.Getuid()) || f["gid"] != int64(os.Getgid()) {
		t.Errorf("refusal log fields %v", f)
	}
}

// helperEnv makes the test binary, re-executed, act as a helper process
// (see TestIPCHelperProcess) instead of running tests.
const helperEnv = "GOTYLEDON_IPC_TEST_HELPER"

// TestIPCHelperProcess is not a test: it is the body of helper processes
// the tests start by re-executing the test binary.
func TestIPCHelperProcess(t *testing.T) {
	switch os.Getenv(helperEnv) {
	case "":
		t.Skip("helper process for other tests")
	case "dial":
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		c, err := Dial(ctx, os.Getenv(EnvSocket))
		switch {
		case errors.Is(err, ErrRefused):
			fmt.Println("REFUSED")
		case err != nil:
			fmt.Println("ERROR", err)
		default:
			c.Close()
			fmt.Println("WELCOME")
		}
	case "drain-consumer":
		drainConsumerHelper()
	case "drain-getter":
		drainGetterHelper()
	case "acker":
		ackerHelper()
	}
	os.Exit(0)
}

// The default Allow refuses a process of another uid, for real: as root,
// a helper runs as nobody (65534) and dials.
func TestOtherUIDRefusedByDefault(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run a helper process under another uid")
	}
	dir, err := os.MkdirTemp("", "gtq")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	// World-accessible, so that the connect reaches the broker and the
	// refusal is the broker's, not the file system's.
	os.Chmod(dir, 0o777)
	path := filepath.Join(dir, "queue.sock")
	// The test binary sits in a directory only root may enter: run a copy.
	// Copied by cp, not written here: a process forked meanwhile would
	// inherit a descriptor open for writing until its exec, and exec'ing
	// the copy then fails with ETXTBSY ("text file busy").
	exe := filepath.Join(dir, "ipc.test")
	if out, err := exec.Command("cp", os.Args[0], exe).CombinedOutput(); err != nil {
		t.Fatalf("copy the test binary: %v: %s", err, out)
	}
	if err := os.Chmod(exe, 0o755); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	b, err := NewBroker(BrokerOptions{Queues: []QueueConfig{{Name: "jobs"}}, Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	l, err := Listen(path, -1)
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, 0o666)
	go b.Serve(l)
	defer b.Close()
	run := func(cred *syscall.Credential) string {
		cmd := exec.Command(exe, "-test.run=^TestIPCHelperProcess$")
		cmd.Env = append(os.Environ(), helperEnv+"=dial", EnvSocket+"="+path)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("helper: %v", err)
		}
		return string(out)
	}
	if out := run(&syscall.Credential{Uid: 65534, Gid: 65534}); out != "REFUSED\n" {
		t.Fatalf("helper as uid 65534 says %q, want REFUSED", out)
	}
	if out := run(nil); out != "WELCOME\n" {
		t.Fatalf("helper as root says %q, want WELCOME", out)
	}
	refusals := logs.FilterMessageSnippet("refused").All()
	if len(refusals) != 1 || refusals[0].ContextMap()["uid"] != int64(65534) || refusals[0].ContextMap()["gid"] != int64(65534) {
		t.Fatalf("refusal logs %v", refusals)
	}
}

func TestManyProducersAndConsumers(t *testing.T) {
	const producers, consumers, perProducer = 8, 8, 2000
	h := newBrokerHarness(t, BrokerOptions{Queues: []QueueConfig{{Name: "jobs", Capacity: 100}, {Name: "other", Capacity: 10}}})
	ctx := ctxT(t)
	conns := []*Client{h.dial(), h.dial(), h.dial(), h.dial()}
	var wg sync.WaitGroup
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := conns[p%2]
			for i := range perProducer {
				if err := c.Put(ctx, "jobs", fmt.Appendf(nil, "%d/%d", p, i)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	var mu sync.Mutex
	got := make(map[string]int)
	for k := range consumers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := conns[2+k%2]
			for {
				mu.Lock()
				n := len(got)
				mu.Unlock()
				if n == producers*perProducer {
					return
				}
				short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
				ds, err := c.GetBatch(short, "jobs", 1+k)
				cancel()
				// The 100 ms can pass before the GET is even sent on a loaded
				// machine: ErrTimeout either way.
				if errors.Is(err, ErrTimeout) {
					continue
				}
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				for _, d := range ds {
					got[string(d.Body)]++
				}
				mu.Unlock()
				if err := c.Ack(ctx, ds...); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	// Traffic on another queue at the same time.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range 500 {
			if err := conns[0].Put(ctx, "other", []byte{byte(i)}); err != nil {
				t.Error(err)
				return
			}
			if _, err := conns[3].GetAutoAck(ctx, "other"); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	wg.Wait()
	for k, n := range got {
		if n != 1 {
			t.Errorf("%s consumed %d times", k, n)
		}
	}
	if len(got) != producers*perProducer {
		t.Errorf("consumed %d distinct items, want %d", len(got), producers*perProducer)
	}
	// A GET whose 100 ms ran out while its items were on the way gives
	// them back (NACK): they are redelivered, not lost, and every delivery
	// was either acked or redelivered.
	if s := h.stats("jobs"); s.Acked != producers*perProducer || s.InFlight != 0 || s.Depth != 0 || s.Delivered != s.Acked+s.Redelivered {
		t.Errorf("stats %+v", s)
	}
}

func TestCloseWakesWaiters(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{Queues: []QueueConfig{{Name: "jobs"}, {Name: "full", Capacity: 1}}})
	c := h.dial()
	ctx := ctxT(t)
	if err := c.Put(ctx, "full", []byte("x")); err != nil {
		t.Fatal(err)
	}
	getErr, putErr := make(chan error, 1), make(chan error, 1)
	go func() { _, err := c.Get(ctx, "jobs"); getErr <- err }()
	go func() { putErr <- c.Put(ctx, "full", []byte("y")) }()
	eventually(t, "both to wait", func() bool {
		a, b := h.b.queue("jobs"), h.b.queue("full")
		a.mu.Lock()
		b.mu.Lock()
		defer a.mu.Unlock()
		defer b.mu.Unlock()
		return a.liveGets() == 1 && b.livePuts() == 1
	})
	closed := make(chan struct{})
	go func() { h.b.Close(); close(closed) }()
	if err := <-getErr; !errors.Is(err, ErrShuttingDown) {
		t.Errorf("waiting Get: %v, want ErrShuttingDown", err)
	}
	if err := <-putErr; !errors.Is(err, ErrShuttingDown) {
		t.Errorf("waiting Put: %v, want ErrShuttingDown", err)
	}
	select {
	case <-closed:
	case <-time.After(testTimeout):
		t.Fatal("Close did not return")
	}
	if err := c.Put(ctx, "jobs", nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Put after Close: %v, want ErrClosed", err)
	}
	h.b.Close() // twice is fine
	if _, err := Dial(ctx, h.path); err == nil {
		t.Error("Dial after Close succeeded")
	}
}

// Close of the client itself: pending calls return ErrClosed.
func TestClientClose(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{})
	c := h.dial()
	ctx := ctxT(t)
	errc := make(chan error, 1)
	go func() { _, err := c.Get(ctx, "jobs"); errc <- err }()
	q := h.b.queue("jobs")
	eventually(t, "the GET to wait", func() bool { q.mu.Lock(); defer q.mu.Unlock(); return q.liveGets() == 1 })
	c.Close()
	c.Close()
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("pending Get: %v, want ErrClosed", err)
	}
	eventually(t, "the broker to drop the waiting GET", func() bool { q.mu.Lock(); defer q.mu.Unlock(); return q.liveGets() == 0 })
}

func TestListen(t *testing.T) {
	dir, err := os.MkdirTemp("", "gtq")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "sub", "queue.sock")
	l, err := Listen(path, -1)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want socket 0600", fi.Mode())
	}
	if di, _ := os.Stat(filepath.Dir(path)); di.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %v, want 0700", di.Mode())
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 2 || entries[0].Name() != "queue.sock" || entries[1].Name() != "queue.sock.lock" {
		t.Errorf("in the socket's directory: %v, want the socket and its lock", entries)
	}
	if pid, err := os.ReadFile(LockPath(path)); err != nil || string(pid) != strconv.Itoa(os.Getpid())+"\n" {
		t.Errorf("lock file holds %q (%v), want this process's pid", pid, err)
	}
	// live: refused, naming the holder
	var inUse *InUseError
	if _, err := Listen(path, -1); !errors.Is(err, ErrInUse) || !errors.As(err, &inUse) || inUse.PID != os.Getpid() {
		t.Fatalf("second Listen on a live socket: %v, want ErrInUse naming pid %d", err, os.Getpid())
	}
	l.Close()
	l.Close() // twice is fine
	// A longer pid left by an earlier holder is replaced whole, not
	// overwritten in part.
	if err := os.WriteFile(LockPath(path), []byte("1234567890123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// stale (nobody accepts): replaced
	l2, err := Listen(path, -1)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	defer l2.Close()
	if pid, err := os.ReadFile(LockPath(path)); err != nil || string(pid) != strconv.Itoa(os.Getpid())+"\n" {
		t.Errorf("lock file over a longer old pid holds %q (%v), want this process's pid", pid, err)
	}
	if c, err := net.Dial("unix", path); err != nil {
		t.Fatalf("dial the new socket: %v", err)
	} else {
		c.Close()
	}
	// not a socket: left alone
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o600)
	if _, err := Listen(file, -1); err == nil {
		t.Error("Listen replaced a regular file")
	}
	// with a group: 0660 and the group, dir 0750
	gpath := filepath.Join(dir, "g", "queue.sock")
	gid := os.Getgid()
	gl, err := Listen(gpath, gid)
	if err != nil {
		t.Fatal(err)
	}
	defer gl.Close()
	fi, _ = os.Lstat(gpath)
	if fi.Mode().Perm() != 0o660 || int(fi.Sys().(*syscall.Stat_t).Gid) != gid {
		t.Errorf("group socket mode %v gid %d", fi.Mode(), fi.Sys().(*syscall.Stat_t).Gid)
	}
	if di, _ := os.Stat(filepath.Dir(gpath)); di.Mode().Perm() != 0o750 {
		t.Errorf("group dir mode %v, want 0750", di.Mode())
	}
}

func TestDefaultSocketPath(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	for _, tc := range []struct {
		env      map[string]string
		uid      int
		writable bool // /run/gotyledon, or /run, for this user
		want     string
	}{
		{map[string]string{"RUNTIME_DIRECTORY": "/run/gotyledon:/run/other", "XDG_RUNTIME_DIR": "/run/user/1"}, 1000, false, "/run/gotyledon"},
		{map[string]string{"XDG_RUNTIME_DIR": "/run/user/1000"}, 1000, false, "/run/user/1000/gotyledon"},
		{nil, 0, false, "/run/gotyledon"},
		{nil, 1000, true, "/run/gotyledon"},
		{nil, 1000, false, filepath.Join(os.TempDir(), "gotyledon-1000")},
	} {
		got := defaultSocketDir(env(tc.env), tc.uid, func(string) bool { return tc.writable })
		if got != tc.want {
			t.Errorf("%v, uid %d, /run writable %v: %s, want %s", tc.env, tc.uid, tc.writable, got, tc.want)
		}
	}
	if got := DefaultSocketPath(env(map[string]string{"XDG_RUNTIME_DIR": "/x"})); got != "/x/gotyledon/queue.sock" {
		t.Errorf("DefaultSocketPath: %s", got)
	}
}

func TestNewBrokerValidates(t *testing.T) {
	for _, qs := range [][]QueueConfig{
		{{Name: ""}},
		{{Name: "1abc"}},
		{{Name: "a b"}},
		{{Name: string(make([]byte, 64))}},
		{{Name: "jobs"}, {Name: "jobs"}},
	} {
		if _, err := NewBroker(BrokerOptions{Queues: qs}); err == nil {
			t.Errorf("NewBroker(%+v) accepted", qs)
		}
	}
	// A 63-byte name still takes a max_item item in one PUT.
	long := "q" + string(bytesOf('x', 62))
	b, err := NewBroker(BrokerOptions{Queues: []QueueConfig{{Name: long}}})
	if err != nil {
		t.Fatal(err)
	}
	if need := putFixedLen + len(long) + putItemLen + b.maxItem; b.maxFrame < need {
		t.Errorf("max_frame %d < %d needed for a max_item PUT on %q", b.maxFrame, need, long)
	}
}

func bytesOf(c byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = c
	}
	return b
}

// A consumer that stops reading its socket holds up nobody else: the items
// it asked for pile up in its connection alone.
func TestSlowConsumerDoesNotStallOthers(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{Queues: []QueueConfig{{Name: "jobs"}, {Name: "other"}}})
	ctx := ctxT(t)
	slow := h.raw(true)
	var gets []byte
	for i := range 100 {
		gets = appendGet(gets, &getFrame{ID: uint32(i + 1), TimeoutMS: waitForever, Queue: "jobs", Max: 1})
	}
	slow.write(gets) // and never reads again
	q := h.b.queue("jobs")
	eventually(t, "the slow consumer's GETs to wait", func() bool { q.mu.Lock(); defer q.mu.Unlock(); return q.liveGets() == 100 })
	p, g := h.dial(), h.dial()
	big := make([]byte, 64<<10)
	for range 100 { // 6.4 MB for the slow consumer: far more than socket buffers hold
		if err := p.Put(ctx, "jobs", big); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 100 {
		if err := p.Put(ctx, "other", []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		if err := p.Put(ctx, "jobs", []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		if d, err := g.Get(ctx, "other"); err != nil || d.Body[0] != byte(i) {
			t.Fatalf("other consumer: %v", err)
		}
		if d, err := g.Get(ctx, "jobs"); err != nil || d.Body[0] != byte(i) {
			t.Fatalf("other consumer on the same queue: %v", err)
		}
	}
	if s := h.stats("jobs"); s.InFlight != 200 {
		t.Errorf("in flight %d, want 100 with the slow consumer and 100 with the other", s.InFlight)
	}
	// Its items come back when it goes.
	slow.nc.Close()
	eventually(t, "the slow consumer's items requeued", func() bool { return h.stats("jobs").Depth == 100 })
}

// Requests pipelined in the same write as the HELLO are served: the
// handshake and the reader loop share one buffered reader, so the bytes the
// HELLO's read buffered past the HELLO are not lost.
func TestPipelinedAfterHello(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{})
	rc := h.raw(false)
	var b []byte
	b = appendHello(b, &helloFrame{Magic: [4]byte{'G', 'T', 'Y', 'Q'}, Version: 1, Client: "raw"})
	b = appendPut(b, &putFrame{ID: 1, TimeoutMS: 0, Queue: "jobs", Items: [][]byte{[]byte("hi")}})
	b = appendGet(b, &getFrame{ID: 2, TimeoutMS: 0, Queue: "jobs", Max: 1})
	rc.write(b)
	if _, ok := rc.read().(*welcomeFrame); !ok {
		t.Fatal("no WELCOME")
	}
	if r, ok := rc.read().(*resultFrame); !ok || r.ID != 1 || r.Status != statusOK || r.N != 1 {
		t.Fatalf("PUT: got %#v, want RESULT id 1 OK n 1", r)
	}
	it, ok := rc.read().(*itemsFrame)
	if !ok || it.ID != 2 || len(it.Items) != 1 || string(it.Items[0].Body) != "hi" {
		t.Fatalf("GET: got %#v, want ITEMS id 2 with \"hi\"", it)
	}
}

// Auto-ack items the writer took but could not write are requeued, not
// lost (rule 5: an auto-ack item leaves the broker when it is written),
// whether the writer stops on a failed write (the peer closes) or at a
// FATAL whose write times out (the broker closes, the peer does not read).
func TestAutoAckUnwrittenRequeued(t *testing.T) {
	for _, brokerCloses := range []bool{false, true} {
		t.Run(fmt.Sprintf("brokerCloses=%v", brokerCloses), func(t *testing.T) {
			h := newBrokerHarness(t, BrokerOptions{FrameDeadline: 300 * time.Millisecond})
			rc := h.rawT(t, true)
			const n = 100
			var gets []byte
			for i := range n {
				gets = appendGet(gets, &getFrame{ID: uint32(i + 1), TimeoutMS: waitForever, Queue: "jobs", Max: 1, Flags: flagAutoAck})
			}
			rc.write(gets)
			q := h.b.queue("jobs")
			eventually(t, "GETs wait", func() bool { q.mu.Lock(); defer q.mu.Unlock(); return q.liveGets() == n })
			// 1 MiB in all, more than the socket buffers, put one item a
			// frame: a frame of 10 KiB is in the socket whole before the
			// broker reads its first byte, so the short frame deadline
			// cannot cut the producer off on a loaded machine.
			p := h.dial()
			for range n {
				if err := p.Put(ctxT(t), "jobs", make([]byte, 10<<10)); err != nil {
					t.Fatal(err)
				}
			}
			eventually(t, "items handed to the GETs", func() bool { return h.stats("jobs").Delivered == n })
			time.Sleep(50 * time.Millisecond) // let the writer block on the full socket
			if brokerCloses {
				h.b.Close()
			} else {
				rc.nc.Close()
				eventually(t, "connection gone", func() bool { h.b.mu.Lock(); defer h.b.mu.Unlock(); return len(h.b.conns) == 1 })
			}
			s := h.stats("jobs")
			if s.InFlight != 0 || int(s.Acked)+s.Depth != n || s.Acked == n {
				t.Fatalf("want every auto-ack item written (acked) or requeued, some unwritten; got %+v", s)
			}
		})
	}
}

// A connection's waiting requests are bounded: pipelined wait-forever PUTs
// on a full queue stop being read once the connection has maxWaiting of
// them waiting, or maxWaitingBytes of items in them, and are read again as
// a consumer frees room.
func TestWaitingRequestsBounded(t *testing.T) {
	for _, tc := range []struct {
		name     string
		puts     int
		size     int
		maxWaits int // at most this many waiting PUTs: the bound, plus the one read past it
	}{
		{"count", maxWaiting + 100, 1, maxWaiting},
		// A few PUTs more than the bytes bound lets wait: enough to prove
		// the bound, few enough (24 MiB each way) to move in time with
		// -race on a loaded machine.
		{"bytes", maxWaitingBytes/DefaultMaxItem + 8, DefaultMaxItem, maxWaitingBytes/DefaultMaxItem + 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newBrokerHarness(t, BrokerOptions{Queues: []QueueConfig{{Name: "jobs", Capacity: 1}}})
			rc := h.rawT(t, true)
			rc.write(appendPut(nil, &putFrame{ID: 1, Queue: "jobs", Items: [][]byte{{0}}}))
			if r, ok := rc.read().(*resultFrame); !ok || r.Status != statusOK {
				t.Fatalf("filling PUT: got %#v", r)
			}
			body := make([]byte, tc.size)
			wrote := make(chan error, 1)
			go func() { // blocks once the broker stops reading
				var b []byte
				for i := range tc.puts {
					b = appendPut(b[:0], &putFrame{ID: uint32(i + 2), TimeoutMS: waitForever, Queue: "jobs", Items: [][]byte{body}})
					if _, err := rc.nc.Write(b); err != nil {
						wrote <- err
						return
					}
				}
				wrote <- nil
			}()
			q := h.b.queue("jobs")
			waiting := func() int { q.mu.Lock(); defer q.mu.Unlock(); return q.livePuts() }
			eventually(t, "PUTs wait", func() bool { return waiting() >= tc.maxWaits-1 })
			time.Sleep(100 * time.Millisecond) // the reader would read on meanwhile
			if n := waiting(); n > tc.maxWaits {
				t.Fatalf("%d PUTs of one connection wait, want at most %d", n, tc.maxWaits)
			}
			// A consumer frees room: every PUT gets in, in order. Each GET
			// has the test's deadline of its own: what is bounded is a wait
			// for one item, not the time to move them all.
			c := h.dial()
			for range tc.puts + 1 {
				if _, err := c.GetAutoAck(ctxT(t), "jobs"); err != nil {
					t.Fatal(err)
				}
			}
			if err := <-wrote; err != nil {
				t.Fatal(err)
			}
			for i := range tc.puts {
				r, ok := rc.read().(*resultFrame)
				if !ok || r.ID != uint32(i+2) || r.Status != statusOK || r.N != 1 {
					t.Fatalf("PUT %d: got %#v, want RESULT OK n 1", i+2, r)
				}
			}
		})
	}
}

// The client's read loop never blocks on writing: a late ITEMS (nobody
// waits for it) while the client's outgoing buffer is full and its socket
// does not drain is NACKed through the writer, and the replies behind it
// are still read.
func TestClientLateNackDoesNotBlockReader(t *testing.T) {
	cnc, snc := net.Pipe() // unbuffered: the client's writes block until the broker reads
	c, _ := fakeBrokerOn(t, cnc, snc)
	// The fake broker reads nothing more. One request's frame blocks the
	// client's writer on the pipe and leaves its id pending; then the
	// client's buffer is filled to its limit by hand (its contents never
	// reach anyone), so that any send would have to wait for room.
	var put sync.WaitGroup
	put.Add(1)
	go func() { defer put.Done(); c.Put(context.Background(), "jobs", []byte("blocked")) }()
	t.Cleanup(func() { c.Close(); put.Wait() })
	var id uint32
	// Pending, and its frame taken from the buffer: the writer holds it,
	// blocked on the pipe for good, and will take nothing more.
	eventually(t, "a request pending and its frame being written", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for id = range c.pending {
			return len(c.out) == 0
		}
		return false
	})
	c.mu.Lock()
	c.out = append(c.out, make([]byte, maxClientBuffer)...)
	filled := len(c.out)
	c.mu.Unlock()
	// The reader gets an ITEMS nobody asked for, then a reply.
	frames := appendItems(nil, &itemsFrame{ID: 1 << 30, Items: []wireItem{{Delivery: 7, Deliveries: 1, Body: []byte("x")}}})
	frames = appendResult(frames, &resultFrame{ID: id, Status: statusOK, N: 1})
	if _, err := snc.Write(frames); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the reply behind the late ITEMS read", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		_, waits := c.pending[id]
		return !waits
	})
	// The NACK is queued behind the padding: decode what is there.
	c.mu.Lock()
	out := bytes.Clone(c.out[min(filled, len(c.out)):])
	c.mu.Unlock()
	fr := frameReader{r: bufio.NewReader(bytes.NewReader(out))}
	queued := false
	for {
		payload, err := fr.read(1<<21, nil)
		if err != nil {
			break
		}
		f, err := decodeFrame(payload)
		if err != nil {
			t.Fatalf("the client's buffer holds a bad frame: %v", err)
		}
		if a, ok := f.(*ackFrame); ok && a.Nack && slices.Equal(a.Deliveries, []uint64{7}) {
			queued = true
		}
	}
	if !queued {
		t.Fatal("the late ITEMS was not NACKed")
	}
}

// However many processes (here: goroutines, each with its own open of the
// lock file, which flock tells apart as it does processes) start on one
// path at once, exactly one serves it; the others are told who does. Without
// the lock, two could see no live socket, and both bind and rename.
func TestListenConcurrentlyOneWins(t *testing.T) {
	dir := t.TempDir()
	for round := range 50 {
		path := filepath.Join(dir, strconv.Itoa(round), "queue.sock")
		const n = 4
		type result struct {
			l   *Listener
			err error
		}
		results := make(chan result, n)
		start := make(chan struct{})
		for range n {
			go func() {
				<-start
				l, err := Listen(path, -1)
				results <- result{l, err}
			}()
		}
		close(start)
		var won []*Listener
		for range n {
			r := <-results
			switch {
			case r.err == nil:
				won = append(won, r.l)
			case !errors.Is(r.err, ErrInUse):
				t.Errorf("round %d: %v, want success or ErrInUse", round, r.err)
			}
		}
		if len(won) != 1 {
			t.Fatalf("round %d: %d of %d listeners got the socket, want exactly 1", round, len(won), n)
		}
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatalf("round %d: dial the winner: %v", round, err)
		}
		c.Close()
		won[0].Close()
	}
}

// In a directory everyone may write (/tmp), a socket directory another
// user made first is refused, with the fix; one of ours is used.
func TestListenRefusesAnotherUsersDirInASharedOne(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root, to make a directory another user owns")
	}
	shared := t.TempDir()
	if err := os.Chmod(shared, 0o1777); err != nil {
		t.Fatal(err)
	}
	theirs := filepath.Join(shared, "gotyledon-1000")
	if err := os.Mkdir(theirs, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(theirs, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(filepath.Join(theirs, "queue.sock"), -1); err == nil || !strings.Contains(err.Error(), "belongs to uid 65534") {
		t.Errorf("Listen in another user's directory: %v, want refused, naming its owner", err)
	}
	ours := filepath.Join(shared, "gotyledon-0")
	l, err := Listen(filepath.Join(ours, "queue.sock"), -1)
	if err != nil {
		t.Fatalf("Listen in a directory of our own: %v", err)
	}
	l.Close()
}
