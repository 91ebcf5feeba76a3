//! `upstreams:` pools: their validated types and the validation that builds them.

use std::net::SocketAddr;
use std::time::Duration;

use http::HeaderName;

use super::check::{expand_env, header_name, read_private_file, socket_addr, Checker};
use super::error::KeyPath;
use super::raw::{RawServerEntry, RawUpstream};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerConfig {
    pub addr: SocketAddr,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HashKey {
    Ip,
    Path,
    Header(HeaderName),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Balance {
    RoundRobin,
    LeastConn,
    ConsistentHash(HashKey),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheckConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: usize,
    pub unhealthy_threshold: usize,
    pub host: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
    /// Per-write timeout; off by default (each timed write costs a timer, and the
    /// read timeout already bounds a stalled upstream).
    pub write: Option<Duration>,
    pub idle: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PassiveConfig {
    /// Consecutive failures before a server is ejected; 0 disables ejection.
    pub max_fails: u32,
    pub cooldown: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamConfig {
    pub name: String,
    pub servers: Vec<ServerConfig>,
    pub balance: Balance,
    pub health_check: Option<HealthCheckConfig>,
    pub timeouts: Timeouts,
    /// Extra attempts after the first one (on another server when possible).
    pub retries: u32,
    pub passive: PassiveConfig,
    pub host_header: Option<String>,
    pub tls: Option<UpstreamTls>,
}

/// TLS to upstream servers; certificates are kept as DER (checked at load).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    pub sni: String,
    pub verify: bool,
    pub ca: Option<Vec<Vec<u8>>>,
    /// (certificate chain, PKCS#8/PKCS#1/SEC1 key) for mTLS.
    pub client: Option<(Vec<Vec<u8>>, Vec<u8>)>,
}

pub fn upstream_of(
    c: &mut Checker,
    at: &KeyPath,
    name: &str,
    u: RawUpstream,
) -> Option<UpstreamConfig> {
    let before = c.errors.len();
    if u.servers.is_empty() {
        c.err(&at.key("servers"), "an upstream needs at least one server");
    }
    let mut servers = Vec::new();
    for (i, s) in u.servers.iter().enumerate() {
        let p = at.key("servers").index(i);
        let (addr, weight) = match s {
            RawServerEntry::Addr(a) => (a.as_str(), None),
            RawServerEntry::Full(f) => (f.addr.as_str(), f.weight),
        };
        let weight = weight.unwrap_or(1);
        if weight == 0 || weight > 10_000 {
            c.err(&p.key("weight"), "weight must be between 1 and 10000");
        }
        if let Some(addr) = socket_addr(c, &p, addr) {
            if servers.iter().any(|s: &ServerConfig| s.addr == addr) {
                c.err(&p, format!("server {addr} is listed twice"));
            }
            servers.push(ServerConfig { addr, weight });
        }
    }

    let balance = match u.balance.as_deref().unwrap_or("round_robin") {
        "round_robin" => Balance::RoundRobin,
        "least_conn" => Balance::LeastConn,
        "consistent_hash" => {
            let key = match u.hash_key.as_deref().unwrap_or("ip") {
                "ip" => Some(HashKey::Ip),
                "path" => Some(HashKey::Path),
                other => match other.strip_prefix("header:") {
                    Some(h) => header_name(c, &at.key("hash_key"), h).map(HashKey::Header),
                    None => {
                        c.err(
                            &at.key("hash_key"),
                            format!("{other:?}: expected ip, path or header:NAME"),
                        );
                        None
                    }
                },
            };
            Balance::ConsistentHash(key.unwrap_or(HashKey::Ip))
        }
        other => {
            c.err(
                &at.key("balance"),
                format!("{other:?}: expected round_robin, least_conn or consistent_hash"),
            );
            Balance::RoundRobin
        }
    };
    if u.hash_key.is_some() && !matches!(balance, Balance::ConsistentHash(_)) {
        c.err(
            &at.key("hash_key"),
            "hash_key only applies to balance: consistent_hash",
        );
    }

    let health_check = u.health_check.map(|h| {
        let p = at.key("health_check");
        let path = h.path.unwrap_or_else(|| "/".to_owned());
        if !path.starts_with('/') {
            c.err(&p.key("path"), "must start with /");
        }
        let interval = h.interval.unwrap_or(Duration::from_secs(5));
        if interval < Duration::from_millis(100) {
            c.err(&p.key("interval"), "must be at least 100ms");
        }
        let timeout = h.timeout.unwrap_or(Duration::from_secs(1)).min(interval);
        let healthy_threshold = h.healthy_threshold.unwrap_or(1);
        let unhealthy_threshold = h.unhealthy_threshold.unwrap_or(1);
        if healthy_threshold == 0 {
            c.err(&p.key("healthy_threshold"), "must be at least 1");
        }
        if unhealthy_threshold == 0 {
            c.err(&p.key("unhealthy_threshold"), "must be at least 1");
        }
        HealthCheckConfig {
            path,
            interval,
            timeout,
            healthy_threshold: healthy_threshold.max(1),
            unhealthy_threshold: unhealthy_threshold.max(1),
            host: h.host,
        }
    });

    let t = u.timeouts;
    let timeouts = Timeouts {
        connect: t.connect.unwrap_or(Duration::from_secs(2)),
        read: t.read.unwrap_or(Duration::from_secs(30)),
        write: t.write,
        idle: t.idle.unwrap_or(Duration::from_secs(60)),
    };
    for (k, v) in [
        ("connect", timeouts.connect),
        ("read", timeouts.read),
        ("write", timeouts.write.unwrap_or(Duration::from_secs(1))),
    ] {
        if v.is_zero() {
            c.err(&at.key("timeouts").key(k), "must be greater than zero");
        }
    }
    let retries = u.retries.unwrap_or(2);
    if retries > 10 {
        c.err(&at.key("retries"), "at most 10 retries");
    }
    let passive = match u.passive {
        Some(p) => PassiveConfig {
            max_fails: p.max_fails.unwrap_or(3),
            cooldown: p.cooldown.unwrap_or(Duration::from_secs(10)),
        },
        None => PassiveConfig {
            max_fails: 3,
            cooldown: Duration::from_secs(10),
        },
    };
    if let Some(h) = &u.host_header {
        // Pingora copies Host into the request's authority: it must be one.
        let authority = h.parse::<http::uri::Authority>().ok();
        if h.contains('@') || authority.is_none() || http::HeaderValue::from_str(h).is_err() {
            c.err(&at.key("host_header"), "not a valid host[:port]");
        }
    }
    let tls = u
        .tls
        .map(|t| upstream_tls(c, &at.key("tls"), t, u.host_header.as_deref()));
    if c.errors.len() > before {
        return None;
    }
    Some(UpstreamConfig {
        name: name.to_owned(),
        servers,
        balance,
        health_check,
        timeouts,
        retries,
        passive,
        host_header: u.host_header,
        tls,
    })
}

fn pem_certs(c: &mut Checker, at: &KeyPath, path: &str) -> Option<Vec<Vec<u8>>> {
    let path = match expand_env(path) {
        Ok(p) => p,
        Err(e) => {
            c.err(at, e);
            return None;
        }
    };
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) => {
            c.err(at, format!("{path}: {e}"));
            return None;
        }
    };
    let mut out = Vec::new();
    for item in rustls_pemfile::certs(&mut data.as_slice()) {
        match item {
            Ok(der) if x509_parser::parse_x509_certificate(der.as_ref()).is_ok() => {
                out.push(der.as_ref().to_vec())
            }
            _ => {
                c.err(at, format!("{path}: not a PEM certificate"));
                return None;
            }
        }
    }
    if out.is_empty() {
        c.err(at, format!("{path}: no certificate found"));
        return None;
    }
    Some(out)
}

fn upstream_tls(
    c: &mut Checker,
    at: &KeyPath,
    t: super::raw::RawUpstreamTls,
    host_header: Option<&str>,
) -> UpstreamTls {
    let ca = t.ca.as_deref().and_then(|p| pem_certs(c, &at.key("ca"), p));
    let client = match (t.client_cert.as_deref(), t.client_key.as_deref()) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            let chain = pem_certs(c, &at.key("client_cert"), cert);
            let key_der = expand_env(key)
                .map_err(|e| c.err(&at.key("client_key"), e))
                .ok()
                .and_then(|p| match read_private_file(std::path::Path::new(&p)) {
                    Ok(_) => std::fs::read(&p).ok(),
                    Err(e) => {
                        c.err(&at.key("client_key"), e);
                        None
                    }
                })
                .and_then(
                    |pem| match rustls_pemfile::private_key(&mut pem.as_slice()) {
                        Ok(Some(k)) => Some(k.secret_der().to_vec()),
                        _ => {
                            c.err(&at.key("client_key"), "no private key found in PEM");
                            None
                        }
                    },
                );
            chain.zip(key_der)
        }
        _ => {
            c.err(at, "client_cert and client_key go together");
            None
        }
    };
    let sni = t
        .sni
        .or_else(|| host_header.map(str::to_owned))
        .unwrap_or_default();
    let verify = t.verify.unwrap_or(true);
    if verify && sni.is_empty() {
        c.err(
            &at.key("sni"),
            "set sni (or host_header) so the certificate name can be verified",
        );
    }
    UpstreamTls {
        sni,
        verify,
        ca,
        client,
    }
}
