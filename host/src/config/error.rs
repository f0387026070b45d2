use std::path::PathBuf;

/// Everything that can be wrong with a config file. Each variant names the
/// file, and where it applies the pipeline and the key, so the message alone
/// tells a user what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", file.display())]
    Read { file: PathBuf, source: std::io::Error },
    #[error("{}:{line}: {message}", file.display())]
    Env { file: PathBuf, line: usize, message: String },
    #[error("{}: {message}", file.display())]
    Syntax { file: PathBuf, message: String },
    /// One rule broken, in a pipeline or a top-level table.
    #[error("{}: {problem}", file.display())]
    Invalid { file: PathBuf, problem: Problem },
    /// Several problems at once (every rule broken, and files and subjects
    /// shared between pipelines), one per line.
    #[error("{}: {} problems:{}", file.display(), problems.len(), problems.iter().map(|p| format!("\n  {p}")).collect::<String>())]
    Problems { file: PathBuf, problems: Vec<Problem> },
}

/// Where a rule is broken: a top-level table or a pipeline. Tables sort
/// first, as they come first in a config file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// `[admin]`, `[tracing]`: named without its brackets.
    Table(&'static str),
    /// `[pipelines.NAME]`.
    Pipeline(String),
}

impl Scope {
    /// The pipeline, if the rule is one of a pipeline's.
    pub fn pipeline(&self) -> Option<&str> {
        match self {
            Scope::Pipeline(name) => Some(name),
            Scope::Table(_) => None,
        }
    }
}

/// A rule broken at a key of a pipeline or a top-level table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub scope: Scope,
    /// Dotted, relative to the scope, e.g. `sink.path`.
    pub key: String,
    pub message: String,
}

impl Problem {
    /// A rule broken at `key` of pipeline `pipeline`.
    pub fn in_pipeline(pipeline: &str, key: String, message: String) -> Self {
        Problem { scope: Scope::Pipeline(pipeline.to_owned()), key, message }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.scope {
            Scope::Pipeline(name) => write!(f, "pipeline `{name}`, key `{}`: {}", self.key, self.message),
            Scope::Table(table) => write!(f, "[{table}] key `{}`: {}", self.key, self.message),
        }
    }
}
