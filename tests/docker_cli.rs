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

use serde_json::{Value, json};
use support::docker::{self, Engine};
use support::{Berth, call_bearer, client};

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
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(STEP) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("{what} hung for more than {STEP:?}");
        }
    }
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

/// A `multipart/form-data` body of text fields and files, as the
/// Portainer API takes endpoints.
fn multipart(fields: &[(&str, &str)], files: &[(&str, &Path)]) -> (String, Vec<u8>) {
    let boundary = "berth-test-boundary-7d3c";
    let mut body = Vec::new();
    for (name, value) in fields {
        write!(
            body,
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        )
        .unwrap();
    }
    for (name, path) in files {
        write!(
            body,
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; \
             filename=\"{name}.pem\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .unwrap();
        body.extend_from_slice(&std::fs::read(path).unwrap());
        body.extend_from_slice(b"\r\n");
    }
    write!(body, "--{boundary}--\r\n").unwrap();
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// An administrator's JWT and the ids of a local and a TLS endpoint.
async fn portainer(berth: &Berth, engine: &Engine) -> (String, u64, u64) {
    let http = client();
    let admin = json!({ "Username": "admin", "Password": "adminpassword" });
    let (status, body) = call_bearer(
        &http,
        "POST",
        &berth.url("/api/users/admin/init"),
        None,
        Some(admin.clone()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        call_bearer(&http, "POST", &berth.url("/api/auth"), None, Some(admin)).await;
    assert_eq!(status, 200, "{body}");
    let jwt = body["jwt"].as_str().unwrap().to_string();
    let tls = engine.tls.as_ref().expect("the private engine serves TLS");
    let mut ids = Vec::new();
    let forms = [
        multipart(&[("Name", "here"), ("EndpointType", "1")], &[]),
        multipart(
            &[
                ("Name", "tls"),
                ("EndpointType", "1"),
                ("URL", &tls.address),
                ("TLS", "true"),
            ],
            &[
                ("TLSCACertFile", &tls.ca),
                ("TLSCertFile", &tls.cert),
                ("TLSKeyFile", &tls.key),
            ],
        ),
    ];
    for (content_type, body) in forms {
        let answer = http
            .post(berth.url("/api/endpoints"))
            .bearer_auth(&jwt)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        let body: Value = answer.json().await.unwrap();
        assert_eq!(status, 200, "{body}");
        ids.push(body["Id"].as_u64().unwrap());
    }
    (jwt, ids[0], ids[1])
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

#[tokio::test(flavor = "multi_thread")]
async fn the_docker_cli_through_portainer_endpoints() {
    let Some(engine) = docker::shared() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[docker]\nlocal = \"{}\"\nallow = [\"tcp://127.0.0.1:*\"]\n",
        engine.host
    );
    let berth = Berth::start(dir.path(), &config);
    let (jwt, local, tls) = portainer(&berth, engine).await;
    let clients = dir.path().join("clients");
    std::fs::create_dir_all(&clients).unwrap();
    std::fs::write(
        clients.join("config.json"),
        json!({ "HttpHeaders": { "Authorization": format!("Bearer {jwt}") } }).to_string(),
    )
    .unwrap();
    let address = berth.url.trim_start_matches("http://").to_string();
    let clis = clis();
    assert!(!clis.is_empty(), "no docker CLI");
    let engine_version = engine.cli(&["version", "--format", "{{.Server.APIVersion}}"]);
    eprintln!(
        "engine API {}; CLIs: {clis:?}",
        String::from_utf8_lossy(&engine_version.stdout).trim()
    );
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let sessions = tokio::task::spawn_blocking(move || {
        for (n, bin) in clis.iter().enumerate() {
            for (kind, id) in [("local", local), ("tls", tls)] {
                let cli = Cli {
                    bin: bin.clone(),
                    host: format!("tcp://{address}/api/endpoints/{id}/docker"),
                    config: clients.clone(),
                };
                session(&cli, &format!("{n}{kind}"), &scratch);
            }
        }
    });
    sessions.await.unwrap();
    let metrics = support::get_text(&client(), &berth.url("/_berth/metrics")).await;
    let upgrades = metrics
        .lines()
        .find(|l| l.starts_with("berth_docker_upgrades_total{plugin=\"stacks\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(upgrades >= 8, "{metrics}");
}
