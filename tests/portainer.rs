//! The `stacks` plugin's Portainer API end to end: the seed's httpie
//! session (the portainer gist, 004) run verbatim by the real httpie
//! against the real berth, with only its host, tokens, addresses and ids
//! substituted, on a real Docker engine in swarm mode; then the rest of
//! the surface (users, teams, access rules, compose stacks, throttling,
//! an engine going away) the session does not touch.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use support::docker::{self, Engine};
use support::{Berth, client, poll};
use tokio::task::JoinHandle;

/// The gist's commands, character for character (its `$ ` prompts
/// dropped). Each is run by bash after `substitute`.
const SESSION: &[&str] = &[
    r#"http POST :9000/api/users/admin/init Username="admin" Password="adminpassword""#,
    r#"http POST :9000/api/auth Username="admin" Password="adminpassword""#,
    r#"http --form POST :9000/api/endpoints \
"Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpZCI6MSwidXNlcm5hbWUiOiJhZG1pbiIsInJvbGUiOjEsImV4cCI6MTQ5OTM3NjE1NH0.NJ6vE8FY1WG6jsRQzfMqeatJ4vh2TWAeeYfDhP71YEE" \
Name="test-local" EndpointType=1"#,
    r#"http --form POST :9000/api/endpoints \
"Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpZCI6MSwidXNlcm5hbWUiOiJhZG1pbiIsInJvbGUiOjEsImV4cCI6MTQ5OTM3NjE1NH0.NJ6vE8FY1WG6jsRQzfMqeatJ4vh2TWAeeYfDhP71YEE" \
Name="test-remote" URL="tcp://10.0.7.10:2375" EndpointType=1"#,
    r#"http --form POST :9000/api/endpoints \
"Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpZCI6MSwidXNlcm5hbWUiOiJhZG1pbiIsInJvbGUiOjEsImV4cCI6MTQ5OTM3NjE1NH0.NJ6vE8FY1WG6jsRQzfMqeatJ4vh2TWAeeYfDhP71YEE" \
Name="test-remote" URL="tcp://10.0.7.10:2376" EndpointType=1 TLS="true" TLSCACertFile@/path/to/ca.pem TLSCertFile@/path/to/cert.pem TLSKeyFile@/path/to/key.pem"#,
    r#"http GET :9000/api/endpoints/1/docker/containers/json \
"Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpZCI6MSwidXNlcm5hbWUiOiJhZG1pbiIsInJvbGUiOjEsImV4cCI6MTQ5OTM3NjE1NH0.NJ6vE8FY1WG6jsRQzfMqeatJ4vh2TWAeeYfDhP71YEE" \
all==true"#,
    r#"http POST :9000/api/endpoints/1/docker/containers/create \
"Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpZCI6MSwidXNlcm5hbWUiOiJhZG1pbiIsInJvbGUiOjEsImV4cCI6MTQ5OTM3NjE1NH0.NJ6vE8FY1WG6jsRQzfMqeatJ4vh2TWAeeYfDhP71YEE" \
name=="web01" Image="nginx:latest" \
ExposedPorts:='{ "80/tcp": {} }' \
HostConfig:='{ "PortBindings": { "80/tcp": [{ "HostPort": "8080" }] } }'"#,
    r#"http POST :9000/api/endpoints/1/docker/containers/5fc2a93d7a3d426a1c3937436697fc5e5343cc375226f6110283200bede3b107/start \
"Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpZCI6MSwidXNlcm5hbWUiOiJhZG1pbiIsInJvbGUiOjEsImV4cCI6MTQ5OTM3NjE1NH0.NJ6vE8FY1WG6jsRQzfMqeatJ4vh2TWAeeYfDhP71YEE""#,
    r#"http DELETE :9000/api/endpoints/1/docker/containers/5fc2a93d7a3d426a1c3937436697fc5e5343cc375226f6110283200bede3b107 \
"Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpZCI6MSwidXNlcm5hbWUiOiJhZG1pbiIsInJvbGUiOjEsImV4cCI6MTQ5OTM3NjE1NH0.NJ6vE8FY1WG6jsRQzfMqeatJ4vh2TWAeeYfDhP71YEE" \
force==true"#,
    r#"http GET :9000/api/endpoints/1/docker/swarm \
"Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpZCI6MSwidXNlcm5hbWUiOiJhZG1pbiIsInJvbGUiOjEsImV4cCI6MTQ5OTM3NjE1NH0.NJ6vE8FY1WG6jsRQzfMqeatJ4vh2TWAeeYfDhP71YEE""#,
    r#"http POST ':9000/api/stacks?method=repository&type=1&endpointId=1' \
"Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpZCI6MSwidXNlcm5hbWUiOiJhZG1pbiIsInJvbGUiOjEsImV4cCI6MTUyOTY3NDE1Mn0.wyyck_iktvOrYsuH0Xrvgifoi83emsszipSTYkDvuaE" \
Name="myTestStack" \
SwarmID="k427pd86wfkgp40ksrmbojrwq" \
RepositoryURL="https://github.com/portainer/templates" \
ComposeFilePathInRepository="stacks/cockroachdb/docker-stack.yml""#,
    r#"http DELETE :9000/api/stacks/1?endpointId=1 \
"Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpZCI6MSwidXNlcm5hbWUiOiJhZG1pbiIsInJvbGUiOjEsImV4cCI6MTQ5OTM3NjE1NH0.NJ6vE8FY1WG6jsRQzfMqeatJ4vh2TWAeeYfDhP71YEE""#,
];

/// The gist's JWTs, its swarm and container ids.
const SEED_TOKENS: [&str; 2] = [
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpZCI6MSwidXNlcm5hbWUiOiJhZG1pbiIsInJvbGUiOjEsImV4cCI6MTQ5OTM3NjE1NH0.NJ6vE8FY1WG6jsRQzfMqeatJ4vh2TWAeeYfDhP71YEE",
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpZCI6MSwidXNlcm5hbWUiOiJhZG1pbiIsInJvbGUiOjEsImV4cCI6MTUyOTY3NDE1Mn0.wyyck_iktvOrYsuH0Xrvgifoi83emsszipSTYkDvuaE",
];
const SEED_SWARM: &str = "k427pd86wfkgp40ksrmbojrwq";
const SEED_CONTAINER: &str = "5fc2a93d7a3d426a1c3937436697fc5e5343cc375226f6110283200bede3b107";

/// A swarm stack for the session's `method=string` step, which stands in
/// for the gist's repository stack (no Git host is reachable here).
const SWARM_STACK: &str = "\
version: \"3\"
services:
  web:
    image: nginx:latest
    deploy:
      replicas: 2
  db:
    image: busybox:latest
    command: sleep 100000
";

/// A compose (type 2) stack; `${PORT}` comes from its Env.
const COMPOSE_STACK: &str = "\
version: \"2\"
services:
  web:
    image: busybox:latest
    command: httpd -f -p ${PORT}
    links:
      - cache
  cache:
    image: busybox:latest
    command: sleep 100000
";

/// What the session's values become here.
struct Subs {
    port: u16,
    token: String,
    remote: String,
    remote_tls: String,
    tls: [PathBuf; 3],
    host_port: u16,
    container: String,
    swarm: String,
}

fn substitute(command: &str, s: &Subs) -> String {
    let mut out = command.replace(":9000", &format!(":{}", s.port));
    for seed in SEED_TOKENS {
        out = out.replace(seed, &s.token);
    }
    for (seed, file) in ["/path/to/ca.pem", "/path/to/cert.pem", "/path/to/key.pem"]
        .iter()
        .zip(&s.tls)
    {
        out = out.replace(seed, &file.display().to_string());
    }
    out.replace("tcp://10.0.7.10:2375", &s.remote)
        .replace("tcp://10.0.7.10:2376", &s.remote_tls)
        .replace(
            r#""HostPort": "8080""#,
            &format!(r#""HostPort": "{}""#, s.host_port),
        )
        .replace(SEED_CONTAINER, &s.container)
        .replace(SEED_SWARM, &s.swarm)
}

/// The real httpie from the test venv, run by bash. Its config makes it
/// print the status line and headers and leave stdin alone (stdin is not a
/// terminal here), the two things a person at a shell gets for free.
struct Httpie {
    path: String,
    config: tempfile::TempDir,
}

impl Httpie {
    fn new(python: &Path) -> Httpie {
        let config = tempfile::tempdir().unwrap();
        std::fs::write(
            config.path().join("config.json"),
            r#"{"default_options": ["--ignore-stdin", "--print=hb", "--timeout=120"]}"#,
        )
        .unwrap();
        let bin = python.parent().unwrap().display().to_string();
        let path = format!("{bin}:{}", std::env::var("PATH").unwrap_or_default());
        Httpie { path, config }
    }

    /// Run one shell command line; (status, JSON body or Null).
    async fn run(&self, line: &str) -> (u16, Value) {
        let out = tokio::process::Command::new("bash")
            .arg("-c")
            .arg(line)
            .env("PATH", &self.path)
            .env("HTTPIE_CONFIG_DIR", self.config.path())
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
        let status = stdout
            .lines()
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "httpie gave no status for {line}: {stdout}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        let body = stdout
            .split_once("\n\n")
            .map(|(_, b)| b.trim())
            .unwrap_or_default();
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }
}

/// A plain TCP door to the engine's unix socket (the gist's tcp://
/// endpoint). Aborting the handle closes it and every open connection.
async fn forwarder(engine: &Engine) -> (String, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("tcp://{}", listener.local_addr().unwrap());
    let socket = engine.host.trim_start_matches("unix://").to_string();
    let task = tokio::spawn(async move {
        let mut open = tokio::task::JoinSet::new();
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let socket = socket.clone();
            open.spawn(async move {
                if let Ok(mut unix) = tokio::net::UnixStream::connect(&socket).await {
                    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
                }
            });
        }
    });
    (address, task)
}

fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// JSON calls with reqwest, for the routes the gist does not show.
struct Api {
    berth: Berth,
    http: reqwest::Client,
}

impl Api {
    /// A Berth on `engine` (its `local` endpoint; TCP endpoints on this
    /// machine allowed), its data in `dir`.
    fn start(dir: &Path, engine: &Engine) -> Api {
        Api::start_with(dir, engine, "")
    }

    /// Like `start`, with `more` at the end of the configuration.
    fn start_with(dir: &Path, engine: &Engine, more: &str) -> Api {
        let config = format!(
            "[docker]\nlocal = \"{}\"\nallow = [\"tcp://127.0.0.1:*\"]\n\n\
             [plugins.stacks.settings]\nstop_timeout_secs = 1\n{more}",
            engine.host
        );
        Api {
            berth: Berth::start(dir, &config),
            http: client(),
        }
    }

    /// An administrator's token, the instance initialised.
    async fn admin(&self) -> String {
        let admin = json!({ "username": "admin", "password": "adminpassword" });
        let (status, _) = self
            .call(None, "POST", "/api/users/admin/init", Some(admin))
            .await;
        assert_eq!(status, 200);
        self.login("admin", "adminpassword").await.1["jwt"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// A user who is not an administrator, signed in.
    async fn user(&self, admin: &str, name: &str) -> (u64, String) {
        let (status, user) = self
            .call(
                Some(admin),
                "POST",
                "/api/users",
                Some(json!({ "username": name, "password": "userpassword", "role": 2 })),
            )
            .await;
        assert_eq!(status, 200, "{user}");
        let token = self.login(name, "userpassword").await.1["jwt"]
            .as_str()
            .unwrap()
            .to_string();
        (user["Id"].as_u64().unwrap(), token)
    }

    async fn call(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        support::call_bearer(&self.http, method, &self.berth.url(path), token, body).await
    }

    async fn login(&self, user: &str, password: &str) -> (u16, Value) {
        self.call(
            None,
            "POST",
            "/api/auth",
            Some(json!({ "Username": user, "Password": password })),
        )
        .await
    }
}

/// A client session script under `tests/`.
/// Names of the engine's Swarm services in a stack.
fn swarm_services(engine: &Engine, stack: &str) -> Vec<String> {
    let (_, body) = engine.get("/services").unwrap();
    let list: Value = serde_json::from_str(&body).unwrap();
    let mut names: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["Spec"]["Labels"]["com.docker.stack.namespace"] == stack)
        .map(|s| s["Spec"]["Name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gist_session_and_the_rest_of_portainer() {
    let Some(engine) = docker::shared() else {
        return;
    };
    let Some(python) = support::python() else {
        return;
    };
    let tls = engine.tls.as_ref().expect("the private engine serves TLS");
    engine
        .import_busybox("nginx:latest", r#"CMD ["httpd", "-f", "-p", "80"]"#)
        .unwrap();
    engine.swarm_init();
    let swarm_id = serde_json::from_str::<Value>(&engine.get("/swarm").unwrap().1).unwrap()["ID"]
        .as_str()
        .unwrap()
        .to_string();

    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[docker]\nlocal = \"{}\"\nallow = [\"tcp://127.0.0.1:*\"]\n\n\
         [plugins.stacks.settings]\nstop_timeout_secs = 1\n",
        engine.host
    );
    let mut api = Api {
        berth: Berth::start(dir.path(), &config),
        http: client(),
    };
    let mut port: u16 = api.berth.url.rsplit(':').next().unwrap().parse().unwrap();
    let (remote, door) = forwarder(engine).await;
    let httpie = Httpie::new(&python);
    let mut subs = Subs {
        port,
        token: String::new(),
        remote: remote.clone(),
        remote_tls: tls.address.clone(),
        tls: [tls.ca.clone(), tls.cert.clone(), tls.key.clone()],
        host_port: docker::free_port(),
        container: String::new(),
        swarm: swarm_id.clone(),
    };

    // No administrator yet.
    let (status, _) = api.call(None, "GET", "/api/users/admin/check", None).await;
    assert_eq!(status, 404);

    // --- the gist, step by step -------------------------------------------
    let mut steps = SESSION.iter();
    let mut step = async |subs: &Subs| {
        let line = substitute(steps.next().unwrap(), subs);
        let answer = httpie.run(&line).await;
        (line, answer)
    };

    let (line, (status, admin)) = step(&subs).await;
    assert_eq!(status, 200, "{line}: {admin}");
    assert_eq!(admin["Username"], "admin");
    assert_eq!(admin["Role"], 1);
    let text = admin.to_string().to_lowercase();
    assert!(
        !text.contains("password") && !text.contains("hash") && !text.contains("argon"),
        "{admin}"
    );

    let (line, (status, auth)) = step(&subs).await;
    assert_eq!(status, 200, "{line}: {auth}");
    subs.token = auth["jwt"].as_str().unwrap().to_string();
    let c = claims(&subs.token);
    assert_eq!(
        (c["id"].clone(), c["username"].clone(), c["role"].clone()),
        (json!(1), json!("admin"), json!(1))
    );
    let ttl = c["exp"].as_u64().unwrap() - now();
    assert!((28_700..=28_800).contains(&ttl), "8 h expiry, got {ttl} s");

    let (line, (status, local)) = step(&subs).await;
    assert_eq!(status, 200, "{line}: {local}");
    assert_eq!(local["Id"], 1);
    assert_eq!(local["Name"], "test-local");
    assert_eq!(local["Type"], 1);
    assert_eq!(local["URL"], "unix:///var/run/docker.sock");
    assert_eq!(
        local["TLSConfig"],
        json!({ "TLS": false, "TLSSkipVerify": false })
    );
    for key in [
        "AuthorizedTeams",
        "AuthorizedUsers",
        "Extensions",
        "GroupId",
        "PublicURL",
    ] {
        assert!(local.get(key).is_some(), "{key} missing: {local}");
    }

    let (line, (status, plain)) = step(&subs).await;
    assert_eq!(status, 200, "{line}: {plain}");
    assert_eq!(plain["Id"], 2);
    assert_eq!(plain["URL"], remote.as_str());

    let (line, (status, secure)) = step(&subs).await;
    assert_eq!(status, 200, "{line}: {secure}");
    assert_eq!(secure["Id"], 3);
    assert_eq!(secure["Name"], "test-remote");
    assert_eq!(secure["TLSConfig"]["TLS"], true);
    assert_eq!(secure["TLSConfig"]["TLSCACert"], "/data/tls/3/ca.pem");

    let (line, (status, listed)) = step(&subs).await;
    assert_eq!(status, 200, "{line}: {listed}");
    assert!(listed.is_array(), "ContainerList's own answer: {listed}");

    let (line, (status, created)) = step(&subs).await;
    assert_eq!(status, 201, "{line}: {created}");
    subs.container = created["Id"].as_str().unwrap().to_string();
    assert!(created.get("Warnings").is_some(), "{created}");

    let (line, (status, _)) = step(&subs).await;
    assert_eq!(status, 204, "{line}");
    let web01 = engine.inspect("web01").expect("web01 exists");
    assert_eq!(web01["Id"], subs.container.as_str());
    assert_eq!(web01["State"]["Running"], true, "{web01}");
    assert_eq!(
        web01["HostConfig"]["PortBindings"]["80/tcp"][0]["HostPort"],
        subs.host_port.to_string()
    );

    let (line, (status, _)) = step(&subs).await;
    assert_eq!(status, 204, "{line}");
    assert!(engine.inspect("web01").is_none(), "web01 removed");

    let (line, (status, swarm)) = step(&subs).await;
    assert_eq!(status, 200, "{line}: {swarm}");
    assert_eq!(swarm["ID"], swarm_id.as_str());

    // The repository method: a clear 501, since no Git host is reachable.
    let (line, (status, refused)) = step(&subs).await;
    assert_eq!(status, 501, "{line}: {refused}");
    assert!(
        refused["err"].as_str().unwrap().contains("Repository"),
        "{refused}"
    );
    assert!(refused["message"].is_string(), "{refused}");
    // The same stack from a string instead (the gist's stack is Id 1).
    let (status, stack) = api
        .call(
            Some(&subs.token),
            "POST",
            "/api/stacks?method=string&type=1&endpointId=1",
            Some(json!({ "Name": "myTestStack", "SwarmID": swarm_id, "StackFileContent": SWARM_STACK })),
        )
        .await;
    assert_eq!(status, 200, "{stack}");
    assert_eq!(stack["Id"], 1);
    assert_eq!(
        (stack["Type"].clone(), stack["EndpointId"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(stack["SwarmId"], swarm_id.as_str());
    assert_eq!(
        swarm_services(engine, "myTestStack"),
        ["myTestStack_db", "myTestStack_web"]
    );
    poll(Duration::from_secs(60), "myTestStack_web 2/2", || async {
        (engine.replicas("myTestStack_web") == Some((2, 2))).then_some(())
    })
    .await;
    let (_, network) = engine.get("/networks/myTestStack_default").unwrap();
    assert!(network.contains("\"overlay\""), "{network}");
    // The same name again, in any case: 409.
    let (status, dup) = api
        .call(
            Some(&subs.token),
            "POST",
            "/api/stacks?method=string&type=1&endpointId=1",
            Some(json!({ "Name": "MYTESTSTACK", "SwarmID": swarm_id, "StackFileContent": SWARM_STACK })),
        )
        .await;
    assert_eq!(status, 409, "{dup}");

    let (line, (status, _)) = step(&subs).await;
    assert_eq!(status, 204, "{line}");
    assert!(swarm_services(engine, "myTestStack").is_empty());
    assert!(steps.next().is_none(), "every step of the gist ran");

    // --- beyond the gist --------------------------------------------------
    let admin_token = subs.token.clone();
    let t = Some(admin_token.as_str());
    let (status, _) = api.call(None, "GET", "/api/users/admin/check", None).await;
    assert_eq!(status, 204);
    let (status, again) = api
        .call(
            None,
            "POST",
            "/api/users/admin/init",
            Some(json!({ "Username": "eve", "Password": "x" })),
        )
        .await;
    assert_eq!(status, 409, "{again}");
    let (status, bad) = api.login("admin", "wrong").await;
    assert_eq!(status, 422, "{bad}");

    // Both remote endpoints reach the same engine through the proxy.
    for id in [2, 3] {
        let (status, info) = api
            .call(t, "GET", &format!("/api/endpoints/{id}/docker/info"), None)
            .await;
        assert_eq!(status, 200, "endpoint {id}: {info}");
        assert_eq!(info["Swarm"]["Cluster"]["ID"], swarm_id.as_str());
    }
    // `?token=` works in place of the header.
    let r = api
        .http
        .get(api.berth.url(&format!(
            "/api/endpoints/1/docker/version?token={admin_token}"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Missing or forged tokens: 401 on every route family.
    let forged = {
        let mut parts: Vec<&str> = admin_token.split('.').collect();
        let tampered = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"id":1,"username":"admin","role":1,"exp":99999999999}"#);
        parts[1] = &tampered;
        parts.join(".")
    };
    for path in [
        "/api/endpoints",
        "/api/endpoints/1",
        "/api/endpoints/1/docker/info",
        "/api/stacks",
        "/api/users",
        "/api/teams",
        "/api/team_memberships",
    ] {
        for token in [None, Some(forged.as_str()), Some("garbage")] {
            let (status, body) = api.call(token, "GET", path, None).await;
            assert_eq!(status, 401, "{path} {token:?}: {body}");
            assert!(
                body["err"].is_string() && body["details"].is_string(),
                "{body}"
            );
        }
    }

    // Users: a non-admin, refused on admin routes, and only sees what
    // it is given.
    let (status, bob) = api
        .call(
            t,
            "POST",
            "/api/users",
            Some(json!({ "Username": "bob", "Password": "bobpassword", "Role": 2 })),
        )
        .await;
    assert_eq!(status, 200, "{bob}");
    let bob_id = bob["Id"].as_u64().unwrap();
    let (status, _) = api
        .call(
            t,
            "POST",
            "/api/users",
            Some(json!({ "Username": "Bob", "Password": "x", "Role": 2 })),
        )
        .await;
    assert_eq!(status, 409);
    let (_, users) = api.call(t, "GET", "/api/users", None).await;
    assert_eq!(users.as_array().unwrap().len(), 2, "{users}");
    assert!(!users.to_string().contains("argon"), "{users}");
    let (status, login) = api.login("bob", "bobpassword").await;
    assert_eq!(status, 200, "{login}");
    let bob_token = login["jwt"].as_str().unwrap().to_string();
    let b = Some(bob_token.as_str());
    // Users see the users who are not administrators (1.x's FilterUsers).
    let (status, seen) = api.call(b, "GET", "/api/users", None).await;
    assert_eq!(status, 200, "{seen}");
    let names: Vec<&str> = seen
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["Username"].as_str())
        .collect();
    assert_eq!(names, ["bob"], "{seen}");
    for (method, path, body) in [
        (
            "POST",
            "/api/users",
            Some(json!({ "Username": "mallory", "Password": "x" })),
        ),
        ("DELETE", "/api/users/1", None),
        ("POST", "/api/teams", Some(json!({ "Name": "ops" }))),
        ("GET", "/api/team_memberships", None),
        ("POST", "/api/endpoints", Some(json!({ "Name": "x" }))),
        ("PUT", "/api/endpoints/1", Some(json!({ "Name": "x" }))),
        ("DELETE", "/api/endpoints/1", None),
        ("GET", "/api/endpoints/1", None),
        ("GET", "/api/endpoints/1/docker/info", None),
        (
            "POST",
            "/api/stacks?method=string&type=2&endpointId=1",
            Some(json!({ "Name": "bobs", "StackFileContent": COMPOSE_STACK })),
        ),
    ] {
        let (status, body) = api.call(b, method, path, body).await;
        assert_eq!(status, 403, "bob {method} {path}: {body}");
    }
    let (_, seen) = api.call(b, "GET", "/api/endpoints", None).await;
    assert_eq!(seen, json!([]));
    // Given endpoint 1, bob may use its engine.
    let (status, _) = api
        .call(
            t,
            "PUT",
            "/api/endpoints/1",
            Some(json!({ "AuthorizedUsers": [bob_id] })),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = api
        .call(b, "GET", "/api/endpoints/1/docker/info", None)
        .await;
    assert_eq!(status, 200);
    let (_, seen) = api.call(b, "GET", "/api/endpoints", None).await;
    assert_eq!(seen.as_array().unwrap().len(), 1, "{seen}");

    // Inspect: the TLS endpoint as created, files shown by path only.
    let (status, inspected) = api.call(t, "GET", "/api/endpoints/3", None).await;
    assert_eq!(status, 200, "{inspected}");
    assert_eq!(inspected["TLSConfig"]["TLSKey"], "/data/tls/3/key.pem");
    assert!(
        !inspected.to_string().contains("PRIVATE KEY"),
        "{inspected}"
    );
    // A user may change its own password but not its role; an admin may.
    let bob_path = format!("/api/users/{bob_id}");
    let (status, _) = api
        .call(b, "PUT", &bob_path, Some(json!({ "Role": 1 })))
        .await;
    assert_eq!(status, 403);
    let (status, _) = api
        .call(
            b,
            "PUT",
            &bob_path,
            Some(json!({ "Password": "bobpassword2" })),
        )
        .await;
    assert_eq!(status, 200);
    // The change ends bob's earlier JWT; he signs in again.
    let (status, _) = api.call(b, "GET", "/api/users/1", None).await;
    assert_eq!(status, 401, "a JWT from before the password change");
    let (status, login) = api.login("bob", "bobpassword2").await;
    assert_eq!(status, 200);
    let bob_token = login["jwt"].as_str().unwrap().to_string();
    let b = Some(bob_token.as_str());
    let (status, _) = api.call(b, "GET", "/api/users/1", None).await;
    assert_eq!(status, 403);
    let (status, carol) = api
        .call(
            t,
            "POST",
            "/api/users",
            Some(json!({ "Username": "carol", "Password": "carolpassword", "Role": 2 })),
        )
        .await;
    assert_eq!((status, carol["Role"].clone()), (200, json!(2)));
    let carol_path = format!("/api/users/{}", carol["Id"]);
    let (status, promoted) = api
        .call(t, "PUT", &carol_path, Some(json!({ "Role": 1 })))
        .await;
    assert_eq!((status, promoted["Role"].clone()), (200, json!(1)));
    let (status, _) = api.call(t, "DELETE", &carol_path, None).await;
    assert_eq!(status, 204);
    let (status, _) = api.call(t, "GET", &carol_path, None).await;
    assert_eq!(status, 404);
    let (status, _) = api.call(t, "DELETE", "/api/users/1", None).await;
    assert_eq!(status, 403, "an admin cannot remove itself");

    // Teams and memberships.
    let (status, team) = api
        .call(t, "POST", "/api/teams", Some(json!({ "Name": "ops" })))
        .await;
    assert_eq!(status, 200, "{team}");
    let team_id = team["Id"].as_u64().unwrap();
    let (status, _) = api
        .call(t, "POST", "/api/teams", Some(json!({ "Name": "ops" })))
        .await;
    assert_eq!(status, 409);
    let (status, renamed) = api
        .call(
            t,
            "PUT",
            &format!("/api/teams/{team_id}"),
            Some(json!({ "Name": "operations" })),
        )
        .await;
    assert_eq!(
        (status, renamed["Name"].clone()),
        (200, json!("operations"))
    );
    let (status, membership) = api
        .call(
            t,
            "POST",
            "/api/team_memberships",
            Some(json!({ "UserID": bob_id, "TeamID": team_id, "Role": 2 })),
        )
        .await;
    assert_eq!(status, 200, "{membership}");
    let (_, memberships) = api.call(t, "GET", "/api/team_memberships", None).await;
    assert_eq!(memberships.as_array().unwrap().len(), 1);
    let (status, _) = api
        .call(
            t,
            "DELETE",
            &format!("/api/team_memberships/{}", membership["Id"]),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = api
        .call(t, "DELETE", &format!("/api/teams/{team_id}"), None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = api
        .call(t, "GET", &format!("/api/teams/{team_id}"), None)
        .await;
    assert_eq!(status, 404);

    // A compose (type 2) stack from an uploaded file, by bob, with Env.
    let compose_file = dir.path().join("docker-compose.yml");
    std::fs::write(&compose_file, COMPOSE_STACK).unwrap();
    let (status, stack) = httpie
        .run(&format!(
            r#"http --form POST ':{port}/api/stacks?method=file&type=2&endpointId=1' "Authorization: Bearer {bob_token}" Name="shop" Env='[{{"name": "PORT", "value": "8081"}}]' file@{}"#,
            compose_file.display()
        ))
        .await;
    assert_eq!(status, 200, "{stack}");
    assert_eq!(stack["Type"], 2);
    let shop = stack["Id"].as_u64().unwrap();
    let web = engine.inspect("shop_web-1").expect("shop_web-1");
    assert_eq!(web["State"]["Running"], true);
    assert_eq!(web["Config"]["Cmd"], json!(["httpd", "-f", "-p", "8081"]));
    assert_eq!(
        web["Config"]["Labels"]["com.docker.stack.namespace"],
        "shop"
    );
    assert_eq!(
        engine.inspect("shop_cache-1").unwrap()["State"]["Running"],
        true
    );
    let out = engine.cli(&["exec", "shop_web-1", "busybox", "nslookup", "cache"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Address"),
        "the link resolves: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Bad stack file: 400 with the parser's line.
    let (status, bad) = api
        .call(
            t,
            "POST",
            "/api/stacks?method=string&type=2&endpointId=1",
            Some(json!({ "Name": "broken", "StackFileContent": "services:\n  web:\n    image: busybox\n    bogus: 1\n" })),
        )
        .await;
    assert_eq!(status, 400, "{bad}");
    assert!(bad["details"].as_str().unwrap().contains("line 4"), "{bad}");
    for (query, want) in [
        ("method=string&type=3&endpointId=1", 400),
        ("method=string&type=2&endpointId=99", 404),
        ("method=carrier-pigeon&type=2&endpointId=1", 400),
    ] {
        let (status, body) = api
            .call(
                t,
                "POST",
                &format!("/api/stacks?{query}"),
                Some(json!({ "Name": "x", "StackFileContent": COMPOSE_STACK })),
            )
            .await;
        assert_eq!(status, want, "{query}: {body}");
    }
    // List, inspect, file, update.
    let (_, stacks) = api.call(b, "GET", "/api/stacks", None).await;
    assert_eq!(stacks.as_array().unwrap().len(), 1, "{stacks}");
    let (status, file) = api
        .call(b, "GET", &format!("/api/stacks/{shop}/file"), None)
        .await;
    assert_eq!(
        (status, file["StackFileContent"].as_str()),
        (200, Some(COMPOSE_STACK))
    );
    let (status, updated) = api
        .call(
            b,
            "PUT",
            &format!("/api/stacks/{shop}?endpointId=1"),
            Some(json!({
                "StackFileContent": COMPOSE_STACK,
                "Env": [{ "name": "PORT", "value": "8082" }],
            })),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["Env"], json!([{ "name": "PORT", "value": "8082" }]));
    let web = engine.inspect("shop_web-1").expect("shop_web-1");
    assert_eq!(web["Config"]["Cmd"], json!(["httpd", "-f", "-p", "8082"]));
    assert_eq!(web["State"]["Running"], true);

    // A restart of berth: users, tokens, endpoints and stacks stay, and
    // the engine's events are followed again without any request asking:
    // a container stopped behind Berth's back shows in the service state.
    assert!(api.berth.stop(), "berth exits cleanly");
    api.berth = Berth::start(dir.path(), &config);
    port = api.berth.url.rsplit(':').next().unwrap().parse().unwrap();
    let key = String::from_utf8_lossy(
        &api.berth
            .cli(&["run", "stacks", "apikey:create", "ops"])
            .stdout,
    )
    .lines()
    .find_map(|l| l.strip_prefix("Authorization: ").map(str::to_string))
    .expect("an API key");
    let cache_state = async || {
        let r = api
            .http
            .get(api.berth.url("/api/app/v1/service/?name=cache"))
            .header("authorization", &key)
            .send()
            .await
            .unwrap();
        let list: Value = r.json().await.unwrap();
        assert_eq!(list["meta"]["total_count"], 1, "{list}");
        list["objects"][0]["state"].as_str().unwrap().to_string()
    };
    assert_eq!(cache_state().await, "Running");
    // Stopped at once: the restored follower asks for the events since it
    // started, however late its connection comes.
    let out = engine.cli(&["stop", "-t", "1", "shop_cache-1"]);
    assert!(out.status.success(), "{out:?}");
    poll(Duration::from_secs(20), "cache Partly running", || async {
        (cache_state().await == "Partly running").then_some(())
    })
    .await;
    let (status, _) = api
        .call(b, "GET", &format!("/api/stacks/{shop}"), None)
        .await;
    assert_eq!(status, 200, "bob's token and the stack outlive the restart");

    let (status, _) = api
        .call(
            b,
            "DELETE",
            &format!("/api/stacks/{shop}?endpointId=1"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert!(engine.inspect("shop_web-1").is_none());
    let (status, _) = api
        .call(b, "GET", &format!("/api/stacks/{shop}"), None)
        .await;
    assert_eq!(status, 404);

    // The engine behind endpoint 2 goes away: 503 from the proxy, and
    // everything else keeps working.
    door.abort();
    let _ = door.await;
    let (status, body) = api
        .call(t, "GET", "/api/endpoints/2/docker/info", None)
        .await;
    assert_eq!(status, 503, "{body}");
    let (status, _) = api
        .call(t, "GET", "/api/endpoints/1/docker/info", None)
        .await;
    assert_eq!(status, 200);
    // An endpoint nobody answers on is refused at creation, nothing stored.
    let (status, body) = httpie
        .run(&format!(
            r#"http --form POST :{port}/api/endpoints "Authorization: Bearer {admin_token}" Name="gone" URL="{remote}" EndpointType=1"#
        ))
        .await;
    assert_eq!(status, 500, "{body}");
    let (_, endpoints) = api.call(t, "GET", "/api/endpoints", None).await;
    assert_eq!(endpoints.as_array().unwrap().len(), 3, "{endpoints}");
    // Outside the operator's allow-list: refused.
    let (status, body) = httpie
        .run(&format!(
            r#"http --form POST :{port}/api/endpoints "Authorization: Bearer {admin_token}" Name="far" URL="tcp://10.0.7.10:2375" EndpointType=1"#
        ))
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = api.call(t, "DELETE", "/api/endpoints/2", None).await;
    assert_eq!(status, 204);
    let (status, _) = api
        .call(t, "GET", "/api/endpoints/2/docker/info", None)
        .await;
    assert_eq!(status, 404);

    // Brute force: after the minute's allowance of failures, even the
    // right password waits.
    let mut throttled = false;
    for _ in 0..12 {
        let (status, _) = api.login("admin", "guess").await;
        if status == 429 {
            throttled = true;
            break;
        }
        assert_eq!(status, 422);
    }
    assert!(throttled, "failed logins are throttled");
    let (status, body) = api.login("admin", "adminpassword").await;
    assert_eq!(status, 429, "{body}");
    // Bob's tokens are his own: still good.
    let (status, _) = api.call(b, "GET", "/api/stacks", None).await;
    assert_eq!(status, 200);
}

/// Portainer's handlers read bodies with Go's `encoding/json`: keys in any
/// case, unknown keys ignored. Each route family once with lower-case or
/// mixed-case keys, 1.x's validation messages, the 1.x routes clients ask
/// for first, and `/api` paths no route takes answering in Portainer's
/// format while `/api/v1` stays CIKit's.
#[tokio::test(flavor = "multi_thread")]
async fn go_json_rules_the_1x_routes_and_the_api_fallbacks() {
    let Some(engine) = docker::shared() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(dir.path(), engine);
    let invalid = |answer: &(u16, Value), details: &str| {
        let (status, body) = answer;
        assert_eq!(*status, 400, "{body}");
        assert_eq!(body["err"], "Invalid request payload", "{body}");
        assert!(
            body["details"].as_str().unwrap().contains(details),
            "{details}: {body}"
        );
    };

    // Status first, as clients ask for it: no token needed.
    let (status, about) = api.call(None, "GET", "/api/status", None).await;
    assert_eq!(status, 200, "{about}");
    assert!(
        about["Version"].as_str().unwrap().starts_with("1."),
        "{about}"
    );
    assert_eq!(about["Authentication"], true);

    // Admin init and auth with lower-case keys; 1.x's messages for what
    // is missing, wrongly typed or empty.
    invalid(
        &api.call(
            None,
            "POST",
            "/api/users/admin/init",
            Some(json!({ "username": "admin" })),
        )
        .await,
        "Invalid password",
    );
    invalid(
        &api.call(None, "POST", "/api/auth", Some(json!({ "password": "x" })))
            .await,
        "Invalid username",
    );
    invalid(
        &api.call(
            None,
            "POST",
            "/api/auth",
            Some(json!({ "username": 7, "password": "x" })),
        )
        .await,
        "invalid type",
    );
    invalid(&api.call(None, "POST", "/api/auth", None).await, "EOF");
    let (status, admin) = api
        .call(
            None,
            "POST",
            "/api/users/admin/init",
            Some(json!({ "username": "admin", "PASSWORD": "adminpassword", "extra": [1] })),
        )
        .await;
    assert_eq!(
        (status, admin["Username"].clone()),
        (200, json!("admin")),
        "{admin}"
    );
    let (status, auth) = api
        .call(
            None,
            "POST",
            "/api/auth",
            Some(json!({ "username": "admin", "password": "adminpassword" })),
        )
        .await;
    assert_eq!(status, 200, "{auth}");
    let admin_token = auth["jwt"].as_str().unwrap().to_string();
    let t = Some(admin_token.as_str());

    // Users: 1.x's Validate (Username without whitespace, Role 1 or 2;
    // the password may be empty, for users who sign in elsewhere).
    invalid(
        &api.call(
            t,
            "POST",
            "/api/users",
            Some(json!({ "username": "two words", "role": 2 })),
        )
        .await,
        "Invalid username. Must not contain any whitespace",
    );
    invalid(
        &api.call(
            t,
            "POST",
            "/api/users",
            Some(json!({ "username": "nobody" })),
        )
        .await,
        "Invalid role value",
    );
    let (status, ldap) = api
        .call(
            t,
            "POST",
            "/api/users",
            Some(json!({ "Username": "ldap-user", "Role": 2 })),
        )
        .await;
    assert_eq!(status, 200, "a user without a password: {ldap}");
    assert_eq!(
        api.login("ldap-user", "").await.0,
        400,
        "an empty password never signs in"
    );
    let (status, dave) = api
        .call(
            t,
            "POST",
            "/api/users",
            Some(json!({ "userName": "dave", "passWord": "davepassword", "ROLE": 2 })),
        )
        .await;
    assert_eq!((status, dave["Role"].clone()), (200, json!(2)), "{dave}");
    let dave_id = dave["Id"].as_u64().unwrap();
    let (status, again) = api
        .call(
            t,
            "POST",
            "/api/users",
            Some(json!({ "username": "DAVE", "role": 2 })),
        )
        .await;
    assert_eq!(status, 409, "{again}");
    assert_eq!(
        again["err"],
        "Another user with the same username already exists"
    );
    let (_, login) = api.login("dave", "davepassword").await;
    let dave_token = login["jwt"].as_str().unwrap().to_string();
    let d = Some(dave_token.as_str());
    let dave_path = format!("/api/users/{dave_id}");
    invalid(
        &api.call(t, "PUT", &dave_path, Some(json!({ "role": 3 })))
            .await,
        "Invalid role value",
    );
    let (status, body) = api
        .call(d, "PUT", &dave_path, Some(json!({ "role": 1 })))
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = api
        .call(
            d,
            "PUT",
            &dave_path,
            Some(json!({ "password": "davepassword2" })),
        )
        .await;
    assert_eq!(status, 200);
    // The change ended dave's JWT: he signs in again.
    let (_, login) = api.login("dave", "davepassword2").await;
    let dave_token = login["jwt"].as_str().unwrap().to_string();
    let d = Some(dave_token.as_str());
    // The password check the UI makes before a change.
    let passwd = format!("{dave_path}/passwd");
    for (password, valid) in [("davepassword2", true), ("davepassword", false)] {
        let (status, check) = api
            .call(d, "POST", &passwd, Some(json!({ "password": password })))
            .await;
        assert_eq!((status, check), (200, json!({ "valid": valid })));
    }
    invalid(
        &api.call(d, "POST", &passwd, Some(json!({}))).await,
        "Invalid password",
    );
    let (status, _) = api
        .call(
            d,
            "POST",
            "/api/users/1/passwd",
            Some(json!({ "password": "x" })),
        )
        .await;
    assert_eq!(status, 403, "only your own password, or as an admin");

    // Teams and memberships, mixed case; 1.x's rules.
    invalid(
        &api.call(t, "POST", "/api/teams", Some(json!({ "name": "" })))
            .await,
        "Invalid team name",
    );
    let (status, team) = api
        .call(t, "POST", "/api/teams", Some(json!({ "name": "ops" })))
        .await;
    assert_eq!(
        (status, team["Name"].clone()),
        (200, json!("ops")),
        "{team}"
    );
    let team_id = team["Id"].as_u64().unwrap();
    let (status, _) = api
        .call(t, "POST", "/api/teams", Some(json!({ "NAME": "ops" })))
        .await;
    assert_eq!(status, 409);
    invalid(
        &api.call(
            t,
            "POST",
            "/api/team_memberships",
            Some(json!({ "userid": dave_id, "teamid": team_id })),
        )
        .await,
        "Invalid role value. Value must be one of: 1 (leader) or 2 (member)",
    );
    invalid(
        &api.call(
            t,
            "POST",
            "/api/team_memberships",
            Some(json!({ "teamid": team_id, "role": 2 })),
        )
        .await,
        "Invalid UserID",
    );
    let (status, membership) = api
        .call(
            t,
            "POST",
            "/api/team_memberships",
            Some(json!({ "userId": dave_id, "teamId": team_id, "role": 2 })),
        )
        .await;
    assert_eq!(status, 200, "{membership}");
    assert_eq!(
        (membership["UserID"].clone(), membership["TeamID"].clone()),
        (json!(dave_id), json!(team_id))
    );
    let (status, twice) = api
        .call(
            t,
            "POST",
            "/api/team_memberships",
            Some(json!({ "UserID": dave_id, "TeamID": team_id, "Role": 1 })),
        )
        .await;
    assert_eq!(
        (status, twice["err"].clone()),
        (409, json!("Team membership already registered"))
    );
    let (status, mine) = api
        .call(d, "GET", &format!("{dave_path}/memberships"), None)
        .await;
    assert_eq!(status, 200, "{mine}");
    assert_eq!(mine.as_array().unwrap().len(), 1, "{mine}");
    let (_, teams) = api.call(d, "GET", "/api/teams", None).await;
    assert_eq!(
        teams,
        json!([{ "Id": team_id, "Name": "ops" }]),
        "a member sees its teams"
    );
    let team_memberships = format!("/api/teams/{team_id}/memberships");
    let (status, _) = api.call(d, "GET", &team_memberships, None).await;
    assert_eq!(status, 403, "a member does not manage the team");
    // Made leader, dave manages the team.
    let (status, _) = api
        .call(
            t,
            "PUT",
            &format!("/api/team_memberships/{}", membership["Id"]),
            Some(json!({ "userid": dave_id, "teamid": team_id, "role": 1 })),
        )
        .await;
    assert_eq!(status, 200);
    let (status, list) = api.call(d, "GET", &team_memberships, None).await;
    assert_eq!(
        (status, list.as_array().map(Vec::len)),
        (200, Some(1)),
        "{list}"
    );
    // A leader manages the team's memberships, as in 1.x: creates users
    // (not administrators), puts them in the team, takes them out, but
    // changes no role and touches no other team.
    let denied = |(status, body): (u16, Value), err: &str| {
        assert_eq!((status, body["err"].as_str()), (403, Some(err)), "{body}");
    };
    denied(
        api.call(
            d,
            "POST",
            "/api/users",
            Some(json!({ "username": "erin", "password": "erinpassword", "role": 1 })),
        )
        .await,
        "Permission denied to create administrator user",
    );
    let (status, erin) = api
        .call(
            d,
            "POST",
            "/api/users",
            Some(json!({ "username": "erin", "password": "erinpassword", "role": 2 })),
        )
        .await;
    assert_eq!(status, 200, "{erin}");
    let erin_id = erin["Id"].as_u64().unwrap();
    let (status, erins) = api
        .call(
            d,
            "POST",
            "/api/team_memberships",
            Some(json!({ "userid": erin_id, "teamid": team_id, "role": 2 })),
        )
        .await;
    assert_eq!(status, 200, "{erins}");
    let erins_path = format!("/api/team_memberships/{}", erins["Id"]);
    denied(
        api.call(
            d,
            "PUT",
            &erins_path,
            Some(json!({ "userid": erin_id, "teamid": team_id, "role": 1 })),
        )
        .await,
        "Permission denied to update the role of membership",
    );
    let (status, other) = api
        .call(t, "POST", "/api/teams", Some(json!({ "name": "dev" })))
        .await;
    assert_eq!(status, 200, "{other}");
    denied(
        api.call(
            d,
            "POST",
            "/api/team_memberships",
            Some(json!({ "userid": erin_id, "teamid": other["Id"], "role": 2 })),
        )
        .await,
        "Permission denied to manage team memberships",
    );
    denied(
        api.call(
            d,
            "PUT",
            &erins_path,
            Some(json!({ "userid": erin_id, "teamid": other["Id"], "role": 2 })),
        )
        .await,
        "Permission denied to update the membership",
    );
    assert_eq!(api.call(d, "DELETE", &erins_path, None).await.0, 204);
    assert_eq!(
        api.call(d, "GET", &team_memberships, None).await.1,
        list,
        "erin is out again"
    );
    // Erin leads nothing, so she may create no user.
    let erin_token = api.login("erin", "erinpassword").await.1["jwt"]
        .as_str()
        .unwrap()
        .to_string();
    denied(
        api.call(
            Some(&erin_token),
            "POST",
            "/api/users",
            Some(json!({ "username": "frank", "password": "x", "role": 2 })),
        )
        .await,
        "Permission denied to create user",
    );
    assert_eq!(
        api.call(t, "DELETE", &format!("/api/teams/{}", other["Id"]), None)
            .await
            .0,
        204
    );

    // Endpoints: access given to dave's team, with lower-case keys, lets
    // dave use the engine.
    let local = endpoint(&api, t).await;
    // A snapshot of what the engine has, on the endpoint.
    let snapshot = format!("/api/endpoints/{local}/snapshot");
    assert_eq!(api.call(d, "POST", &snapshot, None).await.0, 403);
    assert_eq!(api.call(t, "POST", &snapshot, None).await.0, 204);
    assert_eq!(
        api.call(t, "POST", "/api/endpoints/snapshot", None).await.0,
        204
    );
    let (_, e) = api
        .call(t, "GET", &format!("/api/endpoints/{local}"), None)
        .await;
    assert_eq!(e["Status"], 1, "{e}");
    let taken = &e["Snapshots"][0];
    assert!(
        taken["DockerVersion"].is_string()
            && taken["RunningContainerCount"].is_u64()
            && taken["VolumeCount"].is_u64(),
        "{e}"
    );
    let (_, seen) = api.call(d, "GET", "/api/endpoints", None).await;
    assert_eq!(seen, json!([]));
    let (status, e) = api
        .call(
            t,
            "PUT",
            &format!("/api/endpoints/{local}/access"),
            Some(json!({ "authorizedTeams": [team_id] })),
        )
        .await;
    assert_eq!(status, 200, "{e}");
    assert_eq!(e["AuthorizedTeams"], json!([team_id]));
    assert_eq!(
        e["TeamAccessPolicies"],
        json!({ team_id.to_string(): { "RoleId": 0 } })
    );
    let (_, seen) = api.call(d, "GET", "/api/endpoints", None).await;
    assert_eq!(seen.as_array().map(Vec::len), Some(1), "{seen}");
    let (status, _) = api
        .call(
            d,
            "GET",
            &format!("/api/endpoints/{local}/docker/_ping"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    // 1.21+'s policies replace the grants the same way.
    let (status, e) = api
        .call(
            t,
            "PUT",
            &format!("/api/endpoints/{local}"),
            Some(json!({ "name": "here", "teamaccesspolicies": {}, "UserAccessPolicies": { dave_id.to_string(): { "RoleId": 0 } } })),
        )
        .await;
    assert_eq!(status, 200, "{e}");
    assert_eq!(
        (
            e["Name"].clone(),
            e["AuthorizedTeams"].clone(),
            e["AuthorizedUsers"].clone()
        ),
        (json!("here"), json!([]), json!([dave_id]))
    );
    invalid(
        &api.call(
            t,
            "PUT",
            &format!("/api/endpoints/{local}"),
            Some(json!({ "url": "tcp://10.0.0.1:2375" })),
        )
        .await,
        "cannot change",
    );

    // Stacks: a compose stack from text with lower-case keys, updated
    // without prune (a service left out stays) and with it.
    let two = "version: \"2\"\nservices:\n  a:\n    image: busybox:latest\n    command: sleep 100000\n  b:\n    image: busybox:latest\n    command: sleep 100000\n";
    let one =
        "version: \"2\"\nservices:\n  a:\n    image: busybox:latest\n    command: sleep 100001\n";
    let (status, stack) = api
        .call(
            d,
            "POST",
            &format!("/api/stacks?method=string&type=2&endpointId={local}"),
            Some(json!({ "name": "gojson", "stackfilecontent": two, "env": [{ "NAME": "X", "Value": "1" }] })),
        )
        .await;
    assert_eq!(status, 200, "{stack}");
    let stack_path = format!("/api/stacks/{}", stack["Id"]);
    let containers = || {
        let (_, out) = engine
            .get("/containers/json?filters=%7B%22label%22%3A%5B%22com.docker.compose.project%3Dgojson%22%5D%7D")
            .unwrap();
        serde_json::from_str::<Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(containers(), 2);
    invalid(
        &api.call(d, "PUT", &stack_path, Some(json!({ "env": [] })))
            .await,
        "Invalid stack file content",
    );
    let (status, body) = api
        .call(
            d,
            "PUT",
            &stack_path,
            Some(json!({ "stackFileContent": one })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(containers(), 2, "without Prune the service left out stays");
    let (status, body) = api
        .call(
            d,
            "PUT",
            &stack_path,
            Some(json!({ "StackFileContent": one, "prune": true })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(containers(), 1, "with Prune it goes");
    let (status, _) = api.call(d, "DELETE", &stack_path, None).await;
    assert_eq!(status, 204);
    assert_eq!(containers(), 0);

    // Removing the team removes its memberships; removing a user, theirs.
    let (status, _) = api
        .call(t, "DELETE", &format!("/api/teams/{team_id}"), None)
        .await;
    assert_eq!(status, 204);
    let (_, all) = api.call(t, "GET", "/api/team_memberships", None).await;
    assert_eq!(all, json!([]));

    // Settings: public to anyone, the rest to admins; 1.x's checks.
    let (status, public) = api.call(None, "GET", "/api/settings/public", None).await;
    assert_eq!(
        (status, public["AuthenticationMethod"].clone()),
        (200, json!(1)),
        "{public}"
    );
    let (status, _) = api.call(d, "GET", "/api/settings", None).await;
    assert_eq!(status, 403);
    for (body, details) in [
        (
            json!({ "snapshotinterval": "often" }),
            "Invalid snapshot interval",
        ),
        (
            json!({ "authenticationMethod": 4 }),
            "Invalid authentication method value",
        ),
        (
            json!({ "AuthenticationMethod": 2 }),
            "only internal authentication",
        ),
        (json!({ "logoURL": "not a url" }), "Invalid logo URL"),
    ] {
        invalid(
            &api.call(t, "PUT", "/api/settings", Some(body)).await,
            details,
        );
    }
    let (status, s) = api
        .call(
            t,
            "PUT",
            "/api/settings",
            Some(json!({ "logourl": "https://example.com/logo.png", "SnapshotInterval": "1h30m", "allowBindMountsForRegularUsers": false })),
        )
        .await;
    assert_eq!(status, 200, "{s}");
    let (_, s) = api.call(t, "GET", "/api/settings", None).await;
    assert_eq!(
        (
            s["LogoURL"].clone(),
            s["SnapshotInterval"].clone(),
            s["AllowBindMountsForRegularUsers"].clone()
        ),
        (
            json!("https://example.com/logo.png"),
            json!("1h30m"),
            json!(false)
        ),
        "{s}"
    );
    let (_, public) = api.call(None, "GET", "/api/settings/public", None).await;
    assert_eq!(public["LogoURL"], "https://example.com/logo.png");
    let (status, motd) = api.call(d, "GET", "/api/motd", None).await;
    assert_eq!(status, 200, "{motd}");
    assert!(
        motd["Hash"].is_string() && motd["Message"].is_string(),
        "{motd}"
    );
    assert_eq!(
        api.call(d, "GET", "/api/extensions", None).await,
        (200, json!([]))
    );
    invalid(
        &api.call(
            t,
            "PUT",
            "/api/dockerhub",
            Some(json!({ "authentication": true, "username": "hub" })),
        )
        .await,
        "Invalid credentials. Username and password must be specified",
    );
    let (status, _) = api
        .call(
            t,
            "PUT",
            "/api/dockerhub",
            Some(json!({ "authentication": true, "username": "hub", "password": "secret" })),
        )
        .await;
    assert_eq!(status, 200);
    let (status, hub) = api.call(d, "GET", "/api/dockerhub", None).await;
    assert_eq!(
        (status, hub.clone()),
        (200, json!({ "Authentication": true, "Username": "hub" })),
        "{hub}"
    );

    // Tags and endpoint groups: a group given to dave lends him its
    // endpoints; removed, they go back to "Unassigned".
    invalid(
        &api.call(t, "POST", "/api/tags", Some(json!({}))).await,
        "Invalid tag name",
    );
    let (status, tag) = api
        .call(t, "POST", "/api/tags", Some(json!({ "name": "prod" })))
        .await;
    assert_eq!(status, 200, "{tag}");
    let tag_id = tag["Id"].as_u64().unwrap();
    let (status, dup) = api
        .call(t, "POST", "/api/tags", Some(json!({ "NAME": "prod" })))
        .await;
    assert_eq!(
        (status, dup["err"].clone()),
        (409, json!("This name is already associated to a tag"))
    );
    let (_, tags) = api.call(d, "GET", "/api/tags", None).await;
    assert_eq!(tags, json!([{ "Id": tag_id, "Name": "prod" }]));
    let (status, _) = api
        .call(
            t,
            "PUT",
            &format!("/api/endpoints/{local}/access"),
            Some(json!({ "authorizedusers": [], "authorizedteams": [] })),
        )
        .await;
    assert_eq!(status, 200);
    let (_, seen) = api.call(d, "GET", "/api/endpoints", None).await;
    assert_eq!(seen, json!([]));
    let (_, groups) = api.call(t, "GET", "/api/endpoint_groups", None).await;
    assert_eq!(groups[0]["Name"], "Unassigned", "{groups}");
    invalid(
        &api.call(
            t,
            "POST",
            "/api/endpoint_groups",
            Some(json!({ "description": "x" })),
        )
        .await,
        "Invalid endpoint group name",
    );
    let (status, group) = api
        .call(
            t,
            "POST",
            "/api/endpoint_groups",
            Some(json!({ "name": "edge", "associatedEndpoints": [local], "tagids": [tag_id] })),
        )
        .await;
    assert_eq!(status, 200, "{group}");
    assert_eq!(group["TagIds"], json!([tag_id]));
    let group_path = format!("/api/endpoint_groups/{}", group["Id"]);
    let (_, e) = api
        .call(t, "GET", &format!("/api/endpoints/{local}"), None)
        .await;
    assert_eq!(e["GroupId"], group["Id"], "{e}");
    let (status, _) = api
        .call(
            t,
            "PUT",
            &format!("{group_path}/access"),
            Some(json!({ "userAccessPolicies": { dave_id.to_string(): {} } })),
        )
        .await;
    assert_eq!(status, 200);
    let (_, seen) = api.call(d, "GET", "/api/endpoints", None).await;
    assert_eq!(
        seen.as_array().map(Vec::len),
        Some(1),
        "the group lends its endpoint: {seen}"
    );
    let (_, groups) = api.call(d, "GET", "/api/endpoint_groups", None).await;
    assert_eq!(groups.as_array().map(Vec::len), Some(1), "{groups}");
    let (status, _) = api
        .call(t, "DELETE", &format!("/api/tags/{tag_id}"), None)
        .await;
    assert_eq!(status, 204);
    let (_, group) = api.call(t, "GET", &group_path, None).await;
    assert_eq!(group["TagIds"], json!([]), "{group}");
    let (status, _) = api.call(t, "DELETE", "/api/endpoint_groups/1", None).await;
    assert_eq!(status, 403);
    let (status, _) = api.call(t, "DELETE", &group_path, None).await;
    assert_eq!(status, 204);
    let (_, e) = api
        .call(t, "GET", &format!("/api/endpoints/{local}"), None)
        .await;
    assert_eq!(e["GroupId"], 1, "{e}");
    let (_, seen) = api.call(d, "GET", "/api/endpoints", None).await;
    assert_eq!(seen, json!([]));

    // Registries: 1.x's checks, passwords never shown, given like
    // endpoints.
    invalid(
        &api.call(
            t,
            "POST",
            "/api/registries",
            Some(json!({ "name": "r", "url": "registry.local:5000", "type": 9 })),
        )
        .await,
        "Invalid registry type",
    );
    invalid(
        &api.call(
            t,
            "POST",
            "/api/registries",
            Some(json!({ "name": "r", "type": 3 })),
        )
        .await,
        "Invalid registry URL",
    );
    let new_registry = json!({ "name": "local", "type": 3, "url": "registry.local:5000", "authentication": true, "username": "u", "password": "registry-secret" });
    let (status, registry) = api
        .call(t, "POST", "/api/registries", Some(new_registry.clone()))
        .await;
    assert_eq!(status, 200, "{registry}");
    assert!(
        !registry.to_string().contains("registry-secret"),
        "{registry}"
    );
    let (status, _) = api
        .call(t, "POST", "/api/registries", Some(new_registry))
        .await;
    assert_eq!(status, 409);
    let registry_path = format!("/api/registries/{}", registry["Id"]);
    let (_, mine) = api.call(d, "GET", "/api/registries", None).await;
    assert_eq!(mine, json!([]));
    let (status, _) = api
        .call(
            t,
            "PUT",
            &format!("{registry_path}/access"),
            Some(json!({ "AuthorizedUsers": [dave_id] })),
        )
        .await;
    assert_eq!(status, 200);
    let (_, mine) = api.call(d, "GET", "/api/registries", None).await;
    assert_eq!(mine.as_array().map(Vec::len), Some(1), "{mine}");
    let (status, changed) = api
        .call(
            t,
            "PUT",
            &registry_path,
            Some(json!({ "name": "renamed", "authentication": false })),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(
        (changed["Name"].clone(), changed["Username"].clone()),
        (json!("renamed"), json!(""))
    );
    let (status, _) = api.call(d, "DELETE", &registry_path, None).await;
    assert_eq!(status, 403);
    let (status, _) = api.call(t, "DELETE", &registry_path, None).await;
    assert_eq!(status, 204);

    // API tokens: made by their user (password confirmed), used as
    // X-API-Key with that user's rights, revoked.
    let tokens = format!("{dave_path}/tokens");
    invalid(
        &api.call(
            d,
            "POST",
            &tokens,
            Some(json!({ "password": "davepassword2" })),
        )
        .await,
        "invalid description: cannot be empty",
    );
    let (status, _) = api
        .call(
            d,
            "POST",
            &tokens,
            Some(json!({ "password": "wrong", "description": "ci" })),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = api
        .call(
            t,
            "POST",
            &tokens,
            Some(json!({ "password": "adminpassword", "description": "ci" })),
        )
        .await;
    assert_eq!(status, 403, "only for yourself");
    let (status, made) = api
        .call(
            d,
            "POST",
            &tokens,
            Some(json!({ "Password": "davepassword2", "Description": "ci" })),
        )
        .await;
    assert_eq!(status, 200, "{made}");
    let raw = made["rawAPIKey"].as_str().unwrap().to_string();
    assert!(raw.starts_with("ptr_") && raw.len() > 40, "{raw}");
    assert_eq!(made["apiKey"]["prefix"], raw[..7]);
    let with_key = async |method: &str, path: &str, key: &str| {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = api
            .http
            .request(method, api.berth.url(path))
            .header("x-api-key", key)
            .send()
            .await
            .unwrap();
        r.status().as_u16()
    };
    assert_eq!(with_key("GET", &dave_path, &raw).await, 200);
    assert_eq!(
        with_key("GET", "/api/settings", &raw).await,
        403,
        "dave's rights only"
    );
    assert_eq!(with_key("GET", &dave_path, "ptr_forged").await, 401);
    let (status, list) = api.call(t, "GET", &tokens, None).await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert!(!list.to_string().contains(&raw), "{list}");
    let (status, _) = api
        .call(
            d,
            "DELETE",
            &format!("{tokens}/{}", made["apiKey"]["id"]),
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(with_key("GET", &dave_path, &raw).await, 401, "revoked");
    let (_, admin_key) = api
        .call(
            t,
            "POST",
            "/api/users/1/tokens",
            Some(json!({ "password": "adminpassword", "description": "automation" })),
        )
        .await;
    let admin_key = admin_key["rawAPIKey"].as_str().unwrap().to_string();
    assert_eq!(
        with_key(
            "GET",
            &format!("/api/endpoints/{local}/docker/_ping"),
            &admin_key
        )
        .await,
        200
    );

    // Webhooks: a service's (1.x) and a stack's, each a secret URL that
    // redeploys without signing in.
    engine.swarm_init();
    let (status, created) = api
        .call(
            t,
            "POST",
            &format!("/api/endpoints/{local}/docker/services/create"),
            Some(json!({ "Name": "hooked", "TaskTemplate": { "ContainerSpec": { "Image": "busybox:latest", "Command": ["sleep", "100000"] } } })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let service = created["ID"].as_str().unwrap().to_string();
    invalid(
        &api.call(
            t,
            "POST",
            "/api/webhooks",
            Some(json!({ "resourceid": service, "endpointid": local, "webhooktype": 3 })),
        )
        .await,
        "Invalid WebhookType",
    );
    let (status, hook) = api
        .call(
            t,
            "POST",
            "/api/webhooks",
            Some(json!({ "resourceId": service, "endpointId": local, "webhookType": 1 })),
        )
        .await;
    assert_eq!(status, 200, "{hook}");
    let (status, _) = api
        .call(
            t,
            "POST",
            "/api/webhooks",
            Some(json!({ "ResourceID": service, "EndpointID": local, "WebhookType": 1 })),
        )
        .await;
    assert_eq!(status, 409);
    let filters = format!("/api/webhooks?filters=%7B%22ResourceID%22%3A%22{service}%22%7D");
    let (_, listed) = api.call(t, "GET", &filters, None).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    let trigger = format!("/api/webhooks/{}", hook["Token"].as_str().unwrap());
    let force = || {
        let (_, s) = engine.get(&format!("/services/{service}")).unwrap();
        serde_json::from_str::<Value>(&s).unwrap()["Spec"]["TaskTemplate"]["ForceUpdate"].as_u64()
    };
    let before = force().unwrap_or(0);
    assert_eq!(api.call(None, "POST", &trigger, None).await.0, 204);
    assert_eq!(
        force(),
        Some(before + 1),
        "the service's tasks are replaced"
    );
    let (status, body) = api
        .call(None, "POST", "/api/webhooks/not-a-token", None)
        .await;
    assert_eq!(
        (status, body["err"].clone()),
        (404, json!("Unable to find a webhook with this token"))
    );
    let (status, _) = api
        .call(t, "DELETE", &format!("/api/webhooks/{}", hook["Id"]), None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(api.call(None, "POST", &trigger, None).await.0, 404);
    let (status, _) = api
        .call(
            t,
            "DELETE",
            &format!("/api/endpoints/{local}/docker/services/{service}"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, stack) = api
        .call(
            t,
            "POST",
            &format!("/api/stacks?method=string&type=2&endpointId={local}"),
            Some(json!({ "Name": "hookstack", "StackFileContent": one })),
        )
        .await;
    assert_eq!(status, 200, "{stack}");
    let container_id = || engine.inspect("hookstack_a-1").expect("hookstack_a-1")["Id"].clone();
    let first = container_id();
    let (status, hook) = api
        .call(t, "POST", "/api/webhooks", Some(json!({ "ResourceID": stack["Id"].to_string(), "EndpointID": local, "WebhookType": 2 })))
        .await;
    assert_eq!(status, 200, "{hook}");
    let trigger = format!("/api/webhooks/{}", hook["Token"].as_str().unwrap());
    assert_eq!(api.call(None, "POST", &trigger, None).await.0, 204);
    assert_ne!(container_id(), first, "the stack is redeployed");
    let (status, _) = api
        .call(t, "DELETE", &format!("/api/stacks/{}", stack["Id"]), None)
        .await;
    assert_eq!(status, 204);

    // Paths no route takes: Portainer's format under /api, CIKit's under
    // /api/v1, Docker Cloud's under /api/app/v1; a known path asked with
    // another method reaches its prefix's fallback too.
    for (method, path) in [
        ("GET", "/api/nothing"),
        ("DELETE", "/api/status"),
        ("PATCH", "/api/users"),
        ("GET", "/api/settings/nothing"),
    ] {
        let (status, body) = api.call(t, method, path, None).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
        assert!(
            body["err"].is_string() && body["details"].is_string(),
            "{method} {path}: {body}"
        );
    }
    let (status, body) = api.call(None, "GET", "/api/v1/nothing", None).await;
    assert_eq!(
        (status, body["errorId"].clone()),
        (404, json!(404)),
        "{body}"
    );
    let (status, body) = api.call(None, "GET", "/api/app/v1/nothing/", None).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["err"].is_null() && body["errorId"].is_null(), "{body}");
    // The host says who answers under each prefix.
    let (_, doc) = api.call(None, "GET", "/_berth/openapi.json", None).await;
    let fallbacks: Vec<(String, String)> = doc["x-berth-fallbacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["prefix"].as_str().unwrap().into(),
                f["plugin"].as_str().unwrap().into(),
            )
        })
        .collect();
    for (prefix, plugin) in [
        ("/api/v1", "droplets"),
        ("/api/app/v1", "stacks"),
        ("/api", "stacks"),
    ] {
        assert!(
            fallbacks.contains(&(prefix.to_string(), plugin.to_string())),
            "{prefix}: {fallbacks:?}"
        );
    }
    let api_at = fallbacks.iter().position(|f| f.0 == "/api").unwrap();
    let v1_at = fallbacks.iter().position(|f| f.0 == "/api/v1").unwrap();
    assert!(v1_at < api_at, "most specific first: {fallbacks:?}");
    let out = api.berth.cli(&["plugins"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "/api/v1/{rest...}                        not-found (fallback of /api/v1)",
        "/api/{rest...}                           portainer.not-found (fallback of /api)",
    ] {
        assert!(text.contains(line), "{line}: {text}");
    }
}

/// The local engine as an endpoint (a form, as Portainer's UI sends it).
async fn endpoint(api: &Api, token: Option<&str>) -> u64 {
    let (content_type, body) =
        support::portainer::multipart(&[("Name", "local"), ("EndpointType", "1")], &[]);
    let r = api
        .http
        .post(api.berth.url("/api/endpoints"))
        .bearer_auth(token.unwrap())
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["Id"].as_u64().unwrap()
}

/// Resource controls as 1.x applied them: through the Docker proxy a
/// non-administrator sees and touches only what a control gives them
/// (what they created, what an admin gave them, their team or everyone),
/// each item marked with its control; admins see everything.
#[tokio::test(flavor = "multi_thread")]
async fn resource_controls_filter_what_a_user_sees_through_the_proxy() {
    let Some(engine) = docker::shared() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(dir.path(), engine);
    let (admin_token, local, _) =
        support::portainer::admin_with_endpoints(&api.berth, engine).await;
    let t = Some(admin_token.as_str());
    let (status, erin) = api
        .call(
            t,
            "POST",
            "/api/users",
            Some(json!({ "username": "erin", "password": "erinpassword", "role": 2 })),
        )
        .await;
    assert_eq!(status, 200, "{erin}");
    let erin_id = erin["Id"].as_u64().unwrap();
    let erin_token = api.login("erin", "erinpassword").await.1["jwt"]
        .as_str()
        .unwrap()
        .to_string();
    let e = Some(erin_token.as_str());
    let (status, _) = api
        .call(
            t,
            "PUT",
            &format!("/api/endpoints/{local}/access"),
            Some(json!({ "AuthorizedUsers": [erin_id] })),
        )
        .await;
    assert_eq!(status, 200);
    let docker = |path: &str| format!("/api/endpoints/{local}/docker{path}");
    let sleeper = json!({ "Image": "busybox:latest", "Cmd": ["sleep", "100000"] });

    // The admin's container: not erin's to see or touch.
    let (status, made) = api
        .call(
            t,
            "POST",
            &docker("/containers/create?name=rc-admin-box"),
            Some(sleeper.clone()),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    let admin_box = made["Id"].as_str().unwrap().to_string();
    let names = async |token: Option<&str>| {
        let (status, list) = api
            .call(token, "GET", &docker("/containers/json?all=1"), None)
            .await;
        assert_eq!(status, 200, "{list}");
        let names: Vec<String> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                c["Names"][0]
                    .as_str()
                    .unwrap()
                    .trim_start_matches('/')
                    .to_string()
            })
            .filter(|n| {
                ["rc-", "rcerin_", "rcadmin_"]
                    .iter()
                    .any(|p| n.starts_with(p))
            })
            .collect();
        (names, list)
    };
    assert_eq!(names(e).await.0, Vec::<String>::new());
    for (method, path) in [
        ("GET", "/containers/rc-admin-box/json"),
        ("POST", "/containers/rc-admin-box/start"),
        ("DELETE", "/containers/rc-admin-box?force=1"),
        ("GET", "/v1.41/containers/rc-admin-box/json"),
        ("POST", "/containers/prune"),
    ] {
        let (status, body) = api.call(e, method, &docker(path), None).await;
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert_eq!(body["err"], "Access denied to resource", "{body}");
    }
    // What erin creates is hers, marked with its control.
    let (status, made) = api
        .call(
            e,
            "POST",
            &docker("/v1.41/containers/create?name=rc-erin-box"),
            Some(sleeper.clone()),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    let (seen, list) = names(e).await;
    assert_eq!(seen, vec!["rc-erin-box".to_string()], "{list}");
    let mine = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["Id"] == made["Id"])
        .unwrap();
    assert_eq!(
        mine["Portainer"]["ResourceControl"]["UserAccesses"][0]["UserId"],
        json!(erin_id),
        "{mine}"
    );
    for (method, path, want) in [
        ("POST", "/containers/rc-erin-box/start", 204),
        ("GET", "/containers/rc-erin-box/json", 200),
        ("GET", "/containers/nothing-here/json", 404),
    ] {
        let (status, body) = api.call(e, method, &docker(path), None).await;
        assert_eq!(status, want, "{method} {path}: {body}");
    }
    // Consoles too: erin attaches to her container, not to the admin's,
    // nor to an exec instance in it.
    let (status, _) = api
        .call(t, "POST", &docker("/containers/rc-admin-box/start"), None)
        .await;
    assert_eq!(status, 204);
    let (status, exec) = api
        .call(
            t,
            "POST",
            &docker("/containers/rc-admin-box/exec"),
            Some(json!({ "Cmd": ["sh"], "AttachStdin": true, "AttachStdout": true, "Tty": true })),
        )
        .await;
    assert_eq!(status, 201, "{exec}");
    let console = |route: &str, id: &str| {
        format!("/api/websocket/{route}?token={erin_token}&endpointId={local}&id={id}")
    };
    for (route, id) in [
        ("attach", admin_box.as_str()),
        ("exec", exec["Id"].as_str().unwrap()),
    ] {
        let answer = api
            .http
            .get(api.berth.url(&console(route, id)))
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 403, "{route}");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["err"], "Access denied to resource", "{body}");
    }
    let erin_box = made["Id"].as_str().unwrap();
    let ws = api
        .berth
        .url(&console("attach", erin_box))
        .replacen("http://", "ws://", 1);
    let (mut ws, answer) = tokio_tungstenite::connect_async(ws).await.unwrap();
    assert_eq!(answer.status(), 101);
    ws.close(None).await.unwrap();
    let (mut everything, _) = names(t).await;
    everything.sort();
    assert_eq!(
        everything,
        vec!["rc-admin-box".to_string(), "rc-erin-box".to_string()]
    );

    // Given to erin's team by an admin, the admin's container is hers to
    // see; taken back to administrators only, it is not.
    let (_, team) = api
        .call(t, "POST", "/api/teams", Some(json!({ "Name": "rc-team" })))
        .await;
    let (status, _) = api
        .call(
            t,
            "POST",
            "/api/team_memberships",
            Some(json!({ "UserID": erin_id, "TeamID": team["Id"], "Role": 2 })),
        )
        .await;
    assert_eq!(status, 200);
    invalid_type(&api, t, &admin_box).await;
    let (status, control) = api
        .call(
            t,
            "POST",
            "/api/resource_controls",
            Some(json!({ "resourceid": admin_box, "type": "container", "teams": [team["Id"]] })),
        )
        .await;
    assert_eq!(status, 200, "{control}");
    let (status, again) = api
        .call(
            t,
            "POST",
            "/api/resource_controls",
            Some(json!({ "ResourceID": admin_box, "Type": "container", "Public": true })),
        )
        .await;
    assert_eq!(
        (status, again["err"].clone()),
        (
            409,
            json!("A resource control is already associated to this resource")
        )
    );
    let (mut seen, _) = names(e).await;
    seen.sort();
    assert_eq!(
        seen,
        vec!["rc-admin-box".to_string(), "rc-erin-box".to_string()]
    );
    let control_path = format!("/api/resource_controls/{}", control["Id"]);
    let (status, _) = api
        .call(
            t,
            "PUT",
            &control_path,
            Some(json!({ "administratorsOnly": true })),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(names(e).await.0, vec!["rc-erin-box".to_string()]);
    let (status, _) = api
        .call(e, "PUT", &control_path, Some(json!({ "public": true })))
        .await;
    assert_eq!(status, 403, "controls are administrators'");

    // Volumes the same way, in their `{"Volumes": [...]}` list.
    for (token, name) in [(t, "rc-admin-vol"), (e, "rc-erin-vol")] {
        let (status, body) = api
            .call(
                token,
                "POST",
                &docker("/volumes/create"),
                Some(json!({ "Name": name })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, volumes) = api.call(e, "GET", &docker("/volumes"), None).await;
    assert_eq!(status, 200, "{volumes}");
    let seen: Vec<&str> = volumes["Volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["Name"].as_str())
        .filter(|n| n.starts_with("rc-"))
        .collect();
    assert_eq!(seen, vec!["rc-erin-vol"], "{volumes}");
    let (status, _) = api
        .call(e, "DELETE", &docker("/volumes/rc-admin-vol"), None)
        .await;
    assert_eq!(status, 403);

    // Stacks: erin's own, not the admin's.
    let compose =
        "version: \"2\"\nservices:\n  a:\n    image: busybox:latest\n    command: sleep 100000\n";
    let mut ids = Vec::new();
    for (token, name) in [(t, "rcadmin"), (e, "rcerin")] {
        let (status, stack) = api
            .call(
                token,
                "POST",
                &format!("/api/stacks?method=string&type=2&endpointId={local}"),
                Some(json!({ "Name": name, "StackFileContent": compose })),
            )
            .await;
        assert_eq!(status, 200, "{stack}");
        ids.push(stack["Id"].as_u64().unwrap());
    }
    let (_, stacks) = api.call(e, "GET", "/api/stacks", None).await;
    let seen: Vec<&str> = stacks
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["Name"].as_str())
        .collect();
    assert_eq!(seen, vec!["rcerin"], "{stacks}");
    let (status, _) = api
        .call(e, "GET", &format!("/api/stacks/{}", ids[0]), None)
        .await;
    assert_eq!(status, 403);
    // A stack's containers come with it.
    let (mut seen, _) = names(e).await;
    seen.sort();
    assert_eq!(
        seen,
        vec!["rc-erin-box".to_string(), "rcerin_a-1".to_string()]
    );
    for id in ids {
        let (status, _) = api
            .call(t, "DELETE", &format!("/api/stacks/{id}"), None)
            .await;
        assert_eq!(status, 204);
    }
    for path in [
        "/containers/rc-admin-box?force=1",
        "/containers/rc-erin-box?force=1",
        "/volumes/rc-admin-vol",
        "/volumes/rc-erin-vol",
    ] {
        let (status, _) = api.call(t, "DELETE", &docker(path), None).await;
        assert_eq!(status, 204, "{path}");
    }
}

async fn invalid_type(api: &Api, token: Option<&str>, id: &str) {
    let (status, body) = api
        .call(
            token,
            "POST",
            "/api/resource_controls",
            Some(json!({ "ResourceID": id, "Type": "thing", "Public": true })),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["err"]
            .as_str()
            .unwrap()
            .starts_with("Invalid type value"),
        "{body}"
    );
}

/// `portainer-api` 1.22.1.1 from PyPI, the client generated from
/// Portainer 1.22's Swagger description, unmodified: a whole session
/// (`tests/py/portainer_api_session.py`), within a bounded time.
#[tokio::test(flavor = "multi_thread")]
async fn the_generated_1x_python_client_runs_a_whole_session() {
    let Some(engine) = docker::shared() else {
        return;
    };
    let Some(python) = support::portainer_clients() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(dir.path(), engine);
    let mut session = std::process::Command::new(python);
    session.arg(support::script("py/portainer_api_session.py"));
    session.arg(api.berth.url(""));
    support::client_session(session, "the portainer-api session").await;
}

/// `portainer-cli` 0.3.0 from PyPI, unmodified: it signs in with
/// lower-case keys, updates a stack (file, env added to the stack's own,
/// prune) and a registry the way it reads them, and fails on a 404.
#[tokio::test(flavor = "multi_thread")]
async fn portainer_cli_updates_a_stack_and_a_registry() {
    let Some(engine) = docker::shared() else {
        return;
    };
    let Some(python) = support::portainer_clients() else {
        return;
    };
    let cli = python.with_file_name("portainer-cli");
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(dir.path(), engine);
    let admin = json!({ "username": "admin", "password": "adminpassword" });
    let (status, _) = api
        .call(None, "POST", "/api/users/admin/init", Some(admin))
        .await;
    assert_eq!(status, 200);
    let token = api.login("admin", "adminpassword").await.1["jwt"]
        .as_str()
        .unwrap()
        .to_string();
    let t = Some(token.as_str());
    let local = endpoint(&api, t).await;
    let (status, stack) = api
        .call(
            t,
            "POST",
            &format!("/api/stacks?method=string&type=2&endpointId={local}"),
            Some(json!({
                "Name": "clistack",
                "StackFileContent": "version: \"2\"\nservices:\n  a:\n    image: busybox:latest\n    command: sleep 100000\n",
                "Env": [{ "name": "A", "value": "1" }],
            })),
        )
        .await;
    assert_eq!(status, 200, "{stack}");
    let stack_id = stack["Id"].as_u64().unwrap();
    let (status, registry) = api
        .call(
            t,
            "POST",
            "/api/registries",
            Some(json!({ "Name": "r", "Type": 3, "URL": "registry.local:5000" })),
        )
        .await;
    assert_eq!(status, 200, "{registry}");
    let new_file = dir.path().join("stack.yml");
    let content =
        "version: \"2\"\nservices:\n  a:\n    image: busybox:latest\n    command: sleep 100001\n";
    std::fs::write(&new_file, content).unwrap();

    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let url = api.berth.url("/");
    let (stack_arg, local_arg, registry_arg) = (
        stack_id.to_string(),
        local.to_string(),
        registry["Id"].to_string(),
    );
    let file_arg = new_file.to_string_lossy().into_owned();
    tokio::task::spawn_blocking(move || {
        let run = |args: &[&str]| {
            let child = std::process::Command::new(&cli)
                .args(args)
                .env("HOME", &home)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            support::wait_bounded(child, Duration::from_secs(60), "portainer-cli")
        };
        let ok = |args: &[&str]| {
            let out = run(args);
            assert!(
                out.status.success(),
                "portainer-cli {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        ok(&["configure", &url]);
        ok(&["login", "admin", "adminpassword"]);
        assert!(ok(&["request", "status", "-p"]).contains("\"Version\""));
        ok(&[
            "update_stack",
            &stack_arg,
            &local_arg,
            &file_arg,
            "-p",
            "--env.B=2",
        ]);
        ok(&[
            "update_registry",
            &registry_arg,
            "-name",
            "renamed",
            "-a",
            "-username",
            "u",
            "-password",
            "p",
        ]);
        let failed = run(&["request", "nothing/here"]);
        assert!(!failed.status.success(), "a 404 fails the command");
    })
    .await
    .unwrap();

    let (_, stack) = api
        .call(t, "GET", &format!("/api/stacks/{stack_id}"), None)
        .await;
    assert_eq!(
        stack["Env"],
        json!([{ "name": "A", "value": "1" }, { "name": "B", "value": "2" }]),
        "{stack}"
    );
    let (_, file) = api
        .call(t, "GET", &format!("/api/stacks/{stack_id}/file"), None)
        .await;
    assert_eq!(file["StackFileContent"], content);
    let (_, registry) = api
        .call(
            t,
            "GET",
            &format!("/api/registries/{}", registry["Id"]),
            None,
        )
        .await;
    assert_eq!(
        (
            registry["Name"].clone(),
            registry["Authentication"].clone(),
            registry["Username"].clone()
        ),
        (json!("renamed"), json!(true), json!("u")),
        "{registry}"
    );
    // `portainer-py` 0.7.6's `deploy` (it reads `/api/status` to pick
    // 1.18's routes, finds the stack by name, merges its Env and updates
    // it with `?endpointId=1`), unmodified.
    let deployed =
        "version: \"2\"\nservices:\n  a:\n    image: busybox:latest\n    command: sleep 100002\n";
    std::fs::write(&new_file, deployed).unwrap();
    let mut session = std::process::Command::new(python.with_file_name("portainerpy"));
    session.args(["deploy", "-f"]).arg(&new_file);
    session.args([
        "-h",
        &api.berth.url("/"),
        "-u",
        "admin",
        "-p",
        "adminpassword",
    ]);
    session.args(["-n", "clistack", "-e", "C=3", "--prune-stack"]);
    let out = tokio::task::spawn_blocking(move || {
        let child = session
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        support::wait_bounded(child, Duration::from_secs(60), "portainer-py deploy")
    })
    .await
    .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("Stack successfully updated"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, stack) = api
        .call(t, "GET", &format!("/api/stacks/{stack_id}"), None)
        .await;
    assert_eq!(
        stack["Env"],
        json!([
            { "name": "A", "value": "1" },
            { "name": "B", "value": "2" },
            { "name": "C", "value": "3" }
        ]),
        "{stack}"
    );
    let (_, file) = api
        .call(t, "GET", &format!("/api/stacks/{stack_id}/file"), None)
        .await;
    assert_eq!(file["StackFileContent"], deployed);

    let (status, _) = api
        .call(t, "DELETE", &format!("/api/stacks/{stack_id}"), None)
        .await;
    assert_eq!(status, 204);
}

/// A 1.20 templates file, as an operator gives it with `setting_files`.
const TEMPLATES: &str = r#"[
  { "type": 1, "title": "Web", "description": "A web server", "image": "busybox:latest",
    "ports": ["8080:80/tcp"], "categories": ["webserver"], "platform": "linux",
    "env": [{ "name": "MODE", "label": "Mode", "select": [
      { "text": "Fast", "value": "fast", "default": true }, { "text": "Slow", "value": "slow" }] }] },
  { "type": 1, "title": "Root shell", "description": "For administrators",
    "image": "busybox:latest", "administrator_only": true, "privileged": true },
  { "type": 2, "title": "Cluster", "description": "A swarm stack",
    "repository": { "url": "https://git.example/templates", "stackfile": "stacks/c.yml" } }
]"#;

/// A plain HTTP server on 127.0.0.1, one request per connection: `answer`
/// gets each request's head and gives the whole response (`None`: close).
async fn serve_http(answer: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let answer = std::sync::Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                if let Some(response) = answer(&String::from_utf8_lossy(&head)) {
                    let _ = conn.write_all(response.as_bytes()).await;
                }
            });
        }
    });
    port
}

/// A response with `headers` (CRLF-terminated lines) and `body`.
fn http_response(status: &str, headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// `body` as JSON to every request, counting them.
async fn serve_text(body: &'static str) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let served = std::sync::Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    let port = serve_http(move |_| {
        count.fetch_add(1, Ordering::SeqCst);
        Some(http_response(
            "200 OK",
            "content-type: application/json\r\n",
            body,
        ))
    })
    .await;
    (port, served)
}

/// App templates in 1.20's format: imported once from the operator's
/// file, administrators' only where the file says so, managed by
/// administrators with 1.x's checks, kept across a restart (the file is
/// not imported again), and fetched from the settings' TemplatesURL when
/// one is set, through `http-out`.
#[tokio::test(flavor = "multi_thread")]
async fn app_templates_come_from_the_operators_file() {
    let Some(engine) = docker::shared() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("templates.json");
    std::fs::write(&file, TEMPLATES).unwrap();
    let more = format!(
        "[plugins.stacks.setting_files]\ntemplates = {:?}\n\
         [plugins.stacks]\ngrants = [\"kv\", \"crypto\", \"docker\", \"docker-endpoints\", \"events\", \"jobs\", \"http-out\"]\n\
         [http_out]\nallow = [\"127.0.0.1\"]\nallow_private = [\"127.0.0.1\"]\n",
        file.display().to_string()
    );
    let mut api = Api::start_with(dir.path(), engine, &more);
    let token = api.admin().await;
    let t = Some(token.as_str());
    let (_, user_token) = api.user(&token, "tess").await;
    let u = Some(user_token.as_str());

    let titles = |list: &Value| -> Vec<String> {
        let mut t: Vec<String> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["title"].as_str().unwrap().to_string())
            .collect();
        t.sort();
        t
    };
    let (status, all) = api.call(t, "GET", "/api/templates", None).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(titles(&all), ["Cluster", "Root shell", "Web"]);
    let web = all
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["title"] == "Web")
        .unwrap()
        .clone();
    assert_eq!(web["type"], 1);
    assert_eq!(web["ports"], json!(["8080:80/tcp"]));
    assert_eq!(web["env"][0]["select"][0]["default"], true);
    assert!(web["Id"].as_u64().unwrap() > 0, "{web}");
    let (status, seen) = api.call(u, "GET", "/api/templates", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        titles(&seen),
        ["Cluster", "Web"],
        "administrator_only ones to administrators alone"
    );

    // Managed by administrators, with 1.x's checks; keys in any case.
    let invalid = |answer: (u16, Value), details: &str| {
        assert_eq!(answer.0, 400, "{}", answer.1);
        assert_eq!(answer.1["err"], "Invalid request payload");
        assert_eq!(answer.1["details"], details);
    };
    for (body, details) in [
        (
            json!({ "title": "x", "description": "y" }),
            "Invalid template type. Valid values are: 1 (container), 2 (Swarm stack template) or 3 (Compose stack template).",
        ),
        (
            json!({ "type": 1, "description": "y" }),
            "Invalid template title",
        ),
        (
            json!({ "type": 1, "title": "x" }),
            "Invalid template description",
        ),
        (
            json!({ "type": 1, "title": "x", "description": "y" }),
            "Invalid template image",
        ),
        (
            json!({ "type": 3, "title": "x", "description": "y" }),
            "Invalid template repository URL",
        ),
    ] {
        invalid(
            api.call(t, "POST", "/api/templates", Some(body)).await,
            details,
        );
    }
    let (status, made) = api
        .call(
            t,
            "POST",
            "/api/templates",
            Some(json!({
                "type": 3, "TITLE": "Compose", "description": "Two services",
                "repository": { "url": "https://git.example/c" },
                "AdministratorOnly": true,
            })),
        )
        .await;
    assert_eq!(status, 200, "{made}");
    assert_eq!(made["repository"]["stackfile"], "docker-compose.yml");
    assert_eq!(made["administrator_only"], true);
    let made_path = format!("/api/templates/{}", made["Id"]);
    assert_eq!(
        api.call(u, "POST", "/api/templates", Some(json!({})))
            .await
            .0,
        403
    );
    assert_eq!(api.call(u, "GET", &made_path, None).await.0, 403);
    let web_path = format!("/api/templates/{}", web["Id"]);
    let (status, changed) = api
        .call(
            t,
            "PUT",
            &web_path,
            Some(json!({ "title": "Web server", "image": "busybox:1", "Ports": [] })),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(
        (
            changed["title"].clone(),
            changed["image"].clone(),
            changed.get("ports")
        ),
        (json!("Web server"), json!("busybox:1"), None),
        "{changed}"
    );
    assert_eq!(changed["categories"], json!(["webserver"]), "untouched");
    assert_eq!(api.call(t, "GET", &web_path, None).await.1, changed);
    assert_eq!(api.call(t, "DELETE", &made_path, None).await.0, 204);
    let (status, gone) = api.call(t, "GET", &made_path, None).await;
    assert_eq!(status, 404, "{gone}");
    assert_eq!(
        gone["err"],
        "Unable to find a template with the specified identifier"
    );

    // A restart keeps what administrators made of them: the file is not
    // imported again.
    assert!(api.berth.stop());
    api.berth = Berth::start(
        dir.path(),
        &std::fs::read_to_string(dir.path().join("berth.toml")).unwrap(),
    );
    let (_, again) = api.call(t, "GET", "/api/templates", None).await;
    assert_eq!(titles(&again), ["Cluster", "Root shell", "Web server"]);

    // With a TemplatesURL, the list is that URL's.
    let (port, served) = serve_text(
        r#"{"version": "2", "templates": [{"type": 1, "title": "Remote", "description": "From a URL", "image": "busybox:latest"}]}"#,
    )
    .await;
    let url = format!("http://127.0.0.1:{port}/templates.json");
    let (status, _) = api
        .call(
            t,
            "PUT",
            "/api/settings",
            Some(json!({ "TemplatesURL": url })),
        )
        .await;
    assert_eq!(status, 200);
    let (status, remote) = api.call(u, "GET", "/api/templates", None).await;
    assert_eq!(
        (status, titles(&remote)),
        (200, vec!["Remote".to_string()]),
        "{remote}"
    );
    assert_eq!(remote[0]["Id"], 0);
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 1);
    let (_, public) = api.call(None, "GET", "/api/settings/public", None).await;
    assert_eq!(public["ExternalTemplates"], true);
    // An address outside the allow-list is the 1.x error, with the reason.
    let (status, _) = api
        .call(
            t,
            "PUT",
            "/api/settings",
            Some(json!({ "TemplatesURL": "http://192.0.2.1/t.json" })),
        )
        .await;
    assert_eq!(status, 200);
    let (status, refused) = api.call(t, "GET", "/api/templates", None).await;
    assert_eq!(status, 500, "{refused}");
    assert_eq!(refused["err"], "Unable to retrieve templates via HTTP");
    assert!(
        refused["details"].as_str().unwrap().contains("refused"),
        "{refused}"
    );
}

/// A one-service swarm stack.
const SMALL_SWARM_STACK: &str = "\
version: \"3\"
services:
  app:
    image: busybox:latest
    command: sleep 100000
";

/// Upload one TLS file for endpoint `folder` as 1.x's web UI did.
async fn upload_tls(
    api: &Api,
    token: &str,
    certificate: &str,
    folder: &str,
    file: Option<&Path>,
) -> (u16, Value) {
    let files: Vec<(&str, &Path)> = file.into_iter().map(|f| ("file", f)).collect();
    let (content_type, body) = support::portainer::multipart(&[], &files);
    let r = api
        .http
        .post(
            api.berth
                .url(&format!("/api/upload/tls/{certificate}?folder={folder}")),
        )
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A stack moved to another endpoint as 1.x did it (deployed there, then
/// removed where it was, keeping its id); an external stack (deployed
/// with the docker CLI) removed as `docker stack rm` would; TLS files
/// uploaded for an endpoint and taken by its next update, the engine
/// pinged with them first.
#[tokio::test(flavor = "multi_thread")]
async fn stacks_migrate_external_stacks_go_and_tls_files_upload() {
    let Some(engine) = docker::shared() else {
        return;
    };
    engine.swarm_init();
    let swarm_id = serde_json::from_str::<Value>(&engine.get("/swarm").unwrap().1).unwrap()["ID"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(dir.path(), engine);
    let (token, local, remote) = support::portainer::admin_with_endpoints(&api.berth, engine).await;
    let t = Some(token.as_str());
    let (_, user_token) = api.user(&token, "mia").await;
    let u = Some(user_token.as_str());

    let (status, stack) = api
        .call(
            t,
            "POST",
            &format!("/api/stacks?method=string&type=1&endpointId={local}"),
            Some(json!({ "Name": "mig", "SwarmID": swarm_id, "StackFileContent": SMALL_SWARM_STACK })),
        )
        .await;
    assert_eq!(status, 200, "{stack}");
    let id = stack["Id"].as_u64().unwrap();
    let migrate = format!("/api/stacks/{id}/migrate");
    let (status, refused) = api
        .call(t, "POST", &migrate, Some(json!({ "endpointid": 0 })))
        .await;
    assert_eq!(
        (status, refused["details"].as_str()),
        (
            400,
            Some("Invalid endpoint identifier. Must be a positive number")
        ),
        "{refused}"
    );
    let (status, _) = api
        .call(t, "POST", &migrate, Some(json!({ "EndpointID": 99 })))
        .await;
    assert_eq!(status, 404);
    assert_eq!(
        api.call(u, "POST", &migrate, Some(json!({ "EndpointID": remote })))
            .await
            .0,
        403,
        "not mia's stack"
    );
    // Both endpoints reach one engine: the same name there is refused.
    let (status, same) = api
        .call(t, "POST", &migrate, Some(json!({ "EndpointID": remote })))
        .await;
    assert_eq!(status, 409, "{same}");
    assert_eq!(swarm_services(engine, "mig"), ["mig_app"]);
    let (status, moved) = api
        .call(
            t,
            "POST",
            &migrate,
            Some(json!({ "endpointID": remote, "swarmID": swarm_id, "name": "mig2" })),
        )
        .await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(
        (
            moved["Id"].clone(),
            moved["Name"].clone(),
            moved["EndpointId"].clone()
        ),
        (json!(id), json!("mig2"), json!(remote)),
        "{moved}"
    );
    assert_eq!(swarm_services(engine, "mig2"), ["mig2_app"]);
    assert!(
        swarm_services(engine, "mig").is_empty(),
        "the old one is gone"
    );
    let (_, listed) = api.call(t, "GET", "/api/stacks", None).await;
    assert_eq!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["Id"] == id)
            .count(),
        1,
        "{listed}"
    );
    let (_, file) = api
        .call(t, "GET", &format!("/api/stacks/{id}/file"), None)
        .await;
    assert_eq!(file["StackFileContent"], SMALL_SWARM_STACK);

    // An external stack: deployed by the docker CLI, removed by name.
    let out = engine.cli(&[
        "service",
        "create",
        "--detach",
        "--name",
        "ext_app",
        "--label",
        "com.docker.stack.namespace=ext",
        "busybox:latest",
        "sleep",
        "100000",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let external = format!("/api/stacks/ext?external=true&endpointId={local}");
    let (status, body) = api.call(u, "DELETE", &external, None).await;
    assert_eq!(
        (status, body["err"].as_str()),
        (401, Some("Permission denied to delete the stack")),
        "{body}"
    );
    let (status, body) = api
        .call(
            t,
            "DELETE",
            "/api/stacks/mig2?external=true&endpointId=1",
            None,
        )
        .await;
    assert_eq!(
        status, 400,
        "a stack Portainer keeps is not external: {body}"
    );
    let (status, body) = api
        .call(t, "DELETE", "/api/stacks/ext?external=true", None)
        .await;
    assert_eq!(
        (status, body["err"].as_str()),
        (400, Some("Invalid query parameter: endpointId"))
    );
    assert_eq!(api.call(t, "DELETE", &external, None).await.0, 204);
    assert!(swarm_services(engine, "ext").is_empty());
    assert_eq!(
        api.call(t, "DELETE", &external, None).await.0,
        404,
        "nothing left"
    );
    assert_eq!(
        api.call(t, "DELETE", &format!("/api/stacks/{id}"), None)
            .await
            .0,
        204
    );
    assert!(swarm_services(engine, "mig2").is_empty());

    // TLS files: checked, kept for the endpoint, taken by its update.
    let tls = engine.tls.as_ref().unwrap();
    let folder = remote.to_string();
    for (certificate, folder, file, err) in [
        (
            "pem",
            folder.as_str(),
            Some(tls.ca.as_path()),
            "Invalid certificate route value. Value must be one of: ca, cert or key",
        ),
        (
            "ca",
            "",
            Some(tls.ca.as_path()),
            "Invalid query parameter: folder",
        ),
        (
            "ca",
            folder.as_str(),
            None,
            "Invalid certificate file. Ensure that the file is uploaded correctly",
        ),
    ] {
        let (status, body) = upload_tls(&api, &token, certificate, folder, file).await;
        assert_eq!((status, body["err"].as_str()), (400, Some(err)), "{body}");
    }
    assert_eq!(
        upload_tls(&api, &user_token, "ca", &folder, Some(&tls.ca))
            .await
            .0,
        403
    );
    let info = format!("/api/endpoints/{remote}/docker/info");
    let update = format!("/api/endpoints/{remote}");
    // TLS off: the engine only speaks TLS, so the probe fails and the
    // endpoint stays as it was.
    let (status, body) = api
        .call(t, "PUT", &update, Some(json!({ "TLS": false })))
        .await;
    assert_eq!(
        (status, body["err"].as_str()),
        (500, Some("Unable to ping Docker environment")),
        "{body}"
    );
    assert_eq!(api.call(t, "GET", &info, None).await.0, 200);
    // A wrong CA (the client certificate) fails the probe too.
    assert_eq!(
        upload_tls(&api, &token, "ca", &folder, Some(&tls.cert))
            .await
            .0,
        200
    );
    let (status, body) = api
        .call(t, "PUT", &update, Some(json!({ "TLS": true })))
        .await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(api.call(t, "GET", &info, None).await.0, 200);
    // The right files are taken.
    for (certificate, file) in [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)] {
        assert_eq!(
            upload_tls(&api, &token, certificate, &folder, Some(file))
                .await
                .0,
            200
        );
    }
    let (status, body) = api
        .call(
            t,
            "PUT",
            &update,
            Some(json!({ "tls": true, "TLSSkipVerify": false })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["TLSConfig"]["TLS"], true);
    assert_eq!(api.call(t, "GET", &info, None).await.0, 200);
    let (status, body) = api
        .call(
            t,
            "PUT",
            &format!("/api/endpoints/{local}"),
            Some(json!({ "TLS": true })),
        )
        .await;
    assert_eq!(
        (status, body["details"].as_str()),
        (400, Some("TLS applies to tcp:// endpoints only"))
    );
}

/// A registry that asks for Basic credentials and has no images: it
/// records the `Authorization` of every request that brings one.
async fn fake_registry() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let port = serve_http(move |head| {
        if !head.starts_with("GET ") && !head.starts_with("HEAD ") {
            // A TLS hello first: the engine then tries plain HTTP.
            return None;
        }
        let auth = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("authorization")
                .then(|| v.trim().to_string())
        });
        let registry = "docker-distribution-api-version: registry/2.0\r\n";
        Some(match auth {
            None => http_response(
                "401 Unauthorized",
                &format!("www-authenticate: Basic realm=\"berth-test\"\r\n{registry}"),
                "",
            ),
            Some(auth) => {
                record.lock().unwrap().push(auth);
                http_response(
                    "404 Not Found",
                    &format!("content-type: application/json\r\n{registry}"),
                    r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
                )
            }
        })
    })
    .await;
    (port, seen)
}

/// Pulls through the Docker proxy name a registry (`X-Registry-Auth`:
/// `{"registryId": N}`, as 1.x's web UI sent it) and the engine gets that
/// registry's credentials, if the user may use the registry.
#[tokio::test(flavor = "multi_thread")]
async fn pulls_through_the_proxy_carry_a_registrys_credentials() {
    let Some(engine) = docker::shared() else {
        return;
    };
    let (port, seen) = fake_registry().await;
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(dir.path(), engine);
    let token = api.admin().await;
    let t = Some(token.as_str());
    let local = endpoint(&api, t).await;
    let (user_id, user_token) = api.user(&token, "reg").await;
    let address = format!("127.0.0.1:{port}");
    let (status, registry) = api
        .call(
            t,
            "POST",
            "/api/registries",
            Some(json!({
                "Name": "private", "Type": 3, "URL": address,
                "Authentication": true, "Username": "puller", "Password": "s3cret",
            })),
        )
        .await;
    assert_eq!(status, 200, "{registry}");
    let registry_id = registry["Id"].as_u64().unwrap();
    let (status, _) = api
        .call(
            t,
            "PUT",
            &format!("/api/endpoints/{local}/access"),
            Some(json!({ "AuthorizedUsers": [user_id] })),
        )
        .await;
    assert_eq!(status, 200);
    let names = |id: Value| {
        base64::engine::general_purpose::URL_SAFE.encode(json!({ "registryId": id }).to_string())
    };
    let pull = |token: String, header: Option<String>| {
        let request = api
            .http
            .post(api.berth.url(&format!(
                "/api/endpoints/{local}/docker/images/create?fromImage={address}/app&tag=1"
            )))
            .bearer_auth(token);
        let request = match header {
            Some(h) => request.header("x-registry-auth", h),
            None => request,
        };
        async move {
            let r = request.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("puller:s3cret")
    );

    // Anonymous: the registry sees no credentials; the engine says so.
    let (_, text) = pull(token.clone(), None).await;
    assert!(text.contains("no basic auth credentials"), "{text}");
    assert!(seen.lock().unwrap().is_empty());
    // Named by id: the engine brings the registry's credentials, and gets
    // as far as the registry's own answer (it has no images).
    let (_, text) = pull(token.clone(), Some(names(json!(registry_id)))).await;
    assert!(text.contains("manifest unknown"), "{text}");
    assert!(
        seen.lock().unwrap().contains(&expected),
        "{:?}: {text}",
        seen.lock().unwrap()
    );
    // A user not given the registry may not use it; an unknown one is 404.
    let (status, text) = pull(user_token.clone(), Some(names(json!(registry_id)))).await;
    assert_eq!(status, 403, "{text}");
    let (status, text) = pull(token.clone(), Some(names(json!(registry_id + 10)))).await;
    assert_eq!(status, 404, "{text}");
    let (status, text) = pull(token.clone(), Some(names(json!("one")))).await;
    assert_eq!(status, 400, "{text}");
    // Given it, the user pulls with its credentials too.
    seen.lock().unwrap().clear();
    let (status, _) = api
        .call(
            t,
            "PUT",
            &format!("/api/registries/{registry_id}/access"),
            Some(json!({ "AuthorizedUsers": [user_id] })),
        )
        .await;
    assert_eq!(status, 200);
    let (_, text) = pull(user_token.clone(), Some(names(json!(registry_id)))).await;
    assert!(text.contains("manifest unknown"), "{text}");
    assert!(
        seen.lock().unwrap().contains(&expected),
        "{:?}: {text}",
        seen.lock().unwrap()
    );

    // `portainer-api-client` from npm, unmodified, runs its README's
    // example: the registry sent back with new credentials, which the
    // next pull brings.
    let Some(modules) = support::portainer_node_client() else {
        return;
    };
    let mut session = std::process::Command::new("node");
    session.arg(support::script("js/portainer_api_client_session.js"));
    session.args([api.berth.url("").as_str(), "rotated", "n3w-secret"]);
    session.env("NODE_PATH", modules);
    support::client_session(session, "the portainer-api-client session").await;
    seen.lock().unwrap().clear();
    let (_, text) = pull(token.clone(), Some(names(json!(registry_id)))).await;
    assert!(text.contains("manifest unknown"), "{text}");
    let rotated = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("rotated:n3w-secret")
    );
    let seen = seen.lock().unwrap();
    assert!(
        !seen.is_empty() && seen.iter().all(|a| *a == rotated),
        "{seen:?}: {text}"
    );
}

/// `portainer` 0.1b0 from PyPI, a client of Portainer 1.15's API,
/// unmodified (`tests/py/portainer_015_session.py`): its endpoint is made
/// with `TLS` and JSON, without files, which it uploads afterwards as
/// 1.15 took them; until they are all there the endpoint waits (503 on
/// its proxy), then its engine answers.
#[tokio::test(flavor = "multi_thread")]
async fn a_1_15_client_makes_a_tls_endpoint_and_uploads_its_files() {
    let Some(engine) = docker::shared() else {
        return;
    };
    let Some(python) = support::portainer_clients() else {
        return;
    };
    let tls = engine.tls.as_ref().expect("the private engine serves TLS");
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(dir.path(), engine);
    let token = api.admin().await;
    let t = Some(token.as_str());

    // Waiting for its files, an endpoint is not used.
    let (status, waiting) = api
        .call(
            t,
            "POST",
            "/api/endpoints",
            Some(json!({ "Name": "waiting", "URL": tls.address, "TLS": true })),
        )
        .await;
    assert_eq!(
        (status, waiting["Status"].clone()),
        (200, json!(2)),
        "{waiting}"
    );
    let (status, body) = api
        .call(
            t,
            "GET",
            &format!("/api/endpoints/{}/docker/info", waiting["Id"]),
            None,
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["details"]
            .as_str()
            .unwrap()
            .contains("/api/upload/tls"),
        "{body}"
    );

    let mut session = std::process::Command::new(python);
    session.arg(support::script("py/portainer_015_session.py"));
    session.args([api.berth.url(""), tls.address.clone()]);
    session.args([&tls.ca, &tls.cert, &tls.key]);
    let stdout = support::client_session(session, "the portainer 0.1b0 session").await;
    let id = stdout.trim().rsplit(' ').next().unwrap();
    let (status, info) = api
        .call(t, "GET", &format!("/api/endpoints/{id}/docker/info"), None)
        .await;
    assert_eq!(status, 200, "{info}");
    assert!(info["ID"].is_string(), "{info}");
}

/// 1.x's host jobs (a script in a privileged container on the endpoint's
/// host), its built-in roles, and what Community Edition without
/// extensions or LDAP answers, in Portainer's shape.
#[tokio::test(flavor = "multi_thread")]
async fn host_jobs_roles_and_what_community_edition_lacks() {
    let Some(engine) = docker::shared() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(dir.path(), engine);
    let token = api.admin().await;
    let t = Some(token.as_str());
    let (_, user_token) = api.user(&token, "jo").await;
    let u = Some(user_token.as_str());
    let local = endpoint(&api, t).await;

    let (status, roles) = api.call(t, "GET", "/api/roles", None).await;
    assert_eq!(status, 200, "{roles}");
    let names: Vec<&str> = roles
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["Name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "Endpoint administrator",
            "Helpdesk",
            "Standard user",
            "Read-only user"
        ]
    );
    assert_eq!(api.call(u, "GET", "/api/roles", None).await.0, 403);
    for (method, path, status) in [
        ("GET", "/api/extensions/1", 404),
        ("POST", "/api/extensions", 405),
        ("PUT", "/api/extensions/1", 405),
        ("DELETE", "/api/extensions/1", 405),
        ("PUT", "/api/settings/authentication/checkLDAP", 405),
    ] {
        let (got, body) = api.call(t, method, path, Some(json!({}))).await;
        assert_eq!(got, status, "{method} {path}: {body}");
        assert!(body["err"].is_string(), "{body}");
    }

    // Host jobs: checked as 1.x did, then run.
    let job = format!("/api/endpoints/{local}/job");
    for (query, body, err) in [
        ("", json!({}), "Invalid query parameter: method"),
        (
            "?method=shell",
            json!({}),
            "Invalid value for query parameter: method. Value must be one of: string or file",
        ),
        (
            "?method=string",
            json!({ "image": "busybox:latest" }),
            "Invalid request payload",
        ),
    ] {
        let (status, answer) = api
            .call(t, "POST", &format!("{job}{query}"), Some(body))
            .await;
        assert_eq!(
            (status, answer["err"].as_str()),
            (400, Some(err)),
            "{answer}"
        );
    }
    assert_eq!(
        api.call(
            u,
            "POST",
            &format!("{job}?method=string"),
            Some(json!({ "image": "busybox:latest", "fileContent": "true" })),
        )
        .await
        .0,
        403
    );
    // A job's container is made privileged with the host's root at
    // /host and given the script, then started. An engine that may not
    // start privileged containers (this sandbox refuses their
    // capabilities) makes that last step the job's 500, with its reason.
    let started = |(status, answer): (u16, Value)| {
        let refused = answer["details"].as_str().unwrap_or_default();
        assert!(
            status == 204
                || (status == 500 && refused.contains("/start") && refused.contains("caps")),
            "{status} {answer}"
        );
    };
    started(
        api.call(
            t,
            "POST",
            &format!("{job}?method=string"),
            Some(json!({ "Image": "busybox:latest", "FileContent": "echo string-job\n" })),
        )
        .await,
    );
    let script = dir.path().join("job.sh");
    std::fs::write(&script, "echo file-job\n").unwrap();
    let (content_type, form) =
        support::portainer::multipart(&[("Image", "busybox:latest")], &[("File", &script)]);
    let r = api
        .http
        .post(api.berth.url(&format!("{job}?method=file")))
        .bearer_auth(&token)
        .header("content-type", content_type)
        .body(form)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    started((status, r.json().await.unwrap_or(Value::Null)));
    let (status, answer) = api
        .call(
            t,
            "POST",
            &format!("{job}?method=string"),
            Some(json!({ "Image": "no-such-image:1", "FileContent": "true" })),
        )
        .await;
    assert_eq!(
        (status, answer["err"].as_str()),
        (500, Some("Failed executing job")),
        "{answer}"
    );

    // The jobs' containers, marked with the endpoint, hold their scripts.
    let filters = support::docker::urlencode(&format!(
        "{{\"label\":[\"io.portainer.job.endpoint={local}\"]}}"
    ));
    let (_, body) = engine
        .get(&format!("/containers/json?all=1&filters={filters}"))
        .unwrap();
    let list: Value = serde_json::from_str(&body).unwrap();
    let mut scripts = Vec::new();
    for c in list.as_array().unwrap() {
        let id = c["Id"].as_str().unwrap();
        let made = engine.inspect(id).unwrap();
        assert_eq!(made["HostConfig"]["Privileged"], true, "{made}");
        assert_eq!(made["HostConfig"]["Binds"][0], "/:/host", "{made}");
        assert_eq!(made["Config"]["Cmd"], json!(["sh", "/tmp/script.sh"]));
        let (status, tar) = engine
            .get(&format!("/containers/{id}/archive?path=/tmp/script.sh"))
            .unwrap();
        assert_eq!(status, 200);
        scripts.push(tar);
        engine.cli(&["rm", "-f", id]);
    }
    assert_eq!(scripts.len(), 2, "{list}");
    assert!(scripts.iter().any(|t| t.contains("echo string-job")));
    assert!(scripts.iter().any(|t| t.contains("echo file-job")));
}
