//! `jobs`: durable background jobs, the capability. A plugin queues a job
//! through its call's transaction, so it is committed with the call's KV
//! writes, or not at all; the runner (`crate::jobs`) runs it.

use wasmtime::component::{HasData, Linker};

use crate::bindings::HostError;
use crate::bindings::jobs::Host;
use crate::bindings::types::Error;
use crate::capability::Capability;
use crate::caps::{CallCx, Caller, HasCall, Unit};
use crate::store::Txn;

/// What `jobs` sees of a call: the caller and its transaction.
pub struct JobsView<'a> {
    caller: Caller<'a>,
    /// None while describing.
    txn: Option<&'a mut Txn>,
}

/// Links `jobs` to [`JobsView`].
pub struct JobsCap;

impl HasData for JobsCap {
    type Data<'a> = JobsView<'a>;
}

plugin_sees_errors!(JobsView<'_>);

impl Unit for JobsCap {
    fn view(call: &mut CallCx) -> JobsView<'_> {
            let (caller, _, txn) = call.split();
            JobsView { caller, txn }
    }

    fn link<T: HasCall>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        crate::bindings::jobs::add_to_linker::<T, Self>(linker, |s| Self::view(s.call()))
    }
}

impl Host for JobsView<'_> {
    async fn enqueue(
        &mut self,
        kind: String,
        payload: Vec<u8>,
        delay_ms: u64,
    ) -> Result<u64, HostError> {
        self.caller.check(Capability::Jobs)?;
        let Some(txn) = self.txn.as_mut() else {
            return Err(Error::Unavailable("jobs cannot be queued while describing".into()).into());
        };
        Ok(txn
            .enqueue(&kind, &payload, delay_ms)
            .await
            .map_err(Error::from)?)
    }
}
