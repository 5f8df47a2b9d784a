//! Blocks: subjects (users, devices, workloads, source addresses) refused for a time, by a
//! detector or by an operator. A block is a fact of the decision: a blocked request is denied
//! before any rule is looked at, in audit mode too, and never reaches an upstream; what a
//! blocked subject keeps open is cut off by the live verifier.

use crate::access::{Subject, Who};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// One block in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Block {
    pub subject: Subject,
    /// Why, as people read it.
    pub reason: String,
    /// The detector that blocked, or `admin` for an operator's block.
    pub by: String,
    /// Unix seconds.
    pub since: i64,
    /// Unix seconds: the block is lifted then.
    pub until: i64,
}

/// `block` as the shared state stores and announces it (a `block` change: see
/// `state::changes`).
pub fn entry(block: &Block) -> crate::fleet::Entry {
    let json = serde_json::json!({ "change": "block", "block": block }).to_string();
    crate::fleet::Entry::put(
        format!("block:{}", block.subject.key()),
        json,
        Some(block.until),
    )
}

/// Blocks kept at most; beyond, the one ending soonest makes room.
pub const MAX_BLOCKS: usize = 100_000;

/// The blocks in force, for the life of the process.
#[derive(Default)]
pub struct Blocks {
    /// Fast path: nothing was ever blocked.
    any: AtomicBool,
    inner: RwLock<HashMap<Subject, Block>>,
}

impl Blocks {
    /// Blocks `block.subject` (a longer block of the same subject is kept). Returns true when
    /// the subject was not blocked before.
    pub fn block(&self, block: Block) -> bool {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let now = block.since;
        inner.retain(|_, b| b.until > now);
        if inner.len() >= MAX_BLOCKS && !inner.contains_key(&block.subject) {
            let soonest = inner
                .iter()
                .min_by_key(|(_, b)| b.until)
                .map(|(s, _)| s.clone());
            if let Some(s) = soonest {
                inner.remove(&s);
            }
        }
        self.any.store(true, Ordering::Release);
        match inner.get_mut(&block.subject) {
            Some(existing) if existing.until >= block.until => false,
            Some(existing) => {
                *existing = block;
                false
            }
            None => {
                inner.insert(block.subject.clone(), block);
                true
            }
        }
    }

    /// Lifts the block of `subject`; the block lifted, if there was one.
    pub fn lift(&self, subject: &Subject) -> Option<Block> {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.remove(subject)
    }

    /// The block that applies to `who` at `now`, if one does.
    pub fn find(&self, who: &Who<'_>, now: i64) -> Option<Block> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        if inner.is_empty() {
            return None;
        }
        let mut keys: Vec<Subject> = Vec::with_capacity(4);
        keys.push(Subject::Device(who.device.to_owned()));
        if let Some(user) = who.user {
            keys.push(Subject::User(user.to_owned()));
        }
        if let Some(email) = who.email {
            keys.push(Subject::User(email.to_ascii_lowercase()));
        }
        if let Some(spiffe) = who.spiffe {
            keys.push(Subject::Spiffe(spiffe.to_owned()));
        }
        if let Some(address) = who.address {
            keys.push(Subject::Address(address));
        }
        keys.iter()
            .filter_map(|k| inner.get(k))
            .find(|b| b.until > now)
            .cloned()
    }

    /// The blocks in force at `now`.
    pub fn list(&self, now: i64) -> Vec<Block> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<Block> = inner.values().filter(|b| b.until > now).cloned().collect();
        out.sort_by_key(|b| b.since);
        out
    }

    /// Drops the blocks that ended by `now` and returns them.
    pub fn expire(&self, now: i64) -> Vec<Block> {
        if !self.any.load(Ordering::Acquire) {
            return Vec::new();
        }
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let ended: Vec<Subject> = inner
            .iter()
            .filter(|(_, b)| b.until <= now)
            .map(|(s, _)| s.clone())
            .collect();
        ended.iter().filter_map(|s| inner.remove(s)).collect()
    }

    /// Replaces every block with `blocks` (the shared state as read back whole).
    pub fn replace(&self, blocks: Vec<Block>, now: i64) {
        let kept: HashMap<Subject, Block> = blocks
            .into_iter()
            .filter(|b| b.until > now)
            .take(MAX_BLOCKS)
            .map(|b| (b.subject.clone(), b))
            .collect();
        if !kept.is_empty() {
            self.any.store(true, Ordering::Release);
        }
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) = kept;
    }

    /// How many blocks are kept (some may have just ended).
    pub fn len(&self) -> usize {
        self.inner.read().map(|i| i.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(subject: Subject, until: i64) -> Block {
        Block {
            subject,
            reason: "r".into(),
            by: "denials".into(),
            since: 0,
            until,
        }
    }

    #[test]
    fn a_block_names_a_user_a_device_or_an_address() {
        let blocks = Blocks::default();
        let who = Who {
            user: Some("u-1"),
            email: Some("Bob@Example.com"),
            groups: &[],
            spiffe: None,
            device: "ab",
            address: Some("127.0.0.9".parse().unwrap()),
        };
        assert!(blocks.find(&who, 1).is_none());
        assert!(blocks.block(block(Subject::User("bob@example.com".into()), 10)));
        assert_eq!(blocks.find(&who, 1).unwrap().until, 10);
        assert!(blocks.find(&who, 10).is_none());
        assert!(
            blocks
                .lift(&Subject::User("bob@example.com".into()))
                .is_some()
        );
        assert!(blocks.block(block(Subject::Address("127.0.0.9".parse().unwrap()), 10)));
        assert!(blocks.find(&who, 1).is_some());
        assert_eq!(blocks.expire(10).len(), 1);
        assert!(blocks.is_empty());
    }
}
