package ipc

import "testing"

// What the tests of package ipc_test take from this package's tests and
// internals. Those that run the broker with the JetStream bridge
// (drain_jetstream_test.go) cannot be in package ipc: package jsstore
// imports it.

// DrainWorkerScenario is drainWorkerScenario (drain_test.go).
func DrainWorkerScenario(t *testing.T, b *Broker, socket, queue string, c *Client, inFlight func(worker int) int) {
	t.Helper()
	drainWorkerScenario(t, b, socket, queue, c, inFlight)
}

// StartGroupHelper starts helper mode (TestIPCHelperProcess) in a process
// group of its own, dialing socket, and returns its pid and a function
// that returns its next line of output (startGroupHelper).
func StartGroupHelper(t *testing.T, socket, mode string, env ...string) (pid int, line func() string) {
	t.Helper()
	p := startGroupHelper(t, socket, mode, env...)
	return p.cmd.Process.Pid, func() string { t.Helper(); return p.line(t) }
}

// GroupTakers is how many GETs and CONSUMEs of the connections of process
// group pgid wait on a store server.
func GroupTakers(b *Broker, pgid int) int {
	return sumOverGroup(b, pgid, func(c *conn) int { return c.fwdTakers })
}

// GroupHeld is how many items the connections of process group pgid hold:
// in flight from the broker's own queues, and handed them by a store
// server and not settled. A forwarded queue's figures are the store's, of
// the queue as a whole; this is the only count of what one worker holds.
func GroupHeld(b *Broker, pgid int) int {
	return sumOverGroup(b, pgid, func(c *conn) int { return c.inflight.len() + c.fwdHeld })
}

// sumOverGroup sums count, read under each connection's lock, over the
// connections of process group pgid.
func sumOverGroup(b *Broker, pgid int, count func(*conn) int) int {
	b.groupMu.Lock()
	defer b.groupMu.Unlock()
	g := b.groups[pgid]
	if g == nil {
		return 0
	}
	n := 0
	for c := range g.conns {
		c.mu.Lock()
		n += count(c)
		c.mu.Unlock()
	}
	return n
}
