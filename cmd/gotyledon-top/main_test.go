package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Without a terminal the live view says what to use instead; --once
// without a manager says there is none; both exit non-zero.
func TestWithoutATerminalOrAManager(t *testing.T) {
	prog := filepath.Join(filepath.Dir(binaries(t)), "gotyledon-top")
	sock := filepath.Join(t.TempDir(), "control.sock")
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--socket", sock}, 2, "gotyledon top: the live view needs a terminal; --once prints one frame"},
		{[]string{"--socket", sock, "--once"}, 1, "gotyledon top: no manager is running: nothing at " + sock},
		{[]string{"--interval", "1ms"}, 2, "gotyledon top: --interval: want 100ms or more"},
	} {
		cmd := exec.Command(prog, c.args...)
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		if code != c.code || !strings.Contains(string(out), c.want) {
			t.Errorf("gotyledon-top %q: exit %d, %q; want %d and %q", c.args, code, out, c.code, c.want)
		}
	}
}
