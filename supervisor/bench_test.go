package supervisor_test

// Benchmarks of the manager against a bare os/exec baseline, measured in the
// same run (see BENCH.md for the latest figures and their targets).
//
// Every worker, supervised or bare, is this test binary run as the
// bench-worker helper (TEST_HELPER=bench-worker): it connects to the Unix
// socket $BENCH_SOCKET, writes its pid and a newline, and blocks until the
// connection closes. The benchmark listens on that socket; a worker "has
// started" when its pid line has been read (time.Now() right after the read).
// That point comes after fork, exec, the Go runtime's start-up and a
// connect(), and so includes the same work for the supervised worker and the
// bare one: the difference between the two is the manager's own cost.
// Supervised and bare workers report on different sockets, and every wait has
// a deadline (benchWait) and fails the benchmark when it passes.
//
// BenchmarkRespawn: one manager runs 64 bench-workers. Each op SIGKILLs the
// oldest worker (once it has run past min_uptime) and times from just before
// kill(2) until its replacement's pid arrives (ns/op); then, interleaved in the same op, times a bare
// exec.Command(bench-worker).Start() until its pid arrives (bare-ns/op), and
// kills and waits for it outside the timing. ratio = ns/op / bare-ns/op.
// Both timings are taken with time.Now around the events, not b's clock; the
// reported ns/op replaces the framework's (which would include the baseline).
//
// BenchmarkStartWorkers/n=10,100,1000: each op starts a fresh manager with n
// bench-workers and times from just before the manager's exec until all n
// pids have arrived (ns/op); then stops the manager (SIGTERM, wait for it to
// exit) outside the timing. In the same op, the baseline starts n bare
// bench-workers with exec.Command(...).Start() in a loop and times until all
// n pids have arrived (bare-ns/op), then kills and waits for them. The two
// halves alternate in order from op to op. ratio = ns/op / bare-ns/op.
//
// BenchmarkRollout: one manager runs a ready: notify service of 10
// bench-workers, which say READY=1 as they start. Each op changes the
// service's env in the file and sends SIGHUP, and times until the 10th new
// worker's pid arrives (ns/op): a rolling replacement, one worker at a
// time, each waiting for the one before to be ready. Then, in the same op,
// the baseline starts 10 bare bench-workers one after the other, each once
// the one before has reported, as the rollout does (bare-ns/op); they are
// killed outside the timing. ratio = ns/op / bare-ns/op.
//
// BenchmarkIdle1000: one manager with 1000 bench-workers; once all have
// connected it waits 1s to settle, then over a 5s window reads the manager's
// utime+stime from /proc/PID/stat (clock ticks, 100 a second) and, at the
// end, VmRSS and VmHWM from /proc/PID/status. cpu-% is the manager's CPU time
// over the window's wall time × 100, to a tick (0.2% of a 5s window: 0 means
// under that); sched-cpu-% is the same from the nanosecond counters of
// /proc/PID/task/*/schedstat. rss-MB is its VmRSS in MB (10^6 bytes, as
// benchstat reads the unit, and shows in MiB); peak-rss-MB its VmHWM;
// threads its thread count. There is no bare baseline for idle CPU; as the
// baseline for memory, bare-rss-MB is the VmRSS of one idle bench-worker
// and rss-ratio = rss-MB / bare-rss-MB. The window is taken once per op, so
// run it with -benchtime 1x.
//
// The manager runs at --log-level warn, so that starting 1000 workers logs
// nothing the benchmark must read; its log is kept only to show on failure.
//
// Reproduce (from the repository root; the -timeout is for the 1000-worker
// runs, which take minutes on a 2-core machine):
//
//	go test -run '^$' -bench 'Respawn|StartWorkers/n=(10|100)$' -count 5 -timeout 30m ./supervisor/ | tee bench-small.txt
//	go test -run '^$' -bench 'StartWorkers/n=1000' -benchtime 3x -count 5 -timeout 30m ./supervisor/ | tee bench-1000.txt
//	go test -run '^$' -bench Idle1000 -benchtime 1x -count 3 -timeout 30m ./supervisor/ | tee bench-idle.txt
//	go test -run '^$' -bench Rollout -benchtime 20x -count 5 ./supervisor/ | tee bench-rollout.txt
//	benchstat bench-small.txt bench-1000.txt bench-idle.txt   # golang.org/x/perf/cmd/benchstat
//
// 1000 workers need about 2,100 file descriptors in the manager and as many
// in the benchmark; Go raises the soft limit to the hard one, so `ulimit -Hn`
// must be at least ~4096 (raise it in the shell if it is not).

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// benchTimeout bounds every wait in the benchmarks.
const benchTimeout = 60 * time.Second

// Units of /proc/PID/status ("kB" there is 1024 bytes) and of the
// benchmarks' -MB metrics (10^6 bytes, as benchstat takes them).
const (
	kB = 1024
	MB = 1e6
)

// clockTicks is sysconf(_SC_CLK_TCK), the unit of /proc/PID/stat's times;
// 100 on every Linux platform Go supports.
const clockTicks = 100

// arrival is one bench-worker's report: its pid, when the benchmark read
// it, and the connection it keeps open for as long as it lives.
type arrival struct {
	pid  int
	at   time.Time
	conn net.Conn
}

// workerSocket is a Unix socket that bench-workers report to.
type workerSocket struct {
	path     string
	ln       *net.UnixListener
	arrivals chan arrival
	quit     chan struct{}

	mu    sync.Mutex
	conns map[net.Conn]struct{} // every accepted connection not yet closed
}

// listenWorkers opens a socket in a fresh short directory (a Unix socket's
// path is limited to 107 bytes) and accepts from it until the benchmark
// ends, or close is called. Closing a connection makes its bench-worker
// exit, so close also ends any bench-worker that is still alive.
func listenWorkers(tb testing.TB) *workerSocket {
	tb.Helper()
	dir, err := os.MkdirTemp("", "gtybench")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "w.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		tb.Fatal(err)
	}
	s := &workerSocket{
		path:     path,
		ln:       ln,
		arrivals: make(chan arrival, 2048),
		quit:     make(chan struct{}),
		conns:    make(map[net.Conn]struct{}),
	}
	go s.accept()
	tb.Cleanup(s.close)
	return s
}

func (s *workerSocket) accept() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return // closed
		}
		s.mu.Lock()
		if s.conns == nil { // closed meanwhile
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		go s.readPid(c)
	}
}

// readPid reads the worker's "PID\n" and posts its arrival.
func (s *workerSocket) readPid(c net.Conn) {
	var buf [32]byte
	n := 0
	for {
		m, err := c.Read(buf[n:])
		n += m
		if i := bytes.IndexByte(buf[:n], '\n'); i >= 0 {
			at := time.Now()
			pid, perr := strconv.Atoi(string(buf[:i]))
			if perr != nil {
				s.drop(c)
				return
			}
			select {
			case s.arrivals <- arrival{pid: pid, at: at, conn: c}:
			case <-s.quit:
			}
			return
		}
		if err != nil || n == len(buf) {
			s.drop(c) // a worker killed before it wrote its pid
			return
		}
	}
}

// drop closes one connection, ending its worker.
func (s *workerSocket) drop(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	c.Close()
}

// close stops accepting and closes every connection. Idempotent.
func (s *workerSocket) close() {
	s.mu.Lock()
	conns := s.conns
	s.conns = nil
	s.mu.Unlock()
	if conns == nil {
		return
	}
	close(s.quit)
	s.ln.Close()
	for c := range conns {
		c.Close()
	}
}

// env is what a bench-worker needs to report to s.
func (s *workerSocket) env() []string {
	return []string{envHelper + "=bench-worker", "BENCH_SOCKET=" + s.path}
}

// benchWait returns the next arrival on s, failing tb if none comes within
// benchTimeout or if died (when not nil) is closed first.
func benchWait(tb testing.TB, s *workerSocket, what string, died <-chan struct{}) arrival {
	tb.Helper()
	timer := time.NewTimer(benchTimeout)
	defer timer.Stop()
	select {
	case a := <-s.arrivals:
		return a
	case <-died:
		tb.Fatalf("manager exited while waiting for %s", what)
	case <-timer.C:
		tb.Fatalf("timed out after %v waiting for %s", benchTimeout, what)
	}
	panic("unreachable")
}

// benchWaitN waits for n arrivals on s and returns the time of the last.
func benchWaitN(tb testing.TB, s *workerSocket, n int, what string, died <-chan struct{}) (last time.Time, got []arrival) {
	tb.Helper()
	timer := time.NewTimer(benchTimeout)
	defer timer.Stop()
	got = make([]arrival, 0, n)
	for len(got) < n {
		select {
		case a := <-s.arrivals:
			got = append(got, a)
			if a.at.After(last) {
				last = a.at
			}
		case <-died:
			tb.Fatalf("manager exited while waiting for %s (%d of %d arrived)", what, len(got), n)
		case <-timer.C:
			tb.Fatalf("timed out after %v waiting for %s (%d of %d arrived)", benchTimeout, what, len(got), n)
		}
	}
	return last, got
}

// benchManager is a manager process started by a benchmark. Its log is
// read without parsing and only its tail is kept, to show on failure.
type benchManager struct {
	tb   testing.TB
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited and been waited for

	mu   sync.Mutex
	tail []string
	code int
}

const benchLogTail = 50

// benchConfig is the configuration of one service of n bench-workers that
// report to s. min_uptime is at its floor (100ms), and BenchmarkRespawn only
// kills workers older than benchMinAge, so that every kill is a normal exit,
// restarted at once: a worker killed sooner would count as a failure to
// start, and a second in a row in its slot would come back only after a
// backoff delay, which is not what BenchmarkRespawn measures.
func benchConfig(exe string, n int, s *workerSocket) string {
	return fmt.Sprintf(`services:
  bench:
    command: [%s]
    workers: %d
    env: {TEST_HELPER: bench-worker, BENCH_SOCKET: %s}
    stop_timeout: 2s
    restart: {min_uptime: 100ms}
`, strconv.Quote(exe), n, strconv.Quote(s.path))
}

// benchMinAge is the least age of a worker BenchmarkRespawn kills: past
// min_uptime (100ms) with a margin for a loaded machine.
const benchMinAge = 150 * time.Millisecond

// writeBenchConfig writes yaml to a file in a fresh directory.
func writeBenchConfig(tb testing.TB, yaml string) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "gotyledon.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		tb.Fatal(err)
	}
	return path
}

// prepareBenchManager makes, but does not start, a manager on config at
// --log-level warn: the test binary, with the tests' Go services.
func prepareBenchManager(tb testing.TB, config string) *benchManager {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	return prepareBenchManagerBinary(tb, exe, config)
}

// prepareBenchManagerBinary is prepareBenchManager with exe as the
// manager.
func prepareBenchManagerBinary(tb testing.TB, exe, config string) *benchManager {
	tb.Helper()
	m := &benchManager{tb: tb, done: make(chan struct{})}
	m.cmd = exec.Command(exe, "run", "--log-format", "json", "--log-level", "warn", "-c", config)
	m.cmd.Env = append(os.Environ(), envTestManager+"=1")
	return m
}

// start execs the manager. Once it has started, a cleanup makes sure it is
// gone when the benchmark ends, even one that failed: SIGTERM, so that it
// stops and reaps its workers itself, and SIGKILL if it has not exited
// within benchTimeout (its workers then die of their parent-death signal,
// and closing the worker sockets ends any that remain).
func (m *benchManager) start() {
	m.tb.Helper()
	stderr, err := m.cmd.StderrPipe()
	if err != nil {
		m.tb.Fatal(err)
	}
	if err := m.cmd.Start(); err != nil {
		m.tb.Fatal(err)
	}
	go m.read(stderr)
	m.tb.Cleanup(func() {
		select {
		case <-m.done:
		default:
			_ = m.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-m.done:
			case <-time.After(benchTimeout):
				m.tb.Errorf("manager %d still runs %v after SIGTERM; killing it", m.cmd.Process.Pid, benchTimeout)
				_ = m.cmd.Process.Kill()
				select {
				case <-m.done:
				case <-time.After(benchTimeout):
					m.tb.Errorf("manager %d not reaped %v after SIGKILL", m.cmd.Process.Pid, benchTimeout)
				}
			}
		}
		if m.tb.Failed() {
			m.mu.Lock()
			m.tb.Logf("last %d manager log lines:\n%s", len(m.tail), strings.Join(m.tail, "\n"))
			m.mu.Unlock()
		}
	})
}

// buildManagerBinary builds gotyledon as the README builds it
// (CGO_ENABLED=0 go build) into a temporary directory, for a benchmark
// whose figure holds the manager process's own exit: the test binary,
// bigger and linked to libc, takes longer to exit than the binary users
// run.
func buildManagerBinary(b *testing.B) string {
	b.Helper()
	out := filepath.Join(b.TempDir(), "gotyledon")
	// go test puts its go first in the PATH of the test binary.
	cmd := exec.Command("go", "build", "-o", out, "./cmd/gotyledon")
	cmd.Dir = ".." // the module's root: tests run in their package's directory
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if outp, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("build the manager: %v\n%s", err, outp)
	}
	return out
}

// startBenchManager starts a manager on yaml.
func startBenchManager(tb testing.TB, yaml string) *benchManager {
	tb.Helper()
	m := prepareBenchManager(tb, writeBenchConfig(tb, yaml))
	m.start()
	return m
}

func (m *benchManager) read(r io.Reader) {
	buf := make([]byte, 64<<10)
	var partial []byte
	for {
		n, err := r.Read(buf)
		data := append(partial, buf[:n]...)
		for {
			i := bytes.IndexByte(data, '\n')
			if i < 0 {
				break
			}
			m.mu.Lock()
			m.tail = append(m.tail, string(data[:i]))
			if len(m.tail) > 2*benchLogTail {
				m.tail = append(m.tail[:0], m.tail[len(m.tail)-benchLogTail:]...)
			}
			m.mu.Unlock()
			data = data[i+1:]
		}
		partial = append(partial[:0:0], data...)
		if err != nil {
			break
		}
	}
	werr := m.cmd.Wait()
	m.mu.Lock()
	m.code = m.cmd.ProcessState.ExitCode()
	if werr != nil && m.code == 0 {
		m.code = -1
	}
	if len(m.tail) > benchLogTail {
		m.tail = m.tail[len(m.tail)-benchLogTail:]
	}
	m.mu.Unlock()
	close(m.done)
}

func (m *benchManager) pid() int { return m.cmd.Process.Pid }

// stop sends SIGTERM and waits for the manager to exit, which it does once
// every worker has been reaped; it fails unless the exit code is 0.
func (m *benchManager) stop() {
	m.tb.Helper()
	if err := m.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		m.tb.Fatalf("SIGTERM manager: %v", err)
	}
	select {
	case <-m.done:
	case <-time.After(benchTimeout):
		m.tb.Fatalf("manager did not exit within %v of SIGTERM", benchTimeout)
	}
	m.mu.Lock()
	code := m.code
	m.mu.Unlock()
	if code != 0 {
		m.tb.Fatalf("manager exit code %d after SIGTERM, want 0", code)
	}
}

// bareWorkers are bench-workers started by the benchmark itself.
type bareWorkers struct {
	tb   testing.TB
	exe  string
	env  []string
	cmds []*exec.Cmd
}

func newBareWorkers(tb testing.TB, s *workerSocket) *bareWorkers {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	bw := &bareWorkers{tb: tb, exe: exe, env: append(os.Environ(), s.env()...)}
	tb.Cleanup(bw.killAll)
	return bw
}

// start starts one bench-worker, the way any Go program would.
func (bw *bareWorkers) start() {
	cmd := exec.Command(bw.exe)
	cmd.Env = bw.env
	if err := cmd.Start(); err != nil {
		bw.tb.Fatal(err)
	}
	bw.cmds = append(bw.cmds, cmd)
}

// killAll SIGKILLs every bench-worker started and waits for each.
func (bw *bareWorkers) killAll() {
	for _, c := range bw.cmds {
		_ = c.Process.Kill()
	}
	for _, c := range bw.cmds {
		waitCmd(bw.tb, c)
	}
	bw.cmds = bw.cmds[:0]
}

// waitCmd waits for a killed command, for at most benchTimeout.
func waitCmd(tb testing.TB, c *exec.Cmd) {
	done := make(chan struct{})
	go func() { _ = c.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(benchTimeout):
		tb.Errorf("bench-worker %d not reaped %v after SIGKILL", c.Process.Pid, benchTimeout)
	}
}

// BenchmarkRespawn: SIGKILL of a worker until its replacement has reported,
// beside a bare start of the same binary until it has reported.
func BenchmarkRespawn(b *testing.B) {
	// Enough workers that the oldest is usually past benchMinAge already
	// when its turn comes, so the benchmark rarely waits.
	const workers = 64
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	supervised := listenWorkers(b)
	bare := listenWorkers(b)
	m := startBenchManager(b, benchConfig(exe, workers, supervised))
	_, first := benchWaitN(b, supervised, workers, "the first workers", m.done)
	// live holds the supervised workers, oldest first: each op kills the
	// oldest, once it is older than benchMinAge (waiting outside the timing
	// if need be).
	live := first
	bw := newBareWorkers(b, bare)

	var respawn, baseline time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// Supervised: kill the oldest worker, wait for its replacement.
		old := live[0]
		if age := time.Since(old.at); age < benchMinAge {
			b.StopTimer()
			time.Sleep(benchMinAge - age) // the scenario needs a worker past min_uptime
			b.StartTimer()
		}
		t0 := time.Now()
		if err := syscall.Kill(old.pid, syscall.SIGKILL); err != nil {
			b.Fatalf("kill worker %d: %v", old.pid, err)
		}
		a := benchWait(b, supervised, "a replacement worker", m.done)
		respawn += a.at.Sub(t0)
		if a.pid == old.pid {
			b.Fatalf("replacement has the killed worker's pid %d", a.pid)
		}
		supervised.drop(old.conn)
		live = append(live[1:], a)

		// Bare: start the same binary, wait for it to report.
		t0 = time.Now()
		bw.start()
		a = benchWait(b, bare, "a bare worker", nil)
		baseline += a.at.Sub(t0)
		b.StopTimer()
		bw.killAll()
		bare.drop(a.conn)
		b.StartTimer()
	}
	b.StopTimer()
	m.stop()
	reportVsBare(b, respawn, baseline)
}

// reportVsBare reports ns/op (the supervised time, replacing the framework's
// own), bare-ns/op and their ratio.
func reportVsBare(b *testing.B, supervised, bare time.Duration) {
	b.ReportMetric(float64(supervised.Nanoseconds())/float64(b.N), "ns/op")
	b.ReportMetric(float64(bare.Nanoseconds())/float64(b.N), "bare-ns/op")
	if bare > 0 {
		b.ReportMetric(float64(supervised)/float64(bare), "ratio")
	}
}

// BenchmarkStartWorkers: a fresh manager's start until all n workers have
// reported, beside n bare starts until all n have reported.
func BenchmarkStartWorkers(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		b.Run("n="+strconv.Itoa(n), func(b *testing.B) { benchStartWorkers(b, n) })
	}
}

func benchStartWorkers(b *testing.B, n int) {
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	var supervised, baseline time.Duration

	runManager := func() {
		// A fresh socket per op, so that nothing from an earlier op can be
		// counted in this one.
		s := listenWorkers(b)
		m := prepareBenchManager(b, writeBenchConfig(b, benchConfig(exe, n, s)))
		t0 := time.Now()
		m.start()
		last, _ := benchWaitN(b, s, n, "supervised workers", m.done)
		supervised += last.Sub(t0)
		b.StopTimer()
		m.stop()
		s.close()
		b.StartTimer()
	}
	runBare := func() {
		s := listenWorkers(b)
		bw := newBareWorkers(b, s)
		t0 := time.Now()
		for range n {
			bw.start()
		}
		last, _ := benchWaitN(b, s, n, "bare workers", nil)
		baseline += last.Sub(t0)
		b.StopTimer()
		bw.killAll()
		s.close()
		b.StartTimer()
	}

	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// Alternate the order, so that neither half always runs on the
		// heels of the other's teardown.
		if i%2 == 0 {
			runManager()
			runBare()
		} else {
			runBare()
			runManager()
		}
	}
	b.StopTimer()
	reportVsBare(b, supervised, baseline)
}

// BenchmarkIdle1000: the manager's RSS and CPU use while 1000 workers idle,
// beside the RSS of one idle worker.
func BenchmarkIdle1000(b *testing.B) {
	const workers = 1000
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	var rss, hwm, workerRSS, cpu, schedCPU, threads float64
	for i := 0; i < b.N; i++ {
		s := listenWorkers(b)
		m := startBenchManager(b, benchConfig(exe, workers, s))
		_, got := benchWaitN(b, s, workers, "1000 workers", m.done)

		time.Sleep(time.Second) // settle: a measurement window, not a sync
		ticks0, ns0 := procCPUTicks(b, m.pid()), procSchedNs(b, m.pid())
		t0 := time.Now()
		time.Sleep(5 * time.Second) // the measurement window
		ticks1, ns1 := procCPUTicks(b, m.pid()), procSchedNs(b, m.pid())
		wall := time.Since(t0)
		st := procStatus(b, m.pid())
		ws := procStatus(b, got[len(got)/2].pid)
		select {
		case <-m.done:
			b.Fatal("manager exited during the measurement window")
		default:
		}

		cpu += float64(ticks1-ticks0) / clockTicks / wall.Seconds() * 100
		schedCPU += float64(ns1-ns0) / float64(wall.Nanoseconds()) * 100
		rss += st["VmRSS"] * kB / MB
		hwm += st["VmHWM"] * kB / MB
		threads += st["Threads"]
		workerRSS += ws["VmRSS"] * kB / MB

		m.stop()
		s.close()
	}
	n := float64(b.N)
	b.ReportMetric(0, "ns/op") // the window's length, not a result
	b.ReportMetric(rss/n, "rss-MB")
	b.ReportMetric(hwm/n, "peak-rss-MB")
	b.ReportMetric(cpu/n, "cpu-%")
	b.ReportMetric(schedCPU/n, "sched-cpu-%")
	b.ReportMetric(threads/n, "threads")
	b.ReportMetric(workerRSS/n, "bare-rss-MB")
	b.ReportMetric(rss/workerRSS, "rss-ratio")
}

// procCPUTicks returns utime+stime of process pid, in clock ticks.
func procCPUTicks(tb testing.TB, pid int) int64 {
	tb.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		tb.Fatal(err)
	}
	// The fields after the command name, which is in parentheses and may
	// hold anything: state is field 3, utime 14 and stime 15.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		tb.Fatalf("/proc/%d/stat: no ')' in %q", pid, data)
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		tb.Fatalf("/proc/%d/stat: too few fields in %q", pid, data)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		tb.Fatalf("/proc/%d/stat: %v", pid, err)
	}
	return utime + stime
}

// procSchedNs returns the time process pid's threads have spent on a CPU,
// in nanoseconds: the sum of the first field of each thread's
// /proc/PID/task/TID/schedstat. A thread that exits takes its share away
// with it; the manager's threads are the Go runtime's, which do not exit.
func procSchedNs(tb testing.TB, pid int) int64 {
	tb.Helper()
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	if err != nil || len(tasks) == 0 {
		tb.Fatalf("no /proc/%d/task/*/schedstat: %v", pid, err)
	}
	var sum int64
	for _, p := range tasks {
		data, err := os.ReadFile(p)
		if err != nil {
			continue // the thread exited
		}
		f := strings.Fields(string(data))
		if len(f) < 1 {
			tb.Fatalf("%s: %q", p, data)
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			tb.Fatalf("%s: %v", p, err)
		}
		sum += ns
	}
	return sum
}

// procStatus returns the numeric fields of /proc/PID/status (kB for sizes).
func procStatus(tb testing.TB, pid int) map[string]float64 {
	tb.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	out := make(map[string]float64)
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		if x, err := strconv.ParseFloat(f[0], 64); err == nil {
			out[k] = x
		}
	}
	for _, k := range []string{"VmRSS", "VmHWM", "Threads"} {
		if _, ok := out[k]; !ok {
			tb.Fatalf("/proc/%d/status has no %s", pid, k)
		}
	}
	return out
}

// BenchmarkReload: live reconfiguration by SIGHUP, timed from the signal.
// Each op runs a fresh manager with an "anchor" service of one worker (its
// report says the manager is up and will take the signal) and a "bench"
// service of from workers; it rewrites the file to to workers and sends
// SIGHUP (either alone would do: the file is watched), and times from the
// write until the new workers have reported (growing) or the surplus
// processes have exited, seen on pidfds opened beforehand (shrinking).
//
//	go test -run '^$' -bench Reload -benchtime 3x -count 5 ./supervisor/
func BenchmarkReload(b *testing.B) {
	for _, c := range []struct{ from, to int }{{2, 5}, {0, 1000}, {1000, 10}} {
		b.Run(fmt.Sprintf("%d-to-%d", c.from, c.to), func(b *testing.B) { benchReload(b, c.from, c.to) })
	}
}

func benchReload(b *testing.B, from, to int) {
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	conf := func(s *workerSocket, n int) string {
		anchor := strings.Replace(benchConfig(exe, 1, s), "  bench:", "  anchor:", 1)
		return anchor + strings.TrimPrefix(benchConfig(exe, n, s), "services:\n")
	}
	var total time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		s := listenWorkers(b)
		path := writeBenchConfig(b, conf(s, from))
		m := prepareBenchManager(b, path)
		m.start()
		_, first := benchWaitN(b, s, from+1, "the first workers", m.done)
		var fds []unix.PollFd
		if to < from {
			fds = openPidfds(b, first)
		}
		b.StartTimer()
		t0 := time.Now()
		if err := os.WriteFile(path, []byte(conf(s, to)), 0o644); err != nil {
			b.Fatal(err)
		}
		if err := syscall.Kill(m.pid(), syscall.SIGHUP); err != nil {
			b.Fatal(err)
		}
		if to > from {
			last, _ := benchWaitN(b, s, to-from, "the new workers", m.done)
			total += last.Sub(t0)
		} else {
			total += waitExits(b, fds, from-to, t0)
		}
		b.StopTimer()
		m.stop()
		s.close()
		b.StartTimer()
	}
	b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "ns/op")
}

// openPidfds opens a pidfd for each process that arrived, closed at the
// end of the benchmark.
func openPidfds(tb testing.TB, arrived []arrival) []unix.PollFd {
	tb.Helper()
	fds := make([]unix.PollFd, 0, len(arrived))
	for _, a := range arrived {
		fd, err := unix.PidfdOpen(a.pid, 0)
		if err != nil {
			tb.Fatalf("pidfd_open %d: %v", a.pid, err)
		}
		tb.Cleanup(func() { unix.Close(fd) })
		fds = append(fds, unix.PollFd{Fd: int32(fd), Events: unix.POLLIN})
	}
	return fds
}

// waitExits waits until n of the processes behind fds have exited and
// returns how long after t0 the last of them did.
func waitExits(tb testing.TB, fds []unix.PollFd, n int, t0 time.Time) time.Duration {
	tb.Helper()
	deadline := time.Now().Add(benchTimeout)
	exited := 0
	for exited < n {
		left := time.Until(deadline)
		if left <= 0 {
			tb.Fatalf("%d of %d processes exited within %v", exited, n, benchTimeout)
		}
		if _, err := unix.Poll(fds, int(left.Milliseconds())+1); err != nil && !errors.Is(err, unix.EINTR) {
			tb.Fatal(err)
		}
		for i := range fds {
			if fds[i].Revents != 0 && fds[i].Fd >= 0 {
				exited++
				fds[i].Fd = -1 // poll ignores it from now on
			}
		}
	}
	return time.Since(t0)
}

// rolloutWorkers is BenchmarkRollout's service size.
const rolloutWorkers = 10

// BenchmarkRollout: a rolling replacement of 10 workers that are ready at
// once, against 10 bare starts one after the other, in the same run.
func BenchmarkRollout(b *testing.B) {
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	supervised, bare := listenWorkers(b), listenWorkers(b)
	conf := func(gen int) string {
		return fmt.Sprintf(`services:
  bench:
    command: [%s]
    workers: %d
    env: {TEST_HELPER: bench-worker, BENCH_SOCKET: %s, GEN: "%d"}
    ready: notify
    stop_timeout: 2s
`, strconv.Quote(exe), rolloutWorkers, strconv.Quote(supervised.path), gen)
	}
	path := writeBenchConfig(b, conf(0))
	m := prepareBenchManager(b, path)
	m.start()
	_, live := benchWaitN(b, supervised, rolloutWorkers, "the first workers", m.done)
	bw := newBareWorkers(b, bare)

	var rollout, baseline time.Duration
	b.ResetTimer()
	for i := range b.N {
		t0 := time.Now()
		if err := os.WriteFile(path, []byte(conf(i+1)), 0o644); err != nil {
			b.Fatal(err)
		}
		if err := syscall.Kill(m.pid(), syscall.SIGHUP); err != nil {
			b.Fatal(err)
		}
		last, next := benchWaitN(b, supervised, rolloutWorkers, "the replaced workers", m.done)
		rollout += last.Sub(t0)
		b.StopTimer()
		for _, old := range live {
			supervised.drop(old.conn) // stopped by the rollout already
		}
		live = next
		b.StartTimer()

		t0 = time.Now()
		started := make([]arrival, 0, rolloutWorkers)
		for range rolloutWorkers {
			bw.start()
			started = append(started, benchWait(b, bare, "a bare worker", nil))
		}
		baseline += started[len(started)-1].at.Sub(t0)
		b.StopTimer()
		bw.killAll()
		for _, a := range started {
			bare.drop(a.conn)
		}
		b.StartTimer()
	}
	b.StopTimer()
	m.stop()
	reportVsBare(b, rollout, baseline)
}

// BenchmarkStop: SIGTERM to a manager of 3 workers that die of it at once,
// until the manager has exited (every worker reaped, its cgroups, if any,
// removed), beside SIGTERM to 3 bare workers until each is reaped. The
// manager is gotyledon built as users build it; the workers, both times,
// the test binary.
func BenchmarkStop(b *testing.B) {
	const workers = 3
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	manager := buildManagerBinary(b)
	supervised := listenWorkers(b)
	bare := listenWorkers(b)
	bw := newBareWorkers(b, bare)
	var stop, baseline time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		m := prepareBenchManagerBinary(b, manager, writeBenchConfig(b, benchConfig(exe, workers, supervised)))
		m.start()
		_, up := benchWaitN(b, supervised, workers, "the workers", m.done)
		b.StartTimer()
		t0 := time.Now()
		if err := m.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			b.Fatal(err)
		}
		select {
		case <-m.done:
		case <-time.After(benchTimeout):
			b.Fatalf("manager did not exit within %v of SIGTERM", benchTimeout)
		}
		stop += time.Since(t0)
		b.StopTimer()
		for _, w := range up {
			supervised.drop(w.conn)
		}

		for range workers {
			bw.start()
		}
		_, started := benchWaitN(b, bare, workers, "the bare workers", nil)
		b.StartTimer()
		t0 = time.Now()
		for _, c := range bw.cmds {
			_ = c.Process.Signal(syscall.SIGTERM)
		}
		for _, c := range bw.cmds {
			waitCmd(b, c)
		}
		baseline += time.Since(t0)
		b.StopTimer()
		bw.cmds = bw.cmds[:0]
		for _, w := range started {
			bare.drop(w.conn)
		}
		b.StartTimer()
	}
	b.StopTimer()
	reportVsBare(b, stop, baseline)
}
