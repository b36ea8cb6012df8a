//! API keys: `berth run stacks apikey:*`, the Basic `user:apikey` guard,
//! and the keys of services with `roles: ["global"]`.

use base64::Engine as _;
use berth_sdk::{Request, Response, kv};

use crate::apikeys::{ApiKey, digest, make_key};
use crate::cloud::fail;
use crate::stackfile;

/// `berth run stacks apikey:create USER` and friends.
pub fn admin(args: &[String]) -> Result<String, String> {
    match args.first().map(String::as_str) {
        Some("apikey:create") => {
            let user = args.get(1).ok_or("usage: apikey:create USER")?;
            stackfile::check_name("user", user)?;
            let (key, _) = make_key(user, None)?;
            let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{key}"));
            Ok(format!(
                "user:   {user}\napikey: {key}\nAuthorization: Basic {auth}\n"
            ))
        }
        Some("apikey:list") => {
            let mut out = String::new();
            for entry in kv::scan("apikey/") {
                let (k, v) = entry?;
                let key: ApiKey = serde_json::from_slice(&v).map_err(|e| e.to_string())?;
                let id = &k["apikey/".len()..][..12];
                let role = key.service.map(|s| format!(" (roles of service {s})"));
                out.push_str(&format!(
                    "{id}  {}  {}{}\n",
                    key.user,
                    key.created,
                    role.unwrap_or_default()
                ));
            }
            Ok(out)
        }
        Some("apikey:revoke") => {
            let user = args.get(1).ok_or("usage: apikey:revoke USER")?;
            let mut n = 0;
            let mut doomed = Vec::new();
            for entry in kv::scan("apikey/") {
                let (k, v) = entry?;
                let key: ApiKey = serde_json::from_slice(&v).map_err(|e| e.to_string())?;
                if &key.user == user {
                    doomed.push(k);
                }
            }
            for k in doomed {
                kv::delete(&k)?;
                n += 1;
            }
            Ok(format!("revoked {n} key(s) of {user}\n"))
        }
        _ => Err(
            "commands: apikey:create USER | apikey:list | apikey:revoke USER (Docker Cloud); \
             admin:reset-password USER (Portainer)"
                .into(),
        ),
    }
}

/// The user a request's `Authorization: Basic user:apikey` names, or 401.
/// The Docker Cloud user a request's API key names.
pub struct Caller(pub String);

pub fn authenticate(req: &Request) -> Result<Caller, Response> {
    let denied = || {
        fail(
            401,
            "Authentication credentials were not provided or are invalid",
        )
    };
    let header = req.header("authorization").ok_or_else(denied)?;
    let encoded = header
        .strip_prefix("Basic ")
        .or_else(|| header.strip_prefix("basic "))
        .ok_or_else(denied)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| denied())?;
    let decoded = String::from_utf8(decoded).map_err(|_| denied())?;
    let (user, key) = decoded.split_once(':').ok_or_else(denied)?;
    let d = digest(user, key)?;
    match kv::get_json::<ApiKey>(&format!("apikey/{d}"))? {
        Some(k) if k.user == user => Ok(Caller(user.to_string())),
        _ => Err(denied()),
    }
}
