//! The monitoring kit (`monitoring/`) against running processes: every metric
//! an alert rule or a dashboard panel uses is exported by the gateway or a
//! backend of the dev stack, the families operators expect are there (build
//! info, process, bytes, upstream latency, dropped log lines), and a reload
//! removes the series of the routes and pools it removed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use galion_tests::stack::Stack;
use galion_tests::{client, fake_upstream, spawn_gateway, workspace_root, Gateway};
use serde_json::Value;

/// Name prefixes of this system's metric families (PromQL's functions and
/// keywords, and label names, have none of them).
const OURS: [&str; 7] = [
    "gateway_",
    "galion_",
    "auth_",
    "analytics_",
    "outbox_",
    "http_",
    "process_",
];

/// The sample names of a Prometheus text exposition (`name` of `name{..} v`).
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// The metric names a PromQL expression reads: label matchers, strings and
/// grouping clauses (`by (..)`, `on (..)`, ...) removed, functions and
/// keywords left out by keeping only names of this system's families.
fn promql_names(expr: &str, into: &mut BTreeSet<String>) {
    // Label matchers and strings out.
    let mut plain = String::new();
    let (mut depth, mut quoted) = (0, false);
    for ch in expr.chars() {
        match ch {
            '"' => quoted = !quoted,
            '{' if !quoted => depth += 1,
            '}' if !quoted => depth -= 1,
            _ if quoted || depth > 0 => {}
            _ => plain.push(ch),
        }
    }
    // Grouping clauses out: the keyword and its parenthesised label list.
    let mut text = plain;
    for kw in [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ] {
        loop {
            let found = text.match_indices(kw).find(|(i, _)| {
                let before = text[..*i].chars().next_back();
                let rest = text[i + kw.len()..].trim_start();
                !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                    && rest.starts_with('(')
            });
            let Some((i, _)) = found else { break };
            let open = i + text[i..].find('(').unwrap_or(0);
            let close = open + text[open..].find(')').map_or(text.len() - open, |c| c + 1);
            text.replace_range(i..close, " ");
        }
    }
    for w in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
        if OURS.iter().any(|p| w.starts_with(p)) {
            into.insert(w.to_owned());
        }
    }
}

fn used_by_rules_and_dashboards() -> BTreeSet<String> {
    let root = workspace_root().join("monitoring");
    let mut used = BTreeSet::new();
    let rules: serde_norway::Value = serde_norway::from_str(
        &std::fs::read_to_string(root.join("prometheus/galion.rules.yml")).unwrap(),
    )
    .unwrap();
    let mut recorded = BTreeSet::new();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            promql_names(rule["expr"].as_str().unwrap(), &mut used);
            if let Some(r) = rule["record"].as_str() {
                recorded.insert(r.to_owned());
            }
        }
    }
    fn exprs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                for (k, v) in o {
                    match (k.as_str(), v) {
                        ("expr", Value::String(e)) => out.push(e.clone()),
                        _ => exprs(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
            _ => {}
        }
    }
    let dir = root.join("grafana/dashboards");
    let mut dashboards = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let mut out = Vec::new();
            exprs(&v, &mut out);
            assert!(!out.is_empty(), "{}: no queries", path.display());
            out.iter().for_each(|e| promql_names(e, &mut used));
            dashboards += 1;
        }
    }
    assert!(dashboards >= 2, "dashboards in {}", dir.display());
    used.retain(|n| !recorded.contains(n));
    used
}

async fn scrape(url: String, token: Option<&str>) -> String {
    let mut r = client().get(&url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), 200, "{url}");
    r.text().await.unwrap()
}

#[test]
fn promql_names_are_found_and_labels_are_not() {
    let mut n = BTreeSet::new();
    promql_names(
        r#"histogram_quantile(0.99, sum by (le, host) (rate(gateway_request_duration_seconds_bucket{host=~"a.*"}[5m]))) > 1 and on(instance) up == 1"#,
        &mut n,
    );
    promql_names(
        "sum without (code) (increase(gateway_requests_total{code=~\"5..\"}[5m])) / sum(rate(http_requests_total[5m]))",
        &mut n,
    );
    let want: BTreeSet<String> = [
        "gateway_request_duration_seconds_bucket",
        "gateway_requests_total",
        "http_requests_total",
    ]
    .map(String::from)
    .into();
    assert_eq!(n, want);
}

#[tokio::test]
async fn every_metric_of_the_rules_and_dashboards_is_exported() {
    let s = Stack::start().await;
    // One proxied request: the per-route and per-upstream series exist after it.
    let r = client()
        .get(s.url("/.well-known/jwks.json"))
        .header("host", "galion.app")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let used = used_by_rules_and_dashboards();
    assert!(used.len() >= 20, "too few names found: {used:?}");
    // Some series appear with the first round of background work (the
    // health checks' first verdict): scraped again until all are there.
    let scrape_all = || async {
        let mut names = sample_names(&scrape(format!("http://{}/metrics", s.admin), None).await);
        for backend in [s.auth, s.users, s.analytics] {
            names.extend(sample_names(
                &scrape(format!("http://{backend}/metrics"), Some(&s.service_token)).await,
            ));
        }
        names
    };
    let complete = galion_tests::eventually(15, || async {
        let names = scrape_all().await;
        used.is_subset(&names).then_some(names)
    })
    .await;
    let exported = match complete {
        Some(names) => names,
        None => {
            let names = scrape_all().await;
            let missing: Vec<&String> = used.difference(&names).collect();
            panic!("used by monitoring/ but not exported by the running stack: {missing:?}");
        }
    };

    // The families operators expect of a gateway and its services.
    for name in [
        "gateway_build_info",
        "galion_build_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
        "gateway_request_bytes_total",
        "gateway_response_bytes_total",
        "gateway_upstream_response_duration_seconds_bucket",
        "gateway_access_log_dropped_total",
    ] {
        assert!(exported.contains(name), "{name} is not exported");
    }
    let text = scrape(format!("http://{}/metrics", s.admin), None).await;
    let build = text
        .lines()
        .find(|l| l.starts_with("gateway_build_info{"))
        .unwrap();
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
            && build.ends_with(" 1"),
        "{build}"
    );
    assert!(!build.contains("commit=\"\""), "{build}");
    // The response bytes of the JWKS request were counted for its host.
    let bytes = text
        .lines()
        .find(|l| l.starts_with("gateway_response_bytes_total{host=\"galion.app\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(bytes > 0.0, "response bytes not counted:\n{text}");

    // The README's table documents exactly the families the processes export.
    let families: BTreeSet<String> = exported
        .iter()
        .map(|n| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| n.strip_suffix(suffix))
                .filter(|base| exported.contains(&format!("{base}_bucket")))
                .unwrap_or(n)
                .to_owned()
        })
        .collect();
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let documented: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| n.contains('_') && !n.contains(' ') && !n.contains('/'))
        .filter(|n| OURS.iter().any(|p| n.starts_with(p)))
        .map(str::to_owned)
        .collect();
    let undocumented: Vec<&String> = families.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "exported but not in README's metrics table: {undocumented:?}"
    );
    // Documented families that need an event first (mail, rejections) are
    // not all exported by an idle stack; none may be unknown to the code.
    let gateway_src =
        std::fs::read_to_string(workspace_root().join("gateway/src/metrics.rs")).unwrap();
    for name in documented.difference(&families) {
        let backend_src = std::process::Command::new("grep")
            .args(["-rlF", &format!("\"{name}\""), "backends"])
            .current_dir(workspace_root())
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false);
        assert!(
            name.starts_with("process_")
                || gateway_src.contains(&format!("\"{name}\""))
                || backend_src,
            "README documents {name}, which nothing exports"
        );
    }
}

fn two_routes(up: std::net::SocketAddr, with_old: bool) -> String {
    let old = if with_old {
        "      - { name: old-route, prefix: /old, upstream: legacy }\n"
    } else {
        ""
    };
    let pool = if with_old {
        format!("  legacy: {{ servers: [\"{up}\"] }}\n")
    } else {
        String::new()
    };
    format!(
        "upstreams:\n  main: {{ servers: [\"{up}\"] }}\n{pool}hosts:\n  galion.app:\n    default: true\n    routes:\n      - {{ name: keep, prefix: /keep, upstream: main }}\n{old}"
    )
}

async fn metrics_text(gw: &Gateway) -> String {
    scrape(gw.admin_url("/metrics"), None).await
}

#[tokio::test]
async fn a_reload_removes_the_series_of_removed_routes_and_pools() {
    let up = fake_upstream("a").await;
    let gw = spawn_gateway(&two_routes(up.addr, true)).await;
    for path in ["/keep", "/old"] {
        let r = client().get(gw.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(gw.metric("gateway_config_generation").await, 1.0);
    let before = metrics_text(&gw).await;
    assert!(before.contains("route=\"old-route\""), "{before}");
    assert!(before.contains("upstream=\"legacy\""), "{before}");

    gw.write_config(&two_routes(up.addr, false));
    let gone = galion_tests::eventually(5, || async {
        let t = metrics_text(&gw).await;
        (!t.contains("route=\"old-route\"") && !t.contains("upstream=\"legacy\"")).then_some(t)
    })
    .await;
    let after = gone.unwrap_or_else(|| {
        panic!(
            "the removed route's and pool's series stayed after the reload:\n{}",
            gw.log()
        )
    });
    assert_eq!(gw.metric("gateway_config_generation").await, 2.0);
    // What is still configured keeps its counts.
    assert!(after.contains("route=\"keep\""), "{after}");
    assert!(after.contains("upstream=\"main\""), "{after}");
}
