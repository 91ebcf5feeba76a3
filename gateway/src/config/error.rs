//! Configuration errors (and warnings) that point at the offending place: file, line
//! and key path.
//!
//! Operators read these in a terminal (`galion-gateway check`) or in the log after a
//! refused reload, so every message names where to look, e.g.
//! `conf/gateway.yaml:41: hosts."galion.app".routes[2].upstream: unknown upstream "usres"`.

use std::fmt;
use std::path::{Path, PathBuf};

/// One segment of a key path inside the YAML document.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A key path such as `hosts."galion.app".routes[2].upstream`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }

    pub fn key(&self, k: &str) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Key(k.to_owned()));
        KeyPath(v)
    }

    pub fn index(&self, i: usize) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Index(i));
        KeyPath(v)
    }

    pub fn join(&self, other: &KeyPath) -> Self {
        let mut v = self.0.clone();
        v.extend(other.0.iter().cloned());
        KeyPath(v)
    }

    pub fn parent(&self) -> Option<KeyPath> {
        if self.0.is_empty() {
            None
        } else {
            Some(KeyPath(self.0[..self.0.len() - 1].to_vec()))
        }
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(top level)");
        }
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Index(n) => write!(f, "[{n}]")?,
                Seg::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    let plain = !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if plain {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// A single problem found in a configuration file.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub path: KeyPath,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": {}: {}", self.path, self.message)
    }
}

/// Every error of one file, reported together.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// A whole-file problem (unreadable file, YAML syntax) without a key path.
    pub fn file_level(file: &Path, line: Option<usize>, message: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigError {
            file: file.to_owned(),
            line,
            path: KeyPath::root(),
            message: message.into(),
        }])
    }
}

/// A non-fatal finding (e.g. a route that can never match).
#[derive(Debug, Clone)]
pub struct ConfigWarning {
    pub line: Option<usize>,
    pub path: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_quote_dotted_keys() {
        let p = KeyPath::root()
            .key("hosts")
            .key("galion.app")
            .key("routes")
            .index(2)
            .key("upstream");
        assert_eq!(p.to_string(), r#"hosts."galion.app".routes[2].upstream"#);
    }
}
