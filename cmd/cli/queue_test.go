package cli

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/gotyledon/gotyledon/config"
	"github.com/gotyledon/gotyledon/ipc"
)

// broker serves queue "jobs" on a socket in a temporary directory.
func broker(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "q.sock")
	l, err := ipc.Listen(path, -1)
	if err != nil {
		t.Fatal(err)
	}
	b, err := ipc.NewBroker(ipc.BrokerOptions{Queues: []ipc.QueueConfig{{Name: "jobs", Capacity: 100}}})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- b.Serve(net.Listener(l)) }()
	t.Cleanup(func() {
		b.Close()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return path
}

func queueCLI(stdin string, args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = mainWith(append([]string{"gotyledon", "queue"}, args...), nil, strings.NewReader(stdin), &out, &errOut)
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
		{[]string{"--socket", sock, "put", "nope", "x"}, ExitError, `0 of 1 items queued: ipc: put on "nope": queue broker: NO_SUCH_QUEUE`},
		{[]string{"--socket", sock, "put", "jobs", "x", "y"}, ExitUsage, "one DATA argument"},
		{[]string{"--socket", sock, "put", "--lines", "jobs", "x"}, ExitUsage, "--lines reads standard input"},
		{[]string{"--socket", filepath.Join(t.TempDir(), "none.sock"), "get", "jobs"}, ExitError, "ipc: dial "},
	} {
		code, _, stderr := queueCLI("", tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.says) {
			t.Errorf("%q: exit %d stderr %q; want exit %d saying %q", tc.args, code, stderr, tc.code, tc.says)
		}
	}
}

func TestAllowPeer(t *testing.T) {
	groupsOf := func(pid int) []int {
		if pid == 42 {
			return []int{7, 900}
		}
		return nil
	}
	withGroup := allowPeer(config.SocketAccess{GID: 900, AllowUIDs: []int{1001}, AllowGIDs: []int{50}}, 1000, groupsOf)
	for _, tc := range []struct {
		p    ipc.Peer
		want bool
	}{
		{ipc.Peer{PID: 1, UID: 1000, GID: 1000}, true},  // the manager's own user
		{ipc.Peer{PID: 1, UID: 0, GID: 0}, true},        // root
		{ipc.Peer{PID: 1, UID: 1001, GID: 1001}, true},  // allow_uids
		{ipc.Peer{PID: 1, UID: 2000, GID: 50}, true},    // allow_gids, primary
		{ipc.Peer{PID: 1, UID: 2000, GID: 900}, true},   // the socket's group, primary
		{ipc.Peer{PID: 42, UID: 2000, GID: 2000}, true}, // the socket's group, supplementary
		{ipc.Peer{PID: 1, UID: 2000, GID: 2000}, false}, // none of these
	} {
		if got := withGroup(tc.p); got != tc.want {
			t.Errorf("peer %+v: allowed %v, want %v", tc.p, got, tc.want)
		}
	}
	noGroups := allowPeer(config.SocketAccess{GID: -1}, 1000, groupsOf)
	if noGroups(ipc.Peer{PID: 42, UID: 2000, GID: 900}) {
		t.Error("a stranger was allowed by a broker that names no groups")
	}
}

func TestProcessGroupsReadsOurOwn(t *testing.T) {
	want, err := os.Getgroups()
	if err != nil {
		t.Fatal(err)
	}
	got := processGroups(os.Getpid())
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("processGroups(self) = %v, want %v (os.Getgroups)", got, want)
	}
	if g := processGroups(1 << 30); g != nil {
		t.Errorf("groups of a process that cannot exist: %v", g)
	}
}
