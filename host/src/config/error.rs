use std::path::PathBuf;

/// Everything that can be wrong with a config file. Each variant names the
/// file, and where it applies the pipeline and the key, so the message alone
/// tells a user what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {}: {source}", file.display())]
    Read {
        /// The config file.
        file: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A `${NAME}` reference cannot be resolved.
    #[error("{}:{line}: {message}", file.display())]
    Env {
        /// The config file.
        file: PathBuf,
        /// 1-based line of the reference.
        line: usize,
        /// What is wrong, for a person to read.
        message: String,
    },
    /// Not valid TOML, or a key or value of the wrong type.
    #[error("{}: {message}", file.display())]
    Syntax {
        /// The config file.
        file: PathBuf,
        /// What is wrong, for a person to read.
        message: String,
    },
    /// One rule broken, in a pipeline or a top-level table.
    #[error("{}: {problem}", file.display())]
    Invalid {
        /// The config file.
        file: PathBuf,
        /// The rule broken.
        problem: Problem,
    },
    /// Several problems at once (every rule broken, and files and subjects
    /// shared between pipelines), one per line.
    #[error("{}: {} problems:{}", file.display(), problems.len(), problems.iter().map(|p| format!("\n  {p}")).collect::<String>())]
    Problems {
        /// The config file.
        file: PathBuf,
        /// Every rule broken, in file order.
        problems: Vec<Problem>,
    },
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
    /// The pipeline or top-level table the key belongs to.
    pub scope: Scope,
    /// Dotted, relative to the scope, e.g. `sink.path`.
    pub key: String,
    /// What is wrong and what would be right, for a person to read.
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
