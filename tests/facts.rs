//! The facts document: `docs/facts.schema.json`, `docs/facts.example.json` (the example of
//! `docs/facts.md`), `vigil::policy::facts::Document` and `vigil policy explain --input` agree.

use anyhow::{Context as _, Result};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use vigil::policy::facts::Document;

fn docs(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join(name)
}

fn example() -> Result<Value> {
    let text = std::fs::read(docs("facts.example.json"))?;
    Ok(serde_json::from_slice(&text)?)
}

/// The compiled schema, with format assertions on (`network.source` is an IP address).
struct Schema {
    schemas: boon::Schemas,
    index: boon::SchemaIndex,
}

impl Schema {
    fn load() -> Result<Self> {
        let mut schemas = boon::Schemas::new();
        let mut compiler = boon::Compiler::new();
        compiler.enable_format_assertions();
        let path = docs("facts.schema.json");
        let index = compiler
            .compile(path.to_str().context("path")?, &mut schemas)
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        Ok(Self { schemas, index })
    }

    fn check(&self, value: &Value) -> Result<(), String> {
        self.schemas
            .validate(value, self.index)
            .map_err(|e| format!("{e}"))
    }
}

fn read(value: &Value) -> Result<Document, String> {
    serde_json::from_value(value.clone()).map_err(|e| e.to_string())
}

/// The facts of `value` as the decision sees them, written back as JSON.
fn round_trip(value: &Value, now: i64) -> Result<Value> {
    let doc = read(value).map_err(anyhow::Error::msg)?;
    Ok(serde_json::to_value(doc.facts(now))?)
}

/// Sets (or, with `None`, removes) the field at `path` of `value`.
fn edit(value: &Value, path: &[&str], new: Option<Value>) -> Value {
    let mut out = value.clone();
    let (last, parents) = path.split_last().expect("a path");
    let mut at = &mut out;
    for p in parents {
        at = at.get_mut(*p).expect("the path exists");
    }
    let object = at.as_object_mut().expect("an object");
    match new {
        Some(v) => {
            object.insert((*last).to_owned(), v);
        }
        None => {
            object.remove(*last);
        }
    }
    out
}

/// The smallest document: only what is required.
fn minimal() -> Value {
    json!({
        "request": { "host": "api.example.com", "method": "GET", "path": "/v1/orders" },
        "certificate": {
            "subject": "CN=orders",
            "issuer": "CN=Example CA",
            "serial": "01",
            "fingerprint": "00".repeat(32),
            "not_before": 0,
            "not_after": 1
        },
        "network": { "source": "10.0.0.5" }
    })
}

/// The facts a decision line keeps of the example are valid against the schema, read back as a
/// document, and leave out what privacy leaves out.
#[test]
fn the_facts_a_decision_line_keeps_are_a_valid_document() -> Result<()> {
    let schema = Schema::load()?;
    let doc = read(&example()?).map_err(anyhow::Error::msg)?;
    let rule = vigil::policy::Rule {
        headers: vec![("accept".into(), Vec::new())],
        claims: vec![("department".into(), Vec::new())],
        ..Default::default()
    };
    let route = vigil::policy::RoutePolicy::new("wiki", vec![rule]);
    let kept = serde_json::to_value(doc.facts(0).kept(Some(&route)))?;
    schema.check(&kept).map_err(anyhow::Error::msg)?;
    read(&kept).map_err(anyhow::Error::msg)?;
    assert_eq!(
        kept["request"]["headers"],
        json!({ "accept": ["text/html"] })
    );
    assert_eq!(
        kept["person"]["claims"],
        json!({ "department": "engineering" })
    );
    assert_eq!(kept["person"]["source"], json!({ "kind": "session" }));
    assert!(kept["person"].get("name").is_none());
    assert!(kept["device"].get("owner").is_none());
    Ok(())
}

#[test]
fn the_example_is_valid_and_reads_as_a_document() -> Result<()> {
    let schema = Schema::load()?;
    let example = example()?;
    schema.check(&example).map_err(anyhow::Error::msg)?;
    let doc = read(&example).map_err(anyhow::Error::msg)?;
    assert_eq!(doc.time, Some(1_795_426_200));
    assert_eq!(doc.request.route.as_deref(), Some("wiki"));
    assert!(doc.person.as_ref().is_some_and(|p| p.mfa));
    assert!(doc.device.as_ref().is_some_and(|d| d.compliant));

    // docs/facts.md shows the same example.
    let page = std::fs::read_to_string(docs("facts.md"))?;
    let shown = page
        .split("```json\n")
        .nth(1)
        .and_then(|block| block.split("\n```").next())
        .context("a JSON example in facts.md")?;
    let shown: Value = serde_json::from_str(shown)?;
    assert_eq!(shown, example);
    Ok(())
}

#[test]
fn the_facts_written_back_are_valid_and_the_example_lists_every_field() -> Result<()> {
    let schema = Schema::load()?;
    let example = example()?;
    // The example gives every field, in the form Vigil writes: the facts are the example.
    let facts = round_trip(&example, 0)?;
    schema.check(&facts).map_err(anyhow::Error::msg)?;
    assert_eq!(facts, example);

    // Everything optional left out: the facts say so with nulls and empty lists, and the
    // time is the reader's.
    let facts = round_trip(&minimal(), 1234)?;
    schema.check(&facts).map_err(anyhow::Error::msg)?;
    assert_eq!(facts["time"], 1234);
    for null in [
        "/person",
        "/device",
        "/risk",
        "/request/route",
        "/network/country",
        "/certificate/spiffe_id",
        "/certificate/common_name",
    ] {
        assert_eq!(facts.pointer(null), Some(&Value::Null), "{null}: {facts}");
    }
    assert_eq!(facts["certificate"]["dns"], json!([]));

    // A bearer token's service, and other forms the reader normalises.
    let bearer = edit(
        &edit(
            &example,
            &["person"],
            Some(json!({
                "subject": "orders-service",
                "claims": { "scope": "orders:read", "exp": 1_795_429_800 },
                "source": { "kind": "bearer", "client_id": "orders", "scopes": ["orders:read"] }
            })),
        ),
        &["certificate", "fingerprint"],
        Some(json!(
            "5A:96:29:02:82:D3:80:E5:E9:C8:15:5E:2B:90:2A:DD:8D:53:24:14:56:2A:DF:51:31:D1:6E:81:F7:34:90:F6"
        )),
    );
    schema.check(&bearer).map_err(anyhow::Error::msg)?;
    let facts = round_trip(&bearer, 0)?;
    schema.check(&facts).map_err(anyhow::Error::msg)?;
    assert_eq!(
        facts["certificate"]["fingerprint"],
        example["certificate"]["fingerprint"]
    );
    assert_eq!(facts["person"]["source"]["kind"], "bearer");
    assert_eq!(facts["person"]["mfa"], false);
    assert_eq!(facts["person"]["verified_at"], 0);
    Ok(())
}

#[test]
fn both_refuse_what_the_reader_refuses() -> Result<()> {
    let schema = Schema::load()?;
    let example = example()?;
    let cases: Vec<(&str, Value)> = vec![
        (
            "unknown top-level field",
            edit(&example, &["decision"], Some(json!("allow"))),
        ),
        (
            "unknown request field",
            edit(&example, &["request", "query"], Some(json!("a=1"))),
        ),
        (
            "unknown certificate field",
            edit(
                &example,
                &["certificate", "fingerprint_hex"],
                Some(example["certificate"]["fingerprint"].clone()),
            ),
        ),
        (
            "unknown person field",
            edit(&example, &["person", "roles"], Some(json!([]))),
        ),
        (
            "unknown source field",
            edit(
                &example,
                &["person", "source", "client_id"],
                Some(json!("x")),
            ),
        ),
        (
            "unknown network field",
            edit(&example, &["network", "port"], Some(json!(443))),
        ),
        (
            "short fingerprint",
            edit(
                &example,
                &["certificate", "fingerprint"],
                Some(json!("5a96")),
            ),
        ),
        (
            "non-hex fingerprint",
            edit(
                &example,
                &["certificate", "fingerprint"],
                Some(json!("zz".repeat(32))),
            ),
        ),
        (
            "long fingerprint",
            edit(
                &example,
                &["certificate", "fingerprint"],
                Some(json!("ab".repeat(33))),
            ),
        ),
        (
            "non-hex serial",
            edit(&example, &["certificate", "serial"], Some(json!("12-34"))),
        ),
        (
            "empty serial",
            edit(&example, &["certificate", "serial"], Some(json!(""))),
        ),
        (
            "bad SPIFFE ID",
            edit(
                &example,
                &["certificate", "spiffe_id"],
                Some(json!("spiffe://Example.org/a")),
            ),
        ),
        (
            "SPIFFE ID with a .. segment",
            edit(
                &example,
                &["certificate", "spiffe_id"],
                Some(json!("spiffe://example.org/a/..")),
            ),
        ),
        ("no request", edit(&example, &["request"], None)),
        ("no host", edit(&example, &["request", "host"], None)),
        (
            "no certificate fingerprint",
            edit(&example, &["certificate", "fingerprint"], None),
        ),
        ("no network", edit(&example, &["network"], None)),
        (
            "no person subject",
            edit(&example, &["person", "subject"], None),
        ),
        (
            "no source kind",
            edit(&example, &["person", "source", "kind"], None),
        ),
        (
            "no device compliant",
            edit(&example, &["device", "compliant"], None),
        ),
        (
            "no risk signals",
            edit(&example, &["risk", "signals"], None),
        ),
        (
            "unknown risk level",
            edit(&example, &["risk", "level"], Some(json!("severe"))),
        ),
        (
            "negative score",
            edit(&example, &["risk", "score"], Some(json!(-1))),
        ),
        (
            "unknown source kind",
            edit(
                &example,
                &["person", "source", "kind"],
                Some(json!("cookie")),
            ),
        ),
        (
            "source not an address",
            edit(
                &example,
                &["network", "source"],
                Some(json!("wiki.example.com")),
            ),
        ),
        (
            "source with a zone",
            edit(
                &example,
                &["network", "source"],
                Some(json!("fe80::1%eth0")),
            ),
        ),
        (
            "time as text",
            edit(&example, &["time"], Some(json!("1795426200"))),
        ),
        (
            "groups null",
            edit(&example, &["person", "groups"], Some(Value::Null)),
        ),
        (
            "source null",
            edit(&example, &["person", "source"], Some(Value::Null)),
        ),
        (
            "dns null",
            edit(&example, &["certificate", "dns"], Some(Value::Null)),
        ),
        (
            "os without a version",
            edit(&example, &["device", "os", "version"], None),
        ),
        (
            "an upper-case header name",
            edit(
                &example,
                &["request", "headers"],
                Some(json!({ "Accept": ["*/*"] })),
            ),
        ),
        (
            "a header name with a space",
            edit(
                &example,
                &["request", "headers"],
                Some(json!({ "x y": ["1"] })),
            ),
        ),
        (
            "a header value with a line break",
            edit(
                &example,
                &["request", "headers"],
                Some(json!({ "x-a": ["1\r\nx-b: 2"] })),
            ),
        ),
        (
            "a header value beyond ASCII",
            edit(
                &example,
                &["request", "headers"],
                Some(json!({ "x-a": ["é"] })),
            ),
        ),
        (
            "a header value that is not a list",
            edit(
                &example,
                &["request", "headers"],
                Some(json!({ "accept": "*/*" })),
            ),
        ),
    ];
    for (what, doc) in &cases {
        assert!(
            schema.check(doc).is_err(),
            "the schema accepts a document with {what}"
        );
        assert!(read(doc).is_err(), "Document reads a document with {what}");
    }

    // And both accept what the reader takes: nulls for what may be absent, and fields a
    // device record or a risk assessment carries beyond Vigil's (ignored).
    let accepted: Vec<(&str, Value)> = vec![
        ("time null", edit(&example, &["time"], Some(Value::Null))),
        ("no time", edit(&example, &["time"], None)),
        (
            "route null",
            edit(&example, &["request", "route"], Some(Value::Null)),
        ),
        (
            "person null",
            edit(&example, &["person"], Some(Value::Null)),
        ),
        (
            "device null",
            edit(&example, &["device"], Some(Value::Null)),
        ),
        ("risk null", edit(&example, &["risk"], Some(Value::Null))),
        ("no source", edit(&example, &["person", "source"], None)),
        (
            "headers null",
            edit(&example, &["request", "headers"], Some(Value::Null)),
        ),
        ("no headers", edit(&example, &["request", "headers"], None)),
        (
            "a header twice, with a tab",
            edit(
                &example,
                &["request", "headers"],
                Some(json!({ "cookie": ["a=1", "b=\t2"], "x-empty": [""] })),
            ),
        ),
        (
            "session without sid",
            edit(
                &example,
                &["person", "source"],
                Some(json!({ "kind": "session" })),
            ),
        ),
        (
            "device field of the export",
            edit(&example, &["device", "serial_number"], Some(json!("C02X"))),
        ),
        (
            "risk field beyond Vigil's",
            edit(&example, &["risk", "engine"], Some(json!("v2"))),
        ),
        (
            "IPv6 source",
            edit(&example, &["network", "source"], Some(json!("2001:db8::7"))),
        ),
        (
            "upper-case fingerprint",
            edit(
                &example,
                &["certificate", "fingerprint"],
                Some(json!(
                    "5A96290282D380E5E9C8155E2B902ADD8D532414562ADF5131D16E81F73490F6"
                )),
            ),
        ),
        (
            "colon serial",
            edit(
                &example,
                &["certificate", "serial"],
                Some(json!("48:6C:98")),
            ),
        ),
        (
            "SPIFFE ID",
            edit(
                &example,
                &["certificate", "spiffe_id"],
                Some(json!("spiffe://example.org/ns/web/sa/..x")),
            ),
        ),
    ];
    for (what, doc) in &accepted {
        schema
            .check(doc)
            .map_err(|e| anyhow::anyhow!("the schema refuses {what}: {e}"))?;
        let facts = round_trip(doc, 0).with_context(|| format!("Document refuses {what}"))?;
        schema
            .check(&facts)
            .map_err(|e| anyhow::anyhow!("the facts of {what} are not valid: {e}"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// `vigil policy explain --input`
// ---------------------------------------------------------------------------

fn vigil() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vigil"))
}

/// A configuration whose `wiki` route the example's request takes: people in `staff` on a
/// compliant macOS 14 device; a risk of `medium` asks for a step-up.
const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"

[tls]
cert = "server.pem"
key = "server.key"
client_ca = ["ca.pem"]
crl = ["ca.crl"]

[oidc]
issuer = "https://idp.example.com"
client_id = "vigil"
client_secret_file = "oidc.secret"

[session]
keys_file = "session.keys"

[devices]
source = "devices.json"

[risk]
trusted_networks = ["10.0.0.0/8"]

[[route]]
name = "wiki"
host = "wiki.example.com"
upstream = "http://127.0.0.1:9"
login = "oidc"
allow = [{ groups = ["staff"], device = "compliant", min_os = { macOS = "14.0" } }]
risk = { low = "allow", medium = "step_up", high = "deny" }
"#;

struct Explain {
    dir: tempfile::TempDir,
}

impl Explain {
    fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let out = vigil()
            .args(["certs", "init", "--dir"])
            .arg(dir.path())
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = vigil()
            .args(["keys", "session"])
            .arg(dir.path().join("session.keys"))
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(dir.path().join("oidc.secret"), "not-a-secret\n")?;
        std::fs::write(dir.path().join("devices.json"), r#"{"devices": []}"#)?;
        std::fs::write(dir.path().join("vigil.toml"), CONFIG)?;
        Ok(Self { dir })
    }

    /// Runs explain on the document at `input`: the exit code, the report and the errors.
    fn run(&self, input: &Path) -> Result<(i32, Value, String)> {
        let out = vigil()
            .args(["policy", "explain", "--format", "json", "--config"])
            .arg(self.dir.path().join("vigil.toml"))
            .arg("--input")
            .arg(input)
            .output()?;
        let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        Ok((out.status.code().unwrap_or(-1), report, stderr))
    }

    fn run_doc(&self, doc: &Value) -> Result<(i32, Value, String)> {
        let path = self.dir.path().join("facts.json");
        std::fs::write(&path, serde_json::to_vec_pretty(doc)?)?;
        self.run(&path)
    }
}

#[test]
fn explain_decides_the_example() -> Result<()> {
    let explain = Explain::new()?;
    let example = example()?;

    let (code, report, stderr) = explain.run(&docs("facts.example.json"))?;
    assert_eq!(code, 0, "{report}{stderr}");
    assert_eq!(report["decision"], "allow", "{report}");
    assert_eq!(report["status"], 200);
    assert_eq!(report["route"], "wiki");
    assert_eq!(report["login"], "oidc");
    assert_eq!(report["rule"], 1);
    assert_eq!(report["read_only"], false);
    assert_eq!(report["mode"], "enforce");
    assert_eq!(report["reasons"], json!(["allowed by rule 1"]));
    assert_eq!(report["note"], Value::Null);
    assert_eq!(report["risk"], example["risk"]);
    assert_eq!(report["path"], "/pages/onboarding");
    assert_eq!(
        report["certificate"]["fingerprint_sha256"],
        example["certificate"]["fingerprint"]
    );
    assert_eq!(report["device_inventory"], example["device"]);
    // Everything given is decided as given.
    assert_eq!(report["facts"], example);

    // Without a route and a risk: the route is found from host and path, and the risk is
    // assessed from the document's own facts, to the same as the example's.
    let open = edit(
        &edit(&example, &["request", "route"], None),
        &["risk"],
        None,
    );
    let (code, report, stderr) = explain.run_doc(&open)?;
    assert_eq!(code, 0, "{report}{stderr}");
    assert_eq!(report["facts"]["request"]["route"], "wiki");
    assert_eq!(report["risk"], example["risk"], "{report}");
    assert!(
        report["note"]
            .as_str()
            .is_some_and(|n| n.contains("risk assessed")),
        "{report}"
    );

    // Without a time: now.
    let before = vigil::identity::now();
    let (_, report, _) = explain.run_doc(&edit(&example, &["time"], None))?;
    let after = vigil::identity::now();
    let time = report["facts"]["time"].as_i64().context("time")?;
    assert!(
        (before..=after).contains(&time),
        "{time} not in {before}..={after}"
    );

    // The route's risk actions apply.
    let (code, report, _) =
        explain.run_doc(&edit(&example, &["risk", "level"], Some(json!("high"))))?;
    assert_eq!(code, 2, "{report}");
    assert_eq!(report["decision"], "deny");
    assert_eq!(report["status"], 403);
    assert_eq!(
        report["reasons"],
        json!(["allowed by rule 1", "high risk: denied"])
    );
    let (code, report, _) =
        explain.run_doc(&edit(&example, &["risk", "level"], Some(json!("medium"))))?;
    assert_eq!(code, 2, "{report}");
    assert_eq!(report["decision"], "step_up");
    assert_eq!(report["status"], 401);

    // The rules.
    let (code, report, _) = explain.run_doc(&edit(
        &example,
        &["device", "compliant"],
        Some(json!(false)),
    ))?;
    assert_eq!(code, 2, "{report}");
    assert_eq!(report["reasons"], json!(["rule 1: device not compliant"]));
    let (code, report, _) = explain.run_doc(&edit(&example, &["person"], None))?;
    assert_eq!(code, 2, "{report}");
    assert_eq!(report["reasons"], json!(["sign-in required"]));
    assert!(
        report["note"]
            .as_str()
            .is_some_and(|n| n.contains("signed-in person")),
        "{report}"
    );
    let (code, report, _) =
        explain.run_doc(&edit(&example, &["request", "route"], Some(json!("gone"))))?;
    assert_eq!(code, 2, "{report}");
    assert_eq!(report["route"], Value::Null);
    assert_eq!(report["status"], 404);

    // A document the reader refuses is an error, not a decision.
    let (code, report, stderr) =
        explain.run_doc(&edit(&example, &["network", "port"], Some(json!(443))))?;
    assert_eq!(code, 1, "{report}{stderr}");
    assert!(stderr.contains("unknown field `port`"), "{stderr}");
    Ok(())
}
