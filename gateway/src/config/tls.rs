//! Validation of `tls:`: certificates are loaded (and checked against their keys)
//! while the file is validated, so a bad certificate refuses the whole reload.
//! The [`TlsConfig`] it yields is defined here too.

use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::check::{expand_env, Checker};
use super::error::KeyPath;
use super::raw::RawTls;

#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    pub certs: Vec<std::sync::Arc<crate::tls::certs::LoadedCert>>,
    pub default: Option<usize>,
    pub acme_webroot: Option<PathBuf>,
    pub redirect_http: bool,
    /// SHA-256 over every certificate and key file: a reload applies when it changes.
    pub fingerprint: String,
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
