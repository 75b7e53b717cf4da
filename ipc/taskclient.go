package ipc

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// The client's side of tasks (PROTOCOL.md, "Tasks"): a submitter's
// futures, and a worker's replies.

// ErrCancelled is the error of a task withdrawn before a worker took it
// (Future.Cancel, or Map's context ending).
var ErrCancelled = errors.New("task cancelled")

// TaskError is a task's failure as its worker reported it (Delivery.Fail):
// Message is the worker's.
type TaskError struct {
	Message string
}

func (e *TaskError) Error() string { return "task failed: " + e.Message }

// Future is the outcome, still to come, of a task Submit put on a queue.
// Its methods are safe for concurrent use.
type Future struct {
	c     *Client
	tag   uint64
	queue string
	done  chan struct{} // closed once result and err are set
	// set once, before done is closed (under c.mu)
	result  []byte
	err     error
	watched bool // Done was called: the outcome is read in the background (c.mu)
}

// Done is closed once the task's outcome is known. Asking for it has the
// client read the connection in the background until then, so that the
// channel closes without a call that waits (Result, WaitAll and WaitAny
// read the connection themselves).
func (f *Future) Done() <-chan struct{} {
	c := f.c
	c.mu.Lock()
	wake := false
	if !f.watched && !isClosed(f.done) {
		f.watched = true
		c.watchedTasks++
		wake = !c.reading
	}
	c.mu.Unlock()
	if wake {
		signal(c.bgWake)
	}
	return f.done
}

// Result waits for the task's outcome, as long as ctx allows, and returns
// the worker's result, or an error: a *TaskError if the worker failed it,
// ErrCancelled if it was withdrawn, ErrClosed if the connection ended
// before the outcome came (the task may still run: its outcome is lost),
// or ctx's. The task goes on when ctx ends; Cancel withdraws it.
func (f *Future) Result(ctx context.Context) ([]byte, error) {
	if err := f.c.waitTasks(ctx, func() bool { return isClosed(f.done) }); err != nil {
		return nil, fmt.Errorf("ipc: task on %q: %w", f.queue, err)
	}
	return f.result, f.err
}

// Cancel withdraws the task if no worker has taken it yet, and reports
// whether it did: the future then ends with ErrCancelled. A task a worker
// has taken runs on, and its future gets its outcome. ctx bounds the wait
// for the broker's answer.
func (f *Future) Cancel(ctx context.Context) (bool, error) {
	if isClosed(f.done) {
		return false, nil
	}
	n, err := f.c.withdraw(ctx, []uint64{f.tag})
	if err != nil {
		return false, fmt.Errorf("ipc: cancel task on %q: %w", f.queue, err)
	}
	return n == 1, nil
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// Submit puts a task on queue: payload is its item, and a worker's reply
// to it (Delivery.Reply, Delivery.Fail) is its outcome, which the Future
// returns. It waits for room while the queue is full, as PutBatch does,
// up to ctx's deadline, and returns once the broker has queued the task.
// The task's outcome reaches this connection only: if it closes first,
// the tasks still queued are withdrawn and the others' outcomes are lost.
// It needs a broker of protocol version 2 (ErrUnsupported otherwise, and
// for a queue kept in JetStream).
func (c *Client) Submit(ctx context.Context, queue string, payload []byte) (*Future, error) {
	fs, err := c.submit(ctx, queue, [][]byte{payload})
	if err != nil {
		c.abandon(fs) // queued all the same (ctx ended as the broker answered): taken back if it can be
		return nil, err
	}
	return fs[0], nil
}

// Map submits a task for each of inputs and waits, as long as ctx allows,
// for all their outcomes; it returns their results in the order of
// inputs. If a task fails, the others still run and Map returns their
// results with an error for the first failure in input order, which wraps
// its *TaskError (that task's result is nil). If ctx ends first, the
// tasks no worker has taken yet are withdrawn and Map returns ctx's error.
func (c *Client) Map(ctx context.Context, queue string, inputs [][]byte) ([][]byte, error) {
	fs, err := c.submit(ctx, queue, inputs)
	if err != nil {
		c.abandon(fs)
		return nil, err
	}
	if err := WaitAll(ctx, fs...); err != nil {
		c.abandon(fs)
		return nil, fmt.Errorf("ipc: map on %q: %w", queue, err)
	}
	results := make([][]byte, len(fs))
	var first error
	for i, f := range fs {
		results[i] = f.result
		if f.err != nil && first == nil {
			first = fmt.Errorf("ipc: map on %q: input %d: %w", queue, i, f.err)
		}
	}
	return results, first
}

// WaitAll waits until every one of fs has its outcome, as long as ctx
// allows (ctx's error otherwise). The futures may be of several clients.
func WaitAll(ctx context.Context, fs ...*Future) error {
	for _, f := range fs {
		if err := f.c.waitTasks(ctx, func() bool { return isClosed(f.done) }); err != nil {
			return err
		}
	}
	return nil
}

// WaitAny waits until one of fs has its outcome, as long as ctx allows,
// and returns its index (the lowest, if several have), or -1 and ctx's
// error. The futures must all be of one client.
func WaitAny(ctx context.Context, fs ...*Future) (int, error) {
	if len(fs) == 0 {
		return -1, errors.New("ipc: WaitAny of no futures")
	}
	for _, f := range fs[1:] {
		if f.c != fs[0].c {
			return -1, errors.New("ipc: WaitAny of futures of several clients")
		}
	}
	found := -1
	err := fs[0].c.waitTasks(ctx, func() bool {
		for i, f := range fs {
			if isClosed(f.done) {
				found = i
				return true
			}
		}
		return false
	})
	return found, err
}

// submit sends inputs as tasks in as few SUBMITs as max_frame allows, one
// after the other, and returns the futures of those the broker queued.
func (c *Client) submit(ctx context.Context, queue string, inputs [][]byte) ([]*Future, error) {
	if c.version < taskVersion {
		return nil, fmt.Errorf("ipc: submit to %q: %w: the broker speaks protocol version %d", queue, ErrUnsupported, c.version)
	}
	if len(queue) > maxStr8 {
		return nil, fmt.Errorf("ipc: submit to %.40q...: %w", queue, ErrNoSuchQueue)
	}
	for i, in := range inputs {
		if len(in) > c.maxItem {
			return nil, fmt.Errorf("ipc: submit to %q: input %d: %w", queue, i,
				&StatusError{Code: statusTooLarge, Message: fmt.Sprintf("%d bytes, max_item is %d", len(in), c.maxItem)})
		}
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("ipc: submit to %q: %w", queue, ctxErr(ctx))
	}
	fs := make([]*Future, 0, len(inputs))
	for len(inputs) > 0 {
		size, n := submitFixedLen+len(queue), 0
		for n < len(inputs) && (n == 0 || size+submitTaskLen+len(inputs[n]) <= c.maxFrame) {
			size += submitTaskLen + len(inputs[n])
			n++
		}
		chunk := inputs[:n]
		inputs = inputs[n:]
		// The futures are registered before the SUBMIT goes: a quick
		// worker's outcome may come before the SUBMIT's RESULT.
		tasks := make([]task, n)
		batch := make([]*Future, n)
		c.mu.Lock()
		for i, in := range chunk {
			c.nextTag++
			f := &Future{c: c, tag: c.nextTag, queue: queue, done: make(chan struct{})}
			if c.err != nil {
				f.err = c.err
				close(f.done)
			} else {
				c.tasks[f.tag] = f
			}
			tasks[i], batch[i] = task{Tag: f.tag, Body: in}, f
		}
		c.mu.Unlock()
		timeout := timeoutMS(ctx)
		cl := &call{ch: make(chan clientReply, 1)}
		id, err := c.send(ctx, cl, func(dst []byte, id uint32) []byte {
			return appendSubmit(dst, &submitFrame{ID: id, TimeoutMS: timeout, Queue: queue, Tasks: tasks})
		})
		if err != nil {
			c.forget(batch)
			return fs, fmt.Errorf("ipc: submit to %q: %w", queue, err)
		}
		r, err := c.wait(ctx, id, cl, true, false)
		accepted := 0
		if r.result != nil {
			accepted = min(int(r.result.N), n)
			if err == nil {
				err = statusErr(ctx, r.result)
			}
		} else if err == nil {
			err = fmt.Errorf("%w: ITEMS in reply to a SUBMIT", errBadFrame)
		}
		if r.result == nil && err != nil {
			// No answer (ctx ended, and the grace for the broker's answer
			// to the CANCEL too): any of them may be queued.
			c.abandon(batch)
			return fs, fmt.Errorf("ipc: submit to %q: %w", queue, err)
		}
		fs = append(fs, batch[:accepted]...)
		c.forget(batch[accepted:])
		if err != nil {
			return fs, fmt.Errorf("ipc: submit to %q: %w", queue, err)
		}
	}
	return fs, nil
}

// forget drops futures of tasks the broker did not queue, or whose
// caller gave up on them.
func (c *Client) forget(fs []*Future) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range fs {
		if c.tasks[f.tag] == f {
			delete(c.tasks, f.tag)
			if f.watched {
				c.watchedTasks--
			}
		}
	}
}

// abandon withdraws what it can of fs, whose caller gives up on them;
// those a worker has taken run on, and their outcomes are dropped. It does
// not wait for the broker: nobody is told how many were withdrawn.
func (c *Client) abandon(fs []*Future) {
	var tags []uint64
	for _, f := range fs {
		if !isClosed(f.done) {
			tags = append(tags, f.tag)
		}
	}
	c.forget(fs)
	perFrame := (c.maxFrame - withdrawFixedLen) / 8
	for len(tags) > 0 {
		chunk := tags[:min(len(tags), perFrame)]
		tags = tags[len(chunk):]
		// Best effort, bounded: the connection's end withdraws them too.
		ctx, cancel := context.WithTimeout(context.Background(), abandonSend)
		_, err := c.send(ctx, nil, func(dst []byte, id uint32) []byte {
			return appendWithdraw(dst, &withdrawFrame{ID: id, Tags: chunk})
		})
		cancel()
		if err != nil {
			return
		}
	}
}

// abandonSend bounds abandon's wait for room to send a WITHDRAW in.
const abandonSend = 100 * time.Millisecond

// withdraw sends WITHDRAW for tags and returns how many the broker took
// out of their queues.
func (c *Client) withdraw(ctx context.Context, tags []uint64) (int, error) {
	perFrame := (c.maxFrame - withdrawFixedLen) / 8
	total := 0
	for len(tags) > 0 {
		chunk := tags[:min(len(tags), perFrame)]
		tags = tags[len(chunk):]
		cl := &call{ch: make(chan clientReply, 1)}
		id, err := c.send(ctx, cl, func(dst []byte, id uint32) []byte {
			return appendWithdraw(dst, &withdrawFrame{ID: id, Tags: chunk})
		})
		if err != nil {
			return total, err
		}
		r, err := c.wait(ctx, id, cl, false, true)
		if err != nil {
			return total, err
		}
		if r.result == nil {
			return total, fmt.Errorf("%w: ITEMS in reply to a WITHDRAW", errBadFrame)
		}
		if err := statusErr(ctx, r.result); err != nil {
			return total, err
		}
		total += int(r.result.N)
	}
	return total, nil
}

// waitTasks waits until ready, reading the connection itself when nobody
// else does; every outcome that arrives has ready looked at again.
func (c *Client) waitTasks(ctx context.Context, ready func() bool) error {
	if ready() {
		return nil
	}
	ch := make(chan struct{}, 1)
	c.mu.Lock()
	c.taskWaiters[ch] = struct{}{}
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.taskWaiters, ch)
		c.mu.Unlock()
	}()
	for !ready() {
		if _, err := await(c, ctx, ch); err != nil {
			if ready() {
				return nil
			}
			return err
		}
	}
	return nil
}

// outcomes takes an OUTCOMES frame; it runs on the read loop.
func (c *Client) outcomes(f *outcomesFrame) {
	c.mu.Lock()
	for _, o := range f.Outcomes {
		fut := c.tasks[o.Tag]
		if fut == nil {
			continue // abandoned
		}
		delete(c.tasks, o.Tag)
		if fut.watched {
			c.watchedTasks--
		}
		switch o.Status {
		case outcomeDone:
			fut.result = o.Body
		case outcomeFailed:
			fut.err = &TaskError{Message: string(o.Body)}
		default:
			fut.err = ErrCancelled
		}
		close(fut.done)
	}
	for ch := range c.taskWaiters {
		signal(ch)
	}
	c.mu.Unlock()
}

// endTasksLocked ends every future still waiting with err, the
// connection's end. Called with c.mu held.
func (c *Client) endTasksLocked(err error) {
	for tag, f := range c.tasks {
		f.err = err
		close(f.done)
		delete(c.tasks, tag)
	}
	c.watchedTasks = 0
	for ch := range c.taskWaiters {
		signal(ch)
	}
}

// Reply answers a task: it acknowledges the delivery, as Ack does, and
// the task's submitter gets result as its outcome. A delivery that is not
// a task (Request false) is only acknowledged. A delivery a Consumer
// handed out is answered as Consumer.Ack acknowledges, without waiting
// for the broker; one from Get or GetBatch waits for the broker's answer,
// as long as ctx allows. The submitter gets at most one outcome per task:
// a task delivered again (its worker died before replying) is answered by
// whichever worker replies first.
func (d *Delivery) Reply(ctx context.Context, result []byte) error {
	return d.answer(ctx, outcomeDone, result)
}

// Fail answers a task as failed: the submitter's Future returns a
// *TaskError with err's message. Otherwise as Reply.
func (d *Delivery) Fail(ctx context.Context, err error) error {
	msg := "failed"
	if err != nil {
		msg = err.Error()
	}
	return d.answer(ctx, outcomeFailed, []byte(msg))
}

func (d *Delivery) answer(ctx context.Context, status byte, body []byte) error {
	if d.c == nil {
		return errors.New("ipc: reply: a Delivery not handed out by a Client")
	}
	if !d.Request {
		if d.cons != nil {
			return d.cons.Ack(d)
		}
		return d.c.Ack(ctx, d)
	}
	if len(body) > d.c.maxItem {
		return fmt.Errorf("ipc: reply: %w", &StatusError{Code: statusTooLarge, Message: fmt.Sprintf("result of %d bytes, max_item is %d", len(body), d.c.maxItem)})
	}
	a := answer{Delivery: d.ID, Status: status, Body: body}
	if d.cons != nil {
		return d.c.queueAnswer(a)
	}
	cl := &call{ch: make(chan clientReply, 1)}
	id, err := d.c.send(ctx, cl, func(dst []byte, id uint32) []byte {
		return appendReply(dst, &replyFrame{ID: id, Answers: []answer{a}})
	})
	if err != nil {
		return fmt.Errorf("ipc: reply: %w", err)
	}
	r, err := d.c.wait(ctx, id, cl, false, true)
	if err != nil {
		return fmt.Errorf("ipc: reply: %w", err)
	}
	if r.result == nil {
		return fmt.Errorf("ipc: reply: %w: ITEMS in reply", errBadFrame)
	}
	if err := statusErr(ctx, r.result); err != nil {
		return fmt.Errorf("ipc: reply: %w", err)
	}
	return nil
}

// queueAnswer queues a Consumer's reply, sent with its acknowledgements
// (queueAcks). The result is copied.
func (c *Client) queueAnswer(a answer) error {
	a.Body = append([]byte(nil), a.Body...)
	return c.queueAcks(false, nil, a)
}

// encodeAnswersLocked moves the queued replies into c.out, as many to a
// REPLY frame as max_frame allows, each registered for its answer as
// encodeAcksLocked does. Called with c.mu held.
func (c *Client) encodeAnswersLocked() {
	for as := c.answers; len(as) > 0; {
		size, n := replyFixedLen, 0
		for n < len(as) && (n == 0 || size+replyEntryLen+len(as[n].Body) <= c.maxFrame) {
			size += replyEntryLen + len(as[n].Body)
			n++
		}
		c.nextID++
		c.pending[c.nextID] = &call{asyncAck: true}
		c.out = appendReply(c.out, &replyFrame{ID: c.nextID, Answers: as[:n]})
		as = as[n:]
	}
	clear(c.answers)
	c.answers, c.answerBytes = c.answers[:0], 0
}
