package config

import (
	"fmt"
	"time"

	"github.com/goccy/go-yaml/ast"
	"github.com/robfig/cron/v3"
)

// Schedule is when something happens again and again: a cron expression
// in a time zone. A queue's schedule (`queues.NAME.schedule`) puts an
// item at each of its times ([QueueSchedule]).
//
// The zero Schedule never fires. A Schedule is read-only once made, and
// safe for concurrent use.
type Schedule struct {
	// Cron is the expression as written: five fields (minute, hour, day
	// of month, month, day of week, as crontab(5) has them, without a
	// seconds field), or a descriptor: @yearly (@annually), @monthly,
	// @weekly, @daily (@midnight), @hourly, or @every DURATION.
	Cron string
	// Location is the time zone the fields are read in (`time_zone`, an
	// IANA name); time.Local by default, the manager's local time zone.
	Location *time.Location
	// Pos is where the schedule stands in the file, or its declared
	// field.
	Pos Position

	spec cron.Schedule
}

// Next is the schedule's first time strictly after after, in Location;
// the zero time when there is none within five years (the expression
// names no date that exists: the rules refuse such a one). An @every
// schedule fires its interval after after, on a whole second.
func (s *Schedule) Next(after time.Time) time.Time {
	if s == nil || s.spec == nil {
		return time.Time{}
	}
	next := s.spec.Next(after.In(s.Location))
	if next.IsZero() {
		return next
	}
	return next.In(s.Location)
}

// TimeZone is the name of the schedule's time zone: its IANA name, or
// "Local" for the manager's.
func (s *Schedule) TimeZone() string {
	if s == nil || s.Location == nil {
		return ""
	}
	return s.Location.String()
}

// Equal reports whether s and o fire at the same times: the same
// expression in the same time zone. Their positions may differ.
func (s *Schedule) Equal(o *Schedule) bool {
	return s.Cron == o.Cron && s.TimeZone() == o.TimeZone()
}

// QueueSchedule is one entry of `queues.NAME.schedule`: at each of its
// times, the manager puts Item into the queue.
type QueueSchedule struct {
	Schedule
	// Item is the item's bytes (`item`), as written.
	Item string
}

// scheduleKeys are the keys of one schedule, sorted.
var scheduleKeys = []string{"cron", "item", "time_zone"}

// cronParser reads the five standard fields and the descriptors (@every
// among them).
var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// schedules decodes schedule:, one mapping or a list of them.
func (d *decoder) schedules(e entry) []QueueSchedule {
	n, ok := d.deref(e.val)
	if !ok {
		return nil
	}
	const mustBe = `schedule must be a mapping like {cron: "0 3 * * *", item: nightly}, or a list of them`
	switch n := n.(type) {
	case *ast.MappingNode, *ast.MappingValueNode:
		if s, ok := d.schedule(e, "schedule"); ok {
			return []QueueSchedule{s}
		}
		return nil
	case *ast.SequenceNode:
		out := []QueueSchedule{}
		for i, v := range n.Values {
			if s, ok := d.schedule(d.element(fmt.Sprintf("schedule[%d]", i), v), fmt.Sprintf("schedule[%d]", i)); ok {
				out = append(out, s)
			}
		}
		return out
	default:
		d.errorf(e.pos, "%s (got %s)", mustBe, describe(n))
		return nil
	}
}

// schedule decodes one schedule's mapping, named what in messages.
func (d *decoder) schedule(e entry, what string) (QueueSchedule, bool) {
	ents, ok := d.expectMapping(e, fmt.Sprintf(`%s must be a mapping like {cron: "0 3 * * *", item: nightly}`, what), "key")
	if !ok {
		return QueueSchedule{}, false
	}
	var expr, item string
	var exprAt Position
	hasCron, hasItem, valid := false, false, true
	loc := time.Local
	for _, f := range ents {
		switch f.key {
		case "cron":
			hasCron = true
			v, ok := d.text(f, `a cron expression like "0 3 * * *"`)
			expr, exprAt, valid = v, f.pos, valid && ok
		case "item":
			hasItem = true
			v, ok := d.text(f, "a string (the item's bytes)")
			item, valid = v, valid && ok
		case "time_zone":
			l, ok := d.timeZone(f)
			if ok {
				loc = l
			}
			valid = valid && ok
		default:
			d.unknownKey(f, " in "+what, scheduleKeys)
		}
	}
	if !hasCron {
		d.errorf(e.pos, `%s needs cron, when to put the item (%s)`, what, cronExample)
	}
	if !hasItem {
		d.errorf(e.pos, `%s needs item, the item to put (as in item: nightly)`, what)
	}
	if !hasCron || !hasItem || !valid {
		return QueueSchedule{}, false
	}
	s, msg := scheduleRule(expr, loc)
	if !d.problem(exprAt, msg) {
		return QueueSchedule{}, false
	}
	s.Pos = e.pos
	return QueueSchedule{Schedule: s, Item: item}, true
}

// serviceScheduleKeys are the keys of a service's schedule, sorted.
var serviceScheduleKeys = []string{"cron", "time_zone"}

// serviceSchedule decodes a service's schedule: a cron expression, or a
// mapping of cron and time_zone; nil if it is not valid.
func (d *decoder) serviceSchedule(e entry) *Schedule {
	n, ok := d.deref(e.val)
	if !ok {
		return nil
	}
	expr, exprAt, loc := "", e.pos, time.Local
	switch n.(type) {
	case *ast.MappingNode, *ast.MappingValueNode:
		ents, _ := d.expectMapping(e, "", "key")
		hasCron, valid := false, true
		for _, f := range ents {
			switch f.key {
			case "cron":
				hasCron = true
				v, ok := d.text(f, `a cron expression like "*/5 * * * *"`)
				expr, exprAt, valid = v, f.pos, valid && ok
			case "time_zone":
				l, ok := d.timeZone(f)
				if ok {
					loc = l
				}
				valid = valid && ok
			default:
				d.unknownKey(f, " in schedule", serviceScheduleKeys)
			}
		}
		if !hasCron {
			d.errorf(e.pos, `schedule needs cron, when to run the service (%s)`, cronExample)
			return nil
		}
		if !valid {
			return nil
		}
	default:
		v, ok := d.text(e, `a cron expression like "*/5 * * * *", or a mapping {cron: "0 3 * * *", time_zone: Europe/Paris}`)
		if !ok {
			return nil
		}
		expr = v
	}
	s, msg := scheduleRule(expr, loc)
	if !d.problem(exprAt, msg) {
		return nil
	}
	s.Pos = e.pos
	return &s
}

// timeZone decodes time_zone: an IANA time zone name this machine knows.
func (d *decoder) timeZone(e entry) (*time.Location, bool) {
	name, ok := d.text(e, `an IANA time zone name like "Europe/Paris"`)
	if !ok {
		return nil, false
	}
	l, msg := timeZoneRule(name)
	return l, d.problem(e.pos, msg)
}
