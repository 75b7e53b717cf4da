package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// natsDir makes a directory for a config file and the files its nats:
// section names (user.creds, user.nk, ca.pem, client.crt, client.key, and
// a subdirectory sub/), and returns the directory and the config file's
// path in it (the file itself is not written: tests parse it).
func natsDir(t *testing.T) (dir, file string) {
	t.Helper()
	dir = t.TempDir()
	for _, name := range []string{"user.creds", "user.nk", "ca.pem", "client.crt", "client.key"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("test\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	return dir, filepath.Join(dir, "g.yaml")
}

func TestParseNATS(t *testing.T) {
	t.Parallel()
	const svc = "services:\n  web: {command: [a]}\n"
	tests := []struct {
		name string
		src  string
		// want gets the directory and the file: what cfg.NATS and
		// cfg.Queues must be.
		want func(dir, file string) (*NATS, []*Queue)
	}{
		{"url a string, queue defaults applied",
			"nats:\n  url: nats://127.0.0.1:4222\nqueues:\n  jobs: {store: jetstream}\n  results: {capacity: 5}\n" + svc,
			func(dir, file string) (*NATS, []*Queue) {
				return &NATS{URLs: []string{"nats://127.0.0.1:4222"}, Pos: Position{File: file, Line: 1, Col: 1}},
					[]*Queue{
						{Name: "jobs", Capacity: DefaultCapacity, Store: StoreJetStream, AckWait: DefaultAckWait, Replicas: 1, Pack: 1, Pos: Position{File: file, Line: 4, Col: 3}},
						{Name: "results", Capacity: 5, Store: StoreMemory, Pos: Position{File: file, Line: 5, Col: 3}},
					}
			}},
		{"url a list, creds, tls and bridge, relative paths resolved",
			`queues:
  jobs:
    store: jetstream
    capacity: 100
    ack_wait: 2m
    replicas: 3
    pack: 100
  mem: {store: memory}
nats:
  url: [nats://a:4222, "tls://b:4222", ws://c, wss://d:443/nats]
  creds: ./user.creds
  tls: {ca: ca.pem, cert: sub/../client.crt, key: "DIR/client.key"}
  bridge: bin/gotyledon-jetstream
` + svc,
			func(dir, file string) (*NATS, []*Queue) {
				return &NATS{
						URLs:    []string{"nats://a:4222", "tls://b:4222", "ws://c", "wss://d:443/nats"},
						Creds:   filepath.Join(dir, "user.creds"),
						TLSCA:   filepath.Join(dir, "ca.pem"),
						TLSCert: filepath.Join(dir, "client.crt"),
						TLSKey:  filepath.Join(dir, "client.key"),
						Bridge:  filepath.Join(dir, "bin", "gotyledon-jetstream"),
						Pos:     Position{File: file, Line: 9, Col: 1},
					}, []*Queue{
						{Name: "jobs", Capacity: 100, Store: StoreJetStream, AckWait: 2 * time.Minute, Replicas: 3, Pack: 100, Pos: Position{File: file, Line: 2, Col: 3}},
						{Name: "mem", Capacity: DefaultCapacity, Store: StoreMemory, Pos: Position{File: file, Line: 8, Col: 3}},
					}
			}},
		{"nkey, bounds of ack_wait, replicas and pack",
			"nats: {url: \"nats://n1:4222\", nkey: user.nk}\nqueues:\n  a: {store: jetstream, ack_wait: 1s, replicas: 5, pack: 1024}\n  b: {store: jetstream, ack_wait: 24h, replicas: 1, pack: 1}\n" + svc,
			func(dir, file string) (*NATS, []*Queue) {
				return &NATS{URLs: []string{"nats://n1:4222"}, NKey: filepath.Join(dir, "user.nk"), Pos: Position{File: file, Line: 1, Col: 1}},
					[]*Queue{
						{Name: "a", Capacity: DefaultCapacity, Store: StoreJetStream, AckWait: time.Second, Replicas: 5, Pack: MaxPack, Pos: Position{File: file, Line: 3, Col: 3}},
						{Name: "b", Capacity: DefaultCapacity, Store: StoreJetStream, AckWait: 24 * time.Hour, Replicas: 1, Pack: 1, Pos: Position{File: file, Line: 4, Col: 3}},
					}
			}},
		{"local_dir with sync always, not yet made",
			"nats:\n  local_dir: state/jetstream\n  sync: always\nqueues:\n  jobs: {capacity: 10000, store: jetstream, ack_wait: 30s}\n" + svc,
			func(dir, file string) (*NATS, []*Queue) {
				return &NATS{LocalDir: filepath.Join(dir, "state", "jetstream"), SyncAlways: true, Pos: Position{File: file, Line: 1, Col: 1}},
					[]*Queue{{Name: "jobs", Capacity: 10000, Store: StoreJetStream, AckWait: 30 * time.Second, Replicas: 1, Pack: 1, Pos: Position{File: file, Line: 5, Col: 3}}}
			}},
		{"local_dir an existing directory, sync an interval, replicas 1",
			"nats: {local_dir: \"DIR/sub/\", sync: 1s}\nqueues:\n  jobs: {store: jetstream, replicas: 1}\n" + svc,
			func(dir, file string) (*NATS, []*Queue) {
				return &NATS{LocalDir: filepath.Join(dir, "sub"), SyncInterval: time.Second, Pos: Position{File: file, Line: 1, Col: 1}},
					[]*Queue{{Name: "jobs", Capacity: DefaultCapacity, Store: StoreJetStream, AckWait: DefaultAckWait, Replicas: 1, Pack: 1, Pos: Position{File: file, Line: 3, Col: 3}}}
			}},
		{"nats without any jetstream queue",
			"nats: {local_dir: /var/lib/gotyledon/jetstream}\nqueues:\n  jobs:\n" + svc,
			func(dir, file string) (*NATS, []*Queue) {
				return &NATS{LocalDir: "/var/lib/gotyledon/jetstream", Pos: Position{File: file, Line: 1, Col: 1}},
					[]*Queue{{Name: "jobs", Capacity: DefaultCapacity, Store: StoreMemory, Pos: Position{File: file, Line: 3, Col: 3}}}
			}},
		{"no nats, no queues",
			svc,
			func(dir, file string) (*NATS, []*Queue) { return nil, nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir, file := natsDir(t)
			cfg, err := Parse(file, []byte(strings.ReplaceAll(tt.src, "DIR", dir)), nil)
			if err != nil {
				t.Fatal(err)
			}
			wantNATS, wantQueues := tt.want(dir, file)
			if !reflect.DeepEqual(cfg.NATS, wantNATS) {
				t.Errorf("NATS\n%+v\nwant\n%+v", cfg.NATS, wantNATS)
			}
			if !reflect.DeepEqual(cfg.Queues, wantQueues) {
				t.Errorf("queues\n%s\nwant\n%s", dump(&Config{Queues: cfg.Queues}), dump(&Config{Queues: wantQueues}))
			}
			var wantJS []*Queue
			for _, q := range cfg.Queues {
				if q.Store == StoreJetStream {
					wantJS = append(wantJS, q)
				}
			}
			if got := cfg.JetStreamQueues(); !reflect.DeepEqual(got, wantJS) || len(got) > 0 && got[0] != wantJS[0] {
				t.Errorf("JetStreamQueues() = %v, want %v (the config's own queues)", got, wantJS)
			}
		})
	}
}

func TestParseNATSErrors(t *testing.T) {
	t.Parallel()
	const svc = "services:\n  web: {command: [a]}\n"
	const nats = "nats: {url: nats://a:4222}\n"
	const needs = "store jetstream needs a top-level nats: section: url: for NATS servers, or local_dir: for a JetStream server gotyledon runs"
	const urlMust = `must be a nats://, tls://, ws:// or wss:// URL with a host, as in "nats://127.0.0.1:4222"`
	tests := []struct{ name, src, want string }{
		// Queues.
		{"store unknown", "queues:\n  jobs: {store: disk}\n" + svc,
			`2:17: store must be "memory" (the broker's own memory) or "jetstream" (NATS JetStream, configured under nats:) (got "disk")`},
		{"store a list", "queues:\n  jobs: {store: [jetstream]}\n" + svc,
			`2:17: store must be "memory" or "jetstream" (got a list)`},
		{"store in capitals", "queues:\n  jobs:\n    store: JetStream\n" + nats + svc,
			`3:12: store must be "memory" (the broker's own memory) or "jetstream" (NATS JetStream, configured under nats:) (got "JetStream")`},
		{"ack_wait on a memory queue by default", "queues:\n  jobs: {capacity: 5, ack_wait: 10s}\n" + nats + svc,
			`2:23: ack_wait applies to "store: jetstream" queues only (this queue's store is memory: add store: jetstream, or remove ack_wait)`},
		{"replicas on a memory queue", "queues:\n  jobs:\n    store: memory\n    replicas: 2\n" + svc,
			`4:5: replicas applies to "store: jetstream" queues only (this queue's store is memory: add store: jetstream, or remove replicas)`},
		{"pack on a memory queue", "queues:\n  jobs:\n    store: memory\n    pack: 100\n" + svc,
			`4:5: pack applies to "store: jetstream" queues only (this queue's store is memory: add store: jetstream, or remove pack)`},
		{"pack on a memory queue by default", "queues:\n  jobs: {capacity: 5, pack: 10}\n" + nats + svc,
			`2:23: pack applies to "store: jetstream" queues only (this queue's store is memory: add store: jetstream, or remove pack)`},
		{"pack with a store that is wrong: only the store is", "queues:\n  jobs: {store: disk, pack: 10}\n" + svc,
			`2:17: store must be "memory" (the broker's own memory) or "jetstream" (NATS JetStream, configured under nats:) (got "disk")`},
		{"ack_wait with a store that is wrong: only the store is", "queues:\n  jobs: {store: disk, ack_wait: 10s}\n" + svc,
			`2:17: store must be "memory" (the broker's own memory) or "jetstream" (NATS JetStream, configured under nats:) (got "disk")`},
		{"ack_wait under the floor", "queues:\n  jobs: {store: jetstream, ack_wait: 500ms}\n" + nats + svc,
			`2:38: ack_wait must be at least 1s (got 500ms; a shorter one would deliver items again while their workers are still on them)`},
		{"ack_wait over 24h", "queues:\n  jobs: {store: jetstream, ack_wait: 25h}\n" + nats + svc,
			`2:38: ack_wait must be at most 24h (got "25h")`},
		{"ack_wait zero", "queues:\n  jobs: {store: jetstream, ack_wait: 0s}\n" + nats + svc,
			`2:38: ack_wait must be more than 0 (got "0s")`},
		{"ack_wait without a unit", "queues:\n  jobs: {store: jetstream, ack_wait: 30}\n" + nats + svc,
			`2:38: ack_wait must be a duration with a unit (got 30; write "30s")`},
		{"replicas 0", "queues:\n  jobs: {store: jetstream, replicas: 0}\n" + nats + svc,
			`2:38: replicas must be a whole number from 1 to 5 (got 0)`},
		{"replicas 6", "queues:\n  jobs: {store: jetstream, replicas: 6}\n" + nats + svc,
			`2:38: replicas must be a whole number from 1 to 5 (got 6)`},
		{"pack 0", "queues:\n  jobs: {store: jetstream, pack: 0}\n" + nats + svc,
			`2:34: pack must be a whole number from 1 to 1024 (got 0)`},
		{"pack 1025", "queues:\n  jobs: {store: jetstream, pack: 1025}\n" + nats + svc,
			`2:34: pack must be a whole number from 1 to 1024 (got 1025)`},
		{"pack not a number", "queues:\n  jobs:\n    store: jetstream\n    pack: many\n" + nats + svc,
			`4:11: pack must be a whole number from 1 to 1024 (got "many")`},
		{"jetstream without nats", "queues:\n  jobs: {store: jetstream}\n" + svc,
			`2:17: ` + needs},
		{"jetstream without nats, block style", "services:\n  web: {command: [a]}\nqueues:\n  jobs:\n    capacity: 5\n    store: jetstream\n",
			`6:12: ` + needs},
		{"unknown queue key", "queues:\n  jobs: {stor: jetstream}\n" + svc,
			`2:10: unknown key "stor" in queue "jobs" (did you mean "store"? known keys: ack_wait, capacity, pack, replicas, schedule, store)`},

		// The nats: section itself.
		{"nats left empty", "nats:\nqueues:\n  jobs: {store: jetstream}\n" + svc,
			`1:1: nats needs url (the NATS servers to connect to, as in "nats://127.0.0.1:4222") or local_dir (a directory for a JetStream server gotyledon runs)`},
		{"nats a list", "nats: [nats://a:4222]\n" + svc,
			`1:7: nats must be a mapping with url (NATS servers) or local_dir (a JetStream server gotyledon runs), e.g. "{local_dir: /var/lib/gotyledon/jetstream}" (got a list)`},
		{"both url and local_dir", "nats:\n  url: nats://a:4222\n  local_dir: /var/lib/js\n" + svc,
			`3:3: nats has both url and local_dir (keep one: url connects to NATS servers, local_dir runs a JetStream server of gotyledon's own)`},
		{"both local_dir and url", "nats: {local_dir: /var/lib/js, url: nats://a:4222}\n" + svc,
			`1:32: nats has both url and local_dir (keep one: url connects to NATS servers, local_dir runs a JetStream server of gotyledon's own)`},
		{"unknown nats key", "nats:\n  url: nats://a:4222\n  crds: user.creds\n" + svc,
			`3:3: unknown key "crds" in nats (did you mean "creds"? known keys: bridge, creds, local_dir, nkey, sync, tls, url)`},
		{"duplicate nats", nats + nats + svc,
			`2:1: duplicate key "nats" (first at line 1, col 1; each key may appear once)`},

		// url.
		{"url http", "nats: {url: \"http://a:4222\"}\n" + svc, `1:13: url ` + urlMust + ` (got "http://a:4222")`},
		{"url without a scheme", "nats: {url: \"127.0.0.1:4222\"}\n" + svc, `1:13: url ` + urlMust + ` (got "127.0.0.1:4222")`},
		{"url without a host", "nats: {url: \"nats://:4222\"}\n" + svc,
			`1:13: url "nats://:4222" has no host (write one, as in "nats://127.0.0.1:4222")`},
		{"url with a bad port", "nats: {url: \"nats://a:99999\"}\n" + svc,
			`1:13: url "nats://a:99999": the port must be a number from 1 to 65535, as in "nats://127.0.0.1:4222"`},
		{"url with a comma", "nats: {url: \"nats://a:4222,nats://b:4222\"}\n" + svc,
			`1:13: url "nats://a:4222,nats://b:4222" holds a comma (list the servers instead, as in [nats://a:4222, nats://b:4222])`},
		{"url an empty list", "nats: {url: []}\n" + svc,
			`1:13: url lists no server (give at least one, as in [nats://127.0.0.1:4222])`},
		{"url a mapping", "nats: {url: {host: a}}\n" + svc,
			`1:13: url must be a NATS server URL or a list of them, as in "nats://127.0.0.1:4222" (got a mapping)`},
		{"url left out", "nats:\n  url:\n" + svc,
			`2:3: url must be a NATS server URL or a list of them, as in "nats://127.0.0.1:4222" (got null)`},
		{"url list with a bad element", "nats:\n  url:\n    - nats://a:4222\n    - b:4222\n" + svc,
			`4:7: url[1] ` + urlMust + ` (got "b:4222")`},
		{"url list with a mapping element", "nats:\n  url: [nats://a:4222, {b: 1}]\n" + svc,
			`2:24: url[1] must be a NATS server URL (got a mapping; inside { } and [ ], quote each URL, as in ["nats://a:4222"])`},
		{"url list of unquoted URLs inside a flow mapping", "nats: {url: [nats://a:4222]}\n" + svc,
			`1:14: url[0] must be a NATS server URL (got a mapping; inside { } and [ ], quote each URL, as in ["nats://a:4222"])`},

		// sync.
		{"sync with url", "nats: {url: nats://a, sync: always}\n" + svc,
			`1:23: sync applies to local_dir only (it says when the JetStream server gotyledon runs writes to disk; NATS servers at url have their own settings): remove it`},
		{"sync a word", "nats: {local_dir: /x, sync: sometimes}\n" + svc,
			`1:29: sync must be "always" (every item written to disk before it is acknowledged) or a duration like "1s" (how often the server writes to disk) (got "sometimes")`},
		{"sync without a unit", "nats: {local_dir: /x, sync: 10}\n" + svc,
			`1:29: sync must be "always" or a duration with a unit (got 10; write "10s")`},
		{"sync zero", "nats: {local_dir: /x, sync: 0s}\n" + svc,
			`1:29: sync must be more than 0 (got "0s")`},
		{"sync a list", "nats: {local_dir: /x, sync: [always]}\n" + svc,
			`1:29: sync must be "always" or a duration like "1s" (got a list)`},

		// Files.
		{"creds and nkey", "nats: {url: nats://a, creds: user.creds, nkey: user.nk}\n" + svc,
			`1:42: nats has both creds and nkey (keep one: creds is a credentials file, a user JWT with its nkey seed; nkey a seed file alone)`},
		{"nkey and creds", "nats:\n  nkey: user.nk\n  url: nats://a\n  creds: user.creds\n" + svc,
			`4:3: nats has both creds and nkey (keep one: creds is a credentials file, a user JWT with its nkey seed; nkey a seed file alone)`},
		{"creds missing", "nats: {url: nats://a, creds: missing.creds}\n" + svc,
			`1:30: creds file "DIR/missing.creds" does not exist (a relative path is taken from the config file's directory)`},
		{"nkey a directory", "nats: {url: nats://a, nkey: sub}\n" + svc,
			`1:29: nkey "DIR/sub" is a directory (give the path of a file)`},
		{"creds empty", "nats: {url: nats://a, creds: \"\"}\n" + svc,
			`1:30: creds is empty (write the path of a file, or leave creds out)`},
		{"creds with local_dir", "nats: {local_dir: /x, creds: user.creds}\n" + svc,
			`1:23: creds applies to url only (the JetStream server gotyledon runs for local_dir is reached inside the bridge's process, with no credentials or TLS): remove it`},
		{"tls with local_dir", "nats:\n  local_dir: /x\n  tls: {ca: ca.pem}\n" + svc,
			`3:3: tls applies to url only (the JetStream server gotyledon runs for local_dir is reached inside the bridge's process, with no credentials or TLS): remove it`},
		{"tls cert without key", "nats: {url: nats://a, tls: {ca: ca.pem, cert: client.crt}}\n" + svc,
			`1:41: tls has cert but no key (a client certificate needs its private key: add key)`},
		{"tls key without cert", "nats: {url: nats://a, tls: {key: client.key}}\n" + svc,
			`1:29: tls has key but no cert (add cert, the client certificate the key belongs to)`},
		{"tls ca missing", "nats: {url: nats://a, tls: {ca: /no/such/ca.pem}}\n" + svc,
			`1:33: tls.ca file "/no/such/ca.pem" does not exist (a relative path is taken from the config file's directory)`},
		{"tls unknown key", "nats: {url: nats://a, tls: {crt: client.crt}}\n" + svc,
			`1:29: unknown key "crt" in nats.tls (did you mean "cert"? known keys: ca, cert, key)`},
		{"tls not a mapping", "nats: {url: nats://a, tls: true}\n" + svc,
			`1:28: tls must be a mapping of ca, cert and key, each a file (e.g. "{ca: /etc/nats/ca.pem}") (got true)`},

		// Paths.
		{"local_dir with tilde", "nats: {local_dir: ~/js}\n" + svc,
			`1:19: local_dir "~/js" starts with "~" (gotyledon does not expand "~"; write the full path)`},
		{"local_dir empty", "nats: {local_dir: \"\"}\n" + svc,
			`1:19: local_dir is empty (write the path of a directory for the JetStream server's files)`},
		{"local_dir a file", "nats: {local_dir: ca.pem}\n" + svc,
			`1:19: local_dir "DIR/ca.pem" is a file (give a directory, or a path where one may be created)`},
		{"bridge with a NUL byte", "nats: {url: nats://a, bridge: \"a\\0b\"}\n" + svc,
			`1:31: bridge contains a NUL byte (a path cannot hold "\0")`},
		{"bridge empty", "nats: {url: nats://a, bridge: \"\"}\n" + svc,
			`1:31: bridge is empty (write the path of gotyledon-jetstream, or leave bridge out to find it next to gotyledon or in $PATH)`},

		// Queues and nats: together.
		{"replicas above 1 with local_dir", "nats: {local_dir: /x}\nqueues:\n  jobs: {store: jetstream, replicas: 3}\n" + svc,
			`3:38: queue "jobs" has replicas 3, but the JetStream server gotyledon runs for local_dir is a single node, which keeps one copy (use replicas: 1, or url: with a cluster of NATS servers)`},
		{"replicas above 1 before local_dir", "queues:\n  jobs:\n    store: jetstream\n    replicas: 2\nnats:\n  local_dir: /x\n" + svc,
			`4:15: queue "jobs" has replicas 2, but the JetStream server gotyledon runs for local_dir is a single node, which keeps one copy (use replicas: 1, or url: with a cluster of NATS servers)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir, file := natsDir(t)
			cfg, err := Parse(file, []byte(tt.src), nil)
			if cfg != nil {
				t.Errorf("Parse returned a config with its error")
			}
			var list ErrorList
			want := file + ":" + strings.ReplaceAll(tt.want, "DIR", dir)
			if !errors.As(err, &list) || err.Error() != want {
				t.Errorf("got\n%v\nwant\n%s", err, want)
			}
		})
	}
}

// TestParseNATSReportsAllErrors checks that the errors of the queues and of
// the nats: section are all reported, in line order.
func TestParseNATSReportsAllErrors(t *testing.T) {
	t.Parallel()
	src := `queues:
  a: {store: jetstream, replicas: 2}
  b: {ack_wait: 1m}
nats:
  local_dir: /var/lib/js
  creds: /no/such.creds
  sync: often
services:
  web: {command: [a]}
`
	_, err := Parse("g.yaml", []byte(src), nil)
	want := strings.Join([]string{
		`g.yaml:2:35: queue "a" has replicas 2, but the JetStream server gotyledon runs for local_dir is a single node, which keeps one copy (use replicas: 1, or url: with a cluster of NATS servers)`,
		`g.yaml:3:7: ack_wait applies to "store: jetstream" queues only (this queue's store is memory: add store: jetstream, or remove ack_wait)`,
		`g.yaml:6:3: creds applies to url only (the JetStream server gotyledon runs for local_dir is reached inside the bridge's process, with no credentials or TLS): remove it`,
		`g.yaml:6:10: creds file "/no/such.creds" does not exist (a relative path is taken from the config file's directory)`,
		`g.yaml:7:9: sync must be "always" (every item written to disk before it is acknowledged) or a duration like "1s" (how often the server writes to disk) (got "often")`,
	}, "\n")
	if err == nil || err.Error() != want {
		t.Errorf("got\n%v\nwant\n%s", err, want)
	}
}

// TestDeclaredJetStreamQueues checks jetstream queues declared in Go under
// a file that has the nats: section, and the errors a declaration and a
// file make together.
func TestDeclaredJetStreamQueues(t *testing.T) {
	t.Parallel()
	declare := func() *Declaration {
		var d Declaration
		d.Service("web", web)
		d.Queue("jobs", QueueStore(StoreJetStream), AckWait(10*time.Second), Replicas(3), Pack(64), Capacity(50))
		d.Queue("mem", Capacity(7))
		return &d
	}
	const nats = "nats:\n  url: [nats://a:4222, nats://b:4222, nats://c:4222]\n"

	cfg, err := ParseOver(declare(), "c.yaml", []byte(nats), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []*Queue{
		{Name: "jobs", Capacity: 50, Store: StoreJetStream, AckWait: 10 * time.Second, Replicas: 3, Pack: 64, Pos: Position{Field: "queues.jobs"}},
		{Name: "mem", Capacity: 7, Store: StoreMemory, Pos: Position{Field: "queues.mem"}},
	}
	if !reflect.DeepEqual(cfg.Queues, want) || len(cfg.JetStreamQueues()) != 1 || cfg.JetStreamQueues()[0] != cfg.Queues[0] {
		t.Errorf("queues\n%s\nwant\n%s", dump(&Config{Queues: cfg.Queues}), dump(&Config{Queues: want}))
	}

	// The file changes the stores: a declared memory queue becomes a
	// jetstream one with the defaults; a declared jetstream one becomes a
	// memory one, without its ack_wait, replicas and pack.
	cfg, err = ParseOver(declare(), "c.yaml", []byte(nats+"queues:\n  mem: {store: jetstream}\n  jobs: {store: memory}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	want = []*Queue{
		{Name: "jobs", Capacity: 50, Store: StoreMemory, Pos: Position{File: "c.yaml", Line: 5, Col: 3}},
		{Name: "mem", Capacity: 7, Store: StoreJetStream, AckWait: DefaultAckWait, Replicas: 1, Pack: 1, Pos: Position{File: "c.yaml", Line: 4, Col: 3}},
	}
	if !reflect.DeepEqual(cfg.Queues, want) {
		t.Errorf("queues\n%s\nwant\n%s", dump(&Config{Queues: cfg.Queues}), dump(&Config{Queues: want}))
	}

	const needs = "store jetstream needs a top-level nats: section: url: for NATS servers, or local_dir: for a JetStream server gotyledon runs"
	for _, tc := range []struct{ name, src, want string }{
		{"a declared jetstream queue, a file without nats", "shutdown_timeout: 5s\n",
			`queues.jobs.store (declared in Go): ` + needs},
		{"a declared jetstream queue the file names, without nats", "queues:\n  jobs: {capacity: 5}\n",
			`queues.jobs.store (declared in Go): ` + needs},
		{"a declared queue the file makes jetstream, without nats", "queues:\n  mem: {store: jetstream}\n",
			`queues.jobs.store (declared in Go): ` + needs + "\n" + `c.yaml:2:16: ` + needs},
		{"declared replicas 3, the file's local_dir", "nats:\n  local_dir: /var/lib/js\n",
			`c.yaml:2:14: queue "jobs" has replicas 3, but the JetStream server gotyledon runs for local_dir is a single node, which keeps one copy (use replicas: 1, or url: with a cluster of NATS servers)`},
		{"declared store, the file's ack_wait on a memory queue", nats + "queues:\n  mem: {ack_wait: 1m}\n",
			`c.yaml:4:9: ack_wait applies to "store: jetstream" queues only (this queue's store is memory: add store: jetstream, or remove ack_wait)`},
		{"declared store, the file's pack on a memory queue", nats + "queues:\n  mem: {pack: 8}\n",
			`c.yaml:4:9: pack applies to "store: jetstream" queues only (this queue's store is memory: add store: jetstream, or remove pack)`},
		{"declared store, the file's pack out of range", nats + "queues:\n  jobs: {pack: 2000}\n",
			`c.yaml:4:16: pack must be a whole number from 1 to 1024 (got 2000)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseOver(declare(), "c.yaml", []byte(tc.src), nil)
			var list ErrorList
			if !errors.As(err, &list) {
				t.Fatalf("error is %T, not an ErrorList: %v", err, err)
			}
			if err.Error() != tc.want {
				t.Errorf("got\n%v\nwant\n%s", err, tc.want)
			}
			if got := strings.Join(errorStrings(list), "\n"); got != tc.want {
				t.Errorf("the list is not in Error()'s order:\n%s", got)
			}
		})
	}

	// Without a file, a jetstream queue cannot be resolved.
	_, err = declare().Resolve(nil)
	if want := `queues.jobs.store (declared in Go): ` + needs; err == nil || err.Error() != want {
		t.Errorf("Resolve: got\n%v\nwant\n%s", err, want)
	}
}
