//! Durable key-value storage, namespaced to this plugin.
//!
//! Every write made while handling one request is part of one transaction:
//! visible to later reads in the same request, durable before the response
//! is sent, and discarded if the plugin traps or times out.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::bindings::berth::plugin::kv as raw;

pub use raw::Page;

/// Read a key's bytes.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, Error> {
    raw::get(key)
}

/// Read a key as UTF-8 text (invalid UTF-8 is replaced).
pub fn get_string(key: &str) -> Result<Option<String>, Error> {
    Ok(raw::get(key)?.map(|v| String::from_utf8_lossy(&v).into_owned()))
}

/// Read a key holding JSON into `T`.
pub fn get_json<T: DeserializeOwned>(key: &str) -> Result<Option<T>, Error> {
    match raw::get(key)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::Conflict(format!("value at `{key}` is not the expected JSON: {e}"))
        }),
    }
}

/// Write bytes.
pub fn set(key: &str, value: &[u8]) -> Result<(), Error> {
    raw::set(key, value)
}

/// Write `value` as JSON.
pub fn set_json<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<(), Error> {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| Error::Invalid(format!("cannot serialise value for `{key}`: {e}")))?;
    raw::set(key, &bytes)
}

/// Delete a key; returns whether it existed.
pub fn delete(key: &str) -> Result<bool, Error> {
    raw::delete(key)
}

/// Atomically add `delta` to the integer at `key` (missing = 0); returns
/// the new value.
pub fn increment(key: &str, delta: i64) -> Result<i64, Error> {
    raw::increment(key, delta)
}

/// The next number of sequence `name` (1, 2, 3, ...): unique and
/// increasing, without a lock, not rolled back (failures and restarts leave
/// gaps). Use it for ids; use [`increment`] for counters that must be exact.
pub fn next_in_sequence(name: &str) -> Result<u64, Error> {
    raw::next_in_sequence(name)
}

/// Replace `key`'s value with `new` (None deletes) only if it is currently
/// `expected` (None: absent). Returns whether it was swapped.
pub fn compare_and_swap(
    key: &str,
    expected: Option<&[u8]>,
    new: Option<&[u8]>,
) -> Result<bool, Error> {
    raw::compare_and_swap(key, expected, new)
}

/// One page of keys starting with `prefix`, strictly after `after`.
pub fn list(prefix: &str, after: Option<&str>, limit: u32) -> Result<Page, Error> {
    raw::list(prefix, after, limit)
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
            match raw::list(&self.prefix, self.after.as_deref(), 500) {
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
