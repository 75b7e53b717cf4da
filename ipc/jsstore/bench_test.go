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
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
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
	url := startHelper(b, "bench-server", nil, "JSSTORE_DIR="+b.TempDir(), "JSSTORE_SYNC="+sync)
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

// startHelper runs this test binary as helper name with env, and returns
// the first line it prints ("ready URL" gives the URL); a later line, if
// more is not nil, goes to more. The helper is killed when the benchmark
// ends, and ends itself at the end of its stdin if the benchmark dies.
func startHelper(b *testing.B, name string, more chan<- string, env ...string) string {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), envHelper+"="+name), env...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if _, err := cmd.StdinPipe(); err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := make(chan string, 2)
	go func() {
		r := bufio.NewReader(out)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				close(lines)
				return
			}
			lines <- strings.TrimSpace(line)
		}
	}()
	var first string
	select {
	case l, ok := <-lines:
		if !ok {
			b.Fatalf("helper %s ended before it was ready", name)
		}
		first = l
	case <-time.After(30 * time.Second):
		b.Fatalf("helper %s not ready in 30s", name)
	}
	if more != nil {
		go func() {
			if l, ok := <-lines; ok {
				more <- l
			}
		}()
	}
	url, _ := strings.CutPrefix(first, "ready ")
	return url
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
	opts := &server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: os.Getenv("JSSTORE_DIR"),
		NoSigs: true, NoLog: true, SyncAlways: os.Getenv("JSSTORE_SYNC") == "always"}
	s, err := server.NewServer(opts)
	if err != nil {
		return err
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		return fmt.Errorf("not ready in 10s")
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
