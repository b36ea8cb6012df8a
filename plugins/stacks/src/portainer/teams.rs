//! Teams and team memberships.

use berth_sdk::{HttpResult, Request, Response, kv};
use serde::{Deserialize, Serialize};

use crate::model;
use crate::portainer::users::{User, id_param, load_user};
use crate::portainer::{ADMIN, Payload, fail, next_id, not_found, payload};

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct Team {
    id: u64,
    name: String,
}

/// A user's place in a team: `Role` 1 leads it, 2 is a member.
#[derive(Serialize, Deserialize)]
pub(super) struct Membership {
    #[serde(rename = "Id")]
    pub(super) id: u64,
    #[serde(rename = "UserID")]
    pub(super) user_id: u64,
    #[serde(rename = "TeamID")]
    pub(super) team_id: u64,
    #[serde(rename = "Role")]
    role: u8,
}

/// `POST /api/teams` and `PUT /api/teams/{id}`.
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct TeamName {
    name: String,
}

impl Payload for TeamName {}

/// `POST /api/team_memberships` and `PUT /api/team_memberships/{id}`.
#[derive(Deserialize, Default)]
#[serde(default)]
struct MembershipBody {
    #[serde(rename = "UserID")]
    user_id: u64,
    #[serde(rename = "TeamID")]
    team_id: u64,
    #[serde(rename = "Role")]
    role: i64,
}

impl Payload for MembershipBody {
    fn validate(&self) -> Result<(), &'static str> {
        if self.user_id == 0 {
            return Err("Invalid UserID");
        }
        if self.team_id == 0 {
            return Err("Invalid TeamID");
        }
        if !matches!(self.role, 1 | 2) {
            return Err("Invalid role value. Value must be one of: 1 (leader) or 2 (member)");
        }
        Ok(())
    }
}

fn team_key(id: u64) -> String {
    format!("p/team/{id:010}")
}

pub(super) fn membership_key(id: u64) -> String {
    format!("p/membership/{id:010}")
}

fn teams() -> Result<Vec<Team>, Response> {
    model::scan("p/team/").map_err(Response::from)
}

pub(super) fn memberships() -> Result<Vec<Membership>, Response> {
    model::scan("p/membership/").map_err(Response::from)
}

/// The teams `user` belongs to.
pub(super) fn teams_of(user: &User) -> Result<Vec<u64>, Response> {
    Ok(memberships()?
        .into_iter()
        .filter(|m| m.user_id == user.id)
        .map(|m| m.team_id)
        .collect())
}

/// An admin, or a leader of team `team`, may manage it (1.x's
/// `AuthorizedTeamManagement`).
fn manages(user: &User, team: u64) -> Result<bool, Response> {
    Ok(user.role == ADMIN
        || memberships()?
            .iter()
            .any(|m| m.user_id == user.id && m.team_id == team && m.role == 1))
}

/// Whether `user` leads at least one team.
pub(super) fn leads_a_team(user: &User) -> Result<bool, Response> {
    Ok(memberships()?
        .iter()
        .any(|m| m.user_id == user.id && m.role == 1))
}

/// 403 unless `user` may manage team `team`.
fn must_manage(user: &User, team: u64, err: &str) -> Result<(), Response> {
    if manages(user, team)? {
        Ok(())
    } else {
        Err(fail(403, err, "Access denied to resource"))
    }
}

/// `GET /api/teams`: every team to an admin, a user's own teams to them.
pub fn team_list(_: &Request, me: &User) -> HttpResult {
    let mine = teams_of(me)?;
    let list: Vec<Team> = teams()?
        .into_iter()
        .filter(|t| me.role == ADMIN || mine.contains(&t.id))
        .collect();
    Ok(Response::json(200, &list))
}

pub fn team_create(req: &Request) -> HttpResult {
    let body: TeamName = payload(req)?;
    if body.name.is_empty() {
        return Err(fail(400, "Invalid request payload", "Invalid team name"));
    }
    if teams()?.iter().any(|t| t.name == body.name) {
        return Err(fail(
            409,
            "A team with the same name already exists",
            "Team already exists",
        ));
    }
    let team = Team {
        id: next_id("team", "portainer-team")?,
        name: body.name,
    };
    kv::set_json(&team_key(team.id), &team)?;
    Ok(Response::json(200, &team))
}

/// The route's team.
fn find_team(req: &Request) -> Result<Team, Response> {
    kv::get_json(&team_key(id_param(req)?))?.ok_or_else(|| not_found("a team"))
}

/// The route's team, to a user who may manage it.
fn managed_team(req: &Request, me: &User) -> Result<Team, Response> {
    let team = find_team(req)?;
    if !manages(me, team.id)? {
        return Err(fail(
            403,
            "Access denied to team",
            "Access denied to resource",
        ));
    }
    Ok(team)
}

pub fn team_get(req: &Request, me: &User) -> HttpResult {
    Ok(Response::json(200, &managed_team(req, me)?))
}

pub fn team_update(req: &Request) -> HttpResult {
    let mut team = find_team(req)?;
    let body: TeamName = payload(req)?;
    if !body.name.is_empty() {
        team.name = body.name;
    }
    kv::set_json(&team_key(team.id), &team)?;
    Ok(Response::json(200, &team))
}

/// `DELETE /api/teams/{id}`, with the team's memberships.
pub fn team_delete(req: &Request) -> HttpResult {
    let team = find_team(req)?;
    for m in memberships()?.iter().filter(|m| m.team_id == team.id) {
        kv::delete(&membership_key(m.id))?;
    }
    kv::delete(&team_key(team.id))?;
    Ok(Response::new(204))
}

/// `GET /api/teams/{id}/memberships`.
pub fn team_memberships(req: &Request, me: &User) -> HttpResult {
    let team = managed_team(req, me)?;
    let list: Vec<Membership> = memberships()?
        .into_iter()
        .filter(|m| m.team_id == team.id)
        .collect();
    Ok(Response::json(200, &list))
}

pub fn membership_list(_: &Request) -> HttpResult {
    Ok(Response::json(200, &memberships()?))
}

/// Check a membership body against the store: the user and team exist
/// and the user is not in the team already (`except` a membership being
/// changed).
fn check_membership(body: &MembershipBody, except: Option<u64>) -> Result<(), Response> {
    if load_user(body.user_id)?.is_none() {
        return Err(not_found("a user"));
    }
    if kv::get(&team_key(body.team_id))?.is_none() {
        return Err(not_found("a team"));
    }
    let taken = memberships()?
        .iter()
        .any(|m| Some(m.id) != except && m.user_id == body.user_id && m.team_id == body.team_id);
    if taken {
        return Err(fail(
            409,
            "Team membership already registered",
            "Team membership already exists for this user and team",
        ));
    }
    Ok(())
}

/// `POST /api/team_memberships`: administrators, and leaders of the team.
pub fn membership_create(req: &Request, me: &User) -> HttpResult {
    let body: MembershipBody = payload(req)?;
    must_manage(
        me,
        body.team_id,
        "Permission denied to manage team memberships",
    )?;
    check_membership(&body, None)?;
    let m = Membership {
        id: next_id("membership", "portainer-membership")?,
        user_id: body.user_id,
        team_id: body.team_id,
        role: body.role as u8,
    };
    kv::set_json(&membership_key(m.id), &m)?;
    Ok(Response::json(200, &m))
}

fn find_membership(req: &Request) -> Result<Membership, Response> {
    kv::get_json(&membership_key(id_param(req)?))?.ok_or_else(|| not_found("a team membership"))
}

/// `PUT /api/team_memberships/{id}`: administrators, and leaders of both
/// the membership's team and the team it moves to, who cannot change
/// its role.
pub fn membership_update(req: &Request, me: &User) -> HttpResult {
    let body: MembershipBody = payload(req)?;
    let old = find_membership(req)?;
    let id = old.id;
    for team in [old.team_id, body.team_id] {
        must_manage(me, team, "Permission denied to update the membership")?;
    }
    if me.role != ADMIN && i64::from(old.role) != body.role {
        return Err(fail(
            403,
            "Permission denied to update the role of membership",
            "Access denied to resource",
        ));
    }
    check_membership(&body, Some(id))?;
    let m = Membership {
        id,
        user_id: body.user_id,
        team_id: body.team_id,
        role: body.role as u8,
    };
    kv::set_json(&membership_key(id), &m)?;
    Ok(Response::json(200, &m))
}

/// `DELETE /api/team_memberships/{id}`: administrators, and leaders of
/// the membership's team.
pub fn membership_delete(req: &Request, me: &User) -> HttpResult {
    let m = find_membership(req)?;
    must_manage(me, m.team_id, "Permission denied to delete the membership")?;
    kv::delete(&membership_key(m.id))?;
    Ok(Response::new(204))
}
