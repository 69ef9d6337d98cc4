//! A client of the running instance's admin API, for the commands that ask it something:
//! `check --diff` (its config and status) and `reload` (apply its file now). One request per
//! connection, HTTP/1.1, with the `Host` the API expects and the bearer token when given.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Sends one request and returns the status and the JSON body (`Null` when it has none).
/// `Err`: the instance could not be reached or did not answer within `timeout`.
pub async fn request(
    admin: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(StatusCode, Value), String> {
    let work = async {
        let stream = tokio::net::TcpStream::connect(admin)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake failed: {e}"))?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, admin.to_string());
        if let Some(token) = token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("cannot read the answer: {e}"))?
            .to_bytes();
        if body.is_empty() {
            return Ok((status, Value::Null));
        }
        let json = serde_json::from_slice(&body)
            .map_err(|e| format!("{path} answered {status}, not JSON: {e}"))?;
        Ok((status, json))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

/// A `GET` whose answer must be a success.
pub async fn get_json(admin: SocketAddr, path: &str, timeout: Duration) -> Result<Value, String> {
    let (status, json) = request(admin, Method::GET, path, None, timeout).await?;
    if !status.is_success() {
        return Err(format!("{path} answered {status}"));
    }
    Ok(json)
}

/// The address to reach an admin API bound to `bind`: a wildcard bind is asked on loopback.
pub fn reachable(mut bind: SocketAddr) -> SocketAddr {
    if bind.ip().is_unspecified() {
        let ip = match bind {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        };
        bind.set_ip(ip);
    }
    bind
}

/// Runs `work` on a runtime of its own: the commands that use this client are not async.
pub fn block_on<T>(
    work: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build a runtime: {e}"))?
        .block_on(work)
}
