//! Engine event followers: a plugin asks to follow an endpoint's events
//! into a topic or as jobs; followers are kept in the host's metadata and
//! started again when the plugin is mounted.
//!
//! In a fleet every replica starts the plugin's followers, and each
//! follower follows only while it holds its lease in the store (renewed
//! every [`FOLLOW_RENEW`], lapsing after [`FOLLOW_LEASE`]), so each engine
//! event is delivered once, not once per replica. The holder saves how far
//! it got with each renewal; when it dies, the next holder asks the engine
//! for the events from there (the few delivered since the last renewal
//! are delivered again: at least once, never lost).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde::{Deserialize, Serialize};

use super::framing::JsonLines;
use super::ops::{filters_json, target};
use super::{Docker, error_text};
use crate::bindings::docker::{DockerError, Filters};
use crate::capability::Capability;

/// How long a follower's lease lasts without renewal.
const FOLLOW_LEASE: Duration = Duration::from_secs(10);
/// How often the follower renews it, and a waiting one asks for it.
const FOLLOW_RENEW: Duration = Duration::from_secs(2);

/// Host metadata namespace of a plugin's event followers, restored when
/// the plugin is mounted again (after a restart, say).
pub(super) const FOLLOW_NS: &str = "docker-follow";

/// A follower as stored: enough to start it again.
#[derive(Serialize, Deserialize)]
pub(super) struct FollowRecord {
    pub(super) endpoint: String,
    pub(super) filters: Filters,
    pub(super) sink: SinkSpec,
}

/// Where a follower delivers, without the host handles to do it.
#[derive(Clone, Serialize, Deserialize)]
pub(super) enum SinkSpec {
    /// Published on this topic of the plugin.
    Topic(String),
    /// Queued as jobs of this kind.
    Job(String),
}

impl SinkSpec {
    /// Tells followers of one plugin and endpoint apart.
    pub(super) fn key(&self) -> String {
        match self {
            SinkSpec::Topic(topic) => format!("topic:{topic}"),
            SinkSpec::Job(kind) => format!("job:{kind}"),
        }
    }
}

/// Where a follower delivers engine events.
pub enum EventSink {
    /// Publish each event on one of the plugin's topics.
    Publish {
        events: Arc<crate::caps::events::Events>,
        topic: String,
    },
    /// Queue each event as a job of `kind` for the plugin.
    Jobs {
        db: Arc<crate::store::Store>,
        kind: String,
    },
}

impl EventSink {
    pub(super) fn spec(&self) -> SinkSpec {
        match self {
            EventSink::Publish { topic, .. } => SinkSpec::Topic(topic.clone()),
            EventSink::Jobs { kind, .. } => SinkSpec::Job(kind.clone()),
        }
    }

    pub(super) async fn deliver(&self, plugin: &str, payload: Bytes) {
        match self {
            EventSink::Publish { events, topic } => {
                if let Err(e) = events.publish(plugin, topic, payload, false).await {
                    tracing::warn!(%plugin, error = %e, "cannot publish an engine event");
                }
            }
            EventSink::Jobs { db, kind } => {
                let mut txn = db.begin(plugin);
                let queued = match txn.enqueue(kind, &payload, 0).await {
                    Ok(_) => txn.commit().await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                if let Err(e) = queued {
                    tracing::warn!(%plugin, error = %e, "cannot queue an engine event as a job");
                }
            }
        }
    }
}

impl Docker {
    /// Follow `endpoint`'s events into `sink`, once per (plugin, endpoint,
    /// sink), reconnecting until the host exits; remember that, so the
    /// follower comes back with the plugin after a restart.
    pub(super) async fn follow(
        &self,
        plugin: &str,
        endpoint: &str,
        filters: Filters,
        sink: EventSink,
    ) -> Result<(), DockerError> {
        let record = FollowRecord {
            endpoint: endpoint.to_string(),
            filters: filters.clone(),
            sink: sink.spec(),
        };
        if !self
            .start_following(plugin, endpoint, filters, sink)
            .await?
        {
            return Ok(());
        }
        let value = serde_json::to_vec(&record).expect("a record serialises");
        self.db
            .meta_set(
                &format!("{FOLLOW_NS}:{plugin}"),
                &format!("{endpoint} {}", record.sink.key()),
                value,
            )
            .await
            .map_err(|e| DockerError::Unreachable(format!("storage: {e}")))
    }

    /// Start the followers `env`'s plugin had, as far as its grants still
    /// allow. Ones already running are left alone.
    pub async fn restore_followers(&self, env: &crate::caps::PluginEnv) {
        if !env.granted.contains(Capability::Docker) {
            return;
        }
        let records = match self
            .db
            .meta_list(&format!("{FOLLOW_NS}:{}", env.name))
            .await
        {
            Ok(records) => records,
            Err(e) => {
                tracing::warn!(plugin = %env.name, error = %e, "cannot read the event followers");
                return;
            }
        };
        for (_, value) in records {
            let Ok(record) = serde_json::from_slice::<FollowRecord>(&value) else {
                continue;
            };
            let sink = match record.sink {
                SinkSpec::Topic(topic) if env.granted.contains(Capability::Events) => {
                    EventSink::Publish {
                        events: env.services.events.clone(),
                        topic,
                    }
                }
                SinkSpec::Job(kind) if env.granted.contains(Capability::Jobs) => EventSink::Jobs {
                    db: env.services.db.clone(),
                    kind,
                },
                _ => continue,
            };
            if let Err(e) = self
                .start_following(&env.name, &record.endpoint, record.filters, sink)
                .await
            {
                tracing::warn!(plugin = %env.name, endpoint = %record.endpoint, error = %error_text(&e), "cannot follow the engine's events again");
            }
        }
    }

    /// Start a follower unless the same one runs; whether it was started.
    pub(super) async fn start_following(
        &self,
        plugin: &str,
        endpoint: &str,
        filters: Filters,
        sink: EventSink,
    ) -> Result<bool, DockerError> {
        let engine = self.engine(plugin, endpoint).await?;
        let key = (plugin.to_string(), endpoint.to_string(), sink.spec().key());
        let mut followers = self.followers.lock().unwrap_or_else(|p| p.into_inner());
        if followers.get(&key).is_some_and(|f| !f.is_finished()) {
            return Ok(false);
        }
        let plugin = key.0.clone();
        let fleet = self.db.shared().then(|| self.db.clone());
        let lease = format!("docker-follow {plugin} {endpoint} {}", key.2);
        let holder = self.holder.clone();
        // The follower's events are those from now on, whenever its stream
        // connects: the first connection asks the engine for the events
        // since the follower started, each later one for those after the
        // last it delivered. The engine replays what it still keeps, so a
        // slow connection or a reconnection loses nothing in between.
        let mut since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        let task = tokio::spawn(async move {
            let mut backoff = Duration::from_millis(500);
            let mut held = false;
            loop {
                if let Some(db) = &fleet {
                    match db.lease(&lease, &holder, FOLLOW_LEASE, None).await {
                        Ok(Some(cursor)) => {
                            // Taken over: from where the last holder got to.
                            if !held && cursor > 0 {
                                since = cursor;
                            }
                            held = true;
                        }
                        Ok(None) => {
                            held = false;
                            tokio::time::sleep(FOLLOW_RENEW).await;
                            continue;
                        }
                        Err(e) => {
                            held = false;
                            tracing::debug!(%plugin, error = %e, "cannot take an event follower's lease");
                            tokio::time::sleep(FOLLOW_RENEW).await;
                            continue;
                        }
                    }
                }
                let since_text = format!(
                    "{}.{:09}",
                    since.div_euclid(1_000_000_000),
                    since.rem_euclid(1_000_000_000)
                );
                let options = [
                    ("filters", filters_json(filters.clone())),
                    ("since", Some(since_text)),
                ];
                match engine
                    .call(&Method::GET, &target("/events", &options), None)
                    .await
                {
                    Ok(answer) => {
                        let mut stream = JsonLines::new(answer.body);
                        let mut renew = tokio::time::interval_at(
                            tokio::time::Instant::now() + FOLLOW_RENEW,
                            FOLLOW_RENEW,
                        );
                        loop {
                            let event = tokio::select! {
                                event = stream.next_raw() => event,
                                _ = renew.tick(), if fleet.is_some() => {
                                    let db = fleet.as_ref().expect("in a fleet");
                                    match db.lease(&lease, &holder, FOLLOW_LEASE, Some(since)).await {
                                        Ok(Some(_)) => continue,
                                        // Lost, or cannot tell: stop until it is ours again.
                                        _ => {
                                            held = false;
                                            break;
                                        }
                                    }
                                }
                            };
                            let Some(event) = event else { break };
                            match event {
                                Ok((event, text)) => {
                                    backoff = Duration::from_millis(500);
                                    if let Some(at) = event["timeNano"].as_i64() {
                                        since = at + 1;
                                    }
                                    sink.deliver(&plugin, text).await;
                                }
                                Err(e) => {
                                    tracing::debug!(%plugin, error = %e, "engine event stream ended");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        tracing::debug!(%plugin, error = %error_text(&e), "engine events unavailable")
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        });
        followers.insert(key, task.abort_handle());
        Ok(true)
    }

    /// Stop `plugin`'s engine event followers: all of them, or those on
    /// one endpoint. Called when the plugin is unmounted or forgets an
    /// endpoint, so nothing keeps queueing its jobs.
    pub fn stop_following(&self, plugin: &str, endpoint: Option<&str>) {
        self.followers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(p, e, _), task| {
                let stop = p == plugin && endpoint.is_none_or(|ep| ep == e);
                if stop {
                    task.abort();
                }
                !stop
            });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::DockerConfig;

    #[tokio::test]
    async fn followers_stop_with_their_plugin_or_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::Store::open(&dir.path().join("db.redb")).unwrap();
        let config = DockerConfig {
            local: format!("unix://{}", dir.path().join("none.sock").display()),
            timeout_ms: 1000,
            allow: Vec::new(),
            max_proxy_streams: 1,
            max_plugin_streams: 1,
            endpoints: BTreeMap::new(),
        };
        let docker = Docker::new(&config, db).unwrap();
        let sink = |topic: &str| EventSink::Publish {
            events: Arc::default(),
            topic: topic.into(),
        };
        // Followers keep retrying an engine that is not there.
        for (plugin, topic) in [("a", "x"), ("a", "y"), ("b", "x")] {
            docker
                .follow(plugin, "local", Vec::new(), sink(topic))
                .await
                .unwrap();
        }
        let handles: Vec<_> = docker.followers.lock().unwrap().values().cloned().collect();
        assert_eq!(handles.len(), 3);
        docker.stop_following("a", Some("elsewhere"));
        assert_eq!(docker.followers.lock().unwrap().len(), 3);
        docker.stop_following("a", None);
        let left: Vec<_> = docker.followers.lock().unwrap().keys().cloned().collect();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0, "b");
        tokio::task::yield_now().await;
        let finished = handles.iter().filter(|h| h.is_finished()).count();
        assert_eq!(finished, 2, "the two followers of `a` were aborted");
        docker.stop_following("b", Some("local"));
        assert!(docker.followers.lock().unwrap().is_empty());
    }
}
