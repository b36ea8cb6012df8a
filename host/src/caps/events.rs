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
    /// Numbers given to events that wait for their call's commit (None),
    /// and events published after them (Some), which wait their turn:
    /// events go out in the order of their numbers, so a subscriber never
    /// sees a number before a smaller one, and `after` loses nothing.
    held: std::collections::BTreeMap<u64, Option<Event>>,
}

impl Channel {
    /// Send `event` now, or behind the events still held before it.
    fn send(&mut self, event: Event) {
        if self.held.is_empty() {
            self.deliver(event);
        } else {
            self.held.insert(event.seq, Some(event));
            self.flush();
        }
    }

    /// Send the held events that are no longer waiting, in order.
    fn flush(&mut self) {
        while let Some(mut first) = self.held.first_entry() {
            match first.get_mut().take() {
                Some(event) => {
                    first.remove();
                    self.deliver(event);
                }
                None => break,
            }
        }
    }

    fn deliver(&mut self, event: Event) {
        if self.retained.len() == RETAINED {
            self.retained.pop_front();
        }
        self.retained.push_back(event.clone());
        // No receivers is fine: nobody is listening yet.
        let _ = self.sender.send(event);
    }
}

/// An event with its number, waiting for its call's commit: sent by
/// [`Pending::send`], or, dropped unsent (the call rolled back), its number
/// is skipped.
pub struct Pending {
    events: Arc<Events>,
    plugin: String,
    event: Option<Event>,
}

impl Pending {
    pub fn seq(&self) -> u64 {
        self.event.as_ref().map_or(0, |e| e.seq)
    }

    pub fn send(mut self) {
        if let Some(event) = self.event.take() {
            self.events.with_channel(&self.plugin, |c| {
                c.held.remove(&event.seq);
                c.send(event);
            });
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(event) = self.event.take() {
            self.events.with_channel(&self.plugin, |c| {
                c.held.remove(&event.seq);
                c.flush();
            });
        }
    }
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
                held: Default::default(),
            });
        f(channel)
    }

    /// Publish an event of `plugin`; its sequence number.
    pub fn publish(&self, plugin: &str, topic: &str, payload: Bytes, closing: bool) -> u64 {
        self.with_channel(plugin, |c| {
            let seq = c.next_seq;
            c.next_seq += 1;
            c.send(Event {
                seq,
                topic: Arc::from(topic),
                payload,
                closing,
            });
            seq
        })
    }

    /// Number an event of `plugin` now and hold it (and every event of
    /// `plugin` numbered after it) until it is sent or dropped.
    pub fn hold(
        self: &Arc<Self>,
        plugin: &str,
        topic: &str,
        payload: Bytes,
        closing: bool,
    ) -> Pending {
        let seq = self.with_channel(plugin, |c| {
            let seq = c.next_seq;
            c.next_seq += 1;
            c.held.insert(seq, None);
            seq
        });
        Pending {
            events: self.clone(),
            plugin: plugin.to_string(),
            event: Some(Event {
                seq,
                topic: Arc::from(topic),
                payload,
                closing,
            }),
        }
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
    events: &'a Arc<Events>,
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
    /// Publish: numbered now, sent at the call's commit while the call may
    /// still run again (not sent if it rolls back), else at once.
    fn publish_event(
        &mut self,
        topic: String,
        payload: Vec<u8>,
        closing: bool,
    ) -> Result<u64, WitError> {
        self.caller.check(Capability::Events)?;
        check_event(&topic, &payload)?;
        let plugin = self.caller.plugin();
        let pending = self
            .events
            .hold(plugin, &topic, Bytes::from(payload), closing);
        let seq = pending.seq();
        self.caller.defer(Box::new(move || pending.send()));
        Ok(seq)
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
    fn held_events_go_out_in_number_order_and_dropped_ones_are_skipped() {
        let events = Arc::new(Events::default());
        let mut sub = events.subscribe("p", "t", false, 0);
        let first = events.hold("p", "t", Bytes::from_static(b"1"), false);
        let rolled_back = events.hold("p", "t", Bytes::from_static(b"2"), false);
        assert_eq!(events.publish("p", "t", Bytes::from_static(b"3"), false), 3);
        assert!(sub.live.try_recv().is_err(), "3 waits behind 1 and 2");
        first.send();
        assert_eq!(sub.live.try_recv().unwrap().seq, 1);
        assert!(sub.live.try_recv().is_err(), "3 still waits behind 2");
        drop(rolled_back);
        assert_eq!(sub.live.try_recv().unwrap().seq, 3, "2 was never sent");
        let replay = events.subscribe("p", "t", true, 0).replay;
        let seqs: Vec<u64> = replay.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 3]);
    }

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
