//! The operator's listener: health, readiness, metrics, reloads and revocations, over plain
//! HTTP on loopback or TLS with client certificates. Every request passes [`gate`] first.

pub mod gate;

use crate::body::{self, Body};
use crate::config::reload::Reloader;
use crate::server::Shared;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
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

/// Serves the admin endpoints until `shutdown`.
pub async fn serve(listener: TcpListener, state: State, shutdown: CancellationToken) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // Port 0 in the configuration: the gate must know the port that was actually bound.
    let bound = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "admin listener has no local address; not serving");
            return;
        }
    };
    loop {
        let (stream, remote) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let state = state.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let admin_tls = state.shared.snapshot.load().admin_tls.as_ref().map(|t| {
                (
                    tokio_rustls::TlsAcceptor::from(t.config.clone()),
                    t.allow_spiffe.clone(),
                )
            });
            let mut conn = gate::Conn {
                bound,
                local,
                remote,
                tls: false,
                spiffe: None,
                permitted: true,
            };
            let Some((acceptor, allow)) = admin_tls else {
                let conn = Arc::new(conn);
                let service = service_fn(move |req| {
                    let (state, conn) = (state.clone(), conn.clone());
                    async move { Ok::<_, Infallible>(answer(&state, &conn, req).await) }
                });
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                return;
            };
            let accepted =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await;
            let tls = match accepted {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::info!(reason = crate::tls::handshake_failure_reason(&e), error = %e, "admin handshake refused");
                    return;
                }
                Err(_) => return,
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
            let conn = Arc::new(conn);
            let service = service_fn(move |req| {
                let (state, conn) = (state.clone(), conn.clone());
                async move { Ok::<_, Infallible>(answer(&state, &conn, req).await) }
            });
            let _ = builder.serve_connection(TokioIo::new(tls), service).await;
        });
    }
}

/// Every request passes the gate first; only then is it routed.
async fn answer(state: &State, conn: &gate::Conn, req: Request<Incoming>) -> Response<Body> {
    let checked = {
        let snapshot = state.shared.snapshot.load();
        gate::check(&req, conn, &snapshot.admin_access)
    };
    match checked {
        Ok(caller) => route(state, conn, &caller, req).await,
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
) -> Response<Body> {
    let shared = &state.shared;
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            let snapshot = shared.snapshot.load();
            let reload = state.reloader.as_ref().map(|r| r.status());
            let provider_ready = snapshot.oidc.as_ref().is_none_or(|p| p.is_ready());
            let ready = state.readiness.get() && provider_ready;
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(
                status,
                serde_json::json!({
                    "ready": ready,
                    "reason": if !provider_ready {
                        Some("identity provider not discovered yet")
                    } else if !ready {
                        Some("starting or draining")
                    } else {
                        None
                    },
                    "device_inventory": snapshot.devices.as_ref().map(|d| d.status()),
                    "identity_provider": snapshot.oidc.as_ref().map(|p| serde_json::json!({
                        "issuer": p.settings.issuer,
                        "ready": p.is_ready(),
                    })),
                    "config_generation": snapshot.generation,
                    "routes": snapshot.routes.len(),
                    "reload": reload.as_deref(),
                }),
            )
        }
        (&Method::POST, "/reload") => match &state.reloader {
            None => json(
                StatusCode::CONFLICT,
                serde_json::json!({ "ok": false, "errors": ["this process was not started from a configuration file"] }),
            ),
            Some(reloader) => match reloader
                .reload(&format!("POST /reload by {caller} from {}", conn.remote))
                .await
            {
                Ok(done) => json(
                    StatusCode::OK,
                    serde_json::json!({ "ok": true, "generation": done.generation, "restart_required": done.restart_required }),
                ),
                Err(errors) => json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    serde_json::json!({ "ok": false, "generation": shared.snapshot.load().generation, "errors": errors }),
                ),
            },
        },
        (_, "/reload") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
        (&Method::POST, "/revoke") => revoke(shared, conn, caller, req).await,
        (&Method::POST, "/restore") => restore(shared, conn, caller, req).await,
        (&Method::GET, "/revocations") => json(
            StatusCode::OK,
            serde_json::to_value(shared.revocations.listing()).unwrap_or_default(),
        ),
        (_, "/revoke" | "/restore") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
        (_, "/revocations") => text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n"),
        (&Method::GET, "/metrics") => {
            // Staleness is a matter of time passing; read it at scrape time.
            if let Some(devices) = &shared.snapshot.load().devices {
                shared
                    .metrics
                    .device_inventory_stale
                    .set(i64::from(devices.is_stale()));
            }
            let mut r = text(StatusCode::OK, shared.metrics.render());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        (_, "/healthz" | "/readyz" | "/metrics") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `POST /revoke` with a JSON object naming any of `session` (a session id, as shown by
/// `/.vigil/whoami`), `user` (a subject) and `device` (a certificate's SHA-256 fingerprint):
/// effective for the next request, and open connections are re-checked at once.
async fn revoke(
    shared: &Shared,
    conn: &gate::Conn,
    caller: &gate::Caller,
    req: Request<Incoming>,
) -> Response<Body> {
    let Some(body) = read_json(req).await else {
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
        shared.revocations.revoke_session(sid);
        done.push("session");
    }
    if let Some(sub) = body["user"].as_str() {
        shared.revocations.revoke_user(sub, now);
        done.push("user");
    }
    if let Some(fp) = device {
        shared.revocations.revoke_device(&fp, now);
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
    tracing::warn!(revoked = ?done, what = %body, by = %caller, remote = %conn.remote, "revocation ordered by an operator");
    shared.live.recheck_now();
    json(
        StatusCode::OK,
        serde_json::json!({ "ok": true, "revoked": done }),
    )
}

/// `POST /restore` with `{"device": FINGERPRINT}` lifts a device block.
async fn restore(
    shared: &Shared,
    conn: &gate::Conn,
    caller: &gate::Caller,
    req: Request<Incoming>,
) -> Response<Body> {
    let device = read_json(req)
        .await
        .and_then(|body| body["device"].as_str().map(|fp| fp.replace(':', "")));
    let restored = device
        .as_deref()
        .is_some_and(|fp| shared.revocations.restore_device(fp));
    if restored {
        tracing::warn!(device = ?device, by = %caller, remote = %conn.remote, "device revocation lifted by an operator");
    }
    json(
        if restored {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        },
        serde_json::json!({ "ok": restored }),
    )
}

async fn read_json(req: Request<Incoming>) -> Option<serde_json::Value> {
    use http_body_util::BodyExt;
    let bytes = http_body_util::Limited::new(req.into_body(), 16 * 1024)
        .collect()
        .await
        .ok()?
        .to_bytes();
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .filter(serde_json::Value::is_object)
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
