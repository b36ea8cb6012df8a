//! Attempts at secrets (logins, one-time codes, password checks), counted
//! per client address and per account *before* the secret is checked, so
//! that guesses sent at once get no more checks than guesses sent one
//! after another. [`Login`] is the helper every surface uses.
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
//! [`Login::begin`] takes a slot on both counters (the host's
//! `crypto.take-attempt`, atomic across concurrent calls) or answers
//! [`LoginError::Throttled`] without anything being checked. A right
//! secret gives its slots back ([`Login::verify_password`] does it; after
//! checking a one-time code, call [`Login::passed`]); a wrong one, or a
//! call that ends any other way, keeps them: only failures count. So at
//! most `limit` wrong secrets are checked per window, in any order and at
//! any concurrency. A window starts at the first attempt a counter counts
//! and lasts [`Limits::window_secs`].
//!
//! The counters are the host's, not KV: they do not grow the store, they
//! are forgotten when their window ends (and when Berth restarts), and a
//! call that traps still counted. The client address is the host's: behind
//! a reverse proxy listed in `[server] trusted_proxies` it is the address
//! the proxy forwarded for.

use crate::{Error, Request, Response, crypto};

/// Failed attempts allowed per window.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From one client address, whichever accounts it tries.
    pub per_client: u32,
    /// For one account, from whichever addresses. Higher than
    /// `per_client`, since anyone can spend it to lock the account out
    /// for the rest of the window.
    pub per_user: u32,
    /// The window, in seconds.
    pub window_secs: u32,
}

impl Limits {
    /// The plugin's settings `login_attempts_per_minute` (per client,
    /// default 5) and `login_attempts_per_user_per_minute` (default 10),
    /// per minute. A setting that does not parse keeps its default.
    pub fn from_config() -> Limits {
        let setting = |key, default| crate::config::get_or(key, default).unwrap_or(default);
        Limits {
            per_client: setting("login_attempts_per_minute", 5),
            per_user: setting("login_attempts_per_user_per_minute", 10),
            window_secs: 60,
        }
    }
}

/// Why an attempt may not go on.
#[derive(Debug)]
pub enum LoginError {
    /// The client or the account is at its limit: answer 429.
    Throttled,
    /// The host failed.
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

/// One attempt, counted against its client and its account.
pub struct Login {
    client: String,
    user: String,
    passed: bool,
}

/// Longest account name kept in a counter's key; longer names share the
/// counter of their first this-many bytes (at worst, a stricter limit).
const NAME_IN_KEY: usize = 200;

impl Login {
    /// Begin an attempt on `user` (compared case-insensitively) by the
    /// request's client, on counters under `prefix`: it takes a slot on
    /// both, or is [`LoginError::Throttled`] when either is at its limit.
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
            client: format!("{prefix}attempts/client/{}", client_ip(req)),
            user: format!("{prefix}attempts/user/{name}"),
            passed: false,
        };
        let counters = [
            (login.client.as_str(), limits.per_client),
            (login.user.as_str(), limits.per_user),
        ];
        if !crypto::take_attempt(&counters, limits.window_secs)? {
            return Err(LoginError::Throttled);
        }
        Ok(login)
    }

    /// Check `password` against the account's stored hash (None: no such
    /// account, which costs the same time as a wrong password, so timing
    /// does not tell which accounts exist). A match gives the slots back.
    pub fn verify_password(&mut self, password: &str, hash: Option<&str>) -> Result<bool, Error> {
        let ok = match hash {
            Some(hash) => crypto::verify_password(password, hash)?,
            None => {
                crypto::hash_password(password)?;
                false
            }
        };
        if ok {
            self.passed()?;
        }
        Ok(ok)
    }

    /// The secret was right (a one-time code, say): give the slots back.
    /// Once per attempt; later calls do nothing.
    pub fn passed(&mut self) -> Result<(), Error> {
        if !std::mem::replace(&mut self.passed, true) {
            crypto::attempt_passed(&[&self.client, &self.user])?;
        }
        Ok(())
    }
}

/// The client's IP address, without the port.
pub fn client_ip(req: &Request) -> &str {
    let client = req.client();
    client.rsplit_once(':').map_or(client, |(ip, _)| ip)
}
