//! Hostile and careless clients against the real binary: silent, idle and
//! half-sent connections, one address holding many, malformed requests,
//! brute-forced logins, and a data directory made too open beforehand.

mod support;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Berth, client, poll};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn addr(berth: &Berth) -> SocketAddr {
    berth
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

/// A connection to `berth` from the loopback address `from`.
async fn connect_from(berth: &Berth, from: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(addr(berth)).await.unwrap()
}

/// Whether the server has closed `stream`: a read ends (0 bytes, or an
/// answer followed by the end) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// Whether a new connection from `from` is served a hello (Some) or
/// refused (None).
async fn served_from(berth: &Berth, from: &str) -> Option<()> {
    let mut stream = connect_from(berth, from).await;
    stream
        .write_all(b"GET /hello/again HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.ok()?;
    answer.starts_with(b"HTTP/1.1 200").then_some(())
}

/// One raw HTTP/1.1 exchange on a fresh connection: the status line and
/// the rest of the answer.
async fn raw(berth: &Berth, request: &[u8]) -> (String, String) {
    let mut stream = TcpStream::connect(addr(berth)).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (status, rest) = text.split_once("\r\n").unwrap_or((&text, ""));
    (status.to_string(), rest.to_string())
}

#[tokio::test]
async fn idle_and_half_sent_connections_are_closed_while_another_client_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(
        dir.path(),
        "[server]\nheader_timeout_ms = 1500\nidle_timeout_ms = 1500\nmax_connections_per_client = 400\n",
    );
    let mut hostile = Vec::new();
    for i in 0..300 {
        let mut stream = connect_from(&berth, "127.0.0.1").await;
        match i % 3 {
            // Silent from the start.
            0 => {}
            // Half a request head, never finished.
            1 => stream
                .write_all(b"GET /hello/slow HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .unwrap(),
            // One whole request, then idle on keep-alive.
            _ => {
                stream
                    .write_all(b"GET /hello/idle HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .unwrap();
                let mut buf = [0u8; 1024];
                let n = stream.read(&mut buf).await.unwrap();
                assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            }
        }
        hostile.push(stream);
    }

    // Another client keeps being served while they hang on, until the
    // server has closed them all.
    let (done, hanging) = tokio::sync::watch::channel(false);
    let served = tokio::spawn({
        let url = berth.url("/hello/bystander");
        async move {
            let http = client();
            let mut ok = 0;
            while !*hanging.borrow() {
                let r = http.get(&url).send().await.unwrap();
                assert_eq!(r.status(), 200);
                ok += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            ok
        }
    });

    let started = Instant::now();
    for (i, stream) in hostile.iter_mut().enumerate() {
        assert!(
            closed_within(stream, Duration::from_secs(60)).await,
            "connection {i} still open after {:?}",
            started.elapsed()
        );
    }
    done.send_replace(true);
    // They hung on for at least their 1.5 s deadline.
    assert!(
        served.await.unwrap() >= 3,
        "the bystander was served throughout"
    );
}

#[tokio::test]
async fn a_body_that_stops_arriving_gets_408() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(dir.path(), "[server]\nbody_timeout_ms = 1000\n");
    let mut stream = TcpStream::connect(addr(&berth)).await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"message\":")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("answered and closed")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 1000 ms"), "{answer}");
}

#[tokio::test]
async fn one_address_at_its_cap_cannot_starve_another() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(
        dir.path(),
        "[server]\nmax_connections_per_client = 20\nmax_connections = 100\n",
    );
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(connect_from(&berth, "127.0.0.1").await);
    }
    // The 21st from the same address is refused at once, and logged.
    // Closed at once, not at the 10 s header timeout.
    let mut over = connect_from(&berth, "127.0.0.1").await;
    assert!(closed_within(&mut over, Duration::from_secs(8)).await);
    poll(Duration::from_secs(5), "the refusal logged", || async {
        berth
            .log()
            .contains("max_connections_per_client")
            .then_some(())
    })
    .await;

    // Another address is served.
    let mut other = connect_from(&berth, "127.0.0.2").await;
    other
        .write_all(b"GET /hello/other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), other.read_to_end(&mut answer))
        .await
        .expect("answered")
        .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // A slot given back is free again.
    drop(held.pop());
    poll(Duration::from_secs(5), "a freed slot", || {
        served_from(&berth, "127.0.0.1")
    })
    .await;
}

#[tokio::test]
async fn open_websockets_count_against_the_cap_until_they_close() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(
        dir.path(),
        "[server]\nmax_connections_per_client = 2\n\n[plugins.streamer]\ngrants = [\"events\", \"jobs\"]\n",
    );
    support::mount(&berth, "streamer", "/stream/t/close").await;
    // The probes' connections are closed, by the server's count too, so
    // both slots are free for the websockets.
    support::wait_connections(&berth, 0).await;
    let url = berth
        .url("/stream/ws?framing=websocket")
        .replace("http://", "ws://");
    let (first, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let (second, _) = tokio_tungstenite::connect_async(&url).await.unwrap();

    // Both upgraded connections still hold their slots.
    // Closed at once, not at the 10 s header timeout.
    let mut over = connect_from(&berth, "127.0.0.1").await;
    assert!(closed_within(&mut over, Duration::from_secs(8)).await);

    // Closing one frees its slot.
    drop(first);
    poll(Duration::from_secs(5), "the websocket's slot freed", || {
        served_from(&berth, "127.0.0.1")
    })
    .await;
    drop(second);
}

#[tokio::test]
async fn malformed_and_oversized_requests_get_clear_4xx() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(dir.path(), "");
    let http = client();

    // Path parameters that are not UTF-8 once decoded.
    for bad in ["%ff", "%fe", "%C0"] {
        let r = http
            .post(berth.url(&format!("/hello/{bad}/visits")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let body: Value = r.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("UTF-8"), "{body}");
    }

    // A key over the store's limit is the client's fault, not a 500.
    let long = "n".repeat(2000);
    let r = http
        .post(berth.url(&format!("/hello/{long}/visits")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // HTTP/1.1 without Host; TRACE; HEAD answered like GET without a body.
    let (status, _) = raw(
        &berth,
        b"GET /hello/ann HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 400"), "{status}");
    let (status, _) = raw(
        &berth,
        b"TRACE /hello/ann HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 405"), "{status}");
    let (status, rest) = raw(
        &berth,
        b"HEAD /hello/ann HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let (head, body) = rest.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase().contains("content-length: "),
        "{head}"
    );
    assert_eq!(body, "", "no body for HEAD");

    // A request head over the cap (32 KiB by default).
    let big = format!(
        "GET /hello/ann HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(40 * 1024)
    );
    let (status, _) = raw(&berth, big.as_bytes()).await;
    assert!(status.starts_with("HTTP/1.1 431"), "{status}");

    // An oversized email at Lighthouse's login: its own format, a 4xx.
    let r = http
        .post(berth.url("/api/v0.2/login"))
        .json(&json!({ "Email": "e".repeat(3000), "Password": "x" }))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert!((400..500).contains(&status), "{status} {body}");
    assert!(body["Message"].is_string(), "{body}");

    // A beacon address outside [http_out] allow is the client's to fix.
    let cookie = support::lighthouse_admin(&berth).await;
    let r = http
        .post(berth.url("/api/v0.2/beacons/create"))
        .header("cookie", cookie)
        .json(&json!({ "Address": "http://not-allowed.example:8080", "Alias": "far" }))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(
        body["Message"].as_str().unwrap().contains("allow-list"),
        "{body}"
    );
}

#[tokio::test]
async fn wrong_totp_codes_meet_429_and_proxied_clients_are_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(dir.path(), "[server]\ntrusted_proxies = [\"127.0.0.1\"]\n");
    let secret = berth.cikit_user("boss", "owner");
    let http = client();
    let login = |code: String, from: &str| {
        http.post(berth.url("/api/v1/user/auth"))
            .header("x-forwarded-for", from)
            .json(&json!({ "username": "boss", "code": code }))
            .send()
    };
    let wrong = |i: u32| {
        let right = support::totp(&secret, 0);
        let code = format!("{:06}", (i * 7919 + 1) % 1_000_000);
        if code == right {
            "000000".to_string()
        } else {
            code
        }
    };

    // 40 wrong codes from one client: the first are 902, then 429.
    let mut seen = Vec::new();
    for i in 0..40 {
        let r = login(wrong(i), "203.0.113.5").await.unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        seen.push((status, body["errorId"].as_u64().unwrap()));
    }
    assert_eq!(seen[0], (400, 902));
    assert!(seen.contains(&(429, 429)), "{seen:?}");
    assert_eq!(
        seen.iter().filter(|s| s.0 == 400).count(),
        5,
        "five failures a minute per client: {seen:?}"
    );

    // Another client behind the same proxy is not locked out by them...
    let r = login(wrong(99), "198.51.100.7").await.unwrap();
    assert_eq!(r.status(), 400, "a wrong code, not 429");
    // ... until the account itself has failed too often (10 a minute),
    // from whichever addresses.
    for i in 0..10 {
        login(wrong(100 + i), &format!("198.51.100.{}", 10 + i))
            .await
            .unwrap();
    }
    let r = login(support::totp(&secret, 0), "192.0.2.1").await.unwrap();
    assert_eq!(
        r.status(),
        429,
        "the account is throttled, even a right code"
    );
}

#[tokio::test]
async fn a_data_dir_made_too_open_is_made_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    // An emptied admin token is replaced, not matched by an empty one.
    std::fs::write(data.join("admin-token"), "").unwrap();
    std::fs::set_permissions(
        data.join("admin-token"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    // The plugins folder and the compile cache made world-writable too.
    for sub in ["plugins", "cache"] {
        std::fs::create_dir(data.join(sub)).unwrap();
        std::fs::set_permissions(data.join(sub), std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let mut berth = Berth::start(dir.path(), "");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    if support::postgres::store_pass() {
        assert!(
            !data.join("berth.redb").exists(),
            "no redb file beside PostgreSQL"
        );
    } else {
        assert_eq!(mode(&data.join("berth.redb")), 0o600);
    }
    assert_eq!(mode(&data.join("admin-token")), 0o600);
    assert_eq!(mode(&data.join("plugins")), 0o700);
    assert_eq!(mode(&data.join("cache")), 0o700);
    let files = |dir: &str| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(data.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    };
    let compiled = files("cache");
    assert!(!compiled.is_empty(), "the bundled plugins were compiled");
    for file in compiled.iter().chain(&files("plugins")) {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }

    // Compiled code someone else could have written is not loaded: it is
    // compiled again, and written owner-only.
    assert!(berth.stop());
    std::fs::set_permissions(&compiled[0], std::fs::Permissions::from_mode(0o666)).unwrap();
    let berth = Berth::start(dir.path(), "");
    poll(
        Duration::from_secs(30),
        "the open cache entry refused",
        || async {
            berth
                .log()
                .contains("ignoring a compile cache entry that someone else could have written")
                .then_some(())
        },
    )
    .await;
    assert_eq!(mode(&compiled[0]), 0o600);
    let token = std::fs::read_to_string(data.join("admin-token")).unwrap();
    assert_eq!(token.trim().len(), 48, "{token:?}");
    let r = client()
        .get(berth.url("/_berth/plugins"))
        .header("authorization", "Bearer ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn the_merged_openapi_names_each_operation_once() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(dir.path(), "");
    let doc = support::json_of(client().get(berth.url("/_berth/openapi.json"))).await;
    let mut ids = Vec::new();
    let mut rest = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            ids.push(op["operationId"].as_str().unwrap().to_string());
            for p in op["parameters"].as_array().unwrap() {
                if p["x-multi-segment"] == true {
                    rest += 1;
                    assert!(p["description"].is_string(), "{path} {method}");
                }
            }
        }
    }
    let count = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), count, "an operationId is used twice");
    assert!(count > 100, "every bundled route: {count}");
    assert!(
        rest > 0,
        "the Docker proxies' {{rest...}} parameters are marked"
    );
}

/// An HTTP/2 connection with prior knowledge (h2c) from the loopback
/// address `from`, offering the server a stream window of `window`; the
/// task driving it ends when the connection does.
async fn h2c(
    berth: &Berth,
    from: &str,
    window: u32,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let stream = connect_from(berth, from).await;
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(window)
        .handshake(stream)
        .await
        .unwrap();
    (send, tokio::spawn(conn))
}

/// Streams on `send`, one after another, each a `POST url` declaring a
/// 4 MiB body and sending all of it but the last byte as fast as the
/// server's windows let it, then holding on; a stream the server answers
/// 503 (no room for its body) is followed by a new one, until `stop`. The
/// statuses the server answered.
async fn unfinished_bodies(
    send: h2::client::SendRequest<bytes::Bytes>,
    url: String,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<u16> {
    const DECLARED: usize = 4 << 20;
    let mut statuses = Vec::new();
    while !*stop.borrow() {
        let Ok(mut send) = send.clone().ready().await else {
            break;
        };
        let req = http::Request::post(&url)
            .header("content-type", "application/json")
            .header("content-length", DECLARED)
            .body(())
            .unwrap();
        let Ok((response, mut body)) = send.send_request(req, false) else {
            break;
        };
        let sending = async {
            let mut left = DECLARED - 1;
            while left > 0 {
                body.reserve_capacity(left.min(64 << 10));
                let Some(Ok(room)) = std::future::poll_fn(|cx| body.poll_capacity(cx)).await else {
                    break;
                };
                let n = room.min(left);
                if body
                    .send_data(bytes::Bytes::from(vec![b' '; n]), false)
                    .is_err()
                {
                    break;
                }
                sent.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                left -= n;
            }
            std::future::pending::<()>().await
        };
        let mut stopped = stop.clone();
        tokio::select! {
            answer = response => match answer {
                Ok(r) => statuses.push(r.status().as_u16()),
                Err(_) => break,
            },
            _ = sending => {}
            _ = stopped.wait_for(|s| *s) => break,
        }
        if statuses.last() != Some(&503) {
            break;
        }
    }
    statuses
}

#[tokio::test]
async fn unfinished_http2_bodies_stay_within_the_body_budget() {
    const BUDGET_MIB: u64 = 32;
    const DECLARED: u64 = 4 << 20;
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(
        dir.path(),
        &format!("[server]\nmax_body_memory_mib = {BUDGET_MIB}\n"),
    );
    let http = client();
    for _ in 0..20 {
        let r = http.get(berth.url("/hello/warm")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    drop(http);
    let before = berth.rss_kib();

    // Two connections from two addresses, each with 150 streams of 4 MiB
    // bodies that never finish (as many at once as the server allows).
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut attackers = Vec::new();
    let mut drivers = Vec::new();
    for from in ["127.0.0.1", "127.0.0.2"] {
        let (send, driver) = h2c(&berth, from, 65_535).await;
        drivers.push(driver);
        // A first exchange, so the client knows the server's settings.
        let mut first = send.clone().ready().await.unwrap();
        let req = http::Request::get(berth.url("/hello/first"))
            .body(())
            .unwrap();
        let (answer, _) = first.send_request(req, true).unwrap();
        assert_eq!(answer.await.unwrap().status(), 200);
        for _ in 0..150 {
            let url = berth.url("/api/auth");
            let task = unfinished_bodies(send.clone(), url, sent.clone(), stopping.clone());
            attackers.push(tokio::spawn(task));
        }
    }

    // Until the bodies the budget has room for (a quarter of it per
    // address) have arrived but for their last byte, the host's memory is
    // sampled, and another client is served: a page and a body.
    let admitted = 2 * (BUDGET_MIB << 20) / 4 / DECLARED;
    let bystander = client_from("127.0.0.3");
    let (mut peak_kib, mut peak_held, mut served) = (0, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(120);
    while sent.load(std::sync::atomic::Ordering::Relaxed) < admitted * (DECLARED - 1) {
        assert!(
            Instant::now() < deadline,
            "the {admitted} bodies with room were not read within 120 s"
        );
        peak_kib = peak_kib.max(berth.rss_kib());
        peak_held = peak_held.max(support::metric(&berth, "berth_request_body_bytes").await);
        if served < 3 {
            let page = bystander
                .get(berth.url("/hello/bystander"))
                .send()
                .await
                .unwrap();
            assert_eq!(page.status(), 200);
            let echo = bystander
                .post(berth.url("/echo"))
                .json(&json!({ "message": "still here" }))
                .send()
                .await
                .unwrap();
            assert_eq!(echo.status(), 200, "a body from another client is read");
            served += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    peak_kib = peak_kib.max(berth.rss_kib());
    peak_held = peak_held.max(support::metric(&berth, "berth_request_body_bytes").await);
    stop.send_replace(true);
    let mut statuses = Vec::new();
    for a in attackers {
        statuses.extend(a.await.unwrap());
    }
    let sent_mib = sent.load(std::sync::atomic::Ordering::Relaxed) >> 20;
    let grew_mib = peak_kib.saturating_sub(before) >> 10;
    let refused = statuses.iter().filter(|s| **s == 503).count();
    eprintln!(
        "the attack sent {sent_mib} MiB in {} bodies ({refused} refused with 503); bodies held \
         at most {} MiB; the host grew by {grew_mib} MiB",
        statuses.len(),
        peak_held >> 20
    );
    assert!(served > 0, "the bystander was served during the attack");
    assert!(
        refused > 0,
        "bodies without room were refused: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 503),
        "only refusals are answered while the others are unfinished: {statuses:?}"
    );
    assert!(
        peak_held <= BUDGET_MIB << 20,
        "bodies held {peak_held} bytes, over the budget"
    );
    assert!(
        grew_mib < BUDGET_MIB + 16,
        "the host grew by {grew_mib} MiB under a {BUDGET_MIB} MiB body budget"
    );

    // Once the attack is gone, everything held is given back.
    drop(bystander);
    for d in drivers {
        d.abort();
    }
    support::wait_connections(&berth, 0).await;
    poll(Duration::from_secs(30), "the budget given back", || async {
        (support::metric(&berth, "berth_request_body_bytes").await == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn stalled_and_idle_connections_are_closed_on_the_idle_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(
        dir.path(),
        "[server]\nidle_timeout_ms = 1000\n\n[plugins.faults]\ngrants = [\"kv\"]\n",
    );
    support::mount(&berth, "faults", "/faults/ok").await;
    support::wait_connections(&berth, 0).await;

    // HTTP/2 streams whose window the client keeps shut: their answers
    // cannot be sent, and the connection is closed as an idle one would be.
    let (send, stalled) = h2c(&berth, "127.0.0.1", 0).await;
    let mut answers = Vec::new();
    for i in 0..10 {
        let mut send = send.clone().ready().await.unwrap();
        let req = http::Request::get(berth.url(&format!("/hello/stall{i}")))
            .body(())
            .unwrap();
        answers.push(send.send_request(req, true).unwrap().0);
    }
    // An HTTP/2 connection that never opens a stream.
    let (_quiet, idle) = h2c(&berth, "127.0.0.2", 65_535).await;
    // An HTTP/1.1 client that asks for 12 MiB and reads none of it.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.3:0".parse().unwrap()).unwrap();
    let mut unread = socket.connect(addr(&berth)).await.unwrap();
    unread
        .write_all(b"GET /faults/huge?mib=12 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();

    for (what, driver) in [("stalled HTTP/2", stalled), ("idle HTTP/2", idle)] {
        tokio::time::timeout(Duration::from_secs(60), driver)
            .await
            .unwrap_or_else(|_| panic!("the {what} connection is still open after 60 s"))
            .unwrap()
            .ok();
    }
    // By the server's count, all three are closed...
    support::wait_connections(&berth, 0).await;
    // ... the unread answer cut short, not sent whole.
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), unread.read_to_end(&mut got)).await;
    assert!(
        got.len() < 12 << 20,
        "the unread answer was cut short: {} bytes",
        got.len()
    );
    drop(answers);
}

/// A client whose connections come from the loopback address `from`.
fn client_from(from: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(from.parse::<std::net::IpAddr>().unwrap())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}
