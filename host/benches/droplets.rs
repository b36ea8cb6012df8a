//! Docker latency (`cargo bench --profile dist --bench droplets`; needs root for the
//! private dockerd, like the Docker tests): sequential keep-alive requests,
//! one at a time, each Berth call paired with its direct baseline (the two
//! take turns, so both see the same state of the machine), timing
//!
//! - `GET /containers/json` straight to the engine's socket (the baseline);
//! - the same call proxied by Berth (`proxy-docker`, through the
//!   `dockerprobe` fixture);
//! - `GET /api/v1/droplet/list` of the `droplets` plugin (token check, the
//!   engine's list filtered by label, the surface's JSON) against the
//!   engine's filtered list straight from the socket;
//! - `_ping` through a bare tokio proxy with no wasm, against `_ping`
//!   direct: the floor of any hop on this machine.
//!
//! Both sides are timed with the same minimal HTTP/1.1 client.
//!
//! Knobs: BENCH_REQUESTS (default 500), BENCH_DROPLETS (default 10).

#[path = "../../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Either end: the engine's socket or Berth's TCP port.
trait Wire: Read + Write {}
impl<T: Read + Write> Wire for T {}

/// A minimal HTTP/1.1 keep-alive client, the same code for the engine's
/// socket and for Berth, so the comparison measures the servers only.
struct Direct {
    reader: BufReader<Box<dyn Wire>>,
    headers: String,
}

impl Direct {
    fn connect(socket: &str) -> anyhow::Result<Direct> {
        Ok(Direct {
            reader: BufReader::new(Box::new(UnixStream::connect(socket)?)),
            headers: String::new(),
        })
    }

    fn tcp(addr: &str, headers: String) -> anyhow::Result<Direct> {
        let tcp = std::net::TcpStream::connect(addr)?;
        tcp.set_nodelay(true)?;
        Ok(Direct {
            reader: BufReader::new(Box::new(tcp)),
            headers,
        })
    }

    fn get(&mut self, path: &str) -> anyhow::Result<Vec<u8>> {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: docker\r\n{}\r\n",
            self.headers
        );
        self.reader.get_mut().write_all(request.as_bytes())?;
        let mut line = String::new();
        let (mut length, mut chunked) = (None, false);
        self.reader.read_line(&mut line)?;
        anyhow::ensure!(line.contains(" 200 "), "engine said {line}");
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let l = line.trim_end().to_ascii_lowercase();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.strip_prefix("content-length:") {
                length = Some(v.trim().parse::<usize>()?);
            }
            if l.starts_with("transfer-encoding:") && l.contains("chunked") {
                chunked = true;
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.reader.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim(), 16)?;
                let mut chunk = vec![0; size + 2];
                self.reader.read_exact(&mut chunk)?;
                body.extend_from_slice(&chunk[..size]);
                if size == 0 {
                    break;
                }
            }
        } else {
            body.resize(length.unwrap_or(0), 0);
            self.reader.read_exact(&mut body)?;
        }
        Ok(body)
    }
}

struct Stats {
    median: Duration,
    p99: Duration,
}

fn stats(mut times: Vec<Duration>) -> Stats {
    times.sort();
    let n = times.len();
    Stats {
        median: times[n / 2],
        p99: times[n * 99 / 100],
    }
}

fn timed(call: &mut impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    let start = Instant::now();
    call()?;
    Ok(start.elapsed())
}

fn measure(n: usize, mut call: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Stats> {
    for _ in 0..n / 10 {
        call()?;
    }
    let times = (0..n)
        .map(|_| timed(&mut call))
        .collect::<anyhow::Result<_>>()?;
    Ok(stats(times))
}

/// A bare proxy, the floor of any hop: TCP in, the engine's socket out,
/// on one tokio thread, no wasm, no routing. It passes on bodyless
/// requests and answers framed by `Content-Length` (enough for `_ping`).
/// Its address.
fn bare_proxy(socket: String) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn message<R: AsyncReadExt + Unpin>(from: &mut R, buf: &mut Vec<u8>) -> Option<()> {
        buf.clear();
        let mut chunk = [0; 16 << 10];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                assert!(
                    !head.contains("chunked"),
                    "the bare proxy takes lengths only"
                );
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if buf.len() >= end + 4 + length {
                    return Some(());
                }
            }
            match from.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (mut client, _) = listener.accept().await.unwrap();
                client.set_nodelay(true).unwrap();
                let socket = socket.clone();
                tokio::spawn(async move {
                    let mut engine = tokio::net::UnixStream::connect(socket).await.unwrap();
                    let (mut request, mut answer) = (Vec::new(), Vec::new());
                    while message(&mut client, &mut request).await.is_some() {
                        engine.write_all(&request).await.unwrap();
                        message(&mut engine, &mut answer).await.unwrap();
                        client.write_all(&answer).await.unwrap();
                    }
                });
            }
        })
    });
    Ok(addr)
}

/// Time two calls in turn, `n` times each, taking turns at going first, so
/// both see the same state of the machine (this VM's speed drifts by up to
/// 1.8x between phases, which separate runs would put into the ratio).
fn measure_pair(
    n: usize,
    mut a: impl FnMut() -> anyhow::Result<()>,
    mut b: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<(Stats, Stats)> {
    for _ in 0..n / 10 {
        a()?;
        b()?;
    }
    let (mut times_a, mut times_b) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let (took_a, took_b) = if i % 2 == 0 {
            let took_a = timed(&mut a)?;
            (took_a, timed(&mut b)?)
        } else {
            let took_b = timed(&mut b)?;
            (timed(&mut a)?, took_b)
        };
        times_a.push(took_a);
        times_b.push(took_b);
    }
    Ok((stats(times_a), stats(times_b)))
}

fn main() -> anyhow::Result<()> {
    let n = support::knob("BENCH_REQUESTS", 500);
    let droplets = support::knob("BENCH_DROPLETS", 10);
    let Some(engine) = support::docker::shared() else {
        anyhow::bail!("no Docker engine: this benchmark needs dockerd (run as root)");
    };
    let dir = tempfile::tempdir()?;
    let config = format!(
        "[docker]\nlocal = \"{}\"\n[plugins.dockerprobe]\ngrants = [\"docker\"]\n",
        engine.host
    );
    let berth = support::Berth::start(dir.path(), &config);
    support::drop_file(
        &support::plugin_wasm("dockerprobe"),
        &berth.plugins_dir().join("dockerprobe.wasm"),
    );
    let out = berth.cli(&[
        "run",
        "droplets",
        "create-user",
        "-u",
        "bench",
        "-g",
        "owner",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let secret = text
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .ok_or_else(|| anyhow::anyhow!("create-user said {text}"))?
        .to_string();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let http = reqwest::Client::new();
    let token: String = rt.block_on(async {
        let body: serde_json::Value = http
            .post(berth.url("/api/v1/user/auth"))
            .json(&serde_json::json!({ "username": "bench", "code": support::totp(&secret, 0) }))
            .send()
            .await?
            .json()
            .await?;
        anyhow::Ok(
            body["access_token"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    })?;
    anyhow::ensure!(!token.is_empty(), "login failed");
    let prefix = format!("bench{}-", std::process::id());
    for i in 0..droplets {
        rt.block_on(async {
            let r = http
                .post(berth.url("/api/v1/droplet/add"))
                .bearer_auth(&token)
                .json(&serde_json::json!({ "name": format!("{prefix}{i}") }))
                .send()
                .await?;
            anyhow::ensure!(r.status() == 200, "droplet add: {}", r.text().await?);
            anyhow::Ok(())
        })?;
    }
    // Wait for the probe plugin.
    for _ in 0..200 {
        let status = rt
            .block_on(http.get(berth.url("/probe/local/info")).send())?
            .status();
        if status == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let socket = engine.host.trim_start_matches("unix://").to_string();
    let mut direct = Direct::connect(&socket)?;
    let list_path = "/containers/json?all=1";
    let filtered = "/containers/json?all=1&filters=%7B%22label%22%3A%5B%22berth.droplet%22%5D%7D";
    let addr = berth.url.trim_start_matches("http://").to_string();
    let mut through = Direct::tcp(&addr, format!("Authorization: Bearer {token}\r\n"))?;
    let mut get = |path: &str, _auth: bool| through.get(path).map(drop);

    let health = measure(n, || get("/_berth/health", false))?;
    let hello = measure(n, || get("/hello/bench", false))?;
    let (ping_direct, ping) = measure_pair(
        n,
        || direct.get("/_ping").map(drop),
        || get("/probe/local/docker/_ping", false),
    )?;
    let mut bare = Direct::tcp(&bare_proxy(socket.clone())?, String::new())?;
    let (bare_direct, bare_ping) = measure_pair(
        n,
        || direct.get("/_ping").map(drop),
        || bare.get("/_ping").map(drop),
    )?;
    let proxied_path = format!("/probe/local/docker{list_path}");
    let (base, proxied) = measure_pair(
        n,
        || direct.get(list_path).map(drop),
        || get(&proxied_path, false),
    )?;
    let (base_filtered, list) = measure_pair(
        n,
        || direct.get(filtered).map(drop),
        || get("/api/v1/droplet/list", true),
    )?;

    let containers = direct.get(list_path)?;
    let count = serde_json::from_slice::<serde_json::Value>(&containers)?
        .as_array()
        .map_or(0, Vec::len);
    println!(
        "\n== Docker latency (sequential keep-alive requests, n={n}, {count} containers on the engine, {droplets} droplets)"
    );
    let row = |what: &str, s: &Stats, base: &Stats| {
        println!(
            "{what:<44} median {:>7.0} µs  p99 {:>7.0} µs  ({:.2}x direct)",
            s.median.as_secs_f64() * 1e6,
            s.p99.as_secs_f64() * 1e6,
            s.median.as_secs_f64() / base.median.as_secs_f64()
        );
    };
    row("/_berth/health (no wasm)", &health, &health);
    row("/hello/{name} (a wasm call)", &hello, &hello);
    row("_ping, direct to the socket", &ping_direct, &ping_direct);
    row("_ping, proxied by Berth", &ping, &ping_direct);
    row(
        "_ping, direct (taking turns with the next)",
        &bare_direct,
        &bare_direct,
    );
    row(
        "_ping, through a bare proxy (no wasm)",
        &bare_ping,
        &bare_direct,
    );
    row("containers/json, direct to the socket", &base, &base);
    row("containers/json, proxied by Berth", &proxied, &base);
    row(
        "containers/json?filters=label, direct",
        &base_filtered,
        &base_filtered,
    );
    row(
        "GET /api/v1/droplet/list through Berth",
        &list,
        &base_filtered,
    );

    for i in 0..droplets {
        let _ = engine.cli(&["rm", "-f", &format!("{prefix}{i}")]);
    }
    Ok(())
}
