//! Response cache and compression end to end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::time::Duration;

use galion_tests::{
    client, eventually, fake_upstream, spawn_gateway, FakeUpstream, Gateway, ADMIN_DIGEST,
};
use serde_json::{json, Value};

async fn setup() -> (Gateway, FakeUpstream, FakeUpstream) {
    let up = fake_upstream("up").await;
    let fragile = fake_upstream("fragile").await;
    let conf = format!(
        r#"
admin: {{ token_sha256: ["{ADMIN_DIGEST}"] }}
cache: {{ max_size: 256KiB, max_object_size: 64KiB, lock_timeout: 5s }}
hosts:
  galion.app:
    default: true
    routes:
      - {{ name: cached, prefix: /c/, upstream: up, cache: {{ ttl: 60s }} }}
      - {{ name: short, prefix: /short/, upstream: up, cache: {{ ttl: 1s }} }}
      - {{ name: swr, prefix: /swr/, upstream: up, cache: {{ ttl: 1s, stale_while_revalidate: 30s }} }}
      - {{ name: sie, prefix: /sie/, upstream: fragile, cache: {{ ttl: 1s, stale_if_error: 60s }} }}
      - {{ name: zip, prefix: /z/, upstream: up, compress: {{ min_size: 1KiB }} }}
      - {{ name: zipcached, prefix: /zc/, upstream: up, cache: {{ ttl: 60s }}, compress: {{}} }}
upstreams:
  up: {{ servers: ["{up}"] }}
  fragile: {{ servers: ["{fragile}"], retries: 0 }}
"#,
        up = up.addr,
        fragile = fragile.addr
    );
    (spawn_gateway(&conf).await, up, fragile)
}

async fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = client().get(gw.url(path));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap()
}

fn cache_status(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-cache-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

async fn status_of(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> String {
    cache_status(&get(gw, path, headers).await)
}

#[tokio::test]
async fn miss_hit_expiry_and_what_is_never_stored() {
    let (gw, up, _) = setup().await;
    assert_eq!(status_of(&gw, "/c/a", &[]).await, "MISS");
    let r = get(&gw, "/c/a", &[]).await;
    assert_eq!(cache_status(&r), "HIT");
    assert_eq!(r.status(), 200);
    assert_eq!(up.hits(), 1);
    // The query is part of the key.
    assert_eq!(status_of(&gw, "/c/a?page=2", &[]).await, "MISS");
    assert_eq!(status_of(&gw, "/c/a?page=2", &[]).await, "HIT");
    // HEAD is answered from the stored GET.
    let r = client().head(gw.url("/c/a")).send().await.unwrap();
    assert_eq!(cache_status(&r), "HIT");

    // Expiry by max-age.
    let maxage = [("x-test-resp-cache-control", "max-age=1")];
    assert_eq!(status_of(&gw, "/c/maxage", &maxage).await, "MISS");
    assert_eq!(status_of(&gw, "/c/maxage", &maxage).await, "HIT");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let before = up.hits();
    let s = status_of(&gw, "/c/maxage", &maxage).await;
    assert!(s == "EXPIRED" || s == "MISS", "{s}");
    assert_eq!(up.hits(), before + 1);

    // Never stored: no-store, private, Set-Cookie.
    for (path, h) in [
        ("/c/nostore", ("x-test-resp-cache-control", "no-store")),
        (
            "/c/private",
            ("x-test-resp-cache-control", "private, max-age=60"),
        ),
        ("/c/cookie", ("x-test-resp-set-cookie", "session=abc")),
    ] {
        let before = up.hits();
        for _ in 0..3 {
            assert_ne!(status_of(&gw, path, &[h]).await, "HIT", "{path}");
        }
        assert_eq!(up.hits(), before + 3, "{path} was stored");
    }

    // Credentials bypass the cache, and never feed it.
    let before = up.hits();
    for _ in 0..2 {
        let s = status_of(&gw, "/c/creds", &[("authorization", "Bearer x")]).await;
        assert_eq!(s, "BYPASS");
    }
    assert_eq!(
        status_of(&gw, "/c/creds", &[("cookie", "a=b")]).await,
        "BYPASS"
    );
    assert_eq!(up.hits(), before + 3);
    assert_eq!(status_of(&gw, "/c/creds", &[]).await, "MISS");
    // POST is never cached.
    let r = client().post(gw.url("/c/a")).send().await.unwrap();
    assert_eq!(cache_status(&r), "BYPASS");

    assert!(
        gw.metric("gateway_cache_lookups_total{route=\"cached\",status=\"HIT\"}")
            .await
            >= 3.0
    );
    assert!(gw.metric("gateway_cache_size_bytes").await > 0.0);
}

#[tokio::test]
async fn vary_keeps_variants_apart() {
    let (gw, up, _) = setup().await;
    let vary = ("x-test-resp-vary", "accept-encoding");
    let body = |r: reqwest::Response| async move { r.json::<Value>().await.unwrap() };
    let g1 = get(&gw, "/c/vary", &[vary, ("accept-encoding", "gzip")]).await;
    assert_eq!(cache_status(&g1), "MISS");
    let b1 = body(g1).await;
    let b2 = get(&gw, "/c/vary", &[vary, ("accept-encoding", "br")]).await;
    assert_eq!(cache_status(&b2), "MISS");
    let b2 = body(b2).await;
    assert_eq!(b2["headers"]["accept-encoding"], "br");
    let g3 = get(&gw, "/c/vary", &[vary, ("accept-encoding", "gzip")]).await;
    assert_eq!(cache_status(&g3), "HIT");
    assert_eq!(body(g3).await, b1);
    let b4 = get(&gw, "/c/vary", &[vary, ("accept-encoding", "br")]).await;
    assert_eq!(cache_status(&b4), "HIT");
    assert_eq!(body(b4).await["headers"]["accept-encoding"], "br");
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn concurrent_misses_make_one_upstream_request() {
    let (gw, up, _) = setup().await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let url = gw.url("/c/cold");
        tasks.push(tokio::spawn(async move {
            client()
                .get(url)
                .header("x-test-sleep-ms", "300")
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(up.hits(), 1, "the cache lock lets one request through");
}

#[tokio::test]
async fn stale_while_revalidate_and_stale_if_error() {
    let (gw, up, mut fragile) = setup().await;
    assert_eq!(status_of(&gw, "/swr/x", &[]).await, "MISS");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // Expired but within stale-while-revalidate: served at once, refreshed behind.
    let r = get(&gw, "/swr/x", &[("x-test-sleep-ms", "500")]).await;
    assert_eq!(cache_status(&r), "STALE");
    let refreshed = eventually(5, || async { (up.hits() == 2).then_some(()) }).await;
    assert!(
        refreshed.is_some(),
        "no background refresh ({} hits)",
        up.hits()
    );
    let fresh = eventually(5, || async {
        (status_of(&gw, "/swr/x", &[]).await == "HIT").then_some(())
    })
    .await;
    assert!(fresh.is_some());

    // The upstream dies: the expired copy is served within stale-if-error.
    let r = get(&gw, "/sie/y", &[]).await;
    assert_eq!(cache_status(&r), "MISS");
    let original: Value = r.json().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    fragile.stop();
    let r = get(&gw, "/sie/y", &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(cache_status(&r), "STALE");
    assert_eq!(r.json::<Value>().await.unwrap(), original);
}

async fn purge(gw: &Gateway, body: Value) -> Value {
    let r = gw
        .admin(
            reqwest::Method::POST,
            "/admin/cache/purge",
            Some(body.clone()),
        )
        .await;
    assert_eq!(r.status(), 200, "{body}");
    r.json().await.unwrap()
}

#[tokio::test]
async fn purge_by_url_and_prefix_and_bounded_size() {
    let (gw, _up, _) = setup().await;
    for p in ["/c/p1", "/c/p2", "/c/q1"] {
        assert_eq!(status_of(&gw, p, &[]).await, "MISS");
        assert_eq!(status_of(&gw, p, &[]).await, "HIT");
    }
    assert_eq!(
        purge(&gw, json!({"url": "https://galion.app/c/p1"})).await["purged"],
        1
    );
    assert_eq!(status_of(&gw, "/c/p1", &[]).await, "MISS");
    assert_eq!(status_of(&gw, "/c/p2", &[]).await, "HIT");
    let n = purge(&gw, json!({"prefix": "galion.app/c/p"})).await["purged"]
        .as_u64()
        .unwrap();
    assert_eq!(n, 2, "p1 (cached again) and p2");
    assert_eq!(status_of(&gw, "/c/p2", &[]).await, "MISS");
    assert_eq!(status_of(&gw, "/c/q1", &[]).await, "HIT");
    let r = gw
        .admin(
            reqwest::Method::POST,
            "/admin/cache/purge",
            Some(json!({"nope": 1})),
        )
        .await;
    assert_eq!(r.status(), 400);

    // 10,000 distinct keys never push the store past cache.max_size (256 KiB).
    let mut tasks = Vec::new();
    for t in 0..8 {
        let base = gw.url("/c/k");
        tasks.push(tokio::spawn(async move {
            let c = client();
            for i in (t..10_000).step_by(8) {
                let _ = c.get(format!("{base}{i}")).send().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let bounded = eventually(5, || async {
        let size = gw.metric("gateway_cache_size_bytes").await;
        (size > 0.0 && size <= 256.0 * 1024.0).then_some(size)
    })
    .await;
    assert!(
        bounded.is_some(),
        "cache size {}",
        gw.metric("gateway_cache_size_bytes").await
    );
}

fn decode(encoding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        "gzip" => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .unwrap();
        }
        "br" => {
            if let Err(e) = brotli::Decompressor::new(body, 4096).read_to_end(&mut out) {
                panic!(
                    "br: {e}: {} bytes, starts {:?}",
                    body.len(),
                    &body[..body.len().min(40)]
                );
            }
        }
        "zstd" => out = zstd::decode_all(body).unwrap(),
        _ => out = body.to_vec(),
    }
    out
}

#[tokio::test]
async fn compression_per_encoding_identity_and_never_twice() {
    let (gw, _up, _) = setup().await;
    let pad = ("x-test-pad", "4000");
    for enc in ["gzip", "br", "zstd"] {
        let r = get(&gw, "/z/a", &[pad, ("accept-encoding", enc)]).await;
        assert_eq!(r.headers()["content-encoding"], enc);
        assert!(r.headers()["vary"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("accept-encoding"));
        let raw = r.bytes().await.unwrap();
        assert!(raw.len() < 4000, "{enc}: {} bytes", raw.len());
        let v: Value = serde_json::from_slice(&decode(enc, &raw)).unwrap();
        assert_eq!(v["uri"], "/z/a");
    }
    // Nothing accepted: identity.
    let r = get(&gw, "/z/a", &[pad]).await;
    assert!(r.headers().get("content-encoding").is_none());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["uri"], "/z/a");
    // Below min_size: sent as is.
    let r = get(&gw, "/z/small", &[("accept-encoding", "gzip")]).await;
    assert!(r.headers().get("content-encoding").is_none());
    // Not a compressible type.
    let r = get(
        &gw,
        "/z/img",
        &[
            pad,
            ("accept-encoding", "gzip"),
            ("x-test-resp-content-type", "image/png"),
        ],
    )
    .await;
    assert!(r.headers().get("content-encoding").is_none());
    // Already encoded upstream: passed through untouched, never compressed twice.
    let r = get(
        &gw,
        "/z/pre",
        &[
            pad,
            ("accept-encoding", "gzip"),
            ("x-test-resp-content-encoding", "gzip"),
        ],
    )
    .await;
    let ce: Vec<_> = r.headers().get_all("content-encoding").iter().collect();
    assert_eq!(ce.len(), 1);
    assert_eq!(ce[0], "gzip");
    let raw = r.bytes().await.unwrap();
    let v: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(v["uri"], "/z/pre", "the upstream's bytes, unchanged");
}

#[tokio::test]
async fn compressed_variants_from_one_cached_object() {
    let (gw, up, _) = setup().await;
    let pad = ("x-test-pad", "4000");
    let mut bodies = Vec::new();
    for (enc, want) in [
        ("gzip", "MISS"),
        ("br", "HIT"),
        ("", "HIT"),
        ("zstd", "HIT"),
        ("gzip", "HIT"),
    ] {
        let mut h = vec![pad];
        if !enc.is_empty() {
            h.push(("accept-encoding", enc));
        }
        let r = get(&gw, "/zc/doc", &h).await;
        assert_eq!(cache_status(&r), want, "{enc}");
        let got = r
            .headers()
            .get("content-encoding")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(got.as_deref(), (!enc.is_empty()).then_some(enc), "{enc}");
        let raw = r.bytes().await.unwrap();
        bodies.push(decode(enc, &raw));
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "every variant decodes to the same body"
    );
    assert_eq!(up.hits(), 1);
}

/// Fresh hits are answered before pingora-cache's hit path: they must carry the
/// same headers, leave conditional and range requests to pingora, and come after
/// every policy of the route (here a rate limit).
#[tokio::test]
async fn fast_hits_keep_headers_policies_conditions_and_ranges() {
    let up = fake_upstream("up").await;
    let conf = format!(
        r#"
cache: {{ max_size: 1MiB, max_object_size: 64KiB }}
hosts:
  galion.app:
    default: true
    routes:
      - {{ name: cached, prefix: /c/, upstream: up, cache: {{ ttl: 60s }} }}
      - {{ name: limited, prefix: /l/, upstream: up, cache: {{ ttl: 60s }}, rate_limit: {{ rate: 3/min, burst: 3 }} }}
upstreams:
  up: {{ servers: ["{up}"] }}
"#,
        up = up.addr
    );
    let gw = spawn_gateway(&conf).await;
    let etag = [("x-test-resp-etag", "\"v1\"")];
    let first = get(&gw, "/c/doc", &etag).await;
    assert_eq!(cache_status(&first), "MISS");
    let first_body = first.bytes().await.unwrap();

    let hit = get(&gw, "/c/doc", &[("x-request-id", "fast-1")]).await;
    assert_eq!(hit.status(), 200);
    assert_eq!(cache_status(&hit), "HIT");
    let h = hit.headers();
    let age: u64 = h["age"].to_str().unwrap().parse().unwrap();
    assert!(age < 60, "age {age}");
    assert_eq!(h["x-request-id"], "fast-1");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["etag"], "\"v1\"");
    assert_eq!(h["accept-ranges"], "bytes");
    assert_eq!(h["x-upstream"], "up");
    assert_eq!(
        h["content-length"].to_str().unwrap(),
        first_body.len().to_string()
    );
    assert_eq!(hit.bytes().await.unwrap(), first_body);

    // HEAD: the same head, no body.
    let head = client().head(gw.url("/c/doc")).send().await.unwrap();
    assert_eq!(cache_status(&head), "HIT");
    assert_eq!(
        head.headers()["content-length"].to_str().unwrap(),
        first_body.len().to_string()
    );
    assert!(head.bytes().await.unwrap().is_empty());

    // Conditional and range requests are answered from the cache by pingora.
    let not_modified = get(&gw, "/c/doc", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(not_modified.status(), 304);
    assert_eq!(cache_status(&not_modified), "HIT");
    let range = get(&gw, "/c/doc", &[("range", "bytes=0-4")]).await;
    assert_eq!(range.status(), 206);
    assert_eq!(
        range.headers()["content-range"].to_str().unwrap(),
        format!("bytes 0-4/{}", first_body.len())
    );
    assert_eq!(range.bytes().await.unwrap(), first_body.slice(0..5));
    assert_eq!(up.hits(), 1, "every request after the first was a hit");

    // The route's rate limit runs before the cache answers.
    let limited: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(get(&gw, "/l/x", &[]).await.status().as_u16());
        }
        v
    };
    assert_eq!(limited, [200, 200, 200, 429, 429]);
    assert_eq!(up.hits(), 2);
}

/// Hits with bodies on each side of the client connection's write buffer
/// (`server.write_buffer`, 16 KiB by default): a head and body smaller than
/// it are gathered in the buffer, a larger pair goes to the socket in one
/// vectored write. Either way the body arrives whole, and the keep-alive
/// connection carries the next answer after it.
#[tokio::test]
async fn hits_larger_and_smaller_than_the_write_buffer_arrive_whole() {
    let (gw, up, _fragile) = setup().await;
    let c = client();
    for (path, pad) in [("/c/ten", "10000"), ("/c/forty", "40000")] {
        let miss = c
            .get(gw.url(path))
            .header("x-test-pad", pad)
            .send()
            .await
            .unwrap();
        assert_eq!(cache_status(&miss), "MISS");
        let stored = miss.bytes().await.unwrap();
        assert!(
            stored.len() > pad.parse::<usize>().unwrap(),
            "{}",
            stored.len()
        );
        for _ in 0..3 {
            let hit = c.get(gw.url(path)).send().await.unwrap();
            assert_eq!(hit.status(), 200);
            assert_eq!(cache_status(&hit), "HIT");
            assert_eq!(
                hit.headers()["content-length"].to_str().unwrap(),
                stored.len().to_string()
            );
            assert_eq!(hit.bytes().await.unwrap(), stored);
        }
    }
    assert_eq!(up.hits(), 2, "one upstream request per object");
}
