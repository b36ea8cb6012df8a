//! What serializable transactions, connection limits and CPU lanes cost
//! and buy (`cargo bench --profile dist --bench concurrency`; needs wrk,
//! and root for the private dockerd of the Portainer figure):
//!
//! - durable `POST /commands` per second (wrk -c64; each 200 is committed);
//! - KV increments per second on distinct keys (`POST /hello/kN/visits`,
//!   wrk -c32);
//! - Portainer's proxied `_ping` per second (wrk -c32): every request reads
//!   the same user and endpoint records, so shared locks must not
//!   serialise them;
//! - fairness: hello's rate (wrk -c16) while another plugin runs its
//!   maximum of 8 calls that spin in a tight loop, over hello's rate alone.
//!
//! With `BENCH_BASELINE=PATH/berth` and `BENCH_BASELINE_PLUGINS=DIR` (that
//! build's `wasm-plugins/wasm32-wasip2/release`), every figure is also
//! taken on that build, in the same run, the two taking turns, and the
//! ratio printed. Knobs: BENCH_SECONDS (5), BENCH_ROUNDS (2).

#[path = "../../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::Berth;
use support::dokkud::Dokkud;

/// A berth binary and the plugins built with it.
struct Build {
    name: &'static str,
    bin: PathBuf,
    plugins: PathBuf,
}

impl Build {
    /// Start it in `dir` with `config`, with the fixtures `fixtures`
    /// dropped into its plugins folder (beside its bundled ones unless the
    /// config says `install_bundled = false`).
    fn start(&self, dir: &Path, config: &str, fixtures: &[&str]) -> anyhow::Result<Berth> {
        let plugins = dir.join("data/plugins");
        if !fixtures.is_empty() {
            std::fs::create_dir_all(&plugins)?;
        }
        for name in fixtures {
            support::drop_file(
                &self.plugins.join(format!("{name}.wasm")),
                &plugins.join(format!("{name}.wasm")),
            );
        }
        Ok(Berth::start_bin(&self.bin, dir, config, &[]))
    }
}

/// wrk's requests per second, and its non-2xx count.
fn wrk(url: &str, connections: u32, seconds: u64, script: Option<&str>) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s")]);
    if let Some(script) = script {
        let path = dir.path().join("script.lua");
        std::fs::write(&path, script)?;
        cmd.arg("-s").arg(path);
    }
    let out = cmd.arg(url).output()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let find = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|s| s.trim().to_string()))
    };
    if let Some(bad) = find("Non-2xx or 3xx responses:") {
        anyhow::bail!("{bad} answers to {url} were not 2xx:\n{text}");
    }
    find("Requests/sec:")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("wrk printed no rate for {url}:\n{text}"))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn commands(build: &Build, seconds: u64) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let daemon = Dokkud::start(dir.path());
    let config = format!(
        "install_bundled = false\n[dokku]\nsocket = {:?}\n\
         [plugins.commands]\ngrants = [\"kv\", \"crypto\", \"jobs\", \"dokku\"]\n",
        daemon.socket
    );
    let berth = build.start(dir.path(), &config, &["commands"])?;
    let (key, secret) = berth.commands_keys();
    let script = format!(
        "wrk.method = \"POST\"\nwrk.body = \"cmd=version\"\n\
         wrk.headers[\"Content-Type\"] = \"application/x-www-form-urlencoded\"\n\
         wrk.headers[\"Api-Key\"] = \"{key}\"\nwrk.headers[\"Api-Secret\"] = \"{secret}\"\n"
    );
    wrk(&berth.url("/commands"), 64, seconds, Some(&script))
}

fn increments(build: &Build, seconds: u64) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let berth = build.start(dir.path(), "", &[])?;
    let script = "n = 0\nrequest = function()\n  n = n + 1\n  \
                  return wrk.format(\"POST\", \"/hello/k\" .. n .. \"/visits\")\nend\n";
    wrk(&berth.url("/"), 32, seconds, Some(script))
}

fn portainer_ping(build: &Build, engine: &str, seconds: u64) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let config = format!("[docker]\nlocal = \"{engine}\"\n");
    let berth = build.start(dir.path(), &config, &[])?;
    let jwt = runtime()?.block_on(async {
        let http = support::client();
        let creds = json!({ "Username": "admin", "Password": "bench-password" });
        http.post(berth.url("/api/users/admin/init"))
            .json(&creds)
            .send()
            .await?
            .error_for_status()?;
        let auth: Value = http
            .post(berth.url("/api/auth"))
            .json(&creds)
            .send()
            .await?
            .json()
            .await?;
        let jwt = auth["jwt"].as_str().unwrap_or_default().to_string();
        http.post(berth.url("/api/endpoints"))
            .bearer_auth(&jwt)
            .form(&[("Name", "local"), ("EndpointType", "1")])
            .send()
            .await?
            .error_for_status()?;
        anyhow::Ok(jwt)
    })?;
    let script = format!("wrk.headers[\"Authorization\"] = \"Bearer {jwt}\"\n");
    wrk(
        &berth.url("/api/endpoints/1/docker/_ping"),
        32,
        seconds,
        Some(&script),
    )
}

/// hello's rate alone, and while 8 calls of `faults` spin.
fn fairness(build: &Build, seconds: u64) -> anyhow::Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let config = "install_bundled = false\n[plugins.faults]\ngrants = [\"kv\"]\n\
                  max_concurrent = 8\ndeadline_ms = 2000\n";
    let berth = build.start(dir.path(), config, &["hello", "faults"])?;
    let alone = wrk(&berth.url("/hello/fair"), 16, seconds, None)?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spinners: Vec<_> = (0..8)
        .map(|_| {
            let (url, stop) = (berth.url("/faults/loop"), stop.clone());
            std::thread::spawn(move || -> anyhow::Result<()> {
                runtime()?.block_on(async {
                    let http = support::client();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        // Each call spins until its 2 s deadline (504).
                        http.get(&url)
                            .timeout(Duration::from_secs(10))
                            .send()
                            .await?;
                    }
                    Ok(())
                })
            })
        })
        .collect();
    // Let all eight be spinning before measuring.
    std::thread::sleep(Duration::from_millis(300));
    let contended = wrk(&berth.url("/hello/fair"), 16, seconds, None);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for spinner in spinners {
        spinner
            .join()
            .map_err(|_| anyhow::anyhow!("a spinner panicked"))??;
    }
    Ok((alone, contended?))
}

fn main() -> anyhow::Result<()> {
    let seconds = support::knob("BENCH_SECONDS", 5) as u64;
    let rounds = support::knob("BENCH_ROUNDS", 2);
    if Command::new("wrk").arg("--version").output().is_err() {
        anyhow::bail!("wrk not found (apt-get install wrk)");
    }
    let mut builds = vec![Build {
        name: "this build",
        bin: PathBuf::from(env!("CARGO_BIN_EXE_berth")),
        plugins: support::plugin_wasm("hello")
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    }];
    if let (Ok(bin), Ok(plugins)) = (
        std::env::var("BENCH_BASELINE"),
        std::env::var("BENCH_BASELINE_PLUGINS"),
    ) {
        builds.insert(
            0,
            Build {
                name: "baseline",
                bin: bin.into(),
                plugins: plugins.into(),
            },
        );
    }
    let engine = support::docker::shared()
        .ok_or_else(|| anyhow::anyhow!("no Docker engine for the Portainer figure"))?;

    // figures[build][measure] = one value per round.
    let measures = [
        "durable POST /commands/s",
        "KV increments/s, distinct keys",
        "Portainer proxied _ping/s (c32)",
        "hello/s alone",
        "hello/s with 8 spinning calls",
    ];
    let mut figures = vec![vec![Vec::new(); measures.len()]; builds.len()];
    for round in 0..rounds {
        for (b, build) in builds.iter().enumerate() {
            eprintln!("round {round}: {}", build.name);
            let (alone, contended) = fairness(build, seconds)?;
            let values = [
                commands(build, seconds)?,
                increments(build, seconds)?,
                portainer_ping(build, &engine.host, seconds)?,
                alone,
                contended,
            ];
            for (m, value) in values.into_iter().enumerate() {
                figures[b][m].push(value);
            }
        }
    }

    println!(
        "\n== concurrency benchmark ({rounds} rounds of {seconds} s, wrk -t1 on the same 2 cores)"
    );
    let show = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    for (m, measure) in measures.iter().enumerate() {
        let mut line = format!("{measure:<36}");
        for (b, build) in builds.iter().enumerate() {
            line.push_str(&format!("  {}: {}", build.name, show(&figures[b][m])));
        }
        if builds.len() == 2 {
            line.push_str(&format!(
                "  ratio {:.2}",
                mean(&figures[1][m]) / mean(&figures[0][m])
            ));
        }
        println!("{line}");
    }
    for (b, build) in builds.iter().enumerate() {
        let share: Vec<f64> = figures[b][4]
            .iter()
            .zip(&figures[b][3])
            .map(|(c, a)| c / a)
            .collect();
        println!(
            "fairness, {}: hello keeps {} of its rate",
            build.name,
            share
                .iter()
                .map(|s| format!("{:.0}%", s * 100.0))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}
