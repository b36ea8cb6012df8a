//! Durable storage on one redb file: per-plugin KV and host metadata.
//!
//! Reads go straight to redb. Writes are buffered per call in a [`Txn`] and
//! committed by one writer thread that folds every batch waiting at that
//! moment into a single redb transaction (group commit), so concurrent
//! requests share fsyncs and are never serialised on storage for their whole
//! duration. A caller is told its batch is done only once it is durable.
//!
//! Writes lock their key (per namespace) until the call's transaction ends,
//! so read-modify-write operations (increment, compare-and-swap) on one key
//! are serialised while other keys proceed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

pub mod attempts;
mod locks;

use attempts::Attempts;
use locks::{LockTable, Mode, Refused, Span, TxnId};

/// Plugin KV: (namespace, key) -> value.
const KV: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("kv");
/// Host metadata: (namespace, key) -> value. Namespaces are the host's own
/// (e.g. `hmac-key/PLUGIN`).
const META: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("meta");
/// Job queue: (plugin, zero-padded job id) -> JSON [`JobRecord`].
const JOBS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("jobs");

/// Largest key, in bytes.
pub const MAX_KEY: usize = 1024;
/// Largest value, in bytes.
pub const MAX_VALUE: usize = 4 << 20;
/// Most bytes one transaction may write.
pub const MAX_TXN_BYTES: usize = 32 << 20;
/// Most entries one list call returns.
pub const MAX_PAGE: u32 = 1000;
/// Sequence numbers reserved per durable write.
pub const SEQUENCE_BLOCK: u64 = 100;
/// Most batches folded into one redb transaction.
const MAX_GROUP: usize = 512;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("storage failure: {0}")]
    Storage(String),
    #[error("storage writer has stopped")]
    Closed,
    #[error("{0}")]
    Aborted(String),
}

impl StoreError {
    fn from_redb(e: impl std::fmt::Display) -> Self {
        StoreError::Storage(e.to_string())
    }
}

/// What a transaction operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    Kv,
    Meta,
    Jobs,
}

struct Write {
    table: Table,
    ns: Arc<str>,
    key: String,
    value: Option<Vec<u8>>,
}

struct Batch {
    writes: Vec<Write>,
    /// Jobs this batch queues: announced by the writer once they are
    /// durable, even if the caller is gone by then (a client hung up).
    announce: Vec<Queued>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// Where durably queued jobs are announced.
type JobSink = Arc<Mutex<Option<tokio::sync::mpsc::UnboundedSender<Queued>>>>;

/// The database and its writer.
pub struct Store {
    db: Arc<Database>,
    writer: std::sync::mpsc::Sender<Batch>,
    locks: Arc<LockTable>,
    next_job: AtomicU64,
    /// Sequences: (namespace, name) -> (last handed out, reserved up to).
    sequences: tokio::sync::Mutex<HashMap<(String, String), (u64, u64)>>,
    /// Told about every job once it is durably queued.
    job_sink: JobSink,
    /// Attempts at secrets, counted before they are checked.
    attempts: Attempts,
}

/// A job that is durably in the queue and due at `run_at_ms`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Queued {
    pub run_at_ms: u64,
    pub id: u64,
    pub plugin: String,
}

/// One job as stored.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct JobRecord {
    pub id: u64,
    pub plugin: String,
    pub kind: String,
    /// Payload bytes, base64.
    pub payload: String,
    pub attempts: u32,
    pub created_ms: u64,
    pub run_at_ms: u64,
    pub dead: bool,
    pub last_error: Option<String>,
}

impl JobRecord {
    pub fn queued(&self) -> Queued {
        Queued {
            run_at_ms: self.run_at_ms,
            id: self.id,
            plugin: self.plugin.clone(),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn job_key(id: u64) -> String {
    format!("{id:020}")
}

fn max_job_id(db: &Database) -> Result<u64, StoreError> {
    let tx = db.begin_read().map_err(StoreError::from_redb)?;
    let t = tx.open_table(JOBS).map_err(StoreError::from_redb)?;
    let mut max = 0;
    for entry in t.iter().map_err(StoreError::from_redb)? {
        let (k, _) = entry.map_err(StoreError::from_redb)?;
        max = max.max(k.value().1.parse().unwrap_or(0));
    }
    Ok(max)
}

impl Store {
    /// Open (or create) the redb file at `path` and start the writer thread.
    pub fn open(path: &Path) -> Result<Arc<Store>, StoreError> {
        let db = Database::create(path)
            .map_err(|e| StoreError::Storage(format!("cannot open {}: {e}", path.display())))?;
        let tx = db.begin_write().map_err(StoreError::from_redb)?;
        tx.open_table(KV).map_err(StoreError::from_redb)?;
        tx.open_table(META).map_err(StoreError::from_redb)?;
        tx.open_table(JOBS).map_err(StoreError::from_redb)?;
        tx.commit().map_err(StoreError::from_redb)?;
        let db = Arc::new(db);
        let (writer, batches) = std::sync::mpsc::channel();
        let writer_db = db.clone();
        let job_sink = JobSink::default();
        let writer_sink = job_sink.clone();
        std::thread::Builder::new()
            .name("berth-store-writer".into())
            .spawn(move || write_loop(&writer_db, batches, &writer_sink))
            .map_err(|e| StoreError::Storage(format!("cannot start the writer thread: {e}")))?;
        let next_job = AtomicU64::new(max_job_id(&db)? + 1);
        Ok(Arc::new(Store {
            db,
            writer,
            locks: Arc::new(LockTable::default()),
            next_job,
            sequences: Default::default(),
            job_sink,
            attempts: Attempts::default(),
        }))
    }

    /// A new transaction over plugin `plugin`'s namespace.
    pub fn begin(self: &Arc<Self>, plugin: &str) -> Txn {
        Txn {
            store: self.clone(),
            id: self.locks.id(),
            ns: Arc::from(plugin),
            writes: BTreeMap::new(),
            held: HashMap::new(),
            aborted: None,
            pinned: false,
            hot: HashSet::new(),
            written: 0,
            deadline: Instant::now() + Duration::from_secs(3600),
            jobs: Vec::new(),
            done: None,
        }
    }

    fn get_in(&self, table: Table, ns: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(StoreError::from_redb)?;
        let t = tx.open_table(def(table)).map_err(StoreError::from_redb)?;
        let value = t.get((ns, key)).map_err(StoreError::from_redb)?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// The counters of attempts at secrets.
    pub fn attempts(&self) -> &Attempts {
        &self.attempts
    }

    /// Read host metadata.
    pub fn meta_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_in(Table::Meta, ns, key)
    }

    /// Write host metadata durably.
    pub async fn meta_set(&self, ns: &str, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        let write = Write {
            table: Table::Meta,
            ns: Arc::from(ns),
            key: key.to_string(),
            value: Some(value),
        };
        self.commit(vec![write], Vec::new()).await
    }

    /// Delete host metadata durably.
    pub async fn meta_delete(&self, ns: &str, key: &str) -> Result<(), StoreError> {
        let write = Write {
            table: Table::Meta,
            ns: Arc::from(ns),
            key: key.to_string(),
            value: None,
        };
        self.commit(vec![write], Vec::new()).await
    }

    /// The next number of sequence `name` in namespace `ns`. Numbers are
    /// reserved durably in blocks of [`SEQUENCE_BLOCK`], so only one call in
    /// a block waits for a commit; a restart skips the rest of a block.
    pub async fn next_in_sequence(&self, ns: &str, name: &str) -> Result<u64, StoreError> {
        let mut sequences = self.sequences.lock().await;
        let entry = sequences
            .entry((ns.to_string(), name.to_string()))
            .or_insert((0, 0));
        if entry.0 >= entry.1 {
            let meta_ns = format!("sequence/{ns}");
            let stored = self
                .meta_get(&meta_ns, name)?
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            let start = stored.max(entry.1);
            let limit = start + SEQUENCE_BLOCK;
            self.meta_set(&meta_ns, name, limit.to_string().into_bytes())
                .await?;
            *entry = (start, limit);
        }
        entry.0 += 1;
        Ok(entry.0)
    }

    /// Where durably queued jobs are announced (the job runner).
    pub fn set_job_sink(&self, sink: tokio::sync::mpsc::UnboundedSender<Queued>) {
        *self.job_sink.lock().unwrap_or_else(|p| p.into_inner()) = Some(sink);
    }

    /// Every stored job (queued and dead).
    pub fn jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(StoreError::from_redb)?;
        let t = tx.open_table(JOBS).map_err(StoreError::from_redb)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(StoreError::from_redb)? {
            let (_, v) = entry.map_err(StoreError::from_redb)?;
            match serde_json::from_slice(v.value()) {
                Ok(job) => out.push(job),
                Err(e) => tracing::error!(error = %e, "skipping an unreadable job record"),
            }
        }
        Ok(out)
    }

    /// One stored job.
    pub fn job(&self, plugin: &str, id: u64) -> Result<Option<JobRecord>, StoreError> {
        Ok(self
            .get_in(Table::Jobs, plugin, &job_key(id))?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Replace a job's record durably (a retry time, a dead mark); a job
    /// queued again is announced to the runner.
    pub async fn put_job(&self, job: &JobRecord) -> Result<(), StoreError> {
        let value = serde_json::to_vec(job).map_err(|e| StoreError::Storage(e.to_string()))?;
        let write = Write {
            table: Table::Jobs,
            ns: Arc::from(job.plugin.as_str()),
            key: job_key(job.id),
            value: Some(value),
        };
        let announce = if job.dead {
            Vec::new()
        } else {
            vec![job.queued()]
        };
        self.commit(vec![write], announce).await
    }

    async fn commit(&self, writes: Vec<Write>, announce: Vec<Queued>) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.writer
            .send(Batch {
                writes,
                announce,
                done,
            })
            .map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Committed entries of `ns` with keys starting with `prefix`, after the
    /// lower bound, at most `limit`.
    fn scan(
        &self,
        ns: &str,
        prefix: &str,
        lower: Bound<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.scan_in(Table::Kv, ns, prefix, lower, limit)
    }

    /// Every host metadata entry of `ns`.
    pub fn meta_list(&self, ns: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.scan_in(Table::Meta, ns, "", Bound::Unbounded, usize::MAX)
    }

    fn scan_in(
        &self,
        table: Table,
        ns: &str,
        prefix: &str,
        lower: Bound<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read().map_err(StoreError::from_redb)?;
        let t = tx.open_table(def(table)).map_err(StoreError::from_redb)?;
        let lower = match lower {
            Bound::Included(k) => Bound::Included((ns, k)),
            Bound::Excluded(k) => Bound::Excluded((ns, k)),
            Bound::Unbounded => Bound::Included((ns, "")),
        };
        let range = t
            .range::<(&str, &str)>((lower, Bound::Unbounded))
            .map_err(StoreError::from_redb)?;
        let mut out = Vec::new();
        for entry in range {
            let (k, v) = entry.map_err(StoreError::from_redb)?;
            let (kns, key) = k.value();
            if kns != ns || !key.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push((key.to_string(), v.value().to_vec()));
        }
        Ok(out)
    }
}

fn def(table: Table) -> TableDefinition<'static, (&'static str, &'static str), &'static [u8]> {
    match table {
        Table::Kv => KV,
        Table::Meta => META,
        Table::Jobs => JOBS,
    }
}

fn announce(sink: &JobSink, jobs: impl IntoIterator<Item = Queued>) {
    let sink = sink.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(sink) = sink.as_ref() {
        for job in jobs {
            let _ = sink.send(job);
        }
    }
}

/// The writer thread: take every batch waiting, commit them in one redb
/// transaction, then tell each caller. Ends when every `Store` is dropped.
fn write_loop(db: &Database, batches: std::sync::mpsc::Receiver<Batch>, sink: &JobSink) {
    while let Ok(first) = batches.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match batches.try_recv() {
                Ok(batch) => group.push(batch),
                Err(_) => break,
            }
        }
        let result = apply(db, &group);
        if let Err(e) = &result {
            tracing::error!(error = %e, batches = group.len(), "group commit failed");
        }
        if result.is_ok() {
            announce(
                sink,
                group
                    .iter_mut()
                    .flat_map(|b| std::mem::take(&mut b.announce)),
            );
        }
        for batch in group {
            // A caller that gave up (timed out) no longer listens; fine.
            let _ = batch.done.send(result.clone());
        }
    }
}

fn apply(db: &Database, group: &[Batch]) -> Result<(), StoreError> {
    let tx = db.begin_write().map_err(StoreError::from_redb)?;
    {
        let mut kv = tx.open_table(KV).map_err(StoreError::from_redb)?;
        let mut meta = tx.open_table(META).map_err(StoreError::from_redb)?;
        let mut jobs = tx.open_table(JOBS).map_err(StoreError::from_redb)?;
        for write in group.iter().flat_map(|b| &b.writes) {
            let table = match write.table {
                Table::Kv => &mut kv,
                Table::Meta => &mut meta,
                Table::Jobs => &mut jobs,
            };
            let key = (&*write.ns, write.key.as_str());
            match &write.value {
                Some(value) => table.insert(key, value.as_slice()).map(drop),
                None => table.remove(key).map(drop),
            }
            .map_err(StoreError::from_redb)?;
        }
    }
    tx.commit().map_err(StoreError::from_redb)
}

/// One call's view of a plugin's namespace: reads see its own writes; the
/// writes are committed together by [`Txn::commit`] or dropped with it.
///
/// Serializable: reads lock what they read (keys, listed spans) and writes
/// lock what they write until the transaction ends (see `locks`). A lock
/// that cannot be had (a deadlock, or a holder past this call's deadline)
/// rolls the transaction back and answers `conflict`; every later operation
/// answers `conflict` too, until [`Txn::restart`].
pub struct Txn {
    store: Arc<Store>,
    id: TxnId,
    ns: Arc<str>,
    writes: BTreeMap<String, Option<Vec<u8>>>,
    /// Keys locked, with the strongest mode held.
    held: HashMap<String, Mode>,
    /// Why the transaction was rolled back, once it was.
    aborted: Option<String>,
    /// The call acted outside KV and cannot be run again: in a deadlock,
    /// another call gives way if it can.
    pinned: bool,
    /// Keys this transaction was refused an upgrade from shared to
    /// exclusive on (it read them, then meant to write them): after a
    /// restart its reads lock them exclusively at once, so restarted calls
    /// queue for the key instead of deadlocking again round after round.
    hot: HashSet<String>,
    written: usize,
    deadline: Instant,
    /// Jobs to queue at commit.
    jobs: Vec<JobRecord>,
    /// A job to remove at commit (the one this call ran).
    done: Option<u64>,
}

/// One page of a listing.
pub struct Page {
    pub entries: Vec<(String, Vec<u8>)>,
    pub next: Option<String>,
}

fn check_key(key: &str) -> Result<(), TxnError> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(TxnError::Invalid(format!(
            "keys must be 1 to {MAX_KEY} bytes; this one is {} bytes",
            key.len()
        )));
    }
    Ok(())
}

impl Txn {
    /// Read a key, seeing this transaction's own writes.
    pub async fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, TxnError> {
        check_key(key)?;
        self.lock(key, Mode::Shared).await?;
        if let Some(pending) = self.writes.get(key) {
            return Ok(pending.clone());
        }
        Ok(self.store.get_in(Table::Kv, &self.ns, key)?)
    }

    /// Wait for locks at most until `deadline` (the call's own).
    pub fn until(mut self, deadline: Instant) -> Txn {
        self.deadline = deadline;
        self
    }

    /// Mark the call as having acted outside KV (see `locks`).
    pub fn pin(&mut self) {
        self.pinned = true;
    }

    /// Why this transaction was rolled back, if it was.
    pub fn aborted(&self) -> Option<&str> {
        self.aborted.as_deref()
    }

    /// Drop every write, queued job and lock, and begin again, as if the
    /// call had just started (the job a job call runs stays marked).
    pub fn restart(&mut self) {
        self.release();
        self.writes.clear();
        self.jobs.clear();
        self.written = 0;
        self.aborted = None;
    }

    fn release(&mut self) {
        self.store
            .locks
            .release(self.id, &self.ns, self.held.keys());
        self.held.clear();
    }

    fn live(&self) -> Result<(), TxnError> {
        match &self.aborted {
            Some(why) => Err(TxnError::Conflict(why.clone())),
            None => Ok(()),
        }
    }

    /// Roll back on a refused lock: release everything at once, so the
    /// calls this one waited with can go on.
    fn abort(&mut self, what: &str, refused: Refused) -> TxnError {
        let why = match refused {
            Refused::Deadlock => format!(
                "{what} is held by a concurrent call that waits for this one (a deadlock); \
                 this call's transaction was rolled back: run the call again"
            ),
            Refused::Timeout => format!(
                "{what} stayed locked by another call until this call's deadline; \
                 this call's transaction was rolled back: run the call again"
            ),
        };
        self.restart();
        self.aborted = Some(why.clone());
        TxnError::Conflict(why)
    }

    async fn lock(&mut self, key: &str, mode: Mode) -> Result<(), TxnError> {
        self.live()?;
        if self.held.get(key).is_some_and(|held| *held >= mode) {
            return Ok(());
        }
        let upgrading = self.held.contains_key(key);
        let mode = if self.hot.contains(key) {
            Mode::Exclusive
        } else {
            mode
        };
        let store = self.store.clone();
        match store
            .locks
            .key(self.id, &self.ns, key, mode, self.deadline, self.pinned)
            .await
        {
            Ok(()) => {
                self.held.insert(key.to_string(), mode);
                Ok(())
            }
            Err(refused) => {
                if upgrading {
                    self.hot.insert(key.to_string());
                }
                Err(self.abort(&format!("key `{key}`"), refused))
            }
        }
    }

    async fn lock_span(&mut self, span: Span) -> Result<(), TxnError> {
        self.live()?;
        let what = format!("the keys under `{}`", span.prefix);
        let store = self.store.clone();
        match store
            .locks
            .span(self.id, &self.ns, span, self.deadline, self.pinned)
            .await
        {
            Ok(()) => Ok(()),
            Err(refused) => Err(self.abort(&what, refused)),
        }
    }

    fn put(&mut self, key: &str, value: Option<Vec<u8>>) -> Result<(), TxnError> {
        let size = key.len() + value.as_ref().map_or(0, Vec::len);
        if value.as_ref().is_some_and(|v| v.len() > MAX_VALUE) {
            return Err(TxnError::Invalid(format!(
                "values are at most {MAX_VALUE} bytes; this one is {} bytes",
                value.as_ref().map_or(0, Vec::len)
            )));
        }
        if self.written + size > MAX_TXN_BYTES {
            return Err(TxnError::Invalid(format!(
                "one call may write at most {MAX_TXN_BYTES} bytes"
            )));
        }
        self.written += size;
        self.writes.insert(key.to_string(), value);
        Ok(())
    }

    /// Write a key.
    pub async fn set(&mut self, key: &str, value: Vec<u8>) -> Result<(), TxnError> {
        check_key(key)?;
        self.lock(key, Mode::Exclusive).await?;
        self.put(key, Some(value))
    }

    /// Delete a key; whether it existed.
    pub async fn delete(&mut self, key: &str) -> Result<bool, TxnError> {
        check_key(key)?;
        self.lock(key, Mode::Exclusive).await?;
        let existed = self.get(key).await?.is_some();
        self.put(key, None)?;
        Ok(existed)
    }

    /// Add `delta` to the decimal integer at `key`.
    pub async fn increment(&mut self, key: &str, delta: i64) -> Result<i64, TxnError> {
        check_key(key)?;
        self.lock(key, Mode::Exclusive).await?;
        let current = match self.get(key).await? {
            None => 0,
            Some(bytes) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .ok_or_else(|| {
                    TxnError::Invalid(format!("value at `{key}` is not a decimal integer"))
                })?,
        };
        let next = current.checked_add(delta).ok_or_else(|| {
            TxnError::Invalid(format!("incrementing `{key}` by {delta} overflows"))
        })?;
        self.put(key, Some(next.to_string().into_bytes()))?;
        Ok(next)
    }

    /// Swap `key` to `new` if it is `expected`.
    pub async fn compare_and_swap(
        &mut self,
        key: &str,
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    ) -> Result<bool, TxnError> {
        check_key(key)?;
        self.lock(key, Mode::Exclusive).await?;
        if self.get(key).await? != expected {
            return Ok(false);
        }
        self.put(key, new)?;
        Ok(true)
    }

    /// List keys with `prefix` strictly after `after`, merging committed
    /// entries with this transaction's writes. Locks the span from `after`
    /// to the end of the prefix, so no other call can add, change or remove
    /// a key there until this transaction ends.
    pub async fn list(
        &mut self,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page, TxnError> {
        self.lock_span(Span {
            prefix: prefix.to_string(),
            after: after.map(str::to_string),
        })
        .await?;
        let limit = match limit {
            0 => 100,
            n => n.min(MAX_PAGE),
        } as usize;
        let lower = match after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        // Pending deletes may hide committed entries: read enough to fill
        // the page anyway.
        let hidden = self.writes.values().filter(|v| v.is_none()).count();
        let committed = self
            .store
            .scan(&self.ns, prefix, lower, limit + 1 + hidden)?;
        let pending = self
            .writes
            .range::<str, _>((lower, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix));

        let mut merged: BTreeMap<&str, Option<&[u8]>> = BTreeMap::new();
        for (k, v) in &committed {
            merged.insert(k, Some(v));
        }
        for (k, v) in pending {
            merged.insert(k, v.as_deref());
        }
        let mut entries: Vec<(String, Vec<u8>)> = merged
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_string(), v.to_vec())))
            .take(limit + 1)
            .collect();
        let next = if entries.len() > limit {
            entries.truncate(limit);
            entries.last().map(|(k, _)| k.clone())
        } else {
            None
        };
        Ok(Page { entries, next })
    }

    /// Whether this transaction wrote anything.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.jobs.is_empty() && self.done.is_none()
    }

    /// Queue a job at commit: nothing is queued if the call fails.
    pub fn enqueue(&mut self, kind: &str, payload: &[u8], delay_ms: u64) -> Result<u64, TxnError> {
        use base64::Engine as _;
        self.live()?;
        if kind.is_empty() || kind.len() > 128 {
            return Err(TxnError::Invalid("job kinds are 1 to 128 bytes".into()));
        }
        if payload.len() > MAX_VALUE {
            return Err(TxnError::Invalid(format!(
                "job payloads are at most {MAX_VALUE} bytes"
            )));
        }
        if self.jobs.len() >= 10_000 {
            return Err(TxnError::Invalid(
                "one call may queue at most 10000 jobs".into(),
            ));
        }
        let id = self.store.next_job.fetch_add(1, Ordering::Relaxed);
        let now = now_ms();
        self.jobs.push(JobRecord {
            id,
            plugin: self.ns.to_string(),
            kind: kind.to_string(),
            payload: base64::engine::general_purpose::STANDARD.encode(payload),
            attempts: 0,
            created_ms: now,
            run_at_ms: now.saturating_add(delay_ms),
            dead: false,
            last_error: None,
        });
        Ok(id)
    }

    /// Remove job `id` at commit: it ran, and its writes commit with it.
    pub fn finish_job(&mut self, id: u64) {
        self.done = Some(id);
    }

    /// Commit durably, then release the locks. A rolled-back transaction
    /// commits nothing, not even its job mark.
    pub async fn commit(mut self) -> Result<(), StoreError> {
        if let Some(why) = &self.aborted {
            return Err(StoreError::Aborted(why.clone()));
        }
        if self.is_empty() {
            return Ok(());
        }
        let mut writes: Vec<Write> = std::mem::take(&mut self.writes)
            .into_iter()
            .map(|(key, value)| Write {
                table: Table::Kv,
                ns: self.ns.clone(),
                key,
                value,
            })
            .collect();
        for job in &self.jobs {
            let value = serde_json::to_vec(job).map_err(|e| StoreError::Storage(e.to_string()))?;
            let key = job_key(job.id);
            writes.push(Write {
                table: Table::Jobs,
                ns: self.ns.clone(),
                key,
                value: Some(value),
            });
        }
        if let Some(id) = self.done {
            writes.push(Write {
                table: Table::Jobs,
                ns: self.ns.clone(),
                key: job_key(id),
                value: None,
            });
        }
        let announce = self.jobs.iter().map(JobRecord::queued).collect();
        self.store.commit(writes, announce).await
        // `self` (and its locks) drops here, after the commit is durable.
    }
}

impl Drop for Txn {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Arc<Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.redb")).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn writes_are_visible_in_their_txn_and_durable_after_commit() {
        let (dir, store) = store();
        let mut t = store.begin("a");
        t.set("k", b"v".to_vec()).await.unwrap();
        assert_eq!(t.get("k").await.unwrap(), Some(b"v".to_vec()));
        let soon = Instant::now() + Duration::from_millis(50);
        assert!(
            matches!(
                store.begin("a").until(soon).get("k").await,
                Err(TxnError::Conflict(_))
            ),
            "a reader waits for the writer: nothing is seen before commit"
        );
        t.commit().await.unwrap();
        assert_eq!(
            store.begin("a").get("k").await.unwrap(),
            Some(b"v".to_vec())
        );
        assert_eq!(
            store.begin("b").get("k").await.unwrap(),
            None,
            "namespaces are separate"
        );
        drop(store);
        // The writer thread holds the database until it sees the channel close.
        let reopened = loop {
            match Store::open(&dir.path().join("t.redb")) {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        };
        assert_eq!(
            reopened.begin("a").get("k").await.unwrap(),
            Some(b"v".to_vec())
        );
    }

    #[tokio::test]
    async fn a_dropped_txn_writes_nothing_and_frees_its_locks() {
        let (_dir, store) = store();
        let mut t = store.begin("a");
        t.increment("n", 5).await.unwrap();
        drop(t);
        let mut t = store.begin("a");
        assert_eq!(t.increment("n", 1).await.unwrap(), 1);
        t.commit().await.unwrap();
        assert!(store.locks.is_idle());
    }

    #[tokio::test]
    async fn concurrent_increments_are_serialised() {
        let (_dir, store) = store();
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut t = store.begin("a");
                let n = t.increment("n", 1).await.unwrap();
                t.commit().await.unwrap();
                n
            }));
        }
        let mut seen = Vec::new();
        for task in tasks {
            seen.push(task.await.unwrap());
        }
        seen.sort();
        assert_eq!(seen, (1..=50).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn compare_and_swap_checks_the_current_value() {
        let (_dir, store) = store();
        let mut t = store.begin("a");
        assert!(
            t.compare_and_swap("k", None, Some(b"1".to_vec()))
                .await
                .unwrap()
        );
        assert!(
            !t.compare_and_swap("k", None, Some(b"2".to_vec()))
                .await
                .unwrap()
        );
        assert!(
            t.compare_and_swap("k", Some(b"1".to_vec()), None)
                .await
                .unwrap()
        );
        assert_eq!(t.get("k").await.unwrap(), None);
        let err = t.increment("", 1).await.unwrap_err();
        assert!(err.to_string().contains("keys must be 1 to 1024 bytes"));
        t.set("text", b"abc".to_vec()).await.unwrap();
        assert!(matches!(
            t.increment("text", 1).await,
            Err(TxnError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn jobs_are_announced_even_if_the_committing_caller_goes_away() {
        let (_dir, store) = store();
        let (sink, mut queued) = tokio::sync::mpsc::unbounded_channel();
        store.set_job_sink(sink);
        let mut t = store.begin("a");
        let id = t.enqueue("run", b"1", 0).unwrap();
        // Poll the commit once (it hands its batch to the writer), then drop
        // it, as hyper drops a request whose client hung up.
        let _ = tokio::time::timeout(std::time::Duration::ZERO, t.commit()).await;
        let announced = tokio::time::timeout(std::time::Duration::from_secs(10), queued.recv())
            .await
            .expect("announced")
            .unwrap();
        assert_eq!(announced.id, id);
        assert_eq!(
            store.job("a", id).unwrap().map(|j| j.kind),
            Some("run".to_string())
        );
    }

    #[tokio::test]
    async fn sequences_increase_without_locks_and_skip_ahead_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Store::open(&path).unwrap();
        for expected in 1..=150 {
            assert_eq!(store.next_in_sequence("a", "ids").await.unwrap(), expected);
        }
        assert_eq!(
            store.next_in_sequence("b", "ids").await.unwrap(),
            1,
            "per namespace"
        );
        drop(store);
        let reopened = loop {
            match Store::open(&path) {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        };
        let next = reopened.next_in_sequence("a", "ids").await.unwrap();
        assert!(next > 150, "never reused after a restart: {next}");
    }

    /// Run `$body` (an expression using `$t` and `$attempt`) in a
    /// transaction until it commits, restarting it on a conflict as the SDK
    /// does; the number of restarts.
    macro_rules! until_committed {
        ($store:expr, |$t:ident, $attempt:ident| $body:expr) => {{
            let mut $t = $store.begin("a");
            let mut $attempt = 0u32;
            loop {
                let result: Result<(), TxnError> = async { $body }.await;
                match result {
                    Ok(()) => break,
                    Err(TxnError::Conflict(_)) => {
                        $t.restart();
                        $attempt += 1;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            $t.commit().await.unwrap();
            $attempt
        }};
    }

    async fn read_number(t: &mut Txn, key: &str) -> Result<i64, TxnError> {
        Ok(t.get(key)
            .await?
            .map_or(0, |v| String::from_utf8(v).unwrap().parse().unwrap()))
    }

    #[tokio::test]
    async fn get_then_set_by_racing_calls_loses_no_update() {
        let (_dir, store) = store();
        let both_read = Arc::new(tokio::sync::Barrier::new(20));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (store, both_read) = (store.clone(), both_read.clone());
            tasks.push(tokio::spawn(async move {
                until_committed!(store, |t, attempt| {
                    let n = read_number(&mut t, "n").await?;
                    if attempt == 0 {
                        // Every call has read before any writes.
                        both_read.wait().await;
                    }
                    t.set("n", (n + 1).to_string().into_bytes()).await
                })
            }));
        }
        let mut reruns = 0;
        for task in tasks {
            reruns += task.await.unwrap();
        }
        let mut t = store.begin("a");
        assert_eq!(read_number(&mut t, "n").await.unwrap(), 20);
        // All but one met a deadlock once; restarted, each asked for the
        // key it had failed to upgrade exclusively and queued for it.
        assert_eq!(reruns, 19, "each loser ran once more");
        drop(t);
        assert!(store.locks.is_idle());
    }

    #[tokio::test]
    async fn write_skew_is_prevented() {
        // Two on call, each may go off call if the other stays: at least
        // one must remain, whatever the interleaving.
        let (_dir, store) = store();
        let mut t = store.begin("a");
        t.set("on/ann", b"1".to_vec()).await.unwrap();
        t.set("on/bob", b"1".to_vec()).await.unwrap();
        t.commit().await.unwrap();
        let both_read = Arc::new(tokio::sync::Barrier::new(2));
        let mut tasks = Vec::new();
        for me in ["on/ann", "on/bob"] {
            let (store, both_read) = (store.clone(), both_read.clone());
            tasks.push(tokio::spawn(async move {
                until_committed!(store, |t, attempt| {
                    let on = read_number(&mut t, "on/ann").await?
                        + read_number(&mut t, "on/bob").await?;
                    if attempt == 0 {
                        both_read.wait().await;
                    }
                    if on >= 2 {
                        t.set(me, b"0".to_vec()).await?;
                    }
                    Ok(())
                })
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let mut t = store.begin("a");
        let on = read_number(&mut t, "on/ann").await.unwrap()
            + read_number(&mut t, "on/bob").await.unwrap();
        assert_eq!(on, 1, "exactly one went off call");
    }

    #[tokio::test]
    async fn a_listed_prefix_gains_no_phantom() {
        // Each call adds a user only if there is none yet.
        let (_dir, store) = store();
        let both_read = Arc::new(tokio::sync::Barrier::new(5));
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (store, both_read) = (store.clone(), both_read.clone());
            tasks.push(tokio::spawn(async move {
                until_committed!(store, |t, attempt| {
                    let none = t.list("user/", None, 0).await?.entries.is_empty();
                    if attempt == 0 {
                        both_read.wait().await;
                    }
                    if none {
                        t.set(&format!("user/{i}"), b"admin".to_vec()).await?;
                    }
                    Ok(())
                })
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let mut t = store.begin("a");
        assert_eq!(t.list("user/", None, 0).await.unwrap().entries.len(), 1);
    }

    #[tokio::test]
    async fn a_conflict_rolls_back_and_refuses_until_restart() {
        let (_dir, store) = store();
        let mut holder = store.begin("a");
        holder.set("k", b"1".to_vec()).await.unwrap();
        let mut t = store
            .begin("a")
            .until(Instant::now() + Duration::from_millis(30));
        t.set("mine", b"x".to_vec()).await.unwrap();
        t.enqueue("job", b"", 0).unwrap();
        assert!(matches!(t.get("k").await, Err(TxnError::Conflict(_))));
        assert!(t.aborted().is_some());
        assert!(
            matches!(t.get("mine").await, Err(TxnError::Conflict(_))),
            "every later call answers conflict"
        );
        drop(holder);
        t.restart();
        assert_eq!(t.get("mine").await.unwrap(), None, "the write was dropped");
        assert!(t.is_empty(), "and the job too");
        t.set("mine", b"y".to_vec()).await.unwrap();
        t.commit().await.unwrap();
        assert_eq!(
            store.begin("a").get("mine").await.unwrap(),
            Some(b"y".to_vec())
        );
    }

    #[tokio::test]
    async fn list_merges_pending_writes_and_pages() {
        let (_dir, store) = store();
        let mut t = store.begin("a");
        for i in 0..5 {
            t.set(&format!("p/{i}"), vec![i]).await.unwrap();
        }
        t.set("q/0", vec![9]).await.unwrap();
        t.commit().await.unwrap();
        let mut t = store.begin("a");
        t.delete("p/1").await.unwrap();
        t.set("p/5", vec![5]).await.unwrap();
        let page = t.list("p/", None, 3).await.unwrap();
        let keys: Vec<_> = page.entries.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["p/0", "p/2", "p/3"]);
        let page = t.list("p/", page.next.as_deref(), 3).await.unwrap();
        let keys: Vec<_> = page.entries.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["p/4", "p/5"]);
        assert_eq!(page.next, None);
    }
}
