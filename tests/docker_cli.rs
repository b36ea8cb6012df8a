//! The real docker CLI through Berth's Docker passthrough, as a user runs
//! it: `docker -H tcp://BERTH/api/endpoints/ID/docker` with the Portainer
//! JWT in the client's `config.json` (`HttpHeaders`). Attached runs, exec
//! with and without stdin and a terminal, attach, logs that follow, copies
//! both ways, a classic build, events, stats, wait, top and rm, on a local
//! and a TLS endpoint, with every CLI on the machine (Debian's 20.10 and a
//! newer one where installed). Every step has a bounded time.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::docker;
use support::{Berth, call_bearer, client};
use tokio_tungstenite::tungstenite::{self, Message};

/// Longest any one CLI step may take.
const STEP: Duration = Duration::from_secs(120);

/// A docker CLI pointed at one of Berth's Portainer endpoints.
struct Cli {
    bin: PathBuf,
    host: String,
    config: PathBuf,
}

impl Cli {
    /// `docker ARGS`, with `stdin` fed and closed; fails the test if it
    /// takes longer than [`STEP`].
    fn run_with(&self, args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
        let mut child = Command::new(&self.bin)
            .arg("--config")
            .arg(&self.config)
            .arg("--host")
            .arg(&self.host)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run docker");
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin).unwrap();
        drop(input);
        wait_bounded(child, &format!("{} {args:?}", self.bin.display()))
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, b"", &[])
    }

    /// `docker ARGS`, which must succeed: its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{} {args:?} failed: {}{}",
            self.bin.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `docker ARGS` under a pseudo-terminal (`script`), as a person at a
    /// shell runs `-it`: its output and exit status.
    fn under_pty(&self, args: &str) -> (String, Option<i32>) {
        let line = format!(
            "{} --config {} --host {} {args}",
            self.bin.display(),
            self.config.display(),
            self.host
        );
        let child = Command::new("script")
            .args(["-qefc", &line, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run script");
        let out = wait_bounded(child, &line);
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            out.status.code(),
        )
    }
}

/// Wait for `child` at most [`STEP`], killing it (and failing) past that.
fn wait_bounded(child: std::process::Child, what: &str) -> Output {
    support::wait_bounded(child, STEP, what)
}

/// The docker CLIs on this machine, each once.
fn clis() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = Vec::new();
    let paths = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&paths).chain([PathBuf::from("/usr/bin")]) {
        let bin = dir.join("docker");
        let Ok(real) = std::fs::canonicalize(&bin) else {
            continue;
        };
        if !found
            .iter()
            .any(|f| std::fs::canonicalize(f).ok() == Some(real.clone()))
        {
            found.push(bin);
        }
    }
    found
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// One whole session of `cli` against one endpoint; names carry `tag`.
fn session(cli: &Cli, tag: &str, scratch: &Path) {
    let name = |n: &str| format!("cli-{tag}-{n}");
    assert!(
        cli.ok(&["version", "--format", "{{.Server.Version}}"])
            .trim()
            .len()
            > 1
    );

    // Attached run: the container's output on stdout, its status on exit.
    let out = cli.run(&[
        "run",
        "--rm",
        docker::IMAGE,
        "sh",
        "-c",
        "echo hello; exit 3",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    assert_eq!(out.status.code(), Some(3), "{out:?}");

    // -it under a terminal.
    let (text, code) = cli.under_pty(&format!(
        "run -it --rm {} sh -c 'test -t 0 && echo on-a-tty; exit 4'",
        docker::IMAGE
    ));
    assert!(text.contains("on-a-tty"), "{text}");
    assert_eq!(code, Some(4), "{text}");

    let top = name("top");
    cli.ok(&["run", "-d", "--name", &top, docker::IMAGE, "sleep", "600"]);

    // exec -i: stdin reaches the process and its end ends it.
    let out = cli.run_with(
        &["exec", "-i", &top, "sh", "-c", "cat; echo done"],
        b"piped\n",
        &[],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "piped\ndone\n",
        "{out:?}"
    );
    // exec: stdout and stderr apart, the exit status kept.
    let out = cli.run(&["exec", &top, "sh", "-c", "echo out; echo err >&2; exit 5"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("err"),
        "{out:?}"
    );
    assert_eq!(out.status.code(), Some(5));
    // exec -t: a terminal.
    let out = cli.ok(&["exec", "-t", &top, "sh", "-c", "test -t 1 && echo tty"]);
    assert_eq!(out.trim(), "tty");
    // exec -d: detached, its effect seen after.
    cli.ok(&["exec", "-d", &top, "sh", "-c", "echo > /made"]);
    support_poll(|| {
        let made = cli.run(&["exec", &top, "sh", "-c", "test -e /made"]);
        made.status.success()
    });

    // attach: the output until the container ends.
    let attached = name("attach");
    cli.ok(&[
        "run",
        "-d",
        "--name",
        &attached,
        docker::IMAGE,
        "sh",
        "-c",
        "sleep 2; echo attached-out",
    ]);
    let out = cli.run(&["attach", &attached]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("attached-out"),
        "{out:?}"
    );

    // logs -f until the container ends.
    let logs = name("logs");
    cli.ok(&[
        "run",
        "-d",
        "--name",
        &logs,
        docker::IMAGE,
        "sh",
        "-c",
        "for i in 1 2 3; do echo line$i; sleep 0.5; done",
    ]);
    assert_eq!(cli.ok(&["logs", "-f", &logs]), "line1\nline2\nline3\n");

    // cp both ways, 10 MB: past the plugin's body limit, so it streams.
    let big = scratch.join(format!("{tag}-big"));
    let mut bytes = vec![0u8; 10 << 20];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
    }
    std::fs::write(&big, &bytes).unwrap();
    cli.ok(&["cp", big.to_str().unwrap(), &format!("{top}:/big")]);
    let back = scratch.join(format!("{tag}-back"));
    cli.ok(&["cp", &format!("{top}:/big"), back.to_str().unwrap()]);
    assert_eq!(sha256(&big), sha256(&back));

    // A classic build from a small context, nothing pulled.
    let context = scratch.join(format!("{tag}-context"));
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(
        context.join("Dockerfile"),
        format!(
            "FROM {}\nCOPY greeting /greeting\nRUN cat /greeting > /built\nCMD [\"cat\", \"/built\"]\n",
            docker::IMAGE
        ),
    )
    .unwrap();
    std::fs::write(context.join("greeting"), format!("built-{tag}\n")).unwrap();
    let image = name("image");
    let out = cli.run_with(
        &["build", "-t", &image, context.to_str().unwrap()],
        b"",
        &[("DOCKER_BUILDKIT", "0")],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(cli.ok(&["run", "--rm", &image]), format!("built-{tag}\n"));

    // events over a closed window.
    let until = (std::time::SystemTime::now() + Duration::from_secs(1))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let events = cli.ok(&[
        "events",
        "--since",
        "0",
        "--until",
        &until,
        "--filter",
        &format!("container={top}"),
    ]);
    assert!(events.contains("start"), "{events}");

    let stats = cli.ok(&["stats", "--no-stream", "--format", "{{.Name}}", &top]);
    assert_eq!(stats.trim(), top);
    assert!(cli.ok(&["top", &top]).contains("sleep 600"));

    // wait: the exit status of a container that ends.
    let waited = name("wait");
    cli.ok(&[
        "run",
        "-d",
        "--name",
        &waited,
        docker::IMAGE,
        "sh",
        "-c",
        "sleep 1; exit 7",
    ]);
    assert_eq!(cli.ok(&["wait", &waited]).trim(), "7");

    cli.ok(&["rm", "-f", &top, &attached, &logs, &waited]);
    cli.ok(&["rmi", &image]);
    let left = cli.ok(&["ps", "-a", "--filter", &format!("name=cli-{tag}-"), "-q"]);
    assert_eq!(left.trim(), "", "everything removed");
}

fn support_poll(mut done: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(std::time::Instant::now() < until, "not done within 20 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Write a client config that sends `header: value` on every request.
fn client_config(dir: &Path, header: &str, value: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        json!({ "HttpHeaders": { header: value } }).to_string(),
    )
    .unwrap();
    dir.to_path_buf()
}

/// Every CLI's session against each `(tag, host URL)`, off the runtime.
async fn sessions(targets: Vec<(String, String)>, config: PathBuf, scratch: PathBuf) {
    let clis = clis();
    assert!(!clis.is_empty(), "no docker CLI");
    eprintln!("CLIs: {clis:?}");
    std::fs::create_dir_all(&scratch).unwrap();
    let run = tokio::task::spawn_blocking(move || {
        for (n, bin) in clis.iter().enumerate() {
            for (tag, host) in &targets {
                let cli = Cli {
                    bin: bin.clone(),
                    host: host.clone(),
                    config: config.clone(),
                };
                session(&cli, &format!("{n}{tag}"), &scratch);
            }
        }
    });
    run.await.unwrap();
}

/// `berth_docker_upgrades_total` of `plugin`.
async fn upgrades(berth: &Berth, plugin: &str) -> u64 {
    let metrics = support::get_text(&client(), &berth.url("/_berth/metrics")).await;
    let prefix = format!("berth_docker_upgrades_total{{plugin=\"{plugin}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Berth on `engine` with Portainer's first administrator (its JWT), a
/// local endpoint and a TLS one.
async fn portainer_berth(dir: &Path, engine: &docker::Engine) -> (Berth, String, u64, u64) {
    let config = format!(
        "[docker]\nlocal = \"{}\"\nallow = [\"tcp://127.0.0.1:*\"]\n",
        engine.host
    );
    let berth = Berth::start(dir, &config);
    let (jwt, local, tls) = support::portainer::admin_with_endpoints(&berth, engine).await;
    (berth, jwt, local, tls)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_docker_cli_through_portainer_endpoints() {
    let Some(engine) = docker::shared() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (berth, jwt, local, tls) = portainer_berth(dir.path(), engine).await;
    let config = client_config(
        &dir.path().join("clients"),
        "Authorization",
        &format!("Bearer {jwt}"),
    );
    let address = berth.url.trim_start_matches("http://").to_string();
    let host = |id: u64| format!("tcp://{address}/api/endpoints/{id}/docker");
    let targets = vec![("local".into(), host(local)), ("tls".into(), host(tls))];
    sessions(targets, config, dir.path().join("scratch")).await;
    // Each session upgrades at least for run, -it, three execs and attach.
    assert!(upgrades(&berth, "stacks").await >= 2 * 6 * clis().len() as u64);
}

/// Lighthouse on host A, a beacon on host B in front of the same engine:
/// the CLI on `/api/v0.2/d/INSTANCE` with the session cookie, for A's own
/// instance and for B's, whose raw connections A forwards to B's agent.
#[tokio::test(flavor = "multi_thread")]
async fn the_docker_cli_through_lighthouse_instances() {
    let Some(engine) = docker::shared() else {
        return;
    };
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let beacon_b = Berth::start(
        dir_b.path(),
        &format!(
            "[docker]\nlocal = \"{}\"\n\n[plugins.beacons.settings]\ntoken = \"b-secret\"\n",
            engine.host
        ),
    );
    let lighthouse = Berth::start(
        dir_a.path(),
        &format!(
            "[docker]\nlocal = \"{}\"\n\n[http_out]\nallow = [\"127.0.0.1\"]\n\
             allow_private = [\"127.0.0.1\"]\n",
            engine.host
        ),
    );
    let password = lighthouse.cli_line(&["run", "beacons", "create-admin", "admin"], "password: ");
    let http = client();
    let login = http
        .post(lighthouse.url("/api/v0.2/login"))
        .json(&json!({ "Email": "admin", "Password": password }))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let cookie = login.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_string();
    let own_token = lighthouse.cli(&["run", "beacons", "agent-token"]).stdout;
    let own_token = String::from_utf8(own_token).unwrap().trim().to_string();
    let b_address = beacon_b.url.trim_start_matches("http://").to_string();
    for (address, token, alias) in [
        (b_address.as_str(), "b-secret", "b"),
        ("local", own_token.as_str(), "a"),
    ] {
        let created = http
            .post(lighthouse.url("/api/v0.2/beacons/create"))
            .header("cookie", &cookie)
            .json(&json!({ "Address": address, "Token": token, "Alias": alias }))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 200, "{}", created.text().await.unwrap());
    }
    let config = client_config(&dir_a.path().join("clients"), "Cookie", &cookie);
    let address = lighthouse.url.trim_start_matches("http://").to_string();
    let host = |instance: &str| format!("tcp://{address}/api/v0.2/d/{instance}");
    let targets = vec![
        ("own".into(), host("a.local")),
        ("far".into(), host("b.local")),
    ];
    sessions(targets, config, dir_a.path().join("scratch")).await;
    // A upgraded the connections of both instances; B those of the far one.
    let (a, b) = (
        upgrades(&lighthouse, "beacons").await,
        upgrades(&beacon_b, "beacons").await,
    );
    let each = 6 * clis().len() as u64;
    assert!(a >= 2 * each && b >= each, "A {a}, B {b}");
}

/// Read text messages from `ws` until their concatenation contains
/// `wanted`, within 30 s: everything read.
async fn read_until<S>(ws: &mut S, wanted: &str) -> String
where
    S: futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    let mut seen = String::new();
    let read = async {
        while !seen.contains(wanted) {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => seen.push_str(&text),
                Some(Ok(Message::Binary(bytes))) => seen.push_str(&String::from_utf8_lossy(&bytes)),
                Some(Ok(_)) => {}
                other => panic!("the console ended ({other:?}) before {wanted:?}; read {seen:?}"),
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .is_err()
    {
        panic!("no {wanted:?} within 30 s");
    }
    seen
}

/// Portainer 1.x's console routes: a WebSocket on an exec and on an
/// attached container, bridged by the host to the engine's hijacked
/// streams.
#[tokio::test(flavor = "multi_thread")]
async fn portainer_consoles_over_websockets() {
    let Some(engine) = docker::shared() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (berth, jwt, local, _) = portainer_berth(dir.path(), engine).await;
    let name = format!("console-{}", std::process::id());
    let run = engine.cli(&["run", "-dit", "--name", &name, docker::IMAGE, "sh"]);
    assert!(run.status.success(), "{run:?}");

    // An exec made through the proxy, as the web UI makes it.
    let http = client();
    let (status, exec) = call_bearer(
        &http,
        "POST",
        &berth.url(&format!(
            "/api/endpoints/{local}/docker/containers/{name}/exec"
        )),
        Some(&jwt),
        Some(json!({
            "AttachStdin": true, "AttachStdout": true, "AttachStderr": true,
            "Tty": true, "Cmd": ["sh"]
        })),
    )
    .await;
    assert_eq!(status, 201, "{exec}");
    let exec = exec["Id"].as_str().unwrap().to_string();
    let ws_url = |route: &str, id: &str| {
        format!(
            "{}/api/websocket/{route}?token={jwt}&endpointId={local}&id={id}",
            berth.url.replacen("http://", "ws://", 1)
        )
    };
    let (mut ws, answer) = tokio_tungstenite::connect_async(ws_url("exec", &exec))
        .await
        .unwrap();
    assert_eq!(answer.status(), 101);
    ws.send(Message::text("echo exec-$((6*7))\n"))
        .await
        .unwrap();
    read_until(&mut ws, "exec-42").await;
    ws.send(Message::text("exit\n")).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(Ok(message)) = ws.next().await {
            if message.is_close() {
                break;
            }
        }
    });
    assert!(
        ended.await.is_ok(),
        "the console closes when the shell exits"
    );

    // Attached to the container's own shell.
    let id = engine.inspect(&name).unwrap()["Id"]
        .as_str()
        .unwrap()
        .to_string();
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url("attach", &id))
        .await
        .unwrap();
    ws.send(Message::text("echo attach-$((2+3))\n"))
        .await
        .unwrap();
    read_until(&mut ws, "attach-5").await;
    ws.close(None).await.unwrap();

    // Refusals, in Portainer's shape.
    let plain = http
        .get(berth.url(&format!(
            "/api/websocket/exec?token={jwt}&endpointId={local}&id={exec}"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 400, "not a WebSocket upgrade");
    let body: Value = plain.json().await.unwrap();
    assert!(
        body["details"].as_str().unwrap().contains("websocket"),
        "{body}"
    );
    for (query, status) in [
        (format!("token={jwt}&endpointId={local}&id=not-hex"), 400),
        (format!("token={jwt}&endpointId=999&id={exec}"), 404),
        (format!("endpointId={local}&id={exec}"), 401),
    ] {
        let answer = http
            .get(berth.url(&format!("/api/websocket/exec?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), status, "{query}");
        let body: Value = answer.json().await.unwrap();
        assert!(body["err"].is_string(), "{body}");
    }
    engine.cli(&["rm", "-f", &name]);
}

/// The Docker SDK for Python through Portainer's proxy: exec_run (the
/// hijacked start), exec with stdin on the raw socket, run, logs that
/// follow.
#[tokio::test(flavor = "multi_thread")]
async fn the_docker_sdk_for_python_through_portainer() {
    let Some(engine) = docker::shared() else {
        return;
    };
    let Some(python) = support::docker_py() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (berth, jwt, local, _) = portainer_berth(dir.path(), engine).await;
    let clients = client_config(
        &dir.path().join("clients"),
        "Authorization",
        &format!("Bearer {jwt}"),
    );
    let name = format!("dockerpy-{}", std::process::id());
    let run = engine.cli(&["run", "-d", "--name", &name, docker::IMAGE, "sleep", "600"]);
    assert!(run.status.success(), "{run:?}");
    let address = berth.url.trim_start_matches("http://").to_string();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/py/dockerpy_session.py");
    let child = Command::new(&python)
        .arg(script)
        .arg(format!("tcp://{address}/api/endpoints/{local}/docker"))
        .arg(&name)
        .arg(docker::IMAGE)
        .env("DOCKER_CONFIG", &clients)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = tokio::task::spawn_blocking(move || wait_bounded(child, "dockerpy_session.py"))
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ok",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    engine.cli(&["rm", "-f", &name]);
}
