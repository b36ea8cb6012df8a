//! Host capabilities: one module per WIT interface a plugin imports.
//!
//! Every capability is deny-by-default: a plugin gets one only if its
//! manifest asks for it AND the operator's config grants it. A call to a
//! capability the plugin does not hold returns `error::denied` to the
//! plugin; it never traps.

pub mod config;
pub mod crypto;
pub mod docker;
pub mod dokku;
pub mod events;
pub mod http_out;
pub mod jobs;
pub mod kv;
pub mod log;

use std::fmt;
use std::str::FromStr;

use crate::runtime::HostState;
use crate::runtime::bindings::berth::plugin::types::Error as WitError;

/// A capability a plugin can ask for and an operator can grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Capability {
    Kv,
    Config,
    Crypto,
    Log,
    Jobs,
    Dokku,
    HttpOut,
    Docker,
    DockerEndpoints,
    Events,
}

impl Capability {
    pub const ALL: [Capability; 10] = [
        Capability::Kv,
        Capability::Config,
        Capability::Crypto,
        Capability::Log,
        Capability::Jobs,
        Capability::Dokku,
        Capability::HttpOut,
        Capability::Docker,
        Capability::DockerEndpoints,
        Capability::Events,
    ];

    /// The name used in manifests and config.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Kv => "kv",
            Capability::Config => "config",
            Capability::Crypto => "crypto",
            Capability::Log => "log",
            Capability::Jobs => "jobs",
            Capability::Dokku => "dokku",
            Capability::HttpOut => "http-out",
            Capability::Docker => "docker",
            Capability::DockerEndpoints => "docker-endpoints",
            Capability::Events => "events",
        }
    }

    fn bit(self) -> u32 {
        1 << self as u32
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Capability {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        Capability::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or(())
    }
}

/// A set of capabilities.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapSet(u32);

impl CapSet {
    pub fn contains(self, cap: Capability) -> bool {
        self.0 & cap.bit() != 0
    }

    pub fn names(self) -> Vec<&'static str> {
        Capability::ALL
            .into_iter()
            .filter(|c| self.contains(*c))
            .map(Capability::name)
            .collect()
    }
}

impl FromIterator<Capability> for CapSet {
    fn from_iter<I: IntoIterator<Item = Capability>>(iter: I) -> Self {
        CapSet(iter.into_iter().fold(0, |bits, c| bits | c.bit()))
    }
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

impl HostState {
    /// Note that this call acted outside KV (see `CallCx::acted_outside`).
    pub(crate) fn acted(&mut self, what: &'static str) {
        self.call.acted_outside.get_or_insert(what);
    }

    /// `Ok` if this call's plugin holds `cap`, else the `denied` error the
    /// plugin sees, saying how an operator grants it.
    pub(crate) fn check(&self, cap: Capability) -> Result<(), WitError> {
        if self.call.plugin.granted.contains(cap) {
            return Ok(());
        }
        let name = &self.call.plugin.name;
        let why = if self.call.plugin.asked.contains(cap) {
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
