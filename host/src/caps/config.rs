//! `config`: the plugin's own settings from the operator's config file.

use crate::bindings::config::Host;
use crate::bindings::types::Error;
use crate::capability::Capability;
use crate::caps::CallCx;

impl Host for CallCx {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<String>, Error>> {
        Ok(self
            .check(Capability::Config)
            .map(|()| self.plugin.settings.get(&key).cloned()))
    }

    async fn get_all(&mut self) -> wasmtime::Result<Result<Vec<(String, String)>, Error>> {
        Ok(self.check(Capability::Config).map(|()| {
            self.plugin
                .settings
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }))
    }
}

impl crate::bindings::types::Host for CallCx {}
