//! Instances kept between calls, when the operator allows it
//! (`instance_reuse` above 1): each plugin version has a pool of idle
//! instances, its own, so a new version never gets an old one's. A call
//! takes the newest idle instance or makes one, runs alone on it, and puts
//! it back if it may serve again; an instance idle for [`IDLE_TIMEOUT`] is
//! torn down by the sweeper.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use wasmtime::Store;
use wasmtime::component::Instance;

use super::HostState;
use super::stderr::Tail;

/// How long an idle instance is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// An instance with its store, between calls or in one.
pub(super) struct Warm {
    pub store: Store<HostState>,
    pub instance: Instance,
    pub stderr: Tail,
    /// Calls it has served, the running one included.
    pub calls: u32,
    idle_since: Instant,
}

impl Warm {
    pub fn new(store: Store<HostState>, instance: Instance, stderr: Tail) -> Warm {
        Warm {
            store,
            instance,
            stderr,
            calls: 0,
            idle_since: Instant::now(),
        }
    }
}

/// The idle instances of one plugin version, newest last.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<Warm>>,
}

impl Pool {
    pub(super) fn take(&self) -> Option<Warm> {
        self.lock().pop()
    }

    /// Keep `warm` for a later call, unless `keep` instances already wait;
    /// the one not kept is handed back.
    pub(super) fn put(&self, mut warm: Warm, keep: usize) -> Option<Warm> {
        let mut idle = self.lock();
        if idle.len() >= keep {
            return Some(warm);
        }
        warm.idle_since = Instant::now();
        idle.push(warm);
        None
    }

    /// Instances waiting for a call now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// The instances idle since before `cutoff`, taken out.
    fn expired(&self, cutoff: Instant) -> Vec<Warm> {
        let mut idle = self.lock();
        let fresh = idle.partition_point(|w| w.idle_since < cutoff);
        idle.drain(..fresh).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Warm>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Every plugin version's pool, for the sweeper.
#[derive(Default)]
pub(super) struct Pools(Mutex<Vec<Weak<Pool>>>);

impl Pools {
    pub fn add(&self, pool: &Arc<Pool>) {
        self.lock().push(Arc::downgrade(pool));
    }

    /// Tear down the instances idle longer than [`IDLE_TIMEOUT`], and
    /// forget the pools of versions no longer loaded.
    pub fn sweep(&self) {
        let cutoff = Instant::now() - IDLE_TIMEOUT;
        let pools: Vec<Arc<Pool>> = {
            let mut pools = self.lock();
            pools.retain(|p| p.strong_count() > 0);
            pools.iter().filter_map(Weak::upgrade).collect()
        };
        for pool in pools {
            drop(pool.expired(cutoff));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Pool>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
