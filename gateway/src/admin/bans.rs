//! `/admin/bans`: list the active bans, ban an IP or network by hand, lift a ban.
//!
//! `GET /admin/bans` → `{"bans":[{target, jail, reason, until, remaining_seconds,
//! offences, action}]}`; `POST /admin/bans` with `{"target": "203.0.113.7" |
//! "198.51.100.0/24", "duration": "1h", "reason": "...", "action": "reject|drop"}`
//! → 201 and the ban; `DELETE /admin/bans/<ip or cidr>` → 204, or 404 when it was
//! not banned.

use std::time::Duration;

use http::{Method, Response, StatusCode};
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::json;

use super::reply::{error, json_response};
use crate::bans::{now_ms, Ban};
use crate::config::BanAction;
use crate::shield::Shield;
use crate::snapshot::Snapshot;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BanRequest {
    target: String,
    duration: Option<String>,
    reason: Option<String>,
    action: Option<String>,
}

fn view(b: &Ban, now: u64) -> serde_json::Value {
    json!({
        "target": b.target.to_string(),
        "jail": b.jail,
        "reason": b.reason,
        "until": b.until_ms / 1000,
        "remaining_seconds": b.until_ms.saturating_sub(now).div_ceil(1000),
        "offences": b.offences,
        "action": b.action.as_str(),
    })
}

/// `1.2.3.4`, `2001:db8::1` or a CIDR; IPv4-mapped IPv6 is treated as IPv4.
fn parse_target(s: &str, ipv6_prefix: u8) -> Option<IpNet> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        // A single IPv6 address is banned as its group, like the jails do.
        return Some(crate::client_ip::group(ip, ipv6_prefix));
    }
    let net = s.parse::<IpNet>().ok()?;
    Some(
        match net {
            IpNet::V6(v6) => match v6.addr().to_ipv4_mapped() {
                // `::ffff:a.b.c.d/n` with n < 96 would cover every IPv4 address.
                Some(_) if v6.prefix_len() < 96 => return None,
                Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                    .map(IpNet::V4)
                    .ok()?,
                None => net,
            },
            IpNet::V4(_) => net,
        }
        .trunc(),
    )
}

pub async fn handle(
    shield: &Shield,
    snap: &Snapshot,
    method: &Method,
    path: &str,
    body: &[u8],
) -> Response<Vec<u8>> {
    let v6 = snap.config.limits.ipv6_prefix;
    let link = snap.redis.as_deref();
    let now = now_ms();
    match (method, path.strip_prefix("/admin/bans")) {
        (&Method::GET, Some("" | "/")) => {
            let bans: Vec<_> = shield.bans.list().iter().map(|b| view(b, now)).collect();
            json_response(StatusCode::OK, json!({ "bans": bans }))
        }
        (&Method::POST, Some("" | "/")) => {
            let req: BanRequest = match serde_json::from_slice(body) {
                Ok(r) => r,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        &format!(
                            "expected {{\"target\", \"duration\", \"reason\", \"action\"}}: {e}"
                        ),
                    )
                }
            };
            let Some(target) = parse_target(&req.target, v6) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_target",
                    "target must be an IP address or a CIDR network",
                );
            };
            if let Some(p) = snap
                .trusted_proxies
                .all()
                .find(|p| p.contains(&target.network()) || target.contains(&p.network()))
            {
                // Banning a proxy bans every client behind it (the attack this
                // refuses is a client getting its CDN edge banned).
                return error(
                    StatusCode::CONFLICT,
                    "trusted_proxy",
                    &format!("{target} overlaps the trusted proxies {p}: ban clients, not proxies"),
                );
            }
            let lasts = match req.duration.as_deref().map(humantime::parse_duration) {
                None => Duration::from_secs(3600),
                Some(Ok(d)) if !d.is_zero() && d <= Duration::from_secs(10 * 365 * 86_400) => d,
                Some(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "bad_duration",
                        "duration must look like 30m, 12h or 7d (at most 10 years)",
                    )
                }
            };
            let action = match req.action.as_deref() {
                None | Some("reject") => BanAction::Reject,
                Some("drop") => BanAction::Drop,
                Some(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "bad_action",
                        "action must be reject or drop",
                    )
                }
            };
            let reason = req
                .reason
                .unwrap_or_else(|| "banned by an operator".to_owned());
            let ban = shield
                .bans
                .ban_manual(target, lasts, reason, action, v6, link)
                .await;
            json_response(StatusCode::CREATED, view(&ban, now))
        }
        (&Method::DELETE, Some(rest)) if rest.len() > 1 => {
            let raw = rest
                .trim_start_matches('/')
                .replace("%2F", "/")
                .replace("%2f", "/");
            let Some(target) = parse_target(&raw, v6) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_target",
                    "target must be an IP address or a CIDR network",
                );
            };
            let jails: Vec<String> = snap.config.jails.iter().map(|j| j.name.clone()).collect();
            if shield.bans.unban(&target, &jails, link).await {
                Response::builder()
                    .status(StatusCode::NO_CONTENT)
                    .body(Vec::new())
                    .unwrap_or_else(|_| Response::new(Vec::new()))
            } else {
                error(
                    StatusCode::NOT_FOUND,
                    "not_banned",
                    "this target is not banned",
                )
            }
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", "unknown admin endpoint"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = |s| parse_target(s, 64).map(|n| n.to_string());
        assert_eq!(t("203.0.113.7").as_deref(), Some("203.0.113.7/32"));
        assert_eq!(t("::ffff:203.0.113.7").as_deref(), Some("203.0.113.7/32"));
        assert_eq!(t("198.51.100.9/24").as_deref(), Some("198.51.100.0/24"));
        assert_eq!(t("2001:db8::1").as_deref(), Some("2001:db8::/64"));
        assert_eq!(t("2001:db8::/32").as_deref(), Some("2001:db8::/32"));
        assert_eq!(t("nope"), None);
    }
}
