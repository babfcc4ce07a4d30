//! Errors of loading a configuration, each naming the file and line at fault.

use std::fmt;

/// A message tied to a place in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The file, as the user named it.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl Located {
    /// A new located message.
    pub fn new(file: impl Into<String>, line: usize, message: impl Into<String>) -> Self {
        Located { file: file.into(), line, message: message.into() }
    }
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML does not parse or does not fit the model.
    #[error("{0}")]
    Syntax(Located),
    /// A value is inconsistent (unknown backend, bad template, ...).
    #[error("{0}")]
    Invalid(Located),
    /// A file could not be read.
    #[error("{file}: cannot read: {message}")]
    Read {
        /// The file.
        file: String,
        /// The reader's error.
        message: String,
    },
    /// Cedar schema, policies or entities are wrong; one entry per problem.
    #[error("{}", join(.0))]
    Policies(Vec<Located>),
}

fn join(items: &[Located]) -> String {
    items.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}

impl ConfigError {
    /// Every located problem in this error.
    pub fn locations(&self) -> Vec<Located> {
        match self {
            ConfigError::Syntax(l) | ConfigError::Invalid(l) => vec![l.clone()],
            ConfigError::Read { file, message } => vec![Located::new(file.clone(), 1, message.clone())],
            ConfigError::Policies(v) => v.clone(),
        }
    }
}
