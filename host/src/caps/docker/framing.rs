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
                // Ended: what is left in the buffer is read above.
                Ok(false) if !reader.buf.is_empty() => {}
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
                // Ended: what is left in the buffer is read above.
                Ok(false) if !reader.buf.is_empty() => {}
                Ok(false) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::{HeaderMap, Method};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    use super::*;
    use crate::caps::docker::Address;
    use crate::caps::docker::transport::Dialer;
    use crate::caps::docker::wire::Wire;

    /// The body of a chunked answer whose chunks are `pieces`, each its
    /// own write, from a scripted engine.
    async fn answer(pieces: Vec<&'static [u8]>) -> (WireBody, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engine.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let mut chunk = [0; 1024];
                let n = socket.read(&mut chunk).await.unwrap();
                head.extend_from_slice(&chunk[..n]);
            }
            let start = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
            socket.write_all(start).await.unwrap();
            for piece in pieces {
                let chunk = [format!("{:x}\r\n", piece.len()).as_bytes(), piece, b"\r\n"].concat();
                socket.write_all(&chunk).await.unwrap();
                socket.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
            socket.write_all(b"0\r\n\r\n").await.unwrap();
        });
        let wire = Arc::new(Wire::new(Dialer(Arc::new((Address::Unix(path), None)))));
        let sent = wire.send(&Method::GET, "/", &HeaderMap::new(), &[]).await;
        (sent.unwrap().body, dir)
    }

    #[tokio::test]
    async fn log_frames_are_read_whole_across_pieces() {
        let (body, _dir) = answer(vec![
            b"\x01\x00\x00\x00\x00\x00",
            b"\x00\x03ab\n\x02\x00\x00\x00\x00\x00\x00\x04e",
            b"rr\n\x00\x00\x00\x00\x00\x00\x00\x01x",
        ])
        .await;
        let mut frames = LogFrames::new(body);
        let mut got = Vec::new();
        while let Some(frame) = frames.next().await {
            got.push(frame.unwrap());
        }
        let stdin_left_out = [
            ("stdout", Bytes::from("ab\n")),
            ("stderr", Bytes::from("err\n")),
        ];
        assert_eq!(got, stdin_left_out);
    }

    #[tokio::test]
    async fn a_terminals_log_is_read_a_line_at_a_time() {
        let (body, _dir) = answer(vec![b"one\ntw", b"o\nthree"]).await;
        let mut frames = LogFrames::new(body);
        let mut got = Vec::new();
        while let Some(frame) = frames.next().await {
            got.push(frame.unwrap().1);
        }
        assert_eq!(got, ["one\n", "two\n", "three"].map(Bytes::from));
    }

    #[tokio::test]
    async fn a_log_cut_inside_a_frame_is_an_error() {
        let (body, _dir) = answer(vec![b"\x01\x00\x00\x00\x00\x00\x00\x09abc"]).await;
        let mut frames = LogFrames::new(body);
        assert!(frames.next().await.unwrap().is_err());
    }

    #[tokio::test]
    async fn json_lines_are_objects_with_their_own_text() {
        let (body, _dir) = answer(vec![b"{\"a\":1}\n\n{\"b\"", b":[2]}\r\n{\"c\":3}"]).await;
        let mut lines = JsonLines::new(body);
        let mut got = Vec::new();
        while let Some(line) = lines.next_raw().await {
            let (value, text) = line.unwrap();
            got.push((value, text));
        }
        let expected = [
            (serde_json::json!({"a": 1}), Bytes::from(r#"{"a":1}"#)),
            (serde_json::json!({"b": [2]}), Bytes::from(r#"{"b":[2]}"#)),
            (serde_json::json!({"c": 3}), Bytes::from(r#"{"c":3}"#)),
        ];
        assert_eq!(got, expected);
    }
}
