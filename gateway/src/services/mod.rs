//! The gateway's background services over the live snapshot: automatic
//! certificates, active health checks, JWKS and revocation refreshes, and the cluster link that keeps
//! limits and bans in step. Above the snapshot, beside the transports.

pub mod acme;
mod auth;
mod health;
mod protect;

pub use auth::AuthService;
pub use health::HealthChecker;
pub use protect::ProtectService;
