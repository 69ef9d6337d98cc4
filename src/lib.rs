//! tollgate: a layer-4 load balancer.
//!
//! Two planes that never block each other:
//!
//! - the **data plane** — `proxy` (listeners, accept loops, one task per connection, byte
//!   forwarding), `balance` (pure backend selection) and `sys` (the only `unsafe`: splice,
//!   pipes, rlimits) — runs on `workers` threads, each a current-thread tokio runtime with its
//!   own `SO_REUSEPORT` sockets;
//! - the **control plane** — `app` (start, signals, drain), `health`, `discovery` (DNS-named
//!   backends) — builds an immutable
//!   [`state::Snapshot`] from a validated [`config::Config`] and publishes it through an
//!   `ArcSwap` that workers load once per connection.
//!
//! `config` parses and validates YAML and never touches sockets; the data plane never
//! imports `config` or `app`. `demo` is used only by `tollgate demo`.

pub mod admin;
pub mod admission;
pub mod app;
pub mod balance;
pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod diff;
pub mod discovery;
pub mod health;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod signals;
pub mod state;
pub mod sys;
