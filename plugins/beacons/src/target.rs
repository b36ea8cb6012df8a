//! Beacons, their instances, and how to reach an instance's Docker engine.
//!
//! A beacon is an agent in front of Docker engines ("instances"). The
//! reserved address `local` is this host's own agent: its instances are
//! reached through the `docker` capability. Any other address is a remote
//! agent (another Berth, or a Lighthouse beacon), reached with `http-out`
//! at `http://ADDRESS/vms` and `http://ADDRESS/d/{instance}/{docker path}`,
//! with the beacon's token in the `Token` header.

use berth_sdk::bindings::berth::plugin::http_out::{HttpError, Outgoing};
use berth_sdk::docker::{self, DockerError};
use berth_sdk::{config, http_out, percent_encode};
use serde::{Deserialize, Serialize};

use crate::agent::{self, Vm};

/// The address of this host's own beacon agent.
pub const LOCAL: &str = "local";

/// Seconds a container gets to stop before it is killed, unless the
/// `stop_timeout_secs` setting says otherwise.
const STOP_SECS: u32 = 10;
/// Longest wait for a remote pull.
const PULL_MS: u32 = 600_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Beacon {
    pub address: String,
    pub alias: String,
    pub token: String,
    pub instances: Vec<Instance>,
}

/// One instance as `GET /beacons/list/{beacon}` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Instance {
    pub alias: String,
    pub instance_address: String,
    pub name: String,
    pub can_access_docker: bool,
    pub beacon_address: String,
}

/// Where an instance's Docker calls go.
pub enum Target {
    Local { endpoint: String },
    Remote(Remote),
}

/// An instance behind a remote beacon.
pub struct Remote {
    /// The beacon's base URL.
    pub base: String,
    pub token: String,
    /// The instance's name at the beacon.
    pub name: String,
}

/// A Docker API call for a remote instance.
pub struct Call<'a> {
    pub method: &'a str,
    pub path_and_query: &'a str,
    pub content_type: Option<&'a str>,
    pub body: Vec<u8>,
    /// 0: the operator's default.
    pub timeout_ms: u32,
}

impl Remote {
    /// The host's URL endpoint for this instance (its beacon's
    /// `/d/{instance}` with the token), registered (or refreshed) now, for
    /// `proxy-docker`.
    pub fn endpoint(&self) -> Result<String, String> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
        let name: String = format!("beacon.{}.{}", self.base, self.name)
            .chars()
            .map(|c| if allowed(c) { c } else { '_' })
            .take(128)
            .collect();
        let url = format!("{}/d/{}", self.base, percent_encode(&self.name));
        let headers = [("token".to_string(), self.token.clone())];
        docker::register_url_endpoint(&name, &url, &headers).map_err(|e| {
            format!(
                "the beacon at {} cannot be reached: {}",
                self.base,
                docker::error_text(&e)
            )
        })?;
        Ok(name)
    }

    /// Send a Docker API call to the instance through its beacon.
    pub fn send(&self, call: Call) -> Result<http_out::Incoming, String> {
        let mut headers = vec![("token".to_string(), self.token.clone())];
        if let Some(ct) = call.content_type {
            headers.push(("content-type".into(), ct.into()));
        }
        http_out::send(&Outgoing {
            method: call.method.into(),
            url: format!(
                "{}/d/{}{}",
                self.base,
                percent_encode(&self.name),
                call.path_and_query
            ),
            headers,
            body: call.body,
            timeout_ms: call.timeout_ms,
        })
        .map_err(|e| {
            format!(
                "the beacon at {} cannot be reached: {}",
                self.base,
                http_out::error_text(&e)
            )
        })
    }
}

/// Whether a Docker call on a remote instance must go as a raw
/// connection: it switches protocols (attach, exec), its body was too
/// large for the plugin to read, or its answer streams (logs that follow,
/// events, stats, attach, builds, pulls, pushes, loads, exports, archives).
pub fn streams(req: &berth_sdk::Request, path: &str) -> bool {
    let flag = |name: &str| {
        req.query(name)
            .is_some_and(|v| matches!(v, "1" | "true" | "True"))
    };
    let unflagged = |name: &str| {
        req.query(name)
            .is_some_and(|v| matches!(v, "0" | "false" | "False"))
    };
    // Without the optional API version prefix (`/v1.41`).
    let bare = match path.strip_prefix("/v") {
        Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => {
            rest.find('/').map_or("/", |i| &rest[i..])
        }
        _ => path,
    };
    let method = req.method();
    req.body_withheld()
        || req.header("upgrade").is_some()
        || flag("follow")
        || bare == "/events"
        || (bare.ends_with("/stats") && !unflagged("stream"))
        || bare.ends_with("/attach")
        || (method == "POST"
            && (matches!(bare, "/build" | "/images/create" | "/images/load")
                || bare.ends_with("/push")))
        || (method == "GET"
            && (bare.ends_with("/export") || bare.ends_with("/get") || bare.ends_with("/archive")))
        || (method == "PUT" && bare.ends_with("/archive"))
}

/// One Docker call made for a deploy step: what was asked and how the
/// engine answered.
pub struct Step {
    pub method: &'static str,
    pub endpoint: String,
    pub code: u16,
    /// The engine's (or the transport's) error; `None` on success.
    pub error: Option<String>,
}

fn base_url(address: &str) -> String {
    let address = address.trim_end_matches('/');
    if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    }
}

/// Why a beacon's instances could not be fetched.
pub enum FetchError {
    /// The address is malformed or not one this host may call (`[http_out]
    /// allow`): the client's to fix.
    NotAllowed(String),
    /// The beacon could not be reached, or answered badly.
    Failed(String),
}

/// The instances behind the beacon at `address`, asked with `token`.
pub fn fetch_vms(address: &str, token: &str) -> Result<Vec<Vm>, FetchError> {
    if address == LOCAL {
        if !agent::token_matches(token).map_err(FetchError::Failed)? {
            return Err(FetchError::Failed(
                "this host's beacon agent refused the token".to_string(),
            ));
        }
        return Ok(agent::local_vms());
    }
    let answer = http_out::send(&Outgoing {
        method: "GET".into(),
        url: format!("{}/vms", base_url(address)),
        headers: vec![("token".into(), token.into())],
        body: Vec::new(),
        timeout_ms: 0,
    })
    .map_err(|e| match e {
        HttpError::Refused(_) | HttpError::Invalid(_) => FetchError::NotAllowed(format!(
            "the beacon address {address} cannot be used: {}",
            http_out::error_text(&e)
        )),
        e => FetchError::Failed(format!(
            "the beacon at {address} cannot be reached: {}",
            http_out::error_text(&e)
        )),
    })?;
    if answer.status != 200 {
        return Err(FetchError::Failed(format!(
            "the beacon at {address} answered {}: {}",
            answer.status,
            engine_message(&answer.body)
        )));
    }
    serde_json::from_slice(&answer.body).map_err(|e| {
        FetchError::Failed(format!(
            "the beacon at {address} sent an unreadable instance list: {e}"
        ))
    })
}

/// The message in a Docker (`{"message"}`) or Lighthouse (`{"Message"}`)
/// error body, else the body as text.
pub fn engine_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Message {
        #[serde(alias = "Message")]
        message: String,
    }
    match serde_json::from_slice::<Message>(body) {
        Ok(m) => m.message,
        Err(_) => String::from_utf8_lossy(body).trim().to_string(),
    }
}

impl Target {
    pub fn new(beacon: &Beacon, instance: &Instance) -> Target {
        if beacon.address == LOCAL {
            Target::Local {
                endpoint: instance.name.clone(),
            }
        } else {
            Target::Remote(Remote {
                base: base_url(&beacon.address),
                token: beacon.token.clone(),
                name: instance.name.clone(),
            })
        }
    }

    /// One call: remote through the beacon (waiting up to `timeout_ms`, 0
    /// for the operator's default), or local through `local`. Codes in
    /// `accept` (besides 2xx) count as success.
    fn call(
        &self,
        method: &'static str,
        endpoint: String,
        body: Option<&serde_json::Value>,
        accept: &[u16],
        timeout_ms: u32,
        local: impl FnOnce(&str) -> Result<u16, DockerError>,
    ) -> Step {
        let (code, error) = match self {
            Target::Local { endpoint: name } => match local(name) {
                Ok(code) => (code, None),
                Err(DockerError::Engine(e)) => (e.status, Some(e.message)),
                Err(e) => (500, Some(docker::error_text(&e))),
            },
            Target::Remote(remote) => {
                let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
                let call = Call {
                    method,
                    path_and_query: &endpoint,
                    content_type: (!body.is_empty()).then_some("application/json"),
                    body,
                    timeout_ms,
                };
                match remote.send(call) {
                    Ok(answer) if (200..300).contains(&answer.status) => (answer.status, None),
                    Ok(answer) => (answer.status, Some(engine_message(&answer.body))),
                    Err(e) => (500, Some(e)),
                }
            }
        };
        let error = error.filter(|_| !accept.contains(&code));
        Step {
            method,
            endpoint,
            code,
            error,
        }
    }

    /// Create container `name` from a Docker create body.
    pub fn create(&self, name: &str, body: &serde_json::Value) -> Step {
        let endpoint = format!("/containers/create?name={}", percent_encode(name));
        self.call("POST", endpoint, Some(body), &[], 0, |ep| {
            docker::container_create(ep, Some(name), &body.to_string()).map(|_| 201)
        })
    }

    /// Remove container `name`, running or not; a missing one is fine.
    pub fn remove(&self, name: &str) -> Step {
        let endpoint = format!("/containers/{}?force=1", percent_encode(name));
        self.call("DELETE", endpoint, None, &[404], 0, |ep| {
            docker::container_remove(ep, name, true, false).map(|_| 204)
        })
    }

    pub fn rename(&self, from: &str, to: &str) -> Step {
        let endpoint = format!(
            "/containers/{}/rename?name={}",
            percent_encode(from),
            percent_encode(to)
        );
        self.call("POST", endpoint, None, &[], 0, |ep| {
            docker::container_rename(ep, from, to).map(|_| 204)
        })
    }

    /// Start `name`; one already running is fine (304).
    pub fn start(&self, name: &str) -> Step {
        let endpoint = format!("/containers/{}/start", percent_encode(name));
        self.call("POST", endpoint, None, &[304], 0, |ep| {
            docker::container_start(ep, name).map(|_| 204)
        })
    }

    /// Stop `name`; one already stopped is fine (304).
    pub fn stop(&self, name: &str) -> Step {
        let secs = config::get_or("stop_timeout_secs", STOP_SECS).unwrap_or(STOP_SECS);
        let endpoint = format!("/containers/{}/stop?t={secs}", percent_encode(name));
        let wait_ms = secs.saturating_add(30).saturating_mul(1000);
        self.call("POST", endpoint, None, &[304], wait_ms, |ep| {
            docker::container_stop(ep, name, Some(secs)).map(|_| 204)
        })
    }

    /// Pull `image` from its registry. The engine answers 200 at once and
    /// reports a failure inside its progress stream, so a remote answer's
    /// lines are read for an `error`.
    pub fn pull(&self, image: &str) -> Step {
        let (name, tag) = match image.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => (name, tag),
            _ => (image, "latest"),
        };
        let endpoint = format!(
            "/images/create?fromImage={}&tag={}",
            percent_encode(name),
            percent_encode(tag)
        );
        let Target::Remote(remote) = self else {
            return self.call("POST", endpoint, None, &[], PULL_MS, |ep| {
                docker::image_pull(ep, image).map(|_| 200)
            });
        };
        let call = Call {
            method: "POST",
            path_and_query: &endpoint,
            content_type: None,
            body: Vec::new(),
            timeout_ms: PULL_MS,
        };
        let (code, error) = match remote.send(call) {
            Ok(answer) if answer.status == 200 => (200, stream_error(&answer.body)),
            Ok(answer) => (answer.status, Some(engine_message(&answer.body))),
            Err(e) => (500, Some(e)),
        };
        Step {
            method: "POST",
            endpoint,
            code,
            error,
        }
    }
}

/// The first `{"error": ...}` line of a Docker progress stream.
fn stream_error(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Line {
        error: Option<String>,
    }
    body.split(|b| *b == b'\n')
        .filter_map(|line| serde_json::from_slice::<Line>(line).ok())
        .find_map(|line| line.error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pull_failure_is_found_in_the_progress_stream() {
        let ok =
            b"{\"status\":\"Pulling from library/busybox\"}\n{\"status\":\"Digest: sha256:1\"}\n";
        assert_eq!(stream_error(ok), None);
        let failed = b"{\"status\":\"Pulling\"}\n{\"errorDetail\":{\"message\":\"no route\"},\"error\":\"no route\"}\n";
        assert_eq!(stream_error(failed).as_deref(), Some("no route"));
    }

    #[test]
    fn error_messages_come_from_docker_or_lighthouse_bodies() {
        assert_eq!(
            engine_message(br#"{"message":"No such container: x"}"#),
            "No such container: x"
        );
        assert_eq!(
            engine_message(br#"{"Cause":"auth","Message":"bad token"}"#),
            "bad token"
        );
        assert_eq!(engine_message(b" plain text\n"), "plain text");
    }

    #[test]
    fn beacon_addresses_become_urls() {
        assert_eq!(base_url("127.0.0.1:9002"), "http://127.0.0.1:9002");
        assert_eq!(
            base_url("https://example.com/mybeacon/"),
            "https://example.com/mybeacon"
        );
    }
}
