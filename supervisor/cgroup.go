package supervisor

// Workers in cgroups of their own.
//
// A worker's process group holds what it forks, unless a descendant leaves
// it (setsid, a daemon's double fork): then only the manager's sweep at
// shutdown finds it, and nothing does if the manager is SIGKILLed. Where
// the manager may make a cgroup v2 subtree (as root, or in a unit with
// systemd's Delegate=yes), each worker process gets a cgroup of its own,
// which nothing it forks can leave:
//
//	<the manager's cgroup>/               the manager, and its sentinel: a shell
//	                                      that kills the subtree once the manager is gone
//	    gotyledon-<manager pid>-<random>/
//	        w-<token>/    one worker process and everything it forks
//	        c-<id>/       a command of RunCommand
//
// The process is forked straight into its cgroup (clone3's
// CLONE_INTO_CGROUP). cgroup.kill then ends a worker whole: when its main
// process dies on its own, when its stop timeout runs out, and when the
// manager stops. If the manager itself is killed (SIGKILL, the OOM killer,
// a crash), nothing of it can act: the sentinel, a shell blocked reading
// a pipe only the manager holds open, sees end of file, sends SIGTERM to
// what is left in the workers' cgroups, and after shutdown_timeout writes
// cgroup.kill of the subtree, and removes it. A
// manager never touches a subtree but its own: another one's, in another
// pid namespace say, cannot be told dead from alive by its pid.
//
// Each worker's CPU time and memory are read from its cgroup for status
// and metrics. Where no subtree can be made, or this kernel cannot fork
// into a cgroup (clone3 with CLONE_INTO_CGROUP: Linux 5.7, and a seccomp
// profile that allows it) or kill one (cgroup.kill: Linux 5.14), the
// manager says so once and goes on with process groups alone.

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// cgroupTree is the manager's cgroup v2 subtree. Its methods are called
// from the process table's goroutine, but for stats, which only reads.
type cgroupTree struct {
	// parent is the cgroup the manager was in when it started; root its
	// subtree, parent/gotyledon-<pid>.
	parent, root string
	log          *zap.Logger
}

// cgroupPrefix names a manager's subtree in its parent: the prefix, the
// manager's pid and a random suffix (pids repeat across pid namespaces).
const cgroupPrefix = "gotyledon-"

// setupCgroups makes the manager's subtree, and checks that a process can
// be forked into a cgroup of it and a cgroup killed. The manager itself
// stays where it is: the subtree holds no process of its own, so that it
// may hand its controllers down to the workers' cgroups. It returns why
// it could not (the manager then runs without).
func setupCgroups(log *zap.Logger) (*cgroupTree, error) {
	mount, err := cgroup2Mount()
	if err != nil {
		return nil, err
	}
	own, err := ownCgroup()
	if err != nil {
		return nil, err
	}
	t := &cgroupTree{parent: filepath.Join(mount, own), log: log}
	var rnd [4]byte
	rand.Read(rnd[:])
	t.root = filepath.Join(t.parent, cgroupPrefix+strconv.Itoa(os.Getpid())+"-"+hex.EncodeToString(rnd[:]))
	if err := os.Mkdir(t.root, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", t.root, err)
	}
	if _, err := os.Stat(filepath.Join(t.root, "cgroup.kill")); err != nil {
		os.Remove(t.root)
		return nil, fmt.Errorf("no cgroup.kill (Linux 5.14 has it): %w", err)
	}
	if err := t.probeFork(); err != nil {
		removeCgroupTree(t.root, time.Second)
		return nil, fmt.Errorf("cannot fork into a cgroup (clone3 with CLONE_INTO_CGROUP: Linux 5.7, and no seccomp filter against it): %w", err)
	}
	// The memory controller, handed down to the workers' cgroups for
	// memory.current (status, metrics). Not the cpu or io controllers:
	// each would make every worker a scheduling group of its own, sharing
	// the CPU (or the disk) out per worker rather than per thread as
	// without cgroups. Not having it is not an error: cpu.stat is there
	// regardless, and memory is then summed from /proc.
	if ctl, err := readCgroupFile(filepath.Join(t.root, "cgroup.controllers")); err == nil && slices.Contains(strings.Fields(string(ctl)), "memory") {
		if err := writeCgroupFile(filepath.Join(t.root, "cgroup.subtree_control"), "+memory"); err != nil {
			log.Debug("memory controller not enabled for the workers", zap.Error(err))
		}
	}
	return t, nil
}

// cgroup2Mount finds where the cgroup v2 hierarchy is mounted: on
// /sys/fs/cgroup (unified), or /sys/fs/cgroup/unified (hybrid).
func cgroup2Mount() (string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("find the cgroup v2 mount: %w", err)
	}
	for line := range strings.Lines(string(data)) {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
		pre, post, ok := strings.Cut(line, " - ")
		if !ok || !strings.HasPrefix(post, "cgroup2 ") {
			continue
		}
		f := strings.Fields(pre)
		if len(f) >= 5 && f[3] == "/" {
			return unescapeMountPath(f[4]), nil
		}
	}
	return "", errors.New("no cgroup v2 hierarchy is mounted")
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ownCgroup is the manager's cgroup v2 path ("0::/PATH" in
// /proc/self/cgroup).
func ownCgroup() (string, error) {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", fmt.Errorf("read the manager's cgroup: %w", err)
	}
	for line := range strings.Lines(string(data)) {
		if p, ok := strings.CutPrefix(strings.TrimSpace(line), "0::"); ok {
			return p, nil
		}
	}
	return "", errors.New("the manager is in no cgroup v2")
}

// probeFork forks /bin/sh (the sentinel's shell) into a cgroup of the
// subtree and reaps it:
// where the kernel (or a seccomp filter) refuses clone3's
// CLONE_INTO_CGROUP, every worker's fork would fail. Called before the
// process table runs, so that the reap steals no one's status.
func (t *cgroupTree) probeFork() error {
	dir, fd, err := t.workerCgroup("probe")
	if err != nil {
		return err
	}
	defer os.Remove(dir)
	sys := &syscall.SysProcAttr{}
	useCgroup(sys, fd)
	pid, err := syscall.ForkExec("/bin/sh", []string{"sh", "-c", ":"}, &syscall.ProcAttr{Sys: sys})
	unix.Close(fd)
	if err != nil {
		return err
	}
	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(pid, &ws, 0, nil)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// removeCgroupTree kills everything in dir and below, waits up to limit
// for it to be gone, and removes the cgroups, deepest first. A subtree
// already empty, as at the end of every clean stop, is only removed.
func removeCgroupTree(dir string, limit time.Duration) {
	// Every worker's cgroup goes with the worker, so at the end of a
	// clean stop one rmdir does it: a walk would list every interface
	// file of the subtree.
	if err := unix.Rmdir(dir); err == nil || errors.Is(err, unix.ENOENT) {
		return
	}
	if cgroupPopulated(dir) {
		_ = writeCgroupFile(filepath.Join(dir, "cgroup.kill"), "1")
		waitUnpopulated(dir, limit)
	}
	var dirs []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		os.Remove(dirs[i])
	}
}

// workerCgroup creates the cgroup of a worker process (or command) named
// name and opens it for clone3. The caller closes the descriptor after the
// fork.
func (t *cgroupTree) workerCgroup(name string) (dir string, fd int, err error) {
	dir = filepath.Join(t.root, name)
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return "", -1, fmt.Errorf("create cgroup %s: %w", dir, err)
	}
	fd, err = unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		os.Remove(dir)
		return "", -1, fmt.Errorf("open cgroup %s: %w", dir, err)
	}
	return dir, fd, nil
}

// sentinelScript waits for a line on its standard input: "bye" from a
// manager that cleans up itself (it exits at once), or end of file (the
// manager is gone). Then, as the manager's own shutdown would, it sends
// SIGTERM to every process in the workers' and commands' cgroups under
// the subtree $GOTYLEDON_CGROUP (the workers themselves had their
// parent-death signal: a Go worker its stop signal, to finish the item in
// hand), waits $GOTYLEDON_GRACE seconds (shutdown_timeout), kills
// everything left in the subtree (the sentinel is not in it), waits for it
// to be empty (up to 5 s), and removes it.
// Shell builtins but sleep; a pid of 0 is another pid namespace's.
const sentinelScript = `read -r line
[ "$line" = bye ] && exit 0
R=$GOTYLEDON_CGROUP
for f in "$R"/w-*/cgroup.procs "$R"/c-*/cgroup.procs; do
	[ -f "$f" ] || continue
	while read -r p; do [ "$p" -gt 0 ] 2>/dev/null && kill -TERM "$p" 2>/dev/null; done < "$f"
done
sleep "$GOTYLEDON_GRACE"
echo 1 > "$R/cgroup.kill"
n=0
while [ $n -lt 50 ]; do
	while read -r k v; do [ "$k" = populated ] && pop=$v; done < "$R/cgroup.events"
	[ "$pop" = 0 ] && break
	sleep 0.1
	n=$((n + 1))
done
for d in "$R"/*/; do rmdir "$d" 2>/dev/null; done
rmdir "$R"`

// kill sends SIGKILL to every process in the worker cgroup dir.
func (t *cgroupTree) kill(dir string) {
	if err := writeCgroupFile(filepath.Join(dir, "cgroup.kill"), "1"); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.log.Warn("cannot kill a worker's cgroup", zap.String("cgroup", dir), zap.Error(err))
	}
}

// remove removes the worker cgroup dir if it is empty, and reports
// whether it is gone. One that still holds processes stays: those a kill
// has not ended yet (the kernel's kill is not instant), or what a stopped
// worker left behind, which the shutdown's sweep stops (SIGTERM, then
// SIGKILL after shutdown_timeout). The process table tries again later,
// and close removes the rest.
func (t *cgroupTree) remove(dir string) bool {
	err := os.Remove(dir)
	return err == nil || errors.Is(err, os.ErrNotExist)
}

// close kills what is left in the subtree and removes it.
func (t *cgroupTree) close() {
	removeCgroupTree(t.root, 2*time.Second)
}

// readCgroupStats reads dir's CPU time (cpu.stat) and memory
// (memory.current where the memory controller is enabled, else the sum of
// its processes' resident sets from /proc). ok is false when dir is gone.
func readCgroupStats(dir string) (s WorkerUsage, ok bool) {
	data, err := readCgroupFile(filepath.Join(dir, "cpu.stat"))
	if err != nil {
		return s, false
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if v, found := strings.CutPrefix(sc.Text(), "usage_usec "); found {
			usec, _ := strconv.ParseUint(v, 10, 64)
			s.CPU = time.Duration(usec) * time.Microsecond
		}
	}
	if cur, err := readCgroupFile(filepath.Join(dir, "memory.current")); err == nil {
		s.Memory, _ = strconv.ParseUint(strings.TrimSpace(string(cur)), 10, 64)
		return s, true
	}
	page := uint64(os.Getpagesize())
	for _, pid := range cgroupPids(dir) {
		statm, err := readCgroupFile("/proc/" + strconv.Itoa(pid) + "/statm")
		if err != nil {
			continue
		}
		if f := strings.Fields(string(statm)); len(f) > 1 {
			rss, _ := strconv.ParseUint(f[1], 10, 64)
			s.Memory += rss * page
		}
	}
	return s, true
}

// workerPids lists the processes in the workers' and commands' cgroups
// (w-*, c-*).
func (t *cgroupTree) workerPids() []int {
	if !cgroupPopulated(t.root) { // one read, where a stop ends
		return nil
	}
	entries, err := os.ReadDir(t.root)
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		if e.IsDir() && (strings.HasPrefix(e.Name(), "w-") || strings.HasPrefix(e.Name(), "c-")) {
			pids = append(pids, cgroupPids(filepath.Join(t.root, e.Name()))...)
		}
	}
	return pids
}

// cgroupPids lists the processes in dir (not below).
func cgroupPids(dir string) []int {
	data, err := readCgroupFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(data)) {
		// A process of another pid namespace is listed as 0: not one to
		// signal (kill(0, sig) would signal our own process group).
		if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	return pids
}

// waitUnpopulated waits, at most limit, until no process is left in dir
// or below. The kernel reports a change of cgroup.events as a
// modification of the file (inotify), so that the wait ends as soon as
// the last process is gone; without inotify it polls.
func waitUnpopulated(dir string, limit time.Duration) {
	deadline := time.Now().Add(limit)
	events := filepath.Join(dir, "cgroup.events")
	in, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err == nil {
		defer unix.Close(in)
		if _, err = unix.InotifyAddWatch(in, events, unix.IN_MODIFY); err != nil {
			in = -1
		}
	} else {
		in = -1
	}
	buf := make([]byte, 4096)
	for cgroupPopulated(dir) {
		left := time.Until(deadline)
		if left <= 0 {
			return
		}
		if in < 0 {
			time.Sleep(min(left, 5*time.Millisecond))
			continue
		}
		fds := []unix.PollFd{{Fd: int32(in), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, int(left.Milliseconds())+1); err != nil && !errors.Is(err, unix.EINTR) {
			return
		}
		_, _ = unix.Read(in, buf) // drain; the loop looks at the file itself
	}
}

// cgroupPopulated reports whether dir or a cgroup below it holds a
// process (cgroup.events).
func cgroupPopulated(dir string) bool {
	data, err := readCgroupFile(filepath.Join(dir, "cgroup.events"))
	if err != nil {
		return false
	}
	return strings.Contains(string(data), "populated 1")
}

// readCgroupFile reads a cgroup interface file (or a small /proc file)
// whole. Plain system calls, not an *os.File: these files can be polled,
// so os would add each to its epoll set and take it out again, several
// times the cost of the read, and a stop reads a few of them.
func readCgroupFile(path string) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	var data []byte
	buf := make([]byte, 4096)
	for {
		n, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "read", Path: path, Err: err}
		}
		if n == 0 {
			return data, nil
		}
		data = append(data, buf[:n]...)
	}
}

// writeCgroupFile writes value to a cgroup interface file, with plain
// system calls as readCgroupFile reads.
func writeCgroupFile(path, value string) error {
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	for {
		_, err = unix.Write(fd, []byte(value))
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		return &os.PathError{Op: "write", Path: path, Err: err}
	}
	return nil
}

// useCgroup puts a fork into the cgroup open as fd (clone3's
// CLONE_INTO_CGROUP); fd < 0 leaves attr as it is.
func useCgroup(attr *syscall.SysProcAttr, fd int) {
	if fd >= 0 {
		attr.UseCgroupFD, attr.CgroupFD = true, fd
	}
}
