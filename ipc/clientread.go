package ipc

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

// Reading the broker's frames: who reads, and when.
//
// One goroutine at a time reads the connection: the reader. Whenever a
// call waits for its reply (or Consumer.Next for an item) and nobody else
// reads, the waiting goroutine reads itself, handing each frame to whom it
// is for, until its own has come; then it steps down, and if other calls
// still wait, one of them reads next. A strictly synchronous caller thus
// writes its request and reads its reply itself: no goroutine hands
// anything to another on the path of a round trip, which across processes
// means no second OS thread woken per round trip.
//
// When nobody waits, the frames that can still come (pushes to a Consumer,
// answers to queued acknowledgements, ITEMS of an abandoned GET) are read
// by the client's background reader. It starts when a reader steps down
// with nobody waiting and a request still pending, when a Consumer is
// created and when acknowledgements are sent, and reads until no request
// is pending: calls that wait meanwhile get their replies from it, as Consumer.Next
// gets the items it reads (interrupting it would cost a second hand-off).
// It also reads while a write cannot go out at once: a broker whose
// replies to this connection are not read stops reading it, so a write
// that waits must never wait on a reader that is not there.
//
// A reader whose caller gives up (its context ended), or whose value came
// from elsewhere (Consumer.Close), is interrupted by a read deadline in the
// past, wherever it is, a frame half read included:
// the frame being read is the client's state, not the reader's, and the
// next reader goes on with it (readPayload). A deadline meant for an
// earlier reader is cleared and ignored.

// errStopReading is the reader's own signal: its caller's reason to read
// is gone.
var errStopReading = errors.New("ipc: stop reading")

// aLongTimeAgo is a read deadline that interrupts a read at once.
var aLongTimeAgo = time.Unix(1, 0)

// readSide is the io.Reader under the client's bufio.Reader. It turns a
// read deadline into errStopReading when the current reader's stop says
// so; any other deadline is stale (meant for an earlier reader): it is
// cleared and the read goes on.
type readSide struct {
	nc net.Conn
	// The current reader's reason to stop; only the reader touches it
	// (handed over under Client.mu with Client.reading).
	stop  func() bool
	plain bool // the handshake: deadlines are errors
	// The frame being read, when a reader stopped inside it.
	partial    []byte // its payload so far (cap: its length)
	inProgress bool
}

func (rs *readSide) Read(p []byte) (int, error) {
	for {
		n, err := rs.nc.Read(p)
		if n > 0 {
			return n, nil // with a deadline, the next read sees it again
		}
		if err == nil || rs.plain || !errors.Is(err, os.ErrDeadlineExceeded) {
			return n, err
		}
		if rs.stop != nil && rs.stop() {
			return 0, errStopReading
		}
		// Stale. Its reason may come true while the deadline is cleared,
		// its interruption lost: look again after.
		rs.nc.SetReadDeadline(time.Time{})
		if rs.stop != nil && rs.stop() {
			return 0, errStopReading
		}
	}
}

// tryRead makes the calling goroutine the reader if nobody reads.
func (c *Client) tryRead() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.reading || c.err != nil {
		return false
	}
	c.reading = true
	return true
}

// read reads and hands out frames until done reports true or, between two
// frames, stop does. It returns nil (done), errStopReading, or the
// connection's error (after failing it). The caller is the reader (see
// tryRead) and steps down with stepDown.
func (c *Client) read(done, stop func() bool) error {
	c.rs.stop = stop
	defer func() { c.rs.stop = nil }()
	for !done() {
		if stop() {
			return errStopReading
		}
		if err := c.readFrame(); err != nil {
			return err
		}
	}
	return nil
}

// readPayload reads the next frame's payload (its type byte and body),
// going on with a frame an earlier reader stopped inside. It returns
// errStopReading (nothing lost: the next call goes on from there), or the
// connection's read error.
func (c *Client) readPayload() ([]byte, error) {
	rs := c.rs
	if !rs.inProgress {
		hdr, err := c.r.Peek(frameHeaderLen) // consumes nothing if it fails
		if err != nil {
			return nil, err
		}
		n := binary.BigEndian.Uint32(hdr)
		switch {
		case n == 0:
			return nil, badFrame("frame length 0")
		case uint64(n) > uint64(c.maxFrame):
			return nil, fmt.Errorf("%w (%d > %d)", errFrameTooLong, n, c.maxFrame)
		}
		c.r.Discard(frameHeaderLen) //nolint:errcheck // peeked: it is buffered
		rs.partial, rs.inProgress = make([]byte, 0, n), true
	}
	for len(rs.partial) < cap(rs.partial) {
		m, err := c.r.Read(rs.partial[len(rs.partial):cap(rs.partial)])
		rs.partial = rs.partial[:len(rs.partial)+m]
		if err != nil && len(rs.partial) < cap(rs.partial) {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	payload := rs.partial
	rs.partial, rs.inProgress = nil, false
	return payload, nil
}

// stepDown ends the caller's turn as the reader: a waiting call reads
// next, or else the background reader if frames can still come. waiting
// counts the caller among c.waiters.
func (c *Client) stepDown(waiting bool) {
	c.mu.Lock()
	c.reading = false
	others := c.waiters
	if waiting {
		others--
	}
	bg := others == 0 && c.bgNeededLocked()
	c.mu.Unlock()
	if others > 0 {
		signal(c.readerFree)
	}
	if bg {
		signal(c.bgWake)
	}
}

// bgNeededLocked reports whether frames can come that nobody waits for:
// a request is pending, or a write is held up. Called with c.mu held.
func (c *Client) bgNeededLocked() bool {
	return c.err == nil && (len(c.pending) > 0 || c.watchedTasks > 0 || c.writeStalled || !c.lazyRead)
}

// await waits for a value on ch (cap 1: a call's reply, a consumer's
// notification), reading the connection itself when nobody else does. It
// returns the value, or an error: ctx's (ctxErr) or the connection's.
func await[T any](c *Client, ctx context.Context, ch chan T) (T, error) {
	c.mu.Lock()
	c.waiters++
	c.mu.Unlock()
	defer c.leaveWait()
	var zero T
	for {
		select {
		case v := <-ch:
			return v, nil
		default:
		}
		if ctx.Err() != nil {
			return zero, ctxErr(ctx)
		}
		if c.tryRead() {
			stopAfter := context.AfterFunc(ctx, func() { c.nc.SetReadDeadline(aLongTimeAgo) })
			err := c.read(func() bool { return len(ch) > 0 }, func() bool { return ctx.Err() != nil || len(ch) > 0 })
			stopAfter()
			c.stepDown(true)
			switch {
			case err == nil:
				continue // ch has it
			case errors.Is(err, errStopReading):
				select {
				case v := <-ch:
					return v, nil
				default:
				}
				return zero, ctxErr(ctx)
			default:
				select {
				case v := <-ch:
					return v, nil
				default:
				}
				return zero, c.gone()
			}
		}
		select {
		case v := <-ch:
			return v, nil
		case <-c.readerFree:
		case <-c.done:
			select {
			case v := <-ch:
				return v, nil
			default:
			}
			return zero, c.gone()
		case <-ctx.Done():
			select {
			case v := <-ch:
				return v, nil
			default:
			}
			return zero, ctxErr(ctx)
		}
	}
}

// interruptReader has the reader look at its reason to stop now: a
// waiter's value came from elsewhere than a frame (Consumer.Close).
func (c *Client) interruptReader() {
	c.mu.Lock()
	reading := c.reading
	c.mu.Unlock()
	if reading {
		c.nc.SetReadDeadline(aLongTimeAgo)
	}
}

// leaveWait ends a wait: if nobody reads now, the turn passes on (a
// readerFree this waiter took may have been meant for another).
func (c *Client) leaveWait() {
	c.mu.Lock()
	c.waiters--
	free := !c.reading && c.err == nil
	others := c.waiters > 0
	bg := free && !others && c.bgNeededLocked()
	c.mu.Unlock()
	if free && others {
		signal(c.readerFree)
	}
	if bg {
		signal(c.bgWake)
	}
}

// readInBackground is the background reader: it reads while frames can
// come that no waiting call will read (see the top of this file).
func (c *Client) readInBackground() {
	stop := func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return !c.bgNeededLocked()
	}
	never := func() bool { return false }
	for {
		select {
		case <-c.bgWake:
		case <-c.done:
			return
		}
		c.mu.Lock()
		if c.reading || !c.bgNeededLocked() {
			c.mu.Unlock()
			continue
		}
		c.reading = true
		c.bgTurns++
		c.mu.Unlock()
		err := c.read(never, stop)
		c.stepDown(false)
		if err != nil && !errors.Is(err, errStopReading) {
			return
		}
	}
}

// readFrame reads one frame and hands it to whom it is for. An error
// (after failing the connection) is the connection's.
func (c *Client) readFrame() error {
	payload, err := c.readPayload()
	if errors.Is(err, errStopReading) {
		return err
	}
	if err != nil {
		c.fail(fmt.Errorf("%w: reading from the broker: %w", ErrClosed, err))
		return c.gone()
	}
	f, err := decodeFrame(payload)
	if err != nil {
		c.fail(fmt.Errorf("%w: the broker sent a bad frame: %w", ErrClosed, err))
		return c.gone()
	}
	var id uint32
	var rep clientReply
	switch f := f.(type) {
	case *resultFrame:
		id, rep.result = f.ID, f
	case *itemsFrame:
		id, rep.items = f.ID, f
	case *fatalFrame:
		c.fail(fmt.Errorf("%w: %w", ErrClosed, &StatusError{Code: f.Status, Message: f.Message}))
		return c.gone()
	case *outcomesFrame:
		c.outcomes(f)
		return nil
	default:
		c.fail(fmt.Errorf("%w: the broker sent an unexpected %T", ErrClosed, f))
		return c.gone()
	}
	c.mu.Lock()
	cl := c.pending[id]
	if cl == nil || cl.consumer == nil || rep.result != nil {
		delete(c.pending, id) // a CONSUME's pushes keep it until its RESULT
	}
	late := false // ITEMS nobody waits for: give them back
	switch {
	case cl == nil:
		late = rep.items != nil && rep.items.Items[0].Delivery != 0
	case cl.consumer != nil, cl.asyncAck:
	case cl.abandoned:
		late = rep.items != nil && !cl.autoAck
	default:
		cl.ch <- rep // cap 1, one reply per call: never blocks
	}
	if cl != nil && cl.asyncAck && rep.result != nil && rep.result.Status != statusOK && c.ackErr == nil {
		c.ackErr = fmt.Errorf("ipc: ack: %w", &StatusError{Code: rep.result.Status, Message: rep.result.Message})
	}
	c.mu.Unlock()
	switch {
	case late:
		c.nackLate(rep.items)
	case cl != nil && cl.consumer != nil && rep.items != nil:
		cl.consumer.push(rep.items)
	case cl != nil && cl.consumer != nil:
		cl.consumer.end(&StatusError{Code: rep.result.Status, Message: rep.result.Message})
	}
	return nil
}

// signal sends on a cap-1 channel without blocking.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// newReadSide wraps nc for the handshake (plain: deadlines are errors);
// handshakeClient turns plain off once the client exists.
func newReadSide(nc net.Conn) (*readSide, *bufio.Reader) {
	rs := &readSide{nc: nc, plain: true}
	return rs, bufio.NewReaderSize(rs, writeChunk)
}
