use std::path::PathBuf;

/// Everything that can be wrong with a config file. Each variant names the
/// file, and where it applies the pipeline and the key, so the message alone
/// tells a user what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", file.display())]
    Env {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}: {message}", file.display())]
    Syntax { file: PathBuf, message: String },
    #[error("{}: pipeline `{pipeline}`, key `{key}`: {message}", file.display())]
    Invalid {
        file: PathBuf,
        pipeline: String,
        key: String,
        message: String,
    },
    /// Several problems at once (every rule broken, and files and subjects
    /// shared between pipelines), one per line.
    #[error("{}: {} problems:{}", file.display(), problems.len(), problems.iter().map(|p| format!("\n  {p}")).collect::<String>())]
    Problems { file: PathBuf, problems: Vec<Problem> },
}

/// A rule broken at a pipeline's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub pipeline: String,
    /// Dotted, e.g. `sink.path`.
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pipeline `{}`, key `{}`: {}", self.pipeline, self.key, self.message)
    }
}
