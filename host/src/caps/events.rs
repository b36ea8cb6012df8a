//! `events`: per-plugin publish with fan-out to subscribed clients.
//!
//! Each plugin has one broadcast channel (bounded: a subscriber that falls
//! more than [`LAG_LIMIT`] events behind is dropped with a closing
//! message) and a ring of the last [`RETAINED`] events, replayed to
//! subscribers that ask for it. Memory is bounded by both, whatever the
//! clients do.
//!
//! On a shared store (a fleet), events are the fleet's: each is numbered
//! and kept in the store (held ones until their call commits), and every
//! replica's [`Events::pump`] sends them, in number order, to its own
//! subscribers, woken by the store (LISTEN/NOTIFY) and looking every
//! [`LOOK_EVERY`] besides. So a client sees the same numbers, and replays
//! the same events, whichever replica it reached.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::broadcast;
use wasmtime::component::{HasData, Linker};

use crate::bindings::HostError;
use crate::bindings::events::Host;
use crate::bindings::types::Error as WitError;
use crate::capability::Capability;
use crate::caps::{CallCx, Caller, HasCall, OpenStream, Opened, Unit};
use crate::store::{Store, StoreError, StoredEvent, now_ms};

/// Events a subscriber may fall behind before it is dropped.
pub const LAG_LIMIT: usize = 1024;
/// Events kept per plugin for replay.
pub const RETAINED: usize = 1024;
/// Largest payload of one event: with the two bounds above, at most
/// 2 x 1024 x 64 KiB are held per plugin whatever clients do.
pub const MAX_PAYLOAD: usize = 64 << 10;
/// Longest topic name.
const MAX_TOPIC: usize = 256;
/// How often a replica of a fleet looks for events besides its wake-ups.
pub const LOOK_EVERY: Duration = Duration::from_secs(1);
/// A fleet's events kept per plugin in the store.
const KEPT_IN_STORE: u64 = 4 * RETAINED as u64;
/// How long past its call's deadline a held event of a fleet may wait
/// (its replica died before it was settled): then it is skipped.
const HELD_PAST_DEADLINE: Duration = Duration::from_secs(5);

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
            self.settle(event, true);
        }
    }

    fn settle(&self, event: Event, send: bool) {
        match &self.events.fleet {
            Some(db) => settle_in_store(db.clone(), self.plugin.clone(), event.seq, send),
            None => self.events.with_channel(&self.plugin, |c| {
                c.held.remove(&event.seq);
                if send {
                    c.send(event);
                } else {
                    c.flush();
                }
            }),
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(event) = self.event.take() {
            self.settle(event, false);
        }
    }
}

/// Tell the fleet's store that a held event is sent or dropped; if that
/// fails, the event is skipped once its hold lapses.
fn settle_in_store(db: Arc<Store>, plugin: String, seq: u64, send: bool) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        if let Err(e) = db.event_settled(&plugin, seq, send).await {
            tracing::warn!(%plugin, seq, error = %e, "cannot settle a held event in the store");
        }
    });
}

/// Every plugin's channel.
#[derive(Default)]
pub struct Events {
    channels: Mutex<HashMap<String, Channel>>,
    /// A shared store, whose events these are (see the module's docs).
    fleet: Option<Arc<Store>>,
    /// In a fleet: per plugin, the last number sent to subscribers here.
    cursors: tokio::sync::Mutex<HashMap<String, u64>>,
}

/// A live subscription: replayed events first, then the channel's.
pub struct Subscription {
    pub replay: VecDeque<Event>,
    pub live: broadcast::Receiver<Event>,
    /// Events numbered up to this are not for this subscriber, live ones
    /// included (in a fleet, an event held for its call when the replay was
    /// taken arrives live, maybe after the client already saw its number).
    pub after: u64,
}

impl Events {
    /// Events on `db`: a fleet's when the store is shared, else this
    /// Berth's own.
    pub fn new(db: &Arc<Store>) -> Events {
        Events {
            fleet: db.shared().then(|| db.clone()),
            ..Events::default()
        }
    }

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
    pub async fn publish(
        &self,
        plugin: &str,
        topic: &str,
        payload: Bytes,
        closing: bool,
    ) -> Result<u64, StoreError> {
        if let Some(db) = &self.fleet {
            return db.event(plugin, topic, &payload, closing, None).await;
        }
        Ok(self.publish_here(plugin, topic, payload, closing))
    }

    fn publish_here(&self, plugin: &str, topic: &str, payload: Bytes, closing: bool) -> u64 {
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
    /// `plugin` numbered after it) until it is sent or dropped, or (in a
    /// fleet) a little past `deadline`.
    pub async fn hold(
        self: &Arc<Self>,
        plugin: &str,
        topic: &str,
        payload: Bytes,
        closing: bool,
        deadline: Instant,
    ) -> Result<Pending, StoreError> {
        let seq = match &self.fleet {
            Some(db) => {
                let left = deadline.saturating_duration_since(Instant::now()) + HELD_PAST_DEADLINE;
                let until = now_ms().saturating_add(left.as_millis() as u64);
                db.event(plugin, topic, &payload, closing, Some(until))
                    .await?
            }
            None => self.with_channel(plugin, |c| {
                let seq = c.next_seq;
                c.next_seq += 1;
                c.held.insert(seq, None);
                seq
            }),
        };
        Ok(Pending {
            events: self.clone(),
            plugin: plugin.to_string(),
            event: Some(Event {
                seq,
                topic: Arc::from(topic),
                payload,
                closing,
            }),
        })
    }

    /// Subscribe to `plugin`'s events on `topic`; with `replay`, the
    /// retained ones after `after` come first. In a fleet, every event
    /// sent before this is among them, whichever replica published it.
    pub async fn subscribe(
        &self,
        plugin: &str,
        topic: &str,
        replay: bool,
        after: u64,
    ) -> Subscription {
        if replay && let Err(e) = self.catch_up().await {
            tracing::warn!(%plugin, error = %e, "cannot read the fleet's events to replay");
        }
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
            after: if replay { after } else { 0 },
        })
    }
}

impl Events {
    /// Send a fleet's events to this replica's subscribers until
    /// `shutdown` flips (nothing to do on the embedded store).
    pub async fn pump(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let Some(db) = self.fleet.clone() else {
            return;
        };
        let mut wakeups = None;
        let mut look = tokio::time::interval(LOOK_EVERY);
        let mut trimmed = Instant::now();
        loop {
            if wakeups.is_none() {
                match db.event_wakeups().await {
                    Ok(w) => wakeups = Some(w),
                    Err(e) => tracing::debug!(error = %e, "cannot listen for the fleet's events"),
                }
            }
            tokio::select! {
                _ = look.tick() => {}
                woken = woken(&mut wakeups) => if !woken {
                    wakeups = None;
                },
                _ = shutdown.changed() => return,
            }
            if let Err(e) = self.catch_up().await {
                tracing::debug!(error = %e, "cannot read the fleet's events");
            }
            if trimmed.elapsed() > Duration::from_secs(60) {
                trimmed = Instant::now();
                if let Err(e) = db.events_trim(KEPT_IN_STORE).await {
                    tracing::debug!(error = %e, "cannot trim the fleet's events");
                }
            }
        }
    }

    /// Send the fleet's events this replica has not sent yet, in number
    /// order per plugin, stopping at one still held for its call. A plugin
    /// first seen starts with its last [`RETAINED`], for replay.
    pub async fn catch_up(&self) -> Result<(), StoreError> {
        const PAGE: usize = 512;
        let Some(db) = &self.fleet else {
            return Ok(());
        };
        let mut cursors = self.cursors.lock().await;
        for (plugin, last) in db.event_heads().await? {
            let cursor = cursors
                .entry(plugin.clone())
                .or_insert_with(|| last.saturating_sub(RETAINED as u64));
            while *cursor < last {
                let page = db.events_after(&plugin, *cursor, last, PAGE).await?;
                let full = page.len() == PAGE;
                let now = now_ms();
                let mut held = false;
                for stored in page {
                    match stored.held_until {
                        Some(until) if until > now => {
                            held = true;
                            break;
                        }
                        // Its replica died holding it: skipped.
                        Some(_) => {}
                        None => self.with_channel(&plugin, |c| c.deliver(event_of(stored.clone()))),
                    }
                    *cursor = stored.seq;
                }
                if held {
                    break;
                }
                if !full {
                    // The numbers after the last kept one were dropped.
                    *cursor = last;
                }
            }
        }
        Ok(())
    }
}

/// The next wake-up, if listening; false when the listener ended.
async fn woken(wakeups: &mut Option<crate::store::Wakeups>) -> bool {
    match wakeups {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

fn event_of(stored: StoredEvent) -> Event {
    Event {
        seq: stored.seq,
        topic: Arc::from(stored.topic),
        payload: Bytes::from(stored.payload),
        closing: stored.closing,
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

plugin_sees_errors!(EventsView<'_>);

impl Unit for EventsCap {
    fn view(call: &mut CallCx) -> EventsView<'_> {
            let (caller, env, _, opened) = call.split_streams();
            EventsView {
                caller,
                events: &env.services.events,
                opened,
            }
    }

    fn link<T: HasCall>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        crate::bindings::events::add_to_linker::<T, Self>(linker, |s| Self::view(s.call()))
    }
}

impl EventsView<'_> {
    /// Publish: numbered now, sent at the call's commit while the call may
    /// still run again (not sent if it rolls back), else at once.
    async fn publish_event(
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
            .hold(
                plugin,
                &topic,
                Bytes::from(payload),
                closing,
                self.caller.deadline(),
            )
            .await
            .map_err(|e| WitError::Unavailable(format!("cannot publish: {e}")))?;
        let seq = pending.seq();
        self.caller.defer(Box::new(move || pending.send()));
        Ok(seq)
    }
}

impl Host for EventsView<'_> {
    async fn publish(&mut self, topic: String, payload: Vec<u8>) -> Result<u64, HostError> {
        Ok(self.publish_event(topic, payload, false).await?)
    }

    async fn close(&mut self, topic: String, payload: Vec<u8>) -> Result<u64, HostError> {
        Ok(self.publish_event(topic, payload, true).await?)
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

    #[tokio::test]
    async fn held_events_go_out_in_number_order_and_dropped_ones_are_skipped() {
        let events = Arc::new(Events::default());
        let mut sub = events.subscribe("p", "t", false, 0).await;
        let hold = |payload: &'static [u8]| {
            events.hold("p", "t", Bytes::from_static(payload), false, Instant::now())
        };
        let first = hold(b"1").await.unwrap();
        let rolled_back = hold(b"2").await.unwrap();
        assert_eq!(
            events.publish_here("p", "t", Bytes::from_static(b"3"), false),
            3
        );
        assert!(sub.live.try_recv().is_err(), "3 waits behind 1 and 2");
        first.send();
        assert_eq!(sub.live.try_recv().unwrap().seq, 1);
        assert!(sub.live.try_recv().is_err(), "3 still waits behind 2");
        drop(rolled_back);
        assert_eq!(sub.live.try_recv().unwrap().seq, 3, "2 was never sent");
        let replay = events.subscribe("p", "t", true, 0).await.replay;
        let seqs: Vec<u64> = replay.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 3]);
    }

    #[tokio::test]
    async fn replay_then_live_without_gaps_or_repeats() {
        let events = Events::default();
        events.publish_here("p", "a", Bytes::from_static(b"1"), false);
        events.publish_here("p", "b", Bytes::from_static(b"x"), false);
        events.publish_here("p", "a", Bytes::from_static(b"2"), false);
        let mut sub = events.subscribe("p", "a", true, 1).await;
        let replayed: Vec<u64> = sub.replay.iter().map(|e| e.seq).collect();
        assert_eq!(replayed, [3], "only topic a, after sequence 1");
        events.publish_here("p", "a", Bytes::from_static(b"3"), true);
        let live = sub.live.try_recv().unwrap();
        assert_eq!((live.seq, live.closing), (4, true));
        // Another plugin's channel is separate.
        assert_eq!(events.publish_here("q", "a", Bytes::new(), false), 1);
    }

    #[tokio::test]
    async fn retention_and_lag_are_bounded() {
        let events = Events::default();
        let mut slow = events.subscribe("p", "t", false, 0).await;
        for _ in 0..RETAINED + LAG_LIMIT + 10 {
            events.publish_here("p", "t", Bytes::from_static(b"e"), false);
        }
        assert_eq!(
            events.subscribe("p", "t", true, 0).await.replay.len(),
            RETAINED
        );
        assert!(matches!(
            slow.live.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(_))
        ));
    }
}
