package ipc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	// maxClientBuffer is how many encoded bytes callers may queue ahead of
	// the client's writer before they wait for it.
	maxClientBuffer = 4 << 20
	// cancelGrace bounds how long a cancelled PUT waits for the broker's
	// answer to its CANCEL, which says how many items were accepted.
	cancelGrace = 5 * time.Second
	// closeFlush bounds how long Close spends sending what is queued (the
	// acknowledgements Consumers queued).
	closeFlush = 100 * time.Millisecond
)

// Client is a connection to a queue broker. It is safe for concurrent use
// by any number of goroutines, and pipelined: a call sends its request and
// waits for its own reply only, so calls from several goroutines share the
// connection without waiting for each other's round trips, and requests
// queued at the same moment go out in one write. Create it with Dial or
// DialEnv; Close it when done.
//
// Every call takes a context. Its deadline becomes the request's wait limit
// (timeout_ms); with no deadline a GET or PUT waits as long as it takes. A
// context cancelled while a GET or PUT waits withdraws it (CANCEL) and the
// call returns an error wrapping ctx.Err(); items the broker had already
// sent for that GET are put back (NACK). When the deadline is what ended
// the wait, the error wraps both ErrTimeout and context.DeadlineExceeded.
//
// When the connection ends (Close, the broker's Close, the manager's
// death), every pending and later call returns an error wrapping ErrClosed.
type Client struct {
	nc       net.Conn
	maxFrame int
	maxItem  int
	version  uint16 // the protocol version the broker said in WELCOME

	wake    chan struct{} // out has bytes (cap 1)
	room    chan struct{} // the writer took out (cap 1)
	done    chan struct{} // closed when the connection is gone
	stopped chan struct{} // closed when reader and writer have ended

	// writeMu is held by whoever writes to nc: the writer goroutine, or a
	// caller that found it idle and writes its own request (one goroutine
	// handoff less on an idle connection).
	writeMu sync.Mutex

	// The read side (see clientread.go): the reader's alone.
	rs         *readSide
	r          *bufio.Reader
	lazyRead   bool          // nobody reads while nothing can come (a socket; tests' pipes: false)
	readerFree chan struct{} // the reader stepped down and calls wait (cap 1)
	bgWake     chan struct{} // the background reader may have to read (cap 1)

	mu           sync.Mutex
	reading      bool // a goroutine reads (the reader)
	waiters      int  // calls (and Consumer.Next) waiting
	bgTurns      int  // turns the background reader took (tests)
	writeStalled bool // a write could not go out at once
	nextID       uint32
	out          []byte // frames waiting for the writer
	spare        []byte
	pending      map[uint32]*call
	err          error // why done was closed; wraps ErrClosed
	// Acknowledgements queued by Consumers, not sent yet (see queueAcks),
	// and the first error the broker answered to one that was.
	acks, nacks   []uint64
	ackTimerArmed bool
	ackErr        error
	// Replies queued by Consumers' deliveries, sent with the
	// acknowledgements (taskclient.go), and the bytes of their results.
	answers     []answer
	answerBytes int
	// Tasks submitted and not yet ended, by tag, and the waits for
	// their outcomes (taskclient.go).
	nextTag     uint64
	tasks       map[uint64]*Future
	taskWaiters map[chan struct{}]struct{}
	// watchedTasks counts the futures of tasks whose Done channel was
	// asked for: their outcomes are read in the background. Result,
	// WaitAll and WaitAny read the connection themselves.
	watchedTasks int
}

// call is a request waiting for its reply.
type call struct {
	ch        chan clientReply // cap 1
	queue     string
	autoAck   bool
	abandoned bool // its caller gave up: a late ITEMS is NACKed (c.mu)
	// consumer: a CONSUME, whose ITEMS go to it until a RESULT ends it.
	consumer *Consumer
	// asyncAck: an ACK or NACK of queued acknowledgements: nobody waits,
	// and only a refusal is kept (ackErr).
	asyncAck bool
}

type clientReply struct {
	result *resultFrame
	items  *itemsFrame
}

// Delivery is an item handed out by GET. It stays in flight, owned by the
// client's connection, until Ack or Nack; if the connection closes first,
// the broker delivers it again.
type Delivery struct {
	Queue      string
	ID         uint64 // the broker's delivery id
	Deliveries int    // 1 the first time; more when redelivered
	Body       []byte
	// Request: the item is a task, whose submitter waits for its outcome:
	// answer it with Reply or Fail (an Ack answers it with an empty
	// result).
	Request bool

	c    *Client
	cons *Consumer // the Consumer that handed it out; nil for a GET's
}

// Dial connects to the broker listening on the Unix socket at path and
// shakes hands. ctx bounds the connect and handshake only. A broker that
// refuses this process (SO_PEERCRED) makes an error wrapping ErrRefused.
// It speaks protocol version 2; with a broker that knows only version 1
// (an older manager, which refuses the HELLO) it connects again speaking
// version 1, where everything but tasks works.
func Dial(ctx context.Context, path string) (*Client, error) {
	c, err := dial(ctx, path, ProtocolVersion)
	var se *StatusError
	// A broker refuses a version it does not speak with this message (a
	// version 1 broker's is "want magic \"GTYQ\" version 1"); another
	// BAD_HELLO would come again.
	if errors.As(err, &se) && se.Code == statusBadHello && strings.HasPrefix(se.Message, "want magic") {
		var err1 error
		if c, err1 = dial(ctx, path, 1); err1 != nil {
			err = fmt.Errorf("%w; then, speaking version 1: %w", err, err1)
		} else {
			err = nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("ipc: dial %s: %w", path, err)
	}
	return c, nil
}

func dial(ctx context.Context, path string, version uint16) (*Client, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	c, err := handshakeClient(ctx, nc, version)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

// DialEnv is Dial to the path in GOTYLEDON_QUEUE_SOCKET, which the manager
// sets in every worker's environment.
func DialEnv(ctx context.Context) (*Client, error) {
	path := os.Getenv(EnvSocket)
	if path == "" {
		return nil, fmt.Errorf("ipc: dial: %s is not set (not started by a gotyledon manager?)", EnvSocket)
	}
	return Dial(ctx, path)
}

// clientName names this process in the broker's logs.
func clientName() string {
	if s := os.Getenv("GOTYLEDON_SERVICE"); s != "" {
		return s + "/" + os.Getenv("GOTYLEDON_WORKER_ID")
	}
	return fmt.Sprintf("%s[%d]", filepath.Base(os.Args[0]), os.Getpid())
}

func handshakeClient(ctx context.Context, nc net.Conn, version uint16) (*Client, error) {
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	h := helloFrame{Version: version, Client: clientName()}
	copy(h.Magic[:], helloMagic)
	if _, err := nc.Write(appendHello(nil, &h)); err != nil {
		return nil, handshakeErr(ctx, fmt.Errorf("sending HELLO: %w", err))
	}
	rs, r := newReadSide(nc)
	fr := frameReader{r: r}
	payload, err := fr.read(1<<16, nil)
	if err != nil {
		return nil, handshakeErr(ctx, fmt.Errorf("reading WELCOME: %w", err))
	}
	f, err := decodeFrame(payload)
	if err != nil {
		return nil, fmt.Errorf("reading WELCOME: %w", err)
	}
	var w *welcomeFrame
	switch f := f.(type) {
	case *fatalFrame:
		return nil, fmt.Errorf("%w (%w)", &StatusError{Code: f.Status, Message: f.Message}, ErrClosed)
	case *welcomeFrame:
		w = f
	default:
		return nil, fmt.Errorf("reading WELCOME: %w: got %T", errBadFrame, f)
	}
	if w.Version != version || int64(w.MaxFrame) < int64(w.MaxItem)+frameSlack {
		return nil, fmt.Errorf("unusable WELCOME: version %d, max_frame %d, max_item %d", w.Version, w.MaxFrame, w.MaxItem)
	}
	if !stop() { // the AfterFunc ran, or runs: its deadline may land after ours
		return nil, handshakeErr(ctx, errors.New("handshake interrupted"))
	}
	nc.SetDeadline(time.Time{})
	c := &Client{
		nc:       nc,
		maxFrame: int(w.MaxFrame),
		maxItem:  int(w.MaxItem),
		version:  w.Version,
		wake:     make(chan struct{}, 1),
		room:     make(chan struct{}, 1),
		done:     make(chan struct{}),
		stopped:  make(chan struct{}),
		pending:  make(map[uint32]*call),
		tasks:    make(map[uint64]*Future),
		rs:       rs,

		taskWaiters: make(map[chan struct{}]struct{}),
		r:           r,

		readerFree: make(chan struct{}, 1),
		bgWake:     make(chan struct{}, 1),
	}
	_, c.lazyRead = nc.(syscall.Conn)
	rs.plain = false
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); c.writeLoop() }()
	go func() { defer wg.Done(); c.readInBackground() }()
	if !c.lazyRead {
		signal(c.bgWake)
	}
	go func() { wg.Wait(); close(c.stopped) }()
	return c, nil
}

func handshakeErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%w)", ctx.Err(), err)
	}
	return err
}

// MaxItem is the largest item (and task result) the broker accepts, in
// bytes, as it said when the client connected.
func (c *Client) MaxItem() int { return c.maxItem }

// Close closes the connection; pending calls return ErrClosed, and items
// this client holds in flight are requeued by the broker. Acknowledgements
// its Consumers queued are sent first, after a write in progress: that
// takes at most twice 100 ms when the broker does not read. It waits for
// the client's goroutines to end. Safe twice and concurrently.
func (c *Client) Close() error {
	// Best effort, and bounded: a broker that does not read must not keep
	// Close waiting. Acks that do not go out leave their items to be
	// delivered again (at least once).
	// A write in progress (the writer's, an ack timer's) may hold
	// acknowledgements already taken from the queue: wait for it, as long
	// as closeFlush lets it run, then write what is left.
	c.nc.SetWriteDeadline(time.Now().Add(closeFlush))
	c.writeMu.Lock()
	c.nc.SetWriteDeadline(time.Now().Add(closeFlush))
	c.writeOut() //nolint:errcheck // a failed write fails the client: fine, it closes
	c.writeMu.Unlock()
	c.fail(fmt.Errorf("%w: client closed", ErrClosed))
	<-c.stopped
	return nil
}

// fail ends the connection for err (the first one wins).
func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	close(c.done)
	c.endTasksLocked(err)
	var consumers []*Consumer
	for _, cl := range c.pending {
		if cl.consumer != nil {
			consumers = append(consumers, cl.consumer)
		}
	}
	c.mu.Unlock()
	c.nc.Close()
	for _, s := range consumers {
		s.end(err)
	}
}

func (c *Client) gone() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// send encodes a request into the outgoing buffer and, with cl, registers
// it for its reply. It waits while the buffer is over its limit.
func (c *Client) send(ctx context.Context, cl *call, encode func(dst []byte, id uint32) []byte) (uint32, error) {
	for {
		c.mu.Lock()
		if c.err != nil {
			c.mu.Unlock()
			return 0, c.err
		}
		if len(c.out) < maxClientBuffer {
			break
		}
		c.mu.Unlock()
		select {
		case <-c.room:
		case <-c.done:
		case <-ctx.Done():
			return 0, ctxErr(ctx)
		}
	}
	c.nextID++
	id := c.nextID
	c.out = encode(c.out, id)
	if cl != nil {
		c.pending[id] = cl
	}
	c.mu.Unlock()
	if c.writeMu.TryLock() {
		err := c.writeOut()
		c.writeMu.Unlock()
		if err != nil {
			return id, nil // fail ran: the caller's wait sees ErrClosed
		}
		c.mu.Lock()
		more := len(c.out) > 0 // queued while we wrote, by callers who found us busy
		c.mu.Unlock()
		if !more {
			return id, nil
		}
	}
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return id, nil
}

// writeOut writes what is queued in c.out; the caller holds writeMu.
func (c *Client) writeOut() error {
	c.mu.Lock()
	acks := c.encodeAcksLocked() // acknowledgements ride along with whatever is written
	buf := c.out
	c.out, c.spare = c.spare[:0], nil
	c.mu.Unlock()
	if acks {
		signal(c.bgWake) // their answers come whether or not a call waits
	}
	select {
	case c.room <- struct{}{}:
	default:
	}
	var err error
	if len(buf) > 0 {
		if err = c.write(buf); err != nil {
			c.fail(fmt.Errorf("%w: writing to the broker: %w", ErrClosed, err))
		}
	}
	c.mu.Lock()
	if cap(buf) <= 2*maxClientBuffer && c.spare == nil { // do not keep a huge one around
		c.spare = buf[:0]
	}
	c.mu.Unlock()
	return err
}

// write writes buf whole. What the socket does not take at once is
// written blocking, with the background reader reading meanwhile: a broker
// stops reading a connection whose replies are not read, and this write
// must not wait for a reader nobody is (see clientread.go).
func (c *Client) write(buf []byte) error {
	if !c.lazyRead {
		_, err := c.nc.Write(buf)
		return err
	}
	n, err := tryWrite(c.nc, buf)
	if err != nil || n == len(buf) {
		return err
	}
	c.mu.Lock()
	c.writeStalled = true
	c.mu.Unlock()
	signal(c.bgWake)
	_, err = c.nc.Write(buf[n:])
	c.mu.Lock()
	c.writeStalled = false
	c.mu.Unlock()
	return err
}

func (c *Client) writeLoop() {
	for {
		select {
		case <-c.wake:
		case <-c.done:
			return
		}
		c.writeMu.Lock()
		err := c.writeOut()
		c.writeMu.Unlock()
		if err != nil {
			return
		}
	}
}

// nackLate gives back the items of an ITEMS nobody waits for any more. It
// runs on the read loop, which must never block on writing: a reader
// stuck behind a full socket would stop reading the replies the broker's
// own flow control waits on, and both sides would wait for ever. So the
// NACK is queued past maxClientBuffer (it is small, and one per late
// ITEMS) and handed to the writer goroutine, never written from here.
func (c *Client) nackLate(f *itemsFrame) {
	ids := make([]uint64, 0, len(f.Items))
	for _, it := range f.Items {
		if it.Delivery != 0 {
			ids = append(ids, it.Delivery)
		}
	}
	if len(ids) == 0 {
		return
	}
	c.mu.Lock()
	if c.err != nil { // the connection is gone: the broker requeues them
		c.mu.Unlock()
		return
	}
	c.nextID++
	c.out = appendAck(c.out, &ackFrame{Nack: true, ID: c.nextID, Deliveries: ids})
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// timeoutMS turns ctx's deadline into a wait limit.
func timeoutMS(ctx context.Context) uint32 {
	dl, ok := ctx.Deadline()
	if !ok {
		return waitForever
	}
	d := time.Until(dl)
	if d <= 0 {
		return 1 // 0 would mean "do not wait": a FULL, not the TIMEOUT it is
	}
	ms := (d + time.Millisecond - 1) / time.Millisecond
	return uint32(min(int64(ms), math.MaxUint32-1))
}

// statusErr turns a RESULT into an error (nil for OK). A TIMEOUT caused
// by ctx's deadline also wraps context.DeadlineExceeded.
func statusErr(ctx context.Context, r *resultFrame) error {
	if r.Status == statusOK {
		return nil
	}
	err := &StatusError{Code: r.Status, Message: r.Message}
	if r.Status == statusTimeout {
		if _, ok := ctx.Deadline(); ok {
			return fmt.Errorf("%w (%w)", err, context.DeadlineExceeded)
		}
	}
	return err
}

// ctxErr is the error of a call its context ended.
func ctxErr(ctx context.Context) error {
	err := ctx.Err()
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w (%w)", ErrTimeout, err)
	}
	return err
}

// wait waits for cl's reply. When ctx ends first it withdraws the request
// (CANCEL) and either abandons it (abandon: a late ITEMS is NACKed) or
// waits a little for the broker's answer to the CANCEL.
func (c *Client) wait(ctx context.Context, id uint32, cl *call, cancellable, abandon bool) (clientReply, error) {
	r, err := await(c, ctx, cl.ch)
	if err == nil || ctx.Err() == nil {
		return r, err // a reply, or the connection's end
	}
	c.mu.Lock()
	_, waiting := c.pending[id]
	if waiting && abandon {
		cl.abandoned = true
	}
	c.mu.Unlock()
	if !waiting { // the reply is in cl.ch already
		return <-cl.ch, nil
	}
	if cancellable {
		c.send(context.Background(), nil, func(dst []byte, _ uint32) []byte {
			return appendCancel(dst, &cancelFrame{ID: id})
		})
	}
	if abandon {
		return clientReply{}, ctxErr(ctx)
	}
	grace, stop := context.WithTimeout(context.Background(), cancelGrace)
	defer stop()
	r, gerr := await(c, grace, cl.ch)
	switch {
	case gerr == nil:
		return r, ctxErr(ctx)
	case grace.Err() == nil:
		return clientReply{}, gerr // the connection's end
	}
	c.mu.Lock()
	cl.abandoned = true
	c.mu.Unlock()
	return clientReply{}, ctxErr(ctx)
}

// Put appends item to the tail of queue, waiting for room while the queue
// is full (up to ctx's deadline). See PutBatch.
func (c *Client) Put(ctx context.Context, queue string, item []byte) error {
	_, err := c.PutBatch(ctx, queue, [][]byte{item})
	return err
}

// TryPut is Put without waiting: a full queue makes an error wrapping
// ErrFull.
func (c *Client) TryPut(queue string, item []byte) error {
	_, err := c.putFrames(context.Background(), queue, [][]byte{item}, false)
	return err
}

// PutBatch appends items, in order, to the tail of queue, waiting for room
// while the queue is full, up to ctx's deadline. It returns how many were
// accepted: the first accepted items are queued, the others are not.
// Items go in one frame, or in as few as max_frame allows, each sent once
// the previous one is fully accepted. If ctx is cancelled while the PUT
// waits, PutBatch withdraws it (CANCEL) and waits for the broker's answer,
// which says how many got in, for at most 5 seconds (after that it reports
// only the frames it knows were accepted). An item longer than the broker's
// max_item makes an error wrapping ErrTooLarge before anything is sent.
// The items' bytes are copied before PutBatch returns.
func (c *Client) PutBatch(ctx context.Context, queue string, items [][]byte) (accepted int, err error) {
	if ctx.Err() != nil {
		return 0, fmt.Errorf("ipc: put on %q: %w", queue, ctxErr(ctx))
	}
	return c.putFrames(ctx, queue, items, true)
}

// putFrames sends items in as few PUTs as max_frame allows, one after the
// other; wait false makes them TryPuts (timeout_ms 0).
func (c *Client) putFrames(ctx context.Context, queue string, items [][]byte, wait bool) (int, error) {
	if len(queue) > maxStr8 {
		return 0, fmt.Errorf("ipc: put on %.40q...: %w", queue, ErrNoSuchQueue)
	}
	for i, it := range items {
		if len(it) > c.maxItem {
			return 0, fmt.Errorf("ipc: put on %q: item %d: %w", queue, i,
				&StatusError{Code: statusTooLarge, Message: fmt.Sprintf("%d bytes, max_item is %d", len(it), c.maxItem)})
		}
	}
	accepted := 0
	for {
		// As many items as fit in one frame.
		size, n := putFixedLen+len(queue), 0
		for n < len(items) && (n == 0 || size+putItemLen+len(items[n]) <= c.maxFrame) {
			size += putItemLen + len(items[n])
			n++
		}
		chunk := items[:n]
		items = items[n:]
		var timeout uint32 // what is left of ctx's time, for each frame
		if wait {
			timeout = timeoutMS(ctx)
		}
		cl := &call{ch: make(chan clientReply, 1)}
		id, err := c.send(ctx, cl, func(dst []byte, id uint32) []byte {
			return appendPut(dst, &putFrame{ID: id, TimeoutMS: timeout, Queue: queue, Items: chunk})
		})
		if err != nil {
			return accepted, fmt.Errorf("ipc: put on %q: %w", queue, err)
		}
		r, err := c.wait(ctx, id, cl, true, false)
		if r.result != nil {
			accepted += int(r.result.N)
			if err == nil {
				err = statusErr(ctx, r.result)
			}
		} else if err == nil {
			err = fmt.Errorf("%w: ITEMS in reply to a PUT", errBadFrame)
		}
		if err != nil {
			return accepted, fmt.Errorf("ipc: put on %q: %w", queue, err)
		}
		if len(items) == 0 {
			break
		}
	}
	return accepted, nil
}

// Get takes one item from the head of queue, waiting for one as long as
// ctx allows. The item is in flight until Ack or Nack.
func (c *Client) Get(ctx context.Context, queue string) (*Delivery, error) {
	ds, err := c.GetBatch(ctx, queue, 1)
	if err != nil {
		return nil, err
	}
	return ds[0], nil
}

// GetBatch takes up to max items from the head of queue, waiting as long
// as ctx allows for the first one (never for more). Each is in flight
// until Ack or Nack. max must be at least 1.
func (c *Client) GetBatch(ctx context.Context, queue string, max int) ([]*Delivery, error) {
	f, err := c.get(ctx, queue, max, false)
	if err != nil {
		return nil, err
	}
	ds := make([]Delivery, len(f.Items))
	out := make([]*Delivery, len(f.Items))
	for i, it := range f.Items {
		ds[i] = Delivery{Queue: queue, ID: it.Delivery, Deliveries: int(it.Deliveries), Body: it.Body, Request: f.Requests, c: c}
		out[i] = &ds[i]
	}
	return out, nil
}

// GetAutoAck takes one item from the head of queue and ends it at once:
// nothing to ack, but an item this process dies with is lost (at most
// once). It waits for an item as long as ctx allows; if ctx ends while
// the broker is sending one, that item is lost.
func (c *Client) GetAutoAck(ctx context.Context, queue string) ([]byte, error) {
	f, err := c.get(ctx, queue, 1, true)
	if err != nil {
		return nil, err
	}
	return f.Items[0].Body, nil
}

func (c *Client) get(ctx context.Context, queue string, max int, autoAck bool) (*itemsFrame, error) {
	if max < 1 {
		return nil, fmt.Errorf("ipc: get from %q: max %d, want at least 1", queue, max)
	}
	if len(queue) > maxStr8 {
		return nil, fmt.Errorf("ipc: get from %.40q...: %w", queue, ErrNoSuchQueue)
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("ipc: get from %q: %w", queue, ctxErr(ctx))
	}
	var flags byte
	if autoAck {
		flags = flagAutoAck
	}
	cl := &call{ch: make(chan clientReply, 1), queue: queue, autoAck: autoAck}
	timeout := timeoutMS(ctx)
	id, err := c.send(ctx, cl, func(dst []byte, id uint32) []byte {
		return appendGet(dst, &getFrame{ID: id, TimeoutMS: timeout, Queue: queue, Max: uint32(min(max, math.MaxUint32)), Flags: flags})
	})
	if err != nil {
		return nil, fmt.Errorf("ipc: get from %q: %w", queue, err)
	}
	r, err := c.wait(ctx, id, cl, true, true)
	if err != nil {
		return nil, fmt.Errorf("ipc: get from %q: %w", queue, err)
	}
	if r.result != nil {
		err := statusErr(ctx, r.result)
		if err == nil {
			err = fmt.Errorf("%w: RESULT OK in reply to a GET", errBadFrame)
		}
		return nil, fmt.Errorf("ipc: get from %q: %w", queue, err)
	}
	return r.items, nil
}

// Ack ends the given deliveries: the broker forgets their items. A
// delivery that is not this connection's in flight (already acked, say)
// makes a *StatusError with code UNKNOWN_DELIVERY; the others are still
// acked. ctx bounds the wait for the broker's answer only.
func (c *Client) Ack(ctx context.Context, ds ...*Delivery) error {
	return c.ack(ctx, false, ds)
}

// Nack puts the given deliveries back at the head of their queues, in
// delivery order, to be delivered again. Errors as Ack.
func (c *Client) Nack(ctx context.Context, ds ...*Delivery) error {
	return c.ack(ctx, true, ds)
}

func (c *Client) ack(ctx context.Context, nack bool, ds []*Delivery) error {
	what := "ack"
	if nack {
		what = "nack"
	}
	ids := make([]uint64, 0, len(ds))
	for _, d := range ds {
		if d == nil {
			return fmt.Errorf("ipc: %s: nil delivery", what)
		}
		ids = append(ids, d.ID)
	}
	perFrame := (c.maxFrame - ackFixedLen) / 8
	var firstErr error
	for len(ids) > 0 {
		chunk := ids[:min(len(ids), perFrame)]
		ids = ids[len(chunk):]
		cl := &call{ch: make(chan clientReply, 1)}
		id, err := c.send(ctx, cl, func(dst []byte, id uint32) []byte {
			return appendAck(dst, &ackFrame{Nack: nack, ID: id, Deliveries: chunk})
		})
		if err != nil {
			return fmt.Errorf("ipc: %s: %w", what, err)
		}
		r, err := c.wait(ctx, id, cl, false, true)
		if err != nil {
			return fmt.Errorf("ipc: %s: %w", what, err)
		}
		if r.result == nil {
			return fmt.Errorf("ipc: %s: %w: ITEMS in reply", what, errBadFrame)
		}
		if err := statusErr(ctx, r.result); err != nil && firstErr == nil {
			firstErr = fmt.Errorf("ipc: %s: %w", what, err)
		}
	}
	return firstErr
}
