package supervisor_test

// The queue end to end: a real manager, its broker on a real socket, Go
// workers that consume, and SIGKILLs. The broker's own rules are tested in
// package ipc; these prove the manager wires it to its workers and that a
// worker's death hands its unacknowledged items to the next consumer.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gotyledon/gotyledon/ipc"
)

// queueManager starts a manager serving queue "jobs" on a socket in a
// temporary directory, with the services in yaml, and dials it.
func queueManager(t *testing.T, services string) (*manager, *ipc.Client) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "q.sock")
	m := startManager(t, fmt.Sprintf("broker: {socket: %s}\nqueues:\n  jobs: {capacity: 20000}\nservices:\n%s", sock, services))
	m.waitFor("broker listening", func(e entry) bool { return e.str("msg") == "queue broker listening" })
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	c, err := ipc.Dial(ctx, sock)
	if err != nil {
		t.Fatalf("dial the manager's broker: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return m, c
}

// got matches a consumer's "got ITEM deliveries N" line.
func got(e entry) (item string, deliveries int, ok bool) {
	if e.str("service") == "" || e.str("stream") != "stdout" {
		return "", 0, false
	}
	rest, ok := strings.CutPrefix(e.str("msg"), "got ")
	if !ok {
		return "", 0, false
	}
	item, d, ok := strings.Cut(rest, " deliveries ")
	n, err := strconv.Atoi(d)
	return item, n, ok && err == nil
}

// An item a worker got but did not acknowledge goes to the next consumer
// when the worker is SIGKILLed, with its delivery count raised.
func TestKilledConsumersItemIsRedelivered(t *testing.T) {
	t.Parallel()
	m, q := queueManager(t, `  holder:
    run: consumer
    env: {QUEUE: jobs, HOLD: "1"}
    restart: {backoff_initial: 10ms, backoff_max: 20ms}
`)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := q.Put(ctx, "jobs", []byte("precious")); err != nil {
		t.Fatal(err)
	}
	first := m.waitFor("first delivery", func(e entry) bool { it, d, ok := got(e); return ok && it == "precious" && d == 1 })
	if err := syscall.Kill(first.int("pid"), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	again := m.waitFor("redelivery", func(e entry) bool { it, d, ok := got(e); return ok && it == "precious" && d == 2 })
	if again.int("pid") == first.int("pid") || again.int("worker") != 0 {
		t.Errorf("redelivered to pid %d worker %d; want the restarted worker 0, not pid %d", again.int("pid"), again.int("worker"), first.int("pid"))
	}
}

// 10,000 items through 3 consumers that are SIGKILLed at random: every item
// is consumed at least once, and only items in flight at a kill twice.
func TestItemsSurviveConsumersKilledAtRandom(t *testing.T) {
	t.Parallel()
	const items, kills = 10000, 12
	m, q := queueManager(t, `  consumer:
    run: consumer
    workers: 3
    env: {QUEUE: jobs}
    restart: {backoff_initial: 10ms, backoff_max: 20ms}
`)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	batch := make([][]byte, items)
	for i := range batch {
		batch[i] = []byte(strconv.Itoa(i))
	}
	if n, err := q.PutBatch(ctx, "jobs", batch); err != nil || n != items {
		t.Fatalf("put %d of %d: %v", n, items, err)
	}
	consumed := func(e entry) bool { _, _, ok := got(e); return ok }

	// Kill at random points of the run a random consumer among those that
	// printed lately (so, most likely, one that is running and holds an item).
	seed := uint64(time.Now().UnixNano())
	t.Logf("random seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, seed))
	marks := make([]int, kills)
	for k := range marks {
		marks[k] = items/20 + rng.IntN(items*8/10)
	}
	slices.Sort(marks)
	for _, mark := range marks {
		es := m.waitN("progress", mark, consumed)
		victim := es[len(es)-1-rng.IntN(min(10, len(es)))].int("pid")
		_ = syscall.Kill(victim, syscall.SIGKILL) // it may be dead already
	}

	// Wait until every item was consumed: at least as many lines again as
	// items are still missing, until none is.
	want := items
	var seen map[string]int
	redelivered := 0
	for {
		es := m.waitN("every item consumed", want, consumed)
		seen, redelivered = map[string]int{}, 0
		for _, e := range es {
			it, d, _ := got(e)
			seen[it]++
			if d > 1 {
				redelivered++
			}
		}
		if len(seen) == items {
			break
		}
		want = len(es) + items - len(seen)
	}
	dups := 0
	for _, n := range seen {
		dups += n - 1
	}
	// A consumer holds one item at a time, so each kill redelivers at most
	// one item, and every duplicate is a redelivery.
	if redelivered > kills || dups > redelivered {
		t.Errorf("%d redelivered, %d duplicates for %d kills: want redelivered <= kills and duplicates <= redelivered", redelivered, dups, kills)
	}
	t.Logf("%d items, %d kills: %d redelivered, %d consumed twice", items, kills, redelivered, dups)
}

// editConfig rewrites the manager's config file with old replaced by new
// (the change is seen by the config watch).
func editConfig(t *testing.T, m *manager, old, new string) {
	t.Helper()
	b, err := os.ReadFile(m.config)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), old) {
		t.Fatalf("config has no %q", old)
	}
	if err := os.WriteFile(m.config, []byte(strings.Replace(string(b), old, new, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
}

// Queues change by reload: one is added, one resized; none loses an item.
func TestReloadAddsAndResizesQueuesKeepingItems(t *testing.T) {
	t.Parallel()
	m, q := queueManager(t, "  idle:\n    run: sleeper\n")
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	items := [][]byte{[]byte("1"), []byte("2"), []byte("3"), []byte("4"), []byte("5")}
	if n, err := q.PutBatch(ctx, "jobs", items); err != nil || n != 5 {
		t.Fatalf("put %d: %v", n, err)
	}
	editConfig(t, m, "jobs: {capacity: 20000}", "jobs: {capacity: 2}\n  results: {capacity: 10}")
	m.waitFor("reload", func(e entry) bool { return e.str("msg") == "configuration applied" })
	if err := q.Put(ctx, "results", []byte("new queue works")); err != nil {
		t.Fatalf("put on the added queue: %v", err)
	}
	if err := q.TryPut("jobs", []byte("6")); !errors.Is(err, ipc.ErrFull) {
		t.Errorf("put on jobs over its new capacity: %v, want ErrFull", err)
	}
	for i := range 5 {
		d, err := q.Get(ctx, "jobs")
		if err != nil || string(d.Body) != string(items[i]) {
			t.Fatalf("item %d after the resize: %v %v", i, d, err)
		}
		if err := q.Ack(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
}

// A reload that would remove a queue holding items is refused whole: the
// queue stays, and the file's other changes wait for a good one.
func TestReloadRemovingAQueueWithItemsIsRefused(t *testing.T) {
	t.Parallel()
	m, q := queueManager(t, "  idle:\n    run: sleeper\n")
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := q.Put(ctx, "jobs", []byte("keep me")); err != nil {
		t.Fatal(err)
	}
	m.waitFor("idle ready", output("idle", "ready"))
	b, err := os.ReadFile(m.config)
	if err != nil {
		t.Fatal(err)
	}
	noQueue := strings.Replace(string(b), "  jobs: {capacity: 20000}\n", "  other: {}\n", 1)
	noQueue = strings.Replace(noQueue, "    run: sleeper\n", "    run: sleeper\n    workers: 2\n", 1)
	if err := os.WriteFile(m.config, []byte(noQueue), 0o644); err != nil {
		t.Fatal(err)
	}
	refused := m.waitFor("refusal", func(e entry) bool { return e.str("msg") == "reload refused: the running services are unchanged" })
	if !strings.Contains(refused.str("error"), "jobs") {
		t.Errorf("the refusal %q does not name the queue", refused.str("error"))
	}
	d, err := q.Get(ctx, "jobs")
	if err != nil || string(d.Body) != "keep me" {
		t.Fatalf("the queue's item after the refused reload: %v %v", d, err)
	}
	if n := len(m.all(started("idle", 1))); n != 0 {
		t.Error("the refused file's other change (idle: 2 workers) was applied")
	}
}
