//! The storage every simulated backend shares, like compute nodes over shared
//! storage: key-value tables, changed only by committed transactions.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// One change: `table[key] = value` (`None`: the row was deleted).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Write {
    /// Qualified table name (`db.t`).
    pub table: String,
    /// The key.
    pub key: i64,
    /// The new value.
    pub value: Option<String>,
}

/// A committed transaction, as the store's log keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// Its writes, in statement order.
    pub writes: Vec<Write>,
    /// The backend it ran on.
    pub backend: String,
    /// The backend thread that ran it.
    pub thread: u32,
}

#[derive(Debug, Default)]
struct Inner {
    tables: BTreeMap<String, BTreeMap<i64, String>>,
    auto_increment: BTreeMap<String, i64>,
    log: Vec<Commit>,
}

/// The shared store; clones share the same data.
#[derive(Clone, Debug, Default)]
pub struct Store(Arc<Mutex<Inner>>);

impl Store {
    /// An empty store.
    pub fn new() -> Self {
        Store::default()
    }

    /// The committed value of `table[key]`.
    pub fn get(&self, table: &str, key: i64) -> Option<String> {
        let inner = self.0.lock().expect("store lock");
        inner.tables.get(table)?.get(&key).cloned()
    }

    /// All committed rows of `table`, by key.
    pub fn rows(&self, table: &str) -> BTreeMap<i64, String> {
        let inner = self.0.lock().expect("store lock");
        inner.tables.get(table).cloned().unwrap_or_default()
    }

    /// A fresh auto-increment key for `table`.
    pub fn next_key(&self, table: &str) -> i64 {
        let mut inner = self.0.lock().expect("store lock");
        let max = inner
            .tables
            .get(table)
            .and_then(|t| t.keys().next_back().copied())
            .unwrap_or(0);
        let next = inner.auto_increment.entry(table.to_string()).or_insert(0);
        *next = (*next).max(max) + 1;
        *next
    }

    /// Applies a transaction's writes atomically and logs it (empty ones are not logged).
    pub fn commit(&self, writes: Vec<Write>, backend: &str, thread: u32) {
        if writes.is_empty() {
            return;
        }
        let mut inner = self.0.lock().expect("store lock");
        for w in &writes {
            let table = inner.tables.entry(w.table.clone()).or_default();
            match &w.value {
                Some(v) => table.insert(w.key, v.clone()),
                None => table.remove(&w.key),
            };
        }
        inner.log.push(Commit {
            writes,
            backend: backend.to_string(),
            thread,
        });
    }

    /// Every committed transaction, in commit order.
    pub fn log(&self) -> Vec<Commit> {
        self.0.lock().expect("store lock").log.clone()
    }
}
