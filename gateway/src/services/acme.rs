//! Keeps the ACME certificates of the live configuration in place: installs the
//! one on disk (or a self-signed placeholder) at once, orders a certificate when
//! there is none or it reached 2/3 of its lifetime, retries failures with
//! jittered exponential backoff, and in cluster mode orders from one instance
//! only (Redis lock) and installs what a peer ordered.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use instant_acme::Account;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::certs::{from_pem, LoadedCert};
use crate::cluster::acme as shared;
use crate::cluster::RedisLink;
use crate::config::{AcmeChallenge, AcmeConfig, Config};
use crate::metrics::metrics;
use crate::snapshot::SnapshotHandle;
use crate::tls::acme::{self, Alone, Issued};

/// How often the schedule is looked at (cheap: no I/O unless something is due).
const TICK: Duration = Duration::from_secs(2);
/// First retry after a failed order; doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(30);
/// Let's Encrypt allows 5 failed validations per name and hour.
const MAX_RETRY: Duration = Duration::from_secs(6 * 3600);
/// In cluster mode, how long an instance waits for Redis before it orders
/// without the lock.
const CLUSTER_GRACE: Duration = Duration::from_secs(30);

pub struct AcmeService {
    snapshot: SnapshotHandle,
}

#[derive(Default)]
struct Attempts {
    failures: u32,
    retry_at: Option<Instant>,
}

struct State {
    /// Identifies this instance as the holder of a cluster lock.
    owner: String,
    attempts: HashMap<String, Attempts>,
    account: Option<(AcmeConfig, Account)>,
    listening: bool,
    started: Instant,
}

impl AcmeService {
    pub fn new(snapshot: SnapshotHandle) -> Self {
        AcmeService { snapshot }
    }
}

#[async_trait]
impl BackgroundService for AcmeService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut state = State {
            owner: format!("{}-{:016x}", std::process::id(), rand::random::<u64>()),
            attempts: HashMap::new(),
            account: None,
            listening: false,
            started: Instant::now(),
        };
        loop {
            let snap = self.snapshot.load_full();
            match &snap.config.tls.acme {
                Some(cfg) => {
                    let work = tick(&snap.config, cfg, snap.redis.as_deref(), &mut state);
                    tokio::select! {
                        _ = work => {}
                        _ = shutdown.changed() => return,
                    }
                }
                None => crate::tls::store().retain_acme(&|_| false),
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Serves what is at hand for every configured certificate: the one on disk, or
/// a placeholder (logged) until the first order succeeds. Runs before the
/// listeners start, and again whenever a reload adds a host.
pub fn install_at_hand(cfg: &AcmeConfig) {
    let store = crate::tls::store();
    let wanted: Vec<&str> = cfg.certs.iter().flatten().map(String::as_str).collect();
    store.retain_acme(&|n| wanted.contains(&n));
    for names in &cfg.certs {
        if store
            .acme(&names[0])
            .is_some_and(|c| acme::covers(&c, names))
        {
            continue;
        }
        let loaded = match acme::load_stored(cfg, names) {
            Ok(Some(c)) => Some(c),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(host = %names[0], error = %e, "ACME certificate on disk unusable; ordering a new one");
                None
            }
        };
        match loaded {
            Some(c) => install(c),
            None => match crate::certs::placeholder(names) {
                Ok(p) => {
                    tracing::warn!(
                        hosts = %names.join(","),
                        "no certificate yet: HTTPS for these hosts answers with a self-signed placeholder until the ACME order completes"
                    );
                    install(p);
                }
                Err(e) => {
                    tracing::error!(host = %names[0], error = %e, "cannot make a placeholder certificate")
                }
            },
        }
    }
}

fn install(cert: LoadedCert) {
    let cert = Arc::new(cert);
    crate::tls::publish_expiry(&cert);
    crate::tls::store().set_acme(cert);
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn tick(config: &Config, cfg: &AcmeConfig, link: Option<&RedisLink>, st: &mut State) {
    install_at_hand(cfg);
    st.attempts
        .retain(|k, _| cfg.certs.iter().any(|names| &names[0] == k));
    for names in &cfg.certs {
        let primary = names[0].as_str();
        let Some(current) = crate::tls::store().acme(primary) else {
            continue;
        };
        let clustered = link.is_some();
        let link = link.filter(|l| l.is_up());
        if let Some(link) = link {
            adopt_shared(cfg, link, names, &current).await;
        }
        let current = crate::tls::store().acme(primary).unwrap_or(current);
        if now_unix() < acme::renew_at(&current) {
            continue;
        }
        let entry = st.attempts.entry(primary.to_owned()).or_default();
        if entry.retry_at.is_some_and(|t| Instant::now() < t) {
            continue;
        }
        if clustered && link.is_none() {
            // Without the lock every instance would order: give Redis time to
            // answer first, then order alone rather than never.
            if st.started.elapsed() < CLUSTER_GRACE {
                continue;
            }
            tracing::warn!(host = %primary, "redis unreachable: ordering without the cluster lock");
        }
        let locked = match link {
            Some(link) => match shared::lock(link, primary, &st.owner).await {
                // A peer is ordering: its certificate arrives through Redis.
                Some(false) => continue,
                Some(true) => true,
                None => false,
            },
            None => false,
        };
        if let (true, Some(link)) = (locked, link) {
            // A peer may have finished an order between our look and the lock.
            adopt_shared(cfg, link, names, &current).await;
            let now = crate::tls::store().acme(primary);
            if now.is_some_and(|c| now_unix() < acme::renew_at(&c)) {
                shared::unlock(link, primary, &st.owner).await;
                continue;
            }
        }
        if !st.listening {
            wait_listening(config, cfg.challenge).await;
            st.listening = true;
        }
        let result = order(cfg, link, names, &mut st.account).await;
        let entry = st.attempts.entry(primary.to_owned()).or_default();
        match result {
            Ok(issued) => {
                metrics().acme_orders.with_label_values(&["issued"]).inc();
                *entry = Attempts::default();
                if let Err(e) = acme::save(cfg, primary, &issued) {
                    tracing::error!(host = %primary, error = %e, "cannot store the new certificate; it is served from memory");
                }
                if let Some(link) = link {
                    shared::share(link, primary, &issued).await;
                }
                match from_pem(&issued.chain_pem, &issued.key_pem, names.clone()) {
                    Ok(c) => {
                        tracing::info!(hosts = %names.join(","), not_after = c.not_after, "ACME certificate issued and installed");
                        install(c);
                    }
                    Err(e) => {
                        tracing::error!(host = %primary, error = %e, "the CA's certificate is unusable")
                    }
                }
            }
            Err(e) => {
                metrics().acme_orders.with_label_values(&["failed"]).inc();
                entry.failures += 1;
                let wait = backoff(entry.failures);
                entry.retry_at = Some(Instant::now() + wait);
                tracing::warn!(
                    hosts = %names.join(","),
                    error = %e,
                    retry_in_s = wait.as_secs(),
                    "ACME order failed"
                );
            }
        }
        if let (true, Some(link)) = (locked, link) {
            shared::unlock(link, primary, &st.owner).await;
        }
    }
}

/// Installs the certificate a cluster peer ordered when it is newer than ours.
async fn adopt_shared(cfg: &AcmeConfig, link: &RedisLink, names: &[String], current: &LoadedCert) {
    let Some(s) = shared::shared(link, &names[0]).await else {
        return;
    };
    let Ok(c) = from_pem(&s.chain_pem, &s.key_pem, names.to_vec()) else {
        return;
    };
    if !acme::covers(&c, names) || (!current.placeholder && c.not_after <= current.not_after) {
        return;
    }
    let issued = Issued {
        chain_pem: s.chain_pem,
        key_pem: s.key_pem,
    };
    if let Err(e) = acme::save(cfg, &names[0], &issued) {
        tracing::warn!(host = %names[0], error = %e, "cannot store the certificate a cluster peer ordered");
    }
    tracing::info!(hosts = %names.join(","), not_after = c.not_after, "installed the certificate a cluster peer ordered");
    install(c);
}

async fn order(
    cfg: &AcmeConfig,
    link: Option<&RedisLink>,
    names: &[String],
    cached: &mut Option<(AcmeConfig, Account)>,
) -> Result<Issued, String> {
    let same_account = |c: &AcmeConfig| {
        c.directory == cfg.directory && c.ca_root == cfg.ca_root && c.dir == cfg.dir
    };
    let account = match cached.as_ref().filter(|(c, _)| same_account(c)) {
        Some((_, a)) => a.clone(),
        None => {
            let a = acme::account(cfg).await?;
            *cached = Some((cfg.clone(), a.clone()));
            a
        }
    };
    match link {
        Some(link) => {
            acme::order(
                &account,
                names,
                cfg.challenge,
                &shared::ClusterPublish(link),
            )
            .await
        }
        None => acme::order(&account, names, cfg.challenge, &Alone).await,
    }
}

/// `FIRST_RETRY · 2^(n-1)`, at most `MAX_RETRY`, ±20 % so that instances and
/// hosts that failed together do not retry together.
fn backoff(failures: u32) -> Duration {
    let base = FIRST_RETRY
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(MAX_RETRY);
    base.mul_f64(0.8 + 0.4 * rand::random::<f64>())
}

/// The CA validates against our listener: wait (at most 10 s) until it accepts.
async fn wait_listening(config: &Config, challenge: AcmeChallenge) {
    let addr = match challenge {
        AcmeChallenge::Http01 => config.listen.http,
        AcmeChallenge::TlsAlpn01 => config.listen.https,
    };
    let Some(mut addr) = addr else { return };
    if addr.ip().is_unspecified() {
        let ip = match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        };
        addr = SocketAddr::new(ip, addr.port());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        for n in 1..=20 {
            let d = backoff(n);
            let base = FIRST_RETRY
                .saturating_mul(1u32 << (n - 1).min(16))
                .min(MAX_RETRY);
            assert!(
                d >= base.mul_f64(0.8) && d <= base.mul_f64(1.2),
                "{n}: {d:?}"
            );
        }
        assert!(backoff(30) <= MAX_RETRY.mul_f64(1.2));
    }
}
