package ipc_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/gotyledon/gotyledon/ipc"
)

// BenchmarkTasks: tasks (request and reply) in the process layout users
// run, beside their baselines in the same run and layout. As
// BenchmarkQueueProcesses (process_bench_test.go, whose helpers it uses):
// a real manager, and every client a process of its own.
//
//	raw/relay              the layout of a task without the broker: a client
//	                       process, a relay process and a worker process; the
//	                       client's 100-byte frame goes to the relay, which
//	                       writes it to the worker (from the goroutine that
//	                       read it), which sends it back the same way: µs per
//	                       round trip (mean), p50, p99
//	submit/roundtrip       one submitter process, one worker process: Submit
//	                       then Result, one task at a time: µs/roundtrip
//	                       (mean), p50, p99, rtt-vs-raw, the mean over
//	                       raw/roundtrip's (BenchmarkQueueProcesses; measured
//	                       here if it did not run), and rtt-vs-relay, over
//	                       raw/relay's
//	map/go                 one submitter process maps b.N tasks over two
//	                       worker processes (Consume, prefetch 256, Reply):
//	                       tasks/s, and x-processpool and x-pool, the rate
//	                       over the Python baselines'
//	map/python-processpool concurrent.futures.ProcessPoolExecutor(2).map of
//	                       b.N tasks (chunksize 1, its default)
//	map/python-pool        multiprocessing.Pool(2).map of b.N tasks (its
//	                       default chunksize: about b.N/8 tasks to a chunk)
//
// The task is the same everywhere: the sum of the bytes of a 16-byte input,
// as decimal text. The Python rows run first, as baselines.
//
//	go test -run '^$' -bench 'Tasks' -benchtime 100000x -count 5 ./ipc/
func BenchmarkTasks(b *testing.B) {
	b.Run("raw/relay", func(b *testing.B) { xbRawRelayRoundTrip(b, b.N, xbTimed(b)) })
	b.Run("map/python-processpool", func(b *testing.B) { xbPoolMap(b, "processpool") })
	b.Run("map/python-pool", func(b *testing.B) { xbPoolMap(b, "pool") })
	b.Run("map/go", xbTaskMap)
	b.Run("submit/roundtrip", xbTaskRoundTrip)
}

// Baseline keys of BenchmarkTasks.
const (
	xbProcessPool = "processpool map tasks/s"
	xbPool        = "pool map tasks/s"
	xbRelayRTT    = "raw relay roundtrip µs"
)

// xbRawRelayRoundTrip: n round trips through a relay process to a worker
// process and back.
func xbRawRelayRoundTrip(b *testing.B, n int, t xbTiming) {
	sock := filepath.Join(xbTempDir(b), "relay.sock")
	relay := xbStart(b, t.name, "raw-relay", xbGoArgv(t.name, "raw-relay"), []string{ipc.EnvSocket + "=" + sock}, nil)
	relay.expect(b, "ready", xbWait)
	// The worker connects first: the relay takes its first connection as
	// the worker's.
	echo := xbStart(b, t.name, "raw-echo", xbGoArgv(t.name, "raw-echo"), []string{ipc.EnvSocket + "=" + sock}, nil)
	echo.expect(b, "ready", xbWait)
	xbRawRoundTrips(b, n, t, sock, xbRelayRTT)
}

func xbPoolMap(b *testing.B, kind string) {
	t := xbTimed(b)
	py := xbPython3(b)
	args := []string{py, filepath.Join("python", "pool_bench.py"), "--kind", kind, "--n", strconv.Itoa(b.N), "--workers", "2", "--events"}
	rate, _, el := xbPythonRun(b, t, "pool_bench", args, nil)
	t.report(rate, "tasks/s")
	key := xbProcessPool
	if kind == "pool" {
		key = xbPool
	}
	xbRecord(key, rate, el)
}

// xbTaskInput is task i's input: 16 bytes.
func xbTaskInput(i int) []byte { return []byte(fmt.Sprintf("%016d", i)) }

// xbTaskResult is the task: the sum of the input's bytes, in decimal.
func xbTaskResult(in []byte) []byte {
	sum := 0
	for _, c := range in {
		sum += int(c)
	}
	return strconv.AppendInt(nil, int64(sum), 10)
}

// xbStartTaskWorkers starts n worker processes on the manager's queue, and
// returns once each is connected and consuming.
func xbStartTaskWorkers(b *testing.B, bench, sock string, n, prefetch int) {
	for i := range n {
		w := xbStart(b, bench, fmt.Sprintf("task-worker-%d", i), xbGoArgv(bench, "task-worker"),
			[]string{xbRoleEnv + "=task-worker", ipc.EnvSocket + "=" + sock, xbNEnv + "=" + strconv.Itoa(prefetch)}, nil)
		w.expect(b, "ready", xbWait)
	}
}

func xbTaskMap(b *testing.B) {
	t := xbTimed(b)
	sock := xbStartManager(b, t.name)
	xbStartTaskWorkers(b, t.name, sock, 2, 256)
	s := xbStart(b, t.name, "task-submitter", xbGoArgv(t.name, "task-submitter"),
		[]string{xbRoleEnv + "=task-submitter", xbModeEnv + "=map", xbNEnv + "=" + strconv.Itoa(b.N), ipc.EnvSocket + "=" + sock}, nil)
	s.expect(b, "ready", xbWait)
	t.start()
	s.send(b, "go")
	r := s.done(b)
	t.stop()
	rate := float64(r.Items) / time.Duration(r.ElapsedNS).Seconds()
	t.report(rate, "tasks/s")
	for _, base := range []struct{ key, unit string }{{xbProcessPool, "x-processpool"}, {xbPool, "x-pool"}} {
		if v, ok := xbTaskBaseline(b, base.key); ok {
			t.report(rate/v, base.unit)
		}
	}
}

// xbTaskBaseline is the median of a Python pool's runs so far, measured
// once (20,000 tasks) if it has not run.
func xbTaskBaseline(b *testing.B, key string) (float64, bool) {
	if !xbHasBaseline(key) {
		kind := "processpool"
		if key == xbPool {
			kind = "pool"
		}
		py := xbPython3(b)
		t := xbUntimed(b, "baseline")
		rate, _, el := xbPythonRun(b, t, "pool_bench", []string{py, filepath.Join("python", "pool_bench.py"), "--kind", kind, "--n", "20000", "--workers", "2", "--events"}, nil)
		xbRecord(key, rate, el)
	}
	return xbBaseline(b, key)
}

// xbHasBaseline reports whether key has runs recorded.
func xbHasBaseline(key string) bool {
	xbBaselineMu.Lock()
	defer xbBaselineMu.Unlock()
	return len(xbBaselines[key]) > 0
}

func xbTaskRoundTrip(b *testing.B) {
	t := xbTimed(b)
	sock := xbStartManager(b, t.name)
	xbStartTaskWorkers(b, t.name, sock, 1, 1)
	s := xbStart(b, t.name, "task-submitter", xbGoArgv(t.name, "task-submitter"),
		[]string{xbRoleEnv + "=task-submitter", xbModeEnv + "=roundtrip", xbNEnv + "=" + strconv.Itoa(b.N), ipc.EnvSocket + "=" + sock}, nil)
	s.expect(b, "ready", xbWait)
	t.start()
	s.send(b, "go")
	r := s.done(b)
	t.stop()
	rt := r.Calls["submit"]
	t.report(rt.MeanUS, "µs/roundtrip")
	t.report(rt.P50US, "p50-µs")
	t.report(rt.P99US, "p99-µs")
	if raw, ok := xbBaseline(b, xbRawRTT); ok {
		t.report(rt.MeanUS/raw, "rtt-vs-raw")
	}
	if !xbHasBaseline(xbRelayRTT) {
		xbRawRelayRoundTrip(b, 20000, xbUntimed(b, "baseline"))
	}
	if relay, ok := xbBaseline(b, xbRelayRTT); ok {
		t.report(rt.MeanUS/relay, "rtt-vs-relay")
	}
}

// xbRawRelay is the relay of raw/relay: its first connection is the
// worker's, its second the client's; each frame from one is written to the
// other by the goroutine that read it.
func xbRawRelay(path string) error {
	l, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	defer l.Close()
	fmt.Printf("ready %d\n", os.Getpid())
	worker, err := l.Accept()
	if err != nil {
		return err
	}
	defer worker.Close()
	client, err := l.Accept()
	if err != nil {
		return err
	}
	defer client.Close()
	errs := make(chan error, 2)
	go func() { errs <- xbPassFrames(client, worker) }()
	go func() { errs <- xbPassFrames(worker, client) }()
	err = <-errs
	client.Close()
	worker.Close()
	return err
}

// xbPassFrames writes each length-prefixed frame read from from to to,
// from the goroutine that read it, until from ends between frames (nil).
func xbPassFrames(from, to net.Conn) error {
	r := bufio.NewReaderSize(from, 64<<10)
	buf := make([]byte, 4, 1<<20)
	for {
		if _, err := io.ReadFull(r, buf[:4]); err != nil {
			return nil // the other end is done
		}
		n := int(binary.BigEndian.Uint32(buf[:4]))
		if 4+n > cap(buf) {
			return fmt.Errorf("frame of %d bytes", n)
		}
		if _, err := io.ReadFull(r, buf[4:4+n]); err != nil {
			return err
		}
		if _, err := to.Write(buf[:4+n]); err != nil {
			return err
		}
	}
}

// xbRawEcho is the worker of raw/relay: it sends back every frame.
func xbRawEcho(path string) error {
	nc, err := net.Dial("unix", path)
	if err != nil {
		return err
	}
	defer nc.Close()
	fmt.Printf("ready %d\n", os.Getpid())
	return xbPassFrames(nc, nc)
}

// --- inside the helper processes ---

// xbTaskWorker answers tasks until its stdin ends: Consume with the
// prefetch in GOTYLEDON_XBENCH_N, Reply to each.
func xbTaskWorker(prefetch int) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dial, dcancel := context.WithTimeout(ctx, xbWait)
	defer dcancel()
	c, err := ipc.DialEnv(dial)
	if err != nil {
		return err
	}
	defer c.Close()
	tasks, err := c.Consume(ctx, xbQueue, prefetch)
	if err != nil {
		return err
	}
	go func() {
		io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	fmt.Printf("ready %d\n", os.Getpid())
	for {
		t, err := tasks.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if err := t.Reply(ctx, xbTaskResult(t.Body)); err != nil {
			return err
		}
	}
}

// xbTaskSubmitter maps n tasks (mode map), or submits them one at a time,
// each waited for (mode roundtrip), after the go on its stdin, and checks
// every result.
func xbTaskSubmitter(c *ipc.Client, mode string, n int) (xbReport, error) {
	ctx, cancel := context.WithTimeout(context.Background(), xbTransfer)
	defer cancel()
	r := xbReport{Items: n, Calls: map[string]xbCalls{}}
	switch mode {
	case "map":
		inputs := make([][]byte, n)
		for i := range inputs {
			inputs[i] = xbTaskInput(i)
		}
		results, err := c.Map(ctx, xbQueue, inputs)
		if err != nil {
			return r, err
		}
		for i, res := range results {
			if string(res) != string(xbTaskResult(inputs[i])) {
				return r, fmt.Errorf("task %d: result %q, want %q", i, res, xbTaskResult(inputs[i]))
			}
		}
	case "roundtrip":
		rts := make([]time.Duration, 0, n)
		for i := range n {
			in := xbTaskInput(i)
			t0 := time.Now()
			f, err := c.Submit(ctx, xbQueue, in)
			if err != nil {
				return r, err
			}
			res, err := f.Result(ctx)
			if err != nil {
				return r, err
			}
			rts = append(rts, time.Since(t0))
			if string(res) != string(xbTaskResult(in)) {
				return r, fmt.Errorf("task %d: result %q", i, res)
			}
		}
		r.Calls["submit"] = xbSummarise(rts)
	default:
		return r, errors.New("no such mode " + mode)
	}
	return r, nil
}
