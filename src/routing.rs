//! Which route a request belongs to: by host, then by the longest path prefix.

use crate::forward::Upstream;
pub use crate::policy::Login;
use crate::policy::RoutePolicy;
use std::collections::HashMap;
use std::sync::Arc;

/// A compiled `[[route]]`.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    /// `name` as a metrics label, shared rather than copied per request.
    pub label: Arc<str>,
    /// As written: exact host, `*.suffix` or `*`.
    pub host: String,
    /// Path prefix, without trailing slash except for the root "/".
    pub path: String,
    /// How the route identifies, its rules and its risk actions: what decisions read.
    pub policy: Arc<RoutePolicy>,
    pub upstream: Upstream,
    pub max_body_bytes: Option<u64>,
    /// `login = "bearer"`: required audience and scopes.
    pub bearer_audience: Option<String>,
    pub bearer_scopes: Vec<String>,
    /// Legacy identity headers: (header, claim).
    pub headers: Vec<(http::HeaderName, String)>,
    /// Their names in alias form, stripped from client requests.
    pub strip: Vec<String>,
    /// Upgrade protocols a request may switch to (lower-case names); others are removed.
    pub upgrades: Vec<String>,
    /// Just-in-time access on this route, when it offers it.
    pub grants: Option<crate::access::GrantSettings>,
    /// The route's request series, looked up once (by its first request) and kept.
    pub series: crate::metrics::RouteSeries,
}

impl Route {
    /// Whole-segment prefix match: `/api` covers `/api` and `/api/x`, not `/apix`.
    fn covers(&self, path: &str) -> bool {
        if self.path == "/" {
            return true;
        }
        match path.strip_prefix(self.path.as_str()) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }
}

/// Routes indexed for lookup. Most specific wins: exact host over `*.suffix` over `*`, then
/// the longest path prefix.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<String, Vec<Arc<Route>>>,
    wildcard: HashMap<String, Vec<Arc<Route>>>,
    any: Vec<Arc<Route>>,
    all: Vec<Arc<Route>>,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> Self {
        let mut table = RouteTable::default();
        for route in routes {
            let route = Arc::new(route);
            table.all.push(route.clone());
            if route.host == "*" {
                table.any.push(route);
            } else if let Some(suffix) = route.host.strip_prefix("*.") {
                table
                    .wildcard
                    .entry(suffix.to_owned())
                    .or_default()
                    .push(route);
            } else {
                table
                    .exact
                    .entry(route.host.clone())
                    .or_default()
                    .push(route);
            }
        }
        let by_specificity = |v: &mut Vec<Arc<Route>>| {
            v.sort_by_key(|r| std::cmp::Reverse(r.path.len()));
        };
        table.exact.values_mut().for_each(by_specificity);
        table.wildcard.values_mut().for_each(by_specificity);
        by_specificity(&mut table.any);
        table
    }

    /// `host` is canonical and without port; `path` is normalised.
    pub fn find(&self, host: &str, path: &str) -> Option<&Arc<Route>> {
        if let Some(found) = self.exact.get(host).and_then(|r| first_covering(r, path)) {
            return Some(found);
        }
        if let Some((_, parent)) = host.split_once('.')
            && let Some(found) = self
                .wildcard
                .get(parent)
                .and_then(|r| first_covering(r, path))
        {
            return Some(found);
        }
        first_covering(&self.any, path)
    }

    /// True when some route, on any path, serves `host`.
    pub fn serves_host(&self, host: &str) -> bool {
        !self.any.is_empty()
            || self.exact.contains_key(host)
            || host
                .split_once('.')
                .is_some_and(|(_, parent)| self.wildcard.contains_key(parent))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.all.iter()
    }

    pub fn len(&self) -> usize {
        self.all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }
}

fn first_covering<'a>(routes: &'a [Arc<Route>], path: &str) -> Option<&'a Arc<Route>> {
    routes.iter().find(|r| r.covers(path))
}

impl RouteTable {
    /// Every route's Rego policies as `(route, policy file, role)`, role `enforced` or
    /// `shadow`: the series the metrics create at 0.
    pub fn policy_series(&self) -> Vec<(Arc<str>, Arc<str>, &'static str)> {
        let mut series = Vec::new();
        for route in self.iter() {
            for (rego, role) in route.policy.policies() {
                series.push((route.label.clone(), rego.label.clone(), role));
            }
        }
        series
    }
}
