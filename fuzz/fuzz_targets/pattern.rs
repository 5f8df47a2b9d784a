//! The wildcard matcher: never panics, agrees with a small reference matcher written from the
//! documented semantics, and (through libFuzzer's `-timeout`) never takes long on any input.
//!
//! Input: `pattern \n input`, both UTF-8 (the first `\n` separates them).
//!
//! Documented semantics (src/policy/pattern.rs): `*` matches any run of characters except
//! `/`; `**` any run including `/`; a pattern ending in `/**` whose prefix has no wildcard also
//! matches the bare prefix; everything else matches itself, case-sensitively. An empty pattern
//! and `***` are refused, and so are patterns over the size limits (bytes, wildcards, compiled
//! automaton). Patterns for `users` ([`Pattern::user`]) are the same except that no wildcard
//! covers `@`; both forms are checked on every input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil::policy::Pattern;
use vigil::policy::pattern::{MAX_PATTERN_BYTES, MAX_WILDCARDS};

/// Above this many (pattern byte, input byte) pairs the reference is not run; the unit is
/// still matched, so slow matching shows up as a timeout.
const REFERENCE_LIMIT: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, input) = text.split_once('\n').unwrap_or((text, ""));

    check(pattern, input, false);
    check(pattern, input, true);
});

fn check(pattern: &str, input: &str, users: bool) {
    let wildcards = tokens(pattern)
        .iter()
        .filter(|t| !matches!(t, Tok::Lit(_)))
        .count();
    let refused = pattern.is_empty() || pattern.contains("***");
    let over_limits = pattern.len() > MAX_PATTERN_BYTES || wildcards > MAX_WILDCARDS;
    let compiled = match if users {
        Pattern::user(pattern)
    } else {
        Pattern::new(pattern)
    } {
        Ok(p) => p,
        Err(e) => {
            assert!(
                refused || over_limits || e.contains("too complex"),
                "{pattern:?} refused: {e}"
            );
            return;
        }
    };
    assert!(!refused && !over_limits, "{pattern:?} accepted");
    assert_eq!(compiled.as_str(), pattern);

    let got = compiled.matches(input);
    if pattern.len().saturating_mul(input.len() + 1) <= REFERENCE_LIMIT {
        let want = reference(pattern, input, users);
        assert_eq!(got, want, "{pattern:?} against {input:?} (users: {users})");
    }
    // A pattern always matches its own literal text when it has no wildcard.
    if !pattern.contains('*') {
        assert!(
            compiled.matches(pattern),
            "{pattern:?} does not match itself"
        );
    }
}

#[derive(Clone, Copy)]
enum Tok<'a> {
    Lit(&'a [u8]),
    Star,
    Globstar,
}

fn tokens(pattern: &str) -> Vec<Tok<'_>> {
    let b = pattern.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'*' {
            if b.get(i + 1) == Some(&b'*') {
                out.push(Tok::Globstar);
                i += 2;
            } else {
                out.push(Tok::Star);
                i += 1;
            }
        } else {
            let start = i;
            while i < b.len() && b[i] != b'*' {
                i += 1;
            }
            out.push(Tok::Lit(&b[start..i]));
        }
    }
    out
}

/// Dynamic programming over (token, input position): `reach[j]` is true when the tokens so
/// far can consume exactly `input[..j]`. Byte-wise is exact for UTF-8: a literal never starts
/// on a continuation byte, and `/` and `@` are ASCII. `users`: no wildcard covers `@`.
fn reference(pattern: &str, input: &str, users: bool) -> bool {
    if let Some(prefix) = pattern.strip_suffix("/**")
        && !prefix.contains('*')
        && input == prefix
    {
        return true;
    }
    let s = input.as_bytes();
    let mut reach = vec![false; s.len() + 1];
    reach[0] = true;
    for tok in tokens(pattern) {
        let mut next = vec![false; s.len() + 1];
        match tok {
            Tok::Lit(lit) => {
                for j in 0..=s.len() {
                    if reach[j] && s[j..].starts_with(lit) {
                        next[j + lit.len()] = true;
                    }
                }
            }
            Tok::Star | Tok::Globstar => {
                let crosses = matches!(tok, Tok::Globstar);
                let mut open = false;
                for j in 0..=s.len() {
                    open |= reach[j];
                    next[j] = open;
                    if j < s.len() && ((s[j] == b'/' && !crosses) || (s[j] == b'@' && users)) {
                        open = false;
                    }
                }
            }
        }
        reach = next;
    }
    reach[s.len()]
}
