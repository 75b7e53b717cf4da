package ipc

import (
	"bufio"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Limits and defaults.
const (
	// ProtocolVersion is the version of PROTOCOL.md spoken here. Version
	// 2 adds tasks (request and reply); the broker speaks version 1 too,
	// to clients that say it in their HELLO.
	ProtocolVersion = 2
	// DefaultMaxItem is the largest item a broker accepts unless configured
	// otherwise, in bytes; it is announced in WELCOME.
	DefaultMaxItem = 1<<20 - 64
	// DefaultCapacity is a queue's capacity, in waiting items, unless
	// configured otherwise.
	DefaultCapacity = 10000
	// EnvSocket is the environment variable that tells workers the path of
	// the broker's socket.
	EnvSocket = "GOTYLEDON_QUEUE_SOCKET"

	// defaultFrameDeadline bounds the HELLO and every started frame.
	defaultFrameDeadline = 10 * time.Second
	// maxQueueName is the longest queue name, as config's service names.
	maxQueueName = 63
	// maxOutbox is how many replies a connection may have waiting for its
	// writer before its reader stops reading requests (flow control: a
	// client that does not read its replies stops being served, alone).
	maxOutbox = 1024
	// maxWaiting and maxWaitingBytes bound a connection's waiting requests
	// the same way: while it has maxWaiting GETs and PUTs waiting, or its
	// waiting PUTs hold maxWaitingBytes of items, its reader stops reading
	// (each waiting PUT keeps its whole frame alive). The reader reads one
	// request past the bound at most, so a PUT of any size gets in.
	maxWaiting      = 1024
	maxWaitingBytes = 16 << 20
	// maxPrefetch caps a CONSUME's prefetch: more unacknowledged items than
	// this in one consumer's hands is a consumer nobody else can help.
	maxPrefetch = 1 << 16
	// writeChunk is how much the writer encodes before it writes, and the
	// item size from which a body is written from its own buffer rather
	// than copied into the writer's.
	writeChunk = 64 << 10
	bigBody    = 16 << 10
)

var queueNameRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]*$`)

// QueueConfig configures one queue of a broker.
type QueueConfig struct {
	// Name is how clients name the queue. It matches
	// [A-Za-z][A-Za-z0-9_-]* and has at most 63 bytes, as service names in
	// the configuration.
	Name string
	// Capacity bounds the items waiting in the queue (not those in
	// flight). <= 0 means DefaultCapacity.
	Capacity int
	// Forward: the queue's items are kept by the store server at
	// BrokerOptions.StoreSocket (a JetStream bridge), which serves its
	// requests; the broker forwards them there (upstream.go), and
	// Capacity is the store's business.
	Forward bool
}

// Peer is the process at the other end of a connection, as the kernel
// reports it (SO_PEERCRED) when it connected. Fields are -1 when the
// connection is not a Unix socket.
type Peer struct {
	PID, UID, GID int
	// Groups are its process's supplementary groups as the kernel recorded
	// them when it connected (SO_PEERGROUPS, Linux 4.13); nil if the kernel
	// does not say (then AllowPeers asks its groupsOf).
	Groups []int
}

// BrokerOptions configure a broker. The zero value is a broker with no
// queues, every default applied.
type BrokerOptions struct {
	// Queues served; names are unique.
	Queues []QueueConfig
	// MaxItem is the largest item accepted, in bytes. <= 0: DefaultMaxItem.
	MaxItem int
	// FrameDeadline bounds the time from accepting a connection to its
	// HELLO, and from the first byte of any frame to its last. A
	// connection that exceeds it is closed. <= 0: 10s.
	FrameDeadline time.Duration
	// Allow decides whether a connected peer may use the broker. It is
	// called once per connection, from the connection's goroutine, so it
	// must be safe for concurrent use. nil: the peer's uid is the broker
	// process's uid, or 0.
	Allow func(Peer) bool
	// PeerService names the service a connected peer works for, for the
	// per-service task figures (ServiceTaskStats); "" for none. Called
	// once per connection, as Allow is. nil: no per-service figures.
	PeerService func(Peer) string
	// Logger receives connection events: refusals and protocol violations
	// at Warn, connects and disconnects at Debug. nil: no logs.
	Logger *zap.Logger
	// StoreSocket is the Unix socket of the store server that serves the
	// forwarded queues (QueueConfig.Forward). It must serve them with
	// this broker's MaxItem, delivery ids from StoreDeliveryBase.
	StoreSocket string
}

// Broker serves named queues to clients on stream sockets, speaking
// PROTOCOL.md. Create it with NewBroker, run Serve (on one or more
// listeners, each from its own goroutine), and Close it once done. Stats,
// SetQueues and Close are safe to call from any goroutine at any time.
//
// Each connection has two goroutines: a reader that decodes and carries out
// requests in order, and a writer that encodes the replies and writes
// whatever has accumulated in one system call. Nothing a connection does
// waits for another connection's socket: a consumer that does not read its
// replies stops being served once its replies pile up, and holds only the
// items already handed to it.
type Broker struct {
	// queues is the current set of queues. A set is never modified once
	// published: SetQueues publishes a new one, so connections read it
	// without a lock and a request sees the old set or the new one.
	queues        atomic.Pointer[queueSet]
	setMu         sync.Mutex // serializes SetQueues, and Close's shutdown of the queues
	maxItem       int
	maxFrame      int
	frameDeadline time.Duration
	allow         func(Peer) bool
	peerService   func(Peer) string
	log           *zap.Logger
	clock         clock // set before the first Serve; never changed after
	storeSocket   string

	nextDelivery atomic.Uint64 // last delivery id handed out
	nextConn     atomic.Uint64

	// svcMu guards svcTasks, the task figures by service (taskstats.go).
	svcMu    sync.Mutex
	svcTasks map[string]*taskCounters

	// groupMu guards groups, the process groups of the connections'
	// peers, and groupPrune (drain.go).
	groupMu    sync.Mutex
	groups     map[int]*pgroup
	groupPrune int
	// pgidOf is the process group of a peer's pid (processGroupOf); set
	// before the first Serve, never changed after (tests set their own).
	pgidOf func(pid int) int

	mu        sync.Mutex
	closing   bool
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	wg        sync.WaitGroup // connections and their goroutines
	closeOnce sync.Once
}

// NewBroker validates opts and returns a broker that serves nothing until
// Serve is called. It fails on an invalid or duplicate queue name or a
// MaxItem too large for the protocol.
func NewBroker(opts BrokerOptions) (*Broker, error) {
	b := &Broker{
		maxItem:       opts.MaxItem,
		frameDeadline: opts.FrameDeadline,
		allow:         opts.Allow,
		peerService:   opts.PeerService,
		log:           opts.Logger,
		clock:         realClock(),
		storeSocket:   opts.StoreSocket,
		pgidOf:        processGroupOf,
		listeners:     make(map[net.Listener]struct{}),
		conns:         make(map[*conn]struct{}),
	}
	if b.maxItem <= 0 {
		b.maxItem = DefaultMaxItem
	}
	if b.frameDeadline <= 0 {
		b.frameDeadline = defaultFrameDeadline
	}
	if b.log == nil {
		b.log = zap.NewNop()
	}
	if b.allow == nil {
		uid := os.Getuid()
		b.allow = func(p Peer) bool { return p.UID == uid || p.UID == 0 }
	}
	qcs, err := validQueues(opts.Queues, maxQueueName)
	if err != nil {
		return nil, fmt.Errorf("ipc: new broker: %w", err)
	}
	set := &queueSet{byName: make(map[string]*queue, len(qcs))}
	longest := 0
	for _, qc := range qcs {
		longest = max(longest, len(qc.Name))
		set.names = append(set.names, qc.Name)
		if qc.Forward {
			set.forward(qc)
			continue
		}
		q := &queue{name: qc.Name, capacity: qc.Capacity, b: b}
		set.byName[qc.Name] = q
		set.list = append(set.list, q)
	}
	b.queues.Store(set)
	// max_frame leaves room for a one-item PUT of max_item bytes on any of
	// the queues (its overhead grows with the queue's name) and at least
	// the 64 bytes PROTOCOL.md promises.
	b.maxFrame = b.maxItem + max(frameSlack, putFixedLen+longest+putItemLen)
	if b.maxFrame > 1<<31 {
		return nil, fmt.Errorf("ipc: new broker: max item %d too large (the protocol's frames stay under 2 GiB)", b.maxItem)
	}
	return b, nil
}

// queueSet is one configuration of the broker's queues. It is immutable
// once published in Broker.queues.
type queueSet struct {
	byName map[string]*queue
	list   []*queue // in configuration order
	// forwarded are the queues a store server serves (upstream.go), and
	// their capacities.
	forwarded map[string]int
	names     []string // every queue, in configuration order
}

func (s *queueSet) forward(qc QueueConfig) {
	if s.forwarded == nil {
		s.forwarded = make(map[string]int)
	}
	s.forwarded[qc.Name] = qc.Capacity
}

// forwardedQueue reports whether the current set forwards queue name.
func (b *Broker) forwardedQueue(name string) bool {
	_, ok := b.queues.Load().forwarded[name]
	return ok
}

// queue returns the queue named name in the current set, or nil.
func (b *Broker) queue(name string) *queue { return b.queues.Load().byName[name] }

// validQueues checks names and capacities as NewBroker does, names at most
// maxName bytes, and returns qs with default capacities applied.
func validQueues(qs []QueueConfig, maxName int) ([]QueueConfig, error) {
	out := make([]QueueConfig, len(qs))
	seen := make(map[string]bool, len(qs))
	for i, qc := range qs {
		if len(qc.Name) > maxQueueName || !queueNameRE.MatchString(qc.Name) {
			return nil, fmt.Errorf("queue %d: invalid name %q (a name starts with a letter and has only letters, digits, \"-\" and \"_\", at most %d bytes)", i, qc.Name, maxQueueName)
		}
		if len(qc.Name) > maxName {
			// max_frame, announced in every WELCOME, was sized for the
			// names configured at start: a one-item PUT of max_item
			// bytes on a longer name would not fit in a frame.
			return nil, fmt.Errorf("queue %d: name %q longer than %d bytes, the most this broker's max_frame leaves room for", i, qc.Name, maxName)
		}
		if seen[qc.Name] {
			return nil, fmt.Errorf("queue %q configured twice", qc.Name)
		}
		seen[qc.Name] = true
		if qc.Capacity <= 0 {
			qc.Capacity = DefaultCapacity
		}
		out[i] = qc
	}
	return out, nil
}

// SetQueues makes qs the broker's queues, as a configuration reload asks:
// a queue new in qs is created; a queue whose capacity changed takes the
// new capacity at once (waiting PUTs are let in if it grew; if it shrank
// below the items already waiting, nothing is dropped: puts wait until the
// depth falls under the new capacity); a queue missing from qs is removed,
// unless it holds items (waiting or in flight) or has PUTs waiting on it —
// then SetQueues changes nothing at all and returns an error wrapping
// ErrQueueNotEmpty that names the queue and what it holds. GETs waiting on
// a removed (empty) queue are answered NO_SUCH_QUEUE "queue removed", and
// later requests naming it get NO_SUCH_QUEUE. Names and capacities are
// validated as NewBroker does (an invalid list also changes nothing); a
// name may also not be longer than max_frame, fixed at NewBroker, leaves
// room for. Queues kept keep their items, waiting requests and counters;
// Stats follows qs's order. Safe concurrently with serving and with
// itself; the change is atomic with respect to requests (a request sees
// the old set or the new one). After Close, queues created are shut down.
func (b *Broker) SetQueues(qs []QueueConfig) error {
	qcs, err := validQueues(qs, b.maxFrame-b.maxItem-putFixedLen-putItemLen)
	if err != nil {
		return fmt.Errorf("ipc: set queues: %w", err)
	}
	b.setMu.Lock()
	defer b.setMu.Unlock()
	old := b.queues.Load()
	b.mu.Lock()
	closing := b.closing
	b.mu.Unlock()

	set := &queueSet{byName: make(map[string]*queue, len(qcs))}
	type resize struct {
		q        *queue
		capacity int
	}
	var resized []resize
	for _, qc := range qcs {
		set.names = append(set.names, qc.Name)
		if qc.Forward {
			// A queue the broker kept until now is removed from it, as
			// if it were gone from qs (refused if it holds items).
			set.forward(qc)
			continue
		}
		q := old.byName[qc.Name]
		if q == nil {
			q = &queue{name: qc.Name, capacity: qc.Capacity, b: b, closed: closing}
		} else if q.capacity != qc.Capacity { // capacity is written only here, under setMu
			resized = append(resized, resize{q, qc.Capacity})
		}
		set.byName[qc.Name] = q
		set.list = append(set.list, q)
	}
	var removed []*queue
	for _, q := range old.list {
		if set.byName[q.name] == nil {
			removed = append(removed, q)
		}
	}

	// Every queue that changes is locked at once, so the check that the
	// removed ones are empty, their removal, the new capacities and the
	// new set take effect together: a request that found a queue in the
	// old set and locks it afterwards sees it removed (answered
	// NO_SUCH_QUEUE, as if it had read the new set) or with its new
	// capacity. No other code holds two queue locks; the name order rules
	// out a deadlock between two SetQueues anyway.
	locked := slices.Clone(removed)
	for _, r := range resized {
		locked = append(locked, r.q)
	}
	slices.SortFunc(locked, func(a, b *queue) int { return cmp.Compare(a.name, b.name) })
	for _, q := range locked {
		q.mu.Lock()
	}
	defer func() {
		for _, q := range locked {
			q.mu.Unlock()
		}
	}()
	for _, q := range removed {
		if q.ring.size > 0 || q.inFlight > 0 || q.livePuts() > 0 {
			return fmt.Errorf("ipc: set queues: cannot remove queue %q: %d items waiting, %d in flight, %d PUTs waiting: %w",
				q.name, q.ring.size, q.inFlight, q.livePuts(), ErrQueueNotEmpty)
		}
	}
	for _, r := range resized {
		r.q.capacity = r.capacity
		if !r.q.closed {
			r.q.serve() // a grown queue lets waiting PUTs in
		}
	}
	for _, q := range removed {
		q.removed = true
		for _, w := range slices.Concat(q.gets, q.puts, q.consumers) {
			q.finishLocked(w, statusNoSuchQueue, "queue removed")
		}
	}
	b.queues.Store(set)
	return nil
}

// Stats returns a snapshot of every queue, in configuration order; each
// queue's figures are consistent with each other. Safe concurrently.
func (b *Broker) Stats() []QueueStats {
	set := b.queues.Load()
	out := make([]QueueStats, 0, len(set.names))
	for _, name := range set.names {
		if q := set.byName[name]; q != nil {
			out = append(out, q.snapshot())
			continue
		}
		out = append(out, QueueStats{Name: name, Capacity: set.forwarded[name], Forwarded: true})
	}
	return out
}

// noSuchQueue is NO_SUCH_QUEUE's message for name: the queues there are,
// so that a typo shows its fix.
func (b *Broker) noSuchQueue(name string) string {
	list := b.queues.Load().names
	names := make([]string, len(list))
	for i, q := range list {
		names[i] = strconv.Quote(q)
	}
	if len(names) == 0 {
		return fmt.Sprintf("no queue %q (the broker has none)", name)
	}
	return fmt.Sprintf("no queue %q (the queues are %s)", name, strings.Join(names, ", "))
}

// QueueStats describe one queue at one instant.
type QueueStats struct {
	Name     string
	Capacity int
	Depth    int // items waiting
	InFlight int // items handed out and not yet acked or requeued
	// Consumers are the requests taking from the queue now: streaming
	// consumers (CONSUME), and GETs waiting for an item.
	Consumers int
	// Totals since the broker started: items accepted by PUTs, handed out
	// (a redelivery counts again), acked (auto-ack items count when written
	// out), and handed out again after a NACK or a closed connection.
	Put, Delivered, Acked, Redelivered uint64
	// Tasks are the queue's task figures (none for a forwarded queue).
	Tasks TaskStats
	// Forwarded: a store server keeps the queue's items (QueueConfig's
	// Forward), and the broker knows none of the figures above but Name
	// and Capacity; WithStoreStatus asks the store server for them. Store
	// then names the store, StoreState says how it is ("connected", or
	// why the figures are missing), and StoreRedelivered is the store's
	// count of items in flight delivered more than once (Redelivered
	// stays 0: the store does not count redeliveries over time).
	Forwarded        bool
	Store            string
	StoreState       string
	StoreRedelivered int
	// Scheduled are the figures of the queue's schedules, which the
	// manager fills in (its scheduler puts through the broker like any
	// producer); nil for a queue that has had no schedule.
	Scheduled *ScheduledStats
}

// ScheduledStats are the figures of a queue's schedules
// (queues.NAME.schedule) since the manager started; they survive reloads.
type ScheduledStats struct {
	// Put counts items the schedules put; Failed the times a schedule's
	// item was not put (the queue stayed full past the wait, or the put
	// failed).
	Put, Failed uint64
	// Next are the schedules the queue has now, in the configuration's
	// order.
	Next []ScheduleNext
}

// ScheduleNext is one schedule and its next time.
type ScheduleNext struct {
	Cron string
	// TimeZone is the IANA name the cron is read in, or "Local".
	TimeZone string
	// At is the next time, in the schedule's time zone.
	At time.Time
}

// HasFigures reports whether q's figures are known: a memory queue's
// always, a forwarded queue's once its store answered (StoreState
// "connected"). Unknown figures are 0, which are not to be shown as
// figures (a total falling to 0 reads as a counter reset).
func (q QueueStats) HasFigures() bool { return !q.Forwarded || q.StoreState == "connected" }

// Serve accepts connections on l and serves them until Close. It blocks,
// and returns nil after Close (l is closed by then) or the error that made
// Accept fail otherwise; connections already accepted are still served
// until Close. Serve may run on several listeners at once.
func (b *Broker) Serve(l net.Listener) error {
	b.mu.Lock()
	if b.closing {
		b.mu.Unlock()
		l.Close()
		return nil
	}
	b.listeners[l] = struct{}{}
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.listeners, l)
		b.mu.Unlock()
	}()
	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			b.mu.Lock()
			closing := b.closing
			b.mu.Unlock()
			if closing {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) {
				// Out of descriptors for a moment: wait, as net/http does.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				b.log.Warn("queue broker: accept failed; retrying", zap.Error(err), zap.Duration("in", backoff))
				b.clock.sleep(backoff)
				continue
			}
			return fmt.Errorf("ipc: serve: accepting a connection: %w", err)
		}
		backoff = 0
		b.mu.Lock()
		if b.closing {
			b.mu.Unlock()
			nc.Close()
			return nil
		}
		c := b.newConn(nc)
		b.conns[c] = struct{}{}
		b.wg.Add(1)
		b.mu.Unlock()
		go c.serve()
	}
}

// Close stops the broker: it closes the listeners, answers every waiting
// GET and PUT with SHUTTING_DOWN, sends FATAL SHUTTING_DOWN to every
// connection and closes it (a connection whose peer does not read is closed
// after the frame deadline), and returns when all connection goroutines
// have ended. Items still queued or in flight are dropped with the broker.
// Safe to call twice and concurrently; every call waits. Always nil.
func (b *Broker) Close() error {
	b.closeOnce.Do(func() {
		b.mu.Lock()
		b.closing = true
		for l := range b.listeners {
			l.Close()
		}
		b.mu.Unlock()
		// Under setMu, so that a SetQueues either ran before (its queues
		// are shut down here) or runs after and sees closing.
		b.setMu.Lock()
		for _, q := range b.queues.Load().list {
			q.shutdown()
		}
		b.setMu.Unlock()
		b.mu.Lock()
		conns := make([]*conn, 0, len(b.conns))
		for c := range b.conns {
			conns = append(conns, c)
		}
		b.mu.Unlock()
		for _, c := range conns {
			c.fatal(statusShuttingDown, "broker shutting down")
		}
	})
	b.wg.Wait()
	return nil
}

// ---- connections

// msgKind is the kind of a reply waiting in a connection's outbox.
type msgKind uint8

const (
	msgResult msgKind = iota
	msgItems
	msgFatal
	msgRaw      // a store server's frame, passed on as it is (upstream.go)
	msgOutcomes // how a submitter's tasks ended (tasks.go)
)

// outMsg is one reply waiting for the connection's writer. Items are
// encoded by the writer, straight from the items' buffers.
type outMsg struct {
	kind     msgKind
	autoAck  bool
	requests bool // msgItems: a REQUESTS frame (tasks), not ITEMS
	status   uint16
	id       uint32
	n        uint32
	message  string
	q        *queue
	items    []item
	first    uint64    // delivery id of items[0]; the others follow
	raw      []byte    // msgRaw: the frame's type and body
	outcomes []outcome // msgOutcomes
}

type inflightItem struct {
	q    *queue
	it   item
	cons *waiter // the CONSUME it was pushed to; nil for a GET's
}

// conn is one client connection.
type conn struct {
	b    *Broker
	nc   net.Conn
	id   uint64
	peer Peer
	// pgid is the peer's process group, read at accept; -1 for none
	// (drain.go). group is its figures and drain, nil for none; draining
	// says the group drains: no item is handed to the connection.
	pgid     int
	group    atomic.Pointer[pgroup]
	draining atomic.Bool
	client   string // from HELLO, for the logs
	version  uint16 // from HELLO: the protocol version spoken
	service  string // BrokerOptions.PeerService's name for the peer; "" for none
	log      *zap.Logger

	wake       chan struct{} // an outbox append, for the writer (cap 1)
	drained    chan struct{} // the writer took the outbox (cap 1)
	unwaited   chan struct{} // a waiting request was answered (cap 1)
	quit       chan struct{} // closed to stop the writer
	quitOnce   sync.Once
	writerDone chan struct{}

	// writeMu is held by whoever writes to nc: the writer goroutine, or
	// the reader writing its own replies (flushInline). wbuf and wenc are
	// the writer's state: bytes encoded and not yet written, and the
	// auto-ack replies among them (acked once written, rule 5).
	writeMu sync.Mutex
	wbuf    []byte
	wenc    []outMsg

	mu     sync.Mutex
	outbox []outMsg
	spare  []outMsg
	// handling: the reader is carrying out requests it read and will write
	// the replies queued meanwhile itself (flushInline), so queueing one
	// does not wake the writer.
	handling bool
	closed   bool // cleanup took the in-flight items: deliver nothing more
	// writerGone: the writer stopped because the peer closed its end; the
	// reader reads what is left, within one frame deadline.
	writerGone bool
	fatalSet   bool     // a FATAL is in the outbox: nothing else is read or sent
	unsent     []outMsg // auto-ack replies the writer took but did not write
	inflight   inflightTable
	// submissions are the connection's tasks not yet ended, by tag
	// (tasks.go).
	submissions map[uint64]*request
	waiting     map[uint32]*waiter // by request id, for CANCEL
	// Waiting requests and the bytes of their PUTs' items, for flow
	// control. Counted apart from waiting, which a reused id overwrites.
	nWaiting, waitingBytes int
	// up is the connection to the store server of forwarded queues; the
	// reader's alone (upstream.go). upConn is its socket, guarded by mu,
	// for fatal to close: a reader blocked writing to it then returns.
	up     *upstream
	upConn net.Conn
	// upCur is up, for a drain to cancel what waits there (guarded by
	// mu). fwdHeld counts the items the upstreams handed the connection
	// and it has not settled; fwdTakers its GETs and CONSUMEs waiting
	// there; upReaders the upstream readers running. cleaned: cleanup
	// requeued what the connection held. All guarded by mu.
	upCur                         *upstream
	fwdHeld, fwdTakers, upReaders int
	cleaned                       bool
	// touched are the connections this one's reader queued replies for
	// and has not written out yet (wakeFor, flushTouched); the reader's
	// alone.
	touched []*conn
}

func (b *Broker) newConn(nc net.Conn) *conn {
	c := &conn{
		b:          b,
		nc:         nc,
		id:         b.nextConn.Add(1),
		peer:       PeerOf(nc),
		wake:       make(chan struct{}, 1),
		drained:    make(chan struct{}, 1),
		unwaited:   make(chan struct{}, 1),
		quit:       make(chan struct{}),
		writerDone: make(chan struct{}),
		waiting:    make(map[uint32]*waiter),
	}
	c.pgid = b.pgidOf(c.peer.PID)
	c.log = b.log.With(zap.Uint64("conn", c.id), zap.Int("pid", c.peer.PID), zap.Int("uid", c.peer.UID), zap.Int("gid", c.peer.GID))
	b.joinGroup(c)
	return c
}

// PeerOf asks the kernel (SO_PEERCRED) who is at the other end of a Unix
// socket connection: the pid, uid and gid of the process that connected,
// as they were when it did. Fields are -1 if nc is not a Unix socket or the
// kernel does not say.
func PeerOf(nc net.Conn) Peer {
	p := Peer{PID: -1, UID: -1, GID: -1}
	uc, ok := nc.(*net.UnixConn)
	if !ok {
		return p
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return p
	}
	raw.Control(func(fd uintptr) {
		if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
			p = Peer{PID: int(cred.Pid), UID: int(cred.Uid), GID: int(cred.Gid)}
			p.Groups, _ = peerGroups(int(fd))
		}
	})
	return p
}

// peerGroups asks the kernel for the supplementary groups the peer of
// Unix socket fd had when it connected (SO_PEERGROUPS). Unlike
// /proc/PID/status, read after the fact, they cannot belong to another
// process that got the pid since.
func peerGroups(fd int) ([]int, error) {
	buf := make([]uint32, 64)
	for {
		size := uint32(len(buf) * 4)
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
		switch {
		case errno == unix.ERANGE && int(size/4) > len(buf):
			buf = make([]uint32, size/4)
			continue
		case errno != 0:
			return nil, errno
		}
		groups := make([]int, size/4)
		for i := range groups {
			groups[i] = int(buf[i])
		}
		return groups, nil
	}
}

func (c *conn) signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// reply queues a RESULT. Never blocks.
func (c *conn) reply(id uint32, status uint16, n uint32, message string) {
	c.mu.Lock()
	c.outbox = append(c.outbox, outMsg{kind: msgResult, id: id, status: status, n: n, message: message})
	wake := !c.handling
	c.mu.Unlock()
	if wake {
		c.signal(c.wake)
	}
}

// deliver queues an ITEMS reply and, without auto-ack, records the items
// in flight on this connection. Called under q.mu; never blocks. It reports
// false, taking nothing, when the connection's cleanup already ran or a
// FATAL is queued: the writer stops at the FATAL, so nothing queued behind
// it would ever be written.
func (c *conn) deliver(id uint32, q *queue, items []item, first uint64, autoAck, requests bool, cons *waiter, by *conn) bool {
	c.mu.Lock()
	if c.closed || c.fatalSet {
		c.mu.Unlock()
		return false
	}
	if !autoAck {
		c.inflight.add(first, q, cons, items)
	}
	c.outbox = append(c.outbox, outMsg{kind: msgItems, id: id, q: q, items: items, first: first, autoAck: autoAck, requests: requests})
	wake := !c.handling
	c.mu.Unlock()
	if wake {
		c.wakeFor(by)
	}
	return true
}

// replyFor is reply, queued by by's reader (see wakeFor).
func (c *conn) replyFor(by *conn, id uint32, status uint16, n uint32, message string) {
	c.mu.Lock()
	c.outbox = append(c.outbox, outMsg{kind: msgResult, id: id, status: status, n: n, message: message})
	wake := !c.handling
	c.mu.Unlock()
	if wake {
		c.wakeFor(by)
	}
}

// wakeFor has what was just queued for c written out. When by is another
// connection, whose reader queued it, that reader writes it itself at its
// next flush (flushTouched), as nats-server's read loop flushes the
// clients it delivered to: across processes a write from the goroutine
// that is running costs less than waking c's writer, one more thread
// switch on the path of every item handed from one connection to another.
// Otherwise c's writer is woken.
func (c *conn) wakeFor(by *conn) {
	if by != nil && by != c {
		if n := len(by.touched); n == 0 || by.touched[n-1] != c {
			by.touched = append(by.touched, c)
		}
		return
	}
	c.signal(c.wake)
}

// flushTouched writes out what this reader queued for other connections
// (wakeFor), or wakes their writers for what it cannot write at once.
// Called by the reader only.
func (c *conn) flushTouched() {
	for i, t := range c.touched {
		t.flushFrom()
		c.touched[i] = nil
	}
	c.touched = c.touched[:0]
}

// addWaiter registers a request that starts waiting; removeWaiter, called
// exactly once for each, when it is answered or withdrawn, wakes the
// reader in case it stopped for too many waiting requests.
func (c *conn) addWaiter(w *waiter) {
	c.mu.Lock()
	c.waiting[w.id] = w
	c.nWaiting++
	c.waitingBytes += w.held
	c.mu.Unlock()
}

func (c *conn) removeWaiter(w *waiter) {
	c.mu.Lock()
	if c.waiting[w.id] == w {
		delete(c.waiting, w.id)
	}
	c.nWaiting--
	c.waitingBytes -= w.held
	c.mu.Unlock()
	c.signal(c.unwaited)
}

// fatal queues a FATAL after which the writer closes the connection, and
// bounds the time the writer may take to write it.
func (c *conn) fatal(status uint16, message string) {
	c.mu.Lock()
	if c.fatalSet {
		c.mu.Unlock()
		return
	}
	c.fatalSet = true
	c.outbox = append(c.outbox, outMsg{kind: msgFatal, status: status, message: message})
	up := c.upConn
	c.mu.Unlock()
	if up != nil {
		up.Close()
	}
	c.nc.SetWriteDeadline(deadlineIn(c.b.frameDeadline))
	c.nc.SetReadDeadline(deadlineIn(0)) // the reader stops at once
	c.signal(c.wake)
}

func (c *conn) writerIsGone() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writerGone
}

func (c *conn) fatalPending() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fatalSet
}

func (c *conn) stopWriter() { c.quitOnce.Do(func() { close(c.quit) }) }

// serve runs the connection: handshake, then the reader loop here and the
// writer on its own goroutine, then the cleanup that requeues what the
// connection held.
func (c *conn) serve() {
	defer c.b.wg.Done()
	defer func() {
		c.b.mu.Lock()
		delete(c.b.conns, c)
		c.b.mu.Unlock()
	}()
	br, ok := c.handshake()
	if !ok {
		c.nc.Close()
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		c.b.leaveGroup(c)
		return
	}
	if c.fatalPending() { // Close came during the handshake, which reset the deadlines
		c.nc.SetWriteDeadline(deadlineIn(c.b.frameDeadline))
		c.nc.SetReadDeadline(deadlineIn(0))
	}
	go c.writeLoop()
	c.readLoop(br)
	c.cleanup()
}

// writeDirect writes one frame before the writer goroutine exists, within
// the frame deadline.
func (c *conn) writeDirect(frame []byte) error {
	c.nc.SetWriteDeadline(deadlineIn(c.b.frameDeadline))
	_, err := c.nc.Write(frame)
	c.nc.SetWriteDeadline(time.Time{})
	return err
}

func (c *conn) fatalDirect(status uint16, message string) {
	c.writeDirect(appendFatal(nil, &fatalFrame{Status: status, Message: message}))
	if uc, ok := c.nc.(*net.UnixConn); ok {
		uc.CloseWrite()
	}
}

// handshake reads the HELLO, checks the peer and answers WELCOME, all
// within the frame deadline. It reports whether the connection may go on,
// and returns the connection's only reader: a client may pipeline requests
// right behind its HELLO, and whatever the HELLO's read buffered of them
// belongs to readLoop, so the two must share one bufio.Reader.
func (c *conn) handshake() (*bufio.Reader, bool) {
	allowed := c.b.allow(c.peer)
	if !allowed {
		// Logged at once, even if the peer never says HELLO; answered
		// after its HELLO, so a client that writes HELLO and then reads
		// gets the FATAL rather than a broken pipe.
		c.log.Warn("queue client refused: this peer may not use the queue broker")
	}
	c.nc.SetReadDeadline(deadlineIn(c.b.frameDeadline))
	br := bufio.NewReaderSize(c.nc, writeChunk)
	fr := frameReader{r: br}
	payload, err := fr.read(maxHelloLen, nil) // the frame limit before WELCOME
	if err != nil && !errors.Is(err, errBadFrame) {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() && !c.fatalPending() {
			c.log.Warn("queue client sent no HELLO within the frame deadline; closing its connection", zap.Duration("deadline", c.b.frameDeadline))
		} else {
			c.log.Debug("queue client gone before HELLO", zap.Error(err))
		}
		return nil, false
	}
	if !allowed {
		c.fatalDirect(statusRefused, "peer refused")
		return nil, false
	}
	var f any
	if err == nil {
		f, err = decodeFrame(payload)
	}
	// Whatever is wrong with the first frame, the answer is BAD_HELLO: the
	// client did not say a good HELLO.
	if err != nil {
		c.log.Warn("queue client sent a malformed HELLO", zap.Error(err))
		c.fatalDirect(statusBadHello, "malformed HELLO: "+err.Error())
		return nil, false
	}
	h, ok := f.(*helloFrame)
	if !ok {
		c.log.Warn("queue client did not start with HELLO", zap.String("frame", frameName(f)))
		c.fatalDirect(statusBadHello, "expected HELLO, got "+frameName(f))
		return nil, false
	}
	c.client = h.Client
	if string(h.Magic[:]) != helloMagic || h.Version < 1 || h.Version > ProtocolVersion {
		c.log.Warn("queue client sent a bad HELLO", zap.String("client", h.Client), zap.Uint16("version", h.Version))
		c.fatalDirect(statusBadHello, fmt.Sprintf("want magic %q version 1 to %d", helloMagic, ProtocolVersion))
		return nil, false
	}
	c.version = h.Version
	if c.b.peerService != nil {
		c.service = c.b.peerService(c.peer)
	}
	err = c.writeDirect(appendWelcome(nil, &welcomeFrame{Version: h.Version, MaxFrame: uint32(c.b.maxFrame), MaxItem: uint32(c.b.maxItem)}))
	if err != nil {
		c.log.Debug("queue client gone before WELCOME", zap.Error(err))
		return nil, false
	}
	c.nc.SetReadDeadline(time.Time{})
	c.log = c.log.With(zap.String("client", h.Client))
	c.log.Debug("queue client connected")
	return br, true
}

// readLoop reads and carries out requests from br, the reader the
// handshake used, until the connection ends or breaks the protocol.
func (c *conn) readLoop(br *bufio.Reader) {
	defer c.flushTouched()
	fr := frameReader{
		r:         br,
		untrusted: true,
		began: func() error {
			if c.writerIsGone() {
				return nil // its deadline stands (writeLoop)
			}
			return c.nc.SetReadDeadline(deadlineIn(c.b.frameDeadline))
		},
		ended: func() error {
			if c.writerIsGone() {
				return nil
			}
			return c.nc.SetReadDeadline(time.Time{})
		},
	}
	// Items (PUT, SUBMIT) and results (REPLY) are kept as slices of the
	// frame they came in (see queue.go).
	keepPut := func(typ byte) bool { return typ == typePut || typ == typeSubmit || typ == typeReply }
	for {
		payload, err := fr.read(c.b.maxFrame, keepPut)
		if err == nil {
			c.mu.Lock()
			c.handling = true
			c.mu.Unlock()
			err = c.handle(payload)
		}
		if err != nil {
			c.endHandling(true)
			var ne net.Error
			switch {
			case errors.Is(err, errBadFrame):
				c.log.Warn("queue client broke the protocol; closing its connection", zap.Error(err))
				c.fatal(statusBadFrame, err.Error())
			case c.fatalPending():
			case errors.As(err, &ne) && ne.Timeout() && c.writerIsGone():
				c.log.Warn("queue client stopped reading its connection; closing it", zap.Duration("after", c.b.frameDeadline))
			case errors.As(err, &ne) && ne.Timeout():
				c.log.Warn("queue client did not finish a frame within the frame deadline; closing its connection", zap.Duration("deadline", c.b.frameDeadline))
			case errors.Is(err, io.EOF):
				c.log.Debug("queue client disconnected")
			default:
				c.log.Debug("queue client connection ended", zap.Error(err))
			}
			return
		}
		// The replies go out now, unless a whole request more is read
		// already: pipelined requests' replies go out together. The reader
		// never waits for the socket with handling set.
		if !frameBuffered(br) {
			// What was handed to other connections goes out before the
			// upstream's flush, which may wait for the store server.
			c.flushInline()
			c.flushTouched()
			c.flushUpstream()
		}
		// Flow control: let the writer catch up, and waiting requests be
		// answered, before reading more.
		for {
			c.mu.Lock()
			n, dead := len(c.outbox), c.fatalSet
			waits := c.nWaiting >= maxWaiting || c.waitingBytes >= maxWaitingBytes
			c.mu.Unlock()
			if dead {
				return
			}
			if n < maxOutbox && !waits {
				break
			}
			c.flushTouched()
			c.flushUpstream()
			c.endHandling(true)
			select {
			case <-c.drained:
			case <-c.unwaited:
			case <-c.writerDone:
				return
			}
		}
	}
}

// timeoutDuration is a request's timeout_ms as a duration, waitForever as
// the longest one.
func timeoutDuration(ms uint32) time.Duration {
	if ms == waitForever {
		return time.Duration(math.MaxInt64)
	}
	return time.Duration(ms) * time.Millisecond
}

// frameBuffered reports whether br holds a whole frame, which reading will
// not wait for.
func frameBuffered(br *bufio.Reader) bool {
	n := br.Buffered()
	if n < frameHeaderLen {
		return false
	}
	head, err := br.Peek(frameHeaderLen)
	return err == nil && int64(n) >= frameHeaderLen+int64(binary.BigEndian.Uint32(head))
}

// handle carries out one request. An error is a protocol violation.
func (c *conn) handle(payload []byte) error {
	f, err := decodeFrame(payload)
	if err != nil {
		return err
	}
	switch f := f.(type) {
	case *putFrame:
		q := c.b.queue(f.Queue)
		if q == nil {
			if c.b.forwardedQueue(f.Queue) {
				c.forward(payload, f.ID, pendingFwd{kind: fwdOne, held: len(payload)}, timeoutDuration(f.TimeoutMS))
				return nil
			}
			c.reply(f.ID, statusNoSuchQueue, 0, c.b.noSuchQueue(f.Queue))
			return nil
		}
		for i, it := range f.Items {
			if len(it) > c.b.maxItem {
				c.reply(f.ID, statusTooLarge, 0, fmt.Sprintf("item %d has %d bytes, max_item is %d", i, len(it), c.b.maxItem))
				return nil
			}
		}
		q.put(c, f.ID, f.TimeoutMS, f.Items, nil)
	case *getFrame:
		q := c.b.queue(f.Queue)
		if q == nil {
			if c.b.forwardedQueue(f.Queue) {
				if c.draining.Load() {
					c.replyDraining(f.ID)
					return nil
				}
				c.forward(payload, f.ID, pendingFwd{kind: fwdOne, take: true, autoAck: f.Flags&flagAutoAck != 0}, timeoutDuration(f.TimeoutMS))
				return nil
			}
			c.reply(f.ID, statusNoSuchQueue, 0, c.b.noSuchQueue(f.Queue))
			return nil
		}
		q.get(c, f.ID, f.TimeoutMS, int(min(f.Max, 1<<24)), f.Flags&flagAutoAck != 0)
	case *ackFrame:
		c.ack(f)
	case *consumeFrame:
		q := c.b.queue(f.Queue)
		if q == nil {
			if c.b.forwardedQueue(f.Queue) {
				if c.draining.Load() {
					c.replyDraining(f.ID)
					return nil
				}
				c.forward(payload, f.ID, pendingFwd{kind: fwdConsume, take: true}, upstreamDialTimeout)
				return nil
			}
			c.reply(f.ID, statusNoSuchQueue, 0, c.b.noSuchQueue(f.Queue))
			return nil
		}
		q.consume(c, f.ID, int(min(f.Prefetch, maxPrefetch)))
	case *cancelFrame:
		c.mu.Lock()
		w := c.waiting[f.ID]
		c.mu.Unlock()
		switch {
		case w != nil:
			w.q.finish(w, statusCancelled, "cancelled")
		case c.forwarded(f.ID):
			c.forward(payload, f.ID, pendingFwd{kind: fwdCancel}, 0)
		}
	case *submitFrame, *replyFrame, *withdrawFrame:
		if c.version < taskVersion {
			return badFrame("%s needs protocol version %d; this connection said %d in its HELLO", frameName(f), taskVersion, c.version)
		}
		switch f := f.(type) {
		case *submitFrame:
			c.submit(f)
		case *replyFrame:
			c.answer(f)
		case *withdrawFrame:
			c.withdraw(f)
		}
	default:
		return badFrame("%s is not a request a client sends", frameName(f))
	}
	return nil
}

// frameName is the protocol's name of a decoded frame's type.
func frameName(f any) string {
	switch f := f.(type) {
	case *helloFrame:
		return "HELLO"
	case *welcomeFrame:
		return "WELCOME"
	case *putFrame:
		return "PUT"
	case *getFrame:
		return "GET"
	case *ackFrame:
		return "ACK or NACK"
	case *cancelFrame:
		return "CANCEL"
	case *consumeFrame:
		return "CONSUME"
	case *resultFrame:
		return "RESULT"
	case *itemsFrame:
		if f.Requests {
			return "REQUESTS"
		}
		return "ITEMS"
	case *fatalFrame:
		return "FATAL"
	case *submitFrame:
		return "SUBMIT"
	case *replyFrame:
		return "REPLY"
	case *withdrawFrame:
		return "WITHDRAW"
	case *outcomesFrame:
		return "OUTCOMES"
	}
	return fmt.Sprintf("frame %T", f)
}

// ack carries out an ACK or NACK: only this connection's in-flight items
// are found (rules 3 and 4). Deliveries of the store server (forwarded
// queues) are forwarded, and its RESULT merged with this one's.
func (c *conn) ack(f *ackFrame) {
	split := len(f.Deliveries)
	for i, d := range f.Deliveries {
		if d >= StoreDeliveryBase {
			split = i
			break
		}
	}
	if split == len(f.Deliveries) {
		n := c.settle(f)
		c.replyAck(f.ID, n, uint32(len(f.Deliveries))-n)
		return
	}
	var local, remote []uint64
	for _, d := range f.Deliveries {
		if d >= StoreDeliveryBase {
			remote = append(remote, d)
		} else {
			local = append(local, d)
		}
	}
	var n uint32
	if len(local) > 0 {
		n = c.settle(&ackFrame{Nack: f.Nack, ID: f.ID, Deliveries: local})
	}
	fwd := appendAck(nil, &ackFrame{Nack: f.Nack, ID: f.ID, Deliveries: remote})
	c.forward(fwd[frameHeaderLen:], f.ID, pendingFwd{kind: fwdAck, nack: f.Nack, merge: ackMerge{found: n, unknown: uint32(len(local)) - n}}, upstreamDialTimeout)
}

// replyAck answers an ACK or NACK of which found deliveries were found
// and unknown were not.
func (c *conn) replyAck(id, found, unknown uint32) {
	if unknown > 0 {
		c.reply(id, statusUnknownDelivery, found, fmt.Sprintf("%d of %d deliveries are not this connection's in-flight items", unknown, found+unknown))
		return
	}
	c.reply(id, statusOK, found, "")
}

// settle acks or NACKs the broker's own deliveries of f and returns how
// many it found.
func (c *conn) settle(f *ackFrame) uint32 { return c.settleWith(f, nil) }

// settleWith is settle, the acked tasks answered by answer(i) for
// f.Deliveries[i] (nil: done, with an empty result).
func (c *conn) settleWith(f *ackFrame, answer func(i int) (byte, []byte)) uint32 {
	type found struct {
		delivery uint64
		inflightItem
	}
	var nacked []found
	var ackQ *queue // the queue of the acked items while there is only one
	ackN := 0
	perQueue := map[*queue]int(nil)
	// CONSUMEs whose items were acked or NACKed: credW while there is
	// only one, as there mostly is.
	var credW *waiter
	credN := 0
	var credit map[*waiter]int
	var ends map[*queue][]taskEnd // acked tasks, by queue
	c.mu.Lock()
	n := 0
	for i, d := range f.Deliveries {
		e, ok := c.inflight.take(d)
		if !ok {
			continue
		}
		n++
		if e.it.req != nil && !f.Nack {
			end := taskEnd{req: e.it.req, status: outcomeDone}
			if answer != nil {
				end.status, end.body = answer(i)
			}
			if ends == nil {
				ends = make(map[*queue][]taskEnd)
			}
			ends[e.q] = append(ends[e.q], end)
		}
		switch {
		case e.cons == nil:
		case credW == nil || credW == e.cons:
			credW = e.cons
			credN++
		default:
			if credit == nil {
				credit = make(map[*waiter]int)
			}
			credit[e.cons]++
		}
		if f.Nack {
			nacked = append(nacked, found{d, e})
			continue
		}
		switch {
		case ackQ == nil || ackQ == e.q:
			ackQ = e.q
			ackN++
		default:
			if perQueue == nil {
				perQueue = make(map[*queue]int)
			}
			perQueue[e.q]++
		}
	}
	c.mu.Unlock()
	for q, es := range ends {
		q.endTasks(es, c)
	}
	if ackQ != nil {
		ackQ.ack(ackN)
	}
	for q, k := range perQueue {
		q.ack(k)
	}
	if len(nacked) > 0 {
		slices.SortFunc(nacked, func(a, b found) int { return cmp.Compare(a.delivery, b.delivery) })
		requeueGrouped(len(nacked), c, func(i int) (*queue, item) { return nacked[i].q, nacked[i].it })
	}
	if credW != nil {
		credW.q.release(credW, credN, c)
	}
	for w, k := range credit {
		w.q.release(w, k, c)
	}
	if !f.Nack {
		c.countAcked(n)
	}
	if n > 0 {
		c.drainCheck()
	}
	return uint32(n)
}

// requeueGrouped requeues n items, given in delivery order, queue by queue,
// each queue's items keeping that order.
func requeueGrouped(n int, by *conn, at func(int) (*queue, item)) {
	byQueue := make(map[*queue][]item)
	var order []*queue
	for i := range n {
		q, it := at(i)
		if _, seen := byQueue[q]; !seen {
			order = append(order, q)
		}
		byQueue[q] = append(byQueue[q], it)
	}
	for _, q := range order {
		q.requeue(byQueue[q], by)
	}
}

// Writing. Replies reach the socket two ways, under writeMu:
//
//   - the reader writes its own connection's replies itself, after the
//     requests it has read (flushInline), when it can do so without blocking:
//     one goroutine hand-off less on the path of a request answered at once;
//   - the writer goroutine writes everything else: replies other goroutines
//     queue (a PUT of another connection answering a waiting GET, a timer),
//     what the socket would not take at once, big bodies, and FATAL.
//
// An auto-ack item leaves the broker only once its ITEMS frame is written
// (rule 5): it is acked after the write that carried its last byte. When
// the writer stops part-way (a write fails, or a FATAL ends the connection),
// the auto-ack replies taken but not written go to c.unsent, and cleanup
// requeues them with the rest of what the connection held. A failed write
// may have sent part of a frame; the client cannot decode a partial frame,
// so that item counts as not written.

// writeLoop is the writer goroutine: it writes what it is woken for until
// the connection ends or a FATAL is written.
func (c *conn) writeLoop() {
	defer close(c.writerDone)
	peerClosed := false
	defer func() {
		// Closing wakes the reader if the writer stops first. Not when the
		// peer closed its end: what it sent before (its last
		// acknowledgements above all) is still to be read, and the reader
		// reads it, to the end of the stream that the peer's close makes
		// certain; cleanup closes then. Closing now would drop it, and
		// deliver again items the peer had acknowledged.
		if !peerClosed {
			c.nc.Close()
		}
	}()
	for {
		select {
		case <-c.wake:
		case <-c.quit:
			return
		}
		c.writeMu.Lock()
		stop, err := c.writeAll()
		c.writeMu.Unlock()
		if stop {
			peerClosed = errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET)
			if peerClosed {
				// Bounded: a peer that shut down only its reading side
				// may keep the connection open, and nothing would end the
				// reader. It has the frame deadline to read what is there.
				c.mu.Lock()
				c.writerGone = true
				c.mu.Unlock()
				c.nc.SetReadDeadline(deadlineIn(c.b.frameDeadline))
			}
			return
		}
	}
}

// writeAll encodes the outbox and writes it, blocking, as much as has
// accumulated per system call, after what an earlier write left. It
// reports whether the writer must stop: a write failed, or a FATAL went
// out. Called with writeMu held.
func (c *conn) writeAll() (stop bool, err error) {
	var unsent []outMsg // auto-ack replies taken from the outbox, not encoded
	handBack := func() {
		all := slices.Concat(c.wenc, unsent)
		c.wenc = c.wenc[:0]
		if len(all) == 0 {
			return
		}
		c.mu.Lock()
		c.unsent = append(c.unsent, all...)
		c.mu.Unlock()
	}
	write := func() error {
		_, err := c.writeBuffered(true)
		return err
	}
	if err := write(); err != nil {
		c.log.Debug("queue client connection: write failed", zap.Error(err))
		handBack()
		return true, err
	}
	fatal := false
	for !fatal {
		c.mu.Lock()
		batch := c.outbox
		c.outbox, c.spare = c.spare[:0], nil
		c.mu.Unlock()
		c.signal(c.drained)
		if len(batch) == 0 {
			c.mu.Lock()
			c.spare = batch
			c.mu.Unlock()
			break
		}
		var err error
		rest := len(batch) // batch[rest:] was not encoded
		for i := range batch {
			m := &batch[i]
			switch m.kind {
			case msgResult:
				c.wbuf = appendResult(c.wbuf, &resultFrame{ID: m.id, Status: m.status, N: m.n, Message: m.message})
			case msgFatal:
				c.wbuf = appendFatal(c.wbuf, &fatalFrame{Status: m.status, Message: m.message})
				fatal = true
			case msgRaw:
				c.wbuf = append(appendUint32(c.wbuf, uint32(len(m.raw))), m.raw...)
			case msgOutcomes:
				c.wbuf = appendOutcomes(c.wbuf, &outcomesFrame{Outcomes: m.outcomes})
			case msgItems:
				err = c.encodeItems(&c.wbuf, m, write)
				if err == nil && m.autoAck {
					c.wenc = append(c.wenc, *m)
				}
			}
			if err != nil {
				rest = i
				break
			}
			if len(c.wbuf) >= writeChunk {
				err = write()
			}
			if err != nil || fatal {
				rest = i + 1
				break
			}
		}
		for _, m := range batch[rest:] {
			if m.kind == msgItems && m.autoAck {
				unsent = append(unsent, m)
			}
		}
		clear(batch)
		c.mu.Lock()
		c.spare = batch[:0]
		c.mu.Unlock()
		if err != nil {
			c.log.Debug("queue client connection: write failed", zap.Error(err))
			handBack()
			return true, err
		}
	}
	if err := write(); err != nil {
		c.log.Debug("queue client connection: write failed", zap.Error(err))
		handBack()
		return true, err
	}
	if fatal {
		handBack()
		if uc, ok := c.nc.(*net.UnixConn); ok {
			uc.CloseWrite()
		}
		return true, nil
	}
	return false, nil
}

// flushInline is the reader's write of its connection's replies, once it
// has carried out the requests it had read: when nobody else writes, what
// the outbox holds is small replies only, and the socket takes it all at
// once, they go out from here, waking no other goroutine. Anything else is
// left to the writer goroutine, which it wakes. It also ends the reader's
// handling (see conn.handling).
func (c *conn) flushInline() {
	if !c.writeMu.TryLock() {
		c.endHandling(true)
		return
	}
	defer c.writeMu.Unlock()
	c.mu.Lock()
	c.handling = false
	c.writeOutboxLocked()
}

// flushFrom is another connection's reader writing out what it queued
// for c (wakeFor): as flushInline, when nobody else writes to c and c's
// own reader is not about to; else c's writer is woken.
func (c *conn) flushFrom() {
	if !c.writeMu.TryLock() {
		c.signal(c.wake)
		return
	}
	defer c.writeMu.Unlock()
	c.mu.Lock()
	// Its reader writes it all at its own flush; a closed connection's
	// cleanup takes what is queued.
	if c.handling || c.closed {
		c.mu.Unlock()
		return
	}
	c.writeOutboxLocked()
}

// writeOutboxLocked writes the outbox from the calling goroutine, if it
// holds small replies only and the socket takes them at once; anything
// else is left to the writer goroutine, which it wakes. Called with
// writeMu and c.mu held; it unlocks c.mu.
func (c *conn) writeOutboxLocked() {
	if len(c.outbox) == 0 {
		c.mu.Unlock()
		return
	}
	if c.fatalSet || len(c.wbuf) > 0 || !inlineable(c.outbox) {
		c.mu.Unlock()
		c.signal(c.wake)
		return
	}
	batch := c.outbox
	c.outbox, c.spare = c.spare[:0], nil
	c.mu.Unlock()
	c.signal(c.drained)
	for i := range batch {
		m := &batch[i]
		switch m.kind {
		case msgResult:
			c.wbuf = appendResult(c.wbuf, &resultFrame{ID: m.id, Status: m.status, N: m.n, Message: m.message})
		case msgRaw:
			c.wbuf = append(appendUint32(c.wbuf, uint32(len(m.raw))), m.raw...)
		case msgOutcomes:
			c.wbuf = appendOutcomes(c.wbuf, &outcomesFrame{Outcomes: m.outcomes})
		case msgItems:
			c.encodeItems(&c.wbuf, m, nil) //nolint:errcheck // no big body (inlineable): it writes nothing
			if m.autoAck {
				c.wenc = append(c.wenc, *m)
			}
		}
	}
	clear(batch)
	c.mu.Lock()
	c.spare = batch[:0]
	c.mu.Unlock()
	complete, err := c.writeBuffered(false)
	if err != nil && len(c.wenc) > 0 {
		// Auto-ack items not written are still the broker's: cleanup
		// requeues them (the writer may have stopped already, and would
		// not hand them back).
		c.mu.Lock()
		c.unsent = append(c.unsent, c.wenc...)
		c.mu.Unlock()
		clear(c.wenc)
		c.wenc = c.wenc[:0]
	}
	if err != nil || !complete {
		// The rest, or the failure (a write error ends the writer), is
		// the writer's.
		c.signal(c.wake)
	}
}

// endHandling ends the reader's handling: replies queued from now on wake
// the writer; with wake, the writer is woken for what is queued already.
func (c *conn) endHandling(wake bool) {
	c.mu.Lock()
	c.handling = false
	queued := len(c.outbox) > 0
	c.mu.Unlock()
	if wake && queued {
		c.signal(c.wake)
	}
}

// inlineable reports whether the reader may write msgs itself: results and
// ITEMS without a big body (those are written from their own buffers, which
// takes blocking writes), and no FATAL.
func inlineable(msgs []outMsg) bool {
	for i := range msgs {
		switch msgs[i].kind {
		case msgFatal:
			return false
		case msgItems:
			for _, it := range msgs[i].items {
				if len(it.body) >= bigBody {
					return false
				}
			}
		}
	}
	return true
}

// writeBuffered writes c.wbuf, keeping what is not written; with block
// false only what the socket takes at once. When all of it is written, the
// auto-ack replies in it are acked (rule 5) and it reports complete.
// Called with writeMu held.
func (c *conn) writeBuffered(block bool) (complete bool, err error) {
	if len(c.wbuf) > 0 {
		var n int
		if block {
			n, err = c.nc.Write(c.wbuf)
		} else {
			n, err = tryWrite(c.nc, c.wbuf)
		}
		c.wbuf = c.wbuf[:copy(c.wbuf, c.wbuf[n:])]
		if err != nil || len(c.wbuf) > 0 {
			return false, err
		}
	}
	for i := range c.wenc {
		c.wenc[i].ackWritten()
		c.countAcked(len(c.wenc[i].items))
	}
	clear(c.wenc)
	c.wenc = c.wenc[:0]
	return true, nil
}

// ackWritten ends the items of an auto-ack reply that has been written
// (rule 5): they leave the broker, and the tasks among them are answered
// done, with an empty result.
func (m *outMsg) ackWritten() {
	m.q.ack(len(m.items))
	var ends []taskEnd
	for _, it := range m.items {
		if it.req != nil {
			ends = append(ends, taskEnd{req: it.req, status: outcomeDone})
		}
	}
	if len(ends) > 0 {
		m.q.endTasks(ends, nil)
	}
}

// tryWrite writes what the socket takes of b now, without waiting for
// room: one write(2) on the connection's non-blocking descriptor.
func tryWrite(nc net.Conn, b []byte) (int, error) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nc.Write(b) // not a socket with a descriptor (tests' pipes)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var werr error
	err = rc.Write(func(fd uintptr) bool {
		for {
			n, werr = unix.Write(int(fd), b)
			if werr != unix.EINTR {
				break
			}
		}
		if werr == unix.EAGAIN {
			n, werr = 0, nil
		}
		return true // never wait for room: the writer goroutine will
	})
	if n < 0 {
		n = 0
	}
	if err == nil {
		err = werr
	}
	return n, err
}

// encodeItems appends an ITEMS frame to *buf; a big body is written from
// its own buffer instead of being copied (write, which writes *buf, is
// called first; it is nil for messages without a big body).
func (c *conn) encodeItems(buf *[]byte, m *outMsg, write func() error) error {
	size := itemsFixedLen
	for i := range m.items {
		size += itemsEntryLen + len(m.items[i].body)
	}
	b := *buf
	b = appendUint32(b, uint32(size))
	if m.requests {
		b = append(b, typeRequests)
	} else {
		b = append(b, typeItems)
	}
	b = appendUint32(b, m.id)
	b = appendUint32(b, uint32(len(m.items)))
	for i := range m.items {
		d := m.first + uint64(i)
		if m.autoAck {
			d = 0
		}
		b = appendUint64(b, d)
		b = appendUint32(b, m.items[i].deliveries)
		body := m.items[i].body
		b = appendUint32(b, uint32(len(body)))
		if len(body) < bigBody {
			b = append(b, body...)
			continue
		}
		*buf = b
		if err := write(); err != nil {
			return err
		}
		if _, err := c.nc.Write(body); err != nil {
			return err
		}
		b = (*buf)[:0]
	}
	*buf = b
	return nil
}

// cleanup runs once the reader has stopped: it stops the writer, withdraws
// the connection's waiting requests and requeues every item the connection
// held (rule 4), in delivery order.
func (c *conn) cleanup() {
	c.mu.Lock()
	fatal := c.fatalSet
	c.mu.Unlock()
	if fatal {
		// Let the writer write the FATAL; its write deadline bounds this.
		<-c.writerDone
	}
	c.nc.Close()
	c.closeUpstream()
	c.stopWriter()
	<-c.writerDone
	// From now on nothing is handed to this connection, nor written to it
	// by another's reader (flushFrom); one writing now finishes first, and
	// hands back what it could not write.
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.writeMu.Lock()
	// Auto-ack replies encoded and not all written (a partial write the
	// writer did not come back to) are still the broker's (rule 5).
	c.mu.Lock()
	c.unsent = append(c.unsent, c.wenc...)
	c.mu.Unlock()
	clear(c.wenc)
	c.wenc = c.wenc[:0]
	c.writeMu.Unlock()
	// Only queues of the current set can hold this connection's waiting
	// requests: a removed queue answered its own, and the reader, which
	// alone adds waiting requests, has stopped.
	for _, q := range c.b.queues.Load().list {
		q.dropConn(c)
	}
	c.mu.Lock()
	type held struct {
		delivery uint64
		inflightItem
	}
	all := make([]held, 0, c.inflight.len())
	c.inflight.each(func(d uint64, e inflightItem) {
		all = append(all, held{d, e})
	})
	for _, m := range slices.Concat(c.unsent, c.outbox) {
		if m.kind == msgItems && m.autoAck { // never written: still the broker's (rule 5)
			for i, it := range m.items {
				all = append(all, held{m.first + uint64(i), inflightItem{q: m.q, it: it}})
			}
		}
	}
	c.inflight, c.outbox, c.spare, c.unsent = inflightTable{}, nil, nil, nil
	subs := c.submissions
	c.submissions = nil
	c.mu.Unlock()
	c.dropSubmissions(subs)
	if len(all) > 0 {
		slices.SortFunc(all, func(a, b held) int { return cmp.Compare(a.delivery, b.delivery) })
		requeueGrouped(len(all), nil, func(i int) (*queue, item) { return all[i].q, all[i].it })
		c.log.Debug("queue client connection closed; its in-flight items are requeued", zap.Int("items", len(all)))
	}
	// The connection leaves its group once its upstreams' readers have
	// ended too: until then a store server may still hold items for it.
	c.mu.Lock()
	c.cleaned = true
	last := c.upReaders == 0
	c.mu.Unlock()
	if last {
		c.b.leaveGroup(c)
	}
}

func appendUint32(b []byte, v uint32) []byte {
	return append(b, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
}

func appendUint64(b []byte, v uint64) []byte {
	return appendUint32(appendUint32(b, uint32(v>>32)), uint32(v))
}
