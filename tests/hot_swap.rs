//! The watched plugins folder: mount on drop, replace, refuse corrupt
//! files and route conflicts while the old version keeps serving, unmount
//! on removal.

mod support;

use std::time::Duration;

use support::{Berth, client, drop_file, get_json, plugin_wasm, poll};

const CONFIG: &str = "install_bundled = false\nwatch_interval_ms = 50\n";
const WAIT: Duration = Duration::from_secs(30);

async fn refusal(c: &reqwest::Client, berth: &Berth, file: &str) -> Option<String> {
    let view: serde_json::Value = c
        .get(berth.url("/_berth/plugins"))
        .bearer_auth(berth.admin_token())
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    view["files"]
        .as_array()?
        .iter()
        .find(|f| f["file"].as_str().is_some_and(|p| p.ends_with(file)))
        .and_then(|f| f["last_refusal"]["reason"].as_str().map(String::from))
}

#[tokio::test]
async fn the_plugins_folder_is_watched() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(dir.path(), CONFIG);
    let c = client();
    let target = berth.plugins_dir().join("hello.wasm");
    let greet = berth.url("/hello/ops");

    let (status, _) = get_json(&c, &greet).await;
    assert_eq!(status, 404, "nothing is mounted yet");

    drop_file(&plugin_wasm("hello"), &target);
    let body = poll(WAIT, "hello to mount", || async {
        let (status, body) = get_json(&c, &greet).await;
        (status == 200).then_some(body)
    })
    .await;
    assert_eq!(body["greeting"], "Hello, ops!");

    drop_file(&plugin_wasm("hello2"), &target);
    poll(WAIT, "hello 2.0.0 to replace 0.1.0", || async {
        let (_, body) = get_json(&c, &greet).await;
        (body["version"] == 2).then_some(())
    })
    .await;

    // A corrupt file is refused, and the version it replaced keeps serving.
    std::fs::write(&target, b"this is not wasm").unwrap();
    let reason = poll(WAIT, "the corrupt file to be refused", || {
        refusal(&c, &berth, "hello.wasm")
    })
    .await;
    assert!(reason.contains("not a WebAssembly file"), "{reason}");
    let (status, body) = get_json(&c, &greet).await;
    assert_eq!((status, body["version"].as_i64()), (200, Some(2)));
    let log = berth.log();
    assert!(
        log.contains("refused plugin file") && log.contains("hello.wasm"),
        "{log}"
    );

    // A second plugin claiming hello's route is refused, naming both.
    drop_file(
        &plugin_wasm("clash"),
        &berth.plugins_dir().join("clash.wasm"),
    );
    let reason = poll(WAIT, "clash to be refused", || {
        refusal(&c, &berth, "clash.wasm")
    })
    .await;
    assert!(
        reason.contains("plugin `clash`") && reason.contains("plugin `hello`"),
        "{reason}"
    );
    assert!(
        reason.contains("/hello/{who}") && reason.contains("/hello/{name}"),
        "{reason}"
    );
    let (_, body) = get_json(&c, &greet).await;
    assert_eq!(body["version"], 2, "hello keeps its route");

    // Removing the file unmounts its routes.
    std::fs::remove_file(&target).unwrap();
    poll(WAIT, "hello to unmount", || async {
        let (status, _) = get_json(&c, &greet).await;
        (status == 404).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_second_file_with_a_mounted_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(dir.path(), CONFIG);
    let c = client();
    drop_file(
        &plugin_wasm("hello"),
        &berth.plugins_dir().join("hello.wasm"),
    );
    poll(WAIT, "hello to mount", || async {
        (get_json(&c, &berth.url("/hello/x")).await.0 == 200).then_some(())
    })
    .await;
    drop_file(
        &plugin_wasm("hello2"),
        &berth.plugins_dir().join("hello-copy.wasm"),
    );
    let reason = poll(WAIT, "the duplicate to be refused", || {
        refusal(&c, &berth, "hello-copy.wasm")
    })
    .await;
    assert!(
        reason.contains("plugin name `hello` is already mounted from"),
        "{reason}"
    );
    assert_eq!(
        get_json(&c, &berth.url("/hello/x")).await.1["greeting"],
        "Hello, x!"
    );
}
