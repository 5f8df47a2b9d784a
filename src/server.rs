//! Accepting connections: limits, the TLS handshake, one HTTP connection task each, and a
//! graceful drain on shutdown.

use crate::config::Snapshot;
use crate::connection::{Activity, Connection};
use crate::framing::{Findings, Watch};
use crate::metrics::Reason;
use crate::proxy_protocol::{self, HeaderError};
use crate::state::Shared;
use crate::tls::{PeerCert, handshake_failure_reason, verify_again};
use http::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::IpAddr;
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

/// Accepts connections until `shutdown` is cancelled, then drains for up to `drain`.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let limit = shared.snapshot.load().max_connections;
    let slots = Arc::new(Semaphore::new(limit));
    let gate = Arc::new(Gate::default());
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
        let admitted = match slots.clone().try_acquire_owned() {
            Ok(global) => admit(&shared, &gate, remote, global),
            Err(_) => Err(Refused::Global),
        };
        let admitted = match admitted {
            Ok(admitted) => admitted,
            Err(refused) => {
                gate.refuse::<()>(&shared, remote, refused);
                drop(stream);
                continue;
            }
        };
        tracker.spawn(connection(
            stream,
            remote,
            admitted,
            shared.clone(),
            gate.clone(),
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

/// A connection admitted at accept, with what the snapshot of that moment said about it.
enum Admitted {
    /// From a peer that is not a load balancer: it holds its slot in `max_connections` and
    /// its place in its own source's share. `sniff`: PROXY headers are on, so it must not
    /// send one.
    Direct { slot: Slot, sniff: bool },
    /// From a load balancer, whose PROXY header is still to be read: only its slot in
    /// `max_connections` for now. The source's share is taken for the client the header
    /// names, once read (the balancer itself is no one's source), so that one balancer does
    /// not use up a single source's share for every client behind it.
    Balanced {
        global: OwnedSemaphorePermit,
        timeout: Duration,
    },
}

/// Admits a connection holding a slot of `max_connections`, or refuses it for its source's
/// share. The per-source limits count the TCP peer, except for a load balancer's connection,
/// counted against its client once the header is read (see [`arrive`]).
fn admit(
    shared: &Shared,
    gate: &Gate,
    peer: SocketAddr,
    global: OwnedSemaphorePermit,
) -> Result<Admitted, Refused> {
    let snapshot = shared.snapshot.load();
    let proxy = snapshot.proxy_protocol.as_ref();
    if let Some(p) = proxy.filter(|p| p.expected_from(peer.ip())) {
        return Ok(Admitted::Balanced {
            global,
            timeout: p.timeout,
        });
    }
    let source = gate.sources.admit(
        Source::of(peer.ip()),
        snapshot.max_connections_per_source,
        snapshot.max_handshakes_per_source,
    )?;
    Ok(Admitted::Direct {
        slot: Slot {
            _global: global,
            source,
        },
        sniff: proxy.is_some(),
    })
}

/// A connection whose client is known: the address every rule, limit and log uses (the TCP
/// peer's, or the one its balancer's PROXY header named), its slots, and when its TLS
/// handshake must be done.
struct Arrived {
    stream: TcpStream,
    remote: SocketAddr,
    slot: Slot,
    handshake_by: tokio::time::Instant,
}

/// Who the connection is from. A load balancer's connection must start with a PROXY header
/// (see [`balanced`]). Any other connection must not start with one while PROXY headers are
/// on: a client never asserts its own address. Refusals are counted and logged here.
async fn arrive(
    shared: &Shared,
    snapshot: &Snapshot,
    gate: &Gate,
    stream: TcpStream,
    peer: SocketAddr,
    admitted: Admitted,
) -> Option<Arrived> {
    let (slot, sniff) = match admitted {
        Admitted::Direct { slot, sniff } => (slot, sniff),
        Admitted::Balanced { global, timeout } => {
            return balanced(shared, snapshot, gate, stream, peer, global, timeout).await;
        }
    };
    let handshake_by = tokio::time::Instant::now() + snapshot.handshake_timeout;
    if sniff {
        let first = proxy_protocol::starts_with_header(&stream);
        match tokio::time::timeout_at(handshake_by, first).await {
            Ok(Ok(true)) => return gate.refuse(shared, peer, Refused::HeaderUntrusted),
            // Anything else is for the TLS handshake to take or refuse.
            Ok(_) => {}
            Err(_) => return handshake_failed(shared, peer, "timeout", &timed_out()),
        }
    }
    Some(Arrived {
        stream,
        remote: peer,
        slot,
        handshake_by,
    })
}

/// A load balancer's connection: its PROXY header, read within `timeout`, names the client
/// (or, for `LOCAL` and the like, none: the balancer is then the client), whose share of the
/// per-source limits it takes; the TLS handshake's time starts once the header is read.
async fn balanced(
    shared: &Shared,
    snapshot: &Snapshot,
    gate: &Gate,
    mut stream: TcpStream,
    peer: SocketAddr,
    global: OwnedSemaphorePermit,
    timeout: Duration,
) -> Option<Arrived> {
    let remote = match proxy_protocol::read(&mut stream, timeout).await {
        // An IPv4 client named in a v6 header is a.b.c.d, as at accept.
        Ok(Some(client)) => SocketAddr::new(client.ip().to_canonical(), client.port()),
        // v2 LOCAL (the balancer's own health check), v1 UNKNOWN, no IP family.
        Ok(None) => peer,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "PROXY protocol header refused");
            return gate.refuse(shared, peer, Refused::from(&e));
        }
    };
    tracing::debug!(%remote, balancer = %peer, "client named by the PROXY protocol header");
    let source = gate.sources.admit(
        Source::of(remote.ip()),
        snapshot.max_connections_per_source,
        snapshot.max_handshakes_per_source,
    );
    let source = match source {
        Ok(source) => source,
        Err(refused) => return gate.refuse(shared, remote, refused),
    };
    Some(Arrived {
        stream,
        remote,
        slot: Slot {
            _global: global,
            source,
        },
        handshake_by: tokio::time::Instant::now() + snapshot.handshake_timeout,
    })
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "handshake timed out")
}

/// One accepted connection to its end: who it is from, the TLS handshake, the client's
/// certificate, the connection record, then HTTP as ALPN chose.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    admitted: Admitted,
    shared: Arc<Shared>,
    gate: Arc<Gate>,
    closing: CancellationToken,
) {
    let snapshot = shared.snapshot.load_full();
    let arrived = arrive(&shared, &snapshot, &gate, stream, peer, admitted).await;
    drop(gate);
    let Some(Arrived {
        stream,
        remote,
        slot: mut permit,
        handshake_by,
    }) = arrived
    else {
        return;
    };
    let tls = handshake(
        &shared,
        &snapshot,
        stream,
        remote,
        handshake_by,
        &mut permit.source,
    );
    let Some(tls) = tls.await else {
        return;
    };
    let (_, session) = tls.get_ref();
    let peer = match check_client(&shared, &snapshot, session, remote) {
        Ok(peer) => peer,
        Err((reason, e)) => {
            handshake_failed::<()>(&shared, remote, reason, &e);
            return;
        }
    };
    // Served as exactly what ALPN chose (see `HttpServer`): the framing watcher covers every
    // connection that is not HTTP/2.
    let h2 = session.alpn_protocol() == Some(b"h2");
    let conn = open(&shared, &snapshot, session, remote, peer, permit, closing);
    let watch = (!h2).then(|| Watch::new(conn.framing.clone()));
    let io = TokioIo::new(Tracked {
        inner: tls,
        activity: conn.activity.clone(),
        watch,
    });
    let service = {
        let shared = shared.clone();
        let conn = conn.clone();
        service_fn(move |req| -> Answering {
            let shared = shared.clone();
            let conn = conn.clone();
            boxed_in_place(move || async move {
                let h1 = req.version() <= http::Version::HTTP_11;
                let connect = req.method() == http::Method::CONNECT;
                let mut response = crate::pipeline::handle(&shared, &conn, req).await;
                if h1 {
                    after_h1_answer(&conn, &mut response, connect);
                }
                Ok(response)
            })
        })
    };
    let drain = snapshot.drain_timeout;
    let serving: Pin<Box<dyn Serving>> = if h2 {
        Box::pin(snapshot.http.http2.serve_connection(io, service))
    } else {
        Box::pin(
            snapshot
                .http
                .http1
                .serve_connection(io, service)
                .with_upgrades(),
        )
    };
    drop(snapshot);
    serve_until_closed(&shared, &conn, serving, drain).await;
    tracing::debug!(conn = conn.id, "connection closed");
}

/// The TLS handshake, done by `by` (`handshake_timeout` after the client was known). Failures
/// are counted and logged here.
async fn handshake(
    shared: &Shared,
    snapshot: &Snapshot,
    stream: TcpStream,
    remote: SocketAddr,
    by: tokio::time::Instant,
    source: &mut SourceSlot,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let _ = stream.set_nodelay(true);
    let acceptor = tokio_rustls::TlsAcceptor::from(snapshot.tls.clone());
    let handshake = tokio::time::timeout_at(by, acceptor.accept(stream));
    let handshake = handshake.await;
    source.handshake_done();
    match handshake {
        Ok(Ok(tls)) => {
            shared.metrics.handshakes.inc();
            Some(tls)
        }
        Ok(Err(e)) => handshake_failed(shared, remote, handshake_failure_reason(&e), &e),
        Err(_) => handshake_failed(shared, remote, "timeout", &timed_out()),
    }
}

/// The client's certificate after a completed handshake: present, verified again if the
/// session was resumed (TLS does not verify it then), readable, and not revoked by an
/// operator. A refusal is its reason label and what to log.
fn check_client(
    shared: &Shared,
    snapshot: &Snapshot,
    session: &rustls::ServerConnection,
    remote: SocketAddr,
) -> Result<Arc<PeerCert>, (&'static str, io::Error)> {
    let chain = session.peer_certificates().unwrap_or_default();
    let Some(leaf) = chain.first() else {
        // The verifier makes a certificate mandatory; this is belt and braces.
        let e = io::Error::other("no client certificate after handshake");
        return Err(("no_certificate", e));
    };
    if session.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
        let now = rustls::pki_types::UnixTime::now();
        if let Err(reason) = verify_again(snapshot.client_verifier.as_ref(), chain, now) {
            let e = io::Error::other(format!("resumed session refused: {reason}"));
            return Err((reason, e));
        }
    }
    let peer = match PeerCert::from_der(leaf.as_ref()) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            let e = io::Error::other(format!("unreadable client certificate: {e}"));
            return Err(("bad_certificate", e));
        }
    };
    if shared.revocations.device(&peer.fingerprint_hex) {
        revoked_device(shared, snapshot, &peer, remote);
        let e = io::Error::other("device certificate revoked by an operator");
        return Err(("device_revoked", e));
    }
    Ok(peer)
}

/// Tells the detectors that a revoked device certificate tried to connect.
fn revoked_device(shared: &Shared, snapshot: &Snapshot, peer: &PeerCert, remote: SocketAddr) {
    let who = crate::access::Who {
        user: None,
        email: None,
        groups: &[],
        spiffe: peer.spiffe_id.as_deref(),
        device: &peer.fingerprint_hex,
        address: Some(remote.ip()),
    };
    let seen = crate::anomaly::detect::Seen::Revoked;
    shared.detect(snapshot, seen, &who, crate::identity::now());
}

/// The record of a connection that passed its handshake, registered with the live
/// connections (which re-check it from now on) and counted as open.
fn open(
    shared: &Arc<Shared>,
    snapshot: &Snapshot,
    session: &rustls::ServerConnection,
    remote: SocketAddr,
    peer: Arc<PeerCert>,
    permit: Slot,
    closing: CancellationToken,
) -> Arc<Connection> {
    let chain: Vec<rustls::pki_types::CertificateDer<'static>> = session
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let sni = session.server_name().map(str::to_ascii_lowercase);
    let id = shared.next_connection_id();
    shared.metrics.connections_open.inc();
    let conn = Arc::new(Connection {
        id,
        remote,
        peer_fingerprint: HeaderValue::from_str(&peer.fingerprint_hex)
            .unwrap_or_else(|_| HeaderValue::from_static("")),
        shown: crate::connection::Shown::new(remote.ip(), &peer),
        peer,
        sni,
        tls_version: crate::connection::tls_version(session.protocol_version()),
        activity: Activity::new(),
        idle_timeout: snapshot.idle_timeout,
        closing,
        kill: CancellationToken::new(),
        chain,
        verified_generation: AtomicU64::new(snapshot.generation),
        streams: std::sync::Mutex::new(Vec::new()),
        standing: Default::default(),
        assertion: std::sync::Mutex::new(None),
        opened_session: std::sync::Mutex::new(None),
        registry: Arc::downgrade(&shared.live),
        metrics: shared.metrics.clone(),
        framing: Findings::new(),
        h1_requests: AtomicU64::new(0),
        _permit: Box::new(permit),
        counted: true,
    });
    conn.activity.touch();
    shared.live.insert(&conn);
    tracing::debug!(conn = id, %remote, subject = %conn.peer.subject, "connection open");
    conn
}

/// Serves the connection until it ends, is killed, or has drained for `drain` after a
/// shutdown or its idle timeout.
async fn serve_until_closed(
    shared: &Shared,
    conn: &Connection,
    mut serving: Pin<Box<dyn Serving>>,
    drain: Duration,
) {
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
                    note_connection_error(shared, conn.id, &e);
                }
                break;
            }
            () = conn.closing.cancelled(), if draining.is_none() => {
                serving.as_mut().shut_down_gracefully();
                draining = Some(tokio::time::Instant::now() + drain);
            }
            () = conn.activity.idle(conn.idle_timeout), if draining.is_none() => {
                shared.metrics.limit("idle_timeout");
                serving.as_mut().shut_down_gracefully();
                draining = Some(tokio::time::Instant::now() + drain);
            }
            () = conn.kill.cancelled() => break,
            () = hard_stop => break,
        }
    }
}

/// The framing watcher's part in an HTTP/1 answer. A 101 (or a 2xx to CONNECT) hands the
/// connection to a tunnel: hyper reads no more requests, so watching ends there. An answer to
/// a request the watcher could not vouch for, or to a body that did not arrive in time, closes
/// the connection: what follows on it cannot be placed.
fn after_h1_answer(
    conn: &Connection,
    response: &mut http::Response<crate::body::Body>,
    connect: bool,
) {
    let next = conn.h1_requests.load(Ordering::Relaxed);
    let status = response.status();
    if status == http::StatusCode::SWITCHING_PROTOCOLS || (connect && status.is_success()) {
        conn.framing.upgraded(next);
    } else if status == http::StatusCode::REQUEST_TIMEOUT
        || conn.framing.refusal(next.saturating_sub(1)).is_some()
    {
        response
            .headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
}

/// Counts and logs a failed handshake; `None`, for the connection that ends here.
fn handshake_failed<T>(
    shared: &Shared,
    remote: SocketAddr,
    reason: &'static str,
    e: &io::Error,
) -> Option<T> {
    shared
        .metrics
        .handshake_failures
        .get_or_create(&Reason { reason })
        .inc();
    tracing::info!(%remote, reason, error = %e, "TLS handshake refused");
    None
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

/// One request's answer. Boxed: hyper keeps room for one request's future in every
/// connection, idle or not, and the whole pipeline's state (kilobytes) is then held only while
/// a request is in flight.
type Answering = Pin<
    Box<
        dyn std::future::Future<Output = Result<http::Response<crate::body::Body>, Infallible>>
            + Send,
    >,
>;

/// The future `make` returns, built in its box rather than on the stack and then copied there
/// (kilobytes, on every request).
fn boxed_in_place<F: std::future::Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

/// A connection being served: HTTP/1.1 (with upgrades) or HTTP/2, as ALPN chose.
trait Serving: std::future::Future<Output = hyper::Result<()>> + Send {
    fn shut_down_gracefully(self: Pin<&mut Self>);
}

impl<I, S, B> Serving for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    Self: std::future::Future<Output = hyper::Result<()>> + Send,
{
    fn shut_down_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, E, B> Serving for hyper::server::conn::http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
    Self: std::future::Future<Output = hyper::Result<()>> + Send,
{
    fn shut_down_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
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
                if watch.is_done() {
                    // Upgraded, or unsure (every later request is refused): nothing to look at.
                    this.watch = None;
                } else {
                    watch.feed(&buf.filled()[before..]);
                }
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

/// Where a connection comes from, for the per-source limits: an IPv4 address, or the /64 an
/// IPv6 address belongs to (one host usually has a whole /64 to pick addresses from, so a
/// finer key would let it rotate past the limit). IPv4-mapped IPv6 addresses count as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    V4(std::net::Ipv4Addr),
    V6(u64),
}

impl Source {
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(a) => Source::V4(a),
            IpAddr::V6(a) => Source::V6((u128::from(a) >> 64) as u64),
        }
    }
}

/// What one source holds now.
#[derive(Debug, Default)]
struct Held {
    open: usize,
    handshaking: usize,
}

/// Connections and TLS handshakes in progress per source, so that one source cannot take
/// every slot of `max_connections`. One entry per source with anything open, removed when
/// its last connection ends: memory is bounded by `max_connections`. Each accept and each
/// close takes the lock once, for a hash-map update.
#[derive(Debug, Default)]
pub struct Sources {
    held: std::sync::Mutex<HashMap<Source, Held>>,
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max_connections` reached.
    Global,
    /// The source has `max_connections_per_source` open.
    Connections,
    /// The source has `max_handshakes_per_source` handshakes in progress.
    Handshakes,
    /// A load balancer's connection did not start with a PROXY header (see
    /// [`HeaderError::Missing`]: usually the balancer is not set to send one).
    HeaderMissing,
    /// A load balancer's PROXY header was cut short, too long or malformed.
    HeaderInvalid,
    /// A load balancer's PROXY header was not whole within `proxy_protocol.timeout`.
    HeaderTimeout,
    /// A peer not listed in `proxy_protocol.from` sent a PROXY header: a client asserting an
    /// address of its choice, or a balancer missing from the list.
    HeaderUntrusted,
}

impl From<&HeaderError> for Refused {
    fn from(e: &HeaderError) -> Self {
        match e {
            HeaderError::Missing => Refused::HeaderMissing,
            HeaderError::Invalid(_) => Refused::HeaderInvalid,
            HeaderError::TimedOut(_) => Refused::HeaderTimeout,
        }
    }
}

impl Refused {
    pub fn reason(self) -> &'static str {
        match self {
            Refused::Global => "max_connections",
            Refused::Connections => "max_connections_per_source",
            Refused::Handshakes => "max_handshakes_per_source",
            Refused::HeaderMissing => "proxy_header_missing",
            Refused::HeaderInvalid => "proxy_header_invalid",
            Refused::HeaderTimeout => "proxy_header_timeout",
            Refused::HeaderUntrusted => "proxy_header_untrusted",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Refused::Global => "connection refused: max_connections reached",
            Refused::Connections => "connection refused: max_connections_per_source reached",
            Refused::Handshakes => "connection refused: max_handshakes_per_source reached",
            Refused::HeaderMissing => {
                "connection refused: a load balancer sent no PROXY protocol header"
            }
            Refused::HeaderInvalid => {
                "connection refused: invalid PROXY protocol header from a load balancer"
            }
            Refused::HeaderTimeout => {
                "connection refused: PROXY protocol header not received in time"
            }
            Refused::HeaderUntrusted => {
                "connection refused: PROXY protocol header from a peer not listed in proxy_protocol.from"
            }
        }
    }
}

impl Sources {
    /// Admits a new connection from `source` in its handshake, unless the source is at a
    /// limit (`0` is no limit).
    pub fn admit(
        self: &Arc<Self>,
        source: Source,
        max_open: usize,
        max_handshaking: usize,
    ) -> Result<SourceSlot, Refused> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        // A refusal needs a count of at least 1, so it never leaves an empty entry behind.
        let entry = held.entry(source).or_default();
        if max_open > 0 && entry.open >= max_open {
            Err(Refused::Connections)
        } else if max_handshaking > 0 && entry.handshaking >= max_handshaking {
            Err(Refused::Handshakes)
        } else {
            entry.open += 1;
            entry.handshaking += 1;
            Ok(SourceSlot {
                sources: self.clone(),
                source,
                handshaking: true,
            })
        }
    }

    fn release(&self, source: Source, handshake: bool, open: bool) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = held.get_mut(&source) {
            if handshake {
                entry.handshaking = entry.handshaking.saturating_sub(1);
            }
            if open {
                entry.open = entry.open.saturating_sub(1);
            }
            if entry.open == 0 && entry.handshaking == 0 {
                held.remove(&source);
            }
        }
    }

    /// Sources with anything open (for tests and debugging).
    pub fn len(&self) -> usize {
        self.held.lock().map_or(0, |h| h.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A connection's place in its source's share, given back when the connection ends.
#[derive(Debug)]
pub struct SourceSlot {
    sources: Arc<Sources>,
    source: Source,
    handshaking: bool,
}

impl SourceSlot {
    /// The handshake is over (whatever its outcome): it no longer counts as in progress.
    pub fn handshake_done(&mut self) {
        if std::mem::replace(&mut self.handshaking, false) {
            self.sources.release(self.source, true, false);
        }
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        self.sources.release(self.source, self.handshaking, true);
    }
}

/// What an accepted connection holds until it ends (tunnels opened on it included): its slot
/// in `max_connections` and its place in its source's share.
#[derive(Debug)]
pub struct Slot {
    _global: OwnedSemaphorePermit,
    source: SourceSlot,
}

/// What the accept loop shares with its connections, which may be refused after accept (a
/// load balancer's connection, once its PROXY header names the client): the per-source
/// shares and the log of refusals.
#[derive(Debug, Default)]
struct Gate {
    sources: Arc<Sources>,
    refusals: RefusalLog,
}

impl Gate {
    /// Counts (`vigil_connections_rejected_total{reason}`) and logs a refused connection;
    /// `None`, for the connection that ends here.
    fn refuse<T>(&self, shared: &Shared, remote: SocketAddr, refused: Refused) -> Option<T> {
        let reason = refused.reason();
        shared
            .metrics
            .connections_rejected
            .get_or_create(&Reason { reason })
            .inc();
        self.refusals.note(remote, reason, refused.message());
        None
    }
}

/// Refusals come in floods: one `warn` line per reason every ten seconds, with the number
/// left out since, and the rest at `debug`. Shared by the proxy's and the admin listener's
/// accept loops.
#[derive(Debug, Default)]
pub struct RefusalLog {
    next: std::sync::Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl RefusalLog {
    const EVERY: Duration = Duration::from_secs(10);

    pub fn note(&self, remote: SocketAddr, reason: &'static str, what: &'static str) {
        let now = Instant::now();
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let (at, suppressed) = next.entry(reason).or_insert((now, 0));
        if now < *at {
            *suppressed += 1;
            tracing::debug!(%remote, reason, "{what}");
            return;
        }
        let left_out = std::mem::take(suppressed);
        *at = now + Self::EVERY;
        drop(next);
        tracing::warn!(%remote, reason, left_out, "{what}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_sources_are_grouped_by_64_and_mapped_ipv4_is_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1"
            .parse()
            .unwrap_or(IpAddr::from([0; 16]));
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3"
            .parse()
            .unwrap_or(IpAddr::from([0; 16]));
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap_or(IpAddr::from([0; 16]));
        assert_eq!(Source::of(a), Source::of(b));
        assert_ne!(Source::of(a), Source::of(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap_or(IpAddr::from([0; 16]));
        assert_eq!(Source::of(mapped), Source::of(IpAddr::from([192, 0, 2, 7])));
    }

    #[test]
    fn per_source_defaults_are_shares_of_max_connections() {
        use crate::config::schema::ServerSection;
        let with = |max, conns, shakes| ServerSection {
            max_connections: max,
            max_connections_per_source: conns,
            max_handshakes_per_source: shakes,
            ..ServerSection::default()
        };
        let d = with(10_000, None, None);
        assert_eq!(
            (d.connections_per_source(), d.handshakes_per_source()),
            (1000, 100)
        );
        let small = with(8, None, None);
        assert_eq!(
            (
                small.connections_per_source(),
                small.handshakes_per_source()
            ),
            (1, 1)
        );
        let big = with(1_000_000, None, None);
        assert_eq!(big.handshakes_per_source(), 10_000);
        // Turning the connection share off turns the default handshake share off too.
        let off = with(10_000, Some(0), None);
        assert_eq!(
            (off.connections_per_source(), off.handshakes_per_source()),
            (0, 0)
        );
        let set = with(10_000, Some(50), Some(7));
        assert_eq!(
            (set.connections_per_source(), set.handshakes_per_source()),
            (50, 7)
        );
    }

    #[test]
    fn per_source_limits_count_and_release() {
        let sources = Arc::new(Sources::default());
        let one = Source::of(IpAddr::from([10, 0, 0, 1]));
        let two = Source::of(IpAddr::from([10, 0, 0, 2]));
        // Handshakes in progress: two at most.
        let mut a = sources.admit(one, 3, 2).expect("first");
        let b = sources.admit(one, 3, 2).expect("second");
        assert_eq!(sources.admit(one, 3, 2).err(), Some(Refused::Handshakes));
        assert!(
            sources.admit(two, 3, 2).is_ok(),
            "another source is not affected"
        );
        // A finished handshake frees its place; the connection stays counted.
        a.handshake_done();
        let mut c = sources.admit(one, 3, 2).expect("third");
        c.handshake_done();
        assert_eq!(sources.admit(one, 3, 2).err(), Some(Refused::Connections));
        drop((a, b, c));
        assert!(
            sources.is_empty(),
            "entries go when their count drops to zero"
        );
        // 0 is no limit.
        let many: Vec<_> = (0..50)
            .filter_map(|_| sources.admit(one, 0, 0).ok())
            .collect();
        assert_eq!(many.len(), 50);
        drop(many);
        assert!(sources.is_empty());
    }
}
