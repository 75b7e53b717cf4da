package main

import (
	"context"
	"testing"
	"time"
)

// A consumer that acknowledges items and closes its connection at once
// (its acknowledgements queued by Consume go out with the close): the
// items it acknowledged do not come back.
func TestManagerKeepsAcksSentJustBeforeAClose(t *testing.T) {
	dir, run := t.TempDir(), runDir(t)
	startManager(t, run, jetstreamConfig(t, dir, "1h"))
	putN(t, dialQueue(t, run), 20)
	c := dialQueue(t, run)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// As a worker's: the stop ends the consume's context, then the
	// connection closes.
	consumeCtx, stop := context.WithCancel(ctx)
	jobs, err := c.Consume(consumeCtx, "jobs", 8)
	if err != nil {
		t.Fatal(err)
	}
	acked := map[string]bool{}
	for range 5 {
		d, err := jobs.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := jobs.Ack(d); err != nil {
			t.Fatal(err)
		}
		acked[string(d.Body)] = true
	}
	// As the chaos's consumer does at its stop: what Next still hands
	// out is handled and acknowledged, then the connection closes.
	stop()
	for {
		d, err := jobs.Next(consumeCtx)
		if err != nil {
			break
		}
		if err := jobs.Ack(d); err != nil {
			t.Fatal(err)
		}
		acked[string(d.Body)] = true
	}
	c.Close()
	seen := drain(t, dialQueue(t, run), 20-len(acked), 30*time.Second)
	for name := range seen {
		if acked[name] {
			t.Errorf("%s, acknowledged before the close, came back", name)
		}
	}
}
