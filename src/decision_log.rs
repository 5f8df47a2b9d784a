//! One JSON line per decision, written off the request path by a dedicated thread.
//!
//! Requests hand a finished line to a bounded queue and move on; if the writer falls behind
//! (a full disk, a blocked pipe), lines are counted in `vigil_decision_log_dropped_total`
//! rather than stalling traffic.

use crate::metrics::Metrics;
use serde::Serialize;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError};

const QUEUE: usize = 64 * 1024;

/// Where decision lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    Stderr,
    File(PathBuf),
    Off,
}

impl Target {
    pub fn parse(text: &str) -> Self {
        match text {
            "stdout" | "-" => Target::Stdout,
            "stderr" => Target::Stderr,
            "off" | "" => Target::Off,
            path => Target::File(PathBuf::from(path)),
        }
    }
}

/// One decision, as logged. Field names are part of the operator contract (docs/decision-log.md).
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    pub time: String,
    pub request_id: &'a str,
    pub route: Option<&'a str>,
    pub host: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub client: IpAddr,
    /// SHA-256 fingerprint of the client certificate.
    pub device: &'a str,
    pub subject: &'a str,
    pub workload: Option<&'a str>,
    pub user: Option<&'a str>,
    pub groups: &'a [String],
    pub decision: &'a str,
    pub reasons: &'a [String],
    /// "enforce" or "audit".
    pub mode: &'a str,
    pub status: u16,
    pub latency_ms: f64,
}

/// Handle for writing decision lines; cheap to clone.
#[derive(Clone)]
pub struct DecisionLog {
    queue: Option<SyncSender<Vec<u8>>>,
    metrics: Arc<Metrics>,
}

impl DecisionLog {
    /// Opens the target (a file is created or appended to) and starts the writer thread.
    pub fn open(target: &Target, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let mut out: Box<dyn Write + Send> = match target {
            Target::Off => {
                return Ok(Self {
                    queue: None,
                    metrics,
                });
            }
            Target::Stdout => Box::new(std::io::stdout()),
            Target::Stderr => Box::new(std::io::stderr()),
            Target::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(QUEUE);
        std::thread::Builder::new()
            .name("vigil-decisions".into())
            .spawn(move || {
                let mut buffer = Vec::with_capacity(64 * 1024);
                while let Ok(line) = rx.recv() {
                    buffer.extend_from_slice(&line);
                    // Batch whatever else is already queued into one write.
                    while buffer.len() < 60 * 1024 {
                        match rx.try_recv() {
                            Ok(more) => buffer.extend_from_slice(&more),
                            Err(_) => break,
                        }
                    }
                    if let Err(e) = out.write_all(&buffer).and_then(|()| out.flush()) {
                        tracing::error!(error = %e, "decision log write failed");
                    }
                    buffer.clear();
                }
            })?;
        Ok(Self {
            queue: Some(tx),
            metrics,
        })
    }

    pub fn record(&self, entry: &Entry<'_>) {
        let Some(queue) = &self.queue else { return };
        let mut line = match serde_json::to_vec(entry) {
            Ok(line) => line,
            Err(e) => {
                tracing::error!(error = %e, "decision log entry not serialisable");
                return;
            }
        };
        line.push(b'\n');
        match queue.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.metrics.decision_log_dropped.inc();
            }
        }
    }
}

/// Now, as RFC 3339 with milliseconds, UTC.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
