//! The checking kit every section's validation shares: [`Checker`], which collects
//! errors and warnings with their file, line and key path, and the value checkers
//! (addresses, CIDRs, header names, methods, regexes, sizes, `${VAR}` expansion,
//! secret files).
//!
//! It stands under every section module and imports only [`super::error`],
//! [`super::locate`] and [`super::raw`], so any section can use it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;

use http::{HeaderName, Method};
use ipnet::IpNet;
use regex::RegexBuilder;

use super::error::{ConfigError, ConfigWarning, KeyPath};
use super::locate::LineIndex;
use super::raw::{Lenient, RawSize};

/// Collects errors and warnings with their locations.
pub struct Checker<'a> {
    file: &'a Path,
    index: &'a LineIndex,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<ConfigWarning>,
}

impl<'a> Checker<'a> {
    pub fn new(file: &'a Path, index: &'a LineIndex) -> Self {
        Checker {
            file,
            index,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub fn err(&mut self, path: &KeyPath, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            line: self.index.line_of(path),
            path: path.clone(),
            message: message.into(),
        });
    }

    pub fn warn(&mut self, path: &KeyPath, message: impl Into<String>) {
        self.warnings.push(ConfigWarning {
            line: self.index.line_of(path),
            path: path.to_string(),
            message: message.into(),
        });
    }

    /// Unwraps a lenient item, recording its deserialization error under `at`.
    pub fn take<T>(&mut self, at: &KeyPath, item: Lenient<T>) -> Option<T> {
        match item {
            Lenient::Ok(t) => Some(t),
            Lenient::Err { path, message } => {
                self.err(&at.join(&path), message);
                None
            }
        }
    }
}

/// Parses `host:port`, resolving names once at load time (never on the request path).
pub fn socket_addr(c: &mut Checker, at: &KeyPath, s: &str) -> Option<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    match s.to_socket_addrs().map(|mut it| it.next()) {
        Ok(Some(a)) => Some(a),
        _ => {
            c.err(at, format!("{s:?} is not an address of the form host:port"));
            None
        }
    }
}

pub fn cidrs(c: &mut Checker, at: &KeyPath, list: &[String]) -> Vec<IpNet> {
    let mut out = Vec::new();
    for (i, s) in list.iter().enumerate() {
        if let Ok(net) = s.parse::<IpNet>() {
            out.push(net.trunc());
        } else if let Ok(ip) = s.parse::<IpAddr>() {
            out.push(IpNet::from(ip));
        } else {
            c.err(&at.index(i), format!("{s:?} is not an IP address or CIDR"));
        }
    }
    out
}

pub fn header_name(c: &mut Checker, at: &KeyPath, s: &str) -> Option<HeaderName> {
    match HeaderName::from_bytes(s.trim().to_ascii_lowercase().as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            c.err(at, format!("{s:?} is not a valid header name"));
            None
        }
    }
}

pub fn method(c: &mut Checker, at: &KeyPath, s: &str) -> Option<Method> {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    let up = s.trim().to_ascii_uppercase();
    if !KNOWN.contains(&up.as_str()) {
        c.err(at, format!("unknown HTTP method {s:?}"));
        return None;
    }
    Method::from_bytes(up.as_bytes()).ok()
}

pub fn regex(c: &mut Checker, at: &KeyPath, s: &str) -> Option<regex::Regex> {
    // Bounded compiled size: a config regex must not become a memory bomb.
    match RegexBuilder::new(s).size_limit(1 << 20).build() {
        Ok(r) => Some(r),
        Err(e) => {
            c.err(at, format!("invalid regex: {e}"));
            None
        }
    }
}

/// Returns the set of names that appear more than once.
pub fn duplicates<'s>(names: impl Iterator<Item = &'s str>) -> Vec<&'s str> {
    let mut seen = HashMap::new();
    let mut dups = Vec::new();
    for n in names {
        let count = seen.entry(n).or_insert(0);
        *count += 1;
        if *count == 2 {
            dups.push(n);
        }
    }
    dups
}

pub fn parse_size(c: &mut Checker, at: &KeyPath, s: &RawSize) -> Option<u64> {
    let text = match s {
        RawSize::Bytes(n) => return Some(*n),
        RawSize::Text(t) => t.trim(),
    };
    let split = text
        .find(|ch: char| !ch.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1024,
        "m" | "mb" => 1_000_000,
        "mib" => 1024 * 1024,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1024 * 1024 * 1024,
        _ => {
            c.err(
                at,
                format!("{text:?} is not a size (e.g. 512KiB, 10MB, 1048576)"),
            );
            return None;
        }
    };
    match num.parse::<u64>().ok().and_then(|n| n.checked_mul(mult)) {
        Some(n) => Some(n),
        None => {
            c.err(
                at,
                format!("{text:?} is not a size (e.g. 512KiB, 10MB, 1048576)"),
            );
            None
        }
    }
}

/// Expands `${VAR}` and `${VAR:-default}` (e.g. `${GALION_DATA_DIR:-./data}/certs`).
pub fn expand_env(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed ${{ in {s:?}"))?;
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        match (std::env::var(name).ok().filter(|v| !v.is_empty()), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => return Err(format!("environment variable {name} is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Reads a secret file, refusing files readable by group or others.
pub fn read_private_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{}: secret file must not be readable by group or others (chmod 600)",
            path.display()
        ));
    }
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(String::from_utf8_lossy(&data).trim().as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_expansion() {
        assert_eq!(
            expand_env("a/${GALION_SURELY_UNSET_VAR:-./data}/b").as_deref(),
            Ok("a/./data/b")
        );
        assert!(expand_env("${GALION_SURELY_UNSET_VAR}").is_err());
        assert!(expand_env("${OOPS").is_err());
        assert_eq!(expand_env("plain").as_deref(), Ok("plain"));
    }
}
