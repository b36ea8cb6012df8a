//! A plugin's stderr: the last few KiB it wrote, kept for the log line of a
//! trap, and for a wasi:http component (whose prints are its log) each
//! line logged. Writing never fails, however much is written: a reused
//! instance writes across many calls, and a full pipe would make
//! `eprintln!` panic.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// The tail of what was written, at most `cap` bytes; clones share it.
#[derive(Clone)]
pub struct Tail {
    cap: usize,
    kept: Arc<Mutex<Vec<u8>>>,
    lines: Option<Arc<Lines>>,
}

/// A stream whose lines are logged, tagged with the plugin.
struct Lines {
    plugin: Arc<str>,
    stream: &'static str,
    /// The line being written.
    partial: Mutex<Vec<u8>>,
}

/// Longest line logged; a longer one is logged in pieces.
const MAX_LINE: usize = 8 << 10;

impl Lines {
    fn write(&self, bytes: &[u8]) {
        let mut partial = self.partial.lock().unwrap_or_else(|e| e.into_inner());
        for &b in bytes {
            if b != b'\n' {
                partial.push(b);
            }
            if b == b'\n' || partial.len() >= MAX_LINE {
                let line = String::from_utf8_lossy(&partial);
                let line = line.trim_end_matches('\r');
                tracing::info!(target: "plugin", plugin = %self.plugin, stream = self.stream, "{line}");
                partial.clear();
            }
        }
    }
}

impl Tail {
    pub fn new(cap: usize) -> Tail {
        Tail {
            cap,
            kept: Arc::default(),
            lines: None,
        }
    }

    /// This tail, with every line written also logged for `plugin` as
    /// its `stream` (`stdout`, `stderr`).
    pub fn logging(mut self, plugin: Arc<str>, stream: &'static str) -> Tail {
        self.lines = Some(Arc::new(Lines {
            plugin,
            stream,
            partial: Mutex::default(),
        }));
        self
    }

    /// What was written since the last `take`, as text, and forget it.
    pub fn take(&self) -> String {
        let kept = std::mem::take(&mut *self.kept.lock().unwrap_or_else(|e| e.into_inner()));
        String::from_utf8_lossy(&kept).trim().to_string()
    }

    /// Forget what was written.
    pub fn clear(&self) {
        self.kept.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn keep(&self, bytes: &[u8]) {
        if let Some(lines) = &self.lines {
            lines.write(bytes);
        }
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let bytes = &bytes[bytes.len().saturating_sub(self.cap)..];
        let over = (kept.len() + bytes.len()).saturating_sub(self.cap);
        kept.drain(..over);
        kept.extend_from_slice(bytes);
    }
}

impl IsTerminal for Tail {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Tail {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for Tail {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.keep(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 << 10)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Tail {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for Tail {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.keep(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_bytes_and_never_refuses() {
        let tail = Tail::new(8);
        let mut stream = tail.p2_stream();
        for _ in 0..1000 {
            stream.write(Bytes::from_static(b"abc")).unwrap();
        }
        stream.write(Bytes::from_static(b"0123456789")).unwrap();
        assert_eq!(tail.take(), "23456789");
        assert_eq!(tail.take(), "");
        stream.write(Bytes::from_static(b"panicked")).unwrap();
        assert_eq!(tail.take(), "panicked");
    }
}
