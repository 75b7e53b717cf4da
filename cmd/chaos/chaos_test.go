package main

import (
	"context"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gotyledon/gotyledon/cmd/cli"
)

// TestMain makes the test binary what the chaos binary is: the manager the
// harness starts re-executes it (CHAOS_MANAGER=1, `run ...`), and so do
// its Go workers.
func TestMain(m *testing.M) {
	if isManagerOrWorker() {
		os.Exit(cli.Main(os.Args, registry()))
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
	opts.Seed = uint64(time.Now().UnixNano())
	opts.Rate = 200
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	w := &testWriter{t: t}
	err := run(ctx, opts, w)
	out := w.String()
	if err != nil {
		t.Fatalf("chaos (seed %d): %v", opts.Seed, err)
	}
	for _, want := range []string{"PASS items", "PASS duplicates", "PASS resources", "PASS shutdown", "PASS actions"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q", want)
		}
	}
	for _, kind := range actionKinds {
		if kind == "bad-edit" && !strings.Contains(out, "bad edit (") || kind == "kill" && !strings.Contains(out, "(SIGKILL)") ||
			kind == "stop" && !strings.Contains(out, "(SIGSTOP)") || kind == "rescale" && !strings.Contains(out, "rescale consumer to") ||
			kind == "garbage" && !strings.Contains(out, "garbage: ") {
			t.Errorf("no %s action in the run", kind)
		}
	}
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
