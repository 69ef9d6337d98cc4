//! A deny list of CIDR blocks, looked up on every accepted connection. Blocks are kept
//! sorted and deduplicated; a lookup scans them, which is cheap at the sizes an operator
//! types by hand (configured ACLs with a prefix structure arrive with per-source limits).

use std::net::IpAddr;

use super::Cidr;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DenyList {
    blocks: Vec<Cidr>,
}

impl DenyList {
    pub fn new(mut blocks: Vec<Cidr>) -> DenyList {
        blocks.sort();
        blocks.dedup();
        DenyList { blocks }
    }

    /// The first block that contains `ip`, if any.
    pub fn matching(&self, ip: IpAddr) -> Option<Cidr> {
        self.blocks.iter().copied().find(|b| b.contains(ip))
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    pub fn blocks(&self) -> &[Cidr] {
        &self.blocks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_matching_block() {
        let list = DenyList::new(vec![
            "10.0.0.0/8".parse().unwrap(),
            "192.0.2.0/24".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ]);
        assert_eq!(list.blocks().len(), 2, "deduplicated");
        assert_eq!(
            list.matching("192.0.2.9".parse().unwrap())
                .map(|c| c.to_string())
                .as_deref(),
            Some("192.0.2.0/24")
        );
        assert_eq!(list.matching("198.51.100.1".parse().unwrap()), None);
        assert!(
            DenyList::default()
                .matching("10.0.0.1".parse().unwrap())
                .is_none()
        );
    }
}
