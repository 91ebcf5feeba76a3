//! Access control end to end: JWT refusals, roles, API keys, identity headers,
//! revocation, JWKS rotation and outage, CORS, body limits, WebSocket upgrades.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use galion_tests::jwt::{claims, now, FakeAuth, TestKey};
use galion_tests::{client, eventually, fake_upstream, spawn_gateway, FakeUpstream, Gateway};
use serde_json::{json, Value};

/// SHA-256 of an API key via the gateway's own `hash-key` command.
fn key_digest(k: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new(galion_tests::binary("galion-gateway"))
        .arg("hash-key")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(k.as_bytes()).unwrap();
    String::from_utf8(child.wait_with_output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_owned()
}

struct Setup {
    gw: Gateway,
    auth: FakeAuth,
    up: FakeUpstream,
    ed: TestKey,
}

async fn setup() -> Setup {
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
    leeway: 5s
    min_refresh_interval: 1s
    cookie: galion_session
  api_keys:
    - {{ name: ingest, sha256: "{key}", roles: [service] }}
  revocation:
    url: {rev}
    interval: 200ms
hosts:
  galion.app:
    default: true
    routes:
      - {{ name: public, prefix: /public, upstream: up }}
      - {{ name: jwt, prefix: /jwt, upstream: up, auth: jwt }}
      - {{ name: admin, prefix: /admin, upstream: up, auth: jwt, roles: [admin] }}
      - {{ name: key, prefix: /key, upstream: up, auth: api_key }}
      - {{ name: any, prefix: /any, upstream: up, auth: {{ any: [jwt, api_key] }} }}
      - {{ name: upload, prefix: /upload, upstream: up, max_body: 1KiB }}
      - {{ name: ws, prefix: /ws, upstream: up, auth: jwt }}
      - name: cors
        prefix: /cors
        upstream: up
        auth: jwt
        cors: {{ allow_origins: ["https://galion.app", "https://*.galion.app"], allow_credentials: true, expose_headers: [x-request-id] }}
upstreams:
  up: {{ servers: ["{up}"] }}
"#,
        jwks = auth.jwks_url(),
        rev = auth.revocations_url(),
        key = key_digest("key-123"),
        up = up.addr
    );
    let gw = spawn_gateway(&conf).await;
    Setup { gw, auth, up, ed }
}

async fn get_with(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = client().get(gw.url(path));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap()
}

async fn bearer(gw: &Gateway, path: &str, token: &str) -> u16 {
    get_with(gw, path, &[("authorization", &format!("Bearer {token}"))])
        .await
        .status()
        .as_u16()
}

fn b64(v: &Value) -> String {
    B64.encode(v.to_string())
}

#[tokio::test]
async fn valid_tokens_pass_and_malicious_ones_are_refused() {
    let s = setup().await;
    let good = s.ed.sign(&claims("u1", "user"));
    assert_eq!(bearer(&s.gw, "/jwt", &good).await, 200);
    // cookie instead of the header
    let r = get_with(
        &s.gw,
        "/jwt",
        &[("cookie", &format!("a=b; galion_session={good}"))],
    )
    .await;
    assert_eq!(r.status(), 200);

    let other = TestKey::ed25519("not-published");
    let mut c = claims("u2", "user");
    let header_none = b64(&json!({"alg": "none", "typ": "JWT"}));
    let payload = b64(&c);
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = {
        let mut p = claims("u1", "admin");
        p["jti"] = json!("x");
        format!("{}.{}.{}", parts[0], b64(&p), parts[2])
    };
    // HS256 "signed" with the public key bytes of the Ed25519 key (key confusion).
    let confusion = {
        let x = s.ed.jwk["x"].as_str().unwrap();
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some("ed-1".into());
        jsonwebtoken::encode(
            &h,
            &c,
            &jsonwebtoken::EncodingKey::from_secret(x.as_bytes()),
        )
        .unwrap()
    };
    let rs_header_on_ed_kid = format!(
        "{}.{}.{}",
        b64(&json!({"alg": "RS256", "kid": "ed-1"})),
        parts[1],
        parts[2]
    );
    let signed = |f: &dyn Fn(&mut Value)| {
        let mut c = claims("u3", "user");
        f(&mut c);
        s.ed.sign(&c)
    };
    let expired = signed(&|c| c["exp"] = json!(now() - 3600));
    let not_yet = signed(&|c| c["nbf"] = json!(now() + 3600));
    let wrong_iss = signed(&|c| c["iss"] = json!("https://evil.test"));
    let wrong_aud = signed(&|c| c["aud"] = json!("other"));
    let text_exp = signed(&|c| c["exp"] = json!("tomorrow"));
    let no_sub = signed(&|c| {
        c.as_object_mut().unwrap().remove("sub");
    });
    let huge = signed(&|c| c["pad"] = json!("x".repeat(9000)));
    c["exp"] = json!(now() + 60);
    let unknown_kid = other.sign(&c);

    let bad: Vec<(&str, String)> = vec![
        ("empty bearer", String::new()),
        ("garbage", "abc".into()),
        ("two segments", "aaa.bbb".into()),
        ("bad base64", "!!!.###.$$$".into()),
        ("alg none", format!("{header_none}.{payload}.")),
        ("tampered payload", tampered),
        ("key confusion", confusion),
        ("alg mismatch", rs_header_on_ed_kid),
        ("unknown kid", unknown_kid),
        ("expired", expired),
        ("not yet valid", not_yet),
        ("wrong issuer", wrong_iss),
        ("wrong audience", wrong_aud),
        ("non-numeric exp", text_exp),
        ("missing sub", no_sub),
        ("oversized", huge),
    ];
    assert!(bad.len() >= 15);
    for (what, token) in &bad {
        let r = get_with(
            &s.gw,
            "/jwt",
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
        assert_eq!(r.status(), 401, "{what} accepted");
        assert_eq!(
            r.headers()["www-authenticate"],
            r#"Bearer realm="galion", error="invalid_token""#,
            "{what}"
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized", "{what}");
        assert_eq!(
            body["error"]["message"], "valid credentials are required",
            "{what}: no detail"
        );
    }
    // No credentials, a non-bearer scheme, duplicates (two headers; header + cookie).
    assert_eq!(get_with(&s.gw, "/jwt", &[]).await.status(), 401);
    assert_eq!(
        get_with(&s.gw, "/jwt", &[("authorization", "Basic dTpw")])
            .await
            .status(),
        401
    );
    let r = get_with(
        &s.gw,
        "/jwt",
        &[
            ("authorization", &format!("Bearer {good}")),
            ("cookie", &format!("galion_session={good}")),
        ],
    )
    .await;
    assert_eq!(r.status(), 401, "token in header and cookie");
    let raw = galion_tests::raw_request(
        s.gw.http,
        format!("GET /jwt HTTP/1.1\r\nHost: galion.app\r\nAuthorization: Bearer {good}\r\nAuthorization: Bearer {good}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 401"), "{raw}");

    // Each refusal is counted by reason.
    for reason in [
        "expired",
        "not_yet_valid",
        "issuer",
        "audience",
        "signature",
        "unknown_kid",
        "algorithm",
        "malformed",
        "oversized",
        "duplicate",
        "missing",
    ] {
        let n =
            s.gw.metric(&format!(
                "gateway_auth_rejected_total{{reason=\"{reason}\"}}"
            ))
            .await;
        assert!(n >= 1.0, "reason {reason} not counted");
    }
    assert_eq!(
        s.up.hits(),
        2,
        "only the two valid requests reached the upstream"
    );
}

#[tokio::test]
async fn es256_and_rs256_keys_from_the_jwks_verify() {
    let s = setup().await;
    let ec = TestKey::p256("ec-1");
    let rsa = TestKey::rsa("rsa-1");
    s.auth.set_keys(&[&s.ed, &ec, &rsa]);
    // Unknown kids trigger a refetch (at most once per min_refresh_interval = 1 s).
    let ok = eventually(5, || async {
        (bearer(&s.gw, "/jwt", &ec.sign(&claims("e", "user"))).await == 200).then_some(())
    })
    .await;
    assert!(ok.is_some(), "ES256 token not accepted after rotation");
    assert_eq!(
        bearer(&s.gw, "/jwt", &rsa.sign(&claims("r", "user"))).await,
        200
    );
}

#[tokio::test]
async fn roles_api_keys_and_identity_headers() {
    let s = setup().await;
    let user = s.ed.sign(&claims("u1", "user"));
    let admin = s.ed.sign(&claims("a1", "admin"));
    let r = get_with(
        &s.gw,
        "/admin",
        &[("authorization", &format!("Bearer {user}"))],
    )
    .await;
    assert_eq!(r.status(), 403);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("insufficient_scope"));
    assert_eq!(bearer(&s.gw, "/admin", &admin).await, 200);

    // The upstream sees the verified identity and never a forged one.
    let v: Value = get_with(
        &s.gw,
        "/jwt",
        &[
            ("authorization", &format!("Bearer {user}")),
            ("x-user-role", "admin"),
            ("x-user-id", "root"),
            ("x-user-extra", "1"),
        ],
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["headers"]["x-user-id"], "u1");
    assert_eq!(v["headers"]["x-user-role"], "user");
    assert_eq!(v["headers"]["x-user-email"], "u1@example.com");
    assert!(v["headers"].get("x-user-extra").is_none());
    let v: Value = get_with(
        &s.gw,
        "/public",
        &[("x-user-role", "admin"), ("X-User-Id", "root")],
    )
    .await
    .json()
    .await
    .unwrap();
    assert!(
        v["headers"].get("x-user-role").is_none(),
        "forged role reached the upstream: {v}"
    );
    assert!(v["headers"].get("x-user-id").is_none());

    // API keys.
    assert_eq!(
        get_with(&s.gw, "/key", &[("x-api-key", "key-123")])
            .await
            .status(),
        200
    );
    assert_eq!(
        get_with(&s.gw, "/key", &[("x-api-key", "key-124")])
            .await
            .status(),
        401
    );
    assert_eq!(get_with(&s.gw, "/key", &[]).await.status(), 401);
    assert_eq!(
        get_with(
            &s.gw,
            "/key",
            &[("authorization", &format!("Bearer {user}"))]
        )
        .await
        .status(),
        401
    );
    let v: Value = get_with(&s.gw, "/key", &[("x-api-key", "key-123")])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["headers"]["x-user-id"], "apikey:ingest");
    assert_eq!(v["headers"]["x-user-role"], "service");
    // Either credential on an `any` route.
    assert_eq!(
        get_with(&s.gw, "/any", &[("x-api-key", "key-123")])
            .await
            .status(),
        200
    );
    assert_eq!(bearer(&s.gw, "/any", &user).await, 200);
    assert_eq!(get_with(&s.gw, "/any", &[]).await.status(), 401);
}

#[tokio::test]
async fn revoked_token_refused_within_one_second() {
    let s = setup().await;
    let c = claims("u9", "user");
    let token = s.ed.sign(&c);
    assert_eq!(bearer(&s.gw, "/jwt", &token).await, 200, "cached as valid");
    let start = Instant::now();
    s.auth
        .revoke(c["jti"].as_str().unwrap(), c["exp"].as_u64().unwrap());
    let refused = eventually(3, || async {
        (bearer(&s.gw, "/jwt", &token).await == 401).then_some(())
    })
    .await;
    assert!(refused.is_some(), "{}", s.gw.log());
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        start.elapsed()
    );
    // Other tokens of the same user are unaffected.
    let mut other = claims("u9", "user");
    other["jti"] = json!("another-session");
    assert_eq!(bearer(&s.gw, "/jwt", &s.ed.sign(&other)).await, 200);
}

#[tokio::test]
async fn jwks_rotation_and_outage() {
    let s = setup().await;
    let old = s.ed.sign(&claims("u1", "user"));
    assert_eq!(bearer(&s.gw, "/jwt", &old).await, 200);
    // Rotation without restart: a new key appears, the old one stays during rotation.
    let next = TestKey::ed25519("ed-2");
    s.auth.set_keys(&[&s.ed, &next]);
    let new_token = next.sign(&claims("u2", "user"));
    let ok = eventually(5, || async {
        (bearer(&s.gw, "/jwt", &new_token).await == 200).then_some(())
    })
    .await;
    assert!(ok.is_some(), "rotated key not picked up");
    assert_eq!(
        bearer(&s.gw, "/jwt", &s.ed.sign(&claims("u3", "user"))).await,
        200
    );

    // The JWKS server goes down: keys already known keep verifying new tokens.
    s.auth.set_down(true);
    let fetches = s.auth.jwks_fetches();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        bearer(&s.gw, "/jwt", &next.sign(&claims("u4", "user"))).await,
        200
    );
    assert_eq!(
        bearer(&s.gw, "/jwt", &s.ed.sign(&claims("u5", "user"))).await,
        200
    );
    // An unknown kid during the outage is refused, not a 5xx.
    assert_eq!(
        bearer(
            &s.gw,
            "/jwt",
            &TestKey::ed25519("ed-3").sign(&claims("u6", "user"))
        )
        .await,
        401
    );
    assert!(s.auth.jwks_fetches() >= fetches);
}

#[tokio::test]
async fn cors_preflight_and_disallowed_origin() {
    let s = setup().await;
    let hits = s.up.hits();
    let pre = client()
        .request(reqwest::Method::OPTIONS, s.gw.url("/cors/x"))
        .header("origin", "https://studio.galion.app")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), 204);
    let h = pre.headers();
    assert_eq!(
        h["access-control-allow-origin"],
        "https://studio.galion.app"
    );
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert!(h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    assert_eq!(
        h["access-control-allow-headers"],
        "authorization, content-type"
    );
    assert!(h.get("access-control-max-age").is_some());

    let evil = client()
        .request(reqwest::Method::OPTIONS, s.gw.url("/cors/x"))
        .header("origin", "https://galion.app.evil.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(evil
        .headers()
        .keys()
        .all(|k| !k.as_str().starts_with("access-control-")));
    assert_eq!(s.up.hits(), hits, "preflights never reach the upstream");

    let token = s.ed.sign(&claims("u1", "user"));
    let ok = get_with(
        &s.gw,
        "/cors/x",
        &[
            ("authorization", &format!("Bearer {token}")),
            ("origin", "https://galion.app"),
        ],
    )
    .await;
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://galion.app"
    );
    assert_eq!(
        ok.headers()["access-control-expose-headers"],
        "x-request-id"
    );
    let bad = get_with(
        &s.gw,
        "/cors/x",
        &[
            ("authorization", &format!("Bearer {token}")),
            ("origin", "https://evil.com"),
        ],
    )
    .await;
    assert_eq!(bad.status(), 200);
    assert!(bad.headers().get("access-control-allow-origin").is_none());
    // Default security headers on proxied responses (no HSTS over plain HTTP).
    assert_eq!(ok.headers()["x-content-type-options"], "nosniff");
    assert_eq!(ok.headers()["x-frame-options"], "DENY");
    assert!(ok.headers().get("strict-transport-security").is_none());
}

#[tokio::test]
async fn body_limit_is_413_before_the_upstream_gets_it() {
    let s = setup().await;
    let small = client()
        .post(s.gw.url("/upload"))
        .body(vec![b'a'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(small.status(), 200);
    let hits = s.up.hits();
    let big = client()
        .post(s.gw.url("/upload"))
        .body(vec![b'a'; 5000])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    let v: Value = big.json().await.unwrap();
    assert_eq!(v["error"]["code"], "payload_too_large");
    assert_eq!(
        s.up.hits(),
        hits,
        "declared-length body refused before the upstream"
    );
    // Chunked (no Content-Length): cut off once the limit is passed.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..10).map(|_| Ok(vec![b'b'; 600])).collect();
    let stream = futures::stream::iter(chunks);
    let r = client()
        .post(s.gw.url("/upload"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // Oversized header block: 431.
    let r = get_with(&s.gw, "/public", &[("x-big", &"h".repeat(40 * 1024))]).await;
    assert_eq!(r.status(), 431);
}

#[tokio::test]
async fn websocket_upgrade_needs_a_token() {
    let s = setup().await;
    let upgrade = |auth: &str| {
        format!("GET /ws/chat HTTP/1.1\r\nHost: galion.app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{auth}\r\n")
    };
    let refused = galion_tests::raw_request(s.gw.http, upgrade("").as_bytes()).await;
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let token = s.ed.sign(&claims("ws", "user"));
    let mut conn = tokio::net::TcpStream::connect(s.gw.http).await.unwrap();
    conn.write_all(upgrade(&format!("Authorization: Bearer {token}\r\n")).as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = conn.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    conn.write_all(b"ping-frame").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"ping-frame");
}
