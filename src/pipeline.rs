//! One request, top to bottom: canonicalise -> route -> decide -> log -> forward.
//!
//! Each stage reads the one configuration snapshot taken when the request arrived, so a
//! request never sees half of a reload.

use crate::body::{self, Body};
use crate::canonical::{host_without_port, normalize_host, normalize_path};
use crate::config::Snapshot;
use crate::decision_log::{self, Entry};
use crate::error::Refusal;
use crate::forward::{self, ForwardError, Outbound};
use crate::metrics::{RequestLabels, RouteLabel, RouteOnly, UpstreamErrorLabels};
use crate::policy::{self, Decision, RequestFacts};
use crate::routing::Route;
use crate::server::{Connection, Shared};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The request as every later stage sees it.
#[derive(Debug)]
pub struct Canonical<'a> {
    /// Lower-case, no trailing dot, no default port.
    pub host: String,
    /// Normalised path: the one policy sees and the one forwarded.
    pub path: Cow<'a, str>,
    pub query: Option<&'a str>,
}

/// Builds the canonical request, refusing anything ambiguous.
pub fn canonicalize<'a>(
    req: &'a Request<Incoming>,
    conn: &Connection,
) -> Result<Canonical<'a>, Refusal> {
    let headers = req.headers();
    if req.version() <= http::Version::HTTP_11 {
        let index = conn.h1_requests.fetch_add(1, Ordering::Relaxed);
        if let Some(why) = conn.framing.refusal(index) {
            return Err(Refusal::BadRequest(why));
        }
    }
    if req.method() == Method::CONNECT {
        return Err(Refusal::MethodNotAllowed);
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(Refusal::BadRequest("duplicate Host header"));
    }
    if headers.contains_key(header::TRANSFER_ENCODING)
        && headers.contains_key(header::CONTENT_LENGTH)
    {
        return Err(Refusal::BadRequest(
            "both Transfer-Encoding and Content-Length",
        ));
    }
    if headers.get_all(header::CONTENT_LENGTH).iter().count() > 1 {
        return Err(Refusal::BadRequest("duplicate Content-Length header"));
    }
    for value in headers.values() {
        if value
            .as_bytes()
            .iter()
            .any(|&b| matches!(b, 0 | b'\r' | b'\n'))
        {
            return Err(Refusal::BadRequest("control character in a header value"));
        }
    }

    let from_header = match host_header {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| Refusal::BadRequest("invalid Host header"))
                .and_then(|h| normalize_host(h).map_err(|e| Refusal::BadRequest(e.reason())))?,
        ),
        None => None,
    };
    let from_target = match req.uri().authority() {
        Some(a) => Some(normalize_host(a.as_str()).map_err(|e| Refusal::BadRequest(e.reason()))?),
        None => None,
    };
    let host = match (from_header, from_target) {
        (Some(h), Some(t)) if h != t => {
            return Err(Refusal::BadRequest(
                "Host header disagrees with the request target",
            ));
        }
        (Some(h), _) => h,
        (None, Some(t)) => t,
        (None, None) => return Err(Refusal::BadRequest("missing Host")),
    };
    if let Some(sni) = &conn.sni
        && !host_without_port(&host).eq_ignore_ascii_case(sni)
    {
        return Err(Refusal::Misdirected);
    }
    let path = normalize_path(req.uri().path()).map_err(|e| Refusal::BadRequest(e.reason()))?;
    let query = req.uri().query();
    if let Some(q) = query
        && q.bytes().any(|b| b == b'#')
    {
        return Err(Refusal::BadRequest("fragment in request target"));
    }
    Ok(Canonical { host, path, query })
}

static REQUEST_SEQ: AtomicU64 = AtomicU64::new(0);

/// A request id unique across restarts and replicas: a random per-process prefix and a counter.
fn next_request_id(prefix: &str) -> HeaderValue {
    let n = REQUEST_SEQ.fetch_add(1, Ordering::Relaxed);
    HeaderValue::try_from(format!("{prefix}-{n:08x}"))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Answers one request. Never fails: every problem becomes a response and a log line.
pub async fn handle(
    shared: &Arc<Shared>,
    conn: &Arc<Connection>,
    req: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let snapshot = shared.snapshot.load_full();
    let request_id = next_request_id(&shared.instance_id);
    let mut record = Record {
        shared,
        conn,
        snapshot: &snapshot,
        request_id: &request_id,
        method: req.method().clone(),
        host: String::new(),
        path: String::new(),
        route: None,
        started,
    };

    let canonical = match canonicalize(&req, conn) {
        Ok(c) => c,
        Err(refusal) => {
            record.path = req.uri().path().to_owned();
            return record.refuse(refusal, None);
        }
    };
    record.host.clone_from(&canonical.host);
    record.path = canonical.path.clone().into_owned();

    let hostname = host_without_port(&canonical.host);
    if let Some(rest) = canonical.path.strip_prefix("/.vigil/") {
        // Vigil's own endpoints exist on every host that has a route.
        if !snapshot.routes.serves_host(hostname) {
            return record.refuse(Refusal::NoRoute, None);
        }
        record.route = snapshot.routes.find(hostname, &canonical.path).cloned();
        return record.reserved(rest);
    }
    let Some(route) = snapshot.routes.find(hostname, &canonical.path).cloned() else {
        return record.refuse(Refusal::NoRoute, None);
    };
    record.route = Some(route.clone());

    let facts = RequestFacts {
        method: req.method(),
        path: &canonical.path,
        client_ip: conn.remote.ip(),
        peer: &conn.peer,
    };
    let decision = policy::evaluate(&route.policy, &facts);
    let audit_pass = !decision.allow && snapshot.audit;
    if !decision.allow && !audit_pass {
        let public = format!("access denied by route '{}'", route.name);
        return record.refuse(Refusal::Forbidden(public), Some(&decision));
    }

    // After the decision: an unauthorised client learns nothing about the route's limits.
    let limit = route.max_body_bytes.or(snapshot.max_body_bytes);
    if let (Some(limit), Some(len)) = (limit, content_length(&req))
        && len > limit
    {
        shared.metrics.limit("body_size");
        return record.refuse(Refusal::PayloadTooLarge, Some(&decision));
    }

    let path = canonical.path.into_owned();
    let host = canonical.host;
    let query = canonical.query.map(str::to_owned);
    let req = req.map(|b| b.map_err(body::BoxError::from).boxed_unsync());
    let outbound = Outbound {
        host: &host,
        path: &path,
        query: query.as_deref(),
        request_id: &request_id,
        max_body_bytes: limit,
        strip: &[],
    };
    let result = forward::forward(&route.upstream, conn, req, outbound).await;
    let kind = if audit_pass { "audit" } else { "allow" };
    match result {
        Ok(mut response) => {
            response
                .headers_mut()
                .insert(forward::X_REQUEST_ID.clone(), request_id.clone());
            record.log(kind, &decision.reasons, response.status());
            response
        }
        Err(err) => {
            let (refusal, label) = match &err {
                ForwardError::Connect(_) => (Refusal::BadGateway, "connect"),
                ForwardError::Upstream(_) => (Refusal::BadGateway, "exchange"),
                ForwardError::Timeout(_) => (Refusal::GatewayTimeout, "timeout"),
                ForwardError::BodyTooLarge(_) => (Refusal::PayloadTooLarge, "body_too_large"),
            };
            if label == "body_too_large" {
                shared.metrics.limit("body_size");
            } else {
                shared
                    .metrics
                    .upstream_errors
                    .get_or_create(&UpstreamErrorLabels {
                        route: RouteLabel(route.label.clone()),
                        kind: label,
                    })
                    .inc();
            }
            tracing::warn!(request_id = ?request_id, route = %route.name, error = %err, "forwarding failed");
            let mut reasons = decision.reasons.clone();
            reasons.push(err.to_string());
            let response = refusal.response(&request_id);
            record.log(kind, &reasons, response.status());
            response
        }
    }
}

fn content_length(req: &Request<Incoming>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// What the decision log and metrics need to know about a request as it goes.
struct Record<'a> {
    shared: &'a Arc<Shared>,
    conn: &'a Arc<Connection>,
    snapshot: &'a Snapshot,
    request_id: &'a HeaderValue,
    method: Method,
    host: String,
    path: String,
    route: Option<Arc<Route>>,
    started: Instant,
}

impl Record<'_> {
    fn refuse(&self, refusal: Refusal, decision: Option<&Decision>) -> Response<Body> {
        let response = refusal.response(self.request_id);
        let mut reasons = match decision {
            Some(d) => d.reasons.clone(),
            None => Vec::new(),
        };
        if !matches!(refusal, Refusal::Forbidden(_)) {
            reasons.push(refusal.reason().to_owned());
        }
        self.log("deny", &reasons, response.status());
        response
    }

    /// `/.vigil/...`: Vigil's own endpoints on every routed host.
    fn reserved(&self, rest: &str) -> Response<Body> {
        match rest {
            "whoami" => {
                let peer = &self.conn.peer;
                let payload = serde_json::json!({
                    "request_id": self.request_id.to_str().unwrap_or(""),
                    "route": self.route.as_ref().map(|r| r.name.as_str()),
                    "certificate": {
                        "subject": peer.subject,
                        "issuer": peer.issuer,
                        "serial": peer.serial_hex(),
                        "fingerprint_sha256": peer.fingerprint_hex,
                        "spiffe_id": peer.spiffe_id,
                        "dns": peer.dns,
                        "emails": peer.emails,
                        "uris": peer.uris,
                        "not_before": peer.not_before,
                        "not_after": peer.not_after,
                    },
                    "client_address": self.conn.remote.ip().to_string(),
                });
                let mut response = Response::new(body::full(payload.to_string()));
                let headers = response.headers_mut();
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                headers.insert(forward::X_REQUEST_ID.clone(), self.request_id.clone());
                self.log(
                    "allow",
                    &["vigil endpoint whoami".to_owned()],
                    StatusCode::OK,
                );
                response
            }
            _ => self.refuse(Refusal::NoRoute, None),
        }
    }

    fn log(&self, decision: &'static str, reasons: &[String], status: StatusCode) {
        let latency = self.started.elapsed();
        let route_name = self.route.as_ref().map(|r| r.name.as_str());
        let peer = &self.conn.peer;
        self.shared.decisions.record(&Entry {
            time: decision_log::now_rfc3339(),
            request_id: self.request_id.to_str().unwrap_or(""),
            route: route_name,
            host: &self.host,
            method: self.method.as_str(),
            path: &self.path,
            client: self.conn.remote.ip(),
            device: &peer.fingerprint_hex,
            subject: &peer.subject,
            workload: peer.spiffe_id.as_deref(),
            user: None,
            groups: &[],
            decision,
            reasons,
            mode: if self.snapshot.audit {
                "audit"
            } else {
                "enforce"
            },
            status: status.as_u16(),
            latency_ms: latency.as_secs_f64() * 1000.0,
        });
        let label = match &self.route {
            Some(r) => RouteLabel(r.label.clone()),
            None => RouteLabel(self.shared.no_route_label.clone()),
        };
        let metrics = &self.shared.metrics;
        metrics
            .requests
            .get_or_create(&RequestLabels {
                route: label.clone(),
                decision,
                status: status.as_u16(),
            })
            .inc();
        metrics
            .request_duration
            .get_or_create(&RouteOnly { route: label })
            .observe(latency.as_secs_f64());
    }
}
