//! The catalog of every metric family tollgate exports: name, help text, label names and
//! type, in the order `/metrics` lists them. Only what is listed here is exported: a sample
//! under any other name never leaves the collector.

use prometheus::proto::MetricType;

/// (name, help, labels, type) of every tollgate metric.
pub(super) const FAMILIES: &[(&str, &str, &[&str], MetricType)] = &[
    (
        "tollgate_build_info",
        "Build information; always 1. rustc: the compiler's version; commit: the git commit built from (unknown outside a git checkout).",
        &["version", "rustc", "commit"],
        MetricType::GAUGE,
    ),
    (
        "tollgate_config_generation",
        "Generation of the running config: 1 at start, +1 per successful reload.",
        &[],
        MetricType::GAUGE,
    ),
    (
        "tollgate_config_reloads_total",
        "Config reloads by result (success, failure).",
        &["result"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_upgrades_total",
        "Binary upgrades by result: success (counted by the new process), refused (the new binary refused the config), rejected (none was started: one in progress, a drain), failed (the new process crashed, timed out or spoke another protocol; the old one kept serving).",
        &["result"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_upgrade_connections_handed_over_total",
        "Established connections taken over from the previous process by binary upgrades (counted by the process that took them, and carried on by later ones).",
        &[],
        MetricType::COUNTER,
    ),
    (
        "tollgate_config_last_reload_successful",
        "1 when the last reload was applied (or, before any reload, start-up loaded the config); 0 when it was refused and an older config stays in force.",
        &[],
        MetricType::GAUGE,
    ),
    (
        "tollgate_config_last_reload_success_timestamp_seconds",
        "Unix time the config in force was loaded: start-up, or the last successful reload.",
        &[],
        MetricType::GAUGE,
    ),
    (
        "tollgate_listener_connections_accepted_total",
        "Connections accepted.",
        &["listener"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_listener_connections_rejected_total",
        "Connections closed without being proxied, by reason.",
        &["listener", "reason"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_listener_connections_aborted_total",
        "Proxied connections ended by a failure of one leg, by the leg that failed (side: client, backend) and how (reason: reset by the peer, or error: any other I/O failure). Both legs were reset, not closed, so neither peer mistakes the cut for a complete transfer.",
        &["listener", "side", "reason"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_listener_sources_tracked",
        "Source groups the per-source limiter tracks now (bounded by max_tracked_sources).",
        &["listener"],
        MetricType::GAUGE,
    ),
    (
        "tollgate_dns_resolutions_total",
        "DNS resolution rounds of host/srv backends by result (success, nxdomain, empty, timeout, servfail, refused, error).",
        &["pool", "result"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_dns_answer_age_seconds",
        "Seconds since the oldest DNS answer a pool's backends come from was received; grows while lookups fail and the last answer stays in force.",
        &["pool"],
        MetricType::GAUGE,
    ),
    (
        "tollgate_listener_connections_active",
        "Connections open now.",
        &["listener"],
        MetricType::GAUGE,
    ),
    (
        "tollgate_udp_sessions_active",
        "UDP sessions (flows) open now on the listener, across workers; udp.max_sessions bounds it.",
        &["listener"],
        MetricType::GAUGE,
    ),
    (
        "tollgate_udp_sessions_total",
        "UDP sessions made on the listener since start.",
        &["listener"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_udp_sessions_rejected_total",
        "Client datagrams that would have started a UDP session and were dropped instead, by reason (acl, rate_limit, source_limit, source_table_full, max_sessions, no_backend, local_error).",
        &["listener", "reason"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_udp_datagrams_total",
        "UDP datagrams forwarded, by direction (to_backend: from clients; to_client: replies).",
        &["listener", "direction"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_udp_bytes_total",
        "UDP payload bytes forwarded, by direction (to_backend, to_client).",
        &["listener", "direction"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_udp_datagrams_dropped_total",
        "UDP datagrams of open sessions dropped because a socket would not take them (a full send buffer, or the backend's port answered unreachable), by direction.",
        &["listener", "direction"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_udp_upstream_sockets_opened_total",
        "Sockets opened to backends for UDP sessions. With udp.responses set, a socket whose session had every reply it was owed serves the next session to that backend, so this stays below tollgate_udp_sessions_total.",
        &["listener"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_udp_upstream_sockets_idle",
        "Upstream sockets kept open between UDP sessions for reuse (udp.responses), across workers; one descriptor each, closed after 1 to 2 s unused.",
        &["listener"],
        MetricType::GAUGE,
    ),
    (
        "tollgate_udp_replies_unclaimed_total",
        "Datagrams from backends that no open UDP session was waiting for (more than udp.responses per client datagram, or after the session ended), dropped.",
        &["listener"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_listener_connections_limit",
        "The listener's cap on open connections (limits.max_connections).",
        &["listener"],
        MetricType::GAUGE,
    ),
    (
        "tollgate_listener_full_seconds_total",
        "Seconds the listener spent at its cap: every slot taken and an accepted client waiting for one, so nothing more was accepted and new clients queued in the kernel. Grows while it lasts.",
        &["listener"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_listener_accept_errors_total",
        "Failed accept() calls (EMFILE and the like).",
        &["listener"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_backend_up",
        "1 when the health checks say the backend is up, whatever its tier, weight or operator override; 0 while they say down, or before the first check of a checked pool has answered. In a pool without an active check, 1 unless passive checks took it down.",
        &["pool", "backend"],
        MetricType::GAUGE,
    ),
    (
        "tollgate_backend_weight",
        "The weight new connections are spread by now: 0 while drained, disabled, standing by as a backup, below the serving tier, or down (unless when_all_down: use_all and no backend of the pool is up); ramping during slow start.",
        &["pool", "backend"],
        MetricType::GAUGE,
    ),
    (
        "tollgate_backend_connections_active",
        "Connections open to the backend now.",
        &["pool", "backend"],
        MetricType::GAUGE,
    ),
    (
        "tollgate_backend_connections_total",
        "Connections established to the backend.",
        &["pool", "backend"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_backend_connect_failures_total",
        "Failed connects to the backend, by reason.",
        &["pool", "backend", "reason"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_backend_sent_bytes_total",
        "Bytes sent to the backend (from clients).",
        &["pool", "backend"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_backend_received_bytes_total",
        "Bytes received from the backend (to clients).",
        &["pool", "backend"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_health_checks_total",
        "Health probes by result: success, failure, local_error (the probe could not be made here, out of descriptors or ports; health unchanged). Active checks, plus the pass that ends a passive recovery in a pool without one.",
        &["pool", "backend", "result"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_backend_connect_duration_seconds",
        "Time to establish a backend connection. Buckets reach the largest timeouts.connect of the running config.",
        &["pool"],
        MetricType::HISTOGRAM,
    ),
    (
        "tollgate_pipes_open",
        "Splice pipes that exist now, in use or cached by a worker (bounded by a quarter of the open-file limit).",
        &[],
        MetricType::GAUGE,
    ),
    (
        "tollgate_pipes_created_total",
        "Splice pipes made.",
        &[],
        MetricType::COUNTER,
    ),
    (
        "tollgate_pipes_refused_total",
        "Splice pipes the kernel refused, by reason: descriptors (EMFILE, ENFILE), quota (granted below 64 KiB: an unprivileged user past fs.pipe-user-pages-soft), error. Each refusal keeps the pool from asking again for 1 s.",
        &["reason"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_pipe_fallbacks_total",
        "Bulk bursts that copied through a buffer for want of a pipe, by reason: limit (the pipe bound is reached), refused (the kernel refused the pipe), backoff (it refused one less than 1 s ago).",
        &["reason"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_access_log_lines_suppressed_total",
        "Access-log lines (logging.access) not written because logging.access_rate was exceeded: connections and UDP sessions that ended without a line.",
        &[],
        MetricType::COUNTER,
    ),
];
