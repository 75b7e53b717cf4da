package ipc

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
)

// PeerRules say who may use a socket besides the user it runs as and root:
// users by id, and members of groups (primary, or supplementary as the
// peer's process had them when it connected).
type PeerRules struct {
	// UIDs are users let in.
	UIDs []int
	// GIDs are groups whose members are let in: the socket's own group
	// (whose members its 0660 mode already lets connect) and any others.
	GIDs []int
}

// AllowPeers returns a peer check (BrokerOptions.Allow, and the control
// socket's): the user self and root always; then the users and groups of
// rules. Membership is the peer's primary group or one of its process's
// supplementary groups: those the kernel recorded when it connected
// (Peer.Groups), or, on a kernel that does not say, as groupsOf returns
// them (ProcessGroups). The check is safe for concurrent use if groupsOf
// is.
func AllowPeers(self int, rules PeerRules, groupsOf func(pid int) []int) func(Peer) bool {
	uids, gids := slices.Clone(rules.UIDs), slices.Clone(rules.GIDs)
	return func(p Peer) bool {
		if p.UID == self || p.UID == 0 || slices.Contains(uids, p.UID) || slices.Contains(gids, p.GID) {
			return true
		}
		if len(gids) == 0 {
			return false
		}
		groups := p.Groups
		if groups == nil {
			groups = groupsOf(p.PID)
		}
		for _, g := range groups {
			if slices.Contains(gids, g) {
				return true
			}
		}
		return false
	}
}

// ProcessEnv returns the value of key in the environment process pid
// was started with (/proc/PID/environ), or "" if it has none or cannot be
// read (the process is gone, or belongs to another user).
func ProcessEnv(pid int, key string) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return ""
	}
	for _, kv := range strings.Split(string(b), "\x00") {
		if v, ok := strings.CutPrefix(kv, key+"="); ok {
			return v
		}
	}
	return ""
}

// ProcessGroups returns the supplementary group ids of process pid, from
// /proc/PID/status; none if it cannot be read (the process is gone).
func ProcessGroups(pid int) []int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Groups:"); ok {
			var gids []int
			for _, f := range strings.Fields(rest) {
				if g, err := strconv.Atoi(f); err == nil {
					gids = append(gids, g)
				}
			}
			return gids
		}
	}
	return nil
}
