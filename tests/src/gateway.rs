//! `spawn_gateway(config)`: a real gateway process with its own config file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{binary, client, eventually, free_addr};

pub struct Gateway {
    pub child: Child,
    pub http: SocketAddr,
    /// Set by [`spawn_gateway_tls`].
    pub https: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    pub dir: tempfile::TempDir,
    /// Extra `server:` keys, kept when the config is rewritten.
    server_keys: String,
}

/// Writes `config` (YAML without a `listen:` section) next to fresh listener
/// addresses, starts the gateway and waits until its admin port answers.
pub async fn spawn_gateway(config: &str) -> Gateway {
    start(config, false, "").await
}

/// Like [`spawn_gateway`] with extra `server:` keys, e.g. `fast_path: false`.
pub async fn spawn_gateway_with(config: &str, server_keys: &str) -> Gateway {
    start(config, false, server_keys).await
}

/// Like [`spawn_gateway`] with an HTTPS listener too; `config` carries the `tls:`
/// section.
pub async fn spawn_gateway_tls(config: &str) -> Gateway {
    start(config, true, "").await
}

/// Starts a gateway like [`spawn_gateway`] without waiting for it to answer
/// (for what happens while it starts); [`Gateway::wait_ready`] waits.
pub fn launch_gateway(config: &str) -> Gateway {
    launch_fresh(config, false, "", &[])
}

/// Like [`launch_gateway`] with extra `server:` keys and environment (e.g.
/// `NOTIFY_SOCKET`).
pub fn launch_gateway_env(config: &str, server_keys: &str, env: &[(&str, &str)]) -> Gateway {
    launch_fresh(config, false, server_keys, env)
}

async fn start(config: &str, tls: bool, server_keys: &str) -> Gateway {
    // A port from `free_addr` is free when chosen, not reserved: a parallel
    // test can bind it before the gateway does. pingora then logs "<addr> is
    // in use" and keeps trying, and a client would reach the other test's
    // server. Such a gateway is stopped and started again on fresh ports.
    for _ in 0..3 {
        let gw = launch_fresh(config, tls, server_keys, &[]);
        match gw.listening_within(Duration::from_secs(15)).await {
            Listening::Yes => return gw,
            Listening::PortTaken => continue,
            Listening::No => {
                gw.wait_ready().await;
                return gw;
            }
        }
    }
    let gw = launch_fresh(config, tls, server_keys, &[]);
    gw.wait_ready().await;
    gw
}

enum Listening {
    Yes,
    /// One of its ports was bound by another process first.
    PortTaken,
    /// Not within the time (the log says why).
    No,
}

fn launch_fresh(config: &str, tls: bool, server_keys: &str, env: &[(&str, &str)]) -> Gateway {
    launch_with(
        config,
        free_addr(),
        tls.then(free_addr),
        free_addr(),
        server_keys,
        env,
    )
}

/// Starts a gateway like [`launch_gateway`] on addresses chosen beforehand (for
/// peers that must know them first, such as an ACME server's validator).
pub fn launch_on(
    config: &str,
    http: SocketAddr,
    https: Option<SocketAddr>,
    admin: SocketAddr,
    env: &[(&str, &str)],
) -> Gateway {
    launch_with(config, http, https, admin, "", env)
}

fn launch_with(
    config: &str,
    http: SocketAddr,
    https: Option<SocketAddr>,
    admin: SocketAddr,
    server_keys: &str,
    env: &[(&str, &str)],
) -> Gateway {
    let dir = tempfile::tempdir().expect("tempdir");
    let config_path = dir.path().join("gateway.yaml");
    let text = listen_block(config, http, https, admin, server_keys);
    std::fs::write(&config_path, text).expect("write config");
    let child = launch(dir.path(), &config_path, Launch::Fresh, env);
    Gateway {
        child,
        http,
        https,
        admin,
        config_path,
        dir,
        server_keys: server_keys.to_owned(),
    }
}

enum Launch {
    Fresh,
    /// `-u`: take the listening sockets of the running instance; logs go to
    /// `gateway-new.log` and `access-new.log`.
    Upgrade,
}

/// Starts the binary on `config_path`; logs are appended in `dir`, and the state
/// directory (bans) is `dir/state` unless the config says otherwise.
fn launch(
    dir: &std::path::Path,
    config_path: &std::path::Path,
    how: Launch,
    env: &[(&str, &str)],
) -> Child {
    let (access, log, upgrade) = match how {
        Launch::Fresh => ("access.log", "gateway.log", None),
        Launch::Upgrade => ("access-new.log", "gateway-new.log", Some("-u")),
    };
    let open = |name: &str| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(name))
            .expect("log file")
    };
    Command::new(binary("galion-gateway"))
        .args(upgrade)
        .arg("-c")
        .arg(config_path)
        .env("RUST_LOG", "info")
        .env("GALION_DATA_DIR", dir)
        .envs(env.iter().copied())
        .stdout(Stdio::from(open(access)))
        .stderr(Stdio::from(open(log)))
        .spawn()
        .expect("start galion-gateway")
}

/// Whether process `pid` holds a listening TCP socket on `addr`: one of its
/// descriptors is a socket whose inode the kernel's table lists as listening
/// there. Connecting would not tell: the port may be another process's.
pub fn holds_listener(pid: u32, addr: SocketAddr) -> bool {
    let SocketAddr::V4(want) = addr else {
        return false;
    };
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let inodes: std::collections::HashSet<u64> = fds
        .flatten()
        .filter_map(|fd| {
            let target = std::fs::read_link(fd.path()).ok()?;
            let t = target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?;
            t.parse().ok()
        })
        .collect();
    let Ok(table) = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")) else {
        return false;
    };
    // `0100007F:1F90` is 127.0.0.1:8080 (the address as the kernel's
    // little-endian word); state 0A is LISTEN; the tenth column the inode.
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(want.ip().octets()),
        want.port()
    );
    table.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        f.len() > 9
            && f[1] == local
            && f[3] == "0A"
            && f[9].parse::<u64>().is_ok_and(|i| inodes.contains(&i))
    })
}

impl Gateway {
    /// Waits until the admin port answers and the process itself holds its
    /// proxy listeners.
    async fn listening_within(&self, limit: Duration) -> Listening {
        let url = format!("http://{}/health/live", self.admin);
        let pid = self.child.id();
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if self.log().contains(" is in use") {
                return Listening::PortTaken;
            }
            // Bounded: a port taken by a process that accepts and stays silent
            // would hold the request for the client's whole timeout.
            let admin = tokio::time::timeout(Duration::from_secs(1), client().get(&url).send())
                .await
                .is_ok_and(|r| r.is_ok_and(|r| r.status() == 200));
            if admin
                && holds_listener(pid, self.http)
                && self.https.is_none_or(|a| holds_listener(pid, a))
            {
                return Listening::Yes;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Listening::No
    }

    /// Waits until the admin and proxy listeners answer; fails the test with the
    /// gateway's log when they do not within 15 s.
    pub async fn wait_ready(&self) {
        let (admin, http, https) = (self.admin, self.http, self.https);
        let gw = self;
        let url = format!("http://{admin}/health/live");
        let up = eventually(15, || {
            let url = url.clone();
            async move {
                client()
                    .get(&url)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status() == 200)
            }
        })
        .await;
        assert!(up.is_some(), "gateway did not start:\n{}", gw.log());
        // The proxy listener starts with the admin one; make sure this process
        // holds it (a connection could reach another process on that port).
        let pid = gw.child.id();
        let proxy_up =
            eventually(5, || async move { holds_listener(pid, http).then_some(()) }).await;
        assert!(proxy_up.is_some(), "proxy listener not up:\n{}", gw.log());
        // The HTTPS listener is a separate pingora service: it can come up a moment later.
        if let Some(https) = https {
            let tls_up = eventually(
                5,
                || async move { holds_listener(pid, https).then_some(()) },
            )
            .await;
            assert!(tls_up.is_some(), "https listener not up:\n{}", gw.log());
        }
    }

    /// Stops the process and starts it again on the same config, ports and data dir.
    pub async fn restart(&mut self) {
        self.stop();
        self.child = launch(self.dir.path(), &self.config_path, Launch::Fresh, &[]);
        self.wait_ready().await;
    }

    /// Starts a second gateway on the same config with `-u` (a graceful
    /// upgrade): it serves once this one, sent `SIGQUIT`, has handed over its
    /// listening sockets (the config needs its own `server.upgrade_sock`).
    pub fn launch_upgrade(&self) -> Child {
        launch(self.dir.path(), &self.config_path, Launch::Upgrade, &[])
    }
}

pub fn with_listen(config: &str, http: SocketAddr, admin: SocketAddr) -> String {
    listen_block(config, http, None, admin, "")
}

/// `GALION_TEST_FAST_PATH=off`: gateways start with `server.fast_path: false`
/// unless a test sets it itself.
pub fn fast_path_off() -> bool {
    std::env::var("GALION_TEST_FAST_PATH").is_ok_and(|v| v == "off")
}

fn listen_block(
    config: &str,
    http: SocketAddr,
    https: Option<SocketAddr>,
    admin: SocketAddr,
    server_keys: &str,
) -> String {
    // Tests stop at once, unless they ask for a grace period of their own.
    let grace = if server_keys.contains("grace_period") {
        ""
    } else {
        "grace_period: 0s, "
    };
    let mut server_keys = if server_keys.is_empty() {
        String::new()
    } else {
        format!(", {server_keys}")
    };
    // `./test.sh` runs the policy tests a second time with every request on
    // pingora's transport: both must give the same answers.
    if !server_keys.contains("fast_path") && fast_path_off() {
        server_keys.push_str(", fast_path: false");
    }
    let https = https
        .map(|a| format!(", https: \"{a}\""))
        .unwrap_or_default();
    format!(
        "listen: {{ http: \"{http}\"{https}, admin: \"{admin}\" }}\nserver: {{ {grace}graceful_shutdown_timeout: 1s{server_keys} }}\n{config}"
    )
}

impl Gateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// Rewrites the config file (keeping the listeners) without waiting.
    pub fn write_config(&self, config: &str) {
        let tmp = self.dir.path().join("gateway.yaml.tmp");
        std::fs::write(
            &tmp,
            listen_block(config, self.http, self.https, self.admin, &self.server_keys),
        )
        .expect("write");
        // Rename like an editor does, so the watcher must handle it.
        std::fs::rename(&tmp, &self.config_path).expect("rename");
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// One admin API call with [`crate::ADMIN_TOKEN`] (and a JSON body when given).
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> reqwest::Response {
        let mut r = client()
            .request(method, self.admin_url(path))
            .bearer_auth(crate::ADMIN_TOKEN);
        if let Some(b) = body {
            r = r.json(&b);
        }
        r.send().await.expect("admin call")
    }

    /// The value of one Prometheus sample, e.g. `gateway_config_reloads_total{result="error"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body");
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    pub fn stop(&mut self) {
        stop_process(&mut self.child);
    }

    /// Waits up to `limit` for the process to exit by itself (after a signal).
    pub async fn exited_within(&mut self, limit: Duration) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

/// Stops a gateway process: SIGINT (pingora's fast shutdown), SIGKILL after
/// 2.5 s.
pub fn stop_process(child: &mut Child) {
    interrupt(child);
    reap_within(child, Duration::from_millis(2500));
}

/// Sends SIGINT to a child still running. Nothing is sent to a process already
/// exited (it is reaped here): its PID may belong to another process now.
pub fn interrupt(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
    }
}

/// Waits up to `limit` for a child to exit, then kills it; reaps it either way.
pub fn reap_within(child: &mut Child, limit: Duration) {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "upstreams:\n  o: { servers: [\"127.0.0.1:9\"] }\nhosts:\n  t.example:\n    routes:\n      - { name: all, prefix: /, upstream: o }\n";

    /// The race `start` guards against: the proxy port is someone else's by
    /// the time the gateway binds it. Connecting would reach that one; the
    /// fixture must see that the port is not the gateway's.
    #[tokio::test]
    async fn a_port_another_process_holds_is_not_taken_for_the_gateways() {
        let thief = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = thief.local_addr().expect("addr");
        assert!(holds_listener(std::process::id(), port));
        assert!(!holds_listener(std::process::id(), free_addr()));
        let gw = launch_on(CONFIG, port, None, free_addr(), &[]);
        assert!(matches!(
            gw.listening_within(Duration::from_secs(10)).await,
            Listening::PortTaken
        ));
        assert!(!holds_listener(gw.child.id(), port));
        // Stopped before the next one starts (it would keep trying the port).
        drop(gw);
        // The same gateway on a port of its own is seen listening.
        let ok = launch_fresh(CONFIG, false, "", &[]);
        assert!(matches!(
            ok.listening_within(Duration::from_secs(15)).await,
            Listening::Yes
        ));
    }
}
