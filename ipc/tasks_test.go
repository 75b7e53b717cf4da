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
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
)

// A task answered three ways: Reply (the result), Fail (a *TaskError),
// Ack (done, empty). The worker sees each as a Request.
func TestSubmitReplyFailAck(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{})
	sub, worker := h.dial(), h.dial()
	ctx := ctxT(t)
	var fs []*Future
	for _, in := range []string{"reply", "fail", "ack"} {
		f, err := sub.Submit(ctx, "jobs", []byte(in))
		if err != nil {
			t.Fatal(err)
		}
		fs = append(fs, f)
	}
	ds, err := worker.GetBatch(ctx, "jobs", 3)
	if err != nil || len(ds) != 3 {
		t.Fatalf("GetBatch: %d, %v", len(ds), err)
	}
	for _, d := range ds {
		if !d.Request {
			t.Fatalf("delivery %q is not a Request", d.Body)
		}
	}
	if err := ds[0].Reply(ctx, []byte("REPLY")); err != nil {
		t.Fatal(err)
	}
	if err := ds[1].Fail(ctx, errors.New("no good")); err != nil {
		t.Fatal(err)
	}
	if err := worker.Ack(ctx, ds[2]); err != nil {
		t.Fatal(err)
	}
	if r, err := fs[0].Result(ctx); err != nil || string(r) != "REPLY" {
		t.Errorf("replied task: %q, %v", r, err)
	}
	var te *TaskError
	if r, err := fs[1].Result(ctx); !errors.As(err, &te) || te.Message != "no good" || r != nil {
		t.Errorf("failed task: %q, %v; want a TaskError \"no good\"", r, err)
	}
	if r, err := fs[2].Result(ctx); err != nil || len(r) != 0 {
		t.Errorf("acked task: %q, %v; want an empty result", r, err)
	}
	// A delivery answered is gone: answering it again finds nothing.
	var se *StatusError
	if err := ds[0].Reply(ctx, []byte("again")); !errors.As(err, &se) || se.Code != statusUnknownDelivery {
		t.Errorf("second reply: %v, want UNKNOWN_DELIVERY", err)
	}
	if s := h.stats("jobs"); s.Depth != 0 || s.InFlight != 0 {
		t.Errorf("queue after: depth %d, in flight %d", s.Depth, s.InFlight)
	}
}

// Map over two consuming workers: every result once, in input order, and
// the tasks Map did not see are not answered again.
func TestMapResultsInOrder(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{Queues: []QueueConfig{{Name: "jobs", Capacity: 100}}})
	ctx := ctxT(t)
	var wg sync.WaitGroup
	wctx, stop := context.WithCancel(ctx)
	defer func() { stop(); wg.Wait() }()
	var mu sync.Mutex
	seen := map[string]int{}
	for range 2 {
		w := h.dial()
		cons, err := w.Consume(ctx, "jobs", 16)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				d, err := cons.Next(wctx)
				if err != nil {
					return
				}
				mu.Lock()
				seen[string(d.Body)]++
				mu.Unlock()
				if err := d.Reply(wctx, bytes.ToUpper(d.Body)); err != nil {
					t.Errorf("reply: %v", err)
					return
				}
			}
		}()
	}
	const n = 2000 // twenty times the queue's capacity: Map waits for room
	inputs := make([][]byte, n)
	for i := range inputs {
		inputs[i] = []byte(fmt.Sprintf("task-%d", i))
	}
	results, err := h.dial().Map(ctx, "jobs", inputs)
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != n {
		t.Fatalf("%d results for %d inputs", len(results), n)
	}
	for i, r := range results {
		if want := fmt.Sprintf("TASK-%d", i); string(r) != want {
			t.Fatalf("result %d is %q, want %q", i, r, want)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for in, k := range seen {
		if k != 1 {
			t.Errorf("%s handled %d times", in, k)
		}
	}
	if len(seen) != n {
		t.Errorf("%d tasks handled, want %d", len(seen), n)
	}
}

// A failing task makes Map's error, for the first failure in input order,
// with the others' results.
func TestMapFailure(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{})
	ctx := ctxT(t)
	w := h.dial()
	go func() {
		for {
			d, err := w.Get(ctx, "jobs")
			if err != nil {
				return
			}
			if bytes.HasPrefix(d.Body, []byte("bad")) {
				d.Fail(ctx, fmt.Errorf("cannot do %s", d.Body))
			} else {
				d.Reply(ctx, append([]byte("ok "), d.Body...))
			}
		}
	}()
	results, err := h.dial().Map(ctx, "jobs", [][]byte{[]byte("a"), []byte("bad1"), []byte("b"), []byte("bad2")})
	var te *TaskError
	if !errors.As(err, &te) || te.Message != "cannot do bad1" || !strings.Contains(err.Error(), "input 1") {
		t.Fatalf("Map error %v, want input 1's TaskError", err)
	}
	if len(results) != 4 || string(results[0]) != "ok a" || results[1] != nil || string(results[2]) != "ok b" || results[3] != nil {
		t.Errorf("results %q", results)
	}
}

// Cancel withdraws a task no worker has taken, not one a worker has.
func TestCancelWithdrawsQueuedOnly(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{})
	sub, worker := h.dial(), h.dial()
	ctx := ctxT(t)
	taken, err := sub.Submit(ctx, "jobs", []byte("first"))
	if err != nil {
		t.Fatal(err)
	}
	queued, err := sub.Submit(ctx, "jobs", []byte("second"))
	if err != nil {
		t.Fatal(err)
	}
	d, err := worker.Get(ctx, "jobs")
	if err != nil || string(d.Body) != "first" {
		t.Fatalf("Get: %v, %v", d, err)
	}
	if ok, err := queued.Cancel(ctx); !ok || err != nil {
		t.Fatalf("Cancel of a queued task: %v, %v; want true", ok, err)
	}
	if _, err := queued.Result(ctx); !errors.Is(err, ErrCancelled) {
		t.Errorf("cancelled task's Result: %v, want ErrCancelled", err)
	}
	if ok, err := taken.Cancel(ctx); ok || err != nil {
		t.Fatalf("Cancel of a taken task: %v, %v; want false", ok, err)
	}
	if s := h.stats("jobs"); s.Depth != 0 {
		t.Errorf("depth %d after the cancel, want 0", s.Depth)
	}
	if err := d.Reply(ctx, []byte("done")); err != nil {
		t.Fatal(err)
	}
	if r, err := taken.Result(ctx); err != nil || string(r) != "done" {
		t.Errorf("taken task: %q, %v", r, err)
	}
	// Nothing is left for a worker.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if d, err := worker.Get(short, "jobs"); !errors.Is(err, ErrTimeout) {
		t.Errorf("Get after: %v, %v; want a timeout", d, err)
	}
}

func TestWaitAnyAndWaitAll(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{})
	sub, worker := h.dial(), h.dial()
	ctx := ctxT(t)
	var fs []*Future
	for i := range 3 {
		f, err := sub.Submit(ctx, "jobs", []byte{byte('a' + i)})
		if err != nil {
			t.Fatal(err)
		}
		fs = append(fs, f)
	}
	short, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
	defer cancel()
	if i, err := WaitAny(short, fs...); i != -1 || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitAny with nothing done: %d, %v", i, err)
	}
	ds, err := worker.GetBatch(ctx, "jobs", 3)
	if err != nil || len(ds) != 3 {
		t.Fatalf("GetBatch: %d, %v", len(ds), err)
	}
	if err := ds[1].Reply(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if i, err := WaitAny(ctx, fs...); i != 1 || err != nil {
		t.Fatalf("WaitAny: %d, %v; want 1", i, err)
	}
	short2, cancel2 := context.WithTimeout(ctx, 30*time.Millisecond)
	defer cancel2()
	if err := WaitAll(short2, fs...); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitAll with one of three done: %v", err)
	}
	if err := ds[0].Reply(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if err := ds[2].Reply(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if err := WaitAll(ctx, fs...); err != nil {
		t.Fatal(err)
	}
}

// The close of a submitter's connection withdraws its queued tasks; the
// one in flight is still answered by its worker (an ACK for the broker),
// and nobody gets its outcome.
func TestSubmitterGoneWithdrawsItsTasks(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{})
	sub, worker := h.dial(), h.dial()
	ctx := ctxT(t)
	inputs := [][]byte{[]byte("1"), []byte("2"), []byte("3"), []byte("4")}
	for _, in := range inputs {
		if _, err := sub.Submit(ctx, "jobs", in); err != nil {
			t.Fatal(err)
		}
	}
	d, err := worker.Get(ctx, "jobs")
	if err != nil {
		t.Fatal(err)
	}
	sub.Close()
	eventually(t, "the queued tasks withdrawn", func() bool { return h.stats("jobs").Depth == 0 })
	if err := d.Reply(ctx, []byte("nobody hears")); err != nil {
		t.Fatalf("reply to an orphaned task: %v", err)
	}
	if s := h.stats("jobs"); s.InFlight != 0 {
		t.Errorf("in flight %d after the reply", s.InFlight)
	}
}

// An orphaned task in flight whose worker dies is dropped, not delivered
// again.
func TestOrphanedTaskNotRedelivered(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{})
	sub, worker := h.dial(), h.dial()
	ctx := ctxT(t)
	if _, err := sub.Submit(ctx, "jobs", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := worker.Get(ctx, "jobs"); err != nil {
		t.Fatal(err)
	}
	sub.Close()
	worker.Close()
	eventually(t, "the orphaned task dropped", func() bool {
		s := h.stats("jobs")
		return s.InFlight == 0 && s.Depth == 0
	})
}

// A client of version 1 gets tasks as plain items, and its ACK answers
// them done and empty; SUBMIT, REPLY and WITHDRAW are not for it.
func TestVersion1Client(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{})
	ctx := ctxT(t)
	f, err := h.dial().Submit(ctx, "jobs", []byte("hi"))
	if err != nil {
		t.Fatal(err)
	}
	rc := h.raw(true) // says version 1
	rc.write(appendGet(nil, &getFrame{ID: 1, TimeoutMS: 1000, Queue: "jobs", Max: 1}))
	items, ok := rc.read().(*itemsFrame)
	if !ok || items.Requests || len(items.Items) != 1 {
		t.Fatalf("a version 1 GET got %#v, want an ITEMS frame", items)
	}
	rc.write(appendAck(nil, &ackFrame{ID: 2, Deliveries: []uint64{items.Items[0].Delivery}}))
	if r, ok := rc.read().(*resultFrame); !ok || r.Status != statusOK || r.N != 1 {
		t.Fatalf("ACK answered %#v", r)
	}
	if r, err := f.Result(ctx); err != nil || len(r) != 0 {
		t.Errorf("task acked by a version 1 client: %q, %v", r, err)
	}
	for _, frame := range [][]byte{
		appendSubmit(nil, &submitFrame{ID: 3, Queue: "jobs", Tasks: []task{{Tag: 1, Body: []byte("x")}}}),
		appendReply(nil, &replyFrame{ID: 3, Answers: []answer{{Delivery: 1}}}),
		appendWithdraw(nil, &withdrawFrame{ID: 3, Tags: []uint64{1}}),
	} {
		rc := h.raw(true)
		rc.write(frame)
		rc.expectFatalAndClose(statusBadFrame)
	}
}

// dialRaw2 is dialRaw saying version 2.
func dialRaw2(t *testing.T, path string) *rawConn {
	t.Helper()
	rc := dialRaw(t, path, false)
	rc.write(appendHello(nil, &helloFrame{Magic: [4]byte{'G', 'T', 'Y', 'Q'}, Version: 2, Client: "raw2"}))
	if w, ok := rc.read().(*welcomeFrame); !ok || w.Version != 2 {
		t.Fatalf("WELCOME %#v, want version 2", w)
	}
	return rc
}

// A tag submitted again while its task is not answered is accepted and
// not queued twice; the submitter gets one outcome. A REQUESTS frame holds
// tasks only: a GET on a queue of a task and an item gets them apart.
func TestDuplicateTagAndRequestsFrames(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{})
	ctx := ctxT(t)
	sub := dialRaw2(t, h.path)
	for id := uint32(1); id <= 2; id++ {
		sub.write(appendSubmit(nil, &submitFrame{ID: id, TimeoutMS: 0, Queue: "jobs", Tasks: []task{{Tag: 7, Body: []byte("t")}}}))
		if r, ok := sub.read().(*resultFrame); !ok || r.Status != statusOK || r.N != 1 {
			t.Fatalf("SUBMIT %d answered %#v", id, r)
		}
	}
	if err := h.dial().Put(ctx, "jobs", []byte("plain")); err != nil {
		t.Fatal(err)
	}
	if d := h.stats("jobs").Depth; d != 2 {
		t.Fatalf("depth %d, want 2: the task once, the item", d)
	}
	w := dialRaw2(t, h.path)
	w.write(appendGet(nil, &getFrame{ID: 1, TimeoutMS: 1000, Queue: "jobs", Max: 10}))
	reqs, ok := w.read().(*itemsFrame)
	if !ok || !reqs.Requests || len(reqs.Items) != 1 || string(reqs.Items[0].Body) != "t" {
		t.Fatalf("first GET got %#v, want REQUESTS of the task alone", reqs)
	}
	w.write(appendGet(nil, &getFrame{ID: 2, TimeoutMS: 1000, Queue: "jobs", Max: 10}))
	items, ok := w.read().(*itemsFrame)
	if !ok || items.Requests || len(items.Items) != 1 || string(items.Items[0].Body) != "plain" {
		t.Fatalf("second GET got %#v, want ITEMS of the item", items)
	}
	w.write(appendReply(nil, &replyFrame{ID: 3, Answers: []answer{
		{Delivery: reqs.Items[0].Delivery, Status: outcomeDone, Body: []byte("R")},
		{Delivery: items.Items[0].Delivery, Status: outcomeDone, Body: []byte("dropped")},
	}}))
	if r, ok := w.read().(*resultFrame); !ok || r.Status != statusOK || r.N != 2 {
		t.Fatalf("REPLY answered %#v", r)
	}
	out, ok := sub.read().(*outcomesFrame)
	if !ok || len(out.Outcomes) != 1 || out.Outcomes[0].Tag != 7 || string(out.Outcomes[0].Body) != "R" {
		t.Fatalf("submitter got %#v, want one outcome for tag 7", out)
	}
	// And nothing more: the next frame is the RESULT of a WITHDRAW that
	// finds nothing.
	sub.write(appendWithdraw(nil, &withdrawFrame{ID: 9, Tags: []uint64{7}}))
	if r, ok := sub.read().(*resultFrame); !ok || r.ID != 9 || r.N != 0 {
		t.Fatalf("after the outcome: %#v, want WITHDRAW's RESULT n 0", r)
	}
}

// WITHDRAW of a queued task: its OUTCOMES entry cancelled, then the
// RESULT that counts it, as PROTOCOL.md's worked example shows.
func TestWithdrawAnswersCancelledThenResult(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{})
	sub := dialRaw2(t, h.path)
	sub.write(appendSubmit(nil, &submitFrame{ID: 3, TimeoutMS: waitForever, Queue: "jobs", Tasks: []task{{Tag: 8, Body: []byte("3+3")}}}))
	if r, ok := sub.read().(*resultFrame); !ok || r.ID != 3 || r.N != 1 {
		t.Fatalf("SUBMIT answered %#v", r)
	}
	sub.write(appendWithdraw(nil, &withdrawFrame{ID: 4, Tags: []uint64{8, 99}}))
	if o, ok := sub.read().(*outcomesFrame); !ok || len(o.Outcomes) != 1 || o.Outcomes[0].Tag != 8 || o.Outcomes[0].Status != outcomeCancelled {
		t.Fatalf("WITHDRAW: first frame %#v, want tag 8 cancelled", o)
	}
	if r, ok := sub.read().(*resultFrame); !ok || r.ID != 4 || r.Status != statusOK || r.N != 1 {
		t.Fatalf("WITHDRAW answered %#v, want OK n 1", r)
	}
	if d := h.stats("jobs").Depth; d != 0 {
		t.Errorf("depth %d after the withdraw", d)
	}
}

// Worker processes: a task's worker is SIGKILLed before it replies; the
// task goes to the other worker (its second delivery), and the submitter
// gets exactly one outcome.
func TestWorkerKilledTaskRedeliveredOnce(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{})
	ctx := ctxT(t)
	sub := dialRaw2(t, h.path)
	sub.write(appendSubmit(nil, &submitFrame{ID: 1, TimeoutMS: 0, Queue: "jobs", Tasks: []task{{Tag: 42, Body: []byte("work")}}}))
	if r, ok := sub.read().(*resultFrame); !ok || r.Status != statusOK || r.N != 1 {
		t.Fatalf("SUBMIT answered %#v", r)
	}
	holder := startTaskHelper(t, h.path, "hold")
	if line := holder.line(t); line != "took work 1" {
		t.Fatalf("holding worker says %q", line)
	}
	holder.cmd.Process.Signal(syscall.SIGKILL)
	holder.cmd.Wait()
	replier := startTaskHelper(t, h.path, "reply")
	if line := replier.line(t); line != "replied work 2" {
		t.Fatalf("replying worker says %q", line)
	}
	out, ok := sub.read().(*outcomesFrame)
	if !ok || len(out.Outcomes) != 1 || out.Outcomes[0].Tag != 42 || string(out.Outcomes[0].Body) != "WORK" {
		t.Fatalf("submitter got %#v, want tag 42's outcome WORK", out)
	}
	sub.write(appendWithdraw(nil, &withdrawFrame{ID: 2, Tags: []uint64{42}}))
	if r, ok := sub.read().(*resultFrame); !ok || r.ID != 2 || r.N != 0 {
		t.Fatalf("after the outcome: %#v, want WITHDRAW's RESULT n 0 (no second outcome)", r)
	}
	_ = ctx
}

// taskHelper is this test binary run as a worker (TestIPCTaskHelper).
type taskHelper struct {
	cmd   *exec.Cmd
	lines *bufio.Scanner
}

func startTaskHelper(t *testing.T, socket, role string) *taskHelper {
	t.Helper()
	th, err := spawnTaskHelper(t, socket, role)
	if err != nil {
		t.Fatal(err)
	}
	return th
}

// spawnTaskHelper is startTaskHelper for any goroutine: it reports, where
// startTaskHelper fails the test. The helper is killed when the test ends.
func spawnTaskHelper(t *testing.T, socket, role string) (*taskHelper, error) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestIPCTaskHelper$")
	cmd.Env = append(os.Environ(), helperEnv+"=task-"+role, EnvSocket+"="+socket)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return &taskHelper{cmd: cmd, lines: bufio.NewScanner(out)}, nil
}

// line reads the helper's next line, within the test's time.
func (th *taskHelper) line(t *testing.T) string {
	t.Helper()
	l, err := th.lineWithin(testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// lineWithin reads the helper's next line, waiting up to d; for any
// goroutine.
func (th *taskHelper) lineWithin(d time.Duration) (string, error) {
	got := make(chan string, 1)
	go func() {
		if th.lines.Scan() {
			got <- th.lines.Text()
		}
		close(got)
	}()
	select {
	case l, ok := <-got:
		if !ok {
			return "", errors.New("the helper ended without a line")
		}
		return l, nil
	case <-time.After(d):
		return "", fmt.Errorf("no line from the helper within %v", d)
	}
}

// taskServe answers tasks in upper case, each after a millisecond of
// "work" (so that a worker killed at any moment holds some), until it is
// killed (the test's cleanup kills it at the latest).
func taskServe(c *Client) {
	ctx := context.Background()
	tasks, err := c.Consume(ctx, "jobs", 8)
	if err != nil {
		fmt.Println("consume:", err)
		os.Exit(1)
	}
	fmt.Println("serving")
	for {
		d, err := tasks.Next(ctx)
		if err != nil {
			os.Exit(0)
		}
		time.Sleep(time.Millisecond)
		if err := d.Reply(ctx, bytes.ToUpper(d.Body)); err != nil {
			fmt.Println("reply:", err)
			os.Exit(1)
		}
	}
}

// TestIPCTaskHelper is not a test: it is the body of the worker processes
// of the task tests. hold: take a task, say so, and wait to be killed;
// reply: take a task and answer it in upper case; serve: answer tasks
// until killed (taskServe).
func TestIPCTaskHelper(t *testing.T) {
	role, ok := strings.CutPrefix(os.Getenv(helperEnv), "task-")
	if !ok {
		t.Skip("helper process for other tests")
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	c, err := DialEnv(ctx)
	if err != nil {
		fmt.Println("dial:", err)
		os.Exit(1)
	}
	if role == "serve" {
		taskServe(c)
	}
	d, err := c.Get(ctx, "jobs")
	if err != nil {
		fmt.Println("get:", err)
		os.Exit(1)
	}
	switch role {
	case "hold":
		fmt.Println("took", string(d.Body), strconv.Itoa(d.Deliveries))
		<-ctx.Done()
	case "reply":
		if err := d.Reply(ctx, bytes.ToUpper(d.Body)); err != nil {
			fmt.Println("reply:", err)
			os.Exit(1)
		}
		fmt.Println("replied", string(d.Body), strconv.Itoa(d.Deliveries))
	}
	c.Close()
	os.Exit(0)
}

// The task figures, of the queue and of the services of the connections
// (PeerService): this process's connections are "submitters", the worker
// processes' "workers".
func TestTaskStats(t *testing.T) {
	me := os.Getpid()
	h := newBrokerHarness(t, BrokerOptions{PeerService: func(p Peer) string {
		if p.PID == me {
			return "submitters"
		}
		return "workers"
	}})
	ctx := ctxT(t)
	sub := h.dial()
	var fs []*Future
	for _, in := range []string{"work", "cancelled"} {
		f, err := sub.Submit(ctx, "jobs", []byte(in))
		if err != nil {
			t.Fatal(err)
		}
		fs = append(fs, f)
	}
	holder := startTaskHelper(t, h.path, "hold")
	if line := holder.line(t); line != "took work 1" {
		t.Fatalf("holding worker says %q", line)
	}
	eventually(t, "the task running", func() bool { return h.stats("jobs").Tasks.Running == 1 })
	if ok, err := fs[1].Cancel(ctx); !ok || err != nil {
		t.Fatalf("Cancel: %v, %v", ok, err)
	}
	holder.cmd.Process.Signal(syscall.SIGKILL)
	holder.cmd.Wait()
	replier := startTaskHelper(t, h.path, "reply")
	if line := replier.line(t); line != "replied work 2" {
		t.Fatalf("replying worker says %q", line)
	}
	if _, err := fs[0].Result(ctx); err != nil {
		t.Fatal(err)
	}
	q := h.stats("jobs").Tasks
	if q.Submitted != 2 || q.Done != 1 || q.Failed != 0 || q.Cancelled != 1 || q.Redelivered != 1 || q.Running != 0 {
		t.Errorf("queue's task figures %+v; want 2 submitted, 1 done, 1 cancelled, 1 redelivered, none running", q)
	}
	if q.Runtime.Count != 1 || q.Runtime.P50 <= 0 || q.Runtime.P99 != q.Runtime.P50 || q.Runtime.Sum != q.Runtime.P50 {
		t.Errorf("queue's runtimes %+v; want one runtime", q.Runtime)
	}
	svc := h.b.ServiceTaskStats()
	if s := svc["submitters"]; s.Submitted != 2 || s.Cancelled != 1 || s.Done != 0 || s.Running != 0 {
		t.Errorf("submitters' figures %+v", s)
	}
	if s := svc["workers"]; s.Submitted != 0 || s.Done != 1 || s.Redelivered != 1 || s.Running != 0 || s.Runtime.Count != 1 {
		t.Errorf("workers' figures %+v", s)
	}
}

func TestRuntimePercentiles(t *testing.T) {
	var tc taskCounters
	if s := tc.snapshot(); s.Runtime != (RuntimeStats{}) {
		t.Fatalf("no runtimes: %+v", s.Runtime)
	}
	// 2000 runtimes, 1 ms to 2000 ms: the window holds the latest 1024
	// (977 ms to 2000 ms).
	for i := 1; i <= 2000; i++ {
		tc.ran(time.Duration(i) * time.Millisecond)
	}
	s := tc.snapshot().Runtime
	if s.Count != 2000 || s.Sum != 2001000*time.Millisecond {
		t.Errorf("count %d, sum %v", s.Count, s.Sum)
	}
	if s.P50 != 1489*time.Millisecond || s.P90 != 1898*time.Millisecond || s.P99 != 1990*time.Millisecond {
		t.Errorf("percentiles %v %v %v", s.P50, s.P90, s.P99)
	}
}

// A broker of version 1 only (an older manager) refuses a HELLO of version
// 2: Dial connects again speaking version 1, and Submit says the broker
// cannot carry tasks.
func TestDialFallsBackToVersion1(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "old.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	versions := make(chan uint16, 4)
	var refuse atomic.Value                       // what the broker says to a HELLO it refuses
	refuse.Store("want magic \"GTYQ\" version 1") // as a version 1 broker says it
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			fr := frameReader{r: bufio.NewReader(nc)}
			p, err := fr.read(maxHelloLen, nil)
			if err != nil {
				nc.Close()
				continue
			}
			f, _ := decodeFrame(p)
			h, _ := f.(*helloFrame)
			if h == nil {
				nc.Close()
				continue
			}
			versions <- h.Version
			if h.Version != 1 {
				nc.Write(appendFatal(nil, &fatalFrame{Status: statusBadHello, Message: refuse.Load().(string)}))
				nc.Close()
				continue
			}
			nc.Write(appendWelcome(nil, &welcomeFrame{Version: 1, MaxFrame: 1 << 20, MaxItem: 1<<20 - frameSlack}))
			defer nc.Close()
		}
	}()
	ctx := ctxT(t)
	c, err := Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if v1, v2 := <-versions, <-versions; v1 != ProtocolVersion || v2 != 1 {
		t.Errorf("HELLO versions %d then %d; want %d then 1", v1, v2, ProtocolVersion)
	}
	if _, err := c.Submit(ctx, "jobs", []byte("x")); !errors.Is(err, ErrUnsupported) {
		t.Errorf("Submit over version 1: %v, want ErrUnsupported", err)
	}
	// Another BAD_HELLO is not a version it does not speak: no second try.
	refuse.Store("malformed HELLO: client name is not UTF-8")
	var se *StatusError
	if _, err := Dial(ctx, path); !errors.As(err, &se) || se.Code != statusBadHello || !strings.Contains(err.Error(), "malformed") {
		t.Errorf("Dial refused for a malformed HELLO: %v", err)
	}
	if v := <-versions; v != ProtocolVersion {
		t.Errorf("HELLO version %d", v)
	}
	select {
	case v := <-versions:
		t.Errorf("a second HELLO (version %d) after a BAD_HELLO that was not about the version", v)
	default:
	}
}

// An auto-ack GET's task is answered once its ITEMS is written (rule 5):
// one that is never written (its client does not read, then goes) is
// delivered again, and its submitter gets one outcome, the reply's.
func TestAutoAckTaskAnsweredOnceWritten(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{})
	sub := dialRaw2(t, h.path)
	big := bytes.Repeat([]byte("x"), 900<<10) // more than a socket's buffers: the write blocks
	sub.write(appendSubmit(nil, &submitFrame{ID: 1, Queue: "jobs", Tasks: []task{{Tag: 7, Body: big}}}))
	if r, ok := sub.read().(*resultFrame); !ok || r.N != 1 {
		t.Fatalf("SUBMIT answered %#v", r)
	}
	g := h.raw(true)
	g.write(appendGet(nil, &getFrame{ID: 1, TimeoutMS: 1000, Queue: "jobs", Max: 1, Flags: flagAutoAck}))
	eventually(t, "the task taken", func() bool { return h.stats("jobs").Tasks.Running == 1 })
	g.nc.Close()
	eventually(t, "the task back in the queue", func() bool {
		s := h.stats("jobs")
		return s.Depth == 1 && s.Tasks.Running == 0
	})
	w := dialRaw2(t, h.path)
	w.write(appendGet(nil, &getFrame{ID: 1, TimeoutMS: 1000, Queue: "jobs", Max: 1}))
	reqs, ok := w.read().(*itemsFrame)
	if !ok || !reqs.Requests || reqs.Items[0].Deliveries != 2 {
		t.Fatalf("second worker got %#v, want the task's second delivery", reqs)
	}
	w.write(appendReply(nil, &replyFrame{ID: 2, Answers: []answer{{Delivery: reqs.Items[0].Delivery, Body: []byte("R")}}}))
	if r, ok := w.read().(*resultFrame); !ok || r.N != 1 {
		t.Fatalf("REPLY answered %#v", r)
	}
	out, ok := sub.read().(*outcomesFrame)
	if !ok || len(out.Outcomes) != 1 || string(out.Outcomes[0].Body) != "R" {
		t.Fatalf("submitter got %#v, want one outcome, the reply's", out)
	}
	sub.write(appendWithdraw(nil, &withdrawFrame{ID: 9, Tags: []uint64{7}}))
	if r, ok := sub.read().(*resultFrame); !ok || r.ID != 9 {
		t.Fatalf("after the outcome: %#v, want WITHDRAW's RESULT (no second outcome)", r)
	}
	if s := h.stats("jobs").Tasks; s.Done != 1 || s.Running != 0 || s.Redelivered != 1 {
		t.Errorf("task figures %+v; want 1 done, none running, 1 redelivered", s)
	}
}

// Outcomes go in frames of max_frame at most: a WITHDRAW's 8 bytes a tag
// become 13 or more in OUTCOMES.
func TestOutcomesSplitToMaxFrame(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{MaxItem: 1000})
	maxFrame := h.b.maxFrame
	sub := dialRaw2(t, h.path)
	var tags []uint64
	for id := uint32(1); id <= 2; id++ {
		var ts []task
		for range 60 {
			tag := uint64(len(tags) + 1)
			tags = append(tags, tag)
			ts = append(ts, task{Tag: tag, Body: []byte("x")})
		}
		sub.write(appendSubmit(nil, &submitFrame{ID: id, Queue: "jobs", Tasks: ts}))
		if r, ok := sub.read().(*resultFrame); !ok || r.N != 60 {
			t.Fatalf("SUBMIT %d answered %#v", id, r)
		}
	}
	sub.write(appendWithdraw(nil, &withdrawFrame{ID: 3, Tags: tags}))
	got, frames := 0, 0
	for {
		f := sub.read()
		if size := len(appendFrame(nil, f)) - frameHeaderLen; size > maxFrame {
			t.Fatalf("a frame of %d bytes, max_frame is %d", size, maxFrame)
		}
		if r, ok := f.(*resultFrame); ok {
			if r.ID != 3 || r.N != 120 {
				t.Fatalf("WITHDRAW answered %#v", r)
			}
			break
		}
		got += len(f.(*outcomesFrame).Outcomes)
		frames++
	}
	if got != 120 || frames < 2 {
		t.Errorf("%d outcomes in %d frames, want 120 in at least 2", got, frames)
	}
	// And the Go client, whose reader holds the broker to max_frame,
	// lives through a cancelled Map of as many.
	c := h.dial()
	ctx, cancel := context.WithCancel(ctxT(t))
	go func() {
		for h.stats("jobs").Depth < 120 { // the broker's state, which has no event: polled
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	inputs := make([][]byte, 120)
	for i := range inputs {
		inputs[i] = []byte("y")
	}
	if _, err := c.Map(ctx, "jobs", inputs); !errors.Is(err, context.Canceled) {
		t.Fatalf("Map with a cancelled context: %v", err)
	}
	if err := c.Put(ctxT(t), "jobs", []byte("z")); err != nil {
		t.Errorf("Put after: %v", err)
	}
	if s := h.stats("jobs"); s.Depth != 1 || s.Tasks.Cancelled != 240 {
		t.Errorf("depth %d, %d cancelled; want the item alone, 240 cancelled", s.Depth, s.Tasks.Cancelled)
	}
}

// Worker processes SIGKILLed while a Map runs, each replaced at once:
// every result comes, right and in order, each task answered once (done
// counts answers), and those the dead held are delivered again.
func TestWorkerProcessesKilledDuringMap(t *testing.T) {
	const n, workers, kills = 3000, 3, 6
	h := newBrokerHarness(t, BrokerOptions{Queues: []QueueConfig{{Name: "jobs", Capacity: 200}}, Logger: zap.NewNop()})
	ctx := ctxT(t)
	// start runs a worker, from any goroutine.
	start := func() (*taskHelper, error) {
		w, err := spawnTaskHelper(t, h.path, "serve")
		if err != nil {
			return nil, err
		}
		if line, err := w.lineWithin(testTimeout); err != nil || line != "serving" {
			return nil, fmt.Errorf("worker says %q, %v", line, err)
		}
		return w, nil
	}
	ws := make([]*taskHelper, workers)
	for i := range ws {
		w, err := start()
		if err != nil {
			t.Fatal(err)
		}
		ws[i] = w
	}
	killed := make(chan int, 1)
	killCtx, stopKilling := context.WithCancel(ctx)
	defer func() {
		stopKilling()
		for range killed { // the killer is done before the test is
		}
	}()
	go func() {
		defer close(killed)
		rnd := rand.New(rand.NewPCG(7, 7))
		done := 0
		for k := range kills {
			// After every n/(kills+1) answers, a worker holding tasks dies.
			for h.stats("jobs").Tasks.Done < uint64((k+1)*n/(kills+1)) { // the broker's state: polled
				if killCtx.Err() != nil {
					return
				}
				time.Sleep(time.Millisecond)
			}
			i := rnd.IntN(workers)
			ws[i].cmd.Process.Signal(syscall.SIGKILL)
			ws[i].cmd.Wait()
			w, err := start()
			if err != nil {
				t.Errorf("replacing worker %d: %v", i, err)
				return
			}
			ws[i] = w
			done++
		}
		killed <- done
	}()
	inputs := make([][]byte, n)
	for i := range inputs {
		inputs[i] = fmt.Appendf(nil, "task-%d", i)
	}
	results, err := h.dial().Map(ctx, "jobs", inputs)
	if err != nil {
		t.Fatalf("%v; queue %+v", err, h.stats("jobs"))
	}
	for i, r := range results {
		if want := fmt.Sprintf("TASK-%d", i); string(r) != want {
			t.Fatalf("result %d: %q, want %q", i, r, want)
		}
	}
	if k := <-killed; k != kills {
		t.Fatalf("%d workers killed, want %d", k, kills)
	}
	s := h.stats("jobs").Tasks
	if s.Submitted != n || s.Done != n || s.Running != 0 || s.Failed != 0 || s.Cancelled != 0 {
		t.Errorf("task figures %+v; want %d submitted and done, none running", s, n)
	}
	if s.Redelivered == 0 {
		t.Errorf("no task delivered again after %d workers were killed holding tasks: %+v", kills, s)
	}
}
