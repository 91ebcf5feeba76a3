//! Command line: `run` (default), `check` (like `nginx -t`), `reload` (checked,
//! for systemd's `ExecReload`), `hash-key` and `dev-certs`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// Reload the running gateway (systemd's `ExecReload`): validate the file
    /// here, then ask the gateway through its admin API with the admin token
    /// (`GALION_ADMIN_TOKEN_FILE`, else `GALION_ADMIN_TOKEN`). Exits 1 with the
    /// errors when the file is refused; the running configuration stays.
    Reload {
        /// File holding the admin bearer token.
        #[arg(long, env = "GALION_ADMIN_TOKEN_FILE")]
        token_file: Option<PathBuf>,
        /// Give up waiting for the gateway after this long.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Upgrade the binary without a failed request (nginx's USR2): the running
    /// gateway checks the file with the binary now on disk, starts it with `-u`
    /// as its own child (under systemd: in the same unit, which follows it by
    /// `MAINPID=`), hands it the listeners and drains. Waits until the new
    /// process answers; exits 1 when the upgrade is refused or fails (the
    /// running gateway then keeps serving). Same token as `reload`.
    Upgrade {
        /// File holding the admin bearer token.
        #[arg(long, env = "GALION_ADMIN_TOKEN_FILE")]
        token_file: Option<PathBuf>,
        /// Give up waiting for the new process after this long.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
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
            if let Some(a) = &c.tls.acme {
                out!(
                    "acme: {} via {}, state in {}",
                    a.directory,
                    a.challenge.as_str(),
                    a.dir.display()
                );
                for names in &a.certs {
                    out!("  certificate for {}", names.join(", "));
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

/// `reload`: returns the process exit code.
pub fn reload(path: &Path, token_file: Option<&Path>, timeout: Duration) -> i32 {
    let (admin, token) = match admin_call_setup(path, token_file, "reload") {
        Ok(x) => x,
        Err(code) => return code,
    };
    let (status, json, body) = match post(admin, &token, "/admin/reload", timeout) {
        Ok(r) => r,
        Err(code) => return code,
    };
    match status {
        200 => {
            let generation = json["generation"].as_u64().unwrap_or(0);
            println!(
                "{}: configuration reloaded; serving generation {generation}",
                path.display()
            );
            0
        }
        _ => refused(path, "reload", status, &json, &body),
    }
}

/// `upgrade`: returns the process exit code.
pub fn upgrade(path: &Path, token_file: Option<&Path>, timeout: Duration) -> i32 {
    let (admin, token) = match admin_call_setup(path, token_file, "upgrade") {
        Ok(x) => x,
        Err(code) => return code,
    };
    let (status, json, body) = match post(admin, &token, "/admin/upgrade", timeout) {
        Ok(r) => r,
        Err(code) => return code,
    };
    if status != 202 {
        return refused(path, "upgrade", status, &json, &body);
    }
    let (pid, old) = (json["pid"].as_u64(), json["old_pid"].as_u64().unwrap_or(0));
    let Some(pid) = pid else {
        eprintln!("the gateway did not say which process took over");
        return 1;
    };
    // Both processes share the listening sockets for a while: wait until a
    // connection reaches the new one.
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if let Ok((200, live, _)) =
            admin_request(admin, &token, "GET", "/health/live", Duration::from_secs(2))
        {
            if live["pid"].as_u64() == Some(pid) {
                println!(
                    "upgraded: pid {pid} ({}) serves; pid {old} drains and exits",
                    json["binary"].as_str().unwrap_or("?")
                );
                return 0;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "the new process (pid {pid}) did not answer within {timeout:?}; see the gateway's log"
    );
    1
}

/// The local check and the admin address and token a `reload`/`upgrade` needs;
/// `Err(exit code)` after printing why not.
fn admin_call_setup(
    path: &Path,
    token_file: Option<&Path>,
    what: &str,
) -> Result<(SocketAddr, String), i32> {
    // Checked here first, so the errors (with lines) land in the command's
    // output and the journal, and nothing is asked of the gateway.
    let loaded = match config::load_file(path) {
        Ok(l) => l,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{}: {} error(s); {what} refused, the running configuration stays",
                path.display(),
                errors.0.len()
            );
            return Err(1);
        }
    };
    let token = admin_token(token_file).map_err(|e| {
        eprintln!("{e}");
        1
    })?;
    let mut admin = loaded.config.listen.admin;
    if admin.ip().is_unspecified() {
        admin.set_ip(match admin {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok((admin, token))
}

/// `POST path` on the admin listener; `Err(exit code)` after saying that no
/// gateway answered.
fn post(
    admin: SocketAddr,
    token: &str,
    path: &str,
    timeout: Duration,
) -> Result<(u16, serde_json::Value, Vec<u8>), i32> {
    admin_request(admin, token, "POST", path, timeout).map_err(|e| {
        eprintln!("no gateway answered on the admin listener {admin}: {e}");
        1
    })
}

/// Prints why the gateway said no; returns the exit code.
fn refused(path: &Path, what: &str, status: u16, json: &serde_json::Value, body: &[u8]) -> i32 {
    if status == 401 {
        eprintln!(
            "the gateway refused the admin token (GALION_ADMIN_TOKEN_FILE or GALION_ADMIN_TOKEN; its SHA-256 must be in admin.token_sha256)"
        );
        return 1;
    }
    let message = json["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    eprintln!("{message}");
    eprintln!(
        "{}: the gateway refused the {what} (HTTP {status}); the running gateway keeps serving",
        path.display()
    );
    1
}

fn admin_token(file: Option<&Path>) -> Result<String, String> {
    let token = match file {
        Some(f) => std::fs::read_to_string(f)
            .map_err(|e| format!("cannot read the admin token file {}: {e}", f.display()))?,
        None => std::env::var("GALION_ADMIN_TOKEN").map_err(|_| {
            "no admin token: set GALION_ADMIN_TOKEN_FILE (systemd: LoadCredential=admin-token) \
             or GALION_ADMIN_TOKEN"
                .to_owned()
        })?,
    };
    let token = token.trim().to_owned();
    if token.is_empty() {
        return Err("the admin token is empty".to_owned());
    }
    Ok(token)
}

/// One admin call over plain HTTP/1.1 on the loopback admin listener:
/// (status, body as JSON (null when it is not), body).
fn admin_request(
    admin: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    timeout: Duration,
) -> std::io::Result<(u16, serde_json::Value, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&admin, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let (status, body) = parse_response(&raw).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not an HTTP response from the admin listener",
        )
    })?;
    let json = serde_json::from_slice(&body).unwrap_or_default();
    Ok((status, json, body))
}

/// Status and body of a whole `Connection: close` response.
fn parse_response(raw: &[u8]) -> Option<(u16, Vec<u8>)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, raw[end + 4..].to_vec()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_a_whole_response() {
        let (status, body) =
            parse_response(b"HTTP/1.1 422 Unprocessable\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((status, body.as_slice()), (422, b"{}".as_slice()));
        assert!(parse_response(b"garbage").is_none());
        assert!(parse_response(b"HTTP/1.1 abc x\r\n\r\n").is_none());
    }
}
