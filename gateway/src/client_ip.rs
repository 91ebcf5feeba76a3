//! The client's IP address, as every limit, ban and log line sees it.
//!
//! The TCP peer is the client unless it is a trusted proxy (a CDN or load balancer
//! in front). Then `CF-Connecting-IP` is believed when present, otherwise the
//! right-most `X-Forwarded-For` hop that is not itself a trusted proxy. Headers from
//! an untrusted peer are never believed: anyone can send them.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|n| n.contains(&ip))
}

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

fn parse_hop(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    // Some proxies append a port: `1.2.3.4:5678` or `[::1]:80`.
    s.parse::<SocketAddr>().ok().map(|a| canonical(a.ip()))
}

/// Resolves the client IP. `xff` are the `X-Forwarded-For` header lines in order.
pub fn resolve<'a>(
    peer: IpAddr,
    trusted: &[IpNet],
    xff: impl DoubleEndedIterator<Item = &'a [u8]>,
    cf_connecting_ip: Option<&[u8]>,
) -> IpAddr {
    let peer = canonical(peer);
    if !is_trusted(peer, trusted) {
        return peer;
    }
    if let Some(ip) = cf_connecting_ip
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(parse_hop)
    {
        return ip;
    }
    let mut client = peer;
    for line in xff.rev() {
        let Ok(line) = std::str::from_utf8(line) else {
            return client;
        };
        for hop in line.rsplit(',') {
            match parse_hop(hop) {
                Some(ip) => {
                    client = ip;
                    if !is_trusted(ip, trusted) {
                        return ip;
                    }
                }
                // Garbage in the chain: nothing to its left can be trusted.
                None => return client,
            }
        }
    }
    client
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

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_headers_ignored() {
        let t = nets(&["10.0.0.0/8"]);
        let got = resolve(
            ip("203.0.113.9"),
            &t,
            [b"1.1.1.1".as_slice()].into_iter(),
            Some(b"2.2.2.2"),
        );
        assert_eq!(got, ip("203.0.113.9"));
    }

    #[test]
    fn rightmost_untrusted_hop() {
        let t = nets(&["10.0.0.0/8"]);
        let lines = [b"6.6.6.6, 198.51.100.7".as_slice(), b"10.1.1.1".as_slice()];
        assert_eq!(
            resolve(ip("10.0.0.2"), &t, lines.into_iter(), None),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn cf_header_from_trusted_peer() {
        let t = nets(&["10.0.0.0/8"]);
        let got = resolve(ip("10.0.0.2"), &t, std::iter::empty(), Some(b"2001:db8::1"));
        assert_eq!(got, ip("2001:db8::1"));
    }

    #[test]
    fn garbage_stops_the_walk() {
        let t = nets(&["10.0.0.0/8"]);
        let lines = [b"1.2.3.4, nonsense, 10.9.9.9".as_slice()];
        assert_eq!(
            resolve(ip("10.0.0.2"), &t, lines.into_iter(), None),
            ip("10.9.9.9")
        );
    }

    #[test]
    fn mapped_v6_is_v4() {
        let got = resolve(ip("::ffff:192.0.2.1"), &[], std::iter::empty(), None);
        assert_eq!(got, ip("192.0.2.1"));
    }

    #[test]
    fn ports_in_hops() {
        let t = nets(&["127.0.0.1/32"]);
        let lines = [b"192.0.2.5:4444".as_slice()];
        assert_eq!(
            resolve(ip("127.0.0.1"), &t, lines.into_iter(), None),
            ip("192.0.2.5")
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics(h in "\\PC{0,64}", c in "\\PC{0,40}") {
            let t = nets(&["0.0.0.0/0", "::/0"]);
            let _ = resolve(ip("127.0.0.1"), &t, [h.as_bytes()].into_iter(), Some(c.as_bytes()));
        }
    }
}
