//! Stored services and stacks, their state machine, and the events each
//! change publishes. Both surfaces act through these functions.

use berth_sdk::docker::DockerError;
use berth_sdk::{config, events, kv, time};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::engine::{self, Placement, Spec};
use crate::stackfile::{Def, split_words};

pub const SERVICE_URI: &str = "/api/app/v1/service/";
pub const STACK_URI: &str = "/api/app/v1/stack/";
pub const CONTAINER_URI: &str = "/api/app/v1/container/";
pub const ACTION_URI: &str = "/api/audit/v1/action/";

/// A service's or a stack's state, as Docker Cloud named them (and as
/// they are stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    #[serde(rename = "Not running", alias = "Not Running")]
    NotRunning,
    Starting,
    Running,
    #[serde(rename = "Partly running")]
    PartlyRunning,
    Scaling,
    Redeploying,
    Stopping,
    Stopped,
    Terminating,
    Terminated,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::NotRunning => "Not running",
            State::Starting => "Starting",
            State::Running => "Running",
            State::PartlyRunning => "Partly running",
            State::Scaling => "Scaling",
            State::Redeploying => "Redeploying",
            State::Stopping => "Stopping",
            State::Stopped => "Stopped",
            State::Terminating => "Terminating",
            State::Terminated => "Terminated",
        }
    }

    /// Running, wholly or in part.
    pub fn running(self) -> bool {
        matches!(self, State::Running | State::PartlyRunning)
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A service, standalone or in a stack.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Service {
    pub uuid: String,
    pub name: String,
    #[serde(default)]
    pub nickname: String,
    pub stack: Option<String>,
    pub namespace: Option<String>,
    pub endpoint: String,
    pub swarm: bool,
    pub def: Def,
    /// Body fields Berth keeps and echoes but does not act on.
    #[serde(default)]
    pub extra: serde_json::Map<String, Value>,
    pub state: State,
    pub created: String,
    #[serde(default)]
    pub started: Option<String>,
    #[serde(default)]
    pub stopped: Option<String>,
    #[serde(default)]
    pub destroyed: Option<String>,
    /// Aliases siblings link to this service by.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Digest of the API key made for `roles` (revoked on terminate).
    #[serde(default)]
    pub role_key: Option<String>,
    /// The `DOCKERCLOUD_*` environment `roles` inject.
    #[serde(default)]
    pub role_env: Vec<(String, String)>,
}

/// A stack of services.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stack {
    pub uuid: String,
    /// Portainer's numeric id.
    pub id: u64,
    pub name: String,
    #[serde(default)]
    pub nickname: String,
    pub services: Vec<String>,
    pub endpoint: String,
    pub swarm: bool,
    pub state: State,
    pub created: String,
    #[serde(default)]
    pub deployed: Option<String>,
    #[serde(default)]
    pub destroyed: Option<String>,
    /// Portainer fields: type (1 swarm, 2 compose; 0 Docker Cloud), its
    /// endpoint id, swarm id, env and the stack file as given.
    #[serde(default)]
    pub portainer: Option<PortainerStack>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PortainerStack {
    pub kind: u8,
    pub endpoint_id: u64,
    pub swarm_id: String,
    pub env: Vec<(String, String)>,
    pub file: String,
}

/// Why an operation failed.
pub enum Failure {
    /// Not allowed in the current state (409).
    State(String),
    /// Bad input (400).
    Invalid(String),
    /// The engine failed or could not be reached.
    Engine(DockerError),
    /// Storage failed.
    Host(berth_sdk::Error),
}

impl From<DockerError> for Failure {
    fn from(e: DockerError) -> Self {
        Failure::Engine(e)
    }
}

impl From<berth_sdk::Error> for Failure {
    fn from(e: berth_sdk::Error) -> Self {
        Failure::Host(e)
    }
}

pub fn now() -> String {
    time::now_rfc3339()
}

/// A random version-4 uuid.
pub fn uuid4() -> Result<String, berth_sdk::Error> {
    let bytes = berth_sdk::crypto::random_bytes(16)?;
    let mut b = [0u8; 16];
    b.copy_from_slice(&bytes[..16]);
    Ok(uuid4_text(b))
}

/// The FNV-1a offset basis, for [`fnv1a`].
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a (64 bits) of `bytes` from `offset`: stable ids and hashes that
/// need no storage (not for secrets).
pub fn fnv1a(offset: u64, bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(offset, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// 16 bytes as a version-4 uuid's text (the version and variant bits set).
pub fn uuid4_text(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The endpoint Docker Cloud objects run on.
pub fn cloud_endpoint() -> String {
    config::get("endpoint")
        .ok()
        .flatten()
        .unwrap_or_else(|| "local".into())
}

/// Seconds a container gets to stop before it is killed.
pub fn stop_timeout() -> u32 {
    config::get_or("stop_timeout_secs", 5u32).unwrap_or(5)
}

pub fn load_service(uuid: &str) -> Result<Option<Service>, berth_sdk::Error> {
    kv::get_json(&format!("svc/{uuid}"))
}

pub fn save_service(s: &Service) -> Result<(), berth_sdk::Error> {
    kv::set_json(&format!("svc/{}", s.uuid), s)
}

pub fn load_stack(uuid: &str) -> Result<Option<Stack>, berth_sdk::Error> {
    kv::get_json(&format!("stack/{uuid}"))
}

pub fn save_stack(s: &Stack) -> Result<(), berth_sdk::Error> {
    kv::set_json(&format!("stack/{}", s.uuid), s)
}

/// Every stored record under `prefix`.
pub fn scan<T: serde::de::DeserializeOwned>(prefix: &str) -> Result<Vec<T>, berth_sdk::Error> {
    let mut out = Vec::new();
    for entry in kv::scan(prefix) {
        let (key, value) = entry?;
        out.push(serde_json::from_slice(&value).map_err(|e| {
            berth_sdk::Error::Invalid(format!("stored `{key}` is not readable: {e}"))
        })?);
    }
    Ok(out)
}

/// The aliases `defs` link to `name` by, other than its name.
pub fn aliases_of(name: &str, defs: &[Def]) -> Vec<String> {
    defs.iter()
        .flat_map(|d| d.links.iter())
        .filter(|(target, alias)| target == name && alias != name)
        .map(|(_, alias)| alias.clone())
        .collect()
}

impl Service {
    /// A new, not running service `def` of `stack` (its siblings `defs`).
    pub fn in_stack(
        stack: &Stack,
        def: &Def,
        defs: &[Def],
        extra: serde_json::Map<String, Value>,
    ) -> Result<Service, berth_sdk::Error> {
        Ok(Service {
            uuid: uuid4()?,
            name: def.name.clone(),
            nickname: def.name.clone(),
            stack: Some(stack.uuid.clone()),
            namespace: Some(stack.name.clone()),
            endpoint: stack.endpoint.clone(),
            swarm: stack.swarm,
            def: def.clone(),
            extra,
            state: State::NotRunning,
            created: now(),
            started: None,
            stopped: None,
            destroyed: None,
            aliases: aliases_of(&def.name, defs),
            role_key: None,
            role_env: Vec::new(),
        })
    }

    pub fn uri(&self) -> String {
        format!("{SERVICE_URI}{}/", self.uuid)
    }

    pub fn placement(&self) -> Placement {
        let mut aliases = vec![self.name.clone()];
        aliases.extend(self.aliases.iter().filter(|a| **a != self.name).cloned());
        Placement {
            endpoint: self.endpoint.clone(),
            swarm: self.swarm,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uuid: self.uuid.clone(),
            aliases,
        }
    }

    pub fn spec(&self) -> Result<Spec, Failure> {
        let words = |t: &Option<String>| match t {
            Some(t) => split_words(t).map_err(Failure::Invalid),
            None => Ok(Vec::new()),
        };
        let mut env = self.def.env.clone();
        env.extend(self.role_env.iter().cloned());
        Ok(Spec {
            image: self.def.image.clone(),
            command: words(&self.def.command)?,
            entrypoint: words(&self.def.entrypoint)?,
            env,
            ports: self.def.ports.clone(),
            working_dir: self.def.working_dir.clone(),
            privileged: self.def.privileged,
            restart: !matches!(self.def.autorestart.as_deref(), Some("OFF")),
        })
    }

    fn parents(&self) -> Vec<String> {
        self.stack
            .iter()
            .map(|s| format!("{STACK_URI}{s}/"))
            .collect()
    }
}

impl Stack {
    pub fn uri(&self) -> String {
        format!("{STACK_URI}{}/", self.uuid)
    }
}

/// Publish a Docker Cloud event on every topic a filter may subscribe to:
/// all, by type, by object and by each parent.
pub fn emit(kind: &str, action: &str, uri: &str, uuid: &str, state: &str, parents: &[String]) {
    let event = json!({
        "type": kind,
        "action": action,
        "parents": parents,
        "resource_uri": uri,
        "state": state,
        "uuid": uuid,
        "datetime": berth_sdk::time::format_rfc2822(berth_sdk::time::now_secs()),
    });
    let payload = event.to_string();
    let mut topics = vec![
        "cloud".to_string(),
        format!("cloud:type:{kind}"),
        format!("cloud:object:{uri}"),
    ];
    topics.extend(parents.iter().map(|p| format!("cloud:parent:{p}")));
    for topic in topics {
        if let Err(e) = events::publish(&topic, payload.as_bytes()) {
            berth_sdk::log::warn(&format!(
                "cannot publish an event: {}",
                berth_sdk::error_text(&e)
            ));
        }
    }
}

/// Set a service's state, store it and publish the change.
pub fn set_service_state(s: &mut Service, state: State) -> Result<(), berth_sdk::Error> {
    s.state = state;
    match state {
        State::Running => s.started = Some(now()),
        State::Stopped => s.stopped = Some(now()),
        State::Terminated => s.destroyed = Some(now()),
        _ => {}
    }
    save_service(s)?;
    emit(
        "service",
        "update",
        &s.uri(),
        &s.uuid,
        state.as_str(),
        &s.parents(),
    );
    Ok(())
}

/// The service operations, with the states each is allowed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Start,
    Stop,
    Scale,
    Redeploy,
    Terminate,
}

impl Op {
    pub fn allowed(self, state: State) -> bool {
        use State::*;
        match self {
            Op::Start => matches!(state, NotRunning | Stopped | PartlyRunning),
            Op::Stop => matches!(
                state,
                Running | PartlyRunning | Starting | Scaling | Redeploying
            ),
            Op::Scale | Op::Redeploy => {
                matches!(state, Running | PartlyRunning | Stopped | NotRunning)
            }
            Op::Terminate => !matches!(state, Terminating | Terminated),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Op::Start => "start",
            Op::Stop => "stop",
            Op::Scale => "scale",
            Op::Redeploy => "redeploy",
            Op::Terminate => "terminate",
        }
    }

    fn busy_state(self) -> State {
        match self {
            Op::Start => State::Starting,
            Op::Stop => State::Stopping,
            Op::Scale => State::Scaling,
            Op::Redeploy => State::Redeploying,
            Op::Terminate => State::Terminating,
        }
    }
}

/// Run `op` on a service: check the state, drive the engine, store and
/// publish the new state. On an engine failure the state goes back.
/// Take a service's lock until this call commits: operations on it and
/// the engine-event jobs about it run one at a time, so a job never counts
/// containers in the middle of an operation and then stores a stale state.
fn hold(uuid: &str) -> Result<(), berth_sdk::Error> {
    kv::set(&format!("lock/svc/{uuid}"), b"")
}

pub fn run_service(s: &mut Service, op: Op) -> Result<(), Failure> {
    hold(&s.uuid)?;
    if !op.allowed(s.state) {
        return Err(Failure::State(format!(
            "Cannot {} a service in state {}",
            op.name(),
            s.state
        )));
    }
    let before = s.state;
    if op == Op::Scale && !before.running() {
        // A service that is not running only records its new target.
        save_service(s)?;
        return Ok(());
    }
    emit(
        "service",
        "update",
        &s.uri(),
        &s.uuid,
        op.busy_state().as_str(),
        &s.parents(),
    );
    let p = s.placement();
    let spec = s.spec()?;
    let target = s.def.target_num_containers;
    let result = match op {
        Op::Start => engine::deploy(&p, &spec, target, false),
        Op::Stop => engine::stop(&p, stop_timeout()),
        Op::Scale => engine::scale(&p, &spec, target),
        Op::Redeploy => engine::deploy(&p, &spec, target, true),
        Op::Terminate => engine::terminate(&p),
    };
    if let Err(e) = result {
        s.state = before;
        save_service(s)?;
        emit(
            "service",
            "update",
            &s.uri(),
            &s.uuid,
            before.as_str(),
            &s.parents(),
        );
        return Err(Failure::Engine(e));
    }
    let after = match op {
        Op::Start | Op::Scale | Op::Redeploy => State::Running,
        Op::Stop => State::Stopped,
        Op::Terminate => State::Terminated,
    };
    if op == Op::Terminate
        && let Some(digest) = s.role_key.take()
    {
        kv::delete(&format!("apikey/{digest}"))?;
    }
    set_service_state(s, after)?;
    Ok(())
}

/// Run `op` on every service of a stack, then set the stack's state.
pub fn run_stack(stack: &mut Stack, op: Op) -> Result<(), Failure> {
    if !op.allowed(stack.state) {
        return Err(Failure::State(format!(
            "Cannot {} a stack in state {}",
            op.name(),
            stack.state
        )));
    }
    let mut first_error = None;
    for uuid in stack.services.clone() {
        let Some(mut s) = load_service(&uuid)? else {
            continue;
        };
        if op != Op::Terminate && s.state == State::Terminated {
            continue;
        }
        if op == Op::Stop && !Op::Stop.allowed(s.state) {
            continue;
        }
        if op == Op::Start && !Op::Start.allowed(s.state) {
            continue;
        }
        if op == Op::Terminate && !Op::Terminate.allowed(s.state) {
            continue;
        }
        if let Err(e) = run_service(&mut s, op) {
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    if op == Op::Terminate {
        engine::remove_network(&stack.endpoint, &stack.name);
    }
    let state = match op {
        Op::Start | Op::Redeploy | Op::Scale => State::Running,
        Op::Stop => State::Stopped,
        Op::Terminate => State::Terminated,
    };
    stack.state = state;
    match op {
        Op::Start | Op::Redeploy => stack.deployed = Some(now()),
        Op::Terminate => stack.destroyed = Some(now()),
        _ => {}
    }
    save_stack(stack)?;
    emit(
        "stack",
        "update",
        &stack.uri(),
        &stack.uuid,
        state.as_str(),
        &[],
    );
    Ok(())
}

/// Create stored services for `defs` in a new stack `name` on `endpoint`
/// (not started). Names must be free among live stacks.
pub fn create_stack(
    name: &str,
    nickname: &str,
    defs: Vec<Def>,
    endpoint: &str,
    portainer: Option<PortainerStack>,
    extras: Vec<serde_json::Map<String, Value>>,
) -> Result<Stack, Failure> {
    crate::stackfile::check_name("stack", name).map_err(Failure::Invalid)?;
    if stack_name_taken(name)? {
        return Err(Failure::State(format!(
            "A stack with the name {name} already exists"
        )));
    }
    build_stack(name, nickname, defs, endpoint, portainer, extras)
}

/// Whether a live stack is called `name` (names compare without case).
pub fn stack_name_taken(name: &str) -> Result<bool, berth_sdk::Error> {
    Ok(scan::<Stack>("stack/")?
        .into_iter()
        .any(|s| s.state != State::Terminated && s.name.eq_ignore_ascii_case(name)))
}

/// [`create_stack`] without the check that the name is free (a stack
/// moving to another engine under its own name).
pub fn build_stack(
    name: &str,
    nickname: &str,
    defs: Vec<Def>,
    endpoint: &str,
    portainer: Option<PortainerStack>,
    extras: Vec<serde_json::Map<String, Value>>,
) -> Result<Stack, Failure> {
    let swarm = engine::is_swarm_manager(endpoint)?;
    let swarm = match &portainer {
        Some(p) if p.kind == 2 => false,
        Some(p) if p.kind == 1 && !swarm => {
            return Err(Failure::Invalid(
                "a swarm stack (type 1) needs an endpoint that is a swarm manager".into(),
            ));
        }
        _ => swarm,
    };
    let uuid = uuid4()?;
    let mut stack = Stack {
        uuid: uuid.clone(),
        id: kv::next_in_sequence("stack-id")?,
        name: name.to_string(),
        nickname: nickname.to_string(),
        services: Vec::new(),
        endpoint: endpoint.to_string(),
        swarm,
        state: State::NotRunning,
        created: now(),
        deployed: None,
        destroyed: None,
        portainer,
    };
    let mut services = Vec::new();
    for (i, def) in defs.iter().enumerate() {
        let extra = extras.get(i).cloned().unwrap_or_default();
        services.push(Service::in_stack(&stack, def, &defs, extra)?);
    }
    for s in &mut services {
        apply_roles(s)?;
        save_service(s)?;
        stack.services.push(s.uuid.clone());
    }
    save_stack(&stack)?;
    emit(
        "stack",
        "create",
        &stack.uri(),
        &stack.uuid,
        stack.state.as_str(),
        &[],
    );
    for s in &services {
        emit(
            "service",
            "create",
            &s.uri(),
            &s.uuid,
            s.state.as_str(),
            &s.parents(),
        );
    }
    Ok(stack)
}

/// The stack's services' definitions, in order.
pub fn stack_defs(stack: &Stack) -> Result<Vec<Def>, berth_sdk::Error> {
    let mut defs = Vec::new();
    for uuid in &stack.services {
        if let Some(s) = load_service(uuid)? {
            defs.push(s.def);
        }
    }
    Ok(defs)
}

/// A container event from the engine: publish it as a Docker Cloud event
/// and bring its service's state up to date (Running / Partly running).
pub fn engine_event(event: &Value) -> Result<(), String> {
    if event["Type"] != "container" {
        return Ok(());
    }
    let attrs = &event["Actor"]["Attributes"];
    let Some(uuid) = attrs[engine::SERVICE_LABEL].as_str() else {
        return Ok(());
    };
    let action = event["Action"].as_str().unwrap_or_default();
    let (cloud_action, state) = match action {
        "create" => ("create", State::Starting),
        "start" | "restart" | "unpause" => ("update", State::Running),
        "die" | "stop" | "kill" | "pause" => ("update", State::Stopped),
        "destroy" => ("delete", State::Terminated),
        _ => return Ok(()),
    };
    hold(uuid)?;
    let Some(mut service) = load_service(uuid)? else {
        return Ok(());
    };
    let id = event["Actor"]["ID"].as_str().unwrap_or_default();
    let mut parents = vec![service.uri()];
    parents.extend(service.parents());
    if id.len() >= 32 {
        let cuuid = container_uuid(id);
        emit(
            "container",
            cloud_action,
            &format!("{CONTAINER_URI}{cuuid}/"),
            &cuuid,
            state.as_str(),
            &parents,
        );
    }
    if !service.state.running() {
        return Ok(());
    }
    let running = engine::containers(&service.placement())
        .map_err(|e| berth_sdk::docker::error_text(&e))?
        .iter()
        .filter(|c| c.state == "running")
        .count() as u32;
    let wanted = if running >= service.def.target_num_containers {
        State::Running
    } else {
        State::PartlyRunning
    };
    if wanted != service.state {
        set_service_state(&mut service, wanted)?;
    }
    Ok(())
}

/// The Docker Cloud uuid of a container: its engine id's first 32 hex
/// digits, uuid-shaped (the engine resolves the prefix back).
pub fn container_uuid(id: &str) -> String {
    format!(
        "{}-{}-{}-{}-{}",
        &id[..8],
        &id[8..12],
        &id[12..16],
        &id[16..20],
        &id[20..32]
    )
}

/// `roles: ["global"]` gives the service an API key of its own, in
/// `DOCKERCLOUD_AUTH`, with the REST and stream hosts to use it on.
pub fn apply_roles(s: &mut Service) -> Result<(), berth_sdk::Error> {
    if !s.def.roles.iter().any(|r| r == "global") || s.role_key.is_some() {
        return Ok(());
    }
    let user = format!("service-{}", &s.uuid[..8]);
    let (key, d) = crate::apikeys::make_key(&user, Some(&s.uuid))?;
    let auth = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{user}:{key}"),
    );
    s.role_key = Some(d);
    s.role_env = vec![("DOCKERCLOUD_AUTH".into(), format!("Basic {auth}"))];
    if let Some(url) = berth_sdk::config::get("public_url")?.filter(|u| !u.is_empty()) {
        let url = url.trim_end_matches('/');
        s.role_env
            .push(("DOCKERCLOUD_REST_HOST".into(), format!("{url}/")));
        let stream = url
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1);
        s.role_env
            .push(("DOCKERCLOUD_STREAM_HOST".into(), format!("{stream}/")));
    }
    Ok(())
}

/// Start following the engine's container events (idempotent): each
/// becomes a job that publishes Docker Cloud events and updates states.
pub fn follow(endpoint: &str) {
    let filters = vec![
        ("type".to_string(), vec!["container".to_string()]),
        ("label".to_string(), vec![engine::SERVICE_LABEL.to_string()]),
    ];
    if let Err(e) = berth_sdk::docker::follow_events_as_jobs(endpoint, "engine-event", &filters) {
        berth_sdk::log::warn(&format!(
            "cannot follow the engine's events: {}",
            berth_sdk::docker::error_text(&e)
        ));
    }
}

/// Bring a stack's services to `defs`: update by name, add, and with
/// `prune` terminate the ones no longer declared (without, they stay as
/// they are). Running stacks apply the change at once.
pub fn update_stack_services(
    stack: &mut Stack,
    defs: Vec<Def>,
    extras: Vec<serde_json::Map<String, Value>>,
    prune: bool,
) -> Result<(), Failure> {
    let running = stack.state.running();
    let mut kept = Vec::new();
    for (i, def) in defs.iter().enumerate() {
        let existing = stack
            .services
            .iter()
            .filter_map(|u| load_service(u).ok().flatten())
            .find(|s| s.name == def.name && s.state != State::Terminated);
        let extra = extras.get(i).cloned().unwrap_or_default();
        let mut s = match existing {
            Some(mut s) => {
                s.def = def.clone();
                s.aliases = aliases_of(&def.name, &defs);
                s.extra = extra;
                s
            }
            None => {
                let s = Service::in_stack(stack, def, &defs, extra)?;
                stack.services.push(s.uuid.clone());
                s
            }
        };
        apply_roles(&mut s)?;
        save_service(&s)?;
        if running {
            let op = if s.state == State::NotRunning {
                Op::Start
            } else {
                Op::Redeploy
            };
            run_service(&mut s, op)?;
        }
        kept.push(s.uuid.clone());
    }
    for uuid in stack.services.clone() {
        if kept.contains(&uuid) || !prune {
            continue;
        }
        if let Some(mut s) = load_service(&uuid)?
            && Op::Terminate.allowed(s.state)
        {
            run_service(&mut s, Op::Terminate)?;
        }
    }
    Ok(())
}
