//! The memory budget for request bodies: every body read into memory (a
//! plugin reads its request's body whole) holds its bytes against one
//! budget for the whole server, and against a share of it per client
//! address, until its call ends. Without it, bodies read at once are
//! bounded only by connections x streams x each plugin's `max_body_kib`:
//! one HTTP/2 client sending 150 bodies of 4 MiB, all but the last byte,
//! held gigabytes for as long as the body timeout let it.
//!
//! A body that does not fit is refused at once (dispatch answers 503 with
//! `Retry-After`), not kept waiting for room: a waiting HTTP/2 stream
//! would keep what it had received in the connection's shared window, and
//! starve the bodies on that connection that are being read. A client
//! holding its share is refused while others' bodies go on; a client
//! holding nothing may always start one body the whole budget has room
//! for, so a body larger than a share is never refused for that alone.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use crate::metrics::Metrics;

/// The budget of one server.
pub struct BodyBudget {
    total: u64,
    per_client: u64,
    held: Mutex<Held>,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Held {
    total: u64,
    clients: HashMap<IpAddr, u64>,
}

/// Bytes one body holds against the budget; given back when dropped.
pub struct Reserved {
    budget: Arc<BodyBudget>,
    client: IpAddr,
    bytes: u64,
}

impl BodyBudget {
    /// A budget of `total` bytes, a quarter of it per client address.
    pub fn new(total: u64, metrics: Arc<Metrics>) -> Arc<BodyBudget> {
        Arc::new(BodyBudget {
            total,
            per_client: total / 4,
            held: Mutex::new(Held::default()),
            metrics,
        })
    }

    /// Nothing held yet, for a body from `client`.
    pub fn start(self: &Arc<Self>, client: IpAddr) -> Reserved {
        Reserved {
            budget: self.clone(),
            client: client.to_canonical(),
            bytes: 0,
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Add `more` bytes to `r` if they fit now.
    fn try_grow(&self, r: &mut Reserved, more: u64) -> bool {
        let mut held = self.held();
        let mine = held.clients.get(&r.client).copied().unwrap_or(0);
        let fits = held.total + more <= self.total && (mine == 0 || mine + more <= self.per_client);
        if fits {
            held.total += more;
            *held.clients.entry(r.client).or_insert(0) += more;
            r.bytes += more;
            self.metrics.body_bytes.store(held.total, Relaxed);
        }
        fits
    }

    fn give_back(&self, client: IpAddr, bytes: u64) {
        if bytes == 0 {
            return;
        }
        {
            let mut held = self.held();
            held.total = held.total.saturating_sub(bytes);
            if let Some(mine) = held.clients.get_mut(&client) {
                *mine = mine.saturating_sub(bytes);
                if *mine == 0 {
                    held.clients.remove(&client);
                }
            }
            self.metrics.body_bytes.store(held.total, Relaxed);
        }
    }
}

impl Reserved {
    /// Hold `more` bytes too, if they fit now.
    #[must_use]
    pub fn grow(&mut self, more: u64) -> bool {
        self.budget.clone().try_grow(self, more)
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.budget.give_back(self.client, self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn bodies_fit_the_budget_and_clients_keep_to_their_share() {
        let budget = BodyBudget::new(400, Arc::default());
        let mut a = budget.start(ip(1));
        assert!(a.grow(100));
        // A second body of the same client would pass its share (100).
        let mut a2 = budget.start(ip(1));
        assert!(!a2.grow(1), "over the client's share");
        // Another client's body goes on.
        let mut b = budget.start(ip(2));
        assert!(b.grow(100));
        // A client holding nothing may start a body larger than a share.
        let mut c = budget.start(ip(3));
        assert!(c.grow(200));
        assert_eq!(budget.held().total, 400);
        // Full: a new client is refused until something is given back.
        let mut d = budget.start(ip(4));
        assert!(!d.grow(50));
        drop(c);
        assert!(d.grow(50));
        assert_eq!(d.bytes(), 50);
        drop((a, a2, b, d));
        let held = budget.held();
        assert_eq!(held.total, 0);
        assert!(held.clients.is_empty());
    }
}
