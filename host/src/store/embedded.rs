//! The embedded backend: one redb file, for a single Berth.
//!
//! Reads go straight to redb. Writes are buffered per call and committed by
//! one writer thread that folds every batch waiting at that moment into a
//! single redb transaction (group commit), so concurrent requests share
//! fsyncs and are never serialised on storage for their whole duration. A
//! caller is told its batch is done only once it is durable.
//!
//! Serializability is the lock table's (`locks`): reads lock what they read
//! (keys, listed spans) and writes lock what they write until the call's
//! transaction ends.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use super::Ctx;
use super::locks::{LockTable, Mode, Refused, Span, TxnId};
use super::{JobRecord, Page, Queued, StoreError, Table, TxnError, job_key};

/// Plugin KV: (namespace, key) -> value.
const KV: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("kv");
/// Host metadata: (namespace, key) -> value. Namespaces are the host's own
/// (e.g. `hmac-key/PLUGIN`).
const META: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("meta");
/// Job queue: (plugin, zero-padded job id) -> JSON [`JobRecord`].
const JOBS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("jobs");

/// Most batches folded into one redb transaction.
const MAX_GROUP: usize = 512;

fn from_redb(e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(e.to_string())
}

pub(super) struct Write {
    pub table: Table,
    pub ns: Arc<str>,
    pub key: String,
    pub value: Option<Vec<u8>>,
}

struct Batch {
    writes: Vec<Write>,
    /// Jobs this batch queues: announced by the writer once they are
    /// durable, even if the caller is gone by then (a client hung up).
    announce: Vec<Queued>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// Where durably queued jobs are announced.
pub(super) type JobSink = Arc<Mutex<Option<tokio::sync::mpsc::UnboundedSender<Queued>>>>;

/// The database, its writer and its locks.
pub(super) struct Embedded {
    db: Arc<Database>,
    writer: std::sync::mpsc::Sender<Batch>,
    pub locks: LockTable,
    next_job: AtomicU64,
}

fn max_job_id(db: &Database) -> Result<u64, StoreError> {
    let tx = db.begin_read().map_err(from_redb)?;
    let t = tx.open_table(JOBS).map_err(from_redb)?;
    let mut max = 0;
    for entry in t.iter().map_err(from_redb)? {
        let (k, _) = entry.map_err(from_redb)?;
        max = max.max(k.value().1.parse().unwrap_or(0));
    }
    Ok(max)
}

impl Embedded {
    /// Open (or create) the redb file at `path` and start the writer thread,
    /// which announces durably queued jobs to `sink`.
    pub fn open(path: &Path, sink: JobSink) -> Result<Embedded, StoreError> {
        let db = Database::create(path)
            .map_err(|e| StoreError::Storage(format!("cannot open {}: {e}", path.display())))?;
        let tx = db.begin_write().map_err(from_redb)?;
        tx.open_table(KV).map_err(from_redb)?;
        tx.open_table(META).map_err(from_redb)?;
        tx.open_table(JOBS).map_err(from_redb)?;
        tx.commit().map_err(from_redb)?;
        let db = Arc::new(db);
        let (writer, batches) = std::sync::mpsc::channel();
        let writer_db = db.clone();
        std::thread::Builder::new()
            .name("berth-store-writer".into())
            .spawn(move || write_loop(&writer_db, batches, &sink))
            .map_err(|e| StoreError::Storage(format!("cannot start the writer thread: {e}")))?;
        let next_job = AtomicU64::new(max_job_id(&db)? + 1);
        Ok(Embedded {
            db,
            writer,
            locks: LockTable::default(),
            next_job,
        })
    }

    /// Job ids go on past every stored one (after jobs were loaded).
    pub fn reload_job_ids(&self) -> Result<(), StoreError> {
        self.next_job
            .fetch_max(max_job_id(&self.db)? + 1, Ordering::Relaxed);
        Ok(())
    }

    pub fn next_job_id(&self) -> u64 {
        self.next_job.fetch_add(1, Ordering::Relaxed)
    }

    pub fn get(&self, table: Table, ns: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(from_redb)?;
        let t = tx.open_table(def(table)).map_err(from_redb)?;
        let value = t.get((ns, key)).map_err(from_redb)?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// Every stored job record's bytes.
    pub fn jobs(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(from_redb)?;
        let t = tx.open_table(JOBS).map_err(from_redb)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(from_redb)? {
            let (_, v) = entry.map_err(from_redb)?;
            out.push(v.value().to_vec());
        }
        Ok(out)
    }

    /// Commit `writes` durably (in the next group); `announce` the jobs
    /// they queue once they are.
    pub async fn commit(
        &self,
        writes: Vec<Write>,
        announce: Vec<Queued>,
    ) -> Result<(), StoreError> {
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

    /// Committed entries of `ns` in `table` with keys starting with
    /// `prefix`, after the lower bound, at most `limit`.
    pub fn scan(
        &self,
        table: Table,
        ns: &str,
        prefix: &str,
        lower: Bound<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read().map_err(from_redb)?;
        let t = tx.open_table(def(table)).map_err(from_redb)?;
        let lower = match lower {
            Bound::Included(k) => Bound::Included((ns, k)),
            Bound::Excluded(k) => Bound::Excluded((ns, k)),
            Bound::Unbounded => Bound::Included((ns, "")),
        };
        let range = t
            .range::<(&str, &str)>((lower, Bound::Unbounded))
            .map_err(from_redb)?;
        let mut out = Vec::new();
        for entry in range {
            let (k, v) = entry.map_err(from_redb)?;
            let (kns, key) = k.value();
            if kns != ns || !key.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push((key.to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Every entry of every namespace of `table`, for `berth store copy`.
    pub fn dump(&self, table: Table) -> Result<Vec<(String, String, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read().map_err(from_redb)?;
        let t = tx.open_table(def(table)).map_err(from_redb)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(from_redb)? {
            let (k, v) = entry.map_err(from_redb)?;
            let (ns, key) = k.value();
            out.push((ns.to_string(), key.to_string(), v.value().to_vec()));
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

pub(super) fn announce(sink: &JobSink, jobs: impl IntoIterator<Item = Queued>) {
    let sink = sink.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(sink) = sink.as_ref() {
        for job in jobs {
            let _ = sink.send(job);
        }
    }
}

/// The writer thread: take every batch waiting, commit them in one redb
/// transaction, then tell each caller. Ends when the store is dropped.
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
    let tx = db.begin_write().map_err(from_redb)?;
    {
        let mut kv = tx.open_table(KV).map_err(from_redb)?;
        let mut meta = tx.open_table(META).map_err(from_redb)?;
        let mut jobs = tx.open_table(JOBS).map_err(from_redb)?;
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
            .map_err(from_redb)?;
        }
    }
    tx.commit().map_err(from_redb)
}

/// One call's transaction on the embedded store: its buffered writes and
/// the locks it holds.
pub(super) struct EmbeddedTxn {
    id: TxnId,
    pub writes: BTreeMap<String, Option<Vec<u8>>>,
    /// Keys locked, with the strongest mode held.
    held: HashMap<String, Mode>,
    /// Keys this transaction was refused an upgrade from shared to
    /// exclusive on (it read them, then meant to write them): after a
    /// restart its reads lock them exclusively at once, so restarted calls
    /// queue for the key instead of deadlocking again round after round.
    hot: HashSet<String>,
}

/// Why a lock was refused, as the plugin reads it.
fn refusal(what: &str, refused: Refused) -> TxnError {
    TxnError::Conflict(match refused {
        Refused::Deadlock => format!(
            "{what} is held by a concurrent call that waits for this one (a deadlock); \
             this call's transaction was rolled back: run the call again"
        ),
        Refused::Timeout => format!(
            "{what} stayed locked by another call until this call's deadline; \
             this call's transaction was rolled back: run the call again"
        ),
    })
}

impl EmbeddedTxn {
    pub fn new(store: &Embedded) -> EmbeddedTxn {
        EmbeddedTxn {
            id: store.locks.id(),
            writes: BTreeMap::new(),
            held: HashMap::new(),
            hot: HashSet::new(),
        }
    }

    async fn lock(
        &mut self,
        store: &Embedded,
        cx: &Ctx<'_>,
        key: &str,
        mode: Mode,
    ) -> Result<(), TxnError> {
        if self.held.get(key).is_some_and(|held| *held >= mode) {
            return Ok(());
        }
        let upgrading = self.held.contains_key(key);
        let mode = if self.hot.contains(key) {
            Mode::Exclusive
        } else {
            mode
        };
        match store
            .locks
            .key(self.id, cx.ns, key, mode, cx.deadline, cx.pinned)
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
                Err(refusal(&format!("key `{key}`"), refused))
            }
        }
    }

    /// Read `key`, locked shared (or exclusive, when the caller means to
    /// write it), seeing this transaction's own writes.
    pub async fn read(
        &mut self,
        store: &Embedded,
        cx: &Ctx<'_>,
        key: &str,
        exclusive: bool,
    ) -> Result<Option<Vec<u8>>, TxnError> {
        let mode = if exclusive {
            Mode::Exclusive
        } else {
            Mode::Shared
        };
        self.lock(store, cx, key, mode).await?;
        if let Some(pending) = self.writes.get(key) {
            return Ok(pending.clone());
        }
        Ok(store.get(Table::Kv, cx.ns, key)?)
    }

    pub async fn write(
        &mut self,
        store: &Embedded,
        cx: &Ctx<'_>,
        key: &str,
        value: Option<Vec<u8>>,
    ) -> Result<(), TxnError> {
        self.lock(store, cx, key, Mode::Exclusive).await?;
        self.writes.insert(key.to_string(), value);
        Ok(())
    }

    /// List keys with `prefix` strictly after `after`, merging committed
    /// entries with this transaction's writes. Locks the span from `after`
    /// to the end of the prefix, so no other call can add, change or remove
    /// a key there until this transaction ends.
    pub async fn list(
        &mut self,
        store: &Embedded,
        cx: &Ctx<'_>,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, TxnError> {
        let span = Span {
            prefix: prefix.to_string(),
            after: after.map(str::to_string),
        };
        let what = format!("the keys under `{prefix}`");
        if let Err(refused) = store
            .locks
            .span(self.id, cx.ns, span, cx.deadline, cx.pinned)
            .await
        {
            return Err(refusal(&what, refused));
        }
        let lower = match after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        // Pending deletes may hide committed entries: read enough to fill
        // the page anyway.
        let hidden = self.writes.values().filter(|v| v.is_none()).count();
        let committed = store.scan(Table::Kv, cx.ns, prefix, lower, limit + 1 + hidden)?;
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

    /// Drop every write and lock.
    pub fn restart(&mut self, store: &Embedded, ns: &Arc<str>) {
        self.release(store, ns);
        self.writes.clear();
    }

    pub fn release(&mut self, store: &Embedded, ns: &Arc<str>) {
        store.locks.release(self.id, ns, self.held.keys());
        self.held.clear();
    }

    /// Commit the writes, the jobs queued and the finished job's removal
    /// durably; the locks are released by the caller after.
    pub async fn commit(
        &mut self,
        store: &Embedded,
        ns: &Arc<str>,
        jobs: &[JobRecord],
        done: Option<u64>,
    ) -> Result<(), StoreError> {
        let mut writes: Vec<Write> = std::mem::take(&mut self.writes)
            .into_iter()
            .map(|(key, value)| Write {
                table: Table::Kv,
                ns: ns.clone(),
                key,
                value,
            })
            .collect();
        for job in jobs {
            let value = serde_json::to_vec(job).map_err(|e| StoreError::Storage(e.to_string()))?;
            writes.push(Write {
                table: Table::Jobs,
                ns: ns.clone(),
                key: job_key(job.id),
                value: Some(value),
            });
        }
        if let Some(id) = done {
            writes.push(Write {
                table: Table::Jobs,
                ns: ns.clone(),
                key: job_key(id),
                value: None,
            });
        }
        let announce = jobs.iter().map(JobRecord::queued).collect();
        store.commit(writes, announce).await
    }
}
