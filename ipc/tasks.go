package ipc

import (
	"fmt"
	"time"

	"go.uber.org/zap"
)

// Tasks: request and reply (PROTOCOL.md, "Tasks"). A task is a queue item
// that wants an answer. Its submitter's connection SUBMITs it under a tag,
// a worker gets it like any item (in a REQUESTS frame, if it speaks
// version 2) and answers it with a REPLY, which acknowledges it and
// carries its result; the broker passes the result to the submitter in an
// OUTCOMES frame. The item's life is the in-flight rules' (queue.go): a
// worker that dies before it replies leaves the task to be delivered
// again.
//
// Who may still learn how a task ended, and when (request.state, under the
// mutex of the task's queue):
//
//	queued    in the ring. WITHDRAW, or the close of the submitter's
//	          connection, takes it out of the ring: ended (the first
//	          answered CANCELLED, the second not at all).
//	taken     in flight with a worker. Its REPLY (or ACK: done, empty)
//	          answers the submitter: ended. A NACK, or the close of the
//	          worker's connection, requeues it: queued. The close of the
//	          submitter's connection: orphaned.
//	orphaned  in flight, nobody to answer. Its REPLY or ACK is an ACK; a
//	          requeue drops it.
//	ended     answered, withdrawn or dropped: no outcome is sent again,
//	          so a submitter gets at most one per task.
//
// A connection's submissions (conn.submissions, under its mu) are its tasks
// not yet ended, by tag: a SUBMIT of a tag among them queues nothing (it
// is accepted: at most one outcome per tag), and WITHDRAW finds them there.

type requestState uint8

const (
	requestQueued requestState = iota
	requestTaken
	requestOrphaned
	requestEnded
)

// request is what the broker keeps of a task beside its item.
type request struct {
	submitter *conn
	tag       uint64
	q         *queue
	// Guarded by q.mu: the state, and while taken (or orphaned) the
	// service of the connection that took it and when.
	state   requestState
	takenBy string
	takenAt time.Time
}

// takeTask records r handed out to a connection of service. Called under
// q.mu.
func (q *queue) takeTask(r *request, service string, again bool) {
	r.state, r.takenBy, r.takenAt = requestTaken, service, time.Now()
	q.tasks.Running++
	if again {
		q.tasks.Redelivered++
	}
	q.b.serviceTasks(service, func(t *taskCounters) {
		t.Running++
		if again {
			t.Redelivered++
		}
	})
}

// orphanEnded counts r, whose submitter had gone, as cancelled as it
// leaves the broker. Called under q.mu.
func (q *queue) orphanEnded(r *request) {
	q.tasks.Cancelled++
	q.b.serviceTasks(r.submitter.service, func(t *taskCounters) { t.Cancelled++ })
}

// untakeTask records r, taken or orphaned, no longer in flight. Called
// under q.mu.
func (q *queue) untakeTask(r *request) {
	q.tasks.Running--
	q.b.serviceTasks(r.takenBy, func(t *taskCounters) { t.Running-- })
}

// addSubmission records r as submitted on its connection, and reports
// false if a task of that tag is already there (or the connection has
// closed). Called under r.q.mu.
func (c *conn) addSubmission(r *request) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	if _, dup := c.submissions[r.tag]; dup {
		return false
	}
	if c.submissions == nil {
		c.submissions = make(map[uint64]*request)
	}
	c.submissions[r.tag] = r
	return true
}

// taskEnd is how a task in flight ended: its REPLY's status and result,
// or done and empty for an ACK.
type taskEnd struct {
	req    *request
	status byte
	body   []byte
}

// endTasks ends the tasks of es, which are this queue's (see
// endTasksLocked).
func (q *queue) endTasks(es []taskEnd, by *conn) {
	q.enter(by)
	defer q.leave()
	q.endTasksLocked(es)
}

// endTasksLocked ends the tasks of es that are taken or orphaned: those
// taken are answered, one OUTCOMES frame per submitter. Called under q.mu.
func (q *queue) endTasksLocked(es []taskEnd) {
	var last *conn // the submitter while there is only one, as there mostly is
	var outs []outcome
	var more map[*conn][]outcome
	for _, e := range es {
		r := e.req
		if r.state != requestTaken && r.state != requestOrphaned {
			continue
		}
		taken := r.state == requestTaken
		q.untakeTask(r)
		r.state = requestEnded
		if !taken {
			q.orphanEnded(r)
			continue
		}
		ran := time.Since(r.takenAt)
		q.tasks.ran(ran)
		failed := e.status == outcomeFailed
		if failed {
			q.tasks.Failed++
		} else {
			q.tasks.Done++
		}
		q.b.serviceTasks(r.takenBy, func(t *taskCounters) {
			t.ran(ran)
			if failed {
				t.Failed++
			} else {
				t.Done++
			}
		})
		o := outcome{Tag: r.tag, Status: e.status, Body: e.body}
		switch {
		case last == nil || last == r.submitter:
			last = r.submitter
			outs = append(outs, o)
		default:
			if more == nil {
				more = make(map[*conn][]outcome)
			}
			more[r.submitter] = append(more[r.submitter], o)
		}
	}
	if last != nil {
		last.sendOutcomes(outs, q.by)
	}
	for c, os := range more {
		c.sendOutcomes(os, q.by)
	}
}

// sendOutcomes queues an OUTCOMES frame for this submitter and forgets its
// tasks; a submitter that has gone gets nothing. Never blocks. Called
// under the tasks' queue's mu, by's (see wakeFor).
func (c *conn) sendOutcomes(os []outcome, by *conn) {
	c.mu.Lock()
	if c.closed || c.fatalSet {
		c.mu.Unlock()
		return
	}
	for _, o := range os {
		delete(c.submissions, o.Tag)
	}
	// As many to a frame as max_frame allows: an OUTCOMES entry is longer
	// than the ACK or WITHDRAW entry that may have ended its task.
	for len(os) > 0 {
		size, n := outcomesFixedLen, 0
		for n < len(os) && (n == 0 || size+outcomeEntryLen+len(os[n].Body) <= c.b.maxFrame) {
			size += outcomeEntryLen + len(os[n].Body)
			n++
		}
		c.outbox = append(c.outbox, outMsg{kind: msgOutcomes, outcomes: os[:n:n]})
		os = os[n:]
	}
	wake := !c.handling
	c.mu.Unlock()
	if wake {
		c.wakeFor(by)
	}
}

// submit carries out a SUBMIT.
func (c *conn) submit(f *submitFrame) {
	q := c.b.queue(f.Queue)
	if q == nil {
		if c.b.forwardedQueue(f.Queue) {
			c.reply(f.ID, statusUnsupported, 0, fmt.Sprintf("queue %s is kept in JetStream, which does not carry tasks; submit to a memory queue", f.Queue))
			return
		}
		c.reply(f.ID, statusNoSuchQueue, 0, c.b.noSuchQueue(f.Queue))
		return
	}
	items := make([][]byte, len(f.Tasks))
	reqs := make([]*request, len(f.Tasks))
	for i, t := range f.Tasks {
		if len(t.Body) > c.b.maxItem {
			c.reply(f.ID, statusTooLarge, 0, fmt.Sprintf("task %d has %d bytes, max_item is %d", i, len(t.Body), c.b.maxItem))
			return
		}
		items[i] = t.Body
		reqs[i] = &request{submitter: c, tag: t.Tag, q: q}
	}
	q.put(c, f.ID, f.TimeoutMS, items, reqs)
}

// answer carries out a REPLY: an ACK of its deliveries whose tasks are
// answered with their results. Deliveries of a store server (forwarded
// queues, which carry no tasks) are acknowledged there.
func (c *conn) answer(f *replyFrame) {
	var local []answer
	var remote []uint64
	for _, a := range f.Answers {
		if a.Delivery >= StoreDeliveryBase {
			remote = append(remote, a.Delivery)
		} else {
			local = append(local, a)
		}
	}
	n := c.settleAnswers(local)
	if len(remote) == 0 {
		c.replyAck(f.ID, n, uint32(len(local))-n)
		return
	}
	fwd := appendAck(nil, &ackFrame{ID: f.ID, Deliveries: remote})
	c.forward(fwd[frameHeaderLen:], f.ID, pendingFwd{kind: fwdAck, merge: ackMerge{found: n, unknown: uint32(len(local)) - n}}, upstreamDialTimeout)
}

// settleAnswers acks the broker's deliveries among answers and ends their
// tasks with their results; it returns how many it found.
func (c *conn) settleAnswers(answers []answer) uint32 {
	ds := make([]uint64, len(answers))
	for i, a := range answers {
		ds[i] = a.Delivery
	}
	return c.settleWith(&ackFrame{Deliveries: ds}, func(i int) (byte, []byte) {
		return answers[i].Status, answers[i].Body
	})
}

// withdraw carries out a WITHDRAW: the tasks of these tags still queued
// leave their queue and are answered CANCELLED; the RESULT counts them.
func (c *conn) withdraw(f *withdrawFrame) {
	c.mu.Lock()
	byQueue := make(map[*queue][]*request)
	for _, tag := range f.Tags {
		if r, ok := c.submissions[tag]; ok {
			byQueue[r.q] = append(byQueue[r.q], r)
		}
	}
	c.mu.Unlock()
	var n uint32
	for q, rs := range byQueue {
		n += uint32(q.withdraw(rs, true, c))
	}
	c.reply(f.ID, statusOK, n, "")
}

// withdraw takes the queued ones among rs out of the ring (ended) and
// returns how many; with answer, their submitter gets CANCELLED for each,
// else (the submitter has gone) those taken are orphaned. by is the
// connection whose reader withdraws (nil: a cleanup).
func (q *queue) withdraw(rs []*request, answer bool, by *conn) int {
	q.enter(by)
	defer q.leave()
	n := 0
	var outs []outcome
	for _, r := range rs {
		switch r.state {
		case requestQueued:
			r.state = requestEnded
			n++
			q.b.serviceTasks(r.submitter.service, func(t *taskCounters) { t.Cancelled++ })
			if answer {
				outs = append(outs, outcome{Tag: r.tag, Status: outcomeCancelled})
			}
		case requestTaken:
			if !answer {
				r.state = requestOrphaned
			}
		}
	}
	if n == 0 {
		return 0
	}
	q.ring.removeIf(func(it *item) bool { return it.req != nil && it.req.state == requestEnded })
	q.tasks.Cancelled += uint64(n)
	if len(outs) > 0 {
		rs[0].submitter.sendOutcomes(outs, q.by)
	}
	if !q.closed {
		q.serve() // room for waiting PUTs
	}
	return n
}

// dropSubmissions is the close of a submitter's connection: its queued
// tasks leave their queues, unanswered, and those in flight will be
// dropped when they come back. Called by cleanup once c.closed is set.
func (c *conn) dropSubmissions(subs map[uint64]*request) {
	if len(subs) == 0 {
		return
	}
	byQueue := make(map[*queue][]*request)
	for _, r := range subs {
		byQueue[r.q] = append(byQueue[r.q], r)
	}
	n := 0
	for q, rs := range byQueue {
		n += q.withdraw(rs, false, nil)
	}
	c.log.Debug("queue client connection closed; its queued tasks are withdrawn, its tasks in flight will not be answered",
		zap.Int("withdrawn", n), zap.Int("in_flight", len(subs)-n))
}

// removeIf drops the items drop reports true for, keeping the others in
// order.
func (r *ring) removeIf(drop func(*item) bool) {
	kept := 0
	for i := range r.size {
		it := r.buf[(r.head+i)%len(r.buf)]
		if drop(&it) {
			continue
		}
		r.buf[(r.head+kept)%len(r.buf)] = it
		kept++
	}
	for i := kept; i < r.size; i++ {
		r.buf[(r.head+i)%len(r.buf)] = item{}
	}
	r.size = kept
}
