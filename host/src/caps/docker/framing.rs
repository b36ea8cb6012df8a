//! Reading the engine's streamed answers off `wire`: JSON objects a line
//! (events, a pull's progress) and the framed output of container logs.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;

use super::wire::WireBody;

/// The engine's body, read as it arrives.
struct Reader {
    body: WireBody,
    buf: BytesMut,
    ended: bool,
}

impl Reader {
    /// Read more into the buffer: false once the body has ended.
    async fn more(&mut self) -> io::Result<bool> {
        while !self.ended {
            match self.body.frame().await {
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        self.buf.extend_from_slice(&data);
                        return Ok(true);
                    }
                }
                None => self.ended = true,
            }
        }
        Ok(false)
    }
}

/// An answer of JSON objects, one a line (`/events`, `/images/create`).
pub struct JsonLines(Reader);

impl JsonLines {
    pub fn new(body: WireBody) -> JsonLines {
        JsonLines(Reader {
            body,
            buf: BytesMut::new(),
            ended: false,
        })
    }

    /// The next object and its text; none once the answer has ended.
    pub async fn next_raw(&mut self) -> Option<io::Result<(serde_json::Value, Bytes)>> {
        let reader = &mut self.0;
        loop {
            let line = match reader.buf.iter().position(|b| *b == b'\n') {
                Some(end) => Some(reader.buf.split_to(end + 1).freeze()),
                None if reader.ended && !reader.buf.is_empty() => Some(reader.buf.split().freeze()),
                None => None,
            };
            if let Some(line) = line {
                let text = line.trim_ascii();
                if text.is_empty() {
                    continue;
                }
                let value = serde_json::from_slice(text).map_err(io::Error::other);
                return Some(value.map(|v| (v, line.slice_ref(text))));
            }
            match reader.more().await {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// The next object; none once the answer has ended.
    pub async fn next(&mut self) -> Option<io::Result<serde_json::Value>> {
        Some(self.next_raw().await?.map(|(value, _)| value))
    }
}

/// A container's log as the engine sends it: frames of stdout or stderr
/// behind an 8-byte header (`[stream, 0, 0, 0, length as u32 BE]`), or,
/// for a container with a terminal, its raw output, taken a line at a
/// time (the first byte of a header is 0, 1 or 2; of text, never).
pub struct LogFrames(Reader);

impl LogFrames {
    pub fn new(body: WireBody) -> LogFrames {
        LogFrames(Reader {
            body,
            buf: BytesMut::new(),
            ended: false,
        })
    }

    /// The next piece of output and its stream (`stdout` or `stderr`);
    /// none once the log has ended.
    pub async fn next(&mut self) -> Option<io::Result<(&'static str, Bytes)>> {
        let reader = &mut self.0;
        loop {
            let buf = &mut reader.buf;
            if let Some(&first) = buf.first() {
                if first > 2 {
                    match buf.iter().position(|b| *b == b'\n') {
                        Some(end) => return Some(Ok(("stdout", buf.split_to(end + 1).freeze()))),
                        None if reader.ended => return Some(Ok(("stdout", buf.split().freeze()))),
                        None => {}
                    }
                } else if buf.len() >= 8 {
                    let length = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
                    if buf.len() >= 8 + length {
                        buf.advance(8);
                        let payload = buf.split_to(length).freeze();
                        match first {
                            1 => return Some(Ok(("stdout", payload))),
                            2 => return Some(Ok(("stderr", payload))),
                            _ => continue,
                        }
                    }
                }
                if reader.ended {
                    // A header or frame cut short: the log broke off.
                    return Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the log ended inside a frame",
                    )));
                }
            }
            match reader.more().await {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
