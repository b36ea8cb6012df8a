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
//!   maximum of 8 calls that spin in a tight loop, that allocate until
//!   their memory cap traps them, or that have the host hash passwords,
//!   over hello's rate alone.
//!
//! With `BENCH_BASELINE=PATH/berth` and `BENCH_BASELINE_PLUGINS=DIR` (that
//! build's `wasm-plugins/wasm32-wasip2/release`), every figure is also
//! taken on that build, in the same run, the two taking turns, and the
//! ratio printed. Knobs: BENCH_SECONDS (5), BENCH_ROUNDS (2), and
//! BENCH_ONLY=fairness for the fairness figures alone.

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

/// What keeps 8 calls of `faults` busy while hello is measured.
const CONTENDERS: [(&str, &str); 3] = [
    ("spin in a tight loop", "/faults/loop"),
    ("allocate to their memory cap", "/faults/bomb"),
    ("have the host hash passwords", "/faults/hash?n=50"),
];

/// For each of [`CONTENDERS`]: hello's rate alone, then while 8 calls of
/// `faults` do it (each call until it ends: its 2 s deadline, the memory
/// cap's trap, or its 50 hashes; then another). Alone and contended take
/// turns, so that each pair sees the same phase of this VM.
fn fairness(build: &Build, seconds: u64) -> anyhow::Result<Vec<(f64, f64)>> {
    let dir = tempfile::tempdir()?;
    let config = "install_bundled = false\n[plugins.faults]\ngrants = [\"kv\", \"crypto\"]\n\
                  max_concurrent = 8\ndeadline_ms = 2000\n";
    let berth = build.start(dir.path(), config, &["hello", "faults"])?;
    let mut rates = Vec::new();
    for (_, route) in CONTENDERS {
        let alone = wrk(&berth.url("/hello/fair"), 16, seconds, None)?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let busy: Vec<_> = (0..8)
            .map(|_| {
                let (url, stop) = (berth.url(route), stop.clone());
                std::thread::spawn(move || -> anyhow::Result<()> {
                    runtime()?.block_on(async {
                        let http = support::client();
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
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
        // Let all eight be running before measuring.
        std::thread::sleep(Duration::from_millis(300));
        let contended = wrk(&berth.url("/hello/fair"), 16, seconds, None);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for b in busy {
            b.join()
                .map_err(|_| anyhow::anyhow!("a contender panicked"))??;
        }
        rates.push((alone, contended?));
    }
    Ok(rates)
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
    // BENCH_ONLY=fairness: hello's rates alone, no Dokku or Docker needed.
    let all = std::env::var("BENCH_ONLY").as_deref() != Ok("fairness");
    let engine = match all {
        true => Some(
            support::docker::shared()
                .ok_or_else(|| anyhow::anyhow!("no Docker engine for the Portainer figure"))?,
        ),
        false => None,
    };

    // figures[build][measure] = one value per round.
    let mut measures = vec![
        "durable POST /commands/s".to_string(),
        "KV increments/s, distinct keys".to_string(),
        "Portainer proxied _ping/s (c32)".to_string(),
        "hello/s alone".to_string(),
    ];
    measures.extend(
        CONTENDERS
            .iter()
            .map(|(what, _)| format!("hello/s, 8 calls {what}")),
    );
    let mut figures = vec![vec![Vec::new(); measures.len()]; builds.len()];
    // shares[build][contender]: contended over the alone rate measured just before.
    let mut shares = vec![vec![Vec::new(); CONTENDERS.len()]; builds.len()];
    for round in 0..rounds {
        for (b, build) in builds.iter().enumerate() {
            eprintln!("round {round}: {}", build.name);
            let hello = fairness(build, seconds)?;
            if let Some(engine) = &engine {
                figures[b][0].push(commands(build, seconds)?);
                figures[b][1].push(increments(build, seconds)?);
                figures[b][2].push(portainer_ping(build, &engine.host, seconds)?);
            }
            for (c, (alone, contended)) in hello.into_iter().enumerate() {
                figures[b][3].push(alone);
                figures[b][4 + c].push(contended);
                shares[b][c].push(contended / alone);
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
        let mut line = format!("{measure:<52}");
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
        for (c, (what, _)) in CONTENDERS.iter().enumerate() {
            let share: Vec<String> = shares[b][c]
                .iter()
                .map(|s| format!("{:.0}%", s * 100.0))
                .collect();
            println!(
                "fairness, {}: with 8 calls that {what}, hello keeps {} of its rate",
                build.name,
                share.join(", ")
            );
        }
    }
    Ok(())
}
