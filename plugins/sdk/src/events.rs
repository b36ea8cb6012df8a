//! Events: publish to the clients this plugin subscribed to a topic with
//! [`Response::subscribe`](crate::Response::subscribe). Publishing never
//! waits for clients; the host keeps a bounded number of recent events per
//! plugin for replay and drops clients that fall too far behind.

use serde::Serialize;

use crate::Error;
use crate::host::events as raw;

/// Publish `payload` on `topic`; its sequence number.
pub fn publish(topic: &str, payload: &[u8]) -> Result<u64, Error> {
    raw::publish(topic, payload)
}

/// Publish `value` as one line of JSON on `topic`.
pub fn publish_json<T: Serialize + ?Sized>(topic: &str, value: &T) -> Result<u64, Error> {
    let payload = serde_json::to_vec(value)
        .map_err(|e| Error::Invalid(format!("cannot serialise the event: {e}")))?;
    raw::publish(topic, &payload)
}

/// Publish the last event of `topic`; streams on it end after it.
pub fn close(topic: &str, payload: &[u8]) -> Result<u64, Error> {
    raw::close(topic, payload)
}

/// Open a stream of `messages`, known in full, for this call to answer
/// with: answer [`Response::subscribe`](crate::Response::subscribe) on the
/// returned topic and the client gets them in order, then the stream
/// ends. Nothing is published; other subscribers never see them.
pub fn open_messages(messages: &[Vec<u8>]) -> Result<String, Error> {
    raw::open_messages(messages)
}
