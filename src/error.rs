//! One error type for the library; every variant names the file, line or parameter at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{path}:{line}: {message}")]
    DataLine {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("parameter `{name}`: {message}")]
    Param { name: String, message: String },
    #[error("model: {0}")]
    Model(String),
    #[error("numerical: {0}")]
    Numerical(String),
    /// A stop was requested ([`crate::model::stop::StopFlag`]), e.g. by Ctrl-C in Python.
    #[error("interrupted")]
    Interrupted,
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::File {
            path: path.into(),
            message: message.into(),
        }
    }
    pub fn line(path: impl Into<PathBuf>, line: usize, message: impl Into<String>) -> Self {
        Error::DataLine {
            path: path.into(),
            line,
            message: message.into(),
        }
    }
    pub fn param(name: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Param {
            name: name.into(),
            message: message.into(),
        }
    }
}

/// `x` is finite and > 0; otherwise an error naming `name` (range checks of spec fields).
pub fn positive(name: &str, x: f64) -> Result<()> {
    if x.is_finite() && x > 0.0 {
        Ok(())
    } else {
        Err(Error::param(
            name,
            format!("must be a finite number > 0, got {x}"),
        ))
    }
}

/// `x` is finite and >= 0; otherwise an error naming `name`.
pub fn non_negative(name: &str, x: f64) -> Result<()> {
    if x.is_finite() && x >= 0.0 {
        Ok(())
    } else {
        Err(Error::param(
            name,
            format!("must be a finite number >= 0, got {x}"),
        ))
    }
}

/// `n` >= 1; otherwise an error naming `name`.
pub fn at_least_one(name: &str, n: usize) -> Result<()> {
    if n >= 1 {
        Ok(())
    } else {
        Err(Error::param(name, "must be at least 1"))
    }
}

/// `s` as the one value of `all` whose `name` it is; otherwise an error naming `param` and
/// every allowed spelling (`expected a, b or c`). The enums' spellings then live only in their
/// `name` functions.
pub fn parse_named<T: Copy>(
    param: &str,
    s: &str,
    all: &[T],
    name: impl Fn(T) -> &'static str,
) -> Result<T> {
    if let Some(&v) = all.iter().find(|&&v| name(v) == s) {
        return Ok(v);
    }
    let names: Vec<&str> = all.iter().map(|&v| name(v)).collect();
    let expected = match names.split_last() {
        Some((last, [])) => (*last).to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    };
    Err(Error::param(param, format!("`{s}`: expected {expected}")))
}
