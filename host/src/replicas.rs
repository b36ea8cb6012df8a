//! This Berth as one replica of a fleet: it registers itself in the store
//! (id, address, version, when it started) and beats every [`BEAT`]; a
//! replica whose last beat is older than [`ALIVE_FOR`] counts as gone.
//! `/_berth/health` says which replica answered and how many are alive. On
//! the embedded store a Berth is alone, and says so.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::RngCore;

use crate::store::{Store, now_ms};

/// How often a replica beats.
pub const BEAT: Duration = Duration::from_secs(2);
/// How long after its last beat a replica counts as alive.
pub const ALIVE_FOR: Duration = Duration::from_secs(10);

/// This replica.
pub struct Replica {
    /// Random, new at every start.
    pub id: String,
    pub started_ms: u64,
    /// Replicas alive at the last beat, this one among them.
    alive: AtomicU64,
}

impl Default for Replica {
    fn default() -> Self {
        let mut id = [0u8; 6];
        rand::rngs::OsRng.fill_bytes(&mut id);
        Replica {
            id: hex::encode(id),
            started_ms: now_ms(),
            alive: AtomicU64::new(1),
        }
    }
}

impl Replica {
    /// Replicas alive at the last beat.
    pub fn alive(&self) -> u64 {
        self.alive.load(Ordering::Relaxed)
    }

    /// Beat until `shutdown` flips, then leave the registry; each beat
    /// says what the replica serves (`serving`: a JSON object of plugin
    /// name to version and sha256).
    pub async fn run(
        self: Arc<Self>,
        db: Arc<Store>,
        address: String,
        serving: impl Fn() -> serde_json::Value + Send,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        if !db.shared() {
            return;
        }
        let mut beat = tokio::time::interval(BEAT);
        loop {
            tokio::select! {
                _ = beat.tick() => {}
                _ = shutdown.changed() => break,
            }
            let me = crate::store::ReplicaRecord {
                id: &self.id,
                address: &address,
                version: env!("CARGO_PKG_VERSION"),
                started_ms: self.started_ms,
                plugins: serving().to_string(),
            };
            match db.replica_beat(&me, ALIVE_FOR).await {
                Ok(alive) => self.alive.store(alive, Ordering::Relaxed),
                Err(e) => tracing::warn!(error = %e, "cannot beat in the store's replica registry"),
            }
        }
        if let Err(e) = db.replica_leave(&self.id).await {
            tracing::warn!(error = %e, "cannot leave the store's replica registry");
        }
    }
}
