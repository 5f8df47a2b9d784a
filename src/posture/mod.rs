//! Device posture and risk: what the inventory says about the device, and a risk level made
//! from signals, which routes map to actions (allow, read-only, step-up, deny).

pub mod geo;
pub mod inventory;

use inventory::Device;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

/// Risk levels, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Low,
    Medium,
    High,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Low => "low",
            Level::Medium => "medium",
            Level::High => "high",
        }
    }
}

/// What a route does at a risk level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    /// Only GET, HEAD and OPTIONS get through.
    ReadOnly,
    /// Send the person back to the provider to authenticate again, with MFA.
    StepUp,
    Deny,
}

impl Action {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "allow" => Action::Allow,
            "read_only" => Action::ReadOnly,
            "step_up" => Action::StepUp,
            "deny" => Action::Deny,
            _ => return None,
        })
    }
}

/// A route's `risk = { low = ..., medium = ..., high = ... }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RiskActions {
    pub low: Action,
    pub medium: Action,
    pub high: Action,
}

impl Default for RiskActions {
    fn default() -> Self {
        Self {
            low: Action::Allow,
            medium: Action::ReadOnly,
            high: Action::Deny,
        }
    }
}

impl RiskActions {
    pub fn for_level(&self, level: Level) -> Action {
        match level {
            Level::Low => self.low,
            Level::Medium => self.medium,
            Level::High => self.high,
        }
    }
}

/// `[risk]`, compiled: weights of each signal and the thresholds of the levels.
#[derive(Debug, Clone)]
pub struct RiskSettings {
    pub device_unknown: u32,
    pub device_noncompliant: u32,
    pub stale_check_in: u32,
    pub untrusted_network: u32,
    pub idp_risk_medium: u32,
    pub idp_risk_high: u32,
    /// Per denial in the window, at most three counted.
    pub recent_denial: u32,
    pub first_seen_device: u32,
    pub medium: u32,
    pub high: u32,
    pub trusted_networks: Vec<IpNet>,
    /// A check-in older than this is a signal.
    pub check_in_max_age: Duration,
    pub denial_window: Duration,
    /// A `step_up` action is satisfied by a multi-factor sign-in at most this old.
    pub step_up_max_age: Duration,
    /// Countries (ISO codes, upper case) sources may be in, by `geoip`; empty: not a signal.
    pub allowed_countries: Vec<String>,
    pub geoip: Option<std::sync::Arc<geo::GeoIp>>,
    pub country_not_allowed: u32,
    pub country_unknown: u32,
}

/// The risk of one request, with the signals behind it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Assessment {
    pub level: Level,
    pub score: u32,
    pub signals: Vec<String>,
}

impl Assessment {
    pub fn low() -> Self {
        Self {
            level: Level::Low,
            score: 0,
            signals: Vec::new(),
        }
    }
}

/// What the risk engine looks at.
pub struct RiskFacts<'a> {
    /// Unix seconds.
    pub now: i64,
    /// The inventory record; `None` when unknown (or the inventory is stale).
    pub device: Option<&'a Device>,
    pub inventory: bool,
    pub client_ip: IpAddr,
    /// The provider's risk claim.
    pub idp_risk: Option<&'a str>,
    pub recent_denials: u32,
    pub first_seen_device: bool,
    /// The source's country, when a database is configured and knows it.
    pub country: Option<&'a str>,
    /// Risk signals `[detectors]` raised on the subject: (detector, weight).
    pub detectors: &'a [(&'static str, u32)],
}

/// Turns signals into a score and a level. Pure.
pub fn assess(s: &RiskSettings, f: &RiskFacts<'_>) -> Assessment {
    let mut score = 0;
    let mut signals = Vec::new();
    let mut add = |weight: u32, signal: String| {
        if weight > 0 {
            score += weight;
            signals.push(signal);
        }
    };
    if f.inventory {
        match f.device {
            None => add(s.device_unknown, "device unknown to the inventory".into()),
            Some(d) => {
                if !d.compliant {
                    add(s.device_noncompliant, "device not compliant".into());
                }
                let age = d.check_in_age(f.now);
                if age.is_none_or(|a| a > s.check_in_max_age.as_secs()) {
                    add(s.stale_check_in, "device check-in stale".into());
                }
            }
        }
    }
    if !s.trusted_networks.is_empty()
        && !s.trusted_networks.iter().any(|n| n.contains(&f.client_ip))
    {
        add(
            s.untrusted_network,
            format!("source {} outside trusted networks", f.client_ip),
        );
    }
    match f.idp_risk {
        Some("high") => add(s.idp_risk_high, "identity provider says risk high".into()),
        Some("medium") => add(
            s.idp_risk_medium,
            "identity provider says risk medium".into(),
        ),
        _ => {}
    }
    if f.recent_denials > 0 {
        add(
            s.recent_denial * f.recent_denials.min(3),
            format!("{} recent denials", f.recent_denials),
        );
    }
    if f.first_seen_device {
        add(
            s.first_seen_device,
            "first time this user uses this device".into(),
        );
    }
    if s.geoip.is_some() && !s.allowed_countries.is_empty() {
        match f.country {
            Some(c) if s.allowed_countries.iter().any(|a| a == c) => {}
            Some(c) => add(
                s.country_not_allowed,
                format!("source country {c} not allowed"),
            ),
            None => add(s.country_unknown, "source country unknown".into()),
        }
    }
    for (detector, weight) in f.detectors {
        add(*weight, format!("detector {detector} fired"));
    }
    let level = if score >= s.high {
        Level::High
    } else if score >= s.medium {
        Level::Medium
    } else {
        Level::Low
    };
    Assessment {
        level,
        score,
        signals,
    }
}

/// Short-term memory of the risk engine: recent denials per user and device, and the devices
/// each user has been seen on. In memory, per replica.
#[derive(Default)]
pub struct Memory {
    denials: Mutex<HashMap<String, VecDeque<i64>>>,
    seen: Mutex<HashMap<String, HashSet<String>>>,
}

const SEEN_PER_USER: usize = 64;
const TRACKED: usize = 100_000;

impl Memory {
    pub fn record_denial(&self, who: &str, now: i64) {
        if let Ok(mut d) = self.denials.lock() {
            if d.len() >= TRACKED && !d.contains_key(who) {
                d.clear();
            }
            let q = d.entry(who.to_owned()).or_default();
            q.push_back(now);
            while q.len() > 16 {
                q.pop_front();
            }
        }
    }

    pub fn recent_denials(&self, who: &str, now: i64, window: Duration) -> u32 {
        self.denials
            .lock()
            .ok()
            .and_then(|d| {
                d.get(who).map(|q| {
                    q.iter()
                        .filter(|t| now - **t <= window.as_secs() as i64)
                        .count() as u32
                })
            })
            .unwrap_or(0)
    }

    /// True when `user` has not been seen on `device` before; with `remember`, notes it.
    pub fn first_seen(&self, user: &str, device: &str, remember: bool) -> bool {
        let Ok(mut seen) = self.seen.lock() else {
            return false;
        };
        if !remember {
            return !seen.get(user).is_some_and(|d| d.contains(device));
        }
        if seen.len() >= TRACKED && !seen.contains_key(user) {
            seen.clear();
        }
        let devices = seen.entry(user.to_owned()).or_default();
        if devices.contains(device) {
            return false;
        }
        if devices.len() >= SEEN_PER_USER {
            devices.clear();
        }
        devices.insert(device.to_owned());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> RiskSettings {
        RiskSettings {
            device_unknown: 40,
            device_noncompliant: 40,
            stale_check_in: 20,
            untrusted_network: 20,
            idp_risk_medium: 30,
            idp_risk_high: 60,
            recent_denial: 10,
            first_seen_device: 15,
            medium: 30,
            high: 60,
            trusted_networks: vec!["127.0.0.0/8".parse().unwrap()],
            check_in_max_age: Duration::from_secs(86400),
            denial_window: Duration::from_secs(300),
            step_up_max_age: Duration::from_secs(300),
            allowed_countries: Vec::new(),
            geoip: None,
            country_not_allowed: 40,
            country_unknown: 0,
        }
    }

    fn device(compliant: bool) -> Device {
        Device {
            fingerprint: None,
            serial: None,
            subject: None,
            compliant,
            managed: true,
            owner: None,
            os: None,
            last_check_in: Some(
                humantime::format_rfc3339(std::time::SystemTime::now()).to_string(),
            ),
        }
    }

    #[test]
    fn table() {
        let s = settings();
        let good = device(true);
        let bad = device(false);
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let remote: IpAddr = "192.0.2.7".parse().unwrap();
        // (device, source, provider risk, recent denials, first seen, expected level)
        type Case<'a> = (
            Option<&'a Device>,
            IpAddr,
            Option<&'a str>,
            u32,
            bool,
            Level,
        );
        let cases: &[Case<'_>] = &[
            (Some(&good), local, None, 0, false, Level::Low),
            (Some(&good), remote, None, 0, false, Level::Low),
            (Some(&good), remote, None, 1, false, Level::Medium),
            (Some(&good), local, Some("medium"), 0, false, Level::Medium),
            (Some(&good), local, Some("high"), 0, false, Level::High),
            (Some(&bad), local, None, 0, false, Level::Medium),
            (Some(&bad), remote, None, 0, false, Level::High),
            (None, local, None, 0, false, Level::Medium),
            (Some(&good), local, None, 0, true, Level::Low),
            (Some(&good), remote, None, 0, true, Level::Medium),
        ];
        for (i, (device, ip, idp, denials, first, want)) in cases.iter().enumerate() {
            let a = assess(
                &s,
                &RiskFacts {
                    now: crate::identity::now(),
                    device: *device,
                    inventory: true,
                    client_ip: *ip,
                    idp_risk: *idp,
                    recent_denials: *denials,
                    first_seen_device: *first,
                    country: None,
                    detectors: &[],
                },
            );
            assert_eq!(a.level, *want, "case {i}: {a:?}");
        }
    }

    #[test]
    fn memory() {
        let m = Memory::default();
        assert!(m.first_seen("alice", "d1", false));
        assert!(m.first_seen("alice", "d1", true));
        assert!(!m.first_seen("alice", "d1", true));
        assert!(!m.first_seen("alice", "d1", false));
        m.record_denial("alice", 100);
        m.record_denial("alice", 390);
        assert_eq!(m.recent_denials("alice", 400, Duration::from_secs(60)), 1);
        assert_eq!(m.recent_denials("bob", 400, Duration::from_secs(60)), 0);
    }
}
