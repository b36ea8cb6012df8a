//! The `stacks` plugin (Docker Cloud API) end to end: the real berth, a
//! real Docker engine, first as a plain engine (services as labelled
//! containers), then as a swarm manager (services as Swarm services), and
//! the official Docker Cloud Python SDK against it.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use support::docker::{self, Engine};
use support::{Berth, client, poll};

fn config(engine: &Engine) -> String {
    format!(
        "[docker]\nlocal = \"{}\"\n\n[plugins.stacks.settings]\nstop_timeout_secs = 1\n",
        engine.host
    )
}

struct Api {
    berth: Berth,
    http: reqwest::Client,
    auth: String,
}

impl Api {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(Some(&self.auth), method, path, body).await
    }

    async fn call_as(
        &self,
        auth: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(method, self.berth.url(path))
            .header("accept", "application/json");
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let action = r
            .headers()
            .get("x-dockercloud-action-uri")
            .map(|v| v.to_str().unwrap().to_string());
        let mut v: Value = r.json().await.unwrap_or(Value::Null);
        if let (Some(a), Some(o)) = (action, v.as_object_mut()) {
            o.insert("_action".into(), json!(a));
        }
        (status, v)
    }

    async fn post_yaml(&self, path: &str, yaml: &str) -> (u16, Value) {
        let r = self
            .http
            .post(self.berth.url(path))
            .header("authorization", &self.auth)
            .header("content-type", "application/x-yaml")
            .body(yaml.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

/// `berth run stacks apikey:create USER`: the Authorization value.
fn api_key(berth: &Berth, user: &str) -> String {
    berth.cli_line(&["run", "stacks", "apikey:create", user], "Authorization: ")
}

/// Names and states of the engine's containers labelled for a stack.
fn containers(engine: &Engine, stack: &str) -> Vec<(String, String)> {
    let (_, body) = engine
        .get(&format!(
            "/containers/json?all=1&filters={}",
            docker::urlencode(
                &json!({ "label": [format!("com.docker.stack.namespace={stack}")] }).to_string()
            )
        ))
        .unwrap();
    let list: Value = serde_json::from_str(&body).unwrap();
    let mut out: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["Names"][0]
                    .as_str()
                    .unwrap()
                    .trim_start_matches('/')
                    .to_string(),
                c["State"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

const STACKFILE: &str = "\
web:
  image: busybox:latest
  command: httpd -f -p 8080
  target_num_containers: 2
  links:
    - db:database
db:
  image: busybox:latest
  command: sleep 100000
  environment:
    - GREETING=hi
";

#[tokio::test(flavor = "multi_thread")]
async fn docker_cloud_on_containers_then_swarm() {
    let Some(engine) = docker::shared() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(dir.path(), &config(engine));
    let auth = api_key(&berth, "alice");
    let api = Api {
        berth,
        http: client(),
        auth,
    };

    // Wrong or missing credentials: 401 on every route family.
    let bad = format!("Basic {}", "YWxpY2U6bm9wZQ==");
    for path in [
        "/api/app/v1/service/",
        "/api/app/v1/stack/",
        "/api/app/v1/container/",
        "/api/audit/v1/action/",
        "/api/audit/v1/events/",
    ] {
        for auth in [None, Some(bad.as_str())] {
            let (status, body) = api.call_as(auth, "GET", path, None).await;
            assert_eq!(status, 401, "{path}: {body}");
            assert!(body["error"].is_string(), "{body}");
        }
    }

    // A bad stackfile: 400 with the parser's message and line.
    let (status, body) = api
        .post_yaml(
            "/api/app/v1/stack/?name=broken",
            "web:\n  image: busybox\n  bogus: 1\n",
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("line 3"), "{body}");

    // --- container mode: the engine is not a swarm manager ---------------
    let (status, stack) = api.post_yaml("/api/app/v1/stack/?name=cm", STACKFILE).await;
    assert_eq!(status, 201, "{stack}");
    assert_eq!(stack["state"], "Not running");
    let uuid = stack["uuid"].as_str().unwrap().to_string();
    assert_eq!(stack["resource_uri"], format!("/api/app/v1/stack/{uuid}/"));
    // A second stack of the same name: 409.
    let (status, _) = api.post_yaml("/api/app/v1/stack/?name=CM", STACKFILE).await;
    assert_eq!(status, 409);

    let (status, started) = api
        .call("POST", &format!("/api/app/v1/stack/{uuid}/start/"), None)
        .await;
    assert_eq!(status, 202, "{started}");
    assert_eq!(started["state"], "Running");
    let action = started["_action"].as_str().unwrap().to_string();
    let (_, a) = api.call("GET", &action, None).await;
    assert_eq!(a["state"], "Success", "{a}");
    assert_eq!(a["action"], "Stack Start");
    // Dates as Docker Cloud wrote them and its CLI parses them.
    for date in [
        &a["start_date"],
        &a["end_date"],
        &started["deployed_datetime"],
    ] {
        assert!(docker_cloud_date(date), "{date} in {a} / {started}");
    }
    let (_, services) = api
        .call("GET", "/api/app/v1/service/?stack__name=cm", None)
        .await;
    let db = services["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "db")
        .unwrap();
    assert!(docker_cloud_date(&db["deployed_datetime"]), "{db}");
    assert!(docker_cloud_date(&db["created_datetime"]), "{db}");
    assert_eq!(
        db["calculated_envvars"],
        json!([{ "key": "GREETING", "value": "hi", "origin": "user" }]),
        "{db}"
    );
    assert_eq!(
        containers(engine, "cm"),
        vec![
            ("cm_db-1".to_string(), "running".to_string()),
            ("cm_web-1".to_string(), "running".to_string()),
            ("cm_web-2".to_string(), "running".to_string()),
        ]
    );
    // The link resolves by its alias on the stack's network.
    let out = engine.cli(&["exec", "cm_web-1", "busybox", "nslookup", "database"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Address"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Starting a running stack is refused in that state.
    let (status, body) = api
        .call("POST", &format!("/api/app/v1/stack/{uuid}/start/"), None)
        .await;
    assert_eq!(status, 409, "{body}");

    // Paging: meta + objects.
    let (_, page) = api
        .call("GET", "/api/app/v1/container/?limit=2", None)
        .await;
    assert_eq!(page["meta"]["total_count"], 3, "{page}");
    assert_eq!(page["objects"].as_array().unwrap().len(), 2);
    assert!(page["meta"]["next"].as_str().unwrap().contains("offset=2"));

    // Export gives the stackfile back.
    let r = api
        .http
        .get(
            api.berth
                .url(&format!("/api/app/v1/stack/{uuid}/export/?format=yaml")),
        )
        .header("authorization", &api.auth)
        .send()
        .await
        .unwrap();
    let types: Vec<_> = r.headers().get_all("content-type").iter().collect();
    assert_eq!(types, ["application/x-yaml"], "one Content-Type");
    let yaml = r.text().await.unwrap();
    assert!(
        yaml.contains("db:database") && yaml.contains("target_num_containers: 2"),
        "{yaml}"
    );

    let (status, _) = api
        .call("POST", &format!("/api/app/v1/stack/{uuid}/stop/"), None)
        .await;
    assert_eq!(status, 202);
    assert!(containers(engine, "cm").iter().all(|(_, s)| s == "exited"));
    let (status, body) = api
        .call("DELETE", &format!("/api/app/v1/stack/{uuid}/"), None)
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["state"], "Terminated");
    assert!(containers(engine, "cm").is_empty());

    // --- swarm mode ---------------------------------------------------------
    engine.swarm_init();

    let mut ws = subscriber(&api, false).await;

    let (status, stack) = api
        .call(
            "POST",
            "/api/app/v1/stack/",
            Some(json!({
                "name": "sw",
                "services": [
                    { "name": "web", "image": "busybox:latest", "run_command": "httpd -f -p 8080",
                      "target_num_containers": 2,
                      "linked_to_service": [{ "to_service": "db", "name": "database" }] },
                    { "name": "db", "image": "busybox:latest", "run_command": "sleep 100000" },
                ],
            })),
        )
        .await;
    assert_eq!(status, 201, "{stack}");
    let uuid = stack["uuid"].as_str().unwrap().to_string();
    let (status, _) = api
        .call("POST", &format!("/api/app/v1/stack/{uuid}/start/"), None)
        .await;
    assert_eq!(status, 202);
    poll(
        Duration::from_secs(60),
        "sw_web 2/2 and sw_db 1/1",
        || async {
            (engine.replicas("sw_web") == Some((2, 2)) && engine.replicas("sw_db") == Some((1, 1)))
                .then_some(())
        },
    )
    .await;
    let svc = engine.inspect_service("sw_web");
    assert_eq!(svc["Spec"]["Labels"]["com.docker.stack.namespace"], "sw");

    // Scale web to 3: the real replica count follows, and the stream says so.
    let (_, services) = api
        .call("GET", "/api/app/v1/service/?name=web&stack__name=sw", None)
        .await;
    assert_eq!(services["meta"]["total_count"], 1, "{services}");
    let web = services["objects"][0]["uuid"].as_str().unwrap().to_string();
    let (status, body) = api
        .call(
            "PATCH",
            &format!("/api/app/v1/service/{web}/"),
            Some(json!({ "target_num_containers": 3 })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = api
        .call("POST", &format!("/api/app/v1/service/{web}/scale/"), None)
        .await;
    assert_eq!(status, 202);
    poll(Duration::from_secs(60), "sw_web 3/3", || async {
        (engine.replicas("sw_web") == Some((3, 3))).then_some(())
    })
    .await;
    let web_uri = format!("/api/app/v1/service/{web}/");
    let mut saw_container = false;
    let mut saw_scaling = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !(saw_container && saw_scaling) {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("events within 20 s")
            .unwrap()
            .unwrap();
        let Ok(text) = msg.to_text() else { continue };
        let Ok(event) = serde_json::from_str::<Value>(text) else {
            continue;
        };
        for key in [
            "type",
            "action",
            "parents",
            "resource_uri",
            "state",
            "uuid",
            "datetime",
        ] {
            assert!(event.get(key).is_some(), "{key} missing in {event}");
        }
        if event["type"] == "service"
            && event["resource_uri"] == web_uri
            && event["state"] == "Scaling"
        {
            saw_scaling = true;
        }
        if event["type"] == "container"
            && event["parents"]
                .as_array()
                .unwrap()
                .contains(&json!(web_uri))
            && saw_scaling
        {
            saw_container = true;
        }
    }

    // Stop, start, redeploy, terminate do what they say.
    let (status, body) = api
        .call("POST", &format!("/api/app/v1/service/{web}/stop/"), None)
        .await;
    assert_eq!((status, body["state"].clone()), (202, json!("Stopped")));
    // A stopped Swarm service runs nothing: it is gone from the engine
    // until started again from the stored spec.
    assert_eq!(engine.get("/services/sw_web").unwrap().0, 404);
    assert_eq!(engine.replicas("sw_db"), Some((1, 1)));
    let (status, _) = api
        .call("POST", &format!("/api/app/v1/service/{web}/start/"), None)
        .await;
    assert_eq!(status, 202);
    poll(Duration::from_secs(60), "sw_web 3/3 again", || async {
        let r = engine.replicas("sw_web");
        (r == Some((3, 3))).then_some(())
    })
    .await;
    let before = engine.inspect_service("sw_web")["Spec"]["TaskTemplate"]["ForceUpdate"]
        .as_u64()
        .unwrap_or(0);
    let (status, _) = api
        .call(
            "POST",
            &format!("/api/app/v1/service/{web}/redeploy/"),
            None,
        )
        .await;
    assert_eq!(status, 202);
    let after = engine.inspect_service("sw_web")["Spec"]["TaskTemplate"]["ForceUpdate"]
        .as_u64()
        .unwrap();
    assert_eq!(after, before + 1);
    let (status, _) = api
        .call("DELETE", &format!("/api/app/v1/stack/{uuid}/"), None)
        .await;
    assert_eq!(status, 202);
    assert_eq!(engine.get("/services/sw_web").unwrap().0, 404);
    assert_eq!(engine.get("/services/sw_db").unwrap().0, 404);
    let (status, body) = api
        .call("POST", &format!("/api/app/v1/service/{web}/start/"), None)
        .await;
    assert_eq!(status, 409, "{body}");

    // --- the official Python SDK, unmodified ----------------------------------
    let Some(python) = support::python() else {
        return;
    };
    let rest = api.berth.url("/");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../tests/py/dockercloud_scenario.py"
            ))
            .env("DOCKERCLOUD_AUTH", &api.auth)
            .env("BERTH_REST_HOST", &rest)
            .env("BERTH_STREAM_HOST", rest.replacen("http://", "ws://", 1))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("\"ok\": true"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A websocket on the Docker Cloud event stream. With `small`, the
/// client's receive buffer is a few KiB, so a client that never reads
/// backs up into the host quickly.
async fn subscriber(
    api: &Api,
    small: bool,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let url = api
        .berth
        .url("/api/audit/v1/events/")
        .replacen("http://", "ws://", 1);
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            url.as_str(),
        )
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", api.auth.parse().unwrap());
    let addr: std::net::SocketAddr = api.berth.url.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if small {
        socket.set_recv_buffer_size(4096).unwrap();
    }
    let tcp = socket.connect(addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
    ws
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_subscribers_and_one_that_never_reads() {
    let Some(engine) = docker::shared() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // 200 clients, all from this one address: lift the per-address cap,
    // which open websockets count against.
    let config = format!(
        "{}\n[server]\nmax_connections_per_client = 1000\n",
        config(engine)
    );
    let berth = Berth::start(dir.path(), &config);
    let auth = api_key(&berth, "carol");
    let api = Api {
        berth,
        http: client(),
        auth,
    };
    let (status, service) = api
        .call(
            "POST",
            "/api/app/v1/service/",
            Some(json!({ "name": "ticker", "image": "busybox:latest" })),
        )
        .await;
    assert_eq!(status, 201, "{service}");
    let uri = service["resource_uri"].as_str().unwrap().to_string();
    let rss_before = api.berth.rss_kib();

    const UPDATES: usize = 2500;
    let stalled = subscriber(&api, true).await;
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let mut ws = subscriber(&api, false).await;
        let uri = uri.clone();
        readers.spawn(async move {
            let mut seen = 0;
            while seen < UPDATES {
                let Some(Ok(msg)) = ws.next().await else {
                    break;
                };
                let Ok(text) = msg.to_text() else { continue };
                let event: Value = serde_json::from_str(text).unwrap_or_default();
                if event["resource_uri"] == uri.as_str() && event["action"] == "update" {
                    seen += 1;
                }
            }
            seen
        });
    }
    // Every subscriber is in place before the first event: the host
    // subscribes a stream before it answers the handshake.

    let mut peak = 0;
    for i in 0..UPDATES {
        let (status, body) = api
            .call(
                "PATCH",
                &uri,
                Some(json!({ "target_num_containers": 1 + i % 5 })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        if i % 250 == 0 {
            peak = peak.max(api.berth.rss_kib());
        }
    }
    let counts: Vec<usize> = tokio::time::timeout(Duration::from_secs(120), readers.join_all())
        .await
        .expect("the readers finish within 2 minutes");
    assert!(
        counts.iter().all(|&c| c == UPDATES),
        "every reading subscriber got every event: {:?}",
        counts.iter().filter(|&&c| c != UPDATES).collect::<Vec<_>>()
    );
    let grown = peak.max(api.berth.rss_kib()).saturating_sub(rss_before);
    eprintln!("201 subscribers, {UPDATES} events: RSS grew by {grown} KiB at most");
    assert!(grown < 32 << 10, "RSS grew by {grown} KiB");

    // The one that never read was dropped with a reason once it fell
    // behind, rather than held in memory.
    let mut stalled = stalled;
    let mut got = 0;
    let reason = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match stalled.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => {
                    return frame.map(|f| f.reason.to_string()).unwrap_or_default();
                }
                Some(Ok(_)) => got += 1,
                _ => return String::new(),
            }
        }
    })
    .await
    .expect("the stalled stream ends");
    assert!(reason.contains("too slow"), "close reason {reason:?}");
    assert!(got < UPDATES, "it did not get everything: {got}");
}

/// `Sun, 6 Apr 2014 18:11:17 +0000`: what the docker-cloud CLI parses with
/// `%a, %d %b %Y %H:%M:%S +0000`.
fn docker_cloud_date(value: &Value) -> bool {
    let Some(text) = value.as_str() else {
        return false;
    };
    let parts: Vec<&str> = text.split(' ').collect();
    let days = ["Mon,", "Tue,", "Wed,", "Thu,", "Fri,", "Sat,", "Sun,"];
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let clock: Vec<&str> = parts
        .get(4)
        .map(|t| t.split(':').collect())
        .unwrap_or_default();
    parts.len() == 6
        && days.contains(&parts[0])
        && parts[1].parse::<u8>().is_ok_and(|d| (1..=31).contains(&d))
        && months.contains(&parts[2])
        && parts[3].len() == 4
        && parts[3].parse::<u16>().is_ok()
        && clock.len() == 3
        && clock
            .iter()
            .all(|c| c.len() == 2 && c.parse::<u8>().is_ok())
        && parts[5] == "+0000"
}
