//! `RawConfig` → `Config`: checks every value and cross-reference, collecting all
//! errors (with file, line and key path) instead of stopping at the first.
//!
//! This is the orchestration on top of the section modules: each section is handed
//! to its own module (`trust`, `tls`, `policy`, `upstream`, `shaping`, `protect`,
//! `hosts`); the top-level settings (`listen`, `server`, `admin`, `access_log`) are
//! checked here, and so are the rules that tie sections together.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;

use super::check::parse_size;
use super::error::{ConfigErrors, KeyPath};
use super::locate::LineIndex;
use super::raw::*;
use super::types::*;

// The checker and the value checkers live in `check` (and `header_ops` with the
// routes, in `hosts`); they stay reachable here at their old paths.
pub use super::check::{cidrs, duplicates, header_name, method, regex, socket_addr, Checker};
pub use super::hosts::header_ops;

pub fn validate(
    raw: RawConfig,
    file: &Path,
    index: &LineIndex,
    content_hash: String,
) -> Result<(Config, Vec<ConfigWarning>), ConfigErrors> {
    let mut c = Checker::new(file, index);
    let root = KeyPath::root();

    let listen = c
        .take(&root.key("listen"), raw.listen)
        .map(|l| listen_of(&mut c, l))
        .unwrap_or(Listen {
            http: None,
            https: None,
            admin: default_admin(),
        });
    let server = c
        .take(&root.key("server"), raw.server)
        .map(|s| server_of(&mut c, s))
        .unwrap_or_else(|| server_of(&mut c, RawServer::default()));
    let trusted_proxies = c
        .take(&root.key("trusted_proxies"), raw.trusted_proxies)
        .map(|t| super::trust::trusted_of(&mut c, &root.key("trusted_proxies"), t))
        .unwrap_or_default();
    let admin = c
        .take(&root.key("admin"), raw.admin)
        .map(|a| admin_of(&mut c, a))
        .unwrap_or_default();
    let access_log = c
        .take(&root.key("access_log"), raw.access_log)
        .map(access_log_of)
        .unwrap_or(AccessLogSettings {
            enabled: true,
            target: LogTarget::Stdout,
            redact_query: DEFAULT_REDACTED_QUERY
                .iter()
                .map(|s| s.to_string())
                .collect(),
        });

    // Routes naming an upstream that failed validation should not add a second,
    // misleading "unknown upstream" error: every declared name counts.
    let declared: HashSet<String> = raw.upstreams.keys().cloned().collect();
    let (mut tls, raw_acme) = c
        .take(&root.key("tls"), raw.tls)
        .map(|t| super::tls::tls_of(&mut c, t))
        .unwrap_or_default();
    let auth = c
        .take(&root.key("auth"), raw.auth)
        .map(|a| super::policy::auth_of(&mut c, a))
        .unwrap_or_default();
    let limits = c
        .take(&root.key("limits"), raw.limits)
        .map(|l| super::policy::limits_of(&mut c, l))
        .unwrap_or_default();
    let mut upstreams = IndexMap::new();
    for (name, item) in raw.upstreams {
        let at = root.key("upstreams").key(&name);
        if let Some(u) = c.take(&at, item) {
            if let Some(u) = super::upstream::upstream_of(&mut c, &at, &name, u) {
                upstreams.insert(name, u);
            }
        }
    }
    let cache = c
        .take(&root.key("cache"), raw.cache)
        .map(|s| super::shaping::cache_store_of(&mut c, s))
        .unwrap_or_default();
    let store = c
        .take(&root.key("store"), raw.store)
        .map(|s| super::protect::store_of(&mut c, s))
        .unwrap_or_default();
    let rate_limits = c
        .take(&root.key("rate_limits"), raw.rate_limits)
        .map(|r| super::protect::rate_limits_of(&mut c, r))
        .unwrap_or_default();
    let hosts = super::hosts::hosts_of(
        &mut c,
        raw.hosts,
        &declared,
        &auth,
        &limits,
        rate_limits.default.as_ref(),
    );
    let route_names: HashSet<String> = hosts
        .iter()
        .flat_map(|h| h.routes.iter().map(|r| r.name.clone()))
        .collect();
    let mut jails = super::protect::jails_of(&mut c, raw.jails, &route_names);
    // A trusted proxy is never jailed for its clients: every jail ignores it.
    for j in &mut jails {
        j.ignoreip.extend(trusted_proxies.all().copied());
    }

    let listen_errors = c
        .errors
        .iter()
        .any(|e| e.path.0.first() == Some(&super::error::Seg::Key("listen".into())));
    if let Some(a) = raw_acme {
        tls.acme =
            super::tls::acme_of(&mut c, a, &hosts, &listen, store.state_dir.as_deref(), &tls);
        let redis_at = root.key("store").key("redis");
        // A seal key that was set but refused has its own error already.
        let redis_refused = c.errors.iter().any(|e| e.path.0.starts_with(&redis_at.0));
        if store.redis.as_ref().is_some_and(|r| r.seal_key.is_none()) && !redis_refused {
            // Every instance installs what one ordered, private key included,
            // from Redis: never in the clear there.
            c.err(
                &redis_at,
                "with tls.acme, certificates and their private keys are shared through Redis: \
                 set seal_key_env or seal_key_file (a secret of 32 bytes or more, the same on \
                 every instance, e.g. `openssl rand -base64 48`)",
            );
        }
    }
    if listen.https.is_some() && tls.certs.is_empty() && tls.acme.is_none() {
        c.err(
            &root.key("tls").key("certificates"),
            "listen.https needs a certificate: tls.certificates or tls.acme",
        );
    }
    if listen.http.is_none() && listen.https.is_none() && !listen_errors {
        c.err(
            &root.key("listen").key("http"),
            "no proxy listener configured",
        );
    }

    if !c.errors.is_empty() {
        return Err(ConfigErrors(c.errors));
    }
    Ok((
        Config {
            listen,
            server,
            trusted_proxies,
            admin,
            access_log,
            tls,
            auth,
            limits,
            store,
            cache,
            rate_limits,
            jails,
            upstreams,
            hosts,
            content_hash,
        },
        c.warnings,
    ))
}

fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}

fn listen_of(c: &mut Checker, l: RawListen) -> Listen {
    let at = KeyPath::root().key("listen");
    let http = l.http.and_then(|s| socket_addr(c, &at.key("http"), &s));
    let https = l.https.and_then(|s| socket_addr(c, &at.key("https"), &s));
    let admin = match l.admin {
        Some(s) => socket_addr(c, &at.key("admin"), &s).unwrap_or_else(default_admin),
        None => default_admin(),
    };
    if !admin.ip().is_loopback() {
        c.warn(
            &at.key("admin"),
            format!("admin listener {admin} is not on loopback; keep it behind a firewall"),
        );
    }
    Listen { http, https, admin }
}

const DEFAULT_WRITE_BUFFER: usize = 16 * 1024;
/// nginx's `send_timeout` default.
const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// nginx's `client_header_timeout` is 60 s; a browser sends its head in one
/// packet, so half of that is generous and halves what a slow client holds.
const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Apache's `mod_reqtimeout` default (`MinRate=500`).
const DEFAULT_MIN_BODY_RATE: u64 = 500;

fn server_of(c: &mut Checker, s: RawServer) -> ServerSettings {
    let at = KeyPath::root().key("server");
    let threads = s.threads.unwrap_or(1);
    if threads == 0 || threads > 256 {
        c.err(&at.key("threads"), "must be between 1 and 256");
    }
    // Pingora's default is one MSS (1460 B): every response head and small
    // body then take a write of their own. A larger buffer gathers a head and
    // its body into one write, but what it gathers it copies first: the fast
    // path writes head and body as one vectored write, which the buffer copies
    // when the pair is smaller than the buffer and passes to the socket as it
    // is when not. 16 KiB gathers the small answers and lets a 16 KiB one go
    // uncopied (bench/README.md: cache hits). The price: a body of known length
    // from a slow upstream leaves in steps of up to this size (chunked,
    // close-delimited and h2 bodies are flushed as they come), and each client
    // connection holds this buffer (pingora allocates it up front, beside its
    // 64 KiB read buffer).
    let write_buffer = match &s.write_buffer {
        Some(v) => parse_size(c, &at.key("write_buffer"), v)
            .filter(|n| {
                let ok = (1024..=1 << 20).contains(n);
                if !ok {
                    c.err(&at.key("write_buffer"), "must be between 1KiB and 1MiB");
                }
                ok
            })
            .unwrap_or(DEFAULT_WRITE_BUFFER as u64) as usize,
        None => DEFAULT_WRITE_BUFFER,
    };
    let send_timeout = match s.send_timeout {
        Some(d) if d.is_zero() => {
            c.err(&at.key("send_timeout"), "must be more than 0s");
            DEFAULT_SEND_TIMEOUT
        }
        Some(d) => d,
        None => DEFAULT_SEND_TIMEOUT,
    };
    let header_timeout = match s.header_timeout {
        Some(d) if d.is_zero() || d > Duration::from_secs(3600) => {
            c.err(&at.key("header_timeout"), "must be between 1ms and 1h");
            DEFAULT_HEADER_TIMEOUT
        }
        Some(d) => d,
        None => DEFAULT_HEADER_TIMEOUT,
    };
    let min_body_rate = match &s.min_body_rate {
        Some(v) => parse_size(c, &at.key("min_body_rate"), v).unwrap_or(0),
        None => DEFAULT_MIN_BODY_RATE,
    };
    ServerSettings {
        threads: threads.max(1),
        work_stealing: s.work_stealing.unwrap_or(true),
        grace_period: s.grace_period.unwrap_or(Duration::from_secs(5)),
        graceful_shutdown_timeout: s
            .graceful_shutdown_timeout
            .unwrap_or(Duration::from_secs(5)),
        upstream_keepalive_pool_size: s.upstream_keepalive_pool_size.unwrap_or(256),
        keepalive_requests: s.keepalive_requests,
        send_timeout,
        write_buffer,
        fast_path: s.fast_path.unwrap_or(true),
        header_timeout,
        min_body_rate,
        pid_file: s.pid_file,
        upgrade_sock: s.upgrade_sock,
    }
}

fn admin_of(c: &mut Checker, a: RawAdmin) -> AdminSettings {
    let at = KeyPath::root().key("admin").key("token_sha256");
    let mut token_sha256 = Vec::new();
    for (i, t) in a.token_sha256.iter().enumerate() {
        let mut digest = [0u8; 32];
        match hex::decode_to_slice(t.trim(), &mut digest) {
            Ok(()) => token_sha256.push(digest),
            Err(_) => c.err(
                &at.index(i),
                "must be a SHA-256 digest in hex (64 characters); see `galion-gateway hash-key`",
            ),
        }
    }
    AdminSettings { token_sha256 }
}

fn access_log_of(a: RawAccessLog) -> AccessLogSettings {
    let target = match a.path.as_deref() {
        None | Some("stdout") | Some("-") => LogTarget::Stdout,
        Some(p) => LogTarget::File(PathBuf::from(p)),
    };
    let redact_query = match a.redact_query {
        Some(names) => names.iter().map(|n| n.to_ascii_lowercase()).collect(),
        None => DEFAULT_REDACTED_QUERY
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    AccessLogSettings {
        enabled: a.enabled.unwrap_or(true),
        target,
        redact_query,
    }
}
