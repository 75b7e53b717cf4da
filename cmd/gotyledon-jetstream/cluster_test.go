package main

// Several hosts, simulated: a three-node JetStream cluster in the test
// process on loopback ports, and two managers (each its own process, with
// its own sockets and its own bridge) pointed at it, as gotyledon runs on
// each host of a cluster.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// jsCluster is a three-node JetStream cluster on loopback ports.
type jsCluster struct {
	servers []*server.Server
	urls    []string
}

func startCluster(t *testing.T) *jsCluster {
	t.Helper()
	dir := t.TempDir()
	const nodes = 3
	clientPorts, routePorts := make([]int, nodes), make([]int, nodes)
	var routes []string
	for i := range nodes {
		clientPorts[i], routePorts[i] = freePort(t), freePort(t)
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", routePorts[i]))
	}
	c := &jsCluster{}
	for i := range nodes {
		s, err := server.NewServer(&server.Options{
			ServerName: fmt.Sprintf("n%d", i), Host: "127.0.0.1", Port: clientPorts[i],
			JetStream: true, StoreDir: filepath.Join(dir, fmt.Sprintf("n%d", i)), NoSigs: true, NoLog: true,
			Cluster: server.ClusterOpts{Name: "gotyledon-test", Host: "127.0.0.1", Port: routePorts[i]},
			Routes:  server.RoutesFromStr(strings.Join(routes, ",")),
		})
		if err != nil {
			t.Fatal(err)
		}
		s.Start()
		t.Cleanup(s.Shutdown)
		c.servers = append(c.servers, s)
		c.urls = append(c.urls, fmt.Sprintf("nats://127.0.0.1:%d", clientPorts[i]))
	}
	for _, s := range c.servers {
		if !s.ReadyForConnections(30 * time.Second) {
			t.Fatal("a cluster node not ready within 30s")
		}
	}
	// JetStream serves once the nodes have elected a leader of its meta
	// group; a manager started before would wait for it all the same.
	for deadline := time.Now().Add(30 * time.Second); !c.hasMetaLeader(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the cluster elected no JetStream leader within 30s")
		}
	}
	return c
}

func (c *jsCluster) hasMetaLeader() bool {
	for _, s := range c.servers {
		if s.JetStreamIsLeader() {
			return true
		}
	}
	return false
}

// clusterConfig is a host's manager configuration: the queue jobs,
// replicated on the three nodes.
func clusterConfig(t *testing.T, c *jsCluster, ackWait string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "gotyledon.yaml")
	yaml := fmt.Sprintf(`nats:
  url: [%s]
queues:
  jobs: {capacity: 100000, store: jetstream, replicas: 3, ack_wait: %s}
services:
  idle: {command: [/bin/sleep, infinity], workers: 1}
`, strings.Join(c.urls, ", "), ackWait)
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// Two hosts share a queue: what a producer on host A puts, consumers on A
// and on B take; when A's manager is killed with items in flight to A's
// consumer, B gets them, once their ack wait has passed. None is lost.
func TestTwoManagersShareAQueueAndSurviveAKill(t *testing.T) {
	c := startCluster(t)
	runA, runB := runDir(t), runDir(t)
	a := startManager(t, runA, clusterConfig(t, c, "2s"))
	startManager(t, runB, clusterConfig(t, c, "2s"))

	putN(t, dialQueue(t, runA), 100)
	held := getN(t, dialQueue(t, runA), 10, 20*time.Second)
	onB := dialQueue(t, runB)
	first := getN(t, onB, 90, 20*time.Second)
	for _, d := range first {
		for _, h := range held {
			// Delivered again to B is right once A's ack wait has passed
			// (on a loaded machine, it may have before B got here).
			if string(d.Body) == string(h.Body) && d.Deliveries == 1 {
				t.Fatalf("%s was handed to consumers on both hosts at once, both as a first delivery", d.Body)
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := onB.Ack(ctx, first...); err != nil {
		t.Fatal(err)
	}
	a.stop(t, syscall.SIGKILL)

	seen := drain(t, onB, 10, 30*time.Second)
	for _, h := range held {
		if got, ok := seen[string(h.Body)]; !ok || got < 2 {
			t.Errorf("%s, in flight on the killed host, came to B with deliveries %d (seen %v); want it, delivered again", h.Body, got, ok)
		}
	}
}

// Losing one node of the three loses no item of a queue kept on all three.
func TestClusterLosesNothingWithOneNodeDown(t *testing.T) {
	c := startCluster(t)
	run := runDir(t)
	startManager(t, run, clusterConfig(t, c, "30s"))
	client := dialQueue(t, run)
	putN(t, client, 100)
	c.servers[0].Shutdown()
	seen := drain(t, client, 100, 60*time.Second)
	if len(seen) != 100 {
		t.Errorf("%d distinct items with one node down; want 100", len(seen))
	}
}

// The three-host example in deploy/cluster, as shipped but for the hosts'
// addresses (here three ports of this machine): three Debian nats-server
// processes on deploy/cluster/nats-server.conf form a JetStream cluster,
// and a manager on deploy/cluster/gotyledon.yaml (its worker a sleep)
// serves the queue from it; with one node killed, nothing is lost.
func TestShippedClusterExample(t *testing.T) {
	const natsServer = "/usr/sbin/nats-server"
	if _, err := os.Stat(natsServer); err != nil {
		t.Skip("no Debian nats-server (.ci/run installs it)")
	}
	conf, err := os.ReadFile("../../deploy/cluster/nats-server.conf")
	if err != nil {
		t.Fatal(err)
	}
	yaml, err := os.ReadFile("../../deploy/cluster/gotyledon.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	clientPorts, routePorts := make([]int, 3), make([]int, 3)
	for i := range 3 {
		clientPorts[i], routePorts[i] = freePort(t), freePort(t)
	}
	// The hosts' addresses, as an operator writes them in.
	hosts := func(s string, port func(int) int, scheme string) string {
		for i := range 3 {
			s = strings.ReplaceAll(s, fmt.Sprintf("%s://host-%d:%d", scheme, i+1, port(-1)), fmt.Sprintf("%s://127.0.0.1:%d", scheme, port(i)))
		}
		return s
	}
	client := func(i int) int {
		if i < 0 {
			return 4222
		}
		return clientPorts[i]
	}
	route := func(i int) int {
		if i < 0 {
			return 6222
		}
		return routePorts[i]
	}
	var servers []*exec.Cmd
	for i := range 3 {
		c := hosts(string(conf), route, "nats")
		c = strings.Replace(c, "server_name: host-1", fmt.Sprintf("server_name: host-%d", i+1), 1)
		c = strings.Replace(c, "listen: 0.0.0.0:4222", fmt.Sprintf("listen: 127.0.0.1:%d", clientPorts[i]), 1)
		c = strings.Replace(c, "listen: 0.0.0.0:6222", fmt.Sprintf("listen: 127.0.0.1:%d", routePorts[i]), 1)
		c = strings.Replace(c, "store_dir: /var/lib/nats", "store_dir: "+filepath.Join(dir, fmt.Sprintf("host-%d", i+1)), 1)
		if strings.Contains(c, "://host-") || strings.Contains(c, "listen: 0.0.0.0") || strings.Contains(c, "store_dir: /var/lib") {
			t.Fatalf("the example's hosts were not all replaced:\n%s", c)
		}
		path := filepath.Join(dir, fmt.Sprintf("nats-%d.conf", i+1))
		if err := os.WriteFile(path, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(natsServer, "-c", path)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		servers = append(servers, cmd)
	}

	cfg := hosts(string(yaml), client, "nats")
	cfg = strings.Replace(cfg, "command: [/usr/local/bin/worker]", "command: [/bin/sleep, infinity]", 1)
	if strings.Contains(cfg, "://host-") || !strings.Contains(cfg, "/bin/sleep") {
		t.Fatalf("the example's hosts or worker were not replaced:\n%s", cfg)
	}
	cfgPath := filepath.Join(dir, "gotyledon.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	run := runDir(t)
	startManager(t, run, cfgPath) // its bridge waits for the cluster's JetStream
	q := dialQueue(t, run)
	putN(t, q, 100)
	_ = servers[0].Process.Kill()
	_ = servers[0].Wait()
	seen := drain(t, q, 100, 60*time.Second)
	if len(seen) != 100 {
		t.Errorf("%d distinct items with one node killed; want 100", len(seen))
	}
}
