package jsstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/gotyledon/gotyledon/ipc"
)

// BridgeConfig says what a bridge serves and where JetStream is: the
// servers of URLs, or, with LocalDir set, a JetStream server the bridge
// runs in its own process.
type BridgeConfig struct {
	// Socket is the Unix socket the bridge serves PROTOCOL.md on.
	Socket string
	// StatusSocket, if set, is a Unix socket where GET /queues answers
	// what JetStream says of each queue (a JSON array of
	// ipc.StoreQueueStatus), for the manager's status and metrics.
	StatusSocket string
	// Queues are the queues served, each its own stream.
	Queues []Config
	// MaxItem is the largest item, in bytes (<= 0: ipc.DefaultMaxItem).
	MaxItem int

	// URLs are the NATS servers to connect to (any of them; the client
	// learns the rest of a cluster from the one it reaches).
	URLs []string
	// Creds is a NATS credentials file (a user JWT and its nkey seed),
	// NKey an nkey seed file; at most one of them.
	Creds, NKey string
	// TLSCA verifies the servers' certificates (else the system's roots);
	// TLSCert and TLSKey are a client certificate, if the servers ask for
	// one.
	TLSCA, TLSCert, TLSKey string

	// LocalDir, when set, runs a JetStream server inside the bridge's
	// process with its files under LocalDir, reachable only from that
	// process (no port), instead of connecting to URLs.
	LocalDir string
	// SyncAlways makes the local server write every stored item to disk
	// (fsync) before it acknowledges it; otherwise it syncs every
	// SyncInterval (<= 0: the server's default, 2 minutes).
	SyncAlways   bool
	SyncInterval time.Duration

	// Logger receives the bridge's events. nil: no logs.
	Logger *zap.Logger
}

// RunBridge serves cfg's queues from JetStream on cfg.Socket until ctx
// ends: it starts the local server if asked, connects, opens every
// queue's stream and consumer, listens, and then says READY=1 to
// $NOTIFY_SOCKET if there is one. When ctx ends it answers waiting
// requests SHUTTING_DOWN, gives the items in flight back (they are
// delivered again at once), and stops. A bridge that dies instead leaves
// its items in flight to come back after their AckWait.
func RunBridge(ctx context.Context, cfg BridgeConfig) error {
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	var closing atomic.Bool // our own Close is no lost connection
	opts := []nats.Option{
		nats.Name("gotyledon-jetstream"),
		nats.MaxReconnects(-1),
		// NATS may start after the bridge (another unit, another host):
		// the first connect is retried as a lost connection is.
		nats.RetryOnFailedConnect(true),
		// Items wait for it: a server back up is taken at once (the
		// default waits 2 s between tries).
		nats.ReconnectWait(250 * time.Millisecond),
		// A put made while the connection is down fails at once and is
		// tried again until its timeout, rather than sitting in a buffer
		// that the connection, once back, would send after the put was
		// answered TIMEOUT: the client was told those items were not
		// stored.
		nats.ReconnectBufSize(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if closing.Load() {
				return
			}
			log.Warn("NATS connection lost; puts and gets wait until it is back", zap.Error(err))
			notifyStatus(log, ipc.StatusStoreLost)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("NATS connection back", zap.String("server", nc.ConnectedUrlRedacted()))
			notifyStatus(log, ipc.StatusStoreConnected)
		}),
	}
	var url string
	if cfg.LocalDir != "" {
		s, err := startLocal(cfg)
		if err != nil {
			return err
		}
		defer s.WaitForShutdown()
		defer s.Shutdown()
		opts = append(opts, nats.InProcessServer(s))
		log.Info("local JetStream server started", zap.String("dir", cfg.LocalDir), zap.Bool("sync_always", cfg.SyncAlways))
	} else {
		if len(cfg.URLs) == 0 {
			return errors.New("jetstream bridge: no NATS server: give URLs or LocalDir")
		}
		for i, u := range cfg.URLs {
			if i > 0 {
				url += ","
			}
			url += u
		}
		auth, err := authOptions(cfg)
		if err != nil {
			return err
		}
		opts = append(opts, auth...)
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return fmt.Errorf("jetstream bridge: connect to NATS %s: %w", url, err)
	}
	defer func() {
		closing.Store(true)
		nc.Close()
	}()
	stores := make([]*Store, 0, len(cfg.Queues))
	names := make([]string, 0, len(cfg.Queues))
	for _, qc := range cfg.Queues {
		st, err := openRetrying(ctx, nc, qc, log)
		if err != nil {
			return fmt.Errorf("jetstream bridge: %w", err)
		}
		stores = append(stores, st)
		names = append(names, qc.Queue)
	}
	queues := NewQueues(log, stores...)
	if limit := nc.MaxPayload(); limit > 0 && int64(maxItemOf(cfg))+headerRoom > limit {
		log.Warn("the NATS servers take smaller messages than the queue's max item: longer items are refused TOO_LARGE",
			zap.Int64("max_payload", limit), zap.Int("max_item", maxItemOf(cfg)))
	}
	srv, err := ipc.NewStoreServer(ipc.StoreServerOptions{
		Store:   queues,
		Queues:  names,
		MaxItem: cfg.MaxItem,
		// Above every id an earlier bridge handed out: a broker connection
		// that outlives a bridge may still ACK those, and must not hit
		// this one's items (a bridge hands out far less than an id a
		// nanosecond).
		FirstDelivery: ipc.StoreDeliveryBase + uint64(time.Now().UnixNano()),
		Logger:        log,
	})
	if err != nil {
		return fmt.Errorf("jetstream bridge: %w", err)
	}
	_ = os.Remove(cfg.Socket) // ours from a bridge that died: the manager gave us the path
	l, err := net.Listen("unix", cfg.Socket)
	if err != nil {
		return fmt.Errorf("jetstream bridge: listen on %s: %w", cfg.Socket, err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	if cfg.StatusSocket != "" {
		stop, err := serveStatus(cfg.StatusSocket, nc, stores)
		if err != nil {
			srv.Close()
			return fmt.Errorf("jetstream bridge: %w", err)
		}
		defer stop()
	}
	if _, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
		log.Warn("could not say READY=1", zap.Error(err))
	}
	log.Info("JetStream queues served", zap.String("socket", cfg.Socket), zap.Strings("queues", names))
	select {
	case <-ctx.Done():
	case err = <-served:
	}
	srv.Close()
	// What Close gave back (NACKs) must be taken by the server before the
	// connection closes, and a local server shuts down.
	confirmCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	if cerr := queues.Drain(confirmCtx); cerr != nil {
		log.Warn("NATS did not confirm the items given back; they come back after their ack wait", zap.Error(cerr))
	}
	cancel()
	if ferr := nc.FlushTimeout(5 * time.Second); ferr != nil {
		log.Warn("NATS did not confirm the last acknowledgements", zap.Error(ferr))
	}
	if err != nil {
		return fmt.Errorf("jetstream bridge: %w", err)
	}
	return nil
}

// notifyStatus sends STATUS=text to $NOTIFY_SOCKET, if there is one: the
// manager shows it, and its own STATUS= follows.
func notifyStatus(log *zap.Logger, text string) {
	if _, err := daemon.SdNotify(false, "STATUS="+text); err != nil {
		log.Warn("could not send STATUS=", zap.Error(err))
	}
}

// openRetrying opens a queue, trying again while NATS cannot be reached
// (not up yet, or its cluster has no JetStream leader yet), until ctx
// ends.
func openRetrying(ctx context.Context, nc *nats.Conn, qc Config, log *zap.Logger) (*Store, error) {
	pause := 50 * time.Millisecond
	for try := 0; ; try++ {
		// Short tries: a cluster without a JetStream leader yet leaves a
		// request unanswered, and the next try may find one.
		openCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		qc.Logger = log
		st, err := Open(openCtx, nc, qc)
		cancel()
		if err == nil {
			return st, nil
		}
		if try == 0 || try%20 == 0 {
			log.Warn("cannot open the queue's stream yet; trying again", zap.String("queue", qc.Queue), zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("open queue %s: %w (last: %w)", qc.Queue, ctx.Err(), err)
		case <-time.After(pause):
		}
		pause = min(2*pause, 2*time.Second)
	}
}

// statusAnswerTimeout bounds the bridge's questions to JetStream for one
// status request.
const statusAnswerTimeout = 700 * time.Millisecond

// serveStatus answers GET /queues on socket until stop.
func serveStatus(socket string, nc *nats.Conn, stores []*Store) (stop func(), err error) {
	_ = os.Remove(socket) // a dead bridge's
	l, err := net.Listen("unix", socket)
	if err != nil {
		return nil, fmt.Errorf("status socket %s: %w", socket, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /queues", func(w http.ResponseWriter, r *http.Request) {
		// Well inside the manager's wait (ipc.WithStoreStatus), so that
		// it gets an answer that says what is wrong.
		ctx, cancel := context.WithTimeout(r.Context(), statusAnswerTimeout)
		defer cancel()
		status := nc.Status()
		conn := strings.ToLower(status.String())
		out := make([]ipc.StoreQueueStatus, len(stores))
		var wg sync.WaitGroup
		for i, s := range stores {
			out[i] = ipc.StoreQueueStatus{Queue: s.cfg.Queue, Connection: conn}
			if status != nats.CONNECTED {
				out[i].Error = "not connected to NATS"
				continue
			}
			wg.Go(func() {
				q := &out[i]
				if st, err := s.Stats(ctx); err != nil {
					q.Error = err.Error()
				} else {
					q.Waiting, q.InFlight, q.Redelivered, q.Getters = st.Waiting, st.InFlight, st.Redelivered, st.Getters
					q.Put, q.Delivered, q.Acked = st.Put, st.Delivered, st.Acked
				}
			})
		}
		wg.Wait()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
	})
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hs.Serve(l) }()
	return func() { _ = hs.Close() }, nil
}

func maxItemOf(cfg BridgeConfig) int {
	if cfg.MaxItem > 0 {
		return cfg.MaxItem
	}
	return ipc.DefaultMaxItem
}

// startLocal runs the in-process JetStream server of cfg.LocalDir.
func startLocal(cfg BridgeConfig) (*server.Server, error) {
	s, err := server.NewServer(&server.Options{
		ServerName:   "gotyledon-local",
		JetStream:    true,
		StoreDir:     cfg.LocalDir,
		DontListen:   true,
		NoSigs:       true,
		NoLog:        true,
		SyncAlways:   cfg.SyncAlways,
		SyncInterval: cfg.SyncInterval,
		// Room for the largest item and its headers (the default is 1 MiB).
		MaxPayload: int32(maxItemOf(cfg) + headerRoom),
	})
	if err != nil {
		return nil, fmt.Errorf("jetstream bridge: local server in %s: %w", cfg.LocalDir, err)
	}
	s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("jetstream bridge: local server in %s not ready within 30s", cfg.LocalDir)
	}
	return s, nil
}

// authOptions are the connection's credentials and TLS.
func authOptions(cfg BridgeConfig) ([]nats.Option, error) {
	var opts []nats.Option
	switch {
	case cfg.Creds != "" && cfg.NKey != "":
		return nil, errors.New("jetstream bridge: give a creds file or an nkey file, not both")
	case cfg.Creds != "":
		opts = append(opts, nats.UserCredentials(cfg.Creds))
	case cfg.NKey != "":
		o, err := nats.NkeyOptionFromSeed(cfg.NKey)
		if err != nil {
			return nil, fmt.Errorf("jetstream bridge: nkey file %s: %w", cfg.NKey, err)
		}
		opts = append(opts, o)
	}
	if cfg.TLSCA != "" {
		opts = append(opts, nats.RootCAs(cfg.TLSCA))
	}
	if (cfg.TLSCert == "") != (cfg.TLSKey == "") {
		return nil, errors.New("jetstream bridge: a TLS client certificate needs both its certificate and its key")
	}
	if cfg.TLSCert != "" {
		opts = append(opts, nats.ClientCert(cfg.TLSCert, cfg.TLSKey))
	}
	return opts, nil
}
