//! The mirror of the YAML file: every key of DESIGN.md §3.3, nothing interpreted.
//!
//! Each struct lists its keys (`record!`), and `walk.rs` reports every other key, every
//! repeated one and every value of the wrong type, so a typo is an error with a line and
//! column, never a silently ignored setting. Values that `validate.rs` must check are kept
//! as `Spanned<...>` so its errors can point at them. Nothing here decides what a value
//! means.

use std::collections::BTreeMap;

use serde_saphyr::Spanned;

use super::node::{Located, Node};
use super::walk::{FromNode, Walk};

pub type S<T> = Spanned<T>;

/// The tree's top mapping as a [`FileConfig`]; an empty file is an empty mapping.
pub(super) fn file_config(root: &Located, w: &mut Walk) -> FileConfig {
    if matches!(root.value, Node::Null) {
        return FileConfig::default();
    }
    FileConfig::from_node(root, w, "").unwrap_or_default()
}

/// `FromNode` for a struct of optional settings: the YAML key of each field is its name,
/// or the string given after `=` (`kind = "type"`).
macro_rules! record {
    ($ty:ident { $($field:ident $(= $name:literal)?),* $(,)? }) => {
        impl FromNode for $ty {
            const EXPECTED: &'static str = "a mapping";
            fn from_node(node: &Located, w: &mut Walk, key: &str) -> Option<Self> {
                const KEYS: &[&str] = &[$(record!(@key $field $($name)?)),*];
                let found = w.settings(node, key, KEYS)?;
                Some($ty { $($field: found.get(w, record!(@key $field $($name)?))),* })
            }
            fn placeholder(_node: &Located) -> Option<Self> {
                Some($ty::default())
            }
        }
    };
    (@key $field:ident $name:literal) => { $name };
    (@key $field:ident) => { stringify!($field) };
}

#[derive(Debug, Default)]
pub struct FileConfig {
    pub workers: Option<S<Workers>>,
    pub forwarding: Option<S<String>>,
    pub admin: Option<S<AdminFile>>,
    pub resolver: Option<S<ResolverFile>>,
    pub shutdown: Option<ShutdownFile>,
    pub logging: Option<LoggingFile>,
    pub listeners: Option<S<BTreeMap<String, S<ListenerFile>>>>,
    pub pools: Option<S<BTreeMap<String, S<PoolFile>>>>,
}

/// `workers: auto` or a positive count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    Auto,
    Count(u64),
}

impl FromNode for Workers {
    const EXPECTED: &'static str = "`auto` or a number of worker threads";
    fn from_node(node: &Located, w: &mut Walk, key: &str) -> Option<Self> {
        let n = w.number_or(node, key, "auto", Self::EXPECTED)?;
        Some(n.map_or(Workers::Auto, Workers::Count))
    }
}

#[derive(Debug, Default)]
pub struct AdminFile {
    pub bind: Option<S<String>>,
    pub token_file: Option<S<String>>,
    pub allowed_hosts: Option<Vec<S<String>>>,
}

#[derive(Debug, Default)]
pub struct ResolverFile {
    pub nameservers: Option<Vec<S<String>>>,
    pub min_ttl: Option<S<String>>,
    pub max_ttl: Option<S<String>>,
    pub negative_hold: Option<S<String>>,
    pub timeout: Option<S<String>>,
}

#[derive(Debug, Default)]
pub struct ShutdownFile {
    pub drain_timeout: Option<S<String>>,
}

#[derive(Debug, Default)]
pub struct LoggingFile {
    pub access: Option<S<bool>>,
    pub access_rate: Option<S<String>>,
}

#[derive(Debug, Default)]
pub struct ListenerFile {
    pub protocol: Option<S<String>>,
    pub bind: Option<S<Bind>>,
    pub pool: Option<S<String>>,
    pub sni: Option<S<SniFile>>,
    pub proxy_protocol: Option<ProxyProtocolFile>,
    pub access: Option<AccessFile>,
    pub limits: Option<LimitsFile>,
    pub timeouts: Option<TimeoutsFile>,
    pub udp: Option<S<UdpFile>>,
}

/// `bind:` takes one address or a list of them.
#[derive(Debug)]
pub enum Bind {
    One(String),
    Many(Vec<S<String>>),
}

impl FromNode for Bind {
    const EXPECTED: &'static str = "an address like \"0.0.0.0:80\" or a list of them";
    fn from_node(node: &Located, w: &mut Walk, key: &str) -> Option<Self> {
        if matches!(node.value, Node::Seq(_)) {
            return Vec::from_node(node, w, key).map(Bind::Many);
        }
        if let Some(one) = w.scalar_text(node) {
            return Some(Bind::One(one));
        }
        w.wrong_type(node, key, Self::EXPECTED);
        None
    }
}

#[derive(Debug, Default)]
pub struct SniFile {
    pub routes: Option<Vec<SniRouteFile>>,
    pub default_pool: Option<S<String>>,
    pub peek_timeout: Option<S<String>>,
}

#[derive(Debug, Default)]
pub struct SniRouteFile {
    pub matches: Option<Vec<S<String>>>,
    pub pool: Option<S<String>>,
}

#[derive(Debug, Default)]
pub struct ProxyProtocolFile {
    pub send: Option<S<String>>,
    pub accept_from: Option<S<Vec<String>>>,
}

#[derive(Debug, Default)]
pub struct AccessFile {
    pub allow: Option<S<Vec<String>>>,
    pub deny: Option<S<Vec<String>>>,
}

#[derive(Debug, Default)]
pub struct LimitsFile {
    pub max_connections: Option<S<u64>>,
    pub per_source: Option<S<PerSourceFile>>,
}

#[derive(Debug, Default)]
pub struct PerSourceFile {
    pub connection_rate: Option<S<String>>,
    pub burst: Option<S<u64>>,
    pub max_connections: Option<S<NoneOr<u64>>>,
    pub ipv4_prefix: Option<S<u8>>,
    pub ipv6_prefix: Option<S<u8>>,
    pub exempt: Option<S<Vec<String>>>,
    pub max_tracked_sources: Option<S<u64>>,
}

/// A number, or the word `none` for "no limit".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoneOr<T> {
    None,
    Some(T),
}

impl FromNode for NoneOr<u64> {
    const EXPECTED: &'static str = "a non-negative number or `none`";
    fn from_node(node: &Located, w: &mut Walk, key: &str) -> Option<Self> {
        let n = w.number_or(node, key, "none", Self::EXPECTED)?;
        Some(n.map_or(NoneOr::None, NoneOr::Some))
    }
}

#[derive(Debug, Default)]
pub struct TimeoutsFile {
    pub connect: Option<S<String>>,
    pub idle: Option<S<String>>,
    pub proxy_header: Option<S<String>>,
}

#[derive(Debug, Default)]
pub struct UdpFile {
    pub session_idle: Option<S<String>>,
    pub max_sessions: Option<S<u64>>,
    pub responses: Option<S<u64>>,
}

#[derive(Debug, Default)]
pub struct PoolFile {
    pub balance: Option<S<String>>,
    pub hash: Option<S<String>>,
    pub when_all_down: Option<S<String>>,
    pub connect_retries: Option<S<u64>>,
    pub slow_start: Option<S<String>>,
    pub backends: Option<S<Vec<S<BackendFile>>>>,
    pub health_check: Option<S<HealthCheckFile>>,
    pub passive: Option<S<PassiveFile>>,
}

#[derive(Debug, Default)]
pub struct BackendFile {
    pub address: Option<S<String>>,
    pub host: Option<S<String>>,
    pub port: Option<S<u64>>,
    pub srv: Option<S<String>>,
    pub weight: Option<S<u64>>,
    pub backup: Option<S<bool>>,
}

#[derive(Debug, Default)]
pub struct HealthCheckFile {
    pub kind: Option<S<String>>,
    pub interval: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub rise: Option<S<u64>>,
    pub fall: Option<S<u64>>,
    pub port: Option<S<u64>>,
    pub send: Option<S<String>>,
    pub expect: Option<S<String>>,
    pub http: Option<HttpCheckFile>,
    pub proxy_protocol: Option<S<String>>,
}

#[derive(Debug, Default)]
pub struct HttpCheckFile {
    pub path: Option<S<String>>,
    pub host: Option<S<String>>,
    pub expect_status: Option<S<String>>,
}

#[derive(Debug, Default)]
pub struct PassiveFile {
    pub consecutive_failures: Option<S<u64>>,
}

record!(FileConfig {
    workers,
    forwarding,
    admin,
    resolver,
    shutdown,
    logging,
    listeners,
    pools
});
record!(AdminFile {
    bind,
    token_file,
    allowed_hosts
});
record!(ResolverFile {
    nameservers,
    min_ttl,
    max_ttl,
    negative_hold,
    timeout
});
record!(ShutdownFile { drain_timeout });
record!(LoggingFile {
    access,
    access_rate
});
record!(ListenerFile {
    protocol,
    bind,
    pool,
    sni,
    proxy_protocol,
    access,
    limits,
    timeouts,
    udp
});
record!(SniFile {
    routes,
    default_pool,
    peek_timeout
});
record!(SniRouteFile { matches = "match", pool });
record!(ProxyProtocolFile { send, accept_from });
record!(AccessFile { allow, deny });
record!(LimitsFile {
    max_connections,
    per_source
});
record!(PerSourceFile {
    connection_rate,
    burst,
    max_connections,
    ipv4_prefix,
    ipv6_prefix,
    exempt,
    max_tracked_sources,
});
record!(TimeoutsFile {
    connect,
    idle,
    proxy_header
});
record!(UdpFile {
    session_idle,
    max_sessions,
    responses
});
record!(PoolFile {
    balance,
    hash,
    when_all_down,
    connect_retries,
    slow_start,
    backends,
    health_check,
    passive
});
record!(BackendFile {
    address,
    host,
    port,
    srv,
    weight,
    backup
});
record!(HealthCheckFile { kind = "type", interval, timeout, rise, fall, port, send, expect, http, proxy_protocol });
record!(HttpCheckFile {
    path,
    host,
    expect_status
});
record!(PassiveFile {
    consecutive_failures
});
