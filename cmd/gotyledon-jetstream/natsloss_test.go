package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/gotyledon/gotyledon/ipc"
)

// A manager whose NATS server goes away: its STATUS= says the queue is
// disconnected, a put waits for the server up to its timeout and then
// gets TIMEOUT having stored nothing, and once the server is back (on the
// same files) the manager says so, puts and gets go on, and no item put
// before is lost.
func TestManagerRidesOutLosingNATS(t *testing.T) {
	dir, run := t.TempDir(), runDir(t)
	port := freePort(t)
	startNATS := func() *server.Server {
		s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, JetStream: true,
			StoreDir: filepath.Join(dir, "nats"), NoSigs: true, NoLog: true})
		if err != nil {
			t.Fatal(err)
		}
		s.Start()
		t.Cleanup(s.Shutdown)
		if !s.ReadyForConnections(30 * time.Second) {
			t.Fatal("NATS not ready within 30s")
		}
		return s
	}
	ns := startNATS()
	config := filepath.Join(dir, "gotyledon.yaml")
	yaml := fmt.Sprintf(`nats:
  url: [nats://127.0.0.1:%d]
queues:
  jobs: {capacity: 1000, store: jetstream, ack_wait: 1h}
services:
  idle: {command: [/bin/sleep, infinity], workers: 1}
`, port)
	if err := os.WriteFile(config, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	statuses := listenNotify(t, filepath.Join(run, "notify"))
	startManagerUntil(t, run, config, "JetStream queues served", "NOTIFY_SOCKET="+filepath.Join(run, "notify"))
	c := dialQueue(t, run)
	putN(t, c, 10)

	ns.Shutdown()
	ns.WaitForShutdown()
	waitStatus(t, statuses, "the queue shown disconnected", func(s string) bool { return strings.Contains(s, "jobs: jetstream disconnected") })
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	n, err := c.PutBatch(ctx, "jobs", [][]byte{[]byte("late")})
	cancel()
	if n != 0 || !errors.Is(err, ipc.ErrTimeout) {
		t.Fatalf("PutBatch with NATS down = %d, %v; want 0 stored, TIMEOUT", n, err)
	}

	startNATS()
	waitStatus(t, statuses, "the queue no longer shown disconnected", func(s string) bool { return !strings.Contains(s, "disconnected") })
	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if n, err := c.PutBatch(ctx, "jobs", [][]byte{[]byte("after")}); n != 1 || err != nil {
		t.Fatalf("PutBatch with NATS back = %d, %v; want 1 stored", n, err)
	}
	seen := drain(t, c, 11, 30*time.Second)
	var names []string
	for name := range seen {
		names = append(names, name)
	}
	slices.Sort(names)
	want := []string{"after"}
	for i := range 10 {
		want = append(want, fmt.Sprintf("item-%03d", i))
	}
	if !slices.Equal(names, want) {
		t.Fatalf("items after NATS came back: %q; want the 10 put before and after (late was answered TIMEOUT)", names)
	}
}

// listenNotify receives the sd_notify datagrams sent to path: each
// STATUS= text on the channel.
func listenNotify(t *testing.T, path string) <-chan string {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	out := make(chan string, 256)
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			for _, line := range strings.Split(string(buf[:n]), "\n") {
				if text, ok := strings.CutPrefix(line, "STATUS="); ok {
					select {
					case out <- text:
					default: // the test reads only what it waits for
					}
				}
			}
		}
	}()
	return out
}

// waitStatus waits for a STATUS= text that match accepts.
func waitStatus(t *testing.T, statuses <-chan string, what string, match func(string) bool) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	var last string
	for {
		select {
		case s := <-statuses:
			if match(s) {
				return
			}
			last = s
		case <-deadline:
			t.Fatalf("no STATUS= with %s within 30s; the last: %q", what, last)
		}
	}
}
