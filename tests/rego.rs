//! Rego policies on routes, decided as requests are: the example policy of
//! `examples/policies/` as written, policies combined with rules, answers as objects, and
//! every way a policy can fail denying with its reason.

mod support;

use anyhow::{Result, anyhow};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};
use support::*;
use vigil::policy::facts::Document;
use vigil::policy::{self, Decision, Outcome};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/policies");

/// A PKI directory with `files` written into it, and the configuration compiled there.
fn load(pki: &Pki, files: &[(&str, &str)], routes: &str) -> Result<vigil::config::Snapshot> {
    for (name, text) in files {
        let path = pki.path(name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, text)?;
    }
    let text = base_config("", &pki.path("decisions.jsonl")) + routes;
    let ctx = vigil::config::Context::first()?;
    vigil::config::load_text("test.toml", text, pki.dir.path(), &ctx).map_err(|p| anyhow!("{p}"))
}

/// The problems of a configuration that does not load.
fn problems(pki: &Pki, files: &[(&str, &str)], routes: &str) -> String {
    match load(pki, files, routes) {
        Ok(_) => String::from("(loaded)"),
        Err(e) => e.to_string(),
    }
}

fn example_files() -> Result<Vec<(String, String)>> {
    let mut files = Vec::new();
    for name in ["zero_trust.rego", "data/device_db.json"] {
        files.push((
            name.to_owned(),
            std::fs::read_to_string(Path::new(EXAMPLE).join(name))?,
        ));
    }
    Ok(files)
}

/// A request's facts on route `route`, from `device` (its certificate's subject), by a person
/// with `amr` (none when `None`).
fn facts(route: &str, device: &str, amr: Option<&[&str]>) -> Value {
    let mut doc = json!({
        "time": 1_795_426_200,
        "request": { "route": route, "host": "localhost", "method": "GET", "path": "/" },
        "certificate": {
            "subject": format!("CN={device}"),
            "common_name": device,
            "issuer": "CN=Test CA",
            "serial": "01",
            "fingerprint": "ab".repeat(32),
            "not_before": 0,
            "not_after": 2_000_000_000
        },
        "network": { "source": "127.0.0.1" }
    });
    if let Some(amr) = amr {
        doc["person"] = json!({
            "subject": "alice", "email": "alice@example.com", "groups": ["staff"],
            "amr": amr, "mfa": amr.contains(&"mfa"), "verified_at": 1_795_426_000
        });
    }
    doc
}

fn decide(snapshot: &vigil::config::Snapshot, doc: &Value) -> Result<Decision> {
    let doc: Document = serde_json::from_value(doc.clone())?;
    Ok(policy::decide(&snapshot.policy, &doc.facts(0)))
}

fn codes(d: &Decision) -> Vec<&'static str> {
    d.reasons.iter().map(|r| r.code.as_str()).collect()
}

fn texts(d: &Decision) -> String {
    d.reasons
        .iter()
        .map(|r| r.text.as_str())
        .collect::<Vec<_>>()
        .join(" | ")
}

const ZERO_TRUST_ROUTE: &str = r#"
[policy]
data = ["data/*.json"]

[[route]]
name = "api"
host = "localhost"
upstream = "http://127.0.0.1:1"
login = "none"
policy = "zero_trust.rego"
"#;

#[test]
fn the_example_policy_allows_a_compliant_device_with_mfa_and_denies_each_missing_condition()
-> Result<()> {
    let pki = Pki::new()?;
    let files = example_files()?;
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    // The inventory identifies devices by their certificate's subject, so `input.device_id`
    // is the name the policy's data uses.
    let mut all = files.clone();
    all.push(("inventory.json", "[]"));
    let routes =
        format!("[devices]\nsource = \"inventory.json\"\nkey = \"subject\"\n{ZERO_TRUST_ROUTE}");
    let snapshot = load(&pki, &all, &routes)?;

    let allowed = decide(
        &snapshot,
        &facts("api", "device-1122", Some(&["pwd", "mfa"])),
    )?;
    assert_eq!(allowed.outcome, Outcome::Allow, "{}", texts(&allowed));
    assert_eq!(codes(&allowed), ["allowed_by_policy"]);
    assert_eq!(
        allowed.policy.as_ref().map(|p| (&*p.name, p.result)),
        Some(("zero_trust.rego", "allow"))
    );

    for (why, doc) in [
        (
            "no second factor",
            facts("api", "device-1122", Some(&["pwd"])),
        ),
        ("not signed in", facts("api", "device-1122", None)),
        (
            "noncompliant device",
            facts("api", "device-3344", Some(&["mfa"])),
        ),
        (
            "unknown device",
            facts("api", "device-9999", Some(&["mfa"])),
        ),
    ] {
        let denied = decide(&snapshot, &doc)?;
        assert_eq!(denied.outcome, Outcome::Deny, "{why}: {}", texts(&denied));
        assert_eq!(codes(&denied), ["policy_denied"], "{why}");
    }
    Ok(())
}

#[test]
fn without_an_inventory_the_device_id_is_the_certificate_fingerprint() -> Result<()> {
    let pki = Pki::new()?;
    let fingerprint = "ab".repeat(32);
    let data = format!(r#"{{"devices": {{"{fingerprint}": {{"is_compliant": true}}}}}}"#);
    let zero_trust = std::fs::read_to_string(Path::new(EXAMPLE).join("zero_trust.rego"))?;
    let snapshot = load(
        &pki,
        &[
            ("zero_trust.rego", &zero_trust),
            ("data/devices.json", &data),
        ],
        ZERO_TRUST_ROUTE,
    )?;
    let d = decide(&snapshot, &facts("api", "any-name", Some(&["mfa"])))?;
    assert_eq!(d.outcome, Outcome::Allow, "{}", texts(&d));
    Ok(())
}

#[test]
fn the_inventory_is_data_too() -> Result<()> {
    let pki = Pki::new()?;
    let policy = r#"package inv
import rego.v1
default allow := false
allow if data.vigil.devices[input.device_id].owner == input.jwt.email
"#;
    let inventory = r#"[{"subject": "alice-laptop", "compliant": true, "owner": "alice@example.com"},
                       {"subject": "bob-laptop", "compliant": true, "owner": "bob@example.com"}]"#;
    let routes = r#"
[devices]
source = "inventory.json"
key = "subject"

[[route]]
name = "inv"
host = "localhost"
upstream = "http://127.0.0.1:1"
login = "none"
policy = "inv.rego"
"#;
    let snapshot = load(
        &pki,
        &[("inv.rego", policy), ("inventory.json", inventory)],
        routes,
    )?;
    let own = decide(&snapshot, &facts("inv", "alice-laptop", Some(&["pwd"])))?;
    assert_eq!(own.outcome, Outcome::Allow, "{}", texts(&own));
    let other = decide(&snapshot, &facts("inv", "bob-laptop", Some(&["pwd"])))?;
    assert_eq!(other.outcome, Outcome::Deny, "{}", texts(&other));
    Ok(())
}

const GROUP_RULE_AND_POLICY: &str = r#"
[[route]]
name = "both"
host = "localhost"
upstream = "http://127.0.0.1:1"
login = "none"
policy = "mfa.rego"
allow = [{ cert_subject = ["device-*"] }]
"#;

const MFA_POLICY: &str = r#"package mfa
import rego.v1
default allow := false
allow if input.person.mfa
"#;

#[test]
fn rules_and_policy_must_both_allow() -> Result<()> {
    let pki = Pki::new()?;
    let snapshot = load(&pki, &[("mfa.rego", MFA_POLICY)], GROUP_RULE_AND_POLICY)?;

    let both = decide(&snapshot, &facts("both", "device-1", Some(&["mfa"])))?;
    assert_eq!(both.outcome, Outcome::Allow, "{}", texts(&both));
    assert_eq!(codes(&both), ["allowed_by_rule", "allowed_by_policy"]);
    assert_eq!(both.rule, Some(0));

    // The rule refuses: the policy is not asked.
    let rule_denies = decide(&snapshot, &facts("both", "laptop", Some(&["mfa"])))?;
    assert_eq!(rule_denies.outcome, Outcome::Deny);
    assert_eq!(codes(&rule_denies), ["cert_subject_not_allowed"]);
    assert!(rule_denies.policy.is_none());

    // The rule allows, the policy refuses.
    let policy_denies = decide(&snapshot, &facts("both", "device-1", Some(&["pwd"])))?;
    assert_eq!(policy_denies.outcome, Outcome::Deny);
    assert_eq!(
        codes(&policy_denies),
        ["allowed_by_rule", "policy_denied"],
        "{}",
        texts(&policy_denies)
    );
    assert_eq!(policy_denies.rule, None);
    Ok(())
}

#[test]
fn an_object_answer_gives_reasons_read_only_and_headers() -> Result<()> {
    let pki = Pki::new()?;
    let policy = r#"package obj
import rego.v1

default decision := {"allow": false, "reasons": ["only the finance team"]}

decision := {"allow": true, "reasons": ["finance"], "read_only": ro, "headers": {"X-Tenant": "acme"}} if {
    "finance" in input.person.groups
    ro := count({g | some g in input.person.groups; g == "finance-admins"}) == 0
}
"#;
    let routes = r#"
[[route]]
name = "obj"
host = "localhost"
upstream = "http://127.0.0.1:1"
login = "none"
policy = "obj.rego"
policy_query = "data.obj.decision"
"#;
    let snapshot = load(&pki, &[("obj.rego", policy)], routes)?;
    let mut doc = facts("obj", "d", Some(&["pwd"]));
    let denied = decide(&snapshot, &doc)?;
    assert_eq!(denied.outcome, Outcome::Deny);
    assert_eq!(codes(&denied), ["policy_denied", "policy_reason"]);
    assert_eq!(denied.reasons[1].text, "only the finance team");

    doc["person"]["groups"] = json!(["finance"]);
    let reader = decide(&snapshot, &doc)?;
    assert_eq!(reader.outcome, Outcome::Allow, "{}", texts(&reader));
    assert!(reader.read_only);
    assert_eq!(reader.headers, [("x-tenant".to_owned(), "acme".to_owned())]);
    doc["request"]["method"] = json!("POST");
    let writer = decide(&snapshot, &doc)?;
    assert_eq!(writer.outcome, Outcome::Deny);
    assert_eq!(
        codes(&writer),
        ["allowed_by_policy", "policy_reason", "policy_read_only"]
    );

    doc["person"]["groups"] = json!(["finance", "finance-admins"]);
    let admin = decide(&snapshot, &doc)?;
    assert_eq!(admin.outcome, Outcome::Allow, "{}", texts(&admin));
    assert!(!admin.read_only);
    Ok(())
}

/// A policy whose query's value is `answer` (Rego text), on route "bad".
fn answering(pki: &Pki, answer: &str) -> Result<Decision> {
    let policy = format!("package bad\nimport rego.v1\n{answer}\n");
    let routes = r#"
[[route]]
name = "bad"
host = "localhost"
upstream = "http://127.0.0.1:1"
login = "none"
policy = "bad.rego"
"#;
    let snapshot = load(pki, &[("bad.rego", &policy)], routes)?;
    decide(&snapshot, &facts("bad", "d", Some(&["pwd"])))
}

#[test]
fn every_way_a_policy_fails_denies_with_the_reason() -> Result<()> {
    let pki = Pki::new()?;
    let cases: &[(&str, &str, &str)] = &[
        // No rule gives allow a value, and there is no default.
        (
            "allow if input.nothing == 1",
            "policy_undefined",
            "data.bad.allow is undefined",
        ),
        // A runtime error, with where it happened.
        (
            "allow if { x := 1 / 0; x > 0 }",
            "policy_error",
            "bad.rego:3:",
        ),
        (
            "allow if to_number(\"not a number\") > 1",
            "policy_error",
            "bad.rego:3:",
        ),
        (
            "allow := \"yes\"",
            "policy_malformed",
            "a string, not a boolean",
        ),
        (
            "allow := {\"allow\": \"yes\"}",
            "policy_malformed",
            "allow is a string",
        ),
        (
            "allow := {\"allow\": true, \"grant\": \"all\"}",
            "policy_malformed",
            "unknown field",
        ),
        (
            "allow := {\"allow\": true, \"headers\": {\"X-Vigil-User\": \"root\"}}",
            "policy_malformed",
            "one Vigil sets or removes itself",
        ),
        (
            "allow := {\"allow\": true, \"headers\": {\"x-ok\": \"line\\nbreak\"}}",
            "policy_malformed",
            "not a header value",
        ),
    ];
    for (answer, code, text) in cases {
        let d = answering(&pki, answer)?;
        assert_eq!(d.outcome, Outcome::Deny, "{answer}: {}", texts(&d));
        assert_eq!(codes(&d), [*code], "{answer}: {}", texts(&d));
        assert!(texts(&d).contains(text), "{answer}: {}", texts(&d));
    }
    Ok(())
}

#[test]
fn a_policy_that_never_finishes_is_stopped_and_denies() -> Result<()> {
    let pki = Pki::new()?;
    // Ten thousand million iterations, were it let run.
    let endless = "allow if count([1 | some a in numbers.range(1, 100000); some b in numbers.range(1, 100000)]) > 0";
    let started = Instant::now();
    let d = answering(&pki, endless)?;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(d.outcome, Outcome::Deny, "{}", texts(&d));
    assert_eq!(codes(&d), ["policy_budget"], "{}", texts(&d));
    Ok(())
}

#[test]
fn a_policy_that_does_not_compile_is_a_problem_with_file_line_and_column() -> Result<()> {
    let pki = Pki::new()?;
    let routes = r#"
[[route]]
name = "broken"
host = "localhost"
upstream = "http://127.0.0.1:1"
login = "none"
policy = "broken.rego"
"#;
    let out = problems(
        &pki,
        &[(
            "broken.rego",
            "package broken\nimport rego.v1\nallow if {\n  input.x ==\n}\n",
        )],
        routes,
    );
    assert!(out.contains("broken.rego:5:1"), "{out}");
    assert!(out.contains("expecting expression"), "{out}");
    // Where the configuration names it.
    assert!(out.contains("policy = \"broken.rego\""), "{out}");

    let missing = problems(&pki, &[], &routes.replace("broken.rego", "absent.rego"));
    assert!(missing.contains("absent.rego"), "{missing}");

    let no_rule = problems(
        &pki,
        &[("q.rego", "package q\nimport rego.v1\nallow := true\n")],
        &routes.replace("broken.rego", "q.rego").replace(
            "policy = \"q.rego\"",
            "policy = \"q.rego\"\npolicy_query = \"data.q.nothing\"",
        ),
    );
    assert!(no_rule.contains("names no rule"), "{no_rule}");

    let bad_data = problems(
        &pki,
        &[
            ("q.rego", "package q\nimport rego.v1\nallow := true\n"),
            ("d/a.json", "{\"x\": 1}"),
            ("d/b.json", "{\"x\": 2}"),
            ("d/c.json", "[1]"),
        ],
        &format!(
            "[policy]\ndata = [\"d/*.json\"]\n{}",
            routes.replace("broken.rego", "q.rego")
        ),
    );
    assert!(bad_data.contains("data.x is defined twice"), "{bad_data}");
    assert!(bad_data.contains("must be an object"), "{bad_data}");
    Ok(())
}

#[test]
fn a_shadow_policy_is_compared_and_never_changes_the_answer() -> Result<()> {
    let pki = Pki::new()?;
    let next = r#"package mfa
import rego.v1
default allow := false
allow if {
    input.person.mfa
    input.request.method == "GET"
}
"#;
    let routes = GROUP_RULE_AND_POLICY.replace(
        "policy = \"mfa.rego\"",
        "policy = \"mfa.rego\"\nshadow_policy = \"mfa-next.rego\"",
    );
    let snapshot = load(
        &pki,
        &[("mfa.rego", MFA_POLICY), ("mfa-next.rego", next)],
        &routes,
    )?;
    let mut doc = facts("both", "device-1", Some(&["mfa"]));
    let agree = decide(&snapshot, &doc)?;
    assert_eq!(agree.outcome, Outcome::Allow);
    assert!(agree.shadow.as_ref().is_some_and(|s| s.agrees));

    doc["request"]["method"] = json!("POST");
    let differ = decide(&snapshot, &doc)?;
    assert_eq!(differ.outcome, Outcome::Allow, "{}", texts(&differ));
    let shadow = differ.shadow.as_ref().expect("a shadow decision");
    assert!(!shadow.agrees);
    assert_eq!(shadow.decision, Outcome::Deny);
    assert!(
        shadow
            .reasons
            .iter()
            .any(|r| r.text == "denied by policy mfa-next.rego"),
        "{:?}",
        shadow.reasons
    );
    Ok(())
}

#[test]
fn audit_mode_lets_a_policy_denial_through_and_logs_it() -> Result<()> {
    let pki = Pki::new()?;
    let routes = GROUP_RULE_AND_POLICY.replace(
        "policy = \"mfa.rego\"",
        "policy = \"mfa.rego\"\naudit = true",
    );
    let snapshot = load(&pki, &[("mfa.rego", MFA_POLICY)], &routes)?;
    let d = decide(&snapshot, &facts("both", "device-1", Some(&["pwd"])))?;
    assert_eq!(d.outcome, Outcome::Audit);
    assert!(codes(&d).contains(&"policy_denied"));
    Ok(())
}

const WORKLOAD_POLICY: &str = r#"package workloads
import rego.v1

default decision := {"allow": false, "reasons": ["this workload may not call the orders API"]}

decision := {"allow": true, "headers": {"X-Tenant": tenant}} if {
    startswith(input.spiffe_id, "spiffe://example.org/ns/frontend/")
    input.method in {"GET", "HEAD"}
    tenant := input.parsed_path[0]
}
"#;

const WORKLOAD_NEXT: &str = r#"package workloads
import rego.v1

default decision := false

decision if input.certificate.spiffe_id == "spiffe://example.org/ns/batch/sa/job"
"#;

#[tokio::test]
async fn workloads_through_a_rego_route_by_their_spiffe_id() -> Result<()> {
    let pki = Pki::new()?;
    std::fs::write(pki.path("workloads.rego"), WORKLOAD_POLICY)?;
    std::fs::write(pki.path("workloads-next.rego"), WORKLOAD_NEXT)?;
    let (upstream, _stop) = echo_upstream().await?;
    let decisions = pki.path("decisions.log");
    let text = base_config("", &decisions)
        + &format!(
            r#"
[[route]]
name = "orders"
host = "localhost"
upstream = "http://{upstream}"
login = "none"
policy = "workloads.rego"
policy_query = "data.workloads.decision"
shadow_policy = "workloads-next.rego"
shadow_policy_query = "data.workloads.decision"
"#
        );
    let running = spawn(&pki, &text).await?;
    let as_id = |id: &vigil::certs::Issued| {
        client_config(Some(id), pki.ca.cert_pem(), &[b"http/1.1"]).expect("client config")
    };
    let web = pki.workload(SPIFFE_WEB)?;
    let batch = pki.workload(SPIFFE_BATCH)?;

    // Allowed, with the policy's header upstream, in place of one the client sent.
    let reply = get(
        running.addr,
        as_id(&web),
        "/acme/orders",
        "X-Tenant: evil\r\n",
    )
    .await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    let tenants: Vec<_> = reply
        .upstream_headers()
        .into_iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("x-tenant"))
        .collect();
    assert_eq!(tenants, [("x-tenant".to_owned(), "acme".to_owned())]);
    let id = reply.header("x-request-id").unwrap_or_default();
    let line = decision_for(&decisions, &id).await.expect("decision line");
    assert_eq!(line["decision"], "allow");
    assert_eq!(line["policy"]["name"], "workloads.rego");
    assert_eq!(line["policy"]["result"], "allow");
    // The shadow policy would deny the frontend: a disagreement, logged.
    assert_eq!(line["shadow"]["decision"], "deny", "{line}");
    assert_eq!(line["shadow"]["policy"], "workloads-next.rego");

    // Denied: the policy's reason is in the log and in the answer.
    let denied = get(running.addr, as_id(&batch), "/acme/orders", "").await?;
    assert_eq!(denied.status, 403, "{denied:?}");
    assert!(
        denied
            .body
            .contains("this workload may not call the orders API"),
        "{}",
        denied.body
    );
    let id = denied.header("x-request-id").unwrap_or_default();
    let line = decision_for(&decisions, &id).await.expect("decision line");
    assert_eq!(line["codes"], json!(["policy_denied", "policy_reason"]));
    assert_eq!(line["shadow"]["decision"], "allow", "{line}");

    // A method the policy does not allow, from the allowed workload.
    let post = raw(
        running.addr,
        as_id(&web),
        "localhost",
        "POST /acme/orders HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await?;
    assert_eq!(post.status, 403);

    let text = metrics(&running).await?;
    for series in [
        r#"vigil_policy_evaluations_total{route="orders",policy="workloads.rego",role="enforced",result="allow"} 1"#,
        r#"vigil_policy_evaluations_total{route="orders",policy="workloads.rego",role="enforced",result="deny"} 2"#,
        r#"vigil_policy_evaluations_total{route="orders",policy="workloads.rego",role="enforced",result="error"} 0"#,
        r#"vigil_policy_evaluations_total{route="orders",policy="workloads-next.rego",role="shadow",result="allow"} 1"#,
        r#"vigil_policy_shadow_disagreements_total{route="orders",policy="workloads-next.rego",enforced="allow",shadow="deny"} 1"#,
        r#"vigil_policy_evaluation_seconds_count{route="orders",policy="workloads.rego",role="enforced"} 3"#,
    ] {
        assert!(text.contains(series), "{series} missing from:\n{text}");
    }
    Ok(())
}

#[tokio::test]
async fn people_through_the_example_policy_with_the_real_provider() -> Result<()> {
    let files = tempfile::tempdir()?;
    std::fs::create_dir(files.path().join("data"))?;
    std::fs::copy(
        Path::new(EXAMPLE).join("zero_trust.rego"),
        files.path().join("zero_trust.rego"),
    )?;
    std::fs::write(
        files.path().join("data/device_db.json"),
        r#"{"devices": {"alice-laptop": {"is_compliant": true}, "bob-laptop": {"is_compliant": false}}}"#,
    )?;
    std::fs::write(files.path().join("inventory.json"), "[]")?;
    let dir = files.path().display();
    let extra = format!(
        "\n[devices]\nsource = \"{dir}/inventory.json\"\nkey = \"subject\"\n\n[policy]\ndata = [\"{dir}/data/*.json\"]\n"
    );
    let route = format!(
        r#"
[[route]]
name = "zt"
host = "localhost"
path = "/zt"
upstream = "http://UPSTREAM"
login = "oidc"
policy = "{dir}/zero_trust.rego"
"#
    );
    let w = support::world::world_full(&extra, false, "", &route).await?;
    // The example asks for "mfa" in amr, as its provider writes it.
    w.idp.set_amr(support::idp::ALICE, &["pwd", "mfa"]).await?;

    let (alice, _) = w
        .sign_in(&w.alice_laptop, "/zt/page", support::idp::ALICE)
        .await?;
    let reply = w.visit(&w.alice_laptop, "/zt/page", &alice).await?;
    assert_eq!(reply.status, 200, "{reply:?}");

    // Bob signs in with a password alone, from a noncompliant laptop.
    let (bob, _) = w
        .sign_in(&w.bob_laptop, "/zt/page", support::idp::BOB)
        .await?;
    let reply = w.visit(&w.bob_laptop, "/zt/page", &bob).await?;
    assert_eq!(reply.status, 403, "{reply:?}");
    let id = reply.header("x-request-id").unwrap_or_default();
    let line = decision_for(&w.decisions, &id)
        .await
        .expect("decision line");
    assert_eq!(line["codes"], json!(["policy_denied"]), "{line}");
    assert!(
        line["policy"]["name"]
            .as_str()
            .is_some_and(|n| n.ends_with("zero_trust.rego")),
        "{line}"
    );
    Ok(())
}

fn vigil_policy_test(args: &[&std::ffi::OsStr]) -> Result<(i32, String)> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["policy", "test"])
        .args(args)
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

#[test]
fn the_policy_test_runner_passes_the_examples_and_fails_what_fails() -> Result<()> {
    let (code, out) = vigil_policy_test(&[EXAMPLE.as_ref(), "--verbose".as_ref()])?;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("PASS: 5/5"), "{out}");
    assert!(
        out.contains("test_a_device_that_turns_noncompliant_is_denied: PASS"),
        "{out}"
    );

    // A failing test, an erroring one and a passing one, with `with` on data.
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("p.rego"),
        "package p\nimport rego.v1\ndefault allow := false\nallow if data.open\n",
    )?;
    std::fs::write(dir.path().join("d.json"), r#"{"open": false}"#)?;
    std::fs::write(
        dir.path().join("p_test.rego"),
        r#"package p_test
import rego.v1
import data.p

test_closed_by_default if not p.allow
test_open_with_data if p.allow with data.open as true
test_wrong if p.allow
test_error if 1 / 0 > 0
"#,
    )?;
    let (code, out) = vigil_policy_test(&[dir.path().as_os_str()])?;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("data.p_test.test_wrong: FAIL (undefined)"),
        "{out}"
    );
    assert!(out.contains("data.p_test.test_error: FAIL ("), "{out}");
    assert!(out.contains("p_test.rego:8:"), "{out}");
    assert!(out.contains("PASS: 2/4"), "{out}");
    assert!(
        !out.contains("test_open_with_data"),
        "passing tests listed: {out}"
    );

    let (code, out) =
        vigil_policy_test(&[dir.path().as_os_str(), "--format".as_ref(), "json".as_ref()])?;
    assert_eq!(code, 1, "{out}");
    let report: Value = serde_json::from_str(&out)?;
    assert_eq!(report["passed"], 2);
    assert_eq!(report["failed"], 2);

    // A policy that does not parse: exit 2, with where.
    std::fs::write(dir.path().join("broken.rego"), "package b\nallow if {\n")?;
    let (code, out) = vigil_policy_test(&[dir.path().as_os_str()])?;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("broken.rego:"), "{out}");

    let empty = tempfile::tempdir()?;
    let (code, out) = vigil_policy_test(&[empty.path().as_os_str()])?;
    assert_eq!(code, 2, "{out}");
    Ok(())
}

#[test]
fn explain_names_the_policy_and_what_it_answered() -> Result<()> {
    let pki = Pki::new()?;
    let routes = GROUP_RULE_AND_POLICY.replace(
        "policy = \"mfa.rego\"",
        "policy = \"mfa.rego\"\nshadow_policy = \"mfa.rego\"",
    );
    std::fs::write(pki.path("mfa.rego"), MFA_POLICY)?;
    let config = pki.path("vigil.toml");
    std::fs::write(
        &config,
        base_config("", &pki.path("decisions.jsonl")) + &routes,
    )?;
    let input = pki.path("facts.json");
    std::fs::write(
        &input,
        facts("both", "device-1", Some(&["pwd"])).to_string(),
    )?;
    let run = |format: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["policy", "explain", "--config"])
            .arg(&config)
            .arg("--input")
            .arg(&input)
            .args(["--format", format])
            .output()
    };
    let json_out = run("json")?;
    assert_eq!(json_out.status.code(), Some(2));
    let report: Value = serde_json::from_slice(&json_out.stdout)?;
    assert_eq!(report["decision"], "deny");
    assert_eq!(report["policy"]["name"], "mfa.rego");
    assert_eq!(report["policy"]["query"], "data.mfa.allow");
    assert_eq!(report["policy"]["result"], "deny");
    assert_eq!(report["shadow"]["agrees"], true);
    assert_eq!(report["codes"], json!(["allowed_by_rule", "policy_denied"]));
    let text = String::from_utf8(run("text")?.stdout)?;
    assert!(
        text.contains("policy:    mfa.rego (data.mfa.allow): deny"),
        "{text}"
    );
    Ok(())
}

/// Writes `text` to `path` through a rename, as an editor or a deployment would.
fn replace(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[tokio::test]
async fn policy_and_data_files_reload_on_change_and_a_broken_policy_keeps_the_old_one() -> Result<()>
{
    let pki = Pki::new()?;
    let policy = "package gate\nimport rego.v1\ndefault allow := false\nallow if input.spiffe_id in data.gate.callers\n";
    std::fs::write(pki.path("gate.rego"), policy)?;
    std::fs::create_dir(pki.path("data"))?;
    std::fs::write(
        pki.path("data/gate.json"),
        json!({ "gate": { "callers": [SPIFFE_WEB] } }).to_string(),
    )?;
    let (upstream, _stop) = echo_upstream().await?;
    let text = base_config("", &pki.path("decisions.log"))
        + &format!(
            "\n[policy]\ndata = [\"data/*.json\"]\n\n[[route]]\nname = \"gate\"\nhost = \"localhost\"\nupstream = \"http://{upstream}\"\nlogin = \"none\"\npolicy = \"gate.rego\"\n"
        );
    let config = pki.path("vigil.toml");
    std::fs::write(&config, text)?;
    let running = vigil::start_file(&config).await?;
    let web = client_config(Some(&pki.workload(SPIFFE_WEB)?), pki.ca.cert_pem(), &[])?;
    let batch = client_config(Some(&pki.workload(SPIFFE_BATCH)?), pki.ca.cert_pem(), &[])?;
    let status = |c: &rustls::ClientConfig| {
        let c = c.clone();
        let addr = running.addr;
        async move { get(addr, c, "/x", "").await.map(|r| r.status).unwrap_or(0) }
    };
    assert_eq!(status(&web).await, 200);
    assert_eq!(status(&batch).await, 403);

    // New data: the batch job may call too.
    let generation = running.shared.snapshot.load().generation;
    replace(
        &pki.path("data/gate.json"),
        &json!({ "gate": { "callers": [SPIFFE_WEB, SPIFFE_BATCH] } }).to_string(),
    )?;
    let reloaded = eventually(Duration::from_secs(10), || async {
        running.shared.snapshot.load().generation > generation
    })
    .await;
    assert!(reloaded, "a data change did not reload");
    assert_eq!(status(&batch).await, 200);

    // A new policy: nobody but the web frontend.
    let generation = running.shared.snapshot.load().generation;
    replace(
        &pki.path("gate.rego"),
        &format!(
            "package gate\nimport rego.v1\ndefault allow := false\nallow if input.spiffe_id == \"{SPIFFE_WEB}\"\n"
        ),
    )?;
    let reloaded = eventually(Duration::from_secs(10), || async {
        running.shared.snapshot.load().generation > generation
    })
    .await;
    assert!(reloaded, "a policy change did not reload");
    assert_eq!(status(&batch).await, 403);
    assert_eq!(status(&web).await, 200);

    // A policy that does not compile: refused, the last one keeps serving.
    let failures = metric(&running, "vigil_config_reload_failures_total").await?;
    replace(&pki.path("gate.rego"), "package gate\nallow if {\n")?;
    let refused = eventually(Duration::from_secs(10), || async {
        metric(&running, "vigil_config_reload_failures_total")
            .await
            .is_ok_and(|n| n > failures)
    })
    .await;
    assert!(refused, "a broken policy was not refused");
    assert_eq!(status(&web).await, 200);
    assert_eq!(status(&batch).await, 403);
    Ok(())
}

#[test]
fn a_policy_sees_the_time_of_the_decision() -> Result<()> {
    let pki = Pki::new()?;
    // 1795426200 is Monday 23 November 2026, 09:30 UTC: 10:30 in Paris.
    let policy = r#"package clock
import rego.v1
default allow := false
allow if {
    time.weekday(input.time_ns) == "Monday"
    [hour, _, _] := time.clock([input.time_ns, "Europe/Paris"])
    hour >= 10
}
"#;
    let routes = r#"
[[route]]
name = "clock"
host = "localhost"
upstream = "http://127.0.0.1:1"
login = "none"
policy = "clock.rego"
"#;
    let snapshot = load(&pki, &[("clock.rego", policy)], routes)?;
    let mut doc = facts("clock", "d", None);
    let d = decide(&snapshot, &doc)?;
    assert_eq!(d.outcome, Outcome::Allow, "{}", texts(&d));
    // An hour earlier it is 09:30 in Paris.
    doc["time"] = json!(1_795_426_200 - 3600);
    let d = decide(&snapshot, &doc)?;
    assert_eq!(d.outcome, Outcome::Deny, "{}", texts(&d));
    Ok(())
}

#[test]
fn a_policy_sees_the_grants_in_force_and_the_block() -> Result<()> {
    let pki = Pki::new()?;
    let policy = r#"package jit
import rego.v1
default allow := false
allow if {
    some g in input.grants
    g.route == input.request.route
    g.subject.spiffe == input.certificate.spiffe_id
    input.block == null
}
"#;
    let snapshot = load(
        &pki,
        &[("jit.rego", policy)],
        "[[route]]\nname = \"r\"\nhost = \"localhost\"\nupstream = \"http://127.0.0.1:9\"\nlogin = \"none\"\npolicy = \"jit.rego\"\ngrants = { max = \"1h\", approvers = { groups = [\"ops\"] } }\n",
    )?;
    let mut doc = facts("r", "job", None);
    doc["certificate"]["spiffe_id"] = json!("spiffe://example.org/ns/batch/sa/job");
    assert_eq!(decide(&snapshot, &doc)?.outcome, Outcome::Deny);
    doc["grants"] = json!([{
        "id": "g1", "subject": {"spiffe": "spiffe://example.org/ns/batch/sa/job"},
        "route": "r", "reason": "backfill", "requested_by": "ticket", "approved_by": "ops",
        "created_at": 1_795_426_000, "expires_at": 1_795_429_800
    }]);
    assert_eq!(decide(&snapshot, &doc)?.outcome, Outcome::Allow);
    doc["block"] = json!({
        "subject": {"address": "127.0.0.1"}, "reason": "11 denials in 1h", "by": "denials",
        "since": 1_795_426_000, "until": 1_795_429_800
    });
    let blocked = decide(&snapshot, &doc)?;
    assert_eq!(codes(&blocked), ["blocked"]);
    Ok(())
}
