//! Hex as Vigil shows and reads it: fingerprints, serials and request id prefixes.

/// The lower-case hex digits.
pub const LOWER: &[u8; 16] = b"0123456789abcdef";

/// Lower-case hex without separators; the form serials are shown and logged in.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(LOWER[usize::from(b >> 4)]));
        out.push(char::from(LOWER[usize::from(b & 0x0f)]));
    }
    out
}

/// Parses a serial typed or pasted by a user: `0a1b2c`, `0A:1B:2C`, `0x0a1b`
/// or `serial=0A1B` (the `openssl x509 -serial` output). An odd number of
/// digits is read as if it had a leading zero.
pub fn parse_serial(s: &str) -> Result<Vec<u8>, String> {
    let bad = |why: &str| format!("serial {s:?} is not hex: {why}");
    let digits_of = |part: &str| -> Option<Vec<u8>> {
        part.chars()
            .map(|c| c.to_digit(16).and_then(|d| u8::try_from(d).ok()))
            .collect()
    };
    let t = s.trim();
    let t = t.strip_prefix("serial=").unwrap_or(t);
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    if t.is_empty() {
        return Err(bad("empty"));
    }
    let mut out = Vec::new();
    if t.contains(':') {
        for group in t.split(':') {
            let digits = digits_of(group).ok_or_else(|| bad("unexpected character"))?;
            match digits.as_slice() {
                [lo] => out.push(*lo),
                [hi, lo] => out.push((hi << 4) | lo),
                _ => return Err(bad("each ':'-separated group must be one or two digits")),
            }
        }
    } else {
        let mut digits = digits_of(t).ok_or_else(|| bad("unexpected character"))?;
        if digits.len() % 2 == 1 {
            digits.insert(0, 0);
        }
        for pair in digits.chunks_exact(2) {
            if let [hi, lo] = pair {
                out.push((hi << 4) | lo);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_and_parse() {
        assert_eq!(encode(&[0x0a, 0x1b, 0xff]), "0a1bff");
        assert_eq!(encode(&[]), "");
        for input in [
            "0a1bff",
            "0A:1B:FF",
            "0a:1b:ff",
            "0x0a1bff",
            "serial=0A1BFF",
            " a1bff\n",
            "a:1b:ff",
        ] {
            assert_eq!(
                parse_serial(input).expect(input),
                vec![0x0a, 0x1b, 0xff],
                "{input}"
            );
        }
        for input in ["", "0x", "zz", "0a::1b", "0a:", "abc:1", "+f", "0a 1b", "é"] {
            assert!(parse_serial(input).is_err(), "{input:?} should be rejected");
        }
    }
}
