package ipc

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
)

// Benchmarks of the queue, in one process: the broker, one producer
// Client and two consumer Clients, each on its own connection over a real
// Unix socket. The baseline, BenchmarkRawUnixSocket, is the limit: bare
// 100-byte length-prefixed frames between two processes (this test binary
// re-executed as the peer). The other baseline, BenchmarkManagerQueue, runs
// Python's multiprocessing.Manager().Queue() in the same shape.
//
//	go test -run '^$' -bench . -count 5 ./ipc/

const benchItemSize = 100

func benchBroker(b *testing.B) (*Broker, string) {
	dir, err := os.MkdirTemp("", "gtqb")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	br, err := NewBroker(BrokerOptions{Queues: []QueueConfig{{Name: "bench", Capacity: 10000}}, Logger: zap.NewNop()})
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(dir, "q.sock")
	l, err := Listen(path, -1)
	if err != nil {
		b.Fatal(err)
	}
	go br.Serve(l)
	b.Cleanup(func() { br.Close() })
	return br, path
}

func benchDial(b *testing.B, path string) *Client {
	c, err := Dial(context.Background(), path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

// BenchmarkQueueThroughput: items/s from 1 producer to 2 consumers, 100-byte
// items, batched (PutBatch/GetBatch of 256, acks batched) and one at a
// time (Put; Get then Ack).
func BenchmarkQueueThroughput(b *testing.B) {
	for _, mode := range []struct {
		name  string
		batch int
	}{{"batched256", 256}, {"single", 1}} {
		b.Run(mode.name, func(b *testing.B) {
			_, path := benchBroker(b)
			prod := benchDial(b, path)
			cons := []*Client{benchDial(b, path), benchDial(b, path)}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			total := int64(b.N)
			var consumed atomic.Int64
			done := make(chan struct{})
			var once sync.Once
			var wg sync.WaitGroup
			b.ResetTimer()
			start := time.Now()
			for _, c := range cons {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for ctx.Err() == nil {
						if mode.batch == 1 {
							d, err := c.Get(ctx, "bench")
							if err != nil {
								return
							}
							if err := c.Ack(ctx, d); err != nil {
								return
							}
							if consumed.Add(1) >= total {
								once.Do(func() { close(done) })
							}
							continue
						}
						ds, err := c.GetBatch(ctx, "bench", mode.batch)
						if err != nil {
							return
						}
						if err := c.Ack(ctx, ds...); err != nil {
							return
						}
						if consumed.Add(int64(len(ds))) >= total {
							once.Do(func() { close(done) })
						}
					}
				}()
			}
			item := make([]byte, benchItemSize)
			batch := make([][]byte, mode.batch)
			for i := range batch {
				batch[i] = item
			}
			for sent := 0; sent < b.N; {
				if mode.batch == 1 {
					if err := prod.Put(ctx, "bench", item); err != nil {
						b.Fatal(err)
					}
					sent++
					continue
				}
				n := min(mode.batch, b.N-sent)
				if _, err := prod.PutBatch(ctx, "bench", batch[:n]); err != nil {
					b.Fatal(err)
				}
				sent += n
			}
			<-done
			el := time.Since(start)
			b.StopTimer()
			cancel()
			wg.Wait()
			b.ReportMetric(float64(b.N)/el.Seconds(), "items/s")
		})
	}
}

// BenchmarkQueueLatency: put-to-get latency of one item at a time (the
// consumer waits in Get; the item carries its put time), p50 and p99.
func BenchmarkQueueLatency(b *testing.B) {
	_, path := benchBroker(b)
	prod, cons := benchDial(b, path), benchDial(b, path)
	ctx := context.Background()
	lat := make([]time.Duration, 0, b.N)
	got := make(chan time.Duration)
	go func() {
		for {
			d, err := cons.GetAutoAck(ctx, "bench")
			if err != nil {
				close(got)
				return
			}
			sent := int64(binary.BigEndian.Uint64(d))
			got <- time.Duration(time.Now().UnixNano() - sent)
		}
	}()
	item := make([]byte, benchItemSize)
	b.ResetTimer()
	for range b.N {
		binary.BigEndian.PutUint64(item, uint64(time.Now().UnixNano()))
		if err := prod.Put(ctx, "bench", item); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, <-got)
	}
	b.StopTimer()
	reportPercentiles(b, lat)
}

func reportPercentiles(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
}

// rawPeerProcess starts this test binary as the raw socket peer (rawPeer
// in broker_test.go) and returns its connection.
func rawPeerProcess(b *testing.B, mode string) net.Conn {
	dir, err := os.MkdirTemp("", "gtqr")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "raw.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^TestIPCHelperProcess$")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, EnvSocket+"="+path)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	nc, err := l.Accept()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { nc.Close(); cmd.Wait() })
	return nc
}

// BenchmarkRawUnixSocket is the limit the queue is measured against: bare
// 100-byte frames (4-byte length + 100 bytes) over a Unix socket to
// another process, streamed through buffered I/O (items/s), and one at a
// time there and back (round trip, p50/p99).
func BenchmarkRawUnixSocket(b *testing.B) {
	frame := binary.BigEndian.AppendUint32(nil, benchItemSize)
	frame = append(frame, make([]byte, benchItemSize)...)
	b.Run("stream", func(b *testing.B) {
		nc := rawPeerProcess(b, "raw-sink")
		w := bufio.NewWriterSize(nc, 256<<10)
		b.ResetTimer()
		start := time.Now()
		for range b.N {
			w.Write(frame)
		}
		w.Write([]byte{0, 0, 0, 0}) // end: the peer answers one byte
		w.Flush()
		var one [1]byte
		if _, err := io.ReadFull(nc, one[:]); err != nil {
			b.Fatal(err)
		}
		el := time.Since(start)
		b.ReportMetric(float64(b.N)/el.Seconds(), "items/s")
	})
	b.Run("roundtrip", func(b *testing.B) {
		nc := rawPeerProcess(b, "raw-echo")
		timeRoundTrips(b, nc, frame)
	})
	// The same round trip to an echoing goroutine of this process, which
	// is where the queue benchmarks' clients and broker are: the floor the
	// queue's put-to-get latency compares with.
	b.Run("roundtrip-inproc", func(b *testing.B) {
		dir, err := os.MkdirTemp("", "gtqr")
		if err != nil {
			b.Fatal(err)
		}
		defer os.RemoveAll(dir)
		path := filepath.Join(dir, "raw.sock")
		l, err := net.Listen("unix", path)
		if err != nil {
			b.Fatal(err)
		}
		defer l.Close()
		go func() {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			defer nc.Close()
			buf := make([]byte, len(frame))
			for {
				if _, err := io.ReadFull(nc, buf); err != nil {
					return
				}
				if _, err := nc.Write(buf); err != nil {
					return
				}
			}
		}()
		nc, err := net.Dial("unix", path)
		if err != nil {
			b.Fatal(err)
		}
		defer nc.Close()
		timeRoundTrips(b, nc, frame)
	})
}

// timeRoundTrips writes frame to an echoing peer and reads it back, b.N
// times, and reports the round trips' percentiles.
func timeRoundTrips(b *testing.B, nc net.Conn, frame []byte) {
	buf := make([]byte, len(frame))
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		if _, err := nc.Write(frame); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(nc, buf); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	reportPercentiles(b, lat)
}

// BenchmarkManagerQueue is the other baseline, measured in the same run:
// Python's multiprocessing.Manager().Queue() in the same shape (1 producer
// process, 2 consumer processes, 100-byte items with their put time in
// them), by ipc/python/manager_queue_bench.py. Each op is one run of 20,000
// items; its figures are reported as metrics.
func BenchmarkManagerQueue(b *testing.B) {
	py, err := exec.LookPath("python3")
	if err != nil {
		b.Skip("python3 is not on PATH")
	}
	line := regexp.MustCompile(`= ([0-9,]+) items/s, latency p50 ([0-9.]+) ms p99 ([0-9.]+) ms`)
	var rate, p50, p99 float64
	for range b.N {
		out, err := exec.Command(py, "python/manager_queue_bench.py", "--n", "20000", "--size", strconv.Itoa(benchItemSize)).CombinedOutput()
		if err != nil {
			b.Fatalf("manager_queue_bench.py: %v\n%s", err, out)
		}
		m := line.FindSubmatch(out)
		if m == nil {
			b.Fatalf("no result line in:\n%s", out)
		}
		r, _ := strconv.ParseFloat(strings.ReplaceAll(string(m[1]), ",", ""), 64)
		l50, _ := strconv.ParseFloat(string(m[2]), 64)
		l99, _ := strconv.ParseFloat(string(m[3]), 64)
		rate, p50, p99 = rate+r, p50+l50, p99+l99
	}
	n := float64(b.N)
	b.ReportMetric(rate/n, "items/s")
	b.ReportMetric(p50/n*1e3, "p50-µs")
	b.ReportMetric(p99/n*1e3, "p99-µs")
}
