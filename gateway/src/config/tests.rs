#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Unit tests for config parsing and validation.

use std::path::Path;

use super::*;

const GOOD: &str = r#"
listen:
  http: 127.0.0.1:0
upstreams:
  users:
    servers:
      - 127.0.0.1:7002
      - { addr: 127.0.0.1:7012, weight: 3 }
    balance: round_robin
hosts:
  galion.app:
    aliases: [localhost, "*.galion.app"]
    default: true
    routes:
      - name: users
        prefix: /api/v1/users
        strip_prefix: true
        upstream: users
"#;

fn errors_of(text: &str) -> Vec<String> {
    match load_str(text, Path::new("gw.yaml")) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn good_config_loads() {
    let l = load_str(GOOD, Path::new("gw.yaml")).unwrap();
    assert_eq!(l.config.upstreams["users"].servers.len(), 2);
    assert_eq!(l.config.upstreams["users"].servers[1].weight, 3);
    assert_eq!(l.config.hosts[0].aliases, vec!["localhost", "*.galion.app"]);
    assert_eq!(l.config.hosts[0].routes[0].rewrite, Rewrite::StripPrefix);
    assert!(l.warnings.is_empty());
}

#[test]
fn reports_all_errors_with_lines() {
    let text = GOOD
        .replace("upstream: users", "upstream: usres")
        .replace("balance: round_robin", "balance: random")
        .replace("http: 127.0.0.1:0", "http: 127.0.0.1:notaport");
    let errs = errors_of(&text);
    assert_eq!(errs.len(), 3, "{errs:#?}");
    assert!(errs[0].starts_with("gw.yaml:3: listen.http:"), "{errs:#?}");
    assert!(
        errs[1].starts_with("gw.yaml:9: upstreams.users.balance:"),
        "{errs:#?}"
    );
    assert!(
        errs[2].starts_with(
            r#"gw.yaml:18: hosts."galion.app".routes[0].upstream: unknown upstream "usres""#
        ),
        "{errs:#?}"
    );
}

#[test]
fn unknown_keys_are_located() {
    let text = GOOD
        .replace(
            "strip_prefix: true",
            "strip_prefix: true\n        colour: blue",
        )
        .replace(
            "    balance: round_robin",
            "    balance: round_robin\n    speed: 3",
        );
    let errs = errors_of(&text);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(
        errs[0].starts_with("gw.yaml:10: upstreams.users.speed: unknown field `speed`"),
        "{errs:#?}"
    );
    assert!(
        errs[1].starts_with(
            r#"gw.yaml:19: hosts."galion.app".routes[0].colour: unknown field `colour`"#
        ),
        "{errs:#?}"
    );
}

#[test]
fn unknown_upstream_names_route_line() {
    let text = GOOD.replace("upstream: users", "upstream: usres");
    let errs = errors_of(&text);
    assert_eq!(
        errs,
        vec![r#"gw.yaml:18: hosts."galion.app".routes[0].upstream: unknown upstream "usres""#]
    );
}

#[test]
fn bad_values_are_refused() {
    let cases = [
        ("127.0.0.1:7002\n", "nonsense:99999999\n"),
        ("prefix: /api/v1/users", "prefix: api"),
        ("prefix: /api/v1/users", "regex: '(unclosed'"),
        ("prefix: /api/v1/users", "exact: /x\n        prefix: /y"),
        ("default: true", "default: maybe"),
        ("aliases: [localhost", "aliases: [\"bad host!\""),
    ];
    for (from, to) in cases {
        let text = GOOD.replacen(from, to, 1);
        assert!(
            load_str(&text, Path::new("gw.yaml")).is_err(),
            "accepted: {to}"
        );
    }
}

#[test]
fn shadowed_route_warns() {
    let text = GOOD.replace(
        "        upstream: users\n",
        "        upstream: users\n      - name: again\n        prefix: /api/v1/users\n        methods: [GET]\n        upstream: users\n",
    );
    let l = load_str(&text, Path::new("gw.yaml")).unwrap();
    assert_eq!(l.warnings.len(), 1);
    assert!(l.warnings[0].message.contains("shadowed"));
}

#[test]
fn yaml_syntax_error_has_line() {
    let errs = errors_of("listen:\n  http: [\n");
    assert!(errs[0].starts_with("gw.yaml:"), "{errs:?}");
}

#[test]
fn duplicate_hosts_and_defaults_refused() {
    let text = format!("{GOOD}  other.app:\n    aliases: [localhost]\n    default: true\n");
    let errs = errors_of(&text);
    assert_eq!(errs.len(), 2, "{errs:#?}");
}
