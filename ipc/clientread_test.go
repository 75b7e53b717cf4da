package ipc

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"
)

// bgTurnsOf is how many turns the background reader has taken.
func bgTurnsOf(c *Client) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bgTurns
}

// Strictly synchronous calls read their own replies: the background reader
// never takes a turn, so no reply is handed from one goroutine to another.
func TestSyncCallsReadTheirOwnReplies(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{})
	c := h.dial()
	ctx := ctxT(t)
	for i := range 200 {
		if err := c.Put(ctx, "jobs", []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
		d, err := c.Get(ctx, "jobs")
		if err != nil {
			t.Fatal(err)
		}
		if string(d.Body) != strconv.Itoa(i) {
			t.Fatalf("got %q, want %d", d.Body, i)
		}
		if err := c.Ack(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	if n := bgTurnsOf(c); n != 0 {
		t.Fatalf("the background reader took %d turns during synchronous calls, want 0", n)
	}
}

// Calls from many goroutines share the connection: whoever reads hands the
// others their replies, and the turn to read passes on when it is done.
func TestConcurrentCallsPassTheTurnToRead(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{})
	c := h.dial()
	ctx := ctxT(t)
	const goroutines, rounds = 8, 150
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range rounds {
				body := []byte(strconv.Itoa(g*rounds + i))
				if err := c.Put(ctx, "jobs", body); err != nil {
					errs <- err
					return
				}
				d, err := c.Get(ctx, "jobs")
				if err != nil {
					errs <- err
					return
				}
				if err := c.Ack(ctx, d); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	eventually(t, "every item acked", func() bool {
		s := h.stats("jobs")
		return s.Acked == goroutines*rounds && s.InFlight == 0 && s.Depth == 0
	})
}

// A call whose context ends while it is the reader returns, and the next
// call reads on from where it stopped: the interruption (a read deadline)
// does not linger, and no frame is lost or split.
func TestReaderInterruptedByItsContext(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{})
	c := h.dial()
	other := h.dial()
	for i := range 20 {
		short, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
		_, err := c.Get(short, "jobs") // the queue is empty: it reads until its deadline
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("round %d: Get on an empty queue: %v, want a timeout", i, err)
		}
		body := bytes.Repeat([]byte{byte('a' + i%26)}, 100<<10) // frames longer than one read
		if err := other.Put(ctxT(t), "jobs", body); err != nil {
			t.Fatal(err)
		}
		d, err := c.Get(ctxT(t), "jobs")
		if err != nil {
			t.Fatalf("round %d: Get after an interrupted one: %v", i, err)
		}
		if !bytes.Equal(d.Body, body) {
			t.Fatalf("round %d: got %d bytes starting %q, want the item put", i, len(d.Body), d.Body[:1])
		}
		if err := c.Ack(ctxT(t), d); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "nothing left in flight", func() bool { s := h.stats("jobs"); return s.InFlight == 0 && s.Depth == 0 })
}

// A goroutine that writes while nobody waits for a reply must not wait on a
// reader that is not there: here the broker pushes a consumer more than the
// sockets hold, and the same goroutine, before calling Next, puts more than
// they hold. The broker stops reading a connection whose replies are not
// read; the background reader reads them while the write waits.
func TestBigWriteWhilePushesAreUnread(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{Queues: []QueueConfig{{Name: "in"}, {Name: "out"}}})
	feeder := h.dial()
	big := bytes.Repeat([]byte("x"), 256<<10)
	items := make([][]byte, 32) // 8 MiB
	for i := range items {
		items[i] = big
	}
	if _, err := feeder.PutBatch(ctxT(t), "in", items); err != nil {
		t.Fatal(err)
	}
	c := h.dial()
	s, err := c.Consume(ctxT(t), "in", 32)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.PutBatch(ctxT(t), "out", items); err != nil {
		t.Fatalf("a big put while the consumer's pushes are not read: %v", err)
	}
	for range items {
		d := next(t, s)
		if len(d.Body) != len(big) {
			t.Fatalf("pushed %d bytes, want %d", len(d.Body), len(big))
		}
		if err := s.Ack(d); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "everything moved", func() bool {
		in, out := h.stats("in"), h.stats("out")
		return in.Acked == uint64(len(items)) && out.Depth == len(items)
	})
}

// The same from the wire: a broker that stops reading until the client has
// read what it sent (as the broker's flow control does) and a client
// writing one frame larger than the sockets hold, with no call waiting and
// no consumer. The write goes out only if someone reads meanwhile.
func TestWriteThatWaitsHasAReader(t *testing.T) {
	clientEnd, brokerEnd := socketPairConns(t)
	t.Cleanup(func() { brokerEnd.Close() })
	served := make(chan error, 1)
	go func() {
		fr := frameReader{r: bufio.NewReader(brokerEnd)}
		if _, err := fr.read(maxHelloLen, nil); err != nil {
			served <- err
			return
		}
		// WELCOME, then replies to nobody's requests, more than the
		// sockets hold; only once they are all written is anything read.
		out := appendWelcome(nil, &welcomeFrame{Version: ProtocolVersion, MaxFrame: 16 << 20, MaxItem: 16<<20 - frameSlack})
		for i := range 100000 {
			out = appendResult(out, &resultFrame{ID: 1<<31 + uint32(i), Status: statusOK})
		}
		if _, err := brokerEnd.Write(out); err != nil {
			served <- err
			return
		}
		payload, err := fr.read(16<<20, nil)
		if err != nil {
			served <- err
			return
		}
		f, err := decodeFrame(payload)
		if err != nil {
			served <- err
			return
		}
		put, ok := f.(*putFrame)
		if !ok {
			served <- fmt.Errorf("got %T, want a PUT", f)
			return
		}
		_, err = brokerEnd.Write(appendResult(nil, &resultFrame{ID: put.ID, Status: statusOK, N: uint32(len(put.Items))}))
		served <- err
	}()
	c, err := handshakeClient(ctxT(t), clientEnd, ProtocolVersion)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Put(ctxT(t), "jobs", bytes.Repeat([]byte("y"), 8<<20)); err != nil {
		t.Fatalf("a put larger than the sockets hold, to a broker waiting for its replies to be read: %v", err)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
}
