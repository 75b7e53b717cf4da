package ipc

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
)

// Micro-benchmarks of the queue, in one process: the broker, one producer
// Client and two consumer Clients, each on its own connection over a real
// Unix socket, all in the test process. They are not the queue's figures:
// users run the broker inside the manager and every producer and consumer
// as a process of its own, and the goroutine hand-offs and wake-ups that
// cost most across processes are cheap here. The queue's figures, and
// their baselines, come from BenchmarkQueueProcesses
// (process_bench_test.go). These stay to see the broker's and client's own
// CPU cost without the processes around them; their floor is
// BenchmarkMicroRawUnixSocket, a round trip to a goroutine of the same
// process.
//
//	go test -run '^$' -bench Micro -count 5 ./ipc/

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

// BenchmarkMicroQueueThroughput (a micro-benchmark: one process): items/s
// from 1 producer to 2 consumers, 100-byte items, batched (PutBatch/GetBatch
// of 256, acks batched) and one at a time (Put; Get then Ack).
func BenchmarkMicroQueueThroughput(b *testing.B) {
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

// BenchmarkMicroQueueLatency (a micro-benchmark: one process): put-to-get
// latency of one item at a time (the consumer waits in Get; the item
// carries its put time), p50 and p99.
func BenchmarkMicroQueueLatency(b *testing.B) {
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

// BenchmarkMicroRawUnixSocket is the floor of the micro-benchmarks: a
// round trip of a bare 100-byte frame (4-byte length + 100 bytes) over a
// Unix socket to an echoing goroutine of this process, p50/p99. The
// cross-process round trip and stream are BenchmarkQueueProcesses/raw.
func BenchmarkMicroRawUnixSocket(b *testing.B) {
	frame := binary.BigEndian.AppendUint32(nil, benchItemSize)
	frame = append(frame, make([]byte, benchItemSize)...)
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
