//! `vigil policy replay` on a decision log written by a real proxy: exactly the requests whose
//! outcome changes under a new configuration, its exit codes, and what the log never holds.

mod support;

use anyhow::{Context as _, Result};
use std::path::Path;
use std::process::Command;
use support::*;

/// A route whose rules look at the request's method and headers, a credential among them.
fn config(pki: &Pki, upstream: std::net::SocketAddr, web: &str, batch: &str) -> String {
    format!(
        r#"{}
[[route]]
name = "api"
host = "localhost"
path = "/api"
upstream = "http://{upstream}"
login = "none"
allow = [
  {{ spiffe = ["spiffe://example.org/ns/frontend/**"], methods = [{web}] }},
  {{ spiffe = ["spiffe://example.org/ns/batch/**"], methods = ["GET"], headers = {{ x-api-version = [{batch}] }} }},
]

[[route]]
name = "static"
host = "localhost"
path = "/static"
upstream = "http://{upstream}"
login = "none"
allow = [{{ spiffe = ["spiffe://example.org/**"], headers = {{ authorization = ["Bearer *"], cookie = ["*"] }} }}]
"#,
        base_config("", &pki.path("decisions.log"))
    )
}

const SECRET_TOKEN: &str = "eyJhbGciOiJFUzI1NiJ9.c2VjcmV0LXRva2Vu";
const SECRET_COOKIE: &str = "sealed-cookie-value";

/// A request as `who`; its request id.
async fn send(
    running: &vigil::Running,
    pki: &Pki,
    who: &vigil::certs::Issued,
    method: &str,
    path: &str,
    headers: &str,
) -> Result<(u16, String)> {
    let config = client_config(Some(who), pki.ca.cert_pem(), &[])?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let reply = raw(running.addr, config, "localhost", &request).await?;
    let id = reply.header("x-request-id").context("x-request-id")?;
    Ok((reply.status, id))
}

fn vigil_replay(config: &Path, log: &Path, json: bool) -> Result<(i32, String, String)> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vigil"));
    cmd.args(["policy", "replay", "--config"])
        .arg(config)
        .arg("--log")
        .arg(log);
    if json {
        cmd.args(["--format", "json"]);
    }
    let out = cmd.output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The log of six real requests: four decided and kept as they are under the new
/// configuration, two whose outcome changes, one answered before any decision.
#[tokio::test]
async fn replay_lists_exactly_the_decisions_that_change() -> Result<()> {
    let pki = Pki::new()?;
    let (upstream, _stop) = echo_upstream().await?;
    let web = pki.workload(SPIFFE_WEB)?;
    let batch = pki.workload(SPIFFE_BATCH)?;
    let old = config(&pki, upstream, r#""GET""#, r#""2""#);
    let running = spawn(&pki, &old).await?;
    let credentials = format!(
        "Authorization: Bearer {SECRET_TOKEN}\r\nCookie: vigil_session={SECRET_COOKIE}; theme=dark\r\n"
    );
    let mut sent = Vec::new();
    for (who, method, path, headers, status) in [
        (&web, "GET", "/api/items", "", 200),
        (&web, "DELETE", "/api/items/7", "", 403),
        (&batch, "GET", "/api/items", "X-Api-Version: 2\r\n", 200),
        (&batch, "GET", "/api/items", "X-Api-Version: 1\r\n", 403),
        (&web, "GET", "/static/app.js", credentials.as_str(), 200),
        (&web, "GET", "/nowhere", credentials.as_str(), 404),
    ] {
        let (got, id) = send(&running, &pki, who, method, path, headers).await?;
        assert_eq!(got, status, "{method} {path}");
        sent.push(id);
    }
    let log = pki.path("decisions.log");
    for id in &sent {
        decision_for(&log, id).await.context("no decision line")?;
    }
    running.shutdown().await;
    let text = std::fs::read_to_string(&log)?;

    // Privacy: credentials the rules name keep their shape, never their value.
    for secret in [SECRET_TOKEN, SECRET_COOKIE, "dark"] {
        assert!(!text.contains(secret), "{secret} is in the log:\n{text}");
    }
    let lines = decisions(&log);
    let kept = &lines[4]["facts"]["request"]["headers"];
    assert_eq!(kept["authorization"][0], "Bearer [redacted]", "{kept}");
    assert_eq!(
        kept["cookie"][0],
        "vigil_session=[redacted]; theme=[redacted]"
    );
    assert!(
        lines[0]["facts"]["request"]["headers"]
            .as_object()
            .is_some_and(|h| h.is_empty())
    );
    assert!(lines[5].get("facts").is_none(), "{}", lines[5]);

    // Under the configuration that wrote it, nothing changes.
    std::fs::write(pki.path("old.toml"), &old)?;
    let (code, out, err) = vigil_replay(&pki.path("old.toml"), &log, false)?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("5 decisions replayed, 0 would change; 1 line skipped"),
        "{out}"
    );

    // The new one lets the frontend delete, and wants version 3 of the batch job.
    let new = config(&pki, upstream, r#""GET", "DELETE""#, r#""3""#);
    std::fs::write(pki.path("new.toml"), &new)?;
    let (code, out, err) = vigil_replay(&pki.path("new.toml"), &log, false)?;
    assert_eq!(code, 1, "{out}{err}");
    let changed: Vec<&String> = sent.iter().filter(|id| out.contains(id.as_str())).collect();
    assert_eq!(changed, [&sent[1], &sent[2]], "{out}");
    assert!(
        out.contains("logged: deny: rule 1: method DELETE not allowed"),
        "{out}"
    );
    assert!(
        out.contains("new:    allow: allowed by rule 1 [allowed_by_rule]"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "line 2: {} {} route api DELETE localhost/api/items/7 by CN=web\n",
            lines[1]["time"].as_str().unwrap_or("?"),
            sent[1]
        )),
        "{out}"
    );
    assert!(out.contains("2 would change"), "{out}");
    assert!(out.contains("1 decision without facts"), "{out}");

    let (code, out, err) = vigil_replay(&pki.path("new.toml"), &log, true)?;
    assert_eq!(code, 1, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).context(out.clone())?;
    let ids: Vec<&str> = report["changed"]
        .as_array()
        .context("changed")?
        .iter()
        .filter_map(|c| c["request_id"].as_str())
        .collect();
    assert_eq!(ids, [sent[1].as_str(), sent[2].as_str()]);
    let second = &report["changed"][1];
    assert_eq!(second["line"], 3);
    assert_eq!(second["route"], "api");
    assert_eq!(second["method"], "GET");
    assert_eq!(second["path"], "/api/items");
    assert_eq!(second["subject"], lines[2]["subject"]);
    assert_eq!(second["logged"]["outcome"], "allow");
    assert_eq!(second["logged"]["codes"][0], "allowed_by_rule");
    assert_eq!(second["new"]["outcome"], "deny");
    assert_eq!(second["new"]["rule"], serde_json::Value::Null);
    assert!(
        second["new"]["codes"]
            .to_string()
            .contains("header_not_allowed"),
        "{second}"
    );
    assert_eq!(report["summary"]["decisions"], 5);
    assert_eq!(report["summary"]["changed"], 2);
    assert_eq!(report["summary"]["skipped"]["without_facts"], 1);

    // Other kinds of line are skipped and counted; a line that is not JSON stops the replay.
    let admin = r#"{"v":1,"kind":"admin_action","time":"2026-11-23T06:10:02.114Z","action":"revoke","actor":"ops","via":"token","certificate":null,"client":"10.0.4.17","target":{"user":"248289761001"},"outcome":"ok","status":200}"#;
    let with_admin = pki.path("with-admin.log");
    std::fs::write(&with_admin, format!("{admin}\n{text}"))?;
    let (code, out, _) = vigil_replay(&pki.path("old.toml"), &with_admin, true)?;
    assert_eq!(code, 0, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(report["summary"]["skipped"]["not_decisions"], 1, "{out}");
    assert_eq!(report["summary"]["lines"], 7);

    let mut broken: Vec<&str> = text.lines().collect();
    broken.insert(2, "{\"v\":1,\"kind\":\"decision\",");
    let broken_log = pki.path("broken.log");
    std::fs::write(&broken_log, broken.join("\n"))?;
    let (code, out, err) = vigil_replay(&pki.path("new.toml"), &broken_log, false)?;
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("line 3: not JSON"), "{err}");
    let (code, out, _) = vigil_replay(&pki.path("new.toml"), &broken_log, true)?;
    assert_eq!(code, 2);
    let report: serde_json::Value = serde_json::from_str(&out).context(out.clone())?;
    assert_eq!(report["error"]["line"], 3, "{out}");
    assert_eq!(
        report["changed"][0]["request_id"],
        sent[1].as_str(),
        "{out}"
    );

    // Bad input: a log that cannot be read, a configuration that does not load.
    let (code, _, err) = vigil_replay(&pki.path("new.toml"), &pki.path("missing.log"), false)?;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("missing.log"), "{err}");
    std::fs::write(
        pki.path("bad.toml"),
        new.replace("login = \"none\"", "login = \"maybe\""),
    )?;
    let (code, _, err) = vigil_replay(&pki.path("bad.toml"), &log, false)?;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bad.toml"), "{err}");

    // A log of a version that wrote no facts: nothing to decide again, and said so.
    let older: Vec<String> = lines
        .iter()
        .map(|line| {
            let mut line = line.clone();
            if let Some(fields) = line.as_object_mut() {
                fields.remove("facts");
                fields.remove("outcome");
            }
            line.to_string()
        })
        .collect();
    let older_log = pki.path("older.log");
    std::fs::write(&older_log, older.join("\n") + "\n")?;
    let (code, out, err) = vigil_replay(&pki.path("new.toml"), &older_log, false)?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(
            "0 decisions replayed, 0 would change; 6 lines skipped: 6 decisions without facts"
        ),
        "{out}"
    );
    Ok(())
}

/// `[log] decision_facts = false`: lines without facts, still with the policy's outcome.
#[tokio::test]
async fn decision_facts_can_be_turned_off() -> Result<()> {
    let pki = Pki::new()?;
    let (upstream, _stop) = echo_upstream().await?;
    let web = pki.workload(SPIFFE_WEB)?;
    let text = config(&pki, upstream, r#""GET""#, r#""2""#)
        .replace("[log]\n", "[log]\ndecision_facts = false\n");
    let running = spawn(&pki, &text).await?;
    let (status, id) = send(&running, &pki, &web, "GET", "/api/items", "").await?;
    assert_eq!(status, 200);
    let line = decision_for(&pki.path("decisions.log"), &id)
        .await
        .context("no decision line")?;
    running.shutdown().await;
    assert!(line.get("facts").is_none(), "{line}");
    assert_eq!(line["outcome"], "allow");
    Ok(())
}
