//! Events and the `subscribe` outcome through the `streamer` fixture:
//! newline-delimited JSON, Server-Sent Events and WebSocket, replay, a
//! job's progress streamed line by line, and a client that stops reading.

mod support;

use std::time::Duration;

use futures_core::Stream;
use futures_util::StreamExt;
use support::{Berth, client};
use tokio_tungstenite::tungstenite::Message;

async fn start(dir: &std::path::Path) -> Berth {
    let berth = Berth::start(dir, "[plugins.streamer]\ngrants = [\"events\", \"jobs\"]\n");
    support::mount(&berth, "streamer", "/stream/t/close").await;
    berth
}

/// Read from a chunked body until `want` lines arrived (or it ended).
async fn lines<S>(stream: &mut S, buf: &mut Vec<u8>, want: usize) -> Vec<String>
where
    S: Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin,
{
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let text = String::from_utf8_lossy(buf).into_owned();
            let complete: Vec<String> = text
                .split_inclusive('\n')
                .filter(|l| l.ends_with('\n'))
                .map(|l| l.trim_end().to_string())
                .collect();
            if complete.len() >= want {
                return complete;
            }
            match std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx)).await {
                Some(chunk) => buf.extend_from_slice(&chunk.unwrap()),
                None => return complete,
            }
        }
    })
    .await
    .expect("lines within 10 s")
}

#[tokio::test(flavor = "multi_thread")]
async fn ndjson_streams_live_events_until_the_topic_closes() {
    let dir = tempfile::tempdir().unwrap();
    let berth = start(dir.path()).await;
    let http = client();
    let r = http
        .get(berth.url("/stream/news?framing=ndjson"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    assert_eq!(r.headers()["x-topic"], "news");
    let mut body = r.bytes_stream();
    let mut buf = Vec::new();
    // Each event arrives while the stream is open.
    for i in 1..=3 {
        http.post(berth.url("/stream/news"))
            .body(format!("{{\"n\":{i}}}"))
            .send()
            .await
            .unwrap();
        http.post(berth.url("/stream/other"))
            .body("not for us")
            .send()
            .await
            .unwrap();
        let got = lines(&mut body, &mut buf, i).await;
        assert_eq!(got.last().unwrap(), &format!("{{\"n\":{i}}}"));
    }
    http.post(berth.url("/stream/news/close"))
        .body("{\"bye\":true}")
        .send()
        .await
        .unwrap();
    let got = lines(&mut body, &mut buf, 5).await;
    assert_eq!(
        got,
        ["{\"n\":1}", "{\"n\":2}", "{\"n\":3}", "{\"bye\":true}"],
        "closed after the last event"
    );

    // A job's progress, line by line, ending with its final line.
    let r = http
        .get(berth.url("/stream/deploy?replay=1"))
        .send()
        .await
        .unwrap();
    let mut body = r.bytes_stream();
    let (status, _) = support::post_json(&http, &berth.url("/stream/deploy/job?n=3")).await;
    assert_eq!(status, 202);
    let mut buf = Vec::new();
    let got = lines(&mut body, &mut buf, 5).await;
    assert_eq!(
        got,
        [
            "{\"step\":1}",
            "{\"step\":2}",
            "{\"step\":3}",
            "{\"Status\":\"Finalized\"}"
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_replays_what_was_missed() {
    let dir = tempfile::tempdir().unwrap();
    let berth = start(dir.path()).await;
    let http = client();
    let mut seqs = Vec::new();
    for text in ["one", "two\nlines", "three"] {
        let (_, v) = {
            let r = http
                .post(berth.url("/stream/log"))
                .body(text)
                .send()
                .await
                .unwrap();
            (r.status(), r.json::<serde_json::Value>().await.unwrap())
        };
        seqs.push(v["seq"].as_u64().unwrap());
    }
    let r = http
        .get(berth.url(&format!(
            "/stream/log?framing=sse&replay=1&after={}",
            seqs[0]
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut body = r.bytes_stream();
    let mut buf = Vec::new();
    http.post(berth.url("/stream/log/close"))
        .body("end")
        .send()
        .await
        .unwrap();
    let got = lines(&mut body, &mut buf, 100).await.join("\n");
    let want = format!(
        "id: {}\ndata: two\ndata: lines\n\nid: {}\ndata: three\n\nid: {}\ndata: end\n",
        seqs[1],
        seqs[2],
        seqs[2] + 1
    );
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_messages_and_a_close_frame() {
    let dir = tempfile::tempdir().unwrap();
    let berth = start(dir.path()).await;
    let http = client();
    // Without an upgrade: 426.
    let r = http
        .get(berth.url("/stream/ws?framing=websocket"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 426);

    let url = berth
        .url("/stream/ws?framing=websocket")
        .replace("http://", "ws://");
    let (mut ws, answer) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(answer.status(), 101);
    for i in 0..3 {
        http.post(berth.url("/stream/ws"))
            .body(format!("m{i}"))
            .send()
            .await
            .unwrap();
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(msg, Message::text(format!("m{i}")));
    }
    http.post(berth.url("/stream/ws/close"))
        .body("last")
        .send()
        .await
        .unwrap();
    let msg = ws.next().await.unwrap().unwrap();
    assert_eq!(msg, Message::text("last"));
    let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap();
    assert!(matches!(msg, Some(Ok(Message::Close(_))) | None), "{msg:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_is_dropped_and_others_keep_receiving() {
    let dir = tempfile::tempdir().unwrap();
    let berth = start(dir.path()).await;
    // No overall timeout: these streams outlive any one request.
    let http = reqwest::Client::new();
    let rss_before = berth.rss_kib();

    // One client that reads nothing, many that read.
    let stalled = http.get(berth.url("/stream/flood")).send().await.unwrap();
    let mut readers = Vec::new();
    for _ in 0..10 {
        let r = http.get(berth.url("/stream/flood")).send().await.unwrap();
        readers.push(r.bytes_stream());
    }
    let payload = "x".repeat(16 << 10);
    let total = 1600;
    let mut counts = vec![0usize; readers.len()];
    let mut bufs = vec![Vec::new(); readers.len()];
    for i in 0..total {
        http.post(berth.url("/stream/flood"))
            .body(payload.clone())
            .send()
            .await
            .unwrap();
        if i % 100 == 99 {
            for (k, reader) in readers.iter_mut().enumerate() {
                let got = lines(reader, &mut bufs[k], 100).await;
                counts[k] += got.len();
                // Keep only what follows the last complete line.
                let end = bufs[k]
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map_or(0, |i| i + 1);
                bufs[k].drain(..end);
            }
        }
    }
    assert!(
        counts.iter().all(|&c| c == total),
        "every reading client got every event: {counts:?}"
    );
    // 1600 x 16 KiB x 11 clients went out; the host held at most its bounds.
    let grown = berth.rss_kib().saturating_sub(rss_before);
    assert!(grown < 80 << 10, "RSS grew by {grown} KiB");

    // The stalled client is told it was dropped once it reads again.
    let mut stalled = stalled.bytes_stream();
    let mut buf = Vec::new();
    let all = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(chunk) = stalled.next().await {
            buf.extend_from_slice(&chunk.unwrap());
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
    .await
    .expect("the stalled stream ends");
    let last = all.lines().last().unwrap();
    assert!(last.contains("too slow"), "{last}");
    assert!(all.lines().count() < total, "it did not get everything");
}
