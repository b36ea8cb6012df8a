//! Stackfiles: Docker Cloud's (top-level keys are service names) and
//! compose files (`services:`), both parsed into [`Def`]s. Errors carry
//! the YAML parser's message with its line and column.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::engine::PortSpec;

/// One service as a stack declares it, before it is stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Def {
    pub name: String,
    pub image: String,
    pub command: Option<String>,
    pub entrypoint: Option<String>,
    pub env: Vec<(String, String)>,
    pub ports: Vec<PortSpec>,
    /// Sibling services linked to: (service name, alias).
    pub links: Vec<(String, String)>,
    pub target_num_containers: u32,
    pub roles: Vec<String>,
    pub autorestart: Option<String>,
    pub privileged: bool,
    pub working_dir: Option<String>,
}

/// A string or a list of strings (`command`, `entrypoint`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Words {
    One(String),
    Many(Vec<String>),
}

impl Words {
    pub fn joined(&self) -> String {
        match self {
            Words::One(s) => s.clone(),
            Words::Many(words) => words
                .iter()
                .map(|w| {
                    if w.is_empty() || w.contains(char::is_whitespace) || w.contains('"') {
                        format!("\"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""))
                    } else {
                        w.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

/// `KEY=VALUE` lines or a map.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Environment {
    List(Vec<String>),
    Map(IndexMap<String, Option<Scalar>>),
}

/// A YAML scalar written as text.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Scalar::Text(s) => s.clone(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

impl Environment {
    fn pairs(&self) -> Vec<(String, String)> {
        match self {
            Environment::List(lines) => lines
                .iter()
                .map(|l| match l.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (l.clone(), String::new()),
                })
                .collect(),
            Environment::Map(map) => map
                .iter()
                .map(|(k, v)| (k.clone(), v.as_ref().map(Scalar::text).unwrap_or_default()))
                .collect(),
        }
    }
}

/// One service of a Docker Cloud stackfile. Every key Docker Cloud knew is
/// accepted; those Berth does not act on (autodestroy, tags, net, ...) are
/// kept by the JSON API path and ignored in a stackfile.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct CloudService {
    pub image: String,
    #[serde(default)]
    pub command: Option<Words>,
    #[serde(default)]
    pub entrypoint: Option<Words>,
    #[serde(default)]
    pub environment: Option<Environment>,
    #[serde(default)]
    pub ports: Vec<Scalar>,
    #[serde(default)]
    pub expose: Vec<Scalar>,
    #[serde(default)]
    pub links: Vec<String>,
    #[serde(default)]
    pub target_num_containers: Option<u32>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub autorestart: Option<String>,
    #[serde(default)]
    pub autodestroy: Option<String>,
    #[serde(default)]
    pub autoredeploy: Option<bool>,
    #[serde(default)]
    pub sequential_deployment: Option<bool>,
    #[serde(default)]
    pub deployment_strategy: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub privileged: Option<bool>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub net: Option<String>,
    #[serde(default)]
    pub pid: Option<String>,
    #[serde(default)]
    pub restart: Option<String>,
}

/// Parse `"80"`, `"8080:80"`, `"127.0.0.1:8080:80/udp"`.
pub fn parse_port(text: &str) -> Result<PortSpec, String> {
    let (ports, protocol) = match text.split_once('/') {
        Some((p, proto)) => (p, proto.to_string()),
        None => (text, "tcp".to_string()),
    };
    if !matches!(protocol.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!("port `{text}`: unknown protocol `{protocol}`"));
    }
    let parts: Vec<&str> = ports.split(':').collect();
    let number = |s: &str| {
        s.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("port `{text}`: `{s}` is not a port number"))
    };
    let (outer, inner) = match parts.as_slice() {
        [inner] => (None, number(inner)?),
        [outer, inner] | [_, outer, inner] => (Some(number(outer)?), number(inner)?),
        _ => {
            return Err(format!(
                "port `{text}` is not PORT, HOST:PORT or IP:HOST:PORT"
            ));
        }
    };
    Ok(PortSpec {
        inner_port: inner,
        outer_port: outer,
        protocol,
    })
}

fn parse_link(text: &str) -> (String, String) {
    match text.split_once(':') {
        Some((name, alias)) => (name.to_string(), alias.to_string()),
        None => (text.to_string(), text.to_string()),
    }
}

impl CloudService {
    pub fn into_def(self, name: &str) -> Result<Def, String> {
        let mut ports = Vec::new();
        for p in &self.ports {
            ports.push(parse_port(&p.text()).map_err(|e| format!("{name}: {e}"))?);
        }
        for p in &self.expose {
            let port = parse_port(&p.text()).map_err(|e| format!("{name}: {e}"))?;
            ports.push(PortSpec {
                outer_port: None,
                ..port
            });
        }
        let autorestart = self.autorestart.or(match self.restart.as_deref() {
            Some("always") | Some("unless-stopped") => Some("ALWAYS".into()),
            Some("on-failure") => Some("ON_FAILURE".into()),
            Some("no") => Some("OFF".into()),
            _ => None,
        });
        Ok(Def {
            name: name.to_string(),
            image: self.image,
            command: self.command.map(|w| w.joined()),
            entrypoint: self.entrypoint.map(|w| w.joined()),
            env: self.environment.map(|e| e.pairs()).unwrap_or_default(),
            ports,
            links: self.links.iter().map(|l| parse_link(l)).collect(),
            target_num_containers: self.target_num_containers.unwrap_or(1),
            roles: self.roles,
            autorestart,
            privileged: self.privileged.unwrap_or(false),
            working_dir: self.working_dir,
        })
    }
}

/// Check a name for services and stacks: letters, digits, `-`, `_`, `.`,
/// starting with a letter or digit, at most 63 bytes.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} name `{name}` must be 1 to 63 letters, digits, `-`, `_` or `.`, starting with a letter or digit"
        ))
    }
}

/// Parse a Docker Cloud stackfile.
pub fn parse_cloud(text: &str) -> Result<Vec<Def>, String> {
    let services: IndexMap<String, CloudService> =
        serde_yaml::from_str(text).map_err(|e| format!("stackfile: {e}"))?;
    if services.is_empty() {
        return Err("stackfile: no services".into());
    }
    let mut defs = Vec::new();
    for (name, service) in services {
        check_name("service", &name)?;
        defs.push(service.into_def(&name)?);
    }
    check_links(&defs)?;
    Ok(defs)
}

/// Every link names a sibling.
pub fn check_links(defs: &[Def]) -> Result<(), String> {
    for def in defs {
        for (target, _) in &def.links {
            if !defs.iter().any(|d| &d.name == target) {
                return Err(format!(
                    "{}: links to `{target}`, which is not a service of this stack",
                    def.name
                ));
            }
        }
    }
    Ok(())
}

/// One service of a compose file (the keys Berth runs; others are refused
/// by name so nothing is silently ignored).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ComposeService {
    image: String,
    #[serde(default)]
    command: Option<Words>,
    #[serde(default)]
    entrypoint: Option<Words>,
    #[serde(default)]
    environment: Option<Environment>,
    #[serde(default)]
    ports: Vec<Scalar>,
    #[serde(default)]
    expose: Vec<Scalar>,
    #[serde(default)]
    links: Vec<String>,
    #[serde(default)]
    depends_on: Vec<String>,
    #[serde(default)]
    deploy: Option<Deploy>,
    #[serde(default)]
    restart: Option<String>,
    #[serde(default)]
    privileged: Option<bool>,
    #[serde(default)]
    working_dir: Option<String>,
    // Accepted, not acted on: Berth names and networks a stack itself.
    #[serde(default)]
    #[allow(dead_code)]
    labels: Option<Environment>,
    // Accepted, not acted on: Berth names and networks a stack itself.
    #[serde(default)]
    #[allow(dead_code)]
    networks: Option<serde_yaml::Value>,
    // Accepted, not acted on: Berth names and networks a stack itself.
    #[serde(default)]
    #[allow(dead_code)]
    container_name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct Deploy {
    #[serde(default)]
    replicas: Option<u32>,
    #[serde(default)]
    mode: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct Compose {
    #[serde(default)]
    #[allow(dead_code)]
    version: Option<Scalar>,
    services: IndexMap<String, ComposeService>,
    #[serde(default)]
    #[allow(dead_code)]
    networks: Option<serde_yaml::Value>,
    #[serde(default)]
    #[allow(dead_code)]
    volumes: Option<serde_yaml::Value>,
}

/// Replace `${NAME}`, `${NAME:-default}` and `$NAME` with `env` values
/// (missing: empty, as compose does); `$$` is a literal `$`.
pub fn interpolate(text: &str, env: &[(String, String)]) -> String {
    let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            match body.find('}') {
                Some(end) => {
                    let inner = &body[..end];
                    let value = match inner.split_once(":-") {
                        Some((name, default)) => lookup(name)
                            .filter(|v| !v.is_empty())
                            .unwrap_or(default.into()),
                        None => lookup(inner).unwrap_or_default(),
                    };
                    out.push_str(&value);
                    rest = &body[end + 1..];
                }
                None => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if len == 0 {
                out.push('$');
            } else {
                out.push_str(&lookup(&after[..len]).unwrap_or_default());
            }
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    out
}

/// Parse a compose file (`version: "3"`, `services:`), with `env`
/// interpolated first.
pub fn parse_compose(text: &str, env: &[(String, String)]) -> Result<Vec<Def>, String> {
    let compose: Compose =
        serde_yaml::from_str(&interpolate(text, env)).map_err(|e| format!("stack file: {e}"))?;
    if compose.services.is_empty() {
        return Err("stack file: no services".into());
    }
    let mut defs = Vec::new();
    for (name, s) in compose.services {
        check_name("service", &name)?;
        let replicas = match &s.deploy {
            Some(Deploy {
                mode: Some(mode), ..
            }) if mode != "replicated" => {
                return Err(format!("{name}: deploy mode `{mode}` is not supported"));
            }
            Some(d) => d.replicas.unwrap_or(1),
            None => 1,
        };
        let mut links: Vec<String> = s.links.clone();
        links.extend(s.depends_on.iter().cloned());
        let service = CloudService {
            image: s.image,
            command: s.command,
            entrypoint: s.entrypoint,
            environment: s.environment,
            ports: s.ports,
            expose: s.expose,
            links,
            target_num_containers: Some(replicas),
            roles: Vec::new(),
            autorestart: None,
            autodestroy: None,
            autoredeploy: None,
            sequential_deployment: None,
            deployment_strategy: None,
            tags: Vec::new(),
            privileged: s.privileged,
            working_dir: s.working_dir,
            net: None,
            pid: None,
            restart: s.restart,
        };
        defs.push(service.into_def(&name)?);
    }
    check_links(&defs)?;
    Ok(defs)
}

/// A stackfile for `defs` (Docker Cloud's export).
pub fn export(defs: &[Def]) -> String {
    let mut doc = serde_yaml::Mapping::new();
    for d in defs {
        let mut s = serde_yaml::Mapping::new();
        let mut put = |k: &str, v: serde_yaml::Value| {
            s.insert(serde_yaml::Value::from(k), v);
        };
        put("image", d.image.clone().into());
        if let Some(c) = &d.command {
            put("command", c.clone().into());
        }
        if let Some(e) = &d.entrypoint {
            put("entrypoint", e.clone().into());
        }
        if !d.env.is_empty() {
            let env: Vec<serde_yaml::Value> = d
                .env
                .iter()
                .map(|(k, v)| format!("{k}={v}").into())
                .collect();
            put("environment", env.into());
        }
        if !d.ports.is_empty() {
            let ports: Vec<serde_yaml::Value> = d
                .ports
                .iter()
                .map(|p| match p.outer_port {
                    Some(o) => format!("{o}:{}/{}", p.inner_port, p.protocol).into(),
                    None => format!("{}/{}", p.inner_port, p.protocol).into(),
                })
                .collect();
            put("ports", ports.into());
        }
        if !d.links.is_empty() {
            let links: Vec<serde_yaml::Value> = d
                .links
                .iter()
                .map(|(n, a)| {
                    if n == a {
                        n.clone().into()
                    } else {
                        format!("{n}:{a}").into()
                    }
                })
                .collect();
            put("links", links.into());
        }
        put("target_num_containers", d.target_num_containers.into());
        if !d.roles.is_empty() {
            put(
                "roles",
                d.roles
                    .iter()
                    .map(|r| serde_yaml::Value::from(r.clone()))
                    .collect::<Vec<_>>()
                    .into(),
            );
        }
        if let Some(a) = &d.autorestart {
            put("autorestart", a.clone().into());
        }
        if d.privileged {
            put("privileged", true.into());
        }
        if let Some(w) = &d.working_dir {
            put("working_dir", w.clone().into());
        }
        doc.insert(d.name.clone().into(), serde_yaml::Value::Mapping(s));
    }
    serde_yaml::to_string(&doc).unwrap_or_default()
}

/// Split a command line into words: whitespace separates, single and
/// double quotes group, backslash escapes.
pub fn split_words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') | (None, '\\') => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
                in_word = true;
            }
            (Some(_), c) => word.push(c),
            (None, '"') | (None, '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err(format!("command `{text}` has an unclosed quote"));
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_cloud_stackfile_with_links() {
        let defs = parse_cloud(
            "web:\n  image: busybox:latest\n  command: httpd -f -p 80\n  ports: [\"8080:80\"]\n  links: [\"db:database\"]\n  target_num_containers: 2\n  environment:\n    A: 1\ndb:\n  image: busybox:latest\n",
        )
        .unwrap();
        assert_eq!(defs.len(), 2);
        assert_eq!(defs[0].name, "web");
        assert_eq!(defs[0].target_num_containers, 2);
        assert_eq!(defs[0].links, vec![("db".into(), "database".into())]);
        assert_eq!(defs[0].env, vec![("A".into(), "1".into())]);
        assert_eq!(defs[0].ports[0].outer_port, Some(8080));
        assert_eq!(defs[1].target_num_containers, 1);
        // Export parses back to the same services.
        assert_eq!(parse_cloud(&export(&defs)).unwrap(), defs);
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse_cloud("web:\n  image: a\n  bogus: 1\n").unwrap_err();
        assert!(e.contains("line 3"), "{e}");
        let e = parse_cloud("web:\n  command: x\n").unwrap_err();
        assert!(e.contains("image") && e.contains("line"), "{e}");
        let e = parse_cloud("web: [\n").unwrap_err();
        assert!(e.contains("line"), "{e}");
        let e = parse_cloud("web:\n  image: a\n  links: [nope]\n").unwrap_err();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn parses_compose_with_interpolation() {
        let defs = parse_compose(
            "version: '3'\nservices:\n  web:\n    image: ${IMAGE:-busybox}\n    command: [\"httpd\", \"-f\"]\n    deploy:\n      replicas: 3\n",
            &[("IMAGE".into(), "busybox:latest".into())],
        )
        .unwrap();
        assert_eq!(defs[0].image, "busybox:latest");
        assert_eq!(defs[0].target_num_containers, 3);
        assert_eq!(defs[0].command.as_deref(), Some("httpd -f"));
        assert_eq!(interpolate("a$$b ${X} $Y", &[]), "a$b  ");
    }

    #[test]
    fn splits_words_with_quotes() {
        assert_eq!(
            split_words(r#"sh -c "echo hi; sleep 1" 'a b'"#).unwrap(),
            vec!["sh", "-c", "echo hi; sleep 1", "a b"]
        );
        assert!(split_words("a \"b").is_err());
        assert_eq!(parse_port("8080:80/udp").unwrap().protocol, "udp");
        assert!(parse_port("x:80").is_err());
    }
}
