//! Resource controls as Portainer 1.x applied them: who besides
//! administrators may see and use a container, service, volume, network,
//! secret, config or stack. A non-administrator sees, through the Docker
//! proxy, only what a control gives them (directly, through a team, or as
//! public) — on the resource itself, or on its service or stack — and is
//! refused (403) the rest; what they create through the proxy is theirs.
//! Administrators' requests pass through untouched.

use berth_sdk::{HttpResult, Request, Response, docker, kv, percent_encode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::model;
use crate::portainer::endpoints::Endpoint;
use crate::portainer::registries::registry_auth;
use crate::portainer::teams::teams_of;
use crate::portainer::users::{User, id_param};
use crate::portainer::{ADMIN, Payload, fail, next_id, not_found, payload};

/// Resource kinds by 1.x's number (1 container ... 7 config).
const KINDS: [&str; 7] = [
    "container",
    "service",
    "volume",
    "network",
    "secret",
    "stack",
    "config",
];
pub(super) const STACK: u8 = 6;

#[derive(Serialize, Deserialize, Clone)]
pub(super) struct Control {
    id: u64,
    kind: u8,
    resource_id: String,
    sub_resource_ids: Vec<String>,
    users: Vec<u64>,
    teams: Vec<u64>,
    public: bool,
    administrators_only: bool,
}

impl Control {
    fn render(&self) -> Value {
        json!({
            "Id": self.id,
            "ResourceId": self.resource_id,
            "SubResourceIds": self.sub_resource_ids,
            "Type": self.kind,
            "UserAccesses": self.users.iter().map(|u| json!({ "UserId": u, "AccessLevel": 1 })).collect::<Vec<_>>(),
            "TeamAccesses": self.teams.iter().map(|t| json!({ "TeamId": t, "AccessLevel": 1 })).collect::<Vec<_>>(),
            "Public": self.public,
            "AdministratorsOnly": self.administrators_only,
            "System": false,
        })
    }

    /// Whether `user` may see and use what this control covers.
    fn allows(&self, user: &User, teams: &[u64]) -> bool {
        user.role == ADMIN
            || (!self.administrators_only
                && (self.public
                    || self.users.contains(&user.id)
                    || self.teams.iter().any(|t| teams.contains(t))))
    }

    fn covers(&self, kind: u8, id: &str) -> bool {
        self.kind == kind
            && (self.resource_id == id || self.sub_resource_ids.iter().any(|s| s == id))
    }
}

fn control_key(id: u64) -> String {
    format!("p/control/{id:010}")
}

fn controls() -> Result<Vec<Control>, Response> {
    model::scan("p/control/").map_err(Response::from)
}

/// Record that `user` owns a resource they just created.
pub(super) fn own(user: &User, kind: u8, resource_id: &str) -> Result<(), Response> {
    let c = Control {
        id: next_id("control", "portainer-control")?,
        kind,
        resource_id: resource_id.to_string(),
        sub_resource_ids: Vec::new(),
        users: vec![user.id],
        teams: Vec::new(),
        public: false,
        administrators_only: false,
    };
    kv::set_json(&control_key(c.id), &c).map_err(Response::from)
}

/// Forget the controls of a resource that is gone (a name may be used
/// again).
pub(super) fn disown(kind: u8, resource_id: &str) -> Result<(), Response> {
    for c in controls()?.iter().filter(|c| c.covers(kind, resource_id)) {
        kv::delete(&control_key(c.id))?;
    }
    Ok(())
}

/// Move the controls of a resource that was renamed (a stack migrated
/// under a new name).
pub(super) fn rename_controls(kind: u8, from: &str, to: &str) -> Result<(), Response> {
    for mut c in controls()?.into_iter().filter(|c| c.covers(kind, from)) {
        if c.resource_id == from {
            c.resource_id = to.to_string();
        }
        for sub in c.sub_resource_ids.iter_mut().filter(|s| *s == from) {
            *sub = to.to_string();
        }
        kv::set_json(&control_key(c.id), &c)?;
    }
    Ok(())
}

/// Whether `user` may see stack `name`: its control gives it to them (a
/// stack without one is administrators').
pub(super) fn may_see_stack(user: &User, name: &str) -> Result<bool, Response> {
    if user.role == ADMIN {
        return Ok(true);
    }
    let teams = teams_of(user)?;
    Ok(controls()?
        .iter()
        .find(|c| c.covers(STACK, name))
        .is_some_and(|c| c.allows(user, &teams)))
}

/// `POST /api/resource_controls`.
#[derive(Deserialize, Default)]
#[serde(default)]
struct NewControl {
    #[serde(rename = "ResourceID")]
    resource_id: String,
    #[serde(rename = "Type")]
    kind: String,
    #[serde(rename = "Public")]
    public: bool,
    #[serde(rename = "AdministratorsOnly")]
    administrators_only: bool,
    #[serde(rename = "Users")]
    users: Vec<u64>,
    #[serde(rename = "Teams")]
    teams: Vec<u64>,
    #[serde(rename = "SubResourceIDs")]
    sub_resource_ids: Vec<String>,
}

impl Payload for NewControl {
    fn validate(&self) -> Result<(), &'static str> {
        if self.resource_id.is_empty() {
            return Err("invalid payload: invalid resource identifier");
        }
        if self.kind.is_empty() {
            return Err("invalid payload: invalid type");
        }
        if self.users.is_empty()
            && self.teams.is_empty()
            && !self.public
            && !self.administrators_only
        {
            return Err("invalid payload: must specify Users, Teams, Public or AdministratorsOnly");
        }
        if self.public && self.administrators_only {
            return Err(
                "invalid payload: cannot set both public and administrators only flags to true",
            );
        }
        Ok(())
    }
}

/// `PUT /api/resource_controls/{id}`.
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct ControlUpdate {
    public: bool,
    administrators_only: bool,
    users: Vec<u64>,
    teams: Vec<u64>,
}

impl Payload for ControlUpdate {
    fn validate(&self) -> Result<(), &'static str> {
        if self.public && self.administrators_only {
            return Err(
                "invalid payload: cannot set both public and administrators only flags to true",
            );
        }
        Ok(())
    }
}

pub fn control_create(req: &Request) -> HttpResult {
    let body: NewControl = payload(req)?;
    let kind = KINDS
        .iter()
        .position(|k| *k == body.kind)
        .map(|i| i as u8 + 1)
        .ok_or_else(|| {
            fail(
                400,
                "Invalid type value. Value must be one of: container, service, volume, network, secret, stack or config",
                "",
            )
        })?;
    if controls()?
        .iter()
        .any(|c| c.covers(kind, &body.resource_id))
    {
        return Err(fail(
            409,
            "A resource control is already associated to this resource",
            "Resource control already exists",
        ));
    }
    let c = Control {
        id: next_id("control", "portainer-control")?,
        kind,
        resource_id: body.resource_id,
        sub_resource_ids: body.sub_resource_ids,
        users: body.users,
        teams: body.teams,
        public: body.public,
        administrators_only: body.administrators_only,
    };
    kv::set_json(&control_key(c.id), &c)?;
    Ok(Response::json(200, &c.render()))
}

fn find_control(req: &Request) -> Result<Control, Response> {
    kv::get_json(&control_key(id_param(req)?))?.ok_or_else(|| not_found("a resource control"))
}

pub fn control_update(req: &Request) -> HttpResult {
    let mut c = find_control(req)?;
    let change: ControlUpdate = payload(req)?;
    c.public = change.public;
    c.administrators_only = change.administrators_only;
    c.users = change.users;
    c.teams = change.teams;
    kv::set_json(&control_key(c.id), &c)?;
    Ok(Response::json(200, &c.render()))
}

pub fn control_delete(req: &Request) -> HttpResult {
    let c = find_control(req)?;
    kv::delete(&control_key(c.id))?;
    Ok(Response::new(204))
}

/// A resource family of the engine's API: its kind, the member that
/// holds an item's id, and where its labels are.
struct Family {
    kind: u8,
    id: &'static str,
    labels: &'static [&'static str],
}

fn family(segment: &str) -> Option<Family> {
    let (kind, id, labels): (u8, &'static str, &'static [&'static str]) = match segment {
        "containers" => (1, "Id", &["Labels"]),
        "services" => (2, "ID", &["Spec", "Labels"]),
        "volumes" => (3, "Name", &["Labels"]),
        "networks" => (4, "Id", &["Labels"]),
        "secrets" => (5, "ID", &["Spec", "Labels"]),
        "configs" => (7, "ID", &["Spec", "Labels"]),
        _ => return None,
    };
    Some(Family { kind, id, labels })
}

/// What a non-administrator's proxied request needs: who they are and
/// the controls that may give them something.
struct Viewer<'a> {
    user: &'a User,
    teams: Vec<u64>,
    controls: Vec<Control>,
}

impl<'u> Viewer<'u> {
    /// `user`, with their teams and every control, read now.
    fn of(user: &'u User) -> Result<Viewer<'u>, Response> {
        Ok(Viewer {
            user,
            teams: teams_of(user)?,
            controls: controls()?,
        })
    }

    /// The control that decides for an item of `kind`: its own, else its
    /// service's (a container's), else its stack's.
    fn control_for(&self, kind: u8, id: &str, labels: &Value) -> Option<&Control> {
        let label = |name: &str| labels[name].as_str();
        let find = |kind: u8, id: &str| self.controls.iter().find(|c| c.covers(kind, id));
        find(kind, id)
            .or_else(|| label("com.docker.swarm.service.id").and_then(|s| find(2, s)))
            .or_else(|| {
                label("com.docker.stack.namespace")
                    .or(label("com.docker.compose.project"))
                    .and_then(|s| find(STACK, s))
            })
    }

    /// The item's control, if it lets the viewer see the item (an item
    /// without one is administrators').
    fn visible(&self, kind: u8, id: &str, labels: &Value) -> Option<&Control> {
        self.control_for(kind, id, labels)
            .filter(|c| c.allows(self.user, &self.teams))
    }
}

fn labels_at<'v>(item: &'v Value, path: &[&str]) -> &'v Value {
    path.iter().fold(item, |v, k| &v[*k])
}

/// The engine's answer as the client's.
fn relay(answer: docker::EngineAnswer) -> Response {
    let mut r = Response::new(answer.status);
    for (k, v) in &answer.headers {
        if matches!(
            k.as_str(),
            "content-type" | "docker-experimental" | "api-version" | "ostype" | "server"
        ) {
            r = r.header(k, v);
        }
    }
    r.body(answer.body)
}

fn engine_failure(e: docker::DockerError) -> Response {
    match e {
        docker::DockerError::Unreachable(m) => fail(503, "Unable to reach the Docker engine", &m),
        other => fail(
            500,
            "Unable to query the Docker engine",
            &docker::error_text(&other),
        ),
    }
}

/// The client's query, less Berth's `token`.
fn engine_query(req: &Request) -> String {
    req.query_pairs()
        .iter()
        .filter(|(k, _)| k != "token")
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// An engine path without its version: `/v1.41/containers/json` and
/// `/containers/json` alike.
pub(super) fn unversioned(path: &str) -> &str {
    match path.strip_prefix("/v") {
        Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => {
            rest.find('/').map_or("/", |i| &rest[i..])
        }
        _ => path,
    }
}

/// A non-administrator's request through the Docker proxy, as 1.x
/// filtered it. `None`: nothing to filter or check, proxy it as it is.
pub(super) fn restricted(
    req: &Request,
    user: &User,
    e: &Endpoint,
    path: &str,
) -> Result<Option<Response>, Response> {
    let unversioned = unversioned(path);
    let parts: Vec<&str> = unversioned.trim_matches('/').split('/').collect();
    let method = req.method();
    // Only the requests filtered or checked read the controls.
    let viewer = || Viewer::of(user);
    let denied = || fail(403, "Access denied to resource", "Unauthorized");
    let fam = parts.first().and_then(|segment| family(segment));
    match (method, parts.as_slice(), fam) {
        (
            "GET",
            ["containers", "json"]
            | ["services" | "volumes" | "networks" | "secrets" | "configs" | "tasks"],
            _,
        ) => list(req, &viewer()?, e, path, parts[0]).map(Some),
        ("POST", [_, "create"], Some(fam)) => create(req, user, e, path, fam).map(Some),
        // Pruning reaches everyone's resources.
        (_, [_, "prune"], _) => Err(denied()),
        (_, [segment, id, ..], Some(fam)) => match item_check(e, segment, id, fam, viewer)? {
            Checked::Unknown(answer) => Ok(Some(answer)),
            Checked::Hidden => Err(denied()),
            Checked::Visible => Ok(None),
        },
        _ => Ok(None),
    }
}

/// What a non-administrator may do with one item of the engine.
enum Checked {
    /// The engine does not have it: its own answer (404 for an unknown id).
    Unknown(Response),
    Hidden,
    Visible,
}

/// Inspect item `id` of `segment` on the engine and check its control.
fn item_check<'u>(
    e: &Endpoint,
    segment: &str,
    id: &str,
    fam: Family,
    viewer: impl FnOnce() -> Result<Viewer<'u>, Response>,
) -> Result<Checked, Response> {
    // Containers are inspected at `/containers/ID/json`, the others at
    // `/KIND/ID`.
    let inspect = match segment {
        "containers" => format!("/containers/{id}/json"),
        _ => format!("/{segment}/{id}"),
    };
    let answer =
        docker::request(&e.docker, "GET", &inspect, "", &[], &[]).map_err(engine_failure)?;
    if answer.status != 200 {
        return Ok(Checked::Unknown(relay(answer)));
    }
    let item: Value = serde_json::from_slice(&answer.body).unwrap_or_default();
    let full_id = item[fam.id].as_str().unwrap_or(id).to_string();
    let labels = match segment {
        // An inspected container keeps its labels under `Config`.
        "containers" => &item["Config"]["Labels"],
        _ => labels_at(&item, fam.labels),
    };
    Ok(match viewer()?.visible(fam.kind, &full_id, labels) {
        Some(_) => Checked::Visible,
        None => Checked::Hidden,
    })
}

/// Whether a non-administrator may open a console on container `id`, or
/// on the container exec instance `id` runs in: as for the proxy, a
/// control must give them the container (1.x checked only the endpoint).
pub(super) fn console_allowed(
    user: &User,
    e: &Endpoint,
    id: &str,
    exec: bool,
) -> Result<(), Response> {
    if user.role == ADMIN {
        return Ok(());
    }
    let container = if exec {
        let answer = docker::request(&e.docker, "GET", &format!("/exec/{id}/json"), "", &[], &[])
            .map_err(engine_failure)?;
        if answer.status != 200 {
            return Err(relay(answer));
        }
        let exec: Value = serde_json::from_slice(&answer.body).unwrap_or_default();
        exec["ContainerID"].as_str().unwrap_or_default().to_string()
    } else {
        id.to_string()
    };
    let viewer = || Viewer::of(user);
    let containers = family("containers").expect("containers are a family");
    match item_check(e, "containers", &container, containers, viewer)? {
        Checked::Unknown(answer) => Err(answer),
        Checked::Hidden => Err(fail(403, "Access denied to resource", "Unauthorized")),
        Checked::Visible => Ok(()),
    }
}

/// A list, filtered to what the viewer may see, each item decorated with
/// its control as 1.x did (`Portainer.ResourceControl`).
fn list(req: &Request, viewer: &Viewer, e: &Endpoint, path: &str, segment: &str) -> HttpResult {
    let answer = docker::request(&e.docker, "GET", path, &engine_query(req), &[], &[])
        .map_err(engine_failure)?;
    if answer.status != 200 {
        return Ok(relay(answer));
    }
    let mut doc: Value = serde_json::from_slice(&answer.body)
        .map_err(|err| fail(500, "Unable to read the engine's answer", &err.to_string()))?;
    // Tasks are seen with their service.
    let (kind, id_member, labels): (u8, &str, &[&str]) = match family(segment) {
        Some(f) => (f.kind, f.id, f.labels),
        None => (2, "ServiceID", &["Spec", "ContainerSpec", "Labels"]),
    };
    let items = match segment {
        "volumes" => doc["Volumes"].as_array_mut(),
        _ => doc.as_array_mut(),
    };
    if let Some(items) = items {
        items.retain_mut(|item| {
            let id = item[id_member].as_str().unwrap_or_default().to_string();
            let Some(c) = viewer.visible(kind, &id, labels_at(item, labels)) else {
                return false;
            };
            item["Portainer"] = json!({ "ResourceControl": c.render() });
            true
        });
    }
    Ok(Response::json(200, &doc))
}

/// A create, and the new resource made the creator's.
fn create(req: &Request, user: &User, e: &Endpoint, path: &str, fam: Family) -> HttpResult {
    if req.body_withheld() {
        return Err(fail(
            413,
            "Request body too large",
            "a create body over the plugin's body limit",
        ));
    }
    let mut headers: Vec<(String, String)> = ["content-type", "x-registry-auth"]
        .iter()
        .filter_map(|h| req.header(h).map(|v| (h.to_string(), v.to_string())))
        .collect();
    if let Some(auth) = registry_auth(req, user)? {
        headers.retain(|(h, _)| h != "x-registry-auth");
        if !auth.is_empty() {
            headers.push(("x-registry-auth".into(), auth));
        }
    }
    let answer = docker::request(
        &e.docker,
        "POST",
        path,
        &engine_query(req),
        &headers,
        req.body(),
    )
    .map_err(engine_failure)?;
    if (200..300).contains(&answer.status) {
        let made: Value = serde_json::from_slice(&answer.body).unwrap_or_default();
        if let Some(id) = made[fam.id].as_str() {
            own(user, fam.kind, id)?;
        }
    }
    Ok(relay(answer))
}
