//! Durable storage: per-plugin KV, host metadata and the job queue, behind
//! one interface with two backends.
//!
//! - `embedded`: one redb file, the default. Serializable by the host's own
//!   lock table (`locks`), writes group-committed by one writer thread.
//! - `postgres`: a PostgreSQL database that several replicas share.
//!   Serializable by PostgreSQL (SERIALIZABLE transactions).
//!
//! A call sees one [`Txn`]: reads see its own writes, and everything it
//! wrote (and the jobs it queued) is committed together before its response
//! leaves, or dropped with it. A conflict with a concurrent call rolls the
//! transaction back and answers `conflict` to every later operation until
//! [`Txn::restart`]; the SDK runs the handler again.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub mod attempts;
mod embedded;
mod locks;
mod postgres;

use attempts::Attempts;
use embedded::{Embedded, EmbeddedTxn, JobSink};

/// What a transaction operation needs of the call: its namespace, deadline
/// and whether it may be run again.
struct Ctx<'a> {
    ns: &'a Arc<str>,
    deadline: Instant,
    pinned: bool,
}
pub use postgres::{PgOptions, redact};
use postgres::{PgTxn, Postgres};

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

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("storage failure: {0}")]
    Storage(String),
    /// The store cannot be reached now (a database down or restarting);
    /// worth retrying.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("storage writer has stopped")]
    Closed,
    /// The writes conflicted with a concurrent call's, found at commit
    /// (PostgreSQL): nothing was kept, and the call may run again.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Aborted(String),
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

/// The store's tables, the same in both backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Kv,
    Meta,
    Jobs,
}

impl Table {
    pub const ALL: [Table; 3] = [Table::Kv, Table::Meta, Table::Jobs];

    pub fn name(self) -> &'static str {
        match self {
            Table::Kv => "kv",
            Table::Meta => "meta",
            Table::Jobs => "jobs",
        }
    }
}

enum Backend {
    Embedded(Embedded),
    Postgres(Postgres),
}

/// The store: a backend, and what the host keeps beside it.
pub struct Store {
    backend: Backend,
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

/// One namespace of one table, summed up (see [`Store::census`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Census {
    pub table: &'static str,
    pub namespace: String,
    pub count: u64,
    pub checksum: String,
}

/// A replica as the registry keeps it (see `replicas`).
pub struct ReplicaRecord<'a> {
    pub id: &'a str,
    pub address: &'a str,
    pub version: &'a str,
    pub started_ms: u64,
    /// What it serves: a JSON object, plugin name to version and sha256.
    pub plugins: String,
}

/// A replica alive in the registry, as `/_berth/plugins` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplicaView {
    pub id: String,
    pub address: String,
    pub version: String,
    pub plugins: serde_json::Value,
}

/// One event as the fleet's store keeps it (see `caps::events`).
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub seq: u64,
    pub topic: String,
    pub payload: Vec<u8>,
    pub closing: bool,
    /// Held for its call's commit until then (ms); None once sent.
    pub held_until: Option<u64>,
}

/// Wake-ups for new events in the store, on a connection of their own.
pub struct Wakeups {
    woken: tokio::sync::mpsc::Receiver<()>,
    _client: tokio_postgres::Client,
}

impl Wakeups {
    /// The next wake-up; false when the connection ended.
    pub async fn next(&mut self) -> bool {
        self.woken.recv().await.is_some()
    }
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

fn parse_job(bytes: &[u8]) -> Option<JobRecord> {
    match serde_json::from_slice(bytes) {
        Ok(job) => Some(job),
        Err(e) => {
            tracing::error!(error = %e, "skipping an unreadable job record");
            None
        }
    }
}

impl Store {
    /// Open (or create) the redb file at `path`.
    pub fn open(path: &Path) -> Result<Arc<Store>, StoreError> {
        let job_sink = JobSink::default();
        let embedded = Embedded::open(path, job_sink.clone())?;
        Ok(Store::with(Backend::Embedded(embedded), job_sink))
    }

    /// Connect to PostgreSQL and bring its schema up to date.
    pub async fn connect(options: &PgOptions) -> Result<Arc<Store>, StoreError> {
        let pg = Postgres::connect(options).await?;
        tracing::info!(store = %pg.shown, "store on PostgreSQL");
        Ok(Store::with(Backend::Postgres(pg), JobSink::default()))
    }

    fn with(backend: Backend, job_sink: JobSink) -> Arc<Store> {
        Arc::new(Store {
            backend,
            sequences: Default::default(),
            job_sink,
            attempts: Attempts::default(),
        })
    }

    /// Which backend: `redb` or `postgres`.
    pub fn kind(&self) -> &'static str {
        match self.backend {
            Backend::Embedded(_) => "redb",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// A new transaction over plugin `plugin`'s namespace.
    pub fn begin(self: &Arc<Self>, plugin: &str) -> Txn {
        let inner = match &self.backend {
            Backend::Embedded(e) => Inner::Embedded(EmbeddedTxn::new(e)),
            Backend::Postgres(_) => Inner::Postgres(PgTxn::default()),
        };
        Txn {
            store: self.clone(),
            inner,
            ns: Arc::from(plugin),
            aborted: None,
            pinned: false,
            written: 0,
            deadline: Instant::now() + Duration::from_secs(3600),
            jobs: Vec::new(),
            done: None,
            after: Vec::new(),
        }
    }

    /// Take a slot on each of `counters` (key, limit) of `plugin`, all or
    /// none: false when one is at its limit in its current window (see
    /// `attempts`). On PostgreSQL the counters are the fleet's: a guess
    /// counts the same whichever replica it reaches.
    pub async fn take_attempt(
        &self,
        plugin: &str,
        counters: &[(String, u32)],
        window: Duration,
    ) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Embedded(_) => Ok(self.attempts.take(plugin, counters, window)),
            Backend::Postgres(pg) => pg.take_attempt(plugin, counters, window).await,
        }
    }

    /// Give back one slot on each of `keys` of `plugin` still in its window.
    pub async fn attempt_passed(&self, plugin: &str, keys: &[String]) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Embedded(_) => {
                self.attempts.passed(plugin, keys);
                Ok(())
            }
            Backend::Postgres(pg) => pg.attempt_passed(plugin, keys).await,
        }
    }

    /// Read host metadata.
    pub async fn meta_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match &self.backend {
            Backend::Embedded(e) => e.get(Table::Meta, ns, key),
            Backend::Postgres(pg) => pg.meta_get(ns, key).await,
        }
    }

    /// Write host metadata durably.
    pub async fn meta_set(&self, ns: &str, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        self.meta_put(ns, key, Some(value)).await
    }

    /// Store host metadata `value` unless the key has a value: the value
    /// stored either way. Replicas that race to make one key (an HMAC key
    /// at first use) all end with the first one's.
    pub async fn meta_set_once(
        &self,
        ns: &str,
        key: &str,
        value: Vec<u8>,
    ) -> Result<Vec<u8>, StoreError> {
        match &self.backend {
            // One process: its callers serialise first uses themselves.
            Backend::Embedded(_) => match self.meta_get(ns, key).await? {
                Some(stored) => Ok(stored),
                None => {
                    self.meta_set(ns, key, value.clone()).await?;
                    Ok(value)
                }
            },
            Backend::Postgres(pg) => pg.meta_set_once(ns, key, &value).await,
        }
    }

    /// Delete host metadata durably.
    pub async fn meta_delete(&self, ns: &str, key: &str) -> Result<(), StoreError> {
        self.meta_put(ns, key, None).await
    }

    async fn meta_put(
        &self,
        ns: &str,
        key: &str,
        value: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Embedded(e) => {
                let write = embedded::Write {
                    table: Table::Meta,
                    ns: Arc::from(ns),
                    key: key.to_string(),
                    value,
                };
                e.commit(vec![write], Vec::new()).await
            }
            Backend::Postgres(pg) => match value {
                Some(value) => pg.meta_set(ns, key, &value).await,
                None => pg.meta_delete(ns, key).await,
            },
        }
    }

    /// Every host metadata entry of `ns`.
    pub async fn meta_list(&self, ns: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        match &self.backend {
            Backend::Embedded(e) => {
                e.scan(Table::Meta, ns, "", std::ops::Bound::Unbounded, usize::MAX)
            }
            Backend::Postgres(pg) => pg.meta_list(ns).await,
        }
    }

    /// The next number of sequence `name` in namespace `ns`. Numbers are
    /// reserved durably in blocks of [`SEQUENCE_BLOCK`], so only one call in
    /// a block waits for the store; a restart skips the rest of a block, and
    /// replicas sharing a store each reserve their own blocks.
    pub async fn next_in_sequence(&self, ns: &str, name: &str) -> Result<u64, StoreError> {
        let mut sequences = self.sequences.lock().await;
        let entry = sequences
            .entry((ns.to_string(), name.to_string()))
            .or_insert((0, 0));
        if entry.0 >= entry.1 {
            let meta_ns = format!("sequence/{ns}");
            let start = match &self.backend {
                Backend::Embedded(e) => {
                    let stored = e
                        .get(Table::Meta, &meta_ns, name)?
                        .and_then(|v| String::from_utf8(v).ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0);
                    let start = stored.max(entry.1);
                    let limit = start + SEQUENCE_BLOCK;
                    self.meta_set(&meta_ns, name, limit.to_string().into_bytes())
                        .await?;
                    start
                }
                Backend::Postgres(pg) => pg.reserve(&meta_ns, name, SEQUENCE_BLOCK).await?,
            };
            *entry = (start, start + SEQUENCE_BLOCK);
        }
        entry.0 += 1;
        Ok(entry.0)
    }

    /// Where durably queued jobs are announced (the job runner).
    pub fn set_job_sink(&self, sink: tokio::sync::mpsc::UnboundedSender<Queued>) {
        *self.job_sink.lock().unwrap_or_else(|p| p.into_inner()) = Some(sink);
    }

    /// Every stored job (queued and dead).
    pub async fn jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        Ok(match &self.backend {
            Backend::Embedded(e) => e.jobs()?.iter().filter_map(|j| parse_job(j)).collect(),
            Backend::Postgres(pg) => pg
                .jobs()
                .await?
                .iter()
                .filter_map(|j| parse_job(j.as_bytes()))
                .collect(),
        })
    }

    /// One stored job.
    pub async fn job(&self, plugin: &str, id: u64) -> Result<Option<JobRecord>, StoreError> {
        Ok(match &self.backend {
            Backend::Embedded(e) => e.get(Table::Jobs, plugin, &job_key(id))?,
            Backend::Postgres(pg) => pg.job(plugin, id).await?.map(String::into_bytes),
        }
        .and_then(|v| parse_job(&v)))
    }

    /// Replace a job's record durably (a retry time, a dead mark), ending
    /// its lease; a job queued again is announced to the runner. With
    /// `lease`, only while that claim holds the job (PostgreSQL).
    pub async fn put_job(&self, job: &JobRecord, lease: Option<u64>) -> Result<(), StoreError> {
        let announce = if job.dead {
            Vec::new()
        } else {
            vec![job.queued()]
        };
        match &self.backend {
            Backend::Embedded(e) => {
                let value =
                    serde_json::to_vec(job).map_err(|e| StoreError::Storage(e.to_string()))?;
                let write = embedded::Write {
                    table: Table::Jobs,
                    ns: Arc::from(job.plugin.as_str()),
                    key: job_key(job.id),
                    value: Some(value),
                };
                e.commit(vec![write], announce).await
            }
            Backend::Postgres(pg) => {
                pg.put_job(job, lease).await?;
                embedded::announce(&self.job_sink, announce);
                Ok(())
            }
        }
    }

    /// Record replica `me`'s beat: how many replicas beat within
    /// `alive_for` (on the embedded store, one: this).
    pub async fn replica_beat(
        &self,
        me: &ReplicaRecord<'_>,
        alive_for: Duration,
    ) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Embedded(_) => Ok(1),
            Backend::Postgres(pg) => pg.replica_beat(me, alive_for).await,
        }
    }

    /// Events of a fleet (PostgreSQL only; on the embedded store a Berth
    /// numbers and sends its events itself): number `plugin`'s event and
    /// keep it, sent now or held for its call's commit until `held_until`.
    pub async fn event(
        &self,
        plugin: &str,
        topic: &str,
        payload: &[u8],
        closing: bool,
        held_until: Option<u64>,
    ) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Embedded(_) => Err(not_shared()),
            Backend::Postgres(pg) => pg.event(plugin, topic, payload, closing, held_until).await,
        }
    }

    /// A held event's call committed (`send`) or rolled back (it is dropped).
    pub async fn event_settled(
        &self,
        plugin: &str,
        seq: u64,
        send: bool,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Embedded(_) => Err(not_shared()),
            Backend::Postgres(pg) => pg.event_settled(plugin, seq, send).await,
        }
    }

    /// Each plugin with events, and the last number it gave.
    pub async fn event_heads(&self) -> Result<Vec<(String, u64)>, StoreError> {
        match &self.backend {
            Backend::Embedded(_) => Ok(Vec::new()),
            Backend::Postgres(pg) => pg.event_heads().await,
        }
    }

    /// `plugin`'s kept events numbered in `after + 1 ..= upto`, in order,
    /// at most `limit`.
    pub async fn events_after(
        &self,
        plugin: &str,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        match &self.backend {
            Backend::Embedded(_) => Ok(Vec::new()),
            Backend::Postgres(pg) => pg.events_after(plugin, after, upto, limit).await,
        }
    }

    /// Forget each plugin's events but its last `keep`; how many went.
    pub async fn events_trim(&self, keep: u64) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Embedded(_) => Ok(0),
            Backend::Postgres(pg) => pg.events_trim(keep).await,
        }
    }

    /// Wake-ups as events are kept or settled.
    pub async fn event_wakeups(&self) -> Result<Wakeups, StoreError> {
        match &self.backend {
            Backend::Embedded(_) => Err(not_shared()),
            Backend::Postgres(pg) => pg.event_wakeups().await,
        }
    }

    /// Take lease `name` for `holder` for `lease` when it is free or has
    /// lapsed, or keep it when `holder` has it, saving `cursor` (where the
    /// work got to) if given: the cursor saved with it (0 when new, or
    /// when it lapsed long ago), or None while another holder has it. For
    /// work one replica of a fleet does at a time; on the embedded store a
    /// Berth is alone and always holds it.
    pub async fn lease(
        &self,
        name: &str,
        holder: &str,
        lease: Duration,
        cursor: Option<i64>,
    ) -> Result<Option<i64>, StoreError> {
        match &self.backend {
            Backend::Embedded(_) => Ok(Some(cursor.unwrap_or(0))),
            Backend::Postgres(pg) => pg.lease(name, holder, lease, cursor).await,
        }
    }

    /// The replicas that beat within `alive_for` (none on the embedded
    /// store, which has no registry).
    pub async fn replicas(&self, alive_for: Duration) -> Result<Vec<ReplicaView>, StoreError> {
        match &self.backend {
            Backend::Embedded(_) => Ok(Vec::new()),
            Backend::Postgres(pg) => Ok(pg
                .replicas(alive_for)
                .await?
                .into_iter()
                .map(|(id, address, version, plugins)| ReplicaView {
                    id,
                    address,
                    version,
                    plugins: serde_json::from_str(&plugins).unwrap_or_default(),
                })
                .collect()),
        }
    }

    /// The fleet's plugin files: (file name, sha256, or None once removed
    /// from the fleet). None on the embedded store.
    pub async fn plugin_files(&self) -> Result<Vec<(String, Option<String>)>, StoreError> {
        match &self.backend {
            Backend::Embedded(_) => Ok(Vec::new()),
            Backend::Postgres(pg) => pg.plugin_files().await,
        }
    }

    /// One of the fleet's plugin files: (sha256, bytes).
    pub async fn plugin_file(&self, file: &str) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        match &self.backend {
            Backend::Embedded(_) => Ok(None),
            Backend::Postgres(pg) => pg.plugin_file(file).await,
        }
    }

    /// Put a plugin file in the fleet's set, (sha256, bytes), or take it
    /// out (None).
    pub async fn put_plugin_file(
        &self,
        file: &str,
        content: Option<(&str, &[u8])>,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Embedded(_) => Err(not_shared()),
            Backend::Postgres(pg) => pg.put_plugin_file(file, content).await,
        }
    }

    /// Take replica `id` out of the registry (it stops).
    pub async fn replica_leave(&self, id: &str) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Embedded(_) => Ok(()),
            Backend::Postgres(pg) => pg.replica_leave(id).await,
        }
    }

    /// Whether other Berth replicas may share this store (PostgreSQL): jobs
    /// are then claimed with leases and looked for in the store.
    pub fn shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// Claim job `id` of `plugin` to run it, for `lease` (longer than the
    /// job may run): its record and the claim's token, or None when it is
    /// gone, dead, or held by another replica's unlapsed claim. The
    /// embedded store has one runner, which claims by scheduling.
    pub async fn claim_job(
        &self,
        plugin: &str,
        id: u64,
        lease: Duration,
    ) -> Result<Option<(JobRecord, u64)>, StoreError> {
        match &self.backend {
            Backend::Embedded(_) => Ok(self
                .job(plugin, id)
                .await?
                .filter(|j| !j.dead)
                .map(|j| (j, 0))),
            Backend::Postgres(pg) => {
                let token = rand::random::<u64>() >> 1 | 1;
                let until = now_ms().saturating_add(lease.as_millis() as u64);
                Ok(pg
                    .claim_job(plugin, id, token, until)
                    .await?
                    .and_then(|r| parse_job(r.as_bytes()))
                    .map(|j| (j, token)))
            }
        }
    }

    /// Jobs due within `ahead` that no replica holds (PostgreSQL: queued by
    /// another replica, or left by one that died); none on the embedded
    /// store, whose runner knows its every job.
    pub async fn unclaimed_jobs(&self, ahead: Duration) -> Result<Vec<Queued>, StoreError> {
        match &self.backend {
            Backend::Embedded(_) => Ok(Vec::new()),
            Backend::Postgres(pg) => Ok(pg
                .due_jobs(now_ms().saturating_add(ahead.as_millis() as u64))
                .await?
                .into_iter()
                .map(|(plugin, id, run_at_ms)| Queued {
                    run_at_ms,
                    id,
                    plugin,
                })
                .collect()),
        }
    }

    /// Every entry of `table`: (namespace, key, value), in order.
    pub async fn dump(&self, table: Table) -> Result<Vec<(String, String, Vec<u8>)>, StoreError> {
        match &self.backend {
            Backend::Embedded(e) => e.dump(table),
            Backend::Postgres(pg) => pg.dump(table).await,
        }
    }

    /// What `table` holds per namespace: how many entries, and a SHA-256
    /// over them in key order (each key and value length-prefixed), so two
    /// stores can be compared whatever their backends (`berth store copy`).
    pub async fn census(&self, table: Table) -> Result<Vec<Census>, StoreError> {
        use sha2::Digest;
        let mut entries = self.dump(table).await?;
        entries.sort();
        let mut out: Vec<Census> = Vec::new();
        let mut hasher = sha2::Sha256::new();
        for (ns, key, value) in &entries {
            if out.last().is_none_or(|c| &c.namespace != ns) {
                if let Some(last) = out.last_mut() {
                    last.checksum = hex::encode(std::mem::take(&mut hasher).finalize());
                }
                out.push(Census {
                    table: table.name(),
                    namespace: ns.clone(),
                    count: 0,
                    checksum: String::new(),
                });
            }
            for part in [key.as_bytes(), value.as_slice()] {
                hasher.update((part.len() as u64).to_be_bytes());
                hasher.update(part);
            }
            out.last_mut().expect("pushed above").count += 1;
        }
        if let Some(last) = out.last_mut() {
            last.checksum = hex::encode(hasher.finalize());
        }
        Ok(out)
    }

    /// Write entries into `table` (moving a store: `berth store copy`).
    pub async fn load(
        &self,
        table: Table,
        entries: Vec<(String, String, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Embedded(e) => {
                let writes = entries
                    .into_iter()
                    .map(|(ns, key, value)| embedded::Write {
                        table,
                        ns: Arc::from(ns),
                        key,
                        value: Some(value),
                    })
                    .collect();
                e.commit(writes, Vec::new()).await?;
                e.reload_job_ids()
            }
            Backend::Postgres(pg) => pg.load(table, &entries).await,
        }
    }
}

/// The backend's part of a transaction.
enum Inner {
    Embedded(EmbeddedTxn),
    Postgres(PgTxn),
}

/// One call's view of a plugin's namespace: reads see its own writes; the
/// writes are committed together by [`Txn::commit`] or dropped with it.
///
/// Serializable in both backends (see the module's docs). A conflict rolls
/// the transaction back and answers `conflict`; every later operation
/// answers `conflict` too, until [`Txn::restart`].
pub struct Txn {
    store: Arc<Store>,
    inner: Inner,
    ns: Arc<str>,
    /// Why the transaction was rolled back, once it was.
    aborted: Option<String>,
    /// The call acted outside KV and cannot be run again: in a deadlock,
    /// another call gives way if it can (embedded store).
    pinned: bool,
    written: usize,
    deadline: Instant,
    /// Jobs to queue at commit.
    jobs: Vec<JobRecord>,
    /// A job to remove at commit (the one this call ran).
    /// The job this call runs, and its lease: removed at commit.
    done: Option<(u64, u64)>,
    /// What happens once the commit succeeded (events the call published).
    after: Vec<Box<dyn FnOnce() + Send + Sync>>,
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
    /// Wait for locks at most until `deadline` (the call's own).
    pub fn until(mut self, deadline: Instant) -> Txn {
        self.deadline = deadline;
        self
    }

    /// Mark the call as having acted outside KV (see `locks`).
    pub fn pin(&mut self) {
        self.pinned = true;
    }

    /// Whether the call acted outside KV.
    pub fn pinned(&self) -> bool {
        self.pinned
    }

    /// Why this transaction was rolled back, if it was.
    pub fn aborted(&self) -> Option<&str> {
        self.aborted.as_deref()
    }

    /// Drop every write, queued job and lock, and begin again, as if the
    /// call had just started (the job a job call runs stays marked).
    pub async fn restart(&mut self) {
        match &mut self.inner {
            Inner::Embedded(t) => match &self.store.backend {
                Backend::Embedded(e) => t.restart(e, &self.ns),
                Backend::Postgres(_) => unreachable!("a transaction is of its store's backend"),
            },
            Inner::Postgres(t) => t.rollback().await,
        }
        self.jobs.clear();
        self.after.clear();
        self.written = 0;
        self.aborted = None;
    }

    /// Run `effects` once this transaction commits; never if it does not.
    pub fn after_commit(&mut self, effects: Vec<Box<dyn FnOnce() + Send + Sync>>) {
        self.after.extend(effects);
    }

    fn live(&self) -> Result<(), TxnError> {
        match &self.aborted {
            Some(why) => Err(TxnError::Conflict(why.clone())),
            None => Ok(()),
        }
    }

    /// After a failed operation: a conflict rolls everything back at once,
    /// so the calls this one waited with can go on.
    async fn settle<T>(&mut self, result: Result<T, TxnError>) -> Result<T, TxnError> {
        if let Err(TxnError::Conflict(why)) = &result {
            let why = why.clone();
            self.restart().await;
            self.take_turn();
            self.aborted = Some(why);
        }
        result
    }

    /// Before running again after a conflict: take turns with the other
    /// calls of this namespace that conflicted (PostgreSQL; the embedded
    /// lock table queues them by itself).
    pub fn take_turn(&mut self) {
        if let Inner::Postgres(t) = &mut self.inner {
            t.take_turn(&self.ns);
        }
    }

    /// Read `key` (`exclusive` when the caller will write it).
    async fn read(&mut self, key: &str, exclusive: bool) -> Result<Option<Vec<u8>>, TxnError> {
        check_key(key)?;
        self.live()?;
        let store = self.store.clone();
        let cx = Ctx {
            ns: &self.ns,
            deadline: self.deadline,
            pinned: self.pinned,
        };
        let result = match (&store.backend, &mut self.inner) {
            (Backend::Embedded(e), Inner::Embedded(t)) => t.read(e, &cx, key, exclusive).await,
            (Backend::Postgres(pg), Inner::Postgres(t)) => t.read(pg, &cx, key, exclusive).await,
            _ => unreachable!("a transaction is of its store's backend"),
        };
        self.settle(result).await
    }

    /// Write (or with `None`, delete) `key`, counting it against the
    /// transaction's size limit.
    async fn write(&mut self, key: &str, value: Option<Vec<u8>>) -> Result<(), TxnError> {
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
        self.live()?;
        let store = self.store.clone();
        let cx = Ctx {
            ns: &self.ns,
            deadline: self.deadline,
            pinned: self.pinned,
        };
        let result = match (&store.backend, &mut self.inner) {
            (Backend::Embedded(e), Inner::Embedded(t)) => t.write(e, &cx, key, value).await,
            (Backend::Postgres(pg), Inner::Postgres(t)) => {
                t.write(pg, &cx, key, value.as_deref()).await
            }
            _ => unreachable!("a transaction is of its store's backend"),
        };
        let result = self.settle(result).await;
        if result.is_ok() {
            self.written += size;
        }
        result
    }

    /// Read a key, seeing this transaction's own writes.
    pub async fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, TxnError> {
        self.read(key, false).await
    }

    /// Write a key.
    pub async fn set(&mut self, key: &str, value: Vec<u8>) -> Result<(), TxnError> {
        check_key(key)?;
        self.write(key, Some(value)).await
    }

    /// Delete a key; whether it existed.
    pub async fn delete(&mut self, key: &str) -> Result<bool, TxnError> {
        let existed = self.read(key, true).await?.is_some();
        self.write(key, None).await?;
        Ok(existed)
    }

    /// Add `delta` to the decimal integer at `key`.
    pub async fn increment(&mut self, key: &str, delta: i64) -> Result<i64, TxnError> {
        if matches!(self.inner, Inner::Postgres(_)) {
            return self.increment_in_one(key, delta).await;
        }
        let current = match self.read(key, true).await? {
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
        self.write(key, Some(next.to_string().into_bytes())).await?;
        Ok(next)
    }

    /// [`Txn::increment`] as one statement (PostgreSQL: one round trip,
    /// not a read and a write), with the same checks.
    async fn increment_in_one(&mut self, key: &str, delta: i64) -> Result<i64, TxnError> {
        check_key(key)?;
        // The longest decimal i64 is 20 bytes.
        if self.written + key.len() + 20 > MAX_TXN_BYTES {
            return Err(TxnError::Invalid(format!(
                "one call may write at most {MAX_TXN_BYTES} bytes"
            )));
        }
        self.live()?;
        let store = self.store.clone();
        let cx = Ctx {
            ns: &self.ns,
            deadline: self.deadline,
            pinned: self.pinned,
        };
        let result = match (&store.backend, &mut self.inner) {
            (Backend::Postgres(pg), Inner::Postgres(t)) => t.increment(pg, &cx, key, delta).await,
            _ => unreachable!("only PostgreSQL increments in one statement"),
        };
        let result = self.settle(result).await;
        if let Ok(next) = &result {
            self.written += key.len() + next.to_string().len();
        }
        result
    }

    /// Swap `key` to `new` if it is `expected`.
    pub async fn compare_and_swap(
        &mut self,
        key: &str,
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    ) -> Result<bool, TxnError> {
        if self.read(key, true).await? != expected {
            return Ok(false);
        }
        self.write(key, new).await?;
        Ok(true)
    }

    /// List keys with `prefix` strictly after `after`, at most `limit` (0:
    /// 100). No other call can add, change or remove a key in the listed
    /// span until this transaction ends.
    pub async fn list(
        &mut self,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page, TxnError> {
        self.live()?;
        let limit = match limit {
            0 => 100,
            n => n.min(MAX_PAGE),
        } as usize;
        let store = self.store.clone();
        let cx = Ctx {
            ns: &self.ns,
            deadline: self.deadline,
            pinned: self.pinned,
        };
        let result = match (&store.backend, &mut self.inner) {
            (Backend::Embedded(e), Inner::Embedded(t)) => {
                t.list(e, &cx, prefix, after, limit).await
            }
            (Backend::Postgres(pg), Inner::Postgres(t)) => {
                t.list(pg, &cx, prefix, after, limit).await
            }
            _ => unreachable!("a transaction is of its store's backend"),
        };
        self.settle(result).await
    }

    /// Whether this transaction wrote anything.
    pub fn is_empty(&self) -> bool {
        let writes = match &self.inner {
            Inner::Embedded(t) => t.writes.is_empty(),
            Inner::Postgres(_) => self.written == 0,
        };
        writes && self.jobs.is_empty() && self.done.is_none()
    }

    /// Queue a job at commit: nothing is queued if the call fails.
    pub async fn enqueue(
        &mut self,
        kind: &str,
        payload: &[u8],
        delay_ms: u64,
    ) -> Result<u64, TxnError> {
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
        let store = self.store.clone();
        let id = match (&store.backend, &mut self.inner) {
            (Backend::Embedded(e), _) => e.next_job_id(),
            (Backend::Postgres(pg), Inner::Postgres(t)) => {
                let id = t.next_job_id(pg, self.deadline).await;
                self.settle(id).await?
            }
            _ => unreachable!("a transaction is of its store's backend"),
        };
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

    /// Remove job `id`, claimed with `lease`, at commit: it ran, and its
    /// writes commit with it, unless the lease lapsed and another replica
    /// took the job (then nothing commits).
    pub fn finish_job(&mut self, id: u64, lease: u64) {
        self.done = Some((id, lease));
    }

    /// Commit durably, then release the locks. A rolled-back transaction
    /// commits nothing, not even its job mark.
    pub async fn commit(mut self) -> Result<(), StoreError> {
        self.commit_writes().await?;
        for effect in std::mem::take(&mut self.after) {
            effect();
        }
        Ok(())
    }

    async fn commit_writes(&mut self) -> Result<(), StoreError> {
        if let Some(why) = &self.aborted {
            return Err(StoreError::Aborted(why.clone()));
        }
        let store = self.store.clone();
        match (&store.backend, &mut self.inner) {
            (Backend::Embedded(e), Inner::Embedded(t)) => {
                if self.jobs.is_empty() && self.done.is_none() && t.writes.is_empty() {
                    return Ok(());
                }
                t.commit(e, &self.ns, &self.jobs, self.done.map(|(id, _)| id))
                    .await
                // `self` (and its locks) drops after, once the commit is
                // durable.
            }
            (Backend::Postgres(pg), Inner::Postgres(t)) => {
                t.commit(pg, &self.ns, &self.jobs, self.done, self.deadline)
                    .await?;
                let queued = self.jobs.iter().map(JobRecord::queued);
                embedded::announce(&store.job_sink, queued);
                Ok(())
            }
            _ => unreachable!("a transaction is of its store's backend"),
        }
    }
}

impl Drop for Txn {
    fn drop(&mut self) {
        match (&self.store.backend, &mut self.inner) {
            (Backend::Embedded(e), Inner::Embedded(t)) => t.release(e, &self.ns),
            (_, Inner::Postgres(t)) => t.abandon(),
            _ => {}
        }
    }
}

fn not_shared() -> StoreError {
    StoreError::Storage("the embedded store is one Berth's: there is no fleet to share with".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Store {
        fn idle(&self) -> bool {
            match &self.backend {
                Backend::Embedded(e) => e.locks.is_idle(),
                Backend::Postgres(_) => true,
            }
        }
    }

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
        assert!(store.idle());
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
        let id = t.enqueue("run", b"1", 0).await.unwrap();
        // Poll the commit once (it hands its batch to the writer), then drop
        // it, as hyper drops a request whose client hung up.
        let _ = tokio::time::timeout(std::time::Duration::ZERO, t.commit()).await;
        let announced = tokio::time::timeout(std::time::Duration::from_secs(10), queued.recv())
            .await
            .expect("announced")
            .unwrap();
        assert_eq!(announced.id, id);
        assert_eq!(
            store.job("a", id).await.unwrap().map(|j| j.kind),
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
                        $t.restart().await;
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
        assert!(store.idle());
    }
}
