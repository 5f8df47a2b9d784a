//! The one body type that flows through Vigil, both ways, and the deadline on request bodies.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streaming body of any origin: a client's request, an upstream's response or a local answer.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// `response` as the answer to a `HEAD`: its headers, with the length of its body when that
/// is known, and no body. HTTP/1.1 drops the body of an answer to `HEAD` by itself; HTTP/2
/// sends whatever body it is given, and a client resets a `HEAD` stream that carries data
/// (PROTOCOL_ERROR).
pub fn headers_only(response: http::Response<Body>) -> http::Response<Body> {
    use http::header::{CONTENT_LENGTH, HeaderValue};
    use http_body::Body as _;
    let (mut parts, body) = response.into_parts();
    if let Some(len) = body.size_hint().exact()
        && !parts.headers.contains_key(CONTENT_LENGTH)
    {
        parts.headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
    http::Response::from_parts(parts, empty())
}

/// Why [`read_whole`] has no body to give.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadRefusal {
    /// Longer than the limit.
    TooLarge,
    /// Not all there within the time allowed: a client trickling it, or gone quiet.
    Timeout,
    /// The client went away or broke the framing.
    Broken,
}

/// A small request body read whole, for Vigil's own endpoints: at most `limit` bytes, all of
/// it within `timeout`.
pub async fn read_whole<B>(
    body: B,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, ReadRefusal>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    match tokio::time::timeout(timeout, http_body_util::Limited::new(body, limit).collect()).await {
        Err(_) => Err(ReadRefusal::Timeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(ReadRefusal::TooLarge),
        Ok(Err(_)) => Err(ReadRefusal::Broken),
    }
}

/// The request body did not arrive whole within `[server] body_read_timeout`, and the upstream
/// had not answered yet. Almost always a client trickling its body on purpose (slow POST) or
/// a stalled network.
#[derive(Debug, thiserror::Error)]
#[error("request body not received within {0:?}")]
pub struct BodyTimeout(pub std::time::Duration);

/// A request body with a deadline: it must arrive whole by then, unless the upstream has
/// answered before (then the exchange is a stream the upstream accepted, bounded like any by
/// `idle_timeout`). Past the deadline the body fails with [`BodyTimeout`], which abandons the
/// upstream exchange; the pipeline answers 408.
struct ReadDeadline<B> {
    inner: B,
    sleep: Pin<Box<tokio::time::Sleep>>,
    timeout: std::time::Duration,
    state: Arc<DeadlineState>,
}

#[derive(Debug, Default)]
struct DeadlineState {
    /// The upstream answered: the deadline no longer applies.
    disarmed: AtomicBool,
    fired: AtomicBool,
}

/// The pipeline's handle on a request body's deadline.
#[derive(Debug, Clone, Default)]
pub struct ReadDeadlineHandle(Arc<DeadlineState>);

impl ReadDeadlineHandle {
    /// The response head arrived: from now on the body may take as long as the upstream lets it.
    pub fn disarm(&self) {
        self.0.disarmed.store(true, Ordering::Release);
    }

    /// The deadline passed before the body was read whole.
    pub fn fired(&self) -> bool {
        self.0.fired.load(Ordering::Acquire)
    }
}

/// `body` as the one body type, bounded in time by `timeout` from now. A body that is already
/// complete (no body at all, the common case) gets no timer.
pub fn with_read_deadline<B>(body: B, timeout: std::time::Duration) -> (Body, ReadDeadlineHandle)
where
    B: http_body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    let handle = ReadDeadlineHandle::default();
    if body.is_end_stream() {
        return (body.map_err(Into::into).boxed_unsync(), handle);
    }
    let wrapped = ReadDeadline {
        inner: body,
        sleep: Box::pin(tokio::time::sleep(timeout)),
        timeout,
        state: handle.0.clone(),
    };
    (wrapped.boxed_unsync(), handle)
}

impl<B> http_body::Body for ReadDeadline<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.state.disarmed.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        if this.sleep.as_mut().poll(cx).is_ready() {
            this.state.fired.store(true, Ordering::Release);
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(this.timeout)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A body that sends one byte and then nothing.
    struct Trickle(bool);

    impl http_body::Body for Trickle {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            if std::mem::replace(&mut self.0, true) {
                Poll::Pending
            } else {
                Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(b"x")))))
            }
        }
    }

    #[tokio::test]
    async fn a_stalled_body_fails_at_its_deadline() {
        let (body, handle) = with_read_deadline(Trickle(false), Duration::from_millis(200));
        let started = std::time::Instant::now();
        let collected = tokio::time::timeout(Duration::from_secs(5), body.collect()).await;
        let Ok(Err(err)) = collected else {
            panic!("the body should have failed at its deadline");
        };
        assert!(err.is::<BodyTimeout>(), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(handle.fired());
    }

    #[tokio::test]
    async fn a_disarmed_deadline_does_not_fire() {
        let (mut body, handle) = with_read_deadline(Trickle(false), Duration::from_millis(100));
        assert!(body.frame().await.is_some());
        handle.disarm();
        let waited = tokio::time::timeout(Duration::from_millis(400), body.frame()).await;
        assert!(waited.is_err(), "the body should still be pending");
        assert!(!handle.fired());
    }

    #[tokio::test]
    async fn complete_bodies_pass_untouched() {
        let (body, handle) = with_read_deadline(full("hello"), Duration::from_millis(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            &body.collect().await.unwrap_or_default().to_bytes()[..],
            b"hello"
        );
        assert!(!handle.fired());
    }
}
