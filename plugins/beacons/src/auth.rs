//! Login, logout and the session cookie.
//!
//! A session is a random token in an `HttpOnly`, `SameSite=Strict` cookie.
//! Only its HMAC under a host-held key is stored (`session/{digest}`), so
//! neither the KV store nor the plugin's memory can forge one, and logout
//! really ends it.

use berth_sdk::attempts::{self, Limits};
use berth_sdk::{HttpResult, Request, Response, config, crypto, kv, time};
use serde::{Deserialize, Serialize};

use crate::users::{self, User};
use crate::{PREFIX, fail};

const COOKIE: &str = "lighthouse_session";
const SESSION_KEY: &str = "beacons-session";

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Login {
    email: String,
    password: String,
}

#[derive(Serialize, Deserialize)]
struct Session {
    email: String,
    expires: u64,
    /// The user's password when the session began (see [`password_mark`]);
    /// a session from before Berth kept it has none, and is over.
    #[serde(default)]
    password: String,
}

/// `POST /login {Email, Password}`: a session cookie, or 401.
pub fn login(req: &Request) -> HttpResult {
    let login: Login = crate::body(req)?;
    let mut attempt = attempts::Login::begin(req, "", &login.email, Limits::from_config())
        .map_err(|e| {
            e.respond(
                || fail(429, "auth", "too many failed logins; try again in a minute"),
                Response::from,
            )
        })?;
    let user = users::load(&login.email)?;
    let hash = user.as_ref().map(|u| u.hash.as_str());
    let ok = attempt.verify_password(&login.password, hash)?;
    let Some(user) = user.filter(|_| ok) else {
        return Err(fail(401, "auth", "email or password incorrect"));
    };
    let ttl: u64 = config::get_or("session_ttl_secs", 86_400)?;
    let token = crypto::random_token(32)?;
    let session = Session {
        email: user.email.clone(),
        expires: time::now_secs() + ttl,
        password: password_mark(&user)?,
    };
    kv::set_json(&session_key(&token)?, &session)?;
    let cookie =
        format!("{COOKIE}={token}; Path={PREFIX}; Max-Age={ttl}; HttpOnly; SameSite=Strict");
    Ok(Response::json(200, &users::view(&user)).header("set-cookie", &cookie))
}

/// `GET /logout`: the session ends and the cookie is cleared.
pub fn logout(req: &Request) -> HttpResult {
    if let Some(token) = cookie(req) {
        kv::delete(&session_key(token)?)?;
    }
    let cleared = format!("{COOKIE}=; Path={PREFIX}; Max-Age=0; HttpOnly; SameSite=Strict");
    Ok(Response::new(200).header("set-cookie", &cleared))
}

/// The logged-in user, or 401 "not logged in".
pub fn session(req: &Request) -> Result<User, Response> {
    let missing = || fail(401, "auth", "not logged in");
    let token = cookie(req).ok_or_else(missing)?;
    let key = session_key(token)?;
    let session: Session = kv::get_json(&key)?.ok_or_else(missing)?;
    if session.expires <= time::now_secs() {
        kv::delete(&key)?;
        return Err(missing());
    }
    // A user deleted since, or whose password changed since, keeps no
    // session.
    let user = users::load(&session.email)?.ok_or_else(missing)?;
    if session.password != password_mark(&user)? {
        kv::delete(&key)?;
        return Err(missing());
    }
    Ok(user)
}

/// A tag of the user's stored password hash under a host-held key: a new
/// password (even the same one, with its new salt) changes it.
fn password_mark(user: &User) -> Result<String, Response> {
    Ok(hex(&crypto::sign(
        SESSION_KEY,
        format!("password\n{}", user.hash).as_bytes(),
    )?[..12]))
}

fn cookie(req: &Request) -> Option<&str> {
    req.headers()
        .iter()
        .filter(|(name, _)| name == "cookie")
        .flat_map(|(_, value)| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
}

fn session_key(token: &str) -> Result<String, Response> {
    let tag = crypto::sign(SESSION_KEY, token.as_bytes())?;
    Ok(format!("session/{}", hex(&tag)))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
