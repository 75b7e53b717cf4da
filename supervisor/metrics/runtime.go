package metrics

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The manager process's own figures: go_* from the Go runtime, process_*
// from /proc/self and getrlimit. Names, help and types are those of
// Prometheus's Go client (its Go and process collectors), so dashboards
// made for any Go program work; go_gc_gogc_percent and the process_network_*
// counters (the network namespace's, not the process's) are left out.

// memstat is a go_memstats_* gauge or counter read from runtime.MemStats.
type memstat struct {
	desc
	value func(*runtime.MemStats) float64
}

func memstatGauge(name, help string, v func(*runtime.MemStats) uint64) memstat {
	return memstat{newDesc("go_memstats_"+name, help, gaugeType), func(ms *runtime.MemStats) float64 { return float64(v(ms)) }}
}

func memstatCounter(name, help string, v func(*runtime.MemStats) uint64) memstat {
	return memstat{newDesc("go_memstats_"+name, help, counterType), func(ms *runtime.MemStats) float64 { return float64(v(ms)) }}
}

// memstats are built on the first scrape, not when the program starts:
// a worker or a command line never pays for them.
var memstats = sync.OnceValue(func() []memstat {
	return []memstat{
		memstatGauge("alloc_bytes", "Number of bytes allocated in heap and currently in use. Equals to /memory/classes/heap/objects:bytes.",
			func(ms *runtime.MemStats) uint64 { return ms.Alloc }),
		memstatCounter("alloc_bytes_total", "Total number of bytes allocated in heap until now, even if released already. Equals to /gc/heap/allocs:bytes.",
			func(ms *runtime.MemStats) uint64 { return ms.TotalAlloc }),
		memstatGauge("buck_hash_sys_bytes", "Number of bytes used by the profiling bucket hash table. Equals to /memory/classes/profiling/buckets:bytes.",
			func(ms *runtime.MemStats) uint64 { return ms.BuckHashSys }),
		memstatCounter("frees_total", "Total number of heap objects frees. Equals to /gc/heap/frees:objects + /gc/heap/tiny/allocs:objects.",
			func(ms *runtime.MemStats) uint64 { return ms.Frees }),
		memstatGauge("gc_sys_bytes", "Number of bytes used for garbage collection system metadata. Equals to /memory/classes/metadata/other:bytes.",
			func(ms *runtime.MemStats) uint64 { return ms.GCSys }),
		memstatGauge("heap_alloc_bytes", "Number of heap bytes allocated and currently in use, same as go_memstats_alloc_bytes. Equals to /memory/classes/heap/objects:bytes.",
			func(ms *runtime.MemStats) uint64 { return ms.HeapAlloc }),
		memstatGauge("heap_idle_bytes", "Number of heap bytes waiting to be used. Equals to /memory/classes/heap/released:bytes + /memory/classes/heap/free:bytes.",
			func(ms *runtime.MemStats) uint64 { return ms.HeapIdle }),
		memstatGauge("heap_inuse_bytes", "Number of heap bytes that are in use. Equals to /memory/classes/heap/objects:bytes + /memory/classes/heap/unused:bytes",
			func(ms *runtime.MemStats) uint64 { return ms.HeapInuse }),
		memstatGauge("heap_objects", "Number of currently allocated objects. Equals to /gc/heap/objects:objects.",
			func(ms *runtime.MemStats) uint64 { return ms.HeapObjects }),
		memstatGauge("heap_released_bytes", "Number of heap bytes released to OS. Equals to /memory/classes/heap/released:bytes.",
			func(ms *runtime.MemStats) uint64 { return ms.HeapReleased }),
		memstatGauge("heap_sys_bytes", "Number of heap bytes obtained from system. Equals to /memory/classes/heap/objects:bytes + /memory/classes/heap/unused:bytes + /memory/classes/heap/released:bytes + /memory/classes/heap/free:bytes.",
			func(ms *runtime.MemStats) uint64 { return ms.HeapSys }),
		{newDesc("go_memstats_last_gc_time_seconds", "Number of seconds since 1970 of last garbage collection.", gaugeType),
			func(ms *runtime.MemStats) float64 { return float64(ms.LastGC) / 1e9 }},
		memstatCounter("mallocs_total", "Total number of heap objects allocated, both live and gc-ed. Semantically a counter version for go_memstats_heap_objects gauge. Equals to /gc/heap/allocs:objects + /gc/heap/tiny/allocs:objects.",
			func(ms *runtime.MemStats) uint64 { return ms.Mallocs }),
		memstatGauge("mcache_inuse_bytes", "Number of bytes in use by mcache structures. Equals to /memory/classes/metadata/mcache/inuse:bytes.",
			func(ms *runtime.MemStats) uint64 { return ms.MCacheInuse }),
		memstatGauge("mcache_sys_bytes", "Number of bytes used for mcache structures obtained from system. Equals to /memory/classes/metadata/mcache/inuse:bytes + /memory/classes/metadata/mcache/free:bytes.",
			func(ms *runtime.MemStats) uint64 { return ms.MCacheSys }),
		memstatGauge("mspan_inuse_bytes", "Number of bytes in use by mspan structures. Equals to /memory/classes/metadata/mspan/inuse:bytes.",
			func(ms *runtime.MemStats) uint64 { return ms.MSpanInuse }),
		memstatGauge("mspan_sys_bytes", "Number of bytes used for mspan structures obtained from system. Equals to /memory/classes/metadata/mspan/inuse:bytes + /memory/classes/metadata/mspan/free:bytes.",
			func(ms *runtime.MemStats) uint64 { return ms.MSpanSys }),
		memstatGauge("next_gc_bytes", "Number of heap bytes when next garbage collection will take place. Equals to /gc/heap/goal:bytes.",
			func(ms *runtime.MemStats) uint64 { return ms.NextGC }),
		memstatGauge("other_sys_bytes", "Number of bytes used for other system allocations. Equals to /memory/classes/other:bytes.",
			func(ms *runtime.MemStats) uint64 { return ms.OtherSys }),
		memstatGauge("stack_inuse_bytes", "Number of bytes obtained from system for stack allocator in non-CGO environments. Equals to /memory/classes/heap/stacks:bytes.",
			func(ms *runtime.MemStats) uint64 { return ms.StackInuse }),
		memstatGauge("stack_sys_bytes", "Number of bytes obtained from system for stack allocator. Equals to /memory/classes/heap/stacks:bytes + /memory/classes/os-stacks:bytes.",
			func(ms *runtime.MemStats) uint64 { return ms.StackSys }),
		memstatGauge("sys_bytes", "Number of bytes obtained from system. Equals to /memory/classes/total:byte.",
			func(ms *runtime.MemStats) uint64 { return ms.Sys }),
	}
})

var (
	goGCDuration = newDesc("go_gc_duration_seconds", "A summary of the wall-time pause (stop-the-world) duration in garbage collection cycles.", summaryType)
	goMemLimit   = newDesc("go_gc_gomemlimit_bytes", "Go runtime memory limit configured by the user, otherwise math.MaxInt64. This value is set by the GOMEMLIMIT environment variable, and the runtime/debug.SetMemoryLimit function. Sourced from /gc/gomemlimit:bytes.", gaugeType)
	goGoroutines = newDesc("go_goroutines", "Number of goroutines that currently exist.", gaugeType)
	goInfo       = newDesc("go_info", "Information about the Go environment.", gaugeType, "version")
	goMaxProcs   = newDesc("go_sched_gomaxprocs_threads", "The current runtime.GOMAXPROCS setting, or the number of operating system threads that can execute user-level Go code simultaneously. Sourced from /sched/gomaxprocs:threads.", gaugeType)
	goThreads    = newDesc("go_threads", "Number of OS threads created.", gaugeType)

	processCPU      = newDesc("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", counterType)
	processMaxFDs   = newDesc("process_max_fds", "Maximum number of open file descriptors.", gaugeType)
	processOpenFDs  = newDesc("process_open_fds", "Number of open file descriptors.", gaugeType)
	processRSS      = newDesc("process_resident_memory_bytes", "Resident memory size in bytes.", gaugeType)
	processStart    = newDesc("process_start_time_seconds", "Start time of the process since unix epoch in seconds.", gaugeType)
	processVSize    = newDesc("process_virtual_memory_bytes", "Virtual memory size in bytes.", gaugeType)
	processMaxVSize = newDesc("process_virtual_memory_max_bytes", "Maximum amount of virtual memory available in bytes.", gaugeType)
)

// one is a family of one series without labels.
func one(d desc, v float64) *family {
	f := &family{desc: d}
	f.add(v)
	return f
}

// goFamilies are the go_* figures, read now.
func goFamilies() []*family {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	var fams []*family
	for _, m := range memstats() {
		fams = append(fams, one(m.desc, m.value(&ms)))
	}

	// The pause quantiles 0, 0.25, 0.5, 0.75 and 1, as the Go client has them.
	var gc debug.GCStats
	gc.PauseQuantiles = make([]time.Duration, 5)
	debug.ReadGCStats(&gc)
	pauses := &family{desc: goGCDuration}
	for i, q := range gc.PauseQuantiles {
		pauses.series = append(pauses.series, series{
			labels: []labelPair{{"quantile", strconv.FormatFloat(float64(i)/4, 'g', -1, 64)}},
			value:  q.Seconds(),
		})
	}
	pauses.series = append(pauses.series,
		series{suffix: "_sum", value: gc.PauseTotal.Seconds()},
		series{suffix: "_count", value: float64(gc.NumGC)})

	threads, _ := runtime.ThreadCreateProfile(nil)
	info := &family{desc: goInfo}
	info.add(1, runtime.Version())
	return append(fams, pauses, info,
		one(goMemLimit, float64(debug.SetMemoryLimit(-1))), // a negative limit only reads it
		one(goGoroutines, float64(runtime.NumGoroutine())),
		one(goMaxProcs, float64(runtime.GOMAXPROCS(0))),
		one(goThreads, float64(threads)),
	)
}

// userHZ is the unit of /proc's CPU times (sysconf(_SC_CLK_TCK): 100 on
// every Linux platform Go supports).
const userHZ = 100

// bootTime is btime of /proc/stat: when the machine booted, in seconds
// since the epoch. It never changes, so it is read once.
var bootTime = sync.OnceValues(func() (float64, error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	for line := range bytes.Lines(data) {
		if v, ok := bytes.CutPrefix(line, []byte("btime ")); ok {
			return strconv.ParseFloat(string(bytes.TrimSpace(v)), 64)
		}
	}
	return 0, errors.New("/proc/stat has no btime")
})

// processFamilies are the process_* figures of this process, read now. A
// figure that cannot be read is left out, and its error returned.
func processFamilies() ([]*family, error) {
	var fams []*family
	var errs []error
	if st, err := readSelfStat(); err != nil {
		errs = append(errs, err)
	} else {
		fams = append(fams,
			one(processCPU, float64(st.utime+st.stime)/userHZ),
			one(processVSize, float64(st.vsize)),
			one(processRSS, float64(st.rss*int64(os.Getpagesize()))))
		if boot, err := bootTime(); err != nil {
			errs = append(errs, err)
		} else {
			fams = append(fams, one(processStart, float64(st.starttime)/userHZ+boot))
		}
	}
	if n, err := openFDs(); err != nil {
		errs = append(errs, err)
	} else {
		fams = append(fams, one(processOpenFDs, float64(n)))
	}
	var nofile, as unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &nofile); err != nil {
		errs = append(errs, fmt.Errorf("getrlimit RLIMIT_NOFILE: %w", err))
	} else {
		fams = append(fams, one(processMaxFDs, float64(nofile.Cur)))
	}
	if err := unix.Getrlimit(unix.RLIMIT_AS, &as); err != nil {
		errs = append(errs, fmt.Errorf("getrlimit RLIMIT_AS: %w", err))
	} else {
		fams = append(fams, one(processMaxVSize, float64(as.Cur)))
	}
	return fams, errors.Join(errs...)
}

// selfStat holds the fields of /proc/self/stat the process_* figures use.
type selfStat struct {
	utime, stime, starttime uint64 // clock ticks (userHZ)
	vsize                   uint64 // bytes
	rss                     int64  // pages
}

func readSelfStat() (selfStat, error) {
	var st selfStat
	data, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return st, err
	}
	// pid (comm) state ppid ...: comm may hold anything, spaces and
	// parentheses too, so the fields are those after its last ')'.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return st, fmt.Errorf("/proc/self/stat: no ')' in %q", data)
	}
	f := bytes.Fields(data[i+1:])
	// f[0] is field 3 (state): field n is f[n-3].
	if len(f) < 22 {
		return st, fmt.Errorf("/proc/self/stat: %d fields after the command name, want 22 or more", len(f))
	}
	var errs [5]error
	st.utime, errs[0] = strconv.ParseUint(string(f[14-3]), 10, 64)
	st.stime, errs[1] = strconv.ParseUint(string(f[15-3]), 10, 64)
	st.starttime, errs[2] = strconv.ParseUint(string(f[22-3]), 10, 64)
	st.vsize, errs[3] = strconv.ParseUint(string(f[23-3]), 10, 64)
	st.rss, errs[4] = strconv.ParseInt(string(f[24-3]), 10, 64)
	if err := errors.Join(errs[:]...); err != nil {
		return st, fmt.Errorf("/proc/self/stat: %w", err)
	}
	return st, nil
}

// openFDs counts the entries of /proc/self/fd (the one open to read it
// included, as the Go client counts).
func openFDs() (int, error) {
	d, err := os.Open("/proc/self/fd")
	if err != nil {
		return 0, err
	}
	defer d.Close()
	n := 0
	for {
		names, err := d.Readdirnames(1024)
		n += len(names)
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return 0, err
		}
	}
}
