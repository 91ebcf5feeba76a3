//! Validation of `tls:`: certificates are loaded (and checked against their keys)
//! while the file is validated, so a bad certificate refuses the whole reload.

use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::error::KeyPath;
use super::raw::RawTls;
use super::types::TlsConfig;
use super::validate::Checker;

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

pub fn tls_of(c: &mut Checker, t: RawTls) -> TlsConfig {
    let at = KeyPath::root().key("tls");
    let mut certs = Vec::new();
    let mut default = None;
    let mut fp = Sha256::new();
    for (i, rc) in t.certificates.into_iter().enumerate() {
        let p = at.key("certificates").index(i);
        let hosts: Vec<String> = rc
            .hosts
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .collect();
        if hosts.is_empty() {
            c.err(
                &p.key("hosts"),
                "list the host names this certificate serves",
            );
        }
        let paths = expand_env(&rc.cert).and_then(|cp| Ok((cp, expand_env(&rc.key)?)));
        let (cert_path, key_path) = match paths {
            Ok(pair) => pair,
            Err(e) => {
                c.err(&p, e);
                continue;
            }
        };
        for f in [&cert_path, &key_path] {
            if let Ok(bytes) = std::fs::read(f) {
                fp.update(&bytes);
            }
        }
        match crate::tls::certs::load(&PathBuf::from(&cert_path), &PathBuf::from(&key_path), hosts)
        {
            Ok(loaded) => {
                if rc.default {
                    if default.is_some() {
                        c.err(&p.key("default"), "only one certificate can be the default");
                    }
                    default = Some(certs.len());
                }
                certs.push(Arc::new(loaded));
            }
            Err(e) => c.err(&p.key("cert"), e),
        }
    }
    let acme_webroot = match t.acme_webroot.map(|w| expand_env(&w)) {
        Some(Ok(w)) => Some(PathBuf::from(w)),
        Some(Err(e)) => {
            c.err(&at.key("acme_webroot"), e);
            None
        }
        None => None,
    };
    TlsConfig {
        certs,
        default,
        acme_webroot,
        redirect_http: t.redirect_http.unwrap_or(true),
        fingerprint: hex::encode(fp.finalize()),
    }
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
