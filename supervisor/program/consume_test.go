package program

// The tests of queue consume run it as a real process: this test binary,
// run with envConsumeRole=consumer, is `gotyledon queue ...` (its Main), and
// run with handlerArg as its first argument it is the command the consumer
// runs for each item. A handler reports to the test over a Unix socket
// ("start PID DELIVERIES ID QUEUE BODY", then "signal NAME" for each stop
// signal it gets) and exits with the code the test sends it ("exit N"), so
// that the test decides what each item's command does, and when. Every
// wait has a deadline; nothing waits on a bare sleep.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/gotyledon/gotyledon/ipc"
)

const (
	envConsumeRole   = "GOTYLEDON_CONSUME_TEST_ROLE"
	envHandlerSocket = "GOTYLEDON_CONSUME_TEST_SOCKET"
	handlerArg       = "-consume-test-handler"
	consumeWait      = 20 * time.Second // any one event; generous for -race on 2 loaded cores
)

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == handlerArg {
		os.Exit(consumeTestHandler())
	}
	if os.Getenv(envConsumeRole) == "consumer" {
		os.Exit(New().Main(os.Args))
	}
	os.Exit(m.Run())
}

// consumeTestHandler is the command of the consumers under test.
func consumeTestHandler() int {
	c, err := net.Dial("unix", os.Getenv(envHandlerSocket))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var mu sync.Mutex
	send := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(c, format+"\n", args...)
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	body, err := bytes.NewBuffer(nil), error(nil)
	if _, err = body.ReadFrom(os.Stdin); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	send("start %d %s %s %s %s", os.Getpid(), os.Getenv(EnvConsumeDeliveries), os.Getenv(EnvConsumeDeliveryID),
		os.Getenv(EnvConsumeQueue), strconv.Quote(body.String()))
	go func() {
		for s := range sigs {
			send("signal %s", unix.SignalName(s.(syscall.Signal)))
		}
	}()
	fmt.Printf("handled %s\n", body) // on the consumer's stdout
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		if n, ok := strings.CutPrefix(sc.Text(), "exit "); ok {
			code, _ := strconv.Atoi(n)
			return code
		}
	}
	return 1 // the test is gone
}

// handlerServer is where the consumers' commands report.
type handlerServer struct {
	path  string
	conns chan *handlerConn

	mu   sync.Mutex
	open []net.Conn // closed when the test ends
}

// handlerConn is one run of the command, for one item.
type handlerConn struct {
	pid, deliveries int
	id              uint64
	queue, body     string
	c               net.Conn
	events          chan string // closed when the command's connection ends
}

func listenHandlers(t *testing.T) *handlerServer {
	t.Helper()
	dir, err := os.MkdirTemp("", "gtyconsume") // short: a socket path has at most 107 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	hs := &handlerServer{path: filepath.Join(dir, "h.sock"), conns: make(chan *handlerConn, 16)}
	ln, err := net.Listen("unix", hs.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ln.Close()
		hs.mu.Lock()
		defer hs.mu.Unlock()
		for _, c := range hs.open {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			hs.mu.Lock()
			hs.open = append(hs.open, c)
			hs.mu.Unlock()
			go hs.serve(c)
		}
	}()
	return hs
}

// serve reads a command's report. A malformed one reaches the test as a
// handlerConn whose body says what was wrong.
func (hs *handlerServer) serve(c net.Conn) {
	sc := bufio.NewScanner(c)
	if !sc.Scan() {
		return
	}
	h := handlerConn{c: c, events: make(chan string, 16)}
	// START PID DELIVERIES ID QUEUE "BODY": the body is quoted and may
	// hold spaces, so it is the rest of the line.
	var err error
	line := sc.Text()
	f := strings.SplitN(line, " ", 6)
	if len(f) == 6 && f[0] == "start" {
		h.pid, _ = strconv.Atoi(f[1])
		h.deliveries, _ = strconv.Atoi(f[2])
		h.id, _ = strconv.ParseUint(f[3], 10, 64)
		h.queue = f[4]
		h.body, err = strconv.Unquote(f[5])
	}
	if len(f) != 6 || f[0] != "start" || err != nil {
		h.body = fmt.Sprintf("malformed report %q", line)
	}
	hs.conns <- &h
	for sc.Scan() {
		h.events <- sc.Text()
	}
	close(h.events)
}

// next returns the next command started.
func (hs *handlerServer) next(t *testing.T) *handlerConn {
	t.Helper()
	select {
	case h := <-hs.conns:
		return h
	case <-time.After(consumeWait):
		t.Fatalf("no command started within %v", consumeWait)
		return nil
	}
}

// none checks that no command has started (after the consumer exited).
func (hs *handlerServer) none(t *testing.T) {
	t.Helper()
	select {
	case h := <-hs.conns:
		t.Errorf("a command was started for %q, delivery %d", h.body, h.deliveries)
	default:
	}
}

func (h *handlerConn) exit(t *testing.T, code int) {
	t.Helper()
	if _, err := fmt.Fprintf(h.c, "exit %d\n", code); err != nil {
		t.Fatalf("tell command %d to exit: %v", h.pid, err)
	}
}

// event waits for the command's next event and checks it is want ("" for
// the end of its connection, which comes when it exits).
func (h *handlerConn) event(t *testing.T, want string) {
	t.Helper()
	select {
	case e, ok := <-h.events:
		if !ok {
			e = ""
		}
		if e != want {
			t.Fatalf("command %d: event %q, want %q", h.pid, e, want)
		}
	case <-time.After(consumeWait):
		t.Fatalf("command %d: no event %q within %v", h.pid, want, consumeWait)
	}
}

// consumerProc is a `gotyledon queue consume` process, in a process group
// of its own as under a manager.
type consumerProc struct {
	cmd    *exec.Cmd
	stderr *lockedBuffer
	stdout *lockedBuffer
	done   chan struct{}
	code   int
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func startConsumer(t *testing.T, sock string, hs *handlerServer, flags ...string) *consumerProc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"queue", "--socket", sock, "consume"}, flags...)
	args = append(args, "jobs", "--", exe, handlerArg)
	p := &consumerProc{cmd: exec.Command(exe, args...), stderr: &lockedBuffer{}, stdout: &lockedBuffer{}, done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), envConsumeRole+"=consumer", envHandlerSocket+"="+hs.path)
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = p.cmd.Wait()
		p.code = p.cmd.ProcessState.ExitCode()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
		if t.Failed() {
			t.Logf("consumer's stderr:\n%s", p.stderr.String())
		}
	})
	return p
}

// signalGroup sends sig to the consumer's process group, as the manager
// stops a worker.
func (p *consumerProc) signalGroup(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := syscall.Kill(-p.cmd.Process.Pid, sig); err != nil {
		t.Fatal(err)
	}
}

// exited waits for the consumer's exit and checks its code (-1: killed).
func (p *consumerProc) exited(t *testing.T, code int, within time.Duration) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(within):
		t.Fatalf("the consumer still runs %v later; stderr:\n%s", within, p.stderr.String())
	}
	if p.code != code {
		t.Fatalf("the consumer exited with %d, want %d; stderr:\n%s", p.code, code, p.stderr.String())
	}
}

// says waits until the consumer's stderr holds s.
func (p *consumerProc) says(t *testing.T, s string) {
	t.Helper()
	deadline := time.Now().Add(consumeWait)
	for !strings.Contains(p.stderr.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("the consumer did not say %q within %v; stderr:\n%s", s, consumeWait, p.stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// newBroker serves queue "jobs" and returns its socket and the broker.
func newBroker(t *testing.T) (string, *ipc.Broker) {
	t.Helper()
	dir, err := os.MkdirTemp("", "gtyq")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "q.sock")
	l, err := ipc.Listen(path, -1)
	if err != nil {
		t.Fatal(err)
	}
	b, err := ipc.NewBroker(ipc.BrokerOptions{Queues: []ipc.QueueConfig{{Name: "jobs", Capacity: 100}}})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- b.Serve(net.Listener(l)) }()
	t.Cleanup(func() {
		b.Close()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return path, b
}

func put(t *testing.T, sock string, items ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), consumeWait)
	defer cancel()
	c, err := ipc.Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, it := range items {
		if err := c.Put(ctx, "jobs", []byte(it)); err != nil {
			t.Fatal(err)
		}
	}
}

// stats waits until the queue's figures are want's (Name and Capacity
// aside): the broker sees acks and closed connections on its own time.
func stats(t *testing.T, b *ipc.Broker, want ipc.QueueStats) {
	t.Helper()
	deadline := time.Now().Add(consumeWait)
	for {
		got := b.Stats()[0]
		// The consumer's own connection counts among Consumers while it
		// runs: these tests are about what became of the items.
		want.Name, want.Capacity, want.Consumers = got.Name, got.Capacity, got.Consumers
		if want.Tasks == (ipc.TaskStats{}) {
			want.Tasks = got.Tasks // the tests of tasks check them themselves
		}
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("queue stats %+v, want %+v", got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startItem checks what the command of an item was given.
func startItem(t *testing.T, hs *handlerServer, body string, deliveries int) *handlerConn {
	t.Helper()
	h := hs.next(t)
	if h.body != body || h.deliveries != deliveries || h.queue != "jobs" || h.id == 0 {
		t.Fatalf("command started with item %q, delivery %d (id %d) of %q; want %q, delivery %d of \"jobs\"",
			h.body, h.deliveries, h.id, h.queue, body, deliveries)
	}
	return h
}

func TestQueueConsumeAcksEachItemInOrder(t *testing.T) {
	t.Parallel()
	sock, b := newBroker(t)
	hs := listenHandlers(t)
	put(t, sock, "one", "two words", "three\nlines\n")
	p := startConsumer(t, sock, hs)
	for _, body := range []string{"one", "two words", "three\nlines\n"} {
		h := startItem(t, hs, body, 1)
		h.exit(t, 0)
		h.event(t, "")
	}
	stats(t, b, ipc.QueueStats{Put: 3, Delivered: 3, Acked: 3})
	if out := p.stdout.String(); out != "handled one\nhandled two words\nhandled three\nlines\n\n" {
		t.Errorf("the commands' output, on the consumer's stdout: %q", out)
	}
	// Idle, a stop signal ends the consumer at once, with exit code 0.
	p.signalGroup(t, syscall.SIGTERM)
	p.exited(t, ExitOK, 5*time.Second)
	hs.none(t)
}

func TestQueueConsumeFailedItemComesBack(t *testing.T) {
	t.Parallel()
	sock, b := newBroker(t)
	hs := listenHandlers(t)
	put(t, sock, "x", "y")
	p := startConsumer(t, sock, hs)
	h := startItem(t, hs, "x", 1)
	h.exit(t, 3)
	h.event(t, "")
	p.says(t, `exited with code 3; item put back on "jobs" (delivery 1)`)
	h = startItem(t, hs, "x", 2) // at the head of the queue, one delivery more
	h.exit(t, 0)
	h = startItem(t, hs, "y", 1)
	h.exit(t, 0)
	stats(t, b, ipc.QueueStats{Put: 2, Delivered: 3, Acked: 2, Redelivered: 1})
	p.signalGroup(t, syscall.SIGINT)
	p.exited(t, ExitOK, 5*time.Second)
}

// A stop signal to the consumer's process group while a command runs: the
// command does not get it, finishes its item, and the consumer acks or
// nacks it by its exit code, takes no other, and exits 0.
func TestQueueConsumeStopLetsTheCommandFinish(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		code int
		want ipc.QueueStats
	}{
		{0, ipc.QueueStats{Put: 2, Delivered: 1, Acked: 1, Depth: 1}},
		{1, ipc.QueueStats{Put: 2, Delivered: 1, Depth: 2}}, // put back: Redelivered counts when it is handed out again
	} {
		t.Run(fmt.Sprintf("exit %d", tc.code), func(t *testing.T) {
			t.Parallel()
			sock, b := newBroker(t)
			hs := listenHandlers(t)
			put(t, sock, "first", "second")
			p := startConsumer(t, sock, hs)
			h := startItem(t, hs, "first", 1)
			p.signalGroup(t, syscall.SIGTERM)
			p.says(t, "stopping once")
			h.exit(t, tc.code)
			h.event(t, "") // no "signal": the stop was not the command's
			p.exited(t, ExitOK, consumeWait)
			stats(t, b, tc.want)
			hs.none(t)
		})
	}
}

// A second stop signal is passed on to the command.
func TestQueueConsumeSecondSignalReachesTheCommand(t *testing.T) {
	t.Parallel()
	sock, b := newBroker(t)
	hs := listenHandlers(t)
	put(t, sock, "slow")
	p := startConsumer(t, sock, hs)
	h := startItem(t, hs, "slow", 1)
	p.signalGroup(t, syscall.SIGINT)
	p.says(t, "stopping once")
	p.signalGroup(t, syscall.SIGTERM)
	h.event(t, "signal SIGTERM")
	h.exit(t, 143)
	h.event(t, "")
	p.exited(t, ExitOK, consumeWait)
	stats(t, b, ipc.QueueStats{Put: 1, Delivered: 1, Depth: 1})
}

// A consumer SIGKILLed with an item in hand takes its command with it
// (parent-death signal); the broker puts the item back, and the next
// consumer gets it, one delivery more: nothing lost, nothing acked twice.
func TestQueueConsumeSIGKILLLosesNothing(t *testing.T) {
	t.Parallel()
	sock, b := newBroker(t)
	hs := listenHandlers(t)
	put(t, sock, "a", "b", "c")
	p := startConsumer(t, sock, hs)
	h := startItem(t, hs, "a", 1)
	h.exit(t, 0)
	h = startItem(t, hs, "b", 1)
	if err := syscall.Kill(p.cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	h.event(t, "") // the command died with the consumer
	p.exited(t, -1, consumeWait)
	stats(t, b, ipc.QueueStats{Put: 3, Delivered: 2, Acked: 1, Depth: 2}) // b is back

	p = startConsumer(t, sock, hs)
	h = startItem(t, hs, "b", 2)
	h.exit(t, 0)
	h = startItem(t, hs, "c", 1)
	h.exit(t, 0)
	stats(t, b, ipc.QueueStats{Put: 3, Delivered: 4, Acked: 3, Redelivered: 1})
	p.signalGroup(t, syscall.SIGTERM)
	p.exited(t, ExitOK, 5*time.Second)
	hs.none(t)
}

// The command may be any program: here a shell, with arguments that look
// like the consumer's flags. The consumer runs in this test's process
// (nothing signals it) until --timeout passes with no item.
func TestQueueConsumeRunsAShellCommand(t *testing.T) {
	t.Parallel()
	sock, _ := newBroker(t)
	put(t, sock, "42", "43")
	code, stdout, stderr := queueCLI("", "--socket", sock, "consume", "--timeout", "300ms", "jobs", "--",
		"/bin/sh", "-c", `echo "$GOTYLEDON_QUEUE $GOTYLEDON_DELIVERIES $(cat) $*"; test "$GOTYLEDON_DELIVERY_ID" -gt 0`, "sh", "--timeout", "5s")
	if code != ExitTimeout || stdout != "jobs 1 42 --timeout 5s\njobs 1 43 --timeout 5s\n" || !strings.Contains(stderr, `get from "jobs"`) {
		t.Errorf("exit %d, stdout %q, stderr %q; want exit %d after two items", code, stdout, stderr, ExitTimeout)
	}
}

func TestQueueConsumeErrors(t *testing.T) {
	t.Parallel()
	sock, _ := newBroker(t)
	for _, tc := range []struct {
		args []string
		code int
		says string
	}{
		{[]string{"jobs"}, ExitUsage, `expected "<command> ..."`},
		{[]string{"jobs", "--"}, ExitUsage, "needs a command"},
		{[]string{"jobs", "--", "/nonexistent/handler"}, ExitError, "/nonexistent/handler"},
		{[]string{"nope", "--", "/bin/true"}, ExitError, `get from "nope"`},
	} {
		code, _, stderr := queueCLI("", append([]string{"--socket", sock, "consume"}, tc.args...)...)
		if code != tc.code || !strings.Contains(stderr, tc.says) {
			t.Errorf("consume %q: exit %d, stderr %q; want exit %d saying %q", tc.args, code, stderr, tc.code, tc.says)
		}
	}
}

func TestQueueConsumeBackoff(t *testing.T) {
	var got []time.Duration
	for d := time.Duration(0); len(got) < 9; {
		d = nextConsumeBackoff(d)
		got = append(got, d)
	}
	want := []time.Duration{100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000}
	for i := range want {
		if got[i] != want[i]*time.Millisecond {
			t.Fatalf("pauses after failures in a row: %v, want %v ms", got, want)
		}
	}
}

// Tasks: the command's output is the result; exit 0 is done, another
// code a failure with the exit status and output for message; a command
// killed by a signal leaves the task to be delivered again.
func TestQueueConsumeAnswersTasks(t *testing.T) {
	t.Parallel()
	sock, b := newBroker(t)
	hs := listenHandlers(t)
	ctx, cancel := context.WithTimeout(context.Background(), consumeWait)
	defer cancel()
	sub, err := ipc.Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	var fs []*ipc.Future
	for _, in := range []string{"a", "b", "c"} {
		f, err := sub.Submit(ctx, "jobs", []byte(in))
		if err != nil {
			t.Fatal(err)
		}
		fs = append(fs, f)
	}
	p := startConsumer(t, sock, hs)
	startItem(t, hs, "a", 1).exit(t, 0)
	startItem(t, hs, "b", 1).exit(t, 4)
	h := startItem(t, hs, "c", 1)
	if err := syscall.Kill(h.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	p.says(t, `was killed by SIGKILL; item put back on "jobs" (delivery 1)`)
	startItem(t, hs, "c", 2).exit(t, 0)
	if r, err := fs[0].Result(ctx); err != nil || string(r) != "handled a\n" {
		t.Errorf("task a: %q, %v; want its command's output", r, err)
	}
	var te *ipc.TaskError
	if _, err := fs[1].Result(ctx); !errors.As(err, &te) || !strings.Contains(te.Message, "exited with code 4: handled b") {
		t.Errorf("task b: %v; want a TaskError with the exit code and the output", err)
	}
	if r, err := fs[2].Result(ctx); err != nil || string(r) != "handled c\n" {
		t.Errorf("task c: %q, %v", r, err)
	}
	if out := p.stdout.String(); out != "" {
		t.Errorf("tasks' output reached the consumer's stdout: %q", out)
	}
	stats(t, b, ipc.QueueStats{Put: 3, Delivered: 4, Acked: 3, Redelivered: 1})
	if ts := b.Stats()[0].Tasks; ts.Submitted != 3 || ts.Done != 2 || ts.Failed != 1 || ts.Redelivered != 1 || ts.Running != 0 {
		t.Errorf("task figures %+v; want 3 submitted, 2 done, 1 failed, 1 redelivered", ts)
	}
}

// A failed task's message keeps the exit status when the output fills
// max_item: the output is cut, at a character's start.
func TestTaskFailureMessageFitsMaxItem(t *testing.T) {
	cmd := exec.Command("sh", "-c", "exit 4")
	err := cmd.Run()
	out := &cappedBuffer{max: 64}
	out.Write(bytes.Repeat([]byte("é"), 100))
	o, answered := taskOutcome("cmd", cmd.ProcessState, err, out)
	if !answered || o.ok || len(o.message) > 64 || !strings.HasPrefix(o.message, "cmd exited with code 4: é") || !utf8.ValidString(o.message) {
		t.Fatalf("outcome %+v (answered %v, %d bytes); want a failure that starts with the status and fits 64 bytes", o, answered, len(o.message))
	}
}

// A consumer drained while its command runs (the manager is about to
// recycle the worker): the command finishes and its item is acknowledged,
// the consumer takes no other item and, rather than exit (as --timeout
// would have it do), waits for the stop signal, then exits 0. The drain
// ends once the item is acknowledged.
func TestQueueConsumeDrainedWaitsForTheStop(t *testing.T) {
	t.Parallel()
	sock, b := newBroker(t)
	hs := listenHandlers(t)
	put(t, sock, "first", "second")
	p := startConsumer(t, sock, hs, "--timeout", "100ms")
	h := startItem(t, hs, "first", 1)
	drained := b.Drain(p.cmd.Process.Pid)
	select {
	case <-drained:
		t.Fatal("the drain ended while the command works on its item")
	default:
	}
	h.exit(t, 0)
	h.event(t, "")
	select {
	case <-drained:
	case <-time.After(consumeWait):
		t.Fatal("the drain did not end once the item was acknowledged")
	}
	p.says(t, `draining: no more items from "jobs"; waiting for the stop signal`)
	select {
	case <-p.done:
		t.Fatalf("the drained consumer exited (%d) before its stop signal; stderr:\n%s", p.code, p.stderr.String())
	case <-time.After(300 * time.Millisecond): // thrice its --timeout
	}
	stats(t, b, ipc.QueueStats{Put: 2, Delivered: 1, Acked: 1, Depth: 1})
	if n := b.Acked(p.cmd.Process.Pid); n != 1 {
		t.Errorf("Acked = %d, want 1", n)
	}
	p.signalGroup(t, syscall.SIGTERM)
	p.exited(t, ExitOK, 5*time.Second)
	hs.none(t)
}
