package manager

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/gotyledon/gotyledon/config"
)

// The bridge is told each jetstream queue's settings in one --queue flag,
// the memory queues not at all.
func TestWithBridgeQueueFlags(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bridge := filepath.Join(dir, BridgeProgram)
	if err := os.WriteFile(bridge, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	src := "nats: {local_dir: js, bridge: " + bridge + "}\n" +
		"queues:\n" +
		"  jobs: {store: jetstream}\n" +
		"  bulk: {store: jetstream, capacity: 500, ack_wait: 1m, pack: 100}\n" +
		"  mem: {capacity: 5}\n" +
		"services:\n  web: {command: [/bin/true]}\n"
	cfg, err := config.Parse(filepath.Join(dir, "g.yaml"), []byte(src), nil)
	if err != nil {
		t.Fatal(err)
	}
	queueSocket := filepath.Join(dir, "queue.sock")
	out, err := withBridge(cfg, queueSocket)
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Services) != 2 || out.Services[1].Name != BridgeService {
		t.Fatalf("services %v, want web and %s", out.Services, BridgeService)
	}
	want := []string{bridge, "--socket", queueSocket + ".jetstream", "--status-socket", queueSocket + ".jetstream-status",
		"--queue", "name=jobs,capacity=10000,ack-wait=30s,replicas=1,pack=1",
		"--queue", "name=bulk,capacity=500,ack-wait=1m0s,replicas=1,pack=100",
		"--local-dir", filepath.Join(dir, "js")}
	if got := out.Services[1].Command; !slices.Equal(got, want) {
		t.Errorf("bridge command\n%q\nwant\n%q", got, want)
	}
}
