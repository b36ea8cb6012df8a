//! The hello plugin end to end: routes, params, JSON, the KV counter and
//! its durability, the admin command, the host's own routes. The tests of
//! hello's behaviour run against each build of it: the Rust one bundled
//! with Berth, the Python one (`examples/hello-py`, built here with
//! componentize-py) and the JavaScript one (`examples/hello-js`, built
//! here with componentize-js).

mod support;

use std::path::Path;
use std::time::Duration;

use support::{Berth, client, get_json, get_text, post_json};

const CONFIG: &str = "watch_interval_ms = 50\n";

/// A build of hello.
#[derive(Clone, Copy)]
enum Build {
    /// The Rust one, bundled with Berth.
    Rust,
    /// examples/hello-py.
    Python,
    /// examples/hello-js.
    JavaScript,
}

impl Build {
    /// Berth in `dir` serving this build of hello: the bundled one, or
    /// this one alone, dropped into the plugins folder once Berth runs
    /// (compiling a language runtime can take longer than a start may) and
    /// waited for; a restart finds it there, compiled in the cache.
    async fn start(self, dir: &Path) -> Berth {
        let wasm = match self {
            Build::Rust => return Berth::start(dir, CONFIG),
            Build::Python => tokio::task::spawn_blocking(support::components::py_hello),
            Build::JavaScript => tokio::task::spawn_blocking(support::components::js_hello),
        };
        let wasm = wasm.await.unwrap();
        let berth = Berth::start(dir, &format!("install_bundled = false\n{CONFIG}"));
        let target = berth.plugins_dir().join("hello.wasm");
        if !target.exists() {
            support::drop_file(&wasm, &target);
            // Asked of the host, not of hello: its request counts stay
            // the test's own.
            let c = client();
            support::poll(Duration::from_secs(600), "hello to mount", || async {
                let view = support::admin_view(&c, &berth, "/_berth/plugins").await;
                names(&view).contains(&"hello").then_some(())
            })
            .await;
        }
        berth
    }
}

/// Each of these tests, once per build of hello.
macro_rules! for_each_build {
    ($($test:ident),* $(,)?) => {
        mod rust {
            $(#[tokio::test]
            async fn $test() {
                super::$test(super::Build::Rust).await
            })*
        }
        mod python {
            $(#[tokio::test]
            async fn $test() {
                super::$test(super::Build::Python).await
            })*
        }
        mod javascript {
            $(#[tokio::test]
            async fn $test() {
                super::$test(super::Build::JavaScript).await
            })*
        }
    };
}

for_each_build!(
    hello_routes_answer_and_the_counter_survives_a_restart,
    more_requests_than_the_pool_has_instances_all_succeed,
    kill_9_right_after_acknowledged_writes_loses_nothing,
    berth_run_reaches_the_plugins_admin_export,
);

async fn hello_routes_answer_and_the_counter_survives_a_restart(build: Build) {
    let dir = tempfile::tempdir().unwrap();
    let mut berth = build.start(dir.path()).await;
    let c = client();

    let (status, body) = get_json(&c, &berth.url("/hello/J%C3%BCrgen")).await;
    assert_eq!(status, 200);
    assert_eq!(body["greeting"], "Hello, Jürgen!");

    for expected in 1..=3 {
        let (status, body) = post_json(&c, &berth.url("/hello/ann/visits")).await;
        assert_eq!((status, body["visits"].as_i64()), (200, Some(expected)));
    }
    let (_, body) = get_json(&c, &berth.url("/hello/ann/visits")).await;
    assert_eq!(body, serde_json::json!({ "name": "ann", "visits": 3 }));
    let (_, body) = get_json(&c, &berth.url("/hello/bob/visits")).await;
    assert_eq!(body["visits"], 0, "counters are per name");

    let r = c
        .post(berth.url("/echo"))
        .json(&serde_json::json!({ "message": "héllo" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert!(r.headers().contains_key("x-request-id"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body, serde_json::json!({ "echo": "héllo", "length": 5 }));

    let r = c
        .post(berth.url("/echo"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("invalid JSON body"),
        "{body}"
    );

    assert!(
        berth.log().contains("compile_cache=\"miss\""),
        "first start compiles"
    );
    assert!(berth.stop(), "SIGTERM gives a clean exit");
    let berth = build.start(dir.path()).await;
    let log = berth.log();
    assert!(
        log.contains("compile_cache=\"hit\""),
        "a restart loads the compiled code from the cache: {log}"
    );
    let (_, body) = get_json(&c, &berth.url("/hello/ann/visits")).await;
    assert_eq!(body["visits"], 3, "the counter survives a restart");
}

/// A call's store is torn down after its response is sent: every one must
/// still go back to the pool, or requests past its size would fail.
async fn more_requests_than_the_pool_has_instances_all_succeed(build: Build) {
    let dir = tempfile::tempdir().unwrap();
    let berth = build.start(dir.path()).await;
    let c = client();
    let total = berth::runtime::POOL_INSTANCES as usize + 200;
    let mut failed = Vec::new();
    for i in 0..total {
        let r = c
            .get(berth.url(&format!("/hello/n{i}")))
            .send()
            .await
            .unwrap();
        if r.status() != 200 {
            failed.push((i, r.status(), r.text().await.unwrap()));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {total} failed, first: {:?}",
        failed.len(),
        failed.first()
    );
    let metrics = get_text(&c, &berth.url("/_berth/metrics")).await;
    let served = format!("berth_requests_total{{plugin=\"hello\",code=\"2xx\"}} {total}");
    assert!(metrics.contains(&served), "metrics lack `{served}`");
}

async fn kill_9_right_after_acknowledged_writes_loses_nothing(build: Build) {
    let dir = tempfile::tempdir().unwrap();
    let mut berth = build.start(dir.path()).await;
    let c = client();
    // Concurrent writers, so commits are grouped; every 200 must survive.
    let mut tasks = Vec::new();
    for writer in 0..8 {
        let c = c.clone();
        let url = berth.url(&format!("/hello/w{writer}/visits"));
        tasks.push(tokio::spawn(async move {
            let mut acknowledged = 0;
            for _ in 0..25 {
                let (status, body) = post_json(&c, &url).await;
                assert_eq!(status, 200);
                acknowledged += 1;
                assert_eq!(body["visits"], acknowledged);
            }
            acknowledged
        }));
    }
    let mut acknowledged = Vec::new();
    for t in tasks {
        acknowledged.push(t.await.unwrap());
    }
    berth.kill9();

    let berth = build.start(dir.path()).await;
    for (writer, count) in acknowledged.iter().enumerate() {
        let (_, body) = get_json(&c, &berth.url(&format!("/hello/w{writer}/visits"))).await;
        assert_eq!(body["visits"], *count, "writer {writer}");
    }
}

async fn berth_run_reaches_the_plugins_admin_export(build: Build) {
    let dir = tempfile::tempdir().unwrap();
    let berth = build.start(dir.path()).await;
    let c = client();
    post_json(&c, &berth.url("/hello/cli/visits")).await;
    post_json(&c, &berth.url("/hello/cli/visits")).await;

    let out = berth.cli(&["run", "hello", "visits", "cli"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "cli: 2");

    let out = berth.cli(&["run", "hello", "reset", "cli"]);
    assert!(out.status.success(), "{out:?}");
    let (_, body) = get_json(&c, &berth.url("/hello/cli/visits")).await;
    assert_eq!(
        body["visits"], 0,
        "the admin command's writes are committed"
    );

    let out = berth.cli(&["run", "hello", "bogus"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("usage: berth run hello"),
        "{out:?}"
    );

    let out = berth.cli(&["run", "nope", "x"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no plugin named `nope`") && err.contains("hello"),
        "{err}"
    );
}

#[tokio::test]
async fn plugins_cli_and_host_routes_show_what_is_mounted() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(dir.path(), CONFIG);
    let c = client();

    let out = berth.cli(&["plugins"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("hello 0.1.0") && text.contains("asked:   kv, config, log"),
        "{text}"
    );
    assert!(text.contains("/hello/{name}/visits"), "{text}");

    let hello = berth.plugins_dir().join("hello.wasm");
    let out = berth.cli(&["plugins", "check", hello.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("granted: kv, config, log"));
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x0d\0\x01\0garbage").unwrap();
    let out = berth.cli(&["plugins", "check", junk.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused"),
        "{out:?}"
    );

    let r = c.get(berth.url("/_berth/plugins")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let view = support::admin_view(&c, &berth, "/_berth/plugins").await;
    assert_eq!(
        names(&view),
        ["beacons", "commands", "droplets", "hello", "stacks"],
        "the bundled plugins"
    );
    let granted = |name: &str| {
        view["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()["capabilities"]["granted"]
            .clone()
    };
    assert_eq!(granted("hello"), serde_json::json!(["kv", "config", "log"]));
    assert_eq!(
        granted("commands"),
        serde_json::json!(["kv", "config", "crypto", "log", "jobs", "dokku", "http-out"])
    );
    assert_eq!(
        granted("droplets"),
        serde_json::json!(["kv", "config", "crypto", "log", "docker"])
    );

    let (status, body) = get_json(&c, &berth.url("/_berth/health")).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    assert_eq!(body["replicas"], 1, "alone: {body}");
    assert_eq!(body["replica"].as_str().map(str::len), Some(12), "{body}");
    let (_, api) = get_json(&c, &berth.url("/_berth/openapi.json")).await;
    assert_eq!(
        api["paths"]["/hello/{name}"]["get"]["operationId"],
        "hello.greet"
    );

    get_json(&c, &berth.url("/hello/m")).await;
    let metrics = get_text(&c, &berth.url("/_berth/metrics")).await;
    assert!(
        metrics.contains("berth_requests_total{plugin=\"hello\",code=\"2xx\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("berth_instantiate_duration_seconds_count{plugin=\"hello\"} 1"),
        "{metrics}"
    );

    let (status, body) = get_json(&c, &berth.url("/nowhere")).await;
    assert_eq!(status, 404);
    assert!(body["request_id"].is_string(), "{body}");
    let r = c.delete(berth.url("/hello/x")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET");
}

/// Upgrading Berth: the bundled plugins it wrote before and nobody changed
/// are replaced by the new binary's; one the operator removed stays out,
/// and one the operator replaced with their own build stays theirs.
#[tokio::test]
async fn an_upgrade_updates_the_bundled_plugins_berth_wrote_and_no_others() {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let mut berth = Berth::start(dir.path(), CONFIG);
    assert!(berth.stop(), "a clean stop");
    let plugins = berth.plugins_dir();
    let record = plugins.join(".bundled");
    assert!(
        std::fs::read_to_string(&record)
            .unwrap()
            .contains("  hello.wasm\n"),
        "Berth records what it wrote"
    );
    // What an older Berth would have left: its own hello (here, hello 2.0
    // stands in for it), recorded as written by Berth...
    let older = std::fs::read(support::plugin_wasm("hello2")).unwrap();
    std::fs::write(plugins.join("hello.wasm"), &older).unwrap();
    let text = std::fs::read_to_string(&record).unwrap();
    let text: String = text
        .lines()
        .map(|line| match line.ends_with("  hello.wasm") {
            true => format!("{}  hello.wasm\n", hex::encode(Sha256::digest(&older))),
            false => format!("{line}\n"),
        })
        .collect();
    std::fs::write(&record, text).unwrap();
    // ...and an operator who removed beacons and built their own droplets.
    std::fs::remove_file(plugins.join("beacons.wasm")).unwrap();
    let mut theirs = std::fs::read(plugins.join("droplets.wasm")).unwrap();
    // A custom section at the end ("mine", empty) keeps it a valid component.
    theirs.extend_from_slice(&[0, 5, 4, b'm', b'i', b'n', b'e']);
    std::fs::write(plugins.join("droplets.wasm"), &theirs).unwrap();

    let berth = Berth::start(dir.path(), CONFIG);
    let c = client();
    let (status, body) = get_json(&c, &berth.url("/hello/ann")).await;
    assert_eq!(
        (status, &body["greeting"]),
        (200, &serde_json::json!("Hello, ann!"))
    );
    assert!(body.get("version").is_none(), "the bundled hello: {body}");
    assert!(
        !plugins.join("beacons.wasm").exists(),
        "removed stays removed"
    );
    assert_eq!(
        std::fs::read(plugins.join("droplets.wasm")).unwrap(),
        theirs,
        "the operator's build stays"
    );
    let log = berth.log();
    assert!(log.contains("updated the bundled plugin"), "{log}");
    assert!(log.contains("not the bundled plugin; kept"), "{log}");
    assert!(
        log.contains("the bundled plugin was removed; left out"),
        "{log}"
    );
    let view = support::admin_view(&c, &berth, "/_berth/plugins").await;
    assert_eq!(names(&view), ["commands", "droplets", "hello", "stacks"]);
}

/// The mounted plugins' names in a `/_berth/plugins` view.
fn names(view: &serde_json::Value) -> Vec<&str> {
    view["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect()
}

/// The signal handlers are in place before Berth says it listens: a
/// SIGTERM at once still stops it gracefully (exit 0), never by the
/// signal's default action.
#[test]
fn a_sigterm_right_after_listening_stops_berth_gracefully() {
    for _ in 0..8 {
        let dir = tempfile::tempdir().unwrap();
        let mut berth = Berth::start(dir.path(), "install_bundled = false\n");
        assert!(berth.stop(), "{}", berth.log());
    }
}
