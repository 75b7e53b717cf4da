package supervisor_test

// The control socket end to end: `gotyledon status`, `scale` and `reload`
// run as commands (the test binary again) against a running manager.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gotyledon/gotyledon/ipc"
	"github.com/gotyledon/gotyledon/supervisor/control"
)

// controlSocket is where the manager's control socket is by default.
func (m *manager) controlSocket() string { return filepath.Join(m.runtimeDir, "control.sock") }

// ctl runs `gotyledon ARGS --socket` against m's control socket, as the
// user cred if it is not nil, and returns its exit code and output.
func (m *manager) ctl(cred *syscall.Credential, exe string, args ...string) (code int, stdout, stderr string) {
	m.t.Helper()
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			m.t.Fatal(err)
		}
	}
	cmd := exec.Command(exe, append(args, "--socket", m.controlSocket())...)
	cmd.Env = append(os.Environ(), envTestManager+"=1", goraceEnv)
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var exitErr *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exitErr):
		code = exitErr.ExitCode()
	default:
		m.t.Fatalf("run %v: %v", args, err)
	}
	return code, out.String(), errb.String()
}

// statusJSON runs `status --json` and decodes it.
func (m *manager) statusJSON() control.Status {
	m.t.Helper()
	code, out, errOut := m.ctl(nil, "", "status", "--json")
	if code != 0 {
		m.t.Fatalf("status --json: exit %d: %s", code, errOut)
	}
	var doc control.Status
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		m.t.Fatalf("status --json: %v\n%s", err, out)
	}
	return doc
}

// serviceIndex is the index of service name in d.
func serviceIndex(t *testing.T, d control.Status, name string) int {
	t.Helper()
	for i, s := range d.Services {
		if s.Name == name {
			return i
		}
	}
	t.Fatalf("no service %q in the status", name)
	return -1
}

// pidsOf returns the running pids of a service in the status, by id.
func pidsOf(t *testing.T, d control.Status, name string) []int {
	var pids []int
	for _, w := range d.Services[serviceIndex(t, d, name)].Workers {
		pids = append(pids, w.PID)
	}
	return pids
}

const controlBase = `
queues:
  jobs: {}
services:
  producer:
    run: sleeper
  printer:
    run: sleeper
    workers: %d
`

func TestControlStatusScaleAndReload(t *testing.T) {
	t.Parallel()
	m := startManager(t, strings.Replace(controlBase, "%d", "2", 1))
	m.waitN("3 ready", 3, func(e entry) bool { return strings.HasPrefix(e.str("msg"), "ready ") })
	m.waitFor("the manager ready", func(e entry) bool { return e.str("msg") == "manager ready: every worker is ready" })

	doc := m.statusJSON()
	p := serviceIndex(t, doc, "printer")
	if doc.Schema != 1 || doc.PID != m.cmd.Process.Pid || !doc.Ready {
		t.Errorf("schema %d, pid %d, ready %v; want 1, the manager's pid %d, true", doc.Schema, doc.PID, doc.Ready, m.cmd.Process.Pid)
	}
	if s := doc.Services[p]; s.Desired != 2 || s.Configured != 2 || s.Running != 2 || len(s.Workers) != 2 {
		t.Fatalf("printer %+v, want 2 of 2 running", s)
	}
	producerPID := pidsOf(t, doc, "producer")[0]
	printerPIDs := pidsOf(t, doc, "printer")
	if len(doc.Queues) != 1 || doc.Queues[0].Name != "jobs" {
		t.Errorf("queues %+v, want jobs", doc.Queues)
	}
	if doc.LastReload != nil {
		t.Errorf("last reload %+v before any", doc.LastReload)
	}

	// Scale up without touching the file: the file's count shows beside it.
	if code, out, errOut := m.ctl(nil, "", "scale", "printer=5"); code != 0 || out != "printer: 5 workers\n" {
		t.Fatalf("scale printer=5: exit %d, %q %q", code, out, errOut)
	}
	m.waitN("5 printers ready", 5, output("printer", "ready"))
	doc = m.statusJSON()
	if s := doc.Services[serviceIndex(t, doc, "printer")]; s.Desired != 5 || s.Configured != 2 || s.Running != 5 {
		t.Errorf("after scale: printer %d/%d (file %d), want 5/5 (file 2)", s.Running, s.Desired, s.Configured)
	}
	code, table, _ := m.ctl(nil, "", "status")
	if code != 0 || !strings.Contains(table, "5/5 (file: 2)") || !strings.Contains(table, "last reload: none") {
		t.Errorf("status table (exit %d) does not show the override:\n%s", code, table)
	}
	if code, _, errOut := m.ctl(nil, "", "scale", "nosuch=1"); code != 1 || !strings.Contains(errOut, `no service "nosuch" (the services are producer, printer)`) {
		t.Errorf("scale of an unknown service: exit %d, %q; want 1, naming it and the services there are", code, errOut)
	}
	if code, _, errOut := m.ctl(nil, "", "scale", "printer=-1"); code != 2 || !strings.Contains(errOut, "SERVICE=N") {
		t.Errorf("scale printer=-1: exit %d, %q; want 2 and how to write it", code, errOut)
	}

	// A bad file: reload says why, exits 1, and nothing changes. The file
	// watch sees the edit too and refuses it first: waiting for that makes
	// the count of failed reloads (2) the same on every run.
	if err := os.WriteFile(m.config, []byte("services:\n  printer:\n    run: sleeper\n    workers: many\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	m.waitFor("the watch's refusal of the edit", func(e entry) bool { return e.is("reload failed: the running services are unchanged") })
	code, _, errOut := m.ctl(nil, "", "reload")
	if code != 1 || !strings.Contains(errOut, "reload failed: the running services are unchanged") ||
		!strings.Contains(errOut, m.config+":4:14: workers must be") {
		t.Errorf("reload of a bad file: exit %d, %q; want 1 with FILE:LINE:COL", code, errOut)
	}
	doc = m.statusJSON()
	if lr := doc.LastReload; lr == nil || lr.OK || lr.Source == "" || !strings.Contains(lr.Error, ":4:14:") {
		t.Errorf("last reload %+v, want a failure naming 4:14", lr)
	}
	if got := pidsOf(t, doc, "printer"); len(got) != 5 || !slices.Equal(got[:2], printerPIDs) {
		t.Errorf("printer pids %v after a bad reload, want the first two still %v and 5 in all", got, printerPIDs)
	}
	code, table, _ = m.ctl(nil, "", "status")
	if code != 0 || !strings.Contains(table, "last reload: FAILED") || !strings.Contains(table, ":4:14:") {
		t.Errorf("status table (exit %d) does not show the failed reload:\n%s", code, table)
	}

	// A good file: applied; the file's count wins over the scale.
	if err := os.WriteFile(m.config, []byte(strings.Replace(controlBase, "%d", "3", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := m.ctl(nil, "", "reload"); code != 0 || out != "reloaded\n" {
		t.Fatalf("reload: exit %d, %q %q", code, out, errOut)
	}
	m.waitN("2 printers stopped", 2, func(e entry) bool { return e.is("worker stopped", "service", "printer") })
	doc = m.statusJSON()
	if s := doc.Services[serviceIndex(t, doc, "printer")]; s.Desired != 3 || s.Configured != 3 || s.Running != 3 {
		t.Errorf("after the reload: printer %d/%d (file %d), want 3/3 (file 3)", s.Running, s.Desired, s.Configured)
	}
	if lr := doc.LastReload; lr == nil || !lr.OK || lr.Error != "" {
		t.Errorf("last reload %+v, want ok", lr)
	}
	if pidsOf(t, doc, "producer")[0] != producerPID {
		t.Error("the producer was restarted by a scale or a reload")
	}

	// Metrics on the same socket, as Prometheus would scrape them.
	metrics := m.get("/metrics")
	for _, want := range []string{
		`gotyledon_workers_running{service="printer"} 3`,
		`gotyledon_workers_desired{service="producer"} 1`,
		`gotyledon_reloads_total{result="failed"} 2`, // the watch's, then the command's
		`gotyledon_queue_depth{queue="jobs"} 0`,
		`gotyledon_worker_exits_total{reason="stopped",service="printer"} 2`,
	} {
		if !strings.Contains(metrics, want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	m.signal(syscall.SIGTERM)
	if code := m.waitExit(); code != 0 {
		t.Errorf("manager exit code %d, want 0", code)
	}
	if code, _, errOut := m.ctl(nil, "", "status"); code != 1 || !strings.Contains(errOut, "no manager is running") {
		t.Errorf("status with no manager: exit %d, %q; want 1 and no manager is running", code, errOut)
	}
}

// get fetches route from the control socket, as curl --unix-socket does.
func (m *manager) get(route string) string {
	m.t.Helper()
	c := http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", m.controlSocket())
	}}}
	resp, err := c.Get("http://gotyledon" + route)
	if err != nil {
		m.t.Fatalf("GET %s: %v", route, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		m.t.Fatalf("GET %s: %s, %v", route, resp.Status, err)
	}
	return string(body)
}

func TestStatusWhileWorkersCrashAndBackOff(t *testing.T) {
	t.Parallel()
	m := startManager(t, `
services:
  steady:
    run: sleeper
  crasher:
    run: crasher
    workers: 2
    restart: {min_uptime: 1s, backoff_initial: 30s, backoff_max: 60s}
`)
	// A backoff of 24 s at least (30 s less the jitter): the status commands
	// below, each a process of its own, see it on a loaded machine too.
	m.waitFor("steady ready", output("steady", "ready"))
	m.waitN("both crashers delayed", 2, func(e entry) bool {
		return e.is("worker is failing soon after start; restart delayed", "service", "crasher")
	})
	doc := m.statusJSON()
	s := doc.Services[serviceIndex(t, doc, "crasher")]
	if s.Desired != 2 || s.Running+s.Backoff != 2 || s.Backoff == 0 || s.Exits["error"] < 2 {
		t.Fatalf("crasher %+v, want 2 desired with workers in backoff and 2+ error exits", s)
	}
	for _, w := range s.Workers {
		if w.State != "backoff" {
			continue
		}
		if w.PID != 0 || w.RetryAt == nil || w.LastExit == "" || !strings.HasPrefix(w.LastExit, "exit code ") ||
			w.Failures < 1 || w.Restarts < 1 || w.LastExitAt == nil || w.StartedAt != nil {
			t.Errorf("worker in backoff %+v, want no pid, a retry time, its last exit code and failures", w)
		}
	}
	if st := doc.Services[serviceIndex(t, doc, "steady")]; st.Running != 1 || st.Restarts != 0 {
		t.Errorf("steady %+v, want 1 running, never restarted", st)
	}
	code, table, _ := m.ctl(nil, "", "status")
	if code != 0 || !strings.Contains(table, "backoff") || !strings.Contains(table, "retry in") {
		t.Errorf("status table (exit %d) does not show the backoff:\n%s", code, table)
	}
}

func TestControlSocketRefusesOtherUsers(t *testing.T) {
	t.Parallel()
	if os.Getuid() != 0 {
		t.Skip("needs root, to run a client as another user")
	}
	m := startManager(t, "services:\n  one:\n    run: sleeper\n")
	m.waitFor("ready", output("one", "ready"))
	// The client runs as nobody, from a copy of the test binary nobody can
	// read (the build directory is root's alone).
	dir, err := os.MkdirTemp("", "gtyctl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	exe := filepath.Join(dir, "gotyledon.test")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// Copied by cp, not written here: a process the other tests fork
	// while this one holds the copy open for writing would inherit the
	// descriptor until its exec, and exec'ing the copy then fails with
	// ETXTBSY ("text file busy").
	if out, err := exec.Command("cp", self, exe).CombinedOutput(); err != nil {
		t.Fatalf("copy the test binary: %v: %s", err, out)
	}
	if err := os.Chmod(exe, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	nobody := &syscall.Credential{Uid: 65534, Gid: 65534}

	// The socket's directory and file modes keep nobody out: the kernel
	// says no, and the command says what to do.
	code, _, errOut := m.ctl(nobody, exe, "status")
	if code != 1 || !strings.Contains(errOut, "permission denied on "+m.controlSocket()) {
		t.Errorf("status as nobody: exit %d, %q; want 1 and permission denied", code, errOut)
	}
	// Looking for the socket, without --socket, finds it there and says
	// it may not reach it, rather than that no manager runs.
	find := exec.Command(exe, "status")
	find.Env = append(os.Environ(), envTestManager+"=1", goraceEnv, "RUNTIME_DIRECTORY="+m.runtimeDir)
	find.SysProcAttr = &syscall.SysProcAttr{Credential: nobody}
	out, _ := find.CombinedOutput()
	if !strings.Contains(string(out), "permission denied on "+m.controlSocket()+": a manager may run there") {
		t.Errorf("status as nobody, looking for the socket: %q; want permission denied on %s", out, m.controlSocket())
	}
	// With the modes opened up (an operator's mistake), the manager's own
	// peer check (SO_PEERCRED) still refuses.
	if err := os.Chmod(m.runtimeDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(m.controlSocket(), 0o666); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"status"}, {"scale", "one=3"}, {"reload"}} {
		code, _, errOut = m.ctl(nobody, exe, args...)
		if code != 1 || !strings.Contains(errOut, "uid 65534 may not use the control socket") {
			t.Errorf("%v as nobody through open modes: exit %d, %q; want 1 and refused by the peer check", args, code, errOut)
		}
	}
	// Each refusal is logged; the log line may reach the test after the
	// client has its answer.
	m.waitN("3 refusals logged", 3, func(e entry) bool {
		return e.str("msg") == "control request refused: peer not allowed" && e.int("uid") == 65534
	})
	if n := len(m.all(started("one", 1))); n != 0 {
		t.Error("a refused scale was applied")
	}
	// Root still gets in.
	if code, _, errOut := m.ctl(nil, "", "status"); code != 0 {
		t.Errorf("status as root: exit %d, %s", code, errOut)
	}
}

func TestASecondManagerOnTheSameControlSocketDoesNotStart(t *testing.T) {
	t.Parallel()
	first := startManager(t, "services:\n  one:\n    run: sleeper\n")
	first.waitFor("ready", output("one", "ready"))
	second := startManager(t, "control: {socket: "+first.controlSocket()+"}\nservices:\n  one:\n    run: sleeper\n")
	if code := second.waitExit(); code != 1 {
		t.Errorf("second manager exit code %d, want 1", code)
	}
	why := second.all(func(e entry) bool {
		return strings.HasPrefix(e.str("msg"), "another manager runs with this control socket")
	})
	if len(why) != 1 {
		t.Fatal("the second manager did not say why it stopped")
	}
	if pid := why[0].int("manager_pid"); pid != first.cmd.Process.Pid || !strings.Contains(why[0].str("fix"), "set control.socket to another path") {
		t.Errorf("the second manager said %v, want the first one's pid %d and the key to set", why[0], first.cmd.Process.Pid)
	}
	if n := len(second.all(func(e entry) bool { return e.str("msg") == "worker started" })); n != 0 {
		t.Errorf("the second manager started %d workers", n)
	}
	if code, _, errOut := first.ctl(nil, "", "status"); code != 0 {
		t.Errorf("the first manager's status after the second tried: exit %d, %s", code, errOut)
	}
}

func TestAManagerWithoutAControlSocketStillRuns(t *testing.T) {
	t.Parallel()
	// A file, not a directory, where the socket's directory should be.
	blocker := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(blocker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	m := startManager(t, "control: {socket: "+filepath.Join(blocker, "control.sock")+"}\nservices:\n  one:\n    run: sleeper\n")
	m.waitFor("ready", output("one", "ready"))
	m.waitFor("the error", func(e entry) bool {
		return strings.HasPrefix(e.str("msg"), "cannot serve the control socket") && e.str("level") == "error"
	})
	m.signal(syscall.SIGTERM)
	if code := m.waitExit(); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
}

func TestMetricsOnTCPServeMetricsAndNothingElse(t *testing.T) {
	t.Parallel()
	m := startManager(t, "control: {metrics_listen: \"127.0.0.1:0\"}\nservices:\n  one:\n    run: sleeper\n")
	m.waitFor("ready", output("one", "ready"))
	addr := m.waitFor("metrics address", func(e entry) bool { return e.str("msg") == "metrics listening" }).str("address")
	get := func(route string) (int, string) {
		resp, err := http.Get("http://" + addr + route)
		if err != nil {
			t.Fatalf("GET %s: %v", route, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, body := get("/metrics"); code != 200 || !strings.Contains(body, `gotyledon_workers_running{service="one"} 1`+"\n") {
		t.Errorf("GET /metrics on TCP: %d, want 200 with one running worker:\n%s", code, body)
	}
	// Status, scale and reload stay on the Unix socket and its peer check.
	for _, route := range []string{"/v1/status", "/v1/reload"} {
		if code, _ := get(route); code != http.StatusNotFound {
			t.Errorf("GET %s on TCP: %d, want 404", route, code)
		}
	}
	resp, err := http.Post("http://"+addr+"/v1/scale", "application/json", strings.NewReader(`{"service":"one","workers":3}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || len(m.all(started("one", 1))) != 0 {
		t.Errorf("POST /v1/scale on TCP: %d, want 404 and nothing scaled", resp.StatusCode)
	}
}

// The log file is a FIFO, so that the test reads the manager's lines as
// they are written; SIGUSR1 makes the manager open the path again.
func TestLogFileIsReopenedOnSIGUSR1(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	logPath := filepath.Join(dir, "gotyledon.log")
	if err := syscall.Mkfifo(logPath, 0o600); err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(dir, "gotyledon.yaml")
	if err := os.WriteFile(config, []byte("services:\n  one:\n    run: sleeper\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	m := startManagerArgs(t, config, []string{"run", "--log-format", "json", "--log-file", logPath, "-c", config})
	first := readLines(t, logPath)
	waitLine(t, first, "ready service=one")

	// As logrotate does: move the file away, then signal.
	if err := os.Rename(logPath, logPath+".1"); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(logPath, 0o600); err != nil {
		t.Fatal(err)
	}
	m.signal(syscall.SIGUSR1)
	second := readLines(t, logPath)
	waitLine(t, second, `"msg":"log file reopened"`)
	m.signal(syscall.SIGTERM)
	waitLine(t, second, "manager stopped: every worker has exited")
	if code := m.waitExit(); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	if n := len(m.all(func(e entry) bool { return true })); n != 0 {
		t.Errorf("%d lines on stderr, want none: the log goes to the file", n)
	}
}

// readLines opens a FIFO for reading and sends each line it gets; the
// channel is closed at end of file (the manager closed its end). The open,
// which waits for a writer, happens on the reading goroutine, so that a
// manager that never opens the path fails the test at its deadline.
func readLines(t *testing.T, path string) <-chan string {
	t.Helper()
	lines := make(chan string, 1024)
	opened := make(chan *os.File, 1)
	go func() {
		defer close(lines)
		f, err := os.Open(path)
		if err != nil {
			return
		}
		opened <- f
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		select {
		case f := <-opened:
			f.Close()
		default:
			// Still waiting for a writer: be one, so that the open returns.
			if w, err := os.OpenFile(path, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
				w.Close()
			}
		}
	})
	return lines
}

// waitLine reads lines until one contains part.
func waitLine(t *testing.T, lines <-chan string, part string) {
	t.Helper()
	deadline := time.After(waitTimeout)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("log ended before a line with %q", part)
			}
			if strings.Contains(l, part) {
				return
			}
		case <-deadline:
			t.Fatalf("no log line with %q within %v", part, waitTimeout)
		}
	}
}

// A refused reload read a content the file watch never saw; putting the
// good file back must still be applied, and status must say so.
func TestRevertingARefusedEditIsApplied(t *testing.T) {
	t.Parallel()
	good := strings.Replace(controlBase, "%d", "2", 1)
	m := startManager(t, good)
	m.waitN("3 ready", 3, func(e entry) bool { return strings.HasPrefix(e.str("msg"), "ready ") })
	if err := os.WriteFile(m.config, []byte("services:\n  printer:\n    run: sleeper\n    workers: many\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := m.ctl(nil, "", "reload"); code != 1 {
		t.Fatalf("reload of a bad file: exit %d, %s", code, errOut)
	}
	if err := os.WriteFile(m.config, []byte(good), 0o644); err != nil {
		t.Fatal(err)
	}
	m.waitFor("the good file applied", func(e entry) bool { return e.str("msg") == "configuration applied" })
	doc := m.statusJSON()
	if lr := doc.LastReload; lr == nil || !lr.OK || lr.Source != "file" {
		t.Errorf("last reload %+v, want ok from the file", lr)
	}
}

// `gotyledon reload` answers once the reload has settled: with ready:
// notify workers that say READY=1 only when told, it is still waiting
// after the first replacement is ready, and returns once the last one is;
// a change whose new worker is never ready makes it fail with the reason.
// With --no-wait it answers at once, the rollout under way.
func TestReloadCommandWaitsForTheRollout(t *testing.T) {
	t.Parallel()
	conf := notifierConf(t)
	m := startManager(t, conf("1", ", NOTIFY_AT_ONCE: '1'", "1h"))
	m.waitN("2 of gen 1 serving", 2, output("gen", "serving 1"))

	type result struct {
		code        int
		out, errOut string
	}
	reload := func() <-chan result {
		done := make(chan result, 1)
		go func() {
			code, out, errOut := m.ctl(nil, "", "reload")
			done <- result{code, out, errOut}
		}()
		return done
	}
	notYet := func(done <-chan result, when string) {
		t.Helper()
		select {
		case r := <-done:
			t.Fatalf("reload returned (exit %d, %q %q) %s", r.code, r.out, r.errOut, when)
		default:
		}
	}

	// --no-wait answers once the change is applied: gen 2's first worker
	// is not ready (it waits for SIGUSR1) when it returns.
	m.rewrite(conf("2", "", "1h"))
	if code, out, errOut := m.ctl(nil, "", "reload", "--no-wait"); code != 0 || out != "reloaded\n" {
		t.Fatalf("reload --no-wait: exit %d, stdout %q, stderr %q; want 0 and reloaded", code, out, errOut)
	}
	done := reload()
	w0 := m.waitFor("worker 0 of gen 2 waiting", func(e entry) bool { return output("gen", "waiting 2")(e) && e.int("worker") == 0 })
	notYet(done, "while worker 0's replacement was not ready")
	if err := syscall.Kill(w0.int("pid"), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	w1 := m.waitFor("worker 1 of gen 2 waiting", func(e entry) bool { return output("gen", "waiting 2")(e) && e.int("worker") == 1 })
	notYet(done, "while worker 1's replacement was not ready")
	if err := syscall.Kill(w1.int("pid"), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.code != 0 || r.out != "reloaded\n" {
		t.Fatalf("reload: exit %d, stdout %q, stderr %q; want 0 and reloaded", r.code, r.out, r.errOut)
	}
	// Returned once settled: both workers are on gen 2, and ready.
	st := m.statusJSON()
	for _, w := range st.Services[0].Workers {
		if !w.Ready || w.Outdated || (w.PID != w0.int("pid") && w.PID != w1.int("pid")) {
			t.Errorf("worker %+v when reload returned, want a ready gen 2 process", w)
		}
	}

	m.rewrite(conf("3", ", NOTIFY_NEVER: '1'", "300ms"))
	r = <-reload()
	// The watch applies the edit too: which worker's replacement the
	// reload that halts had reached depends on the two's order.
	if r.code != 1 || !strings.Contains(r.errOut, "its rolling change halted") || !regexp.MustCompile(`gen worker [01] not ready within 300ms`).MatchString(r.errOut) {
		t.Errorf("reload of a change never ready: exit %d, stderr %q; want 1, the halt and its reason", r.code, r.errOut)
	}
}

// `gotyledon queue list` shows each queue's depth, items in flight and
// consumers (here: two workers waiting in `queue get`), from the control
// socket.
func TestQueueList(t *testing.T) {
	t.Parallel()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	m := startManager(t, fmt.Sprintf(`
queues:
  jobs: {capacity: 50}
  mail: {}
services:
  getter:
    command: [%q, queue, get, jobs]
    env: {TEST_HELPER: cli}
    workers: 2
`, exe))
	m.waitN("2 getters started", 2, func(e entry) bool { return e.is("worker started", "service", "getter") })
	want := "QUEUE  DEPTH  IN FLIGHT  CONSUMERS  CAPACITY\n" +
		"jobs   0      0          2          50\n" +
		"mail   0      0          0          10000\n"
	var out []byte
	for deadline := time.Now().Add(waitTimeout); ; {
		cmd := exec.Command(exe, "queue", "list", "--control-socket", m.controlSocket())
		cmd.Env = append(os.Environ(), envTestManager+"=1", goraceEnv)
		out, err = cmd.Output()
		if err == nil && string(out) == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("queue list: %v\n%s\nwant\n%s", err, out, want)
		}
		time.Sleep(20 * time.Millisecond) // the getters' GETs reach the broker on their own time; polled
	}
}

// scale is all or nothing: one unknown service, and no count changes.
// status SERVICE shows that service alone.
func TestScaleAllOrNothingAndStatusOfOneService(t *testing.T) {
	t.Parallel()
	m := startManager(t, "queues:\n  jobs: {}\nservices:\n  one:\n    run: sleeper\n  two:\n    run: sleeper\n")
	m.waitN("2 ready", 2, func(e entry) bool { return strings.HasPrefix(e.str("msg"), "ready ") })
	code, _, errOut := m.ctl(nil, "", "scale", "one=3", "nope=1")
	if code != 1 || !strings.Contains(errOut, `scale: nothing changed: no service "nope" (the services are one, two)`) {
		t.Errorf("scale with an unknown service: exit %d, %q; want 1 naming it and the services there are", code, errOut)
	}
	if n := len(m.all(func(e entry) bool { return e.str("msg") == "reconfigure" })); n != 0 {
		t.Errorf("%d reconfigures logged: the scale was not all or nothing", n)
	}
	code, out, errOut := m.ctl(nil, "", "status", "two")
	if code != 0 || !strings.Contains(out, "\ntwo ") || strings.Contains(out, "\none ") || strings.Contains(out, "QUEUE") {
		t.Errorf("status two: exit %d, stderr %q, stdout\n%s\nwant service two alone, no queues", code, errOut, out)
	}
	if code, _, errOut := m.ctl(nil, "", "status", "nope"); code != 1 || !strings.Contains(errOut, `no service "nope"`) {
		t.Errorf("status nope: exit %d, %q; want 1 naming it", code, errOut)
	}
}

// `gotyledon restart SERVICE` replaces each worker with a new process, one
// at a time, and returns once the last new one is ready; SERVICE/ID
// replaces that worker alone.
func TestRestartCommand(t *testing.T) {
	t.Parallel()
	conf := notifierConf(t)
	m := startManager(t, conf("1", ", NOTIFY_AT_ONCE: '1'", "1h"))
	first := m.waitN("2 serving", 2, output("gen", "serving 1"))
	old := map[int]int{}
	for _, e := range first {
		old[e.int("worker")] = e.int("pid")
	}
	if code, out, errOut := m.ctl(nil, "", "restart", "gen"); code != 0 || out != "restarted\n" {
		t.Fatalf("restart gen: exit %d, %q, %q; want 0 and restarted", code, out, errOut)
	}
	// Returned once settled: both workers are new processes, and ready.
	st := m.statusJSON()
	for _, w := range st.Services[0].Workers {
		if w.PID == old[w.ID] || !w.Ready {
			t.Errorf("worker %+v after restart gen, want a new, ready process (old pid %d)", w, old[w.ID])
		}
	}
	// One at a time: worker 1 was stopped only once worker 0's new
	// process was ready.
	var order []string
	for _, e := range m.all(func(e entry) bool { return true }) {
		switch {
		case e.is("replacing worker: its definition changed", "service", "gen"):
			order = append(order, fmt.Sprintf("replace %d", e.int("worker")))
		case e.is("replacement worker ready", "service", "gen"):
			order = append(order, fmt.Sprintf("ready %d", e.int("worker")))
		}
	}
	if want := []string{"replace 0", "ready 0", "replace 1", "ready 1"}; !slices.Equal(order, want) {
		t.Errorf("the restart went %v, want %v", order, want)
	}
	before := m.statusJSON().Services[0].Workers
	if code, _, errOut := m.ctl(nil, "", "restart", "gen/1"); code != 0 {
		t.Fatalf("restart gen/1: exit %d, %q", code, errOut)
	}
	after := m.statusJSON().Services[0].Workers
	if after[0].PID != before[0].PID || after[1].PID == before[1].PID {
		t.Errorf("restart gen/1: pids %d %d -> %d %d, want worker 1 alone replaced", before[0].PID, before[1].PID, after[0].PID, after[1].PID)
	}
	if code, _, errOut := m.ctl(nil, "", "restart", "gen/5"); code != 1 || !strings.Contains(errOut, "no such worker") {
		t.Errorf("restart gen/5: exit %d, %q; want 1 and no such worker", code, errOut)
	}
}

// Tasks end to end: a Go submitter maps tasks over a service of `queue
// consume` workers, which answer with their command's output; status
// (text and JSON) and /metrics show the queue's figures and the
// service's, the service known from its workers' environment.
func TestTaskFiguresInStatusAndMetrics(t *testing.T) {
	t.Parallel()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	m := startManager(t, fmt.Sprintf(`
queues:
  compute: {}
services:
  doubler:
    command: [%q, queue, consume, compute, --, /bin/sh, -c, 'x=$(cat); echo $((x * 2))']
    env: {TEST_HELPER: cli}
    workers: 2
`, exe))
	m.waitN("2 doublers started", 2, func(e entry) bool { return e.is("worker started", "service", "doubler") })
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	c, err := ipc.Dial(ctx, filepath.Join(m.runtimeDir, "queue.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const n = 20
	inputs := make([][]byte, n)
	for i := range inputs {
		inputs[i] = []byte(fmt.Sprint(i))
	}
	results, err := c.Map(ctx, "compute", inputs)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range results {
		if want := fmt.Sprintf("%d\n", 2*i); string(r) != want {
			t.Fatalf("result %d: %q, want %q", i, r, want)
		}
	}
	doc := m.statusJSON()
	q, s := doc.Queues[0].Tasks, doc.Services[serviceIndex(t, doc, "doubler")].Tasks
	if q == nil || q.Submitted != n || q.Done != n || q.Running != 0 || q.RuntimeCount != n || q.RuntimeP50Seconds <= 0 {
		t.Errorf("queue's task figures %+v", q)
	}
	if s == nil || s.Submitted != 0 || s.Done != n || s.RuntimeCount != n {
		t.Errorf("doubler's task figures %+v", s)
	}
	code, table, _ := m.ctl(nil, "", "status")
	if code != 0 || !regexp.MustCompile(`(?m)^queue compute +20 +0 +20 +0 +0 +0 `).MatchString(table) ||
		!regexp.MustCompile(`(?m)^service doubler +0 +0 +20 +0 +0 +0 `).MatchString(table) {
		t.Errorf("status table:\n%s", table)
	}
	metrics := m.get("/metrics")
	for _, line := range []string{
		`gotyledon_queue_tasks_total{outcome="done",queue="compute"} 20`,
		`gotyledon_service_tasks_total{outcome="done",service="doubler"} 20`,
		`gotyledon_service_task_runtime_seconds_count{service="doubler"} 20`,
	} {
		if !strings.Contains(metrics, line+"\n") {
			t.Errorf("/metrics has no %s", line)
		}
	}
}
