//! `config`: the plugin's own settings from the operator's config file.

use crate::bindings::HostError;
use crate::bindings::config::Host;
use crate::bindings::types::Error;
use crate::capability::Capability;
use crate::caps::CallCx;

impl Host for CallCx {
    async fn get(&mut self, key: String) -> Result<Option<String>, HostError> {
        self.check(Capability::Config)?;
        Ok(self.plugin.settings.get(&key).cloned())
    }

    async fn get_all(&mut self) -> Result<Vec<(String, String)>, HostError> {
        self.check(Capability::Config)?;
        let settings = self.plugin.settings.iter();
        Ok(settings.map(|(k, v)| (k.clone(), v.clone())).collect())
    }
}

impl crate::bindings::types::Host for CallCx {
    /// A capability's error reaches the plugin; a trap ends the call.
    fn convert_error(&mut self, err: HostError) -> wasmtime::Result<Error> {
        err.downcast()
    }
}
