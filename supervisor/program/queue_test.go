package program

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

// broker serves queue "jobs" (see newBroker) and returns its socket.
func broker(t *testing.T) string {
	path, _ := newBroker(t)
	return path
}

func queueCLI(stdin string, args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = New().main(append([]string{"gotyledon", "queue"}, args...), strings.NewReader(stdin), &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestQueuePutThenGet(t *testing.T) {
	sock := broker(t)
	if code, _, stderr := queueCLI("", "--socket", sock, "put", "jobs", "first item"); code != ExitOK {
		t.Fatalf("put: exit %d, %s", code, stderr)
	}
	if code, _, stderr := queueCLI("from stdin\nwhole", "--socket", sock, "put", "jobs"); code != ExitOK {
		t.Fatalf("put from stdin: exit %d, %s", code, stderr)
	}
	if code, _, stderr := queueCLI("a\nb\n", "--socket", sock, "put", "--lines", "jobs"); code != ExitOK {
		t.Fatalf("put --lines: exit %d, %s", code, stderr)
	}
	for _, want := range []string{"first item\n", "from stdin\nwhole\n", "a\n", "b"} {
		args := []string{"--socket", sock, "get", "jobs"}
		if want == "b" {
			args = append(args, "-n")
		}
		code, stdout, stderr := queueCLI("", args...)
		if code != ExitOK || stdout != want {
			t.Errorf("get: exit %d stdout %q stderr %q, want %q", code, stdout, stderr, want)
		}
	}
}

func TestQueueGetTimesOutWithItsOwnExitCode(t *testing.T) {
	sock := broker(t)
	code, stdout, stderr := queueCLI("", "--socket", sock, "get", "--timeout", "50ms", "jobs")
	if code != ExitTimeout || stdout != "" || !strings.Contains(stderr, `get from "jobs"`) {
		t.Errorf("exit %d stdout %q stderr %q, want exit %d and a message", code, stdout, stderr, ExitTimeout)
	}
}

func TestQueueErrors(t *testing.T) {
	sock := broker(t)
	for _, tc := range []struct {
		args []string
		code int
		says string
	}{
		{[]string{"--socket", sock, "put", "nope", "x"}, ExitError, `0 of 1 items queued: ipc: put on "nope": queue broker: NO_SUCH_QUEUE: no queue "nope" (the queues are "jobs")`},
		{[]string{"--socket", sock, "put", "jobs", "x", "y"}, ExitUsage, `unexpected argument y`},
		{[]string{"--socket", sock, "put", "--lines", "jobs", "x"}, ExitUsage, "--lines reads standard input"},
		{[]string{"--socket", sock, "put", "jobs"}, ExitError, "queue put jobs: nothing to put: standard input was empty"},
		{[]string{"--socket", sock, "put", "jobs", ""}, ExitOK, ""}, // an empty item, asked for
		{[]string{"--socket", sock, "put", "jobs", "x", "y"}, ExitUsage, `unexpected argument y`},
		{[]string{"--socket", filepath.Join(t.TempDir(), "none.sock"), "get", "jobs"}, ExitError, "no manager is running: nothing at "},
	} {
		code, _, stderr := queueCLI("", tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.says) {
			t.Errorf("%q: exit %d stderr %q; want exit %d saying %q", tc.args, code, stderr, tc.code, tc.says)
		}
	}
}
