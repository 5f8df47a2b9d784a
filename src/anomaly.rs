//! Automatic response: detectors that count what requests do (denials, failed sign-ins,
//! refusals for revoked credentials, distinct addresses and countries per person) in bounded
//! sliding windows, and act when a count goes over its threshold: a risk signal, or a block
//! of the subject. Blocks are ordered by detectors or operators.

pub mod blocks;
pub mod detect;
pub mod window;
