package control

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/gotyledon/gotyledon/config"
	"github.com/gotyledon/gotyledon/ipc"
)

// SocketPath is where the manager of cfg serves its control socket:
// control.socket, else control.sock beside the default queue socket (in
// ipc.DefaultSocketDir: $RUNTIME_DIRECTORY, else $XDG_RUNTIME_DIR/gotyledon,
// else /run/gotyledon, else /tmp/gotyledon-UID, as getenv reads them).
func SocketPath(cfg *config.Config, getenv func(string) string) string {
	if cfg.Control.Socket != "" {
		return cfg.Control.Socket
	}
	return filepath.Join(ipc.DefaultSocketDir(getenv), "control.sock")
}

// FindSocket finds a running manager's control socket without its
// configuration: the first that exists of control.sock in
// $RUNTIME_DIRECTORY, $XDG_RUNTIME_DIR/gotyledon, /run/gotyledon and, for
// a user other than root, /tmp/gotyledon-UID. Its error wraps
// ErrNoManager and says where it looked; one that is there but this user
// may not reach says so, with the fix.
func FindSocket(getenv func(string) string) (string, error) {
	dirs := []string{ipc.SystemSocketDir}
	if uid := os.Getuid(); uid != 0 {
		dirs = append(dirs, ipc.UserSocketDir(uid))
	}
	return findSocket(getenv, dirs...)
}

// findSocket is FindSocket with the last directories given, so that tests
// do not depend on what the machine's /run/gotyledon holds.
func findSocket(getenv func(string) string, system ...string) (string, error) {
	var tried []string
	var denied string
	for _, dir := range append([]string{firstRuntimeDir(getenv("RUNTIME_DIRECTORY")), xdgDir(getenv("XDG_RUNTIME_DIR"))}, system...) {
		if dir == "" {
			continue
		}
		p := filepath.Join(dir, "control.sock")
		_, err := os.Stat(p)
		switch {
		case err == nil:
			return p, nil
		case errors.Is(err, fs.ErrPermission) && denied == "":
			denied = p
		}
		tried = append(tried, p)
	}
	if denied != "" {
		return "", fmt.Errorf("permission denied on %s: a manager may run there, and this user may not reach it (run this as the manager's user or root, or as a member of the socket's group, control.group)", denied)
	}
	return "", fmt.Errorf("%w here: no control socket at %s (give --socket PATH, or --config FILE of the manager)", ErrNoManager, strings.Join(tried, ", "))
}

// firstRuntimeDir is the first of systemd's RUNTIME_DIRECTORY, which lists
// every RuntimeDirectory= of the unit, separated by colons.
func firstRuntimeDir(v string) string { d, _, _ := strings.Cut(v, ":"); return d }

func xdgDir(v string) string {
	if v == "" {
		return ""
	}
	return filepath.Join(v, "gotyledon")
}
