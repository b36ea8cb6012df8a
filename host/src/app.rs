//! The running host as one value: configuration, storage, plugins, jobs,
//! metrics; what the server, dispatch and the admin routes share.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use rand::RngCore;

use crate::budget::BodyBudget;
use crate::bundled::{self, BUNDLED, Synced};
use crate::caps;
use crate::config::Config;
use crate::fleet::FolderSync;
use crate::jobs::Jobs;
use crate::metrics::Metrics;
use crate::net;
use crate::plugins::Plugins;
use crate::private;
use crate::runtime::Runtime;
use crate::store;
use crate::store::Store;

/// The running host: configuration, storage, plugins, metrics.
pub struct App {
    pub config: Arc<Config>,
    pub db: Arc<Store>,
    pub plugins: Arc<Plugins>,
    pub metrics: Arc<Metrics>,
    /// What request bodies read into memory may hold at once.
    pub bodies: Arc<BodyBudget>,
    pub jobs: Arc<Jobs>,
    /// This Berth among the replicas sharing its store.
    pub replica: Arc<crate::replicas::Replica>,
    /// Whose `X-Forwarded-For` names the client (`[server] trusted_proxies`).
    pub trusted: net::TrustedProxies,
    /// Flips to true when the host starts shutting down: event streams end.
    pub closing: tokio::sync::watch::Sender<bool>,
    queued: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<store::Queued>>>,
    folder: std::sync::Mutex<Option<FolderSync>>,
    admin_token: String,
    request_prefix: u32,
    request_seq: AtomicU64,
}

impl App {
    /// Open the data directory, storage and runtime, install the bundled
    /// plugins or bring them up to date, and mount every plugin in the folder.
    pub async fn start(config: Config) -> anyhow::Result<Arc<App>> {
        let config = Arc::new(config);
        let data = &config.data_dir;
        // Owner-only even when the operator made the folder beforehand: it
        // holds the store (secrets' HMAC keys, uploaded TLS keys), the
        // admin token and the compile cache.
        let ours = private::dir(data)
            .with_context(|| format!("cannot create data directory {}", data.display()))?;
        if !ours {
            anyhow::bail!(
                "the data directory {} belongs to another user; Berth keeps its data in a \
                 folder of the user it runs as",
                data.display()
            );
        }
        let db = match config.store.postgres()? {
            Some(options) => Store::connect(&options).await.with_context(|| {
                format!(
                    "cannot open storage on {}",
                    crate::store::redact(&options.url)
                )
            })?,
            None => {
                let db_path = data.join("berth.redb");
                private_file(&db_path)?;
                Store::open(&db_path)
                    .with_context(|| format!("cannot open storage in {}", data.display()))?
            }
        };
        let admin_token = admin_token(&config)?;
        let runtime = Arc::new(Runtime::new(Some(data.join("cache")))?);
        // Bundled plugins this binary updates in the folder: in a fleet,
        // they go into the fleet's set (a rolling upgrade).
        let mut upgraded = std::collections::HashSet::new();
        if config.install_bundled {
            let dir = config.plugins_dir();
            // Not fatal: a folder the operator keeps read-only still serves
            // what it has. One that cannot be made at all stops Berth below.
            match bundled::sync(&dir, BUNDLED) {
                Ok(synced) => {
                    log_synced(&dir, &synced);
                    upgraded.extend(
                        synced
                            .iter()
                            .filter(|(_, s)| matches!(s, Synced::Updated))
                            .map(|(file, _)| file.clone()),
                    );
                }
                Err(e) => tracing::warn!(
                    dir = %dir.display(),
                    error = %e,
                    "cannot install or update the bundled plugins; serving what the folder has"
                ),
            }
        }
        // Whoever can write the plugins folder can mount code: owner-only
        // when it is Berth's; another user's (a read-only mount, say) is
        // that user's to keep.
        let plugins_dir = config.plugins_dir();
        let ours = private::dir(&plugins_dir)
            .with_context(|| format!("cannot create plugins folder {}", plugins_dir.display()))?;
        if !ours && !private::only_mine(&plugins_dir) {
            tracing::warn!(
                dir = %plugins_dir.display(),
                "the plugins folder belongs to another user: whoever can write it can mount plugins"
            );
        }
        let metrics = Arc::new(Metrics::default());
        let services = caps::Services::new(&config, db.clone(), runtime.lanes())?;
        let plugins = Arc::new(Plugins::new(
            runtime,
            config.clone(),
            services,
            metrics.clone(),
        ));
        // A fleet's recent events, for replay, before the first client.
        if let Err(e) = plugins.events().catch_up().await {
            tracing::warn!(error = %e, "cannot read the fleet's events");
        }
        // In a fleet, the folder takes the fleet's plugin set before the
        // first mount.
        let mut folder = FolderSync::new(db.clone(), plugins.clone(), upgraded);
        if db.shared()
            && let Err(e) = folder.sync_once().await
        {
            tracing::warn!(error = %e, "cannot sync the plugins folder with the fleet's");
        }
        plugins.scan(false).await;
        let (sink, queued) = tokio::sync::mpsc::unbounded_channel();
        db.set_job_sink(sink);
        let jobs = Jobs::new(db.clone(), config.jobs.clone()).await?;
        let bodies = BodyBudget::new(config.server.max_body_memory_mib << 20, metrics.clone());
        Ok(Arc::new(App {
            bodies,
            trusted: net::TrustedProxies::new(&config.server.trusted_proxies),
            config,
            db,
            plugins,
            metrics,
            jobs,
            replica: Arc::default(),
            closing: tokio::sync::watch::Sender::new(false),
            queued: std::sync::Mutex::new(Some(queued)),
            folder: std::sync::Mutex::new(Some(folder)),
            admin_token,
            request_prefix: rand::rngs::OsRng.next_u32(),
            request_seq: AtomicU64::new(0),
        }))
    }

    /// Start the background work (folder watcher, job runner, the replica's
    /// beat, registered as serving at `address`) until `shutdown` flips.
    /// Call once.
    pub fn spawn_background(
        self: &Arc<Self>,
        address: String,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let plugins = self.plugins.clone();
        let serving = move || plugins.serving();
        let mut tasks = vec![
            tokio::spawn(self.plugins.clone().watch(shutdown.clone())),
            tokio::spawn(self.plugins.events().clone().pump(shutdown.clone())),
            tokio::spawn(self.replica.clone().run(
                self.db.clone(),
                address,
                serving,
                shutdown.clone(),
            )),
        ];
        let folder = self.folder.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(folder) = folder {
            tasks.push(tokio::spawn(folder.run(shutdown.clone())));
        }
        let queued = self.queued.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(queued) = queued {
            let runner = self
                .jobs
                .clone()
                .run(self.plugins.clone(), queued, shutdown);
            tasks.push(tokio::spawn(runner));
        }
        tasks
    }

    /// The plugins view (`/_berth/plugins`, `berth plugins`): this Berth's
    /// plugins and files, which replica it is, and in a fleet every replica
    /// alive with what it serves.
    pub async fn plugins_view(&self) -> serde_json::Value {
        let mut view = self.plugins.status();
        view["replica"] = self.replica.id.clone().into();
        if self.db.shared() {
            view["replicas"] = match self.db.replicas(crate::replicas::ALIVE_FOR).await {
                Ok(replicas) => serde_json::to_value(replicas).unwrap_or_default(),
                Err(e) => serde_json::json!({ "error": e.to_string() }),
            };
        }
        view
    }

    /// A new request id: a per-process random prefix and a sequence number.
    pub fn next_request_id(&self) -> String {
        let n = self.request_seq.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}-{n:08x}", self.request_prefix)
    }

    /// Whether `token` is the admin token (constant time).
    pub fn is_admin_token(&self, token: &str) -> bool {
        caps::crypto::constant_time_eq(token.as_bytes(), self.admin_token.as_bytes())
    }
}

/// Say what became of the bundled plugins: quiet when nothing changed.
fn log_synced(dir: &std::path::Path, synced: &[(String, Synced)]) {
    let dir = dir.display();
    for (file, what) in synced {
        match what {
            Synced::Installed => tracing::info!(%dir, file, "installed the bundled plugin"),
            Synced::Updated => tracing::info!(%dir, file, "updated the bundled plugin"),
            Synced::Current => {}
            Synced::Kept => tracing::info!(
                %dir,
                file,
                "not the bundled plugin; kept (remove it to have the bundled one at the next start)"
            ),
            Synced::Removed => tracing::info!(
                %dir,
                file,
                "the bundled plugin was removed; left out (delete its line in {} to have it back)",
                bundled::RECORD
            ),
        }
    }
}

/// The configured admin token, or the one kept in DATA_DIR/admin-token
/// (created owner-only on first start).
fn admin_token(config: &Config) -> anyhow::Result<String> {
    if !config.admin_token.is_empty() {
        return Ok(config.admin_token.clone());
    }
    let path = config.data_dir.join("admin-token");
    if let Ok(token) = std::fs::read_to_string(&path) {
        let token = token.trim();
        // An emptied file is a token nobody should be able to match.
        if !token.is_empty() {
            private_file(&path)?;
            return Ok(token.to_string());
        }
    }
    let mut bytes = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = hex::encode(bytes);
    private_file(&path)?;
    std::fs::write(&path, format!("{token}\n"))
        .with_context(|| format!("cannot write {}", path.display()))?;
    tracing::info!(path = %path.display(), "generated an admin token for /_berth/plugins");
    Ok(token)
}

/// Make `path` an owner-only (0600) file, creating it empty if missing,
/// before anything secret is written to it.
fn private_file(path: &std::path::Path) -> anyhow::Result<()> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .and_then(|_| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)))
        .with_context(|| format!("cannot make {} owner-only", path.display()))
}
