// Command respawn is BenchmarkRespawnGoService's program: gotyledon with one
// Go service, "reporter", whose workers connect to the Unix socket named by
// BENCH_SOCKET, write "go PID\n" and run until asked to stop.
package main

import (
	"context"
	"fmt"
	"net"
	"os"

	"github.com/gotyledon/gotyledon/service"
	"github.com/gotyledon/gotyledon/supervisor/program"
)

func main() {
	p := program.New()
	p.Register("reporter", func(w service.Worker) (service.Service, error) {
		return service.Func(func(ctx context.Context) error {
			c, err := net.Dial("unix", os.Getenv("BENCH_SOCKET"))
			if err != nil {
				return fmt.Errorf("report to the benchmark: %w", err)
			}
			defer c.Close()
			if _, err := fmt.Fprintf(c, "go %d\n", w.PID); err != nil {
				return fmt.Errorf("report to the benchmark: %w", err)
			}
			<-ctx.Done()
			return nil
		}), nil
	})
	os.Exit(p.Main(os.Args))
}
