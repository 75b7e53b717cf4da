package ipc

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Forwarded queues. A queue whose items a store server keeps (QueueConfig's
// Forward: a JetStream bridge, package ipc/jsstore) is served by that
// server: a connection's requests on it go there over a connection of the
// connection's own (its upstream), dialled at its first such request, and
// the replies come back into the connection's outbox unchanged. So the
// store server sees one client per worker connection and applies the
// protocol's rules to it, the close of a connection that NACKs its items
// in flight included (the broker closes the upstream with it).
//
// The store server's delivery ids start at StoreDeliveryBase, above any
// the broker hands out, so an ACK or NACK is split by id: the broker's
// deliveries are settled here, the others forwarded, and the client gets
// one RESULT with both counts (ackMerge).
//
// Flow control: every request forwarded and not yet answered counts as a
// waiting request of the connection, so a connection has at most
// maxWaiting of them (and their replies) outstanding, as with the broker's
// own queues. The reader alone writes to the upstream, and flushes it
// whenever it would wait: before reading from the socket, and before
// waiting for replies to be written or requests answered.

// upstreamDialTimeout bounds the connect and handshake with the store
// server, which the connection's reader waits for.
const upstreamDialTimeout = 5 * time.Second

// fwdKind is what a forwarded request waits for.
type fwdKind uint8

const (
	fwdOne     fwdKind = iota // PUT or GET: the first reply ends it
	fwdConsume                // ITEMS go on until a RESULT ends it
	fwdAck                    // ACK or NACK: its RESULT is merged with the broker's part
	fwdCancel                 // CANCEL: no reply; nothing waits
)

// ackMerge is what the broker found of a split ACK's deliveries.
type ackMerge struct {
	found, unknown uint32
}

type pendingFwd struct {
	kind  fwdKind
	merge ackMerge
	held  int // a PUT's bytes, counted as a waiting PUT's (flow control)
	// take: a GET or CONSUME, which a drain ends (autoAck: a GET's
	// flag); drained: the drain sent its CANCEL, so the CANCELLED that
	// ends it is answered DRAINING. nack: an ACK's kind.
	take, autoAck, drained, nack bool
}

// upstream is one connection's connection to the store server.
type upstream struct {
	c        *conn
	nc       net.Conn
	maxFrame int
	dead     atomic.Bool // the reader stopped: the next forward dials again
	// wmu guards bw: the client's reader writes its requests, and a drain
	// its CANCELs (drainUpstream). A request is registered and written
	// under it, so a CANCEL never goes ahead of what it cancels.
	wmu sync.Mutex
	bw  *bufio.Writer
	// held counts the items this upstream handed the connection that it
	// has not settled (guarded by c.mu; c.fwdHeld sums them).
	held int

	mu      sync.Mutex
	pending map[uint32]pendingFwd // forwarded requests not yet answered, by id
	gone    bool                  // answered everything pending: register nothing more
}

// upstream returns the connection's live upstream, dialling one if there
// is none, and trying again for up to wait while the store server is not
// there (it starts with the manager's workers, and is restarted when it
// dies). Called by the reader only, which the tries hold up.
func (c *conn) upstream(wait time.Duration) (*upstream, error) {
	if c.up != nil && !c.up.dead.Load() {
		return c.up, nil
	}
	if c.up != nil {
		c.up.nc.Close()
		c.up = nil
	}
	if c.b.storeSocket == "" {
		return nil, errors.New("no store server configured")
	}
	// The dial may wait: replies other goroutines queue meanwhile go out
	// without the reader.
	c.endHandling(true)
	deadline := time.Now().Add(wait)
	pause := 5 * time.Millisecond
	var nc net.Conn
	var err error
	for {
		nc, err = net.DialTimeout("unix", c.b.storeSocket, upstreamDialTimeout)
		if err == nil {
			break
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil, fmt.Errorf("connect to the queue store: %w", err)
		}
		time.Sleep(min(pause, left))
		pause = min(2*pause, 100*time.Millisecond)
	}
	u := &upstream{c: c, nc: nc, bw: bufio.NewWriterSize(nc, writeChunk), pending: make(map[uint32]pendingFwd)}
	br, err := u.handshake()
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("queue store handshake: %w", err)
	}
	c.b.wg.Add(1)
	c.mu.Lock()
	c.upReaders++
	c.mu.Unlock()
	go u.readLoop(br)
	c.up = u
	c.mu.Lock()
	c.upConn = nc
	c.upCur = u
	fatal := c.fatalSet
	c.mu.Unlock()
	if fatal { // the connection is ending: fatal closed the last one
		nc.Close()
	}
	return u, nil
}

func (u *upstream) handshake() (*bufio.Reader, error) {
	u.nc.SetDeadline(time.Now().Add(upstreamDialTimeout))
	defer u.nc.SetDeadline(time.Time{})
	hello := appendHello(nil, &helloFrame{Magic: [4]byte([]byte(helloMagic)), Version: ProtocolVersion, Client: fmt.Sprintf("broker conn %d (%s)", u.c.id, u.c.client)})
	if _, err := u.nc.Write(hello); err != nil {
		return nil, err
	}
	br := bufio.NewReaderSize(u.nc, writeChunk)
	fr := frameReader{r: br}
	payload, err := fr.read(maxHelloLen, nil)
	if err != nil {
		return nil, err
	}
	f, err := decodeFrame(payload)
	if err != nil {
		return nil, err
	}
	switch f := f.(type) {
	case *welcomeFrame:
		u.maxFrame = int(f.MaxFrame)
		return br, nil
	case *fatalFrame:
		return nil, &StatusError{Code: f.Status, Message: f.Message}
	default:
		return nil, fmt.Errorf("store server answered HELLO with %s", frameName(f))
	}
}

// forward sends a request's frame (payload: type and body) to the store
// server, to be answered from there. A store server that cannot be reached
// within wait (the request's timeout, at most upstreamDialTimeout) answers
// it TIMEOUT, saying why.
func (c *conn) forward(payload []byte, id uint32, p pendingFwd, wait time.Duration) {
	if c.up == nil || c.up.dead.Load() {
		switch p.kind {
		case fwdCancel:
			return // what it would cancel was answered when the upstream ended
		case fwdAck:
			// Its deliveries were a store server's that this connection
			// reaches no more: no other knows them (the store delivers
			// the items again). Nothing to dial, nothing to wait for.
			c.reply(id, statusUnknownDelivery, p.merge.found, "deliveries of a queue store connection that has ended")
			return
		}
	}
	u, err := c.upstream(min(wait, upstreamDialTimeout))
	if err == nil {
		u.wmu.Lock()
		ok, draining := p.kind == fwdCancel, false
		if !ok {
			ok, draining = u.register(id, p)
		}
		if ok {
			u.write(payload)
		}
		u.wmu.Unlock()
		switch {
		case ok:
			return
		case draining:
			c.replyDraining(id)
			return
		}
		err = errors.New("connection to the queue store lost")
	}
	c.log.Warn("queue store unavailable", zap.Error(err))
	if p.kind == fwdAck {
		c.reply(id, statusUnknownDelivery, p.merge.found, "queue store unavailable: "+err.Error())
		return
	}
	c.reply(id, statusTimeout, 0, "queue store unavailable: "+err.Error())
}

// write writes a frame (payload: type and body) to the store server.
// Called with wmu held.
func (u *upstream) write(payload []byte) {
	var hdr [frameHeaderLen]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(payload)))
	// A store server that stops reading fails the write within the
	// frame deadline, rather than holding up this reader for ever.
	u.nc.SetWriteDeadline(deadlineIn(u.c.b.frameDeadline))
	u.bw.Write(hdr[:])
	if _, err := u.bw.Write(payload); err != nil {
		u.nc.Close() // its reader answers what is pending, this one too
	}
}

// drainUpstream cancels the connection's GETs and CONSUMEs that wait on
// its store server, a drain having begun (drain.go): their CANCELLED is
// answered DRAINING. It writes from a goroutine of its own, since the
// write may wait for the store server, and Drain does not wait.
func (c *conn) drainUpstream() {
	c.mu.Lock()
	u := c.upCur
	c.mu.Unlock()
	if u == nil {
		return
	}
	b := c.b
	b.mu.Lock()
	if b.closing { // Close answers everything; its wait must not miss a goroutine
		b.mu.Unlock()
		return
	}
	b.wg.Add(1)
	b.mu.Unlock()
	go func() {
		defer b.wg.Done()
		u.wmu.Lock()
		defer u.wmu.Unlock()
		u.mu.Lock()
		var ids []uint32
		for id, p := range u.pending {
			if p.take && !p.drained {
				p.drained = true
				u.pending[id] = p
				ids = append(ids, id)
			}
		}
		u.mu.Unlock()
		if len(ids) == 0 {
			return
		}
		for _, id := range ids {
			u.write(appendCancel(nil, &cancelFrame{ID: id})[frameHeaderLen:])
		}
		u.nc.SetWriteDeadline(deadlineIn(b.frameDeadline))
		if err := u.bw.Flush(); err != nil {
			u.nc.Close()
		}
	}()
}

// forwarded reports whether request id was forwarded and waits there.
func (c *conn) forwarded(id uint32) bool {
	if c.up == nil {
		return false
	}
	c.up.mu.Lock()
	defer c.up.mu.Unlock()
	_, ok := c.up.pending[id]
	return ok
}

// flushUpstream writes what was forwarded. Called by the reader only.
func (c *conn) flushUpstream() {
	if c.up == nil {
		return
	}
	c.up.wmu.Lock()
	defer c.up.wmu.Unlock()
	if c.up.bw.Buffered() == 0 {
		return
	}
	c.up.nc.SetWriteDeadline(deadlineIn(c.b.frameDeadline))
	if err := c.up.bw.Flush(); err != nil {
		c.up.nc.Close()
	}
}

// closeUpstream ends the upstream with the connection: the store server
// takes back the items in flight on it. Called once the reader has
// stopped.
//
// It shuts the upstream's write side only, after what was forwarded: the
// store server reads it all (the client's last ACKs among it), then gives
// back what is still in flight and closes, which ends the upstream's
// reader. A full close here would make the store server's next write to
// it fail while those ACKs wait unread in its socket, and the store server
// would give back items the client had acknowledged. The read deadline
// bounds a store server that does not close.
func (c *conn) closeUpstream() {
	if c.up == nil {
		return
	}
	c.flushUpstream()
	c.up.wmu.Lock() // a drain's CANCELs go before, or fail
	defer c.up.wmu.Unlock()
	if uc, ok := c.up.nc.(interface{ CloseWrite() error }); ok && uc.CloseWrite() == nil {
		c.up.nc.SetReadDeadline(deadlineIn(c.b.frameDeadline))
		return
	}
	c.up.nc.Close()
}

// register records a forwarded request as waiting; false once the
// upstream is gone, or, with draining, for a GET or CONSUME of a draining
// connection. Under mu, as drainUpstream's look at what is pending, so a
// GET or CONSUME is either refused or cancelled by the drain.
func (u *upstream) register(id uint32, p pendingFwd) (ok, draining bool) {
	u.mu.Lock()
	if u.gone {
		u.mu.Unlock()
		return false, false
	}
	if p.take && u.c.draining.Load() {
		u.mu.Unlock()
		return false, true
	}
	u.pending[id] = p
	u.mu.Unlock()
	u.c.mu.Lock()
	u.c.nWaiting++
	u.c.waitingBytes += p.held
	if p.take {
		u.c.fwdTakers++
	}
	u.c.mu.Unlock()
	return true, false
}

// answered forgets request id if the reply ends it (end), returning what
// it was and whether it ended; known says whether it was pending. items
// is the number of items the reply hands the connection (ITEMS), which it
// holds from now on but for an auto-ack GET's, acknowledged as they pass.
func (u *upstream) answered(id uint32, end bool, items int) (p pendingFwd, ended, known bool) {
	u.mu.Lock()
	p, known = u.pending[id]
	ended = known && (end || p.kind == fwdOne)
	if ended {
		delete(u.pending, id)
	}
	u.mu.Unlock()
	c := u.c
	if items > 0 && known && p.autoAck {
		c.countAcked(items)
		items = 0
	}
	if !ended && items == 0 {
		return p, false, known
	}
	c.mu.Lock()
	u.held += items
	c.fwdHeld += items
	if ended {
		c.nWaiting--
		c.waitingBytes -= p.held
		if p.take {
			c.fwdTakers--
		}
	}
	c.mu.Unlock()
	if ended {
		c.signal(c.unwaited)
		if p.take {
			c.drainCheck()
		}
	}
	return p, ended, known
}

// settled records that the store server found n of the connection's
// deliveries in an ACK or NACK: they are no longer held.
func (u *upstream) settled(n uint32, nack bool) {
	c := u.c
	c.mu.Lock()
	k := min(int(n), u.held)
	u.held -= k
	c.fwdHeld -= k
	c.mu.Unlock()
	if !nack {
		c.countAcked(int(n))
	}
	if k > 0 {
		c.drainCheck()
	}
}

// readLoop passes the store server's replies to the client until the
// upstream ends, then answers what is still pending.
func (u *upstream) readLoop(br *bufio.Reader) {
	defer u.c.b.wg.Done()
	fr := frameReader{r: br}
	var err error
	for {
		var payload []byte
		payload, err = fr.read(u.maxFrame, func(byte) bool { return true })
		if err != nil {
			break
		}
		if typ := payload[0]; typ == typeFatal {
			if f, derr := decodeFrame(payload); derr == nil {
				ff := f.(*fatalFrame)
				err = &StatusError{Code: ff.Status, Message: ff.Message}
			}
			break
		} else if typ != typeResult && typ != typeItems || len(payload) < 5 {
			err = fmt.Errorf("store server sent a frame of type %#x", typ)
			break
		}
		id := binary.BigEndian.Uint32(payload[1:5])
		if payload[0] == typeItems {
			n := 0
			if len(payload) >= 9 {
				n = int(binary.BigEndian.Uint32(payload[5:9]))
			}
			u.answered(id, false, n)
			u.c.passOn(payload)
			continue
		}
		p, ok, _ := u.answered(id, true, 0)
		if len(payload) >= 7 && binary.BigEndian.Uint16(payload[5:7]) == statusShuttingDown {
			// The store server stops, not the broker: its bridge is
			// restarted, and the request may be made again.
			n := uint32(0)
			if len(payload) >= 11 {
				n = binary.BigEndian.Uint32(payload[7:11])
			}
			if ok && p.kind == fwdAck {
				u.c.reply(id, statusUnknownDelivery, p.merge.found, "queue store stopping")
				continue
			}
			u.c.reply(id, statusTimeout, n, "queue store stopping; try again")
			continue
		}
		if ok && p.kind == fwdAck {
			f, derr := decodeFrame(payload)
			if derr != nil {
				err = derr
				break
			}
			r := f.(*resultFrame)
			u.settled(r.N, p.nack)
			status, msg := r.Status, r.Message
			if status == statusOK && p.merge.unknown > 0 {
				status, msg = statusUnknownDelivery, fmt.Sprintf("%d deliveries are not this connection's in-flight items", p.merge.unknown)
			}
			u.c.reply(id, status, r.N+p.merge.found, msg)
			continue
		}
		if ok && p.drained && len(payload) >= 11 && binary.BigEndian.Uint16(payload[5:7]) == statusCancelled {
			// Ended by the drain's CANCEL, not the client's.
			u.c.reply(id, statusDraining, binary.BigEndian.Uint32(payload[7:11]), drainingMessage)
			continue
		}
		u.c.passOn(payload)
	}
	u.dead.Store(true)
	u.nc.Close()
	u.mu.Lock()
	u.gone = true
	pending := u.pending
	u.pending = nil
	u.mu.Unlock()
	if len(pending) > 0 {
		u.c.log.Warn("connection to the queue store lost; its requests are answered TIMEOUT", zap.Int("requests", len(pending)), zap.Error(err))
	}
	for id, p := range pending {
		if p.kind == fwdAck {
			u.c.reply(id, statusUnknownDelivery, p.merge.found, "connection to the queue store lost")
		} else {
			u.c.reply(id, statusTimeout, 0, "connection to the queue store lost")
		}
		u.c.mu.Lock()
		u.c.nWaiting--
		u.c.waitingBytes -= p.held
		if p.take {
			u.c.fwdTakers--
		}
		u.c.mu.Unlock()
	}
	u.c.signal(u.c.unwaited)
	// The store server has let go of what it handed out here (it
	// delivers those items again): the connection holds none of them.
	c := u.c
	c.mu.Lock()
	c.fwdHeld -= u.held
	u.held = 0
	c.upReaders--
	leave := c.upReaders == 0 && c.cleaned
	c.mu.Unlock()
	if leave {
		c.b.leaveGroup(c)
	} else {
		c.drainCheck()
	}
}

// passOn queues a frame from the store server for the client as it is.
func (c *conn) passOn(payload []byte) {
	c.mu.Lock()
	if c.closed || c.fatalSet {
		c.mu.Unlock()
		return
	}
	c.outbox = append(c.outbox, outMsg{kind: msgRaw, raw: payload})
	wake := !c.handling
	c.mu.Unlock()
	if wake {
		c.signal(c.wake)
	}
}
