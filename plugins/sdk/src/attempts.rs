//! Failed logins, counted in KV per client address and per account and
//! wall-clock minute, to refuse whoever keeps failing. [`Login`] is the
//! helper every surface's login uses; [`Attempts`] is the counter under it.
//!
//! ```no_run
//! # use berth_sdk::attempts::{Limits, Login};
//! # use berth_sdk::{HttpResult, Request, Response};
//! # fn stored_hash(user: &str) -> Option<String> { None }
//! # fn login(req: &Request, user: &str, password: &str) -> HttpResult {
//! let mut login = Login::begin(req, "", user, Limits::from_config()).map_err(|e| {
//!     e.respond(
//!         || Response::error(429, "too many failed logins; try again in a minute"),
//!         Response::from,
//!     )
//! })?;
//! if !login.verify_password(password, stored_hash(user).as_deref())? {
//!     return Err(Response::error(401, "wrong user or password"));
//! }
//! # Ok(Response::json(200, &"signed in"))
//! # }
//! ```
//!
//! A failure is stored by the call that fails, so answer it with a
//! response (not a trap) for the count to stick. The client address is
//! the host's: behind a reverse proxy listed in `[server] trusted_proxies`
//! it is the address the proxy forwarded for.

use serde::{Deserialize, Serialize};

use crate::{Error, Request, Response, kv};

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

/// Failed logins allowed per minute.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From one client address, whichever accounts it tries.
    pub per_client: u32,
    /// For one account, from whichever addresses. Higher than
    /// `per_client`, since anyone can spend it to lock the account out
    /// for the rest of the minute.
    pub per_user: u32,
}

impl Limits {
    /// The plugin's settings `login_attempts_per_minute` (per client,
    /// default 5) and `login_attempts_per_user_per_minute` (default 10).
    /// A setting that does not parse keeps its default.
    pub fn from_config() -> Limits {
        let setting = |key, default| crate::config::get_or(key, default).unwrap_or(default);
        Limits {
            per_client: setting("login_attempts_per_minute", 5),
            per_user: setting("login_attempts_per_user_per_minute", 10),
        }
    }
}

/// Why a login may not go on.
#[derive(Debug)]
pub enum LoginError {
    /// The client or the account failed too often this minute: answer 429.
    Throttled,
    /// The host failed (storage, a conflict).
    Host(Error),
}

impl LoginError {
    /// The answer in the surface's format: `throttled()` for a 429, or
    /// `host(e)` for a host failure.
    pub fn respond(
        self,
        throttled: impl FnOnce() -> Response,
        host: impl FnOnce(Error) -> Response,
    ) -> Response {
        match self {
            LoginError::Throttled => throttled(),
            LoginError::Host(e) => host(e),
        }
    }
}

impl From<Error> for LoginError {
    fn from(e: Error) -> Self {
        LoginError::Host(e)
    }
}

/// One login attempt, counted against its client and its account.
pub struct Login {
    client: Attempts,
    user: Attempts,
}

/// Longest account name kept in a counter's key; longer names share the
/// counter of their first this-many bytes (at worst, a stricter limit).
const NAME_IN_KEY: usize = 200;

impl Login {
    /// Begin a login of `user` (compared case-insensitively) by the
    /// request's client, with counters under `prefix` in KV. Throttled
    /// when either has failed `limits` times this minute.
    pub fn begin(
        req: &Request,
        prefix: &str,
        user: &str,
        limits: Limits,
    ) -> Result<Login, LoginError> {
        let mut name = user.to_lowercase();
        if name.len() > NAME_IN_KEY {
            let mut cut = NAME_IN_KEY;
            while !name.is_char_boundary(cut) {
                cut -= 1;
            }
            name.truncate(cut);
        }
        let login = Login {
            client: Attempts::load(
                &format!("{prefix}attempts/client/{}", client_ip(req)),
                limits.per_client,
            )?,
            user: Attempts::load(&format!("{prefix}attempts/user/{name}"), limits.per_user)?,
        };
        if login.client.exceeded() || login.user.exceeded() {
            return Err(LoginError::Throttled);
        }
        Ok(login)
    }

    /// Check `password` against the account's stored hash (None: no such
    /// account, which costs the same time as a wrong password, so timing
    /// does not tell which accounts exist). A mismatch is recorded.
    pub fn verify_password(&mut self, password: &str, hash: Option<&str>) -> Result<bool, Error> {
        let ok = match hash {
            Some(hash) => crate::crypto::verify_password(password, hash)?,
            None => {
                crate::crypto::hash_password(password)?;
                false
            }
        };
        if !ok {
            self.failed()?;
        }
        Ok(ok)
    }

    /// Record a failed attempt (a wrong one-time code, say).
    pub fn failed(&mut self) -> Result<(), Error> {
        self.client.fail()?;
        self.user.fail()
    }
}

/// The client's IP address, without the port.
pub fn client_ip(req: &Request) -> &str {
    let client = req.client();
    client.rsplit_once(':').map_or(client, |(ip, _)| ip)
}
