// Command gotyledon runs the services of a YAML file as supervised worker
// processes. See the README for the configuration and the commands.
package main

import (
	"os"

	"github.com/gotyledon/gotyledon/cmd/cli"
)

func main() {
	os.Exit(cli.Main(os.Args, nil))
}
