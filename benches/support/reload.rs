//! Reload under load: the keep-alive scenario against a Vigil started from a configuration file
//! with its admin listener on, once as it is (`steady`) and once while a task on the load
//! generator's core rewrites the file, alternating two route sets, and POSTs `/reload` every
//! `--reload-every` (100 ms by default) (`reload`). Every reload must be applied and every request
//! answered; the cost shows as requests/s, latency and proxy CPU against the steady run.
//!
//! The file is replaced by a rename, as configuration tools do, so Vigil's file watcher sees the
//! changes too; it waits for 200 ms without changes before it reloads, which a write every
//! 100 ms never gives it, so the reloads measured are the POSTed ones.

use super::{admin_call, free_addr, instance_dir, percentile_ms, write_atomic};
use crate::{
    CLIENT_SPIFFE_ID, Ctx, Endpoint, Row, Target, opt, print_table, ratio, row_json, spawn_vigil,
    vigil_base_config, workload_route,
};
use anyhow::{Context as _, Result, anyhow};
use http::StatusCode;
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::time::MissedTickBehavior;

/// Routes besides the one the load uses, in each set.
const EXTRA_ROUTES: usize = 8;

/// What the scenario measured.
pub struct ReloadReport {
    /// `steady`, then `reload`.
    pub rows: Vec<Row>,
    pub connections: usize,
    pub every: Duration,
    pub routes: [usize; 2],
    pub reloads: ReloadStats,
}

/// The reloading task's tally.
#[derive(Default)]
pub struct ReloadStats {
    pub ok: u64,
    pub failed: u64,
    /// The first few distinct failures.
    pub messages: Vec<String>,
    /// Time from sending `POST /reload` to its answer, for applied reloads.
    pub latencies_ns: Vec<u64>,
    pub first_generation: Option<u64>,
    pub last_generation: Option<u64>,
}

impl ReloadStats {
    fn fail(&mut self, what: String) {
        self.failed += 1;
        if self.messages.len() < 5 && !self.messages.contains(&what) {
            self.messages.push(what);
        }
    }
}

impl ReloadReport {
    pub fn errors(&self) -> u64 {
        self.rows.iter().map(|r| r.errors).sum::<u64>() + self.reloads.failed
    }

    fn row(&self, target: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.target == target)
    }

    fn ratio_of(&self, pick: fn(&Row) -> Option<f64>) -> Option<f64> {
        ratio(
            self.row("reload").and_then(pick),
            self.row("steady").and_then(pick),
        )
    }

    fn req_per_s_ratio(&self) -> Option<f64> {
        self.ratio_of(|r| Some(r.req_per_s()))
    }

    fn reload_ms(&self, p: f64) -> Option<f64> {
        let mut sorted = self.reloads.latencies_ns.clone();
        sorted.sort_unstable();
        percentile_ms(&sorted, p)
    }

    fn reloads_line(&self) -> String {
        let r = &self.reloads;
        let mut line = format!(
            "reloads: {} applied, {} failed (every {} ms); POST /reload answered in p50 {} ms, \
             p99 {} ms, max {} ms",
            r.ok,
            r.failed,
            self.every.as_millis(),
            opt(self.reload_ms(50.0), 1),
            opt(self.reload_ms(99.0), 1),
            opt(self.reload_ms(100.0), 1),
        );
        if let (Some(a), Some(b)) = (r.first_generation, r.last_generation) {
            let _ = write!(line, "; generation {a} -> {b}");
        }
        line
    }

    fn print(&self) {
        print_table(
            &format!(
                "reload under load: {} keep-alive connections; `reload` rewrites the config \
                 ({} / {} routes, alternating) and POSTs /reload every {} ms",
                self.connections,
                self.routes[0],
                self.routes[1],
                self.every.as_millis()
            ),
            &self.rows,
            ("reload", "steady"),
        );
        println!("{}", self.reloads_line());
        if self.reloads.failed > 0 {
            println!(
                "!!! {} RELOADS FAILED: {:?}",
                self.reloads.failed, self.reloads.messages
            );
        }
    }

    pub fn print_summary(&self) {
        println!("\n== summary: reload under load (reloading / steady) ==");
        println!(
            "req/s {}x   p50 {}x   p99 {}x   proxy CPU per request {}x",
            opt(self.req_per_s_ratio(), 2),
            opt(self.ratio_of(|r| r.p50_us), 2),
            opt(self.ratio_of(|r| r.p99_us), 2),
            opt(self.ratio_of(|r| r.proxy_cpu_ns), 2),
        );
        println!(
            "{}; request errors {}",
            self.reloads_line(),
            self.rows.iter().map(|r| r.errors).sum::<u64>()
        );
    }

    pub fn json(&self) -> Value {
        json!({
            "description": "keep-alive scenario against a Vigil started from a config file, \
                            steady and while the config is rewritten (two route sets, \
                            alternating) and POST /reload is sent at a fixed interval",
            "concurrency": self.connections,
            "reload_every_ms": self.every.as_secs_f64() * 1000.0,
            "routes_per_set": self.routes,
            "targets": self.rows.iter().map(row_json).collect::<Vec<_>>(),
            "reloads_applied": self.reloads.ok,
            "reloads_failed": self.reloads.failed,
            "reload_error_messages": self.reloads.messages,
            "reload_answer_ms": {
                "p50": self.reload_ms(50.0),
                "p99": self.reload_ms(99.0),
                "max": self.reload_ms(100.0),
            },
            "generation_first": self.reloads.first_generation,
            "generation_last": self.reloads.last_generation,
            "request_errors": self.rows.iter().map(|r| r.errors).sum::<u64>(),
            "ratios_reload_to_steady": {
                "req_per_s": self.req_per_s_ratio(),
                "latency_p50": self.ratio_of(|r| r.p50_us),
                "latency_p99": self.ratio_of(|r| r.p99_us),
                "proxy_cpu_per_request": self.ratio_of(|r| r.proxy_cpu_ns),
            },
        })
    }
}

/// One of the two route sets: the route the load uses (its rules differ between the sets, so
/// its policy is rebuilt) and [`EXTRA_ROUTES`] more, on other hosts and paths.
fn route_set(which: usize, upstream: SocketAddr) -> (String, usize) {
    let mut text = if which == 0 {
        workload_route("bench", "*", None, upstream)
    } else {
        format!(
            r#"
[[route]]
name = "bench"
host = "*"
upstream = "http://{upstream}"
login = "none"
allow = [{{ spiffe = ["{CLIENT_SPIFFE_ID}"] }}, {{ cert_subject = ["ops-*"], methods = ["GET"] }}]
"#
        )
    };
    let tag = ["a", "b"][which];
    for i in 0..EXTRA_ROUTES {
        let _ = write!(
            text,
            r#"
[[route]]
name = "svc{i}-{tag}"
host = "svc{i}.{tag}.test"
path = "/api/v{which}"
upstream = "http://{upstream}"
login = "none"
allow = [{{ spiffe = ["spiffe://vigil.test/ns/svc{i}/**"], paths = ["/api/**"] }}]
"#
        );
    }
    (text, EXTRA_ROUTES + 1)
}

pub async fn run(ctx: &Ctx<'_>) -> Result<ReloadReport> {
    let dir = instance_dir(ctx.dir, "reload")?;
    let (addr, admin) = (free_addr()?, free_addr()?);
    let decisions = crate::logs_dir(ctx.dir)?.join("vigil-reload-decisions.log");
    let base = vigil_base_config(addr, Some(admin), &decisions);
    let sets = [route_set(0, ctx.upstream), route_set(1, ctx.upstream)];
    let texts = [base.clone() + &sets[0].0, base + &sets[1].0];
    let path = dir.join("vigil.toml");
    std::fs::write(&path, &texts[0]).with_context(|| format!("writing {}", path.display()))?;

    let ep = Endpoint::new(addr, Some(ctx.tls.clone()));
    let proxy = spawn_vigil(ctx.vigil_bin, "vigil-reload", &path, ep.clone(), ctx.pinned).await?;
    let n = ctx.args.connections;

    let steady = Target {
        name: "steady",
        ep: ep.clone(),
        proxy: Some(&proxy),
    };
    eprintln!("... reload: steady");
    let (steady_row, ()) = ctx
        .bench
        .keep_alive_with(&steady, n, ctx.warmup, ctx.measure, |_| async {})
        .await?;

    let reloading = Target {
        name: "reload",
        ep,
        proxy: Some(&proxy),
    };
    eprintln!("... reload: reloading every {:?}", ctx.args.reload_every);
    let every = ctx.args.reload_every;
    let (reload_row, reloads) = ctx
        .bench
        .keep_alive_with(&reloading, n, ctx.warmup, ctx.measure, |deadline| {
            reload_loop(admin, &path, &texts, every, deadline)
        })
        .await?;
    if let Some(msg) = proxy.exited() {
        return Err(anyhow!("vigil-reload {msg} during the run"));
    }
    let report = ReloadReport {
        rows: vec![steady_row, reload_row],
        every,
        routes: [sets[0].1, sets[1].1],
        reloads,
        connections: n,
    };
    report.print();
    Ok(report)
}

/// Until `deadline`, every `every`: writes the other route set and POSTs `/reload`.
async fn reload_loop(
    admin: SocketAddr,
    path: &Path,
    texts: &[String; 2],
    every: Duration,
    deadline: Instant,
) -> ReloadStats {
    let path: PathBuf = path.to_path_buf();
    let mut stats = ReloadStats::default();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut next = 1;
    loop {
        tick.tick().await;
        if Instant::now() >= deadline {
            break;
        }
        if let Err(e) = write_atomic(&path, &texts[next]) {
            stats.fail(format!("{e:#}"));
            continue;
        }
        next ^= 1;
        let t0 = Instant::now();
        match admin_call(admin, "POST", "/reload").await {
            Ok((StatusCode::OK, body)) => {
                let answer: Value = serde_json::from_slice(&body).unwrap_or_default();
                if answer["ok"] == json!(true) {
                    stats.ok += 1;
                    stats.latencies_ns.push(t0.elapsed().as_nanos() as u64);
                    let generation = answer["generation"].as_u64();
                    stats.first_generation = stats.first_generation.or(generation);
                    stats.last_generation = generation.or(stats.last_generation);
                } else {
                    stats.fail(format!("200 without ok: {answer}"));
                }
            }
            Ok((status, body)) => {
                stats.fail(format!("{status}: {}", String::from_utf8_lossy(&body)));
            }
            Err(e) => stats.fail(format!("{e:#}")),
        }
    }
    stats
}
