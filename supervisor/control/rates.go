package control

import (
	"sync"
	"time"

	"github.com/gotyledon/gotyledon/ipc"
)

// queueRates keeps recent samples of the queues' totals, so that status
// can say how fast items go in and out without the client waiting for a
// second sample. Safe for concurrent use.
type queueRates struct {
	mu      sync.Mutex
	samples []rateSample // oldest first, at most rateSamples
}

type rateSample struct {
	at     time.Time
	totals map[string][2]uint64 // queue → put, acked
}

const (
	// rateEvery is how often the queues are sampled; rates cover the
	// newest rateSamples samples (about 10 s).
	rateEvery   = 2 * time.Second
	rateSamples = 5
)

// sample records the totals of qs at now.
func (q *queueRates) sample(qs []ipc.QueueStats, now time.Time) {
	s := rateSample{at: now, totals: make(map[string][2]uint64, len(qs))}
	for _, st := range qs {
		if st.HasFigures() {
			s.totals[st.Name] = [2]uint64{st.Put, st.Acked}
		}
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	q.samples = append(q.samples, s)
	if len(q.samples) > rateSamples {
		q.samples = q.samples[len(q.samples)-rateSamples:]
	}
}

// perSecond returns each queue's put and ack rates between the oldest
// sample and qs, taken at now; none for a queue not in that sample or when
// the sample is less than a second old.
func (q *queueRates) perSecond(qs []ipc.QueueStats, now time.Time) map[string]QueueRate {
	out := make(map[string]QueueRate, len(qs))
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.samples) == 0 {
		return out
	}
	oldest := q.samples[0]
	dt := now.Sub(oldest.at).Seconds()
	if dt < 1 {
		return out
	}
	for _, st := range qs {
		if t, ok := oldest.totals[st.Name]; ok && st.Put >= t[0] && st.Acked >= t[1] {
			out[st.Name] = QueueRate{Put: float64(st.Put-t[0]) / dt, Acked: float64(st.Acked-t[1]) / dt}
		}
	}
	return out
}

// runSampler samples queues every rateEvery until quit is closed.
func (q *queueRates) runSampler(queues func() []ipc.QueueStats, quit <-chan struct{}) {
	if queues == nil {
		return
	}
	q.sample(queues(), time.Now())
	t := time.NewTicker(rateEvery)
	defer t.Stop()
	for {
		select {
		case <-quit:
			return
		case now := <-t.C:
			q.sample(queues(), now)
		}
	}
}
