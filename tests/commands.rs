//! The `commands` plugin (dokku-api) end to end: the seed's curl session,
//! auth and validation errors, and the daemon's failure modes, against a
//! daemon speaking the dokku-daemon protocol on a real Unix socket.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use support::dokkud::Dokkud;
use support::{Berth, client, drop_file, plugin_wasm, poll};

fn config(socket: &std::path::Path) -> String {
    format!(
        "install_bundled = false\n[dokku]\nsocket = {socket:?}\n\
         [http_out]\nallow = [\"127.0.0.1\", \"localhost\"]\nallow_private = [\"127.0.0.1\"]\n\
         [jobs]\nmax_attempts = 3\nbackoff_ms = 50\n\
         [plugins.commands]\ngrants = [\"kv\", \"crypto\", \"jobs\", \"dokku\", \"http-out\"]\n\
         [plugins.commands.settings]\ntimeout_ms = 1000\n"
    )
}

/// A callback receiver on 127.0.0.1: records each POSTed body; answers 500
/// to the first request and 200 afterwards.
struct Receiver {
    url: String,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl Receiver {
    fn start() -> Receiver {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let mut seen = seen.lock().unwrap();
                seen.push(serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null));
                let status = if seen.len() == 1 {
                    "500 Internal Server Error"
                } else {
                    "200 OK"
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        Receiver { url, bodies }
    }

    fn bodies(&self) -> Vec<serde_json::Value> {
        self.bodies.lock().unwrap().clone()
    }
}

struct Api {
    berth: Berth,
    c: reqwest::Client,
    key: String,
    secret: String,
}

impl Api {
    fn start(dir: &std::path::Path, socket: &std::path::Path) -> Api {
        let plugins = dir.join("data/plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        drop_file(&plugin_wasm("commands"), &plugins.join("commands.wasm"));
        let berth = Berth::start(dir, &config(socket));
        let out = berth.cli(&["run", "commands", "keys:generate"]);
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            text.starts_with("New API key was generated\nAPI KEY: "),
            "{text}"
        );
        let pair = text.lines().nth(1).unwrap();
        let key = pair
            .split(" | ")
            .next()
            .unwrap()
            .trim_start_matches("API KEY: ")
            .to_string();
        let secret = pair
            .split(" | ")
            .nth(1)
            .unwrap()
            .trim_start_matches("API SECRET: ")
            .to_string();
        assert_eq!((key.len(), secret.len()), (32, 32), "16 random bytes, hex");
        Api {
            berth,
            c: client(),
            key,
            secret,
        }
    }

    async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self
            .c
            .get(self.berth.url(path))
            .header("Api-Key", &self.key)
            .header("Api-Secret", &self.secret)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    async fn post_form(&self, form: &str) -> (u16, serde_json::Value) {
        let r = self
            .c
            .post(self.berth.url("/commands"))
            .header("Api-Key", &self.key)
            .header("Api-Secret", &self.secret)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_string())
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }
}

#[tokio::test]
async fn the_seed_curl_session_works() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Dokkud::start(dir.path());
    let api = Api::start(dir.path(), &daemon.socket);

    // curl -i -X POST -d "cmd=apps" -H "Api-Key: ..." -H "Api-Secret: ..." /commands
    let (status, first) = api.post_form("cmd=apps").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["id"], 1);
    assert_eq!(first["command"], "apps");
    assert_eq!(first["ran_at"], serde_json::Value::Null);
    assert_eq!(first["result_data"], serde_json::Value::Null);
    let token = first["token"].as_str().unwrap().to_string();
    assert!(
        token.len() == 64 && token.chars().all(|c| c.is_ascii_hexdigit()),
        "{token}"
    );
    assert!(
        first["created_at"].as_str().unwrap().ends_with("+00:00"),
        "{first}"
    );

    let ran = poll(
        Duration::from_secs(30),
        "the queued command to run",
        || async {
            let (_, c) = api.get(&format!("/commands/{token}")).await;
            (!c["ran_at"].is_null()).then_some(c)
        },
    )
    .await;
    assert_eq!(
        ran["result_data"],
        serde_json::json!({ "ok": true, "output": "=====> My Apps\napi\ndokku-api\nhello_world" })
    );

    let (status, second) = api.post_form("cmd=apps%3Acreate+shop&sync=true").await;
    assert_eq!(status, 200);
    assert_eq!(second["id"], 2);
    assert!(
        second["ran_at"].is_string(),
        "sync returns the finished command: {second}"
    );
    assert_eq!(second["result_data"]["ok"], true);
    assert_eq!(second["result_data"]["output"], "-----> Creating shop...");

    let (status, all) = api.get("/commands").await;
    assert_eq!(status, 200);
    let ids: Vec<i64> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2], "oldest first");
    let (_, page) = api.get("/commands?limit=1&offset=1").await;
    assert_eq!(page.as_array().unwrap().len(), 1);
    assert_eq!(page[0]["id"], 2);

    // JSON bodies work too.
    let r = api
        .c
        .post(api.berth.url("/commands"))
        .header("Api-Key", &api.key)
        .header("Api-Secret", &api.secret)
        .json(&serde_json::json!({ "cmd": "apps:destroy shop", "sync": "true" }))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        body["result_data"],
        serde_json::json!({ "ok": false, "output": "Requires --force flag" })
    );

    // Retry clears the result and runs it again.
    let (status, retried) = api.get(&format!("/commands/{token}/retry")).await;
    assert_eq!(status, 200);
    assert_eq!(retried["ran_at"], serde_json::Value::Null);
    poll(
        Duration::from_secs(30),
        "the retried command to run",
        || async {
            let (_, c) = api.get(&format!("/commands/{token}")).await;
            (c["result_data"]["ok"] == true).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn auth_and_validation_errors_match_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Dokkud::start(dir.path());
    let api = Api::start(dir.path(), &daemon.socket);
    let unauthenticated = serde_json::json!({ "status": "error", "message": "not_authenticated" });

    let r = api.c.get(api.berth.url("/commands")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        unauthenticated
    );
    let r = api
        .c
        .post(api.berth.url("/commands"))
        .header("Api-Key", &api.key)
        .header("Api-Secret", "0".repeat(32))
        .body("cmd=apps")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        unauthenticated
    );

    let (status, body) = api.get(&format!("/commands/{}", "f".repeat(64))).await;
    assert_eq!(
        (status, body),
        (
            404,
            serde_json::json!({ "status": "error", "message": "not_found" })
        )
    );

    let (status, body) = api.post_form("cmd=").await;
    assert_eq!(
        (status, body),
        (
            422,
            serde_json::json!({ "status": "error", "messages": ["cmd can't be blank"] })
        )
    );
    let (status, body) = api.post_form(&format!("cmd={}", "a".repeat(256))).await;
    assert_eq!(status, 422);
    assert_eq!(
        body["messages"],
        serde_json::json!(["cmd is too long (maximum is 255 characters)"])
    );
    let (_, all) = api.get("/commands").await;
    assert_eq!(
        all,
        serde_json::json!([]),
        "nothing stored for refused commands"
    );

    let out = api.berth.cli(&["run", "commands", "keys:list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&api.key));
    let out = api.berth.cli(&["run", "commands", "keys:delete", &api.key]);
    assert!(out.status.success(), "{out:?}");
    let (status, _) = api.get("/commands").await;
    assert_eq!(status, 401, "a deleted key no longer works");
}

#[tokio::test]
async fn daemon_timeouts_invalid_json_and_outages_are_stored_safely() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Dokkud::start(dir.path());
    let api = Api::start(dir.path(), &daemon.socket);

    let (_, weird) = api.post_form("cmd=weird&sync=true").await;
    assert_eq!(weird["result_data"]["ok"], true, "{weird}");
    let output = weird["result_data"]["output"].as_str().unwrap();
    assert!(
        output.starts_with("C:\\temp\\dir \u{1b}[32mgreen"),
        "ESC[1G stripped, the rest kept: {output:?}"
    );
    assert!(output.ends_with("\"quoted\"\nline two"), "{output:?}");
    let (_, again) = api
        .get(&format!("/commands/{}", weird["token"].as_str().unwrap()))
        .await;
    assert_eq!(
        again["result_data"], weird["result_data"],
        "stored and served back intact"
    );

    let (_, invalid) = api.post_form("cmd=nope&sync=true").await;
    assert_eq!(
        invalid["result_data"],
        serde_json::json!({ "ok": false, "output": "Invalid command" })
    );

    let (_, slow) = api.post_form("cmd=slow+3&sync=true").await;
    assert_eq!(
        slow["result_data"],
        serde_json::json!({ "ok": false, "output": "command_timed_out" })
    );

    daemon.stop();
    let (status, down) = api.post_form("cmd=apps&sync=true").await;
    assert_eq!(status, 200);
    assert_eq!(down["result_data"]["ok"], false);
    // The client is told the daemon is down; the socket path and the OS
    // error are in the host's log only.
    let output = down["result_data"]["output"].as_str().unwrap();
    assert!(output.contains("cannot be reached"), "{down}");
    assert!(!output.contains(".sock"), "{down}");
    assert!(api.berth.log().contains("Dokku daemon unreachable"));
}

#[test]
fn the_test_daemon_answers_several_lines_per_connection_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Dokkud::start(dir.path());
    let mut stream = std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap();
    stream
        .write_all(b"enter api\n--quiet --app api apps:list\napps:destroy api\nshell\n")
        .unwrap();
    let mut lines = BufReader::new(stream).lines();
    let expected = [
        "{\"ok\":false,\"output\":\"Not implemented\"}",
        "{\"ok\":true,\"output\":\"=====> My Apps\\napi\\ndokku-api\\nhello_world\"}",
        "{\"ok\":false,\"output\":\"Requires --force flag\"}",
        "{\"ok\":false,\"output\":\"Not implemented\"}",
    ];
    for want in expected {
        assert_eq!(lines.next().unwrap().unwrap(), want);
    }
}

#[tokio::test]
async fn callbacks_are_delivered_and_retried_and_other_hosts_refused() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Dokkud::start(dir.path());
    let api = Api::start(dir.path(), &daemon.socket);
    let receiver = Receiver::start();

    let (_, command) = api
        .post_form(&format!("cmd=apps&sync=true&callback_url={}", receiver.url))
        .await;
    assert_eq!(command["callback_url"], receiver.url.as_str());
    let bodies = poll(
        Duration::from_secs(30),
        "the callback to be retried after a 500",
        || async {
            let bodies = receiver.bodies();
            (bodies.len() >= 2).then_some(bodies)
        },
    )
    .await;
    assert_eq!(bodies[1], command, "the receiver gets the command JSON");
    assert_eq!(bodies[0], bodies[1]);

    // A host outside [http_out] allow is refused when the command is
    // posted, in the API's own 422 shape; nothing is stored.
    let (status, refused) = api
        .post_form("cmd=apps&sync=true&callback_url=http://elsewhere.example/hook")
        .await;
    assert_eq!(status, 422, "{refused}");
    let message = refused["messages"][0].as_str().unwrap();
    assert!(
        message.contains("callback_url is not allowed")
            && message.contains("`elsewhere.example` is not in the operator's allow-list"),
        "{refused}"
    );

    // localhost is allowed by name but resolves to a private address that
    // is not in allow_private: accepted, then refused before connecting.
    let port = receiver
        .url
        .trim_start_matches("http://127.0.0.1:")
        .trim_end_matches("/hook")
        .to_string();
    let (status, _) = api
        .post_form(&format!(
            "cmd=apps&sync=true&callback_url=http://localhost:{port}/hook"
        ))
        .await;
    assert_eq!(status, 200);
    let view = poll(
        Duration::from_secs(30),
        "the refused callback job to be dead",
        || async {
            let r = api
                .c
                .get(api.berth.url("/_berth/jobs"))
                .bearer_auth(api.berth.admin_token())
                .send()
                .await
                .ok()?;
            let view: serde_json::Value = r.json().await.ok()?;
            (view["counts"]["commands"]["dead"] == 1).then_some(view)
        },
    )
    .await;
    let error = view["dead"][0]["last_error"].as_str().unwrap();
    assert!(
        error.contains("refused") && error.contains("a non-public address"),
        "{error}"
    );
    assert_eq!(
        receiver.bodies().len(),
        2,
        "nothing reached the receiver through localhost"
    );
}

#[tokio::test]
async fn kill_9_with_queued_commands_loses_none_and_runs_them_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Dokkud::start(dir.path());
    let mut api = Api::start(dir.path(), &daemon.socket);
    // Hold the daemon's lock so the queued commands cannot finish yet.
    let (_, blocker) = api.post_form("cmd=slow+2").await;
    let mut tokens = vec![blocker["token"].as_str().unwrap().to_string()];
    for i in 0..20 {
        let (status, c) = api.post_form(&format!("cmd=apps:create+app{i}")).await;
        assert_eq!(status, 200);
        tokens.push(c["token"].as_str().unwrap().to_string());
    }
    api.berth.kill9();

    api.berth = Berth::start(dir.path(), &config(&daemon.socket));
    for token in &tokens {
        let ran = poll(
            Duration::from_secs(60),
            "every acknowledged command to run",
            || async {
                let (status, c) = api.get(&format!("/commands/{token}")).await;
                assert_eq!(status, 200, "acknowledged command {token} is present");
                (!c["ran_at"].is_null()).then_some(c)
            },
        )
        .await;
        assert!(ran["result_data"]["ok"].is_boolean(), "{ran}");
    }
    let (_, listing) = api.get("/commands?limit=100").await;
    assert_eq!(listing.as_array().unwrap().len(), 21);
}
