//! The loader's and the validator's errors: [`ConfigError`], one [`Problem`] per key, and the
//! [`Origin`] of a value.

use std::fmt;
use std::path::PathBuf;

use super::env::SECTIONS;

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The built-in default.
    Default,
    /// The configuration file.
    File(PathBuf),
    /// An environment variable.
    Env(String),
    /// A command-line flag (`--name`).
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File(p) => write!(f, "file {}", p.display()),
            Origin::Env(v) => write!(f, "env {v}"),
            Origin::Flag(n) => write!(f, "flag {n}"),
        }
    }
}

/// One validation problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `section.key`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Configuration errors. Every value error names its key and where the value came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file given with `--config` / `HEADCNI_CONFIG` does not exist.
    #[error("config file {path} does not exist")]
    NotFound {
        /// The file.
        path: PathBuf,
    },
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A value has the wrong type or format.
    #[error("invalid value for {key} (from {origin}): {message}")]
    InvalidValue {
        /// `section.key` (or `section` when the section itself is not a table).
        key: String,
        /// Where the bad value came from.
        origin: Origin,
        /// What is wrong.
        message: String,
    },
    /// The file has a section this version does not know (e.g. a misspelled `[daemonx]`).
    #[error(
        "unknown section [{section}] in config file {path} (known: {}): a misspelled section \
         would silently drop every key under it",
        SECTIONS.join(", ")
    )]
    UnknownSection {
        /// The section's name.
        section: String,
        /// The file.
        path: PathBuf,
    },
    /// Several problems: values that do not parse, unknown sections (when there is more
    /// than one), or values that are well-formed but not usable together.
    #[error("invalid configuration: {}", problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid {
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The key a value or validation error is about (the first one for [`ConfigError::Invalid`]).
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::InvalidValue { key, .. } => Some(key),
            ConfigError::UnknownSection { section, .. } => Some(section),
            ConfigError::Invalid { problems } => problems.first().map(|p| p.key.as_str()),
            _ => None,
        }
    }
}

impl ConfigError {
    /// This error as one [`Problem`] (its key, and the rest of the message).
    pub(super) fn to_problem(&self) -> Problem {
        match self {
            ConfigError::InvalidValue {
                key,
                origin,
                message,
            } => Problem {
                key: key.clone(),
                message: format!("invalid value (from {origin}): {message}"),
            },
            ConfigError::UnknownSection { section, .. } => Problem {
                key: format!("[{section}]"),
                message: self.to_string(),
            },
            other => Problem {
                key: String::new(),
                message: other.to_string(),
            },
        }
    }

    /// One error for a list of load errors: the error itself when there is one, else
    /// [`ConfigError::Invalid`] with all of them.
    pub(super) fn collect(mut errors: Vec<ConfigError>) -> Option<ConfigError> {
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            _ => Some(ConfigError::Invalid {
                problems: errors.iter().map(ConfigError::to_problem).collect(),
            }),
        }
    }
}
