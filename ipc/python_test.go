package ipc_test

// The Python client (ipc/python/gotyledon_queue.py) against a real broker on
// a real Unix socket: each test runs python3 scripts from ipc/python as
// subprocesses with GOTYLEDON_QUEUE_SOCKET set. Skipped without python3.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gotyledon/gotyledon/ipc"
)

const pyWait = 30 * time.Second // deadline of any single wait on a Python process

func python3(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("python3")
	if err != nil {
		t.Skipf("python3 is not on PATH (%v): the Python client is not tested", err)
	}
	return p
}

// pyBroker starts a broker serving queues on a socket in t.TempDir().
func pyBroker(t *testing.T, queues ...ipc.QueueConfig) (*ipc.Broker, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "q.sock")
	l, err := ipc.Listen(path, -1)
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	b, err := ipc.NewBroker(ipc.BrokerOptions{Queues: queues})
	if err != nil {
		l.Close()
		t.Fatalf("NewBroker: %v", err)
	}
	served := make(chan error, 1)
	go func() { served <- b.Serve(l) }()
	t.Cleanup(func() {
		b.Close()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(pyWait):
			t.Errorf("Serve did not return within %v of Close", pyWait)
		}
	})
	return b, path
}

// pyProc is a running python3 script; its stdout lines arrive on lines.
type pyProc struct {
	cmd    *exec.Cmd
	lines  chan string
	stderr lockedBuffer
	done   chan error // the result of Wait, after stdout is drained
}

// lockedBuffer is the script's stderr: written by os/exec's copying
// goroutine while a failing test reads it for its message.
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

func startPython(t *testing.T, sock, script string, args ...string) *pyProc {
	t.Helper()
	return startPythonWith(t, sock, nil, script, args...)
}

// startPythonWith is startPython, setup changing the command before it
// starts (nil: nothing).
func startPythonWith(t *testing.T, sock string, setup func(*exec.Cmd), script string, args ...string) *pyProc {
	t.Helper()
	py := python3(t)
	p := &pyProc{lines: make(chan string, 4096), done: make(chan error, 1)}
	p.cmd = exec.Command(py, append([]string{filepath.Join("python", script)}, args...)...)
	p.cmd.Env = append(os.Environ(), ipc.EnvSocket+"="+sock, "PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1")
	p.cmd.Stderr = &p.stderr
	if setup != nil {
		setup(p.cmd)
	}
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", script, err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
		p.done <- p.cmd.Wait()
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill() // no-op error if it already exited
		select {
		case <-p.done:
		case <-time.After(pyWait):
			t.Errorf("%s: not reaped within %v", script, pyWait)
		}
	})
	return p
}

// line returns the next stdout line, failing the test on EOF or timeout.
func (p *pyProc) line(t *testing.T) string {
	t.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok {
			t.Fatalf("%v: stdout ended early; stderr:\n%s", p.cmd.Args, p.stderr.String())
		}
		return l
	case <-time.After(pyWait):
		t.Fatalf("%v: no line within %v; stderr so far:\n%s", p.cmd.Args, pyWait, p.stderr.String())
	}
	return ""
}

// expectLine fails unless the next line is want.
func (p *pyProc) expectLine(t *testing.T, want string) {
	t.Helper()
	if got := p.line(t); got != want {
		t.Fatalf("%v: got line %q, want %q; stderr:\n%s", p.cmd.Args, got, want, p.stderr.String())
	}
}

// wait returns the rest of stdout after the script exited successfully.
func (p *pyProc) wait(t *testing.T) []string {
	t.Helper()
	var rest []string
	timer := time.NewTimer(pyWait)
	defer timer.Stop()
	for {
		select {
		case l, ok := <-p.lines:
			if ok {
				rest = append(rest, l)
				continue
			}
			select {
			case err := <-p.done:
				p.done <- err // for the cleanup
				if err != nil {
					t.Fatalf("%v: %v; stderr:\n%s", p.cmd.Args, err, p.stderr.String())
				}
				return rest
			case <-timer.C:
			}
		case <-timer.C:
		}
		t.Fatalf("%v: did not exit within %v; stderr so far:\n%s", p.cmd.Args, pyWait, p.stderr.String())
	}
}

func dial(t *testing.T, sock string) *ipc.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), pyWait)
	defer cancel()
	c, err := ipc.Dial(ctx, sock)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func getOne(t *testing.T, c *ipc.Client, queue string) *ipc.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), pyWait)
	defer cancel()
	d, err := c.Get(ctx, queue)
	if err != nil {
		t.Fatalf("Get(%q): %v", queue, err)
	}
	return d
}

func ack(t *testing.T, c *ipc.Client, ds ...*ipc.Delivery) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), pyWait)
	defer cancel()
	if err := c.Ack(ctx, ds...); err != nil {
		t.Fatalf("Ack: %v", err)
	}
}

func stats(t *testing.T, b *ipc.Broker, queue string) ipc.QueueStats {
	t.Helper()
	for _, s := range b.Stats() {
		if s.Name == queue {
			return s
		}
	}
	t.Fatalf("no stats for queue %q", queue)
	return ipc.QueueStats{}
}

// The encoder against PROTOCOL.md's worked example, and the client against a
// scripted peer: python3 -m unittest, no broker needed.
func TestPythonUnit(t *testing.T) {
	py := python3(t)
	ctx, cancel := context.WithTimeout(context.Background(), pyWait)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, "-m", "unittest", "-v", "test_gotyledon_queue")
	cmd.Dir = "python"
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("python3 -m unittest: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}

// (a) A Python producer puts N numbered items; a Go consumer gets exactly
// those, in order. The queue is small, so the producer also waits for room.
func TestPythonProducerGoConsumer(t *testing.T) {
	python3(t)
	const n = 1000
	for _, mode := range []struct {
		name string
		args []string
	}{
		{"put", nil},
		{"put_batch", []string{"--batch", "100"}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			b, sock := pyBroker(t, ipc.QueueConfig{Name: "jobs", Capacity: 64})
			c := dial(t, sock)
			p := startPython(t, sock, "producer.py", append([]string{"jobs", fmt.Sprint(n)}, mode.args...)...)
			p.expectLine(t, "ready")
			for i := 0; i < n; i++ {
				d := getOne(t, c, "jobs")
				if want := fmt.Sprintf("item-%06d", i); string(d.Body) != want || d.Deliveries != 1 || d.Queue != "jobs" {
					t.Fatalf("item %d: got %q (deliveries %d, queue %q), want %q (1, jobs)", i, d.Body, d.Deliveries, d.Queue, want)
				}
				ack(t, c, d)
			}
			if rest := p.wait(t); len(rest) != 1 || rest[0] != fmt.Sprintf("done %d", n) {
				t.Fatalf("producer printed %q, want [done %d]", rest, n)
			}
			if s := stats(t, b, "jobs"); s.Depth != 0 || s.InFlight != 0 || s.Put != n || s.Acked != n {
				t.Fatalf("stats after the run: %+v", s)
			}
		})
	}
}

// (b) A Go producer puts N items; a Python consumer gets and acks them all
// and prints them.
func TestPythonConsumerGoProducer(t *testing.T) {
	python3(t)
	const n = 1000
	for _, mode := range []struct {
		name string
		args []string
	}{
		{"get", nil},
		{"get_batch", []string{"--batch", "64"}},
		{"get_auto_ack", []string{"--auto-ack"}},
		{"consume", []string{"--prefetch", "16"}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			b, sock := pyBroker(t, ipc.QueueConfig{Name: "jobs"})
			c := dial(t, sock)
			items := make([][]byte, n)
			for i := range items {
				items[i] = []byte(fmt.Sprintf("item-%06d", i))
			}
			ctx, cancel := context.WithTimeout(context.Background(), pyWait)
			defer cancel()
			if got, err := c.PutBatch(ctx, "jobs", items); err != nil || got != n {
				t.Fatalf("PutBatch: %d, %v", got, err)
			}
			p := startPython(t, sock, "consumer.py", append([]string{"jobs", fmt.Sprint(n)}, mode.args...)...)
			p.expectLine(t, "ready")
			lines := p.wait(t)
			if len(lines) != n+1 || lines[n] != fmt.Sprintf("done %d", n) {
				t.Fatalf("consumer printed %d lines (last %q), want %d items then done", len(lines), lines[len(lines)-1], n)
			}
			for i, l := range lines[:n] {
				if l != string(items[i]) {
					t.Fatalf("line %d: %q, want %q", i, l, items[i])
				}
			}
			if s := stats(t, b, "jobs"); s.Depth != 0 || s.InFlight != 0 || s.Delivered != n {
				t.Fatalf("stats after the run: %+v", s)
			}
		})
	}
}

// (c) Errors and redelivery as the Python client sees them: Timeout,
// QueueFull, nack → deliveries 2, NoSuchQueue, TooLarge (client side and
// broker side), Closed.
func TestPythonErrors(t *testing.T) {
	python3(t)
	_, sock := pyBroker(t,
		ipc.QueueConfig{Name: "empty"},
		ipc.QueueConfig{Name: "small", Capacity: 2},
		ipc.QueueConfig{Name: "redo"},
	)
	p := startPython(t, sock, "checks.py")
	for _, check := range []string{"get-timeout", "try-put-full", "nack-redelivers", "batch-and-auto-ack",
		"no-such-queue", "too-large-client", "too-large-broker", "connection-usable", "closed"} {
		p.expectLine(t, "ok "+check)
	}
	p.expectLine(t, "done")
	p.wait(t)
}

// (c) A Python consumer killed (SIGKILL) while it holds an unacked item: the
// broker requeues it and a Go consumer gets it with Deliveries 2.
func TestPythonKilledConsumerRedelivers(t *testing.T) {
	python3(t)
	b, sock := pyBroker(t, ipc.QueueConfig{Name: "work"})
	c := dial(t, sock)
	ctx, cancel := context.WithTimeout(context.Background(), pyWait)
	defer cancel()
	if err := c.Put(ctx, "work", []byte("precious")); err != nil {
		t.Fatalf("Put: %v", err)
	}
	p := startPython(t, sock, "consumer.py", "work", "1", "--hold")
	p.expectLine(t, "ready")
	p.expectLine(t, "holding 1 precious")
	if s := stats(t, b, "work"); s.InFlight != 1 || s.Depth != 0 {
		t.Fatalf("stats while held: %+v", s)
	}
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatalf("kill: %v", err)
	}
	d := getOne(t, c, "work")
	if string(d.Body) != "precious" || d.Deliveries != 2 {
		t.Fatalf("after the kill: got %q with Deliveries %d, want \"precious\" with 2", d.Body, d.Deliveries)
	}
	ack(t, c, d)
	if s := stats(t, b, "work"); s.InFlight != 0 || s.Depth != 0 || s.Redelivered != 1 || s.Acked != 1 {
		t.Fatalf("stats after the ack: %+v", s)
	}
}

// A prefetching Python consumer killed (SIGKILL) while it holds its whole
// prefetch: every item is requeued, and a Go consumer gets each once more.
func TestPythonKilledPrefetchingConsumerRedelivers(t *testing.T) {
	python3(t)
	const n = 8
	b, sock := pyBroker(t, ipc.QueueConfig{Name: "work"})
	c := dial(t, sock)
	ctx, cancel := context.WithTimeout(context.Background(), pyWait)
	defer cancel()
	for i := range n {
		if err := c.Put(ctx, "work", []byte(fmt.Sprintf("precious-%d", i))); err != nil {
			t.Fatalf("Put: %v", err)
		}
	}
	p := startPython(t, sock, "consumer.py", "work", fmt.Sprint(n), "--hold", "--prefetch", fmt.Sprint(n))
	p.expectLine(t, "ready")
	for i := range n {
		p.expectLine(t, fmt.Sprintf("holding 1 precious-%d", i))
	}
	if s := stats(t, b, "work"); s.InFlight != n || s.Depth != 0 {
		t.Fatalf("stats while held: %+v", s)
	}
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatalf("kill: %v", err)
	}
	for i := range n {
		d := getOne(t, c, "work")
		if string(d.Body) != fmt.Sprintf("precious-%d", i) || d.Deliveries != 2 {
			t.Fatalf("after the kill: got %q with Deliveries %d, want precious-%d with 2", d.Body, d.Deliveries, i)
		}
		ack(t, c, d)
	}
	if s := stats(t, b, "work"); s.InFlight != 0 || s.Depth != 0 || s.Redelivered != n || s.Acked != n {
		t.Fatalf("stats after the acks: %+v", s)
	}
}

// A hook for BENCH.md's comparison with Manager().Queue(), not a test: with GOTYLEDON_PY_BENCH set
// (to extra arguments, or "1"), runs python/gotyledon_bench.py against an
// in-process broker and logs its output. Run it without -race:
//
//	GOTYLEDON_PY_BENCH=1 go test -run PythonBench -v ./ipc/
func TestPythonBench(t *testing.T) {
	arg := os.Getenv("GOTYLEDON_PY_BENCH")
	if arg == "" {
		t.Skip("set GOTYLEDON_PY_BENCH=1 (or to arguments of gotyledon_bench.py) to run the Python client benchmark")
	}
	py := python3(t)
	_, sock := pyBroker(t, ipc.QueueConfig{Name: "bench"})
	args := []string{filepath.Join("python", "gotyledon_bench.py"), "--socket", sock, "--queue", "bench"}
	if arg != "1" {
		args = append(args, strings.Fields(arg)...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, py, args...).CombinedOutput()
	t.Logf("%s", out)
	if err != nil {
		t.Fatalf("gotyledon_bench.py: %v", err)
	}
}

// (e) Tasks across languages: a Python submitter's tasks answered by Go
// workers (with one failure), and a Go submitter's Map answered by Python
// workers, by GET and by CONSUME.
func TestPythonTasks(t *testing.T) {
	python3(t)
	const n = 200
	t.Run("python submits, go works", func(t *testing.T) {
		b, sock := pyBroker(t, ipc.QueueConfig{Name: "jobs", Capacity: 16})
		w := dial(t, sock)
		p := startPython(t, sock, "tasks.py", "submit", "jobs", fmt.Sprint(n))
		p.expectLine(t, "ready")
		ctx, cancel := context.WithTimeout(context.Background(), pyWait)
		defer cancel()
		cons, err := w.Consume(ctx, "jobs", 8)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			d, err := cons.Next(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !d.Request {
				t.Fatalf("task %d arrived as a plain item", i)
			}
			if string(d.Body) == "task-7" {
				err = d.Fail(ctx, errors.New("seven is out"))
			} else {
				err = d.Reply(ctx, bytes.ToUpper(d.Body))
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		lines := p.wait(t)
		if len(lines) != n+1 || lines[n] != fmt.Sprintf("done %d", n) {
			t.Fatalf("submitter printed %d lines, last %q", len(lines), lines[len(lines)-1])
		}
		for i, l := range lines[:n] {
			want := fmt.Sprintf("TASK-%d", i)
			if i == 7 {
				want = "failed 7 seven is out"
			}
			if l != want {
				t.Fatalf("line %d: %q, want %q", i, l, want)
			}
		}
		if s := stats(t, b, "jobs"); s.Depth != 0 || s.InFlight != 0 || s.Acked != n {
			t.Fatalf("stats after the run: %+v", s)
		}
	})
	for _, mode := range []struct {
		name string
		args []string
	}{{"get", nil}, {"consume", []string{"--prefetch", "8"}}} {
		t.Run("go maps, python works by "+mode.name, func(t *testing.T) {
			_, sock := pyBroker(t, ipc.QueueConfig{Name: "jobs", Capacity: 16})
			p := startPython(t, sock, "tasks.py", append([]string{"work", "jobs", fmt.Sprint(n)}, mode.args...)...)
			p.expectLine(t, "ready")
			inputs := make([][]byte, n)
			for i := range inputs {
				inputs[i] = []byte(fmt.Sprintf("task-%d", i))
			}
			inputs[3] = []byte("bad-3")
			ctx, cancel := context.WithTimeout(context.Background(), pyWait)
			defer cancel()
			results, err := dial(t, sock).Map(ctx, "jobs", inputs)
			var te *ipc.TaskError
			if !errors.As(err, &te) || te.Message != "cannot do bad-3" {
				t.Fatalf("Map: %v; want input 3's failure", err)
			}
			for i, r := range results {
				if i != 3 && string(r) != strings.ToUpper(string(inputs[i])) {
					t.Fatalf("result %d: %q", i, r)
				}
			}
			if rest := p.wait(t); len(rest) != 1 || rest[0] != fmt.Sprintf("done %d", n) {
				t.Fatalf("worker printed %q", rest)
			}
		})
	}
}

// A prefetching Python worker (a process group of its own) drained while
// it holds 3 items of its prefetch of 10: once it reads the end of its
// consume it gives the 7 others back, its next() raises Draining, its acks
// of the 3 go through, and the drain ends; a Go consumer gets the 7.
func TestPythonDrainedConsumer(t *testing.T) {
	python3(t)
	b, sock := pyBroker(t, ipc.QueueConfig{Name: "work"})
	c := dial(t, sock)
	ctx, cancel := context.WithTimeout(context.Background(), pyWait)
	defer cancel()
	for i := range 10 {
		if err := c.Put(ctx, "work", []byte(fmt.Sprint(i))); err != nil {
			t.Fatalf("Put: %v", err)
		}
	}
	var stdin io.WriteCloser
	p := startPythonWith(t, sock, func(cmd *exec.Cmd) {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		var err error
		if stdin, err = cmd.StdinPipe(); err != nil {
			t.Fatal(err)
		}
	}, "consumer.py", "work", "3", "--hold", "--drain", "--prefetch", "10")
	defer stdin.Close()
	p.expectLine(t, "ready")
	for i := range 3 {
		p.expectLine(t, fmt.Sprintf("holding 1 %d", i))
	}
	if s := stats(t, b, "work"); s.InFlight != 10 {
		t.Fatalf("stats while held: %+v", s)
	}
	drained := b.Drain(p.cmd.Process.Pid)
	select {
	case <-drained:
		t.Fatal("the drain ended while the worker holds 10 items")
	default:
	}
	fmt.Fprintln(stdin, "ack")
	p.expectLine(t, "draining")
	select {
	case <-drained:
	case <-time.After(pyWait):
		t.Fatalf("the drain did not end; stats %+v", stats(t, b, "work"))
	}
	for i := 3; i < 10; i++ {
		d := getOne(t, c, "work")
		if string(d.Body) != fmt.Sprint(i) || d.Deliveries != 2 {
			t.Fatalf("got %q (deliveries %d), want %d given back", d.Body, d.Deliveries, i)
		}
		ack(t, c, d)
	}
	if s := stats(t, b, "work"); s.Acked != 10 || s.InFlight != 0 || s.Depth != 0 {
		t.Fatalf("stats after: %+v", s)
	}
	if n := b.Acked(p.cmd.Process.Pid); n != 3 {
		t.Errorf("Acked(the Python worker) = %d, want 3", n)
	}
}
