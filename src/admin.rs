//! The operator's listener: health, readiness, metrics, reloads and revocations, over plain
//! HTTP on loopback or TLS with client certificates. Every request passes [`gate`] first.

pub mod actions;
pub mod blocks;
pub mod gate;
pub mod grants;
pub mod limits;
pub mod ready;

use crate::body::{self, Body};
use crate::config::admin::AdminLimits;
use crate::reload::Reloader;
use crate::state::{Change, Shared, changes};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Whether the proxy is ready for traffic; false while starting and while draining.
#[derive(Debug, Default)]
pub struct Readiness {
    ready: AtomicBool,
}

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
    pub fn get(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// What the admin endpoints read and act on.
#[derive(Clone)]
pub struct State {
    pub shared: Arc<Shared>,
    pub readiness: Arc<Readiness>,
    pub reloader: Option<Arc<Reloader>>,
}

/// How long a connection that is closing (idle, or the listener stopping) may take to finish
/// the answer it is sending.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Serves the admin endpoints until `shutdown`, then closes the connections still open.
///
/// Every connection holds a slot of `[admin] max_connections` (and of its source's share)
/// from accept to close, handshake included; beyond them a new connection is closed at once.
/// Each connection then has `header_read_timeout` to send its first request head,
/// `idle_timeout` between requests, and `body_read_timeout` for a body: nothing a client
/// sends, or fails to send, holds an admin connection open longer.
pub async fn serve(listener: TcpListener, state: State, shutdown: CancellationToken) {
    // Port 0 in the configuration: the gate must know the port that was actually bound.
    let bound = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "admin listener has no local address; not serving");
            return;
        }
    };
    let slots = limits::Slots::default();
    let log = Arc::new(crate::server::RefusalLog::default());
    loop {
        let (stream, remote) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => (stream, SocketAddr::new(remote.ip().to_canonical(), remote.port())),
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admitted = {
            let snapshot = state.shared.snapshot.load();
            let l = &snapshot.admin_limits;
            slots.admit(remote, l.max_connections, l.max_connections_per_source)
        };
        let slot = match admitted {
            Ok(slot) => slot,
            Err(refused) => {
                refuse(
                    &state,
                    &log,
                    remote,
                    refused.reason(),
                    "admin connection refused at accept",
                );
                drop(stream);
                continue;
            }
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        tokio::spawn(connection(
            stream,
            gate::Conn {
                bound,
                local,
                remote,
                tls: false,
                spiffe: None,
                permitted: true,
            },
            slot,
            state.clone(),
            log.clone(),
            shutdown.clone(),
        ));
    }
}

/// Counts an admin connection closed before a request was answered, and logs it rate-limited.
fn refuse(
    state: &State,
    log: &crate::server::RefusalLog,
    remote: SocketAddr,
    reason: &'static str,
    what: &'static str,
) {
    state
        .shared
        .metrics
        .admin_refusals
        .get_or_create(&crate::metrics::Reason { reason })
        .inc();
    log.note(remote, reason, what);
}

/// One admin connection: the handshake (with `client_ca`), then HTTP until the client
/// leaves, a timeout passes or the listener stops. `slot` is held throughout.
async fn connection(
    stream: TcpStream,
    mut conn: gate::Conn,
    mut slot: limits::Slot,
    state: State,
    log: Arc<crate::server::RefusalLog>,
    shutdown: CancellationToken,
) {
    let snapshot = state.shared.snapshot.load_full();
    let limits = snapshot.admin_limits.clone();
    let admin_tls = snapshot.admin_tls.as_ref().map(|t| {
        (
            tokio_rustls::TlsAcceptor::from(t.config.clone()),
            t.allow_spiffe.clone(),
        )
    });
    drop(snapshot);
    let remote = conn.remote;
    let clock = limits::Clock::new();
    let Some((acceptor, allow)) = admin_tls else {
        slot.source.handshake_done();
        let io = clock.track(stream);
        return http(io, Arc::new(conn), &limits, clock, state, &log, shutdown).await;
    };
    let accepted = tokio::select! {
        () = shutdown.cancelled() => return,
        accepted = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)) => accepted,
    };
    slot.source.handshake_done();
    let tls = match accepted {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::info!(%remote, reason = crate::tls::handshake_failure_reason(&e), error = %e, "admin handshake refused");
            return;
        }
        Err(_) => {
            return refuse(
                &state,
                &log,
                remote,
                "handshake_timeout",
                "admin handshake not finished in time",
            );
        }
    };
    let caller = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| crate::tls::PeerCert::from_der(c.as_ref()).ok())
        .and_then(|p| p.spiffe_id);
    conn.permitted = allow.is_empty()
        || caller
            .as_deref()
            .is_some_and(|id| allow.iter().any(|p| p.matches(id)));
    conn.tls = true;
    conn.spiffe = caller;
    let io = clock.track(tls);
    http(io, Arc::new(conn), &limits, clock, state, &log, shutdown).await;
}

/// Serves HTTP on one admin connection under its clock.
async fn http<I>(
    io: I,
    conn: Arc<gate::Conn>,
    limits: &AdminLimits,
    clock: Arc<limits::Clock>,
    state: State,
    log: &crate::server::RefusalLog,
    shutdown: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let remote = conn.remote;
    let service = {
        let (state, clock) = (state.clone(), clock.clone());
        let body_timeout = limits.body_read_timeout;
        service_fn(move |req| {
            let in_flight = clock.start();
            let (state, conn) = (state.clone(), conn.clone());
            async move {
                let response = answer(&state, &conn, req, body_timeout).await;
                drop(in_flight);
                Ok::<_, Infallible>(response)
            }
        })
    };
    let serving = limits.http.serve_connection(TokioIo::new(io), service);
    tokio::pin!(serving);
    let mut closing: Option<tokio::time::Instant> = None;
    loop {
        let hard_stop = async {
            match closing {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = serving.as_mut() => {
                if let Err(e) = result
                    && is_header_timeout(&*e)
                {
                    if clock.head_begun() {
                        refuse(&state, log, remote, "header_read_timeout", "admin connection closed: request head not received in time");
                    } else {
                        tracing::debug!(%remote, "admin keep-alive connection closed: no request within header_read_timeout");
                    }
                }
                break;
            }
            expired = clock.expired(limits.header_read_timeout, limits.idle_timeout), if closing.is_none() => {
                match expired {
                    limits::Expired::Header => {
                        refuse(&state, log, remote, "header_read_timeout", "admin connection closed: request head not received in time");
                        break;
                    }
                    limits::Expired::Idle => {
                        tracing::debug!(%remote, "admin connection closed: idle");
                        serving.as_mut().graceful_shutdown();
                        closing = Some(tokio::time::Instant::now() + CLOSE_GRACE);
                    }
                }
            }
            () = shutdown.cancelled(), if closing.is_none() => {
                serving.as_mut().graceful_shutdown();
                closing = Some(tokio::time::Instant::now() + CLOSE_GRACE);
            }
            () = hard_stop => break,
        }
    }
}

/// Whether hyper gave up waiting for an HTTP/1 request head.
fn is_header_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(err) = source {
        if err
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout)
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// Every request passes the gate first; only then is it routed. An answer to `HEAD` has the
/// headers of the `GET` answer and no body.
async fn answer(
    state: &State,
    conn: &gate::Conn,
    req: Request<Incoming>,
    body_timeout: Duration,
) -> Response<Body> {
    let head = req.method() == Method::HEAD;
    let response = gated(state, conn, req, body_timeout).await;
    if head {
        body::headers_only(response)
    } else {
        response
    }
}

async fn gated(
    state: &State,
    conn: &gate::Conn,
    req: Request<Incoming>,
    body_timeout: Duration,
) -> Response<Body> {
    let checked = {
        let snapshot = state.shared.snapshot.load();
        gate::check(&req, conn, &snapshot.admin_access)
    };
    match checked {
        Ok(caller) => {
            let h1 = req.version() <= http::Version::HTTP_11;
            let mut r = route(state, conn, &caller, req, body_timeout).await;
            // A body cut short leaves the connection where the next request cannot be found.
            if h1
                && matches!(
                    r.status(),
                    StatusCode::REQUEST_TIMEOUT | StatusCode::PAYLOAD_TOO_LARGE
                )
            {
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            r
        }
        Err(refusal) => {
            tracing::warn!(
                reason = refusal.reason(),
                detail = %refusal,
                remote = %conn.remote,
                method = %req.method(),
                path = req.uri().path(),
                host = ?req.headers().get(header::HOST),
                origin = ?req.headers().get(header::ORIGIN),
                "admin request refused"
            );
            state
                .shared
                .metrics
                .admin_refusals
                .get_or_create(&crate::metrics::Reason {
                    reason: refusal.reason(),
                })
                .inc();
            let mut r = json(
                refusal.status(),
                serde_json::json!({ "ok": false, "refused": refusal.reason(), "error": refusal.to_string() }),
            );
            if matches!(
                refusal,
                gate::Refusal::TokenMissing | gate::Refusal::TokenInvalid
            ) {
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"vigil-admin\""),
                );
            }
            r
        }
    }
}

async fn route(
    state: &State,
    conn: &gate::Conn,
    caller: &gate::Caller,
    req: Request<Incoming>,
    body_timeout: Duration,
) -> Response<Body> {
    let shared = &state.shared;
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET | &Method::HEAD, "/readyz") => report_ready(state),
        (&Method::POST, "/reload") => reload(state, conn, caller).await,
        (_, "/reload") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
        (&Method::POST, "/revoke" | "/restore") => {
            let revoking = req.uri().path() == "/revoke";
            let body = match read_json(req, body_timeout).await {
                Ok(body) => body,
                Err(refused) => return body_refused(&refused, body_timeout),
            };
            let response = if revoking {
                revoke(shared, conn, caller, body.clone())
            } else {
                restore(shared, conn, caller, body.clone()).await
            };
            let done = (body.as_ref(), response.status());
            actions::revocation(shared, conn, caller, revoking, done);
            response
        }
        (&Method::GET | &Method::HEAD, "/revocations") => json(
            StatusCode::OK,
            serde_json::to_value(shared.revocations.listing()).unwrap_or_default(),
        ),
        (&Method::GET | &Method::HEAD, "/grants") => grants::list(shared),
        (&Method::POST, "/grants" | "/grants/revoke") => {
            let creating = req.uri().path() == "/grants";
            let body = match read_json(req, body_timeout).await {
                Ok(body) => body,
                Err(refused) => return body_refused(&refused, body_timeout),
            };
            if creating {
                grants::create(shared, conn, caller, body).await
            } else {
                grants::revoke(shared, conn, caller, body)
            }
        }
        (&Method::GET | &Method::HEAD, "/blocks") => blocks::list(shared),
        (&Method::POST, "/blocks" | "/blocks/lift") => {
            let creating = req.uri().path() == "/blocks";
            match read_json(req, body_timeout).await {
                Ok(body) => blocks::change(shared, conn, caller, creating, body).await,
                Err(refused) => body_refused(&refused, body_timeout),
            }
        }
        (_, "/blocks/lift") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
        (_, "/blocks") => text(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST\n"),
        (_, "/grants/revoke") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
        (_, "/grants") => text(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST\n"),
        (_, "/revoke" | "/restore") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
        (_, "/revocations") => text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n"),
        (&Method::GET | &Method::HEAD, "/metrics") => render_metrics(shared, req.headers()),
        (_, "/healthz" | "/readyz" | "/metrics") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `GET /readyz`: 200 while serving and some route can serve, 503 otherwise; the body says
/// what each route and component is waiting for (see [`ready`]).
fn report_ready(state: &State) -> Response<Body> {
    let snapshot = state.shared.snapshot.load();
    let reload = state.reloader.as_ref().map(|r| (*r.status()).clone());
    let report = ready::report(
        &snapshot,
        state.readiness.get(),
        reload,
        state.shared.fleet.standing(),
    );
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, serde_json::to_value(&report).unwrap_or_default())
}

/// `POST /reload`: loads the configuration file again and applies it if it is valid.
async fn reload(state: &State, conn: &gate::Conn, caller: &gate::Caller) -> Response<Body> {
    let Some(reloader) = &state.reloader else {
        return json(
            StatusCode::CONFLICT,
            serde_json::json!({ "ok": false, "errors": ["this process was not started from a configuration file"] }),
        );
    };
    let result = reloader
        .reload(&format!("POST /reload by {caller} from {}", conn.remote))
        .await;
    actions::reload(&state.shared, conn, caller, &result);
    match result {
        Ok(done) => json(
            StatusCode::OK,
            serde_json::json!({ "ok": true, "generation": done.generation, "restart_required": done.restart_required }),
        ),
        Err(errors) => json(
            StatusCode::UNPROCESSABLE_ENTITY,
            serde_json::json!({ "ok": false, "generation": state.shared.snapshot.load().generation, "errors": errors }),
        ),
    }
}

/// `GET /metrics`: every metric, as OpenMetrics or in the Prometheus text format, whichever
/// the scraper's `Accept` prefers.
fn render_metrics(shared: &Shared, headers: &http::HeaderMap) -> Response<Body> {
    observe_components(shared);
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = crate::metrics::Exposition::for_accept(accept);
    let mut r = text(StatusCode::OK, shared.metrics.render(format));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    r
}

/// The state of the provider and the inventory, read at scrape time: staleness is a matter
/// of time passing, and a provider replaced by a reload takes its series with it.
fn observe_components(shared: &Shared) {
    let snapshot = shared.snapshot.load();
    let metrics = &shared.metrics;
    shared.fleet.observe();
    if let Some(devices) = &snapshot.devices {
        let status = devices.status();
        metrics
            .components
            .device_inventory_stale
            .set(i64::from(status.stale));
        metrics
            .components
            .device_inventory_last_success
            .set(status.last_success.unwrap_or(0) as f64);
    }
    metrics.components.identity_provider_up.clear();
    metrics.components.identity_provider_last_success.clear();
    if let Some(provider) = &snapshot.oidc {
        let status = provider.status();
        let issuer = crate::metrics::Issuer {
            issuer: status.issuer,
        };
        metrics
            .components
            .identity_provider_up
            .get_or_create(&issuer)
            .set(i64::from(status.ready));
        metrics
            .components
            .identity_provider_last_success
            .get_or_create(&issuer)
            .set(status.last_success.unwrap_or(0) as f64);
    }
}

/// `POST /revoke` with a JSON object naming any of `session` (a session id, as shown by
/// `/.vigil/whoami`), `user` (a subject) and `device` (a certificate's SHA-256 fingerprint):
/// effective for the next request, and open connections are re-checked at once.
fn revoke(
    shared: &Shared,
    conn: &gate::Conn,
    caller: &gate::Caller,
    body: Option<serde_json::Value>,
) -> Response<Body> {
    let Some(body) = body else {
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "ok": false, "error": "send a JSON object with session, user or device" }),
        );
    };
    let now = crate::identity::now();
    // Validate everything before applying anything: a bad field must not half-apply.
    let device = match body["device"].as_str() {
        Some(fp) => {
            let fp = fp.replace(':', "");
            if fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
                return json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({ "ok": false, "error": "device is a SHA-256 fingerprint in hex" }),
                );
            }
            Some(fp)
        }
        None => None,
    };
    let mut done = Vec::new();
    if let Some(sid) = body["session"].as_str() {
        let sid = sid.to_owned();
        changes::announce(shared, Change::RevokeSession { sid });
        done.push("session");
    }
    if let Some(sub) = body["user"].as_str() {
        let sub = sub.to_owned();
        changes::announce(shared, Change::RevokeUser { sub, at: now });
        done.push("user");
    }
    if let Some(fp) = device {
        let fingerprint = fp.to_ascii_lowercase();
        changes::announce(
            shared,
            Change::RevokeDevice {
                fingerprint,
                at: now,
            },
        );
        done.push("device");
    }
    if done.is_empty() {
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "ok": false, "error": "name a session, user or device" }),
        );
    }
    for kind in &done {
        shared
            .metrics
            .revocations
            .get_or_create(&crate::metrics::Reason { reason: kind })
            .inc();
    }
    tracing::warn!(revoked = %done.join(","), what = %body, by = %caller, remote = %conn.remote, "revocation ordered by an operator");
    shared.live.recheck_now();
    json(
        StatusCode::OK,
        serde_json::json!({ "ok": true, "revoked": done }),
    )
}

/// `POST /restore` with `{"device": FINGERPRINT}` lifts a device block: written to the shared
/// state first (503 when it cannot be), so no replica lets the device in alone.
async fn restore(
    shared: &Shared,
    conn: &gate::Conn,
    caller: &gate::Caller,
    body: Option<serde_json::Value>,
) -> Response<Body> {
    let device = body.and_then(|body| {
        body["device"]
            .as_str()
            .map(|fp| fp.replace(':', "").to_ascii_lowercase())
    });
    let blocked = device
        .as_deref()
        .is_some_and(|fp| shared.revocations.device(fp));
    let (Some(fingerprint), true) = (device, blocked) else {
        return json(StatusCode::NOT_FOUND, serde_json::json!({ "ok": false }));
    };
    let change = Change::RestoreDevice {
        fingerprint: fingerprint.clone(),
    };
    if let Err(e) = changes::commit(shared, &[change], None).await {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "ok": false, "error": e.to_string() }),
        );
    }
    tracing::warn!(device = %fingerprint, by = %caller, remote = %conn.remote, "device revocation lifted by an operator");
    json(StatusCode::OK, serde_json::json!({ "ok": true }))
}

/// Longest body an admin endpoint reads.
const MAX_BODY_BYTES: usize = 16 * 1024;

/// The answer to a body [`read_json`] refused (it never returns `Broken`).
fn body_refused(refused: &body::ReadRefusal, timeout: Duration) -> Response<Body> {
    match refused {
        body::ReadRefusal::TooLarge | body::ReadRefusal::Broken => json(
            StatusCode::PAYLOAD_TOO_LARGE,
            serde_json::json!({ "ok": false, "error": format!("the body is longer than {MAX_BODY_BYTES} bytes") }),
        ),
        body::ReadRefusal::Timeout => json(
            StatusCode::REQUEST_TIMEOUT,
            serde_json::json!({ "ok": false, "error": format!("the body did not arrive within {}", humantime::format_duration(timeout)) }),
        ),
    }
}

/// The body as a JSON object (`Ok(None)` when it is something else), read within `timeout`
/// and [`MAX_BODY_BYTES`].
async fn read_json(
    req: Request<Incoming>,
    timeout: Duration,
) -> Result<Option<serde_json::Value>, body::ReadRefusal> {
    let bytes = match body::read_whole(req.into_body(), MAX_BODY_BYTES, timeout).await {
        Ok(bytes) => bytes,
        // The client went away or broke the framing: nothing to apply.
        Err(body::ReadRefusal::Broken) => return Ok(None),
        Err(other) => return Err(other),
    };
    Ok(serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .filter(serde_json::Value::is_object))
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut r = Response::new(body::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(body::full(value.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
