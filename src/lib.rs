//! tollgate: a layer-4 load balancer.
//!
//! Two planes that never block each other:
//!
//! - the **data plane** — `proxy` (listeners, accept loops, one task per connection, byte
//!   forwarding; `proxy::udp` for UDP sessions), `balance` (pure backend selection) and `sys`
//!   (the only `unsafe`: splice, pipes, rlimits, batched UDP system calls) — runs on
//!   `workers` threads, each a current-thread tokio runtime with its own `SO_REUSEPORT`
//!   sockets;
//! - the **control plane** runs on its own thread: `control` is its one owner, which applies
//!   every change as an event in order (probe results from `health`, DNS answers from
//!   `discovery`, passive-failure notices from the data plane, admin commands from `admin`,
//!   reloads prepared off the owner by `reload`) and publishes an immutable
//!   [`state::Snapshot`] through an `ArcSwap` that workers load once per connection, plus a
//!   [`control::View`] that the admin API and `metrics` read. `health` and `discovery` never
//!   import `control`: their tasks send results on channels.
//! - `app` supervises both (start, signals, drain, a control plane that dies ends the process).
//!
//! `proxy_protocol` (PROXY v1/v2 headers) and `sni` (the server name of a TLS ClientHello,
//! and routes by it) are pure codecs of untrusted bytes, each with a fuzz target.
//! `config` parses and validates YAML and never touches sockets; the data plane never
//! imports `config`, `control` or `app`. `demo` is used only by `tollgate demo`;
//! `privileged_ports` words bind failures and `check`'s warnings about ports below 1024. The
//! only `unsafe` code is in `sys`. `admin_client` is how the commands that ask a running
//! instance something reach its admin API: `diff` (`check --diff`) and `ask` (`reload`).
//! `notify` tells systemd about start-up, reloads, the drain and the workers' liveness.
//! `upgrade` hands the listening sockets, the admin socket and the counters over to a new
//! binary (`tollgate upgrade`, SIGUSR2); its messages are a codec of bytes with a fuzz target
//! of its own.

pub mod admin;
pub mod admin_client;
pub mod admission;
pub mod app;
pub mod ask;
pub mod authority;
pub mod balance;
pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod diff;
pub mod discovery;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod privileged_ports;
pub mod proxy;
pub mod proxy_protocol;
pub mod reload;
pub mod run;
pub mod signals;
pub mod sni;
pub mod state;
pub mod sys;
pub mod upgrade;
