//! Event fan-out of the `stacks` plugin's Docker Cloud stream
//! (`cargo bench --profile dist --bench stacks`; needs root for the private dockerd, like
//! the Docker tests):
//!
//! - latency: one `PATCH service/{uuid}/` at a time, from the request to
//!   its event reaching the first and the last of 100 websocket
//!   subscribers;
//! - throughput: 4 clients PATCH 4 services as fast as Berth takes them;
//!   events published per second and messages delivered per second to the
//!   100 subscribers;
//! - engine to subscriber: `docker service scale --detach` on a Swarm
//!   service Berth runs, to the container's `create` event at a
//!   subscriber, and the part of that Berth adds after the engine's own
//!   event stream reports it.
//!
//! Knobs: BENCH_SUBSCRIBERS (100), BENCH_EVENTS (4000), BENCH_SCALES (8).

#[path = "../../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Notify;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Api {
    base: String,
    auth: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("authorization", &self.auth);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let r = req.send().await?;
        anyhow::ensure!(r.status().is_success(), "{path}: {}", r.status());
        Ok(r.json().await.unwrap_or(Value::Null))
    }

    async fn subscribe(&self, query: &str) -> anyhow::Result<Ws> {
        let url = format!(
            "{}/api/audit/v1/events/{query}",
            self.base.replacen("http://", "ws://", 1)
        );
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                url.as_str(),
            )?;
        request
            .headers_mut()
            .insert("authorization", self.auth.parse()?);
        Ok(tokio_tungstenite::connect_async(request).await?.0)
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Delivered service `update` events, counted by every subscriber.
struct Tally {
    delivered: AtomicUsize,
    changed: Notify,
}

impl Tally {
    async fn wait_for(&self, n: usize) {
        loop {
            let changed = self.changed.notified();
            if self.delivered.load(Ordering::Acquire) >= n {
                return;
            }
            changed.await;
        }
    }
}

fn main() -> anyhow::Result<()> {
    let Some(engine) = support::docker::shared() else {
        anyhow::bail!("no Docker engine (see the message above)");
    };
    engine.swarm_init();
    let dir = tempfile::tempdir()?;
    // Every subscriber connects from this one address.
    let config = format!(
        "[docker]\nlocal = \"{}\"\n\n[server]\nmax_connections_per_client = 100000\n\n\
         [plugins.stacks.settings]\nstop_timeout_secs = 1\n",
        engine.host
    );
    let berth = support::Berth::start(dir.path(), &config);
    let out = berth.cli(&["run", "stacks", "apikey:create", "bench"]);
    let auth = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Authorization: "))
        .ok_or_else(|| anyhow::anyhow!("no key: {out:?}"))?
        .to_string();
    let api = Arc::new(Api {
        base: berth.url(""),
        auth,
        http: reqwest::Client::new(),
    });
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(fan_out(api.clone()))?;
    rt.block_on(scale_to_event(api, engine))?;
    Ok(())
}

async fn fan_out(api: Arc<Api>) -> anyhow::Result<()> {
    let subscribers = support::knob("BENCH_SUBSCRIBERS", 100);
    let events = support::knob("BENCH_EVENTS", 4000);
    let mut uris = Vec::new();
    for i in 0..4 {
        let s = api
            .call(
                "POST",
                "/api/app/v1/service/",
                Some(json!({ "name": format!("ticker{i}"), "image": "busybox:latest" })),
            )
            .await?;
        uris.push(s["resource_uri"].as_str().unwrap_or_default().to_string());
    }
    let tally = Arc::new(Tally {
        delivered: AtomicUsize::new(0),
        changed: Notify::new(),
    });
    for _ in 0..subscribers {
        let mut ws = api.subscribe("").await?;
        let tally = tally.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = ws.next().await {
                let Ok(text) = msg.to_text() else { continue };
                let event: Value = serde_json::from_str(text).unwrap_or_default();
                if event["type"] == "service" && event["action"] == "update" {
                    tally.delivered.fetch_add(1, Ordering::AcqRel);
                    tally.changed.notify_waiters();
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Latency: one event at a time.
    let rounds = 200;
    let (mut first, mut last) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        let base = tally.delivered.load(Ordering::Acquire);
        let start = Instant::now();
        api.call(
            "PATCH",
            &uris[0],
            Some(json!({ "target_num_containers": 1 + i % 3 })),
        )
        .await?;
        tally.wait_for(base + 1).await;
        first.push(start.elapsed());
        tally.wait_for(base + subscribers).await;
        last.push(start.elapsed());
    }
    first.sort();
    last.sort();
    println!(
        "one event at a time ({rounds}): PATCH -> first of {subscribers} subscribers median {} p99 {}; -> last median {} p99 {}",
        ms(percentile(&first, 0.5)),
        ms(percentile(&first, 0.99)),
        ms(percentile(&last, 0.5)),
        ms(percentile(&last, 0.99)),
    );

    // Throughput: 4 publishers, one service each.
    let base = tally.delivered.load(Ordering::Acquire);
    let start = Instant::now();
    let mut publishers = tokio::task::JoinSet::new();
    for uri in uris.clone() {
        let api = api.clone();
        publishers.spawn(async move {
            for i in 0..events / 4 {
                api.call(
                    "PATCH",
                    &uri,
                    Some(json!({ "target_num_containers": 1 + i % 3 })),
                )
                .await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = publishers.join_next().await {
        done??;
    }
    let published = start.elapsed();
    let total = (events / 4) * 4;
    tally.wait_for(base + total * subscribers).await;
    let delivered = start.elapsed();
    println!(
        "{total} events from 4 clients: published in {:.2} s ({:.0} events/s); all {} messages delivered to {subscribers} subscribers in {:.2} s ({:.0} messages/s)",
        published.as_secs_f64(),
        total as f64 / published.as_secs_f64(),
        total * subscribers,
        delivered.as_secs_f64(),
        (total * subscribers) as f64 / delivered.as_secs_f64(),
    );
    Ok(())
}

/// Arrival times of the engine's own `create` events for a label.
fn engine_creates(
    engine: &support::docker::Engine,
    label: &str,
) -> anyhow::Result<std::sync::mpsc::Receiver<Instant>> {
    let filters = json!({ "type": ["container"], "event": ["create"], "label": [label] });
    let mut stream =
        std::os::unix::net::UnixStream::connect(engine.host.trim_start_matches("unix://"))?;
    write!(
        stream,
        "GET /events?filters={} HTTP/1.0\r\nHost: docker\r\n\r\n",
        support::docker::urlencode(&filters.to_string())
    )?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            if line.contains("\"Action\":\"create\"") && tx.send(Instant::now()).is_err() {
                return;
            }
            line.clear();
        }
    });
    Ok(rx)
}

async fn scale_to_event(api: Arc<Api>, engine: &support::docker::Engine) -> anyhow::Result<()> {
    let rounds = support::knob("BENCH_SCALES", 8);
    let s = api
        .call(
            "POST",
            "/api/app/v1/service/",
            Some(json!({ "name": "scaled", "image": "busybox:latest", "run_command": "sleep 100000" })),
        )
        .await?;
    let uuid = s["uuid"].as_str().unwrap_or_default().to_string();
    let uri = s["resource_uri"].as_str().unwrap_or_default().to_string();
    api.call("POST", &format!("{uri}start/"), None).await?;
    let name = "scaled";
    let mut ws = api.subscribe(&format!("?parent={uri}")).await?;
    let engine_events = engine_creates(engine, &format!("berth.stacks.service={uuid}"))?;
    let (mut total, mut berth_part) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Settle: the previous round's containers are running and their
        // events drained.
        let want = 1 + round as u64;
        let deadline = Instant::now() + Duration::from_secs(60);
        while engine.replicas(name) != Some((want, want as usize)) {
            anyhow::ensure!(Instant::now() < deadline, "{name} never reached {want}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        while tokio::time::timeout(Duration::from_millis(300), ws.next())
            .await
            .is_ok()
        {}
        while engine_events.try_recv().is_ok() {}

        let start = Instant::now();
        let out = tokio::process::Command::new("docker")
            .args(["--host", &engine.host, "service", "scale", "--detach"])
            .arg(format!("{name}={}", want + 1))
            .output()
            .await?;
        anyhow::ensure!(out.status.success(), "{out:?}");
        let arrived = loop {
            let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
                .await?
                .ok_or_else(|| anyhow::anyhow!("stream ended"))??;
            let event: Value = serde_json::from_str(msg.to_text()?).unwrap_or_default();
            if event["type"] == "container" && event["action"] == "create" {
                break Instant::now();
            }
        };
        let seen_by_engine = engine_events.recv_timeout(Duration::from_secs(5))?;
        total.push(arrived - start);
        berth_part.push(arrived.saturating_duration_since(seen_by_engine));
    }
    total.sort();
    berth_part.sort();
    println!(
        "docker service scale -> container create event at a subscriber ({rounds} rounds): median {} max {}; of which after the engine's own event stream: median {} max {}",
        ms(percentile(&total, 0.5)),
        ms(percentile(&total, 1.0)),
        ms(percentile(&berth_part, 0.5)),
        ms(percentile(&berth_part, 1.0)),
    );
    Ok(())
}
