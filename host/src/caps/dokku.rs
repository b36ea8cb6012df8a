//! `dokku`: one command line through the dokku-daemon Unix socket.
//!
//! The protocol: write `COMMAND\n`, read one line of JSON
//! `{"ok":true|false,"output":"..."}`. The real daemon builds that line by
//! escaping only newlines and double quotes, so output with backslashes,
//! control characters or ANSI codes makes it invalid JSON; [`parse_reply`]
//! repairs it instead of failing.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use wasmtime::component::{HasData, Linker};

use crate::bindings::DokkuFailure;
use crate::bindings::dokku::{DokkuError, Host, Reply};
use crate::capability::Capability;
use crate::caps::{CallCx, Caller, HasCall, Unit};
use crate::config::DokkuConfig;

/// Longest answer line read; the rest is cut.
const MAX_LINE: u64 = 16 << 20;

/// What `dokku` sees of a call: the caller and the daemon's socket.
pub struct DokkuView<'a> {
    caller: Caller<'a>,
    dokku: &'a DokkuConfig,
}

/// Links `dokku` to [`DokkuView`].
pub struct DokkuCap;

impl HasData for DokkuCap {
    type Data<'a> = DokkuView<'a>;
}

impl Unit for DokkuCap {
    fn view(call: &mut CallCx) -> DokkuView<'_> {
            let (caller, env, _) = call.split();
            DokkuView {
                caller,
                dokku: &env.services.dokku,
            }
    }

    fn link<T: HasCall>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        crate::bindings::dokku::add_to_linker::<T, Self>(linker, |s| Self::view(s.call()))
    }
}

impl Host for DokkuView<'_> {
    async fn run(&mut self, command: String, timeout_ms: u32) -> Result<Reply, DokkuFailure> {
        self.caller.acted("a Dokku command");
        if let Err(e) = self.caller.check(Capability::Dokku) {
            return Err(DokkuError::Denied(crate::caps::denied_text(&e)).into());
        }
        if command.trim().is_empty() || command.contains(['\n', '\r']) {
            return Err(DokkuError::Invalid("a command is one non-empty line".into()).into());
        }
        let dokku = self.dokku;
        let timeout = match timeout_ms {
            0 => Duration::from_millis(dokku.timeout_ms),
            ms => Duration::from_millis(u64::from(ms)),
        };
        let socket = dokku.socket.clone();
        let exchange = async {
            let stream = UnixStream::connect(&socket).await.map_err(|e| {
                DokkuError::Unreachable(format!("cannot connect to {}: {e}", socket.display()))
            })?;
            let (read, mut write) = stream.into_split();
            write
                .write_all(format!("{command}\n").as_bytes())
                .await
                .map_err(|e| {
                    DokkuError::Unreachable(format!("cannot send to {}: {e}", socket.display()))
                })?;
            let mut line = Vec::new();
            BufReader::new(read.take(MAX_LINE))
                .read_until(b'\n', &mut line)
                .await
                .map_err(|e| {
                    DokkuError::Unreachable(format!("cannot read from {}: {e}", socket.display()))
                })?;
            if line.is_empty() {
                return Err(DokkuError::Unreachable(format!(
                    "{} closed without answering",
                    socket.display()
                )));
            }
            Ok(parse_reply(&String::from_utf8_lossy(&line)))
        };
        let answer = match tokio::time::timeout(timeout, exchange).await {
            // The socket path and the OS error are the operator's to read.
            Ok(Err(DokkuError::Unreachable(detail))) => {
                let (plugin, request_id) = (self.caller.plugin(), self.caller.request_id());
                tracing::warn!(plugin, request_id, "Dokku daemon unreachable: {detail}");
                Err(DokkuError::Unreachable(format!(
                    "the Dokku daemon cannot be reached now (the host log has the details \
                     under request {request_id})"
                )))
            }
            Ok(result) => result,
            Err(_) => Err(DokkuError::Timeout),
        };
        Ok(answer?)
    }

    /// A daemon error reaches the plugin; a trap ends the call.
    fn convert_dokku_error(&mut self, err: DokkuFailure) -> wasmtime::Result<DokkuError> {
        err.downcast()
    }
}

/// Parse one answer line, repairing the daemon's invalid JSON.
pub fn parse_reply(line: &str) -> Reply {
    let line = line.trim_end_matches(['\n', '\r']);
    #[derive(serde::Deserialize)]
    struct Strict {
        ok: bool,
        output: String,
    }
    if let Ok(strict) = serde_json::from_str::<Strict>(line) {
        return Reply {
            ok: strict.ok,
            output: strict.output,
        };
    }
    // {"ok":true,"output":"...raw..."} with only \n and \" escaped.
    let compact: String = line
        .chars()
        .take(40)
        .filter(|c| !c.is_whitespace())
        .collect();
    let ok = compact.starts_with("{\"ok\":true");
    let Some(start) = line
        .find("\"output\"")
        .and_then(|i| line[i + 8..].find('"').map(|j| i + 8 + j + 1))
    else {
        return Reply {
            ok,
            output: line.to_string(),
        };
    };
    let body = line[start..].trim_end();
    let body = body.strip_suffix('}').unwrap_or(body).trim_end();
    let body = body.strip_suffix('"').unwrap_or(body);
    let mut output = String::with_capacity(body.len());
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some('n')) => {
                output.push('\n');
                chars.next();
            }
            ('\\', Some('"')) => {
                output.push('"');
                chars.next();
            }
            (c, _) => output.push(c),
        }
    }
    Reply { ok, output }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_json_is_read_as_is() {
        let r = parse_reply("{\"ok\":true,\"output\":\"=====> My Apps\\napi\"}\n");
        assert!(r.ok);
        assert_eq!(r.output, "=====> My Apps\napi");
    }

    #[test]
    fn the_daemons_invalid_json_is_repaired() {
        let line = "{\"ok\":false,\"output\":\"C:\\temp \\\"quoted\\\"\\nbell\x07 \x1b[1G\x1b[32mgreen\ttab\"}";
        let r = parse_reply(line);
        assert!(!r.ok);
        assert_eq!(
            r.output,
            "C:\\temp \"quoted\"\nbell\x07 \x1b[1G\x1b[32mgreen\ttab"
        );
        let r = parse_reply("{\"ok\":true,\"output\":\"path\\to\\app\"}");
        assert!(r.ok);
        assert_eq!(r.output, "path\\to\\app");
    }

    #[test]
    fn garbage_is_kept_raw_and_not_ok() {
        let r = parse_reply("segfault \x00 at 0x0");
        assert!(!r.ok);
        assert_eq!(r.output, "segfault \x00 at 0x0");
    }
}
