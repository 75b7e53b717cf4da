package supervisor

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"time"
)

// userHZ is the unit of the CPU times in /proc/PID/stat: the kernel's
// USER_HZ, 100 on every Linux architecture (it is ABI, whatever the
// kernel's own tick rate).
const userHZ = 100

// readProcessStats reads what the process pid alone uses: its CPU time
// (utime and stime of /proc/PID/stat) and its resident set (statm). It is
// the usage of a worker that has no cgroup. ok is false once the process
// is gone.
func readProcessStats(pid int) (u WorkerUsage, ok bool) {
	dir := "/proc/" + strconv.Itoa(pid) + "/"
	stat, err := readCgroupFile(dir + "stat")
	if err != nil {
		return u, false
	}
	cpu, ok := parseProcStatCPU(stat)
	if !ok {
		return u, false
	}
	u.CPU, u.ProcessOnly = cpu, true
	if statm, err := readCgroupFile(dir + "statm"); err == nil {
		if f := strings.Fields(string(statm)); len(f) > 1 {
			rss, _ := strconv.ParseUint(f[1], 10, 64)
			u.Memory = rss * uint64(os.Getpagesize())
		}
	}
	return u, true
}

// parseProcStatCPU returns utime+stime of a /proc/PID/stat line. The
// command name (field 2) may hold spaces and parentheses, so the fields
// are counted from the last ')': state is field 3, utime 14, stime 15.
func parseProcStatCPU(stat []byte) (time.Duration, bool) {
	end := bytes.LastIndexByte(stat, ')')
	if end < 0 {
		return 0, false
	}
	f := strings.Fields(string(stat[end+1:]))
	if len(f) < 13 {
		return 0, false
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(utime+stime) * time.Second / userHZ, true
}
