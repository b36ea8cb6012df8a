//! `examples/linkcheck-py`, a Berth plugin in Python (built here with
//! componentize-py) that uses KV, jobs and http-out: a check is recorded,
//! its job fetches the URL through the operator's allow-list, and a URL
//! outside it is recorded as refused.

mod support;

use std::time::Duration;

use support::{Berth, client, drop_file, get_json, poll};

#[tokio::test]
async fn a_check_is_fetched_by_its_job_through_the_allow_list() {
    let wasm = tokio::task::spawn_blocking(support::components::py_linkcheck)
        .await
        .unwrap();
    let (port, _) = support::upstream("hello there").await;
    let dir = tempfile::tempdir().unwrap();
    let config = "install_bundled = false\nwatch_interval_ms = 50\n\n\
                  [http_out]\nallow = [\"127.0.0.1\"]\nallow_private = [\"127.0.0.1\"]\n\n\
                  [plugins.linkcheck]\ngrants = [\"kv\", \"jobs\", \"http-out\"]\n";
    let berth = Berth::start(dir.path(), config);
    let c = client();
    // Dropped in once Berth runs: compiling Python takes a while.
    drop_file(&wasm, &berth.plugins_dir().join("linkcheck.wasm"));
    poll(Duration::from_secs(600), "linkcheck to mount", || async {
        let r = c.get(berth.url("/checks")).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;

    let mut ids = Vec::new();
    for url in [
        format!("http://127.0.0.1:{port}/page"),
        "http://example.invalid/".to_string(),
    ] {
        let r = c
            .post(berth.url("/checks"))
            .json(&serde_json::json!({ "url": url }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let check: serde_json::Value = r.json().await.unwrap();
        assert_eq!(check["state"], "queued");
        ids.push(check["id"].as_i64().unwrap());
    }
    let finished = |id: i64| {
        let (c, url) = (c.clone(), berth.url(&format!("/checks/{id}")));
        async move {
            let (_, check) = get_json(&c, &url).await;
            (check["state"] != "queued").then_some(check)
        }
    };
    let done = poll(Duration::from_secs(60), "the first check's job", || {
        finished(ids[0])
    })
    .await;
    assert_eq!(
        (
            done["state"].as_str(),
            done["status"].as_i64(),
            done["bytes"].as_i64()
        ),
        (Some("done"), Some(200), Some(11)),
        "{done}"
    );
    let refused = poll(Duration::from_secs(60), "the second check's job", || {
        finished(ids[1])
    })
    .await;
    assert_eq!(refused["state"], "failed", "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("allow-list"),
        "{refused}"
    );

    let (status, all) = get_json(&c, &berth.url("/checks")).await;
    assert_eq!((status, all.as_array().map(Vec::len)), (200, Some(2)));
    let (status, body) = get_json(&c, &berth.url("/checks/99")).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("no check 99")));
    let out = berth.cli(&["run", "linkcheck", "count"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2 checks");
}
