// Package jsstore keeps a queue's items in NATS JetStream, for queues whose
// items must outlive the processes that put and took them, and which
// processes on several hosts can share: what the JetStream bridge
// (RunBridge, cmd/gotyledon-jetstream) serves the manager's broker.
//
// One queue is one stream, GOTYLEDON_<queue>, on one subject,
// gotyledon.queue.<queue>, with work-queue retention, and one durable
// pull consumer, "gotyledon", shared by every process that gets from the
// queue. Who owns an item (the rules of PROTOCOL.md's memory store, where
// JetStream keeps the item rather than the broker):
//
//  1. Put returned n: the first n items are in the stream. With a stream of
//     one replica the server has written each to its file before it
//     acknowledged it (a crash of the server's process loses none; power
//     loss may lose what it has not synced yet, per its sync interval, or
//     none with `sync: always`); with replicas, a majority holds each.
//  2. Get hands items out; each is in flight, owned by whoever got it,
//     until it is acknowledged, refused, or AckWait passes.
//  3. Ack removes the item for good.
//  4. Nak makes it deliverable again at once, its deliveries one higher.
//  5. An item neither acknowledged nor refused (its getter died, or took
//     longer than AckWait) is delivered again once AckWait has passed
//     since it was handed out: nothing in flight is lost with a process,
//     it comes back later than with the memory store. After a crash of
//     the server itself, the consumer's record of deliveries and
//     acknowledgements may be behind: an item in flight then may come back
//     counted as never delivered, and one acknowledged just before may
//     come back (at least once).
//  6. Capacity bounds the items in the stream, waiting and in flight: a
//     Put on a full stream stores what fits and fails with ErrFull for the
//     rest. JetStream never discards to make room.
//
// The rules hold for JetStream messages. An item is one message, but with
// Config.Pack above 1, where the items of one Queues.Put share messages
// (pack.go): capacity then counts messages, and fetch.go says how the
// items of one message are handed out and settled.
//
// A Put retried with the same ids (after a lost reply) stores nothing
// twice within the stream's duplicate window (two minutes). Items are
// delivered in the order they were stored, but for redeliveries (and,
// on a cluster, a Put that spans a change of the stream's leader may store
// its items out of order).
package jsstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/gotyledon/gotyledon/ipc"
)

// Defaults.
const (
	// DefaultAckWait is how long an item may stay in flight before it is
	// delivered again.
	DefaultAckWait = 30 * time.Second
	// publishTimeout bounds the wait for the server's acknowledgement of
	// a stored item: the server does not answer every failure (a write
	// error, a proposal lost with a cluster's leader), and nats.go, left
	// to itself, would keep such a publish pending for ever.
	publishTimeout = 10 * time.Second
	// consumerName is the durable consumer every getter shares.
	consumerName = "gotyledon"
	// maxWaitingPulls bounds the pull requests waiting on the consumer.
	maxWaitingPulls = 16384
	// streamFullCode is JetStream's error code for a store that refused a
	// message (JSStreamStoreFailedF): with DiscardNew, a stream at its
	// limits says "maximum messages exceeded" or "maximum bytes exceeded".
	streamFullCode = 10077
)

// ErrFull is Put's error when the stream holds Capacity items already:
// ipc.ErrFull, which a PUT on a full queue answers too.
var ErrFull = ipc.ErrFull

// Config is one queue's store.
type Config struct {
	// Queue is the queue's name (config's queue names: letters, digits,
	// '_' and '-', which JetStream's names accept too).
	Queue string
	// Capacity is the most items the stream holds, waiting and in
	// flight; 0 means no bound.
	Capacity int
	// MaxItem is the largest item in bytes; 0 means the server's limit.
	MaxItem int
	// AckWait is how long an item may be in flight before it is delivered
	// again; 0 means DefaultAckWait.
	AckWait time.Duration
	// Replicas is how many servers of a cluster keep the stream; 0 means
	// 1.
	Replicas int
	// Pack is how many items of one Queues.Put may share a JetStream
	// message; 0 means 1. Above 1, Capacity counts messages, not items.
	Pack int
	// Logger receives what the store retries or gives up; nil: no logs.
	Logger *zap.Logger
}

// StreamName is the stream that holds queue's items.
func StreamName(queue string) string { return "GOTYLEDON_" + queue }

// Subject is the subject queue's items are published on.
func Subject(queue string) string { return "gotyledon.queue." + queue }

// Store is one queue's items in JetStream. Its methods are safe for
// concurrent use.
type Store struct {
	js      jetstream.JetStream
	cfg     Config
	subject string
	stream  jetstream.Stream
	cons    jetstream.Consumer
	log     *zap.Logger
	// fetched is what Get has taken from JetStream (fetch.go).
	fetched fetched
	// lastNak is the reply subject of the last message NAKed: confirming
	// a NAK of it confirms every NAK before it (Drain).
	lastNak atomic.Pointer[string]
	// settling counts messages being stored again (fetch.go).
	settling sync.WaitGroup
}

// Open makes (or updates, to cfg) the queue's stream and consumer on nc's
// server or cluster and returns its store. Opening the same queue from
// several processes shares it. The store uses nc; closing nc ends it.
func Open(ctx context.Context, nc *nats.Conn, cfg Config) (*Store, error) {
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(publishTimeout))
	if err != nil {
		return nil, fmt.Errorf("open queue %s in JetStream: %w", cfg.Queue, err)
	}
	if cfg.AckWait <= 0 {
		cfg.AckWait = DefaultAckWait
	}
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	if cfg.Pack <= 0 {
		cfg.Pack = 1
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	sc := jetstream.StreamConfig{
		Name:      StreamName(cfg.Queue),
		Subjects:  []string{Subject(cfg.Queue)},
		Retention: jetstream.WorkQueuePolicy,
		Storage:   jetstream.FileStorage,
		Discard:   jetstream.DiscardNew,
		MaxMsgs:   -1,
		Replicas:  cfg.Replicas,
	}
	if cfg.Capacity > 0 {
		sc.MaxMsgs = int64(cfg.Capacity)
	}
	if cfg.MaxItem > 0 {
		sc.MaxMsgSize = int32(cfg.MaxItem)
	}
	stream, err := js.CreateOrUpdateStream(ctx, sc)
	if err != nil {
		return nil, fmt.Errorf("open queue %s in JetStream: stream %s: %w", cfg.Queue, sc.Name, err)
	}
	cons, err := stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       consumerName,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       cfg.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: -1,
		// Every waiting get is a pull request on this one consumer, from
		// every process that shares the queue (the default allows 512).
		MaxWaiting: maxWaitingPulls,
	})
	if err != nil {
		return nil, fmt.Errorf("open queue %s in JetStream: consumer %s: %w", cfg.Queue, consumerName, err)
	}
	st := &Store{js: js, cfg: cfg, subject: Subject(cfg.Queue), stream: stream, cons: cons, log: cfg.Logger}
	st.fetched.init(st)
	return st, nil
}

// Put stores batches in order and returns how many of the first were
// stored: all of them, or n < len(batches) and an error (ErrFull when the
// stream is at Capacity). It publishes them all before it waits for the
// server's acknowledgements, so that a put costs about one round trip,
// and waits for each at most 10 seconds, or until ctx ends.
// Put them again with the same ids to retry: those stored already are not
// stored twice. With a full stream and getters taking items meanwhile, a
// batch after the first refused one may have been stored all the same;
// the retry does not store it again.
func (s *Store) Put(ctx context.Context, batches []Batch) (int, error) {
	return s.acks(ctx, s.publish(batches))
}

// published is what publish sent: a future per batch, and the error that
// stopped it before the end.
type published struct {
	futures []jetstream.PubAckFuture
	err     error
}

// publish sends batches in order, without waiting for the server.
func (s *Store) publish(batches []Batch) published {
	p := published{futures: make([]jetstream.PubAckFuture, 0, len(batches))}
	for _, b := range batches {
		opts := []jetstream.PublishOpt{jetstream.WithExpectStream(StreamName(s.cfg.Queue))}
		if b.ID != "" {
			opts = append(opts, jetstream.WithMsgID(b.ID))
		}
		f, err := s.js.PublishMsgAsync(b.message(s.subject), opts...)
		if err != nil {
			p.err = err
			break
		}
		p.futures = append(p.futures, f)
	}
	return p
}

// acks waits for the server's answers to what publish sent, and returns
// as Put does.
func (s *Store) acks(ctx context.Context, p published) (int, error) {
	n := 0
	var firstErr error
	for _, f := range p.futures {
		select {
		case <-f.Ok():
			if firstErr == nil {
				n++
			}
		case err := <-f.Err():
			if firstErr == nil {
				firstErr = err
			}
		case <-ctx.Done():
			if firstErr == nil {
				firstErr = ctx.Err()
			}
		}
	}
	if firstErr == nil {
		firstErr = p.err
	}
	if firstErr != nil {
		if isFull(firstErr) {
			return n, fmt.Errorf("put to queue %s: %w", s.cfg.Queue, ErrFull)
		}
		return n, fmt.Errorf("put to queue %s: %w", s.cfg.Queue, firstErr)
	}
	return n, nil
}

func isFull(err error) bool {
	var api *jetstream.APIError
	return errors.As(err, &api) && api.ErrorCode == streamFullCode &&
		strings.Contains(api.Description, "maximum") && strings.Contains(api.Description, "exceeded")
}

// Stats is what the store says of its queue: of the queue as a whole,
// whichever processes put and get.
type Stats struct {
	// Waiting: items never delivered yet. InFlight: delivered and not
	// acknowledged, including those refused or past AckWait that wait to
	// be delivered again. Redelivered: of those, items delivered more
	// than once. Getters: gets waiting for an item.
	Waiting, InFlight, Redelivered, Getters int
	// Since the stream was made: items stored, deliveries (a redelivery
	// counts again), and items removed for good (acknowledged).
	Put, Delivered, Acked uint64
}

// Stats asks the server for the queue's counts.
func (s *Store) Stats(ctx context.Context) (Stats, error) {
	info, err := s.cons.Info(ctx)
	if err != nil {
		return Stats{}, fmt.Errorf("stats of queue %s: %w", s.cfg.Queue, err)
	}
	sinfo, err := s.stream.Info(ctx)
	if err != nil {
		return Stats{}, fmt.Errorf("stats of queue %s: %w", s.cfg.Queue, err)
	}
	st := Stats{Waiting: int(info.NumPending), InFlight: info.NumAckPending, Redelivered: info.NumRedelivered,
		Getters: info.NumWaiting, Put: sinfo.State.LastSeq, Delivered: info.Delivered.Consumer}
	// A work queue's stream removes an item once it is acknowledged.
	if sinfo.State.LastSeq >= sinfo.State.Msgs {
		st.Acked = sinfo.State.LastSeq - sinfo.State.Msgs
	}
	return st, nil
}
