//! The typed, validated configuration: what `validate.rs` produces and `app.rs` consumes.
//! Every value here is already checked; nothing downstream parses a string.

use std::net::SocketAddr;

pub use crate::proxy_protocol::Version as ProxyVersion;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use crate::admission::Cidr;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub workers: Workers,
    pub admin: Option<Admin>,
    pub forwarding: Forwarding,
    pub drain_timeout: Duration,
    pub resolver: Resolver,
    pub logging: Logging,
    /// Sorted by name.
    pub listeners: Vec<Listener>,
    /// Sorted by name.
    pub pools: Vec<Pool>,
}

/// The admin HTTP API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub bind: SocketAddr,
    pub token_file: Option<std::path::PathBuf>,
    /// The bearer token read from `token_file`; never printed or served.
    pub token: Option<Secret>,
    /// Names (or `name:port`) a request's `Host` may carry besides the bind's own
    /// addresses (DNS-rebinding protection; `admin/guard.rs`).
    pub allowed_hosts: Vec<crate::authority::Authority>,
}

/// `resolver`: how `host:` and `srv:` backends are looked up and how long answers last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolver {
    /// Empty: the nameservers of `/etc/resolv.conf`, read when resolution starts.
    pub nameservers: Vec<SocketAddr>,
    /// A record TTL below this (0 too) is raised to it: no query storms.
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    /// NXDOMAIN or an empty answer must persist this long before hosts are removed.
    pub negative_hold: Duration,
    /// How long one query waits for an answer; a query is sent twice before it fails.
    pub timeout: Duration,
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver {
            nameservers: Vec::new(),
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(300),
            negative_hold: Duration::from_secs(30),
            timeout: Duration::from_secs(2),
        }
    }
}

/// `logging`: the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Logging {
    /// One line per connection and UDP session at its end.
    pub access: bool,
    /// At most this many lines (count, period) beyond a burst of one period's count; the
    /// rest are counted, not written. `None`: no bound.
    pub access_rate: Option<(u64, Duration)>,
}

impl Default for Logging {
    fn default() -> Self {
        Logging {
            access: false,
            access_rate: Some((1000, Duration::from_secs(1))),
        }
    }
}

/// A value that must not appear in logs or API answers.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// One per available core.
    Auto,
    Fixed(NonZeroUsize),
}

impl Workers {
    pub fn resolve(self) -> usize {
        match self {
            Workers::Fixed(n) => n.get(),
            Workers::Auto => std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
        }
    }
}

/// How bytes move between the two legs of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarding {
    /// `splice(2)` through a pipe, with a buffered copy when no pipe can be had.
    Splice,
    /// Always a buffered copy through user space.
    Copy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    /// Datagrams, balanced as sessions (flows) keyed by client and local address.
    Udp(UdpSettings),
}

impl Protocol {
    pub fn transport(self) -> crate::state::Transport {
        match self {
            Protocol::Tcp => crate::state::Transport::Tcp,
            Protocol::Udp(_) => crate::state::Transport::Udp,
        }
    }

    pub fn is_udp(self) -> bool {
        matches!(self, Protocol::Udp(_))
    }

    /// As written in the file.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp(_) => "udp",
        }
    }
}

/// `listeners.*.udp`: how a UDP listener's sessions live and end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpSettings {
    /// A session with no datagram either way for this long ends.
    pub session_idle: Duration,
    /// Sessions open at once on this listener (each holds one upstream socket); a new
    /// client beyond it is dropped, counted as `max_sessions`.
    pub max_sessions: usize,
    /// The file set no `max_sessions`: it was sized from the open-file limit.
    pub max_sessions_sized: bool,
    /// Replies after which a session ends (1 for DNS); `None`: only idleness ends it.
    pub responses: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: String,
    pub protocol: Protocol,
    pub bind: Vec<SocketAddr>,
    /// Where connections go; `None` when `sni` routes them.
    pub pool: Option<String>,
    /// Routes by the TLS server name (tcp only).
    pub sni: Option<Sni>,
    pub max_connections: usize,
    /// The file set no `max_connections`: it was sized from the open-file limit.
    pub max_connections_sized: bool,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub proxy_header_timeout: Duration,
    /// `proxy_protocol.send`: the PROXY header written to each backend connection first.
    pub proxy_send: Option<ProxyVersion>,
    /// `proxy_protocol.accept_from`: sources whose connections must start with a PROXY
    /// header, whose address then stands for the client's.
    pub proxy_accept: Vec<Cidr>,
    pub access: Access,
    /// Per-source limits; `None` when neither a rate nor a concurrency cap is set.
    pub per_source: Option<PerSource>,
}

/// `listeners.*.sni`: routes by the ClientHello's server name, checked (patterns parsed, pools
/// known, each pattern once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sni {
    pub routes: Vec<SniRoute>,
    /// For names no route matches, and ClientHellos without one; `None`: refuse them.
    pub default_pool: Option<String>,
    pub peek_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniRoute {
    pub pattern: crate::sni::Pattern,
    pub pool: String,
}

impl Sni {
    /// The routes as the file groups them: each pool (in the order first named) with the
    /// patterns that lead to it.
    pub fn by_pool(&self) -> Vec<(&str, Vec<String>)> {
        let mut pools: Vec<(&str, Vec<String>)> = Vec::new();
        for r in &self.routes {
            match pools.iter_mut().find(|(p, _)| *p == r.pool) {
                Some((_, names)) => names.push(r.pattern.to_string()),
                None => pools.push((&r.pool, vec![r.pattern.to_string()])),
            }
        }
        pools
    }

    /// As `GET /api/v1/config` and the status show it, the default filled in.
    pub fn to_json(&self) -> serde_json::Value {
        let routes: Vec<serde_json::Value> = self
            .by_pool()
            .into_iter()
            .map(|(pool, names)| serde_json::json!({"match": names, "pool": pool}))
            .collect();
        serde_json::json!({
            "routes": routes,
            "default_pool": self.default_pool,
            "peek_timeout": super::values::format_duration(self.peek_timeout),
        })
    }
}

impl Listener {
    /// Every pool the listener sends connections to.
    pub fn pools(&self) -> impl Iterator<Item = &str> + '_ {
        let routed = self.sni.iter().flat_map(|s| {
            s.routes
                .iter()
                .map(|r| r.pool.as_str())
                .chain(s.default_pool.as_deref())
        });
        self.pool.as_deref().into_iter().chain(routed)
    }
}

/// `listeners.*.access`: deny wins; a non-empty allow list admits only its blocks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Access {
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
}

/// `listeners.*.limits.per_source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerSource {
    /// `count` new connections per `period`.
    pub connection_rate: Option<(u64, Duration)>,
    pub burst: u32,
    pub max_connections: Option<u32>,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    pub exempt: Vec<Cidr>,
    pub max_tracked_sources: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConnections,
    RandomTwo,
    /// Consistent hashing of the client: `hash: source_ip` (false) or `source_ip_port` (true).
    Maglev {
        with_port: bool,
    },
}

impl Balance {
    pub fn label(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastConnections => "least_connections",
            Balance::RandomTwo => "random_two",
            Balance::Maglev { .. } => "maglev",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub name: String,
    pub balance: Balance,
    pub health_check: Option<HealthCheck>,
    pub connect_retries: u32,
    /// Literal `address:` backends, then (in a running instance's effective config) the
    /// addresses the `named` entries resolved to.
    pub backends: Vec<Backend>,
    /// `host:` and `srv:` entries, resolved at run time (`crate::discovery`).
    pub named: Vec<Named>,
    /// A recovered backend ramps from ~0 to its weight over this long (zero: at once).
    pub slow_start: Duration,
    /// `when_all_down: use_all`: with no backend up, spread over all of them anyway.
    pub use_all_when_down: bool,
    /// Connect failures in a row that mark a backend down (passive checks).
    pub passive_failures: u32,
}

/// An active health check of every backend of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive passes that bring a down backend up.
    pub rise: u32,
    /// Consecutive failures that take an up backend down.
    pub fall: u32,
    /// Probe this port instead of the traffic port.
    pub port: Option<u16>,
    /// A PROXY header (`LOCAL` in v2, `UNKNOWN` in v1: a check, not a client) written first
    /// on each TCP probe, for backends that require one on every connection.
    pub proxy_protocol: Option<ProxyVersion>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// A TCP connect.
    Tcp,
    /// Connect, send bytes, and the reply must start with `expect`.
    SendExpect { send: Vec<u8>, expect: Vec<u8> },
    /// `GET path` with `Host`; the status must fall in one of the ranges.
    Http {
        path: String,
        host: Option<String>,
        expect_status: Vec<(u16, u16)>,
    },
    /// A datagram out; the reply must start with `expect`. ICMP unreachable is a failure.
    Udp { send: Vec<u8>, expect: Vec<u8> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub address: SocketAddr,
    /// 0..=1000; 0 takes no new connections.
    pub weight: u32,
    /// 0 = primary. A backend serves only while no backend of a lower tier is up:
    /// `backup: true` is [`BACKUP_TIER`], and an SRV answer's priorities rank 0, 1, 2, ...
    /// (plus `BACKUP_TIER` for a `backup: true` SRV entry).
    pub tier: u32,
    /// The DNS name it was resolved from; `None` for a literal address.
    pub origin: Option<Arc<str>>,
}

/// The tier of `backup: true` backends: after every SRV priority of a primary entry.
pub const BACKUP_TIER: u32 = 1 << 16;

/// A backend entry named in DNS.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Named {
    pub lookup: Lookup,
    /// `host:` the weight of every address; `srv:` records carry their own (this is 1).
    pub weight: u32,
    pub backup: bool,
}

/// What to ask DNS. Names are lower case, without the trailing dot, and always absolute
/// (no search domains).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lookup {
    /// Every A and AAAA address, on `port`.
    Host { name: String, port: u16 },
    /// Every SRV target's addresses, on the record's port.
    Srv { name: String },
}

impl Lookup {
    pub fn name(&self) -> &str {
        match self {
            Lookup::Host { name, .. } | Lookup::Srv { name } => name,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Lookup::Host { .. } => "host",
            Lookup::Srv { .. } => "srv",
        }
    }
}

impl std::fmt::Display for Lookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lookup::Host { name, port } => write!(f, "host {name} port {port}"),
            Lookup::Srv { name } => write!(f, "srv {name}"),
        }
    }
}

/// Defaults of DESIGN.md §3.3, in one place.
pub mod defaults {
    use std::time::Duration;
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
    /// `limits.max_connections` when the file sets none: the most that fit the open-file
    /// limit, and never more than 100 000. A default must not promise what the process
    /// cannot hold: past the limit, accepts fail with EMFILE instead of waiting in the
    /// kernel's queue at a cap. Each connection holds two sockets; a quarter of the limit is
    /// left to pipes (their pool's bound) and 96 descriptors to everything else (listening
    /// sockets, the admin API and its reserve, health checks, DNS).
    pub fn max_connections(fd_limit: u64) -> u64 {
        ((fd_limit - fd_limit / 4).saturating_sub(96) / 2).clamp(1, 100_000)
    }
    pub const SESSION_IDLE: Duration = Duration::from_secs(30);
    /// `udp.max_sessions` when the file sets none: as [`max_connections`], but a session
    /// holds one descriptor (its connected upstream socket), and never more than 65 536.
    pub fn max_sessions(fd_limit: u64) -> u64 {
        (fd_limit - fd_limit / 4)
            .saturating_sub(96)
            .clamp(1, 65_536)
    }
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
    pub const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(3);
    pub const CONNECT_RETRIES: u64 = 2;
    pub const WEIGHT: u64 = 1;
    pub const MAX_WEIGHT: u64 = 1000;
}

impl Config {
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name == name)
    }
}
