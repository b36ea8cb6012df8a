//! A test host: run a plugin's routes, jobs and admin commands under plain
//! `cargo test` on the build machine, without Berth.
//!
//! [`TestHost`] implements the capabilities in memory, with the host's
//! rules where a plugin can see them:
//!
//! - **kv**: one transaction per call. Writes are seen by the call's later
//!   reads and by other calls only once it commits: a request or admin
//!   command whatever it answers, a job when it answers `Ok`; a call a
//!   conflict rolled back commits nothing. [`TestHost::conflicts`] makes the next kv operations
//!   answer `Conflict`, as a racing call would, so the SDK's run-again
//!   path and the plugin's 503s can be tested; `restart` is refused once
//!   the call acted outside KV, as on the host.
//! - **config**: the settings given with [`TestHost::setting`].
//! - **jobs**, **events**, **log**: recorded ([`TestHost::jobs`],
//!   [`TestHost::events`], [`TestHost::logs`]); queued jobs and events
//!   published before the call acted outside KV count only once it
//!   commits. [`TestHost::run_queued_jobs`] runs the queue.
//! - **crypto**: real HMAC-SHA256 keys (per key name, random per host),
//!   TOTP (HMAC-SHA1, RFC 6238), random bytes, attempt counters. Password
//!   hashes are *not* a password hash here (`test$` and hex): a test host
//!   is for tests.
//! - **dokku**, **http-out**, **docker**: scripted. Each call is recorded
//!   ([`TestHost::outside`]) and answered by the function given with
//!   [`TestHost::dokku`], [`TestHost::http`] or [`TestHost::docker`];
//!   without one, it fails as an unreachable engine would.
//!
//! ```
//! use berth_sdk::testing::TestHost;
//! use berth_sdk::{HttpResult, Request, Response, Router, kv};
//!
//! fn visit(req: &Request) -> HttpResult {
//!     let n = kv::increment(&format!("visits/{}", req.param("name").unwrap_or("")), 1)?;
//!     Ok(Response::json(200, &serde_json::json!({ "visits": n })))
//! }
//!
//! let router = Router::new().post("visit", "/visits/{name}", visit);
//! let host = TestHost::new();
//! host.call(&router, "POST", "/visits/ann", b"");
//! let answer = host.call(&router, "POST", "/visits/ann", b"");
//! assert_eq!(answer.status, 200);
//! assert_eq!(answer.json()["visits"], 2);
//! assert_eq!(host.get("visits/ann").as_deref(), Some(&b"2"[..]));
//! ```

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::bindings::berth::plugin::types;
use crate::{Error, Request, Response, Router};

/// A scripted answer for Docker: the function's name (`container-create`)
/// and its arguments as JSON in, JSON out (a string result is a JSON
/// string or any value, which is sent as its text; a unit result ignores
/// the value).
pub type DockerScript = Box<dyn FnMut(&str, &serde_json::Value) -> DockerAnswer>;
/// What a scripted Docker call answers.
pub type DockerAnswer = Result<serde_json::Value, crate::docker::DockerError>;
/// A scripted answer for a Dokku command.
pub type DokkuScript =
    Box<dyn FnMut(&str) -> Result<crate::dokku::Reply, crate::dokku::DokkuError>>;
/// A scripted answer for an outbound request.
pub type HttpScript = Box<
    dyn FnMut(
        &crate::http_out::Outgoing,
    ) -> Result<crate::http_out::Incoming, crate::http_out::HttpError>,
>;

/// One log line a call wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// `trace` ... `error`.
    pub level: String,
    /// The message.
    pub message: String,
    /// Its structured fields.
    pub fields: Vec<(String, String)>,
}

/// A published event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Its number (1, 2, ...).
    pub seq: u64,
    /// The topic.
    pub topic: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// Whether it closed the topic's streams.
    pub closing: bool,
}

/// A queued job.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Its id.
    pub id: u64,
    /// The kind given to `enqueue`.
    pub kind: String,
    /// Its payload.
    pub payload: Vec<u8>,
    /// The delay asked for.
    pub delay_ms: u64,
}

/// A response as a test reads it.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Headers in order.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value (names compared without case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Call {
    writes: BTreeMap<String, Option<Vec<u8>>>,
    jobs: Vec<Job>,
    events: Vec<Event>,
    acted_outside: bool,
    /// Rolled back by a conflict: every kv operation answers `Conflict`
    /// until `restart`.
    aborted: bool,
}

#[derive(Default)]
struct State {
    kv: BTreeMap<String, Vec<u8>>,
    sequences: HashMap<String, u64>,
    settings: BTreeMap<String, String>,
    call: Option<Call>,
    conflicts: u32,
    /// kv operations let through before `conflicts` start.
    conflict_skip: u32,
    jobs: Vec<Job>,
    next_job: u64,
    events: Vec<Event>,
    next_event: u64,
    logs: Vec<LogLine>,
    outside: Vec<String>,
    keys: HashMap<String, Vec<u8>>,
    attempts: HashMap<String, (u32, u64)>,
    seed: u64,
    dokku: Option<DokkuScript>,
    http: Option<HttpScript>,
    docker: Option<DockerScript>,
}

thread_local! {
    /// The host serving this thread's call, while one runs.
    static CURRENT: RefCell<Option<Rc<RefCell<State>>>> = const { RefCell::new(None) };
}

/// An in-memory Berth for one test. Not `Send`: a test host serves the
/// thread that made it.
#[derive(Clone, Default)]
pub struct TestHost {
    state: Rc<RefCell<State>>,
}

impl TestHost {
    /// A host with empty storage and no settings.
    pub fn new() -> TestHost {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        let host = TestHost::default();
        host.state.borrow_mut().seed = seed;
        host
    }

    /// Set one of the plugin's settings (`config::get`).
    pub fn setting(self, key: &str, value: &str) -> TestHost {
        let mut state = self.state.borrow_mut();
        state.settings.insert(key.to_string(), value.to_string());
        drop(state);
        self
    }

    /// Answer Dokku commands with `script`.
    pub fn dokku(
        self,
        script: impl FnMut(&str) -> Result<crate::dokku::Reply, crate::dokku::DokkuError> + 'static,
    ) -> TestHost {
        self.state.borrow_mut().dokku = Some(Box::new(script));
        self
    }

    /// Answer outbound requests with `script`.
    pub fn http(
        self,
        script: impl FnMut(
            &crate::http_out::Outgoing,
        ) -> Result<crate::http_out::Incoming, crate::http_out::HttpError>
        + 'static,
    ) -> TestHost {
        self.state.borrow_mut().http = Some(Box::new(script));
        self
    }

    /// Answer Docker calls with `script` (see [`DockerScript`]).
    pub fn docker(
        self,
        script: impl FnMut(&str, &serde_json::Value) -> DockerAnswer + 'static,
    ) -> TestHost {
        self.state.borrow_mut().docker = Some(Box::new(script));
        self
    }

    /// The next `n` kv operations answer `Conflict`, as when a racing call
    /// holds what they touch.
    pub fn conflicts(&self, n: u32) {
        let mut state = self.state.borrow_mut();
        state.conflicts = n;
        state.conflict_skip = 0;
    }

    /// The `n`th kv operation from now (1-based) answers `Conflict`, once.
    pub fn conflict_at(&self, n: u32) {
        let mut state = self.state.borrow_mut();
        state.conflicts = 1;
        state.conflict_skip = n.saturating_sub(1);
    }

    /// Request `method path` (with `?query`) with `body` through `router`,
    /// as the host routes it; a path no route matches is a 404.
    pub fn call(&self, router: &Router, method: &str, path: &str, body: &[u8]) -> Answer {
        self.request(router, method, path, &[], body)
    }

    /// [`TestHost::call`] with request headers.
    pub fn request(
        &self,
        router: &Router,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Answer {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let method = method.to_ascii_uppercase();
        let routes = router.manifest_routes();
        let matched = routes
            .iter()
            .filter(|r| r.method == method)
            .find_map(|r| matches(&r.path, path).map(|params| (r.id.clone(), params)));
        let Some((route, params)) = matched else {
            return Answer {
                status: 404,
                headers: Vec::new(),
                body: b"no route".to_vec(),
            };
        };
        let request = types::Request {
            id: format!("test-{}", self.state.borrow().next_event),
            method,
            path: path.to_string(),
            route,
            params,
            query: pairs(query),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
                .collect(),
            body: body.to_vec(),
            client: "127.0.0.1".to_string(),
        };
        let response: Response = self.within(|| router.dispatch(Request::from(request)), |_| true);
        Answer {
            status: response.status,
            headers: response.headers,
            body: response.body,
        }
    }

    /// Run a job as the host would: its writes commit when it answers `Ok`.
    pub fn run_job(
        &self,
        run: impl Fn(&str, &[u8]) -> Result<(), String>,
        kind: &str,
        payload: &[u8],
    ) -> Result<(), String> {
        self.within(
            || crate::kv::rerun_on_conflict(|| run(kind, payload)),
            Result::is_ok,
        )
    }

    /// Run every queued job (and those they queue) through `run`, oldest
    /// first; a failed job is given back with its error.
    pub fn run_queued_jobs(
        &self,
        run: impl Fn(&str, &[u8]) -> Result<(), String>,
    ) -> Vec<(Job, String)> {
        let mut failed = Vec::new();
        loop {
            let next = {
                let mut state = self.state.borrow_mut();
                (!state.jobs.is_empty()).then(|| state.jobs.remove(0))
            };
            let Some(job) = next else {
                return failed;
            };
            if let Err(e) = self.run_job(&run, &job.kind, &job.payload) {
                failed.push((job, e));
            }
        }
    }

    /// Run an admin command: its writes commit whatever it answers, as a
    /// request's do.
    pub fn admin(
        &self,
        admin: impl Fn(Vec<String>) -> Result<String, String>,
        args: &[&str],
    ) -> Result<String, String> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        self.within(
            || crate::kv::rerun_on_conflict(|| admin(args.clone())),
            |_| true,
        )
    }

    /// A committed value.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.state.borrow().kv.get(key).cloned()
    }

    /// Store a value directly, as committed before the test.
    pub fn put(&self, key: &str, value: &[u8]) {
        self.state
            .borrow_mut()
            .kv
            .insert(key.to_string(), value.to_vec());
    }

    /// Every committed key starting with `prefix`, in order.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let state = self.state.borrow();
        state
            .kv
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The jobs queued by committed calls and not run yet.
    pub fn jobs(&self) -> Vec<Job> {
        self.state.borrow().jobs.clone()
    }

    /// The events published (by committed calls, or by calls after they
    /// acted outside KV), in order.
    pub fn events(&self) -> Vec<Event> {
        self.state.borrow().events.clone()
    }

    /// Every log line, in order.
    pub fn logs(&self) -> Vec<LogLine> {
        self.state.borrow().logs.clone()
    }

    /// Every call outside KV (Dokku, outbound HTTP, Docker), in order, as
    /// `capability function argument-summary`.
    pub fn outside(&self) -> Vec<String> {
        self.state.borrow().outside.clone()
    }

    /// Run `f` as one call in a fresh transaction; commit if `commit`
    /// says so of its answer.
    fn within<T>(&self, f: impl FnOnce() -> T, commit: impl FnOnce(&T) -> bool) -> T {
        let previous = CURRENT.with(|c| c.replace(Some(self.state.clone())));
        self.state.borrow_mut().call = Some(Call::default());
        let answer = f();
        CURRENT.with(|c| *c.borrow_mut() = previous);
        let mut state = self.state.borrow_mut();
        let call = state.call.take().unwrap_or_default();
        if commit(&answer) {
            for (key, value) in call.writes {
                match value {
                    Some(v) => state.kv.insert(key, v),
                    None => state.kv.remove(&key),
                };
            }
            state.jobs.extend(call.jobs);
            state.events.extend(call.events);
        }
        answer
    }
}

/// The params of `path` if it matches `pattern` (`{name}` one segment,
/// `{name...}` the rest).
fn matches(pattern: &str, path: &str) -> Option<Vec<(String, String)>> {
    let mut params = Vec::new();
    let mut segments = path.split('/');
    for part in pattern.split('/') {
        if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix("...}")) {
            let rest: Vec<&str> = segments.by_ref().collect();
            params.push((name.to_string(), decode(&rest.join("/"))));
            return Some(params);
        }
        let segment = segments.next()?;
        match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            Some(name) if !segment.is_empty() => params.push((name.to_string(), decode(segment))),
            Some(_) => return None,
            None if part == segment => {}
            None => return None,
        }
    }
    segments.next().is_none().then_some(params)
}

/// `a=1&b=x%20y` as pairs.
fn pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(&n.replace('+', " ")), decode(&v.replace('+', " ")))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap() * 16 + hex(l).unwrap()) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The running call's host state, or the error a capability answers
/// outside a test host's call.
fn with<T>(f: impl FnOnce(&mut State) -> T) -> Result<T, Error> {
    CURRENT.with(|c| match &*c.borrow() {
        Some(state) => Ok(f(&mut state.borrow_mut())),
        None => Err(Error::Unavailable(
            "no host: run this call through berth_sdk::testing::TestHost".into(),
        )),
    })
}

/// Run a call outside KV: recorded, and marks the call as acted outside.
fn outside(what: String) {
    let _ = with(|s| {
        s.outside.push(what);
        if let Some(call) = &mut s.call {
            call.acted_outside = true;
        }
    });
}

fn next_random(state: &mut State) -> u64 {
    // xorshift64*: a test host's randomness, seeded from the clock.
    let mut x = state.seed;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    state.seed = x;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// The capability functions the SDK's modules call, with the signatures
/// of the generated bindings.
pub(crate) mod raw {
    pub mod kv {
        use super::super::*;
        pub use crate::bindings::berth::plugin::kv::Page;

        /// A kv operation: a scripted conflict, or `f` on the call.
        fn op<T>(f: impl FnOnce(&BTreeMap<String, Vec<u8>>, &mut Call) -> T) -> Result<T, Error> {
            with(|s| {
                let aborted = s.call.as_ref().is_some_and(|c| c.aborted);
                if s.conflicts > 0 && s.conflict_skip > 0 && !aborted {
                    s.conflict_skip -= 1;
                } else if s.conflicts > 0 || aborted {
                    if !aborted {
                        s.conflicts -= 1;
                    }
                    if let Some(call) = &mut s.call {
                        call.writes.clear();
                        call.jobs.clear();
                        call.events.clear();
                        call.aborted = true;
                    }
                    return Err(Error::Conflict(
                        "a racing call holds this key (scripted by the test host)".into(),
                    ));
                }
                let State { kv, call, .. } = s;
                let call = call.get_or_insert_with(Call::default);
                Ok(f(kv, call))
            })?
        }

        fn read(kv: &BTreeMap<String, Vec<u8>>, call: &Call, key: &str) -> Option<Vec<u8>> {
            match call.writes.get(key) {
                Some(v) => v.clone(),
                None => kv.get(key).cloned(),
            }
        }

        fn check(key: &str) -> Result<(), Error> {
            if key.is_empty() || key.len() > 1024 {
                return Err(Error::Invalid("keys are 1 to 1024 bytes".into()));
            }
            Ok(())
        }

        pub fn get(key: &str) -> Result<Option<Vec<u8>>, Error> {
            check(key)?;
            op(|kv, call| read(kv, call, key))
        }

        pub fn set(key: &str, value: &[u8]) -> Result<(), Error> {
            check(key)?;
            op(|_, call| {
                call.writes.insert(key.to_string(), Some(value.to_vec()));
            })
        }

        pub fn delete(key: &str) -> Result<bool, Error> {
            check(key)?;
            op(|kv, call| {
                let existed = read(kv, call, key).is_some();
                call.writes.insert(key.to_string(), None);
                existed
            })
        }

        pub fn list(prefix: &str, after: Option<&str>, limit: u32) -> Result<Page, Error> {
            op(|kv, call| {
                let mut merged: BTreeMap<String, Vec<u8>> = kv
                    .range(prefix.to_string()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                for (k, v) in call.writes.range(prefix.to_string()..) {
                    if !k.starts_with(prefix) {
                        break;
                    }
                    match v {
                        Some(v) => merged.insert(k.clone(), v.clone()),
                        None => merged.remove(k),
                    };
                }
                let limit = if limit == 0 { 1000 } else { limit.min(1000) } as usize;
                let mut entries: Vec<(String, Vec<u8>)> = merged
                    .into_iter()
                    .filter(|(k, _)| after.is_none_or(|a| k.as_str() > a))
                    .take(limit + 1)
                    .collect();
                let next = (entries.len() > limit).then(|| {
                    entries.truncate(limit);
                    entries.last().map(|(k, _)| k.clone()).unwrap_or_default()
                });
                Page { entries, next }
            })
        }

        pub fn increment(key: &str, delta: i64) -> Result<i64, Error> {
            check(key)?;
            op(|kv, call| {
                let current = match read(kv, call, key) {
                    None => 0,
                    Some(bytes) => String::from_utf8_lossy(&bytes)
                        .trim()
                        .parse::<i64>()
                        .map_err(|_| {
                            Error::Invalid(format!("value at `{key}` is not a decimal integer"))
                        })?,
                };
                let next = current.checked_add(delta).ok_or_else(|| {
                    Error::Invalid(format!("incrementing `{key}` by {delta} overflows"))
                })?;
                call.writes
                    .insert(key.to_string(), Some(next.to_string().into_bytes()));
                Ok(next)
            })?
        }

        pub fn next_in_sequence(name: &str) -> Result<u64, Error> {
            with(|s| {
                let n = s.sequences.entry(name.to_string()).or_default();
                *n += 1;
                *n
            })
        }

        pub fn compare_and_swap(
            key: &str,
            expected: Option<&[u8]>,
            new: Option<&[u8]>,
        ) -> Result<bool, Error> {
            check(key)?;
            op(|kv, call| {
                if read(kv, call, key).as_deref() != expected {
                    return false;
                }
                call.writes.insert(key.to_string(), new.map(<[u8]>::to_vec));
                true
            })
        }

        pub fn restart() -> Result<(), Error> {
            with(|s| match &mut s.call {
                Some(call) if call.acted_outside => Err(Error::Conflict(
                    "this call cannot run again: it already acted outside KV".into(),
                )),
                Some(call) => {
                    *call = Call::default();
                    Ok(())
                }
                None => Ok(()),
            })?
        }
    }

    pub mod config {
        use super::super::*;

        pub fn get(key: &str) -> Result<Option<String>, Error> {
            with(|s| s.settings.get(key).cloned())
        }

        pub fn get_all() -> Result<Vec<(String, String)>, Error> {
            with(|s| s.settings.clone().into_iter().collect())
        }
    }

    pub mod log {
        use super::super::*;
        pub use crate::bindings::berth::plugin::log::Level;

        pub fn log(level: Level, message: &str, fields: &[(String, String)]) {
            let level = match level {
                Level::Trace => "trace",
                Level::Debug => "debug",
                Level::Info => "info",
                Level::Warn => "warn",
                Level::Error => "error",
            }
            .to_string();
            let line = LogLine {
                level,
                message: message.to_string(),
                fields: fields.to_vec(),
            };
            if with(|s| s.logs.push(line.clone())).is_err() {
                eprintln!("{}: {}", line.level, line.message);
            }
        }
    }

    pub mod jobs {
        use super::super::*;

        pub fn enqueue(kind: &str, payload: &[u8], delay_ms: u64) -> Result<u64, Error> {
            with(|s| {
                s.next_job += 1;
                let job = Job {
                    id: s.next_job,
                    kind: kind.to_string(),
                    payload: payload.to_vec(),
                    delay_ms,
                };
                match &mut s.call {
                    Some(call) => call.jobs.push(job),
                    None => s.jobs.push(job),
                }
                s.next_job
            })
        }
    }

    pub mod events {
        use super::super::*;

        fn publish_event(topic: &str, payload: &[u8], closing: bool) -> Result<u64, Error> {
            with(|s| {
                s.next_event += 1;
                let event = Event {
                    seq: s.next_event,
                    topic: topic.to_string(),
                    payload: payload.to_vec(),
                    closing,
                };
                match &mut s.call {
                    Some(call) if !call.acted_outside => call.events.push(event),
                    _ => s.events.push(event),
                }
                s.next_event
            })
        }

        pub fn publish(topic: &str, payload: &[u8]) -> Result<u64, Error> {
            publish_event(topic, payload, false)
        }

        pub fn close(topic: &str, payload: &[u8]) -> Result<u64, Error> {
            publish_event(topic, payload, true)
        }

        pub fn open_messages(messages: &[Vec<u8>]) -> Result<String, Error> {
            let topic = with(|s| {
                s.next_event += 1;
                format!("messages-{}", s.next_event)
            })?;
            for (i, m) in messages.iter().enumerate() {
                publish_event(&topic, m, i + 1 == messages.len())?;
            }
            Ok(topic)
        }
    }

    pub mod crypto {
        use super::super::*;
        pub use crate::bindings::berth::plugin::crypto::{AttemptCounter, TotpParams};
        use hmac::{Hmac, Mac};

        pub fn hash_password(password: &str) -> Result<String, Error> {
            Ok(format!("test${}", hex(password.as_bytes())))
        }

        pub fn verify_password(password: &str, hash: &str) -> Result<bool, Error> {
            Ok(hash_password(password)? == hash)
        }

        fn key(name: &str) -> Result<Vec<u8>, Error> {
            with(|s| {
                if let Some(k) = s.keys.get(name) {
                    return k.clone();
                }
                let k: Vec<u8> = (0..4).flat_map(|_| next_random(s).to_le_bytes()).collect();
                s.keys.insert(name.to_string(), k.clone());
                k
            })
        }

        pub fn sign(key_name: &str, data: &[u8]) -> Result<Vec<u8>, Error> {
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key(key_name)?)
                .map_err(|e| Error::Invalid(e.to_string()))?;
            mac.update(data);
            Ok(mac.finalize().into_bytes().to_vec())
        }

        pub fn verify(key_name: &str, data: &[u8], tag: &[u8]) -> Result<bool, Error> {
            Ok(constant_time_eq(&sign(key_name, data)?, tag))
        }

        pub fn totp_verify(
            secret: &[u8],
            code: &str,
            params: TotpParams,
        ) -> Result<Option<u64>, Error> {
            if !(6..=8).contains(&params.digits) || params.period == 0 {
                return Err(Error::Invalid(
                    "digits are 6 to 8, the period above 0".into(),
                ));
            }
            let now = now_secs() / u64::from(params.period);
            let skew = u64::from(params.skew);
            for step in now.saturating_sub(skew)..=now + skew {
                let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret)
                    .map_err(|e| Error::Invalid(e.to_string()))?;
                mac.update(&step.to_be_bytes());
                let h = mac.finalize().into_bytes();
                let at = (h[19] & 0xf) as usize;
                let n = u32::from_be_bytes([h[at] & 0x7f, h[at + 1], h[at + 2], h[at + 3]]);
                let want = n % 10u32.pow(u32::from(params.digits));
                if format!("{want:0width$}", width = params.digits as usize) == code {
                    return Ok(Some(step));
                }
            }
            Ok(None)
        }

        pub fn random_bytes(len: u32) -> Result<Vec<u8>, Error> {
            if len > 4096 {
                return Err(Error::Invalid("at most 4096 random bytes".into()));
            }
            with(|s| {
                (0..len.div_ceil(8))
                    .flat_map(|_| next_random(s).to_le_bytes())
                    .take(len as usize)
                    .collect()
            })
        }

        pub fn random_token(bytes: u32) -> Result<String, Error> {
            if !(1..=1024).contains(&bytes) {
                return Err(Error::Invalid("a token is 1 to 1024 bytes".into()));
            }
            Ok(hex(&random_bytes(bytes)?))
        }

        pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
            a.len() == b.len() && a.iter().zip(b).fold(0, |d, (x, y)| d | (x ^ y)) == 0
        }

        pub fn take_attempt(counters: &[AttemptCounter], window_secs: u32) -> Result<bool, Error> {
            let now = now_secs();
            with(|s| {
                let live = |s: &State, key: &str| match s.attempts.get(key) {
                    Some(&(n, until)) if until > now => n,
                    _ => 0,
                };
                if counters.iter().any(|c| live(s, &c.key) >= c.limit) {
                    return false;
                }
                for c in counters {
                    let n = live(s, &c.key);
                    let until = match s.attempts.get(&c.key) {
                        Some(&(_, until)) if until > now => until,
                        _ => now + u64::from(window_secs),
                    };
                    s.attempts.insert(c.key.clone(), (n + 1, until));
                }
                true
            })
        }

        pub fn attempt_passed(keys: &[String]) -> Result<(), Error> {
            with(|s| {
                for key in keys {
                    if let Some((n, _)) = s.attempts.get_mut(key) {
                        *n = n.saturating_sub(1);
                    }
                }
            })
        }

        fn hex(bytes: &[u8]) -> String {
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        }
    }

    pub mod dokku {
        use super::super::*;
        pub use crate::bindings::berth::plugin::dokku::{DokkuError, Reply};

        pub fn run(command: &str, timeout_ms: u32) -> Result<Reply, DokkuError> {
            let _ = timeout_ms;
            outside(format!("dokku run {command}"));
            let script = with(|s| s.dokku.take()).ok().flatten();
            let Some(mut script) = script else {
                return Err(DokkuError::Unreachable(
                    "no Dokku in this test host (TestHost::dokku)".into(),
                ));
            };
            let reply = script(command);
            let _ = with(|s| s.dokku = Some(script));
            reply
        }
    }

    pub mod http_out {
        use super::super::*;
        pub use crate::bindings::berth::plugin::http_out::{HttpError, Incoming, Outgoing};

        pub fn send(request: &Outgoing) -> Result<Incoming, HttpError> {
            outside(format!("http-out {} {}", request.method, request.url));
            let script = with(|s| s.http.take()).ok().flatten();
            let Some(mut script) = script else {
                return Err(HttpError::Unreachable(
                    "no network in this test host (TestHost::http)".into(),
                ));
            };
            let answer = script(request);
            let _ = with(|s| s.http = Some(script));
            answer
        }

        pub fn check(url: &str) -> Result<(), HttpError> {
            if url.starts_with("http://") || url.starts_with("https://") {
                Ok(())
            } else {
                Err(HttpError::Invalid(format!("not an http(s) URL: {url}")))
            }
        }
    }

    pub mod docker {
        use super::super::*;
        pub use crate::bindings::berth::plugin::docker::{
            Container, DockerError, EngineAnswer, EngineError, Filters, LogSource, Port, TlsFiles,
        };
        use serde_json::{Value, json};

        /// Answer Docker function `name` called with `args` by the script.
        fn call(name: &str, args: Value) -> Result<Value, DockerError> {
            outside(format!("docker {name} {args}"));
            let script = with(|s| s.docker.take()).ok().flatten();
            let Some(mut script) = script else {
                return Err(DockerError::Unreachable(
                    "no Docker engine in this test host (TestHost::docker)".into(),
                ));
            };
            let answer = script(name, &args);
            let _ = with(|s| s.docker = Some(script));
            answer
        }

        fn text(v: Value) -> String {
            match v {
                Value::String(s) => s,
                other => other.to_string(),
            }
        }

        fn filters_json(f: &[(String, Vec<String>)]) -> Value {
            f.iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect::<serde_json::Map<_, _>>()
                .into()
        }

        macro_rules! text_calls {
            ($($fn:ident($($arg:ident: $ty:ty),*) => $name:literal;)*) => {$(
                #[doc = concat!("Docker `", $name, "`, answered by [`TestHost::docker`]'s script.")]
                pub fn $fn($($arg: $ty),*) -> Result<String, DockerError> {
                    call($name, json!({ $(stringify!($arg): arg_json(&$arg)),* })).map(text)
                }
            )*};
        }

        macro_rules! unit_calls {
            ($($fn:ident($($arg:ident: $ty:ty),*) => $name:literal;)*) => {$(
                #[doc = concat!("Docker `", $name, "`, answered by [`TestHost::docker`]'s script.")]
                pub fn $fn($($arg: $ty),*) -> Result<(), DockerError> {
                    call($name, json!({ $(stringify!($arg): arg_json(&$arg)),* })).map(drop)
                }
            )*};
        }

        /// An argument as JSON.
        trait ArgJson {
            fn json(&self) -> Value;
        }
        impl ArgJson for &str {
            fn json(&self) -> Value {
                json!(self)
            }
        }
        impl ArgJson for bool {
            fn json(&self) -> Value {
                json!(self)
            }
        }
        impl ArgJson for u32 {
            fn json(&self) -> Value {
                json!(self)
            }
        }
        impl ArgJson for u64 {
            fn json(&self) -> Value {
                json!(self)
            }
        }
        impl ArgJson for Option<u32> {
            fn json(&self) -> Value {
                json!(self)
            }
        }
        impl ArgJson for Option<&str> {
            fn json(&self) -> Value {
                json!(self)
            }
        }
        impl ArgJson for &[(String, Vec<String>)] {
            fn json(&self) -> Value {
                filters_json(self)
            }
        }
        impl ArgJson for &[String] {
            fn json(&self) -> Value {
                json!(self)
            }
        }
        impl ArgJson for &[u8] {
            fn json(&self) -> Value {
                json!(String::from_utf8_lossy(self))
            }
        }
        impl ArgJson for &[(String, String)] {
            fn json(&self) -> Value {
                json!(self)
            }
        }
        impl ArgJson for &[LogSource] {
            fn json(&self) -> Value {
                self.iter()
                    .map(|s| json!({ "id": s.id, "fields": s.fields }))
                    .collect()
            }
        }
        impl ArgJson for Option<&TlsFiles> {
            fn json(&self) -> Value {
                self.map_or(
                    Value::Null,
                    |t| json!({ "ca": t.ca, "cert": t.cert, "key": t.key }),
                )
            }
        }
        fn arg_json<T: ArgJson>(arg: &T) -> Value {
            arg.json()
        }

        text_calls! {
            container_inspect(endpoint: &str, id: &str) => "container-inspect";
            container_create(endpoint: &str, name: Option<&str>, body: &str) => "container-create";
            container_logs(endpoint: &str, id: &str, tail: u32) => "container-logs";
            open_log_stream(endpoint: &str, sources: &[LogSource], tail: Option<u32>, follow: bool) => "open-log-stream";
            exec_create(endpoint: &str, id: &str, cmd: &[String], tty: bool) => "exec-create";
            image_list(endpoint: &str, filters: &[(String, Vec<String>)]) => "image-list";
            image_inspect(endpoint: &str, name: &str) => "image-inspect";
            network_create(endpoint: &str, body: &str) => "network-create";
            network_list(endpoint: &str, filters: &[(String, Vec<String>)]) => "network-list";
            service_list(endpoint: &str, filters: &[(String, Vec<String>)]) => "service-list";
            service_inspect(endpoint: &str, id: &str) => "service-inspect";
            service_create(endpoint: &str, spec: &str) => "service-create";
            task_list(endpoint: &str, filters: &[(String, Vec<String>)]) => "task-list";
            node_list(endpoint: &str, filters: &[(String, Vec<String>)]) => "node-list";
            swarm_inspect(endpoint: &str) => "swarm-inspect";
            info(endpoint: &str) => "info";
            ping(endpoint: &str) => "ping";
        }

        unit_calls! {
            container_start(endpoint: &str, id: &str) => "container-start";
            container_stop(endpoint: &str, id: &str, timeout_secs: Option<u32>) => "container-stop";
            container_restart(endpoint: &str, id: &str, timeout_secs: Option<u32>) => "container-restart";
            container_kill(endpoint: &str, id: &str, signal: Option<&str>) => "container-kill";
            container_remove(endpoint: &str, id: &str, force: bool, volumes: bool) => "container-remove";
            container_rename(endpoint: &str, id: &str, name: &str) => "container-rename";
            set_proxy_header(name: &str, value: &str) => "set-proxy-header";
            image_pull(endpoint: &str, image: &str) => "image-pull";
            network_remove(endpoint: &str, id: &str) => "network-remove";
            service_update(endpoint: &str, id: &str, version: u64, spec: &str) => "service-update";
            service_remove(endpoint: &str, id: &str) => "service-remove";
            follow_events(endpoint: &str, topic: &str, filters: &[(String, Vec<String>)]) => "follow-events";
            follow_events_as_jobs(endpoint: &str, kind: &str, filters: &[(String, Vec<String>)]) => "follow-events-as-jobs";
            register_endpoint(name: &str, address: &str, tls: Option<&TlsFiles>) => "register-endpoint";
            register_url_endpoint(name: &str, url: &str, headers: &[(String, String)]) => "register-url-endpoint";
        }

        /// Docker `remove-endpoint`: the script's boolean (true if none).
        pub fn remove_endpoint(name: &str) -> Result<bool, DockerError> {
            call("remove-endpoint", json!({ "name": name })).map(|v| v.as_bool().unwrap_or(true))
        }

        /// The scripted answer: `{"status", "headers": [[n, v]], "body"}`
        /// (a string body as its bytes, any other as JSON text).
        pub fn request(
            endpoint: &str,
            method: &str,
            path: &str,
            query: &str,
            headers: &[(String, String)],
            body: &[u8],
        ) -> Result<EngineAnswer, DockerError> {
            let args = json!({ "endpoint": endpoint, "method": method, "path": path,
                "query": query, "headers": headers, "body": String::from_utf8_lossy(body) });
            let v = call("request", args)?;
            Ok(EngineAnswer {
                status: v["status"].as_u64().unwrap_or(200) as u16,
                headers: serde_json::from_value(v["headers"].clone()).unwrap_or_default(),
                body: match &v["body"] {
                    Value::Null => Vec::new(),
                    Value::String(s) => s.clone().into_bytes(),
                    other => other.to_string().into_bytes(),
                },
            })
        }

        /// The scripted answer: a JSON array as the engine's
        /// `/containers/json` gives it.
        pub fn container_list(
            endpoint: &str,
            all: bool,
            filters: &[(String, Vec<String>)],
        ) -> Result<Vec<Container>, DockerError> {
            let v = call(
                "container-list",
                json!({ "endpoint": endpoint, "all": all, "filters": filters_json(filters) }),
            )?;
            let s = |c: &Value, k: &str| c[k].as_str().unwrap_or_default().to_string();
            Ok(v.as_array()
                .into_iter()
                .flatten()
                .map(|c| Container {
                    id: s(c, "Id"),
                    names: serde_json::from_value(c["Names"].clone()).unwrap_or_default(),
                    image: s(c, "Image"),
                    command: s(c, "Command"),
                    created: c["Created"].as_i64().unwrap_or(0),
                    state: s(c, "State"),
                    status: s(c, "Status"),
                    labels: c["Labels"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect(),
                    ports: Vec::new(),
                })
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HttpResult, dokku, events, jobs, kv};
    use std::cell::Cell;

    thread_local! {
        static RUNS: Cell<u32> = const { Cell::new(0) };
    }

    fn add(req: &Request) -> HttpResult {
        RUNS.with(|r| r.set(r.get() + 1));
        let key = format!("n/{}", req.param("name").unwrap_or_default());
        let n = kv::increment(&key, 1)?;
        events::publish("counted", key.as_bytes())?;
        jobs::enqueue("after", key.as_bytes(), 0)?;
        let status = if req.query("fail").is_some() {
            400
        } else {
            200
        };
        Ok(Response::json(status, &serde_json::json!({ "n": n })))
    }

    fn ship(req: &Request) -> HttpResult {
        kv::set("shipping", b"1")?;
        let reply = dokku::run(
            &format!("apps:create {}", req.param("app").unwrap_or("")),
            1000,
        )
        .map_err(|e| Response::error(502, &format!("{e:?}")))?;
        // Met after acting outside KV: the call cannot run again.
        kv::set("shipped", reply.output.as_bytes())?;
        Ok(Response::new(201))
    }

    fn router() -> Router {
        Router::new()
            .post("add", "/add/{name}", add)
            .post("ship", "/ship/{app}", ship)
    }

    #[test]
    fn a_request_commits_its_writes_jobs_and_events_whatever_its_status() {
        let host = TestHost::new();
        assert_eq!(host.call(&router(), "POST", "/add/a", b"").json()["n"], 1);
        let failed = host.call(&router(), "POST", "/add/a?fail=1", b"");
        assert_eq!(failed.status, 400);
        assert_eq!(failed.json()["n"], 2);
        assert_eq!(host.get("n/a").as_deref(), Some(&b"2"[..]));
        assert_eq!(host.events().len(), 2);
        assert_eq!(host.jobs().len(), 2);
        assert_eq!(host.call(&router(), "GET", "/add/a", b"").status, 404);
        assert_eq!(host.call(&router(), "POST", "/add/a/b", b"").status, 404);
    }

    #[test]
    fn a_conflict_runs_the_handler_again_and_keeps_one_run_of_writes() {
        let host = TestHost::new();
        RUNS.with(|r| r.set(0));
        host.conflicts(2);
        let answer = host.call(&router(), "POST", "/add/b", b"");
        assert_eq!(answer.status, 200);
        assert_eq!(RUNS.with(Cell::get), 3, "two conflicts, three runs");
        assert_eq!(answer.json()["n"], 1);
        assert_eq!(host.get("n/b").as_deref(), Some(&b"1"[..]));
        assert_eq!(
            host.events().len(),
            1,
            "the rolled-back runs' event is dropped"
        );
        assert_eq!(host.jobs().len(), 1);
    }

    #[test]
    fn a_call_that_acted_outside_kv_is_not_run_again() {
        let host = TestHost::new().dokku(|command| {
            Ok(dokku::Reply {
                ok: true,
                output: format!("ran {command}"),
            })
        });
        let router = router();
        let answer = host.call(&router, "POST", "/ship/web", b"");
        assert_eq!(answer.status, 201);
        assert_eq!(host.outside(), ["dokku run apps:create web"]);
        assert_eq!(
            host.get("shipped").as_deref(),
            Some(&b"ran apps:create web"[..])
        );

        let host = TestHost::new();
        let unreachable = host.call(&router, "POST", "/ship/web", b"");
        assert_eq!(unreachable.status, 502, "{}", unreachable.text());
        assert!(unreachable.text().contains("TestHost::dokku"));
    }

    #[test]
    fn after_acting_outside_a_conflict_is_the_handlers_answer() {
        let host = TestHost::new().dokku(|_| {
            Ok(dokku::Reply {
                ok: true,
                output: String::new(),
            })
        });
        // `shipping` goes through; `shipped`, after the Dokku command,
        // meets a racing call.
        host.conflict_at(2);
        let answer = host.call(&router(), "POST", "/ship/x", b"");
        assert_eq!(answer.status, 503, "{}", answer.text());
        assert_eq!(answer.header("retry-after"), Some("1"));
        assert_eq!(host.outside().len(), 1, "not run again");
        assert_eq!(host.get("shipping"), None, "the call was rolled back");
    }

    #[test]
    fn a_job_commits_only_when_it_succeeds_and_queued_jobs_run_in_order() {
        let host = TestHost::new();
        host.call(&router(), "POST", "/add/c", b"");
        host.call(&router(), "POST", "/add/d", b"");
        let failed = host.run_queued_jobs(|kind, payload| {
            assert_eq!(kind, "after");
            kv::set(&format!("done/{}", String::from_utf8_lossy(payload)), b"")?;
            if payload == b"n/d" {
                return Err("d fails".into());
            }
            Ok(())
        });
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].1, "d fails");
        assert_eq!(
            host.keys("done/"),
            ["done/n/c"],
            "the failed job's write is dropped"
        );
        assert!(host.jobs().is_empty());
    }

    #[test]
    fn admin_commands_settings_crypto_and_logs() {
        let host = TestHost::new().setting("greeting", "Hi");
        let said = host.admin(
            |args| {
                let word = crate::config::get("greeting")?.unwrap_or_default();
                crate::log::info(&format!("said {word}"));
                let tag = crate::crypto::sign("k", b"data")?;
                assert!(crate::crypto::verify("k", b"data", &tag)?);
                assert!(!crate::crypto::verify("other", b"data", &tag)?);
                let hash = crate::crypto::hash_password("pw")?;
                assert!(crate::crypto::verify_password("pw", &hash)?);
                assert!(!crate::crypto::verify_password("px", &hash)?);
                assert_eq!(crate::crypto::random_token(16)?.len(), 32);
                Ok(format!("{word} {}", args.join(" ")))
            },
            &["there"],
        );
        assert_eq!(said.as_deref(), Ok("Hi there"));
        assert_eq!(host.logs()[0].message, "said Hi");
        assert_eq!(host.logs()[0].level, "info");
    }

    #[test]
    fn totp_codes_of_now_verify() {
        // RFC 6238's SHA-1 secret; the code for now computed independently.
        let secret = b"12345678901234567890";
        let step = now_secs() / 30;
        let mut mac = <hmac::Hmac<sha1::Sha1> as hmac::Mac>::new_from_slice(secret).unwrap();
        hmac::Mac::update(&mut mac, &step.to_be_bytes());
        let h = hmac::Mac::finalize(mac).into_bytes();
        let at = (h[19] & 0xf) as usize;
        let n = u32::from_be_bytes([h[at] & 0x7f, h[at + 1], h[at + 2], h[at + 3]]) % 1_000_000;
        let host = TestHost::new();
        let params = crate::crypto::TotpParams {
            digits: 6,
            period: 30,
            skew: 1,
        };
        let found = host.admin(
            |_| {
                let at = raw::crypto::totp_verify(secret, &format!("{n:06}"), params)?;
                let wrong = raw::crypto::totp_verify(secret, "abcdef", params)?;
                Ok(format!("{at:?} {wrong:?}"))
            },
            &[],
        );
        let found = found.unwrap();
        assert!(found.ends_with(" None"), "{found}");
        assert!(found.starts_with("Some("), "{found}");
    }

    #[test]
    fn outside_a_test_host_a_capability_says_so() {
        let e = kv::get("k").unwrap_err();
        assert!(crate::error_text(&e).contains("TestHost"), "{e:?}");
    }
}
