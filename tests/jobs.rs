//! Background jobs: queued with the request's writes, run by the host,
//! retried with backoff, kept as dead and retried by the operator, and run
//! again after a crash.

mod support;

use std::time::Duration;

use support::{Berth, client, drop_file, jobber_done as done, plugin_wasm, poll};

const CONFIG: &str = r#"
install_bundled = false
[jobs]
max_attempts = 3
backoff_ms = 20
[plugins.jobber]
grants = ["kv", "jobs"]
"#;
const WAIT: Duration = Duration::from_secs(30);

fn start(dir: &std::path::Path) -> Berth {
    let plugins = dir.join("data/plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    drop_file(&plugin_wasm("jobber"), &plugins.join("jobber.wasm"));
    Berth::start(dir, CONFIG)
}

async fn jobs_view(c: &reqwest::Client, berth: &Berth) -> serde_json::Value {
    support::admin_view(c, berth, "/_berth/jobs").await
}

#[tokio::test]
async fn queued_jobs_run_and_a_trapped_request_queues_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let berth = start(dir.path());
    let c = client();

    let r = c
        .post(berth.url("/jobber/enqueue-then-trap/lost"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    for _ in 0..3 {
        let r = c
            .post(berth.url("/jobber/enqueue/count/a"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    poll(WAIT, "three count jobs to run", || async {
        (done(&c, &berth, "a").await == 3).then_some(())
    })
    .await;
    assert_eq!(
        done(&c, &berth, "lost").await,
        0,
        "the trapped request's job was never queued"
    );
    let view = jobs_view(&c, &berth).await;
    assert_eq!(view["dead"], serde_json::json!([]), "{view}");
    let out = berth.cli(&["jobs"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("no jobs"), "{out:?}");
}

#[tokio::test]
async fn failing_jobs_are_retried_then_dead_then_retried_by_the_operator() {
    let dir = tempfile::tempdir().unwrap();
    let berth = start(dir.path());
    let c = client();

    c.post(berth.url("/jobber/enqueue/flaky/f"))
        .send()
        .await
        .unwrap();
    c.post(berth.url("/jobber/enqueue/trap/t"))
        .send()
        .await
        .unwrap();
    let view = poll(WAIT, "both jobs to be dead", || async {
        let view = jobs_view(&c, &berth).await;
        (view["counts"]["jobber"]["dead"] == 2).then_some(view)
    })
    .await;
    let dead = view["dead"].as_array().unwrap();
    let flaky = dead.iter().find(|j| j["kind"] == "flaky").unwrap();
    assert_eq!(flaky["attempts"], 3, "{view}");
    assert_eq!(flaky["last_error"], "f is not allowed yet");
    let trap = dead.iter().find(|j| j["kind"] == "trap").unwrap();
    assert!(
        trap["last_error"].as_str().unwrap().contains("trapped"),
        "{view}"
    );

    let out = berth.cli(&["jobs"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("jobber: 0 queued, 0 running, 2 dead"),
        "{text}"
    );
    assert!(text.contains("f is not allowed yet"), "{text}");

    c.post(berth.url("/jobber/allow/f")).send().await.unwrap();
    let id = flaky["id"].to_string();
    let out = berth.cli(&["jobs", "retry", &id]);
    assert!(out.status.success(), "{out:?}");
    poll(WAIT, "the retried job to succeed", || async {
        (done(&c, &berth, "f").await == 1).then_some(())
    })
    .await;

    let out = berth.cli(&["jobs", "retry", "999999"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no job with id 999999"));
}

#[tokio::test]
async fn queued_jobs_survive_kill_9_and_run_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut berth = start(dir.path());
    let c = client();
    for _ in 0..5 {
        let r = c
            .post(berth.url("/jobber/enqueue/count/k?delay=1000"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let r = c
        .post(berth.url("/jobber/enqueue/count/later?delay=600000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    berth.kill9();

    let berth = start(dir.path());
    poll(
        WAIT,
        "every acknowledged job to run after the restart",
        || async { (done(&c, &berth, "k").await == 5).then_some(()) },
    )
    .await;
    let view = jobs_view(&c, &berth).await;
    assert_eq!(
        view["counts"]["jobber"]["queued"], 1,
        "the far-delayed job still waits: {view}"
    );
    assert_eq!(done(&c, &berth, "later").await, 0);
}
