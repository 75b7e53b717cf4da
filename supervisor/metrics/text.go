package metrics

import (
	"bufio"
	"cmp"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
)

// This file writes Prometheus's text exposition format, version 0.0.4
// (https://prometheus.io/docs/instrumenting/exposition_formats/): for each
// family, in the order of their names, a HELP line, a TYPE line and its
// series. It writes what the manager serves (gauges, counters and one
// summary) and nothing more; the tests parse its output with Prometheus's
// own parser (github.com/prometheus/common/expfmt) and lint it.

// contentType is the text format's, as Prometheus's Go client sends it.
const contentType = "text/plain; version=0.0.4; charset=utf-8; escaping=underscores"

// metricType is a family's TYPE.
type metricType string

const (
	gaugeType   metricType = "gauge"
	counterType metricType = "counter"
	summaryType metricType = "summary"
)

// desc is what a family is: its name, help and type, and the names of its
// labels (in the order series give their values).
type desc struct {
	name   string
	help   string
	typ    metricType
	labels []string
}

func newDesc(name, help string, typ metricType, labels ...string) desc {
	return desc{name: name, help: help, typ: typ, labels: labels}
}

// family is a desc and its series of one scrape.
type family struct {
	desc
	series []series
}

// series is one line: the family's name with suffix (a summary's "_sum"
// and "_count"), its labels, sorted by name, and its value.
type series struct {
	suffix string
	labels []labelPair
	value  float64
}

type labelPair struct{ name, value string }

// add appends a series of f with the values of f's labels, in their order.
func (f *family) add(v float64, labelValues ...string) {
	f.series = append(f.series, series{labels: pairs(f.labels, labelValues), value: v})
}

// pairs returns the label pairs of names and values, sorted by name.
func pairs(names, values []string) []labelPair {
	if len(names) != len(values) {
		panic("metrics: " + strconv.Itoa(len(values)) + " label values for labels " + strings.Join(names, ","))
	}
	if len(names) == 0 {
		return nil
	}
	ps := make([]labelPair, len(names))
	for i := range names {
		ps[i] = labelPair{names[i], values[i]}
	}
	slices.SortFunc(ps, func(a, b labelPair) int { return cmp.Compare(a.name, b.name) })
	return ps
}

// compareSeries orders the series of a gauge or counter family by their
// label values, label by label, as Prometheus's Go client does.
func compareSeries(a, b series) int {
	for i := 0; i < len(a.labels) && i < len(b.labels); i++ {
		if c := cmp.Compare(a.labels[i].value, b.labels[i].value); c != 0 {
			return c
		}
	}
	return cmp.Compare(len(a.labels), len(b.labels))
}

// writeText writes fams in the text format: families sorted by name, the
// series of a gauge or counter sorted by label values, a summary's as
// they are (its quantiles, then _sum and _count). A family without series
// is left out.
func writeText(w io.Writer, fams []*family) error {
	slices.SortStableFunc(fams, func(a, b *family) int { return cmp.Compare(a.name, b.name) })
	bw := bufio.NewWriterSize(w, 16<<10)
	var buf []byte
	for _, f := range fams {
		if len(f.series) == 0 {
			continue
		}
		if f.typ != summaryType {
			slices.SortStableFunc(f.series, compareSeries)
		}
		buf = append(buf[:0], "# HELP "...)
		buf = append(buf, f.name...)
		buf = append(buf, ' ')
		buf = appendEscaped(buf, f.help, false)
		buf = append(buf, "\n# TYPE "...)
		buf = append(buf, f.name...)
		buf = append(buf, ' ')
		buf = append(buf, f.typ...)
		buf = append(buf, '\n')
		for _, s := range f.series {
			buf = append(buf, f.name...)
			buf = append(buf, s.suffix...)
			if len(s.labels) > 0 {
				buf = append(buf, '{')
				for i, l := range s.labels {
					if i > 0 {
						buf = append(buf, ',')
					}
					buf = append(buf, l.name...)
					buf = append(buf, `="`...)
					buf = appendEscaped(buf, l.value, true)
					buf = append(buf, '"')
				}
				buf = append(buf, '}')
			}
			buf = append(buf, ' ')
			buf = appendFloat(buf, s.value)
			buf = append(buf, '\n')
		}
		if _, err := bw.Write(buf); err != nil {
			return err
		}
	}
	return bw.Flush()
}

// appendEscaped appends s with backslash and newline escaped (and, in a
// label value, double quotes too), as the format asks.
func appendEscaped(buf []byte, s string, labelValue bool) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\':
			buf = append(buf, `\\`...)
		case c == '\n':
			buf = append(buf, `\n`...)
		case c == '"' && labelValue:
			buf = append(buf, `\"`...)
		default:
			buf = append(buf, c)
		}
	}
	return buf
}

// appendFloat appends v as the format writes numbers: the shortest
// representation that reads back as v (1000, 1.5e+09), and NaN, +Inf, -Inf.
func appendFloat(buf []byte, v float64) []byte {
	switch {
	case math.IsNaN(v):
		return append(buf, "NaN"...)
	case math.IsInf(v, +1):
		return append(buf, "+Inf"...)
	case math.IsInf(v, -1):
		return append(buf, "-Inf"...)
	}
	return strconv.AppendFloat(buf, v, 'g', -1, 64)
}
