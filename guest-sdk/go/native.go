//go:build !wasip1

package plugin

import (
	"fmt"
	"os"
)

// Native builds (go test, go vet) print log lines to stderr instead.
func logImpl(level Level, message string, fields [][2]string) {
	fmt.Fprintln(os.Stderr, level, message, fields)
}

// Init and Handle drive a registered plugin from a native test.
func Init(pairs [][2]string) error       { return initPlugin(pairs) }
func Handle(ev *Event) ([]Output, error) { return handleOne(ev) }
