//! The HTTP/1 fast path (`gateway/src/fast`) against pingora's path, end to end:
//! the same heads both ways, bodies of every framing, stale pooled upstream
//! connections, requests handed to pingora on the same connection, pipelining.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use galion_tests::{client, fake_upstream, spawn_gateway, spawn_gateway_with};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn config(upstream: SocketAddr) -> String {
    format!(
        r#"
trusted_proxies: ["10.0.0.0/8"]
upstreams:
  a: {{ servers: ["{upstream}"], retries: 1 }}
hosts:
  galion.app:
    routes:
      - {{ name: svc, prefix: /svc/, strip_prefix: true, upstream: a }}
      - {{ name: root, prefix: /, upstream: a }}
"#
    )
}

/// Response headers a client sees, without the ones that differ by time and
/// `Connection`: pingora writes `keep-alive`, the fast path leaves an HTTP/1.1
/// connection's persistence implicit (both keep it open).
fn head_of(r: &reqwest::Response) -> BTreeMap<String, String> {
    r.headers()
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "date" | "connection"))
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_owned()))
        .collect()
}

#[tokio::test]
async fn fast_and_pingora_paths_forward_and_answer_alike() {
    let up = fake_upstream("a").await;
    let conf = config(up.addr);
    let fast = spawn_gateway(&conf).await;
    let slow = spawn_gateway_with(&conf, "fast_path: false").await;
    let c = client();
    for (method, path) in [
        (reqwest::Method::GET, "/svc/items?x=1&y=%20"),
        (reqwest::Method::GET, "/plain"),
        (reqwest::Method::HEAD, "/plain"),
    ] {
        let mut seen = Vec::new();
        for gw in [&fast, &slow] {
            let r = c
                .request(method.clone(), gw.url(path))
                .header("host", "galion.app")
                .header("x-request-id", "req-123")
                .header("x-forwarded-for", "203.0.113.9")
                .header("x-forwarded-proto", "https")
                .header("x-user-id", "forged")
                .header("x_user_role", "admin")
                .header("cf-connecting-ip", "10.9.9.9")
                .header("forwarded", "for=198.51.100.1;proto=https")
                .header("true-client-ip", "198.51.100.2")
                .header("x-custom", "kept")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{method} {path}");
            let head = head_of(&r);
            let body = r.text().await.unwrap();
            seen.push((head, body));
        }
        let (fast_seen, slow_seen) = (&seen[0], &seen[1]);
        assert_eq!(fast_seen.0, slow_seen.0, "client head for {method} {path}");
        if method == reqwest::Method::GET {
            let f: Value = serde_json::from_str(&fast_seen.1).unwrap();
            let s: Value = serde_json::from_str(&slow_seen.1).unwrap();
            assert_eq!(f["uri"], s["uri"], "upstream target");
            assert_eq!(f["headers"], s["headers"], "upstream head for {path}");
            let h = &f["headers"];
            assert_eq!(
                h["x-forwarded-for"], "127.0.0.1",
                "untrusted chain replaced"
            );
            assert_eq!(h["x-forwarded-proto"], "http", "untrusted proto replaced");
            assert_eq!(h["x-request-id"], "req-123");
            assert!(h.get("x-user-id").is_none(), "forged identity stripped");
            for forged in [
                "x_user_role",
                "cf-connecting-ip",
                "forwarded",
                "true-client-ip",
            ] {
                assert!(
                    h.get(forged).is_none(),
                    "{forged} from an untrusted peer: {h}"
                );
            }
            assert_eq!(h["x-custom"], "kept");
        } else {
            assert_eq!(fast_seen.1, "");
        }
    }
    assert_eq!(
        fast.metric(
            r#"gateway_requests_total{code="200",host="galion.app",method="GET",route="svc"}"#
        )
        .await,
        1.0
    );
}

/// A raw origin: per request path, answers with a body in the given framing.
async fn raw_origin() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let n = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            n.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut have = 0;
                loop {
                    let Ok(r) = s.read(&mut buf[have..]).await else {
                        return;
                    };
                    if r == 0 {
                        return;
                    }
                    have += r;
                    let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    buf.copy_within(end + 4..have, 0);
                    have -= end + 4;
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    if path == "/30k" {
                        // Fits the gateway's write buffer: pingora writes it in
                        // one untimed flush.
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: 30000\r\n\r\n{}",
                            "z".repeat(30000)
                        );
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    if path == "/huge" {
                        // More than every socket buffer on the way holds.
                        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {HUGE}\r\n\r\n");
                        let _ = s.write_all(head.as_bytes()).await;
                        let chunk = vec![b'z'; 64 * 1024];
                        let mut sent = 0;
                        while sent < HUGE && s.write_all(&chunk).await.is_ok() {
                            sent += chunk.len();
                        }
                        return;
                    }
                    let pieces: Vec<&[u8]> = match path.as_str() {
                        "/chunked" => vec![
                            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
                            b"lo\r\n6;x=1\r\n world\r\n",
                            b"0\r\nX-Trailer: t\r\n\r\n",
                        ],
                        "/early" => vec![
                            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n",
                            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
                        ],
                        "/until-close" => vec![b"HTTP/1.1 200 OK\r\n\r\nto the end"],
                        // A body longer than its Content-Length, the rest late:
                        // read as the next response if the connection were reused.
                        "/overlong" => vec![
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n",
                            b"ok",
                            b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged",
                        ],
                        // A stream whose end comes much later (server-sent events).
                        "/stream" => vec![
                            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n",
                            b"0\r\n\r\n",
                        ],
                        // Answers, then closes without saying so: the gateway's
                        // kept connection is stale for the next request.
                        "/once" => vec![b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nonce"],
                        _ => vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
                    };
                    for p in pieces {
                        if s.write_all(p).await.is_err() {
                            return;
                        }
                        let pause = if path == "/stream" { 1500 } else { 20 };
                        tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                    }
                    if path == "/until-close" || path == "/once" {
                        return;
                    }
                }
            });
        }
    });
    (addr, conns)
}

const HUGE: usize = 256 << 20;

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_after_the_send_timeout() {
    let (origin, _) = raw_origin().await;
    let conf = config(origin);
    for keys in ["send_timeout: 1s", "send_timeout: 1s, fast_path: false"] {
        let gw = spawn_gateway_with(&conf, keys).await;
        let mut s = TcpStream::connect(gw.http).await.unwrap();
        s.write_all(get("/huge").as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
            "{keys}"
        );
        // Not reading: the buffers on the way fill, the gateway's write waits,
        // and after the send timeout it gives up on this client.
        tokio::time::sleep(std::time::Duration::from_secs(4)).await;
        let mut got = n;
        let ended = loop {
            match tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(n)) => got += n,
                Err(_) => break false,
            }
        };
        assert!(ended, "{keys}: the connection stayed open");
        assert!(
            got < HUGE,
            "{keys}: the whole body came through ({got} bytes)"
        );
    }
}

/// A client that sends request after request and never reads the (small)
/// responses does not get them all and is disconnected, on both paths,
/// whichever write or flush it leaves the gateway waiting in.
#[tokio::test]
async fn a_client_that_never_reads_small_responses_is_cut_off_too() {
    let (origin, _) = raw_origin().await;
    let conf = config(origin);
    const REQUESTS: usize = 1000;
    for keys in ["send_timeout: 1s, fast_path: false", "send_timeout: 1s"] {
        let gw = spawn_gateway_with(&conf, keys).await;
        let mut s = TcpStream::connect(gw.http).await.unwrap();
        s.write_all(get("/30k").repeat(REQUESTS).as_bytes())
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        let ended = loop {
            match tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(n)) => got += n,
                Err(_) => break false,
            }
        };
        assert!(
            ended,
            "{keys}: the connection stayed open after {got} bytes"
        );
        assert!(
            got < REQUESTS * 30_000,
            "{keys}: every response came through"
        );
    }
}

/// Sends `requests` on one connection and reads `expect` responses (or until close).
async fn on_one_connection(addr: SocketAddr, requests: &[u8], until: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(requests).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = std::time::Duration::from_secs(5);
    while let Ok(Ok(n)) = tokio::time::timeout(deadline, s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if String::from_utf8_lossy(&out).contains(until) {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one response with a `Content-Length` body.
async fn read_response(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("answer in time")
            .expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= len {
                return text.into_owned();
            }
        }
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: galion.app\r\n\r\n")
}

#[tokio::test]
async fn bodies_of_every_framing_and_stale_connections() {
    let (origin, conns) = raw_origin().await;
    let gw = spawn_gateway(&config(origin)).await;

    // Chunked: relayed with its framing (and trailer), the connection stays open.
    let reqs = format!("{}{}", get("/chunked"), get("/plain"));
    let out = on_one_connection(gw.http, reqs.as_bytes(), "\r\n\r\nok").await;
    assert!(
        out.contains("5\r\nhello\r\n6;x=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"),
        "{out}"
    );
    assert_eq!(
        out.matches("HTTP/1.1 200").count(),
        2,
        "pipelined pair: {out}"
    );
    assert!(
        !out.to_ascii_lowercase().contains("connection:"),
        "persistence is implicit in HTTP/1.1: {out}"
    );

    // 1xx dropped, the final answer relayed.
    let out = on_one_connection(gw.http, get("/early").as_bytes(), "final").await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(!out.contains("103"), "{out}");

    // No length: relayed until the upstream closes, then the client is closed.
    let out = on_one_connection(gw.http, get("/until-close").as_bytes(), "\u{0}").await;
    assert!(
        out.contains("Connection: close\r\n") && out.ends_with("to the end"),
        "{out}"
    );

    // The origin closes after each /once answer: every next request finds the
    // kept connection closed and is sent again on a new one, unseen by clients.
    let before = conns.load(Ordering::SeqCst);
    let c = client();
    for _ in 0..5 {
        let r = c
            .get(gw.url("/once"))
            .header("host", "galion.app")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "once");
    }
    assert!(conns.load(Ordering::SeqCst) - before >= 5);

    // Bytes the upstream sends past a response are never taken for the next one.
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    s.write_all(get("/overlong").as_bytes()).await.unwrap();
    let first = read_response(&mut s).await;
    assert!(
        first.starts_with("HTTP/1.1 200") && first.ends_with("\r\n\r\nok"),
        "{first}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    s.write_all(get("/plain").as_bytes()).await.unwrap();
    let second = read_response(&mut s).await;
    assert!(
        second.ends_with("\r\n\r\nok") && !second.contains("forged"),
        "{second}"
    );

    // A streamed body reaches the client as it comes, not at its end.
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    s.write_all(get("/stream").as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let early = tokio::time::timeout(std::time::Duration::from_millis(1000), async {
        while !String::from_utf8_lossy(&got).contains("5\r\nfirst\r\n") {
            match s.read(&mut buf).await {
                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
    })
    .await;
    assert!(
        early.is_ok() && !String::from_utf8_lossy(&got).contains("0\r\n\r\n"),
        "first chunk before the end: {}",
        String::from_utf8_lossy(&got)
    );
}

#[tokio::test]
async fn paths_are_routed_and_sent_in_their_normal_form() {
    let up = fake_upstream("a").await;
    let conf = config(up.addr);
    let fast = spawn_gateway(&conf).await;
    let slow = spawn_gateway_with(&conf, "fast_path: false").await;
    // `/svc/` strips its prefix: a spelling that missed it would reach the
    // upstream as `/svc/...` through the root route instead.
    for gw in [&fast, &slow] {
        for (raw, want) in [
            ("/%73vc/items?q=%61", "/items?q=%61"),
            ("//svc//items", "/items"),
            ("/%%373vc/x", "/x"),
            ("/r%6Fot/%7e/a%20b", "/root/~/a%20b"),
        ] {
            let mut s = TcpStream::connect(gw.http).await.unwrap();
            s.write_all(get(raw).as_bytes()).await.unwrap();
            let out = read_response(&mut s).await;
            assert!(out.starts_with("HTTP/1.1 200"), "{raw}: {out}");
            assert!(
                out.contains(&format!(r#""uri":"{want}""#)),
                "{raw} -> {want}: {out}"
            );
        }
        // An absolute-form target goes upstream in origin form; one whose
        // authority differs from Host is refused (RFC 9112 §3.2.2), so routing
        // by Host and the target cannot disagree.
        for (req, want) in [
            (
                "GET http://galion.app/svc/items?a=1 HTTP/1.1\r\nHost: galion.app\r\n\r\n",
                r#""uri":"/items?a=1""#,
            ),
            (
                "GET http://galion.app/plain?b=2 HTTP/1.1\r\nHost: galion.app\r\n\r\n",
                r#""uri":"/plain?b=2""#,
            ),
            (
                "GET http://nobody.example/svc/x HTTP/1.1\r\nHost: galion.app\r\n\r\n",
                "HTTP/1.1 400",
            ),
        ] {
            let mut s = TcpStream::connect(gw.http).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            let out = read_response(&mut s).await;
            assert!(out.contains(want), "{req}: {out}");
        }
        // Spellings an upstream resolves differently from the gateway (path
        // parameters, dot segments, encoded separators) are refused, never
        // routed under another prefix.
        for raw in [
            "/svc;x/items",
            "/plain/..;/svc/items",
            "/svc%3Bx/items",
            "/plain/%2e%2e/svc",
            "/svc%2Fitems",
        ] {
            let mut s = TcpStream::connect(gw.http).await.unwrap();
            s.write_all(get(raw).as_bytes()).await.unwrap();
            let out = read_response(&mut s).await;
            assert!(out.starts_with("HTTP/1.1 400"), "{raw}: {out}");
            assert!(
                !out.contains(r#""uri""#),
                "{raw} reached the upstream: {out}"
            );
        }
    }
}

#[tokio::test]
async fn requests_alternate_between_the_fast_path_and_pingora_on_one_connection() {
    let up = fake_upstream("a").await;
    let gw = spawn_gateway(&config(up.addr)).await;
    let post = "POST /svc/x HTTP/1.1\r\nHost: galion.app\r\nContent-Length: 3\r\n\r\nabc";
    let unknown = "GET /x HTTP/1.1\r\nHost: nobody.example\r\n\r\n";
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    let mut out = String::new();
    // GET (fast), POST with a body (pingora), GET (fast), unknown host (pingora's
    // 404), one at a time: pingora does not take pipelined requests.
    for r in [
        get("/svc/one"),
        post.to_owned(),
        get("/svc/two"),
        unknown.to_owned(),
    ] {
        s.write_all(r.as_bytes()).await.unwrap();
        out.push_str(&read_response(&mut s).await);
    }
    assert!(out.contains(r#""uri":"/one""#), "{out}");
    assert!(
        out.contains(r#""method":"POST""#) && out.contains(r#""body_len":3"#),
        "{out}"
    );
    assert!(out.contains(r#""uri":"/two""#), "{out}");
    assert!(
        out.contains("HTTP/1.1 404") && out.contains("unknown_host"),
        "{out}"
    );
}

/// An origin whose answers carry a head of `fields` fields of `size` bytes each
/// (`GET /head/<fields>/<size>`); counts the requests it gets.
async fn big_head_origin() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let n = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let n = n.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // One request head (GET, no body) per answer.
                    let end = loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break end;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(r) => buf.extend_from_slice(&chunk[..r]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    n.fetch_add(1, Ordering::SeqCst);
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let mut parts = path.trim_start_matches("/head/").split('/');
                    let fields: usize = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
                    let size: usize = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
                    let mut resp = String::from("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n");
                    for i in 0..fields {
                        resp.push_str(&format!("X-Big-{i}: {}\r\n", "v".repeat(size)));
                    }
                    resp.push_str("\r\nok");
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, requests)
}

#[tokio::test]
async fn large_response_heads_are_relayed_and_too_large_ones_eject_nobody() {
    let (origin, requests) = big_head_origin().await;
    let conf = config(origin);
    let fast = spawn_gateway(&conf).await;
    let slow = spawn_gateway_with(&conf, "fast_path: false").await;
    let c = client();

    // A 200 KiB head (past the fast path's 32 KiB body buffer), on both paths:
    // the same answer, every field relayed.
    for gw in [&fast, &slow] {
        for _ in 0..2 {
            let r = c
                .get(gw.url("/head/50/4000"))
                .header("host", "galion.app")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["x-big-49"].len(), 4000);
            assert_eq!(r.text().await.unwrap(), "ok");
        }
    }

    // Past pingora's limit too (1.2 MiB): a 502, not retried on the one server
    // (retries: 1), and the server is not ejected: more of them than
    // `max_fails` (3) leave it serving the next request.
    let before = requests.load(Ordering::SeqCst);
    for _ in 0..5 {
        let r = c
            .get(fast.url("/head/200/6000"))
            .header("host", "galion.app")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "bad_gateway");
    }
    assert_eq!(requests.load(Ordering::SeqCst) - before, 5, "no retries");
    let r = c
        .get(fast.url("/head/1/10"))
        .header("host", "galion.app")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the server was not ejected");
}
