package ipc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Store keeps the items of queues outside a broker's memory, for a
// StoreServer to serve with PROTOCOL.md (package ipc/jsstore keeps them in
// NATS JetStream). Its methods are called concurrently.
type Store interface {
	// Put stores items at the tail of queue, in order, and returns how
	// many of the first it stored: all of them and nil, or fewer and an
	// error. While the queue is full it waits for room up to wait (< 0:
	// without limit), calling waiting (if not nil) once as it begins to;
	// when room does not come it returns an error wrapping ErrFull. It
	// returns ctx's error once ctx ends. Any other error is the store's
	// failure.
	Put(ctx context.Context, queue string, items [][]byte, wait time.Duration, waiting func()) (int, error)
	// Get hands out up to max items of queue, waiting up to wait (< 0:
	// without limit) for the first, and calling waiting (if not nil) once
	// as it begins to wait: items, or none and nil when the wait ended
	// with none. It returns ctx's error once ctx ends, never items with an
	// error.
	Get(ctx context.Context, queue string, max int, wait time.Duration, waiting func()) ([]StoredItem, error)
}

// PipelinedStore is a Store whose puts may overlap. StartPut begins a
// put, sending its items before it returns, in the order of the calls,
// and returns a function that waits for the outcome, which it returns as
// Put does (the wait for room counts from StartPut). A StoreServer starts
// a connection's PUTs on a queue one after the other and waits for their
// outcomes concurrently, so that a producer with several PUTs in flight
// waits for the store's round trip once, not once each. Their items are
// stored in the order of the PUTs, but for a PUT that has to try again
// (the queue is full, the store cannot be reached for a moment): a later
// PUT of the connection may then be stored first.
type PipelinedStore interface {
	Store
	StartPut(ctx context.Context, queue string, items [][]byte, wait time.Duration, waiting func()) func() (int, error)
}

// StoredItem is an item a Store handed out, in flight until Ack or Nack
// (or until the store takes it back on its own, as JetStream does after
// its ack wait).
type StoredItem interface {
	Body() []byte
	// Deliveries counts the times the item was handed out, this one
	// included.
	Deliveries() uint32
	// Ack removes the item for good; Nack makes it deliverable again.
	Ack() error
	Nack() error
}

// StoreServerOptions configure a StoreServer.
type StoreServerOptions struct {
	// Store keeps the items.
	Store Store
	// Queues are the names served; a request for another gets
	// NO_SUCH_QUEUE.
	Queues []string
	// MaxItem is the largest item accepted, in bytes. <= 0: DefaultMaxItem.
	MaxItem int
	// FirstDelivery is the first delivery id handed out; the ids that
	// follow count up from it. A broker that forwards to this server
	// keeps its own ids apart from these (StoreDeliveryBase).
	FirstDelivery uint64
	// Allow decides whether a connected peer may use the server, as
	// BrokerOptions.Allow. nil: the server process's uid, or 0.
	Allow func(Peer) bool
	// Logger receives connection events and store failures. nil: no logs.
	Logger *zap.Logger
	// FrameDeadline bounds the wait for a HELLO, and the write of a
	// FATAL to a client that does not read. <= 0: 10s.
	FrameDeadline time.Duration
}

// StoreDeliveryBase is the delivery id a store's server starts from when it
// serves a broker: a broker's own delivery ids stay below it, so one ACK
// can name deliveries of both and each goes where it belongs.
const StoreDeliveryBase uint64 = 1 << 63

// maxStoreGet caps how many items one GET asks the store for: more would
// rarely fit one frame, and those that do not go back.
const maxStoreGet = 1024

// fitting is how many items of queue to ask the store for, for a request
// of want: no more than one ITEMS frame holds of the longest items of the
// queue's last batch.
func (s *StoreServer) fitting(queue string, want int) int {
	if big := s.largest[queue].Load(); big > 0 {
		return max(1, min(want, (s.itemsRoom-itemsFixedLen)/(itemsEntryLen+int(big))))
	}
	return want
}

// StoreServer serves queues kept by a Store to clients on stream sockets,
// speaking PROTOCOL.md. What differs from a Broker is where the items are:
//
//   - Who owns an item is the store's business. An item in flight to a
//     connection is NACKed when the connection closes, as the broker's
//     rule 4 says; an item in flight when this server's process dies is
//     the store's to deliver again (JetStream does after its ack wait).
//   - Capacity is the store's: JetStream's bounds the items it holds,
//     waiting and in flight.
//   - Waiting requests of one connection on one queue take effect in the
//     order they were sent (PUTs in one line, GETs in another); across
//     connections the store decides who is served first.
//
// Safe for concurrent use; Close is safe to call twice.
type StoreServer struct {
	store     Store
	queues    map[string]bool
	maxItem   int
	maxFrame  int
	itemsRoom int // the longest ITEMS frame it sends
	deadline  time.Duration
	allow     func(Peer) bool
	log       *zap.Logger
	nextID    atomic.Uint64 // the last delivery id handed out
	// largest is, per queue, the longest item of the last batch handed
	// out: a get asks the store for no more items of that size than one
	// ITEMS frame holds, since those that do not fit go back (and count a
	// delivery more).
	largest map[string]*atomic.Int64

	mu        sync.Mutex
	closing   bool
	listeners map[net.Listener]struct{}
	conns     map[*storeConn]struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// NewStoreServer validates opts and returns a server that serves nothing
// until Serve is called.
func NewStoreServer(opts StoreServerOptions) (*StoreServer, error) {
	if opts.Store == nil {
		return nil, errors.New("ipc: new store server: no store")
	}
	s := &StoreServer{
		store:     opts.Store,
		queues:    make(map[string]bool, len(opts.Queues)),
		largest:   make(map[string]*atomic.Int64, len(opts.Queues)),
		maxItem:   opts.MaxItem,
		deadline:  opts.FrameDeadline,
		allow:     opts.Allow,
		log:       opts.Logger,
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*storeConn]struct{}),
	}
	if s.maxItem <= 0 {
		s.maxItem = DefaultMaxItem
	}
	if s.deadline <= 0 {
		s.deadline = defaultFrameDeadline
	}
	if s.log == nil {
		s.log = zap.NewNop()
	}
	if s.allow == nil {
		uid := os.Getuid()
		s.allow = func(p Peer) bool { return p.UID == uid || p.UID == 0 }
	}
	for _, q := range opts.Queues {
		if !queueNameRE.MatchString(q) || len(q) > maxQueueName {
			return nil, fmt.Errorf("ipc: new store server: invalid queue name %q", q)
		}
		s.queues[q] = true
		s.largest[q] = new(atomic.Int64)
	}
	// It reads any frame a broker of the same MaxItem may forward (the
	// broker's max_frame grows with its longest queue name), and sends
	// ITEMS no longer than the least max_frame such a broker announces,
	// since the broker passes them on to its clients as they are.
	s.maxFrame = s.maxItem + putFixedLen + maxQueueName + putItemLen
	s.itemsRoom = s.maxItem + frameSlack
	if s.maxFrame > 1<<31 {
		return nil, fmt.Errorf("ipc: new store server: max item %d too large", s.maxItem)
	}
	s.nextID.Store(opts.FirstDelivery)
	return s, nil
}

// Serve accepts connections on l and serves them until Close. It blocks,
// and returns nil after Close or the error that made Accept fail.
func (s *StoreServer) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		l.Close()
		return nil
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()
	for {
		nc, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return nil
			}
			return fmt.Errorf("ipc: store server: accepting a connection: %w", err)
		}
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			nc.Close()
			return nil
		}
		c := newStoreConn(s, nc)
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go c.serve()
	}
}

// Close stops the server: it closes the listeners, answers every waiting
// request SHUTTING_DOWN, NACKs every item in flight, sends FATAL
// SHUTTING_DOWN to every connection and closes it, and returns when all
// connections have ended. Safe to call twice and concurrently; every call
// waits. Always nil.
func (s *StoreServer) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closing = true
		for l := range s.listeners {
			l.Close()
		}
		conns := make([]*storeConn, 0, len(s.conns))
		for c := range s.conns {
			conns = append(conns, c)
		}
		s.mu.Unlock()
		// Every connection's requests end before any connection gives
		// its items back: a GET still waiting would take them.
		for _, c := range conns {
			c.stopForShutdown()
		}
		for _, c := range conns {
			c.shutdown()
		}
	})
	s.wg.Wait()
	return nil
}

// storeConn is one client connection of a StoreServer. Its reader decodes
// requests and starts them; a request that waits runs in its lane (one
// goroutine per queue and direction, so that one connection's PUTs, and
// its GETs, on a queue take effect in order) or, for a CONSUME, in a
// goroutine of its own; its writer writes what they answer.
type storeConn struct {
	s   *StoreServer
	nc  net.Conn
	log *zap.Logger
	// ctx ends when the connection does; requests derive theirs from it.
	ctx    context.Context
	cancel context.CancelFunc
	out    chan storeReply
	// slots bounds the requests started and not yet answered (flow
	// control: the reader waits for a slot).
	slots chan struct{}

	mu       sync.Mutex
	inflight map[uint64]storeInflight
	waiting  map[uint32]*storeRequest // by request id, for CANCEL
	lanes    map[laneKey]*storeLane
	ended    bool // the connection is gone: no more deliveries
	shutting bool // the server is closing: answers say SHUTTING_DOWN
	tasks    sync.WaitGroup
	// writerDone closes when the writer has stopped.
	writerDone chan struct{}
	quit       chan struct{}
	quitOnce   sync.Once
}

type laneKey struct {
	queue string
	put   bool
}

// storeLane runs one connection's requests on one queue in one direction,
// one after the other. Its queue is unbounded: a request answered while
// queued (CANCEL, its timeout) frees its slot at once but stays queued
// until the lane reaches and skips it.
type storeLane struct {
	mu    sync.Mutex
	queue []*storeRequest
	wake  chan struct{} // cap 1: something was pushed
	// waiting: the request it runs waits, for room (PUT) or an item
	// (GET), so a try (timeout 0) behind it is answered at once, FULL or
	// "queue empty", as the broker answers it.
	waiting atomic.Bool
}

func (l *storeLane) push(r *storeRequest) {
	l.mu.Lock()
	l.queue = append(l.queue, r)
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

func (l *storeLane) pop() *storeRequest {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.queue) == 0 {
		return nil
	}
	r := l.queue[0]
	l.queue[0] = nil
	l.queue = l.queue[1:]
	return r
}

// Request states: a lane's request is queued until its lane takes it
// (running), unless something answers it first (answered: a CANCEL, its
// timeout, the connection's end). The state decides who answers.
const (
	reqQueued int32 = iota
	reqRunning
	reqAnswered
)

type storeInflight struct {
	item StoredItem
	cons *storeRequest // the CONSUME it was pushed to; nil for a GET's
}

// storeReply is a frame for the writer; written, if set, runs after it
// has been written (ok) or could not be (!ok).
type storeReply struct {
	frame   []byte
	written func(ok bool)
}

// storeRequest is a PUT, GET or CONSUME that may wait.
type storeRequest struct {
	id      uint32
	queue   string
	timeout uint32
	ctx     context.Context
	cancel  context.CancelFunc
	// cancelled is set by CANCEL before cancel is called.
	cancelled atomic.Bool
	state     atomic.Int32
	// deadline is when its timeout passes (zero: none), counted from its
	// arrival; timer answers it then if it is still queued.
	deadline time.Time
	timer    *time.Timer
	// released: its slot is free (answered, or finished).
	released atomic.Bool
	// PUT
	items [][]byte
	// GET / CONSUME
	max     int
	autoAck bool
	// CONSUME: credit is signalled as ACKs and NACKs free it.
	prefetch    int
	outstanding atomic.Int64
	credit      chan struct{}
}

func newStoreConn(s *StoreServer, nc net.Conn) *storeConn {
	ctx, cancel := context.WithCancel(context.Background())
	return &storeConn{
		s: s, nc: nc, ctx: ctx, cancel: cancel,
		log:        s.log.With(zap.Int("peer_pid", PeerOf(nc).PID)),
		out:        make(chan storeReply, maxOutbox),
		slots:      make(chan struct{}, maxWaiting),
		inflight:   make(map[uint64]storeInflight),
		waiting:    make(map[uint32]*storeRequest),
		lanes:      make(map[laneKey]*storeLane),
		writerDone: make(chan struct{}),
		quit:       make(chan struct{}),
	}
}

func (c *storeConn) serve() {
	defer c.s.wg.Done()
	defer func() {
		c.s.mu.Lock()
		delete(c.s.conns, c)
		c.s.mu.Unlock()
	}()
	go c.writeLoop()
	br, ok := c.handshake()
	if ok {
		c.readLoop(br)
	}
	c.end()
}

func (c *storeConn) handshake() (*bufio.Reader, bool) {
	peer := PeerOf(c.nc)
	c.nc.SetReadDeadline(deadlineIn(c.s.deadline))
	br := bufio.NewReaderSize(c.nc, writeChunk)
	fr := frameReader{r: br}
	payload, err := fr.read(maxHelloLen, nil)
	if err != nil && !errors.Is(err, errBadFrame) {
		c.log.Debug("store client gone before HELLO", zap.Error(err))
		return nil, false
	}
	if !c.s.allow(peer) {
		c.log.Warn("store client refused: this peer may not use the store server")
		c.fatal(statusRefused, "peer refused")
		return nil, false
	}
	var f any
	if err == nil {
		f, err = decodeFrame(payload)
	}
	h, ok := f.(*helloFrame)
	switch {
	case err != nil:
		c.fatal(statusBadHello, "malformed HELLO: "+err.Error())
		return nil, false
	case !ok:
		c.fatal(statusBadHello, "expected HELLO, got "+frameName(f))
		return nil, false
	case string(h.Magic[:]) != helloMagic || h.Version < 1 || h.Version > ProtocolVersion:
		c.fatal(statusBadHello, fmt.Sprintf("want magic %q version 1 to %d", helloMagic, ProtocolVersion))
		return nil, false
	}
	// Tasks (version 2) are the broker's: a store server serves a version 2
	// client as it does one of version 1, and refuses a SUBMIT, a REPLY or
	// a WITHDRAW as requests it does not know.
	c.nc.SetReadDeadline(time.Time{})
	c.log = c.log.With(zap.String("client", h.Client))
	c.send(storeReply{frame: appendWelcome(nil, &welcomeFrame{Version: h.Version, MaxFrame: uint32(c.s.maxFrame), MaxItem: uint32(c.s.maxItem)})})
	return br, true
}

func (c *storeConn) readLoop(br *bufio.Reader) {
	fr := frameReader{r: br, untrusted: true}
	for {
		payload, err := fr.read(c.s.maxFrame, func(typ byte) bool { return typ == typePut })
		if err != nil {
			if errors.Is(err, errBadFrame) {
				c.log.Warn("store client broke the protocol; closing its connection", zap.Error(err))
				c.fatal(statusBadFrame, err.Error())
			}
			return
		}
		f, err := decodeFrame(payload)
		if err == nil {
			err = c.handle(f)
		}
		if err != nil {
			c.log.Warn("store client broke the protocol; closing its connection", zap.Error(err))
			c.fatal(statusBadFrame, err.Error())
			return
		}
	}
}

func (c *storeConn) handle(f any) error {
	switch f := f.(type) {
	case *putFrame:
		if !c.s.queues[f.Queue] {
			c.result(f.ID, statusNoSuchQueue, 0, "no queue "+f.Queue)
			return nil
		}
		if len(f.Items) == 0 {
			c.result(f.ID, statusOK, 0, "")
			return nil
		}
		for _, it := range f.Items {
			if len(it) > c.s.maxItem {
				c.result(f.ID, statusTooLarge, 0, fmt.Sprintf("item of %d bytes over max_item %d", len(it), c.s.maxItem))
				return nil
			}
		}
		c.start(&storeRequest{id: f.ID, queue: f.Queue, timeout: f.TimeoutMS, items: f.Items}, laneKey{f.Queue, true})
	case *getFrame:
		if f.Max == 0 || f.Flags&^flagAutoAck != 0 {
			return badFrame("GET with max 0 or an unknown flag")
		}
		if !c.s.queues[f.Queue] {
			c.result(f.ID, statusNoSuchQueue, 0, "no queue "+f.Queue)
			return nil
		}
		c.start(&storeRequest{id: f.ID, queue: f.Queue, timeout: f.TimeoutMS, max: int(min(f.Max, maxStoreGet)), autoAck: f.Flags&flagAutoAck != 0}, laneKey{f.Queue, false})
	case *consumeFrame:
		if f.Prefetch == 0 || f.Flags != 0 {
			return badFrame("CONSUME with prefetch 0 or a flag")
		}
		if !c.s.queues[f.Queue] {
			c.result(f.ID, statusNoSuchQueue, 0, "no queue "+f.Queue)
			return nil
		}
		prefetch := int(min(f.Prefetch, maxPrefetch))
		c.start(&storeRequest{id: f.ID, queue: f.Queue, timeout: waitForever, prefetch: prefetch, credit: make(chan struct{}, 1)}, laneKey{})
	case *ackFrame:
		c.ack(f)
	case *cancelFrame:
		c.mu.Lock()
		r := c.waiting[f.ID]
		c.mu.Unlock()
		if r != nil {
			r.cancelled.Store(true)
			if r.state.CompareAndSwap(reqQueued, reqAnswered) { // not begun: answered here
				c.result(r.id, statusCancelled, 0, "cancelled")
				c.release(r)
			}
			r.cancel()
		}
	default:
		return badFrame("%s from a client", frameName(f))
	}
	return nil
}

// start registers r for CANCEL and runs it: in its lane, or on its own for
// a CONSUME (lane's zero key). It waits for a slot first (flow control).
func (c *storeConn) start(r *storeRequest, key laneKey) {
	select {
	case c.slots <- struct{}{}:
	case <-c.ctx.Done():
		c.answerEnded(r, 0)
		return
	}
	if r.timeout != waitForever {
		r.deadline = time.Now().Add(storeWait(r.timeout))
	}
	r.ctx, r.cancel = context.WithCancel(c.ctx)
	c.mu.Lock()
	if c.ctx.Err() != nil { // stopTasks has begun: it waits for no more
		c.mu.Unlock()
		<-c.slots
		c.answerEnded(r, 0)
		return
	}
	if key == (laneKey{}) {
		r.state.Store(reqRunning) // a CONSUME answers for itself
		c.waiting[r.id] = r
		c.tasks.Add(1)
		c.mu.Unlock()
		go c.consume(r)
		return
	}
	l := c.lanes[key]
	if l == nil {
		l = &storeLane{wake: make(chan struct{}, 1)}
		c.lanes[key] = l
		go c.runLane(l)
	}
	if r.timeout == 0 && l.waiting.Load() {
		c.mu.Unlock()
		<-c.slots
		r.cancel()
		if r.items != nil {
			c.result(r.id, statusFull, 0, "queue full")
		} else {
			c.result(r.id, statusTimeout, 0, "queue empty")
		}
		return
	}
	c.waiting[r.id] = r
	c.tasks.Add(1)
	if r.timeout != 0 && r.timeout != waitForever {
		r.timer = time.AfterFunc(storeWait(r.timeout), func() {
			if r.state.CompareAndSwap(reqQueued, reqAnswered) {
				c.result(r.id, statusTimeout, 0, "timed out")
				c.release(r)
			}
		})
	}
	// Under mu, so that a lane that sees the end of c.ctx finds it (it
	// takes mu before it drains).
	l.push(r)
	c.mu.Unlock()
}

func (c *storeConn) runLane(l *storeLane) {
	for {
		if r := l.pop(); r != nil {
			if r.state.CompareAndSwap(reqQueued, reqRunning) {
				if r.timer != nil {
					r.timer.Stop()
				}
				if ps, ok := c.s.store.(PipelinedStore); ok && r.items != nil {
					if outcome := c.startPut(r, l, ps); outcome != nil {
						go func() {
							outcome()
							c.finish(r)
						}()
						continue
					}
				} else if r.items != nil {
					c.put(r, l)
				} else {
					c.get(r, l)
				}
			}
			c.finish(r)
			continue
		}
		select {
		case <-l.wake:
		case <-c.ctx.Done():
			c.mu.Lock()
			c.mu.Unlock() //nolint:staticcheck // a barrier: start pushes under mu
			for r := l.pop(); r != nil; r = l.pop() {
				if r.timer != nil {
					r.timer.Stop()
				}
				if r.state.CompareAndSwap(reqQueued, reqAnswered) {
					c.answerEnded(r, 0)
				}
				c.finish(r)
			}
			return
		}
	}
}

// finish forgets r: its slot and its id are free.
func (c *storeConn) finish(r *storeRequest) {
	c.mu.Lock()
	if c.waiting[r.id] == r {
		delete(c.waiting, r.id)
	}
	c.mu.Unlock()
	r.cancel()
	c.release(r)
	c.tasks.Done()
}

// release frees r's slot, once: when it is answered while queued (the
// reader may then read on), or when it finishes.
func (c *storeConn) release(r *storeRequest) {
	if r.released.CompareAndSwap(false, true) {
		<-c.slots
	}
}

// left is what remains of r's timeout (< 0: none).
func (r *storeRequest) left() time.Duration {
	if r.deadline.IsZero() {
		return -1
	}
	return max(time.Until(r.deadline), 0)
}

func storeWait(timeoutMS uint32) time.Duration {
	if timeoutMS == waitForever {
		return -1
	}
	return time.Duration(timeoutMS) * time.Millisecond
}

// answerEnded answers a request whose context ended: CANCELLED after a CANCEL,
// SHUTTING_DOWN when the server closes, nothing when the connection is
// gone.
func (c *storeConn) answerEnded(r *storeRequest, n int) {
	switch {
	case r.cancelled.Load():
		c.result(r.id, statusCancelled, uint32(n), "cancelled")
	case c.isShutting():
		c.result(r.id, statusShuttingDown, uint32(n), "store server shutting down")
	}
}

func (c *storeConn) put(r *storeRequest, l *storeLane) {
	if r.ctx.Err() != nil {
		c.answerEnded(r, 0)
		return
	}
	n, err := c.s.store.Put(r.ctx, r.queue, r.items, r.left(), func() { l.waiting.Store(true) })
	l.waiting.Store(false)
	c.answerPut(r, n, err)
}

// startPut starts r on a PipelinedStore, and returns what waits for its
// outcome and answers it; nil when r is answered already.
func (c *storeConn) startPut(r *storeRequest, l *storeLane, ps PipelinedStore) func() {
	if r.ctx.Err() != nil {
		c.answerEnded(r, 0)
		return nil
	}
	outcome := ps.StartPut(r.ctx, r.queue, r.items, r.left(), func() { l.waiting.Store(true) })
	return func() {
		n, err := outcome()
		l.waiting.Store(false)
		c.answerPut(r, n, err)
	}
}

func (c *storeConn) answerPut(r *storeRequest, n int, err error) {
	switch {
	case err == nil:
		c.result(r.id, statusOK, uint32(n), "")
	case r.ctx.Err() != nil:
		c.answerEnded(r, n)
	case errors.Is(err, ErrTooLarge):
		c.result(r.id, statusTooLarge, uint32(n), err.Error())
	case errors.Is(err, ErrFull) && r.timeout == 0:
		c.result(r.id, statusFull, uint32(n), "queue full")
	case errors.Is(err, ErrFull):
		c.result(r.id, statusTimeout, uint32(n), "timed out")
	default:
		c.log.Warn("store put failed", zap.String("queue", r.queue), zap.Int("stored", n), zap.Int("items", len(r.items)), zap.Error(err))
		c.result(r.id, statusTimeout, uint32(n), "store: "+err.Error())
	}
}

func (c *storeConn) get(r *storeRequest, l *storeLane) {
	if r.ctx.Err() != nil {
		c.answerEnded(r, 0)
		return
	}
	items, err := c.s.store.Get(r.ctx, r.queue, c.s.fitting(r.queue, r.max), r.left(), func() { l.waiting.Store(true) })
	l.waiting.Store(false)
	switch {
	case len(items) > 0:
		c.deliver(r, items, nil)
	case r.ctx.Err() != nil:
		c.answerEnded(r, 0)
	case err != nil:
		c.log.Warn("store get failed", zap.String("queue", r.queue), zap.Error(err))
		c.result(r.id, statusTimeout, 0, "store: "+err.Error())
	case r.timeout == 0:
		c.result(r.id, statusTimeout, 0, "queue empty")
	default:
		c.result(r.id, statusTimeout, 0, "timed out")
	}
}

// consume pushes the queue's items to the connection while the CONSUME's
// credit allows, until CANCEL, the server's close or the connection's end.
func (c *storeConn) consume(r *storeRequest) {
	defer c.finish(r)
	for {
		credit := r.prefetch - int(r.outstanding.Load())
		if credit <= 0 {
			select {
			case <-r.credit:
				continue
			case <-r.ctx.Done():
				c.answerEnded(r, 0)
				return
			}
		}
		items, err := c.s.store.Get(r.ctx, r.queue, c.s.fitting(r.queue, credit), time.Second, nil)
		if r.ctx.Err() != nil {
			for _, it := range items {
				c.nack(it)
			}
			c.answerEnded(r, 0)
			return
		}
		if err != nil {
			c.log.Warn("store get failed; trying again", zap.String("queue", r.queue), zap.Error(err))
			select {
			case <-time.After(100 * time.Millisecond):
			case <-r.ctx.Done():
			}
			continue
		}
		if len(items) > 0 {
			c.deliver(r, items, r)
		}
	}
}

// deliver hands items out as one ITEMS reply to r, as many as one frame
// holds (the rest go back to the store), each in flight under a fresh
// delivery id but for auto-ack, whose items are acked once written.
func (c *storeConn) deliver(r *storeRequest, items []StoredItem, cons *storeRequest) {
	room := c.s.itemsRoom - itemsFixedLen
	n := 0
	var longest int64
	for _, it := range items {
		longest = max(longest, int64(len(it.Body())))
	}
	c.s.largest[r.queue].Store(longest)
	for n < len(items) {
		size := itemsEntryLen + len(items[n].Body())
		if n > 0 && size > room {
			break
		}
		room -= size
		n++
	}
	for _, it := range items[n:] {
		c.nack(it)
	}
	items = items[:n]
	f := itemsFrame{ID: r.id, Items: make([]wireItem, n)}
	last := c.s.nextID.Add(uint64(n))
	c.mu.Lock()
	if c.ended {
		c.mu.Unlock()
		for _, it := range items {
			c.nack(it)
		}
		return
	}
	for i, it := range items {
		f.Items[i] = wireItem{Deliveries: it.Deliveries(), Body: it.Body()}
		if !r.autoAck {
			f.Items[i].Delivery = last - uint64(n) + uint64(i) + 1
			c.inflight[f.Items[i].Delivery] = storeInflight{item: it, cons: cons}
		}
	}
	if cons != nil {
		cons.outstanding.Add(int64(n))
	}
	c.mu.Unlock()
	reply := storeReply{frame: appendItems(nil, &f)}
	if r.autoAck {
		reply.written = func(ok bool) {
			for _, it := range items {
				if ok {
					c.settle(it, false)
				} else {
					c.nack(it)
				}
			}
		}
	}
	c.send(reply)
}

func (c *storeConn) ack(f *ackFrame) {
	found := 0
	for _, d := range f.Deliveries {
		c.mu.Lock()
		e, ok := c.inflight[d]
		delete(c.inflight, d)
		c.mu.Unlock()
		if !ok {
			continue
		}
		found++
		c.settle(e.item, f.Nack)
		if e.cons != nil {
			e.cons.outstanding.Add(-1)
			select {
			case e.cons.credit <- struct{}{}:
			default:
			}
		}
	}
	if found < len(f.Deliveries) {
		c.result(f.ID, statusUnknownDelivery, uint32(found), fmt.Sprintf("%d of %d deliveries not in flight here", len(f.Deliveries)-found, len(f.Deliveries)))
		return
	}
	c.result(f.ID, statusOK, uint32(found), "")
}

// settle acks (or NACKs) an item with the store; a failure leaves it to
// the store to deliver again, which is at least once.
func (c *storeConn) settle(it StoredItem, nack bool) {
	var err error
	if nack {
		err = it.Nack()
	} else {
		err = it.Ack()
	}
	if err != nil {
		c.log.Warn("store did not take an acknowledgement; the item may be delivered again", zap.Bool("nack", nack), zap.Error(err))
	}
}

func (c *storeConn) nack(it StoredItem) { c.settle(it, true) }

func (c *storeConn) result(id uint32, status uint16, n uint32, message string) {
	c.send(storeReply{frame: appendResult(nil, &resultFrame{ID: id, Status: status, N: n, Message: message})})
}

// send queues a reply for the writer; once the writer has stopped the
// reply is dropped (its written runs with false).
func (c *storeConn) send(r storeReply) {
	select {
	case c.out <- r:
	case <-c.writerDone:
		if r.written != nil {
			r.written(false)
		}
	}
}

// fatal queues a FATAL, the last frame, and bounds the time a client that
// does not read may hold up its write.
func (c *storeConn) fatal(status uint16, message string) {
	c.nc.SetWriteDeadline(deadlineIn(c.s.deadline))
	c.send(storeReply{frame: appendFatal(nil, &fatalFrame{Status: status, Message: message})})
	c.stopWriter()
}

func (c *storeConn) stopWriter() { c.quitOnce.Do(func() { close(c.quit) }) }

// writeLoop writes replies until quit, then what is left queued (a FATAL
// last), and closes the connection's write side.
func (c *storeConn) writeLoop() {
	defer close(c.writerDone)
	bw := bufio.NewWriterSize(c.nc, writeChunk)
	var pending []func(bool)
	failed, readEnding := false, false
	flush := func() {
		ok := !failed && bw.Flush() == nil
		failed = failed || !ok
		for _, f := range pending {
			f(ok)
		}
		pending = pending[:0]
	}
	write := func(r storeReply) {
		if !failed {
			if _, err := bw.Write(r.frame); err != nil {
				failed = true
			}
		}
		if r.written != nil {
			pending = append(pending, r.written)
		}
	}
	for {
		select {
		case r := <-c.out:
			write(r)
			for len(c.out) > 0 {
				write(<-c.out)
			}
			flush()
			if failed && !readEnding {
				// The client is gone, or reads no more. What it sent
				// before (its last ACKs) is still read, to its end or to
				// the deadline, before the connection's end gives its
				// items back: closing now would drop those ACKs unread.
				readEnding = true
				c.log.Debug("store client gone or not reading; reading what it sent to its end")
				c.nc.SetReadDeadline(deadlineIn(c.s.deadline))
			}
		case <-c.quit:
			for len(c.out) > 0 {
				write(<-c.out)
			}
			flush()
			c.nc.Close()
			// Replies still being sent find writerDone closed.
			return
		}
	}
}

// stopTasks ends the connection's requests and waits for them. A request
// start had let through before the cancel has its task counted by then:
// start checks and counts under mu.
func (c *storeConn) stopTasks() {
	c.cancel()
	c.mu.Lock()
	c.mu.Unlock() //nolint:staticcheck // a barrier for start
	c.tasks.Wait()
}

func (c *storeConn) isShutting() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.shutting
}

// stopForShutdown, the first step of the server's Close, answers the
// connection's waiting requests SHUTTING_DOWN; shutdown, the second, sends
// FATAL and ends it (and end NACKs what is in flight).
func (c *storeConn) stopForShutdown() {
	c.mu.Lock()
	c.shutting = true
	c.mu.Unlock()
	// A client that does not read holds up its writer, and with it the
	// requests whose answers wait to be queued: bounded from now.
	c.nc.SetWriteDeadline(deadlineIn(c.s.deadline))
	c.stopTasks()
}

func (c *storeConn) shutdown() {
	c.fatal(statusShuttingDown, "store server shutting down")
	// The reader ends on EOF, and end NACKs what is in flight.
	if cr, ok := c.nc.(interface{ CloseRead() error }); ok {
		cr.CloseRead()
	} else {
		c.nc.Close()
	}
}

// end runs once the reader has stopped: requests end (unanswered unless
// the server is shutting down), items in flight go back to the store, and
// the writer stops.
func (c *storeConn) end() {
	c.stopTasks()
	c.mu.Lock()
	c.ended = true
	inflight := c.inflight
	c.inflight = nil
	c.mu.Unlock()
	// In delivery order (rule 4): JetStream delivers NACKed items again
	// in the order the NACKs come.
	ids := slices.Sorted(maps.Keys(inflight))
	for _, d := range ids {
		c.nack(inflight[d].item)
	}
	c.stopWriter()
	<-c.writerDone
	c.nc.Close()
	// An auto-ack reply queued as the writer stopped was not written: its
	// items go back.
	for len(c.out) > 0 {
		if r := <-c.out; r.written != nil {
			r.written(false)
		}
	}
	if len(inflight) > 0 {
		c.log.Debug("store client gone; its items in flight go back", zap.Int("items", len(inflight)))
	}
}
