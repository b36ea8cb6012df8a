//! The Docker passthrough against its peers, in one run on one engine
//! (`cargo bench --bench passthrough`; needs root for the private dockerd,
//! like the Docker tests, and nginx with its stream module: `apt-get
//! install nginx-light libnginx-mod-stream`). The peers: the engine's own
//! socket; nginx's HTTP reverse proxy to it; nginx's TCP proxy to it
//! (which, unlike the HTTP one, carries a `docker exec` whole).
//!
//! - `docker cp` of a 100 MB file into a container and back out, with the
//!   CLI, and the archive's bytes out read by a plain client that asks
//!   every door the same (no compression): throughputs and ratios;
//! - `docker exec CONTAINER true`: what each door gives the CLI back (its
//!   output and exit code), the CLI's wall time, and the API calls it
//!   makes (exec create, hijacked start half-closed as the CLI does and
//!   read to its end, exec inspect) timed without the CLI's start-up.
//!
//! Each Berth measurement takes turns with its peers', so all see the same
//! phase of this VM. Knobs: BENCH_CP_MB (100), BENCH_CP_RUNS (3),
//! BENCH_EXECS (30); BENCH_HOLD=SECONDS keeps everything up that long once
//! it is set up, its addresses printed, to look at by hand.

#[path = "../../tests/support/mod.rs"]
mod support;

mod shared;
use shared::Nginx;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

/// The docker CLI against one door to the engine.
struct Cli {
    name: &'static str,
    host: String,
    config: PathBuf,
}

impl Cli {
    fn output(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(Command::new("docker")
            .arg("--config")
            .arg(&self.config)
            .arg("--host")
            .arg(&self.host)
            .args(args)
            .output()?)
    }

    fn timed(&self, args: &[&str]) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let out = self.output(args)?;
        let took = started.elapsed();
        anyhow::ensure!(
            out.status.success(),
            "docker {args:?} through {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(took)
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A door to the Engine API for the raw client: where to connect, the
/// path prefix, and the header to send.
struct Door {
    tcp_port: Option<u16>,
    socket: PathBuf,
    prefix: String,
    auth: Option<String>,
}

impl Door {
    async fn connect(&self) -> anyhow::Result<Box<dyn Io>> {
        Ok(match self.tcp_port {
            Some(port) => {
                let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
                tcp.set_nodelay(true)?;
                Box::new(tcp)
            }
            None => Box::new(UnixStream::connect(&self.socket).await?),
        })
    }

    /// A request's head, up to its empty line.
    fn head(&self, method: &str, path: &str, more: &str) -> String {
        let auth = match &self.auth {
            Some(auth) => format!("Authorization: {auth}\r\n"),
            None => String::new(),
        };
        format!(
            "{method} {}{path} HTTP/1.1\r\nHost: docker\r\n{auth}{more}\r\n",
            self.prefix
        )
    }
}

/// Read up to the end of an answer's head; the status and what came after.
async fn read_head(conn: &mut Box<dyn Io>) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut got = Vec::new();
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let status = std::str::from_utf8(&got[9..12])?.parse()?;
            return Ok((status, got.split_off(end + 4)));
        }
        let mut piece = [0u8; 4096];
        let n = conn.read(&mut piece).await?;
        anyhow::ensure!(n > 0, "closed before the answer head");
        got.extend_from_slice(&piece[..n]);
    }
}

/// One HTTP/1.1 exchange on a new connection: the status and the body (or,
/// for a `101`, everything the engine sent until it closed). An upgrade's
/// writing side is shut once the stream is switched, as the CLI does when
/// it has no stdin to send.
async fn exchange(
    door: &Door,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let upgrade = path.ends_with("/start");
    let more = format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n{}",
        body.len(),
        if upgrade {
            "Connection: Upgrade\r\nUpgrade: tcp\r\n"
        } else {
            "Connection: close\r\n"
        }
    );
    let mut conn = door.connect().await?;
    conn.write_all(format!("{}{body}", door.head(method, path, &more)).as_bytes())
        .await?;
    let (status, mut got) = read_head(&mut conn).await?;
    if upgrade {
        conn.shutdown().await?;
    }
    conn.read_to_end(&mut got).await?;
    Ok((status, got))
}

/// What `docker exec CONTAINER true` asks of the API, without the CLI.
async fn exec_round_trip(door: &Door, container: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let create = r#"{"AttachStdout":true,"AttachStderr":true,"Cmd":["true"]}"#;
    let path = format!("/containers/{container}/exec");
    let (status, body) = exchange(door, "POST", &path, create).await?;
    anyhow::ensure!(
        status == 201,
        "exec create: {status} {}",
        String::from_utf8_lossy(&body)
    );
    let created: serde_json::Value = serde_json::from_slice(chunked_json(&body))?;
    let id = created["Id"].as_str().unwrap_or_default().to_string();
    let start = r#"{"Detach":false,"Tty":false}"#;
    let (status, _) = exchange(door, "POST", &format!("/exec/{id}/start"), start).await?;
    anyhow::ensure!(status == 101, "exec start: {status}");
    let (status, _) = exchange(door, "GET", &format!("/exec/{id}/json"), "").await?;
    anyhow::ensure!(status == 200, "exec inspect: {status}");
    Ok(started.elapsed())
}

/// `GET /containers/{container}/archive?path={path}` read to its end, asked
/// the same of every door: no compression, whatever the CLI would ask.
async fn archive_out(door: &Door, container: &str, path: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut conn = door.connect().await?;
    let target = format!("/containers/{container}/archive?path={path}");
    let head = door.head("GET", &target, "Connection: close\r\n");
    conn.write_all(head.as_bytes()).await?;
    let (status, _) = read_head(&mut conn).await?;
    anyhow::ensure!(status == 200, "archive: {status}");
    let mut buf = vec![0u8; 256 << 10];
    while conn.read(&mut buf).await? > 0 {}
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

fn mb_per_s(mb: u64, took: Duration) -> f64 {
    mb as f64 / took.as_secs_f64()
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
    let stream = shared::nginx_stream(&socket)?;
    let clients = dir.path().join("clients");
    std::fs::create_dir_all(&clients)?;
    std::fs::write(
        clients.join("config.json"),
        serde_json::json!({ "HttpHeaders": { "Authorization": format!("Bearer {jwt}") } })
            .to_string(),
    )?;
    let berth_port: u16 = berth.url.rsplit(':').next().unwrap().parse()?;
    let cli = |name, host: String| Cli {
        name,
        host,
        config: clients.clone(),
    };
    let through_berth = cli(
        "Berth",
        format!("tcp://127.0.0.1:{berth_port}/api/endpoints/{local}/docker"),
    );
    let direct = cli("the socket", engine.host.clone());
    let through_nginx = cli("nginx", format!("tcp://127.0.0.1:{}", nginx.port));
    let through_stream = cli("nginx stream", format!("tcp://127.0.0.1:{}", stream.port));
    let door = |tcp_port, prefix: String, auth| Door {
        tcp_port,
        socket: PathBuf::from(&socket),
        prefix,
        auth,
    };
    let berth_door = door(
        Some(berth_port),
        format!("/api/endpoints/{local}/docker"),
        Some(format!("Bearer {jwt}")),
    );
    let socket_door = door(None, String::new(), None);
    let nginx_door = door(Some(nginx.port), String::new(), None);
    let stream_door = door(Some(stream.port), String::new(), None);

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
    if let Ok(seconds) = std::env::var("BENCH_HOLD") {
        println!(
            "holding: Berth {}, nginx {}, nginx stream {}, the socket {}, \
             CLI config {}, container {container}",
            through_berth.host,
            through_nginx.host,
            through_stream.host,
            direct.host,
            clients.display()
        );
        std::thread::sleep(Duration::from_secs(seconds.parse().unwrap_or(600)));
    }

    // docker cp, in and out, with the CLI; then the archive's bytes out,
    // asked the same of every door.
    let mb = support::knob("BENCH_CP_MB", 100) as u64;
    let runs = support::knob("BENCH_CP_RUNS", 3);
    let file = dir.path().join("big");
    write_file(&file, mb << 20)?;
    let back = dir.path().join("back");
    let inside = format!("{container}:/big");
    let doors = [&direct, &through_nginx, &through_berth];
    let mut ins = [vec![], vec![], vec![]];
    let mut outs = [vec![], vec![], vec![]];
    let mut raw = [vec![], vec![], vec![]];
    for _ in 0..runs {
        for (i, cli) in doors.iter().enumerate() {
            ins[i].push(cli.timed(&["cp", file.to_str().unwrap(), &inside])?);
            let _ = std::fs::remove_file(&back);
            outs[i].push(cli.timed(&["cp", &inside, back.to_str().unwrap()])?);
        }
        rt.block_on(async {
            for (i, door) in [&socket_door, &nginx_door, &berth_door].iter().enumerate() {
                raw[i].push(archive_out(door, &container, "/big").await?);
            }
            anyhow::Ok(())
        })?;
    }
    println!("docker cp of {mb} MB, median of {runs}, MB/s (socket, nginx, Berth):");
    for (what, times) in [
        ("in, the CLI", ins),
        ("out, the CLI (over TCP it asks for gzip)", outs),
        ("out, the same request everywhere", raw),
    ] {
        let [s, n, b] = times.map(median);
        println!(
            "  {what}: {:.0}, {:.0}, {:.0}; Berth / socket {:.2}, Berth / nginx {:.2}",
            mb_per_s(mb, s),
            mb_per_s(mb, n),
            mb_per_s(mb, b),
            ratio(s, b),
            ratio(n, b),
        );
    }

    // docker exec: what each door gives back, then how long it takes.
    println!("docker exec {container} sh -c 'echo out; exit 3', (output, exit code):");
    for cli in [&direct, &through_nginx, &through_stream, &through_berth] {
        let out = cli.output(&["exec", &container, "sh", "-c", "echo out; exit 3"])?;
        println!(
            "  {}: ({:?}, {:?})",
            cli.name,
            String::from_utf8_lossy(&out.stdout).trim(),
            out.status.code()
        );
    }
    let execs = support::knob("BENCH_EXECS", 30);
    // nginx's HTTP proxy ends each exec early and leaves the engine
    // finishing it while the next one starts, which slows that one down
    // by tens of milliseconds: it takes its turns apart, after the others.
    let peers = [&direct, &through_stream, &through_berth];
    let mut exec_cli = [vec![], vec![], vec![]];
    let (mut berth_ps, mut nginx_ps) = (vec![], vec![]);
    let mut exec_api = [vec![], vec![], vec![]];
    for _ in 0..execs {
        for (i, cli) in peers.iter().enumerate() {
            exec_cli[i].push(cli.timed(&["exec", &container, "true"])?);
        }
        berth_ps.push(through_berth.timed(&["ps", "-q"])?);
        nginx_ps.push(through_nginx.timed(&["ps", "-q"])?);
        rt.block_on(async {
            for (i, door) in [&socket_door, &stream_door, &berth_door].iter().enumerate() {
                exec_api[i].push(exec_round_trip(door, &container).await?);
            }
            anyhow::Ok(())
        })?;
    }
    let mut cut_short = vec![];
    for _ in 0..execs {
        cut_short.push(through_nginx.timed(&["exec", &container, "true"])?);
    }
    let n = median(cut_short);
    let [s, st, b] = exec_cli.map(median);
    println!("docker exec {container} true, median of {execs}:");
    println!(
        "  the CLI: socket {s:.2?}, nginx stream {st:.2?}, nginx {n:.2?} (output and exit \
         code lost), Berth {b:.2?}; Berth / nginx stream {:.2}x, Berth / socket {:.2}x",
        ratio(b, st),
        ratio(b, s)
    );
    let [s, st, b] = exec_api.map(median);
    println!(
        "  its API calls: socket {s:.2?}, nginx stream {st:.2?}, Berth {b:.2?}; \
         Berth / nginx stream {:.2}x, Berth / socket {:.2}x",
        ratio(b, st),
        ratio(b, s)
    );
    let (bp, np) = (median(berth_ps), median(nginx_ps));
    println!(
        "docker ps -q, median of {execs}: nginx {np:.2?}, Berth {bp:.2?}: {:.2}x",
        ratio(bp, np)
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
