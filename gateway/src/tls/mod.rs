//! TLS termination: the HTTPS listener settings, the certificates of the
//! running config in the SNI store (`crate::certs`), ACME, the TLS-ALPN-01
//! hook and development certificates.

pub mod acme;
pub mod alpn;
pub mod dev_certs;

pub use crate::certs::{load, CertStore, LoadedCert};

use std::sync::{Arc, OnceLock};

use pingora::listeners::tls::TlsSettings;
use pingora::listeners::TlsAccept;

struct NoCallbacks;

#[async_trait::async_trait]
impl TlsAccept for NoCallbacks {}

/// TLS 1.2 and 1.3 (pingora's rustls builder allows nothing older), ALPN h2 then
/// http/1.1, certificates from the store.
pub fn settings(store: Arc<CertStore>) -> pingora::Result<TlsSettings> {
    let mut s = TlsSettings::with_callbacks(Box::new(NoCallbacks))?;
    s.set_cert_resolver(store);
    s.enable_h2();
    Ok(s)
}

/// The process-wide certificate store behind the HTTPS listener.
pub fn store() -> &'static Arc<CertStore> {
    static S: OnceLock<Arc<CertStore>> = OnceLock::new();
    S.get_or_init(|| Arc::new(CertStore::default()))
}

/// Installs a configuration's certificates (new handshakes use them at once) and
/// publishes their expiry times, with those of the ACME certificates in use.
pub fn apply(tls: &crate::config::TlsConfig) {
    store().replace(&tls.certs, tls.default);
    let m = crate::metrics::metrics();
    for gauge in [&m.tls_cert_expiry, &m.tls_certificate_expiry] {
        gauge.reset();
    }
    for c in tls.certs.iter().chain(store().acme_certs().iter()) {
        publish_expiry(c);
    }
}

/// Sets the expiry gauges of `cert`'s hosts (a placeholder has none to report).
pub fn publish_expiry(cert: &LoadedCert) {
    if cert.placeholder {
        return;
    }
    let m = crate::metrics::metrics();
    // Two names for one value: the spec's, and the spelled-out one the
    // operations issues (and cert-manager-style dashboards) use.
    for gauge in [&m.tls_cert_expiry, &m.tls_certificate_expiry] {
        for h in &cert.hosts {
            gauge
                .with_label_values(&[h.as_str()])
                .set(cert.not_after as f64);
        }
    }
}

/// Certificates expiring within `days` (host list, days left).
pub fn expiring_within(tls: &crate::config::TlsConfig, days: i64) -> Vec<(String, i64)> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    tls.certs
        .iter()
        .filter(|c| c.not_after - now < days * 86_400)
        .map(|c| (c.hosts.join(","), (c.not_after - now) / 86_400))
        .collect()
}
