//! The user routes (`/users/...`) and `berth run beacons create-admin`.

use std::collections::BTreeMap;

use berth_sdk::{HttpResult, Request, Response, crypto, kv};
use serde::Deserialize;

use crate::users::{Kind, OWNER, User, key, load, save, set_level, view, visible};
use crate::{beacons, fail, ok};

/// `GET /users/list`: the emails you can see.
pub fn list(_: &Request, me: &User) -> HttpResult {
    let mut emails = Vec::new();
    for item in kv::scan("user/") {
        let (_, value) = item?;
        let user: User = serde_json::from_slice(&value)
            .map_err(|e| fail(500, "users", &format!("a stored user is unreadable: {e}")))?;
        if me.sees(&user) {
            emails.push(user.email);
        }
    }
    Ok(Response::json(200, &emails))
}

/// `GET /users/{email}`.
pub fn get(req: &Request, me: &User) -> HttpResult {
    let user = visible(me, req.param("email").unwrap_or(""))?;
    Ok(Response::json(200, &view(&user)))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct Update {
    auth_level: Option<i64>,
    password: Option<String>,
    #[serde(default)]
    beacons: BTreeMap<String, i64>,
    #[serde(default)]
    applications: BTreeMap<String, i64>,
}

/// `PUT /users/{email}`: every change is checked before any is stored.
pub fn update(req: &Request, me: &User) -> HttpResult {
    let mut user = visible(me, req.param("email").unwrap_or(""))?;
    let update: Update = crate::body(req)?;
    if let Some(level) = update.auth_level {
        if level < 0 {
            return Err(fail(400, "users", "AuthLevel cannot be negative"));
        }
        if level > me.auth_level {
            return Err(fail(
                403,
                "users",
                &format!(
                    "cannot set AuthLevel {level} above your own ({})",
                    me.auth_level
                ),
            ));
        }
        user.auth_level = level;
    }
    if let Some(password) = update.password {
        if password.is_empty() {
            return Err(fail(400, "users", "Password cannot be empty"));
        }
        user.hash = crypto::hash_password(&password)?;
    }
    for (name, level) in update.beacons {
        let beacon = beacons::find(&name)?
            .ok_or_else(|| fail(400, "databases", "databases: given key not found"))?;
        set_level(me, &mut user, Kind::Beacon, &beacon.address, level)?;
    }
    for (name, level) in update.applications {
        let app = crate::apps::find(&name)?
            .ok_or_else(|| fail(400, "databases", "databases: given key not found"))?;
        set_level(me, &mut user, Kind::Application, &app.id.to_string(), level)?;
    }
    // The requester may have changed their own record.
    save(&user)?;
    ok()
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NewUser {
    email: String,
    password: String,
}

/// `POST /users/create`: needs AuthLevel >= 1; the new user has level 0.
pub fn create(req: &Request, me: &User) -> HttpResult {
    if me.auth_level < 1 {
        return Err(fail(
            403,
            "users",
            "creating users needs AuthLevel 1 or more",
        ));
    }
    let new: NewUser = crate::body(req)?;
    if new.email.trim().is_empty() || new.password.is_empty() {
        return Err(fail(400, "users", "Email and Password are required"));
    }
    if load(&new.email)?.is_some() {
        return Err(fail(
            400,
            "users",
            &format!("user {} already exists", new.email),
        ));
    }
    save(&User {
        email: new.email,
        hash: crypto::hash_password(&new.password)?,
        auth_level: 0,
        beacons: BTreeMap::new(),
        applications: BTreeMap::new(),
    })?;
    ok()
}

/// `berth run beacons create-admin EMAIL [--level N]`.
pub fn create_admin(args: &[&str]) -> Result<String, String> {
    let (email, level) = match args {
        [email] => (*email, OWNER),
        [email, "--level", n] => (
            *email,
            n.parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| format!("--level must be a non-negative integer, not `{n}`"))?,
        ),
        _ => return Err(crate::USAGE.to_string()),
    };
    if email.trim().is_empty() {
        return Err("the email cannot be empty".to_string());
    }
    let password = crypto::random_token(18)?;
    let existing: Option<User> = kv::get_json(&key(email))?;
    let mut user = existing.unwrap_or_else(|| User {
        email: email.to_string(),
        hash: String::new(),
        auth_level: level,
        beacons: BTreeMap::new(),
        applications: BTreeMap::new(),
    });
    user.auth_level = level;
    user.hash = crypto::hash_password(&password)?;
    kv::set_json(&key(email), &user)?;
    Ok(format!(
        "user {email} (AuthLevel {level})\npassword: {password}\n"
    ))
}
