package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gotyledon/gotyledon/ipc"
	"github.com/gotyledon/gotyledon/ipc/jsstore"
)

// BenchmarkQueueStores moves items into a queue and out again, per store,
// in the process layout users run: a producer process and a consumer
// process (this test binary run again), and between them
//
//	memory                    gotyledon run with a memory queue;
//	direct/sync=S/pack=P      a JetStream server process (the nats-server
//	                          module, on a loopback port, a file store) and
//	                          the nats.go client straight to it: the
//	                          baseline;
//	jetstream/sync=S/pack=P   gotyledon run with a jetstream queue (pack: P)
//	                          on nats.local_dir: the manager's broker, its
//	                          bridge service with the server inside, the
//	                          workers' protocol.
//
// sync=always syncs the server's file at every message (nats.sync:
// always), sync=default every two minutes; pack=P puts P items to a
// JetStream message. Items are 64 bytes. The producer puts batches of 256
// items (PutBatch), four batches in flight; the consumer gets up to 256 at
// a time (GetBatch, then Ack of them), four gets in flight. Direct, the
// producer publishes 256/P messages per batch, up to 1024 unacknowledged,
// and the consumer fetches up to 512 messages at a time and acknowledges
// each. The jetstream queue holds up to 1,000,000 messages, the direct
// stream any number, the memory queue 10,000 items.
//
// One op is one item, timed from the producer's go (every process
// connected and waiting) to the consumer's last item. Metrics:
//
//	items/s    b.N over that time
//	cpu-ns/item
//	           the CPU time the whole machine was busy over that time
//	           (every process: producer, consumer, manager, bridge,
//	           server, and anything else running), per item
//	p50-ms, p99-ms
//	           put → get of an item: from before its batch is put to its
//	           get (the clock's time in the item, read by the consumer)
//	x-direct   this row's time over the direct row's of the same sync and
//	           pack, run just before it (the broker's cost: 1.25 is 25 %)
func BenchmarkQueueStores(b *testing.B) {
	direct := map[string]float64{} // ns per item, by "sync=S/pack=P"
	b.Run("memory", func(b *testing.B) { benchStore(b, "memory", "default", 1, nil) })
	for _, sync := range []string{"default", "always"} {
		for _, pack := range []int{1, 256} {
			key := fmt.Sprintf("sync=%s/pack=%d", sync, pack)
			b.Run("direct/"+key, func(b *testing.B) {
				direct[key] = benchStore(b, "direct", sync, pack, nil)
			})
			b.Run("jetstream/"+key, func(b *testing.B) {
				base, ok := direct[key]
				if !ok {
					base = -1
				}
				benchStore(b, "jetstream", sync, pack, &base)
			})
		}
	}
}

const (
	sbBatch    = 256
	sbItemSize = 64
	sbWindow   = 4
	sbRoleEnv  = "GOTYLEDON_JSBENCH_ROLE"
)

// benchStore runs one row and returns its time per item in ns. base, if
// not nil and not negative, is the direct row's.
func benchStore(b *testing.B, kind, sync string, pack int, base *float64) float64 {
	items := (max(b.N, 1) + sbBatch - 1) / sbBatch * sbBatch
	dir := shortDir(b)
	env := []string{"SB_ITEMS=" + strconv.Itoa(items), "SB_PACK=" + strconv.Itoa(pack)}
	role := "broker"
	switch kind {
	case "direct":
		role = "direct"
		_, url := startRole(b, "js-server", "SB_DIR="+filepath.Join(dir, "js"), "SB_SYNC="+sync)
		url, _ = strings.CutPrefix(url, "ready ")
		nc, err := nats.Connect(url)
		if err != nil {
			b.Fatal(err)
		}
		defer nc.Close()
		if _, err := jsstore.Open(context.Background(), nc, jsstore.Config{Queue: "bench"}); err != nil {
			b.Fatal(err)
		}
		env = append(env, "SB_URL="+url)
	default:
		queue := "bench: {capacity: 10000}"
		ready := "manager ready"
		natsSection := ""
		if kind == "jetstream" {
			queue = fmt.Sprintf("bench: {capacity: 1000000, store: jetstream, pack: %d}", pack)
			ready = "JetStream queues served"
			natsSection = "nats:\n  local_dir: " + filepath.Join(dir, "js") + "\n"
			if sync == "always" {
				natsSection += "  sync: always\n"
			}
		}
		config := filepath.Join(dir, "gotyledon.yaml")
		yaml := natsSection + "queues:\n  " + queue + "\nservices:\n  idle: {command: [/bin/sleep, infinity], workers: 1}\n"
		if err := os.WriteFile(config, []byte(yaml), 0o644); err != nil {
			b.Fatal(err)
		}
		startManagerUntil(b, dir, config, ready)
		env = append(env, "SB_SOCKET="+filepath.Join(dir, "queue.sock"))
	}
	consumer, _ := startRole(b, "consume-"+role, env...)
	producer, _ := startRole(b, "produce-"+role, env...)
	b.ResetTimer()
	cpu0 := readMachineCPU(b)
	t0 := time.Now()
	if _, err := io.WriteString(producer.stdin, "go\n"); err != nil {
		b.Fatal(err)
	}
	var line string
	timeout := time.After(10 * time.Minute)
	for line == "" {
		select {
		case line = <-consumer.lines:
		case l := <-producer.lines:
			if strings.HasPrefix(l, "failed") {
				b.Fatalf("producer %s", l)
			}
		case <-timeout:
			b.Fatal("the consumer did not finish in 10 minutes")
		}
	}
	elapsed := time.Since(t0)
	cpu1 := readMachineCPU(b)
	b.StopTimer()
	var p50, p99 float64
	if _, err := fmt.Sscanf(line, "done %g %g", &p50, &p99); err != nil {
		b.Fatalf("a helper said %q", line)
	}
	perItem := float64(elapsed.Nanoseconds()) / float64(items)
	b.ReportMetric(float64(items)/elapsed.Seconds(), "items/s")
	b.ReportMetric(cpu1.busySince(cpu0, elapsed)/float64(items), "cpu-ns/item")
	b.ReportMetric(p50, "p50-ms")
	b.ReportMetric(p99, "p99-ms")
	if base != nil && *base > 0 {
		b.ReportMetric(perItem / *base, "x-direct")
	}
	return perItem
}

// roleProcess is a helper process of the benchmark.
type roleProcess struct {
	stdin io.Writer
	lines chan string // after the first, which startRole returns
}

// startRole runs this test binary as a helper playing role, and returns
// once it has printed its first line (ready, and what it says with it).
// It is killed when the benchmark ends, and ends itself at the end of its
// stdin.
func startRole(b *testing.B, role string, env ...string) (*roleProcess, string) {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), sbRoleEnv+"="+role), env...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	p := &roleProcess{stdin: in, lines: make(chan string, 4)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		p.lines <- "ended: " + role
	}()
	select {
	case first := <-p.lines:
		if !strings.HasPrefix(first, "ready") {
			b.Fatalf("helper %s: %s", role, first)
		}
		return p, first
	case <-time.After(time.Minute):
		b.Fatalf("helper %s not ready in a minute", role)
	}
	return nil, ""
}

// storeBenchRole plays role; it returns the exit code.
func storeBenchRole(role string) int {
	items, _ := strconv.Atoi(os.Getenv("SB_ITEMS"))
	pack, _ := strconv.Atoi(os.Getenv("SB_PACK"))
	var err error
	switch role {
	case "js-server":
		err = sbServer(os.Getenv("SB_DIR"), os.Getenv("SB_SYNC") == "always")
	case "produce-direct":
		err = sbProduceDirect(os.Getenv("SB_URL"), items, pack)
	case "consume-direct":
		err = sbConsumeDirect(os.Getenv("SB_URL"), items, pack)
	case "produce-broker":
		err = sbProduceBroker(os.Getenv("SB_SOCKET"), items)
	case "consume-broker":
		err = sbConsumeBroker(os.Getenv("SB_SOCKET"), items)
	default:
		err = fmt.Errorf("no such role")
	}
	if err != nil {
		fmt.Printf("failed: %s: %v\n", role, err)
		return 1
	}
	return 0
}

func sbServer(dir string, syncAlways bool) error {
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: dir,
		SyncAlways: syncAlways, NoLog: true, NoSigs: true})
	if err != nil {
		return err
	}
	s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		return fmt.Errorf("JetStream server not ready in 30 s")
	}
	fmt.Println("ready", s.ClientURL())
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil
}

// awaitGo says ready and waits for the benchmark's go.
func awaitGo() error {
	fmt.Println("ready")
	line, err := bufio.NewReader(os.Stdin).ReadString('\n')
	if err != nil || line != "go\n" {
		return fmt.Errorf("no go from the benchmark: %q, %v", line, err)
	}
	return nil
}

// sbNow is the time in ns, as every process of the machine reads it
// (through the vDSO: a system call per item would slow the consumer).
func sbNow() int64 { return time.Now().UnixNano() }

// stampedBatch is n items, each its put time in its first 8 bytes.
func stampedBatch(n int) [][]byte {
	now := uint64(sbNow())
	buf := make([]byte, n*sbItemSize)
	out := make([][]byte, n)
	for i := range out {
		out[i] = buf[i*sbItemSize : (i+1)*sbItemSize]
		binary.LittleEndian.PutUint64(out[i], now)
	}
	return out
}

// latencies records put → get times, and says them at the end.
type latencies struct {
	mu  sync.Mutex
	all []int64
}

func (l *latencies) add(items ...[]byte) {
	now := sbNow()
	l.mu.Lock()
	for _, it := range items {
		l.all = append(l.all, now-int64(binary.LittleEndian.Uint64(it)))
	}
	l.mu.Unlock()
}

func (l *latencies) done() {
	slices.Sort(l.all)
	fmt.Printf("done %.3f %.3f\n", float64(l.all[len(l.all)/2])/1e6, float64(l.all[len(l.all)*99/100])/1e6)
}

func sbProduceDirect(url string, items, pack int) error {
	nc, err := nats.Connect(url)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(1024), jetstream.WithPublishAsyncTimeout(time.Minute))
	if err != nil {
		return err
	}
	if err := awaitGo(); err != nil {
		return err
	}
	id := 0
	for range items / sbBatch {
		batch := stampedBatch(sbBatch)
		for i := 0; i < sbBatch; i += pack {
			// Raw items: the baseline's consumer knows their size.
			msg := batch[i][: pack*sbItemSize : pack*sbItemSize]
			id++
			if _, err := js.PublishAsync(jsstore.Subject("bench"), msg, jetstream.WithMsgID(strconv.Itoa(id)), jetstream.WithStallWait(time.Minute)); err != nil {
				return err
			}
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(5 * time.Minute):
		return fmt.Errorf("publishes not acknowledged in 5 minutes")
	}
	return nil
}

func sbConsumeDirect(url string, items, pack int) error {
	nc, err := nats.Connect(url)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	cons, err := js.Consumer(context.Background(), jsstore.StreamName("bench"), "gotyledon")
	if err != nil {
		return err
	}
	fmt.Println("ready")
	var lat latencies
	for got := 0; got < items; {
		batch, err := cons.Fetch(min(512, (items-got)/pack), jetstream.FetchMaxWait(time.Minute))
		if err != nil {
			return err
		}
		for m := range batch.Messages() {
			data := m.Data()
			items := make([][]byte, 0, pack)
			for i := 0; i+sbItemSize <= len(data); i += sbItemSize {
				items = append(items, data[i:i+sbItemSize])
			}
			lat.add(items...)
			got += len(items)
			if err := m.Ack(); err != nil {
				return err
			}
		}
		if err := batch.Error(); err != nil {
			return err
		}
	}
	if err := nc.Flush(); err != nil {
		return err
	}
	lat.done()
	return nil
}

func sbDial(socket string) (*ipc.Client, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return ipc.Dial(ctx, socket)
}

func sbProduceBroker(socket string, items int) error {
	c, err := sbDial(socket)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := awaitGo(); err != nil {
		return err
	}
	var left atomic.Int64
	left.Store(int64(items / sbBatch))
	errs := make(chan error, sbWindow)
	for range sbWindow {
		go func() {
			for left.Add(-1) >= 0 {
				n, err := c.PutBatch(context.Background(), "bench", stampedBatch(sbBatch))
				if err != nil || n != sbBatch {
					errs <- fmt.Errorf("PutBatch = %d, %v", n, err)
					return
				}
			}
			errs <- nil
		}()
	}
	for range sbWindow {
		if err := <-errs; err != nil {
			return err
		}
	}
	return nil
}

func sbConsumeBroker(socket string, items int) error {
	c, err := sbDial(socket)
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Println("ready")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var lat latencies
	var got atomic.Int64
	errs := make(chan error, sbWindow)
	for range sbWindow {
		go func() {
			for got.Load() < int64(items) {
				ds, err := c.GetBatch(ctx, "bench", sbBatch)
				if err != nil {
					if ctx.Err() != nil {
						break
					}
					errs <- err
					return
				}
				for _, d := range ds {
					lat.add(d.Body)
				}
				if err := c.Ack(context.Background(), ds...); err != nil {
					errs <- err
					return
				}
				if got.Add(int64(len(ds))) >= int64(items) {
					cancel()
				}
			}
			errs <- nil
		}()
	}
	for range sbWindow {
		if err := <-errs; err != nil {
			return err
		}
	}
	lat.done()
	return nil
}

// machineCPU is what /proc/stat says of the machine's CPU time so far:
// its first line's clock ticks, busy and all, summed over the CPUs it
// counts (its cpuN lines).
type machineCPU struct {
	busy, total int64
	cpus        int
}

func readMachineCPU(b *testing.B) machineCPU {
	b.Helper()
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		b.Fatal(err)
	}
	line, _, _ := strings.Cut(string(data), "\n")
	var c machineCPU
	for _, l := range strings.Split(string(data), "\n") {
		if len(l) > 3 && strings.HasPrefix(l, "cpu") && l[3] >= '0' && l[3] <= '9' {
			c.cpus++
		}
	}
	fields := strings.Fields(line)
	if len(fields) < 5 || fields[0] != "cpu" {
		b.Fatalf("/proc/stat begins %q, not the cpu line", line)
	}
	for i, f := range fields[1:] {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			b.Fatalf("/proc/stat cpu line %q: %v", line, err)
		}
		switch {
		case i >= 8: // guest time, already counted as user time
		case i == 3 || i == 4 || i == 7: // idle, iowait, stolen by the host
			c.total += n
		default:
			c.total += n
			c.busy += n
		}
	}
	return c
}

// busySince is the busy CPU time in ns between then and c, elapsed apart:
// the busy share of the ticks times elapsed times the CPUs, so that the
// length of a tick does not matter.
func (c machineCPU) busySince(then machineCPU, elapsed time.Duration) float64 {
	total := c.total - then.total
	if total <= 0 {
		return 0
	}
	return float64(c.busy-then.busy) / float64(total) * float64(elapsed.Nanoseconds()) * float64(c.cpus)
}
