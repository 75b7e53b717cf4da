// Command gotyledon-jetstream serves a manager's JetStream queues: the
// manager's broker hands it the requests on queues whose store is
// jetstream, over the queue protocol (ipc/PROTOCOL.md) on a Unix socket,
// and it keeps their items in NATS JetStream, on the servers given or on
// a JetStream server it runs in its own process.
//
// It is a program of its own so that NATS is not linked into gotyledon,
// which every command and every Go worker starts. The manager runs it;
// an operator runs it only to try it:
//
//	gotyledon-jetstream --socket /run/gotyledon/jetstream.sock \
//	    --local-dir /var/lib/gotyledon/jetstream --queue name=jobs,capacity=10000
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/alecthomas/kong"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/gotyledon/gotyledon/ipc/jsstore"
)

type cli struct {
	Socket   string   `required:"" help:"Unix socket to serve the queue protocol on."`
	Status   string   `name:"status-socket" help:"Unix socket where GET /queues answers each queue's figures (JSON)."`
	Queue    []string `required:"" sep:"none" help:"A queue: name=NAME[,capacity=N][,ack-wait=DURATION][,replicas=N][,pack=N]. Repeat for more."`
	MaxItem  int      `default:"0" help:"Largest item in bytes (0: the protocol's default)."`
	URL      []string `help:"A NATS server (nats://host:port); repeat or separate with commas for a cluster."`
	Creds    string   `type:"existingfile" help:"NATS credentials file."`
	NKey     string   `name:"nkey" type:"existingfile" help:"NATS nkey seed file."`
	TLSCA    string   `name:"tls-ca" type:"existingfile" help:"CA certificates that verify the NATS servers."`
	TLSCert  string   `name:"tls-cert" type:"existingfile" help:"Client certificate for NATS."`
	TLSKey   string   `name:"tls-key" type:"existingfile" help:"Client certificate's key."`
	LocalDir string   `help:"Run a JetStream server in this process, its files in this directory, instead of connecting to --url."`
	Sync     string   `default:"" help:"The local server's disk sync: 'always' (every item before it is acknowledged) or an interval (default 2m)."`
	LogLevel string   `default:"info" enum:"debug,info,warn,error" help:"Least level logged."`
}

func main() {
	var c cli
	kong.Parse(&c, kong.Name("gotyledon-jetstream"), kong.Description("Serve gotyledon queues from NATS JetStream."))
	cfg, err := c.bridgeConfig()
	if err != nil {
		fmt.Fprintln(os.Stderr, "gotyledon-jetstream:", err)
		os.Exit(2)
	}
	level, _ := zapcore.ParseLevel(c.LogLevel)
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(level)
	zc.Sampling = nil
	log, err := zc.Build()
	if err != nil {
		fmt.Fprintln(os.Stderr, "gotyledon-jetstream: logger:", err)
		os.Exit(2)
	}
	cfg.Logger = log
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := jsstore.RunBridge(ctx, cfg); err != nil {
		log.Error("gotyledon-jetstream stopped", zap.Error(err))
		_ = log.Sync()
		os.Exit(1)
	}
	_ = log.Sync()
}

func (c *cli) bridgeConfig() (jsstore.BridgeConfig, error) {
	cfg := jsstore.BridgeConfig{
		Socket: c.Socket, StatusSocket: c.Status, MaxItem: c.MaxItem, Creds: c.Creds, NKey: c.NKey,
		TLSCA: c.TLSCA, TLSCert: c.TLSCert, TLSKey: c.TLSKey, LocalDir: c.LocalDir,
	}
	for _, u := range c.URL {
		cfg.URLs = append(cfg.URLs, strings.Split(u, ",")...)
	}
	if (len(cfg.URLs) == 0) == (cfg.LocalDir == "") {
		return cfg, fmt.Errorf("give --url or --local-dir (one of them)")
	}
	switch c.Sync {
	case "":
	case "always":
		cfg.SyncAlways = true
	default:
		d, err := time.ParseDuration(c.Sync)
		if err != nil || d <= 0 {
			return cfg, fmt.Errorf("--sync %q: want 'always' or a positive duration like 1s", c.Sync)
		}
		cfg.SyncInterval = d
	}
	for _, spec := range c.Queue {
		q, err := parseQueue(spec)
		if err != nil {
			return cfg, err
		}
		cfg.Queues = append(cfg.Queues, q)
	}
	return cfg, nil
}

// parseQueue reads name=jobs,capacity=10000,ack-wait=30s,replicas=3,pack=100.
func parseQueue(spec string) (jsstore.Config, error) {
	var q jsstore.Config
	for _, kv := range strings.Split(spec, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return q, fmt.Errorf("--queue %q: %q is not key=value", spec, kv)
		}
		var err error
		switch k {
		case "name":
			q.Queue = v
		case "capacity":
			q.Capacity, err = strconv.Atoi(v)
		case "ack-wait":
			q.AckWait, err = time.ParseDuration(v)
		case "replicas":
			q.Replicas, err = strconv.Atoi(v)
		case "pack":
			q.Pack, err = strconv.Atoi(v)
		default:
			return q, fmt.Errorf("--queue %q: unknown key %q (name, capacity, ack-wait, replicas, pack)", spec, k)
		}
		if err != nil {
			return q, fmt.Errorf("--queue %q: %s: %w", spec, k, err)
		}
	}
	if q.Queue == "" {
		return q, fmt.Errorf("--queue %q: no name=", spec)
	}
	return q, nil
}
