//! `kv`: the plugin's namespace in the redb file, through the call's
//! transaction (see `store`).

use wasmtime::component::{HasData, Linker};

use crate::bindings::HostError;
use crate::bindings::kv::{Host, Page};
use crate::bindings::types::Error;
use crate::capability::Capability;
use crate::caps::{CallCx, Caller, HasCall, Unit};
use crate::store::{Store, Txn, TxnError};

type Answer<T> = Result<T, HostError>;

impl From<TxnError> for Error {
    fn from(e: TxnError) -> Self {
        match e {
            TxnError::Invalid(m) => Error::Invalid(m),
            TxnError::Conflict(m) => Error::Conflict(m),
            TxnError::Store(e) => Error::Unavailable(e.to_string()),
        }
    }
}

/// What `kv` sees of a call: the caller, its transaction and the store
/// (for sequences, which are outside transactions).
pub struct KvView<'a> {
    caller: Caller<'a>,
    /// None while describing.
    txn: Option<&'a mut Txn>,
    db: &'a Store,
}

/// Links `kv` to [`KvView`].
pub struct KvCap;

impl HasData for KvCap {
    type Data<'a> = KvView<'a>;
}

plugin_sees_errors!(KvView<'_>);

impl Unit for KvCap {
    fn view(call: &mut CallCx) -> KvView<'_> {
            let (caller, env, txn) = call.split();
            KvView {
                caller,
                txn,
                db: &env.services.db,
            }
    }

    fn link<T: HasCall>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        crate::bindings::kv::add_to_linker::<T, Self>(linker, |s| Self::view(s.call()))
    }
}

impl KvView<'_> {
    fn txn(&mut self) -> Result<&mut Txn, Error> {
        self.caller.check(Capability::Kv)?;
        let pinned = self.caller.acted_outside().is_some();
        let txn = self.txn.as_deref_mut().ok_or_else(|| {
            Error::Unavailable("storage is not available while describing".into())
        })?;
        if pinned {
            txn.pin();
        }
        Ok(txn)
    }
}

impl Host for KvView<'_> {
    async fn get(&mut self, key: String) -> Answer<Option<Vec<u8>>> {
        Ok(self.txn()?.get(&key).await.map_err(Error::from)?)
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Answer<()> {
        Ok(self.txn()?.set(&key, value).await.map_err(Error::from)?)
    }

    async fn delete(&mut self, key: String) -> Answer<bool> {
        Ok(self.txn()?.delete(&key).await.map_err(Error::from)?)
    }

    async fn list(&mut self, prefix: String, after: Option<String>, limit: u32) -> Answer<Page> {
        let page = self.txn()?.list(&prefix, after.as_deref(), limit).await;
        let page = page.map_err(Error::from)?;
        Ok(Page {
            entries: page.entries,
            next: page.next,
        })
    }

    async fn increment(&mut self, key: String, delta: i64) -> Answer<i64> {
        Ok(self
            .txn()?
            .increment(&key, delta)
            .await
            .map_err(Error::from)?)
    }

    async fn next_in_sequence(&mut self, name: String) -> Answer<u64> {
        self.caller.check(Capability::Kv)?;
        if name.is_empty() || name.len() > crate::store::MAX_KEY {
            return Err(Error::Invalid("sequence names are 1 to 1024 bytes".into()).into());
        }
        let next = self.db.next_in_sequence(self.caller.plugin(), &name).await;
        Ok(next.map_err(|e| Error::Unavailable(e.to_string()))?)
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    ) -> Answer<bool> {
        let swapped = self.txn()?.compare_and_swap(&key, expected, new).await;
        Ok(swapped.map_err(Error::from)?)
    }

    async fn restart(&mut self) -> Answer<()> {
        if let Some(what) = self.caller.acted_outside() {
            return Err(Error::Conflict(format!(
                "this call cannot run again: it already acted outside KV ({what})"
            ))
            .into());
        }
        self.txn()?.restart().await;
        self.caller.forget_deferred();
        Ok(())
    }
}
