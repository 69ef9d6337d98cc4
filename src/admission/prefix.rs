//! A set of CIDR blocks answering "which block contains this address" in O(log n).
//!
//! Two CIDR blocks are either disjoint or one contains the other, so once nested blocks are
//! folded into the outermost one, the set is a sorted list of disjoint address ranges and a
//! lookup is one binary search (a 1000-entry ACL costs ten comparisons, not a thousand).
//! IPv4 and IPv6 ranges are kept apart; IPv4-mapped IPv6 addresses are looked up as IPv4.

use std::net::IpAddr;

use super::Cidr;

/// One disjoint range `[first, last]` of addresses and the configured block it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range<T> {
    first: T,
    last: T,
    block: Cidr,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefixSet {
    v4: Vec<Range<u32>>,
    v6: Vec<Range<u128>>,
    /// Every block as given (sorted, deduplicated), for listing.
    blocks: Vec<Cidr>,
}

fn low_mask(host_bits: u32) -> u128 {
    if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    }
}

/// Sorts ranges by start and keeps only the outermost of nested ones.
fn fold<T: Copy + Ord>(mut ranges: Vec<Range<T>>) -> Vec<Range<T>> {
    // Same start: the wider block (larger `last`) first, so it swallows the narrower one.
    ranges.sort_by(|a, b| a.first.cmp(&b.first).then(b.last.cmp(&a.last)));
    let mut out: Vec<Range<T>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last() {
            Some(prev) if r.first <= prev.last => {} // inside `prev`: CIDRs never overlap partly
            _ => out.push(r),
        }
    }
    out
}

fn find<T: Copy + Ord>(ranges: &[Range<T>], addr: T) -> Option<Cidr> {
    // The last range starting at or before `addr` is the only one that can hold it.
    let i = ranges.partition_point(|r| r.first <= addr);
    let r = ranges.get(i.checked_sub(1)?)?;
    (addr <= r.last).then_some(r.block)
}

impl PrefixSet {
    pub fn new(blocks: impl IntoIterator<Item = Cidr>) -> PrefixSet {
        let mut blocks: Vec<Cidr> = blocks.into_iter().collect();
        blocks.sort();
        blocks.dedup();
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for &block in &blocks {
            match block.network() {
                IpAddr::V4(net) => {
                    let first = u32::from(net);
                    let host = 32 - u32::from(block.prefix_len());
                    // Host bits of a 32-bit address fit in u32 once shifted back.
                    let span = u32::try_from(low_mask(host)).unwrap_or(u32::MAX);
                    v4.push(Range {
                        first,
                        last: first | span,
                        block,
                    });
                }
                IpAddr::V6(net) => {
                    let first = u128::from(net);
                    let host = 128 - u32::from(block.prefix_len());
                    v6.push(Range {
                        first,
                        last: first | low_mask(host),
                        block,
                    });
                }
            }
        }
        PrefixSet {
            v4: fold(v4),
            v6: fold(v6),
            blocks,
        }
    }

    /// The (outermost) block that contains `ip`, if any.
    #[inline]
    pub fn matching(&self, ip: IpAddr) -> Option<Cidr> {
        match ip {
            IpAddr::V4(v4) => find(&self.v4, u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => find(&self.v4, u32::from(v4)),
                None => find(&self.v6, u128::from(v6)),
            },
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.matching(ip).is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Every block as configured, sorted, duplicates removed (nested ones kept).
    pub fn blocks(&self) -> &[Cidr] {
        &self.blocks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(blocks: &[&str]) -> PrefixSet {
        PrefixSet::new(blocks.iter().map(|b| b.parse().unwrap()))
    }

    fn hit(s: &PrefixSet, ip: &str) -> Option<String> {
        s.matching(ip.parse().unwrap()).map(|c| c.to_string())
    }

    #[test]
    fn matches_the_outermost_block_and_nothing_else() {
        let s = set(&[
            "10.1.0.0/16",
            "10.0.0.0/8",
            "192.0.2.7",
            "2001:db8::/32",
            "2001:db8:1::/48",
            "0.0.0.0/32",
        ]);
        assert_eq!(hit(&s, "10.1.2.3").as_deref(), Some("10.0.0.0/8"));
        assert_eq!(hit(&s, "10.255.255.255").as_deref(), Some("10.0.0.0/8"));
        assert_eq!(hit(&s, "11.0.0.0"), None);
        assert_eq!(hit(&s, "9.255.255.255"), None);
        assert_eq!(hit(&s, "192.0.2.7").as_deref(), Some("192.0.2.7/32"));
        assert_eq!(hit(&s, "192.0.2.8"), None);
        assert_eq!(hit(&s, "0.0.0.0").as_deref(), Some("0.0.0.0/32"));
        assert_eq!(hit(&s, "2001:db8:1::9").as_deref(), Some("2001:db8::/32"));
        assert_eq!(hit(&s, "2001:db9::"), None);
        assert_eq!(s.len(), 6, "the listing keeps nested blocks");
    }

    #[test]
    fn mapped_addresses_are_looked_up_as_ipv4_and_families_stay_apart() {
        let s = set(&["127.0.0.0/8", "::/0"]);
        assert_eq!(hit(&s, "::ffff:127.0.0.5").as_deref(), Some("127.0.0.0/8"));
        assert_eq!(hit(&s, "::1").as_deref(), Some("::/0"));
        assert_eq!(hit(&s, "128.0.0.1"), None, "::/0 does not hold IPv4");
        let all4 = set(&["0.0.0.0/0"]);
        assert_eq!(hit(&all4, "255.255.255.255").as_deref(), Some("0.0.0.0/0"));
        assert_eq!(hit(&all4, "::2"), None);
    }

    /// Against a linear scan over random blocks and addresses.
    #[test]
    fn agrees_with_a_linear_scan() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut blocks = Vec::new();
        for _ in 0..300 {
            // Mostly /8-/32, so that most addresses fall outside every block.
            let len = 8 + (next() % 25) as u8;
            let addr = (next() as u32) & !(u32::try_from(low_mask(32 - u32::from(len))).unwrap());
            blocks.push(format!("{}/{len}", std::net::Ipv4Addr::from(addr)));
        }
        let cidrs: Vec<Cidr> = blocks.iter().map(|b| b.parse().unwrap()).collect();
        let s = PrefixSet::new(cidrs.clone());
        for _ in 0..20_000 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(next() as u32));
            let linear = cidrs.iter().any(|c| c.contains(ip));
            let found = s.matching(ip);
            assert_eq!(found.is_some(), linear, "{ip}");
            if let Some(c) = found {
                assert!(c.contains(ip));
            }
        }
    }
}
