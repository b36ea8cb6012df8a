//! `events`: per-plugin publish with fan-out to subscribed clients.
//!
//! Each plugin has one broadcast channel (bounded: a subscriber that falls
//! more than [`LAG_LIMIT`] events behind is dropped with a closing
//! message) and a ring of the last [`RETAINED`] events, replayed to
//! subscribers that ask for it. Memory is bounded by both, whatever the
//! clients do.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::broadcast;
use wasmtime::component::HasData;

use crate::bindings::HostError;
use crate::bindings::events::Host;
use crate::bindings::types::Error as WitError;
use crate::capability::Capability;
use crate::caps::{CallCx, Caller, OpenStream, Opened};

/// Events a subscriber may fall behind before it is dropped.
pub const LAG_LIMIT: usize = 1024;
/// Events kept per plugin for replay.
pub const RETAINED: usize = 1024;
/// Largest payload of one event: with the two bounds above, at most
/// 2 x 1024 x 64 KiB are held per plugin whatever clients do.
pub const MAX_PAYLOAD: usize = 64 << 10;
/// Longest topic name.
const MAX_TOPIC: usize = 256;

/// One published event.
#[derive(Debug, Clone)]
pub struct Event {
    pub seq: u64,
    pub topic: Arc<str>,
    pub payload: Bytes,
    /// The topic's last event: streams on it end after this one.
    pub closing: bool,
}

struct Channel {
    sender: broadcast::Sender<Event>,
    retained: VecDeque<Event>,
    next_seq: u64,
}

/// Every plugin's channel.
#[derive(Default)]
pub struct Events {
    channels: Mutex<HashMap<String, Channel>>,
}

/// A live subscription: replayed events first, then the channel.
pub struct Subscription {
    pub replay: VecDeque<Event>,
    pub live: broadcast::Receiver<Event>,
}

impl Events {
    fn with_channel<R>(&self, plugin: &str, f: impl FnOnce(&mut Channel) -> R) -> R {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = channels
            .entry(plugin.to_string())
            .or_insert_with(|| Channel {
                sender: broadcast::channel(LAG_LIMIT).0,
                retained: VecDeque::new(),
                next_seq: 1,
            });
        f(channel)
    }

    /// Publish an event of `plugin`; its sequence number.
    pub fn publish(&self, plugin: &str, topic: &str, payload: Bytes, closing: bool) -> u64 {
        self.with_channel(plugin, |c| {
            let event = Event {
                seq: c.next_seq,
                topic: Arc::from(topic),
                payload,
                closing,
            };
            c.next_seq += 1;
            if c.retained.len() == RETAINED {
                c.retained.pop_front();
            }
            c.retained.push_back(event.clone());
            // No receivers is fine: nobody is listening yet.
            let _ = c.sender.send(event);
            c.next_seq - 1
        })
    }

    /// Subscribe to `plugin`'s events on `topic`; with `replay`, the
    /// retained ones after `after` come first.
    pub fn subscribe(&self, plugin: &str, topic: &str, replay: bool, after: u64) -> Subscription {
        self.with_channel(plugin, |c| Subscription {
            // Taken under the same lock as the receiver: nothing is missed
            // or seen twice between the replay and the live events.
            replay: if replay {
                c.retained
                    .iter()
                    .filter(|e| &*e.topic == topic && e.seq > after)
                    .cloned()
                    .collect()
            } else {
                VecDeque::new()
            },
            live: c.sender.subscribe(),
        })
    }
}

fn check_event(topic: &str, payload: &[u8]) -> Result<(), WitError> {
    if topic.is_empty() || topic.len() > MAX_TOPIC {
        return Err(WitError::Invalid(format!(
            "a topic is 1 to {MAX_TOPIC} bytes"
        )));
    }
    if payload.len() > MAX_PAYLOAD {
        return Err(WitError::Invalid(format!(
            "an event payload is at most {MAX_PAYLOAD} bytes"
        )));
    }
    Ok(())
}

/// What `events` sees of a call: the caller and the host's channels.
pub struct EventsView<'a> {
    caller: Caller<'a>,
    events: &'a Events,
    /// The call's opened streams.
    opened: &'a mut Opened,
}

/// Links `events` to [`EventsView`].
pub struct EventsCap;

impl HasData for EventsCap {
    type Data<'a> = EventsView<'a>;
}

impl CallCx {
    pub fn events(&mut self) -> EventsView<'_> {
        let (caller, env, _, opened) = self.split_streams();
        EventsView {
            caller,
            events: &env.events,
            opened,
        }
    }
}

impl EventsView<'_> {
    fn publish_event(
        &mut self,
        topic: String,
        payload: Vec<u8>,
        closing: bool,
    ) -> Result<u64, WitError> {
        self.caller.acted("a published event");
        self.caller.check(Capability::Events)?;
        check_event(&topic, &payload)?;
        let plugin = self.caller.plugin();
        Ok(self
            .events
            .publish(plugin, &topic, Bytes::from(payload), closing))
    }
}

impl Host for EventsView<'_> {
    async fn publish(&mut self, topic: String, payload: Vec<u8>) -> Result<u64, HostError> {
        Ok(self.publish_event(topic, payload, false)?)
    }

    async fn close(&mut self, topic: String, payload: Vec<u8>) -> Result<u64, HostError> {
        Ok(self.publish_event(topic, payload, true)?)
    }

    async fn open_messages(&mut self, messages: Vec<Vec<u8>>) -> Result<String, HostError> {
        self.caller.check(Capability::Events)?;
        if let Some(large) = messages.iter().find(|m| m.len() > MAX_PAYLOAD) {
            return Err(WitError::Invalid(format!(
                "a message is at most {MAX_PAYLOAD} bytes, not {}",
                large.len()
            ))
            .into());
        }
        let messages = messages.into_iter().map(Bytes::from).collect();
        Ok(self.opened.add(OpenStream::Messages(messages)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_then_live_without_gaps_or_repeats() {
        let events = Events::default();
        events.publish("p", "a", Bytes::from_static(b"1"), false);
        events.publish("p", "b", Bytes::from_static(b"x"), false);
        events.publish("p", "a", Bytes::from_static(b"2"), false);
        let mut sub = events.subscribe("p", "a", true, 1);
        let replayed: Vec<u64> = sub.replay.iter().map(|e| e.seq).collect();
        assert_eq!(replayed, [3], "only topic a, after sequence 1");
        events.publish("p", "a", Bytes::from_static(b"3"), true);
        let live = sub.live.try_recv().unwrap();
        assert_eq!((live.seq, live.closing), (4, true));
        // Another plugin's channel is separate.
        assert_eq!(events.publish("q", "a", Bytes::new(), false), 1);
    }

    #[test]
    fn retention_and_lag_are_bounded() {
        let events = Events::default();
        let mut slow = events.subscribe("p", "t", false, 0);
        for _ in 0..RETAINED + LAG_LIMIT + 10 {
            events.publish("p", "t", Bytes::from_static(b"e"), false);
        }
        assert_eq!(events.subscribe("p", "t", true, 0).replay.len(), RETAINED);
        assert!(matches!(
            slow.live.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(_))
        ));
    }
}
