//! A controllable authoritative DNS server for integration tests: it owns an in-process
//! hickory-server on 127.0.0.1 (UDP and TCP on one port), a table of A/AAAA/SRV record sets
//! that tests rewrite while it runs, a failure mode (SERVFAIL, REFUSED, or silence) and a
//! per-name query counter. Dropping the `DnsServer` stops its thread and runtime.
//!
//! It implements `RequestHandler` directly instead of using hickory's Catalog and zone stores:
//! tests need to swap answers, TTLs and failure modes between queries, which a plain
//! `HashMap` behind a mutex does in a few lines.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

/// How the server reacts to every query (after counting it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Answer from the record table.
    Answer,
    ServFail,
    Refused,
    /// Read the query and never answer, so clients run into their timeout.
    Drop,
}

/// One name's record sets: type → (TTL, records). A name present with an empty map exists but
/// has no data of any type (NODATA rather than NXDOMAIN).
type RecordSets = HashMap<RecordType, (u32, Vec<RData>)>;

struct State {
    names: HashMap<String, RecordSets>,
    queries: HashMap<String, usize>,
    mode: Mode,
}

/// Names compare case-insensitively and with or without the trailing dot.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn fqdn(name: &str) -> Name {
    let mut name = Name::from_ascii(name).expect("valid DNS name");
    name.set_fqdn(true);
    name
}

pub struct DnsServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl DnsServer {
    pub fn start() -> DnsServer {
        DnsServer::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
    }

    /// Serves on `at` (port 0: any free port), UDP and TCP.
    pub fn start_on(at: SocketAddr) -> DnsServer {
        let (udp, tcp) = bind_pair(at);
        let addr = udp.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            names: HashMap::new(),
            queries: HashMap::new(),
            mode: Mode::Answer,
        }));
        let handler = Handler(state.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("test-dns".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let mut server = Server::new(handler);
                    server.register_socket(tokio::net::UdpSocket::from_std(udp).unwrap());
                    // The timeout closes idle TCP connections; 32 is the per-connection
                    // response queue depth (the value hickory's own tests use).
                    let tcp = tokio::net::TcpListener::from_std(tcp).unwrap();
                    server.register_listener(tcp, Duration::from_secs(5), 32);
                    // A dropped sender also ends the wait, so a panicking test cannot leak us.
                    let _ = stopped.await;
                    server.shutdown_token().cancel();
                });
                // Dropping the runtime aborts whatever is still running (open TCP connections,
                // handlers of dropped queries), so stopping never waits on a client.
            })
            .unwrap();
        DnsServer {
            addr,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces `name`'s A set; an empty slice leaves the name existing with no A records.
    pub fn set_a(&self, name: &str, ttl: u32, ips: &[Ipv4Addr]) {
        let data = ips.iter().map(|ip| RData::A(A(*ip))).collect();
        self.set(name, RecordType::A, ttl, data);
    }

    pub fn set_aaaa(&self, name: &str, ttl: u32, ips: &[Ipv6Addr]) {
        let data = ips.iter().map(|ip| RData::AAAA(AAAA(*ip))).collect();
        self.set(name, RecordType::AAAA, ttl, data);
    }

    /// Replaces `name`'s SRV set; each record is (priority, weight, port, target).
    pub fn set_srv(&self, name: &str, ttl: u32, records: &[(u16, u16, u16, &str)]) {
        let data = records
            .iter()
            .map(|&(prio, weight, port, target)| {
                RData::SRV(SRV::new(prio, weight, port, fqdn(target)))
            })
            .collect();
        self.set(name, RecordType::SRV, ttl, data);
    }

    /// The name stops existing: every query type gets NXDOMAIN.
    pub fn remove(&self, name: &str) {
        self.state.lock().unwrap().names.remove(&key(name));
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }

    /// Queries of any type received for `name` so far, whatever the mode was.
    pub fn queries(&self, name: &str) -> usize {
        let state = self.state.lock().unwrap();
        state.queries.get(&key(name)).copied().unwrap_or(0)
    }

    fn set(&self, name: &str, rtype: RecordType, ttl: u32, data: Vec<RData>) {
        let mut state = self.state.lock().unwrap();
        let sets = state.names.entry(key(name)).or_default();
        if data.is_empty() {
            sets.remove(&rtype);
        } else {
            sets.insert(rtype, (ttl, data));
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Binds UDP on an ephemeral port, then TCP on the same port; another process may hold that
/// TCP port, so retry with a fresh UDP port a few times.
fn bind_pair(at: SocketAddr) -> (std::net::UdpSocket, std::net::TcpListener) {
    for _ in 0..20 {
        let udp = std::net::UdpSocket::bind(at).unwrap();
        let Ok(tcp) = std::net::TcpListener::bind(udp.local_addr().unwrap()) else {
            continue;
        };
        // tokio's from_std requires non-blocking sockets.
        udp.set_nonblocking(true).unwrap();
        tcp.set_nonblocking(true).unwrap();
        return (udp, tcp);
    }
    panic!("no port free for both UDP and TCP on 127.0.0.1");
}

struct Handler(Arc<Mutex<State>>);

/// What to send for one query, computed under the lock (which must not be held across the
/// `send_response` await).
enum Reply {
    Silent,
    Error(ResponseCode),
    Records {
        code: ResponseCode,
        answers: Vec<Record>,
        authority: Vec<Record>,
    },
}

/// A negative answer: no records, and the SOA in the authority section (RFC 2308).
fn negative(code: ResponseCode) -> Reply {
    Reply::Records {
        code,
        answers: Vec::new(),
        authority: vec![soa()],
    }
}

impl Handler {
    fn decide(&self, request: &Request) -> Reply {
        let Ok(info) = request.request_info() else {
            return Reply::Error(ResponseCode::FormErr);
        };
        let qname = info.query.original().name().clone();
        let qtype = info.query.query_type();
        let qkey = key(&info.query.name().to_string());
        let mut state = self.0.lock().unwrap();
        *state.queries.entry(qkey.clone()).or_default() += 1;
        match state.mode {
            Mode::Drop => return Reply::Silent,
            Mode::ServFail => return Reply::Error(ResponseCode::ServFail),
            Mode::Refused => return Reply::Error(ResponseCode::Refused),
            Mode::Answer => {}
        }
        let Some(sets) = state.names.get(&qkey) else {
            return negative(ResponseCode::NXDomain);
        };
        match sets.get(&qtype) {
            // The owner name echoes the query's spelling so case-randomising clients accept it.
            Some((ttl, data)) => Reply::Records {
                code: ResponseCode::NoError,
                answers: data
                    .iter()
                    .map(|d| Record::from_rdata(qname.clone(), *ttl, d.clone()))
                    .collect(),
                authority: Vec::new(),
            },
            None => negative(ResponseCode::NoError),
        }
    }
}

/// The SOA sent with negative answers. TTL and MINIMUM are 0 so that no resolver caches a
/// negative answer: tests create names at any moment and expect the next query to see them.
fn soa() -> Record {
    let soa = SOA::new(fqdn("ns.test"), fqdn("hostmaster.test"), 1, 60, 60, 60, 0);
    Record::from_rdata(Name::root(), 0, RData::SOA(soa))
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        // Mirror EDNS when the client used it (hickory-resolver does by default), as a real
        // server would; without it UDP answers are capped at 512 bytes.
        let edns = request.edns.as_ref().map(|req| {
            let mut edns = Edns::new();
            edns.set_max_payload(req.max_payload().max(512));
            edns
        });
        let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
        let sent = match self.decide(request) {
            Reply::Silent => return unsent(request),
            Reply::Error(code) => {
                let response = builder.error_msg(&request.metadata, code);
                response_handle.send_response(response).await
            }
            Reply::Records {
                code,
                answers,
                authority,
            } => {
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.authoritative = true;
                metadata.response_code = code;
                let none: &[Record] = &[];
                let response = builder.build(metadata, &answers, &authority, none, none);
                response_handle.send_response(response).await
            }
        };
        sent.unwrap_or_else(|_| unsent(request))
    }
}

/// The `ResponseInfo` for a query nothing was sent for (dropped, or the send failed); the
/// server only logs it.
fn unsent(request: &Request) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

/// Backends that answer each connection with their one-byte id, one per `(ip, id)`, all on
/// the same port (a `host:` entry gives every address one port). Returns the port.
pub fn id_backends_on_one_port(backends: &[(Ipv4Addr, u8)]) -> u16 {
    'again: for _ in 0..20 {
        let first = std::net::TcpListener::bind((backends[0].0, 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        let mut listeners = vec![first];
        for (ip, _) in &backends[1..] {
            match std::net::TcpListener::bind((*ip, port)) {
                Ok(l) => listeners.push(l),
                Err(_) => continue 'again,
            }
        }
        for (l, (_, id)) in listeners.into_iter().zip(backends) {
            let id = *id;
            std::thread::spawn(move || {
                for s in l.incoming() {
                    let Ok(mut s) = s else { continue };
                    let _ = std::io::Write::write_all(&mut s, &[id]);
                }
            });
        }
        return port;
    }
    panic!("no port free on every backend address");
}

/// A config with one listener `front` over pool `back`, the admin API, and a resolver that
/// asks `dns`; `resolver` and `pool` lines are added under their sections, `backends` is the
/// YAML list (indented by 6).
pub fn dns_config(dns: SocketAddr, resolver: &str, pool: &str, backends: &str) -> String {
    let mut y = format!(
        "workers: 1\nadmin:\n  bind: \"127.0.0.1:0\"\nresolver:\n  nameservers: [\"{dns}\"]\n"
    );
    for line in resolver.lines() {
        y.push_str(&format!("  {line}\n"));
    }
    y.push_str(
        "listeners:\n  front:\n    bind: \"127.0.0.1:0\"\n    pool: back\npools:\n  back:\n",
    );
    for line in pool.lines() {
        y.push_str(&format!("    {line}\n"));
    }
    y.push_str("    backends:\n");
    for line in backends.lines() {
        y.push_str(&format!("      {line}\n"));
    }
    y
}

/// 127.0.0.`last`.
pub fn lo(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// The id an `id_backends_on_one_port` backend answers through `front`; 0 when the
/// connection is closed unanswered (no backend in force).
pub fn answer_or_zero(front: SocketAddr) -> u8 {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(front).unwrap();
    let mut id = Vec::new();
    let _ = s.read_to_end(&mut id);
    id.first().copied().unwrap_or(0)
}

/// Starts tollgate on [`dns_config`] with one backend entry, `host: NAME` on `port`.
pub fn start_host(
    dns: &DnsServer,
    resolver: &str,
    pool: &str,
    name: &str,
    port: u16,
) -> tollgate::app::Server {
    let entry = format!("- {{ host: {name}, port: {port} }}");
    super::start(&dns_config(dns.addr(), resolver, pool, &entry))
}
