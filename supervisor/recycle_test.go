package supervisor_test

// Recycling with real processes.

import (
	"context"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// A worker whose memory grows past memory_max is drained, stopped and
// replaced, its new process waited for; the recycle is logged with its
// reason and counted.
func TestMemoryMaxRecyclesAGrowingWorker(t *testing.T) {
	t.Parallel()
	m := startManager(t, `
services:
  hog:
    run: hog
    recycle: {memory_max: 48MiB, jitter: 0}
    restart: {min_uptime: 100ms}
`)
	due := m.waitFor("the recycle", func(e entry) bool {
		return e.is("recycling worker: draining it first", "service", "hog", "worker", 0, "reason", "memory_max")
	})
	m.waitFor("the replacement ready", func(e entry) bool { return e.is("recycled worker's replacement ready", "service", "hog") })
	drained := indexOf(m, func(e entry) bool { return e.is("worker drained; stopping it", "service", "hog") })
	stopped := indexOf(m, output("hog", "hog stopping"))
	second := m.all(started("hog", 0))
	if drained < 0 || stopped < drained || len(second) < 2 || second[0].int("pid") != due.int("pid") {
		m.dump()
		t.Fatalf("drained at %d, stopped at %d, %d starts of hog/0 (first pid %d, recycled pid %d): want the due process drained, stopped, then replaced",
			drained, stopped, len(second), second[0].int("pid"), due.int("pid"))
	}
	if !strings.Contains(due.str("detail"), "memory_max 50331648") {
		t.Errorf("detail %q, want the limit", due.str("detail"))
	}
	st := m.statusJSON()
	if hog := st.Service("hog"); hog.Recycles["memory_max"] < 1 || hog.Exits["stopped"] < 1 || hog.Restarts != 0 {
		t.Errorf("hog in status: recycles %v, exits %v, restarts %d; want a recycle counted, its stop as a stop, no restart", hog.Recycles, hog.Exits, hog.Restarts)
	}
	m.signal(syscall.SIGTERM)
	if code := m.waitExit(); code != 0 {
		t.Fatalf("manager exit code %d", code)
	}
}

// Consumers recycled after max_jobs items while 600 items flow: each is
// drained (its prefetched items go to the other), stopped and replaced,
// and every item is done exactly once.
func TestMaxJobsRecyclesWithoutLosingAnItem(t *testing.T) {
	t.Parallel()
	const items = 600
	m, q := queueManager(t, `  streamer:
    run: streamer
    workers: 2
    env: {QUEUE: jobs}
    recycle: {max_jobs: 40, jitter: 0}
    restart: {min_uptime: 100ms}
`)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	batch := make([][]byte, items)
	for i := range batch {
		batch[i] = []byte(strconv.Itoa(i))
	}
	if n, err := q.PutBatch(ctx, "jobs", batch); err != nil || n != items {
		t.Fatalf("put %d of %d items: %v", n, items, err)
	}
	isDone := func(e entry) bool { return e.str("service") == "streamer" && strings.HasPrefix(e.str("msg"), "done ") }
	done := m.waitN("every item done", items, isDone)
	seen := map[string]int{}
	for _, e := range m.all(isDone) {
		seen[strings.TrimPrefix(e.str("msg"), "done ")]++
	}
	for i := range items {
		if n := seen[strconv.Itoa(i)]; n != 1 {
			t.Errorf("item %d done %d times, want once", i, n)
		}
	}
	recycles := m.all(func(e entry) bool {
		return e.is("recycling worker: draining it first", "service", "streamer", "reason", "max_jobs")
	})
	drained := m.all(func(e entry) bool { return e.is("worker drained; stopping it", "service", "streamer") })
	if len(recycles) < 2 || len(drained) < 2 || len(m.all(output("streamer", "drained"))) < 2 {
		m.dump()
		t.Fatalf("%d recycles, %d drains over %d items; want at least 2 of each, each worker told", len(recycles), len(drained), len(done))
	}
	if st := m.statusJSON(); st.Service("streamer").Recycles["max_jobs"] < 2 {
		t.Errorf("recycles in status: %v", st.Service("streamer").Recycles)
	}
}
