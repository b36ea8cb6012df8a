//! CPU lanes: fairness between plugins when some run long, and between
//! short requests and everything long.
//!
//! Wasm runs on the async runtime's worker threads and yields at every
//! epoch tick. Yielding alone is not fair: eight tight loops of one plugin
//! keep both workers of a 2-core machine busy, and another plugin's short
//! calls wait behind their slices. So a call that keeps running wasm
//! across a tick moves to the lanes: a runtime of its own, with fewer
//! threads than the request workers (half, at least one), at a lower OS
//! priority (nice [`LANE_NICENESS`]), where it must hold a lane to go on.
//! Long runners share the lanes, handed out round-robin by plugin, so one
//! plugin's many loops do not crowd out another's few; and while requests
//! keep the workers busy, the kernel gives them the CPU first, so long
//! runners take what is left (on an idle machine they run at full
//! speed). A call gives its lane back whenever it calls the host (a kv
//! read, a Docker call: it is not using the CPU then), and at its next
//! tick asks again; a call that never runs a whole tick never leaves its
//! worker nor meets a lane. CPU work the host does for a call runs the
//! same way: a password hash (`caps::crypto`), and a call's memory growing
//! past a few MiB and its teardown (the kernel's page faults: `runtime`).

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// The lanes of one runtime.
pub struct Lanes {
    queue: Mutex<Queue>,
    /// Where long calls and the host's heavy work run (None once dropped).
    runtime: Option<tokio::runtime::Runtime>,
}

/// How much lower than the request workers' the OS priority of the lanes'
/// threads is (a nice value).
const LANE_NICENESS: i32 = 5;

thread_local! {
    /// Whether this thread is one of the lanes' runtime.
    static LANE_THREAD: Cell<bool> = const { Cell::new(false) };
}

#[derive(Default)]
struct Queue {
    free: usize,
    /// Plugins with waiting calls, in turn order.
    turn: VecDeque<Arc<str>>,
    waiting: HashMap<Arc<str>, VecDeque<oneshot::Sender<Lane>>>,
}

/// One lane, held until dropped.
pub struct Lane {
    /// None once handed back by hand (never released twice).
    lanes: Option<Arc<Lanes>>,
}

/// Where a call keeps its lane between ticks: the call's epoch callback
/// puts it there, and it is dropped when the call enters the host, at its
/// next tick, and when it ends.
#[derive(Clone, Default)]
pub struct LaneSlot(Arc<Mutex<Option<Lane>>>);

impl LaneSlot {
    pub fn put(&self, lane: Lane) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(lane);
    }

    /// Whether a lane is held.
    pub fn holds(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Give the lane back, if one is held.
    pub fn clear(&self) {
        let lane = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(lane);
    }
}

impl Lanes {
    /// `count` lanes (at least one), and their runtime.
    pub fn new(count: usize) -> Arc<Lanes> {
        let count = count.max(1);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(count)
            .thread_name("berth-lane")
            .on_thread_start(|| {
                LANE_THREAD.with(|t| t.set(true));
                // SAFETY: setpriority has no memory preconditions; with
                // PRIO_PROCESS and 0, Linux sets the calling thread's nice.
                unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, LANE_NICENESS) };
            })
            .enable_all()
            .build();
        let runtime = match runtime {
            Ok(runtime) => Some(runtime),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the lanes' runtime; long calls stay on the request workers");
                None
            }
        };
        Arc::new(Lanes {
            queue: Mutex::new(Queue {
                free: count,
                ..Queue::default()
            }),
            runtime,
        })
    }

    /// Whether the calling thread is one of the lanes'.
    pub fn on_a_lane_thread() -> bool {
        LANE_THREAD.with(Cell::get)
    }

    /// Run `call`, a plugin call, here until it asks to move (`moving`
    /// set when it has run a whole tick, or its memory grew large), then
    /// on the lanes' runtime. Dropping the returned future stops the call
    /// wherever it runs. Err if it panicked there.
    pub async fn run_call<F>(
        &self,
        moving: &std::sync::atomic::AtomicBool,
        call: F,
    ) -> Result<F::Output, String>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        use std::sync::atomic::Ordering::Relaxed;
        use std::task::Poll;
        let mut call = Box::pin(call);
        let Some(runtime) = &self.runtime else {
            return Ok(call.await);
        };
        let here = std::future::poll_fn(|cx| match call.as_mut().poll(cx) {
            Poll::Ready(done) => Poll::Ready(Some(done)),
            Poll::Pending if moving.load(Relaxed) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        })
        .await;
        if let Some(done) = here {
            return Ok(done);
        }
        let mut moved = AbortOnDrop(runtime.spawn(call));
        match (&mut moved.0).await {
            Ok(done) => Ok(done),
            Err(e) => Err(format!("the call failed on a lane: {e}")),
        }
    }

    /// Run the host's CPU-heavy `work` for a call of `plugin` (a password
    /// hash, tearing down a large memory) in that plugin's turn on a lane,
    /// on a thread of the lanes' runtime; None if the work panicked.
    pub async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        plugin: &Arc<str>,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let lane = self.acquire(plugin).await;
        let done = match &self.runtime {
            Some(runtime) => runtime.spawn_blocking(work).await.ok(),
            None => tokio::task::spawn_blocking(work).await.ok(),
        };
        drop(lane);
        done
    }

    /// Half the worker threads, at least one.
    pub fn for_workers(workers: usize) -> Arc<Lanes> {
        Lanes::new(workers / 2)
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A lane for a call of `plugin`, when its turn comes.
    pub async fn acquire(self: &Arc<Self>, plugin: &Arc<str>) -> Lane {
        let wait = {
            let mut queue = self.queue();
            if queue.free > 0 && queue.turn.is_empty() {
                queue.free -= 1;
                return Lane {
                    lanes: Some(self.clone()),
                };
            }
            let (send, wait) = oneshot::channel();
            let queue = &mut *queue;
            let mine = queue.waiting.entry(plugin.clone()).or_default();
            if mine.is_empty() {
                queue.turn.push_back(plugin.clone());
            }
            mine.push_back(send);
            wait
        };
        match wait.await {
            Ok(lane) => lane,
            // The lanes never drop a waiter; a closed channel cannot happen,
            // but a lane of one's own is the safe answer if it did.
            Err(_) => Lane {
                lanes: Some(self.clone()),
            },
        }
    }

    /// A lane came free: hand it to the next plugin in turn, or keep it.
    fn release(self: &Arc<Self>) {
        let mut queue = self.queue();
        while let Some(plugin) = queue.turn.pop_front() {
            let Some(mine) = queue.waiting.get_mut(&plugin) else {
                continue;
            };
            let next = mine.pop_front();
            if mine.is_empty() {
                queue.waiting.remove(&plugin);
            } else {
                queue.turn.push_back(plugin);
            }
            let Some(next) = next else { continue };
            let lane = Lane {
                lanes: Some(self.clone()),
            };
            match next.send(lane) {
                Ok(()) => return,
                // That call was cancelled: the lane came back to be handed
                // on here, not released by its drop.
                Err(mut lane) => lane.lanes = None,
            }
        }
        queue.free += 1;
    }

    /// Lanes free now (tests).
    #[cfg(test)]
    fn free(&self) -> usize {
        self.queue().free
    }
}

/// A task on the lanes' runtime, aborted if its awaiter goes away (the
/// request was dropped): a moved call stops as it would have in place.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Drop for Lanes {
    fn drop(&mut self) {
        // Dropped within the request runtime: its threads may not block.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        if let Some(lanes) = self.lanes.take() {
            lanes.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lanes_go_round_robin_by_plugin() {
        let lanes = Lanes::new(1);
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let held = lanes.acquire(&a).await;
        let (order_tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        // Three calls of `a` queue before one of `b`.
        for (i, plugin) in [&a, &a, &a, &b].into_iter().enumerate() {
            let (shared, plugin, order_tx) = (lanes.clone(), plugin.clone(), order_tx.clone());
            tasks.push(tokio::spawn(async move {
                let lane = shared.acquire(&plugin).await;
                order_tx.send(format!("{plugin}{i}")).unwrap();
                drop(lane);
            }));
            while lanes
                .queue()
                .waiting
                .values()
                .map(VecDeque::len)
                .sum::<usize>()
                <= i
            {
                tokio::task::yield_now().await;
            }
        }
        drop(held);
        for task in tasks {
            task.await.unwrap();
        }
        let mut got = Vec::new();
        while let Ok(name) = order.try_recv() {
            got.push(name);
        }
        assert_eq!(
            got,
            ["a0", "b3", "a1", "a2"],
            "b does not wait for all of a"
        );
        assert_eq!(lanes.free(), 1);
    }

    #[tokio::test]
    async fn a_cancelled_waiter_does_not_lose_the_lane() {
        let lanes = Lanes::new(1);
        let a: Arc<str> = Arc::from("a");
        let held = lanes.acquire(&a).await;
        let waiter = {
            let (lanes, a) = (lanes.clone(), a.clone());
            tokio::spawn(async move { drop(lanes.acquire(&a).await) })
        };
        while lanes.queue().turn.is_empty() {
            tokio::task::yield_now().await;
        }
        waiter.abort();
        let _ = waiter.await;
        drop(held);
        assert_eq!(lanes.free(), 1);
        drop(lanes.acquire(&a).await);
        assert_eq!(lanes.free(), 1);
    }
}
