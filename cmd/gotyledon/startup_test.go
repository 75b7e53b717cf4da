package main

// BenchmarkStartup: the start-up cost of the gotyledon binary, against a
// minimal Go program and /bin/true, measured in the same run.
//
// The benchmark builds ./cmd/gotyledon and three minimal Go programs with
// `go build` (the same toolchain, flags and environment; CGO_ENABLED=0
// unless said), then each op starts each program once, in a rotating
// order, with os.StartProcess, and waits for it:
//
//   - gotyledon with GOTYLEDON_STARTUP_PROBE=1: its main writes the
//     CLOCK_MONOTONIC time at which program.Main was called and exits
//     (program.EnvStartupProbe);
//   - gotyledon-cgo, the same built with CGO_ENABLED=1, go build's default
//     where a C compiler is installed: net and os/user then link the C
//     library, and the dynamic loader runs before the Go runtime;
//   - probe, a minimal Go program whose main writes the same clock the
//     same way (it imports syscall only);
//   - probe-http, the same program linking net/http (its inits, and those
//     of the packages it brings: crypto/tls, crypto/x509 ...);
//   - empty, `package main; func main() {}`;
//   - /bin/true.
//
// exec → main is from the benchmark's reading of CLOCK_MONOTONIC just before
// os.StartProcess to the child's reading at the top of main: fork, exec,
// the Go runtime's start and every package's init. exec → exit is from the
// same point until wait4 returns. Each metric is the median over the run's
// ops, not a mean, so that a few ops slowed by the machine's other work do
// not move it:
//
//	ns/op          gotyledon exec → main
//	probe-main-ns  the minimal Go program's exec → main
//	ratio          ns/op / probe-main-ns
//	exit-ns        gotyledon exec → exit (probe: main returns at once)
//	empty-exit-ns  `func main() {}` exec → exit
//	true-exit-ns   /bin/true exec → exit
//	minflt         gotyledon's minor page faults (getrusage of the child)
//	probe-minflt   the minimal program's
//	probe-nethttp-main-ns
//	               the minimal program linking net/http: exec → main
//	cgo-main-ns    gotyledon-cgo's exec → main (absent without a C compiler)
//
// Reproduce (supervisor/BENCH.md, "Start-up"):
//
//	go test -run '^$' -bench Startup -benchtime 400x -count 5 ./cmd/gotyledon/

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gotyledon/gotyledon/supervisor/program"
)

// probeMain is the minimal Go program with the probe: what
// program.EnvStartupProbe makes gotyledon's main do, with nothing linked but
// the runtime and syscall.
const probeMain = `package main

import (
	"syscall"
	"unsafe"
)

func main() {
	var ts syscall.Timespec
	syscall.RawSyscall(syscall.SYS_CLOCK_GETTIME, 1, uintptr(unsafe.Pointer(&ts)), 0) // CLOCK_MONOTONIC
	n := ts.Sec*1e9 + ts.Nsec
	var b [24]byte
	i := len(b) - 1
	b[i] = '\n'
	for ; n > 0; n /= 10 {
		i--
		b[i] = byte('0' + n%10)
	}
	syscall.Write(2, b[i:])
}
`

const emptyMain = "package main\n\nfunc main() {}\n"

// probeHTTPMain is probeMain linking net/http: what that package's inits
// (and those of crypto/tls, crypto/x509 ... it brings) cost every process.
var probeHTTPMain = strings.Replace(probeMain, "import (\n", "import (\n\t_ \"net/http\"\n", 1)

// buildProgram builds the main package in dir (a package of the module
// when src is empty, else a module of its own holding src) into out, with
// env added to go build's environment (CGO_ENABLED=0 ...).
func buildProgram(b *testing.B, dir, src, out string, env ...string) {
	b.Helper()
	if src != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		for name, data := range map[string]string{"main.go": src, "go.mod": "module minimal\n\ngo 1.26\n"} {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
				b.Fatal(err)
			}
		}
	}
	cmd := exec.Command(goTool(), "build", "-o", out, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	if outp, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("go build in %s: %v\n%s", dir, err, outp)
	}
}

// haveCC reports whether go build finds its C compiler, without which
// CGO_ENABLED=1 cannot build.
func haveCC() bool {
	out, err := exec.Command(goTool(), "env", "CC").Output()
	if err != nil {
		return false
	}
	_, err = exec.LookPath(strings.TrimSpace(string(out)))
	return err == nil
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

func monotonic() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err)
	}
	return ts.Nano()
}

// startup is one start of a program.
type startup struct {
	main   time.Duration // exec → main; 0 when the program does not say
	exit   time.Duration // exec → exit
	minflt int64
}

// startOnce starts path with env, waits for it, and returns its figures.
// A program that writes the probe's line on stderr has its main timed.
func startOnce(b *testing.B, path string, env []string, probe bool) startup {
	b.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	t0 := monotonic()
	p, err := os.StartProcess(path, []string{path}, &os.ProcAttr{Env: env, Files: []*os.File{nil, nil, w}})
	w.Close()
	if err != nil {
		b.Fatal(err)
	}
	st, err := p.Wait()
	t1 := monotonic()
	if err != nil {
		b.Fatal(err)
	}
	if !st.Success() {
		b.Fatalf("%s: %v", path, st)
	}
	s := startup{exit: time.Duration(t1 - t0)}
	if ru, ok := st.SysUsage().(*syscall.Rusage); ok {
		s.minflt = ru.Minflt
	}
	if probe {
		var buf bytes.Buffer
		if _, err := buf.ReadFrom(r); err != nil {
			b.Fatal(err)
		}
		at, err := strconv.ParseInt(string(bytes.TrimSpace(buf.Bytes())), 10, 64)
		if err != nil {
			b.Fatalf("%s wrote %q on stderr, not a time: %v", path, buf.Bytes(), err)
		}
		s.main = time.Duration(at - t0)
	}
	return s
}

func median[T int64 | time.Duration](xs []T) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return float64(s[len(s)/2])
	}
	return float64(s[len(s)/2-1]+s[len(s)/2]) / 2
}

// builtDir holds the programs the benchmarks build, once per test
// binary (the framework calls a benchmark several times); TestMain removes
// it.
var builtDir string

func TestMain(m *testing.M) {
	code := m.Run()
	if builtDir != "" {
		os.RemoveAll(builtDir)
	}
	os.Exit(code)
}

// programsDir returns builtDir, made on the first call.
func programsDir(b *testing.B) string {
	b.Helper()
	if builtDir == "" {
		dir, err := os.MkdirTemp("", "gtystartup")
		if err != nil {
			b.Fatal(err)
		}
		builtDir = dir
	}
	return builtDir
}

// buildPrograms builds gotyledon (static and cgo), probe, empty and
// probe-http into builtDir, once.
func buildPrograms(b *testing.B) (gotyledon, gotyledonCgo, probe, empty, probeHTTP string) {
	b.Helper()
	dir := programsDir(b)
	gotyledon, gotyledonCgo = filepath.Join(dir, "gotyledon"), filepath.Join(dir, "gotyledon-cgo")
	probe, empty, probeHTTP = filepath.Join(dir, "probe"), filepath.Join(dir, "empty"), filepath.Join(dir, "probe-http")
	if _, err := os.Stat(probeHTTP); err != nil {
		buildProgram(b, ".", "", gotyledon, "CGO_ENABLED=0")
		if haveCC() {
			buildProgram(b, ".", "", gotyledonCgo, "CGO_ENABLED=1")
		}
		buildProgram(b, filepath.Join(dir, "probe-src"), probeMain, probe, "CGO_ENABLED=0")
		buildProgram(b, filepath.Join(dir, "empty-src"), emptyMain, empty, "CGO_ENABLED=0")
		buildProgram(b, filepath.Join(dir, "probe-http-src"), probeHTTPMain, probeHTTP, "CGO_ENABLED=0")
	}
	return gotyledon, gotyledonCgo, probe, empty, probeHTTP
}

func BenchmarkStartup(b *testing.B) {
	gotyledon, gotyledonCgo, probe, empty, probeHTTP := buildPrograms(b)
	truePath, err := exec.LookPath("true")
	if err != nil {
		b.Fatal(err)
	}
	truePath, err = filepath.EvalSymlinks(truePath)
	if err != nil {
		b.Fatal(err)
	}
	env := append(os.Environ(), program.EnvStartupProbe+"=1")

	type prog struct {
		path  string
		probe bool
		runs  []startup
	}
	progs := []*prog{{path: gotyledon, probe: true}, {path: probe, probe: true}, {path: empty}, {path: truePath}, {path: probeHTTP, probe: true}}
	if _, err := os.Stat(gotyledonCgo); err == nil {
		progs = append(progs, &prog{path: gotyledonCgo, probe: true})
	}
	// Warm up: the first starts read the files into the page cache.
	for range 3 {
		for _, p := range progs {
			startOnce(b, p.path, env, p.probe)
		}
	}
	b.ResetTimer()
	for i := range b.N {
		for j := range progs {
			p := progs[(i+j)%len(progs)]
			p.runs = append(p.runs, startOnce(b, p.path, env, p.probe))
		}
	}
	b.StopTimer()

	field := func(p *prog, f func(startup) time.Duration) float64 {
		xs := make([]time.Duration, len(p.runs))
		for i, r := range p.runs {
			xs[i] = f(r)
		}
		return median(xs)
	}
	faults := func(p *prog) float64 {
		xs := make([]int64, len(p.runs))
		for i, r := range p.runs {
			xs[i] = r.minflt
		}
		return median(xs)
	}
	mainOf := func(s startup) time.Duration { return s.main }
	exitOf := func(s startup) time.Duration { return s.exit }
	g, pr, em, tr, ph := progs[0], progs[1], progs[2], progs[3], progs[4]
	b.ReportMetric(field(g, mainOf), "ns/op")
	b.ReportMetric(field(pr, mainOf), "probe-main-ns")
	b.ReportMetric(field(g, mainOf)/field(pr, mainOf), "ratio")
	b.ReportMetric(field(g, exitOf), "exit-ns")
	b.ReportMetric(field(em, exitOf), "empty-exit-ns")
	b.ReportMetric(field(tr, exitOf), "true-exit-ns")
	b.ReportMetric(faults(g), "minflt")
	b.ReportMetric(faults(pr), "probe-minflt")
	b.ReportMetric(field(ph, mainOf), "probe-nethttp-main-ns")
	if len(progs) > 5 {
		b.ReportMetric(field(progs[5], mainOf), "cgo-main-ns")
	}
}
