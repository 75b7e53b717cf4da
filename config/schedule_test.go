package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParseQueueSchedules(t *testing.T) {
	t.Parallel()
	src := `queues:
  reports:
    schedule: {cron: "0 3 * * *", item: nightly}
  cleanup:
    schedule:
      - {cron: "*/5 * * * *", item: sweep}
      - {cron: "@hourly", item: compact, time_zone: Europe/Paris}
      - cron: "@every 90s"
        item: 42
services:
  web: {command: [a]}
`
	cfg, err := Parse("/etc/g.yaml", []byte(src), nil)
	if err != nil {
		t.Fatal(err)
	}
	reports, cleanup := cfg.Queues[0].Schedules, cfg.Queues[1].Schedules
	if len(reports) != 1 || len(cleanup) != 3 {
		t.Fatalf("schedules %+v and %+v, want 1 and 3", reports, cleanup)
	}
	r := reports[0]
	if r.Cron != "0 3 * * *" || r.Item != "nightly" || r.Location != time.Local || r.TimeZone() != "Local" || r.Pos != (Position{File: "/etc/g.yaml", Line: 3, Col: 15}) {
		t.Errorf("reports' schedule %+v", r)
	}
	paris, err := time.LoadLocation("Europe/Paris")
	if err != nil {
		t.Fatal(err)
	}
	if c := cleanup[1]; c.Item != "compact" || c.TimeZone() != "Europe/Paris" || c.Pos != (Position{File: "/etc/g.yaml", Line: 7, Col: 9}) {
		t.Errorf("cleanup's second schedule %+v", c)
	}
	if c := cleanup[2]; c.Item != "42" || c.Pos.Line != 8 {
		t.Errorf("cleanup's third schedule %+v", c)
	}

	// Next reads the fields in the schedule's zone, whatever the zone of
	// the time it is given, and answers in that zone.
	at := time.Date(2026, 3, 28, 23, 10, 0, 0, time.UTC) // 00:10 in Paris, on the eve of summer time
	for _, tc := range []struct {
		s    *Schedule
		want time.Time
	}{
		{&cleanup[0].Schedule, time.Date(2026, 3, 28, 23, 15, 0, 0, time.UTC)},
		{&cleanup[1].Schedule, time.Date(2026, 3, 29, 1, 0, 0, 0, paris)},
		{&cleanup[2].Schedule, at.Add(90 * time.Second)},
	} {
		got := tc.s.Next(at)
		if !got.Equal(tc.want) || got.Location().String() != tc.s.Location.String() {
			t.Errorf("%q in %s: Next(%v) = %v, want %v", tc.s.Cron, tc.s.TimeZone(), at, got, tc.want)
		}
	}
	// Paris skips 02:00 to 03:00 on 29 March 2026: @hourly's next time
	// after 01:00 is 03:00, an hour of UTC later.
	if got, want := cleanup[1].Next(time.Date(2026, 3, 29, 1, 0, 0, 0, paris)), time.Date(2026, 3, 29, 3, 0, 0, 0, paris); !got.Equal(want) {
		t.Errorf("across the change to summer time: %v, want %v", got, want)
	}
	// 03:00 in Paris on the day summer time starts is 01:00 UTC.
	daily, msg := scheduleRule("0 3 * * *", paris)
	if msg != "" {
		t.Fatal(msg)
	}
	if got, want := daily.Next(at), time.Date(2026, 3, 29, 1, 0, 0, 0, time.UTC); !got.Equal(want) {
		t.Errorf("03:00 in Paris after %v: %v, want %v", at, got, want)
	}
	if got := (&Schedule{}).Next(at); !got.IsZero() {
		t.Errorf("the zero Schedule's Next = %v, want the zero time", got)
	}
}

func TestParseQueueScheduleErrors(t *testing.T) {
	t.Parallel()
	const svc = "services:\n  web: {command: [a]}\n"
	for _, tc := range []struct{ name, src, want string }{
		{"six fields", "queues:\n  q:\n    schedule: {cron: \"0 0 3 * * *\", item: x}\n" + svc,
			`g.yaml:3:22: cron "0 0 3 * * *" has 6 fields; gotyledon's cron has no seconds field (write 5 fields: minute hour day-of-month month day-of-week, as in "0 3 * * *" (03:00 every day), "*/5 * * * *" or "@hourly")`},
		{"four fields", "queues:\n  q:\n    schedule: {cron: \"0 3 * *\", item: x}\n" + svc,
			`g.yaml:3:22: cron "0 3 * *" has 4 fields (write 5: minute hour day-of-month month day-of-week, as in "0 3 * * *" (03:00 every day), "*/5 * * * *" or "@hourly")`},
		{"out of range", "queues:\n  q:\n    schedule:\n      - {cron: \"60 * * * *\", item: x}\n" + svc,
			`g.yaml:4:16: cron "60 * * * *" has a value out of range: end of range (60) above maximum (59): 60 (minute 0-59, hour 0-23, day of month 1-31, month 1-12 or JAN-DEC, day of week 0-6 or SUN-SAT; as in "0 3 * * *" (03:00 every day), "*/5 * * * *" or "@hourly")`},
		{"not a number", "queues:\n  q:\n    schedule: {cron: \"x * * * *\", item: x}\n" + svc,
			`g.yaml:3:22: cron "x * * * *" is not a valid cron expression: failed to parse int from x: strconv.Atoi: parsing "x": invalid syntax (as in "0 3 * * *" (03:00 every day), "*/5 * * * *" or "@hourly")`},
		{"unknown descriptor", "queues:\n  q:\n    schedule: {cron: \"@fortnightly\", item: x}\n" + svc,
			`g.yaml:3:22: cron "@fortnightly" is not a known descriptor (use @yearly, @monthly, @weekly, @daily, @hourly or "@every 1h30m", or 5 fields as in "0 3 * * *" (03:00 every day), "*/5 * * * *" or "@hourly")`},
		{"bad every", "queues:\n  q:\n    schedule: {cron: \"@every soon\", item: x}\n" + svc,
			`g.yaml:3:22: cron "@every soon": @every needs a duration, as in "@every 90s" or "@every 1h30m"`},
		{"every too short", "queues:\n  q:\n    schedule: {cron: \"@every 10ms\", item: x}\n" + svc,
			`g.yaml:3:22: cron "@every 10ms" repeats more often than once a second (write "@every 1s" or longer)`},
		{"never", "queues:\n  q:\n    schedule: {cron: \"0 0 30 2 *\", item: x}\n" + svc,
			`g.yaml:3:22: cron "0 0 30 2 *" names no date that comes (such as the 30th of February): it would never fire (as in "0 3 * * *" (03:00 every day), "*/5 * * * *" or "@hourly")`},
		{"zone in the expression", "queues:\n  q:\n    schedule: {cron: \"TZ=UTC 0 3 * * *\", item: x}\n" + svc,
			`g.yaml:3:22: cron "TZ=UTC 0 3 * * *" names its time zone in the expression (write it in time_zone instead, as in {cron: "0 3 * * *", time_zone: Europe/Paris})`},
		{"empty cron", "queues:\n  q:\n    schedule: {cron: \"\", item: x}\n" + svc,
			`g.yaml:3:22: cron is empty (write 5 fields, minute hour day-of-month month day-of-week, as in "0 3 * * *" (03:00 every day), "*/5 * * * *" or "@hourly")`},
		{"unknown zone", "queues:\n  q:\n    schedule: {cron: \"@daily\", item: x, time_zone: Europe/Pari}\n" + svc,
			`g.yaml:3:52: unknown time_zone "Europe/Pari" (write an IANA time zone name as in "Europe/Paris" or "UTC"; this machine's are under /usr/share/zoneinfo)`},
		{"empty zone", "queues:\n  q:\n    schedule: {cron: \"@daily\", item: x, time_zone: \"\"}\n" + svc,
			`g.yaml:3:52: time_zone is empty (write an IANA time zone name as in "Europe/Paris" or "UTC", or leave time_zone out for the manager's local time zone)`},
		{"no cron", "queues:\n  q:\n    schedule: {item: x}\n" + svc,
			`g.yaml:3:15: schedule needs cron, when to put the item (as in "0 3 * * *" (03:00 every day), "*/5 * * * *" or "@hourly")`},
		{"no item in a list", "queues:\n  q:\n    schedule:\n      - {cron: \"@daily\"}\n" + svc,
			`g.yaml:4:9: schedule[0] needs item, the item to put (as in item: nightly)`},
		{"item a list", "queues:\n  q:\n    schedule: {cron: \"@daily\", item: [a]}\n" + svc,
			`g.yaml:3:38: item must be a string (the item's bytes) (got a list)`},
		{"unknown key", "queues:\n  q:\n    schedule: {corn: \"@daily\", item: x}\n" + svc,
			`g.yaml:3:15: schedule needs cron, when to put the item (as in "0 3 * * *" (03:00 every day), "*/5 * * * *" or "@hourly")` + "\n" +
				`g.yaml:3:16: unknown key "corn" in schedule (did you mean "cron"? known keys: cron, item, time_zone)`},
		{"a string", "queues:\n  q:\n    schedule: \"0 3 * * *\"\n" + svc,
			`g.yaml:3:15: schedule must be a mapping like {cron: "0 3 * * *", item: nightly}, or a list of them (got "0 3 * * *")`},
		{"a list of strings", "queues:\n  q:\n    schedule: [\"@daily\"]\n" + svc,
			`g.yaml:3:16: schedule[0] must be a mapping like {cron: "0 3 * * *", item: nightly} (got "@daily")`},
		{"unknown queue key", "queues:\n  q: {schedul: {}}\n" + svc,
			`g.yaml:2:7: unknown key "schedul" in queue "q" (did you mean "schedule"? known keys: ack_wait, capacity, pack, replicas, schedule, store)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse("g.yaml", []byte(tc.src), nil)
			var list ErrorList
			if !errors.As(err, &list) {
				t.Fatalf("got %v, want an ErrorList", err)
			}
			if got := strings.Join(errorStrings(list), "\n"); got != tc.want {
				t.Errorf("got\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
}

func TestDeclaredQueueSchedules(t *testing.T) {
	t.Parallel()
	var d Declaration
	d.Service("web", Command("/bin/web"))
	d.Queue("reports", Scheduled("0 3 * * *", "nightly", ""), Scheduled("@hourly", "compact", "UTC"))
	cfg, err := d.Resolve(nil)
	if err != nil {
		t.Fatal(err)
	}
	s := cfg.Queues[0].Schedules
	if len(s) != 2 || s[0].Item != "nightly" || s[0].Location != time.Local || s[1].TimeZone() != "UTC" ||
		s[1].Pos != (Position{Field: "queues.reports.schedule[1]"}) {
		t.Fatalf("declared schedules %+v", s)
	}

	// A file's schedule replaces the declared ones.
	over, err := ParseOver(&d, "g.yaml", []byte("queues:\n  reports:\n    schedule: {cron: \"@daily\", item: daily}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if s := over.Queues[0].Schedules; len(s) != 1 || s[0].Item != "daily" || s[0].Pos.File != "g.yaml" {
		t.Errorf("schedules over the declaration %+v", s)
	}

	// The same rules, the same words; the declaration names its field.
	var bad Declaration
	bad.Service("web", Command("/bin/web"))
	bad.Queue("q", Scheduled("61 * * * *", "x", ""), Scheduled("@daily", "x", "Mars/Olympus"))
	_, declErr := bad.Resolve(nil)
	_, fileErr := Parse("c.yaml", []byte("queues:\n  q:\n    schedule:\n      - {cron: \"61 * * * *\", item: x}\n      - {cron: \"@daily\", item: x, time_zone: Mars/Olympus}\nservices:\n  web: {command: [/bin/web]}\n"), nil)
	var dl, fl ErrorList
	if !errors.As(declErr, &dl) || !errors.As(fileErr, &fl) || len(dl) != 2 || len(fl) != 2 {
		t.Fatalf("want two errors each, got\n%v\nand\n%v", declErr, fileErr)
	}
	for i, field := range []string{"queues.q.schedule[0].cron", "queues.q.schedule[1].time_zone"} {
		if dl[i].Msg != fl[i].Msg || dl[i].Pos.Field != field {
			t.Errorf("declared: %s: %s\nfile:     %s", dl[i].Pos.Field, dl[i].Msg, fl[i].Msg)
		}
	}
	if fl[0].Pos != (Position{File: "c.yaml", Line: 4, Col: 16}) || fl[1].Pos != (Position{File: "c.yaml", Line: 5, Col: 46}) {
		t.Errorf("file positions %v and %v", fl[0].Pos, fl[1].Pos)
	}
}

// Daylight saving time, as the docs state it: a time in the hour skipped
// in spring does not come that day; one in the hour repeated in autumn
// comes twice.
func TestScheduleAcrossDaylightSavingTime(t *testing.T) {
	cfg, err := Parse("c.yaml", []byte("services:\n  w: {command: [a]}\nqueues:\n  q:\n    schedule: {cron: \"30 2 * * *\", item: x, time_zone: Europe/Paris}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	s := &cfg.Queues[0].Schedules[0].Schedule
	paris := s.Location
	spring := s.Next(time.Date(2025, 3, 30, 0, 0, 0, 0, paris))
	if want := time.Date(2025, 3, 31, 2, 30, 0, 0, paris); !spring.Equal(want) {
		t.Errorf("after the spring change: next %v, want %v (the skipped 02:30 does not come)", spring, want)
	}
	first := s.Next(time.Date(2025, 10, 26, 0, 0, 0, 0, paris))
	second := s.Next(first)
	if first.Day() != 26 || second.Day() != 26 || second.Sub(first) != time.Hour {
		t.Errorf("autumn: %v then %v, want 02:30 twice on the 26th, an hour apart", first, second)
	}
}
