//go:build wasip1

package plugin

// The WASI preview1 adapter (which maps Go's wasip1 imports onto WASI 0.2)
// needs two 64 KiB blocks of its own, for its state and its stack, and asks
// for them on the first WASI call, which Go's runtime makes while it starts.
// They must lie where Go's heap never goes: Go's allocator (`sbrk`,
// runtime/mem_wasm.go) owns every page from the memory size it recorded at
// start-up onwards, so pages taken by `memory.grow` behind its back (what
// `wasm-tools component new --realloc-via-memory-grow` does) end up inside
// Go's heap, shared by both: the cause of the traps Go plugins had.
//
// So the adapter's blocks come from this array in Go's data segment, which
// Go's allocator and collector never touch. Go code cannot serve them
// (`go:wasmexport` functions cannot run before the runtime is up), so
// build.sh adds a small wasm function, `cabi_realloc_adapter`, after `go
// build` (cmd/adapterrealloc): it finds this array by its header in the
// module's data segments and bump-allocates from it. wit-component hands
// that export to the adapter instead of `memory.grow`.
//
// Header (the rest is zero, so it costs the binary nothing): 16 bytes of
// magic, then the array's size, little-endian u32, then one 0xA5 byte.
const adapterArenaSize = 4<<16 + 64

var adapterArena = [adapterArenaSize]byte{
	'S', 'L', 'U', 'I', 'C', 'E', '-', 'W', 'A', 'S', 'I', '-', 'A', 'R', 'E', 'N',
	adapterArenaSize & 0xff, adapterArenaSize >> 8 & 0xff, adapterArenaSize >> 16 & 0xff, adapterArenaSize >> 24 & 0xff,
	0xA5,
}

// Keeps the array in the binary (the linker drops unreferenced data) and
// checks that nothing overwrote its header.
func init() {
	if adapterArena[20] != 0xA5 {
		panic("sluice/plugin: the WASI adapter's arena header was overwritten")
	}
}
