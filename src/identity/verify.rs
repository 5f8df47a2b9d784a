//! Re-verification of sessions with the provider, once per `[verify] interval`.
//!
//! When a session's last verification is older than the interval, the next request refreshes
//! it with its refresh token before being served: the provider's answer replaces the claims,
//! and a refusal (revoked grant, disabled account) ends the session. Many requests arriving at
//! once with the same session share one refresh, which runs in its own task so that a request
//! giving up on it does not cancel it for the others; a slow provider delays only that session.
//!
//! When the provider cannot be reached, what it said last holds until `interval + max_stale`
//! after the last verification, and not a moment longer (fail closed): the judgement is made
//! with the clock read when the answer is given, not when the request arrived, and a request
//! waits for the provider at most until that deadline. [`Reverifier::judge`] is the one place
//! that decides this, for requests and for open tunnels alike.

use super::oidc::{LoginError, Provider};
use super::session::{Session, SessionRefusal};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// `[verify]`, compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub interval: Duration,
    pub max_stale: Duration,
}

/// What one refresh with the provider found.
#[derive(Debug, Clone)]
enum Outcome {
    /// Still valid; the session with fresh claims and verification time.
    Refreshed(Box<Session>),
    /// The provider said no: the session is over.
    Ended(String),
    /// The provider could not be asked.
    Unreachable(String),
}

/// The judgement on a session's verification, at the moment it is given.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Verified less than `interval` ago: the provider was not asked.
    Current,
    /// Re-verified just now: the session with the provider's fresh claims.
    Refreshed(Box<Session>),
    /// The provider could not be asked, and it is still less than `interval + max_stale`
    /// since the last verification: what the provider said last holds.
    Stale { why: String },
    /// Refused: ended by the provider, or not verified within `interval + max_stale`.
    Refused(SessionRefusal),
}

/// A refresh in flight, and its outcome with when it came once it has.
type Flight = watch::Receiver<Option<(Outcome, Instant)>>;

/// Refreshes in flight (and just finished), by session id and the verification time they
/// replace, so concurrent requests carrying the same cookie share one refresh.
#[derive(Default)]
pub struct Reverifier {
    flights: Mutex<HashMap<(String, i64), Entry>>,
    /// With a shared state, what makes one refresh per session across the fleet.
    pub fleet: std::sync::OnceLock<Arc<dyn Coordinator>>,
}

/// What the shared state says about a session's refresh (see [`Coordinator`]).
pub enum Claim {
    /// This replica refreshes, and tells the others how it went.
    Mine,
    /// Another replica refreshed: the refreshed session, or why the provider ended it.
    Done(Result<Box<Session>, String>),
    /// The shared state could not say: this replica refreshes alone.
    Unknown,
}

/// Refreshes of one session across replicas: only one replica may spend a refresh token,
/// since a rotated one is spent once.
pub trait Coordinator: Send + Sync {
    /// Claims the refresh of `session` (as last verified), or waits for the replica that
    /// claimed it.
    fn claim(
        &self,
        session: &Session,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Claim> + Send + '_>>;

    /// Tells the other replicas how the refresh this replica claimed went.
    fn publish(
        &self,
        session: &Session,
        outcome: Result<Session, String>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>;

    /// Gives up the claim on a refresh that did not happen (the provider could not be
    /// reached), so that another replica tries at once rather than wait for the claim to end.
    fn release(
        &self,
        session: &Session,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>;
}

/// One refresh in flight or remembered.
struct Entry {
    started: Instant,
    flight: Flight,
    /// Whether a live-connection verifier waits for its end (see [`Watch`]).
    watched: bool,
}

/// How long a finished refresh answers later requests that still carry the old cookie.
const REMEMBER: Duration = Duration::from_secs(60);
/// How long a failure to reach the provider answers later requests before the next attempt:
/// short, so a provider that is back is asked again before sessions run out of `max_stale`.
const REMEMBER_UNREACHABLE: Duration = Duration::from_secs(10);
/// The longest a request waits for a refresh when its session has no staleness budget left
/// (only a fresh answer can let it through). The provider's HTTP client gives up after 10 s.
const PAST_DEADLINE_WAIT: Duration = Duration::from_secs(15);
/// How long an open stream whose session is already past `interval + max_stale` when its
/// refresh starts stands while that refresh is in flight (see [`Reverifier::judge_now`]).
pub const STREAM_GRACE: Duration = Duration::from_secs(3);

impl Reverifier {
    /// Judges `session` against `settings` now: current, refreshed with the provider, still
    /// within `interval + max_stale` of its last verification while the provider cannot be
    /// reached, or refused. A request waits for the provider at most until that deadline (a
    /// session past it waits at most [`PAST_DEADLINE_WAIT`] for a fresh answer); staleness is
    /// judged with the clock read after the wait, so no answer given after the deadline is an
    /// allow on old claims.
    pub async fn judge(
        &self,
        provider: &Arc<Provider>,
        session: &Session,
        settings: Settings,
    ) -> Verdict {
        let interval = settings.interval.as_secs() as i64;
        if super::now() - session.verified_at < interval {
            return Verdict::Current;
        }
        let deadline = deadline(session, settings);
        let budget = deadline
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let wait = if budget.is_zero() {
            PAST_DEADLINE_WAIT
        } else {
            budget
        };
        let outcome = tokio::time::timeout(wait, self.reverify(provider, session)).await;
        let within = SystemTime::now() < deadline;
        match outcome {
            Ok(outcome) => conclude(session, outcome, within, deadline),
            Err(_) => {
                tracing::warn!(user = %session.sub, waited = ?wait, "provider did not answer before the session's verification ran out");
                Verdict::Refused(SessionRefusal::Unverifiable(format!(
                    "no answer from the identity provider within {wait:?}, before interval + max_stale ran out"
                )))
            }
        }
    }

    /// Judges `session` now without waiting for the provider, for the live-connection
    /// verifier: one hung refresh must not hold up the checks of every other connection.
    ///
    /// A session verified less than `interval` ago is current. Otherwise its shared refresh
    /// is started (or joined) in the background and the judgement is given at once: the
    /// refresh's answer if it is in; while it is not, the last verification holds until
    /// `interval + max_stale` after it, and then the session is unverifiable. A session
    /// already past that deadline when its refresh starts holds for [`STREAM_GRACE`] at most,
    /// so that a refresh a healthy provider answers at once is not cut for being late.
    ///
    /// When the judgement stands on a refresh that is not in yet, the first caller gets a
    /// [`Watch`] telling it when to judge again (the answer came, or the deadline passed).
    pub fn judge_now(
        &self,
        provider: &Arc<Provider>,
        session: &Session,
        settings: Settings,
    ) -> (Verdict, Option<Watch>) {
        let interval = settings.interval.as_secs() as i64;
        if super::now() - session.verified_at < interval {
            return (Verdict::Current, None);
        }
        let deadline = deadline(session, settings);
        let (flight, started) = self.flight(provider, session);
        let outcome = flight.borrow().as_ref().map(|(outcome, _)| outcome.clone());
        let within = SystemTime::now() < deadline;
        // The grace is for a refresh started after the deadline (the session was not looked
        // at in time); one started before it has had its chance.
        let late = SystemTime::now()
            .checked_sub(started.elapsed())
            .is_some_and(|at| at >= deadline);
        let grace_end = if late {
            started + STREAM_GRACE
        } else {
            started
        };
        let verdict = match outcome {
            Some(outcome) => conclude(session, outcome, within, deadline),
            None if within || Instant::now() < grace_end => Verdict::Stale {
                why: "re-verification with the identity provider in flight".into(),
            },
            None => {
                tracing::warn!(user = %session.sub, "provider did not answer before the session's verification ran out");
                Verdict::Refused(SessionRefusal::Unverifiable(
                    "no answer from the identity provider before interval + max_stale ran out"
                        .into(),
                ))
            }
        };
        let watch =
            (matches!(verdict, Verdict::Stale { .. }) && self.claim_watch(session)).then(|| {
                Watch {
                    flight,
                    deadline,
                    grace_end,
                }
            });
        (verdict, watch)
    }

    /// Marks the refresh of `session` as watched; false if someone already watches it.
    fn claim_watch(&self, session: &Session) -> bool {
        let key = (session.sid.clone(), session.verified_at);
        match self.flights.lock() {
            Ok(mut flights) => match flights.get_mut(&key) {
                Some(entry) if !entry.watched => {
                    entry.watched = true;
                    true
                }
                _ => false,
            },
            Err(_) => false,
        }
    }

    /// The outcome of the shared refresh for `session`, starting it if none is in flight.
    async fn reverify(&self, provider: &Arc<Provider>, session: &Session) -> Outcome {
        let (mut flight, _) = self.flight(provider, session);
        match flight.wait_for(Option::is_some).await {
            Ok(done) => match &*done {
                Some((outcome, _)) => outcome.clone(),
                None => Outcome::Unreachable("re-verification stopped".into()),
            },
            Err(_) => Outcome::Unreachable("re-verification stopped".into()),
        }
    }

    /// The shared refresh for `session` and when it started, starting it if none is in
    /// flight or remembered.
    fn flight(&self, provider: &Arc<Provider>, session: &Session) -> (Flight, Instant) {
        let key = (session.sid.clone(), session.verified_at);
        match self.flights.lock() {
            Ok(mut flights) => {
                flights.retain(|_, entry| match &*entry.flight.borrow() {
                    None => entry.started.elapsed() < REMEMBER,
                    Some((Outcome::Unreachable(_), at)) => at.elapsed() < REMEMBER_UNREACHABLE,
                    Some((_, at)) => at.elapsed() < REMEMBER,
                });
                let fleet = self.fleet.get().cloned();
                let entry = flights.entry(key).or_insert_with(|| Entry {
                    started: Instant::now(),
                    flight: start(provider, session, fleet),
                    watched: false,
                });
                (entry.flight.clone(), entry.started)
            }
            Err(_) => (
                start(provider, session, self.fleet.get().cloned()),
                Instant::now(),
            ),
        }
    }

    /// Sessions with a refresh in flight or remembered.
    pub fn len(&self) -> usize {
        self.flights.lock().map(|f| f.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The judgement to give on `session` once its refresh answered `outcome`; `within` is
/// whether it is still less than `interval + max_stale` since its last verification.
fn conclude(session: &Session, outcome: Outcome, within: bool, deadline: SystemTime) -> Verdict {
    match outcome {
        Outcome::Refreshed(fresh) => Verdict::Refreshed(fresh),
        Outcome::Ended(why) => {
            tracing::info!(user = %session.sub, reason = %why, "session ended by the provider");
            Verdict::Refused(SessionRefusal::Ended(why))
        }
        Outcome::Unreachable(why) if within => {
            tracing::warn!(user = %session.sub, reason = %why, left = ?deadline.duration_since(SystemTime::now()).unwrap_or_default(), "provider unreachable; last verification still holds");
            Verdict::Stale { why }
        }
        Outcome::Unreachable(why) => Verdict::Refused(SessionRefusal::Unverifiable(format!(
            "{why} (last verified more than interval + max_stale ago)"
        ))),
    }
}

/// A refresh that a [`Reverifier::judge_now`] judgement stood on before its answer came.
pub struct Watch {
    flight: Flight,
    deadline: SystemTime,
    grace_end: Instant,
}

/// What ended a [`Watch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The provider re-verified the session: its fresh claims apply from the next judgement.
    Refreshed,
    /// The provider refused it: the session is over.
    Ended,
    /// No answer by the session's deadline (or its grace): it is unverifiable now.
    Unverifiable,
}

impl Watch {
    /// Returns when the judgement may have changed: the refresh answered, or, with no usable
    /// answer, the session's deadline (or the grace of [`STREAM_GRACE`]) passed.
    pub async fn changed(mut self) -> Change {
        let deadline = instant_of(self.deadline);
        let cutoff = deadline.max(self.grace_end);
        let change = {
            let answered = tokio::time::timeout_at(
                tokio::time::Instant::from_std(cutoff),
                self.flight.wait_for(Option::is_some),
            )
            .await;
            match &answered {
                Ok(Ok(done)) => match &**done {
                    Some((Outcome::Refreshed(_), _)) => Some(Change::Refreshed),
                    Some((Outcome::Ended(_), _)) => Some(Change::Ended),
                    _ => None,
                },
                _ => None,
            }
        };
        match change {
            Some(change) => change,
            None => {
                // Unreachable, or no answer by the cut-off: what was said last holds until
                // the deadline (which has passed if the cut-off has).
                tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
                Change::Unverifiable
            }
        }
    }
}

/// `at` on the monotonic clock (now, if it has passed).
fn instant_of(at: SystemTime) -> Instant {
    Instant::now()
        + at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
}

/// `interval + max_stale` after the session's last verification.
fn deadline(session: &Session, settings: Settings) -> SystemTime {
    UNIX_EPOCH
        + Duration::from_secs(session.verified_at.max(0) as u64)
        + settings.interval
        + settings.max_stale
}

/// Refreshes `session` in a task of its own, so that it runs to its end (bounded by the
/// provider client's timeouts) whoever stops waiting for it. With `fleet`, the refresh is
/// claimed first: a session another replica refreshes takes that replica's outcome.
fn start(
    provider: &Arc<Provider>,
    session: &Session,
    fleet: Option<Arc<dyn Coordinator>>,
) -> Flight {
    let (done, flight) = watch::channel(None);
    let provider = provider.clone();
    let session = session.clone();
    tokio::spawn(async move {
        let claim = match &fleet {
            Some(fleet) => fleet.claim(&session).await,
            None => Claim::Unknown,
        };
        let mine = matches!(claim, Claim::Mine);
        let outcome = match claim {
            Claim::Done(Ok(fresh)) => Outcome::Refreshed(fresh),
            Claim::Done(Err(why)) => Outcome::Ended(why),
            Claim::Mine | Claim::Unknown => refresh(&provider, &session).await,
        };
        if let (true, Some(fleet)) = (mine, &fleet) {
            match &outcome {
                Outcome::Refreshed(fresh) => fleet.publish(&session, Ok((**fresh).clone())).await,
                Outcome::Ended(why) => fleet.publish(&session, Err(why.clone())).await,
                Outcome::Unreachable(_) => fleet.release(&session).await,
            }
        }
        let _ = done.send(Some((outcome, Instant::now())));
    });
    flight
}

async fn refresh(provider: &Provider, session: &Session) -> Outcome {
    match provider.refresh(session, super::now()).await {
        Ok(fresh) => Outcome::Refreshed(Box::new(fresh)),
        Err(LoginError::Unreachable(e)) => Outcome::Unreachable(e),
        Err(LoginError::NotReady) => {
            Outcome::Unreachable("identity provider not discovered".into())
        }
        Err(e @ LoginError::Down { .. }) => Outcome::Unreachable(e.to_string()),
        Err(e) => Outcome::Ended(e.to_string()),
    }
}
