//! Applications: a named container deployed onto instances, with a
//! history of deployments.
//!
//! Storage: `app/{id}` holds an [`App`], `appname/{name}` its id, and
//! `deployment/{app id}/{version}` each [`Deployment`] (ids zero-padded so
//! a scan returns them in order). The routes are in `app_routes`; the
//! deploy jobs in `deploy`.

use berth_sdk::{Response, kv};
use serde::{Deserialize, Serialize};

use crate::fail;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct App {
    pub id: u64,
    pub name: String,
    pub current_deployment: u64,
    /// Instance addresses.
    pub instances: Vec<String>,
    /// Versions handed out so far.
    pub versions: u64,
    /// Whether the containers should be running (start/stop/create?start).
    pub running: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Deployment {
    pub id: u64,
    pub creator: String,
    pub date: String,
    pub image: String,
    /// The Docker create body.
    pub command: serde_json::Value,
    /// 1 for the application's first deployment, then 2, 3, ...
    pub version: u64,
}

pub fn app_key(id: u64) -> String {
    format!("app/{id:020}")
}

pub fn name_key(name: &str) -> String {
    format!("appname/{name}")
}

fn deployment_prefix(app: u64) -> String {
    format!("deployment/{app:020}/")
}

pub fn deployment_key(app: u64, version: u64) -> String {
    format!("{}{version:020}", deployment_prefix(app))
}

/// The application with this id or name.
pub fn find(name: &str) -> Result<Option<App>, Response> {
    let id = match name.parse::<u64>() {
        Ok(id) => Some(id),
        Err(_) => kv::get_json(&name_key(name))?,
    };
    match id {
        Some(id) => kv::get_json(&app_key(id)).map_err(Response::from),
        None => Ok(None),
    }
}

pub fn save(app: &App) -> Result<(), Response> {
    kv::set_json(&app_key(app.id), app).map_err(Response::from)
}

/// Every deployment of `app`, oldest first.
pub fn deployments(app: u64) -> Result<Vec<Deployment>, Response> {
    let mut all = Vec::new();
    for item in kv::scan(&deployment_prefix(app)) {
        let (_, value) = item?;
        all.push(serde_json::from_slice(&value).map_err(|e| {
            fail(
                500,
                "applications",
                &format!("a stored deployment is unreadable: {e}"),
            )
        })?);
    }
    Ok(all)
}

pub fn current(app: &App) -> Result<Deployment, Response> {
    deployments(app.id)?
        .into_iter()
        .find(|d| d.id == app.current_deployment)
        .ok_or_else(|| fail(500, "applications", "the current deployment is missing"))
}

/// The deployment with this id of `app`.
pub fn deployment(app: u64, id: u64) -> Result<Option<Deployment>, Response> {
    Ok(deployments(app)?.into_iter().find(|d| d.id == id))
}

/// The application with this id.
pub fn load(id: u64) -> Result<Option<App>, Response> {
    kv::get_json(&app_key(id)).map_err(Response::from)
}
