//! The byte layout of `sluice:plugin/packed-handler` (see `wit/sluice.wit`):
//! a batch of events in one `list<u8>`, and its answers in another.
//!
//! Why it exists: through the canonical ABI every string and list of every
//! event is its own guest allocation, made by a call from the host into the
//! guest, and every field of every output is read back through the
//! component's memory one scalar at a time. For a 100-byte event that is
//! most of what a plugin call costs. Packed, the host copies one buffer in
//! and one out, and each side reads the other's bytes as plain memory.
//!
//! The host and the Rust SDK each have their own Rust types for the WIT
//! records (wasmtime's and wit-bindgen's), with the same field names. So
//! the codec is written once, as [`codec!`], and each side expands it over
//! its own types: the host encodes events and decodes answers
//! (`host/src/runtime/packed.rs`), the SDK does the reverse
//! (`guest-sdk/rust/src/packed.rs`), and neither can drift from the other.
//! Every integer is little-endian.
//!
//! ```text
//! batch    = FORMAT:u8 count:u32 event{count}
//! event    = id:str source:str key:opt-bytes payload:bytes headers
//!            timestamp-ms:u64 attempt:u32 reply-to:opt-str
//! answers  = FORMAT:u8 count:u32 answer{count}
//! answer   = 0:u8 count:u32 output{count}             (ok)
//!          | 1:u8 disposition:u8 message:str          (error; 0 retryable, 1 reject)
//! output   = destination:opt-str key:opt-bytes payload:bytes headers reply:bool
//! headers  = count:u32 (key:str value:bytes){count}
//! bytes    = len:u32 u8{len}
//! str      = bytes, UTF-8
//! opt-X    = 0:u8 | 1:u8 X
//! bool     = 0:u8 | 1:u8
//! ```
//!
//! A reader never trusts a count: it refuses one that the bytes left could
//! not hold (so a hostile count cannot make it allocate), a string that is
//! not UTF-8, an unknown tag, and bytes left over at the end.

use std::fmt;

mod codec;

/// The layout's version, the first byte of a batch and of its answers. A
/// side that meets another refuses the buffer.
pub const FORMAT: u8 = 1;

/// The fewest bytes an event takes (every field empty or absent).
pub const MIN_EVENT: usize = 4 + 4 + 1 + 4 + 4 + 8 + 4 + 1;
/// The fewest bytes a header takes.
pub const MIN_HEADER: usize = 4 + 4;
/// The fewest bytes an answer takes (success with no output).
pub const MIN_ANSWER: usize = 1 + 4;
/// The fewest bytes an output takes.
pub const MIN_OUTPUT: usize = 1 + 1 + 4 + 4 + 1;

/// Why a buffer could not be read (or written): what, and at which byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// Offset of the field at fault.
    pub offset: usize,
    /// What was wrong with it.
    pub what: &'static str,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.what, self.offset)
    }
}

impl std::error::Error for Error {}

/// Appends fields to a buffer. A length that does not fit a `u32` (over
/// 4 GiB: nothing a 32-bit guest can hold) is remembered and reported by
/// [`Writer::finish`] rather than written wrong.
pub struct Writer<'a> {
    buf: &'a mut Vec<u8>,
    overflow: Option<usize>,
}

impl<'a> Writer<'a> {
    /// Writes after what `buf` holds; the caller clears it to reuse it.
    pub fn new(buf: &'a mut Vec<u8>) -> Self {
        Self { buf, overflow: None }
    }

    pub fn u8(&mut self, value: u8) {
        self.buf.push(value);
    }

    pub fn bool(&mut self, value: bool) {
        self.buf.push(u8::from(value));
    }

    pub fn u32(&mut self, value: u32) {
        self.buf.extend_from_slice(&value.to_le_bytes());
    }

    pub fn u64(&mut self, value: u64) {
        self.buf.extend_from_slice(&value.to_le_bytes());
    }

    /// A count or a length.
    pub fn count(&mut self, count: usize) {
        match u32::try_from(count) {
            Ok(count) => self.u32(count),
            Err(_) => {
                self.overflow.get_or_insert(self.buf.len());
                self.u32(u32::MAX);
            }
        }
    }

    pub fn bytes(&mut self, bytes: &[u8]) {
        self.count(bytes.len());
        self.buf.extend_from_slice(bytes);
    }

    pub fn str(&mut self, text: &str) {
        self.bytes(text.as_bytes());
    }

    pub fn opt_bytes(&mut self, bytes: Option<&[u8]>) {
        match bytes {
            None => self.u8(0),
            Some(bytes) => {
                self.u8(1);
                self.bytes(bytes);
            }
        }
    }

    pub fn opt_str(&mut self, text: Option<&str>) {
        self.opt_bytes(text.map(str::as_bytes));
    }

    /// Ok unless a length did not fit.
    pub fn finish(self) -> Result<(), Error> {
        match self.overflow {
            None => Ok(()),
            Some(offset) => Err(Error { offset, what: "a field longer than 4 GiB" }),
        }
    }
}

/// Reads fields from a buffer in order, checking each.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// The format byte; anything but [`FORMAT`] is refused.
    pub fn format(&mut self) -> Result<(), Error> {
        let at = self.pos;
        match self.u8()? {
            FORMAT => Ok(()),
            _ => Err(Error { offset: at, what: "an unknown packed format" }),
        }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Error> {
        let rest = &self.buf[self.pos..];
        if rest.len() < n {
            return Err(Error { offset: self.pos, what });
        }
        self.pos += n;
        Ok(&rest[..n])
    }

    pub fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1, "the buffer ends inside a field")?[0])
    }

    pub fn u32(&mut self) -> Result<u32, Error> {
        let bytes = self.take(4, "the buffer ends inside a field")?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    pub fn u64(&mut self) -> Result<u64, Error> {
        let bytes = self.take(8, "the buffer ends inside a field")?;
        let mut word = [0; 8];
        word.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(word))
    }

    pub fn bool(&mut self) -> Result<bool, Error> {
        self.tag().map(|tag| tag == 1)
    }

    /// A 0/1 tag (an option, a bool, ok/error).
    pub fn tag(&mut self) -> Result<u8, Error> {
        let at = self.pos;
        match self.u8()? {
            tag @ (0 | 1) => Ok(tag),
            _ => Err(Error { offset: at, what: "a tag other than 0 or 1" }),
        }
    }

    /// A count of items that take at least `min_size` bytes each: one the
    /// rest of the buffer could not hold is refused before anything is
    /// allocated for it.
    pub fn count(&mut self, min_size: usize) -> Result<usize, Error> {
        let at = self.pos;
        let count = self.u32()? as usize;
        if count.saturating_mul(min_size.max(1)) > self.buf.len() - self.pos {
            return Err(Error { offset: at, what: "a count larger than the bytes left" });
        }
        Ok(count)
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], Error> {
        let len = self.u32()? as usize;
        self.take(len, "a length past the end of the buffer")
    }

    pub fn str(&mut self) -> Result<&'a str, Error> {
        let at = self.pos;
        std::str::from_utf8(self.bytes()?).map_err(|_| Error { offset: at, what: "a string that is not UTF-8" })
    }

    pub fn opt_bytes(&mut self) -> Result<Option<&'a [u8]>, Error> {
        match self.tag()? {
            0 => Ok(None),
            _ => self.bytes().map(Some),
        }
    }

    pub fn opt_str(&mut self) -> Result<Option<&'a str>, Error> {
        match self.tag()? {
            0 => Ok(None),
            _ => self.str().map(Some),
        }
    }

    /// How many bytes have been read.
    pub fn offset(&self) -> usize {
        self.pos
    }

    /// Ok if every byte was read.
    pub fn finish(self) -> Result<(), Error> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(Error { offset: self.pos, what: "bytes left after the last field" })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_back_as_written() {
        let mut buf = Vec::new();
        let mut w = Writer::new(&mut buf);
        w.u8(FORMAT);
        w.u32(7);
        w.u64(u64::MAX - 1);
        w.str("héllo");
        w.bytes(&[0, 255]);
        w.opt_bytes(None);
        w.opt_str(Some("x"));
        w.bool(true);
        w.finish().unwrap();

        let mut r = Reader::new(&buf);
        r.format().unwrap();
        assert_eq!(r.u32().unwrap(), 7);
        assert_eq!(r.u64().unwrap(), u64::MAX - 1);
        assert_eq!(r.str().unwrap(), "héllo");
        assert_eq!(r.bytes().unwrap(), &[0, 255]);
        assert_eq!(r.opt_bytes().unwrap(), None);
        assert_eq!(r.opt_str().unwrap(), Some("x"));
        assert!(r.bool().unwrap());
        r.finish().unwrap();
    }

    #[test]
    fn a_truncated_buffer_is_refused_at_every_cut() {
        let mut buf = Vec::new();
        let mut w = Writer::new(&mut buf);
        w.str("abc");
        w.u64(1);
        w.opt_str(Some("reply"));
        w.finish().unwrap();
        for cut in 0..buf.len() {
            let mut r = Reader::new(&buf[..cut]);
            let read = r.str().and_then(|_| r.u64()).and_then(|_| r.opt_str());
            assert!(read.is_err(), "a buffer cut at {cut} read as whole");
        }
    }

    #[test]
    fn hostile_fields_are_refused_with_their_offset() {
        // A count the rest cannot hold: refused before any allocation.
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 0]);
        assert_eq!(r.count(1), Err(Error { offset: 0, what: "a count larger than the bytes left" }));
        // A length past the end.
        let mut r = Reader::new(&[9, 0, 0, 0, b'a']);
        assert_eq!(r.bytes().unwrap_err().offset, 4);
        // Not UTF-8.
        let mut r = Reader::new(&[2, 0, 0, 0, 0xc3, 0x28]);
        assert_eq!(r.str().unwrap_err().what, "a string that is not UTF-8");
        // A tag that is neither 0 nor 1.
        let mut r = Reader::new(&[2]);
        assert_eq!(r.opt_bytes().unwrap_err().what, "a tag other than 0 or 1");
        // Another format.
        let mut r = Reader::new(&[FORMAT + 1]);
        assert_eq!(r.format().unwrap_err().what, "an unknown packed format");
        // Bytes left over.
        let mut r = Reader::new(&[0, 0]);
        r.u8().unwrap();
        assert_eq!(r.finish().unwrap_err().offset, 1);
    }

    #[test]
    fn a_count_of_zero_sized_items_is_still_bounded() {
        let mut r = Reader::new(&[3, 0, 0, 0, 0, 0, 0]);
        assert_eq!(r.count(0).unwrap(), 3);
        let mut r = Reader::new(&[4, 0, 0, 0, 0, 0, 0]);
        assert!(r.count(0).is_err());
    }
}
