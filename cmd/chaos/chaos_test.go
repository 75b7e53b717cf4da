package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestMain makes the test binary what the chaos binary is: the manager the
// harness starts re-executes it (CHAOS_MANAGER=1, `run ...`), and so do
// its Go workers.
func TestMain(m *testing.M) {
	if isManagerOrWorker() {
		os.Exit(chaosProgram().Main(os.Args))
	}
	os.Exit(m.Run())
}

// TestChaosShort runs the whole harness for 5 s: every kind of action
// happens at least once (the schedule starts with one of each), and every
// proof must pass.
func TestChaosShort(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a manager for about 10 s")
	}
	opts := defaultOptions()
	opts.Duration = 5 * time.Second
	out := runChaos(t, opts, 2*time.Minute, "PASS items", "PASS duplicates", "PASS resources", "PASS shutdown", "PASS actions")
	for _, kind := range actionKinds {
		if kind == "bad-edit" && !strings.Contains(out, "bad edit (") || kind == "kill" && !strings.Contains(out, "(SIGKILL)") ||
			kind == "stop" && !strings.Contains(out, "(SIGSTOP)") || kind == "rescale" && !strings.Contains(out, "rescale consumer to") ||
			kind == "garbage" && !strings.Contains(out, "garbage: ") {
			t.Errorf("no %s action in the run", kind)
		}
	}
}

// TestChaosShortJetStream runs the harness on a JetStream queue for 8 s:
// the manager is killed at least once (SIGKILL, its workers with it) and
// started again, and every proof must pass: no item lost.
func TestChaosShortJetStream(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a manager for about 15 s")
	}
	bridge := filepath.Join(t.TempDir(), "gotyledon-jetstream")
	build := exec.Command("go", "build", "-o", bridge, "../gotyledon-jetstream")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the bridge: %v\n%s", err, out)
	}
	opts := defaultOptions()
	opts.Duration = 8 * time.Second
	opts.Store, opts.Bridge = "jetstream", bridge
	runChaos(t, opts, 3*time.Minute, "PASS items", "PASS duplicates", "PASS unannounced", "PASS shutdown", "PASS actions", "kill the manager pid")
}

// runChaos runs the harness with opts (a fresh seed, 200 items a second)
// within the time given, fails the test if a proof failed or the output
// lacks one of want, and returns the output.
func runChaos(t *testing.T, opts options, within time.Duration, want ...string) string {
	t.Helper()
	opts.Seed = uint64(time.Now().UnixNano())
	opts.Rate = 200
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	w := &testWriter{t: t}
	err := run(ctx, opts, w)
	out := w.String()
	if err != nil {
		t.Fatalf("chaos (seed %d): %v", opts.Seed, err)
	}
	for _, wanted := range want {
		if !strings.Contains(out, wanted) {
			t.Errorf("output lacks %q", wanted)
		}
	}
	return out
}

// testWriter logs each line to t and keeps the whole output.
type testWriter struct {
	t  *testing.T
	mu sync.Mutex
	b  strings.Builder
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.b.Write(p)
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (w *testWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// Over a long run pids are reused: the log parser must keep two processes
// with the same pid, and their items, apart.
func TestLogStateKeepsReusedPIDsApart(t *testing.T) {
	s := newLogState(nil)
	for _, l := range []string{
		`{"msg":"worker started","service":"producer","pid":5}`,
		`{"msg":"producer 5.0000000a","stream":"stdout","service":"producer","pid":5}`,
		`{"msg":"produced 5.0000000a-0","stream":"stdout","service":"producer","pid":5}`,
		`{"msg":"produced 5.0000000a-1","stream":"stdout","service":"producer","pid":5}`,
		`{"msg":"worker exited","service":"producer","pid":5,"status":"killed by SIGKILL"}`,
		// pid 5 again, a consumer now: it takes the first producer's item 1
		// and exits cleanly.
		`{"msg":"worker started","service":"consumer","pid":5}`,
		`{"msg":"consumed 5.0000000a-1","stream":"stdout","service":"consumer","pid":5}`,
		`{"msg":"worker exited","service":"consumer","pid":5,"status":"exit code 0"}`,
		// and again a producer, starting its numbering afresh.
		`{"msg":"worker started","service":"producer","pid":5}`,
		`{"msg":"producer 5.0000000b","stream":"stdout","service":"producer","pid":5}`,
		`{"msg":"produced 5.0000000b-0","stream":"stdout","service":"producer","pid":5}`,
		`{"msg":"worker started","service":"consumer","pid":9}`,
		`{"msg":"consumed 5.0000000a-0","stream":"stdout","service":"consumer","pid":9}`,
		`{"msg":"consumed 5.0000000b-0","stream":"stdout","service":"consumer","pid":9}`,
	} {
		s.line([]byte(l))
	}
	if len(s.seqGaps) != 0 || len(s.badLines) != 0 {
		t.Errorf("gaps %v, bad lines %v: a reused pid was taken for the same producer", s.seqGaps, s.badLines)
	}
	if len(s.origins) != 2 || s.origins[0].announced != 2 || s.origins[1].announced != 1 {
		t.Fatalf("origins %+v, want two: 2 items and 1", s.origins)
	}
	first, second := s.procs[s.origins[0].proc], s.procs[s.origins[1].proc]
	if !first.bySignal() || second.exit != "" || first.pid != 5 || second.pid != 5 {
		t.Errorf("producers %+v and %+v: want the first killed, the second running, both pid 5", first, second)
	}
	if len(s.consumed) != 3 {
		t.Errorf("%d items consumed, want 3 distinct", len(s.consumed))
	}
	if r := s.consumed[0<<32|1]; s.procs[r.first].service != "consumer" || s.procs[r.first].exit != "exit code 0" {
		t.Errorf("item 1 first taken by %+v, want the consumer that had pid 5", s.procs[r.first])
	}
}
