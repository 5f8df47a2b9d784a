//! The state replicas share: revocations, logouts, grants and access requests, blocks, the
//! devices the risk engine has seen, the detectors' counts, and one refresh per session.
//!
//! With `[state] backend = "memory"` (the default) it lives in this process alone. With
//! `"redis"`, every replica keeps its copy in memory (requests are decided from it and never
//! wait for Redis) and Redis holds the state of record:
//!
//! - **A change** is written to one Redis hash and announced on a Redis Stream in the same
//!   script, so it is never announced without being stored. A change that takes access away
//!   (a revocation, a logout, a block) applies on its own replica at once and is written as
//!   soon as Redis answers, retried until it does; one that lets someone in (a grant, an
//!   approval, lifting a block) is written first and refused when it cannot be.
//! - **Every replica reads the stream** from the last entry it saw, so a replica that was away
//!   misses nothing, and reads the whole hash again on every (re)connect.
//! - **While Redis cannot be reached**, requests are decided on what the replica knew last;
//!   once that is older than `max_stale`, routes with `require_shared_state` are refused. A
//!   replica that never read the state refuses every request. Nothing is ever allowed
//!   because Redis was unreachable.

mod counts;
mod link;
mod redis;
pub mod refresh;
mod tally;

pub use counts::{Count, Fire};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

/// Where Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One server: `redis://` or `rediss://`.
    Single { url: String },
    /// Sentinels that know the master `master`.
    Sentinel {
        nodes: Vec<String>,
        master: String,
        db: i64,
        tls: bool,
    },
    /// A Cluster, reached first through `nodes`.
    Cluster { nodes: Vec<String>, tls: bool },
}

/// `[state]` with `backend = "redis"`, compiled.
#[derive(Clone, PartialEq, Eq)]
pub struct Settings {
    pub target: Target,
    pub username: Option<String>,
    pub password: Option<String>,
    /// PEM of the CAs Redis's certificate must chain to.
    pub ca: Option<Vec<u8>>,
    pub prefix: String,
    pub max_stale: Duration,
    pub timeout: Duration,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("target", &self.target)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "(set)"))
            .field("prefix", &self.prefix)
            .field("max_stale", &self.max_stale)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// One change to the shared state: the entry of the state it puts (`value`, kept until
/// `expires`, Unix seconds) or removes (`value` is `None`), and the event announcing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub field: String,
    pub value: Option<String>,
    pub expires: Option<i64>,
    /// What the other replicas apply, as JSON.
    pub event: String,
}

impl Entry {
    /// An entry put: `json` is both what is stored and what is announced.
    pub fn put(field: String, json: String, expires: Option<i64>) -> Self {
        Self {
            field,
            value: Some(json.clone()),
            expires,
            event: json,
        }
    }

    pub fn remove(field: String, event: String) -> Self {
        Self {
            field,
            value: None,
            expires: None,
            event,
        }
    }
}

/// What the shared state does to this replica: the state module above implements it.
pub trait Sink: Send + Sync {
    /// The whole state as read back (every stored value), then `pending`, this replica's
    /// changes not yet written.
    fn replace(&self, values: &[String], pending: &[Entry]);
    /// A change another replica made.
    fn apply(&self, event: &str);
    /// A fleet-wide count went over its detector's threshold, and this replica fires it.
    fn fire(&self, fire: &Fire, total: u32, at: i64);
    /// The ids of the keys this replica seals sessions and signs assertions with (public
    /// values): every replica of a fleet must hold the same.
    fn keys(&self) -> String;
    /// The copy went stale: the open connections are checked again now.
    fn recheck(&self);
    /// What this replica holds that takes access away (revocations, logouts, blocks), as
    /// entries: written back to a Redis that lost the state.
    fn restrictive(&self) -> Vec<Entry>;
}

/// Why a change that lets someone in was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the shared state cannot be written now ({0}); try again")]
    Unavailable(String),
    #[error("the entry was changed on another replica meanwhile")]
    Conflict,
}

/// The shared state's standing, for facts, `/readyz` and metrics.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Standing {
    /// Whether the replica has read the whole state from Redis at least once.
    pub synced: bool,
    /// Seconds since the replica last heard from Redis (since it started, before it first
    /// read the state).
    pub age: f64,
    /// Whether `age` is over `[state] max_stale` (or the state was never read).
    pub stale: bool,
}

/// The least `[state] max_stale`: a replica reading the stream hears from Redis at least once
/// a second (the read blocks for one), so a shorter limit would call a healthy copy stale.
pub const MIN_STALE: Duration = Duration::from_secs(2);

/// This process's handle on the shared state.
#[derive(Default)]
pub struct Fleet {
    remote: Option<Arc<redis::Remote>>,
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Fleet {
    /// The handle for `settings`: in memory without, Redis with. Nothing is connected before
    /// [`Fleet::start`].
    pub fn new(
        settings: Option<&Settings>,
        instance: &str,
        metrics: &Arc<crate::metrics::Metrics>,
    ) -> Self {
        Self {
            remote: settings
                .map(|s| Arc::new(redis::Remote::new(s.clone(), instance, metrics.clone()))),
        }
    }

    pub fn shared(&self) -> bool {
        self.remote.is_some()
    }

    /// Starts reading and writing Redis for `sink`, until `stop`.
    pub fn start(&self, sink: Arc<dyn Sink>, stop: tokio_util::sync::CancellationToken) {
        if let Some(remote) = &self.remote {
            redis::Remote::spawn(remote.clone(), sink.clone(), stop.clone());
            tokio::spawn(tally::flush(remote.clone(), sink, stop));
        }
    }

    /// A change that takes access away, already applied on this replica: written to Redis
    /// and announced to the others as soon as Redis answers, retried until it is.
    pub fn announce(&self, change: Entry) {
        if let Some(remote) = &self.remote {
            remote.enqueue(change);
        }
    }

    /// Writes `changes` (which let someone in) to the shared state, when `expect` (a field of
    /// the state and the value it must hold now, `None` for absent) still holds. The caller
    /// applies them on this replica once this says yes.
    pub async fn commit(
        &self,
        changes: &[Entry],
        expect: Option<(&str, Option<&str>)>,
    ) -> Result<(), Refused> {
        match &self.remote {
            None => Ok(()),
            Some(remote) => remote.commit(changes, expect).await,
        }
    }

    /// Counts `count` across the fleet (for the detectors and the risk engine). Never waits.
    pub fn count(&self, count: Count) {
        if let Some(remote) = &self.remote {
            remote.counts.send(count);
        }
    }

    /// The fleet's total for a key this replica counted, as last heard from Redis, if that
    /// was within `window` of `now`.
    pub fn total(&self, key: &str, now: i64, window: Duration) -> Option<u32> {
        self.remote
            .as_ref()
            .and_then(|r| r.counts.total(key, now, window))
    }

    /// Brings the shared state's metrics up to date (its age grows as time passes).
    pub fn observe(&self) {
        if let Some(remote) = &self.remote {
            remote.observe();
        }
    }

    /// `None` in memory; else how current this replica's copy is.
    pub fn standing(&self) -> Option<Standing> {
        self.remote.as_ref().map(|r| r.health.standing())
    }

    /// Whether Redis answers now and this replica's copy is current, so that the fleet's
    /// counts decide; `false` in memory and while Redis is lost (each replica then counts on
    /// its own rather than not at all).
    pub fn linked(&self) -> bool {
        self.remote
            .as_ref()
            .is_some_and(|r| !r.health.down.load(Ordering::Acquire) && !r.health.standing().stale)
    }

    /// Claims `what` (a one-off duty such as announcing that a grant expired) for this
    /// replica: true for exactly one replica, or for every one while Redis cannot say.
    pub async fn once(&self, what: &str, for_seconds: u64) -> bool {
        match &self.remote {
            None => true,
            Some(remote) => remote.once(what, for_seconds).await,
        }
    }

    /// What makes refreshes one per session across the fleet; `keys` gives the session keys
    /// in force, which seal the outcome left for the other replicas.
    pub fn refreshes(
        &self,
        keys: refresh::Keys,
    ) -> Option<Arc<dyn crate::identity::verify::Coordinator>> {
        let remote = self.remote.clone()?;
        Some(Arc::new(refresh::Refreshes { remote, keys }))
    }
}

/// How recently Redis answered, and whether the whole state was read.
struct Health {
    synced: AtomicBool,
    /// Unix milliseconds of the last answer from the stream.
    heard: AtomicI64,
    max_stale: Duration,
    /// Whether the last attempt to talk to Redis failed, so a recovery is logged once.
    down: AtomicBool,
    /// Unix milliseconds when this replica started: the age of a state never read.
    started: i64,
}

impl Health {
    fn new(max_stale: Duration) -> Self {
        Self {
            synced: AtomicBool::new(false),
            heard: AtomicI64::new(0),
            max_stale,
            down: AtomicBool::new(false),
            started: now_ms(),
        }
    }

    fn heard_now(&self) {
        self.heard.store(now_ms(), Ordering::Release);
    }

    fn standing(&self) -> Standing {
        let synced = self.synced.load(Ordering::Acquire);
        let since = if synced {
            self.heard.load(Ordering::Acquire)
        } else {
            self.started
        };
        let age = (now_ms() - since).max(0) as f64 / 1000.0;
        Standing {
            synced,
            age,
            stale: !synced || age > self.max_stale.as_secs_f64(),
        }
    }
}
