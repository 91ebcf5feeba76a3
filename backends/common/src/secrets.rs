//! Secrets (service token, key-encryption key, HS256 secret): read from an
//! environment variable or from a file whose permissions must be 0600/0400.
//!
//! In dev mode a missing secret is generated once into the data directory
//! (mode 0600) so `./dev.sh` needs no setup; production refuses to start.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use rand::RngCore;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{name} is not set (set {name} or {name}_FILE)")]
    Missing { name: String },
    #[error("secret file {path} has mode {mode:o}: it must not be readable by group or others (chmod 600)")]
    LoosePermissions { path: String, mode: u32 },
    #[error("cannot read secret file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("secret file {path} is empty")]
    Empty { path: String },
    #[error("cannot create secret file {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
}

/// Creates a directory (and parents) readable only by the owner: the data
/// dir holds the database and dev secrets.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// Reads a secret file, refusing group/other permissions.
pub fn read_secret_file(path: &Path) -> Result<String, SecretError> {
    let shown = path.display().to_string();
    let meta = fs::metadata(path).map_err(|source| SecretError::Read {
        path: shown.clone(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretError::LoosePermissions { path: shown, mode });
    }
    let raw = fs::read_to_string(path).map_err(|source| SecretError::Read {
        path: shown.clone(),
        source,
    })?;
    let value = raw.trim().to_string();
    if value.is_empty() {
        return Err(SecretError::Empty { path: shown });
    }
    Ok(value)
}

/// The secret from `value` (an env var's content) or else from `file`.
pub fn resolve(value: Option<String>, file: Option<&Path>) -> Result<Option<String>, SecretError> {
    if let Some(v) = value
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
    {
        return Ok(Some(v));
    }
    match file {
        Some(path) => read_secret_file(path).map(Some),
        None => Ok(None),
    }
}

/// 32 random bytes, base64url without padding.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Reads `path`, or creates it with a fresh random token (mode 0600).
///
/// Creation is atomic (write a temporary file, then hard-link it into place)
/// so services starting together agree on one value.
pub fn dev_secret(path: &Path) -> Result<(String, bool), SecretError> {
    if path.exists() {
        return read_secret_file(path).map(|s| (s, false));
    }
    let shown = path.display().to_string();
    let create_err = |source| SecretError::Create {
        path: shown.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        create_private_dir(dir).map_err(create_err)?;
    }
    let tmp: PathBuf = path.with_extension(format!("tmp{}", std::process::id()));
    let token = random_token();
    write_private_file(&tmp, token.as_bytes()).map_err(create_err)?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok((token, true)),
        // Another process won the race: use its value.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read_secret_file(path).map(|s| (s, false))
        }
        Err(e) => Err(create_err(e)),
    }
}

/// Writes `bytes` to `path`, created or truncated, with mode 0600 (also when
/// a leftover file had another: `mode` applies only to a new one), and syncs
/// it. Callers write a temporary name and rename or link it into place.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn refuses_loose_files_and_creates_dev_secrets() {
        let dir = std::env::temp_dir().join(format!("galion-secret-{}", random_token()));
        fs::create_dir_all(&dir).unwrap();
        let loose = dir.join("loose");
        fs::write(&loose, "x").unwrap();
        fs::set_permissions(&loose, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            read_secret_file(&loose),
            Err(SecretError::LoosePermissions { .. })
        ));
        fs::set_permissions(&loose, fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(read_secret_file(&loose).unwrap(), "x");

        let gen = dir.join("token");
        let (a, created) = dev_secret(&gen).unwrap();
        assert!(created);
        let (b, created) = dev_secret(&gen).unwrap();
        assert!(!created);
        assert_eq!(a, b);
        assert_eq!(
            fs::metadata(&gen).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
