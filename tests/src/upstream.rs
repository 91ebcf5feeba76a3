//! `fake_upstream()`: a small HTTP/1.1 origin whose behaviour tests control.
//!
//! It answers with a JSON echo of what it received (server name, method, URI,
//! headers, body length; chunked bodies are decoded, a line that is not a
//! request line is refused with 400 and not counted). Per request, the header `x-test-sleep-ms` delays the
//! answer and `x-test-hangup: 1` reads the request and closes without answering;
//! `set_hangup(true)` does that for every request.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

pub struct FakeUpstream {
    pub name: String,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    hangup: Arc<AtomicBool>,
    tasks: Option<tokio::task::JoinHandle<()>>,
}

pub async fn fake_upstream(name: &str) -> FakeUpstream {
    fake_upstream_on(name, SocketAddr::from(([127, 0, 0, 1], 0))).await
}

/// Binds a specific address (to restart a stopped upstream on its old port).
pub async fn fake_upstream_on(name: &str, addr: SocketAddr) -> FakeUpstream {
    let listener = TcpListener::bind(addr).await.expect("bind fake upstream");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let hangup = Arc::new(AtomicBool::new(false));
    let (n, h, hu) = (name.to_owned(), hits.clone(), hangup.clone());
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                break;
            };
            let (n, h, hu) = (n.clone(), h.clone(), hu.clone());
            conns.spawn(async move {
                let _ = serve(stream, &n, &h, &hu).await;
            });
        }
    });
    FakeUpstream {
        name: name.to_owned(),
        addr,
        hits,
        hangup,
        tasks: Some(task),
    }
}

impl FakeUpstream {
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn set_hangup(&self, on: bool) {
        self.hangup.store(on, Ordering::SeqCst);
    }

    /// Closes the listener and every open connection.
    pub fn stop(&mut self) {
        if let Some(t) = self.tasks.take() {
            // Aborting the accept task drops the JoinSet, which aborts connections.
            t.abort();
        }
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve(
    stream: TcpStream,
    name: &str,
    hits: &AtomicUsize,
    hangup: &AtomicBool,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    loop {
        // Bytes, not `read_line`: a header may carry obs-text (a forwarded
        // chain with a client's garbage in it), which a real server accepts.
        let mut raw = Vec::new();
        if reader.read_until(b'\n', &mut raw).await? == 0 {
            return Ok(());
        }
        let line = String::from_utf8_lossy(&raw).into_owned();
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_owned();
        let uri = parts.next().unwrap_or("").to_owned();
        let version_ok = parts.next().is_some_and(|v| v.starts_with("HTTP/1."));
        if method.is_empty() || uri.is_empty() || !version_ok {
            // Not a request (bytes a proxy left behind, say): a real server
            // refuses it and closes; it is not counted as a hit.
            let mut stream = reader.into_inner();
            stream
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await?;
            return Ok(());
        }
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        loop {
            let mut raw = Vec::new();
            if reader.read_until(b'\n', &mut raw).await? == 0 {
                return Ok(());
            }
            let h = String::from_utf8_lossy(&raw);
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                let v = v.trim().to_owned();
                headers
                    .entry(k)
                    .and_modify(|e| {
                        e.push_str(", ");
                        e.push_str(&v);
                    })
                    .or_insert(v);
            }
        }
        let chunked = headers
            .get("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().ends_with("chunked"));
        let len = if chunked {
            read_chunked(&mut reader).await?
        } else {
            let len: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0u8; len];
            reader.read_exact(&mut body).await?;
            len
        };
        hits.fetch_add(1, Ordering::SeqCst);
        if headers
            .get("upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
        {
            // Switch protocols, then echo raw bytes until the peer closes.
            let mut stream = reader.into_inner();
            stream
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\r\n")
                .await?;
            let mut buf = [0u8; 4096];
            loop {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                stream.write_all(&buf[..n]).await?;
            }
        }
        if hangup.load(Ordering::SeqCst) || headers.contains_key("x-test-hangup") {
            return Ok(());
        }
        if let Some(ms) = headers.get("x-test-sleep-ms").and_then(|v| v.parse().ok()) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let status: u16 = headers
            .get("x-test-status")
            .and_then(|v| v.parse().ok())
            .unwrap_or(200);
        // `x-test-pad: N` adds N bytes of compressible text in a `pad` field.
        let pad = headers
            .get("x-test-pad")
            .and_then(|v| v.parse::<usize>().ok())
            .map(|n| "galion ".repeat(n / 7 + 1))
            .unwrap_or_default();
        let echo = serde_json::json!({
            "server": name,
            "method": method,
            "uri": uri,
            "headers": headers,
            "body_len": len,
            "hit": hits.load(Ordering::SeqCst),
            "pad": pad,
        })
        .to_string();
        // `x-test-resp-NAME: VALUE` is sent back as the response header `NAME: VALUE`.
        let mut extra = String::new();
        let mut content_type = "application/json".to_owned();
        for (k, v) in &headers {
            if let Some(n) = k.strip_prefix("x-test-resp-") {
                if n == "content-type" {
                    content_type = v.clone();
                } else {
                    extra.push_str(&format!("{n}: {v}\r\n"));
                }
            }
        }
        let resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nx-upstream: {name}\r\n{extra}\r\n{echo}",
            echo.len()
        );
        reader.get_mut().write_all(resp.as_bytes()).await?;
    }
}

/// Reads a chunked body (sizes, data, trailer) and returns its decoded length.
async fn read_chunked(reader: &mut BufReader<TcpStream>) -> std::io::Result<usize> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut total = 0;
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            return Err(bad("chunked body cut short"));
        }
        let text = String::from_utf8_lossy(&line);
        let size = text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
        if size == 0 {
            // Trailer fields until the blank line.
            loop {
                let mut t = Vec::new();
                if reader.read_until(b'\n', &mut t).await? == 0 || t == b"\r\n" || t == b"\n" {
                    return Ok(total);
                }
            }
        }
        let mut data = vec![0u8; size + 2];
        reader.read_exact(&mut data).await?;
        total += size;
    }
}
