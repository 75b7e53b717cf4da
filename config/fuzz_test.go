package config

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"syscall"
	"testing"
	"time"
)

// FuzzParse checks that Parse never panics and that what it accepts keeps
// the promises the supervisor relies on without re-validating.
func FuzzParse(f *testing.F) {
	seeds := []string{
		"",
		"services:\n  web:\n    command: [/bin/web, --port, 8080]\n",
		"shutdown_timeout: 1m\nservices:\n  p:\n    run: printer\n    workers: 3\n    env: {A: 1, B: true}\n    restart: {min_uptime: 0s, backoff_initial: 1s, backoff_max: 1m}\n",
		"services:\n  a:\n    command: &c [x]\n    restart: &r {backoff_max: 2s}\n  b:\n    command: *c\n    restart: *r\n    stop_signal: sigint\n    dir: rel\n",
		"services:\n  web:\n    wokers: two\n    command: \"echo hi\"\n  9x: {run: nope}\n",
		"services:\n  a:\n    <<: *x\n---\nb: 1\n",
		"services: {a: {command: [], workers: -1, stop_timeout: 10, env: {GOTYLEDON_X: ~}}}\n",
		"- a\n- b\n",
		"services:\n  web: {command: [a}\n",
		"services:\n  web:\n    command: &c [a, *c]\n    workers: !!int 2\n",
		"control: {socket: c.sock, group: 0, allow_uids: [1], metrics_listen: \"127.0.0.1:9464\"}\nservices:\n  w: {command: [a], replace: all}\n",
		"broker: {socket: /run/q.sock, allow_gids: [5]}\nqueues:\n  jobs: {capacity: 3}\nservices:\n  w: {run: printer, reload_signal: HUP}\n",
		"broker: {socket: /run/a}\ncontrol: {socket: /run/a, metrics_listen: \":1\"}\nservices:\n  w: {command: [a], restart: {backoff_initial: 1m}}\n",
		"services:\n  w: {command: [\"\", \"\\0\"], env: {A: \"\\0\", 1B: x}, dir: ~, reload_signal: KILL, replace: blue, restart: {min_uptime: 1ms, backoff_max: 1ms}}\n",
		"nats:\n  local_dir: /var/lib/gotyledon/jetstream\n  sync: always\nqueues:\n  jobs: {capacity: 10000, store: jetstream, ack_wait: 30s}\n  mem: {store: memory}\nservices:\n  w: {run: printer}\n",
		"nats:\n  url: [nats://a:4222, \"tls://b:4222\"]\n  tls: {ca: /etc/ssl/certs}\n  bridge: bin/gotyledon-jetstream\nqueues:\n  jobs: {store: jetstream, replicas: 3, ack_wait: 1m, pack: 100}\nservices:\n  w: {command: [a]}\n",
		"nats: {url: \"nats://a:4222,b\", local_dir: x, sync: 1s, creds: c, nkey: k, tls: {cert: c}}\nqueues: {j: {store: disk, ack_wait: 1ms, replicas: 9}, k: {replicas: 2, pack: 2000}}\nservices: {w: {command: [a]}}\n",
		"nats: {local_dir: /x, sync: 10}\nqueues: {j: {store: jetstream, replicas: 2}, k: {store: jetstream}}\nservices: {w: {command: [a]}}\n",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	// The configurations the project ships are seeds too.
	shipped, _ := filepath.Glob("../deploy/*.yaml")
	for _, path := range shipped {
		if data, err := os.ReadFile(path); err == nil {
			f.Add(data)
		}
	}
	goServices := []string{"printer", "ticker"}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("fuzz.yaml", data, goServices)
		if err != nil {
			var list ErrorList
			if !errors.As(err, &list) || len(list) == 0 {
				t.Fatalf("error is not a non-empty ErrorList: %#v", err)
			}
			for _, e := range list {
				if e.Pos.File != "fuzz.yaml" || e.Pos.Line < 1 || e.Pos.Col < 1 || e.Pos.Declared() || e.Msg == "" {
					t.Fatalf("error without a proper position or message: %#v", e)
				}
			}
			if cfg != nil {
				t.Fatalf("config returned with an error")
			}
			return
		}
		checkConfig(t, cfg)
	})
}

// checkConfig fails t unless cfg keeps the promises the supervisor relies
// on without re-validating.
func checkConfig(t *testing.T, cfg *Config) {
	t.Helper()
	if cfg == nil || len(cfg.Services) == 0 {
		t.Fatalf("no error but no services: %+v", cfg)
	}
	if cfg.ShutdownTimeout <= 0 || cfg.ShutdownTimeout > MaxDuration {
		t.Fatalf("shutdown timeout %v out of range", cfg.ShutdownTimeout)
	}
	for _, a := range []SocketAccess{cfg.Broker, cfg.Control.SocketAccess} {
		if a.Socket != "" && (!filepath.IsAbs(a.Socket) || len(a.Socket) > MaxSocketPath) {
			t.Fatalf("socket path %q: want absolute and at most %d bytes", a.Socket, MaxSocketPath)
		}
		if (a.Group == "") != (a.GID < 0) {
			t.Fatalf("group %q resolved to gid %d", a.Group, a.GID)
		}
	}
	if addr := cfg.Control.MetricsListen; addr != "" {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			t.Fatalf("metrics_listen %q accepted: %v", addr, err)
		}
	}
	names := map[string]bool{}
	for _, s := range cfg.Services {
		if names[s.Name] || !validServiceName(s.Name) {
			t.Fatalf("bad or repeated service name %q", s.Name)
		}
		names[s.Name] = true
		if (len(s.Command) > 0) == (s.Run != "") {
			t.Fatalf("service %q: want exactly one of Command %q and Run %q", s.Name, s.Command, s.Run)
		}
		if len(s.Command) > 0 && s.Command[0] == "" {
			t.Fatalf("service %q: empty program", s.Name)
		}
		if s.Workers < 0 || s.Workers > MaxWorkers {
			t.Fatalf("service %q: %d workers", s.Name, s.Workers)
		}
		if s.StopTimeout <= 0 || s.StopTimeout > MaxDuration {
			t.Fatalf("service %q: stop timeout %v", s.Name, s.StopTimeout)
		}
		r := s.Restart
		if r.MinUptime < MinUptimeFloor || r.BackoffInitial < BackoffFloor || r.BackoffInitial <= 0 || r.BackoffMax < r.BackoffInitial || r.BackoffMax > MaxDuration {
			t.Fatalf("service %q: bad restart policy %+v", s.Name, r)
		}
		if s.Env == nil {
			t.Fatalf("service %q: nil Env", s.Name)
		}
		for name := range s.Env {
			if envNameProblem(name) != "" {
				t.Fatalf("service %q: env name %q accepted", s.Name, name)
			}
		}
		if signalProblem("stop_signal", s.StopSignal, "") != "" || s.ReloadSignal != 0 && signalProblem("reload_signal", s.ReloadSignal, "") != "" {
			t.Fatalf("service %q: signals %v and %v accepted", s.Name, s.StopSignal, s.ReloadSignal)
		}
		if s.Replace != ReplaceRolling && s.Replace != ReplaceAll {
			t.Fatalf("service %q: replace %d", s.Name, s.Replace)
		}
		if s.Dir != "" && !filepath.IsAbs(s.Dir) {
			t.Fatalf("service %q: relative dir %q", s.Name, s.Dir)
		}
	}
	queues := map[string]bool{}
	for _, q := range cfg.Queues {
		if queues[q.Name] || !validServiceName(q.Name) || q.Capacity < 1 || q.Capacity > MaxCapacity {
			t.Fatalf("bad or repeated queue %+v", *q)
		}
		queues[q.Name] = true
		switch q.Store {
		case StoreMemory:
			if q.AckWait != 0 || q.Replicas != 0 || q.Pack != 0 {
				t.Fatalf("memory queue with jetstream settings %+v", *q)
			}
		case StoreJetStream:
			if q.AckWait < AckWaitFloor || q.AckWait > MaxDuration || q.Replicas < 1 || q.Replicas > MaxReplicas || q.Pack < 1 || q.Pack > MaxPack {
				t.Fatalf("jetstream queue with bad settings %+v", *q)
			}
			if cfg.NATS == nil || cfg.NATS.LocalDir != "" && q.Replicas > 1 {
				t.Fatalf("jetstream queue %+v with nats %+v", *q, cfg.NATS)
			}
		default:
			t.Fatalf("queue with store %q: %+v", q.Store, *q)
		}
	}
	if n := cfg.NATS; n != nil {
		checkNATS(t, n)
	}
}

// checkNATS fails t unless n keeps the promises the bridge relies on.
func checkNATS(t *testing.T, n *NATS) {
	t.Helper()
	local := n.LocalDir != ""
	if (len(n.URLs) > 0) == local {
		t.Fatalf("nats with URLs %q and local_dir %q: want exactly one", n.URLs, n.LocalDir)
	}
	for _, u := range n.URLs {
		if urlProblem("url", u) != "" {
			t.Fatalf("url %q accepted", u)
		}
	}
	for _, p := range []string{n.Creds, n.NKey, n.TLSCA, n.TLSCert, n.TLSKey, n.LocalDir, n.Bridge} {
		if p != "" && !filepath.IsAbs(p) {
			t.Fatalf("relative path %q in nats %+v", p, *n)
		}
	}
	if n.Creds != "" && n.NKey != "" || (n.TLSCert == "") != (n.TLSKey == "") {
		t.Fatalf("nats with creds and nkey, or half a client certificate: %+v", *n)
	}
	if local && (n.Creds != "" || n.NKey != "" || n.TLSCA != "" || n.TLSCert != "") {
		t.Fatalf("local_dir with credentials or TLS: %+v", *n)
	}
	if (n.SyncAlways || n.SyncInterval != 0) && !local || n.SyncAlways && n.SyncInterval != 0 || n.SyncInterval < 0 || n.SyncInterval > MaxDuration {
		t.Fatalf("bad sync in %+v", *n)
	}
	if n.Pos.Line < 1 {
		t.Fatalf("nats without a position: %+v", *n)
	}
}

// fuzzDeclaration is the fixed, valid declaration FuzzParseOver applies
// files on top of.
func fuzzDeclaration() *Declaration {
	var d Declaration
	d.ShutdownTimeout(20 * time.Second)
	d.Broker(Socket("/run/g/queue.sock"), AllowUIDs(1000))
	d.Queue("jobs", Capacity(100))
	d.Service("producer", Run("ticker"), Env(map[string]string{"LANG": "C"}), StopTimeout(3*time.Second))
	d.Service("printer", Run("printer"), Workers(2), BackoffInitial(time.Second), BackoffMax(5*time.Second))
	d.Service("web", Command("/bin/web", "--port", "8080"), Dir("/srv/web"))
	return &d
}

// FuzzParseOver checks that ParseOver never panics, never changes the
// declaration, never loses a declared service or reorders the declared
// ones, and that what it accepts keeps the promises Parse keeps.
func FuzzParseOver(f *testing.F) {
	seeds := []string{
		"",
		"services:\n  printer: {workers: 5}\n",
		"shutdown_timeout: 1m\nservices:\n  printer: {command: [/bin/lp]}\n  web: {run: printer, env: {A: 1}}\n  extra: {command: [x]}\n",
		"services:\n  printer:\n    restart: {backoff_max: 100ms}\n  web:\n    restart: {backoff_initial: 1h}\n",
		"control: {socket: /run/g/queue.sock}\nqueues: {jobs: {capacity: 0}, more: {}}\n",
		"services:\n  printer: {command: [a], run: ticker}\n  new: {workers: 2}\n",
		"services: {}\n",
		"services:\n  web: &w {workers: 0}\n  printer: *w\n",
		"nats: {url: nats://a:4222}\nqueues:\n  jobs: {store: jetstream, ack_wait: 5s}\n",
		"nats: {local_dir: js, sync: 2s}\nqueues:\n  jobs: {replicas: 1}\n  more: {store: jetstream}\n",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	goServices := []string{"printer", "ticker"}
	declared := []string{"producer", "printer", "web"}
	f.Fuzz(func(t *testing.T, data []byte) {
		d := fuzzDeclaration()
		cfg, err := ParseOver(d, "fuzz.yaml", data, goServices)
		if !reflect.DeepEqual(d, fuzzDeclaration()) {
			t.Fatalf("ParseOver changed the declaration")
		}
		if err != nil {
			var list ErrorList
			if !errors.As(err, &list) || len(list) == 0 {
				t.Fatalf("error is not a non-empty ErrorList: %#v", err)
			}
			for _, e := range list {
				// The declaration is valid: every error is the file's.
				if e.Pos.File != "fuzz.yaml" || e.Pos.Line < 1 || e.Pos.Col < 1 || e.Pos.Declared() || e.Msg == "" {
					t.Fatalf("error without a proper position or message: %#v", e)
				}
			}
			if cfg != nil {
				t.Fatalf("config returned with an error")
			}
			return
		}
		checkConfig(t, cfg)
		for i, name := range declared {
			if cfg.Services[i].Name != name {
				t.Fatalf("service %d is %q, want the declared %q", i, cfg.Services[i].Name, name)
			}
		}
		if cfg.Queues[0].Name != "jobs" {
			t.Fatalf("declared queue lost: %+v", cfg.Queues)
		}
	})
}

// FuzzDeclaration checks that Resolve never panics, whatever values a
// program declares, that every error names a declared field, and that
// what it accepts keeps the promises Parse keeps.
func FuzzDeclaration(f *testing.F) {
	f.Add("web", "/bin/web", "", 1, int64(time.Second), int64(0), 15, 0, "LANG", "C", "/srv", 10, "/run/q.sock", "127.0.0.1:9464", "0", -1)
	f.Add("", "", "printer", -1, int64(-1), int64(time.Hour), 0, 9, "GOTYLEDON_X", "\x00", "~", 0, "", "x", "no-such", 1<<40)
	f.Add("p", "a", "ticker", 10001, int64(25*time.Hour), int64(time.Nanosecond), 19, 1, "A-", "", "rel/dir", MaxCapacity+1, "rel.sock", ":1", "-1", 0)
	f.Fuzz(func(t *testing.T, name, prog, run string, workers int, stop, backoff int64, stopSig, reloadSig int, envName, envVal, dir string, capacity int, socket, listen, group string, uid int) {
		var d Declaration
		opts := []ServiceOption{Workers(workers), StopTimeout(time.Duration(stop)), BackoffInitial(time.Duration(backoff)),
			StopSignal(syscall.Signal(stopSig)), Env(map[string]string{envName: envVal}), Dir(dir)}
		if reloadSig != 0 {
			opts = append(opts, ReloadSignal(syscall.Signal(reloadSig)))
		}
		if prog != "" {
			opts = append(opts, Command(prog, envVal))
		}
		if run != "" {
			opts = append(opts, Run(run))
		}
		d.Service(name, opts...)
		// The queue's store and jetstream settings come from the values
		// at hand, so that the corpus keeps its shape.
		qopts := []QueueOption{Capacity(capacity)}
		switch uint(workers) % 4 {
		case 1:
			qopts = append(qopts, QueueStore(StoreJetStream), AckWait(time.Duration(stop)), Replicas(stopSig), Pack(capacity))
		case 2:
			qopts = append(qopts, AckWait(time.Duration(backoff)))
		case 3:
			qopts = append(qopts, QueueStore(Store(envVal)), Replicas(reloadSig), Pack(workers))
		}
		d.Queue(name, qopts...)
		d.Broker(Socket(socket), Group(group), AllowUIDs(uid))
		d.Control(Socket(socket + "c"))
		d.MetricsListen(listen)
		cfg, err := d.Resolve([]string{"printer", "ticker"})
		if err != nil {
			var list ErrorList
			if !errors.As(err, &list) || len(list) == 0 {
				t.Fatalf("error is not a non-empty ErrorList: %#v", err)
			}
			for _, e := range list {
				if !e.Pos.Declared() || e.Pos.File != "" || e.Pos.Line != 0 || e.Msg == "" {
					t.Fatalf("error without a declared field or message: %#v", e)
				}
			}
			if cfg != nil {
				t.Fatalf("config returned with an error")
			}
			return
		}
		checkConfig(t, cfg)
	})
}
