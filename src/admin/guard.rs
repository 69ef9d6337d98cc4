//! Who may ask the admin API: its defence against web pages, which the bearer token alone
//! does not give (the default loopback bind has no token, and any page a browser on this host
//! shows can send requests to loopback).
//!
//! - **DNS rebinding**: a page at `attacker.example` whose name the attacker then points at
//!   127.0.0.1 makes the browser send same-origin requests, and read the answers, with
//!   `Host: attacker.example`. So every request's `Host` (or absolute-form target) must name
//!   this API: the bind's own `IP:PORT`, `localhost:PORT` for a loopback bind, any IP literal
//!   with the right port for a wildcard bind, or an entry of `admin.allowed_hosts`. Else 421.
//!   A request without `Host` is HTTP/1.0 from a tool (browsers always send one); an HTTP/1.1
//!   request without one is malformed (400).
//! - **Cross-site requests**: a page elsewhere can send a "simple" POST (`text/plain`, no
//!   preflight) without reading the answer, and that is enough to change something. So a
//!   request with an unsafe method carrying `Origin` must come from this API's own origin,
//!   and any `Content-Type` it declares (required with a body) must be `application/json`,
//!   which no page can send cross-site without a preflight this API never approves. Else 403.
//!
//! Every refusal says what to send instead. Pure: the request's parts and the rules in, a
//! verdict out.

use std::net::SocketAddr;

use hyper::header::{CONTENT_TYPE, HOST, ORIGIN};
use hyper::{HeaderMap, Method, StatusCode, Uri, Version};

use crate::authority::{Authority, Host, parse_origin};

/// What a request must be addressed to: the address the admin socket is bound to (its real
/// port, even for a configured port 0) and `admin.allowed_hosts`.
pub(crate) struct Rules<'a> {
    pub bind: SocketAddr,
    pub allowed: &'a [Authority],
}

/// Why a request is refused, with what it sent.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    NoHost,
    ManyHosts,
    ForeignHost(String),
    ForeignOrigin(String),
    ContentType(Option<String>),
}

/// The request's head, checked against the rules.
pub(crate) fn check(
    rules: &Rules<'_>,
    method: &Method,
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
    has_body: bool,
) -> Result<(), Refusal> {
    check_host(rules, version, uri, headers)?;
    if method.is_safe() {
        return Ok(());
    }
    if let Some(origin) = headers.get(ORIGIN) {
        let text = String::from_utf8_lossy(origin.as_bytes());
        if !parse_origin(&text).is_some_and(|a| rules.admits(&a, 80)) {
            return Err(Refusal::ForeignOrigin(shown(&text)));
        }
    }
    match headers.get(CONTENT_TYPE) {
        None if has_body => Err(Refusal::ContentType(None)),
        None => Ok(()),
        Some(v) => {
            let text = String::from_utf8_lossy(v.as_bytes());
            let media = text.split(';').next().unwrap_or_default().trim();
            if media.eq_ignore_ascii_case("application/json") {
                Ok(())
            } else {
                Err(Refusal::ContentType(Some(shown(&text))))
            }
        }
    }
}

fn check_host(
    rules: &Rules<'_>,
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<(), Refusal> {
    // An absolute-form target's authority replaces Host (RFC 9112 §3.2.2).
    let named = match uri.authority() {
        Some(a) => a.as_str().to_owned(),
        None => {
            let mut hosts = headers.get_all(HOST).iter();
            match (hosts.next(), hosts.next()) {
                (None, _) if version <= Version::HTTP_10 => return Ok(()),
                (None, _) => return Err(Refusal::NoHost),
                (Some(_), Some(_)) => return Err(Refusal::ManyHosts),
                (Some(h), None) => String::from_utf8_lossy(h.as_bytes()).into_owned(),
            }
        }
    };
    match named.parse::<Authority>() {
        Ok(a) if rules.admits(&a, 80) => Ok(()),
        _ => Err(Refusal::ForeignHost(shown(&named))),
    }
}

impl Rules<'_> {
    /// Whether `a` (its port defaulting to `default_port`) names this API.
    fn admits(&self, a: &Authority, default_port: u16) -> bool {
        let port = a.port_or(default_port);
        let own_port = port == self.bind.port();
        let bind_ip = self.bind.ip().to_canonical();
        let own = match &a.host {
            Host::Ip(ip) => own_port && (bind_ip.is_unspecified() || ip.to_canonical() == bind_ip),
            Host::Name(n) => {
                own_port && n == "localhost" && (bind_ip.is_loopback() || bind_ip.is_unspecified())
            }
        };
        own || self
            .allowed
            .iter()
            .any(|e| e.host == a.host && e.port.is_none_or(|p| p == port))
    }

    /// How a client should address this API, for the refusals.
    fn addresses(&self) -> String {
        let port = self.bind.port();
        let ip = self.bind.ip().to_canonical();
        let mut names = if ip.is_unspecified() {
            format!("an IP address of this host with port {port}, or localhost:{port}")
        } else if ip.is_loopback() {
            format!("{} or localhost:{port}", self.bind)
        } else {
            self.bind.to_string()
        };
        for a in self.allowed {
            names.push_str(&format!(", {a}"));
        }
        names
    }
}

impl Refusal {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Refusal::NoHost | Refusal::ManyHosts => StatusCode::BAD_REQUEST,
            Refusal::ForeignHost(_) => StatusCode::MISDIRECTED_REQUEST,
            Refusal::ForeignOrigin(_) | Refusal::ContentType(_) => StatusCode::FORBIDDEN,
        }
    }

    pub(crate) fn message(&self, rules: &Rules<'_>) -> String {
        let names = rules.addresses();
        match self {
            Refusal::NoHost => format!(
                "an HTTP/1.1 request needs a Host header: send Host: {}",
                rules.bind
            ),
            Refusal::ManyHosts => "a request carries one Host header, not several".to_owned(),
            Refusal::ForeignHost(h) => format!(
                "this admin API does not answer to Host `{h}` (DNS-rebinding protection): address it as {names}, or list the name in admin.allowed_hosts"
            ),
            Refusal::ForeignOrigin(o) => format!(
                "a change from another origin (`{o}`) is refused (cross-site protection): send it with no Origin header, or from this API's own origin (http:// and {names})"
            ),
            Refusal::ContentType(got) => format!(
                "a change must be sent as Content-Type: application/json (or with no body and no Content-Type); got {}",
                got.as_ref().map_or("none".to_owned(), |t| format!("`{t}`"))
            ),
        }
    }
}

/// An untrusted header value as quoted back in a refusal: at most 100 characters.
fn shown(value: &str) -> String {
    value.chars().take(100).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn get(rules: &Rules<'_>, host: &'static str) -> Result<(), Refusal> {
        let h = headers(&[("host", host)]);
        check(
            rules,
            &Method::GET,
            Version::HTTP_11,
            &Uri::from_static("/"),
            &h,
            false,
        )
    }

    fn post(
        rules: &Rules<'_>,
        pairs: &[(&'static str, &'static str)],
        body: bool,
    ) -> Result<(), Refusal> {
        let h = headers(pairs);
        check(
            rules,
            &Method::POST,
            Version::HTTP_11,
            &Uri::from_static("/"),
            &h,
            body,
        )
    }

    fn rules(bind: &str, allowed: &[Authority]) -> Rules<'static> {
        Rules {
            bind: bind.parse().unwrap(),
            allowed: Vec::leak(allowed.to_vec()),
        }
    }

    #[test]
    fn host_must_name_the_bind() {
        let r = rules("127.0.0.1:9100", &[]);
        assert_eq!(get(&r, "127.0.0.1:9100"), Ok(()));
        assert_eq!(get(&r, "LOCALHOST:9100"), Ok(()));
        for foreign in [
            "attacker.example",
            "attacker.example:9100",
            "127.0.0.1:9101",
            "127.0.0.1",
            "127.0.0.2:9100",
            "[::1]:9100",
            "localhost",
            "127.1:9100",
        ] {
            assert!(
                matches!(get(&r, foreign), Err(Refusal::ForeignHost(_))),
                "{foreign}"
            );
        }
        let public = rules("10.0.0.5:9100", &[]);
        assert_eq!(get(&public, "10.0.0.5:9100"), Ok(()));
        assert!(
            get(&public, "localhost:9100").is_err(),
            "not a loopback bind"
        );
        let v6 = rules("[::1]:9100", &[]);
        assert_eq!(get(&v6, "[::1]:9100"), Ok(()));
        let on_80 = rules("127.0.0.1:80", &[]);
        assert_eq!(get(&on_80, "127.0.0.1"), Ok(()), "no port is port 80");
    }

    #[test]
    fn a_wildcard_bind_takes_any_ip_literal_with_its_port() {
        let r = rules("0.0.0.0:9100", &[]);
        assert_eq!(get(&r, "192.0.2.7:9100"), Ok(()));
        assert_eq!(get(&r, "[2001:db8::1]:9100"), Ok(()));
        assert_eq!(get(&r, "localhost:9100"), Ok(()));
        assert!(get(&r, "192.0.2.7:9101").is_err());
        assert!(get(&r, "evil.example:9100").is_err());
    }

    #[test]
    fn allowed_hosts_let_names_in() {
        let allowed: Vec<Authority> = ["admin.example.com", "lb.internal:8443"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let r = rules("127.0.0.1:9100", &allowed);
        assert_eq!(
            get(&r, "Admin.Example.com"),
            Ok(()),
            "any port without one listed"
        );
        assert_eq!(get(&r, "admin.example.com:1234"), Ok(()));
        assert_eq!(get(&r, "lb.internal:8443"), Ok(()));
        assert!(get(&r, "lb.internal:9100").is_err(), "only the port listed");
        assert!(get(&r, "example.com").is_err());
    }

    #[test]
    fn host_is_required_once_in_http_1_1_and_absolute_targets_count() {
        let r = rules("127.0.0.1:9100", &[]);
        let none = HeaderMap::new();
        let root = Uri::from_static("/");
        assert_eq!(
            check(&r, &Method::GET, Version::HTTP_11, &root, &none, false),
            Err(Refusal::NoHost)
        );
        assert_eq!(
            check(&r, &Method::GET, Version::HTTP_10, &root, &none, false),
            Ok(())
        );
        let two = headers(&[("host", "127.0.0.1:9100"), ("host", "127.0.0.1:9100")]);
        assert_eq!(
            check(&r, &Method::GET, Version::HTTP_11, &root, &two, false),
            Err(Refusal::ManyHosts)
        );
        let own = headers(&[("host", "127.0.0.1:9100")]);
        let abs = Uri::from_static("http://attacker.example/api/v1/config");
        assert!(check(&r, &Method::GET, Version::HTTP_11, &abs, &own, false).is_err());
    }

    #[test]
    fn changes_refuse_foreign_origins_and_content_types() {
        let r = rules("127.0.0.1:9100", &[]);
        let host = ("host", "127.0.0.1:9100");
        assert_eq!(
            post(&r, &[host], false),
            Ok(()),
            "a tool: no Origin, no body"
        );
        assert_eq!(
            post(&r, &[host, ("origin", "http://127.0.0.1:9100")], false),
            Ok(())
        );
        assert_eq!(
            post(
                &r,
                &[host, ("content-type", "Application/JSON; charset=utf-8")],
                true
            ),
            Ok(())
        );
        for origin in [
            "http://evil.example",
            "null",
            "http://127.0.0.1:9101",
            "https://127.0.0.1",
        ] {
            assert!(
                matches!(
                    post(&r, &[host, ("origin", origin)], false),
                    Err(Refusal::ForeignOrigin(_))
                ),
                "{origin}"
            );
        }
        assert_eq!(post(&r, &[host], true), Err(Refusal::ContentType(None)));
        assert!(matches!(
            post(&r, &[host, ("content-type", "text/plain")], true),
            Err(Refusal::ContentType(Some(_)))
        ));
        assert!(
            post(&r, &[host, ("content-type", "text/plain")], false).is_err(),
            "a wrong type is wrong even empty"
        );
        let refusal = post(&r, &[host, ("origin", "http://evil.example")], false).unwrap_err();
        assert_eq!(refusal.status(), StatusCode::FORBIDDEN);
        assert!(
            refusal.message(&r).contains("`http://evil.example`"),
            "{}",
            refusal.message(&r)
        );
    }
}
