//! The job runner. It keeps an in-memory schedule of due times, rebuilt
//! from the stored queue at start, and runs each due job by calling the
//! plugin's `run-job` export in a fresh instance with its own transaction;
//! success removes the job in that same transaction. Failures are retried
//! with exponential backoff, then kept as dead with the last error. A job
//! interrupted by a crash runs again (at-least-once delivery), but its KV
//! writes apply at most once: they commit only with the job's removal.
//! Plugins queue jobs through the `jobs` capability (`caps::jobs`).
//!
//! On a store other replicas share (PostgreSQL), a job is claimed before it
//! runs, with a lease longer than its plugin's deadline: one replica runs
//! it at a time, its end commits only while the lease holds, and the
//! runner looks in the store every [`LOOK_EVERY`] for jobs no replica
//! holds (queued on another replica, or left by one that died mid-job).

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};

use crate::config::JobsConfig;
use crate::invoke::{Invocation, Job, Kept, invoke};
use crate::plugins::Plugins;
use crate::store::{JobRecord, Queued, Store, StoreError, now_ms};

/// How long to wait before a plugin that is not mounted is looked for again.
const UNMOUNTED_RETRY: Duration = Duration::from_secs(5);

/// How often a runner on a shared store looks for jobs no replica holds.
pub const LOOK_EVERY: Duration = Duration::from_secs(1);

/// A lease outlasts its job's deadline by this much (the commit after it).
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// The runner: schedule, worker slots, counters for the admin view.
pub struct Jobs {
    db: Arc<Store>,
    config: JobsConfig,
    schedule: Mutex<BTreeSet<Queued>>,
    running: Mutex<HashSet<u64>>,
    workers: Arc<Semaphore>,
    wake: tokio::sync::Notify,
}

/// Counts per plugin for `berth jobs` and `/_berth/jobs`.
#[derive(Debug, Default, Serialize)]
pub struct Counts {
    pub queued: u64,
    pub running: u64,
    pub dead: u64,
}

impl Jobs {
    /// A runner over `db`'s queue; every job stored and not dead is due.
    pub async fn new(db: Arc<Store>, config: JobsConfig) -> anyhow::Result<Arc<Jobs>> {
        let mut schedule = BTreeSet::new();
        for job in db.jobs().await? {
            if !job.dead {
                schedule.insert(job.queued());
            }
        }
        let jobs = Arc::new(Jobs {
            workers: Arc::new(Semaphore::new(config.workers as usize)),
            db,
            config,
            schedule: Mutex::new(schedule),
            running: Mutex::default(),
            wake: tokio::sync::Notify::new(),
        });
        Ok(jobs)
    }

    fn schedule(&self) -> std::sync::MutexGuard<'_, BTreeSet<Queued>> {
        self.schedule.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run jobs until `shutdown` flips. Jobs committed by calls arrive on
    /// `queued`.
    pub async fn run(
        self: Arc<Self>,
        plugins: Arc<Plugins>,
        mut queued: mpsc::UnboundedReceiver<Queued>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut look = tokio::time::interval(LOOK_EVERY);
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if self.db.shared() {
            let this = self.clone();
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = look.tick() => this.look_in_store().await,
                        _ = shutdown.changed() => return,
                    }
                }
            });
        }
        loop {
            let permit = tokio::select! {
                permit = self.workers.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => return,
                },
                _ = shutdown.changed() => return,
            };
            let next = self.schedule().first().cloned();
            let now = now_ms();
            match next {
                Some(job) if job.run_at_ms <= now => {
                    self.schedule().remove(&job);
                    self.running().insert(job.id);
                    let (this, plugins) = (self.clone(), plugins.clone());
                    tokio::spawn(async move {
                        this.run_one(&plugins, job.clone()).await;
                        this.running().remove(&job.id);
                        drop(permit);
                    });
                    continue;
                }
                _ => drop(permit),
            }
            let sleep = next
                .map(|j| Duration::from_millis(j.run_at_ms - now))
                .unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                Some(job) = queued.recv() => { self.schedule().insert(job); }
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => return,
            }
            while let Ok(job) = queued.try_recv() {
                self.schedule().insert(job);
            }
        }
    }

    /// Schedule the jobs no replica holds that are due within the next look.
    async fn look_in_store(&self) {
        match self.db.unclaimed_jobs(LOOK_EVERY).await {
            Ok(found) => {
                if found.is_empty() {
                    return;
                }
                let running = self.running().clone();
                self.schedule()
                    .extend(found.into_iter().filter(|q| !running.contains(&q.id)));
                self.wake.notify_one();
            }
            Err(e) => tracing::warn!(error = %e, "cannot look for jobs in the store"),
        }
    }

    async fn run_one(&self, plugins: &Plugins, queued: Queued) {
        let routing = plugins.routing();
        let Some(plugin) = routing.plugins.get(&queued.plugin).cloned() else {
            // Not mounted (yet, or any more): not the job's fault.
            drop(routing);
            self.reschedule(Queued {
                run_at_ms: now_ms() + UNMOUNTED_RETRY.as_millis() as u64,
                ..queued
            });
            return;
        };
        drop(routing);
        let lease = plugin.limits.deadline + LEASE_MARGIN;
        let (job, token) = match self.db.claim_job(&queued.plugin, queued.id, lease).await {
            Ok(Some(claimed)) => claimed,
            // Finished, killed, or another replica's meanwhile.
            Ok(None) => return,
            Err(e) => {
                tracing::error!(job = queued.id, error = %e, "cannot claim job; retrying later");
                self.reschedule(Queued {
                    run_at_ms: now_ms() + 1000,
                    ..queued
                });
                return;
            }
        };
        let payload = base64::engine::general_purpose::STANDARD
            .decode(&job.payload)
            .unwrap_or_default();
        let invocation = Invocation {
            call: Job {
                id: job.id,
                lease: token,
                kind: job.kind.clone(),
                payload,
            },
            request_id: format!("job-{}", job.id),
            deadline: Instant::now() + plugin.limits.deadline,
            rerun: false,
        };
        let error = match invoke(plugins.runtime(), &plugin, invocation).await {
            Ok(finished) => match (finished.value, finished.writes.commit().await) {
                (Ok(()), Kept::Committed) => {
                    tracing::debug!(plugin = %job.plugin, job = job.id, kind = %job.kind, "job done");
                    return;
                }
                (Err(message), _) => message,
                (Ok(()), Kept::Failed(StoreError::Aborted(why))) => format!("conflict: {why}"),
                (Ok(()), Kept::Failed(e)) => format!("storage failed: {e}"),
                (Ok(()), Kept::Dropped) => unreachable!("a job that succeeded keeps its writes"),
            },
            Err(e) => e.to_string(),
        };
        self.failed(job, token, error).await;
    }

    /// Record a failed run (while this replica's claim `lease` holds).
    async fn failed(&self, mut job: JobRecord, lease: u64, error: String) {
        job.attempts += 1;
        job.last_error = Some(error.clone());
        if job.attempts >= self.config.max_attempts {
            job.dead = true;
            tracing::warn!(plugin = %job.plugin, job = job.id, kind = %job.kind, attempts = job.attempts, "job is dead: {error}");
        } else {
            let backoff = self
                .config
                .backoff_ms
                .saturating_mul(1u64 << (job.attempts - 1).min(32))
                .min(self.config.backoff_max_ms);
            job.run_at_ms = now_ms() + backoff;
            tracing::info!(plugin = %job.plugin, job = job.id, kind = %job.kind, attempts = job.attempts, retry_in_ms = backoff, "job failed: {error}");
        }
        // put_job announces a queued job back to the runner.
        if let Err(e) = self.db.put_job(&job, Some(lease)).await {
            tracing::error!(job = job.id, error = %e, "cannot record the job's failure; it will run again");
            self.reschedule(job.queued());
        }
    }

    fn reschedule(&self, job: Queued) {
        self.schedule().insert(job);
        self.wake.notify_one();
    }

    /// Queued, running and dead counts per plugin, and the dead jobs.
    pub async fn status(&self) -> serde_json::Value {
        let mut counts: std::collections::BTreeMap<String, Counts> = Default::default();
        let mut dead = Vec::new();
        let mut next = Vec::new();
        let running = self.running().clone();
        let scheduled: HashSet<u64> = self.schedule().iter().map(|q| q.id).collect();
        match self.db.jobs().await {
            Ok(jobs) => {
                for job in jobs {
                    let c = counts.entry(job.plugin.clone()).or_default();
                    if job.dead {
                        c.dead += 1;
                        dead.push(serde_json::json!({
                            "id": job.id, "plugin": job.plugin, "kind": job.kind,
                            "attempts": job.attempts, "last_error": job.last_error,
                        }));
                    } else if running.contains(&job.id) {
                        c.running += 1;
                    } else {
                        c.queued += 1;
                        if next.len() < 20 {
                            next.push(serde_json::json!({
                                "id": job.id, "plugin": job.plugin, "kind": job.kind,
                                "attempts": job.attempts, "run_at_ms": job.run_at_ms,
                                "scheduled": scheduled.contains(&job.id),
                            }));
                        }
                    }
                }
            }
            Err(e) => return serde_json::json!({ "error": e.to_string() }),
        }
        serde_json::json!({ "counts": counts, "dead": dead, "queued": next })
    }

    /// Queue dead job `id` again with a fresh attempt count.
    pub async fn retry(&self, id: u64) -> Result<String, String> {
        let jobs = self.db.jobs().await.map_err(|e| e.to_string())?;
        let Some(mut job) = jobs.into_iter().find(|j| j.id == id) else {
            return Err(format!("no job with id {id}"));
        };
        if !job.dead {
            return Err(format!("job {id} is not dead (it is queued or running)"));
        }
        job.dead = false;
        job.attempts = 0;
        job.run_at_ms = now_ms();
        self.db
            .put_job(&job, None)
            .await
            .map_err(|e| e.to_string())?;
        Ok(format!(
            "job {id} ({} {}) queued again",
            job.plugin, job.kind
        ))
    }
}
