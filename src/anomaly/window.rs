//! Bounded sliding-window tables for the detectors: how many events each key had in a window
//! ([`Counts`]), and how many distinct values each key was seen with in a window
//! ([`Distinct`]).
//!
//! Memory is bounded twice: per key (sixteen counters, or at most `threshold + 1` values)
//! and per table (`table_size` keys). A full table makes room by dropping its older half
//! (keys not touched since the last such drop), so an attacker rotating addresses or
//! identities evicts only keys that are quiet, and an insert costs O(1) amortised: no scan
//! per event. Evictions are counted for `vigil_detector_evictions_total{detector}`.
//!
//! Each table is one mutex held for one update, never across an await.

use prometheus_client::metrics::counter::Counter;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

/// Slices of a window a count is kept in: an event leaves the count between `window` and
/// `window + window / SLICES` after it happened.
pub const SLICES: usize = 16;

/// At most `cap` keys in two generations: keys touched since the last rotation (`young`) and
/// those touched in the generation before (`old`). A key found in `old` moves to `young`;
/// when `young` holds half the cap, `old` is dropped (its keys are evicted) and `young`
/// becomes `old`.
#[derive(Debug)]
pub struct Bounded<K, V> {
    young: HashMap<K, V>,
    old: HashMap<K, V>,
}

impl<K, V> Default for Bounded<K, V> {
    fn default() -> Self {
        Self {
            young: HashMap::new(),
            old: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone, V> Bounded<K, V> {
    /// The value of `key`, made by `make` when it has none; with the number of keys evicted to
    /// make room.
    pub fn entry(&mut self, key: &K, cap: usize, make: impl FnOnce() -> V) -> (&mut V, u64) {
        let mut evicted = 0;
        if !self.young.contains_key(key) {
            let kept = self.old.remove(key);
            if self.young.len() >= (cap / 2).max(1) {
                let young = std::mem::take(&mut self.young);
                evicted = std::mem::replace(&mut self.old, young).len() as u64;
            }
            let value = kept.unwrap_or_else(make);
            return (self.young.entry(key.clone()).or_insert(value), evicted);
        }
        (self.young.entry(key.clone()).or_insert_with(make), evicted)
    }

    /// The value of `key`, if it has one (it is not moved to the young generation).
    pub fn get(&self, key: &K) -> Option<&V> {
        self.young.get(key).or_else(|| self.old.get(key))
    }

    /// Keys kept.
    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One key's events in the last window, in [`SLICES`] slices of `width` seconds.
#[derive(Debug, Clone, Default)]
struct Slices {
    counts: [u32; SLICES],
    /// The slice of the latest event (Unix seconds / width).
    head: i64,
    width: i64,
    /// The count went over the threshold and has not come back under it since: the detector
    /// fired once for this crossing.
    over: bool,
}

impl Slices {
    /// Counts one event at `now`; the count in the window, this one included.
    fn add(&mut self, now: i64, width: i64) -> u32 {
        let slice = now.div_euclid(width);
        if self.width != width {
            *self = Slices {
                width,
                head: slice,
                ..Slices::default()
            };
        }
        let gap = slice - self.head;
        if gap >= SLICES as i64 {
            self.counts = [0; SLICES];
        } else {
            for i in 1..=gap.max(0) {
                self.counts[(self.head + i).rem_euclid(SLICES as i64) as usize] = 0;
            }
        }
        // A clock that went back counts in the latest slice.
        self.head = self.head.max(slice);
        let at = self.head.rem_euclid(SLICES as i64) as usize;
        self.counts[at] = self.counts[at].saturating_add(1);
        self.counts.iter().fold(0u32, |a, c| a.saturating_add(*c))
    }
}

/// The width of one slice of `window`, in seconds (at least one).
fn width(window: Duration) -> i64 {
    (window.as_secs().div_ceil(SLICES as u64)).max(1) as i64
}

/// What one event did to its key's count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crossing {
    /// The count in the window (events, or distinct values), this event included.
    pub count: u32,
    /// True only for the event that took the count over the threshold; later events while
    /// it stays over do not cross again.
    pub crossed: bool,
}

fn judge(count: u32, threshold: u32, over: &mut bool) -> Crossing {
    let crossed = count > threshold && !*over;
    *over = count > threshold;
    Crossing { count, crossed }
}

/// Events per key in a sliding window.
pub struct Counts<K> {
    table: Mutex<Bounded<K, Slices>>,
    evictions: Counter,
}

impl<K: Hash + Eq + Clone> Counts<K> {
    pub fn new(evictions: Counter) -> Self {
        Self {
            table: Mutex::new(Bounded::default()),
            evictions,
        }
    }

    /// Counts an event of `key` at `now` (Unix seconds), in a table of at most `cap` keys.
    pub fn add(&self, key: &K, now: i64, window: Duration, threshold: u32, cap: usize) -> Crossing {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let (slices, evicted) = table.entry(key, cap, Slices::default);
        let count = slices.add(now, width(window));
        let crossing = judge(count, threshold, &mut slices.over);
        drop(table);
        self.evictions.inc_by(evicted);
        crossing
    }

    /// Keys kept.
    pub fn len(&self) -> usize {
        self.table.lock().map(|t| t.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One key's distinct values, each with when it was last seen; at most `threshold + 1`.
#[derive(Debug, Default)]
struct Seen {
    values: Vec<(Box<str>, i64)>,
    over: bool,
}

/// Distinct values per key in a sliding window (a `COUNT(DISTINCT value)` per key).
pub struct Distinct<K> {
    table: Mutex<Bounded<K, Seen>>,
    evictions: Counter,
}

impl<K: Hash + Eq + Clone> Distinct<K> {
    pub fn new(evictions: Counter) -> Self {
        Self {
            table: Mutex::new(Bounded::default()),
            evictions,
        }
    }

    /// Notes `value` for `key` at `now`. Values not seen for `window` are forgotten; beyond
    /// `threshold + 1` values the one seen longest ago makes room, which is enough to know
    /// whether the count is over the threshold.
    pub fn add(
        &self,
        key: &K,
        value: &str,
        now: i64,
        window: Duration,
        threshold: u32,
        cap: usize,
    ) -> Crossing {
        let since = now.saturating_sub(window.as_secs() as i64);
        let keep = threshold as usize + 1;
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let (seen, evicted) = table.entry(key, cap, Seen::default);
        seen.values.retain(|(_, at)| *at > since);
        match seen.values.iter_mut().find(|(v, _)| &**v == value) {
            Some((_, at)) => *at = (*at).max(now),
            None => {
                if seen.values.len() >= keep
                    && let Some(oldest) = (0..seen.values.len()).min_by_key(|i| seen.values[*i].1)
                {
                    seen.values.swap_remove(oldest);
                }
                seen.values.push((value.into(), now));
            }
        }
        let count = seen.values.len() as u32;
        let crossing = judge(count, threshold, &mut seen.over);
        drop(table);
        self.evictions.inc_by(evicted);
        crossing
    }

    /// Keys kept.
    pub fn len(&self) -> usize {
        self.table.lock().map(|t| t.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_count_crosses_once_and_forgets_what_left_the_window() {
        let counts = Counts::new(Counter::default());
        let key = "alice".to_owned();
        let mut crossed = Vec::new();
        for i in 0..15 {
            let c = counts.add(&key, 1000 + i, HOUR, 10, 100);
            assert_eq!(c.count, i as u32 + 1);
            crossed.push(c.crossed);
        }
        // The eleventh event crosses; the ones after it do not cross again.
        assert_eq!(crossed.iter().filter(|c| **c).count(), 1);
        assert!(crossed[10]);
        // A window and a slice later, everything has left.
        let later = counts.add(&key, 1000 + 3600 + 3600 / 16 + 1, HOUR, 10, 100);
        assert_eq!(later.count, 1);
        assert!(!later.crossed);
        // Back under the threshold, the next crossing fires again.
        let mut again = 0;
        for i in 0..11 {
            again += u32::from(counts.add(&key, 9000 + i, HOUR, 10, 100).crossed);
        }
        assert_eq!(again, 1);
    }

    #[test]
    fn slices_expire_one_by_one() {
        let counts = Counts::new(Counter::default());
        let key = 1u32;
        let window = Duration::from_secs(160); // slices of 10 seconds
        for t in [0, 10, 20, 30] {
            counts.add(&key, t, window, 100, 10);
        }
        assert_eq!(counts.add(&key, 159, window, 100, 10).count, 5);
        // At 185 the slices of t=0, 10 and 20 are gone: 30, 159 and 185 are left.
        assert_eq!(counts.add(&key, 185, window, 100, 10).count, 3);
    }

    #[test]
    fn distinct_values_are_bounded_per_key_and_cross_once() {
        let distinct = Distinct::new(Counter::default());
        let key = "bob".to_owned();
        let mut fired = 0;
        for i in 0..50 {
            let c = distinct.add(&key, &format!("10.0.0.{i}"), 100 + i, HOUR, 3, 100);
            assert!(c.count <= 4, "{c:?}");
            fired += u32::from(c.crossed);
        }
        assert_eq!(fired, 1);
        // The same value again is not a new one.
        let same = Distinct::new(Counter::default());
        for t in 0..10 {
            assert_eq!(same.add(&key, "DE", t, HOUR, 1, 100).count, 1);
        }
        assert!(same.add(&key, "FR", 20, HOUR, 1, 100).crossed);
        // Values not seen for a window are forgotten.
        assert_eq!(same.add(&key, "US", 20 + 3601, HOUR, 1, 100).count, 1);
    }

    #[test]
    fn a_million_source_addresses_stay_within_the_table_size() {
        let evictions = Counter::default();
        let counts = Counts::new(evictions.clone());
        let cap = 10_000;
        let n: u32 = 1_000_000;
        for i in 0..n {
            let key = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            counts.add(&key, 1_000_000 + i64::from(i / 1000), HOUR, 10, cap);
            if i % 100_000 == 0 {
                assert!(counts.len() <= cap);
            }
        }
        assert!(counts.len() <= cap, "{} keys", counts.len());
        assert_eq!(evictions.get(), u64::from(n) - counts.len() as u64);
    }

    #[test]
    fn a_busy_key_survives_rotating_ones() {
        let counts = Counts::new(Counter::default());
        let busy = u32::MAX;
        let mut last = 0;
        for i in 0..100_000u32 {
            counts.add(&i, 10, HOUR, 1_000_000, 1000);
            if i % 100 == 0 {
                last = counts.add(&busy, 10, HOUR, 1_000_000, 1000).count;
            }
        }
        assert_eq!(last, 1000);
    }
}
