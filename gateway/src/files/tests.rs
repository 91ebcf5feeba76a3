#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Unit tests of the file server on a real directory tree (temp dir).

use super::*;
use crate::config::CacheRule;

fn site(root: &Path) -> StaticSite {
    StaticSite {
        root: root.to_owned(),
        index: "index.html".into(),
        fallback: Some("index.html".into()),
        cache_control: vec![
            CacheRule {
                pattern: "/assets/*".into(),
                value: HeaderValue::from_static("public, max-age=31536000, immutable"),
            },
            CacheRule {
                pattern: "index.html".into(),
                value: HeaderValue::from_static("no-cache"),
            },
        ],
        precompressed: true,
        outside_symlinks: false,
        memory_cache: false,
        compress: None,
    }
}

fn get(path: &str) -> FileRequest {
    FileRequest {
        method: Method::GET,
        path: path.into(),
        target: path.into(),
        if_none_match: None,
        if_modified_since: None,
        range: None,
        if_range: None,
        accept_encoding: None,
    }
}

/// root/ {index.html, assets/app.js, assets/app.js.br, docs/index.html,
/// .env, big.bin}; outside/secret.txt beside the root.
fn tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("assets")).expect("mkdir");
    std::fs::create_dir_all(root.join("docs")).expect("mkdir");
    std::fs::create_dir_all(dir.path().join("outside")).expect("mkdir");
    std::fs::write(root.join("index.html"), "<h1>Galion</h1>").expect("write");
    std::fs::write(root.join("assets/app.js"), "console.log(1)").expect("write");
    std::fs::write(root.join("assets/app.js.br"), "BR").expect("write");
    std::fs::write(root.join("docs/index.html"), "docs").expect("write");
    std::fs::write(root.join(".env"), "SECRET=1").expect("write");
    std::fs::write(root.join("big.bin"), vec![7u8; 200_000]).expect("write");
    std::fs::write(dir.path().join("outside/secret.txt"), "secret").expect("write");
    dir
}

fn field<'a>(a: &'a Answer, name: &HeaderName) -> Option<&'a str> {
    a.fields
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.to_str().ok())
}

fn body(a: &Answer) -> &[u8] {
    match &a.body {
        Body::Bytes(b) => b,
        _ => b"",
    }
}

#[test]
fn files_with_their_type_validators_and_cache_control() {
    let t = tree();
    let s = site(&t.path().join("root"));
    let a = serve(&s, &get("/assets/app.js")).expect("served");
    assert_eq!(a.status, 200);
    assert_eq!(body(&a), b"console.log(1)");
    assert_eq!(
        field(&a, &header::CONTENT_TYPE),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(
        field(&a, &header::CACHE_CONTROL),
        Some("public, max-age=31536000, immutable")
    );
    assert!(field(&a, &header::ETAG).is_some_and(|e| e.starts_with('"')));
    assert!(field(&a, &header::LAST_MODIFIED).is_some());
    assert_eq!(field(&a, &header::VARY), Some("Accept-Encoding"));
    assert_eq!(field(&a, &header::CONTENT_ENCODING), None);

    let i = serve(&s, &get("/")).expect("index");
    assert_eq!(body(&i), b"<h1>Galion</h1>");
    assert_eq!(field(&i, &header::CACHE_CONTROL), Some("no-cache"));
}

#[test]
fn conditional_requests_answer_304() {
    let t = tree();
    let s = site(&t.path().join("root"));
    let a = serve(&s, &get("/index.html")).expect("served");
    let etag = field(&a, &header::ETAG).expect("etag").to_owned();
    let lm = field(&a, &header::LAST_MODIFIED).expect("date").to_owned();
    let mut r = get("/index.html");
    r.if_none_match = Some(etag.clone().into_bytes());
    let n = serve(&s, &r).expect("304");
    assert_eq!(n.status, 304);
    assert!(n.body.is_empty());
    assert_eq!(field(&n, &header::ETAG), Some(etag.as_str()));
    let mut r = get("/index.html");
    r.if_modified_since = Some(lm.into_bytes());
    assert_eq!(serve(&s, &r).expect("304").status, 304);
    // If-None-Match decides when both are sent.
    r.if_none_match = Some(b"\"stale\"".to_vec());
    assert_eq!(serve(&s, &r).expect("200").status, 200);
}

#[test]
fn ranges() {
    let t = tree();
    let s = site(&t.path().join("root"));
    let mut r = get("/big.bin");
    r.range = Some(b"bytes=10-19".to_vec());
    let a = serve(&s, &r).expect("206");
    assert_eq!(a.status, 206);
    assert_eq!(body(&a), [7u8; 10]);
    assert_eq!(
        field(&a, &header::CONTENT_RANGE),
        Some("bytes 10-19/200000")
    );
    r.range = Some(b"bytes=300000-".to_vec());
    let a = serve(&s, &r).expect("416");
    assert_eq!(a.status, 416);
    assert_eq!(field(&a, &header::CONTENT_RANGE), Some("bytes */200000"));
    // A stale If-Range: the whole file, streamed from the handle.
    r.range = Some(b"bytes=0-1".to_vec());
    r.if_range = Some(b"\"old\"".to_vec());
    let a = serve(&s, &r).expect("200");
    assert_eq!(a.status, 200);
    assert!(matches!(
        a.body,
        Body::File {
            offset: 0,
            len: 200_000,
            ..
        }
    ));
}

#[test]
fn precompressed_sibling_by_accept_encoding() {
    let t = tree();
    let s = site(&t.path().join("root"));
    let mut r = get("/assets/app.js");
    r.accept_encoding = Some(b"gzip, br".to_vec());
    let a = serve(&s, &r).expect("br");
    assert_eq!(body(&a), b"BR");
    assert_eq!(field(&a, &header::CONTENT_ENCODING), Some("br"));
    assert_eq!(
        field(&a, &header::CONTENT_TYPE),
        Some("text/javascript; charset=utf-8")
    );
    r.accept_encoding = Some(b"gzip".to_vec());
    let a = serve(&s, &r).expect("identity");
    assert_eq!(body(&a), b"console.log(1)");
    let off = StaticSite {
        precompressed: false,
        ..s
    };
    r.accept_encoding = Some(b"br".to_vec());
    let a = serve(&off, &r).expect("identity");
    assert_eq!(body(&a), b"console.log(1)");
    assert_eq!(field(&a, &header::VARY), None);
}

#[test]
fn spa_fallback_and_missing_assets() {
    let t = tree();
    let s = site(&t.path().join("root"));
    let a = serve(&s, &get("/dashboard/settings")).expect("index");
    assert_eq!((a.status, body(&a)), (200, &b"<h1>Galion</h1>"[..]));
    assert_eq!(
        serve(&s, &get("/assets/missing.js")).err(),
        Some(Refusal::NotFound)
    );
    let strict = StaticSite {
        fallback: None,
        ..s
    };
    assert_eq!(
        serve(&strict, &get("/dashboard")).err(),
        Some(Refusal::NotFound)
    );
}

#[test]
fn directories_answer_their_index_after_a_slash() {
    let t = tree();
    let s = site(&t.path().join("root"));
    let mut r = get("/docs");
    r.target = "//docs?x=1".into();
    let a = serve(&s, &r).expect("redirect");
    assert_eq!(a.status, 301);
    assert_eq!(field(&a, &header::LOCATION), Some("/docs/?x=1"));
    let a = serve(&s, &get("/docs/")).expect("index");
    assert_eq!(body(&a), b"docs");
    // A directory without an index is not listed: the fallback (no
    // extension) or 404.
    let a = serve(&s, &get("/assets/")).expect("fallback");
    assert_eq!(body(&a), b"<h1>Galion</h1>");
}

#[test]
fn refusals() {
    let t = tree();
    let root = t.path().join("root");
    let s = site(&root);
    assert_eq!(serve(&s, &get("/.env")).err(), Some(Refusal::Hidden));
    assert_eq!(
        serve(&s, &get("/%2e%2e/outside/secret.txt")).err(),
        Some(Refusal::BadPath)
    );
    assert_eq!(
        serve(&s, &get("/index.html%00.js")).err(),
        Some(Refusal::BadPath)
    );
    let mut post = get("/index.html");
    post.method = Method::POST;
    assert_eq!(serve(&s, &post).err(), Some(Refusal::MethodNotAllowed));
}

#[test]
fn symlinks_leaving_the_root_only_when_allowed() {
    let t = tree();
    let root = t.path().join("root");
    let outside = t.path().join("outside");
    std::os::unix::fs::symlink(outside.join("secret.txt"), root.join("leak.txt")).expect("link");
    std::os::unix::fs::symlink(&outside, root.join("shared")).expect("link");
    std::os::unix::fs::symlink(root.join(".env"), root.join("env.txt")).expect("link");
    std::os::unix::fs::symlink(root.join("index.html"), root.join("home.html")).expect("link");
    let s = site(&root);
    for p in ["/leak.txt", "/shared/secret.txt", "/env.txt"] {
        assert_eq!(serve(&s, &get(p)).err(), Some(Refusal::NotFound), "{p}");
    }
    // A link that stays inside is followed.
    let a = serve(&s, &get("/home.html")).expect("inside");
    assert_eq!(body(&a), b"<h1>Galion</h1>");
    let open = StaticSite {
        outside_symlinks: true,
        ..s
    };
    let a = serve(&open, &get("/shared/secret.txt")).expect("allowed");
    assert_eq!(body(&a), b"secret");
}

#[test]
fn a_root_reached_through_a_symlink_is_served() {
    let t = tree();
    let current = t.path().join("current");
    std::os::unix::fs::symlink(t.path().join("root"), &current).expect("link");
    let a = serve(&site(&current), &get("/index.html")).expect("served");
    assert_eq!(a.status, 200);
}

#[test]
fn head_counts_without_reading() {
    let t = tree();
    let s = site(&t.path().join("root"));
    let mut r = get("/index.html");
    r.method = Method::HEAD;
    let a = serve(&s, &r).expect("head");
    assert!(matches!(a.body, Body::File { len: 15, .. }));
}

#[test]
fn memory_cache_answers_what_the_disk_answered_and_keeps_no_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("assets")).unwrap();
    std::fs::write(root.join("index.html"), "<h1>index</h1>").unwrap();
    std::fs::write(root.join("assets/app.js"), "console.log(1)").unwrap();
    std::fs::write(root.join(".env"), "SECRET").unwrap();
    let mut s = site(root);
    s.memory_cache = true;
    // Nothing before the first lookup on disk.
    assert!(cache::lookup(&s, &get("/assets/app.js")).is_none());
    let disk = serve(&s, &get("/assets/app.js")).unwrap();
    let mem = cache::lookup(&s, &get("/assets/app.js")).expect("kept in memory");
    assert_eq!((mem.status, &mem.fields), (disk.status, &disk.fields));
    match (&mem.body, &disk.body) {
        (Body::Bytes(a), Body::Bytes(b)) => assert_eq!(a, b),
        other => panic!("{other:?}"),
    }
    // Conditional and range requests are answered from the kept validators.
    let etag = disk
        .fields
        .iter()
        .find(|(k, _)| *k == header::ETAG)
        .map(|(_, v)| v.as_bytes().to_vec());
    let mut conditional = get("/assets/app.js");
    conditional.if_none_match = etag;
    assert_eq!(cache::lookup(&s, &conditional).unwrap().status, 304);
    let mut ranged = get("/assets/app.js");
    ranged.range = Some(b"bytes=0-6".to_vec());
    let part = cache::lookup(&s, &ranged).unwrap();
    assert_eq!(part.status, 206);
    assert!(matches!(&part.body, Body::Bytes(b) if &b[..] == b"console"));
    // A client route falls back to the index: kept under its own path.
    serve(&s, &get("/dashboard/settings")).unwrap();
    let spa = cache::lookup(&s, &get("/dashboard/settings")).unwrap();
    assert!(matches!(&spa.body, Body::Bytes(b) if &b[..] == b"<h1>index</h1>"));
    // Refusals and misses always go to the file system.
    assert!(serve(&s, &get("/.env")).is_err());
    assert!(cache::lookup(&s, &get("/.env")).is_none());
    assert!(serve(&s, &get("/missing.js")).is_err());
    assert!(cache::lookup(&s, &get("/missing.js")).is_none());
    let mut post = get("/assets/app.js");
    post.method = Method::POST;
    assert!(cache::lookup(&s, &post).is_none());
    // Another root never answers from this one's entries.
    let mut other = s.clone();
    other.root = root.join("assets");
    assert!(cache::lookup(&other, &get("/assets/app.js")).is_none());
    // Off: nothing is kept.
    let mut off = site(root);
    off.memory_cache = false;
    serve(&off, &get("/index.html")).unwrap();
    assert!(cache::lookup(&off, &get("/index.html")).is_none());
}
