package ipc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Helpers of the drain tests, run as processes of their own (the test
// binary again, see TestIPCHelperProcess), each the leader of its own
// process group as a manager's worker is.

// drainConsumerHelper consumes queue $DRAIN_QUEUE with prefetch 10, takes
// 3 items and says "holding A B C"; at the line "ack" on its stdin it
// acknowledges them, asks for the next one and says "next: draining" if
// the consume ended ErrDraining (else what it got); then it waits for the
// end of its stdin, connected.
func drainConsumerHelper() {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	c, err := Dial(ctx, os.Getenv(EnvSocket))
	if err != nil {
		fmt.Println("ERROR", err)
		return
	}
	defer c.Close()
	cons, err := c.Consume(ctx, os.Getenv("DRAIN_QUEUE"), 10)
	if err != nil {
		fmt.Println("ERROR", err)
		return
	}
	var held []*Delivery
	var bodies []string
	for range 3 {
		d, err := cons.Next(ctx)
		if err != nil {
			fmt.Println("ERROR", err)
			return
		}
		held = append(held, d)
		bodies = append(bodies, string(d.Body))
	}
	fmt.Println("holding", strings.Join(bodies, " "))
	in := bufio.NewScanner(os.Stdin)
	if !in.Scan() || in.Text() != "ack" {
		return
	}
	if err := cons.Ack(held...); err != nil {
		fmt.Println("ERROR", err)
		return
	}
	d, err := cons.Next(ctx)
	sayWhatCame("next:", d, err)
	io.Copy(io.Discard, os.Stdin)
}

// sayWhatCame prints, after say, "draining" for ErrDraining, the error,
// or "got BODY".
func sayWhatCame(say string, d *Delivery, err error) {
	switch {
	case errors.Is(err, ErrDraining):
		fmt.Println(say, "draining")
	case err != nil:
		fmt.Println(say, err)
	default:
		fmt.Println(say, "got", string(d.Body))
	}
}

// drainGetterHelper GETs from queue $DRAIN_QUEUE, waiting, and says "get:
// draining" if the GET ended ErrDraining (else what it got); then it GETs
// again and says "again: draining" (or what it got), and waits for the end
// of its stdin, connected.
func drainGetterHelper() {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	c, err := Dial(ctx, os.Getenv(EnvSocket))
	if err != nil {
		fmt.Println("ERROR", err)
		return
	}
	defer c.Close()
	for _, say := range []string{"get:", "again:"} {
		d, err := c.Get(ctx, os.Getenv("DRAIN_QUEUE"))
		sayWhatCame(say, d, err)
	}
	io.Copy(io.Discard, os.Stdin)
}

// ackerHelper, on queue "jobs", GETs and ACKs $ACKS items, GETs one and
// NACKs it, takes $AUTOACKS with auto-ack GETs, says "done", and waits for
// the end of its stdin, connected.
func ackerHelper() {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	c, err := Dial(ctx, os.Getenv(EnvSocket))
	if err != nil {
		fmt.Println("ERROR", err)
		return
	}
	defer c.Close()
	acks, _ := strconv.Atoi(os.Getenv("ACKS"))
	autoAcks, _ := strconv.Atoi(os.Getenv("AUTOACKS"))
	for range acks {
		d, err := c.Get(ctx, "jobs")
		if err == nil {
			err = c.Ack(ctx, d)
		}
		if err != nil {
			fmt.Println("ERROR", err)
			return
		}
	}
	d, err := c.Get(ctx, "jobs")
	if err == nil {
		err = c.Nack(ctx, d)
	}
	if err != nil {
		fmt.Println("ERROR", err)
		return
	}
	for range autoAcks {
		if _, err := c.GetAutoAck(ctx, "jobs"); err != nil {
			fmt.Println("ERROR", err)
			return
		}
	}
	fmt.Println("done")
	io.Copy(io.Discard, os.Stdin)
}

// helperProc is a helper process in a process group of its own.
type helperProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
}

func startGroupHelper(t *testing.T, socket, mode string, env ...string) *helperProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestIPCHelperProcess$")
	cmd.Env = append(append(os.Environ(), helperEnv+"="+mode, EnvSocket+"="+socket), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &helperProc{cmd: cmd, stdin: stdin, lines: make(chan string, 16)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	return p
}

// line returns the helper's next line of output.
func (p *helperProc) line(t *testing.T) string {
	t.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok {
			t.Fatal("helper ended before its line")
		}
		return l
	case <-time.After(testTimeout):
		t.Fatal("no line from the helper in time")
	}
	return ""
}

// consumeAll acknowledges what c's consumer of queue gets, sending each
// body to got, until ctx ends.
func consumeAll(t *testing.T, ctx context.Context, c *Client, queue string, got chan<- string) {
	cons, err := c.Consume(ctx, queue, 16)
	if err != nil {
		t.Error(err)
		return
	}
	go func() {
		for {
			d, err := cons.Next(ctx)
			if err != nil {
				return
			}
			if err := cons.Ack(d); err != nil {
				t.Error(err)
				return
			}
			got <- string(d.Body)
		}
	}()
}

// receive takes n bodies from got.
func receive(t *testing.T, got <-chan string, n int) []string {
	t.Helper()
	out := make([]string, 0, n)
	for len(out) < n {
		select {
		case b := <-got:
			out = append(out, b)
		case <-time.After(testTimeout):
			t.Fatalf("got %d items, want %d", len(out), n)
		}
	}
	return out
}

func drainOver(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(testTimeout):
		t.Fatalf("%s: the drain did not end", what)
	}
}

// drainWorkerScenario is the drain of a worker as the manager recycles
// it: a worker (a process of its own group) consumes with prefetch 10 and
// works on 3 items; another consumer takes the rest; the worker is
// drained. Its consume ends DRAINING, its 7 prefetched items go back and
// the other consumer gets them; the drain ends only once the worker has
// acknowledged its 3; every item is acknowledged exactly once. inFlight
// says how many items the worker's process group holds (those of other
// groups may count too, when they hold none).
func drainWorkerScenario(t *testing.T, b *Broker, socket, queue string, c *Client, inFlight func(worker int) int) {
	ctx := ctxT(t)
	for i := range 100 {
		if err := c.Put(ctx, queue, []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	w := startGroupHelper(t, socket, "drain-consumer", "DRAIN_QUEUE="+queue)
	holding, ok := strings.CutPrefix(w.line(t), "holding ")
	if !ok {
		t.Fatalf("worker says %q", holding)
	}
	acked := strings.Fields(holding)
	worker := w.cmd.Process.Pid
	eventually(t, "the worker's prefetch in flight", func() bool { return inFlight(worker) == 10 })

	got := make(chan string, 100)
	consumeAll(t, ctx, c, queue, got)
	others := receive(t, got, 90)
	drained := b.Drain(w.cmd.Process.Pid)
	if b.Drain(w.cmd.Process.Pid) != drained {
		t.Fatal("a second Drain returned another channel")
	}
	others = append(others, receive(t, got, 7)...)
	// The worker holds its 3: the drain is not over.
	time.Sleep(20 * time.Millisecond) // a wrong close has a chance to show
	if drainOver(drained) {
		t.Fatal("the drain ended while the worker holds 3 items")
	}
	if n := inFlight(worker); n != 3 {
		t.Fatalf("%d items in flight, want the worker's 3", n)
	}
	fmt.Fprintln(w.stdin, "ack")
	waitClosed(t, drained, "after the worker's acks")
	if l := w.line(t); l != "next: draining" {
		t.Fatalf("the worker's Next after the drain: %q", l)
	}
	all := append(others, acked...)
	slices.SortFunc(all, func(a, b string) int {
		x, _ := strconv.Atoi(a)
		y, _ := strconv.Atoi(b)
		return x - y
	})
	for i, s := range all {
		if s != strconv.Itoa(i) {
			t.Fatalf("items acknowledged, in order: %v; want 0 to 99 once each", all)
		}
	}
	if n := b.Acked(w.cmd.Process.Pid); n != 3 {
		t.Errorf("Acked(worker) = %d, want 3", n)
	}
	select {
	case b := <-got:
		t.Fatalf("item %s delivered again", b)
	case <-time.After(20 * time.Millisecond):
	}
}

func TestDrainPrefetchingWorker(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{})
	c := h.dial()
	drainWorkerScenario(t, h.b, h.path, "jobs", c, func(int) int { return h.stats("jobs").InFlight })
	st := h.stats("jobs")
	if st.Acked != 100 || st.Redelivered != 7 || st.Depth != 0 || st.InFlight != 0 {
		t.Fatalf("stats %+v: want 100 acked, the 7 prefetched delivered again", st)
	}
	if n, self := h.b.Acked(syscall.Getpgrp()), uint64(97); n != self {
		t.Errorf("Acked(the test's group) = %d, want %d", n, self)
	}
}

// fakeGroups has the broker see the process group in next for each
// connection it accepts: the tests set it before each dial (Dial returns
// after the WELCOME, which comes after the accept).
func fakeGroups(next *atomic.Int64) func(*Broker) {
	return func(b *Broker) { b.pgidOf = func(int) int { return int(next.Load()) } }
}

// Drain of a group with nothing in flight ends at once; the group's GET
// that waits, its CONSUME and its later GETs and CONSUMEs end DRAINING;
// its PUTs and ACKs work; another group is untouched; a connection of the
// group that opens later drains too.
func TestDrainEndsTakingNotPutting(t *testing.T) {
	var next atomic.Int64
	h := newBrokerHarness(t, BrokerOptions{Queues: []QueueConfig{{Name: "jobs"}, {Name: "other"}}}, fakeGroups(&next))
	ctx := ctxT(t)
	next.Store(1001)
	w := h.dial()
	next.Store(1002)
	o := h.dial()
	if err := w.Put(ctx, "jobs", []byte("x")); err != nil {
		t.Fatal(err)
	}
	d, err := w.Get(ctx, "jobs")
	if err != nil {
		t.Fatal(err)
	}
	waiting := make(chan error, 1)
	go func() { _, err := w.Get(ctx, "other"); waiting <- err }()
	eventually(t, "the GET waiting", func() bool { return h.stats("other").Consumers == 1 })
	cons, err := w.Consume(ctx, "other", 4)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the CONSUME", func() bool { return h.stats("other").Consumers == 2 })

	drained := h.b.Drain(1001)
	if err := <-waiting; !errors.Is(err, ErrDraining) {
		t.Fatalf("waiting GET: %v, want ErrDraining", err)
	}
	if _, err := cons.Next(ctx); !errors.Is(err, ErrDraining) {
		t.Fatalf("Next: %v, want ErrDraining", err)
	}
	if _, err := w.Get(ctx, "jobs"); !errors.Is(err, ErrDraining) {
		t.Fatalf("new GET: %v, want ErrDraining", err)
	}
	if _, err := w.GetAutoAck(ctx, "jobs"); !errors.Is(err, ErrDraining) {
		t.Fatalf("new auto-ack GET: %v, want ErrDraining", err)
	}
	cons2, err := w.Consume(ctx, "jobs", 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cons2.Next(ctx); !errors.Is(err, ErrDraining) {
		t.Fatalf("new CONSUME: %v, want ErrDraining", err)
	}
	var se *StatusError
	if _, err := w.Get(ctx, "jobs"); !errors.As(err, &se) || se.Code != 12 || statusName(se.Code) != "DRAINING" {
		t.Fatalf("GET's error %v: want status 12 DRAINING", err)
	}
	if drainOver(drained) {
		t.Fatal("drain ended while an item is in flight")
	}
	if err := w.Put(ctx, "jobs", []byte("result")); err != nil {
		t.Fatalf("PUT while draining: %v", err)
	}
	if err := w.Ack(ctx, d); err != nil {
		t.Fatalf("ACK while draining: %v", err)
	}
	waitClosed(t, drained, "after the ACK")
	if h.b.Drain(1001) != drained {
		t.Fatal("Drain after the end returned another channel")
	}
	// Another group takes as before.
	if d, err := o.Get(ctx, "jobs"); err != nil || string(d.Body) != "result" {
		t.Fatalf("other group's GET: %v, %v", d, err)
	}
	// A connection of the drained group that opens later drains.
	next.Store(1001)
	late := h.dial()
	if _, err := late.Get(ctx, "jobs"); !errors.Is(err, ErrDraining) {
		t.Fatalf("late connection's GET: %v, want ErrDraining", err)
	}
	// Forget drops the mark.
	h.b.Forget(1001)
	if _, err := late.TryPut("jobs", []byte("y")), error(nil); err != nil {
		t.Fatal(err)
	}
	if d, err := late.Get(ctx, "jobs"); err != nil || string(d.Body) != "y" {
		t.Fatalf("GET after Forget: %v, %v", d, err)
	}
	// A group with nothing: ended at once.
	waitClosed(t, h.b.Drain(1003), "a group the broker does not know")
}

// The close of a draining connection that holds items ends the drain, and
// its items are requeued for others.
func TestDrainEndsWhenConnectionCloses(t *testing.T) {
	var next atomic.Int64
	h := newBrokerHarness(t, BrokerOptions{}, fakeGroups(&next))
	ctx := ctxT(t)
	next.Store(2001)
	w := h.dial()
	next.Store(2002)
	o := h.dial()
	if _, err := o.PutBatch(ctx, "jobs", [][]byte{[]byte("a"), []byte("b")}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.GetBatch(ctx, "jobs", 2); err != nil {
		t.Fatal(err)
	}
	drained := h.b.Drain(2001)
	time.Sleep(20 * time.Millisecond)
	if drainOver(drained) {
		t.Fatal("drain ended while 2 items are in flight")
	}
	w.Close()
	waitClosed(t, drained, "after the close")
	ds, err := o.GetBatch(ctx, "jobs", 2)
	if err != nil || len(ds) != 2 || ds[0].Deliveries != 2 {
		t.Fatalf("after the close: %d items, %v", len(ds), err)
	}
}

// Acked counts each process group's acknowledgements, auto-ack GETs
// included and NACKs not; Forget starts it again.
func TestAckedPerProcessGroup(t *testing.T) {
	h := newBrokerHarness(t, BrokerOptions{})
	c := h.dial()
	ctx := ctxT(t)
	for i := range 20 {
		if err := c.Put(ctx, "jobs", []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	a := startGroupHelper(t, h.path, "acker", "ACKS=2", "AUTOACKS=1")
	if l := a.line(t); l != "done" {
		t.Fatalf("helper a: %q", l)
	}
	b := startGroupHelper(t, h.path, "acker", "ACKS=4", "AUTOACKS=0")
	if l := b.line(t); l != "done" {
		t.Fatalf("helper b: %q", l)
	}
	pa, pb := a.cmd.Process.Pid, b.cmd.Process.Pid
	eventually(t, "the counts", func() bool { return h.b.Acked(pa) == 3 && h.b.Acked(pb) == 4 })
	if n := h.b.Acked(syscall.Getpgrp()); n != 0 {
		t.Errorf("Acked(the test's group, which acked nothing) = %d", n)
	}
	h.b.Forget(pa)
	if n := h.b.Acked(pa); n != 0 {
		t.Errorf("Acked after Forget = %d", n)
	}
	if n := h.b.Acked(pb); n != 4 {
		t.Errorf("Acked(b) after Forget(a) = %d", n)
	}
	h.b.Forget(424242) // unknown: nothing
}

// A forwarded queue drains as the broker's own: the store server's
// CONSUME is cancelled and answered DRAINING, the prefetched items go back
// through it, and the drain ends once the held ones are acknowledged.
func TestDrainForwardedQueue(t *testing.T) {
	var next atomic.Int64
	h := newForwardHarness(t, 0, fakeGroups(&next))
	ctx := ctxT(t)
	next.Store(3001)
	w := h.dial()
	next.Store(3002)
	o := h.dial()
	for i := range 10 {
		if err := o.Put(ctx, "js", []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	cons, err := w.Consume(ctx, "js", 5)
	if err != nil {
		t.Fatal(err)
	}
	held, err := cons.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h.store.store.await(t, "5 in flight", func(st fakeState) bool { return st.inFlight == 5 })
	drained := h.b.Drain(3001)
	// The client gives its prefetched items back once it reads the end
	// of its CONSUME; Next hands out none of them after that.
	h.store.store.await(t, "the 4 prefetched back", func(st fakeState) bool { return st.inFlight == 1 })
	if _, err := cons.Next(ctx); !errors.Is(err, ErrDraining) {
		t.Fatalf("Next: %v, want ErrDraining", err)
	}
	if drainOver(drained) {
		t.Fatal("drain ended while an item is held")
	}
	if _, err := w.Get(ctx, "js"); !errors.Is(err, ErrDraining) {
		t.Fatalf("GET: %v, want ErrDraining", err)
	}
	if err := w.Put(ctx, "js", []byte("result")); err != nil {
		t.Fatalf("PUT while draining: %v", err)
	}
	if err := w.Ack(ctx, held); err != nil {
		t.Fatalf("ACK while draining: %v", err)
	}
	waitClosed(t, drained, "after the ACK")
	if n := h.b.Acked(3001); n != 1 {
		t.Errorf("Acked = %d, want 1", n)
	}
	ds, err := o.GetBatch(ctx, "js", 20)
	if err != nil || len(ds) != 10 {
		t.Fatalf("the other group gets %d items, %v; want the 9 left and the result", len(ds), err)
	}
}
