package config

import (
	"strings"
	"testing"
	"time"
)

func TestDependsOnForms(t *testing.T) {
	src := `services:
  db: {command: [db]}
  migrate:
    command: [migrate]
    restart: {policy: never}
    depends_on: {db: ready}
  web:
    command: [web]
    depends_on: {db: started, migrate: completed}
  cron:
    command: [cron]
    depends_on: [db, web]
    on_exit: stop_manager
`
	cfg, err := Parse("c.yaml", []byte(src), nil)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, s := range cfg.Services {
		var parts []string
		for _, d := range s.DependsOn {
			parts = append(parts, d.Service+"="+d.Condition.String()+"@"+strings.TrimPrefix(d.Pos.String(), "c.yaml:"))
		}
		got[s.Name] = strings.Join(parts, " ")
	}
	want := map[string]string{
		"db":      "",
		"migrate": "db=ready@6:18",
		"web":     "db=started@9:18 migrate=completed@9:31",
		"cron":    "db=started@12:18 web=started@12:22",
	}
	for name, w := range want {
		if got[name] != w {
			t.Errorf("%s depends on %q, want %q", name, got[name], w)
		}
	}
	if cfg.Service("cron").OnExit != OnExitStopManager || cfg.Service("web").OnExit != OnExitContinue {
		t.Errorf("on_exit: cron %v, web %v", cfg.Service("cron").OnExit, cfg.Service("web").OnExit)
	}
}

func TestDependsOnErrors(t *testing.T) {
	for _, tc := range []struct{ src, want string }{
		{"services:\n  a: {command: [a], depends_on: {b: started}}\n  b: {command: [b], depends_on: {a: ready}}\n",
			`c.yaml:3:34: dependency cycle: a → b → a (each waits for the next, so none would start; remove one of these depends_on entries)`},
		{"services:\n  a: {command: [a], depends_on: [b]}\n  b: {command: [b], depends_on: [c]}\n  c: {command: [c], depends_on: {a: started}}\n",
			`c.yaml:4:34: dependency cycle: a → b → c → a`},
		{"services:\n  a: {command: [a], depends_on: [a]}\n",
			`c.yaml:2:34: service "a" depends on itself (remove a from its depends_on)`},
		{"services:\n  db: {command: [a]}\n  web: {command: [a], depends_on: {dbb: ready}}\n",
			`c.yaml:3:36: service "web" depends on "dbb", which is not a service of this configuration (did you mean "db"? services: db, web)`},
		{"services:\n  db: {command: [a]}\n  web: {command: [a], depends_on: {db: healthy}}\n",
			`c.yaml:3:40: a depends_on condition must be "started", "ready" or "completed" (got "healthy")`},
		{"services:\n  db: {command: [a]}\n  web: {command: [a], depends_on: {db: completed}}\n",
			`c.yaml:3:36: service "web" waits for "db" to complete, which never happens: its restart policy is always (give db restart: {policy: never} or on-failure, or wait for it to be ready)`},
		{"services:\n  db: {command: [a]}\n  web: {command: [a], depends_on: [db, db]}\n",
			`c.yaml:3:40: depends_on lists "db" twice (first at line 3, col 36)`},
		{"services:\n  db: {command: [a]}\n  web: {command: [a], depends_on: db}\n",
			`c.yaml:3:35: depends_on must be a mapping of service names to conditions, like {db: ready, migrate: completed}, or a list of service names (got`},
		{"services:\n  job: {command: [a], schedule: \"@daily\", restart: {policy: never}}\n  web: {command: [a], depends_on: [job]}\n",
			`c.yaml:3:36: service "web" depends on "job", which runs on a schedule: it would wait for its next run`},
		{"services:\n  web: {command: [a], on_exit: stop}\n",
			`c.yaml:2:32: on_exit must be "continue" or "stop_manager" (got "stop")`},
		{"services:\n  web: {command: [a], depend_on: [x]}\n",
			`did you mean "depends_on"?`},
	} {
		_, err := Parse("c.yaml", []byte(tc.src), nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s\n got: %v\nwant: %s", tc.src, err, tc.want)
		}
	}
}

// A cycle is reported once, wherever the search enters it.
func TestDependencyCycleReportedOnce(t *testing.T) {
	src := "services:\n  a: {command: [a], depends_on: [b]}\n  b: {command: [b], depends_on: [a]}\n  c: {command: [c], depends_on: [a, b]}\n"
	_, err := Parse("c.yaml", []byte(src), nil)
	if err == nil || strings.Count(err.Error(), "dependency cycle") != 1 {
		t.Errorf("want one cycle error, got %v", err)
	}
}

func TestDependsOnDeclared(t *testing.T) {
	var d Declaration
	d.Service("db", Command("/bin/db"))
	d.Service("migrate", Command("/bin/migrate"), RestartWith(RestartNever), DependsOn("db", ConditionReady))
	d.Service("web", Command("/bin/web"), DependsOn("db", ConditionStarted), DependsOn("migrate", ConditionCompleted),
		DependsOn("db", ConditionReady), ExitAction(OnExitStopManager))
	cfg, err := d.Resolve(nil)
	if err != nil {
		t.Fatal(err)
	}
	web := cfg.Service("web")
	if len(web.DependsOn) != 2 || web.DependsOn[0] != (Dependency{"db", ConditionReady, Position{Field: "services.web.depends_on.db"}}) ||
		web.DependsOn[1].Condition != ConditionCompleted || web.OnExit != OnExitStopManager {
		t.Errorf("declared web: %+v, on_exit %v", web.DependsOn, web.OnExit)
	}
	// The file's depends_on replaces the declared list.
	cfg, err = ParseOver(&d, "c.yaml", []byte("services:\n  web: {depends_on: [db]}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if deps := cfg.Service("web").DependsOn; len(deps) != 1 || deps[0].Service != "db" || deps[0].Condition != ConditionStarted {
		t.Errorf("over the file: %+v", deps)
	}
	var bad Declaration
	bad.Service("a", Command("/bin/a"), DependsOn("b", ConditionReady))
	bad.Service("b", Command("/bin/b"), DependsOn("a", Condition(7)), DependsOn("nope", ConditionStarted), ExitAction(OnExit(3)))
	_, err = bad.Resolve(nil)
	for _, want := range []string{
		`services.b.depends_on.a (declared in Go): a depends_on condition must be "started", "ready" or "completed" (got Condition(7))`,
		`services.b.on_exit (declared in Go): on_exit must be "continue" or "stop_manager" (got OnExit(3))`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("bad declaration: %v\nwant %s", err, want)
		}
	}
	var cyc Declaration
	cyc.Service("a", Command("/bin/a"), DependsOn("b", ConditionReady))
	cyc.Service("b", Command("/bin/b"), DependsOn("a", ConditionStarted), DependsOn("nope", ConditionStarted))
	_, err = cyc.Resolve(nil)
	for _, want := range []string{
		`services.b.depends_on.a (declared in Go): dependency cycle: a → b → a`,
		`services.b.depends_on.nope (declared in Go): service "b" depends on "nope", which is not a service`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("cyclic declaration: %v\nwant %s", err, want)
		}
	}
}

func TestRecycle(t *testing.T) {
	cfg, err := Parse("c.yaml", []byte("services:\n  w:\n    command: [a]\n    recycle: {max_jobs: 10000, max_age: 168h, memory_max: 512MiB, jitter: 0.2}\nqueues:\n  q: {}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if r := cfg.Service("w").Recycle; r.MaxJobs != 10000 || r.MaxAge != 168*time.Hour || r.MemoryMax != 512<<20 || r.Jitter != 0.2 || !r.Enabled() {
		t.Errorf("recycle %+v", r)
	}
	for _, tc := range []struct{ val, want string }{
		{"{memory_max: 512M}", `c.yaml:4:27: memory_max "512M" is ambiguous: write MiB for powers of 1024 or MB for powers of 1000`},
		{"{memory_max: 2GB}", ""},
		{"{memory_max: 1000}", `c.yaml:4:27: memory_max must be at least 1MiB (got "1000")`},
		{"{memory_max: lots}", `c.yaml:4:27: memory_max must be a size as in "512MiB" or "2GB" (got "lots")`},
		{"{max_jobs: 0}", `c.yaml:4:25: max_jobs must be a whole number from 1 to 1000000000000 (got 0)`},
		{"{max_age: 800h}", `c.yaml:4:24: max_age must be at most 720h, 30 days (got "800h")`},
		{"{max_age: 10ms}", `c.yaml:4:24: max_age must be at least 1s (got "10ms")`},
		{"{jitter: 0.9}", `c.yaml:4:23: jitter must be a fraction from 0 to 0.5, as in 0.1 for up to 10% below each limit (got "0.9")`},
		{"{max_job: 5}", `c.yaml:4:15: unknown key "max_job" in recycle of service "w" (did you mean "max_jobs"?`},
	} {
		_, err := Parse("c.yaml", []byte("services:\n  w:\n    command: [a]\n    recycle: "+tc.val+"\nqueues:\n  q: {}\n"), nil)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.val, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s:\n got: %v\nwant: %s", tc.val, err, tc.want)
		}
	}
	_, err = Parse("c.yaml", []byte("services:\n  w:\n    command: [a]\n    recycle: {max_jobs: 5}\n"), nil)
	if err == nil || !strings.Contains(err.Error(), `c.yaml:4:25: service "w" recycles its workers after max_jobs items, counted on the queue socket, but this configuration has no queues`) {
		t.Errorf("max_jobs without queues: %v", err)
	}
	var d Declaration
	d.Service("w", Command("/bin/w"), MaxAge(time.Hour), MemoryMax(64<<20), RecycleJitter(0), MaxJobs(3))
	d.Queue("q")
	cfg, err = d.Resolve(nil)
	if err != nil {
		t.Fatal(err)
	}
	if r := cfg.Service("w").Recycle; r.MaxAge != time.Hour || r.MemoryMax != 64<<20 || r.Jitter != 0 || r.MaxJobs != 3 {
		t.Errorf("declared recycle %+v", r)
	}
	var bad Declaration
	bad.Service("w", Command("/bin/w"), MemoryMax(10), RecycleJitter(-1))
	if _, err := bad.Resolve(nil); err == nil || !strings.Contains(err.Error(), `services.w.recycle.memory_max (declared in Go): memory_max must be at least 1MiB (got "10")`) ||
		!strings.Contains(err.Error(), "services.w.recycle.jitter (declared in Go): jitter must be a fraction") {
		t.Errorf("bad declared recycle: %v", err)
	}
}

func TestServiceSchedule(t *testing.T) {
	cfg, err := Parse("c.yaml", []byte("services:\n  a: {command: [a], schedule: \"*/5 * * * *\", restart: {policy: never}}\n"+
		"  b: {command: [b], schedule: {cron: \"0 3 * * *\", time_zone: Europe/Paris}, restart: {policy: on-failure}}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	a, b := cfg.Service("a").Schedule, cfg.Service("b").Schedule
	if a == nil || a.Cron != "*/5 * * * *" || a.Location != time.Local || b == nil || b.TimeZone() != "Europe/Paris" {
		t.Fatalf("schedules %+v %+v", a, b)
	}
	if next := b.Next(time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)); !next.Equal(time.Date(2026, 12, 7, 2, 0, 0, 0, time.UTC)) {
		t.Errorf("b's next %v, want 03:00 in Paris", next)
	}
	for _, tc := range []struct{ svc, want string }{
		{"{command: [a], schedule: \"* * * * *\"}", `c.yaml:2:31: service "a" runs on a schedule, so each run must end: its restart policy is always (add restart: {policy: never}, or on-failure to retry a failed run)`},
		{"{command: [a], schedule: \"61 * * * *\", restart: {policy: never}}", `c.yaml:2:31: cron "61 * * * *" has a value out of range`},
		{"{command: [a], schedule: {time_zone: UTC}, restart: {policy: never}}", `c.yaml:2:31: schedule needs cron`},
		{"{command: [a], schedule: {cron: \"@daily\", item: x}, restart: {policy: never}}", `unknown key "item" in schedule`},
	} {
		_, err := Parse("c.yaml", []byte("services:\n  a: "+tc.svc+"\n"), nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s:\n got: %v\nwant: %s", tc.svc, err, tc.want)
		}
	}
	var d Declaration
	d.Service("a", Command("/bin/a"), RunOnSchedule("@hourly", "UTC"), RestartWith(RestartNever))
	if cfg, err := d.Resolve(nil); err != nil || cfg.Service("a").Schedule.Cron != "@hourly" {
		t.Errorf("declared: %v", err)
	}
	var bad Declaration
	bad.Service("a", Command("/bin/a"), RunOnSchedule("@hourly", ""))
	if _, err := bad.Resolve(nil); err == nil || !strings.Contains(err.Error(), `services.a.schedule (declared in Go): service "a" runs on a schedule`) {
		t.Errorf("declared with policy always: %v", err)
	}
}

func TestMemorySizes(t *testing.T) {
	for text, want := range map[string]uint64{
		"512MiB": 512 << 20, "2GB": 2e9, "1.5 GiB": 3 << 29, "1048576": 1 << 20, "1048576B": 1 << 20, "3tib": 3 << 40, "64mb": 64e6,
	} {
		if got, msg := memoryRule(text); msg != "" || got != want {
			t.Errorf("%q: %d %q, want %d", text, got, msg, want)
		}
	}
	for _, text := range []string{"512M", "1g", "MiB", "-5MiB", "5 PiB", "1e30GiB", "12 MiB extra"} {
		if _, msg := memoryRule(text); msg == "" {
			t.Errorf("%q accepted", text)
		}
	}
}
