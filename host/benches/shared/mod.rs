//! What several benches share: wrk, a native hyper hello server, and an
//! nginx reverse proxy to a Docker engine's socket (the peer of Berth's
//! Docker proxy).

#![allow(dead_code)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support;

/// An nginx reverse proxy on 127.0.0.1 to the engine's unix socket, set up
/// as one would for the Docker API: keep-alive upstreams, upgrades passed
/// on, no buffering either way.
pub struct Nginx {
    child: std::process::Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    pub fn start(socket: &str) -> anyhow::Result<Nginx> {
        let dir = tempfile::tempdir()?;
        let port = support::docker::free_port();
        let prefix = dir.path().display().to_string();
        let conf = format!(
            "daemon off;\nuser root;\nworker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n\
               client_body_temp_path {prefix}/body;\n  proxy_temp_path {prefix}/proxy;\n\
               fastcgi_temp_path {prefix}/fcgi;\n  uwsgi_temp_path {prefix}/uwsgi;\n  scgi_temp_path {prefix}/scgi;\n\
               map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}\n\
               upstream docker {{ server unix:{socket}; keepalive 16; }}\n\
               server {{\n    listen 127.0.0.1:{port};\n    client_max_body_size 0;\n\
                 location / {{\n      proxy_pass http://docker;\n      proxy_http_version 1.1;\n\
                   proxy_set_header Upgrade $http_upgrade;\n      proxy_set_header Connection $connection_upgrade;\n\
                   proxy_buffering off;\n      proxy_request_buffering off;\n      proxy_read_timeout 3600s;\n\
                 }}\n  }}\n}}\n"
        );
        Nginx::run(dir, port, &conf)
    }

    fn run(dir: tempfile::TempDir, port: u16, conf: &str) -> anyhow::Result<Nginx> {
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf)?;
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(dir.path())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("nginx: {e} (apt-get install nginx-light)"))?;
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(Instant::now() < until, "nginx did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Nginx {
            child,
            port,
            _dir: dir,
        })
    }
}

/// nginx's TCP proxy (its stream module, `apt-get install
/// libnginx-mod-stream`) on 127.0.0.1 to the engine's socket, passing a
/// client's half-close on (`proxy_half_close`). Unlike the HTTP proxy it
/// carries `docker exec` whole: the CLI half-closes as soon as the stream
/// is switched, and nginx's HTTP proxy ends the upgraded connection there,
/// the command's output and exit code with it.
pub fn nginx_stream(socket: &str) -> anyhow::Result<Nginx> {
    let dir = tempfile::tempdir()?;
    let port = support::docker::free_port();
    let prefix = dir.path().display().to_string();
    let module = "/usr/lib/nginx/modules/ngx_stream_module.so";
    anyhow::ensure!(
        std::path::Path::new(module).exists(),
        "no {module} (apt-get install libnginx-mod-stream)"
    );
    let conf = format!(
        "load_module {module};\ndaemon off;\nuser root;\nworker_processes 1;\n\
         pid {prefix}/nginx.pid;\nerror_log {prefix}/error.log;\n\
         events {{ worker_connections 1024; }}\n\
         stream {{\n  server {{\n    listen 127.0.0.1:{port};\n    proxy_pass unix:{socket};\n\
           proxy_half_close on;\n    proxy_timeout 3600s;\n  }}\n}}\n"
    );
    Nginx::run(dir, port, &conf)
}

impl Drop for Nginx {
    /// SIGTERM, not SIGKILL: a killed master leaves its workers running.
    fn drop(&mut self) {
        // SAFETY: a plain signal to our own child, which `wait` reaps.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

pub struct WrkRun {
    pub rps: f64,
    pub non_2xx: u64,
    pub errors: u64,
    /// The median latency wrk saw.
    pub p50: Duration,
}

/// How wrk loads a URL.
pub struct Load<'a> {
    pub threads: u32,
    pub connections: u64,
    pub seconds: u64,
    /// Headers sent with every request, `Name: value`.
    pub headers: &'a [String],
    /// A Lua script shaping the requests.
    pub script: Option<&'a str>,
}

/// wrk -t2 on `url`.
pub fn wrk(url: &str, seconds: u64, connections: u64) -> anyhow::Result<WrkRun> {
    run_wrk(url, &Load::two_threads(seconds, connections, None))
}

/// wrk -t2 with a Lua script (request shaping).
pub fn wrk_script(url: &str, seconds: u64, connections: u64, lua: &str) -> anyhow::Result<WrkRun> {
    run_wrk(url, &Load::two_threads(seconds, connections, Some(lua)))
}

impl<'a> Load<'a> {
    fn two_threads(seconds: u64, connections: u64, script: Option<&'a str>) -> Load<'a> {
        Load {
            threads: 2,
            connections,
            seconds,
            headers: &[],
            script,
        }
    }
}

pub fn run_wrk(url: &str, load: &Load<'_>) -> anyhow::Result<WrkRun> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        format!("-t{}", load.threads),
        format!("-c{}", load.connections),
        format!("-d{}s", load.seconds),
        "--latency".to_string(),
    ]);
    for header in load.headers {
        cmd.arg("-H").arg(header);
    }
    let script = std::env::temp_dir().join(format!("berth-bench-{}.lua", std::process::id()));
    if let Some(lua) = load.script {
        std::fs::write(&script, lua)?;
        cmd.arg("-s").arg(&script);
    }
    let out = cmd.arg(url).output();
    if load.script.is_some() {
        let _ = std::fs::remove_file(&script);
    }
    let out = out.map_err(|e| anyhow::anyhow!("wrk: {e} (apt-get install wrk)"))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let find = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|s| s.trim().to_string()))
    };
    let rps = find("Requests/sec:")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    let non_2xx = find("Non-2xx or 3xx responses:")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let errors = find("Socket errors:")
        .map(|s| {
            s.split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    let p50 = find("50%").and_then(|s| duration(&s)).unwrap_or_default();
    Ok(WrkRun {
        rps,
        non_2xx,
        errors,
        p50,
    })
}

/// wrk's `180.00us`, `2.38ms`, `1.20s`.
fn duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit {
        "us" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}

/// The native peer of hello: a hyper server answering hello's JSON.
pub async fn native_hello(listener: tokio::net::TcpListener) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|_req| async {
                let body = http_body_util::Full::new(bytes::Bytes::from_static(
                    b"{\"greeting\":\"Hello, bench!\"}",
                ));
                let mut r = hyper::Response::new(body);
                r.headers_mut().insert(
                    "content-type",
                    http::HeaderValue::from_static("application/json"),
                );
                Ok::<_, std::convert::Infallible>(r)
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
