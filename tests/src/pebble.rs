//! Pebble, Let's Encrypt's test ACME server, with `pebble-challtestsrv` as its
//! DNS (every name resolves to 127.0.0.1), on free loopback ports. Pebble's own
//! HTTPS uses the dev certificate of `galion-gateway dev-certs` (it names
//! 127.0.0.1), so clients trust it with that `ca.pem`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::{binary, free_port};

pub struct Pebble {
    pub directory: String,
    /// The dev CA that signed Pebble's own HTTPS certificate.
    pub ca_root: PathBuf,
    management: SocketAddr,
    children: Vec<Child>,
    pub dir: tempfile::TempDir,
}

impl Pebble {
    /// A fresh Pebble that validates HTTP-01 on `http_port` and TLS-ALPN-01 on
    /// `tls_port` (the gateway's listeners) and issues certificates valid for
    /// `validity_secs`.
    pub async fn start(http_port: u16, tls_port: u16, validity_secs: u64) -> Pebble {
        // The free ports are chosen before Pebble binds them, so a process
        // started meanwhile (a parallel test) can take one: Pebble then exits
        // with "address already in use", and a new attempt takes new ports.
        let mut failures = Vec::new();
        for _ in 0..4 {
            match Self::try_start(http_port, tls_port, validity_secs).await {
                Ok(p) => return p,
                Err(log) => failures.push(log),
            }
        }
        panic!("pebble did not start:\n{}", failures.join("\n---\n"));
    }

    async fn try_start(
        http_port: u16,
        tls_port: u16,
        validity_secs: u64,
    ) -> Result<Pebble, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = dir.path().join("certs");
        let out = Command::new(binary("galion-gateway"))
            .arg("dev-certs")
            .arg(&certs)
            .output()
            .expect("galion-gateway dev-certs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (listen, management, dns) = (free_port(), free_port(), free_port());
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{listen}"),
                "managementListenAddress": format!("127.0.0.1:{management}"),
                "certificate": certs.join("galion.app.pem"),
                "privateKey": certs.join("galion.app.key"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": validity_secs,
            }
        });
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).expect("write pebble config");
        let log = |name: &str| {
            Stdio::from(std::fs::File::create(dir.path().join(name)).expect("pebble log"))
        };
        let challtestsrv = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-management", &format!("127.0.0.1:{}", free_port())])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn()
            .expect("start pebble-challtestsrv (apt install pebble)");
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .expect("start pebble (apt install pebble)");
        let mut p = Pebble {
            directory: format!("https://127.0.0.1:{listen}/dir"),
            ca_root: certs.join("ca.pem"),
            management: SocketAddr::from(([127, 0, 0, 1], management)),
            children: vec![challtestsrv, pebble],
            dir,
        };
        let client = p.client();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let answer = tokio::time::timeout(
                std::time::Duration::from_secs(2),
                client.get(&p.directory).send(),
            )
            .await;
            if matches!(answer, Ok(Ok(r)) if r.status() == 200) {
                return Ok(p);
            }
            let exited = p
                .children
                .iter_mut()
                .any(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited || tokio::time::Instant::now() > deadline {
                // Dropping `p` stops what still runs.
                return Err(p.log());
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// An HTTPS client that trusts Pebble's listener.
    pub fn client(&self) -> reqwest::Client {
        let pem = std::fs::read(&self.ca_root).expect("read ca.pem");
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("ca.pem"))
            .no_proxy()
            .build()
            .expect("client")
    }

    /// The root that signs the certificates Pebble issues (PEM).
    pub async fn issuing_root(&self) -> String {
        self.client()
            .get(format!("https://{}/roots/0", self.management))
            .send()
            .await
            .expect("pebble management")
            .text()
            .await
            .expect("root PEM")
    }

    pub fn log(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!("{}{}", read("pebble.log"), read("pebble.err"))
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
