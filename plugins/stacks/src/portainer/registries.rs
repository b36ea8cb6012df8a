//! Registries: where images are pulled from, with credentials, given to
//! users and teams like endpoints. Passwords never leave the plugin.

use base64::Engine as _;
use berth_sdk::{HttpResult, Request, Response, kv};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::model;
use crate::portainer::access::{Access, granted, policies};
use crate::portainer::settings::dockerhub;
use crate::portainer::users::{User, id_param};
use crate::portainer::{Payload, fail, next_id, not_found, payload};

#[derive(Serialize, Deserialize)]
pub(super) struct Registry {
    id: u64,
    kind: u8,
    name: String,
    pub(super) url: String,
    authentication: bool,
    pub(super) username: String,
    pub(super) password: String,
    authorized_users: Vec<u64>,
    authorized_teams: Vec<u64>,
}

impl Registry {
    fn render(&self) -> Value {
        json!({
            "Id": self.id,
            "Type": self.kind,
            "Name": self.name,
            "URL": self.url,
            "Authentication": self.authentication,
            "Username": self.username,
            "Password": "",
            "ManagementConfiguration": Value::Null,
            "AuthorizedUsers": self.authorized_users,
            "AuthorizedTeams": self.authorized_teams,
            "UserAccessPolicies": policies(&self.authorized_users),
            "TeamAccessPolicies": policies(&self.authorized_teams),
        })
    }
}

fn registry_key(id: u64) -> String {
    format!("p/registry/{id:010}")
}

fn registries() -> Result<Vec<Registry>, Response> {
    model::scan("p/registry/").map_err(Response::from)
}

/// `POST /api/registries`.
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct NewRegistry {
    name: String,
    #[serde(rename = "Type")]
    kind: i64,
    #[serde(rename = "URL")]
    url: String,
    authentication: bool,
    username: String,
    password: String,
}

impl Payload for NewRegistry {
    fn validate(&self) -> Result<(), &'static str> {
        if self.name.is_empty() {
            return Err("Invalid registry name");
        }
        if self.url.is_empty() {
            return Err("Invalid registry URL");
        }
        if self.authentication && (self.username.is_empty() || self.password.is_empty()) {
            return Err(
                "Invalid credentials. Username and password must be specified when authentication is enabled",
            );
        }
        if !matches!(self.kind, 1..=3) {
            return Err(
                "Invalid registry type. Valid values are: 1 (Quay.io), 2 (Azure container registry) or 3 (custom registry)",
            );
        }
        Ok(())
    }
}

/// `PUT /api/registries/{id}`: what the body gives changes (its grants
/// are read as an [`Access`]).
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct RegistryUpdate {
    name: Option<String>,
    #[serde(rename = "URL")]
    url: Option<String>,
    authentication: Option<bool>,
    username: Option<String>,
    password: Option<String>,
}

impl Payload for RegistryUpdate {}

/// 409 when another registry has `url`.
fn check_url(url: &str, except: Option<u64>) -> Result<(), Response> {
    if registries()?
        .iter()
        .any(|r| r.url == url && Some(r.id) != except)
    {
        return Err(fail(
            409,
            "Another registry with the same URL already exists",
            "Registry already exists",
        ));
    }
    Ok(())
}

/// `GET /api/registries`: every registry to an admin; to a user, those
/// given to it or its teams.
pub fn registry_list(_: &Request, me: &User) -> HttpResult {
    let mut shown = Vec::new();
    for r in registries()? {
        if granted(me, &r.authorized_users, &r.authorized_teams)? {
            shown.push(r.render());
        }
    }
    Ok(Response::json(200, &shown))
}

pub fn registry_create(req: &Request) -> HttpResult {
    let body: NewRegistry = payload(req)?;
    check_url(&body.url, None)?;
    let r = Registry {
        id: next_id("registry", "portainer-registry")?,
        kind: body.kind as u8,
        name: body.name,
        url: body.url,
        authentication: body.authentication,
        username: body.username,
        password: body.password,
        authorized_users: Vec::new(),
        authorized_teams: Vec::new(),
    };
    kv::set_json(&registry_key(r.id), &r)?;
    Ok(Response::json(200, &r.render()))
}

fn find_registry(req: &Request) -> Result<Registry, Response> {
    kv::get_json(&registry_key(id_param(req)?))?.ok_or_else(|| not_found("a registry"))
}

pub fn registry_get(req: &Request) -> HttpResult {
    Ok(Response::json(200, &find_registry(req)?.render()))
}

pub fn registry_update(req: &Request) -> HttpResult {
    let mut r = find_registry(req)?;
    let change: RegistryUpdate = payload(req)?;
    if let Some(name) = change.name.filter(|n| !n.is_empty()) {
        r.name = name;
    }
    if let Some(url) = change.url.filter(|u| !u.is_empty()) {
        check_url(&url, Some(r.id))?;
        r.url = url;
    }
    if let Some(authentication) = change.authentication {
        r.authentication = authentication;
        if !authentication {
            r.username.clear();
            r.password.clear();
        }
    }
    if let Some(username) = change.username.filter(|_| r.authentication) {
        r.username = username;
    }
    if let Some(password) = change
        .password
        .filter(|p| r.authentication && !p.is_empty())
    {
        r.password = password;
    }
    if r.authentication && (r.username.is_empty() || r.password.is_empty()) {
        return Err(fail(
            400,
            "Invalid request payload",
            "Invalid credentials. Username and password must be specified when authentication is enabled",
        ));
    }
    // The same body, read again for its grants.
    let access: Access = payload(req)?;
    access.apply(&mut r.authorized_users, &mut r.authorized_teams)?;
    kv::set_json(&registry_key(r.id), &r)?;
    Ok(Response::json(200, &r.render()))
}

/// `PUT /api/registries/{id}/access`.
pub fn registry_access(req: &Request) -> HttpResult {
    let mut r = find_registry(req)?;
    let access: Access = payload(req)?;
    access.apply(&mut r.authorized_users, &mut r.authorized_teams)?;
    kv::set_json(&registry_key(r.id), &r)?;
    Ok(Response::json(200, &r.render()))
}

pub fn registry_delete(req: &Request) -> HttpResult {
    let r = find_registry(req)?;
    kv::delete(&registry_key(r.id))?;
    Ok(Response::new(204))
}

/// Whether a proxied request carries registry credentials to the engine:
/// a pull, a push, a service created or updated.
pub(super) fn sends_registry_auth(method: &str, path: &str) -> bool {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    method == "POST"
        && match parts.as_slice() {
            ["images", "create"] | ["services", "create"] | ["services", _, "update"] => true,
            // Image names hold slashes: `/images/HOST:PORT/NAME/push`.
            ["images", .., "push"] => parts.len() > 2,
            _ => false,
        }
}

/// The `X-Registry-Auth` the engine gets, as 1.x's proxy made it: the
/// client names a registry (`{"registryId": N}` in base64; 0 is Docker
/// Hub) and Berth puts in its credentials, if the user may use it (403
/// if not, 404 if there is none). `{}` is sent as no header (anonymous).
/// `None`: the client's header, if any, goes as it is (its own
/// credentials).
pub(super) fn registry_auth(req: &Request, user: &User) -> Result<Option<String>, Response> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    let Some(header) = req.header("x-registry-auth") else {
        return Ok(None);
    };
    let header = header.trim();
    let Some(decoded) = [URL_SAFE, STANDARD]
        .iter()
        .find_map(|e| e.decode(header).ok())
    else {
        return Ok(None);
    };
    let Ok(Value::Object(named)) = serde_json::from_slice::<Value>(&decoded) else {
        return Ok(None);
    };
    if named.is_empty() {
        return Ok(Some(String::new()));
    }
    // Go's decoder matches `registryId` in any case.
    let Some(id) = named
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("registryId"))
        .map(|(_, v)| v)
    else {
        return Ok(None);
    };
    let id = id.as_u64().ok_or_else(|| {
        fail(
            400,
            "Invalid registry identifier",
            "X-Registry-Auth: registryId is a number",
        )
    })?;
    let (authentication, username, password, address) = if id == 0 {
        let hub = dockerhub()?;
        (
            hub.authentication,
            hub.username,
            hub.password,
            "docker.io".to_string(),
        )
    } else {
        let r: Registry =
            kv::get_json(&registry_key(id))?.ok_or_else(|| not_found("a registry"))?;
        if !granted(user, &r.authorized_users, &r.authorized_teams)? {
            return Err(fail(403, "Access denied to resource", "registry"));
        }
        (r.authentication, r.username, r.password, r.url)
    };
    let auth = if authentication {
        json!({ "username": username, "password": password, "serveraddress": address })
    } else {
        json!({ "serveraddress": address })
    };
    Ok(Some(URL_SAFE.encode(auth.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pulls_pushes_and_service_writes_carry_registry_credentials() {
        for (method, path, carries) in [
            ("POST", "/images/create", true),
            ("POST", "/images/127.0.0.1:5000/team/app/push", true),
            ("POST", "/services/create", true),
            ("POST", "/services/abc/update", true),
            ("GET", "/images/create", false),
            ("POST", "/images/push", false),
            ("POST", "/containers/create", false),
            ("POST", "/services/abc/rollback", false),
        ] {
            assert_eq!(
                sends_registry_auth(method, path),
                carries,
                "{method} {path}"
            );
        }
    }
}
