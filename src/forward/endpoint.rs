//! One upstream endpoint: an address a route's upstream URL resolves to, with its own
//! connection pool (capped at `max_connections`, each connection retired after
//! `max_requests_per_connection`) and the health that checks and the outlier detector keep
//! for it. Endpoints are shared by the routes and the snapshots that name the same address
//! with the same TLS settings, so a reload keeps their warm connections and their health.

use crate::body::{Body, BoxError};
use http::uri::Authority;
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Service, ServiceExt};

/// How to reach the endpoints of one TLS setting; every endpoint gets a pool of its own.
#[derive(Clone)]
pub struct Settings {
    pub tls: Arc<rustls::ClientConfig>,
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// Open connections per endpoint, and so (over HTTP/1.1) requests in flight; `None`:
    /// unbounded.
    pub max_connections: Option<usize>,
    /// Requests one connection carries before it is closed; `None`: unbounded.
    pub max_requests_per_connection: Option<u32>,
}

/// The `Host` header for an authority, written once rather than for every request: what the
/// HTTP client would write, the host with the port unless it is the scheme's default.
struct HostHeader {
    /// The host and its port, if the authority names one.
    named: HeaderValue,
    /// The port the authority names, with the host alone.
    port: Option<(u16, HeaderValue)>,
}

impl HostHeader {
    fn new(authority: &Authority) -> Self {
        let host = authority.host();
        let bare = HeaderValue::from_str(host).unwrap_or_else(|_| HeaderValue::from_static(""));
        match authority.port_u16() {
            Some(port) => Self {
                named: HeaderValue::from_str(&format!("{host}:{port}"))
                    .unwrap_or_else(|_| bare.clone()),
                port: Some((port, bare)),
            },
            None => Self {
                named: bare,
                port: None,
            },
        }
    }

    fn for_scheme(&self, scheme: Option<&http::uri::Scheme>) -> HeaderValue {
        let default = if scheme == Some(&http::uri::Scheme::HTTPS) {
            443
        } else {
            80
        };
        match &self.port {
            Some((port, bare)) if *port == default => bare.clone(),
            _ => self.named.clone(),
        }
    }
}

/// What the outlier detector ejects for: this many consecutive connect failures or 5xx
/// answers eject an endpoint for `base`, doubled at each ejection that follows within `max`,
/// never longer than `max`. `failures = 0`: never ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Outlier {
    pub failures: u32,
    pub base: Duration,
    pub max: Duration,
}

pub type Pool = Client<Connector, Body>;

/// One address of a route's upstream.
pub struct Endpoint {
    pub addr: SocketAddr,
    /// `addr` as text, written once: the decision log names it on every line.
    pub text: Arc<str>,
    /// The authority of the URL it came from: the request's URI (and so its `Host` and TLS
    /// server name) names it; the connection goes to `addr`.
    pub authority: Authority,
    host: HostHeader,
    client: Pool,
    /// Requests in flight, up to `max_connections`; shared by the endpoint's weight slots.
    pub slots: Arc<Semaphore>,
    max_requests_per_connection: Option<u32>,
    pub health: Health,
}

impl Endpoint {
    pub fn new(addr: SocketAddr, authority: Authority, settings: &Settings) -> Self {
        let mut http = HttpConnector::new_with_resolver(Fixed(addr));
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*settings.tls).clone())
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let connector = Connector {
            inner: https,
            connections: settings
                .max_connections
                .map(|n| Arc::new(Semaphore::new(n))),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(settings.pool_idle_timeout)
            .pool_max_idle_per_host(settings.pool_max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        let slots = settings
            .max_connections
            .unwrap_or(Semaphore::MAX_PERMITS)
            .min(Semaphore::MAX_PERMITS);
        Self {
            addr,
            text: addr.to_string().into(),
            host: HostHeader::new(&authority),
            authority,
            client,
            slots: Arc::new(Semaphore::new(slots)),
            max_requests_per_connection: settings.max_requests_per_connection,
            health: Health::default(),
        }
    }

    /// The `Host` header a request to this endpoint carries when the client's is not kept.
    pub fn host_header(&self, scheme: Option<&http::uri::Scheme>) -> HeaderValue {
        self.host.for_scheme(scheme)
    }

    /// Sends `req` on one of this endpoint's connections, retiring the connection once it
    /// has carried `max_requests_per_connection`.
    pub async fn send(
        &self,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        let Some(max) = self.max_requests_per_connection else {
            return self.client.request(req).await;
        };
        let captured = hyper_util::client::legacy::connect::capture_connection(&mut req);
        let response = self.client.request(req).await?;
        if let Some(carried) = response.extensions().get::<Carried>()
            && carried.0.fetch_add(1, Ordering::Relaxed) + 1 >= max
            && let Some(connected) = captured.connection_metadata().as_ref()
        {
            // A poisoned connection finishes this exchange and is never pooled again.
            connected.poison();
        }
        Ok(response)
    }

    /// One active health check: `GET path` answered with 2xx or 3xx within `within`.
    pub async fn check(&self, scheme: &http::uri::Scheme, path: &str, within: Duration) -> bool {
        let Ok(uri) = Uri::builder()
            .scheme(scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
        else {
            return false;
        };
        let Ok(req) = Request::get(uri).body(crate::body::empty()) else {
            return false;
        };
        let exchange = async {
            let response = self.client.request(req).await.ok()?;
            let ok = response.status().is_success() || response.status().is_redirection();
            // Read to the end, so the connection goes back to the pool.
            let body = http_body_util::Limited::new(response.into_body(), 64 * 1024);
            http_body_util::BodyExt::collect(body).await.ok()?;
            Some(ok)
        };
        matches!(tokio::time::timeout(within, exchange).await, Ok(Some(true)))
    }
}

/// What the checks and the outlier detector know of an endpoint. It starts healthy: traffic
/// flows at once, and a first failing check or failure streak takes it out.
pub struct Health {
    checked_ok: AtomicBool,
    /// Consecutive check results of one kind: passes while failing, failures while passing.
    streak: AtomicU32,
    /// Consecutive connect failures and 5xx answers.
    failures: AtomicU32,
    ejection: Mutex<Ejection>,
}

#[derive(Default)]
struct Ejection {
    until: Option<Instant>,
    /// Ejections in a row, each twice as long as the one before.
    count: u32,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            checked_ok: AtomicBool::new(true),
            streak: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            ejection: Mutex::new(Ejection::default()),
        }
    }
}

impl Health {
    /// Whether the balancer should send to it at `now`.
    pub fn usable(&self, now: Instant) -> bool {
        self.checked_ok.load(Ordering::Relaxed) && self.ejected_until().is_none_or(|t| t <= now)
    }

    pub fn checked_ok(&self) -> bool {
        self.checked_ok.load(Ordering::Relaxed)
    }

    pub fn ejected_until(&self) -> Option<Instant> {
        self.ejection.lock().ok().and_then(|e| e.until)
    }

    /// Counts a health check's result; true when it changed the endpoint's state (`unhealthy`
    /// failures in a row take it out, `healthy` passes in a row bring it back).
    pub fn checked(&self, ok: bool, unhealthy: u32, healthy: u32) -> bool {
        let was_ok = self.checked_ok.load(Ordering::Relaxed);
        if ok == was_ok {
            self.streak.store(0, Ordering::Relaxed);
            return false;
        }
        let streak = self.streak.fetch_add(1, Ordering::Relaxed) + 1;
        let needed = if was_ok { unhealthy } else { healthy };
        if streak < needed {
            return false;
        }
        self.streak.store(0, Ordering::Relaxed);
        self.checked_ok.store(ok, Ordering::Relaxed);
        if ok {
            // Back after a check: passive failures seen before it do not count.
            self.failures.store(0, Ordering::Relaxed);
        }
        true
    }

    /// Counts one exchange for the outlier detector; the ejection's length when this one
    /// ejected the endpoint.
    pub fn observed(&self, failed: bool, outlier: &Outlier) -> Option<Duration> {
        if !failed {
            if self.failures.load(Ordering::Relaxed) != 0 {
                self.failures.store(0, Ordering::Relaxed);
            }
            return None;
        }
        if outlier.failures == 0 {
            return None;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < outlier.failures {
            return None;
        }
        let now = Instant::now();
        let mut ejection = self.ejection.lock().ok()?;
        if ejection.until.is_some_and(|t| t > now) {
            return None;
        }
        // An ejection that follows the last one within `max` is twice as long.
        if ejection
            .until
            .is_none_or(|t| now.duration_since(t) > outlier.max)
        {
            ejection.count = 0;
        }
        let length = outlier
            .base
            .saturating_mul(1 << ejection.count.min(16))
            .min(outlier.max);
        ejection.count += 1;
        ejection.until = Some(now + length);
        self.failures.store(0, Ordering::Relaxed);
        Some(length)
    }
}

/// The resolver of an endpoint's connector: its one address, whatever the URI names.
#[derive(Clone)]
struct Fixed(SocketAddr);

impl Service<Name> for Fixed {
    type Response = std::iter::Once<SocketAddr>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Name) -> Self::Future {
        std::future::ready(Ok(std::iter::once(self.0)))
    }
}

/// Opens connections to one endpoint, at most `max_connections` at a time.
#[derive(Clone)]
pub struct Connector {
    inner: HttpsConnector<HttpConnector<Fixed>>,
    connections: Option<Arc<Semaphore>>,
}

type Connecting = Pin<Box<dyn Future<Output = Result<Counted, BoxError>> + Send>>;

impl Service<Uri> for Connector {
    type Response = Counted;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let inner = self.inner.clone();
        let connections = self.connections.clone();
        Box::pin(async move {
            // Held by the connection until it closes.
            let permit = match connections {
                Some(s) => Some(s.acquire_owned().await?),
                None => None,
            };
            let io = inner.oneshot(uri).await?;
            Ok(Counted {
                io,
                _permit: permit,
                carried: Carried(Arc::new(AtomicU32::new(0))),
            })
        })
    }
}

/// The requests one connection has carried, handed to every response it brings.
#[derive(Clone)]
struct Carried(Arc<AtomicU32>);

/// A connection to an endpoint, holding its place under `max_connections`.
pub struct Counted {
    io: MaybeHttpsStream<TokioIo<TcpStream>>,
    _permit: Option<OwnedSemaphorePermit>,
    carried: Carried,
}

impl Connection for Counted {
    fn connected(&self) -> Connected {
        self.io.connected().extra(self.carried.clone())
    }
}

impl hyper::rt::Read for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTLIER: Outlier = Outlier {
        failures: 3,
        base: Duration::from_secs(10),
        max: Duration::from_secs(60),
    };

    #[test]
    fn the_host_header_names_the_port_unless_it_is_the_schemes_default() {
        use http::uri::Scheme;
        let cases = [
            ("app.internal", Scheme::HTTP, "app.internal"),
            ("app.internal:80", Scheme::HTTP, "app.internal"),
            ("app.internal:443", Scheme::HTTPS, "app.internal"),
            ("app.internal:443", Scheme::HTTP, "app.internal:443"),
            ("app.internal:80", Scheme::HTTPS, "app.internal:80"),
            ("10.0.0.7:8080", Scheme::HTTP, "10.0.0.7:8080"),
            ("[::1]:8443", Scheme::HTTPS, "[::1]:8443"),
            ("[::1]:443", Scheme::HTTPS, "[::1]"),
        ];
        for (authority, scheme, host) in cases {
            let header = HostHeader::new(&authority.parse().unwrap());
            assert_eq!(
                header.for_scheme(Some(&scheme)),
                host,
                "{authority} over {scheme}"
            );
        }
    }

    #[test]
    fn consecutive_failures_eject_for_a_doubling_time_and_a_success_resets_the_count() {
        let health = Health::default();
        assert!(health.usable(Instant::now()));
        assert_eq!(health.observed(true, &OUTLIER), None);
        assert_eq!(health.observed(true, &OUTLIER), None);
        // A success in between: the count starts again.
        assert_eq!(health.observed(false, &OUTLIER), None);
        assert_eq!(health.observed(true, &OUTLIER), None);
        assert_eq!(health.observed(true, &OUTLIER), None);
        assert_eq!(
            health.observed(true, &OUTLIER),
            Some(Duration::from_secs(10))
        );
        assert!(!health.usable(Instant::now()));
        assert!(health.usable(Instant::now() + Duration::from_secs(11)));
        // Failures while ejected do not eject it again.
        for _ in 0..5 {
            assert_eq!(health.observed(true, &OUTLIER), None);
        }
    }

    #[test]
    fn an_ejection_soon_after_the_last_one_is_twice_as_long_up_to_the_max() {
        let health = Health::default();
        let eject = || {
            // Pretend the last ejection just ended.
            if let Ok(mut e) = health.ejection.lock() {
                e.until = e.until.map(|_| Instant::now());
            }
            (0..3).find_map(|_| health.observed(true, &OUTLIER))
        };
        let lengths: Vec<u64> = (0..5)
            .filter_map(|_| eject())
            .map(|d| d.as_secs())
            .collect();
        assert_eq!(lengths, [10, 20, 40, 60, 60]);
    }

    #[test]
    fn checks_take_an_endpoint_out_and_back_after_their_streaks() {
        let health = Health::default();
        assert!(!health.checked(false, 3, 2));
        assert!(!health.checked(false, 3, 2));
        // A pass breaks the streak.
        assert!(!health.checked(true, 3, 2));
        assert!(!health.checked(false, 3, 2));
        assert!(!health.checked(false, 3, 2));
        assert!(health.checked(false, 3, 2));
        assert!(!health.checked_ok());
        assert!(!health.usable(Instant::now()));
        assert!(!health.checked(true, 3, 2));
        assert!(health.checked(true, 3, 2));
        assert!(health.usable(Instant::now()));
    }

    #[test]
    fn zero_failures_turns_ejection_off() {
        let health = Health::default();
        let off = Outlier {
            failures: 0,
            ..OUTLIER
        };
        for _ in 0..100 {
            assert_eq!(health.observed(true, &off), None);
        }
        assert!(health.usable(Instant::now()));
    }
}
