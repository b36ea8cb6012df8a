//! The `docker` capability and the `proxy-docker` outcome, through the
//! `dockerprobe` fixture plugin, against a real engine: named endpoints
//! over a unix socket and TCP+TLS, plugin-registered endpoints under the
//! operator's allow-list, grants, and byte-for-byte streaming.

mod support;

use std::time::Duration;

use futures_core::Stream;
use serde_json::{Value, json};
use support::docker::{self, Engine};
use support::{Berth, client};

fn config(engine: &Engine, grants: &str) -> String {
    let mut text = format!(
        "[docker]\nlocal = \"{}\"\nallow = [\"tcp://127.0.0.1:*\"]\n\n[plugins.dockerprobe]\ngrants = {grants}\n",
        engine.host
    );
    if let Some(tls) = &engine.tls {
        text.push_str(&format!(
            "\n[docker.endpoints.secure]\naddress = \"{}\"\ntls_ca = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            tls.address,
            tls.ca.display(),
            tls.cert.display(),
            tls.key.display()
        ));
    }
    text
}

/// berth with the probe plugin mounted.
async fn start(dir: &std::path::Path, engine: &Engine, grants: &str) -> Berth {
    let berth = Berth::start(dir, &config(engine, grants));
    support::mount(&berth, "dockerprobe", "/probe/none/containers").await;
    berth
}

async fn call(
    http: &reqwest::Client,
    method: &str,
    url: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = http.request(method, url);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn ids(list: &Value) -> Vec<String> {
    let mut ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["Id"].as_str().or(c["id"].as_str()).unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_endpoints_and_the_allow_list() {
    let Some(engine) = docker::shared() else {
        return;
    };
    let Some(tls) = &engine.tls else {
        panic!("the TLS endpoint test needs the private engine; unset DOCKER_HOST");
    };
    let dir = tempfile::tempdir().unwrap();
    let berth = start(dir.path(), engine, r#"["docker", "docker-endpoints"]"#).await;
    let http = client();

    // The operator's TLS endpoint and the socket see the same engine.
    let (status, over_tls) = call(&http, "GET", &berth.url("/probe/secure/containers"), None).await;
    assert_eq!(status, 200, "{over_tls}");
    let (status, local) = call(&http, "GET", &berth.url("/probe/local/containers"), None).await;
    assert_eq!(status, 200, "{local}");
    let (status, info) = call(&http, "GET", &berth.url("/probe/secure/info"), None).await;
    assert_eq!(status, 200, "{info}");
    assert!(info["ID"].is_string(), "{info}");

    // A plugin-registered TLS endpoint, inside the allow-list.
    let pem = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
    let material = json!({
        "address": tls.address,
        "ca": pem(&tls.ca),
        "cert": pem(&tls.cert),
        "key": pem(&tls.key),
    });
    let (status, body) = call(
        &http,
        "POST",
        &berth.url("/probe/endpoints/mine"),
        Some(material.clone()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, info) = call(&http, "GET", &berth.url("/probe/mine/info"), None).await;
    assert_eq!(status, 200, "{info}");

    // The wrong CA: registered (the PEM is valid) but the handshake fails.
    let stranger = rcgen::generate_simple_self_signed(vec!["elsewhere".into()]).unwrap();
    let mut wrong = material.clone();
    wrong["ca"] = json!(stranger.cert.pem());
    let (status, _) = call(
        &http,
        "POST",
        &berth.url("/probe/endpoints/wrong-ca"),
        Some(wrong),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = call(&http, "GET", &berth.url("/probe/wrong-ca/info"), None).await;
    assert_eq!(status, 503, "{body}");
    // Garbage TLS material is refused at registration.
    let mut garbage = material.clone();
    garbage["ca"] = json!("not a certificate");
    let (status, body) = call(
        &http,
        "POST",
        &berth.url("/probe/endpoints/junk"),
        Some(garbage),
    )
    .await;
    assert_eq!(status, 400, "{body}");

    // Outside the allow-list, or shadowing an operator endpoint: refused.
    for (name, address, want) in [
        ("far", "tcp://10.1.2.3:2376", 403),
        ("sock", "unix:///var/run/docker.sock", 403),
        ("local", &tls.address, 400),
        ("bad", "http://127.0.0.1:1", 400),
    ] {
        let (status, body) = call(
            &http,
            "POST",
            &berth.url(&format!("/probe/endpoints/{name}")),
            Some(json!({ "address": address })),
        )
        .await;
        assert_eq!(status, want, "{name} {address}: {body}");
    }
    let (status, _) = call(&http, "GET", &berth.url("/probe/far/info"), None).await;
    assert_eq!(status, 400, "an endpoint never registered is unknown");

    // Registered endpoints survive a restart; removal forgets them.
    let mut berth = berth;
    assert!(berth.stop());
    let berth = start(dir.path(), engine, r#"["docker", "docker-endpoints"]"#).await;
    let (status, _) = call(&http, "GET", &berth.url("/probe/mine/info"), None).await;
    assert_eq!(status, 200);
    let (status, body) = call(&http, "DELETE", &berth.url("/probe/endpoints/mine"), None).await;
    assert_eq!((status, body), (200, json!({ "removed": true })));
    let (status, _) = call(&http, "GET", &berth.url("/probe/mine/info"), None).await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_grant_docker_is_denied() {
    let Some(engine) = docker::shared() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let berth = start(dir.path(), engine, r#"["docker"]"#).await;
    let http = client();
    let (status, body) = call(
        &http,
        "POST",
        &berth.url("/probe/endpoints/x"),
        Some(json!({ "address": "tcp://127.0.0.1:1" })),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("docker-endpoints"),
        "{body}"
    );
    drop(berth);

    let dir = tempfile::tempdir().unwrap();
    let berth = start(dir.path(), engine, "[]").await;
    let (status, body) = call(&http, "GET", &berth.url("/probe/local/containers"), None).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("not granted"),
        "{body}"
    );
    let (status, _) = call(
        &http,
        "GET",
        &berth.url("/probe/local/docker/containers/json"),
        None,
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn proxied_requests_stream_byte_for_byte() {
    let Some(engine) = docker::shared() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let berth = start(dir.path(), engine, r#"["docker", "events"]"#).await;
    let http = client();

    let name = format!("ticker-{}", std::process::id());
    let run = engine.cli(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        &name,
        docker::IMAGE,
        "sh",
        "-c",
        "while true; do echo tick; sleep 0.2; done",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    // containers/json through the proxy is the engine's own answer.
    let (status, proxied) = call(
        &http,
        "GET",
        &berth.url("/probe/local/docker/containers/json?all=1"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{proxied}");
    let (status, direct) = engine.get("/containers/json?all=1").unwrap();
    assert_eq!(status, 200);
    let direct: Value = serde_json::from_str(&direct).unwrap();
    assert_eq!(ids(&proxied), ids(&direct));
    assert!(
        ids(&proxied)
            .iter()
            .any(|id| run.stdout.starts_with(id.as_bytes()))
    );

    // An answer the engine wrote in one piece, chunked (`/info` is over the
    // 2 KiB under which the engine gives a length itself), goes out whole,
    // with its length.
    let whole = http
        .get(berth.url("/probe/local/docker/info"))
        .send()
        .await
        .unwrap();
    assert_eq!(whole.status(), 200);
    assert!(whole.headers().get("transfer-encoding").is_none());
    let length = whole.headers()["content-length"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(length, whole.bytes().await.unwrap().len().to_string());

    // Engine errors come back as the engine gave them.
    let (status, body) = call(
        &http,
        "GET",
        &berth.url("/probe/local/docker/containers/no-such/json"),
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert!(
        body["message"].as_str().unwrap().contains("no-such"),
        "{body}"
    );
    // An unknown endpoint is refused by the host.
    let (status, body) = call(&http, "GET", &berth.url("/probe/ghost/docker/_ping"), None).await;
    assert_eq!(status, 404, "{body}");

    // Engine events reach a subscriber without polling: follow, then run.
    let events = http
        .get(berth.url("/probe/events/engine"))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    let (status, body) = call(
        &http,
        "POST",
        &berth.url("/probe/local/follow/engine"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Following twice is one follower.
    call(
        &http,
        "POST",
        &berth.url("/probe/local/follow/engine"),
        None,
    )
    .await;
    // No wait for the follower to connect: it asks for the events since
    // it was started, whenever its connection comes.
    let watched = format!("watched-{}", std::process::id());
    let run = engine.cli(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        &watched,
        docker::IMAGE,
        "sleep",
        "30",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let mut stream = Box::pin(events.bytes_stream());
    let mut seen = String::new();
    let started = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)).await {
            seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            let lines: Vec<Value> = seen
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .filter(|e: &Value| e["Actor"]["Attributes"]["name"] == watched.as_str())
                .collect();
            if let Some(start) = lines.iter().find(|e| e["Action"] == "start") {
                return (start.clone(), lines.len());
            }
        }
        panic!("the event stream ended");
    })
    .await
    .expect("the container's start event within 10 s");
    assert_eq!(started.0["Type"], "container");
    assert_eq!(started.1, 2, "create and start, once each: {seen}");
    engine.cli(&["rm", "-f", &watched]);

    // A following log stream arrives while it is still open.
    let response = http
        .get(berth.url(&format!(
            "/probe/local/docker/containers/{name}/logs?stdout=1&follow=1"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = Box::pin(response.bytes_stream());
    let mut seen = Vec::new();
    let ticks = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(chunk) = std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)).await {
            seen.extend_from_slice(&chunk.unwrap());
            let ticks = seen.windows(4).filter(|w| w == b"tick").count();
            if ticks >= 5 {
                return ticks;
            }
        }
        panic!("the log stream ended");
    })
    .await
    .expect("ticks within 20 s");
    assert!(ticks >= 5);
    drop(stream);

    // The host is unharmed after the client left mid-stream.
    let (status, _) = call(&http, "GET", &berth.url("/_berth/health"), None).await;
    assert_eq!(status, 200);
    let rm = engine.cli(&["rm", "-f", &name]);
    assert!(rm.status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_past_the_plugin_limit_stream_to_the_engine_and_nowhere_else() {
    let Some(engine) = docker::shared() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let grants = r#"["docker", "docker-endpoints"]"#;
    let config = config(engine, grants).replacen(
        &format!("grants = {grants}\n"),
        &format!("grants = {grants}\nmax_body_kib = 1\nmax_proxy_body_mib = 1\n"),
        1,
    );
    let berth = Berth::start(dir.path(), &config);
    support::mount(&berth, "dockerprobe", "/probe/none/containers").await;
    let http = client();

    // A create body of 8 KiB (labels), with a length: the plugin does not
    // read it, the engine gets it whole.
    let labels: serde_json::Map<String, Value> = (0..64)
        .map(|i| (format!("berth.test.{i}"), json!("x".repeat(100))))
        .collect();
    let name = format!("withheld-{}", std::process::id());
    let create = json!({ "Image": docker::IMAGE, "Cmd": ["true"], "Labels": labels });
    let url = berth.url(&format!(
        "/probe/local/docker/containers/create?name={name}"
    ));
    let (status, created) = call(&http, "POST", &url, Some(create.clone())).await;
    assert_eq!(status, 201, "{created}");
    let inspected = engine.inspect(&name).unwrap();
    assert_eq!(inspected["Config"]["Labels"].as_object().unwrap().len(), 64);

    // The same without a length (chunked, from a stream): streamed too.
    let chunked = format!("{name}-chunked");
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> = create
        .to_string()
        .into_bytes()
        .chunks(1000)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let answer = http
        .post(berth.url(&format!(
            "/probe/local/docker/containers/create?name={chunked}"
        )))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            pieces,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 201);
    assert!(engine.inspect(&chunked).is_some());

    // A route that answers for itself gets the 413 it always did: only
    // the engine takes a body the plugin did not read.
    let big = json!({ "address": "tcp://127.0.0.1:1", "pad": "y".repeat(4096) });
    let (status, body) = call(&http, "POST", &berth.url("/probe/endpoints/big"), Some(big)).await;
    assert_eq!(status, 413, "{body}");
    assert!(body["error"].as_str().unwrap().contains("1024 bytes"));

    // Past the Docker limit (1 MiB here): 413 before anything is sent.
    let huge = vec![b'z'; (1 << 20) + 1];
    let answer = http
        .put(berth.url(&format!(
            "/probe/local/docker/containers/{name}/archive?path=/"
        )))
        .header("content-type", "application/x-tar")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 413);
    let body: Value = answer.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("1048576 bytes"),
        "{body}"
    );

    engine.cli(&["rm", "-f", &name, &chunked]);
}
