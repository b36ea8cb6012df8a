//! Beacons, their instances, aliases and the Docker passthrough.
//!
//! Storage: `beacon/{address}` holds a [`Beacon`] with its instances;
//! `instance/{instance address}` names the beacon an instance is behind;
//! `alias/{alias}` holds the address an alias stands for. A beacon's alias
//! names the beacon, and `{beacon alias}.{instance name}` each instance.
//! An instance's address is `{beacon address}/{instance name}`.

use berth_sdk::{HttpResult, Request, Response, kv, percent_encode};
use serde::{Deserialize, Serialize};

use crate::target::{self, Beacon, Call, FetchError, Instance, Target};
use crate::users::{self, ACCESS, Kind, MODIFY, OWNER, User};
use crate::{fail, ok};

fn beacon_key(address: &str) -> String {
    format!("beacon/{address}")
}

fn instance_key(address: &str) -> String {
    format!("instance/{address}")
}

fn alias_key(alias: &str) -> String {
    format!("alias/{alias}")
}

fn unknown_beacon() -> Response {
    fail(400, "databases", "databases: given key not found")
}

fn alias(name: &str) -> Result<Option<String>, Response> {
    kv::get_json(&alias_key(name)).map_err(Response::from)
}

/// The beacon at `name`, or the one an alias `name` stands for.
pub fn find(name: &str) -> Result<Option<Beacon>, Response> {
    if name.is_empty() {
        return Ok(None);
    }
    if let Some(beacon) = kv::get_json(&beacon_key(name))? {
        return Ok(Some(beacon));
    }
    match alias(name)? {
        Some(address) => kv::get_json(&beacon_key(&address)).map_err(Response::from),
        None => Ok(None),
    }
}

/// The instance at `name` (an instance address or an alias of one), with
/// its beacon.
pub fn find_instance(name: &str) -> Result<Option<(Beacon, Instance)>, Response> {
    let mut address = name.to_string();
    let mut owner: Option<String> = kv::get_json(&instance_key(&address))?;
    if owner.is_none()
        && let Some(aliased) = alias(name)?
    {
        owner = kv::get_json(&instance_key(&aliased))?;
        address = aliased;
    }
    let Some(beacon) = owner.map(|b| find(&b)).transpose()?.flatten() else {
        return Ok(None);
    };
    let instance = beacon
        .instances
        .iter()
        .find(|i| i.instance_address == address)
        .cloned();
    Ok(instance.map(|i| (beacon, i)))
}

/// `me`'s level on a beacon, or 403 when below `needed`.
fn require(me: &User, beacon: &Beacon, needed: i64) -> Result<(), Response> {
    match me.beacon_level(&beacon.address) {
        Some(level) if level >= needed => Ok(()),
        _ => Err(fail(
            403,
            "permissions",
            &format!(
                "this needs {} on beacon {}",
                if needed >= MODIFY { "modify" } else { "access" },
                beacon.alias
            ),
        )),
    }
}

/// Store `beacon` with instances built from `vms`, replacing the index
/// entries and aliases of instances it no longer has.
fn store(beacon: &mut Beacon, vms: Vec<crate::agent::Vm>) -> Result<(), Response> {
    let old = std::mem::take(&mut beacon.instances);
    beacon.instances = vms
        .into_iter()
        .map(|vm| Instance {
            alias: format!("{}.{}", beacon.alias, vm.name),
            instance_address: format!("{}/{}", beacon.address, vm.name),
            name: vm.name,
            can_access_docker: vm.can_access_docker,
            beacon_address: beacon.address.clone(),
        })
        .collect();
    for gone in old.iter().filter(|o| {
        !beacon
            .instances
            .iter()
            .any(|i| i.instance_address == o.instance_address)
    }) {
        kv::delete(&instance_key(&gone.instance_address))?;
        if alias(&gone.alias)?.as_deref() == Some(gone.instance_address.as_str()) {
            kv::delete(&alias_key(&gone.alias))?;
        }
    }
    for i in &beacon.instances {
        kv::set_json(&instance_key(&i.instance_address), &beacon.address)?;
        kv::set_json(&alias_key(&i.alias), &i.instance_address)?;
    }
    kv::set_json(&beacon_key(&beacon.address), beacon).map_err(Response::from)
}

/// Ask the beacon for its instances again and store them.
fn refetch(beacon: &mut Beacon) -> Result<(), Response> {
    let vms = target::fetch_vms(&beacon.address, &beacon.token).map_err(|e| match e {
        FetchError::NotAllowed(m) => fail(400, "beacon", &m),
        FetchError::Failed(m) => fail(500, "beacon", &m),
    })?;
    store(beacon, vms)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NewBeacon {
    #[serde(default)]
    address: String,
    #[serde(default)]
    token: String,
    #[serde(default)]
    alias: String,
}

fn valid_alias(alias: &str) -> Result<(), Response> {
    if alias.is_empty() || alias.contains('/') || alias.chars().any(char::is_whitespace) {
        return Err(fail(
            400,
            "aliases",
            &format!("`{alias}` is not a valid alias: it must be non-empty, without `/` or spaces"),
        ));
    }
    Ok(())
}

/// `POST /beacons/create {Address, Token, Alias}`: the beacon's instances
/// are fetched first; if that fails nothing is stored (500; 400 for an
/// address this host may not call).
pub fn create(req: &Request, me: &User) -> HttpResult {
    let mut me = me.clone();
    let new: NewBeacon = crate::body(req)?;
    let address = new.address.trim().trim_end_matches('/').to_string();
    if address.is_empty() || new.alias.is_empty() {
        return Err(fail(400, "beacons", "Address and Alias are required"));
    }
    valid_alias(&new.alias)?;
    if kv::get(&beacon_key(&address))?.is_some() {
        return Err(fail(
            400,
            "beacons",
            &format!("beacon {address} already exists"),
        ));
    }
    if alias(&new.alias)?.is_some() {
        return Err(fail(
            400,
            "aliases",
            &format!("alias {} is taken", new.alias),
        ));
    }
    let mut beacon = Beacon {
        address,
        alias: new.alias,
        token: new.token,
        instances: Vec::new(),
    };
    refetch(&mut beacon)?;
    kv::set_json(&alias_key(&beacon.alias), &beacon.address)?;
    me.beacons.insert(beacon.address.clone(), OWNER);
    users::save(&me)?;
    ok()
}

/// A JSON string body, non-empty.
fn string_body(req: &Request, what: &str) -> Result<String, Response> {
    let text: String = serde_json::from_slice(req.body()).map_err(|_| {
        fail(
            400,
            "request",
            &format!("the body must be the {what} as a JSON string"),
        )
    })?;
    if text.is_empty() {
        return Err(fail(400, "request", &format!("the {what} cannot be empty")));
    }
    Ok(text)
}

/// `PUT /beacons/token/{beacon}`: needs modify.
pub fn token(req: &Request, me: &User) -> HttpResult {
    let mut beacon = find(req.param("beacon").unwrap_or(""))?.ok_or_else(unknown_beacon)?;
    require(me, &beacon, MODIFY)?;
    beacon.token = string_body(req, "token")?;
    kv::set_json(&beacon_key(&beacon.address), &beacon)?;
    ok()
}

/// `PUT /beacons/user/{beacon}/{email}`, body the level (default 0).
pub fn grant(req: &Request, me: &User) -> HttpResult {
    let beacon = find(req.param("beacon").unwrap_or(""))?.ok_or_else(unknown_beacon)?;
    let mut user = users::visible(me, req.param("email").unwrap_or(""))?;
    let level: i64 = if req.body().iter().all(u8::is_ascii_whitespace) {
        ACCESS
    } else {
        serde_json::from_slice(req.body())
            .map_err(|_| fail(400, "request", "the body must be a level: 0, 1, 2 or -1"))?
    };
    users::set_level(me, &mut user, Kind::Beacon, &beacon.address, level)?;
    users::save(&user)?;
    ok()
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Listed<'a> {
    alias: &'a str,
    address: &'a str,
}

/// `GET /beacons/list`: the beacons you can access.
pub fn list(_: &Request, me: &User) -> HttpResult {
    let mut beacons = Vec::new();
    for address in me.beacons.keys() {
        if let Some(beacon) = kv::get_json::<Beacon>(&beacon_key(address))? {
            beacons.push(beacon);
        }
    }
    let listed: Vec<Listed> = beacons
        .iter()
        .map(|b| Listed {
            alias: &b.alias,
            address: &b.address,
        })
        .collect();
    Ok(Response::json(200, &listed))
}

/// `GET /beacons/list/{beacon}?refresh=`: its instances, `[]` without
/// access.
pub fn instances(req: &Request, me: &User) -> HttpResult {
    let refresh = crate::flag(req, "refresh", false)?;
    let beacon = find(req.param("beacon").unwrap_or(""))?;
    let Some(mut beacon) = beacon.filter(|b| require(me, b, ACCESS).is_ok()) else {
        return Ok(Response::json(200, &[0u8; 0]));
    };
    if refresh {
        refetch(&mut beacon)?;
    }
    Ok(Response::json(200, &beacon.instances))
}

/// `PUT /beacons/refresh/{beacon}`: fetch its instances again.
pub fn refresh(req: &Request, me: &User) -> HttpResult {
    let mut beacon = find(req.param("beacon").unwrap_or(""))?.ok_or_else(unknown_beacon)?;
    require(me, &beacon, ACCESS)?;
    refetch(&mut beacon)?;
    Ok(Response::json(200, &beacon.instances))
}

/// `PUT /aliases/{alias}`, body the address as a JSON string: an instance
/// or beacon you can access. An alias in use may only be moved by someone
/// who can access what it stands for now.
pub fn alias_put(req: &Request, me: &User) -> HttpResult {
    let name = req.param("alias").unwrap_or("");
    valid_alias(name)?;
    let address = string_body(req, "address")?;
    let accessible = |address: &str| -> Result<Option<bool>, Response> {
        if let Some((beacon, _)) = find_instance(address)? {
            return Ok(Some(require(me, &beacon, ACCESS).is_ok()));
        }
        match kv::get_json::<Beacon>(&beacon_key(address))? {
            Some(beacon) => Ok(Some(require(me, &beacon, ACCESS).is_ok())),
            None => Ok(None),
        }
    };
    if let Some(current) = alias(name)?
        && accessible(&current)? == Some(false)
    {
        return Err(fail(
            403,
            "aliases",
            &format!("alias {name} stands for something you cannot access"),
        ));
    }
    match accessible(&address)? {
        Some(true) => {}
        Some(false) => {
            return Err(fail(
                403,
                "aliases",
                &format!("you cannot access {address}"),
            ));
        }
        None => {
            return Err(fail(
                400,
                "aliases",
                &format!("{address} is not the address of a known instance or beacon"),
            ));
        }
    }
    kv::set_json(&alias_key(name), &address)?;
    ok()
}

/// `/d/{instance}/{docker path}`: a Docker API call on an instance. The
/// instance is the longest leading part of the path that is an instance
/// address or alias.
pub fn docker(req: &Request, me: &User) -> HttpResult {
    let rest = req.param("target").unwrap_or("");
    let segments: Vec<&str> = rest.split('/').collect();
    let mut found = None;
    for end in (1..=segments.len()).rev() {
        if let Some(hit) = find_instance(&segments[..end].join("/"))? {
            found = Some((hit, format!("/{}", segments[end..].join("/"))));
            break;
        }
    }
    let Some(((beacon, instance), path)) = found else {
        return Err(fail(
            404,
            "instance",
            &format!("no instance matches `{rest}`"),
        ));
    };
    require(me, &beacon, ACCESS)?;
    match Target::new(&beacon, &instance) {
        Target::Local { endpoint } => Ok(Response::proxy_docker(&endpoint, &path, None)),
        // What must stream or switch protocols goes through the host as
        // a raw connection to the beacon; the rest as one call, so errors
        // keep Lighthouse's `{"Cause":"docker"}` shape.
        Target::Remote(remote) if target::streams(req, &path) => {
            let endpoint = remote.endpoint().map_err(|e| fail(500, "control", &e))?;
            Ok(Response::proxy_docker(&endpoint, &path, None))
        }
        Target::Remote(remote) => {
            let query: Vec<String> = req
                .query_pairs()
                .iter()
                .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
                .collect();
            let path_and_query = if query.is_empty() {
                path
            } else {
                format!("{path}?{}", query.join("&"))
            };
            let answer = remote
                .send(Call {
                    method: req.method(),
                    path_and_query: &path_and_query,
                    content_type: req.header("content-type"),
                    body: req.body().to_vec(),
                    timeout_ms: 0,
                })
                .map_err(|e| fail(500, "control", &e))?;
            if !(200..300).contains(&answer.status) {
                return Err(fail(
                    answer.status,
                    "docker",
                    &target::engine_message(&answer.body),
                ));
            }
            let mut response = Response::new(answer.status).body(answer.body);
            if let Some((_, ct)) = answer.headers.iter().find(|(n, _)| n == "content-type") {
                response = response.header("content-type", ct);
            }
            Ok(response)
        }
    }
}
