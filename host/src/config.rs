//! Configuration: embedded defaults, merged with the operator's TOML file,
//! then with `BERTH_*` environment variables and flags (applied by the CLI).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::capability::Capability;

/// The defaults compiled into the binary; also the documentation of every key.
pub const DEFAULTS: &str = include_str!("../berth.default.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub plugins_dir: PathBuf,
    pub install_bundled: bool,
    pub watch_interval_ms: u64,
    pub admin_token: String,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub shutdown_grace_ms: u64,
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub jobs: JobsConfig,
    pub dokku: DokkuConfig,
    pub http_out: HttpOutConfig,
    pub docker: DockerConfig,
    pub defaults: PluginDefaults,
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginConfig>,
}

/// Connections: timeouts, caps and the proxies in front of Berth.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub header_timeout_ms: u64,
    pub body_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub max_connections: u32,
    pub max_connections_per_client: u32,
    pub max_header_kib: u32,
    pub max_http2_streams: u32,
    pub max_body_memory_mib: u64,
    pub trusted_proxies: Vec<String>,
}

impl ServerConfig {
    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }

    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
}

/// Durable storage: the embedded redb file, or a shared PostgreSQL.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub url: String,
    pub password_file: PathBuf,
    pub pool_size: u32,
    pub connect_timeout_ms: u64,
    pub tls_ca: PathBuf,
}

impl StoreConfig {
    /// How to reach PostgreSQL; none for the embedded store. The password
    /// comes from the URL, else `BERTH_STORE_PASSWORD`, else the file.
    pub fn postgres(&self) -> Result<Option<crate::store::PgOptions>, ConfigError> {
        if self.url.is_empty() {
            return Ok(None);
        }
        let password = match std::env::var("BERTH_STORE_PASSWORD") {
            Ok(p) if !p.is_empty() => Some(p),
            _ if !self.password_file.as_os_str().is_empty() => {
                let text = std::fs::read_to_string(&self.password_file).map_err(|e| {
                    ConfigError::Invalid(format!(
                        "[store] password_file {}: {e}",
                        self.password_file.display()
                    ))
                })?;
                Some(text.trim_end_matches(['\n', '\r']).to_string())
            }
            _ => None,
        };
        Ok(Some(crate::store::PgOptions {
            url: self.url.clone(),
            password,
            pool_size: self.pool_size as usize,
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            tls_ca: self.tls_ca.clone(),
        }))
    }
}

/// The Dokku daemon socket.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DokkuConfig {
    pub socket: PathBuf,
    pub timeout_ms: u64,
}

/// Outbound HTTP policy.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpOutConfig {
    pub allow: Vec<String>,
    pub allow_private: Vec<String>,
    pub timeout_ms: u64,
    pub max_response_kib: u64,
}

/// Docker engines.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DockerConfig {
    pub local: String,
    pub timeout_ms: u64,
    pub allow: Vec<String>,
    pub max_proxy_streams: u32,
    /// The same, per plugin.
    pub max_plugin_streams: u32,
    #[serde(default)]
    pub endpoints: BTreeMap<String, DockerEndpoint>,
}

/// One of the operator's named Docker endpoints.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DockerEndpoint {
    pub address: String,
    #[serde(default)]
    pub tls_ca: PathBuf,
    #[serde(default)]
    pub tls_cert: PathBuf,
    #[serde(default)]
    pub tls_key: PathBuf,
    /// Plugins that may use it; empty: every plugin granted `docker`.
    #[serde(default)]
    pub plugins: Vec<String>,
}

/// The job runner.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    pub workers: u32,
    pub max_attempts: u32,
    pub backoff_ms: u64,
    pub backoff_max_ms: u64,
}

/// Grants and limits applying to every plugin.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginDefaults {
    pub grants: Vec<String>,
    #[serde(flatten)]
    pub limits: LimitsConfig,
}

/// Limits; in `[plugins.NAME]` every key is optional.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[serde(default)]
pub struct LimitsConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_response_mib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_proxy_body_mib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_reuse: Option<u32>,
}

/// One plugin's section.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    #[serde(default)]
    pub grants: Vec<String>,
    /// For a wasi:http component: the path it is mounted under (its
    /// requests are those under it), `/NAME` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(flatten)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub settings: toml::Table,
    /// Settings whose text is read from a file when the configuration
    /// loads (templates, catalogues): key → path.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub setting_files: BTreeMap<String, PathBuf>,
    /// The text of each of `setting_files`, read when the configuration
    /// loaded (not shown by `berth config`, which shows the paths).
    #[serde(skip)]
    pub file_settings: BTreeMap<String, String>,
}

/// The largest file `setting_files` reads.
pub const MAX_SETTING_FILE_BYTES: u64 = 1 << 20;

/// Limits in force for one plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Limits {
    pub memory_bytes: u64,
    #[serde(with = "millis")]
    pub deadline: Duration,
    pub max_concurrent: u32,
    pub max_body_bytes: u64,
    pub max_response_bytes: u64,
    /// Largest request body streamed to a Docker engine (`proxy-docker`).
    pub max_proxy_body_bytes: u64,
    /// Calls one instance may serve: 1, a fresh instance per call.
    pub instance_reuse: u32,
}

mod millis {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

impl Config {
    /// The defaults alone.
    pub fn embedded() -> Config {
        Config::from_toml_str(DEFAULTS, Path::new("<embedded defaults>"))
            .expect("the embedded defaults are valid")
    }

    /// Defaults merged with the file at `path`, if any.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => Ok(Config::embedded()),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                Config::from_toml_str(&text, path)
            }
        }
    }

    /// Defaults merged with `text` (the contents of `origin`).
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let syntax = |e: toml::de::Error| ConfigError::Syntax {
            path: origin.to_path_buf(),
            message: e.to_string(),
        };
        let mut base: toml::Table = DEFAULTS.parse().map_err(syntax)?;
        let overlay: toml::Table = text.parse().map_err(syntax)?;
        merge(&mut base, overlay);
        let mut config: Config = toml::Value::Table(base).try_into().map_err(syntax)?;
        config.validate()?;
        config.read_setting_files()?;
        Ok(config)
    }

    /// Each plugin's `setting_files`, read as text.
    fn read_setting_files(&mut self) -> Result<(), ConfigError> {
        for (name, plugin) in &mut self.plugins {
            for (key, path) in &plugin.setting_files {
                let invalid = |why: String| {
                    ConfigError::Invalid(format!("[plugins.{name}.setting_files] {key}: {why}"))
                };
                if plugin.settings.contains_key(key) {
                    return Err(invalid(format!(
                        "also set in [plugins.{name}.settings]; give it in one place"
                    )));
                }
                let read = |path: &Path| -> std::io::Result<String> {
                    let size = std::fs::metadata(path)?.len();
                    if size > MAX_SETTING_FILE_BYTES {
                        return Err(std::io::Error::other(format!(
                            "{size} bytes, more than the {MAX_SETTING_FILE_BYTES} a setting may hold"
                        )));
                    }
                    std::fs::read_to_string(path)
                };
                let text = read(path)
                    .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
                plugin.file_settings.insert(key.clone(), text);
            }
        }
        Ok(())
    }

    /// Check the whole configuration again (after flags changed it).
    pub fn check(&self) -> Result<(), ConfigError> {
        self.validate()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let empty = |p: &Path| p.as_os_str().is_empty();
        let url = &self.store.url;
        let postgres = ["postgres://", "postgresql://"]
            .iter()
            .any(|scheme| url.starts_with(scheme))
            || url.contains("host=")
            || url.contains("dbname=");
        if !url.is_empty() && !postgres {
            return Err(ConfigError::Invalid(format!(
                "[store] url must be empty (the embedded redb file) or a PostgreSQL URL \
                 (postgres://...), not `{}`",
                crate::store::redact(url)
            )));
        }
        if self.store.pool_size == 0 {
            return Err(ConfigError::Invalid(
                "[store] pool_size must be above 0".to_string(),
            ));
        }
        if empty(&self.tls_cert) != empty(&self.tls_key) {
            return Err(ConfigError::Invalid(
                "tls_cert and tls_key must be given together".to_string(),
            ));
        }
        let grant_lists = std::iter::once(("defaults".to_string(), &self.defaults.grants)).chain(
            self.plugins
                .iter()
                .map(|(n, p)| (format!("plugins.{n}"), &p.grants)),
        );
        for (section, grants) in grant_lists {
            for grant in grants {
                if grant.parse::<Capability>().is_err() {
                    return Err(ConfigError::Invalid(format!(
                        "[{section}] grants unknown capability `{grant}` (known: {})",
                        Capability::ALL.map(|c| c.name()).join(", ")
                    )));
                }
            }
        }
        for (name, plugin) in &self.plugins {
            if let Some(route) = &plugin.route {
                let literal = route.starts_with('/')
                    && !route.contains(['{', '}', '?', '#'])
                    && (route == "/" || !route.ends_with('/'));
                if !literal || route.split('/').nth(1) == Some("_berth") {
                    return Err(ConfigError::Invalid(format!(
                        "[plugins.{name}] route must be a path such as \"/{name}\" (starting \
                         with `/`, no trailing `/`, no `{{`, not under /_berth), not `{route}`"
                    )));
                }
            }
        }
        let limits = std::iter::once(("defaults".to_string(), &self.defaults.limits)).chain(
            self.plugins
                .iter()
                .map(|(n, p)| (format!("plugins.{n}"), &p.limits)),
        );
        for (section, l) in limits {
            let positive = [
                ("memory_mib", l.memory_mib),
                ("deadline_ms", l.deadline_ms),
                ("max_concurrent", l.max_concurrent.map(u64::from)),
                ("max_response_mib", l.max_response_mib),
                ("instance_reuse", l.instance_reuse.map(u64::from)),
            ];
            for (key, value) in positive {
                if value == Some(0) {
                    return Err(ConfigError::Invalid(format!(
                        "[{section}] {key} must be above 0"
                    )));
                }
            }
            if l.memory_mib.is_some_and(|m| m > MAX_MEMORY_MIB) {
                return Err(ConfigError::Invalid(format!(
                    "[{section}] memory_mib is at most {MAX_MEMORY_MIB}"
                )));
            }
        }
        let server = &self.server;
        let positive = [
            ("header_timeout_ms", server.header_timeout_ms),
            ("body_timeout_ms", server.body_timeout_ms),
            ("idle_timeout_ms", server.idle_timeout_ms),
            ("max_connections", u64::from(server.max_connections)),
            (
                "max_connections_per_client",
                u64::from(server.max_connections_per_client),
            ),
            ("max_header_kib", u64::from(server.max_header_kib)),
            ("max_http2_streams", u64::from(server.max_http2_streams)),
            ("max_body_memory_mib", server.max_body_memory_mib),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid(format!(
                    "[server] {key} must be above 0"
                )));
            }
        }
        for proxy in &server.trusted_proxies {
            if crate::net::Cidr::parse(proxy).is_none() {
                return Err(ConfigError::Invalid(format!(
                    "[server] trusted_proxies: `{proxy}` is not an IP address or CIDR block \
                     (e.g. \"10.0.0.1\" or \"10.0.0.0/8\")"
                )));
            }
        }
        if self.jobs.workers == 0 || self.jobs.max_attempts == 0 {
            return Err(ConfigError::Invalid(
                "[jobs] workers and max_attempts must be above 0".to_string(),
            ));
        }
        if self.defaults.limits.memory_mib.is_none()
            || self.defaults.limits.deadline_ms.is_none()
            || self.defaults.limits.max_concurrent.is_none()
            || self.defaults.limits.max_body_kib.is_none()
            || self.defaults.limits.max_response_mib.is_none()
            || self.defaults.limits.max_proxy_body_mib.is_none()
            || self.defaults.limits.instance_reuse.is_none()
        {
            return Err(ConfigError::Invalid(
                "[defaults] must set every limit".to_string(),
            ));
        }
        Ok(())
    }

    /// The plugins folder.
    pub fn plugins_dir(&self) -> PathBuf {
        if self.plugins_dir.as_os_str().is_empty() {
            self.data_dir.join("plugins")
        } else {
            self.plugins_dir.clone()
        }
    }

    /// The admin socket path.
    pub fn admin_socket(&self) -> PathBuf {
        self.data_dir.join("admin.sock")
    }

    /// Whether TLS is configured.
    pub fn tls(&self) -> Option<(&Path, &Path)> {
        (!self.tls_cert.as_os_str().is_empty()).then_some((&*self.tls_cert, &*self.tls_key))
    }

    /// Capabilities the operator grants to plugin `name`.
    pub fn grants(&self, name: &str) -> Vec<Capability> {
        let own = self
            .plugins
            .get(name)
            .map(|p| p.grants.as_slice())
            .unwrap_or_default();
        let mut caps: Vec<Capability> = self
            .defaults
            .grants
            .iter()
            .chain(own)
            .filter_map(|g| g.parse().ok())
            .collect();
        caps.sort();
        caps.dedup();
        caps
    }

    /// The path the wasi:http component `name` is mounted under.
    pub fn route(&self, name: &str) -> String {
        let own = self.plugins.get(name).and_then(|p| p.route.clone());
        own.unwrap_or_else(|| format!("/{name}"))
    }

    /// Limits in force for plugin `name`.
    pub fn limits(&self, name: &str) -> Limits {
        let d = &self.defaults.limits;
        let own = self
            .plugins
            .get(name)
            .map(|p| p.limits.clone())
            .unwrap_or_default();
        // validate() guarantees every default is set.
        let pick = |own: Option<u64>, default: Option<u64>| own.or(default).unwrap_or(1);
        Limits {
            memory_bytes: pick(own.memory_mib, d.memory_mib) << 20,
            deadline: Duration::from_millis(pick(own.deadline_ms, d.deadline_ms)),
            max_concurrent: own.max_concurrent.or(d.max_concurrent).unwrap_or(1),
            max_body_bytes: pick(own.max_body_kib, d.max_body_kib) << 10,
            max_response_bytes: pick(own.max_response_mib, d.max_response_mib) << 20,
            max_proxy_body_bytes: pick(own.max_proxy_body_mib, d.max_proxy_body_mib) << 20,
            instance_reuse: own.instance_reuse.or(d.instance_reuse).unwrap_or(1),
        }
    }

    /// Plugin `name`'s settings as text: strings as they are, other values
    /// as JSON, and the text of its `setting_files`.
    pub fn settings(&self, name: &str) -> BTreeMap<String, String> {
        let Some(plugin) = self.plugins.get(name) else {
            return BTreeMap::new();
        };
        let given = plugin.settings.iter().map(|(k, v)| {
            let text = match v {
                toml::Value::String(s) => s.clone(),
                other => serde_json::to_string(other).unwrap_or_default(),
            };
            (k.clone(), text)
        });
        let read = plugin.file_settings.clone();
        given.chain(read).collect()
    }
}

/// The largest per-plugin memory cap; also the pooling allocator's slot size.
pub const MAX_MEMORY_MIB: u64 = 4096;

/// Merge `overlay` into `base`: tables recursively, anything else replaced.
fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, Path::new("test.toml"))
    }

    #[test]
    fn embedded_defaults_parse() {
        let c = Config::embedded();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.plugins_dir(), PathBuf::from("./berth-data/plugins"));
        assert_eq!(
            c.grants("hello"),
            vec![Capability::Kv, Capability::Config, Capability::Log]
        );
        assert_eq!(c.grants("other"), vec![Capability::Config, Capability::Log]);
        assert_eq!(c.limits("x").memory_bytes, 64 << 20);
        assert_eq!(
            c.settings("hello").get("greeting").map(String::as_str),
            Some("Hello")
        );
    }

    #[test]
    fn file_overrides_merge_key_by_key() {
        let c = parse(
            "listen = \"127.0.0.1:0\"\n[defaults]\ndeadline_ms = 50\n\
             [plugins.faults]\ngrants = [\"kv\"]\nmemory_mib = 8\n\
             [plugins.faults.settings]\nn = 3\nname = \"x\"\n",
        )
        .unwrap();
        assert_eq!(c.listen.port(), 0);
        let l = c.limits("faults");
        assert_eq!(l.deadline, Duration::from_millis(50));
        assert_eq!(l.memory_bytes, 8 << 20);
        assert_eq!(l.max_concurrent, 64);
        assert_eq!(l.instance_reuse, 1);
        // hello's section from the defaults survives a file that adds another plugin.
        assert_eq!(
            c.grants("hello"),
            vec![Capability::Kv, Capability::Config, Capability::Log]
        );
        let s = c.settings("faults");
        assert_eq!(s["n"], "3");
        assert_eq!(s["name"], "x");
    }

    #[test]
    fn setting_files_are_read_into_settings_as_text() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("templates.json");
        std::fs::write(&file, "[{\"type\": 1}]\n").unwrap();
        let c = parse(&format!(
            "[plugins.stacks.setting_files]\ntemplates = {:?}\n",
            file.display().to_string()
        ))
        .unwrap();
        assert_eq!(c.settings("stacks")["templates"], "[{\"type\": 1}]\n");
        // `berth config` shows the path, not the text.
        let shown = toml::to_string(&c).unwrap();
        assert!(
            shown.contains("templates.json") && !shown.contains("type"),
            "{shown}"
        );
        // The bundled stacks settings are still there beside it.
        assert_eq!(c.settings("stacks")["endpoint"], "local");
        std::fs::write(&file, vec![b' '; MAX_SETTING_FILE_BYTES as usize + 1]).unwrap();
        let err = parse(&format!(
            "[plugins.stacks.setting_files]\ntemplates = {:?}\n",
            file.display().to_string()
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("more than the 1048576"), "{err}");
    }

    #[test]
    fn a_wasi_http_component_is_mounted_under_its_name_or_its_route() {
        let c = parse("[plugins.api]\nroute = \"/v1/api\"\n").unwrap();
        assert_eq!(c.route("api"), "/v1/api");
        assert_eq!(c.route("greet"), "/greet");
        assert_eq!(
            parse("[plugins.all]\nroute = \"/\"\n")
                .unwrap()
                .route("all"),
            "/"
        );
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let cases = [
            ("listen = 5", "invalid type"),
            ("lisen = \"x\"", "unknown field `lisen`"),
            (
                "[defaults]\ngrants = [\"root\"]",
                "unknown capability `root`",
            ),
            ("[plugins.a]\nmemory_mib = 0", "memory_mib must be above 0"),
            (
                "[defaults]\ninstance_reuse = 0",
                "instance_reuse must be above 0",
            ),
            (
                "tls_cert = \"a.pem\"",
                "tls_cert and tls_key must be given together",
            ),
            ("[plugins.a]\nmemory_mib = 100000", "memory_mib is at most"),
            ("[plugins.a]\nroute = \"api\"", "route must be a path"),
            ("[plugins.a]\nroute = \"/api/\"", "route must be a path"),
            ("[plugins.a]\nroute = \"/api/{x}\"", "route must be a path"),
            ("[plugins.a]\nroute = \"/_berth/a\"", "route must be a path"),
            ("= broken", "not valid TOML"),
            (
                "[plugins.a.setting_files]\nt = \"/nonexistent/t.json\"",
                "[plugins.a.setting_files] t: cannot read /nonexistent/t.json",
            ),
            (
                "[plugins.a.settings]\nt = \"x\"\n[plugins.a.setting_files]\nt = \"/etc/hostname\"",
                "also set in [plugins.a.settings]",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }
}
