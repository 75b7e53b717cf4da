package config

import (
	"strings"
	"testing"
)

func TestRestartPolicy(t *testing.T) {
	for src, want := range map[string]RestartPolicy{
		"services:\n  m:\n    command: [a]\n":                                    RestartAlways,
		"services:\n  m:\n    command: [a]\n    restart: {policy: never}\n":      RestartNever,
		"services:\n  m:\n    command: [a]\n    restart: {policy: on-failure}\n": RestartOnFailure,
		"services:\n  m:\n    command: [a]\n    restart: {policy: always}\n":     RestartAlways,
	} {
		cfg, err := Parse("c.yaml", []byte(src), nil)
		if err != nil || cfg.Service("m").Restart.Policy != want {
			t.Errorf("%q: %v, policy %v; want %v", src, err, cfg.Service("m").Restart.Policy, want)
		}
	}
	_, err := Parse("c.yaml", []byte("services:\n  m:\n    command: [a]\n    restart: {policy: once}\n"), nil)
	if err == nil || err.Error() != `c.yaml:4:23: restart policy must be "always", "on-failure" or "never" (got "once")` {
		t.Errorf("policy once: %v", err)
	}
}

func TestRestartPolicyDeclared(t *testing.T) {
	var d Declaration
	d.Service("migrate", Command("/bin/true"), RestartWith(RestartOnFailure))
	cfg, err := d.Resolve(nil)
	if err != nil || cfg.Service("migrate").Restart.Policy != RestartOnFailure {
		t.Errorf("RestartWith(RestartOnFailure): %v", err)
	}
	var bad Declaration
	bad.Service("migrate", Command("/bin/true"), RestartWith(RestartPolicy(9)))
	if _, err := bad.Resolve(nil); err == nil || !strings.Contains(err.Error(), `services.migrate.restart.policy (declared in Go): restart policy must be "always", "on-failure" or "never" (got RestartPolicy(9))`) {
		t.Errorf("RestartPolicy(9): %v", err)
	}
}
