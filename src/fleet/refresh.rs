//! One refresh per session across the fleet. A replica about to refresh a session claims it
//! with a short lock in Redis (`SET NX PX`); the others wait for its outcome, which it leaves
//! in Redis sealed with the session keys (it holds the rotated refresh token), and take it. A
//! replica that cannot reach Redis, or whose claimer vanished, refreshes alone: the worst case
//! is the provider seeing two refreshes, never a request allowed on a refusal.

use super::redis::Remote;
use crate::identity::seal::Purpose;
use crate::identity::session::Session;
use crate::identity::verify::{Claim, Coordinator};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// How long a claim holds: longer than the provider client's own time limits.
const LOCK: Duration = Duration::from_secs(20);
/// How long an outcome stays for replicas still carrying the old cookie.
const KEPT: Duration = Duration::from_secs(60);
/// How often a waiting replica looks for the outcome.
const POLL: Duration = Duration::from_millis(50);
/// Removes the claim KEYS[1] when ARGV[1] (this replica) still holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// The session keys in force.
pub type Keys = Box<dyn Fn() -> Option<Arc<crate::identity::Sessions>> + Send + Sync>;

pub struct Refreshes {
    pub(super) remote: Arc<Remote>,
    pub(super) keys: Keys,
}

#[derive(serde::Serialize, serde::Deserialize)]
enum Outcome {
    Refreshed(Box<Session>),
    Ended(String),
}

impl Refreshes {
    fn keys(&self, session: &Session) -> (String, String) {
        let id = format!("{}:{}", session.sid, session.verified_at);
        (
            self.remote.keys.of(&format!("refresh:{id}")),
            self.remote.keys.of(&format!("refreshed:{id}")),
        )
    }

    fn open(&self, sealed: &str) -> Option<Result<Box<Session>, String>> {
        let sessions = (self.keys)()?;
        let plain = sessions.ring.open(Purpose::Refresh, sealed).ok()?;
        match serde_json::from_slice(&plain).ok()? {
            Outcome::Refreshed(session) => Some(Ok(session)),
            Outcome::Ended(why) => Some(Err(why)),
        }
    }

    fn seal(&self, outcome: Result<Session, String>) -> Option<String> {
        let sessions = (self.keys)()?;
        let outcome = match outcome {
            Ok(session) => Outcome::Refreshed(Box::new(session)),
            Err(why) => Outcome::Ended(why),
        };
        sessions
            .ring
            .seal(Purpose::Refresh, &serde_json::to_vec(&outcome).ok()?)
            .ok()
    }

    async fn try_claim(&self, session: &Session) -> redis::RedisResult<Claim> {
        let (lock, done) = self.keys(session);
        let mut conn = self.remote.conn().await?;
        let deadline = tokio::time::Instant::now() + LOCK;
        loop {
            let outcome: Option<String> =
                redis::cmd("GET").arg(&done).query_async(&mut conn).await?;
            if let Some(outcome) = outcome.and_then(|sealed| self.open(&sealed)) {
                return Ok(Claim::Done(outcome));
            }
            let claimed: Option<String> = redis::cmd("SET")
                .arg(&lock)
                .arg(&self.remote.instance)
                .arg("NX")
                .arg("PX")
                .arg(LOCK.as_millis() as u64)
                .query_async(&mut conn)
                .await?;
            if claimed.is_some() {
                return Ok(Claim::Mine);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Claim::Unknown);
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Coordinator for Refreshes {
    fn claim(&self, session: &Session) -> Pin<Box<dyn Future<Output = Claim> + Send + '_>> {
        let session = session.clone();
        Box::pin(async move {
            match self.try_claim(&session).await {
                Ok(claim) => claim,
                Err(e) => {
                    tracing::warn!(error = %e, user = %session.sub, "shared state: the refresh could not be claimed; refreshing here");
                    Claim::Unknown
                }
            }
        })
    }

    fn publish(
        &self,
        session: &Session,
        outcome: Result<Session, String>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let (lock, done) = self.keys(session);
        let sealed = self.seal(outcome);
        Box::pin(async move {
            let Some(sealed) = sealed else {
                return;
            };
            let attempt = async {
                let mut conn = self.remote.conn().await?;
                redis::pipe()
                    .cmd("SET")
                    .arg(&done)
                    .arg(sealed)
                    .arg("PX")
                    .arg(KEPT.as_millis() as u64)
                    .ignore()
                    .del(&lock)
                    .ignore()
                    .query_async::<()>(&mut conn)
                    .await
            };
            if let Ok(Err(e)) = tokio::time::timeout(self.remote.settings.timeout, attempt).await {
                tracing::warn!(error = %e, "shared state: a refresh's outcome could not be shared");
            }
        })
    }

    fn release(&self, session: &Session) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let (lock, _) = self.keys(session);
        Box::pin(async move {
            let attempt = async {
                let mut conn = self.remote.conn().await?;
                redis::Script::new(RELEASE)
                    .key(&lock)
                    .arg(&self.remote.instance)
                    .invoke_async::<i64>(&mut conn)
                    .await
            };
            if let Ok(Err(e)) = tokio::time::timeout(self.remote.settings.timeout, attempt).await {
                tracing::warn!(error = %e, "shared state: a refresh's claim could not be given up");
            }
        })
    }
}
