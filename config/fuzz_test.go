package config

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse checks that Parse never panics and that what it accepts keeps
// the promises the supervisor relies on without re-validating.
func FuzzParse(f *testing.F) {
	seeds := []string{
		"",
		"services:\n  web:\n    command: [/bin/web, --port, 8080]\n",
		"shutdown_timeout: 1m\nservices:\n  p:\n    run: printer\n    workers: 3\n    env: {A: 1, B: true}\n    restart: {min_uptime: 0s, backoff_initial: 1s, backoff_max: 1m}\n",
		"services:\n  a:\n    command: &c [x]\n    restart: &r {backoff_max: 2s}\n  b:\n    command: *c\n    restart: *r\n    stop_signal: sigint\n    dir: rel\n",
		"services:\n  web:\n    wokers: two\n    command: \"echo hi\"\n  9x: {run: nope}\n",
		"services:\n  a:\n    <<: *x\n---\nb: 1\n",
		"services: {a: {command: [], workers: -1, stop_timeout: 10, env: {GOTYLEDON_X: ~}}}\n",
		"- a\n- b\n",
		"services:\n  web: {command: [a}\n",
		"services:\n  web:\n    command: &c [a, *c]\n    workers: !!int 2\n",
		"control: {socket: c.sock, group: 0, allow_uids: [1], metrics_listen: \"127.0.0.1:9464\"}\nservices:\n  w: {command: [a], replace: all}\n",
		"broker: {socket: /run/q.sock, allow_gids: [5]}\nqueues:\n  jobs: {capacity: 3}\nservices:\n  w: {run: printer, reload_signal: HUP}\n",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	// The configurations the project ships are seeds too.
	shipped, _ := filepath.Glob("../deploy/*.yaml")
	for _, path := range shipped {
		if data, err := os.ReadFile(path); err == nil {
			f.Add(data)
		}
	}
	goServices := []string{"printer", "ticker"}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("fuzz.yaml", data, goServices)
		if err != nil {
			var list ErrorList
			if !errors.As(err, &list) || len(list) == 0 {
				t.Fatalf("error is not a non-empty ErrorList: %#v", err)
			}
			for _, e := range list {
				if e.Pos.File != "fuzz.yaml" || e.Pos.Line < 1 || e.Pos.Col < 1 || e.Msg == "" {
					t.Fatalf("error without a proper position or message: %#v", e)
				}
			}
			if cfg != nil {
				t.Fatalf("config returned with an error")
			}
			return
		}
		if cfg == nil || len(cfg.Services) == 0 {
			t.Fatalf("no error but no services: %+v", cfg)
		}
		if cfg.ShutdownTimeout <= 0 || cfg.ShutdownTimeout > MaxDuration {
			t.Fatalf("shutdown timeout %v out of range", cfg.ShutdownTimeout)
		}
		for _, a := range []SocketAccess{cfg.Broker, cfg.Control.SocketAccess} {
			if a.Socket != "" && (!filepath.IsAbs(a.Socket) || len(a.Socket) > MaxSocketPath) {
				t.Fatalf("socket path %q: want absolute and at most %d bytes", a.Socket, MaxSocketPath)
			}
			if (a.Group == "") != (a.GID < 0) {
				t.Fatalf("group %q resolved to gid %d", a.Group, a.GID)
			}
		}
		if addr := cfg.Control.MetricsListen; addr != "" {
			if _, _, err := net.SplitHostPort(addr); err != nil {
				t.Fatalf("metrics_listen %q accepted: %v", addr, err)
			}
		}
		names := map[string]bool{}
		for _, s := range cfg.Services {
			if names[s.Name] || !validServiceName(s.Name) {
				t.Fatalf("bad or repeated service name %q", s.Name)
			}
			names[s.Name] = true
			if (len(s.Command) > 0) == (s.Run != "") {
				t.Fatalf("service %q: want exactly one of Command %q and Run %q", s.Name, s.Command, s.Run)
			}
			if len(s.Command) > 0 && s.Command[0] == "" {
				t.Fatalf("service %q: empty program", s.Name)
			}
			if s.Workers < 0 || s.Workers > MaxWorkers {
				t.Fatalf("service %q: %d workers", s.Name, s.Workers)
			}
			if s.StopTimeout <= 0 || s.StopTimeout > MaxDuration {
				t.Fatalf("service %q: stop timeout %v", s.Name, s.StopTimeout)
			}
			r := s.Restart
			if r.MinUptime < MinUptimeFloor || r.BackoffInitial < BackoffFloor || r.BackoffInitial <= 0 || r.BackoffMax < r.BackoffInitial || r.BackoffMax > MaxDuration {
				t.Fatalf("service %q: bad restart policy %+v", s.Name, r)
			}
			if s.Env == nil {
				t.Fatalf("service %q: nil Env", s.Name)
			}
		}
	})
}
