package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gotyledon/gotyledon/ipc"
)

// envStreamer makes the test binary, run by a manager as a worker, the
// streamer.
const envStreamer = "JETSTREAM_TEST_STREAMER"

// streamer consumes $QUEUE with a prefetch of 8, says "done ITEM" for each
// item, 10ms apart, and acknowledges it; drained, it says "drained" and
// waits for its stop signal. It returns its exit code.
func streamer() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	q, err := ipc.DialEnv(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "streamer:", err)
		return 1
	}
	defer q.Close() // sends the acks still queued
	c, err := q.Consume(ctx, os.Getenv("QUEUE"), 8)
	if err != nil {
		fmt.Fprintln(os.Stderr, "streamer:", err)
		return 1
	}
	for {
		d, err := c.Next(ctx)
		switch {
		case errors.Is(err, ipc.ErrDraining):
			fmt.Println("drained")
			<-ctx.Done()
			return 0
		case ctx.Err() != nil:
			return 0
		case err != nil:
			fmt.Fprintln(os.Stderr, "streamer:", err)
			return 1
		}
		time.Sleep(10 * time.Millisecond) // the item's work
		fmt.Printf("done %s\n", d.Body)
		if err := c.Ack(d); err != nil {
			fmt.Fprintln(os.Stderr, "streamer:", err)
			return 1
		}
	}
}

// logLine is what the tests read of a manager's JSON log line.
type logLine struct {
	Msg     string `json:"msg"`
	Service string `json:"service"`
	Stream  string `json:"stream"`
	Reason  string `json:"reason"`
}

// Consumers of a JetStream queue recycled after max_jobs items while 600
// items flow: each is drained through the bridge (its prefetched items go
// to the other consumer), stopped and replaced, and every item is done
// exactly once. The ack wait is a minute: an item left to it would not be
// done in time.
func TestManagerRecyclesJetStreamConsumersWithoutLosingAnItem(t *testing.T) {
	const items = 600
	dir, run := t.TempDir(), runDir(t)
	config := jetstreamConfig(t, dir, "1m")
	yaml, err := os.ReadFile(config)
	if err != nil {
		t.Fatal(err)
	}
	streamers := fmt.Sprintf(`  streamer:
    command: [%s]
    workers: 2
    env: {%s: "1", QUEUE: jobs}
    recycle: {max_jobs: 40, jitter: 0}
    restart: {min_uptime: 100ms}
`, os.Args[0], envStreamer)
	if err := os.WriteFile(config, append(yaml, streamers...), 0o644); err != nil {
		t.Fatal(err)
	}
	m := startManager(t, run, config)
	putN(t, dialQueue(t, run), items)

	done := map[string]int{}
	var recycles, drains, timedOut, told int
	deadline := time.After(60 * time.Second)
	for n := 0; n < items; {
		var l string
		select {
		case line, ok := <-m.lines:
			if !ok {
				t.Fatalf("manager exited after %d items done", n)
			}
			l = line
		case <-deadline:
			t.Fatalf("%d of %d items done within 60s", n, items)
		}
		var e logLine
		if json.Unmarshal([]byte(l), &e) != nil || e.Service != "streamer" {
			continue
		}
		switch {
		case e.Stream == "stdout" && strings.HasPrefix(e.Msg, "done "):
			done[strings.TrimPrefix(e.Msg, "done ")]++
			n++
		case e.Stream == "stdout" && e.Msg == "drained":
			told++
		case e.Msg == "recycling worker: draining it first" && e.Reason == "max_jobs":
			recycles++
		case e.Msg == "worker drained; stopping it":
			drains++
		case strings.HasPrefix(e.Msg, "worker still holds items"):
			timedOut++
		}
	}
	for i := range items {
		if n := done[fmt.Sprintf("item-%03d", i)]; n != 1 {
			t.Errorf("item-%03d done %d times, want once", i, n)
		}
	}
	t.Logf("%d recycles, %d drains ended, %d workers told", recycles, drains, told)
	if recycles < 2 || drains < 2 || told < 2 || timedOut != 0 {
		t.Errorf("%d recycles for max_jobs, %d drains ended, %d workers told, %d stopped still holding items; want at least 2 drains, each ended by the drain",
			recycles, drains, told, timedOut)
	}
}
