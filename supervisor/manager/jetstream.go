package manager

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/gotyledon/gotyledon/config"
	"github.com/gotyledon/gotyledon/ipc"
	"github.com/gotyledon/gotyledon/supervisor"
)

// JetStream queues. Their items are kept by gotyledon-jetstream, a program
// of its own (NATS is not linked into the manager, which every Go worker
// and command starts), which the manager runs as one more service,
// BridgeService, and to which the broker forwards the requests on those
// queues. The service's command holds everything the bridge is told, so a
// reload that changes the JetStream queues or the nats: section changes
// the command, and the supervisor restarts the bridge like any service
// whose definition changed; any other reload leaves it alone.

// BridgeService is the name of the service that runs gotyledon-jetstream.
// It cannot clash with a configured service: a configured name starts
// with a letter.
const BridgeService = "_jetstream"

// BridgeProgram is the bridge's program name: looked for next to the
// manager's own binary, then in $PATH, unless nats.bridge names it.
const BridgeProgram = "gotyledon-jetstream"

// ErrNoBridge is wrapped by the error of a configuration with JetStream
// queues when the bridge program cannot be found.
var ErrNoBridge = errors.New(BridgeProgram + " not found")

// bridgeSocket is the Unix socket the bridge serves the broker on, beside
// the queue socket; bridgeStatusSocket, where it says how its queues are.
func bridgeSocket(queueSocket string) string       { return queueSocket + ".jetstream" }
func bridgeStatusSocket(queueSocket string) string { return queueSocket + ".jetstream-status" }

// FindBridge is the bridge program a manager on n runs: nats.bridge, else
// gotyledon-jetstream next to the manager's binary, else in $PATH. Its
// error wraps ErrNoBridge.
func FindBridge(n *config.NATS) (string, error) {
	if n.Bridge != "" {
		if st, err := os.Stat(n.Bridge); err != nil || !st.Mode().IsRegular() || st.Mode()&0o111 == 0 {
			return "", fmt.Errorf("store jetstream: nats.bridge %s: %w (not an executable file)", n.Bridge, ErrNoBridge)
		}
		return n.Bridge, nil
	}
	if p, ok := FindCompanion(BridgeProgram); ok {
		return p, nil
	}
	return "", fmt.Errorf("store jetstream: %w next to the manager's binary nor in $PATH (install it, or set nats.bridge to its path)", ErrNoBridge)
}

// FindCompanion finds a program installed with gotyledon (the JetStream
// bridge, the live view): name next to this process's binary, else in
// $PATH.
func FindCompanion(name string) (string, bool) {
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, true
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, true
	}
	return "", false
}

// withBridge returns cfg with the bridge's service added when it has
// JetStream queues (cfg itself otherwise, unchanged).
func withBridge(cfg *config.Config, queueSocket string) (*config.Config, error) {
	qs := cfg.JetStreamQueues()
	if len(qs) == 0 {
		return cfg, nil
	}
	program, err := FindBridge(cfg.NATS)
	if err != nil {
		return nil, err
	}
	sock, status := bridgeSocket(queueSocket), bridgeStatusSocket(queueSocket)
	if len(status) > config.MaxSocketPath {
		return nil, fmt.Errorf("store jetstream: the bridge's socket %s is longer than a Unix socket path may be (%d bytes); give broker.socket a shorter path", status, config.MaxSocketPath)
	}
	n := cfg.NATS
	cmd := []string{program, "--socket", sock, "--status-socket", status}
	for _, q := range qs {
		cmd = append(cmd, "--queue", "name="+q.Name+",capacity="+strconv.Itoa(q.Capacity)+
			",ack-wait="+q.AckWait.String()+",replicas="+strconv.Itoa(q.Replicas)+
			",pack="+strconv.Itoa(q.Pack))
	}
	if n.LocalDir != "" {
		cmd = append(cmd, "--local-dir", n.LocalDir)
		switch {
		case n.SyncAlways:
			cmd = append(cmd, "--sync", "always")
		case n.SyncInterval > 0:
			cmd = append(cmd, "--sync", n.SyncInterval.String())
		}
	}
	for _, u := range n.URLs {
		cmd = append(cmd, "--url", u)
	}
	for _, f := range []struct{ flag, path string }{
		{"--creds", n.Creds}, {"--nkey", n.NKey}, {"--tls-ca", n.TLSCA}, {"--tls-cert", n.TLSCert}, {"--tls-key", n.TLSKey},
	} {
		if f.path != "" {
			cmd = append(cmd, f.flag, f.path)
		}
	}
	svc := &config.Service{
		Name:    BridgeService,
		Command: cmd,
		Workers: 1,
		Env:     map[string]string{},
		// A bridge stopping gives its items in flight back to JetStream.
		// At a shutdown it is told to stop once the other workers have
		// exited: their last acknowledgements go through it.
		StopSignal:  config.DefaultStopSignal,
		StopTimeout: cfg.ShutdownTimeout,
		StopLast:    true,
		Ready:       config.ReadyNotify,
		// A local server recovers its files before it is ready.
		ReadyTimeout: config.DefaultReadyTimeout,
		Restart: config.Restart{
			MinUptime:      config.DefaultMinUptime,
			BackoffInitial: config.DefaultBackoffInitial,
			BackoffMax:     5 * time.Second,
		},
		Pos: n.Pos,
	}
	out := *cfg
	out.Services = append(slices.Clone(cfg.Services), svc)
	return &out, nil
}

// watchdogQueues is stats for the STATUS= line, which the watchdog's path
// computes without waiting for the bridge: a JetStream queue's figures
// are the bridge's, so such a queue is left out, or shown disconnected
// while the bridge's own STATUS= says it lost NATS.
func watchdogQueues(stats []ipc.QueueStats, st supervisor.Status) []ipc.QueueStats {
	lost := false
	for _, sv := range st.Services {
		if sv.Name != BridgeService {
			continue
		}
		for _, w := range sv.Workers {
			lost = lost || w.StatusText == ipc.StatusStoreLost
		}
	}
	out := stats[:0]
	for _, q := range stats {
		if q.Forwarded {
			if !lost {
				continue
			}
			q.Store, q.StoreState = string(config.StoreJetStream), "disconnected"
		}
		out = append(out, q)
	}
	return out
}
