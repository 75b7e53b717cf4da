package ipc

// Deterministic tests of the broker's time: a fake clock whose timers fire
// when the test says so and whose sleeps return at once, recorded. The
// connections are real (a Unix socket, or net.Pipe for a scripted
// listener); what the tests wait on is always a frame or a returned call,
// and "nothing arrived" is proved by a later request's reply coming first,
// never by a sleep.

import (
	"bufio"
	"errors"
	"net"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"
)

// fakeClock is a broker clock driven by the test. Safe for concurrent use:
// the broker arms timers from connection goroutines while the test reads
// and fires them.
type fakeClock struct {
	mu     sync.Mutex
	timers []*fakeTimer
	sleeps []time.Duration
}

// fakeTimer is one afterFunc. stopped and fired are guarded by clk.mu.
type fakeTimer struct {
	clk            *fakeClock
	d              time.Duration
	f              func()
	stopped, fired bool
}

// install makes fc b's clock; b must not serve yet.
func (fc *fakeClock) install(b *Broker) {
	b.clock = clock{afterFunc: fc.afterFunc, sleep: fc.sleep}
}

func (fc *fakeClock) afterFunc(d time.Duration, f func()) func() bool {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	t := &fakeTimer{clk: fc, d: d, f: f}
	fc.timers = append(fc.timers, t)
	return func() bool {
		fc.mu.Lock()
		defer fc.mu.Unlock()
		inTime := !t.stopped && !t.fired
		t.stopped = true
		return inTime
	}
}

func (fc *fakeClock) sleep(d time.Duration) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.sleeps = append(fc.sleeps, d)
}

// pending returns the timers armed and neither stopped nor fired.
func (fc *fakeClock) pending() []*fakeTimer {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	var p []*fakeTimer
	for _, t := range fc.timers {
		if !t.stopped && !t.fired {
			p = append(p, t)
		}
	}
	return p
}

func (fc *fakeClock) slept() []time.Duration {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	return slices.Clone(fc.sleeps)
}

func (t *fakeTimer) isStopped() bool {
	t.clk.mu.Lock()
	defer t.clk.mu.Unlock()
	return t.stopped
}

// fire runs t's function as its expiry would, stopped or not: a real
// timer's Stop can come too late, and the broker must cope. The function
// runs on the caller's goroutine, without fc.mu (it takes the queue's lock,
// under which the broker arms and stops timers).
func (t *fakeTimer) fire() {
	t.clk.mu.Lock()
	t.fired = true
	t.clk.mu.Unlock()
	t.f()
}

// onePending asserts that exactly one timer is pending, for d, and returns it.
func onePending(t *testing.T, fc *fakeClock, d time.Duration) *fakeTimer {
	t.Helper()
	p := fc.pending()
	if len(p) != 1 || p[0].d != d {
		ds := make([]time.Duration, len(p))
		for i, pt := range p {
			ds[i] = pt.d
		}
		t.Fatalf("pending timers %v, want one of %v", ds, d)
	}
	return p[0]
}

// sync sends an ACK of nothing as request id and asserts that its RESULT is
// the next frame. The broker carries out a connection's requests in order
// and queues their replies in order, so this proves it has handled every
// earlier request (armed their timers) and sent nothing else meanwhile.
func (rc *rawConn) sync(id uint32) {
	rc.t.Helper()
	rc.write(appendAck(nil, &ackFrame{ID: id}))
	rc.expectResult(id, statusOK, 0)
}

func (rc *rawConn) expectResult(id uint32, status uint16, n uint32) {
	rc.t.Helper()
	f := rc.read()
	r, ok := f.(*resultFrame)
	if !ok || r.ID != id || r.Status != status || r.N != n {
		rc.t.Fatalf("got %#v, want RESULT id %d %s n %d", f, id, statusName(status), n)
	}
}

// readN reads n frames, RESULTs and ITEMS, and returns them by request id:
// replies to different requests may come in either order.
func (rc *rawConn) readN(n int) map[uint32]any {
	rc.t.Helper()
	got := make(map[uint32]any, n)
	for range n {
		switch f := rc.read().(type) {
		case *resultFrame:
			got[f.ID] = f
		case *itemsFrame:
			got[f.ID] = f
		default:
			rc.t.Fatalf("got %#v, want a RESULT or ITEMS", f)
		}
	}
	return got
}

func putFrameOf(id, timeoutMS uint32, queue string, items ...string) []byte {
	f := putFrame{ID: id, TimeoutMS: timeoutMS, Queue: queue}
	for _, it := range items {
		f.Items = append(f.Items, []byte(it))
	}
	return appendPut(nil, &f)
}

func getFrameOf(id, timeoutMS uint32, queue string, maxItems uint32) []byte {
	return appendGet(nil, &getFrame{ID: id, TimeoutMS: timeoutMS, Queue: queue, Max: maxItems})
}

// bodies returns the bodies of an ITEMS frame, or fails.
func bodies(t *testing.T, f any, id uint32) []string {
	t.Helper()
	it, ok := f.(*itemsFrame)
	if !ok || it.ID != id {
		t.Fatalf("got %#v, want ITEMS id %d", f, id)
	}
	var out []string
	for _, w := range it.Items {
		out = append(out, string(w.Body))
	}
	return out
}

// A GET with a timeout on an empty queue waits exactly until its timer
// fires: its timer is armed for the request's timeout, nothing answers it
// before, TIMEOUT does at once after, and it takes nothing later. A GET
// without a limit arms no timer at all.
func TestClockGetTimesOutWhenTimerFires(t *testing.T) {
	fc := &fakeClock{}
	h := newBrokerHarness(t, BrokerOptions{}, fc.install)
	rc := h.raw(true)
	rc.write(getFrameOf(1, 2500, "jobs", 1))
	rc.write(getFrameOf(2, waitForever, "jobs", 1))
	rc.sync(3)
	timer := onePending(t, fc, 2500*time.Millisecond)
	rc.sync(4) // still nothing: only the timer answers GET 1

	timer.fire()
	rc.expectResult(1, statusTimeout, 0)
	rc.sync(5) // GET 2, without a limit, still waits

	// The GET that timed out is gone from the queue: the next item goes to
	// GET 2.
	rc.write(putFrameOf(6, 0, "jobs", "x"))
	got := rc.readN(2)
	if b := bodies(t, got[2], 2); !slices.Equal(b, []string{"x"}) {
		t.Fatalf("GET 2 got %q, want [x]", b)
	}
	if r, ok := got[6].(*resultFrame); !ok || r.Status != statusOK || r.N != 1 {
		t.Fatalf("PUT 6: %#v, want OK n 1", got[6])
	}
	if p := fc.pending(); len(p) != 0 {
		t.Fatalf("%d timers still pending", len(p))
	}
}

// A PUT waiting on a full queue waits exactly until its timer fires, and
// is then answered TIMEOUT with the items it got in (which stay queued);
// the rest are not queued later when room frees.
func TestClockPutTimesOutWhenTimerFires(t *testing.T) {
	fc := &fakeClock{}
	h := newBrokerHarness(t, BrokerOptions{Queues: []QueueConfig{{Name: "jobs", Capacity: 2}}}, fc.install)
	rc := h.raw(true)
	rc.write(putFrameOf(1, 0, "jobs", "a"))
	rc.expectResult(1, statusOK, 1)
	rc.write(putFrameOf(2, 4000, "jobs", "b", "c", "d")) // room for b only
	rc.sync(3)
	timer := onePending(t, fc, 4*time.Second)
	if s := h.stats("jobs"); s.Depth != 2 || s.Put != 2 {
		t.Fatalf("before the timeout: %+v, want depth 2, put 2", s)
	}
	rc.sync(4)

	timer.fire()
	rc.expectResult(2, statusTimeout, 1)

	// Room frees, and the PUT that timed out takes none of it: the GET
	// gets a and b, and no RESULT for PUT 2 comes before the next sync.
	rc.write(getFrameOf(5, 0, "jobs", 10))
	if b := bodies(t, rc.read(), 5); !slices.Equal(b, []string{"a", "b"}) {
		t.Fatalf("GET 5 got %q, want [a b]", b)
	}
	rc.sync(6)
	if s := h.stats("jobs"); s.Depth != 0 || s.Put != 2 || s.InFlight != 2 {
		t.Fatalf("after the timeout: %+v, want depth 0, put 2, in flight 2", s)
	}
}

// A timeout whose request was answered first is stopped, and if it fires
// anyway (its stop came too late) it answers nothing: not the request it
// was armed for, not a later request that reuses its id, and it takes no
// item back.
func TestClockLateTimerIsHarmless(t *testing.T) {
	t.Run("item arrived", func(t *testing.T) {
		fc := &fakeClock{}
		h := newBrokerHarness(t, BrokerOptions{}, fc.install)
		rc := h.raw(true)
		rc.write(getFrameOf(1, 1000, "jobs", 1))
		rc.sync(2)
		timer := onePending(t, fc, time.Second)
		rc.write(putFrameOf(3, 0, "jobs", "x"))
		got := rc.readN(2)
		if b := bodies(t, got[1], 1); !slices.Equal(b, []string{"x"}) {
			t.Fatalf("GET 1 got %q, want [x]", b)
		}
		if !timer.isStopped() {
			t.Error("the answered GET's timer was not stopped")
		}
		timer.fire()
		rc.sync(4) // no TIMEOUT for GET 1
		// The item is still this connection's, in flight: the ACK finds it.
		rc.write(appendAck(nil, &ackFrame{ID: 5, Deliveries: []uint64{got[1].(*itemsFrame).Items[0].Delivery}}))
		rc.expectResult(5, statusOK, 1)
		if s := h.stats("jobs"); s.Depth != 0 || s.InFlight != 0 || s.Acked != 1 {
			t.Fatalf("%+v, want depth 0, in flight 0, acked 1", s)
		}
	})

	t.Run("cancelled, id reused", func(t *testing.T) {
		fc := &fakeClock{}
		h := newBrokerHarness(t, BrokerOptions{}, fc.install)
		rc := h.raw(true)
		rc.write(getFrameOf(1, 1000, "jobs", 1))
		rc.sync(2)
		old := onePending(t, fc, time.Second)
		rc.write(appendCancel(nil, &cancelFrame{ID: 1}))
		rc.expectResult(1, statusCancelled, 0)
		if !old.isStopped() {
			t.Error("the cancelled GET's timer was not stopped")
		}
		// Id 1 is free again (PROTOCOL.md); the new GET 1 has its own timer.
		rc.write(getFrameOf(1, 2000, "jobs", 1))
		rc.sync(3)
		renewed := onePending(t, fc, 2*time.Second)
		old.fire()
		rc.sync(4) // the old timer did not answer the new GET 1
		renewed.fire()
		rc.expectResult(1, statusTimeout, 0)
	})

	t.Run("put let in", func(t *testing.T) {
		fc := &fakeClock{}
		h := newBrokerHarness(t, BrokerOptions{Queues: []QueueConfig{{Name: "jobs", Capacity: 1}}}, fc.install)
		rc := h.raw(true)
		rc.write(putFrameOf(1, 0, "jobs", "a"))
		rc.expectResult(1, statusOK, 1)
		rc.write(putFrameOf(2, 1000, "jobs", "b"))
		rc.sync(3)
		timer := onePending(t, fc, time.Second)
		rc.write(getFrameOf(4, 0, "jobs", 1)) // takes a: b gets in
		got := rc.readN(2)
		if b := bodies(t, got[4], 4); !slices.Equal(b, []string{"a"}) {
			t.Fatalf("GET 4 got %q, want [a]", b)
		}
		if r, ok := got[2].(*resultFrame); !ok || r.Status != statusOK || r.N != 1 {
			t.Fatalf("PUT 2: %#v, want OK n 1", got[2])
		}
		if !timer.isStopped() {
			t.Error("the answered PUT's timer was not stopped")
		}
		timer.fire()
		rc.sync(5) // no TIMEOUT for PUT 2
		if s := h.stats("jobs"); s.Depth != 1 || s.Put != 2 {
			t.Fatalf("%+v, want depth 1 (b), put 2", s)
		}
	})
}

// scriptedListener is a net.Listener whose Accept returns results in the
// order given, then errEndOfScript for good.
type scriptedListener struct {
	mu     sync.Mutex
	script []acceptResult
}

type acceptResult struct {
	nc  net.Conn
	err error
}

var errEndOfScript = errors.New("scripted listener: end of script")

func (l *scriptedListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.script) == 0 {
		return nil, errEndOfScript
	}
	r := l.script[0]
	l.script = l.script[1:]
	return r.nc, r.err
}

func (l *scriptedListener) Close() error   { return nil }
func (l *scriptedListener) Addr() net.Addr { return &net.UnixAddr{Name: "scripted", Net: "unix"} }

func acceptErr(errno unix.Errno) acceptResult {
	return acceptResult{err: &net.OpError{Op: "accept", Net: "unix", Err: os.NewSyscallError("accept4", errno)}}
}

// Serve backs off between failed accepts the way net/http does: 5ms,
// doubling, capped at 1s, one log line per retry that says the pause; a
// connection accepted resets the pause; every kind of temporary failure
// (EMFILE, ENFILE, a timeout) is retried; any other error ends Serve,
// wrapped, while the connection it accepted is still served.
func TestClockAcceptBackoff(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	b, err := NewBroker(BrokerOptions{
		Queues: []QueueConfig{{Name: "jobs"}},
		Allow:  func(Peer) bool { return true }, // a pipe has no peer credentials
		Logger: zap.New(core),
	})
	if err != nil {
		t.Fatal(err)
	}
	fc := &fakeClock{}
	fc.install(b)
	client, server := net.Pipe()
	t.Cleanup(func() {
		client.Close() // first: the broker's FATAL on Close would wait for a reader
		b.Close()
	})
	l := &scriptedListener{}
	for range 10 {
		l.script = append(l.script, acceptErr(unix.EMFILE))
	}
	l.script = append(l.script,
		acceptResult{nc: server},
		acceptErr(unix.ENFILE),
		acceptResult{err: &net.OpError{Op: "accept", Net: "unix", Err: os.ErrDeadlineExceeded}},
	)

	err = b.Serve(l)
	if !errors.Is(err, errEndOfScript) {
		t.Fatalf("Serve returned %v, want the listener's error wrapped", err)
	}
	ms := time.Millisecond
	want := []time.Duration{5 * ms, 10 * ms, 20 * ms, 40 * ms, 80 * ms, 160 * ms, 320 * ms, 640 * ms, time.Second, time.Second,
		5 * ms, 10 * ms} // after the accepted connection
	if got := fc.slept(); !slices.Equal(got, want) {
		t.Fatalf("Serve slept %v, want %v", got, want)
	}
	var logged []time.Duration
	for _, e := range logs.FilterMessage("queue broker: accept failed; retrying").All() {
		if e.Level != zapcore.WarnLevel {
			t.Errorf("logged at %v, want warn", e.Level)
		}
		d, _ := e.ContextMap()["in"].(time.Duration)
		logged = append(logged, d)
	}
	if !slices.Equal(logged, want) {
		t.Errorf("logged pauses %v, want %v", logged, want)
	}

	// Serve has returned; the connection it accepted is served until Close.
	rc := &rawConn{t: t, nc: client, fr: frameReader{r: bufio.NewReader(client)}}
	client.SetDeadline(time.Now().Add(testTimeout))
	rc.write(appendHello(nil, &helloFrame{Magic: [4]byte{'G', 'T', 'Y', 'Q'}, Version: ProtocolVersion, Client: "piped"}))
	if f, ok := rc.read().(*welcomeFrame); !ok {
		t.Fatalf("got %#v, want WELCOME", f)
	}
	rc.sync(1)
}

// blockingListener's Accept waits for Close, then fails with EMFILE, as a
// listener out of descriptors would while the broker closes.
type blockingListener struct {
	accepting chan struct{} // closed by the first Accept
	closed    chan struct{}
	once      sync.Once
	acceptOne sync.Once
}

func (l *blockingListener) Accept() (net.Conn, error) {
	l.acceptOne.Do(func() { close(l.accepting) })
	<-l.closed
	return nil, acceptErr(unix.EMFILE).err
}

func (l *blockingListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *blockingListener) Addr() net.Addr { return &net.UnixAddr{Name: "blocking", Net: "unix"} }

// An accept that fails because Close closed the listener ends Serve with
// nil at once, with no pause, even if the error looks temporary.
func TestClockAcceptFailsAfterClose(t *testing.T) {
	b, err := NewBroker(BrokerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fc := &fakeClock{}
	fc.install(b)
	l := &blockingListener{accepting: make(chan struct{}), closed: make(chan struct{})}
	served := make(chan error, 1)
	go func() { served <- b.Serve(l) }()
	select {
	case <-l.accepting:
	case <-time.After(testTimeout):
		t.Fatal("Serve did not accept")
	}
	b.Close()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve after Close: %v, want nil", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Serve did not return after Close")
	}
	if s := fc.slept(); len(s) != 0 {
		t.Fatalf("Serve paused %v after Close", s)
	}
}
