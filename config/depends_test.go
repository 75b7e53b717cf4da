package config

import (
	"strings"
	"testing"
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
