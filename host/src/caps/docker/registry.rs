//! Every endpoint by name: the operator's and those plugins registered
//! (checked against `[docker] allow`), and the engines built for them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

use std::path::PathBuf;

use super::followers::{FOLLOW_NS, FollowRecord};
use super::transport::{Address, Engine, Spec, Tls};
use crate::bindings::docker::{DockerError, TlsFiles};
use crate::config::DockerConfig;
use crate::store::Store;

/// Meta-table namespace of plugin-registered endpoints.
pub(super) const META_NS: &str = "docker-endpoints";

/// Every endpoint, the engines built for them, and the proxy's stream cap.
pub struct Docker {
    pub(super) config: DockerConfig,
    /// The operator's endpoints, by name (`local` always among them).
    pub(super) named: BTreeMap<String, Spec>,
    pub(super) db: Arc<Store>,
    pub(super) engines: Mutex<HashMap<(String, String), Arc<Engine>>>,
    pub(super) streams: Arc<Semaphore>,
    /// Each plugin's share of the streams.
    pub(super) plugin_streams: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Engine event followers by (plugin, endpoint, sink key).
    pub(super) followers: Mutex<HashMap<(String, String, String), tokio::task::AbortHandle>>,
    /// This Berth as the holder of followers' leases in a fleet (random).
    pub(super) holder: String,
}

impl Docker {
    /// Endpoints from `config`; `local` defaults to `DOCKER_HOST` or the
    /// default socket.
    pub fn new(config: &DockerConfig, db: Arc<Store>) -> anyhow::Result<Docker> {
        let mut named = BTreeMap::new();
        let local = if !config.local.is_empty() {
            config.local.clone()
        } else {
            std::env::var("DOCKER_HOST")
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string())
        };
        Address::parse(&local).map_err(|e| anyhow::anyhow!("[docker] local: {e}"))?;
        named.insert(
            "local".to_string(),
            Spec {
                address: local,
                tls: None,
                headers: Vec::new(),
            },
        );
        for (name, endpoint) in &config.endpoints {
            Address::parse(&endpoint.address)
                .map_err(|e| anyhow::anyhow!("[docker.endpoints.{name}] address: {e}"))?;
            let read = |p: &PathBuf| {
                if p.as_os_str().is_empty() {
                    return Ok(String::new());
                }
                std::fs::read_to_string(p).map_err(|e| {
                    anyhow::anyhow!("[docker.endpoints.{name}] cannot read {}: {e}", p.display())
                })
            };
            let tls = if endpoint.tls_ca.as_os_str().is_empty() {
                None
            } else {
                Some(Tls {
                    ca: read(&endpoint.tls_ca)?,
                    cert: read(&endpoint.tls_cert)?,
                    key: read(&endpoint.tls_key)?,
                })
            };
            named.insert(
                name.clone(),
                Spec {
                    address: endpoint.address.clone(),
                    tls,
                    headers: Vec::new(),
                },
            );
        }
        Ok(Docker {
            config: config.clone(),
            named,
            db,
            engines: Mutex::default(),
            streams: Arc::new(Semaphore::new(config.max_proxy_streams as usize)),
            plugin_streams: Mutex::default(),
            followers: Mutex::default(),
            holder: format!("{:016x}", rand::random::<u64>()),
        })
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.timeout_ms)
    }

    /// The engine `plugin` reaches as `name`.
    pub async fn engine(&self, plugin: &str, name: &str) -> Result<Arc<Engine>, DockerError> {
        let (owner, spec) = if let Some(spec) = self.named.get(name) {
            let open = self
                .config
                .endpoints
                .get(name)
                .is_none_or(|e| e.plugins.is_empty() || e.plugins.iter().any(|p| p == plugin));
            if !open {
                return Err(DockerError::Denied(format!(
                    "endpoint `{name}` is not open to plugin `{plugin}` ([docker.endpoints.{name}] plugins)"
                )));
            }
            (String::new(), spec.clone())
        } else {
            let key = (plugin.to_string(), name.to_string());
            if let Some(engine) = self.cached(&key) {
                return Ok(engine);
            }
            let stored = self
                .db
                .meta_get(&format!("{META_NS}:{plugin}"), name)
                .await
                .map_err(|e| DockerError::Unreachable(format!("storage: {e}")))?
                .ok_or_else(|| DockerError::UnknownEndpoint(format!("no endpoint `{name}`")))?;
            let spec: Spec = serde_json::from_slice(&stored)
                .map_err(|e| DockerError::Invalid(format!("stored endpoint `{name}`: {e}")))?;
            (plugin.to_string(), spec)
        };
        let key = (owner, name.to_string());
        if let Some(engine) = self.cached(&key) {
            return Ok(engine);
        }
        let engine = Arc::new(Engine::new(spec, self.timeout()).map_err(DockerError::Invalid)?);
        self.engines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, engine.clone());
        Ok(engine)
    }

    pub(super) fn cached(&self, key: &(String, String)) -> Option<Arc<Engine>> {
        self.engines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// Whether the operator lets plugins register `address`.
    pub(super) fn allowed(&self, address: &str) -> bool {
        self.config.allow.iter().any(|p| glob(p, address))
    }

    pub(super) async fn register(
        &self,
        plugin: &str,
        name: &str,
        address: &str,
        tls: Option<TlsFiles>,
    ) -> Result<(), DockerError> {
        Address::parse(address).map_err(DockerError::Invalid)?;
        if !self.allowed(address) {
            return Err(DockerError::Denied(format!(
                "address `{address}` is not in the operator's allow-list ([docker] allow)"
            )));
        }
        let spec = Spec {
            address: address.to_string(),
            tls: tls.map(|t| Tls {
                ca: t.ca,
                cert: t.cert,
                key: t.key,
            }),
            headers: Vec::new(),
        };
        self.keep(plugin, name, spec).await
    }

    /// Register a URL endpoint (the caller checked the URL against
    /// `http-out`'s allow-list).
    pub(super) async fn register_url(
        &self,
        plugin: &str,
        name: &str,
        url: &str,
        headers: Vec<(String, String)>,
    ) -> Result<(), DockerError> {
        Address::parse_url(url).map_err(DockerError::Invalid)?;
        for (header, value) in &headers {
            let name = http::HeaderName::try_from(header.as_str());
            let valid = matches!(&name, Ok(n) if !crate::web::reserved(n) && n != http::header::HOST)
                && http::HeaderValue::try_from(value.as_str()).is_ok();
            if !valid {
                return Err(DockerError::Invalid(format!(
                    "header `{header}` is not one a URL endpoint may set"
                )));
            }
        }
        let spec = Spec {
            address: url.to_string(),
            tls: None,
            headers,
        };
        self.keep(plugin, name, spec).await
    }

    /// Store `plugin`'s endpoint `name` (replacing any), checked first.
    async fn keep(&self, plugin: &str, name: &str, spec: Spec) -> Result<(), DockerError> {
        let valid_name = !name.is_empty()
            && name.len() <= 128
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid_name {
            return Err(DockerError::Invalid(format!(
                "endpoint name `{name}`: use 1 to 128 letters, digits, `-`, `_` or `.`"
            )));
        }
        if self.named.contains_key(name) {
            return Err(DockerError::Invalid(format!(
                "`{name}` is one of the operator's endpoints"
            )));
        }
        let ns = format!("{META_NS}:{plugin}");
        let storage =
            |e: crate::store::StoreError| DockerError::Unreachable(format!("storage: {e}"));
        let value = serde_json::to_vec(&spec).expect("a spec serialises");
        // Registering what is already there (as `beacons` does before each
        // streamed call) writes nothing and keeps the engine's connections.
        if self
            .db
            .meta_get(&ns, name)
            .await
            .map_err(storage)?
            .as_deref()
            == Some(&value[..])
        {
            return Ok(());
        }
        // Refuse bad TLS material now rather than on first use.
        Engine::new(spec, self.timeout()).map_err(DockerError::Invalid)?;
        self.db.meta_set(&ns, name, value).await.map_err(storage)?;
        self.forget(plugin, name);
        Ok(())
    }

    pub(super) async fn unregister(&self, plugin: &str, name: &str) -> Result<bool, DockerError> {
        let ns = format!("{META_NS}:{plugin}");
        let storage =
            |e: crate::store::StoreError| DockerError::Unreachable(format!("storage: {e}"));
        let existed = self
            .db
            .meta_get(&ns, name)
            .await
            .map_err(storage)?
            .is_some();
        if existed {
            self.db.meta_delete(&ns, name).await.map_err(storage)?;
        }
        self.stop_following(plugin, Some(name));
        let follows = format!("{FOLLOW_NS}:{plugin}");
        for (key, value) in self.db.meta_list(&follows).await.map_err(storage)? {
            let on_it =
                serde_json::from_slice::<FollowRecord>(&value).is_ok_and(|r| r.endpoint == name);
            if on_it {
                self.db.meta_delete(&follows, &key).await.map_err(storage)?;
            }
        }
        self.forget(plugin, name);
        Ok(existed)
    }

    pub(super) fn forget(&self, plugin: &str, name: &str) {
        self.engines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(plugin.to_string(), name.to_string()));
    }
}

/// `*` matches any run of characters; everything else literally.
pub(super) fn glob(pattern: &str, text: &str) -> bool {
    let Some((head, rest)) = pattern.split_once('*') else {
        return pattern == text;
    };
    let Some(mut text) = text.strip_prefix(head) else {
        return false;
    };
    let mut parts = rest.split('*').peekable();
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            return text.ends_with(part);
        }
        match text.find(part) {
            Some(i) => text = &text[i + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_globs() {
        assert!(glob("tcp://127.0.0.1:*", "tcp://127.0.0.1:2376"));
        assert!(!glob("tcp://127.0.0.1:*", "tcp://127.0.0.2:2376"));
        assert!(glob("tcp://10.*.*.*:2376", "tcp://10.1.2.3:2376"));
        assert!(!glob("tcp://10.*:2376", "tcp://10.1.2.3:2377"));
        assert!(glob(
            "unix:///var/run/docker.sock",
            "unix:///var/run/docker.sock"
        ));
        assert!(!glob(
            "unix:///var/run/docker.sock",
            "unix:///var/run/docker.sock2"
        ));
        assert!(glob("*", "tcp://anything:1"));
    }
}
