//! CPU lanes: fairness between plugins when some run long.
//!
//! Wasm runs on the async runtime's worker threads and yields at every
//! epoch tick. Yielding alone is not fair: eight tight loops of one plugin
//! keep both workers of a 2-core machine busy, and another plugin's short
//! calls wait behind their slices. So a call that keeps running wasm
//! across a tick must hold a lane to go on, and there are fewer lanes than
//! workers (half, at least one): long runners share the lanes, and the
//! other workers stay free for everyone's short calls. Lanes are handed
//! out round-robin by plugin, so one plugin's many loops do not crowd out
//! another's few. A call gives its lane back whenever it calls the host
//! (a kv read, a Docker call: it is not using the CPU then), and at its
//! next tick asks again; a call that never runs a whole tick never meets
//! a lane at all. CPU work the host does for a call takes a lane too: a
//! password hash (`caps::crypto`), and a call's memory growing past a few
//! MiB (the kernel's page faults, which ticks see late: `runtime`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// The lanes of one runtime.
pub struct Lanes {
    queue: Mutex<Queue>,
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
    /// `count` lanes (at least one).
    pub fn new(count: usize) -> Arc<Lanes> {
        Arc::new(Lanes {
            queue: Mutex::new(Queue {
                free: count.max(1),
                ..Queue::default()
            }),
        })
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
