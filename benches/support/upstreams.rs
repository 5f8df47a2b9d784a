//! The `upstreams` group: what a route's upstream stack (balancer, limits, retry budget,
//! timeouts: `src/forward/stack.rs`) costs, and how it spreads requests.
//!
//! - `stack`: this Vigil, a route with one upstream endpoint: every request goes through the
//!   stack.
//! - `pool`: the same route on a Vigil built from a commit before the stack, which sent to
//!   one pooled client directly; given by `VIGIL_BENCH_BASELINE=/path/to/vigil` (build it with
//!   `git worktree add --detach ../base <commit> && cargo build --release --bin vigil` there).
//!   Without it the ratio is not measured.
//! - `two`: this Vigil, a route with two endpoints (the bench upstream and a second one in
//!   this process): requests/s, and the share each endpoint served.
//!
//! All on the proxy core, measured twice each, taking turns.

use super::instance_dir;
use crate::{
    Ctx, Endpoint, Proxy, Row, Target, Upstream, alternately, free_port, logs_dir, print_table,
    row_json, spawn_vigil, vigil_base_config, workload_route,
};
use anyhow::{Result, bail};
use serde_json::{Value, json};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;

/// What the group measured.
pub struct UpstreamsReport {
    pub rows: Vec<Row>,
    /// Requests each of the two endpoints served during the `two` runs.
    pub spread: (u64, u64),
}

impl UpstreamsReport {
    /// Proxy CPU per request through the stack as a ratio to the pool before it.
    pub fn ratio(&self) -> Option<f64> {
        let cpu = |name: &str| {
            self.rows
                .iter()
                .find(|r| r.target == name)
                .and_then(|r| r.proxy_cpu_ns)
        };
        crate::ratio(cpu("stack"), cpu("pool"))
    }

    pub fn json(&self) -> Value {
        let total = (self.spread.0 + self.spread.1).max(1) as f64;
        json!({
            "targets": self.rows.iter().map(row_json).collect::<Vec<_>>(),
            "ratio_proxy_cpu_per_request_stack_to_pool": self.ratio(),
            "two_endpoints_served": [self.spread.0, self.spread.1],
            "two_endpoints_share_first": self.spread.0 as f64 / total,
        })
    }
}

pub async fn run(ctx: &Ctx<'_>) -> Result<UpstreamsReport> {
    let second = Upstream::start().await?;
    let baseline = std::env::var_os("VIGIL_BENCH_BASELINE").map(PathBuf::from);
    let mut plan: Vec<(&'static str, PathBuf, String)> = vec![(
        "stack",
        ctx.vigil_bin.to_path_buf(),
        workload_route("bench", "*", None, ctx.upstream),
    )];
    match &baseline {
        Some(bin) => plan.push((
            "pool",
            bin.clone(),
            workload_route("bench", "*", None, ctx.upstream),
        )),
        None => {
            println!(
                "\n*** upstreams: VIGIL_BENCH_BASELINE not set: no comparison with the pool before the stack ***"
            )
        }
    }
    let two = workload_route("bench", "*", None, ctx.upstream).replace(
        &format!("upstream = \"http://{}\"", ctx.upstream),
        &format!(
            "upstream = [\"http://{}\", \"http://{}\"]",
            ctx.upstream, second.addr
        ),
    );
    plan.push(("two", ctx.vigil_bin.to_path_buf(), two));

    let mut instances: Vec<(&'static str, Proxy)> = Vec::new();
    for (name, bin, route) in plan {
        let dir = instance_dir(ctx.dir, &format!("upstreams-{name}"))?;
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), free_port()?);
        let decisions = logs_dir(&dir)?.join("vigil-decisions.log");
        let path = dir.join("vigil.toml");
        std::fs::write(&path, vigil_base_config(addr, None, &decisions) + &route)?;
        let ep = Endpoint::new(addr, Some(ctx.tls.clone()));
        let label = match name {
            "stack" => "vigil-stack",
            "pool" => "vigil-pool",
            _ => "vigil-two",
        };
        let proxy = spawn_vigil(&bin, label, &path, ep, ctx.pinned).await?;
        instances.push((name, proxy));
    }
    let targets: Vec<Target> = instances
        .iter()
        .filter(|(name, _)| *name != "two")
        .map(|(name, proxy)| Target {
            name,
            ep: Endpoint::new(proxy.addr, Some(ctx.tls.clone())),
            proxy: Some(proxy),
        })
        .collect();
    let scenario = crate::Scenario::KeepAlive(ctx.args.connections);
    let mut rows = alternately(ctx, "upstreams", &targets, scenario).await?;

    let (_, two_proxy) = instances
        .iter()
        .find(|(name, _)| *name == "two")
        .ok_or_else(|| anyhow::anyhow!("no two-endpoint instance"))?;
    let two_target = Target {
        name: "two",
        ep: Endpoint::new(two_proxy.addr, Some(ctx.tls.clone())),
        proxy: Some(two_proxy),
    };
    let first = ctx.bench.served.clone();
    let before = (
        first.load(Ordering::Relaxed),
        second.served.load(Ordering::Relaxed),
    );
    rows.extend(alternately(ctx, "upstreams", &[two_target], scenario).await?);
    let spread = (
        first.load(Ordering::Relaxed) - before.0,
        second.served.load(Ordering::Relaxed) - before.1,
    );

    print_table(
        &format!(
            "upstreams: {}; one endpoint through the stack, the pool before it, two endpoints",
            scenario.title()
        ),
        &rows,
        ("stack", "pool"),
    );
    let total = (spread.0 + spread.1).max(1) as f64;
    println!(
        "two endpoints: {} and {} requests served ({:.1}% / {:.1}%)",
        spread.0,
        spread.1,
        100.0 * spread.0 as f64 / total,
        100.0 * spread.1 as f64 / total
    );
    for (name, proxy) in &instances {
        if let Some(msg) = proxy.exited() {
            bail!("vigil ({name}) {msg} during the upstreams scenario");
        }
    }
    Ok(UpstreamsReport { rows, spread })
}
