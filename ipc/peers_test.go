package ipc

import (
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestAllowPeers(t *testing.T) {
	groupsOf := func(pid int) []int {
		if pid == 42 {
			return []int{7, 900}
		}
		return nil
	}
	withGroup := AllowPeers(1000, PeerRules{UIDs: []int{1001}, GIDs: []int{50, 900}}, groupsOf)
	for _, tc := range []struct {
		p    Peer
		want bool
	}{
		{Peer{PID: 1, UID: 1000, GID: 1000}, true},  // the manager's own user
		{Peer{PID: 1, UID: 0, GID: 0}, true},        // root
		{Peer{PID: 1, UID: 1001, GID: 1001}, true},  // allow_uids
		{Peer{PID: 1, UID: 2000, GID: 50}, true},    // allow_gids, primary
		{Peer{PID: 1, UID: 2000, GID: 900}, true},   // the socket's group, primary
		{Peer{PID: 42, UID: 2000, GID: 2000}, true}, // the socket's group, supplementary
		{Peer{PID: 1, UID: 2000, GID: 2000}, false}, // none of these
		// What the kernel recorded at connect wins over the pid's groups
		// now (the pid may be another process's by then).
		{Peer{PID: 1, UID: 2000, GID: 2000, Groups: []int{3, 900}}, true},
		{Peer{PID: 42, UID: 2000, GID: 2000, Groups: []int{}}, false},
	} {
		if got := withGroup(tc.p); got != tc.want {
			t.Errorf("peer %+v: allowed %v, want %v", tc.p, got, tc.want)
		}
	}
	noGroups := AllowPeers(1000, PeerRules{}, groupsOf)
	if noGroups(Peer{PID: 42, UID: 2000, GID: 900}) {
		t.Error("a stranger was allowed by a broker that names no groups")
	}
}

func TestProcessGroupsReadsOurOwn(t *testing.T) {
	want, err := os.Getgroups()
	if err != nil {
		t.Fatal(err)
	}
	got := ProcessGroups(os.Getpid())
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("ProcessGroups(self) = %v, want %v (os.Getgroups)", got, want)
	}
	if g := ProcessGroups(1 << 30); g != nil {
		t.Errorf("groups of a process that cannot exist: %v", g)
	}
}

// The kernel's record of a peer's supplementary groups, taken as it
// connects, is this process's own.
func TestPeerOfHasTheGroupsOfTheConnectingProcess(t *testing.T) {
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(t.TempDir(), "s"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	p := PeerOf(sc)
	if p.Groups == nil {
		t.Skip("this kernel does not report SO_PEERGROUPS (Linux 4.13 does); the check reads /proc instead")
	}
	want, err := os.Getgroups()
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(want)
	got := slices.Clone(p.Groups)
	slices.Sort(got)
	if !slices.Equal(got, want) || p.PID != os.Getpid() {
		t.Errorf("peer %+v, want pid %d and groups %v", p, os.Getpid(), want)
	}
}
