//! App templates in Portainer 1.20's format. The operator's `templates`
//! setting (usually given with `setting_files`, from a templates.json)
//! is imported once, the first time templates are asked for, as 1.x
//! imported its templates file on first start; then administrators
//! manage them. When the settings' `TemplatesURL` is set, the list is
//! fetched from there instead (through `http-out`), as in 1.x.

use berth_sdk::{HttpResult, Request, Response, config, gojson, http_out, kv};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model;
use crate::portainer::settings::templates_url;
use crate::portainer::users::{User, id_param};
use crate::portainer::{ADMIN, Payload, fail, next_id, not_found, payload};

const SEEDED_KEY: &str = "p/templates-imported";

#[derive(Serialize, Deserialize, Default, Clone)]
#[serde(default)]
struct Repository {
    url: String,
    stackfile: String,
}

#[derive(Serialize, Deserialize, Default, Clone)]
#[serde(default)]
struct EnvSelect {
    text: String,
    value: String,
    default: bool,
}

/// A variable the template asks for.
#[derive(Serialize, Deserialize, Default, Clone)]
#[serde(default)]
struct TemplateEnv {
    name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    label: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    description: String,
    #[serde(rename = "default", skip_serializing_if = "String::is_empty")]
    default_value: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    preset: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    select: Vec<EnvSelect>,
}

#[derive(Serialize, Deserialize, Default, Clone)]
#[serde(default)]
struct Volume {
    container: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    bind: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    readonly: bool,
}

#[derive(Serialize, Deserialize, Default, Clone)]
#[serde(default)]
struct Label {
    name: String,
    value: String,
}

/// A template as the file gives it and the API shows it: type 1 a
/// container, 2 a Swarm stack, 3 a Compose stack.
#[derive(Serialize, Deserialize, Default, Clone)]
#[serde(default)]
struct Template {
    #[serde(rename = "Id")]
    id: u64,
    #[serde(rename = "type")]
    kind: u8,
    title: String,
    description: String,
    administrator_only: bool,
    image: String,
    repository: Repository,
    #[serde(skip_serializing_if = "String::is_empty")]
    name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    logo: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    env: Vec<TemplateEnv>,
    #[serde(skip_serializing_if = "String::is_empty")]
    note: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    platform: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    categories: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    registry: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    command: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    network: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    volumes: Vec<Volume>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ports: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    labels: Vec<Label>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    privileged: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    interactive: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    restart_policy: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    hostname: String,
}

/// `POST /api/templates` and `PUT /api/templates/{id}`: 1.x's payloads,
/// Go field names; on update, what is given changes. The client
/// generated from 1.x's Swagger sends the template's own names
/// (`administrator_only`, `restart_policy`), which 1.x ignored; they are
/// read here too.
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct TemplateChange {
    #[serde(rename = "Type")]
    kind: u8,
    title: Option<String>,
    description: Option<String>,
    #[serde(alias = "administrator_only")]
    administrator_only: Option<bool>,
    name: Option<String>,
    logo: Option<String>,
    note: Option<String>,
    platform: Option<String>,
    categories: Option<Vec<String>>,
    env: Option<Vec<TemplateEnv>>,
    image: Option<String>,
    registry: Option<String>,
    repository: Repository,
    command: Option<String>,
    network: Option<String>,
    volumes: Option<Vec<Volume>>,
    ports: Option<Vec<String>>,
    labels: Option<Vec<Label>>,
    privileged: Option<bool>,
    interactive: Option<bool>,
    #[serde(alias = "restart_policy")]
    restart_policy: Option<String>,
    hostname: Option<String>,
}

/// An update takes anything, as 1.x checked nothing there.
impl Payload for TemplateChange {}

impl TemplateChange {
    /// 1.x's checks of a new template.
    fn check_new(&self) -> Result<(), &'static str> {
        let blank = |s: &Option<String>| s.as_deref().is_none_or(str::is_empty);
        if !matches!(self.kind, 1..=3) {
            return Err(
                "Invalid template type. Valid values are: 1 (container), 2 (Swarm stack template) or 3 (Compose stack template).",
            );
        }
        if blank(&self.title) {
            return Err("Invalid template title");
        }
        if blank(&self.description) {
            return Err("Invalid template description");
        }
        if self.kind == 1 && blank(&self.image) {
            return Err("Invalid template image");
        }
        if self.kind != 1 && self.repository.url.is_empty() {
            return Err("Invalid template repository URL");
        }
        Ok(())
    }

    /// Apply what is given to `t`: the fields of every template, then
    /// those of its type (a container's, or a stack's repository).
    fn apply(self, t: &mut Template) {
        fn set<T>(field: &mut T, value: Option<T>) {
            if let Some(v) = value {
                *field = v;
            }
        }
        set(&mut t.title, self.title);
        set(&mut t.description, self.description);
        set(&mut t.administrator_only, self.administrator_only);
        set(&mut t.name, self.name);
        set(&mut t.logo, self.logo);
        set(&mut t.note, self.note);
        set(&mut t.platform, self.platform);
        set(&mut t.categories, self.categories);
        set(&mut t.env, self.env);
        if t.kind == 1 {
            set(&mut t.image, self.image);
            set(&mut t.registry, self.registry);
            set(&mut t.command, self.command);
            set(&mut t.network, self.network);
            set(&mut t.volumes, self.volumes);
            set(&mut t.ports, self.ports);
            set(&mut t.labels, self.labels);
            set(&mut t.privileged, self.privileged);
            set(&mut t.interactive, self.interactive);
            set(&mut t.restart_policy, self.restart_policy);
            set(&mut t.hostname, self.hostname);
        } else if !self.repository.url.is_empty() {
            let mut repository = self.repository;
            if repository.stackfile.is_empty() {
                repository.stackfile = "docker-compose.yml".into();
            }
            t.repository = repository;
        }
    }
}

fn template_key(id: u64) -> String {
    format!("p/template/{id:010}")
}

/// A templates file: 1.20's array of templates, or 2.x's
/// `{"version", "templates"}` around one.
fn parse_templates(text: &[u8]) -> Result<Vec<Template>, String> {
    let value: Value = serde_json::from_slice(text).map_err(|e| e.to_string())?;
    let list = match value {
        Value::Object(mut o) => o
            .remove("templates")
            .ok_or("an object without `templates`")?,
        list => list,
    };
    gojson::from_value(list).map_err(|e| e.to_string())
}

/// The stored templates, after importing the operator's `templates`
/// setting the first time they are asked for.
fn stored() -> Result<Vec<Template>, Response> {
    if kv::get(SEEDED_KEY)?.is_none() {
        let text = config::get_or("templates", String::new()).unwrap_or_default();
        let seed = if text.trim().is_empty() {
            Vec::new()
        } else {
            parse_templates(text.as_bytes()).map_err(|e| {
                fail(
                    500,
                    "Unable to parse the templates file",
                    &format!("the `templates` setting: {e}"),
                )
            })?
        };
        for mut t in seed {
            t.id = next_id("template", "portainer-template")?;
            kv::set_json(&template_key(t.id), &t)?;
        }
        kv::set(SEEDED_KEY, b"1")?;
    }
    Ok(model::scan("p/template/")?)
}

/// The templates at the settings' `TemplatesURL`.
fn external(url: &str) -> Result<Vec<Template>, Response> {
    let unreachable =
        |details: String| fail(500, "Unable to retrieve templates via HTTP", &details);
    let answer = http_out::send(&http_out::Outgoing {
        method: "GET".into(),
        url: url.into(),
        headers: Vec::new(),
        body: Vec::new(),
        timeout_ms: 0,
    })
    .map_err(|e| unreachable(http_out::error_text(&e)))?;
    if answer.status != 200 {
        return Err(unreachable(format!("{url} answered {}", answer.status)));
    }
    parse_templates(&answer.body).map_err(|e| fail(500, "Unable to parse external templates", &e))
}

/// `GET /api/templates`: those an administrator keeps, or the
/// `TemplatesURL`'s; `administrator_only` ones to administrators alone.
pub fn template_list(_: &Request, me: &User) -> HttpResult {
    let url = templates_url()?;
    let all = if url.is_empty() {
        stored()?
    } else {
        external(&url)?
    };
    let shown: Vec<&Template> = all
        .iter()
        .filter(|t| me.role == ADMIN || !t.administrator_only)
        .collect();
    Ok(Response::json(200, &shown))
}

pub fn template_create(req: &Request) -> HttpResult {
    let body: TemplateChange = payload(req)?;
    body.check_new()
        .map_err(|e| fail(400, "Invalid request payload", e))?;
    stored()?;
    let mut t = Template {
        id: next_id("template", "portainer-template")?,
        kind: body.kind,
        ..Template::default()
    };
    body.apply(&mut t);
    kv::set_json(&template_key(t.id), &t)?;
    Ok(Response::json(200, &t))
}

fn find_template(req: &Request) -> Result<Template, Response> {
    let id = id_param(req)?;
    stored()?;
    kv::get_json(&template_key(id))?.ok_or_else(|| not_found("a template"))
}

pub fn template_get(req: &Request) -> HttpResult {
    Ok(Response::json(200, &find_template(req)?))
}

pub fn template_update(req: &Request) -> HttpResult {
    let mut t = find_template(req)?;
    let change: TemplateChange = payload(req)?;
    change.apply(&mut t);
    kv::set_json(&template_key(t.id), &t)?;
    Ok(Response::json(200, &t))
}

pub fn template_delete(req: &Request) -> HttpResult {
    let t = find_template(req)?;
    kv::delete(&template_key(t.id))?;
    Ok(Response::new(204))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_1_20_file_and_a_2_x_file_read_alike() {
        let one = r#"[{"type": 1, "title": "Nginx", "description": "Web",
            "image": "nginx:latest", "ports": ["8080:80/tcp"],
            "administrator_only": true, "restart_policy": "always",
            "env": [{"name": "A", "default": "x", "preset": true,
                     "select": [{"text": "Yes", "value": "Y", "default": true}]}]}]"#;
        let two = format!(r#"{{"version": "2", "templates": {one}}}"#);
        for text in [one.to_string(), two] {
            let t = parse_templates(text.as_bytes()).unwrap();
            assert_eq!(t.len(), 1);
            assert!(t[0].administrator_only);
            assert_eq!(t[0].restart_policy, "always");
            assert_eq!(t[0].env[0].default_value, "x");
            assert!(t[0].env[0].select[0].default);
            let shown = serde_json::to_value(&t[0]).unwrap();
            assert_eq!(shown["env"][0]["default"], "x");
            assert_eq!(shown["ports"][0], "8080:80/tcp");
            assert!(shown.get("hostname").is_none());
        }
        assert!(parse_templates(br#"{"version": "2"}"#).is_err());
        assert!(parse_templates(br#"[{"type": "one"}]"#).is_err());
    }

    #[test]
    fn an_update_changes_what_it_gives_for_the_template_s_type() {
        let mut t = Template {
            kind: 2,
            title: "Old".into(),
            repository: Repository {
                url: "https://git.example/r".into(),
                stackfile: "s.yml".into(),
            },
            ..Template::default()
        };
        let change: TemplateChange = gojson::from_slice(
            br#"{"title": "New", "Image": "ignored:1", "administrator_only": true,
                "repository": {"url": "https://git.example/q"}}"#,
        )
        .unwrap();
        change.apply(&mut t);
        assert!(t.administrator_only);
        assert_eq!(t.title, "New");
        assert_eq!(t.image, "");
        assert_eq!(t.repository.url, "https://git.example/q");
        assert_eq!(t.repository.stackfile, "docker-compose.yml");
    }
}
