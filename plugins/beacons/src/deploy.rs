//! The deploy job: runs an application operation on each of its instances
//! and streams progress as it goes.
//!
//! Each step publishes one progress object on the task's topic, which the
//! client that asked is subscribed to as newline-delimited JSON; the last
//! one is `{"Status":"Finalized"}`, which also ends the stream. Deploying
//! to an instance: optional pull; remove a leftover `NAME_tmp`; create
//! `NAME_tmp` (pulling first when the engine lacks the image); remove the
//! old `NAME` (force); rename `NAME_tmp` to `NAME`; optional start.
//!
//! A deploy is planned by one job, which queues one job per instance; they
//! run side by side (up to the host's job workers), and the last to end
//! sends the summary and `Finalized`. Start and stop visit the instances
//! in turn (a failed stop starts the stopped ones again).
//!
//! A job may run twice (the host delivers jobs at least once); every step
//! tolerates what a previous run left behind. A job holds a lock per
//! (application, instance), so two operations never interleave on one
//! container.

use berth_sdk::{events, jobs, kv, log};
use serde::{Deserialize, Serialize};

use crate::apps::{self, Deployment};
use crate::beacons;
use crate::target::{Step, Target};

pub const JOB: &str = "deploy";

/// Label on every container an application runs.
const APP_LABEL: &str = "berth.beacons.app";
const DEPLOYMENT_LABEL: &str = "berth.beacons.deployment";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Plan a deploy: remove what goes, then queue one `DeployOne` per
    /// instance; they run side by side.
    Deploy,
    /// Deploy to `instances[0]`, item `item` of `total`.
    DeployOne,
    Start,
    Stop,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Task {
    /// Where progress goes.
    pub topic: String,
    pub app: u64,
    pub name: String,
    pub op: Op,
    /// For `Deploy`: the deployment to run.
    pub deployment: Option<u64>,
    /// Instance addresses to act on.
    pub instances: Vec<String>,
    /// For `Deploy`: instances whose container is removed first.
    pub remove: Vec<String>,
    /// For `Deploy`: start the new containers.
    pub start: bool,
    /// For `Deploy`: pull the image even when the engine has it.
    pub pull: bool,
    /// For `DeployOne`: its place (1-based) among `total` instances.
    #[serde(default)]
    pub item: usize,
    #[serde(default)]
    pub total: usize,
}

/// One line of the progress stream.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Progress<'a> {
    status: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    method: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    endpoint: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    code: u16,
    #[serde(skip_serializing_if = "str::is_empty")]
    instance: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    item: usize,
    #[serde(skip_serializing_if = "is_zero")]
    total: usize,
}

fn is_zero<T: Default + PartialEq>(n: &T) -> bool {
    *n == T::default()
}

struct Out<'a> {
    topic: &'a str,
    total: usize,
}

impl Out<'_> {
    fn send(&self, progress: &Progress) {
        if let Err(e) = events::publish_json(self.topic, progress) {
            log::warn(&format!(
                "cannot publish progress: {}",
                berth_sdk::error_text(&e)
            ));
        }
    }

    fn note(&self, status: &str, message: &str) {
        self.send(&Progress {
            status,
            message,
            total: self.total,
            ..Default::default()
        });
    }

    /// Report a Docker step on instance `item` (1-based); true if it worked.
    fn step(&self, instance: &str, item: usize, step: &Step, what: &str) -> bool {
        self.send(&Progress {
            status: if step.error.is_none() { "OK" } else { "Error" },
            method: step.method,
            endpoint: &step.endpoint,
            message: step.error.as_deref().unwrap_or(what),
            code: step.code,
            instance,
            item,
            total: self.total,
        });
        step.error.is_none()
    }

    fn fail(&self, instance: &str, item: usize, message: &str) {
        self.send(&Progress {
            status: "Error",
            message,
            instance,
            item,
            total: self.total,
            ..Default::default()
        });
    }
}

/// Run a [`Task`]. Failures are reported on the stream, not retried: the
/// job itself fails only when its payload is unreadable or storage fails.
pub fn run(payload: &[u8]) -> Result<(), String> {
    let task: Task =
        serde_json::from_slice(payload).map_err(|e| format!("bad deploy task: {e}"))?;
    let total = match task.op {
        Op::DeployOne => task.total,
        _ => task.instances.len(),
    };
    let out = Out {
        topic: &task.topic,
        total,
    };
    let failed = match task.op {
        Op::Deploy => return plan(&task, &out),
        Op::DeployOne => return deploy_one(&task, &out),
        Op::Start => start(&task, &out)?,
        Op::Stop => stop(&task, &out)?,
    };
    finish(&task, &out, failed)
}

fn text(e: berth_sdk::Error) -> String {
    berth_sdk::error_text(&e)
}

/// Hold instance `address`'s lock for `task`'s application until this
/// job ends: two operations never interleave on one container (a second
/// waits, or is retried after its own deadline).
fn hold(task: &Task, address: &str) -> Result<(), String> {
    kv::set(&format!("lock/app/{}/{address}", task.app), b"")
        .map_err(|e| format!("the application is busy on {address}: {}", text(e)))
}

/// The summary line and `{"Status":"Finalized"}`, which ends the stream.
fn finish(task: &Task, out: &Out, failed: usize) -> Result<(), String> {
    let verb = match task.op {
        Op::Deploy | Op::DeployOne => "deployed to",
        Op::Start => "started on",
        Op::Stop => "stopped on",
    };
    let summary = format!(
        "{} {verb} {} of {} instances",
        task.name,
        out.total.saturating_sub(failed),
        out.total
    );
    out.note(if failed == 0 { "Complete" } else { "Failed" }, &summary);
    events::close(&task.topic, br#"{"Status":"Finalized"}"#)
        .map_err(|e| format!("cannot end the progress stream: {}", text(e)))?;
    Ok(())
}

fn left_key(topic: &str) -> String {
    format!("run/{topic}/left")
}

fn failed_key(topic: &str) -> String {
    format!("run/{topic}/failed")
}

/// Where instance `address` (item `item`) is reached, or `None` after
/// reporting why it cannot be.
fn target(out: &Out, address: &str, item: usize) -> Option<Target> {
    match beacons::find_instance(address) {
        Ok(Some((beacon, instance))) => Some(Target::new(&beacon, &instance)),
        Ok(None) => {
            out.fail(
                address,
                item,
                "this instance is no longer known (refresh its beacon)",
            );
            None
        }
        Err(_) => {
            out.fail(address, item, "cannot read this instance's beacon");
            None
        }
    }
}

/// The target of each instance (or `None`, reported), each instance's
/// lock held.
fn targets(task: &Task, out: &Out) -> Result<Vec<(usize, String, Option<Target>)>, String> {
    let mut targets = Vec::new();
    for (i, address) in task.instances.iter().enumerate() {
        hold(task, address)?;
        targets.push((i + 1, address.clone(), target(out, address, i + 1)));
    }
    Ok(targets)
}

/// The deployment a task runs.
fn deployment(task: &Task) -> Option<Deployment> {
    task.deployment
        .and_then(|id| apps::deployment(task.app, id).ok().flatten())
}

/// A deployment's create body with the application's labels added.
fn labelled(task: &Task, deployment: &Deployment) -> serde_json::Value {
    let mut body = deployment.command.clone();
    if let Some(object) = body.as_object_mut() {
        let labels = object
            .entry("Labels")
            .or_insert_with(|| serde_json::json!({}));
        if let Some(labels) = labels.as_object_mut() {
            labels.insert(APP_LABEL.into(), task.name.clone().into());
            labels.insert(DEPLOYMENT_LABEL.into(), deployment.id.to_string().into());
        }
    }
    body
}

/// Announce the deploy, remove the containers of removed instances, and
/// queue one job per instance; the last of those to end finishes the
/// stream.
fn plan(task: &Task, out: &Out) -> Result<(), String> {
    let Some(deployment) = deployment(task) else {
        out.note("Error", "the deployment to run is missing");
        return finish(task, out, out.total);
    };
    out.note(
        "Starting",
        &format!(
            "deploying {} version {} ({}) to {} instances",
            task.name,
            deployment.version,
            deployment.image,
            task.instances.len()
        ),
    );
    for address in &task.remove {
        hold(task, address)?;
        if let Ok(Some((beacon, instance))) = beacons::find_instance(address) {
            let step = Target::new(&beacon, &instance).remove(&task.name);
            out.step(address, 0, &step, "removed the container");
        }
    }
    if task.instances.is_empty() {
        return finish(task, out, 0);
    }
    kv::set_json(&left_key(&task.topic), &task.instances.len()).map_err(text)?;
    for (i, address) in task.instances.iter().enumerate() {
        let one = Task {
            topic: task.topic.clone(),
            name: task.name.clone(),
            op: Op::DeployOne,
            instances: vec![address.clone()],
            remove: Vec::new(),
            item: i + 1,
            total: task.instances.len(),
            ..*task
        };
        jobs::enqueue_json(JOB, &one, 0).map_err(text)?;
    }
    Ok(())
}

/// Deploy to one instance; the last instance job to end finishes the
/// stream. The counters change in this job's transaction, so a job that
/// traps and runs again counts once.
fn deploy_one(task: &Task, out: &Out) -> Result<(), String> {
    let address = task
        .instances
        .first()
        .ok_or("a deploy job without an instance")?;
    hold(task, address)?;
    let ok = match deployment(task) {
        None => {
            out.fail(address, task.item, "the deployment to run is missing");
            false
        }
        Some(deployment) => target(out, address, task.item).is_some_and(|target| {
            let body = labelled(task, &deployment);
            deploy_to(task, out, &target, address, &body, &deployment.image)
        }),
    };
    if !ok {
        kv::increment(&failed_key(&task.topic), 1).map_err(text)?;
    }
    if kv::increment(&left_key(&task.topic), -1).map_err(text)? > 0 {
        return Ok(());
    }
    let failed = kv::increment(&failed_key(&task.topic), 0).map_err(text)?;
    kv::delete(&left_key(&task.topic)).map_err(text)?;
    kv::delete(&failed_key(&task.topic)).map_err(text)?;
    finish(task, out, usize::try_from(failed).unwrap_or(0))
}

/// The deploy sequence on one instance; true if every step worked.
fn deploy_to(
    task: &Task,
    out: &Out,
    target: &Target,
    address: &str,
    body: &serde_json::Value,
    image: &str,
) -> bool {
    let (name, item) = (task.name.as_str(), task.item);
    let tmp = format!("{name}_tmp");
    let step = |step: Step, what: &str| out.step(address, item, &step, what);
    let mut pulled = false;
    if task.pull {
        if !step(target.pull(image), &format!("pulled {image}")) {
            return false;
        }
        pulled = true;
    }
    if !step(target.remove(&tmp), &format!("cleared {tmp}")) {
        return false;
    }
    let mut created = target.create(&tmp, body);
    if created.code == 404 && !pulled {
        // The engine lacks the image: pull it once, then create again.
        out.step(address, item, &created, "");
        if !step(target.pull(image), &format!("pulled {image}")) {
            return false;
        }
        created = target.create(&tmp, body);
    }
    step(created, &format!("created {tmp}"))
        && step(target.remove(name), &format!("removed the old {name}"))
        && step(
            target.rename(&tmp, name),
            &format!("renamed {tmp} to {name}"),
        )
        && (!task.start || step(target.start(name), &format!("started {name}")))
}

fn start(task: &Task, out: &Out) -> Result<usize, String> {
    let mut failed = 0;
    for (item, address, target) in targets(task, out)? {
        let ok = target.is_some_and(|t| {
            out.step(
                &address,
                item,
                &t.start(&task.name),
                &format!("started {}", task.name),
            )
        });
        if !ok {
            failed += 1;
        }
    }
    Ok(failed)
}

/// Stop every instance; on the first failure, start again those already
/// stopped and mark the application running.
fn stop(task: &Task, out: &Out) -> Result<usize, String> {
    let mut stopped: Vec<(usize, String, Target)> = Vec::new();
    let mut failure = false;
    for (item, address, target) in targets(task, out)? {
        let Some(target) = target else {
            failure = true;
            break;
        };
        if !out.step(
            &address,
            item,
            &target.stop(&task.name),
            &format!("stopped {}", task.name),
        ) {
            failure = true;
            break;
        }
        stopped.push((item, address, target));
    }
    if !failure {
        return Ok(0);
    }
    out.note(
        "RollingBack",
        "a stop failed: starting the stopped instances again",
    );
    for (item, address, target) in stopped.iter().rev() {
        out.step(
            address,
            *item,
            &target.start(&task.name),
            &format!("started {} again", task.name),
        );
    }
    if let Ok(Some(mut app)) = apps::load(task.app) {
        app.running = true;
        if apps::save(&app).is_err() {
            log::warn("cannot mark the application running after a failed stop");
        }
    }
    Ok(task.instances.len())
}
