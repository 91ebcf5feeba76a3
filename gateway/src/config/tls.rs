//! Validation of `tls:`: certificates are loaded (and checked against their keys)
//! while the file is validated, so a bad certificate refuses the whole reload.
//! The [`TlsConfig`] it yields is defined here too.

use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::check::{expand_env, Checker};
use super::error::KeyPath;
use super::hosts::HostConfig;
use super::raw::{RawAcme, RawTls};
use super::types::Listen;

#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    pub certs: Vec<std::sync::Arc<crate::certs::LoadedCert>>,
    pub default: Option<usize>,
    pub acme_webroot: Option<PathBuf>,
    /// Certificates ordered by the gateway itself.
    pub acme: Option<AcmeConfig>,
    pub redirect_http: bool,
    /// SHA-256 over every certificate and key file: a reload applies when it changes.
    pub fingerprint: String,
}

/// How the CA checks that we control a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// A token at `http://NAME/.well-known/acme-challenge/` (port 80).
    Http01,
    /// A handshake with ALPN `acme-tls/1` on the HTTPS port (443).
    TlsAlpn01,
}

impl AcmeChallenge {
    /// The name the configuration and RFC 8555 use.
    pub fn as_str(self) -> &'static str {
        match self {
            AcmeChallenge::Http01 => "http-01",
            AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeConfig {
    /// `mailto:` URIs.
    pub contact: Vec<String>,
    pub directory: String,
    pub ca_root: Option<PathBuf>,
    pub challenge: AcmeChallenge,
    /// One certificate per entry: the host's name first, then its aliases.
    pub certs: Vec<Vec<String>>,
    /// The account and the certificates: `<store.state_dir>/acme`.
    pub dir: PathBuf,
}

pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// Validates `tls.acme` against the hosts, listeners and state directory.
pub fn acme_of(
    c: &mut Checker,
    a: RawAcme,
    hosts: &[HostConfig],
    listen: &Listen,
    state_dir: Option<&std::path::Path>,
    tls: &TlsConfig,
) -> Option<AcmeConfig> {
    let at = KeyPath::root().key("tls").key("acme");
    let errors = c.errors.len();
    let directory = match (a.directory, a.staging) {
        (Some(_), true) => {
            c.err(
                &at.key("staging"),
                "set either directory or staging, not both",
            );
            String::new()
        }
        (Some(d), false) => match expand_env(&d) {
            Ok(d) if d.starts_with("https://") => d,
            Ok(_) => {
                c.err(
                    &at.key("directory"),
                    "the ACME directory must be an https:// URL",
                );
                String::new()
            }
            Err(e) => {
                c.err(&at.key("directory"), e);
                String::new()
            }
        },
        (None, true) => LETS_ENCRYPT_STAGING.to_owned(),
        (None, false) => LETS_ENCRYPT.to_owned(),
    };
    let mut contact = Vec::new();
    if let Some(e) = a.email {
        let e = e.trim();
        match e.split_once('@') {
            Some((user, domain))
                if !user.is_empty() && domain.contains('.') && !e.contains(' ') =>
            {
                contact.push(format!("mailto:{e}"))
            }
            _ => c.err(&at.key("email"), format!("`{e}` is not an email address")),
        }
    }
    let ca_root = a.ca_root.and_then(|p| match expand_env(&p) {
        Ok(p) if std::path::Path::new(&p).is_file() => Some(PathBuf::from(p)),
        Ok(p) => {
            c.err(&at.key("ca_root"), format!("{p}: no such file"));
            None
        }
        Err(e) => {
            c.err(&at.key("ca_root"), e);
            None
        }
    });
    let challenge = match a.challenge.as_deref() {
        Some("http-01") => AcmeChallenge::Http01,
        Some("tls-alpn-01") => AcmeChallenge::TlsAlpn01,
        None if listen.http.is_some() => AcmeChallenge::Http01,
        None => AcmeChallenge::TlsAlpn01,
        Some(other) => {
            c.err(
                &at.key("challenge"),
                format!("`{other}`: expected http-01 or tls-alpn-01"),
            );
            AcmeChallenge::Http01
        }
    };
    if challenge == AcmeChallenge::Http01 && listen.http.is_none() {
        c.err(
            &at.key("challenge"),
            "http-01 is answered on the HTTP listener: set listen.http (port 80) or use tls-alpn-01",
        );
    }
    if listen.https.is_none() {
        c.err(
            &at,
            "ACME certificates need an HTTPS listener (listen.https)",
        );
    }
    let file_names: std::collections::HashSet<&str> = tls
        .certs
        .iter()
        .flat_map(|c| c.hosts.iter().map(String::as_str))
        .collect();
    let mut certs = Vec::new();
    if a.hosts.is_empty() {
        c.err(&at.key("hosts"), "list the hosts that get a certificate");
    }
    for (i, name) in a.hosts.iter().enumerate() {
        let p = at.key("hosts").index(i);
        let name = name.trim().to_ascii_lowercase();
        let Some(h) = hosts.iter().find(|h| h.name == name) else {
            c.err(&p, format!("`{name}` is not a key of hosts:"));
            continue;
        };
        let names: Vec<String> = std::iter::once(h.name.clone())
            .chain(h.aliases.iter().cloned())
            .collect();
        for n in &names {
            if n.contains('*') {
                c.err(
                    &p,
                    format!("`{n}`: a wildcard needs the DNS-01 challenge; use a file certificate"),
                );
            } else if !n.contains('.') || n.parse::<std::net::IpAddr>().is_ok() {
                c.err(
                    &p,
                    format!("`{n}`: ACME certificates are for public DNS names"),
                );
            } else if file_names.contains(n.as_str()) {
                c.err(
                    &p,
                    format!("`{n}` also has a file certificate under tls.certificates: keep one"),
                );
            }
        }
        if certs.iter().any(|c: &Vec<String>| c[0] == names[0]) {
            c.err(&p, format!("`{name}` is listed twice"));
        }
        certs.push(names);
    }
    let dir = match state_dir {
        Some(d) => d.join("acme"),
        None => {
            c.err(
                &at,
                "the account and certificates are kept in store.state_dir (or GALION_DATA_DIR): set one",
            );
            PathBuf::new()
        }
    };
    (c.errors.len() == errors).then_some(AcmeConfig {
        contact,
        directory,
        ca_root,
        challenge,
        certs,
        dir,
    })
}

/// Validates `tls:`; `tls.acme` is returned as it is, for [`acme_of`] once the
/// hosts are known.
pub fn tls_of(c: &mut Checker, t: RawTls) -> (TlsConfig, Option<RawAcme>) {
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
        let missing: Vec<&String> = [&cert_path, &key_path]
            .into_iter()
            .filter(|f| {
                std::fs::metadata(f).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
            })
            .collect();
        let loaded = if missing.is_empty() {
            crate::certs::load(&PathBuf::from(&cert_path), &PathBuf::from(&key_path), hosts)
        } else if hosts.is_empty() {
            // Refused above: a placeholder needs a name to stand in for.
            continue;
        } else {
            // certbot's first issuance needs the gateway running: serve a
            // placeholder and load the files when they appear (reload service).
            c.warn(
                &p.key("cert"),
                format!(
                    "{} not there yet: these hosts get a self-signed placeholder until it appears",
                    missing
                        .iter()
                        .map(|f| f.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            crate::certs::placeholder(&hosts).map(|mut l| {
                l.files = [&cert_path, &key_path]
                    .map(|f| crate::certs::absolute(std::path::Path::new(f)))
                    .to_vec();
                l
            })
        };
        match loaded {
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
    (
        TlsConfig {
            certs,
            default,
            acme_webroot,
            acme: None,
            redirect_http: t.redirect_http.unwrap_or(true),
            fingerprint: hex::encode(fp.finalize()),
        },
        t.acme,
    )
}
