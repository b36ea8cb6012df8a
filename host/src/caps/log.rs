//! `log`: plugin log lines through `tracing`, tagged with plugin and
//! request id.

use wasmtime::component::{HasData, Linker};

use crate::bindings::log::{Host, Level};
use crate::capability::Capability;
use crate::caps::{CallCx, Caller, HasCall, Unit};

/// Longest message kept; the rest is cut.
const MAX_LINE: usize = 8 << 10;

fn clip(s: &str) -> &str {
    if s.len() <= MAX_LINE {
        return s;
    }
    let mut end = MAX_LINE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// What `log` sees of a call: the caller alone.
pub struct LogView<'a> {
    caller: Caller<'a>,
}

/// Links `log` to [`LogView`].
pub struct LogCap;

impl HasData for LogCap {
    type Data<'a> = LogView<'a>;
}

impl Unit for LogCap {
    fn view(call: &mut CallCx) -> LogView<'_> {
            LogView {
                caller: call.split().0,
            }
    }

    fn link<T: HasCall>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        crate::bindings::log::add_to_linker::<T, Self>(linker, |s| Self::view(s.call()))
    }
}

impl Host for LogView<'_> {
    async fn log(
        &mut self,
        level: Level,
        message: String,
        fields: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        // Logging is a capability like any other; without it lines are dropped.
        if self.caller.check(Capability::Log).is_err() {
            return Ok(());
        }
        let plugin = self.caller.plugin();
        let request_id = self.caller.request_id();
        let message = clip(&message);
        let fields: String = fields.iter().map(|(k, v)| format!(" {k}={v:?}")).collect();
        let fields = clip(&fields);
        match level {
            Level::Trace => {
                tracing::trace!(target: "plugin", plugin, request_id, fields, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "plugin", plugin, request_id, fields, "{message}")
            }
            Level::Info => {
                tracing::info!(target: "plugin", plugin, request_id, fields, "{message}")
            }
            Level::Warn => {
                tracing::warn!(target: "plugin", plugin, request_id, fields, "{message}")
            }
            Level::Error => {
                tracing::error!(target: "plugin", plugin, request_id, fields, "{message}")
            }
        }
        Ok(())
    }
}
