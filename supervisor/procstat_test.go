package supervisor

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

func TestParseProcStatCPU(t *testing.T) {
	// A command name with a space and a ')' of its own; utime 250 and
	// stime 50 ticks.
	line := []byte("4242 (my worker) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 12345 1000000 200 18446744073709551615\n")
	got, ok := parseProcStatCPU(line)
	if !ok || got != 3*time.Second {
		t.Fatalf("parseProcStatCPU = %v, %v; want 3s, true", got, ok)
	}
	if _, ok := parseProcStatCPU([]byte("4242 (short) S 1 2")); ok {
		t.Fatal("a truncated line parsed")
	}
}

// A process that burns CPU shows it, and its resident set; a process that
// is gone reads as not ok.
func TestReadProcessStats(t *testing.T) {
	spin := exec.Command("/bin/sh", "-c", "while :; do :; done")
	if err := spin.Start(); err != nil {
		t.Fatal(err)
	}
	pid := spin.Process.Pid
	deadline := time.Now().Add(time.Minute)
	for {
		u, ok := readProcessStats(pid)
		if !ok {
			t.Fatalf("readProcessStats(%d) of a running process: not ok", pid)
		}
		if !u.ProcessOnly || u.Memory == 0 {
			t.Fatalf("usage %+v: want ProcessOnly and a resident set", u)
		}
		if u.CPU > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a spinning process showed no CPU time within a minute")
		}
		time.Sleep(10 * time.Millisecond) // polling the kernel's counter
	}
	_ = spin.Process.Kill()
	_ = spin.Wait()
	if _, ok := readProcessStats(pid); ok {
		t.Fatalf("readProcessStats(%d) of a reaped process: ok", pid)
	}
	if _, ok := readProcessStats(os.Getpid()); !ok {
		t.Fatal("readProcessStats of this test: not ok")
	}
}

// A worker without a cgroup gets its process's figures; one whose
// process is gone, none.
func TestStatusReadsUsageOfWorkersWithoutCgroups(t *testing.T) {
	st := Status{Services: []ServiceStatus{{Workers: []WorkerStatus{{ID: 0, PID: os.Getpid()}, {ID: 1}}}}}
	st.readUsage()
	w := st.Services[0].Workers
	if w[0].Usage == nil || !w[0].Usage.ProcessOnly || w[0].Usage.Memory == 0 {
		t.Errorf("worker with a process and no cgroup: usage %+v, want its process's", w[0].Usage)
	}
	if w[1].Usage != nil {
		t.Errorf("worker without a process: usage %+v, want none", w[1].Usage)
	}
}
