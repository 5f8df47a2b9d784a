//! `[detectors]`: each detector's threshold, window, whom it counts for and what it does when
//! it fires, with the defaults of each, compiled into [`Settings`]. The counts themselves live
//! in the process (`state::Shared::detectors`), so a reload keeps them.

use super::compiler::Compiler;
use super::schema::{DetectorSection, DetectorsSection};
use crate::anomaly::detect::{Action, Detector, Per, Settings};
use crate::posture::RiskSettings;
use std::sync::Arc;
use std::time::Duration;

/// The defaults of one detector.
struct Defaults {
    name: &'static str,
    threshold: u32,
    window: Duration,
    per: &'static [Per],
    /// Whether `per` may be set (distinct-value detectors count per person, else device).
    per_settable: bool,
}

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

const DENIALS: Defaults = Defaults {
    name: "denials",
    threshold: 10,
    window: HOUR,
    per: &[Per::User, Per::Device, Per::Address],
    per_settable: true,
};
const FAILED_LOGINS: Defaults = Defaults {
    name: "failed_logins",
    threshold: 5,
    window: Duration::from_secs(15 * 60),
    per: &[Per::Address, Per::Device],
    per_settable: true,
};
const ADDRESSES: Defaults = Defaults {
    name: "addresses",
    threshold: 5,
    window: HOUR,
    per: &[Per::User],
    per_settable: false,
};
const COUNTRIES: Defaults = Defaults {
    name: "countries",
    threshold: 1,
    window: HOUR,
    per: &[Per::User],
    per_settable: false,
};
const REVOKED: Defaults = Defaults {
    name: "revoked",
    threshold: 3,
    window: HOUR,
    per: &[Per::User, Per::Device, Per::Address],
    per_settable: true,
};

/// Distinct values kept per key are `threshold + 1`: the threshold of a distinct-value
/// detector is bounded so that memory per key stays small.
const MAX_DISTINCT_THRESHOLD: u32 = 64;
/// The smallest table worth having.
const MIN_TABLE_SIZE: usize = 100;
const BLOCK_FOR: Duration = Duration::from_secs(15 * MINUTE.as_secs());
const WEIGHT: u32 = 30;
const RAISE_FOR: Duration = HOUR;

impl Compiler<'_> {
    /// The detectors, or `None` without `[detectors]`. `risk` is `[risk]` compiled: a risk
    /// signal needs it, and the country detector needs its GeoIP database.
    pub(super) fn detectors(
        &mut self,
        section: Option<&DetectorsSection>,
        risk: Option<&RiskSettings>,
    ) -> Option<Arc<Settings>> {
        let s = section?;
        if s.table_size < MIN_TABLE_SIZE {
            self.problem(
                "detectors.table_size",
                format!("must be at least {MIN_TABLE_SIZE}"),
            );
        }
        let mut detector = |d: &Defaults, section: &Option<DetectorSection>| {
            section.as_ref().and_then(|t| self.detector(d, t, risk))
        };
        let settings = Settings {
            table_size: s.table_size.max(MIN_TABLE_SIZE),
            denials: detector(&DENIALS, &s.denials),
            failed_logins: detector(&FAILED_LOGINS, &s.failed_logins),
            addresses: detector(&ADDRESSES, &s.addresses),
            countries: detector(&COUNTRIES, &s.countries),
            revoked: detector(&REVOKED, &s.revoked),
        };
        if s.countries.is_some() && risk.is_none_or(|r| r.geoip.is_none()) {
            self.problem_help(
                "detectors.countries",
                "the country detector needs [risk] geoip_database",
                "name a MaxMind-format country database in [risk] geoip_database, or remove [detectors.countries]",
            );
        }
        Some(Arc::new(settings))
    }

    fn detector(
        &mut self,
        d: &Defaults,
        t: &DetectorSection,
        risk: Option<&RiskSettings>,
    ) -> Option<Detector> {
        let at = |key: &str| format!("detectors.{}.{key}", d.name);
        let before = self.reported();
        let threshold = t.threshold.unwrap_or(d.threshold);
        if threshold == 0 {
            self.problem(&at("threshold"), "must be at least 1");
        }
        if !d.per_settable && threshold > MAX_DISTINCT_THRESHOLD {
            self.problem(
                &at("threshold"),
                format!("must be at most {MAX_DISTINCT_THRESHOLD}"),
            );
        }
        let window = t.window.map_or(d.window, |w| w.0);
        let block_for = t.block_for.map_or(BLOCK_FOR, |w| w.0);
        let raise_for = t.raise_for.map_or(RAISE_FOR, |w| w.0);
        self.longer_than_zero(&[
            (&at("window"), window),
            (&at("block_for"), block_for),
            (&at("raise_for"), raise_for),
        ]);
        let per = self.per(d, t);
        let action = match t.action.as_deref().unwrap_or("block") {
            "block" => {
                for (key, set) in [
                    ("weight", t.weight.is_some()),
                    ("raise_for", t.raise_for.is_some()),
                ] {
                    if set {
                        self.warning(&at(key), "has no effect with action = \"block\"");
                    }
                }
                Action::Block {
                    duration: block_for,
                }
            }
            "raise_risk" => {
                if t.block_for.is_some() {
                    self.warning(
                        &at("block_for"),
                        "has no effect with action = \"raise_risk\"",
                    );
                }
                if risk.is_none() {
                    self.problem_help(
                        &at("action"),
                        "raise_risk needs [risk]: without it there is no risk level to raise",
                        "configure [risk] (and routes' risk actions), or use action = \"block\"",
                    );
                }
                Action::RaiseRisk {
                    weight: t.weight.unwrap_or(WEIGHT),
                    duration: raise_for,
                }
            }
            other => {
                self.problem_help(
                    &at("action"),
                    format!("unknown action {other:?}"),
                    "write \"block\" or \"raise_risk\"",
                );
                return None;
            }
        };
        (self.reported() == before).then_some(Detector {
            name: d.name,
            threshold,
            window,
            per,
            action,
        })
    }

    fn per(&mut self, d: &Defaults, t: &DetectorSection) -> Vec<Per> {
        let Some(written) = &t.per else {
            return d.per.to_vec();
        };
        let key = format!("detectors.{}.per", d.name);
        if !d.per_settable {
            self.problem(
                &key,
                format!(
                    "the {} detector counts per person (else per client certificate): remove per",
                    d.name
                ),
            );
            return d.per.to_vec();
        }
        if written.is_empty() {
            self.problem(
                &key,
                "name at least one of \"user\", \"device\", \"address\"",
            );
        }
        let mut per = Vec::new();
        for (i, text) in written.iter().enumerate() {
            match Per::parse(text) {
                Some(p) if !per.contains(&p) => per.push(p),
                Some(_) => self.problem(&format!("{key}.{i}"), format!("{text:?} is named twice")),
                None => self.problem_help(
                    &format!("{key}.{i}"),
                    format!("unknown {text:?}"),
                    "write \"user\", \"device\" or \"address\"",
                ),
            }
        }
        per
    }
}
