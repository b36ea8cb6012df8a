//! Durable background jobs: queue work now, have the host run it later
//! through [`crate::Plugin::run_job`], retried with backoff until it works.

use serde::Serialize;

use crate::Error;
use crate::host::jobs as raw;

/// Queue a job of `kind` with `payload` to run after `delay_ms`. It is
/// committed with the current call's KV writes (not at all if the call
/// fails). Returns the job id.
pub fn enqueue(kind: &str, payload: &[u8], delay_ms: u64) -> Result<u64, Error> {
    crate::kv::noted(raw::enqueue(kind, payload, delay_ms))
}

/// Queue a job whose payload is `value` as JSON.
pub fn enqueue_json<T: Serialize + ?Sized>(
    kind: &str,
    value: &T,
    delay_ms: u64,
) -> Result<u64, Error> {
    let payload = serde_json::to_vec(value).map_err(|e| {
        Error::Invalid(format!("cannot serialise the payload of job `{kind}`: {e}"))
    })?;
    crate::kv::noted(raw::enqueue(kind, &payload, delay_ms))
}
