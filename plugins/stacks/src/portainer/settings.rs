//! The instance: status, settings (and their public part), the message of
//! the day, extensions (none, as Community Edition without any) and the
//! Docker Hub credentials.

use berth_sdk::{HttpResult, Request, Response, config, kv};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::model;
use crate::portainer::{Payload, fail, payload};

/// The Portainer 1.x release whose API this is, as `/api/status` gives it.
const VERSION: &str = "1.24.2";

/// `GET /api/status`: what clients read first, without signing in.
pub fn status(_: &Request) -> HttpResult {
    Ok(Response::json(
        200,
        &json!({
            "Authentication": true,
            "EndpointManagement": true,
            "Snapshot": false,
            "Analytics": false,
            "Version": VERSION,
        }),
    ))
}

/// Any other path under `/api` (the prefix's fallback).
pub fn route_not_found(req: &Request) -> HttpResult {
    Err(fail(
        404,
        "Not found",
        &format!("no Portainer 1.x route for {} {}", req.method(), req.path()),
    ))
}

/// A label hidden from non-administrators' lists (1.x's `Pair`).
#[derive(Serialize, Deserialize, Default)]
#[serde(default)]
struct LabelPair {
    name: String,
    value: String,
}

/// The settings Portainer 1.24 keeps. Authentication is internal (1):
/// there is no LDAP or OAuth here.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Settings {
    #[serde(rename = "LogoURL")]
    logo_url: String,
    black_listed_labels: Vec<LabelPair>,
    authentication_method: u8,
    allow_bind_mounts_for_regular_users: bool,
    allow_privileged_mode_for_regular_users: bool,
    allow_volume_browser_for_regular_users: bool,
    enable_host_management_features: bool,
    snapshot_interval: String,
    #[serde(rename = "TemplatesURL")]
    templates_url: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            logo_url: String::new(),
            black_listed_labels: Vec::new(),
            authentication_method: 1,
            allow_bind_mounts_for_regular_users: true,
            allow_privileged_mode_for_regular_users: true,
            allow_volume_browser_for_regular_users: false,
            enable_host_management_features: false,
            snapshot_interval: "5m".into(),
            templates_url: String::new(),
        }
    }
}

const SETTINGS_KEY: &str = "p/settings";

fn settings() -> Result<Settings, Response> {
    Ok(kv::get_json(SETTINGS_KEY)?.unwrap_or_default())
}

/// The settings' `TemplatesURL` (empty: the stored templates).
pub(super) fn templates_url() -> Result<String, Response> {
    Ok(settings()?.templates_url)
}

/// `PUT /api/settings`: what the body gives changes.
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct SettingsUpdate {
    #[serde(rename = "LogoURL")]
    logo_url: Option<String>,
    black_listed_labels: Option<Vec<LabelPair>>,
    authentication_method: Option<i64>,
    allow_bind_mounts_for_regular_users: Option<bool>,
    allow_privileged_mode_for_regular_users: Option<bool>,
    allow_volume_browser_for_regular_users: Option<bool>,
    enable_host_management_features: Option<bool>,
    snapshot_interval: Option<String>,
    #[serde(rename = "TemplatesURL")]
    templates_url: Option<String>,
}

/// A URL as govalidator's `IsURL` takes it, roughly: a scheme and a host.
fn is_url(text: &str) -> bool {
    text.split_once("://")
        .is_some_and(|(scheme, rest)| !scheme.is_empty() && !rest.is_empty())
}

/// A Go duration such as `5m`, `1h30m` or `90s`.
fn is_duration(text: &str) -> bool {
    let mut digits = false;
    let mut units = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            digits = true;
            continue;
        }
        let unit = match (c, chars.peek()) {
            ('m', Some('s')) | ('u', Some('s')) | ('n', Some('s')) | ('µ', Some('s')) => {
                chars.next();
                true
            }
            ('h' | 'm' | 's', _) => true,
            _ => false,
        };
        if !unit || !digits {
            return false;
        }
        digits = false;
        units = true;
    }
    units && !digits
}

impl Payload for SettingsUpdate {
    fn validate(&self) -> Result<(), &'static str> {
        if let Some(m) = self.authentication_method
            && !matches!(m, 1..=3)
        {
            return Err(
                "Invalid authentication method value. Value must be one of: 1 (internal), 2 (LDAP/AD) or 3 (OAuth)",
            );
        }
        if let Some(url) = self.logo_url.as_deref()
            && !url.is_empty()
            && !is_url(url)
        {
            return Err("Invalid logo URL. Must correspond to a valid URL format");
        }
        if let Some(url) = self.templates_url.as_deref()
            && !url.is_empty()
            && !is_url(url)
        {
            return Err("Invalid external templates URL. Must correspond to a valid URL format");
        }
        if let Some(interval) = self.snapshot_interval.as_deref()
            && !is_duration(interval)
        {
            return Err("Invalid snapshot interval");
        }
        Ok(())
    }
}

/// `GET /api/settings` (administrators).
pub fn settings_get(_: &Request) -> HttpResult {
    Ok(Response::json(200, &settings()?))
}

pub fn settings_update(req: &Request) -> HttpResult {
    let change: SettingsUpdate = payload(req)?;
    if change.authentication_method.is_some_and(|m| m != 1) {
        return Err(fail(
            400,
            "Invalid request payload",
            "only internal authentication (1) is available here: there is no LDAP or OAuth",
        ));
    }
    let mut s = settings()?;
    let set = |field: &mut bool, value: Option<bool>| {
        if let Some(v) = value {
            *field = v;
        }
    };
    if let Some(url) = change.logo_url {
        s.logo_url = url;
    }
    if let Some(labels) = change.black_listed_labels {
        s.black_listed_labels = labels;
    }
    set(
        &mut s.allow_bind_mounts_for_regular_users,
        change.allow_bind_mounts_for_regular_users,
    );
    set(
        &mut s.allow_privileged_mode_for_regular_users,
        change.allow_privileged_mode_for_regular_users,
    );
    set(
        &mut s.allow_volume_browser_for_regular_users,
        change.allow_volume_browser_for_regular_users,
    );
    set(
        &mut s.enable_host_management_features,
        change.enable_host_management_features,
    );
    if let Some(interval) = change.snapshot_interval {
        s.snapshot_interval = interval;
    }
    if let Some(url) = change.templates_url {
        s.templates_url = url;
    }
    kv::set_json(SETTINGS_KEY, &s)?;
    Ok(Response::json(200, &s))
}

/// `GET /api/settings/public`: what the login page needs, to anyone.
pub fn settings_public(_: &Request) -> HttpResult {
    let s = settings()?;
    Ok(Response::json(
        200,
        &json!({
            "LogoURL": s.logo_url,
            "AuthenticationMethod": s.authentication_method,
            "AllowBindMountsForRegularUsers": s.allow_bind_mounts_for_regular_users,
            "AllowPrivilegedModeForRegularUsers": s.allow_privileged_mode_for_regular_users,
            "AllowVolumeBrowserForRegularUsers": s.allow_volume_browser_for_regular_users,
            "EnableHostManagementFeatures": s.enable_host_management_features,
            "EnableEdgeComputeFeatures": false,
            "ExternalTemplates": !s.templates_url.is_empty(),
            "OAuthLoginURI": "",
        }),
    ))
}

/// `GET /api/motd`: the operator's message (`motd` in the plugin's
/// settings), which 1.x fetched from portainer.io; `Hash` changes with it.
pub fn motd(_: &Request) -> HttpResult {
    let message = config::get_or("motd", String::new()).unwrap_or_default();
    let hash = model::fnv1a(model::FNV_OFFSET, message.bytes());
    Ok(Response::json(
        200,
        &json!({ "Title": "", "Message": message, "Hash": format!("{hash:016x}") }),
    ))
}

/// `GET /api/extensions`: none, as Community Edition without extensions.
pub fn extension_list(_: &Request) -> HttpResult {
    Ok(Response::json(200, &json!([])))
}

/// `POST /api/extensions`, `PUT` and `DELETE /api/extensions/{id}`:
/// extensions were licensed from portainer.io, which is not reachable;
/// never done here (405). `GET /api/extensions/{id}` is the fallback's
/// 404: there are none.
pub fn extension_change(_: &Request) -> HttpResult {
    Err(fail(
        405,
        "Extensions are not available",
        "this is Portainer Community Edition without extensions: none can be enabled, updated or removed",
    ))
}

/// `GET /api/roles`: 1.21's built-in roles, which access policies name
/// (the role-based access extension gave them authorizations).
pub fn role_list(_: &Request) -> HttpResult {
    let role = |id: u64, name: &str, description: &str| json!({ "Id": id, "Name": name, "Description": description, "Authorizations": {} });
    Ok(Response::json(
        200,
        &json!([
            role(
                1,
                "Endpoint administrator",
                "Full control of all resources in an endpoint"
            ),
            role(
                2,
                "Helpdesk",
                "Read-only access of all resources in an endpoint"
            ),
            role(
                3,
                "Standard user",
                "Full control of assigned resources in an endpoint"
            ),
            role(
                4,
                "Read-only user",
                "Read-only access of assigned resources in an endpoint"
            ),
        ]),
    ))
}

/// `PUT /api/settings/authentication/checkLDAP`: there is no LDAP here,
/// never done (405).
pub fn check_ldap(_: &Request) -> HttpResult {
    Err(fail(
        405,
        "LDAP is not available",
        "only internal authentication (1) is available here",
    ))
}

/// The Docker Hub credentials used for pulls.
#[derive(Serialize, Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
pub(super) struct DockerHub {
    pub(super) authentication: bool,
    pub(super) username: String,
    pub(super) password: String,
}

impl Payload for DockerHub {
    fn validate(&self) -> Result<(), &'static str> {
        if self.authentication && (self.username.is_empty() || self.password.is_empty()) {
            return Err(
                "Invalid credentials. Username and password must be specified when authentication is enabled",
            );
        }
        Ok(())
    }
}

const DOCKERHUB_KEY: &str = "p/dockerhub";

pub(super) fn dockerhub() -> Result<DockerHub, Response> {
    Ok(kv::get_json(DOCKERHUB_KEY)?.unwrap_or_default())
}

/// `GET /api/dockerhub`: whether pulls from the Docker Hub authenticate,
/// and as whom (never the password).
pub fn dockerhub_get(_: &Request) -> HttpResult {
    let hub = dockerhub()?;
    Ok(Response::json(
        200,
        &json!({ "Authentication": hub.authentication, "Username": hub.username }),
    ))
}

pub fn dockerhub_update(req: &Request) -> HttpResult {
    let mut hub: DockerHub = payload(req)?;
    if !hub.authentication {
        hub = DockerHub::default();
    }
    kv::set_json(DOCKERHUB_KEY, &hub)?;
    Ok(Response::json(
        200,
        &json!({ "Authentication": hub.authentication, "Username": hub.username }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        for ok in ["5m", "1h30m", "90s", "1.5h", "300ms"] {
            assert!(is_duration(ok), "{ok}");
        }
        for bad in ["", "5", "m", "5x", "h5", "5m5"] {
            assert!(!is_duration(bad), "{bad}");
        }
    }
}
