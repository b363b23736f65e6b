//! The node's configuration file (YAML), documented field by field in
//! `docs/configuration.md`.
//!
//! Loading is all-or-nothing: the file is parsed, every field type-checked while it is
//! deserialised (addresses, prefixes, MACs, enums — serde reports their line), then checked
//! as a whole (names unique, references resolve); only a file that passes everything is
//! turned into tables. Every error names the file, the line and the field, and says what is
//! allowed.

pub mod locate;
pub mod neigh;
mod overlay;
pub mod reliability;
pub mod services;
mod types;

pub use overlay::*;
pub use types::*;

use std::fmt;
use std::path::{Path, PathBuf};

/// Largest configuration file accepted; a node's file is kilobytes, a bigger one is a mistake.
pub const MAX_CONFIG_BYTES: usize = 64 << 20;

/// A configuration error: where, which field, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    /// Path of the field, e.g. `ports[1].device`; empty for whole-file errors.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// All the errors found in one file (validation does not stop at the first).
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let whole = |message: String| {
            ConfigErrors(vec![ConfigError {
                file: path.into(),
                line: None,
                field: String::new(),
                message,
            }])
        };
        let meta = std::fs::metadata(path).map_err(|e| whole(format!("cannot read: {e}")))?;
        if meta.len() as usize > MAX_CONFIG_BYTES {
            return Err(whole(format!(
                "file is {} bytes; the limit is {MAX_CONFIG_BYTES}",
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| whole(format!("cannot read: {e}")))?;
        Config::parse(&text, path)
    }

    /// Parses and validates `text`; `file` is only used in error messages.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigErrors> {
        if text.len() > MAX_CONFIG_BYTES {
            return Err(ConfigErrors(vec![ConfigError {
                file: file.into(),
                line: None,
                field: String::new(),
                message: format!(
                    "document is {} bytes; the limit is {MAX_CONFIG_BYTES}",
                    text.len()
                ),
            }]));
        }
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.inner();
            let line = inner
                .location()
                .map(|l| l.line())
                .or_else(|| locate::line_of(text, &field));
            // serde_yaml_ng appends its own position; we print ours in front instead.
            let mut message = inner.to_string();
            if let Some(i) = message.find(" at line ") {
                message.truncate(i);
            }
            // ...and its own rendering of the path in front: we print the full one.
            if let Some((head, rest)) = message.split_once(": ")
                && !head.contains(' ')
            {
                message = rest.to_string();
            }
            let field = if field == "." { String::new() } else { field };
            ConfigErrors(vec![ConfigError {
                file: file.into(),
                line,
                field,
                message,
            }])
        })?;
        let problems = config.validate();
        if problems.is_empty() {
            return Ok(config);
        }
        Err(ConfigErrors(
            problems
                .into_iter()
                .map(|(field, message)| ConfigError {
                    file: file.into(),
                    line: locate::line_of(text, &field),
                    field,
                    message,
                })
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests;
