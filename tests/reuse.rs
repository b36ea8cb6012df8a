//! Instance reuse, the operator's choice: an instance serves up to
//! `instance_reuse` calls of its plugin version, one at a time; one that
//! trapped, timed out, ran out of memory or grew past a quarter of its cap
//! is never reused, nor is an old version's, nor one idle past its timeout.
//! The `faults` fixture's `/faults/calls` counts in a global the calls its
//! instance has served, so each answer tells which instance served it.

mod support;

use std::path::Path;
use std::time::Duration;

use support::{Berth, client, drop_file, get_json, get_text, plugin_wasm, poll};

fn config(reuse: &str) -> String {
    format!(
        "install_bundled = false\nwatch_interval_ms = 50\n\
         [plugins.faults]\ngrants = [\"kv\"]\ndeadline_ms = 500\nmemory_mib = 32\n{reuse}"
    )
}

fn start(dir: &Path, config: &str, args: &[&str]) -> Berth {
    let plugins = dir.join("data/plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    drop_file(&plugin_wasm("faults"), &plugins.join("faults.wasm"));
    Berth::start_with(dir, config, args)
}

/// The count of calls of the instance that served `path`.
async fn calls(c: &reqwest::Client, berth: &Berth, path: &str) -> u64 {
    let (status, body) = get_json(c, &berth.url(path)).await;
    assert_eq!(status, 200, "{path}: {body}");
    body["calls"].as_u64().unwrap()
}

async fn sequence(c: &reqwest::Client, berth: &Berth, n: usize) -> Vec<u64> {
    let mut seen = Vec::new();
    for _ in 0..n {
        seen.push(calls(c, berth, "/faults/calls").await);
    }
    seen
}

fn metric(text: &str, name: &str, plugin: &str) -> u64 {
    let prefix = format!("{name}{{plugin=\"{plugin}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in the metrics"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn an_instance_serves_up_to_its_calls_when_the_operator_allows_it() {
    let c = client();

    let dir = tempfile::tempdir().unwrap();
    let berth = start(dir.path(), &config("instance_reuse = 3"), &[]);
    assert_eq!(sequence(&c, &berth, 7).await, [1, 2, 3, 1, 2, 3, 1]);
    let out = berth.cli(&["plugins"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("instances: reused, up to 3 calls each"),
        "{text}"
    );
    let metrics = get_text(&c, &berth.url("/_berth/metrics")).await;
    assert_eq!(
        metric(&metrics, "berth_instances_reused_total", "faults"),
        4
    );
    assert!(
        metrics.contains("berth_instantiate_duration_seconds_count{plugin=\"faults\"} 3"),
        "{metrics}"
    );

    // Fresh per call: the plugin's own setting wins over the flag.
    let dir = tempfile::tempdir().unwrap();
    let berth = start(
        dir.path(),
        &config("instance_reuse = 1"),
        &["--instance-reuse", "50"],
    );
    assert_eq!(sequence(&c, &berth, 3).await, [1, 1, 1]);
    let out = berth.cli(&["plugins"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("instances: fresh per call"));

    // The flag sets the default.
    let dir = tempfile::tempdir().unwrap();
    let berth = start(dir.path(), &config(""), &["--instance-reuse", "2"]);
    assert_eq!(sequence(&c, &berth, 3).await, [1, 2, 1]);
}

#[tokio::test]
async fn an_instance_that_failed_or_grew_is_never_reused() {
    let c = client();
    let dir = tempfile::tempdir().unwrap();
    let berth = start(dir.path(), &config("instance_reuse = 1000"), &[]);
    assert_eq!(sequence(&c, &berth, 2).await, [1, 2]);

    let faults = [
        ("/faults/trap", 500),
        ("/faults/loop", 504),
        ("/faults/bomb", 500),
    ];
    for (path, status) in faults {
        let (got, body) = get_json(&c, &berth.url(path)).await;
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(
            sequence(&c, &berth, 2).await,
            [1, 2],
            "after {path}, a new instance"
        );
    }

    // Memory within a quarter of the 32 MiB cap keeps the instance; past
    // it, the instance serves that call and goes.
    assert_eq!(calls(&c, &berth, "/faults/hold?mib=1").await, 3);
    assert_eq!(calls(&c, &berth, "/faults/calls").await, 4);
    assert_eq!(calls(&c, &berth, "/faults/hold?mib=10").await, 5);
    assert_eq!(calls(&c, &berth, "/faults/calls").await, 1);

    // A trapped call's writes are still rolled back.
    let (status, _) = c
        .post(berth.url("/faults/write-then-trap/k"))
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(status, 500);
    let (_, body) = get_json(&c, &berth.url("/faults/read/k")).await;
    assert_eq!(body["value"], serde_json::Value::Null);
}

#[tokio::test]
async fn a_new_version_never_gets_the_old_ones_instances() {
    let c = client();
    let dir = tempfile::tempdir().unwrap();
    let berth = start(dir.path(), &config("instance_reuse = 1000"), &[]);
    assert_eq!(sequence(&c, &berth, 3).await, [1, 2, 3]);

    // The same plugin with a custom section appended: another version.
    let mut wasm = std::fs::read(plugin_wasm("faults")).unwrap();
    wasm.extend_from_slice(&[0, 5, 4, b'n', b'e', b'x', b't']);
    let next = dir.path().join("faults-next.wasm");
    std::fs::write(&next, &wasm).unwrap();
    let hash = |view: &serde_json::Value| view["plugins"][0]["sha256"].as_str().map(String::from);
    let plugins_view = || async {
        c.get(berth.url("/_berth/plugins"))
            .bearer_auth(berth.admin_token())
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    let before = hash(&plugins_view().await).unwrap();
    drop_file(&next, &berth.plugins_dir().join("faults.wasm"));
    poll(Duration::from_secs(30), "the new version", || async {
        hash(&plugins_view().await).filter(|h| *h != before)
    })
    .await;
    assert_eq!(sequence(&c, &berth, 2).await, [1, 2]);
}

#[tokio::test]
async fn idle_instances_are_torn_down() {
    let c = client();
    let dir = tempfile::tempdir().unwrap();
    let berth = start(dir.path(), &config("instance_reuse = 1000"), &[]);
    assert_eq!(sequence(&c, &berth, 2).await, [1, 2]);
    // Ten seconds idle, and the sweep once a second: wait for the host to
    // say it keeps none, without a call that would use the one it keeps.
    poll(
        Duration::from_secs(60),
        "the idle instance torn down",
        || async {
            let view = support::admin_view(&c, &berth, "/_berth/plugins").await;
            (view["plugins"][0]["idle_instances"] == 0).then_some(())
        },
    )
    .await;
    assert_eq!(sequence(&c, &berth, 2).await, [1, 2]);
}

#[tokio::test]
async fn racing_calls_each_have_an_instance_of_their_own() {
    let c = client();
    let dir = tempfile::tempdir().unwrap();
    let berth = start(
        dir.path(),
        &config("instance_reuse = 1000\nmax_concurrent = 8"),
        &[],
    );
    let url = berth.url("/faults/calls");
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..25 {
                    let (status, body) = get_json(&c, &url).await;
                    // Over the 8 slots, a call waits for one within its deadline.
                    assert_eq!(status, 200, "{body}");
                    seen.push(body["calls"].as_u64().unwrap());
                }
                seen
            })
        })
        .collect();
    let mut seen = Vec::new();
    for task in tasks {
        seen.extend(task.await.unwrap());
    }
    // Each instance counts 1, 2, 3, ... one call at a time: a count is
    // never seen more often than the one before it, and no more instances
    // were made than calls may run at once.
    let count = |n: u64| seen.iter().filter(|&&s| s == n).count();
    let instances = count(1);
    assert!((1..=8).contains(&instances), "{instances} instances");
    let top = *seen.iter().max().unwrap();
    for n in 2..=top {
        assert!(count(n) <= count(n - 1), "count {n}: {seen:?}");
    }
    let metrics = get_text(&c, &berth.url("/_berth/metrics")).await;
    assert_eq!(
        metric(&metrics, "berth_instances_reused_total", "faults"),
        (400 - instances) as u64
    );
}

/// CI runs the suite a second time with `BERTH_INSTANCE_REUSE=128`: every
/// berth the tests start inherits it, unless its config or flags say
/// otherwise. This checks that the run is what it claims to be.
#[tokio::test]
async fn the_environment_sets_the_default() {
    let reuse: u64 = std::env::var("BERTH_INSTANCE_REUSE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let c = client();
    let dir = tempfile::tempdir().unwrap();
    let berth = start(dir.path(), &config(""), &[]);
    let expected: Vec<u64> = (0..3).map(|i| i % reuse + 1).collect();
    assert_eq!(sequence(&c, &berth, 3).await, expected);
}
