//! The Docker passthrough against its peers, in one run on one engine
//! (`cargo bench --profile dist --bench passthrough`; needs root for the
//! private dockerd, like the Docker tests, and nginx: `apt-get install
//! nginx-light`):
//!
//! - `docker cp` of a 100 MB file into a container and back out, through
//!   Berth's Portainer proxy and straight to the engine's socket: the
//!   throughput ratio;
//! - `docker exec CONTAINER true` through Berth and through an nginx
//!   reverse proxy to the same socket: the CLI's wall time, and the API
//!   round trip it makes (exec create, hijacked start read to its end,
//!   exec inspect) timed without the CLI's own start-up.
//!
//! Each Berth measurement takes turns with its peer's, so both see the same
//! phase of this VM. Knobs: BENCH_CP_MB (100), BENCH_CP_RUNS (3),
//! BENCH_EXECS (30).

#[path = "../../tests/support/mod.rs"]
mod support;

mod shared;
use shared::Nginx;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The docker CLI against one door to the engine.
struct Cli {
    host: String,
    config: PathBuf,
}

impl Cli {
    fn timed(&self, args: &[&str]) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let out = Command::new("docker")
            .arg("--config")
            .arg(&self.config)
            .arg("--host")
            .arg(&self.host)
            .args(args)
            .output()?;
        let took = started.elapsed();
        anyhow::ensure!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(took)
    }
}

/// A door to the Engine API for the raw client: where to connect, the
/// path prefix, and the header to send.
struct Door {
    port: u16,
    prefix: String,
    auth: Option<String>,
}

/// One HTTP/1.1 exchange on a new connection: the status and the body (or,
/// for a `101`, everything the engine sent until it closed).
async fn exchange(
    door: &Door,
    method: &str,
    path: &str,
    body: &str,
    half_close: bool,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut tcp = TcpStream::connect(("127.0.0.1", door.port)).await?;
    tcp.set_nodelay(true)?;
    let mut head = format!(
        "{method} {}{path} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n",
        door.prefix,
        body.len()
    );
    if let Some(auth) = &door.auth {
        head.push_str(&format!("Authorization: {auth}\r\n"));
    }
    if path.ends_with("/start") {
        head.push_str("Connection: Upgrade\r\nUpgrade: tcp\r\n");
    } else {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    head.push_str(body);
    tcp.write_all(head.as_bytes()).await?;
    let mut got = Vec::new();
    if path.ends_with("/start") && half_close {
        // As the CLI does with no stdin to send: once the stream is
        // switched, end the writing side.
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut piece = [0u8; 4096];
            let n = tcp.read(&mut piece).await?;
            anyhow::ensure!(n > 0, "closed before the answer head");
            got.extend_from_slice(&piece[..n]);
        }
        tcp.shutdown().await?;
    }
    tcp.read_to_end(&mut got).await?;
    let end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no answer head"))?;
    let status = std::str::from_utf8(&got[9..12])?.parse()?;
    Ok((status, got[end + 4..].to_vec()))
}

/// What `docker exec CONTAINER true` asks of the API, without the CLI;
/// `half_close`: end the writing side once the stream is switched, as the
/// CLI does when it has no stdin to send.
async fn exec_round_trip(
    door: &Door,
    container: &str,
    half_close: bool,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let create = r#"{"AttachStdout":true,"AttachStderr":true,"Cmd":["true"]}"#;
    let (status, body) = exchange(
        door,
        "POST",
        &format!("/containers/{container}/exec"),
        create,
        false,
    )
    .await?;
    anyhow::ensure!(
        status == 201,
        "exec create: {status} {}",
        String::from_utf8_lossy(&body)
    );
    let created: serde_json::Value = serde_json::from_slice(chunked_json(&body))?;
    let id = created["Id"].as_str().unwrap_or_default().to_string();
    let start = r#"{"Detach":false,"Tty":false}"#;
    let (status, _) = exchange(
        door,
        "POST",
        &format!("/exec/{id}/start"),
        start,
        half_close,
    )
    .await?;
    anyhow::ensure!(status == 101, "exec start: {status}");
    let (status, _) = exchange(door, "GET", &format!("/exec/{id}/json"), "", false).await?;
    anyhow::ensure!(status == 200, "exec inspect: {status}");
    Ok(started.elapsed())
}

/// The JSON in a body that may be chunked.
fn chunked_json(body: &[u8]) -> &[u8] {
    let start = body.iter().position(|b| *b == b'{').unwrap_or(0);
    let end = body
        .iter()
        .rposition(|b| *b == b'}')
        .map_or(body.len(), |e| e + 1);
    &body[start..end]
}

fn mb_per_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / took.as_secs_f64()
}

fn main() -> anyhow::Result<()> {
    let Some(engine) = support::docker::shared() else {
        anyhow::bail!("no Docker engine");
    };
    let rt = tokio::runtime::Runtime::new()?;
    let dir = tempfile::tempdir()?;
    let config = format!(
        "[docker]\nlocal = \"{}\"\nallow = [\"tcp://127.0.0.1:*\"]\n",
        engine.host
    );
    let berth = support::Berth::start(dir.path(), &config);
    let (jwt, local, _) = rt.block_on(support::portainer::admin_with_endpoints(&berth, engine));
    let socket = engine.host.trim_start_matches("unix://").to_string();
    let nginx = Nginx::start(&socket)?;
    let clients = dir.path().join("clients");
    std::fs::create_dir_all(&clients)?;
    std::fs::write(
        clients.join("config.json"),
        serde_json::json!({ "HttpHeaders": { "Authorization": format!("Bearer {jwt}") } })
            .to_string(),
    )?;
    let address = berth.url.trim_start_matches("http://").to_string();
    let through_berth = Cli {
        host: format!("tcp://{address}/api/endpoints/{local}/docker"),
        config: clients.clone(),
    };
    let direct = Cli {
        host: engine.host.clone(),
        config: clients.clone(),
    };
    let through_nginx = Cli {
        host: format!("tcp://127.0.0.1:{}", nginx.port),
        config: clients.clone(),
    };
    let container = format!("bench-pass-{}", std::process::id());
    let run = engine.cli(&[
        "run",
        "-d",
        "--name",
        &container,
        support::docker::IMAGE,
        "sleep",
        "3600",
    ]);
    anyhow::ensure!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    // docker cp, in and out.
    let mb = support::knob("BENCH_CP_MB", 100) as u64;
    let runs = support::knob("BENCH_CP_RUNS", 3);
    let file = dir.path().join("big");
    write_file(&file, mb << 20)?;
    let back = |n: &str| dir.path().join(format!("back-{n}"));
    let inside = format!("{container}:/big");
    let (mut berth_in, mut berth_out, mut direct_in, mut direct_out) =
        (vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        for (cli, ins, outs, tag) in [
            (&direct, &mut direct_in, &mut direct_out, "direct"),
            (&through_berth, &mut berth_in, &mut berth_out, "berth"),
        ] {
            ins.push(cli.timed(&["cp", file.to_str().unwrap(), &inside])?);
            let _ = std::fs::remove_file(back(tag));
            outs.push(cli.timed(&["cp", &inside, back(tag).to_str().unwrap()])?);
        }
    }
    let bytes = mb << 20;
    let (bi, bo, di, do_) = (
        median(berth_in),
        median(berth_out),
        median(direct_in),
        median(direct_out),
    );
    println!("docker cp of {mb} MB, median of {runs}:");
    println!(
        "  in:  Berth {:.0} MB/s ({bi:.2?}), socket {:.0} MB/s ({di:.2?}): ratio {:.2}",
        mb_per_s(bytes, bi),
        mb_per_s(bytes, di),
        di.as_secs_f64() / bi.as_secs_f64()
    );
    println!(
        "  out: Berth {:.0} MB/s ({bo:.2?}), socket {:.0} MB/s ({do_:.2?}): ratio {:.2}",
        mb_per_s(bytes, bo),
        mb_per_s(bytes, do_),
        do_.as_secs_f64() / bo.as_secs_f64()
    );

    // docker exec CONTAINER true.
    let execs = support::knob("BENCH_EXECS", 30);
    let (mut berth_cli, mut nginx_cli) = (vec![], vec![]);
    let (mut berth_ps, mut nginx_ps) = (vec![], vec![]);
    for _ in 0..execs {
        berth_cli.push(through_berth.timed(&["exec", &container, "true"])?);
        nginx_cli.push(through_nginx.timed(&["exec", &container, "true"])?);
        berth_ps.push(through_berth.timed(&["ps", "-q"])?);
        nginx_ps.push(through_nginx.timed(&["ps", "-q"])?);
    }
    let (bp, np) = (median(berth_ps), median(nginx_ps));
    println!(
        "docker ps -q, median of {execs}: Berth {bp:.2?}, nginx {np:.2?}: {:.2}x",
        bp.as_secs_f64() / np.as_secs_f64()
    );
    let berth_door = Door {
        port: address.rsplit(':').next().unwrap().parse()?,
        prefix: format!("/api/endpoints/{local}/docker"),
        auth: Some(format!("Bearer {jwt}")),
    };
    let nginx_door = Door {
        port: nginx.port,
        prefix: String::new(),
        auth: None,
    };
    let (mut berth_api, mut nginx_api) = (vec![], vec![]);
    let (mut berth_half, mut nginx_half) = (vec![], vec![]);
    rt.block_on(async {
        for _ in 0..execs {
            berth_api.push(exec_round_trip(&berth_door, &container, false).await?);
            nginx_api.push(exec_round_trip(&nginx_door, &container, false).await?);
            berth_half.push(exec_round_trip(&berth_door, &container, true).await?);
            nginx_half.push(exec_round_trip(&nginx_door, &container, true).await?);
        }
        anyhow::Ok(())
    })?;
    let (bh, nh) = (median(berth_half), median(nginx_half));
    let (bc, nc, ba, na) = (
        median(berth_cli),
        median(nginx_cli),
        median(berth_api),
        median(nginx_api),
    );
    println!("docker exec {container} true, median of {execs}:");
    println!(
        "  the CLI:       Berth {bc:.2?}, nginx {nc:.2?}: {:.2}x",
        bc.as_secs_f64() / nc.as_secs_f64()
    );
    println!(
        "  its API calls: Berth {ba:.2?}, nginx {na:.2?}: {:.2}x",
        ba.as_secs_f64() / na.as_secs_f64()
    );
    // nginx ends the whole upgraded connection on the client's FIN, output
    // still to come or not; Berth passes the half-close on and waits for
    // the engine's end, as the socket itself does.
    println!(
        "  the same, half-closing after the 101: Berth {bh:.2?}, nginx {nh:.2?}: {:.2}x",
        bh.as_secs_f64() / nh.as_secs_f64()
    );
    engine.cli(&["rm", "-f", &container]);
    Ok(())
}

/// `bytes` of data that does not compress to nothing.
fn write_file(path: &Path, bytes: u64) -> anyhow::Result<()> {
    let mut block = vec![0u8; 1 << 20];
    for (i, b) in block.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for n in 0..bytes >> 20 {
        block[0] = n as u8;
        std::io::Write::write_all(&mut out, &block)?;
    }
    Ok(())
}
