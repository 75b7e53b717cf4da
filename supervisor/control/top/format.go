package top

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// compactDuration prints d in at most two units, for a column: 42s,
// 12m03s, 3h04m, 2d03h; 0.4s below a second.
func compactDuration(d time.Duration) string {
	switch {
	case d < 0:
		d = 0
		fallthrough
	case d < time.Second:
		return fmt.Sprintf("%.1fs", d.Seconds())
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d/time.Minute), int(d%time.Minute/time.Second))
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d/time.Hour), int(d%time.Hour/time.Minute))
	}
	return fmt.Sprintf("%dd%02dh", int(d/(24*time.Hour)), int(d%(24*time.Hour)/time.Hour))
}

// seconds turns a figure of the status document into a Duration.
func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// compactBytes prints n bytes in binary units, three significant digits:
// 512K, 12.3M, 1.50G.
func compactBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	v, suffix := float64(n), ""
	for _, s := range []string{"K", "M", "G", "T", "P"} {
		if v < unit {
			break
		}
		v /= unit
		suffix = s
	}
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f%s", v, suffix)
	case v >= 10:
		return fmt.Sprintf("%.1f%s", v, suffix)
	}
	return fmt.Sprintf("%.2f%s", v, suffix)
}

// rate prints items per second: 0, 0.4, 12.3, 1234, 12.3k, 1.23M.
func rate(r float64) string {
	switch {
	case r == 0:
		return "0"
	case r < 100:
		return fmt.Sprintf("%.1f", r)
	case r < 10_000:
		return fmt.Sprintf("%.0f", r)
	case r < 1_000_000:
		return fmt.Sprintf("%.1fk", r/1000)
	}
	return fmt.Sprintf("%.2fM", r/1e6)
}

// sparkBars are the eight heights of a sparkline, lowest first.
var sparkBars = []rune("▁▂▃▄▅▆▇█")

// sparkline draws rates (oldest first) in width cells, right-aligned so
// that the newest is last: each cell the mean of the rates it covers,
// scaled to the largest cell. Zero draws the lowest bar, any other rate
// one higher at least; cells before the first rate are blank.
func sparkline(rates []float64, width int) string {
	if width <= 0 {
		return ""
	}
	cells := make([]float64, 0, width)
	if len(rates) <= width {
		cells = append(cells, rates...)
	} else {
		// Group the rates into width cells of as equal a size as can be,
		// the newest cell ending at the newest rate.
		for i := range width {
			from, to := i*len(rates)/width, (i+1)*len(rates)/width
			sum := 0.0
			for _, r := range rates[from:to] {
				sum += r
			}
			cells = append(cells, sum/float64(to-from))
		}
	}
	top := 0.0
	for _, c := range cells {
		top = math.Max(top, c)
	}
	var b strings.Builder
	b.WriteString(strings.Repeat(" ", width-len(cells)))
	for _, c := range cells {
		i := 0
		if top > 0 {
			i = int(c / top * float64(len(sparkBars)-1))
		}
		if c > 0 {
			i = max(i, 1) // some is not none
		}
		b.WriteRune(sparkBars[i])
	}
	return b.String()
}

// shortExit shortens a worker's last exit for a column: "exit code 1" →
// "exit 1", "killed by SIGKILL" → "SIGKILL", "failed to start: ..." →
// "start failed: ...".
func shortExit(s string) string {
	if c, ok := strings.CutPrefix(s, "exit code "); ok {
		return "exit " + c
	}
	if sig, ok := strings.CutPrefix(s, "killed by "); ok {
		return sig
	}
	if why, ok := strings.CutPrefix(s, "failed to start: "); ok {
		return "start failed: " + why
	}
	return s
}
