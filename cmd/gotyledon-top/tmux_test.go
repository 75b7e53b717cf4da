package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gotyledon/gotyledon/supervisor/control"
)

// waitTimeout bounds every wait for the screen or the manager: it only
// stops a hung test, and is generous for a loaded machine.
const waitTimeout = 2 * time.Minute

// binaries builds gotyledon and gotyledon-top into one directory, as
// deploy/install.sh installs them, so that `gotyledon top` finds the view
// next to itself.
func binaries(t *testing.T) (gotyledon string) {
	t.Helper()
	dir := t.TempDir()
	for _, pkg := range []string{"gotyledon", "gotyledon-top"} {
		cmd := exec.Command(goTool(), "build", "-o", filepath.Join(dir, pkg), "../"+pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, out)
		}
	}
	return filepath.Join(dir, "gotyledon")
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// manager is a gotyledon run of a configuration file.
type manager struct {
	t      *testing.T
	cmd    *exec.Cmd
	exited chan struct{}
	log    *os.File
}

// startManager runs `gotyledon run --config cfg` with its sockets in dir,
// and waits until its control socket answers with a status that is
// ready (nil: ready as the manager says it).
func startManager(t *testing.T, prog, cfg, dir string, ready func(control.Status) bool) *manager {
	t.Helper()
	log, err := os.OpenFile(filepath.Join(dir, "manager.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(prog, "run", "--config", cfg)
	cmd.Env = append(os.Environ(), "RUNTIME_DIRECTORY="+dir)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	m := &manager{t: t, cmd: cmd, exited: make(chan struct{}), log: log}
	go func() { _ = cmd.Wait(); close(m.exited) }()
	t.Cleanup(func() { m.stop() })
	cl := control.NewClient(filepath.Join(dir, "control.sock"))
	if ready == nil {
		ready = func(st control.Status) bool { return st.Ready }
	}
	m.waitStatus(cl, "ready", func(st control.Status) bool { return st.PID == cmd.Process.Pid && ready(st) })
	return m
}

// stop ends the manager (SIGTERM, then SIGKILL) and waits for it; safe to
// call twice.
func (m *manager) stop() {
	select {
	case <-m.exited:
		return
	default:
	}
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.exited:
	case <-time.After(waitTimeout):
		_ = m.cmd.Process.Kill()
		<-m.exited
	}
	m.log.Close()
}

// waitStatus polls the manager's status until ok, or fails the test at
// the deadline.
func (m *manager) waitStatus(cl *control.Client, what string, ok func(control.Status) bool) control.Status {
	m.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	var last control.Status
	var lastErr error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		last, lastErr = cl.Status(ctx)
		cancel()
		if lastErr == nil && ok(last) {
			return last
		}
		select {
		case <-m.exited:
			log, _ := os.ReadFile(m.log.Name())
			m.t.Fatalf("the manager exited while waiting for %s; its log:\n%s", what, log)
		case <-time.After(50 * time.Millisecond):
		}
	}
	m.t.Fatalf("waited %v for %s: last status %+v, error %v", waitTimeout, what, last, lastErr)
	return last
}

// terminal is a tmux server of its own with one 80×24 window.
type terminal struct {
	t    *testing.T
	sock string
}

// newTerminal starts command in an 80×24 tmux window, with env added to
// an environment without the test's own colour settings.
func newTerminal(t *testing.T, dir string, env []string, command ...string) *terminal {
	t.Helper()
	tm := &terminal{t: t, sock: filepath.Join(dir, "tmux.sock")}
	line := append([]string{"env", "-u", "NO_COLOR", "-u", "CLICOLOR", "-u", "CLICOLOR_FORCE"}, env...)
	line = append(line, command...)
	tm.run("new-session", "-d", "-s", "top", "-x", "80", "-y", "24", strings.Join(line, " "))
	t.Cleanup(func() { _ = exec.Command("tmux", "-S", tm.sock, "kill-server").Run() })
	return tm
}

func (tm *terminal) run(args ...string) string {
	tm.t.Helper()
	out, err := exec.Command("tmux", append([]string{"-S", tm.sock, "-f", "/dev/null"}, args...)...).CombinedOutput()
	if err != nil {
		tm.t.Fatalf("tmux %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// screen is what the window shows; with escapes, its styles too.
func (tm *terminal) screen(escapes bool) string {
	tm.t.Helper()
	args := []string{"capture-pane", "-p", "-t", "top"}
	if escapes {
		args = append(args, "-e")
	}
	return tm.run(args...)
}

// keys types keys (tmux key names: Up, Down, +, R).
func (tm *terminal) keys(keys ...string) {
	tm.t.Helper()
	tm.run(append([]string{"send-keys", "-t", "top"}, keys...)...)
}

// waitScreen polls the window until ok, or fails the test at the
// deadline with the screen.
func (tm *terminal) waitScreen(what string, ok func(screen string) bool) string {
	tm.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	var s string
	for time.Now().Before(deadline) {
		if s = tm.screen(false); ok(s) {
			return s
		}
		time.Sleep(50 * time.Millisecond)
	}
	tm.t.Fatalf("waited %v for the screen to show %s; it shows:\n%s", waitTimeout, what, s)
	return s
}

func contains(subs ...string) func(string) bool {
	return func(s string) bool {
		for _, sub := range subs {
			if !strings.Contains(s, sub) {
				return false
			}
		}
		return true
	}
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

func needTmux(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Skip("no tmux (.ci/run installs it)")
	}
}

// The operator's path, in a real terminal: `gotyledon top` against a real
// manager, + and - scale printer from 2 to 4 and back, R with a bad file
// says where it is wrong and changes nothing, the manager going away is
// shown and its return picked up, q quits.
func TestTopInTmuxScalesReloadsAndReconnects(t *testing.T) {
	needTmux(t)
	prog := binaries(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "gotyledon.yaml")
	good := fmt.Sprintf(`control: {socket: %s}
services:
  printer:
    command: [/bin/sleep, "3600"]
    workers: 2
  producer:
    command: [/bin/sleep, "3600"]
queues:
  jobs: {}
`, strconv.Quote(filepath.Join(dir, "control.sock")))
	writeFile(t, cfg, good)
	mgr := startManager(t, prog, cfg, dir, nil)
	cl := control.NewClient(filepath.Join(dir, "control.sock"))

	tm := newTerminal(t, dir, nil, prog, "top", "--config", cfg)
	tm.waitScreen("printer with 2 workers, selected", contains("> printer  2/2 running", "producer  1/1 running", "jobs", "q quit"))

	tm.keys("+", "+")
	mgr.waitStatus(cl, "printer at 4 workers", func(st control.Status) bool {
		s := st.Service("printer")
		return s.Desired == 4 && s.Running == 4
	})
	tm.waitScreen("printer at 4/4", contains("printer  4/4 running", "#3", "printer: 4 workers"))
	tm.keys("-", "-")
	mgr.waitStatus(cl, "printer back at 2 workers", func(st control.Status) bool {
		s := st.Service("printer")
		return s.Desired == 2 && s.Running == 2 && len(s.Workers) == 2
	})
	tm.waitScreen("printer at 2/2", contains("printer  2/2 running", "printer: 2 workers"))

	// A bad save: R says where, and nothing changes.
	writeFile(t, cfg, strings.Replace(good, "workers: 2", "workers: two", 1))
	tm.keys("R")
	// The error's FILE:LINE:COL starts a line, and goes on on the next
	// where the screen is too narrow for it.
	s := tm.waitScreen("the refused reload", func(screen string) bool {
		return strings.Contains(screen, "! reload:") && strings.Contains(strings.ReplaceAll(screen, "\n", ""), cfg+":5:14:")
	})
	if st := mgr.waitStatus(cl, "the status", func(control.Status) bool { return true }); st.Service("printer").Running != 2 {
		t.Errorf("a refused reload changed printer: %+v\n%s", st.Service("printer"), s)
	}

	// The manager goes away, and comes back (on the good file).
	writeFile(t, cfg, good)
	mgr.stop()
	tm.waitScreen("the manager gone", contains("! no answer from the manager"))
	mgr = startManager(t, prog, cfg, dir, nil)
	tm.waitScreen("the new manager", contains(fmt.Sprintf("manager pid %d", mgr.cmd.Process.Pid), "reconnected"))

	tm.keys("q")
	deadline := time.Now().Add(waitTimeout)
	for exec.Command("tmux", "-S", tm.sock, "has-session", "-t", "top").Run() == nil {
		if time.Now().After(deadline) {
			t.Fatalf("q did not end gotyledon top:\n%s", tm.screen(false))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// reverse is an SGR sequence that turns reverse video on.
var reverse = regexp.MustCompile(`\x1b\[(?:[0-9]+;)*7m`)

// NO_COLOR: the same screen, its trouble marked without colour.
func TestTopInTmuxHonoursNoColor(t *testing.T) {
	needTmux(t)
	prog := binaries(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "gotyledon.yaml")
	yaml := fmt.Sprintf(`control: {socket: %s}
services:
  crasher:
    command: [/bin/false]
    restart: {min_uptime: 1s, backoff_initial: 30s}
  sleeper:
    command: [/bin/sleep, "3600"]
`, strconv.Quote(filepath.Join(dir, "control.sock")))
	writeFile(t, cfg, yaml)
	// The crasher is never ready: wait for it in backoff.
	startManager(t, prog, cfg, dir, func(st control.Status) bool { return st.Service("crasher").Backoff == 1 })
	for _, noColor := range []bool{false, true} {
		var env []string
		if noColor {
			env = []string{"NO_COLOR=1"}
		}
		tm := newTerminal(t, t.TempDir(), env, prog, "top", "--socket", filepath.Join(dir, "control.sock"))
		tm.waitScreen("the crasher in backoff", contains("!crasher", "in backoff", "sleeper  1/1 running"))
		styled := tm.screen(true)
		colour := strings.Contains(styled, "\x1b[31m") || strings.Contains(styled, "\x1b[32m")
		if colour == noColor {
			t.Errorf("NO_COLOR=%v: colour escapes %v in:\n%q", noColor, colour, styled)
		}
		if !reverse.MatchString(styled) {
			t.Errorf("NO_COLOR=%v: no reverse video for the selected row:\n%q", noColor, styled)
		}
		tm.keys("q")
	}
}

// Started before any manager, without --socket: the view says there is
// none, and shows the manager once one starts where it looks.
func TestTopInTmuxWaitsForAManager(t *testing.T) {
	needTmux(t)
	prog := binaries(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "gotyledon.yaml")
	writeFile(t, cfg, "services:\n  sleeper:\n    command: [/bin/sleep, \"3600\"]\n")
	tm := newTerminal(t, dir, []string{"RUNTIME_DIRECTORY=" + dir}, prog, "top")
	// (What it says depends on the machine: nothing at the places it
	// looks, or a socket left at /run/gotyledon.)
	tm.waitScreen("no manager", contains("! no answer from the manager", "no manager is running"))
	mgr := startManager(t, prog, cfg, dir, nil)
	tm.waitScreen("the manager", contains(fmt.Sprintf("manager pid %d", mgr.cmd.Process.Pid), "sleeper  1/1 running"))
	// Gone, then another in its place: found too.
	mgr.stop()
	tm.waitScreen("the manager gone", contains("! no answer from the manager"))
	mgr = startManager(t, prog, cfg, dir, nil)
	tm.waitScreen("the next manager", contains(fmt.Sprintf("manager pid %d", mgr.cmd.Process.Pid), "reconnected"))
}
