// Command gotyledon runs the services of a YAML file as supervised worker
// processes, and talks to a running manager. See README.md, and the
// operating reference supervisor/README.md.
package main

import (
	"os"

	"github.com/gotyledon/gotyledon/supervisor/program"
)

func main() {
	os.Exit(program.New().Main(os.Args))
}
