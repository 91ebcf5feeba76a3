//! Certificates by host name, chosen per handshake from the SNI.
//!
//! The store is an `ArcSwap` of an immutable table (exact names, wildcards, a
//! default), replaced on reload: new handshakes see new certificates at once, open
//! connections keep the one they negotiated.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// One loaded certificate with what operators need to know about it.
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// Unix seconds of `notBefore` and `notAfter` of the leaf.
    pub not_before: i64,
    pub not_after: i64,
    /// A self-signed stand-in served until the ACME certificate arrives.
    pub placeholder: bool,
    pub hosts: Vec<String>,
    /// The certificate and key files (watched for renewals).
    pub files: Vec<std::path::PathBuf>,
}

impl fmt::Debug for LoadedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedCert")
            .field("hosts", &self.hosts)
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// Reads a PEM chain and key and checks that they belong together.
pub fn load(cert: &Path, key: &Path, hosts: Vec<String>) -> Result<LoadedCert, String> {
    let (Some(cert_s), Some(key_s)) = (cert.to_str(), key.to_str()) else {
        return Err("certificate paths must be UTF-8".into());
    };
    let (chain, key_der) = match pingora::tls::load_certs_and_key_files(cert_s, key_s) {
        Ok(Some(pair)) => pair,
        Ok(None) => {
            return Err(format!(
                "{} / {}: no certificate or no private key found in PEM",
                cert.display(),
                key.display()
            ))
        }
        Err(e) => return Err(format!("{}: {e}", cert.display())),
    };
    let mut loaded = from_der(chain, &key_der, hosts)
        .map_err(|e| format!("{} / {}: {e}", cert.display(), key.display()))?;
    loaded.files = vec![absolute(cert), absolute(key)];
    Ok(loaded)
}

/// A chain and key already in memory (from the ACME CA or a cluster peer).
pub fn from_pem(chain_pem: &str, key_pem: &str, hosts: Vec<String>) -> Result<LoadedCert, String> {
    let chain = rustls_pemfile::certs(&mut chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate chain: {e}"))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| format!("private key: {e}"))?
        .ok_or("no private key in PEM")?;
    if chain.is_empty() {
        return Err("no certificate in PEM".into());
    }
    from_der(chain, &key, hosts)
}

/// A self-signed stand-in for `names`, served until the real certificate
/// arrives (an ACME order, or a file not written yet), so that a handshake gets
/// an answer a browser can explain rather than a reset.
pub fn placeholder(names: &[String]) -> Result<LoadedCert, String> {
    let first = names
        .first()
        .ok_or("a certificate needs at least one host name")?;
    let err = |e: rcgen::Error| e.to_string();
    let mut p = rcgen::CertificateParams::new(names.to_vec()).map_err(err)?;
    p.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("{first} (waiting for its certificate)"),
    );
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let cert = p.self_signed(&key).map_err(err)?;
    let mut loaded = from_pem(&cert.pem(), &key.serialize_pem(), names.to_vec())?;
    loaded.placeholder = true;
    Ok(loaded)
}

fn from_der(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key_der: &rustls::pki_types::PrivateKeyDer<'_>,
    hosts: Vec<String>,
) -> Result<LoadedCert, String> {
    let signing = rustls::crypto::ring::sign::any_supported_type(key_der)
        .map_err(|e| format!("unsupported private key: {e}"))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match()
        .map_err(|e| format!("the key does not match the certificate: {e}"))?;
    let (not_before, not_after) = {
        let leaf = ck.end_entity_cert().map_err(|e| e.to_string())?;
        let (_, x509) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let v = x509.validity();
        (v.not_before.timestamp(), v.not_after.timestamp())
    };
    Ok(LoadedCert {
        key: Arc::new(ck),
        not_before,
        not_after,
        placeholder: false,
        hosts,
        files: Vec::new(),
    })
}

pub fn absolute(p: &Path) -> std::path::PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

#[derive(Default)]
struct Table {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// (suffix with the leading dot, cert), longest first.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    default: Option<Arc<CertifiedKey>>,
}

#[derive(Default)]
pub struct CertStore {
    table: ArcSwap<Table>,
    /// Certificates ordered by the gateway (exact names), kept across reloads:
    /// a reload replaces the file certificates only.
    acme: ArcSwap<HashMap<String, Arc<LoadedCert>>>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CertStore")
    }
}

impl CertStore {
    /// Replaces the table. The first certificate is the default unless one is marked.
    pub fn replace(&self, certs: &[Arc<LoadedCert>], default: Option<usize>) {
        let mut t = Table::default();
        for c in certs {
            for h in &c.hosts {
                match h.strip_prefix('*') {
                    Some(suffix) => t.wildcard.push((suffix.to_owned(), c.key.clone())),
                    None => {
                        t.exact.insert(h.clone(), c.key.clone());
                    }
                }
            }
        }
        t.wildcard.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        t.default = certs.get(default.unwrap_or(0)).map(|c| c.key.clone());
        self.table.store(Arc::new(t));
    }

    /// Installs (or replaces) the ACME certificate of `cert.hosts`.
    pub fn set_acme(&self, cert: Arc<LoadedCert>) {
        self.acme.rcu(|m| {
            let mut m = HashMap::clone(m);
            for h in &cert.hosts {
                m.insert(h.clone(), cert.clone());
            }
            m
        });
    }

    /// Drops the ACME certificates of names no longer configured.
    pub fn retain_acme(&self, keep: &dyn Fn(&str) -> bool) {
        if self.acme.load().keys().all(|k| keep(k)) {
            return;
        }
        self.acme.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.retain(|k, _| keep(k));
            m
        });
    }

    /// The ACME certificate serving `name`.
    pub fn acme(&self, name: &str) -> Option<Arc<LoadedCert>> {
        self.acme.load().get(name).cloned()
    }

    /// Every ACME certificate, once each.
    pub fn acme_certs(&self) -> Vec<Arc<LoadedCert>> {
        let mut v: Vec<Arc<LoadedCert>> = Vec::new();
        for c in self.acme.load().values() {
            if !v.iter().any(|x| Arc::ptr_eq(x, c)) {
                v.push(c.clone());
            }
        }
        v
    }

    pub fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let t = self.table.load();
        if let Some(name) = sni {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(c) = t.exact.get(&name) {
                return Some(c.clone());
            }
            if let Some(c) = self.acme.load().get(&name) {
                return Some(c.key.clone());
            }
            if let Some((_, c)) = t
                .wildcard
                .iter()
                .find(|(s, _)| name.len() > s.len() && name.ends_with(s.as_str()))
            {
                return Some(c.clone());
            }
        }
        t.default.clone()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_placeholder_stands_in_for_named_hosts_only() {
        assert!(placeholder(&[]).is_err());
        let p = placeholder(&["galion.app".to_owned(), "www.galion.app".to_owned()]).unwrap();
        assert!(p.placeholder);
    }
}
