//! `droplets`: the CIKit REST API on Berth.
//!
//! Users log in with a TOTP code and get bearer tokens; droplets are
//! containers on a Docker endpoint, created from the operator's image and
//! command and labelled so only droplets are listed. The first owner comes
//! from `berth run droplets create-user -u NAME -g owner`.

mod droplet;
mod qr;

use berth_sdk::Capability;
use berth_sdk::attempts::{self, Limits};
use berth_sdk::{
    HttpResult, Info, Plugin, Request, Response, Router, Scope, config, crypto, kv, time,
};
use serde::{Deserialize, Serialize};

struct Droplets;

/// Host-held HMAC key that tokens are stored under (never the tokens).
const TOKEN_KEY: &str = "droplets-token";

impl Plugin for Droplets {
    fn info() -> Info {
        Info::new(
            "droplets",
            env!("CARGO_PKG_VERSION"),
            "CIKit REST API: TOTP users and droplets on Docker",
        )
        .capabilities(&[
            Capability::Kv,
            Capability::Crypto,
            Capability::Docker,
            Capability::Config,
            Capability::Log,
        ])
    }

    fn router() -> Router {
        const V1: &str = "/api/v1";
        let path = |p: &str| format!("{V1}{p}");
        let cikit = Scope::new().errors(failure);
        Router::new()
            .scope(cikit, |r| {
                r.post("user.auth", &path("/user/auth"), auth)
                    .post("user.refresh", &path("/user/auth/refresh"), refresh)
                    .route("not-found", "*", &path("/{rest...}"), not_found)
                    .guard(viewer, |r| {
                        r.delete("user.revoke", &path("/user/auth/revoke/{user}"), revoke)
                            .get("droplet.list", &path("/droplet/list"), droplet::list)
                    })
                    .guard(manager, |r| {
                        r.post("droplet.add", &path("/droplet/add"), droplet::add)
                            .patch(
                                "droplet.stop",
                                &path("/droplet/stop/{droplet}"),
                                droplet::stop,
                            )
                            .patch(
                                "droplet.start",
                                &path("/droplet/start/{droplet}"),
                                droplet::start,
                            )
                            .patch(
                                "droplet.restart",
                                &path("/droplet/restart/{droplet}"),
                                droplet::restart,
                            )
                            .delete(
                                "droplet.delete",
                                &path("/droplet/delete/{droplet}"),
                                droplet::delete,
                            )
                    })
                    .guard(owner, |r| {
                        r.get("user.setup", &path("/user/auth/setup/{user}"), setup)
                            .get("user.list", &path("/user/list"), user_list)
                            .post("user.add", &path("/user/add"), user_add)
                            .delete("user.delete", &path("/user/delete/{user}"), user_delete)
                    })
            })
            .describe(include_str!("../openapi.json"))
    }

    fn admin(args: Vec<String>) -> Result<String, String> {
        create_user_command(&args)
    }
}

berth_sdk::export!(Droplets);

/// The surface's error body, `{"error": ..., "errorId": ...}`.
pub(crate) fn fail(status: u16, id: u16, text: &str) -> Response {
    Response::json(status, &serde_json::json!({ "error": text, "errorId": id }))
}

/// A host error inside a handler: storage or crypto failed.
/// CIKit's body for failures without an id of their own: 900.
fn failure(status: u16, text: &str) -> Response {
    fail(status, 900, text)
}

fn not_found(_: &Request) -> HttpResult {
    Err(fail(404, 404, "Route not found"))
}

/// A group; each inherits the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Group {
    Viewer,
    Manager,
    Owner,
}

impl Group {
    fn parse(text: &str) -> Option<Group> {
        match text {
            "viewer" => Some(Group::Viewer),
            "manager" => Some(Group::Manager),
            "owner" => Some(Group::Owner),
            _ => None,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct User {
    #[serde(rename = "_id")]
    id: String,
    username: String,
    group: Group,
    created: String,
    /// TOTP secret, hex of the raw bytes. Never sent by a list.
    secret: String,
    /// Time step of the last code accepted; codes at or before it are refused.
    #[serde(default)]
    last_step: u64,
    /// Stored digests of the current access and refresh tokens.
    #[serde(default)]
    access: Option<String>,
    #[serde(default)]
    refresh: Option<String>,
}

/// What `user/list` shows of a user.
#[derive(Serialize)]
struct Listed<'a> {
    #[serde(rename = "_id")]
    id: &'a str,
    username: &'a str,
    created: &'a str,
    group: Group,
}

#[derive(Serialize, Deserialize)]
struct AccessToken {
    user: String,
    expires_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct RefreshToken {
    user: String,
}

fn user_key(name: &str) -> String {
    format!("users/{name}")
}

fn load_user(name: &str) -> Result<Option<User>, Response> {
    kv::get_json(&user_key(name)).map_err(Response::from)
}

fn save_user(user: &User) -> Result<(), Response> {
    kv::set_json(&user_key(&user.username), user).map_err(Response::from)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Stored form of a token: an HMAC under a host-held key.
fn digest(token: &str) -> Result<String, berth_sdk::Error> {
    Ok(hex(&crypto::sign(TOKEN_KEY, token.as_bytes())?))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    text.len()
        .is_multiple_of(2)
        .then(|| {
            (0..text.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
                .collect()
        })
        .flatten()
}

/// RFC 4648 base32 without padding, as authenticator apps want it.
fn base32(bytes: &[u8]) -> String {
    const ABC: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            out.push(ABC[((buffer >> (bits - 5)) & 31) as usize] as char);
            bits -= 5;
        }
    }
    if bits > 0 {
        out.push(ABC[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn token_ttl_secs() -> u64 {
    config::get_or("token_ttl_secs", 7200u64).unwrap_or(7200)
}

fn issuer() -> String {
    config::get("issuer")
        .ok()
        .flatten()
        .unwrap_or_else(|| "Berth".into())
}

fn otpauth_uri(user: &User) -> Result<String, Response> {
    let secret = unhex(&user.secret).ok_or_else(|| fail(500, 900, "stored secret is damaged"))?;
    let issuer = issuer();
    Ok(format!(
        "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits=6&period=30",
        berth_sdk::percent_encode(&issuer),
        berth_sdk::percent_encode(&user.username),
        base32(&secret),
        berth_sdk::percent_encode(&issuer)
    ))
}

/// Forget a user's tokens.
fn revoke_tokens(user: &mut User) -> Result<(), Response> {
    if let Some(d) = user.access.take() {
        kv::delete(&format!("access/{d}"))?;
    }
    if let Some(d) = user.refresh.take() {
        kv::delete(&format!("refresh/{d}"))?;
    }
    Ok(())
}

/// Revoke the user's previous pair and issue a new one.
fn issue_tokens(user: &mut User) -> HttpResult {
    revoke_tokens(user)?;
    let access = crypto::random_token(32)?;
    let refresh = crypto::random_token(32)?;
    let ttl = token_ttl_secs();
    let access_digest = digest(&access)?;
    let refresh_digest = digest(&refresh)?;
    kv::set_json(
        &format!("access/{access_digest}"),
        &AccessToken {
            user: user.username.clone(),
            expires_ms: now_ms() + ttl * 1000,
        },
    )?;
    kv::set_json(
        &format!("refresh/{refresh_digest}"),
        &RefreshToken {
            user: user.username.clone(),
        },
    )?;
    user.access = Some(access_digest);
    user.refresh = Some(refresh_digest);
    save_user(user)?;
    Ok(Response::json(
        200,
        &serde_json::json!({
            "token_type": "Bearer",
            "expires_in": ttl,
            "access_token": access,
            "refresh_token": refresh,
        }),
    ))
}

/// A string field of a JSON or form body.
fn field(req: &Request, name: &str) -> Option<String> {
    if req.is_json() || req.body().first() == Some(&b'{') {
        let value: serde_json::Value = serde_json::from_slice(req.body()).ok()?;
        return match value.get(name)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
    }
    req.form()
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// The signed-in user, if their token is valid and their group is at
/// least `needed`.
/// Who a request's access token names, once its group is at least the
/// route's.
pub(crate) struct Caller {
    name: String,
    group: Group,
}

fn viewer(req: &Request) -> Result<Caller, Response> {
    require(req, Group::Viewer)
}

fn manager(req: &Request) -> Result<Caller, Response> {
    require(req, Group::Manager)
}

fn owner(req: &Request) -> Result<Caller, Response> {
    require(req, Group::Owner)
}

fn require(req: &Request, needed: Group) -> Result<Caller, Response> {
    let header = req.header("authorization").unwrap_or("");
    let from_header = header
        .strip_prefix("Bearer")
        .map(|t| t.trim_start_matches(':').trim())
        .filter(|t| !t.is_empty())
        .map(str::to_string);
    let token = from_header
        .or_else(|| field(req, "access_token"))
        .ok_or_else(|| fail(401, 908, "Access token not found"))?;
    let key = format!("access/{}", digest(&token)?);
    let stored: AccessToken =
        kv::get_json(&key)?.ok_or_else(|| fail(401, 908, "Access token not found"))?;
    if now_ms() >= stored.expires_ms {
        kv::delete(&key)?;
        return Err(fail(401, 909, "Access token expired"));
    }
    let user = load_user(&stored.user)?.ok_or_else(|| fail(401, 908, "Access token not found"))?;
    if user.group < needed {
        return Err(fail(403, 912, "Access denied"));
    }
    Ok(Caller {
        name: user.username,
        group: user.group,
    })
}

fn auth(req: &Request) -> HttpResult {
    let (Some(username), Some(code)) = (field(req, "username"), field(req, "code")) else {
        return Err(fail(
            400,
            901,
            "TOTP data missing: username and code are required",
        ));
    };
    let mut attempt =
        attempts::Login::begin(req, "", &username, Limits::from_config()).map_err(|e| {
            e.respond(
                || {
                    fail(
                        429,
                        429,
                        "Too many failed login attempts; try again in a minute",
                    )
                },
                Response::from,
            )
        })?;
    // A failure keeps the slot the attempt took; a success gives it back.
    let Some(mut user) = load_user(&username)? else {
        return Err(fail(400, 903, "User not found"));
    };
    let secret = unhex(&user.secret).ok_or_else(|| fail(500, 900, "stored secret is damaged"))?;
    let step = crypto::totp_verify(&secret, code.trim())?;
    match step {
        Some(step) if step > user.last_step => user.last_step = step,
        _ => return Err(fail(400, 902, "TOTP code invalid")),
    }
    attempt.passed()?;
    issue_tokens(&mut user)
}

fn refresh(req: &Request) -> HttpResult {
    if field(req, "grant_type").as_deref() != Some("refresh_token") {
        return Err(fail(400, 913, "grant_type must be refresh_token"));
    }
    let token =
        field(req, "refresh_token").ok_or_else(|| fail(400, 913, "refresh_token is required"))?;
    let key = format!("refresh/{}", digest(&token)?);
    let stored: RefreshToken =
        kv::get_json(&key)?.ok_or_else(|| fail(401, 910, "Refresh token not found"))?;
    let mut user =
        load_user(&stored.user)?.ok_or_else(|| fail(401, 910, "Refresh token not found"))?;
    issue_tokens(&mut user)
}

fn revoke(req: &Request, me: &Caller) -> HttpResult {
    let name = req.param("user").unwrap_or_default();
    if name != me.name && me.group != Group::Owner {
        return Err(fail(401, 904, "User not authorised"));
    }
    let mut user = load_user(name)?.ok_or_else(|| fail(400, 903, "User not found"))?;
    revoke_tokens(&mut user)?;
    save_user(&user)?;
    Ok(Response::json(200, &serde_json::json!({ "status": "ok" })))
}

fn setup(req: &Request) -> HttpResult {
    let user = load_user(req.param("user").unwrap_or_default())?
        .ok_or_else(|| fail(400, 903, "User not found"))?;
    let uri = otpauth_uri(&user)?;
    let qr = qr::data_url(&uri).map_err(|e| fail(500, 900, &e))?;
    let secret = unhex(&user.secret).unwrap_or_default();
    Ok(Response::json(
        200,
        &serde_json::json!({ "qr": qr, "secret": base32(&secret) }),
    ))
}

fn all_users() -> Result<Vec<User>, Response> {
    let mut users = Vec::new();
    for entry in kv::scan("users/") {
        let (_, value) = entry?;
        if let Ok(user) = serde_json::from_slice::<User>(&value) {
            users.push(user);
        }
    }
    users.sort_by(|a, b| a.created.cmp(&b.created).then(a.username.cmp(&b.username)));
    Ok(users)
}

fn users_response() -> HttpResult {
    let users = all_users()?;
    let listed: Vec<Listed> = users
        .iter()
        .map(|u| Listed {
            id: &u.id,
            username: &u.username,
            created: &u.created,
            group: u.group,
        })
        .collect();
    Ok(Response::json(200, &listed))
}

fn user_list(_: &Request) -> HttpResult {
    users_response()
}

fn valid_username(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Create a user; the owner is unique.
fn create_user(name: &str, group: Group) -> Result<User, (u16, u16, String)> {
    let host_err = |e: berth_sdk::Error| (500, 900, berth_sdk::error_text(&e));
    if !valid_username(name) {
        return Err((
            400,
            913,
            "username must be 1 to 64 letters, digits, `-`, `_` or `.`".into(),
        ));
    }
    if kv::get(&user_key(name)).map_err(host_err)?.is_some() {
        return Err((400, 914, "Name already taken".into()));
    }
    if group == Group::Owner {
        // Atomic: two concurrent owner creations cannot both win.
        let won = kv::compare_and_swap("owner", None, Some(name.as_bytes())).map_err(host_err)?;
        if !won {
            return Err((403, 906, "Owner already exists".into()));
        }
    }
    let secret = crypto::random_bytes(20).map_err(host_err)?;
    let user = User {
        id: crypto::random_token(12).map_err(host_err)?,
        username: name.to_string(),
        group,
        created: time::now_rfc3339(),
        secret: hex(&secret),
        last_step: 0,
        access: None,
        refresh: None,
    };
    kv::set_json(&user_key(name), &user).map_err(host_err)?;
    Ok(user)
}

fn user_add(req: &Request) -> HttpResult {
    let (Some(name), Some(group)) = (field(req, "username"), field(req, "group")) else {
        return Err(fail(400, 913, "username and group are required"));
    };
    let group = Group::parse(&group).ok_or_else(|| fail(400, 905, "Unknown group"))?;
    create_user(&name, group).map_err(|(status, id, text)| fail(status, id, &text))?;
    users_response()
}

fn user_delete(req: &Request, me: &Caller) -> HttpResult {
    let name = req.param("user").unwrap_or_default();
    let mut user = load_user(name)?.ok_or_else(|| fail(400, 903, "User not found"))?;
    if name == me.name {
        return Err(fail(403, 912, "The owner cannot delete themselves"));
    }
    revoke_tokens(&mut user)?;
    kv::delete(&user_key(name))?;
    users_response()
}

/// `create-user -u NAME -g GROUP [-r]`, as the original CLI.
fn create_user_command(args: &[String]) -> Result<String, String> {
    const USAGE: &str = "usage: berth run droplets create-user -u NAME -g viewer|manager|owner [-r]\n  -r  regenerate an existing user's TOTP secret and revoke their tokens";
    let mut rest = args.iter().map(String::as_str);
    if rest.next() != Some("create-user") {
        return Err(USAGE.into());
    }
    let (mut name, mut group, mut regenerate) = (None, None, false);
    while let Some(arg) = rest.next() {
        match arg {
            "-u" | "--username" => name = rest.next(),
            "-g" | "--group" => group = rest.next(),
            "-r" | "--regenerate" => regenerate = true,
            "-h" | "--help" => return Ok(USAGE.into()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    let name = name.ok_or_else(|| format!("-u NAME is required\n{USAGE}"))?;
    let user = match (regenerate, kv::get_json::<User>(&user_key(name))?) {
        (true, Some(mut user)) => {
            revoke_tokens(&mut user).map_err(|_| "cannot revoke the user's tokens".to_string())?;
            user.secret = hex(&crypto::random_bytes(20)?);
            user.last_step = 0;
            kv::set_json(&user_key(name), &user)?;
            user
        }
        (true, None) => return Err(format!("user `{name}` does not exist")),
        (false, _) => {
            let group = group.ok_or_else(|| format!("-g GROUP is required\n{USAGE}"))?;
            let group = Group::parse(group)
                .ok_or_else(|| format!("unknown group `{group}` (viewer, manager, owner)"))?;
            create_user(name, group).map_err(|(_, _, text)| text)?
        }
    };
    let uri = otpauth_uri(&user).map_err(|_| "the stored secret is damaged".to_string())?;
    let secret = unhex(&user.secret).unwrap_or_default();
    Ok(format!(
        "user: {}\ngroup: {}\nsecret: {}\notpauth: {}",
        user.username,
        serde_json::to_value(user.group)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        base32(&secret),
        uri
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_rfc4648() {
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32(b"f"), "MY");
        assert_eq!(
            base32(b"12345678901234567890"),
            "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
        );
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(unhex(&hex(&[0, 1, 254, 255])), Some(vec![0, 1, 254, 255]));
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("abc"), None);
    }

    #[test]
    fn every_route_is_described() {
        assert_eq!(Droplets::router().check_description(), Ok(()));
    }

    #[test]
    fn groups_are_ordered() {
        assert!(Group::Viewer < Group::Manager && Group::Manager < Group::Owner);
        assert_eq!(Group::parse("owner"), Some(Group::Owner));
        assert_eq!(Group::parse("admin"), None);
    }
}
