package jsstore

// How Get hands out items, and how a message of several items is settled.
//
// A Get takes the items fetched already and not handed out (ready), in
// order. When there are none it asks JetStream for what is there at once,
// and when there is nothing either it waits for a pull that the waiting
// Gets share: each adds the items it wants to the demand, and a pull asks
// for the messages the demand needs beyond those the pulls out will
// bring. A pull's messages go to ready as they arrive, and whoever waits
// takes them, so the items of one message may serve several Gets of this
// process. An item in ready is in flight in JetStream (its AckWait runs,
// other processes cannot have it): one that nobody takes for hold (a
// second, or a third of AckWait) goes back, as do all of them when the
// store drains. Pulls last a second at most, renewed while Gets wait, so
// that one does not go on fetching long after the Gets that asked for it.
//
// A message is settled once each of its items is: acknowledged, refused
// (NACK), or given back without being handed out. Then:
//   - all acknowledged: the message is acknowledged;
//   - none acknowledged: it is NAKed, and all of it is delivered again at
//     once (an item given back counts a delivery more than it was handed
//     out);
//   - some acknowledged: the others are stored again as a new message,
//     which counts the times each was handed out, then the message is
//     acknowledged. A full stream is tried again for up to half of
//     AckWait, the message kept in flight meanwhile; if it stays full (or
//     the store drains), the message is NAKed instead, and its
//     acknowledged items come back with the rest (at least once).
//
// A message whose AckWait passes before it is settled is delivered again
// whole, its acknowledged items with it: items put together are handled
// together, so one slow item brings its siblings back.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"go.uber.org/zap"
)

const (
	// maxPullBatch bounds the messages one pull asks for.
	maxPullBatch = 1024
	// holdMin and holdMax bound how long an item fetched waits in ready
	// for a Get before it goes back: a third of AckWait, in between. Not
	// long: an item in ready is out of other processes' reach.
	holdMin = 100 * time.Millisecond
	holdMax = time.Second
	// pullExpiry bounds a pull's wait: a pull outlives the Gets that
	// asked for it (what it brings then waits in ready), and Drain waits
	// for the pulls out to end. While Gets wait, pulls are renewed.
	pullExpiry = time.Second
	// restoreRetry is how long storeRest waits between tries of a full
	// stream, and restoreFor how long it tries (at most, of AckWait).
	restoreRetry = 100 * time.Millisecond
	// maxWindow bounds fetched.window; a Get that comes back for more
	// within windowQuick of the last fetch grows it.
	maxWindow   = 64
	windowQuick = 50 * time.Millisecond
)

type itemState uint8

const (
	itemReady itemState = iota
	itemHandedOut
	itemAcked
	itemNacked
	itemGivenBack
)

// message is a JetStream message fetched and its items' states.
type message struct {
	s     *Store
	msg   jetstream.Msg
	items [][]byte
	// deliveries is JetStream's count for the message; delivered, if not
	// nil, counts per item the handouts before the message was stored.
	deliveries int
	delivered  []int

	mu    sync.Mutex
	state []itemState
	left  int // items not settled
}

// handouts is how many times item i has been handed out, this one
// included.
func (m *message) handouts(i int) int {
	if m.delivered == nil {
		return m.deliveries
	}
	return m.deliveries + m.delivered[i]
}

// errSettled: an item acknowledged or refused twice.
var errSettled = errors.New("item settled already")

// settle moves item i from state from to to, and settles the message when
// it was the last item not settled. ctx, if not nil, is how long to wait
// for the server to confirm an acknowledgement of the message.
func (m *message) settle(ctx context.Context, i int, from, to itemState) error {
	m.mu.Lock()
	if m.state[i] != from {
		m.mu.Unlock()
		return fmt.Errorf("queue %s: %w", m.s.cfg.Queue, errSettled)
	}
	m.state[i] = to
	m.left--
	last := m.left == 0
	m.mu.Unlock()
	if !last {
		return nil
	}
	return m.finish(ctx)
}

func (m *message) finish(ctx context.Context) error {
	acked := 0
	for _, st := range m.state {
		if st == itemAcked {
			acked++
		}
	}
	switch {
	case acked == len(m.items) && ctx != nil:
		return m.msg.DoubleAck(ctx)
	case acked == len(m.items):
		return m.msg.Ack()
	case acked == 0:
		return m.s.nak(m.msg)
	}
	m.s.settling.Add(1)
	go func() {
		defer m.s.settling.Done()
		m.storeRest()
	}()
	return nil
}

// storeRest stores the items not acknowledged again, then acknowledges
// the message; or NAKs it when it cannot.
func (m *message) storeRest() {
	b := Batch{ID: nuid.Next()}
	for i, st := range m.state {
		if st == itemAcked {
			continue
		}
		n := m.handouts(i)
		if st == itemGivenBack {
			n-- // handed out once less than the message was delivered
		}
		b.Items = append(b.Items, m.items[i])
		b.delivered = append(b.delivered, max(n, 0))
	}
	rest := []Batch{b}
	if msg := b.message(m.s.subject); len(b.Items) > 1 && int64(len(msg.Data)+headerLen(msg.Header)) > m.s.largestMessage() {
		// The counts' header made it larger than a message may be: an
		// item to a message.
		rest = rest[:0]
		for i, it := range b.Items {
			rest = append(rest, Batch{ID: b.ID + "." + strconv.Itoa(i), Items: [][]byte{it}, delivered: b.delivered[i : i+1]})
		}
	}
	log := m.s.log.With(zap.String("queue", m.s.cfg.Queue), zap.Int("items", len(m.items)), zap.Int("acknowledged", len(m.items)-len(b.Items)))
	// A full stream makes room as getters acknowledge: the store is tried
	// again, the message kept in flight meanwhile (InProgress), for up to
	// half its AckWait, and the message NAKed only then (or when the store
	// drains), so that its acknowledged items come back only if the
	// stream stays full.
	giveUp := time.Now().Add(m.s.cfg.AckWait / 2)
	for len(rest) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
		_, err := m.s.js.PublishMsg(ctx, rest[0].message(m.s.subject), jetstream.WithMsgID(rest[0].ID), jetstream.WithExpectStream(StreamName(m.s.cfg.Queue)))
		cancel()
		if err == nil {
			rest = rest[1:]
			continue
		}
		if isFull(err) && time.Now().Before(giveUp) && !m.s.fetched.isClosed() {
			_ = m.msg.InProgress()
			time.Sleep(restoreRetry)
			continue
		}
		log.Warn("could not store again the items of a message that were not acknowledged; the whole message is delivered again, its acknowledged items too", zap.Error(err))
		if err := m.s.nak(m.msg); err != nil {
			log.Warn("could not give a message back; it is delivered again after its ack wait", zap.Error(err))
		}
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
	defer cancel()
	if err := m.msg.DoubleAck(ctx); err != nil {
		log.Warn("the server did not confirm the acknowledgement of a message whose other items were stored again: its acknowledged items may come back", zap.Error(err))
	}
}

// largestMessage is the most bytes, data and headers, a message of the
// queue may have.
func (s *Store) largestMessage() int64 {
	limit := s.js.Conn().MaxPayload()
	if s.cfg.MaxItem > 0 && (limit <= 0 || int64(s.cfg.MaxItem) < limit) {
		limit = int64(s.cfg.MaxItem)
	}
	if limit <= 0 {
		return math.MaxInt64
	}
	// Beside ours, the headers a publish adds (its id, the stream).
	return limit - 128
}

// headerLen is about what h takes in a message.
func headerLen(h nats.Header) int {
	n := 12 // "NATS/1.0\r\n" and the blank line
	for k, vs := range h {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return n
}

// nak gives msg back to be delivered again at once.
//
// It is a NAK with a delay of a nanosecond: a plain NAK only queues the
// message for redelivery in the server's memory, so a server that
// restarts right after (a local server stops with its bridge) would hold
// it until AckWait; a delayed NAK records it as due in the consumer's
// state.
func (s *Store) nak(msg jetstream.Msg) error {
	if err := msg.NakWithDelay(time.Nanosecond); err != nil {
		return fmt.Errorf("queue %s: give an item back: %w", s.cfg.Queue, err)
	}
	reply := msg.Reply()
	s.lastNak.Store(&reply)
	return nil
}

// nakNow is the NAK nak sends, as a request's payload (Drain).
const nakNow = `-NAK {"delay": 1}`

// Delivery is an item handed out by Get: in flight until Ack or Nak, or
// until AckWait passes.
type Delivery struct {
	// Data is the item.
	Data []byte
	// Deliveries counts the times the item was handed out, this one
	// included.
	Deliveries int
	m          *message
	i          int
}

// Ack removes the item for good, once the other items of its message are
// settled. The server does not confirm it: an acknowledgement lost with a
// connection leaves the item to be delivered again after AckWait (at
// least once).
func (d Delivery) Ack() error { return d.m.settle(nil, d.i, itemHandedOut, itemAcked) }

// AckSync is Ack, and when it settles the message with an
// acknowledgement, waits for the server to confirm it, or for ctx to end.
func (d Delivery) AckSync(ctx context.Context) error {
	return d.m.settle(ctx, d.i, itemHandedOut, itemAcked)
}

// Nak gives the item back, to be delivered again at once: when the other
// items of its message are settled.
func (d Delivery) Nak() error { return d.m.settle(nil, d.i, itemHandedOut, itemNacked) }

type readyItem struct {
	m  *message
	i  int
	at time.Time // fetched
}

// fetched is the items Get has taken from JetStream: see the top of this
// file.
type fetched struct {
	s    *Store
	hold time.Duration

	mu    sync.Mutex
	ready []readyItem
	// changed is closed and replaced when ready gains items or a pull
	// ends.
	changed chan struct{}
	// demand: items the waiting Gets want. outstanding: messages the
	// pulls out have asked for and not brought yet.
	demand, outstanding int
	pulls               int
	// pullErr is the last pull's failure, at pullErrAt.
	pullErr   error
	pullErrAt time.Time
	// perMsg is about how many items a message brings.
	perMsg float64
	// pullsCtx ends the pulls out when the store drains; late holds the
	// messages that arrived after, given back once the pulls are over.
	pullsCtx    context.Context
	cancelPulls context.CancelFunc
	late        []jetstream.Msg
	// window is how many messages a Get that finds ready empty fetches at
	// least: it doubles while Gets come back for more soon after such a
	// fetch brought all it asked for, and halves when items go back.
	window    int
	lastFetch time.Time
	closed    bool
	holdTimer *time.Timer
	holdArmed bool
}

func (f *fetched) init(s *Store) {
	f.s = s
	f.hold = min(max(s.cfg.AckWait/3, holdMin), holdMax)
	f.changed = make(chan struct{})
	f.perMsg = 1
	f.window = 1
	f.pullsCtx, f.cancelPulls = context.WithCancel(context.Background())
}

func (f *fetched) isClosed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closed
}

func (f *fetched) signalLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// msgsFor is how many messages bring about items items.
func (f *fetched) msgsForLocked(items int) int {
	return min(max(int(math.Ceil(float64(items)/f.perMsg)), 1), maxPullBatch)
}

// arrive takes in a message fetched; fromPull: a pull counted it in
// outstanding.
func (f *fetched) arrive(msg jetstream.Msg, fromPull bool) {
	s := f.s
	items, delivered, err := unpack(msg.Data(), msg.Headers())
	if err != nil {
		s.log.Error("a message of the queue is not as the bridge stores items; it is handed out as one item", zap.String("queue", s.cfg.Queue), zap.Error(err))
		items, delivered = [][]byte{msg.Data()}, nil
	}
	m := &message{s: s, msg: msg, items: items, delivered: delivered, deliveries: 1,
		state: make([]itemState, len(items)), left: len(items)}
	if md, err := msg.Metadata(); err == nil {
		m.deliveries = int(md.NumDelivered)
	}
	now := time.Now()
	f.mu.Lock()
	if fromPull {
		f.outstanding--
	}
	f.perMsg = (f.perMsg + float64(len(items))) / 2
	if f.closed {
		// Given back once the pulls are over: NAKed now, it could come
		// back to a pull still out.
		f.late = append(f.late, msg)
		f.mu.Unlock()
		return
	}
	for i := range items {
		f.ready = append(f.ready, readyItem{m: m, i: i, at: now})
	}
	if !f.holdArmed {
		f.holdArmed = true
		if f.holdTimer == nil {
			f.holdTimer = time.AfterFunc(f.hold, f.giveBackOld)
		} else {
			f.holdTimer.Reset(f.hold)
		}
	}
	f.signalLocked()
	f.mu.Unlock()
}

// takeLocked hands out up to limit items of ready.
func (f *fetched) takeLocked(limit int) []Delivery {
	n := min(limit, len(f.ready))
	if n == 0 {
		return nil
	}
	out := make([]Delivery, n)
	for k, r := range f.ready[:n] {
		r.m.mu.Lock()
		r.m.state[r.i] = itemHandedOut
		r.m.mu.Unlock()
		out[k] = Delivery{Data: r.m.items[r.i], Deliveries: r.m.handouts(r.i), m: r.m, i: r.i}
	}
	clear(f.ready[:n])
	f.ready = f.ready[n:]
	return out
}

// giveBackOld gives back the items that waited hold in ready.
func (f *fetched) giveBackOld() {
	f.mu.Lock()
	if f.closed { // Drain gives back what is left
		f.mu.Unlock()
		return
	}
	f.holdArmed = false
	cut := time.Now().Add(-f.hold)
	k := 0
	for k < len(f.ready) && !f.ready[k].at.After(cut) {
		k++
	}
	old := make([]readyItem, k)
	copy(old, f.ready[:k])
	clear(f.ready[:k])
	f.ready = f.ready[k:]
	if len(f.ready) > 0 {
		f.holdArmed = true
		f.holdTimer.Reset(time.Until(f.ready[0].at.Add(f.hold)))
	}
	if k > 0 {
		f.window = max(f.window/2, 1)
	}
	// Counted before Drain can see closed: Drain waits for it.
	f.s.settling.Add(1)
	defer f.s.settling.Done()
	f.mu.Unlock()
	f.giveBack(old)
}

func (f *fetched) giveBack(items []readyItem) {
	for _, r := range items {
		if err := r.m.settle(nil, r.i, itemReady, itemGivenBack); err != nil {
			f.s.log.Warn("could not give an item back; it is delivered again after its ack wait", zap.String("queue", f.s.cfg.Queue), zap.Error(err))
		}
	}
}

// Get hands out up to limit items, waiting up to wait (or until ctx ends)
// for the first one when none is there. It returns no item and no error
// when wait passes with none. It returns either items or an error, never
// both.
func (s *Store) Get(ctx context.Context, limit int, wait time.Duration) ([]Delivery, error) {
	f := &s.fetched
	f.mu.Lock()
	out := f.takeLocked(limit)
	n := max(f.msgsForLocked(limit), f.window)
	f.mu.Unlock()
	if len(out) > 0 {
		return out, nil
	}
	if err := f.fetchNow(ctx, n); err != nil {
		return nil, err
	}
	f.mu.Lock()
	out = f.takeLocked(limit)
	f.mu.Unlock()
	if len(out) > 0 || wait <= 0 {
		return out, nil
	}
	return f.await(ctx, limit, wait)
}

// fetchNow brings what JetStream has now, up to n messages, to ready.
func (f *fetched) fetchNow(ctx context.Context, n int) error {
	batch, err := f.s.cons.FetchNoWait(n)
	if err != nil {
		return fmt.Errorf("get from queue %s: %w", f.s.cfg.Queue, err)
	}
	got := 0
	for msg := range batch.Messages() {
		f.arrive(msg, false)
		got++
	}
	f.mu.Lock()
	if got == n && time.Since(f.lastFetch) < windowQuick {
		f.window = min(2*f.window, maxWindow)
	}
	f.lastFetch = time.Now()
	f.mu.Unlock()
	if err := batch.Error(); err != nil && got == 0 && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, context.DeadlineExceeded) {
		if ctx.Err() != nil {
			return fmt.Errorf("get from queue %s: %w", f.s.cfg.Queue, ctx.Err())
		}
		return fmt.Errorf("get from queue %s: %w", f.s.cfg.Queue, err)
	}
	return nil
}

// await waits for items in ready, asking for pulls while the demand needs
// them.
func (f *fetched) await(ctx context.Context, limit int, wait time.Duration) ([]Delivery, error) {
	began := time.Now()
	deadline := began.Add(wait)
	timer := time.NewTimer(wait)
	defer timer.Stop()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.demand += limit
	defer func() { f.demand -= limit }()
	for {
		if out := f.takeLocked(limit); len(out) > 0 {
			return out, nil
		}
		if f.closed {
			return nil, nil
		}
		if f.pullErr != nil && f.pullErrAt.After(began) {
			return nil, fmt.Errorf("get from queue %s: %w", f.s.cfg.Queue, f.pullErr)
		}
		if need := f.msgsForLocked(f.demand) - f.outstanding; need > 0 {
			f.outstanding += need
			f.pulls++
			go f.pull(need, min(max(time.Until(deadline), time.Millisecond), pullExpiry))
		}
		changed := f.changed
		f.mu.Unlock()
		select {
		case <-changed:
			f.mu.Lock()
		case <-ctx.Done():
			f.mu.Lock()
			return nil, ctx.Err()
		case <-timer.C:
			f.mu.Lock()
			return f.takeLocked(limit), nil
		}
	}
}

// pull is one pull request for n messages, waiting up to expiry, or
// until the store drains.
//
// The server's request expires a tenth earlier than the client stops
// listening (nats.go's FetchContext), so that a message the server hands
// out at its last moment still arrives. A drain stops listening at once:
// the server then hands the request nothing more, but for a message
// already on its way, which stays in flight until AckWait.
func (f *fetched) pull(n int, expiry time.Duration) {
	received := 0
	ctx, cancel := context.WithTimeout(f.pullsCtx, expiry)
	defer cancel()
	batch, err := f.s.cons.Fetch(n, jetstream.FetchContext(ctx))
	if err == nil {
		for msg := range batch.Messages() {
			received++
			f.arrive(msg, true)
		}
		err = batch.Error()
		if errors.Is(err, jetstream.ErrNoMessages) || errors.Is(err, nats.ErrTimeout) ||
			errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			err = nil
		}
	}
	f.mu.Lock()
	f.pulls--
	f.outstanding -= n - received
	if err != nil {
		f.pullErr, f.pullErrAt = err, time.Now()
	}
	f.signalLocked()
	f.mu.Unlock()
}

// Drain gives back the items fetched and not handed out, and those that
// arrive later, and waits (until ctx ends) for what is being settled.
// The store hands nothing out after it. Call it after the items handed
// out are settled. It ends the pulls out first, so that what it gives
// back does not come back to them.
func (s *Store) Drain(ctx context.Context) error {
	f := &s.fetched
	f.mu.Lock()
	f.closed = true
	if f.holdTimer != nil {
		f.holdTimer.Stop()
	}
	rest := f.ready
	f.ready = nil
	f.signalLocked()
	f.mu.Unlock()
	f.cancelPulls()
	for {
		f.mu.Lock()
		pulls, changed := f.pulls, f.changed
		f.mu.Unlock()
		if pulls == 0 {
			break
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("queue %s: pulls out: %w", s.cfg.Queue, ctx.Err())
		}
	}
	f.giveBack(rest)
	f.mu.Lock()
	late := f.late
	f.late = nil
	f.mu.Unlock()
	for _, msg := range late {
		if err := s.nak(msg); err != nil {
			s.log.Warn("could not give a message back; it is delivered again after its ack wait", zap.String("queue", s.cfg.Queue), zap.Error(err))
		}
	}
	done := make(chan struct{})
	go func() {
		s.settling.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("queue %s: items being stored again: %w", s.cfg.Queue, ctx.Err())
	}
}
