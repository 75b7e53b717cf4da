package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// envRunMain makes this test binary the compute program: the tests run it
// as the user would, and it runs itself again as the manager and the
// workers.
const envRunMain = "COMPUTE_TEST_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(envRunMain) == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// runCompute runs the program with args, within a few minutes, and returns
// its exit code and output.
func runCompute(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), envRunMain+"=1")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(3 * time.Minute):
		cmd.Process.Kill()
		<-done
		t.Fatalf("compute %v still ran after 3 minutes; stderr:\n%s", args, errb.String())
	}
	return cmd.ProcessState.ExitCode(), out.String(), errb.String()
}

// expectedSums are the results of tasks 0..n-1 of size integers.
func expectedSums(t *testing.T, n, size int) string {
	t.Helper()
	sums := make([]string, n)
	for i := range sums {
		s, err := compute(fmt.Sprintf("%d %d", i, size))
		if err != nil {
			t.Fatal(err)
		}
		sums[i] = strconv.FormatInt(s, 10)
	}
	return "rlt =  [" + strings.Join(sums, ", ") + "]"
}

// The demo, as the README shows it: eight results, in order, and the
// statistics of eight tasks done.
func TestDemo(t *testing.T) {
	t.Parallel()
	code, out, errOut := runCompute(t)
	if code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, errOut)
	}
	if want := expectedSums(t, 8, 1_000_000); !strings.Contains(out, want+"\n") {
		t.Errorf("output:\n%s\nwant the line %s", out, want)
	}
	if !strings.Contains(out, "statistics: submitted 8, done 8, failed 0, cancelled 0, redelivered 0, running 0;") {
		t.Errorf("output:\n%s\nwant the statistics of 8 tasks done", out)
	}
}

// A worker SIGKILLed while every worker runs a task: its task is delivered
// again, and every result arrives once, right.
func TestKilledWorkerEveryResultOnce(t *testing.T) {
	t.Parallel()
	const size = 20_000_000
	code, out, errOut := runCompute(t, "demo", "--kill-worker", "--size", strconv.Itoa(size))
	if code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, errOut)
	}
	if !regexp.MustCompile(`(?m)^killed compute worker \d \(pid \d+\) while tasks ran$`).MatchString(out) {
		t.Fatalf("output:\n%s\nwant a worker killed", out)
	}
	if want := expectedSums(t, 8, size); !strings.Contains(out, want+"\n") {
		t.Errorf("output:\n%s\nwant the line %s", out, want)
	}
	if !strings.Contains(out, "statistics: submitted 8, done 8, failed 0, cancelled 0, redelivered 1, running 0;") {
		t.Errorf("output:\n%s\nwant 8 done, the killed worker's task redelivered once", out)
	}
}

func TestMapFlags(t *testing.T) {
	if code, _, errOut := runCompute(t, "map", "--tasks", "0"); code != 2 || !strings.Contains(errOut, "--tasks must be at least 1") {
		t.Errorf("map --tasks 0: exit %d, %q", code, errOut)
	}
}
