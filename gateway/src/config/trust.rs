//! `trusted_proxies:`: which peers may tell the gateway who the client is.
//!
//! Two kinds of proxy: plain ones (a load balancer, an nginx in front), whose
//! `X-Forwarded-For` hop is believed, and a CDN (Cloudflare), whose
//! `CF-Connecting-IP`/`True-Client-IP` is believed as well — but only from that
//! CDN's own address ranges, since any other proxy passes those headers through
//! from whoever sent them.
//!
//! ```yaml
//! trusted_proxies: [10.0.0.0/8]              # plain proxies only
//! trusted_proxies:
//!   networks: [10.0.0.0/8]
//!   cloudflare: builtin                      # or a list of CIDRs
//! ```

use std::net::IpAddr;

use ipnet::IpNet;

use super::check::{cidrs, Checker};
use super::error::KeyPath;

// The serde mirrors are in `raw`; they stay reachable here at their old paths.
pub use super::raw::{RawCdnRanges, RawTrustedFull, RawTrustedProxies};

/// Cloudflare's published ranges (<https://www.cloudflare.com/ips-v4>,
/// `ips-v6`). `scripts/cloudflare-ips.sh` prints the current list as YAML for
/// `trusted_proxies.cloudflare:` when it changes before the next release.
pub const CLOUDFLARE: &[&str] = &[
    "173.245.48.0/20",
    "103.21.244.0/22",
    "103.22.200.0/22",
    "103.31.4.0/22",
    "141.101.64.0/18",
    "108.162.192.0/18",
    "190.93.240.0/20",
    "188.114.96.0/20",
    "197.234.240.0/22",
    "198.41.128.0/17",
    "162.158.0.0/15",
    "104.16.0.0/13",
    "104.24.0.0/14",
    "172.64.0.0/13",
    "131.0.72.0/22",
    "2400:cb00::/32",
    "2606:4700::/32",
    "2803:f800::/32",
    "2405:b500::/32",
    "2405:8100::/32",
    "2a06:98c0::/29",
    "2c0f:f248::/32",
];

/// Networks wider than this (IPv4 prefix length) trusted as proxies draw a
/// warning from `check`: everyone in them can choose their own client address.
const WIDE_V4: u8 = 8;
const WIDE_V6: u8 = 32;

/// The validated peers that may speak for clients.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    /// Plain proxies: their `X-Forwarded-For` hop is believed.
    pub networks: Vec<IpNet>,
    /// The CDN's edges: trusted like `networks`, and their `CF-Connecting-IP` /
    /// `True-Client-IP` is believed.
    pub cdn: Vec<IpNet>,
}

impl TrustedProxies {
    /// Whether `ip` is a proxy of either kind.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|n| n.contains(&ip)) || self.is_cdn(ip)
    }

    pub fn is_cdn(&self, ip: IpAddr) -> bool {
        self.cdn.iter().any(|n| n.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.networks.is_empty() && self.cdn.is_empty()
    }

    /// Every trusted network, plain and CDN.
    pub fn all(&self) -> impl Iterator<Item = &IpNet> {
        self.networks.iter().chain(self.cdn.iter())
    }
}

pub fn builtin_cloudflare() -> Vec<IpNet> {
    CLOUDFLARE.iter().filter_map(|s| s.parse().ok()).collect()
}

pub fn trusted_of(c: &mut Checker, at: &KeyPath, raw: RawTrustedProxies) -> TrustedProxies {
    let (networks, cdn) = match raw {
        RawTrustedProxies::List(list) => (cidrs(c, at, &list), Vec::new()),
        RawTrustedProxies::Full(f) => {
            let networks = cidrs(c, &at.key("networks"), &f.networks);
            let cdn = match f.cloudflare {
                None => Vec::new(),
                Some(RawCdnRanges::Named(n)) if n == "builtin" => builtin_cloudflare(),
                Some(RawCdnRanges::Named(n)) => {
                    c.err(
                        &at.key("cloudflare"),
                        format!("{n:?}: use `builtin` or a list of CIDRs"),
                    );
                    Vec::new()
                }
                Some(RawCdnRanges::List(l)) => cidrs(c, &at.key("cloudflare"), &l),
            };
            (networks, cdn)
        }
    };
    for n in &networks {
        let wide = match n {
            IpNet::V4(v4) => v4.prefix_len() < WIDE_V4,
            IpNet::V6(v6) => v6.prefix_len() < WIDE_V6,
        };
        if wide {
            c.warn(
                at,
                format!(
                    "{n} is trusted as a proxy: every address in it can choose its own client \
                     address through X-Forwarded-For (trust only your proxies' networks)"
                ),
            );
        }
    }
    TrustedProxies { networks, cdn }
}
