package manager

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gotyledon/gotyledon/config"
	"github.com/gotyledon/gotyledon/ipc"
	"github.com/gotyledon/gotyledon/supervisor/control"
)

// This test binary, run with envScheduleConsumer set to a Unix socket, is
// a worker: it takes items from the queue "jobs", acks each and writes
// "got ITEM" to that socket.
const envScheduleConsumer = "SCHEDULE_TEST_CONSUMER"

func TestMain(m *testing.M) {
	if sock := os.Getenv(envScheduleConsumer); sock != "" {
		os.Exit(scheduleConsumer(sock))
	}
	os.Exit(m.Run())
}

func scheduleConsumer(sock string) int {
	report, err := net.Dial("unix", sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx := context.Background()
	c, err := ipc.DialEnv(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for {
		d, err := c.Get(ctx, "jobs")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if err := c.Ack(ctx, d); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Fprintf(report, "got %s\n", d.Body)
	}
}

// A schedule of a running manager puts its item through the broker, and
// a worker gets it from the queue. @every 1s fires a second after the
// start, on the real clock.
func TestScheduledItemReachesAWorker(t *testing.T) {
	dir := t.TempDir()
	reports, err := net.Listen("unix", filepath.Join(dir, "reports.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer reports.Close()
	var d config.Declaration
	d.Service("consumer", config.Command(os.Args[0]), config.Env(map[string]string{envScheduleConsumer: reports.Addr().String()}))
	d.Queue("jobs", config.Scheduled("@every 1s", "tick", "UTC"))
	d.Broker(config.Socket(filepath.Join(dir, "queue.sock")))
	d.Control(config.Socket(filepath.Join(dir, "control.sock")))
	m, err := New(Options{Declaration: &d})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := reports.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	var conn net.Conn
	select {
	case conn = <-accepted:
	case <-time.After(20 * time.Second):
		t.Fatal("the worker did not connect")
	}
	defer conn.Close()
	// Two items: the second shows the schedule goes on after its first.
	lines := bufio.NewScanner(conn)
	for i := range 2 {
		if err := conn.SetReadDeadline(time.Now().Add(20 * time.Second)); err != nil {
			t.Fatal(err)
		}
		if !lines.Scan() {
			t.Fatalf("item %d: the worker reported nothing: %v", i, lines.Err())
		}
		if got := lines.Text(); got != "got tick" {
			t.Fatalf("item %d: the worker reported %q, want \"got tick\"", i, got)
		}
	}
	// The status document counts the puts and shows the next time, in
	// the schedule's zone. The second put may be counted only after the
	// worker has its item: one at least.
	st, err := control.NewClient(filepath.Join(dir, "control.sock")).Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Queues) != 1 || st.Queues[0].Schedule == nil {
		t.Fatalf("status queues %+v, want jobs with its schedule", st.Queues)
	}
	sc := st.Queues[0].Schedule
	if sc.PutTotal < 1 || sc.FailedTotal != 0 || len(sc.Schedules) != 1 || sc.Schedules[0].Cron != "@every 1s" || sc.Schedules[0].TimeZone != "UTC" ||
		sc.Schedules[0].NextAt == nil || !strings.HasSuffix(sc.Schedules[0].NextAt.Format(time.RFC3339), "Z") {
		t.Errorf("the queue's schedule in the status %+v, want a put or more and the next time in UTC", sc)
	}
}
