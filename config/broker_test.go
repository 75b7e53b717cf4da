package config

import (
	"errors"
	"reflect"
	"strings"
	"syscall"
	"testing"
)

func TestParseBrokerAndQueues(t *testing.T) {
	t.Parallel()
	src := `broker:
  socket: run/queue.sock
  group: 0
  allow_uids: [1000, 1001]
  allow_gids: [50]
queues:
  jobs: {capacity: 5}
  results:
services:
  web: {command: [a]}
`
	cfg, err := Parse("/etc/gotyledon/g.yaml", []byte(src), nil)
	if err != nil {
		t.Fatal(err)
	}
	wantBroker := SocketAccess{Socket: "/etc/gotyledon/run/queue.sock", Group: "0", GID: 0, AllowUIDs: []int{1000, 1001}, AllowGIDs: []int{50}}
	if !reflect.DeepEqual(cfg.Broker, wantBroker) {
		t.Errorf("broker %+v, want %+v", cfg.Broker, wantBroker)
	}
	wantQueues := []*Queue{
		{Name: "jobs", Capacity: 5, Store: StoreMemory, Pos: Position{File: "/etc/gotyledon/g.yaml", Line: 7, Col: 3}},
		{Name: "results", Capacity: DefaultCapacity, Store: StoreMemory, Pos: Position{File: "/etc/gotyledon/g.yaml", Line: 8, Col: 3}},
	}
	if !reflect.DeepEqual(cfg.Queues, wantQueues) {
		t.Errorf("queues %+v, want %+v", cfg.Queues, wantQueues)
	}
}

func TestParseBrokerGroupByName(t *testing.T) {
	t.Parallel()
	cfg, err := Parse("g.yaml", []byte("broker: {group: root}\nservices:\n  web: {command: [a]}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Broker.Group != "root" || cfg.Broker.GID != 0 {
		t.Errorf("group root resolved to %+v", cfg.Broker)
	}
}

func TestParseBrokerAndQueueErrors(t *testing.T) {
	t.Parallel()
	const svc = "services:\n  web: {command: [a]}\n"
	long := "/" + strings.Repeat("s", MaxSocketPath)
	for _, tc := range []struct{ name, src, want string }{
		{"queues a list", "queues: [jobs]\n" + svc,
			`g.yaml:1:9: queues must be a mapping from queue names to queues (e.g. "jobs: {capacity: 10000}") (got a list)`},
		{"bad queue name", "queues:\n  2jobs: {}\n" + svc,
			`g.yaml:2:3: invalid queue name "2jobs" (a name starts with a letter and has only letters, digits, "-" and "_", at most 63 bytes)`},
		{"capacity zero", "queues:\n  jobs: {capacity: 0}\n" + svc,
			`g.yaml:2:20: capacity must be a whole number from 1 to 10000000 (got 0)`},
		{"capacity absurd", "queues:\n  jobs: {capacity: 100000000}\n" + svc,
			`g.yaml:2:20: capacity must be a whole number from 1 to 10000000 (got 100000000)`},
		{"unknown queue key", "queues:\n  jobs: {capactiy: 10}\n" + svc,
			`g.yaml:2:10: unknown key "capactiy" in queue "jobs" (did you mean "capacity"? known keys: ack_wait, capacity, pack, replicas, schedule, store)`},
		{"duplicate queue", "queues:\n  jobs: {}\n  jobs: {}\n" + svc,
			`g.yaml:3:3: duplicate queue name "jobs" (first at line 2, col 3; each queue name may appear once)`},
		{"socket too long", "broker: {socket: " + long + "}\n" + svc,
			`g.yaml:1:18: socket path "` + long + `" is 108 bytes long (a Unix socket path has at most 107; choose a shorter one)`},
		{"unknown group", "broker: {group: no-such-group-here}\n" + svc,
			`g.yaml:1:17: unknown group "no-such-group-here" (no such group on this machine; create it, or give its number)`},
		{"allow_uids not a list", "broker: {allow_uids: 1000}\n" + svc,
			`g.yaml:1:22: allow_uids must be a list of user ids, e.g. [1000, 1001] (got 1000)`},
		{"negative uid", "broker: {allow_uids: [-1]}\n" + svc,
			`g.yaml:1:23: allow_uids[0] must be a whole number from 0 to 2147483647 (got -1)`},
		{"unknown broker key", "broker: {sokcet: /run/x.sock}\n" + svc,
			`g.yaml:1:10: unknown key "sokcet" in broker (did you mean "socket"? known keys: allow_gids, allow_uids, group, socket)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("g.yaml", []byte(tc.src), nil)
			var list ErrorList
			if !errors.As(err, &list) || err.Error() != tc.want {
				t.Errorf("got\n%v\nwant\n%s", err, tc.want)
			}
		})
	}
}

func TestParseReloadSignal(t *testing.T) {
	t.Parallel()
	cfg, err := Parse("g.yaml", []byte("services:\n  web: {command: [a], reload_signal: hup}\n  db: {command: [b]}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Services[0].ReloadSignal != syscall.SIGHUP || cfg.Services[1].ReloadSignal != 0 {
		t.Errorf("reload signals %v and %v, want SIGHUP and none", cfg.Services[0].ReloadSignal, cfg.Services[1].ReloadSignal)
	}
	for src, want := range map[string]string{
		"services:\n  web: {command: [a], reload_signal: KILL}\n":                    `g.yaml:2:38: reload_signal KILL would kill the workers at every reload (use HUP, USR1 or USR2, which the workers can handle)`,
		"services:\n  web: {command: [a], reload_signal: PIPE}\n":                    `g.yaml:2:38: invalid reload_signal "PIPE" (use one of HUP, INT, QUIT, KILL, USR1, USR2, TERM, WINCH, with or without "SIG")`,
		"services:\n  web: {command: [a], reload_signal: TERM}\n":                    `g.yaml:2:38: reload_signal SIGTERM is the service's stop_signal: every reload would stop its workers (use HUP, USR1 or USR2, or another stop_signal)`,
		"services:\n  web: {command: [a], stop_signal: USR1, reload_signal: USR1}\n": `g.yaml:2:57: reload_signal SIGUSR1 is the service's stop_signal: every reload would stop its workers (use HUP, USR1 or USR2, or another stop_signal)`,
		"services:\n  web: {reload_signal: INT, run: web, stop_signal: QUIT}\n":      `g.yaml:2:24: reload_signal SIGINT stops a Go service's workers (their runtime stops on TERM and INT): use HUP, USR1 or USR2`,
	} {
		if _, err := Parse("g.yaml", []byte(src), []string{"web"}); err == nil || err.Error() != want {
			t.Errorf("got %v, want %s", err, want)
		}
	}
}

func TestParseControl(t *testing.T) {
	t.Parallel()
	src := "control:\n  socket: ctl.sock\n  group: 0\n  allow_uids: [1000]\n  metrics_listen: 127.0.0.1:9464\nservices:\n  web: {command: [a], replace: all}\n  db: {command: [b]}\n"
	cfg, err := Parse("/etc/gotyledon/g.yaml", []byte(src), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := Control{SocketAccess: SocketAccess{Socket: "/etc/gotyledon/ctl.sock", Group: "0", GID: 0, AllowUIDs: []int{1000}}, MetricsListen: "127.0.0.1:9464"}
	if !reflect.DeepEqual(cfg.Control, want) {
		t.Errorf("control %+v, want %+v", cfg.Control, want)
	}
	if cfg.Services[0].Replace != ReplaceAll || cfg.Services[1].Replace != ReplaceRolling {
		t.Errorf("replace %v and %v, want all and rolling", cfg.Services[0].Replace, cfg.Services[1].Replace)
	}
	def, err := Parse("g.yaml", []byte("services:\n  web: {command: [a]}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(def.Control, Control{SocketAccess: SocketAccess{GID: -1}}) {
		t.Errorf("default control %+v, want no socket path, no group, no metrics address", def.Control)
	}
}

func TestParseControlErrors(t *testing.T) {
	t.Parallel()
	const svc = "services:\n  web: {command: [a]}\n"
	for _, tc := range []struct{ name, src, want string }{
		{"control a list", "control: [a]\n" + svc,
			`g.yaml:1:10: control must be a mapping of socket, group, allow_uids, allow_gids and metrics_listen (got a list)`},
		{"unknown control key", "control: {metrics: 1}\n" + svc,
			`g.yaml:1:11: unknown key "metrics" in control (known keys: allow_gids, allow_uids, group, metrics_listen, socket)`},
		{"metrics_listen no port", "control: {metrics_listen: localhost}\n" + svc,
			`g.yaml:1:27: metrics_listen must be "host:port", e.g. "127.0.0.1:9464" (got "localhost")`},
		{"metrics_listen bad port", "control: {metrics_listen: \"127.0.0.1:http\"}\n" + svc,
			`g.yaml:1:27: metrics_listen's port must be a number from 0 (any free port, logged) to 65535, e.g. "127.0.0.1:9464" (got "http")`},
		{"metrics_listen host name", "control: {metrics_listen: \"example.com:9464\"}\n" + svc,
			`g.yaml:1:27: metrics_listen's host must be an IP address or "localhost", e.g. "127.0.0.1:9464" (got "example.com")`},
		{"metrics_listen without a host", "control: {metrics_listen: \":9464\"}\n" + svc,
			`g.yaml:1:27: metrics_listen needs a host: "127.0.0.1:9464" for this machine only, "0.0.0.0:9464" for every interface (got ":9464")`},
		{"control and queue sockets the same", "broker: {socket: /run/g/a.sock}\ncontrol: {socket: /run/g/a.sock}\n" + svc,
			`g.yaml:2:19: control socket "/run/g/a.sock" is the queue socket's path too (give each socket a path of its own)`},
		{"replace unknown", "services:\n  web: {command: [a], replace: blue-green}\n",
			`g.yaml:2:32: replace must be "rolling" (one worker at a time) or "all" (all at once) (got "blue-green")`},
		{"ready unknown", "services:\n  web: {command: [a], ready: soon}\n",
			`g.yaml:2:30: ready must be "uptime" (ready once it has run min_uptime) or "notify" (ready when it sends READY=1) (got "soon")`},
		{"ready_timeout zero", "services:\n  web: {command: [a], ready_timeout: 0s}\n",
			`g.yaml:2:38: ready_timeout must be more than 0 (got "0s")`},
		{"ready_timeout too short", "services:\n  web: {command: [a], ready_timeout: 1ns}\n",
			`g.yaml:2:38: ready_timeout must be at least 100ms (got 1ns; a shorter one would stop workers in a busy loop)`},
		{"watchdog too short", "services:\n  web: {command: [a], watchdog: 50ms}\n",
			`g.yaml:2:33: watchdog must be at least 100ms (got 50ms; a shorter one would stop workers in a busy loop)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("g.yaml", []byte(tc.src), nil)
			var list ErrorList
			if !errors.As(err, &list) || err.Error() != tc.want {
				t.Errorf("got\n%v\nwant\n%s", err, tc.want)
			}
		})
	}
}
