//! A route's upstream as a stack of layers, each with one job, outermost first:
//!
//! - `Timeout`: the response head must come within `response_timeout` (all attempts
//!   together), or 504.
//! - `Retry`: another attempt only where it is safe (see [`RetryPolicy`]), within a budget.
//! - `LoadShed` over the balancer shared by the route's requests (`shared`): at most
//!   `max_pending` requests wait for an endpoint to take them; one more is refused at once
//!   (503 with `Retry-After`) without contacting any.
//! - the balancer: power of two choices on requests in flight, or round robin, over the
//!   endpoints the route's controller says are usable (`discover`).
//! - per endpoint, `ConcurrencyLimit` at `max_connections` and the endpoint's own pool
//!   (`endpoint`).

use super::discover::{Changes, Controller, Endpoints, Plan, RoundRobin, RouteState};
use super::shared::{Balanced, Shared};
use crate::body::{Body, BoxError};
use http::{Method, Request, Response};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio_util::sync::{CancellationToken, DropGuard};
use tower::ServiceExt;
use tower::load_shed::LoadShed;
use tower::retry::Retry;
use tower::retry::budget::{Budget, TpsBudget};
use tower::timeout::Timeout;

/// How a route picks among its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balancing {
    /// The less loaded (requests in flight) of two endpoints picked at random.
    P2c,
    RoundRobin,
}

/// What a route's stack is built from, besides the endpoints' plan.
pub struct Limits {
    pub balancing: Balancing,
    pub max_pending: usize,
    pub retries: u32,
    pub response_timeout: Duration,
}

type Layers = Timeout<Retry<RetryPolicy, LoadShed<Shared>>>;

/// The upstream side of one route.
pub struct Stack {
    service: Layers,
    budget: Arc<TpsBudget>,
    route: Arc<RouteState>,
    /// The route's controller, until something runs it.
    idle: Mutex<Option<Controller>>,
    started: AtomicBool,
    stop: CancellationToken,
    _stop_with_the_stack: DropGuard,
}

impl Stack {
    pub fn new(
        plan: Plan,
        endpoints: Arc<Endpoints>,
        route: Arc<RouteState>,
        limits: &Limits,
    ) -> Self {
        let (controller, changes) = Controller::new(plan, endpoints, route.clone());
        let balanced = balancer(limits.balancing, changes);
        let shared = Shared::new(balanced, limits.max_pending);
        // Ten seconds of history; ten retries a second whatever the traffic, and a fifth of
        // the requests beyond that.
        let budget = Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2));
        let policy = RetryPolicy {
            left: limits.retries,
            budget: budget.clone(),
            route: route.clone(),
        };
        let service = Timeout::new(
            Retry::new(policy, LoadShed::new(shared)),
            limits.response_timeout,
        );
        let stop = CancellationToken::new();
        let stack = Self {
            service,
            budget,
            route,
            idle: Mutex::new(Some(controller)),
            started: AtomicBool::new(false),
            _stop_with_the_stack: stop.clone().drop_guard(),
            stop,
        };
        // In a runtime (a reload), the checks start now; otherwise with the first request.
        if tokio::runtime::Handle::try_current().is_ok() {
            stack.start();
        }
        stack
    }

    /// Starts the route's controller, once.
    fn start(&self) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(controller) = self.idle.lock().ok().and_then(|mut i| i.take()) else {
            return;
        };
        tokio::spawn(controller.run(self.stop.clone()));
    }

    /// Attaches the route's metric series: the endpoint series are created (at 0) and kept
    /// from then on.
    pub fn attach(&self, families: &crate::metrics::UpstreamFamilies) {
        if self.route.series.set(families.clone()).is_ok() {
            self.route.changed.notify_one();
        }
    }

    /// Sends `req` through the stack. (A boxed future: the stack's types stay out of the
    /// request's future, which must be `Send` for every lifetime the server asks about.)
    pub fn send(&self, req: Request<Body>) -> Sending {
        if !self.started.load(Ordering::Acquire) {
            self.start();
        }
        self.budget.deposit();
        Box::pin(self.service.clone().oneshot(replayable(req)))
    }
}

/// A request on its way through a stack.
pub type Sending = Pin<Box<dyn Future<Output = Result<Response<Incoming>, BoxError>> + Send>>;

fn balancer(balancing: Balancing, changes: Changes) -> Balanced {
    match balancing {
        Balancing::P2c => Balanced::Left(tower::balance::p2c::Balance::new(changes)),
        Balancing::RoundRobin => Balanced::Right(RoundRobin::new(changes)),
    }
}

/// Retries only what is safe to send again, within the route's budget: after a connect
/// failure anything whose body was never read; after another failure only an idempotent
/// request without a body. A response head, once it came, is never retried (nor anything
/// after it: retries happen before a single byte goes downstream).
#[derive(Clone)]
struct RetryPolicy {
    left: u32,
    budget: Arc<TpsBudget>,
    route: Arc<RouteState>,
}

impl tower::retry::Policy<Request<Body>, Response<Incoming>, BoxError> for RetryPolicy {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        req: &mut Request<Body>,
        result: &mut Result<Response<Incoming>, BoxError>,
    ) -> Option<Self::Future> {
        let Err(error) = result else {
            return None;
        };
        if self.left == 0 {
            return None;
        }
        let replay = req.extensions().get::<Arc<ReplayState>>();
        let safe = if is_connect(error.as_ref()) {
            replay.is_none_or(|r| !r.touched.load(Ordering::Acquire))
        } else if error.is::<tower::load_shed::error::Overloaded>() {
            false
        } else {
            replay.is_none() && idempotent(req.method())
        };
        if !safe || !self.budget.withdraw() {
            return None;
        }
        self.left -= 1;
        if let Some(families) = self.route.series.get() {
            families
                .retries
                .get_or_create(&crate::metrics::RouteOnly {
                    route: crate::metrics::RouteLabel(self.route.label.clone()),
                })
                .inc();
        }
        tracing::debug!(route = %self.route.label, error = %error, "retrying on another attempt");
        Some(std::future::ready(()))
    }

    fn clone_request(&mut self, req: &Request<Body>) -> Option<Request<Body>> {
        if self.left == 0 {
            return None;
        }
        let body = match req.extensions().get::<Arc<ReplayState>>() {
            Some(state) => Body::new(Replay::new(state.clone())),
            None => crate::body::empty(),
        };
        let mut clone = Request::new(body);
        *clone.method_mut() = req.method().clone();
        *clone.uri_mut() = req.uri().clone();
        *clone.version_mut() = req.version();
        *clone.headers_mut() = req.headers().clone();
        *clone.extensions_mut() = req.extensions().clone();
        Some(clone)
    }
}

fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Whether no connection to the endpoint was made (so nothing was sent).
pub fn is_connect(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(e) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
            return e.is_connect();
        }
        source = e.source();
    }
    false
}

/// A request whose body can be sent again as long as no attempt has read from it: the body
/// waits in a shared place until an attempt first polls it.
fn replayable(req: Request<Body>) -> Request<Body> {
    if http_body::Body::is_end_stream(req.body()) {
        return req.map(|_| crate::body::empty());
    }
    let hint = http_body::Body::size_hint(req.body());
    let state = Arc::new(ReplayState {
        body: Mutex::new(None),
        touched: AtomicBool::new(false),
        hint,
    });
    let req = req.map(|body| {
        if let Ok(mut slot) = state.body.lock() {
            *slot = Some(body);
        }
        Body::new(Replay::new(state.clone()))
    });
    let mut req = req;
    req.extensions_mut().insert(state);
    req
}

struct ReplayState {
    body: Mutex<Option<Body>>,
    /// Some attempt polled the body: the upstream may have read from it.
    touched: AtomicBool,
    hint: http_body::SizeHint,
}

struct Replay {
    state: Arc<ReplayState>,
    body: Option<Body>,
}

impl Replay {
    fn new(state: Arc<ReplayState>) -> Self {
        Self { state, body: None }
    }
}

impl http_body::Body for Replay {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if self.body.is_none() {
            self.state.touched.store(true, Ordering::Release);
            let taken = self.state.body.lock().ok().and_then(|mut b| b.take());
            match taken {
                Some(body) => self.body = Some(body),
                None => return Poll::Ready(Some(Err("request body already sent".into()))),
            }
        }
        match self.body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body
            .as_ref()
            .is_some_and(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.body {
            Some(body) => body.size_hint(),
            None => self.state.hint,
        }
    }
}
