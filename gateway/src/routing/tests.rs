#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Unit and property tests for host and path routing.

use std::path::Path;
use std::sync::Arc;

use http::Method;

use super::*;
use crate::config::load_str;
use crate::snapshot::Snapshot;

const CONF: &str = r#"
listen: { http: "127.0.0.1:0" }
upstreams:
  a: { servers: ["127.0.0.1:1"] }
hosts:
  galion.app:
    aliases: [localhost]
    default: true
    routes:
      - { name: root, prefix: /, upstream: a }
      - { name: api, prefix: /api, upstream: a }
      - { name: api-v1, prefix: /api/v1/, upstream: a }
      - { name: login, exact: /api/v1/login, methods: [POST], upstream: a }
      - { name: user-re, regex: '^/api/v1/users/[0-9]+$', upstream: a, rewrite: '/u' }
      - { name: user-re2, regex: '^/api/v1/users/', upstream: a }
      - { name: only-get, exact: /g, methods: [GET], upstream: a }
      - { name: strip, prefix: /s/, strip_prefix: true, upstream: a }
      - { name: m-get, exact: /m, methods: [GET], upstream: a }
      - { name: m-post, exact: /m, methods: [POST], upstream: a }
      - { name: p-get, prefix: /p/, methods: [GET], upstream: a }
      - { name: p-del, prefix: /p/, methods: [DELETE], upstream: a }
      - { name: c, exact: /c, methods: [POST], upstream: a, cors: { allow_origins: ["https://galion.app"] } }
  "*.galion.app":
    routes:
      - { name: wild, prefix: /, upstream: a }
  "*.x.galion.app":
    routes:
      - { name: deeper, prefix: /, upstream: a }
"#;

fn snap() -> Arc<Snapshot> {
    let l = load_str(CONF, Path::new("t.yaml")).unwrap();
    Arc::new(Snapshot::build(l.config, None))
}

/// The site a `Host` value picks, as the pipeline looks it up.
fn site<'s>(s: &'s Snapshot, host: Option<&str>) -> Option<&'s HostRoutes> {
    s.router.site(host.and_then(authority_name).as_deref())
}

fn route(s: &Snapshot, host: &str, path: &str, m: Method) -> String {
    let h = site(s, Some(host)).unwrap();
    match h.find(path, &m) {
        RouteMatch::Found(r) => r.name.to_string(),
        RouteMatch::MethodNotAllowed(allow) => format!("405 {}", allow.to_str().unwrap()),
        RouteMatch::NotFound => "404".into(),
    }
}

#[test]
fn path_precedence() {
    let s = snap();
    let g = |p: &str| route(&s, "galion.app", p, Method::GET);
    assert_eq!(g("/"), "root");
    assert_eq!(g("/apix"), "root");
    assert_eq!(g("/api"), "api");
    assert_eq!(g("/api/x"), "api");
    assert_eq!(g("/api/v1/x"), "api-v1");
    assert_eq!(g("/api/v1/users/42"), "user-re");
    assert_eq!(g("/api/v1/users/abc"), "user-re2");
    // An exact route with a POST-only method list: GET does not fall through
    // to the broader prefix (whose policies may be looser), it is a 405.
    assert_eq!(g("/api/v1/login"), "405 POST");
    assert_eq!(
        route(&s, "galion.app", "/api/v1/login", Method::POST),
        "login"
    );
    assert_eq!(route(&s, "galion.app", "/g", Method::POST), "405 GET, HEAD");
}

#[test]
fn methods_choose_among_routes_of_one_path_rule() {
    let s = snap();
    let r = |p: &str, m: Method| route(&s, "galion.app", p, m);
    assert_eq!(r("/m", Method::GET), "m-get");
    assert_eq!(r("/m", Method::POST), "m-post");
    assert_eq!(r("/m", Method::PUT), "405 GET, HEAD, POST");
    assert_eq!(r("/p/x", Method::GET), "p-get");
    assert_eq!(r("/p/x", Method::DELETE), "p-del");
    assert_eq!(r("/p/x", Method::PATCH), "405 GET, HEAD, DELETE");
}

#[test]
fn head_is_gets_sibling_and_cors_routes_take_preflights() {
    let s = snap();
    let r = |p: &str, m: Method| route(&s, "galion.app", p, m);
    assert_eq!(r("/g", Method::HEAD), "only-get");
    assert_eq!(r("/m", Method::HEAD), "m-get");
    assert_eq!(r("/c", Method::OPTIONS), "c");
    assert_eq!(r("/c", Method::GET), "405 POST, OPTIONS");
    assert_eq!(r("/api/v1/login", Method::HEAD), "405 POST");
}

#[test]
fn hosts_exact_alias_wildcard_default() {
    let s = snap();
    assert_eq!(
        site(&s, Some("galion.app")).unwrap().name.as_ref(),
        "galion.app"
    );
    assert_eq!(
        site(&s, Some("LOCALHOST:8080")).unwrap().name.as_ref(),
        "galion.app"
    );
    assert_eq!(
        site(&s, Some("a.galion.app")).unwrap().name.as_ref(),
        "*.galion.app"
    );
    assert_eq!(
        site(&s, Some("b.x.galion.app")).unwrap().name.as_ref(),
        "*.x.galion.app"
    );
    assert_eq!(
        site(&s, Some("other.test")).unwrap().name.as_ref(),
        "galion.app"
    );
    assert_eq!(site(&s, None).unwrap().name.as_ref(), "galion.app");
}

#[test]
fn rewrites() {
    let s = snap();
    let h = site(&s, Some("galion.app")).unwrap();
    let r = |p: &str| match h.find(p, &Method::GET) {
        RouteMatch::Found(r) => r.rewritten_path(p),
        _ => panic!("no route for {p}"),
    };
    assert_eq!(r("/s/abc"), Some("/abc".to_owned()));
    assert_eq!(r("/s/"), Some("/".to_owned()));
    assert_eq!(r("/api/v1/users/7"), Some("/u".to_owned()));
    assert_eq!(r("/api/x"), None);
}

#[test]
fn host_normalization() {
    assert_eq!(normalize_host("Galion.App:443"), "galion.app");
    assert_eq!(normalize_host("galion.app."), "galion.app");
    assert_eq!(normalize_host("[::1]:8080"), "[::1]");
    assert!(matches!(
        normalize_host("plain"),
        std::borrow::Cow::Borrowed(_)
    ));
    // The checked form keeps the same name, and refuses what is no authority.
    let name = |h| authority_name(h).map(|n| n.into_owned());
    assert_eq!(name("Galion.App:443").as_deref(), Some("galion.app"));
    assert_eq!(name("galion.app.").as_deref(), Some("galion.app"));
    assert_eq!(name("[::1]:8080").as_deref(), Some("[::1]"));
    assert_eq!(name("[FE80::1]").as_deref(), Some("[fe80::1]"));
    assert!(matches!(
        authority_name("plain:80"),
        Some(std::borrow::Cow::Borrowed("plain"))
    ));
    for bad in [
        "galion.studio:1@evil.example",
        ":80",
        ".a",
        "a..b",
        "a b",
        "[::1",
        "a:",
    ] {
        assert_eq!(name(bad), None, "{bad}");
    }
}

#[test]
fn unsafe_paths() {
    for p in [
        "/a/../b",
        "/a/%2e%2E/b",
        "/..",
        "/a/./b",
        "/a%2fb",
        "/a\\b",
        "/admin;x",
        "/pub/..;/admin",
        "/a;/b",
        "/a%3bb",
        "/a%3B/b",
        "x",
        "",
    ] {
        assert!(!path_is_safe(p), "{p}");
    }
    for p in [
        "/",
        "/a/b.c",
        "/a/...",
        "/.well-known/x",
        "/a%20b",
        "/v1.2/x",
        "/a%3",
        "/a%33b",
    ] {
        assert!(path_is_safe(p), "{p}");
    }
}

/// The name a `Host` value picks as first written (split at the port, strip a
/// trailing dot, lower-case): `authority_name` must keep the same one.
fn normalize_host(raw: &str) -> Cow<'_, str> {
    let no_port = if raw.starts_with('[') {
        // IPv6 literal: keep up to the closing bracket.
        raw.find(']').map_or(raw, |end| &raw[..=end])
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    let h = no_port.strip_suffix('.').unwrap_or(no_port);
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(h.to_ascii_lowercase())
    } else {
        Cow::Borrowed(h)
    }
}

/// `valid_authority` as first written (split, then check each part): the
/// one-pass version must agree with it.
fn authority_model(host: &str) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => ("v6", Some(port)),
                None => return false,
            },
        }
    } else {
        match host.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    let name_ok = !name.is_empty()
        && name.len() <= 253
        && !name.starts_with('.')
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok()
    });
    name_ok && port_ok
}

proptest::proptest! {
    #[test]
    fn authority_check_agrees_with_its_model(h in "[a-zA-F0-9_.:@/ \\[\\]-]{0,12}|[a-zA-Z.]{250,256}(:[0-9]{1,6})?") {
        proptest::prop_assert_eq!(valid_authority(&h), authority_model(&h), "{:?}", h);
        // The name it keeps is the one the router looks up.
        if let Some(name) = authority_name(&h) {
            proptest::prop_assert_eq!(name, normalize_host(&h), "{:?}", h);
        }
    }

    #[test]
    fn path_checker_never_panics(p in "\\PC*") {
        let _ = path_is_safe(&p);
        let _ = authority_name(&p);
    }

    #[test]
    fn safe_paths_have_no_dot_segments(segs in proptest::collection::vec("[a-z.%2eE]{0,4}", 0..6)) {
        let p = format!("/{}", segs.join("/"));
        if path_is_safe(&p) {
            for s in p.split('/') {
                let d = s.to_ascii_lowercase().replace("%2e", ".");
                proptest::prop_assert!(d != "." && d != "..");
            }
        }
    }
}

#[test]
fn authorities() {
    for ok in [
        "galion.app",
        "galion.app:8443",
        "GALION.app.",
        "127.0.0.1",
        "127.0.0.1:80",
        "[::1]",
        "[2001:db8::1]:443",
        "a_b.internal",
        "galion.app:65535",
        "galion.app:00080",
        "galion.app:0",
    ] {
        assert!(valid_authority(ok), "{ok}");
    }
    for bad in [
        "",
        "galion.studio:1@evil.example",
        "user@galion.app",
        "galion.app:",
        "galion.app:99999",
        "galion.app:65536",
        "galion.app:123456",
        "galion.app:80:80",
        "galion.app/x",
        "galion .app",
        "..",
        ".galion.app",
        "galion..app",
        "[::1",
        "[nothex]",
        "[::1]x",
        "galion.app:8a",
    ] {
        assert!(!valid_authority(bad), "{bad:?}");
    }
}
