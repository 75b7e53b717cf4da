package config

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// String formats p as FILE:LINE:COL, the form compilers and editors use, or
// LINE:COL when p has no file name. A declared field reads
// "services.printer.workers (declared in Go)".
func (p Position) String() string {
	if p.Field != "" {
		return p.Field + " (declared in Go)"
	}
	if p.File == "" {
		return fmt.Sprintf("%d:%d", p.Line, p.Col)
	}
	return fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Col)
}

// Error is one problem in a configuration: where it is (a place in the
// file, or a field declared in Go) and what is wrong. Msg says both what is wrong and what would be right, as in
// `workers must be a whole number from 0 to 10000 (got "two")`.
type Error struct {
	Pos Position
	Msg string
}

// Error formats e as FILE:LINE:COL: MSG, or FIELD (declared in Go): MSG.
func (e *Error) Error() string {
	return e.Pos.String() + ": " + e.Msg
}

// ErrorList is every problem found in one configuration. Parse, Load,
// Resolve, ParseOver and LoadOver return it (as an error) sorted: errors in
// values declared in Go first, in the order they were declared, then errors
// in the file by line and column. It is never empty when returned. Use
// errors.As to get at it, or at any one *Error in it.
type ErrorList []*Error

// Error formats every error on its own line, in the order ErrorList is
// sorted in.
func (l ErrorList) Error() string {
	sorted := slices.Clone(l)
	sortErrors(sorted)
	var b strings.Builder
	for i, e := range sorted {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.Error())
	}
	return b.String()
}

// Unwrap returns the errors in the list, so errors.As and errors.Is see each.
func (l ErrorList) Unwrap() []error {
	errs := make([]error, len(l))
	for i, e := range l {
		errs[i] = e
	}
	return errs
}

// sortErrors sorts l in place: errors in declared fields first, in the
// order they are in (the declaration's), then by line and column, keeping
// the order in which errors at the same place were found.
func sortErrors(l ErrorList) {
	slices.SortStableFunc(l, func(a, b *Error) int {
		ad, bd := a.Pos.Declared(), b.Pos.Declared()
		switch {
		case ad && bd:
			return 0
		case ad:
			return -1
		case bd:
			return 1
		}
		return cmp.Or(cmp.Compare(a.Pos.Line, b.Pos.Line), cmp.Compare(a.Pos.Col, b.Pos.Col))
	})
}
