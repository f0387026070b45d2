//! `sluice-bench native-lines`: the native baseline of the embedded (file)
//! benchmarks, `start` and `memory`. A process of its own, as `sluice run`
//! is, on the same tokio runtime (multi-thread, one worker per core), doing
//! what a file → passthrough → file/stdout pipeline does without WASM or
//! sluice: read JSON event lines, take each one's `payload`, write it as a
//! line; with `follow`, poll the file for growth every 100 ms as sluice's
//! file source does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};

/// As sluice's `FOLLOW_POLL`.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// One input file and where its outputs go (`-`: stdout).
#[derive(Debug, Clone, PartialEq)]
pub struct Pipe {
    pub input: PathBuf,
    pub output: PathBuf,
}

impl std::str::FromStr for Pipe {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('=') {
            Some((input, output)) if !input.is_empty() && !output.is_empty() => Ok(Pipe { input: input.into(), output: output.into() }),
            _ => Err(format!("`{s}` is not INPUT=OUTPUT")),
        }
    }
}

impl Pipe {
    /// The argument that names this pipe on the command line.
    pub fn arg(&self) -> String {
        format!("{}={}", self.input.display(), self.output.display())
    }
}

/// Runs every pipe as its own task until each ends (never, with `follow`).
pub async fn run(pipes: Vec<Pipe>, follow: bool) -> Result<()> {
    if pipes.is_empty() {
        bail!("native-lines needs at least one --pipe INPUT=OUTPUT");
    }
    let tasks: Vec<_> = pipes.into_iter().map(|pipe| tokio::spawn(copy(pipe, follow))).collect();
    for task in tasks {
        task.await??;
    }
    Ok(())
}

async fn open_output(path: &Path) -> Result<Box<dyn AsyncWrite + Send + Unpin>> {
    if path == Path::new("-") {
        return Ok(Box::new(tokio::io::stdout()));
    }
    let file = tokio::fs::File::create(path).await.with_context(|| format!("creating {}", path.display()))?;
    Ok(Box::new(file))
}

/// One pipe: lines in, payloads out, flushed whenever the input has
/// nothing more buffered (a group commit, as sluice's line sink does).
async fn copy(pipe: Pipe, follow: bool) -> Result<()> {
    let input = tokio::fs::File::open(&pipe.input).await.with_context(|| format!("opening {}", pipe.input.display()))?;
    let mut input = BufReader::new(input);
    let mut output = BufWriter::new(open_output(&pipe.output).await?);
    let mut line = Vec::new();
    let mut encoded = Vec::new();
    loop {
        input.read_until(b'\n', &mut line).await?;
        if line.last() != Some(&b'\n') {
            // End of the file (a partial last line is kept while following).
            output.flush().await?;
            if !follow {
                break;
            }
            tokio::time::sleep(FOLLOW_POLL).await;
            continue;
        }
        let event: serde_json::Value =
            serde_json::from_slice(&line).with_context(|| format!("a line of {} is not JSON", pipe.input.display()))?;
        encoded.clear();
        serde_json::to_writer(&mut encoded, &event["payload"])?;
        encoded.push(b'\n');
        output.write_all(&encoded).await?;
        line.clear();
        if input.buffer().is_empty() {
            output.flush().await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipes_parse_from_the_command_line() {
        assert_eq!("in.jsonl=-".parse(), Ok(Pipe { input: "in.jsonl".into(), output: "-".into() }));
        assert!("in.jsonl".parse::<Pipe>().is_err());
        assert!("=out".parse::<Pipe>().is_err());
    }

    #[tokio::test]
    async fn copies_each_payload_as_a_line() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let (input, output) = (dir.path().join("in.jsonl"), dir.path().join("out.jsonl"));
        std::fs::write(&input, "{\"key\":\"a\",\"payload\":{\"n\":1}}\n{\"payload\":\"two\"}\n")?;
        run(vec![Pipe { input, output: output.clone() }], false).await?;
        assert_eq!(std::fs::read_to_string(output)?, "{\"n\":1}\n\"two\"\n");
        Ok(())
    }
}
