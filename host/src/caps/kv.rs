//! `kv`: the plugin's namespace in the redb file, through the call's
//! transaction (see `store`).

use crate::bindings::kv::{Host, Page};
use crate::bindings::types::Error;
use crate::capability::Capability;
use crate::caps::CallCx;
use crate::store::{Txn, TxnError};

type Answer<T> = wasmtime::Result<Result<T, Error>>;

impl From<TxnError> for Error {
    fn from(e: TxnError) -> Self {
        match e {
            TxnError::Invalid(m) => Error::Invalid(m),
            TxnError::Conflict(m) => Error::Conflict(m),
            TxnError::Store(e) => Error::Unavailable(e.to_string()),
        }
    }
}

impl CallCx {
    fn txn(&mut self) -> Result<&mut Txn, Error> {
        self.check(Capability::Kv)?;
        let pinned = self.acted_outside.is_some();
        let txn = self.txn.as_mut().ok_or_else(|| {
            Error::Unavailable("storage is not available while describing".into())
        })?;
        if pinned {
            txn.pin();
        }
        Ok(txn)
    }
}

impl Host for CallCx {
    async fn get(&mut self, key: String) -> Answer<Option<Vec<u8>>> {
        Ok(match self.txn() {
            Ok(t) => t.get(&key).await.map_err(Error::from),
            Err(e) => Err(e),
        })
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Answer<()> {
        Ok(match self.txn() {
            Ok(t) => t.set(&key, value).await.map_err(Error::from),
            Err(e) => Err(e),
        })
    }

    async fn delete(&mut self, key: String) -> Answer<bool> {
        Ok(match self.txn() {
            Ok(t) => t.delete(&key).await.map_err(Error::from),
            Err(e) => Err(e),
        })
    }

    async fn list(&mut self, prefix: String, after: Option<String>, limit: u32) -> Answer<Page> {
        Ok(match self.txn() {
            Ok(t) => t
                .list(&prefix, after.as_deref(), limit)
                .await
                .map(|page| Page {
                    entries: page.entries,
                    next: page.next,
                })
                .map_err(Error::from),
            Err(e) => Err(e),
        })
    }

    async fn increment(&mut self, key: String, delta: i64) -> Answer<i64> {
        Ok(match self.txn() {
            Ok(t) => t.increment(&key, delta).await.map_err(Error::from),
            Err(e) => Err(e),
        })
    }

    async fn next_in_sequence(&mut self, name: String) -> Answer<u64> {
        if let Err(e) = self.check(Capability::Kv) {
            return Ok(Err(e));
        }
        if name.is_empty() || name.len() > crate::store::MAX_KEY {
            return Ok(Err(Error::Invalid(
                "sequence names are 1 to 1024 bytes".into(),
            )));
        }
        let env = self.plugin.clone();
        Ok(env
            .db
            .next_in_sequence(&env.name, &name)
            .await
            .map_err(|e| Error::Unavailable(e.to_string())))
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    ) -> Answer<bool> {
        Ok(match self.txn() {
            Ok(t) => t
                .compare_and_swap(&key, expected, new)
                .await
                .map_err(Error::from),
            Err(e) => Err(e),
        })
    }

    async fn restart(&mut self) -> Answer<()> {
        if let Some(what) = self.acted_outside {
            return Ok(Err(Error::Conflict(format!(
                "this call cannot run again: it already acted outside KV ({what})"
            ))));
        }
        Ok(self.txn().map(Txn::restart))
    }
}
