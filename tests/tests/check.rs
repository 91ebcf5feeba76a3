//! `galion-gateway check` on broken and shipped configurations.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use galion_tests::{binary, workspace_root};

#[test]
fn three_mistakes_all_reported_with_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        r#"listen:
  http: 127.0.0.1:8080
upstreams:
  users:
    servers: [127.0.0.1:7002]
    balance: fastest
hosts:
  galion.app:
    routes:
      - name: users
        prefix: /api/v1/users
        upstream: usres
      - name: colourful
        prefix: /x
        colour: blue
        upstream: users
"#,
    )
    .unwrap();
    let out = Command::new(binary("galion-gateway"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("bad.yaml:6: upstreams.users.balance:"),
        "{err}"
    );
    assert!(
        err.contains(
            r#"bad.yaml:12: hosts."galion.app".routes[0].upstream: unknown upstream "usres""#
        ),
        "{err}"
    );
    assert!(
        err.contains(r#"bad.yaml:15: hosts."galion.app".routes[1].colour: unknown field `colour`"#),
        "{err}"
    );
    assert!(err.contains("3 error(s)"), "{err}");
}

#[test]
fn shipped_configs_are_valid() {
    let conf = workspace_root().join("conf");
    let data = tempfile::tempdir().unwrap();
    let certs = data.path().join("certs");
    let out = Command::new(binary("galion-gateway"))
        .arg("dev-certs")
        .arg(&certs)
        .output()
        .unwrap();
    assert!(out.status.success());
    // The production layout's front-end roots (`/var/www/...` unless
    // GALION_WEB_ROOT says otherwise), so that a missing one is not warned of.
    let web = data.path().join("www");
    for site in ["galion.app", "galion.studio"] {
        std::fs::create_dir_all(web.join(site)).unwrap();
    }
    // conf/gateway.yaml reads the service token from systemd's credentials.
    let creds = data.path().join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    let token = creds.join("service-token");
    std::fs::write(&token, "check-only").unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(&conf).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if !(name.starts_with("gateway") || name == "dev.yaml") || !name.ends_with(".yaml") {
            continue;
        }
        let out = Command::new(binary("galion-gateway"))
            .args(["check", "-c"])
            .arg(&p)
            .env("GALION_SERVICE_TOKEN", "check-only")
            .env("GALION_DATA_DIR", data.path())
            .env("GALION_TLS_DIR", &certs)
            .env("GALION_WEB_ROOT", &web)
            .env("CREDENTIALS_DIRECTORY", &creds)
            // Relative paths (dev.yaml's ./web) are the repository root's, as
            // for dev.sh and test.sh.
            .current_dir(workspace_root())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            p.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let summary = String::from_utf8_lossy(&out.stdout);
        assert!(summary.contains("configuration OK") && summary.contains("hosts:"));
        // No route of a shipped config reaches a backend's /metrics, /health/*
        // or /revocations, and nothing else is warned about either.
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(!warnings.contains("warning"), "{}: {warnings}", p.display());
        checked += 1;
    }
    assert!(checked >= 2, "expected conf/dev.yaml and conf/gateway.yaml");
}

#[test]
fn hash_key_prints_the_digest() {
    use std::io::Write;
    let mut child = Command::new(binary("galion-gateway"))
        .arg("hash-key")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"dev-admin-token\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1734d503f6aa6a047c36d113cbad769f719c93784b469b771c4c3e7c63adbefd"
    );
}
