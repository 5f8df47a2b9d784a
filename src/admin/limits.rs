//! What keeps the admin listener from holding more of the process than its job needs: a cap
//! on its connections (overall and per source, apart from the proxy listener's), and the
//! clock of each connection (time for a request to start, idle time between requests).
//! File descriptors are shared with the proxy listener, so anyone who reaches the admin port
//! must not be able to take them all by opening connections and never finishing a request.

use crate::server::{Source, SourceSlot, Sources};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

/// Why an admin connection was refused at accept or closed before a request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `[admin] max_connections` reached.
    Global,
    /// The source holds `[admin] max_connections_per_source`.
    Source,
}

impl Refused {
    pub fn reason(self) -> &'static str {
        match self {
            Refused::Global => "max_connections",
            Refused::Source => "max_connections_per_source",
        }
    }
}

/// The admin listener's connections: how many are open, and from where. Limits are passed in
/// at each accept (from the snapshot in force), so a reload applies to the next connection;
/// lowering a limit closes nothing already open.
#[derive(Debug, Default)]
pub struct Slots {
    open: Arc<AtomicUsize>,
    sources: Arc<Sources>,
}

/// One admin connection's place, given back when the connection ends.
#[derive(Debug)]
pub struct Slot {
    open: Arc<AtomicUsize>,
    pub source: SourceSlot,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Slots {
    pub fn admit(
        &self,
        remote: SocketAddr,
        max: usize,
        per_source: usize,
    ) -> Result<Slot, Refused> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        if taken.is_err() {
            return Err(Refused::Global);
        }
        // Handshakes are not limited apart: each one holds a connection of its source.
        match self.sources.admit(Source::of(remote.ip()), per_source, 0) {
            Ok(source) => Ok(Slot {
                open: self.open.clone(),
                source,
            }),
            Err(_) => {
                self.open.fetch_sub(1, Ordering::AcqRel);
                Err(Refused::Source)
            }
        }
    }

    /// Admin connections open now (handshakes included).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// Where a connection stands between requests.
#[derive(Debug, Clone, Copy)]
struct Progress {
    /// Requests being answered now.
    in_flight: usize,
    /// When the last request was answered; `None` before the first.
    last_done: Option<Instant>,
    /// Bytes read from the client when the last request was answered.
    read_at_done: u64,
}

/// A connection's clock: requests in progress and bytes read, for the timeouts hyper does not
/// cover (waiting for the first request, which on an auto-detecting listener includes the
/// bytes that tell HTTP/1.1 from HTTP/2; HTTP/2 connections between requests).
#[derive(Debug)]
pub struct Clock {
    opened: Instant,
    progress: watch::Sender<Progress>,
    read: Arc<AtomicU64>,
}

/// Why a connection's clock ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// No request head arrived within `header_read_timeout` of the connection's start.
    Header,
    /// No request in progress for `idle_timeout`.
    Idle,
}

/// A request in progress; dropping it marks the request answered.
pub struct InFlight {
    clock: Arc<Clock>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let read = self.clock.read.load(Ordering::Relaxed);
        self.clock.progress.send_modify(|p| {
            p.in_flight = p.in_flight.saturating_sub(1);
            p.last_done = Some(Instant::now());
            p.read_at_done = read;
        });
    }
}

impl Clock {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            progress: watch::Sender::new(Progress {
                in_flight: 0,
                last_done: None,
                read_at_done: 0,
            }),
            read: Arc::new(AtomicU64::new(0)),
        })
    }

    /// A request head arrived and is being answered.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.progress.send_modify(|p| p.in_flight += 1);
        InFlight {
            clock: self.clone(),
        }
    }

    /// Whether the client has sent bytes since the last request was answered: a head begun
    /// and not finished, rather than a keep-alive connection waiting.
    pub fn head_begun(&self) -> bool {
        let p = *self.progress.borrow();
        self.read.load(Ordering::Relaxed) > p.read_at_done
    }

    /// Completes when the connection has waited too long: for its first request head, or
    /// with no request in progress.
    pub async fn expired(&self, header: Duration, idle: Duration) -> Expired {
        let mut changes = self.progress.subscribe();
        loop {
            let p = *changes.borrow_and_update();
            let (deadline, why) = match p {
                Progress { in_flight: 1.., .. } => {
                    if changes.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                    continue;
                }
                Progress {
                    last_done: None, ..
                } => (self.opened + header, Expired::Header),
                Progress {
                    last_done: Some(at),
                    ..
                } => (at + idle, Expired::Idle),
            };
            tokio::select! {
                () = tokio::time::sleep_until(deadline.into()) => return why,
                changed = changes.changed() => {
                    if changed.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
    }

    /// The connection's stream, counting the bytes read from it.
    pub fn track<T>(&self, inner: T) -> Counted<T> {
        Counted {
            inner,
            read: self.read.clone(),
        }
    }
}

/// A stream that counts the bytes read from it.
pub struct Counted<T> {
    inner: T,
    read: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_count_overall_and_per_source_and_give_back() {
        let slots = Slots::default();
        let a: SocketAddr = ([10, 0, 0, 1], 1000).into();
        let b: SocketAddr = ([10, 0, 0, 2], 1000).into();
        let one = slots.admit(a, 3, 2).expect("first");
        let two = slots.admit(a, 3, 2).expect("second");
        assert_eq!(slots.admit(a, 3, 2).err(), Some(Refused::Source));
        let three = slots.admit(b, 3, 2).expect("another source");
        assert_eq!(slots.admit(b, 3, 2).err(), Some(Refused::Global));
        assert_eq!(slots.open(), 3, "a refusal holds nothing");
        drop((one, two, three));
        assert_eq!(slots.open(), 0);
        assert!(slots.admit(a, 3, 0).is_ok(), "0 per source: no share");
    }

    #[tokio::test]
    async fn the_clock_runs_for_the_first_head_and_between_requests() {
        let clock = Clock::new();
        let short = Duration::from_millis(30);
        let long = Duration::from_secs(30);
        assert_eq!(clock.expired(short, long).await, Expired::Header);
        let request = clock.start();
        // Nothing expires while a request is answered.
        let waited = tokio::time::timeout(Duration::from_millis(80), clock.expired(short, short));
        assert!(waited.await.is_err());
        drop(request);
        assert_eq!(clock.expired(long, short).await, Expired::Idle);
        assert!(!clock.head_begun());
        clock.read.fetch_add(5, Ordering::Relaxed);
        assert!(clock.head_begun());
    }
}
