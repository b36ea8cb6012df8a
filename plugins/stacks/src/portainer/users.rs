//! Users, the first administrator, `POST /api/auth` and its JWTs.

use base64::Engine as _;
use berth_sdk::attempts::{self, Limits};
use berth_sdk::{HttpResult, Request, Response, config, crypto, kv, time};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::model;
use crate::portainer::teams::{Membership, leads_a_team, membership_key, memberships};
use crate::portainer::tokens::{revoke_all, user_of_token};
use crate::portainer::{
    ADMIN, JWT_KEY, Payload, b64url, fail, next_id, not_found, payload, take_turn,
};

#[derive(Serialize, Deserialize, Clone)]
pub struct User {
    pub(super) id: u64,
    pub(super) username: String,
    pub(super) role: u8,
    pub(super) hash: String,
}

impl User {
    fn render(&self) -> Value {
        json!({ "Id": self.id, "Username": self.username, "Role": self.role })
    }
}

pub(super) fn users() -> Result<Vec<User>, Response> {
    model::scan("p/user/").map_err(Response::from)
}

pub(super) fn user_by_name(name: &str) -> Result<Option<User>, Response> {
    Ok(users()?
        .into_iter()
        .find(|u| u.username.eq_ignore_ascii_case(name)))
}

fn user_key(id: u64) -> String {
    format!("p/user/{id:010}")
}

pub(super) fn load_user(id: u64) -> Result<Option<User>, Response> {
    kv::get_json(&user_key(id)).map_err(Response::from)
}

pub(super) fn save_user(u: &User) -> Result<(), Response> {
    kv::set_json(&user_key(u.id), u).map_err(Response::from)
}

/// `POST /api/auth` and `/api/users/admin/init`.
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
pub(super) struct Login {
    username: String,
    password: String,
}

impl Payload for Login {
    fn validate(&self) -> Result<(), &'static str> {
        if self.username.is_empty() {
            return Err("Invalid username");
        }
        if self.password.is_empty() {
            return Err("Invalid password");
        }
        Ok(())
    }
}

const INVALID_ROLE: &str =
    "Invalid role value. Value must be one of: 1 (administrator) or 2 (regular user)";

/// `POST /api/users`. The password may be empty, as 1.x allowed for
/// users who sign in elsewhere (LDAP); such a user cannot sign in here.
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
pub(super) struct NewUser {
    username: String,
    password: String,
    role: i64,
}

impl Payload for NewUser {
    fn validate(&self) -> Result<(), &'static str> {
        if self.username.is_empty() || self.username.contains(' ') {
            return Err("Invalid username. Must not contain any whitespace");
        }
        if !matches!(self.role, 1 | 2) {
            return Err(INVALID_ROLE);
        }
        Ok(())
    }
}

/// `PUT /api/users/{id}`: what is not zero changes.
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct UserUpdate {
    password: String,
    role: i64,
}

impl Payload for UserUpdate {
    fn validate(&self) -> Result<(), &'static str> {
        if !matches!(self.role, 0..=2) {
            return Err(INVALID_ROLE);
        }
        Ok(())
    }
}

/// `POST /api/users/{id}/passwd`.
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct PasswordCheck {
    password: String,
}

impl Payload for PasswordCheck {
    fn validate(&self) -> Result<(), &'static str> {
        if self.password.is_empty() {
            return Err("Invalid password");
        }
        Ok(())
    }
}

pub(super) fn new_user(username: &str, password: &str, role: u8) -> Result<User, Response> {
    take_turn("user")?;
    if user_by_name(username)?.is_some() {
        return Err(fail(
            409,
            "Another user with the same username already exists",
            "User already exists",
        ));
    }
    let user = User {
        id: next_id("user", "portainer-user")?,
        username: username.to_string(),
        role,
        hash: crypto::hash_password(password)?,
    };
    save_user(&user)?;
    Ok(user)
}

pub fn admin_check(_: &Request) -> HttpResult {
    if users()?.iter().any(|u| u.role == ADMIN) {
        Ok(Response::new(204))
    } else {
        Err(fail(
            404,
            "No administrator account found inside the database",
            "",
        ))
    }
}

pub fn admin_init(req: &Request) -> HttpResult {
    let c: Login = payload(req)?;
    take_turn("user")?;
    if users()?.iter().any(|u| u.role == ADMIN) {
        return Err(fail(
            409,
            "Unable to create administrator user",
            "An administrator user already exists",
        ));
    }
    let user = new_user(&c.username, &c.password, ADMIN)?;
    Ok(Response::json(200, &user.render()))
}

/// `POST /api/auth`: a JWT, or 422; failures are throttled per client
/// address and per user.
pub fn auth(req: &Request) -> HttpResult {
    let c: Login = payload(req)?;
    let mut attempt = begin_attempt(req, &c.username)?;
    let user = user_by_name(&c.username)?;
    let hash = user.as_ref().map(|u| u.hash.as_str());
    let ok = attempt.verify_password(&c.password, hash)?;
    let Some(user) = user.filter(|_| ok) else {
        return Err(fail(422, "Invalid credentials", "Unauthorized"));
    };
    let ttl = config::get_or("jwt_ttl_secs", 28_800u64).unwrap_or(28_800);
    let header = b64url(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = json!({
        "id": user.id,
        "username": user.username,
        "role": user.role,
        "exp": time::now_secs() + ttl,
        "pwd": password_mark(&user)?,
    });
    let signed = format!("{header}.{}", b64url(claims.to_string().as_bytes()));
    let tag = crypto::sign(JWT_KEY, signed.as_bytes())?;
    Ok(Response::json(
        200,
        &json!({ "jwt": format!("{signed}.{}", b64url(&tag)) }),
    ))
}

/// An attempt at `username`'s password by the request's client, counted
/// before the password is checked, or Portainer's 429.
fn begin_attempt(req: &Request, username: &str) -> Result<attempts::Login, Response> {
    attempts::Login::begin(req, "p/", username, Limits::from_config()).map_err(|e| {
        e.respond(
            || {
                fail(
                    429,
                    "Too many failed login attempts",
                    "try again in a minute",
                )
            },
            Response::from,
        )
    })
}

/// Whether `password` is `user`'s, checked as a login's is (counted first
/// against the client and the account, 429 past their limits): a token
/// holder may not test passwords any faster than a stranger.
pub(super) fn password_matches(
    req: &Request,
    user: &User,
    password: &str,
) -> Result<bool, Response> {
    let mut attempt = begin_attempt(req, &user.username)?;
    Ok(attempt.verify_password(password, Some(&user.hash))?)
}

/// The user a request's API token (`X-API-Key`) or JWT (`Authorization:
/// Bearer` or `?token=`) names.
pub fn authenticate(req: &Request) -> Result<User, Response> {
    let denied = || {
        fail(
            401,
            "Unauthorized",
            "A valid authorisation token is missing",
        )
    };
    if let Some(key) = req.header("x-api-key") {
        return user_of_token(key.trim())?.ok_or_else(denied);
    }
    let token = req
        .header("authorization")
        .and_then(|h| h.strip_prefix("Bearer "))
        .or(req.query("token"))
        .ok_or_else(denied)?;
    let (signed, tag) = token.trim().rsplit_once('.').ok_or_else(denied)?;
    let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(tag)
        .map_err(|_| denied())?;
    if !crypto::verify(JWT_KEY, signed.as_bytes(), &tag)? {
        return Err(denied());
    }
    let payload = signed.split_once('.').ok_or_else(denied)?.1;
    let claims: Value = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(denied)?;
    if claims["exp"].as_u64().unwrap_or(0) <= time::now_secs() {
        return Err(fail(401, "Unauthorized", "Token expired"));
    }
    let id = claims["id"].as_u64().ok_or_else(denied)?;
    let user = load_user(id)?.ok_or_else(denied)?;
    // A password changed since the token was issued ends it.
    if claims["pwd"].as_str() != Some(password_mark(&user)?.as_str()) {
        return Err(denied());
    }
    Ok(user)
}

/// What a JWT carries of its user's password: a tag of the stored hash
/// (which a new password, even the same one, changes with its salt), so
/// that changing the password ends the tokens issued before. It tells
/// nothing of the password or the hash: the key never leaves the host.
fn password_mark(user: &User) -> Result<String, Response> {
    let tag = crypto::sign(JWT_KEY, format!("password\n{}", user.hash).as_bytes())?;
    Ok(b64url(&tag[..12]))
}

pub fn admin(req: &Request) -> Result<User, Response> {
    let user = authenticate(req)?;
    if user.role != ADMIN {
        return Err(fail(
            403,
            "Access denied to resource",
            "administrators only",
        ));
    }
    Ok(user)
}

pub(super) fn id_param(req: &Request) -> Result<u64, Response> {
    req.param("id")
        .unwrap_or_default()
        .parse()
        .map_err(|_| fail(400, "Invalid identifier route variable", "id"))
}

/// `GET /api/users`: every user to an administrator; to anyone else,
/// the users who are not administrators (1.x's `FilterUsers`), so team
/// leaders can pick members.
pub fn user_list(_: &Request, me: &User) -> HttpResult {
    let list: Vec<Value> = users()?
        .iter()
        .filter(|u| me.role == ADMIN || u.role != ADMIN)
        .map(User::render)
        .collect();
    Ok(Response::json(200, &list))
}

/// `POST /api/users`: administrators, and team leaders, who may create
/// users but not administrators.
pub fn user_create(req: &Request, me: &User) -> HttpResult {
    if me.role != ADMIN && !leads_a_team(me)? {
        return Err(fail(
            403,
            "Permission denied to create user",
            "Access denied to resource",
        ));
    }
    let u: NewUser = payload(req)?;
    if me.role != ADMIN && u.role as u8 == ADMIN {
        return Err(fail(
            403,
            "Permission denied to create administrator user",
            "Access denied to resource",
        ));
    }
    let user = new_user(&u.username, &u.password, u.role as u8)?;
    Ok(Response::json(200, &user.render()))
}

pub(super) fn find_user(req: &Request) -> Result<User, Response> {
    let id = id_param(req)?;
    load_user(id)?.ok_or_else(|| not_found("a user"))
}

pub fn user_get(req: &Request, me: &User) -> HttpResult {
    let user = find_user(req)?;
    if me.role != ADMIN && me.id != user.id {
        return Err(fail(403, "Access denied to resource", ""));
    }
    Ok(Response::json(200, &user.render()))
}

pub fn user_update(req: &Request, me: &User) -> HttpResult {
    let mut user = find_user(req)?;
    if me.role != ADMIN && me.id != user.id {
        return Err(fail(
            403,
            "Permission denied to update user",
            "Unauthorized",
        ));
    }
    let change: UserUpdate = payload(req)?;
    if me.role != ADMIN && change.role != 0 {
        return Err(fail(
            403,
            "Permission denied to update user to administrator role",
            "Access denied to resource",
        ));
    }
    if !change.password.is_empty() {
        user.hash = crypto::hash_password(&change.password)?;
    }
    if change.role != 0 {
        user.role = change.role as u8;
    }
    save_user(&user)?;
    Ok(Response::json(200, &user.render()))
}

/// `POST /api/users/{id}/passwd`: whether `Password` is the user's own
/// (the UI asks before a password change). The user themself or an admin.
pub fn user_password_check(req: &Request, me: &User) -> HttpResult {
    let user = find_user(req)?;
    if me.role != ADMIN && me.id != user.id {
        return Err(fail(
            403,
            "Permission denied to update user",
            "Unauthorized",
        ));
    }
    let check: PasswordCheck = payload(req)?;
    let valid = password_matches(req, &user, &check.password)?;
    Ok(Response::json(200, &json!({ "valid": valid })))
}

/// `GET /api/users/{id}/memberships`: the user's team memberships, to the
/// user themself or an admin.
pub fn user_memberships(req: &Request, me: &User) -> HttpResult {
    let id = id_param(req)?;
    if me.role != ADMIN && me.id != id {
        return Err(fail(
            403,
            "Permission denied to update user memberships",
            "Unauthorized",
        ));
    }
    let list: Vec<Membership> = memberships()?
        .into_iter()
        .filter(|m| m.user_id == id)
        .collect();
    Ok(Response::json(200, &list))
}

pub fn user_delete(req: &Request, me: &User) -> HttpResult {
    let user = find_user(req)?;
    if user.id == me.id {
        return Err(fail(403, "Cannot remove your own user account", ""));
    }
    revoke_all(user.id)?;
    for m in memberships()?.iter().filter(|m| m.user_id == user.id) {
        kv::delete(&membership_key(m.id))?;
    }
    kv::delete(&user_key(user.id))?;
    Ok(Response::new(204))
}
