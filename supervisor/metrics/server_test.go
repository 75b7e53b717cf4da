package metrics

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// The TCP server answers GET /metrics and nothing else, and Interrupt ends
// Run with nil.
func TestServerServesOnlyMetrics(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metrics := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "gotyledon_ready 1\n") })
	s := NewServer(l, metrics)
	done := make(chan error, 1)
	go func() { done <- s.Run() }()
	base := "http://" + l.Addr().String()
	for _, tc := range []struct {
		method, route string
		code          int
		body          string
	}{
		{"GET", "/metrics", 200, "gotyledon_ready 1\n"},
		{"GET", "/v1/status", 404, ""},
		{"POST", "/v1/reload", 404, ""},
		{"POST", "/metrics", 405, ""},
	} {
		req, _ := http.NewRequest(tc.method, base+tc.route, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.route, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code || (tc.body != "" && string(body) != tc.body) {
			t.Errorf("%s %s: %d %q, want %d %q", tc.method, tc.route, resp.StatusCode, body, tc.code, tc.body)
		}
	}
	s.Interrupt(nil)
	s.Interrupt(nil) // twice is fine
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after Interrupt: %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after Interrupt")
	}
	if _, err := net.Dial("tcp", l.Addr().String()); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("dial after Interrupt: %v, want connection refused", err)
	}
}

// Interrupt before Run closes the listener: the address is free again.
func TestServerInterruptBeforeRunReleasesTheListener(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	s := NewServer(l, http.NotFoundHandler())
	s.Interrupt(nil)
	if err := s.Run(); err != nil {
		t.Errorf("Run after Interrupt: %v, want nil", err)
	}
	again, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("the address is still taken after Interrupt: %v", err)
	}
	again.Close()
}
