//! The detectors of `[detectors]`: what they count, per whom, and what they do when a count
//! goes over its threshold.
//!
//! The settings ([`Settings`]) are compiled into the snapshot; the counts ([`Tables`]) live
//! for the process, so a reload changes thresholds and actions without forgetting what was
//! counted. A detector fires once per crossing: the event that takes a key's count over the
//! threshold fires, later events while it stays over do not. Firing is counted
//! (`vigil_detector_fired_total`), logged with the counts, announced as a `detector_fired`
//! alert, and acted on: a block of the key's subject (announced as a `block` alert, and open
//! connections re-checked at once), or a risk signal of `weight` on the subject for a while.

use super::blocks::{Block, Blocks};
use super::window::{Bounded, Counts, Crossing, Distinct};
use crate::access::{Subject, Who};
use crate::alerts::{Alerts, Event, Kind};
use crate::connection::Registry;
use crate::metrics::Metrics;
use crate::metrics::detectors::Fired;
use std::sync::Mutex;
use std::time::Duration;

/// Whom a detector counts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Per {
    /// The person signed in (their subject); a request without one is not counted so.
    User,
    /// The client certificate (its fingerprint).
    Device,
    /// The source address.
    Address,
}

impl Per {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "user" => Per::User,
            "device" => Per::Device,
            "address" => Per::Address,
            _ => return None,
        })
    }

    /// The subject `who` is counted as, if it has one of this kind.
    fn subject(self, who: &Who<'_>) -> Option<Subject> {
        match self {
            Per::User => who.user.map(|u| Subject::User(u.to_owned())),
            Per::Device => (!who.device.is_empty()).then(|| Subject::Device(who.device.to_owned())),
            Per::Address => who.address.map(|a| Subject::Address(a.to_canonical())),
        }
    }
}

/// What a detector does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Blocks the subject for `duration`.
    Block { duration: Duration },
    /// Adds `weight` to the subject's risk score for `duration`.
    RaiseRisk { weight: u32, duration: Duration },
}

impl Action {
    /// As metrics and alerts name it (one of `metrics::labels::DETECTOR_ACTIONS`).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Block { .. } => "block",
            Action::RaiseRisk { .. } => "raise_risk",
        }
    }
}

/// One detector, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detector {
    /// One of `metrics::labels::DETECTORS`.
    pub name: &'static str,
    /// The detector fires when a count goes over this.
    pub threshold: u32,
    pub window: Duration,
    pub per: Vec<Per>,
    pub action: Action,
}

/// `[detectors]`, compiled: the detectors that run (`None`: that one does not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Keys each detector's table holds at most.
    pub table_size: usize,
    pub denials: Option<Detector>,
    pub failed_logins: Option<Detector>,
    pub addresses: Option<Detector>,
    pub countries: Option<Detector>,
    pub revoked: Option<Detector>,
}

/// What a detector was told of.
#[derive(Debug, Clone, Copy)]
pub enum Seen<'a> {
    /// A request denied by policy (blocked ones included).
    Denial,
    /// A sign-in that failed at the callback (a bad state, code or token).
    FailedLogin,
    /// A request refused for a revoked session, user, device or token subject.
    Revoked,
    /// A request by an identified client, from its address (and country, when known).
    Request { country: Option<&'a str> },
}

/// A risk signal a detector put on a subject.
#[derive(Debug, Clone)]
struct Raised {
    detector: &'static str,
    weight: u32,
    until: i64,
}

/// The detectors' counts, for the life of the process.
pub struct Tables {
    denials: Counts<Subject>,
    failed_logins: Counts<Subject>,
    revoked: Counts<Subject>,
    addresses: Distinct<Subject>,
    countries: Distinct<Subject>,
    /// Risk signals in force; bounded like the tables.
    raised: Mutex<Bounded<Subject, Vec<Raised>>>,
}

impl Tables {
    pub fn new(metrics: &Metrics) -> Self {
        let evictions = |name| metrics.detectors.evictions_of(name);
        Self {
            denials: Counts::new(evictions("denials")),
            failed_logins: Counts::new(evictions("failed_logins")),
            revoked: Counts::new(evictions("revoked")),
            addresses: Distinct::new(evictions("addresses")),
            countries: Distinct::new(evictions("countries")),
            raised: Mutex::new(Bounded::default()),
        }
    }

    /// The risk signals detectors put on `who` in force at `now`: (detector, weight).
    pub fn raised(&self, who: &Who<'_>, now: i64) -> Vec<(&'static str, u32)> {
        let Ok(raised) = self.raised.lock() else {
            return Vec::new();
        };
        if raised.is_empty() {
            return Vec::new();
        }
        let mut out: Vec<(&'static str, u32)> = Vec::new();
        for per in [Per::User, Per::Device, Per::Address] {
            let Some(subject) = per.subject(who) else {
                continue;
            };
            for r in raised.get(&subject).into_iter().flatten() {
                if r.until > now && !out.iter().any(|(d, _)| *d == r.detector) {
                    out.push((r.detector, r.weight));
                }
            }
        }
        out
    }

    fn raise(&self, subject: &Subject, raised: Raised, now: i64, cap: usize) {
        let mut table = self.raised.lock().unwrap_or_else(|e| e.into_inner());
        let (signals, _) = table.entry(subject, cap, Vec::new);
        signals.retain(|r| r.until > now && r.detector != raised.detector);
        signals.push(raised);
    }
}

/// What firing acts on: the process's tables, blocks, alerts, metrics and open connections.
#[derive(Clone, Copy)]
pub struct Acting<'a> {
    pub tables: &'a Tables,
    pub blocks: &'a Blocks,
    pub alerts: &'a Alerts,
    pub metrics: &'a Metrics,
    pub live: &'a Registry,
    /// The other replicas: blocks are announced to them, and counts made across them.
    pub fleet: &'a crate::fleet::Fleet,
}

impl Settings {
    /// Tells the detectors that `seen` happened to `who` at `now` (Unix seconds). True when a
    /// detector fired: the caller may want to assess the request again.
    pub fn observe(&self, acting: &Acting<'_>, seen: Seen<'_>, who: &Who<'_>, now: i64) -> bool {
        let t = acting.tables;
        match seen {
            Seen::Denial => self.count(acting, self.denials.as_ref(), &t.denials, who, now),
            Seen::FailedLogin => self.count(
                acting,
                self.failed_logins.as_ref(),
                &t.failed_logins,
                who,
                now,
            ),
            Seen::Revoked => self.count(acting, self.revoked.as_ref(), &t.revoked, who, now),
            Seen::Request { country } => {
                let address = who.address.map(|a| a.to_canonical().to_string());
                let by_address = self.distinct(
                    acting,
                    self.addresses.as_ref(),
                    &t.addresses,
                    who,
                    address.as_deref(),
                    now,
                );
                let by_country = self.distinct(
                    acting,
                    self.countries.as_ref(),
                    &t.countries,
                    who,
                    country,
                    now,
                );
                by_address || by_country
            }
        }
    }

    fn count(
        &self,
        acting: &Acting<'_>,
        detector: Option<&Detector>,
        table: &Counts<Subject>,
        who: &Who<'_>,
        now: i64,
    ) -> bool {
        let Some(d) = detector else {
            return false;
        };
        let mut fired = false;
        for per in &d.per {
            let Some(subject) = per.subject(who) else {
                continue;
            };
            let crossing = table.add(&subject, now, d.window, d.threshold, self.table_size);
            if counted_by_fleet(acting, d, &subject, None, now) {
                continue;
            }
            if crossing.crossed {
                fire(acting, d, subject, crossing, now, self.table_size);
                fired = true;
            }
        }
        fired
    }

    /// Distinct values per identity: the person signed in, else the client certificate.
    fn distinct(
        &self,
        acting: &Acting<'_>,
        detector: Option<&Detector>,
        table: &Distinct<Subject>,
        who: &Who<'_>,
        value: Option<&str>,
        now: i64,
    ) -> bool {
        let (Some(d), Some(value)) = (detector, value) else {
            return false;
        };
        let Some(subject) = Per::User.subject(who).or_else(|| Per::Device.subject(who)) else {
            return false;
        };
        let crossing = table.add(&subject, value, now, d.window, d.threshold, self.table_size);
        if counted_by_fleet(acting, d, &subject, Some(value), now) {
            return false;
        }
        if crossing.crossed {
            fire(acting, d, subject, crossing, now, self.table_size);
        }
        crossing.crossed
    }
}

impl Settings {
    fn named(&self, name: &str) -> Option<&Detector> {
        [
            &self.denials,
            &self.failed_logins,
            &self.revoked,
            &self.addresses,
            &self.countries,
        ]
        .into_iter()
        .flatten()
        .find(|d| d.name == name)
    }

    /// Fires detector `name` for `subject`, whose count across the fleet is `total`: this
    /// replica was the one to claim the crossing.
    pub fn fire_for_fleet(
        &self,
        acting: &Acting<'_>,
        name: &str,
        subject: Subject,
        total: u32,
        now: i64,
    ) {
        if let Some(d) = self.named(name) {
            let crossing = Crossing {
                count: total,
                crossed: true,
            };
            fire(acting, d, subject, crossing, now, self.table_size);
        }
    }
}

/// With a shared state, counts the event across the fleet too; true when the fleet's count
/// decides (Redis answers and the copy is current), so this replica's own count does not
/// fire. While Redis is lost, each replica fires on its own count.
fn counted_by_fleet(
    acting: &Acting<'_>,
    d: &Detector,
    subject: &Subject,
    member: Option<&str>,
    now: i64,
) -> bool {
    if !acting.fleet.shared() {
        return false;
    }
    let key = subject.key();
    acting.fleet.count(crate::fleet::Count {
        key: format!("{}|{key}", d.name),
        member: member.map(str::to_owned),
        window: d.window,
        at: now,
        fire: Some(crate::fleet::Fire {
            detector: d.name,
            subject: serde_json::to_string(subject).unwrap_or_default(),
            key,
            threshold: d.threshold,
        }),
    });
    acting.fleet.linked()
}

/// What a detector counts, as its messages say it.
fn counted(name: &str) -> &'static str {
    match name {
        "denials" => "denials",
        "failed_logins" => "failed sign-ins",
        "addresses" => "distinct source addresses",
        "countries" => "distinct countries",
        _ => "refusals for a revoked credential",
    }
}

/// Detector `d` fired for `subject`: counted, logged, announced and acted on.
fn fire(acting: &Acting<'_>, d: &Detector, subject: Subject, c: Crossing, now: i64, cap: usize) {
    let action = d.action.as_str();
    acting
        .metrics
        .detectors
        .fired
        .get_or_create(&Fired {
            detector: d.name,
            action,
        })
        .inc();
    let window = humantime::format_duration(d.window).to_string();
    let what = format!("{} {} in {window}", c.count, counted(d.name));
    tracing::warn!(
        detector = d.name,
        subject = %subject.key(),
        count = c.count,
        threshold = d.threshold,
        window = %window,
        action,
        "detector fired: {what}"
    );
    acting.alerts.send(Event {
        kind: Kind::DetectorFired,
        subject: Some(subject.key()),
        route: None,
        detail: serde_json::json!({
            "detector": d.name,
            "count": c.count,
            "threshold": d.threshold,
            "window": d.window.as_secs(),
            "action": action,
        }),
    });
    match d.action {
        Action::Block { duration } => {
            let block = Block {
                subject,
                reason: format!("detector {}: {what}", d.name),
                by: d.name.to_owned(),
                since: now,
                until: now.saturating_add(duration.as_secs() as i64),
            };
            blocked(acting, &block);
        }
        Action::RaiseRisk { weight, duration } => {
            let raised = Raised {
                detector: d.name,
                weight,
                until: now.saturating_add(duration.as_secs() as i64),
            };
            acting.tables.raise(&subject, raised, now, cap);
        }
    }
}

/// Puts `block` in force: announced as a `block` alert, counted in `vigil_blocks_active`,
/// and open connections re-checked at once so what the subject keeps open is cut. True when
/// the subject was not blocked before.
pub fn blocked(acting: &Acting<'_>, block: &Block) -> bool {
    let new = acting.blocks.block(block.clone());
    acting.fleet.announce(super::blocks::entry(block));
    tracing::warn!(
        subject = %block.subject.key(),
        by = %block.by,
        until = block.until,
        reason = %block.reason,
        new,
        "subject blocked"
    );
    acting.alerts.send(Event {
        kind: Kind::Block,
        subject: Some(block.subject.key()),
        route: None,
        detail: serde_json::json!({
            "by": block.by,
            "reason": block.reason,
            "since": block.since,
            "until": block.until,
        }),
    });
    observe_blocks(acting);
    acting.live.recheck_now();
    new
}

/// A block ended: lifted by `by` (an operator), or expired (`by` is `expired`). Announced as
/// a `block_lifted` alert.
pub fn lifted(acting: &Acting<'_>, block: &Block, by: &str) {
    tracing::info!(subject = %block.subject.key(), by, "block lifted");
    acting.alerts.send(Event {
        kind: Kind::BlockLifted,
        subject: Some(block.subject.key()),
        route: None,
        detail: serde_json::json!({
            "by": by,
            "blocked_by": block.by,
            "reason": block.reason,
            "since": block.since,
            "until": block.until,
        }),
    });
    observe_blocks(acting);
}

/// `vigil_blocks_active`, from the blocks kept (those that ended are dropped by [`expire`]
/// within a second).
pub fn observe_blocks(acting: &Acting<'_>) {
    let active = acting.blocks.len();
    acting.metrics.detectors.blocks_active.set(active as i64);
}

/// Ends the blocks whose time ran out by `now`, announcing each; the number ended.
pub fn expire(acting: &Acting<'_>, now: i64) -> usize {
    let ended = acting.blocks.expire(now);
    for block in &ended {
        lifted(acting, block, "expired");
    }
    observe_blocks(acting);
    ended.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector(name: &'static str, per: Vec<Per>, action: Action) -> Detector {
        Detector {
            name,
            threshold: 2,
            window: Duration::from_secs(3600),
            per,
            action,
        }
    }

    fn who<'a>(user: Option<&'a str>, device: &'a str, address: &str) -> Who<'a> {
        Who {
            user,
            email: None,
            groups: &[],
            spiffe: None,
            device,
            address: address.parse().ok(),
        }
    }

    #[test]
    fn each_key_of_per_fires_once_and_acts() {
        let metrics = Metrics::new();
        let (tables, blocks) = (Tables::new(&metrics), Blocks::default());
        let alerts = Alerts::new("test", metrics.clone(), None);
        let live = Registry::default();
        let fleet = crate::fleet::Fleet::new(None, "test", &metrics);
        let acting = Acting {
            tables: &tables,
            blocks: &blocks,
            alerts: &alerts,
            metrics: &metrics,
            live: &live,
            fleet: &fleet,
        };
        let raise = Action::RaiseRisk {
            weight: 25,
            duration: Duration::from_secs(60),
        };
        let block = Action::Block {
            duration: Duration::from_secs(60),
        };
        let settings = Settings {
            table_size: 1000,
            denials: Some(detector("denials", vec![Per::User, Per::Address], raise)),
            failed_logins: None,
            addresses: None,
            countries: None,
            revoked: Some(detector("revoked", vec![Per::Device], block)),
        };
        let alice = who(Some("alice"), "d1", "10.0.0.1");
        let fired: Vec<bool> = (0..5)
            .map(|_| settings.observe(&acting, Seen::Denial, &alice, 100))
            .collect();
        assert_eq!(fired, [false, false, true, false, false]);
        // The user and the address both crossed: one signal per detector.
        assert_eq!(tables.raised(&alice, 100), [("denials", 25)]);
        assert_eq!(tables.raised(&alice, 160), []);
        let bob = who(Some("bob"), "d2", "10.0.0.1");
        assert_eq!(tables.raised(&bob, 100), [("denials", 25)], "same address");
        assert!(blocks.is_empty());
        // Detectors that do not run count nothing.
        assert!(!settings.observe(&acting, Seen::FailedLogin, &alice, 100));
        for _ in 0..3 {
            settings.observe(&acting, Seen::Revoked, &bob, 100);
        }
        let found = blocks.find(&bob, 100).expect("bob's device blocked");
        assert_eq!(found.subject, Subject::Device("d2".into()));
        assert_eq!(found.by, "revoked");
        assert!(blocks.find(&alice, 100).is_none());
        assert_eq!(metrics.detectors.blocks_active.get(), 1);
        assert_eq!(expire(&acting, 160), 1);
        assert_eq!(metrics.detectors.blocks_active.get(), 0);
    }
}
