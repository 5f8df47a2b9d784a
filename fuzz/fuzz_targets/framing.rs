//! The HTTP/1 framing watcher: never panics, and how the bytes of a connection are split into
//! reads never changes a verdict. A client controls the split (one byte per TCP segment, or a
//! whole pipeline in one), so a verdict that depends on it is a way around the watcher.
//!
//! Input: `[n] [len_1] .. [len_n] stream`. The stream is fed once whole, and once in pieces of
//! `len_1`, .., `len_n` bytes followed by the rest (or byte by byte when bit 0x80 of `n` is
//! set); the verdicts for every request index must agree.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil::framing::{Verdict, Watch};

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(control & 0x0f).min(rest.len());
    let (lengths, stream) = rest.split_at(count);

    let whole = Verdict::new();
    Watch::new(whole.clone()).feed(stream);

    let pieces = Verdict::new();
    let mut watch = Watch::new(pieces.clone());
    if control & 0x80 != 0 {
        for byte in stream {
            watch.feed(std::slice::from_ref(byte));
        }
    } else {
        let mut left = stream;
        for &len in lengths {
            let (piece, after) = left.split_at(usize::from(len).min(left.len()));
            watch.feed(piece);
            left = after;
        }
        watch.feed(left);
    }

    // A request needs at least one line, so no index beyond the line count can differ.
    let lines = stream.iter().filter(|&&b| b == b'\n').count() as u64;
    for index in (0..=lines + 1).chain([u64::MAX - 1]) {
        assert_eq!(
            whole.refusal(index),
            pieces.refusal(index),
            "request {index}: the verdict depends on how the stream was split"
        );
    }
});
