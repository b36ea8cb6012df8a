//! Actions (each change a client asks for, recorded), and the event
//! stream.

use berth_sdk::{HttpResult, Request, Response, kv};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::cloud::keys::Caller;
use crate::cloud::paging::{page, passes};
use crate::cloud::render::{date, date_of, render_stack, service_json};
use crate::cloud::{fail, failure, framing};
use crate::model::{self, ACTION_URI, Failure, Op, SERVICE_URI, STACK_URI};

/// An action's state, as Docker Cloud named them (Berth's actions run
/// to their end within their request: none is ever canceled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionState {
    Pending,
    #[serde(rename = "In progress")]
    InProgress,
    Success,
    Failed,
}

impl ActionState {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionState::Pending => "Pending",
            ActionState::InProgress => "In progress",
            ActionState::Success => "Success",
            ActionState::Failed => "Failed",
        }
    }
}

impl std::fmt::Display for ActionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Action {
    uuid: String,
    seq: u64,
    kind: String,
    action: String,
    method: String,
    path: String,
    user: String,
    user_agent: String,
    ip: String,
    state: ActionState,
    start_date: String,
    end_date: Option<String>,
    object: String,
    body: String,
    logs: String,
    /// What to run again on retry.
    op: Option<Op>,
}

impl Action {
    fn uri(&self) -> String {
        format!("{ACTION_URI}{}/", self.uuid)
    }

    fn render(&self) -> Value {
        json!({
            "uuid": self.uuid,
            "resource_uri": self.uri(),
            "type": self.kind,
            "action": self.action,
            "method": self.method,
            "path": self.path,
            "user": self.user,
            "user_agent": self.user_agent,
            "ip": self.ip,
            "location": "",
            "state": self.state,
            "start_date": date(&self.start_date),
            "end_date": date_of(&self.end_date),
            "object": self.object,
            "body": self.body,
            // No `logs` member: the SDKs' Action objects take the JSON's
            // members as attributes, and `logs` would hide their `logs()`
            // method (`docker-cloud action logs` then fails). The log is
            // at `logs/`, as a stream.
            "is_user_action": true,
            "can_be_canceled": matches!(self.state, ActionState::Pending | ActionState::InProgress),
            "can_be_retried": self.state == ActionState::Failed,
        })
    }
}

pub(super) fn save_action(a: &Action) -> Result<(), berth_sdk::Error> {
    kv::set_json(&format!("action/{}", a.uuid), a)?;
    kv::set(
        &format!("actions/{:020}", u64::MAX - a.seq),
        a.uuid.as_bytes(),
    )
}

/// Record the action a request performs, run it, and answer 202 with the
/// object and `X-DockerCloud-Action-URI` (the error, with the header, when
/// it failed).
pub(super) fn act(
    req: &Request,
    user: &str,
    kind: &str,
    label: &str,
    object: &str,
    op: Option<Op>,
    run: impl FnOnce() -> Result<Value, Failure>,
) -> HttpResult {
    let mut action = Action {
        uuid: model::uuid4()?,
        seq: kv::next_in_sequence("action")?,
        kind: kind.to_string(),
        action: label.to_string(),
        method: req.method().to_string(),
        path: req.path().to_string(),
        user: user.to_string(),
        user_agent: req.header("user-agent").unwrap_or_default().to_string(),
        ip: req
            .client()
            .rsplit_once(':')
            .map(|(ip, _)| ip)
            .unwrap_or_default()
            .to_string(),
        state: ActionState::InProgress,
        start_date: model::now(),
        end_date: None,
        object: object.to_string(),
        body: String::from_utf8_lossy(req.body()).into_owned(),
        logs: String::new(),
        op,
    };
    model::emit(
        "action",
        "create",
        &action.uri(),
        &action.uuid,
        action.state.as_str(),
        &[],
    );
    let result = run();
    action.end_date = Some(model::now());
    let response = match result {
        Ok(body) => {
            action.state = ActionState::Success;
            Response::json(202, &body)
        }
        Err(f) => {
            action.state = ActionState::Failed;
            let r = failure(f);
            action.logs = String::from_utf8_lossy(&r.body).into_owned();
            r
        }
    };
    save_action(&action)?;
    model::emit(
        "action",
        "update",
        &action.uri(),
        &action.uuid,
        action.state.as_str(),
        &[],
    );
    Ok(response.header("X-DockerCloud-Action-URI", &action.uri()))
}

pub fn action_list(req: &Request) -> HttpResult {
    let mut objects = Vec::new();
    for entry in kv::scan("actions/") {
        let (_, uuid) = entry?;
        let uuid = String::from_utf8_lossy(&uuid).into_owned();
        if let Some(a) = kv::get_json::<Action>(&format!("action/{uuid}"))? {
            let v = a.render();
            if passes(req, &v, &["uuid", "state", "object", "type", "action"])? {
                objects.push(v);
            }
        }
    }
    page(req, ACTION_URI, objects)
}

pub(super) fn find_action(req: &Request) -> Result<Action, Response> {
    let uuid = req.param("uuid").unwrap_or_default();
    kv::get_json::<Action>(&format!("action/{uuid}"))?.ok_or_else(|| fail(404, "Not found"))
}

pub fn action_get(req: &Request) -> HttpResult {
    Ok(Response::json(200, &find_action(req)?.render()))
}

/// `GET action/{uuid}/logs/`: the action's log, one message
/// `{"type": "log", "log": LINE}` per line, over a WebSocket (NDJSON
/// without the upgrade). Actions finish within their request, so the log
/// is whole and the stream ends after it.
pub fn action_logs(req: &Request) -> HttpResult {
    let a = find_action(req)?;
    let messages: Vec<Vec<u8>> = a
        .logs
        .split_inclusive('\n')
        .map(|line| {
            json!({ "type": "log", "log": line })
                .to_string()
                .into_bytes()
        })
        .collect();
    let topic = berth_sdk::events::open_messages(&messages)?;
    Ok(Response::subscribe(&topic, framing(req)))
}

pub fn action_cancel(req: &Request) -> HttpResult {
    let a = find_action(req)?;
    // Berth runs an action within its request: by the time a client can
    // name it, it has finished and there is nothing to cancel.
    Err(fail(
        409,
        &format!("Cannot cancel an action in state {}", a.state),
    ))
}

/// Retry a failed service or stack action: run the same operation again
/// as a new action.
pub fn action_retry(req: &Request, caller: &Caller) -> HttpResult {
    let user = caller.0.clone();
    let a = find_action(req)?;
    if a.state != ActionState::Failed {
        return Err(fail(
            409,
            &format!("Cannot retry an action in state {}", a.state),
        ));
    }
    let Some(op) = a.op else {
        return Err(fail(409, "This action cannot be retried"));
    };
    let label = a.action.clone();
    if let Some(uuid) = a.object.strip_prefix(SERVICE_URI) {
        let mut s = model::load_service(uuid.trim_end_matches('/'))?
            .ok_or_else(|| fail(404, "The action's service is gone"))?;
        act(req, &user, "Service", &label, &a.object, Some(op), || {
            model::run_service(&mut s, op)?;
            Ok(service_json(&s))
        })
    } else if let Some(uuid) = a.object.strip_prefix(STACK_URI) {
        let mut st = model::load_stack(uuid.trim_end_matches('/'))?
            .ok_or_else(|| fail(404, "The action's stack is gone"))?;
        act(req, &user, "Stack", &label, &a.object, Some(op), || {
            model::run_stack(&mut st, op)?;
            Ok(render_stack(&st))
        })
    } else {
        Err(fail(409, "This action cannot be retried"))
    }
}

/// The events websocket. One filter at most (`type`, `object` or
/// `parent`), since each maps to one topic the plugin publishes on.
pub fn events(req: &Request) -> HttpResult {
    model::follow(&model::cloud_endpoint());
    let mut filters = req
        .query_pairs()
        .iter()
        .filter(|(k, _)| matches!(k.as_str(), "type" | "object" | "parent"));
    let topic = match (filters.next(), filters.next()) {
        (None, _) => "cloud".to_string(),
        (Some((k, v)), None) => format!("cloud:{k}:{v}"),
        (Some(_), Some(_)) => {
            return Err(fail(400, "give one filter at most: type, object or parent"));
        }
    };
    Ok(Response::subscribe(&topic, framing(req)))
}
