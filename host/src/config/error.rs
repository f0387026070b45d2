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
}
