//! The application routes (`/applications/...`): each checks and records
//! what was asked, then queues a deploy job and answers with its progress
//! stream (see [`crate::deploy`]).

use std::collections::BTreeSet;

use berth_sdk::{Framing, HttpResult, Request, Response, jobs, kv, time};
use serde::{Deserialize, Serialize};

use crate::apps::{
    App, Deployment, app_key, current, deployment_key, deployments, find, name_key, save,
};
use crate::deploy::{self, Op, Task};
use crate::users::{self, ACCESS, MODIFY, OWNER, User};
use crate::{beacons, fail, flag};

/// The application in the path that `me` holds at least `needed` on:
/// 404 when unknown or not accessible, 403 when accessible but below.
fn app_for(req: &Request, me: &User, needed: i64) -> Result<App, Response> {
    let name = req.param("app").unwrap_or("");
    let not_found = || {
        fail(
            404,
            "applications",
            &format!("application {name} not found"),
        )
    };
    let app = find(name)?.ok_or_else(not_found)?;
    match me.app_level(app.id) {
        None => Err(not_found()),
        Some(level) if level < needed => Err(fail(
            403,
            "permissions",
            &format!("this needs modify on application {}", app.name),
        )),
        Some(_) => Ok(app),
    }
}

/// Record a new deployment of `app` running `command` and make it current.
fn deploy_new(
    app: &mut App,
    me: &User,
    command: serde_json::Value,
) -> Result<Deployment, Response> {
    let image = command
        .get("Image")
        .and_then(|i| i.as_str())
        .filter(|i| !i.is_empty())
        .ok_or_else(|| fail(400, "applications", "Command needs an Image"))?
        .to_string();
    app.versions += 1;
    let deployment = Deployment {
        id: kv::next_in_sequence("deployment")?,
        creator: me.email.clone(),
        date: time::now_rfc3339(),
        image,
        command,
        version: app.versions,
    };
    kv::set_json(&deployment_key(app.id, deployment.version), &deployment)?;
    app.current_deployment = deployment.id;
    Ok(deployment)
}

/// Instance names (addresses or aliases) as addresses, each one `me` can
/// access: 400 for an unknown one, 403 for one behind a beacon `me`
/// cannot use.
fn resolve(me: &User, names: &[String]) -> Result<Vec<String>, Response> {
    let mut seen = BTreeSet::new();
    let mut addresses = Vec::new();
    for name in names {
        let (beacon, instance) = beacons::find_instance(name)?
            .ok_or_else(|| fail(400, "instances", &format!("unknown instance {name}")))?;
        if me.beacon_level(&beacon.address).is_none_or(|l| l < ACCESS) {
            return Err(fail(
                403,
                "permissions",
                &format!("you cannot access instance {name}"),
            ));
        }
        if seen.insert(instance.instance_address.clone()) {
            addresses.push(instance.instance_address);
        }
    }
    Ok(addresses)
}

/// Queue `task` and answer with its progress stream.
fn stream(task: Task) -> HttpResult {
    let topic = task.topic.clone();
    jobs::enqueue_json(deploy::JOB, &task, 0)?;
    Ok(Response::subscribe(&topic, Framing::Ndjson).replay(None))
}

fn task(app: &App, op: Op) -> Result<Task, Response> {
    Ok(Task {
        topic: format!("progress/{}", kv::next_in_sequence("progress")?),
        app: app.id,
        name: app.name.clone(),
        op,
        deployment: None,
        instances: app.instances.clone(),
        remove: Vec::new(),
        start: false,
        pull: false,
        item: 0,
        total: 0,
    })
}

/// Deploy `deployment` to every instance of `app`.
fn deploy_task(
    app: &App,
    deployment: &Deployment,
    start: bool,
    pull: bool,
) -> Result<Task, Response> {
    let mut task = task(app, Op::Deploy)?;
    task.deployment = Some(deployment.id);
    task.start = start;
    task.pull = pull;
    Ok(task)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && name.len() <= 128
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NewApp {
    name: String,
    command: serde_json::Value,
    #[serde(default)]
    instances: Vec<String>,
}

/// `POST /applications/create?start=&forcePull=`.
pub fn create(req: &Request, me: &User) -> HttpResult {
    let mut me = me.clone();
    let start = flag(req, "start", false)?;
    let pull = flag(req, "forcePull", false)?;
    let new: NewApp = crate::body(req)?;
    if !valid_name(&new.name) {
        return Err(fail(
            400,
            "applications",
            "Name must be 1-128 letters, digits, `_`, `.` or `-`, starting with a letter or digit",
        ));
    }
    if kv::get(&name_key(&new.name))?.is_some() {
        return Err(fail(
            400,
            "applications",
            &format!("application {} already exists", new.name),
        ));
    }
    if !new.command.is_object() {
        return Err(fail(
            400,
            "applications",
            "Command must be a Docker create body (an object)",
        ));
    }
    let instances = resolve(&me, &new.instances)?;
    let mut app = App {
        id: kv::next_in_sequence("app")?,
        name: new.name,
        current_deployment: 0,
        instances,
        versions: 0,
        running: start,
    };
    let deployment = deploy_new(&mut app, &me, new.command)?;
    save(&app)?;
    kv::set_json(&name_key(&app.name), &app.id)?;
    me.applications.insert(app.id.to_string(), OWNER);
    users::save(&me)?;
    stream(deploy_task(&app, &deployment, start, pull)?)
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Listed<'a> {
    id: u64,
    current_deployment: u64,
    name: &'a str,
    instances: &'a [String],
}

/// `GET /applications/list`: the applications you can access.
pub fn list(_: &Request, me: &User) -> HttpResult {
    let mut apps = Vec::new();
    for id in me.applications.keys() {
        if let Some(app) = id
            .parse()
            .ok()
            .map(|id| kv::get_json::<App>(&app_key(id)))
            .transpose()?
            .flatten()
        {
            apps.push(app);
        }
    }
    apps.sort_by_key(|a| a.id);
    let listed: Vec<Listed> = apps
        .iter()
        .map(|a| Listed {
            id: a.id,
            current_deployment: a.current_deployment,
            name: &a.name,
            instances: &a.instances,
        })
        .collect();
    Ok(Response::json(200, &listed))
}

/// `GET /applications/list/{app}?count=`: deployments, newest first.
pub fn history(req: &Request, me: &User) -> HttpResult {
    let app = app_for(req, me, ACCESS)?;
    let count = match req.query("count") {
        None | Some("") => usize::MAX,
        Some(n) => n.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
            fail(
                400,
                "request",
                &format!("count must be a positive integer, not `{n}`"),
            )
        })?,
    };
    let mut all = deployments(app.id)?;
    all.reverse();
    all.truncate(count);
    Ok(Response::json(200, &all))
}

/// `POST /applications/start/{app}`.
pub fn start(req: &Request, me: &User) -> HttpResult {
    start_or_stop(req, me, Op::Start)
}

/// `POST /applications/stop/{app}`: on a failure the instances already
/// stopped are started again.
pub fn stop(req: &Request, me: &User) -> HttpResult {
    start_or_stop(req, me, Op::Stop)
}

fn start_or_stop(req: &Request, me: &User, op: Op) -> HttpResult {
    let mut app = app_for(req, me, MODIFY)?;
    app.running = op == Op::Start;
    save(&app)?;
    stream(task(&app, op)?)
}

/// `POST|PUT /applications/revert/{app}?target=&forcePull=`: deploy again
/// what deployment `target` ran (an id, or -N: N versions before the
/// current one; default -1), as a new deployment.
pub fn revert(req: &Request, me: &User) -> HttpResult {
    let pull = flag(req, "forcePull", false)?;
    let mut app = app_for(req, me, MODIFY)?;
    let wanted = req
        .query("target")
        .filter(|t| !t.is_empty())
        .unwrap_or("-1");
    let wanted: i64 = wanted.parse().map_err(|_| {
        fail(
            400,
            "request",
            &format!("target must be a deployment id or -N, not `{wanted}`"),
        )
    })?;
    let all = deployments(app.id)?;
    let current = current(&app)?;
    let target = match wanted {
        0 => None,
        n if n < 0 => current
            .version
            .checked_sub(n.unsigned_abs())
            .and_then(|v| all.iter().find(|d| d.version == v)),
        id => all.iter().find(|d| d.id == id as u64),
    }
    .ok_or_else(|| {
        fail(
            404,
            "applications",
            &format!("application {} has no deployment {wanted}", app.name),
        )
    })?;
    let deployment = deploy_new(&mut app, me, target.command.clone())?;
    save(&app)?;
    stream(deploy_task(&app, &deployment, app.running, pull)?)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct Update {
    command: Option<serde_json::Value>,
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    remove: Vec<String>,
}

/// `PUT /applications/update/{app}?restart=`: a new command is deployed to
/// every instance; added instances get the current deployment; removed
/// ones lose their container; with no change at all the current
/// deployment is deployed everywhere again. `restart` (default: whether
/// the application is running) starts what was deployed.
pub fn update(req: &Request, me: &User) -> HttpResult {
    let mut app = app_for(req, me, MODIFY)?;
    let restart = flag(req, "restart", app.running)?;
    let update: Update = crate::body(req)?;
    let added = resolve(me, &update.add)?;
    let mut removed = Vec::new();
    for name in &update.remove {
        let address = match beacons::find_instance(name)? {
            Some((_, instance)) => instance.instance_address,
            None => name.clone(),
        };
        if !app.instances.contains(&address) {
            return Err(fail(
                400,
                "instances",
                &format!("{name} is not an instance of application {}", app.name),
            ));
        }
        removed.push(address);
    }
    app.instances.retain(|i| !removed.contains(i));
    let mut deploy_to: Vec<String> = added
        .into_iter()
        .filter(|a| !app.instances.contains(a))
        .collect();
    app.instances.extend(deploy_to.iter().cloned());
    let deployment = match update.command {
        Some(command) => {
            let command = inherit_image(command, &current(&app)?)?;
            deploy_to = app.instances.clone();
            deploy_new(&mut app, me, command)?
        }
        None => {
            if update.add.is_empty() && update.remove.is_empty() {
                // Nothing changed: deploy the current version everywhere
                // again (after a failed deploy, say).
                deploy_to = app.instances.clone();
            }
            current(&app)?
        }
    };
    app.running = restart;
    save(&app)?;
    let mut task = deploy_task(&app, &deployment, restart, false)?;
    task.instances = deploy_to;
    task.remove = removed;
    stream(task)
}

/// A new command without an Image keeps the current one.
fn inherit_image(
    mut command: serde_json::Value,
    current: &Deployment,
) -> Result<serde_json::Value, Response> {
    let object = command.as_object_mut().ok_or_else(|| {
        fail(
            400,
            "applications",
            "Command must be a Docker create body (an object)",
        )
    })?;
    object
        .entry("Image")
        .or_insert_with(|| serde_json::Value::String(current.image.clone()));
    Ok(command)
}
