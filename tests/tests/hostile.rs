//! Hostile clients at the trust boundaries (issue 21), each run with the fast
//! path on and off: forwarding chains that would frame the proxy in front,
//! CDN headers from peers that are not the CDN, connection caps on a proxy,
//! internal endpoints behind broad routes, method fall-through, bans of a
//! proxy through the admin API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use galion_tests::{
    binary, client, client_from, fake_upstream, spawn_gateway_with, Gateway, ADMIN_DIGEST,
};
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{json, Value};

/// Both transports: every policy test runs on each.
const PATHS: [&str; 2] = ["fast_path: true", "fast_path: false"];

async fn get(
    c: &reqwest::Client,
    gw: &Gateway,
    path: &str,
    headers: &[(&str, &[u8])],
) -> reqwest::Response {
    let mut r = c.get(gw.url(path));
    for (k, v) in headers {
        r = r.header(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_bytes(v).unwrap(),
        );
    }
    r.send().await.unwrap()
}

async fn echo(r: reqwest::Response) -> Value {
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn framing_config(up: SocketAddr) -> String {
    format!(
        r#"
admin: {{ token_sha256: ["{ADMIN_DIGEST}"] }}
trusted_proxies: [127.0.0.1/32]
rate_limits:
  default: {{ rate: 5/min, burst: 5 }}
jails:
  malformed:
    on: [{{ event: malformed }}]
    maxretry: 3
    findtime: 1m
    bantime: 1h
    action: drop
  limited:
    on: [{{ event: rate_limited }}]
    maxretry: 2
    findtime: 1m
    bantime: 1h
hosts:
  galion.app:
    default: true
    routes:
      - {{ name: plain, prefix: /plain, upstream: up, rate_limit: off }}
      - {{ name: app, prefix: /app, upstream: up }}
upstreams:
  up: {{ servers: ["{up}"] }}
"#,
        up = up
    )
}

/// Case 1: from a trusted proxy, a chain the gateway cannot read where it has
/// to is a 400 charged to nobody; garbage left of the client's hop is never
/// read. Twenty such requests used to jail the proxy itself (`action: drop`),
/// cutting off everyone behind it. The proxy's own requests are never limited.
#[tokio::test]
async fn garbage_forwarding_chains_never_frame_the_proxy() {
    for keys in PATHS {
        let up = fake_upstream("up").await;
        let gw = spawn_gateway_with(&framing_config(up.addr), keys).await;
        let proxy = client(); // 127.0.0.1, the trusted proxy

        // nginx's $proxy_add_x_forwarded_for passes the client's bytes through.
        for _ in 0..20 {
            let r = get(
                &proxy,
                &gw,
                "/plain",
                &[("x-forwarded-for", b"\xff, 198.51.100.7")],
            )
            .await;
            let e = echo(r).await;
            assert_eq!(e["headers"]["x-real-ip"], "198.51.100.7", "{keys}");
        }
        let hits = up.hits();
        for _ in 0..25 {
            let r = get(
                &proxy,
                &gw,
                "/plain",
                &[("x-forwarded-for", b"198.51.100.7, \xff")],
            )
            .await;
            assert_eq!(r.status(), 400, "{keys}");
        }
        assert_eq!(up.hits(), hits, "a bad chain reached the upstream ({keys})");
        // Nobody was jailed: the proxy still gets through, and so do its clients.
        let r = get(&proxy, &gw, "/plain", &[]).await;
        assert_eq!(r.status(), 200, "{keys}: {}", gw.log());
        let bans: Value = gw
            .admin(reqwest::Method::GET, "/admin/bans", None)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(bans["bans"], json!([]), "{keys}");

        // The proxy's own requests (no chain) are never rate-limited…
        for _ in 0..12 {
            assert_eq!(get(&proxy, &gw, "/app", &[]).await.status(), 200, "{keys}");
        }
        // …its clients are, each on its own budget, and jailed on their own.
        let client_a: &[(&str, &[u8])] = &[("x-forwarded-for", b"198.51.100.8")];
        let mut codes = Vec::new();
        for _ in 0..8 {
            codes.push(get(&proxy, &gw, "/app", client_a).await.status().as_u16());
        }
        assert_eq!(&codes[..5], &[200; 5], "{keys}: {codes:?}");
        assert!(
            codes[5..].iter().all(|c| *c == 429 || *c == 403),
            "{keys}: {codes:?}"
        );
        assert_eq!(
            get(&proxy, &gw, "/app", client_a).await.status(),
            403,
            "{keys}"
        );
        let client_b: &[(&str, &[u8])] = &[("x-forwarded-for", b"198.51.100.9")];
        assert_eq!(
            get(&proxy, &gw, "/app", client_b).await.status(),
            200,
            "{keys}"
        );
        assert_eq!(
            get(&proxy, &gw, "/plain", &[]).await.status(),
            200,
            "{keys}"
        );

        // An untrusted peer's garbage is its own business: it is the client.
        let r = get(
            &client_from(5),
            &gw,
            "/plain",
            &[("x-forwarded-for", b"198.51.100.7, \xff")],
        )
        .await;
        assert_eq!(echo(r).await["headers"]["x-real-ip"], "127.0.0.5", "{keys}");
    }
}

fn cdn_config(up: SocketAddr, trusted: &str) -> String {
    format!(
        r#"
trusted_proxies: {trusted}
hosts:
  galion.app:
    default: true
    routes:
      - {{ name: plain, prefix: /plain, upstream: up }}
      - {{ name: login, exact: /login, upstream: up, rate_limit: {{ rate: 3/min, burst: 3 }} }}
upstreams:
  up: {{ servers: ["{up}"] }}
"#
    )
}

/// Case 2: `CF-Connecting-IP` through a load balancer is whatever the client
/// wrote; only Cloudflare's own edges are believed. Thirty logins with thirty
/// CF values used to get thirty budgets.
#[tokio::test]
async fn cdn_headers_are_believed_only_from_the_cdn() {
    for keys in PATHS {
        let up = fake_upstream("up").await;
        let lb = spawn_gateway_with(&cdn_config(up.addr, "[127.0.0.1/32]"), keys).await;
        let proxy = client();
        let mut codes = Vec::new();
        for i in 0..10 {
            let cf = format!("203.0.113.{i}");
            let r = get(
                &proxy,
                &lb,
                "/login",
                &[
                    ("x-forwarded-for", b"198.51.100.20"),
                    ("cf-connecting-ip", cf.as_bytes()),
                    ("true-client-ip", cf.as_bytes()),
                ],
            )
            .await;
            codes.push(r.status().as_u16());
        }
        assert_eq!(&codes[..3], &[200; 3], "{keys}: {codes:?}");
        assert!(codes[3..].iter().all(|c| *c == 429), "{keys}: {codes:?}");
        let r = get(
            &proxy,
            &lb,
            "/plain",
            &[
                ("x-forwarded-for", b"198.51.100.20"),
                ("cf-connecting-ip", b"203.0.113.1"),
            ],
        )
        .await;
        assert_eq!(
            echo(r).await["headers"]["x-real-ip"],
            "198.51.100.20",
            "{keys}"
        );

        // The same peer configured as the CDN's edge: its header is the client.
        let trusted = "{ cloudflare: [127.0.0.1/32] }";
        let cdn = spawn_gateway_with(&cdn_config(up.addr, trusted), keys).await;
        for (name, value) in [
            ("cf-connecting-ip", "203.0.113.7"),
            ("true-client-ip", "2001:db8::7"),
        ] {
            let r = get(
                &proxy,
                &cdn,
                "/plain",
                &[
                    ("x-forwarded-for", b"198.51.100.20"),
                    (name, value.as_bytes()),
                ],
            )
            .await;
            assert_eq!(
                echo(r).await["headers"]["x-real-ip"],
                value,
                "{keys} {name}"
            );
        }
        // Anyone else's CDN header is nobody's.
        let r = get(
            &client_from(6),
            &cdn,
            "/plain",
            &[("cf-connecting-ip", b"203.0.113.7")],
        )
        .await;
        assert_eq!(echo(r).await["headers"]["x-real-ip"], "127.0.0.6", "{keys}");
    }
}

async fn connect_from(ip: [u8; 4], to: SocketAddr) -> tokio::net::TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::from((ip, 0))).unwrap();
    s.connect(to).await.unwrap()
}

/// Sends one GET on an open connection and returns the status line, or ""
/// when the gateway closed it unanswered.
async fn status_line(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = s
        .write_all(b"GET /plain HTTP/1.1\r\nHost: galion.app\r\n\r\n")
        .await;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

/// Case 1, connections: one client holding idle connections through a CDN edge
/// used to use up the edge's per-IP cap, locking out everyone behind it.
#[tokio::test]
async fn a_trusted_proxy_is_not_connection_capped() {
    for keys in PATHS {
        let up = fake_upstream("up").await;
        let conf = format!(
            r#"
trusted_proxies: [127.0.0.1/32]
limits: {{ max_connections_per_ip: 2 }}
hosts:
  galion.app:
    default: true
    routes:
      - {{ name: plain, prefix: /plain, upstream: up }}
upstreams:
  up: {{ servers: ["{}"] }}
"#,
            up.addr
        );
        let gw = spawn_gateway_with(&conf, keys).await;
        let mut held = Vec::new();
        for _ in 0..5 {
            held.push(connect_from([127, 0, 0, 1], gw.http).await);
        }
        for s in held.iter_mut() {
            assert!(status_line(s).await.contains(" 200 "), "{keys}");
        }
        // An untrusted client is still capped.
        let mut a = connect_from([127, 0, 0, 7], gw.http).await;
        let mut b = connect_from([127, 0, 0, 7], gw.http).await;
        assert!(status_line(&mut a).await.contains(" 200 "), "{keys}");
        assert!(status_line(&mut b).await.contains(" 200 "), "{keys}");
        let mut c = connect_from([127, 0, 0, 7], gw.http).await;
        assert_eq!(
            status_line(&mut c).await,
            "",
            "{keys}: third connection served"
        );
    }
}

fn actions_config(up: SocketAddr, with_deny: bool) -> String {
    let deny = if with_deny {
        "      - { name: internal, regex: '^/api/v1/[^/]+/(metrics|health|revocations)(/|$)', deny: 404 }\n"
    } else {
        ""
    };
    format!(
        r#"
hosts:
  galion.app:
    default: true
    routes:
{deny}      - {{ name: auth-other, prefix: /api/v1/auth/, strip_prefix: true, upstream: up }}
      - {{ name: robots, exact: /robots.txt, methods: [GET], respond: {{ body: "User-agent: *\nDisallow: /api/\n" }} }}
      - {{ name: maintenance, prefix: /studio, respond: {{ status: 503, body: '{{"down":true}}', content_type: application/json }} }}
      - {{ name: old, exact: /old, redirect: {{ to: "https://galion.app/new", status: 301 }} }}
      - {{ name: moved, prefix: /moved/, redirect: {{ to: "https://galion.app/", preserve_path: true }} }}
      - {{ name: gone, exact: /gone, deny: 410 }}
upstreams:
  up: {{ servers: ["{up}"] }}
"#
    )
}

/// Case 4: a broad route with strip_prefix put galion-auth's `/metrics` and
/// `/health/ready` on the public site. A `deny` route answers at the gateway
/// (the backend never sees the request), `check` names every such exposure,
/// and `respond`/`redirect` routes need no backend at all.
#[tokio::test]
async fn route_actions_answer_at_the_gateway_and_internal_paths_stay_internal() {
    for keys in PATHS {
        let up = fake_upstream("up").await;
        let gw = spawn_gateway_with(&actions_config(up.addr, true), keys).await;
        let c = client();
        for p in [
            "/api/v1/auth/metrics",
            "/api/v1/auth/health",
            "/api/v1/auth/health/ready",
            "/api/v1/auth/revocations",
            "/api/v1/users/metrics",
        ] {
            let r = get(&c, &gw, p, &[]).await;
            assert_eq!(r.status(), 404, "{keys} {p}");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "not_found");
        }
        assert_eq!(up.hits(), 0, "{keys}: a denied path reached the backend");
        let e = echo(get(&c, &gw, "/api/v1/auth/verify-email/request", &[]).await).await;
        assert_eq!(e["uri"], "/verify-email/request");

        let r = get(&c, &gw, "/robots.txt", &[]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
        assert!(r.headers().get("x-request-id").is_some());
        assert_eq!(r.text().await.unwrap(), "User-agent: *\nDisallow: /api/\n");
        let r = c.head(gw.url("/robots.txt")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{keys}");
        assert_eq!(r.headers()["content-length"], "30");
        assert_eq!(r.bytes().await.unwrap().len(), 0);
        let r = c.post(gw.url("/robots.txt")).send().await.unwrap();
        assert_eq!(r.status(), 405);
        assert_eq!(r.headers()["allow"], "GET, HEAD");

        let r = get(&c, &gw, "/studio/x", &[]).await;
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["content-type"], "application/json");
        assert_eq!(r.text().await.unwrap(), r#"{"down":true}"#);
        let r = get(&c, &gw, "/old?x=1", &[]).await;
        assert_eq!(r.status(), 301);
        assert_eq!(r.headers()["location"], "https://galion.app/new");
        let r = get(&c, &gw, "/moved/a/b?x=1", &[]).await;
        assert_eq!(r.status(), 308);
        assert_eq!(r.headers()["location"], "https://galion.app/moved/a/b?x=1");
        assert_eq!(get(&c, &gw, "/gone", &[]).await.status(), 410);
        assert_eq!(up.hits(), 1, "{keys}");
        assert!(!gw.log().contains("internal endpoint"), "{}", gw.log());
    }

    // Without the deny, `check` names each exposed path and its route.
    let up = fake_upstream("up").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.yaml");
    let text = format!(
        "listen: {{ http: \"127.0.0.1:0\" }}\n{}",
        actions_config(up.addr, false)
    );
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new(binary("galion-gateway"))
        .arg("check")
        .arg("-c")
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for p in ["/metrics", "/health/ready", "/revocations"] {
        assert!(
            err.contains(&format!(
                "route \"auth-other\": GET /api/v1/auth{p} reaches upstream \"up\" at {p}"
            )),
            "{err}"
        );
    }
}

/// Case 5: `HEAD /api/v1/auth/me` skipped the GET-only JWT route for the
/// public catch-all; a method the path's routes do not take is now a 405 with
/// `Allow`, HEAD goes wherever GET goes, and the backend sees neither.
#[tokio::test]
async fn a_method_never_falls_through_to_a_broader_route() {
    for keys in PATHS {
        let up = fake_upstream("up").await;
        let conf = format!(
            r#"
auth:
  api_keys:
    - {{ name: bot, sha256: "{zero}", roles: [service] }}
hosts:
  galion.app:
    default: true
    routes:
      - {{ name: me, exact: /api/v1/auth/me, methods: [GET], upstream: up, auth: api_key }}
      - {{ name: users-list, exact: /api/v1/users, methods: [GET], upstream: up, auth: api_key, roles: [admin] }}
      - {{ name: auth-other, prefix: /api/v1/auth/, upstream: up }}
      - {{ name: users, prefix: /api/v1/users, upstream: up }}
upstreams:
  up: {{ servers: ["{up}"] }}
"#,
            zero = "0".repeat(64),
            up = up.addr
        );
        let gw = spawn_gateway_with(&conf, keys).await;
        let c = client();
        let r = c.head(gw.url("/api/v1/auth/me")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{keys}");
        for m in [reqwest::Method::POST, reqwest::Method::DELETE] {
            let r = c
                .request(m.clone(), gw.url("/api/v1/auth/me"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 405, "{keys} {m}");
            assert_eq!(r.headers()["allow"], "GET, HEAD");
        }
        let r = c.head(gw.url("/api/v1/users")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{keys}");
        let r = c.post(gw.url("/api/v1/users")).send().await.unwrap();
        assert_eq!(r.status(), 405, "{keys}");
        assert_eq!(
            up.hits(),
            0,
            "{keys}: a request fell through to the public route"
        );
        // The broader routes still serve their own paths.
        assert_eq!(get(&c, &gw, "/api/v1/auth/other", &[]).await.status(), 200);
        assert_eq!(
            c.head(gw.url("/api/v1/users/7"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
}

/// Banning a trusted proxy bans everyone behind it: the admin API refuses.
#[tokio::test]
async fn the_admin_api_refuses_to_ban_a_trusted_proxy() {
    let up = fake_upstream("up").await;
    let gw = spawn_gateway_with(&framing_config(up.addr), "").await;
    for target in ["127.0.0.1", "127.0.0.0/8", "0.0.0.0/0"] {
        let r = gw
            .admin(
                reqwest::Method::POST,
                "/admin/bans",
                Some(json!({ "target": target, "duration": "1h" })),
            )
            .await;
        assert_eq!(r.status(), 409, "{target}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "trusted_proxy");
    }
    let r = gw
        .admin(
            reqwest::Method::POST,
            "/admin/bans",
            Some(json!({ "target": "198.51.100.7", "duration": "1h" })),
        )
        .await;
    assert_eq!(r.status(), 201);
}

fn slow_config(up: SocketAddr) -> String {
    format!(
        r#"
hosts:
  galion.app:
    default: true
    routes:
      - {{ name: plain, prefix: /, upstream: up }}
upstreams:
  up: {{ servers: ["{up}"] }}
"#
    )
}

/// Reads what the gateway sends until it closes (or 2 s of silence).
async fn read_to_close(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) =
        tokio::time::timeout(std::time::Duration::from_secs(2), s.read(&mut buf)).await
    {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Case 7: one header line every few hundred milliseconds used to keep a
/// connection for ever (each read was timed, never the whole head). With
/// `header_timeout: 1s`, a client still trickling lines six seconds later has
/// long had its 408 and a closed connection.
#[tokio::test]
async fn a_trickled_head_meets_its_deadline() {
    use tokio::io::AsyncWriteExt;
    for keys in PATHS {
        let up = fake_upstream("up").await;
        let gw = spawn_gateway_with(
            &slow_config(up.addr),
            &format!("{keys}, header_timeout: 1s"),
        )
        .await;
        // Also after more headers than the fast path parses at once: such a
        // head must not be handed on (to a reader without a deadline) unfinished.
        let many: String = (0..70).map(|i| format!("x-many-{i}: 1\r\n")).collect();
        for prefix in [String::new(), many] {
            let mut s = tokio::net::TcpStream::connect(gw.http).await.unwrap();
            let start = format!("GET / HTTP/1.1\r\nHost: galion.app\r\n{prefix}");
            s.write_all(start.as_bytes()).await.unwrap();
            // What the gateway sends is read before every next line, so a
            // reset after its close cannot swallow the answer.
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            for i in 0..20 {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                if let Ok(n) = s.try_read(&mut buf) {
                    got.extend_from_slice(&buf[..n]);
                    break;
                }
                let line = format!("x-slow-{i}: 1\r\n");
                if s.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
            }
            let answer = String::from_utf8_lossy(&got).into_owned() + &read_to_close(&mut s).await;
            assert!(answer.starts_with("HTTP/1.1 408"), "{keys}: {answer:?}");
            assert!(answer.contains("request_timeout"), "{keys}");
        }
        assert_eq!(up.hits(), 0, "{keys}");
        // A head that arrives in time is served.
        let mut s = tokio::net::TcpStream::connect(gw.http).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: galion.app\r\n")
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        s.write_all(b"Connection: close\r\n\r\n").await.unwrap();
        assert!(
            read_to_close(&mut s).await.starts_with("HTTP/1.1 200"),
            "{keys}"
        );
    }
}

/// Case 7, bodies: a slow POST (one byte at a time) holds the connection and
/// its upstream; past `header_timeout` it must average `min_body_rate`.
#[tokio::test]
async fn a_trickled_body_is_cut_off() {
    use tokio::io::AsyncWriteExt;
    for keys in PATHS {
        let up = fake_upstream("up").await;
        let gw = spawn_gateway_with(
            &slow_config(up.addr),
            &format!("{keys}, header_timeout: 1s, min_body_rate: 500"),
        )
        .await;
        let mut s = tokio::net::TcpStream::connect(gw.http).await.unwrap();
        s.write_all(b"POST /upload HTTP/1.1\r\nHost: galion.app\r\nContent-Length: 1000\r\n\r\n")
            .await
            .unwrap();
        for _ in 0..20 {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            if s.write_all(b"x").await.is_err() {
                break;
            }
        }
        let answer = read_to_close(&mut s).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{keys}: {answer:?}");
        // A body at a normal pace goes through.
        let r = client()
            .post(gw.url("/upload"))
            .body(vec![b'y'; 100_000])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{keys}");
    }
}

/// Case 7, Host: the fast path routed `galion.studio:1@evil.example` to
/// galion.studio and forwarded it verbatim; both paths now refuse it.
#[tokio::test]
async fn a_host_that_is_not_an_authority_is_refused() {
    for keys in PATHS {
        let up = fake_upstream("up").await;
        let gw = spawn_gateway_with(&slow_config(up.addr), keys).await;
        for host in [
            "galion.studio:1@evil.example",
            "user@galion.app",
            "galion.app:99999",
            "galion.app:80:80",
        ] {
            let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
            let answer = galion_tests::raw_request(gw.http, req.as_bytes()).await;
            assert!(
                answer.starts_with("HTTP/1.1 400"),
                "{keys} {host}: {answer:?}"
            );
        }
        assert_eq!(up.hits(), 0, "{keys}");
        let req = "GET / HTTP/1.1\r\nHost: galion.app:8080\r\nConnection: close\r\n\r\n";
        let answer = galion_tests::raw_request(gw.http, req.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{keys}: {answer:?}");
    }
}

/// Case 6: the gateway accepts a token until `exp + leeway`, but used to
/// forget its revocation at `exp`: a logged-out token came back for the
/// length of the leeway. The revocation now outlives the token's leeway.
#[tokio::test]
async fn a_revoked_token_stays_refused_through_the_leeway() {
    use galion_tests::jwt::{claims, now, FakeAuth, TestKey};
    for keys in PATHS {
        let ed = TestKey::ed25519("ed-1");
        let auth = FakeAuth::start(&[&ed]).await;
        let up = fake_upstream("up").await;
        let conf = format!(
            r#"
auth:
  jwt:
    jwks_url: {jwks}
    issuer: https://galion.test
    audience: [galion]
    leeway: 30s
  revocation:
    url: {rev}
    interval: 100ms
hosts:
  galion.app:
    default: true
    routes:
      - {{ name: jwt, prefix: /jwt, upstream: up, auth: jwt }}
upstreams:
  up: {{ servers: ["{up}"] }}
"#,
            jwks = auth.jwks_url(),
            rev = auth.revocations_url(),
            up = up.addr
        );
        let gw = spawn_gateway_with(&conf, keys).await;
        let mut c = claims("leaving", "admin");
        let exp = now() + 1;
        c["exp"] = json!(exp);
        let token = ed.sign(&c);
        let c2 = client();
        let status = |t: String| {
            let (c2, url) = (c2.clone(), gw.url("/jwt/x"));
            async move {
                c2.get(url)
                    .bearer_auth(t)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }
        };
        assert_eq!(status(token.clone()).await, 200, "{keys}");
        auth.revoke(c["jti"].as_str().unwrap(), exp);
        let refused = galion_tests::eventually(5, || {
            let s = status(token.clone());
            async move { (s.await == 401).then_some(()) }
        })
        .await;
        assert!(refused.is_some(), "{keys}: revocation not applied");
        // Past `exp`, inside the leeway: still refused.
        while now() <= exp + 1 {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        for _ in 0..3 {
            assert_eq!(
                status(token.clone()).await,
                401,
                "{keys}: revoked token accepted again"
            );
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
    }
}

/// The exemption is for addresses: a proxy's own requests are not limited by
/// IP, but a limit keyed by the caller's identity still counts the caller.
#[tokio::test]
async fn identity_keyed_limits_still_apply_behind_a_proxy() {
    for keys in PATHS {
        let up = fake_upstream("up").await;
        let conf = format!(
            r#"
trusted_proxies: [127.0.0.1/32]
auth:
  api_keys:
    - {{ name: bot, sha256: "{digest}", roles: [service] }}
hosts:
  galion.app:
    default: true
    routes:
      - {{ name: key, prefix: /key, upstream: up, auth: api_key, rate_limit: {{ rate: 3/min, burst: 3, key: api_key }} }}
upstreams:
  up: {{ servers: ["{up}"] }}
"#,
            // sha256("k")
            digest = "8254c329a92850f6d539dd376f4816ee2764517da5e0235514af433164480d7a",
            up = up.addr
        );
        let gw = spawn_gateway_with(&conf, keys).await;
        let mut codes = Vec::new();
        for _ in 0..5 {
            let r = get(&client(), &gw, "/key", &[("x-api-key", b"k")]).await;
            codes.push(r.status().as_u16());
        }
        assert_eq!(codes, [200, 200, 200, 429, 429], "{keys}");
    }
}
