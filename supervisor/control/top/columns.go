package top

import (
	"strings"

	"github.com/charmbracelet/x/ansi"
)

// column is one column of a table.
type column struct {
	header string
	right  bool // right-aligned (figures)
	// drop is when the column goes as the screen narrows: the column with
	// the lowest drop goes first; 0 never goes.
	drop int
	// shrink, if not 0, is the least width the column may be cut to
	// (its cells end in "…"): before any column is dropped, or, with
	// cutLast, once every column that may go has gone.
	shrink  int
	cutLast bool
}

// layout fits cols, whose cells are rows, into width: it returns each
// column's width, 0 for a dropped one, and the gap between columns. It
// first tries a gap of two, then one; then cuts the columns that shrink
// down to their least width; then drops columns in their drop order;
// then cuts those that shrink last.
func layout(cols []column, rows [][]string, width int) (widths []int, gap int) {
	natural := make([]int, len(cols))
	for i, c := range cols {
		natural[i] = ansi.StringWidth(c.header)
		for _, r := range rows {
			natural[i] = max(natural[i], ansi.StringWidth(r[i]))
		}
	}
	total := func(ws []int, gap int) int {
		sum, n := 0, 0
		for _, w := range ws {
			if w > 0 {
				sum += w
				n++
			}
		}
		return sum + gap*max(0, n-1)
	}
	widths = append([]int(nil), natural...)
	for _, gap = range []int{2, 1} {
		if total(widths, gap) <= width {
			return widths, gap
		}
	}
	cut := func(last bool) {
		for i, c := range cols {
			if over := total(widths, gap) - width; over > 0 && c.shrink > 0 && c.cutLast == last && widths[i] > 0 {
				widths[i] = min(widths[i], max(c.shrink, widths[i]-over))
			}
		}
	}
	cut(false)
	for total(widths, gap) > width {
		next := -1
		for i, c := range cols {
			if c.drop > 0 && widths[i] > 0 && (next < 0 || c.drop < cols[next].drop) {
				next = i
			}
		}
		if next < 0 {
			break // what never goes is cut at the screen's edge
		}
		widths[next] = 0
	}
	cut(true)
	return widths, gap
}

// renderRow lays cells out in widths (a 0 width drops its cell), each
// cut to its width with "…" and padded; style, if not nil, styles each
// cell by its column.
func renderRow(cols []column, cells []string, widths []int, gap int, style func(col int, text string) string) string {
	var b strings.Builder
	first := true
	for i, w := range widths {
		if w == 0 {
			continue
		}
		if !first {
			b.WriteString(strings.Repeat(" ", gap))
		}
		first = false
		text := cells[i]
		if ansi.StringWidth(text) > w {
			text = ansi.Truncate(text, w, "…")
		}
		pad := strings.Repeat(" ", w-ansi.StringWidth(text))
		if style != nil {
			text = style(i, text)
		}
		if cols[i].right {
			b.WriteString(pad + text)
		} else {
			b.WriteString(text + pad)
		}
	}
	return b.String()
}
