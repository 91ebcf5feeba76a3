#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Unit tests for config parsing and validation.

use std::path::Path;
use std::time::Duration;

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
        ("prefix: /api/v1/users", "prefix: /api;v=1"),
        ("prefix: /api/v1/users", "exact: /a%3bb"),
        ("prefix: /api/v1/users", "regex: '(unclosed'"),
        ("prefix: /api/v1/users", "exact: /x\n        prefix: /y"),
        ("default: true", "default: maybe"),
        ("aliases: [localhost", "aliases: [\"bad host!\""),
        ("balance: round_robin", "host_header: \"a\\nb\""),
        ("balance: round_robin", "host_header: \"\""),
        ("balance: round_robin", "host_header: \"user@evil\""),
        ("balance: round_robin", "host_header: \"a b\""),
        (
            "upstream: users",
            "upstream: users\n        cache: { private: true }",
        ),
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
fn send_timeout_defaults_to_nginx_and_refuses_zero() {
    let l = load_str(GOOD, Path::new("gw.yaml")).unwrap();
    assert_eq!(l.config.server.send_timeout, Duration::from_secs(60));
    let text = GOOD.replace("listen:", "server: { send_timeout: 15s }\nlisten:");
    let l = load_str(&text, Path::new("gw.yaml")).unwrap();
    assert_eq!(l.config.server.send_timeout, Duration::from_secs(15));
    let text = GOOD.replace("listen:", "server:\n  send_timeout: 0s\nlisten:");
    assert_eq!(
        errors_of(&text),
        vec!["gw.yaml:3: server.send_timeout: must be more than 0s"]
    );
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

const PROTECTED: &str = r#"
listen:
  http: 127.0.0.1:0
store:
  state_dir: /tmp/galion-state-test
rate_limits:
  default: { rate: 50/s, burst: 100 }
jails:
  login:
    on:
      - { route: users, status: [401] }
      - { event: auth_rejected, reasons: [signature] }
    maxretry: 5
    findtime: 1m
    bantime: 1h
    bantime_increment: { factor: 2, maxtime: 7d }
    ignoreip: [10.0.0.0/8]
    action: drop
upstreams:
  users: { servers: [127.0.0.1:7002] }
hosts:
  galion.app:
    routes:
      - { name: users, prefix: /u, upstream: users, rate_limit: { rate: 10/min, burst: 5, key: "header:x-tenant" } }
      - { name: free, prefix: /f, upstream: users, rate_limit: off }
      - { name: rest, prefix: /, upstream: users }
"#;

#[test]
fn rate_limits_and_jails_load() {
    let c = load_str(PROTECTED, Path::new("gw.yaml")).unwrap().config;
    let routes = &c.hosts[0].routes;
    let own = routes[0].rate_limit.as_ref().unwrap();
    assert_eq!((own.count, own.burst), (10, 5));
    assert_eq!(own.period, std::time::Duration::from_secs(60));
    assert_eq!(&*own.id, "galion.app/users");
    assert_eq!(own.policy_header, "\"users\";q=10;w=60");
    assert!(matches!(own.key, LimitKey::Header(ref h) if h == "x-tenant"));
    assert!(routes[1].rate_limit.is_none());
    let default = routes[2].rate_limit.as_ref().unwrap();
    assert_eq!(&*default.id, "shared:50/1s:100:Ip");
    assert_eq!(&*default.name, "default");
    assert_eq!(c.jails.len(), 1);
    assert_eq!(c.jails[0].action, BanAction::Drop);
    assert_eq!(c.jails[0].on[1].event, Some(EventKind::AuthRejected));
    assert_eq!(
        c.store.state_dir.as_deref(),
        Some(Path::new("/tmp/galion-state-test"))
    );
}

#[test]
fn rate_limit_and_jail_errors_name_their_place() {
    let text = PROTECTED
        .replace("rate: 10/min, burst: 5", "rate: 10/fortnight, burst: 5")
        .replace("rate_limit: off", "rate_limit: { rate: 1/s, colour: red }")
        .replace("route: users, status", "route: nosuch, status")
        .replace("reasons: [signature]", "reasons: [sinature]")
        .replace("action: drop", "action: explode");
    let errs = errors_of(&text);
    let has = |prefix: &str| errs.iter().any(|e| e.starts_with(prefix));
    assert!(
        has("gw.yaml:24: hosts.\"galion.app\".routes[0].rate_limit.rate:"),
        "{errs:#?}"
    );
    assert!(
        has("gw.yaml:25: hosts.\"galion.app\".routes[1].rate_limit"),
        "{errs:#?}"
    );
    assert!(errs.iter().any(|e| e.contains("colour")), "{errs:#?}");
    assert!(
        has("gw.yaml:11: jails.login.on[0].route: no route is named \"nosuch\""),
        "{errs:#?}"
    );
    assert!(
        has("gw.yaml:12: jails.login.on[1].reasons[0]:"),
        "{errs:#?}"
    );
    assert!(has("gw.yaml:18: jails.login.action:"), "{errs:#?}");
    assert_eq!(errs.len(), 5, "{errs:#?}");
}

#[test]
fn trusted_proxies_forms_and_warnings() {
    let list = GOOD.replace("listen:", "trusted_proxies: [10.0.0.0/8]\nlisten:");
    let l = load_str(&list, Path::new("gw.yaml")).unwrap();
    assert_eq!(l.config.trusted_proxies.networks.len(), 1);
    assert!(l.config.trusted_proxies.cdn.is_empty());
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);

    let full = GOOD.replace(
        "listen:",
        "trusted_proxies: { networks: [10.0.0.0/8], cloudflare: builtin }\nlisten:",
    );
    let l = load_str(&full, Path::new("gw.yaml")).unwrap();
    assert_eq!(
        l.config.trusted_proxies.cdn.len(),
        crate::config::trust::CLOUDFLARE.len()
    );
    assert!(l
        .config
        .trusted_proxies
        .is_cdn("104.16.0.1".parse().unwrap()));
    assert!(!l.config.trusted_proxies.is_cdn("10.0.0.1".parse().unwrap()));

    // Trusting the internet lets every client choose its own address.
    let wide = GOOD.replace("listen:", "trusted_proxies: [0.0.0.0/0, \"::/0\"]\nlisten:");
    let l = load_str(&wide, Path::new("gw.yaml")).unwrap();
    assert_eq!(l.warnings.len(), 2, "{:?}", l.warnings);
    assert!(l.warnings[0]
        .message
        .contains("0.0.0.0/0 is trusted as a proxy"));

    let bad = GOOD.replace(
        "listen:",
        "trusted_proxies: { cloudflare: sometimes }\nlisten:",
    );
    let errs = errors_of(&bad);
    assert!(
        errs[0].ends_with(
            r#"trusted_proxies.cloudflare: "sometimes": use `builtin` or a list of CIDRs"#
        ),
        "{errs:?}"
    );
}

#[test]
fn route_actions_are_exactly_one_and_checked() {
    let route = |extra: &str| {
        GOOD.replace(
            "        upstream: users\n",
            &format!("        upstream: users\n      - {{ name: x, exact: /x, {extra} }}\n"),
        )
    };
    let l = load_str(&route("deny: 403"), Path::new("gw.yaml")).unwrap();
    let x = l.config.hosts[0]
        .routes
        .iter()
        .find(|r| r.name == "x")
        .unwrap();
    assert_eq!(x.action, crate::config::RouteAction::Deny { status: 403 });
    for (extra, msg) in [
        ("deny: 500", "deny takes 403, 404, 410 or true (404)"),
        (
            "upstream: users, deny: 404",
            "a route needs exactly one of upstream, deny, respond, redirect or static",
        ),
        (
            "methods: [GET]",
            "a route needs exactly one of upstream, deny, respond, redirect or static",
        ),
        (
            "redirect: { to: '//evil.example' }",
            "redirect.to must be an absolute http(s) URL or a path starting with /",
        ),
        (
            "redirect: { to: /x, status: 200 }",
            "redirect.status must be 301, 302, 303, 307 or 308",
        ),
        (
            "respond: { status: 302 }",
            "respond.status must be 200-299 or 400-599 (use redirect: for 3xx)",
        ),
        (
            "respond: { body: x }, rewrite: /y",
            "rewrite/strip_prefix needs `upstream:` (this route answers at the gateway)",
        ),
    ] {
        let errs = errors_of(&route(extra));
        assert!(errs.iter().any(|e| e.ends_with(msg)), "{extra}: {errs:?}");
    }
}

#[test]
fn static_routes_are_checked_with_their_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let route = |extra: &str| {
        GOOD.replace(
            "        upstream: users\n",
            &format!("        upstream: users\n      - {{ name: x, prefix: /, {extra} }}\n"),
        )
    };
    let root = dir.path().display();
    let l = load_str(
        &route(&format!(
            "static: {{ root: '{root}', spa_fallback: true, \
             cache_control: [{{ pattern: '/assets/*', value: 'max-age=60' }}] }}"
        )),
        Path::new("gw.yaml"),
    )
    .unwrap();
    let x = l.config.hosts[0]
        .routes
        .iter()
        .find(|r| r.name == "x")
        .unwrap();
    let crate::config::RouteAction::Static(site) = &x.action else {
        panic!("not static: {:?}", x.action);
    };
    assert_eq!(site.index, "index.html");
    assert_eq!(site.fallback.as_deref(), Some("index.html"));
    assert!(site.precompressed && !site.outside_symlinks);
    assert_eq!(site.cache_control[0].pattern, "/assets/*");
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);

    // A root that is not there yet (the first deploy may come after the
    // gateway) is a warning; one that is not a directory is an error.
    let missing = dir.path().join("nope").display().to_string();
    let l = load_str(
        &route(&format!("static: {{ root: '{missing}' }}")),
        Path::new("gw.yaml"),
    )
    .unwrap();
    assert!(l
        .warnings
        .iter()
        .any(|w| w.message.contains("does not exist")));
    let file = file.display();
    for (extra, msg) in [
        (
            format!("static: {{ root: '{file}' }}"),
            "is not a directory".to_owned(),
        ),
        (
            format!("static: {{ root: '{root}', index: .env }}"),
            "static.index: index must be a file name".to_owned(),
        ),
        (
            format!("static: {{ root: '{root}', spa_fallback: '../x.html' }}"),
            "static.spa_fallback: spa_fallback must be".to_owned(),
        ),
        (
            format!("static: {{ root: '{root}', cache_control: [{{ pattern: '*', value: '' }}] }}"),
            "static.cache_control[0].value: not a valid Cache-Control value".to_owned(),
        ),
        (
            format!("static: {{ root: '{root}', listing: true }}"),
            "static.listing: unknown field `listing`".to_owned(),
        ),
        (
            format!("static: {{ root: '{root}' }}, compress: {{ level: 42 }}"),
            "compress.level".to_owned(),
        ),
        (
            format!("static: {{ root: '{root}' }}, upstream: users"),
            "a route needs exactly one of upstream, deny, respond, redirect or static".to_owned(),
        ),
    ] {
        let errs = errors_of(&route(&extra));
        assert!(
            errs.iter()
                .any(|e| e.contains(&msg) && e.starts_with("gw.yaml:")),
            "{extra}: {errs:?}"
        );
    }
}

#[test]
fn slow_client_limits() {
    let l = load_str(GOOD, Path::new("gw.yaml")).unwrap();
    assert_eq!(l.config.server.header_timeout, Duration::from_secs(30));
    assert_eq!(l.config.server.min_body_rate, 500);
    let text = GOOD.replace(
        "listen:",
        "server: { header_timeout: 5s, min_body_rate: 1KiB }\nlisten:",
    );
    let l = load_str(&text, Path::new("gw.yaml")).unwrap();
    assert_eq!(l.config.server.header_timeout, Duration::from_secs(5));
    assert_eq!(l.config.server.min_body_rate, 1024);
    let text = GOOD.replace("listen:", "server:\n  header_timeout: 0s\nlisten:");
    let errs = errors_of(&text);
    assert!(
        errs[0].ends_with("server.header_timeout: must be between 1ms and 1h"),
        "{errs:?}"
    );
}

const ACME: &str = r#"
listen:
  http: 127.0.0.1:0
  https: 127.0.0.1:0
store: { state_dir: /var/lib/galion-gateway }
tls:
  acme:
    email: ops@galion.app
    hosts: [galion.app]
upstreams:
  web: { servers: [127.0.0.1:3000] }
hosts:
  galion.app:
    aliases: [www.galion.app]
    routes:
      - { name: web, prefix: /, upstream: web }
  "*.galion.studio":
    routes:
      - { name: studio, prefix: /, upstream: web }
"#;

#[test]
fn acme_defaults_to_lets_encrypt_http01_with_the_aliases() {
    let l = load_str(ACME, Path::new("gw.yaml")).unwrap();
    let a = l.config.tls.acme.expect("acme");
    assert_eq!(a.directory, super::tls::LETS_ENCRYPT);
    assert_eq!(a.challenge, AcmeChallenge::Http01);
    assert_eq!(a.contact, vec!["mailto:ops@galion.app"]);
    assert_eq!(a.certs, vec![vec!["galion.app", "www.galion.app"]]);
    assert_eq!(a.dir, Path::new("/var/lib/galion-gateway/acme"));
    let staging = load_str(
        &ACME.replace("email: ops@galion.app", "staging: true"),
        Path::new("gw.yaml"),
    )
    .unwrap();
    assert_eq!(
        staging.config.tls.acme.unwrap().directory,
        super::tls::LETS_ENCRYPT_STAGING
    );
}

#[test]
fn a_certificate_without_hosts_is_refused_even_before_its_files_exist() {
    // Found by the config_yaml fuzz target: the missing files made a
    // placeholder for no name at all, which panicked.
    for hosts in ["[]", "", "~"] {
        let text = GOOD.replace(
            "upstreams:",
            &format!(
                "tls:\n  certificates:\n    - hosts: {hosts}\n      cert: /nonexistent/galion/x.pem\n      key: /nonexistent/galion/x.key\nupstreams:"
            ),
        );
        let errs = errors_of(&text);
        assert!(
            errs.iter()
                .any(|e| e.contains("tls.certificates[0].hosts: list the host names")),
            "{hosts:?}: {errs:#?}"
        );
    }
}

#[test]
fn acme_in_a_cluster_needs_a_seal_key() {
    let cluster = |redis: &str| {
        ACME.replace(
            "store: { state_dir: /var/lib/galion-gateway }",
            &format!("store:\n  state_dir: /var/lib/galion-gateway\n  redis: {{ url: \"redis://127.0.0.1:6379/\"{redis} }}"),
        )
    };
    // Without one: refused at store.redis, with its line, saying what to set.
    let errs = errors_of(&cluster(""));
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].starts_with("gw.yaml:7:"), "{errs:#?}");
    assert!(errs[0].contains("store.redis: with tls.acme"), "{errs:#?}");
    assert!(
        errs[0].contains("seal_key_env or seal_key_file"),
        "{errs:#?}"
    );

    // A key that is set but unusable has its own error, and only that.
    let unset = errors_of(&cluster(", seal_key_env: GALION_SURELY_UNSET_SEAL_KEY"));
    assert_eq!(unset.len(), 1, "{unset:#?}");
    assert!(
        unset[0].contains("store.redis.seal_key_env: environment variable GALION_SURELY_UNSET_SEAL_KEY is not set"),
        "{unset:#?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short");
    std::fs::write(&short, "only-31-bytes-of-secret-in-here").unwrap();
    std::fs::set_permissions(&short, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let too_short = errors_of(&cluster(&format!(", seal_key_file: {}", short.display())));
    assert!(
        too_short
            .join("\n")
            .contains("store.redis.seal_key_file: the seal key must be at least 32 bytes"),
        "{too_short:#?}"
    );
    let open = dir.path().join("open");
    std::fs::write(&open, "a-secret-of-more-than-thirty-two-bytes").unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let readable = errors_of(&cluster(&format!(", seal_key_file: {}", open.display())));
    assert!(readable.join("\n").contains("chmod 600"), "{readable:#?}");

    // With one: loaded, and the same secret gives the same key on every instance.
    let good = dir.path().join("good");
    std::fs::write(&good, "a-secret-of-more-than-thirty-two-bytes\n").unwrap();
    std::fs::set_permissions(&good, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let text = cluster(&format!(", seal_key_file: {}", good.display()));
    let a = load_str(&text, Path::new("gw.yaml")).unwrap();
    let b = load_str(&text, Path::new("gw.yaml")).unwrap();
    let key = a.config.store.redis.as_ref().unwrap().seal_key.clone();
    assert!(key.is_some());
    assert_eq!(key, b.config.store.redis.unwrap().seal_key);
    // Not shown where the configuration is printed.
    assert!(!format!("{:?}", a.config.store).contains("thirty-two"));
    // Cluster mode without ACME needs none.
    let no_acme = GOOD.replace(
        "listen:",
        "store: { redis: { url: \"redis://127.0.0.1:6379/\" } }\nlisten:",
    );
    assert!(load_str(&no_acme, Path::new("gw.yaml")).is_ok());
}

#[test]
fn acme_mistakes_are_located() {
    let errs = errors_of(
        &ACME
            .replace(
                "hosts: [galion.app]",
                "hosts: [galion.app, nowhere.app, \"*.galion.studio\"]",
            )
            .replace(
                "email: ops@galion.app",
                "email: not-an-address\n    challenge: dns-01",
            ),
    );
    let all = errs.join("\n");
    assert!(all.contains("tls.acme.email: `not-an-address`"), "{all}");
    assert!(all.contains("tls.acme.challenge: `dns-01`"), "{all}");
    assert!(
        all.contains("tls.acme.hosts[1]: `nowhere.app` is not a key of hosts"),
        "{all}"
    );
    assert!(
        all.contains("tls.acme.hosts[2]: `*.galion.studio`: a wildcard"),
        "{all}"
    );
    assert!(errs.iter().all(|e| e.starts_with("gw.yaml:")), "{all}");

    let plain_http = errors_of(&ACME.replace("  https: 127.0.0.1:0\n", ""));
    assert!(
        plain_http.join("\n").contains("HTTPS listener"),
        "{plain_http:#?}"
    );
    let no_http = errors_of(&ACME.replace("  http: 127.0.0.1:0\n", "").replace(
        "hosts: [galion.app]",
        "hosts: [galion.app]\n    challenge: http-01",
    ));
    assert!(
        no_http.join("\n").contains("set listen.http"),
        "{no_http:#?}"
    );
    // Without an HTTP listener the default is TLS-ALPN-01.
    let l = load_str(
        &ACME.replace("  http: 127.0.0.1:0\n", ""),
        Path::new("gw.yaml"),
    )
    .unwrap();
    assert_eq!(
        l.config.tls.acme.unwrap().challenge,
        AcmeChallenge::TlsAlpn01
    );
    let http_dir =
        errors_of(&ACME.replace("email: ops@galion.app", "directory: http://ca.example/dir"));
    assert!(
        http_dir.join("\n").contains("https:// URL"),
        "{http_dir:#?}"
    );
}
