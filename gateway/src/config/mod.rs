//! Gateway configuration: one YAML file, parsed in two stages.
//!
//! [`raw`] mirrors the YAML with serde (`deny_unknown_fields`), [`validate`] turns it
//! into the typed [`types::Config`] and reports every problem with file, line and key
//! path ([`error`], [`locate`]). Nothing downstream re-validates.
//!
//! The modules stand in layers, each importing only those below it: `error` and
//! `locate`; the serde mirrors (`raw`, `raw_protect`); `check` (the checker and the
//! value checkers); the sections, each with its validated types and their validation
//! (`policy`, `protect`, `shaping`, `statics`, `trust`, `tls`, `upstream`, `hosts`, the last
//! using some of the others); `types`, which hands every validated type on; and
//! `validate`, which runs them all.

mod check;
pub mod error;
mod hosts;
pub mod locate;
pub mod policy;
pub mod protect;
pub mod raw;
mod raw_protect;
pub mod shaping;
pub mod statics;
pub(crate) mod tls;
pub mod trust;
pub mod types;
mod upstream;
pub mod validate;

use std::path::Path;

use sha2::{Digest, Sha256};

pub use error::{ConfigError, ConfigErrors, KeyPath};
pub use types::*;

/// A validated configuration and the warnings found on the way.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<ConfigWarning>,
}

/// Reads and validates a configuration file.
pub fn load_file(path: &Path) -> Result<Loaded, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::file_level(path, None, format!("cannot read: {e}")))?;
    load_str(&text, path)
}

/// Validates configuration text; `path` is only used in messages.
pub fn load_str(text: &str, path: &Path) -> Result<Loaded, ConfigErrors> {
    if text.trim().is_empty() {
        return Err(ConfigErrors::file_level(path, None, "the file is empty"));
    }
    let content_hash = hex::encode(Sha256::digest(text.as_bytes()));
    let raw: raw::RawConfig = serde_norway::from_str(text).map_err(|e| {
        let line = e.location().map(|l| l.line());
        ConfigErrors::file_level(path, line, e.to_string())
    })?;
    let index = locate::LineIndex::build(text);
    let (config, warnings) = validate::validate(raw, path, &index, content_hash)?;
    Ok(Loaded { config, warnings })
}

#[cfg(test)]
mod tests;
