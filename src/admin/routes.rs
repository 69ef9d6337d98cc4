//! Routing and handlers of the admin API. Every answer is JSON (`{"error": "..."}` on
//! failure) except `/healthz`, `/metrics` and the OpenAPI document. Every request must name
//! this API in its Host, and changes (POST, PUT, DELETE) must not come from another origin
//! (`guard.rs`); they also need the bearer token when one is configured.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{ALLOW, CONNECTION, CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use super::admission::MAX_CHANGES_IN_FLIGHT;
use super::{BODY_TIMEOUT, Ctx, MAX_BODY_BYTES, auth, guard, input, views};
use crate::control::{ActionError, BackendAction};

pub(crate) const OPENAPI: &str = include_str!("openapi.yaml");

type Reply = Response<Full<Bytes>>;

pub(crate) async fn handle(req: Request<Incoming>, ctx: Arc<Ctx>) -> Result<Reply, Infallible> {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method().clone();
    if let Some(refused) = guarded(&req, &ctx) {
        return Ok(refused);
    }
    // A declared length over the limit is refused before any route reads (or ignores) it.
    if req.body().size_hint().lower() > MAX_BODY_BYTES as u64 {
        return Ok(too_large());
    }
    let reply = match (segments.as_slice(), &method) {
        (["healthz"], &Method::GET) => text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n"),
        (["readyz"], &Method::GET) => ready(&ctx),
        (["metrics"], &Method::GET) => metrics(&ctx),
        (["api", "v1", "status"], &Method::GET) => {
            json_reply(StatusCode::OK, views::status(&ctx.control))
        }
        (["api", "v1", "config"], &Method::GET) => {
            json_reply(StatusCode::OK, views::config(&ctx.control.view().written))
        }
        (["api", "v1", "openapi.yaml"], &Method::GET) => {
            text(StatusCode::OK, "application/yaml", OPENAPI)
        }
        (["api", "v1", "reload"], &Method::POST) => match may_change(&req, &ctx) {
            Ok(_in_flight) => reload(ctx.clone()).await,
            Err(refused) => *refused,
        },
        (["api", "v1", "upgrade"], &Method::POST) => match may_change(&req, &ctx) {
            Ok(_in_flight) => upgrade(&ctx).await,
            Err(refused) => *refused,
        },
        (
            [
                "api",
                "v1",
                "pools",
                pool,
                "backends",
                backend,
                action @ ("drain" | "disable" | "enable"),
            ],
            &Method::POST,
        ) => {
            let action = match *action {
                "drain" => BackendAction::Drain,
                "disable" => BackendAction::Disable,
                _ => BackendAction::Enable,
            };
            match may_change(&req, &ctx) {
                Ok(_in_flight) => backend_action(&ctx, pool, backend, action).await,
                Err(refused) => *refused,
            }
        }
        (["api", "v1", "listeners", listener, "sources", ip], &Method::GET) => {
            explain(&ctx, listener, ip)
        }
        (
            ["api", "v1", "listeners", listener, "deny", cidr],
            m @ (&Method::POST | &Method::DELETE),
        ) => {
            let add = *m == Method::POST;
            match may_change(&req, &ctx) {
                Ok(_in_flight) => deny(&ctx, listener, cidr, add).await,
                Err(refused) => *refused,
            }
        }
        (["api", "v1", "pools", pool, "backends", backend, "weight"], &Method::PUT) => {
            let (pool, backend) = (pool.to_string(), backend.to_string());
            match may_change(&req, &ctx) {
                // The body is read within the change's slot, so slow bodies are bounded too.
                Ok(_in_flight) => match read_weight(req).await {
                    Ok(w) => backend_action(&ctx, &pool, &backend, BackendAction::Weight(w)).await,
                    Err(reply) => reply,
                },
                Err(refused) => *refused,
            }
        }
        (["api", "v1", "pools", pool, "backends", backend, "weight"], &Method::DELETE) => {
            match may_change(&req, &ctx) {
                Ok(_in_flight) => {
                    backend_action(&ctx, pool, backend, BackendAction::ClearWeight).await
                }
                Err(refused) => *refused,
            }
        }
        (segs, _) => match allowed_methods(segs) {
            Some(allow) => {
                let mut r = error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &format!("{method} is not allowed here; use {allow}"),
                );
                if let Ok(v) = allow.parse() {
                    r.headers_mut().insert(ALLOW, v);
                }
                r
            }
            None => error(StatusCode::NOT_FOUND, &format!("no such endpoint: {path}")),
        },
    };
    Ok(reply)
}

/// Every route the server answers, as (method, path template). The router below matches
/// the same shapes; a test checks this list against the router and against `openapi.yaml`.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/api/v1/status"),
    ("GET", "/api/v1/config"),
    ("GET", "/api/v1/openapi.yaml"),
    ("POST", "/api/v1/reload"),
    ("POST", "/api/v1/upgrade"),
    ("POST", "/api/v1/pools/{pool}/backends/{backend}/drain"),
    ("POST", "/api/v1/pools/{pool}/backends/{backend}/disable"),
    ("POST", "/api/v1/pools/{pool}/backends/{backend}/enable"),
    ("PUT", "/api/v1/pools/{pool}/backends/{backend}/weight"),
    ("DELETE", "/api/v1/pools/{pool}/backends/{backend}/weight"),
    ("GET", "/api/v1/listeners/{listener}/sources/{ip}"),
    ("POST", "/api/v1/listeners/{listener}/deny/{cidr}"),
    ("DELETE", "/api/v1/listeners/{listener}/deny/{cidr}"),
];

/// The methods a known path takes, for a 405; `None` for an unknown path.
fn allowed_methods(segs: &[&str]) -> Option<String> {
    let methods: Vec<&str> = ROUTES
        .iter()
        .filter(|(_, template)| {
            let parts: Vec<&str> = template.trim_start_matches('/').split('/').collect();
            parts.len() == segs.len()
                && parts
                    .iter()
                    .zip(segs)
                    .all(|(p, s)| p.starts_with('{') || p == s)
        })
        .map(|(m, _)| *m)
        .collect();
    (!methods.is_empty()).then(|| methods.join(", "))
}

/// The refusal of a request that does not name this API, or of a change a web page elsewhere
/// could have sent (see `guard.rs`).
fn guarded(req: &Request<Incoming>, ctx: &Ctx) -> Option<Reply> {
    let view = ctx.control.view();
    let rules = guard::Rules {
        bind: ctx.bind,
        allowed: view
            .written
            .admin
            .as_ref()
            .map_or(&[][..], |a| a.allowed_hosts.as_slice()),
    };
    let has_body = req.body().size_hint().exact() != Some(0);
    let (method, version, uri, headers) = (req.method(), req.version(), req.uri(), req.headers());
    guard::check(&rules, method, version, uri, headers, has_body)
        .err()
        .map(|refusal| error(refusal.status(), &refusal.message(&rules)))
}

/// A change may go ahead with the bearer token (when one is configured) and while fewer
/// than [`MAX_CHANGES_IN_FLIGHT`] are being handled: the permit returned is held until the
/// answer is ready. The bound keeps connections waiting on changes from ever filling the
/// admin API's connection table (`admission.rs`).
fn may_change<'a>(
    req: &Request<Incoming>,
    ctx: &'a Ctx,
) -> Result<tokio::sync::SemaphorePermit<'a>, Box<Reply>> {
    if !auth::authorized(req.headers(), token(ctx).as_deref()) {
        return Err(Box::new(unauthorized()));
    }
    ctx.changes.try_acquire().map_err(|_| {
        let mut r = error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "{MAX_CHANGES_IN_FLIGHT} changes are being made already; retry when they are done"
            ),
        );
        r.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        Box::new(r)
    })
}

fn token(ctx: &Ctx) -> Option<String> {
    ctx.control
        .view()
        .written
        .admin
        .as_ref()
        .and_then(|a| a.token.as_ref())
        .map(|t| t.0.clone())
}

fn ready(ctx: &Ctx) -> Reply {
    let reasons = ctx.control.view().unready_reasons(ctx.control.draining());
    if reasons.is_empty() {
        json_reply(StatusCode::OK, json!({"ready": true}))
    } else {
        json_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"ready": false, "reasons": reasons}),
        )
    }
}

fn metrics(ctx: &Ctx) -> Reply {
    match ctx.metrics.render() {
        Ok(body) => text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            body,
        ),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot render metrics: {e}"),
        ),
    }
}

/// The file is read, validated and bound on a blocking thread (see `Handle::reload`), so
/// neither this task nor the control plane's owner waits on it.
async fn reload(ctx: Arc<Ctx>) -> Reply {
    use crate::reload::ReloadError;
    match ctx.control.reload().await {
        Ok(reloaded) => json_reply(StatusCode::OK, views::reloaded(&reloaded)),
        Err(crate::reload::ReloadError::Config(errors)) => {
            let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
            json_reply(
                StatusCode::BAD_REQUEST,
                json!({"error": "the new config is invalid; nothing changed", "errors": list}),
            )
        }
        Err(e @ (ReloadError::Bind { .. } | ReloadError::Stopped | ReloadError::Failed(_))) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
        }
        Err(e) => error(StatusCode::CONFLICT, &e.to_string()),
    }
}

/// A binary upgrade, carried out by the process's lifecycle (`crate::run`); the answer comes
/// once the new process serves (this connection stays with the old one to hear it) or the
/// upgrade failed and this process serves on.
async fn upgrade(ctx: &Ctx) -> Reply {
    match ctx.control.upgrade().await {
        Ok(pid) => json_reply(
            StatusCode::OK,
            json!({"pid": pid, "previous_pid": std::process::id()}),
        ),
        Err(failure) => {
            let status = match failure.result {
                "refused" => StatusCode::BAD_REQUEST,
                "rejected" => StatusCode::CONFLICT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            json_reply(
                status,
                json!({"error": failure.reason, "result": failure.result}),
            )
        }
    }
}

async fn backend_action(ctx: &Ctx, pool: &str, backend: &str, action: BackendAction) -> Reply {
    let Some(address) = input::percent_decode(backend).and_then(|b| b.parse::<SocketAddr>().ok())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("`{backend}` is not a backend address (IP:PORT, percent-encoded)"),
        );
    };
    match ctx.control.backend_action(pool, address, action).await {
        Ok(()) => json_reply(StatusCode::OK, views::backend(&ctx.control, pool, address)),
        Err(e) => action_error(&e),
    }
}

fn explain(ctx: &Ctx, listener: &str, ip: &str) -> Reply {
    let Some(source) = input::percent_decode(ip).and_then(|s| s.parse::<std::net::IpAddr>().ok())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("`{ip}` is not an IP address"),
        );
    };
    match ctx.control.explain(listener, source) {
        Ok(v) => json_reply(StatusCode::OK, views::verdict(listener, source, &v)),
        Err(e) => action_error(&e),
    }
}

async fn deny(ctx: &Ctx, listener: &str, cidr: &str, add: bool) -> Reply {
    let Some(block) =
        input::percent_decode(cidr).and_then(|c| c.parse::<crate::admission::Cidr>().ok())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("`{cidr}` is not a CIDR (percent-encode the slash: 10.0.0.0%2F8)"),
        );
    };
    match ctx.control.deny(listener, block, add).await {
        Ok(changed) => {
            let list: Vec<String> = ctx
                .control
                .deny_list(listener)
                .iter()
                .map(ToString::to_string)
                .collect();
            json_reply(
                StatusCode::OK,
                json!({"listener": listener, "changed": changed, "deny": list}),
            )
        }
        Err(e) => action_error(&e),
    }
}

/// The status that says what went wrong with an action.
fn action_error(e: &ActionError) -> Reply {
    let status = match e {
        ActionError::NoPool(_) | ActionError::NoBackend(..) | ActionError::NoListener(_) => {
            StatusCode::NOT_FOUND
        }
        ActionError::DenyListFull(_) => StatusCode::CONFLICT,
        ActionError::Stopped => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, &e.to_string())
}

async fn read_weight(req: Request<Incoming>) -> Result<u32, Reply> {
    let body = Limited::new(req.into_body(), MAX_BODY_BYTES);
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
        Err(_) => {
            return Err(error(
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive in time",
            ));
        }
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
        Ok(Err(e)) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the body: {e}"),
            ));
        }
        Ok(Ok(b)) => b.to_bytes(),
    };
    input::parse_weight(&bytes).map_err(|e| error(StatusCode::BAD_REQUEST, &e))
}

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json_reply(status: StatusCode, value: Value) -> Reply {
    let mut body = value.to_string();
    body.push('\n');
    text(status, "application/json", body)
}

fn error(status: StatusCode, message: &str) -> Reply {
    json_reply(status, json!({ "error": message }))
}

/// 413, and the connection closes after it (lingering, see `conn.rs`): the rest of the body
/// is never read as a request.
fn too_large() -> Reply {
    let mut r = error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("the request body is larger than the limit of {MAX_BODY_BYTES} bytes"),
    );
    r.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    r
}

fn unauthorized() -> Reply {
    let mut r = error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
    r.headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}
