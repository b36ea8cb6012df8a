//! Users and AuthLevels.
//!
//! A user's AuthLevel is an unbounded non-negative integer: you may view
//! and modify a user iff it is you or your level is strictly greater, and
//! you never set a level above your own. Resource levels (per beacon, per
//! application) are 0 access, 1 modify, 2 owner; they live in the user's
//! record, so `GET /users/{email}` shows them.

use std::collections::BTreeMap;

use berth_sdk::{Response, kv};
use serde::{Deserialize, Serialize};

use crate::fail;

pub const ACCESS: i64 = 0;
pub const MODIFY: i64 = 1;
pub const OWNER: i64 = 2;
/// In an update, removes the user from the resource.
const REMOVE: i64 = -1;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct User {
    pub email: String,
    pub hash: String,
    pub auth_level: i64,
    /// Beacon address -> resource level.
    #[serde(default)]
    pub beacons: BTreeMap<String, i64>,
    /// Application id -> resource level.
    #[serde(default)]
    pub applications: BTreeMap<String, i64>,
}

impl User {
    /// May this user view and modify `other`?
    pub fn sees(&self, other: &User) -> bool {
        self.email == other.email || self.auth_level > other.auth_level
    }

    pub fn beacon_level(&self, address: &str) -> Option<i64> {
        self.beacons.get(address).copied()
    }

    pub fn app_level(&self, id: u64) -> Option<i64> {
        self.applications.get(&id.to_string()).copied()
    }
}

/// What `GET /users/{email}` shows.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct View<'a> {
    auth_level: i64,
    permissions: Permissions<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Permissions<'a> {
    beacons: &'a BTreeMap<String, i64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    applications: &'a BTreeMap<String, i64>,
}

pub fn view(user: &User) -> View<'_> {
    View {
        auth_level: user.auth_level,
        permissions: Permissions {
            beacons: &user.beacons,
            applications: &user.applications,
        },
    }
}

pub fn key(email: &str) -> String {
    format!("user/{email}")
}

pub fn load(email: &str) -> Result<Option<User>, Response> {
    if email.is_empty() {
        return Ok(None);
    }
    kv::get_json(&key(email)).map_err(Response::from)
}

pub fn save(user: &User) -> Result<(), Response> {
    kv::set_json(&key(&user.email), user).map_err(Response::from)
}

fn not_found() -> Response {
    fail(404, "users", "user not found")
}

/// A user the requester may view and modify, or 404.
pub fn visible(me: &User, email: &str) -> Result<User, Response> {
    match load(email)? {
        Some(user) if me.sees(&user) => Ok(user),
        _ => Err(not_found()),
    }
}

/// The kinds of resource a user holds levels on.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Beacon,
    Application,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Beacon => "beacon",
            Kind::Application => "application",
        }
    }

    fn levels(self, user: &mut User) -> &mut BTreeMap<String, i64> {
        match self {
            Kind::Beacon => &mut user.beacons,
            Kind::Application => &mut user.applications,
        }
    }
}

/// Change `user`'s level on `resource`, on `me`'s authority: `me` needs
/// modify on it, and may neither grant above its own level nor touch an
/// owner unless it is one.
pub fn set_level(
    me: &User,
    user: &mut User,
    kind: Kind,
    resource: &str,
    level: i64,
) -> Result<(), Response> {
    let what = kind.name();
    if !(REMOVE..=OWNER).contains(&level) {
        return Err(fail(
            400,
            "permissions",
            &format!(
                "{what} levels are 0 (access), 1 (modify), 2 (owner) or -1 (remove), not {level}"
            ),
        ));
    }
    let mine = match kind {
        Kind::Beacon => me.beacons.get(resource),
        Kind::Application => me.applications.get(resource),
    }
    .copied()
    .unwrap_or(REMOVE);
    if mine < MODIFY {
        return Err(fail(
            403,
            "permissions",
            &format!("you cannot modify this {what}"),
        ));
    }
    if level > mine {
        return Err(fail(
            403,
            "permissions",
            &format!("cannot grant level {level} above your own ({mine}) on this {what}"),
        ));
    }
    let levels = kind.levels(user);
    if levels.get(resource).copied() == Some(OWNER) && mine < OWNER {
        return Err(fail(
            403,
            "permissions",
            &format!("only owners may change an owner of this {what}"),
        ));
    }
    if level == REMOVE {
        levels.remove(resource);
    } else {
        levels.insert(resource.to_string(), level);
    }
    Ok(())
}
