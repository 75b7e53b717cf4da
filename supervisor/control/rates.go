package control

import (
	"sync"
	"time"

	"github.com/gotyledon/gotyledon/ipc"
)

// queueRates keeps recent samples of the queues' totals, so that status
// can say how fast items go in and out, now and over the last minute,
// without the client waiting for a second sample. Safe for concurrent use.
type queueRates struct {
	mu      sync.Mutex
	samples []rateSample // oldest first, at most historySamples
}

type rateSample struct {
	at     time.Time
	totals map[string][2]uint64 // queue → put, acked
}

const (
	// rateEvery is how often the queues are sampled. The rates of the
	// status document cover the newest rateSamples samples (about 10 s);
	// its histories a rate per interval over the newest historySamples
	// (a minute).
	rateEvery      = 2 * time.Second
	rateSamples    = 5
	historySamples = 31
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
	if len(q.samples) > historySamples {
		q.samples = q.samples[len(q.samples)-historySamples:]
	}
}

// perSecond returns each queue's put and ack rates between the oldest of
// the newest rateSamples samples and qs, taken at now (none for a queue
// not in that sample, or when it is less than a second old), and the
// rates between each two samples of the last minute, oldest first.
func (q *queueRates) perSecond(qs []ipc.QueueStats, now time.Time) map[string]QueueRate {
	out := make(map[string]QueueRate, len(qs))
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.samples) == 0 {
		return out
	}
	oldest := q.samples[max(0, len(q.samples)-rateSamples)]
	dt := now.Sub(oldest.at).Seconds()
	for _, st := range qs {
		var r QueueRate
		if t, ok := oldest.totals[st.Name]; ok && dt >= 1 && st.Put >= t[0] && st.Acked >= t[1] {
			r.Put, r.Acked = float64(st.Put-t[0])/dt, float64(st.Acked-t[1])/dt
		}
		r.PutHistory, r.AckedHistory = q.history(st.Name)
		out[st.Name] = r
	}
	return out
}

// history returns name's rates between each two consecutive samples
// since the first that has it, oldest first: 0 for an interval whose
// rate is unknown (the queue missing from a sample, its counters gone
// back as a queue removed and added again), so that the history keeps
// its time. The caller holds mu.
func (q *queueRates) history(name string) (put, acked []float64) {
	for i := 1; i < len(q.samples); i++ {
		a, okA := q.samples[i-1].totals[name]
		b, okB := q.samples[i].totals[name]
		if put == nil && !okA {
			continue // before the queue's first sample
		}
		dt := q.samples[i].at.Sub(q.samples[i-1].at).Seconds()
		if !okA || !okB || dt <= 0 || b[0] < a[0] || b[1] < a[1] {
			put, acked = append(put, 0), append(acked, 0)
			continue
		}
		put = append(put, float64(b[0]-a[0])/dt)
		acked = append(acked, float64(b[1]-a[1])/dt)
	}
	return put, acked
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
