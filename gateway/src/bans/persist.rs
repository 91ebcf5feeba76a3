//! Single-node persistence of bans and offence counts: one JSON file in the state
//! directory, replaced atomically (write, fsync, rename) and readable by the owner
//! only. Expired bans are not restored.

use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::jails::Offence;
use super::table::Ban;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    pub bans: Vec<Ban>,
    #[serde(default)]
    pub offences: Vec<SavedOffence>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SavedOffence {
    pub jail: String,
    pub target: IpNet,
    #[serde(flatten)]
    pub offence: Offence,
}

pub fn file(dir: &Path) -> PathBuf {
    dir.join("bans.json")
}

pub fn save(dir: &Path, state: &State) -> std::io::Result<()> {
    let data = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    crate::private_file::write(&file(dir), &data)
}

/// Reads the saved state; a missing file is an empty state, a corrupt one is an
/// error (the caller logs it and starts empty rather than refusing to start).
pub fn load(dir: &Path) -> Result<State, String> {
    let path = file(dir);
    match std::fs::read(&path) {
        Ok(data) => serde_json::from_slice(&data).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}
