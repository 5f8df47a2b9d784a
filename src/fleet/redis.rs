//! The Redis side of the shared state: the hash of record, the stream of changes, the writer
//! that empties this replica's queue of changes, and the reader that keeps this replica's copy
//! current.

use super::counts::Counts;
use super::link::{self, Conn};
use super::{Entry, Health, Refused, Settings, Sink};
use redis::streams::{StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, RedisResult, Script, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Stream entries kept at most (roughly): a replica away for longer reads the whole state.
const STREAM_KEPT: usize = 100_000;
/// Changes waiting to be written at most; beyond it the oldest is dropped, and logged.
const QUEUE_KEPT: usize = 100_000;
/// How long one read of the stream waits for a new entry.
const READ_BLOCK: Duration = Duration::from_millis(1000);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Writes changes (groups of field, value or "" to remove, expiry or 0, JSON) to the hash and
/// the expiry index, announcing each on the stream, when ARGV[1] (a field, or "") still holds
/// ARGV[2] ("" for absent). A block that ends before the one stored is not written: the later
/// end stands. Answers the last stream id (true when nothing needed announcing), or nil when
/// the expectation failed.
const COMMIT: &str = r"
if ARGV[1] ~= '' then
  local now = redis.call('HGET', KEYS[1], ARGV[1])
  if (now or '') ~= ARGV[2] then return false end
end
local id = true
for i = 5, #ARGV, 4 do
  local field, value, expires = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local stored = nil
  if value ~= '' and string.sub(field, 1, 6) == 'block:' then
    stored = tonumber(redis.call('ZSCORE', KEYS[2], field))
  end
  if stored and expires > 0 and stored >= expires then
    -- a longer block is in force
  elseif value == '' then
    redis.call('HDEL', KEYS[1], field)
    redis.call('ZREM', KEYS[2], field)
  else
    redis.call('HSET', KEYS[1], field, value)
    if expires > 0 then
      redis.call('ZADD', KEYS[2], expires, field)
    else
      redis.call('ZREM', KEYS[2], field)
    end
  end
  if not (stored and expires > 0 and stored >= expires) then
    id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'change', ARGV[i + 3], 'from', ARGV[4])
  end
end
return id
";

/// Drops the entries whose time is up (ARGV[1], Unix seconds), a thousand at a time.
const PRUNE: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, 1000)
for _, field in ipairs(due) do redis.call('HDEL', KEYS[1], field) end
if #due > 0 then redis.call('ZREM', KEYS[2], unpack(due)) end
return #due
";

/// The key names, all under one hash tag so that a Cluster keeps them on one slot.
pub struct Keys {
    pub state: String,
    pub expiry: String,
    pub events: String,
    tag: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        let tag = format!("{{{prefix}}}");
        Self {
            state: format!("{tag}:state"),
            expiry: format!("{tag}:expiry"),
            events: format!("{tag}:events"),
            tag,
        }
    }

    pub fn of(&self, what: &str) -> String {
        format!("{}:{what}", self.tag)
    }
}

pub struct Remote {
    pub settings: Settings,
    pub instance: String,
    pub keys: Keys,
    pub(super) health: Health,
    pub(super) counts: Counts,
    pub(super) metrics: Arc<crate::metrics::Metrics>,
    queue: Mutex<VecDeque<Entry>>,
    queued: Notify,
    writer: tokio::sync::Mutex<Option<Conn>>,
    /// The mark of the Redis data set this replica last read (`{prefix}:born`): a Redis that
    /// comes back without it, or with another, lost the state.
    born: Mutex<Option<String>>,
    /// Asks the reader for a full read now (a write whose outcome is unknown, a data set that
    /// changed under it).
    resync: Notify,
    commit: Script,
    prune: Script,
}

impl Remote {
    pub fn new(settings: Settings, instance: &str, metrics: Arc<crate::metrics::Metrics>) -> Self {
        Self {
            metrics,
            keys: Keys::new(&settings.prefix),
            health: Health::new(settings.max_stale),
            counts: Counts::new(),
            instance: instance.to_owned(),
            settings,
            queue: Mutex::new(VecDeque::new()),
            queued: Notify::new(),
            writer: tokio::sync::Mutex::new(None),
            born: Mutex::new(None),
            resync: Notify::new(),
            commit: Script::new(COMMIT),
            prune: Script::new(PRUNE),
        }
    }

    pub fn spawn(remote: Arc<Self>, sink: Arc<dyn Sink>, stop: CancellationToken) {
        tokio::spawn(read(remote.clone(), sink.clone(), stop.clone()));
        tokio::spawn(write(remote.clone(), stop.clone()));
        tokio::spawn(compare_keys(remote.clone(), sink.clone(), stop.clone()));
        tokio::spawn(watch_staleness(remote.clone(), sink, stop.clone()));
        tokio::spawn(prune(remote, stop));
    }

    pub fn enqueue(&self, change: Entry) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if queue.len() >= QUEUE_KEPT
            && let Some(dropped) = queue.pop_front()
        {
            tracing::error!(change = ?dropped, "shared state: too many changes wait for Redis; the oldest is dropped");
        }
        queue.push_back(change);
        drop(queue);
        self.queued.notify_one();
    }

    pub fn observe(&self) {
        let s = self.health.standing();
        self.metrics.fleet.observe(s.synced, s.age, s.stale);
        let queued = self.queue.lock().map_or(0, |q| q.len());
        self.metrics.fleet.queued.set(queued as i64);
    }

    fn pending(&self) -> Vec<Entry> {
        let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.iter().cloned().collect()
    }

    /// The writer's connection, opened when there is none.
    pub async fn conn(&self) -> RedisResult<Conn> {
        let mut writer = self.writer.lock().await;
        if let Some(conn) = writer.as_ref() {
            return Ok(conn.clone());
        }
        let conn = link::connect(&self.settings, self.settings.timeout).await?;
        *writer = Some(conn.clone());
        Ok(conn)
    }

    async fn forget_conn(&self) {
        *self.writer.lock().await = None;
    }

    /// Runs the commit script for `changes` under `expect`; `Ok(false)` when the expectation
    /// no longer held.
    async fn run_commit(
        &self,
        changes: &[Entry],
        expect: Option<(&str, Option<&str>)>,
    ) -> RedisResult<bool> {
        let mut invocation = self.commit.prepare_invoke();
        invocation
            .key(&self.keys.state)
            .key(&self.keys.expiry)
            .key(&self.keys.events);
        let (field, holds) = expect.map_or(("", ""), |(f, v)| (f, v.unwrap_or("")));
        invocation
            .arg(field)
            .arg(holds)
            .arg(STREAM_KEPT)
            .arg(&self.instance);
        for change in changes {
            invocation
                .arg(&change.field)
                .arg(change.value.as_deref().unwrap_or(""))
                .arg(change.expires.unwrap_or(0))
                .arg(&change.event);
        }
        let mut conn = self.conn().await?;
        let answer: Value = invocation.invoke_async(&mut conn).await?;
        Ok(!matches!(answer, Value::Nil))
    }

    pub async fn commit(
        &self,
        changes: &[Entry],
        expect: Option<(&str, Option<&str>)>,
    ) -> Result<(), Refused> {
        let attempt = tokio::time::timeout(self.settings.timeout, self.run_commit(changes, expect));
        match attempt.await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(Refused::Conflict),
            Ok(Err(e)) => {
                self.forget_conn().await;
                // Redis may have run the script before the link failed: read the whole state
                // again rather than miss a change of this replica's own.
                self.resync.notify_one();
                tracing::warn!(error = %e, "shared state: a change could not be written to Redis");
                Err(Refused::Unavailable(e.to_string()))
            }
            Err(_) => {
                self.forget_conn().await;
                self.resync.notify_one();
                tracing::warn!(timeout = ?self.settings.timeout, "shared state: Redis did not answer in time");
                Err(Refused::Unavailable(format!(
                    "Redis did not answer within {:?}",
                    self.settings.timeout
                )))
            }
        }
    }

    pub async fn once(&self, what: &str, for_seconds: u64) -> bool {
        let key = self.keys.of(&format!("once:{what}"));
        let attempt = async {
            let mut conn = self.conn().await?;
            let set: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&self.instance)
                .arg("NX")
                .arg("EX")
                .arg(for_seconds.max(1))
                .query_async(&mut conn)
                .await?;
            RedisResult::Ok(set.is_some())
        };
        match tokio::time::timeout(self.settings.timeout, attempt).await {
            Ok(Ok(claimed)) => claimed,
            // Said twice rather than never.
            _ => true,
        }
    }
}

/// Reads the whole state, then the stream from where the read began, for as long as Redis
/// answers; again after every failure, until `stop`.
async fn read(remote: Arc<Remote>, sink: Arc<dyn Sink>, stop: CancellationToken) {
    let mut backoff = BACKOFF_FIRST;
    loop {
        let session = follow(&remote, sink.as_ref());
        let failed = tokio::select! {
            () = stop.cancelled() => return,
            e = session => e,
            // A full read now, on a new connection.
            () = remote.resync.notified() => continue,
        };
        if !remote.health.down.swap(true, Ordering::AcqRel) {
            if remote.health.synced.load(Ordering::Acquire) {
                tracing::error!(error = %failed, "shared state: lost Redis; deciding on the state last read");
            } else {
                tracing::error!(error = %failed, "shared state: cannot read the state from Redis; refusing every request until it is read");
            }
            backoff = BACKOFF_FIRST;
        }
        remote.metrics.fleet.reconnects.inc();
        remote.observe();
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection's life: the whole state read, then every change after it. Returns why it
/// ended.
async fn follow(remote: &Remote, sink: &dyn Sink) -> redis::RedisError {
    let answer = READ_BLOCK + remote.settings.timeout;
    let mut conn = match link::connect(&remote.settings, answer).await {
        Ok(conn) => conn,
        Err(e) => return e,
    };
    let mut last = match resync(remote, sink, &mut conn).await {
        Ok(last) => last,
        Err(e) => return e,
    };
    if remote.health.down.swap(false, Ordering::AcqRel) {
        tracing::info!("shared state: Redis is back; the state was read again");
    }
    let options = StreamReadOptions::default()
        .block(READ_BLOCK.as_millis() as usize)
        .count(1000);
    loop {
        let reply: RedisResult<Option<StreamReadReply>> = conn
            .xread_options(&[&remote.keys.events], &[&last], &options)
            .await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => return e,
        };
        remote.health.heard_now();
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            for entry in key.ids {
                last = entry.id.clone();
                apply_entry(remote, sink, &entry.map);
            }
        }
        remote.observe();
    }
}

fn apply_entry(remote: &Remote, sink: &dyn Sink, map: &HashMap<String, Value>) {
    let text = |name: &str| match map.get(name) {
        Some(Value::BulkString(bytes)) => String::from_utf8(bytes.clone()).ok(),
        Some(Value::SimpleString(s)) => Some(s.clone()),
        _ => None,
    };
    // This replica applied its own changes when it made them.
    if text("from").as_deref() == Some(remote.instance.as_str()) {
        return;
    }
    if let Some(json) = text("change") {
        sink.apply(&json);
        remote.metrics.fleet.applied.inc();
    }
}

/// Reads the whole state and puts it in force here; the stream id to read on from.
async fn resync(remote: &Remote, sink: &dyn Sink, conn: &mut Conn) -> RedisResult<String> {
    // The id is read first: a change announced after it is read from the stream, and one
    // announced before it was written to the hash before, so it is in what is read next.
    let newest: StreamRangeReply = conn
        .xrevrange_count(&remote.keys.events, "+", "-", 1)
        .await?;
    let last = newest
        .ids
        .first()
        .map_or_else(|| "0-0".to_owned(), |e| e.id.clone());
    let born = remote.keys.of("born");
    let _: Option<String> = redis::cmd("SET")
        .arg(&born)
        .arg(format!("{}@{}", remote.instance, super::now_ms()))
        .arg("NX")
        .query_async(conn)
        .await?;
    let mark: Option<String> = conn.get(&born).await?;
    let known = remote
        .born
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .replace(mark.clone().unwrap_or_default());
    if let Some(known) = known
        && Some(&known) != mark.as_ref()
    {
        // Redis came back without the data set this replica read (restarted without
        // persistence, flushed, failed over to an empty replica): what takes access away is
        // written back from here rather than forgotten.
        let entries = sink.restrictive();
        tracing::error!(
            entries = entries.len(),
            "shared state: Redis lost the shared state; writing back this replica's revocations and blocks"
        );
        for entry in entries {
            remote.enqueue(entry);
        }
    }
    let all: HashMap<String, String> = conn.hgetall(&remote.keys.state).await?;
    let values: Vec<String> = all.into_values().collect();
    sink.replace(&values, &remote.pending());
    remote.health.heard_now();
    remote.health.synced.store(true, Ordering::Release);
    remote.metrics.fleet.resyncs.inc();
    remote.observe();
    tracing::info!(
        entries = values.len(),
        "shared state: read whole from Redis"
    );
    Ok(last)
}

/// Writes the queued changes in order, each retried until Redis takes it, until `stop` (what
/// is still queued then is logged).
async fn write(remote: Arc<Remote>, stop: CancellationToken) {
    let mut backoff = BACKOFF_FIRST;
    loop {
        let next = remote.queue.lock().ok().and_then(|q| q.front().cloned());
        remote.observe();
        let Some(change) = next else {
            tokio::select! {
                () = stop.cancelled() => return,
                () = remote.queued.notified() => continue,
            }
        };
        match remote.commit(std::slice::from_ref(&change), None).await {
            Ok(()) => {
                backoff = BACKOFF_FIRST;
                if let Ok(mut q) = remote.queue.lock()
                    && q.front() == Some(&change)
                {
                    q.pop_front();
                }
                remote.metrics.fleet.written.inc();
            }
            Err(_) => {
                tokio::select! {
                    () = stop.cancelled() => {
                        let left = remote.queue.lock().map_or(0, |q| q.len());
                        tracing::error!(left, "shared state: stopping with changes Redis never took");
                        return;
                    }
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Drops expired entries from the hash every 30 seconds (any replica may; it is idempotent).
async fn prune(remote: Arc<Remote>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
        let attempt = async {
            let mut conn = remote.conn().await?;
            let dropped: i64 = remote
                .prune
                .key(&remote.keys.state)
                .key(&remote.keys.expiry)
                .arg(crate::identity::now())
                .invoke_async(&mut conn)
                .await?;
            RedisResult::Ok(dropped)
        };
        if let Ok(Ok(dropped)) = tokio::time::timeout(remote.settings.timeout, attempt).await
            && dropped > 0
        {
            tracing::debug!(dropped, "shared state: expired entries dropped");
        }
    }
}

/// How often a replica tells the others its key ids, and how long the word holds.
const KEYS_EVERY: Duration = Duration::from_secs(10);
const KEYS_HELD: Duration = Duration::from_secs(35);

/// Tells the other replicas this one's key ids (`{prefix}:keys`, one field per replica, with
/// the time the word stops holding) and compares with theirs: a replica whose keys differ
/// opens none of the sessions another sealed, and its assertions fail where the others' keys
/// are trusted. Logged when it starts or stops, and in `vigil_state_keys_differ`.
async fn compare_keys(remote: Arc<Remote>, sink: Arc<dyn Sink>, stop: CancellationToken) {
    let key = remote.keys.of("keys");
    let mut differed = 0usize;
    loop {
        let mine = sink.keys();
        let attempt = async {
            let mut conn = remote.conn().await?;
            let now = super::now_ms();
            let word = format!("{} {mine}", now + KEYS_HELD.as_millis() as i64);
            let () = conn.hset(&key, &remote.instance, word).await?;
            let all: HashMap<String, String> = conn.hgetall(&key).await?;
            let mut gone = Vec::new();
            let mut differ = 0usize;
            for (instance, word) in &all {
                let (until, keys) = word.split_once(' ').unwrap_or(("0", ""));
                if until.parse::<i64>().unwrap_or(0) < now {
                    gone.push(instance.clone());
                } else if instance != &remote.instance && keys != mine {
                    differ += 1;
                }
            }
            if !gone.is_empty() {
                let _: i64 = conn.hdel(&key, gone).await?;
            }
            // The data set read at the last resync is still the one there (not flushed).
            let mark: Option<String> = conn.get(remote.keys.of("born")).await?;
            let known = remote.born.lock().ok().and_then(|b| b.clone());
            if known.is_some() && known != mark {
                remote.resync.notify_one();
            }
            RedisResult::Ok(differ)
        };
        if let Ok(Ok(differ)) = tokio::time::timeout(remote.settings.timeout, attempt).await {
            if differ > 0 && differed == 0 {
                tracing::error!(
                    replicas = differ,
                    "shared state: other replicas hold other session or assertion keys; give every replica the same [session] and [assertion] keys_file"
                );
            } else if differ == 0 && differed > 0 {
                tracing::info!("shared state: every replica holds the same keys again");
            }
            differed = differ;
            remote.metrics.fleet.keys_differ.set(differ as i64);
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(KEYS_EVERY) => {}
        }
    }
}

/// Re-checks the open connections, streams and tunnels the moment the copy goes stale, so
/// that those of routes that require a current state are cut then, not at the next sweep.
async fn watch_staleness(remote: Arc<Remote>, sink: Arc<dyn Sink>, stop: CancellationToken) {
    let mut was_stale = remote.health.standing().stale;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        let stale = remote.health.standing().stale;
        if stale && !was_stale {
            tracing::warn!(
                max_stale = ?remote.settings.max_stale,
                "shared state: the copy is stale; routes that require the shared state are refused"
            );
            sink.recheck();
        }
        was_stale = stale;
    }
}
