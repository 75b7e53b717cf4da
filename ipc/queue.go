package ipc

import (
	"slices"
	"sync"
	"time"
)

// queue is one named queue of the broker and the only place that decides
// who owns an item. Its rules are those of PROTOCOL.md ("Who owns an
// item"):
//
//  1. A PUT that replied OK (or accepted n) put its items in the queue: from
//     then on the broker owns them until they are delivered.
//  2. A GET without auto-ack, or a CONSUME's push, hands an item to the
//     connection that asked: the item is in flight, owned by that
//     connection, under a delivery id unique in the broker. deliveries
//     counts how many times that item has been handed out, this time
//     included. A CONSUME never has more than its prefetch of its items in
//     flight: each ACK or NACK of one of them lets one more be pushed.
//  3. An ACK from the owning connection removes the item for good.
//  4. A NACK from the owning connection, or the close of the owning
//     connection for any reason, puts the item back at the head of its
//     queue, ahead of items never delivered; items requeued together keep
//     their delivery order. They will be delivered again with deliveries one
//     higher.
//  5. An auto-ack GET removes the item when it is written to the socket: if
//     the consumer dies before it handles it, it is lost (at most once).
//     Without auto-ack, an item is lost only if the manager itself dies (at
//     least once).
//  6. Capacity bounds the items waiting in the queue, not those in flight. A
//     requeue never waits and never fails, even past capacity: nothing in
//     flight is ever dropped to make room.
//  7. A connection of a draining worker (Broker.Drain) is handed no more
//     items: its waiting GETs and its CONSUMEs end DRAINING, and a later
//     GET or CONSUME of it is answered DRAINING at once. What it holds
//     stays its own, under rules 3 and 4: its ACKs, NACKs and PUTs work as
//     before, and the drain is over once it holds nothing.
//
// How this file keeps them: waiting items are a ring (FIFO; a requeue
// pushes at the head). take (rule 2) moves items from the ring to a
// connection's in-flight table (conn.inflight) in the same critical section
// that assigns their delivery ids, so an item is always in exactly one
// place: the ring, one connection's in-flight table, or an ITEMS reply not
// yet written (auto-ack, rule 5: it leaves the broker once the connection's
// writer has written the reply; a connection that ends before that, or
// whose writer stops first, requeues it).
// ack (rule 3) and requeue (rule 4) are called only with items a connection
// removed from its own table, so another connection's deliveries are never
// touched. put never grows the ring past capacity; requeue does (rule 6).
//
// Waiting requests: GETs wait in arrival order while the ring is empty and
// are served in that order; PUTs wait in arrival order while it is full and
// take room as it frees, the oldest first, so the items of one connection's
// PUTs enter the queue in the order they were sent. A waiting PUT's
// accepted items are queued at once (they are its first n). A CONSUME
// waits among the GETs while it has credit (prefetch less its items in
// flight); each time it is served it goes to the back of the line if it has
// credit left, so consumers take turns, and it leaves the line, parked,
// until an ACK or NACK gives it credit again. It ends only by CANCEL, the
// queue's removal, the broker's shutdown or its connection's close.
//
// Removal (Broker.SetQueues): a queue is removed only while, under q.mu, it
// holds no item (ring, in flight, or waiting PUT), so no item is ever lost
// with it; removed, set under the same lock, turns away the requests that
// found the queue in the set just replaced, and the GETs waiting on it are
// answered. Nothing can be requeued to it later: nothing was in flight.
//
// Items are never copied: an item's body is a slice of the buffer its PUT
// frame was read into (frameReader.read with keep), and that buffer stays
// alive, through the garbage collector, as long as any item sliced from it
// does. The cost is that a small item can keep its whole frame (at most
// max_frame) alive; the bound on the broker's memory is unchanged by it
// (waiting plus in-flight items times max_frame, against times max_item),
// and a consumer keeping up frees whole frames, since a PUT's items are
// contiguous in the ring.
//
// Locking: q.mu guards everything below it. Under q.mu the queue calls into
// connections (conn.deliver, conn.reply), which take conn.mu: the order is
// always q.mu then conn.mu, never the reverse. Nothing under q.mu blocks on
// I/O: replies go to the connection's outbox, which its writer drains.
type queue struct {
	name     string
	capacity int // guarded by mu; written by SetQueues under mu and b.setMu
	b        *Broker

	mu       sync.Mutex
	ring     ring
	gets     []*waiter // waiting GETs, oldest first; done ones are skipped
	puts     []*waiter // waiting PUTs, oldest first
	deadGets int       // done waiters still in gets
	deadPuts int
	// consumers are the live CONSUMEs, in gets or parked out of it.
	consumers []*waiter
	closed    bool // the broker is shutting down
	removed   bool // SetQueues removed it: requests that still found it get NO_SUCH_QUEUE
	inFlight  int
	stats     counters
	tasks     taskCounters // taskstats.go
	// by is the connection whose reader is in the queue now, or nil (a
	// timer, a connection's cleanup): what it hands to other connections
	// it writes out itself at its next flush (conn.wakeFor).
	by *conn
}

// enter locks the queue for by's reader (nil: for anyone else); leave
// unlocks it.
func (q *queue) enter(by *conn) {
	q.mu.Lock()
	q.by = by
}

func (q *queue) leave() {
	q.by = nil
	q.mu.Unlock()
}

type counters struct {
	put, delivered, acked, redelivered uint64
}

// item is one item of a queue.
type item struct {
	body       []byte
	deliveries uint32   // times handed out so far
	req        *request // a task's: who wants its outcome (tasks.go); nil for a PUT's item
}

// waiter is a GET or PUT that waits. Its fields are guarded by q.mu.
type waiter struct {
	q    *queue
	c    *conn
	id   uint32
	get  bool
	done bool // answered (served, timed out, cancelled or shut down)
	// GET
	max     int
	autoAck bool
	// CONSUME: prefetch is its credit limit, outstanding its items in
	// flight; inGets whether it is in gets (a GET always is until done).
	consume     bool
	prefetch    int
	outstanding int
	inGets      bool
	// PUT: items not yet accepted, and how many were; a SUBMIT's
	// tasks have their requests in reqs, beside items.
	items    [][]byte
	reqs     []*request
	accepted int
	held     int // bytes of items when it started waiting, for flow control
	// stopTimer stops the timeout's timer; nil without a timeout.
	stopTimer func() bool
}

// ring is a growable circular deque of items.
type ring struct {
	buf        []item
	head, size int
}

func (r *ring) grow() {
	n := max(16, 2*len(r.buf))
	buf := make([]item, n)
	for i := range r.size {
		buf[i] = r.buf[(r.head+i)%len(r.buf)]
	}
	r.buf, r.head = buf, 0
}

func (r *ring) pushBack(it item) {
	if r.size == len(r.buf) {
		r.grow()
	}
	r.buf[(r.head+r.size)%len(r.buf)] = it
	r.size++
}

func (r *ring) pushFront(it item) {
	if r.size == len(r.buf) {
		r.grow()
	}
	r.head = (r.head - 1 + len(r.buf)) % len(r.buf)
	r.buf[r.head] = it
	r.size++
}

func (r *ring) front() *item { return &r.buf[r.head] }

func (r *ring) popFront() item {
	it := r.buf[r.head]
	r.buf[r.head] = item{} // let the frame buffer go
	r.head = (r.head + 1) % len(r.buf)
	r.size--
	return it
}

// put is a PUT, or with reqs (one per item) a SUBMIT: it queues what fits
// now and answers, or leaves the rest waiting (timeoutMS > 0) behind the
// PUTs already waiting. Items must be checked against max_item by the
// caller (TOO_LARGE queues nothing).
func (q *queue) put(c *conn, id, timeoutMS uint32, items [][]byte, reqs []*request) {
	q.enter(c)
	defer q.leave()
	if q.closed {
		c.reply(id, statusShuttingDown, 0, "broker shutting down")
		return
	}
	if q.removed { // the request read the set before SetQueues replaced it
		c.reply(id, statusNoSuchQueue, 0, "no queue "+q.name)
		return
	}
	w := &waiter{q: q, c: c, id: id, items: items, reqs: reqs}
	// Behind waiting PUTs nothing is accepted (FIFO); otherwise take room
	// until there is none, letting waiting GETs drain the ring meanwhile.
	for q.livePuts() == 0 && len(w.items) > 0 && q.ring.size < q.capacity {
		q.accept(w)
		q.serve()
	}
	switch {
	case len(w.items) == 0:
		c.reply(id, statusOK, uint32(w.accepted), "")
	case timeoutMS == 0:
		c.reply(id, statusFull, uint32(w.accepted), "queue full")
	default:
		for _, it := range w.items {
			w.held += len(it)
		}
		q.puts = append(q.puts, w)
		q.wait(w, timeoutMS)
	}
}

// get is a GET: it hands out up to max items now, or waits (timeoutMS > 0)
// for the first one behind the GETs already waiting.
func (q *queue) get(c *conn, id, timeoutMS uint32, maxItems int, autoAck bool) {
	q.enter(c)
	defer q.leave()
	if q.closed {
		c.reply(id, statusShuttingDown, 0, "broker shutting down")
		return
	}
	if q.removed {
		c.reply(id, statusNoSuchQueue, 0, "no queue "+q.name)
		return
	}
	if c.draining.Load() { // under q.mu: see drainWaiters
		c.replyDraining(id)
		return
	}
	w := &waiter{q: q, c: c, id: id, get: true, max: maxItems, autoAck: autoAck}
	if q.ring.size > 0 && q.liveGets() == 0 {
		q.take(w)
		q.serve()
		return
	}
	if timeoutMS == 0 {
		c.reply(id, statusTimeout, 0, "queue empty")
		return
	}
	q.gets = append(q.gets, w)
	q.wait(w, timeoutMS)
}

// consume is a CONSUME: from now on the queue pushes items to c, at most
// prefetch of them unacknowledged, until CANCEL or c goes away.
func (q *queue) consume(c *conn, id uint32, prefetch int) {
	q.enter(c)
	defer q.leave()
	if q.closed {
		c.reply(id, statusShuttingDown, 0, "broker shutting down")
		return
	}
	if q.removed {
		c.reply(id, statusNoSuchQueue, 0, "no queue "+q.name)
		return
	}
	if c.draining.Load() {
		c.replyDraining(id)
		return
	}
	w := &waiter{q: q, c: c, id: id, get: true, consume: true, prefetch: prefetch, inGets: true}
	q.consumers = append(q.consumers, w)
	q.gets = append(q.gets, w)
	c.addWaiter(w)
	q.serve()
}

// release gives the CONSUME w credit for n of its items that were acked or
// NACKed by by's reader: it takes its turn again if it had none.
func (q *queue) release(w *waiter, n int, by *conn) {
	q.enter(by)
	defer q.leave()
	w.outstanding -= n
	if w.done || w.inGets || w.outstanding >= w.prefetch {
		return
	}
	w.inGets = true
	q.gets = append(q.gets, w)
	if !q.closed {
		q.serve()
	}
}

// wait registers w with its connection (for CANCEL) and arms its timeout.
// The timer may fire after w was answered, if retire's stop came too late:
// finish then finds w done and does nothing, whatever request now has w's id.
func (q *queue) wait(w *waiter, timeoutMS uint32) {
	w.c.addWaiter(w)
	if timeoutMS != waitForever {
		w.stopTimer = q.b.clock.afterFunc(time.Duration(timeoutMS)*time.Millisecond, func() {
			q.finish(w, statusTimeout, "timed out")
		})
	}
}

// finish answers w with status if it still waits: a timeout, a CANCEL, the
// connection going away (status 0: no answer) or the broker shutting down.
// It reports whether w was still waiting.
func (q *queue) finish(w *waiter, status uint16, message string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.finishLocked(w, status, message)
}

func (q *queue) finishLocked(w *waiter, status uint16, message string) bool {
	if w.done {
		return false
	}
	q.retire(w)
	if status != statusOK {
		w.c.reply(w.id, status, uint32(w.accepted), message)
	}
	return true
}

// retire marks w answered and forgets it everywhere.
func (q *queue) retire(w *waiter) {
	w.done = true
	w.items, w.reqs = nil, nil
	if w.stopTimer != nil {
		w.stopTimer()
	}
	w.c.removeWaiter(w)
	switch {
	case w.consume:
		q.consumers = slices.DeleteFunc(q.consumers, func(x *waiter) bool { return x == w })
		if w.inGets {
			q.deadGets++
		}
	case w.get:
		q.deadGets++
	default:
		q.deadPuts++
	}
	q.compact()
}

// compact drops answered waiters from the heads of the wait lists, and
// from the whole list once they are the majority, so waiters that time out
// on an idle queue do not pile up.
func (q *queue) compact() {
	for len(q.gets) > 0 && q.gets[0].done {
		q.gets[0] = nil
		q.gets = q.gets[1:]
		q.deadGets--
	}
	for len(q.puts) > 0 && q.puts[0].done {
		q.puts[0] = nil
		q.puts = q.puts[1:]
		q.deadPuts--
	}
	if q.deadGets > 16 && q.deadGets > len(q.gets)/2 {
		q.gets = slices.DeleteFunc(q.gets, func(w *waiter) bool { return w.done })
		q.deadGets = 0
	}
	if q.deadPuts > 16 && q.deadPuts > len(q.puts)/2 {
		q.puts = slices.DeleteFunc(q.puts, func(w *waiter) bool { return w.done })
		q.deadPuts = 0
	}
}

func (q *queue) liveGets() int { return len(q.gets) - q.deadGets }
func (q *queue) livePuts() int { return len(q.puts) - q.deadPuts }

// accept moves as many of w's items as there is room for into the ring.
func (q *queue) accept(w *waiter) {
	n := min(len(w.items), q.capacity-q.ring.size)
	if n <= 0 {
		return
	}
	for i, body := range w.items[:n] {
		var req *request
		if w.reqs != nil {
			req = w.reqs[i]
			if !w.c.addSubmission(req) {
				continue // already submitted and not answered: accepted, not queued twice
			}
			q.tasks.Submitted++
			q.b.serviceTasks(w.c.service, func(t *taskCounters) { t.Submitted++ })
		}
		q.ring.pushBack(item{body: body, req: req})
		q.stats.put++
	}
	clear(w.items[:n])
	w.items = w.items[n:]
	if w.reqs != nil {
		clear(w.reqs[:n])
		w.reqs = w.reqs[n:]
	}
	w.accepted += n
}

// take hands w up to w.max items from the head of the ring, as many as fit
// in one ITEMS frame, under fresh delivery ids (rule 2), and returns how
// many. The ring is not empty; 0 means w's connection is gone.
func (q *queue) take(w *waiter) int {
	room := q.b.maxFrame - itemsFixedLen
	// A connection that speaks tasks gets them in REQUESTS frames, plain
	// items in ITEMS: one reply holds one kind, that of the head. An
	// auto-ack GET cannot reply, so it gets tasks as plain items, which
	// are answered, empty, once written (rule 5; ackWritten).
	requests := q.ring.front().req != nil && w.c.version >= taskVersion && !w.autoAck
	n := 0
	for n < w.max && n < q.ring.size {
		it := &q.ring.buf[(q.ring.head+n)%len(q.ring.buf)]
		size := itemsEntryLen + len(it.body)
		if n > 0 && (size > room || (w.c.version >= taskVersion && !w.autoAck && (it.req != nil) != requests)) {
			break
		}
		room -= size
		n++
	}
	items := make([]item, n)
	for i := range items {
		it := q.ring.popFront()
		it.deliveries++
		items[i] = it
	}
	first := q.b.nextDelivery.Add(uint64(n)) - uint64(n) + 1
	var cons *waiter
	if w.consume {
		cons = w
	}
	if !w.c.deliver(w.id, q, items, first, w.autoAck, requests, cons, q.by) {
		// The connection is gone (its cleanup already ran): the items
		// were never handed out, so they go back as they were.
		for i := n - 1; i >= 0; i-- {
			items[i].deliveries--
			q.ring.pushFront(items[i])
		}
		return 0
	}
	for i := range items {
		if items[i].deliveries > 1 {
			q.stats.redelivered++
		}
		if r := items[i].req; r != nil {
			// An auto-ack GET's task is answered once written (ackWritten).
			q.takeTask(r, w.c.service, items[i].deliveries > 1)
		}
	}
	q.stats.delivered += uint64(n)
	q.inFlight += n
	return n
}

// serve lets waiting requests make progress: GETs take items, which frees
// room for waiting PUTs, whose items may serve more GETs.
func (q *queue) serve() {
	for {
		progress := false
		for q.ring.size > 0 && q.liveGets() > 0 {
			w := q.gets[0]
			if w.done {
				q.compact()
				continue
			}
			progress = true
			if !w.consume {
				q.take(w)
				q.retire(w)
				continue
			}
			// A CONSUME takes its turn: what its credit allows (and one
			// frame holds), then the back of the line if credit is left.
			q.gets[0] = nil
			q.gets = q.gets[1:]
			w.inGets = false
			w.max = w.prefetch - w.outstanding
			n := q.take(w)
			w.outstanding += n
			if n > 0 && w.outstanding < w.prefetch {
				w.inGets = true
				q.gets = append(q.gets, w)
			}
		}
		for q.ring.size < q.capacity && q.livePuts() > 0 {
			w := q.puts[0]
			if w.done {
				q.compact()
				continue
			}
			q.accept(w)
			progress = true
			if len(w.items) == 0 {
				n := w.accepted
				q.retire(w)
				w.c.replyFor(q.by, w.id, statusOK, uint32(n), "")
			}
		}
		if !progress {
			return
		}
	}
}

// ack ends n in-flight items of this queue for good (rule 3), or records
// that n auto-ack items were written out (rule 5).
func (q *queue) ack(n int) {
	q.mu.Lock()
	q.inFlight -= n
	q.stats.acked += uint64(n)
	q.mu.Unlock()
}

// requeue puts in-flight items back at the head of the ring, the first of
// items at the very head (rule 4), past capacity if need be (rule 6), and
// serves waiting GETs. A task whose submitter has gone is dropped instead:
// nobody wants its outcome. by is the connection whose reader requeues
// (nil: its cleanup, or a timer).
func (q *queue) requeue(items []item, by *conn) {
	if len(items) == 0 {
		return
	}
	q.enter(by)
	defer q.leave()
	for i := len(items) - 1; i >= 0; i-- {
		if r := items[i].req; r != nil {
			q.untakeTask(r)
			if r.state == requestOrphaned {
				r.state = requestEnded
				q.orphanEnded(r)
				continue
			}
			r.state = requestQueued
		}
		q.ring.pushFront(items[i])
	}
	q.inFlight -= len(items)
	if !q.closed {
		q.serve()
	}
}

// shutdown answers every waiting request SHUTTING_DOWN and makes later
// requests fail the same way. Items stay where they are.
func (q *queue) shutdown() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	for _, w := range slices.Concat(q.gets, q.puts, q.consumers) {
		q.finishLocked(w, statusShuttingDown, "broker shutting down")
	}
}

// drainWaiters answers DRAINING the waiting GETs and the CONSUMEs of
// draining connections (rule 7). Broker.Drain marks the connections
// before it calls this, and get and consume look at the mark under q.mu:
// a request either saw it or was waiting here before this locked the
// queue, so none is left to take an item. The CONSUMEs' items in flight
// stay their connections' (rules 3 and 4).
func (q *queue) drainWaiters() {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, w := range slices.Concat(q.gets, q.consumers) {
		if !w.done && w.c.draining.Load() {
			q.finishLocked(w, statusDraining, drainingMessage)
		}
	}
}

// dropConn withdraws the waiting requests of a connection that is going
// away, without answering them.
func (q *queue) dropConn(c *conn) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, w := range slices.Concat(q.gets, q.puts, q.consumers) {
		if w.c == c {
			q.finishLocked(w, statusOK, "")
		}
	}
}

// snapshot returns the queue's statistics at one instant.
func (q *queue) snapshot() QueueStats {
	q.mu.Lock()
	defer q.mu.Unlock()
	// Consumers: the live CONSUMEs, and the GETs waiting for an item.
	consumers := len(q.consumers)
	for _, w := range q.gets {
		if !w.done && !w.consume {
			consumers++
		}
	}
	return QueueStats{
		Name:        q.name,
		Capacity:    q.capacity,
		Depth:       q.ring.size,
		InFlight:    q.inFlight,
		Consumers:   consumers,
		Put:         q.stats.put,
		Delivered:   q.stats.delivered,
		Acked:       q.stats.acked,
		Redelivered: q.stats.redelivered,
		Tasks:       q.tasks.snapshot(),
	}
}
