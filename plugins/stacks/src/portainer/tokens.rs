//! API access tokens for automation, as Portainer 2.x gave them beyond
//! 1.x: a user makes one (confirming their password), sends it as
//! `X-API-Key` with their own rights, and revokes it. Only an HMAC of the
//! token is stored; the token itself is shown once.

use berth_sdk::{HttpResult, Request, Response, crypto, kv, time};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::portainer::users::{User, find_user, load_user, password_matches};
use crate::portainer::{ADMIN, Payload, fail, failure, not_found, payload};

/// Host-held HMAC key the tokens are stored under.
const KEY_NAME: &str = "portainer-apikey";
/// What every token starts with, so it is recognised in logs and scans.
const PREFIX: &str = "ptr_";

#[derive(Serialize, Deserialize)]
struct ApiKey {
    id: u64,
    user_id: u64,
    description: String,
    /// The token's first characters, to tell tokens apart.
    prefix: String,
    created: u64,
}

impl ApiKey {
    fn render(&self) -> Value {
        json!({
            "id": self.id,
            "userId": self.user_id,
            "description": self.description,
            "prefix": self.prefix,
            "dateCreated": self.created,
            "lastUsed": 0,
            "digest": "",
        })
    }
}

fn digest(token: &str) -> Result<String, Response> {
    let tag = crypto::sign(KEY_NAME, token.as_bytes())?;
    Ok(tag.iter().map(|b| format!("{b:02x}")).collect())
}

fn key_key(digest: &str) -> String {
    format!("p/apikey/{digest}")
}

fn keys_of(user: u64) -> Result<Vec<(String, ApiKey)>, Response> {
    let mut out = Vec::new();
    for entry in kv::scan("p/apikey/") {
        let (key, value) = entry?;
        let k: ApiKey = serde_json::from_slice(&value)
            .map_err(|e| failure(500, &format!("stored `{key}` is not readable: {e}")))?;
        if k.user_id == user {
            out.push((key, k));
        }
    }
    Ok(out)
}

/// The user an `X-API-Key` names, if the token is one of theirs.
pub(super) fn user_of_token(token: &str) -> Result<Option<User>, Response> {
    if !token.starts_with(PREFIX) {
        return Ok(None);
    }
    let Some(k) = kv::get_json::<ApiKey>(&key_key(&digest(token)?))? else {
        return Ok(None);
    };
    load_user(k.user_id)
}

/// `POST /api/users/{id}/tokens`.
#[derive(Deserialize, Default)]
#[serde(default)]
struct NewToken {
    password: String,
    description: String,
}

impl Payload for NewToken {
    fn validate(&self) -> Result<(), &'static str> {
        if self.password.is_empty() {
            return Err("invalid password: cannot be empty");
        }
        if self.description.trim().is_empty() {
            return Err("invalid description: cannot be empty");
        }
        if self.description.chars().count() > 128 {
            return Err("invalid description: cannot be longer than 128 characters");
        }
        Ok(())
    }
}

/// A user acting on their own tokens (or an admin, to list and revoke).
fn owner(req: &Request, me: &User, admin_may: bool) -> Result<User, Response> {
    let user = find_user(req)?;
    if me.id != user.id && !(admin_may && me.role == ADMIN) {
        return Err(fail(
            403,
            "Permission denied to manage API tokens",
            "Access denied to resource",
        ));
    }
    Ok(user)
}

pub fn token_create(req: &Request, me: &User) -> HttpResult {
    let user = owner(req, me, false)?;
    let body: NewToken = payload(req)?;
    if !password_matches(req, &user, &body.password)? {
        return Err(fail(
            403,
            "Current password doesn't match",
            "Access denied to resource",
        ));
    }
    let token = format!("{PREFIX}{}", crypto::random_token(32)?);
    let key = ApiKey {
        id: kv::next_in_sequence("portainer-apikey")?,
        user_id: user.id,
        description: body.description,
        prefix: token.chars().take(7).collect(),
        created: time::now_secs(),
    };
    kv::set_json(&key_key(&digest(&token)?), &key)?;
    Ok(Response::json(
        200,
        &json!({ "rawAPIKey": token, "apiKey": key.render() }),
    ))
}

pub fn token_list(req: &Request, me: &User) -> HttpResult {
    let user = owner(req, me, true)?;
    let list: Vec<Value> = keys_of(user.id)?.iter().map(|(_, k)| k.render()).collect();
    Ok(Response::json(200, &list))
}

pub fn token_delete(req: &Request, me: &User) -> HttpResult {
    let user = owner(req, me, true)?;
    let id: u64 = req
        .param("keyId")
        .and_then(|k| k.parse().ok())
        .ok_or_else(|| fail(400, "Invalid API key identifier route variable", "keyId"))?;
    let Some((key, _)) = keys_of(user.id)?.into_iter().find(|(_, k)| k.id == id) else {
        return Err(not_found("an API key"));
    };
    kv::delete(&key)?;
    Ok(Response::new(204))
}

/// Every token of user `id`, when the user goes.
pub(super) fn revoke_all(id: u64) -> Result<(), Response> {
    for (key, _) in keys_of(id)? {
        kv::delete(&key)?;
    }
    Ok(())
}
