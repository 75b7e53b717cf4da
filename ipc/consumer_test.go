package ipc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// putN puts "0", "1" ... "n-1" on queue.
func putN(t *testing.T, c *Client, queue string, n int) { putNamed(t, c, queue, "", n) }

// putNamed puts PREFIX0 ... PREFIX(n-1) on queue.
func putNamed(t *testing.T, c *Client, queue, prefix string, n int) {
	t.Helper()
	items := make([][]byte, n)
	for i := range items {
		items[i] = []byte(prefix + strconv.Itoa(i))
	}
	if _, err := c.PutBatch(ctxT(t), queue, items); err != nil {
		t.Fatal(err)
	}
}

// next takes the next pushed item, failing the test after testTimeout.
func next(t *testing.T, s *Consumer) *Delivery {
	t.Helper()
	d, err := s.Next(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// nothingWithin checks that Next has nothing to hand out for a while: the
// broker holds back what the consumer's credit does not allow.
func nothingWithin(t *testing.T, s *Consumer, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if got, err := s.Next(ctx); err == nil {
		t.Fatalf("Next handed out %q, want nothing", got.Body)
	} else if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Next: %v, want a timeout", err)
	}
}

// Pushed items come in order, one at a time, acknowledged as they go.
func TestConsumeInOrderWithAcks(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{})
	c := h.dial()
	putN(t, c, "jobs", 50)
	s, err := c.Consume(ctxT(t), "jobs", 8)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		d := next(t, s)
		if string(d.Body) != strconv.Itoa(i) || d.Deliveries != 1 || d.Queue != "jobs" {
			t.Fatalf("item %d: %+v", i, d)
		}
		if err := s.Ack(d); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "every ack at the broker", func() bool { s := h.stats("jobs"); return s.Acked == 50 && s.InFlight == 0 })
	// Items put later are pushed as they come.
	putN(t, c, "jobs", 3)
	for i := range 3 {
		if d := next(t, s); string(d.Body) != strconv.Itoa(i) {
			t.Fatalf("later item %d: %q", i, d.Body)
		}
	}
}

// A consumer never holds more than its prefetch unacknowledged: the broker
// pushes up to it, no more, and each acknowledgement lets one more come.
func TestConsumePrefetchBound(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{})
	c := h.dial()
	putN(t, c, "jobs", 10)
	s, err := c.Consume(ctxT(t), "jobs", 3)
	if err != nil {
		t.Fatal(err)
	}
	var held []*Delivery
	for range 3 {
		held = append(held, next(t, s))
	}
	nothingWithin(t, s, 100*time.Millisecond)
	if st := h.stats("jobs"); st.InFlight != 3 || st.Depth != 7 {
		t.Fatalf("stats %+v, want 3 in flight and 7 waiting", st)
	}
	if err := s.Ack(held[0]); err != nil {
		t.Fatal(err)
	}
	if d := next(t, s); string(d.Body) != "3" {
		t.Fatalf("after one ack: %q, want 3", d.Body)
	}
	eventually(t, "3 in flight again", func() bool { st := h.stats("jobs"); return st.InFlight == 3 && st.Depth == 6 && st.Acked == 1 })
	nothingWithin(t, s, 50*time.Millisecond)
}

// Two consumers take turns, each within its credit; a NACKed item comes
// back, to one of them, delivered a second time.
func TestConsumersTakeTurnsAndNackRedelivers(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{})
	p := h.dial()
	s1, err := h.dial().Consume(ctxT(t), "jobs", 2)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := h.dial().Consume(ctxT(t), "jobs", 2)
	if err != nil {
		t.Fatal(err)
	}
	putN(t, p, "jobs", 4)
	a, b := []*Delivery{next(t, s1), next(t, s1)}, []*Delivery{next(t, s2), next(t, s2)}
	got := []string{string(a[0].Body), string(a[1].Body), string(b[0].Body), string(b[1].Body)}
	slices.Sort(got)
	if !slices.Equal(got, []string{"0", "1", "2", "3"}) {
		t.Fatalf("consumers got %v, want each item once", got)
	}
	if err := s1.Nack(a[0]); err != nil {
		t.Fatal(err)
	}
	d := next(t, s1) // s1 has credit for exactly the item it gave back
	if string(d.Body) != string(a[0].Body) || d.Deliveries != 2 {
		t.Fatalf("redelivery %+v, want %q a second time", d, a[0].Body)
	}
}

// Close gives back the items pushed but not handed out; the items handed
// out stay the connection's until acknowledged.
func TestConsumerCloseGivesBackWhatItHolds(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{})
	c := h.dial()
	putN(t, c, "jobs", 5)
	s, err := c.Consume(ctxT(t), "jobs", 5)
	if err != nil {
		t.Fatal(err)
	}
	first := next(t, s)
	eventually(t, "all 5 pushed", func() bool { return h.stats("jobs").InFlight == 5 })
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil { // twice is fine
		t.Fatal(err)
	}
	if _, err := s.Next(ctxT(t)); !errors.Is(err, ErrConsumerClosed) {
		t.Errorf("Next after Close: %v, want ErrConsumerClosed", err)
	}
	eventually(t, "4 back in the queue", func() bool { st := h.stats("jobs"); return st.InFlight == 1 && st.Depth == 4 })
	if err := c.Ack(ctxT(t), first); err != nil {
		t.Fatalf("ack of an item handed out before Close: %v", err)
	}
	other, err := h.dial().Consume(ctxT(t), "jobs", 10)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < 5; i++ {
		if d := next(t, other); string(d.Body) != strconv.Itoa(i) || d.Deliveries != 2 {
			t.Fatalf("after Close: %+v, want %d delivered a second time", d, i)
		}
	}
}

// The broker's refusals reach Next: a queue that does not exist, the
// queue's removal, the broker's shutdown.
func TestConsumeEndsWithTheBrokersReason(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{Queues: []QueueConfig{{Name: "jobs"}, {Name: "old"}}})
	c := h.dial()
	s, err := c.Consume(ctxT(t), "nosuch", 1)
	if err != nil {
		t.Fatal(err)
	}
	var se *StatusError
	if _, err := s.Next(ctxT(t)); !errors.As(err, &se) || se.Code != statusNoSuchQueue {
		t.Errorf("Next on a queue that does not exist: %v, want NO_SUCH_QUEUE", err)
	}
	old, err := c.Consume(ctxT(t), "old", 1)
	if err != nil {
		t.Fatal(err)
	}
	jobs, err := c.Consume(ctxT(t), "jobs", 1)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "both consumers at the broker", func() bool {
		h.b.queue("old").mu.Lock()
		defer h.b.queue("old").mu.Unlock()
		return len(h.b.queue("old").consumers) == 1
	})
	if err := h.b.SetQueues([]QueueConfig{{Name: "jobs"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := old.Next(ctxT(t)); !errors.As(err, &se) || se.Code != statusNoSuchQueue || !strings.Contains(se.Message, "removed") {
		t.Errorf("Next on a removed queue: %v, want NO_SUCH_QUEUE queue removed", err)
	}
	putN(t, c, "jobs", 1)
	next(t, jobs) // parked now: its credit is used
	h.b.Close()
	if _, err := jobs.Next(ctxT(t)); err == nil {
		t.Error("Next after the broker's Close did not fail")
	}
}

// A delivery acknowledged twice is refused by the broker; the refusal comes
// back from a later Ack.
func TestConsumerAckRefusalIsReported(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{})
	c := h.dial()
	putN(t, c, "jobs", 1)
	s, err := c.Consume(ctxT(t), "jobs", 1)
	if err != nil {
		t.Fatal(err)
	}
	d := next(t, s)
	if err := s.Ack(d); err != nil {
		t.Fatal(err)
	}
	if err := s.Ack(d); err != nil {
		t.Fatal(err)
	}
	var se *StatusError
	eventually(t, "the refusal reported", func() bool {
		err := s.Ack()
		return errors.As(err, &se) && se.Code == statusUnknownDelivery
	})
}

// A consumer process killed while it holds its whole prefetch: every item
// it held is delivered again, to the consumer still alive, and no item is
// delivered twice to that one.
func TestConsumerKilledHoldingItsPrefetch(t *testing.T) {
	const prefetch, later = 20, 80
	h := newBrokerHarness(t, BrokerOptions{})
	p := h.dial()
	putNamed(t, p, "jobs", "a", prefetch)
	cmd := exec.Command(os.Args[0], "-test.run=^TestConsumerHelperProcess$")
	cmd.Env = append(os.Environ(), consumerHelperEnv+"=hold", EnvSocket+"="+h.path, "PREFETCH="+strconv.Itoa(prefetch))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	held := map[string]bool{}
	sc := bufio.NewScanner(out)
	for len(held) < prefetch && sc.Scan() {
		held[sc.Text()] = true
	}
	if len(held) != prefetch {
		t.Fatalf("the helper took %d items, want %d", len(held), prefetch)
	}
	live, err := h.dial().Consume(ctxT(t), "jobs", 7)
	if err != nil {
		t.Fatal(err)
	}
	putNamed(t, p, "jobs", "b", later)
	seen := map[string]int{}
	take := func(wantPrefix string, deliveries int) {
		t.Helper()
		d := next(t, live)
		seen[string(d.Body)]++
		if !strings.HasPrefix(string(d.Body), wantPrefix) || d.Deliveries != deliveries {
			t.Errorf("got %q delivered %d times; want a %s item delivered %d times", d.Body, d.Deliveries, wantPrefix, deliveries)
		}
		if err := live.Ack(d); err != nil {
			t.Fatal(err)
		}
	}
	for range later {
		take("b", 1)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for range prefetch {
		take("a", 2) // what the dead consumer held, a second time
	}
	for body, n := range seen {
		if n != 1 {
			t.Errorf("%s delivered %d times to the live consumer", body, n)
		}
	}
	for body := range held {
		if seen[body] != 1 {
			t.Errorf("%s, held by the dead consumer, reached the live one %d times", body, seen[body])
		}
	}
	eventually(t, "everything acknowledged", func() bool {
		st := h.stats("jobs")
		return st.Depth == 0 && st.InFlight == 0 && st.Acked == prefetch+later
	})
	nothingWithin(t, live, 50*time.Millisecond)
}

// consumerHelperEnv makes the test binary, re-executed, a consumer process
// (see TestConsumerHelperProcess).
const consumerHelperEnv = "GOTYLEDON_IPC_CONSUMER_HELPER"

// TestConsumerHelperProcess is not a test: "hold" consumes with $PREFETCH,
// prints each item it gets, acknowledges none, and waits to be killed.
func TestConsumerHelperProcess(t *testing.T) {
	if os.Getenv(consumerHelperEnv) != "hold" {
		t.Skip("helper process for other tests")
	}
	ctx := context.Background()
	c, err := Dial(ctx, os.Getenv(EnvSocket))
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	n, _ := strconv.Atoi(os.Getenv("PREFETCH"))
	s, err := c.Consume(ctx, "jobs", n)
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	for {
		d, err := s.Next(ctx)
		if err != nil {
			fmt.Println("ERROR", err)
			os.Exit(1)
		}
		fmt.Println(string(d.Body))
	}
}

// BenchmarkConsumeOneByOne is a micro-benchmark (broker and clients in one
// process): items/s of one consumer that takes and acknowledges items one
// at a time with prefetch, the producer putting batches of 256.
func BenchmarkConsumeOneByOne(b *testing.B) {
	for _, prefetch := range []int{1, 64, 1024} {
		b.Run(fmt.Sprintf("prefetch=%d", prefetch), func(b *testing.B) {
			_, path := benchBroker(b)
			prod, cons := benchDial(b, path), benchDial(b, path)
			ctx := context.Background()
			s, err := cons.Consume(ctx, "bench", prefetch)
			if err != nil {
				b.Fatal(err)
			}
			body := make([]byte, benchItemSize)
			go func() {
				batch := make([][]byte, 256)
				for i := range batch {
					batch[i] = body
				}
				for left := b.N; left > 0; left -= len(batch) {
					if _, err := prod.PutBatch(ctx, "bench", batch[:min(left, len(batch))]); err != nil {
						return
					}
				}
			}()
			b.ResetTimer()
			start := time.Now()
			for range b.N {
				d, err := s.Next(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if err := s.Ack(d); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "items/s")
		})
	}
}

// A consumer that acknowledges what it handled and closes while the broker
// is still pushing to it (its socket full of items it will never read):
// the broker's write fails, and the acknowledgements sent just before the
// close are still read and carried out; none of those items is delivered
// again.
func TestAcksBeforeCloseSurviveAFailedPush(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{})
	body := make([]byte, 64<<10)
	const rounds, take = 30, 3
	items := make([][]byte, rounds*take+64)
	for i := range items {
		items[i] = body
	}
	if _, err := h.dial().PutBatch(ctxT(t), "jobs", items); err != nil {
		t.Fatal(err)
	}
	for range rounds {
		c := h.dial()
		s, err := c.Consume(ctxT(t), "jobs", 32) // 2 MiB: more than the sockets hold
		if err != nil {
			t.Fatal(err)
		}
		for range take {
			if err := s.Ack(next(t, s)); err != nil {
				t.Fatal(err)
			}
		}
		c.Close()
	}
	eventually(t, "every acknowledged item gone, nothing else lost", func() bool {
		st := h.stats("jobs")
		return st.Acked == rounds*take && st.InFlight == 0 && st.Depth == len(items)-rounds*take
	})
}

// A client that stops reading (shutdown of its reading side) but keeps its
// connection open: once a push to it fails, the broker ends the connection
// within the frame deadline, and what it held goes back to the queue.
func TestPeerThatStopsReadingLosesItsItems(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{FrameDeadline: 300 * time.Millisecond})
	// Small items: the first push fails at once (the peer does not read),
	// and every frame here is written in one go, well within the short
	// frame deadline even on a loaded machine.
	body := make([]byte, 100)
	items := make([][]byte, 64)
	for i := range items {
		items[i] = body
	}
	rc := h.raw(true)
	if err := rc.nc.(*net.UnixConn).CloseRead(); err != nil {
		t.Fatal(err)
	}
	if _, err := h.dial().PutBatch(ctxT(t), "jobs", items); err != nil {
		t.Fatal(err)
	}
	rc.write(appendConsume(nil, &consumeFrame{ID: 1, Queue: "jobs", Prefetch: 64}))
	eventually(t, "the pushes failed and the connection ended, its items back", func() bool {
		st := h.stats("jobs")
		return st.InFlight == 0 && st.Depth == len(items) && st.Delivered == uint64(len(items))
	})
}

// One ACK frame acknowledging the items of two CONSUMEs on one connection,
// of two queues and of one, gives each its own credit back.
func TestOneAckCreditsEachConsumer(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{Queues: []QueueConfig{{Name: "jobs"}, {Name: "mail"}}})
	p := h.dial()
	putNamed(t, p, "jobs", "j", 6)
	putNamed(t, p, "mail", "m", 6)
	c := h.dial()
	var subs []*Consumer
	for _, q := range []string{"jobs", "mail", "jobs"} {
		s, err := c.Consume(ctxT(t), q, 1)
		if err != nil {
			t.Fatal(err)
		}
		subs = append(subs, s)
	}
	var held []*Delivery
	for _, s := range subs {
		held = append(held, next(t, s))
	}
	for _, s := range subs {
		nothingWithin(t, s, 20*time.Millisecond)
	}
	if err := c.Ack(ctxT(t), held...); err != nil {
		t.Fatal(err)
	}
	for i, s := range subs {
		d := next(t, s)
		if d.Queue != held[i].Queue {
			t.Fatalf("consumer %d of %s got an item of %s", i, held[i].Queue, d.Queue)
		}
	}
	eventually(t, "1 acked and 2 in flight in each queue", func() bool {
		j, m := h.stats("jobs"), h.stats("mail")
		return j.Acked == 2 && j.InFlight == 2 && m.Acked == 1 && m.InFlight == 1
	})
}
