//! Automatic certificates (RFC 8555): the ACME account, one order, the answers
//! to the CA's challenges, and the certificates kept on disk.
//!
//! What runs when (first load, renewal at 2/3 of the lifetime, retries, the
//! cluster lock) is `services::acme`; this module does one thing at a time and
//! knows nothing of schedules or Redis.
//!
//! Layout under `<store.state_dir>/acme` (directories 0700, keys 0600):
//! `account-<directory hash>.json` (the account key, per CA directory, so staging
//! and production accounts do not mix) and `<name>/cert.pem` + `<name>/key.pem`
//! for each certificate, named after its first host.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

#[cfg(test)]
use crate::certs::placeholder;
use crate::certs::{from_pem, LoadedCert};
use crate::config::{AcmeChallenge, AcmeConfig};

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Answers to the challenges of the orders in progress.
#[derive(Default)]
pub struct Challenges {
    /// HTTP-01: token → key authorization.
    http01: RwLock<HashMap<String, String>>,
    /// TLS-ALPN-01: name → the self-signed certificate carrying the digest.
    alpn: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    /// How many TLS-ALPN-01 challenges are open: the HTTPS listener only looks
    /// at ClientHellos while this is not zero.
    alpn_open: AtomicUsize,
}

/// The process-wide challenge answers, shared by the listeners and the orderer.
pub fn challenges() -> &'static Challenges {
    static C: OnceLock<Challenges> = OnceLock::new();
    C.get_or_init(Challenges::default)
}

impl Challenges {
    pub fn http01(&self, token: &str) -> Option<String> {
        self.http01.read().ok()?.get(token).cloned()
    }

    pub fn alpn_open(&self) -> bool {
        self.alpn_open.load(Ordering::Relaxed) != 0
    }

    pub fn alpn_cert(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.alpn
            .load()
            .get(&name.trim_end_matches('.').to_ascii_lowercase())
            .cloned()
    }

    fn put_http01(&self, token: &str, key_auth: &str) {
        if let Ok(mut m) = self.http01.write() {
            m.insert(token.to_owned(), key_auth.to_owned());
        }
    }

    fn put_alpn(&self, name: &str, cert: Arc<CertifiedKey>) {
        self.alpn.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(name.to_owned(), cert.clone());
            m
        });
        self.alpn_open.fetch_add(1, Ordering::Relaxed);
    }

    fn clear(&self, http_tokens: &[String], alpn_names: &[String]) {
        if let Ok(mut m) = self.http01.write() {
            for t in http_tokens {
                m.remove(t);
            }
        }
        if !alpn_names.is_empty() {
            self.alpn.rcu(|m| {
                let mut m = HashMap::clone(m);
                for n in alpn_names {
                    m.remove(n);
                }
                m
            });
            self.alpn_open
                .fetch_sub(alpn_names.len(), Ordering::Relaxed);
        }
    }
}

/// Where a challenge answer is published besides this process (the cluster).
pub trait Publish: Sync {
    /// Called with (token, key authorization) before the CA is told to check.
    fn http01(&self, token: &str, key_auth: &str) -> impl std::future::Future<Output = ()> + Send;
}

/// No peers: answers live in this process only.
pub struct Alone;

impl Publish for Alone {
    async fn http01(&self, _: &str, _: &str) {}
}

/// A certificate and its key as issued, in PEM.
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

fn cert_dir(cfg: &AcmeConfig, primary: &str) -> PathBuf {
    // Names were validated as DNS names; keep the file name safe regardless.
    let safe: String = primary
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    cfg.dir.join(safe.trim_start_matches('.'))
}

/// The certificate for `names` kept on disk, when there is one that covers them.
pub fn load_stored(cfg: &AcmeConfig, names: &[String]) -> Result<Option<LoadedCert>, String> {
    let dir = cert_dir(cfg, &names[0]);
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let (chain_pem, key_pem) = match (
        std::fs::read_to_string(&cert),
        std::fs::read_to_string(&key),
    ) {
        (Ok(c), Ok(k)) => (c, k),
        (Err(e), _) | (_, Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        (Err(e), _) | (_, Err(e)) => return Err(format!("{}: {e}", dir.display())),
    };
    let loaded = from_pem(&chain_pem, &key_pem, names.to_vec())
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(covers(&loaded, names).then_some(loaded))
}

/// Whether the leaf names every one of `names` (a host may have gained an alias).
pub fn covers(cert: &LoadedCert, names: &[String]) -> bool {
    let Ok(leaf) = cert.key.end_entity_cert() else {
        return false;
    };
    let Ok((_, x509)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
        return false;
    };
    let sans: Vec<String> = x509
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    x509_parser::extensions::GeneralName::DNSName(d) => {
                        Some(d.to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    names.iter().all(|n| sans.iter().any(|s| s == n))
}

/// Writes an issued certificate where [`load_stored`] finds it (each file
/// replaced atomically, key 0600). A crash between the two leaves a pair that
/// does not match: [`load_stored`] refuses it and the certificate is ordered again.
pub fn save(cfg: &AcmeConfig, primary: &str, issued: &Issued) -> std::io::Result<()> {
    let dir = cert_dir(cfg, primary);
    crate::private_file::write(&dir.join("key.pem"), issued.key_pem.as_bytes())?;
    crate::private_file::write(&dir.join("cert.pem"), issued.chain_pem.as_bytes())
}

/// When a certificate is due for renewal: at 2/3 of its lifetime (Let's
/// Encrypt's advice; a 90-day certificate is renewed with 30 days left).
pub fn renew_at(cert: &LoadedCert) -> i64 {
    if cert.placeholder {
        return i64::MIN;
    }
    cert.not_before + (cert.not_after - cert.not_before) * 2 / 3
}

/// The account for the configured directory: read from the state directory,
/// or registered (and saved 0600) on first use.
pub async fn account(cfg: &AcmeConfig) -> Result<Account, String> {
    // rustls needs a process-wide provider for the client's config; pingora
    // installs the same one for the listeners (whichever comes first wins).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = || match &cfg.ca_root {
        Some(root) => {
            Account::builder_with_root(root).map_err(|e| format!("{}: {e}", root.display()))
        }
        None => Account::builder().map_err(|e| e.to_string()),
    };
    let file = cfg.dir.join(format!(
        "account-{}.json",
        &hex::encode(Sha256::digest(cfg.directory.as_bytes()))[..16]
    ));
    match std::fs::read(&file) {
        Ok(bytes) => {
            let creds: AccountCredentials =
                serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", file.display()))?;
            return builder()?
                .from_credentials(creds)
                .await
                .map_err(|e| format!("{}: {e}", cfg.directory));
        }
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(format!("{}: {e}", file.display()))
        }
        Err(_) => {}
    }
    let contact: Vec<&str> = cfg.contact.iter().map(String::as_str).collect();
    let (account, creds) = builder()?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            cfg.directory.clone(),
            None,
        )
        .await
        .map_err(|e| format!("{}: registering an account: {e}", cfg.directory))?;
    let json = serde_json::to_vec(&creds).map_err(|e| e.to_string())?;
    crate::private_file::write(&file, &json).map_err(|e| format!("{}: {e}", file.display()))?;
    tracing::info!(directory = %cfg.directory, id = account.id(), "ACME account registered");
    Ok(account)
}

/// Orders a certificate for `names`, answering the challenges in this process
/// (and through `publish`); returns the chain and a new P-256 key.
pub async fn order(
    account: &Account,
    names: &[String],
    kind: AcmeChallenge,
    publish: &impl Publish,
) -> Result<Issued, String> {
    let identifiers: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(|e| format!("new order: {e}"))?;
    let (mut tokens, mut alpn_names) = (Vec::new(), Vec::new());
    let answered = answer(&mut order, kind, publish, &mut tokens, &mut alpn_names).await;
    let result = match answered {
        Ok(()) => finish(&mut order, names).await,
        Err(e) => Err(e),
    };
    challenges().clear(&tokens, &alpn_names);
    result
}

async fn answer(
    order: &mut instant_acme::Order,
    kind: AcmeChallenge,
    publish: &impl Publish,
    tokens: &mut Vec<String>,
    alpn_names: &mut Vec<String>,
) -> Result<(), String> {
    let mut authzs = order.authorizations();
    while let Some(authz) = authzs.next().await {
        let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => return Err(format!("authorization is {other:?}")),
        }
        let wanted = match kind {
            AcmeChallenge::Http01 => ChallengeType::Http01,
            AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        };
        let mut challenge = authz
            .challenge(wanted.clone())
            .ok_or_else(|| format!("the CA offers no {wanted:?} challenge"))?;
        let key_auth = challenge.key_authorization();
        let name = challenge.identifier().to_string();
        match kind {
            AcmeChallenge::Http01 => {
                challenges().put_http01(&challenge.token, key_auth.as_str());
                tokens.push(challenge.token.clone());
                publish.http01(&challenge.token, key_auth.as_str()).await;
            }
            AcmeChallenge::TlsAlpn01 => {
                let cert = alpn_certificate(&name, key_auth.digest().as_ref())?;
                challenges().put_alpn(&name, cert);
                alpn_names.push(name.clone());
            }
        }
        challenge
            .set_ready()
            .await
            .map_err(|e| format!("{name}: challenge: {e}"))?;
    }
    Ok(())
}

async fn finish(order: &mut instant_acme::Order, names: &[String]) -> Result<Issued, String> {
    let patience = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .timeout(Duration::from_secs(90));
    let status = order
        .poll_ready(&patience)
        .await
        .map_err(|e| format!("waiting for validation: {e}"))?;
    if status != OrderStatus::Ready {
        let why = order
            .authorizations()
            .next()
            .await
            .and_then(|a| a.ok())
            .and_then(|a| {
                a.challenges
                    .iter()
                    .find_map(|c| c.error.as_ref().map(|p| p.to_string()))
            })
            .unwrap_or_default();
        return Err(format!("the order is {status:?}: {why}"));
    }
    let err = |e: rcgen::Error| format!("certificate request: {e}");
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(err)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(err)?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(|e| format!("finalize: {e}"))?;
    let chain_pem = order
        .poll_certificate(&patience)
        .await
        .map_err(|e| format!("waiting for the certificate: {e}"))?;
    Ok(Issued {
        chain_pem,
        key_pem: key.serialize_pem(),
    })
}

/// RFC 8737: a self-signed certificate for `name` with the critical
/// `acmeIdentifier` extension holding SHA-256 of the key authorization.
fn alpn_certificate(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let err = |e: rcgen::Error| format!("{name}: TLS-ALPN-01 certificate: {e}");
    let mut p = rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(err)?;
    p.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let cert = p.self_signed(&key).map_err(err)?;
    // Built directly: webpki (behind `keys_match`) refuses the unknown critical
    // extension that is the point of this certificate.
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|e| format!("{name}: TLS-ALPN-01 key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn cfg(dir: &std::path::Path) -> AcmeConfig {
        AcmeConfig {
            contact: vec![],
            directory: "https://ca.example/dir".into(),
            ca_root: None,
            challenge: AcmeChallenge::Http01,
            certs: vec![],
            dir: dir.to_path_buf(),
        }
    }

    #[test]
    fn placeholder_is_due_at_once_and_covers_its_names() {
        let names = vec!["galion.example".to_owned(), "www.galion.example".to_owned()];
        let p = placeholder(&names).unwrap();
        assert!(p.placeholder);
        assert_eq!(renew_at(&p), i64::MIN);
        assert!(covers(&p, &names));
        assert!(!covers(&p, &["other.example".to_owned()]));
    }

    #[test]
    fn saved_certificates_load_back_with_a_private_key_file() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let c = cfg(&tmp.path().join("acme"));
        let names = vec!["galion.example".to_owned()];
        assert!(load_stored(&c, &names).unwrap().is_none());
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(names.clone())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let issued = Issued {
            chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        save(&c, &names[0], &issued).unwrap();
        let mode = |f: &str| {
            std::fs::metadata(tmp.path().join("acme/galion.example").join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("key.pem"), 0o600);
        let dir_mode = std::fs::metadata(tmp.path().join("acme/galion.example"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        let back = load_stored(&c, &names).unwrap().unwrap();
        assert!(!back.placeholder);
        let lifetime = back.not_after - back.not_before;
        assert_eq!(renew_at(&back), back.not_before + lifetime * 2 / 3);
        // A host that gained an alias needs a new certificate.
        let more = vec!["galion.example".to_owned(), "www.galion.example".to_owned()];
        assert!(load_stored(&c, &more).unwrap().is_none());
    }

    #[test]
    fn the_alpn_certificate_carries_the_critical_acme_identifier() {
        let digest = Sha256::digest(b"token.thumbprint");
        let ck = alpn_certificate("galion.example", &digest).unwrap();
        let leaf = ck.end_entity_cert().unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
        let ext = x509
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        // OCTET STRING (0x04, 32 bytes) wrapping the digest.
        assert_eq!(&ext.value[..2], &[0x04, 32]);
        assert_eq!(&ext.value[2..], digest.as_slice());
    }
}
