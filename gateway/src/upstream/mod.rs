//! Upstream pools: server selection, health, passive ejection and peers.
//!
//! Selection and active health checks come from pingora-load-balancing; the pool
//! adds least-connections, passive ejection after consecutive failures and the
//! "try another server on retry" rule on top.

pub mod health;
mod pool;

pub use pool::{Pool, ServerState, Tried};
