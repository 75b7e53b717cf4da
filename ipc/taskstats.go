package ipc

import (
	"slices"
	"time"
)

// TaskStats count tasks (PROTOCOL.md, "Tasks"), of a queue or of a
// service's workers, since the broker started: what futurist's
// executor.statistics and Celery's inspect stats tell.
type TaskStats struct {
	// Submitted: tasks accepted by SUBMITs (a service's: submitted by its
	// workers). Running: handed out and not yet answered (a service's:
	// taken by its workers). Done and Failed: answered so (a service's:
	// by its workers). Cancelled: withdrawn before a worker took them, or
	// ended after their submitter's connection closed (a service's: of its
	// submissions). Redelivered: handed out again after a NACK or a closed
	// connection. A queue's Submitted is its Done, Failed, Cancelled and
	// Running and the tasks waiting in it.
	Submitted, Done, Failed, Cancelled, Redelivered uint64
	Running                                         int
	// Runtime is the time from hand-out to answer.
	Runtime RuntimeStats
}

// RuntimeStats summarise task runtimes: Count and Sum of all answered
// since the broker started; the percentiles of the latest
// runtimeWindow of them (0 before the first).
type RuntimeStats struct {
	Count         uint64
	Sum           time.Duration
	P50, P90, P99 time.Duration
}

// runtimeWindow is how many of the latest runtimes the percentiles are
// taken over.
const runtimeWindow = 1024

// taskCounters are a TaskStats as it is kept: guarded by the mutex of its
// owner (a queue's q.mu; the broker's svcMu for a service's).
type taskCounters struct {
	TaskStats
	recent [runtimeWindow]time.Duration // a ring of the latest runtimes
	next   int                          // where the next goes in recent
}

func (t *taskCounters) ran(d time.Duration) {
	t.Runtime.Count++
	t.Runtime.Sum += d
	t.recent[t.next] = d
	t.next = (t.next + 1) % runtimeWindow
}

// snapshot is t now, with its percentiles.
func (t *taskCounters) snapshot() TaskStats {
	s := t.TaskStats
	n := int(min(t.Runtime.Count, runtimeWindow))
	if n == 0 {
		return s
	}
	rs := slices.Clone(t.recent[:n])
	slices.Sort(rs)
	at := func(p float64) time.Duration { return rs[min(n-1, int(p*float64(n)))] }
	s.Runtime.P50, s.Runtime.P90, s.Runtime.P99 = at(0.5), at(0.9), at(0.99)
	return s
}

// serviceTasks applies f to the counters of service (none for ""). Called
// under a queue's mu: svcMu comes after it.
func (b *Broker) serviceTasks(service string, f func(*taskCounters)) {
	if service == "" {
		return
	}
	b.svcMu.Lock()
	defer b.svcMu.Unlock()
	t := b.svcTasks[service]
	if t == nil {
		if b.svcTasks == nil {
			b.svcTasks = make(map[string]*taskCounters)
		}
		t = &taskCounters{}
		b.svcTasks[service] = t
	}
	f(t)
}

// ServiceTaskStats are the task figures of each service whose workers
// have submitted or taken tasks, by service (BrokerOptions.PeerService
// names a connection's service). Safe to call at any time.
func (b *Broker) ServiceTaskStats() map[string]TaskStats {
	b.svcMu.Lock()
	defer b.svcMu.Unlock()
	out := make(map[string]TaskStats, len(b.svcTasks))
	for name, t := range b.svcTasks {
		out[name] = t.snapshot()
	}
	return out
}
