//! IP prefixes (`127.0.0.0/8`, `::1/128`, or a bare address): which client
//! addresses a listener trusts to send a PROXY protocol header.

use std::fmt;
use std::net::IpAddr;

/// An IP prefix. IPv4 clients of a dual-stack listener arrive as
/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) and match IPv4 prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR/BITS` or a bare address (all bits). Host bits set below
    /// the prefix are refused: `10.0.0.1/8` is more likely a typo than a
    /// wish for `10.0.0.0/8`.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, bits) = match text.split_once('/') {
            Some((addr, bits)) => (addr, Some(bits)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match bits {
            None => max,
            Some(bits) => match bits.parse::<u8>() {
                Ok(n) if n <= max && !bits.starts_with('+') => n,
                _ => return Err(format!("/{bits} is not a prefix length from 0 to {max}")),
            },
        };
        let cidr = Cidr { addr, prefix };
        let network = cidr.network();
        if network != addr {
            return Err(format!(
                "host bits are set below /{prefix}; the network is {network}/{prefix}"
            ));
        }
        Ok(cidr)
    }

    /// Whether `ip` is inside the prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && masked(ip, self.prefix) == self.addr
    }

    fn network(&self) -> IpAddr {
        masked(self.addr, self.prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// `ip` with every bit after its first `prefix` cleared (a prefix longer
/// than the family's width keeps the whole address).
pub fn masked(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            IpAddr::V4((u32::from(a) & mask).into())
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            IpAddr::V6((u128::from(a) & mask).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn it_should_match_addresses_inside_the_prefix_only() {
        let net = Cidr::parse("127.0.0.0/8").unwrap();
        assert!(net.contains(ip("127.0.0.1")));
        assert!(net.contains(ip("127.255.0.9")));
        assert!(!net.contains(ip("128.0.0.1")));
        assert!(!net.contains(ip("::1")));
        assert!(net.contains(ip("::ffff:127.0.0.2")));
    }

    #[test]
    fn it_should_take_a_bare_address_as_all_bits_and_zero_as_everything() {
        let one = Cidr::parse("::1").unwrap();
        assert!(one.contains(ip("::1")));
        assert!(!one.contains(ip("::2")));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")));
        assert!(!v6.contains(ip("2001:db9::5")));
        assert_eq!(v6.to_string(), "2001:db8::/32");
    }

    #[test]
    fn it_should_refuse_bad_prefixes_and_host_bits_with_the_network_to_write() {
        assert!(Cidr::parse("127.0.0.0/33").is_err());
        assert!(Cidr::parse("127.0.0.0/+8").is_err());
        assert!(Cidr::parse("localhost").is_err());
        assert_eq!(
            Cidr::parse("10.0.0.1/8").unwrap_err(),
            "host bits are set below /8; the network is 10.0.0.0/8"
        );
    }
}
