//! Words for a trap that a plugin author can act on.
//!
//! wasmtime names the instruction that trapped, not why the guest got
//! there. The common case it hides: a guest compiled from Rust, C, Go or
//! Python keeps its stack in its own linear memory, below its data, growing
//! down; deep or endless recursion walks the stack pointer past address 0,
//! it wraps to the top of the 32-bit address space, and the next store
//! traps as "out of bounds memory access". wasmtime adds the faulting
//! address and a backtrace to the error's chain; from those we say "stack
//! overflow" and name the function at fault.

use wasmtime::{Trap, WasmBacktrace};

/// A fault this close below 4 GiB is a stack pointer that wrapped past 0:
/// no guest's data or heap lives there (a 32-bit memory that large would
/// be the 4 GiB maximum), and a stack frame is far smaller than this.
const WRAPPED_STACK: u64 = (1 << 32) - (16 << 20);

/// The same function this many times in a row at the top of the backtrace
/// is recursion (wasmtime keeps the innermost frames).
const RECURSION_FRAMES: usize = 8;

/// Describes a failed guest call: the trap, why when the chain says, and
/// the innermost guest function.
pub fn describe(err: &wasmtime::Error) -> String {
    let Some(trap) = err.downcast_ref::<Trap>() else {
        return format!("{err:#}");
    };
    let backtrace = err.downcast_ref::<WasmBacktrace>();
    let innermost = backtrace.and_then(|bt| bt.frames().first()).and_then(|frame| frame.func_name());
    let mut message = match trap {
        Trap::MemoryOutOfBounds if wrapped_stack(err) || recursion(backtrace) => {
            "stack overflow: the guest's stack ran out (deep or endless recursion; its stack lives in its linear memory, so this shows as an out-of-bounds access at the top of memory)".to_owned()
        }
        Trap::StackOverflow => "stack overflow: the call stack ran out (deep or endless recursion)".to_owned(),
        other => other.to_string(),
    };
    if let Some(function) = innermost {
        message.push_str(" in `");
        message.push_str(function);
        message.push('`');
    }
    message
}

/// Whether the chain holds wasmtime's "memory fault at wasm address 0x…"
/// with an address just below 4 GiB.
fn wrapped_stack(err: &wasmtime::Error) -> bool {
    err.chain().filter_map(|cause| fault_address(&cause.to_string())).any(|address| (WRAPPED_STACK..1 << 32).contains(&address))
}

/// The address in wasmtime's fault context (its `WasmFault`, not public).
fn fault_address(text: &str) -> Option<u64> {
    let rest = text.strip_prefix("memory fault at wasm address 0x")?;
    let hex: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
    u64::from_str_radix(&hex, 16).ok()
}

fn recursion(backtrace: Option<&WasmBacktrace>) -> bool {
    let Some(frames) = backtrace.map(WasmBacktrace::frames) else {
        return false;
    };
    let Some(first) = frames.first() else {
        return false;
    };
    frames.len() >= RECURSION_FRAMES
        && frames
            .iter()
            .take(RECURSION_FRAMES)
            .all(|frame| frame.func_index() == first.func_index() && frame.module().name() == first.module().name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fault_address() {
        assert_eq!(fault_address("memory fault at wasm address 0xfffffff0 in linear memory of size 0x110000"), Some(0xffff_fff0));
        assert_eq!(fault_address("wasm trap: out of bounds memory access"), None);
    }

    #[test]
    fn only_a_wrapped_address_is_a_stack_overflow() {
        let wrapped = wasmtime::Error::from(Trap::MemoryOutOfBounds)
            .context("memory fault at wasm address 0xffffff00 in linear memory of size 0x120000");
        assert!(describe(&wrapped).starts_with("stack overflow"), "{}", describe(&wrapped));
        let past_the_end = wasmtime::Error::from(Trap::MemoryOutOfBounds)
            .context("memory fault at wasm address 0x200000 in linear memory of size 0x120000");
        assert_eq!(describe(&past_the_end), "wasm trap: out of bounds memory access");
    }
}
