//! TLS-ALPN-01 on the HTTPS listener: a ClientHello that asks for ALPN
//! `acme-tls/1` gets the challenge certificate and nothing else.
//!
//! pingora's listener offers a fixed ALPN list (h2, http/1.1), and rustls
//! refuses a hello whose protocols do not overlap it, so the challenge is
//! answered before pingora's handshake: while an order waits for TLS-ALPN-01,
//! this hook reads the ClientHello; a validator's hello is answered here with
//! its own rustls config and the connection is closed, any other hello is put
//! back on the stream for the normal handshake. With no challenge open, the hook
//! costs one atomic load per connection.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pingora::listeners::PreTlsProcess;
use pingora::protocols::l4::stream::Stream as L4Stream;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::acme::{challenges, ACME_TLS_ALPN};

/// The pre-TLS hook of the HTTPS listener.
pub struct AlpnChallenge;

#[async_trait::async_trait]
impl PreTlsProcess for AlpnChallenge {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        if !challenges().alpn_open() {
            return Ok(());
        }
        let mut seen = Recorder {
            inner: stream,
            read: Vec::new(),
        };
        let acceptor =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), &mut seen);
        let start = match tokio::time::timeout(Duration::from_secs(10), acceptor).await {
            Ok(Ok(start)) => start,
            // Not TLS, or not yet: pingora's handshake reports it as usual.
            Ok(Err(_)) => {
                seen.put_back();
                return Ok(());
            }
            Err(_) => {
                return pingora::Error::e_explain(
                    pingora::ErrorType::ReadTimedout,
                    "no ClientHello within 10s",
                )
            }
        };
        let hello = start.client_hello();
        let wants_acme = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        let cert = hello.server_name().and_then(|n| challenges().alpn_cert(n));
        let (true, Some(cert)) = (wants_acme, cert) else {
            drop(start);
            seen.put_back();
            return Ok(());
        };
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .or_err_explain("TLS-ALPN-01 config")?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Only(cert)));
        config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
        if let Ok(Ok(mut tls)) =
            tokio::time::timeout(Duration::from_secs(10), start.into_stream(Arc::new(config))).await
        {
            let _ = tls.shutdown().await;
        }
        tracing::info!("answered a TLS-ALPN-01 challenge");
        // The connection served its purpose: pingora drops it.
        pingora::Error::e_explain(
            pingora::ErrorType::HandshakeError,
            "TLS-ALPN-01 challenge answered",
        )
    }
}

trait OrErrExplain<T> {
    fn or_err_explain(self, what: &'static str) -> pingora::Result<T>;
}

impl<T, E: std::fmt::Display> OrErrExplain<T> for Result<T, E> {
    fn or_err_explain(self, what: &'static str) -> pingora::Result<T> {
        self.map_err(|e| {
            pingora::Error::explain(pingora::ErrorType::InternalError, format!("{what}: {e}"))
        })
    }
}

struct Only(Arc<CertifiedKey>);

impl std::fmt::Debug for Only {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TLS-ALPN-01 certificate")
    }
}

impl ResolvesServerCert for Only {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Reads through to the stream and keeps a copy, so what was read can be put
/// back for pingora's handshake.
struct Recorder<'a> {
    inner: &'a mut L4Stream,
    read: Vec<u8>,
}

impl Recorder<'_> {
    fn put_back(self) {
        self.inner.rewind(&self.read);
    }
}

impl AsyncRead for Recorder<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let r = Pin::new(&mut *this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.read.extend_from_slice(&buf.filled()[before..]);
        }
        r
    }
}

impl AsyncWrite for Recorder<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}
