package jsstore

// BenchmarkJetStreamDirect: the baseline for a queue in JetStream, the
// nats.go client straight to the server, in the process layout users run:
// the server, one producer and one consumer, each a process of its own
// (this test binary run again as a helper). The producer publishes b.N
// 64-byte items, `pack` to a JetStream message, keeping up to 1024
// messages unacknowledged; the consumer fetches up to 512 messages at a
// time and acknowledges each. One op is one item, from the producer's
// first publish (it has connected) to the consumer's last item. Metrics:
//
//	items/s   b.N over that time
//	p50-ms, p99-ms
//	          put → get of an item: from before its message is published to
//	          its fetch (CLOCK_MONOTONIC in the message, read by the consumer)
//
// sync=always has the server sync its file at every message
// (`sync: always`), sync=default every two minutes; a server whose
// process dies loses nothing either way (its file is written before it
// acknowledges), power loss up to that interval.

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sys/unix"
)

func BenchmarkJetStreamDirect(b *testing.B) {
	for _, sync := range []string{"default", "always"} {
		for _, pack := range []int{1, 10, 100} {
			b.Run(fmt.Sprintf("sync=%s/pack=%d", sync, pack), func(b *testing.B) {
				benchDirect(b, sync, pack)
			})
		}
	}
}

func benchDirect(b *testing.B, sync string, pack int) {
	_, ready := startHelper(b, "bench-server", nil, "JSSTORE_DIR="+b.TempDir(), "JSSTORE_SYNC="+sync)
	url, _ := strings.CutPrefix(ready, "ready ")
	nc, err := nats.Connect(url)
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	// The queue's stream and consumer as Open makes them.
	if _, err := Open(context.Background(), nc, Config{Queue: "bench"}); err != nil {
		b.Fatal(err)
	}
	items := max(b.N, pack) / pack * pack
	env := []string{"JSSTORE_URL=" + url, "JSSTORE_ITEMS=" + strconv.Itoa(items), "JSSTORE_PACK=" + strconv.Itoa(pack)}
	result := make(chan string, 2) // the consumer's "done", or a helper's "failed"
	startHelper(b, "bench-consume", result, env...)
	startHelper(b, "bench-produce", result, env...) // ready: connected, publishing
	b.ResetTimer()
	t0 := time.Now()
	var line string
	select {
	case line = <-result:
	case <-time.After(10 * time.Minute):
		b.Fatal("the consumer did not finish in 10 minutes")
	}
	elapsed := time.Since(t0)
	b.StopTimer()
	var p50, p99 float64
	if _, err := fmt.Sscanf(line, "done %g %g", &p50, &p99); err != nil {
		b.Fatalf("a helper said %q", line)
	}
	b.ReportMetric(float64(items)/elapsed.Seconds(), "items/s")
	b.ReportMetric(p50, "p50-ms")
	b.ReportMetric(p99, "p99-ms")
}

// benchHelper runs the benchmark's helper name; it returns the exit code.
func benchHelper(name string) int {
	var err error
	switch name {
	case "bench-server":
		err = benchServer()
	case "bench-produce":
		err = benchProduce()
	case "bench-consume":
		err = benchConsume()
	}
	if err != nil {
		fmt.Printf("failed: %s: %v\n", name, err)
		return 1
	}
	return 0
}

func benchServer() error {
	s, err := newServer(os.Getenv("JSSTORE_DIR"), os.Getenv("JSSTORE_SYNC") == "always")
	if err != nil {
		return err
	}
	fmt.Println("ready", s.ClientURL())
	_, _ = io.Copy(io.Discard, os.Stdin) // until the benchmark kills us, or is gone
	return nil
}

func benchEnv() (url string, items, pack int) {
	items, _ = strconv.Atoi(os.Getenv("JSSTORE_ITEMS"))
	pack, _ = strconv.Atoi(os.Getenv("JSSTORE_PACK"))
	return os.Getenv("JSSTORE_URL"), items, pack
}

func benchProduce() error {
	url, items, pack := benchEnv()
	nc, err := nats.Connect(url)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(1024), jetstream.WithPublishAsyncTimeout(time.Minute))
	if err != nil {
		return err
	}
	fmt.Println("ready")
	msg := make([]byte, 64*pack)
	for i := 0; i < items/pack; i++ {
		binary.LittleEndian.PutUint64(msg, uint64(monotonic()))
		// A server that syncs every message acknowledges slowly: the
		// publish waits for room among the 1024 rather than failing.
		if _, err := js.PublishAsync(Subject("bench"), msg, jetstream.WithMsgID(strconv.Itoa(i)), jetstream.WithStallWait(time.Minute)); err != nil {
			return err
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(5 * time.Minute):
		return fmt.Errorf("publishes not acknowledged in 5 minutes")
	}
	return nil
}

func benchConsume() error {
	url, items, pack := benchEnv()
	nc, err := nats.Connect(url)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	cons, err := js.Consumer(context.Background(), StreamName("bench"), consumerName)
	if err != nil {
		return err
	}
	fmt.Println("ready")
	msgs := items / pack
	lat := make([]int64, 0, msgs)
	for len(lat) < msgs {
		batch, err := cons.Fetch(min(512, msgs-len(lat)), jetstream.FetchMaxWait(time.Minute))
		if err != nil {
			return err
		}
		for m := range batch.Messages() {
			lat = append(lat, monotonic()-int64(binary.LittleEndian.Uint64(m.Data())))
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
	slices.Sort(lat)
	fmt.Printf("done %.3f %.3f\n", float64(lat[len(lat)/2])/1e6, float64(lat[len(lat)*99/100])/1e6)
	return nil
}

func monotonic() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}
