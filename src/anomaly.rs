//! Automatic response: blocks of subjects, ordered by detectors or operators.

pub mod blocks;
