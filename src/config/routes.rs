//! `[[route]]`: where each request goes, who must log in, which rules allow it, what each risk
//! level does, and which protocols it may upgrade to. Rules are compiled in `rules.rs`,
//! upstreams and their connection pools in `upstream.rs`.

use super::compiler::Compiler;
use super::diagnostics::Problem;
use super::load::RawConfig;
use super::policy::Shared;
use super::schema::RouteSection;
use super::upstream::Pools;
use crate::canonical::{normalize_host, normalize_path};
use crate::policy::{RoutePolicy, Rule};
use crate::posture::{Action, RiskActions};
use crate::routing::{Login, Route, RouteTable};
use std::collections::HashSet;
use std::sync::Arc;

/// `[[route]]`, compiled.
pub(super) struct Routes {
    pub table: RouteTable,
    /// The upstream pools the routes use, for the next load to keep.
    pub pools: Pools,
}

impl Compiler<'_> {
    /// Every route, or none if one has a problem; names must be unique, and so must each
    /// (host, path) place.
    pub(super) fn routes(&mut self, raw: &RawConfig, policies: &Shared) -> Option<Routes> {
        if raw.routes.is_empty() {
            self.report(
                Problem::at(None, "no [[route]]: every request would get 404")
                    .with_help("add a [[route]] with name, host, upstream, login and allow"),
            );
            return None;
        }
        let mut pools = Pools::default();
        let mut names = HashSet::new();
        let mut places = HashSet::new();
        let mut routes = Vec::new();
        let mut all_ok = true;
        for (i, route) in raw.routes.iter().enumerate() {
            let Some(route) = route else {
                all_ok = false;
                continue;
            };
            let at = format!("route.{i}");
            if route.name.trim().is_empty() {
                self.problem(&format!("{at}.name"), "route name is empty");
            } else if !names.insert(route.name.clone()) {
                self.problem(
                    &format!("{at}.name"),
                    format!("duplicate route name {:?}", route.name),
                );
            }
            match self.route(&at, route, raw, policies, &mut pools) {
                Some(compiled) => {
                    if !places.insert((compiled.host.clone(), compiled.path.clone())) {
                        self.problem(
                            &format!("{at}.path"),
                            format!(
                                "another route already serves host {:?} path {:?}",
                                compiled.host, compiled.path
                            ),
                        );
                    }
                    routes.push(compiled);
                }
                None => all_ok = false,
            }
        }
        all_ok.then(|| Routes {
            table: RouteTable::new(routes),
            pools,
        })
    }

    /// One route at `at` (`route.N`). What decides over its requests (the login, the rules
    /// and the actions per risk level) is compiled here and goes into the route together.
    fn route(
        &mut self,
        at: &str,
        r: &RouteSection,
        raw: &RawConfig,
        policies: &Shared,
        pools: &mut Pools,
    ) -> Option<Route> {
        let before = self.reported();
        let host = self.route_host(&format!("{at}.host"), &r.host);
        let path = self.route_path(at, r.path.as_deref());
        let login = self.login(at, r, raw);
        let rules = self.allow(at, r, login);
        let (headers, strip) = self.identity_headers(at, r);
        if r.login.as_deref() != Some("bearer")
            && (r.bearer_audience.is_some() || !r.bearer_scopes.is_empty())
        {
            self.problem(
                &format!("{at}.bearer_audience"),
                "bearer_audience and bearer_scopes apply only to login = \"bearer\"",
            );
        }
        let (rego, shadow) = self.route_policies(at, r, policies);
        if r.allow.is_empty() && r.policy.is_none() {
            self.problem_help(
                at,
                format!(
                    "route {:?} has no allow rules: it would deny everything",
                    r.name
                ),
                "add allow = [{ spiffe = [\"spiffe://example.org/ns/*/sa/*\"] }] or similar, or a policy",
            );
        }
        let risk = self.risk_actions(at, r, raw);
        if rules.iter().any(Rule::needs_inventory) && raw.lacks("devices") {
            self.problem_help(
                &format!("{at}.allow"),
                "device rules need the device inventory",
                "configure [devices] with the MDM export",
            );
        }
        let upgrades = self.upgrades(at, r);
        let grants = self.grants(at, r, &rules);
        let upstream = self.upstream(at, r, raw, pools);
        if self.reported() > before {
            return None;
        }
        Some(Route {
            series: crate::metrics::RouteSeries::default(),
            label: Arc::from(r.name.as_str()),
            name: r.name.clone(),
            host: host?,
            path,
            policy: Arc::new(RoutePolicy {
                name: r.name.clone(),
                login: login?,
                rules,
                risk,
                audit: r.audit,
                rego,
                shadow,
                require_shared_state: r.require_shared_state,
            }),
            upstream: upstream?,
            max_body_bytes: r.max_body_bytes.map(|n| if n == 0 { u64::MAX } else { n }),
            bearer_audience: r.bearer_audience.clone(),
            bearer_scopes: r.bearer_scopes.clone(),
            headers,
            strip,
            upgrades,
            grants,
        })
    }

    /// `grants = { max, default, approvers }`, and the rules that use grants.
    fn grants(
        &mut self,
        at: &str,
        r: &RouteSection,
        rules: &[Rule],
    ) -> Option<crate::access::GrantSettings> {
        let uses = rules.iter().any(|rule| rule.grant);
        let Some(g) = &r.grants else {
            if uses {
                self.problem_help(
                    &format!("{at}.allow"),
                    "a rule needs a grant (grant = true) but the route grants nothing",
                    "add grants = { max = \"4h\", approvers = { groups = [\"sec-oncall\"] } }",
                );
            }
            return None;
        };
        let key = format!("{at}.grants");
        let max = g.max.0.as_secs();
        if max == 0 {
            self.problem(&format!("{key}.max"), "max must be longer than zero");
        }
        let default = g.default.map_or(max.min(3600), |d| d.0.as_secs());
        if default == 0 || default > max {
            self.problem(
                &format!("{key}.default"),
                "default must be longer than zero and at most max",
            );
        }
        let approvers = &g.approvers;
        if approvers.groups.is_empty() && approvers.users.is_empty() {
            self.problem_help(
                &format!("{key}.approvers"),
                "nobody can approve access requests",
                "name approvers = { groups = [\"sec-oncall\"] } or users",
            );
        }
        if !uses && r.policy.is_none() {
            self.warning(
                &key,
                "no rule has grant = true and there is no policy: grants on this route allow nothing",
            );
        }
        Some(crate::access::GrantSettings {
            max,
            default,
            approver_groups: approvers.groups.clone(),
            approver_users: approvers
                .users
                .iter()
                .map(|u| {
                    if u.contains('@') {
                        u.to_ascii_lowercase()
                    } else {
                        u.clone()
                    }
                })
                .collect(),
        })
    }

    fn route_host(&mut self, key: &str, host: &str) -> Option<String> {
        if host == "*" {
            return Some(host.to_owned());
        }
        let (wild, name) = match host.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, host),
        };
        match normalize_host(name) {
            Ok(_) if has_port(name) => {
                self.problem_help(
                    key,
                    format!("route host {host:?} has a port"),
                    "routes match on the host name alone; drop the port",
                );
                None
            }
            Ok(n) => Some(if wild { format!("*.{n}") } else { n }),
            Err(e) => {
                self.problem(key, format!("invalid host {host:?}: {e}"));
                None
            }
        }
    }

    /// The path prefix, which must be written in normal form; "/" when not given.
    fn route_path(&mut self, at: &str, path: Option<&str>) -> String {
        let p = match path {
            None | Some("/") => return "/".to_owned(),
            Some(p) => p,
        };
        match normalize_path(p) {
            Ok(n) if n == p || n.trim_end_matches('/') == p.trim_end_matches('/') => {
                p.trim_end_matches('/').to_owned()
            }
            Ok(n) => {
                self.problem_help(
                    &format!("{at}.path"),
                    format!("path {p:?} is not in normal form"),
                    format!("write {n:?}"),
                );
                String::new()
            }
            Err(e) => {
                self.problem(&format!("{at}.path"), format!("invalid path {p:?}: {e}"));
                String::new()
            }
        }
    }

    /// `login`, with the sections each kind needs.
    fn login(&mut self, at: &str, r: &RouteSection, raw: &RawConfig) -> Option<Login> {
        let key = format!("{at}.login");
        match r.login.as_deref() {
            Some("none") => Some(Login::None),
            Some("oidc") => {
                if raw.lacks("oidc") || raw.lacks("session") {
                    self.problem_help(
                        &key,
                        "login = \"oidc\" needs the [oidc] and [session] sections",
                        "configure the provider in [oidc] and the session keys in [session]",
                    );
                }
                Some(Login::Oidc)
            }
            Some("bearer") => {
                if raw.lacks("oidc") {
                    self.problem(
                        &key,
                        "login = \"bearer\" needs the [oidc] section (whose keys verify the tokens)",
                    );
                }
                if r.bearer_audience.is_none() {
                    self.problem_help(
                        &key,
                        "login = \"bearer\" needs bearer_audience",
                        "the audience (aud) the provider issues this API's access tokens for",
                    );
                }
                Some(Login::Bearer)
            }
            Some(other) => {
                self.problem_help(
                    &key,
                    format!("unknown login {other:?}"),
                    "\"none\" (certificate identity), \"oidc\" (people) or \"bearer\" (service tokens)",
                );
                None
            }
            None => {
                self.problem_help(
                    at,
                    format!("{at}: missing `login`"),
                    "say how callers are identified: login = \"none\" for certificate identity",
                );
                None
            }
        }
    }

    /// The `allow` rules; rules about people need a route where people log in.
    fn allow(&mut self, at: &str, r: &RouteSection, login: Option<Login>) -> Vec<Rule> {
        let mut rules = Vec::new();
        for (j, rule) in r.allow.iter().enumerate() {
            let compiled = self.rule(&format!("{at}.allow.{j}"), rule);
            if compiled.needs_identity() && login == Some(Login::None) {
                self.problem_help(
                    &format!("{at}.allow.{j}"),
                    "this rule is about people (users, groups, mfa, claims) but the route has login = \"none\"",
                    "use login = \"oidc\" for people or \"bearer\" for service tokens",
                );
            }
            rules.push(compiled);
        }
        rules
    }

    /// `headers`: identity headers to send upstream, and the forms of their names that are
    /// stripped from client requests.
    fn identity_headers(
        &mut self,
        at: &str,
        r: &RouteSection,
    ) -> (Vec<(http::HeaderName, String)>, Vec<String>) {
        let mut headers = Vec::new();
        let mut strip = Vec::new();
        for (name, claim) in &r.headers {
            match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => {
                    strip.push(crate::canonical::alias_key(h.as_str()).into_owned());
                    headers.push((h, claim.clone()));
                }
                Err(_) => self.problem(
                    &format!("{at}.headers.{name}"),
                    format!("{name:?} is not a valid header name"),
                ),
            }
        }
        (headers, strip)
    }

    /// `risk`: the action per risk level, which needs `[risk]`.
    fn risk_actions(&mut self, at: &str, r: &RouteSection, raw: &RawConfig) -> RiskActions {
        let mut actions = RiskActions::default();
        let Some(table) = &r.risk else {
            return actions;
        };
        if raw.lacks("risk") {
            self.problem(
                &format!("{at}.risk"),
                "route risk actions need a [risk] section",
            );
        }
        for (level, value, slot) in [
            ("low", &table.low, &mut actions.low),
            ("medium", &table.medium, &mut actions.medium),
            ("high", &table.high, &mut actions.high),
        ] {
            if let Some(text) = value {
                match Action::parse(text) {
                    Some(action) => *slot = action,
                    None => self.problem_help(
                        &format!("{at}.risk.{level}"),
                        format!("unknown risk action {text:?}"),
                        "\"allow\", \"read_only\", \"step_up\" or \"deny\"",
                    ),
                }
            }
        }
        actions
    }

    /// A route's `upgrades`: protocol names (tokens), never one that carries HTTP itself.
    fn upgrades(&mut self, at: &str, r: &RouteSection) -> Vec<String> {
        let Some(list) = &r.upgrades else {
            return vec!["websocket".to_owned()];
        };
        let mut out = Vec::new();
        for (j, name) in list.iter().enumerate() {
            let key = format!("{at}.upgrades.{j}");
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token {
                self.problem_help(
                    &key,
                    format!("{name:?} is not an upgrade protocol name"),
                    "a protocol name as in the Upgrade header, without version, e.g. \"websocket\"",
                );
            } else if crate::canonical::NEVER_UPGRADE
                .iter()
                .any(|n| name.eq_ignore_ascii_case(n))
            {
                self.problem_help(
                    &key,
                    format!("upgrade {name:?} is never allowed: its tunnel would carry requests past routing and policy"),
                    "remove it; only protocols that do not carry HTTP (such as \"websocket\") may be listed",
                );
            } else {
                out.push(name.to_ascii_lowercase());
            }
        }
        out
    }
}

/// True when a host as written carries a port (`example.com:443`, `[::1]:8443`).
fn has_port(host: &str) -> bool {
    match host.strip_prefix('[') {
        Some(rest) => rest
            .split_once(']')
            .is_some_and(|(_, after)| !after.is_empty()),
        None => host.contains(':'),
    }
}
