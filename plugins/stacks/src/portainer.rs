//! The Portainer 1.x API (>= 1.18) under `/api`: admin init, JWT auth,
//! endpoints with the Docker proxy, stacks on the shared engine, users
//! and teams. Errors are `{"err", "message", "details"}` so readers of
//! either key work.

use base64::Engine as _;
use berth_sdk::attempts::{self, Limits};
use berth_sdk::{HttpResult, Request, Response, config, crypto, docker, kv, percent_encode, time};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::model::{self, Failure, Op, PortainerStack, Stack};
use crate::stackfile;

const JWT_KEY: &str = "portainer-jwt";
const ADMIN: u8 = 1;

pub fn fail(status: u16, err: &str, details: &str) -> Response {
    Response::json(
        status,
        &json!({ "err": err, "message": err, "details": details }),
    )
}

/// A JSON request body, or 400.
fn payload<T: serde::de::DeserializeOwned>(req: &Request) -> Result<T, Response> {
    serde_json::from_slice(req.body())
        .map_err(|e| fail(400, "Invalid request payload", &e.to_string()))
}

/// 404 for `what` ("a user", "an endpoint", ...) under a route's id.
fn not_found(what: &str) -> Response {
    fail(
        404,
        &format!("Unable to find {what} with the specified identifier"),
        "",
    )
}

/// Portainer's body for what the SDK answers: a host failure, bad input.
pub fn failure(status: u16, text: &str) -> Response {
    let err = if status == 400 {
        "Invalid request"
    } else {
        "Storage failure"
    };
    fail(status, err, text)
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

// ---- users and auth -----------------------------------------------------------

#[derive(Serialize, Deserialize, Clone)]
pub struct User {
    id: u64,
    username: String,
    role: u8,
    hash: String,
}

impl User {
    fn render(&self) -> Value {
        json!({ "Id": self.id, "Username": self.username, "Role": self.role })
    }
}

fn users() -> Result<Vec<User>, Response> {
    model::scan("p/user/").map_err(Response::from)
}

fn user_by_name(name: &str) -> Result<Option<User>, Response> {
    Ok(users()?
        .into_iter()
        .find(|u| u.username.eq_ignore_ascii_case(name)))
}

fn save_user(u: &User) -> Result<(), Response> {
    kv::set_json(&format!("p/user/{:010}", u.id), u).map_err(Response::from)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Credentials {
    username: String,
    password: String,
    #[serde(default)]
    role: Option<u8>,
}

fn credentials(req: &Request) -> Result<Credentials, Response> {
    let c: Credentials = payload(req)?;
    if c.username.trim().is_empty() || c.password.is_empty() {
        return Err(fail(
            400,
            "Invalid request payload",
            "Username and Password are required",
        ));
    }
    Ok(c)
}

fn new_user(c: &Credentials, role: u8) -> Result<User, Response> {
    if user_by_name(&c.username)?.is_some() {
        return Err(fail(409, "User already exists", &c.username));
    }
    let user = User {
        id: kv::next_in_sequence("portainer-user")?,
        username: c.username.clone(),
        role,
        hash: crypto::hash_password(&c.password)?,
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
    let c = credentials(req)?;
    if users()?.iter().any(|u| u.role == ADMIN) {
        return Err(fail(409, "An administrator user already exists", ""));
    }
    Ok(Response::json(200, &new_user(&c, ADMIN)?.render()))
}

/// `POST /api/auth`: a JWT, or 422; failures are throttled per client
/// address and per user.
pub fn auth(req: &Request) -> HttpResult {
    let c = credentials(req)?;
    let mut attempt = attempts::Login::begin(req, "p/", &c.username, Limits::from_config())
        .map_err(|e| {
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
        })?;
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
    });
    let signed = format!("{header}.{}", b64url(claims.to_string().as_bytes()));
    let tag = crypto::sign(JWT_KEY, signed.as_bytes())?;
    Ok(Response::json(
        200,
        &json!({ "jwt": format!("{signed}.{}", b64url(&tag)) }),
    ))
}

/// The user a request's JWT (`Authorization: Bearer` or `?token=`) names.
pub fn authenticate(req: &Request) -> Result<User, Response> {
    let denied = || {
        fail(
            401,
            "Unauthorized",
            "A valid authorisation token is missing",
        )
    };
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
    kv::get_json::<User>(&format!("p/user/{id:010}"))?.ok_or_else(denied)
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

fn id_param(req: &Request) -> Result<u64, Response> {
    req.param("id")
        .unwrap_or_default()
        .parse()
        .map_err(|_| fail(400, "Invalid identifier route variable", "id"))
}

pub fn user_list(_: &Request) -> HttpResult {
    let list: Vec<Value> = users()?.iter().map(User::render).collect();
    Ok(Response::json(200, &list))
}

pub fn user_create(req: &Request) -> HttpResult {
    let c = credentials(req)?;
    let role = c.role.unwrap_or(2);
    if !matches!(role, 1 | 2) {
        return Err(fail(
            400,
            "Invalid request payload",
            "Role is 1 (admin) or 2 (user)",
        ));
    }
    Ok(Response::json(200, &new_user(&c, role)?.render()))
}

fn find_user(req: &Request) -> Result<User, Response> {
    let id = id_param(req)?;
    kv::get_json::<User>(&format!("p/user/{id:010}"))?.ok_or_else(|| not_found("a user"))
}

pub fn user_get(req: &Request) -> HttpResult {
    let me = req.identity::<User>()?;
    let user = find_user(req)?;
    if me.role != ADMIN && me.id != user.id {
        return Err(fail(403, "Access denied to resource", ""));
    }
    Ok(Response::json(200, &user.render()))
}

pub fn user_update(req: &Request) -> HttpResult {
    let me = req.identity::<User>()?;
    let mut user = find_user(req)?;
    if me.role != ADMIN && me.id != user.id {
        return Err(fail(403, "Access denied to resource", ""));
    }
    let v: Value = payload(req)?;
    if let Some(p) = v["Password"].as_str().filter(|p| !p.is_empty()) {
        user.hash = crypto::hash_password(p)?;
    }
    if let Some(role) = v["Role"].as_u64() {
        if me.role != ADMIN {
            return Err(fail(
                403,
                "Access denied to resource",
                "only admins change roles",
            ));
        }
        if !matches!(role, 1 | 2) {
            return Err(fail(400, "Invalid request payload", "Role is 1 or 2"));
        }
        user.role = role as u8;
    }
    save_user(&user)?;
    Ok(Response::json(200, &user.render()))
}

pub fn user_delete(req: &Request) -> HttpResult {
    let me = req.identity::<User>()?;
    let user = find_user(req)?;
    if user.id == me.id {
        return Err(fail(403, "Cannot remove your own user account", ""));
    }
    kv::delete(&format!("p/user/{:010}", user.id))?;
    Ok(Response::new(204))
}

// ---- teams -------------------------------------------------------------------

pub fn team_list(_: &Request) -> HttpResult {
    let teams: Vec<Value> = model::scan("p/team/")?;
    Ok(Response::json(200, &teams))
}

pub fn team_create(req: &Request) -> HttpResult {
    let v: Value = payload(req)?;
    let name = v["Name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| fail(400, "Invalid request payload", "Name is required"))?;
    let teams: Vec<Value> = model::scan("p/team/")?;
    if teams.iter().any(|t| t["Name"] == json!(name)) {
        return Err(fail(409, "Team already exists", name));
    }
    let id = kv::next_in_sequence("portainer-team")?;
    let team = json!({ "Id": id, "Name": name });
    kv::set_json(&format!("p/team/{id:010}"), &team)?;
    Ok(Response::json(200, &team))
}

/// The route's team: its key and record.
fn find_team(req: &Request) -> Result<(String, Value), Response> {
    let key = format!("p/team/{:010}", id_param(req)?);
    let team = kv::get_json(&key)?.ok_or_else(|| not_found("a team"))?;
    Ok((key, team))
}

pub fn team_get(req: &Request) -> HttpResult {
    Ok(Response::json(200, &find_team(req)?.1))
}

pub fn team_update(req: &Request) -> HttpResult {
    let (key, mut team) = find_team(req)?;
    let v: Value = payload(req)?;
    if let Some(name) = v["Name"].as_str().filter(|n| !n.is_empty()) {
        team["Name"] = json!(name);
    }
    kv::set_json(&key, &team)?;
    Ok(Response::json(200, &team))
}

pub fn team_delete(req: &Request) -> HttpResult {
    let id = id_param(req)?;
    if !kv::delete(&format!("p/team/{id:010}"))? {
        return Err(not_found("a team"));
    }
    Ok(Response::new(204))
}

pub fn membership_list(_: &Request) -> HttpResult {
    let list: Vec<Value> = model::scan("p/membership/")?;
    Ok(Response::json(200, &list))
}

pub fn membership_create(req: &Request) -> HttpResult {
    let v: Value = payload(req)?;
    let (Some(user), Some(team)) = (v["UserID"].as_u64(), v["TeamID"].as_u64()) else {
        return Err(fail(
            400,
            "Invalid request payload",
            "UserID and TeamID are required",
        ));
    };
    let role = v["Role"].as_u64().unwrap_or(2);
    if kv::get(&format!("p/user/{user:010}"))?.is_none()
        || kv::get(&format!("p/team/{team:010}"))?.is_none()
    {
        return Err(fail(404, "Unable to find the user or the team", ""));
    }
    let id = kv::next_in_sequence("portainer-membership")?;
    let m = json!({ "Id": id, "UserID": user, "TeamID": team, "Role": role });
    kv::set_json(&format!("p/membership/{id:010}"), &m)?;
    Ok(Response::json(200, &m))
}

pub fn membership_delete(req: &Request) -> HttpResult {
    let id = id_param(req)?;
    if !kv::delete(&format!("p/membership/{id:010}"))? {
        return Err(not_found("a team membership"));
    }
    Ok(Response::new(204))
}

// ---- endpoints -----------------------------------------------------------------

#[derive(Serialize, Deserialize, Clone)]
struct Endpoint {
    id: u64,
    name: String,
    url: String,
    public_url: String,
    group_id: u64,
    tls: bool,
    /// The Docker endpoint name this maps to.
    docker: String,
    #[serde(default)]
    authorized_users: Vec<u64>,
    #[serde(default)]
    authorized_teams: Vec<u64>,
}

impl Endpoint {
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
            "Extensions": [],
            "Status": 1,
        })
    }
}

fn endpoint_key(id: u64) -> String {
    format!("p/endpoint/{id:010}")
}

fn load_endpoint(id: u64) -> Result<Option<Endpoint>, Response> {
    kv::get_json(&endpoint_key(id)).map_err(Response::from)
}

/// Form fields: (name, value bytes) from multipart or urlencoded bodies.
fn form_fields(req: &Request) -> Result<Vec<(String, Vec<u8>)>, Response> {
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
fn multipart(body: &[u8], boundary: &str) -> Option<Vec<(String, Vec<u8>)>> {
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

fn field<'a>(fields: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
}

fn field_text(fields: &[(String, Vec<u8>)], name: &str) -> Option<String> {
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
    let id = kv::next_in_sequence("portainer-endpoint")?;
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
        let files = if tls {
            let read = |k: &str| {
                field(&fields, k)
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .filter(|s| !s.is_empty())
            };
            let ca = read("TLSCACertFile").ok_or_else(|| {
                fail(
                    400,
                    "Invalid request payload",
                    "TLSCACertFile is required with TLS",
                )
            })?;
            let cert = read("TLSCertFile").unwrap_or_default();
            let key = read("TLSKeyFile").unwrap_or_default();
            Some(docker::TlsFiles { ca, cert, key })
        } else {
            None
        };
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
    if let Err(e) = docker::ping(&docker_name) {
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
        group_id: field_text(&fields, "GroupID")
            .and_then(|g| g.parse().ok())
            .unwrap_or(1),
        tls,
        docker: docker_name,
        authorized_users: Vec::new(),
        authorized_teams: Vec::new(),
    };
    kv::set_json(&endpoint_key(id), &endpoint)?;
    Ok(Response::json(200, &endpoint.render()))
}

fn can_use(user: &User, e: &Endpoint) -> bool {
    user.role == ADMIN || e.authorized_users.contains(&user.id)
}

pub fn endpoint_list(req: &Request) -> HttpResult {
    let user = req.identity::<User>()?;
    let list: Vec<Endpoint> = model::scan("p/endpoint/")?;
    let shown: Vec<Value> = list
        .iter()
        .filter(|e| can_use(&user, e))
        .map(Endpoint::render)
        .collect();
    Ok(Response::json(200, &shown))
}

fn find_endpoint(req: &Request, user: &User) -> Result<Endpoint, Response> {
    let id = id_param(req)?;
    let e = load_endpoint(id)?.ok_or_else(|| not_found("an endpoint"))?;
    if !can_use(user, &e) {
        return Err(fail(403, "Access denied to resource", ""));
    }
    Ok(e)
}

pub fn endpoint_get(req: &Request) -> HttpResult {
    let user = req.identity::<User>()?;
    Ok(Response::json(200, &find_endpoint(req, &user)?.render()))
}

pub fn endpoint_update(req: &Request) -> HttpResult {
    let user = req.identity::<User>()?;
    let mut e = find_endpoint(req, &user)?;
    let v: Value = payload(req)?;
    if let Some(n) = v["Name"].as_str().filter(|n| !n.is_empty()) {
        e.name = n.to_string();
    }
    if let Some(p) = v["PublicURL"].as_str() {
        e.public_url = p.to_string();
    }
    if let Some(g) = v["GroupID"].as_u64() {
        e.group_id = g;
    }
    if let Some(users) = v["AuthorizedUsers"].as_array() {
        e.authorized_users = users.iter().filter_map(Value::as_u64).collect();
    }
    if let Some(teams) = v["AuthorizedTeams"].as_array() {
        e.authorized_teams = teams.iter().filter_map(Value::as_u64).collect();
    }
    kv::set_json(&endpoint_key(e.id), &e)?;
    Ok(Response::json(200, &e.render()))
}

pub fn endpoint_delete(req: &Request) -> HttpResult {
    let user = req.identity::<User>()?;
    let e = find_endpoint(req, &user)?;
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
    Ok(Response::new(204))
}

/// `/api/endpoints/{id}/docker/{path...}`: the engine's API, through the
/// host's proxy, once the caller may use the endpoint.
pub fn docker_proxy(req: &Request) -> HttpResult {
    let user = req.identity::<User>()?;
    let e = find_endpoint(req, &user)?;
    let path = format!("/{}", req.param("path").unwrap_or_default());
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

// ---- stacks ----------------------------------------------------------------------

fn stack_failure(f: Failure) -> Response {
    match f {
        Failure::State(m) => fail(409, "A stack with this name already exists", &m),
        Failure::Invalid(m) => fail(400, "Invalid stack", &m),
        Failure::Engine(e) => fail(500, "Unable to deploy the stack", &docker::error_text(&e)),
        Failure::Host(e) => Response::from(e),
    }
}

fn render_stack(st: &Stack) -> Value {
    let p = st.portainer.as_ref();
    let env: Vec<Value> = p
        .map(|p| {
            p.env
                .iter()
                .map(|(n, v)| json!({ "name": n, "value": v }))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "Id": st.id,
        "Name": st.name,
        "Type": p.map(|p| p.kind).unwrap_or(if st.swarm { 1 } else { 2 }),
        "EndpointId": p.map(|p| p.endpoint_id).unwrap_or(0),
        "SwarmId": p.map(|p| p.swarm_id.clone()).unwrap_or_default(),
        "EntryPoint": "docker-compose.yml",
        "Env": if env.is_empty() { Value::Null } else { json!(env) },
        "ProjectPath": format!("/data/compose/{}", st.id),
        "Status": if st.state == "Running" { 1 } else { 2 },
    })
}

fn parse_env(v: &Value) -> Result<Vec<(String, String)>, Response> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => parse_env(
            &serde_json::from_str(s)
                .map_err(|e| fail(400, "Invalid request payload", &format!("Env: {e}")))?,
        ),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                let n = i["name"]
                    .as_str()
                    .ok_or_else(|| fail(400, "Invalid request payload", "Env: [{name, value}]"))?;
                Ok((
                    n.to_string(),
                    i["value"].as_str().unwrap_or_default().to_string(),
                ))
            })
            .collect(),
        _ => Err(fail(400, "Invalid request payload", "Env: [{name, value}]")),
    }
}

pub fn stack_create(req: &Request) -> HttpResult {
    let user = req.identity::<User>()?;
    let kind: u8 = req
        .query("type")
        .and_then(|t| t.parse().ok())
        .filter(|t| matches!(t, 1 | 2))
        .ok_or_else(|| {
            fail(
                400,
                "Invalid query parameter: type",
                "1 (swarm) or 2 (compose)",
            )
        })?;
    let method = req.query("method").unwrap_or_default();
    let endpoint_id: u64 = req
        .query("endpointId")
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| fail(400, "Invalid query parameter: endpointId", ""))?;
    let (name, swarm_id, content, env) = match method {
        "string" => {
            let v: Value = payload(req)?;
            (
                v["Name"].as_str().unwrap_or_default().to_string(),
                v["SwarmID"].as_str().unwrap_or_default().to_string(),
                v["StackFileContent"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                parse_env(&v["Env"])?,
            )
        }
        "file" => {
            let fields = form_fields(req)?;
            let env = match field_text(&fields, "Env") {
                Some(e) => parse_env(&Value::String(e))?,
                None => Vec::new(),
            };
            (
                field_text(&fields, "Name").unwrap_or_default(),
                field_text(&fields, "SwarmID").unwrap_or_default(),
                field(&fields, "file")
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default(),
                env,
            )
        }
        "repository" => {
            return Err(fail(
                501,
                "Repository stacks are not supported",
                "this Berth reaches no Git host; create the stack with method=string or method=file",
            ));
        }
        _ => {
            return Err(fail(
                400,
                "Invalid query parameter: method",
                "string, file or repository",
            ));
        }
    };
    if name.is_empty() {
        return Err(fail(400, "Invalid request payload", "Invalid stack name"));
    }
    if content.trim().is_empty() {
        return Err(fail(
            400,
            "Invalid request payload",
            "Invalid stack file content",
        ));
    }
    if kind == 1 && swarm_id.is_empty() {
        return Err(fail(400, "Invalid request payload", "Invalid Swarm ID"));
    }
    let endpoint = load_endpoint(endpoint_id)?.ok_or_else(|| not_found("an endpoint"))?;
    if !can_use(&user, &endpoint) {
        return Err(fail(403, "Access denied to resource", "endpoint"));
    }
    let defs = stackfile::parse_compose(&content, &env)
        .map_err(|e| fail(400, "Invalid stack file", &e))?;
    let portainer = PortainerStack {
        kind,
        endpoint_id,
        swarm_id,
        env,
        file: content,
    };
    let mut stack = model::create_stack(
        &name,
        &name,
        defs,
        &endpoint.docker,
        Some(portainer),
        Vec::new(),
    )
    .map_err(stack_failure)?;
    crate::cloud::follow(&endpoint.docker);
    if let Err(f) = model::run_stack(&mut stack, Op::Start) {
        // Nothing half-deployed stays: the stack is removed again.
        let _ = model::run_stack(&mut stack, Op::Terminate);
        remove_stack_record(&stack)?;
        return Err(stack_failure(f));
    }
    kv::set(&format!("p/stack/{:010}", stack.id), stack.uuid.as_bytes())?;
    Ok(Response::json(200, &render_stack(&stack)))
}

fn remove_stack_record(stack: &Stack) -> Result<(), berth_sdk::Error> {
    for uuid in &stack.services {
        kv::delete(&format!("svc/{uuid}"))?;
    }
    kv::delete(&format!("stack/{}", stack.uuid))?;
    kv::delete(&format!("p/stack/{:010}", stack.id))?;
    Ok(())
}

/// Whether `user` may use the endpoint a stack runs on.
fn may_see(user: &User, st: &Stack) -> Result<bool, Response> {
    let Some(p) = &st.portainer else {
        return Ok(user.role == ADMIN);
    };
    Ok(load_endpoint(p.endpoint_id)?.is_some_and(|e| can_use(user, &e)) || user.role == ADMIN)
}

fn find_stack(req: &Request, user: &User) -> Result<Stack, Response> {
    let id = id_param(req)?;
    let missing = || not_found("a stack");
    let uuid = kv::get_string(&format!("p/stack/{id:010}"))?.ok_or_else(missing)?;
    let st = model::load_stack(&uuid)?.ok_or_else(missing)?;
    if !may_see(user, &st)? {
        return Err(fail(403, "Access denied to resource", ""));
    }
    Ok(st)
}

pub fn stack_list(req: &Request) -> HttpResult {
    let user = req.identity::<User>()?;
    let mut list = Vec::new();
    for entry in kv::scan("p/stack/") {
        let (_, uuid) = entry?;
        if let Some(st) = model::load_stack(&String::from_utf8_lossy(&uuid))?
            && may_see(&user, &st)?
        {
            list.push(render_stack(&st));
        }
    }
    Ok(Response::json(200, &list))
}

pub fn stack_get(req: &Request) -> HttpResult {
    let user = req.identity::<User>()?;
    Ok(Response::json(200, &render_stack(&find_stack(req, &user)?)))
}

pub fn stack_file(req: &Request) -> HttpResult {
    let user = req.identity::<User>()?;
    let st = find_stack(req, &user)?;
    let file = st.portainer.map(|p| p.file).unwrap_or_default();
    Ok(Response::json(200, &json!({ "StackFileContent": file })))
}

pub fn stack_update(req: &Request) -> HttpResult {
    let user = req.identity::<User>()?;
    let mut st = find_stack(req, &user)?;
    let v: Value = payload(req)?;
    let content = v["StackFileContent"]
        .as_str()
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| fail(400, "Invalid request payload", "Invalid stack file content"))?
        .to_string();
    let env = parse_env(&v["Env"])?;
    let defs = stackfile::parse_compose(&content, &env)
        .map_err(|e| fail(400, "Invalid stack file", &e))?;
    crate::cloud::update_stack_services(&mut st, defs, Vec::new()).map_err(stack_failure)?;
    if let Some(p) = st.portainer.as_mut() {
        p.file = content;
        p.env = env;
    }
    model::save_stack(&st)?;
    Ok(Response::json(200, &render_stack(&st)))
}

pub fn stack_delete(req: &Request) -> HttpResult {
    let user = req.identity::<User>()?;
    let mut st = find_stack(req, &user)?;
    if st.state != "Terminated" {
        model::run_stack(&mut st, Op::Terminate).map_err(stack_failure)?;
    }
    remove_stack_record(&st)?;
    Ok(Response::new(204))
}
