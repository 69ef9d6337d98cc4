//! The DNS client: hickory-resolver asked one question at a time, with its cache off (the
//! TTL policy is ours, in `answer.rs`), no hosts file and no search domains (every name is
//! absolute), and its errors sorted into the few outcomes the policy knows.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};

use super::answer::{Failure, Reply, Round, Srv};

/// SRV targets asked per round at most (lowest priorities first): an answer naming more is
/// cut here, so one record set cannot make a round unbounded.
pub const MAX_SRV_TARGETS: usize = 256;

/// Records taken from one answer at most (a TCP answer can carry thousands).
pub const MAX_RECORDS: usize = 1024;

/// A resolver for one `resolver` config.
#[derive(Clone)]
pub struct Dns {
    resolver: TokioResolver,
    /// The nameservers asked, for status and logs.
    pub servers: Vec<SocketAddr>,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns")
            .field("servers", &self.servers)
            .finish()
    }
}

impl Dns {
    /// Asks `nameservers`, or those of `/etc/resolv.conf` when the list is empty. Must be
    /// called inside a tokio runtime (the resolver's connections live on it).
    pub fn new(nameservers: &[SocketAddr], timeout: Duration) -> Result<Dns, String> {
        let servers = if nameservers.is_empty() {
            let (system, _) = hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| format!("cannot read /etc/resolv.conf: {e}"))?;
            let mut found: Vec<SocketAddr> = Vec::new();
            for ns in system.name_servers() {
                let port = ns.connections.first().map_or(53, |c| c.port);
                let addr = SocketAddr::new(ns.ip, port);
                if !found.contains(&addr) {
                    found.push(addr);
                }
            }
            if found.is_empty() {
                return Err("/etc/resolv.conf names no nameserver".to_owned());
            }
            found
        } else {
            nameservers.to_vec()
        };
        let mut config = ResolverConfig::default();
        for s in &servers {
            let connection = |mut c: ConnectionConfig| {
                c.port = s.port();
                c
            };
            config.name_servers.push(NameServerConfig::new(
                s.ip(),
                true,
                vec![
                    connection(ConnectionConfig::udp()),
                    connection(ConnectionConfig::tcp()),
                ],
            ));
        }
        let mut opts = ResolverOpts::default();
        opts.timeout = timeout;
        opts.attempts = 1; // one retry: a query is sent twice before it fails
        opts.cache_size = 0;
        opts.use_hosts_file = ResolveHosts::Never;
        opts.ndots = 0;
        opts.num_concurrent_reqs = 1; // servers in order, as resolv.conf means them
        let resolver = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|e| format!("cannot build the DNS resolver: {e}"))?;
        Ok(Dns { resolver, servers })
    }

    /// One question: the records of `kind` at `name` (absolute, no trailing dot).
    async fn ask(&self, name: &str, kind: RecordType) -> Reply<RData> {
        match self.resolver.lookup(format!("{name}."), kind).await {
            Ok(lookup) => {
                let answers = lookup.answers();
                let data: Vec<RData> = answers
                    .iter()
                    .filter(|r| r.record_type() == kind)
                    .take(MAX_RECORDS)
                    .map(|r| r.data.clone())
                    .collect();
                let ttl = answers
                    .iter()
                    .filter(|r| r.record_type() == kind)
                    .map(|r| r.ttl)
                    .min()
                    .unwrap_or(0);
                Reply::Records(ttl, data)
            }
            Err(e) => classify(e),
        }
    }

    async fn addresses(&self, name: &str) -> (Reply<IpAddr>, Reply<IpAddr>) {
        let (a, aaaa) = tokio::join!(
            self.ask(name, RecordType::A),
            self.ask(name, RecordType::AAAA)
        );
        let ip = |d: RData| match d {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        };
        (a.map(ip), aaaa.map(ip))
    }

    /// A `host:` entry's round: A and AAAA of the name.
    pub async fn host(&self, name: &str) -> Round {
        let (a, aaaa) = self.addresses(name).await;
        Round {
            srv: None,
            addresses: vec![(name.to_owned(), a, aaaa)],
        }
    }

    /// An `srv:` entry's round: the SRV records, then A and AAAA of every target, taken from
    /// this answer or, when it brought no records, from `held` (the targets still in force,
    /// so their addresses stay fresh while the SRV question fails).
    pub async fn srv(&self, name: &str, held: Vec<String>) -> Round {
        let srv = self.ask(name, RecordType::SRV).await.map(|d| match d {
            RData::SRV(s) => {
                let target = s.target.to_ascii().to_ascii_lowercase();
                let target = target.strip_suffix('.').unwrap_or(&target).to_owned();
                Some(Srv {
                    priority: s.priority,
                    weight: s.weight,
                    port: s.port,
                    target,
                })
            }
            _ => None,
        });
        let mut targets = match &srv {
            Reply::Records(_, records) if !records.is_empty() => super::addresses::targets(records),
            _ => held,
        };
        if targets.len() > MAX_SRV_TARGETS {
            tracing::warn!(
                name,
                targets = targets.len(),
                kept = MAX_SRV_TARGETS,
                "SRV answer names too many targets; the lowest priorities are kept"
            );
            targets.truncate(MAX_SRV_TARGETS);
        }
        let mut asked = tokio::task::JoinSet::new();
        for t in targets {
            let dns = self.clone();
            asked.spawn(async move {
                let (a, aaaa) = dns.addresses(&t).await;
                (t, a, aaaa)
            });
        }
        let mut addresses = Vec::new();
        while let Some(done) = asked.join_next().await {
            if let Ok(one) = done {
                addresses.push(one);
            }
        }
        addresses.sort_by(|x, y| x.0.cmp(&y.0));
        Round {
            srv: Some(srv),
            addresses,
        }
    }
}

impl<T> Reply<T> {
    /// Converts the records, dropping the ones `f` cannot use.
    fn map<U>(self, f: impl Fn(T) -> Option<U>) -> Reply<U> {
        match self {
            Reply::Records(ttl, data) => {
                Reply::Records(ttl, data.into_iter().filter_map(f).collect())
            }
            Reply::NxDomain => Reply::NxDomain,
            Reply::NoData => Reply::NoData,
            Reply::Failed(e) => Reply::Failed(e),
        }
    }
}

/// Sorts a resolver error into the policy's outcomes.
fn classify<T>(e: NetError) -> Reply<T> {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(no))
            if no.response_code == ResponseCode::NXDomain =>
        {
            Reply::NxDomain
        }
        NetError::Dns(DnsError::NoRecordsFound(_)) => Reply::NoData,
        NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)) => {
            Reply::Failed(Failure::ServFail)
        }
        NetError::Dns(DnsError::ResponseCode(ResponseCode::Refused)) => {
            Reply::Failed(Failure::Refused)
        }
        NetError::Timeout => Reply::Failed(Failure::Timeout),
        other => Reply::Failed(Failure::Other(other.to_string())),
    }
}
