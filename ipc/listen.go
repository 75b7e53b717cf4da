package ipc

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrInUse is wrapped by Listen's error when a broker already accepts
// connections on the socket's path.
var ErrInUse = errors.New("socket in use by a live broker")

// Listen creates the broker's Unix socket at path and listens on it.
//
// The socket's directory is created if missing, with mode 0700, or 0750
// and group gid when gid >= 0 (its parents with 0755). A socket already at
// path that nobody accepts on (a broker that died) is replaced; one that
// accepts is left alone and Listen fails with an error wrapping ErrInUse;
// anything else at path (a regular file, say) is an error too.
//
// The socket file has mode 0600, or 0660 and group gid when gid >= 0, from
// the moment it appears at path: it is bound under a temporary name in the
// same directory with its mode already set (fchmod of the socket before
// bind, which Linux applies to the file bind creates), chowned, and renamed
// into place. The file stays when the listener is closed (the next Listen
// replaces it as stale), so that closing never removes a newer broker's
// socket.
func Listen(path string, gid int) (*net.UnixListener, error) {
	dir := filepath.Dir(path)
	if err := makeSocketDir(dir, gid); err != nil {
		return nil, fmt.Errorf("ipc: listen on %s: %w", path, err)
	}
	if err := checkStale(path); err != nil {
		return nil, fmt.Errorf("ipc: listen on %s: %w", path, err)
	}
	var rnd [6]byte
	rand.Read(rnd[:])
	tmp := filepath.Join(dir, "."+filepath.Base(path)+"."+hex.EncodeToString(rnd[:]))
	if len(tmp) >= len(unix.RawSockaddrUnix{}.Path) {
		// The temporary name is 14 bytes longer than path; fall back to a
		// short one in the same directory.
		tmp = filepath.Join(dir, "."+hex.EncodeToString(rnd[:]))
	}
	mode := uint32(0o600)
	if gid >= 0 {
		mode = 0o660
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("ipc: listen on %s: creating a socket: %w", path, err)
	}
	owned := true // fd is ours to close until an os.File takes it
	defer func() {
		if owned {
			unix.Close(fd)
		}
	}()
	if err := unix.Fchmod(fd, mode); err != nil {
		return nil, fmt.Errorf("ipc: listen on %s: setting the socket's mode: %w", path, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: tmp}); err != nil {
		return nil, fmt.Errorf("ipc: listen on %s: binding %s: %w", path, tmp, err)
	}
	bound := true
	defer func() {
		if bound {
			os.Remove(tmp)
		}
	}()
	// bind applied the mode through the umask; set it exactly.
	if err := os.Chmod(tmp, os.FileMode(mode)); err != nil {
		return nil, fmt.Errorf("ipc: listen on %s: %w", path, err)
	}
	if gid >= 0 {
		if err := os.Chown(tmp, -1, gid); err != nil {
			return nil, fmt.Errorf("ipc: listen on %s: %w", path, err)
		}
	}
	if err := unix.Listen(fd, unix.SOMAXCONN); err != nil {
		return nil, fmt.Errorf("ipc: listen on %s: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	owned = false
	l, err := net.FileListener(f) // a duplicate of fd
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("ipc: listen on %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		l.Close()
		return nil, fmt.Errorf("ipc: listen on %s: moving the socket into place: %w", path, err)
	}
	bound = false
	ul := l.(*net.UnixListener)
	ul.SetUnlinkOnClose(false)
	return ul, nil
}

// makeSocketDir creates dir if missing, 0700 or 0750 with group gid.
func makeSocketDir(dir string, gid int) error {
	if fi, err := os.Stat(dir); err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%s is not a directory", dir)
		}
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return fmt.Errorf("creating the socket's directory: %w", err)
	}
	mode := os.FileMode(0o700)
	if gid >= 0 {
		mode = 0o750
	}
	if err := os.Mkdir(dir, mode); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("creating the socket's directory: %w", err)
	}
	if err := os.Chmod(dir, mode); err != nil { // the umask may have cut it
		return fmt.Errorf("creating the socket's directory: %w", err)
	}
	if gid >= 0 {
		if err := os.Chown(dir, -1, gid); err != nil {
			return fmt.Errorf("creating the socket's directory: %w", err)
		}
	}
	return nil
}

// checkStale returns nil when nothing is at path or a socket nobody
// accepts on, an error wrapping ErrInUse when a broker accepts on it.
func checkStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket (%s); not replacing it", path, fi.Mode().Type())
	}
	c, err := net.Dial("unix", path)
	if err == nil {
		c.Close()
		return ErrInUse
	}
	if errors.Is(err, unix.ECONNREFUSED) {
		return nil // stale: replaced by the rename
	}
	return fmt.Errorf("checking whether the socket is in use: %w", err)
}

// DefaultSocketPath is where the broker's socket goes unless configured:
// $RUNTIME_DIRECTORY/queue.sock (systemd's RuntimeDirectory=, the first one
// if several), else $XDG_RUNTIME_DIR/gotyledon/queue.sock, else
// /run/gotyledon/queue.sock. getenv is os.Getenv outside tests.
func DefaultSocketPath(getenv func(string) string) string {
	if d, _, _ := strings.Cut(getenv("RUNTIME_DIRECTORY"), ":"); d != "" {
		return filepath.Join(d, "queue.sock")
	}
	if d := getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "gotyledon", "queue.sock")
	}
	return "/run/gotyledon/queue.sock"
}
