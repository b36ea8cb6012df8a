//! Host capabilities: one module per WIT interface a plugin imports.
//!
//! Every capability is deny-by-default: a plugin gets one only if its
//! manifest asks for it AND the operator's config grants it. A call to a
//! capability the plugin does not hold returns `error::denied` to the
//! plugin; it never traps.

//! Each is a [`Unit`]: its view of a call and its interface linked to
//! that view live in its module; [`units!`] lists the modules, which is
//! all this file knows of them; the host services they share are
//! [`Services`].

/// The plugin sees a capability's `types.error` as it is; a trap ends
/// the call. Each view whose interface returns that error says so with
/// this macro, in its own module.
macro_rules! plugin_sees_errors {
    ($($view:ty),*) => {$(
        impl crate::bindings::types::Host for $view {
            fn convert_error(
                &mut self,
                err: crate::bindings::HostError,
            ) -> wasmtime::Result<crate::bindings::types::Error> {
                err.downcast()
            }
        }
    )*};
}

/// The capability modules, each with its [`Unit`]: declares the modules
/// and links every one of them ([`link`]).
macro_rules! units {
    ($($module:ident :: $unit:ident),* $(,)?) => {
        $(pub mod $module;)*

        /// Link every capability interface, each to its own view of the
        /// call.
        pub fn link<T: HasCall>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
            $(<$module::$unit as Unit>::link(linker)?;)*
            Ok(())
        }
    };
}

units!(
    config::ConfigCap,
    crypto::CryptoCap,
    docker::DockerCap,
    dokku::DokkuCap,
    events::EventsCap,
    http_out::HttpOutCap,
    jobs::JobsCap,
    kv::KvCap,
    log::LogCap,
);

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{HasData, Linker};

use crate::bindings::types::{Error as WitError, Manifest};
use crate::capability::{CapSet, Capability};
use crate::config::{Config, DokkuConfig};
use crate::lanes::Lanes;
use crate::store::{Store, Txn};

/// A store's data that holds the call its capabilities serve.
pub trait HasCall: Send + 'static {
    fn call(&mut self) -> &mut CallCx;
}

/// A capability as a unit: what it sees of a call (its view, wasmtime's
/// `HasData` pattern), and its WIT interface linked to that view.
pub trait Unit: HasData {
    /// This capability's view of `call`.
    fn view(call: &mut CallCx) -> Self::Data<'_>;

    /// Add this capability's interface to `linker`, each call served by
    /// [`Unit::view`] of the store's call.
    fn link<T: HasCall>(linker: &mut Linker<T>) -> wasmtime::Result<()>;
}

/// The text of a `denied` error, for interfaces with their own error type.
pub(crate) fn denied_text(e: &WitError) -> String {
    match e {
        WitError::Denied(m)
        | WitError::Invalid(m)
        | WitError::Conflict(m)
        | WitError::Unavailable(m) => m.clone(),
    }
}

/// Everything a plugin's calls share: its identity, grants and settings,
/// and the host's services.
pub struct PluginEnv {
    pub name: String,
    pub asked: CapSet,
    pub granted: CapSet,
    pub settings: BTreeMap<String, String>,
    pub services: Services,
}

/// The host services behind the capabilities, made once and shared by
/// every plugin's environment.
#[derive(Clone)]
pub struct Services {
    pub db: Arc<Store>,
    pub keys: Arc<crypto::KeyVault>,
    pub dokku: DokkuConfig,
    pub http: Arc<http_out::HttpOut>,
    pub docker: Arc<docker::Docker>,
    pub events: Arc<events::Events>,
    /// The CPU lanes long-running work takes turns on (see `lanes`): a
    /// call's wasm, and CPU-heavy work the host does for it (hashing).
    pub lanes: Arc<Lanes>,
}

impl Services {
    /// The services `config` describes, over `db`, taking turns on `lanes`.
    pub fn new(config: &Config, db: Arc<Store>, lanes: Arc<Lanes>) -> anyhow::Result<Services> {
        Ok(Services {
            keys: Arc::new(crypto::KeyVault::new(db.clone())),
            dokku: config.dokku.clone(),
            http: Arc::new(http_out::HttpOut::new(&config.http_out)?),
            docker: Arc::new(docker::Docker::new(&config.docker, db.clone())?),
            events: Arc::new(events::Events::new(&db)),
            lanes,
            db,
        })
    }
}

impl PluginEnv {
    /// The environment of the plugin `manifest` describes: the
    /// capabilities it asks for that `config` grants, and its settings.
    pub fn new(services: &Services, manifest: &Manifest, config: &Config) -> PluginEnv {
        let name = manifest.name.clone();
        let asked: CapSet = manifest
            .capabilities
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect();
        let granted: CapSet = config
            .grants(&name)
            .into_iter()
            .filter(|c| asked.contains(*c))
            .collect();
        PluginEnv {
            asked,
            granted,
            settings: config.settings(&name),
            ..PluginEnv::describing(services, &name)
        }
    }

    /// The environment a plugin is described in, before its manifest is
    /// known: no capability (`describe` must not call any).
    pub fn describing(services: &Services, name: &str) -> PluginEnv {
        PluginEnv {
            name: name.to_string(),
            asked: CapSet::default(),
            granted: CapSet::default(),
            settings: BTreeMap::new(),
            services: services.clone(),
        }
    }
}

/// Per-call context the capabilities use.
pub struct CallCx {
    pub plugin: Arc<PluginEnv>,
    pub request_id: String,
    /// None while describing a plugin (no storage then).
    pub txn: Option<Txn>,
    /// When the call must end; the plugin's deadline caps it.
    pub deadline: Instant,
    /// The first thing this call did outside KV that running it again would
    /// repeat (a Docker change, a Dokku command, ...); `kv.restart` is then
    /// refused.
    pub acted_outside: Option<&'static str>,
    /// What waits for the call's commit while it has not acted outside KV
    /// (its published events): run once its writes are committed, or at
    /// once when it acts outside KV, or never if it is rolled back.
    pub deferred: Vec<Deferred>,
    /// Streams this call opened, by topic, for its answer to send.
    pub opened: Opened,
}

/// An effect held until the call's commit.
pub type Deferred = Box<dyn FnOnce() + Send + Sync>;

/// What a call prepared for its answer: streams it opened
/// (`docker.open-log-stream`, `events.open-messages`) for a `subscribe`
/// outcome to send, each under a topic of its own, and headers
/// (`docker.set-proxy-header`) for a `proxy-docker` outcome's request.
#[derive(Default)]
pub struct Opened {
    streams: Vec<(String, OpenStream)>,
    /// In order; an empty value removes the header.
    pub proxy_headers: Vec<(http::HeaderName, String)>,
}

/// What an opened stream sends.
pub enum OpenStream {
    /// Containers' logs, read once the call answers with them.
    Logs(docker::LogSpec),
    /// Messages known in full.
    Messages(Vec<bytes::Bytes>),
}

impl Opened {
    /// Keep `stream` under a new topic, which is returned.
    pub fn add(&mut self, stream: OpenStream) -> String {
        let topic = format!("berth.opened.{}", self.streams.len() + 1);
        self.streams.push((topic.clone(), stream));
        topic
    }

    /// The stream opened as `topic`, if any.
    pub fn take(&mut self, topic: &str) -> Option<OpenStream> {
        let i = self.streams.iter().position(|(t, _)| t == topic)?;
        Some(self.streams.swap_remove(i).1)
    }

    /// Lay the headers set for the proxied request over the client's.
    pub fn apply_proxy_headers(&mut self, headers: &mut http::HeaderMap) {
        for (name, value) in self.proxy_headers.drain(..) {
            match http::HeaderValue::try_from(value) {
                Ok(v) if !v.is_empty() => {
                    headers.insert(name, v);
                }
                _ => {
                    headers.remove(name);
                }
            }
        }
    }
}

impl CallCx {
    /// A call of `plugin` for `request_id`, with a transaction when given.
    pub fn new(
        plugin: Arc<PluginEnv>,
        request_id: String,
        txn: Option<Txn>,
        deadline: Instant,
    ) -> CallCx {
        let txn = txn.map(|t| t.until(deadline));
        CallCx {
            plugin,
            request_id,
            txn,
            deadline,
            acted_outside: None,
            deferred: Vec::new(),
            opened: Opened::default(),
        }
    }
}

impl CallCx {
    /// This call's caller, the plugin's environment and the call's
    /// transaction, borrowed apart: what a capability's view is made of.
    pub(crate) fn split(&mut self) -> (Caller<'_>, &PluginEnv, Option<&mut Txn>) {
        let (caller, env, txn, _) = self.split_streams();
        (caller, env, txn)
    }

    /// [`CallCx::split`], and the call's opened log streams.
    #[allow(clippy::type_complexity)]
    pub(crate) fn split_streams(
        &mut self,
    ) -> (Caller<'_>, &PluginEnv, Option<&mut Txn>, &mut Opened) {
        let caller = Caller {
            plugin: &self.plugin,
            request_id: &self.request_id,
            deadline: self.deadline,
            acted_outside: &mut self.acted_outside,
            deferred: &mut self.deferred,
            can_defer: self.txn.is_some(),
        };
        (caller, &self.plugin, self.txn.as_mut(), &mut self.opened)
    }
}

/// Who makes a capability call, and within which bounds: the part of a
/// call every capability's view carries. Each capability is implemented
/// on a view of its own (wasmtime's `HasData` pattern): the caller and
/// the few things of the plugin's environment that capability uses. The
/// runtime links each interface with a function from its store data to
/// that view, so nothing here knows the runtime.
pub struct Caller<'a> {
    plugin: &'a PluginEnv,
    request_id: &'a str,
    deadline: Instant,
    acted_outside: &'a mut Option<&'static str>,
    deferred: &'a mut Vec<Deferred>,
    /// The call has a transaction to commit (not describing).
    can_defer: bool,
}

impl Caller<'_> {
    /// The calling plugin's name.
    pub(crate) fn plugin(&self) -> &str {
        &self.plugin.name
    }

    /// The request (or job) the call serves.
    pub(crate) fn request_id(&self) -> &str {
        self.request_id
    }

    /// When the call must end.
    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Note that this call acted outside KV (see `CallCx::acted_outside`):
    /// what it deferred happens now, before that action, as it was asked
    /// for before it.
    pub(crate) fn acted(&mut self, what: &'static str) {
        if self.acted_outside.is_none() {
            for effect in self.deferred.drain(..) {
                effect();
            }
        }
        self.acted_outside.get_or_insert(what);
    }

    /// Run `effect` once the call's writes are committed, if the call can
    /// still run again; else now.
    pub(crate) fn defer(&mut self, effect: Deferred) {
        if self.acted_outside.is_none() && self.can_defer {
            self.deferred.push(effect);
        } else {
            effect();
        }
    }

    /// The call runs again from the start: what it deferred is dropped.
    pub(crate) fn forget_deferred(&mut self) {
        self.deferred.clear();
    }

    /// What this call did outside KV first, if anything.
    pub(crate) fn acted_outside(&self) -> Option<&'static str> {
        *self.acted_outside
    }

    /// `Ok` if this call's plugin holds `cap`, else the `denied` error the
    /// plugin sees, saying how an operator grants it.
    pub(crate) fn check(&self, cap: Capability) -> Result<(), WitError> {
        if self.plugin.granted.contains(cap) {
            return Ok(());
        }
        let name = &self.plugin.name;
        let why = if self.plugin.asked.contains(cap) {
            format!(
                "capability `{cap}` is not granted to plugin `{name}`; an operator grants it with \
                 grants = [\"{cap}\"] under [plugins.{name}] in the config file"
            )
        } else {
            format!("plugin `{name}` did not ask for capability `{cap}` in its manifest")
        };
        Err(WitError::Denied(why))
    }
}
