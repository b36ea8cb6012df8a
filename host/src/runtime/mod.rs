//! The wasm runtime: one engine with the pooling allocator, compiled code
//! cached on disk, one `InstancePre` per plugin version and a fresh `Store`
//! per call (or, where the operator allows it, an instance kept from an
//! earlier call of the same version: see `warm`), with a memory cap and a
//! wall-clock deadline enforced by epoch interruption.

mod stderr;
mod warm;
pub mod wasi_http;

use std::cell::RefCell;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use sha2::{Digest, Sha256};
use tracing::Instrument;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{
    Component, ComponentExportIndex, ComponentNamedList, Instance, InstancePre, Lift, Linker,
    Lower, ResourceTable, TypedFunc,
};
use wasmtime::{
    CallHook, Engine, PoolingAllocationConfig, ResourceLimiter, ResourceLimiterAsync, Store,
    StoreLimits, StoreLimitsBuilder, UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyIndices;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use self::stderr::Tail;
pub use self::warm::IDLE_TIMEOUT;
use self::warm::{Pool, Pools, Warm};

use crate::bindings::{Manifest, Outcome, Request, WIT_PACKAGE, WIT_VERSION};
use crate::caps::{self, CallCx, PluginEnv};
use crate::config::{Limits, MAX_MEMORY_MIB};
use crate::lanes::{LaneSlot, Lanes};
use crate::store::Txn;

/// How often the epoch ticks; deadlines are checked (and long-running wasm
/// yields to other tasks) at this granularity.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Instances alive at once across all plugins: calls running plus stores
/// not yet torn down.
pub const POOL_INSTANCES: u32 = 1000;

/// Bytes of a plugin's stderr kept (panic messages end up here).
const STDERR_CAP: usize = 4096;

/// How often idle instances are looked at, in epoch ticks (one second).
const SWEEP_TICKS: u32 = 200;

/// The data of one `Store`: one call of one plugin.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// For wasi:http components: the implementation's state, and where
    /// their own requests go.
    http: WasiHttpCtx,
    outbound: wasi_http::Outbound,
    limits: Limiter,
    timed_out: bool,
    /// When the current call began.
    started: Instant,
    /// The lane this call holds while it runs long, if any.
    lane: LaneSlot,
    /// Set when the call is to move to the lanes' runtime (see `lanes`).
    moving: Arc<AtomicBool>,
    pub call: CallCx,
}

impl caps::HasCall for HostState {
    fn call(&mut self) -> &mut CallCx {
        &mut self.call
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Linear memory a call may grow by before growing on takes a CPU lane:
/// touching new memory is the kernel's work (a page fault for every page,
/// and giving the pages back after the call), work done for the plugin
/// that the epoch ticks do not see in time. Calls that stay below it,
/// nearly all, never meet a lane for it.
const LANE_MEMORY: usize = 4 << 20;

/// The store's memory cap, counting what the instance's memories grew to;
/// past [`LANE_MEMORY`] a growth waits for the call's turn on a CPU lane.
struct Limiter {
    limits: StoreLimits,
    /// Bytes of linear memory, all memories together.
    memory: usize,
    /// Of those, what the memories grew past their initial sizes: a plugin
    /// that starts large (an interpreter's image) is not lane-bound for it.
    grown: usize,
    /// Where the call keeps its lane (the store's own slot).
    lane: LaneSlot,
    lanes: Arc<Lanes>,
    plugin: Arc<str>,
    /// The store's `moving` flag.
    moving: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl ResourceLimiterAsync for Limiter {
    async fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if allowed {
            let more = desired.saturating_sub(current);
            if current > 0 {
                self.grown += more;
                if self.grown > LANE_MEMORY && !self.lane.holds() {
                    if !Lanes::on_a_lane_thread() {
                        // Move to the lanes' runtime first (the call
                        // returns Pending and its runner moves it).
                        self.moving.store(true, Ordering::Relaxed);
                        tokio::task::yield_now().await;
                    }
                    self.lane.put(self.lanes.acquire(&self.plugin).await);
                }
            }
            self.memory += more;
        }
        Ok(allowed)
    }

    async fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("plugin trapped: {0}")]
    Trap(String),
    #[error("plugin ran past its {0:?} deadline")]
    Timeout(Duration),
    #[error("cannot instantiate plugin: {0}")]
    Instantiate(String),
}

impl CallError {
    /// What went wrong, in a word a client may see.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Trap(_) => "it trapped",
            CallError::Timeout(_) => "it ran past its deadline",
            CallError::Instantiate(_) => "it could not be started",
        }
    }
}

/// What a successful call returns: the value, the call's transaction (to
/// commit), how long instantiation took (none for a reused instance), and
/// the finished store.
pub struct Called<R> {
    pub value: R,
    pub txn: Option<Txn>,
    /// Streams the call opened for its answer to send.
    pub opened: caps::Opened,
    pub instantiate: Option<Duration>,
    pub spent: Spent,
}

/// A finished call's store. Dropping it resets the instance's memory (the
/// pages the call dirtied) and returns its pool slots, a few microseconds
/// that the caller's answer need not wait for: see [`Spent::retire`]. An
/// instance that may serve again goes back to its version's idle pool.
pub struct Spent(Retiring);

enum Retiring {
    Done(Store<HostState>),
    /// Torn down elsewhere already (see `tear_down_on_a_lane`).
    Gone,
    Again {
        warm: Warm,
        pool: Arc<Pool>,
        keep: usize,
    },
}

thread_local! {
    /// The store this thread retired last, not yet torn down.
    static RETIRED: RefCell<Option<Spent>> = const { RefCell::new(None) };
}

impl Spent {
    /// Keep the store for this thread to tear down later: when the thread
    /// next goes idle or exits ([`reap`], which `berth serve` runs as the
    /// async workers' park and stop hooks) or when it retires the next
    /// store, whichever comes first. On the request path that is after
    /// hyper has written the response, and it wakes no other thread. At
    /// most one store per thread waits this way.
    pub fn retire(self) {
        let store = match self.0 {
            Retiring::Done(store) => store,
            Retiring::Again { warm, pool, keep } => match pool.put(warm, keep) {
                None => return,
                Some(unkept) => unkept.store,
            },
            Retiring::Gone => return,
        };
        let previous = RETIRED.with(|slot| slot.borrow_mut().replace(Spent(Retiring::Done(store))));
        drop(previous);
    }
}

/// Tear down the store this thread retired last, if any.
pub fn reap() {
    let spent = RETIRED.with(|slot| slot.borrow_mut().take());
    drop(spent);
}

/// The engine, the linker and the compile cache.
pub struct Runtime {
    engine: Engine,
    /// Berth plugins: WASI, wasi:http (for language runtimes' own
    /// outgoing requests) and the capabilities.
    linker: Linker<HostState>,
    /// wasi:http components: WASI and wasi:http.
    http_linker: Linker<HostState>,
    cache_dir: Option<PathBuf>,
    stop_ticker: Arc<AtomicBool>,
    /// What a call running wasm past a tick must hold (see `lanes`).
    lanes: Arc<Lanes>,
    /// Every plugin version's idle instances.
    pools: Arc<Pools>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

impl Runtime {
    /// An engine with the pooling allocator and an epoch ticker thread.
    /// Compiled code is cached under `cache_dir` when given.
    pub fn new(cache_dir: Option<PathBuf>) -> anyhow::Result<Runtime> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(POOL_INSTANCES)
            .total_core_instances(4 * POOL_INSTANCES)
            .total_memories(2 * POOL_INSTANCES)
            .total_tables(2 * POOL_INSTANCES)
            .total_stacks(POOL_INSTANCES)
            .max_memory_size((MAX_MEMORY_MIB << 20) as usize)
            // Reset slots between calls by rewriting only the pages the call
            // dirtied (found with PAGEMAP_SCAN on Linux >= 6.7), keeping them
            // resident: no madvise, no page faults on the next call.
            .pagemap_scan(wasmtime::Enabled::Auto)
            .linear_memory_keep_resident(2 << 20)
            .table_keep_resident(1 << 20)
            // Give a slot back to its pool as soon as its store is dropped,
            // so the next call takes the same warm slot. wasmtime queues a
            // zero-length decommit for every memory and table even when it
            // kept all pages resident; with a larger batch, slots waited in
            // that queue and a quiet server's next call took a cold slot
            // (mprotect, mmap of the image, page faults).
            .decommit_batch_size(1);
        let mut config = wasmtime::Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .cranelift_opt_level(wasmtime::OptLevel::Speed)
            .allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        // Language runtimes (StarlingMonkey's `fetch`) import wasi:http:
        // its outgoing requests go where `http-out` lets them.
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        caps::link(&mut linker)?;
        let mut http_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut http_linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut http_linker)?;

        let stop_ticker = Arc::new(AtomicBool::new(false));
        let ticker_engine = engine.clone();
        let stop = stop_ticker.clone();
        let pools = Arc::new(Pools::default());
        let sweeping = pools.clone();
        std::thread::Builder::new()
            .name("berth-epoch".into())
            .spawn(move || {
                let mut ticks = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticker_engine.increment_epoch();
                    ticks = ticks.wrapping_add(1);
                    if ticks.is_multiple_of(SWEEP_TICKS) {
                        sweeping.sweep();
                    }
                }
            })?;

        // Compiled code is loaded as native code: cache it only in a folder
        // no one but Berth's user can write.
        let cache_dir = match cache_dir {
            Some(dir) if crate::private::dir(&dir)? => Some(dir),
            Some(dir) => {
                tracing::warn!(
                    dir = %dir.display(),
                    "the compile cache folder belongs to another user: compiled code is not cached"
                );
                None
            }
            None => None,
        };
        // The async runtime runs one worker per core.
        let workers = std::thread::available_parallelism().map_or(1, usize::from);
        Ok(Runtime {
            engine,
            linker,
            http_linker,
            cache_dir,
            stop_ticker,
            lanes: Lanes::for_workers(workers),
            pools,
        })
    }

    /// The lanes long-running calls take turns on, for the host's own
    /// CPU-heavy work done for a plugin to take turns on too.
    pub fn lanes(&self) -> Arc<Lanes> {
        self.lanes.clone()
    }

    /// Compile `wasm` (or load its cached compilation) and link it against
    /// the host, checking the WIT version it was built for. Blocking: run
    /// it off the async workers.
    pub fn prepare(&self, wasm: &[u8]) -> anyhow::Result<Prepared> {
        let hash = hex::encode(Sha256::digest(wasm));
        if !wasm.starts_with(b"\0asm") {
            anyhow::bail!("not a WebAssembly file (no \\0asm header)");
        }
        let (component, cached) = self.compile(wasm, &hash)?;
        let pre = if wasi_http::is_handler(&component) {
            let sends = wasi_http::sends_requests(&component);
            let pre = self
                .http_linker
                .instantiate_pre(&component)
                .map_err(|e| anyhow::anyhow!("it exports wasi:http/incoming-handler but {e:#}"))?;
            Linked::http(pre, sends)?
        } else {
            self.check_contract(&component)?;
            let pre = self.linker.instantiate_pre(&component)?;
            Linked::new(pre).map_err(|e| {
                anyhow::anyhow!(
                    "its exports do not match the {WIT_PACKAGE}@{WIT_VERSION} world \
                     (nor is it a wasi:http/incoming-handler): {e:#}"
                )
            })?
        };
        self.pools.add(&pre.pool);
        Ok(Prepared { pre, hash, cached })
    }

    /// Compile, or load from the cache; also says whether the cache had it.
    fn compile(&self, wasm: &[u8], hash: &str) -> anyhow::Result<(Component, bool)> {
        let Some(dir) = &self.cache_dir else {
            return Ok((Component::new(&self.engine, wasm)?, false));
        };
        let mut settings = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut settings);
        let path = dir.join(format!("{hash}-{:016x}.cwasm", settings.finish()));
        if crate::private::only_mine(&path) {
            // SAFETY: the entry is a file only Berth's user can write, in an
            // owner-only folder, written only by this function from
            // wasmtime's own output; wasmtime also checks the engine
            // settings it was compiled for.
            match unsafe { Component::deserialize_file(&self.engine, &path) } {
                Ok(component) => return Ok((component, true)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring a bad compile cache entry")
                }
            }
        } else if path.symlink_metadata().is_ok() {
            tracing::warn!(
                path = %path.display(),
                "ignoring a compile cache entry that someone else could have written"
            );
        }
        let compiled = self.engine.precompile_component(wasm)?;
        crate::private::write(&path, &compiled)?;
        // SAFETY: these bytes come straight from `precompile_component`.
        Ok((
            unsafe { Component::deserialize(&self.engine, &compiled) }?,
            false,
        ))
    }

    /// Refuse components built against another version of `berth:plugin`
    /// with a message that says so, rather than a missing-import error.
    fn check_contract(&self, component: &Component) -> anyhow::Result<()> {
        let ty = component.component_type();
        for (name, _) in ty.imports(&self.engine) {
            if let Some(rest) = name.strip_prefix(&format!("{WIT_PACKAGE}/")) {
                let version = rest.split_once('@').map(|(_, v)| v).unwrap_or("(none)");
                if !semver_compatible(version, WIT_VERSION) {
                    anyhow::bail!(
                        "it was built against {WIT_PACKAGE}@{version} (import `{name}`); \
                         this host implements {WIT_PACKAGE}@{WIT_VERSION}"
                    );
                }
            }
        }
        Ok(())
    }

    /// A new instance of `pre` in a store of its own, ready for `call`.
    async fn instantiate(
        &self,
        pre: &Linked,
        call: CallCx,
        limits: &Limits,
    ) -> Result<Warm, CallError> {
        let stderr = Tail::new(STDERR_CAP);
        let mut wasi = WasiCtxBuilder::new();
        if pre.is_http() {
            // What a wasi:http component prints is its log.
            let plugin: Arc<str> = Arc::from(call.plugin.name.as_str());
            wasi.stdout(Tail::new(0).logging(plugin.clone(), "stdout"));
            wasi.stderr(stderr.clone().logging(plugin, "stderr"));
        } else {
            wasi.stderr(stderr.clone());
        }
        let wasi = wasi.build();
        let lane = LaneSlot::default();
        let moving = Arc::new(AtomicBool::new(false));
        let state = HostState {
            wasi,
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            outbound: wasi_http::Outbound(None),
            limits: Limiter {
                limits: StoreLimitsBuilder::new()
                    .memory_size(limits.memory_bytes as usize)
                    .trap_on_grow_failure(true)
                    .build(),
                memory: 0,
                grown: 0,
                lane: lane.clone(),
                lanes: self.lanes.clone(),
                plugin: Arc::from(call.plugin.name.as_str()),
                moving: moving.clone(),
            },
            timed_out: false,
            started: Instant::now(),
            lane,
            moving,
            call,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter_async(|s| &mut s.limits);
        // A call in the host is not using the CPU: its lane goes back.
        store.call_hook(|cx, hook| {
            if matches!(hook, CallHook::CallingHost) {
                cx.data().lane.clear();
            }
            Ok(())
        });
        // At every tick: trap once the call's deadline passed, else yield
        // and go on only with a lane, in turn with other long runners. The
        // yield is a real one even when a lane is free at once: a call that
        // never gave its worker thread back would starve the tasks queued
        // behind it there (tokio cannot steal a worker's next task, the
        // connection it just accepted, say), for as long as the call runs.
        let lanes = self.lanes.clone();
        store.epoch_deadline_callback(move |mut cx| {
            let now = Instant::now();
            if now >= cx.data().call.deadline {
                cx.data_mut().timed_out = true;
                return Ok(UpdateDeadline::Interrupt);
            }
            // A call that has not yet run a whole tick goes on as it is
            // (its first tick came early), unless its memory grew large.
            let state = cx.data();
            if now < state.started + EPOCH_TICK && state.limits.grown <= LANE_MEMORY {
                return Ok(UpdateDeadline::Continue(1));
            }
            // Long from here on: off the request workers, to the lanes.
            if !Lanes::on_a_lane_thread() {
                cx.data().moving.store(true, Ordering::Relaxed);
                return Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(tokio::task::yield_now()),
                ));
            }
            let slot = cx.data().lane.clone();
            slot.clear();
            let plugin: Arc<str> = Arc::from(cx.data().call.plugin.name.as_str());
            let lanes = lanes.clone();
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(async move {
                    tokio::task::yield_now().await;
                    slot.put(lanes.acquire(&plugin).await)
                }),
            ))
        });
        store.set_epoch_deadline(1);
        let instance = pre
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| CallError::Instantiate(format!("{e:#}")))?;
        Ok(Warm::new(store, instance, stderr))
    }

    /// Call `describe` on a fresh instance, never kept: it runs before
    /// the plugin's own limits and grants are known.
    pub async fn describe(
        &self,
        pre: &Linked,
        env: Arc<PluginEnv>,
        limits: &Limits,
    ) -> Result<Manifest, CallError> {
        let cx = CallCx::new(
            env,
            "describe".into(),
            None,
            Instant::now() + limits.deadline,
        );
        let called = self
            .call(pre, &pre.plugin()?.describe, cx, limits, false, ())
            .await?;
        Ok(called.value)
    }

    /// Call `handle`.
    pub async fn handle(
        &self,
        pre: &Linked,
        cx: CallCx,
        limits: &Limits,
        request: Request,
    ) -> Result<Called<Outcome>, CallError> {
        self.call(pre, &pre.plugin()?.handle, cx, limits, true, (request,))
            .await
    }

    /// Call `admin`.
    pub async fn admin(
        &self,
        pre: &Linked,
        cx: CallCx,
        limits: &Limits,
        args: Vec<String>,
    ) -> Result<Called<Result<String, String>>, CallError> {
        self.call(pre, &pre.plugin()?.admin, cx, limits, true, (args,))
            .await
    }

    /// Call `run-job`.
    pub async fn run_job(
        &self,
        pre: &Linked,
        cx: CallCx,
        limits: &Limits,
        kind: String,
        payload: Vec<u8>,
    ) -> Result<Called<JobResult>, CallError> {
        self.call(
            pre,
            &pre.plugin()?.run_job,
            cx,
            limits,
            true,
            (kind, payload),
        )
        .await
    }

    /// Call `export` of `pre` with `params`: on an idle instance of `pre`
    /// when `reusable` and the plugin's `instance_reuse` allow it, else on
    /// a new one.
    async fn call<P, R>(
        &self,
        pre: &Linked,
        export: &Export<P, (R,)>,
        cx: CallCx,
        limits: &Limits,
        reusable: bool,
        params: P,
    ) -> Result<Called<R>, CallError>
    where
        P: ComponentNamedList + Lower + Send + Sync + 'static,
        (R,): ComponentNamedList + Lift + Send + Sync + 'static,
    {
        let reusable = reusable && limits.instance_reuse > 1;
        let (mut warm, instantiate) = self.warm(pre, cx, limits, reusable).await?;
        let moving = warm.store.data().moving.clone();
        let func = export
            .get(&mut warm.store, &warm.instance)
            .ok_or_else(|| CallError::Instantiate("an export is missing".into()))?;
        // The epoch callback stops wasm at the deadline. Host calls that
        // may wait (key locks) are bounded by the same deadline themselves,
        // so no timer is armed per call on this hot path. A call that runs
        // long moves to the lanes (`Lanes::run_call`).
        let running = async move {
            let result = func.call_async(&mut warm.store, params).await;
            (warm, result)
        };
        let (mut warm, result) = self
            .lanes
            .run_call(&moving, running)
            .await
            .map_err(CallError::Trap)?;
        let state = warm.store.data_mut();
        state.lane.clear();
        let large = state.limits.grown > LANE_MEMORY;
        if result.is_err() {
            // A failed call's transaction rolls back now, its locks with it,
            // whenever its store is torn down.
            drop(state.call.txn.take());
        }
        let result = match result {
            Ok((value,)) => {
                let mut txn = state.call.txn.take();
                // A call that acted outside KV after its last KV operation
                // is pinned too: the host must not run it again.
                if let Some(txn) = txn.as_mut() {
                    if state.call.acted_outside.is_some() {
                        txn.pin();
                    }
                    txn.after_commit(std::mem::take(&mut state.call.deferred));
                }
                let opened = std::mem::take(&mut state.call.opened);
                let spent = retiring(warm, reusable, limits, &pre.pool, &self.lanes);
                return Ok(Called {
                    value,
                    txn,
                    opened,
                    instantiate,
                    spent: Spent(spent),
                });
            }
            Err(_) if state.timed_out => Err(CallError::Timeout(limits.deadline)),
            Err(trap) => Err(trapped(&mut warm, trap)),
        };
        if large {
            tear_down_on_a_lane(&self.lanes, warm.store);
        }
        result
    }

    /// An instance of `pre` for the call `cx`: an idle one when `reusable`
    /// and the pool has one, else a new one (and how long making it took).
    async fn warm(
        &self,
        pre: &Linked,
        cx: CallCx,
        limits: &Limits,
        reusable: bool,
    ) -> Result<(Warm, Option<Duration>), CallError> {
        let started = Instant::now();
        let (mut warm, instantiate) = match reusable.then(|| pre.pool.take()).flatten() {
            Some(mut warm) => {
                warm.stderr.clear();
                let state = warm.store.data_mut();
                state.call = cx;
                state.timed_out = false;
                warm.store.set_epoch_deadline(1);
                (warm, None)
            }
            None => {
                let warm = self.instantiate(pre, cx, limits).await?;
                (warm, Some(started.elapsed()))
            }
        };
        warm.calls += 1;
        let state = warm.store.data_mut();
        state.started = Instant::now();
        state.outbound = wasi_http::Outbound(Some(state.call.plugin.clone()));
        state.moving.store(false, Ordering::Relaxed);
        Ok((warm, instantiate))
    }

    /// Serve `request` with the wasi:http component `pre`: its response
    /// once the component sets it, its body streamed from the component
    /// while it writes it, within the call's deadline. The instance goes
    /// back to the pool (or is torn down) when the component's handler
    /// returns.
    pub async fn serve_http(
        &self,
        pre: &Linked,
        cx: CallCx,
        limits: &Limits,
        request: http::Request<Bytes>,
        tls: bool,
    ) -> Result<Served, CallError> {
        let Exports::Http { proxy, .. } = &pre.exports else {
            return Err(CallError::Instantiate("not a wasi:http component".into()));
        };
        let reusable = limits.instance_reuse > 1;
        let (mut warm, instantiate) = self.warm(pre, cx, limits, reusable).await?;
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let request = request.map(|body| {
            Full::new(body).map_err(
                |never: std::convert::Infallible| -> wasmtime_wasi_http::Error { match never {} },
            )
        });
        let state = warm.store.data_mut();
        let resources = state
            .http()
            .new_incoming_request(if tls { Scheme::Https } else { Scheme::Http }, request)
            .and_then(|req| Ok((req, state.http().new_response_outparam(sender)?)));
        let (req, out) = resources.map_err(|e| CallError::Instantiate(format!("{e:#}")))?;
        let handler = proxy
            .load(&mut warm.store, &warm.instance)
            .map_err(|e| CallError::Instantiate(format!("{e:#}")))?;
        let moving = warm.store.data().moving.clone();
        let lanes = self.lanes.clone();
        let pool = pre.pool.clone();
        let limits = *limits;
        let running = async move {
            let result = handler
                .wasi_http_incoming_handler()
                .call_handle(&mut warm.store, req, out)
                .await;
            (warm, result)
        };
        let task = tokio::spawn(
            async move {
                let (mut warm, result) = lanes
                    .run_call(&moving, running)
                    .await
                    .map_err(CallError::Trap)?;
                let state = warm.store.data_mut();
                state.lane.clear();
                let outcome = match result {
                    Ok(()) => Ok(()),
                    Err(_) if state.timed_out => Err(CallError::Timeout(limits.deadline)),
                    Err(trap) => Err(trapped(&mut warm, trap)),
                };
                let again = reusable && outcome.is_ok();
                Spent(retiring(warm, again, &limits, &pool, &lanes)).retire();
                outcome
            }
            .instrument(tracing::Span::current()),
        );
        match receiver.await {
            Ok(Ok(response)) => Ok(Served {
                response,
                instantiate,
            }),
            Ok(Err(code)) => Err(CallError::Trap(format!(
                "the component answered with an error: {code:?}"
            ))),
            // The component returned (or failed) without setting a response.
            Err(_) => match task.await {
                Ok(Err(e)) => Err(e),
                Ok(Ok(())) => Err(CallError::Trap(
                    "the component returned without setting a response".into(),
                )),
                Err(e) => Err(CallError::Trap(format!("the call's task failed: {e}"))),
            },
        }
    }
}

/// How a finished call's instance retires: back to `pool` if it may serve
/// again (`again`, calls left, and its memory within a quarter of its
/// cap), torn down on a lane if it grew large, else dropped later.
fn retiring(
    warm: Warm,
    again: bool,
    limits: &Limits,
    pool: &Arc<Pool>,
    lanes: &Arc<Lanes>,
) -> Retiring {
    let state = warm.store.data();
    let again = again
        && warm.calls < limits.instance_reuse
        && state.limits.memory as u64 <= limits.memory_bytes / 4;
    if again {
        return Retiring::Again {
            warm,
            pool: pool.clone(),
            keep: limits.max_concurrent as usize,
        };
    }
    if state.limits.grown > LANE_MEMORY {
        tear_down_on_a_lane(lanes, warm.store);
        return Retiring::Gone;
    }
    Retiring::Done(warm.store)
}

/// Tear down a store whose memory grew past [`LANE_MEMORY`] in its
/// plugin's turn on a CPU lane (`Lanes::run`): giving back that many pages
/// is the kernel's work, done for the plugin.
fn tear_down_on_a_lane(lanes: &Arc<Lanes>, store: Store<HostState>) {
    let lanes = lanes.clone();
    let plugin: Arc<str> = Arc::from(store.data().call.plugin.name.as_str());
    tokio::spawn(async move { lanes.run(&plugin, move || drop(store)).await });
}

/// A trap in `warm`'s call, logged with what the plugin wrote to stderr.
fn trapped(warm: &mut Warm, trap: wasmtime::Error) -> CallError {
    let output = warm.stderr.take();
    let plugin = &warm.store.data().call.plugin.name;
    tracing::warn!(plugin = %plugin, stderr = %output, "plugin trapped: {trap:#}");
    let reason = match trap.downcast_ref::<wasmtime::Trap>() {
        Some(t) => t.to_string(),
        None => format!("{trap:#}"),
    };
    CallError::Trap(reason)
}

/// What a wasi:http component answered.
pub struct Served {
    pub response: http::Response<HyperOutgoingBody>,
    /// How long instantiation took (none for a reused instance).
    pub instantiate: Option<Duration>,
}

/// A linked plugin version: what each call instantiates, and the exports
/// Berth calls, found and type-checked once here rather than on every
/// instantiation.
#[derive(Clone)]
pub struct Linked {
    pre: InstancePre<HostState>,
    exports: Exports,
    /// Instances of this version kept between calls.
    pool: Arc<Pool>,
}

/// What Berth calls in a linked component.
#[derive(Clone)]
enum Exports {
    /// A component of the `berth:plugin` world.
    Plugin(PluginExports),
    /// A wasi:http handler; `sends` when it imports the outgoing handler.
    Http { proxy: ProxyIndices, sends: bool },
}

/// The exports of the `berth:plugin` world.
#[derive(Clone)]
struct PluginExports {
    describe: Export<(), (Manifest,)>,
    handle: Export<(Request,), (Outcome,)>,
    admin: Export<(Vec<String>,), (Result<String, String>,)>,
    run_job: Export<(String, Vec<u8>), (JobResult,)>,
}

/// What `run-job` returns: done, or why not.
type JobResult = Result<(), String>;

impl Linked {
    /// Instances of this version kept idle for later calls now.
    pub fn idle_instances(&self) -> usize {
        self.pool.len()
    }

    /// Whether this is a wasi:http component rather than a Berth plugin.
    pub fn is_http(&self) -> bool {
        matches!(self.exports, Exports::Http { .. })
    }

    /// Whether this wasi:http component may send requests of its own.
    pub fn sends_requests(&self) -> bool {
        matches!(self.exports, Exports::Http { sends: true, .. })
    }

    fn new(pre: InstancePre<HostState>) -> anyhow::Result<Linked> {
        Ok(Linked {
            exports: Exports::Plugin(PluginExports {
                describe: Export::find(&pre, "describe")?,
                handle: Export::find(&pre, "handle")?,
                admin: Export::find(&pre, "admin")?,
                run_job: Export::find(&pre, "run-job")?,
            }),
            pool: Arc::default(),
            pre,
        })
    }

    fn http(pre: InstancePre<HostState>, sends: bool) -> anyhow::Result<Linked> {
        Ok(Linked {
            exports: Exports::Http {
                proxy: ProxyIndices::new(&pre)?,
                sends,
            },
            pool: Arc::default(),
            pre,
        })
    }

    /// The Berth plugin exports, or the error of calling one on a
    /// wasi:http component.
    fn plugin(&self) -> Result<&PluginExports, CallError> {
        match &self.exports {
            Exports::Plugin(plugin) => Ok(plugin),
            Exports::Http { .. } => Err(CallError::Instantiate(
                "a wasi:http component has no Berth plugin exports".into(),
            )),
        }
    }
}

/// An exported function, type-checked as taking `P` and returning `R`.
struct Export<P, R> {
    index: ComponentExportIndex,
    signature: PhantomData<fn(P) -> R>,
}

impl<P, R> Clone for Export<P, R> {
    fn clone(&self) -> Self {
        Export {
            index: self.index,
            signature: PhantomData,
        }
    }
}

impl<P, R> Export<P, R>
where
    P: ComponentNamedList + Lower + Send + Sync,
    R: ComponentNamedList + Lift + Send + Sync + 'static,
{
    fn find(pre: &InstancePre<HostState>, name: &str) -> anyhow::Result<Self> {
        let (item, index) = pre
            .component()
            .get_export(None, name)
            .ok_or_else(|| anyhow::anyhow!("no export `{name}`"))?;
        let ComponentItem::ComponentFunc(func) = item else {
            anyhow::bail!("export `{name}` is not a function");
        };
        func.typecheck::<P, R>(&pre.instance_type())
            .map_err(|e| anyhow::anyhow!("export `{name}`: {e:#}"))?;
        Ok(Export {
            index,
            signature: PhantomData,
        })
    }

    /// This export of `instance`, ready to call.
    fn get(&self, store: &mut Store<HostState>, instance: &Instance) -> Option<TypedFunc<P, R>> {
        let func = instance.get_func(&mut *store, self.index)?;
        // SAFETY: `find` type-checked this export as taking `P` and
        // returning `R`, and `instance` comes from the same component.
        Some(unsafe { TypedFunc::new_unchecked(func) })
    }
}

/// A compiled and linked plugin version.
pub struct Prepared {
    pub pre: Linked,
    /// SHA-256 of the wasm file, hex.
    pub hash: String,
    /// Whether the compiled code came from the on-disk cache.
    pub cached: bool,
}

/// Whether a plugin built against WIT version `built` links with this
/// host's `ours`, by semver (as wasmtime's linker matches versioned
/// imports): the same major version, and for 0.x the same minor.
fn semver_compatible(built: &str, ours: &str) -> bool {
    let parse = |v: &str| -> Option<(u64, u64)> {
        let mut parts = v.split(['.', '-', '+']);
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    };
    match (parse(built), parse(ours)) {
        (Some((0, a)), Some((0, b))) => a == b,
        (Some((a, _)), Some((b, _))) => a == b,
        _ => false,
    }
}

/// Read a wasm file (helper for the loader and `plugins check`).
pub fn read_wasm(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    /// Every call resets its instance's linear memory. Without the
    /// `PAGEMAP_SCAN` ioctl (Linux before 6.7) that reset rewrites all of
    /// it, so the plugins are linked with a 256 KiB stack rather than
    /// rustc's 1 MiB (`.cargo/config.toml` of each plugin workspace, which
    /// build.rs must run cargo beside to pick up).
    #[test]
    fn wit_versions_match_by_semver() {
        assert!(super::semver_compatible("0.1.0", "0.1.0"));
        assert!(super::semver_compatible("0.1.3", "0.1.0"));
        assert!(super::semver_compatible("0.1.0-rc.1", "0.1.2"));
        assert!(!super::semver_compatible("0.2.0", "0.1.0"));
        assert!(!super::semver_compatible("1.0.0", "0.1.0"));
        assert!(super::semver_compatible("1.4.0", "1.0.2"));
        assert!(!super::semver_compatible("(none)", "0.1.0"));
    }

    #[test]
    fn bundled_plugins_start_with_a_small_linear_memory() {
        const WASM_PAGE: u64 = 64 << 10;
        for (file, bytes) in crate::bundled::BUNDLED {
            let mut memories = 0;
            for payload in wasmparser::Parser::new(0).parse_all(bytes) {
                if let wasmparser::Payload::MemorySection(section) = payload.unwrap() {
                    for memory in section {
                        let initial = memory.unwrap().initial * WASM_PAGE;
                        assert!(
                            initial < 1 << 20,
                            "{file} starts with {} KiB of linear memory: the 1 MiB default stack?",
                            initial >> 10
                        );
                        memories += 1;
                    }
                }
            }
            assert!(memories > 0, "{file}: no linear memory found");
        }
    }
}
