package control

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/gotyledon/gotyledon/config"
	"github.com/gotyledon/gotyledon/ipc"
)

// SocketPath is where the manager of cfg serves its control socket:
// control.socket, else control.sock beside the default queue socket (in
// $RUNTIME_DIRECTORY, else $XDG_RUNTIME_DIR/gotyledon, else /run/gotyledon,
// as getenv reads them).
func SocketPath(cfg *config.Config, getenv func(string) string) string {
	if cfg.Control.Socket != "" {
		return cfg.Control.Socket
	}
	return filepath.Join(filepath.Dir(ipc.DefaultSocketPath(getenv)), "control.sock")
}

// FindSocket finds a running manager's control socket without its
// configuration: the first that exists of control.sock in
// $RUNTIME_DIRECTORY, $XDG_RUNTIME_DIR/gotyledon and /run/gotyledon. Its
// error wraps ErrNoManager and says where it looked.
func FindSocket(getenv func(string) string) (string, error) {
	return findSocket(getenv, "/run/gotyledon")
}

// findSocket is FindSocket with the last directory given, so that tests do
// not depend on what the machine's /run/gotyledon holds.
func findSocket(getenv func(string) string, system string) (string, error) {
	var tried []string
	for _, dir := range []string{firstRuntimeDir(getenv("RUNTIME_DIRECTORY")), xdgDir(getenv("XDG_RUNTIME_DIR")), system} {
		if dir == "" {
			continue
		}
		p := filepath.Join(dir, "control.sock")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		tried = append(tried, p)
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
