//! Commands through the Dokku daemon socket (dokku-daemon protocol).

use crate::host::dokku as raw;

pub use raw::{DokkuError, Reply};

/// Run one command line; `timeout_ms` 0 uses the operator's default.
pub fn run(command: &str, timeout_ms: u32) -> Result<Reply, DokkuError> {
    raw::run(command, timeout_ms)
}
