//! The client's IP address, as every limit, ban and log line sees it.
//!
//! The TCP peer is the client unless it is a trusted proxy (a CDN or load balancer
//! in front). Then `CF-Connecting-IP` is believed when present, otherwise the
//! right-most `X-Forwarded-For` hop that is not itself a trusted proxy. Headers from
//! an untrusted peer are never believed: anyone can send them.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use crate::config::TrustedProxies;

/// The client a request is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    pub ip: IpAddr,
    /// The address is a trusted proxy's own (a health check from the load
    /// balancer, a chain of proxies only): it is never rate-limited, jailed,
    /// banned or capped, since every client behind it would pay.
    pub is_proxy: bool,
}

/// A trusted proxy forwarded a chain the gateway cannot read where it has to
/// (`X-Forwarded-For` garbage to the right of the first untrusted hop). The
/// request is refused (400) and charged to nobody: the proxy is innocent and
/// the client unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadChain;

/// IPv4-mapped IPv6 (`::ffff:1.2.3.4`) is treated as the IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// The network a client is counted as for limits and bans: an IPv4 address itself,
/// an IPv6 address's `/prefix` (one subscriber usually holds a whole /64, so
/// counting single IPv6 addresses would let one client rotate through millions).
pub fn group(ip: IpAddr, ipv6_prefix: u8) -> IpNet {
    match canonical(ip) {
        IpAddr::V4(v4) => IpNet::V4(ipnet::Ipv4Net::from(v4)),
        IpAddr::V6(v6) => ipnet::Ipv6Net::new(v6, ipv6_prefix.min(128))
            .map(|n| IpNet::V6(n.trunc()))
            .unwrap_or_else(|_| IpNet::V6(ipnet::Ipv6Net::from(v6))),
    }
}

/// One hop of a chain, as bytes: a header that is not UTF-8 is garbage only
/// where its bytes are.
fn parse_hop(b: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(b).ok()?.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    // Some proxies append a port: `1.2.3.4:5678` or `[::1]:80`.
    s.parse::<SocketAddr>().ok().map(|a| canonical(a.ip()))
}

/// Resolves the client of a request from its TCP peer.
///
/// An untrusted peer is the client, whatever it sends. From a trusted peer the
/// chain is walked right to left — the peer, then each `X-Forwarded-For` hop
/// (`xff`: the header lines in order) — and the first hop that is not a trusted
/// proxy is the client. Garbage to the left of that hop is the client's own
/// and is never read; garbage the walk has to read is [`BadChain`]. A CDN
/// header (`cdn`: `CF-Connecting-IP` or `True-Client-IP`) is believed only when
/// the hop handing the request on is one of the CDN's own edges
/// (`trusted_proxies.cloudflare`): a load balancer passes the header through
/// from whoever sent it.
pub fn resolve<'a>(
    peer: IpAddr,
    trusted: &TrustedProxies,
    xff: impl DoubleEndedIterator<Item = &'a [u8]>,
    cdn: Option<&[u8]>,
) -> Result<Client, BadChain> {
    let peer = canonical(peer);
    if !trusted.is_trusted(peer) {
        return Ok(Client {
            ip: peer,
            is_proxy: false,
        });
    }
    let mut hops = xff.rev().flat_map(|line| line.rsplit(|&b| b == b','));
    let mut hop = peer;
    loop {
        // `hop` is a trusted proxy here.
        if trusted.is_cdn(hop) {
            if let Some(ip) = cdn.and_then(parse_hop) {
                return Ok(Client {
                    ip,
                    is_proxy: trusted.is_trusted(ip),
                });
            }
        }
        let Some(next) = hops.next() else {
            // Proxies all the way: the request is the left-most proxy's own.
            return Ok(Client {
                ip: hop,
                is_proxy: true,
            });
        };
        let ip = parse_hop(next).ok_or(BadChain)?;
        if !trusted.is_trusted(ip) {
            return Ok(Client {
                ip,
                is_proxy: false,
            });
        }
        hop = ip;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn grouping() {
        let g = |s: &str, p| group(s.parse().unwrap(), p).to_string();
        assert_eq!(g("203.0.113.9", 64), "203.0.113.9/32");
        assert_eq!(g("::ffff:203.0.113.9", 64), "203.0.113.9/32");
        assert_eq!(g("2001:db8:1:2:aaaa::1", 64), "2001:db8:1:2::/64");
        assert_eq!(g("2001:db8:1:2:aaaa::1", 48), "2001:db8:1::/48");
        assert_eq!(g("2001:db8::1", 128), "2001:db8::1/128");
    }

    fn plain(s: &[&str]) -> TrustedProxies {
        TrustedProxies {
            networks: s.iter().map(|n| n.parse().unwrap()).collect(),
            cdn: vec![],
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn client(s: &str) -> Result<Client, BadChain> {
        Ok(Client {
            ip: ip(s),
            is_proxy: false,
        })
    }

    fn proxy(s: &str) -> Result<Client, BadChain> {
        Ok(Client {
            ip: ip(s),
            is_proxy: true,
        })
    }

    #[test]
    fn untrusted_peer_headers_ignored() {
        let t = plain(&["10.0.0.0/8"]);
        let got = resolve(
            ip("203.0.113.9"),
            &t,
            [b"1.1.1.1".as_slice()].into_iter(),
            Some(b"2.2.2.2"),
        );
        assert_eq!(got, client("203.0.113.9"));
    }

    #[test]
    fn rightmost_untrusted_hop() {
        let t = plain(&["10.0.0.0/8"]);
        let lines = [b"6.6.6.6, 198.51.100.7".as_slice(), b"10.1.1.1".as_slice()];
        assert_eq!(
            resolve(ip("10.0.0.2"), &t, lines.into_iter(), None),
            client("198.51.100.7")
        );
    }

    #[test]
    fn cdn_header_only_from_the_cdn() {
        let t = TrustedProxies {
            networks: vec!["10.0.0.0/8".parse().unwrap()],
            cdn: vec!["173.245.48.0/20".parse().unwrap()],
        };
        // A load balancer passes the client's own CF-Connecting-IP through:
        // the hop it appended is the client.
        let got = resolve(
            ip("10.0.0.2"),
            &t,
            [b"198.51.100.7".as_slice()].into_iter(),
            Some(b"192.0.2.1"),
        );
        assert_eq!(got, client("198.51.100.7"));
        // The CDN's edge, directly or behind the load balancer: its header wins.
        let got = resolve(
            ip("173.245.48.5"),
            &t,
            std::iter::empty(),
            Some(b"2001:db8::1"),
        );
        assert_eq!(got, client("2001:db8::1"));
        let got = resolve(
            ip("10.0.0.2"),
            &t,
            [b"6.6.6.6, 173.245.48.5".as_slice()].into_iter(),
            Some(b"192.0.2.1"),
        );
        assert_eq!(got, client("192.0.2.1"));
        // A plain trusted proxy's CF header is not believed.
        let got = resolve(
            ip("10.0.0.2"),
            &plain(&["10.0.0.0/8"]),
            std::iter::empty(),
            Some(b"192.0.2.1"),
        );
        assert_eq!(got, proxy("10.0.0.2"));
    }

    #[test]
    fn garbage_the_walk_must_read_is_a_bad_chain() {
        let t = plain(&["10.0.0.0/8"]);
        let lines = [b"1.2.3.4, nonsense, 10.9.9.9".as_slice()];
        assert_eq!(
            resolve(ip("10.0.0.2"), &t, lines.into_iter(), None),
            Err(BadChain)
        );
        let lines = [b"1.2.3.4,".as_slice()];
        assert_eq!(
            resolve(ip("10.0.0.2"), &t, lines.into_iter(), None),
            Err(BadChain)
        );
    }

    #[test]
    fn garbage_left_of_the_client_is_never_read() {
        // nginx's $proxy_add_x_forwarded_for passes the client's bytes through
        // and appends the address it saw.
        let t = plain(&["127.0.0.1/32"]);
        let lines = [b"\xff, 198.51.100.7".as_slice()];
        assert_eq!(
            resolve(ip("127.0.0.1"), &t, lines.into_iter(), None),
            client("198.51.100.7")
        );
        let lines = [b"\xff".as_slice(), b"198.51.100.7".as_slice()];
        assert_eq!(
            resolve(ip("127.0.0.1"), &t, lines.into_iter(), None),
            client("198.51.100.7")
        );
    }

    #[test]
    fn a_proxy_without_a_chain_is_a_proxy() {
        let t = plain(&["10.0.0.0/8"]);
        assert_eq!(
            resolve(ip("10.0.0.2"), &t, std::iter::empty(), None),
            proxy("10.0.0.2")
        );
        let lines = [b"10.3.3.3".as_slice()];
        assert_eq!(
            resolve(ip("10.0.0.2"), &t, lines.into_iter(), None),
            proxy("10.3.3.3")
        );
    }

    #[test]
    fn mapped_v6_is_v4() {
        let got = resolve(
            ip("::ffff:192.0.2.1"),
            &plain(&[]),
            std::iter::empty(),
            None,
        );
        assert_eq!(got, client("192.0.2.1"));
    }

    #[test]
    fn ports_in_hops() {
        let t = plain(&["127.0.0.1/32"]);
        let lines = [b"192.0.2.5:4444".as_slice()];
        assert_eq!(
            resolve(ip("127.0.0.1"), &t, lines.into_iter(), None),
            client("192.0.2.5")
        );
    }

    #[test]
    fn builtin_cloudflare_list_parses() {
        let all = crate::config::trust::builtin_cloudflare();
        assert_eq!(all.len(), crate::config::trust::CLOUDFLARE.len());
        assert!(all.iter().any(|n| n.contains(&ip("2606:4700::1111"))));
        assert!(all.iter().any(|n| n.contains(&ip("104.16.1.1"))));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(h in proptest::collection::vec(proptest::num::u8::ANY, 0..64), c in "\\PC{0,40}") {
            let t = TrustedProxies {
                networks: vec!["0.0.0.0/0".parse().unwrap()],
                cdn: vec!["::/0".parse().unwrap()],
            };
            let _ = resolve(ip("127.0.0.1"), &t, [h.as_slice()].into_iter(), Some(c.as_bytes()));
            let _ = resolve(ip("::1"), &t, [h.as_slice()].into_iter(), Some(c.as_bytes()));
        }

        /// Whatever a client sends, from an untrusted peer it is the peer.
        #[test]
        fn untrusted_peer_is_the_client(h in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let t = plain(&["10.0.0.0/8"]);
            let got = resolve(ip("203.0.113.9"), &t, [h.as_slice()].into_iter(), Some(&h));
            proptest::prop_assert_eq!(got, client("203.0.113.9"));
        }
    }
}
