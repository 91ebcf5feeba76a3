//! Shared plumbing for the Galion backends (galion-auth, galion-users,
//! galion-analytics): database pool and migrations, configuration loading,
//! the JSON error type, telemetry and metrics, health endpoints, graceful
//! shutdown, JWT verification against the auth JWKS and the outbox relay.
//!
//! The services are deliberately thin on top of this crate so that the three
//! binaries behave the same way at startup, in their errors and in their logs.

pub mod accounts;
pub mod api_keys;
pub mod auth;
pub mod config;
pub mod db;
pub mod error;
pub mod health;
pub mod jwt;
pub mod metrics;
pub mod outbox;
pub mod secrets;
pub mod server;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;

pub use db::{Db, Tx};
pub use error::{ApiError, ApiJson, ApiQuery};
