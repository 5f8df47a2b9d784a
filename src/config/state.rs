//! `[state]`: where the state replicas share is kept, compiled into [`fleet::Settings`]
//! (`None` for the in-memory default). It is bound at start-up: a reload that changes it is
//! reported as needing a restart.

use super::compiler::Compiler;
use super::load::RawConfig;
use super::schema::StateSection;
use crate::fleet::{self, Target};
use std::sync::Arc;

impl Compiler<'_> {
    pub(super) fn state(&mut self, raw: &RawConfig) -> Option<Arc<fleet::Settings>> {
        let s = raw.state.as_ref()?;
        match s.backend.as_str() {
            "memory" => {
                for (key, set) in [
                    ("state.url", s.url.is_some()),
                    ("state.username", s.username.is_some()),
                    ("state.password_file", s.password_file.is_some()),
                    ("state.ca", s.ca.is_some()),
                ] {
                    if set {
                        self.warning(key, "has no effect with state.backend = \"memory\"");
                    }
                }
                return None;
            }
            "redis" => {}
            other => {
                self.problem_help(
                    "state.backend",
                    format!("{other:?} is not a backend"),
                    "write \"memory\" (one replica) or \"redis\" (a fleet)",
                );
                return None;
            }
        }
        self.state_limits(s);
        let before = self.reported();
        let target = self.state_target(s.url.as_deref());
        let password = self
            .optional_file("state.password_file", s.password_file.as_ref())
            .map(|bytes| {
                String::from_utf8_lossy(&bytes)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned()
            });
        if password.as_deref() == Some("") {
            self.problem("state.password_file", "the file's first line is empty");
        }
        let ca = self.optional_file("state.ca", s.ca.as_ref());
        if let Some(ca) = &ca
            && !String::from_utf8_lossy(ca).contains("-----BEGIN CERTIFICATE-----")
        {
            self.problem("state.ca", "holds no PEM certificate");
        }
        let tls = matches!(&target, Some(Target::Single { url }) if url.starts_with("rediss://"))
            || matches!(
                &target,
                Some(Target::Sentinel { tls: true, .. } | Target::Cluster { tls: true, .. })
            );
        if ca.is_some() && !tls {
            self.warning("state.ca", "has no effect without TLS (rediss://)");
        }
        if password.is_none() {
            self.warning(
                "state.password_file",
                "Redis is used without a password: anyone who reaches it can revoke, grant and unblock",
            );
        }
        if !tls {
            self.warning(
                "state.url",
                "Redis is reached without TLS: grants, blocks and refresh outcomes cross the network in the clear",
            );
        }
        if self.reported() > before {
            return None;
        }
        Some(Arc::new(fleet::Settings {
            target: target?,
            username: s.username.clone(),
            password,
            ca,
            prefix: s.prefix.clone(),
            max_stale: s.max_stale.0,
            timeout: s.timeout.0,
        }))
    }

    /// `max_stale`, `timeout` and `prefix`.
    fn state_limits(&mut self, s: &StateSection) {
        self.longer_than_zero(&[
            ("state.max_stale", s.max_stale.0),
            ("state.timeout", s.timeout.0),
        ]);
        if !s.max_stale.0.is_zero() && s.max_stale.0 < fleet::MIN_STALE {
            self.problem_help(
                "state.max_stale",
                format!(
                    "must be at least {}s: a replica hears from Redis about once a second",
                    fleet::MIN_STALE.as_secs()
                ),
                "write max_stale = \"10s\" (the default)",
            );
        }
        if s.prefix.is_empty()
            || s.prefix.contains(['{', '}'])
            || s.prefix.contains(char::is_whitespace)
        {
            self.problem(
                "state.prefix",
                "must be a non-empty word without braces or spaces",
            );
        }
    }

    fn state_target(&mut self, url: Option<&str>) -> Option<Target> {
        let Some(url) = url else {
            self.problem_help(
                "state.backend",
                "the redis backend needs state.url",
                "write url = \"rediss://redis.example.org:6379/0\"",
            );
            return None;
        };
        if url.contains('#') {
            // The Redis client reads `#insecure` as "do not verify the server's certificate".
            self.problem_help(
                "state.url",
                "must not carry a #fragment (such as #insecure, which turns off the verification of Redis's certificate)",
                "give Redis's CA in state.ca instead",
            );
            return None;
        }
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        let tls = scheme.starts_with("rediss");
        let nodes = |hosts: &str| -> Vec<String> {
            hosts
                .split(',')
                .filter(|h| !h.is_empty())
                .map(|h| format!("{}://{h}", if tls { "rediss" } else { "redis" }))
                .collect()
        };
        let target = match scheme {
            "redis" | "rediss" => redis::parse_redis_url(url).map(|_| Target::Single {
                url: url.to_owned(),
            }),
            "redis+sentinel" | "rediss+sentinel" => {
                let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
                let (master, db) = path.split_once('/').unwrap_or((path, "0"));
                match db.parse::<i64>() {
                    Ok(db) if !master.is_empty() && !hosts.is_empty() => Some(Target::Sentinel {
                        nodes: nodes(hosts),
                        master: master.to_owned(),
                        db,
                        tls,
                    }),
                    _ => None,
                }
            }
            "redis+cluster" | "rediss+cluster" => {
                let hosts = rest.trim_end_matches('/');
                (!hosts.is_empty() && !hosts.contains('/')).then(|| Target::Cluster {
                    nodes: nodes(hosts),
                    tls,
                })
            }
            _ => None,
        };
        if target.is_none() {
            self.problem_help(
                "state.url",
                format!("{url:?} is not a Redis URL"),
                "write redis://HOST:PORT/DB, rediss://... for TLS, redis+sentinel://H1:P1,H2:P2/MASTER or redis+cluster://H1:P1,H2:P2",
            );
        }
        target
    }
}
