//! Durable key-value storage, namespaced to this plugin.
//!
//! Every call (request, job, admin command) is one serializable
//! transaction: its writes are visible to its later reads, durable before
//! the response is sent, and discarded if the plugin traps or times out;
//! concurrent calls behave as if they ran one at a time. The host locks
//! what a call reads and writes until the call ends (see the `kv` WIT).
//!
//! When two calls would wait for each other, one of them gets
//! [`Error::Conflict`] from the kv call that met the other, and its
//! transaction is rolled back. The SDK then runs the handler (or job, or
//! admin command) again from the start, in a fresh transaction, unless the
//! call already acted outside KV (a Docker change, a Dokku command, an
//! outbound request, an event): then the handler's own answer stands, which
//! should be a 503 with `Retry-After` (see [`crate::host_failure`]).

use std::cell::Cell;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::host::kv as raw;

pub use raw::Page;

/// Read a key's bytes.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, Error> {
    noted(raw::get(key))
}

/// Read a key as UTF-8 text (invalid UTF-8 is replaced).
pub fn get_string(key: &str) -> Result<Option<String>, Error> {
    Ok(noted(raw::get(key))?.map(|v| String::from_utf8_lossy(&v).into_owned()))
}

/// Read a key holding JSON into `T`.
pub fn get_json<T: DeserializeOwned>(key: &str) -> Result<Option<T>, Error> {
    match noted(raw::get(key))? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Invalid(format!("value at `{key}` is not the expected JSON: {e}"))),
    }
}

/// Write bytes.
pub fn set(key: &str, value: &[u8]) -> Result<(), Error> {
    noted(raw::set(key, value))
}

/// Write `value` as JSON.
pub fn set_json<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<(), Error> {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| Error::Invalid(format!("cannot serialise value for `{key}`: {e}")))?;
    noted(raw::set(key, &bytes))
}

/// Delete a key; returns whether it existed.
pub fn delete(key: &str) -> Result<bool, Error> {
    noted(raw::delete(key))
}

/// Atomically add `delta` to the integer at `key` (missing = 0); returns
/// the new value.
pub fn increment(key: &str, delta: i64) -> Result<i64, Error> {
    noted(raw::increment(key, delta))
}

/// The next number of sequence `name` (1, 2, 3, ...): unique and
/// increasing, without a lock, not rolled back (failures and restarts leave
/// gaps). Use it for ids; use [`increment`] for counters that must be exact.
pub fn next_in_sequence(name: &str) -> Result<u64, Error> {
    raw::next_in_sequence(name)
}

/// The next id (1, 2, 3, ...) from the counter at `counter`, allocated in
/// this call's transaction: ids are dense, as a database sequence inside a
/// transaction gives them (a call that is rolled back, such as the loser of
/// a race, gives its id back), and never reused. Calls taking ids from one
/// counter take turns: the counter stays locked until the call ends. Use
/// it where an API promises ids (the first user is 1); use
/// [`next_in_sequence`] where throughput matters more than gaps.
///
/// `seed` runs for the first id, while the counter is already locked, and
/// gives the last id issued before: 0 on a fresh start, or, where an
/// earlier version took these ids from [`next_in_sequence`], where that
/// left off.
pub fn next_id(counter: &str, seed: impl FnOnce() -> Result<u64, Error>) -> Result<u64, Error> {
    // Increment first: the counter is locked for writing at once, never
    // read-locked first (two calls that both read it and then both wrote
    // it would deadlock).
    let id = increment(counter, 1)?;
    let id = u64::try_from(id)
        .map_err(|_| Error::Invalid(format!("the id counter `{counter}` is negative")))?;
    if id == 1 {
        let last = seed()?;
        if last > 0 {
            set(counter, (last + 1).to_string().as_bytes())?;
            return Ok(last + 1);
        }
    }
    Ok(id)
}

/// Replace `key`'s value with `new` (None deletes) only if it is currently
/// `expected` (None: absent). Returns whether it was swapped.
pub fn compare_and_swap(
    key: &str,
    expected: Option<&[u8]>,
    new: Option<&[u8]>,
) -> Result<bool, Error> {
    noted(raw::compare_and_swap(key, expected, new))
}

/// One page of keys starting with `prefix`, strictly after `after`.
pub fn list(prefix: &str, after: Option<&str>, limit: u32) -> Result<Page, Error> {
    noted(raw::list(prefix, after, limit))
}

/// Every entry under `prefix`, fetched page by page as the iterator is
/// consumed. Items are `Err` if a page could not be read.
pub fn scan(prefix: &str) -> Scan {
    Scan {
        prefix: prefix.to_string(),
        after: None,
        buffer: Vec::new().into_iter(),
        done: false,
    }
}

/// Iterator returned by [`scan`].
pub struct Scan {
    prefix: String,
    after: Option<String>,
    buffer: std::vec::IntoIter<(String, Vec<u8>)>,
    done: bool,
}

impl Iterator for Scan {
    type Item = Result<(String, Vec<u8>), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(entry) = self.buffer.next() {
                return Some(Ok(entry));
            }
            if self.done {
                return None;
            }
            match noted(raw::list(&self.prefix, self.after.as_deref(), 500)) {
                Ok(page) => {
                    self.done = page.next.is_none();
                    self.after = page.next;
                    self.buffer = page.entries.into_iter();
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

thread_local! {
    /// Set when a host call of this call answered [`Error::Conflict`]: its
    /// transaction was rolled back. (Per thread: natively, each test's.)
    static CONFLICTED: Cell<bool> = const { Cell::new(false) };
}

/// Most times one call is run again after conflicts. N calls that all
/// read and then write one key need up to N - 1 runs again for the last of
/// them; the call's deadline bounds the whole anyway.
const RERUNS: u32 = 64;

/// Pass a host answer through, noting a conflict.
pub(crate) fn noted<T>(answer: Result<T, Error>) -> Result<T, Error> {
    if matches!(answer, Err(Error::Conflict(_))) {
        CONFLICTED.set(true);
    }
    answer
}

/// Begin this call's transaction again after a conflict: its writes,
/// queued jobs and locks are dropped. Refused (`Conflict`) once the call has
/// acted outside KV. [`rerun_on_conflict`] does this for you.
pub fn restart() -> Result<(), Error> {
    raw::restart()
}

/// Run `call`, and run it again from the start (up to 64 times, with a
/// short growing pause) while it met a conflict and the host agrees to restart
/// its transaction. The SDK wraps every handler, job and admin command in
/// this; use it directly only for exports of your own.
pub fn rerun_on_conflict<T>(mut call: impl FnMut() -> T) -> T {
    let mut reruns = 0;
    loop {
        CONFLICTED.set(false);
        let answer = call();
        if !CONFLICTED.get() || reruns == RERUNS || restart().is_err() {
            return answer;
        }
        reruns += 1;
        // The host queues a restarted call behind the one it met, so a
        // short pause is enough to let that one finish first.
        std::thread::sleep(std::time::Duration::from_millis(u64::from(reruns.min(10))));
    }
}
