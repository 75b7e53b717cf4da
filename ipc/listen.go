package ipc

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrInUse is matched by Listen's error (an *InUseError) when another
// process serves the socket's path.
var ErrInUse = errors.New("socket in use by a live broker")

// InUseError is Listen's error when another process holds the socket's
// lock, or accepts on it.
type InUseError struct {
	Path string
	// PID is the process that holds the lock, as it wrote it in the lock
	// file; 0 if unknown (it has not written it yet, or a process that
	// takes no lock accepts on the socket).
	PID int
}

func (e *InUseError) Error() string {
	if e.PID > 0 {
		return fmt.Sprintf("socket %s is in use by process %d", e.Path, e.PID)
	}
	return fmt.Sprintf("socket %s is in use by a live broker", e.Path)
}

// Is makes errors.Is(err, ErrInUse) hold.
func (e *InUseError) Is(target error) bool { return target == ErrInUse }

// Listener is a socket made by Listen. It holds the socket's lock until
// Close, which stops accepting and then releases the lock; the socket
// file stays (see Listen). Close is safe to call more than once.
type Listener struct {
	*net.UnixListener
	lock     *os.File
	lockOnce sync.Once
}

// Close stops accepting connections and releases the socket's lock.
func (l *Listener) Close() error {
	err := l.UnixListener.Close()
	l.lockOnce.Do(func() { l.lock.Close() })
	return err
}

// LockPath is the lock file Listen holds for the socket at path: the
// socket's path with ".lock" added. It is left in place when released
// (removing it would let two processes lock two different files).
func LockPath(path string) string { return path + ".lock" }

// Listen creates the broker's Unix socket at path and listens on it.
//
// The socket's directory is created if missing, with mode 0700, or 0750
// and group gid when gid >= 0 (its parents with 0755). Only one process
// at a time serves a path: Listen takes an exclusive lock (flock) on the
// file LockPath(path), writes its pid in it, and holds it until the
// Listener is closed or the process ends, however it ends. If another
// process holds it, Listen fails with an *InUseError naming that process.
// Holding the lock, it replaces a socket already at path that nobody
// accepts on (a broker that died); one that accepts is left alone (an
// *InUseError); anything else at path (a regular file, say) is an error
// too.
//
// The socket file has mode 0600, or 0660 and group gid when gid >= 0, from
// the moment it appears at path: it is bound under a temporary name in the
// same directory with its mode already set (fchmod of the socket before
// bind, which Linux applies to the file bind creates), chowned, and renamed
// into place. The file stays when the listener is closed (the next Listen
// replaces it as stale), so that closing never removes a newer broker's
// socket.
func Listen(path string, gid int) (_ *Listener, err error) {
	dir := filepath.Dir(path)
	if err := makeSocketDir(dir, gid); err != nil {
		return nil, fmt.Errorf("ipc: listen on %s: %w", path, err)
	}
	lock, err := lockSocket(path)
	if err != nil {
		return nil, fmt.Errorf("ipc: listen on %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			lock.Close()
		}
	}()
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
	return &Listener{UnixListener: ul, lock: lock}, nil
}

// lockSocket takes the lock of the socket at path and writes this
// process's pid in it, or returns an *InUseError naming the holder. The
// file is close-on-exec: a worker must not hold the lock past the manager.
func lockSocket(path string) (*os.File, error) {
	// O_NOFOLLOW: a symlink planted at the lock's path must not make the
	// manager truncate whatever it points to.
	f, err := os.OpenFile(LockPath(path), os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening the socket's lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			data := make([]byte, 32)
			n, _ := f.ReadAt(data, 0)
			// The first line: the holder may be cutting a longer old pid.
			first, _, _ := strings.Cut(string(data[:n]), "\n")
			pid, _ := strconv.Atoi(strings.TrimSpace(first))
			return nil, &InUseError{Path: path, PID: pid}
		}
		return nil, fmt.Errorf("locking %s: %w", LockPath(path), err)
	}
	// Written over the old content, then cut to length: a truncation to
	// zero would have ext4 flush the file when it is closed (its
	// auto_da_alloc), which costs every stop a fraction of a millisecond.
	line := []byte(strconv.Itoa(os.Getpid()) + "\n")
	if _, err := f.WriteAt(line, 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("writing %s: %w", LockPath(path), err)
	}
	if err := f.Truncate(int64(len(line))); err != nil {
		f.Close()
		return nil, fmt.Errorf("writing %s: %w", LockPath(path), err)
	}
	return f, nil
}

// sharedDir reports whether everyone may create entries in dir (as in
// /tmp).
func sharedDir(dir string) bool {
	fi, err := os.Stat(dir)
	return err == nil && fi.Mode().Perm()&0o002 != 0
}

// makeSocketDir creates dir if missing, 0700 or 0750 with group gid.
func makeSocketDir(dir string, gid int) error {
	if fi, err := os.Lstat(dir); err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%s is not a directory", dir)
		}
		// In a directory everyone may write (/tmp), another user could
		// have made it first: only ours, or root's, will do.
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Getuid() && st.Uid != 0 && sharedDir(filepath.Dir(dir)) {
			return fmt.Errorf("%s belongs to uid %d, not to this user (uid %d): not serving a socket in it; set broker.socket and control.socket, or remove it", dir, st.Uid, os.Getuid())
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
// accepts on, an *InUseError when a process accepts on it (one that takes
// no lock: an older gotyledon, say).
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
		return &InUseError{Path: path}
	}
	if errors.Is(err, unix.ECONNREFUSED) {
		return nil // stale: replaced by the rename
	}
	return fmt.Errorf("checking whether the socket is in use: %w", err)
}

// DefaultSocketPath is where the broker's socket goes unless configured:
// queue.sock in DefaultSocketDir. getenv is os.Getenv outside tests.
func DefaultSocketPath(getenv func(string) string) string {
	return filepath.Join(DefaultSocketDir(getenv), "queue.sock")
}

// SystemSocketDir is the sockets' directory of a manager run by root (or
// as a systemd unit, RuntimeDirectory=gotyledon).
const SystemSocketDir = "/run/gotyledon"

// DefaultSocketDir is the directory of the manager's sockets unless
// configured: $RUNTIME_DIRECTORY (systemd's RuntimeDirectory=, the first
// one if several), else $XDG_RUNTIME_DIR/gotyledon, else /run/gotyledon
// for root or a user who may write there, else /tmp/gotyledon-UID, a
// directory of the user's own (created 0700; one owned by anyone else is
// refused when the socket is made).
func DefaultSocketDir(getenv func(string) string) string {
	return defaultSocketDir(getenv, os.Getuid(), writableDir)
}

func defaultSocketDir(getenv func(string) string, uid int, writable func(string) bool) string {
	if d, _, _ := strings.Cut(getenv("RUNTIME_DIRECTORY"), ":"); d != "" {
		return d
	}
	if d := getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "gotyledon")
	}
	if uid == 0 || writable(SystemSocketDir) {
		return SystemSocketDir
	}
	return UserSocketDir(uid)
}

// UserSocketDir is the sockets' directory of a user without
// $XDG_RUNTIME_DIR who may not write /run/gotyledon: /tmp/gotyledon-UID.
func UserSocketDir(uid int) string {
	return filepath.Join(os.TempDir(), "gotyledon-"+strconv.Itoa(uid))
}

// writableDir reports whether this process may create files in dir, or
// create dir itself.
func writableDir(dir string) bool {
	if _, err := os.Stat(dir); err == nil {
		return unix.Access(dir, unix.W_OK|unix.X_OK) == nil
	}
	return unix.Access(filepath.Dir(dir), unix.W_OK|unix.X_OK) == nil
}
