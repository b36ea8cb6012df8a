//! Berth against its peers, in one run (`cargo bench --profile dist --bench
//! peers`; needs wrk, the wasmtime 48 CLI — `cargo install
//! wasmtime-cli@48.0.8 --locked`, found on PATH or at BENCH_WASMTIME —
//! and, for the proxy hop, root for a private dockerd and nginx-light):
//!
//! 1. hello, `GET /hello/{name}`, req/s under wrk -t1 -c32: a native hyper
//!    server; `wasmtime serve` with a fresh instance per request and with
//!    `--max-instance-reuse-count 128` (the wasi:http component in
//!    `benches/peers/hello-http`, built here); Berth with a fresh instance
//!    per call and with `--instance-reuse 128`;
//! 2. the Docker proxy hop, wrk -t1 -c1 median latency on one engine with
//!    10 containers: `_ping` and `containers/json` through an nginx reverse
//!    proxy to the engine's socket and through Berth's Portainer proxy
//!    (JWT checked by the `stacks` plugin), fresh and with reuse.
//!
//! The peers take turns within each round, so every ratio compares figures
//! taken in the same phase of this VM. Knobs: BENCH_ROUNDS (3),
//! BENCH_SECONDS (5), BENCH_CONNECTIONS (32).

#[path = "../../tests/support/mod.rs"]
mod support;

mod shared;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shared::{Load, Nginx, native_hello, run_wrk};
use support::Berth;

fn main() -> anyhow::Result<()> {
    let rounds = support::knob("BENCH_ROUNDS", 3);
    let seconds = support::knob("BENCH_SECONDS", 5) as u64;
    let connections = support::knob("BENCH_CONNECTIONS", 32) as u64;
    let rt = tokio::runtime::Runtime::new()?;
    let dir = tempfile::tempdir()?;

    let engine = support::docker::shared();
    let docker = match engine {
        Some(engine) => format!(
            "[docker]\nlocal = \"{}\"\nallow = [\"tcp://127.0.0.1:*\"]\n",
            engine.host
        ),
        None => String::new(),
    };
    let start = |name: &str, reuse: &str| {
        let at = dir.path().join(name);
        std::fs::create_dir_all(&at).unwrap();
        Berth::start_with(&at, &docker, &["--instance-reuse", reuse])
    };
    let berth_fresh = start("fresh", "1");
    let berth_reuse = start("reuse", "128");

    let native = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        anyhow::Ok((address, tokio::spawn(native_hello(listener))))
    })?;

    let mut peers: Vec<(&str, String)> = vec![("native hyper", format!("http://{}", native.0))];
    let component = hello_http()?;
    let wasmtime = wasmtime();
    let mut serves = Vec::new();
    match &wasmtime {
        Ok(bin) => {
            for (name, reuse) in [
                ("wasmtime serve, fresh", None),
                ("wasmtime serve, reuse 128", Some(128)),
            ] {
                let serve = WasmtimeServe::start(bin, &component, reuse)?;
                peers.push((name, serve.url.clone()));
                serves.push(serve);
            }
        }
        Err(why) => println!("wasmtime serve not measured: {why}"),
    }
    peers.push(("Berth, fresh", berth_fresh.url.clone()));
    peers.push(("Berth, reuse 128", berth_reuse.url.clone()));

    let load = Load {
        threads: 1,
        connections,
        seconds,
        headers: &[],
        script: None,
    };
    let mut rps: Vec<Vec<f64>> = vec![Vec::new(); peers.len()];
    for _ in 0..rounds {
        for (i, (name, url)) in peers.iter().enumerate() {
            let run = run_wrk(&format!("{url}/hello/bench"), &load)?;
            anyhow::ensure!(
                run.non_2xx == 0 && run.rps > 0.0,
                "{name}: {} non-2xx, {} req/s",
                run.non_2xx,
                run.rps
            );
            rps[i].push(run.rps);
        }
    }
    native.1.abort();
    drop(serves);

    println!("\nhello, wrk -t1 -c{connections}, {rounds} rounds of {seconds} s, req/s:");
    for ((name, _), runs) in peers.iter().zip(&rps) {
        println!("  {name:<28} {}", figures(runs, |r| format!("{r:.0}")));
    }
    let of = |name: &str| {
        peers
            .iter()
            .position(|(n, _)| *n == name)
            .map(|i| rps[i].clone())
    };
    let ratios = [
        ("Berth, fresh", "wasmtime serve, fresh", "≥ 3.0x"),
        ("Berth, reuse 128", "wasmtime serve, reuse 128", "≥ 1.5x"),
        ("Berth, reuse 128", "native hyper", "≥ 0.6x"),
        ("Berth, fresh", "native hyper", "—"),
    ];
    println!("ratios, round by round (goal):");
    for (ours, theirs, goal) in ratios {
        if let (Some(a), Some(b)) = (of(ours), of(theirs)) {
            let each: Vec<f64> = a.iter().zip(&b).map(|(a, b)| a / b).collect();
            println!(
                "  {ours} / {theirs}: {} ({goal})",
                figures(&each, |r| format!("{r:.2}x"))
            );
        }
    }

    match engine {
        Some(engine) => rt.block_on(proxy_hop(
            engine,
            &[("fresh", &berth_fresh), ("reuse 128", &berth_reuse)],
            rounds,
            seconds,
        ))?,
        None => println!("\nthe proxy hop not measured: no Docker engine (run as root)"),
    }
    Ok(())
}

/// `_ping` and `containers/json` through nginx and through each Berth,
/// one connection, taking turns.
async fn proxy_hop(
    engine: &support::docker::Engine,
    berths: &[(&str, &Berth)],
    rounds: usize,
    seconds: u64,
) -> anyhow::Result<()> {
    let socket = engine.host.trim_start_matches("unix://").to_string();
    let nginx = Nginx::start(&socket)?;
    let label = format!("bench-hop-{}", std::process::id());
    for i in 0..10 {
        let out = engine.cli(&[
            "run",
            "-d",
            "--label",
            &label,
            "--name",
            &format!("{label}-{i}"),
            support::docker::IMAGE,
            "sleep",
            "3600",
        ]);
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Each door: a name, the base URL of the Engine API, its headers.
    let mut doors = vec![(
        "nginx".to_string(),
        format!("http://127.0.0.1:{}", nginx.port),
        Vec::new(),
    )];
    for (name, berth) in berths {
        let (jwt, local, _) = support::portainer::admin_with_endpoints(berth, engine).await;
        doors.push((
            format!("Berth, {name}"),
            berth.url(&format!("/api/endpoints/{local}/docker")),
            vec![format!("Authorization: Bearer {jwt}")],
        ));
    }
    let calls = ["/_ping", "/containers/json"];
    // medians[call][door][round]
    let mut medians = vec![vec![Vec::new(); doors.len()]; calls.len()];
    for _ in 0..rounds {
        for (c, call) in calls.iter().enumerate() {
            for (d, (name, base, headers)) in doors.iter().enumerate() {
                let load = Load {
                    threads: 1,
                    connections: 1,
                    seconds,
                    headers,
                    script: None,
                };
                let base = base.clone();
                let run = tokio::task::block_in_place(|| run_wrk(&format!("{base}{call}"), &load))?;
                anyhow::ensure!(
                    run.non_2xx == 0 && run.rps > 0.0,
                    "{name} {call}: {} non-2xx",
                    run.non_2xx
                );
                medians[c][d].push(run.p50);
            }
        }
    }
    let goals = ["≤ 1.5x", "≤ 1.1x"];
    println!("\nthe Docker proxy hop, wrk -t1 -c1, median latency, {rounds} rounds:");
    for (c, call) in calls.iter().enumerate() {
        for (d, (name, _, _)) in doors.iter().enumerate() {
            println!(
                "  {call:<17} {name:<18} {}",
                figures(&medians[c][d], |t| format!("{t:.0?}"))
            );
        }
        for (d, (name, _, _)) in doors.iter().enumerate().skip(1) {
            let each: Vec<f64> = medians[c][d]
                .iter()
                .zip(&medians[c][0])
                .map(|(a, b)| a.as_secs_f64() / b.as_secs_f64())
                .collect();
            println!(
                "  {call:<17} {name} / nginx: {} ({})",
                figures(&each, |r| format!("{r:.2}x")),
                goals[c]
            );
        }
    }
    let ids = engine.cli(&["ps", "-aq", "--filter", &format!("label={label}")]);
    let ids = String::from_utf8_lossy(&ids.stdout).to_string();
    let mut rm = vec!["rm", "-f"];
    rm.extend(ids.split_whitespace());
    engine.cli(&rm);
    Ok(())
}

/// Figures of every round, then their range.
fn figures<T: Copy + PartialOrd>(runs: &[T], show: impl Fn(T) -> String) -> String {
    let each: Vec<String> = runs.iter().map(|r| show(*r)).collect();
    let min = runs
        .iter()
        .copied()
        .reduce(|a, b| if b < a { b } else { a });
    let max = runs
        .iter()
        .copied()
        .reduce(|a, b| if b > a { b } else { a });
    match (min, max) {
        (Some(min), Some(max)) => format!("{}  [{}–{}]", each.join(", "), show(min), show(max)),
        _ => String::new(),
    }
}

/// Build the wasi:http hello component; its path.
fn hello_http() -> anyhow::Result<PathBuf> {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers/hello-http");
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/peers");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(crate_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .status()?;
    anyhow::ensure!(status.success(), "building benches/peers/hello-http failed");
    Ok(target.join("wasm32-wasip2/release/hello_http.wasm"))
}

/// The wasmtime 48 CLI: BENCH_WASMTIME, or `wasmtime` on PATH.
fn wasmtime() -> Result<PathBuf, String> {
    let bin = std::env::var_os("BENCH_WASMTIME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("wasmtime"));
    let version = Command::new(&bin).arg("--version").output().map_err(|e| {
        format!(
            "{}: {e} (cargo install wasmtime-cli@48.0.8 --locked)",
            bin.display()
        )
    })?;
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    match version.starts_with("wasmtime 48.") {
        true => Ok(bin),
        false => Err(format!("{} is `{version}`, not 48.x", bin.display())),
    }
}

/// `wasmtime serve` on a free port, until dropped.
struct WasmtimeServe {
    child: Child,
    url: String,
}

impl WasmtimeServe {
    fn start(bin: &Path, component: &Path, reuse: Option<u32>) -> anyhow::Result<WasmtimeServe> {
        let port = support::docker::free_port();
        let mut cmd = Command::new(bin);
        // `-Scli`: Rust's std imports wasi:cli (environment, exit).
        cmd.arg("serve")
            .arg("-Scli")
            .arg("--addr")
            .arg(format!("127.0.0.1:{port}"));
        if let Some(n) = reuse {
            cmd.arg("--max-instance-reuse-count").arg(n.to_string());
        }
        let child = cmd
            .arg(component)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let serve = WasmtimeServe {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let until = Instant::now() + Duration::from_secs(60);
        let probe = format!("{}/hello/probe", serve.url);
        while !answers_200(&probe) {
            anyhow::ensure!(Instant::now() < until, "wasmtime serve did not answer");
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(serve)
    }
}

impl Drop for WasmtimeServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a GET of `url` on a new connection answers 200.
fn answers_200(url: &str) -> bool {
    use std::io::{Read, Write};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let Ok(mut tcp) = std::net::TcpStream::connect(host) else {
        return false;
    };
    let mut answer = String::new();
    write!(
        tcp,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .and_then(|()| tcp.read_to_string(&mut answer))
    .is_ok()
        && answer.starts_with("HTTP/1.1 200")
}
