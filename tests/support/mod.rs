//! Test harness: start the real `berth` binary on 127.0.0.1:0 in a temp
//! data directory and talk to it like a user would.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A built plugin (by host/build.rs), e.g. `plugin_wasm("faults")`.
pub fn plugin_wasm(name: &str) -> PathBuf {
    Path::new(env!("BERTH_TEST_PLUGINS")).join(format!("{name}.wasm"))
}

/// Copy a file into place atomically, the way an operator should.
pub fn drop_file(from: &Path, to: &Path) {
    let tmp = to.with_file_name(format!(
        ".{}.tmp",
        to.file_name().unwrap().to_string_lossy()
    ));
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

/// A running berth.
pub struct Berth {
    child: Option<Child>,
    /// The binary it runs (benchmarks compare two).
    bin: PathBuf,
    pub url: String,
    pub data: PathBuf,
    pub config: PathBuf,
    log: PathBuf,
}

impl Berth {
    /// Start berth with `config` (TOML merged over the defaults) in `dir`.
    pub fn start(dir: &Path, config: &str) -> Berth {
        Berth::start_with(dir, config, &[])
    }

    /// Like `start`, with extra `serve` arguments.
    pub fn start_with(dir: &Path, config: &str, args: &[&str]) -> Berth {
        Berth::start_bin(Path::new(env!("CARGO_BIN_EXE_berth")), dir, config, args)
    }

    /// Like `start_with`, running the berth binary at `bin`.
    pub fn start_bin(bin: &Path, dir: &Path, config: &str, args: &[&str]) -> Berth {
        let data = dir.join("data");
        let config_path = dir.join("berth.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.join("berth.log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut command = Command::new(bin);
        // A test that names its own store (the fleet's) keeps it.
        if postgres::store_pass()
            && std::env::var_os("BERTH_STORE_URL").is_none()
            && !config.contains("[store]")
        {
            command.env("BERTH_STORE_URL", postgres::url_for(&data));
        }
        let mut child = command
            .arg("--config")
            .arg(&config_path)
            .arg("--data-dir")
            .arg(&data)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("BERTH_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start berth");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "berth did not start; its log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        Berth {
            child: Some(child),
            bin: bin.to_path_buf(),
            url,
            data,
            config: config_path,
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn plugins_dir(&self) -> PathBuf {
        self.data.join("plugins")
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data.join("admin-token"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Run `berth ARGS...` against this server's data directory.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.data)
            .args(args)
            .output()
            .unwrap()
    }

    /// `berth run commands keys:generate`: the new API key and secret.
    pub fn commands_keys(&self) -> (String, String) {
        let pair = self.cli_line(&["run", "commands", "keys:generate"], "API KEY: ");
        let (key, secret) = pair
            .split_once(" | API SECRET: ")
            .unwrap_or_else(|| panic!("no key pair in {pair}"));
        (key.to_string(), secret.to_string())
    }

    /// `berth run droplets create-user -u NAME -g GROUP`: its TOTP secret.
    pub fn cikit_user(&self, name: &str, group: &str) -> String {
        let args = ["run", "droplets", "create-user", "-u", name, "-g", group];
        self.cli_line(&args, "secret: ")
    }

    /// Run `berth ARGS...`, which must succeed, and return what follows
    /// `prefix` on the first stdout line starting with it.
    pub fn cli_line(&self, args: &[&str], prefix: &str) -> String {
        let out = self.cli(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` line in {stdout}"))
            .to_string()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM and wait for a clean exit; returns whether it exited 0.
    pub fn stop(&mut self) -> bool {
        let mut child = self.child.take().unwrap();
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("berth did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory of the berth process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A failing test shows what each Berth it started logged last.
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(LOG_TAIL).collect();
            eprintln!("---- the last lines of {} ----", self.log.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Lines of a Berth's log a failing test prints.
const LOG_TAIL: usize = 60;

/// `GET path` (one of the host's `/_berth/` views) as the admin; its JSON.
pub async fn admin_view(c: &reqwest::Client, berth: &Berth, path: &str) -> serde_json::Value {
    let r = c
        .get(berth.url(path))
        .bearer_auth(berth.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.unwrap()
}

/// How many jobs the `jobber` fixture has counted under `key`.
pub async fn jobber_done(c: &reqwest::Client, berth: &Berth, key: &str) -> i64 {
    get_json(c, &berth.url(&format!("/jobber/done/{key}")))
        .await
        .1["done"]
        .as_i64()
        .unwrap()
}

/// Send `request`; its JSON answer.
pub async fn json_of(request: reqwest::RequestBuilder) -> serde_json::Value {
    request.send().await.unwrap().json().await.unwrap()
}

/// `berth run beacons create-admin admin`, then a Lighthouse login: the
/// session cookie (`name=value`).
pub async fn lighthouse_admin(berth: &Berth) -> String {
    let password = berth.cli_line(&["run", "beacons", "create-admin", "admin"], "password: ");
    let login = client()
        .post(berth.url("/api/v0.2/login"))
        .json(&serde_json::json!({ "Email": "admin", "Password": password }))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let cookie = login.headers()["set-cookie"].to_str().unwrap();
    cookie.split(';').next().unwrap().to_string()
}

/// Poll `check` until it returns Some, or panic after `timeout` with `what`.
pub async fn poll<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Drop the fixture plugin `name` into `berth`'s plugins folder and wait
/// until `GET probe` is no longer the host's 404 (its routes are mounted).
pub async fn mount(berth: &Berth, name: &str, probe: &str) {
    drop_file(
        &plugin_wasm(name),
        &berth.plugins_dir().join(format!("{name}.wasm")),
    );
    let http = client();
    poll(Duration::from_secs(20), &format!("{name} mounted"), || {
        let url = berth.url(probe);
        let http = http.clone();
        async move {
            let status = http.get(url).send().await.ok()?.status().as_u16();
            (status != 404).then_some(())
        }
    })
    .await;
}

/// The TOTP code an authenticator app shows for `secret` (base32) at time
/// step `now + offset` (RFC 6238: SHA-1, 6 digits, 30 s).
pub fn totp(secret_b32: &str, offset: i64) -> String {
    use hmac::{Hmac, Mac};
    let mut secret = Vec::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in secret_b32.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => panic!("not base32: {secret_b32}"),
        };
        buffer = (buffer << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            secret.push((buffer >> (bits - 8)) as u8);
            bits -= 8;
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let step = (now / 30 + offset) as u64;
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(&secret).unwrap();
    mac.update(&step.to_be_bytes());
    let h = mac.finalize().into_bytes();
    let o = (h[19] & 15) as usize;
    let n = u32::from_be_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]) & 0x7fff_ffff;
    format!("{:06}", n % 1_000_000)
}

/// A benchmark setting from the environment variable `name`, else
/// `default`.
pub fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A plain HTTP client.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// The value of the unlabelled metric `name` in `/_berth/metrics`, read
/// over a connection of its own from 127.0.0.254, so that it never counts
/// against a test's client address.
pub async fn metric(berth: &Berth, name: &str) -> u64 {
    let http = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 254]))
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let text = http
        .get(berth.url("/_berth/metrics"))
        .header("connection", "close")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

/// Wait until the server has closed all but `n` client connections, by
/// its own count (the one asking left out): a client's closed connection
/// is the server's to notice, some time after the client dropped it.
pub async fn wait_connections(berth: &Berth, n: u64) {
    poll(
        Duration::from_secs(30),
        &format!("the server to count {n} open connections"),
        || async { (metric(berth, "berth_connections").await == n + 1).then_some(()) },
    )
    .await;
}

/// GET `url` and return (status, body as JSON or Null).
pub async fn get_json(client: &reqwest::Client, url: &str) -> (u16, serde_json::Value) {
    let r = client.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// GET `url` and return the body as text.
pub async fn get_text(client: &reqwest::Client, url: &str) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
}

/// POST `url` with no body and return (status, JSON body).
pub async fn post_json(client: &reqwest::Client, url: &str) -> (u16, serde_json::Value) {
    let r = client.post(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// `METHOD url` with an optional Bearer token and JSON body: (status, the
/// JSON answer or Null).
pub async fn call_bearer(
    client: &reqwest::Client,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = client.request(method, url);
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// A local HTTP/1.1 server on 127.0.0.1 answering every request with
/// `body`: its port, and how many connections it accepted.
pub async fn upstream(body: &'static str) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    (port, accepted)
}

pub mod components;
pub mod docker;
pub mod dokkud;
pub mod nginx;
pub mod portainer;
pub mod postgres;

/// A Python with the real clients the API tests drive (the Docker Cloud
/// SDK, httpie), in a venv under the target dir, made on first use from
/// PyPI with pinned versions. None (the test skips) when it cannot be made,
/// unless `BERTH_REQUIRE_DOCKER=1` (CI), where that is a failure.
pub fn python() -> Option<PathBuf> {
    static PYTHON: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    venv(
        &PYTHON,
        "pyenv",
        &[
            "python-dockercloud==1.0.12",
            "websocket-client==0.59.0",
            "httpie==3.2.4",
        ],
    )
}

/// A Python with third-party Portainer 1.x clients in a venv of its own:
/// `portainer-api` 1.22.1.1 (generated from Portainer 1.22's Swagger
/// description), `portainer-cli` 0.3.0 (its `portainer-cli` command
/// beside the interpreter), with `validators`, which that CLI imports
/// without declaring it, `portainer` 0.1b0 (a client of 1.15's API) and
/// `portainer-py` 0.7.6 (its `portainerpy` command).
pub fn portainer_clients() -> Option<PathBuf> {
    static PYTHON: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    venv(
        &PYTHON,
        "portainer-clients-venv",
        &[
            "portainer-api==1.22.1.1",
            "portainer-cli==0.3.0",
            "validators==0.36.0",
            "portainer==0.1b0",
            "portainer-py==0.7.6",
        ],
    )
}

/// A Python with the Docker SDK for Python, in a venv of its own.
pub fn docker_py() -> Option<PathBuf> {
    static PYTHON: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    venv(&PYTHON, "dockerpy-venv", &["docker==7.1.0"])
}

/// schemathesis's `st` command, in a venv of its own made the same way.
pub fn schemathesis() -> Option<PathBuf> {
    static ST: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    venv(&ST, "st-venv", &["schemathesis==4.32.5"]).map(|python| python.with_file_name("st"))
}

/// The official Docker Cloud CLI (`docker-cloud` 1.0.9, Python 2 code,
/// unmodified) in a Python 2.7 virtualenv under the target dir, made on
/// first use from PyPI: Python 2.7 from pyenv (`$PYENV_ROOT` or
/// `~/.pyenv`, any 2.7.x) or `python2.7` on the PATH; virtualenv 20.15.1,
/// the last to make 2.7 environments, is installed beside the venv, not
/// into that Python. None (the test skips) when it cannot be made, unless
/// `BERTH_REQUIRE_DOCKER=1` (CI).
pub fn docker_cloud_cli() -> Option<PathBuf> {
    static CLI: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let made = CLI.get_or_init(|| {
        let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let venv = base.join("docker-cloud-venv");
        let cli = venv.join("bin/docker-cloud");
        let marker = venv.join("berth-ready");
        if marker.exists() {
            return Ok(cli);
        }
        let python = python27().ok_or("no Python 2.7 (pyenv install 2.7.18)")?;
        let tools = base.join("virtualenv-py27");
        run_ok(
            Command::new(&python)
                .args(["-m", "pip", "install", "--quiet", "--target"])
                .arg(&tools)
                .arg("virtualenv==20.15.1"),
        )?;
        run_ok(
            Command::new(&python)
                .env("PYTHONPATH", &tools)
                .args(["-m", "virtualenv", "--quiet"])
                .arg(&venv),
        )?;
        run_ok(Command::new(venv.join("bin/pip")).args([
            "install",
            "--quiet",
            "docker-cloud==1.0.9",
        ]))?;
        std::fs::write(&marker, b"").map_err(|e| e.to_string())?;
        Ok(cli)
    });
    ready(made, "the docker-cloud CLI")
}

/// A Python 2.7 interpreter: pyenv's, else one on the PATH.
fn python27() -> Option<PathBuf> {
    let root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pyenv")));
    let pyenv = root.and_then(|root| {
        let mut versions: Vec<PathBuf> = std::fs::read_dir(root.join("versions"))
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("2.7"))
            })
            .map(|p| p.join("bin/python2.7"))
            .filter(|p| p.is_file())
            .collect();
        versions.sort();
        versions.pop()
    });
    pyenv.or_else(|| {
        let paths = std::env::var_os("PATH")?;
        std::env::split_paths(&paths)
            .map(|d| d.join("python2.7"))
            .find(|p| p.is_file())
    })
}

/// Run `cmd`; its stderr as the error if it fails.
fn run_ok(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The python of venv `name` under the target dir, with `packages`
/// installed from PyPI on first use.
fn venv(
    made: &'static std::sync::OnceLock<Result<PathBuf, String>>,
    name: &str,
    packages: &[&str],
) -> Option<PathBuf> {
    let made = made.get_or_init(|| {
        let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        let python = venv.join("bin/python");
        // The marker names what was installed: another list installs again.
        let marker = venv.join("berth-ready");
        let wanted = packages.join("\n");
        if std::fs::read_to_string(&marker).is_ok_and(|had| had == wanted) {
            return Ok(python);
        }
        let run = |cmd: &mut Command| -> Result<(), String> {
            let out = cmd.output().map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        };
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        run(Command::new(&python)
            .args(["-m", "pip", "install", "--quiet"])
            .args(packages))?;
        std::fs::write(&marker, &wanted).map_err(|e| e.to_string())?;
        Ok(python)
    });
    ready(made, &format!("the Python test environment {name}"))
}

/// `portainer-api-client` 0.0.2 from the npm registry (a Node.js client
/// of Portainer's API), installed under the target dir: the
/// `node_modules` folder to put on `NODE_PATH`.
pub fn portainer_node_client() -> Option<PathBuf> {
    static MODULES: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let made = MODULES.get_or_init(|| {
        let prefix = Path::new(env!("CARGO_TARGET_TMPDIR")).join("portainer-npm");
        let modules = prefix.join("node_modules");
        let wanted = "portainer-api-client@0.0.2";
        let marker = prefix.join("berth-ready");
        if std::fs::read_to_string(&marker).is_ok_and(|had| had == wanted) {
            return Ok(modules);
        }
        std::fs::create_dir_all(&prefix).map_err(|e| e.to_string())?;
        let out = Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
            .arg(&prefix)
            .arg(wanted)
            .output()
            .map_err(|e| format!("npm: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        std::fs::write(&marker, wanted).map_err(|e| e.to_string())?;
        Ok(modules)
    });
    ready(made, "the npm package portainer-api-client")
}

/// A made test tool, or None (the test skips) when it could not be made;
/// with `BERTH_REQUIRE_DOCKER=1` (CI) that is a failure instead.
fn ready(made: &Result<PathBuf, String>, what: &str) -> Option<PathBuf> {
    match made {
        Ok(p) => Some(p.clone()),
        Err(why) if std::env::var("BERTH_REQUIRE_DOCKER").as_deref() == Ok("1") => {
            panic!("cannot make {what}: {why}")
        }
        Err(why) => {
            eprintln!("skipping: cannot make {what}: {why}");
            None
        }
    }
}

/// Wait for `child` at most `limit`, killing it (and failing the test)
/// past that.
pub fn wait_bounded(child: Child, limit: Duration, what: &str) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("{what} hung for more than {limit:?}");
        }
    }
}

/// A file under `tests/`, by its path there.
pub fn script(path: &str) -> String {
    format!("{}/../tests/{path}", env!("CARGO_MANIFEST_DIR"))
}

/// Run a third-party client's session (`command`), at most two minutes;
/// it must succeed and print `session ok`. Its standard output.
pub async fn client_session(mut command: std::process::Command, what: &'static str) -> String {
    let out = tokio::task::spawn_blocking(move || {
        let child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        wait_bounded(child, Duration::from_secs(120), what)
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.contains("session ok"),
        "{what}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
