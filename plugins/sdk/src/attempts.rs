//! Counting failed attempts (logins, say) per key and wall-clock minute,
//! in KV, to refuse a client that keeps failing.
//!
//! ```no_run
//! # use berth_sdk::attempts::{Attempts, client_ip};
//! # use berth_sdk::{HttpResult, Request, Response};
//! # fn login(req: &Request, password_ok: bool) -> HttpResult {
//! let mut attempts = Attempts::load(&format!("attempts/{}", client_ip(req)), 5)?;
//! if attempts.exceeded() {
//!     return Err(Response::error(429, "too many failed logins; try again in a minute"));
//! }
//! if !password_ok {
//!     attempts.fail()?;
//!     return Err(Response::error(401, "wrong password"));
//! }
//! # Ok(Response::json(200, &"signed in"))
//! # }
//! ```
//!
//! The failure is stored by the call that fails, so answer the failure
//! with a response (not a trap) for the count to stick.

use serde::{Deserialize, Serialize};

use crate::{Error, Request, kv};

#[derive(Serialize, Deserialize, Default)]
struct Count {
    minute: u64,
    failures: u32,
}

/// Failures recorded under one key in the current minute.
pub struct Attempts {
    key: String,
    count: Count,
    limit: u32,
}

impl Attempts {
    /// Read the failures under `key`; more than `limit - 1` in this minute
    /// makes [`Attempts::exceeded`] true.
    pub fn load(key: &str, limit: u32) -> Result<Attempts, Error> {
        let minute = crate::time::now_secs() / 60;
        let count = kv::get_json::<Count>(key)?
            .filter(|c| c.minute == minute)
            .unwrap_or(Count {
                minute,
                failures: 0,
            });
        Ok(Attempts {
            key: key.to_string(),
            count,
            limit,
        })
    }

    /// Has the limit been reached this minute?
    pub fn exceeded(&self) -> bool {
        self.count.failures >= self.limit
    }

    /// Record one more failure.
    pub fn fail(&mut self) -> Result<(), Error> {
        self.count.failures += 1;
        kv::set_json(&self.key, &self.count)
    }
}

/// The client's IP address, without the port.
pub fn client_ip(req: &Request) -> &str {
    let client = req.client();
    client.rsplit_once(':').map_or(client, |(ip, _)| ip)
}
