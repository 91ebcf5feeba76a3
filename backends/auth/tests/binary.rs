//! The galion-auth binary refuses bad startup input with a clear message
//! and a non-zero exit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

const SERVICE_TOKEN: &str = "test-service-token";

fn run_binary(envs: &[(&str, &str)], args: &[&str]) -> (i32, String) {
    let dir = std::env::temp_dir().join(format!("galion-cli-{}", uuid::Uuid::new_v4().simple()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_galion-auth"));
    cmd.args(args)
        .env("GALION_DATA_DIR", &dir)
        .env("GALION_SERVICE_TOKEN", SERVICE_TOKEN);
    cmd.env("GALION_AUTH_LISTEN", "127.0.0.1:0")
        .env("GALION_ANALYTICS_URL", "off");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn binary_rejects_unsupported_database_url() {
    let (code, err) = run_binary(&[("DATABASE_URL", "mysql://root@localhost/x")], &[]);
    assert_ne!(code, 0);
    assert!(
        err.contains("DATABASE_URL") && err.contains("not supported"),
        "{err}"
    );
}

#[test]
fn binary_rejects_unreachable_database() {
    let (code, err) = run_binary(
        &[("DATABASE_URL", "postgres://postgres:pw@127.0.0.1:1/none")],
        &[],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("cannot connect to the database") && !err.contains(":pw@"),
        "{err}"
    );
}

#[test]
fn binary_rejects_taken_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, err) = run_binary(&[("GALION_AUTH_LISTEN", &addr)], &[]);
    assert_ne!(code, 0);
    assert!(
        err.contains("cannot listen on") && err.contains(&addr),
        "{err}"
    );
}

#[test]
fn binary_requires_secrets_in_production() {
    let (code, err) = run_binary(
        &[("GALION_ENV", "production"), ("GALION_SERVICE_TOKEN", "")],
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.contains("GALION_SERVICE_TOKEN"), "{err}");
    let (code, err) = run_binary(&[("GALION_ENV", "production")], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("GALION_AUTH_KEY_ENCRYPTION_KEY"), "{err}");
}

#[test]
fn binary_refuses_world_readable_secret_files() {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::temp_dir().join(format!("galion-kek-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, hex::encode([1u8; 32])).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, err) = run_binary(
        &[(
            "GALION_AUTH_KEY_ENCRYPTION_KEY_FILE",
            path.to_str().unwrap(),
        )],
        &[],
    );
    std::fs::remove_file(&path).unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn binary_rejects_unknown_config_keys() {
    let path = std::env::temp_dir().join(format!(
        "galion-auth-{}.yaml",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&path, "listen: 127.0.0.1:0\nlisten_port: 3\n").unwrap();
    let (code, err) = run_binary(&[], &["--config", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
    assert_ne!(code, 0);
    assert!(
        err.contains(path.to_str().unwrap()) && err.contains("listen_port"),
        "{err}"
    );
}

#[test]
fn sigterm_stops_the_service_cleanly() {
    let dir = std::env::temp_dir().join(format!("galion-term-{}", uuid::Uuid::new_v4().simple()));
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_galion-auth"))
        .env("GALION_DATA_DIR", &dir)
        .env("GALION_SERVICE_TOKEN", SERVICE_TOKEN)
        .env("GALION_ANALYTICS_URL", "off")
        .env("GALION_AUTH_LISTEN", addr.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "galion-auth did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("galion-auth ignored SIGTERM");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let _ = std::fs::remove_dir_all(&dir);
    assert!(status.success(), "{status:?}");
}

#[test]
fn binary_requires_a_mail_relay_in_production() {
    let kek = hex::encode([1u8; 32]);
    let (code, err) = run_binary(
        &[
            ("GALION_ENV", "production"),
            ("GALION_AUTH_KEY_ENCRYPTION_KEY", &kek),
        ],
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.contains("GALION_SMTP_HOST"), "{err}");
    // Plaintext SMTP only to a loopback relay.
    let (code, err) = run_binary(
        &[
            ("GALION_SMTP_HOST", "smtp.example.net"),
            ("GALION_SMTP_TLS", "none"),
        ],
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.contains("GALION_SMTP_TLS"), "{err}");
}

#[test]
fn binary_refuses_a_world_readable_smtp_password_file() {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::temp_dir().join(format!("galion-smtp-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, "relay-secret").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, err) = run_binary(
        &[
            ("GALION_SMTP_HOST", "127.0.0.1"),
            ("GALION_SMTP_TLS", "none"),
            ("GALION_SMTP_USERNAME", "mailer"),
            ("GALION_SMTP_PASSWORD_FILE", path.to_str().unwrap()),
        ],
        &[],
    );
    std::fs::remove_file(&path).unwrap();
    assert_ne!(code, 0);
    assert!(
        err.contains("chmod 600") && !err.contains("relay-secret"),
        "{err}"
    );
}
