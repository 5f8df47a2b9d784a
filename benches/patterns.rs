//! `cargo bench --bench patterns` (or `scripts/bench patterns`): the cost of matching a rule
//! pattern, in nanoseconds per input byte, at input lengths from 1 KiB to 32 KiB.
//!
//! The patterns are the ones a backtracking matcher needs exponential or high-polynomial time for
//! (`/files/*-*-*.txt` against a long run of `-`, `/**/x/**/x/**/y` against `/x/x/x…`), plus the
//! common shapes for comparison (a literal, a prefix, one wildcard). Matching is linear in the
//! input when the figure per byte stays flat (or falls) as the input doubles: `growth` is ns/byte
//! at 32 KiB over ns/byte at 1 KiB, about 1 for a linear matcher (below 1 where the engine can
//! decide without reading every byte), and doubling with each doubling for a backtracking one.
//! Each pattern is timed on an input it matches and, for the pathological ones, on the input of
//! the attack (which it does not match). Results: the table on stdout and
//! `bench-results/patterns-<time>.json`.

use serde_json::{Value, json};
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use vigil::policy::Pattern;

const LENGTHS_KIB: [usize; 6] = [1, 2, 4, 8, 16, 32];
/// Each figure is the best of this many rounds, each round at least `ROUND` long.
const ROUNDS: usize = 7;
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
            pattern: "/files/*-*-*.txt",
            users: false,
            input: |n| repeat_to("-", "/files/", ".txt", n),
        },
        Case {
            pattern: "/files/**-**-**-**.txt",
            users: false,
            input: |n| repeat_to("-", "/files/", ".txt", n),
        },
        Case {
            pattern: "/**/x/**/x/**/y",
            users: false,
            input: |n| repeat_to("/x", "", "", n),
        },
        Case {
            pattern: "/**/x/**/x/**/y",
            users: false,
            input: |n| repeat_to("/x", "", "/y", n),
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
            pattern: "a*a*a*a*a*a*a*a*b",
            users: false,
            input: |n| repeat_to("a", "", "b", n),
        },
        Case {
            pattern: "*@*.corp.com",
            users: true,
            input: |n| repeat_to("a.", "", "@x.corp.com", n),
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
    print!("{:<42}", "pattern, match?      ns per input byte at:");
    for k in LENGTHS_KIB {
        print!("{:>8}", format!("{k} KiB"));
    }
    println!("{:>8}{:>12}", "growth", "µs @32 KiB");
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
        // Cost per byte at 32 KiB over cost per byte at 1 KiB: about 1 (or below, when the
        // engine can decide without reading everything) means linear; backtracking grows it
        // with every doubling.
        let growth = per_byte[per_byte.len() - 1] / per_byte[0];
        let largest = (case.input)(LENGTHS_KIB[LENGTHS_KIB.len() - 1] * 1024);
        let hit = p.matches(&largest);
        let us = per_byte[per_byte.len() - 1] * largest.len() as f64 / 1000.0;
        let label = format!(
            "{}{}, {}",
            case.pattern,
            if case.users { " (users)" } else { "" },
            if hit { "yes" } else { "no" }
        );
        print!("{label:<42}");
        for nb in &per_byte {
            print!("{nb:>8.3}");
        }
        println!("{growth:>8.2}{us:>12.2}");
        rows.push(json!({
            "pattern": case.pattern,
            "users": case.users,
            "matches": hit,
            "points": points,
            "growth_ns_per_byte_32k_over_1k": growth,
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
