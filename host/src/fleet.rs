//! The plugin set as the fleet's: on a shared store, each replica keeps
//! its plugins folder and the store's set of plugin files in step, every
//! [`SYNC_EVERY`]. A file pushed into the store (`berth plugins push`) is
//! written into every replica's folder; a file dropped into (or removed
//! from) one replica's folder goes into (or out of) the store, and so to
//! every other. The folder's watcher then mounts it as any dropped file:
//! the same checks, the same hot swap.
//!
//! Which side moved decides: each replica remembers (in
//! `PLUGINS_DIR/.fleet-agreed`, across restarts) the sha256 both sides
//! last agreed on per file. When the store's changed since, the store's
//! wins (also when both changed: the fleet's push is the later intent);
//! when only the folder's did, it goes into the store. A file first seen
//! takes the store's copy if the store has one, except a bundled plugin
//! this binary has just updated in the folder (a rolling upgrade): that
//! one goes into the store, so the fleet serves the new binary's.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::plugins::Plugins;
use crate::store::{Store, StoreError};

/// How often a replica compares its folder with the store's set.
pub const SYNC_EVERY: Duration = Duration::from_millis(500);
/// Where a replica keeps what its folder and the store last agreed on.
const AGREED: &str = ".fleet-agreed";
/// A file modified more recently than this may still be being written.
const SETTLE: Duration = Duration::from_millis(200);

/// One replica's side of the fleet's plugin set.
pub struct FolderSync {
    db: Arc<Store>,
    plugins: Arc<Plugins>,
    /// Per file name: the sha256 both sides last agreed on (None: absent).
    agreed: HashMap<String, Option<String>>,
    /// Files whose folder copy wins when first seen (bundled plugins this
    /// binary just updated).
    ours_first: HashSet<String>,
    /// Digests of the folder's files by (size, modified), so an unchanged
    /// file is not read again.
    digests: HashMap<String, ((u64, SystemTime), String)>,
}

impl FolderSync {
    pub fn new(db: Arc<Store>, plugins: Arc<Plugins>, ours_first: HashSet<String>) -> FolderSync {
        // What was agreed before a restart, so a file removed or replaced
        // while this replica was stopped counts as the folder's move.
        let agreed = std::fs::read(plugins.dir().join(AGREED))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        FolderSync {
            db,
            plugins,
            agreed,
            ours_first,
            digests: HashMap::new(),
        }
    }

    /// Keep what was agreed beside the folder (a dot-file the watcher
    /// ignores).
    fn save_agreed(&self) {
        let path = self.plugins.dir().join(AGREED);
        let text = serde_json::to_vec(&self.agreed).unwrap_or_default();
        if let Err(e) = crate::private::write(&path, &text) {
            tracing::warn!(file = %path.display(), error = %e, "cannot keep the fleet sync's record");
        }
    }

    /// Keep the folder and the store in step until `shutdown` flips
    /// (nothing to do on the embedded store).
    pub async fn run(mut self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        if !self.db.shared() {
            return;
        }
        loop {
            match self.sync_once().await {
                // Mount what arrived now rather than at the watcher's turn.
                Ok(true) => self.plugins.scan(false).await,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot sync the plugins folder with the fleet's")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(SYNC_EVERY) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Compare once; whether the folder changed.
    pub async fn sync_once(&mut self) -> Result<bool, StoreError> {
        let dir = self.plugins.dir().to_path_buf();
        let store: HashMap<String, Option<String>> =
            self.db.plugin_files().await?.into_iter().collect();
        let here = self.folder(&dir).map_err(|e| {
            StoreError::Storage(format!(
                "cannot read the plugins folder {}: {e}",
                dir.display()
            ))
        })?;
        let names: BTreeSet<String> = store.keys().chain(here.keys()).cloned().collect();
        let before = self.agreed.clone();
        let mut changed = false;
        for name in names {
            let ours = match here.get(&name) {
                Some(None) => continue, // Settling: the next round.
                Some(Some(sha)) => Some(sha.clone()),
                None => None,
            };
            let theirs = store.get(&name).cloned().flatten();
            if theirs == ours {
                self.agreed.insert(name, ours);
                continue;
            }
            let agreed = self.agreed.get(&name);
            let first = agreed.is_none();
            let store_moved = store.contains_key(&name) && agreed != Some(&theirs);
            let folder_moved = agreed != Some(&ours);
            if store_moved && !(first && self.ours_first.contains(&name) && ours.is_some()) {
                if self.take(&dir, &name, theirs.as_deref()).await? {
                    changed = true;
                }
            } else if folder_moved {
                self.give(&dir, &name, ours).await?;
            }
        }
        if self.agreed != before {
            self.save_agreed();
        }
        Ok(changed)
    }

    /// Make the folder's `name` the store's (`sha`, or absent); whether
    /// the folder changed.
    async fn take(
        &mut self,
        dir: &Path,
        name: &str,
        sha: Option<&str>,
    ) -> Result<bool, StoreError> {
        let path = dir.join(name);
        let Some(sha) = sha else {
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::info!(file = name, "removed: the fleet's set no longer has it"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(StoreError::Storage(format!(
                        "cannot remove {}: {e}",
                        path.display()
                    )));
                }
            }
            self.agreed.insert(name.to_string(), None);
            return Ok(true);
        };
        // Changed again since the list: the next round takes it.
        let Some((stored_sha, wasm)) = self.db.plugin_file(name).await? else {
            return Ok(false);
        };
        if stored_sha != sha || hex::encode(Sha256::digest(&wasm)) != stored_sha {
            return Ok(false);
        }
        crate::private::write(&path, &wasm)
            .map_err(|e| StoreError::Storage(format!("cannot write {}: {e}", path.display())))?;
        tracing::info!(file = name, sha256 = sha, "written from the fleet's set");
        self.agreed.insert(name.to_string(), Some(sha.to_string()));
        Ok(true)
    }

    /// Put the folder's `name` (`sha`, or absent) into the store.
    async fn give(
        &mut self,
        dir: &Path,
        name: &str,
        sha: Option<String>,
    ) -> Result<(), StoreError> {
        match &sha {
            Some(sha) => {
                let path = dir.join(name);
                let wasm = std::fs::read(&path).map_err(|e| {
                    StoreError::Storage(format!("cannot read {}: {e}", path.display()))
                })?;
                if hex::encode(Sha256::digest(&wasm)) != *sha {
                    return Ok(()); // Being written: the next round.
                }
                self.db.put_plugin_file(name, Some((sha, &wasm))).await?;
                tracing::info!(file = name, sha256 = %sha, "put into the fleet's set");
            }
            None => {
                self.db.put_plugin_file(name, None).await?;
                tracing::info!(file = name, "taken out of the fleet's set");
            }
        }
        self.agreed.insert(name.to_string(), sha);
        Ok(())
    }

    /// The folder's `.wasm` files and their sha256 (None: modified a
    /// moment ago, so maybe still being written).
    fn folder(&mut self, dir: &Path) -> std::io::Result<HashMap<String, Option<String>>> {
        let mut files = HashMap::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".wasm") || name.starts_with('.') {
                continue;
            }
            let meta = entry.metadata()?;
            if !meta.is_file() {
                continue;
            }
            let sig = (meta.len(), meta.modified()?);
            // Still being written, maybe: the next round.
            if sig.1.elapsed().unwrap_or_default() < SETTLE {
                files.insert(name, None);
                continue;
            }
            let sha = match self.digests.get(&name) {
                Some((known, sha)) if *known == sig => sha.clone(),
                _ => {
                    let path: PathBuf = entry.path();
                    let sha = hex::encode(Sha256::digest(std::fs::read(&path)?));
                    self.digests.insert(name.clone(), (sig, sha.clone()));
                    sha
                }
            };
            files.insert(name, Some(sha));
        }
        Ok(files)
    }
}
