//! The `beacons` plugin (Lighthouse API v0.2) end to end: real berth
//! processes, one acting as Lighthouse and another as a beacon in front of
//! the test Docker engine, driven over HTTP with a session cookie as a
//! browser or script would.

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use support::docker;
use support::{Berth, client};

const API: &str = "/api/v0.2";

/// A Lighthouse client for one user: its session cookie.
struct Session<'a> {
    berth: &'a Berth,
    http: reqwest::Client,
    cookie: String,
}

/// `berth run beacons create-admin EMAIL [--level N]`: the printed password.
fn create_admin(berth: &Berth, email: &str, level: Option<&str>) -> String {
    let mut args = vec!["run", "beacons", "create-admin", email];
    if let Some(level) = level {
        args.extend(["--level", level]);
    }
    berth.cli_line(&args, "password: ")
}

async fn send(
    http: &reqwest::Client,
    berth: &Berth,
    method: &str,
    path: &str,
    cookie: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = http.request(method, berth.url(&format!("{API}{path}")));
    if !cookie.is_empty() {
        req = req.header("cookie", cookie);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.unwrap()
}

async fn status_json(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

impl<'a> Session<'a> {
    /// Create the admin with `berth run beacons create-admin` and sign in.
    async fn admin(berth: &'a Berth) -> Session<'a> {
        Session::login(berth, "admin", &create_admin(berth, "admin", None)).await
    }

    async fn login(berth: &'a Berth, email: &str, password: &str) -> Session<'a> {
        let http = client();
        let r = send(
            &http,
            berth,
            "POST",
            "/login",
            "",
            Some(json!({ "Email": email, "Password": password })),
        )
        .await;
        assert_eq!(r.status(), 200, "login of {email}");
        let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict"),
            "{set}"
        );
        let cookie = set.split(';').next().unwrap().to_string();
        Session {
            berth,
            http,
            cookie,
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        status_json(send(&self.http, self.berth, method, path, &self.cookie, body).await).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None).await
    }

    /// How many items `GET path` lists.
    async fn count(&self, path: &str) -> usize {
        let (status, list) = self.get(path).await;
        assert_eq!(status, 200, "{path}: {list}");
        list.as_array()
            .unwrap_or_else(|| panic!("{path}: {list}"))
            .len()
    }

    async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("PUT", path, Some(body)).await
    }

    /// A streamed operation: every progress object, checked to arrive as
    /// newline-delimited JSON ending with `{"Status":"Finalized"}`, and how
    /// many separate reads delivered them.
    async fn stream(&self, method: &str, path: &str, body: Option<Value>) -> (Vec<Value>, usize) {
        let r = send(&self.http, self.berth, method, path, &self.cookie, body).await;
        assert_eq!(r.status(), 200, "{path}: {}", r.text().await.unwrap());
        assert_eq!(r.headers()["content-type"], "application/x-ndjson");
        let mut chunks = r.bytes_stream();
        let mut text = String::new();
        let mut reads = 0;
        let deadline = Instant::now() + Duration::from_secs(120);
        while let Some(chunk) = tokio::time::timeout_at(deadline.into(), chunks.next())
            .await
            .expect("the progress stream ended within 120 s")
        {
            text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
            reads += 1;
        }
        assert!(text.ends_with('\n'), "{text}");
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(
            lines.last(),
            Some(&json!({ "Status": "Finalized" })),
            "{text}"
        );
        (lines, reads)
    }
}

/// A deploy to one instance with start: clear `NAME_tmp`, create it,
/// remove the old `NAME`, rename, start.
const FULL_DEPLOY: [&str; 8] = [
    "Starting",
    "OK",
    "OK",
    "OK",
    "OK",
    "OK",
    "Complete",
    "Finalized",
];

fn statuses(lines: &[Value]) -> Vec<&str> {
    lines
        .iter()
        .map(|l| l["Status"].as_str().unwrap())
        .collect()
}

/// Users and AuthLevels as the seed's examples give them: admin (2),
/// manager (1) and employee (0), every user route both ways.
#[tokio::test(flavor = "multi_thread")]
async fn authlevels_follow_the_seed() {
    let dir = tempfile::tempdir().unwrap();
    // No Docker needed: the beacon used here is this host's own agent.
    let berth = Berth::start(
        dir.path(),
        "[docker]\nlocal = \"unix:///nonexistent.sock\"\n",
    );
    let http = client();

    // Without a session: 401 on every route family, in Lighthouse's format.
    for (method, path) in [
        ("GET", "/users/list"),
        ("GET", "/beacons/list"),
        ("GET", "/applications/list"),
        ("PUT", "/aliases/x"),
        ("GET", "/d/local/local/info"),
        ("GET", "/no/such/route"),
    ] {
        let (status, body) = status_json(send(&http, &berth, method, path, "", None).await).await;
        assert_eq!(status, 401, "{method} {path}");
        assert_eq!(body, json!({ "Cause": "auth", "Message": "not logged in" }));
    }
    let forged = "lighthouse_session=00112233";
    let (status, _) =
        status_json(send(&http, &berth, "GET", "/users/list", forged, None).await).await;
    assert_eq!(status, 401);

    let admin_pw = create_admin(&berth, "admin", None);
    let (status, body) = status_json(
        send(
            &http,
            &berth,
            "POST",
            "/login",
            "",
            Some(json!({ "Email": "admin", "Password": "nope" })),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, body),
        (
            401,
            json!({ "Cause": "auth", "Message": "email or password incorrect" })
        )
    );
    let admin = Session::login(&berth, "admin", &admin_pw).await;

    // Admin makes the manager; the manager makes the employee.
    assert_eq!(
        admin
            .call(
                "POST",
                "/users/create",
                Some(json!({ "Email": "manager", "Password": "m" }))
            )
            .await
            .0,
        200
    );
    assert_eq!(
        admin
            .put("/users/manager", json!({ "AuthLevel": 1 }))
            .await
            .0,
        200
    );
    assert_eq!(
        admin
            .put("/users/manager", json!({ "AuthLevel": 3 }))
            .await
            .0,
        403,
        "above the admin's own"
    );
    let manager = Session::login(&berth, "manager", "m").await;
    let (status, body) = manager
        .call(
            "POST",
            "/users/create",
            Some(json!({ "Email": "employee", "Password": "e" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = manager
        .call(
            "POST",
            "/users/create",
            Some(json!({ "Email": "employee", "Password": "e2" })),
        )
        .await;
    assert_eq!(
        (status, body["Cause"].as_str()),
        (400, Some("users")),
        "duplicate"
    );
    assert_eq!(
        manager
            .call(
                "POST",
                "/users/create",
                Some(json!({ "Email": "", "Password": "x" }))
            )
            .await
            .0,
        400
    );
    assert_eq!(
        manager
            .call("POST", "/users/create", Some(json!({ "Email": "x" })))
            .await
            .0,
        400
    );
    let employee = Session::login(&berth, "employee", "e").await;

    // The seed's examples, made by the manager.
    let (status, mut list) = manager.get("/users/list").await;
    assert_eq!(status, 200);
    list.as_array_mut().unwrap().sort_by_key(|v| v.to_string());
    assert_eq!(list, json!(["employee", "manager"]));
    assert_eq!(
        manager.get("/users/employee").await,
        (
            200,
            json!({ "AuthLevel": 0, "Permissions": { "Beacons": {} } })
        )
    );
    assert_eq!(manager.get("/users/admin").await.0, 404);
    assert_eq!(manager.get("/users/nobody").await.0, 404);
    assert_eq!(
        manager
            .put("/users/admin", json!({ "Password": "x" }))
            .await
            .0,
        404
    );

    // Both ways for each level.
    assert_eq!(admin.count("/users/list").await, 3);
    assert_eq!(
        employee.get("/users/list").await,
        (200, json!(["employee"]))
    );
    assert_eq!(employee.get("/users/manager").await.0, 404);
    assert_eq!(employee.get("/users/employee").await.0, 200);
    assert_eq!(
        employee
            .call(
                "POST",
                "/users/create",
                Some(json!({ "Email": "intern", "Password": "i" }))
            )
            .await
            .0,
        403
    );
    assert_eq!(
        employee
            .put("/users/employee", json!({ "AuthLevel": 1 }))
            .await
            .0,
        403,
        "no raising yourself"
    );
    assert_eq!(
        employee
            .put("/users/manager", json!({ "AuthLevel": 0 }))
            .await
            .0,
        404
    );
    assert_eq!(
        manager
            .put("/users/employee", json!({ "AuthLevel": 2 }))
            .await
            .0,
        403
    );
    assert_eq!(
        manager
            .put("/users/employee", json!({ "AuthLevel": -1 }))
            .await
            .0,
        400
    );
    assert_eq!(
        manager
            .put("/users/employee", json!({ "Password": "" }))
            .await
            .0,
        400
    );
    assert_eq!(
        manager
            .put("/users/employee", json!({ "AuthLevl": 0 }))
            .await
            .0,
        400,
        "unknown field"
    );

    // A beacon to hand out levels on: this host's own agent.
    let token = String::from_utf8(berth.cli(&["run", "beacons", "agent-token"]).stdout).unwrap();
    let (status, body) = admin
        .call(
            "POST",
            "/beacons/create",
            Some(json!({ "Address": "local", "Token": "wrong", "Alias": "here" })),
        )
        .await;
    assert_eq!(
        (status, body["Cause"].as_str()),
        (500, Some("beacon")),
        "{body}"
    );
    assert_eq!(
        admin.get("/beacons/list").await,
        (200, json!([])),
        "nothing half-created"
    );
    let (status, body) = admin
        .call(
            "POST",
            "/beacons/create",
            Some(json!({ "Address": "local", "Token": token.trim(), "Alias": "here" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        admin.get("/beacons/list").await,
        (200, json!([{ "Alias": "here", "Address": "local" }]))
    );
    let (status, body) = admin
        .call(
            "POST",
            "/beacons/create",
            Some(json!({ "Address": "local", "Token": token.trim(), "Alias": "again" })),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        admin
            .call(
                "POST",
                "/beacons/create",
                Some(json!({ "Address": "x", "Token": "t" }))
            )
            .await
            .0,
        400,
        "no Alias"
    );
    assert_eq!(
        admin
            .call(
                "POST",
                "/beacons/create",
                Some(json!({ "Alias": "y", "Token": "t" }))
            )
            .await
            .0,
        400,
        "no Address"
    );

    // The seed's grant to an unknown beacon.
    let (status, body) = admin
        .call("PUT", "/beacons/user/bad_docker_address/employee", None)
        .await;
    assert_eq!(
        (status, body["Message"].as_str()),
        (400, Some("databases: given key not found"))
    );

    // Resource levels: modify needed, never above your own, owners by owners.
    assert_eq!(
        manager
            .put("/users/employee", json!({ "Beacons": { "here": 0 } }))
            .await
            .0,
        403,
        "manager has no level"
    );
    assert_eq!(
        admin
            .put("/users/manager", json!({ "Beacons": { "here": 1 } }))
            .await
            .0,
        200
    );
    assert_eq!(
        manager.get("/users/manager").await.1,
        json!({ "AuthLevel": 1, "Permissions": { "Beacons": { "local": 1 } } })
    );
    assert_eq!(
        manager
            .put("/users/employee", json!({ "Beacons": { "local": 2 } }))
            .await
            .0,
        403
    );
    assert_eq!(
        manager
            .put("/users/employee", json!({ "Beacons": { "local": -2 } }))
            .await
            .0,
        400
    );
    let (status, body) = manager
        .put(
            "/users/employee",
            json!({ "Beacons": { "127.0.0.1:5002": 2, "192.168.1.100": -1 } }),
        )
        .await;
    assert_eq!(
        (status, body["Message"].as_str()),
        (400, Some("databases: given key not found"))
    );
    assert_eq!(
        manager
            .put("/users/employee", json!({ "Beacons": { "here": 1 } }))
            .await
            .0,
        200
    );
    assert_eq!(
        employee.get("/beacons/list").await,
        (200, json!([{ "Alias": "here", "Address": "local" }]))
    );
    assert_eq!(
        manager
            .put("/users/admin", json!({ "Beacons": { "here": -1 } }))
            .await
            .0,
        404
    );
    assert_eq!(
        admin
            .put("/users/employee", json!({ "Beacons": { "here": 2 } }))
            .await
            .0,
        200
    );
    assert_eq!(
        manager
            .put("/users/employee", json!({ "Beacons": { "here": -1 } }))
            .await
            .0,
        403,
        "an owner"
    );
    assert_eq!(
        admin
            .put("/users/employee", json!({ "Beacons": { "here": -1 } }))
            .await
            .0,
        200
    );
    assert_eq!(employee.get("/beacons/list").await, (200, json!([])));
    assert_eq!(
        employee.get("/beacons/list/here").await,
        (200, json!([])),
        "[] without access"
    );

    // The grant route: level in the body, default 0 (access).
    assert_eq!(
        manager
            .call("PUT", "/beacons/user/here/employee", None)
            .await
            .0,
        200
    );
    assert_eq!(
        employee.get("/users/employee").await.1["Permissions"]["Beacons"],
        json!({ "local": 0 })
    );
    assert_eq!(
        manager
            .call("PUT", "/beacons/user/here/employee", Some(json!(2)))
            .await
            .0,
        403
    );
    assert_eq!(
        manager
            .call("PUT", "/beacons/user/here/admin", Some(json!(0)))
            .await
            .0,
        404
    );

    // Token changes need modify.
    assert_eq!(
        employee.put("/beacons/token/here", json!("stolen")).await.0,
        403
    );
    assert_eq!(manager.put("/beacons/token/here", json!("")).await.0, 400);
    assert_eq!(
        manager
            .put("/beacons/token/here", json!(token.trim()))
            .await
            .0,
        200
    );

    // Instances, with aliases.
    let (status, instances) = employee.get("/beacons/list/here").await;
    assert_eq!(status, 200);
    assert_eq!(
        instances,
        json!([{
            "Alias": "here.local", "InstanceAddress": "local/local", "Name": "local",
            "CanAccessDocker": false, "BeaconAddress": "local"
        }])
    );
    assert_eq!(
        employee.put("/aliases/boot2docker", json!("")).await.0,
        400,
        "the seed's empty alias"
    );
    assert_eq!(
        employee
            .put("/aliases/boot2docker", json!("local/local"))
            .await
            .0,
        200
    );
    assert_eq!(
        employee
            .put("/aliases/boot2docker", json!("10.0.0.1/nothing"))
            .await
            .0,
        400
    );
    assert_eq!(
        admin
            .put("/users/employee", json!({ "Beacons": { "here": -1 } }))
            .await
            .0,
        200
    );
    assert_eq!(
        employee
            .put("/aliases/boot2docker", json!("local/local"))
            .await
            .0,
        403
    );
    assert_eq!(employee.get("/d/boot2docker/info").await.0, 403);

    // The password change from the seed; logout ends the session.
    assert_eq!(
        manager
            .put(
                "/users/employee",
                json!({ "AuthLevel": 1, "Password": "updated password" })
            )
            .await
            .0,
        200
    );
    assert_eq!(
        manager.get("/users/employee").await.0,
        404,
        "equal levels cannot see each other"
    );
    let employee = Session::login(&berth, "employee", "updated password").await;
    assert_eq!(employee.get("/users/employee").await.1["AuthLevel"], 1);
    assert_eq!(employee.get("/logout").await.0, 200);
    assert_eq!(employee.get("/users/list").await.0, 401);

    // Sessions and users survive a restart.
    let cookie = admin.cookie.clone();
    let mut berth = berth;
    assert!(berth.stop());
    let berth = Berth::start(
        dir.path(),
        "[docker]\nlocal = \"unix:///nonexistent.sock\"\n",
    );
    let admin = Session {
        berth: &berth,
        http: client(),
        cookie,
    };
    assert_eq!(admin.count("/users/list").await, 3);
    assert_eq!(
        admin.get("/beacons/list").await.1,
        json!([{ "Alias": "here", "Address": "local" }])
    );

    // Failed logins from one address are throttled (5 a minute by
    // default): then even the right password gets 429. A new minute may
    // start mid-way, which resets the count; then try again.
    let login = |password: &str| {
        let body = json!({ "Email": "admin", "Password": password });
        let (http, berth) = (&http, &berth);
        async move { status_json(send(http, berth, "POST", "/login", "", Some(body)).await).await }
    };
    let minute = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 60
    };
    let mut checked = false;
    for _ in 0..3 {
        let start = minute();
        let mut statuses = Vec::new();
        while statuses.last() != Some(&429) && statuses.len() < 12 {
            statuses.push(login("wrong").await.0);
        }
        let right = login(&admin_pw).await;
        if minute() == start {
            assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
            assert!(
                statuses[..statuses.len() - 1].iter().all(|s| *s == 401),
                "{statuses:?}"
            );
            assert_eq!(right.0, 429);
            assert_eq!(right.1["Cause"], "auth");
            checked = true;
            break;
        }
    }
    assert!(
        checked,
        "three minutes turned over during the throttling check"
    );
}

/// Lighthouse on host A, a beacon on host B in front of the test engine:
/// register, list, pass Docker calls through, deploy, update, revert,
/// stop, start.
#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_of_two_berths_deploys_through_a_beacon() {
    let Some(engine) = docker::shared() else {
        return;
    };
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let beacon_b = Berth::start(
        dir_b.path(),
        &format!(
            "[docker]\nlocal = \"{}\"\n\n[plugins.beacons.settings]\ntoken = \"b-secret\"\n",
            engine.host
        ),
    );
    let lighthouse = Berth::start(
        dir_a.path(),
        &format!(
            "[docker]\nlocal = \"{}\"\n\n[http_out]\nallow = [\"127.0.0.1\"]\nallow_private = [\"127.0.0.1\"]\n\n[plugins.beacons.settings]\nstop_timeout_secs = 1\n",
            engine.host
        ),
    );
    let b_address = beacon_b.url.trim_start_matches("http://").to_string();
    let admin = Session::admin(&lighthouse).await;

    // The agent on B checks its token.
    let http = client();
    let vms = http
        .get(beacon_b.url("/vms"))
        .header("token", "b-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(vms.status(), 200);
    assert_eq!(
        vms.json::<Value>().await.unwrap(),
        json!([{ "Name": "local", "Address": "local", "CanAccessDocker": true }])
    );
    let refused = http
        .get(beacon_b.url("/vms"))
        .header("token", "b-secreT")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let refused = http
        .get(beacon_b.url("/d/local/containers/json"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    // A wrong token and a beacon that is down: 500, nothing stored.
    let create =
        |address: &str, token: &str| json!({ "Address": address, "Token": token, "Alias": "b" });
    let (status, body) = admin
        .call("POST", "/beacons/create", Some(create(&b_address, "wrong")))
        .await;
    assert_eq!(
        (status, body["Cause"].as_str()),
        (500, Some("beacon")),
        "{body}"
    );
    assert!(
        body["Message"].as_str().unwrap().contains("answered 401"),
        "{body}"
    );
    let down = format!("127.0.0.1:{}", docker::free_port());
    let (status, body) = admin
        .call("POST", "/beacons/create", Some(create(&down, "b-secret")))
        .await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body["Message"]
            .as_str()
            .unwrap()
            .contains("cannot be reached"),
        "{body}"
    );
    assert_eq!(admin.get("/beacons/list").await, (200, json!([])));
    assert_eq!(admin.get("/beacons/list/b").await, (200, json!([])));
    assert_eq!(
        admin
            .put("/aliases/x", json!(format!("{b_address}/local")))
            .await
            .0,
        400,
        "no instance yet"
    );

    // Register B and list its instances.
    let (status, body) = admin
        .call(
            "POST",
            "/beacons/create",
            Some(create(&b_address, "b-secret")),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        admin.get("/beacons/list").await.1,
        json!([{ "Alias": "b", "Address": b_address }])
    );
    let instance = format!("{b_address}/local");
    let expected = json!([{
        "Alias": "b.local", "InstanceAddress": instance, "Name": "local",
        "CanAccessDocker": true, "BeaconAddress": b_address
    }]);
    assert_eq!(admin.get("/beacons/list/b").await, (200, expected.clone()));
    assert_eq!(
        admin
            .get(&format!("/beacons/list/{b_address}?refresh=true"))
            .await,
        (200, expected.clone())
    );
    assert_eq!(
        admin.call("PUT", "/beacons/refresh/b", None).await,
        (200, expected)
    );

    // Docker passthrough through B: by alias and by instance address.
    let (status, version) = admin.get("/d/b.local/version").await;
    assert_eq!(status, 200, "{version}");
    assert!(version["ApiVersion"].is_string(), "{version}");
    let (status, list) = admin
        .get(&format!("/d/{instance}/containers/json?all=1"))
        .await;
    assert_eq!(status, 200);
    assert!(list.is_array());
    let (status, body) = admin
        .get("/d/b.local/containers/no-such-container/json")
        .await;
    assert_eq!(
        (status, body["Cause"].as_str()),
        (404, Some("docker")),
        "{body}"
    );
    assert!(
        body["Message"]
            .as_str()
            .unwrap()
            .contains("no-such-container"),
        "{body}"
    );
    assert_eq!(admin.put("/aliases/web", json!(instance)).await.0, 200);
    assert_eq!(admin.get("/d/web/_ping").await, (200, json!("OK")));
    assert_eq!(admin.get("/d/nowhere/_ping").await.0, 404);

    // Deploy: the progress arrives line by line while the deploy runs.
    let name = format!("lighthouse-{}", std::process::id());
    let command = |cmd: &str| json!({ "Image": docker::IMAGE, "Cmd": ["sh", "-c", cmd] });
    let (lines, reads) = admin
        .stream(
            "POST",
            "/applications/create?start=true",
            Some(
                json!({ "Name": name, "Command": command("sleep 3600"), "Instances": ["b.local"] }),
            ),
        )
        .await;
    assert_eq!(statuses(&lines), FULL_DEPLOY, "{lines:?}");
    assert!(
        reads >= 3,
        "{reads} reads for {} lines: the stream was buffered",
        lines.len()
    );
    let create_line = &lines[2];
    assert_eq!(create_line["Method"], "POST");
    assert_eq!(create_line["Code"], 201);
    assert_eq!(create_line["Instance"], instance);
    assert_eq!(
        (create_line["Item"].as_u64(), create_line["Total"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(
        create_line["Endpoint"]
            .as_str()
            .unwrap()
            .starts_with("/containers/create?name=")
    );
    let running = |expected_cmd: &str| {
        let c = engine.inspect(&name).expect("the application's container");
        assert_eq!(c["Config"]["Cmd"], json!(["sh", "-c", expected_cmd]));
        assert_eq!(c["Config"]["Labels"]["berth.beacons.app"], json!(name));
        c["State"]["Running"].as_bool().unwrap()
    };
    assert!(running("sleep 3600"));
    assert!(engine.inspect(&format!("{name}_tmp")).is_none());

    let (status, apps) = admin.get("/applications/list").await;
    assert_eq!(status, 200);
    let app = &apps[0];
    assert_eq!(
        (app["Name"].as_str(), app["Instances"].clone()),
        (Some(name.as_str()), json!([instance]))
    );
    let first = app["CurrentDeployment"].as_u64().unwrap();

    // Errors before anything is queued.
    let bad = |body: Value| admin.call("POST", "/applications/create", Some(body));
    assert_eq!(
        bad(json!({ "Name": name, "Command": command("x"), "Instances": [] }))
            .await
            .0,
        400,
        "duplicate"
    );
    assert_eq!(
        bad(json!({ "Name": "n2", "Command": { "Cmd": ["x"] }, "Instances": [] }))
            .await
            .0,
        400,
        "no Image"
    );
    assert_eq!(
        bad(json!({ "Name": "n3", "Command": command("x"), "Instances": ["nowhere"] }))
            .await
            .0,
        400
    );
    assert_eq!(
        bad(json!({ "Name": "bad name", "Command": command("x") }))
            .await
            .0,
        400
    );
    assert_eq!(
        admin.call("POST", "/applications/start/nope", None).await.0,
        404
    );
    assert_eq!(
        admin
            .call(
                "POST",
                &format!("/applications/revert/{name}?target=99999"),
                None
            )
            .await
            .0,
        404
    );
    assert_eq!(
        admin
            .get(&format!("/applications/list/{name}?count=0"))
            .await
            .0,
        400
    );

    // Update to a new command: redeployed and restarted.
    let (lines, _) = admin
        .stream(
            "PUT",
            &format!("/applications/update/{name}"),
            Some(json!({ "Command": command("sleep 7200") })),
        )
        .await;
    assert_eq!(statuses(&lines).last(), Some(&"Finalized"));
    assert!(lines.iter().any(|l| l["Status"] == "Complete"), "{lines:?}");
    assert!(running("sleep 7200"));

    // History, newest first.
    let (status, history) = admin.get(&format!("/applications/list/{name}")).await;
    assert_eq!(status, 200);
    let versions: Vec<u64> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["Version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [2, 1]);
    assert_eq!(history[1]["Id"].as_u64(), Some(first));
    assert_eq!(history[0]["Creator"], "admin");
    assert_eq!(history[0]["Image"], docker::IMAGE);
    assert_eq!(
        admin
            .count(&format!("/applications/list/{name}?count=1"))
            .await,
        1
    );

    // Revert to the first deployment, then -1 (the one before that).
    let (lines, _) = admin
        .stream(
            "POST",
            &format!("/applications/revert/{name}?target={first}"),
            None,
        )
        .await;
    assert!(lines.iter().any(|l| l["Status"] == "Complete"), "{lines:?}");
    assert!(running("sleep 3600"));
    let (lines, _) = admin
        .stream(
            "PUT",
            &format!("/applications/revert/{name}?target=-1"),
            None,
        )
        .await;
    assert!(lines.iter().any(|l| l["Status"] == "Complete"), "{lines:?}");
    assert!(running("sleep 7200"));
    assert_eq!(admin.count(&format!("/applications/list/{name}")).await, 4);

    // Stop and start.
    let (lines, _) = admin
        .stream("POST", &format!("/applications/stop/{name}"), None)
        .await;
    assert_eq!(
        statuses(&lines),
        ["OK", "Complete", "Finalized"],
        "{lines:?}"
    );
    assert!(!running("sleep 7200"));
    let (lines, _) = admin
        .stream("POST", &format!("/applications/start/{name}"), None)
        .await;
    assert_eq!(
        statuses(&lines),
        ["OK", "Complete", "Finalized"],
        "{lines:?}"
    );
    assert!(running("sleep 7200"));

    // This host's own agent as a beacon: its instances go through the
    // docker capability and proxy-docker instead of http-out.
    let token =
        String::from_utf8(lighthouse.cli(&["run", "beacons", "agent-token"]).stdout).unwrap();
    let (status, body) = admin
        .call(
            "POST",
            "/beacons/create",
            Some(json!({ "Address": "local", "Token": token.trim(), "Alias": "a" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(admin.get("/d/a.local/_ping").await, (200, json!("OK")));
    let (status, body) = admin
        .get("/d/local/local/containers/no-such-container/json")
        .await;
    assert_eq!(status, 404, "{body}");
    let local_name = format!("{name}-local");
    let (lines, _) = admin
        .stream(
            "POST",
            "/applications/create?start=true&forcePull=true",
            Some(json!({ "Name": local_name, "Command": command("sleep 60"), "Instances": ["a.local"] })),
        )
        .await;
    // No registry is reachable here: the forced pull fails and nothing
    // is created.
    assert_eq!(
        statuses(&lines),
        ["Starting", "Error", "Failed", "Finalized"],
        "{lines:?}"
    );
    assert_eq!(
        lines[1]["Endpoint"],
        "/images/create?fromImage=busybox&tag=latest"
    );
    assert!(engine.inspect(&local_name).is_none());
    let (lines, _) = admin
        .stream(
            "PUT",
            &format!("/applications/update/{local_name}?restart=true"),
            Some(json!({})),
        )
        .await;
    assert_eq!(statuses(&lines), FULL_DEPLOY, "{lines:?}");
    assert_eq!(
        engine.inspect(&local_name).unwrap()["State"]["Running"],
        true
    );
    let (lines, _) = admin
        .stream("POST", &format!("/applications/stop/{local_name}"), None)
        .await;
    assert_eq!(
        statuses(&lines),
        ["OK", "Complete", "Finalized"],
        "{lines:?}"
    );
    assert_eq!(
        engine.inspect(&local_name).unwrap()["State"]["Running"],
        false
    );

    // Remove the instance (its container goes), then add it back.
    let update = format!("/applications/update/{local_name}");
    let (lines, _) = admin
        .stream("PUT", &update, Some(json!({ "Remove": ["a.local"] })))
        .await;
    assert_eq!(
        statuses(&lines),
        ["Starting", "OK", "Complete", "Finalized"],
        "{lines:?}"
    );
    assert_eq!(lines[1]["Method"], "DELETE");
    assert!(engine.inspect(&local_name).is_none());
    assert_eq!(
        admin.put(&update, json!({ "Remove": ["a.local"] })).await.0,
        400,
        "not an instance of it"
    );
    let (lines, _) = admin
        .stream(
            "PUT",
            &format!("{update}?restart=true"),
            Some(json!({ "Add": ["local/local"] })),
        )
        .await;
    assert_eq!(statuses(&lines), FULL_DEPLOY, "{lines:?}");
    assert_eq!(
        engine.inspect(&local_name).unwrap()["State"]["Running"],
        true
    );
    let (_, apps) = admin.get("/applications/list").await;
    assert_eq!(apps[1]["Instances"], json!(["local/local"]));
    engine.cli(&["rm", "-f", &local_name]);

    // Another user sees none of it until granted.
    assert_eq!(
        admin
            .call(
                "POST",
                "/users/create",
                Some(json!({ "Email": "dev", "Password": "d" }))
            )
            .await
            .0,
        200
    );
    let dev = Session::login(&lighthouse, "dev", "d").await;
    assert_eq!(dev.get("/applications/list").await, (200, json!([])));
    assert_eq!(
        dev.call("POST", &format!("/applications/stop/{name}"), None)
            .await
            .0,
        404
    );
    assert_eq!(dev.get("/d/b.local/_ping").await.0, 403);
    assert_eq!(
        admin
            .put("/users/dev", json!({ "Applications": { name.clone(): 0 } }))
            .await
            .0,
        200
    );
    assert_eq!(dev.count("/applications/list").await, 1);
    assert_eq!(
        dev.call("POST", &format!("/applications/stop/{name}"), None)
            .await
            .0,
        403,
        "access is not modify"
    );

    // The beacon goes down: a clear error, the application kept.
    let mut beacon_b = beacon_b;
    assert!(beacon_b.stop());
    let (status, body) = admin.call("PUT", "/beacons/refresh/b", None).await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body["Message"]
            .as_str()
            .unwrap()
            .contains("cannot be reached"),
        "{body}"
    );
    assert_eq!(admin.get("/d/b.local/_ping").await.1["Cause"], "control");
    let (lines, _) = admin
        .stream("POST", &format!("/applications/stop/{name}"), None)
        .await;
    assert_eq!(
        statuses(&lines),
        ["Error", "RollingBack", "Failed", "Finalized"],
        "{lines:?}"
    );
    assert_eq!(admin.count("/beacons/list/b").await, 1);

    engine.cli(&["rm", "-f", &name]);
}

/// One application on two instances behind one beacon (two engines): the
/// per-instance jobs run side by side and the stream ends once, after the
/// last; an instance whose engine is down fails alone.
#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_reaches_every_instance_and_reports_each() {
    let Some(engine) = docker::shared() else {
        return;
    };
    let Some(mut second) = docker::private() else {
        return;
    };
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let beacon_b = Berth::start(
        dir_b.path(),
        &format!(
            "[docker]\nlocal = \"{}\"\n\n[docker.endpoints.second]\naddress = \"{}\"\n\n\
             [plugins.beacons.settings]\ntoken = \"t\"\ninstances = \"local,second\"\n",
            engine.host, second.host
        ),
    );
    let lighthouse = Berth::start(
        dir_a.path(),
        "[http_out]\nallow = [\"127.0.0.1\"]\nallow_private = [\"127.0.0.1\"]\n",
    );
    let admin = Session::admin(&lighthouse).await;
    let b_address = beacon_b.url.trim_start_matches("http://").to_string();
    let (status, body) = admin
        .call(
            "POST",
            "/beacons/create",
            Some(json!({ "Address": b_address, "Token": "t", "Alias": "b" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(admin.count("/beacons/list/b").await, 2);

    let name = format!("pair-{}", std::process::id());
    // No network: the private engine shares the docker0 bridge.
    let command = |secs: &str| json!({ "Image": docker::IMAGE, "Cmd": ["sleep", secs], "HostConfig": { "NetworkMode": "none" } });
    let (lines, _) = admin
        .stream(
            "POST",
            "/applications/create?start=true",
            Some(json!({ "Name": name, "Command": command("600"), "Instances": ["b.local", "b.second"] })),
        )
        .await;
    let seen = statuses(&lines);
    assert_eq!(seen.first(), Some(&"Starting"), "{lines:?}");
    assert_eq!(
        seen[seen.len() - 2..],
        ["Complete", "Finalized"],
        "{lines:?}"
    );
    for (item, instance) in [(1, "local"), (2, "second")] {
        let steps: Vec<&Value> = lines.iter().filter(|l| l["Item"] == item).collect();
        assert_eq!(steps.len(), 5, "{lines:?}");
        assert!(
            steps.iter().all(|l| l["Status"] == "OK" && l["Total"] == 2),
            "{lines:?}"
        );
        assert_eq!(steps[0]["Instance"], format!("{b_address}/{instance}"));
    }
    assert!(
        lines[lines.len() - 2]["Message"]
            .as_str()
            .unwrap()
            .contains("2 of 2"),
        "{lines:?}"
    );
    for e in [engine, &second] {
        assert_eq!(e.inspect(&name).unwrap()["State"]["Running"], true);
    }

    // The second engine goes down: that instance fails, the other is
    // updated, and the stream still ends once.
    second.stop();
    let (lines, _) = admin
        .stream(
            "PUT",
            &format!("/applications/update/{name}"),
            Some(json!({ "Command": command("700") })),
        )
        .await;
    assert_eq!(
        statuses(&lines)[lines.len() - 2..],
        ["Failed", "Finalized"],
        "{lines:?}"
    );
    assert!(
        lines[lines.len() - 2]["Message"]
            .as_str()
            .unwrap()
            .contains("1 of 2"),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["Item"] == 2 && l["Status"] == "Error"),
        "{lines:?}"
    );
    assert_eq!(
        engine.inspect(&name).unwrap()["Config"]["Cmd"],
        json!(["sleep", "700"])
    );
    engine.cli(&["rm", "-f", &name]);
}
