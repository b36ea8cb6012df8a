//! Client addresses: CIDR blocks, and who the client is behind a trusted
//! reverse proxy.

use std::net::{IpAddr, SocketAddr};

/// An address block, `10.0.0.0/8`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    bits: u8,
}

impl Cidr {
    /// `ADDR` or `ADDR/BITS`; None when malformed.
    pub fn parse(text: &str) -> Option<Cidr> {
        let (addr, bits) = match text.trim().split_once('/') {
            Some((a, b)) => (a.parse::<IpAddr>().ok()?, Some(b.parse::<u8>().ok()?)),
            None => (text.trim().parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        (bits <= max).then_some(Cidr { addr, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.bits),
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.bits),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let whole = usize::from(bits / 8);
    let rest = bits % 8;
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        a[whole] & mask == b[whole] & mask
    }
}

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// From the config's list; malformed entries were refused there.
    pub fn new(list: &[String]) -> TrustedProxies {
        TrustedProxies(list.iter().filter_map(|p| Cidr::parse(p)).collect())
    }

    /// Whether `ip` is one of the trusted proxies.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client behind `peer`: when `peer` is a trusted proxy, the
    /// nearest address in `X-Forwarded-For` (read right to left, over
    /// every such header) that is not itself a trusted proxy. A malformed
    /// entry stops the walk at the last trusted hop, whose own address is
    /// then the client: a client cannot make up one of its own.
    pub fn client<'a>(
        &self,
        peer: SocketAddr,
        forwarded_for: impl DoubleEndedIterator<Item = &'a str>,
    ) -> SocketAddr {
        if self.0.is_empty() || !self.trusts(peer.ip()) {
            return peer;
        }
        let mut client = peer;
        let hops = forwarded_for.rev().flat_map(|h| h.rsplit(','));
        for hop in hops {
            let Some(ip) = parse_hop(hop.trim()) else {
                break;
            };
            client = SocketAddr::new(ip, 0);
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an address, maybe with a port or brackets.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = hop.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    hop.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 4000)
    }

    #[test]
    fn blocks_match_their_prefix() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(
            Cidr::parse("10.1.2.3/12")
                .unwrap()
                .contains("10.0.0.1".parse().unwrap())
        );
        assert!(
            Cidr::parse("127.0.0.1")
                .unwrap()
                .contains("::ffff:127.0.0.1".parse().unwrap())
        );
        assert!(
            Cidr::parse("fd00::/8")
                .unwrap()
                .contains("fd12::1".parse().unwrap())
        );
        assert_eq!(Cidr::parse("10.0.0.0/33"), None);
        assert_eq!(Cidr::parse("proxy.local"), None);
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_peers() {
        let trusted = TrustedProxies::new(&["10.0.0.0/8".into()]);
        let xff = ["203.0.113.9, 10.0.0.7"];
        assert_eq!(
            trusted.client(peer("10.0.0.2"), xff.into_iter()).ip(),
            "203.0.113.9".parse::<IpAddr>().unwrap(),
            "the nearest untrusted hop"
        );
        assert_eq!(
            trusted.client(peer("198.51.100.1"), xff.into_iter()),
            peer("198.51.100.1"),
            "an untrusted peer's header is ignored"
        );
        let spoofed = ["1.2.3.4", "203.0.113.9"];
        assert_eq!(
            trusted.client(peer("10.0.0.2"), spoofed.into_iter()).ip(),
            "203.0.113.9".parse::<IpAddr>().unwrap(),
            "what the client wrote itself, left of its real address, is not believed"
        );
        assert_eq!(
            trusted.client(peer("10.0.0.2"), ["junk"].into_iter()),
            peer("10.0.0.2")
        );
        assert_eq!(
            trusted
                .client(peer("10.0.0.2"), ["[2001:db8::1]:443"].into_iter())
                .ip(),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            TrustedProxies::default().client(peer("10.0.0.2"), xff.into_iter()),
            peer("10.0.0.2")
        );
    }
}
