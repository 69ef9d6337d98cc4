//! CIDR blocks: parsing (`10.0.0.0/8`, `2001:db8::/32`, a bare address = one host) with host
//! bits required to be zero, and matching, with IPv4-mapped IPv6 treated as IPv4.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    net: IpAddr,
    len: u8,
}

fn mask_low(bits: u32) -> u128 {
    if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    }
}

/// The address as a number and its width in bits.
fn bits(ip: IpAddr) -> (u128, u32) {
    match ip.to_canonical() {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    }
}

impl Cidr {
    /// The block of length `len` (clamped to the family's width) that holds `ip`; an
    /// IPv4-mapped IPv6 address is taken as IPv4.
    pub fn covering(ip: IpAddr, len: u8) -> Cidr {
        let ip = ip.to_canonical();
        let (value, width) = bits(ip);
        let len = len.min(if ip.is_ipv4() { 32 } else { 128 });
        let net = value & !mask_low(width - u32::from(len));
        let net = match ip {
            IpAddr::V4(_) => IpAddr::from(std::net::Ipv4Addr::from(
                u32::try_from(net).unwrap_or_default(),
            )),
            IpAddr::V6(_) => IpAddr::from(std::net::Ipv6Addr::from(net)),
        };
        Cidr { net, len }
    }

    pub fn network(&self) -> IpAddr {
        self.net
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether `ip` is inside this block. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`)
    /// counts as the IPv4 address it carries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (net, width) = bits(self.net);
        let (addr, addr_width) = bits(ip);
        if width != addr_width {
            return false;
        }
        let host = mask_low(width - u32::from(self.len));
        (addr & !host) == net
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let written: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{s}` is not a CIDR like 10.0.0.0/8"))?;
        let max = if written.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => Some(l)
                .filter(|l| l.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|l| l.parse::<u8>().ok())
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("`{s}`: prefix length must be 0-{max}"))?,
        };
        // `::ffff:a.b.c.d/len` is the IPv4 block a.b.c.d/(len - 96).
        let ip = written.to_canonical();
        let len = if ip.is_ipv4() && written.is_ipv6() {
            len.checked_sub(96).ok_or_else(|| {
                format!("`{s}`: an IPv4-mapped block needs a prefix of at least 96")
            })?
        } else {
            len
        };
        let (value, width) = bits(ip);
        if value & mask_low(width - u32::from(len)) != 0 {
            return Err(format!(
                "`{s}` has host bits set; did you mean the network address?"
            ));
        }
        Ok(Cidr { net: ip, len })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_matches() {
        assert!(c("10.0.0.0/8").contains("10.200.1.1".parse().unwrap()));
        assert!(!c("10.0.0.0/8").contains("11.0.0.1".parse().unwrap()));
        assert!(c("2001:db8::/32").contains("2001:db8::1".parse().unwrap()));
        assert!(!c("2001:db8::/32").contains("10.0.0.1".parse().unwrap()));
        assert!(c("0.0.0.0/0").contains("192.0.2.1".parse().unwrap()));
        assert_eq!(c("192.0.2.7").to_string(), "192.0.2.7/32");
        assert!(
            "10.0.0.1/8"
                .parse::<Cidr>()
                .unwrap_err()
                .contains("host bits")
        );
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0.0/+8".parse::<Cidr>().is_err());
        assert!("10.0.0.0/".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
    }

    #[test]
    fn covering_masks_host_bits() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            Cidr::covering(ip("10.1.2.3"), 16).to_string(),
            "10.1.0.0/16"
        );
        assert_eq!(
            Cidr::covering(ip("::ffff:10.1.2.3"), 24).to_string(),
            "10.1.2.0/24"
        );
        assert_eq!(
            Cidr::covering(ip("10.1.2.3"), 64).to_string(),
            "10.1.2.3/32"
        );
        assert_eq!(
            Cidr::covering(ip("2001:db8:1:2:3:4:5:6"), 64).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(Cidr::covering(ip("2001:db8::1"), 0).to_string(), "::/0");
    }

    #[test]
    fn ipv4_mapped_ipv6_counts_as_ipv4() {
        assert!(c("127.0.0.0/8").contains("::ffff:127.0.0.1".parse().unwrap()));
        assert_eq!(c("::ffff:10.0.0.0/104").to_string(), "10.0.0.0/8");
        assert!("::ffff:10.0.0.0/8".parse::<Cidr>().is_err());
    }
}
