//! Connection limits per client IP, end to end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use galion_tests::{client, eventually, fake_upstream, spawn_gateway};

#[tokio::test]
async fn connections_per_ip_are_capped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = fake_upstream("up").await;
    let gw = spawn_gateway(&format!(
        "limits: {{ max_connections_per_ip: 2 }}\nupstreams:\n  up: {{ servers: [\"{}\"] }}\nhosts:\n  galion.app:\n    default: true\n    routes:\n      - {{ name: r, prefix: /, upstream: up }}\n",
        up.addr
    ))
    .await;
    let req = b"GET / HTTP/1.1\r\nHost: galion.app\r\n\r\n";
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut c = tokio::net::TcpStream::connect(gw.http).await.unwrap();
        c.write_all(req).await.unwrap();
        let mut buf = [0u8; 1024];
        let n = c.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        open.push(c);
    }
    // A third concurrent connection is closed without an answer.
    let mut third = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let _ = third.write_all(req).await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "third connection was served");
    // Closing one frees a slot.
    drop(open.pop());
    let ok = eventually(5, || async {
        let r = client().get(gw.url("/")).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    assert!(ok.is_some());
    assert!(
        gw.metric("gateway_open_connections{listener=\"http\"}")
            .await
            >= 1.0
    );
}
