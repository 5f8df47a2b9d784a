//! Every way Vigil answers a request itself, with its status and whose fault it was.
//!
//! This is the one table from errors to responses: each variant sits next to its status code,
//! and the public reason is short and safe to show; details go to the decision log.

use crate::body::{self, Body};
use http::{HeaderValue, Response, StatusCode, header};

/// Who most likely caused a refusal; it is what metrics and on-call look at first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Client,
    Policy,
    Upstream,
    Internal,
}

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
    /// The method cannot be proxied (CONNECT).
    MethodNotAllowed,
    /// The body is over the route's limit.
    PayloadTooLarge,
    /// The upstream is down, refused, or broke the exchange.
    BadGateway,
    /// The upstream did not answer in time.
    GatewayTimeout,
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            Refusal::NoRoute => StatusCode::NOT_FOUND,
            Refusal::Forbidden(_) => StatusCode::FORBIDDEN,
            Refusal::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::BadGateway => StatusCode::BAD_GATEWAY,
            Refusal::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            Refusal::BadRequest(_)
            | Refusal::Misdirected
            | Refusal::NoRoute
            | Refusal::MethodNotAllowed
            | Refusal::PayloadTooLarge => Fault::Client,
            Refusal::Forbidden(_) => Fault::Policy,
            Refusal::BadGateway | Refusal::GatewayTimeout => Fault::Upstream,
        }
    }

    /// The reason shown to the client.
    pub fn reason(&self) -> &str {
        match self {
            Refusal::BadRequest(why) => why,
            Refusal::Misdirected => "this connection is not for that host",
            Refusal::NoRoute => "no route for this host and path",
            Refusal::Forbidden(why) => why,
            Refusal::MethodNotAllowed => "method not supported by the proxy",
            Refusal::PayloadTooLarge => "request body too large",
            Refusal::BadGateway => "upstream unavailable",
            Refusal::GatewayTimeout => "upstream timed out",
        }
    }

    /// A small JSON answer carrying the reason and the request id.
    pub fn response(&self, request_id: &HeaderValue) -> Response<Body> {
        let status = self.status();
        let payload = serde_json::json!({
            "status": status.as_u16(),
            "error": status.canonical_reason().unwrap_or("error"),
            "reason": self.reason(),
            "request_id": request_id.to_str().unwrap_or(""),
        });
        let mut response = Response::new(body::full(payload.to_string()));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(crate::forward::X_REQUEST_ID.clone(), request_id.clone());
        response
    }
}
