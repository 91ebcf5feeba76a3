//! The whole dev stack: galion-auth, galion-users, galion-analytics and the gateway
//! with `conf/dev.yaml` (its ports replaced by free ones), SQLite in a temp dir.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::gateway::{interrupt, reap_within};
use crate::{binary, client, eventually, free_addr, workspace_root};

/// `dev-ingest:sha256("dev-ingest-key")`, the dev API key of conf/dev.yaml.
pub const DEV_INGEST_KEY: &str =
    "dev-ingest:21dd9e3b3f1633b88d69b73906f1a9e594beebd9b616bf89448c0a50a8b4ad10";

pub struct Stack {
    pub gateway: SocketAddr,
    pub admin: SocketAddr,
    pub auth: SocketAddr,
    pub users: SocketAddr,
    pub analytics: SocketAddr,
    /// The backends' service token (their `/metrics` takes it).
    pub service_token: String,
    pub dir: tempfile::TempDir,
    children: Vec<(String, Child)>,
}

fn spawn(name: &str, dir: &std::path::Path, args: &[&str], env: &[(&str, String)]) -> Child {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log");
    let err = log.try_clone().expect("log");
    let mut cmd = Command::new(binary(name));
    cmd.args(args)
        .env("GALION_DATA_DIR", dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"))
}

async fn wait_http(url: String, what: &str) {
    let ok = eventually(30, || {
        let url = url.clone();
        async move {
            client()
                .get(&url)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
        }
    })
    .await;
    assert!(ok.is_some(), "{what} did not come up at {url}");
}

impl Stack {
    pub async fn start() -> Stack {
        Self::start_with(true).await
    }

    /// The stack with the gateway's `server.fast_path` set as given (every
    /// end-to-end test of a policy runs on both transports).
    pub async fn start_with(fast_path: bool) -> Stack {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = Command::new(binary("galion-gateway"))
            .arg("dev-certs")
            .arg(dir.path().join("certs"))
            .output()
            .expect("dev-certs");
        assert!(certs.status.success(), "dev-certs failed");
        let (gw, admin, tls) = (free_addr(), free_addr(), free_addr());
        let (auth, users, analytics) = (free_addr(), free_addr(), free_addr());
        let token = "stack-test-service-token-0123456789abcdef".to_owned();
        let env = vec![
            ("GALION_SERVICE_TOKEN", token.clone()),
            ("GALION_AUTH_LISTEN", auth.to_string()),
            ("GALION_USERS_LISTEN", users.to_string()),
            ("GALION_ANALYTICS_LISTEN", analytics.to_string()),
            ("GALION_AUTH_URL", format!("http://{auth}")),
            ("GALION_ANALYTICS_URL", format!("http://{analytics}")),
            // conf/dev.yaml's ingestion key, as dev.sh gives it to galion-analytics.
            ("GALION_ANALYTICS_API_KEYS", DEV_INGEST_KEY.to_owned()),
        ];
        let mut children = Vec::new();
        children.push((
            "galion-auth".to_owned(),
            spawn("galion-auth", dir.path(), &[], &env),
        ));
        wait_http(format!("http://{auth}/health"), "galion-auth").await;
        children.push((
            "galion-users".to_owned(),
            spawn("galion-users", dir.path(), &[], &env),
        ));
        children.push((
            "galion-analytics".to_owned(),
            spawn("galion-analytics", dir.path(), &[], &env),
        ));
        wait_http(format!("http://{users}/health"), "galion-users").await;
        wait_http(format!("http://{analytics}/health"), "galion-analytics").await;

        // The shipped dev config, on this test's ports.
        let text = std::fs::read_to_string(workspace_root().join("conf/dev.yaml"))
            .expect("dev.yaml")
            .replace("127.0.0.1:8080", &gw.to_string())
            .replace("127.0.0.1:8443", &tls.to_string())
            .replace("127.0.0.1:9901", &admin.to_string())
            .replace("127.0.0.1:7001", &auth.to_string())
            .replace("127.0.0.1:7002", &users.to_string())
            .replace("127.0.0.1:7003", &analytics.to_string())
            .replacen(
                "server:\n",
                &format!("server:\n  fast_path: {fast_path}\n"),
                1,
            );
        let conf = dir.path().join("gateway.yaml");
        std::fs::write(&conf, text).expect("write config");
        let conf_arg = conf.to_string_lossy().to_string();
        children.push((
            "galion-gateway".to_owned(),
            spawn("galion-gateway", dir.path(), &["-c", &conf_arg], &env),
        ));
        wait_http(format!("http://{admin}/health/ready"), "galion-gateway").await;
        // pingora starts the proxy listener just after the admin one.
        let proxy_up = eventually(10, || async move {
            tokio::net::TcpStream::connect(gw).await.ok()
        })
        .await;
        assert!(proxy_up.is_some(), "gateway proxy listener not up at {gw}");
        Stack {
            gateway: gw,
            admin,
            auth,
            users,
            analytics,
            service_token: token,
            dir,
            children,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.gateway, path)
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // All signalled first, so they shut down side by side.
        for (_, c) in self.children.iter_mut().rev() {
            interrupt(c);
        }
        for (_, c) in self.children.iter_mut() {
            reap_within(c, Duration::from_secs(2));
        }
    }
}
