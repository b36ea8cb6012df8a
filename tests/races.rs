//! Racing requests against the real binary: KV transactions are
//! serializable (no lost update, write skew or phantom), and every bundled
//! surface keeps its uniqueness rules when 20 creators race.

mod support;

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{Value, json};
use support::{Berth, client, mount};

const RACERS: usize = 20;

const CONFIG: &str = "watch_interval_ms = 50\n\n[plugins.racer]\ngrants = [\"kv\", \"events\"]\n";

/// Send `RACERS` requests at once, built by `request(i)`; their statuses
/// and bodies, in order.
async fn race(
    request: impl Fn(usize) -> reqwest::RequestBuilder,
) -> Vec<(u16, Value, Option<String>)> {
    let calls = (0..RACERS).map(|i| {
        let r = request(i);
        async move {
            let r = r
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .expect("an answer");
            let status = r.status().as_u16();
            let retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let text = r.text().await.unwrap();
            let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
            (status, body, retry_after)
        }
    });
    join_all(calls).await
}

fn statuses(answers: &[(u16, Value, Option<String>)]) -> Vec<u16> {
    let mut s: Vec<u16> = answers.iter().map(|a| a.0).collect();
    s.sort();
    s
}

/// How many items of the JSON array `list` match.
fn listed(list: &Value, matches: impl Fn(&Value) -> bool) -> usize {
    list.as_array()
        .unwrap()
        .iter()
        .filter(|v| matches(v))
        .count()
}

fn count(answers: &[(u16, Value, Option<String>)], status: u16) -> usize {
    answers.iter().filter(|a| a.0 == status).count()
}

#[tokio::test]
async fn racing_calls_behave_as_if_one_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(dir.path(), CONFIG);
    mount(&berth, "racer", "/racer/read/n").await;
    let http = client();

    // Lost update: get, pause, set by every racer; all read before any
    // writes, so without serializable transactions most increments vanish.
    let answers = race(|_| http.post(berth.url("/racer/count/n"))).await;
    assert_eq!(statuses(&answers), vec![200; RACERS], "{answers:?}");
    let mut seen: Vec<i64> = answers.iter().map(|a| a.1.as_i64().unwrap()).collect();
    seen.sort();
    assert_eq!(seen, (1..=RACERS as i64).collect::<Vec<_>>());
    let read = support::json_of(http.get(berth.url("/racer/read/n"))).await;
    assert_eq!(read, json!(RACERS));

    // Write skew: ann and bob may each go off call only while both are on.
    let answers = race(|i| {
        let who = if i % 2 == 0 { "ann" } else { "bob" };
        http.post(berth.url(&format!("/racer/off-call/{who}")))
    })
    .await;
    assert_eq!(count(&answers, 200), 1, "{answers:?}");
    assert_eq!(count(&answers, 409), RACERS - 1, "{answers:?}");

    // Phantom: a claim only while nothing is listed under `claims/`.
    let answers = race(|i| http.post(berth.url(&format!("/racer/claim/c{i}")))).await;
    assert_eq!(count(&answers, 200), 1, "{answers:?}");
    assert_eq!(count(&answers, 409), RACERS - 1, "{answers:?}");
    let listed = support::json_of(http.get(berth.url("/racer/list/claims"))).await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");

    // After an outside effect a call is not run again: the losers of the
    // race answer 503 with Retry-After, and only acknowledged increments
    // are counted.
    let answers = race(|_| http.post(berth.url("/racer/count-after-effect/e"))).await;
    let done = count(&answers, 200);
    assert!(done >= 1, "{answers:?}");
    for (status, body, retry_after) in &answers {
        assert!(
            *status == 200 || (*status == 503 && retry_after.as_deref() == Some("1")),
            "{status} {body} {retry_after:?}"
        );
        if *status == 503 {
            assert!(
                body["error"].as_str().unwrap().contains("conflict"),
                "{body}"
            );
        }
    }
    let read = support::json_of(http.get(berth.url("/racer/read/e"))).await;
    assert_eq!(read, json!(done));
    assert!(!berth.log().contains("panicked"), "{}", berth.log());
}

#[tokio::test]
async fn portainer_keeps_one_admin_and_one_user_per_name() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(dir.path(), "");
    let http = client();

    let answers = race(|i| {
        http.post(berth.url("/api/users/admin/init"))
            .json(&json!({ "Username": format!("admin{i}"), "Password": "secret-pass" }))
    })
    .await;
    assert_eq!(count(&answers, 200), 1, "{answers:?}");
    assert_eq!(count(&answers, 409), RACERS - 1, "{answers:?}");
    let won = &answers.iter().find(|a| a.0 == 200).unwrap().1;
    // Portainer's first admin is user 1: the losers took no id.
    assert_eq!(won["Id"], 1, "{won}");
    let winner = won["Username"].as_str().unwrap().to_string();
    let auth = support::json_of(
        http.post(berth.url("/api/auth"))
            .json(&json!({ "Username": winner, "Password": "secret-pass" })),
    )
    .await;
    let jwt = auth["jwt"].as_str().expect("a token").to_string();

    // One user per name, whatever its case (as Portainer 1.x).
    let answers = race(|i| {
        let name = if i % 2 == 0 { "dupe" } else { "DuPe" };
        http.post(berth.url("/api/users"))
            .bearer_auth(&jwt)
            .json(&json!({ "Username": name, "Password": "pw-long-enough", "Role": 2 }))
    })
    .await;
    assert_eq!(count(&answers, 200), 1, "{answers:?}");
    assert_eq!(count(&answers, 409), RACERS - 1, "{answers:?}");
    let users = support::json_of(http.get(berth.url("/api/users")).bearer_auth(&jwt)).await;
    let dupes = listed(&users, |u| {
        u["Username"].as_str().unwrap().eq_ignore_ascii_case("dupe")
    });
    assert_eq!(dupes, 1, "{users}");
    let ids: Vec<&Value> = users.as_array().unwrap().iter().map(|u| &u["Id"]).collect();
    assert_eq!(ids, [&json!(1), &json!(2)], "dense ids: {users}");
    let admins = listed(&users, |u| u["Role"] == 1);
    assert_eq!(admins, 1, "{users}");
}

#[tokio::test]
async fn lighthouse_keeps_one_user_per_email() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(dir.path(), "");
    let http = client();
    let cookie = support::lighthouse_admin(&berth).await;

    let answers = race(|_| {
        http.post(berth.url("/api/v0.2/users/create"))
            .header("cookie", &cookie)
            .json(&json!({ "Email": "same@example.com", "Password": "pw-long-enough" }))
    })
    .await;
    assert_eq!(count(&answers, 200), 1, "{answers:?}");
    let refused: Vec<u16> = answers.iter().map(|a| a.0).filter(|s| *s != 200).collect();
    assert_eq!(refused.len(), RACERS - 1, "{answers:?}");
    assert!(
        refused.iter().all(|s| (400..500).contains(s)),
        "{answers:?}"
    );
    let users = support::json_of(
        http.get(berth.url("/api/v0.2/users/list"))
            .header("cookie", &cookie),
    )
    .await;
    let same = listed(&users, |email| *email == "same@example.com");
    assert_eq!(same, 1, "{users}");
}

#[tokio::test]
async fn cikit_keeps_one_owner_and_one_user_per_name() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(dir.path(), "");

    // Racing owners from the CLI: one wins, the others are told 906.
    let runs: Vec<_> = (0..RACERS)
        .map(|i| {
            let cli = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
                .args(["--data-dir"])
                .arg(&berth.data)
                .args(["run", "droplets", "create-user", "-u"])
                .arg(format!("owner{i}"))
                .args(["-g", "owner"])
                .output();
            std::thread::spawn(move || cli.unwrap())
        })
        .collect();
    let outputs: Vec<_> = runs.into_iter().map(|t| t.join().unwrap()).collect();
    let won: Vec<String> = outputs
        .iter()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .collect();
    assert_eq!(won.len(), 1, "{outputs:?}");
    for lost in outputs.iter().filter(|o| !o.status.success()) {
        let err = String::from_utf8_lossy(&lost.stderr);
        assert!(err.contains("Owner already exists"), "{err}");
    }
    let owner = won[0]
        .lines()
        .find_map(|l| l.strip_prefix("user: "))
        .unwrap()
        .to_string();
    let secret = won[0]
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .unwrap()
        .to_string();
    let http = client();
    let token = cikit_login(&berth, &owner, &secret).await;

    let answers = race(|_| {
        http.post(berth.url("/api/v1/user/add"))
            .bearer_auth(&token)
            .json(&json!({ "username": "twin", "group": "viewer" }))
    })
    .await;
    assert_eq!(count(&answers, 200), 1, "{answers:?}");
    for (status, body, _) in answers.iter().filter(|a| a.0 != 200) {
        assert_eq!((*status, &body["errorId"]), (400, &json!(914)), "{body}");
    }
    let (_, users) = support::call_bearer(
        &http,
        "GET",
        &berth.url("/api/v1/user/list"),
        Some(&token),
        None,
    )
    .await;
    let twins = listed(&users, |u| u["username"] == "twin");
    assert_eq!(twins, 1, "{users}");
}

/// A CIKit access token for `user`, logging in with its TOTP `secret`.
async fn cikit_login(berth: &Berth, user: &str, secret: &str) -> String {
    let (status, auth) = support::call_bearer(
        &client(),
        "POST",
        &berth.url("/api/v1/user/auth"),
        None,
        Some(json!({ "username": user, "code": support::totp(secret, 0) })),
    )
    .await;
    assert_eq!(status, 200, "{auth}");
    auth["access_token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn droplets_and_docker_cloud_stacks_keep_one_per_name() {
    let Some(engine) = support::docker::shared() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[docker]\nlocal = \"{}\"\n\n[plugins.droplets.settings]\nimage = \"{}\"\n",
        engine.host,
        support::docker::IMAGE
    );
    let berth = Berth::start(dir.path(), &config);
    let http = client();

    // One droplet per name: the engine's name is the lock here, and the
    // losers hear CIKit's 914.
    let secret = berth.cikit_user("boss", "owner");
    let token = cikit_login(&berth, "boss", &secret).await;
    let answers = race(|_| {
        http.post(berth.url("/api/v1/droplet/add"))
            .bearer_auth(&token)
            .json(&json!({ "name": "racer" }))
    })
    .await;
    assert_eq!(count(&answers, 200), 1, "{answers:?}");
    for (status, body, _) in answers.iter().filter(|a| a.0 != 200) {
        assert_eq!((*status, &body["errorId"]), (400, &json!(914)), "{body}");
    }
    let droplets = support::json_of(
        http.get(berth.url("/api/v1/droplet/list"))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(listed(&droplets, |d| d["name"] == "racer"), 1, "{droplets}");
    let (status, _) = support::call_bearer(
        &http,
        "DELETE",
        &berth.url("/api/v1/droplet/delete/racer"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, 200);

    // One Docker Cloud stack per name, whatever its case.
    let auth = berth.cli_line(
        &["run", "stacks", "apikey:create", "alice"],
        "Authorization: ",
    );
    let answers = race(|i| {
        let name = if i % 2 == 0 { "same" } else { "SAME" };
        http.post(berth.url("/api/app/v1/stack/"))
            .header("authorization", &auth)
            .header("accept", "application/json")
            .json(&json!({ "name": name, "services": [{ "name": "web", "image": "busybox:latest" }] }))
    })
    .await;
    assert_eq!(count(&answers, 201), 1, "{answers:?}");
    assert_eq!(count(&answers, 409), RACERS - 1, "{answers:?}");
    let stacks = support::json_of(
        http.get(berth.url("/api/app/v1/stack/"))
            .header("authorization", &auth)
            .header("accept", "application/json"),
    )
    .await;
    let same = listed(&stacks["objects"], |s| {
        s["name"].as_str().unwrap().eq_ignore_ascii_case("same")
    });
    assert_eq!(same, 1, "{stacks}");
}
