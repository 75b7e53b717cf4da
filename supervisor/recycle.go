package supervisor

import (
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/gotyledon/gotyledon/config"
)

// Recycling (a service's recycle:), as the manager applies it:
//
//   - Every recycleInterval, the recycler (a goroutine beside the loop,
//     which reads what it measures off the loop) looks at each ready
//     worker of a service with limits: the items its process group has
//     acknowledged (the broker counts them), its age, its memory (its
//     cgroup's memory.current, else its resident set). A worker past a
//     limit, lowered by its own share of the service's jitter, is due.
//   - The loop recycles one worker of a service at a time, and none while
//     a rolling change of the service is under way: the due worker is
//     drained (the broker hands its process group no new item and takes
//     back those it had not handed to the worker's code; state
//     "draining"), until it holds no item in flight or its stop_timeout
//     passes; then it gets its stop signal, as in any stop, and its slot
//     starts a new process at once. The next due worker of the service
//     waits until that process is ready.
//   - Each recycle is logged with its reason and counted by reason.
//   - A shutdown ends recycling: a draining worker is stopped as any.

// QueueDrainer is the queue broker as recycling uses it: ipc.Broker is
// one. Workers are known by their process group id (a worker's pid: each
// leads its own group).
type QueueDrainer interface {
	// Acked returns how many items connections of process group pgid have
	// acknowledged.
	Acked(pgid int) uint64
	// Drain stops handing items to pgid's connections and returns a
	// channel closed once they hold none in flight. It does not block.
	Drain(pgid int) <-chan struct{}
	// Forget drops what is known of pgid, whose process has exited.
	Forget(pgid int)
}

// RecycleReason is the limit a recycled worker crossed.
type RecycleReason string

const (
	RecycleMaxJobs   RecycleReason = "max_jobs"
	RecycleMaxAge    RecycleReason = "max_age"
	RecycleMemoryMax RecycleReason = "memory_max"
)

// RecycleReasons lists every RecycleReason, for those who report all.
var RecycleReasons = []RecycleReason{RecycleMaxJobs, RecycleMaxAge, RecycleMemoryMax}

// recycleInterval is how often the recycler looks at the workers.
const recycleInterval = time.Second

// recyclePhase is where a slot is in its recycling.
type recyclePhase int

const (
	recycleNone recyclePhase = iota
	// recycleDraining: the broker takes no more items to it; the slot
	// waits for its items in flight to be done.
	recycleDraining
	// recycleStopping: drained, and sent its stop signal.
	recycleStopping
	// recycleReplacing: its new process runs, not ready yet.
	recycleReplacing
)

// recycleCandidate is a ready worker of a service with limits, as the
// loop saw it, for the recycler to measure.
type recycleCandidate struct {
	token     uint64
	pid       int
	startedAt time.Time
	cgroup    string
	limits    config.Recycle
	// jitter is the worker's share, 0 to 1, of its service's jitter.
	jitter float64
}

// recycleCandidatesRequested: answer with the workers to measure.
type recycleCandidatesRequested struct{ reply chan<- []recycleCandidate } // buffered

// recycleDue: the recycler found token's process past a limit.
type recycleDue struct {
	token  uint64
	reason RecycleReason
	detail string
}

// drainDone: token's drain is over: it holds no item in flight, or its
// stop_timeout passed (timedOut).
type drainDone struct {
	token    uint64
	timedOut bool
}

func (recycleCandidatesRequested) isEvent() {}
func (recycleDue) isEvent()                 {}
func (drainDone) isEvent()                  {}

// recycleCandidates lists the ready workers of services with limits.
func (s *Supervisor) recycleCandidates() []recycleCandidate {
	var out []recycleCandidate
	if s.stopping {
		return nil
	}
	for _, w := range s.workers {
		svc := s.cfg.Service(w.key.service)
		if svc == nil || !svc.Recycle.Enabled() || w.state != stateRunning || !w.ready || w.recycling != recycleNone || w.recycleReason != "" {
			continue
		}
		out = append(out, recycleCandidate{token: w.token, pid: w.pid, startedAt: w.startedAt, cgroup: w.cgroup, limits: svc.Recycle, jitter: w.jitterShare})
	}
	return out
}

// runRecycler measures the candidates every recycleInterval until quit is
// closed or the loop ends.
func (s *Supervisor) runRecycler(quit <-chan struct{}) {
	tick := make(chan struct{}, 1)
	for {
		stop := s.afterFunc(recycleInterval, func() { tick <- struct{}{} })
		select {
		case <-quit:
			stop()
			return
		case <-s.loopEnded:
			stop()
			return
		case <-tick:
		}
		reply := make(chan []recycleCandidate, 1)
		if !s.inbox.put(recycleCandidatesRequested{reply: reply}) {
			return
		}
		var cands []recycleCandidate
		select {
		case cands = <-reply:
		case <-s.loopEnded:
			return
		case <-quit:
			return
		}
		now := s.now()
		for _, c := range cands {
			var jobs uint64
			if s.queue != nil && c.limits.MaxJobs > 0 {
				jobs = s.queue.Acked(c.pid)
			}
			var mem uint64
			haveMem := false
			if c.limits.MemoryMax > 0 {
				mem, haveMem = memoryOf(c.cgroup, c.pid)
			}
			if reason, detail := recycleReasonFor(c.limits, c.jitter, now.Sub(c.startedAt), jobs, mem, haveMem); reason != "" {
				s.inbox.put(recycleDue{token: c.token, reason: reason, detail: detail})
			}
		}
	}
}

// memoryOf is a worker's memory: its cgroup's, else its process's
// resident set.
func memoryOf(cgroup string, pid int) (uint64, bool) {
	if cgroup != "" {
		if u, ok := readCgroupStats(cgroup); ok {
			return u.Memory, true
		}
	}
	u, ok := readProcessStats(pid)
	return u.Memory, ok
}

// recycleReasonFor says which limit of r, each lowered by jitter times
// r.Jitter, a worker of that age, with jobs acknowledged and mem of
// memory (if haveMem), has reached, and how far; "" if none.
func recycleReasonFor(r config.Recycle, jitter float64, age time.Duration, jobs, mem uint64, haveMem bool) (RecycleReason, string) {
	factor := 1 - r.Jitter*jitter
	switch {
	case r.MemoryMax > 0 && haveMem && float64(mem) >= float64(r.MemoryMax)*factor:
		return RecycleMemoryMax, fmt.Sprintf("memory %d bytes, its limit %.0f (memory_max %d, jitter %g)", mem, float64(r.MemoryMax)*factor, r.MemoryMax, r.Jitter)
	case r.MaxJobs > 0 && float64(jobs) >= float64(r.MaxJobs)*factor:
		return RecycleMaxJobs, fmt.Sprintf("%d jobs done, its limit %.0f (max_jobs %d, jitter %g)", jobs, float64(r.MaxJobs)*factor, r.MaxJobs, r.Jitter)
	case r.MaxAge > 0 && age >= time.Duration(float64(r.MaxAge)*factor):
		return RecycleMaxAge, fmt.Sprintf("up %s, its limit %s (max_age %s, jitter %g)", age.Round(time.Second), time.Duration(float64(r.MaxAge)*factor).Round(time.Second), r.MaxAge, r.Jitter)
	}
	return "", ""
}

// onRecycleDue marks token's worker for recycling, and recycles it when
// its turn comes.
func (s *Supervisor) onRecycleDue(ev recycleDue) {
	w := s.byToken[ev.token]
	if w == nil || s.stopping || w.state != stateRunning || w.recycling != recycleNone || w.recycleReason != "" {
		return
	}
	w.recycleReason, w.recycleDetail = ev.reason, ev.detail
	s.recycleQueue[w.key.service] = true
}

// recycleNext starts the drain of the lowest due worker of service, unless
// a worker of it is being recycled or replaced; it reports whether a due
// worker is left waiting.
func (s *Supervisor) recycleNext(service string) bool {
	var next *worker
	due := 0
	for _, w := range s.workers {
		if w.key.service != service {
			continue
		}
		if w.recycling != recycleNone || w.state == stateStarting || w.state == stateStopping || w.prevSvc != nil {
			return true // one at a time, and not beside a rolling change
		}
		if w.recycleReason != "" && w.state == stateRunning {
			due++
			if next == nil || w.key.id < next.key.id {
				next = w
			}
		}
	}
	if next == nil {
		return false
	}
	s.drain(next)
	return due > 1
}

// drain starts recycling w: the broker stops handing it items; drainDone
// comes when it holds none, or after its stop_timeout.
func (s *Supervisor) drain(w *worker) {
	w.recycling = recycleDraining
	s.changed = true
	s.counters(w.key.service).Recycles[w.recycleReason]++
	s.log.Info("recycling worker: draining it first", s.fields(w, zap.String("reason", string(w.recycleReason)),
		zap.String("detail", w.recycleDetail))...)
	token := w.token
	if s.queue == nil {
		s.inbox.put(drainDone{token: token})
		return
	}
	drained := s.queue.Drain(w.pid)
	stopWaiting := make(chan struct{})
	cancelTimer := s.afterFunc(w.svc.StopTimeout, func() { s.inbox.put(drainDone{token: token, timedOut: true}) })
	w.cancelDrain = func() bool {
		close(stopWaiting)
		return cancelTimer()
	}
	go func() {
		select {
		case <-drained:
			s.inbox.put(drainDone{token: token})
		case <-stopWaiting:
		}
	}()
}

// onDrainDone stops a drained worker; its slot starts a new process once
// it has exited.
func (s *Supervisor) onDrainDone(ev drainDone) {
	w := s.byToken[ev.token]
	if w == nil || w.recycling != recycleDraining || w.state != stateRunning {
		return
	}
	cancel(&w.cancelDrain)
	if s.stopping {
		// The shutdown stops it in its turn (stopInOrder), not the
		// drain: what depends on it may still run.
		return
	}
	w.recycling = recycleStopping
	msg := "worker drained; stopping it"
	if ev.timedOut {
		msg = "worker still holds items after its stop_timeout; stopping it (they go back to their queues)"
	}
	s.log.Info(msg, s.fields(w, zap.String("reason", string(w.recycleReason)))...)
	s.stopWith(w, w.svc.StopSignal)
}

// endRecycle forgets w's recycling, whose process is gone or was
// replaced, and lets the next due worker of its service go.
func (s *Supervisor) endRecycle(w *worker) {
	cancel(&w.cancelDrain)
	w.recycling = recycleNone
	w.recycleReason, w.recycleDetail = "", ""
	s.recycleQueue[w.key.service] = true
}

// recyclePending recycles the next due worker of each service that has
// one, as its turn comes.
func (s *Supervisor) recyclePending() {
	if len(s.recycleQueue) == 0 {
		return
	}
	for service := range s.recycleQueue {
		if s.stopping || !s.recycleNext(service) {
			delete(s.recycleQueue, service)
		}
	}
}

// stateName is w's state as Status names it: a running worker being
// drained is "draining".
func (w *worker) stateName() string {
	if w.state == stateRunning && w.recycling == recycleDraining {
		return "draining"
	}
	return w.state.String()
}
