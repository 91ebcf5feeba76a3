//! TLS termination with a real TLS client: SNI, defaults, protocol versions, h2,
//! plain-HTTP redirects and ACME, certificate reloads, WebSockets over TLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use galion_tests::tls::{roots_from_pem, AcceptAny};
use galion_tests::{binary, client, eventually, fake_upstream, spawn_gateway_tls, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::client::TlsStream;

fn dev_certs(dir: &Path) {
    let out = std::process::Command::new(binary("galion-gateway"))
        .arg("dev-certs")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn config(certs: &Path, upstream: SocketAddr, extra_tls: &str) -> String {
    let c = certs.display();
    format!(
        r#"
tls:
  certificates:
    - {{ hosts: [galion.app, "*.galion.app", localhost], cert: {c}/galion.app.pem, key: {c}/galion.app.key, default: true }}
    - {{ hosts: [galion.studio, "*.galion.studio"], cert: {c}/galion.studio.pem, key: {c}/galion.studio.key }}
{extra_tls}
upstreams:
  up: {{ servers: ["{upstream}"] }}
hosts:
  galion.app:
    default: true
    routes:
      - {{ name: plain-ok, prefix: /status, upstream: up, allow_plain: true }}
      - {{ name: r, prefix: /, upstream: up }}
  galion.studio:
    routes:
      - {{ name: studio, prefix: /, upstream: up }}
"#
    )
}

fn roots(ca: &Path) -> rustls::RootCertStore {
    roots_from_pem(std::fs::read(ca).unwrap())
}

async fn connect(
    addr: SocketAddr,
    sni: &str,
    ca: &Path,
    alpn: &[&[u8]],
    verify: bool,
) -> std::io::Result<TlsStream<tokio::net::TcpStream>> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut cfg = if verify {
        rustls::ClientConfig::builder()
            .with_root_certificates(roots(ca))
            .with_no_client_auth()
    } else {
        rustls::ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny))
            .with_no_client_auth()
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
}

fn peer_cn(s: &TlsStream<tokio::net::TcpStream>) -> String {
    let der = s.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    cn
}

fn peer_der(s: &TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    s.get_ref().1.peer_certificates().unwrap()[0]
        .as_ref()
        .to_vec()
}

async fn http1(s: &mut TlsStream<tokio::net::TcpStream>, host: &str, path: &str) -> String {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 16384];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).to_string()
}

async fn setup(extra_tls: &str) -> (Gateway, tempfile::TempDir, galion_tests::FakeUpstream) {
    let certs = tempfile::tempdir().unwrap();
    dev_certs(certs.path());
    let up = fake_upstream("up").await;
    let gw = spawn_gateway_tls(&config(certs.path(), up.addr, extra_tls)).await;
    (gw, certs, up)
}

#[tokio::test]
async fn sni_picks_the_certificate_and_h2_is_negotiated() {
    let (gw, certs, _up) = setup("").await;
    let https = gw.https.unwrap();
    let ca = certs.path().join("ca.pem");
    let s = connect(https, "galion.app", &ca, &[b"http/1.1"], true)
        .await
        .unwrap();
    assert_eq!(peer_cn(&s), "galion.app");
    let s = connect(https, "api.galion.app", &ca, &[b"http/1.1"], true)
        .await
        .unwrap();
    assert_eq!(peer_cn(&s), "galion.app");
    let mut s = connect(https, "galion.studio", &ca, &[b"http/1.1"], true)
        .await
        .unwrap();
    assert_eq!(peer_cn(&s), "galion.studio");
    let resp = http1(&mut s, "galion.studio", "/x").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("strict-transport-security: max-age=31536000"),
        "{resp}"
    );
    // An unknown name gets the default certificate.
    let s = connect(https, "unknown.example", &ca, &[], false)
        .await
        .unwrap();
    assert_eq!(peer_cn(&s), "galion.app");
    // ALPN prefers h2, and a request is served over h2.
    let s = connect(https, "galion.app", &ca, &[b"h2", b"http/1.1"], true)
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let pem = std::fs::read(&ca).unwrap();
    let c = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .resolve("galion.app", https)
        .build()
        .unwrap();
    let r = c
        .get(format!("https://galion.app:{}/hello", https.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["headers"]["x-forwarded-proto"], "https");
    // Expiry published per host.
    assert!(
        gw.metric("gateway_tls_cert_expiry_timestamp_seconds{host=\"galion.studio\"}")
            .await
            > 1.0e9
    );
}

#[tokio::test]
async fn old_protocol_versions_are_refused() {
    let (gw, _certs, _up) = setup("").await;
    let addr = gw.https.unwrap();
    for flag in ["-tls1_1", "-tls1"] {
        let out = std::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &addr.to_string(),
                "-servername",
                "galion.app",
                flag,
                "-cipher",
                "DEFAULT@SECLEVEL=0",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !text.contains("BEGIN CERTIFICATE") && text.contains("no peer certificate available"),
            "{flag} negotiated:\n{text}"
        );
    }
    let out = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "galion.app",
            "-tls1_2",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("TLSv1.2"),
        "TLS 1.2 should work"
    );
}

#[tokio::test]
async fn plain_http_redirects_except_allow_plain_and_acme() {
    // certbot --webroot -w DIR writes DIR/.well-known/acme-challenge/TOKEN.
    let webroot = tempfile::tempdir().unwrap();
    let challenges = webroot.path().join(".well-known/acme-challenge");
    std::fs::create_dir_all(&challenges).unwrap();
    std::fs::write(challenges.join("tok_EN-123"), "tok_EN-123.thumbprint").unwrap();
    let (gw, _certs, _up) = setup(&format!("  acme_webroot: {}", webroot.path().display())).await;
    let https_port = gw.https.unwrap().port();
    let r = client()
        .get(gw.url("/a/b?x=1"))
        .header("host", "galion.app")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"],
        format!("https://galion.app:{https_port}/a/b?x=1").as_str()
    );
    let r = client()
        .get(gw.url("/status"))
        .header("host", "galion.app")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "allow_plain route served over HTTP");
    let r = client()
        .get(gw.url("/.well-known/acme-challenge/tok_EN-123"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "tok_EN-123.thumbprint");
    let r = client()
        .get(gw.url("/.well-known/acme-challenge/..%2f..%2fetc%2fpasswd"))
        .send()
        .await
        .unwrap();
    assert!(r.status() == 400 || r.status() == 404);
    let r = client()
        .get(gw.url("/.well-known/acme-challenge/missing"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn certificate_reload_and_bad_key() {
    let (gw, certs, up) = setup("").await;
    let https = gw.https.unwrap();
    let ca = certs.path().join("ca.pem");
    let mut old = connect(https, "galion.app", &ca, &[b"http/1.1"], true)
        .await
        .unwrap();
    let old_der = peer_der(&old);
    assert!(http1(&mut old, "galion.app", "/1")
        .await
        .starts_with("HTTP/1.1 200"));

    // New certificates in place (as a renewal would write them): new handshakes see
    // them without a restart; the open connection keeps working.
    let fresh = tempfile::tempdir().unwrap();
    dev_certs(fresh.path());
    for f in [
        "galion.app.pem",
        "galion.app.key",
        "galion.studio.pem",
        "galion.studio.key",
    ] {
        std::fs::copy(fresh.path().join(f), certs.path().join(f)).unwrap();
    }
    let new_ca = fresh.path().join("ca.pem");
    let swapped = eventually(5, || async {
        let s = connect(https, "galion.app", &new_ca, &[b"http/1.1"], true)
            .await
            .ok()?;
        (peer_der(&s) != old_der).then_some(())
    })
    .await;
    assert!(
        swapped.is_some(),
        "new certificate not served:\n{}",
        gw.log()
    );
    assert!(
        http1(&mut old, "galion.app", "/2")
            .await
            .starts_with("HTTP/1.1 200"),
        "old connection broke"
    );

    // A broken key is refused; the current certificate keeps serving.
    let errors = gw
        .metric("gateway_config_reloads_total{result=\"error\"}")
        .await;
    std::fs::write(
        certs.path().join("galion.app.key"),
        "-----BEGIN PRIVATE KEY-----\nnonsense\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    gw.signal("HUP");
    let refused = eventually(5, || async {
        (gw.metric("gateway_config_reloads_total{result=\"error\"}")
            .await
            > errors)
            .then_some(())
    })
    .await;
    assert!(refused.is_some(), "bad key not refused:\n{}", gw.log());
    let s = connect(https, "galion.app", &new_ca, &[b"http/1.1"], true)
        .await
        .unwrap();
    assert_ne!(peer_der(&s), old_der);
    assert!(
        gw.log().contains("galion.app.key"),
        "the error names the file"
    );
    drop(up);
}

#[tokio::test]
async fn websocket_over_tls_survives_reloads() {
    let (gw, certs, up) = setup("").await;
    let https = gw.https.unwrap();
    let ca = certs.path().join("ca.pem");
    let mut ws = connect(https, "galion.app", &ca, &[b"http/1.1"], true)
        .await
        .unwrap();
    ws.write_all(b"GET /ws HTTP/1.1\r\nHost: galion.app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = ws.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"));
    for i in 0..5 {
        let conf = config(certs.path(), up.addr, "").replace("name: r,", &format!("name: r{i},"));
        gw.write_config(&conf);
        let reloaded = eventually(5, || async {
            (gw.metric("gateway_config_reloads_total{result=\"success\"}")
                .await
                >= (i + 2) as f64)
                .then_some(())
        })
        .await;
        assert!(reloaded.is_some(), "reload {i} not applied:\n{}", gw.log());
        let msg = format!("frame-{i}");
        ws.write_all(msg.as_bytes()).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), ws.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], msg.as_bytes(), "echo after reload {i}");
    }
}

#[tokio::test]
async fn upstream_tls_verifies_against_the_configured_ca() {
    // The TLS upstream is a second gateway terminating TLS with dev certificates.
    let (backend, certs, _up) = setup("").await;
    let backend_tls = backend.https.unwrap();
    let other_ca = tempfile::tempdir().unwrap();
    dev_certs(other_ca.path());
    let front = |ca: &Path| {
        format!(
            r#"
upstreams:
  secure:
    servers: ["{backend_tls}"]
    tls: {{ sni: galion.app, ca: {} }}
    retries: 0
hosts:
  galion.app:
    default: true
    routes:
      - {{ name: r, prefix: /, upstream: secure }}
"#,
            ca.display()
        )
    };
    let good = galion_tests::spawn_gateway(&front(&certs.path().join("ca.pem"))).await;
    let r = client()
        .get(good.url("/through-tls"))
        .header("host", "galion.app")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", good.log());
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["uri"], "/through-tls");

    let wrong = galion_tests::spawn_gateway(&front(&other_ca.path().join("ca.pem"))).await;
    let r = client()
        .get(wrong.url("/x"))
        .header("host", "galion.app")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        502,
        "an untrusted upstream certificate must fail"
    );
}

/// The access log names the TLS version and protocol of the connection.
#[tokio::test]
async fn the_access_log_names_the_tls_version() {
    let certs = tempfile::tempdir().unwrap();
    dev_certs(certs.path());
    let up = fake_upstream("up").await;
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("access.log");
    let gw = spawn_gateway_tls(&format!(
        "access_log: {{ enabled: true, path: \"{}\" }}\n{}",
        log.display(),
        config(certs.path(), up.addr, "")
    ))
    .await;
    let https = gw.https.unwrap();
    let pem = std::fs::read(certs.path().join("ca.pem")).unwrap();
    for (http2, protocol) in [(false, "HTTP/1.1"), (true, "HTTP/2.0")] {
        let mut b = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .resolve("galion.app", https);
        b = if http2 {
            b.http2_prior_knowledge()
        } else {
            b.http1_only()
        };
        let r = b
            .build()
            .unwrap()
            .get(format!("https://galion.app:{}/t", https.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let line = galion_tests::eventually(10, || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            async move {
                text.lines()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .find(|v| v["protocol"] == protocol)
            }
        })
        .await
        .unwrap_or_else(|| panic!("no {protocol} line in the access log:\n{}", gw.log()));
        assert_eq!(line["tls"], "TLSv1.3", "{line}");
    }
}

/// certbot's layout: `live/<name>/fullchain.pem` is a symlink into `archive/`,
/// and a renewal writes new archive files and repoints the links.
fn certbot_issue(le: &Path, name: &str, n: u32, from: &Path, stem: &str) {
    let archive = le.join("archive").join(name);
    let live = le.join("live").join(name);
    std::fs::create_dir_all(&archive).unwrap();
    std::fs::create_dir_all(&live).unwrap();
    std::fs::copy(
        from.join(format!("{stem}.pem")),
        archive.join(format!("fullchain{n}.pem")),
    )
    .unwrap();
    std::fs::copy(
        from.join(format!("{stem}.key")),
        archive.join(format!("privkey{n}.pem")),
    )
    .unwrap();
    for (link, target) in [("fullchain.pem", "fullchain"), ("privkey.pem", "privkey")] {
        let tmp = live.join(format!("{link}.new"));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(format!("../../archive/{name}/{target}{n}.pem"), &tmp).unwrap();
        std::fs::rename(&tmp, live.join(link)).unwrap();
    }
}

#[tokio::test]
async fn certbot_symlinks_and_certificates_added_by_a_reload_are_watched() {
    let (gw, certs, up) = setup("").await;
    let https = gw.https.unwrap();
    // A certificate that did not exist when the gateway started, in certbot's
    // layout, added by a reload.
    let le = tempfile::tempdir().unwrap();
    let first = tempfile::tempdir().unwrap();
    dev_certs(first.path());
    certbot_issue(le.path(), "galion.studio", 1, first.path(), "galion.studio");
    let live = le.path().join("live/galion.studio");
    let c = certs.path().display();
    gw.write_config(&format!(
        r#"
tls:
  certificates:
    - {{ hosts: [galion.app, "*.galion.app", localhost], cert: {c}/galion.app.pem, key: {c}/galion.app.key, default: true }}
    - {{ hosts: [galion.studio, "*.galion.studio"], cert: {l}/fullchain.pem, key: {l}/privkey.pem }}
upstreams:
  up: {{ servers: ["{u}"] }}
hosts:
  galion.app:
    default: true
    routes:
      - {{ name: r, prefix: /, upstream: up }}
  galion.studio:
    routes:
      - {{ name: studio, prefix: /, upstream: up }}
"#,
        l = live.display(),
        u = up.addr,
    ));
    let serves = |ca: std::path::PathBuf| async move {
        eventually(5, || {
            let ca = ca.clone();
            async move {
                connect(https, "galion.studio", &ca, &[b"http/1.1"], true)
                    .await
                    .ok()
                    .map(|s| peer_der(&s))
            }
        })
        .await
    };
    let one = serves(first.path().join("ca.pem")).await;
    assert!(
        one.is_some(),
        "certificate added by a reload not served:\n{}",
        gw.log()
    );

    // certbot renews: new archive files, links repointed; no SIGHUP.
    let second = tempfile::tempdir().unwrap();
    dev_certs(second.path());
    certbot_issue(
        le.path(),
        "galion.studio",
        2,
        second.path(),
        "galion.studio",
    );
    let two = serves(second.path().join("ca.pem")).await;
    assert!(
        two.is_some(),
        "certbot renewal not picked up:\n{}",
        gw.log()
    );
    assert_ne!(one, two);

    // A tool that rewrites the link's target in place (not the link) is seen too.
    let third = tempfile::tempdir().unwrap();
    dev_certs(third.path());
    let archive = le.path().join("archive/galion.studio");
    for (from, to) in [
        ("galion.studio.key", "privkey2.pem"),
        ("galion.studio.pem", "fullchain2.pem"),
    ] {
        let tmp = archive.join(format!("{to}.tmp"));
        std::fs::copy(third.path().join(from), &tmp).unwrap();
        std::fs::rename(&tmp, archive.join(to)).unwrap();
    }
    let three = serves(third.path().join("ca.pem")).await;
    assert!(
        three.is_some(),
        "rewritten link target not picked up:\n{}",
        gw.log()
    );
    assert_ne!(two, three);
}

#[tokio::test]
async fn certificate_files_that_appear_after_start_are_loaded() {
    // certbot's first webroot issuance needs the gateway running on port 80, so
    // the gateway starts before the files exist (their directory too).
    let certs = tempfile::tempdir().unwrap();
    dev_certs(certs.path());
    let up = fake_upstream("up").await;
    let le = tempfile::tempdir().unwrap();
    let live = le.path().join("live/galion.studio");
    let config = config(certs.path(), up.addr, "").replace(
        &format!(
            "cert: {c}/galion.studio.pem, key: {c}/galion.studio.key",
            c = certs.path().display()
        ),
        &format!(
            "cert: {l}/fullchain.pem, key: {l}/privkey.pem",
            l = live.display()
        ),
    );
    assert!(config.contains("privkey.pem"));
    let gw = spawn_gateway_tls(&config).await;
    let check = std::process::Command::new(binary("galion-gateway"))
        .args(["check", "-c"])
        .arg(&gw.config_path)
        .output()
        .unwrap();
    let warnings = String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{warnings}");
    assert!(
        warnings.contains("fullchain.pem") && warnings.contains("not there yet"),
        "{warnings}"
    );
    let https = gw.https.unwrap();
    let ca = certs.path().join("ca.pem");
    let s = connect(https, "galion.studio", &ca, &[b"http/1.1"], false)
        .await
        .unwrap();
    assert!(
        peer_cn(&s).contains("waiting for its certificate"),
        "{}",
        peer_cn(&s)
    );
    // galion.app is served from its files meanwhile.
    let mut app = connect(https, "galion.app", &ca, &[b"http/1.1"], true)
        .await
        .unwrap();
    assert!(http1(&mut app, "galion.app", "/")
        .await
        .starts_with("HTTP/1.1 200"));

    let issued = tempfile::tempdir().unwrap();
    dev_certs(issued.path());
    certbot_issue(
        le.path(),
        "galion.studio",
        1,
        issued.path(),
        "galion.studio",
    );
    let new_ca = issued.path().join("ca.pem");
    let served = eventually(10, || {
        let new_ca = new_ca.clone();
        async move {
            connect(https, "galion.studio", &new_ca, &[b"http/1.1"], true)
                .await
                .ok()
        }
    })
    .await;
    assert!(served.is_some(), "appeared files not loaded:\n{}", gw.log());
    assert!(
        http1(&mut app, "galion.app", "/again")
            .await
            .starts_with("HTTP/1.1 200"),
        "the open connection survives the reload"
    );
}

/// An HTTP/2 request answered before its body is in (a `deny` route, a 401)
/// ends cleanly: the gateway reads the rest of the body instead of dropping
/// the stream, which h2 resets with `CANCEL` (curl reports "stream error in
/// the HTTP/2 framing layer" for the complete answer it got).
#[tokio::test]
async fn an_early_answer_to_an_h2_upload_ends_the_stream_cleanly() {
    let certs = tempfile::tempdir().unwrap();
    dev_certs(certs.path());
    let up = fake_upstream("up").await;
    let cfg = config(certs.path(), up.addr, "").replace(
        "      - { name: plain-ok,",
        "      - { name: gone, prefix: /gone, deny: 403 }\n      - { name: plain-ok,",
    );
    let gw = spawn_gateway_tls(&cfg).await;
    let https = gw.https.unwrap();
    let tls = connect(
        https,
        "galion.app",
        &certs.path().join("ca.pem"),
        &[b"h2"],
        true,
    )
    .await
    .unwrap();
    let (mut h2, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let post = || {
        http::Request::post(format!("https://galion.app:{}/gone/upload", https.port()))
            .header("content-length", "2048")
            .body(())
            .unwrap()
    };
    let (answer, mut body) = h2.send_request(post(), false).unwrap();
    body.send_data(bytes::Bytes::from(vec![b'a'; 1024]), false)
        .unwrap();
    // The whole answer comes while half of the body is still to be sent.
    let answer = tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.status(), 403);
    let mut data = answer.into_body();
    while let Some(chunk) = data.data().await {
        chunk.unwrap();
    }
    body.send_data(bytes::Bytes::from(vec![b'b'; 1024]), true)
        .unwrap_or_else(|e| panic!("the first stream was reset after its answer: {e}"));
    // A second exchange on the connection: its frames come after any reset
    // of the first stream, so by its answer such a reset has been seen.
    h2 = h2.ready().await.unwrap();
    let (again, mut body2) = h2.send_request(post(), false).unwrap();
    body2
        .send_data(bytes::Bytes::from(vec![b'c'; 2048]), true)
        .unwrap();
    assert_eq!(again.await.unwrap().status(), 403);
    let reset = futures::future::poll_fn(|cx| {
        std::task::Poll::Ready(match body.poll_reset(cx) {
            std::task::Poll::Ready(r) => Some(r),
            std::task::Poll::Pending => None,
        })
    })
    .await;
    assert!(
        !matches!(reset, Some(Ok(reason)) if reason != h2::Reason::NO_ERROR),
        "the first stream was reset: {reset:?}\n{}",
        gw.log()
    );
}
