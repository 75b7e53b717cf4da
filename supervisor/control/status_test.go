package control

import (
	"strings"
	"testing"
	"time"

	"github.com/gotyledon/gotyledon/ipc"
	"github.com/gotyledon/gotyledon/supervisor"
)

func TestStatusSummary(t *testing.T) {
	t.Parallel()
	services := []supervisor.ServiceStatus{
		{Name: "printer", Desired: 5, Configured: 5, Running: 5},
		{Name: "producer", Desired: 2, Configured: 1, Running: 1, Backoff: 1},
	}
	queues := []ipc.QueueStats{{Name: "jobs", Depth: 12, InFlight: 2, Capacity: 100}, {Name: "mail"}}
	running := func(ready ...bool) []supervisor.WorkerStatus {
		var ws []supervisor.WorkerStatus
		for i, r := range ready {
			ws = append(ws, supervisor.WorkerStatus{ID: i, State: "running", Ready: r})
		}
		return ws
	}
	for _, tc := range []struct {
		name   string
		st     supervisor.Status
		queues []ipc.QueueStats
		want   string
	}{
		{"services and queues", supervisor.Status{Ready: true, Services: services}, queues,
			"printer 5/5, producer 1/2 (1 in backoff); jobs: 12 queued, 2 in flight, mail: 0 queued, 0 in flight"},
		{"a queue kept in a store", supervisor.Status{Ready: true, Services: services[:1]}, []ipc.QueueStats{
			{Name: "jobs", Depth: 12, InFlight: 2, Forwarded: true, Store: "jetstream", StoreState: "connected"},
			{Name: "mail", Forwarded: true, Store: "jetstream", StoreState: "unavailable: connection refused"},
		}, "printer 5/5; jobs: 12 queued, 2 in flight, mail: jetstream unavailable: connection refused"},
		{"services only", supervisor.Status{Ready: true, Services: services[:1]}, nil, "printer 5/5"},
		{"one-shots", supervisor.Status{Ready: true, Services: []supervisor.ServiceStatus{
			{Name: "migrate", Desired: 1, Completed: 1, Workers: []supervisor.WorkerStatus{{ID: 0, State: "completed", LastExit: "exit code 0"}}},
			{Name: "check", Desired: 2, Completed: 2, Workers: []supervisor.WorkerStatus{
				{ID: 0, State: "completed", LastExit: "exit code 0"}, {ID: 1, State: "completed", LastExit: "exit code 3"}}},
		}}, nil, "migrate 0/1 (1 completed), check 0/2 (2 completed, 1 failed)"},
		{"starting", supervisor.Status{Services: services[:1]}, nil, "starting: printer 5/5"},
		{"stopping", supervisor.Status{Ready: true, Stopping: true, Services: services}, queues[:1],
			"stopping: printer 5/5, producer 1/2 (1 in backoff); jobs: 12 queued, 2 in flight"},
		{"stopping before ready", supervisor.Status{Stopping: true, Services: services[:1]}, nil, "stopping: printer 5/5"},
		{"one not ready", supervisor.Status{Ready: true, Services: []supervisor.ServiceStatus{
			{Name: "printer", Desired: 3, Running: 3, Workers: running(true, false, true)},
		}}, nil, "printer 3/3 (not ready: worker 1)"},
		{"not ready, with what it said", supervisor.Status{Services: []supervisor.ServiceStatus{
			{Name: "cache", Desired: 2, Running: 2, Workers: []supervisor.WorkerStatus{
				{ID: 0, State: "running", StatusText: "loading 40%"},
				{ID: 1, State: "running", StatusText: strings.Repeat("x", 50)},
			}},
		}}, nil, `starting: cache 2/2 (not ready: workers 0 (loading 40%), 1 (` + strings.Repeat("x", 40) + `...))`},
		{"several not ready, and backoff", supervisor.Status{Services: []supervisor.ServiceStatus{
			{Name: "printer", Desired: 8, Running: 7, Backoff: 1, Workers: append(running(false, true, false, false, false, false, false),
				supervisor.WorkerStatus{ID: 7, State: "backoff"})},
		}}, nil, "starting: printer 7/8 (not ready: workers 0, 2, 3, 4 and 2 more; 1 in backoff)"},
		{"a starting worker is not ready; a surplus one stopping is not counted", supervisor.Status{Ready: true, Services: []supervisor.ServiceStatus{
			{Name: "printer", Desired: 1, Running: 0, Workers: []supervisor.WorkerStatus{{ID: 0, State: "starting"}, {ID: 1, State: "stopping"}}},
		}}, nil, "printer 0/1 (not ready: worker 0)"},
		{"last reload applied", supervisor.Status{Ready: true, Services: services[:1], LastReload: &supervisor.ReloadResult{Source: supervisor.ReloadBySignal}}, nil,
			"printer 5/5"},
		{"last reload failed", supervisor.Status{
			Ready:      true,
			Services:   services,
			LastReload: &supervisor.ReloadResult{Source: supervisor.ReloadByFile, Error: "/etc/g.yaml:4:14: workers must be a number\n/etc/g.yaml:9:3: unknown field"},
		}, queues[1:],
			"printer 5/5, producer 1/2 (1 in backoff); mail: 0 queued, 0 in flight; last reload failed: /etc/g.yaml:4:14: workers must be a number"},
		{"stopping after a failed reload", supervisor.Status{
			Ready: true, Stopping: true, Services: services[:1], LastReload: &supervisor.ReloadResult{Error: "broker: queue jobs holds 3 items"},
		}, nil, "stopping: printer 5/5; last reload failed: broker: queue jobs holds 3 items"},
	} {
		doc := NewStatus(tc.st, tc.queues, nil, 1, time.Now())
		if got := doc.Summary(); got != tc.want {
			t.Errorf("%s:\n got %q\nwant %q", tc.name, got, tc.want)
		}
	}
}
