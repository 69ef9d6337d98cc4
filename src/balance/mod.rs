//! Backend selection: pure functions of the pool's weights, loads and the numbers the caller
//! supplies (a ticket from the pool's shared counter, a random number from the worker's
//! seeded generator, a hash of the client's key). No I/O, no clock, no locks.
//!
//! - `round_robin`: smooth weighted round robin from one shared sequence;
//! - `least_connections`: fewest open connections per unit of weight, ties broken at random;
//! - `random_two`: power of two choices on open connections;
//! - `maglev`: consistent hashing of the client (source IP, or IP and port).

pub mod least_connections;
pub mod maglev;
pub mod random_two;
pub mod round_robin;

pub use maglev::Maglev;
pub use random_two::RandomTwo;
pub use round_robin::RoundRobin;

/// SplitMix64's finaliser: a fast, well-mixed step for seeded randomness and key hashing.
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
