use std::io::{IsTerminal, Write};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use super::LogFormat;

/// Cranelift and wasmtime log every compiled function at debug; keep them at
/// warn unless the filter names them, so `SLUICE_LOG=debug` stays readable.
const QUIET: &str = "cranelift_codegen=warn,wasmtime_cranelift=warn,wasmtime=warn";

/// Logs go to stderr (stdout may be a sink), filtered by `--log-level` /
/// `SLUICE_LOG` (`RUST_LOG` syntax, default `info`). Colours only on a
/// terminal.
pub fn init(format: LogFormat, user: &str) {
    let filter = EnvFilter::try_new(format!("{QUIET},{user}")).unwrap_or_else(|_| {
        eprintln!("warning: log level `{user}` (--log-level or SLUICE_LOG) is not a valid filter; using `info`");
        EnvFilter::new(format!("{QUIET},info"))
    });
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi);
    match format {
        // Log lines quote untrusted text (event data in errors, plugin
        // messages, guest log lines): escaped, it cannot forge a line.
        LogFormat::Human => builder.with_writer(OneLine::new(std::io::stderr, ansi)).init(),
        // JSON escapes control characters itself.
        LogFormat::Json => builder.with_writer(std::io::stderr).json().init(),
    }
}

/// A writer for the human log format that keeps each event on one line:
/// tracing's formatter hands over one event per write, ending in its
/// newline, and every line break or control character before that end is
/// written escaped (`\n`, `\r`, `\x1b`, `\u{2028}`). With colours on, ESC
/// is kept (the formatter's own colour codes use it).
#[derive(Clone, Copy)]
pub struct OneLine<M> {
    inner: M,
    keep_esc: bool,
}

impl<M> OneLine<M> {
    pub fn new(inner: M, keep_esc: bool) -> Self {
        Self { inner, keep_esc }
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for OneLine<M> {
    type Writer = OneLineWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        OneLineWriter { inner: self.inner.make_writer(), keep_esc: self.keep_esc }
    }
}

pub struct OneLineWriter<W> {
    inner: W,
    keep_esc: bool,
}

impl<W: Write> Write for OneLineWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write_all(&escape_line(buf, self.keep_esc))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// `line` with every control character and Unicode line break escaped,
/// except a final `\n` (and ESC when `keep_esc`). Tabs are kept.
pub fn escape_line(line: &[u8], keep_esc: bool) -> Vec<u8> {
    let (body, end) = match line.strip_suffix(b"\n") {
        Some(body) => (body, &b"\n"[..]),
        None => (line, &b""[..]),
    };
    let mut out = Vec::with_capacity(line.len() + 16);
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.push(b),
            0x1b if keep_esc => out.push(b),
            0x00..=0x1f | 0x7f => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            // NEL (U+0085), LINE and PARAGRAPH SEPARATOR (U+2028, U+2029):
            // line breaks to some viewers.
            0xc2 if body.get(i + 1) == Some(&0x85) => {
                out.extend_from_slice(b"\\u{85}");
                i += 1;
            }
            0xe2 if body.get(i + 1) == Some(&0x80) && matches!(body.get(i + 2), Some(0xa8 | 0xa9)) => {
                out.extend_from_slice(if body[i + 2] == 0xa8 { b"\\u{2028}" } else { b"\\u{2029}" });
                i += 2;
            }
            _ => out.push(b),
        }
        i += 1;
    }
    out.extend_from_slice(end);
    out
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn only_the_final_newline_survives() {
        let line = "INFO plugin said: ok\nERROR forged line\r\x07 \u{2028}x\u{85}\n".as_bytes();
        let out = String::from_utf8_lossy(&escape_line(line, false)).into_owned();
        assert_eq!(out, "INFO plugin said: ok\\nERROR forged line\\r\\x07 \\u{2028}x\\u{85}\n");
        assert_eq!(escape_line(b"a\x1b[31mb\n", false), b"a\\x1b[31mb\n");
        assert_eq!(escape_line(b"a\x1b[31mb\n", true), b"a\x1b[31mb\n");
        assert_eq!(escape_line("tab\tand ü\n".as_bytes(), false), "tab\tand ü\n".as_bytes());
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut out) = self.0.lock() {
                out.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Through the real formatter: a message and a field with newlines
    /// (a plugin's error, say) stay on their event's line.
    #[test]
    fn untrusted_text_cannot_forge_a_log_line() {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(OneLine::new(move || sink.clone(), false)).finish();
        tracing::subscriber::with_default(subscriber, || {
            let untrusted = "bad input\n2026-12-05T00:00:00Z ERROR sluice: admin token is abc";
            tracing::warn!(event = untrusted, "plugin rejected the event: {untrusted}");
        });
        let text = String::from_utf8(captured.0.lock().map(|b| b.clone()).unwrap_or_default()).unwrap_or_default();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("bad input\\n2026-12-05"), "{text}");
    }
}
