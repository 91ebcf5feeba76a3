//! Automatic HTTPS against Pebble, Let's Encrypt's test CA: a gateway on a fresh
//! state directory orders a certificate (HTTP-01 and TLS-ALPN-01), serves it,
//! renews it at 2/3 of its (short) lifetime without dropping a connection, and
//! in cluster mode one instance orders while both serve the result, shared
//! sealed through Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use galion_tests::pebble::Pebble;
use galion_tests::redis_server::{cleanup, shared_redis, unique_prefix};
use galion_tests::tls::{roots_from_pem, AcceptAny};
use galion_tests::{eventually, fake_upstream, free_addr, launch_on, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::client::TlsStream;

const HOST: &str = "acme.galion.test";
const ALIAS: &str = "www.acme.galion.test";
/// The cluster's seal key (`store.redis.seal_key_env`), as the instances get it.
const SEAL: (&str, &str) = (
    "GALION_TEST_SEAL_KEY",
    "an-operator-secret-of-more-than-32-bytes",
);

fn config(pebble: &Pebble, challenge: &str, upstream: SocketAddr, extra: &str) -> String {
    format!(
        r#"
tls:
  acme:
    directory: {dir}
    ca_root: {root}
    email: ops@galion.test
    challenge: {challenge}
    hosts: [{HOST}]
{extra}
upstreams:
  up: {{ servers: ["{upstream}"] }}
hosts:
  {HOST}:
    aliases: [{ALIAS}]
    routes:
      - {{ name: r, prefix: /, upstream: up }}
"#,
        dir = pebble.directory,
        root = pebble.ca_root.display(),
    )
}

fn client_config(roots: Option<rustls::RootCertStore>) -> Arc<rustls::ClientConfig> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cfg = match roots {
        Some(r) => rustls::ClientConfig::builder()
            .with_root_certificates(r)
            .with_no_client_auth(),
        None => rustls::ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny))
            .with_no_client_auth(),
    };
    Arc::new(cfg)
}

async fn tls(
    addr: SocketAddr,
    sni: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
}

/// (serial, notBefore, notAfter) of the certificate the gateway serves for `sni`.
fn leaf(s: &TlsStream<tokio::net::TcpStream>) -> (Vec<u8>, i64, i64) {
    let der = s.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, c) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    (
        c.raw_serial().to_vec(),
        c.validity().not_before.timestamp(),
        c.validity().not_after.timestamp(),
    )
}

/// One keep-alive request on an open TLS connection; the status code.
async fn get(s: &mut TlsStream<tokio::net::TcpStream>, host: &str) -> u16 {
    let req = format!("GET /hello HTTP/1.1\r\nHost: {host}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(head_end) = text.find("\r\n\r\n") {
            let len: usize = text[..head_end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= head_end + 4 + len {
                return text[9..12].parse().unwrap();
            }
        }
    }
}

/// Waits until HTTPS for `sni` serves a certificate that verifies against
/// Pebble's issuing root, other than `not` (when given); returns its leaf.
async fn issued(
    gw: &Gateway,
    pebble: &Pebble,
    sni: &str,
    not: Option<&[u8]>,
    secs: u64,
) -> (Vec<u8>, i64, i64) {
    let roots = roots_from_pem(pebble.issuing_root().await);
    let cfg = client_config(Some(roots));
    let addr = gw.https.unwrap();
    let found = eventually(secs, || {
        let cfg = cfg.clone();
        async move {
            let s = tls(addr, sni, cfg).await.ok()?;
            let l = leaf(&s);
            (Some(l.0.as_slice()) != not).then_some(l)
        }
    })
    .await;
    found.unwrap_or_else(|| {
        panic!(
            "no certificate from Pebble for {sni} within {secs}s\ngateway:\n{}\npebble:\n{}",
            gw.log(),
            pebble.log()
        )
    })
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Pebble validating against a fresh gateway (its own ports, fresh state
/// directory) that orders with `challenge`, certificates valid `validity_secs`.
async fn start(
    challenge: &str,
    validity_secs: u64,
) -> (Pebble, Gateway, galion_tests::FakeUpstream) {
    let up = fake_upstream("app").await;
    let (http, https, admin) = (free_addr(), free_addr(), free_addr());
    let pebble = Pebble::start(http.port(), https.port(), validity_secs).await;
    let gw = launch_on(
        &config(&pebble, challenge, up.addr, ""),
        http,
        Some(https),
        admin,
        &[],
    );
    gw.wait_ready().await;
    (pebble, gw, up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_orders_serves_and_renews_without_dropping_a_connection() {
    // 30 s certificates: renewal is due 20 s after issuance.
    let (pebble, mut gw, _up) = start("http-01", 30).await;
    let https = gw.https.unwrap();

    let (serial, not_before, not_after) = issued(&gw, &pebble, HOST, None, 60).await;
    assert!(not_after - not_before <= 31, "Pebble's short lifetime");
    // The alias is on the same certificate.
    assert_eq!(issued(&gw, &pebble, ALIAS, None, 5).await.0, serial);
    // Until the order completed, HTTPS answered with a self-signed placeholder.
    assert!(gw.log().contains("self-signed placeholder"), "{}", gw.log());

    // State directory: account and key readable by the gateway's user only.
    let acme_dir = gw.dir.path().join("state/acme");
    let key = acme_dir.join(HOST).join("key.pem");
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&acme_dir), 0o700);
    let account = std::fs::read_dir(&acme_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("account-")
        })
        .expect("account file");
    assert_eq!(mode(&account), 0o600);
    let expiry = format!("gateway_tls_certificate_expiry_timestamp_seconds{{host=\"{HOST}\"}}");
    assert_eq!(gw.metric(&expiry).await as i64, not_after);
    assert!(
        gw.metric("gateway_acme_orders_total{result=\"issued\"}")
            .await
            >= 1.0
    );

    // A client keeps its connection across the renewal.
    let roots = roots_from_pem(pebble.issuing_root().await);
    let mut kept = tls(https, HOST, client_config(Some(roots))).await.unwrap();
    assert_eq!(get(&mut kept, HOST).await, 200);
    let (renewed, _, renewed_after) = issued(&gw, &pebble, HOST, Some(&serial), 40).await;
    assert_ne!(renewed, serial);
    assert!(renewed_after > not_after);
    assert_eq!(
        get(&mut kept, HOST).await,
        200,
        "the open connection still serves"
    );
    assert_eq!(
        leaf(&kept).0,
        serial,
        "it keeps the certificate it negotiated"
    );
    assert_eq!(
        gw.metric(&expiry).await as i64,
        renewed_after,
        "the metric follows the renewal"
    );

    // A restart serves the stored certificate at once (verified: no placeholder).
    gw.restart().await;
    let roots = roots_from_pem(pebble.issuing_root().await);
    let s = tls(https, HOST, client_config(Some(roots))).await.unwrap();
    assert!(
        leaf(&s).2 >= renewed_after,
        "stored certificate served after restart"
    );
    gw.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_orders_on_the_https_listener_while_it_serves_traffic() {
    let (pebble, mut gw, _up) = start("tls-alpn-01", 3600).await;
    let https = gw.https.unwrap();

    // Ordinary HTTPS clients (HTTP/1.1 and h2) connect throughout the order:
    // ClientHellos read while a challenge is open are put back for pingora.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let traffic = {
        let (done, ok, failed) = (done.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            let mut cfg = (*client_config(None)).clone();
            cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            let h2 = Arc::new(cfg);
            let h1 = client_config(None);
            let mut i = 0usize;
            while !done.load(Ordering::Relaxed) {
                i += 1;
                let cfg = if i.is_multiple_of(2) {
                    h2.clone()
                } else {
                    h1.clone()
                };
                match tls(https, HOST, cfg).await {
                    Ok(s) if s.get_ref().1.alpn_protocol() != Some(b"acme-tls/1") => {
                        ok.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let (serial, _, _) = issued(&gw, &pebble, HOST, None, 60).await;
    done.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    assert!(!serial.is_empty());
    assert!(ok.load(Ordering::Relaxed) > 0);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "a handshake failed during the order"
    );
    assert!(
        gw.log().contains("answered a TLS-ALPN-01 challenge"),
        "{}",
        gw.log()
    );
    // Once the challenge is over, a client asking for acme-tls/1 alone is refused.
    let mut cfg = (*client_config(None)).clone();
    cfg.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    assert!(tls(https, HOST, Arc::new(cfg)).await.is_err());
    gw.stop();
}

/// `store:` for a cluster on `redis` under `prefix`, with the seal key from [`SEAL`].
fn cluster_store(redis: &str, prefix: &str) -> String {
    format!(
        "store: {{ redis: {{ url: \"{redis}\", prefix: \"{prefix}\", seal_key_env: {} }} }}",
        SEAL.0
    )
}

/// Takes the order lock of `HOST` for `holder` (two minutes at most), as an
/// instance that orders does; returns its key.
async fn hold_order_lock(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    holder: &str,
) -> String {
    let lock = format!("{prefix}acme:lock:{HOST}");
    let _: () = redis::cmd("SET")
        .arg(&lock)
        .arg(holder)
        .arg("PX")
        .arg(120_000)
        .query_async(conn)
        .await
        .unwrap();
    lock
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_one_instance_orders_and_every_instance_serves_it() {
    let redis = shared_redis();
    let prefix = unique_prefix("acme");
    let up = fake_upstream("app").await;
    let mut conn = galion_tests::redis_server::connect(&redis).await;
    // Hold the order lock until both instances run and share Redis, so that
    // they race for it.
    let lock = hold_order_lock(&mut conn, &prefix, "the test").await;
    // The CA validates HTTP-01 on A's port only: when B wins the lock and
    // orders, A answers from the token B put in Redis.
    let (http_a, https_a, admin_a) = (free_addr(), free_addr(), free_addr());
    let (http_b, https_b, admin_b) = (free_addr(), free_addr(), free_addr());
    let pebble = Pebble::start(http_a.port(), https_a.port(), 3600).await;
    let store = cluster_store(&redis, &prefix);
    let cfg = config(&pebble, "http-01", up.addr, &store);
    let mut a = launch_on(&cfg, http_a, Some(https_a), admin_a, &[SEAL]);
    let mut b = launch_on(&cfg, http_b, Some(https_b), admin_b, &[SEAL]);
    a.wait_ready().await;
    b.wait_ready().await;
    for gw in [&a, &b] {
        let linked = eventually(10, || async {
            (gw.metric("gateway_redis_up").await == 1.0).then_some(())
        })
        .await;
        assert!(linked.is_some(), "{}", gw.log());
    }
    // Any instance answers the CA for an order a peer made: a token a peer put
    // in Redis is served by A, and an unknown one is a 404.
    let token = "dGVzdC10b2tlbi1mcm9tLWEtcGVlcg";
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}acme:http01:{token}"))
        .arg("dGVzdC10b2tlbi1mcm9tLWEtcGVlcg.thumbprint")
        .arg("EX")
        .arg(60)
        .query_async(&mut conn)
        .await
        .unwrap();
    let answer = galion_tests::client()
        .get(format!(
            "http://{http_a}/.well-known/acme-challenge/{token}"
        ))
        .header("host", HOST)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), format!("{token}.thumbprint"));
    let unknown = galion_tests::client()
        .get(format!(
            "http://{http_a}/.well-known/acme-challenge/unknownToken"
        ))
        .header("host", HOST)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let _: () = redis::cmd("DEL")
        .arg(&lock)
        .query_async(&mut conn)
        .await
        .unwrap();

    let (sa, _, _) = issued(&a, &pebble, HOST, None, 60).await;
    let (sb, _, _) = issued(&b, &pebble, HOST, None, 30).await;
    assert_eq!(sa, sb, "both serve the one certificate");
    let orders = a
        .metric("gateway_acme_orders_total{result=\"issued\"}")
        .await
        + b.metric("gateway_acme_orders_total{result=\"issued\"}")
            .await;
    assert_eq!(
        orders,
        1.0,
        "exactly one instance ordered\nA:\n{}\nB:\n{}",
        a.log(),
        b.log()
    );
    assert!(
        a.log().contains("cluster peer ordered") || b.log().contains("cluster peer ordered"),
        "A:\n{}\nB:\n{}",
        a.log(),
        b.log()
    );
    // What Redis holds is sealed: no certificate, no private key in it.
    let stored: String = redis::cmd("GET")
        .arg(format!("{prefix}acme:cert:{HOST}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(stored.starts_with("sealed1:"), "{stored}");
    assert!(
        !stored.contains("BEGIN") && !stored.contains("PRIVATE"),
        "{stored}"
    );

    a.stop();
    b.stop();
    cleanup(&redis, &prefix).await;
}

/// A self-signed certificate and key (PEM) for `HOST` and `ALIAS`, as
/// someone with write access to Redis would make one.
fn forged_cert(dir: &std::path::Path) -> (String, String) {
    let (cert, key) = (dir.join("forged.pem"), dir.join("forged.key"));
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:prime256v1")
        .args(["-nodes", "-days", "30", "-subj"])
        .arg(format!("/CN={HOST}"))
        .arg("-addext")
        .arg(format!("subjectAltName=DNS:{HOST},DNS:{ALIAS}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        std::fs::read_to_string(cert).unwrap(),
        std::fs::read_to_string(key).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_planted_in_redis_is_not_served() {
    // The attack: write access to Redis (no seal key) and a certificate of
    // one's own for the site, put where the instances look for what a peer
    // ordered. Before sealing, every instance installed it and served it.
    let redis = shared_redis();
    let prefix = unique_prefix("acme-forged");
    let up = fake_upstream("app").await;
    let mut conn = galion_tests::redis_server::connect(&redis).await;
    let dir = tempfile::tempdir().unwrap();
    let (chain_pem, key_pem) = forged_cert(dir.path());
    let forged_der = rustls_pemfile::certs(&mut chain_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let (_, forged) = x509_parser::parse_x509_certificate(forged_der.as_ref()).unwrap();
    let forged_serial = forged.raw_serial().to_vec();
    let plain = serde_json::json!({ "chain_pem": chain_pem, "key_pem": key_pem }).to_string();
    // A peer "holds" the order lock, so the instance waits for what it shares.
    hold_order_lock(&mut conn, &prefix, "a peer").await;
    let cert_key = format!("{prefix}acme:cert:{HOST}");
    let (http, https, admin) = (free_addr(), free_addr(), free_addr());
    let pebble = Pebble::start(http.port(), https.port(), 3600).await;
    let store = cluster_store(&redis, &prefix);
    let mut gw = launch_on(
        &config(&pebble, "http-01", up.addr, &store),
        http,
        Some(https),
        admin,
        &[SEAL],
    );
    gw.wait_ready().await;
    let linked = eventually(10, || async {
        (gw.metric("gateway_redis_up").await == 1.0).then_some(())
    })
    .await;
    assert!(linked.is_some(), "{}", gw.log());
    let cfg = client_config(None);
    let serves_forged = || async {
        let s = tls(https, HOST, cfg.clone()).await.unwrap();
        leaf(&s).0 == forged_serial
    };
    // In the clear (the old format), then in the sealed format without the
    // key (a nonce and a tag of the attacker's making): each is looked at and
    // refused, and the placeholder stays.
    let mut framed = vec![0u8; 12];
    framed.extend_from_slice(plain.as_bytes());
    framed.extend_from_slice(&[0u8; 16]);
    let unkeyed = format!(
        "sealed1:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(&framed)
    );
    for (what, value) in [("plain", plain.as_str()), ("unkeyed", unkeyed.as_str())] {
        let _: () = redis::cmd("SET")
            .arg(&cert_key)
            .arg(value)
            .query_async(&mut conn)
            .await
            .unwrap();
        let before = gw
            .log()
            .matches("ignored the certificate shared in Redis")
            .count();
        // Until the instance has looked at it (it looks every 2 s): refused
        // (logged), or installed (served).
        let outcome = eventually(15, || async {
            if serves_forged().await {
                return Some("served");
            }
            (gw.log()
                .matches("ignored the certificate shared in Redis")
                .count()
                > before)
                .then_some("refused")
        })
        .await;
        assert_eq!(outcome, Some("refused"), "{what}\n{}", gw.log());
        assert!(
            !serves_forged().await,
            "{what}: the planted certificate is served"
        );
    }
    assert!(
        !gw.log()
            .contains("installed the certificate a cluster peer ordered"),
        "{}",
        gw.log()
    );

    gw.stop();
    cleanup(&redis, &prefix).await;
}
