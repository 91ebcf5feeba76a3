//! Upstream connections of the fast path. A client connection keeps the
//! upstream connection of its last request while it stays busy (most requests
//! then need no pool at all); otherwise connections wait in their server's
//! lock-free idle queue, checked for age and for a close by the server before
//! they are used again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::upstream::Pool;

/// An upstream connection held by one client connection.
pub struct Held {
    pub pool: Arc<Pool>,
    pub server: usize,
    pub stream: TcpStream,
}

impl Held {
    /// Back to the server's idle queue (closed when the queue is full).
    pub fn release(self) {
        if let Some(s) = self.pool.servers.get(self.server) {
            let _ = s.idle.push((self.stream, Instant::now()));
        }
    }
}

/// A reusable connection to server `i` of `pool`: the held one when it is to
/// the same server, else one from the idle queue.
pub fn take(held: &mut Option<Held>, pool: &Arc<Pool>, i: usize) -> Option<TcpStream> {
    if let Some(h) = held.take() {
        if Arc::ptr_eq(&h.pool, pool) && h.server == i {
            // Bytes after the last response (a body on a HEAD answer, more than
            // its Content-Length, sent late) would be read as the next response.
            if still_open(&h.stream) {
                return Some(h.stream);
            }
        } else {
            h.release();
        }
    }
    let server = pool.servers.get(i)?;
    let max_idle = pool.config.timeouts.idle;
    while let Some((stream, since)) = server.idle.pop() {
        if since.elapsed() < max_idle && still_open(&stream) {
            return Some(stream);
        }
    }
    None
}

/// An idle connection with nothing to read is still open; EOF or stray bytes
/// mean the server closed it or broke the protocol.
fn still_open(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[derive(Debug)]
pub enum ConnectError {
    Timeout,
    Failed,
}

pub async fn connect(pool: &Pool, i: usize) -> Result<TcpStream, ConnectError> {
    let Some(server) = pool.servers.get(i) else {
        return Err(ConnectError::Failed);
    };
    let limit: Duration = pool.config.timeouts.connect;
    match pingora_timeout::tokio_timeout(limit, TcpStream::connect(server.addr)).await {
        Ok(Ok(s)) => {
            // As pingora does on every connection it makes.
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(_)) => Err(ConnectError::Failed),
        Err(_) => Err(ConnectError::Timeout),
    }
}
