package config

import (
	"errors"
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
	}
	for _, s := range seeds {
		f.Add([]byte(s))
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
