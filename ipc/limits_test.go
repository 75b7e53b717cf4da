package ipc

// The broker's limits, held against real Unix sockets: stalled and
// trickling clients, a thousand connections at once, a producer far faster
// than its consumer, and a broker process that runs out of descriptors.
// Every wait has a deadline and is tied to an event (a reply, a log line, a
// closed connection); none is a bare sleep.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
)

// connCount is how many connections the broker serves now (accepted, and
// whose goroutines have not yet returned).
func connCount(b *Broker) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.conns)
}

// closedAt waits (up to testTimeout) until the broker closes rc's
// connection, and returns when it saw the end of the stream. Bytes the
// broker writes before closing (a FATAL) are skipped.
func closedAt(rc *rawConn) (time.Time, error) {
	var buf [256]byte
	rc.nc.SetReadDeadline(time.Now().Add(testTimeout))
	for {
		_, err := rc.nc.Read(buf[:])
		if err == nil {
			continue
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return time.Time{}, fmt.Errorf("still open after %v", testTimeout)
		}
		return time.Now(), nil // EOF or reset: the broker closed it
	}
}

// Many connections that stall at once, each in its own way, are each
// closed at the frame deadline (not before it, not long after it) while
// another client is served throughout, and none of them can keep a
// connection alive by trickling a frame byte by byte. TestFrameDeadline
// covers one connection of each kind and the lower bound; this adds the
// upper bound, a crowd, a frame that promises max_frame bytes, a frame
// started after a long idle time (the deadline counts from the frame's
// first byte), and the trickle.
func TestLimitStalledClientsClosedAtDeadline(t *testing.T) {
	const deadline = 300 * time.Millisecond
	const each = 40
	h := newBrokerHarness(t, BrokerOptions{FrameDeadline: deadline})
	ctx := ctxT(t)
	good := h.dial()

	type stalled struct {
		name string
		rc   *rawConn
		from time.Time // when the broker's clock can have started, at the earliest
	}
	var all []stalled
	add := func(name string, rc *rawConn, from time.Time) {
		all = append(all, stalled{name: name, rc: rc, from: from})
	}
	bigPut := func() []byte { // a PUT header promising max_frame bytes, then 5 of them
		b := []byte{0, 0, 0, 0, typePut, 0, 0, 0, 1}
		n := h.b.maxFrame
		b[0], b[1], b[2], b[3] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
		return b
	}()
	for i := range each {
		from := time.Now()
		add(fmt.Sprintf("silent %d", i), h.raw(false), from)
		rc := h.raw(false)
		from = time.Now()
		rc.write([]byte{0, 0, 0, 13, 1, 'G'}) // half a HELLO
		add(fmt.Sprintf("half HELLO %d", i), rc, from)
		rc = h.raw(true)
		from = time.Now()
		rc.write(unhex(t, "00000018 02 00000001 ffffffff 046a6f6273")) // 24 promised, 14 sent
		add(fmt.Sprintf("half PUT %d", i), rc, from)
		rc = h.raw(true)
		from = time.Now()
		rc.write(bigPut)
		add(fmt.Sprintf("max_frame PUT %d", i), rc, from)
	}
	// Idle for longer than the deadline (allowed: between frames), then
	// half a frame: its clock starts at that frame's first byte.
	late := h.raw(true)
	// Sends a frame one byte every deadline/5: every read gets a byte in
	// time, the frame never completes in time.
	trickle := h.raw(true)
	trickleSent := new(atomic.Int64)
	trickleFrom := make(chan time.Time, 1)
	trickleDone := make(chan struct{})
	go func() {
		defer close(trickleDone)
		frame := appendPut(nil, &putFrame{ID: 1, TimeoutMS: waitForever, Queue: "jobs", Items: [][]byte{[]byte("slowly")}})
		tick := time.NewTicker(deadline / 5)
		defer tick.Stop()
		for i, c := range frame {
			if i == 0 {
				trickleFrom <- time.Now()
			}
			if _, err := trickle.nc.Write([]byte{c}); err != nil {
				return // closed by the broker, as it must be
			}
			trickleSent.Add(1)
			<-tick.C // paces the trickle; nothing waits on it
		}
	}()

	// The good client works until every stalled connection is closed; each
	// of its requests must be answered promptly, however many stall.
	stop := make(chan struct{})
	type served struct {
		n       int
		slowest time.Duration
		err     error
	}
	goodDone := make(chan served, 1)
	go func() {
		var s served
		for {
			select {
			case <-stop:
				goodDone <- s
				return
			default:
			}
			t0 := time.Now()
			if err := good.Put(ctx, "jobs", []byte("x")); err != nil {
				s.err = err
				goodDone <- s
				return
			}
			if _, err := good.GetAutoAck(ctx, "jobs"); err != nil {
				s.err = err
				goodDone <- s
				return
			}
			s.slowest = max(s.slowest, time.Since(t0))
			s.n++
		}
	}()

	// The late connection starts its frame only once the good client has
	// been served for longer than the deadline: an idle connection is kept.
	other := h.dial()
	for idleStart := time.Now(); time.Since(idleStart) < 2*deadline; {
		if err := other.Put(ctx, "jobs", []byte("tick")); err != nil {
			t.Fatal(err)
		}
		if _, err := other.GetAutoAck(ctx, "jobs"); err != nil {
			t.Fatal(err)
		}
	}
	lateFrom := time.Now()
	late.write(unhex(t, "00000018 02 00000002")) // a PUT's header and type, then nothing
	add("late half PUT", late, lateFrom)

	type result struct {
		name     string
		from, at time.Time
		err      error
	}
	results := make(chan result, len(all)+1)
	for _, s := range all {
		go func() {
			at, err := closedAt(s.rc)
			results <- result{s.name, s.from, at, err}
		}()
	}
	go func() {
		at, err := closedAt(trickle)
		results <- result{"trickle", <-trickleFrom, at, err}
	}()
	var latest time.Duration
	for range len(all) + 1 {
		r := <-results
		if r.err != nil {
			t.Errorf("%s: %v", r.name, r.err)
			continue
		}
		after := r.at.Sub(r.from)
		latest = max(latest, after)
		if after < deadline-5*time.Millisecond {
			t.Errorf("%s: closed %v after its clock started, before the deadline %v", r.name, after, deadline)
		}
		// The upper bound is generous for -race on two loaded cores; a
		// connection that is not closed by its deadline stays open for
		// the whole testTimeout.
		if after > deadline+2*time.Second {
			t.Errorf("%s: closed %v after its clock started, long after the deadline %v", r.name, after, deadline)
		}
	}
	close(stop)
	s := <-goodDone
	if s.err != nil {
		t.Fatalf("the good client, while others stalled: %v", s.err)
	}
	<-trickleDone
	if n := trickleSent.Load(); n < 3 {
		t.Errorf("the trickling client sent only %d bytes before being closed; the test wants it closed while still sending", n)
	}
	if s.n < 10 || s.slowest > time.Second {
		t.Errorf("the good client was served %d times, slowest %v, while %d connections stalled", s.n, s.slowest, len(all)+1)
	}
	eventually(t, "only the two clients left", func() bool { return connCount(h.b) == 2 })
	if err := good.Put(ctx, "jobs", []byte("after")); err != nil {
		t.Fatal(err)
	}
	if n := h.logs.FilterMessageSnippet("within the frame deadline").Len(); n != len(all)+1 {
		t.Errorf("%d log lines for %d connections dropped at the deadline", n, len(all)+1)
	}
	t.Logf("%d stalled connections closed %v-%v after their clock started (deadline %v); good client served %d times meanwhile, slowest %v",
		len(all)+1, deadline, latest, deadline, s.n, s.slowest)
}

// needFiles makes sure this process may open n descriptors, raising the
// soft limit to the hard one if it must (Go already does that at start, so
// this only matters if something lowered it), or skips the test.
func needFiles(t *testing.T, n uint64) {
	t.Helper()
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	if rl.Cur >= n {
		return
	}
	if rl.Max < n {
		t.Skipf("needs %d descriptors; RLIMIT_NOFILE is %d (hard %d): raise it (ulimit -n %d) to run this test", n, rl.Cur, rl.Max, n)
	}
	rl.Cur = rl.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Skipf("needs %d descriptors; raising RLIMIT_NOFILE to %d: %v", n, rl.Max, err)
	}
}

// A thousand clients connect at once; each puts an item and gets and acks
// one; every request succeeds, the broker held all thousand connections at
// the same time, and once they close its connection goroutines are gone.
func TestLimitThousandConnections(t *testing.T) {
	const clients = 1000
	needFiles(t, 2*clients+200) // both ends of each connection are in this process
	// A HELLO may wait for the broker's reading well past the default
	// frame deadline, and the dials and the work each get a long deadline
	// of their own: on a loaded machine, with -race, a thousand dials
	// alone took over 20 s. Neither is what this test is about.
	h := newBrokerHarness(t, BrokerOptions{Queues: []QueueConfig{{Name: "jobs", Capacity: clients}}, FrameDeadline: crowdTimeout})
	dialCtx := ctxCrowd(t)
	var workCtx context.Context
	runtime.GC()
	baseline := runtime.NumGoroutine()

	var connected, worked sync.WaitGroup
	connected.Add(clients)
	worked.Add(clients)
	release := make(chan struct{}) // all connected: work
	closeAll := make(chan struct{})
	// Closed at the end however the test ends: a failed run must not leave
	// a thousand connections to the tests after it.
	endCrowd := sync.OnceFunc(func() { close(closeAll) })
	t.Cleanup(endCrowd)
	errs := make(chan error, clients)
	start := time.Now()
	for i := range clients {
		go func() {
			c, err := Dial(dialCtx, h.path)
			connected.Done()
			if err != nil {
				errs <- fmt.Errorf("client %d: dial: %w", i, err)
				worked.Done()
				return
			}
			defer c.Close()
			<-release
			ctx := workCtx
			err = func() error {
				if err := c.Put(ctx, "jobs", []byte(fmt.Sprint(i))); err != nil {
					return fmt.Errorf("put: %w", err)
				}
				d, err := c.Get(ctx, "jobs")
				if err != nil {
					return fmt.Errorf("get: %w", err)
				}
				return c.Ack(ctx, d)
			}()
			if err != nil {
				errs <- fmt.Errorf("client %d: %w", i, err)
			}
			worked.Done()
			<-closeAll
		}()
	}
	connected.Wait()
	dialled := time.Since(start)
	peak := connCount(h.b)
	workCtx = ctxCrowd(t)
	close(release)
	worked.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	if peak != clients {
		t.Errorf("the broker held %d connections at once, want %d", peak, clients)
	}
	if s := h.stats("jobs"); s.Put != clients || s.Acked != clients || s.Depth != 0 || s.InFlight != 0 {
		t.Errorf("stats after the crowd: %+v", s)
	}
	busy := runtime.NumGoroutine()
	endCrowd()
	// Tied to the closes: every connection's goroutines return, and the
	// process is back to its goroutines from before the crowd.
	eventually(t, "every connection gone from the broker", func() bool { return connCount(h.b) == 0 })
	eventually(t, "goroutines back to the baseline", func() bool { return runtime.NumGoroutine() <= baseline+5 })
	t.Logf("%d clients connected in %v; goroutines %d before, %d with the crowd, %d after",
		clients, dialled.Round(time.Millisecond), baseline, busy, runtime.NumGoroutine())
}

// crowdTimeout bounds each step of TestLimitThousandConnections.
const crowdTimeout = 90 * time.Second

func ctxCrowd(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), crowdTimeout)
	t.Cleanup(cancel)
	return ctx
}

// A producer far faster than its consumer is held back at the queue's
// capacity: its puts wait, the queue never holds more than its capacity,
// and the process's heap stays bounded however much the producer tries to
// send. Two producers push: a Client whose goroutines Put in a loop, and a
// raw connection that pipelines PUT frames without waiting for replies
// (the broker must stop reading it, leaving the rest in its socket).
func TestLimitFastProducerBoundedMemory(t *testing.T) {
	const (
		capacity = 1000
		itemSize = 1 << 10
		attempts = 100000 // puts the producers try, together
		consumed = 1500   // the consumer's share before the test stops them
		rawShare = attempts / 2
		putters  = 16
	)
	h := newBrokerHarness(t, BrokerOptions{Queues: []QueueConfig{{Name: "jobs", Capacity: capacity}}})
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	item := make([]byte, itemSize)
	q := h.b.queue("jobs")

	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	baseHeap := ms.HeapInuse
	// Over the baseline (about 7 MiB when this test runs alone): the bound
	// was 36 MiB of heap in all.
	const bound = capacity*itemSize*4 + 24<<20

	// Producer 1: a Client, many goroutines, each Put waits for room.
	producer := h.dial()
	var tried, accepted atomic.Int64
	var pwg sync.WaitGroup
	for range putters {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			for tried.Add(1) <= attempts-rawShare {
				if err := producer.Put(ctx, "jobs", item); err != nil {
					return // cancelled at the end
				}
				accepted.Add(1)
			}
		}()
	}
	// Producer 2: a raw connection writing PUT frames back to back, never
	// waiting; a reader counts the broker's answers.
	raw := h.raw(true)
	raw.nc.SetDeadline(time.Time{})
	var rawWritten, rawOK atomic.Int64
	rawDone := make(chan error, 1)
	go func() {
		var b []byte
		for i := range rawShare {
			b = appendPut(b[:0], &putFrame{ID: uint32(i + 1), TimeoutMS: waitForever, Queue: "jobs", Items: [][]byte{item}})
			if _, err := raw.nc.Write(b); err != nil {
				rawDone <- err
				return
			}
			rawWritten.Add(1)
		}
		rawDone <- nil
	}()
	go func() {
		fr := frameReader{r: bufio.NewReader(raw.nc)}
		for {
			p, err := fr.read(1<<21, nil)
			if err != nil {
				return
			}
			if f, err := decodeFrame(p); err == nil {
				if r, ok := f.(*resultFrame); ok && r.Status == statusOK {
					rawOK.Add(int64(r.N))
				}
			}
		}
	}()

	// The slow consumer: one item at a time, with a pause after each.
	consumer := h.dial()
	consumerDone := make(chan error, 1)
	go func() {
		for range consumed {
			d, err := consumer.Get(ctx, "jobs")
			if err != nil {
				consumerDone <- err
				return
			}
			if err := consumer.Ack(ctx, d); err != nil {
				consumerDone <- err
				return
			}
			time.Sleep(time.Millisecond) // what makes it slow; nothing waits on it
		}
		consumerDone <- nil
	}()

	// Watch while the consumer works: depth, waiting PUTs, heap.
	var maxDepth, maxWaitingPuts int
	var maxHeap uint64
	sawFull := false
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	samples := 0
	timeout := time.After(testTimeout)
watch:
	for {
		select {
		case err := <-consumerDone:
			if err != nil {
				t.Fatalf("consumer: %v", err)
			}
			break watch
		case <-timeout:
			t.Fatalf("the consumer did not take %d items in %v", consumed, testTimeout)
		case <-tick.C:
		}
		s := h.stats("jobs")
		maxDepth = max(maxDepth, s.Depth)
		if s.Depth == capacity {
			sawFull = true
		}
		q.mu.Lock()
		maxWaitingPuts = max(maxWaitingPuts, q.livePuts())
		q.mu.Unlock()
		if samples%10 == 0 {
			runtime.GC()
			runtime.ReadMemStats(&ms)
			maxHeap = max(maxHeap, ms.HeapInuse)
		}
		samples++
	}
	// The figures at the moment the consumer is done, before the
	// producers are stopped.
	s := h.stats("jobs")
	written := rawWritten.Load()
	cancel()
	raw.nc.Close()
	pwg.Wait()
	if err := <-rawDone; err == nil {
		t.Errorf("the raw producer wrote all %d PUT frames: nothing held it back", rawShare)
	}

	if maxDepth > capacity || s.Depth > capacity {
		t.Errorf("queue depth reached %d, capacity %d", max(maxDepth, s.Depth), capacity)
	}
	if !sawFull || maxWaitingPuts == 0 {
		t.Errorf("the producers never filled the queue and waited (full seen %v, most PUTs waiting %d): the test proves nothing", sawFull, maxWaitingPuts)
	}
	// What got in is what the consumer took plus what waits: the rest of
	// the attempts were held back, not buffered somewhere.
	if s.Put > uint64(consumed+capacity+1) {
		t.Errorf("%d items accepted with %d consumed and capacity %d", s.Put, consumed, capacity)
	}
	// Growth over the baseline: what an earlier test of this process
	// left in the heap is not this test's.
	if maxHeap > baseHeap+bound {
		t.Errorf("heap in use reached %d MiB (baseline %d MiB), bound %d MiB over the baseline", maxHeap>>20, baseHeap>>20, bound>>20)
	}
	t.Logf("%d puts tried, %d accepted (%d consumed); raw producer wrote %d of %d frames before it was held back; depth max %d, PUTs waiting max %d; heap in use max %.1f MiB (baseline %.1f, bound %d over it)",
		min(tried.Load(), attempts-rawShare)+written, s.Put, consumed, written, rawShare, maxDepth, maxWaitingPuts,
		float64(maxHeap)/(1<<20), float64(baseHeap)/(1<<20), bound>>20)
}

// limitsHelperEnv makes the test binary, re-executed, a broker process with
// a low RLIMIT_NOFILE (see TestLimitBrokerHelper).
const limitsHelperEnv = "GOTYLEDON_IPC_LIMITS_HELPER"

// TestLimitBrokerHelper is not a test: it is the body of the broker process
// of TestLimitBrokerOutOfDescriptors. It lowers its own RLIMIT_NOFILE (soft
// and hard, so nothing raises it back) to $GOTYLEDON_IPC_LIMITS_HELPER,
// listens on $GOTYLEDON_QUEUE_SOCKET, logs JSON to stderr, says "listening"
// on stdout and serves until killed.
func TestLimitBrokerHelper(t *testing.T) {
	n := os.Getenv(limitsHelperEnv)
	if n == "" {
		t.Skip("helper process for TestLimitBrokerOutOfDescriptors")
	}
	var limit uint64
	fmt.Sscan(n, &limit)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: limit, Max: limit}); err != nil {
		fmt.Println("setrlimit:", err)
		os.Exit(1)
	}
	cfg := zap.NewProductionConfig()
	cfg.Level = zap.NewAtomicLevelAt(zap.DebugLevel)
	cfg.Sampling = nil // every line, to count them
	cfg.OutputPaths = []string{"stderr"}
	log, err := cfg.Build()
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	b, err := NewBroker(BrokerOptions{Queues: []QueueConfig{{Name: "jobs"}}, Logger: log})
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	l, err := Listen(os.Getenv(EnvSocket), -1)
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	fmt.Println("listening")
	err = b.Serve(l)
	fmt.Println("serve returned:", err)
	os.Exit(3)
}

// A broker with RLIMIT_NOFILE 64 gets 100 connections: the accepts it has
// no descriptor for fail with EMFILE, which it logs clearly and at a bounded
// rate, backing off; it does not exit; once the connections close it serves
// a new client.
func TestLimitBrokerOutOfDescriptors(t *testing.T) {
	const limit, conns = 64, 100
	dir, err := os.MkdirTemp("", "gtq")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "queue.sock")
	cmd := exec.Command(os.Args[0], "-test.run=^TestLimitBrokerHelper$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d", limitsHelperEnv, limit), EnvSocket+"="+path)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	var logMu sync.Mutex
	var logLines []map[string]any
	logChanged := make(chan struct{}, 1)
	logEOF := make(chan struct{})
	go func() {
		defer close(logEOF)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var e map[string]any
			if json.Unmarshal(sc.Bytes(), &e) != nil {
				e = map[string]any{"msg": sc.Text(), "raw": true}
			}
			logMu.Lock()
			logLines = append(logLines, e)
			logMu.Unlock()
			select {
			case logChanged <- struct{}{}:
			default:
			}
		}
	}()
	outLines := make(chan string, 10)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			outLines <- sc.Text()
		}
		<-logEOF // Wait after both pipes are read
		exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		select {
		case <-exited:
		case <-time.After(testTimeout):
		}
		if t.Failed() {
			logMu.Lock()
			for i, e := range logLines {
				if i < 20 || i >= len(logLines)-20 {
					t.Logf("broker log: %v", e)
				}
			}
			logMu.Unlock()
		}
	})
	count := func(snippet string) int {
		logMu.Lock()
		defer logMu.Unlock()
		n := 0
		for _, e := range logLines {
			if m, _ := e["msg"].(string); strings.Contains(m, snippet) {
				n++
			}
		}
		return n
	}
	// waitLog waits for n lines containing snippet, failing if the broker
	// exits first.
	waitLog := func(what, snippet string, n int) {
		t.Helper()
		deadline := time.After(testTimeout)
		for count(snippet) < n {
			select {
			case <-logChanged:
			case err := <-exited:
				t.Fatalf("the broker exited (%v) while the test waited for %s", err, what)
			case <-deadline:
				t.Fatalf("timed out waiting for %s (%d of %d)", what, count(snippet), n)
			}
		}
	}
	select {
	case l := <-outLines:
		if l != "listening" {
			t.Fatalf("helper: %s", l)
		}
	case err := <-exited:
		t.Fatalf("helper exited: %v", err)
	case <-time.After(testTimeout):
		t.Fatal("helper did not listen")
	}

	// 100 connections, each saying HELLO: the kernel queues them all (the
	// backlog is SOMAXCONN); the broker accepts as many as it has
	// descriptors for.
	var ncs []net.Conn
	hello := appendHello(nil, &helloFrame{Magic: [4]byte{'G', 'T', 'Y', 'Q'}, Version: 1, Client: "crowd"})
	for i := range conns {
		nc, err := net.Dial("unix", path)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		ncs = append(ncs, nc)
		if _, err := nc.Write(hello); err != nil {
			t.Fatalf("connection %d: HELLO: %v", i, err)
		}
	}
	t0 := time.Now()
	const failed = "accept failed"
	waitLog("an accept to fail", failed, 1)
	// Three retries that failed too: the broker is out of descriptors and
	// stays so while the connections are open.
	waitLog("the accept retried", failed, 4)
	logMu.Lock()
	var first map[string]any
	for _, e := range logLines {
		if m, _ := e["msg"].(string); strings.Contains(m, failed) {
			first = e
			break
		}
	}
	logMu.Unlock()
	if errText, _ := first["error"].(string); !strings.Contains(errText, "too many open files") || first["level"] != "warn" {
		t.Errorf("the accept failure is logged as %v; want a warning that says too many open files", first)
	}

	// Watch the broker out of descriptors for a while, measured by its
	// own retries: the log must not flood (net/http's backoff: 5ms
	// doubling to 1s, one line per retry).
	waitLog("more retries", failed, 9)
	stuck := time.Since(t0)
	nFailed := count(failed)
	// Over a second out of descriptors: the connections accepted before
	// have long been welcomed.
	nAccepted := count("queue client connected")
	if nAccepted == 0 || nAccepted >= conns {
		t.Errorf("%d of %d connections accepted under a limit of %d descriptors", nAccepted, conns, limit)
	}
	// 5, 10, ... 640ms is 8 retries in 1.3s, then one a second.
	if allowed := 9 + int(stuck/time.Second) + 1; nFailed > allowed {
		t.Errorf("%d accept-failure lines in %v, more than the backoff allows (%d)", nFailed, stuck, allowed)
	}
	// And the delays grow: by the broker's own timestamps, the 9th failure
	// comes at least the first 8 delays (1.275 s) after the 1st, where a
	// fixed short retry would take milliseconds.
	var stamps []float64
	logMu.Lock()
	for _, e := range logLines {
		if m, _ := e["msg"].(string); strings.Contains(m, failed) {
			if ts, ok := e["ts"].(float64); ok {
				stamps = append(stamps, ts)
			}
		}
	}
	logMu.Unlock()
	if len(stamps) < 9 {
		t.Fatalf("%d timestamped accept failures, want 9", len(stamps))
	}
	if gap := time.Duration((stamps[8] - stamps[0]) * float64(time.Second)); gap < 1200*time.Millisecond {
		t.Errorf("9 accept failures within %v: the retry delay does not grow (want at least 1.275 s)", gap)
	}
	select {
	case err := <-exited:
		t.Fatalf("the broker exited while out of descriptors: %v", err)
	default:
	}

	// Every connection closes; the broker serves a new client, whose
	// request proves the accept loop came back.
	for _, nc := range ncs {
		nc.Close()
	}
	ctx := ctxT(t)
	recovered := time.Now()
	c, err := Dial(ctx, path)
	if err != nil {
		t.Fatalf("a new client after the crowd left: %v", err)
	}
	defer c.Close()
	if err := c.Put(ctx, "jobs", []byte("after")); err != nil {
		t.Fatal(err)
	}
	if d, err := c.Get(ctx, "jobs"); err != nil || string(d.Body) != "after" {
		t.Fatalf("get after the crowd: %v", err)
	} else if err := c.Ack(ctx, d); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		t.Fatalf("the broker exited: %v", err)
	default:
	}
	t.Logf("limit %d: %d of %d connections accepted; %d accept-failure lines in %v out of descriptors; a new client served %v after the crowd closed",
		limit, nAccepted, conns, nFailed, stuck.Round(time.Millisecond), time.Since(recovered).Round(time.Millisecond))
}
