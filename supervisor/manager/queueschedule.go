package manager

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/gotyledon/gotyledon/config"
	"github.com/gotyledon/gotyledon/ipc"
)

// scheduledPutWait bounds how long a schedule's put waits for room in a
// full queue (or for the broker to answer): the item is then given up,
// logged at warn and counted as failed. The scheduler puts one item at a
// time, so a put that waits holds back the other schedules at most this
// long.
const scheduledPutWait = 5 * time.Second

// scheduleRecheck bounds each wait for the next time: the timer runs on
// the monotonic clock, which does not move while the machine is
// suspended nor when the wall clock is set, so the wall clock is looked
// at again at least this often, and a time passed meanwhile fires at most
// this late.
const scheduleRecheck = time.Minute

// queueScheduler is the actor that puts the items of the queues'
// schedules (queues.NAME.schedule): one goroutine, Run, waits for the
// earliest next time of every schedule of the running configuration and
// puts that schedule's item through put, the path of any producer's put,
// so that workers get it with the queue's at-least-once delivery, whatever
// its store. A time that passed while the manager was not running, or
// while an earlier put waited, is not made up: each next time is counted
// from the later of the time that fired and now.
//
// Run is its execute function, Interrupt its interrupt. SetQueues and
// addStats are safe from any goroutine.
type queueScheduler struct {
	log *zap.Logger
	// now and after are the clock: time.Now and time.After but in tests.
	now   func() time.Time
	after func(time.Duration) <-chan time.Time
	// put puts item into queue, waiting no longer than ctx allows.
	put func(ctx context.Context, queue string, item []byte) error
	// putWait bounds each put (scheduledPutWait).
	putWait time.Duration

	ctx    context.Context // ends at Interrupt: a put waiting stops
	cancel context.CancelFunc

	changed chan struct{} // a SetQueues to apply; 1-buffered

	mu sync.Mutex
	// pending is the newest SetQueues's queues, not yet applied (nil: none).
	pending []*config.Queue
	// entries are the schedules now, in the configuration's order, with
	// their next times; owned by Run, read by addStats under mu.
	entries []*scheduleEntry
	// counts are per queue, since the start; they outlive a reload that
	// removes the queue's schedules, as the broker's totals do.
	counts map[string]*scheduleCounts
}

// scheduleEntry is one schedule of one queue, and its next time.
type scheduleEntry struct {
	queue string
	sched config.QueueSchedule
	next  time.Time // zero: never (the rules refuse such a schedule)
}

type scheduleCounts struct{ put, failed uint64 }

// newQueueScheduler returns the scheduler of queues' schedules, which
// puts through put. Run applies them; until then addStats shows none.
func newQueueScheduler(queues []*config.Queue, put func(ctx context.Context, queue string, item []byte) error, log *zap.Logger) *queueScheduler {
	ctx, cancel := context.WithCancel(context.Background())
	s := &queueScheduler{
		log: log, now: time.Now, after: time.After, put: put, putWait: scheduledPutWait,
		ctx: ctx, cancel: cancel, changed: make(chan struct{}, 1),
		counts: map[string]*scheduleCounts{},
	}
	s.SetQueues(queues)
	return s
}

// SetQueues hands the scheduler the queues of a configuration just
// applied, without waiting: a schedule whose cron, time zone or item
// changed, or that is new, counts its next time from now; one unchanged
// keeps its next time; one removed is dropped. The newest call wins.
func (s *queueScheduler) SetQueues(queues []*config.Queue) {
	if queues == nil {
		queues = []*config.Queue{}
	}
	s.mu.Lock()
	s.pending = queues
	s.mu.Unlock()
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// Run puts each schedule's item at its times until Interrupt. It returns
// nil.
func (s *queueScheduler) Run() error {
	for {
		var timer <-chan time.Time
		if due, ok := s.earliest(); ok {
			timer = s.after(min(max(due.Sub(s.now()), 0), scheduleRecheck))
		}
		select {
		case <-s.ctx.Done():
			return nil
		case <-s.changed:
			s.apply()
		case <-timer:
			s.fireDue()
		}
	}
}

// Interrupt ends Run, and a put it waits on. Safe to call more than once.
func (s *queueScheduler) Interrupt(error) { s.cancel() }

// earliest is the soonest next time of all the schedules.
func (s *queueScheduler) earliest() (time.Time, bool) {
	var due time.Time
	for _, e := range s.entries {
		if !e.next.IsZero() && (due.IsZero() || e.next.Before(due)) {
			due = e.next
		}
	}
	return due, !due.IsZero()
}

// apply replaces the schedules with the pending ones.
func (s *queueScheduler) apply() {
	s.mu.Lock()
	queues := s.pending
	s.pending = nil
	s.mu.Unlock()
	if queues == nil {
		return
	}
	// An unchanged schedule is matched with one of the old ones that is
	// the same, in order, so that two alike each keep their own time.
	old := slices.Clone(s.entries)
	now := s.now()
	var entries []*scheduleEntry
	for _, q := range queues {
		for _, sc := range q.Schedules {
			i := slices.IndexFunc(old, func(e *scheduleEntry) bool {
				return e != nil && e.queue == q.Name && e.sched.Item == sc.Item && e.sched.Equal(&sc.Schedule)
			})
			if i >= 0 {
				kept := *old[i]
				kept.sched = sc // its position may have moved
				entries = append(entries, &kept)
				old[i] = nil
				continue
			}
			e := &scheduleEntry{queue: q.Name, sched: sc, next: sc.Next(now)}
			entries = append(entries, e)
			s.log.Info("queue schedule set", zap.String("queue", q.Name), zap.String("cron", sc.Cron),
				zap.String("time_zone", sc.TimeZone()), zap.Time("next", e.next))
		}
	}
	for _, e := range old {
		if e != nil {
			s.log.Info("queue schedule removed", zap.String("queue", e.queue), zap.String("cron", e.sched.Cron), zap.String("time_zone", e.sched.TimeZone()))
		}
	}
	s.mu.Lock()
	s.entries = entries
	for _, e := range entries {
		if s.counts[e.queue] == nil {
			s.counts[e.queue] = &scheduleCounts{}
		}
	}
	s.mu.Unlock()
}

// fireDue puts the item of every schedule whose time has come, soonest
// first, and counts each one's next time from the later of that time and
// now.
func (s *queueScheduler) fireDue() {
	for {
		now := s.now()
		var e *scheduleEntry
		for _, x := range s.entries {
			if !x.next.IsZero() && !x.next.After(now) && (e == nil || x.next.Before(e.next)) {
				e = x
			}
		}
		if e == nil || s.ctx.Err() != nil {
			return
		}
		at := e.next
		err := s.putOne(e, at)
		next := e.sched.Next(latest(at, s.now()))
		s.mu.Lock()
		c := s.counts[e.queue]
		if err != nil {
			c.failed++
		} else {
			c.put++
		}
		e.next = next
		s.mu.Unlock()
	}
}

// putOne puts e's item, due at at, and logs the outcome.
func (s *queueScheduler) putOne(e *scheduleEntry, at time.Time) error {
	ctx, cancel := context.WithTimeout(s.ctx, s.putWait)
	defer cancel()
	fields := []zap.Field{zap.String("queue", e.queue), zap.String("cron", e.sched.Cron), zap.String("time_zone", e.sched.TimeZone()),
		zap.String("at", at.Format(time.RFC3339))}
	err := s.put(ctx, e.queue, []byte(e.sched.Item))
	switch {
	case err == nil:
		s.log.Info("scheduled item put", fields...)
	case s.ctx.Err() != nil:
		// The manager is stopping: the item is not put, which is no news.
		s.log.Info("scheduled item not put: the manager is stopping", fields...)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, ipc.ErrTimeout):
		s.log.Warn("scheduled item skipped: the queue stayed full", append(fields, zap.Duration("waited", s.putWait), zap.Error(err))...)
	default:
		s.log.Warn("scheduled item not put", append(fields, zap.Error(err))...)
	}
	return err
}

func latest(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// addStats fills in the Scheduled figures of qs, the broker's queues, by
// name, and returns qs.
func (s *queueScheduler) addStats(qs []ipc.QueueStats) []ipc.QueueStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range qs {
		c := s.counts[qs[i].Name]
		if c == nil {
			continue
		}
		st := &ipc.ScheduledStats{Put: c.put, Failed: c.failed, Next: []ipc.ScheduleNext{}}
		for _, e := range s.entries {
			if e.queue == qs[i].Name {
				st.Next = append(st.Next, ipc.ScheduleNext{Cron: e.sched.Cron, TimeZone: e.sched.TimeZone(), At: e.next})
			}
		}
		qs[i].Scheduled = st
	}
	return qs
}

// brokerPut puts through a connection of the scheduler's own to the queue
// socket, made at the first put and again after the broker closed it: the
// path every producer's put takes, to a memory queue or one the broker
// forwards to its store. Only the scheduler's goroutine calls it; close
// ends the connection.
type brokerPut struct {
	socket string
	client *ipc.Client
}

func (b *brokerPut) put(ctx context.Context, queue string, item []byte) error {
	if b.client == nil {
		c, err := ipc.Dial(ctx, b.socket)
		if err != nil {
			return fmt.Errorf("connect to the queue socket: %w", err)
		}
		b.client = c
	}
	err := b.client.Put(ctx, queue, item)
	if errors.Is(err, ipc.ErrClosed) {
		b.close()
	}
	return err
}

func (b *brokerPut) close() {
	if b.client != nil {
		b.client.Close()
		b.client = nil
	}
}
