package jsstore

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
	"go.uber.org/zap"

	"github.com/gotyledon/gotyledon/ipc"
)

// How long Queues waits between tries while a stream is full or the
// server cannot be reached: from the first to the last, doubling.
const (
	firstRetry = time.Millisecond
	lastRetry  = 100 * time.Millisecond
	// maxPull bounds one Store.Get's wait in a Get (retry.slice): between
	// two, the Get tries again at once what JetStream has (its pulls
	// last pullExpiry at most, renewed while it waits).
	maxPull = 5 * time.Second
	// ackGrace is how much longer than its wait a put waits for
	// JetStream's answers to what it sent: a server that does not answer
	// (rather than refusing) would hold it for publishTimeout.
	ackGrace = time.Second
	// headerRoom is what a stored item's headers (its id, the stream it
	// must go to) may add to it, against the servers' max_payload.
	headerRoom = 512
)

// Queues is the ipc.Store of the queues it was given: what an
// ipc.StoreServer serves from JetStream. Its methods are safe for
// concurrent use.
//
// A Put waits for room in a full stream, and while the server cannot be
// reached (a lost connection, a cluster electing a stream leader), trying
// again until its wait ends: with the same per-item ids, so that an item
// stored by a try whose answer was lost is not stored twice. A Get waits
// the same way.
type Queues struct {
	stores map[string]*Store
	log    *zap.Logger
	// Message ids are prefix (unique to this Queues) and a count.
	prefix string
	nextID atomic.Uint64
}

// NewQueues returns the store of the given queues. log receives failures
// it retries; nil: no logs.
func NewQueues(log *zap.Logger, stores ...*Store) *Queues {
	if log == nil {
		log = zap.NewNop()
	}
	q := &Queues{stores: make(map[string]*Store, len(stores)), log: log, prefix: nuid.Next() + "."}
	for _, s := range stores {
		q.stores[s.cfg.Queue] = s
	}
	return q
}

var _ ipc.Store = (*Queues)(nil)

func (q *Queues) store(queue string) (*Store, error) {
	s, ok := q.stores[queue]
	if !ok {
		return nil, fmt.Errorf("queue %s: %w", queue, ipc.ErrNoSuchQueue)
	}
	return s, nil
}

// Put stores items, as ipc.Store says: it returns an error wrapping
// ipc.ErrFull when the stream stayed full for wait, ctx's error once ctx
// ends, and the last failure when the server could not be reached for
// wait.
func (q *Queues) Put(ctx context.Context, queue string, items [][]byte, wait time.Duration, waiting func()) (int, error) {
	return q.StartPut(ctx, queue, items, wait, waiting)()
}

var _ ipc.PipelinedStore = (*Queues)(nil)

// StartPut is Put in two steps, as ipc.PipelinedStore says: it publishes
// the items, and the function it returns waits for JetStream's answers,
// and tries again what was not stored, as Put does.
func (q *Queues) StartPut(ctx context.Context, queue string, items [][]byte, wait time.Duration, waiting func()) func() (int, error) {
	s, err := q.store(queue)
	if err != nil {
		return func() (int, error) { return 0, err }
	}
	// An item the servers would refuse whatever the wait (their
	// max_payload) is TOO_LARGE at once, and nothing of the put is stored.
	maxBytes := math.MaxInt
	if limit := s.js.Conn().MaxPayload(); limit > 0 {
		for i, data := range items {
			if int64(len(data))+headerRoom > limit {
				err := fmt.Errorf("put to queue %s: item %d has %d bytes, more than NATS's max_payload of %d takes with its headers: %w",
					queue, i, len(data), limit, ipc.ErrTooLarge)
				return func() (int, error) { return 0, err }
			}
		}
		maxBytes = int(limit) - headerRoom
	}
	if s.cfg.MaxItem > 0 {
		// The stream refuses a message over MaxItem: a pack stays under.
		maxBytes = min(maxBytes, s.cfg.MaxItem)
	}
	// Made once: a retry stores the same batches under the same ids.
	batch := batches(items, s.cfg.Pack, maxBytes, func() string {
		return q.prefix + strconv.FormatUint(q.nextID.Add(1), 36)
	})
	r := newRetry(wait)
	first := s.publish(batch)
	return func() (int, error) {
		doneBatches, done := 0, 0
		p := first
		warned := false
		ackCtx := ctx
		if wait >= 0 {
			var cancel context.CancelFunc
			ackCtx, cancel = context.WithDeadline(ctx, r.deadline.Add(ackGrace))
			defer cancel()
		}
		for {
			n, err := s.acks(ackCtx, p)
			for _, b := range batch[doneBatches : doneBatches+n] {
				done += len(b.Items)
			}
			doneBatches += n
			switch {
			case err == nil:
				return done, nil
			case ctx.Err() != nil:
				return done, ctx.Err()
			}
			if errors.Is(err, nats.ErrMaxPayload) {
				return done, fmt.Errorf("%w: %w", err, ipc.ErrTooLarge)
			}
			full := errors.Is(err, ErrFull)
			if full && waiting != nil && wait != 0 {
				waiting()
				waiting = nil
			}
			if !full && !warned {
				warned = true // once a put: tries come every 100 ms
				q.log.Warn("JetStream did not store a put; trying again until its timeout", zap.String("queue", queue), zap.Int("stored", done), zap.Int("items", len(items)), zap.Error(err))
			}
			if !r.again(ctx) {
				if ctx.Err() != nil {
					return done, ctx.Err()
				}
				if full {
					return done, fmt.Errorf("put to queue %s: %w", queue, ipc.ErrFull)
				}
				return done, err
			}
			p = s.publish(batch[doneBatches:])
		}
	}
}

// Get hands items out, as ipc.Store says. While the server cannot be
// reached it tries again until wait ends, then returns none and nil.
func (q *Queues) Get(ctx context.Context, queue string, limit int, wait time.Duration, waiting func()) ([]ipc.StoredItem, error) {
	s, err := q.store(queue)
	if err != nil {
		return nil, err
	}
	r := newRetry(wait)
	warned := false
	for try := 0; ; try++ {
		slice := r.slice()
		if try == 0 {
			slice = 0 // what is there, before it says it waits
		} else if try == 1 && waiting != nil {
			waiting()
		}
		began := time.Now()
		ds, err := s.Get(ctx, limit, slice)
		if len(ds) > 0 {
			out := make([]ipc.StoredItem, len(ds))
			for i := range ds {
				out[i] = storedItem{ds[i]}
			}
			return out, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err == nil && time.Since(began) >= slice/2 {
			// The pull request waited its time: ask again at once.
			if r.passed() {
				return nil, nil
			}
			r.pause = firstRetry
			continue
		}
		if err != nil && !warned {
			warned = true // once a get: tries come every 100 ms
			q.log.Warn("JetStream did not answer a get; trying again until its timeout", zap.String("queue", queue), zap.Error(err))
		}
		if !r.again(ctx) {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, nil
		}
	}
}

// retry paces the tries of one call until its wait ends (< 0: never).
type retry struct {
	deadline time.Time // zero: no limit
	pause    time.Duration
}

func newRetry(wait time.Duration) *retry {
	r := &retry{pause: firstRetry}
	if wait >= 0 {
		r.deadline = time.Now().Add(wait)
	}
	return r
}

// slice is how long the next Store.Get may wait: until the deadline, and
// at most maxPull.
func (r *retry) slice() time.Duration {
	if r.deadline.IsZero() {
		return maxPull
	}
	return min(max(time.Until(r.deadline), 0), maxPull)
}

// passed reports whether the deadline has passed.
func (r *retry) passed() bool { return !r.deadline.IsZero() && !time.Now().Before(r.deadline) }

// again waits before the next try and reports whether there is one: false
// once the deadline has passed or ctx ended.
func (r *retry) again(ctx context.Context) bool {
	pause := r.pause
	if !r.deadline.IsZero() {
		left := time.Until(r.deadline)
		if left <= 0 {
			return false
		}
		pause = min(pause, left)
	}
	r.pause = min(2*r.pause, lastRetry)
	t := time.NewTimer(pause)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Drain returns once every item fetched and not handed out is given
// back, every item given back is stored again or NAKed, and the servers
// have taken every NAK sent so far (or ctx ended). Call it once the items
// handed out are settled (ipc.StoreServer's Close), before the connection
// closes: acknowledgements are not confirmed, and a server that shuts down
// right after (a local one, with its bridge) drops those it has not taken
// yet, and the items would wait for AckWait. A consumer takes its
// acknowledgements in order, so one confirmed NAK, of the last message
// NAKed, confirms them all.
func (q *Queues) Drain(ctx context.Context) error {
	var errs []error
	for name, s := range q.stores {
		if err := s.Drain(ctx); err != nil {
			errs = append(errs, err)
		}
		reply := s.lastNak.Load()
		if reply == nil {
			continue
		}
		if _, err := s.js.Conn().RequestWithContext(ctx, *reply, []byte(nakNow)); err != nil {
			errs = append(errs, fmt.Errorf("queue %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// storedItem is a Delivery as ipc.StoredItem.
type storedItem struct{ d Delivery }

func (s storedItem) Body() []byte       { return s.d.Data }
func (s storedItem) Deliveries() uint32 { return uint32(s.d.Deliveries) }
func (s storedItem) Ack() error         { return s.d.Ack() }
func (s storedItem) Nack() error        { return s.d.Nak() }
