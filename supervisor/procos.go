package supervisor

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// procOS is the operating system as the process table sees it: every fork,
// wait, signal, /proc read and timer of the table goes through it (as
// cloudflare/tableflip's env does), so that tests can stand in a fake OS and
// clock and drive grace periods, pid and process-group reuse and timeouts
// step by step, without a process or a sleep. realProcOS is the real one.
//
// Not in it, on purpose:
//   - the table's now, which the supervisor hands it: the times the table
//     posts are compared with the loop's own, so they come from its clock;
//   - the pipes for a worker's stdout and stderr, which stay real os.Pipe
//     pairs: a fake forkExec keeps duplicates of the write ends it is given
//     (the child's copies) and closes them when its worker's output should
//     end, so the real readers, and what they post, are under test too;
//   - SIGCHLD, which only says "reap now": a test calls reap itself.
type procOS struct {
	// forkExec starts a process, as syscall.ForkExec: attr.Files are the
	// child's descriptors (the caller closes its own copies afterwards).
	forkExec func(argv0 string, argv []string, attr *syscall.ProcAttr) (pid int, err error)
	// kill sends sig to pid, or to process group -pid when pid is negative,
	// as kill(2); ESRCH when there is no such process or group.
	kill func(pid int, sig syscall.Signal) error
	// wait4 reaps a child, as wait4(2): with WNOHANG it returns 0 when no
	// child has exited and ECHILD when there is no child at all.
	wait4 func(pid int, ws *unix.WaitStatus, options int, rusage *unix.Rusage) (wpid int, err error)
	// processes lists the processes alive or unreaped now. Processes that
	// vanish while it looks are left out.
	processes func() []procStat
	// noChildren reports that this process has no child at all, alive or
	// unreaped, without reaping one; nil: unknown (processes tells).
	noChildren func() bool
	// children lists this process's children, alive or unreaped, that
	// the calling thread forked or that were orphans reparented to this
	// process (/proc children lists); ok is false where the kernel keeps
	// no such list (processes tells). nil: unknown.
	children func() (pids []int, ok bool)
	// afterFunc runs f on its own goroutine after d, as time.AfterFunc; the
	// returned function stops it, reporting whether it had not run yet.
	afterFunc func(d time.Duration, f func()) (stop func() bool)
	// newTicker delivers on c every d until stop, as time.NewTicker.
	newTicker func(d time.Duration) (c <-chan time.Time, stop func())
}

// procStat is what the process table reads of a process in /proc.
type procStat struct{ pid, ppid, pgrp int }

// realProcOS returns the operating system itself.
func realProcOS() *procOS {
	return &procOS{
		forkExec:  syscall.ForkExec,
		kill:      unix.Kill,
		wait4:     unix.Wait4,
		processes: readProcStats,
		noChildren: func() bool {
			var info unix.Siginfo
			return errors.Is(unix.Waitid(unix.P_ALL, 0, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil), unix.ECHILD)
		},
		children:  ownChildren,
		afterFunc: func(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop },
		newTicker: func(d time.Duration) (<-chan time.Time, func()) {
			t := time.NewTicker(d)
			return t.C, t.Stop
		},
	}
}

// ownChildren reads this process's children from two threads' /proc
// children lists: a child is listed under the thread that forked it (the
// calling one: the process table's, locked to its thread, forks every
// worker and command) or that became its parent. An orphan reparented to
// this process as subreaper goes to its first live thread, the main one,
// which a Go program never ends. The other threads (a dozen, as the
// runtime sees fit) have no children: reading theirs made a stop's sweep
// a quarter of a millisecond slower.
func ownChildren() ([]int, bool) {
	self := os.Getpid()
	threads := []int{self}
	if tid := unix.Gettid(); tid != self {
		threads = append(threads, tid)
	}
	var kids []int
	for _, tid := range threads {
		data, err := readCgroupFile("/proc/self/task/" + strconv.Itoa(tid) + "/children")
		if err != nil {
			return nil, false // no CONFIG_PROC_CHILDREN (the threads are alive)
		}
		for _, f := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil {
				kids = append(kids, pid)
			}
		}
	}
	return kids, true
}

// readProcStats reads the pid, parent pid and process group of every
// process from /proc. A process that vanishes while it reads is skipped;
// without /proc the list is empty.
func readProcStats() []procStat {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var stats []procStat
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// The command name, in parentheses, may hold spaces: the fields
		// that follow it are state, ppid, pgrp.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		fields := strings.Fields(s[i+1:])
		if len(fields) < 3 {
			continue
		}
		ppid, err1 := strconv.Atoi(fields[1])
		pgrp, err2 := strconv.Atoi(fields[2])
		if err1 == nil && err2 == nil {
			stats = append(stats, procStat{pid: pid, ppid: ppid, pgrp: pgrp})
		}
	}
	return stats
}

// childrenOf lists the processes in procs whose parent is pid.
func childrenOf(procs []procStat, pid int) []int {
	var kids []int
	for _, p := range procs {
		if p.ppid == pid {
			kids = append(kids, p.pid)
		}
	}
	return kids
}

// reapedGroup says what is left of the process group of a leader (pid
// pgid) that has been reaped. left: a child of parent is still in it (after
// its leader is reaped, a group's surviving members are reparented to us,
// the subreaper). reused: a process has the pid pgid again, which the
// kernel hands out only once no process has it as its group id either: the
// old group is gone, for good, and the id is someone else's now.
func reapedGroup(procs []procStat, pgid, parent int) (left, reused bool) {
	for _, p := range procs {
		if p.pid == pgid {
			return false, true
		}
		if p.pgrp == pgid && p.ppid == parent {
			left = true
		}
	}
	return left, false
}
