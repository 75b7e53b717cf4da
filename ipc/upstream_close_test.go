package ipc

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// A consumer of a forwarded queue that acknowledges what it handles and
// closes its connection at once, its acknowledgements going out with the
// close: every item it acknowledged is acknowledged to the store, none
// given back.
func TestForwardedAcksSentWithTheCloseReachTheStore(t *testing.T) {
	h := newForwardHarness(t, 0)
	producer := h.dial()
	for round := range 60 {
		putNamed(t, producer, "js", fmt.Sprintf("r%d-", round), 40)
		c := h.dial()
		ctx, cancel := context.WithCancel(ctxT(t))
		jobs, err := c.Consume(ctx, "js", 8)
		if err != nil {
			t.Fatal(err)
		}
		acked := map[string]bool{}
		for range 5 + round%7 {
			d, err := jobs.Next(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := jobs.Ack(d); err != nil {
				t.Fatal(err)
			}
			acked[string(d.Body)] = true
		}
		cancel()
		c.Close()
		// Once the connection's end gave back what it held (nothing in
		// flight), no item it acknowledged may be back in the queue.
		st := h.store.store.await(t, "the round's items settled", func(st fakeState) bool { return st.inFlight == 0 })
		for _, name := range st.queued["js"] {
			if acked[name] {
				t.Fatalf("round %d: %s, acknowledged before the close, is queued again", round, name)
			}
		}
		// Take the rest, so that the next round starts empty.
		drainFake(t, h, producer)
	}
}

// drainFake gets and acknowledges whatever the forwarded queue holds.
func drainFake(t *testing.T, h *forwardHarness, c *Client) {
	t.Helper()
	for {
		ctx, cancel := context.WithTimeout(ctxT(t), 50*time.Millisecond)
		ds, err := c.GetBatch(ctx, "js", 1000)
		cancel()
		if err != nil || len(ds) == 0 {
			return
		}
		if err := c.Ack(ctxT(t), ds...); err != nil {
			t.Fatal(err)
		}
	}
}
