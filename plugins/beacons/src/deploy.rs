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
//! A job may run twice (the host delivers jobs at least once); every step
//! tolerates what a previous run left behind. Jobs of one application
//! take its lock, so two operations never interleave on its containers.

use berth_sdk::{events, kv, log};
use serde::{Deserialize, Serialize};

use crate::apps;
use crate::beacons;
use crate::target::{Step, Target};

pub const JOB: &str = "deploy";

/// Label on every container an application runs.
const APP_LABEL: &str = "berth.beacons.app";
const DEPLOYMENT_LABEL: &str = "berth.beacons.deployment";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Deploy,
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
/// job itself fails only when its payload is unreadable.
pub fn run(payload: &[u8]) -> Result<(), String> {
    let task: Task =
        serde_json::from_slice(payload).map_err(|e| format!("bad deploy task: {e}"))?;
    // One operation of an application at a time: a second one waits for
    // this job's transaction (or is retried after its own deadline).
    kv::set(&format!("lock/app/{}", task.app), b"")
        .map_err(|e| format!("the application is busy: {}", berth_sdk::error_text(&e)))?;
    let out = Out {
        topic: &task.topic,
        total: task.instances.len(),
    };
    let failed = match task.op {
        Op::Deploy => deploy(&task, &out),
        Op::Start => start(&task, &out),
        Op::Stop => stop(&task, &out),
    };
    let verb = match task.op {
        Op::Deploy => "deployed to",
        Op::Start => "started on",
        Op::Stop => "stopped on",
    };
    let done = task.instances.len() - failed;
    let summary = format!(
        "{} {verb} {done} of {} instances",
        task.name,
        task.instances.len()
    );
    out.note(if failed == 0 { "Complete" } else { "Failed" }, &summary);
    events::close(&task.topic, br#"{"Status":"Finalized"}"#).map_err(|e| {
        format!(
            "cannot end the progress stream: {}",
            berth_sdk::error_text(&e)
        )
    })?;
    Ok(())
}

/// The target of each instance, or the reason there is none.
fn targets(task: &Task, out: &Out) -> Vec<(usize, String, Option<Target>)> {
    task.instances
        .iter()
        .enumerate()
        .map(|(i, address)| {
            let target = match beacons::find_instance(address) {
                Ok(Some((beacon, instance))) => Some(Target::new(&beacon, &instance)),
                Ok(None) => {
                    out.fail(
                        address,
                        i + 1,
                        "this instance is no longer known (refresh its beacon)",
                    );
                    None
                }
                Err(_) => {
                    out.fail(address, i + 1, "cannot read this instance's beacon");
                    None
                }
            };
            (i + 1, address.clone(), target)
        })
        .collect()
}

/// Returns how many instances failed.
fn deploy(task: &Task, out: &Out) -> usize {
    let deployment = task
        .deployment
        .and_then(|id| apps::deployment(task.app, id).ok().flatten());
    let Some(deployment) = deployment else {
        out.note("Error", "the deployment to run is missing");
        return task.instances.len();
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
        if let Ok(Some((beacon, instance))) = beacons::find_instance(address) {
            let step = Target::new(&beacon, &instance).remove(&task.name);
            out.step(address, 0, &step, "removed the container");
        }
    }
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
    let mut failed = 0;
    for (item, address, target) in targets(task, out) {
        let Some(target) = target else {
            failed += 1;
            continue;
        };
        if !deploy_one(task, out, &target, &address, item, &body, &deployment.image) {
            failed += 1;
        }
    }
    failed
}

fn deploy_one(
    task: &Task,
    out: &Out,
    target: &Target,
    address: &str,
    item: usize,
    body: &serde_json::Value,
    image: &str,
) -> bool {
    let name = task.name.as_str();
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

fn start(task: &Task, out: &Out) -> usize {
    let mut failed = 0;
    for (item, address, target) in targets(task, out) {
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
    failed
}

/// Stop every instance; on the first failure, start again those already
/// stopped and mark the application running.
fn stop(task: &Task, out: &Out) -> usize {
    let mut stopped: Vec<(usize, String, Target)> = Vec::new();
    let mut failure = false;
    for (item, address, target) in targets(task, out) {
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
        return 0;
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
        if apps::store(&app).is_err() {
            log::warn("cannot mark the application running after a failed stop");
        }
    }
    task.instances.len()
}
