package program

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/gotyledon/gotyledon/config"
	"github.com/gotyledon/gotyledon/service"
)

func writeConfig(t *testing.T, yaml string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "g.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func runCLI(p *Program, args ...string) (code int, stdout, stderr string) {
	if p == nil {
		p = New()
	}
	var out, errOut bytes.Buffer
	code = p.main(append([]string{"gotyledon"}, args...), strings.NewReader(""), &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestCheckAcceptsAGoodConfig(t *testing.T) {
	path := writeConfig(t, "services:\n  a: {command: [/bin/true], workers: 2}\n  b: {run: printer}\n")
	p := New()
	p.Register("printer", func(service.Worker) (service.Service, error) { return nil, nil })
	code, stdout, stderr := runCLI(p, "check", "-c", path)
	if code != ExitOK || stdout != path+": ok (2 services, 3 workers)\n" || stderr != "" {
		t.Errorf("exit %d stdout %q stderr %q", code, stdout, stderr)
	}
}

func TestCheckCountsInGoodEnglish(t *testing.T) {
	path := writeConfig(t, "services:\n  a: {command: [/bin/true]}\n")
	if code, stdout, _ := runCLI(New(), "check", "-c", path); code != ExitOK || stdout != path+": ok (1 service, 1 worker)\n" {
		t.Errorf("exit %d stdout %q, want ok (1 service, 1 worker)", code, stdout)
	}
}

func TestCheckReportsEveryErrorAndExits1(t *testing.T) {
	path := writeConfig(t, "services:\n  a: {command: [/bin/true], workers: -1}\n  b: {run: printer}\n")
	code, stdout, stderr := runCLI(New(), "check", "--config", path)
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	if code != ExitError || stdout != "" || len(lines) != 2 {
		t.Fatalf("exit %d stdout %q stderr %q; want 1 and two errors", code, stdout, stderr)
	}
	for i, want := range []string{path + ":2:38: workers must be a whole number from 0 to 10000 (got -1)", path + ":3:12: unknown Go service \"printer\""} {
		if !strings.HasPrefix(lines[i], want) {
			t.Errorf("error %d = %q, want it to start %q", i, lines[i], want)
		}
	}
}

// What would keep workers from starting on this machine is warned about,
// at each service's position: a program not found, one that is not
// executable, a dir that does not exist. With --strict it fails.
func TestCheckWarnsOfWhatCannotStartHere(t *testing.T) {
	dir := t.TempDir()
	notExec := filepath.Join(dir, "script")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	path := writeConfig(t, fmt.Sprintf(`services:
  missing: {command: [no-such-program-here]}
  plain: {command: [%s]}
  nodir: {command: [/bin/true], dir: %s}
  fine: {command: [true], env: {PATH: /bin:/usr/bin}}
`, notExec, filepath.Join(dir, "nowhere")))
	want := path + ":2:3: warning: service \"missing\": command \"no-such-program-here\" not found in PATH " + os.Getenv("PATH") + "\n" +
		path + ":3:3: warning: service \"plain\": command " + notExec + " is not executable (mode -rw-r--r--)\n" +
		path + ":4:3: warning: service \"nodir\": dir " + filepath.Join(dir, "nowhere") + ": no such file or directory\n" +
		path + ": ok (4 services, 4 workers)\n"
	if code, stdout, stderr := runCLI(New(), "check", "-c", path); code != ExitOK || stdout != want || stderr != "" {
		t.Errorf("check: exit %d stderr %q stdout\n%s\nwant 0 and\n%s", code, stderr, stdout, want)
	}
	if code, _, _ := runCLI(New(), "check", "--strict", "-c", path); code != ExitError {
		t.Errorf("check --strict with warnings: exit %d, want 1", code)
	}
}

// A configuration with JetStream queues whose bridge program is not
// there warns, at its nats: section, as for a missing command.
func TestCheckWarnsOfAMissingBridge(t *testing.T) {
	bridge := filepath.Join(t.TempDir(), "gotyledon-jetstream")
	path := writeConfig(t, fmt.Sprintf(`nats:
  local_dir: /var/lib/gotyledon/jetstream
  bridge: %s
queues:
  jobs: {store: jetstream}
services:
  w: {command: [/bin/true]}
`, bridge))
	want := path + ":1:1: warning: store jetstream: nats.bridge " + bridge + ": gotyledon-jetstream not found (not an executable file)\n" +
		path + ": ok (1 service, 1 worker)\n"
	if code, stdout, stderr := runCLI(New(), "check", "-c", path); code != ExitOK || stdout != want || stderr != "" {
		t.Errorf("check: exit %d stderr %q stdout\n%s\nwant 0 and\n%s", code, stderr, stdout, want)
	}
	if err := os.WriteFile(bridge, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if code, stdout, _ := runCLI(New(), "check", "--strict", "-c", path); code != ExitOK || strings.Contains(stdout, "warning") {
		t.Errorf("check --strict with the bridge there: exit %d, stdout\n%s", code, stdout)
	}
}

// version and --version print the same line: the program, its version,
// the Go release.
func TestVersion(t *testing.T) {
	code, out, _ := runCLI(New(), "version")
	if code != ExitOK || !strings.HasPrefix(out, "gotyledon ") || !strings.HasSuffix(out, ", "+runtime.Version()+"\n") {
		t.Errorf("version: exit %d, %q; want gotyledon VERSION ..., %s", code, out, runtime.Version())
	}
	if code, flag, _ := runCLI(New(), "--version"); code != ExitOK || flag != out {
		t.Errorf("--version: exit %d, %q; want %q", code, flag, out)
	}
}

// Only run keeps a log, so only its help shows the log flags: the help of
// every other command is its own flags and not the manager's.
func TestOnlyRunsHelpShowsTheLogFlags(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"run", "--help"}, {"status", "--help"}, {"scale", "--help"},
		{"reload", "--help"}, {"restart", "--help"}, {"check", "--help"}, {"queue", "put", "--help"},
		{"queue", "consume", "--help"}, {"version", "--help"}} {
		code, out, stderr := runCLI(New(), args...)
		if code != ExitOK || out == "" {
			t.Fatalf("%q: exit %d, stdout %q, stderr %q", args, code, out, stderr)
		}
		want := args[0] == "run"
		for _, flag := range []string{"--log-level", "--log-format", "--log-file"} {
			if strings.Contains(out, flag) != want {
				t.Errorf("%q: shows %s = %v, want %v:\n%s", args, flag, !want, want, out)
			}
		}
	}
}

// A command line error points to the help of the subcommand it was in.
func TestUsageErrorsPointToTheSubcommandsHelp(t *testing.T) {
	for args, want := range map[string]string{
		"queue put":  "(see gotyledon queue put --help)",
		"scale":      "(see gotyledon scale --help)",
		"frobnicate": "(see gotyledon --help)",
	} {
		code, _, stderr := runCLI(nil, strings.Fields(args)...)
		if code != ExitUsage || !strings.Contains(stderr, want) {
			t.Errorf("%q: exit %d, %q; want 2 and %q", args, code, stderr, want)
		}
	}
}

func TestCheckOnAMissingFile(t *testing.T) {
	code, _, stderr := runCLI(nil, "check", "-c", "/nonexistent/g.yaml")
	if code != ExitError || !strings.Contains(stderr, "/nonexistent/g.yaml") || !strings.Contains(stderr, "no such file") {
		t.Errorf("exit %d stderr %q", code, stderr)
	}
}

func TestUsageErrorsExit2(t *testing.T) {
	for _, args := range [][]string{{}, {"run"}, {"frobnicate"}, {"run", "--log-format", "xml", "-c", "x"}, {"--log-level", "warn", "status"}} {
		code, _, stderr := runCLI(nil, args...)
		if code != ExitUsage || !strings.HasPrefix(stderr, "gotyledon: ") {
			t.Errorf("%q: exit %d stderr %q; want 2 and a message", args, code, stderr)
		}
	}
}

// A program that declares its services needs no file; one given is applied
// on top; errors in what it declares name the field.
func TestCheckOfADeclaredProgram(t *testing.T) {
	p := New()
	p.Queue("jobs", config.Capacity(10))
	p.Go("printer", func(service.Worker) (service.Service, error) { return nil, nil }, config.Workers(2))
	p.Command("web", []string{"/bin/true"})
	if code, stdout, stderr := runCLI(p, "check"); code != ExitOK || stdout != "gotyledon: ok (2 services, 3 workers)\n" {
		t.Errorf("check without a file: exit %d stdout %q stderr %q", code, stdout, stderr)
	}
	path := writeConfig(t, "services:\n  printer: {workers: 5}\n  extra: {command: [/bin/true]}\n")
	if code, stdout, stderr := runCLI(p, "check", "-c", path); code != ExitOK || stdout != path+": ok (3 services, 7 workers)\n" {
		t.Errorf("check with a file on top: exit %d stdout %q stderr %q", code, stdout, stderr)
	}
	bad := writeConfig(t, "services:\n  printer: {workers: -1}\n")
	if code, _, stderr := runCLI(p, "check", "-c", bad); code != ExitError || !strings.HasPrefix(stderr, bad+":2:22: workers must be") {
		t.Errorf("a bad file on top: exit %d stderr %q", code, stderr)
	}
	q := New()
	q.Command("web", []string{"/bin/true"}, config.Workers(-1))
	if code, _, stderr := runCLI(q, "check"); code != ExitError ||
		stderr != "services.web.workers (declared in Go): workers must be a whole number from 0 to 10000 (got -1)\n" {
		t.Errorf("a bad declaration: exit %d stderr %q", code, stderr)
	}
}

// Without a declaration, run and check need a file: a usage error says so.
func TestRunAndCheckNeedAFileWithoutDeclarations(t *testing.T) {
	for _, cmd := range []string{"run", "check"} {
		code, _, stderr := runCLI(nil, cmd)
		if code != ExitUsage || !strings.Contains(stderr, cmd+" needs --config FILE") {
			t.Errorf("%s without a file: exit %d stderr %q", cmd, code, stderr)
		}
	}
}

// `top` runs gotyledon-top: where it is not installed it says so and how
// to install it, and execs nothing; a too short interval is a usage error.
func TestTopWithoutGotyledonTop(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	code, stdout, stderr := runCLI(nil, "top", "--socket", filepath.Join(t.TempDir(), "control.sock"))
	if code != ExitError || stdout != "" || !strings.Contains(stderr, "gotyledon-top is not installed next to this program's binary nor in $PATH") ||
		!strings.Contains(stderr, "go build -o DIR/gotyledon-top ./cmd/gotyledon-top") {
		t.Errorf("top without gotyledon-top: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if code, _, stderr := runCLI(nil, "top", "--interval", "10ms"); code != ExitUsage || !strings.Contains(stderr, "want 100ms or more") {
		t.Errorf("top --interval 10ms: exit %d, stderr %q", code, stderr)
	}
}
