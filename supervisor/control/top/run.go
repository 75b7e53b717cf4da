package top

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	tea "charm.land/bubbletea/v2"
	"github.com/charmbracelet/colorprofile"
	"github.com/charmbracelet/x/term"
)

// Run shows the live view of mgr on the terminal of in and out until the
// operator quits. It returns an error only if the terminal could not be
// used: a manager that does not answer, or refuses, is shown on screen
// and asked again every Interval.
func Run(ctx context.Context, mgr Manager, opt Options, in io.Reader, out io.Writer) error {
	p := tea.NewProgram(New(mgr, opt), tea.WithContext(ctx), tea.WithInput(in), tea.WithOutput(out))
	if _, err := p.Run(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("top: %w", err)
	}
	return nil
}

// Once writes one frame of mgr's view to w, width cells wide and every
// row long, in the colours environ allows (none with NO_COLOR, or where w
// is not a terminal): it takes two status documents opt.Interval apart,
// so that its CPU% covers that interval. It fails if the manager does not
// answer.
func Once(ctx context.Context, mgr Manager, opt Options, w io.Writer, environ []string, width int) error {
	m := New(mgr, opt)
	m.width, m.height = width, 0
	for i := range 2 {
		if i > 0 {
			select {
			case <-time.After(m.opt.Interval):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		rctx, cancel := context.WithTimeout(ctx, m.opt.Timeout)
		doc, err := mgr.Status(rctx)
		cancel()
		if err != nil {
			return err
		}
		m.took(i+1, doc, nil)
	}
	cw := colorprofile.NewWriter(w, environ)
	_, err := fmt.Fprintln(cw, m.Frame())
	return err
}

// TerminalWidth is the width of the terminal f, if f is one.
func TerminalWidth(f *os.File) (int, bool) {
	w, _, err := term.GetSize(f.Fd())
	if err != nil || w <= 0 {
		return 0, false
	}
	return w, true
}
