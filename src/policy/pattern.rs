//! Wildcard patterns for SPIFFE IDs, names, addresses and paths.
//!
//! `*` matches any run of characters except `/`; `**` matches any run including `/`.
//! A pattern ending in `/**` whose beginning has no wildcard also matches the bare prefix
//! (`/api/**` matches `/api`). Everything else matches itself, case-sensitively.
//!
//! Patterns for `users` ([`Pattern::user`]) also keep `@` out of every wildcard, so the `@` of an
//! address is only ever matched by an `@` written in the pattern.
//!
//! Matching takes time linear in the input, whatever the pattern: a request must never be able to
//! buy seconds of CPU with a long path against a rule like `/files/*-*-*.txt`. A pattern without
//! a wildcard is a string comparison and one with a single wildcard a prefix, suffix and byte
//! scan (the common shapes: `/api/**`, `spiffe://example.org/ns/web/sa/*`, `*.example.com`); any
//! other is compiled once, at configuration load, to a finite automaton (the `regex` crate, which
//! guarantees linear-time search).

use regex::bytes::{Regex, RegexBuilder};
use std::fmt;

/// Longest pattern accepted. SPIFFE IDs are at most 2048 bytes; nothing an operator writes by
/// hand comes near this.
pub const MAX_PATTERN_BYTES: usize = 4096;
/// Most wildcards in one pattern. Matching stays linear in the input, but its cost per byte grows
/// with the pattern; real patterns have a handful.
pub const MAX_WILDCARDS: usize = 32;
/// Budget for the compiled automaton of one pattern (bytes of heap).
const COMPILED_SIZE_LIMIT: usize = 1 << 20;

#[derive(Clone)]
pub struct Pattern {
    text: String,
    /// Wildcards never cover `@` (patterns for `users`).
    keep_at: bool,
    matcher: Matcher,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    /// `*`: within one segment.
    Star,
    /// `**`: across segments.
    Globstar,
}

#[derive(Clone)]
enum Matcher {
    /// No wildcard: the text itself.
    Exact,
    /// `head`, one wildcard, `tail` (either may be empty). `bare`: the pattern is `L/**` with `L`
    /// literal, which also matches `L` alone.
    One {
        head: Box<str>,
        tail: Box<str>,
        globstar: bool,
        bare: bool,
    },
    /// Two or more wildcards: an anchored automaton.
    Automaton(Regex),
}

impl Pattern {
    /// A pattern for SPIFFE IDs, certificate names, paths and hosts.
    pub fn new(text: &str) -> Result<Self, String> {
        Self::compile(text, false)
    }

    /// A pattern for `users` (subjects and email addresses): as [`Pattern::new`], except that
    /// neither `*` nor `**` covers `@`. `*@example.com` matches `alice@example.com` but not
    /// `a@evil.com@example.com`; `alice*` matches `alice-admin` but not `alice@evil.com`.
    pub fn user(text: &str) -> Result<Self, String> {
        Self::compile(text, true)
    }

    fn compile(text: &str, keep_at: bool) -> Result<Self, String> {
        if text.is_empty() {
            return Err("empty pattern".into());
        }
        if text.len() > MAX_PATTERN_BYTES {
            return Err(format!(
                "pattern of {} bytes is too long (at most {MAX_PATTERN_BYTES})",
                text.len()
            ));
        }
        if text.contains("***") {
            return Err(format!("`{text}`: use `*` or `**`, not `***`"));
        }
        let tokens = tokenize(text);
        let wildcards = tokens
            .iter()
            .filter(|t| !matches!(t, Token::Literal(_)))
            .count();
        if wildcards > MAX_WILDCARDS {
            return Err(format!(
                "`{text}` has {wildcards} wildcards (at most {MAX_WILDCARDS})"
            ));
        }
        let matcher = match tokens.as_slice() {
            [Token::Literal(_)] => Matcher::Exact,
            _ if wildcards == 1 => {
                let (mut head, mut tail, mut globstar) = ("", "", false);
                let mut seen = false;
                for t in &tokens {
                    match t {
                        Token::Literal(l) if seen => tail = l,
                        Token::Literal(l) => head = l,
                        Token::Star => seen = true,
                        Token::Globstar => (seen, globstar) = (true, true),
                    }
                }
                Matcher::One {
                    bare: globstar && tail.is_empty() && head.ends_with('/'),
                    head: head.into(),
                    tail: tail.into(),
                    globstar,
                }
            }
            _ => Matcher::Automaton(
                automaton(&tokens, keep_at)
                    .map_err(|e| format!("`{}`: pattern too complex ({e})", text.escape_debug()))?,
            ),
        };
        Ok(Self {
            text: text.to_owned(),
            keep_at,
            matcher,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True when the pattern has no wildcard.
    pub fn is_literal(&self) -> bool {
        matches!(self.matcher, Matcher::Exact)
    }

    pub fn matches(&self, input: &str) -> bool {
        match &self.matcher {
            Matcher::Exact => input == self.text,
            Matcher::One {
                head,
                tail,
                globstar,
                bare,
            } => {
                let b = input.as_bytes();
                if *bare && b.len() + 1 == head.len() && head.as_bytes().starts_with(b) {
                    return true;
                }
                if b.len() < head.len() + tail.len()
                    || !b.starts_with(head.as_bytes())
                    || !b.ends_with(tail.as_bytes())
                {
                    return false;
                }
                let middle = &b[head.len()..b.len() - tail.len()];
                match (*globstar, self.keep_at) {
                    (true, false) => true,
                    (true, true) => !middle.contains(&b'@'),
                    (false, false) => !middle.contains(&b'/'),
                    (false, true) => !middle.iter().any(|&c| c == b'/' || c == b'@'),
                }
            }
            Matcher::Automaton(re) => re.is_match(input.as_bytes()),
        }
    }
}

fn tokenize(text: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut literal = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '*' {
            if !literal.is_empty() {
                tokens.push(Token::Literal(std::mem::take(&mut literal)));
            }
            if chars.peek() == Some(&'*') {
                chars.next();
                tokens.push(Token::Globstar);
            } else {
                tokens.push(Token::Star);
            }
        } else {
            literal.push(c);
        }
    }
    if !literal.is_empty() {
        tokens.push(Token::Literal(literal));
    }
    tokens
}

/// The whole-input expression for `tokens`, over bytes (Unicode off: a wildcard covers any bytes
/// but the excluded ASCII ones, which never occur inside a UTF-8 sequence). Literal bytes are
/// written as escapes, so nothing in a pattern is ever read as regex syntax.
fn automaton(tokens: &[Token], keep_at: bool) -> Result<Regex, regex::Error> {
    use std::fmt::Write as _;
    let mut expr = String::from(r"(?s-u)\A");
    for t in tokens {
        match t {
            Token::Literal(l) => {
                for b in l.bytes() {
                    if b.is_ascii_alphanumeric() {
                        expr.push(char::from(b));
                    } else {
                        // Writing to a String cannot fail.
                        let _ = write!(expr, r"\x{b:02X}");
                    }
                }
            }
            Token::Star if keep_at => expr.push_str(r"[^/@]*"),
            Token::Star => expr.push_str(r"[^/]*"),
            Token::Globstar if keep_at => expr.push_str(r"[^@]*"),
            Token::Globstar => expr.push_str(r".*"),
        }
    }
    expr.push_str(r"\z");
    RegexBuilder::new(&expr)
        .unicode(false)
        .size_limit(COMPILED_SIZE_LIMIT)
        .dfa_size_limit(2 * COMPILED_SIZE_LIMIT)
        .build()
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text && self.keep_at == other.keep_at
    }
}

impl Eq for Pattern {}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::{Pattern, Token, tokenize};
    use proptest::prelude::*;
    use std::time::{Duration, Instant};

    #[test]
    fn table() {
        let cases: &[(&str, &str, bool)] = &[
            (
                "spiffe://example.org/ns/frontend/sa/*",
                "spiffe://example.org/ns/frontend/sa/web",
                true,
            ),
            (
                "spiffe://example.org/ns/frontend/sa/*",
                "spiffe://example.org/ns/frontend/sa/web/x",
                false,
            ),
            (
                "spiffe://example.org/ns/frontend/sa/*",
                "spiffe://example.org/ns/backend/sa/web",
                false,
            ),
            (
                "spiffe://example.org/**",
                "spiffe://example.org/ns/a/sa/b",
                true,
            ),
            (
                "spiffe://example.org/**",
                "spiffe://example.org.evil/ns",
                false,
            ),
            (
                "spiffe://example.org/ns/*/sa/web",
                "spiffe://example.org/ns/prod/sa/web",
                true,
            ),
            ("/api/**", "/api", true),
            ("/api/**", "/api/", true),
            ("/api/**", "/api/v1/x", true),
            ("/api/**", "/apix", false),
            ("/api/*", "/api/v1", true),
            ("/api/*", "/api/v1/x", false),
            ("/exact", "/exact", true),
            ("/exact", "/exact/", false),
            ("*.example.com", "a.example.com", true),
            ("*", "", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            // More of the documented semantics, across the three matchers.
            ("/**", "", true),
            ("/**", "/", true),
            ("/**", "/a/b", true),
            ("/**", "a", false),
            ("**", "", true),
            ("**", "/a/b", true),
            ("/a/*/**", "/a/b", false),
            ("/a/*/**", "/a/b/", true),
            ("/a/*/**", "/a/b/c/d", true),
            ("/a/**/b", "/a/b", false),
            ("/a/**/b", "/a//b", true),
            ("/a/**/b", "/a/x/y/b", true),
            ("/a**", "/a", true),
            ("/a**", "/ab/c", true),
            ("/x/**/y/*", "/x/y/z", false),
            ("/x/**/y/*", "/x//y/z", true),
            ("/x/**/y/*", "/x/1/2/y/z", true),
            ("/x/**/y/*", "/x/1/2/y/z/w", false),
            ("*-laptop", "alice-laptop", true),
            ("*-laptop", "alice-desktop", false),
            ("*-laptop", "a/b-laptop", false),
            ("*.example.com", "a.b.example.com", true),
            ("*.example.com", "example.com", false),
            ("a*a", "a", false),
            ("a*a", "aa", true),
            ("a**a", "a/a", true),
            ("/Case", "/case", false),
            ("/é/*", "/é/ü", true),
            ("/é/*/x", "/é/ü/x", true),
            ("/é/*/x", "/é/ü/y/x", false),
            ("/a.b+c(d)[e]$^|?/*/\\x", "/a.b+c(d)[e]$^|?/z/\\x", true),
            ("/a.b+c(d)[e]$^|?/*/\\x", "/aXb+c(d)[e]$^|?/z/\\x", false),
            ("/a.*.c/*", "/a.b.c/d", true),
            ("/a.*.c/*", "/a/b.c/d", false),
        ];
        for (pattern, input, want) in cases {
            let p = Pattern::new(pattern).unwrap();
            assert_eq!(p.matches(input), *want, "{pattern} vs {input}");
            assert_eq!(reference(&tokenize(pattern), pattern, input, false), *want);
        }
    }

    #[test]
    fn rejects_empty_triple_star_and_oversized() {
        assert!(Pattern::new("").is_err());
        assert!(Pattern::new("/a/***").is_err());
        assert!(Pattern::new(&"/a".repeat(3000)).is_err());
        assert!(Pattern::new(&"/*".repeat(33)).is_err());
        assert!(Pattern::new(&"/*".repeat(32)).is_ok());
        // At the limits, still a clean result (never a panic) and still quick to match.
        let long = format!("{}/**/x/*", "/a".repeat(2040));
        let p = Pattern::new(&long).unwrap();
        assert!(p.matches(&format!("{}/b/x/c", "/a".repeat(2040))));
        let many = format!("{}z", "*a".repeat(32));
        let p = Pattern::new(&many).unwrap();
        assert!(!p.matches(&"a".repeat(30_000)));
    }

    #[test]
    fn literal_and_one_wildcard_fast_paths() {
        assert!(Pattern::new("/exact").unwrap().is_literal());
        assert!(!Pattern::new("/api/**").unwrap().is_literal());
        assert_eq!(Pattern::new("/a/*").unwrap().to_string(), "/a/*");
        assert_eq!(format!("{:?}", Pattern::new("/a/*").unwrap()), "\"/a/*\"");
        assert_eq!(Pattern::new("/a").unwrap(), Pattern::new("/a").unwrap());
        assert_ne!(Pattern::new("*@a").unwrap(), Pattern::user("*@a").unwrap());
    }

    /// Patterns a backtracking matcher needs exponential or high-polynomial time for; each is
    /// matched against 30 000-byte inputs, which such a matcher cannot finish in this suite's
    /// lifetime (`/files/*-*-*.txt` against 2 500 bytes took seconds).
    #[test]
    fn pathological_patterns_take_linear_time() {
        let n = 30_000;
        let dashes = format!("/files/{}", "-".repeat(n));
        let xs = "/x".repeat(n / 2);
        let a_run = "a".repeat(n);
        let cases: Vec<(&str, String, bool)> = vec![
            ("/files/*-*-*.txt", dashes.clone(), false),
            ("/files/*-*-*.txt", format!("{dashes}.txt"), true),
            ("/files/**-**-**-**.txt", dashes.clone(), false),
            ("/**/x/**/x/**/y", xs.clone(), false),
            ("/**/x/**/x/**/y", format!("{xs}/y"), true),
            ("/**/x/**/x/**/x/**/x/**/y", xs.clone(), false),
            ("a*a*a*a*a*a*a*a*b", a_run.clone(), false),
            ("a**a**a**a**a**a**a**b", a_run.clone(), false),
            ("*a*a*a*a*a*a*a*a*a*a*", a_run.clone(), true),
            ("**a*a**a*a**a*a**b", a_run.clone(), false),
        ];
        for (pattern, input, want) in &cases {
            for user in [false, true] {
                let p = if user {
                    Pattern::user(pattern).unwrap()
                } else {
                    Pattern::new(pattern).unwrap()
                };
                let started = Instant::now();
                assert_eq!(p.matches(input), *want, "{pattern}");
                let took = started.elapsed();
                // Linear time is well under a millisecond here even in a debug build; the bound
                // is loose for a loaded machine, and far below what backtracking needs.
                assert!(
                    took < Duration::from_secs(2),
                    "{pattern} took {took:?} on {} bytes",
                    input.len()
                );
            }
        }
    }

    #[test]
    fn user_patterns_keep_at_out_of_wildcards() {
        let cases: &[(&str, &str, bool)] = &[
            ("*@corp.com", "alice@corp.com", true),
            ("*@corp.com", "a@evil.com@corp.com", false),
            ("*@corp.com", "alice@corp.com.evil", false),
            ("**@corp.com", "a@evil.com@corp.com", false),
            ("**@corp.com", "a/b@corp.com", true),
            ("alice*", "alice-admin", true),
            ("alice*", "alice@evil.com", false),
            ("alice@*", "alice@corp.com", true),
            ("alice@*", "alice@evil.com@corp.com", false),
            ("alice@*.corp.com", "alice@eu.corp.com", true),
            ("alice@*.corp.com", "alice@x@eu.corp.com", false),
            ("*@*", "alice@corp.com", true),
            ("*@*", "alice@evil@corp.com", false),
            ("*@*@corp.com", "a@evil.com@corp.com", true),
            ("*-svc", "billing-svc", true),
            ("*-svc", "x@billing-svc", false),
            ("alice@corp.com", "alice@corp.com", true),
            ("alice@corp.com", "Alice@corp.com", false),
            ("user-*-*@corp.com", "user-a-b@corp.com", true),
            ("user-*-*@corp.com", "user-a-b@x@corp.com", false),
        ];
        for (pattern, input, want) in cases {
            let p = Pattern::user(pattern).unwrap();
            assert_eq!(p.matches(input), *want, "{pattern} vs {input}");
            assert_eq!(reference(&tokenize(pattern), pattern, input, true), *want);
        }
        // Outside `users`, `*` still crosses `@` (documented for cert_san).
        assert!(Pattern::new("*@corp.com").unwrap().matches("a@b@corp.com"));
    }

    /// Today's documented semantics, as the straightforward backtracking matcher Vigil used to
    /// have: exponential on bad inputs, fine on small ones.
    fn reference(tokens: &[Token], text: &str, input: &str, keep_at: bool) -> bool {
        if let Some(prefix) = text.strip_suffix("/**")
            && !prefix.contains('*')
            && input == prefix
        {
            return true;
        }
        walk(tokens, input, keep_at)
    }

    fn walk(tokens: &[Token], input: &str, keep_at: bool) -> bool {
        match tokens.split_first() {
            None => input.is_empty(),
            Some((Token::Literal(lit), rest)) => input
                .strip_prefix(lit.as_str())
                .is_some_and(|tail| walk(rest, tail, keep_at)),
            Some((wild, rest)) => {
                let crosses = matches!(wild, Token::Globstar);
                let mut end = 0;
                loop {
                    if walk(rest, &input[end..], keep_at) {
                        return true;
                    }
                    let Some(c) = input[end..].chars().next() else {
                        return false;
                    };
                    if (c == '/' && !crosses) || (c == '@' && keep_at) {
                        return false;
                    }
                    end += c.len_utf8();
                }
            }
        }
    }

    /// Short texts over an alphabet where wildcards, separators and literal overlaps are common.
    fn text(max: usize) -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just("a"),
                Just("b"),
                Just("/"),
                Just("@"),
                Just("."),
                Just("é"),
                Just("ab")
            ],
            0..max,
        )
        .prop_map(|parts| parts.concat())
    }

    fn pattern_text() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                3 => text(3),
                1 => Just("*".to_owned()),
                1 => Just("**".to_owned()),
            ],
            1..6,
        )
        .prop_map(|parts| parts.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1500))]

        /// The compiled matchers agree with the reference on every small case.
        #[test]
        fn agrees_with_reference(pattern in pattern_text(), input in text(8), user in any::<bool>()) {
            let compiled = if user { Pattern::user(&pattern) } else { Pattern::new(&pattern) };
            match compiled {
                Ok(p) => {
                    let want = reference(&tokenize(&pattern), &pattern, &input, user);
                    prop_assert_eq!(p.matches(&input), want, "{:?} vs {:?}", pattern, input);
                }
                Err(_) => prop_assert!(pattern.is_empty() || pattern.contains("***")),
            }
        }

        /// A pattern without wildcards matches exactly itself.
        #[test]
        fn literal_matches_only_itself(pattern in text(8), input in text(8)) {
            prop_assume!(!pattern.is_empty());
            let p = Pattern::new(&pattern).unwrap();
            prop_assert!(p.is_literal());
            prop_assert!(p.matches(&pattern));
            prop_assert_eq!(p.matches(&input), input == pattern);
        }

        /// Replacing every `*` by `**` only ever matches more.
        #[test]
        fn globstar_covers_star(pattern in pattern_text(), input in text(8)) {
            let Ok(star) = Pattern::new(&pattern) else { return Ok(()) };
            let wide = pattern.replace("**", "*").replace('*', "**");
            if let Ok(globstar) = Pattern::new(&wide)
                && star.matches(&input)
            {
                prop_assert!(globstar.matches(&input), "{:?} / {:?} vs {:?}", pattern, wide, input);
            }
        }

        /// A `users` pattern matches only what the same pattern matches elsewhere.
        #[test]
        fn user_pattern_is_narrower(pattern in pattern_text(), input in text(8)) {
            if let (Ok(user), Ok(plain)) = (Pattern::user(&pattern), Pattern::new(&pattern))
                && user.matches(&input)
            {
                prop_assert!(plain.matches(&input));
            }
        }
    }
}
