//! Sending an authorised request upstream: header hygiene, identity headers, the upgrades a
//! route allows, and response streams registered for the live verifier. The sending itself
//! goes through the route's stack (`stack`): balancing across endpoints (`discover`),
//! limits, retries and timeouts, each endpoint with its own pool (`endpoint`).

use crate::body::{Body, BoxError};
use crate::canonical::{
    X_REQUEST_ID, allowed_upgrade, header_safe, is_spoofable, remove_hop_by_hop, upgrade_accepted,
};
use crate::connection::{self, Connection};
use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

pub mod assertion;
pub mod discover;
pub mod endpoint;
pub mod shared;
pub mod stack;

pub use discover::Served;

pub static X_VIGIL_WORKLOAD: HeaderName = HeaderName::from_static("x-vigil-workload");
pub static X_VIGIL_DEVICE: HeaderName = HeaderName::from_static("x-vigil-device");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Where a route's traffic goes and how.
pub struct Upstream {
    pub scheme: Scheme,
    /// The first URL's authority: what the decision log names as the upstream.
    pub authority: Authority,
    /// Prepended to the forwarded path; empty or `/base` without trailing slash.
    pub base_path: String,
    pub preserve_host: bool,
    pub response_timeout: Duration,
    pub stack: stack::Stack,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("scheme", &self.scheme)
            .field("authority", &self.authority)
            .field("base_path", &self.base_path)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// Gives the route's stack its metric series.
    pub fn attach(&self, families: &crate::metrics::UpstreamFamilies) {
        self.stack.attach(families);
    }
}

/// Why forwarding failed. The request pipeline maps each to its refusal (status and body)
/// and to the metric that counts it.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No connection to the upstream: refused, unreachable, its TLS handshake failed, or not
    /// made within `[upstream] connect_timeout`. Usually the upstream is down, or the route
    /// names the wrong address or CA: an upstream or configuration fault, not the client's.
    #[error("upstream unreachable: {0}")]
    Connect(String),
    /// The upstream took the request but sent no response head within `response_timeout`
    /// (`[upstream]` or the route's). Usually an overloaded or stuck upstream.
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    /// The client sent more body than `max_body_bytes` (`[server]` or the route's) allows.
    /// The client's doing: an upload too large for the route, or an attempt to exhaust the
    /// upstream.
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(u64),
    /// The upstream broke the exchange (reset, protocol error) or switched protocols to one
    /// not asked for, or without a valid WebSocket accept: the upstream's fault. Also, very
    /// rarely, Vigil's own: an upstream URI it could not build from a canonical path.
    #[error("upstream failed: {0}")]
    Upstream(String),
    /// The client did not send its body within `[server] body_read_timeout`. The client's
    /// doing: a slow or trickling client (or a slowloris attack); the upstream exchange was
    /// abandoned.
    #[error("request body not received within {0:?}")]
    BodyTimeout(Duration),
    /// More requests than the route's `max_pending` were waiting for an endpoint to take
    /// them: this one was refused without contacting any. An upstream too slow or too small
    /// for its traffic (or a flood of requests).
    #[error("upstream overloaded: more than max_pending requests waiting")]
    Overloaded,
}

/// What the pipeline decided about a request that forwarding needs to know.
pub struct Outbound<'a> {
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub request_id: &'a HeaderValue,
    pub max_body_bytes: Option<u64>,
    /// Header names (alias form) stripped from the request besides Vigil's own.
    pub strip: &'a [String],
    /// Identity headers to set (after every client-sent one is gone).
    pub identity: Vec<(HeaderName, HeaderValue)>,
    /// On bearer routes, the `Authorization` value rebuilt from the verified token: it
    /// replaces whatever the client sent.
    pub authorization: Option<HeaderValue>,
    /// Upgrade protocols the route allows (lower-case); other offers are removed.
    pub upgrades: &'a [String],
    /// The session the request came with; its response stream or tunnel is re-checked
    /// against it while open.
    pub session: Option<crate::identity::session::Session>,
    /// The verified bearer token's identity, re-checked likewise.
    pub bearer: Option<Arc<crate::identity::Identity>>,
    /// The request headers the route's rules look at, kept to decide the stream again.
    pub kept_headers: Vec<(String, String)>,
}

/// Set on a forwarded response when the client's upgrade offer was removed, for the
/// decision log.
#[derive(Debug, Clone)]
pub struct UpgradeRemoved(pub String);

/// Sends `req` upstream and returns the response head with a streaming body, registered on
/// the connection (see `connection::Stream`) until it ends.
pub async fn forward(
    upstream: &Upstream,
    conn: &Arc<Connection>,
    mut req: Request<Body>,
    out: Outbound<'_>,
) -> Result<Response<Body>, ForwardError> {
    let downstream_upgrade = hyper::upgrade::on(&mut req);
    let http2 = req.version() == Version::HTTP_2;
    let (mut parts, body) = req.into_parts();

    let offered = remove_hop_by_hop(&mut parts.headers);
    let (upgrade, removed) = match &offered {
        Some(offer) => allowed_upgrade(offer, out.upgrades),
        None => (None, None),
    };
    strip_client_headers(&mut parts.headers, out.strip);
    if let Some(verified) = out.authorization {
        parts.headers.insert(header::AUTHORIZATION, verified);
    }
    add_forwarding_headers(
        &mut parts.headers,
        upstream,
        conn,
        out.host,
        out.request_id,
        out.identity,
        upgrade.as_ref(),
    );
    parts.uri = upstream.uri_for(out.path, out.query)?;
    parts.version = Version::HTTP_11;

    let body = match out.max_body_bytes {
        Some(limit) => http_body_util::Limited::new(body, limit as usize)
            .map_err(BoxError::from)
            .boxed_unsync(),
        None => body,
    };
    let origin = connection::StreamOrigin {
        host: out.host.to_owned(),
        path: out.path.to_owned(),
        method: parts.method.clone(),
        headers: out.kept_headers,
        session: out.session,
        bearer: out.bearer,
    };
    let websocket_key = parts.headers.get("sec-websocket-key").cloned();
    let request = Request::from_parts(parts, body);
    let mut response = send(upstream, request, out.max_body_bytes).await?;

    crate::identity::session::strip_from_response(response.headers_mut());
    let removed = removed.map(|removed| {
        tracing::info!(conn = conn.id, protocols = %removed, "upgrade not allowed on this route: forwarded without it");
        format!("upgrade to {removed} not allowed on this route: forwarded without it")
    });
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        // A refused switch drops the response, which drops its upgrade, and with it the
        // upstream connection: whatever the upstream meant to speak next is never read or
        // relayed.
        check_switch(
            &response,
            upgrade.as_ref(),
            websocket_key.as_ref(),
            removed.as_deref(),
        )?;
        if let Some(note) = removed {
            response.extensions_mut().insert(UpgradeRemoved(note));
        }
        // The tunnel registers itself once both sides have switched.
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(tunnel(
            conn.clone(),
            downstream_upgrade,
            upstream_upgrade,
            origin,
        ));
        return Ok(response.map(|b| b.map_err(BoxError::from).boxed_unsync()));
    }
    remove_hop_by_hop(response.headers_mut());
    if let Some(note) = removed {
        response.extensions_mut().insert(UpgradeRemoved(note));
    }
    let registration = connection::register(conn, origin, http2);
    Ok(response.map(|b| {
        Watched {
            cut: Box::pin(registration.token().clone().cancelled_owned()),
            registration: Some(registration),
            inner: b,
        }
        .boxed_unsync()
    }))
}

/// Removes every header a client could use to spoof identity or forwarding information (in
/// any of its aliases, and the names the route strips besides), and Vigil's own cookies.
fn strip_client_headers(headers: &mut http::HeaderMap, strip: &[String]) {
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_spoofable(name, strip))
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(&name);
    }
    crate::identity::session::strip_from_request(headers);
}

/// Sets `Host` (kept or left to the client library), the `X-Forwarded-*` headers, the request
/// ID, the workload and device headers, the route's identity headers, and the one upgrade
/// allowed.
fn add_forwarding_headers(
    headers: &mut http::HeaderMap,
    upstream: &Upstream,
    conn: &Connection,
    host: &str,
    request_id: &HeaderValue,
    identity: Vec<(HeaderName, HeaderValue)>,
    upgrade: Option<&HeaderValue>,
) {
    // Room for what is added, at once, rather than growing the map step by step; the Host
    // header of an upstream's own is added where the endpoint is known.
    headers.reserve(8 + identity.len() + if upgrade.is_some() { 2 } else { 0 });
    if upstream.preserve_host {
        if let Ok(host) = HeaderValue::from_str(host) {
            headers.insert(header::HOST, host);
        }
    } else {
        headers.remove(header::HOST);
    }
    headers.insert(X_FORWARDED_FOR.clone(), conn.shown.forwarded_for.clone());
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
    headers.insert(X_FORWARDED_HOST.clone(), header_safe(host));
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
    if let Some(id) = &conn.shown.workload {
        headers.insert(X_VIGIL_WORKLOAD.clone(), id.clone());
    }
    headers.insert(X_VIGIL_DEVICE.clone(), conn.peer_fingerprint.clone());
    for (name, value) in identity {
        headers.insert(name, value);
    }
    if let Some(proto) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, proto.clone());
    }
}

/// Sends the request through the route's stack and waits, up to its `response_timeout`, for
/// the response head.
async fn send(
    upstream: &Upstream,
    request: Request<Body>,
    max_body_bytes: Option<u64>,
) -> Result<Response<hyper::body::Incoming>, ForwardError> {
    upstream
        .stack
        .send(request)
        .await
        .map_err(|e| classify(e.as_ref(), upstream.response_timeout, max_body_bytes))
}

/// Whether the upstream's 101 switched to the protocol Vigil asked for (`upgrade`), and for a
/// WebSocket, proved it read the client's key (`Sec-WebSocket-Accept`). `removed` says which
/// offer was taken out of the request, for the error.
fn check_switch(
    response: &Response<hyper::body::Incoming>,
    upgrade: Option<&HeaderValue>,
    websocket_key: Option<&HeaderValue>,
    removed: Option<&str>,
) -> Result<(), ForwardError> {
    let switched_to = response.headers().get(header::UPGRADE);
    if !upgrade.is_some_and(|asked| upgrade_accepted(asked, switched_to)) {
        let to = switched_to
            .and_then(|v| v.to_str().ok())
            .unwrap_or("(none)");
        let asked = upgrade
            .and_then(|v| v.to_str().ok())
            .unwrap_or("no upgrade");
        let note = removed.map(|r| format!(" ({r})")).unwrap_or_default();
        return Err(ForwardError::Upstream(format!(
            "upstream switched protocols to {to:?} when {asked:?} was asked for{note}; connection closed"
        )));
    }
    if crate::canonical::is_websocket(switched_to)
        && !crate::canonical::websocket_accept_matches(
            websocket_key,
            response.headers().get("sec-websocket-accept"),
        )
    {
        return Err(ForwardError::Upstream(
            "upstream switched to WebSocket without a valid Sec-WebSocket-Accept; connection closed"
                .into(),
        ));
    }
    Ok(())
}

/// A response body tied to the decision that allowed it: registered on its connection while
/// it streams, it ends with an error when the verifier cuts its stream (hyper then resets an
/// HTTP/2 stream, or closes an HTTP/1.1 connection, which cannot end a message early).
struct Watched {
    inner: hyper::body::Incoming,
    cut: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    /// Dropped when the body ends, so a finished response no longer counts as open.
    registration: Option<connection::Registration>,
}

impl http_body::Body for Watched {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let Some(registration) = &self.registration else {
            return Poll::Ready(None);
        };
        // A frame that is ready goes out unless the stream was cut already; only a body that
        // has to wait also waits for the cut (registering with the token costs a lock, and
        // most responses never wait).
        let cut = || {
            Poll::Ready(Some(Err(
                "response cut off: it no longer passes verification".into(),
            )))
        };
        if registration.token().is_cancelled() {
            self.registration = None;
            return cut();
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if polled.is_pending() {
            if self.cut.as_mut().poll(cx).is_ready() {
                self.registration = None;
                return cut();
            }
            return Poll::Pending;
        }
        // Deregistered with its last frame: a response handed over whole is no longer open,
        // even before hyper has written it and dropped the body.
        if let Poll::Ready(None | Some(Err(_))) = &polled {
            self.registration = None;
        } else if let Poll::Ready(Some(Ok(_))) = &polled
            && self.inner.is_end_stream()
        {
            self.registration = None;
        }
        polled.map_err(BoxError::from)
    }

    fn is_end_stream(&self) -> bool {
        self.registration.is_none() || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Upstream {
    fn uri_for(&self, path: &str, query: Option<&str>) -> Result<Uri, ForwardError> {
        let mut pq = String::with_capacity(
            self.base_path.len() + path.len() + 1 + query.map_or(0, str::len),
        );
        pq.push_str(&self.base_path);
        pq.push_str(path);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|e| ForwardError::Upstream(format!("cannot build upstream URI: {e}")))
    }
}

fn classify(
    err: &(dyn std::error::Error + Send + Sync + 'static),
    timeout: Duration,
    limit: Option<u64>,
) -> ForwardError {
    if err.is::<tower::timeout::error::Elapsed>() {
        return ForwardError::Timeout(timeout);
    }
    if err.is::<tower::load_shed::error::Overloaded>() {
        return ForwardError::Overloaded;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return ForwardError::BodyTooLarge(limit.unwrap_or(0));
        }
        if let Some(crate::body::BodyTimeout(after)) = e.downcast_ref() {
            return ForwardError::BodyTimeout(*after);
        }
        source = e.source();
    }
    if stack::is_connect(err) {
        ForwardError::Connect(crate::error::chain(err))
    } else {
        ForwardError::Upstream(crate::error::chain(err))
    }
}

/// Splices an upgraded connection (WebSocket and the like) to the upstream until either side
/// closes, the downstream connection goes idle, or the connection is ordered closed.
async fn tunnel(
    conn: Arc<Connection>,
    downstream: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    origin: connection::StreamOrigin,
) {
    let (down, up) = match tokio::try_join!(downstream, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(conn = conn.id, error = %e, "upgrade did not complete");
            return;
        }
    };
    // An upgraded HTTP/1.1 connection: cutting the tunnel cuts the connection.
    let registration = connection::register(&conn, origin, false);
    let mut down = TokioIo::new(down);
    let mut up = TokioIo::new(up);
    conn.metrics.tunnels_open.inc();
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut down, &mut up) => {
            if let Err(e) = result {
                tracing::debug!(conn = conn.id, error = %e, "tunnel ended with an error");
            }
        }
        () = conn.closing.cancelled() => {
            tracing::info!(conn = conn.id, "tunnel closed: connection ordered closed");
        }
        () = conn.kill.cancelled() => {
            tracing::info!(conn = conn.id, "tunnel cut off: it no longer passes verification");
        }
        () = registration.token().cancelled() => {
            tracing::info!(conn = conn.id, "tunnel cut off: it no longer passes verification");
        }
        () = conn.activity.idle(conn.idle_timeout) => {
            tracing::debug!(conn = conn.id, "tunnel closed: idle");
        }
    }
    conn.metrics.tunnels_open.dec();
    drop(registration);
}
