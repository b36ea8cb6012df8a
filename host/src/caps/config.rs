//! `config`: the plugin's own settings from the operator's config file.

use crate::caps::Capability;
use crate::runtime::HostState;
use crate::runtime::bindings::berth::plugin::config::Host;
use crate::runtime::bindings::berth::plugin::types::Error;

impl Host for HostState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<String>, Error>> {
        Ok(self
            .check(Capability::Config)
            .map(|()| self.call.plugin.settings.get(&key).cloned()))
    }

    async fn get_all(&mut self) -> wasmtime::Result<Result<Vec<(String, String)>, Error>> {
        Ok(self.check(Capability::Config).map(|()| {
            self.call
                .plugin
                .settings
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }))
    }
}

impl crate::runtime::bindings::berth::plugin::types::Host for HostState {}
