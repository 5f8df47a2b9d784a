//! The path and host canonicaliser: never panics, and whatever it accepts comes out in the one
//! canonical form that routing, policy and the upstream all see.
//!
//! Input: any bytes; as UTF-8 they are given to both `normalize_path` and `normalize_host`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::borrow::Cow;
use vigil::canonical::{host_without_port, normalize_host, normalize_path};

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    check_path(raw);
    check_host(raw);
});

fn check_path(raw: &str) {
    let Ok(out) = normalize_path(raw) else {
        return;
    };
    if let Cow::Borrowed(b) = &out {
        assert_eq!(*b, raw, "borrowed output differs from the input");
    }
    let out: &str = &out;
    assert!(out.starts_with('/'), "{raw:?} -> {out:?}: not absolute");
    assert!(!out.contains("//"), "{raw:?} -> {out:?}: empty segment");
    // Dot segments anywhere, including a trailing `/.` or `/..`.
    let mut segments = out.split('/').skip(1);
    assert!(
        !segments.any(|s| s == "." || s == ".."),
        "{raw:?} -> {out:?}: dot segment"
    );
    let upper = out.to_ascii_uppercase();
    for bad in ["%2F", "%5C", "%00", "\\", "\0", "#", "?", ";", " "] {
        assert!(!upper.contains(bad), "{raw:?} -> {out:?}: contains {bad:?}");
    }
    assert!(
        out.bytes().all(|b| (0x21..0x7f).contains(&b)),
        "{raw:?} -> {out:?}: byte outside visible ASCII"
    );
    // Idempotent, and a canonical path comes back borrowed (no second rewrite).
    match normalize_path(out) {
        Ok(Cow::Borrowed(again)) => assert_eq!(again, out),
        Ok(Cow::Owned(again)) => panic!("{raw:?} -> {out:?} -> {again:?}: not idempotent"),
        Err(e) => panic!("{raw:?} -> {out:?} refused on the second pass: {e}"),
    }
}

fn check_host(raw: &str) {
    let Ok(out) = normalize_host(raw) else {
        return;
    };
    assert!(!out.is_empty(), "{raw:?}: empty host accepted");
    assert!(
        out.bytes()
            .all(|b| b.is_ascii_graphic() && !b.is_ascii_uppercase() && b != b'@'),
        "{raw:?} -> {out:?}: not lower-case visible ASCII"
    );
    assert!(
        !out.ends_with(":443"),
        "{raw:?} -> {out:?}: default port kept"
    );
    match normalize_host(&out) {
        Ok(again) => assert_eq!(again, out, "{raw:?}: not idempotent"),
        Err(e) => panic!("{raw:?} -> {out:?} refused on the second pass: {e}"),
    }
    let name = host_without_port(&out);
    assert!(
        out.starts_with(name),
        "{raw:?} -> {out:?}: host part {name:?}"
    );
    match out.get(name.len()..) {
        Some("") => {}
        Some(port) => {
            let n: u16 = port
                .strip_prefix(':')
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("{raw:?} -> {out:?}: bad port part {port:?}"));
            assert!(n != 0 && n != 443, "{raw:?} -> {out:?}: port {n}");
            assert!(!port.starts_with(":0"), "{raw:?} -> {out:?}: leading zero");
        }
        None => panic!("{raw:?} -> {out:?}: host part not at a char boundary"),
    }
}
