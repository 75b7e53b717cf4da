package main

// BenchmarkRespawnGoService: how long a Go service's worker takes to come
// back after a SIGKILL, against a command worker's, under one manager in the
// same run.
//
// The benchmark builds two programs with `go build`:
//
//   - testdata/respawn: gotyledon with one Go service, "reporter" (a
//     program.Program, as users embed it). Its workers are that binary
//     re-executed: every package init of gotyledon, then the worker runtime's
//     set-up, then the service's Run, which connects to the benchmark's Unix
//     socket and writes "go PID". It is built twice: static, with
//     CGO_ENABLED=0, as the README says to build (sub-benchmark static), and
//     with CGO_ENABLED=1, go build's default where a C compiler is installed
//     (cgo): the packages net and os/user then link the C library, and every
//     start runs the dynamic loader first.
//   - a minimal command (it imports os, strconv and syscall; static), which
//     connects to the same socket and writes "cmd PID".
//
// Each sub-benchmark runs its program as the manager (`run`) with two services of 16
// workers each: gosvc (run: reporter) and cmd (the minimal command). Each
// op SIGKILLs the oldest worker of each service and waits for its
// replacement to report; the time from the kill to the report is the
// respawn (the manager's reaping and restart, fork, exec, the program's
// start). Only workers past min_uptime are killed, so each is restarted at
// once, not after a backoff delay.
//
//	ns/op      a Go service worker's respawn (the median of the run's ops)
//	cmd-ns     a command worker's respawn (median)
//	ratio      ns/op / cmd-ns
//
// Reproduce (supervisor/BENCH.md, "Start-up"):
//
//	go test -run '^$' -bench RespawnGoService -benchtime 200x -count 5 ./cmd/gotyledon/

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// reporterMain is the command worker: it reports and then blocks until it
// is killed (a read of the socket the benchmark never writes to).
const reporterMain = `package main

import (
	"os"
	"strconv"
	"syscall"
)

func main() {
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		os.Exit(1)
	}
	if err := syscall.Connect(fd, &syscall.SockaddrUnix{Name: os.Getenv("BENCH_SOCKET")}); err != nil {
		os.Exit(1)
	}
	syscall.Write(fd, []byte("cmd "+strconv.Itoa(os.Getpid())+"\n"))
	var b [1]byte
	syscall.Read(fd, b[:])
}
`

// respawnWorkers is each service's worker count: enough that the oldest is
// usually past respawnMinAge when its turn comes.
const respawnWorkers = 16

// respawnMinAge is the least age of a worker the benchmark kills: past the
// services' min_uptime (100ms), with a margin for a loaded machine.
const respawnMinAge = 150 * time.Millisecond

const respawnTimeout = 20 * time.Second

// workerReport is one line a worker wrote: its kind (go or cmd) and pid,
// and when the benchmark read it.
type workerReport struct {
	kind string
	pid  int
	at   time.Time
	conn net.Conn
}

func BenchmarkRespawnGoService(b *testing.B) {
	dir := programsDir(b)
	reporter := filepath.Join(dir, "reporter")
	if _, err := os.Stat(reporter); err != nil {
		buildProgram(b, filepath.Join(dir, "reporter-src"), reporterMain, reporter, "CGO_ENABLED=0")
		buildProgram(b, filepath.Join("testdata", "respawn"), "", filepath.Join(dir, "respawn-static"), "CGO_ENABLED=0")
		if haveCC() {
			buildProgram(b, filepath.Join("testdata", "respawn"), "", filepath.Join(dir, "respawn-cgo"), "CGO_ENABLED=1")
		}
	}
	b.Run("static", func(b *testing.B) { benchRespawn(b, filepath.Join(dir, "respawn-static"), reporter) })
	b.Run("cgo", func(b *testing.B) {
		prog := filepath.Join(dir, "respawn-cgo")
		if _, err := os.Stat(prog); err != nil {
			b.Skip("no C compiler: go build cannot build with CGO_ENABLED=1")
		}
		benchRespawn(b, prog, reporter)
	})
}

func benchRespawn(b *testing.B, prog, reporter string) {

	run := b.TempDir()
	sock := filepath.Join(run, "bench.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	reports := make(chan workerReport, 4*respawnWorkers)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				line, err := bufio.NewReader(c).ReadString('\n')
				at := time.Now()
				kind, pid, ok := strings.Cut(strings.TrimSpace(line), " ")
				n, perr := strconv.Atoi(pid)
				if err != nil || !ok || perr != nil {
					c.Close()
					return
				}
				reports <- workerReport{kind: kind, pid: n, at: at, conn: c}
			}()
		}
	}()

	cfg := filepath.Join(run, "gotyledon.yaml")
	yaml := fmt.Sprintf(`control: {socket: %s}
services:
  gosvc:
    run: reporter
    workers: %d
    env: {BENCH_SOCKET: %s}
    restart: {min_uptime: 100ms}
  cmd:
    command: [%s]
    workers: %d
    env: {BENCH_SOCKET: %s}
    restart: {min_uptime: 100ms}
`, strconv.Quote(filepath.Join(run, "control.sock")), respawnWorkers, strconv.Quote(sock),
		strconv.Quote(reporter), respawnWorkers, strconv.Quote(sock))
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		b.Fatal(err)
	}
	mgr := exec.Command(prog, "run", "--log-level", "warn", "--config", cfg)
	var logs strings.Builder
	mgr.Stdout, mgr.Stderr = &logs, &logs
	if err := mgr.Start(); err != nil {
		b.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = mgr.Wait(); close(exited) }()
	stopped := false
	b.Cleanup(func() {
		if !stopped {
			_ = mgr.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(respawnTimeout):
				_ = mgr.Process.Kill()
				<-exited
			}
		}
		l.Close()
		for {
			select {
			case r := <-reports:
				r.conn.Close()
				continue
			default:
			}
			break
		}
		if b.Failed() {
			b.Logf("manager's output:\n%s", logs.String())
		}
	})

	next := func(kind string) workerReport {
		b.Helper()
		select {
		case r := <-reports:
			if r.kind != kind {
				b.Fatalf("a %s worker (pid %d) reported while a %s worker was awaited", r.kind, r.pid, kind)
			}
			return r
		case <-exited:
			b.Fatalf("the manager exited")
		case <-time.After(respawnTimeout):
			b.Fatalf("no %s worker reported within %v", kind, respawnTimeout)
		}
		return workerReport{}
	}
	// live holds each kind's workers, oldest first.
	live := map[string][]workerReport{}
	for range 2 * respawnWorkers {
		select {
		case r := <-reports:
			live[r.kind] = append(live[r.kind], r)
		case <-exited:
			b.Fatalf("the manager exited")
		case <-time.After(respawnTimeout):
			b.Fatalf("%d workers of %d reported within %v", len(live["go"])+len(live["cmd"]), 2*respawnWorkers, respawnTimeout)
		}
	}
	if len(live["go"]) != respawnWorkers || len(live["cmd"]) != respawnWorkers {
		b.Fatalf("%d go and %d cmd workers reported, want %d each", len(live["go"]), len(live["cmd"]), respawnWorkers)
	}

	respawn := map[string][]time.Duration{}
	b.ResetTimer()
	for i := range b.N {
		for _, kind := range [2]string{"go", "cmd"} {
			if i%2 == 1 { // alternate which kind goes first
				kind = map[string]string{"go": "cmd", "cmd": "go"}[kind]
			}
			old := live[kind][0]
			if age := time.Since(old.at); age < respawnMinAge {
				b.StopTimer()
				time.Sleep(respawnMinAge - age) // only a worker past min_uptime is restarted at once
				b.StartTimer()
			}
			t0 := time.Now()
			if err := syscall.Kill(old.pid, syscall.SIGKILL); err != nil {
				b.Fatalf("kill %s worker %d: %v", kind, old.pid, err)
			}
			r := next(kind)
			respawn[kind] = append(respawn[kind], r.at.Sub(t0))
			if r.pid == old.pid {
				b.Fatalf("the replacement has the killed worker's pid %d", r.pid)
			}
			old.conn.Close()
			live[kind] = append(live[kind][1:], r)
		}
	}
	b.StopTimer()
	if err := mgr.Process.Signal(syscall.SIGTERM); err != nil {
		b.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(respawnTimeout):
		b.Fatalf("the manager still runs %v after SIGTERM", respawnTimeout)
	}
	stopped = true
	if code := mgr.ProcessState.ExitCode(); code != 0 {
		b.Fatalf("manager exit code %d after SIGTERM, want 0", code)
	}
	goNS, cmdNS := median(respawn["go"]), median(respawn["cmd"])
	b.ReportMetric(goNS, "ns/op")
	b.ReportMetric(cmdNS, "cmd-ns")
	b.ReportMetric(goNS/cmdNS, "ratio")
}
