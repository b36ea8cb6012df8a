//! The locks that make every call's transaction serializable.
//!
//! Strict two-phase locking: a call takes a shared lock on each key it
//! reads, a shared lock on each prefix span it lists, and an exclusive lock
//! on each key it writes, and keeps them all until its transaction ends
//! (commit or rollback). Any schedule of calls that lock this way equals
//! some one-at-a-time order of them: no lost update (two read-modify-writes
//! of one key cannot interleave), no write skew (a read key cannot change
//! under its reader), no phantom (a listed span cannot gain or lose a key).
//!
//! Why locking and not optimistic validation at commit: a call acts outside
//! KV (Docker, Dokku, outbound HTTP) while it runs, and answers its client.
//! A conflict found at commit would come after those effects, too late to
//! run the call again or to let the plugin answer in its own format. With
//! locks a conflict is found at the kv call that meets it, and reaches the
//! plugin there.
//!
//! Shared locks never wait for each other, so the records every request
//! reads (users, endpoints) are read in parallel. A shared request does
//! wait behind a queued exclusive one on the same key, so a steady stream
//! of readers cannot starve a writer.
//!
//! A call that would have to wait in a cycle (a deadlock: two calls that
//! both read a key and then both write it) is refused at once: the call
//! whose wait closes the cycle is the victim, its locks are released and
//! its kv call returns `conflict`. A call that has already acted outside
//! KV is *pinned*: it cannot be run again, so when it closes a cycle the
//! victim is another call in the cycle that is not pinned, if there is one
//! (that call's waiting kv call returns `conflict`). The waits-for graph is
//! walked under the table's mutex when a call starts waiting; every cycle
//! closes at such a moment, since a call that is granted a lock runs rather
//! than waits.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::Notify;

/// A transaction's identity in the lock table.
pub type TxnId = u64;

/// Shared (read) or exclusive (write).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    Shared,
    Exclusive,
}

/// The keys one `list` call reads: keys of the namespace that start with
/// `prefix`, strictly after `after` when given.
#[derive(Debug, Clone)]
pub struct Span {
    pub prefix: String,
    pub after: Option<String>,
}

impl Span {
    fn covers(&self, key: &str) -> bool {
        key.starts_with(&self.prefix) && self.after.as_deref().is_none_or(|a| key > a)
    }

    /// The smallest key the span may hold, for a range scan.
    fn lower(&self) -> &str {
        match &self.after {
            Some(a) if a.as_str() >= self.prefix.as_str() => a,
            _ => &self.prefix,
        }
    }
}

/// Why a lock was not granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Waiting would close a cycle of waiting calls.
    Deadlock,
    /// The holder kept it past the caller's deadline.
    Timeout,
}

type KeyName = (Arc<str>, String);

#[derive(Debug, Clone)]
enum Want {
    Key(Arc<str>, String, Mode),
    Span(Arc<str>, Span),
}

#[derive(Default)]
struct KeyState {
    shared: Vec<TxnId>,
    exclusive: Option<TxnId>,
}

struct Waiter {
    want: Want,
    wake: Arc<Notify>,
    pinned: bool,
}

#[derive(Default)]
struct Inner {
    keys: BTreeMap<KeyName, KeyState>,
    /// Spans held, per transaction.
    spans: HashMap<TxnId, Vec<(Arc<str>, Span)>>,
    waiting: HashMap<TxnId, Waiter>,
    /// Waiters chosen as deadlock victims, told when they wake.
    doomed: HashSet<TxnId>,
}

/// Every lock held or waited for in one store.
#[derive(Default)]
pub struct LockTable {
    inner: Mutex<Inner>,
    next: AtomicU64,
}

impl LockTable {
    /// A fresh transaction id.
    pub fn id(&self) -> TxnId {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lock `key` of namespace `ns` in `mode` for `txn`, waiting at most
    /// until `deadline`. `pinned`: the caller cannot be run again.
    pub async fn key(
        &self,
        txn: TxnId,
        ns: &Arc<str>,
        key: &str,
        mode: Mode,
        deadline: Instant,
        pinned: bool,
    ) -> Result<(), Refused> {
        let want = Want::Key(ns.clone(), key.to_string(), mode);
        self.acquire(txn, want, deadline, pinned).await
    }

    /// Lock the keys `span` covers (present and future) against writers.
    pub async fn span(
        &self,
        txn: TxnId,
        ns: &Arc<str>,
        span: Span,
        deadline: Instant,
        pinned: bool,
    ) -> Result<(), Refused> {
        self.acquire(txn, Want::Span(ns.clone(), span), deadline, pinned)
            .await
    }

    async fn acquire(
        &self,
        txn: TxnId,
        want: Want,
        deadline: Instant,
        pinned: bool,
    ) -> Result<(), Refused> {
        let wake = {
            let mut inner = self.inner();
            if inner.try_grant(txn, &want) {
                return Ok(());
            }
            if inner.refuse(txn, &want, pinned) {
                return Err(Refused::Deadlock);
            }
            let wake = Arc::new(Notify::new());
            inner.waiting.insert(
                txn,
                Waiter {
                    want: want.clone(),
                    wake: wake.clone(),
                    pinned,
                },
            );
            wake
        };
        loop {
            // `Notify` keeps a wake-up sent before this await starts.
            let woken = tokio::time::timeout_at(deadline.into(), wake.notified()).await;
            let mut inner = self.inner();
            let refused = if inner.doomed.remove(&txn) {
                Some(Refused::Deadlock)
            } else if inner.try_grant(txn, &want) {
                None
            } else if woken.is_err() {
                Some(Refused::Timeout)
            } else if inner.refuse(txn, &want, pinned) {
                Some(Refused::Deadlock)
            } else {
                continue;
            };
            inner.waiting.remove(&txn);
            if refused.is_some() {
                // Readers queued behind this call's exclusive wait may go.
                inner.wake_all();
            }
            return refused.map_or(Ok(()), Err);
        }
    }

    /// Release every lock of `txn`: the keys it names and all its spans.
    /// Also forgets a wait the transaction gave up by dropping its future
    /// (a call cancelled at its deadline).
    pub fn release<'a>(&self, txn: TxnId, ns: &Arc<str>, keys: impl Iterator<Item = &'a String>) {
        let mut inner = self.inner();
        inner.doomed.remove(&txn);
        let mut freed = inner.spans.remove(&txn).is_some() | inner.waiting.remove(&txn).is_some();
        for key in keys {
            let name = (ns.clone(), key.clone());
            if let Some(state) = inner.keys.get_mut(&name) {
                state.shared.retain(|t| *t != txn);
                if state.exclusive == Some(txn) {
                    state.exclusive = None;
                }
                if state.shared.is_empty() && state.exclusive.is_none() {
                    inner.keys.remove(&name);
                }
                freed = true;
            }
        }
        if freed {
            inner.wake_all();
        }
    }

    /// Nothing held or waited for (tests).
    #[cfg(test)]
    pub fn is_idle(&self) -> bool {
        let inner = self.inner();
        inner.keys.is_empty()
            && inner.spans.is_empty()
            && inner.waiting.is_empty()
            && inner.doomed.is_empty()
    }
}

impl Inner {
    fn wake_all(&self) {
        for waiter in self.waiting.values() {
            waiter.wake.notify_one();
        }
    }

    /// Grant `want` to `txn` if nothing blocks it.
    fn try_grant(&mut self, txn: TxnId, want: &Want) -> bool {
        let mut blockers = Vec::new();
        self.blockers(txn, want, &mut blockers);
        if !blockers.is_empty() {
            return false;
        }
        match want {
            Want::Key(ns, key, mode) => {
                let state = self.keys.entry((ns.clone(), key.clone())).or_default();
                match mode {
                    Mode::Shared => {
                        if !state.shared.contains(&txn) {
                            state.shared.push(txn);
                        }
                    }
                    Mode::Exclusive => state.exclusive = Some(txn),
                }
            }
            Want::Span(ns, span) => self
                .spans
                .entry(txn)
                .or_default()
                .push((ns.clone(), span.clone())),
        }
        true
    }

    /// The transactions `txn` would wait for to be granted `want`: holders
    /// of conflicting locks, and (for shared requests) writers already
    /// queued on the same keys.
    fn blockers(&self, txn: TxnId, want: &Want, out: &mut Vec<TxnId>) {
        let others = |t: &TxnId| *t != txn;
        match want {
            Want::Key(ns, key, mode) => {
                let state = self.keys.get(&(ns.clone(), key.clone()));
                let holds = |m: Mode| {
                    state.is_some_and(|s| {
                        s.exclusive == Some(txn) || (m == Mode::Shared && s.shared.contains(&txn))
                    })
                };
                if holds(*mode) {
                    return;
                }
                if let Some(state) = state {
                    out.extend(state.exclusive.filter(others));
                    if *mode == Mode::Exclusive {
                        out.extend(state.shared.iter().copied().filter(others));
                    }
                }
                match mode {
                    Mode::Exclusive => {
                        for (t, spans) in &self.spans {
                            if others(t) && spans.iter().any(|(n, s)| n == ns && s.covers(key)) {
                                out.push(*t);
                            }
                        }
                    }
                    Mode::Shared => {
                        for (t, w) in &self.waiting {
                            if others(t)
                                && matches!(&w.want, Want::Key(n, k, Mode::Exclusive) if n == ns && k == key)
                            {
                                out.push(*t);
                            }
                        }
                    }
                }
            }
            Want::Span(ns, span) => {
                let from = (ns.clone(), span.lower().to_string());
                for ((n, key), state) in self.keys.range((Bound::Included(from), Bound::Unbounded))
                {
                    if n != ns || !key.starts_with(&span.prefix) {
                        break;
                    }
                    if span.covers(key) {
                        out.extend(state.exclusive.filter(others));
                    }
                }
                for (t, w) in &self.waiting {
                    if others(t)
                        && matches!(&w.want, Want::Key(n, k, Mode::Exclusive) if n == ns && span.covers(k))
                    {
                        out.push(*t);
                    }
                }
            }
        }
    }

    /// Whether `txn` must be refused `want` because waiting for it would
    /// close a cycle of waits. A pinned `txn` dooms unpinned waiters of the
    /// cycle instead, while there are any.
    fn refuse(&mut self, txn: TxnId, want: &Want, pinned: bool) -> bool {
        loop {
            let (cycle, reached) = self.reach(txn, want, txn);
            if !cycle {
                return false;
            }
            if !pinned {
                return true;
            }
            let victim = reached.into_iter().find(|t| {
                self.waiting
                    .get(t)
                    .is_some_and(|w| !w.pinned && self.reach(*t, &w.want, txn).0)
            });
            let Some(victim) = victim else { return true };
            self.doomed.insert(victim);
            if let Some(w) = self.waiting.get(&victim) {
                w.wake.notify_one();
            }
        }
    }

    /// Walk the waits-for graph from `txn` wanting `want`: whether it
    /// reaches `target`, and every transaction it reaches. A doomed waiter
    /// waits no more.
    fn reach(&self, txn: TxnId, want: &Want, target: TxnId) -> (bool, Vec<TxnId>) {
        let mut stack = Vec::new();
        self.blockers(txn, want, &mut stack);
        let mut seen = HashSet::new();
        let mut order = Vec::new();
        let mut found = false;
        while let Some(t) = stack.pop() {
            if t == target {
                found = true;
                continue;
            }
            if seen.insert(t) {
                order.push(t);
                if let Some(waiter) = self.waiting.get(&t)
                    && !self.doomed.contains(&t)
                {
                    self.blockers(t, &waiter.want, &mut stack);
                }
            }
        }
        (found, order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    fn ns() -> Arc<str> {
        Arc::from("p")
    }

    fn users(after: Option<&str>) -> Span {
        Span {
            prefix: "users/".into(),
            after: after.map(str::to_string),
        }
    }

    /// Lock `key` of namespace `p` for `t`, waiting until `deadline`.
    async fn lock(
        table: &LockTable,
        t: TxnId,
        key: &str,
        mode: Mode,
        deadline: Instant,
    ) -> Result<(), Refused> {
        table.key(t, &ns(), key, mode, deadline, false).await
    }

    /// Ask for `key` in a task of its own; returns once it waits.
    async fn waiting(
        table: &Arc<LockTable>,
        t: TxnId,
        key: &str,
        mode: Mode,
        pinned: bool,
    ) -> tokio::task::JoinHandle<Result<(), Refused>> {
        let task = {
            let (table, key) = (table.clone(), key.to_string());
            tokio::spawn(async move { table.key(t, &ns(), &key, mode, soon(), pinned).await })
        };
        while !table.inner().waiting.contains_key(&t) {
            assert!(!task.is_finished(), "{t} was not made to wait");
            tokio::task::yield_now().await;
        }
        task
    }

    fn release(table: &LockTable, t: TxnId, key: &str) {
        table.release(t, &ns(), [key.to_string()].iter());
    }

    #[tokio::test]
    async fn readers_share_and_a_writer_waits_for_them() {
        let table = Arc::new(LockTable::default());
        let (a, b, w) = (table.id(), table.id(), table.id());
        lock(&table, a, "k", Mode::Shared, soon()).await.unwrap();
        lock(&table, b, "k", Mode::Shared, soon()).await.unwrap();
        let writer = waiting(&table, w, "k", Mode::Exclusive, false).await;
        release(&table, a, "k");
        tokio::task::yield_now().await;
        assert!(!writer.is_finished(), "one reader is left");
        release(&table, b, "k");
        assert_eq!(writer.await.unwrap(), Ok(()));
        release(&table, w, "k");
        assert!(table.is_idle());
    }

    #[tokio::test]
    async fn two_readers_upgrading_deadlock_and_the_second_is_refused() {
        let table = Arc::new(LockTable::default());
        let (a, b) = (table.id(), table.id());
        lock(&table, a, "k", Mode::Shared, soon()).await.unwrap();
        lock(&table, b, "k", Mode::Shared, soon()).await.unwrap();
        let first = waiting(&table, a, "k", Mode::Exclusive, false).await;
        assert_eq!(
            lock(&table, b, "k", Mode::Exclusive, soon()).await,
            Err(Refused::Deadlock)
        );
        release(&table, b, "k");
        assert_eq!(first.await.unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn a_pinned_call_closing_a_cycle_dooms_an_unpinned_one() {
        let table = Arc::new(LockTable::default());
        let (free, pinned) = (table.id(), table.id());
        lock(&table, free, "k", Mode::Shared, soon()).await.unwrap();
        lock(&table, pinned, "k", Mode::Shared, soon())
            .await
            .unwrap();
        let first = waiting(&table, free, "k", Mode::Exclusive, false).await;
        let second = {
            let table = table.clone();
            tokio::spawn(async move {
                table
                    .key(pinned, &ns(), "k", Mode::Exclusive, soon(), true)
                    .await
            })
        };
        assert_eq!(
            first.await.unwrap(),
            Err(Refused::Deadlock),
            "the call that can run again gives way"
        );
        release(&table, free, "k");
        assert_eq!(second.await.unwrap(), Ok(()));
        release(&table, pinned, "k");
        assert!(table.is_idle());
    }

    #[tokio::test]
    async fn a_span_blocks_writers_inside_it_only() {
        let table = Arc::new(LockTable::default());
        let (r, w) = (table.id(), table.id());
        table
            .span(r, &ns(), users(None), soon(), false)
            .await
            .unwrap();
        lock(&table, w, "teams/1", Mode::Exclusive, soon())
            .await
            .unwrap();
        let short = Instant::now() + Duration::from_millis(50);
        assert_eq!(
            lock(&table, w, "users/9", Mode::Exclusive, short).await,
            Err(Refused::Timeout),
            "a phantom insert waits for the lister"
        );
        // A span after a key does not cover it.
        let later = Span {
            prefix: "teams/".into(),
            after: Some("teams/1".into()),
        };
        table.span(r, &ns(), later, soon(), false).await.unwrap();
    }

    #[tokio::test]
    async fn a_lister_waits_for_a_writer_inside_its_span() {
        let table = Arc::new(LockTable::default());
        let (w, r) = (table.id(), table.id());
        lock(&table, w, "users/1", Mode::Exclusive, soon())
            .await
            .unwrap();
        let short = Instant::now() + Duration::from_millis(50);
        assert_eq!(
            table.span(r, &ns(), users(None), short, false).await,
            Err(Refused::Timeout)
        );
        assert_eq!(
            table
                .span(r, &ns(), users(Some("users/1")), soon(), false)
                .await,
            Ok(()),
            "a span after the key does not meet it"
        );
        let other = Arc::from("q");
        table
            .span(r, &other, users(None), soon(), false)
            .await
            .expect("namespaces do not meet");
    }

    #[tokio::test]
    async fn readers_queue_behind_a_waiting_writer() {
        let table = Arc::new(LockTable::default());
        let (a, w, late) = (table.id(), table.id(), table.id());
        lock(&table, a, "k", Mode::Shared, soon()).await.unwrap();
        let writer = waiting(&table, w, "k", Mode::Exclusive, false).await;
        let short = Instant::now() + Duration::from_millis(50);
        assert_eq!(
            lock(&table, late, "k", Mode::Shared, short).await,
            Err(Refused::Timeout)
        );
        // The first reader may read again: it holds the lock already.
        lock(&table, a, "k", Mode::Shared, soon()).await.unwrap();
        release(&table, a, "k");
        assert_eq!(writer.await.unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn a_wait_given_up_by_dropping_it_is_forgotten_on_release() {
        let table = Arc::new(LockTable::default());
        let (a, w) = (table.id(), table.id());
        lock(&table, a, "k", Mode::Shared, soon()).await.unwrap();
        let writer = waiting(&table, w, "k", Mode::Exclusive, false).await;
        // A call cancelled at its deadline drops its kv future.
        writer.abort();
        let _ = writer.await;
        release(&table, w, "k");
        release(&table, a, "k");
        assert!(table.is_idle(), "no stale waiter keeps readers queued");
    }
}
