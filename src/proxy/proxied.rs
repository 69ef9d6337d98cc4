//! PROXY protocol on a TCP connection: the header a trusted balancer in front starts it
//! with (`proxy_protocol.accept_from`: read within `timeouts.proxy_header`, then the client it
//! names admitted), and the header written to the backend first (`proxy_protocol.send`).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::peek;
use super::throttle::LogThrottle;
use crate::admission::Ticket;
use crate::proxy_protocol;
use crate::state::ListenerSpec;

static PROXY_HEADER_LOG: LogThrottle = LogThrottle::new();

/// For a connection from an `accept_from` source: reads its PROXY header within
/// `timeouts.proxy_header`, then admits the client it names (ACLs, the deny list,
/// per-source limits), since the socket's peer was only the balancer in front. A header
/// saying `LOCAL` / `UNKNOWN` (the balancer's own connection) leaves the peer as the
/// client. `Err`: the connection was refused (why, as the `reason` label says it),
/// counted, and is to be closed.
pub async fn accept(
    client: &TcpStream,
    peer: SocketAddr,
    spec: &ListenerSpec,
) -> Result<(SocketAddr, Box<proxy_protocol::Header>, Option<Ticket>), &'static str> {
    let read = tokio::time::timeout(spec.proxy_header_timeout, peek::proxy_header(client));
    let why = match read.await {
        Ok(Ok(header)) => {
            let source = header.addresses.map_or(peer, |a| a.source);
            return match spec.admission.admit(source.ip()) {
                Ok(ticket) => Ok((source, Box::new(header), ticket)),
                Err(refused) => {
                    spec.live
                        .rejected(refused.reason)
                        .fetch_add(1, Ordering::Relaxed);
                    debug!(listener = %spec.name, client = %source, via = %peer, reason = refused.reason.label(), "refused the client a PROXY header named");
                    Err(refused.reason.label())
                }
            };
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no complete header within {:?}", spec.proxy_header_timeout),
    };
    spec.live
        .rejected_proxy_protocol
        .fetch_add(1, Ordering::Relaxed);
    if let Some(suppressed) = PROXY_HEADER_LOG.allow() {
        warn!(listener = %spec.name, via = %peer, error = %why, suppressed, "no valid PROXY header from a trusted source; closing it");
    }
    Err("proxy_protocol")
}

/// The PROXY header for a connection from `peer` to the address it reached, followed by
/// `then` (the client's bytes read before the backend was chosen): the addresses a trusted
/// balancer's header gave (`origin`, with its TLVs passed on in v2), else this host's
/// address the client reached.
pub fn header(
    client: &TcpStream,
    peer: SocketAddr,
    version: proxy_protocol::Version,
    origin: Option<&proxy_protocol::Header>,
    then: &[u8],
) -> std::io::Result<Vec<u8>> {
    let destination = match origin.and_then(|h| h.addresses) {
        Some(a) => a.destination,
        None => client.local_addr()?,
    };
    let addresses = proxy_protocol::Addresses {
        source: peer,
        destination,
        transport: proxy_protocol::Transport::Stream,
    };
    let tlvs = origin.map_or(&[][..], |h| &h.tlvs);
    let mut header = Vec::with_capacity(64 + tlvs.len() + then.len());
    proxy_protocol::encode(version, Some(addresses), tlvs, &mut header);
    header.extend_from_slice(then);
    Ok(header)
}
