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

use crate::body::{Body, BoxError};
use http::{Request, Response};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use tower::Service;
use tower::util::BoxService;

pub type Balanced = BoxService<Request<Body>, Response<Incoming>, BoxError>;
type Answer = Pin<Box<dyn Future<Output = Result<Response<Incoming>, BoxError>> + Send>>;

/// The balancer and the requests waiting for it.
#[derive(Clone)]
pub struct Shared {
    balancer: Arc<Mutex<Balanced>>,
    fan_out: Arc<FanOut>,
    waker: Waker,
}

impl Shared {
    pub fn new(balancer: Balanced) -> Self {
        let fan_out = Arc::new(FanOut::default());
        Self {
            balancer: Arc::new(Mutex::new(balancer)),
            waker: Waker::from(fan_out.clone()),
            fan_out,
        }
    }

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
    type Future = Answer;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is the balancer's, checked when the request is dispatched.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let shared = self.clone();
        let mut req = Some(req);
        Box::pin(async move {
            let answer = std::future::poll_fn(|cx| shared.poll_dispatch(cx, &mut req)).await?;
            answer.await
        })
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
