//! Log streams (`docker.open-log-stream`): the logs of a few containers,
//! one JSON object per line, read once the call that opened the stream
//! answers with it and sent as a `subscribe` outcome frames them.

use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use super::framing::LogFrames;
use super::ops::{segment, target};
use super::proxy::{ProxyError, Slot};
use super::{Docker, error_text};
use crate::bindings::docker::DockerError;
use crate::metrics::PluginMetrics;

/// Lines a source's reader may run ahead of the client.
const AHEAD: usize = 64;

/// A log stream as a call opened it: read only if the call answers with
/// it.
#[derive(Debug)]
pub struct LogSpec {
    pub endpoint: String,
    /// Each container, with the members its messages carry.
    pub sources: Vec<(String, Map<String, Value>)>,
    pub tail: Option<u32>,
    pub follow: bool,
}

impl LogSpec {
    /// Check the plugin's arguments: each source's `fields` must be a JSON
    /// object.
    pub fn new(
        endpoint: String,
        sources: Vec<(String, String)>,
        tail: Option<u32>,
        follow: bool,
    ) -> Result<LogSpec, DockerError> {
        let sources = sources
            .into_iter()
            .map(|(id, fields)| match serde_json::from_str(&fields) {
                Ok(Value::Object(fields)) => Ok((id, fields)),
                _ => Err(DockerError::Invalid(format!(
                    "log source `{id}`: fields must be a JSON object, not `{fields}`"
                ))),
            })
            .collect::<Result<_, _>>()?;
        Ok(LogSpec {
            endpoint,
            sources,
            tail,
            follow,
        })
    }
}

/// The messages of an open log stream, in the order they are read; none
/// once every container's log has ended.
pub struct LogLines {
    lines: mpsc::Receiver<Bytes>,
    /// The stream's place under the plugin's proxied-stream caps.
    _slot: Slot,
}

impl LogLines {
    pub async fn next(&mut self) -> Option<Bytes> {
        self.lines.recv().await
    }
}

impl Docker {
    /// Start reading the logs `spec` names for plugin `name`: a task per
    /// container, each stopping when its log ends or the client leaves.
    pub async fn log_lines(
        &self,
        name: &str,
        spec: LogSpec,
        metrics: &Arc<PluginMetrics>,
    ) -> Result<LogLines, String> {
        let engine = self
            .proxied_engine(name, &spec.endpoint)
            .await
            .map_err(|e| proxy_text(e, &spec.endpoint))?;
        let slot = self
            .slot(name, metrics)
            .map_err(|e| proxy_text(e, &spec.endpoint))?;
        let (sender, lines) = mpsc::channel(AHEAD);
        for (id, fields) in spec.sources {
            let options = [
                ("follow", Some(spec.follow.to_string())),
                ("stdout", Some("true".into())),
                ("stderr", Some("true".into())),
                ("timestamps", Some("true".into())),
                (
                    "tail",
                    Some(spec.tail.map_or("all".into(), |t| t.to_string())),
                ),
            ];
            let path = target(&format!("/containers/{}/logs", segment(&id)), &options);
            let engine = engine.clone();
            let sender = sender.clone();
            tokio::spawn(async move {
                let Ok(answer) = engine.call(&Method::GET, &path, None).await else {
                    return;
                };
                let mut output = LogFrames::new(answer.body);
                loop {
                    // A client that left ends the reading at once, not at
                    // the idle container's next line.
                    let frame = tokio::select! {
                        frame = output.next() => frame,
                        () = sender.closed() => return,
                    };
                    let Some(Ok((stream, bytes))) = frame else {
                        return;
                    };
                    for message in messages(&fields, stream, &bytes) {
                        if sender.send(message).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
        Ok(LogLines { lines, _slot: slot })
    }
}

fn proxy_text(e: ProxyError, endpoint: &str) -> String {
    match e {
        ProxyError::Busy => "too many streams are open: try again later".into(),
        ProxyError::Refused(m) | ProxyError::Unknown(m) | ProxyError::Unreachable(m) => m,
        other => error_text(&DockerError::Unreachable(format!("{endpoint}: {other:?}"))),
    }
}

/// One frame of a log (with the engine's timestamps on) as messages, one
/// per line: `fields` and `log`, `streamType`, `timestamp`.
fn messages(fields: &Map<String, Value>, stream: &str, frame: &[u8]) -> Vec<Bytes> {
    let text = String::from_utf8_lossy(frame);
    let mut stamp = None;
    text.split_inclusive('\n')
        .map(|line| {
            let (at, log) = match line.split_once(' ') {
                Some((at, log)) if unix_seconds(at).is_some() => (unix_seconds(at), log),
                _ => (stamp, line),
            };
            stamp = at;
            let mut message = fields.clone();
            message.insert("log".into(), log.into());
            message.insert("streamType".into(), stream.into());
            message.insert("timestamp".into(), at.unwrap_or(0).into());
            Bytes::from(Value::Object(message).to_string())
        })
        .collect()
}

/// Whole seconds since the Unix epoch of an RFC 3339 time in UTC as the
/// engine writes them (`2026-12-03T06:20:01.123456789Z`).
fn unix_seconds(text: &str) -> Option<i64> {
    let (date, time) = text.strip_suffix('Z')?.split_once('T')?;
    let mut date = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (date.next()??, date.next()??, date.next()??);
    let mut time = time.splitn(3, ':');
    let (h, min) = (
        time.next()?.parse::<i64>().ok()?,
        time.next()?.parse::<i64>().ok()?,
    );
    let s = time.next()?.split('.').next()?.parse::<i64>().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || h > 23 || min > 59 || s > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3_600 + min * 60 + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_times_are_unix_seconds() {
        assert_eq!(unix_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            unix_seconds("2014-04-06T18:11:17.123456789Z"),
            Some(1_396_807_877)
        );
        assert_eq!(unix_seconds("2000-02-29T00:00:00Z"), Some(951_782_400));
        assert_eq!(unix_seconds("hello"), None);
        assert_eq!(unix_seconds("2014-13-06T18:11:17Z"), None);
    }

    #[test]
    fn each_line_is_a_message_with_its_time() {
        let Value::Object(fields) = serde_json::json!({"type": "log", "source": "web-1"}) else {
            unreachable!()
        };
        let frame = b"2014-04-06T18:11:17.5Z hello\nworld\n";
        let got: Vec<Value> = messages(&fields, "stderr", frame)
            .iter()
            .map(|m| serde_json::from_slice(m).unwrap())
            .collect();
        let line = |log: &str| {
            serde_json::json!({"type": "log", "source": "web-1", "log": log,
                "streamType": "stderr", "timestamp": 1_396_807_877})
        };
        assert_eq!(got, vec![line("hello\n"), line("world\n")]);
    }
}
