package metrics

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"
)

// Server is the actor that serves GET /metrics, and nothing else, on a
// TCP listener (the configuration's control.metrics_listen), for a
// Prometheus that cannot reach the control socket. Run is its execute
// function and Interrupt its interrupt.
type Server struct {
	l   net.Listener
	srv *http.Server

	mu          sync.Mutex
	running     bool // Run took the listener
	interrupted bool
}

// NewServer returns a Server of metrics (a NewHandler) on l. Its timeouts
// bound what a slow or idle client can hold: anyone who reaches the
// address can connect.
func NewServer(l net.Listener, metrics http.Handler) *Server {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics)
	return &Server{l: l, srv: &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    8 << 10,
	}}
}

// Run serves until Interrupt, then returns nil; it returns an error if the
// listener fails, or if Run was called before.
func (s *Server) Run() error {
	s.mu.Lock()
	if s.running || s.interrupted {
		s.mu.Unlock()
		if s.interrupted {
			return nil
		}
		return errors.New("metrics: Run called twice")
	}
	s.running = true
	s.mu.Unlock()
	if err := s.srv.Serve(s.l); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics: %w", err)
	}
	return nil
}

// Interrupt closes the listener and every connection. Safe to call more
// than once, and before Run (which then returns nil at once): the listener
// is closed either way.
func (s *Server) Interrupt(error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.interrupted = true
	s.srv.Close()
	if !s.running {
		s.l.Close()
	}
}
