//! The plugins folder: discovery, loading, checking, atomic swap, watching.
//!
//! Each `.wasm` file is compiled off the request path, described, checked
//! (WIT version, manifest, duplicate name, route conflicts with other
//! plugins), then swapped in by replacing the whole routing table at once.
//! Requests hold an `Arc` of the plugin version they started on, so
//! in-flight work finishes on the old version. A file that fails any step
//! is refused with a log line naming the file and the reason, and the
//! previous version (if any) keeps serving. A removed file unmounts its
//! plugin; its data stays in the store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::Semaphore;

use crate::bindings::Manifest;
use crate::capability::Capability;
use crate::caps::events::Events;
use crate::caps::{PluginEnv, Services};
use crate::config::{Config, Limits};
use crate::metrics::{Metrics, PluginMetrics};
use crate::openapi;
use crate::router::{self, Pattern};
use crate::runtime::{Linked, Prepared, Runtime};

/// A file is loaded once it has not been modified for this long, so a
/// plugin being copied in is not read half-written.
const SETTLE: Duration = Duration::from_millis(50);

/// One mounted plugin version.
pub struct Mounted {
    pub manifest: Manifest,
    pub file: PathBuf,
    pub hash: String,
    pub pre: Linked,
    pub env: Arc<PluginEnv>,
    pub limits: Limits,
    pub permits: Arc<Semaphore>,
    pub metrics: Arc<PluginMetrics>,
    pub loaded_at: SystemTime,
}

/// What requests route through: replaced whole on every change.
#[derive(Default)]
pub struct Routing {
    pub plugins: BTreeMap<String, Arc<Mounted>>,
    pub table: router::Table<Mounted>,
}

/// Why a file was refused, and when.
#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    pub reason: String,
    #[serde(with = "unix_secs")]
    pub at: SystemTime,
}

mod unix_secs {
    pub fn serialize<S: serde::Serializer>(
        t: &std::time::SystemTime,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        )
    }
}

/// (length, modification time): how a changed file is noticed.
type Signature = (u64, SystemTime);

#[derive(Default)]
struct FileState {
    /// Signature of the contents last loaded (or refused).
    seen: Option<Signature>,
    last_refusal: Option<Refusal>,
}

/// The plugins folder and what is mounted from it.
pub struct Plugins {
    runtime: Arc<Runtime>,
    config: Arc<Config>,
    services: Services,
    metrics: Arc<Metrics>,
    dir: PathBuf,
    routing: RwLock<Arc<Routing>>,
    files: Mutex<BTreeMap<PathBuf, FileState>>,
    /// Serialises loads and swaps; requests never take it.
    swap: tokio::sync::Mutex<()>,
}

impl Plugins {
    pub fn new(
        runtime: Arc<Runtime>,
        config: Arc<Config>,
        services: Services,
        metrics: Arc<Metrics>,
    ) -> Plugins {
        let dir = config.plugins_dir();
        Plugins {
            runtime,
            config,
            services,
            metrics,
            dir,
            routing: RwLock::new(Arc::default()),
            files: Mutex::default(),
            swap: tokio::sync::Mutex::new(()),
        }
    }

    /// The host's event channels.
    pub fn events(&self) -> &Arc<Events> {
        &self.services.events
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The current routing table.
    pub fn routing(&self) -> Arc<Routing> {
        self.routing
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn files(&self) -> std::sync::MutexGuard<'_, BTreeMap<PathBuf, FileState>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Look at the folder once: load new or changed files, unmount removed
    /// ones. With `settle`, files modified in the last moment wait for the
    /// next scan.
    pub async fn scan(&self, settle: bool) {
        let listing = match list_wasm(&self.dir) {
            Ok(listing) => listing,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read the plugins folder");
                return;
            }
        };
        let now = SystemTime::now();
        let mut to_load = Vec::new();
        {
            let files = self.files();
            for (path, sig) in &listing {
                let known = files.get(path).and_then(|f| f.seen);
                let fresh = now
                    .duration_since(sig.1)
                    .map(|age| age < SETTLE)
                    .unwrap_or(false);
                if known != Some(*sig) && !(settle && fresh) {
                    to_load.push((path.clone(), *sig));
                }
            }
        }
        let removed: Vec<PathBuf> = {
            let files = self.files();
            files
                .keys()
                .filter(|p| !listing.iter().any(|(l, _)| l == *p))
                .cloned()
                .collect()
        };
        for path in removed {
            self.unmount_file(&path).await;
        }
        for (path, sig) in to_load {
            self.files().entry(path.clone()).or_default().seen = Some(sig);
            if let Err(reason) = self.load(&path).await {
                tracing::warn!(file = %path.display(), "refused plugin file: {reason}");
                self.files().entry(path).or_default().last_refusal = Some(Refusal {
                    reason,
                    at: SystemTime::now(),
                });
            }
        }
    }

    /// Watch the folder until `shutdown` resolves.
    pub async fn watch(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let interval = Duration::from_millis(self.config.watch_interval_ms.max(10));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => self.scan(true).await,
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn unmount_file(&self, path: &Path) {
        let _swap = self.swap.lock().await;
        self.files().remove(path);
        let current = self.routing();
        let Some(name) = current
            .plugins
            .values()
            .find(|m| m.file == path)
            .map(|m| m.manifest.name.clone())
        else {
            return;
        };
        let mut plugins = current.plugins.clone();
        plugins.remove(&name);
        self.install(plugins);
        self.services.docker.stop_following(&name, None);
        tracing::info!(plugin = %name, file = %path.display(), "plugin file removed: routes unmounted (data kept)");
    }

    /// Load one file and mount it, or say why not.
    async fn load(&self, path: &Path) -> Result<(), String> {
        let wasm = tokio::fs::read(path)
            .await
            .map_err(|e| format!("cannot read the file: {e}"))?;
        let runtime = self.runtime.clone();
        let prepared = tokio::task::spawn_blocking(move || runtime.prepare(&wasm))
            .await
            .map_err(|e| format!("compilation panicked: {e}"))?
            .map_err(|e| format!("cannot load: {e:#}"))?;
        {
            let current = self.routing();
            if current
                .plugins
                .values()
                .any(|m| m.file == path && m.hash == prepared.hash)
            {
                return Ok(()); // Touched but unchanged.
            }
        }

        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        let stem = stem.unwrap_or_default();
        let manifest = if prepared.pre.is_http() {
            http_manifest(&stem, &prepared, &self.config)
        } else {
            let describe_env = Arc::new(PluginEnv::describing(&self.services, &stem));
            self.runtime
                .describe(&prepared.pre, describe_env, &self.config.limits(""))
                .await
                .map_err(|e| format!("describe failed: {e}"))?
        };
        let routes = check_manifest(&manifest)?;

        let name = manifest.name.clone();
        let limits = self.config.limits(&name);
        let mounted = Arc::new(Mounted {
            env: Arc::new(PluginEnv::new(&self.services, &manifest, &self.config)),
            permits: Arc::new(Semaphore::new(limits.max_concurrent as usize)),
            metrics: self.metrics.plugin(&name),
            limits,
            file: path.to_path_buf(),
            hash: prepared.hash.clone(),
            pre: prepared.pre,
            loaded_at: SystemTime::now(),
            manifest,
        });

        let _swap = self.swap.lock().await;
        let current = self.routing();
        let mut plugins = current.plugins.clone();
        if let Some(other) = plugins.get(&name)
            && other.file != path
        {
            return Err(format!(
                "plugin name `{name}` is already mounted from {}",
                other.file.display()
            ));
        }
        // The new version replaces whatever this file held before.
        plugins.retain(|_, m| m.file != path);
        for other in plugins.values() {
            for (method, pattern, id) in &routes {
                for theirs in &other.manifest.routes {
                    let Ok(their_pattern) = Pattern::parse(&theirs.path) else {
                        continue;
                    };
                    if router::conflicts(method, pattern, &theirs.method, &their_pattern) {
                        return Err(format!(
                            "route {method} {} ({id}) of plugin `{name}` conflicts with route {} {} ({}) \
                             of plugin `{}` from {}",
                            pattern.as_str(),
                            theirs.method,
                            theirs.path,
                            theirs.id,
                            other.manifest.name,
                            other.file.display()
                        ));
                    }
                }
            }
        }
        let missing: Vec<&str> = mounted
            .manifest
            .capabilities
            .iter()
            .filter(|c| {
                c.parse::<Capability>()
                    .map(|c| !mounted.env.granted.contains(c))
                    .unwrap_or(true)
            })
            .map(String::as_str)
            .collect();
        tracing::info!(
            plugin = %name,
            version = %mounted.manifest.version,
            file = %path.display(),
            routes = mounted.manifest.routes.len(),
            granted = ?mounted.env.granted.names(),
            compile_cache = if prepared.cached { "hit" } else { "miss" },
            not_granted = ?missing,
            "plugin mounted"
        );
        let env = mounted.env.clone();
        plugins.insert(name, mounted);
        self.install(plugins);
        self.services.docker.restore_followers(&env).await;
        if let Some(state) = self.files().get_mut(path) {
            state.last_refusal = None;
        }
        Ok(())
    }

    /// Build the routing table for `plugins` and swap it in.
    fn install(&self, plugins: BTreeMap<String, Arc<Mounted>>) {
        let mut routes = Vec::new();
        for mounted in plugins.values() {
            for r in &mounted.manifest.routes {
                if let Ok(pattern) = Pattern::parse(&r.path) {
                    routes.push(router::Route {
                        method: r.method.clone(),
                        pattern,
                        id: r.id.clone(),
                        target: mounted.clone(),
                    });
                }
            }
        }
        let routing = Arc::new(Routing {
            plugins,
            table: router::Table::new(routes),
        });
        *self.routing.write().unwrap_or_else(|p| p.into_inner()) = routing;
    }

    /// What this Berth serves: plugin name to version and sha256.
    pub fn serving(&self) -> serde_json::Value {
        let routing = self.routing();
        routing
            .plugins
            .values()
            .map(|m| {
                (
                    m.manifest.name.clone(),
                    serde_json::json!({ "version": m.manifest.version, "sha256": m.hash }),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }

    /// The admin view: every mounted plugin and every file's status.
    pub fn status(&self) -> serde_json::Value {
        let routing = self.routing();
        let plugins: Vec<serde_json::Value> = routing
            .plugins
            .values()
            .map(|m| {
                serde_json::json!({
                    "name": m.manifest.name,
                    "world": if m.pre.is_http() { "wasi:http/proxy" } else { "berth:plugin" },
                    "version": m.manifest.version,
                    "description": m.manifest.description,
                    "file": m.file.display().to_string(),
                    "sha256": m.hash,
                    "loaded_at": m.loaded_at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                    "routes": m.manifest.routes.iter().map(|r| serde_json::json!({
                        "id": r.id, "method": r.method, "path": r.path,
                        "fallback": fallback_of(r),
                    })).collect::<Vec<_>>(),
                    "capabilities": {
                        "asked": m.manifest.capabilities,
                        "granted": m.env.granted.names(),
                    },
                    "limits": m.limits,
                    "idle_instances": m.pre.idle_instances(),
                })
            })
            .collect();
        let files: Vec<serde_json::Value> = self
            .files()
            .iter()
            .map(|(path, state)| {
                let mounted = routing.plugins.values().find(|m| &m.file == path);
                serde_json::json!({
                    "file": path.display().to_string(),
                    "status": if mounted.is_some() { "mounted" } else { "refused" },
                    "plugin": mounted.map(|m| m.manifest.name.clone()),
                    "last_refusal": state.last_refusal,
                })
            })
            .collect();
        serde_json::json!({ "plugins_dir": self.dir.display().to_string(), "plugins": plugins, "files": files })
    }

    /// The OpenAPI document: every plugin's `paths` merged, its component
    /// schemas renamed `PLUGIN.NAME`, and the answers the host itself may
    /// give on any route documented beside the plugin's.
    pub fn openapi(&self) -> serde_json::Value {
        let routing = self.routing();
        let mut paths = serde_json::Map::new();
        let mut schemas = serde_json::Map::new();
        schemas.insert("_berth.HostError".into(), openapi::host_error_schema());
        for m in routing.plugins.values() {
            let Some(fragment) = &m.manifest.openapi else {
                continue;
            };
            let Some((plugin_paths, plugin_schemas)) =
                openapi::fragment(&m.manifest.name, fragment)
            else {
                continue;
            };
            schemas.extend(plugin_schemas);
            for (path, ops) in plugin_paths {
                match (paths.get_mut(&path), ops) {
                    (Some(serde_json::Value::Object(existing)), serde_json::Value::Object(ops)) => {
                        existing.extend(ops);
                    }
                    (_, ops) => {
                        paths.insert(path, ops);
                    }
                }
            }
        }
        for op in paths
            .values_mut()
            .filter_map(|p| p.as_object_mut())
            .flat_map(|p| p.values_mut())
        {
            openapi::add_host_answers(op);
        }
        // Who answers unknown paths under each prefix, most specific first.
        let mut fallbacks: Vec<(String, serde_json::Value)> = routing
            .plugins
            .values()
            .flat_map(|m| {
                m.manifest.routes.iter().filter_map(|r| {
                    let prefix = fallback_of(r)?;
                    Some((
                        prefix.clone(),
                        serde_json::json!({ "prefix": prefix, "plugin": m.manifest.name, "route": r.id }),
                    ))
                })
            })
            .collect();
        fallbacks.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        serde_json::json!({
            "openapi": "3.0.3",
            "x-berth-fallbacks": fallbacks.into_iter().map(|(_, f)| f).collect::<Vec<_>>(),
            "info": { "title": "Berth", "version": env!("CARGO_PKG_VERSION"),
                      "description": "Routes of every mounted plugin" },
            "paths": paths,
            "components": { "schemas": schemas },
        })
    }
}

/// The manifest of a wasi:http component, which has no `describe`: named
/// by its file, it takes every request under its route (`/NAME`, or
/// `[plugins.NAME] route`), and asks for `http-out` if it imports the
/// outgoing handler.
pub fn http_manifest(name: &str, prepared: &Prepared, config: &Config) -> Manifest {
    let base = config.route(name);
    let base = base.trim_end_matches('/');
    Manifest {
        name: name.to_string(),
        version: format!("sha256:{}", &prepared.hash[..12]),
        description: "a wasi:http/incoming-handler component".to_string(),
        routes: vec![crate::bindings::types::Route {
            id: HTTP_ROUTE.to_string(),
            method: "*".to_string(),
            path: format!("{base}/{{path...}}"),
        }],
        capabilities: match prepared.pre.sends_requests() {
            true => vec![Capability::HttpOut.name().to_string()],
            false => Vec::new(),
        },
        openapi: None,
    }
}

/// The id of a wasi:http component's one route.
pub const HTTP_ROUTE: &str = "http";

/// The prefix route `r` is the fallback of: a `*` route on literal
/// segments then `{rest...}`.
fn fallback_of(r: &crate::bindings::types::Route) -> Option<String> {
    if r.method != "*" {
        return None;
    }
    router::Pattern::parse(&r.path).ok()?.fallback_prefix()
}

/// The `.wasm` files in `dir` with their signatures.
fn list_wasm(dir: &Path) -> std::io::Result<Vec<(PathBuf, Signature)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        // Dot-files are skipped so `cp x .x.wasm && mv .x.wasm x.wasm` works.
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !hidden && path.extension().is_some_and(|e| e == "wasm") {
            let meta = entry.metadata()?;
            if meta.is_file() {
                out.push((path, (meta.len(), meta.modified()?)));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Check a manifest; return its routes parsed.
pub fn check_manifest(m: &Manifest) -> Result<Vec<(String, Pattern, String)>, String> {
    let name_ok = !m.name.is_empty()
        && m.name.len() <= 64
        && m.name.starts_with(|c: char| c.is_ascii_lowercase())
        && m.name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !name_ok {
        return Err(format!(
            "plugin name {:?} is invalid: use 1 to 64 lower-case letters, digits and `-`, starting with a letter",
            m.name
        ));
    }
    if m.version.trim().is_empty() {
        return Err(format!("plugin `{}` has an empty version", m.name));
    }
    if let Some(unknown) = m
        .capabilities
        .iter()
        .find(|c| c.parse::<Capability>().is_err())
    {
        let known: Vec<&str> = Capability::ALL.iter().map(|c| c.name()).collect();
        return Err(format!(
            "plugin `{}` asks for capability {unknown:?}, which this host does not know (it knows {})",
            m.name,
            known.join(", ")
        ));
    }
    if let Some(fragment) = &m.openapi
        && !matches!(
            serde_json::from_str(fragment),
            Ok(serde_json::Value::Object(_))
        )
    {
        return Err(format!(
            "plugin `{}`: its OpenAPI fragment is not a JSON object",
            m.name
        ));
    }
    let mut routes: Vec<(String, Pattern, String)> = Vec::new();
    for r in &m.routes {
        let method_ok = r.method == "*"
            || (!r.method.is_empty() && r.method.chars().all(|c| c.is_ascii_uppercase()));
        if !method_ok {
            return Err(format!(
                "route `{}`: method {:?} must be upper-case letters or `*`",
                r.id, r.method
            ));
        }
        if r.id.is_empty() {
            return Err(format!("route {} {} has an empty id", r.method, r.path));
        }
        if routes.iter().any(|(_, _, id)| *id == r.id) {
            return Err(format!("route id `{}` is used twice", r.id));
        }
        let pattern = Pattern::parse(&r.path).map_err(|e| format!("route `{}`: {e}", r.id))?;
        if pattern.starts_with_literal("_berth") {
            return Err(format!(
                "route `{}`: paths under /_berth/ belong to the host",
                r.id
            ));
        }
        if let Some((_, _, other)) = routes
            .iter()
            .find(|(method, p, _)| router::conflicts(method, p, &r.method, &pattern))
        {
            return Err(format!(
                "routes `{other}` and `{}` take the same requests",
                r.id
            ));
        }
        routes.push((r.method.clone(), pattern, r.id.clone()));
    }
    Ok(routes)
}
