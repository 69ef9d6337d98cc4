//! The two ends of a connection's handover, as the data plane sees them (`handoff.rs` has
//! the state and the switch): [`hand_off`] gives a frozen connection to whoever takes them
//! (the binary upgrade), and [`resume`] serves one that was frozen (in the new process, or
//! back here when the handover failed) from where it stood, to its end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpStream;
use tracing::warn;

use super::access_log::TcpRecord;
use super::copy::{self, ForwardError, FrozenFlow, Side, Start};
use super::handoff::{ConnectionState, Frozen, FrozenDirection, millis};
use super::tcp::{Active, ended, scopeguard};
use super::throttle::LogThrottle;
use super::{DataPlane, TrackerGuard};
use crate::state::{Backend, Snapshot};

static LOST_LOG: LogThrottle = LogThrottle::new();

/// What a frozen connection is, for the process that resumes it.
pub(super) fn state(
    frozen: &FrozenFlow,
    listener: &str,
    client: SocketAddr,
    backend: &Backend,
    record: &mut TcpRecord<'_>,
) -> ConnectionState {
    ConnectionState {
        listener: listener.to_owned(),
        client,
        pool: backend.stats.pool.to_string(),
        backend: backend.address,
        up: frozen.up.state,
        down: frozen.down.state,
        first_fin: frozen.first_fin.map(|s| s.label().to_owned()),
        idle_for_ms: millis(frozen.idle_for),
        age_ms: millis(record.handed_over()),
    }
}

/// Gives a frozen connection to the handover; when nobody takes them any more (it stopped
/// meanwhile), the connection carries on here.
pub(super) fn hand_off(
    (client, upstream): (TcpStream, TcpStream),
    frozen: FrozenFlow,
    state: ConnectionState,
    guard: Option<TrackerGuard>,
    plane: &Arc<DataPlane>,
) {
    // Out of this worker's event loop (deregistered), still open.
    let (client, backend) = match (client.into_std(), upstream.into_std()) {
        (Ok(c), Ok(b)) => (c, b),
        (Err(e), _) | (_, Err(e)) => {
            if let Some(suppressed) = LOST_LOG.allow() {
                warn!(listener = state.listener, client = %state.client, error = %e, suppressed, "cannot take a connection out of its worker for the handover; it is closed");
            }
            return;
        }
    };
    let frozen = Box::new(Frozen {
        client,
        backend,
        up: frozen.up.pipe,
        down: frozen.down.pipe,
        state,
        guard,
        stays: false,
    });
    if let Err(frozen) = plane.handoff.deliver(frozen) {
        tokio::spawn(resume(frozen, plane.clone(), None));
    }
}

/// The backend a frozen connection was forwarding to, in `snapshot`: by its pool and
/// address, else by its address in the listener's pool.
pub fn backend_of(snapshot: &Snapshot, state: &ConnectionState) -> Option<Arc<Backend>> {
    let find = |pool: &str| {
        snapshot
            .pool(pool)?
            .backends
            .iter()
            .find(|b| b.address == state.backend)
            .cloned()
    };
    find(&state.pool).or_else(|| {
        let listener = snapshot.listener(&state.listener)?;
        find(&listener.pool.as_ref()?.name)
    })
}

/// Serves a frozen connection from where it stood to its end. `guard`: the drain guard of
/// the worker it is resumed on (it replaces the one the connection brought). A connection whose
/// listener or backend this process does not have is closed (the receiving side checks
/// before it takes one, so that the old process keeps it instead).
pub async fn resume(frozen: Box<Frozen>, plane: Arc<DataPlane>, guard: Option<TrackerGuard>) {
    {
        let Frozen {
            client,
            backend: upstream,
            up,
            down,
            state,
            guard: brought,
            stays,
        } = *frozen;
        // The guard of the worker it runs on, when it has one: a worker waits for its own
        // tasks only, so a connection counted by another one would be cut when this one
        // ends its drain. The guard it brought is let go once this one is held.
        let _guard = guard.or(brought);
        let snapshot = plane.snapshot.load_full();
        let (Some(spec), Some(backend)) = (
            snapshot.listener(&state.listener).cloned(),
            backend_of(&snapshot, &state),
        ) else {
            if let Some(suppressed) = LOST_LOG.allow() {
                warn!(listener = state.listener, client = %state.client, backend = %state.backend, suppressed, "a handed-over connection names a listener or backend this config does not have; it is closed");
            }
            return;
        };
        drop(snapshot);
        let (client, upstream) = match (TcpStream::from_std(client), TcpStream::from_std(upstream))
        {
            (Ok(c), Ok(b)) => (c, b),
            (Err(e), _) | (_, Err(e)) => {
                if let Some(suppressed) = LOST_LOG.allow() {
                    warn!(listener = state.listener, client = %state.client, error = %e, suppressed, "cannot register a handed-over connection; it is closed");
                }
                return;
            }
        };
        let live = Active::enter(spec.live.clone());
        // At the cap, a connection already open is served anyway: only new ones wait.
        let _slot = super::slot::Slot::try_take(&spec.live);
        // Counted against its source here, where it is served now (the process it was
        // admitted in released its count when it froze it); never refused.
        let _ticket = spec.admission.readmit(state.client.ip());
        let mut record = plane.access.tcp(&spec.name, state.client);
        record.backend(backend.address);
        record.started_ago(Duration::from_millis(state.age_ms));
        let (listener, idle) = (spec.name.clone(), spec.idle_timeout);
        drop(spec);
        let stats = &*backend.stats;
        stats.active.fetch_add(1, Ordering::Relaxed);
        let _backend_active = scopeguard(|| {
            stats.active.fetch_sub(1, Ordering::Relaxed);
        });
        let side = |label: &str| match label {
            "client" => Some(Side::Client),
            "backend" => Some(Side::Backend),
            _ => None,
        };
        let thawed = FrozenFlow {
            up: FrozenDirection {
                pipe: up,
                state: state.up,
            },
            down: FrozenDirection {
                pipe: down,
                state: state.down,
            },
            first_fin: state.first_fin.as_deref().and_then(side),
            idle_for: Duration::from_millis(state.idle_for_ms),
        };
        let (result, moved) = copy::forward(
            (&client, &upstream),
            Start::Thawed(Box::new(thawed)),
            idle,
            plane.mode(),
            &plane.pipes,
            (stats, record.tally()),
            (!stays).then_some(&plane.handoff),
        )
        .await;
        if let Err(ForwardError::Frozen(frozen)) = result {
            let state = self::state(&frozen, &listener, state.client, &backend, &mut record);
            return hand_off((client, upstream), *frozen, state, _guard, &plane);
        }
        ended(
            &result,
            moved,
            &mut record,
            &live,
            (&listener, state.client, backend.address),
        );
    }
}
