//! Binary upgrade started by the running gateway itself (`POST /admin/upgrade`,
//! `galion-gateway upgrade`), nginx's `USR2`: it checks the configuration with
//! the binary now on disk, starts that binary with `-u` as its own child, waits
//! until the child listens on `server.upgrade_sock`, then hands its listening
//! sockets over (pingora's `SIGQUIT` path) and drains.
//!
//! Being started by the gateway, the new process is in the same service (the
//! systemd unit's cgroup); it announces itself with `MAINPID=` + `READY=1`
//! (`NotifyAccess=all`), and the old one does not say `STOPPING=1` (see
//! [`crate::systemd`]), so systemd follows the new process and the unit stays up.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Set once this process starts handing its sockets to a successor: by
/// [`start`], or by a `SIGQUIT` from an operator doing `-u` by hand.
fn handing() -> &'static Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(Arc::default)
}

/// Records `SIGQUIT` (pingora's handover signal) beside pingora's own handler.
pub fn watch_quit() -> std::io::Result<()> {
    signal_hook::flag::register(signal_hook::consts::SIGQUIT, handing().clone()).map(|_| ())
}

/// Whether this process is handing its listeners over (no `STOPPING=1` then).
pub fn handing_over() -> bool {
    handing().load(Ordering::Acquire)
}

/// pingora's default when `server.upgrade_sock` is not set.
const DEFAULT_UPGRADE_SOCK: &str = "/tmp/pingora_upgrade.sock";

/// What an upgrade request needs from the running process.
pub struct Request<'a> {
    /// The configuration file the running gateway was started with.
    pub config: &'a Path,
    /// `server.upgrade_sock` as the running process uses it (fixed at start).
    pub upgrade_sock: Option<&'a str>,
}

/// A successor that took over, or why none did (the running process keeps serving).
#[derive(Debug)]
pub enum Outcome {
    Started { pid: u32, binary: PathBuf },
    Refused(String),
    Failed(String),
}

/// The binary to start: the path this process was started as (`/usr/local/bin/
/// galion-gateway`, where a new version is installed over the old), not
/// `/proc/self/exe`, which keeps naming the replaced file.
fn binary() -> Result<PathBuf, String> {
    if let Some(arg0) = std::env::args_os().next().map(PathBuf::from) {
        if arg0.components().count() > 1 && arg0.exists() {
            return Ok(arg0);
        }
    }
    std::env::current_exe().map_err(|e| format!("cannot find the gateway binary: {e}"))
}

/// Starts the successor and hands the sockets over. Blocking (it waits for
/// the child): call it off the async runtime.
pub fn start(req: Request<'_>) -> Outcome {
    if handing().load(Ordering::Acquire) {
        return Outcome::Refused("an upgrade is already under way".into());
    }
    let running_sock = req.upgrade_sock.unwrap_or(DEFAULT_UPGRADE_SOCK);
    // The successor reads the file as it is now; both must meet on one socket.
    let loaded = match crate::config::load_file(req.config) {
        Ok(l) => l,
        Err(e) => return Outcome::Refused(format!("the configuration is refused:\n{e}")),
    };
    let file_sock = loaded
        .config
        .server
        .upgrade_sock
        .as_deref()
        .unwrap_or(DEFAULT_UPGRADE_SOCK);
    if file_sock != running_sock {
        return Outcome::Refused(format!(
            "server.upgrade_sock changed from {running_sock} to {file_sock}: the new process \
             would wait on a socket the running one does not send to; restart instead"
        ));
    }
    let binary = match binary() {
        Ok(b) => b,
        Err(e) => return Outcome::Failed(e),
    };
    // The new binary's own parser must accept the file, or it would exit
    // after the sockets moved.
    match Command::new(&binary)
        .args(["check", "-c"])
        .arg(req.config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            return Outcome::Refused(format!(
                "{} check refused the configuration:\n{}",
                binary.display(),
                String::from_utf8_lossy(&out.stderr).trim_end()
            ))
        }
        Err(e) => {
            return Outcome::Failed(format!("cannot run {}: {e}", binary.display()));
        }
    }
    if handing().swap(true, Ordering::AcqRel) {
        return Outcome::Refused("an upgrade is already under way".into());
    }
    // A socket left by an earlier attempt would look like a waiting successor.
    let sock = Path::new(running_sock);
    let _ = std::fs::remove_file(sock);
    let mut child = match Command::new(&binary)
        .arg("-u")
        .arg("-c")
        .arg(req.config)
        .stdin(Stdio::null())
        // systemd's watchdog names the old main PID: the successor pings
        // as the new main process (it sends MAINPID= with READY=1).
        .env_remove("WATCHDOG_PID")
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            handing().store(false, Ordering::Release);
            return Outcome::Failed(format!("cannot start {}: {e}", binary.display()));
        }
    };
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            handing().store(false, Ordering::Release);
            return Outcome::Failed(format!(
                "the new process ({}) exited before taking over: {status}",
                binary.display()
            ));
        }
        if sock.exists() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            handing().store(false, Ordering::Release);
            return Outcome::Failed(format!(
                "the new process did not listen on {running_sock} within 10 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Reap it should it exit while this process still runs; once this one has
    // exited, the service manager (or init) does.
    std::thread::spawn(move || {
        if let Ok(status) = child.wait() {
            if !status.success() {
                tracing::error!(pid, %status, "the upgraded process exited");
            }
        }
    });
    tracing::info!(pid, binary = %binary.display(), "handing the listeners to the new process");
    // pingora's graceful upgrade: send the listeners, then drain.
    if let Err(e) = signal_hook::low_level::raise(signal_hook::consts::SIGQUIT) {
        return Outcome::Failed(format!("cannot start the handover: {e}"));
    }
    Outcome::Started { pid, binary }
}
