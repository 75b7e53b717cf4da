package ipc_test

// The drain of a worker on a queue kept in JetStream: the broker forwards
// the queue to the JetStream bridge (jsstore.RunBridge, what
// gotyledon-jetstream runs, here in the test's process with its own
// JetStream server, reachable from no port), and the drained worker is a
// process of its own group (the test binary again, see
// TestIPCHelperProcess).

import (
	"context"
	"errors"
	"io"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/gotyledon/gotyledon/ipc"
	"github.com/gotyledon/gotyledon/ipc/jsstore"
)

const jsWait = 30 * time.Second // deadline of the bridge's start and stop

// jsBridge runs a JetStream bridge serving queue (its ack wait ackWait)
// on a local JetStream server in a fresh directory, until the test ends,
// and returns its socket and its status socket once it serves them.
func jsBridge(t *testing.T, queue string, ackWait time.Duration) (socket, status string) {
	t.Helper()
	dir := t.TempDir()
	socket, status = filepath.Join(dir, "bridge.sock"), filepath.Join(dir, "status.sock")
	served := make(chan struct{})
	var once sync.Once
	// Its log, whose lines go nowhere, says when it serves.
	core := zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(io.Discard), zapcore.InfoLevel)
	log := zap.New(core, zap.Hooks(func(e zapcore.Entry) error {
		if e.Message == "JetStream queues served" {
			once.Do(func() { close(served) })
		}
		return nil
	}))
	ctx, cancel := context.WithCancel(context.Background())
	ended := make(chan error, 1)
	go func() {
		ended <- jsstore.RunBridge(ctx, jsstore.BridgeConfig{
			Socket: socket, StatusSocket: status, LocalDir: filepath.Join(dir, "js"),
			Queues: []jsstore.Config{{Queue: queue, AckWait: ackWait}},
			Logger: log,
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-ended:
			if err != nil {
				t.Errorf("the bridge: %v", err)
			}
		case <-time.After(jsWait):
			t.Errorf("the bridge did not stop within %v", jsWait)
		}
	})
	select {
	case <-served:
	case err := <-ended:
		t.Fatalf("the bridge ended before it served: %v", err)
	case <-time.After(jsWait):
		t.Fatalf("the bridge did not serve within %v", jsWait)
	}
	return socket, status
}

// jsBroker starts a broker whose queue is forwarded to the store server at
// storeSocket, on a socket in t.TempDir(), and returns it and its socket.
func jsBroker(t *testing.T, queue, storeSocket string) (*ipc.Broker, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "q.sock")
	l, err := ipc.Listen(path, -1)
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	b, err := ipc.NewBroker(ipc.BrokerOptions{Queues: []ipc.QueueConfig{{Name: queue, Forward: true}}, StoreSocket: storeSocket})
	if err != nil {
		l.Close()
		t.Fatalf("NewBroker: %v", err)
	}
	served := make(chan error, 1)
	go func() { served <- b.Serve(l) }()
	t.Cleanup(func() {
		b.Close()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(jsWait):
			t.Errorf("Serve did not return within %v of Close", jsWait)
		}
	})
	return b, path
}

// A worker that consumes a JetStream queue with a prefetch of 10 and
// holds 3 items is drained as one of a memory queue is: the bridge's
// CONSUME is cancelled and ends DRAINING, the 7 prefetched items are given
// back and another consumer gets them at once (their ack wait is a minute;
// the scenario waits 20 s at most for them), the drain ends once the
// worker has acknowledged its 3, and each of the 100 items is
// acknowledged once: JetStream holds none of them after.
func TestDrainJetStreamPrefetchingWorker(t *testing.T) {
	bridge, status := jsBridge(t, "jobs", time.Minute)
	b, sock := jsBroker(t, "jobs", bridge)
	c := dial(t, sock)
	ipc.DrainWorkerScenario(t, b, sock, "jobs", c, func(worker int) int { return ipc.GroupHeld(b, worker) })
	if t.Failed() {
		return
	}
	if n, self := b.Acked(syscall.Getpgrp()), uint64(97); n != self {
		t.Errorf("Acked(the test's group) = %d, want %d", n, self)
	}
	// JetStream takes acknowledgements without confirming them: wait for
	// its figures to show them all.
	var last []ipc.StoreQueueStatus
	deadline := time.Now().Add(jsWait)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := ipc.FetchStoreStatus(ctx, status)
		cancel()
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("the bridge's status: %v", err)
		}
		if len(st) == 1 && st[0].Acked == 100 && st[0].InFlight == 0 && st[0].Waiting == 0 {
			break
		}
		last = st
		if time.Now().After(deadline) {
			t.Fatalf("JetStream's figures %+v: want the 100 items acknowledged, none waiting or in flight", last)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A worker's GET that waits on an empty JetStream queue is answered
// DRAINING when the worker is drained (the bridge's GET is cancelled), its
// next GET is answered DRAINING at once, and the drain ends, the worker
// holding nothing; an item put after goes to another worker.
func TestDrainJetStreamWaitingGet(t *testing.T) {
	bridge, _ := jsBridge(t, "jobs", time.Minute)
	b, sock := jsBroker(t, "jobs", bridge)
	c := dial(t, sock)
	worker, line := ipc.StartGroupHelper(t, sock, "drain-getter", "DRAIN_QUEUE=jobs")
	waitFor(t, "the worker's GET waiting on the bridge", func() bool { return ipc.GroupTakers(b, worker) == 1 })
	drained := b.Drain(worker)
	if l := line(); l != "get: draining" {
		t.Fatalf("the worker's waiting GET: %q, want it answered DRAINING", l)
	}
	if l := line(); l != "again: draining" {
		t.Fatalf("the worker's next GET: %q, want it answered DRAINING", l)
	}
	select {
	case <-drained:
	case <-time.After(jsWait):
		t.Fatalf("the drain did not end within %v; the worker holds %d items, waits on %d GETs",
			jsWait, ipc.GroupHeld(b, worker), ipc.GroupTakers(b, worker))
	}
	if err := c.Put(context.Background(), "jobs", []byte("after")); err != nil {
		t.Fatal(err)
	}
	if d := getOne(t, c, "jobs"); string(d.Body) != "after" || d.Deliveries != 1 {
		t.Fatalf("got %q (deliveries %d), want the item put after, first delivery", d.Body, d.Deliveries)
	}
}

// waitFor polls cond (the broker's state, which has no event to wait on)
// until it holds, or fails the test after jsWait.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(jsWait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
