//! Accepting connections: limits, the TLS handshake, one HTTP connection task each, and a
//! graceful drain on shutdown.

use crate::config::Snapshot;
use crate::decision_log::DecisionLog;
use crate::framing::{Verdict, Watch};
use crate::metrics::{Metrics, Reason};
use crate::tls::{PeerCert, handshake_failure_reason};
use arc_swap::ArcSwap;
use http::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// State shared by every connection for the life of the process.
pub struct Shared {
    /// The configuration in force; swapped whole on reload.
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Arc<Metrics>,
    pub decisions: DecisionLog,
    /// Random per process, prefixes request ids.
    pub instance_id: String,
    pub no_route_label: Arc<str>,
    /// Session re-verifications in flight.
    pub reverifier: crate::identity::verify::Reverifier,
    /// Open connections, for the live verifier.
    pub live: crate::live::Registry,
    /// Sessions, users and devices revoked by operators or the provider.
    pub revocations: crate::revocation::Revocations,
    /// The risk engine's memory: recent denials, devices seen per user.
    pub posture: crate::posture::Memory,
    next_connection: AtomicU64,
}

impl Shared {
    pub fn new(snapshot: Snapshot, metrics: Arc<Metrics>, decisions: DecisionLog) -> Arc<Self> {
        let mut random = [0u8; 6];
        let _ = aws_lc_rs::rand::fill(&mut random);
        metrics.config_generation.set(snapshot.generation as i64);
        Arc::new(Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            decisions,
            instance_id: crate::certs::hex(&random),
            no_route_label: Arc::from("(none)"),
            reverifier: Default::default(),
            live: Default::default(),
            revocations: Default::default(),
            posture: Default::default(),
            next_connection: AtomicU64::new(1),
        })
    }
}

/// When bytes last moved on a connection, for idle timeouts.
#[derive(Debug, Clone)]
pub struct Activity {
    origin: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Completes once nothing has moved for `timeout`.
    pub async fn idle(&self, timeout: Duration) {
        loop {
            let last = self.origin + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// The last assertion signed for a connection, reused while it says the same thing.
pub struct CachedAssertion {
    pub key: u64,
    pub issued_at: i64,
    pub value: HeaderValue,
}

/// One downstream connection after its handshake: who it is and how to stop it.
pub struct Connection {
    pub id: u64,
    pub remote: SocketAddr,
    pub peer: Arc<PeerCert>,
    /// `peer.fingerprint_hex` as a header value, computed once.
    pub peer_fingerprint: HeaderValue,
    /// The TLS server name the client asked for, lower-case.
    pub sni: Option<String>,
    pub activity: Activity,
    pub idle_timeout: Duration,
    /// Cancelled to close the connection gracefully (drain), and any tunnel opened on it.
    pub closing: CancellationToken,
    /// Cancelled to cut the connection off at once: it no longer passes verification.
    pub kill: CancellationToken,
    /// The verified client certificate chain, leaf first, for re-verification.
    pub chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// Configuration generation the chain was last verified under.
    verified_generation: AtomicU64,
    /// The last signed assertion (see `pipeline::assertion`).
    pub assertion: std::sync::Mutex<Option<CachedAssertion>>,
    /// Responses streaming and tunnels open on this connection, with what allowed them.
    pub streams: std::sync::Mutex<Vec<crate::live::Stream>>,
    registry: std::sync::Weak<Shared>,
    pub metrics: Arc<Metrics>,
    /// HTTP/1 framing conflicts seen on the wire (see `framing`).
    pub framing: Arc<Verdict>,
    /// HTTP/1 requests started on this connection, to match against `framing`.
    pub h1_requests: AtomicU64,
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    pub fn verified_generation(&self) -> u64 {
        self.verified_generation.load(Ordering::Relaxed)
    }

    pub fn set_verified_generation(&self, generation: u64) {
        self.verified_generation
            .store(generation, Ordering::Relaxed);
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.metrics.connections_open.dec();
        if let Some(shared) = self.registry.upgrade() {
            shared.live.remove(self.id);
        }
    }
}

/// Accepts connections until `shutdown` is cancelled, then drains for up to `drain`.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let limit = shared.snapshot.load().max_connections;
    let slots = Arc::new(Semaphore::new(limit));
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            // An IPv4 client on a dual-stack listener is ::ffff:a.b.c.d; rules and logs want a.b.c.d.
            Ok((stream, remote)) => (
                stream,
                SocketAddr::new(remote.ip().to_canonical(), remote.port()),
            ),
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            shared.metrics.connections_rejected.inc();
            tracing::warn!(%remote, limit, "connection refused: max_connections reached");
            drop(stream);
            continue;
        };
        tracker.spawn(connection(
            stream,
            remote,
            permit,
            shared.clone(),
            shutdown.child_token(),
        ));
    }
    drop(listener);
    tracker.close();
    let drain = shared.snapshot.load().drain_timeout;
    tracing::info!(open = tracker.len(), ?drain, "draining connections");
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!(
            open = tracker.len(),
            "drain deadline passed; closing the rest"
        );
    }
}

async fn connection(
    stream: TcpStream,
    remote: SocketAddr,
    permit: OwnedSemaphorePermit,
    shared: Arc<Shared>,
    closing: CancellationToken,
) {
    let snapshot = shared.snapshot.load_full();
    let _ = stream.set_nodelay(true);
    let acceptor = tokio_rustls::TlsAcceptor::from(snapshot.tls.clone());
    let handshake = tokio::time::timeout(snapshot.handshake_timeout, acceptor.accept(stream));
    let tls = match handshake.await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return handshake_failed(&shared, remote, handshake_failure_reason(&e), &e),
        Err(_) => {
            let e = io::Error::new(io::ErrorKind::TimedOut, "handshake timed out");
            return handshake_failed(&shared, remote, "timeout", &e);
        }
    };
    shared.metrics.handshakes.inc();
    let (_, session) = tls.get_ref();
    let Some(leaf) = session.peer_certificates().and_then(|c| c.first()) else {
        // The verifier makes a certificate mandatory; this is belt and braces.
        let e = io::Error::other("no client certificate after handshake");
        return handshake_failed(&shared, remote, "no_certificate", &e);
    };
    if session.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
        let chain = session.peer_certificates().unwrap_or_default();
        let intermediates = chain.get(1..).unwrap_or_default();
        let now = rustls::pki_types::UnixTime::now();
        if let Err(e) = snapshot
            .client_verifier
            .verify_client_cert(leaf, intermediates, now)
        {
            let reason = crate::tls::tls_failure_reason(&e);
            let e = io::Error::other(format!("resumed session refused: {e}"));
            return handshake_failed(&shared, remote, reason, &e);
        }
    }
    let peer = match PeerCert::from_der(leaf.as_ref()) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            let e = io::Error::other(format!("unreadable client certificate: {e}"));
            return handshake_failed(&shared, remote, "bad_certificate", &e);
        }
    };
    if shared.revocations.device(&peer.fingerprint_hex) {
        let e = io::Error::other("device certificate revoked by an operator");
        return handshake_failed(&shared, remote, "device_revoked", &e);
    }
    let chain: Vec<rustls::pki_types::CertificateDer<'static>> = session
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let sni = session.server_name().map(str::to_ascii_lowercase);
    let framing = Verdict::new();
    let watch = (session.alpn_protocol() != Some(b"h2")).then(|| Watch::new(framing.clone()));
    let id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    shared.metrics.connections_open.inc();
    let conn = Arc::new(Connection {
        id,
        remote,
        peer_fingerprint: HeaderValue::from_str(&peer.fingerprint_hex)
            .unwrap_or_else(|_| HeaderValue::from_static("")),
        peer,
        sni,
        activity: Activity::new(),
        idle_timeout: snapshot.idle_timeout,
        closing,
        kill: CancellationToken::new(),
        chain,
        verified_generation: AtomicU64::new(snapshot.generation),
        streams: std::sync::Mutex::new(Vec::new()),
        assertion: std::sync::Mutex::new(None),
        registry: Arc::downgrade(&shared),
        metrics: shared.metrics.clone(),
        framing,
        h1_requests: AtomicU64::new(0),
        _permit: permit,
    });
    conn.activity.touch();
    shared.live.insert(&conn);
    tracing::debug!(conn = id, %remote, subject = %conn.peer.subject, "connection open");

    let io = TokioIo::new(Tracked {
        inner: tls,
        activity: conn.activity.clone(),
        watch,
    });
    let service = {
        let shared = shared.clone();
        let conn = conn.clone();
        service_fn(move |req| {
            let shared = shared.clone();
            let conn = conn.clone();
            async move { Ok::<_, Infallible>(crate::pipeline::handle(&shared, &conn, req).await) }
        })
    };
    let http = snapshot.http.clone();
    let drain = snapshot.drain_timeout;
    drop(snapshot);
    let serving = http.serve_connection_with_upgrades(io, service);
    tokio::pin!(serving);
    let mut draining: Option<tokio::time::Instant> = None;
    loop {
        let hard_stop = async {
            match draining {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = serving.as_mut() => {
                if let Err(e) = result {
                    note_connection_error(&shared, id, &*e);
                }
                break;
            }
            () = conn.closing.cancelled(), if draining.is_none() => {
                serving.as_mut().graceful_shutdown();
                draining = Some(tokio::time::Instant::now() + drain);
            }
            () = conn.activity.idle(conn.idle_timeout), if draining.is_none() => {
                shared.metrics.limit("idle_timeout");
                serving.as_mut().graceful_shutdown();
                draining = Some(tokio::time::Instant::now() + drain);
            }
            () = conn.kill.cancelled() => break,
            () = hard_stop => break,
        }
    }
    tracing::debug!(conn = id, "connection closed");
}

fn handshake_failed(shared: &Shared, remote: SocketAddr, reason: &'static str, e: &io::Error) {
    shared
        .metrics
        .handshake_failures
        .get_or_create(&Reason { reason })
        .inc();
    tracing::info!(%remote, reason, error = %e, "TLS handshake refused");
}

/// Counts limits hyper enforces itself (header timeout, header size).
fn note_connection_error(shared: &Shared, id: u64, e: &(dyn std::error::Error + 'static)) {
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_timeout() {
                shared.metrics.limit("header_read_timeout");
                tracing::info!(conn = id, "closed: request headers not received in time");
                return;
            }
            if h.is_parse_too_large() {
                shared.metrics.limit("header_size");
                tracing::info!(conn = id, "closed: request head too large");
                return;
            }
        }
        source = err.source();
    }
    tracing::debug!(conn = id, error = %e, "connection ended with an error");
}

/// The TLS stream, noting when bytes move and, on HTTP/1, watching request framing.
struct Tracked<T> {
    inner: T,
    activity: Activity,
    watch: Option<Watch>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
            let this = &mut *self;
            if let Some(watch) = &mut this.watch {
                watch.feed(&buf.filled()[before..]);
            }
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
