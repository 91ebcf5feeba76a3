//! Host and path routing, forwarding headers and client IP, end to end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use galion_tests::{client, fake_upstream, spawn_gateway};
use serde_json::Value;

async fn get(url: &str, host: &str) -> (u16, Value) {
    let r = client().get(url).header("host", host).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn hosts_paths_methods_and_rewrites() {
    let a = fake_upstream("a").await;
    let b = fake_upstream("b").await;
    let conf = format!(
        r#"
upstreams:
  a: {{ servers: ["{a}"] }}
  b: {{ servers: ["{b}"] }}
hosts:
  galion.app:
    aliases: [www.galion.app]
    routes:
      - {{ name: root, prefix: /, upstream: a }}
      - {{ name: api, prefix: /api, upstream: a }}
      - {{ name: api-v1, prefix: /api/v1/, upstream: b }}
      - {{ name: login, exact: /api/v1/login, methods: [POST], upstream: a }}
      - {{ name: num, regex: '^/api/v1/items/[0-9]+$', upstream: a, rewrite: /item }}
      - {{ name: strip, prefix: /svc/, strip_prefix: true, upstream: b }}
      - {{ name: getonly, exact: /only-get, methods: [GET], upstream: a }}
  "*.galion.app":
    routes:
      - {{ name: wild, prefix: /, upstream: b }}
  default.test:
    default: true
    routes:
      - {{ name: fallback, prefix: /, upstream: b }}
"#,
        a = a.addr,
        b = b.addr
    );
    let gw = spawn_gateway(&conf).await;

    // Host selection: exact, alias, wildcard, default.
    let (s, v) = get(&gw.url("/x"), "galion.app").await;
    assert_eq!((s, v["server"].as_str()), (200, Some("a")));
    let (_, v) = get(&gw.url("/x"), "WWW.galion.app:8080").await;
    assert_eq!(v["server"], "a");
    let (_, v) = get(&gw.url("/x"), "studio.galion.app").await;
    assert_eq!(v["server"], "b");
    let (_, v) = get(&gw.url("/x"), "unknown.example").await;
    assert_eq!(v["server"], "b");

    // Path precedence: exact > regex > longest prefix > shorter prefix.
    let (_, v) = get(&gw.url("/api/v1/users"), "galion.app").await;
    assert_eq!(v["server"], "b", "longer prefix wins");
    let (_, v) = get(&gw.url("/api/other"), "galion.app").await;
    assert_eq!(v["server"], "a");
    let (_, v) = get(&gw.url("/apix"), "galion.app").await;
    assert_eq!(v["server"], "a");
    let (_, v) = get(&gw.url("/api/v1/items/42?x=1"), "galion.app").await;
    assert_eq!(
        (v["server"].as_str(), v["uri"].as_str()),
        (Some("a"), Some("/item?x=1"))
    );
    let r = client()
        .post(gw.url("/api/v1/login"))
        .header("host", "galion.app")
        .body("{}")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["server"].as_str(), v["uri"].as_str()),
        (Some("a"), Some("/api/v1/login"))
    );
    // GET on the POST-only exact route is a 405: it never falls through to the
    // broader prefix route (whose policy may be looser).
    let r = client()
        .get(gw.url("/api/v1/login"))
        .header("host", "galion.app")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");

    // strip_prefix keeps the query.
    let (_, v) = get(&gw.url("/svc/deep/path?q=1"), "galion.app").await;
    assert_eq!(v["uri"], "/deep/path?q=1");

    // Methods: a method the path's route does not take is a 405 with Allow,
    // not a fall-back to the / prefix route; HEAD goes where GET goes.
    let r = client()
        .delete(gw.url("/only-get"))
        .header("host", "galion.app")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, HEAD");
    let r = client()
        .head(gw.url("/only-get"))
        .header("host", "galion.app")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Dot segments are refused before routing.
    // (raw bytes: URL libraries resolve them before sending)
    for path in ["/api/%2e%2e/admin", "/api/../admin", "/a%2Fb"] {
        let resp = galion_tests::raw_request(
            gw.http,
            format!("GET {path} HTTP/1.1\r\nHost: galion.app\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{path}: {resp}");
    }
    // Both Content-Length and chunked: Transfer-Encoding wins (RFC 9112 §6.3), the
    // upstream never sees the Content-Length, and the connection is closed after.
    let resp = galion_tests::raw_request(
        gw.http,
        b"POST /x HTTP/1.1\r\nHost: galion.app\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("connection: close"),
        "{resp}"
    );
    assert!(!resp.contains("\"content-length\":\"5\""), "{resp}");
    // Duplicate lengths, a missing Host and garbage are 400, never 5xx.
    for raw in [
        "POST /x HTTP/1.1\r\nHost: galion.app\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        "GET /x HTTP/1.1\r\n\r\n",
        "GARBAGE\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: galion.app\r\nNoColon\r\n\r\n",
        "POST /x HTTP/1.1\r\nHost: galion.app\r\nContent-Length: abc\r\n\r\n",
    ] {
        let resp = galion_tests::raw_request(gw.http, raw.as_bytes()).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{raw:?}: {resp}");
    }
}

#[tokio::test]
async fn unknown_host_is_404_json_and_405_when_only_methods_differ() {
    let a = fake_upstream("a").await;
    let conf = format!(
        r#"
upstreams:
  a: {{ servers: ["{}"] }}
hosts:
  galion.app:
    routes:
      - {{ name: login, exact: /login, methods: [POST], upstream: a }}
"#,
        a.addr
    );
    let gw = spawn_gateway(&conf).await;
    let r = client()
        .get(gw.url("/"))
        .header("host", "nope.example")
        .header("x-request-id", "trace-me-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-request-id"], "trace-me-1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "unknown_host");
    assert_eq!(v["error"]["request_id"], "trace-me-1");

    let (s, v) = get(&gw.url("/login"), "galion.app").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
    let (s, _) = get(&gw.url("/elsewhere"), "galion.app").await;
    assert_eq!(s, 404);
    assert_eq!(a.hits(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn forwarding_headers_request_id_and_header_rules() {
    let a = fake_upstream("a").await;
    let conf = format!(
        r#"
upstreams:
  a: {{ servers: ["{}"] }}
hosts:
  galion.app:
    routes:
      - name: r
        prefix: /
        upstream: a
        request_headers: {{ set: {{ x-env: dev }}, remove: [x-drop-me] }}
        response_headers: {{ set: {{ x-frame-options: DENY }}, remove: [x-upstream] }}
"#,
        a.addr
    );
    let gw = spawn_gateway(&conf).await;
    let r = client()
        .get(gw.url("/p"))
        .header("host", "galion.app")
        .header("x-drop-me", "1")
        .send()
        .await
        .unwrap();
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(rid.len(), 32, "generated id echoed to the client");
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    assert!(r.headers().get("x-upstream").is_none());
    let v: Value = r.json().await.unwrap();
    let h = &v["headers"];
    assert_eq!(h["x-request-id"], rid.as_str());
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "galion.app");
    assert_eq!(h["x-env"], "dev");
    assert!(h.get("x-drop-me").is_none());

    // A sane client id is kept; an unsafe one replaced.
    let r = client()
        .get(gw.url("/p"))
        .header("host", "galion.app")
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    assert_ne!(r.headers()["x-request-id"], "bad id with spaces");

    // Access log: one JSON line per request with the spec's fields.
    let line = galion_tests::eventually(5, || {
        let log = gw.access_log();
        let rid = rid.clone();
        async move { log.lines().find(|l| l.contains(&rid)).map(str::to_owned) }
    })
    .await
    .expect("access log line");
    let entry: Value = serde_json::from_str(&line).unwrap();
    for field in [
        "timestamp",
        "request_id",
        "client_ip",
        "host",
        "route",
        "method",
        "path",
        "status",
        "bytes",
        "upstream",
        "duration_ms",
    ] {
        assert!(entry.get(field).is_some(), "missing {field} in {line}");
    }
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["route"], "r");
}

#[tokio::test]
async fn client_ip_from_trusted_proxies_only() {
    let a = fake_upstream("a").await;
    let routes = format!(
        r#"
upstreams:
  a: {{ servers: ["{}"] }}
hosts:
  galion.app:
    routes:
      - {{ name: r, prefix: /, upstream: a }}
"#,
        a.addr
    );
    // Loopback not trusted: the forged header is replaced by the peer address.
    let untrusted = spawn_gateway(&routes).await;
    let v: Value = client()
        .get(untrusted.url("/"))
        .header("host", "galion.app")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-real-ip", "6.6.6.6")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(v["headers"]["x-real-ip"], "127.0.0.1");

    // Loopback trusted (a CDN in front): the right-most untrusted hop is the client.
    let trusted = spawn_gateway(&format!(
        "trusted_proxies: [127.0.0.1, 10.0.0.0/8]\n{routes}"
    ))
    .await;
    let v: Value = client()
        .get(trusted.url("/"))
        .header("host", "galion.app")
        .header("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.1.2.3")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["headers"]["x-real-ip"], "203.0.113.7");
    assert_eq!(
        v["headers"]["x-forwarded-for"],
        "6.6.6.6, 203.0.113.7, 10.1.2.3, 127.0.0.1"
    );
}
