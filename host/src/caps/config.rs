//! `config`: the plugin's own settings from the operator's config file.

use std::collections::BTreeMap;

use wasmtime::component::{HasData, Linker};

use crate::bindings::HostError;
use crate::bindings::config::Host;
use crate::capability::Capability;
use crate::caps::{CallCx, Caller, HasCall, Unit};

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

plugin_sees_errors!(ConfigView<'_>);

impl Unit for ConfigCap {
    fn view(call: &mut CallCx) -> ConfigView<'_> {
            let (caller, env, _) = call.split();
            ConfigView {
                caller,
                settings: &env.settings,
            }
    }

    fn link<T: HasCall>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        crate::bindings::config::add_to_linker::<T, Self>(linker, |s| Self::view(s.call()))
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
