// Command adapterrealloc adds a `cabi_realloc_adapter` export to a core
// module built by `GOOS=wasip1 go build -buildmode=c-shared` with the
// sluice/plugin SDK, so that `wasm-tools component new --adapt` gives the
// WASI preview1 adapter memory that Go's heap never uses (see
// ../../adapter_arena.go for why).
//
//	go run ./cmd/adapterrealloc IN.wasm OUT.wasm
//
// The added function is a bump allocator over the SDK's `adapterArena`
// array, found by its header in the module's data segments; it only makes
// fresh allocations (the adapter asks for two 64 KiB blocks, once) and
// traps when the arena is exhausted. Nothing else in the module changes:
// the type, function, global and export are appended, so no index moves.
package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
)

// The header of adapterArena (guest-sdk/go/adapter_arena.go).
var magic = []byte("SLUICE-WASI-AREN")

const (
	headerLen  = 64 // the allocator starts past the header
	exportName = "cabi_realloc_adapter"
)

// Section ids of the wasm binary format.
const (
	secType     = 1
	secImport   = 2
	secFunction = 3
	secGlobal   = 6
	secExport   = 7
	secCode     = 10
	secData     = 11
)

type section struct {
	id   byte
	body []byte
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: adapterrealloc IN.wasm OUT.wasm")
		os.Exit(2)
	}
	in, err := os.ReadFile(os.Args[1])
	if err == nil {
		var out []byte
		if out, err = Patch(in); err == nil {
			err = os.WriteFile(os.Args[2], out, 0o644)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "adapterrealloc:", err)
		os.Exit(1)
	}
}

// Patch returns the module with `cabi_realloc_adapter` added.
func Patch(module []byte) ([]byte, error) {
	secs, err := parseSections(module)
	if err != nil {
		return nil, err
	}
	find := func(id byte) *section {
		for i := range secs {
			if secs[i].id == id {
				return &secs[i]
			}
		}
		return nil
	}
	for _, id := range []byte{secType, secFunction, secGlobal, secExport, secCode, secData} {
		if find(id) == nil {
			return nil, fmt.Errorf("the module has no section %d: not a Go wasip1 module?", id)
		}
	}
	importedFuncs, importedGlobals, err := countImports(find(secImport))
	if err != nil {
		return nil, err
	}
	if exports, err := exportNames(find(secExport).body); err != nil {
		return nil, err
	} else if exports[exportName] {
		return nil, fmt.Errorf("the module already exports %s", exportName)
	}
	start, end, err := findArena(find(secData).body)
	if err != nil {
		return nil, err
	}

	typeIdx, err := appendEntry(find(secType), []byte{0x60, 4, 0x7f, 0x7f, 0x7f, 0x7f, 1, 0x7f})
	if err != nil {
		return nil, err
	}
	globalInit := append([]byte{0x7f, 1, 0x41}, sleb(int64(int32(start)))...)
	globalIdx, err := appendEntry(find(secGlobal), append(globalInit, 0x0b))
	if err != nil {
		return nil, err
	}
	globalIdx += importedGlobals
	funcIdx, err := appendEntry(find(secFunction), uleb(uint64(typeIdx)))
	if err != nil {
		return nil, err
	}
	funcIdx += importedFuncs
	body := reallocBody(globalIdx, end)
	if _, err := appendEntry(find(secCode), append(uleb(uint64(len(body))), body...)); err != nil {
		return nil, err
	}
	export := append(uleb(uint64(len(exportName))), exportName...)
	export = append(export, 0x00)
	export = append(export, uleb(uint64(funcIdx))...)
	if _, err := appendEntry(find(secExport), export); err != nil {
		return nil, err
	}

	out := append([]byte{}, module[:8]...)
	for _, s := range secs {
		out = append(out, s.id)
		out = append(out, uleb(uint64(len(s.body)))...)
		out = append(out, s.body...)
	}
	return out, nil
}

// reallocBody: (old_ptr, old_len, align, new_len) -> ptr, a bump allocator
// over [global, end). A reallocation (old_ptr != 0) or an exhausted arena
// traps: the adapter makes neither.
func reallocBody(global uint32, end uint32) []byte {
	g := uleb(uint64(global))
	var b []byte
	b = append(b, 1, 1, 0x7f) // one local: p
	// if old_ptr != 0: unreachable
	b = append(b, 0x20, 0, 0x04, 0x40, 0x00, 0x0b)
	// p = (cur + align - 1) & -align
	b = append(b, 0x23)
	b = append(b, g...)
	b = append(b, 0x20, 2, 0x6a, 0x41, 1, 0x6b, 0x41, 0, 0x20, 2, 0x6b, 0x71, 0x21, 4)
	// if p + new_len > end (or wraps): unreachable
	b = append(b, 0x20, 4, 0x20, 3, 0x6a, 0x41)
	b = append(b, sleb(int64(int32(end)))...)
	b = append(b, 0x4b, 0x04, 0x40, 0x00, 0x0b)
	b = append(b, 0x20, 4, 0x20, 3, 0x6a, 0x20, 4, 0x49, 0x04, 0x40, 0x00, 0x0b)
	// cur = p + new_len; return p
	b = append(b, 0x20, 4, 0x20, 3, 0x6a, 0x24)
	b = append(b, g...)
	b = append(b, 0x20, 4, 0x0b)
	return b
}

// findArena returns the usable range of adapterArena: the one data segment
// holding its header gives its address.
func findArena(data []byte) (start, end uint32, err error) {
	r := reader{b: data}
	n := r.uleb()
	found := 0
	for i := uint64(0); i < n && r.err == nil; i++ {
		if flags := r.uleb(); flags != 0 {
			return 0, 0, fmt.Errorf("data segment %d: kind %d, expected an active segment of memory 0", i, flags)
		}
		if op := r.byte(); op != 0x41 {
			return 0, 0, fmt.Errorf("data segment %d: offset is not an i32.const", i)
		}
		offset := uint32(r.sleb())
		if r.byte() != 0x0b {
			return 0, 0, fmt.Errorf("data segment %d: offset expression too long", i)
		}
		bytesN := r.uleb()
		seg := r.take(int(bytesN))
		for at := 0; ; {
			k := bytes.Index(seg[at:], magic)
			if k < 0 {
				break
			}
			at += k
			h := seg[at+len(magic):]
			if len(h) < 5 || h[4] != 0xA5 {
				return 0, 0, errors.New("the arena's header is cut short in its data segment")
			}
			size := binary.LittleEndian.Uint32(h[:4])
			base := offset + uint32(at)
			start, end = (base+headerLen+15)&^15, base+size
			found++
			at += len(magic)
		}
	}
	if r.err != nil {
		return 0, 0, fmt.Errorf("data section: %w", r.err)
	}
	if found != 1 {
		return 0, 0, fmt.Errorf("found %d copies of the adapter arena's header, expected 1 (is the module built with guest-sdk/go?)", found)
	}
	if end <= start+2<<16 {
		return 0, 0, fmt.Errorf("the adapter arena is %d bytes, too small", end-start)
	}
	return start, end, nil
}

func countImports(s *section) (funcs, globals uint32, err error) {
	if s == nil {
		return 0, 0, nil
	}
	r := reader{b: s.body}
	n := r.uleb()
	for i := uint64(0); i < n && r.err == nil; i++ {
		r.take(int(r.uleb())) // module
		r.take(int(r.uleb())) // name
		switch r.byte() {
		case 0: // func: type index
			r.uleb()
			funcs++
		case 1: // table: reftype, limits
			r.byte()
			r.limits()
		case 2: // memory: limits
			r.limits()
		case 3: // global: valtype, mutability
			r.byte()
			r.byte()
			globals++
		default:
			return 0, 0, errors.New("import section: unknown import kind")
		}
	}
	return funcs, globals, r.err
}

func exportNames(body []byte) (map[string]bool, error) {
	r := reader{b: body}
	n := r.uleb()
	names := map[string]bool{}
	for i := uint64(0); i < n && r.err == nil; i++ {
		names[string(r.take(int(r.uleb())))] = true
		r.byte()
		r.uleb()
	}
	return names, r.err
}

// appendEntry adds one entry to a vector section and returns its index
// among the section's entries.
func appendEntry(s *section, entry []byte) (uint32, error) {
	r := reader{b: s.body}
	n := r.uleb()
	if r.err != nil {
		return 0, fmt.Errorf("section %d: %w", s.id, r.err)
	}
	body := append(uleb(n+1), s.body[r.at:]...)
	s.body = append(body, entry...)
	return uint32(n), nil
}

func parseSections(m []byte) ([]section, error) {
	if len(m) < 8 || !bytes.Equal(m[:8], []byte{0, 'a', 's', 'm', 1, 0, 0, 0}) {
		return nil, errors.New("not a core wasm module")
	}
	r := reader{b: m, at: 8}
	var secs []section
	for r.at < len(m) && r.err == nil {
		id := r.byte()
		body := r.take(int(r.uleb()))
		secs = append(secs, section{id, body})
	}
	return secs, r.err
}

type reader struct {
	b   []byte
	at  int
	err error
}

func (r *reader) byte() byte {
	if r.at >= len(r.b) {
		r.err = errors.New("unexpected end")
		return 0
	}
	r.at++
	return r.b[r.at-1]
}

func (r *reader) take(n int) []byte {
	if n < 0 || r.at+n > len(r.b) {
		r.err = errors.New("unexpected end")
		r.at = len(r.b)
		return nil
	}
	r.at += n
	return r.b[r.at-n : r.at]
}

func (r *reader) uleb() uint64 {
	var v uint64
	for shift := 0; shift < 64 && r.err == nil; shift += 7 {
		c := r.byte()
		v |= uint64(c&0x7f) << shift
		if c&0x80 == 0 {
			return v
		}
	}
	return v
}

func (r *reader) sleb() int64 {
	var v int64
	shift := 0
	for r.err == nil {
		c := r.byte()
		v |= int64(c&0x7f) << shift
		shift += 7
		if c&0x80 == 0 {
			if shift < 64 && c&0x40 != 0 {
				v |= -1 << shift
			}
			return v
		}
	}
	return v
}

func (r *reader) limits() {
	flags := r.byte()
	r.uleb()
	if flags&1 != 0 {
		r.uleb()
	}
}

func uleb(v uint64) []byte {
	var b []byte
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if v != 0 {
			b = append(b, c|0x80)
		} else {
			return append(b, c)
		}
	}
}

func sleb(v int64) []byte {
	var b []byte
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if (v == 0 && c&0x40 == 0) || (v == -1 && c&0x40 != 0) {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}
