//! Command line: `run` (default), `check` (like `nginx -t`) and `hash-key`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use sha2::{Digest, Sha256};

use crate::config;
use crate::snapshot::summary_of;

#[derive(Parser, Debug)]
#[command(
    name = "galion-gateway",
    version,
    about = "Galion's reverse-proxy gateway"
)]
pub struct Cli {
    /// Configuration file.
    #[arg(
        short = 'c',
        long = "conf",
        global = true,
        default_value = "conf/gateway.yaml",
        env = "GALION_GATEWAY_CONFIG"
    )]
    pub config: PathBuf,
    /// Take over the listening sockets of a running instance (graceful upgrade).
    #[arg(short = 'u', long)]
    pub upgrade: bool,
    /// Run in the background.
    #[arg(short = 'd', long)]
    pub daemon: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate the configuration, print a summary or every error; exit 0 or 1.
    Check,
    /// Print the SHA-256 hex digest of a secret read from stdin (for admin tokens and
    /// API keys: only digests go into the configuration).
    HashKey,
    /// Create a local CA and certificates for galion.app, *.galion.app, localhost,
    /// galion.studio and *.galion.studio in DIR (private keys 0600).
    DevCerts {
        /// Output directory.
        dir: PathBuf,
    },
}

/// `check`: returns the process exit code.
pub fn check(path: &Path) -> i32 {
    match config::load_file(path) {
        Ok(l) => {
            for w in &l.warnings {
                eprintln!(
                    "warning: {}:{}: {}: {}",
                    path.display(),
                    w.line.unwrap_or(0),
                    w.path,
                    w.message
                );
            }
            // The compiled router answers what a request would reach.
            let snapshot = crate::snapshot::Snapshot::build(l.config.clone(), None);
            for e in crate::routing::exposures(&snapshot.router) {
                eprintln!("warning: {}: {e}", path.display());
            }
            let mut o = String::new();
            // Written in one go, ignoring a closed pipe (`check | head`).
            macro_rules! out { ($($t:tt)*) => {{ o.push_str(&format!($($t)*)); o.push('\n'); }} }
            let c = &l.config;
            out!("{}: configuration OK", path.display());
            out!(
                "listen: http {} · admin {}",
                c.listen
                    .http
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "-".into()),
                c.listen.admin
            );
            out!("upstreams:");
            for (name, u) in &c.upstreams {
                let servers: Vec<String> = u
                    .servers
                    .iter()
                    .map(|s| format!("{}×{}", s.addr, s.weight))
                    .collect();
                let hc = u
                    .health_check
                    .as_ref()
                    .map(|h| format!(", health GET {} every {:?}", h.path, h.interval))
                    .unwrap_or_default();
                out!("  {name}: {:?} [{}]{hc}", u.balance, servers.join(", "));
            }
            out!("hosts:");
            for h in &c.hosts {
                let extra = if h.aliases.is_empty() {
                    String::new()
                } else {
                    format!(" (aliases: {})", h.aliases.join(", "))
                };
                let def = if h.is_default { " [default]" } else { "" };
                out!("  {}{extra}{def}", h.name);
                let compiled = snapshot.router.hosts.iter().find(|x| *x.name == *h.name);
                for r in &h.routes {
                    let transport = compiled
                        .and_then(|x| x.routes.iter().find(|x| *x.name == *r.name))
                        .map(|x| match x.pingora_only {
                            _ if !c.server.fast_path => " [pingora: fast_path off]".to_owned(),
                            Some(why) => format!(" [pingora: {why}]"),
                            None => " [fast path]".to_owned(),
                        })
                        .unwrap_or_default();
                    let methods = r
                        .methods
                        .as_ref()
                        .map(|m| m.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(","))
                        .unwrap_or_else(|| "*".into());
                    out!(
                        "    {:<20} {:<40} {:<12} → {}{transport}",
                        r.name,
                        r.matcher.describe(),
                        methods,
                        r.action.describe()
                    );
                }
            }
            out!(
                "content hash: {}",
                summary_of(c)["content_hash"].as_str().unwrap_or("")
            );
            let _ = std::io::stdout().write_all(o.as_bytes());
            0
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{}: {} error(s); configuration NOT valid",
                path.display(),
                errors.0.len()
            );
            1
        }
    }
}

/// `hash-key`: digest of stdin without its trailing newline.
pub fn hash_key() -> std::io::Result<String> {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input)?;
    let key = input.trim_end_matches(['\r', '\n']);
    Ok(hex::encode(Sha256::digest(key.as_bytes())))
}
