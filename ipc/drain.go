package ipc

import (
	"errors"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Draining a worker (PROTOCOL.md, "Who owns an item", rule 7). A worker is
// known by its process group: the manager starts each worker as the leader
// of a group of its own, so the group id is the worker's pid, and whatever
// the worker runs (a command per item, a pool) is in it. The broker reads
// the group of a connection's peer when it accepts the connection
// (getpgid of the SO_PEERCRED pid); a peer gone by then has none (-1), and
// no group's figures or drain touch its connection.
//
// What a drain keeps: a draining connection takes no more items (its GETs
// and CONSUMEs end DRAINING, new ones are answered so at once), but keeps
// acknowledging, NACKing and putting. The broker's own queues hold it to
// that under each queue's lock (queue.get, queue.consume,
// queue.drainWaiters); a forwarded queue's store server does not know of
// drains, so the connection cancels its GETs and CONSUMEs there and turns
// the CANCELLED that ends them into DRAINING (upstream.go).
//
// When a drain is over: no connection of the group holds an item. A
// connection holds what is in its in-flight table, what a store server
// handed it through its upstream and it has not settled (fwdHeld), and,
// while a forwarded GET or CONSUME of it has not ended (fwdTakers), what
// may still come for it. Every place that lowers one of these, and a
// connection's end, asks whether the group is drained (drainCheck).
//
// Locking: b.groupMu guards the groups and each pgroup's fields but
// acked. It is taken before a connection's mu, never after, and never
// under a queue's lock.

// pgroup is what the broker knows of one process group.
type pgroup struct {
	// acked counts the deliveries its connections acknowledged (ACK,
	// REPLY, and auto-ack GETs once written) since the group was first
	// seen or forgotten.
	acked atomic.Uint64
	// Guarded by b.groupMu.
	conns    map[*conn]struct{} // open, or whose store server has not let go
	draining bool
	drained  chan struct{} // made by Drain, closed once nothing is held
	closed   bool          // drained is closed
}

// minGroupPrune is the number of known groups from which the broker looks
// for groups to drop when it meets a new one.
const minGroupPrune = 64

// drainingMessage is DRAINING's message.
const drainingMessage = "this worker is being drained: it takes no more items; acknowledge those it holds"

// Drain marks process group pgid draining, so that the worker can be
// stopped without an item being handed to it in vain: every CONSUME of the
// group's connections ends at once with RESULT DRAINING, and every GET of
// theirs that waits is answered DRAINING; a later GET or CONSUME from one
// of them is answered DRAINING at once. PUT, ACK, NACK and REPLY keep
// working, so that the worker can finish what it holds. Connections of
// the group that open later are draining too. The channel returned is
// closed once no connection of the group holds an item in flight (each
// acknowledged, NACKed, or requeued by its connection's close): at once if
// none holds any. Drain is safe to call twice, which returns the same
// channel, and concurrently with everything; it does not block (what it
// asks a store server is sent from a goroutine of its own).
func (b *Broker) Drain(pgid int) <-chan struct{} {
	b.groupMu.Lock()
	g := b.groupLocked(pgid)
	if g.drained != nil {
		b.groupMu.Unlock()
		return g.drained
	}
	g.draining = true
	g.drained = make(chan struct{})
	conns := make([]*conn, 0, len(g.conns))
	for c := range g.conns {
		c.draining.Store(true)
		conns = append(conns, c)
	}
	ch := g.drained
	b.groupMu.Unlock()
	if len(conns) > 0 {
		// After the flags: a GET or CONSUME that checked its flag before
		// they were set is waiting by now, and found here.
		for _, q := range b.queues.Load().list {
			q.drainWaiters()
		}
		for _, c := range conns {
			c.drainUpstream()
		}
	}
	b.checkDrained(g)
	return ch
}

// Acked returns how many deliveries connections of process group pgid have
// acknowledged since the broker first saw the group or since Forget: ACKs
// (and REPLYs) of items found in flight, and items taken by auto-ack GETs
// once written to the connection. 0 for a group it does not know. Cheap
// and safe concurrently.
func (b *Broker) Acked(pgid int) uint64 {
	b.groupMu.Lock()
	g := b.groups[pgid]
	b.groupMu.Unlock()
	if g == nil {
		return 0
	}
	return g.acked.Load()
}

// Forget drops what the broker knows of process group pgid, its count of
// acknowledgements and its draining mark, as the worker's exit asks (its
// pid, hence its group id, will be another process's). Connections of the
// group still open count from 0 again and are no longer draining; a
// channel an earlier Drain returned is left as it was. Safe for an unknown
// group, and concurrently with everything.
//
// The broker also drops, by itself, groups none of whose connections is
// open and that have no process left (a client that is no worker, such as
// a command line's put), once it knows enough of them.
func (b *Broker) Forget(pgid int) {
	b.groupMu.Lock()
	defer b.groupMu.Unlock()
	g := b.groups[pgid]
	if g == nil {
		return
	}
	delete(b.groups, pgid)
	if len(g.conns) == 0 {
		return
	}
	fresh := &pgroup{conns: g.conns}
	g.conns = nil
	for c := range fresh.conns {
		c.group.Store(fresh)
		c.draining.Store(false)
	}
	b.groups[pgid] = fresh
}

// groupLocked returns the group pgid, made if the broker does not know
// it. Called with groupMu held.
func (b *Broker) groupLocked(pgid int) *pgroup {
	if g := b.groups[pgid]; g != nil {
		return g
	}
	if b.groups == nil {
		b.groups = make(map[int]*pgroup)
	}
	if len(b.groups) >= max(b.groupPrune, minGroupPrune) {
		b.pruneGroupsLocked()
	}
	g := &pgroup{conns: make(map[*conn]struct{})}
	b.groups[pgid] = g
	return g
}

// pruneGroupsLocked drops the groups that have no connection and no
// process left, then lets the map double before it looks again: the cost
// of a look is spread over the groups met since. Called with groupMu held.
func (b *Broker) pruneGroupsLocked() {
	for pgid, g := range b.groups {
		if len(g.conns) > 0 || (g.draining && !g.closed) {
			continue
		}
		if pgid <= 1 || errors.Is(unix.Kill(-pgid, 0), unix.ESRCH) {
			delete(b.groups, pgid)
		}
	}
	b.groupPrune = 2 * len(b.groups)
}

// processGroupOf is the process group of pid, or -1 if it cannot be read
// (the process is gone) or pid is not a process (-1).
func processGroupOf(pid int) int {
	if pid <= 0 {
		return -1
	}
	pgid, err := unix.Getpgid(pid)
	if err != nil {
		return -1
	}
	return pgid
}

// joinGroup enters a new connection in its process group (none for -1),
// draining if the group is.
func (b *Broker) joinGroup(c *conn) {
	if c.pgid < 0 {
		return
	}
	b.groupMu.Lock()
	defer b.groupMu.Unlock()
	g := b.groupLocked(c.pgid)
	g.conns[c] = struct{}{}
	c.group.Store(g)
	if g.draining {
		c.draining.Store(true)
	}
}

// leaveGroup takes a connection that holds nothing any more out of its
// group, and lets a drain that waited for it end.
func (b *Broker) leaveGroup(c *conn) {
	g := c.group.Load()
	if g == nil {
		return
	}
	b.groupMu.Lock()
	// Forget may have moved it to a fresh group since the load: look in
	// the one it is in now.
	g = c.group.Load()
	delete(g.conns, c)
	b.groupMu.Unlock()
	b.checkDrained(g)
}

// checkDrained closes g's drained channel if g drains and none of its
// connections holds an item.
func (b *Broker) checkDrained(g *pgroup) {
	b.groupMu.Lock()
	defer b.groupMu.Unlock()
	if !g.draining || g.closed {
		return
	}
	for c := range g.conns {
		if c.holding() {
			return
		}
	}
	g.closed = true
	close(g.drained)
}

// countAcked adds n acknowledged deliveries to the connection's group.
func (c *conn) countAcked(n int) {
	if n <= 0 {
		return
	}
	if g := c.group.Load(); g != nil {
		g.acked.Add(uint64(n))
	}
}

// drainCheck lets a drain of the connection's group end, if it waits for
// what the connection just gave up.
func (c *conn) drainCheck() {
	if !c.draining.Load() {
		return
	}
	if g := c.group.Load(); g != nil {
		c.b.checkDrained(g)
	}
}

// holding reports whether the connection holds an item, or may yet be
// handed one by a store server.
func (c *conn) holding() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.inflight.len() > 0 || c.fwdHeld > 0 || c.fwdTakers > 0
}

// replyDraining answers request id DRAINING.
func (c *conn) replyDraining(id uint32) {
	c.reply(id, statusDraining, 0, drainingMessage)
}
