//! `static` routes end to end: a front end served from a directory, with its
//! types, validators, ranges, precompressed siblings, SPA fallback, and
//! every way out of the root refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use galion_tests::{client, raw_request, spawn_gateway, Gateway};

const INDEX: &str = "<!doctype html><title>Galion</title><h1>Galion</h1>";
const APP_JS: &str = "console.log('galion');";
const BIG: usize = 5 * 1024 * 1024 + 123;

/// root/ {index.html, assets/app-3f9a.js (+ .br, .gz), style.css, big.bin,
/// docs/index.html, .env, .git/config, leak.txt → ../outside/secret.txt,
/// shared → ../outside}; outside/secret.txt beside it.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        for d in ["assets", "docs", ".git"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::create_dir_all(&outside).unwrap();
        let w = |p: &str, b: &[u8]| std::fs::write(root.join(p), b).unwrap();
        w("index.html", INDEX.as_bytes());
        w("assets/app-3f9a.js", APP_JS.as_bytes());
        w("assets/app-3f9a.js.br", b"BROTLI-BYTES");
        w("assets/app-3f9a.js.gz", b"GZIP-BYTES");
        w("style.css", b"body{margin:0}");
        w("big.bin", &big());
        w("docs/index.html", b"docs");
        w(".env", b"SECRET=env");
        w(".git/config", b"SECRET=git");
        std::fs::write(outside.join("secret.txt"), b"SECRET=outside").unwrap();
        std::os::unix::fs::symlink(outside.join("secret.txt"), root.join("leak.txt")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("shared")).unwrap();
        Site { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Every path under the temp dir with its contents (links as their target).
    fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        fn walk(p: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
            for e in std::fs::read_dir(p).unwrap() {
                let path = e.unwrap().path();
                let meta = std::fs::symlink_metadata(&path).unwrap();
                if meta.file_type().is_symlink() {
                    let t = std::fs::read_link(&path).unwrap();
                    out.insert(path, t.into_os_string().into_encoded_bytes());
                } else if meta.is_dir() {
                    out.insert(path.clone(), Vec::new());
                    walk(&path, out);
                } else {
                    out.insert(path.clone(), std::fs::read(&path).unwrap());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(self.dir.path(), &mut out);
        out
    }
}

fn big() -> Vec<u8> {
    // Not a repeating pattern of a power of two: a chunk sent twice or out
    // of order shows.
    (0..BIG).map(|i| (i * 31 % 251) as u8).collect()
}

async fn gateway(site: &Site) -> Gateway {
    let conf = format!(
        r#"
hosts:
  galion.app:
    security_headers: {{ csp: "default-src 'self'" }}
    routes:
      - {{ name: robots, exact: /robots.txt, methods: [GET], respond: {{ body: "User-agent: *\n" }} }}
      - {{ name: limited, prefix: /docs, rate_limit: {{ rate: 1/min, burst: 3 }}, static: {{ root: "{root}" }} }}
      - name: web
        prefix: /
        response_headers: {{ set: {{ x-served-by: galion }} }}
        static:
          root: "{root}"
          spa_fallback: true
          cache_control:
            - {{ pattern: "/assets/*", value: "public, max-age=31536000, immutable" }}
            - {{ pattern: "index.html", value: no-cache }}
"#,
        root = site.root().display()
    );
    spawn_gateway(&conf).await
}

async fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = client().get(gw.url(path)).header("host", "galion.app");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap()
}

fn field(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[tokio::test]
async fn files_have_their_types_validators_cache_control_and_the_hosts_headers() {
    let site = Site::new();
    let gw = gateway(&site).await;
    for (path, ctype, cache, body) in [
        ("/", "text/html; charset=utf-8", Some("no-cache"), INDEX),
        (
            "/index.html",
            "text/html; charset=utf-8",
            Some("no-cache"),
            INDEX,
        ),
        (
            "/assets/app-3f9a.js",
            "text/javascript; charset=utf-8",
            Some("public, max-age=31536000, immutable"),
            APP_JS,
        ),
        (
            "/style.css",
            "text/css; charset=utf-8",
            None,
            "body{margin:0}",
        ),
    ] {
        let r = get(&gw, path, &[]).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(field(&r, "content-type").as_deref(), Some(ctype), "{path}");
        assert_eq!(field(&r, "cache-control").as_deref(), cache, "{path}");
        assert!(
            field(&r, "etag").is_some_and(|e| e.starts_with('"')),
            "{path}"
        );
        assert!(field(&r, "last-modified").is_some(), "{path}");
        assert_eq!(field(&r, "accept-ranges").as_deref(), Some("bytes"));
        assert_eq!(field(&r, "vary").as_deref(), Some("Accept-Encoding"));
        // The route's and the host's policies apply to files too.
        assert_eq!(
            field(&r, "x-content-type-options").as_deref(),
            Some("nosniff")
        );
        assert_eq!(field(&r, "x-frame-options").as_deref(), Some("DENY"));
        assert_eq!(
            field(&r, "content-security-policy").as_deref(),
            Some("default-src 'self'")
        );
        assert_eq!(field(&r, "x-served-by").as_deref(), Some("galion"));
        assert!(field(&r, "x-request-id").is_some());
        assert_eq!(
            field(&r, "content-length"),
            Some(body.len().to_string()),
            "{path}"
        );
        assert_eq!(r.text().await.unwrap(), body, "{path}");
    }
    // Routes before the static one still answer.
    let r = get(&gw, "/robots.txt", &[]).await;
    assert_eq!(r.text().await.unwrap(), "User-agent: *\n");
}

#[tokio::test]
async fn both_validators_answer_304() {
    let site = Site::new();
    let gw = gateway(&site).await;
    let r = get(&gw, "/assets/app-3f9a.js", &[]).await;
    let etag = field(&r, "etag").unwrap();
    let date = field(&r, "last-modified").unwrap();

    let r = get(&gw, "/assets/app-3f9a.js", &[("if-none-match", &etag)]).await;
    assert_eq!(r.status(), 304);
    assert_eq!(field(&r, "etag"), Some(etag.clone()));
    assert!(field(&r, "cache-control").is_some());
    assert!(r.bytes().await.unwrap().is_empty());

    let r = get(&gw, "/assets/app-3f9a.js", &[("if-modified-since", &date)]).await;
    assert_eq!(r.status(), 304);

    let r = get(
        &gw,
        "/assets/app-3f9a.js",
        &[("if-none-match", "\"other\""), ("if-modified-since", &date)],
    )
    .await;
    assert_eq!(r.status(), 200, "If-None-Match decides when both are sent");
    let r = get(
        &gw,
        "/assets/app-3f9a.js",
        &[("if-modified-since", "Thu, 01 Jan 1970 00:00:00 GMT")],
    )
    .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn single_ranges_206_and_416_and_head() {
    let site = Site::new();
    let gw = gateway(&site).await;
    let whole = big();
    let r = get(&gw, "/big.bin", &[("range", "bytes=1000-1999")]).await;
    assert_eq!(r.status(), 206);
    assert_eq!(
        field(&r, "content-range"),
        Some(format!("bytes 1000-1999/{BIG}"))
    );
    assert_eq!(field(&r, "content-length").as_deref(), Some("1000"));
    assert_eq!(r.bytes().await.unwrap(), whole[1000..2000]);

    let r = get(&gw, "/big.bin", &[("range", "bytes=-10")]).await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), whole[BIG - 10..]);

    // A range across chunk boundaries, streamed.
    let (a, b) = (100_000usize, 3_000_000usize);
    let r = get(&gw, "/big.bin", &[("range", &format!("bytes={a}-{b}"))]).await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), whole[a..=b]);

    let r = get(&gw, "/big.bin", &[("range", &format!("bytes={BIG}-"))]).await;
    assert_eq!(r.status(), 416);
    assert_eq!(field(&r, "content-range"), Some(format!("bytes */{BIG}")));

    let r = client()
        .head(gw.url("/big.bin"))
        .header("host", "galion.app")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(field(&r, "content-length"), Some(BIG.to_string()));
    assert!(r.bytes().await.unwrap().is_empty());

    let head = raw_request(
        gw.http,
        b"HEAD /index.html HTTP/1.1\r\nHost: galion.app\r\nRange: bytes=0-4\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 5\r\n"),
        "{head}"
    );
    assert!(
        head.ends_with("\r\n\r\n"),
        "a HEAD answer has no body: {head}"
    );
}

#[tokio::test]
async fn a_large_file_streams_whole() {
    let site = Site::new();
    let gw = gateway(&site).await;
    let r = get(&gw, "/big.bin", &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        field(&r, "content-type").as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(field(&r, "content-length"), Some(BIG.to_string()));
    let body = r.bytes().await.unwrap();
    assert!(body == big(), "{} bytes differ from the file", body.len());
}

#[tokio::test]
async fn precompressed_siblings_by_accept_encoding() {
    let site = Site::new();
    let gw = gateway(&site).await;
    for (accept, encoding, body) in [
        ("gzip, deflate, br, zstd", Some("br"), "BROTLI-BYTES"),
        ("gzip", Some("gzip"), "GZIP-BYTES"),
        ("br;q=0.5, gzip", Some("gzip"), "GZIP-BYTES"),
        ("zstd", None, APP_JS),
        ("identity", None, APP_JS),
    ] {
        let r = get(&gw, "/assets/app-3f9a.js", &[("accept-encoding", accept)]).await;
        assert_eq!(r.status(), 200, "{accept}");
        assert_eq!(
            field(&r, "content-encoding").as_deref(),
            encoding,
            "{accept}"
        );
        assert_eq!(field(&r, "vary").as_deref(), Some("Accept-Encoding"));
        assert_eq!(
            field(&r, "content-type").as_deref(),
            Some("text/javascript; charset=utf-8"),
            "the original's type, whatever the encoding"
        );
        assert_eq!(r.text().await.unwrap(), body, "{accept}");
    }
    // Each representation has its own validator.
    let br = get(&gw, "/assets/app-3f9a.js", &[("accept-encoding", "br")]).await;
    let id = get(&gw, "/assets/app-3f9a.js", &[]).await;
    assert_ne!(field(&br, "etag"), field(&id, "etag"));
}

#[tokio::test]
async fn client_routes_get_the_index_and_missing_assets_404() {
    let site = Site::new();
    let gw = gateway(&site).await;
    for path in ["/dashboard", "/dashboard/settings", "/a/b/c/"] {
        let r = get(&gw, path, &[]).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(field(&r, "cache-control").as_deref(), Some("no-cache"));
        assert_eq!(r.text().await.unwrap(), INDEX, "{path}");
    }
    for path in ["/assets/app-0000.js", "/missing.png", "/dashboard/x.json"] {
        let r = get(&gw, path, &[]).await;
        assert_eq!(r.status(), 404, "{path}");
        assert!(!r.text().await.unwrap().contains("Galion"), "{path}");
    }
    // A directory: its index after a redirect to its slash; never a listing.
    let r = get(&gw, "/docs", &[]).await;
    assert_eq!(r.status(), 301);
    assert_eq!(field(&r, "location").as_deref(), Some("/docs/"));
    let r = get(&gw, "/docs/", &[]).await;
    assert_eq!(r.text().await.unwrap(), "docs");
}

#[tokio::test]
async fn other_methods_are_refused_with_allow() {
    let site = Site::new();
    let gw = gateway(&site).await;
    let r = client()
        .post(gw.url("/index.html"))
        .header("host", "galion.app")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(field(&r, "allow").as_deref(), Some("GET, HEAD"));
    assert_eq!(
        field(&r, "x-content-type-options").as_deref(),
        Some("nosniff")
    );
}

#[tokio::test]
async fn hidden_files_and_every_way_out_of_the_root_are_refused() {
    let site = Site::new();
    let gw = gateway(&site).await;
    let before = site.snapshot();
    for target in [
        "/.env",
        "/.git/config",
        "/%2eenv",
        "/%2Egit/config",
        "/../outside/secret.txt",
        "/assets/../../outside/secret.txt",
        "/%2e%2e/outside/secret.txt",
        "/%2E%2E/outside/secret.txt",
        "/.%2e/outside/secret.txt",
        "/%2e%2e%2foutside%2fsecret.txt",
        "/assets%2f..%2f..%2foutside%2fsecret.txt",
        "/%5c..%5coutside%5csecret.txt",
        "/..\\outside\\secret.txt",
        "/assets\\..\\..\\outside\\secret.txt",
        "/index.html%00.js",
        "/.env%00",
        "/leak.txt",
        "/shared/secret.txt",
        "/%252e%252e/outside/secret.txt",
    ] {
        let req = format!("GET {target} HTTP/1.1\r\nHost: galion.app\r\nConnection: close\r\n\r\n");
        let resp = raw_request(gw.http, req.as_bytes()).await;
        let status = resp.get(9..12).unwrap_or("");
        assert!(
            status == "400" || status == "404",
            "{target} answered {status}:\n{resp}"
        );
        assert!(!resp.contains("SECRET"), "{target} leaked:\n{resp}");
    }
    assert_eq!(site.snapshot(), before, "the file system was changed");
}

#[tokio::test]
async fn route_rate_limits_apply_to_files() {
    let site = Site::new();
    let gw = gateway(&site).await;
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(get(&gw, "/docs/", &[]).await.status().as_u16());
    }
    assert_eq!(codes[..3], [200, 200, 200]);
    assert_eq!(codes[4], 429, "{codes:?}");
}

#[tokio::test]
async fn an_edited_or_deleted_file_shows_within_a_second_of_the_memory_cache() {
    let site = Site::new();
    let gw = gateway(&site).await;
    let first = get(&gw, "/style.css", &[]).await;
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(first.text().await.unwrap(), "body{margin:0}");
    // Served from memory now; an edit (as a deploy writes it) is seen once the
    // lookup is a second old.
    std::fs::write(site.root().join("style.css.new"), b"body{margin:1px}").unwrap();
    std::fs::rename(
        site.root().join("style.css.new"),
        site.root().join("style.css"),
    )
    .unwrap();
    let edited = galion_tests::eventually(5, || async {
        let r = get(&gw, "/style.css", &[]).await;
        let tag = r.headers()["etag"].to_str().unwrap().to_owned();
        let body = r.text().await.unwrap();
        (body == "body{margin:1px}").then_some(tag)
    })
    .await;
    assert_ne!(edited.expect("edit not served within 5 s"), etag);
    // A removed file stops being served too.
    std::fs::remove_file(site.root().join("style.css")).unwrap();
    let gone = galion_tests::eventually(5, || async {
        (get(&gw, "/style.css", &[]).await.status() == 404).then_some(())
    })
    .await;
    assert!(gone.is_some(), "a deleted file is still served");
}

#[tokio::test]
async fn a_fifo_under_the_root_is_refused_without_blocking_a_thread() {
    let site = Site::new();
    let fifo = site.root().join("pipe.txt");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let gw = gateway(&site).await;
    // More requests than tokio's blocking pool has threads to spare would hang
    // if each open waited for a writer.
    for _ in 0..8 {
        let r = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            get(&gw, "/pipe.txt", &[]),
        )
        .await
        .expect("a FIFO open blocked");
        assert_eq!(r.status(), 404);
    }
    assert_eq!(get(&gw, "/style.css", &[]).await.status(), 200);
}

#[tokio::test]
async fn text_without_a_precompressed_sibling_is_compressed_once_on_request() {
    let site = Site::new();
    let root = site.root();
    let text = "export const galion = () => 'galion';\n".repeat(200);
    std::fs::write(root.join("assets/vendor-77.js"), &text).unwrap();
    std::fs::write(root.join("logo.png"), vec![7u8; 4096]).unwrap();
    let conf = format!(
        r#"
hosts:
  galion.app:
    routes:
      - name: web
        prefix: /
        compress: {{ encodings: [gzip, zstd] }}
        static: {{ root: "{root}", spa_fallback: true }}
"#,
        root = root.display()
    );
    let gw = spawn_gateway(&conf).await;
    let raw =
        |r: &reqwest::Response, k: &str| r.headers().get(k).map(|v| v.to_str().unwrap().to_owned());
    // gzip for a client that prefers it (br is not enabled on the route).
    let r = get(
        &gw,
        "/assets/vendor-77.js",
        &[("accept-encoding", "br, gzip")],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(raw(&r, "content-encoding").as_deref(), Some("gzip"));
    assert_eq!(raw(&r, "vary").as_deref(), Some("Accept-Encoding"));
    assert!(raw(&r, "etag").unwrap().starts_with("W/"));
    let body = r.bytes().await.unwrap();
    assert!(body.len() < text.len() / 4, "{} bytes", body.len());
    let mut plain = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut plain)
        .unwrap();
    assert_eq!(plain, text, "compressed once: the client decodes the file");
    // zstd when that is what the client takes.
    let r = get(&gw, "/assets/vendor-77.js", &[("accept-encoding", "zstd")]).await;
    assert_eq!(raw(&r, "content-encoding").as_deref(), Some("zstd"));
    let body = r.bytes().await.unwrap();
    assert_eq!(
        zstd::bulk::decompress(&body, text.len()).unwrap(),
        text.as_bytes()
    );
    // As it is: no Accept-Encoding, a range, or a type that does not compress.
    let r = get(&gw, "/assets/vendor-77.js", &[]).await;
    assert_eq!(raw(&r, "content-encoding"), None);
    assert_eq!(r.bytes().await.unwrap().len(), text.len());
    let r = get(
        &gw,
        "/assets/vendor-77.js",
        &[("accept-encoding", "gzip"), ("range", "bytes=0-5")],
    )
    .await;
    assert_eq!(r.status(), 206);
    assert_eq!(raw(&r, "content-encoding"), None);
    assert_eq!(&r.bytes().await.unwrap()[..], b"export");
    let r = get(&gw, "/logo.png", &[("accept-encoding", "gzip")]).await;
    assert_eq!(raw(&r, "content-encoding"), None);
    // A precompressed sibling wins over compressing again.
    let r = get(&gw, "/assets/app-3f9a.js", &[("accept-encoding", "gzip")]).await;
    assert_eq!(raw(&r, "content-encoding").as_deref(), Some("gzip"));
    assert_eq!(&r.bytes().await.unwrap()[..], b"GZIP-BYTES");
    // The compressed variant revalidates: 304 on its own (weak) tag.
    let etag = raw(
        &get(&gw, "/assets/vendor-77.js", &[("accept-encoding", "gzip")]).await,
        "etag",
    )
    .unwrap();
    let r = get(
        &gw,
        "/assets/vendor-77.js",
        &[("accept-encoding", "gzip"), ("if-none-match", &etag)],
    )
    .await;
    assert_eq!(r.status(), 304);
}
