//! `commands`: the dokku-api surface on Berth.
//!
//! Commands are stored in KV, run on the Dokku daemon through the `dokku`
//! capability, asynchronously through `jobs` by default (`sync=true` runs
//! inline), and their JSON is POSTed to `callback_url` after every run.
//! Key pairs are managed with `berth run commands keys:generate|keys:list|
//! keys:delete KEY`; only an HMAC of each secret (under a host-held key)
//! is stored.

use berth_sdk::Capability;
use berth_sdk::dokku::{self, DokkuError};
use berth_sdk::{
    HttpResult, Info, Plugin, Request, Response, Router, Scope, config, crypto, http_out, jobs, kv,
    time,
};
use serde::{Deserialize, Serialize};

struct Commands;

/// Longest command accepted, as the original's validation.
const MAX_CMD: usize = 255;
/// The HMAC key (held by the host) that API secrets are hashed under.
const SECRET_KEY: &str = "api-secret";

impl Plugin for Commands {
    fn info() -> Info {
        Info::new(
            "commands",
            env!("CARGO_PKG_VERSION"),
            "dokku-api: run Dokku commands over HTTP",
        )
        .capabilities(&[
            Capability::Kv,
            Capability::Crypto,
            Capability::Jobs,
            Capability::Dokku,
            Capability::HttpOut,
            Capability::Config,
            Capability::Log,
        ])
    }

    fn router() -> Router {
        let dokku_api = Scope::new().errors(status_error);
        Router::new()
            .scope(dokku_api, |r| {
                r.guard(authenticate, |r| {
                    r.get("commands.list", "/commands", list)
                        .post("commands.create", "/commands", create)
                        .get("commands.show", "/commands/{token}", show)
                        .get("commands.retry", "/commands/{token}/retry", retry)
                })
            })
            .describe(include_str!("../openapi.json"))
    }

    fn run_job(kind: &str, payload: &[u8]) -> Result<(), String> {
        let id: u64 = std::str::from_utf8(payload)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad job payload for `{kind}`"))?;
        match kind {
            "run" => Ok(run_command(id)?),
            "callback" => callback(id),
            other => Err(format!("unknown job kind `{other}`")),
        }
    }

    fn admin(args: Vec<String>) -> Result<String, String> {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match args.as_slice() {
            ["keys:generate"] => {
                let key = crypto::random_token(16)?;
                let secret = crypto::random_token(16)?;
                let stored = ApiKey {
                    key: key.clone(),
                    secret_hmac: hmac(&secret)?,
                    created_at: time::now_rfc3339(),
                };
                kv::set_json(&format!("keys/{key}"), &stored)?;
                Ok(format!(
                    "New API key was generated\nAPI KEY: {key} | API SECRET: {secret}"
                ))
            }
            ["keys:list"] => {
                let mut lines = Vec::new();
                for entry in kv::scan("keys/") {
                    let (_, value) = entry?;
                    if let Ok(k) = serde_json::from_slice::<ApiKey>(&value) {
                        lines.push(format!("API KEY: {} | created at {}", k.key, k.created_at));
                    }
                }
                Ok(if lines.is_empty() {
                    "No API keys".to_string()
                } else {
                    lines.join("\n")
                })
            }
            ["keys:delete", key] => {
                if kv::delete(&format!("keys/{key}"))? {
                    Ok(format!("API key {key} was deleted"))
                } else {
                    Err(format!("No API key {key}"))
                }
            }
            _ => Err(
                "usage: berth run commands keys:generate | keys:list | keys:delete KEY".to_string(),
            ),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct ApiKey {
    key: String,
    secret_hmac: String,
    created_at: String,
}

/// The command object, exactly as the original serialises it.
#[derive(Serialize, Deserialize, Clone)]
struct Command {
    id: u64,
    token: String,
    command: String,
    created_at: String,
    ran_at: Option<String>,
    callback_url: Option<String>,
    result_data: Option<ResultData>,
}

#[derive(Serialize, Deserialize, Clone)]
struct ResultData {
    ok: bool,
    output: String,
}

fn hmac(secret: &str) -> Result<String, berth_sdk::Error> {
    let tag = crypto::sign(SECRET_KEY, secret.as_bytes())?;
    Ok(tag.iter().map(|b| format!("{b:02x}")).collect())
}

fn status_error(status: u16, message: &str) -> Response {
    Response::json(
        status,
        &serde_json::json!({ "status": "error", "message": message }),
    )
}

/// Api-Key and Api-Secret must name a stored pair.
fn authenticate(req: &Request) -> Result<(), Response> {
    let denied = || status_error(401, "not_authenticated");
    let (Some(key), Some(secret)) = (req.header("api-key"), req.header("api-secret")) else {
        return Err(denied());
    };
    if key.is_empty() || key.len() > 128 {
        return Err(denied());
    }
    let stored: ApiKey = kv::get_json(&format!("keys/{key}"))?.ok_or_else(denied)?;
    let given = hmac(secret)?;
    if crypto::constant_time_eq(given.as_bytes(), stored.secret_hmac.as_bytes()) {
        Ok(())
    } else {
        Err(denied())
    }
}

fn id_key(id: u64) -> String {
    format!("cmd/id/{id:020}")
}

fn token_key(token: &str) -> String {
    format!("cmd/token/{token}")
}

fn load(id: u64) -> Result<Option<Command>, berth_sdk::Error> {
    kv::get_json(&id_key(id))
}

fn save(c: &Command) -> Result<(), berth_sdk::Error> {
    kv::set_json(&id_key(c.id), c)
}

fn by_token(token: &str) -> Result<Command, Response> {
    let not_found = || status_error(404, "not_found");
    if token.len() > 128 {
        return Err(not_found());
    }
    let id: u64 = kv::get_string(&token_key(token))?
        .and_then(|s| s.parse().ok())
        .ok_or_else(not_found)?;
    load(id)?.ok_or_else(not_found)
}

fn list(req: &Request) -> HttpResult {
    let offset: usize = req.query_as("offset")?.unwrap_or(0);
    let limit: Option<usize> = req.query_as("limit")?;
    let mut out = Vec::new();
    for (i, entry) in kv::scan("cmd/id/").enumerate() {
        if i < offset {
            continue;
        }
        if limit.is_some_and(|l| out.len() >= l) {
            break;
        }
        let (_, value) = entry?;
        if let Ok(c) = serde_json::from_slice::<serde_json::Value>(&value) {
            out.push(c);
        }
    }
    Ok(Response::json(200, &out))
}

#[derive(Deserialize, Default)]
struct CreateParams {
    cmd: Option<serde_json::Value>,
    sync: Option<serde_json::Value>,
    callback_url: Option<String>,
}

fn text_of(v: &Option<serde_json::Value>) -> Option<String> {
    match v {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    }
}

fn create(req: &Request) -> HttpResult {
    let params: CreateParams = if req.is_json() {
        if req.body().is_empty() {
            CreateParams::default()
        } else {
            req.json()?
        }
    } else {
        let mut p = CreateParams::default();
        // Body pairs first, then the query string (Sinatra merges both).
        for (k, v) in req
            .form()
            .into_iter()
            .chain(req.query_pairs().iter().cloned())
        {
            match k.as_str() {
                "cmd" if p.cmd.is_none() => p.cmd = Some(serde_json::Value::String(v)),
                "sync" if p.sync.is_none() => p.sync = Some(serde_json::Value::String(v)),
                "callback_url" if p.callback_url.is_none() => p.callback_url = Some(v),
                _ => {}
            }
        }
        p
    };
    let cmd = text_of(&params.cmd).unwrap_or_default().trim().to_string();
    let mut messages = Vec::new();
    if cmd.is_empty() {
        messages.push("cmd can't be blank".to_string());
    }
    if cmd.chars().count() > MAX_CMD {
        messages.push(format!("cmd is too long (maximum is {MAX_CMD} characters)"));
    }
    if cmd.contains(['\n', '\r']) {
        messages.push("cmd must be a single line".to_string());
    }
    let callback_url = params.callback_url.filter(|u| !u.trim().is_empty());
    if let Some(url) = &callback_url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            messages.push("callback_url must be an http or https URL".to_string());
        } else if let Err(e @ (http_out::HttpError::Refused(_) | http_out::HttpError::Invalid(_))) =
            http_out::check(url)
        {
            // Stored, it would only fail at every delivery.
            messages.push(format!(
                "callback_url is not allowed on this host ({})",
                http_out::error_text(&e)
            ));
        }
    }
    if !messages.is_empty() {
        return Ok(Response::json(
            422,
            &serde_json::json!({ "status": "error", "messages": messages }),
        ));
    }
    let sync = text_of(&params.sync).is_some_and(|s| s == "true");

    // A sequence, not `increment`: a hot counter key would serialise every
    // POST behind the previous one's commit.
    let id = kv::next_in_sequence("commands")?;
    let token = crypto::random_token(32)?;
    let command = Command {
        id,
        token: token.clone(),
        command: cmd,
        created_at: time::now_rfc3339(),
        ran_at: None,
        callback_url,
        result_data: None,
    };
    save(&command)?;
    kv::set(&token_key(&token), id.to_string().as_bytes())?;
    if sync {
        let ran = execute(command)?;
        return Ok(Response::json(200, &ran));
    }
    jobs::enqueue("run", id.to_string().as_bytes(), 0)?;
    Ok(Response::json(200, &command))
}

fn show(req: &Request) -> HttpResult {
    let command = by_token(req.param("token").unwrap_or_default())?;
    Ok(Response::json(200, &command))
}

fn retry(req: &Request) -> HttpResult {
    let mut command = by_token(req.param("token").unwrap_or_default())?;
    command.ran_at = None;
    command.result_data = None;
    save(&command)?;
    jobs::enqueue("run", command.id.to_string().as_bytes(), 0)?;
    Ok(Response::json(200, &command))
}

/// The job: run command `id` unless it already ran.
fn run_command(id: u64) -> Result<(), berth_sdk::Error> {
    let Some(command) = load(id)? else {
        return Ok(()); // Gone: nothing to do.
    };
    if command.ran_at.is_some() {
        return Ok(()); // Already ran (a job delivered twice).
    }
    execute(command).map(drop)
}

/// Run on the daemon, store the result, queue the callback.
fn execute(mut command: Command) -> Result<Command, berth_sdk::Error> {
    let timeout_ms: u32 = config::get_or("timeout_ms", 60_000)?;
    let result = match dokku::run(&command.command, timeout_ms) {
        Ok(reply) => ResultData {
            ok: reply.ok,
            output: reply.output.replace("\u{1b}[1G", ""),
        },
        Err(DokkuError::Timeout) => ResultData {
            ok: false,
            output: "command_timed_out".into(),
        },
        Err(DokkuError::Unreachable(e))
        | Err(DokkuError::Invalid(e))
        | Err(DokkuError::Denied(e)) => ResultData {
            ok: false,
            output: e,
        },
    };
    command.ran_at = Some(time::now_rfc3339());
    command.result_data = Some(result);
    save(&command)?;
    // Called back after every run, failed or not (the original only called
    // back on success); the job retries a failing receiver.
    if command.callback_url.is_some() {
        jobs::enqueue("callback", command.id.to_string().as_bytes(), 0)?;
    }
    Ok(command)
}

/// The job: POST the command's JSON to its callback URL; a non-2xx answer
/// or a transport failure fails the job, which is retried with backoff.
fn callback(id: u64) -> Result<(), String> {
    let Some(command) = load(id)? else {
        return Ok(());
    };
    let Some(url) = &command.callback_url else {
        return Ok(());
    };
    let answer = http_out::post_json(url, &command, 0).map_err(|e| http_out::error_text(&e))?;
    if (200..300).contains(&answer.status) {
        Ok(())
    } else {
        Err(format!("callback to {url} answered {}", answer.status))
    }
}

berth_sdk::export!(Commands);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_described() {
        assert_eq!(Commands::router().check_description(), Ok(()));
    }

    /// The routes and jobs, run by the SDK's test host: Dokku and the
    /// callback receiver scripted.
    #[cfg(not(target_arch = "wasm32"))]
    mod test_host {
        use super::*;
        use berth_sdk::testing::{Answer, TestHost};
        use std::cell::RefCell;
        use std::rc::Rc;

        /// A host whose Dokku answers every command with its own text, and a
        /// key pair made with `keys:generate`.
        fn host() -> (TestHost, String, String) {
            let host = TestHost::new().dokku(|command| {
                Ok(dokku::Reply {
                    ok: !command.starts_with("fail"),
                    output: format!("\u{1b}[1Gran {command}"),
                })
            });
            let said = host.admin(Commands::admin, &["keys:generate"]).unwrap();
            let pair = said.lines().nth(1).unwrap();
            let key = pair.split(' ').nth(2).unwrap().to_string();
            let secret = pair.rsplit(' ').next().unwrap().to_string();
            (host, key, secret)
        }

        fn call(
            host: &TestHost,
            key: &str,
            secret: &str,
            method: &str,
            path: &str,
            body: &str,
        ) -> Answer {
            let headers = [
                ("Api-Key", key),
                ("Api-Secret", secret),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ];
            host.request(&Commands::router(), method, path, &headers, body.as_bytes())
        }

        #[test]
        fn only_a_stored_key_pair_gets_in() {
            let (host, key, secret) = host();
            assert_eq!(
                call(&host, &key, &secret, "GET", "/commands", "").status,
                200
            );
            for (k, s) in [
                (key.as_str(), "wrong"),
                ("nokey", secret.as_str()),
                ("", ""),
            ] {
                let denied = call(&host, k, s, "GET", "/commands", "");
                assert_eq!(denied.status, 401);
                assert_eq!(
                    denied.json(),
                    serde_json::json!({ "status": "error", "message": "not_authenticated" })
                );
            }
            assert!(host.admin(Commands::admin, &["keys:delete", &key]).is_ok());
            assert_eq!(
                call(&host, &key, &secret, "GET", "/commands", "").status,
                401
            );
        }

        #[test]
        fn a_command_is_queued_run_on_dokku_and_shown_with_its_result() {
            let (host, key, secret) = host();
            let created = call(&host, &key, &secret, "POST", "/commands", "cmd=apps:list");
            assert_eq!(created.status, 200, "{}", created.text());
            let token = created.json()["token"].as_str().unwrap().to_string();
            assert_eq!(created.json()["ran_at"], serde_json::Value::Null);
            assert_eq!(host.jobs().len(), 1);
            assert!(host.outside().is_empty(), "nothing ran before the job");

            assert!(host.run_queued_jobs(Commands::run_job).is_empty());
            assert_eq!(host.outside(), ["dokku run apps:list"]);
            let shown = call(
                &host,
                &key,
                &secret,
                "GET",
                &format!("/commands/{token}"),
                "",
            );
            let shown = shown.json();
            assert_eq!(shown["command"], "apps:list");
            assert_eq!(
                shown["result_data"],
                serde_json::json!({ "ok": true, "output": "ran apps:list" })
            );
            assert!(shown["ran_at"].is_string());

            // A job delivered twice runs the command once.
            let id = shown["id"].to_string();
            assert!(
                host.run_job(Commands::run_job, "run", id.as_bytes())
                    .is_ok()
            );
            assert_eq!(host.outside().len(), 1);

            // Retry queues it again; the list shows it.
            let retried = call(
                &host,
                &key,
                &secret,
                "GET",
                &format!("/commands/{token}/retry"),
                "",
            );
            assert_eq!(retried.json()["result_data"], serde_json::Value::Null);
            host.run_queued_jobs(Commands::run_job);
            assert_eq!(host.outside().len(), 2);
            let listed = call(&host, &key, &secret, "GET", "/commands", "").json();
            assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
            let unknown = call(&host, &key, &secret, "GET", "/commands/nope", "");
            assert_eq!(unknown.status, 404);
        }

        #[test]
        fn sync_runs_inline_and_the_callback_gets_every_run() {
            let (host, key, secret) = host();
            let received = Rc::new(RefCell::new(Vec::new()));
            let seen = received.clone();
            let host = host.http(move |out| {
                seen.borrow_mut().push((out.url.clone(), out.body.clone()));
                Ok(berth_sdk::http_out::Incoming {
                    status: if out.url.contains("down") { 500 } else { 200 },
                    headers: Vec::new(),
                    body: Vec::new(),
                })
            });
            let body = "cmd=fail-this&sync=true&callback_url=http://receiver.test/hook";
            let ran = call(&host, &key, &secret, "POST", "/commands", body);
            assert_eq!(ran.status, 200, "{}", ran.text());
            assert_eq!(ran.json()["result_data"]["ok"], false);
            assert!(host.run_queued_jobs(Commands::run_job).is_empty());
            let received = received.borrow();
            assert_eq!(received.len(), 1);
            assert_eq!(received[0].0, "http://receiver.test/hook");
            let posted: serde_json::Value = serde_json::from_slice(&received[0].1).unwrap();
            assert_eq!(posted["command"], "fail-this");
            drop(received);

            let body = "cmd=apps:list&sync=true&callback_url=http://down.test/";
            call(&host, &key, &secret, "POST", "/commands", body);
            let failed = host.run_queued_jobs(Commands::run_job);
            assert_eq!(failed.len(), 1);
            assert!(failed[0].1.contains("answered 500"), "{}", failed[0].1);
        }

        #[test]
        fn bad_commands_are_422_with_every_reason() {
            let (host, key, secret) = host();
            let long = format!("cmd={}", "a".repeat(MAX_CMD + 1));
            for (body, reason) in [
                ("cmd=", "cmd can't be blank"),
                (long.as_str(), "cmd is too long (maximum is 255 characters)"),
                ("cmd=a%0Ab", "cmd must be a single line"),
                (
                    "cmd=x&callback_url=ftp://x",
                    "callback_url must be an http or https URL",
                ),
            ] {
                let refused = call(&host, &key, &secret, "POST", "/commands", body);
                assert_eq!(refused.status, 422, "{body}");
                assert_eq!(refused.json()["messages"][0], reason, "{body}");
            }
            assert!(host.jobs().is_empty());
            assert!(host.keys("cmd/").is_empty(), "nothing stored");
        }
    }
}
