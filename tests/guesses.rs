//! Waves of concurrent guesses at every login and password check, the
//! right secret at a random place among them: each wave gets exactly the
//! checks the same guesses sent one after another would (the limit's
//! worth of wrong ones), the right one is accepted at most once, and once
//! a limit is reached not even the right secret gets through. From one
//! client address (its limit, 5 a minute) and from 60 (the account's, 10).
//! Every guess comes from a real loopback address of its own choosing.

mod support;

use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{Value, json};
use support::{Berth, client};

const WAVE: usize = 60;
const PER_CLIENT: usize = 5;
const PER_USER: usize = 10;

/// What a guess got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Accepted,
    /// Checked, and wrong.
    Refused,
    Throttled,
}

/// A client whose connections come from `127.0.B.N`.
fn client_from((b, n): (u8, u8)) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::from([127, 0, b, n]))
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// A place for the right guess, different from run to run (printed, so
/// a failure can be replayed with BERTH_GUESS_SEED).
fn right_at(salt: u64) -> usize {
    let seed = std::env::var("BERTH_GUESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos() as u64
        });
    let mixed = (seed ^ salt)
        .wrapping_mul(6364136223846793005)
        .rotate_left(17);
    let at = (mixed % WAVE as u64) as usize;
    eprintln!("seed {seed}: the right guess is number {at} of salt {salt}");
    at
}

/// Send `WAVE` guesses at once; guess `i` comes from `from(i)` and is the
/// right one when `i == right`.
async fn wave<F, Fut>(right: usize, from: impl Fn(usize) -> (u8, u8), guess: F) -> Vec<Verdict>
where
    F: Fn(reqwest::Client, bool) -> Fut,
    Fut: Future<Output = Verdict>,
{
    join_all((0..WAVE).map(|i| guess(client_from(from(i)), i == right))).await
}

/// The verdicts of a wave on counters with `slots` left: the slots were
/// all used, and no more wrong guesses were checked than one after another
/// would be. A right guess gives its slot back (only failures count), so
/// one more wrong guess may be checked after it, if one comes late enough.
fn assert_exact(what: &str, verdicts: &[Verdict], slots: usize) {
    let n = |v| verdicts.iter().filter(|x| **x == v).count();
    let (accepted, refused, throttled) = (
        n(Verdict::Accepted),
        n(Verdict::Refused),
        n(Verdict::Throttled),
    );
    assert!(accepted <= 1, "{what}: {verdicts:?}");
    assert!(
        refused <= slots,
        "{what}: at most {slots} wrong guesses checked ({verdicts:?})"
    );
    assert!(
        refused + accepted >= slots,
        "{what}: every slot was used ({verdicts:?})"
    );
    assert_eq!(accepted + refused + throttled, WAVE, "{what}: {verdicts:?}");
}

/// Every guess throttled, the right one too.
fn assert_shut(what: &str, verdicts: &[Verdict]) {
    assert!(
        verdicts.iter().all(|v| *v == Verdict::Throttled),
        "{what}: past the limit nothing is checked ({verdicts:?})"
    );
}

/// Wrong guesses one after another, from `from(k)`, until one is
/// throttled: how many were checked.
async fn top_up<G, GF>(account: &str, from: impl Fn(usize) -> (u8, u8), guess: G) -> usize
where
    G: Fn(reqwest::Client, String, bool) -> GF,
    GF: Future<Output = Verdict>,
{
    for k in 0..=PER_USER {
        match guess(client_from(from(k)), account.to_string(), false).await {
            Verdict::Throttled => return k,
            Verdict::Refused => {}
            Verdict::Accepted => panic!("a wrong guess was accepted"),
        }
    }
    panic!("{} wrong guesses in a row were checked", PER_USER + 1);
}

/// The waves every check gets, each pair on an account of its own made by
/// `account(k)`. From one address: a wave, then wrong guesses one by one
/// until the first 429 (a right guess in the wave gave its slot back), so
/// that exactly the client's limit of wrong ones was checked; then another
/// wave, all of it throttled. The same from 60 addresses and the account's
/// limit. The addresses are in `127.0.B.0/24`, a block of the caller's.
async fn four_waves<A, AF, G, GF>(what: &str, b: u8, account: A, guess: G)
where
    A: Fn(usize) -> AF,
    AF: Future<Output = String>,
    G: Fn(reqwest::Client, String, bool) -> GF + Copy,
    GF: Future<Output = Verdict>,
{
    let refused = |v: &[Verdict]| v.iter().filter(|x| **x == Verdict::Refused).count();
    let one = account(1).await;
    let g = |c, right| guess(c, one.clone(), right);
    let verdicts = wave(right_at(1), |_| (b, 1), g).await;
    assert_exact(&format!("{what}, one address"), &verdicts, PER_CLIENT);
    let more = top_up(&one, |_| (b, 1), guess).await;
    assert_eq!(refused(&verdicts) + more, PER_CLIENT, "{what}, one address");
    let verdicts = wave(right_at(2), |_| (b, 1), g).await;
    assert_shut(&format!("{what}, the same address again"), &verdicts);

    let many = account(2).await;
    let g = |c, right| guess(c, many.clone(), right);
    let verdicts = wave(right_at(3), |i| (b, 10 + i as u8), g).await;
    assert_exact(&format!("{what}, 60 addresses"), &verdicts, PER_USER);
    let more = top_up(&many, |k| (b, 70 + k as u8), guess).await;
    assert_eq!(refused(&verdicts) + more, PER_USER, "{what}, 60 addresses");
    let verdicts = wave(right_at(4), |i| (b, 100 + i as u8), g).await;
    assert_shut(&format!("{what}, 60 other addresses"), &verdicts);
}

/// Send a guess; `accepted` and `refused` are the surface's statuses for
/// a right and a wrong secret.
async fn judged(request: reqwest::RequestBuilder, accepted: u16, refused: u16) -> Verdict {
    let (status, body) = answer(request).await;
    verdict(status, accepted, refused, &body)
}

fn verdict(status: u16, accepted: u16, refused: u16, body: &Value) -> Verdict {
    match status {
        s if s == accepted => Verdict::Accepted,
        s if s == refused => Verdict::Refused,
        429 => Verdict::Throttled,
        s => panic!("unexpected {s}: {body}"),
    }
}

async fn answer(r: reqwest::RequestBuilder) -> (u16, Value) {
    let r = r.send().await.expect("an answer");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Accounts made for a test, and each one's secret.
#[derive(Default)]
struct Secrets(std::sync::Mutex<std::collections::HashMap<String, String>>);

impl Secrets {
    fn keep(&self, account: &str, secret: String) {
        self.0.lock().unwrap().insert(account.to_string(), secret);
    }

    /// The account's secret when `right`, else a wrong one.
    fn guess(&self, account: &str, right: bool) -> String {
        match right {
            true => self.0.lock().unwrap()[account].clone(),
            false => "not-the-password".to_string(),
        }
    }
}

#[tokio::test]
async fn lighthouse_logins() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(dir.path(), "");
    let secrets = Secrets::default();
    let account = |k: usize| {
        let (berth, secrets) = (&berth, &secrets);
        async move {
            let email = format!("user{k}@example.com");
            let password =
                berth.cli_line(&["run", "beacons", "create-admin", &email], "password: ");
            secrets.keep(&email, password);
            email
        }
    };
    let url = berth.url("/api/v0.2/login");
    let guess = |c: reqwest::Client, email: String, right: bool| {
        let body = json!({ "Email": email, "Password": secrets.guess(&email, right) });
        let request = c.post(&url).json(&body);
        judged(request, 200, 401)
    };
    four_waves("Lighthouse login", 1, account, &guess).await;
}

/// A Portainer with its admin, and users made by the admin.
struct Portainer {
    berth: Berth,
    jwt: String,
    secrets: Secrets,
}

impl Portainer {
    async fn start(dir: &std::path::Path) -> Portainer {
        let berth = Berth::start(dir, "");
        let http = client();
        let creds = json!({ "Username": "admin", "Password": "admin-password" });
        let (status, body) =
            answer(http.post(berth.url("/api/users/admin/init")).json(&creds)).await;
        assert_eq!(status, 200, "{body}");
        let (_, auth) = answer(http.post(berth.url("/api/auth")).json(&creds)).await;
        let jwt = auth["jwt"].as_str().expect("a JWT").to_string();
        Portainer {
            berth,
            jwt,
            secrets: Secrets::default(),
        }
    }

    /// A new standard user: its name and id.
    async fn user(&self, k: usize) -> (String, u64) {
        let name = format!("user{k}");
        let password = format!("password-of-{name}");
        let (status, body) = answer(
            client()
                .post(self.berth.url("/api/users"))
                .bearer_auth(&self.jwt)
                .json(&json!({ "Username": name, "Password": password, "Role": 2 })),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        self.secrets.keep(&name, password);
        (name, body["Id"].as_u64().unwrap())
    }
}

#[tokio::test]
async fn portainer_logins() {
    let dir = tempfile::tempdir().unwrap();
    let p = Portainer::start(dir.path()).await;
    let url = p.berth.url("/api/auth");
    let account = |k: usize| {
        let p = &p;
        async move { p.user(k).await.0 }
    };
    let guess = |c: reqwest::Client, name: String, right: bool| {
        let body = json!({ "Username": name, "Password": p.secrets.guess(&name, right) });
        let request = c.post(&url).json(&body);
        judged(request, 200, 422)
    };
    four_waves("Portainer /api/auth", 1, account, &guess).await;
}

/// The password checks behind a token: `passwd` (is this my password?) and
/// a new API token (which asks for the password), by the holder of the
/// user's own JWT.
#[tokio::test]
async fn portainer_password_checks_behind_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let p = Portainer::start(dir.path()).await;
    // Each account, and the JWT its holder has (from a login elsewhere).
    let tokens = Secrets::default();
    let account = |k: usize| {
        let (p, tokens) = (&p, &tokens);
        async move {
            let (name, id) = p.user(k).await;
            let creds = json!({ "Username": name, "Password": p.secrets.guess(&name, true) });
            let (status, auth) = answer(
                client_from((0, 250))
                    .post(p.berth.url("/api/auth"))
                    .json(&creds),
            )
            .await;
            assert_eq!(status, 200, "{auth}");
            tokens.keep(&id.to_string(), auth["jwt"].as_str().unwrap().to_string());
            tokens.keep(&format!("name-{id}"), name);
            id.to_string()
        }
    };
    let check = |c: reqwest::Client, id: String, right: bool| {
        let name = tokens.guess(&format!("name-{id}"), true);
        let request = c
            .post(p.berth.url(&format!("/api/users/{id}/passwd")))
            .bearer_auth(tokens.guess(&id, true))
            .json(&json!({ "Password": p.secrets.guess(&name, right) }));
        async move {
            let (status, body) = answer(request).await;
            match (status, body["valid"].as_bool()) {
                (200, Some(true)) => Verdict::Accepted,
                (200, Some(false)) => Verdict::Refused,
                (429, _) => Verdict::Throttled,
                _ => panic!("unexpected {status}: {body}"),
            }
        }
    };
    four_waves("Portainer passwd", 1, account, &check).await;

    let account = |k: usize| account(k + 10);
    let new_token = |c: reqwest::Client, id: String, right: bool| {
        let name = tokens.guess(&format!("name-{id}"), true);
        let request = c
            .post(p.berth.url(&format!("/api/users/{id}/tokens")))
            .bearer_auth(tokens.guess(&id, true))
            .json(&json!({ "password": p.secrets.guess(&name, right), "description": "ci" }));
        judged(request, 200, 403)
    };
    four_waves("Portainer new API token", 2, account, &new_token).await;
}

#[tokio::test]
async fn cikit_totp_logins() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(dir.path(), "");
    let secrets = Secrets::default();
    let account = |k: usize| {
        let (berth, secrets) = (&berth, &secrets);
        async move {
            let name = format!("user{k}");
            secrets.keep(&name, berth.cikit_user(&name, "viewer"));
            name
        }
    };
    let url = berth.url("/api/v1/user/auth");
    let guess = |c: reqwest::Client, name: String, right: bool| {
        let right_code = support::totp(&secrets.guess(&name, true), 0);
        let code = match right {
            true => right_code,
            // A code of none of the steps the host accepts now (the
            // previous, this and the next, and one more for a step that
            // turns while the wave is on).
            false => {
                let secret = secrets.guess(&name, true);
                let near: Vec<String> = (-2..=2).map(|o| support::totp(&secret, o)).collect();
                (0..)
                    .map(|n: u32| format!("{:06}", (n * 7919 + 13) % 1_000_000))
                    .find(|c| !near.contains(c))
                    .unwrap()
            }
        };
        let request = c
            .post(&url)
            .json(&json!({ "username": name, "code": code }));
        judged(request, 200, 400)
    };
    four_waves("CIKit TOTP login", 1, account, &guess).await;
}

/// A password change ends the sessions and tokens issued before it:
/// Portainer's JWTs and Lighthouse's session cookies.
#[tokio::test]
async fn a_password_change_ends_earlier_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let p = Portainer::start(dir.path()).await;
    let (name, id) = p.user(1).await;
    let http = client();
    let login = |password: String| {
        let body = json!({ "Username": name, "Password": password });
        answer(http.post(p.berth.url("/api/auth")).json(&body))
    };
    let (_, auth) = login(p.secrets.guess(&name, true)).await;
    let old = auth["jwt"].as_str().unwrap().to_string();
    let me = p.berth.url(&format!("/api/users/{id}"));
    let (status, _) = answer(http.get(&me).bearer_auth(&old)).await;
    assert_eq!(status, 200);
    let change = json!({ "Password": "a-new-password" });
    let (status, body) = answer(http.put(&me).bearer_auth(&old).json(&change)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = answer(http.get(&me).bearer_auth(&old)).await;
    assert_eq!(status, 401, "the JWT from before the change: {body}");
    let (status, auth) = login("a-new-password".into()).await;
    assert_eq!(status, 200, "{auth}");
    let (status, _) = answer(http.get(&me).bearer_auth(auth["jwt"].as_str().unwrap())).await;
    assert_eq!(status, 200, "a JWT from after the change");

    // Lighthouse: the admin changes their own password.
    let cookie = support::lighthouse_admin(&p.berth).await;
    let users = p.berth.url("/api/v0.2/users/admin");
    let (status, _) = answer(http.get(&users).header("cookie", &cookie)).await;
    assert_eq!(status, 200);
    let (status, body) = answer(
        http.put(&users)
            .header("cookie", &cookie)
            .json(&json!({ "Password": "another-password" })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = answer(http.get(&users).header("cookie", &cookie)).await;
    assert_eq!(status, 401, "the session from before the change: {body}");
}
