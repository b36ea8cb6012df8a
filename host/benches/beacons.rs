//! Application deploys of the `beacons` plugin (`cargo bench --profile dist --bench
//! beacons`; needs root for the private dockerds, like the Docker tests).
//!
//! BENCH_INSTANCES (default 10) private engines stand for as many hosts.
//! Berth B fronts them all as a beacon; Berth A runs Lighthouse, registers
//! B, and also registers its own agent (`local`) in front of the same
//! engines. One application is deployed to every instance, then updated
//! to a new command BENCH_ROUNDS (default 5) times; each deploy is, per
//! instance, clear `NAME_tmp`, create it, remove the old `NAME`, rename,
//! start. Timed from the request to its first progress line and to
//! `{"Status":"Finalized"}`:
//!
//! - through beacon B (A's job -> http-out -> B's agent -> proxy-docker);
//! - through A's own agent (A's job -> the docker capability);
//! - the same five calls per engine straight to the sockets, one engine
//!   after another and one thread per engine (baselines). Berth deploys
//!   the instances side by side, as jobs.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use support::docker::{self, Engine};

struct Lighthouse {
    base: String,
    cookie: String,
    http: reqwest::Client,
}

impl Lighthouse {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut req = self
            .http
            .request(method, format!("{}/api/v0.2{path}", self.base))
            .header("cookie", &self.cookie);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let r = req.send().await?;
        anyhow::ensure!(r.status().is_success(), "{path}: {}", r.status());
        Ok(r.json().await.unwrap_or(Value::Null))
    }

    /// A streamed deploy: (time to the first line, time to Finalized).
    async fn deploy(
        &self,
        method: &str,
        path: &str,
        body: Value,
    ) -> anyhow::Result<(Duration, Duration)> {
        let started = Instant::now();
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let r = self
            .http
            .request(method, format!("{}/api/v0.2{path}", self.base))
            .header("cookie", &self.cookie)
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "{path}: {}", r.status());
        let mut chunks = r.bytes_stream();
        let mut first = None;
        let mut text = String::new();
        while let Some(chunk) = chunks.next().await {
            first.get_or_insert_with(|| started.elapsed());
            text.push_str(std::str::from_utf8(&chunk?)?);
        }
        let total = started.elapsed();
        anyhow::ensure!(
            text.contains(r#""Status":"Complete""#)
                && text.ends_with("{\"Status\":\"Finalized\"}\n"),
            "the deploy failed:\n{text}"
        );
        Ok((first.unwrap_or(total), total))
    }
}

/// One Docker API call straight to an engine's socket; the status.
fn direct(socket: &str, method: &str, path: &str, body: &str) -> anyhow::Result<u16> {
    let mut s = UnixStream::connect(socket)?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let status = answer.get(9..12).unwrap_or("").parse()?;
    anyhow::ensure!(
        (200..400).contains(&status) || status == 404,
        "{method} {path}: {answer}"
    );
    Ok(status)
}

/// The deploy sequence on one engine, straight to its socket.
fn direct_one(engine: &Engine, name: &str, body: &str) -> anyhow::Result<()> {
    let socket = engine.host.trim_start_matches("unix://");
    direct(
        socket,
        "DELETE",
        &format!("/containers/{name}_tmp?force=1"),
        "",
    )?;
    direct(
        socket,
        "POST",
        &format!("/containers/create?name={name}_tmp"),
        body,
    )?;
    direct(socket, "DELETE", &format!("/containers/{name}?force=1"), "")?;
    direct(
        socket,
        "POST",
        &format!("/containers/{name}_tmp/rename?name={name}"),
        "",
    )?;
    direct(socket, "POST", &format!("/containers/{name}/start"), "")?;
    Ok(())
}

/// The deploy sequence straight to every engine: one after another, or
/// one thread per engine.
fn direct_deploy(
    engines: &[Engine],
    name: &str,
    command: &Value,
    parallel: bool,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let body = command.to_string();
    if parallel {
        std::thread::scope(|s| {
            let runs: Vec<_> = engines
                .iter()
                .map(|e| s.spawn(|| direct_one(e, name, &body)))
                .collect();
            runs.into_iter().try_for_each(|r| {
                r.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a thread panicked")))
            })
        })?;
    } else {
        for engine in engines {
            direct_one(engine, name, &body)?;
        }
    }
    Ok(started.elapsed())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() -> anyhow::Result<()> {
    let instances = support::knob("BENCH_INSTANCES", 10).max(1);
    let rounds = support::knob("BENCH_ROUNDS", 5).max(1);
    let started = Instant::now();
    let engines: Vec<Engine> = std::thread::scope(|s| {
        let starting: Vec<_> = (0..instances).map(|_| s.spawn(docker::private)).collect();
        starting
            .into_iter()
            .map(|h| h.join().ok().flatten())
            .collect::<Option<Vec<_>>>()
    })
    .ok_or_else(|| anyhow::anyhow!("no Docker engine (see the message above)"))?;
    eprintln!("{instances} engines up in {}", ms(started.elapsed()));

    let names: Vec<String> = (0..instances).map(|i| format!("e{i}")).collect();
    let endpoints: String = engines
        .iter()
        .zip(&names)
        .map(|(e, n)| format!("[docker.endpoints.{n}]\naddress = \"{}\"\n", e.host))
        .collect();
    let settings = format!(
        "instances = \"{}\"\nstop_timeout_secs = 1\n",
        names.join(",")
    );
    let dir_b = tempfile::tempdir()?;
    let beacon = support::Berth::start(
        dir_b.path(),
        &format!("[plugins.beacons.settings]\ntoken = \"bench\"\n{settings}\n{endpoints}"),
    );
    let dir_a = tempfile::tempdir()?;
    let lighthouse = support::Berth::start(
        dir_a.path(),
        &format!(
            "[http_out]\nallow = [\"127.0.0.1\"]\nallow_private = [\"127.0.0.1\"]\n\n[plugins.beacons.settings]\n{settings}\n{endpoints}"
        ),
    );
    let password = lighthouse.cli_line(&["run", "beacons", "create-admin", "bench"], "password: ");
    let own_token = lighthouse.cli_line(&["run", "beacons", "agent-token"], "");

    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let http = reqwest::Client::new();
        let login = http
            .post(lighthouse.url("/api/v0.2/login"))
            .json(&json!({ "Email": "bench", "Password": password }))
            .send()
            .await?;
        let cookie = login.headers()["set-cookie"]
            .to_str()?
            .split(';')
            .next()
            .unwrap_or("")
            .to_string();
        let api = Lighthouse {
            base: lighthouse.url(""),
            cookie,
            http,
        };
        let b_address = beacon.url.trim_start_matches("http://").to_string();
        api.call(
            "POST",
            "/beacons/create",
            Some(json!({ "Address": b_address, "Token": "bench", "Alias": "b" })),
        )
        .await?;
        api.call(
            "POST",
            "/beacons/create",
            Some(json!({ "Address": "local", "Token": own_token, "Alias": "a" })),
        )
        .await?;

        println!(
            "deploy of one application to {instances} instances, {rounds} rounds after the first"
        );
        for (label, beacon) in [
            ("through beacon B (http-out)", "b"),
            ("through A's own agent (docker capability)", "a"),
        ] {
            let app = format!("bench-{beacon}");
            let targets: Vec<String> = names.iter().map(|n| format!("{beacon}.{n}")).collect();
            let (first, total) = api
                .deploy(
                    "POST",
                    "/applications/create?start=true",
                    json!({ "Name": app, "Command": command(10_000), "Instances": targets }),
                )
                .await?;
            println!(
                "  {label}: create: first line {}, finalized {}",
                ms(first),
                ms(total)
            );
            let (mut firsts, mut totals) = (Vec::new(), Vec::new());
            for round in 1..=rounds {
                let (first, total) = api
                    .deploy(
                        "PUT",
                        &format!("/applications/update/{app}"),
                        json!({ "Command": command(10_000 + round) }),
                    )
                    .await?;
                firsts.push(first);
                totals.push(total);
            }
            println!(
                "  {label}: update: first line median {}, finalized median {} (min {}, max {})",
                ms(median(firsts)),
                ms(median(totals.clone())),
                ms(*totals.iter().min().unwrap()),
                ms(*totals.iter().max().unwrap())
            );
        }
        anyhow::Ok(())
    })?;

    for (label, parallel) in [
        ("one after another", false),
        ("one thread per engine", true),
    ] {
        let mut totals = Vec::new();
        for round in 0..=rounds {
            totals.push(direct_deploy(
                &engines,
                "bench-direct",
                &command(20_000 + round),
                parallel,
            )?);
        }
        println!(
            "  straight to the sockets, {label}: median {} (min {}, max {})",
            ms(median(totals.clone())),
            ms(*totals.iter().min().unwrap()),
            ms(*totals.iter().max().unwrap())
        );
    }
    Ok(())
}

/// An application that sleeps `secs`, without a network.
fn command(secs: usize) -> Value {
    json!({
        "Image": docker::IMAGE,
        "Cmd": ["sleep", secs.to_string()],
        "HostConfig": { "NetworkMode": "none" }
    })
}
