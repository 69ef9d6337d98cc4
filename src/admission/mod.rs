//! Admission: who may open a connection. Today that is the runtime deny list an operator
//! manages through the admin API (kept per listener, across reloads); configured ACLs and
//! per-source limits build on the same types. Pure: no I/O, no clock, no config types.

pub mod cidr;
pub mod deny;

pub use cidr::Cidr;
pub use deny::DenyList;
