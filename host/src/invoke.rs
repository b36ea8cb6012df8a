//! One way to run a plugin's export, for requests, jobs and admin
//! commands alike: the call's transaction and context, its span, its
//! metrics, the instance's return to its pool, and one rule for which of
//! the call's writes are kept.

use std::time::Instant;

use tracing::{Instrument, Span};

use crate::bindings::{Outcome, Request};
use crate::caps::{CallCx, Opened};
use crate::plugins::Mounted;
use crate::runtime::{CallError, Called, Runtime, Served};
use crate::store::{StoreError, Txn};

/// One call to make: which export with what (`call`), for whom
/// (`request_id`), until when.
pub struct Invocation<C> {
    pub call: C,
    pub request_id: String,
    pub deadline: Instant,
    /// The call runs again after its writes conflicted at commit: its
    /// transaction takes its turn before concurrent ones.
    pub rerun: bool,
}

/// An export of the plugin, its arguments, and what its answer says.
pub trait Call: Send {
    type Value: Send;

    /// The span the call's lines are logged in.
    fn span(&self, plugin: &str, request_id: &str) -> Span;

    /// Anything the call's transaction must do besides the plugin's writes.
    fn begin(&self, _txn: &mut Txn) {}

    /// Call the export.
    fn run(
        self,
        runtime: &Runtime,
        plugin: &Mounted,
        cx: CallCx,
    ) -> impl Future<Output = Result<Called<Self::Value>, CallError>> + Send;

    /// Whether the answer reports that the call failed.
    fn failed(value: &Self::Value) -> bool;

    /// Whether a failed call's writes are kept all the same.
    const KEEPS_FAILED: bool;
}

/// `handle`: an HTTP request. A request's span is dispatch's, which also
/// covers admission and the answer; its writes are kept whatever it
/// answers (a plugin may record a failure), so long as they can be.
pub struct Handle(pub Request);

impl Call for Handle {
    type Value = Outcome;

    fn span(&self, _plugin: &str, _request_id: &str) -> Span {
        Span::current()
    }

    async fn run(
        self,
        runtime: &Runtime,
        plugin: &Mounted,
        cx: CallCx,
    ) -> Result<Called<Outcome>, CallError> {
        runtime
            .handle(&plugin.pre, cx, &plugin.limits, self.0)
            .await
    }

    fn failed(value: &Outcome) -> bool {
        matches!(value, Outcome::Respond(r) if r.status >= 500)
    }

    const KEEPS_FAILED: bool = true;
}

/// `run-job`: job `id` of `kind`, claimed with `lease`. Its commit
/// finishes the job; a failed run's writes are dropped, as it runs again.
pub struct Job {
    pub id: u64,
    pub lease: u64,
    pub kind: String,
    pub payload: Vec<u8>,
}

impl Call for Job {
    type Value = Result<(), String>;

    fn span(&self, plugin: &str, _request_id: &str) -> Span {
        tracing::info_span!("job", plugin, job = self.id, kind = %self.kind)
    }

    fn begin(&self, txn: &mut Txn) {
        txn.finish_job(self.id, self.lease);
    }

    async fn run(
        self,
        runtime: &Runtime,
        plugin: &Mounted,
        cx: CallCx,
    ) -> Result<Called<Self::Value>, CallError> {
        runtime
            .run_job(&plugin.pre, cx, &plugin.limits, self.kind, self.payload)
            .await
    }

    fn failed(value: &Self::Value) -> bool {
        value.is_err()
    }

    const KEEPS_FAILED: bool = false;
}

/// `admin`: an operator's command. Its writes are kept whatever it
/// answers, as a request's are.
pub struct Admin(pub Vec<String>);

impl Call for Admin {
    type Value = Result<String, String>;

    fn span(&self, plugin: &str, request_id: &str) -> Span {
        tracing::info_span!("admin", request_id, plugin)
    }

    async fn run(
        self,
        runtime: &Runtime,
        plugin: &Mounted,
        cx: CallCx,
    ) -> Result<Called<Self::Value>, CallError> {
        runtime.admin(&plugin.pre, cx, &plugin.limits, self.0).await
    }

    fn failed(value: &Self::Value) -> bool {
        value.is_err()
    }

    const KEEPS_FAILED: bool = true;
}

/// A call that ran to its answer.
pub struct Finished<V> {
    pub value: V,
    /// Streams the call opened for its answer to send.
    pub opened: Opened,
    /// Its writes, not kept until [`Writes::commit`]; dropped, they roll
    /// back.
    pub writes: Writes,
}

/// A finished call's writes, and what its answer said of it.
pub struct Writes {
    txn: Option<Txn>,
    failed: bool,
    keeps_failed: bool,
}

/// What [`Writes::commit`] did.
#[derive(Debug)]
pub enum Kept {
    /// Durable.
    Committed,
    /// Not kept, by the rule: a failed job's, or a failed call's whose
    /// transaction was rolled back (its failure is believed, and there is
    /// nothing left to keep).
    Dropped,
    /// They could not be kept.
    Failed(StoreError),
}

impl Writes {
    /// Whether the call may run again if its writes conflict at commit:
    /// it did nothing outside KV.
    pub fn may_rerun(&self) -> bool {
        self.txn.as_ref().is_some_and(|t| !t.pinned())
    }

    /// Keep the writes, or drop them, by the one rule: they are kept
    /// unless the call failed and either its transaction was rolled back
    /// or its kind drops a failure's writes. A call that succeeded with a
    /// rolled-back transaction fails here (`StoreError::Aborted`): its
    /// writes are gone, so it must not look done.
    pub async fn commit(self) -> Kept {
        let Some(txn) = self.txn else {
            // Every invocation begins one, which only a trap takes.
            return Kept::Failed(StoreError::Storage(
                "the call's transaction was lost".into(),
            ));
        };
        if self.failed && (!self.keeps_failed || txn.aborted().is_some()) {
            return Kept::Dropped;
        }
        match txn.commit().await {
            Ok(()) => Kept::Committed,
            Err(e) => Kept::Failed(e),
        }
    }
}

/// Run `invocation` on `plugin`: the one way a plugin's export is called.
pub async fn invoke<C: Call>(
    runtime: &Runtime,
    plugin: &Mounted,
    invocation: Invocation<C>,
) -> Result<Finished<C::Value>, CallError> {
    let Invocation {
        call,
        request_id,
        deadline,
        rerun,
    } = invocation;
    let env = &plugin.env;
    let mut txn = env.services.db.begin(&env.name);
    if rerun {
        txn.take_turn();
    }
    call.begin(&mut txn);
    let span = call.span(&env.name, &request_id);
    let cx = CallCx::new(env.clone(), request_id, Some(txn), deadline);
    let called = call.run(runtime, plugin, cx).instrument(span).await?;
    let Called {
        value,
        txn,
        opened,
        instantiate,
        spent,
    } = called;
    spent.retire();
    plugin.metrics.instantiated(instantiate);
    let writes = Writes {
        txn,
        failed: C::failed(&value),
        keeps_failed: C::KEEPS_FAILED,
    };
    Ok(Finished {
        value,
        opened,
        writes,
    })
}

/// Serve `request` with the wasi:http component `plugin`: its call
/// context (no transaction: such a component has no KV) and the instance
/// metric; the runtime returns the instance to its pool when the
/// component's handler returns.
pub async fn serve_http(
    runtime: &Runtime,
    plugin: &Mounted,
    request: http::Request<bytes::Bytes>,
    tls: bool,
    request_id: String,
    deadline: Instant,
) -> Result<Served, CallError> {
    let cx = CallCx::new(plugin.env.clone(), request_id, None, deadline);
    let served = runtime
        .serve_http(&plugin.pre, cx, &plugin.limits, request, tls)
        .await?;
    plugin.metrics.instantiated(served.instantiate);
    Ok(served)
}
