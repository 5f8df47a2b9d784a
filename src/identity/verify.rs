//! Re-verification of sessions with the provider, once per `[verify] interval`.
//!
//! When a session's last verification is older than the interval, the next request refreshes
//! it with its refresh token before being served: the provider's answer replaces the claims,
//! and a refusal (revoked grant, disabled account) ends the session. Many requests arriving at
//! once with the same session share one refresh; a slow provider delays only that session.
//! When the provider cannot be reached, what it said last holds for `max_stale`, then the
//! session is refused (fail closed).

use super::oidc::{LoginError, Provider};
use super::session::Session;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// `[verify]`, compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub interval: Duration,
    pub max_stale: Duration,
}

/// What a re-verification found.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Still valid; the session with fresh claims and verification time.
    Refreshed(Box<Session>),
    /// The provider said no: the session is over.
    Ended(String),
    /// The provider could not be asked.
    Unreachable(String),
}

type Flight = Arc<OnceCell<Outcome>>;

/// Refreshes in flight (and just finished), by session id and the verification time they
/// replace, so concurrent requests carrying the same cookie share one refresh.
#[derive(Default)]
pub struct Reverifier {
    flights: Mutex<HashMap<(String, i64), (Instant, Flight)>>,
}

/// How long a finished refresh answers later requests that still carry the old cookie.
const REMEMBER: Duration = Duration::from_secs(60);

impl Reverifier {
    pub async fn reverify(&self, provider: &Provider, session: &Session) -> Outcome {
        let key = (session.sid.clone(), session.verified_at);
        let flight = match self.flights.lock() {
            Ok(mut flights) => {
                flights.retain(|_, (started, _)| started.elapsed() < REMEMBER);
                flights
                    .entry(key)
                    .or_insert_with(|| (Instant::now(), Arc::new(OnceCell::new())))
                    .1
                    .clone()
            }
            Err(_) => Arc::new(OnceCell::new()),
        };
        flight
            .get_or_init(|| async {
                match provider.refresh(session, super::now()).await {
                    Ok(fresh) => Outcome::Refreshed(Box::new(fresh)),
                    Err(LoginError::Unreachable(e)) => Outcome::Unreachable(e),
                    Err(LoginError::NotReady) => {
                        Outcome::Unreachable("identity provider not discovered".into())
                    }
                    Err(e) => Outcome::Ended(e.to_string()),
                }
            })
            .await
            .clone()
    }

    /// Sessions with a refresh in flight or remembered.
    pub fn len(&self) -> usize {
        self.flights.lock().map(|f| f.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
