//! The engine side of proxying (the `proxy-docker` outcome and log
//! streams): the engine a plugin proxies to, a stream's slot under the
//! host's and the plugin's caps, and one exchange with the engine — the
//! client's request sent (its body streaming as it arrives when it is
//! larger than the plugin reads), the engine's answer head and body back.
//! Serving that answer to the client is `answer::proxy`'s.

use std::sync::Arc;

use http::{HeaderValue, header};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::wire::{Answer, SendError, Streamed};
use super::{Docker, Engine, error_text};
use crate::bindings::docker::DockerError;
use crate::metrics::{PluginMetrics, Proxying};

/// Why a proxied request got no answer from the engine.
#[derive(Debug)]
pub enum ProxyError {
    /// The plugin may not use Docker or this endpoint.
    Refused(String),
    /// No endpoint of that name.
    Unknown(String),
    /// The engine did not answer.
    Unreachable(String),
    /// Too many proxied streams are open, for all or for this plugin.
    Busy,
    /// The client's body failed or paused too long.
    BadBody(String),
    /// The client's body is over the plugin's limit.
    TooLarge(u64),
}

/// A proxied stream's place under the host's and its plugin's caps, and
/// in the plugin's gauge, until it is dropped.
pub struct Slot {
    _all: OwnedSemaphorePermit,
    _plugin: OwnedSemaphorePermit,
    _gauge: Proxying,
}

impl Docker {
    /// The engine `plugin` proxies to as `endpoint`.
    pub async fn proxied_engine(
        &self,
        plugin: &str,
        endpoint: &str,
    ) -> Result<Arc<Engine>, ProxyError> {
        self.engine(plugin, endpoint).await.map_err(|e| match e {
            DockerError::Unreachable(m) => ProxyError::Unreachable(m),
            DockerError::UnknownEndpoint(m) => ProxyError::Unknown(m),
            other => ProxyError::Refused(error_text(&other)),
        })
    }

    /// A stream slot for `plugin`, if the caps allow one more.
    pub fn slot(&self, plugin: &str, metrics: &Arc<PluginMetrics>) -> Result<Slot, ProxyError> {
        let all = self.streams.clone().try_acquire_owned();
        let all = all.map_err(|_| ProxyError::Busy)?;
        let mine = {
            let mut plugins = self
                .plugin_streams
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let max = self.config.max_plugin_streams as usize;
            let semaphore = plugins
                .entry(plugin.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(max)));
            semaphore.clone()
        };
        let mine = mine.try_acquire_owned().map_err(|_| ProxyError::Busy)?;
        Ok(Slot {
            _all: all,
            _plugin: mine,
            _gauge: metrics.proxying(),
        })
    }

    /// Send the client's request (`target`: path and query) to `engine`.
    /// A whole body on a kept connection; a streaming one, or an upgrade,
    /// on a connection of its own.
    pub async fn exchange(
        &self,
        engine: &Engine,
        parts: &http::request::Parts,
        target: &str,
        upgrade: Option<&HeaderValue>,
        body: Streamed,
    ) -> Result<Answer, ProxyError> {
        let mut headers = parts.headers.clone();
        strip_hop_by_hop(&mut headers);
        // The client's credentials for Berth's plugin, never the engine's.
        headers.remove(header::AUTHORIZATION);
        headers.remove(header::COOKIE);
        headers.remove("x-api-key");
        // A URL endpoint's own headers (its token), checked when registered.
        for (name, value) in &engine.spec.headers {
            let name = http::HeaderName::try_from(name.as_str());
            let value = HeaderValue::try_from(value.as_str());
            if let (Ok(name), Ok(value)) = (name, value) {
                headers.insert(name, value);
            }
        }
        let prefixed;
        let target = match engine.prefix() {
            "" => target,
            prefix => {
                prefixed = format!("{prefix}{target}");
                &prefixed
            }
        };
        let address = &engine.spec.address;
        let late = || {
            ProxyError::Unreachable(format!(
                "{address} did not answer within {} ms",
                self.config.timeout_ms
            ))
        };
        let method = &parts.method;
        if upgrade.is_none() && body.rest.is_none() {
            let send = engine.wire.send(method, target, &headers, &body.first);
            return tokio::time::timeout(self.timeout(), send)
                .await
                .map_err(|_| late())?
                .map_err(|e| ProxyError::Unreachable(format!("{address}: {e}")));
        }
        let send =
            engine
                .wire
                .send_streamed(method, target, &headers, upgrade, body, self.timeout());
        send.await.map_err(|e| match e {
            SendError::Engine(e) => ProxyError::Unreachable(format!("{address}: {e}")),
            SendError::Late => late(),
            SendError::Client(m) => ProxyError::BadBody(m),
            SendError::TooLarge(limit) => ProxyError::TooLarge(limit),
        })
    }
}

/// Remove the headers that belong to one connection, not the message.
pub fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(name);
    }
}
