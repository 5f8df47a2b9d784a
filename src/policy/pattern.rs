//! Wildcard patterns for SPIFFE IDs, names and paths.
//!
//! `*` matches any run of characters except `/`; `**` matches any run including `/`.
//! A pattern ending in `/**` also matches the bare prefix (`/api/**` matches `/api`).
//! Everything else matches itself, case-sensitively.

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    /// `*`: within one segment.
    Star,
    /// `**`: across segments.
    Globstar,
}

impl Pattern {
    pub fn new(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("empty pattern".into());
        }
        if text.contains("***") {
            return Err(format!("`{text}`: use `*` or `**`, not `***`"));
        }
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
        Ok(Self {
            text: text.to_owned(),
            tokens,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True when the pattern has no wildcard.
    pub fn is_literal(&self) -> bool {
        matches!(self.tokens.as_slice(), [Token::Literal(_)])
    }

    pub fn matches(&self, input: &str) -> bool {
        if let Some(prefix) = self.text.strip_suffix("/**")
            && !prefix.contains('*')
            && input == prefix
        {
            return true;
        }
        match_tokens(&self.tokens, input)
    }
}

fn match_tokens(tokens: &[Token], input: &str) -> bool {
    match tokens.split_first() {
        None => input.is_empty(),
        Some((Token::Literal(lit), rest)) => input
            .strip_prefix(lit.as_str())
            .is_some_and(|tail| match_tokens(rest, tail)),
        Some((wild, rest)) => {
            let crosses = matches!(wild, Token::Globstar);
            // Try every split point; patterns are short and written by operators.
            let mut end = 0;
            loop {
                if match_tokens(rest, &input[end..]) {
                    return true;
                }
                let Some(c) = input[end..].chars().next() else {
                    return false;
                };
                if c == '/' && !crosses {
                    return false;
                }
                end += c.len_utf8();
            }
        }
    }
}

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
    use super::Pattern;

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
        ];
        for (pattern, input, want) in cases {
            let p = Pattern::new(pattern).unwrap();
            assert_eq!(p.matches(input), *want, "{pattern} vs {input}");
        }
    }

    #[test]
    fn rejects_empty_and_triple_star() {
        assert!(Pattern::new("").is_err());
        assert!(Pattern::new("/a/***").is_err());
    }
}
