//! The serde mirror of the YAML file: every key of DESIGN.md §3.3, nothing interpreted.
//!
//! Each struct denies unknown fields and the loader rejects duplicate keys, so a typo is an
//! error with a line and column, never a silently ignored setting. Values that `validate.rs`
//! must check are kept as `Spanned<...>` so its errors can point at them. Nothing here
//! decides what a value means.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde_saphyr::Spanned;

pub type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub workers: Option<S<Workers>>,
    pub forwarding: Option<S<String>>,
    pub admin: Option<S<AdminFile>>,
    pub resolver: Option<S<ResolverFile>>,
    pub shutdown: Option<ShutdownFile>,
    pub listeners: Option<S<BTreeMap<String, S<ListenerFile>>>>,
    pub pools: Option<S<BTreeMap<String, S<PoolFile>>>>,
}

/// `workers: auto` or a positive count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    Auto,
    Count(u64),
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Workers;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`auto` or a number of worker threads")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Workers, E> {
                Ok(Workers::Count(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Workers, E> {
                u64::try_from(v)
                    .map(Workers::Count)
                    .map_err(|_| E::custom("workers must be `auto` or a positive number"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Workers, E> {
                match v {
                    "auto" => Ok(Workers::Auto),
                    _ => Err(E::custom("workers must be `auto` or a positive number")),
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    pub bind: Option<S<String>>,
    pub token_file: Option<S<String>>,
    pub allowed_hosts: Option<Vec<S<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolverFile {
    pub nameservers: Option<Vec<S<String>>>,
    pub min_ttl: Option<S<String>>,
    pub max_ttl: Option<S<String>>,
    pub negative_hold: Option<S<String>>,
    pub timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownFile {
    pub drain_timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
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

impl<'de> Deserialize<'de> for Bind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Bind;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an address like \"0.0.0.0:80\" or a list of them")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Bind, E> {
                Ok(Bind::One(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bind, A::Error> {
                let mut all = Vec::new();
                while let Some(item) = seq.next_element::<S<String>>()? {
                    all.push(item);
                }
                Ok(Bind::Many(all))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniFile {
    pub routes: Option<Vec<SniRouteFile>>,
    pub default_pool: Option<S<String>>,
    pub peek_timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniRouteFile {
    #[serde(rename = "match")]
    pub matches: Vec<S<String>>,
    pub pool: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyProtocolFile {
    pub send: Option<S<String>>,
    pub accept_from: Option<S<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessFile {
    pub allow: Option<S<Vec<String>>>,
    pub deny: Option<S<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub max_connections: Option<S<u64>>,
    pub per_source: Option<S<PerSourceFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
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

impl<'de> Deserialize<'de> for NoneOr<u64> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = NoneOr<u64>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a non-negative number or `none`")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(NoneOr::Some(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(NoneOr::Some)
                    .map_err(|_| E::custom("must be a non-negative number or `none`"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "none" => Ok(NoneOr::None),
                    _ => Err(E::custom("must be a non-negative number or `none`")),
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsFile {
    pub connect: Option<S<String>>,
    pub idle: Option<S<String>>,
    pub proxy_header: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UdpFile {
    pub session_idle: Option<S<String>>,
    pub max_sessions: Option<S<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendFile {
    pub address: Option<S<String>>,
    pub host: Option<S<String>>,
    pub port: Option<S<u64>>,
    pub srv: Option<S<String>>,
    pub weight: Option<S<u64>>,
    pub backup: Option<S<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFile {
    #[serde(rename = "type")]
    pub kind: Option<S<String>>,
    pub interval: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub rise: Option<S<u64>>,
    pub fall: Option<S<u64>>,
    pub port: Option<S<u64>>,
    pub send: Option<S<String>>,
    pub expect: Option<S<String>>,
    pub http: Option<HttpCheckFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCheckFile {
    pub path: Option<S<String>>,
    pub host: Option<S<String>>,
    pub expect_status: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveFile {
    pub consecutive_failures: Option<S<u64>>,
}
