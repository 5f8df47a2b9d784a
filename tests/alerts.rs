//! Alerts delivered to a real HTTPS receiver on 127.0.0.1: the document, its signature,
//! retries on 503, a receiver that is down, a refusal that is not retried, a reload with a new
//! secret, and the configuration mistakes `vigil check` reports.

mod support;

use anyhow::Result;
use bytes::Bytes;
use support::receiver::{Receiver, verifies};
use support::*;
use vigil::alerts::{Event, Kind};

const SECRET: &str = "an-alert-secret-of-32-bytes-long";

fn alerts_section(url: &str, extra: &str) -> String {
    format!(
        "\n[alerts]\nwebhook = \"{url}\"\nca = \"ca.pem\"\nsecret_file = \"alerts.secret\"\nbackoff = \"10ms\"\nbackoff_max = \"40ms\"\ntimeout = \"2s\"\n{extra}\n"
    )
}

fn config(pki: &Pki, alerts: &str) -> Result<String> {
    std::fs::write(pki.path("alerts.secret"), format!("{SECRET}\n"))?;
    let log = pki.path("decisions.log");
    Ok(format!(
        "{}{alerts}[[route]]\nname = \"app\"\nhost = \"localhost\"\nupstream = \"http://127.0.0.1:9\"\nlogin = \"none\"\nallow = [{{ spiffe = [\"spiffe://example.org/**\"] }}]\n",
        base_config("", &log)
    ))
}

fn block(subject: &str) -> Event {
    Event {
        kind: Kind::Block,
        subject: Some(subject.to_owned()),
        route: Some("app".to_owned()),
        detail: serde_json::json!({ "detector": "denial_burst", "denials": 12 }),
    }
}

async fn counted(running: &vigil::Running, kind: &str, result: &str) -> Result<f64> {
    metric(
        running,
        &format!("vigil_alerts_total{{kind=\"{kind}\",result=\"{result}\"}}"),
    )
    .await
}

async fn wait_counted(running: &vigil::Running, kind: &str, result: &str, want: f64) -> bool {
    eventually(STEP, || async {
        counted(running, kind, result).await.unwrap_or(0.0) == want
    })
    .await
}

#[tokio::test]
async fn an_alert_arrives_signed_with_every_field() -> Result<()> {
    let pki = Pki::new()?;
    let receiver = Receiver::start(&pki, &[]).await?;
    let url = format!("https://127.0.0.1:{}/hook", receiver.addr.port());
    let running = spawn(&pki, &config(&pki, &alerts_section(&url, ""))?).await?;
    assert_eq!(counted(&running, "grant_created", "sent").await?, 0.0);
    running.shared.alerts.send(block("user:mallory"));
    assert!(wait_counted(&running, "block", "sent", 1.0).await);

    let got = receiver.got();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.content_type, "application/json");
    assert!(verifies(SECRET.as_bytes(), r), "{r:?}");
    let mut tampered = r.clone();
    tampered.body = Bytes::from(String::from_utf8(r.body.to_vec())?.replace("mallory", "alice"));
    assert!(!verifies(SECRET.as_bytes(), &tampered));
    let mut replayed = r.clone();
    replayed.timestamp = (r.timestamp.parse::<u64>()? + 1).to_string();
    assert!(!verifies(SECRET.as_bytes(), &replayed));
    assert!(!verifies(b"another-secret-of-enough-bytes", r));

    let doc: serde_json::Value = serde_json::from_slice(&r.body)?;
    let instance = &running.shared.instance_id;
    assert_eq!(doc["kind"], "block");
    assert_eq!(doc["subject"], "user:mallory");
    assert_eq!(doc["route"], "app");
    assert_eq!(doc["instance"], instance.as_str());
    assert!(
        doc["id"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{instance}-"))
    );
    assert_eq!(doc["detail"]["detector"], "denial_burst");
    let timestamp = doc["timestamp"].as_u64().unwrap();
    let sent_at: u64 = r.timestamp.parse()?;
    assert!(sent_at >= timestamp && sent_at - timestamp < 10);
    let time = humantime::parse_rfc3339(doc["time"].as_str().unwrap())?;
    let unix = time.duration_since(std::time::UNIX_EPOCH)?.as_secs();
    assert_eq!(unix, timestamp);
    assert_eq!(doc.as_object().unwrap().len(), 8, "{doc}");
    running.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_receiver_answering_503_twice_gets_the_alert_on_the_third_attempt() -> Result<()> {
    let pki = Pki::new()?;
    let receiver = Receiver::start(&pki, &[503, 503]).await?;
    let url = format!("https://127.0.0.1:{}/hook", receiver.addr.port());
    let running = spawn(&pki, &config(&pki, &alerts_section(&url, "retries = 3"))?).await?;
    running.shared.alerts.send(Event {
        kind: Kind::GrantApproved,
        subject: Some("user:bob".into()),
        route: None,
        detail: serde_json::Value::Null,
    });
    assert!(wait_counted(&running, "grant_approved", "sent", 1.0).await);
    let got = receiver.got();
    assert_eq!(got.len(), 3, "two 503s, then the 200");
    let ids: Vec<serde_json::Value> = got
        .iter()
        .map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["id"].clone())
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "one alert: {ids:?}");
    assert!(got.iter().all(|r| verifies(SECRET.as_bytes(), r)));
    assert_eq!(counted(&running, "grant_approved", "failed").await?, 0.0);
    running.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_receiver_that_is_down_is_retried_then_counted_failed() -> Result<()> {
    let pki = Pki::new()?;
    let dead = dead_address().await?;
    let url = format!("https://{dead}/hook");
    let running = spawn(&pki, &config(&pki, &alerts_section(&url, "retries = 2"))?).await?;
    // `send` is a plain function: it cannot wait for the receiver. Three in a row, then the
    // queue holds what the sender has not yet taken.
    for n in 0..3 {
        running.shared.alerts.send(block(&format!("user:u{n}")));
    }
    assert!(running.shared.alerts.queued() <= 3);
    assert!(wait_counted(&running, "block", "failed", 3.0).await);
    assert_eq!(counted(&running, "block", "sent").await?, 0.0);
    assert_eq!(running.shared.alerts.queued(), 0);
    running.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_4xx_other_than_429_is_not_retried() -> Result<()> {
    let pki = Pki::new()?;
    let receiver = Receiver::start(&pki, &[429, 400]).await?;
    let url = format!("https://127.0.0.1:{}/hook", receiver.addr.port());
    let running = spawn(&pki, &config(&pki, &alerts_section(&url, "retries = 5"))?).await?;
    running.shared.alerts.send(block("user:x"));
    assert!(wait_counted(&running, "block", "failed", 1.0).await);
    assert_eq!(receiver.got().len(), 2, "429 retried, 400 not");
    running.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_reload_with_a_new_secret_signs_later_alerts_with_it() -> Result<()> {
    let pki = Pki::new()?;
    let receiver = Receiver::start(&pki, &[]).await?;
    let url = format!("https://127.0.0.1:{}/hook", receiver.addr.port());
    let path = pki.path("vigil.toml");
    std::fs::write(&path, config(&pki, &alerts_section(&url, ""))?)?;
    let running = vigil::start_file(&path).await?;
    running.shared.alerts.send(block("user:one"));
    assert!(wait_counted(&running, "block", "sent", 1.0).await);

    let new_secret = "a-second-secret-of-enough-length";
    std::fs::write(pki.path("alerts.secret"), new_secret)?;
    let reloader = running
        .reloader
        .clone()
        .expect("a file-backed proxy reloads");
    reloader
        .reload("test")
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    running.shared.alerts.send(block("user:two"));
    assert!(wait_counted(&running, "block", "sent", 2.0).await);
    let got = receiver.got();
    assert!(verifies(SECRET.as_bytes(), &got[0]));
    assert!(verifies(new_secret.as_bytes(), &got[1]));
    assert!(!verifies(SECRET.as_bytes(), &got[1]));
    running.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn without_a_webhook_alerts_are_only_logged() -> Result<()> {
    let logs = captured_logs();
    let pki = Pki::new()?;
    let running = spawn(&pki, &config(&pki, "")?).await?;
    running.shared.alerts.send(block("user:logged"));
    assert_eq!(running.shared.alerts.queued(), 0);
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).to_string();
    assert!(
        text.lines()
            .any(|l| l.contains("vigil::alert") && l.contains("user:logged")),
        "{text}"
    );
    running.shutdown().await;
    Ok(())
}

/// The problems `vigil check` would print for `alerts` (loaded as it loads them).
fn problems(pki: &Pki, alerts: &str) -> Vec<String> {
    let text = config(pki, alerts).unwrap();
    let ctx = vigil::config::Context::first().unwrap();
    match vigil::config::load_text("test.toml", text, pki.dir.path(), &ctx) {
        Ok(_) => Vec::new(),
        Err(p) => p.items.iter().map(|i| i.message.clone()).collect(),
    }
}

#[test]
fn configuration_mistakes_are_reported() -> Result<()> {
    let pki = Pki::new()?;
    std::fs::write(pki.path("short.secret"), "  too-short \n")?;
    let good = "[alerts]\nwebhook = \"https://127.0.0.1:9/\"\nsecret_file = \"alerts.secret\"\n";
    assert_eq!(problems(&pki, good), Vec::<String>::new());
    let cases = [
        (
            "[alerts]\nwebhook = \"http://127.0.0.1:9/\"\nsecret_file = \"alerts.secret\"\n",
            "\"http://127.0.0.1:9/\" is not an https:// URL",
        ),
        (
            "[alerts]\nwebhook = \"https://127.0.0.1:9/\"\n",
            "a webhook needs alerts.secret_file",
        ),
        (
            "[alerts]\nwebhook = \"https://127.0.0.1:9/\"\nsecret_file = \"short.secret\"\n",
            "short.secret: the secret is 9 bytes long; at least 16 are needed",
        ),
        (
            "[alerts]\nwebhook = \"https://127.0.0.1:9/\"\nsecret_file = \"missing.secret\"\n",
            "missing.secret: ",
        ),
        (
            "[alerts]\nwebhook = \"https://127.0.0.1:9/\"\nsecret_file = \"alerts.secret\"\nca = \"nowhere.pem\"\n",
            "nowhere.pem: ",
        ),
        (
            "[alerts]\nwebhook = \"https://127.0.0.1:9/\"\nsecret_file = \"alerts.secret\"\nqueue = 0\n",
            "must be at least 1",
        ),
    ];
    for (alerts, want) in cases {
        let found = problems(&pki, alerts);
        assert!(
            found.iter().any(|p| p.starts_with(want)),
            "{alerts}: {want:?} not in {found:?}"
        );
    }
    Ok(())
}

#[test]
fn vigil_check_names_the_webhook_mistake_at_its_line() -> Result<()> {
    let pki = Pki::new()?;
    let path = pki.path("vigil.toml");
    let text = config(
        &pki,
        "\n[alerts]\nwebhook = \"http://127.0.0.1:9/hook\"\nsecret_file = \"alerts.secret\"\n",
    )?;
    std::fs::write(&path, &text)?;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["check", "--config"])
        .arg(&path)
        .output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{said}");
    let line = text
        .lines()
        .position(|l| l.starts_with("webhook"))
        .map(|i| i + 1)
        .unwrap();
    assert!(
        said.contains(&format!(":{line}:")) && said.contains("is not an https:// URL"),
        "{said}"
    );
    Ok(())
}

/// A count read from the registry itself, for after the admin listener has stopped.
fn counter(shared: &vigil::state::Shared, kind: &'static str, result: &'static str) -> u64 {
    shared
        .metrics
        .alerts
        .total
        .get_or_create(&vigil::metrics::alerts::Labels { kind, result })
        .get()
}

#[tokio::test]
async fn shutdown_delivers_what_is_queued() -> Result<()> {
    let pki = Pki::new()?;
    let receiver = Receiver::start(&pki, &[]).await?;
    let url = format!("https://127.0.0.1:{}/hook", receiver.addr.port());
    let running = spawn(&pki, &config(&pki, &alerts_section(&url, ""))?).await?;
    let shared = running.shared.clone();
    for n in 0..3 {
        shared.alerts.send(block(&format!("user:s{n}")));
    }
    tokio::time::timeout(STEP, running.shutdown()).await?;
    let sent = counter(&shared, "block", "sent");
    assert_eq!(sent, 3);
    assert_eq!(receiver.got().len(), 3);
    Ok(())
}

#[tokio::test]
async fn shutdown_gives_up_on_a_dead_receiver_in_bounded_time() -> Result<()> {
    let pki = Pki::new()?;
    let dead = dead_address().await?;
    let url = format!("https://{dead}/hook");
    let slow = "retries = 100\nbackoff_max = \"1s\"";
    let text = config(
        &pki,
        &alerts_section(&url, slow).replace("backoff_max = \"40ms\"\n", ""),
    )?;
    let running = spawn(&pki, &text).await?;
    running.shared.alerts.send(block("user:late"));
    running.shared.alerts.send(block("user:later"));
    let shared = running.shared.clone();
    assert_eq!(counter(&shared, "block", "failed"), 0);
    tokio::time::timeout(STEP, running.shutdown()).await?;
    let dropped = counter(&shared, "block", "dropped");
    assert_eq!(dropped, 2);
    assert_eq!(shared.alerts.queued(), 0);
    Ok(())
}
