//! The audit trail of admin actions: every revocation, device restore, reload and block (made
//! or lifted) ordered on the admin listener, as one JSON line with who ordered it, what it named, and how it ended.
//!
//! The lines go where `[log] admin_actions` says: by default into the decision log's own
//! destination (in order among the decision lines, with `"kind":"admin_action"`), so the
//! revocation and the refusals it causes are read in one place. They are written by the same
//! writer thread as decision lines, so they are never held up by a slow destination and are
//! written out on a graceful shutdown. The diagnostics still log each action too
//! (`revocation ordered by an operator`, `configuration reloaded`).

use super::gate;
use crate::decision_log::{self, bounded};
use crate::reload::Reloaded;
use crate::state::Shared;
use http::StatusCode;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The longest value of a revoked or restored name written (a session id, a subject, a
/// fingerprint are far shorter); a longer one is cut and ends in `…`.
const MAX_TARGET: usize = 256;

/// What an operator ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// `POST /revoke`.
    Revoke,
    /// `POST /restore`.
    Restore,
    /// `POST /reload`.
    Reload,
    /// `POST /blocks`.
    Block,
    /// `POST /blocks/lift`.
    LiftBlock,
}

/// One admin action, as written. Field names are part of the operator contract
/// (docs/decision-log.md, "Admin actions").
#[derive(Debug, Serialize)]
pub struct Line<'a> {
    pub v: u32,
    /// `admin_action`.
    pub kind: &'static str,
    pub time: String,
    pub action: Action,
    /// Who: the admin token's name, else the client certificate's SPIFFE ID, else
    /// `loopback`.
    pub actor: &'a str,
    /// How the actor was known: `token`, `certificate` or `loopback`.
    pub via: &'static str,
    /// The admin client certificate's SPIFFE ID, on a TLS admin listener, even when a token
    /// named the actor.
    pub certificate: Option<&'a str>,
    /// The caller's IP address.
    pub client: IpAddr,
    /// What a revocation or restore named (`session`, `user`, `device`), as sent; what a
    /// block or its lifting named (`subject`, as `kind:value`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub target: BTreeMap<&'static str, String>,
    /// `ok`: done. `refused`: nothing changed (a malformed request, nothing to restore, a
    /// configuration with problems).
    pub outcome: &'static str,
    /// The HTTP status of the answer.
    pub status: u16,
    /// A reload's configuration generation in force afterwards.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// A reload's settings that need a restart to take effect.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub restart_required: &'a [String],
    /// A refused reload's problems.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub errors: &'a [String],
}

/// Who made the call, as the line names them: (`actor`, `via`).
pub fn actor<'a>(conn: &gate::Conn, caller: &'a gate::Caller) -> (&'a str, &'static str) {
    match (&caller.token, &caller.spiffe) {
        (Some(token), _) => (token, "token"),
        (None, Some(spiffe)) => (spiffe, "certificate"),
        // A client certificate without a SPIFFE ID: `[admin] allow_spiffe` can require one.
        (None, None) if conn.tls => ("certificate", "certificate"),
        // A plain listener without tokens is only allowed on loopback.
        (None, None) => ("loopback", "loopback"),
    }
}

/// A line for `action` by `caller`, to be completed by the action's own fields.
fn line<'a>(
    action: Action,
    conn: &'a gate::Conn,
    caller: &'a gate::Caller,
    status: StatusCode,
) -> Line<'a> {
    let (actor, via) = actor(conn, caller);
    Line {
        v: decision_log::SCHEMA,
        kind: "admin_action",
        time: decision_log::now_rfc3339(),
        action,
        actor,
        via,
        certificate: caller.spiffe.as_deref().or(conn.spiffe.as_deref()),
        client: conn.remote.ip(),
        target: BTreeMap::new(),
        outcome: if status.is_success() { "ok" } else { "refused" },
        status: status.as_u16(),
        generation: None,
        restart_required: &[],
        errors: &[],
    }
}

/// Records a `POST /revoke` (`revoking`) or `POST /restore` with the JSON body it was sent
/// and the status it was answered with.
pub fn revocation(
    shared: &Shared,
    conn: &gate::Conn,
    caller: &gate::Caller,
    revoking: bool,
    (body, status): (Option<&serde_json::Value>, StatusCode),
) {
    let action = if revoking {
        Action::Revoke
    } else {
        Action::Restore
    };
    let mut line = line(action, conn, caller, status);
    for key in ["session", "user", "device"] {
        if let Some(value) = body.and_then(|b| b[key].as_str()) {
            line.target.insert(key, bounded(value, MAX_TARGET));
        }
    }
    shared.admin_actions.record(&line);
}

/// Records a `POST /blocks` (`blocking`) or `POST /blocks/lift` with the subject it named
/// (when it could be read) and the status it was answered with.
pub fn block(
    shared: &Shared,
    conn: &gate::Conn,
    caller: &gate::Caller,
    blocking: bool,
    (subject, status): (Option<&crate::access::Subject>, StatusCode),
) {
    let action = if blocking {
        Action::Block
    } else {
        Action::LiftBlock
    };
    let mut line = line(action, conn, caller, status);
    if let Some(subject) = subject {
        line.target
            .insert("subject", bounded(&subject.key(), MAX_TARGET));
    }
    shared.admin_actions.record(&line);
}

/// Records a `POST /reload` and how it ended.
pub fn reload(
    shared: &Shared,
    conn: &gate::Conn,
    caller: &gate::Caller,
    result: &Result<Reloaded, Vec<String>>,
) {
    let status = match result {
        Ok(_) => StatusCode::OK,
        Err(_) => StatusCode::UNPROCESSABLE_ENTITY,
    };
    let mut line = line(Action::Reload, conn, caller, status);
    match result {
        Ok(done) => {
            line.generation = Some(done.generation);
            line.restart_required = &done.restart_required;
        }
        Err(errors) => {
            line.generation = Some(shared.snapshot.load().generation);
            line.errors = errors;
        }
    }
    shared.admin_actions.record(&line);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(tls: bool, spiffe: Option<&str>) -> gate::Conn {
        let addr = "127.0.0.1:9901".parse().unwrap();
        gate::Conn {
            bound: addr,
            local: addr,
            remote: "127.0.0.1:50000".parse().unwrap(),
            tls,
            spiffe: spiffe.map(str::to_owned),
            permitted: true,
        }
    }

    /// An admin action read back, to write it again as [`Line`].
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Read {
        v: u32,
        kind: String,
        time: String,
        action: String,
        actor: String,
        via: String,
        certificate: Option<String>,
        client: IpAddr,
        #[serde(default)]
        target: BTreeMap<String, String>,
        outcome: String,
        status: u16,
        generation: Option<u64>,
        #[serde(default)]
        restart_required: Vec<String>,
        #[serde(default)]
        errors: Vec<String>,
    }

    /// Every admin action shown in docs/decision-log.md is exactly what [`Line`] writes.
    #[test]
    fn the_documented_examples_are_lines_vigil_writes() {
        let docs = include_str!("../../docs/decision-log.md");
        let examples: Vec<&str> = docs
            .lines()
            .filter(|l| l.starts_with("{\"v\":1,\"kind\":\"admin_action\""))
            .collect();
        assert!(examples.len() >= 3, "{} examples", examples.len());
        let known = |text: &str, from: &[&'static str]| {
            from.iter()
                .copied()
                .find(|k| *k == text)
                .unwrap_or_else(|| panic!("unknown {text}"))
        };
        for text in examples {
            let read: Read = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
            let line = Line {
                v: read.v,
                kind: known(&read.kind, &["admin_action"]),
                time: read.time.clone(),
                action: match read.action.as_str() {
                    "revoke" => Action::Revoke,
                    "restore" => Action::Restore,
                    "reload" => Action::Reload,
                    "block" => Action::Block,
                    "lift_block" => Action::LiftBlock,
                    other => panic!("unknown action {other}"),
                },
                actor: &read.actor,
                via: known(&read.via, &["token", "certificate", "loopback"]),
                certificate: read.certificate.as_deref(),
                client: read.client,
                target: read
                    .target
                    .iter()
                    .map(|(k, v)| {
                        (
                            known(k, &["session", "user", "device", "subject"]),
                            v.clone(),
                        )
                    })
                    .collect(),
                outcome: known(&read.outcome, &["ok", "refused"]),
                status: read.status,
                generation: read.generation,
                restart_required: &read.restart_required,
                errors: &read.errors,
            };
            assert_eq!(serde_json::to_string(&line).unwrap(), text);
        }
    }

    #[test]
    fn the_actor_is_the_token_else_the_certificate_else_loopback() {
        let ops = "spiffe://example.org/ns/ops/sa/oncall";
        let cases = [
            (conn(false, None), Some("ci"), ("ci", "token"), None),
            (
                conn(true, Some(ops)),
                Some("ci"),
                ("ci", "token"),
                Some(ops),
            ),
            (conn(true, Some(ops)), None, (ops, "certificate"), Some(ops)),
            (conn(true, None), None, ("certificate", "certificate"), None),
            (conn(false, None), None, ("loopback", "loopback"), None),
        ];
        for (conn, token, want, certificate) in cases {
            let caller = gate::Caller {
                token: token.map(str::to_owned),
                spiffe: conn.spiffe.clone(),
            };
            let line = line(Action::Revoke, &conn, &caller, StatusCode::OK);
            assert_eq!((line.actor, line.via), want);
            assert_eq!(line.certificate, certificate);
        }
    }
}
