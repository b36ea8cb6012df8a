//! The `berth` command.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use berth::admin::{AdminRequest, AdminResponse};
use berth::config::Config;

/// mimalloc: the store built and dropped for every request allocates and
/// frees many small blocks; glibc malloc spent about 6% of the server's CPU
/// on them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A WebAssembly plugin host for container-platform APIs.
#[derive(Parser)]
#[command(name = "berth", version, about)]
struct Cli {
    /// TOML config file, merged over the embedded defaults
    /// (see `berth config`).
    #[arg(long, global = true, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,

    /// Data directory (storage, compile cache, admin socket).
    #[arg(long, global = true, env = "BERTH_DATA_DIR")]
    data_dir: Option<PathBuf>,

    /// Where durable state lives: empty for the embedded redb file, or a
    /// PostgreSQL URL that several replicas share ([store] url).
    #[arg(long, global = true, env = "BERTH_STORE_URL", hide_env_values = true)]
    store_url: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the plugins (the default address is 127.0.0.1:8080).
    Serve(ServeArgs),
    /// List mounted plugins of the running server, or check a .wasm file.
    Plugins {
        #[command(subcommand)]
        command: Option<PluginsCommand>,
    },
    /// Run a plugin's admin command on the running server:
    /// `berth run PLUGIN ARGS...`.
    Run {
        /// The plugin's name.
        plugin: String,
        /// Arguments passed to the plugin's `admin` export.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Background jobs of the running server: counts, dead jobs, retry.
    Jobs {
        #[command(subcommand)]
        command: Option<JobsCommand>,
    },
    /// Print the effective configuration (defaults merged with --config).
    Config,
    /// Move durable state between stores.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Copy a whole store (plugin KV, host metadata, jobs) into an empty
    /// one, then compare both: entries and a SHA-256 per namespace. Each
    /// side is a redb file (a stopped Berth's DATA_DIR/berth.redb) or a
    /// PostgreSQL URL ([store] password, pool and TLS settings apply).
    Copy {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
    },
}

#[derive(Subcommand)]
enum JobsCommand {
    /// Queued, running and dead counts per plugin, and the dead jobs.
    List {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Queue a dead job again.
    Retry { id: u64 },
}

#[derive(Subcommand)]
enum PluginsCommand {
    /// Mounted plugins: versions, routes, capabilities asked and granted,
    /// refused files.
    List {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compile, describe and check a .wasm file without serving it.
    Check { file: PathBuf },
    /// Check a .wasm file, then put it into the fleet's plugin set in the
    /// store: every replica writes it into its folder and mounts it (hot
    /// swap). On the embedded store, into this Berth's plugins folder.
    Push {
        /// The component (NAME.wasm); not needed with --bundled.
        #[arg(required_unless_present = "bundled")]
        file: Option<PathBuf>,
        /// Push this binary's bundled plugins instead (a rolling upgrade).
        #[arg(long)]
        bundled: bool,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "BERTH_LISTEN")]
    listen: Option<SocketAddr>,
    /// Plugins folder (default DATA_DIR/plugins).
    #[arg(long, env = "BERTH_PLUGINS_DIR")]
    plugins_dir: Option<PathBuf>,
    /// PEM certificate chain for HTTPS.
    #[arg(long, env = "BERTH_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS.
    #[arg(long, env = "BERTH_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Token for /_berth/plugins (default: DATA_DIR/admin-token).
    #[arg(long, env = "BERTH_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Calls one plugin instance may serve ([defaults] instance_reuse;
    /// 1: a fresh instance per call).
    #[arg(long, env = "BERTH_INSTANCE_REUSE", value_parser = clap::value_parser!(u32).range(1..))]
    instance_reuse: Option<u32>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // A worker about to sleep, or to exit, first tears down the wasm
        // store it kept from its last request (see `Spent::retire`).
        .on_thread_park(berth::runtime::reap)
        .on_thread_stop(berth::runtime::reap)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(dir) = &cli.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(url) = &cli.store_url {
        config.store.url = url.clone();
        config.check()?;
    }
    Ok(config)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut config = load_config(&cli)?;
    match cli.command {
        Command::Serve(args) => {
            if let Some(listen) = args.listen {
                config.listen = listen;
            }
            if let Some(dir) = args.plugins_dir {
                config.plugins_dir = dir;
            }
            if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
                config.tls_cert = cert;
                config.tls_key = key;
            }
            if let Some(token) = args.admin_token {
                config.admin_token = token;
            }
            if let Some(reuse) = args.instance_reuse {
                config.defaults.limits.instance_reuse = Some(reuse);
            }
            serve(config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugins { command } => {
            match command.unwrap_or(PluginsCommand::List { json: false }) {
                PluginsCommand::List { json } => {
                    let answer = ask(&config, &AdminRequest::Plugins).await?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&answer.output)?);
                    } else {
                        print_plugins(&answer.output);
                    }
                    Ok(ExitCode::SUCCESS)
                }
                PluginsCommand::Check { file } => check(&config, &file).await,
                PluginsCommand::Push { file, bundled } => {
                    push(&config, &file.unwrap_or_default(), bundled).await
                }
            }
        }
        Command::Run { plugin, args } => Ok(report(
            ask(&config, &AdminRequest::Run { plugin, args }).await?,
        )),
        Command::Jobs { command } => match command.unwrap_or(JobsCommand::List { json: false }) {
            JobsCommand::List { json } => {
                let answer = ask(&config, &AdminRequest::Jobs).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&answer.output)?);
                } else {
                    print_jobs(&answer.output);
                }
                Ok(ExitCode::SUCCESS)
            }
            JobsCommand::Retry { id } => {
                Ok(report(ask(&config, &AdminRequest::RetryJob { id }).await?))
            }
        },
        Command::Store {
            command: StoreCommand::Copy { from, to },
        } => store_copy(&config, &from, &to).await,
        Command::Config => {
            config.store.url = berth::store::redact(&config.store.url);
            print!("{}", toml::to_string_pretty(&config)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let tls = match config.tls() {
        Some((cert, key)) => Some(berth::server::tls_acceptor(cert, key)?),
        None => None,
    };
    let listener = berth::server::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    let socket = config.admin_socket();
    let app = berth::App::start(config).await?;

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let background = app.spawn_background(format!("{scheme}://{addr}"), stopped.clone());
    let admin_listener = berth::admin::bind_socket(&socket).await.inspect_err(|e| {
        tracing::error!(error = %e, "admin socket unavailable: `berth run` and `berth plugins` will not work");
    });
    let admin = tokio::spawn({
        let app = app.clone();
        let stopped = stopped.clone();
        async move {
            if let Ok(listener) = admin_listener {
                berth::admin::serve_socket(app, listener, &socket, stopped).await;
            }
        }
    });

    let stopping = berth::server::signal();
    println!("listening on {scheme}://{addr}");
    std::io::stdout().flush()?;
    tracing::info!(%addr, plugins = app.plugins.routing().plugins.len(), "berth is serving");

    berth::server::serve(app.clone(), listener, tls, stopping, grace).await;
    let _ = stop.send(true);
    for task in background {
        let _ = task.await;
    }
    let _ = admin.await;
    drop(Arc::clone(&app));
    tracing::info!("stopped");
    Ok(())
}

/// A store named on the command line: a PostgreSQL URL or a redb file
/// (which must exist unless `create`).
async fn open_store(
    config: &Config,
    place: &str,
    create: bool,
) -> anyhow::Result<Arc<berth::store::Store>> {
    if place.starts_with("postgres://") || place.starts_with("postgresql://") {
        let mut store = config.store.clone();
        store.url = place.to_string();
        let options = store.postgres()?.expect("a URL was given");
        let shown = berth::store::redact(place);
        return berth::store::Store::connect(&options)
            .await
            .with_context(|| format!("cannot open the store at {shown}"));
    }
    let path = std::path::Path::new(place);
    if !create && !path.exists() {
        anyhow::bail!("{place}: no such redb file");
    }
    berth::store::Store::open(path)
        .with_context(|| format!("cannot open {place} (is a Berth serving on it? stop it first)"))
}

/// `berth store copy`: into an empty store, then both compared.
async fn store_copy(config: &Config, from: &str, to: &str) -> anyhow::Result<ExitCode> {
    use berth::store::Table;
    let source = open_store(config, from, false).await?;
    let target = open_store(config, to, true).await?;
    for table in Table::ALL {
        let there = target.dump(table).await?.len();
        if there > 0 {
            anyhow::bail!(
                "{} already holds {there} {} entries: copy into an empty store",
                berth::store::redact(to),
                table.name()
            );
        }
    }
    let mut same = true;
    println!(
        "{:<5} {:<40} {:>8}  SHA-256",
        "TABLE", "NAMESPACE", "ENTRIES"
    );
    for table in Table::ALL {
        target.load(table, source.dump(table).await?).await?;
        let (before, after) = (source.census(table).await?, target.census(table).await?);
        for c in &before {
            println!(
                "{:<5} {:<40} {:>8}  {}",
                c.table, c.namespace, c.count, c.checksum
            );
        }
        if before != after {
            same = false;
            eprintln!("{} differs after the copy: {after:?}", table.name());
        }
    }
    if same {
        println!("copied: both stores hold the same entries");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("error: the stores differ after the copy");
        Ok(ExitCode::FAILURE)
    }
}

/// Print an admin answer's text (stdout if ok, stderr if not) and give
/// the exit code.
fn report(answer: AdminResponse) -> ExitCode {
    let text = match &answer.output {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if answer.ok {
        println!("{}", text.trim_end());
        ExitCode::SUCCESS
    } else {
        eprintln!("{}", text.trim_end());
        ExitCode::FAILURE
    }
}

async fn ask(config: &Config, request: &AdminRequest) -> anyhow::Result<AdminResponse> {
    berth::admin::request(&config.admin_socket(), request).await
}

fn print_plugins(view: &serde_json::Value) {
    let empty = Vec::new();
    let plugins = view["plugins"].as_array().unwrap_or(&empty);
    if plugins.is_empty() {
        println!(
            "no plugins mounted from {}",
            view["plugins_dir"].as_str().unwrap_or("?")
        );
    }
    for p in plugins {
        let list = |v: &serde_json::Value| {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default()
        };
        let instances = match p["limits"]["instance_reuse"].as_u64() {
            Some(n) if n > 1 => format!("reused, up to {n} calls each"),
            _ => "fresh per call".to_string(),
        };
        println!(
            "{} {} ({})\n  {}\n  asked:   {}\n  granted: {}\n  instances: {instances}",
            p["name"].as_str().unwrap_or("?"),
            p["version"].as_str().unwrap_or("?"),
            p["file"].as_str().unwrap_or("?"),
            p["description"].as_str().unwrap_or(""),
            list(&p["capabilities"]["asked"]),
            list(&p["capabilities"]["granted"]),
        );
        for r in p["routes"].as_array().unwrap_or(&empty) {
            let fallback = match r["fallback"].as_str() {
                Some(prefix) => format!(" (fallback of {prefix})"),
                None => String::new(),
            };
            println!(
                "  {:<7} {:<40} {}{fallback}",
                r["method"].as_str().unwrap_or("?"),
                r["path"].as_str().unwrap_or("?"),
                r["id"].as_str().unwrap_or("?")
            );
        }
    }
    for f in view["files"].as_array().unwrap_or(&empty) {
        if let Some(reason) = f["last_refusal"]["reason"].as_str() {
            println!("refused {}: {reason}", f["file"].as_str().unwrap_or("?"));
        }
    }
    let replicas = view["replicas"].as_array().unwrap_or(&empty);
    for r in replicas {
        let me = if r["id"] == view["replica"] {
            " (this one)"
        } else {
            ""
        };
        let serving: Vec<String> = r["plugins"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(name, p)| format!("{name} {}", p["version"].as_str().unwrap_or("?")))
            .collect();
        println!(
            "replica {} at {}{me}, Berth {}: {}",
            r["id"].as_str().unwrap_or("?"),
            r["address"].as_str().unwrap_or("?"),
            r["version"].as_str().unwrap_or("?"),
            serving.join(", ")
        );
    }
}

/// `berth plugins push`: check the file as `plugins check` does, then put
/// it into the fleet's set in the store (every replica mounts it), or, on
/// the embedded store, into this Berth's plugins folder.
async fn push(config: &Config, file: &std::path::Path, bundled: bool) -> anyhow::Result<ExitCode> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    if bundled {
        files.extend(
            berth::BUNDLED
                .iter()
                .map(|(name, bytes)| (name.to_string(), bytes.to_vec())),
        );
    } else {
        if check(config, file).await? != ExitCode::SUCCESS {
            return Ok(ExitCode::FAILURE);
        }
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".wasm") && !n.starts_with('.'))
            .ok_or_else(|| anyhow::anyhow!("{}: a plugin file is NAME.wasm", file.display()))?;
        files.push((name, berth::runtime::read_wasm(file)?));
    }
    let Some(options) = config.store.postgres()? else {
        let dir = config.plugins_dir();
        for (name, wasm) in &files {
            berth::private::write(&dir.join(name), wasm)
                .with_context(|| format!("cannot write {}", dir.join(name).display()))?;
            println!(
                "{name}: written into {} (the store is this Berth's own)",
                dir.display()
            );
        }
        return Ok(ExitCode::SUCCESS);
    };
    let shown = berth::store::redact(&options.url);
    let store = berth::store::Store::connect(&options)
        .await
        .with_context(|| format!("cannot open the store at {shown}"))?;
    for (name, wasm) in &files {
        use sha2::Digest;
        let sha = hex::encode(sha2::Sha256::digest(wasm));
        store
            .put_plugin_file(name, Some((&sha, wasm)))
            .await
            .with_context(|| format!("cannot put {name} into the store at {shown}"))?;
        println!(
            "{name}: pushed to the fleet at {shown} (sha256 {sha}); every replica mounts it within 2 s"
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_jobs(view: &serde_json::Value) {
    let empty = serde_json::Map::new();
    let counts = view["counts"].as_object().unwrap_or(&empty);
    if counts.is_empty() {
        println!("no jobs");
    }
    for (plugin, c) in counts {
        println!(
            "{plugin}: {} queued, {} running, {} dead",
            c["queued"], c["running"], c["dead"]
        );
    }
    for job in view["dead"].as_array().into_iter().flatten() {
        println!(
            "dead job {} ({} {}, {} attempts): {}",
            job["id"],
            job["plugin"].as_str().unwrap_or("?"),
            job["kind"].as_str().unwrap_or("?"),
            job["attempts"],
            job["last_error"].as_str().unwrap_or("")
        );
    }
}

async fn check(config: &Config, file: &std::path::Path) -> anyhow::Result<ExitCode> {
    let wasm = berth::runtime::read_wasm(file)?;
    let runtime = Arc::new(berth::runtime::Runtime::new(None)?);
    let prepared = {
        let runtime = runtime.clone();
        tokio::task::spawn_blocking(move || runtime.prepare(&wasm)).await?
    };
    let prepared = match prepared {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{}: refused: cannot load: {e:#}", file.display());
            return Ok(ExitCode::FAILURE);
        }
    };
    let manifest = if prepared.pre.is_http() {
        // A wasi:http component is named by its file, as when mounted.
        let name = file.file_stem().unwrap_or_default().to_string_lossy();
        berth::plugins::http_manifest(&name, &prepared, config)
    } else {
        let dir = tempdir_for_check()?;
        let db = berth::store::Store::open(&dir.join("check.redb"))?;
        let services = berth::caps::Services::new(config, db, runtime.lanes())?;
        let env = Arc::new(berth::caps::PluginEnv::describing(&services, "check"));
        let described = runtime
            .describe(&prepared.pre, env, &config.limits(""))
            .await;
        let _ = std::fs::remove_dir_all(&dir);
        match described {
            Ok(m) => m,
            Err(e) => {
                eprintln!("{}: refused: describe failed: {e}", file.display());
                return Ok(ExitCode::FAILURE);
            }
        }
    };
    if let Err(reason) = berth::plugins::check_manifest(&manifest) {
        eprintln!("{}: refused: {reason}", file.display());
        return Ok(ExitCode::FAILURE);
    }
    let granted: Vec<String> = config
        .grants(&manifest.name)
        .into_iter()
        .filter(|c| manifest.capabilities.iter().any(|a| a == c.name()))
        .map(|c| c.name().to_string())
        .collect();
    println!("{}: ok", file.display());
    println!("  name:    {} {}", manifest.name, manifest.version);
    println!("  about:   {}", manifest.description);
    println!("  sha256:  {}", prepared.hash);
    println!("  asked:   {}", manifest.capabilities.join(", "));
    println!("  granted: {} (by this config)", granted.join(", "));
    for r in &manifest.routes {
        println!("  {:<7} {:<40} {}", r.method, r.path, r.id);
    }
    Ok(ExitCode::SUCCESS)
}

fn tempdir_for_check() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("berth-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}
