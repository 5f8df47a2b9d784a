//! `cargo bench --bench patterns` (or `scripts/bench patterns`): the cost of matching a rule
//! pattern, in nanoseconds per input byte, at input lengths from 1 KiB to 32 KiB.
//!
//! The patterns are the ones a backtracking matcher needs exponential or high-polynomial time for
//! (`/files/*-*-*.txt` against a long run of `-`, `/**/x/**/x/**/y` against `/x/x/x…`), plus the
//! common shapes for comparison (a literal, a prefix, one wildcard). Matching is linear in the
//! input when the figure per byte stays flat as the input doubles: the last column is the largest
//! ns/byte over the smallest for each pattern. Results: the table on stdout and
//! `bench-results/patterns-<time>.json`.

use serde_json::{Value, json};
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use vigil::policy::Pattern;

const LENGTHS_KIB: [usize; 6] = [1, 2, 4, 8, 16, 32];
/// Each figure is the best of this many rounds, each round at least `ROUND` long.
const ROUNDS: usize = 5;
const ROUND: Duration = Duration::from_millis(20);

struct Case {
    pattern: &'static str,
    users: bool,
    /// The input of about `n` bytes.
    input: fn(usize) -> String,
}

fn repeat_to(unit: &str, prefix: &str, suffix: &str, n: usize) -> String {
    let body = n.saturating_sub(prefix.len() + suffix.len()) / unit.len();
    format!("{prefix}{}{suffix}", unit.repeat(body.max(1)))
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            pattern: "/files/*-*-*.txt",
            users: false,
            input: |n| repeat_to("-", "/files/", "", n),
        },
        Case {
            pattern: "/files/**-**-**-**.txt",
            users: false,
            input: |n| repeat_to("-", "/files/", "", n),
        },
        Case {
            pattern: "/**/x/**/x/**/y",
            users: false,
            input: |n| repeat_to("/x", "", "", n),
        },
        Case {
            pattern: "/**/x/**/x/**/x/**/x/**/y",
            users: false,
            input: |n| repeat_to("/x", "", "", n),
        },
        Case {
            pattern: "a*a*a*a*a*a*a*a*b",
            users: false,
            input: |n| repeat_to("a", "", "", n),
        },
        Case {
            pattern: "*@*.corp.com",
            users: true,
            input: |n| repeat_to("a.", "", "@corp.com", n),
        },
        Case {
            pattern: "/api/v1/orders/**",
            users: false,
            input: |n| repeat_to("/seg", "/api/v1/orders", "", n),
        },
        Case {
            pattern: "spiffe://example.org/ns/web/sa/*",
            users: false,
            input: |n| repeat_to("w", "spiffe://example.org/ns/web/sa/", "", n),
        },
        Case {
            pattern: "/exact/path",
            users: false,
            input: |n| repeat_to("/seg", "/exact/path", "", n),
        },
    ]
}

/// Best nanoseconds per call of `p.matches(input)`.
fn time(p: &Pattern, input: &str) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..ROUNDS {
        let mut calls = 0u64;
        let started = Instant::now();
        loop {
            black_box(p.matches(black_box(input)));
            calls += 1;
            if calls.is_power_of_two() && started.elapsed() >= ROUND {
                break;
            }
        }
        let ns = started.elapsed().as_nanos() as f64 / calls as f64;
        best = best.min(ns);
    }
    best
}

fn main() {
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut rows = Vec::new();
    print!("{:<36}", "pattern  (ns per input byte)");
    for k in LENGTHS_KIB {
        print!("{:>9}", format!("{k} KiB"));
    }
    println!("{:>10}", "max/min");
    for case in cases() {
        let compiled = if case.users {
            Pattern::user(case.pattern)
        } else {
            Pattern::new(case.pattern)
        };
        let p = match compiled {
            Ok(p) => p,
            Err(e) => {
                eprintln!("bench: {}: {e}", case.pattern);
                std::process::exit(1);
            }
        };
        let mut per_byte = Vec::new();
        let mut points = Vec::new();
        for k in LENGTHS_KIB {
            let input = (case.input)(k * 1024);
            let ns = time(&p, &input);
            let nb = ns / input.len() as f64;
            per_byte.push(nb);
            points.push(json!({
                "input_bytes": input.len(),
                "ns_per_match": ns,
                "ns_per_byte": nb,
                "matched": p.matches(&input),
            }));
        }
        let max = per_byte.iter().copied().fold(f64::MIN, f64::max);
        let min = per_byte.iter().copied().fold(f64::MAX, f64::min);
        let label = if case.users {
            format!("{} (users)", case.pattern)
        } else {
            case.pattern.to_owned()
        };
        print!("{label:<36}");
        for nb in &per_byte {
            print!("{nb:>9.3}");
        }
        println!("{:>10.2}", max / min);
        rows.push(json!({
            "pattern": case.pattern,
            "users": case.users,
            "points": points,
            "max_over_min_ns_per_byte": max / min,
        }));
    }
    let report: Value = json!({
        "unix_time": started,
        "vigil_version": env!("CARGO_PKG_VERSION"),
        "rounds": ROUNDS,
        "round_ms": ROUND.as_millis() as u64,
        "patterns": rows,
    });
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench-results");
    let path = dir.join(format!("patterns-{started}.json"));
    let written = std::fs::create_dir_all(&dir).and_then(|()| {
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        std::fs::write(&path, text + "\n")
    });
    match written {
        Ok(()) => println!("\nresults: {}", path.display()),
        Err(e) => eprintln!("bench: writing {}: {e}", path.display()),
    }
}
