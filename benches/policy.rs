//! `cargo bench --bench policy` (or `scripts/bench policy`): the time of one decision, in
//! process, as `policy::decide` makes it for a request: a workload route with one built-in rule,
//! the same route decided by a Rego policy instead, and a person's request under the example
//! policy of `examples/policies/` (MFA in `input.jwt.amr`, the device in `data.devices`), with
//! the device inventory as data. Each decision is timed alone; the table gives the median and
//! the 99th percentile over many, and the cost of building the Rego input by itself.
//! Results: the table on stdout and `bench-results/policy-<time>.json`.

use anyhow::{Result, anyhow};
use serde_json::{Value, json};
use std::hint::black_box;
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use vigil::certs::{Authority, LeafSpec};
use vigil::policy::{self, Outcome, facts::Document};

/// Decisions timed per case, after as many for warm-up.
const SAMPLES: usize = 200_000;

const SPIFFE: &str = "spiffe://example.org/ns/frontend/sa/web";

fn config(dir: &Path) -> Result<vigil::config::Snapshot> {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policies");
    std::fs::create_dir_all(dir.join("data"))?;
    std::fs::copy(example.join("zero_trust.rego"), dir.join("zero_trust.rego"))?;
    std::fs::copy(
        example.join("data/device_db.json"),
        dir.join("data/device_db.json"),
    )?;
    std::fs::write(
        dir.join("workloads.rego"),
        format!(
            "package workloads\nimport rego.v1\ndefault allow := false\nallow if input.spiffe_id == \"{SPIFFE}\"\n"
        ),
    )?;
    std::fs::write(
        dir.join("inventory.json"),
        r#"[{"subject": "device-1122", "compliant": true, "managed": true}]"#,
    )?;
    let ca = Authority::generate("Bench CA")?;
    std::fs::write(dir.join("ca.pem"), ca.cert_pem())?;
    let server = ca.issue(&LeafSpec::server(vec!["localhost".into()], vec![]))?;
    std::fs::write(dir.join("server.pem"), &server.cert_pem)?;
    std::fs::write(dir.join("server.key"), &server.key_pem)?;
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"

[tls]
cert = "server.pem"
key = "server.key"
client_ca = ["ca.pem"]

[devices]
source = "inventory.json"
key = "subject"

[policy]
data = ["data/*.json"]

[[route]]
name = "rules"
host = "rules.test"
upstream = "http://127.0.0.1:1"
login = "none"
allow = [{{ spiffe = ["{SPIFFE}"] }}]

[[route]]
name = "rego"
host = "rego.test"
upstream = "http://127.0.0.1:1"
login = "none"
policy = "workloads.rego"

[[route]]
name = "example"
host = "example.test"
upstream = "http://127.0.0.1:1"
login = "none"
policy = "zero_trust.rego"
"#
    );
    let ctx = vigil::config::Context::first()?;
    vigil::config::load_text("bench.toml", text, dir, &ctx).map_err(|p| anyhow!("{p}"))
}

fn document(route: &str, person: bool) -> Result<Document> {
    let mut doc = json!({
        "time": 1_795_426_200,
        "request": { "route": route, "host": format!("{route}.test"), "method": "GET", "path": "/v1/orders",
                     "headers": { "accept": ["application/json"], "user-agent": ["bench/1.0"] } },
        "certificate": {
            "subject": "CN=device-1122", "common_name": "device-1122", "issuer": "CN=Bench CA",
            "uris": [SPIFFE], "spiffe_id": SPIFFE, "serial": "01",
            "fingerprint": "ab".repeat(32), "not_before": 0, "not_after": 2_000_000_000
        },
        "network": { "source": "10.0.0.5" }
    });
    if person {
        doc["person"] = json!({
            "subject": "alice", "email": "alice@example.com", "groups": ["staff", "engineering"],
            "amr": ["pwd", "mfa"], "mfa": true, "verified_at": 1_795_426_000,
            "claims": { "department": "engineering" }
        });
        doc["device"] = json!({ "subject": "device-1122", "compliant": true, "managed": true });
    }
    Ok(serde_json::from_value(doc)?)
}

struct Sample {
    name: &'static str,
    p50_ns: f64,
    p99_ns: f64,
    mean_ns: f64,
}

fn time(name: &'static str, mut f: impl FnMut()) -> Sample {
    for _ in 0..SAMPLES {
        f();
    }
    let mut ns: Vec<u64> = Vec::with_capacity(SAMPLES);
    let started = Instant::now();
    for _ in 0..SAMPLES {
        let t = Instant::now();
        f();
        ns.push(t.elapsed().as_nanos() as u64);
    }
    let total = started.elapsed().as_nanos() as f64;
    ns.sort_unstable();
    Sample {
        name,
        p50_ns: ns[ns.len() / 2] as f64,
        p99_ns: ns[ns.len() * 99 / 100] as f64,
        mean_ns: total / SAMPLES as f64,
    }
}

fn main() -> Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let snapshot = config(dir.path())?;
    let pol = &snapshot.policy;
    let rules = document("rules", false)?;
    let rego = document("rego", false)?;
    let example = document("example", true)?;
    for (doc, what) in [(&rules, "rules"), (&rego, "rego"), (&example, "example")] {
        let d = policy::decide(pol, &doc.facts(0));
        anyhow::ensure!(d.outcome == Outcome::Allow, "{what}: {:?}", d.reasons);
    }
    let example_rego = pol
        .route("example")
        .and_then(|r| r.rego.clone())
        .ok_or_else(|| anyhow!("no policy on the example route"))?;
    let samples = [
        time("built-in rule (SPIFFE ID)", || {
            black_box(policy::decide(pol, &rules.facts(0)));
        }),
        time("Rego policy (SPIFFE ID)", || {
            black_box(policy::decide(pol, &rego.facts(0)));
        }),
        time("Rego example policy (person, device data)", || {
            black_box(policy::decide(pol, &example.facts(0)));
        }),
        time("  of which: building the input", || {
            black_box(example_rego.input(&example.facts(0)));
        }),
    ];
    println!("\n== one decision, in process ({SAMPLES} samples each) ==");
    println!(
        "{:<44} {:>10} {:>10} {:>10}",
        "case", "p50 µs", "p99 µs", "mean µs"
    );
    for s in &samples {
        println!(
            "{:<44} {:>10.2} {:>10.2} {:>10.2}",
            s.name,
            s.p50_ns / 1000.0,
            s.p99_ns / 1000.0,
            s.mean_ns / 1000.0
        );
    }
    let extra = (samples[1].mean_ns - samples[0].mean_ns) / 1000.0;
    println!(
        "\nRego in place of the built-in rule: {extra:+.2} µs per decision (mean), {:.2}x",
        samples[1].mean_ns / samples[0].mean_ns.max(1.0)
    );
    let started = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let json: Value = json!({
        "bench": "policy",
        "samples": SAMPLES,
        "cases": samples.iter().map(|s| json!({
            "case": s.name, "p50_us": s.p50_ns / 1000.0, "p99_us": s.p99_ns / 1000.0,
            "mean_us": s.mean_ns / 1000.0,
        })).collect::<Vec<_>>(),
        "rego_extra_us": extra,
    });
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench-results");
    std::fs::create_dir_all(&out)?;
    let path = out.join(format!("policy-{started}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!("results written to {}", path.display());
    Ok(())
}
