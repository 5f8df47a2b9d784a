//! Alerts never on the request path: keep-alive requests on a Vigil whose alert webhook is a
//! black hole (a TCP listener that accepts and never answers, so every delivery attempt waits
//! out its timeout and the queue fills and drops), against the same Vigil without a webhook,
//! while a task on the load generator's core makes just-in-time grants on both admin
//! listeners at a fixed rate, each raising an alert. The ratios of CPU per request and of
//! latency, dead receiver to none, are what a dead receiver costs the requests.

use super::{admin_post, free_addr, instance_dir};
use crate::{
    Ctx, Endpoint, Row, Scenario, Target, alternately, logs_dir, print_table, spawn_vigil,
    vigil_base_config, workload_route,
};
use anyhow::{Result, bail};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;

/// Grants made per second on each instance, each one alert.
pub const ALERTS_PER_SECOND: u64 = 100;
/// Grants stop short of the store's bound (10 000 in force).
const MAX_GRANTS: u64 = 9_000;

/// What the scenario measured: `dead`, then `off`, and the alerts raised on each.
pub struct AlertsReport {
    pub rows: Vec<Row>,
    pub raised: u64,
    /// `vigil_alerts_total` of the dead receiver's instance at the end: (dropped, failed).
    pub dead_counts: (f64, f64),
}

/// A listener that accepts connections and holds them without reading or answering.
async fn black_hole() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    Ok(addr)
}

/// A route that offers grants, for the grants that raise the alerts.
fn grants_route(upstream: SocketAddr) -> String {
    format!(
        "\n[[route]]\nname = \"jit\"\nhost = \"jit.test\"\nupstream = \"http://{upstream}\"\nlogin = \"none\"\nallow = [{{ grant = true }}]\ngrants = {{ max = \"1h\", approvers = {{ users = [\"ops@example.com\"] }} }}\n"
    )
}

/// Makes [`ALERTS_PER_SECOND`] grants a second on each admin listener until `stop`.
fn storm(admins: Vec<SocketAddr>, stop: Arc<AtomicBool>, raised: Arc<AtomicU64>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / ALERTS_PER_SECOND));
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) && n < MAX_GRANTS {
            tick.tick().await;
            n += 1;
            let body = format!(
                r#"{{"subject": {{"spiffe": "spiffe://vigil.test/ns/storm/sa/s{n}"}}, "route": "jit", "duration": "1h", "reason": "bench"}}"#
            );
            for admin in &admins {
                if let Ok((status, _)) = admin_post(*admin, "/grants", &body).await
                    && status.as_u16() == 201
                {
                    raised.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
}

/// The counters of `vigil_alerts_total{result}` summed over kinds, from `/metrics`.
async fn alert_counts(admin: SocketAddr) -> (f64, f64) {
    let Ok((_, body)) = super::admin_call(admin, "GET", "/metrics").await else {
        return (0.0, 0.0);
    };
    let text = String::from_utf8_lossy(&body);
    let sum = |result: &str| {
        text.lines()
            .filter(|l| {
                l.starts_with("vigil_alerts_total{") && l.contains(&format!("result=\"{result}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    (sum("dropped"), sum("failed"))
}

pub async fn alerts_cost(ctx: &Ctx<'_>) -> Result<AlertsReport> {
    let hole = black_hole().await?;
    let mut instances = Vec::new();
    for name in ["dead", "off"] {
        let dir = instance_dir(ctx.dir, &format!("alerts-{name}"))?;
        let (addr, admin) = (free_addr()?, free_addr()?);
        let decisions = logs_dir(&dir)?.join("vigil-decisions.log");
        let mut text = vigil_base_config(addr, Some(admin), &decisions);
        if name == "dead" {
            std::fs::write(
                dir.join("alerts.secret"),
                "bench-alert-secret-0123456789abcdef",
            )?;
            text += &format!(
                "\n[alerts]\nwebhook = \"https://localhost:{}/hook\"\nca = \"ca.pem\"\nsecret_file = \"alerts.secret\"\ntimeout = \"2s\"\n",
                hole.port()
            );
        }
        text += &workload_route("bench", "*", None, ctx.upstream);
        text += &grants_route(ctx.upstream);
        let path = dir.join("vigil.toml");
        std::fs::write(&path, text)?;
        let label = if name == "dead" {
            "vigil-alerts-dead"
        } else {
            "vigil-alerts-off"
        };
        let ep = Endpoint::new(addr, Some(ctx.tls.clone()));
        instances.push((
            name,
            admin,
            spawn_vigil(ctx.vigil_bin, label, &path, ep, ctx.pinned).await?,
        ));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let raised = Arc::new(AtomicU64::new(0));
    storm(
        instances.iter().map(|(_, a, _)| *a).collect(),
        stop.clone(),
        raised.clone(),
    );
    let targets: Vec<Target> = instances
        .iter()
        .map(|(name, _, proxy)| Target {
            name,
            ep: Endpoint::new(proxy.addr, Some(ctx.tls.clone())),
            proxy: Some(proxy),
        })
        .collect();
    let scenario = Scenario::KeepAlive(ctx.args.connections);
    let rows = alternately(ctx, "alerts", &targets, scenario).await;
    stop.store(true, Ordering::Relaxed);
    let rows = rows?;
    let dead_counts = alert_counts(instances[0].1).await;
    print_table(
        &format!(
            "alerts: {}; {ALERTS_PER_SECOND} alerts/s raised on each, `dead` posting them to a \
             webhook that never answers, `off` without a webhook",
            scenario.title()
        ),
        &rows,
        ("dead", "off"),
    );
    for (name, _, proxy) in &instances {
        if let Some(msg) = proxy.exited() {
            bail!("vigil ({name}) {msg} during the alerts scenario");
        }
    }
    Ok(AlertsReport {
        rows,
        raised: raised.load(Ordering::Relaxed),
        dead_counts,
    })
}
