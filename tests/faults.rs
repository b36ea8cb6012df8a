//! Misbehaving plugins: loops, memory bombs, traps, huge responses and
//! ungranted capabilities are answered with JSON errors within the
//! deadline while other requests keep succeeding; a trapped or timed-out
//! call's writes are rolled back.

mod support;

use support::{Berth, client, drop_file, get_json, get_text, plugin_wasm};

const CONFIG: &str = r#"
install_bundled = false
[defaults]
max_body_kib = 64
[plugins.faults]
grants = ["kv"]
deadline_ms = 500
memory_mib = 32
max_response_mib = 4
"#;

fn start(dir: &std::path::Path) -> Berth {
    start_with(dir, CONFIG)
}

fn start_with(dir: &std::path::Path, config: &str) -> Berth {
    let plugins = dir.join("data/plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    drop_file(&plugin_wasm("faults"), &plugins.join("faults.wasm"));
    drop_file(&plugin_wasm("hello"), &plugins.join("hello.wasm"));
    Berth::start(dir, config)
}

#[tokio::test]
async fn faults_answer_json_errors_while_other_requests_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let berth = start(dir.path());
    let c = client();

    // Background traffic on another plugin during every fault.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut background = Vec::new();
    for i in 0..4 {
        let (c, stop) = (c.clone(), stop.clone());
        let url = berth.url(&format!("/hello/bg{i}"));
        background.push(tokio::spawn(async move {
            let mut ok = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, body) = get_json(&c, &url).await;
                assert_eq!(status, 200, "{body}");
                ok += 1;
            }
            ok
        }));
    }

    let cases = [
        ("/faults/loop", 504, "did not answer within 500 ms"),
        ("/faults/bomb", 500, "failed"),
        ("/faults/trap", 500, "failed"),
        ("/faults/huge?mib=8", 500, "over its limit of 4194304 bytes"),
    ];
    let rss_before = berth.rss_kib();
    for round in 0..3 {
        for (path, status, text) in cases {
            let (got, body) = get_json(&c, &berth.url(path)).await;
            assert_eq!(got, status, "{path} round {round}: {body}");
            assert!(
                body["error"].as_str().unwrap().contains(text),
                "{path}: {body}"
            );
            assert!(
                body["request_id"].as_str().is_some_and(|id| !id.is_empty()),
                "{body}"
            );
            // Backtraces stay in the log.
            assert!(!body.to_string().contains("wasm"), "{path}: {body}");
        }
    }
    assert!(
        berth.log().contains("wasm backtrace"),
        "the log has the trap's details"
    );
    // The host survives and stays bounded: a 32 MiB cap per instance,
    // memory returned to the pool after each call.
    let rss_after = berth.rss_kib();
    assert!(
        rss_after < rss_before + 128 * 1024,
        "host memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    let (status, _) = get_json(&c, &berth.url("/faults/ok")).await;
    assert_eq!(status, 200, "the faulty plugin itself still serves");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in background {
        assert!(
            task.await.unwrap() > 0,
            "background requests ran and all succeeded"
        );
    }

    let metrics = get_text(&c, &berth.url("/_berth/metrics")).await;
    assert!(
        metrics.contains("berth_timeouts_total{plugin=\"faults\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("berth_traps_total{plugin=\"faults\"} 6"),
        "{metrics}"
    );
}

#[tokio::test]
async fn ungranted_capabilities_are_errors_the_plugin_sees() {
    let dir = tempfile::tempdir().unwrap();
    let berth = start(dir.path());
    let (status, body) = get_json(&client(), &berth.url("/faults/ungranted")).await;
    assert_eq!(status, 200, "the plugin handles the error itself: {body}");
    let saw = body["plugin_saw"].as_str().unwrap();
    assert!(
        saw.starts_with("denied:") && saw.contains("`crypto` is not granted to plugin `faults`"),
        "{saw}"
    );

    let out = berth.cli(&["plugins"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("asked:   kv, crypto, log") && text.contains("granted: kv, log"),
        "{text}"
    );
}

#[tokio::test]
async fn writes_of_a_trapped_or_timed_out_call_are_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let berth = start(dir.path());
    let c = client();
    let r = c
        .post(berth.url("/faults/write-then-trap/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let r = c
        .post(berth.url("/faults/write-then-loop/b"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    for key in ["a", "b"] {
        let (status, body) = get_json(&c, &berth.url(&format!("/faults/read/{key}"))).await;
        assert_eq!(
            (status, &body["value"]),
            (200, &serde_json::Value::Null),
            "{key}"
        );
    }
}

#[tokio::test]
async fn bodies_over_the_cap_get_413() {
    let dir = tempfile::tempdir().unwrap();
    let berth = start(dir.path());
    let c = client();
    let big = format!("{{\"message\":\"{}\"}}", "x".repeat(100 * 1024));
    let r = c
        .post(berth.url("/echo"))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("65536 bytes"),
        "{body}"
    );

    // Without a content-length (chunked), the limit still holds.
    let stream = futures_stream(big.into_bytes());
    let r = c
        .post(berth.url("/echo"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    let small = serde_json::json!({ "message": "x".repeat(1000) });
    let r = c
        .post(berth.url("/echo"))
        .json(&small)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

fn futures_stream(
    bytes: Vec<u8>,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    struct Chunks(std::vec::IntoIter<Vec<u8>>);
    impl futures_core::Stream for Chunks {
        type Item = Result<Vec<u8>, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(self.0.next().map(Ok))
        }
    }
    Chunks(
        bytes
            .chunks(8192)
            .map(<[u8]>::to_vec)
            .collect::<Vec<_>>()
            .into_iter(),
    )
}

#[tokio::test]
async fn sigterm_waits_for_in_flight_requests() {
    let dir = tempfile::tempdir().unwrap();
    // A loop that lasts long enough to be seen in flight on a busy machine.
    let mut berth = start_with(
        dir.path(),
        &CONFIG.replace("deadline_ms = 500", "deadline_ms = 5000"),
    );
    let c = client();
    let url = berth.url("/faults/loop");
    let in_flight = tokio::spawn({
        let c = c.clone();
        async move { c.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    support::poll(
        std::time::Duration::from_secs(10),
        "the request to be in flight",
        || async {
            let metrics = get_text(&c, &berth.url("/_berth/metrics")).await;
            metrics
                .contains("berth_in_flight_requests{plugin=\"faults\"} 1")
                .then_some(())
        },
    )
    .await;
    let stopped = tokio::task::spawn_blocking(move || berth.stop());
    assert_eq!(
        in_flight.await.unwrap().unwrap(),
        504,
        "the in-flight request got its answer"
    );
    assert!(stopped.await.unwrap(), "berth exited 0 after SIGTERM");
}

/// A call that computes for seconds gives its worker thread back at every
/// epoch tick, so connections accepted meanwhile are served at once, not
/// after it: every one of many new connections is answered while the loop
/// still runs. (Before, a connection queued behind the loop on its thread
/// waited out the loop's whole deadline.)
#[tokio::test(flavor = "multi_thread")]
async fn a_long_call_does_not_hold_up_connections_accepted_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    // A loop of 60 s: the rounds below take a small part of it even on a
    // machine busy with other work.
    let berth = start_with(
        dir.path(),
        &CONFIG.replace("deadline_ms = 500", "deadline_ms = 60000"),
    );
    let url = berth.url("/faults/loop");
    let looping = tokio::spawn(async move { client().get(url).send().await.map(|r| r.status()) });
    support::poll(
        std::time::Duration::from_secs(10),
        "the loop to be in flight",
        || async {
            let metrics = get_text(&client(), &berth.url("/_berth/metrics")).await;
            metrics
                .contains("berth_in_flight_requests{plugin=\"faults\"} 1")
                .then_some(())
        },
    )
    .await;
    for round in 0..20 {
        // Eight at once, each on a new connection of a client of its own.
        let answers = (0..8).map(|n| {
            let url = berth.url(&format!("/hello/r{round}n{n}"));
            async move { get_json(&client(), &url).await }
        });
        for (status, body) in futures_util::future::join_all(answers).await {
            assert_eq!(status, 200, "{body}");
        }
        assert!(
            !looping.is_finished(),
            "round {round}'s requests were answered only once the loop had ended"
        );
    }
    // The loop runs on to its deadline; the test does not wait for it.
    looping.abort();
}
