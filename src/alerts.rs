//! Alerts: events an operator should hear about (a block, a detector firing, a grant asked
//! for, approved, refused, expired or revoked), written to the log always and, with
//! `[alerts] webhook`, delivered off the request path as signed JSON documents.
//!
//! [`Alerts::send`] never waits: it stamps the event, logs it, and appends it to a bounded
//! queue (dropping the oldest when full). [`deliver`] is the one task that empties the queue,
//! each alert at most `retries + 1` times, reading the webhook from the snapshot in force so a
//! reload applies to every later attempt. A dead or slow receiver only fills the queue.

use crate::metrics::Metrics;
use crate::metrics::alerts::Labels;
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How long, at shutdown, the queue may still be emptied.
pub const FLUSH: Duration = Duration::from_secs(2);

/// What happened, as the `kind` of the document and the `kind` label of the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A subject was blocked (by a detector or an operator).
    Block,
    /// A block ended: lifted by an operator, or its time ran out.
    BlockLifted,
    /// An anomaly detector fired.
    DetectorFired,
    /// Someone asked for just-in-time access.
    GrantRequested,
    /// An approver approved an access request.
    GrantApproved,
    /// An approver refused an access request.
    GrantRefused,
    /// A grant reached its end.
    GrantExpired,
    /// An operator revoked a grant before its end.
    GrantRevoked,
    /// A grant was made directly (not through a request).
    GrantCreated,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Block,
        Kind::BlockLifted,
        Kind::DetectorFired,
        Kind::GrantRequested,
        Kind::GrantApproved,
        Kind::GrantRefused,
        Kind::GrantExpired,
        Kind::GrantRevoked,
        Kind::GrantCreated,
    ];

    /// The name written in documents and metric labels (one of
    /// [`crate::metrics::labels::ALERT_KINDS`]).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Block => "block",
            Kind::BlockLifted => "block_lifted",
            Kind::DetectorFired => "detector_fired",
            Kind::GrantRequested => "grant_requested",
            Kind::GrantApproved => "grant_approved",
            Kind::GrantRefused => "grant_refused",
            Kind::GrantExpired => "grant_expired",
            Kind::GrantRevoked => "grant_revoked",
            Kind::GrantCreated => "grant_created",
        }
    }
}

/// One alert, as its maker describes it; [`Alerts::send`] adds the time, id and instance.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: Kind,
    /// Whom it is about, as `kind:value` (`user:alice`, `spiffe:spiffe://…`), when anyone.
    pub subject: Option<String>,
    /// The route's name, when it is about one.
    pub route: Option<String>,
    /// Whatever else the maker finds worth saying (`null` for nothing).
    pub detail: serde_json::Value,
}

/// The document sent: the event with its stamps. Field order is the one documented.
#[derive(Debug, Serialize)]
struct Document<'a> {
    id: &'a str,
    kind: Kind,
    time: &'a str,
    timestamp: u64,
    instance: &'a str,
    subject: Option<&'a str>,
    route: Option<&'a str>,
    detail: &'a serde_json::Value,
}

/// A stamped alert waiting for delivery.
#[derive(Debug, Clone)]
struct Queued {
    kind: Kind,
    id: String,
    body: Bytes,
}

/// The HTTP client for webhooks: HTTPS only, over Vigil's own rustls provider.
pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Where and how alerts are delivered: `[alerts]` compiled.
pub struct Webhook {
    pub url: http::Uri,
    key: aws_lc_rs::hmac::Key,
    /// Alerts waiting at most; the oldest is dropped for a new one beyond this.
    pub queue: usize,
    /// Attempts after the first, on connection errors, timeouts, 5xx and 429.
    pub retries: u32,
    /// Each attempt's limit, connecting included.
    pub timeout: Duration,
    /// The wait before the first retry, doubled for each next one up to `backoff_max`.
    pub backoff: Duration,
    pub backoff_max: Duration,
    client: HttpClient,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .field("queue", &self.queue)
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}

/// The settings of a [`Webhook`], as compiled from `[alerts]`.
pub struct WebhookSettings {
    pub url: http::Uri,
    pub secret: Vec<u8>,
    pub tls: rustls::ClientConfig,
    pub queue: usize,
    pub retries: u32,
    pub timeout: Duration,
    pub backoff: Duration,
    pub backoff_max: Duration,
}

impl Webhook {
    pub fn new(s: WebhookSettings) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(s.timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(s.tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(https);
        Self {
            url: s.url,
            key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &s.secret),
            queue: s.queue.max(1),
            retries: s.retries,
            timeout: s.timeout,
            backoff: s.backoff,
            backoff_max: s.backoff_max.max(s.backoff),
            client,
        }
    }

    /// `sha256=<hex>`: HMAC-SHA256 over `<timestamp>.<body>`.
    pub fn signature(&self, timestamp: u64, body: &[u8]) -> String {
        signature(&self.key, timestamp, body)
    }

    /// The wait before retry number `retry` (1 for the first): doubling from `backoff`, at
    /// most `backoff_max`, then a random half of it taken off so senders do not retry in step.
    fn backoff_for(&self, retry: u32) -> Duration {
        let doubled = self.backoff.saturating_mul(
            1u32.checked_shl(retry.saturating_sub(1))
                .unwrap_or(u32::MAX),
        );
        let full = doubled.min(self.backoff_max);
        let mut random = [0u8; 2];
        let _ = aws_lc_rs::rand::fill(&mut random);
        let fraction = f64::from(u16::from_le_bytes(random)) / f64::from(u16::MAX);
        full.mul_f64(1.0 - fraction / 2.0)
    }
}

/// `sha256=<hex>` of HMAC-SHA256 under `key` over `<timestamp>.<body>`.
pub fn signature(key: &aws_lc_rs::hmac::Key, timestamp: u64, body: &[u8]) -> String {
    let mut ctx = aws_lc_rs::hmac::Context::with_key(key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("sha256={}", crate::hex::encode(ctx.sign().as_ref()))
}

/// The alert queue and what stamps each alert; shared by every connection.
pub struct Alerts {
    instance_id: String,
    counter: AtomicU64,
    /// Held only to push or pop one alert: never across an await.
    queue: Mutex<VecDeque<Queued>>,
    /// The webhook in force; `None` without `[alerts] webhook` (alerts are then only logged).
    webhook: ArcSwapOption<Webhook>,
    wake: Notify,
    metrics: Arc<Metrics>,
}

impl Alerts {
    pub fn new(instance_id: &str, metrics: Arc<Metrics>, webhook: Option<Arc<Webhook>>) -> Self {
        Self {
            instance_id: instance_id.to_owned(),
            counter: AtomicU64::new(1),
            queue: Mutex::new(VecDeque::new()),
            webhook: ArcSwapOption::new(webhook),
            wake: Notify::new(),
            metrics,
        }
    }

    /// Puts a newly loaded webhook in force: later sends and attempts use it. Alerts already
    /// queued stay queued; without a webhook they are dropped and counted by the sender.
    pub fn configure(&self, webhook: Option<Arc<Webhook>>) {
        self.webhook.store(webhook);
        self.wake.notify_one();
    }

    /// Announces `event`: logged at once (target `vigil::alert`) and, with a webhook, queued
    /// for delivery. Never waits and never fails; a full queue loses its oldest alert.
    pub fn send(&self, event: Event) {
        let now = SystemTime::now();
        let timestamp = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let time = humantime::format_rfc3339_seconds(now).to_string();
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{n}", self.instance_id);
        let document = Document {
            id: &id,
            kind: event.kind,
            time: &time,
            timestamp,
            instance: &self.instance_id,
            subject: event.subject.as_deref(),
            route: event.route.as_deref(),
            detail: &event.detail,
        };
        let body = serde_json::to_vec(&document).unwrap_or_default();
        tracing::warn!(
            target: "vigil::alert",
            alert = %id,
            kind = event.kind.as_str(),
            subject = event.subject.as_deref().unwrap_or(""),
            route = event.route.as_deref().unwrap_or(""),
            detail = %event.detail,
            "alert"
        );
        let Some(webhook) = self.webhook.load_full() else {
            return;
        };
        self.enqueue(
            Queued {
                kind: event.kind,
                id,
                body: Bytes::from(body),
            },
            webhook.queue,
        );
    }

    fn enqueue(&self, alert: Queued, capacity: usize) {
        let (dropped, len) = {
            let Ok(mut queue) = self.queue.lock() else {
                return;
            };
            let mut dropped = Vec::new();
            while queue.len() >= capacity.max(1) {
                if let Some(old) = queue.pop_front() {
                    dropped.push(old);
                }
            }
            queue.push_back(alert);
            (dropped, queue.len())
        };
        for old in dropped {
            tracing::warn!(target: "vigil::alert", alert = %old.id, "alert queue full: oldest alert dropped");
            self.count(old.kind, "dropped");
        }
        self.metrics.alerts.queued.set(len as i64);
        self.wake.notify_one();
    }

    fn pop(&self) -> Option<Queued> {
        let mut queue = self.queue.lock().ok()?;
        let alert = queue.pop_front();
        self.metrics.alerts.queued.set(queue.len() as i64);
        alert
    }

    /// Alerts waiting for delivery.
    pub fn queued(&self) -> usize {
        self.queue.lock().map_or(0, |q| q.len())
    }

    fn count(&self, kind: Kind, result: &'static str) {
        self.metrics
            .alerts
            .total
            .get_or_create(&Labels {
                kind: kind.as_str(),
                result,
            })
            .inc();
    }
}

/// How one attempt ended.
enum Attempt {
    Delivered,
    /// Worth trying again: no connection, no answer in time, 5xx or 429.
    Retry(String),
    /// The receiver refused the alert itself (4xx other than 429): trying again would not help.
    Refused(http::StatusCode),
}

/// Empties the queue until `stop` is cancelled; then, for at most [`FLUSH`] more, finishes
/// the alert in flight and what is still queued. What is left then is dropped and counted.
pub async fn deliver(alerts: Arc<Alerts>, stop: CancellationToken) {
    loop {
        let Some(alert) = alerts.pop() else {
            tokio::select! {
                () = alerts.wake.notified() => continue,
                () = stop.cancelled() => break,
            }
        };
        let kind = alert.kind;
        let delivery = deliver_one(&alerts, alert);
        tokio::pin!(delivery);
        tokio::select! {
            () = &mut delivery => continue,
            () = stop.cancelled() => {}
        }
        let deadline = tokio::time::Instant::now() + FLUSH;
        if tokio::time::timeout_at(deadline, delivery).await.is_err() {
            alerts.count(kind, "dropped");
        }
        return flush(&alerts, deadline).await;
    }
    flush(&alerts, tokio::time::Instant::now() + FLUSH).await;
}

/// Delivers what is queued until `deadline`, then drops (and counts) the rest.
async fn flush(alerts: &Alerts, deadline: tokio::time::Instant) {
    let mut left = 0;
    while let Some(alert) = alerts.pop() {
        let kind = alert.kind;
        if tokio::time::Instant::now() >= deadline
            || tokio::time::timeout_at(deadline, deliver_one(alerts, alert))
                .await
                .is_err()
        {
            alerts.count(kind, "dropped");
            left += 1;
        }
    }
    if left > 0 {
        tracing::warn!(
            target: "vigil::alert",
            left,
            "alerts not delivered by the end of shutdown were dropped"
        );
    }
}

/// Up to `retries + 1` attempts, each with the webhook in force when it starts.
async fn deliver_one(alerts: &Alerts, alert: Queued) {
    let mut retry = 0;
    loop {
        let Some(webhook) = alerts.webhook.load_full() else {
            alerts.count(alert.kind, "dropped");
            return;
        };
        let why = match attempt(&webhook, &alert.body).await {
            Attempt::Delivered => {
                alerts.count(alert.kind, "sent");
                return;
            }
            Attempt::Refused(status) => {
                tracing::warn!(target: "vigil::alert", alert = %alert.id, %status, "the alert webhook refused the alert; not retried");
                alerts.count(alert.kind, "failed");
                return;
            }
            Attempt::Retry(why) => why,
        };
        if retry >= webhook.retries {
            tracing::warn!(target: "vigil::alert", alert = %alert.id, attempts = retry + 1, error = %why, "alert not delivered");
            alerts.count(alert.kind, "failed");
            return;
        }
        retry += 1;
        let wait = webhook.backoff_for(retry);
        tracing::debug!(target: "vigil::alert", alert = %alert.id, error = %why, ?wait, "alert delivery failed; retrying");
        tokio::time::sleep(wait).await;
    }
}

async fn attempt(webhook: &Webhook, body: &Bytes) -> Attempt {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let request = http::Request::post(webhook.url.clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("vigil/", env!("CARGO_PKG_VERSION")),
        )
        .header("x-vigil-timestamp", timestamp.to_string())
        .header("x-vigil-signature", webhook.signature(timestamp, body))
        .body(Full::new(body.clone()));
    let request = match request {
        Ok(r) => r,
        Err(e) => return Attempt::Refused(bad_request(e)),
    };
    let exchange = async {
        let response = webhook.client.request(request).await?;
        let status = response.status();
        // Read (and discard) the body so the connection can be reused.
        let _ = response.into_body().collect().await;
        Ok::<_, hyper_util::client::legacy::Error>(status)
    };
    match tokio::time::timeout(webhook.timeout, exchange).await {
        Err(_) => Attempt::Retry(format!("no answer within {:?}", webhook.timeout)),
        Ok(Err(e)) => Attempt::Retry(error_chain(&e)),
        Ok(Ok(status)) if status.is_success() => Attempt::Delivered,
        Ok(Ok(status))
            if status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS =>
        {
            Attempt::Retry(format!("answered {status}"))
        }
        Ok(Ok(status)) => Attempt::Refused(status),
    }
}

/// A request that cannot be built is not the receiver's doing, but it will not get better.
fn bad_request(e: http::Error) -> http::StatusCode {
    tracing::warn!(target: "vigil::alert", error = %e, "alert request could not be built");
    http::StatusCode::BAD_REQUEST
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: Kind, n: u64) -> Event {
        Event {
            kind,
            subject: Some(format!("user:u{n}")),
            route: None,
            detail: serde_json::json!({ "n": n }),
        }
    }

    fn webhook(queue: usize) -> Arc<Webhook> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("tls")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        Arc::new(Webhook::new(WebhookSettings {
            url: "https://127.0.0.1:9/".parse().expect("url"),
            secret: b"0123456789abcdef".to_vec(),
            tls,
            queue,
            retries: 0,
            timeout: Duration::from_secs(1),
            backoff: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
        }))
    }

    fn queued_ns(alerts: &Alerts) -> Vec<u64> {
        let queue = alerts.queue.lock().expect("lock");
        queue
            .iter()
            .map(|q| {
                let doc: serde_json::Value = serde_json::from_slice(&q.body).expect("json");
                doc["detail"]["n"].as_u64().expect("n")
            })
            .collect()
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_it() {
        let metrics = Metrics::new();
        let alerts = Alerts::new("abc", metrics.clone(), Some(webhook(2)));
        for n in 1..=5 {
            alerts.send(event(Kind::Block, n));
        }
        assert_eq!(queued_ns(&alerts), vec![4, 5]);
        let dropped = metrics
            .alerts
            .total
            .get_or_create(&Labels {
                kind: "block",
                result: "dropped",
            })
            .get();
        assert_eq!(dropped, 3);
        assert_eq!(metrics.alerts.queued.get(), 2);
    }

    #[test]
    fn without_a_webhook_nothing_is_queued() {
        let alerts = Alerts::new("abc", Metrics::new(), None);
        alerts.send(event(Kind::GrantExpired, 1));
        assert_eq!(alerts.queued(), 0);
    }

    #[test]
    fn the_document_has_every_field_and_a_unique_id() {
        let alerts = Alerts::new("abc", Metrics::new(), Some(webhook(10)));
        alerts.send(event(Kind::GrantRevoked, 1));
        alerts.send(event(Kind::GrantRevoked, 2));
        let queue = alerts.queue.lock().expect("lock");
        let docs: Vec<serde_json::Value> = queue
            .iter()
            .map(|q| serde_json::from_slice(&q.body).expect("json"))
            .collect();
        assert_eq!(docs[0]["kind"], "grant_revoked");
        assert_eq!(docs[0]["instance"], "abc");
        assert_eq!(docs[0]["subject"], "user:u1");
        assert!(docs[0]["route"].is_null());
        assert!(docs[0]["time"].as_str().expect("time").ends_with('Z'));
        assert!(docs[0]["timestamp"].as_u64().expect("timestamp") > 1_600_000_000);
        assert_ne!(docs[0]["id"], docs[1]["id"]);
        let keys: Vec<&String> = docs[0].as_object().expect("object").keys().collect();
        assert_eq!(keys.len(), 8);
    }

    #[test]
    fn every_kind_has_its_label_and_serialises_as_it() {
        let labels = crate::metrics::labels::ALERT_KINDS;
        assert_eq!(labels.len(), Kind::ALL.len());
        for kind in Kind::ALL {
            assert!(labels.contains(&kind.as_str()), "{kind:?}");
            assert_eq!(
                serde_json::to_value(kind).expect("json"),
                serde_json::Value::from(kind.as_str())
            );
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_bound_with_jitter() {
        let w = webhook(1);
        for (retry, full) in [(1, 200), (2, 400), (3, 800), (20, 30_000), (40, 30_000)] {
            let wait = w.backoff_for(retry).as_millis() as u64;
            assert!(
                wait >= full / 2 && wait <= full,
                "retry {retry}: {wait}ms not in [{}, {full}]",
                full / 2
            );
        }
    }
}
