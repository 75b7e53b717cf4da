package ipc

// The turn to read (clientread.go) under adversity: brokers that stall
// inside a frame, deadlines and cancels landing anywhere, Close in the
// middle of it all.

import (
	"bufio"
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// socketPairConns is a connected socketpair: a client on it reads lazily,
// as on a broker's socket (a pipe is no syscall.Conn).
func socketPairConns(t *testing.T) (client, broker net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	mk := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "socket")
		defer f.Close()
		nc, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return nc
	}
	return mk(fds[0]), mk(fds[1])
}

// fakeBroker shakes hands and hands back a reader of the client's frames.
type fakeBroker struct {
	t  *testing.T
	nc net.Conn
	fr frameReader
}

// newFakeBroker is fakeBrokerOn a socketpair.
func newFakeBroker(t *testing.T) (*Client, *fakeBroker) {
	t.Helper()
	cnc, bnc := socketPairConns(t)
	return fakeBrokerOn(t, cnc, bnc)
}

// fakeBrokerOn shakes hands as a broker on bnc with a client on cnc.
func fakeBrokerOn(t *testing.T, cnc, bnc net.Conn) (*Client, *fakeBroker) {
	t.Helper()
	fb := &fakeBroker{t: t, nc: bnc, fr: frameReader{r: bufio.NewReader(bnc)}}
	welcomed := make(chan error, 1)
	go func() {
		if _, err := fb.fr.read(maxHelloLen, nil); err != nil {
			welcomed <- err
			return
		}
		_, err := bnc.Write(appendWelcome(nil, &welcomeFrame{Version: ProtocolVersion, MaxFrame: 1 << 20, MaxItem: 1<<20 - frameSlack}))
		welcomed <- err
	}()
	c, err := handshakeClient(ctxT(t), cnc, ProtocolVersion)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-welcomed; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bnc.Close(); c.Close() })
	return c, fb
}

func (fb *fakeBroker) next() any {
	p, err := fb.fr.read(1<<20, func(byte) bool { return true })
	if err != nil {
		return err
	}
	f, err := decodeFrame(p)
	if err != nil {
		return err
	}
	return f
}

func within(t *testing.T, d time.Duration, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(d):
		buf := make([]byte, 1<<20)
		n := runtime.Stack(buf, true)
		t.Fatalf("%s did not return within %v\n%s", what, d, buf[:n])
	}
}

// A call's context bounds it even when its goroutine is the reader and the
// broker stops in the middle of a frame (a stopped or hung manager, or just
// a slow big frame).
func TestCtxBoundsCallWhenBrokerStallsMidFrame(t *testing.T) {
	c, fb := newFakeBroker(t)
	go func() {
		f := fb.next()
		g, ok := f.(*getFrame)
		if !ok {
			return
		}
		// An ITEMS for the GET, cut after its first bytes: the rest never
		// comes (the broker is stopped, SIGSTOP, swapping...).
		full := appendItems(nil, &itemsFrame{ID: g.ID, Items: []wireItem{{Delivery: 1, Deliveries: 1, Body: make([]byte, 1000)}}})
		fb.nc.Write(full[:20])
	}()
	within(t, 5*time.Second, "Get with a 200ms deadline", func() {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		_, err := c.Get(ctx, "jobs")
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Get: %v, want a timeout", err)
		}
	})
}

// Consumer.Close wakes a Next that is the reader, though no frame comes
// (here the broker never answers the CANCEL).
func TestConsumerCloseWakesNextThatReads(t *testing.T) {
	c, fb := newFakeBroker(t)
	getIDs := make(chan uint32, 1)
	go func() {
		for {
			switch f := fb.next().(type) {
			case *getFrame:
				getIDs <- f.ID
			case error:
				return
			}
			// CONSUME, CANCEL: no answer (a slow or stopped broker).
		}
	}()
	// A Get reads (it is the reader) while the consumer is created and
	// Next waits; when the Get's reply comes it steps down and hands the
	// turn to Next.
	getDone := make(chan error, 1)
	go func() { _, err := c.Get(context.Background(), "jobs"); getDone <- err }()
	id := <-getIDs
	eventually(t, "the Get reading", func() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.reading && c.waiters == 1 })
	s, err := c.Consume(ctxT(t), "jobs", 1)
	if err != nil {
		t.Fatal(err)
	}
	nextErr := make(chan error, 1)
	go func() { _, err := s.Next(ctxT(t)); nextErr <- err }()
	eventually(t, "Next waiting", func() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.waiters == 2 })
	fb.nc.Write(appendItems(nil, &itemsFrame{ID: id, Items: []wireItem{{Delivery: 9, Deliveries: 1, Body: []byte("x")}}}))
	if err := <-getDone; err != nil {
		t.Fatal(err)
	}
	eventually(t, "Next reading", func() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.reading && c.waiters == 1 })
	s.Close()
	within(t, 2*time.Second, "Next after Consumer.Close", func() {
		if err := <-nextErr; !errors.Is(err, ErrConsumerClosed) {
			t.Errorf("Next: %v, want ErrConsumerClosed", err)
		}
	})
}

// The answers to acknowledgements a Consumer queued are read though no call
// waits: once the consume has ended (the deliveries Next handed out are
// still acked through it), a refusal is still seen.
func TestAckRefusalSeenAfterConsumeEnded(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{})
	c := h.dial()
	putN(t, c, "jobs", 2)
	s, err := c.Consume(ctxT(t), "jobs", 1)
	if err != nil {
		t.Fatal(err)
	}
	d := next(t, s)
	s.Close()
	eventually(t, "the consume ended at the broker", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return len(c.pending) == 0
	})
	if err := s.Ack(d); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the first ack at the broker", func() bool { return h.stats("jobs").Acked == 1 })
	if err := s.Ack(d); err != nil { // twice: the broker refuses it
		t.Fatal(err)
	}
	eventually(t, "the refusal read (ackErr set)", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.ackErr != nil
	})
}

// Stress: calls with random short deadlines (readers interrupted at
// random points), calls with no deadline, a consumer, a Close at the end.
// Every call must return; nothing may stay in flight.
func TestStressTurns(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{Queues: []QueueConfig{{Name: "jobs"}, {Name: "pushed"}}})
	c := h.dial()
	feeder := h.dial()
	const workers, rounds = 6, 800
	var bg, wg sync.WaitGroup
	stop := make(chan struct{})
	s, err := c.Consume(ctxT(t), "pushed", 4)
	if err != nil {
		t.Fatal(err)
	}
	bg.Add(2)
	go func() {
		defer bg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rand.IntN(3000))*time.Microsecond)
			d, err := s.Next(ctx)
			cancel()
			if err == nil {
				s.Ack(d)
			}
		}
	}()
	go func() {
		defer bg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			feeder.Put(context.Background(), "pushed", []byte(strconv.Itoa(i)))
			time.Sleep(200 * time.Microsecond)
		}
	}()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range rounds {
				switch rand.IntN(4) {
				case 0: // short Get on a possibly empty queue: interrupted reader
					ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rand.IntN(2000))*time.Microsecond)
					d, err := c.Get(ctx, "jobs")
					cancel()
					if err == nil {
						c.Ack(context.Background(), d)
					}
				case 1: // cancel at random
					ctx, cancel := context.WithCancel(context.Background())
					go func() { time.Sleep(time.Duration(rand.IntN(500)) * time.Microsecond); cancel() }()
					d, err := c.Get(ctx, "jobs")
					if err == nil {
						c.Ack(context.Background(), d)
					}
					cancel()
				default: // no deadline: must never hang
					if err := c.Put(context.Background(), "jobs", []byte(strconv.Itoa(w*rounds+i))); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	within(t, 60*time.Second, "the workers", wg.Wait)
	close(stop)
	within(t, 30*time.Second, "consumer and feeder", bg.Wait)
	// Drain until the broker says the queue is empty and nothing is in
	// flight: a Get that times out proves nothing on a loaded machine (its
	// answer may come late, and an item it was sent after its deadline is
	// put back), so the broker's count, not a timeout, ends the loop.
	eventually(t, "nothing in flight on jobs", func() bool {
		if s := h.stats("jobs"); s.InFlight == 0 && s.Depth == 0 {
			return true
		}
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		if d, err := c.Get(ctx, "jobs"); err == nil {
			c.Ack(context.Background(), d)
		}
		return false
	})
	within(t, 10*time.Second, "Close", func() { c.Close() })
}

// Close while calls wait and read: every call returns.
func TestCloseDuringTurns(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{})
	for round := range 100 {
		c := h.dial()
		s, err := c.Consume(ctxT(t), "jobs", 2)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					var err error
					switch (g + i) % 3 {
					case 0:
						err = c.Put(context.Background(), "jobs", []byte("x"))
					case 1:
						ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rand.IntN(1000))*time.Microsecond)
						_, err = c.Get(ctx, "nosuch")
						cancel()
						if err != nil && !errors.Is(err, ErrClosed) {
							err = nil
						}
					case 2:
						ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rand.IntN(1000))*time.Microsecond)
						var d *Delivery
						d, err = s.Next(ctx)
						cancel()
						if err == nil {
							s.Ack(d)
						} else if !errors.Is(err, ErrClosed) {
							err = nil
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
		time.Sleep(time.Duration(rand.IntN(5000)) * time.Microsecond)
		within(t, 10*time.Second, "Close "+strconv.Itoa(round), func() { c.Close() })
		within(t, 10*time.Second, "the calls after Close", wg.Wait)
	}
}

// Big frames (several reads each) while readers are interrupted at
// random: bodies arrive whole and every item is accounted for.
func TestBigFramesInterrupted(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{})
	c := h.dial()
	feeder := h.dial()
	const total = 120
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range total {
			body := make([]byte, 50<<10+rand.IntN(150<<10))
			for j := range body {
				body[j] = byte(i)
			}
			if err := feeder.Put(context.Background(), "jobs", body); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	var acked sync.Map
	var n sync.WaitGroup
	count := make(chan struct{}, total)
	for range 4 {
		n.Add(1)
		go func() {
			defer n.Done()
			for i := 0; len(count) < total; i++ {
				wait := time.Duration(50+rand.IntN(3000)) * time.Microsecond
				if i%4 == 3 {
					wait = 5 * time.Second // progress: a long one now and then
				}
				ctx, cancel := context.WithTimeout(context.Background(), wait)
				d, err := c.Get(ctx, "jobs")
				cancel()
				if err != nil {
					if !errors.Is(err, context.DeadlineExceeded) {
						t.Error(err)
						return
					}
					continue
				}
				for _, b := range d.Body {
					if b != d.Body[0] {
						t.Errorf("a body mixes items")
						return
					}
				}
				if _, dup := acked.LoadOrStore(d.Body[0], true); dup && d.Deliveries == 1 {
					// bodies are byte(i): 300 > 256, so only check intactness
				}
				if err := c.Ack(context.Background(), d); err != nil {
					t.Error(err)
					return
				}
				count <- struct{}{}
			}
		}()
	}
	within(t, 120*time.Second, "the getters", n.Wait)
	wg.Wait()
	eventually(t, "everything acked", func() bool { s := h.stats("jobs"); return s.Acked == total && s.InFlight == 0 && s.Depth == 0 })
}

// A reader stopped inside a frame leaves it to the next one, which reads it on from there; here the abandoned GET's
// ITEMS, completed later, is NACKed.
func TestFrameResumedAfterStopMidFrame(t *testing.T) {
	c, fb := newFakeBroker(t)
	frames := make(chan any, 16)
	go func() {
		for {
			f := fb.next()
			frames <- f
			if _, ok := f.(error); ok {
				return
			}
		}
	}()
	getErr := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		_, err := c.Get(ctx, "jobs")
		getErr <- err
	}()
	g, ok := (<-frames).(*getFrame)
	if !ok {
		t.Fatal("no GET")
	}
	full := appendItems(nil, &itemsFrame{ID: g.ID, Items: []wireItem{{Delivery: 42, Deliveries: 1, Body: bytesOf('z', 300<<10)}}})
	fb.nc.Write(full[:20])
	within(t, 5*time.Second, "Get with a 200ms deadline", func() {
		if err := <-getErr; !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Get: %v, want a timeout", err)
		}
	})
	// The rest, read by whoever reads next (the background reader: the
	// abandoned GET is pending); written whole before anything else.
	within(t, 5*time.Second, "writing the rest of the ITEMS", func() { fb.nc.Write(full[20:]) })
	// Then a call that works, on the same connection.
	putErr := make(chan error, 1)
	go func() { putErr <- c.Put(ctxT(t), "jobs", []byte("after")) }()
	nacked := false
	for !nacked {
		select {
		case f := <-frames:
			switch f := f.(type) {
			case *cancelFrame:
			case *ackFrame:
				if f.Nack && len(f.Deliveries) == 1 && f.Deliveries[0] == 42 {
					nacked = true
				}
			case *putFrame:
				fb.nc.Write(appendResult(nil, &resultFrame{ID: f.ID, Status: statusOK, N: 1}))
			default:
				t.Fatalf("got %v; client: %v", f, c.gone())
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the completed ITEMS was not NACKed")
		}
	}
	go func() {
		for f := range frames {
			if f, ok := f.(*putFrame); ok {
				fb.nc.Write(appendResult(nil, &resultFrame{ID: f.ID, Status: statusOK, N: 1}))
			}
		}
	}()
	within(t, 5*time.Second, "Put after", func() {
		if err := <-putErr; err != nil {
			t.Error(err)
		}
	})
}
