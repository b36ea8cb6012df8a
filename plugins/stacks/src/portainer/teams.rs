//! Teams and team memberships.

use super::*;

pub fn team_list(_: &Request) -> HttpResult {
    let teams: Vec<Value> = model::scan("p/team/")?;
    Ok(Response::json(200, &teams))
}

pub fn team_create(req: &Request) -> HttpResult {
    let v: Value = payload(req)?;
    let name = v["Name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| fail(400, "Invalid request payload", "Name is required"))?;
    let teams: Vec<Value> = model::scan("p/team/")?;
    if teams.iter().any(|t| t["Name"] == json!(name)) {
        return Err(fail(409, "Team already exists", name));
    }
    let id = kv::next_in_sequence("portainer-team")?;
    let team = json!({ "Id": id, "Name": name });
    kv::set_json(&format!("p/team/{id:010}"), &team)?;
    Ok(Response::json(200, &team))
}

/// The route's team: its key and record.
pub(super) fn find_team(req: &Request) -> Result<(String, Value), Response> {
    let key = format!("p/team/{:010}", id_param(req)?);
    let team = kv::get_json(&key)?.ok_or_else(|| not_found("a team"))?;
    Ok((key, team))
}

pub fn team_get(req: &Request) -> HttpResult {
    Ok(Response::json(200, &find_team(req)?.1))
}

pub fn team_update(req: &Request) -> HttpResult {
    let (key, mut team) = find_team(req)?;
    let v: Value = payload(req)?;
    if let Some(name) = v["Name"].as_str().filter(|n| !n.is_empty()) {
        team["Name"] = json!(name);
    }
    kv::set_json(&key, &team)?;
    Ok(Response::json(200, &team))
}

pub fn team_delete(req: &Request) -> HttpResult {
    let id = id_param(req)?;
    if !kv::delete(&format!("p/team/{id:010}"))? {
        return Err(not_found("a team"));
    }
    Ok(Response::new(204))
}

pub fn membership_list(_: &Request) -> HttpResult {
    let list: Vec<Value> = model::scan("p/membership/")?;
    Ok(Response::json(200, &list))
}

pub fn membership_create(req: &Request) -> HttpResult {
    let v: Value = payload(req)?;
    let (Some(user), Some(team)) = (v["UserID"].as_u64(), v["TeamID"].as_u64()) else {
        return Err(fail(
            400,
            "Invalid request payload",
            "UserID and TeamID are required",
        ));
    };
    let role = v["Role"].as_u64().unwrap_or(2);
    if kv::get(&format!("p/user/{user:010}"))?.is_none()
        || kv::get(&format!("p/team/{team:010}"))?.is_none()
    {
        return Err(fail(404, "Unable to find the user or the team", ""));
    }
    let id = kv::next_in_sequence("portainer-membership")?;
    let m = json!({ "Id": id, "UserID": user, "TeamID": team, "Role": role });
    kv::set_json(&format!("p/membership/{id:010}"), &m)?;
    Ok(Response::json(200, &m))
}

pub fn membership_delete(req: &Request) -> HttpResult {
    let id = id_param(req)?;
    if !kv::delete(&format!("p/membership/{id:010}"))? {
        return Err(not_found("a team membership"));
    }
    Ok(Response::new(204))
}
