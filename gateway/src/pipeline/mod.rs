//! The request pipeline: every per-request decision, made once, for every
//! transport.
//!
//! A transport (the fast path's HTTP/1 loop, pingora's phases; a future
//! HTTP/3 listener) parses a request its own way and hands the pipeline a
//! [`Request`] view. The pipeline answers with data: [`Step::Answer`] (a
//! [`Reply`] the transport writes), [`Step::Drop`] (close unanswered), or a
//! route to forward to, with the header [`Edit`](crate::fields::Edit)s of
//! [`edits`]. No pingora type crosses this module's boundary.
//!
//! The decisions come in two stages, so a transport can still hand a request
//! to another one after the first: [`route`] (client identity, bans, request
//! sanity, host and route: nothing is counted) and [`policies`] (rate limits,
//! CORS preflight, access control, body limit, the route's own answer:
//! counters move); a `static` route is then answered by [`statics::serve`].
//! [`finish`] ends every request (metrics, access log, jails).

pub mod cached;
mod ctx;
pub mod edits;
mod finish;
mod policy;
pub mod reply;
pub mod statics;

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use http::{Method, Version};

pub use ctx::{Attempts, Client, LocalReply, LogFields, RequestCtx, Routed};
pub use finish::{attempt_answered, attempt_failed, finish, is_idempotent, pick_server, Failure};
pub use policy::policies;
pub use reply::Reply;

use crate::config::BanAction;
use crate::fields::Fields;
use crate::routing::{path_is_safe, Action, Route, RouteMatch};
use crate::shield::Shield;
use crate::snapshot::Snapshot;

pub const ACME_PREFIX: &str = "/.well-known/acme-challenge/";

/// What the pipeline needs of the listener.
pub struct Env<'a> {
    pub snap: &'a Arc<Snapshot>,
    pub shield: &'a Shield,
    /// The listener terminates TLS.
    pub https: bool,
    /// The connection's TLS version (`TLSv1.3`, `TLSv1.2`), empty on plain
    /// HTTP: see [`tls_name`].
    pub tls: &'static str,
}

/// The TLS version name the access log writes, from the TLS library's own
/// spelling (`TLSv1_3`, `TLSv1.3`, ...).
pub fn tls_name(version: &str) -> &'static str {
    if version.contains("1_3") || version.contains("1.3") {
        "TLSv1.3"
    } else if version.contains("1_2") || version.contains("1.2") {
        "TLSv1.2"
    } else if version.is_empty() {
        ""
    } else {
        "TLS"
    }
}

/// Request facts only the access log needs, taken once (when it is on) from
/// the request view: protocol, redacted query, user agent, referer, TLS.
fn log_fields<F: Fields>(env: &Env<'_>, req: &Request<'_, F>) -> Box<ctx::LogFields> {
    // Bounded: a client must not make the log line (or this copy) large.
    const MAX: usize = 512;
    let text = |v: Option<&[u8]>| -> String {
        let v = v.unwrap_or_default();
        String::from_utf8_lossy(&v[..v.len().min(MAX)]).into_owned()
    };
    let query = req
        .target
        .split_once('?')
        .map(|(_, q)| redact_query(q, &env.snap.config.access_log.redact_query))
        .unwrap_or_default();
    Box::new(ctx::LogFields {
        protocol: match req.version {
            Version::HTTP_10 => "HTTP/1.0",
            Version::HTTP_11 => "HTTP/1.1",
            Version::HTTP_2 => "HTTP/2.0",
            Version::HTTP_3 => "HTTP/3.0",
            _ => "HTTP",
        },
        query,
        user_agent: text(req.fields.get("user-agent")),
        referer: text(req.fields.get("referer")),
        tls: env.tls,
    })
}

/// The query with the values of the named parameters (case-insensitive,
/// percent-encoded names decoded) replaced by `REDACTED`; bounded in length.
pub fn redact_query(query: &str, names: &[String]) -> String {
    const MAX: usize = 2048;
    let mut out = String::with_capacity(query.len().min(MAX));
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decoded = percent_decode(name).to_ascii_lowercase();
        if !value.is_empty() && names.contains(&decoded) {
            out.push_str(name);
            out.push_str("=REDACTED");
        } else {
            out.push_str(pair);
        }
        if out.len() > MAX {
            let mut end = MAX;
            while !out.is_char_boundary(end) {
                end -= 1;
            }
            out.truncate(end);
            out.push_str("...");
            break;
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A request as every transport can describe it.
pub struct Request<'a, F: Fields> {
    pub method: &'a Method,
    pub version: Version,
    /// The path and query as the client sent them (origin form).
    pub target: &'a str,
    /// The path of `target`.
    pub path: &'a str,
    /// `Host`, or the URI's authority (HTTP/2).
    pub host: Option<&'a str>,
    pub fields: &'a F,
    pub peer: Option<IpAddr>,
    /// Size of the head's fields as the client sent them (approximately).
    pub head_size: u64,
}

/// What to do with a request.
pub enum Step {
    /// Go on with this route (to [`policies`], then forward).
    Route(Arc<Route>),
    Answer(Reply),
    /// Close the connection without an answer (`action: drop` bans).
    Drop,
    /// An ACME HTTP-01 challenge from the webroot: [`acme`] answers it.
    Acme,
}

/// Requests that different HTTP parsers could frame differently (request
/// smuggling): both `Content-Length` and `Transfer-Encoding`, or several
/// `Content-Length`s.
pub fn is_ambiguous(f: &impl Fields) -> bool {
    let cl = f.all("content-length").count();
    cl > 1 || (cl == 1 && f.has("transfer-encoding"))
}

/// The first stage: who the client is, whether it may be here at all, and
/// which route the request is for. Counts nothing, so a transport may still
/// hand the request to another one afterwards.
pub fn route<F: Fields>(env: &Env<'_>, req: &Request<'_, F>, ctx: &mut RequestCtx) -> Step {
    let snap = env.snap;
    if snap.config.access_log.enabled {
        ctx.log = Some(log_fields(env, req));
    }
    let rid = crate::request_id::from_bytes(req.fields.get("x-request-id"));
    ctx.request_id = Some(rid.clone());
    let rid = Some(&rid);
    if let Some(peer) = req.peer {
        if ctx
            .identify(peer, &snap.trusted_proxies, req.fields)
            .is_err()
        {
            return Step::Answer(Reply::error(LocalReply::BadForwarding, rid));
        }
    }
    if let Some(ip) = ctx.client.chargeable() {
        if let Some(ban) = env.shield.bans.check(ip, snap.config.limits.ipv6_prefix) {
            if ban.action == BanAction::Drop && !ctx.client.peer_trusted {
                // Closed without an answer (the connection filter refuses new
                // connections; this catches ones opened before the ban).
                ctx.local = Some(LocalReply::Dropped);
                return Step::Drop;
            }
            return Step::Answer(Reply::error(LocalReply::Banned, rid));
        }
    }
    let bad = || Step::Answer(Reply::error(LocalReply::BadRequest, rid));
    if !path_is_safe(req.path) || is_ambiguous(req.fields) {
        return bad();
    }
    if req.host.is_none() && req.version == Version::HTTP_11 {
        // RFC 9112 §3.2: an HTTP/1.1 request without Host is invalid (as nginx).
        return bad();
    }
    let name = match req.host.map(crate::routing::authority_name) {
        Some(None) => return bad(),
        Some(Some(name)) => Some(name),
        None => None,
    };
    let Some(host_routes) = snap.router.site(name.as_deref()) else {
        return Step::Answer(Reply::error(LocalReply::UnknownHost, rid));
    };
    if !env.https
        && req.path.starts_with(ACME_PREFIX)
        && (snap.config.tls.acme_webroot.is_some() || snap.config.tls.acme.is_some())
    {
        return Step::Acme;
    }
    if req.head_size > snap.config.limits.max_header_bytes {
        return Step::Answer(Reply::error(LocalReply::HeadersTooLarge, rid));
    }
    ctx.security = Some(host_routes.security.clone());
    let routed = crate::routing::normalize_path(req.path);
    let route = match host_routes.find(&routed, req.method) {
        RouteMatch::Found(route) => route.clone(),
        RouteMatch::MethodNotAllowed(allow) => {
            ctx.local = Some(LocalReply::MethodNotAllowed);
            return Step::Answer(Reply::method_not_allowed(Some(allow), rid));
        }
        RouteMatch::NotFound => return Step::Answer(Reply::error(LocalReply::NoRoute, rid)),
    };
    ctx.routed = Some(Routed {
        route: route.clone(),
        normalized_path: match routed {
            Cow::Owned(p) => Some(p),
            Cow::Borrowed(_) => None,
        },
    });
    if let Action::Deny { status } = route.action {
        // As if nothing were there: before any policy or redirect.
        return Step::Answer(Reply::deny(status, rid));
    }
    if !env.https && !route.allow_plain && snap.config.tls.redirect_http {
        if let Some(https) = snap.config.listen.https {
            return Step::Answer(https_redirect(
                name.as_deref(),
                req.target,
                https.port(),
                rid,
            ));
        }
    }
    if *req.method == Method::OPTIONS
        && !route.lists_method(req.method)
        && !crate::cors::is_preflight(req.method, req.fields)
    {
        // A CORS route takes OPTIONS for its preflights only.
        let allow = host_routes.allow_of(&route);
        return Step::Answer(Reply::method_not_allowed(allow, rid));
    }
    Step::Route(route)
}

/// 308 to the same host (`name`, as `routing::authority_name` gave it), path
/// and query over HTTPS.
fn https_redirect(
    name: Option<&str>,
    target: &str,
    port: u16,
    rid: Option<&http::HeaderValue>,
) -> Reply {
    let Some(host) = name else {
        return Reply::json_error(
            LocalReply::BadRequest,
            400,
            ("bad_request", "a Host header is required"),
            rid,
            &[],
        );
    };
    let location = if port == 443 {
        format!("https://{host}{target}")
    } else {
        format!("https://{host}:{port}{target}")
    };
    Reply::redirect(LocalReply::Redirect, 308, &location, rid)
}

/// The answer to an ACME HTTP-01 challenge: from the gateway's own orders (in
/// this process, or in Redis when a cluster peer ordered), else from
/// `<webroot>/.well-known/acme-challenge/<token>`, where `certbot --webroot -w
/// <webroot>` writes it. Tokens are base64url; nothing else is looked up.
pub async fn acme(snap: &Snapshot, path: &str, ctx: &mut RequestCtx) -> Reply {
    ctx.local = Some(LocalReply::Acme);
    let token = path.get(ACME_PREFIX.len()..).unwrap_or("");
    let valid = !token.is_empty()
        && token.len() <= 256
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let mut body = None;
    if valid && snap.config.tls.acme.is_some() {
        body = match crate::tls::acme::challenges().http01(token) {
            Some(key_auth) => Some(key_auth.into_bytes()),
            None => match &snap.redis {
                Some(link) => crate::cluster::acme::http01(link, token)
                    .await
                    .map(String::into_bytes),
                None => None,
            },
        };
    }
    if let (None, Some(root), true) = (&body, &snap.config.tls.acme_webroot, valid) {
        body = tokio::fs::read(root.join(&ACME_PREFIX[1..]).join(token))
            .await
            .ok();
    }
    match body {
        Some(body) => Reply {
            status: 200,
            fields: vec![(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain"),
            )],
            body: body.into(),
            close: false,
            why: LocalReply::Acme,
        },
        None => Reply::json_error(
            LocalReply::Acme,
            404,
            ("not_found", "no such challenge"),
            ctx.request_id.as_ref(),
            &[],
        ),
    }
}

#[cfg(test)]
mod log_field_tests {
    use super::*;

    #[test]
    fn named_query_values_are_redacted_and_the_rest_kept() {
        let names: Vec<String> = ["token", "code", "api_key"].map(String::from).into();
        assert_eq!(
            redact_query("a=1&token=xyz&TOKEN=q&b=&code&api%5Fkey=k&x=token", &names),
            "a=1&token=REDACTED&TOKEN=REDACTED&b=&code&api%5Fkey=REDACTED&x=token"
        );
        assert_eq!(redact_query("token=s", &[]), "token=s");
        let long = "a=".to_owned() + &"x".repeat(5000);
        let r = redact_query(&long, &names);
        assert!(r.len() < 2100 && r.ends_with("..."));
        // Not UTF-8-safe input is cut on a character boundary.
        let wide = "a=".to_owned() + &"é".repeat(2000);
        assert!(redact_query(&wide, &names).ends_with("..."));
    }

    #[test]
    fn tls_versions_get_one_spelling() {
        assert_eq!(tls_name("TLSv1_3"), "TLSv1.3");
        assert_eq!(tls_name("TLSv1.2"), "TLSv1.2");
        assert_eq!(tls_name(""), "");
        assert_eq!(tls_name("SSLv3"), "TLS");
    }
}
