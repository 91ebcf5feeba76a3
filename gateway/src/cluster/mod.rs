//! Cluster mode: the Redis link shared by rate limits, bans and revocations
//! (`services::ProtectService` keeps it and the local ban state in shape).

pub mod acme;
mod link;

pub use link::RedisLink;
