//! The client address behind trusted reverse proxies (`--trusted-proxy`), for both faces.
//!
//! Behind a proxy every connection comes from the proxy, so anything keyed on the TCP peer (the
//! throttle of failed authentication) would lump every client together: one client with a stale
//! token would lock out all of them. When the peer is a trusted proxy, the client is read from
//! `X-Forwarded-For` by the rightmost-untrusted rule (nginx `real_ip_recursive`, Caddy's strict
//! mode): a client can write anything at the left of the list, and only the entries that trusted
//! proxies appended, from the right, can be believed. Whenever the header cannot be believed
//! (missing, malformed, or naming only trusted hops) the answer is the peer: the proxy's own
//! address, never a value the client chose.
//!
//! RFC 7239 `Forwarded` is not read: the proxies in use (ingress-nginx, Envoy, HAProxy, cloud
//! load balancers) write `X-Forwarded-For` and pass a client's `Forwarded` through untouched, so
//! reading it would let a client name its own address.
use std::{
    net::{IpAddr, SocketAddr},
    str::FromStr,
    sync::Arc,
};

use http::HeaderMap;
use ipnet::{IpNet, Ipv4Net};

/// One `--trusted-proxy` value: a CIDR range or a bare address (v4 or v6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedRange(IpNet);

impl FromStr for TrustedRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let net = match s.parse::<IpAddr>() {
            Ok(addr) => IpNet::from(addr),
            Err(_) => s.parse::<IpNet>().map_err(|_| {
                format!("`{s}` is neither an IP address nor a CIDR range (e.g. 10.0.0.0/8, 192.0.2.7, fd00::/8)")
            })?,
        };
        Ok(TrustedRange(v4_mapped_to_v4(net).trunc()))
    }
}

impl std::fmt::Display for TrustedRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Addresses are compared in canonical form (an IPv4-mapped `::ffff:a.b.c.d` is `a.b.c.d`, as a
/// dual-stack listener reports IPv4 peers), so a range written that way is its IPv4 range.
fn v4_mapped_to_v4(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && let Ok(v4) = Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(v4);
    }
    net
}

/// The configured proxies; none by default, and then the peer is the client. `None` rather than
/// an empty list so that the layers holding it, cloned per request, copy nothing shared.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Option<Arc<[IpNet]>>);

impl TrustedProxies {
    pub fn new(ranges: impl IntoIterator<Item = TrustedRange>) -> Self {
        let ranges: Arc<[IpNet]> = ranges.into_iter().map(|r| r.0).collect();
        TrustedProxies((!ranges.is_empty()).then_some(ranges))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// The client address of a request that came from `peer` with these headers. With no
    /// trusted proxy, or an untrusted peer, the headers are not read.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let Some(ranges) = &self.0 else {
            return peer;
        };
        let trusts = |addr: IpAddr| ranges.iter().any(|net| net.contains(&addr));
        let peer = peer.to_canonical();
        if !trusts(peer) {
            return peer;
        }
        rightmost_untrusted(headers, trusts).unwrap_or(peer)
    }
}

/// Sets `X-Forwarded-For` to the one client [`TrustedProxies::client`] reads from the request
/// (the TCP peer, or the client a trusted proxy names), as a proxy in overwrite mode does. The
/// header then travels to the service with each call ([`crate::upstream::CallContext`]), so a
/// separate service started with the gateway as its `--trusted-proxy` keys its throttle of
/// failed authentication on the client: keyed on the gateway's address, one client whose token
/// only the gateway knew (token files rotated apart) locked every client out within a minute.
/// Reading the rewritten header again gives the same client. A request without a recorded peer
/// (a test's router) is left as it is.
pub fn name_client<B>(proxies: &TrustedProxies, mut req: http::Request<B>) -> http::Request<B> {
    let peer = req.extensions().get::<axum::extract::ConnectInfo<SocketAddr>>().map(|info| info.0.ip());
    if let Some(peer) = peer {
        let client = proxies.client(peer, req.headers());
        if let Ok(value) = http::HeaderValue::try_from(client.to_string()) {
            req.headers_mut().insert(X_FORWARDED_FOR, value);
        }
    }
    req
}

pub const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

/// Header lines are one list in their order (RFC 9110 §5.3), so the walk starts at the end of
/// the last line. Any entry that is not an address ends it with `None`: past a hop nothing can be
/// read reliably.
fn rightmost_untrusted(headers: &HeaderMap, trusts: impl Fn(IpAddr) -> bool) -> Option<IpAddr> {
    for line in headers.get_all(X_FORWARDED_FOR).iter().rev() {
        for entry in line.to_str().ok()?.rsplit(',') {
            let addr = parse_entry(entry.trim())?.to_canonical();
            if !trusts(addr) {
                return Some(addr);
            }
        }
    }
    None
}

/// An `X-Forwarded-For` entry: an address, or one with a port (`192.0.2.7:4711`,
/// `[2001:db8::7]:4711`, as some load balancers write it), or a bracketed IPv6 address.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(addr) = entry.parse::<IpAddr>() {
        return Some(addr);
    }
    if let Ok(addr) = entry.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    let inner = entry.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(ranges: &[&str]) -> TrustedProxies {
        TrustedProxies::new(ranges.iter().map(|r| r.parse::<TrustedRange>().unwrap()))
    }

    fn headers(lines: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in lines {
            map.append("x-forwarded-for", line.parse().unwrap());
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const PROXY: &str = "10.0.0.1";

    fn client_via(trusted: &[&str], lines: &[&str]) -> IpAddr {
        proxies(trusted).client(ip(PROXY), &headers(lines))
    }

    #[test]
    fn ranges_and_bare_addresses_parse_and_garbage_is_refused() {
        assert_eq!("10.0.0.0/8".parse::<TrustedRange>().unwrap().to_string(), "10.0.0.0/8");
        assert_eq!("192.0.2.7".parse::<TrustedRange>().unwrap().to_string(), "192.0.2.7/32");
        assert_eq!(" 2001:db8::1 ".parse::<TrustedRange>().unwrap().to_string(), "2001:db8::1/128");
        assert_eq!("fd00::/8".parse::<TrustedRange>().unwrap().to_string(), "fd00::/8");
        // Host bits are dropped: the range is what matters.
        assert_eq!("10.1.2.3/16".parse::<TrustedRange>().unwrap().to_string(), "10.1.0.0/16");
        assert_eq!("::ffff:10.0.0.0/104".parse::<TrustedRange>().unwrap().to_string(), "10.0.0.0/8");
        for bad in ["", "10.0.0.0/33", "fd00::/129", "proxy.internal", "10.0.0", "10.0.0.1/", "*"] {
            let err = bad.parse::<TrustedRange>().expect_err(bad);
            assert!(err.contains("CIDR"), "{bad}: {err}");
        }
    }

    #[test]
    fn without_trusted_proxies_the_header_is_ignored() {
        assert_eq!(client_via(&[], &["203.0.113.7"]), ip(PROXY));
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_sends() {
        assert_eq!(client_via(&["10.9.9.9"], &["203.0.113.7"]), ip(PROXY));
    }

    #[test]
    fn the_rightmost_untrusted_entry_is_the_client() {
        assert_eq!(client_via(&[PROXY], &["203.0.113.7"]), ip("203.0.113.7"));
        // A client prepending another client's address is still itself.
        assert_eq!(client_via(&[PROXY], &["198.51.100.9, 203.0.113.7"]), ip("203.0.113.7"));
        // Trusted hops appended by a proxy chain are skipped, CIDR and bare address alike.
        assert_eq!(client_via(&["10.0.0.0/8"], &["198.51.100.9, 203.0.113.7, 10.2.3.4"]), ip("203.0.113.7"));
        assert_eq!(client_via(&[PROXY, "10.2.3.4"], &["203.0.113.7,10.2.3.4"]), ip("203.0.113.7"));
        // Only the listed address is trusted: its neighbour is a client.
        assert_eq!(client_via(&[PROXY], &["203.0.113.7, 10.0.0.2"]), ip("10.0.0.2"));
    }

    #[test]
    fn the_header_sent_on_names_the_client_alone_and_reads_back_as_it() {
        let named = |trusted: &[&str], lines: &[&str], peer: Option<&str>| {
            let mut req = http::Request::new(());
            *req.headers_mut() = headers(lines);
            if let Some(peer) = peer {
                let addr = SocketAddr::new(ip(peer), 4711);
                req.extensions_mut().insert(axum::extract::ConnectInfo(addr));
            }
            let req = name_client(&proxies(trusted), req);
            let sent: Vec<_> = req.headers().get_all(X_FORWARDED_FOR).iter().map(|v| v.to_str().unwrap()).collect();
            // The gateway's own layers read the rewritten header and must find the same client.
            if let Some(peer) = peer {
                assert_eq!(proxies(trusted).client(ip(peer), req.headers()).to_string(), sent.join(","));
            }
            sent.join(",")
        };
        assert_eq!(named(&[PROXY], &["198.51.100.9, 203.0.113.7"], Some(PROXY)), "203.0.113.7");
        assert_eq!(named(&[PROXY], &["203.0.113.7", "nonsense"], Some(PROXY)), PROXY, "unreadable: the peer");
        assert_eq!(named(&[], &["203.0.113.7"], Some(PROXY)), PROXY, "an untrusted peer's header is replaced");
        assert_eq!(named(&[], &[], Some("2001:db8::7")), "2001:db8::7");
        assert_eq!(named(&[], &["203.0.113.7"], None), "203.0.113.7", "no peer recorded: left alone");
    }

    #[test]
    fn a_chain_of_trusted_hops_only_is_the_peer() {
        assert_eq!(client_via(&["10.0.0.0/8"], &["10.0.0.7, 10.0.0.8"]), ip(PROXY));
    }

    #[test]
    fn a_missing_or_malformed_header_is_the_peer() {
        assert_eq!(client_via(&[PROXY], &[]), ip(PROXY));
        for garbage in ["", "unknown", "203.0.113.7, ", "203.0.113.7,,", "_hidden", "1.2.3.4.5"] {
            assert_eq!(client_via(&[PROXY], &[garbage]), ip(PROXY), "{garbage:?}");
        }
        // A malformed hop right of the client hides it: what lies beyond cannot be believed.
        assert_eq!(client_via(&["10.0.0.0/8"], &["203.0.113.7, nonsense, 10.0.0.9"]), ip(PROXY));
        // Left of the client the header is the client's own to write, and not read.
        assert_eq!(client_via(&[PROXY], &["nonsense, 203.0.113.7"]), ip("203.0.113.7"));
        // Not visible ASCII: not a header value the walk can read.
        let mut map = HeaderMap::new();
        map.insert("x-forwarded-for", http::HeaderValue::from_bytes(b"203.0.113.7\xff").unwrap());
        assert_eq!(proxies(&[PROXY]).client(ip(PROXY), &map), ip(PROXY));
    }

    #[test]
    fn several_header_lines_are_one_list_in_order() {
        assert_eq!(client_via(&[PROXY], &["198.51.100.9", "203.0.113.7"]), ip("203.0.113.7"));
        assert_eq!(client_via(&["10.0.0.0/8"], &["198.51.100.9, 203.0.113.7", "10.0.0.5"]), ip("203.0.113.7"));
        // The walk goes on into the earlier line once the later one holds only trusted hops.
        assert_eq!(client_via(&["10.0.0.0/8"], &["203.0.113.7", "10.0.0.5, 10.0.0.6"]), ip("203.0.113.7"));
    }

    #[test]
    fn ports_and_brackets_are_read_as_the_address() {
        assert_eq!(client_via(&[PROXY], &["203.0.113.7:4711"]), ip("203.0.113.7"));
        assert_eq!(client_via(&[PROXY], &["[2001:db8::7]:4711"]), ip("2001:db8::7"));
        assert_eq!(client_via(&[PROXY], &["[2001:db8::7]"]), ip("2001:db8::7"));
    }

    #[test]
    fn ipv6_and_ipv4_mapped_addresses() {
        let v6 = proxies(&["fd00::/8"]);
        let via_v6 = |line: &str| v6.client(ip("fd00::1"), &headers(&[line]));
        assert_eq!(via_v6("2001:db8::7, fd00::2"), ip("2001:db8::7"));
        assert_eq!(via_v6("fd00::2"), ip("fd00::1"), "only trusted hops");
        // A dual-stack listener reports an IPv4 proxy as ::ffff:a.b.c.d; it is still trusted.
        assert_eq!(proxies(&[PROXY]).client(ip("::ffff:10.0.0.1"), &headers(&["203.0.113.7"])), ip("203.0.113.7"));
        // A mapped entry is its IPv4 address, for the trust check and the answer alike.
        assert_eq!(client_via(&[PROXY], &["::ffff:203.0.113.7"]), ip("203.0.113.7"));
        assert_eq!(client_via(&["10.0.0.0/8"], &["203.0.113.7, ::ffff:10.0.0.9"]), ip("203.0.113.7"));
        // An IPv4 range does not cover IPv6 peers, nor the other way round.
        assert_eq!(proxies(&["0.0.0.0/0"]).client(ip("fd00::1"), &headers(&["203.0.113.7"])), ip("fd00::1"));
        assert_eq!(proxies(&["::/0"]).client(ip(PROXY), &headers(&["203.0.113.7"])), ip(PROXY));
    }
}
