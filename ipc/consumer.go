package ipc

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

const (
	// ackDelay bounds how long an acknowledgement queued by Consumer.Ack
	// waits to be sent with others: the broker learns of it at the latest
	// this much later (sooner when ackBatch are queued, or when Next finds
	// nothing left to hand out).
	ackDelay = time.Millisecond
	// ackBatch is how many queued acknowledgements are sent at once without
	// waiting for ackDelay; ackBatchBytes, how many bytes of queued
	// replies' results.
	ackBatch      = 256
	ackBatchBytes = 256 << 10
)

// ErrConsumerClosed is wrapped by Consumer.Next's error once Close was
// called.
var ErrConsumerClosed = errors.New("consumer closed")

// Consumer receives the items a broker pushes for one CONSUME (see
// Client.Consume): up to its prefetch of them are on their way or in its
// hands unacknowledged at any time, so a worker that handles items one at a
// time does not wait a round trip for each. Next hands them out in the
// order they came; Ack and Nack queue acknowledgements, which go to the
// broker together, without waiting for its answer. At least once is
// unchanged: an item not acknowledged when the connection ends (the worker
// died) is delivered again, to someone.
//
// Next must be called from one goroutine at a time; Ack, Nack and Close
// are safe from any goroutine.
type Consumer struct {
	c        *Client
	id       uint32
	queue    string
	prefetch int

	notify chan struct{} // cap 1: buf grew, or the consumer ended

	mu     sync.Mutex
	buf    []*Delivery // pushed, not yet handed out by Next
	ended  error       // why pushes ended (the broker's answer, the connection's end); nil while they go on
	closed bool        // Close was called: what is pushed from now on goes back
}

// Consume asks the broker to push the items of queue to this connection as
// they come, at most prefetch of them unacknowledged at any time (AMQP's
// basic.qos, a JetStream pull consumer's max-ack-pending). Items come to
// consumers of a queue in turns, as many as each one's credit allows. It
// does not wait for the broker: a queue that does not exist makes Next
// fail. ctx bounds sending the request only. prefetch is at least 1 and at
// most 65536.
func (c *Client) Consume(ctx context.Context, queue string, prefetch int) (*Consumer, error) {
	if prefetch < 1 || prefetch > maxPrefetch {
		return nil, fmt.Errorf("ipc: consume %q: prefetch %d, want 1 to %d", queue, prefetch, maxPrefetch)
	}
	if len(queue) > maxStr8 {
		return nil, fmt.Errorf("ipc: consume %.40q...: %w", queue, ErrNoSuchQueue)
	}
	s := &Consumer{c: c, queue: queue, prefetch: prefetch, notify: make(chan struct{}, 1)}
	cl := &call{queue: queue, consumer: s}
	id, err := c.send(ctx, cl, func(dst []byte, id uint32) []byte {
		return appendConsume(dst, &consumeFrame{ID: id, Queue: queue, Prefetch: uint32(prefetch)})
	})
	if err != nil {
		return nil, fmt.Errorf("ipc: consume %q: %w", queue, err)
	}
	s.id = id
	// Its pushes are read as they come, by the background reader when no
	// call reads (see clientread.go): prefetched items are in hand when
	// Next is called.
	signal(c.bgWake)
	return s, nil
}

// Next returns the next item pushed to the consumer, waiting for one as
// long as ctx allows. Before it waits, it sends the acknowledgements
// queued so far, which give the broker room to push more. Its error wraps
// ctx's, ErrConsumerClosed after Close, ErrClosed when the connection has
// ended, or the broker's reason when it ended the consume (a
// *StatusError: NO_SUCH_QUEUE, SHUTTING_DOWN, or DRAINING, which matches
// ErrDraining). After ErrDraining, the items pushed and not yet handed out
// have gone back to the queue; those Next handed out are still the
// caller's to Ack or Nack.
func (s *Consumer) Next(ctx context.Context) (*Delivery, error) {
	for {
		s.mu.Lock()
		if len(s.buf) > 0 {
			d := s.buf[0]
			s.buf[0] = nil
			s.buf = s.buf[1:]
			s.mu.Unlock()
			return d, nil
		}
		ended := s.ended
		s.mu.Unlock()
		if ended != nil {
			return nil, fmt.Errorf("ipc: consume %q: %w", s.queue, ended)
		}
		s.c.flushAcks()
		if _, err := await(s.c, ctx, s.notify); err != nil {
			s.mu.Lock()
			ended := s.ended
			s.mu.Unlock()
			if ctx.Err() != nil || ended == nil {
				return nil, fmt.Errorf("ipc: consume %q: %w", s.queue, err)
			}
		}
		// An item, or the end: ended says which.
	}
}

// Ack acknowledges deliveries Next handed out: the broker forgets their
// items and may push as many more. It does not wait for the broker:
// acknowledgements are queued and sent together, within a millisecond. Its
// error is that of an earlier acknowledgement the broker refused (a
// delivery acknowledged twice), or ErrClosed.
func (s *Consumer) Ack(ds ...*Delivery) error { return s.c.queueAcks(false, ds) }

// Nack gives deliveries back: their items go to the head of the queue, to
// be delivered again. Sent as Ack's are.
func (s *Consumer) Nack(ds ...*Delivery) error { return s.c.queueAcks(true, ds) }

// Close ends the consume: the broker pushes no more, and the items pushed
// but not yet handed out by Next go back to the queue (NACK). Items Next
// handed out stay this connection's until acknowledged (or until the
// connection ends). It does not wait for the broker. Safe to call twice.
func (s *Consumer) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	back := s.buf
	s.buf = nil
	if s.ended == nil {
		s.ended = ErrConsumerClosed
	}
	s.mu.Unlock()
	s.wake()
	s.c.interruptReader() // a Next reading for its item
	// CANCEL before the NACKs: a NACK gives the consume credit back, and
	// one the broker read while the consume was still live would have the
	// items pushed to it again, NACKed again as pushed after Close, and so
	// on until the CANCEL arrived (seen: one item delivered 25 times).
	id := s.id
	_, err := s.c.send(context.Background(), nil, func(dst []byte, _ uint32) []byte {
		return appendCancel(dst, &cancelFrame{ID: id})
	})
	if len(back) > 0 {
		if nerr := s.c.queueAcks(true, back); nerr != nil && err == nil {
			err = nerr
		}
	}
	s.c.flushAcks()
	if errors.Is(err, ErrClosed) {
		return nil // the connection is gone: the broker requeued everything
	}
	return err
}

func (s *Consumer) wake() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// push takes an ITEMS frame the broker pushed for this consume; it runs on
// the client's read loop. Items pushed after Close go back to the queue.
func (s *Consumer) push(f *itemsFrame) {
	ds := make([]Delivery, len(f.Items))
	out := make([]*Delivery, len(f.Items))
	for i, it := range f.Items {
		ds[i] = Delivery{Queue: s.queue, ID: it.Delivery, Deliveries: int(it.Deliveries), Body: it.Body, Request: f.Requests, c: s.c, cons: s}
		out[i] = &ds[i]
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		// Queued for the writer, never written here: the read loop must
		// not block on the socket (see nackLate).
		c := s.c
		c.mu.Lock()
		for _, d := range out {
			c.nacks = append(c.nacks, d.ID)
		}
		c.mu.Unlock()
		c.wakeWriter()
		return
	}
	s.buf = append(s.buf, out...)
	s.mu.Unlock()
	s.wake()
}

// end records why pushes ended; it runs on the read loop, or when the
// connection ends. When the worker drains (DRAINING), the items pushed and
// not yet handed out go back to the queue at once, for other workers:
// Next hands out no more.
func (s *Consumer) end(err error) {
	s.mu.Lock()
	if s.ended == nil {
		s.ended = err
	}
	var back []*Delivery
	if errors.Is(err, ErrDraining) {
		back = s.buf
		s.buf = nil
	}
	s.mu.Unlock()
	s.wake()
	if len(back) > 0 {
		// Queued for the writer, never written here, as push's.
		c := s.c
		c.mu.Lock()
		for _, d := range back {
			c.nacks = append(c.nacks, d.ID)
		}
		c.mu.Unlock()
		c.wakeWriter()
	}
}

// queueAcks queues the acknowledgement (or NACK) of ds, and the replies
// answers (taskclient.go), to be sent with others: at once when ackBatch
// are queued, else within ackDelay.
func (c *Client) queueAcks(nack bool, ds []*Delivery, answers ...answer) error {
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return err
	}
	if err := c.ackErr; err != nil {
		c.ackErr = nil
		c.mu.Unlock()
		return err
	}
	for _, d := range ds {
		if d == nil {
			c.mu.Unlock()
			return errors.New("ipc: ack: nil delivery")
		}
		if nack {
			c.nacks = append(c.nacks, d.ID)
		} else {
			c.acks = append(c.acks, d.ID)
		}
	}
	for _, a := range answers {
		c.answers = append(c.answers, a)
		c.answerBytes += len(a.Body)
	}
	now := len(c.acks)+len(c.nacks)+len(c.answers) >= ackBatch || c.answerBytes >= ackBatchBytes
	if !now && !c.ackTimerArmed {
		c.ackTimerArmed = true
		time.AfterFunc(ackDelay, c.flushAcks)
	}
	c.mu.Unlock()
	if now {
		c.flushAcks()
	}
	return nil
}

// flushAcks sends the queued acknowledgements now.
func (c *Client) flushAcks() {
	c.mu.Lock()
	c.ackTimerArmed = false
	queued := len(c.acks)+len(c.nacks)+len(c.answers) > 0 && c.err == nil
	c.mu.Unlock()
	if queued {
		c.flush()
	}
}

// encodeAcksLocked moves the queued acknowledgements into c.out, NACKs
// first (so that their items are back in the queue before the credit their
// ACKs give is used), each frame registered for its answer. Called with
// c.mu held, by whoever is about to write c.out. It reports whether there
// were any.
func (c *Client) encodeAcksLocked() (queued bool) {
	if len(c.acks)+len(c.nacks)+len(c.answers) == 0 {
		return false
	}
	defer c.encodeAnswersLocked()
	perFrame := (c.maxFrame - ackFixedLen) / 8
	for _, q := range []struct {
		nack bool
		ids  *[]uint64
	}{{true, &c.nacks}, {false, &c.acks}} {
		for ids := *q.ids; len(ids) > 0; {
			chunk := ids[:min(len(ids), perFrame)]
			ids = ids[len(chunk):]
			c.nextID++
			c.pending[c.nextID] = &call{asyncAck: true}
			c.out = appendAck(c.out, &ackFrame{Nack: q.nack, ID: c.nextID, Deliveries: chunk})
		}
		*q.ids = (*q.ids)[:0]
	}
	return true
}

// flush writes what is queued in c.out: from this goroutine if no one else
// writes, else by waking the writer.
func (c *Client) flush() {
	if c.writeMu.TryLock() {
		err := c.writeOut()
		c.writeMu.Unlock()
		if err != nil {
			return
		}
		c.mu.Lock()
		more := len(c.out)+len(c.acks)+len(c.nacks)+len(c.answers) > 0
		c.mu.Unlock()
		if !more {
			return
		}
	}
	c.wakeWriter()
}

// wakeWriter has the writer goroutine write what is queued.
func (c *Client) wakeWriter() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}
