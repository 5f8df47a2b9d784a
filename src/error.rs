//! Every way Vigil answers a request itself, with its status and whose fault it was.
//!
//! This is the one table from errors to responses: each variant sits next to its status code,
//! and the public reason is short and safe to show; details go to the decision log.

use crate::body::{self, Body};
use http::{HeaderValue, Response, StatusCode, header};

/// Who most likely caused a refusal: written in the decision log's `fault` and counted in
/// `vigil_refusals_total{fault}`, it is what on-call looks at first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request itself: malformed, too large, too slow, for no route.
    Client,
    /// Policy refused it: no credential, a bad one, or rules, risk or a revocation said no.
    Policy,
    /// Something Vigil depends on: the upstream or the identity provider.
    Upstream,
    /// Vigil itself.
    Internal,
}

impl Fault {
    /// The fault of a refusal known only by its status: the provider or the upstream for 502,
    /// 503 and 504, Vigil for other 5xx, policy for a sign-in (302, 401) or 403, the client for
    /// any other status.
    pub fn of_status(status: StatusCode) -> Self {
        match status.as_u16() {
            502..=504 => Fault::Upstream,
            500..=599 => Fault::Internal,
            302 | 401 | 403 => Fault::Policy,
            _ => Fault::Client,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Client => "client",
            Fault::Policy => "policy",
            Fault::Upstream => "upstream",
            Fault::Internal => "internal",
        }
    }
}

/// `Retry-After` of every 503 Vigil answers itself (something it depends on, such as the
/// identity provider, is not available): long enough for the background check of a provider
/// that is down to have looked again, short enough for a person to wait.
pub const RETRY_AFTER_SECONDS: &str = "10";

/// A request Vigil answers without (successfully) forwarding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The request is malformed or ambiguous (path tricks, conflicting Host, smuggling attempts).
    BadRequest(&'static str),
    /// The Host names a server other than the one this TLS connection was opened for.
    Misdirected,
    /// No route for this host and path.
    NoRoute,
    /// Policy denied the request; the reason is the short public one.
    Forbidden(String),
    /// The route needs a signed-in person or a bearer token, and there is none (or it is bad).
    Unauthorized(String),
    /// Something Vigil depends on (the identity provider) is not available; never an allow.
    Unavailable(String),
    /// The method cannot be proxied (CONNECT).
    MethodNotAllowed,
    /// The body is over the route's limit.
    PayloadTooLarge,
    /// The request target is over `max_target_bytes`: a client or a scanner probing for
    /// expensive paths; the reason gives the length and the limit.
    UriTooLong(String),
    /// The upstream is down, refused, or broke the exchange.
    BadGateway,
    /// The upstream did not answer in time.
    GatewayTimeout,
    /// The client did not send its request body in time.
    RequestTimeout,
    /// An enforcement point named the request to decide in a way that cannot be read
    /// unambiguously, or passed on an unreadable certificate; the reason says what.
    Unreadable(String),
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            Refusal::NoRoute => StatusCode::NOT_FOUND,
            Refusal::Forbidden(_) => StatusCode::FORBIDDEN,
            Refusal::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Refusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            Refusal::BadGateway => StatusCode::BAD_GATEWAY,
            Refusal::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            Refusal::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Refusal::Unreadable(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The status an enforcement point is answered with: 401 and 503 as they are, every other
    /// refusal 403, since nginx's `auth_request` understands no other client error (it turns
    /// anything else into a 500 of its own).
    pub fn status_for_enforcement_point(&self) -> StatusCode {
        match self.status() {
            s @ (StatusCode::UNAUTHORIZED | StatusCode::SERVICE_UNAVAILABLE) => s,
            _ => StatusCode::FORBIDDEN,
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            Refusal::BadRequest(_)
            | Refusal::Misdirected
            | Refusal::NoRoute
            | Refusal::MethodNotAllowed
            | Refusal::PayloadTooLarge
            | Refusal::UriTooLong(_)
            | Refusal::RequestTimeout
            | Refusal::Unreadable(_) => Fault::Client,
            Refusal::Forbidden(_) | Refusal::Unauthorized(_) => Fault::Policy,
            Refusal::Unavailable(_) => Fault::Upstream,
            Refusal::BadGateway | Refusal::GatewayTimeout => Fault::Upstream,
        }
    }

    /// The reason shown to the client.
    pub fn reason(&self) -> &str {
        match self {
            Refusal::BadRequest(why) => why,
            Refusal::Misdirected => "this connection is not for that host",
            Refusal::NoRoute => "no route for this host and path",
            Refusal::Forbidden(why)
            | Refusal::Unauthorized(why)
            | Refusal::Unavailable(why)
            | Refusal::UriTooLong(why)
            | Refusal::Unreadable(why) => why,
            Refusal::MethodNotAllowed => "method not supported by the proxy",
            Refusal::PayloadTooLarge => "request body too large",
            Refusal::BadGateway => "upstream unavailable",
            Refusal::GatewayTimeout => "upstream timed out",
            Refusal::RequestTimeout => "request body not received in time",
        }
    }

    /// A small answer carrying the reason and the request id: an HTML page for browsers,
    /// JSON for everything else; a 503 says when to try again (`Retry-After`).
    pub fn response(&self, request_id: &HeaderValue, html: bool) -> Response<Body> {
        self.response_as(self.status(), request_id, html)
    }

    /// [`Refusal::response`] with another status (see [`Refusal::status_for_enforcement_point`]).
    pub fn response_as(
        &self,
        status: StatusCode,
        request_id: &HeaderValue,
        html: bool,
    ) -> Response<Body> {
        let id = request_id.to_str().unwrap_or("");
        let title = status.canonical_reason().unwrap_or("error");
        let (content_type, text) = if html {
            ("text/html; charset=utf-8", page(title, self.reason(), id))
        } else {
            let payload = serde_json::json!({
                "status": status.as_u16(),
                "error": title,
                "reason": self.reason(),
                "request_id": id,
            });
            ("application/json", payload.to_string())
        };
        let mut response = Response::new(body::full(text));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"vigil\""),
            );
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(crate::canonical::X_REQUEST_ID.clone(), request_id.clone());
        response
    }
}

/// A redirect that no cache keeps.
pub fn redirect(status: StatusCode, location: &str) -> Response<Body> {
    let mut response = Response::new(body::empty());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(location) {
        headers.insert(header::LOCATION, v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A plain page: no scripts, no external resources.
pub fn page(title: &str, message: &str, request_id: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <meta name=\"viewport\" content=\"width=device-width\"></head>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:4em auto\">\
         <h1>{t}</h1><p>{m}</p><p><small>Request id: <code>{r}</code></small></p></body></html>",
        t = escape(title),
        m = escape(message),
        r = escape(request_id),
    )
}

/// HTML-escapes text for element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Why a file could not be read, in an operator's words (std's carry "(os error 2)").
pub fn file_error(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::NotFound => "no such file".to_owned(),
        ErrorKind::PermissionDenied => "permission denied: this user may not read it".to_owned(),
        ErrorKind::IsADirectory => "a directory, not a file".to_owned(),
        ErrorKind::InvalidData => "not UTF-8 text".to_owned(),
        _ => e.to_string(),
    }
}

/// "outer: inner: innermost", for logs.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = e.source();
    }
    text
}
