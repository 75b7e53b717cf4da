package supervisor

import (
	"time"

	"go.uber.org/zap"

	"github.com/gotyledon/gotyledon/config"
)

// Scheduled services (a service's schedule:), as the loop applies them:
//
//   - A scheduled service does not run at the manager's start: its slots
//     are "scheduled", with no process, until the schedule's next time.
//     Then every slot of it without a process (scheduled, or completed
//     by its last run) starts: a run. Its restart policy (on-failure or
//     never) says what becomes of a failure; each run ends completed.
//   - A run still going when the next time comes (a worker running,
//     starting, stopping, or waiting out a backoff) makes that time
//     skipped, logged and counted: never two runs at once. So does a
//     service that still waits for its dependencies.
//   - The next time is counted from now, once a time has come: a time
//     missed (a run too long, a manager down, a machine suspended, seen
//     within scheduleRecheck of its resume) is not made up.
//   - A reload that changes the schedule counts its next time from the
//     reload; one that keeps it keeps its next time. `gotyledon restart`
//     runs a scheduled service at once, outside its schedule.

// scheduleRecheck bounds a schedule timer's wait, so that a wall clock
// moved (set, or a suspend) is seen within it.
const scheduleRecheck = time.Minute

// scheduleTimer is a scheduled service's next time and its timer.
type scheduleTimer struct {
	schedule *config.Schedule
	next     time.Time
	seq      uint64
	cancel   func() bool
}

// scheduleDue: the next time of service's schedule has come; seq tells a
// stale timer from the current one.
type scheduleDue struct {
	service string
	seq     uint64
}

func (scheduleDue) isEvent() {}

// armSchedule (re)arms svc's timer for its schedule's first time after
// from.
func (s *Supervisor) armSchedule(svc *config.Service, from time.Time) {
	s.armScheduleAt(svc, svc.Schedule.Next(from))
}

// armScheduleAt (re)arms svc's timer for next.
func (s *Supervisor) armScheduleAt(svc *config.Service, next time.Time) {
	t := s.schedules[svc.Name]
	if t == nil {
		t = &scheduleTimer{}
		s.schedules[svc.Name] = t
	}
	if t.cancel != nil {
		t.cancel()
	}
	t.schedule = svc.Schedule
	t.next = next
	s.nextSeq++
	t.seq = s.nextSeq
	if t.next.IsZero() {
		t.cancel = nil
		return
	}
	name, seq := svc.Name, t.seq
	// Timers run on the monotonic clock, which stands still while the
	// machine is suspended: woken at least once a minute, the loop looks
	// at the wall clock again (onScheduleDue's early path).
	wait := min(t.next.Sub(s.now()), scheduleRecheck)
	t.cancel = s.afterFunc(wait, func() { s.inbox.put(scheduleDue{service: name, seq: seq}) })
	s.log.Debug("next scheduled run", zap.String("service", svc.Name), zap.String("cron", svc.Schedule.Cron),
		zap.String("time_zone", svc.Schedule.TimeZone()), zap.Time("at", t.next))
}

// updateSchedules arms the timers of cfg's scheduled services whose
// schedule is new or changed, and drops those of services no longer
// scheduled.
func (s *Supervisor) updateSchedules(cfg *config.Config) {
	now := s.now()
	for name, t := range s.schedules {
		if svc := cfg.Service(name); svc == nil || svc.Schedule == nil {
			if t.cancel != nil {
				t.cancel()
			}
			delete(s.schedules, name)
		}
	}
	for _, svc := range cfg.Services {
		if svc.Schedule == nil {
			continue
		}
		if t := s.schedules[svc.Name]; t != nil && t.schedule.Equal(svc.Schedule) {
			t.schedule = svc.Schedule
			continue
		}
		s.armSchedule(svc, now)
	}
}

// onScheduleDue runs service if its last run is over, and arms its next
// time.
func (s *Supervisor) onScheduleDue(ev scheduleDue) {
	t := s.schedules[ev.service]
	svc := s.cfg.Service(ev.service)
	if t == nil || t.seq != ev.seq || svc == nil || svc.Schedule == nil || s.stopping {
		return
	}
	now := s.now()
	if now.Before(t.next) {
		// Not yet: a wait bounded by scheduleRecheck, or a wall clock
		// set back since the timer was armed. Wait for the time itself.
		s.armScheduleAt(svc, t.next)
		return
	}
	at := t.next
	s.armSchedule(svc, now)
	c := s.counters(svc.Name)
	var idle []*worker
	going := 0
	for id := range svc.Workers {
		w := s.workers[workerKey{svc.Name, id}]
		switch {
		case w == nil:
		case w.state == stateScheduled || w.state == stateCompleted:
			idle = append(idle, w)
		case w.state == stateWaiting:
			c.ScheduleSkips++
			s.log.Warn("scheduled run skipped: the service still waits for its dependencies",
				zap.String("service", svc.Name), zap.Time("due", at), zap.Time("next", s.schedules[svc.Name].next))
			return
		default:
			going++
		}
	}
	if going > 0 {
		c.ScheduleSkips++
		s.log.Warn("scheduled run skipped: the previous run is still going", zap.String("service", svc.Name),
			zap.Int("workers_running", going), zap.Time("due", at), zap.Time("next", s.schedules[svc.Name].next))
		return
	}
	c.ScheduledRuns++
	s.changed = true
	s.log.Info("scheduled run", zap.String("service", svc.Name), zap.String("cron", svc.Schedule.Cron),
		zap.Time("due", at), zap.Int("workers", len(idle)), zap.Time("next", s.schedules[svc.Name].next))
	for _, w := range idle {
		s.start(w)
	}
}

// schedule leaves w's slot, of a scheduled service, without a process
// until its next scheduled time; the manager's start does not wait for
// it.
func (s *Supervisor) schedule(w *worker) {
	w.state = stateScheduled
	w.pid = 0
	w.awaited = false
}
