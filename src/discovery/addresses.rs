//! Which backend addresses an entry's records make: every A/AAAA address of a `host:` name
//! on its port, or every SRV target's addresses on the record's port with the record's
//! priority rank and weight. Bounded whatever DNS sends: at most [`MAX_ADDRESSES`] per entry,
//! and linear in the records (a hostile answer cannot make the control plane quadratic).
//! Output is sorted, so an answer that only rotates its records changes nothing.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use super::answer::{NameState, Resolved, Srv};

/// Addresses one entry may contribute to its pool; the rest of an answer is left out.
pub const MAX_ADDRESSES: usize = 1024;

/// The weight every SRV record weight is scaled against: the largest of a priority becomes
/// this, so dividing it among a target's addresses keeps precision.
const SRV_SCALE: u32 = 1000;

impl NameState {
    fn ips_of(&self, name: &str) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = [&self.a, &self.aaaa]
            .into_iter()
            .filter_map(|m| m.get(name))
            .flat_map(|h| h.records.iter().map(|ip| ip.to_canonical()))
            .collect();
        ips.sort();
        ips.dedup();
        ips
    }

    pub(super) fn host_addresses(&self, port: u16) -> Vec<Resolved> {
        let mut names: Vec<&String> = self.a.keys().chain(self.aaaa.keys()).collect();
        names.sort();
        names.dedup();
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for ip in names.into_iter().flat_map(|n| self.ips_of(n)) {
            let address = SocketAddr::new(ip, port);
            if out.len() < MAX_ADDRESSES && seen.insert(address) {
                out.push(Resolved {
                    address,
                    weight: None,
                    rank: 0,
                });
            }
        }
        out.sort_by_key(|r| r.address);
        out
    }

    /// SRV records lowest priority first; for one address named twice, the first wins. A
    /// record's weight is shared among its target's addresses, so a target's share follows
    /// its record (RFC 2782), however many addresses it has.
    pub(super) fn srv_addresses(&self) -> Vec<Resolved> {
        let mut records: Vec<&Srv> = self
            .srv
            .records
            .iter()
            .filter(|r| !r.target.is_empty() && r.port != 0)
            .collect();
        records
            .sort_by(|x, y| (x.priority, &x.target, x.port).cmp(&(y.priority, &y.target, y.port)));
        let mut priorities: Vec<u16> = records.iter().map(|r| r.priority).collect();
        priorities.dedup();
        // Weights only compete within a priority (one tier serves at a time).
        let mut max_weight: std::collections::HashMap<u16, u16> = std::collections::HashMap::new();
        for r in &records {
            let m = max_weight.entry(r.priority).or_default();
            *m = (*m).max(r.weight);
        }
        let mut seen = HashSet::new();
        let mut ips_of = std::collections::HashMap::new();
        let mut out = Vec::new();
        for r in records {
            if out.len() >= MAX_ADDRESSES {
                break;
            }
            let rank = priorities
                .iter()
                .position(|p| *p == r.priority)
                .unwrap_or(0);
            let ips: &Vec<IpAddr> = ips_of
                .entry(&r.target)
                .or_insert_with(|| self.ips_of(&r.target));
            let share = srv_weight(r.weight, max_weight.get(&r.priority).copied().unwrap_or(0))
                / u32::try_from(ips.len().max(1)).unwrap_or(1);
            for ip in ips {
                let address = SocketAddr::new(*ip, r.port);
                if out.len() < MAX_ADDRESSES && seen.insert(address) {
                    out.push(Resolved {
                        address,
                        weight: Some(share.max(1)),
                        rank: u32::try_from(rank).unwrap_or(u32::MAX),
                    });
                }
            }
        }
        out
    }
}

/// The targets of `records`, lowest priority first, each once.
pub(super) fn targets(records: &[Srv]) -> Vec<String> {
    let mut sorted: Vec<&Srv> = records.iter().filter(|r| !r.target.is_empty()).collect();
    sorted.sort_by(|x, y| (x.priority, &x.target).cmp(&(y.priority, &y.target)));
    let mut seen = HashSet::new();
    sorted
        .into_iter()
        .filter(|r| seen.insert(&r.target))
        .map(|r| r.target.clone())
        .collect()
}

/// An SRV weight (0-65535) as a backend weight: scaled so the largest of its priority is
/// 1000.
/// Weight 0 becomes 1 ("a very small chance", RFC 2782); when every weight is 0, all are
/// equal.
pub fn srv_weight(weight: u16, max_in_answer: u16) -> u32 {
    if max_in_answer == 0 {
        return SRV_SCALE;
    }
    let (w, max) = (u32::from(weight), u32::from(max_in_answer));
    ((w * SRV_SCALE + max / 2) / max).max(1)
}
