// Package jsstore keeps a queue's items in NATS JetStream, for queues whose
// items must outlive the processes that put and took them, and which
// processes on several hosts can share. (The manager does not use it yet.)
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
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

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
	return &Store{js: js, cfg: cfg, subject: Subject(cfg.Queue), stream: stream, cons: cons}, nil
}

// Item is an item to put, with the id that makes a retried Put of it
// store it once (an empty ID: no such protection).
type Item struct {
	ID   string
	Data []byte
}

// Put stores items in order and returns how many of the first were
// stored: all of them, or n < len(items) and an error (ErrFull when the
// stream is at Capacity). It publishes them all before it waits for the
// server's acknowledgements, so that a batch costs about one round trip,
// and waits for each at most 10 seconds, or until ctx ends.
// Put them again with the same ids to retry: those stored already are not
// stored twice. With a full stream and getters taking items meanwhile, an
// item after the first refused one may have been stored all the same; the
// retry does not store it again.
func (s *Store) Put(ctx context.Context, items []Item) (int, error) {
	futures := make([]jetstream.PubAckFuture, 0, len(items))
	var pubErr error
	for _, it := range items {
		f, err := s.js.PublishAsync(s.subject, it.Data, jetstream.WithMsgID(it.ID), jetstream.WithExpectStream(StreamName(s.cfg.Queue)))
		if err != nil {
			pubErr = err
			break
		}
		futures = append(futures, f)
	}
	n := 0
	var firstErr error
	for _, f := range futures {
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
		firstErr = pubErr
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

// Delivery is an item handed out by Get: in flight until Ack or Nak, or
// until AckWait passes.
type Delivery struct {
	// Data is the item.
	Data []byte
	// Deliveries counts the times the item was handed out, this one
	// included.
	Deliveries int
	msg        jetstream.Msg
}

// Ack removes the item for good. The server does not confirm it: an
// acknowledgement lost with a connection leaves the item to be delivered
// again after AckWait (at least once).
func (d Delivery) Ack() error { return d.msg.Ack() }

// AckSync removes the item for good and waits for the server to confirm
// it, or for ctx to end.
func (d Delivery) AckSync(ctx context.Context) error { return d.msg.DoubleAck(ctx) }

// Nak gives the item back, to be delivered again at once.
//
// It is a NAK with a delay of a nanosecond: a plain NAK only queues the
// item for redelivery in the server's memory, so a server that restarts
// right after (a local server stops with its bridge) would hold it until
// AckWait; a delayed NAK records the item as due in the consumer's state.
func (d Delivery) Nak() error { return d.msg.NakWithDelay(time.Nanosecond) }

// nakNow is the NAK Nak sends, as a request's payload (Queues.ConfirmNaks).
const nakNow = `-NAK {"delay": 1}`

// Get hands out up to limit items, waiting up to wait (or until ctx ends)
// for the first one when none is there. It returns no item and no error
// when wait passes with none. It returns either items or an error, never
// both: items it holds are handed out, and an error after them is left to
// the next call.
func (s *Store) Get(ctx context.Context, limit int, wait time.Duration) ([]Delivery, error) {
	out, err := s.fetch(ctx, limit, 0)
	if len(out) > 0 || err != nil || wait <= 0 {
		return out, err
	}
	// One item waited for, then what else is there: a pull request for
	// limit items would wait the whole time for all of them.
	out, err = s.fetch(ctx, 1, wait)
	if len(out) == 0 || err != nil || limit == 1 {
		return out, err
	}
	more, _ := s.fetch(ctx, limit-1, 0)
	return append(out, more...), nil
}

// fetch is one pull request: for what is there when wait is 0.
func (s *Store) fetch(ctx context.Context, limit int, wait time.Duration) ([]Delivery, error) {
	var batch jetstream.MessageBatch
	var err error
	if wait <= 0 {
		batch, err = s.cons.FetchNoWait(limit)
	} else {
		// On ctx's end the wait ends here; the server's pull request
		// expires on its own.
		waitCtx, cancel := context.WithTimeout(ctx, wait)
		defer cancel()
		batch, err = s.cons.Fetch(limit, jetstream.FetchContext(waitCtx))
	}
	if err != nil {
		return nil, fmt.Errorf("get from queue %s: %w", s.cfg.Queue, err)
	}
	var out []Delivery
	for msg := range batch.Messages() {
		d := Delivery{Data: msg.Data(), Deliveries: 1, msg: msg}
		if md, err := msg.Metadata(); err == nil {
			d.Deliveries = int(md.NumDelivered)
		}
		out = append(out, d)
	}
	if err := batch.Error(); err != nil && len(out) == 0 && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, context.DeadlineExceeded) {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("get from queue %s: %w", s.cfg.Queue, ctx.Err())
		}
		return nil, fmt.Errorf("get from queue %s: %w", s.cfg.Queue, err)
	}
	return out, nil
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
