//! A private PostgreSQL cluster for the tests: Debian's PostgreSQL server,
//! initialised in a temp dir and listening only on a unix socket there, run
//! as the `postgres` user when the tests run as root (initdb and postgres
//! refuse root). It stops, and its directory goes, when the test process
//! ends, however it ends: a watchdog shell holds the cluster and waits for
//! the test process's end of a pipe to close.
//!
//! `BERTH_TEST_STORE=postgres` runs every test's Berth on one such cluster
//! (a database per data directory), as CI's PostgreSQL pass does.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The directory of Debian's PostgreSQL binaries, the newest installed.
pub fn bin_dir() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("postgres").exists() && bin.join("initdb").exists())
        .collect();
    found.sort();
    found.pop()
}

/// Whether PostgreSQL is here; if not, a note that `what` is skipped, or a
/// panic when `BERTH_REQUIRE_POSTGRES=1` (CI).
pub fn installed_or_skip(what: &str) -> bool {
    if bin_dir().is_some() {
        return true;
    }
    if std::env::var("BERTH_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
        panic!("BERTH_REQUIRE_POSTGRES=1 but PostgreSQL is not installed");
    }
    eprintln!("SKIPPED {what}: install Debian's `postgresql`");
    false
}

/// Whether every test's Berth runs on PostgreSQL (CI's PostgreSQL pass).
pub fn store_pass() -> bool {
    std::env::var("BERTH_TEST_STORE").is_ok_and(|v| v == "postgres")
}

fn as_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// `command` run as the `postgres` user when we are root.
fn as_postgres(program: &Path) -> Command {
    if as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A running private cluster.
pub struct Cluster {
    /// Holds the temp dir: the watchdog removes it when this closes.
    watchdog: Mutex<Option<(Child, ChildStdin)>>,
    pub dir: PathBuf,
    bin: PathBuf,
}

impl Cluster {
    /// initdb and start a cluster in a fresh temp dir.
    pub fn start() -> Result<Cluster, String> {
        let bin = bin_dir().ok_or("PostgreSQL is not installed (Debian `postgresql`)")?;
        let dir = std::env::temp_dir().join(format!(
            "berth-pg-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(dir.join("sock")).map_err(|e| e.to_string())?;
        if as_root() {
            let chown = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .map_err(|e| e.to_string())?;
            if !chown.success() {
                return Err("cannot give the cluster's directory to `postgres`".into());
            }
        }
        let init = as_postgres(&bin.join("initdb"))
            .args(["-D"])
            .arg(dir.join("data"))
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"])
            .output()
            .map_err(|e| e.to_string())?;
        if !init.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&init.stderr)
            ));
        }
        let cluster = Cluster {
            watchdog: Mutex::new(None),
            dir,
            bin,
        };
        cluster.run()?;
        Ok(cluster)
    }

    /// The socket directory.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("sock")
    }

    /// A libpq-style URL for database `db` over the unix socket.
    pub fn url(&self, db: &str) -> String {
        let host: String = self
            .socket()
            .to_string_lossy()
            .bytes()
            .map(|b| match b {
                b'/' => "%2F".to_string(),
                b => (b as char).to_string(),
            })
            .collect();
        format!("postgres://postgres@{host}/{db}")
    }

    /// Start the server under a watchdog and wait until it accepts
    /// connections.
    fn run(&self) -> Result<(), String> {
        let postgres = self.bin.join("postgres");
        let data = self.dir.join("data");
        // The watchdog: start postgres, wait for a line on stdin (`keep`:
        // a restart) or its end (the test process ended), then stop it fast,
        // and at the end remove the directory.
        let script = format!(
            "{postgres} -D {data} -k {sock} -c listen_addresses= -c max_connections=400 \
             -c deadlock_timeout=100ms -c log_min_messages=warning \
             >>{log} 2>&1 & pid=$!; read cmd; kill -INT $pid; wait $pid; \
             [ \"$cmd\" = keep ] || rm -rf {dir}",
            postgres = postgres.display(),
            data = data.display(),
            sock = self.socket().display(),
            log = self.dir.join("postgres.log").display(),
            dir = self.dir.display(),
        );
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(if as_root() {
                format!("runuser -u postgres -- sh -c '{script}'")
            } else {
                script
            })
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start postgres: {e}"))?;
        let stdin = child.stdin.take().unwrap();
        *self.watchdog.lock().unwrap() = Some((child, stdin));
        let ready = Instant::now() + Duration::from_secs(60);
        loop {
            let status = Command::new(self.bin.join("pg_isready"))
                .arg("-h")
                .arg(self.socket())
                .arg("-q")
                .status()
                .map_err(|e| e.to_string())?;
            if status.success() {
                return Ok(());
            }
            if Instant::now() > ready {
                return Err(format!("postgres did not start: {}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    /// Stop the server (fast shutdown: connections are cut, committed work
    /// is kept) and wait for it to be gone; `keep` keeps its data.
    fn halt(&self, keep: bool) {
        if let Some((mut child, mut stdin)) = self.watchdog.lock().unwrap().take() {
            if keep {
                let _ = stdin.write_all(b"keep\n");
            }
            drop(stdin);
            let _ = child.wait();
        }
    }

    /// Stop the server, keeping its data for [`Cluster::start_again`].
    pub fn stop(&self) {
        self.halt(true);
    }

    /// Start a stopped server again on the same data.
    pub fn start_again(&self) {
        self.run().expect("postgres starts again");
    }

    /// Stop, then start again on the same data.
    pub fn restart(&self) {
        self.stop();
        self.start_again();
    }

    /// Run SQL as the superuser in database `db`; its output (unaligned,
    /// tuples only).
    pub fn sql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .arg("-h")
            .arg(self.socket())
            .args([
                "-U",
                "postgres",
                "-d",
                db,
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
            ])
            .arg(sql)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Create database `name` unless it exists.
    pub fn create_database(&self, name: &str) {
        if let Err(e) = self.sql("postgres", &format!("CREATE DATABASE \"{name}\"")) {
            assert!(e.contains("already exists"), "create database {name}: {e}");
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.halt(false);
    }
}

static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The cluster this test process's Berths share in the PostgreSQL pass,
/// started by the first to need it; it ends with the process.
pub fn shared() -> &'static Cluster {
    static SHARED: OnceLock<Cluster> = OnceLock::new();
    SHARED.get_or_init(|| Cluster::start().unwrap_or_else(|e| panic!("{e}")))
}

/// The store URL for a Berth with data directory `data` in the PostgreSQL
/// pass: a database of its own, the same one each time it starts again.
pub fn url_for(data: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut hasher);
    let name = format!("berth_{:016x}", hasher.finish());
    let cluster = shared();
    cluster.create_database(&name);
    cluster.url(&name)
}
