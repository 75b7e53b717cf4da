package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"
)

// testGoServices is what the test program registers.
var testGoServices = []string{"ticker", "printer"}

func TestParseErrors(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("a", 64)
	tests := []struct {
		name       string
		src        string
		goServices []string // testGoServices if nil and !noGo
		noGo       bool
		want       string
	}{
		{
			name: "syntax error",
			src:  "services:\n  web: {command: [a}\n",
			want: "c.yaml:2:20: YAML syntax error: ',' or ']' must be specified (check the indentation, quotes and brackets here)",
		},
		{
			name: "syntax error bad indentation",
			src:  "services:\n  web:\n    command: [a]\n   workers: 2\n",
			want: "c.yaml:4:4: YAML syntax error: value is not allowed in this context (check the indentation, quotes and brackets here)",
		},
		{
			name: "empty file",
			src:  "",
			want: `c.yaml:1:1: the file is empty (expected a mapping with a "services" key listing at least one service)`,
		},
		{
			name: "only comments",
			src:  "# nothing yet\n\n",
			want: `c.yaml:1:1: the file is empty (expected a mapping with a "services" key listing at least one service)`,
		},
		{
			name: "top level a list",
			src:  "- web\n- db\n",
			want: `c.yaml:1:1: the top level must be a mapping with a "services" key (got a list)`,
		},
		{
			name: "top level a scalar",
			src:  "# config\nhello\n",
			want: `c.yaml:2:1: the top level must be a mapping with a "services" key (got "hello")`,
		},
		{
			name: "unknown top-level key with suggestion",
			src:  "services:\n  web: {command: [a]}\nshutdown_timout: 5s\n",
			want: `c.yaml:3:1: unknown key "shutdown_timout" (did you mean "shutdown_timeout"? known keys: broker, control, nats, queues, services, shutdown_timeout)`,
		},
		{
			name: "unknown top-level key without suggestion",
			src:  "logging: debug\nservices:\n  web: {command: [a]}\n",
			want: `c.yaml:1:1: unknown key "logging" (known keys: broker, control, nats, queues, services, shutdown_timeout)`,
		},
		{
			name: "unknown service key with suggestion",
			src:  "services:\n  printer:\n    run: printer\n    wokers: 2\n",
			want: `c.yaml:4:5: unknown key "wokers" in service "printer" (did you mean "workers"? known keys: command, depends_on, dir, env, env_file, on_exit, ready, ready_timeout, recycle, reload_signal, replace, restart, run, schedule, stop_signal, stop_timeout, watchdog, workers)`,
		},
		{
			name: "unknown restart key",
			src:  "services:\n  web:\n    command: [a]\n    restart:\n      min_uptme: 2s\n",
			want: `c.yaml:5:7: unknown key "min_uptme" in restart of service "web" (did you mean "min_uptime"? known keys: backoff_initial, backoff_max, min_uptime, policy)`,
		},
		{
			name: "duplicate top-level key",
			src:  "shutdown_timeout: 5s\nservices: {web: {command: [a]}}\nshutdown_timeout: 6s\n",
			want: `c.yaml:3:1: duplicate key "shutdown_timeout" (first at line 1, col 1; each key may appear once)`,
		},
		{
			name: "duplicate service key",
			src:  "services:\n  printer:\n    run: printer\n    workers: 2\n    workers: 3\n",
			want: `c.yaml:5:5: duplicate key "workers" (first at line 4, col 5; each key may appear once)`,
		},
		{
			name: "duplicate service name",
			src:  "services:\n  web:\n    command: [a]\n  web:\n    command: [b]\n",
			want: `c.yaml:4:3: duplicate service name "web" (first at line 2, col 3; each service name may appear once)`,
		},
		{
			name: "duplicate env name",
			src:  "services:\n  web:\n    command: [a]\n    env: {A: 1, A: 2}\n",
			want: `c.yaml:4:17: duplicate env name "A" (first at line 4, col 11; each env name may appear once)`,
		},
		{
			name: "workers a string",
			src:  "services:\n  web:\n    command: [a]\n    workers: two\n",
			want: `c.yaml:4:14: workers must be a whole number from 0 to 10000 (got "two")`,
		},
		{
			name: "workers a quoted number",
			src:  "services:\n  web:\n    command: [a]\n    workers: \"2\"\n",
			want: `c.yaml:4:14: workers must be a whole number from 0 to 10000 (got "2")`,
		},
		{
			name: "workers a float",
			src:  "services:\n  web:\n    command: [a]\n    workers: 1.5\n",
			want: `c.yaml:4:14: workers must be a whole number from 0 to 10000 (got 1.5)`,
		},
		{
			name: "workers negative",
			src:  "services:\n  web:\n    command: [a]\n    workers: -1\n",
			want: `c.yaml:4:14: workers must be a whole number from 0 to 10000 (got -1)`,
		},
		{
			name: "workers absurd",
			src:  "services:\n  web:\n    command: [a]\n    workers: 100000\n",
			want: `c.yaml:4:14: workers must be a whole number from 0 to 10000 (got 100000)`,
		},
		{
			name: "workers beyond int64",
			src:  "services:\n  web:\n    command: [a]\n    workers: 18446744073709551615\n",
			want: `c.yaml:4:14: workers must be a whole number from 0 to 10000 (got 18446744073709551615)`,
		},
		{
			name: "workers left out",
			src:  "services:\n  web:\n    command: [a]\n    workers:\n",
			want: `c.yaml:4:5: workers must be a whole number from 0 to 10000 (got null)`,
		},
		{
			name: "env a list",
			src:  "services:\n  web:\n    command: [a]\n    env: [A=1]\n",
			want: `c.yaml:4:10: env must be a mapping of NAME: value (got a list)`,
		},
		{
			name: "env value a list",
			src:  "services:\n  web:\n    command: [a]\n    env:\n      A: [1, 2]\n",
			want: `c.yaml:5:10: env A must be a single value like "C.UTF-8" or 8080 (got a list)`,
		},
		{
			name: "command a string",
			src:  "services:\n  web:\n    command: /bin/echo hi\n",
			want: `c.yaml:3:14: command must be a list of strings (write ["/bin/sh", "-c", "..."] to run a shell line)`,
		},
		{
			name: "command a mapping",
			src:  "services:\n  web:\n    command: {prog: a}\n",
			want: `c.yaml:3:14: command must be a list of strings like ["/usr/bin/app", "--flag"] (got a mapping)`,
		},
		{
			name: "command with a mapping element",
			src:  "services:\n  web:\n    command: [/bin/echo, {a: 1}]\n",
			want: `c.yaml:3:26: command[1] must be a string (got a mapping)`,
		},
		{
			name: "command with a null element",
			src:  "services:\n  web:\n    command:\n      - /bin/echo\n      - ~\n",
			want: `c.yaml:5:9: command[1] must be a string (got null)`,
		},
		{
			name: "command with a NUL byte",
			src:  "services:\n  web:\n    command: [/bin/echo, \"a\\0b\"]\n",
			want: `c.yaml:3:26: command[1] contains a NUL byte (a program argument cannot hold "\0")`,
		},
		{
			name: "restart not a mapping",
			src:  "services:\n  web:\n    command: [a]\n    restart: always\n",
			want: `c.yaml:4:14: restart must be a mapping of policy, min_uptime, backoff_initial and backoff_max (write restart: {policy: always}) (got "always")`,
		},
		{
			name: "bad duration",
			src:  "shutdown_timeout: ten\nservices: {web: {command: [a]}}\n",
			want: `c.yaml:1:19: shutdown_timeout must be a duration like "5s" or "1m30s" (got "ten")`,
		},
		{
			name: "duration a list",
			src:  "shutdown_timeout: [10s]\nservices: {web: {command: [a]}}\n",
			want: `c.yaml:1:19: shutdown_timeout must be a duration like "5s" or "1m30s" (got a list)`,
		},
		{
			name: "number as duration",
			src:  "shutdown_timeout: 10\nservices: {web: {command: [a]}}\n",
			want: `c.yaml:1:19: shutdown_timeout must be a duration with a unit (got 10; write "10s")`,
		},
		{
			name: "quoted number as duration",
			src:  "services:\n  web:\n    command: [a]\n    restart: {min_uptime: \"1.5\"}\n",
			want: `c.yaml:4:27: min_uptime must be a duration with a unit (got "1.5"; write "1.5s")`,
		},
		{
			name: "zero duration",
			src:  "services:\n  web:\n    command: [a]\n    stop_timeout: 0s\n",
			want: `c.yaml:4:19: stop_timeout must be more than 0 (got "0s")`,
		},
		{
			name: "negative duration",
			src:  "services:\n  web:\n    command: [a]\n    restart:\n      backoff_initial: -1s\n",
			want: `c.yaml:5:24: backoff_initial must be more than 0 (got "-1s")`,
		},
		{
			name: "negative min_uptime",
			src:  "services:\n  web:\n    command: [a]\n    restart:\n      min_uptime: -1s\n",
			want: `c.yaml:5:19: min_uptime must be more than 0 (got "-1s")`,
		},
		{
			name: "min_uptime under the floor",
			src:  "services:\n  web:\n    command: [a]\n    restart: {min_uptime: 99ms}\n",
			want: `c.yaml:4:27: min_uptime must be at least 100ms (got 99ms; a shorter one would let a crashing worker restart in a busy loop)`,
		},
		{
			name: "backoff_initial under the floor",
			src:  "services:\n  web:\n    command: [a]\n    restart: {backoff_initial: 1ns}\n",
			want: `c.yaml:4:32: backoff_initial must be at least 10ms (got 1ns)`,
		},
		{
			name: "zero min_uptime",
			src:  "services:\n  web:\n    command: [a]\n    restart: {min_uptime: 0s}\n",
			want: `c.yaml:4:27: min_uptime must be more than 0 (got "0s")`,
		},
		{
			name: "duration over 24h",
			src:  "services:\n  web:\n    command: [a]\n    stop_timeout: 25h\n",
			want: `c.yaml:4:19: stop_timeout must be at most 24h (got "25h")`,
		},
		{
			name: "empty command",
			src:  "services:\n  web:\n    command: []\n",
			want: `c.yaml:3:14: command is empty (give at least the program to run, as in ["/usr/bin/app"])`,
		},
		{
			name: "command with empty first element",
			src:  "services:\n  web:\n    command: [\"\", --flag]\n",
			want: `c.yaml:3:15: command[0] is empty (it names the program to run, as in "/usr/bin/app")`,
		},
		{
			name: "both command and run",
			src:  "services:\n  web:\n    command: [a]\n    run: printer\n",
			want: `c.yaml:3:5: service "web" has both command and run (keep one: command runs a program, run names a Go service)`,
		},
		{
			name: "neither command nor run",
			src:  "services:\n  web:\n    workers: 2\n",
			want: `c.yaml:3:5: service "web" has neither command nor run (add one: command runs a program, run names a Go service)`,
		},
		{
			name: "service left empty",
			src:  "services:\n  web:\n",
			want: `c.yaml:2:3: service "web" has neither command nor run (add one: command runs a program, run names a Go service)`,
		},
		{
			name: "service a list",
			src:  "services:\n  web: [a, b]\n",
			want: `c.yaml:2:8: service "web" must be a mapping with command or run (got a list)`,
		},
		{
			name: "unknown run name",
			src:  "services:\n  p:\n    run: prnter\n",
			want: `c.yaml:3:10: unknown Go service "prnter" (this program registers: printer, ticker)`,
		},
		{
			name: "unknown run name, no Go services",
			src:  "services:\n  p:\n    run: printer\n",
			noGo: true,
			want: `c.yaml:3:10: unknown Go service "printer" (this program registers no Go services; use command: to run a program)`,
		},
		{
			name: "service name starting with a digit",
			src:  "services:\n  9lives:\n    command: [a]\n",
			want: `c.yaml:2:3: invalid service name "9lives" (a name starts with a letter and has only letters, digits, "-" and "_", at most 63 bytes)`,
		},
		{
			name: "service name with a space",
			src:  "services:\n  my app:\n    command: [a]\n",
			want: `c.yaml:2:3: invalid service name "my app" (a name starts with a letter and has only letters, digits, "-" and "_", at most 63 bytes)`,
		},
		{
			name: "service name too long",
			src:  "services:\n  " + long + ":\n    command: [a]\n",
			want: `c.yaml:2:3: invalid service name "` + long + `" (a name starts with a letter and has only letters, digits, "-" and "_", at most 63 bytes)`,
		},
		{
			name: "bad env name",
			src:  "services:\n  web:\n    command: [a]\n    env:\n      MY-VAR: x\n",
			want: `c.yaml:5:7: invalid env name "MY-VAR" (a name starts with a letter or "_" and has only letters, digits and "_")`,
		},
		{
			name: "reserved GOTYLEDON_ env name",
			src:  "services:\n  web:\n    command: [a]\n    env:\n      GOTYLEDON_WORKER: 1\n",
			want: `c.yaml:5:7: env name "GOTYLEDON_WORKER" is reserved (gotyledon sets the GOTYLEDON_ variables of each worker itself; pick another name)`,
		},
		{
			name: "reserved systemd env name",
			src:  "services:\n  web:\n    command: [a]\n    env:\n      LISTEN_FDS: 3\n",
			want: `c.yaml:5:7: env name "LISTEN_FDS" is reserved (gotyledon removes this systemd variable from workers' environment; pick another name)`,
		},
		{
			name: "null env value",
			src:  "services:\n  web:\n    command: [a]\n    env:\n      FOO: ~\n",
			want: `c.yaml:5:12: env FOO has no value (write FOO: "" for an empty value)`,
		},
		{
			name: "left out env value",
			src:  "services:\n  web:\n    command: [a]\n    env:\n      FOO:\n",
			want: `c.yaml:5:7: env FOO has no value (write FOO: "" for an empty value)`,
		},
		{
			name: "bad stop_signal",
			src:  "services:\n  web:\n    command: [a]\n    stop_signal: SIGSTOP\n",
			want: `c.yaml:4:18: invalid stop_signal "SIGSTOP" (use one of HUP, INT, QUIT, KILL, USR1, USR2, TERM, WINCH, with or without "SIG")`,
		},
		{
			name: "numeric stop_signal",
			src:  "services:\n  web:\n    command: [a]\n    stop_signal: 15\n",
			want: `c.yaml:4:18: invalid stop_signal "15" (use one of HUP, INT, QUIT, KILL, USR1, USR2, TERM, WINCH, with or without "SIG")`,
		},
		{
			name: "backoff_max below backoff_initial",
			src:  "services:\n  web:\n    command: [a]\n    restart:\n      backoff_max: 1s\n      backoff_initial: 2s\n",
			want: `c.yaml:5:20: backoff_max must be at least backoff_initial (got 1s, backoff_initial is 2s)`,
		},
		{
			name: "backoff_initial above default backoff_max",
			src:  "services:\n  web:\n    command: [a]\n    restart: {backoff_initial: 1m}\n",
			want: `c.yaml:4:32: backoff_initial must be at most backoff_max (got 1m, backoff_max is 30s by default; raise it too)`,
		},
		{
			name: "dir empty",
			src:  "services:\n  web:\n    command: [a]\n    dir: \"\"\n",
			want: `c.yaml:4:10: dir is empty (write a directory path, or leave dir out to run in gotyledon's working directory)`,
		},
		{
			name: "dir with tilde",
			src:  "services:\n  web:\n    command: [a]\n    dir: ~/app\n",
			want: `c.yaml:4:10: dir "~/app" starts with "~" (gotyledon does not expand "~"; write the full path)`,
		},
		{
			name: "no services key",
			src:  "# gotyledon\nshutdown_timeout: 5s\n",
			want: `c.yaml:1:1: missing "services" key (add "services:" with at least one service under it)`,
		},
		{
			name: "services left empty",
			src:  "shutdown_timeout: 5s\nservices:\n",
			want: `c.yaml:2:1: services is empty (list at least one service, e.g. "web: {command: [/usr/bin/web]}")`,
		},
		{
			name: "services an empty mapping",
			src:  "services: {}\n",
			want: `c.yaml:1:11: services is empty (list at least one service, e.g. "web: {command: [/usr/bin/web]}")`,
		},
		{
			name: "services a list",
			src:  "services:\n  - web\n",
			want: `c.yaml:2:3: services must be a mapping from service names to services (got a list)`,
		},
		{
			name: "merge key",
			src:  "services:\n  web:\n    command: [a]\n  db:\n    <<: {workers: 2}\n    command: [b]\n",
			want: `c.yaml:5:5: merge keys ("<<") are not supported (write the keys out; an alias can still stand for a whole value, as in "restart: *defaults")`,
		},
		{
			name: "multiple documents",
			src:  "services:\n  web: {command: [a]}\n---\nservices:\n  db: {command: [b]}\n",
			want: `c.yaml:3:1: second YAML document (a config file holds exactly one; remove this "---" and merge what follows into the first document)`,
		},
		{
			name: "unknown alias",
			src:  "services:\n  web:\n    command: *cmd\n",
			want: `c.yaml:3:14: unknown alias *cmd (define the anchor &cmd on a value before this point)`,
		},
		{
			name: "recursive alias",
			src:  "services:\n  web:\n    command: &cmd [a, *cmd]\n",
			want: `c.yaml:3:23: alias *cmd is inside the value anchored as &cmd (an alias must refer to a complete earlier value)`,
		},
		{
			name: "tag",
			src:  "services:\n  web:\n    command: [a]\n    workers: !!int \"2\"\n",
			want: `c.yaml:4:14: unsupported tag !!int (remove it; each key reads its value as the type it needs)`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			goServices := testGoServices
			if tt.noGo {
				goServices = nil
			}
			cfg, err := Parse("c.yaml", []byte(tt.src), goServices)
			if err == nil {
				t.Fatalf("Parse succeeded (%+v), want error:\n%s", cfg, tt.want)
			}
			if cfg != nil {
				t.Errorf("Parse returned a config with its error")
			}
			var list ErrorList
			if !errors.As(err, &list) {
				t.Fatalf("error is %T, not an ErrorList: %v", err, err)
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("got error\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

// TestParseReportsAllErrors checks that errors are all reported, in line
// order even when found out of order (services are checked after
// shutdown_timeout, which here comes last).
func TestParseReportsAllErrors(t *testing.T) {
	t.Parallel()
	src := `services:
  web:
    command: []
    workers: lots
shutdown_timeout: forever
`
	_, err := Parse("c.yaml", []byte(src), nil)
	var list ErrorList
	if !errors.As(err, &list) {
		t.Fatalf("error is %T, not an ErrorList: %v", err, err)
	}
	want := []string{
		`c.yaml:3:14: command is empty (give at least the program to run, as in ["/usr/bin/app"])`,
		`c.yaml:4:14: workers must be a whole number from 0 to 10000 (got "lots")`,
		`c.yaml:5:19: shutdown_timeout must be a duration like "5s" or "1m30s" (got "forever")`,
	}
	if len(list) != len(want) {
		t.Fatalf("got %d errors, want %d:\n%v", len(list), len(want), err)
	}
	for i, e := range list {
		if e.Error() != want[i] {
			t.Errorf("error %d = %q, want %q", i, e.Error(), want[i])
		}
	}
	if got := err.Error(); got != strings.Join(want, "\n") {
		t.Errorf("Error() =\n%s\nwant\n%s", got, strings.Join(want, "\n"))
	}
	var one *Error
	if !errors.As(err, &one) || one.Pos != (Position{File: "c.yaml", Line: 3, Col: 14}) {
		t.Errorf("errors.As(*Error) = %v, want the first error", one)
	}
}

// TestParseAliasErrorsOnce checks that a bad value reached through two
// aliases is reported once, where it is written.
func TestParseAliasErrorsOnce(t *testing.T) {
	t.Parallel()
	src := `services:
  a:
    command: &cmd [x, {y: 1}]
  b:
    command: *cmd
`
	_, err := Parse("c.yaml", []byte(src), nil)
	want := `c.yaml:3:23: command[1] must be a string (got a mapping)`
	if err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
}

func TestParseFull(t *testing.T) {
	t.Parallel()
	src := `# every key, with aliases
shutdown_timeout: 1m
services:
  producer:
    command: ["/usr/local/bin/producer", --port, 8080, true]
    workers: 2
    env: &env
      LANG: C.UTF-8
      PORT: 8080
      DEBUG: true
      RATIO: 1.50
      HEX: 0x1F
      EMPTY: ""
      QUOTED: 'it''s'
      _UNDER: "a\tb"
    dir: app/../producer
    stop_signal: int
    stop_timeout: 5s
    ready: notify
    ready_timeout: 10s
    watchdog: 30s
    restart: &restart
      min_uptime: 100ms
      backoff_initial: 1s
      backoff_max: 1m30s
  printer:
    run: printer
    workers: &none 0
    env: *env
    dir: /srv//printer/
    stop_signal: SIGHUP
    restart: *restart
  "ticker":
    run: ticker
    workers: 10000
`
	cfg, err := Parse("/etc/gotyledon/gotyledon.yaml", []byte(src), testGoServices)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"LANG": "C.UTF-8", "PORT": "8080", "DEBUG": "true", "RATIO": "1.50",
		"HEX": "0x1F", "EMPTY": "", "QUOTED": "it's", "_UNDER": "a\tb",
	}
	restart := Restart{MinUptime: 100 * time.Millisecond, BackoffInitial: time.Second, BackoffMax: 90 * time.Second}
	file := "/etc/gotyledon/gotyledon.yaml"
	want := &Config{
		File:            file,
		ShutdownTimeout: time.Minute,
		Services: []*Service{{
			Name:        "producer",
			Command:     []string{"/usr/local/bin/producer", "--port", "8080", "true"},
			Workers:     2,
			Env:         env,
			Dir:         "/etc/gotyledon/producer",
			StopSignal:  syscall.SIGINT,
			StopTimeout: 5 * time.Second,
			Restart:     restart,
			Ready:       ReadyNotify, ReadyTimeout: 10 * time.Second, Watchdog: 30 * time.Second, Recycle: Recycle{Jitter: DefaultRecycleJitter},
			Pos: Position{File: file, Line: 4, Col: 3},
		}, {
			Name:         "printer",
			Run:          "printer",
			Workers:      0,
			Env:          env,
			Dir:          "/srv/printer",
			StopSignal:   syscall.SIGHUP,
			StopTimeout:  time.Minute,
			Restart:      restart,
			ReadyTimeout: DefaultReadyTimeout, Recycle: Recycle{Jitter: DefaultRecycleJitter},
			Pos: Position{File: file, Line: 26, Col: 3},
		}, {
			Name:         "ticker",
			Run:          "ticker",
			Workers:      10000,
			Env:          map[string]string{},
			StopSignal:   syscall.SIGTERM,
			StopTimeout:  time.Minute,
			Restart:      Restart{MinUptime: DefaultMinUptime, BackoffInitial: DefaultBackoffInitial, BackoffMax: DefaultBackoffMax},
			ReadyTimeout: DefaultReadyTimeout, Recycle: Recycle{Jitter: DefaultRecycleJitter},
			Pos: Position{File: file, Line: 33, Col: 3},
		}},
		Broker: SocketAccess{GID: -1}, Control: Control{SocketAccess: SocketAccess{GID: -1}},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("got\n%s\nwant\n%s", dump(cfg), dump(want))
	}
	if s := cfg.Service("printer"); s != cfg.Services[1] {
		t.Errorf("Service(printer) = %v", s)
	}
	if s := cfg.Service("nope"); s != nil {
		t.Errorf("Service(nope) = %v, want nil", s)
	}
}

func dump(c *Config) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %v broker %+v\n", c.File, c.ShutdownTimeout, c.Broker)
	for _, s := range c.Services {
		fmt.Fprintf(&b, "%+v\n", *s)
	}
	for _, q := range c.Queues {
		fmt.Fprintf(&b, "queue %+v\n", *q)
	}
	return b.String()
}

func TestParseDefaults(t *testing.T) {
	t.Parallel()
	cfg, err := Parse("c.yaml", []byte("services:\n  web:\n    command: [/bin/web]\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := &Config{
		File:            "c.yaml",
		ShutdownTimeout: DefaultShutdownTimeout,
		Services: []*Service{{
			Name:        "web",
			Command:     []string{"/bin/web"},
			Workers:     DefaultWorkers,
			Env:         map[string]string{},
			StopSignal:  DefaultStopSignal,
			StopTimeout: DefaultShutdownTimeout,
			Restart: Restart{
				MinUptime:      DefaultMinUptime,
				BackoffInitial: DefaultBackoffInitial,
				BackoffMax:     DefaultBackoffMax,
			},
			Ready:        ReadyUptime,
			ReadyTimeout: DefaultReadyTimeout, Recycle: Recycle{Jitter: DefaultRecycleJitter},
			Pos: Position{File: "c.yaml", Line: 2, Col: 3},
		}},
		Broker: SocketAccess{GID: -1}, Control: Control{SocketAccess: SocketAccess{GID: -1}},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("got\n%s\nwant\n%s", dump(cfg), dump(want))
	}
}

// TestParseStopTimeoutDefault checks that stop_timeout defaults to
// shutdown_timeout even when shutdown_timeout comes after the services.
func TestParseStopTimeoutDefault(t *testing.T) {
	t.Parallel()
	src := "services:\n  web: {command: [a]}\n  db: {command: [b], stop_timeout: 3s}\nshutdown_timeout: 45s\n"
	cfg, err := Parse("c.yaml", []byte(src), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Service("web").StopTimeout; got != 45*time.Second {
		t.Errorf("web stop timeout = %v, want 45s", got)
	}
	if got := cfg.Service("db").StopTimeout; got != 3*time.Second {
		t.Errorf("db stop timeout = %v, want 3s", got)
	}
}

func TestParseRelativeDir(t *testing.T) {
	t.Parallel()
	src := "services:\n  web:\n    command: [a]\n    dir: data/web\n"
	cfg, err := Parse(filepath.Join("conf", "g.yaml"), []byte(src), nil)
	if err != nil {
		t.Fatal(err)
	}
	base, err := filepath.Abs("conf")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cfg.Services[0].Dir, filepath.Join(base, "data", "web"); got != want {
		t.Errorf("Dir = %q, want %q", got, want)
	}
}

func TestParseStopSignals(t *testing.T) {
	t.Parallel()
	tests := map[string]syscall.Signal{
		"TERM": syscall.SIGTERM, "SIGTERM": syscall.SIGTERM, "sigterm": syscall.SIGTERM,
		"Int": syscall.SIGINT, "hup": syscall.SIGHUP, "SIGQUIT": syscall.SIGQUIT,
		"kill": syscall.SIGKILL, "SigUsr1": syscall.SIGUSR1, "usr2": syscall.SIGUSR2,
		"WINCH": syscall.SIGWINCH,
	}
	for name, want := range tests {
		src := "services:\n  web:\n    command: [a]\n    stop_signal: " + name + "\n"
		cfg, err := Parse("c.yaml", []byte(src), nil)
		if err != nil {
			t.Errorf("stop_signal %s: %v", name, err)
			continue
		}
		if got := cfg.Services[0].StopSignal; got != want {
			t.Errorf("stop_signal %s = %v, want %v", name, got, want)
		}
	}
}

func TestLoad(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "gotyledon.yaml")
	if err := os.WriteFile(path, []byte("services:\n  web:\n    command: [a]\n    dir: www\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.File != path || cfg.Services[0].Dir != filepath.Join(dir, "www") {
		t.Errorf("File = %q, Dir = %q", cfg.File, cfg.Services[0].Dir)
	}

	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("services: {web: {command: [a], workers: -1}}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Load(bad, nil)
	if want := bad + ":1:41: workers must be a whole number from 0 to 10000 (got -1)"; err == nil || err.Error() != want {
		t.Errorf("Load(bad) = %v, want %s", err, want)
	}
}

func TestLoadMissingFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "missing.yaml")
	cfg, err := Load(path, nil)
	if cfg != nil || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load = %v, %v; want fs.ErrNotExist", cfg, err)
	}
	if want := "load config: open " + path + ": no such file or directory"; err.Error() != want {
		t.Errorf("error = %q, want %q", err, want)
	}
	var list ErrorList
	if errors.As(err, &list) {
		t.Errorf("a read error is not an ErrorList")
	}
}

func TestErrorListFormat(t *testing.T) {
	t.Parallel()
	list := ErrorList{
		{Pos: Position{File: "f", Line: 2, Col: 1}, Msg: "b"},
		{Pos: Position{File: "f", Line: 1, Col: 9}, Msg: "a2"},
		{Pos: Position{File: "f", Line: 1, Col: 3}, Msg: "a1"},
	}
	if got, want := list.Error(), "f:1:3: a1\nf:1:9: a2\nf:2:1: b"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if list[0].Msg != "b" {
		t.Errorf("Error() reordered the list")
	}
	if got := (Position{Line: 4, Col: 2}).String(); got != "4:2" {
		t.Errorf("Position without file = %q, want 4:2", got)
	}
	if got := len(list.Unwrap()); got != 3 {
		t.Errorf("Unwrap() has %d errors, want 3", got)
	}
}

// TestParseAliasBomb checks that aliases of aliases cannot make a small file
// stand for a huge tree ("billion laughs").
func TestParseAliasBomb(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	b.WriteString("services:\n  s0:\n    command: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n")
	for i := 1; i < 10; i++ {
		fmt.Fprintf(&b, "  s%d:\n    command: &l%d [%s]\n", i, i, strings.Repeat(fmt.Sprintf("*l%d, ", i-1), 10))
	}
	start := time.Now()
	_, err := Parse("c.yaml", []byte(b.String()), nil)
	want := "c.yaml:13:54: aliases expand the file to over 1000000 values here (a configuration needs far fewer; use fewer or smaller aliases)"
	if err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Parse took %v", d)
	}
}
