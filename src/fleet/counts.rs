//! Counts across the fleet: the detectors' events and distinct values per subject, and the
//! risk engine's recent denials, kept in Redis as counters and sets per slice of their
//! window, each expiring with its slice. A request never waits for them: they are queued here,
//! and written by `tally`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::mpsc;

/// Counts waiting to be written at most; beyond, new ones are dropped and counted.
const QUEUE: usize = 10_000;
/// Slices per window.
pub(super) const SLICES: i64 = 6;
/// Totals remembered at most (the risk engine's).
const TOTALS: usize = 100_000;

/// One event to count across the fleet.
#[derive(Debug, Clone)]
pub struct Count {
    /// What is counted, for whom: `denials|user:bob`.
    pub key: String,
    /// For distinct counts, the value seen (an address, a country); `None` counts events.
    pub member: Option<String>,
    pub window: Duration,
    pub at: i64,
    /// The detector to fire when the fleet's total goes over its threshold; `None` for a
    /// total the risk engine reads.
    pub fire: Option<Fire>,
}

/// A detector to fire for a subject.
#[derive(Debug, Clone)]
pub struct Fire {
    pub detector: &'static str,
    /// The subject, as the state module writes it (JSON).
    pub subject: String,
    /// `kind:value`, naming it in Redis keys.
    pub key: String,
    pub threshold: u32,
}

pub struct Counts {
    tx: mpsc::Sender<Count>,
    pub(super) rx: Mutex<Option<mpsc::Receiver<Count>>>,
    /// The distinct values this replica already added to their key's current slice: adding
    /// one again changes nothing in Redis, so it is not sent (a client's address, on every
    /// request).
    added: Mutex<HashMap<(String, String), i64>>,
    /// The fleet's totals as last read, for the risk engine.
    totals: Mutex<HashMap<String, (u32, i64)>>,
}

impl Counts {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Self {
            tx,
            rx: Mutex::new(Some(rx)),
            added: Mutex::new(HashMap::new()),
            totals: Mutex::new(HashMap::new()),
        }
    }

    pub fn send(&self, count: Count) {
        if let Some(member) = &count.member {
            let slice = count.at.div_euclid(width(count.window));
            let Ok(mut added) = self.added.lock() else {
                return;
            };
            if added.len() >= TOTALS {
                added.clear();
            }
            let before = added.insert((count.key.clone(), member.clone()), slice);
            if before == Some(slice) {
                return;
            }
        }
        if self.tx.try_send(count).is_err() {
            tracing::debug!("shared state: a count was dropped, the queue is full");
        }
    }

    /// The total last read for `key`, if it was read within `window` of `now`.
    pub fn total(&self, key: &str, now: i64, window: Duration) -> Option<u32> {
        let (total, at) = *self.totals.lock().ok()?.get(key)?;
        (now - at <= window.as_secs() as i64).then_some(total)
    }

    /// Values whose writes may not have reached Redis are sent again.
    pub(super) fn forget_added(&self) {
        if let Ok(mut added) = self.added.lock() {
            added.clear();
        }
    }

    pub(super) fn remember(&self, key: &str, total: u32, at: i64) {
        if let Ok(mut totals) = self.totals.lock() {
            if totals.len() >= TOTALS && !totals.contains_key(key) {
                totals.clear();
            }
            totals.insert(key.to_owned(), (total, at));
        }
    }
}

pub(super) fn width(window: Duration) -> i64 {
    (window.as_secs() as i64 / SLICES).max(1)
}

/// The counts of `batch` with the same key, value and slice made one, with how many events
/// it stands for (the latest keeps its time and detector). Empties `batch`.
pub(super) fn coalesce(batch: &mut Vec<Count>) -> Vec<(Count, i64)> {
    let mut index: HashMap<(String, Option<String>, i64), usize> = HashMap::new();
    let mut out: Vec<(Count, i64)> = Vec::with_capacity(batch.len());
    for count in batch.drain(..) {
        let slice = count.at.div_euclid(width(count.window));
        let id = (count.key.clone(), count.member.clone(), slice);
        match index.get(&id) {
            Some(&i) => {
                out[i].1 += 1;
                out[i].0 = count;
            }
            None => {
                index.insert(id, out.len());
                out.push((count, 1));
            }
        }
    }
    out
}
