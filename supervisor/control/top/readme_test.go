package top

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/charmbracelet/x/ansi"

	"github.com/gotyledon/gotyledon/supervisor/control"
)

// readmeDoc is the seed demo a few minutes in, with a mailer that keeps
// failing and a bad save of the file: the document of supervisor/README.md's
// frame, at now, with CPU times advanced by cpu seconds each.
func readmeDoc(now time.Time, cpu float64) control.Status {
	at := func(ago time.Duration) *time.Time { t := now.Add(-ago); return &t }
	worker := func(id, pid int, up time.Duration, cpuSec float64, mem uint64, restarts int, exit string) control.WorkerStatus {
		started := t0.Add(-up) // the same in both documents: the same process
		w := control.WorkerStatus{ID: id, State: "running", PID: pid, Ready: true, StartedAt: &started, UptimeSeconds: up.Seconds(),
			Restarts: restarts, CPUSeconds: ptr(cpuSec + cpu*float64(id+1)/100), MemoryBytes: ptr(mem), UsageOf: "process"}
		if exit != "" {
			w.LastExit, w.LastExitAt = exit, at(up)
		}
		return w
	}
	history := []float64{0.2, 0.6}
	for range 28 {
		history = append(history, 1)
	}
	return control.Status{
		Schema: 1, PID: 7217, Config: "deploy/seed.yaml", Ready: true, UptimeSeconds: 191 + cpu,
		Services: []control.ServiceStatus{
			{Name: "producer", Desired: 1, Configured: 1, Running: 1, Ready: 1, Workers: []control.WorkerStatus{
				worker(0, 7226, 192*time.Second, 1, 10589184, 0, ""),
			}},
			{Name: "printer", Desired: 3, Configured: 2, Running: 3, Ready: 3, Restarts: 1, Workers: []control.WorkerStatus{
				worker(0, 7336, 189*time.Second, 2, 10800332, 1, "killed by SIGKILL"),
				worker(1, 7228, 192*time.Second, 2, 10464788, 0, ""),
				worker(2, 7408, 52*time.Second, 1, 10401873, 0, ""),
			}},
			{Name: "mailer", Desired: 1, Configured: 1, Backoff: 1, Restarts: 6, Workers: []control.WorkerStatus{
				{ID: 0, State: "backoff", Restarts: 6, Failures: 6, LastExit: "exit code 1", LastExitAt: at(4 * time.Second), RetryAt: at(-12 * time.Second)},
			}},
		},
		Queues: []control.QueueStatus{
			{Name: "jobs", Capacity: 10000, Consumers: 3, PutPerSecond: 1, AckedPerSecond: 1, PutHistory: history, AckedHistory: history, RedeliveredTotal: 1},
			{Name: "mail", Capacity: 10000, Depth: 42, PutHistory: make([]float64, 30), AckedHistory: make([]float64, 30)},
		},
		LastReload: &control.ReloadStatus{At: now.Add(-80 * time.Second), Source: "file",
			Error: `deploy/seed.yaml:14:14: workers must be a whole number from 0 to 10000 (got "two")`},
		Reloads: control.ReloadCounts{OK: 1, Failed: 1},
	}
}

// The frame supervisor/README.md shows is what Frame draws, to the
// character: the docs cannot drift from the view.
func TestREADMEFrameIsDrawn(t *testing.T) {
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(data), "```text frame\n")
	shown, _, ok2 := strings.Cut(after, "```\n")
	if !ok || !ok2 {
		t.Fatal("supervisor/README.md has no ```text frame block")
	}
	c := &clock{t0.Add(-time.Second)}
	m := New(&fakeManager{}, Options{Interval: time.Second, Now: c.now})
	m.Update(statusArrived{doc: readmeDoc(c.t, 0)})
	c.t = t0
	m.Update(statusArrived{doc: readmeDoc(c.t, 1)})
	m.move(2) // producer, its worker, printer
	m.finished(action{kind: scaleAction, service: "printer", workers: 3}, nil)
	drawn := ansi.Strip(m.Frame()) + "\n"
	if drawn != shown {
		t.Errorf("supervisor/README.md's frame is not what Frame draws; it draws:\n%s", drawn)
	}
}
