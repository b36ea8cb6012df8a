//! Berth on PostgreSQL against PostgreSQL's own limit, in one run
//! (`cargo bench --profile dist --bench fleet`; needs wrk, Debian's
//! `postgresql` and `nginx-light`), all on one private cluster:
//!
//! 1. pgbench's `simple-update` (one UPDATE, one SELECT, one INSERT per
//!    transaction), 32 clients: the database's limit for one small write
//!    transaction each;
//! 2. KV increments through one Berth replica (`POST /hello/kN/visits`,
//!    a key per request, each 200 after its commit), wrk `-t2 -c64`;
//! 3. the same through three replicas behind nginx;
//! 4. the same on the embedded redb store, and hello's `GET /hello/NAME`
//!    (no store) on each, for the routes that do not touch the store.
//!
//! Knobs: BENCH_SECONDS (default 10), BENCH_CONNECTIONS (default 64).

#[path = "../../tests/support/mod.rs"]
mod support;

mod shared;
use shared::{wrk, wrk_script};

use std::process::Command;

use support::Berth;
use support::nginx::Nginx;
use support::postgres::Cluster;

const SPREAD: &str = "counter = 0\nrequest = function()\n  counter = counter + 1\n  \
                      return wrk.format(\"POST\", \"/hello/k\" .. counter .. \"/visits\")\nend\n";

fn main() -> anyhow::Result<()> {
    let knob = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let (seconds, connections) = (knob("BENCH_SECONDS", 10), knob("BENCH_CONNECTIONS", 64));
    let nginx = support::nginx::binary().ok_or_else(|| anyhow::anyhow!("no nginx"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let cluster = Cluster::start().map_err(anyhow::Error::msg)?;
    let mut report = Vec::new();

    let pgbench = support::postgres::bin_dir()
        .ok_or_else(|| anyhow::anyhow!("no PostgreSQL"))?
        .join("pgbench");
    cluster.create_database("pgbench");
    let run = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(&pgbench)
            .arg("-h")
            .arg(cluster.socket())
            .args(["-U", "postgres"])
            .args(args)
            .arg("pgbench")
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "pgbench: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    run(&["-i", "-q", "-s", "8"])?;
    let text = run(&[
        "-n",
        "-b",
        "simple-update",
        "-c",
        "32",
        "-j",
        "2",
        "-T",
        &seconds.to_string(),
    ])?;
    let tps: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no tps in pgbench's output: {text}"))?;
    report.push(format!(
        "pgbench simple-update, 32 clients:                 {tps:>7.0} tx/s"
    ));

    let store = |db: &str| {
        cluster.create_database(db);
        format!("[store]\nurl = \"{}\"\n", cluster.url(db))
    };
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let one = Berth::start(dirs[0].path(), &store("one"));
    let fleet_config = store("three");
    let three: Vec<Berth> = dirs[1..]
        .iter()
        .map(|d| Berth::start(d.path(), &fleet_config))
        .collect();
    let front = rt.block_on(Nginx::start(
        nginx,
        &three.iter().map(|b| &b.url).collect::<Vec<_>>(),
    ));
    let embedded_dir = tempfile::tempdir()?;
    let embedded = Berth::start(embedded_dir.path(), "");

    let mut increments = |what: &str, url: &str| -> anyhow::Result<f64> {
        let r = wrk_script(url, seconds, connections, SPREAD)?;
        report.push(format!(
            "KV increments, {what:<32} {:>7.0} req/s ({:.2}x pgbench; non-2xx {}, errors {})",
            r.rps,
            r.rps / tps,
            r.non_2xx,
            r.errors
        ));
        Ok(r.rps)
    };
    increments("one replica on PostgreSQL:", &one.url)?;
    increments("three replicas behind nginx:", &front.url)?;
    increments("embedded redb:", &embedded.url)?;
    for (what, url) in [
        ("one replica on PostgreSQL:", &one.url),
        ("embedded redb:", &embedded.url),
    ] {
        let r = wrk(&format!("{url}/hello/bench"), seconds, connections)?;
        report.push(format!(
            "GET /hello/NAME (no store), {what:<24} {:>7.0} req/s (non-2xx {}, errors {})",
            r.rps, r.non_2xx, r.errors
        ));
    }
    println!("\n== fleet benchmarks ({seconds} s each, wrk -t2 -c{connections}) ==");
    for line in &report {
        println!("{line}");
    }
    Ok(())
}
