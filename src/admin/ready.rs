//! `GET /readyz`: whether this instance can serve what it is configured to serve, and the state
//! of each thing that decides it.
//!
//! Readiness is judged per route: a route that needs no provider (`login = "none"`) can serve
//! whatever the provider's state, a login route needs the provider discovered and answering, a
//! bearer route its keys (fetched once, they verify tokens through an outage). The instance is
//! ready while serving and while at least one route can serve, so a provider outage takes the
//! login routes out (they answer 503 with `Retry-After`), not the certificate-only ones.
//!
//! With a shared state in Redis, the instance is not ready before it has read the state once
//! (every route refuses until then), and a route with `require_shared_state` is not ready while
//! the copy is stale.
//!
//! Each component is one field of [`Report`], built by [`report`] from what it reads: adding
//! one is a field, a line in `report`, and, if it can make the instance unready, a line in
//! [`Report::verdict`].

use crate::config::Snapshot;
use crate::fleet::Standing;
use crate::identity::oidc::{self, Provider};
use crate::posture::inventory;
use crate::reload::ReloadStatus;
use crate::routing::{Login, Route};
use crate::tls::lifecycle;
use serde::Serialize;

/// The body of `/readyz`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ready: bool,
    /// Why the instance is not ready; `null` when it is.
    pub reason: Option<String>,
    pub config_generation: u64,
    /// Every route, in configuration order, with whether it can serve now.
    pub routes: Vec<RouteReadiness>,
    pub identity_provider: Option<oidc::Status>,
    pub device_inventory: Option<inventory::Status>,
    pub reload: Option<ReloadStatus>,
    /// The TLS material in force, judged now: an expired server certificate, or an enforced
    /// CRL past its `nextUpdate`, leaves no route able to serve.
    pub certificates: lifecycle::Status,
    /// How current the replica's copy of the fleet's shared state is; `null` in memory.
    pub shared_state: Option<Standing>,
}

/// One route's readiness.
#[derive(Debug, Clone, Serialize)]
pub struct RouteReadiness {
    pub name: String,
    pub login: Login,
    pub ready: bool,
    /// Why it cannot serve; `null` when it can.
    pub reason: Option<String>,
}

/// What `/readyz` reads: the snapshot in force, whether the process is serving (false while
/// starting and draining), the outcome of the last reload, and the shared state's standing.
pub fn report(
    snapshot: &Snapshot,
    serving: bool,
    reload: Option<ReloadStatus>,
    shared_state: Option<Standing>,
) -> Report {
    let provider = snapshot.oidc.as_ref().map(|p| p.status());
    let routes = snapshot
        .routes
        .iter()
        .map(|route| route_readiness(route, snapshot.oidc.as_deref(), shared_state))
        .collect();
    let mut report = Report {
        ready: false,
        reason: None,
        config_generation: snapshot.generation,
        routes,
        identity_provider: provider,
        device_inventory: snapshot.devices.as_ref().map(|d| d.status()),
        reload,
        certificates: lifecycle::Status::now(&snapshot.certificates),
        shared_state,
    };
    report.reason = report.verdict(serving);
    report.ready = report.reason.is_none();
    report
}

impl Report {
    /// Why the instance is not ready, if it is not: not serving, TLS material that cannot
    /// serve, or no route can serve. A stale device inventory and a refused reload never make
    /// it unready: routes still serve (device rules fail closed; the previous configuration
    /// stays in force).
    fn verdict(&self, serving: bool) -> Option<String> {
        if !serving {
            return Some("starting or draining".to_owned());
        }
        if !self.certificates.serving() {
            return Some(self.certificates.reason().to_owned());
        }
        if self.shared_state.is_some_and(|s| !s.synced) {
            return Some("the shared state has not been read from Redis yet".to_owned());
        }
        if self.routes.iter().any(|r| r.ready) {
            return None;
        }
        let why = self
            .routes
            .iter()
            .find_map(|r| r.reason.clone())
            .unwrap_or_else(|| "no route is configured".to_owned());
        Some(format!("no route can serve: {why}"))
    }
}

/// Whether `route` can serve now, given the provider and the shared state it may need.
fn route_readiness(
    route: &Route,
    provider: Option<&Provider>,
    shared_state: Option<Standing>,
) -> RouteReadiness {
    let login = route.policy.login;
    let stale = shared_state.filter(|s| s.stale && route.policy.require_shared_state);
    let reason = match (login, provider) {
        _ if stale.is_some() => stale.map(|s| {
            format!(
                "needs a current shared state, last heard from Redis {:.1}s ago",
                s.age
            )
        }),
        (Login::None, _) => None,
        (Login::Oidc | Login::Bearer, None) => {
            Some("needs the identity provider, which is not configured".to_owned())
        }
        (Login::Oidc, Some(p)) => p.available().err().map(|e| provider_reason(&e)),
        (Login::Bearer, Some(p)) => (!p.is_ready()).then(|| {
            "needs the identity provider's keys, which are not fetched yet (discovery has not succeeded)".to_owned()
        }),
    };
    RouteReadiness {
        name: route.name.clone(),
        login,
        ready: reason.is_none(),
        reason,
    }
}

fn provider_reason(e: &oidc::LoginError) -> String {
    match e {
        oidc::LoginError::Down { since } => {
            format!("needs the identity provider, which is unreachable since {since}")
        }
        _ => "needs the identity provider, which is not discovered yet".to_owned(),
    }
}
