//! The official Docker Cloud CLI (`docker-cloud` 1.0.9 from PyPI, Python
//! 2.7, unmodified) through a whole session against Berth's `stacks`
//! plugin on a real engine, first plain (containers Berth runs itself),
//! then a swarm: nodes and node clusters, services, containers (logs and
//! exec over WebSockets), stacks, actions and events. Every CLI step has a
//! bounded time.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures_util::StreamExt;
use serde_json::Value;
use support::Berth;
use support::docker;

/// Longest any one CLI step may take.
const STEP: Duration = Duration::from_secs(60);

/// The CLI, pointed at one Berth with one user's API key.
struct DockerCloud {
    bin: PathBuf,
    env: Vec<(String, String)>,
}

impl DockerCloud {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", std::env::temp_dir())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// `docker-cloud ARGS` with `stdin` fed and closed.
    fn run_with(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = self.command(args).spawn().expect("run docker-cloud");
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin).unwrap();
        drop(input);
        wait_bounded(child, &format!("docker-cloud {args:?}"))
    }

    /// `docker-cloud ARGS`, which must succeed: its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run_with(args, b"");
        let (stdout, stderr) = texts(&out);
        assert!(
            out.status.success() && !stderr.contains("Traceback"),
            "docker-cloud {args:?} failed ({}): {stdout}{stderr}",
            out.status
        );
        stdout
    }

    /// `docker-cloud ARGS` printing JSON (the inspect commands).
    fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }

    /// Run `args` until `check` holds for its stdout, for [`STEP`] at most.
    fn until(&self, args: &[&str], what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + STEP;
        loop {
            let out = self.ok(args);
            if check(&out) {
                return out;
            }
            assert!(Instant::now() < deadline, "{what}: {args:?} gave {out}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

fn texts(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Wait for `child` at most [`STEP`], killing it (and failing) past that.
fn wait_bounded(child: Child, what: &str) -> Output {
    support::wait_bounded(child, STEP, what)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// A Docker Cloud date as its CLI parses it: `Thu, 3 Dec 2026 06:27:38 +0000`.
fn cloud_date(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|d| d.ends_with(" +0000") && d.split(' ').count() == 6 && d.contains(", "))
}

const SHOP: &str = "\
web:
  image: busybox:latest
  command: httpd -f -p 8080
  target_num_containers: 2
db:
  image: busybox:latest
  command: sleep 100000
  environment:
    - GREETING=hi
";

const SHOP_BIGGER: &str = "\
web:
  image: busybox:latest
  command: httpd -f -p 8080
  target_num_containers: 1
db:
  image: busybox:latest
  command: sleep 100000
  environment:
    - GREETING=hello
";

const CACHE: &str = "\
cache:
  image: busybox:latest
  command: sleep 100000
";

#[tokio::test(flavor = "multi_thread")]
async fn the_docker_cloud_cli_runs_a_whole_session() {
    let Some(engine) = docker::shared() else {
        return;
    };
    let Some(bin) = support::docker_cloud_cli() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[docker]\nlocal = \"{}\"\n\n[plugins.stacks.settings]\nstop_timeout_secs = 1\n",
        engine.host
    );
    let berth = Berth::start(dir.path(), &config);
    let apikey = berth.cli_line(&["run", "stacks", "apikey:create", "alice"], "apikey: ");
    let rest = berth.url("/");
    let dc = DockerCloud {
        bin,
        env: vec![
            ("DOCKERCLOUD_USER".into(), "alice".into()),
            ("DOCKERCLOUD_APIKEY".into(), apikey.clone()),
            ("DOCKERCLOUD_REST_HOST".into(), rest.clone()),
            (
                "DOCKERCLOUD_STREAM_HOST".into(),
                rest.replacen("http://", "ws://", 1),
            ),
        ],
    };
    let events = dc.command(&["event"]).spawn().expect("docker-cloud event");

    // --- on a plain engine Berth runs the containers itself: a stopped one
    // starts again ---------------------------------------------------------
    dc.ok(&[
        "service",
        "run",
        "-n",
        "early",
        "--run-command",
        "sleep 100000",
        "busybox:latest",
    ]);
    let early = &[
        "container",
        "ps",
        "-q",
        "-s",
        "Running",
        "--service",
        "early",
    ];
    let c = dc.until(early, "early running", |q| !q.trim().is_empty());
    let c = c.trim().to_string();
    for (verb, state) in [
        ("stop", "Stopped"),
        ("start", "Running"),
        ("redeploy", "Running"),
    ] {
        assert_eq!(
            dc.ok(&["container", verb, &c]).trim(),
            c,
            "container {verb}"
        );
        let v = dc.json(&["container", "inspect", &c]);
        assert_eq!(v["state"], state, "after container {verb}: {v}");
    }
    dc.ok(&["service", "terminate", "early"]);
    engine.swarm_init();

    // --- the infra: the swarm as a node cluster of one node ----------------
    let clusters = dc.ok(&["nodecluster", "ls"]);
    assert!(
        clusters.contains("local") && clusters.contains("Deployed"),
        "{clusters}"
    );
    let cluster = dc.json(&["nodecluster", "inspect", "local"]);
    assert_eq!(cluster["current_num_nodes"], 1, "{cluster}");
    assert_eq!(cluster["region"], "/api/infra/v1/region/byon/byon/");
    let node_uuid = dc.ok(&["node", "ls", "-q"]).trim().to_string();
    let node = dc.json(&["node", "inspect", &node_uuid]);
    assert_eq!(node["state"], "Deployed", "{node}");
    assert_eq!(node["node_cluster"], cluster["resource_uri"]);
    assert_eq!(cluster["nodes"][0], node["resource_uri"]);
    let version = engine.cli(&["version", "--format", "{{.Server.Version}}"]);
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    assert_eq!(node["docker_version"], version.as_str());
    let nodes = dc.ok(&["node", "ls"]);
    assert!(
        nodes.contains(&node_uuid[..8]) && nodes.contains(&version),
        "{nodes}"
    );
    for kind in ["provider", "region", "nodetype"] {
        let listed = dc.ok(&["nodecluster", kind]);
        assert!(listed.contains("byon"), "{kind}: {listed}");
    }
    dc.ok(&["nodecluster", "az"]);

    // --- a service: run, ps, logs, exec ------------------------------------
    let talker = dc
        .ok(&[
            "service",
            "run",
            "-n",
            "talker",
            "--run-command",
            "sh -c \"echo hello; echo oops >&2; sleep 100000\"",
            "busybox:latest",
        ])
        .trim()
        .to_string();
    dc.until(&["service", "ps"], "talker running", |ps| {
        ps.lines()
            .any(|l| l.starts_with("talker") && l.contains("Running"))
    });
    let service = dc.json(&["service", "inspect", "talker"]);
    assert_eq!(service["uuid"], talker.as_str());
    assert!(cloud_date(&service["deployed_datetime"]), "{service}");
    let ps = dc.until(&["container", "ps"], "talker-1 listed", |ps| {
        ps.contains("talker-1")
    });
    let line = ps.lines().find(|l| l.starts_with("talker-1")).unwrap();
    assert!(line.contains(&node_uuid[..8]), "no node in {line}");
    let container = dc.json(&["container", "inspect", "talker-1"]);
    assert_eq!(container["node"], node["resource_uri"], "{container}");
    assert!(cloud_date(&container["started_datetime"]), "{container}");
    assert!(container["private_ip"].is_string(), "{container}");

    let logs = dc.run_with(&["service", "logs", "talker"], b"");
    let (stdout, stderr) = texts(&logs);
    assert!(logs.status.success(), "{stdout}{stderr}");
    assert_eq!(stdout, "talker-1 | hello\n");
    assert_eq!(stderr, "talker-1 | oops\n");
    let logs = dc.ok(&["container", "logs", "talker-1"]);
    assert_eq!(logs, "hello\n");

    // exec: a command, then a shell reading stdin, then one at a terminal.
    let out = dc.ok(&["exec", "talker-1", "echo", "hi there"]);
    assert!(out.contains("hi there"), "{out}");
    let out = dc.run_with(&["exec", "talker-1", "sh"], b"echo from-stdin\nexit\n");
    let (stdout, stderr) = texts(&out);
    assert!(
        out.status.success() && stdout.contains("from-stdin"),
        "{stdout}{stderr}"
    );
    let line = format!("{} exec talker-1 sh", dc.bin.display());
    let mut pty = Command::new("script");
    pty.args(["-qefc", &line, "/dev/null"])
        .envs(dc.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = pty.spawn().expect("script");
    let mut input = child.stdin.take().unwrap();
    let mut output = child.stdout.take().unwrap();
    let screen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = std::thread::spawn({
        let screen = screen.clone();
        move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = std::io::Read::read(&mut output, &mut buf) {
                screen
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    });
    // Typed only once the shell shows its prompt (what is typed before the
    // CLI puts the terminal in raw mode is flushed), and `exit` once the
    // command's output is back: the typed line's echo and its output.
    let shown = |text: &str, times: usize| {
        let until = Instant::now() + STEP;
        while screen.lock().unwrap().matches(text).count() < times {
            assert!(
                Instant::now() < until,
                "{line}: no {text:?} on the screen: {}",
                screen.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    shown("# ", 1);
    input.write_all(b"echo at-a-terminal\r").unwrap();
    shown("at-a-terminal", 2);
    input.write_all(b"exit\r").unwrap();
    let out = wait_bounded(child, &line);
    drop(input);
    reader.join().unwrap();
    let stdout = screen.lock().unwrap().clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stdout}{stderr}", out.status);

    // Logs that follow: a line logged after the stream opened arrives.
    let id = container["docker_id"].as_str().unwrap().to_string();
    let uuid = container["uuid"].as_str().unwrap().to_string();
    let url = format!(
        "{}api/app/v1/container/{uuid}/logs/?follow=true&tail=1",
        rest.replacen("http://", "ws://", 1)
    );
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .unwrap();
    let basic = format!("Basic {}", STANDARD.encode(format!("alice:{apikey}")));
    request
        .headers_mut()
        .insert("authorization", basic.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let first = next_text(&mut ws).await;
    assert_eq!(first["type"], "log", "{first}");
    let late = engine.cli(&["exec", &id, "sh", "-c", "echo late >/proc/1/fd/1"]);
    assert!(late.status.success(), "{late:?}");
    let mut seen = Vec::new();
    while !seen.iter().any(|m: &Value| m["log"] == "late\n") {
        seen.push(next_text(&mut ws).await);
    }
    let line = seen.last().unwrap();
    assert_eq!(line["streamType"], "stdout", "{line}");
    assert!(
        line["timestamp"].as_u64().unwrap() > 1_700_000_000,
        "{line}"
    );
    drop(ws);

    // --- the service's life: scale, set, env, redeploy, stop, start --------
    dc.ok(&["service", "scale", "talker", "2"]);
    dc.until(&["service", "inspect", "talker"], "two talkers", |s| {
        serde_json::from_str::<Value>(s).unwrap()["running_num_containers"] == 2
    });
    dc.ok(&["service", "set", "--target-num-containers", "1", "talker"]);
    dc.ok(&["service", "env", "add", "-e", "FOO=bar", "talker"]);
    let env = dc.ok(&["service", "env", "ls", "talker"]);
    assert!(
        env.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["user", "FOO", "bar"]),
        "{env}"
    );
    dc.ok(&["service", "env", "rm", "-n", "FOO", "talker"]);
    let env = dc.ok(&["service", "env", "ls", "talker"]);
    assert!(!env.contains("FOO"), "{env}");
    dc.ok(&["service", "redeploy", "talker"]);
    dc.ok(&["service", "stop", "talker"]);
    let stopped = dc.json(&["service", "inspect", "talker"]);
    assert_eq!(stopped["state"], "Stopped", "{stopped}");
    dc.ok(&["service", "start", "talker"]);

    // --- containers: stop, start, redeploy, terminate ----------------------
    // In Swarm mode a redeployed container is replaced by the swarm (as is
    // a terminated one, with autorestart on).
    let running = |service: &str, other: &str| {
        let q = dc.until(
            &[
                "container",
                "ps",
                "-q",
                "-s",
                "Running",
                "--service",
                service,
            ],
            "a running container",
            |q| q.lines().any(|l| !l.is_empty() && l != other),
        );
        q.lines()
            .find(|l| !l.is_empty() && *l != other)
            .unwrap()
            .to_string()
    };
    let c = running("talker", "");
    assert_eq!(dc.ok(&["container", "redeploy", &c]).trim(), c);
    let c = running("talker", &c);
    assert_eq!(dc.ok(&["container", "terminate", &c]).trim(), c);
    dc.ok(&["service", "terminate", "talker"]);
    let gone = dc.json(&["service", "inspect", talker.as_str()]);
    assert_eq!(gone["state"], "Terminated", "{gone}");

    // A service created, then started; without autorestart its stopped
    // container stays stopped, and is not started again behind the
    // swarm's back.
    dc.ok(&[
        "service",
        "create",
        "--name",
        "solo",
        "--autorestart",
        "OFF",
        "--run-command",
        "sleep 100000",
        "busybox:latest",
    ]);
    dc.ok(&["service", "start", "solo"]);
    let c = running("solo", "");
    assert_eq!(dc.ok(&["container", "stop", &c]).trim(), c);
    let stopped = dc.json(&["container", "inspect", &c]);
    assert_eq!(stopped["state"], "Stopped", "{stopped}");
    assert_eq!(stopped["exit_code"], 137, "{stopped}");
    assert!(cloud_date(&stopped["stopped_datetime"]), "{stopped}");
    let out = dc.run_with(&["container", "start", &c], b"");
    let (_, stderr) = texts(&out);
    assert!(
        !out.status.success() && stderr.contains("Status 409") && stderr.contains("Swarm"),
        "{stderr}"
    );
    dc.ok(&["service", "terminate", "solo"]);

    // --- stacks ---------------------------------------------------------------
    let shop_file = write(dir.path(), "shop.yml", SHOP);
    let shop = dc.ok(&["stack", "create", "-f", &shop_file, "-n", "shop"]);
    let shop = shop.trim().to_string();
    let stacks = dc.ok(&["stack", "ls"]);
    assert!(
        stacks
            .lines()
            .any(|l| l.starts_with("shop") && l.contains("Not running")),
        "{stacks}"
    );
    dc.ok(&["stack", "start", "shop"]);
    let inspected = dc.json(&["stack", "inspect", "shop"]);
    assert_eq!(inspected["uuid"], shop.as_str());
    assert_eq!(inspected["services"].as_array().unwrap().len(), 2);
    let exported = dc.ok(&["stack", "export", "shop"]);
    assert!(exported.contains("GREETING=hi"), "{exported}");
    let ps = dc.until(&["service", "ps", "--stack", "shop"], "shop up", |ps| {
        ps.lines().filter(|l| l.contains("Running")).count() == 2
    });
    assert!(ps.contains("web") && ps.contains("db"), "{ps}");
    let bigger = write(dir.path(), "shop2.yml", SHOP_BIGGER);
    dc.ok(&["stack", "update", "-f", &bigger, "shop"]);
    let exported = dc.ok(&["stack", "export", "shop"]);
    assert!(exported.contains("GREETING=hello"), "{exported}");
    dc.ok(&["stack", "redeploy", "shop"]);
    dc.ok(&["stack", "stop", "shop"]);
    dc.ok(&["stack", "start", "shop"]);
    let cache_file = write(dir.path(), "cache.yml", CACHE);
    dc.ok(&["stack", "up", "-f", &cache_file, "-n", "kv"]);
    let stacks = dc.ok(&["stack", "ls"]);
    assert!(stacks.contains("kv") && stacks.contains("shop"), "{stacks}");
    dc.ok(&["stack", "terminate", "shop"]);
    dc.ok(&["stack", "terminate", "kv"]);
    let stacks = dc.ok(&["stack", "ls"]);
    assert!(
        stacks.lines().filter(|l| l.contains("Terminated")).count() == 2,
        "{stacks}"
    );

    // --- actions ---------------------------------------------------------------
    let actions = dc.ok(&["action", "ls"]);
    for action in [
        "Stack Start",
        "Stack Stop",
        "Stack Redeploy",
        "Stack Terminate",
    ] {
        assert!(actions.contains(action), "no {action} in {actions}");
    }
    let first = dc.ok(&["action", "ls", "-q"]);
    let first = first.lines().next().unwrap();
    let action = dc.json(&["action", "inspect", first]);
    assert_eq!(action["state"], "Success", "{action}");
    assert!(cloud_date(&action["start_date"]), "{action}");
    dc.ok(&["action", "logs", first]);

    // --- the event stream saw it all ---------------------------------------
    let _ = Command::new("kill")
        .args(["-INT", &events.id().to_string()])
        .status();
    let out = wait_bounded(events, "docker-cloud event");
    let (stdout, _) = texts(&out);
    let seen: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for kind in ["service", "container", "stack", "action"] {
        assert!(
            seen.iter().any(|e| e["type"] == kind),
            "no {kind} event in {stdout}"
        );
    }
    assert!(
        seen.iter().any(
            |e| e["resource_uri"] == format!("/api/app/v1/stack/{shop}/")
                && e["state"] == "Terminated"
        ),
        "{stdout}"
    );
}

/// The next text message of a log stream, as JSON, within [`STEP`].
async fn next_text<S>(ws: &mut S) -> Value
where
    S: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    loop {
        let message = tokio::time::timeout(STEP, ws.next())
            .await
            .expect("a log line in time")
            .expect("the stream stays open")
            .expect("a message");
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}
