package main

import (
	"os/exec"
	"strings"
	"testing"
)

// Every Go worker and every command starts the program's binary, so what
// it links is paid at every start (BenchmarkStartup). NATS's client alone
// adds about 2 ms of package inits, the terminal library of `gotyledon
// top` 0.35 ms of inits and 1.2 MB (both in a minimal program, by
// GODEBUG=inittrace=1 and its size): the JetStream store and the live view run in
// binaries of their own, and this test keeps them there.
func TestBinariesLinkNoNATSNorTerminalLibrary(t *testing.T) {
	if testing.Short() {
		t.Skip("go list builds the dependency graph")
	}
	for _, pkg := range []string{"github.com/gotyledon/gotyledon/cmd/gotyledon", "github.com/gotyledon/gotyledon/cmd/seed"} {
		out, err := exec.Command(goTool(), "list", "-deps", pkg).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", pkg, err)
		}
		for _, dep := range strings.Fields(string(out)) {
			if strings.HasPrefix(dep, "github.com/nats-io/") || strings.HasPrefix(dep, "charm.land/") || strings.HasPrefix(dep, "github.com/charmbracelet/") {
				t.Errorf("%s links %s", pkg, dep)
			}
		}
	}
}
