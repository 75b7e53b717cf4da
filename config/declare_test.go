package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// web is a complete service for declarations that test something else.
var web = Command("/bin/web")

func TestDeclarationErrors(t *testing.T) {
	t.Parallel()
	long := "/" + strings.Repeat("s", MaxSocketPath)
	const use = `(use one of HUP, INT, QUIT, KILL, USR1, USR2, TERM, WINCH, with or without "SIG")`
	tests := []struct {
		name    string
		declare func(d *Declaration)
		noGo    bool
		want    string
	}{
		{"service name starting with a digit", func(d *Declaration) { d.Service("9lives", web) },
			false, `services."9lives" (declared in Go): invalid service name "9lives" (a name starts with a letter and has only letters, digits, "-" and "_", at most 63 bytes)`},
		{"empty service name", func(d *Declaration) { d.Service("", web) },
			false, `services."" (declared in Go): invalid service name "" (a name starts with a letter and has only letters, digits, "-" and "_", at most 63 bytes)`},
		{"workers negative", func(d *Declaration) { d.Service("printer", Run("printer"), Workers(-1)) },
			false, `services.printer.workers (declared in Go): workers must be a whole number from 0 to 10000 (got -1)`},
		{"workers absurd", func(d *Declaration) { d.Service("web", web, Workers(10001)) },
			false, `services.web.workers (declared in Go): workers must be a whole number from 0 to 10000 (got 10001)`},
		{"zero stop_timeout", func(d *Declaration) { d.Service("web", web, StopTimeout(0)) },
			false, `services.web.stop_timeout (declared in Go): stop_timeout must be more than 0 (got 0s)`},
		{"stop_timeout over 24h", func(d *Declaration) { d.Service("web", web, StopTimeout(25*time.Hour)) },
			false, `services.web.stop_timeout (declared in Go): stop_timeout must be at most 24h (got 25h)`},
		{"negative shutdown_timeout", func(d *Declaration) { d.Service("web", web); d.ShutdownTimeout(-time.Second) },
			false, `shutdown_timeout (declared in Go): shutdown_timeout must be more than 0 (got -1s)`},
		{"min_uptime under the floor", func(d *Declaration) { d.Service("web", web, MinUptime(99*time.Millisecond)) },
			false, `services.web.restart.min_uptime (declared in Go): min_uptime must be at least 100ms (got 99ms; a shorter one would let a crashing worker restart in a busy loop)`},
		{"backoff_initial under the floor", func(d *Declaration) { d.Service("web", web, BackoffInitial(time.Nanosecond)) },
			false, `services.web.restart.backoff_initial (declared in Go): backoff_initial must be at least 10ms (got 1ns)`},
		{"backoff_max below backoff_initial", func(d *Declaration) {
			d.Service("web", web, BackoffMax(time.Second), BackoffInitial(2*time.Second))
		}, false, `services.web.restart.backoff_max (declared in Go): backoff_max must be at least backoff_initial (got 1s, backoff_initial is 2s)`},
		{"backoff_initial above default backoff_max", func(d *Declaration) { d.Service("web", web, BackoffInitial(time.Minute)) },
			false, `services.web.restart.backoff_initial (declared in Go): backoff_initial must be at most backoff_max (got 1m, backoff_max is 30s by default; raise it too)`},
		{"stop_signal not in the set", func(d *Declaration) { d.Service("web", web, StopSignal(syscall.SIGSTOP)) },
			false, `services.web.stop_signal (declared in Go): invalid stop_signal SIGSTOP ` + use},
		{"stop_signal 0", func(d *Declaration) { d.Service("web", web, StopSignal(0)) },
			false, `services.web.stop_signal (declared in Go): invalid stop_signal signal 0 ` + use},
		{"reload_signal KILL", func(d *Declaration) { d.Service("web", web, ReloadSignal(syscall.SIGKILL)) },
			false, `services.web.reload_signal (declared in Go): reload_signal KILL would kill the workers at every reload (use HUP, USR1 or USR2, which the workers can handle)`},
		{"reload_signal PIPE", func(d *Declaration) { d.Service("web", web, ReloadSignal(syscall.SIGPIPE)) },
			false, `services.web.reload_signal (declared in Go): invalid reload_signal SIGPIPE ` + use},
		{"reload_signal the stop_signal", func(d *Declaration) {
			d.Service("web", web, StopSignal(syscall.SIGUSR2), ReloadSignal(syscall.SIGUSR2))
		}, false, `services.web.reload_signal (declared in Go): reload_signal SIGUSR2 is the service's stop_signal: every reload would stop its workers (use HUP, USR1 or USR2, or another stop_signal)`},
		{"bad env name", func(d *Declaration) { d.Service("web", web, Env(map[string]string{"MY-VAR": "x"})) },
			false, `services.web.env."MY-VAR" (declared in Go): invalid env name "MY-VAR" (a name starts with a letter or "_" and has only letters, digits and "_")`},
		{"reserved GOTYLEDON_ env name", func(d *Declaration) { d.Service("web", web, Env(map[string]string{"GOTYLEDON_WORKER": "1"})) },
			false, `services.web.env.GOTYLEDON_WORKER (declared in Go): env name "GOTYLEDON_WORKER" is reserved (gotyledon sets the GOTYLEDON_ variables of each worker itself; pick another name)`},
		{"reserved systemd env name", func(d *Declaration) { d.Service("web", web, Env(map[string]string{"NOTIFY_SOCKET": "/x"})) },
			false, `services.web.env.NOTIFY_SOCKET (declared in Go): env name "NOTIFY_SOCKET" is reserved (gotyledon removes this systemd variable from workers' environment; pick another name)`},
		{"env value with a NUL byte", func(d *Declaration) { d.Service("web", web, Env(map[string]string{"A": "x\x00y"})) },
			false, `services.web.env.A (declared in Go): env A contains a NUL byte (an environment value cannot hold "\0")`},
		{"dir with tilde", func(d *Declaration) { d.Service("web", web, Dir("~")) },
			false, `services.web.dir (declared in Go): dir "~" starts with "~" (gotyledon does not expand "~"; write the full path)`},
		{"dir empty", func(d *Declaration) { d.Service("web", web, Dir("")) },
			false, `services.web.dir (declared in Go): dir is empty (write a directory path, or leave dir out to run in gotyledon's working directory)`},
		{"dir with a NUL byte", func(d *Declaration) { d.Service("web", web, Dir("/srv/\x00")) },
			false, `services.web.dir (declared in Go): dir contains a NUL byte (a path cannot hold "\0")`},
		{"empty command", func(d *Declaration) { d.Service("web", Command()) },
			false, `services.web.command (declared in Go): command is empty (give at least the program to run, as in ["/usr/bin/app"])`},
		{"command with empty first element", func(d *Declaration) { d.Service("web", Command("", "--flag")) },
			false, `services.web.command[0] (declared in Go): command[0] is empty (it names the program to run, as in "/usr/bin/app")`},
		{"command with a NUL byte", func(d *Declaration) { d.Service("web", Command("/bin/echo", "a\x00b")) },
			false, `services.web.command[1] (declared in Go): command[1] contains a NUL byte (a program argument cannot hold "\0")`},
		{"both command and run", func(d *Declaration) { d.Service("web", web); d.Service("web", Run("printer")) },
			false, `services.web (declared in Go): service "web" has both command and run (keep one: command runs a program, run names a Go service)`},
		{"neither command nor run", func(d *Declaration) { d.Service("web", Workers(2)) },
			false, `services.web (declared in Go): service "web" has neither command nor run (add one: command runs a program, run names a Go service)`},
		{"unknown run name", func(d *Declaration) { d.Service("p", Run("prnter")) },
			false, `services.p.run (declared in Go): unknown Go service "prnter" (this program registers: printer, ticker)`},
		{"unknown run name, no Go services", func(d *Declaration) { d.Service("p", Run("printer")) },
			true, `services.p.run (declared in Go): unknown Go service "printer" (this program registers no Go services; use command: to run a program)`},
		{"ready out of range", func(d *Declaration) { d.Service("web", web, ReadyBy(3)) },
			false, `services.web.ready (declared in Go): ready must be "uptime" (ready once it has run min_uptime) or "notify" (ready when it sends READY=1) (got Ready(3))`},
		{"replace out of range", func(d *Declaration) { d.Service("web", web, ReplaceWith(7)) },
			false, `services.web.replace (declared in Go): replace must be "rolling" (one worker at a time) or "all" (all at once) (got Replace(7))`},
		{"bad queue name", func(d *Declaration) { d.Service("web", web); d.Queue("2jobs") },
			false, `queues."2jobs" (declared in Go): invalid queue name "2jobs" (a name starts with a letter and has only letters, digits, "-" and "_", at most 63 bytes)`},
		{"capacity zero", func(d *Declaration) { d.Service("web", web); d.Queue("jobs", Capacity(0)) },
			false, `queues.jobs.capacity (declared in Go): capacity must be a whole number from 1 to 10000000 (got 0)`},
		{"store unknown", func(d *Declaration) { d.Service("web", web); d.Queue("jobs", QueueStore("disk")) },
			false, `queues.jobs.store (declared in Go): store must be "memory" (the broker's own memory) or "jetstream" (NATS JetStream, configured under nats:) (got "disk")`},
		{"store empty", func(d *Declaration) { d.Service("web", web); d.Queue("jobs", QueueStore("")) },
			false, `queues.jobs.store (declared in Go): store must be "memory" (the broker's own memory) or "jetstream" (NATS JetStream, configured under nats:) (got "")`},
		{"jetstream queue without nats", func(d *Declaration) { d.Service("web", web); d.Queue("jobs", QueueStore(StoreJetStream)) },
			false, `queues.jobs.store (declared in Go): store jetstream needs a top-level nats: section: url: for NATS servers, or local_dir: for a JetStream server gotyledon runs`},
		{"ack_wait on a memory queue", func(d *Declaration) { d.Service("web", web); d.Queue("jobs", AckWait(time.Minute)) },
			false, `queues.jobs.ack_wait (declared in Go): ack_wait applies to "store: jetstream" queues only (this queue's store is memory: add store: jetstream, or remove ack_wait)`},
		{"replicas on a memory queue", func(d *Declaration) {
			d.Service("web", web)
			d.Queue("jobs", QueueStore(StoreMemory), Replicas(3))
		}, false, `queues.jobs.replicas (declared in Go): replicas applies to "store: jetstream" queues only (this queue's store is memory: add store: jetstream, or remove replicas)`},
		{"pack on a memory queue", func(d *Declaration) {
			d.Service("web", web)
			d.Queue("jobs", QueueStore(StoreMemory), Pack(100))
		}, false, `queues.jobs.pack (declared in Go): pack applies to "store: jetstream" queues only (this queue's store is memory: add store: jetstream, or remove pack)`},
		{"ack_wait under the floor", func(d *Declaration) { d.Service("web", web); d.Queue("jobs", AckWait(999*time.Millisecond)) },
			false, `queues.jobs.ack_wait (declared in Go): ack_wait must be at least 1s (got 999ms; a shorter one would deliver items again while their workers are still on them)`},
		{"ack_wait over 24h", func(d *Declaration) { d.Service("web", web); d.Queue("jobs", AckWait(25*time.Hour)) },
			false, `queues.jobs.ack_wait (declared in Go): ack_wait must be at most 24h (got 25h)`},
		{"replicas out of range", func(d *Declaration) { d.Service("web", web); d.Queue("jobs", Replicas(6)) },
			false, `queues.jobs.replicas (declared in Go): replicas must be a whole number from 1 to 5 (got 6)`},
		{"pack zero", func(d *Declaration) { d.Service("web", web); d.Queue("jobs", Pack(0)) },
			false, `queues.jobs.pack (declared in Go): pack must be a whole number from 1 to 1024 (got 0)`},
		{"pack out of range", func(d *Declaration) { d.Service("web", web); d.Queue("jobs", Pack(MaxPack+1)) },
			false, `queues.jobs.pack (declared in Go): pack must be a whole number from 1 to 1024 (got 1025)`},
		{"socket too long", func(d *Declaration) { d.Service("web", web); d.Broker(Socket(long)) },
			false, `broker.socket (declared in Go): socket path "` + long + `" is 108 bytes long (a Unix socket path has at most 107; choose a shorter one)`},
		{"socket empty", func(d *Declaration) { d.Service("web", web); d.Control(Socket("")) },
			false, `control.socket (declared in Go): socket is empty (write a path, or leave socket out for the default)`},
		{"socket with a NUL byte", func(d *Declaration) { d.Service("web", web); d.Broker(Socket("/run/\x00")) },
			false, `broker.socket (declared in Go): socket contains a NUL byte (a path cannot hold "\0")`},
		{"unknown group", func(d *Declaration) { d.Service("web", web); d.Broker(Group("no-such-group-here")) },
			false, `broker.group (declared in Go): unknown group "no-such-group-here" (no such group on this machine; create it, or give its number)`},
		{"negative group", func(d *Declaration) { d.Service("web", web); d.Control(Group("-1")) },
			false, `control.group (declared in Go): group must be a group name or a number from 0 (got -1)`},
		{"negative uid", func(d *Declaration) { d.Service("web", web); d.Broker(AllowUIDs(1000, -1)) },
			false, `broker.allow_uids[1] (declared in Go): allow_uids[1] must be a whole number from 0 to 2147483647 (got -1)`},
		{"gid too large", func(d *Declaration) { d.Service("web", web); d.Control(AllowGIDs(1 << 31)) },
			false, `control.allow_gids[0] (declared in Go): allow_gids[0] must be a whole number from 0 to 2147483647 (got 2147483648)`},
		{"metrics_listen no port", func(d *Declaration) { d.Service("web", web); d.MetricsListen("localhost") },
			false, `control.metrics_listen (declared in Go): metrics_listen must be "host:port", e.g. "127.0.0.1:9464" (got "localhost")`},
		{"metrics_listen host name", func(d *Declaration) { d.Service("web", web); d.MetricsListen("example.com:9464") },
			false, `control.metrics_listen (declared in Go): metrics_listen's host must be an IP address or "localhost", e.g. "127.0.0.1:9464" (got "example.com")`},
		{"control and queue sockets the same", func(d *Declaration) {
			d.Service("web", web)
			d.Broker(Socket("/run/g/a.sock"))
			d.Control(Socket("/run/g/a.sock"))
		}, false, `control.socket (declared in Go): control socket "/run/g/a.sock" is the queue socket's path too (give each socket a path of its own)`},
		{"no services", func(d *Declaration) { d.Queue("jobs") },
			false, `services (declared in Go): no service is declared (declare at least one, as in d.Service("web", config.Command("/usr/bin/web")))`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			goServices := testGoServices
			if tt.noGo {
				goServices = nil
			}
			var d Declaration
			tt.declare(&d)
			cfg, err := d.Resolve(goServices)
			if cfg != nil {
				t.Errorf("Resolve returned a config with its error")
			}
			var list ErrorList
			if !errors.As(err, &list) {
				t.Fatalf("error is %T, not an ErrorList: %v", err, err)
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("got error\n%s\nwant\n%s", got, tt.want)
			}
			for _, e := range list {
				if !e.Pos.Declared() || e.Pos.File != "" || e.Pos.Line != 0 {
					t.Errorf("error %q has position %#v, want a declared field only", e, e.Pos)
				}
			}
			// The same declaration under a valid file fails the same way
			// (except a lack of services, which a file can make up for).
			if tt.name == "no services" {
				return
			}
			_, err = ParseOver(&d, "c.yaml", []byte("shutdown_timeout: 5s\n"), goServices)
			if err == nil || err.Error() != tt.want {
				t.Errorf("ParseOver: got\n%v\nwant\n%s", err, tt.want)
			}
		})
	}
}

// TestDeclarationErrorOrder checks that a declaration's errors come in the
// order the faulty values were declared, not grouped by kind or sorted by
// name, and that the ErrorList keeps its contract.
func TestDeclarationErrorOrder(t *testing.T) {
	t.Parallel()
	var d Declaration
	d.Service("zeta", Run("printer"), Workers(-1))
	d.ShutdownTimeout(0)
	d.Service("alpha", Command(""))
	d.Service("zeta", Env(map[string]string{"B-": "1", "A-": "2"}))
	d.Queue("jobs", Capacity(-5))
	_, err := d.Resolve(testGoServices)
	want := []string{
		`services.zeta.workers (declared in Go): workers must be a whole number from 0 to 10000 (got -1)`,
		`shutdown_timeout (declared in Go): shutdown_timeout must be more than 0 (got 0s)`,
		`services.alpha.command[0] (declared in Go): command[0] is empty (it names the program to run, as in "/usr/bin/app")`,
		`services.zeta.env."A-" (declared in Go): invalid env name "A-" (a name starts with a letter or "_" and has only letters, digits and "_")`,
		`services.zeta.env."B-" (declared in Go): invalid env name "B-" (a name starts with a letter or "_" and has only letters, digits and "_")`,
		`queues.jobs.capacity (declared in Go): capacity must be a whole number from 1 to 10000000 (got -5)`,
	}
	var list ErrorList
	if !errors.As(err, &list) {
		t.Fatalf("error is %T, not an ErrorList: %v", err, err)
	}
	if got := err.Error(); got != strings.Join(want, "\n") {
		t.Errorf("Error() =\n%s\nwant\n%s", got, strings.Join(want, "\n"))
	}
	for i, e := range list {
		if i < len(want) && e.Error() != want[i] {
			t.Errorf("list[%d] = %q, want %q (the list itself is sorted, not just Error())", i, e, want[i])
		}
	}
	var one *Error
	if !errors.As(err, &one) || one.Pos.Field != "services.zeta.workers" {
		t.Errorf("errors.As(*Error) = %v, want the first error", one)
	}
}

// fullDeclaration declares every key with a value other than its default.
func fullDeclaration() *Declaration {
	var d Declaration
	d.ShutdownTimeout(time.Minute)
	d.Broker(Socket("/run/g/queue.sock"), Group("0"), AllowUIDs(1000, 1001), AllowGIDs(50))
	d.Control(Socket("/run/g/control.sock"), Group("root"), AllowUIDs(1000))
	d.MetricsListen("127.0.0.1:9464")
	d.Queue("jobs", Capacity(5))
	d.Queue("results")
	d.Service("producer",
		Command("/usr/local/bin/producer", "--port", "8080"),
		Workers(2),
		Env(map[string]string{"LANG": "C.UTF-8", "EMPTY": ""}),
		Dir("/srv//producer/"),
		StopSignal(syscall.SIGINT),
		StopTimeout(5*time.Second),
		ReloadSignal(syscall.SIGHUP),
		MinUptime(100*time.Millisecond),
		BackoffInitial(time.Second),
		BackoffMax(90*time.Second),
		ReplaceWith(ReplaceAll),
	)
	d.Service("printer", Run("printer"), Workers(0))
	d.Service("ticker", Run("ticker"), Workers(MaxWorkers), StopSignal(syscall.SIGUSR2))
	return &d
}

// fullDeclarationYAML says what fullDeclaration declares.
const fullDeclarationYAML = `shutdown_timeout: 1m
broker: {socket: /run/g/queue.sock, group: 0, allow_uids: [1000, 1001], allow_gids: [50]}
control: {socket: /run/g/control.sock, group: root, allow_uids: [1000], metrics_listen: "127.0.0.1:9464"}
queues:
  jobs: {capacity: 5}
  results:
services:
  producer:
    command: [/usr/local/bin/producer, --port, "8080"]
    workers: 2
    env: {LANG: C.UTF-8, EMPTY: ""}
    dir: /srv//producer/
    stop_signal: INT
    stop_timeout: 5s
    reload_signal: HUP
    restart: {min_uptime: 100ms, backoff_initial: 1s, backoff_max: 1m30s}
    replace: all
  printer: {run: printer, workers: 0}
  ticker: {run: ticker, workers: 10000, stop_signal: USR2}
`

// withoutPositions returns a copy of cfg without File and positions, for
// comparing a declared configuration with a parsed one.
func withoutPositions(cfg *Config) *Config {
	c := *cfg
	c.File = ""
	c.Services, c.Queues = nil, nil
	for _, s := range cfg.Services {
		s2 := *s
		s2.Pos = Position{}
		c.Services = append(c.Services, &s2)
	}
	for _, q := range cfg.Queues {
		q2 := *q
		q2.Pos = Position{}
		c.Queues = append(c.Queues, &q2)
	}
	return &c
}

// TestDeclarationMatchesFile checks that a declaration resolves to the very
// Config a file saying the same thing parses to, defaults included, and
// that each declared value and default is really there.
func TestDeclarationMatchesFile(t *testing.T) {
	t.Parallel()
	declared, err := fullDeclaration().Resolve(testGoServices)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := Parse("/etc/gotyledon/g.yaml", []byte(fullDeclarationYAML), testGoServices)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := withoutPositions(declared), withoutPositions(parsed); !reflect.DeepEqual(got, want) {
		t.Errorf("declared\n%s\nparsed\n%s", dump(got), dump(want))
	}
	if declared.File != "" {
		t.Errorf("File = %q, want empty for a declaration", declared.File)
	}
	p := declared.Service("producer")
	if p.Dir != "/srv/producer" || p.Replace != ReplaceAll || p.Restart.BackoffMax != 90*time.Second || p.Pos != (Position{Field: "services.producer"}) {
		t.Errorf("producer = %+v", *p)
	}
	tk := declared.Service("ticker")
	if tk.StopTimeout != time.Minute || tk.Restart.MinUptime != DefaultMinUptime || len(tk.Env) != 0 || tk.Env == nil {
		t.Errorf("ticker's defaults = %+v", *tk)
	}
	if declared.Control.GID != 0 || declared.Queues[1].Capacity != DefaultCapacity || declared.Queues[1].Pos != (Position{Field: "queues.results"}) {
		t.Errorf("control %+v, queues %+v", declared.Control, declared.Queues[1])
	}

	// The smallest declaration and file agree as well.
	var d Declaration
	d.Service("web", Command("/bin/web"))
	min, err := d.Resolve(nil)
	if err != nil {
		t.Fatal(err)
	}
	minFile, err := Parse("c.yaml", []byte("services:\n  web: {command: [/bin/web]}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := withoutPositions(min), withoutPositions(minFile); !reflect.DeepEqual(got, want) {
		t.Errorf("declared\n%s\nparsed\n%s", dump(got), dump(want))
	}
}

// TestDeclarationRelativePaths checks the documented choice: a relative
// path declared in Go is taken from the working directory, with or without
// a file on top; one in the file from the file's directory.
func TestDeclarationRelativePaths(t *testing.T) {
	t.Parallel()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	var d Declaration
	d.Service("a", web, Dir("data/a"))
	d.Service("b", web, Dir("data/b"))
	d.Broker(Socket("q.sock"))
	cfg, err := d.Resolve(nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cfg.Service("a").Dir, filepath.Join(wd, "data", "a"); got != want {
		t.Errorf("Resolve: Dir = %q, want %q", got, want)
	}
	if got, want := cfg.Broker.Socket, filepath.Join(wd, "q.sock"); got != want {
		t.Errorf("Resolve: Socket = %q, want %q", got, want)
	}
	cfg, err = ParseOver(&d, "/etc/gotyledon/g.yaml", []byte("services:\n  b: {dir: data/b}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cfg.Service("a").Dir, filepath.Join(wd, "data", "a"); got != want {
		t.Errorf("ParseOver: declared Dir = %q, want %q (the working directory's, not the file's)", got, want)
	}
	if got, want := cfg.Service("b").Dir, "/etc/gotyledon/data/b"; got != want {
		t.Errorf("ParseOver: file's Dir = %q, want %q", got, want)
	}
	if got, want := cfg.Broker.Socket, filepath.Join(wd, "q.sock"); got != want {
		t.Errorf("ParseOver: Socket = %q, want %q", got, want)
	}
}

// printerDeclaration is the seed's program declared in Go.
func printerDeclaration() *Declaration {
	var d Declaration
	d.Queue("jobs", Capacity(100))
	d.Service("producer", Run("ticker"), Env(map[string]string{"LANG": "C", "MODE": "fast"}), StopTimeout(3*time.Second))
	d.Service("printer", Run("printer"), Workers(2), BackoffInitial(2*time.Second))
	return &d
}

func TestParseOver(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		src   string
		check func(t *testing.T, cfg *Config)
	}{
		{"workers alone overrides a declared service", "services:\n  printer: {workers: 5}\n", func(t *testing.T, cfg *Config) {
			p := cfg.Service("printer")
			if p.Workers != 5 || p.Run != "printer" || p.Restart.BackoffInitial != 2*time.Second {
				t.Errorf("printer = %+v, want 5 workers, run printer, the declared backoff", *p)
			}
			if p.Pos != (Position{File: "c.yaml", Line: 2, Col: 3}) {
				t.Errorf("printer's Pos = %v, want the file's", p.Pos)
			}
			if pr := cfg.Service("producer"); pr.Pos != (Position{Field: "services.producer"}) {
				t.Errorf("producer's Pos = %v, want the declared field", pr.Pos)
			}
		}},
		{"workers 0 stops a declared service", "services:\n  printer: {workers: 0}\n", func(t *testing.T, cfg *Config) {
			if p := cfg.Service("printer"); p == nil || p.Workers != 0 {
				t.Errorf("printer = %+v, want kept with 0 workers", p)
			}
		}},
		{"a file service comes after the declared ones", "services:\n  web: {command: [/bin/web]}\n  printer: {workers: 3}\n", func(t *testing.T, cfg *Config) {
			var names []string
			for _, s := range cfg.Services {
				names = append(names, s.Name)
			}
			if got := strings.Join(names, " "); got != "producer printer web" {
				t.Errorf("services in order %s, want producer printer web", got)
			}
			if cfg.Service("printer").Workers != 3 || cfg.Service("web").Workers != 1 {
				t.Errorf("workers %d and %d, want 3 and 1", cfg.Service("printer").Workers, cfg.Service("web").Workers)
			}
		}},
		{"command replaces a declared run", "services:\n  printer: {command: [/usr/bin/lp]}\n", func(t *testing.T, cfg *Config) {
			p := cfg.Service("printer")
			if p.Run != "" || !reflect.DeepEqual(p.Command, []string{"/usr/bin/lp"}) {
				t.Errorf("printer run %q command %q, want only the command", p.Run, p.Command)
			}
		}},
		{"env merges variable by variable", "services:\n  producer:\n    env: {MODE: slow, EXTRA: \"1\"}\n", func(t *testing.T, cfg *Config) {
			want := map[string]string{"LANG": "C", "MODE": "slow", "EXTRA": "1"}
			if got := cfg.Service("producer").Env; !reflect.DeepEqual(got, want) {
				t.Errorf("env %v, want %v", got, want)
			}
		}},
		{"stop_timeout follows the file's shutdown_timeout", "shutdown_timeout: 45s\n", func(t *testing.T, cfg *Config) {
			if got := cfg.Service("printer").StopTimeout; got != 45*time.Second {
				t.Errorf("printer stop timeout %v, want the file's shutdown_timeout 45s", got)
			}
			if got := cfg.Service("producer").StopTimeout; got != 3*time.Second {
				t.Errorf("producer stop timeout %v, want the declared 3s", got)
			}
			if cfg.ShutdownTimeout != 45*time.Second {
				t.Errorf("shutdown timeout %v", cfg.ShutdownTimeout)
			}
		}},
		{"the file's stop_timeout wins over the declared one", "services:\n  producer: {stop_timeout: 7s}\n", func(t *testing.T, cfg *Config) {
			if got := cfg.Service("producer").StopTimeout; got != 7*time.Second {
				t.Errorf("producer stop timeout %v, want 7s", got)
			}
		}},
		{"queues: a declared one overridden, a new one after it", "queues:\n  results: {}\n  jobs: {capacity: 7}\n", func(t *testing.T, cfg *Config) {
			want := []*Queue{
				{Name: "jobs", Capacity: 7, Store: StoreMemory, Pos: Position{File: "c.yaml", Line: 3, Col: 3}},
				{Name: "results", Capacity: DefaultCapacity, Store: StoreMemory, Pos: Position{File: "c.yaml", Line: 2, Col: 3}},
			}
			if !reflect.DeepEqual(cfg.Queues, want) {
				t.Errorf("queues %+v %+v, want %+v %+v", *cfg.Queues[0], *cfg.Queues[len(cfg.Queues)-1], *want[0], *want[1])
			}
		}},
		{"an empty file changes nothing", "# nothing to change\n", func(t *testing.T, cfg *Config) {
			want, err := printerDeclaration().Resolve(testGoServices)
			if err != nil {
				t.Fatal(err)
			}
			want.File = "c.yaml"
			if !reflect.DeepEqual(cfg, want) {
				t.Errorf("got\n%s\nwant\n%s", dump(cfg), dump(want))
			}
		}},
		{"services: left empty changes nothing", "services:\n", func(t *testing.T, cfg *Config) {
			if len(cfg.Services) != 2 || cfg.Service("printer").Workers != 2 {
				t.Errorf("services %s", dump(cfg))
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg, err := ParseOver(printerDeclaration(), "c.yaml", []byte(tt.src), testGoServices)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.File != "c.yaml" {
				t.Errorf("File = %q", cfg.File)
			}
			tt.check(t, cfg)
		})
	}
}

// TestParseOverRunReplacesCommand checks the other direction of the switch,
// and that the sockets and their access lists follow the file key by key.
func TestParseOverRunReplacesCommand(t *testing.T) {
	t.Parallel()
	var d Declaration
	d.Service("web", Command("/bin/web"), Workers(3))
	d.Broker(Socket("/run/g/q.sock"), AllowUIDs(1, 2), Group("0"))
	src := "broker: {allow_uids: [7]}\nservices:\n  web: {run: printer}\n"
	cfg, err := ParseOver(&d, "c.yaml", []byte(src), testGoServices)
	if err != nil {
		t.Fatal(err)
	}
	w := cfg.Service("web")
	if w.Command != nil || w.Run != "printer" || w.Workers != 3 {
		t.Errorf("web = %+v, want run printer, no command, 3 workers", *w)
	}
	want := SocketAccess{Socket: "/run/g/q.sock", Group: "0", GID: 0, AllowUIDs: []int{7}}
	if !reflect.DeepEqual(cfg.Broker, want) {
		t.Errorf("broker %+v, want %+v", cfg.Broker, want)
	}
}

func TestParseOverErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		declare func(d *Declaration)
		src     string
		want    string
	}{
		{"file errors keep their positions", func(d *Declaration) { d.Service("web", web) },
			"services:\n  web:\n    workers: two\n",
			`c.yaml:3:14: workers must be a whole number from 0 to 10000 (got "two")`},
		{"a file-only service must be complete", func(d *Declaration) { d.Service("web", web) },
			"services:\n  db:\n    workers: 2\n",
			`c.yaml:3:5: service "db" has neither command nor run (add one: command runs a program, run names a Go service)`},
		{"both command and run in the file", func(d *Declaration) { d.Service("web", web) },
			"services:\n  web:\n    command: [a]\n    run: printer\n",
			`c.yaml:3:5: service "web" has both command and run (keep one: command runs a program, run names a Go service)`},
		{"a declaration error and a file error", func(d *Declaration) { d.Service("web", web, Workers(-1)) },
			"shutdown_timeout: ten\n",
			"services.web.workers (declared in Go): workers must be a whole number from 0 to 10000 (got -1)\n" +
				`c.yaml:1:19: shutdown_timeout must be a duration like "5s" or "1m30s" (got "ten")`},
		{"the file's backoff_max below the declared backoff_initial", func(d *Declaration) { d.Service("web", web, BackoffInitial(20*time.Second)) },
			"services:\n  web:\n    restart: {backoff_max: 10s}\n",
			`c.yaml:3:28: backoff_max must be at least backoff_initial (got 10s, backoff_initial is 20s)`},
		{"the file's backoff_initial above the declared backoff_max", func(d *Declaration) { d.Service("web", web, BackoffMax(10*time.Second)) },
			"services:\n  web:\n    restart: {backoff_initial: 20s}\n",
			`c.yaml:3:32: backoff_initial must be at most backoff_max (got 20s, backoff_max is 10s in the Go declaration; raise it too)`},
		{"the file's control socket is the declared queue socket", func(d *Declaration) { d.Service("web", web); d.Broker(Socket("/run/g/a.sock")) },
			"control: {socket: /run/g/a.sock}\n",
			`c.yaml:1:19: control socket "/run/g/a.sock" is the queue socket's path too (give each socket a path of its own)`},
		{"the file's queue socket is the declared control socket", func(d *Declaration) { d.Service("web", web); d.Control(Socket("/run/g/a.sock")) },
			"broker: {socket: /run/g/a.sock}\n",
			`c.yaml:1:18: queue socket "/run/g/a.sock" is the control socket's path too (give each socket a path of its own)`},
		{"a zero declaration is no help to an empty file", func(*Declaration) {},
			"",
			`c.yaml:1:1: the file is empty (expected a mapping with a "services" key listing at least one service)`},
		{"a zero declaration is no help to a file without services", func(*Declaration) {},
			"shutdown_timeout: 5s\n",
			`c.yaml:1:1: missing "services" key (add "services:" with at least one service under it)`},
		{"unknown keys are still unknown", func(d *Declaration) { d.Service("printer", Run("printer")) },
			"services:\n  printer: {wokers: 5}\n",
			`c.yaml:2:13: unknown key "wokers" in service "printer" (did you mean "workers"? known keys: command, depends_on, dir, env, env_file, on_exit, ready, ready_timeout, recycle, reload_signal, replace, restart, run, schedule, stop_signal, stop_timeout, watchdog, workers)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var d Declaration
			tt.declare(&d)
			cfg, err := ParseOver(&d, "c.yaml", []byte(tt.src), testGoServices)
			if cfg != nil {
				t.Errorf("ParseOver returned a config with its error")
			}
			var list ErrorList
			if !errors.As(err, &list) {
				t.Fatalf("error is %T, not an ErrorList: %v", err, err)
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("got error\n%s\nwant\n%s", got, tt.want)
			}
			if got := strings.Join(errorStrings(list), "\n"); got != tt.want {
				t.Errorf("the list is not in Error()'s order:\n%s", got)
			}
		})
	}
}

func errorStrings(l ErrorList) []string {
	var out []string
	for _, e := range l {
		out = append(out, e.Error())
	}
	return out
}

// TestParseOverNil checks that a nil declaration is exactly Parse and Load,
// successes and errors alike.
func TestParseOverNil(t *testing.T) {
	t.Parallel()
	for _, src := range []string{fullDeclarationYAML, "services:\n  web: {command: [a], workers: -1}\nshutdown_timeout: 0s\n", ""} {
		want, wantErr := Parse("c.yaml", []byte(src), testGoServices)
		got, gotErr := ParseOver(nil, "c.yaml", []byte(src), testGoServices)
		if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(gotErr, wantErr) {
			t.Errorf("ParseOver(nil) = %v, %v; Parse = %v, %v", got, gotErr, want, wantErr)
		}
	}
	path := filepath.Join(t.TempDir(), "g.yaml")
	if err := os.WriteFile(path, []byte("services:\n  web: {command: [a], dir: www}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	want, err := Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := LoadOver(nil, path, nil)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("LoadOver(nil) = %v, %v; Load = %v", got, err, want)
	}
}

func TestLoadOver(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "g.yaml")
	if err := os.WriteFile(path, []byte("services:\n  printer: {workers: 4, dir: spool}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadOver(printerDeclaration(), path, testGoServices)
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.Service("printer")
	if cfg.File != path || p.Workers != 4 || p.Dir != filepath.Join(dir, "spool") || p.Pos.File != path {
		t.Errorf("File %q, printer %+v", cfg.File, *p)
	}
	missing := filepath.Join(dir, "missing.yaml")
	cfg, err = LoadOver(printerDeclaration(), missing, testGoServices)
	if cfg != nil || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("LoadOver(missing) = %v, %v; want fs.ErrNotExist", cfg, err)
	}
	if want := "load config: open " + missing + ": no such file or directory"; err.Error() != want {
		t.Errorf("error = %q, want %q", err, want)
	}
}

// TestResolveLeavesDeclarationAlone checks that resolving, parsing over a
// declaration and changing what they return leave the declaration as it
// was, so that every reload starts from the same one; and that options
// copy what they are given.
func TestResolveLeavesDeclarationAlone(t *testing.T) {
	t.Parallel()
	argv := []string{"/bin/web", "--flag"}
	env := map[string]string{"A": "1"}
	uids := []int{1000}
	build := func(argv []string, env map[string]string, uids []int) *Declaration {
		var d Declaration
		d.Service("web", Command(argv...), Env(env), Workers(2))
		d.Service("printer", Run("printer"), BackoffInitial(time.Second))
		d.Queue("jobs", Capacity(3))
		d.Broker(AllowUIDs(uids...))
		return &d
	}
	d := build(argv, env, uids)
	pristine := build([]string{"/bin/web", "--flag"}, map[string]string{"A": "1"}, []int{1000})
	// The caller's own values change after declaring: the declaration keeps
	// what it was given.
	argv[0], env["A"], uids[0] = "/bin/evil", "2", 0
	env["B"] = "3"

	first, err := d.Resolve(testGoServices)
	if err != nil {
		t.Fatal(err)
	}
	if first.Service("web").Command[0] != "/bin/web" || first.Service("web").Env["A"] != "1" || first.Broker.AllowUIDs[0] != 1000 {
		t.Fatalf("the declaration changed with the caller's slices and maps: %s", dump(first))
	}
	src := []byte("services:\n  web: {workers: 5, env: {C: x}, command: [/bin/other]}\n  printer: {restart: {backoff_max: 2s}}\n  extra: {run: ticker}\nqueues:\n  jobs: {capacity: 9}\nbroker: {allow_uids: [5]}\n")
	over, err := ParseOver(d, "c.yaml", src, testGoServices)
	if err != nil {
		t.Fatal(err)
	}
	// Change everything the results hold.
	for _, cfg := range []*Config{first, over} {
		for _, s := range cfg.Services {
			s.Workers = 99
			s.Env["Z"] = "z"
			if len(s.Command) > 0 {
				s.Command[0] = "/bin/changed"
			}
		}
		cfg.Queues[0].Capacity = 1
		if len(cfg.Broker.AllowUIDs) > 0 {
			cfg.Broker.AllowUIDs[0] = 4
		}
	}
	if !reflect.DeepEqual(d, pristine) {
		t.Fatalf("the declaration changed:\n%#v\nwant\n%#v", d, pristine)
	}
	again, err := d.Resolve(testGoServices)
	if err != nil {
		t.Fatal(err)
	}
	web := again.Service("web")
	if web.Workers != 2 || web.Command[0] != "/bin/web" || len(web.Env) != 1 || again.Queues[0].Capacity != 3 || again.Broker.AllowUIDs[0] != 1000 {
		t.Errorf("a second Resolve sees changes: %s", dump(again))
	}
	over2, err := ParseOver(d, "c.yaml", src, testGoServices)
	if err != nil {
		t.Fatal(err)
	}
	if over2.Service("web").Workers != 5 || len(over2.Service("web").Env) != 2 || over2.Service("printer").Restart.BackoffMax != 2*time.Second {
		t.Errorf("a second ParseOver differs: %s", dump(over2))
	}
}

// TestDeclarationRepeats checks that a setting given again replaces the
// earlier one, Env adds, nil options are ignored, and a second Service call
// keeps the service where it was first declared.
func TestDeclarationRepeats(t *testing.T) {
	t.Parallel()
	var d Declaration
	d.Service("a", Command("/bin/a"), Workers(-1), nil)
	d.Service("b", Run("printer"), Env(map[string]string{"X": "1", "Y": "1"}))
	d.Service("a", Workers(4), Env(map[string]string{"P": "p"}))
	d.Service("b", Env(map[string]string{"Y": "2"}))
	d.Queue("q", Capacity(0), nil)
	d.Queue("q", Capacity(8))
	d.Broker(nil, AllowUIDs(1), AllowUIDs(2, 3))
	cfg, err := d.Resolve(testGoServices)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Services[0].Name != "a" || cfg.Services[0].Workers != 4 || cfg.Services[0].Env["P"] != "p" {
		t.Errorf("a = %+v", *cfg.Services[0])
	}
	if want := map[string]string{"X": "1", "Y": "2"}; !reflect.DeepEqual(cfg.Services[1].Env, want) {
		t.Errorf("b's env %v, want %v", cfg.Services[1].Env, want)
	}
	if cfg.Queues[0].Capacity != 8 || !reflect.DeepEqual(cfg.Broker.AllowUIDs, []int{2, 3}) {
		t.Errorf("capacity %d, allow_uids %v", cfg.Queues[0].Capacity, cfg.Broker.AllowUIDs)
	}
	var nilDecl *Declaration
	if _, err := nilDecl.Resolve(nil); err == nil || !strings.Contains(err.Error(), "no service is declared") {
		t.Errorf("nil Resolve: %v", err)
	}
}

// TestDeclarationAndFileAgree checks, rule by rule, that a bad value gets
// the same message whether a file or a declaration gives it: both go
// through one rule. Only "(got ...)" may differ, where a file shows the
// value as written (quoted) and Go as Go prints it; those rules are left
// out here and pinned in TestDeclarationErrors.
func TestDeclarationAndFileAgree(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		declare func(d *Declaration)
		src     string // under "services:\n  web:\n    command: [/bin/web]\n"
	}{
		{"workers", func(d *Declaration) { d.Service("web", web, Workers(-1)) }, "    workers: -1\n"},
		{"capacity", func(d *Declaration) { d.Service("web", web); d.Queue("jobs", Capacity(0)) }, "queues: {jobs: {capacity: 0}}\n"},
		{"uid", func(d *Declaration) { d.Service("web", web); d.Broker(AllowUIDs(-1)) }, "broker: {allow_uids: [-1]}\n"},
		{"service name", func(d *Declaration) { d.Service("web", web); d.Service("9x", web) }, "  9x: {command: [/bin/web]}\n"},
		{"queue name", func(d *Declaration) { d.Service("web", web); d.Queue("9q") }, "queues: {9q: {}}\n"},
		{"store", func(d *Declaration) { d.Service("web", web); d.Queue("jobs", QueueStore("disk")) }, "queues: {jobs: {store: disk}}\n"},
		{"store needs nats", func(d *Declaration) { d.Service("web", web); d.Queue("jobs", QueueStore(StoreJetStream)) }, "queues: {jobs: {store: jetstream}}\n"},
		{"ack_wait on a memory queue", func(d *Declaration) { d.Service("web", web); d.Queue("jobs", AckWait(time.Minute)) }, "queues: {jobs: {ack_wait: 1m}}\n"},
		{"replicas on a memory queue", func(d *Declaration) { d.Service("web", web); d.Queue("jobs", Replicas(2)) }, "queues: {jobs: {replicas: 2}}\n"},
		{"ack_wait floor", func(d *Declaration) { d.Service("web", web); d.Queue("jobs", AckWait(time.Millisecond)) }, "queues: {jobs: {ack_wait: 1ms}}\n"},
		{"replicas", func(d *Declaration) { d.Service("web", web); d.Queue("jobs", Replicas(0)) }, "queues: {jobs: {replicas: 0}}\n"},
		{"pack on a memory queue", func(d *Declaration) { d.Service("web", web); d.Queue("jobs", Pack(4)) }, "queues: {jobs: {pack: 4}}\n"},
		{"pack", func(d *Declaration) { d.Service("web", web); d.Queue("jobs", Pack(1025)) }, "queues: {jobs: {pack: 1025}}\n"},
		{"min_uptime floor", func(d *Declaration) { d.Service("web", web, MinUptime(time.Millisecond)) }, "    restart: {min_uptime: 1ms}\n"},
		{"backoff_initial floor", func(d *Declaration) { d.Service("web", web, BackoffInitial(time.Millisecond)) }, "    restart: {backoff_initial: 1ms}\n"},
		{"backoff order", func(d *Declaration) { d.Service("web", web, BackoffInitial(5*time.Second), BackoffMax(time.Second)) }, "    restart: {backoff_initial: 5s, backoff_max: 1s}\n"},
		{"backoff over the default cap", func(d *Declaration) { d.Service("web", web, BackoffInitial(time.Hour)) }, "    restart: {backoff_initial: 1h}\n"},
		{"reload_signal KILL", func(d *Declaration) { d.Service("web", web, ReloadSignal(syscall.SIGKILL)) }, "    reload_signal: KILL\n"},
		{"env name", func(d *Declaration) { d.Service("web", web, Env(map[string]string{"1A": ""})) }, "    env: {1A: \"\"}\n"},
		{"reserved env name", func(d *Declaration) { d.Service("web", web, Env(map[string]string{"GOTYLEDON_X": ""})) }, "    env: {GOTYLEDON_X: \"\"}\n"},
		{"systemd env name", func(d *Declaration) { d.Service("web", web, Env(map[string]string{"WATCHDOG_USEC": ""})) }, "    env: {WATCHDOG_USEC: \"\"}\n"},
		{"env NUL", func(d *Declaration) { d.Service("web", web, Env(map[string]string{"A": "\x00"})) }, "    env: {A: \"\\0\"}\n"},
		{"dir tilde", func(d *Declaration) { d.Service("web", web, Dir("~/x")) }, "    dir: ~/x\n"},
		{"dir NUL", func(d *Declaration) { d.Service("web", web, Dir("a\x00")) }, "    dir: \"a\\0\"\n"},
		{"env_file tilde", func(d *Declaration) { d.Service("web", web, EnvFiles(EnvFile{Path: "~/x.env"})) }, "    env_file: [\"~/x.env\"]\n"},
		{"env_file empty", func(d *Declaration) { d.Service("web", web, EnvFiles(EnvFile{Path: ""})) }, "    env_file: [\"\"]\n"},
		{"env_file not regular", func(d *Declaration) { d.Service("web", web, EnvFiles(EnvFile{Path: "/dev/null"})) }, "    env_file: /dev/null\n"},
		{"command[0]", func(d *Declaration) { d.Service("web", Command("")) }, "services:\n  web:\n    command: [\"\"]\n"},
		{"command NUL", func(d *Declaration) { d.Service("web", Command("a", "\x00")) }, "services:\n  web:\n    command: [a, \"\\0\"]\n"},
		{"empty command", func(d *Declaration) { d.Service("web", Command()) }, "services:\n  web:\n    command: []\n"},
		{"neither", func(d *Declaration) { d.Service("web") }, "services:\n  web: {}\n"},
		{"run", func(d *Declaration) { d.Service("web", Run("nope")) }, "services:\n  web: {run: nope}\n"},
		{"socket length", func(d *Declaration) { d.Service("web", web); d.Broker(Socket("/" + strings.Repeat("x", 200))) }, "broker: {socket: /" + strings.Repeat("x", 200) + "}\n"},
		{"group", func(d *Declaration) { d.Service("web", web); d.Broker(Group("no-such-group-here")) }, "broker: {group: no-such-group-here}\n"},
		{"metrics_listen", func(d *Declaration) { d.Service("web", web); d.MetricsListen(":80") }, "control: {metrics_listen: \":80\"}\n"},
		{"metrics_listen port", func(d *Declaration) { d.Service("web", web); d.MetricsListen("127.0.0.1:99999") }, "control: {metrics_listen: \"127.0.0.1:99999\"}\n"},
		{"same sockets", func(d *Declaration) {
			d.Service("web", web)
			d.Broker(Socket("/run/s"))
			d.Control(Socket("/run/s"))
		}, "broker: {socket: /run/s}\ncontrol: {socket: /run/s}\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			src := tt.src
			if !strings.HasPrefix(src, "services:") {
				// Indented lines belong to web; the others are top-level
				// keys or more services.
				svc, top := "services:\n  web:\n    command: [/bin/web]\n", ""
				for _, line := range strings.SplitAfter(src, "\n") {
					if strings.HasPrefix(line, " ") {
						svc += line
					} else {
						top += line
					}
				}
				src = svc + top
			}
			var d Declaration
			tt.declare(&d)
			_, declErr := d.Resolve(testGoServices)
			_, fileErr := Parse("c.yaml", []byte(src), testGoServices)
			var dl, fl ErrorList
			if !errors.As(declErr, &dl) || !errors.As(fileErr, &fl) || len(dl) != 1 || len(fl) != 1 {
				t.Fatalf("want one error each, got\n%v\nand\n%v", declErr, fileErr)
			}
			if dl[0].Msg != fl[0].Msg {
				t.Errorf("declared: %s\nfile:     %s", dl[0].Msg, fl[0].Msg)
			}
		})
	}
}

// TestParseOverConcurrently checks the documented promise that a
// declaration no longer being changed may be resolved from several
// goroutines at once (run with -race: any write to it is a race).
func TestParseOverConcurrently(t *testing.T) {
	t.Parallel()
	d := printerDeclaration()
	src := []byte("services:\n  printer: {workers: 5, env: {A: b}}\n")
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			cfg, err := ParseOver(d, "c.yaml", src, testGoServices)
			if err == nil && cfg.Service("printer").Workers != 5 {
				err = errors.New("printer's workers not from the file")
			}
			if err == nil {
				_, err = d.Resolve(testGoServices)
			}
			errs <- err
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

// Declared env files: read at every Resolve, ParseOver and LoadOver, over
// the declared env, under the file's env; a relative path is the working
// directory's; a file's env_file for the service replaces the declared
// list, so that a declared file it names no longer is not read at all.
func TestDeclaredEnvFiles(t *testing.T) {
	t.Parallel()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	dir := writeFiles(t, map[string]string{
		"a.env":     "A=a\nB=a\n",
		"b.env":     "B=b\nC=b\n",
		"other.env": "O=o\n",
	})
	var d Declaration
	d.Service("web", web, Env(map[string]string{"A": "decl", "D": "decl"}),
		EnvFiles(EnvFile{Path: filepath.Join(dir, "a.env")}, EnvFile{Path: filepath.Join(dir, "b.env")},
			EnvFile{Path: "no-such.env", Optional: true}))
	d.Service("printer", Run("printer"))
	cfg, err := d.Resolve(testGoServices)
	if err != nil {
		t.Fatal(err)
	}
	s := cfg.Service("web")
	if want := map[string]string{"A": "a", "B": "b", "C": "b", "D": "decl"}; !reflect.DeepEqual(s.Env, want) {
		t.Errorf("Resolve: env %v, want %v", s.Env, want)
	}
	if want := []EnvFile{
		{Path: filepath.Join(dir, "a.env"), Pos: Position{Field: "services.web.env_file[0]"}},
		{Path: filepath.Join(dir, "b.env"), Pos: Position{Field: "services.web.env_file[1]"}},
		{Path: filepath.Join(wd, "no-such.env"), Optional: true, Pos: Position{Field: "services.web.env_file[2]"}},
	}; !reflect.DeepEqual(s.EnvFiles, want) {
		t.Errorf("Resolve: env files %+v, want %+v", s.EnvFiles, want)
	}

	// Each resolution reads the files again.
	writeFile(t, filepath.Join(dir, "b.env"), "B=b2\n")
	cfg, err = d.Resolve(testGoServices)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"A": "a", "B": "b2", "D": "decl"}; !reflect.DeepEqual(cfg.Service("web").Env, want) {
		t.Errorf("Resolve again: env %v, want %v", cfg.Service("web").Env, want)
	}

	for _, tt := range []struct {
		name, src string
		want      map[string]string
	}{
		{"file's env over the declared files", "services:\n  web: {env: {B: file}}\n", map[string]string{"A": "a", "B": "file", "D": "decl"}},
		{"service left out", "services:\n  printer: {workers: 2}\n", map[string]string{"A": "a", "B": "b2", "D": "decl"}},
		{"empty file", "", map[string]string{"A": "a", "B": "b2", "D": "decl"}},
		{"file's env_file replaces", "services:\n  web: {env_file: other.env}\n", map[string]string{"A": "decl", "D": "decl", "O": "o"}},
		{"file's env_file empty", "services:\n  web: {env_file: []}\n", map[string]string{"A": "decl", "D": "decl"}},
	} {
		path := filepath.Join(dir, "c.yaml")
		writeFile(t, path, tt.src)
		cfg, err := LoadOver(&d, path, testGoServices)
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if got := cfg.Service("web").Env; !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: env %v, want %v", tt.name, got, tt.want)
		}
	}

	// Replaced, a declared file is not read: one that does not exist is
	// no error.
	d.Service("web", EnvFiles(EnvFile{Path: filepath.Join(dir, "missing.env")}))
	if _, err := ParseOver(&d, filepath.Join(dir, "c.yaml"), []byte("services:\n  web: {env_file: other.env}\n"), testGoServices); err != nil {
		t.Errorf("a declared env file the file replaced was read: %v", err)
	}
	if _, err := ParseOver(&d, filepath.Join(dir, "c.yaml"), []byte("services:\n  web: {workers: 2}\n"), testGoServices); err == nil || !strings.Contains(err.Error(), "missing.env does not exist") {
		t.Errorf("a declared env file the file leaves in force was not read: %v", err)
	}
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// What is wrong with a declared env file names the declared entry, in
// the order of the declaration, whether or not a file is applied on top
// (as long as the file leaves the declared list in force).
func TestDeclaredEnvFileErrors(t *testing.T) {
	t.Parallel()
	dir := writeFiles(t, map[string]string{"bad.env": "A=1\nnot a variable\n", "good.env": "G=1\n"})
	missing := filepath.Join(dir, "missing.env")
	var d Declaration
	d.Service("web", web, Workers(-1))
	d.Service("web", EnvFiles(
		EnvFile{Path: filepath.Join(dir, "good.env")},
		EnvFile{Path: missing},
		EnvFile{Path: filepath.Join(dir, "bad.env")},
		EnvFile{Path: "~/x.env"},
		EnvFile{Path: ""},
	))
	d.Service("printer", Run("printer"), StopTimeout(-1))
	want := []string{
		`services.web.workers (declared in Go): workers must be a whole number from 0 to 10000 (got -1)`,
		`services.web.env_file[3] (declared in Go): env_file "~/x.env" starts with "~" (gotyledon does not expand "~"; write the full path)`,
		`services.web.env_file[4] (declared in Go): env_file path is empty (write the path of a file of NAME=value lines)`,
		`services.web.env_file[1] (declared in Go): env_file ` + missing + ` does not exist (create it, or mark it optional: config.EnvFile{Path: "` + missing + `", Optional: true})`,
		`services.web.env_file[2] (declared in Go): env_file ` + dir + `/bad.env:2: missing = (want NAME=value, a value in quotes to hold spaces or #)`,
		`services.printer.stop_timeout (declared in Go): stop_timeout must be more than 0 (got -1ns)`,
	}
	_, err := d.Resolve(testGoServices)
	var l ErrorList
	if !errors.As(err, &l) || !reflect.DeepEqual(errorStrings(l), want) {
		t.Errorf("Resolve:\n%v\nwant\n%s", err, strings.Join(want, "\n"))
	}
	// Over a file, the files are read once the file is decoded: their
	// errors come after the other declared ones, before the file's.
	declared := append(slices.Clone(want[:3]), want[5], want[3], want[4])
	for _, tt := range []struct{ src, fileErr string }{
		{"services:\n  printer: {}\n  web:\n    workers: x\n", "c.yaml:4:14: workers must be a whole number from 0 to 10000 (got \"x\")"},
		{"services:\n  printer:\n    workers: x\n", "c.yaml:3:14: workers must be a whole number from 0 to 10000 (got \"x\")"},
	} {
		_, err = ParseOver(&d, "c.yaml", []byte(tt.src), testGoServices)
		want := append(slices.Clone(declared), tt.fileErr)
		var l ErrorList
		if !errors.As(err, &l) || !reflect.DeepEqual(strings.Split(l.Error(), "\n"), want) {
			t.Errorf("ParseOver %q:\n%v\nwant\n%s", tt.src, err, strings.Join(want, "\n"))
		}
	}
}
