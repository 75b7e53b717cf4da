package ipc_test

// The queue's benchmarks as it is deployed: a real manager (gotyledon run,
// one queue, no workers) serves the broker in a process of its own, and the
// producer and each consumer are processes of their own, using ipc.Dial and
// the Go client (or the Python client, gotyledon_queue.py). The baselines
// run in the same go test run and the same process layout: a raw Unix
// socket between two processes (round trip and stream) and Python's
// multiprocessing.Manager().Queue(). The figures of ipc/BENCH.md come from
// here; bench_test.go's in-process benchmarks are micro-benchmarks.
//
//	go test -run '^$' -bench QueueProcesses -count 5 ./ipc/
//
// b.N counts items (round trips for raw/roundtrip, frames for raw/stream),
// so -benchtime 1x moves one item through every process (what .ci/run
// does) and the default -benchtime 1s sizes each run to about a second.
// Each run starts its processes afresh and times only the transfer: from
// the moment the processes, all connected and waiting, are told to go, to
// the last one's report. Processes are synchronised by lines on their
// stdin and stdout, never by sleeps.
//
// Every process is this test binary, re-executed: TestMain sees
// GOTYLEDON_XBENCH_ROLE and runs the role instead of the tests. The manager
// is program.New().Main([gotyledon run --config FILE]), the code of
// cmd/gotyledon, with its sockets in a temporary RUNTIME_DIRECTORY;
// -xbench.manager PATH runs a gotyledon binary instead. Flags after -args:
//
//	-xbench.profile DIR  every Go process writes a CPU profile of its
//	                     measured part (the manager: of its whole life) to DIR
//	-xbench.wrap 'CMD'   every Go process runs under CMD (strace -f -c -o
//	                     DIR/{role}.txt, perf stat ...); {bench} and {role} in
//	                     CMD are replaced by the benchmark's and process's names
//	-xbench.trace DIR    the same with an execution trace (runtime/trace:
//	                     go tool trace -d=parsed counts goroutine wake-ups)
//	-xbench.manager PATH the manager is this gotyledon binary
//
// Ratios (ratio-vs-manager-queue, rtt-vs-raw, vs-raw-stream) compare with
// the median of the baseline's runs earlier in the same go test process
// (the baselines run first); a row run without its baseline measures it
// once, untimed, before its own runs.

import (
	"bufio"
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gotyledon/gotyledon/ipc"
	"github.com/gotyledon/gotyledon/supervisor/program"
)

var (
	xbProfile = flag.String("xbench.profile", "", "BenchmarkQueueProcesses: write a CPU profile of each Go helper process to this directory")
	xbWrap    = flag.String("xbench.wrap", "", "BenchmarkQueueProcesses: run each Go helper process under this command ({bench}, {role} are replaced)")
	xbManager = flag.String("xbench.manager", "", "BenchmarkQueueProcesses: run this gotyledon binary as the manager")
	xbTrace   = flag.String("xbench.trace", "", "BenchmarkQueueProcesses: write an execution trace (runtime/trace) of each Go helper process to this directory")
)

const (
	xbItemSize  = 100
	xbQueue     = "bench"
	xbBatch     = 256
	xbWindow    = 4     // prefetch, pipelined: PutBatch calls the producer keeps in flight
	xbCapacity  = 10000 // ipc.DefaultCapacity, as Manager().Queue(10000)
	xbWait      = 60 * time.Second
	xbTransfer  = 10 * time.Minute // bound of a whole measured transfer
	xbStopBody  = "STOP"           // the producer's end-of-stream item, one per consumer
	xbRoleEnv   = "GOTYLEDON_XBENCH_ROLE"
	xbModeEnv   = "GOTYLEDON_XBENCH_MODE"
	xbNEnv      = "GOTYLEDON_XBENCH_N"
	xbConsEnv   = "GOTYLEDON_XBENCH_CONSUMERS"
	xbConfEnv   = "GOTYLEDON_XBENCH_CONFIG"
	xbProfEnv   = "GOTYLEDON_XBENCH_CPUPROFILE"
	xbTraceEnv  = "GOTYLEDON_XBENCH_TRACE"
	xbLockstepR = 3 // fds of the sync mode's lockstep pipes (ExtraFiles)
	xbLockstepW = 4
)

// TestMain runs a helper process's role when GOTYLEDON_XBENCH_ROLE says
// so, and the tests otherwise.
func TestMain(m *testing.M) {
	if role := os.Getenv(xbRoleEnv); role != "" {
		os.Exit(xbHelperMain(role))
	}
	os.Exit(m.Run())
}

// BenchmarkQueueProcesses: see the top of this file. Sub-benchmarks, in
// the order they run (baselines first):
//
//	raw/roundtrip        ping-pong of a 100-byte frame (4-byte length +
//	                     100 bytes) between two processes: µs/roundtrip
//	                     (mean), p50 and p99
//	raw/stream           100-byte frames one way, buffered: frames/s
//	managerqueue/sync    Manager().Queue(10000), 1 producer and 1 consumer in
//	                     lockstep: put, then get (each awaited; the two tell
//	                     each other over pipes): items/s, µs/roundtrip (the
//	                     calls' mean)
//	managerqueue/single  Manager().Queue(10000), 1 producer, 2 consumers: items/s
//	go/sync              Go client, the same lockstep: Put; Get; Ack, three
//	                     awaited round trips per item
//	go/single            Go client, 1 producer Put one at a time, 2 consumers
//	                     Get then Ack one at a time
//	go/batched256        Go client, PutBatch of 256; 2 consumers GetBatch 256
//	                     then Ack of the batch
//	go/prefetch          Go client, the producer keeps 4 PutBatch of 256 in
//	                     flight; 1 consumer: Consume with a prefetch of
//	                     1024, Next and Ack item by item
//	go/pipelined         the same producer; 2 consumers, each a Consume with
//	                     a prefetch of 4096, Next and Ack item by item
//	python/sync, python/single, python/batched256
//	                     the same with the Python client (gotyledon_bench.py)
//
// All with 100-byte items, a queue of capacity 10000.
func BenchmarkQueueProcesses(b *testing.B) {
	b.Run("raw/roundtrip", func(b *testing.B) { xbRawRoundTrip(b, b.N, xbTimed(b)) })
	b.Run("raw/stream", func(b *testing.B) { xbRawStream(b, b.N, xbTimed(b)) })
	b.Run("managerqueue/sync", func(b *testing.B) { xbManagerQueue(b, b.N, true, xbTimed(b)) })
	b.Run("managerqueue/single", func(b *testing.B) { xbManagerQueue(b, b.N, false, xbTimed(b)) })
	for _, mode := range []string{"sync", "single", "batched256", "prefetch", "pipelined"} {
		b.Run("go/"+mode, func(b *testing.B) { xbGoQueue(b, mode) })
	}
	for _, mode := range []string{"sync", "single", "batched256"} {
		b.Run("python/"+mode, func(b *testing.B) { xbPythonQueue(b, mode) })
	}
}

// --- timing and baselines ---

// xbTiming marks the measured part of a run: the sub-benchmark's timer, or
// nothing when a baseline is measured on a row's behalf.
type xbTiming struct {
	start, stop func()
	report      func(value float64, unit string)
	name        string
}

func xbTimed(b *testing.B) xbTiming {
	return xbTiming{
		start:  func() { b.ResetTimer(); b.StartTimer() },
		stop:   b.StopTimer,
		report: b.ReportMetric,
		name:   b.Name(),
	}
}

func xbUntimed(b *testing.B, name string) xbTiming {
	return xbTiming{start: func() {}, stop: func() {}, report: func(float64, string) {}, name: b.Name() + "-" + name}
}

type xbSample struct {
	value   float64
	elapsed time.Duration
}

var (
	xbBaselineMu sync.Mutex
	xbBaselines  = map[string][]xbSample{}
)

// Baseline keys.
const (
	xbRawRTT       = "raw roundtrip µs"
	xbRawStreamKey = "raw stream frames/s"
	xbMQSync       = "managerqueue sync items/s"
	xbMQSingle     = "managerqueue single items/s"
	xbBaselineOK   = 100 * time.Millisecond // runs shorter than this (the N=1 and N=100 probes) do not count
)

func xbRecord(key string, value float64, elapsed time.Duration) {
	xbBaselineMu.Lock()
	defer xbBaselineMu.Unlock()
	xbBaselines[key] = append(xbBaselines[key], xbSample{value, elapsed})
}

// xbBaseline is the median of the baseline's runs so far (of those that
// lasted xbBaselineOK, if any did), measuring it once if there are none.
// ok is false if it cannot be measured (no python3).
func xbBaseline(b *testing.B, key string) (float64, bool) {
	xbBaselineMu.Lock()
	have := len(xbBaselines[key]) > 0
	xbBaselineMu.Unlock()
	if !have {
		t := xbUntimed(b, "baseline")
		switch key {
		case xbRawRTT:
			xbRawRoundTrip(b, 20000, t)
		case xbRawStreamKey:
			xbRawStream(b, 2000000, t)
		case xbMQSync, xbMQSingle:
			if _, err := exec.LookPath("python3"); err != nil {
				return 0, false
			}
			if key == xbMQSync {
				xbManagerQueue(b, 5000, true, t)
			} else {
				xbManagerQueue(b, 20000, false, t)
			}
		}
	}
	xbBaselineMu.Lock()
	defer xbBaselineMu.Unlock()
	var long, all []float64
	for _, s := range xbBaselines[key] {
		all = append(all, s.value)
		if s.elapsed >= xbBaselineOK {
			long = append(long, s.value)
		}
	}
	if len(long) > 0 {
		all = long
	}
	if len(all) == 0 {
		return 0, false
	}
	slices.Sort(all)
	return all[len(all)/2], true
}

// --- the rows ---

func xbRawRoundTrip(b *testing.B, n int, t xbTiming) {
	sock := filepath.Join(xbTempDir(b), "raw.sock")
	srv := xbStart(b, t.name, "raw-server", xbGoArgv(t.name, "raw-server"), []string{xbModeEnv + "=echo", ipc.EnvSocket + "=" + sock}, nil)
	srv.expect(b, "ready", xbWait)
	xbRawRoundTrips(b, n, t, sock, xbRawRTT)
}

// xbRawRoundTrips times n round trips of a raw client to the socket at
// sock, which answers each frame, reports them, and records their mean
// as baseline key.
func xbRawRoundTrips(b *testing.B, n int, t xbTiming, sock, key string) {
	cl := xbStart(b, t.name, "raw-client", xbGoArgv(t.name, "raw-client"), []string{xbModeEnv + "=roundtrip", xbNEnv + "=" + strconv.Itoa(n), ipc.EnvSocket + "=" + sock}, nil)
	cl.expect(b, "ready", xbWait)
	t.start()
	cl.send(b, "go")
	r := cl.done(b)
	t.stop()
	rt := r.Calls["roundtrip"]
	t.report(rt.MeanUS, "µs/roundtrip")
	t.report(rt.P50US, "p50-µs")
	t.report(rt.P99US, "p99-µs")
	xbRecord(key, rt.MeanUS, time.Duration(r.ElapsedNS))
}

func xbRawStream(b *testing.B, n int, t xbTiming) {
	sock := filepath.Join(xbTempDir(b), "raw.sock")
	srv := xbStart(b, t.name, "raw-server", xbGoArgv(t.name, "raw-server"), []string{xbModeEnv + "=sink", ipc.EnvSocket + "=" + sock}, nil)
	srv.expect(b, "ready", xbWait)
	cl := xbStart(b, t.name, "raw-client", xbGoArgv(t.name, "raw-client"), []string{xbModeEnv + "=stream", xbNEnv + "=" + strconv.Itoa(n), ipc.EnvSocket + "=" + sock}, nil)
	cl.expect(b, "ready", xbWait)
	t.start()
	cl.send(b, "go")
	r := cl.done(b)
	t.stop()
	el := time.Duration(r.ElapsedNS)
	rate := float64(n) / el.Seconds()
	t.report(rate, "frames/s")
	xbRecord(xbRawStreamKey, rate, el)
}

var (
	xbManagerStartedRE = regexp.MustCompile(`manager started.*"pid": ([0-9]+)`)
	xbResultRE         = regexp.MustCompile(`= ([0-9,]+) items/s`)
	xbRTRE             = regexp.MustCompile(`round trip mean ([0-9.]+) us`)
	xbCallRE           = regexp.MustCompile(`\b(put|get|ack) ([0-9.]+) us`)
)

// xbManagerQueue runs python/manager_queue_bench.py, one run of n items.
func xbManagerQueue(b *testing.B, n int, sync bool, t xbTiming) {
	py := xbPython3(b)
	args := []string{filepath.Join("python", "manager_queue_bench.py"), "--n", strconv.Itoa(n), "--size", strconv.Itoa(xbItemSize), "--events"}
	if sync {
		args = append(args, "--sync")
	}
	rate, rt, el := xbPythonRun(b, t, "manager_queue_bench", append([]string{py}, args...), nil)
	t.report(rate, "items/s")
	if sync {
		t.report(rt, "µs/roundtrip")
		xbRecord(xbMQSync, rate, el)
	} else {
		xbRecord(xbMQSingle, rate, el)
	}
}

// xbPythonRun runs a Python benchmark script (with --events), times it from
// its "start" line to its result line, and returns the items/s and, for
// --sync, the calls' mean round trip it printed.
func xbPythonRun(b *testing.B, t xbTiming, role string, argv, env []string) (rate, rtUS float64, el time.Duration) {
	h := xbStart(b, t.name, role, argv, append(env, "PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1"), nil)
	h.expect(b, "start", xbWait)
	t0 := time.Now()
	t.start()
	line := h.expectRE(b, xbResultRE, xbTransfer)
	t.stop()
	el = time.Since(t0)
	m := xbResultRE.FindStringSubmatch(line)
	rate, _ = strconv.ParseFloat(strings.ReplaceAll(m[1], ",", ""), 64)
	if m := xbRTRE.FindStringSubmatch(line); m != nil {
		rtUS, _ = strconv.ParseFloat(m[1], 64)
	}
	for _, m := range xbCallRE.FindAllStringSubmatch(line, -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		t.report(v, m[1]+"-µs")
	}
	h.wait(b)
	return rate, rtUS, el
}

func xbPython3(b *testing.B) string {
	py, err := exec.LookPath("python3")
	if err != nil {
		b.Skip("python3 is not on PATH: the Python rows and the Manager().Queue() baseline are skipped")
	}
	return py
}

// xbGoQueue: a manager, and the Go client in a producer process and one
// (sync) or two consumer processes.
func xbGoQueue(b *testing.B, mode string) {
	t := xbTimed(b)
	sock := xbStartManager(b, t.name)
	n := b.N
	consumers := 2
	if mode == "prefetch" {
		consumers = 1
	}
	var pipes []*os.File // sync: the lockstep pipes, [p→c read, p→c write, c→p read, c→p write]
	if mode == "sync" {
		consumers = 1
		pr, pw, err := os.Pipe()
		if err != nil {
			b.Fatal(err)
		}
		cr, cw, err := os.Pipe()
		if err != nil {
			b.Fatal(err)
		}
		pipes = []*os.File{pr, pw, cr, cw}
	}
	env := []string{xbModeEnv + "=" + mode, xbNEnv + "=" + strconv.Itoa(n), xbConsEnv + "=" + strconv.Itoa(consumers), ipc.EnvSocket + "=" + sock}
	var cons []*xbProc
	for i := range consumers {
		role := fmt.Sprintf("consumer%d", i)
		var extra []*os.File
		if pipes != nil {
			extra = []*os.File{pipes[0], pipes[3]}
		}
		cons = append(cons, xbStart(b, t.name, role, xbGoArgv(t.name, role), append(env, xbRoleEnv+"=consumer"), extra))
	}
	var extra []*os.File
	if pipes != nil {
		extra = []*os.File{pipes[2], pipes[1]}
	}
	prod := xbStart(b, t.name, "producer", xbGoArgv(t.name, "producer"), append(env, xbRoleEnv+"=producer"), extra)
	for _, f := range pipes {
		f.Close() // the children have theirs
	}
	all := append(cons, prod)
	for _, h := range all {
		h.expect(b, "ready", xbWait)
	}
	t.start()
	t0 := time.Now()
	for _, h := range all {
		h.send(b, "go")
	}
	calls := map[string][]xbCalls{}
	got := 0
	for _, h := range all {
		r := h.done(b)
		got += r.Items
		for k, c := range r.Calls {
			calls[k] = append(calls[k], c)
		}
	}
	el := time.Since(t0)
	t.stop()
	if h := prod; got != n {
		b.Fatalf("the consumers got %d items, the producer put %d (%s)", got, n, h.name)
	}
	rate := float64(n) / el.Seconds()
	t.report(rate, "items/s")
	var sum float64
	var count int
	for _, k := range []string{"put", "get", "ack"} {
		cs := calls[k]
		if len(cs) == 0 {
			continue
		}
		var s float64
		var c int
		for _, x := range cs {
			s += x.MeanUS * float64(x.N)
			c += x.N
		}
		if c > 0 {
			t.report(s/float64(c), k+"-µs")
			sum, count = sum+s, count+c
		}
	}
	xbRatios(b, t, mode, rate, sum/float64(max(count, 1)))
}

// xbRatios reports a row's ratios to its baselines.
func xbRatios(b *testing.B, t xbTiming, mode string, rate, rtUS float64) {
	switch mode {
	case "sync":
		t.report(rtUS, "µs/roundtrip")
		if raw, ok := xbBaseline(b, xbRawRTT); ok {
			t.report(rtUS/raw, "rtt-vs-raw")
		}
		if mq, ok := xbBaseline(b, xbMQSync); ok {
			t.report(rate/mq, "ratio-vs-manager-queue")
		}
	case "single":
		if mq, ok := xbBaseline(b, xbMQSingle); ok {
			t.report(rate/mq, "ratio-vs-manager-queue")
		}
	case "batched256", "prefetch", "pipelined":
		if mq, ok := xbBaseline(b, xbMQSingle); ok {
			t.report(rate/mq, "ratio-vs-manager-queue")
		}
		if raw, ok := xbBaseline(b, xbRawStreamKey); ok {
			t.report(rate/raw, "vs-raw-stream")
		}
	}
}

// xbPythonQueue: a manager, and python/gotyledon_bench.py's producer and
// consumer processes (the Python client) against it.
func xbPythonQueue(b *testing.B, mode string) {
	t := xbTimed(b)
	py := xbPython3(b)
	sock := xbStartManager(b, t.name)
	args := []string{py, filepath.Join("python", "gotyledon_bench.py"), "--socket", sock, "--queue", xbQueue,
		"--n", strconv.Itoa(b.N), "--size", strconv.Itoa(xbItemSize), "--events"}
	switch mode {
	case "sync":
		args = append(args, "--sync")
	case "batched256":
		args = append(args, "--batch", strconv.Itoa(xbBatch))
	}
	rate, rt, _ := xbPythonRun(b, t, "gotyledon_bench", args, nil)
	t.report(rate, "items/s")
	xbRatios(b, t, mode, rate, rt)
}

// --- processes ---

// xbProc is a helper process: this test binary in a role, or a Python
// script. Its stdout lines (and, for the manager, its log lines) arrive on
// lines.
type xbProc struct {
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	mu     sync.Mutex
	tail   []string // the last lines of stdout and stderr, for failures
	exited chan struct{}
	err    error // Wait's, once exited is closed
	pid    int   // the process's own pid when it told it (under -xbench.wrap, not cmd's)
}

func xbTempDir(b *testing.B) string {
	// Short, for the 108 bytes of a socket's path.
	dir, err := os.MkdirTemp("", "gtxb")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// xbGoArgv is the command line of a Go helper: this test binary, under
// -xbench.wrap if given.
func xbGoArgv(bench, role string) []string {
	var argv []string
	if *xbWrap != "" {
		name := strings.NewReplacer("/", "-", " ", "_").Replace(bench)
		for _, w := range strings.Fields(*xbWrap) {
			argv = append(argv, strings.NewReplacer("{bench}", name, "{role}", role).Replace(w))
		}
	}
	return append(argv, os.Args[0], "-test.run=^$", "-test.bench=^$")
}

// xbEnv is this process's environment without what would make a helper
// anything but what it is told: a worker (GOTYLEDON_*), a systemd service,
// or a manager with another runtime directory.
func xbEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "GOTYLEDON_") || strings.HasPrefix(k, "LISTEN_") || strings.HasPrefix(k, "WATCHDOG_") ||
			k == "NOTIFY_SOCKET" || k == "RUNTIME_DIRECTORY" {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// xbStart starts a helper; it is stopped (and killed if it must be, with
// its process group) when the benchmark run ends, whatever happened.
func xbStart(b *testing.B, bench, name string, argv, env []string, extra []*os.File) *xbProc {
	p := &xbProc{name: name, lines: make(chan string, 256), exited: make(chan struct{})}
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Env = append(xbEnv(), env...)
	if !slices.ContainsFunc(env, func(kv string) bool { return strings.HasPrefix(kv, xbRoleEnv+"=") }) {
		p.cmd.Env = append(p.cmd.Env, xbRoleEnv+"="+name) // the role of a Go helper; harmless to others
	}
	file := strings.NewReplacer("/", "-", " ", "_").Replace(bench) + "-" + name
	if *xbProfile != "" {
		p.cmd.Env = append(p.cmd.Env, xbProfEnv+"="+filepath.Join(*xbProfile, file+".pprof"))
	}
	if *xbTrace != "" {
		p.cmd.Env = append(p.cmd.Env, xbTraceEnv+"="+filepath.Join(*xbTrace, file+".trace"))
	}
	p.cmd.ExtraFiles = extra
	// Its own process group, so that the cleanup can kill what it started
	// (Python's children, a wrapper's child); and killed with us, though
	// its stdin's EOF already ends every helper.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	var err error
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		b.Fatal(err)
	}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		b.Fatalf("starting %s: %v", name, err)
	}
	var readers sync.WaitGroup
	read := func(r io.Reader, toLines bool) {
		defer readers.Done()
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			l := sc.Text()
			p.mu.Lock()
			p.tail = append(p.tail, l)
			if len(p.tail) > 40 {
				p.tail = p.tail[len(p.tail)-40:]
			}
			p.mu.Unlock()
			if toLines {
				p.lines <- l
			}
		}
	}
	readers.Add(2)
	go read(stdout, true)
	go read(stderr, name == "manager")
	go func() {
		readers.Wait()
		p.err = p.cmd.Wait()
		close(p.lines)
		close(p.exited)
	}()
	b.Cleanup(func() { p.stop(b) })
	return p
}

// stop ends the helper: EOF on its stdin (every helper ends on it; the
// manager then stops as on SIGINT), SIGINT for a manager that is not this
// binary, SIGKILL to its process group if it is still there after a while.
func (p *xbProc) stop(b *testing.B) {
	p.stdin.Close()
	if p.name == "manager" && *xbManager != "" && p.pid > 0 {
		syscall.Kill(p.pid, syscall.SIGINT)
	}
	go func() { // nobody reads lines any more
		for range p.lines {
		}
	}()
	select {
	case <-p.exited:
		return
	case <-time.After(15 * time.Second):
	}
	b.Errorf("%s did not exit within 15 s of its stdin's end: killed; its last lines:\n%s", p.name, p.lastLines())
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	if p.pid > 0 {
		syscall.Kill(p.pid, syscall.SIGKILL)
	}
	<-p.exited
}

func (p *xbProc) lastLines() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.tail, "\n")
}

func (p *xbProc) send(b *testing.B, line string) {
	if _, err := io.WriteString(p.stdin, line+"\n"); err != nil {
		b.Fatalf("telling %s %q: %v; its last lines:\n%s", p.name, line, err, p.lastLines())
	}
}

// expect waits for a line that starts with prefix and returns it; other
// lines are skipped.
func (p *xbProc) expect(b *testing.B, prefix string, within time.Duration) string {
	return p.expectRE(b, regexp.MustCompile("^"+regexp.QuoteMeta(prefix)), within)
}

func (p *xbProc) expectRE(b *testing.B, re *regexp.Regexp, within time.Duration) string {
	timer := time.NewTimer(within)
	defer timer.Stop()
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				<-p.exited
				b.Fatalf("%s exited (%v) before printing a line matching %q; its last lines:\n%s", p.name, p.err, re, p.lastLines())
			}
			if re.MatchString(l) {
				if f := strings.Fields(l); len(f) == 2 && f[0] == "ready" {
					p.pid, _ = strconv.Atoi(f[1])
				}
				return l
			}
		case <-timer.C:
			b.Fatalf("%s printed no line matching %q within %v; its last lines:\n%s", p.name, re, within, p.lastLines())
		}
	}
}

// wait waits for the helper to exit by itself, and fails if it failed.
func (p *xbProc) wait(b *testing.B) {
	go func() {
		for range p.lines {
		}
	}()
	select {
	case <-p.exited:
	case <-time.After(xbWait):
		b.Fatalf("%s did not exit within %v; its last lines:\n%s", p.name, xbWait, p.lastLines())
	}
	if p.err != nil {
		b.Fatalf("%s: %v; its last lines:\n%s", p.name, p.err, p.lastLines())
	}
}

// done waits for the helper's "done JSON" line.
func (p *xbProc) done(b *testing.B) xbReport {
	l := p.expect(b, "done ", xbTransfer)
	var r xbReport
	if err := json.Unmarshal([]byte(strings.TrimPrefix(l, "done ")), &r); err != nil {
		b.Fatalf("%s: %q: %v", p.name, l, err)
	}
	return r
}

// xbStartManager starts a manager with one queue, "bench", and one service
// of no workers (a configuration needs one), its sockets in a temporary
// RUNTIME_DIRECTORY, and returns its queue socket once it has started.
func xbStartManager(b *testing.B, bench string) string {
	dir := xbTempDir(b)
	cfg := filepath.Join(dir, "bench.yaml")
	yaml := fmt.Sprintf("queues:\n  %s: {capacity: %d}\nservices:\n  idle:\n    command: [\"sleep\", \"infinity\"]\n    workers: 0\n", xbQueue, xbCapacity)
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		b.Fatal(err)
	}
	rt := filepath.Join(dir, "run")
	if err := os.Mkdir(rt, 0o700); err != nil {
		b.Fatal(err)
	}
	argv := xbGoArgv(bench, "manager")
	if *xbManager != "" {
		argv = []string{*xbManager, "run", "--config", cfg}
	}
	p := xbStart(b, bench, "manager", argv, []string{"RUNTIME_DIRECTORY=" + rt, xbConfEnv + "=" + cfg}, nil)
	// Logged once the broker listens and the control socket too.
	l := p.expectRE(b, xbManagerStartedRE, xbWait)
	p.pid, _ = strconv.Atoi(xbManagerStartedRE.FindStringSubmatch(l)[1])
	return filepath.Join(rt, "queue.sock")
}

// --- inside the helper processes ---

// xbReport is a client helper's "done" line.
type xbReport struct {
	Items     int                `json:"items"`
	ElapsedNS int64              `json:"elapsed_ns"`
	Calls     map[string]xbCalls `json:"calls"`
}

// xbCalls sums up one kind of awaited call.
type xbCalls struct {
	N      int     `json:"n"`
	MeanUS float64 `json:"mean_us"`
	P50US  float64 `json:"p50_us"`
	P99US  float64 `json:"p99_us"`
}

func xbSummarise(ds []time.Duration) xbCalls {
	if len(ds) == 0 {
		return xbCalls{}
	}
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	slices.Sort(ds)
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	return xbCalls{N: len(ds), MeanUS: us(sum) / float64(len(ds)), P50US: us(ds[len(ds)/2]), P99US: us(ds[len(ds)*99/100])}
}

func xbHelperMain(role string) int {
	if err := xbHelper(role); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", role, err)
		return 1
	}
	return 0
}

// xbProfiler starts the CPU profile GOTYLEDON_XBENCH_CPUPROFILE and the
// execution trace GOTYLEDON_XBENCH_TRACE ask for; the returned func stops
// them and writes them out.
func xbProfiler() (stop func() error, err error) {
	var stops []func() error
	stop = func() error {
		var err error
		for _, s := range stops {
			err = cmp.Or(err, s())
		}
		return err
	}
	if path := os.Getenv(xbProfEnv); path != "" {
		f, err := os.Create(path)
		if err != nil {
			return nil, err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return nil, err
		}
		stops = append(stops, func() error { pprof.StopCPUProfile(); return f.Close() })
	}
	if path := os.Getenv(xbTraceEnv); path != "" {
		f, err := os.Create(path)
		if err != nil {
			stop()
			return nil, err
		}
		if err := trace.Start(f); err != nil {
			f.Close()
			stop()
			return nil, err
		}
		stops = append(stops, func() error { trace.Stop(); return f.Close() })
	}
	return stop, nil
}

func xbHelper(role string) error {
	stdin := bufio.NewScanner(os.Stdin)
	mode := os.Getenv(xbModeEnv)
	n, _ := strconv.Atoi(os.Getenv(xbNEnv))
	sock := os.Getenv(ipc.EnvSocket)
	switch role {
	case "manager":
		return xbManagerMain(stdin)
	case "raw-server":
		return xbRawServer(mode, sock)
	case "raw-relay":
		return xbRawRelay(sock)
	case "raw-echo":
		return xbRawEcho(sock)
	case "task-worker":
		return xbTaskWorker(n)
	}
	// A client: connect, say ready, wait for go, work, say done.
	var c *ipc.Client
	var nc net.Conn
	var err error
	ctx, cancel := context.WithTimeout(context.Background(), xbWait)
	defer cancel()
	if role == "raw-client" {
		var d net.Dialer
		nc, err = d.DialContext(ctx, "unix", sock)
	} else {
		c, err = ipc.Dial(ctx, sock)
	}
	if err != nil {
		return err
	}
	fmt.Printf("ready %d\n", os.Getpid())
	if !stdin.Scan() || stdin.Text() != "go" {
		return errors.New("stdin ended before go")
	}
	stopProfile, err := xbProfiler()
	if err != nil {
		return err
	}
	var r xbReport
	t0 := time.Now()
	switch role {
	case "raw-client":
		r, err = xbRawClient(nc, mode, n)
		nc.Close()
	case "producer":
		r, err = xbProducer(c, mode, n)
	case "consumer":
		r, err = xbConsumer(c, mode)
	case "task-submitter":
		r, err = xbTaskSubmitter(c, mode, n)
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	r.ElapsedNS = time.Since(t0).Nanoseconds()
	if perr := stopProfile(); err == nil {
		err = perr
	}
	if c != nil {
		c.Close()
	}
	if err != nil {
		return err
	}
	js, _ := json.Marshal(r)
	fmt.Printf("done %s\n", js)
	return nil
}

// xbManagerMain is `gotyledon run --config FILE`, as cmd/gotyledon runs
// it. The end of stdin is its SIGINT.
func xbManagerMain(stdin *bufio.Scanner) error {
	stopProfile, err := xbProfiler()
	if err != nil {
		return err
	}
	go func() {
		for stdin.Scan() {
		}
		syscall.Kill(os.Getpid(), syscall.SIGINT)
	}()
	code := program.New().Main([]string{"gotyledon", "run", "--config", os.Getenv(xbConfEnv)})
	if err := stopProfile(); err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("gotyledon run exited %d", code)
	}
	return nil
}

// xbProducer puts n items, then one STOP item per consumer. In sync mode
// it waits, after each Put, until the consumer has got and acked the item
// (the lockstep pipes).
func xbProducer(c *ipc.Client, mode string, n int) (xbReport, error) {
	ctx := context.Background()
	consumers, _ := strconv.Atoi(os.Getenv(xbConsEnv))
	item := make([]byte, xbItemSize)
	var puts []time.Duration
	switch mode {
	case "sync":
		toC, fromC := os.NewFile(xbLockstepW, "to-consumer"), os.NewFile(xbLockstepR, "from-consumer")
		puts = make([]time.Duration, 0, n)
		var tok [1]byte
		for range n {
			t := time.Now()
			if err := c.Put(ctx, xbQueue, item); err != nil {
				return xbReport{}, err
			}
			puts = append(puts, time.Since(t))
			if _, err := toC.Write(tok[:]); err != nil {
				return xbReport{}, err
			}
			if _, err := io.ReadFull(fromC, tok[:]); err != nil {
				return xbReport{}, fmt.Errorf("waiting for the consumer: %w", err)
			}
		}
		toC.Close() // the consumer's EOF: done
		return xbReport{Calls: map[string]xbCalls{"put": xbSummarise(puts)}}, nil
	case "single":
		puts = make([]time.Duration, 0, n)
		for range n {
			t := time.Now()
			if err := c.Put(ctx, xbQueue, item); err != nil {
				return xbReport{}, err
			}
			puts = append(puts, time.Since(t))
		}
	case "batched256":
		batch := make([][]byte, xbBatch)
		for i := range batch {
			batch[i] = item
		}
		for sent := 0; sent < n; {
			k := min(xbBatch, n-sent)
			t := time.Now()
			if _, err := c.PutBatch(ctx, xbQueue, batch[:k]); err != nil {
				return xbReport{}, err
			}
			puts = append(puts, time.Since(t))
			sent += k
		}
	case "prefetch", "pipelined":
		// xbWindow goroutines, each putting the next batch of 256: the
		// client sends concurrent calls together on its one connection.
		batch := make([][]byte, xbBatch)
		for i := range batch {
			batch[i] = item
		}
		var next atomic.Int64
		var mu sync.Mutex
		var firstErr error
		var wg sync.WaitGroup
		for range xbWindow {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var mine []time.Duration
				for {
					start := int(next.Add(xbBatch)) - xbBatch
					if start >= n {
						break
					}
					k := min(xbBatch, n-start)
					t := time.Now()
					if _, err := c.PutBatch(ctx, xbQueue, batch[:k]); err != nil {
						mu.Lock()
						firstErr = cmp.Or(firstErr, err)
						mu.Unlock()
						return
					}
					mine = append(mine, time.Since(t))
				}
				mu.Lock()
				puts = append(puts, mine...)
				mu.Unlock()
			}()
		}
		wg.Wait()
		if firstErr != nil {
			return xbReport{}, firstErr
		}
	default:
		return xbReport{}, fmt.Errorf("unknown mode %q", mode)
	}
	stops := make([][]byte, consumers)
	for i := range stops {
		stops[i] = []byte(xbStopBody)
	}
	if _, err := c.PutBatch(ctx, xbQueue, stops); err != nil {
		return xbReport{}, err
	}
	return xbReport{Calls: map[string]xbCalls{"put": xbSummarise(puts)}}, nil
}

// xbConsumer gets and acks items until it gets a STOP item (sync: until
// the producer's pipe ends), and reports how many it got.
func xbConsumer(c *ipc.Client, mode string) (xbReport, error) {
	ctx := context.Background()
	var gets, acks []time.Duration
	got := 0
	report := func() xbReport {
		return xbReport{Items: got, Calls: map[string]xbCalls{"get": xbSummarise(gets), "ack": xbSummarise(acks)}}
	}
	switch mode {
	case "sync":
		fromP, toP := os.NewFile(xbLockstepR, "from-producer"), os.NewFile(xbLockstepW, "to-producer")
		var tok [1]byte
		for {
			if _, err := io.ReadFull(fromP, tok[:]); err == io.EOF {
				return report(), nil
			} else if err != nil {
				return xbReport{}, err
			}
			t := time.Now()
			d, err := c.Get(ctx, xbQueue)
			if err != nil {
				return xbReport{}, err
			}
			t2 := time.Now()
			if err := c.Ack(ctx, d); err != nil {
				return xbReport{}, err
			}
			gets, acks = append(gets, t2.Sub(t)), append(acks, time.Since(t2))
			got++
			if _, err := toP.Write(tok[:]); err != nil {
				return xbReport{}, err
			}
		}
	case "single":
		for {
			t := time.Now()
			d, err := c.Get(ctx, xbQueue)
			if err != nil {
				return xbReport{}, err
			}
			t2 := time.Now()
			if err := c.Ack(ctx, d); err != nil {
				return xbReport{}, err
			}
			gets, acks = append(gets, t2.Sub(t)), append(acks, time.Since(t2))
			if string(d.Body) == xbStopBody {
				return report(), nil
			}
			got++
		}
	case "batched256":
		for {
			t := time.Now()
			ds, err := c.GetBatch(ctx, xbQueue, xbBatch)
			if err != nil {
				return xbReport{}, err
			}
			t2 := time.Now()
			// A batch may hold the other consumer's STOP too: give it back.
			var done, extra []*ipc.Delivery
			stop := false
			for _, d := range ds {
				if string(d.Body) != xbStopBody {
					got++
				} else if stop {
					extra = append(extra, d)
					continue
				} else {
					stop = true
				}
				done = append(done, d)
			}
			if err := c.Ack(ctx, done...); err != nil {
				return xbReport{}, err
			}
			gets, acks = append(gets, t2.Sub(t)), append(acks, time.Since(t2))
			if len(extra) > 0 {
				if err := c.Nack(ctx, extra...); err != nil {
					return xbReport{}, err
				}
			}
			if stop {
				return report(), nil
			}
		}
	case "prefetch", "pipelined":
		prefetch := 1024
		if mode == "pipelined" {
			prefetch = 4096
		}
		cons, err := c.Consume(ctx, xbQueue, prefetch)
		if err != nil {
			return xbReport{}, err
		}
		stop := false
		for {
			d, err := cons.Next(ctx)
			if err != nil {
				return xbReport{}, err
			}
			if string(d.Body) != xbStopBody {
				got++
				if err := cons.Ack(d); err != nil {
					return xbReport{}, err
				}
				continue
			}
			if stop { // another consumer's STOP came here too: give it back
				if err := cons.Nack(d); err != nil {
					return xbReport{}, err
				}
				continue
			}
			stop = true
			if err := cons.Ack(d); err != nil {
				return xbReport{}, err
			}
			// Close gives back what is prefetched (another's STOP among
			// it); the items got so far are acknowledged by then.
			if err := cons.Close(); err != nil {
				return xbReport{}, err
			}
			return report(), nil
		}
	}
	return xbReport{}, fmt.Errorf("unknown mode %q", mode)
}

// xbRawServer listens, says ready, and serves one connection: 100-byte
// length-prefixed frames, each sent back ("echo") or read and dropped
// ("sink"; a frame of length 0 is answered with one byte).
func xbRawServer(mode, path string) error {
	l, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	defer l.Close()
	fmt.Printf("ready %d\n", os.Getpid())
	nc, err := l.Accept()
	if err != nil {
		return err
	}
	defer nc.Close()
	stopProfile, err := xbProfiler()
	if err != nil {
		return err
	}
	defer stopProfile()
	r := bufio.NewReaderSize(nc, 256<<10)
	w := bufio.NewWriterSize(nc, 256<<10)
	var hdr [4]byte
	buf := make([]byte, 1<<20)
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return nil // the client is done
		}
		n := int(binary.BigEndian.Uint32(hdr[:]))
		if n > len(buf) {
			return fmt.Errorf("frame of %d bytes", n)
		}
		if n == 0 {
			w.WriteByte(1)
			if err := w.Flush(); err != nil {
				return err
			}
			continue
		}
		if _, err := io.ReadFull(r, buf[:n]); err != nil {
			return err
		}
		if mode == "echo" {
			w.Write(hdr[:])
			w.Write(buf[:n])
			if r.Buffered() == 0 {
				if err := w.Flush(); err != nil {
					return err
				}
			}
		}
	}
}

// xbRawClient: n round trips of a 100-byte frame, each timed
// ("roundtrip"), or n frames streamed through a buffered writer and the
// server's one-byte answer to the end ("stream").
func xbRawClient(nc net.Conn, mode string, n int) (xbReport, error) {
	frame := binary.BigEndian.AppendUint32(nil, xbItemSize)
	frame = append(frame, make([]byte, xbItemSize)...)
	switch mode {
	case "roundtrip":
		buf := make([]byte, len(frame))
		rts := make([]time.Duration, 0, n)
		for range n {
			t := time.Now()
			if _, err := nc.Write(frame); err != nil {
				return xbReport{}, err
			}
			if _, err := io.ReadFull(nc, buf); err != nil {
				return xbReport{}, err
			}
			rts = append(rts, time.Since(t))
		}
		return xbReport{Items: n, Calls: map[string]xbCalls{"roundtrip": xbSummarise(rts)}}, nil
	case "stream":
		w := bufio.NewWriterSize(nc, 256<<10)
		for range n {
			w.Write(frame)
		}
		w.Write([]byte{0, 0, 0, 0})
		if err := w.Flush(); err != nil {
			return xbReport{}, err
		}
		var one [1]byte
		if _, err := io.ReadFull(nc, one[:]); err != nil {
			return xbReport{}, err
		}
		return xbReport{Items: n}, nil
	}
	return xbReport{}, fmt.Errorf("unknown mode %q", mode)
}
