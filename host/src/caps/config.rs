//! `config`: the plugin's own settings from the operator's config file.

use std::collections::BTreeMap;

use wasmtime::component::HasData;

use crate::bindings::HostError;
use crate::bindings::config::Host;
use crate::capability::Capability;
use crate::caps::{CallCx, Caller};

/// What `config` sees of a call: the caller and its plugin's settings.
pub struct ConfigView<'a> {
    caller: Caller<'a>,
    settings: &'a BTreeMap<String, String>,
}

/// Links `config` to [`ConfigView`].
pub struct ConfigCap;

impl HasData for ConfigCap {
    type Data<'a> = ConfigView<'a>;
}

impl CallCx {
    pub fn config(&mut self) -> ConfigView<'_> {
        let (caller, env, _) = self.split();
        ConfigView {
            caller,
            settings: &env.settings,
        }
    }
}

impl Host for ConfigView<'_> {
    async fn get(&mut self, key: String) -> Result<Option<String>, HostError> {
        self.caller.check(Capability::Config)?;
        Ok(self.settings.get(&key).cloned())
    }

    async fn get_all(&mut self) -> Result<Vec<(String, String)>, HostError> {
        self.caller.check(Capability::Config)?;
        let settings = self.settings.iter();
        Ok(settings.map(|(k, v)| (k.clone(), v.clone())).collect())
    }
}
