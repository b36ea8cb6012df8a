//! The `commands` plugin's benchmark (`cargo bench --profile dist --bench commands`;
//! needs `wrk`): acknowledged async POST /commands per second with
//! concurrent clients (each 200 is durable: the command and its job are
//! committed before the answer), and the sync round trip's overhead above
//! the daemon's own time.
//!
//! Knobs: BENCH_SECONDS (default 10), BENCH_CONNECTIONS (default 64).

#[path = "../../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use support::dokkud::Dokkud;

fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let connections: u64 = std::env::var("BENCH_CONNECTIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    if Command::new("wrk").arg("--version").output().is_err() {
        anyhow::bail!("wrk not found (apt-get install wrk)");
    }
    let dir = tempfile::tempdir()?;
    let daemon = Dokkud::start(dir.path());
    let config = format!(
        "install_bundled = false\n[dokku]\nsocket = {:?}\n\
         [plugins.commands]\ngrants = [\"kv\", \"crypto\", \"jobs\", \"dokku\"]\n",
        daemon.socket
    );
    let plugins = dir.path().join("data/plugins");
    std::fs::create_dir_all(&plugins)?;
    support::drop_file(
        &support::plugin_wasm("commands"),
        &plugins.join("commands.wasm"),
    );
    let berth = support::Berth::start(dir.path(), &config);
    let (key, secret) = berth.commands_keys();

    let script = dir.path().join("post.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = \"cmd=version\"\n\
             wrk.headers[\"Content-Type\"] = \"application/x-www-form-urlencoded\"\n\
             wrk.headers[\"Api-Key\"] = \"{key}\"\nwrk.headers[\"Api-Secret\"] = \"{secret}\"\n"
        ),
    )?;
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "-s",
        ])
        .arg(&script)
        .arg(berth.url("/commands"))
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let find = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|s| s.trim().to_string()))
    };
    let rps: f64 = find("Requests/sec:")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    let non_2xx = find("Non-2xx or 3xx responses:").unwrap_or_else(|| "0".into());

    // Let the queued commands drain (they run on the daemon as jobs).
    let drain_started = Instant::now();
    let queued = |b: &support::Berth| -> u64 {
        let out = b.cli(&["jobs", "list", "--json"]);
        let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let counts = &view["counts"]["commands"];
        counts["queued"].as_u64().unwrap_or(0) + counts["running"].as_u64().unwrap_or(0)
    };
    let backlog = queued(&berth);
    while queued(&berth) > 0 && drain_started.elapsed() < Duration::from_secs(600) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let drain = drain_started.elapsed();

    // Sync round trip through berth vs straight to the daemon socket.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let client = reqwest::Client::new();
    let mut through = Vec::new();
    let mut direct = Vec::new();
    for _ in 0..300 {
        let started = Instant::now();
        let mut s = std::os::unix::net::UnixStream::connect(&daemon.socket)?;
        s.write_all(b"version\n")?;
        BufReader::new(s).read_line(&mut String::new())?;
        direct.push(started.elapsed());
        let started = Instant::now();
        let status = rt.block_on(async {
            client
                .post(berth.url("/commands"))
                .header("Api-Key", &key)
                .header("Api-Secret", &secret)
                .header("content-type", "application/x-www-form-urlencoded")
                .body("cmd=version&sync=true")
                .send()
                .await
                .map(|r| r.status().as_u16())
        })?;
        through.push(started.elapsed());
        anyhow::ensure!(status == 200, "sync POST answered {status}");
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (through, direct) = (median(&mut through), median(&mut direct));
    println!(
        "\n== commands benchmark (2 cores, wrk -t2 -c{connections} -d{seconds}s on the same cores)"
    );
    println!(
        "async POST /commands acknowledged (durable before 200): {rps:.0} commands/s, non-2xx {non_2xx}"
    );
    println!(
        "sync POST /commands round trip: median {:.0} us; the daemon alone {:.0} us; overhead {:.0} us",
        through.as_secs_f64() * 1e6,
        direct.as_secs_f64() * 1e6,
        (through.saturating_sub(direct)).as_secs_f64() * 1e6
    );
    println!(
        "queued commands left when wrk stopped: {backlog}, run on the daemon in {:.1} s ({:.0} jobs/s)",
        drain.as_secs_f64(),
        backlog as f64 / drain.as_secs_f64().max(0.001)
    );
    Ok(())
}
