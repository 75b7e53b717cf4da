package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gotyledon/gotyledon/ipc"
)

// envRunMain makes the test binary run main: the tests start the bridge
// as the separate process it is.
const envRunMain = "GOTYLEDON_JETSTREAM_TEST_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(envRunMain) == "1" {
		os.Args = append([]string{"gotyledon-jetstream"}, os.Args[1:]...)
		main()
		os.Exit(0)
	}
	if role := os.Getenv(sbRoleEnv); role != "" {
		os.Exit(storeBenchRole(role))
	}
	if os.Getenv(envStreamer) == "1" {
		os.Exit(streamer())
	}
	dir, err := os.MkdirTemp("", "gtyjs-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// bridge is a gotyledon-jetstream process of a test.
type bridge struct {
	cmd    *exec.Cmd
	socket string
	exited chan struct{}
}

// startBridge runs the bridge on a local JetStream server in dir and
// returns once it has said READY=1 on its notify socket.
func startBridge(t *testing.T, dir string, args ...string) *bridge {
	t.Helper()
	notify := filepath.Join(t.TempDir(), "notify")
	nl, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notify, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	b := &bridge{socket: filepath.Join(dir, "bridge.sock"), exited: make(chan struct{})}
	b.cmd = exec.Command(os.Args[0], append([]string{"--socket", b.socket, "--local-dir", filepath.Join(dir, "js"), "--log-level", "warn"}, args...)...)
	b.cmd.Env = append(os.Environ(), envRunMain+"=1", "NOTIFY_SOCKET="+notify)
	b.cmd.Stdout = os.Stderr
	b.cmd.Stderr = os.Stderr
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = b.cmd.Wait(); close(b.exited) }()
	t.Cleanup(func() { b.kill(t) })
	ready := make(chan string, 1)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := nl.Read(buf)
			if err != nil {
				return
			}
			if strings.Contains(string(buf[:n]), "READY=1") {
				ready <- string(buf[:n])
				return
			}
		}
	}()
	select {
	case <-ready:
	case <-b.exited:
		t.Fatalf("bridge exited before READY=1: %v", b.cmd.ProcessState)
	case <-time.After(30 * time.Second):
		t.Fatal("bridge not READY=1 within 30s")
	}
	return b
}

// stop signals the bridge and waits for its exit.
func (b *bridge) stop(t *testing.T, sig syscall.Signal) {
	t.Helper()
	signalAndWait(t, "bridge", b.cmd, b.exited, sig)
}

// signalAndWait sends sig to cmd (the test's bridge or manager, named
// what) and waits, 30 s at most, for exited to close.
func signalAndWait(t testing.TB, what string, cmd *exec.Cmd, exited <-chan struct{}, sig syscall.Signal) {
	t.Helper()
	_ = cmd.Process.Signal(sig)
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not exit within 30s of %v", what, sig)
	}
}

func (b *bridge) kill(t *testing.T) {
	select {
	case <-b.exited:
	default:
		b.stop(t, syscall.SIGKILL)
	}
}

func dial(t *testing.T, b *bridge) *ipc.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := ipc.Dial(ctx, b.socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func putN(t *testing.T, c *ipc.Client, n int) {
	t.Helper()
	items := make([][]byte, n)
	for i := range items {
		items[i] = fmt.Appendf(nil, "item-%03d", i)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if got, err := c.PutBatch(ctx, "jobs", items); got != n || err != nil {
		t.Fatalf("PutBatch = %d, %v; want %d", got, err, n)
	}
}

// getN gets n items without acknowledging them.
func getN(t *testing.T, c *ipc.Client, n int, within time.Duration) []*ipc.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	var out []*ipc.Delivery
	for len(out) < n {
		ds, err := c.GetBatch(ctx, "jobs", n-len(out))
		if err != nil {
			t.Fatalf("after %d of %d items: GetBatch: %v", len(out), n, err)
		}
		out = append(out, ds...)
	}
	return out
}

// drain gets and acknowledges items until want distinct ones have come,
// and returns how many times each came and with what Deliveries.
func drain(t *testing.T, c *ipc.Client, want int, within time.Duration) map[string]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	seen := make(map[string]int)
	for len(seen) < want {
		ds, err := c.GetBatch(ctx, "jobs", 100)
		if err != nil {
			t.Fatalf("after %d of %d items: GetBatch: %v", len(seen), want, err)
		}
		for _, d := range ds {
			seen[string(d.Body)] = max(seen[string(d.Body)], int(d.Deliveries))
		}
		if err := c.Ack(ctx, ds...); err != nil {
			t.Fatalf("Ack: %v", err)
		}
	}
	return seen
}

// A bridge that stops (SIGTERM) gives its items in flight back: a new
// bridge on the same files hands them out again at once, counted as
// delivered twice, long before their ack wait of an hour.
func TestBridgeStopGivesInFlightBack(t *testing.T) {
	dir := t.TempDir()
	b := startBridge(t, dir, "--queue", "name=jobs,capacity=1000,ack-wait=1h")
	c := dial(t, b)
	putN(t, c, 100)
	held := getN(t, c, 10, 10*time.Second)
	b.stop(t, syscall.SIGTERM)
	if code := b.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("bridge exited %d on SIGTERM; want 0", code)
	}

	b = startBridge(t, dir, "--queue", "name=jobs,capacity=1000,ack-wait=1h")
	seen := drain(t, dial(t, b), 100, 20*time.Second)
	for _, d := range held {
		if got := seen[string(d.Body)]; got != 2 {
			t.Errorf("%s, in flight at the stop, came back with deliveries %d; want 2", d.Body, got)
		}
	}
	if len(seen) != 100 {
		t.Errorf("%d distinct items; want 100", len(seen))
	}
}

// A bridge killed with SIGKILL gives nothing back, and loses nothing: the
// items it had handed out come back after their ack wait, the others at
// once.
func TestBridgeKilledLosesNothing(t *testing.T) {
	dir := t.TempDir()
	b := startBridge(t, dir, "--queue", "name=jobs,capacity=1000,ack-wait=1s")
	c := dial(t, b)
	putN(t, c, 100)
	getN(t, c, 10, 10*time.Second)
	b.stop(t, syscall.SIGKILL)

	b = startBridge(t, dir, "--queue", "name=jobs,capacity=1000,ack-wait=1s")
	seen := drain(t, dial(t, b), 100, 30*time.Second)
	if len(seen) != 100 {
		t.Errorf("%d distinct items; want 100", len(seen))
	}
}

// A client whose connection closes gives its items in flight back, at
// once: the next client gets them, delivered twice.
func TestBridgeClosedClientGivesInFlightBack(t *testing.T) {
	b := startBridge(t, t.TempDir(), "--queue", "name=jobs,ack-wait=1h")
	first := dial(t, b)
	putN(t, first, 3)
	held := getN(t, first, 3, 10*time.Second)
	first.Close()
	seen := drain(t, dial(t, b), 3, 20*time.Second)
	for _, d := range held {
		if got := seen[string(d.Body)]; got != 2 {
			t.Errorf("%s came back with deliveries %d; want 2", d.Body, got)
		}
	}
}

// A full queue holds the producer back: a PUT that may not wait is
// refused, one that waits is taken once a consumer made room.
func TestBridgeFullQueueHoldsPutBack(t *testing.T) {
	b := startBridge(t, t.TempDir(), "--queue", "name=jobs,capacity=2")
	c := dial(t, b)
	putN(t, c, 2)
	if err := c.TryPut("jobs", []byte("third")); err == nil || !strings.Contains(err.Error(), "FULL") {
		t.Fatalf("TryPut on a full queue = %v; want FULL", err)
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		done <- c.Put(ctx, "jobs", []byte("third"))
	}()
	consumer := dial(t, b)
	ds := getN(t, consumer, 1, 10*time.Second)
	if err := consumer.Ack(context.Background(), ds...); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Put waiting for room: %v", err)
	}
	seen := drain(t, consumer, 2, 10*time.Second)
	if _, ok := seen["third"]; !ok {
		t.Errorf("the waiting put's item did not come: %v", seen)
	}
}

// A bridge started again hands out delivery ids above every id the one
// before it did: a broker connection that outlives a bridge may still ACK
// an old id, and must not settle a new bridge's item with it.
func TestBridgeRestartHandsOutNewDeliveryIDs(t *testing.T) {
	dir := t.TempDir()
	b := startBridge(t, dir, "--queue", "name=jobs,ack-wait=1h")
	c := dial(t, b)
	putN(t, c, 2)
	old := getN(t, c, 2, 10*time.Second)
	b.stop(t, syscall.SIGTERM)

	b = startBridge(t, dir, "--queue", "name=jobs,ack-wait=1h")
	again := getN(t, dial(t, b), 2, 20*time.Second)
	for _, d := range again {
		for _, o := range old {
			if d.ID <= o.ID {
				t.Errorf("the new bridge handed out delivery %d, not above the old bridge's %d", d.ID, o.ID)
			}
		}
	}
}
