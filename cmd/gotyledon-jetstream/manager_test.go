package main

// These tests run the product as users do: gotyledon, built as the README
// builds it, runs a configuration with a JetStream queue on a local
// server; it finds gotyledon-jetstream next to its own binary and runs it
// as the bridge; the test is the queue's client, over the manager's queue
// socket. Every wait has a deadline and ends on an event (a log line, an
// exit, a reply).

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gotyledon/gotyledon/ipc"
)

// binDir is where builtBinaries builds; TestMain makes it, and removes it
// once the tests are done.
var binDir string

// builtBinaries builds gotyledon and gotyledon-jetstream, once per test
// binary, into binDir.
var builtBinaries = sync.OnceValues(func() (string, error) {
	dir := binDir
	for _, pkg := range []string{"./cmd/gotyledon", "./cmd/gotyledon-jetstream"} {
		cmd := exec.Command("go", "build", "-o", dir, pkg)
		cmd.Dir = "../.."
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
		}
	}
	return dir, nil
})

// managerProcess is a gotyledon run of a test.
type managerProcess struct {
	cmd    *exec.Cmd
	lines  chan string // its log, line by line; closed at its end
	exited chan struct{}
}

// startManager runs gotyledon on config and returns once its bridge
// serves the JetStream queues.
func startManager(t testing.TB, runDir, config string) *managerProcess {
	t.Helper()
	return startManagerUntil(t, runDir, config, "JetStream queues served")
}

// startManagerUntil runs gotyledon on config, with env added to its
// environment, and returns once it has logged a line holding ready.
func startManagerUntil(t testing.TB, runDir, config, ready string, env ...string) *managerProcess {
	t.Helper()
	bin, err := builtBinaries()
	if err != nil {
		t.Fatal(err)
	}
	m := &managerProcess{lines: make(chan string, 1024), exited: make(chan struct{})}
	m.cmd = exec.Command(filepath.Join(bin, "gotyledon"), "run", "--log-format", "json", "-c", config)
	m.cmd.Env = append(append(os.Environ(), "RUNTIME_DIRECTORY="+runDir), env...)
	stderr, err := m.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var tail []string
	var mu sync.Mutex
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			mu.Lock()
			tail = append(tail, sc.Text())
			mu.Unlock()
			select {
			case m.lines <- sc.Text():
			default: // nobody waits for lines now
			}
		}
		close(m.lines)
		_ = m.cmd.Wait()
		close(m.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-m.exited:
		default:
			_ = m.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-m.exited:
			case <-time.After(30 * time.Second):
				_ = m.cmd.Process.Kill()
				<-m.exited
			}
		}
		if t.Failed() {
			mu.Lock()
			t.Logf("manager log:\n%s", strings.Join(tail, "\n"))
			mu.Unlock()
		}
	})
	m.waitLine(t, ready)
	return m
}

// waitLine waits for a log line holding text.
func (m *managerProcess) waitLine(t testing.TB, text string) {
	t.Helper()
	deadline := time.After(60 * time.Second)
	for {
		select {
		case l, ok := <-m.lines:
			if !ok {
				t.Fatalf("manager exited before logging %q", text)
			}
			if strings.Contains(l, text) {
				return
			}
		case <-deadline:
			t.Fatalf("manager did not log %q within 60s", text)
		}
	}
}

func (m *managerProcess) stop(t *testing.T, sig syscall.Signal) {
	t.Helper()
	signalAndWait(t, "manager", m.cmd, m.exited, sig)
}

// jetstreamConfig is a manager's configuration with the queue jobs on a
// local JetStream server in dir.
func jetstreamConfig(t *testing.T, dir, ackWait string) string {
	t.Helper()
	return jetstreamConfigPack(t, dir, ackWait, 1)
}

// jetstreamConfigPack is jetstreamConfig with pack items to a message.
func jetstreamConfigPack(t *testing.T, dir, ackWait string, pack int) string {
	t.Helper()
	path := filepath.Join(dir, "gotyledon.yaml")
	yaml := fmt.Sprintf(`nats:
  local_dir: %s
queues:
  jobs: {capacity: 1000, store: jetstream, ack_wait: %s, pack: %d}
services:
  idle: {command: [/bin/sleep, infinity], workers: 1}
`, filepath.Join(dir, "jetstream"), ackWait, pack)
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// runDir is a short directory for the manager's sockets (a socket path
// has at most 107 bytes).
func runDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "gtyjs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func dialQueue(t *testing.T, run string) *ipc.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := ipc.Dial(ctx, filepath.Join(run, "queue.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// A manager killed with SIGKILL, with items queued and in flight, loses
// none of them: the next manager on the same files delivers them all, those
// in flight again once their ack wait has passed.
func TestManagerKilledLosesNoJetStreamItem(t *testing.T) {
	dir, run := t.TempDir(), runDir(t)
	config := jetstreamConfig(t, dir, "2s")
	m := startManager(t, run, config)
	c := dialQueue(t, run)
	putN(t, c, 100)
	getN(t, c, 10, 20*time.Second)
	m.stop(t, syscall.SIGKILL)

	startManager(t, run, config)
	seen := drain(t, dialQueue(t, run), 100, 60*time.Second)
	if len(seen) != 100 {
		t.Errorf("%d distinct items after the restart; want 100", len(seen))
	}
}

// A manager stopped with SIGTERM gives the items in flight back: the next
// manager hands them out at once, as second deliveries, long before their
// ack wait of an hour.
func TestManagerStopGivesJetStreamInFlightBack(t *testing.T) {
	dir, run := t.TempDir(), runDir(t)
	config := jetstreamConfig(t, dir, "1h")
	m := startManager(t, run, config)
	c := dialQueue(t, run)
	putN(t, c, 100)
	held := getN(t, c, 10, 20*time.Second)
	m.stop(t, syscall.SIGTERM)
	if code := m.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("manager exited %d on SIGTERM; want 0", code)
	}

	startManager(t, run, config)
	seen := drain(t, dialQueue(t, run), 100, 30*time.Second)
	for _, d := range held {
		if got := seen[string(d.Body)]; got != 2 {
			t.Errorf("%s, in flight at the stop, came back with deliveries %d; want 2", d.Body, got)
		}
	}
}

// A manager stopped with SIGTERM keeps its bridge until the other workers
// have exited: an item a worker finishes while it stops is acknowledged,
// and does not come back.
func TestManagerStopKeepsTheBridgeForTheWorkersLastAcks(t *testing.T) {
	dir, run := t.TempDir(), runDir(t)
	bin, err := builtBinaries()
	if err != nil {
		t.Fatal(err)
	}
	config := jetstreamConfig(t, dir, "1h")
	yaml, err := os.ReadFile(config)
	if err != nil {
		t.Fatal(err)
	}
	// The item's command takes 300 ms, the time a stopping bridge takes
	// a few times over.
	consumer := fmt.Sprintf("  consumer: {command: [%s, queue, consume, jobs, --, /bin/sh, -c, 'echo item-in-hand; sleep 0.3'], workers: 1}\n",
		filepath.Join(bin, "gotyledon"))
	if err := os.WriteFile(config, append(yaml, consumer...), 0o644); err != nil {
		t.Fatal(err)
	}
	m := startManager(t, run, config)
	putN(t, dialQueue(t, run), 1)
	m.waitLine(t, "item-in-hand")
	m.stop(t, syscall.SIGTERM)

	startManager(t, run, jetstreamConfig(t, dir, "1h")) // no consumer
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if ds, err := dialQueue(t, run).GetBatch(ctx, "jobs", 1); len(ds) != 0 || !errors.Is(err, ipc.ErrTimeout) {
		t.Fatalf("after the stop: GetBatch = %d items, %v; want none (it was acknowledged)", len(ds), err)
	}
}

// takeFromPacked puts 250 items to a queue of pack: 100 (three messages:
// items 0-99, 100-199, 200-249), takes 150 of them, acknowledges 0-119 and
// refuses 120-149. The second message is then part acknowledged, part
// refused, and part (150-199) fetched and not handed out.
func takeFromPacked(t *testing.T, c *ipc.Client) {
	t.Helper()
	putN(t, c, 250)
	held := getN(t, c, 150, 20*time.Second)
	for i, d := range held {
		if want := fmt.Sprintf("item-%03d", i); string(d.Body) != want || d.Deliveries != 1 {
			t.Fatalf("item %d handed out: %s (deliveries %d); want %s, first delivery", i, d.Body, d.Deliveries, want)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Ack(ctx, held[:120]...); err != nil {
		t.Fatal(err)
	}
	if err := c.Nack(ctx, held[120:]...); err != nil {
		t.Fatal(err)
	}
}

// A manager stopped with SIGTERM settles a message of several items
// whose items went different ways: what was refused or not handed out
// comes back at once, counted on, and what was acknowledged does not.
func TestManagerStopSettlesPackedMessages(t *testing.T) {
	dir, run := t.TempDir(), runDir(t)
	config := jetstreamConfigPack(t, dir, "1h", 100)
	m := startManager(t, run, config)
	takeFromPacked(t, dialQueue(t, run))
	m.stop(t, syscall.SIGTERM)

	startManager(t, run, config)
	seen := drain(t, dialQueue(t, run), 130, 30*time.Second)
	for i := range 250 {
		name := fmt.Sprintf("item-%03d", i)
		got, ok := seen[name]
		switch {
		case i < 120 && ok:
			t.Errorf("%s, acknowledged, came back (deliveries %d)", name, got)
		case i >= 120 && !ok:
			t.Errorf("%s did not come back", name)
		case i >= 120 && i < 150 && got != 2:
			t.Errorf("%s, refused once, came back with deliveries %d; want 2", name, got)
		case i >= 150 && i < 200 && got != 1:
			t.Errorf("%s, never handed out, came back with deliveries %d; want 1", name, got)
		}
	}
}

// A manager killed with SIGKILL loses no item of a message of several:
// the next manager delivers every item not acknowledged (with, at least
// once, the acknowledged ones of a message not settled).
func TestManagerKilledLosesNoPackedItem(t *testing.T) {
	dir, run := t.TempDir(), runDir(t)
	config := jetstreamConfigPack(t, dir, "2s", 100)
	m := startManager(t, run, config)
	takeFromPacked(t, dialQueue(t, run))
	m.stop(t, syscall.SIGKILL)

	startManager(t, run, config)
	c := dialQueue(t, run)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	seen := map[string]bool{}
	for missing := 130; missing > 0; {
		ds, err := c.GetBatch(ctx, "jobs", 100)
		if err != nil {
			t.Fatalf("with %d items not back: GetBatch: %v", missing, err)
		}
		for _, d := range ds {
			var i int
			if _, err := fmt.Sscanf(string(d.Body), "item-%d", &i); err != nil || i >= 250 {
				t.Fatalf("got %q, not an item put", d.Body)
			}
			if i >= 120 && !seen[string(d.Body)] {
				missing--
			}
			seen[string(d.Body)] = true
		}
		if err := c.Ack(ctx, ds...); err != nil {
			t.Fatal(err)
		}
	}
}

// status shows a JetStream queue with JetStream's figures: what waits, what
// is in flight, and that its store answers; so does /metrics.
func TestManagerStatusShowsJetStreamQueue(t *testing.T) {
	dir, run := t.TempDir(), runDir(t)
	startManager(t, run, jetstreamConfig(t, dir, "1h"))
	c := dialQueue(t, run)
	putN(t, c, 100)
	getN(t, c, 10, 20*time.Second)

	bin, err := builtBinaries()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(bin, "gotyledon"), "status", "--json")
	cmd.Env = append(os.Environ(), "RUNTIME_DIRECTORY="+run)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("gotyledon status --json: %v", err)
	}
	var doc struct {
		Queues []struct {
			Name       string `json:"name"`
			Depth      int    `json:"depth"`
			InFlight   int    `json:"in_flight"`
			Put        uint64 `json:"put_total"`
			Store      string `json:"store"`
			StoreState string `json:"store_state"`
		} `json:"queues"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	if len(doc.Queues) != 1 {
		t.Fatalf("status shows %d queues; want jobs: %s", len(doc.Queues), out)
	}
	q := doc.Queues[0]
	if q.Name != "jobs" || q.Store != "jetstream" || q.StoreState != "connected" || q.Depth != 90 || q.InFlight != 10 || q.Put != 100 {
		t.Errorf("status of jobs = %+v; want jetstream, connected, 90 waiting, 10 in flight, 100 put", q)
	}

	cmd = exec.Command(filepath.Join(bin, "gotyledon"), "status")
	cmd.Env = append(os.Environ(), "RUNTIME_DIRECTORY="+run)
	if out, err = cmd.Output(); err != nil {
		t.Fatalf("gotyledon status: %v", err)
	}
	if !strings.Contains(string(out), "jobs: kept in jetstream (connected)") {
		t.Errorf("gotyledon status does not say where jobs is kept:\n%s", out)
	}

	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", filepath.Join(run, "control.sock"))
	}}}
	resp, err := hc.Get("http://manager/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	metrics, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{`gotyledon_queue_depth{queue="jobs"} 90`, `gotyledon_queue_in_flight{queue="jobs"} 10`,
		`gotyledon_queue_store_up{queue="jobs",store="jetstream"} 1`} {
		if !strings.Contains(string(metrics), line+"\n") {
			t.Errorf("/metrics has no %s", line)
		}
	}
}
