//! What every connection shares for the life of the process: the configuration in force and
//! the run-time state beside it (revocations, re-verifications, open connections, the risk
//! engine's memory, the decision log and metrics).

use crate::config::Snapshot;
use crate::connection::Registry;
use crate::decision_log::DecisionLog;
use crate::metrics::Metrics;
use arc_swap::ArcSwap;

pub mod changes;
pub use changes::Change;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// State shared by every connection for the life of the process.
pub struct Shared {
    /// The configuration in force; swapped whole on reload.
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Arc<Metrics>,
    pub decisions: DecisionLog,
    /// Where admin actions are written: the decision log itself unless `[log] admin_actions`
    /// names another destination.
    pub admin_actions: DecisionLog,
    /// Random per process, prefixes request ids.
    pub instance_id: String,
    pub no_route_label: Arc<str>,
    /// Session re-verifications in flight.
    pub reverifier: crate::identity::verify::Reverifier,
    /// Open connections, for the live verifier.
    pub live: Arc<Registry>,
    /// Sessions, users and devices revoked by operators or the provider.
    pub revocations: crate::revocation::Revocations,
    /// The risk engine's memory: recent denials, devices seen per user.
    pub posture: crate::posture::Memory,
    /// Just-in-time grants and access requests.
    pub access: crate::access::Access,
    /// Subjects blocked by detectors or operators.
    pub blocks: crate::anomaly::blocks::Blocks,
    /// The detectors' counts; their settings are in the snapshot.
    pub detectors: crate::anomaly::detect::Tables,
    /// Alerts for operators: logged, and queued for `[alerts] webhook`.
    pub alerts: Arc<crate::alerts::Alerts>,
    /// Where the state above is shared with the other replicas (`[state]`).
    pub fleet: crate::fleet::Fleet,
    next_connection: AtomicU64,
}

impl Shared {
    pub fn new(
        snapshot: Snapshot,
        metrics: Arc<Metrics>,
        decisions: DecisionLog,
        admin_actions: DecisionLog,
    ) -> Arc<Self> {
        let mut random = [0u8; 6];
        let _ = aws_lc_rs::rand::fill(&mut random);
        metrics.config.generation.set(snapshot.generation as i64);
        let no_route_label: Arc<str> = Arc::from("(none)");
        metrics.precreate_routes(snapshot.routes.iter().map(|r| &r.label));
        snapshot.attach_upstreams(&metrics.upstreams);
        metrics.policies.precreate(snapshot.routes.policy_series());
        metrics.precreate_no_route(&no_route_label);
        let instance_id = crate::hex::encode(&random);
        let alerts =
            crate::alerts::Alerts::new(&instance_id, metrics.clone(), snapshot.alerts.clone());
        let detectors = crate::anomaly::detect::Tables::new(&metrics);
        let fleet = crate::fleet::Fleet::new(snapshot.state.as_deref(), &instance_id, &metrics);
        let shared = Arc::new(Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            decisions,
            admin_actions,
            instance_id,
            no_route_label,
            reverifier: Default::default(),
            live: Default::default(),
            revocations: Default::default(),
            posture: Default::default(),
            access: Default::default(),
            blocks: Default::default(),
            detectors,
            alerts: Arc::new(alerts),
            fleet,
            next_connection: AtomicU64::new(1),
        });
        let weak = Arc::downgrade(&shared);
        let keys: crate::fleet::refresh::Keys = Box::new(move || {
            weak.upgrade()
                .and_then(|s| s.snapshot.load().sessions.clone())
        });
        if let Some(refreshes) = shared.fleet.refreshes(keys) {
            let _ = shared.reverifier.fleet.set(refreshes);
        }
        shared
    }
}

impl Shared {
    /// What a detector firing acts on.
    pub fn acting(&self) -> crate::anomaly::detect::Acting<'_> {
        crate::anomaly::detect::Acting {
            tables: &self.detectors,
            blocks: &self.blocks,
            alerts: &self.alerts,
            metrics: &self.metrics,
            live: &self.live,
            fleet: &self.fleet,
        }
    }

    /// Tells the detectors of `snapshot` (if any run) that `seen` happened to `who` at `now`;
    /// true when one fired.
    pub fn detect(
        &self,
        snapshot: &Snapshot,
        seen: crate::anomaly::detect::Seen<'_>,
        who: &crate::access::Who<'_>,
        now: i64,
    ) -> bool {
        snapshot
            .detectors
            .as_ref()
            .is_some_and(|d| d.observe(&self.acting(), seen, who, now))
    }

    /// Denials of `who` within `window` of `now`: this replica's, or the fleet's when more.
    pub fn recent_denials(&self, who: &str, now: i64, window: std::time::Duration) -> u32 {
        let here = self.posture.recent_denials(who, now, window);
        let fleet = self
            .fleet
            .total(&format!("risk_denials|{who}"), now, window);
        here.max(fleet.unwrap_or(0))
    }

    /// Counts a denial of `who` for the risk engine, here and across the fleet.
    pub fn record_denial(&self, who: &str, now: i64) {
        self.posture.record_denial(who, now);
        let window = self
            .snapshot
            .load()
            .risk
            .as_ref()
            .map_or(std::time::Duration::from_secs(300), |r| r.denial_window);
        self.fleet.count(crate::fleet::Count {
            key: format!("risk_denials|{who}"),
            member: None,
            window,
            at: now,
            fire: None,
        });
    }

    /// True when `user` was never seen on `device` (by any replica); with `remember`, it is
    /// from now on, on every replica.
    pub fn first_seen(&self, user: &str, device: &str, remember: bool) -> bool {
        let first = self.posture.first_seen(user, device, remember);
        if first && remember {
            let change = Change::Seen {
                user: user.to_owned(),
                device: device.to_owned(),
                at: crate::identity::now(),
            };
            self.fleet.announce(change.entry());
        }
        first
    }

    /// A new connection id, unique for the life of the process.
    pub fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }
}
