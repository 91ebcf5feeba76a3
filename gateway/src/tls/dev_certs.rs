//! `galion-gateway dev-certs DIR`: a local CA and certificates for the dev hosts.
//!
//! The CA's private key is not written anywhere: to get new certificates, run the
//! command again and trust the new `ca.pem`. Private keys are written 0600.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

/// (file stem, subject alternative names)
pub const SITES: [(&str, &[&str]); 2] = [
    (
        "galion.app",
        &[
            "galion.app",
            "*.galion.app",
            "localhost",
            "127.0.0.1",
            "::1",
        ],
    ),
    ("galion.studio", &["galion.studio", "*.galion.studio"]),
];

fn write(path: &Path, data: &str, private: bool) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if private {
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(data.as_bytes())
}

/// Creates `ca.pem` and `<site>.pem` / `<site>.key` for every dev site in `dir`.
pub fn generate(dir: &Path) -> Result<Vec<String>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let err = |e: rcgen::Error| e.to_string();
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Galion development CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().map_err(err)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let io = |e: std::io::Error| e.to_string();
    write(&dir.join("ca.pem"), &ca_cert.pem(), false).map_err(io)?;
    let mut written = vec!["ca.pem".to_owned()];
    for (stem, names) in SITES {
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .map_err(err)?;
        p.distinguished_name.push(DnType::CommonName, stem);
        let key = KeyPair::generate().map_err(err)?;
        let cert = p.signed_by(&key, &ca_cert, &ca_key).map_err(err)?;
        write(&dir.join(format!("{stem}.pem")), &cert.pem(), false).map_err(io)?;
        write(&dir.join(format!("{stem}.key")), &key.serialize_pem(), true).map_err(io)?;
        written.push(format!("{stem}.pem"));
        written.push(format!("{stem}.key"));
    }
    Ok(written)
}
