//! Which endpoints a route's balancer may pick, kept current by one task per route: it
//! resolves the route's host names again every `[upstream] resolve_interval`, runs the
//! route's health checks, brings ejected endpoints back when their ejection ends, and sends
//! the balancer the difference. When no endpoint looks usable, every endpoint is (panic mode):
//! sending somewhere beats refusing everything on a health signal that may be wrong.

use super::endpoint::{Endpoint, Outlier, Settings};
use crate::body::{Body, BoxError};
use crate::metrics::{EndpointLabels, RouteLabel, UpstreamFamilies};
use http::uri::{Authority, Scheme};
use http::{Request, Response};
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};
use tower::Service;
use tower::discover::Change;
use tower::limit::ConcurrencyLimit;
use tower::load::{CompleteOnResponse, PendingRequests};
use tower::ready_cache::ReadyCache;

/// A balancer entry: the route's URL (by index), the address, and the weight slot (an
/// endpoint of weight 3 is in the balancer three times).
pub type Key = (usize, SocketAddr, u32);
/// What the balancer holds for one entry.
pub type Slot = PendingRequests<ConcurrencyLimit<EndpointService>, CompleteOnResponse>;

/// Set on a response: the endpoint that answered, as the decision log writes it.
#[derive(Debug, Clone)]
pub struct Served(pub Arc<str>);

/// The endpoints of one TLS setting, by URL authority and address; kept by the snapshot's
/// pools, so an endpoint lives while some route of some snapshot still uses it.
pub struct Endpoints {
    pub settings: Settings,
    known: Mutex<HashMap<(Authority, SocketAddr), Weak<Endpoint>>>,
}

impl Endpoints {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            known: Mutex::new(HashMap::new()),
        }
    }

    /// The endpoint for `addr` under `authority`: the one in use already, or a new one.
    pub fn get(&self, authority: &Authority, addr: SocketAddr) -> Arc<Endpoint> {
        let Ok(mut known) = self.known.lock() else {
            return Arc::new(Endpoint::new(addr, authority.clone(), &self.settings));
        };
        let key = (authority.clone(), addr);
        if let Some(endpoint) = known.get(&key).and_then(Weak::upgrade) {
            return endpoint;
        }
        known.retain(|_, e| e.strong_count() > 0);
        let endpoint = Arc::new(Endpoint::new(addr, authority.clone(), &self.settings));
        known.insert(key, Arc::downgrade(&endpoint));
        endpoint
    }

    /// The endpoints in use for `authority`: a host name's addresses as last resolved.
    pub fn live(&self, authority: &Authority) -> Vec<Arc<Endpoint>> {
        let Ok(known) = self.known.lock() else {
            return Vec::new();
        };
        let mut live: Vec<Arc<Endpoint>> = known
            .iter()
            .filter(|((a, _), _)| a == authority)
            .filter_map(|(_, e)| e.upgrade())
            .collect();
        live.sort_by_key(|e| e.addr);
        live
    }
}

/// One URL of a route's upstream.
pub struct Target {
    pub authority: Authority,
    pub weight: u32,
    /// An IP address: its one endpoint never changes.
    pub literal: bool,
    pub endpoints: Vec<Arc<Endpoint>>,
}

/// `health = { ... }`: the active checks of a route's endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub unhealthy: u32,
    pub healthy: u32,
}

/// What a route's endpoints share: its name, its outlier settings, the signal that an
/// endpoint changed state, and its metric series once the metrics are attached.
pub struct RouteState {
    pub label: Arc<str>,
    pub outlier: Outlier,
    pub changed: Notify,
    pub series: OnceLock<UpstreamFamilies>,
}

impl RouteState {
    fn labels(&self, addr: SocketAddr) -> EndpointLabels {
        EndpointLabels {
            route: RouteLabel(self.label.clone()),
            endpoint: addr.to_string(),
        }
    }
}

/// The series of one endpoint of one route.
struct EndpointSeries {
    in_flight: Gauge,
    ejections: Counter,
}

/// Sends to one endpoint for one route, and tells the outlier detector how it went.
#[derive(Clone)]
pub struct EndpointService {
    endpoint: Arc<Endpoint>,
    route: Arc<RouteState>,
    series: Arc<OnceLock<EndpointSeries>>,
}

type Sending = Pin<Box<dyn Future<Output = Result<Response<Incoming>, BoxError>> + Send>>;

impl Service<Request<Body>> for EndpointService {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = Sending;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let endpoint = &this.endpoint;
            // Compared as written (the route's URL gives both), not case-insensitively
            // character by character: a difference of case only rewrites it the same.
            if req.uri().authority().map(Authority::as_str) != Some(endpoint.authority.as_str()) {
                let mut parts = std::mem::take(req.uri_mut()).into_parts();
                parts.authority = Some(endpoint.authority.clone());
                *req.uri_mut() = http::Uri::from_parts(parts)?;
            }
            if !req.headers().contains_key(http::header::HOST) {
                let host = endpoint.host_header(req.uri().scheme());
                req.headers_mut().insert(http::header::HOST, host);
            }
            let series = this.series();
            if let Some(s) = series {
                s.in_flight.inc();
            }
            let result = endpoint.send(req).await;
            if let Some(s) = series {
                s.in_flight.dec();
            }
            let failed = match &result {
                Err(e) => e.is_connect(),
                Ok(r) => r.status().is_server_error(),
            };
            if let Some(length) = endpoint.health.observed(failed, &this.route.outlier) {
                tracing::warn!(route = %this.route.label, endpoint = %endpoint.addr, ejected_for = ?length, "endpoint ejected: consecutive connect failures or 5xx answers");
                if let Some(s) = series {
                    s.ejections.inc();
                }
                this.route.changed.notify_one();
            }
            match result {
                Ok(mut response) => {
                    response
                        .extensions_mut()
                        .insert(Served(endpoint.text.clone()));
                    Ok(response)
                }
                Err(error) => Err(Box::new(Failed {
                    addr: endpoint.addr,
                    error,
                }) as BoxError),
            }
        })
    }
}

impl EndpointService {
    /// The endpoint's series, fetched once the metrics are attached.
    fn series(&self) -> Option<&EndpointSeries> {
        if let Some(series) = self.series.get() {
            return Some(series);
        }
        let families = self.route.series.get()?;
        let labels = self.route.labels(self.endpoint.addr);
        let _ = self.series.set(EndpointSeries {
            in_flight: families.in_flight.get_or_create(&labels).clone(),
            ejections: families.ejections.get_or_create(&labels).clone(),
        });
        self.series.get()
    }
}

/// An exchange with an endpoint that failed: which one, and how.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct Failed {
    pub addr: SocketAddr,
    #[source]
    pub error: hyper_util::client::legacy::Error,
}

/// The balancer's side of the channel: a stream of endpoint changes.
pub struct Changes(mpsc::UnboundedReceiver<Change<Key, Slot>>);

impl futures_core::Stream for Changes {
    type Item = Result<Change<Key, Slot>, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|change| change.map(Ok))
    }
}

/// `balance = "round_robin"`: each ready endpoint in turn.
pub struct RoundRobin {
    changes: Changes,
    services: ReadyCache<Key, Slot, Request<Body>>,
    order: Vec<Key>,
    next: usize,
    chosen: Option<usize>,
}

impl RoundRobin {
    pub fn new(changes: Changes) -> Self {
        Self {
            changes,
            services: ReadyCache::default(),
            order: Vec::new(),
            next: 0,
            chosen: None,
        }
    }
}

impl Service<Request<Body>> for RoundRobin {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = <Slot as Service<Request<Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        while let Poll::Ready(Some(change)) = self.changes.0.poll_recv(cx) {
            match change {
                Change::Insert(key, slot) => {
                    self.order.retain(|k| *k != key);
                    self.order.push(key);
                    self.services.push(key, slot);
                }
                Change::Remove(key) => {
                    self.order.retain(|k| *k != key);
                    self.services.evict(&key);
                }
            }
        }
        // A failed entry is dropped from the cache; the controller inserts it again.
        while let Poll::Ready(Err(_)) = self.services.poll_pending(cx) {}
        for step in 0..self.order.len() {
            let at = (self.next + step) % self.order.len();
            if let Some((index, _, _)) = self.services.get_ready(&self.order[at]) {
                self.next = at + 1;
                self.chosen = Some(index);
                return Poll::Ready(Ok(()));
            }
        }
        Poll::Pending
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let index = self.chosen.take().unwrap_or(0);
        self.services.call_ready_index(index, req)
    }
}

/// What a route's task works from.
pub struct Plan {
    pub scheme: Scheme,
    pub targets: Vec<Target>,
    pub health: Option<HealthCheck>,
    pub resolve_interval: Duration,
}

/// The task that keeps a route's balancer current.
pub struct Controller {
    plan: Plan,
    endpoints: Arc<Endpoints>,
    route: Arc<RouteState>,
    tx: mpsc::UnboundedSender<Change<Key, Slot>>,
    inserted: HashSet<Key>,
    panic: bool,
}

impl Controller {
    /// A controller with the plan's endpoints already sent, and the balancer's end of the
    /// channel.
    pub fn new(plan: Plan, endpoints: Arc<Endpoints>, route: Arc<RouteState>) -> (Self, Changes) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut controller = Self {
            plan,
            endpoints,
            route,
            tx,
            inserted: HashSet::new(),
            panic: false,
        };
        controller.publish();
        (controller, Changes(rx))
    }

    /// Runs until `stop`: resolving, checking, and publishing what changed.
    pub async fn run(mut self, stop: tokio_util::sync::CancellationToken) {
        let start = tokio::time::Instant::now();
        // Host names are resolved at once: their endpoints are not known before.
        let mut resolve_at = start;
        let mut check_at = start;
        loop {
            let now = tokio::time::Instant::now();
            if now >= resolve_at {
                self.resolve().await;
                resolve_at = now + self.plan.resolve_interval;
            }
            if let Some(health) = self.plan.health.clone()
                && now >= check_at
            {
                self.check(&health).await;
                check_at = now + health.interval;
            }
            self.publish();
            let mut wake = resolve_at;
            if self.plan.health.is_some() {
                wake = wake.min(check_at);
            }
            if let Some(until) = self.next_readmission() {
                wake = wake.min(tokio::time::Instant::from_std(until));
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.route.changed.notified() => {}
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    fn all(&self) -> impl Iterator<Item = (Key, &Arc<Endpoint>)> {
        self.plan.targets.iter().enumerate().flat_map(|(i, t)| {
            t.endpoints
                .iter()
                .flat_map(move |e| (0..t.weight).map(move |slot| ((i, e.addr, slot), e)))
        })
    }

    /// Sends the balancer what changed: usable endpoints in, the others out; all of them
    /// when none is usable.
    fn publish(&mut self) {
        let now = Instant::now();
        let mut chosen: HashMap<Key, Arc<Endpoint>> = self
            .all()
            .filter(|(_, e)| e.health.usable(now))
            .map(|(k, e)| (k, e.clone()))
            .collect();
        if chosen.is_empty() && self.all().next().is_some() {
            if !self.panic {
                tracing::warn!(route = %self.route.label, "no upstream endpoint looks healthy: sending to all of them (panic mode)");
            }
            self.panic = true;
            chosen = self.all().map(|(k, e)| (k, e.clone())).collect();
        } else if self.panic && !chosen.is_empty() {
            tracing::info!(route = %self.route.label, "an upstream endpoint looks healthy again: panic mode over");
            self.panic = false;
        }
        let gone: Vec<Key> = self
            .inserted
            .iter()
            .filter(|k| !chosen.contains_key(k))
            .copied()
            .collect();
        for key in gone {
            self.inserted.remove(&key);
            let _ = self.tx.send(Change::Remove(key));
        }
        for (key, endpoint) in chosen {
            if self.inserted.insert(key) {
                let _ = self.tx.send(Change::Insert(key, self.slot(endpoint)));
            }
        }
        self.report(now);
    }

    fn slot(&self, endpoint: Arc<Endpoint>) -> Slot {
        let slots = endpoint.slots.clone();
        let service = EndpointService {
            endpoint,
            route: self.route.clone(),
            series: Arc::new(OnceLock::new()),
        };
        PendingRequests::new(
            ConcurrencyLimit::with_semaphore(service, slots),
            CompleteOnResponse::default(),
        )
    }

    /// Sets each endpoint's `vigil_upstream_endpoint_healthy` series.
    fn report(&self, now: Instant) {
        let Some(families) = self.route.series.get() else {
            return;
        };
        for (_, endpoint) in self.all().filter(|(k, _)| k.2 == 0) {
            let labels = self.route.labels(endpoint.addr);
            let _ = families.ejections.get_or_create(&labels);
            let _ = families.in_flight.get_or_create(&labels);
            families
                .healthy
                .get_or_create(&labels)
                .set(i64::from(endpoint.health.usable(now)));
        }
    }

    fn next_readmission(&self) -> Option<Instant> {
        let now = Instant::now();
        self.all()
            .filter_map(|(_, e)| e.health.ejected_until())
            .filter(|t| *t > now)
            .min()
    }

    /// Resolves every host name again; an address that stopped resolving is dropped, a
    /// failed lookup keeps what the last one found.
    async fn resolve(&mut self) {
        for target in self.plan.targets.iter_mut().filter(|t| !t.literal) {
            let host = format!(
                "{}:{}",
                target.authority.host(),
                port(&target.authority, &self.plan.scheme)
            );
            let addrs: Vec<SocketAddr> = match tokio::net::lookup_host(&host).await {
                Ok(addrs) => addrs.collect(),
                Err(e) => {
                    tracing::warn!(route = %self.route.label, host, error = %e, "upstream host name did not resolve: keeping its last addresses");
                    continue;
                }
            };
            if addrs.is_empty() {
                continue;
            }
            let mut endpoints: Vec<Arc<Endpoint>> = addrs
                .into_iter()
                .collect::<HashSet<_>>()
                .into_iter()
                .map(|addr| self.endpoints.get(&target.authority, addr))
                .collect();
            endpoints.sort_by_key(|e| e.addr);
            target.endpoints = endpoints;
        }
    }

    /// Runs one check of every endpoint, all at once.
    async fn check(&mut self, health: &HealthCheck) {
        let mut checks = tokio::task::JoinSet::new();
        let mut seen = HashSet::new();
        for (_, endpoint) in self.all() {
            if !seen.insert(endpoint.addr) {
                continue;
            }
            let endpoint = endpoint.clone();
            let scheme = self.plan.scheme.clone();
            let health = health.clone();
            checks.spawn(async move {
                let ok = endpoint.check(&scheme, &health.path, health.interval).await;
                (endpoint, ok)
            });
        }
        while let Some(Ok((endpoint, ok))) = checks.join_next().await {
            if endpoint
                .health
                .checked(ok, health.unhealthy, health.healthy)
            {
                if ok {
                    tracing::info!(route = %self.route.label, endpoint = %endpoint.addr, "endpoint healthy again: its health checks pass");
                } else {
                    tracing::warn!(route = %self.route.label, endpoint = %endpoint.addr, "endpoint unhealthy: its health checks fail");
                }
            }
        }
    }
}

/// The port a URL's authority names, or its scheme's.
pub fn port(authority: &Authority, scheme: &Scheme) -> u16 {
    authority
        .port_u16()
        .unwrap_or(if *scheme == Scheme::HTTPS { 443 } else { 80 })
}
