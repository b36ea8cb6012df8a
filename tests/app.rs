//! The host's own answers, tested in-process: the app is a value, and the
//! dispatcher takes request values with any body, so no socket and no
//! child process are involved (axum's `examples/testing` does the same).
//! The end-to-end tests check the same answers through the real binary.

use std::path::Path;
use std::sync::Arc;

use berth::App;
use berth::config::Config;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

const CONFIG: &str = r#"
install_bundled = false
admin_token = "in-process-token"
[defaults]
max_body_kib = 1
[plugins.faults]
grants = ["kv"]
deadline_ms = 300
max_concurrent = 1
"#;

/// An app over a fresh data dir with `hello` and `faults` mounted.
async fn app() -> (tempfile::TempDir, Arc<App>) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let plugins = data.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    for name in ["hello", "faults"] {
        let built = Path::new(env!("BERTH_TEST_PLUGINS")).join(format!("{name}.wasm"));
        std::fs::copy(built, plugins.join(format!("{name}.wasm"))).unwrap();
    }
    let mut config = Config::from_toml_str(CONFIG, Path::new("app.toml")).unwrap();
    config.data_dir = data;
    let app = App::start(config).await.unwrap();
    assert_eq!(
        app.plugins.routing().plugins.len(),
        2,
        "both plugins mounted"
    );
    (dir, app)
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
}

async fn send(app: &Arc<App>, request: http::request::Builder, body: impl Into<Bytes>) -> Answer {
    let request = request
        .header("host", "berth.test")
        .body(Full::new(body.into()))
        .unwrap();
    let peer = "127.0.0.1:40000".parse().unwrap();
    let response = berth::dispatch::handle(app.clone(), request, peer).await;
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

fn get(path: &str) -> http::request::Builder {
    http::Request::get(path)
}

/// The host's error body names the request by the id in `x-request-id`.
fn assert_host_error(answer: &Answer, status: StatusCode, says: &str) {
    assert_eq!(answer.status, status, "{}", answer.json);
    let error = answer.json["error"].as_str().unwrap_or_default();
    assert!(error.contains(says), "`{error}` should say `{says}`");
    let id = answer.headers["x-request-id"].to_str().unwrap();
    assert_eq!(answer.json["request_id"], id);
}

#[tokio::test(flavor = "multi_thread")]
async fn plugins_answer_and_every_answer_has_a_request_id() {
    let (_dir, app) = app().await;
    let a = send(&app, get("/hello/ann"), "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json["greeting"], "Hello, ann!");
    let b = send(&app, get("/hello/bob"), "").await;
    let (first, second) = (&a.headers["x-request-id"], &b.headers["x-request-id"]);
    assert_ne!(first, second, "each request gets its own id");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_paths_are_404_and_other_methods_405_with_allow() {
    let (_dir, app) = app().await;
    let missing = send(&app, get("/nothing/here"), "").await;
    assert_host_error(
        &missing,
        StatusCode::NOT_FOUND,
        "no route for GET /nothing/here",
    );
    let wrong = send(&app, http::Request::delete("/hello/ann"), "").await;
    assert_host_error(
        &wrong,
        StatusCode::METHOD_NOT_ALLOWED,
        "DELETE is not allowed",
    );
    assert_eq!(wrong.headers["allow"], "GET");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_over_the_limit_is_413_and_closes_the_connection() {
    let (_dir, app) = app().await;
    let big = vec![b'x'; 2048];
    let a = send(&app, http::Request::post("/echo"), big).await;
    assert_host_error(&a, StatusCode::PAYLOAD_TOO_LARGE, "limit of 1024 bytes");
    assert_eq!(a.headers["connection"], "close");
    let fits = send(&app, http::Request::post("/echo"), r#"{"message":"hi"}"#).await;
    assert_eq!(fits.status, StatusCode::OK, "{}", fits.json);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_past_its_deadline_is_504() {
    let (_dir, app) = app().await;
    let a = send(&app, get("/faults/loop"), "").await;
    assert_host_error(
        &a,
        StatusCode::GATEWAY_TIMEOUT,
        "did not answer within 300 ms",
    );
    let after = send(&app, get("/faults/ok"), "").await;
    assert_eq!(after.status, StatusCode::OK, "the plugin serves on");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_without_a_free_slot_by_the_deadline_is_503() {
    let (_dir, app) = app().await;
    let faults = app.plugins.routing().plugins["faults"].clone();
    // Its one slot, held as a long call would hold it.
    let held = faults.permits.clone().acquire_owned().await.unwrap();
    let a = send(&app, get("/faults/ok"), "").await;
    assert_host_error(
        &a,
        StatusCode::SERVICE_UNAVAILABLE,
        "limit of 1 concurrent calls",
    );
    assert_eq!(a.headers["retry-after"], "1");
    drop(held);
    let b = send(&app, get("/faults/ok"), "").await;
    assert_eq!(b.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_no_route_may_take_are_refused() {
    let (_dir, app) = app().await;
    let trace = send(
        &app,
        http::Request::builder().method("TRACE").uri("/hello/ann"),
        "",
    )
    .await;
    assert_host_error(
        &trace,
        StatusCode::METHOD_NOT_ALLOWED,
        "TRACE is not served",
    );
    let bad = send(&app, get("/hello/%FF"), "").await;
    assert_host_error(&bad, StatusCode::BAD_REQUEST, "not valid UTF-8");
}

#[tokio::test(flavor = "multi_thread")]
async fn host_routes_answer_under_berth() {
    let (_dir, app) = app().await;
    let health = send(&app, get("/_berth/health"), "").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json["status"], "ok");
    assert_eq!(health.json["plugins"], 2);
    let anonymous = send(&app, get("/_berth/plugins"), "").await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let admin = get("/_berth/plugins").header("authorization", "Bearer in-process-token");
    let listed = send(&app, admin, "").await;
    assert_eq!(listed.status, StatusCode::OK);
    let names: Vec<&str> = listed.json["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["faults", "hello"]);
    let openapi = send(&app, get("/_berth/openapi.json"), "").await;
    assert!(openapi.json["paths"]["/hello/{name}"]["get"].is_object());
    let unknown = send(&app, get("/_berth/nothing"), "").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}
