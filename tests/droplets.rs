//! The `droplets` plugin (CIKit REST API) end to end: the real berth, a
//! real Docker engine (tests/support/docker.rs), TOTP codes computed here
//! as an authenticator app would.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::docker::{self, Engine};
use support::{Berth, client, totp};

fn config(host: &str, extra: &str) -> String {
    format!(
        "[docker]\nlocal = \"{host}\"\n\n[plugins.droplets.settings]\nimage = \"{}\"\ncommand = \"httpd -f -p 8080\"\n{extra}\n",
        docker::IMAGE
    )
}

/// `berth run droplets create-user ...`; the TOTP secret it printed.
fn create_user(berth: &Berth, name: &str, group: &str) -> Result<String, String> {
    let out = berth.cli(&["run", "droplets", "create-user", "-u", name, "-g", group]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    assert!(
        stdout.contains(&format!("otpauth://totp/Berth:{name}?secret=")),
        "{stdout}"
    );
    Ok(stdout
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .unwrap()
        .to_string())
}

struct Api {
    berth: Berth,
    http: reqwest::Client,
}

impl Api {
    fn new(berth: Berth) -> Api {
        Api {
            berth,
            http: client(),
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        support::call_bearer(&self.http, method, &self.berth.url(path), token, body).await
    }

    async fn login(&self, user: &str, code: &str) -> (u16, Value) {
        self.call(
            "POST",
            "/api/v1/user/auth",
            None,
            Some(json!({ "username": user, "code": code })),
        )
        .await
    }

    /// Log in with the current code; the access and refresh tokens.
    async fn tokens(&self, user: &str, secret: &str, offset: i64) -> (String, String) {
        let (status, body) = self.login(user, &totp(secret, offset)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 3600);
        let access = body["access_token"].as_str().unwrap().to_string();
        let refresh = body["refresh_token"].as_str().unwrap().to_string();
        assert!(access.len() == 64 && access.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(refresh.len() == 64 && access != refresh);
        (access, refresh)
    }
}

fn assert_error(got: &(u16, Value), status: u16, id: u64) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["errorId"], id, "{}", got.1);
    assert!(
        got.1["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{}",
        got.1
    );
}

/// Decode the setup QR code's PNG and read the text it holds.
fn read_qr(data_url: &str) -> String {
    use base64::Engine as _;
    let b64 = data_url
        .strip_prefix("data:image/png;base64,")
        .expect("a PNG data URL");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    assert_eq!(info.color_type, png::ColorType::Grayscale);
    let (w, h) = (info.width as usize, info.height as usize);
    let mut image = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| pixels[y * w + x]);
    let grids = image.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code in the image");
    grids[0].decode().unwrap().1
}

async fn start(dir: &std::path::Path, engine: &Engine) -> Api {
    let berth = Berth::start(dir, &config(&engine.host, "token_ttl_secs = 3600"));
    Api::new(berth)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_for_every_group() {
    let Some(engine) = docker::shared() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let api = start(dir.path(), engine).await;

    let boss_secret = create_user(&api.berth, "boss", "owner").unwrap();
    let second = create_user(&api.berth, "other", "owner").unwrap_err();
    assert!(second.contains("Owner already exists"), "{second}");

    // Login: missing data, unknown user, bad code, a code used twice.
    assert_error(
        &api.call(
            "POST",
            "/api/v1/user/auth",
            None,
            Some(json!({ "username": "boss" })),
        )
        .await,
        400,
        901,
    );
    assert_error(&api.login("nobody", "123456").await, 400, 903);
    assert_error(&api.login("boss", "abcdef").await, 400, 902);
    let code = totp(&boss_secret, 0);
    let (status, first) = api.login("boss", &code).await;
    assert_eq!(status, 200, "{first}");
    assert_error(&api.login("boss", &code).await, 400, 902);
    // Issuing a new pair revokes the previous one.
    let (boss, _) = api.tokens("boss", &boss_secret, 1).await;
    assert_error(
        &api.call(
            "GET",
            "/api/v1/droplet/list",
            first["access_token"].as_str(),
            None,
        )
        .await,
        401,
        908,
    );

    // The owner adds a manager and a viewer; the list never shows secrets.
    let add = |name: &str, group: &str| json!({ "username": name, "group": group });
    let (status, users) = api
        .call(
            "POST",
            "/api/v1/user/add",
            Some(&boss),
            Some(add("mia", "manager")),
        )
        .await;
    assert_eq!(status, 200, "{users}");
    let (status, users) = api
        .call(
            "POST",
            "/api/v1/user/add",
            Some(&boss),
            Some(add("vic", "viewer")),
        )
        .await;
    assert_eq!(status, 200);
    let names: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 3);
    for name in ["boss", "mia", "vic"] {
        assert!(names.contains(&name), "{users}");
    }
    for user in users.as_array().unwrap() {
        assert!(user.get("secret").is_none(), "{user}");
        assert!(
            user["_id"].is_string() && user["created"].is_string(),
            "{user}"
        );
    }
    assert_error(
        &api.call(
            "POST",
            "/api/v1/user/add",
            Some(&boss),
            Some(add("x", "owner")),
        )
        .await,
        403,
        906,
    );
    assert_error(
        &api.call(
            "POST",
            "/api/v1/user/add",
            Some(&boss),
            Some(add("x", "god")),
        )
        .await,
        400,
        905,
    );
    assert_error(
        &api.call(
            "POST",
            "/api/v1/user/add",
            Some(&boss),
            Some(add("mia", "viewer")),
        )
        .await,
        400,
        914,
    );
    assert_error(
        &api.call(
            "POST",
            "/api/v1/user/add",
            Some(&boss),
            Some(json!({ "username": "x" })),
        )
        .await,
        400,
        913,
    );

    // Setup: a real PNG whose QR code is the otpauth URI of the secret.
    let mut secrets = std::collections::HashMap::new();
    for name in ["mia", "vic"] {
        let (status, setup) = api
            .call(
                "GET",
                &format!("/api/v1/user/auth/setup/{name}"),
                Some(&boss),
                None,
            )
            .await;
        assert_eq!(status, 200, "{setup}");
        let secret = setup["secret"].as_str().unwrap().to_string();
        let uri = read_qr(setup["qr"].as_str().unwrap());
        assert!(
            uri.starts_with(&format!("otpauth://totp/Berth:{name}?secret={secret}&")),
            "{uri}"
        );
        secrets.insert(name, secret);
    }
    assert_error(
        &api.call("GET", "/api/v1/user/auth/setup/ghost", Some(&boss), None)
            .await,
        400,
        903,
    );
    let (mia, mia_refresh) = api.tokens("mia", &secrets["mia"], 0).await;
    let (vic, _) = api.tokens("vic", &secrets["vic"], 0).await;

    // No token, a token in the body, an unknown route.
    assert_error(
        &api.call("GET", "/api/v1/droplet/list", None, None).await,
        401,
        908,
    );
    assert_error(
        &api.call("GET", "/api/v1/droplet/list", Some("f00"), None)
            .await,
        401,
        908,
    );
    let (status, _) = api
        .call(
            "POST",
            "/api/v1/droplet/add",
            None,
            Some(json!({ "access_token": mia, "name": "body-token" })),
        )
        .await;
    assert_eq!(status, 200);
    assert_error(
        &api.call("GET", "/api/v1/nothing/here", None, None).await,
        404,
        404,
    );
    assert_error(
        &api.call("PUT", "/api/v1/droplet/list", Some(&boss), None)
            .await,
        404,
        404,
    );

    // Every route, for every group: allowed ones succeed, others 403/912.
    let groups = [("viewer", &vic), ("manager", &mia), ("owner", &boss)];
    for (rank, (group, token)) in groups.iter().enumerate() {
        let token = Some(token.as_str());
        let victim = format!("victim-{group}");
        api.call(
            "POST",
            "/api/v1/user/add",
            Some(&boss),
            Some(add(&victim, "viewer")),
        )
        .await;
        let droplet = format!("d-{group}");
        let routes: Vec<(&str, String, Option<Value>, usize)> = vec![
            ("GET", "/api/v1/droplet/list".into(), None, 0),
            (
                "POST",
                "/api/v1/droplet/add".into(),
                Some(json!({ "name": droplet })),
                1,
            ),
            ("PATCH", format!("/api/v1/droplet/stop/{droplet}"), None, 1),
            ("PATCH", format!("/api/v1/droplet/start/{droplet}"), None, 1),
            (
                "PATCH",
                format!("/api/v1/droplet/restart/{droplet}"),
                None,
                1,
            ),
            (
                "DELETE",
                format!("/api/v1/droplet/delete/{droplet}"),
                None,
                1,
            ),
            ("GET", "/api/v1/user/list".into(), None, 2),
            ("GET", "/api/v1/user/auth/setup/vic".into(), None, 2),
            (
                "POST",
                "/api/v1/user/add".into(),
                Some(add(&format!("new-{group}"), "viewer")),
                2,
            ),
            ("DELETE", format!("/api/v1/user/delete/{victim}"), None, 2),
        ];
        for (method, path, body, needed) in routes {
            let got = api.call(method, &path, token, body).await;
            if rank >= needed {
                assert_eq!(got.0, 200, "{group} {method} {path}: {}", got.1);
                assert!(
                    got.1.is_array() || got.1.is_object(),
                    "{group} {method} {path}: {}",
                    got.1
                );
            } else {
                assert_error(&got, 403, 912);
            }
        }
    }

    // Revoke: self, or anyone for the owner.
    assert_error(
        &api.call("DELETE", "/api/v1/user/auth/revoke/mia", Some(&vic), None)
            .await,
        401,
        904,
    );
    let (status, body) = api
        .call("DELETE", "/api/v1/user/auth/revoke/vic", Some(&vic), None)
        .await;
    assert_eq!((status, body), (200, json!({ "status": "ok" })));
    assert_error(
        &api.call("GET", "/api/v1/droplet/list", Some(&vic), None)
            .await,
        401,
        908,
    );

    // A refresh token works once; the old access token dies with it.
    let refresh = |token: &str| json!({ "grant_type": "refresh_token", "refresh_token": token });
    let (status, pair) = api
        .call(
            "POST",
            "/api/v1/user/auth/refresh",
            None,
            Some(refresh(&mia_refresh)),
        )
        .await;
    assert_eq!(status, 200, "{pair}");
    assert_eq!(pair["expires_in"], 3600);
    assert_error(
        &api.call(
            "POST",
            "/api/v1/user/auth/refresh",
            None,
            Some(refresh(&mia_refresh)),
        )
        .await,
        401,
        910,
    );
    assert_error(
        &api.call("GET", "/api/v1/droplet/list", Some(&mia), None)
            .await,
        401,
        908,
    );
    let fresh = pair["access_token"].as_str().unwrap();
    assert_eq!(
        api.call("GET", "/api/v1/droplet/list", Some(fresh), None)
            .await
            .0,
        200
    );
    let (status, _) = api
        .call("DELETE", "/api/v1/user/auth/revoke/mia", Some(&boss), None)
        .await;
    assert_eq!(status, 200);
    assert_error(
        &api.call("GET", "/api/v1/droplet/list", Some(fresh), None)
            .await,
        401,
        908,
    );

    // -r regenerates the secret and revokes the tokens.
    let new_secret = {
        let out = api
            .berth
            .cli(&["run", "droplets", "create-user", "-u", "boss", "-r"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix("secret: "))
            .unwrap()
            .to_string()
    };
    assert_ne!(new_secret, boss_secret);
    assert_error(
        &api.call("GET", "/api/v1/user/list", Some(&boss), None)
            .await,
        401,
        908,
    );
    api.tokens("boss", &new_secret, 0).await;

    api.call(
        "DELETE",
        "/api/v1/droplet/delete/body-token",
        Some(&api.tokens("boss", &new_secret, 1).await.0),
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_tokens_are_refused_then_forgotten() {
    // No engine needed: tokens are checked before Docker is called.
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(
        dir.path(),
        &config("unix:///nonexistent.sock", "token_ttl_secs = 1"),
    );
    let api = Api::new(berth);
    let secret = create_user(&api.berth, "boss", "owner").unwrap();
    let (status, body) = api.login("boss", &totp(&secret, 0)).await;
    assert_eq!(status, 200);
    assert_eq!(body["expires_in"], 1);
    let token = body["access_token"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_error(
        &api.call("GET", "/api/v1/user/list", Some(&token), None)
            .await,
        401,
        909,
    );
    // Deleted on use: the next try does not know it at all.
    assert_error(
        &api.call("GET", "/api/v1/user/list", Some(&token), None)
            .await,
        401,
        908,
    );
    // The refresh token still works.
    let (status, _) = api
        .call(
            "POST",
            "/api/v1/user/auth/refresh",
            None,
            Some(json!({ "grant_type": "refresh_token", "refresh_token": body["refresh_token"] })),
        )
        .await;
    assert_eq!(status, 200);
    assert_error(
        &api.call(
            "POST",
            "/api/v1/user/auth/refresh",
            None,
            Some(json!({ "grant_type": "password" })),
        )
        .await,
        400,
        913,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn droplets_are_real_containers() {
    let Some(engine) = docker::shared() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let api = start(dir.path(), engine).await;
    let secret = create_user(&api.berth, "boss", "owner").unwrap();
    let (token, _) = api.tokens("boss", &secret, 0).await;
    let token = Some(token.as_str());

    // A container that is not a droplet is never listed.
    let plain = engine.cli(&[
        "create",
        "--name",
        "not-a-droplet",
        docker::IMAGE,
        "sleep",
        "1",
    ]);
    assert!(
        plain.status.success() || String::from_utf8_lossy(&plain.stderr).contains("already in use")
    );

    let (status, list) = api
        .call(
            "POST",
            "/api/v1/droplet/add",
            token,
            Some(json!({ "name": "web" })),
        )
        .await;
    assert_eq!(status, 200, "{list}");
    let web = list
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "web")
        .expect("web listed")
        .clone();
    assert_eq!(web["status"], "running");
    assert!(
        web["id"].as_str().unwrap().len() == 12 && web["created"].is_string(),
        "{web}"
    );
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|d| d["name"] != "not-a-droplet")
    );
    let inspect = engine.inspect("web").expect("docker knows the droplet");
    assert_eq!(inspect["State"]["Running"], true);
    assert_eq!(inspect["Config"]["Labels"]["berth.droplet"], "web");

    // The published port is real: busybox httpd answers on it.
    let port = &web["ports"]["8080"];
    assert_eq!(port["type"], "tcp");
    assert_eq!(port["from"]["ip"], "127.0.0.1");
    let url = format!("http://127.0.0.1:{}/", port["from"]["port"]);
    let answer = support::poll(Duration::from_secs(10), "the droplet's httpd", || {
        let url = url.clone();
        async move { reqwest::get(&url).await.ok().map(|r| r.status().as_u16()) }
    })
    .await;
    assert!((200..500).contains(&answer), "httpd answered {answer}");

    assert_error(
        &api.call(
            "POST",
            "/api/v1/droplet/add",
            token,
            Some(json!({ "name": "web" })),
        )
        .await,
        400,
        914,
    );
    assert_error(
        &api.call(
            "POST",
            "/api/v1/droplet/add",
            token,
            Some(json!({ "name": "../x" })),
        )
        .await,
        400,
        913,
    );
    assert_error(
        &api.call("PATCH", "/api/v1/droplet/stop/ghost", token, None)
            .await,
        400,
        900,
    );
    assert_error(
        &api.call("PATCH", "/api/v1/droplet/stop/not-a-droplet", token, None)
            .await,
        400,
        900,
    );

    let state = |name: &str| engine.inspect(name).map(|i| i["State"].clone());
    let (status, list) = api
        .call("PATCH", "/api/v1/droplet/stop/web", token, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(state("web").unwrap()["Running"], false);
    assert_eq!(
        list.as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == "web")
            .unwrap()["status"],
        "exited"
    );

    let (status, _) = api
        .call("PATCH", "/api/v1/droplet/start/web", token, None)
        .await;
    assert_eq!(status, 200);
    let started = state("web").unwrap();
    assert_eq!(started["Running"], true);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _) = api
        .call("PATCH", "/api/v1/droplet/restart/web", token, None)
        .await;
    assert_eq!(status, 200);
    let restarted = state("web").unwrap();
    assert_eq!(restarted["Running"], true);
    assert_ne!(
        restarted["StartedAt"], started["StartedAt"],
        "restart started it again"
    );

    let (status, list) = api
        .call("DELETE", "/api/v1/droplet/delete/web", token, None)
        .await;
    assert_eq!(status, 200);
    assert!(
        list.as_array().unwrap().iter().all(|d| d["name"] != "web"),
        "{list}"
    );
    assert!(engine.inspect("web").is_none(), "the container is gone");
}

#[tokio::test(flavor = "multi_thread")]
async fn engine_down_is_a_900_and_restarts_keep_users_and_tokens() {
    let Some(mut engine) = docker::private() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let conf = config(&engine.host, "token_ttl_secs = 3600");
    let api = Api::new(Berth::start(dir.path(), &conf));
    let secret = create_user(&api.berth, "boss", "owner").unwrap();
    let (token, _) = api.tokens("boss", &secret, 0).await;
    let token = Some(token.as_str());
    let (status, list) = api.call("GET", "/api/v1/droplet/list", token, None).await;
    assert_eq!((status, list), (200, json!([])));

    engine.stop();
    let got = api.call("GET", "/api/v1/droplet/list", token, None).await;
    assert_error(&got, 400, 900);
    // The client is told which endpoint is down; its address and the
    // socket error are in the host's log, under the request id given.
    let text = got.1["error"].as_str().unwrap();
    assert!(text.contains("`local` cannot be reached"), "{text}");
    assert!(!text.contains("docker.sock"), "{text}");
    assert!(api.berth.log().contains("Docker engine unreachable"));
    // The host and the other routes keep serving.
    assert_eq!(
        api.call("GET", "/api/v1/user/list", token, None).await.0,
        200
    );
    let (status, _) = support::get_json(&api.http, &api.berth.url("/hello/after")).await;
    assert_eq!(status, 200);

    // A restarted berth still knows the users and the token.
    let Api { mut berth, http } = api;
    assert!(berth.stop());
    let api = Api {
        berth: Berth::start(dir.path(), &conf),
        http,
    };
    let (status, users) = api.call("GET", "/api/v1/user/list", token, None).await;
    assert_eq!(status, 200);
    assert_eq!(users[0]["username"], "boss");

    engine.spawn().unwrap();
    let list = support::poll(Duration::from_secs(60), "the engine back", || async {
        let (status, list) = api.call("GET", "/api/v1/droplet/list", token, None).await;
        (status == 200).then_some(list)
    })
    .await;
    assert_eq!(list, json!([]));
}
