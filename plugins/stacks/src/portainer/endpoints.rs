//! Endpoints (Docker engines) and the Docker proxy under them.

use berth_sdk::{HttpResult, Request, Response, docker, kv, percent_encode, time};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::model::{self, State};
use crate::portainer::access::{Access, granted, policies};
use crate::portainer::groups::load_group;
use crate::portainer::registries::{registry_auth, sends_registry_auth};
use crate::portainer::resources::{console_allowed, restricted, unversioned};
use crate::portainer::users::{User, id_param};
use crate::portainer::{ADMIN, Payload, Stack, fail, next_id, not_found, payload};

#[derive(Serialize, Deserialize, Clone)]
pub(super) struct Endpoint {
    pub(super) id: u64,
    pub(super) name: String,
    pub(super) url: String,
    pub(super) public_url: String,
    pub(super) group_id: u64,
    pub(super) tls: bool,
    /// The Docker endpoint name this maps to.
    pub(super) docker: String,
    #[serde(default)]
    pub(super) authorized_users: Vec<u64>,
    #[serde(default)]
    pub(super) authorized_teams: Vec<u64>,
    /// The last snapshot of the engine (`POST .../snapshot`), if any.
    #[serde(default)]
    snapshot: Option<Value>,
    /// Whether the engine answered the last snapshot.
    #[serde(default = "up")]
    up: bool,
    /// Made with `TLS` but without its files, as 1.x before 1.16 made
    /// them: unusable until `/api/upload/tls` brings them.
    #[serde(default)]
    pending_tls: bool,
}

fn up() -> bool {
    true
}

impl Endpoint {
    /// 503 while the endpoint waits for its TLS files.
    pub(super) fn ready(&self) -> Result<(), Response> {
        if !self.pending_tls {
            return Ok(());
        }
        Err(fail(
            503,
            "Unable to reach the endpoint",
            &format!(
                "its TLS files are not all uploaded yet: POST /api/upload/tls/{{ca,cert,key}}?folder={}",
                self.id
            ),
        ))
    }

    fn render(&self) -> Value {
        let mut tls = json!({ "TLS": self.tls, "TLSSkipVerify": false });
        if self.tls {
            tls["TLSCACert"] = json!(format!("/data/tls/{}/ca.pem", self.id));
            tls["TLSCert"] = json!(format!("/data/tls/{}/cert.pem", self.id));
            tls["TLSKey"] = json!(format!("/data/tls/{}/key.pem", self.id));
        }
        json!({
            "Id": self.id,
            "Name": self.name,
            "Type": 1,
            "URL": self.url,
            "GroupId": self.group_id,
            "PublicURL": self.public_url,
            "TLSConfig": tls,
            "AuthorizedUsers": self.authorized_users,
            "AuthorizedTeams": self.authorized_teams,
            // The same grants as 1.21+ shows them.
            "UserAccessPolicies": policies(&self.authorized_users),
            "TeamAccessPolicies": policies(&self.authorized_teams),
            "Extensions": [],
            "Status": if self.up { 1 } else { 2 },
            "Snapshots": self.snapshot.iter().collect::<Vec<_>>(),
        })
    }
}

/// `PUT /api/endpoints/{id}`: what the body gives changes (its grants
/// are read as an [`Access`]).
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct EndpointUpdate {
    name: Option<String>,
    #[serde(rename = "URL")]
    url: Option<String>,
    #[serde(rename = "PublicURL")]
    public_url: Option<String>,
    #[serde(rename = "GroupID")]
    group_id: Option<u64>,
    #[serde(rename = "TLS")]
    tls: Option<bool>,
    #[serde(rename = "TLSSkipVerify")]
    tls_skip_verify: Option<bool>,
    #[serde(rename = "TLSSkipClientVerify")]
    tls_skip_client_verify: Option<bool>,
}

impl Payload for EndpointUpdate {}

/// The TLS files `POST /api/upload/tls/{certificate}?folder=` keeps for
/// a folder (an endpoint's id) until an endpoint update takes them.
fn upload_key(folder: &str, certificate: &str) -> String {
    format!("p/tls-upload/{folder}/{certificate}")
}

/// `POST /api/upload/tls/{certificate}?folder=ID` (multipart, `file`):
/// the CA, certificate or key an update of endpoint ID with `TLS` then
/// uses, as 1.x's web UI changes an endpoint's TLS (administrators).
pub fn upload_tls(req: &Request) -> HttpResult {
    let certificate = req.param("certificate").unwrap_or_default();
    if !matches!(certificate, "ca" | "cert" | "key") {
        return Err(fail(
            400,
            "Invalid certificate route value. Value must be one of: ca, cert or key",
            "",
        ));
    }
    let folder = req
        .query("folder")
        .filter(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_alphanumeric()))
        .ok_or_else(|| fail(400, "Invalid query parameter: folder", ""))?;
    let fields = form_fields(req)?;
    let file = field(&fields, "file")
        .filter(|f| !f.is_empty())
        .ok_or_else(|| {
            fail(
                400,
                "Invalid certificate file. Ensure that the file is uploaded correctly",
                "",
            )
        })?;
    if std::str::from_utf8(file).is_err() {
        return Err(fail(
            400,
            "Invalid certificate file. Ensure that the file is uploaded correctly",
            "a PEM file is text",
        ));
    }
    kv::set(&upload_key(folder, certificate), file)?;
    if let Ok(id) = folder.parse()
        && let Some(mut e) = load_endpoint(id)?
        && e.pending_tls
    {
        complete_tls(&mut e)?;
    }
    // 1.x answered an empty 200 (204 from 1.20 on); a 2xx either way.
    Ok(Response::new(200))
}

/// The TLS files uploaded for `folder`, if its CA is among them; no
/// client certificate with `skip_client_verify`.
fn uploaded_tls(
    folder: &str,
    skip_client_verify: bool,
) -> Result<Option<docker::TlsFiles>, Response> {
    let uploaded = |c: &str| -> Result<Option<String>, Response> {
        Ok(kv::get(&upload_key(folder, c))?.map(|b| String::from_utf8_lossy(&b).into_owned()))
    };
    let Some(ca) = uploaded("ca")? else {
        return Ok(None);
    };
    let (cert, key) = if skip_client_verify {
        (String::new(), String::new())
    } else {
        (
            uploaded("cert")?.unwrap_or_default(),
            uploaded("key")?.unwrap_or_default(),
        )
    };
    Ok(Some(docker::TlsFiles { ca, cert, key }))
}

fn forget_uploads(folder: &str) -> Result<(), Response> {
    for c in ["ca", "cert", "key"] {
        kv::delete(&upload_key(folder, c))?;
    }
    Ok(())
}

/// An endpoint waiting for its TLS files takes what was uploaded once the
/// engine answers with it; until then it keeps waiting.
fn complete_tls(e: &mut Endpoint) -> Result<(), Response> {
    let folder = e.id.to_string();
    let Some(files) = uploaded_tls(&folder, false)? else {
        return Ok(());
    };
    if docker::register_endpoint(&e.docker, &e.url, Some(&files)).is_err()
        || docker::ping(&e.docker).is_err()
    {
        return Ok(());
    }
    forget_uploads(&folder)?;
    e.pending_tls = false;
    e.up = true;
    kv::set_json(&endpoint_key(e.id), e)?;
    Ok(())
}

/// Turn TLS on or off for a `tcp://` endpoint with what was uploaded for
/// it. The engine is pinged with the new material under a probe name
/// first; the endpoint changes only if it answers.
fn change_tls(
    e: &mut Endpoint,
    tls: bool,
    skip_verify: bool,
    skip_client_verify: bool,
) -> Result<(), Response> {
    let invalid = |details: &str| fail(400, "Invalid request payload", details);
    if !e.docker.starts_with("portainer-") {
        return Err(invalid("TLS applies to tcp:// endpoints only"));
    }
    if tls && skip_verify {
        return Err(invalid(
            "TLSSkipVerify is not supported: upload the engine's CA (POST /api/upload/tls/ca)",
        ));
    }
    let folder = e.id.to_string();
    let uploaded = uploaded_tls(&folder, skip_client_verify)?;
    if tls == e.tls && uploaded.is_none() && !e.pending_tls {
        // Nothing new: the endpoint keeps the material it has.
        return Ok(());
    }
    let files = if tls {
        Some(uploaded.ok_or_else(|| {
            invalid(&format!(
                "a CA is required with TLS: upload it with POST /api/upload/tls/ca?folder={folder}"
            ))
        })?)
    } else {
        None
    };
    let probe = format!("{}-probe", e.docker);
    docker::register_endpoint(&probe, &e.url, files.as_ref())
        .map_err(|err| invalid(&docker::error_text(&err)))?;
    let answered = docker::ping(&probe);
    let _ = docker::remove_endpoint(&probe);
    if let Err(err) = answered {
        return Err(fail(
            500,
            "Unable to ping Docker environment",
            &docker::error_text(&err),
        ));
    }
    docker::register_endpoint(&e.docker, &e.url, files.as_ref())
        .map_err(|err| invalid(&docker::error_text(&err)))?;
    forget_uploads(&folder)?;
    e.tls = tls;
    e.pending_tls = false;
    e.up = true;
    Ok(())
}

pub(super) fn endpoint_key(id: u64) -> String {
    format!("p/endpoint/{id:010}")
}

/// Whether `user` may use endpoint `id` (an endpoint that is gone is an
/// administrator's only).
pub(super) fn may_use_endpoint(user: &User, id: u64) -> Result<bool, Response> {
    match load_endpoint(id)? {
        Some(e) => can_use(user, &e),
        None => Ok(user.role == ADMIN),
    }
}

pub(super) fn load_endpoint(id: u64) -> Result<Option<Endpoint>, Response> {
    kv::get_json(&endpoint_key(id)).map_err(Response::from)
}

/// Endpoint `id` a stack or console route names, or 1.x's 404.
pub(super) fn stack_endpoint(id: u64) -> Result<Endpoint, Response> {
    load_endpoint(id)?.ok_or_else(|| {
        fail(
            404,
            "Unable to find the endpoint associated to the stack inside the database",
            "",
        )
    })
}

/// Form fields: (name, value bytes) from multipart or urlencoded bodies.
pub(super) fn form_fields(req: &Request) -> Result<Vec<(String, Vec<u8>)>, Response> {
    let ctype = req.header("content-type").unwrap_or_default();
    if let Some(boundary) = ctype
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))
    {
        return multipart(req.body(), boundary.trim_matches('"'))
            .ok_or_else(|| fail(400, "Invalid request payload", "malformed multipart body"));
    }
    if ctype.contains("json") {
        let v: Value = payload(req)?;
        let obj = v
            .as_object()
            .ok_or_else(|| fail(400, "Invalid request payload", "a JSON object"))?;
        return Ok(obj
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), text.into_bytes())
            })
            .collect());
    }
    Ok(req
        .form()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect())
}

/// Split a `multipart/form-data` body into (name, bytes) parts.
pub(super) fn multipart(body: &[u8], boundary: &str) -> Option<Vec<(String, Vec<u8>)>> {
    let delimiter = format!("--{boundary}");
    let d = delimiter.as_bytes();
    let find = |hay: &[u8], needle: &[u8], from: usize| {
        hay.get(from..)?
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    let mut parts = Vec::new();
    let mut at = find(body, d, 0)? + d.len();
    loop {
        if body.get(at..at + 2) == Some(b"--") {
            return Some(parts);
        }
        let start = at + 2; // CRLF after the delimiter
        let next = find(body, d, start)?;
        let part = body.get(start..next.checked_sub(2)?)?;
        let split = find(part, b"\r\n\r\n", 0)?;
        let headers = String::from_utf8_lossy(&part[..split]);
        let name = headers.lines().find_map(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("content-disposition").then_some(())?;
            let orig = &headers[headers.to_ascii_lowercase().find("name=\"")? + 6..];
            Some(orig[..orig.find('"')?].to_string())
        })?;
        parts.push((name, part[split + 4..].to_vec()));
        at = next + d.len();
    }
}

pub(super) fn field<'a>(fields: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
}

pub(super) fn field_text(fields: &[(String, Vec<u8>)], name: &str) -> Option<String> {
    field(fields, name).map(|v| String::from_utf8_lossy(v).trim().to_string())
}

pub fn endpoint_create(req: &Request) -> HttpResult {
    let fields = form_fields(req)?;
    let name = field_text(&fields, "Name")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| fail(400, "Invalid request payload", "Invalid endpoint name"))?;
    let kind = field_text(&fields, "EndpointType").unwrap_or_else(|| "1".into());
    if kind != "1" {
        return Err(fail(
            400,
            "Invalid request payload",
            "EndpointType 1 (Docker) only",
        ));
    }
    let url = field_text(&fields, "URL").unwrap_or_default();
    let tls = field_text(&fields, "TLS").is_some_and(|t| t == "true" || t == "1");
    if tls && field_text(&fields, "TLSSkipVerify").is_some_and(|t| t == "true") {
        return Err(fail(
            400,
            "Invalid request payload",
            "TLSSkipVerify is not supported: upload the engine's CA as TLSCACertFile",
        ));
    }
    let group_id = match field_text(&fields, "GroupID").filter(|g| !g.is_empty()) {
        Some(g) => g
            .parse()
            .map_err(|_| fail(400, "Invalid request payload", "Invalid GroupID"))?,
        None => 1,
    };
    if load_group(group_id)?.is_none() {
        return Err(not_found("an endpoint group"));
    }
    let id = next_id("endpoint", "portainer-endpoint")?;
    let mut pending = false;
    let (docker_name, shown_url) = if url.is_empty() || url.starts_with("unix://") {
        if !url.is_empty() && url != "unix:///var/run/docker.sock" {
            return Err(fail(
                400,
                "Invalid request payload",
                "the only local socket is the operator's",
            ));
        }
        (
            model::cloud_endpoint(),
            "unix:///var/run/docker.sock".to_string(),
        )
    } else if url.starts_with("tcp://") {
        let read = |k: &str| {
            field(&fields, k)
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .filter(|s| !s.is_empty())
        };
        let files = match read("TLSCACertFile") {
            Some(ca) if tls => Some(docker::TlsFiles {
                ca,
                cert: read("TLSCertFile").unwrap_or_default(),
                key: read("TLSKeyFile").unwrap_or_default(),
            }),
            _ => None,
        };
        // TLS without its files: 1.x before 1.16 took them afterwards,
        // with /api/upload/tls.
        pending = tls && files.is_none();
        // The host keeps the uploaded TLS material with the endpoint, in
        // its own store: it never touches the filesystem or the plugin's KV.
        let docker_name = format!("portainer-{id}");
        docker::register_endpoint(&docker_name, &url, files.as_ref())
            .map_err(|e| fail(400, "Invalid endpoint URL", &docker::error_text(&e)))?;

        (docker_name, url.clone())
    } else {
        return Err(fail(
            400,
            "Invalid request payload",
            "URL is empty (local socket) or tcp://HOST:PORT",
        ));
    };
    if !pending && let Err(e) = docker::ping(&docker_name) {
        if docker_name.starts_with("portainer-") {
            let _ = docker::remove_endpoint(&docker_name);
        }
        return Err(fail(
            500,
            "Unable to ping Docker environment",
            &docker::error_text(&e),
        ));
    }
    let endpoint = Endpoint {
        id,
        name,
        url: shown_url,
        public_url: field_text(&fields, "PublicURL").unwrap_or_default(),
        group_id,
        tls,
        docker: docker_name,
        authorized_users: Vec::new(),
        authorized_teams: Vec::new(),
        snapshot: None,
        up: !pending,
        pending_tls: pending,
    };
    kv::set_json(&endpoint_key(id), &endpoint)?;
    Ok(Response::json(200, &endpoint.render()))
}

/// Whether `user` may use `e`: an admin, or a user it or its group was
/// given to, directly or through a team.
pub(super) fn can_use(user: &User, e: &Endpoint) -> Result<bool, Response> {
    if granted(user, &e.authorized_users, &e.authorized_teams)? {
        return Ok(true);
    }
    match load_group(e.group_id)? {
        Some(g) => granted(user, &g.authorized_users, &g.authorized_teams),
        None => Ok(false),
    }
}

pub fn endpoint_list(_: &Request, user: &User) -> HttpResult {
    let list: Vec<Endpoint> = model::scan("p/endpoint/")?;
    let mut shown = Vec::new();
    for e in &list {
        if can_use(user, e)? {
            shown.push(e.render());
        }
    }
    Ok(Response::json(200, &shown))
}

pub(super) fn find_endpoint(req: &Request, user: &User) -> Result<Endpoint, Response> {
    let id = id_param(req)?;
    let e = load_endpoint(id)?.ok_or_else(|| not_found("an endpoint"))?;
    if !can_use(user, &e)? {
        return Err(fail(403, "Access denied to resource", ""));
    }
    Ok(e)
}

pub fn endpoint_get(req: &Request, user: &User) -> HttpResult {
    Ok(Response::json(200, &find_endpoint(req, user)?.render()))
}

pub fn endpoint_update(req: &Request, user: &User) -> HttpResult {
    let mut e = find_endpoint(req, user)?;
    let change: EndpointUpdate = payload(req)?;
    if let Some(url) = change.url.filter(|u| !u.is_empty() && *u != e.url) {
        return Err(fail(
            400,
            "Invalid request payload",
            &format!(
                "an endpoint's URL cannot change here (from {} to {url}): create an endpoint for it",
                e.url
            ),
        ));
    }
    if let Some(n) = change.name.filter(|n| !n.is_empty()) {
        e.name = n;
    }
    if let Some(p) = change.public_url {
        e.public_url = p;
    }
    if let Some(g) = change.group_id {
        if load_group(g)?.is_none() {
            return Err(not_found("an endpoint group"));
        }
        e.group_id = g;
    }
    if let Some(tls) = change.tls {
        change_tls(
            &mut e,
            tls,
            change.tls_skip_verify == Some(true),
            change.tls_skip_client_verify == Some(true),
        )?;
    }
    // The same body, read again for its grants.
    let access: Access = payload(req)?;
    access.apply(&mut e.authorized_users, &mut e.authorized_teams)?;
    kv::set_json(&endpoint_key(e.id), &e)?;
    Ok(Response::json(200, &e.render()))
}

/// `PUT /api/endpoints/{id}/access`: who may use the endpoint.
pub fn endpoint_access(req: &Request, user: &User) -> HttpResult {
    let mut e = find_endpoint(req, user)?;
    let access: Access = payload(req)?;
    access.apply(&mut e.authorized_users, &mut e.authorized_teams)?;
    kv::set_json(&endpoint_key(e.id), &e)?;
    Ok(Response::json(200, &e.render()))
}

pub fn endpoint_delete(req: &Request, user: &User) -> HttpResult {
    let e = find_endpoint(req, user)?;
    if e.docker.starts_with("portainer-") {
        docker::remove_endpoint(&e.docker).map_err(|err| {
            fail(
                500,
                "Unable to remove the endpoint",
                &docker::error_text(&err),
            )
        })?;
    }
    kv::delete(&endpoint_key(e.id))?;
    forget_uploads(&e.id.to_string())?;
    Ok(Response::new(204))
}

/// `/api/endpoints/{id}/docker/{path...}`: the engine's API, through the
/// host's proxy, once the caller may use the endpoint.
pub fn docker_proxy(req: &Request, user: &User) -> HttpResult {
    let e = find_endpoint(req, user)?;
    e.ready()?;
    let path = format!("/{}", req.param("path").unwrap_or_default());
    if sends_registry_auth(req.method(), unversioned(&path))
        && let Some(auth) = registry_auth(req, user)?
    {
        docker::set_proxy_header("x-registry-auth", &auth).map_err(|e| {
            fail(
                500,
                "Unable to forward the registry credentials",
                &docker::error_text(&e),
            )
        })?;
    }
    if user.role != ADMIN
        && let Some(answer) = restricted(req, user, &e, &path)?
    {
        return Ok(answer);
    }
    // A `?token=` is Berth's, not the engine's: it is not forwarded.
    if req.query("token").is_none() {
        return Ok(Response::proxy_docker(&e.docker, &path, None));
    }
    let query: Vec<String> = req
        .query_pairs()
        .iter()
        .filter(|(k, _)| k != "token")
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect();
    Ok(Response::proxy_docker(
        &e.docker,
        &path,
        Some(&query.join("&")),
    ))
}

/// `GET /api/websocket/exec?token=&endpointId=&id=`: a console on an exec
/// instance (made with `POST .../docker/containers/{id}/exec`), as
/// Portainer 1.x's web UI opens it. The host starts the exec hijacked
/// (`{"Tty": true}`) and bridges it to the WebSocket.
pub fn websocket_exec(req: &Request, user: &User) -> HttpResult {
    let (endpoint, id) = console_target(req, user, true)?;
    let path = format!("/exec/{id}/start");
    Ok(Response::proxy_docker(&endpoint.docker, &path, Some("")))
}

/// `GET /api/websocket/attach?token=&endpointId=&id=`: a console attached
/// to a container's stdin, stdout and stderr.
pub fn websocket_attach(req: &Request, user: &User) -> HttpResult {
    let (endpoint, id) = console_target(req, user, false)?;
    let path = format!("/containers/{id}/attach");
    let query = "stream=1&stdin=1&stdout=1&stderr=1";
    Ok(Response::proxy_docker(&endpoint.docker, &path, Some(query)))
}

/// The endpoint and the (hexadecimal) id a console route names (an exec
/// instance's, or a container's), checked as Portainer 1.x checked them,
/// and against resource controls for a user who is not an administrator.
fn console_target(req: &Request, user: &User, exec: bool) -> Result<(Endpoint, String), Response> {
    let id = req.query("id").unwrap_or_default();
    if id.is_empty() {
        return Err(fail(400, "Invalid query parameter: id", ""));
    }
    if !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(fail(
            400,
            "Invalid query parameter: id (must be hexadecimal identifier)",
            "",
        ));
    }
    let endpoint_id = req
        .query("endpointId")
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| fail(400, "Invalid query parameter: endpointId", ""))?;
    let endpoint = stack_endpoint(endpoint_id)?;
    if !can_use(user, &endpoint)? {
        return Err(fail(403, "Permission denied to access endpoint", ""));
    }
    let websocket = req
        .header("upgrade")
        .is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    if !websocket {
        return Err(fail(
            400,
            "An error occured during websocket exec operation",
            "websocket: the client is not using the websocket protocol",
        ));
    }
    endpoint.ready()?;
    console_allowed(user, &endpoint, id, exec)?;
    Ok((endpoint, id.to_string()))
}

/// What an engine has, as 1.x's endpoint snapshot shows it.
fn snapshot_of(e: &Endpoint) -> Result<Value, docker::DockerError> {
    let info: Value = serde_json::from_str(&docker::info(&e.docker)?).unwrap_or_default();
    let count = |path: &str, member: Option<&str>| -> Result<usize, docker::DockerError> {
        let answer = docker::request(&e.docker, "GET", path, "", &[], &[])?;
        let doc: Value = serde_json::from_slice(&answer.body).unwrap_or_default();
        let list = member.map_or(&doc, |m| &doc[m]);
        Ok(list.as_array().map_or(0, Vec::len))
    };
    let swarm = info["Swarm"]["ControlAvailable"] == true;
    let containers = |state: &str| info[state].as_u64().unwrap_or(0);
    let stacks = model::scan::<Stack>("stack/")
        .map_err(|e| docker::DockerError::Invalid(e.to_string()))?
        .iter()
        .filter(|s| s.endpoint == e.docker && s.state != State::Terminated)
        .count();
    Ok(json!({
        "Time": time::now_secs(),
        "DockerVersion": info["ServerVersion"],
        "Swarm": swarm,
        "TotalCPU": info["NCPU"],
        "TotalMemory": info["MemTotal"],
        "RunningContainerCount": containers("ContainersRunning"),
        "StoppedContainerCount": containers("ContainersStopped") + containers("ContainersPaused"),
        "HealthyContainerCount": 0,
        "UnhealthyContainerCount": 0,
        "VolumeCount": count("/volumes", Some("Volumes"))?,
        "ImageCount": info["Images"],
        "ServiceCount": if swarm { count("/services", None)? } else { 0 },
        "StackCount": stacks,
    }))
}

/// Take endpoint `e`'s snapshot: up with what it has, or down.
fn take_snapshot(mut e: Endpoint) -> Result<(), Response> {
    match snapshot_of(&e) {
        Ok(s) => {
            e.snapshot = Some(s);
            e.up = true;
        }
        Err(_) => e.up = false,
    }
    kv::set_json(&endpoint_key(e.id), &e).map_err(Response::from)
}

/// `POST /api/endpoints/{id}/snapshot` (administrators).
pub fn endpoint_snapshot(req: &Request, user: &User) -> HttpResult {
    take_snapshot(find_endpoint(req, user)?)?;
    Ok(Response::new(204))
}

/// `POST /api/endpoints/snapshot`: every endpoint's (administrators).
pub fn endpoint_snapshot_all(_: &Request) -> HttpResult {
    let all: Vec<Endpoint> = model::scan("p/endpoint/")?;
    for e in all {
        take_snapshot(e)?;
    }
    Ok(Response::new(204))
}
