//! One balancer shared by every request of a route, driven by the requests' own tasks.
//!
//! A balancer is a `Service` that needs `&mut self` between `poll_ready` and `call`. tower's
//! `Buffer` shares one by giving it a task of its own and a channel to it; that costs two task
//! wake-ups per request, which on a loaded core is most of what a proxy spends on a keep-alive
//! request. Here a request locks the balancer, polls it ready and calls it in one go, and
//! awaits the response in its own task. The lock is held for the pick, never across an await.
//!
//! A request that finds no endpoint ready waits to be woken. The balancer registers one waker,
//! the same every time (a [`FanOut`]), which wakes every waiting request: they poll again, the
//! first to get the lock takes the endpoint that became ready, the others wait again. A
//! generation count closes the gap between a request's poll and its registration, so no
//! wake-up is lost.

use super::discover::{Changes, RoundRobin};
use crate::body::{Body, BoxError};
use http::{Request, Response};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;
use tower::Service;
use tower::balance::p2c::Balance;

/// A route's balancer: power of two choices, or round robin.
pub type Balanced = tower::util::Either<Balance<Changes, Request<Body>>, RoundRobin>;
type Answer = <Balanced as Service<Request<Body>>>::Future;

/// The balancer, the requests waiting for it, and their places (`max_pending` of them).
///
/// Ready while a place is free: under `LoadShed`, the one request too many is refused at once.
/// A request's place travels with it until an endpoint takes it (or the request ends).
pub struct Shared {
    inner: Arc<Inner>,
    places: PollSemaphore,
    place: Option<OwnedSemaphorePermit>,
}

struct Inner {
    balancer: Mutex<Balanced>,
    fan_out: Arc<FanOut>,
    waker: Waker,
}

/// A clone has a place of its own to get.
impl Clone for Shared {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            places: self.places.clone(),
            place: None,
        }
    }
}

impl Shared {
    pub fn new(balancer: Balanced, max_pending: usize) -> Self {
        let fan_out = Arc::new(FanOut::default());
        Self {
            inner: Arc::new(Inner {
                balancer: Mutex::new(balancer),
                waker: Waker::from(fan_out.clone()),
                fan_out,
            }),
            places: PollSemaphore::new(Arc::new(Semaphore::new(max_pending))),
            place: None,
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Balanced> {
        // A panic under the lock leaves the balancer as it was between two picks: usable.
        self.balancer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Picks an endpoint for `req` and hands it the request, once one is ready.
    fn poll_dispatch(
        &self,
        cx: &mut Context<'_>,
        req: &mut Option<Request<Body>>,
    ) -> Poll<Result<Answer, BoxError>> {
        loop {
            let generation = self.fan_out.generation.load(Ordering::Acquire);
            let mut balancer = self.lock();
            match balancer.poll_ready(&mut Context::from_waker(&self.waker)) {
                Poll::Ready(Ok(())) => {
                    let Some(req) = req.take() else {
                        return Poll::Ready(Err("request dispatched twice".into()));
                    };
                    return Poll::Ready(Ok(balancer.call(req)));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
            drop(balancer);
            if self.fan_out.wait(generation, cx.waker()) {
                return Poll::Pending;
            }
            // Woken while polling: something became ready, poll again.
        }
    }
}

impl Service<Request<Body>> for Shared {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = Dispatch;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The balancer's own readiness is checked when the request is dispatched.
        if self.place.is_none() {
            match self.places.poll_acquire(cx) {
                Poll::Ready(Some(place)) => self.place = Some(place),
                // Closed: never (the semaphore is never closed).
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        Dispatch {
            inner: self.inner.clone(),
            req: Some(req),
            place: self.place.take(),
            answer: None,
        }
    }
}

/// A request on its way to an endpoint, then its answer on the way back.
pub struct Dispatch {
    inner: Arc<Inner>,
    req: Option<Request<Body>>,
    place: Option<OwnedSemaphorePermit>,
    answer: Option<Answer>,
}

impl Future for Dispatch {
    type Output = Result<Response<Incoming>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if this.answer.is_none() {
            match this.inner.poll_dispatch(cx, &mut this.req) {
                Poll::Ready(Ok(answer)) => this.answer = Some(answer),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
            // Taken by an endpoint: no longer waiting.
            this.place = None;
        }
        match this.answer.as_mut() {
            Some(answer) => Pin::new(answer).poll(cx),
            None => Poll::Ready(Err("request dispatched twice".into())),
        }
    }
}

/// The balancer's waker: wakes every request waiting for it.
#[derive(Default)]
struct FanOut {
    generation: AtomicU64,
    waiting: Mutex<Vec<Waker>>,
}

impl FanOut {
    /// Registers `waker` unless a wake-up came since `generation` was read; false then.
    fn wait(&self, generation: u64, waker: &Waker) -> bool {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if self.generation.load(Ordering::Acquire) != generation {
            return false;
        }
        if !waiting.iter().any(|w| w.will_wake(waker)) {
            waiting.push(waker.clone());
        }
        true
    }
}

impl Wake for FanOut {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let waiting = std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|e| e.into_inner()));
        for waker in waiting {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_wake_reaches_every_waiting_request_once_and_none_is_lost_in_between() {
        let fan_out = Arc::new(FanOut::default());
        let waker = Waker::from(fan_out.clone());
        let counts: Vec<Arc<Count>> = (0..3)
            .map(|_| Arc::new(Count(AtomicUsize::new(0))))
            .collect();
        let generation = fan_out.generation.load(Ordering::Acquire);
        for count in &counts {
            let w = Waker::from(count.clone());
            assert!(fan_out.wait(generation, &w));
            // The same request registered twice is woken once.
            assert!(fan_out.wait(generation, &w));
        }
        waker.wake_by_ref();
        for count in &counts {
            assert_eq!(count.0.load(Ordering::SeqCst), 1);
        }
        // A request that polled before that wake must not go to sleep: it polls again.
        let late = Waker::from(counts[0].clone());
        assert!(!fan_out.wait(generation, &late));
        assert!(
            fan_out
                .waiting
                .lock()
                .map(|w| w.is_empty())
                .unwrap_or(false)
        );
    }
}
