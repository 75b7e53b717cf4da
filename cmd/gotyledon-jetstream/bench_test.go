package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// BenchmarkBridgeStart times what the manager waits for before a
// JetStream queue serves, per way of running the server on one host:
//
//   - local: gotyledon-jetstream --local-dir, the server in the bridge's
//     own process, from exec to its READY=1;
//   - debian: Debian's nats-server as a process of its own (as a service of
//     the manager would be), then, once it takes connections, the bridge
//     with --url, from the server's exec to the bridge's READY=1. Skipped
//     without /usr/sbin/nats-server.
//
// Each start is on the files the first one made, as at a manager's
// restart. The bridge is this test binary (main), as in the other tests.
func BenchmarkBridgeStart(b *testing.B) {
	b.Run("local", func(b *testing.B) {
		dir := shortDir(b)
		for range b.N {
			br := startBridgeB(b, dir, "--local-dir", filepath.Join(dir, "js"), "--queue", "name=jobs")
			b.StopTimer()
			br.stopB(b)
			b.StartTimer()
		}
	})
	b.Run("debian", func(b *testing.B) {
		const server = "/usr/sbin/nats-server"
		if _, err := os.Stat(server); err != nil {
			b.Skip("no Debian nats-server")
		}
		dir := shortDir(b)
		port := freePort(b)
		for range b.N {
			ns := exec.Command(server, "-js", "-sd", filepath.Join(dir, "js"), "-a", "127.0.0.1", "-p", strconv.Itoa(port))
			if err := ns.Start(); err != nil {
				b.Fatal(err)
			}
			// Not left running if the benchmark fails before its stop.
			b.Cleanup(func() { _ = ns.Process.Kill(); _ = ns.Wait() })
			// As a manager would order them: the bridge once the server
			// takes connections.
			for deadline := time.Now().Add(30 * time.Second); ; {
				c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
				if err == nil {
					c.Close()
					break
				}
				if time.Now().After(deadline) {
					b.Fatalf("nats-server not listening within 30s: %v", err)
				}
				time.Sleep(time.Millisecond)
			}
			br := startBridgeB(b, dir, "--url", fmt.Sprintf("nats://127.0.0.1:%d", port), "--queue", "name=jobs")
			b.StopTimer()
			br.stopB(b)
			_ = ns.Process.Signal(syscall.SIGTERM)
			_ = ns.Wait()
			b.StartTimer()
		}
	})
}

func shortDir(b *testing.B) string {
	dir, err := os.MkdirTemp("", "gtyjsb")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func freePort(b testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startBridgeB starts the bridge with args and returns at its READY=1.
func startBridgeB(b *testing.B, dir string, args ...string) *bridge {
	b.Helper()
	notify := filepath.Join(dir, "notify")
	os.Remove(notify)
	nl, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notify, Net: "unixgram"})
	if err != nil {
		b.Fatal(err)
	}
	defer nl.Close()
	br := &bridge{socket: filepath.Join(dir, "bridge.sock"), exited: make(chan struct{})}
	br.cmd = exec.Command(os.Args[0], append([]string{"--socket", br.socket, "--log-level", "error"}, args...)...)
	br.cmd.Env = append(os.Environ(), envRunMain+"=1", "NOTIFY_SOCKET="+notify)
	br.cmd.Stderr = os.Stderr
	if err := br.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	go func() { _ = br.cmd.Wait(); close(br.exited) }()
	nl.SetReadDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 4096)
	for {
		n, err := nl.Read(buf)
		if err != nil {
			_ = br.cmd.Process.Kill()
			b.Fatalf("no READY=1 from the bridge: %v", err)
		}
		if string(buf[:n]) == "READY=1" {
			return br
		}
	}
}

func (br *bridge) stopB(b *testing.B) {
	signalAndWait(b, "bridge", br.cmd, br.exited, syscall.SIGTERM)
}
