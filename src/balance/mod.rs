//! Backend selection: pure functions of the pool's weights and a ticket number. No I/O, no
//! clock, no locks: the caller supplies the ticket (an atomic counter in the pool) so every
//! worker draws from one shared sequence and the weighted shares hold across workers.

pub mod round_robin;

pub use round_robin::RoundRobin;
