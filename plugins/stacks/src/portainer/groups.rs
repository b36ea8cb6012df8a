//! Endpoint groups and tags. Group 1, "Unassigned", always exists and
//! holds every endpoint no other group does; a user given a group may use
//! its endpoints.

use berth_sdk::{HttpResult, Request, Response, kv};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::model;
use crate::portainer::access::{Access, granted, policies};
use crate::portainer::endpoints::{Endpoint, endpoint_key, load_endpoint};
use crate::portainer::users::{User, id_param};
use crate::portainer::{Payload, fail, next_id, not_found, payload};

const UNASSIGNED: u64 = 1;

#[derive(Serialize, Deserialize)]
pub(super) struct Group {
    id: u64,
    name: String,
    description: String,
    tag_ids: Vec<u64>,
    pub(super) authorized_users: Vec<u64>,
    pub(super) authorized_teams: Vec<u64>,
}

impl Group {
    fn unassigned() -> Group {
        Group {
            id: UNASSIGNED,
            name: "Unassigned".into(),
            description: "Unassigned endpoints".into(),
            tag_ids: Vec::new(),
            authorized_users: Vec::new(),
            authorized_teams: Vec::new(),
        }
    }

    fn render(&self) -> Value {
        json!({
            "Id": self.id,
            "Name": self.name,
            "Description": self.description,
            "TagIds": self.tag_ids,
            "AuthorizedUsers": self.authorized_users,
            "AuthorizedTeams": self.authorized_teams,
            "UserAccessPolicies": policies(&self.authorized_users),
            "TeamAccessPolicies": policies(&self.authorized_teams),
            "Labels": [],
        })
    }
}

fn group_key(id: u64) -> String {
    format!("p/group/{id:010}")
}

/// Group `id` (group 1 whether or not it was ever changed).
pub(super) fn load_group(id: u64) -> Result<Option<Group>, Response> {
    let stored = kv::get_json(&group_key(id))?;
    Ok(stored.or_else(|| (id == UNASSIGNED).then(Group::unassigned)))
}

fn groups() -> Result<Vec<Group>, Response> {
    let mut all: Vec<Group> = model::scan("p/group/")?;
    if !all.iter().any(|g| g.id == UNASSIGNED) {
        all.insert(0, Group::unassigned());
    }
    Ok(all)
}

fn save_group(g: &Group) -> Result<(), Response> {
    kv::set_json(&group_key(g.id), g).map_err(Response::from)
}

/// `POST /api/endpoint_groups`.
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct NewGroup {
    name: String,
    description: String,
    associated_endpoints: Vec<u64>,
    #[serde(rename = "TagIDs")]
    tag_ids: Vec<u64>,
}

impl Payload for NewGroup {
    fn validate(&self) -> Result<(), &'static str> {
        if self.name.is_empty() {
            return Err("Invalid endpoint group name");
        }
        Ok(())
    }
}

/// `PUT /api/endpoint_groups/{id}`: what the body gives changes (its
/// grants are read as an [`Access`]).
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct GroupUpdate {
    name: String,
    description: Option<String>,
    associated_endpoints: Option<Vec<u64>>,
    #[serde(rename = "TagIDs")]
    tag_ids: Option<Vec<u64>>,
}

impl Payload for GroupUpdate {}

/// Check that every tag in `ids` exists.
fn check_tags(ids: &[u64]) -> Result<(), Response> {
    for id in ids {
        if kv::get(&tag_key(*id))?.is_none() {
            return Err(not_found("a tag"));
        }
    }
    Ok(())
}

/// Put exactly `endpoints` in group `group`: those listed join it, those
/// it had that are not listed go back to "Unassigned".
fn associate(group: u64, endpoints: &[u64]) -> Result<(), Response> {
    for id in endpoints {
        if load_endpoint(*id)?.is_none() {
            return Err(not_found("an endpoint"));
        }
    }
    let all: Vec<Endpoint> = model::scan("p/endpoint/")?;
    for mut e in all {
        let wanted = if endpoints.contains(&e.id) {
            group
        } else if e.group_id == group {
            UNASSIGNED
        } else {
            continue;
        };
        if e.group_id != wanted {
            e.group_id = wanted;
            kv::set_json(&endpoint_key(e.id), &e)?;
        }
    }
    Ok(())
}

/// `GET /api/endpoint_groups`: every group to an admin; to a user, the
/// groups given to it or its teams.
pub fn group_list(_: &Request, me: &User) -> HttpResult {
    let mut shown = Vec::new();
    for g in groups()? {
        if granted(me, &g.authorized_users, &g.authorized_teams)? {
            shown.push(g.render());
        }
    }
    Ok(Response::json(200, &shown))
}

pub fn group_create(req: &Request) -> HttpResult {
    let body: NewGroup = payload(req)?;
    check_tags(&body.tag_ids)?;
    let g = Group {
        // Group ids start after the built-in "Unassigned".
        id: next_id("group", "portainer-group")? + UNASSIGNED,
        name: body.name,
        description: body.description,
        tag_ids: body.tag_ids,
        authorized_users: Vec::new(),
        authorized_teams: Vec::new(),
    };
    save_group(&g)?;
    associate(g.id, &body.associated_endpoints)?;
    Ok(Response::json(200, &g.render()))
}

fn find_group(req: &Request) -> Result<Group, Response> {
    load_group(id_param(req)?)?.ok_or_else(|| not_found("an endpoint group"))
}

pub fn group_get(req: &Request) -> HttpResult {
    Ok(Response::json(200, &find_group(req)?.render()))
}

pub fn group_update(req: &Request) -> HttpResult {
    let mut g = find_group(req)?;
    let change: GroupUpdate = payload(req)?;
    if !change.name.is_empty() {
        g.name = change.name;
    }
    if let Some(d) = change.description {
        g.description = d;
    }
    if let Some(tags) = change.tag_ids {
        check_tags(&tags)?;
        g.tag_ids = tags;
    }
    // The same body, read again for its grants.
    let access: Access = payload(req)?;
    access.apply(&mut g.authorized_users, &mut g.authorized_teams)?;
    save_group(&g)?;
    if let Some(endpoints) = change.associated_endpoints
        && g.id != UNASSIGNED
    {
        associate(g.id, &endpoints)?;
    }
    Ok(Response::json(200, &g.render()))
}

/// `PUT /api/endpoint_groups/{id}/access`.
pub fn group_access(req: &Request) -> HttpResult {
    let mut g = find_group(req)?;
    let access: Access = payload(req)?;
    access.apply(&mut g.authorized_users, &mut g.authorized_teams)?;
    save_group(&g)?;
    Ok(Response::json(200, &g.render()))
}

/// `PUT` and `DELETE /api/endpoint_groups/{id}/endpoints/{endpointId}`:
/// one endpoint into the group, or back to "Unassigned".
pub fn group_endpoint(req: &Request) -> HttpResult {
    let g = find_group(req)?;
    let endpoint_id = req
        .param("endpointId")
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| fail(400, "Invalid endpoint identifier route variable", ""))?;
    let mut e = load_endpoint(endpoint_id)?.ok_or_else(|| not_found("an endpoint"))?;
    e.group_id = if req.method() == "DELETE" {
        UNASSIGNED
    } else {
        g.id
    };
    kv::set_json(&endpoint_key(e.id), &e)?;
    Ok(Response::new(204))
}

/// `DELETE /api/endpoint_groups/{id}`: its endpoints go back to
/// "Unassigned", which itself cannot go.
pub fn group_delete(req: &Request) -> HttpResult {
    let g = find_group(req)?;
    if g.id == UNASSIGNED {
        return Err(fail(
            403,
            "Unable to remove the default 'Unassigned' group",
            "Access denied to resource",
        ));
    }
    associate(g.id, &[])?;
    kv::delete(&group_key(g.id))?;
    Ok(Response::new(204))
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Tag {
    id: u64,
    name: String,
}

fn tag_key(id: u64) -> String {
    format!("p/tag/{id:010}")
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct NewTag {
    name: String,
}

impl Payload for NewTag {
    fn validate(&self) -> Result<(), &'static str> {
        if self.name.is_empty() {
            return Err("Invalid tag name");
        }
        Ok(())
    }
}

pub fn tag_list(_: &Request) -> HttpResult {
    let tags: Vec<Tag> = model::scan("p/tag/")?;
    Ok(Response::json(200, &tags))
}

pub fn tag_create(req: &Request) -> HttpResult {
    let body: NewTag = payload(req)?;
    let tags: Vec<Tag> = model::scan("p/tag/")?;
    if tags.iter().any(|t| t.name == body.name) {
        return Err(fail(
            409,
            "This name is already associated to a tag",
            "Tag already exists",
        ));
    }
    let tag = Tag {
        id: next_id("tag", "portainer-tag")?,
        name: body.name,
    };
    kv::set_json(&tag_key(tag.id), &tag)?;
    Ok(Response::json(200, &tag))
}

/// `DELETE /api/tags/{id}`, and the tag off every group.
pub fn tag_delete(req: &Request) -> HttpResult {
    let id = id_param(req)?;
    if !kv::delete(&tag_key(id))? {
        return Err(not_found("a tag"));
    }
    for mut g in groups()? {
        if g.tag_ids.contains(&id) {
            g.tag_ids.retain(|t| *t != id);
            save_group(&g)?;
        }
    }
    Ok(Response::new(204))
}
