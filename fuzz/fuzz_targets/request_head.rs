//! Any bytes as a client's request head on the fast path (the pipeline's
//! routing, client IP, request id; forwarding headers): it must be proxied,
//! answered, left to pingora or wait for more bytes — never a panic. A prepared upstream head must carry
//! no client-sent identity header, and from an untrusted peer exactly one
//! `X-Forwarded-For` and one `X-Real-IP`, both the peer's address.
//!
//! And the two transports agree: a head the fast path takes is also built
//! as pingora's `RequestHeader` (as pingora's HTTP/1 parser builds it) and
//! run through pingora's side (`proxy::view`, the pipeline,
//! `proxy::decorate::upstream_head`): the same answer status, or the same
//! upstream request line and fields.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use galion_gateway::fast::request::{decide, Decision};
use galion_gateway::pipeline::{self, Env, RequestCtx, Step};
use galion_gateway::proxy;
use galion_gateway::shield::Shield;
use galion_gateway::snapshot::Snapshot;
use libfuzzer_sys::fuzz_target;
use pingora::http::RequestHeader;

const CONFIG: &str = r#"
listen:
  http: 127.0.0.1:0
trusted_proxies: [127.0.0.1, 10.0.0.0/8]
upstreams:
  auth: { servers: [127.0.0.1:7001] }
  users: { servers: [127.0.0.1:7002, { addr: 127.0.0.1:7012, weight: 3 }], balance: consistent_hash }
hosts:
  galion.app:
    aliases: [localhost, "*.galion.app"]
    default: true
    routes:
      - { name: login, exact: /api/v1/auth/login, methods: [POST, GET], upstream: auth, rewrite: /login }
      - { name: users, prefix: /api/v1/users, strip_prefix: true, upstream: users }
      - { name: items, regex: '^/items/([0-9]+)$', upstream: users, rewrite: '/item/$1' }
      - name: tagged
        prefix: /tagged
        upstream: users
        request_headers: { set: { x-env: fuzz }, add: { x-tag: a }, remove: [x-debug] }
      - { name: root, prefix: /, upstream: auth }
  "*.studio.galion.app":
    routes:
      - { name: studio, prefix: /, upstream: users }
"#;

/// The hop-by-hop fields pingora-proxy removes from an HTTP/1 upstream
/// request itself, after the phases (`proxy_common::strip_standard_hop_by_hop_headers`).
const HOP_BY_HOP: [&str; 10] = [
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "connection",
    "upgrade",
    "http2-settings",
];

/// Not in `trusted_proxies`.
const UNTRUSTED_PEER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);

struct Fixture {
    snap: Arc<Snapshot>,
    shield: Shield,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let loaded = match galion_gateway::config::load_str(CONFIG, Path::new("fuzz.yaml")) {
            Ok(l) => l,
            Err(e) => panic!("the fuzz fixture's config is invalid: {:?}", e.0),
        };
        Fixture {
            snap: Arc::new(Snapshot::build(loaded.config, None)),
            shield: Shield::new(1024),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, head)) = data.split_first() else {
        return;
    };
    let f = fixture();
    // The first byte picks the peer (trusted proxy or not) and the scheme.
    let trusted = first & 1 == 0;
    let peer = if trusted {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        IpAddr::V4(UNTRUSTED_PEER)
    };
    let env = Env {
        snap: &f.snap,
        https: first & 2 != 0,
        shield: &f.shield,
        tls: if first & 2 != 0 { "TLSv1.3" } else { "" },
    };
    let mut out = Vec::new();
    // The fixture's routes have no policy that waits (no Redis, no JWKS).
    let decision = futures::executor::block_on(decide(head, &env, Some(peer), &mut out));
    transports_agree(head, &env, peer, &decision, &out);
    if let Decision::Answer(local) = &decision {
        assert!(local.head.head_len <= head.len());
        assert!(local.reply.status >= 300, "a local answer is not a success");
    }
    if let Decision::Forward(plan) = decision {
        let plan = plan.head;
        assert!(plan.head_len <= head.len());
        assert!(out.ends_with(b"\r\n\r\n"), "upstream head not terminated");
        // What the fast path routes on is a plain authority (no userinfo, no
        // bad port), as pingora's path demands.
        let host = std::str::from_utf8(&head[plan.host.clone()]).unwrap_or("");
        assert!(
            galion_gateway::routing::valid_authority(host),
            "fast path took Host {host:?}"
        );
        let mut client_ip_lines = 0;
        for line in out.split(|&b| b == b'\n').skip(1) {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let (name, value) = match line.iter().position(|&b| b == b':') {
                Some(i) => (&line[..i], line[i + 1..].trim_ascii()),
                None => continue,
            };
            for identity in ["x-user-id", "x-user-email", "x-user-role"] {
                assert!(
                    !name.eq_ignore_ascii_case(identity.as_bytes()),
                    "client identity header forwarded: {identity}"
                );
            }
            // An untrusted peer cannot choose the client IP the upstream sees.
            if !trusted
                && (name.eq_ignore_ascii_case(b"x-forwarded-for")
                    || name.eq_ignore_ascii_case(b"x-real-ip"))
            {
                assert_eq!(
                    value,
                    UNTRUSTED_PEER.to_string().as_bytes(),
                    "spoofed client IP upstream"
                );
                client_ip_lines += 1;
            }
        }
        if !trusted {
            assert_eq!(
                client_ip_lines, 2,
                "X-Forwarded-For and X-Real-IP, once each"
            );
        }
    }
});

/// What pingora's transport does with the same head, where the fast path
/// took it (answered, dropped or forwarded), compared with the fast path.
fn transports_agree(head: &[u8], env: &Env<'_>, peer: IpAddr, decision: &Decision, out: &[u8]) {
    if matches!(decision, Decision::Partial | Decision::Delegate) {
        return;
    }
    let Some(req) = pingora_request(head) else {
        panic!("the fast path took a head pingora's parser refuses");
    };
    let view = proxy::view(&req, Some(peer));
    let mut ctx = RequestCtx::new(env.snap.clone());
    let step = match pipeline::route(env, &view, &mut ctx) {
        Step::Route(route) => {
            match futures::executor::block_on(pipeline::policies(env, &view, &mut ctx, &route)) {
                Some(reply) => Step::Answer(reply),
                None => Step::Route(route),
            }
        }
        other => other,
    };
    match (decision, step) {
        (Decision::Answer(local), Step::Answer(reply)) => {
            assert_eq!(local.reply.status, reply.status, "different answers");
            assert_eq!(
                local.reply.fields.len(),
                reply.fields.len(),
                "different answer fields"
            );
        }
        (Decision::Drop, Step::Drop) => {}
        (Decision::Forward(plan), Step::Route(route)) => {
            assert_eq!(plan.route.name, route.name, "different routes");
            let mut up = req.clone();
            if proxy::decorate::upstream_head(&mut up, &ctx, env.https).is_err() {
                panic!("pingora's side failed on a head the fast path forwarded");
            }
            // What pingora-proxy strips from every HTTP/1 upstream request
            // after the gateway's phases (its `strip_standard_hop_by_hop_headers`).
            for hop in HOP_BY_HOP {
                up.remove_header(hop);
            }
            let pq = up.uri.path_and_query().map_or("/", |p| p.as_str());
            let line = format!("{} {} HTTP/1.1", up.method, pq);
            let fast_line = out.split(|&b| b == b'\r').next().unwrap_or(b"");
            assert_eq!(
                fast_line,
                line.as_bytes(),
                "different upstream request lines"
            );
            let mut pingora: Vec<(String, Vec<u8>)> = up
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
                .collect();
            let mut fast: Vec<(String, Vec<u8>)> = out
                .split(|&b| b == b'\n')
                .skip(1)
                .filter_map(|l| {
                    let l = l.strip_suffix(b"\r").unwrap_or(l);
                    let i = l.iter().position(|&b| b == b':')?;
                    let name = std::str::from_utf8(&l[..i]).ok()?.to_ascii_lowercase();
                    Some((name, l[i + 1..].trim_ascii().to_vec()))
                })
                .collect();
            // Request ids are generated per request when the client's is absent or invalid.
            for fields in [&mut pingora, &mut fast] {
                for (k, v) in fields.iter_mut() {
                    if k == "x-request-id" {
                        v.clear();
                    }
                }
                fields.sort();
            }
            assert_eq!(fast, pingora, "different upstream fields");
        }
        (d, s) => panic!(
            "different decisions: fast path {}, pingora {}",
            match d {
                Decision::Answer(_) => "answer",
                Decision::Drop => "drop",
                Decision::Forward(_) => "forward",
                _ => "other",
            },
            match s {
                Step::Answer(_) => "answer",
                Step::Drop => "drop",
                Step::Route(_) => "forward",
                Step::Acme => "acme",
            }
        ),
    }
}

/// The head as pingora's HTTP/1 server builds it (`RequestHeader::build`
/// from httparse's parts, every field appended).
fn pingora_request(head: &[u8]) -> Option<RequestHeader> {
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(head).ok()?;
    let mut r =
        RequestHeader::build(req.method?, req.path?.as_bytes(), Some(req.headers.len())).ok()?;
    r.set_version(http::Version::HTTP_11);
    for h in req.headers.iter() {
        let name = http::HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = http::HeaderValue::from_bytes(h.value).ok()?;
        r.append_header(name, value).ok()?;
    }
    Some(r)
}
