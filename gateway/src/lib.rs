//! Galion Gateway: a reverse proxy on Pingora.
//!
//! The binary (`main.rs`) only parses arguments; everything else lives here so the
//! tests can reach it. Module map: [`config`] (YAML → validated types),
//! [`snapshot`] (compiled config in an `ArcSwap`), [`routing`], [`files`] (static files), [`upstream`]
//! (pools, health, ejection), [`proxy`] (Pingora phases), [`client_ip`],
//! [`request_id`], [`head`] (direct header edits), [`metrics`], [`admin`], [`reload`], [`access_log`], [`server`].

pub mod access_log;
pub mod admin;
pub mod auth;
pub mod bans;
pub mod cache;
pub mod certs;
pub mod cli;
pub mod client_ip;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod cors;
pub mod fast;
pub mod fields;
pub mod files;
pub mod head;
pub mod limits;
pub mod log_writer;
pub mod metrics;
pub mod pipeline;
pub mod private_file;
pub mod proxy;
pub mod reload;
pub mod request_id;
pub mod routing;
pub mod seal;
pub mod security_headers;
pub mod server;
pub mod services;
pub mod sharded;
pub mod shield;
pub mod signals;
pub mod snapshot;
pub mod systemd;
pub mod tls;
pub mod upgrade;
pub mod upstream;
pub mod uri_path;
