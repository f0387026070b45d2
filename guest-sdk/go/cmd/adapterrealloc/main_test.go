package main

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

// module builds a small core module: one imported function, one function,
// one global, one export, and a data section holding `data` at 0x1000.
func module(data []byte) []byte {
	sec := func(id byte, body ...byte) []byte {
		return append(append([]byte{id}, uleb(uint64(len(body)))...), body...)
	}
	m := []byte{0, 'a', 's', 'm', 1, 0, 0, 0}
	m = append(m, sec(secType, 1, 0x60, 0, 0)...)
	m = append(m, sec(secImport, 1, 1, 'm', 1, 'f', 0, 0)...)
	m = append(m, sec(secFunction, 1, 0)...)
	m = append(m, sec(secGlobal, 1, 0x7f, 1, 0x41, 0, 0x0b)...)
	m = append(m, sec(secExport, 1, 1, 'g', 0, 1)...)
	m = append(m, sec(secCode, 1, 2, 0, 0x0b)...)
	seg := []byte{1, 0, 0x41}
	seg = append(seg, sleb(0x1000)...)
	seg = append(seg, 0x0b)
	seg = append(seg, uleb(uint64(len(data)))...)
	seg = append(seg, data...)
	return append(m, sec(secData, seg...)...)
}

func header(size uint32) []byte {
	h := append([]byte{}, magic...)
	h = binary.LittleEndian.AppendUint32(h, size)
	return append(h, 0xA5)
}

func TestPatchAddsTheAllocatorOverTheArena(t *testing.T) {
	out, err := Patch(module(append([]byte{7, 7, 7}, header(4<<16+64)...)))
	if err != nil {
		t.Fatal(err)
	}
	secs, err := parseSections(out)
	if err != nil {
		t.Fatal(err)
	}
	byID := map[byte][]byte{}
	for _, s := range secs {
		byID[s.id] = s.body
	}
	// The export names function 2: after the import and the module's own.
	if want := append([]byte{2, 1, 'g', 0, 1, byte(len(exportName))}, append([]byte(exportName), 0, 2)...); !bytes.Equal(byID[secExport], want) {
		t.Errorf("exports % x, want % x", byID[secExport], want)
	}
	// The arena's header is at 0x1003; the allocator starts 64 bytes on, aligned to 16.
	start := (0x1003 + headerLen + 15) &^ 15
	if want := append(append([]byte{2, 0x7f, 1, 0x41, 0, 0x0b, 0x7f, 1, 0x41}, sleb(int64(start))...), 0x0b); !bytes.Equal(byID[secGlobal], want) {
		t.Errorf("globals % x, want % x", byID[secGlobal], want)
	}
	if byID[secFunction][0] != 2 || byID[secFunction][2] != 1 {
		t.Errorf("functions % x: the new one should have the new type 1", byID[secFunction])
	}
	if !bytes.Contains(byID[secCode], sleb(0x1003+4<<16+64)) {
		t.Error("the allocator's bound is not the arena's end")
	}
}

func TestPatchRefusesAModuleWithoutOneArena(t *testing.T) {
	for name, data := range map[string][]byte{
		"none": {1, 2, 3},
		"two":  append(header(4<<16+64), header(4<<16+64)...),
	} {
		_, err := Patch(module(data))
		if err == nil || !strings.Contains(err.Error(), "adapter arena's header") {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := Patch(module(header(1 << 16))); err == nil || !strings.Contains(err.Error(), "too small") {
		t.Errorf("small arena: %v", err)
	}
}
