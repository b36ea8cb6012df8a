//! A real Docker engine for the tests: a private `dockerd` (Debian's
//! docker.io, `--storage-driver vfs`, its own socket, data and exec roots
//! in a temp dir), also listening on 127.0.0.1 over TCP with mutual TLS
//! (certificates made here), with `busybox:latest` imported from the
//! static busybox binary. `DOCKER_HOST` (a unix socket) is used instead
//! when given. Without an engine the tests say so and skip, unless
//! `BERTH_REQUIRE_DOCKER=1`, which makes that a failure.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The image droplets and the tests run.
pub const IMAGE: &str = "busybox:latest";

/// TLS endpoint of an engine: address and PEM files.
pub struct TlsEndpoint {
    pub address: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A Docker engine the tests can use.
pub struct Engine {
    /// `unix:///...`
    pub host: String,
    /// The same engine over TCP with TLS (private engines only).
    pub tls: Option<TlsEndpoint>,
    dir: PathBuf,
    child: Option<Child>,
    args: Vec<String>,
}

fn required() -> bool {
    std::env::var("BERTH_REQUIRE_DOCKER").is_ok_and(|v| v == "1")
}

/// Skip (or, under `BERTH_REQUIRE_DOCKER=1`, fail) for `why`.
fn unavailable(why: &str) -> Option<&'static Engine> {
    if required() {
        panic!("BERTH_REQUIRE_DOCKER=1 but no Docker engine: {why}");
    }
    eprintln!(
        "SKIPPED: no Docker engine ({why}); set BERTH_REQUIRE_DOCKER=1 to make this a failure"
    );
    None
}

/// The engine shared by this test binary, started on first use.
pub fn shared() -> Option<&'static Engine> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    let engine = ENGINE.get_or_init(|| {
        if let Ok(host) = std::env::var("DOCKER_HOST")
            && !host.is_empty()
        {
            let engine = Engine {
                host,
                tls: None,
                dir: PathBuf::new(),
                child: None,
                args: Vec::new(),
            };
            engine.wait_ready(Duration::from_secs(30))?;
            engine.import_image()?;
            return Ok(engine);
        }
        Engine::start_private()
    });
    match engine {
        Ok(engine) => Some(engine),
        Err(why) => unavailable(why),
    }
}

/// An engine of the test's own, which it may stop and start. It shares
/// the docker0 bridge with the shared engine (`--bridge=none` would delete
/// it from under the shared one), so tests run no containers on it.
pub fn private() -> Option<Engine> {
    match Engine::start_private() {
        Ok(engine) => Some(engine),
        Err(why) => {
            unavailable(&why);
            None
        }
    }
}

fn find_binary(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

impl Engine {
    fn start_private() -> Result<Engine, String> {
        let dockerd =
            find_binary("dockerd").ok_or("dockerd is not installed (apt-get install docker.io)")?;
        find_binary("docker").ok_or("the docker CLI is not installed")?;
        clean_stale_dirs();
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("berth-dockerd-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let socket = dir.join("docker.sock");
        let tls = make_certs(&dir)?;
        let port = free_port();
        let mut args: Vec<String> = vec![
            "--storage-driver=vfs".into(),
            format!("--host=unix://{}", socket.display()),
            format!("--host=tcp://127.0.0.1:{port}"),
            "--tlsverify".into(),
            format!("--tlscacert={}", tls.ca.display()),
            format!("--tlscert={}", dir.join("server-cert.pem").display()),
            format!("--tlskey={}", dir.join("server-key.pem").display()),
            format!("--data-root={}", dir.join("data").display()),
            format!("--exec-root={}", dir.join("exec").display()),
            format!("--pidfile={}", dir.join("dockerd.pid").display()),
            "--iptables=false".into(),
            "--ip6tables=false".into(),
        ];
        args.push(dockerd.display().to_string());
        let mut engine = Engine {
            host: format!("unix://{}", socket.display()),
            tls: Some(TlsEndpoint {
                address: format!("tcp://127.0.0.1:{port}"),
                ..tls
            }),
            dir,
            child: None,
            args,
        };
        engine.spawn()?;
        engine.wait_ready(Duration::from_secs(60))?;
        engine.import_image()?;
        Ok(engine)
    }

    /// Start dockerd (again). It dies with this test process.
    pub fn spawn(&mut self) -> Result<(), String> {
        let (program, args) = self.args.split_last().expect("dockerd args");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("dockerd.log"))
            .map_err(|e| e.to_string())?;
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; the child gets SIGTERM when
        // the thread that spawned it ends, and that thread lives as long
        // as the process (see below).
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(command.spawn().map_err(|e| e.to_string()));
            loop {
                std::thread::park();
            }
        });
        let child = rx.recv().map_err(|e| e.to_string())??;
        self.child = Some(child);
        Ok(())
    }

    /// Stop dockerd and wait for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn socket(&self) -> &str {
        self.host.trim_start_matches("unix://")
    }

    /// `GET path` on the engine's socket: (status, body).
    pub fn get(&self, path: &str) -> Result<(u16, String), String> {
        let mut stream = UnixStream::connect(self.socket()).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n").map_err(|e| e.to_string())?;
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .map_err(|e| e.to_string())?;
        let status = answer
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not HTTP: {answer}"))?;
        let body = answer
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// A container's inspect JSON.
    pub fn inspect(&self, name: &str) -> Option<serde_json::Value> {
        match self.get(&format!("/containers/{name}/json")) {
            Ok((200, body)) => serde_json::from_str(&body).ok(),
            _ => None,
        }
    }

    /// A Swarm service's inspect JSON (Null when there is none).
    pub fn inspect_service(&self, name: &str) -> serde_json::Value {
        match self.get(&format!("/services/{name}")) {
            Ok((200, body)) => serde_json::from_str(&body).unwrap_or_default(),
            _ => serde_json::Value::Null,
        }
    }

    fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.get("/_ping") {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => last = format!("{status} {body}"),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "{} not ready within {timeout:?} ({last}); see {}",
            self.host,
            self.dir.join("dockerd.log").display()
        ))
    }

    /// `docker ARGS` against this engine.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(find_binary("docker").expect("docker CLI"))
            .arg("--host")
            .arg(&self.host)
            .args(args)
            .output()
            .expect("run docker")
    }

    /// Replicas wanted and running of a Swarm service, by name.
    pub fn replicas(&self, name: &str) -> Option<(u64, usize)> {
        let (status, body) = self.get(&format!("/services/{name}")).ok()?;
        if status != 200 {
            return None;
        }
        let spec: serde_json::Value = serde_json::from_str(&body).ok()?;
        let wanted = spec["Spec"]["Mode"]["Replicated"]["Replicas"].as_u64()?;
        let filters =
            serde_json::json!({ "service": [name], "desired-state": ["running"] }).to_string();
        let (_, tasks) = self
            .get(&format!("/tasks?filters={}", urlencode(&filters)))
            .ok()?;
        let tasks: serde_json::Value = serde_json::from_str(&tasks).ok()?;
        let running = tasks
            .as_array()?
            .iter()
            .filter(|t| t["Status"]["State"] == "running")
            .count();
        Some((wanted, running))
    }

    /// `docker swarm init` on 127.0.0.1 with ports of its own, so that a
    /// swarm engine of an earlier test binary, still shutting down, is
    /// never in the way: the manager port is free, the VXLAN port too.
    /// Tests sharing the engine may each ask: the first one makes it.
    pub fn swarm_init(&self) {
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let info = self.get("/info").map(|(_, body)| body).unwrap_or_default();
        let info: serde_json::Value = serde_json::from_str(&info).unwrap_or_default();
        if info["Swarm"]["LocalNodeState"] == "active" {
            return;
        }
        let listen = format!("127.0.0.1:{}", free_port());
        let vxlan = (20_000 + std::process::id() % 20_000..49_151)
            .find(|p| std::net::UdpSocket::bind(("0.0.0.0", *p as u16)).is_ok())
            .expect("a free UDP port");
        let out = self.cli(&[
            "swarm",
            "init",
            "--advertise-addr",
            "127.0.0.1",
            "--listen-addr",
            &listen,
            "--data-path-port",
            &vxlan.to_string(),
        ]);
        assert!(
            out.status.success(),
            "docker swarm init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Import `busybox:latest` from the static busybox binary, once.
    fn import_image(&self) -> Result<(), String> {
        self.import_busybox(IMAGE, r#"CMD ["/bin/sh"]"#)
    }

    /// Import the static busybox binary as image `tag` with one Dockerfile
    /// `change` (e.g. a CMD), unless `tag` exists.
    pub fn import_busybox(&self, tag: &str, change: &str) -> Result<(), String> {
        if self.cli(&["image", "inspect", tag]).status.success() {
            return Ok(());
        }
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.is_file())
            .ok_or("busybox is not installed (apt-get install busybox-static)")?;
        let root = tempfile::tempdir().map_err(|e| e.to_string())?;
        let bin = root.path().join("bin");
        std::fs::create_dir_all(&bin).map_err(|e| e.to_string())?;
        std::fs::copy(busybox, bin.join("busybox")).map_err(|e| e.to_string())?;
        for applet in ["sh", "sleep", "echo", "httpd", "cat", "ls", "true"] {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).map_err(|e| e.to_string())?;
        }
        let tar = Command::new("tar")
            .arg("-C")
            .arg(root.path())
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let import = Command::new(find_binary("docker").expect("docker CLI"))
            .arg("--host")
            .arg(&self.host)
            .args(["import", "-c", change, "-", tag])
            .stdin(tar.stdout.expect("tar stdout"))
            .output()
            .map_err(|e| e.to_string())?;
        if !import.status.success() {
            return Err(format!(
                "docker import failed: {}",
                String::from_utf8_lossy(&import.stderr)
            ));
        }
        Ok(())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Percent-encode a query value.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A port no listener has now, on any address, for something that will
/// listen on it later (a published container port, an engine's TCP
/// socket). It is taken below the kernel's ephemeral range: ports that
/// `bind(:0)` and outgoing connections hand out (every test server here
/// listens on port 0) come from that range, and one of them could take a
/// port picked there before its user binds it, failing a container's
/// start with "address already in use". Never the same port twice in one
/// test process.
pub fn free_port() -> u16 {
    use std::sync::Mutex;
    static HANDED: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral.max(10_001));
    let span = u32::from(high - low);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        ^ std::process::id().wrapping_mul(2_654_435_761);
    let mut handed = HANDED.lock().unwrap();
    for i in 0..span {
        let port = low + ((seed.wrapping_add(i.wrapping_mul(7919))) % span) as u16;
        if handed.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            handed.push(port);
            return port;
        }
    }
    panic!("no free port in {low}..{high}");
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate.
fn make_certs(dir: &Path) -> Result<TlsEndpoint, String> {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
    };
    let e = |e: rcgen::Error| e.to_string();
    let ca_key = KeyPair::generate().map_err(e)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).map_err(e)?;

    let server_key = KeyPair::generate().map_err(e)?;
    let mut server = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    server.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server = server.signed_by(&server_key, &ca, &ca_key).map_err(e)?;

    let client_key = KeyPair::generate().map_err(e)?;
    let mut client = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = client.signed_by(&client_key, &ca, &ca_key).map_err(e)?;

    let write =
        |name: &str, text: String| std::fs::write(dir.join(name), text).map_err(|e| e.to_string());
    write("ca.pem", ca.pem())?;
    write("server-cert.pem", server.pem())?;
    write("server-key.pem", server_key.serialize_pem())?;
    write("cert.pem", client.pem())?;
    write("key.pem", client_key.serialize_pem())?;
    Ok(TlsEndpoint {
        address: String::new(),
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    })
}

/// Remove the temp dirs of engines whose test process is gone.
fn clean_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("berth-dockerd-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = Path::new(&format!("/proc/{pid}")).exists();
        let dockerd_alive = std::fs::read_to_string(entry.path().join("dockerd.pid"))
            .ok()
            .is_some_and(|p| Path::new(&format!("/proc/{}", p.trim())).exists());
        if !alive && !dockerd_alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
