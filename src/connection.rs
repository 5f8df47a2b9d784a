//! One downstream connection after its handshake, the registry of every open one, and the
//! streams (responses still streaming, tunnels) open on each, with what allowed them: what the
//! request path records and the live verifier re-checks.

use crate::framing::Findings;
use crate::identity::session::Session;
use crate::identity::{Identity, Sessions};
use crate::metrics::Metrics;
use crate::tls::PeerCert;
use http::HeaderValue;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// When bytes last moved on a connection, for idle timeouts.
#[derive(Debug, Clone)]
pub struct Activity {
    origin: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn touch(&self) {
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

/// The client's address as text (the decision log's `client`) and as the `X-Forwarded-For`
/// value, and the SPIFFE ID as the `X-Vigil-Workload` value.
pub struct Shown {
    pub client_ip: Box<str>,
    pub forwarded_for: HeaderValue,
    pub workload: Option<HeaderValue>,
}

impl Shown {
    pub fn new(client: std::net::IpAddr, peer: &PeerCert) -> Self {
        let client_ip: Box<str> = client.to_string().into();
        Self {
            forwarded_for: crate::canonical::header_safe(&client_ip),
            client_ip,
            workload: peer.spiffe_id.as_deref().map(crate::canonical::header_safe),
        }
    }
}

/// One downstream connection after its handshake: who it is and how to stop it.
pub struct Connection {
    pub id: u64,
    pub remote: SocketAddr,
    pub peer: Arc<PeerCert>,
    /// `peer.fingerprint_hex` as a header value, computed once.
    pub peer_fingerprint: HeaderValue,
    /// What its requests show of the connection, written once for all of them.
    pub shown: Shown,
    /// The TLS server name the client asked for, lower-case.
    pub sni: Option<String>,
    /// The TLS version negotiated, as [`tls_version`] names it (the decision log's `tls`).
    pub tls_version: Option<&'static str>,
    pub activity: Activity,
    pub idle_timeout: Duration,
    /// Cancelled to close the connection gracefully (drain), and any tunnel opened on it.
    pub closing: CancellationToken,
    /// Cancelled to cut the connection off at once: it no longer passes verification.
    pub kill: CancellationToken,
    /// The verified client certificate chain, leaf first, for re-verification.
    pub chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// Configuration generation the chain was last verified under.
    pub(crate) verified_generation: AtomicU64,
    /// The last signed assertion (see `pipeline::assertion`).
    pub assertion: Mutex<Option<CachedAssertion>>,
    /// The last session cookie opened on this connection (see [`Connection::opened_session`]).
    pub opened_session: Mutex<Option<OpenedSession>>,
    /// Responses streaming and tunnels open on this connection, with what allowed them.
    pub streams: Mutex<Vec<Stream>>,
    /// The grants its requests were allowed by and the people who used it: when a grant ends
    /// or a person is blocked, the connection is cut.
    pub standing: Mutex<Standing>,
    /// Where this connection is listed, to leave it when dropped.
    pub(crate) registry: Weak<Registry>,
    pub metrics: Arc<Metrics>,
    /// HTTP/1 framing conflicts seen on the wire (see `framing`).
    pub framing: Arc<Findings>,
    /// HTTP/1 requests started on this connection, to match against `framing`.
    pub h1_requests: AtomicU64,
    /// The connection slot it holds (in all and for its source), released when dropped.
    pub(crate) _permit: Box<dyn Send + Sync>,
    /// Counted in `vigil_connections_open` (and uncounted when dropped): false for the end
    /// client an enforcement point asks about, which is no connection of Vigil's.
    pub(crate) counted: bool,
}

/// What a connection's requests rested on, beyond its certificate.
#[derive(Debug, Default)]
pub struct Standing {
    /// Ids of the grants that allowed requests on it.
    pub grants: Vec<String>,
    /// Subjects (and emails) of the people whose requests it carried.
    pub people: Vec<String>,
}

/// Grants and people a connection remembers at most; the oldest make room.
const STANDING_KEPT: usize = 8;

impl Standing {
    fn note(list: &mut Vec<String>, item: &str) {
        if list.iter().any(|have| have == item) {
            return;
        }
        if list.len() >= STANDING_KEPT {
            list.remove(0);
        }
        list.push(item.to_owned());
    }
}

impl Connection {
    /// Notes that a request on this connection was allowed by grant `id`.
    pub fn note_grant(&self, id: &str) {
        if let Ok(mut s) = self.standing.lock() {
            Standing::note(&mut s.grants, id);
        }
    }

    /// Notes a person whose request this connection carried.
    pub fn note_person(&self, subject: &str, email: Option<&str>) {
        if let Ok(mut s) = self.standing.lock() {
            Standing::note(&mut s.people, subject);
            if let Some(email) = email {
                Standing::note(&mut s.people, &email.to_ascii_lowercase());
            }
        }
    }
}

/// A TLS version as logs name it: `TLSv1.3`, `TLSv1.2`; `None` before a handshake ends.
pub fn tls_version(version: Option<rustls::ProtocolVersion>) -> Option<&'static str> {
    use rustls::ProtocolVersion;
    Some(match version? {
        ProtocolVersion::TLSv1_3 => "TLSv1.3",
        ProtocolVersion::TLSv1_2 => "TLSv1.2",
        ProtocolVersion::TLSv1_1 => "TLSv1.1",
        ProtocolVersion::TLSv1_0 => "TLSv1.0",
        _ => "other",
    })
}

/// A session cookie opened on a connection, and what it opened to.
pub struct OpenedSession {
    sealed: Box<str>,
    /// The `[session]` (its key ring) it was opened with: held weakly, so it stays the same
    /// allocation, never a later one at the same address.
    under: Weak<Sessions>,
    session: Session,
    /// Who it says, as `Identity::from_session` made it with `mfa_amr`.
    identity: Arc<Identity>,
    mfa_amr: Vec<String>,
}

impl Connection {
    /// The session `sealed` opens to under `sessions`' keys, and who it says (made with
    /// `mfa_amr`), when it is the cookie this connection last opened with the same `[session]`
    /// and `mfa_amr`: a browser sends the same cookie with every request, and opening it
    /// (base64, AES-GCM, JSON) is most of what a session costs. The same text under the same
    /// keys opens to the same session, so nothing is taken on trust that opening would have
    /// refused; every check of the session is made after.
    pub fn opened_session(
        &self,
        sealed: &str,
        sessions: &Arc<Sessions>,
        mfa_amr: &[String],
    ) -> Option<(Session, Arc<Identity>)> {
        let opened = self.opened_session.lock().ok()?;
        let o = opened.as_ref()?;
        (std::ptr::eq(o.under.as_ptr(), Arc::as_ptr(sessions))
            && *o.sealed == *sealed
            && o.mfa_amr == mfa_amr)
            .then(|| (o.session.clone(), o.identity.clone()))
    }

    /// Keeps `session`, opened from `sealed` under `sessions`' keys, and its `identity` (made
    /// with `mfa_amr`), for the next request.
    pub fn keep_opened_session(
        &self,
        sealed: &str,
        sessions: &Arc<Sessions>,
        session: &Session,
        identity: &Arc<Identity>,
        mfa_amr: &[String],
    ) {
        if let Ok(mut opened) = self.opened_session.lock() {
            *opened = Some(OpenedSession {
                sealed: sealed.into(),
                under: Arc::downgrade(sessions),
                session: session.clone(),
                identity: identity.clone(),
                mfa_amr: mfa_amr.to_vec(),
            });
        }
    }
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
        if self.counted {
            self.metrics.connections_open.dec();
        }
        if let Some(registry) = self.registry.upgrade() {
            registry.remove(self.id);
        }
    }
}

/// Every open connection, by id.
#[derive(Default)]
pub struct Registry {
    connections: Mutex<HashMap<u64, Weak<Connection>>>,
    /// Wakes the verifier before its interval (reload, revocation).
    pub(crate) wake: Notify,
    /// When the oldest pending wake was ordered, for the cut-off latency metric.
    pub(crate) ordered: Mutex<Option<std::time::Instant>>,
}

impl Registry {
    pub fn insert(&self, conn: &Arc<Connection>) {
        if let Ok(mut map) = self.connections.lock() {
            map.insert(conn.id, Arc::downgrade(conn));
        }
    }

    pub fn remove(&self, id: u64) {
        if let Ok(mut map) = self.connections.lock() {
            map.remove(&id);
        }
    }

    /// Asks the verifier to re-check every connection now (after a reload or a revocation).
    pub fn recheck_now(&self) {
        if let Ok(mut ordered) = self.ordered.lock() {
            ordered.get_or_insert_with(std::time::Instant::now);
        }
        self.wake.notify_one();
    }

    pub fn len(&self) -> usize {
        self.connections.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every connection still open.
    pub fn connections(&self) -> Vec<Arc<Connection>> {
        self.connections
            .lock()
            .map(|m| m.values().filter_map(Weak::upgrade).collect())
            .unwrap_or_default()
    }
}

/// What a response stream or tunnel was allowed on: re-decided while it is open, as if its
/// request arrived now.
#[derive(Clone)]
pub struct StreamOrigin {
    pub host: String,
    pub path: String,
    pub method: http::Method,
    /// The request's headers that the route's rules look at (none on most routes).
    pub headers: Vec<(String, String)>,
    /// The session the request came with, on login routes.
    pub session: Option<Session>,
    /// The verified bearer token's identity, on bearer routes.
    pub bearer: Option<Arc<Identity>>,
}

/// A response in flight or an open tunnel on a connection.
pub struct Stream {
    pub id: u64,
    pub origin: StreamOrigin,
    /// An HTTP/2 stream can be reset alone; anything else is cut with its connection.
    pub http2: bool,
    /// Cancelled when the stream no longer passes: its body ends with an error.
    pub cut: CancellationToken,
}

static STREAMS: AtomicU64 = AtomicU64::new(0);

/// Registers a stream on `conn` for the verifier; it stays registered until the returned
/// guard is dropped (the response body ends or is dropped, the tunnel closes).
pub fn register(conn: &Arc<Connection>, origin: StreamOrigin, http2: bool) -> Registration {
    let id = STREAMS.fetch_add(1, Ordering::Relaxed);
    let cut = CancellationToken::new();
    if let Ok(mut streams) = conn.streams.lock() {
        streams.push(Stream {
            id,
            origin,
            http2,
            cut: cut.clone(),
        });
    }
    Registration {
        conn: conn.clone(),
        id,
        cut,
    }
}

/// A registered stream; deregisters on drop.
pub struct Registration {
    conn: Arc<Connection>,
    id: u64,
    cut: CancellationToken,
}

impl Registration {
    /// Cancelled when the verifier cuts this stream.
    pub fn token(&self) -> &CancellationToken {
        &self.cut
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut streams) = self.conn.streams.lock()
            && let Some(at) = streams.iter().position(|s| s.id == self.id)
        {
            streams.swap_remove(at);
            if streams.is_empty() {
                // An idle keep-alive connection keeps no room for streams it no longer has.
                *streams = Vec::new();
            }
        }
    }
}
