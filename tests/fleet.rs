//! Berth replicas on one PostgreSQL database. They know each other
//! (`/_berth/health`); sessions, tokens and login throttles are shared;
//! jobs run once across the replicas, and one left by a replica killed
//! mid-job is finished by another. When the database goes away (a private cluster stopped under
//! writers and started again) calls that need the store answer 503 with
//! `Retry-After` (never hang), calls that do not keep answering, and after
//! it Berth reconnects by itself with nothing acknowledged lost.
//!
//! PostgreSQL comes from Debian (`postgresql`); without it these tests skip
//! unless `BERTH_REQUIRE_POSTGRES=1` (CI), where that is a failure.

mod support;

/// The tests, as `fleet::NAME`: CI's PostgreSQL pass skips them (they
/// are on PostgreSQL in every pass).
mod fleet {
    use crate::support;

    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Duration;

    use crate::support::docker::{self, Engine, IMAGE};
    use crate::support::postgres::{Cluster, installed_or_skip};
    use crate::support::{Berth, drop_file, get_json, jobber_done as done, plugin_wasm, poll};

    /// A replica on database `db` of `cluster`, serving the `jobber` fixture
    /// (its job deadline 4 s, so a lease lapses 9 s after a claim) and the
    /// `streamer` fixture beside the bundled plugins.
    fn replica(cluster: &Cluster, db: &str) -> (tempfile::TempDir, Berth) {
        replica_with(cluster, db, "")
    }

    /// Like [`replica`], with `more` at the end of its configuration.
    fn replica_with(cluster: &Cluster, db: &str, more: &str) -> (tempfile::TempDir, Berth) {
        let dir = tempfile::tempdir().unwrap();
        let plugins = dir.path().join("data/plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        for fixture in ["jobber", "streamer"] {
            drop_file(
                &plugin_wasm(fixture),
                &plugins.join(format!("{fixture}.wasm")),
            );
        }
        let config = format!(
            "watch_interval_ms = 50\n[store]\nurl = \"{}\"\n\
         [jobs]\nbackoff_ms = 20\n[plugins.jobber]\ngrants = [\"kv\", \"jobs\"]\n\
         deadline_ms = 4000\n[plugins.streamer]\ngrants = [\"events\"]\n{more}",
            cluster.url(db)
        );
        let berth = Berth::start(dir.path(), &config);
        (dir, berth)
    }

    async fn enqueue(c: &reqwest::Client, berth: &Berth, kind: &str, key: &str) {
        let r = c
            .post(berth.url(&format!("/jobber/enqueue/{kind}/{key}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{:?}", r.text().await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_job_runs_once_across_replicas_and_outlives_its_replica() {
        if !installed_or_skip("the replicas' jobs test") {
            return;
        }
        let cluster = Cluster::start().unwrap();
        cluster.create_database("jobs");
        let (_a_dir, mut a) = replica(&cluster, "jobs");
        let (_b_dir, b) = replica(&cluster, "jobs");
        let c = support::client();

        // Jobs queued on both replicas, each replica also looking for the
        // other's in the store: each runs once.
        for i in 0..20 {
            enqueue(&c, if i % 2 == 0 { &a } else { &b }, "count", "once").await;
        }
        poll(
            Duration::from_secs(60),
            "twenty count jobs to run",
            || async { (done(&c, &b, "once").await >= 20).then_some(()) },
        )
        .await;
        let settled = |view: serde_json::Value| {
            view["counts"].as_object().is_none_or(|counts| {
                counts
                    .values()
                    .all(|n| n["queued"] == 0 && n["running"] == 0)
            })
        };
        poll(
            Duration::from_secs(30),
            "both replicas to be idle",
            || async {
                let idle = settled(support::admin_view(&c, &a, "/_berth/jobs").await)
                    && settled(support::admin_view(&c, &b, "/_berth/jobs").await);
                idle.then_some(())
            },
        )
        .await;
        assert_eq!(done(&c, &a, "once").await, 20, "each job ran once");

        // A slow job on A, A killed while it runs: B finishes it once its
        // lease lapses, and A's cut run wrote nothing.
        enqueue(&c, &a, "slow", "orphan").await;
        poll(
            Duration::from_secs(30),
            "the slow job to run on A",
            || async {
                let view = support::admin_view(&c, &a, "/_berth/jobs").await;
                (view["counts"]["jobber"]["running"] == 1).then_some(())
            },
        )
        .await;
        a.kill9();
        poll(Duration::from_secs(60), "B to finish A's job", || async {
            (done(&c, &b, "orphan").await == 1).then_some(())
        })
        .await;
        poll(Duration::from_secs(30), "B to be idle", || async {
            settled(support::admin_view(&c, &b, "/_berth/jobs").await).then_some(())
        })
        .await;
        assert_eq!(
            done(&c, &b, "orphan").await,
            1,
            "the job's writes applied once"
        );
    }

    /// What one writer saw.
    #[derive(Default)]
    struct Tally {
        /// Increments answered 200: each must be in the store.
        acknowledged: AtomicU64,
        /// Answered with a status `Writers::start` was told may or may not
        /// have been kept.
        unsure: AtomicU64,
        /// Anything else (a hang past the client's timeout, another status).
        wrong: std::sync::Mutex<Vec<String>>,
    }

    /// Writers that each increment a counter of their own (`urls[i]`) until
    /// stopped, and count what they were answered.
    struct Writers {
        urls: Vec<String>,
        stop: Arc<AtomicBool>,
        tallies: Vec<Arc<Tally>>,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    }

    impl Writers {
        /// One writer per URL; an answer `unsure` accepts may or may not have
        /// been kept (the writer pauses 20 ms after one).
        fn start(
            c: &reqwest::Client,
            urls: Vec<String>,
            unsure: fn(&reqwest::Response) -> bool,
        ) -> Writers {
            let stop = Arc::new(AtomicBool::new(false));
            let tallies: Vec<Arc<Tally>> = urls.iter().map(|_| Arc::default()).collect();
            let tasks = urls
                .iter()
                .zip(&tallies)
                .map(|(url, tally)| {
                    let (c, url, stop, tally) =
                        (c.clone(), url.clone(), stop.clone(), tally.clone());
                    tokio::spawn(async move {
                        while !stop.load(Ordering::Relaxed) {
                            match c.post(&url).send().await {
                                Ok(r) if r.status() == 200 => {
                                    tally.acknowledged.fetch_add(1, Ordering::Relaxed);
                                }
                                Ok(r) if unsure(&r) => {
                                    tally.unsure.fetch_add(1, Ordering::Relaxed);
                                    tokio::time::sleep(Duration::from_millis(20)).await;
                                }
                                Ok(r) => {
                                    let status = r.status();
                                    let body = r.text().await.unwrap_or_default();
                                    tally
                                        .wrong
                                        .lock()
                                        .unwrap()
                                        .push(format!("{status}: {body}"));
                                }
                                Err(e) => tally.wrong.lock().unwrap().push(e.to_string()),
                            }
                        }
                    })
                })
                .collect();
            Writers {
                urls,
                stop,
                tallies,
                tasks,
            }
        }

        fn acknowledged(&self) -> Vec<u64> {
            self.tallies
                .iter()
                .map(|t| t.acknowledged.load(Ordering::Relaxed))
                .collect()
        }

        fn unsure(&self) -> u64 {
            self.tallies
                .iter()
                .map(|t| t.unsure.load(Ordering::Relaxed))
                .sum()
        }

        /// Wait until every writer has `more` acknowledged increments than it
        /// had at the call.
        async fn served(&self, more: u64, timeout: Duration, what: &str) {
            let before = self.acknowledged();
            poll(timeout, what, || async {
                self.acknowledged()
                    .iter()
                    .zip(&before)
                    .all(|(now, then)| *now >= then + more)
                    .then_some(())
            })
            .await;
        }

        /// Stop, then check each counter: every acknowledged increment is
        /// kept, and an unsure one may have been (its commit was cut off mid
        /// way), no more than that; no other answer came.
        async fn stop_and_check(self, c: &reqwest::Client) {
            self.stop.store(true, Ordering::Relaxed);
            for task in self.tasks {
                task.await.unwrap();
            }
            for (i, (tally, url)) in self.tallies.iter().zip(&self.urls).enumerate() {
                let wrong = tally.wrong.lock().unwrap().clone();
                assert!(wrong.is_empty(), "writer {i} got {wrong:?}");
                let stored = get_json(c, url).await.1["visits"].as_u64().unwrap();
                let acked = tally.acknowledged.load(Ordering::Relaxed);
                let unsure = tally.unsure.load(Ordering::Relaxed);
                assert!(
                    stored >= acked && stored <= acked + unsure,
                    "writer {i}: stored {stored}, acknowledged {acked}, unsure {unsure}"
                );
            }
        }
    }

    /// Lighthouse's answer to a login from `c`: its status.
    async fn login(c: &reqwest::Client, berth: &Berth, email: &str, password: &str) -> u16 {
        c.post(berth.url("/api/v0.2/login"))
            .json(&serde_json::json!({ "Email": email, "Password": password }))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sessions_tokens_and_login_throttles_are_the_fleets() {
        if !installed_or_skip("the replicas' security test") {
            return;
        }
        let cluster = Cluster::start().unwrap();
        cluster.create_database("security");
        let (_a_dir, a) = replica(&cluster, "security");
        let (_b_dir, b) = replica(&cluster, "security");
        let c = support::client();

        // Each knows the other: two replicas alive, each its own.
        let health = |berth: &Berth| {
            let (c, url) = (c.clone(), berth.url("/_berth/health"));
            async move { get_json(&c, &url).await.1 }
        };
        let (ha, hb) = poll(Duration::from_secs(30), "two replicas alive", || async {
            let (ha, hb) = (health(&a).await, health(&b).await);
            (ha["replicas"] == 2 && hb["replicas"] == 2).then_some((ha, hb))
        })
        .await;
        assert_ne!(ha["replica"], hb["replica"]);

        // A Lighthouse cookie made on A is good on B.
        let cookie = support::lighthouse_admin(&a).await;
        let r = c
            .get(b.url("/api/v0.2/users/list"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{:?}", r.text().await);

        // A Portainer JWT made on B is good on A.
        let creds = serde_json::json!({ "Username": "admin", "Password": "admin-password" });
        let r = c
            .post(b.url("/api/users/admin/init"))
            .json(&creds)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let auth: serde_json::Value = c
            .post(b.url("/api/auth"))
            .json(&creds)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let jwt = auth["jwt"].as_str().expect("a JWT");
        let r = c
            .get(a.url("/api/users"))
            .bearer_auth(jwt)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{:?}", r.text().await);

        // Wrong passwords from one address, taking turns on the replicas: the
        // address's limit (5 a minute) is met as on one Berth, and then even
        // the right one is throttled.
        let mut statuses = Vec::new();
        for k in 0..8 {
            let replica = if k % 2 == 0 { &a } else { &b };
            statuses.push(login(&c, replica, "admin", "wrong").await);
        }
        assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429, 429]);
    }

    /// Publish `body` on `topic` through `berth`'s streamer: the event's number.
    async fn publish(c: &reqwest::Client, berth: &Berth, topic: &str, body: String) -> u64 {
        let r = c
            .post(berth.url(&format!("/stream/{topic}")))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json::<serde_json::Value>().await.unwrap()["seq"]
            .as_u64()
            .expect("a number")
    }

    /// Publish `n` events on `topic` through `berth`, one after another:
    /// (number, body) of each.
    async fn publish_many(
        c: &reqwest::Client,
        berth: &Berth,
        topic: &str,
        n: u32,
    ) -> Vec<(u64, String)> {
        let mut numbers = Vec::new();
        for i in 0..n {
            let body = format!("{} {i}", berth.url(""));
            numbers.push((publish(c, berth, topic, body.clone()).await, body));
        }
        numbers
    }

    /// Subscribe to `topic` on `berth` as Server-Sent Events, `after` a number
    /// with replay: the open stream (subscribed once its headers are here).
    async fn subscribe(
        c: &reqwest::Client,
        berth: &Berth,
        topic: &str,
        after: Option<u64>,
    ) -> reqwest::Response {
        let replay = after.map_or(String::new(), |n| format!("&replay=1&after={n}"));
        let r = c
            .get(berth.url(&format!("/stream/{topic}?framing=sse{replay}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r
    }

    /// What a closed topic's stream carried: (id, data) per event.
    async fn received(r: reqwest::Response) -> Vec<(u64, String)> {
        let text = tokio::time::timeout(Duration::from_secs(60), r.text())
            .await
            .expect("the stream to end once its topic closed")
            .unwrap();
        text.split("\n\n")
            .filter(|e| !e.trim().is_empty())
            .map(|e| {
                let id = e
                    .lines()
                    .find_map(|l| l.strip_prefix("id: "))
                    .expect("an id");
                let data = e
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .expect("data");
                (id.parse().unwrap(), data.to_string())
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn events_reach_subscribers_on_every_replica_in_order_and_replay() {
        if !installed_or_skip("the replicas' events test") {
            return;
        }
        let cluster = Cluster::start().unwrap();
        cluster.create_database("events");
        let (_a_dir, a) = replica(&cluster, "events");
        let (_b_dir, b) = replica(&cluster, "events");
        let c = support::client();
        support::mount(&a, "streamer", "/stream/t/close").await;
        support::mount(&b, "streamer", "/stream/t/close").await;

        // A subscriber on each replica; events published on both at once.
        let on_a = subscribe(&c, &a, "news", None).await;
        let on_b = subscribe(&c, &b, "news", None).await;
        let (from_a, from_b) = futures_util::future::join(
            publish_many(&c, &a, "news", 15),
            publish_many(&c, &b, "news", 15),
        )
        .await;
        let mut published: Vec<(u64, String)> = from_a.into_iter().chain(from_b).collect();
        let last = publish(&c, &a, "news/close", "end".into()).await;
        published.push((last, "end".into()));
        published.sort();
        let numbers: std::collections::BTreeSet<u64> = published.iter().map(|p| p.0).collect();
        assert_eq!(numbers.len(), 31, "one numbering across the fleet");

        // Each subscriber saw every event, in number order, whichever replica
        // published it.
        assert_eq!(received(on_a).await, published, "the subscriber on A");
        assert_eq!(received(on_b).await, published, "the subscriber on B");

        // A client that reconnects, to the other replica, replays what it
        // missed after the last number it saw.
        let seen = published[9].0;
        let replayed = received(subscribe(&c, &b, "news", Some(seen)).await).await;
        assert_eq!(replayed, published[10..], "replay after {seen} on B");
    }

    /// A replica on database `db` of `cluster` serving the `dockerprobe`
    /// fixture on `engine`.
    fn probe_replica(cluster: &Cluster, db: &str, engine: &Engine) -> (tempfile::TempDir, Berth) {
        let dir = tempfile::tempdir().unwrap();
        let plugins = dir.path().join("data/plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        drop_file(
            &plugin_wasm("dockerprobe"),
            &plugins.join("dockerprobe.wasm"),
        );
        let config = format!(
            "watch_interval_ms = 50\n[store]\nurl = \"{}\"\n[docker]\nlocal = \"{}\"\n\
         [plugins.dockerprobe]\ngrants = [\"docker\", \"events\"]\n",
            cluster.url(db),
            engine.host
        );
        let berth = Berth::start(dir.path(), &config);
        (dir, berth)
    }

    /// Run a container named `name` on `engine` (it exits at once).
    fn run_container(engine: &Engine, name: &str) {
        let run = engine.cli(&[
            "run",
            "-d",
            "--network",
            "none",
            "--name",
            name,
            IMAGE,
            "true",
        ]);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
    }

    /// Read `stream` (NDJSON engine events) until `done` holds for the events
    /// about the containers named in `names`, seen so far.
    async fn engine_events<S>(
        stream: &mut S,
        seen: &mut String,
        names: &[&str],
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value>
    where
        S: futures_core::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin,
    {
        let about = |seen: &str| -> Vec<serde_json::Value> {
            seen.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|e| names.iter().any(|n| e["Actor"]["Attributes"]["name"] == *n))
                .collect()
        };
        tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                let events = about(seen);
                if done(&events) {
                    return events;
                }
                match std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx))
                    .await
                {
                    Some(chunk) => seen.push_str(&String::from_utf8_lossy(&chunk.unwrap())),
                    None => panic!("the event stream ended: {seen}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the events of {names:?} within 60 s: {seen}"))
    }

    /// How many of `events` are `action` of container `name`.
    fn count(events: &[serde_json::Value], name: &str, action: &str) -> usize {
        events
            .iter()
            .filter(|e| e["Actor"]["Attributes"]["name"] == name && e["Action"] == action)
            .count()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn one_replica_follows_an_engine_and_another_takes_over() {
        if !installed_or_skip("the replicas' engine follower test") {
            return;
        }
        let Some(engine) = docker::shared() else {
            return;
        };
        let cluster = Cluster::start().unwrap();
        cluster.create_database("follow");
        let (_a_dir, mut a) = probe_replica(&cluster, "follow", engine);
        let (_b_dir, b) = probe_replica(&cluster, "follow", engine);
        let c = support::client();
        support::mount(&a, "dockerprobe", "/probe/local/info").await;
        support::mount(&b, "dockerprobe", "/probe/local/info").await;

        // The subscriber is on B. A follows the engine into the topic: the
        // first container's events arrive; then B is asked to follow too.
        let r = c.get(b.url("/probe/events/engine")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let mut stream = Box::pin(r.bytes_stream());
        let mut seen = String::new();
        let follow = |berth: &Berth| {
            let (c, url) = (c.clone(), berth.url("/probe/local/follow/engine"));
            async move {
                let r = c.post(url).send().await.unwrap();
                assert_eq!(r.status(), 200, "{:?}", r.text().await);
            }
        };
        let pid = std::process::id();
        let (first, second, third) = (
            format!("fleet-first-{pid}"),
            format!("fleet-second-{pid}"),
            format!("fleet-third-{pid}"),
        );
        follow(&a).await;
        run_container(engine, &first);
        engine_events(&mut stream, &mut seen, &[&first], |e| {
            count(e, &first, "die") >= 1
        })
        .await;
        follow(&b).await;
        // Each event once, not once per replica: the second container's, by
        // which time a second follower would have delivered the first's again.
        run_container(engine, &second);
        let events = engine_events(&mut stream, &mut seen, &[&first, &second], |e| {
            count(e, &second, "die") >= 1
        })
        .await;
        for name in [&first, &second] {
            for action in ["create", "start", "die"] {
                assert_eq!(
                    count(&events, name, action),
                    1,
                    "{action} of {name}: {seen}"
                );
            }
        }

        // The follower's replica is killed: the other takes its lease over once
        // it lapses, and follows from where the first got to.
        a.kill9();
        run_container(engine, &third);
        let events = engine_events(&mut stream, &mut seen, &[&third], |e| {
            count(e, &third, "die") >= 1
        })
        .await;
        assert!(count(&events, &third, "start") >= 1, "{seen}");
        for name in [&first, &second, &third] {
            engine.cli(&["rm", "-f", name]);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_plugin_set_is_the_fleets() {
        if !installed_or_skip("the replicas' plugin set test") {
            return;
        }
        let cluster = Cluster::start().unwrap();
        cluster.create_database("plugins");
        let (_a_dir, a) = replica(&cluster, "plugins");
        let (_b_dir, b) = replica(&cluster, "plugins");
        let c = support::client();
        let greets = |berth: &Berth| berth.url("/hello/ops");
        let version_on = |berth: &Berth| {
            let (c, url) = (c.clone(), greets(berth));
            async move {
                let (status, body) = get_json(&c, &url).await;
                (status == 200).then(|| body["version"].as_i64().unwrap_or(1))
            }
        };

        // Pushed through A's store: both replicas mount it.
        let pushed = std::time::Instant::now();
        let out = a.cli(&["plugins", "push", plugin_wasm("hello").to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("hello.wasm: pushed"));
        poll(
            Duration::from_secs(30),
            "hello on both replicas",
            || async {
                (version_on(&a).await.is_some() && version_on(&b).await.is_some()).then_some(())
            },
        )
        .await;
        eprintln!(
            "pushed hello answered on both replicas after {:?}",
            pushed.elapsed()
        );
        assert!(
            a.plugins_dir().join("hello.wasm").exists()
                && b.plugins_dir().join("hello.wasm").exists()
        );

        // Under load on both, hello 2 dropped into B's folder replaces hello
        // on both, with no failed request.
        let stop = Arc::new(AtomicBool::new(false));
        let load = {
            let (c, stop) = (c.clone(), stop.clone());
            let urls = [greets(&a), greets(&b)];
            tokio::spawn(async move {
                let (mut served, mut failed) = (0u64, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    for url in &urls {
                        let (status, body) = get_json(&c, url).await;
                        if status == 200 {
                            served += 1;
                        } else {
                            failed.push((status, body));
                        }
                    }
                }
                (served, failed)
            })
        };
        drop_file(&plugin_wasm("hello2"), &b.plugins_dir().join("hello.wasm"));
        let swapped = std::time::Instant::now();
        poll(
            Duration::from_secs(30),
            "hello 2 on both replicas",
            || async {
                (version_on(&a).await == Some(2) && version_on(&b).await == Some(2)).then_some(())
            },
        )
        .await;
        eprintln!(
            "hello 2 dropped on B served on both after {:?}",
            swapped.elapsed()
        );
        stop.store(true, Ordering::Relaxed);
        let (served, failed) = load.await.unwrap();
        assert!(failed.is_empty(), "failed during the swap: {failed:?}");
        assert!(served > 0);

        // Each replica says what every replica serves.
        let view = poll(
            Duration::from_secs(30),
            "both replicas to report hello 2",
            || async {
                let view = support::admin_view(&c, &a, "/_berth/plugins").await;
                let replicas = view["replicas"].as_array()?;
                (replicas.len() == 2
                    && replicas
                        .iter()
                        .all(|r| r["plugins"]["hello"]["version"] == "2.0.0"))
                .then_some(view)
            },
        )
        .await;
        assert!(
            view["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["id"] == view["replica"])
        );

        // Removed from A's folder: unmounted on both.
        std::fs::remove_file(a.plugins_dir().join("hello.wasm")).unwrap();
        poll(
            Duration::from_secs(30),
            "hello gone from both replicas",
            || async {
                (version_on(&a).await.is_none() && version_on(&b).await.is_none()).then_some(())
            },
        )
        .await;
        assert!(!b.plugins_dir().join("hello.wasm").exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres_restarting_under_writers_answers_503_and_loses_nothing() {
        if !installed_or_skip("the PostgreSQL restart test") {
            return;
        }
        let cluster = Cluster::start().unwrap();
        cluster.create_database("fleet");
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "watch_interval_ms = 50\n[store]\nurl = \"{}\"\nconnect_timeout_ms = 1000\n",
            cluster.url("fleet")
        );
        let berth = Berth::start(dir.path(), &config);
        // A client that gives up well after any call's deadline: a hang shows
        // as an error, not as a stuck test.
        let c = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();

        let urls = (0..5)
            .map(|i| berth.url(&format!("/hello/w{i}/visits")))
            .collect();
        let writers = Writers::start(&c, urls, |r| {
            r.status() == 503 && r.headers().contains_key("retry-after")
        });
        writers
            .served(5, Duration::from_secs(30), "every writer is served")
            .await;

        cluster.stop();
        poll(
            Duration::from_secs(30),
            "writers are refused with Retry-After",
            || async { (writers.unsure() >= 10).then_some(()) },
        )
        .await;
        // A route that does not touch the store still answers.
        let (status, body) = get_json(&c, &berth.url("/hello/ann")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["greeting"], "Hello, ann!");

        cluster.start_again();
        writers
            .served(5, Duration::from_secs(60), "every writer is served again")
            .await;
        writers.stop_and_check(&c).await;
    }

    /// Third-party clients, unmodified, run whole sessions against three
    /// replicas behind nginx: the Portainer 1.x client generated from its
    /// Swagger description (`portainer-api`) and the official Docker Cloud
    /// Python SDK (`python-dockercloud`, on which the docker-cloud CLI is
    /// built), its event websocket on whichever replica nginx chose.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn real_clients_run_whole_sessions_against_the_fleet() {
        if !installed_or_skip("the fleet's client sessions") {
            return;
        }
        let Some(engine) = docker::shared() else {
            return;
        };
        let Some(bin) = support::nginx::binary() else {
            return;
        };
        let (Some(portainer), Some(dockercloud)) =
            (support::portainer_clients(), support::python())
        else {
            return;
        };
        let cluster = Cluster::start().unwrap();
        cluster.create_database("clients");
        let more = format!(
            "[docker]\nlocal = \"{}\"\nallow = [\"tcp://127.0.0.1:*\"]\n\
         [plugins.stacks.settings]\nstop_timeout_secs = 1\n",
            engine.host
        );
        let (_a_dir, a) = replica_with(&cluster, "clients", &more);
        let (_b_dir, b) = replica_with(&cluster, "clients", &more);
        let (_c_dir, c3) = replica_with(&cluster, "clients", &more);
        let front = support::nginx::Nginx::start(bin, &[&a.url, &b.url, &c3.url]).await;

        let mut session = std::process::Command::new(portainer);
        session.arg(support::script("py/portainer_api_session.py"));
        session.arg(&front.url);
        support::client_session(session, "the portainer-api session on the fleet").await;

        let auth = b.cli_line(
            &["run", "stacks", "apikey:create", "alice"],
            "Authorization: ",
        );
        let rest = format!("{}/", front.url);
        let out = tokio::task::spawn_blocking(move || {
            let child = std::process::Command::new(dockercloud)
                .arg(support::script("py/dockercloud_scenario.py"))
                .env("DOCKERCLOUD_AUTH", &auth)
                .env("BERTH_REST_HOST", &rest)
                .env("BERTH_STREAM_HOST", rest.replacen("http://", "ws://", 1))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            support::wait_bounded(
                child,
                Duration::from_secs(180),
                "the Docker Cloud SDK on the fleet",
            )
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("\"ok\": true"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Send 50 requests at once, built by `request(i)`: their statuses and
    /// bodies.
    async fn race50(
        request: impl Fn(usize) -> reqwest::RequestBuilder,
    ) -> Vec<(u16, serde_json::Value)> {
        futures_util::future::join_all((0..50).map(|i| {
            let request = request(i);
            async move {
                let r = request.send().await.unwrap();
                let status = r.status().as_u16();
                (status, r.json().await.unwrap_or_default())
            }
        }))
        .await
    }

    /// Exactly one of `answers` is 200 and the others are among `refused`:
    /// the winner's body.
    fn one_wins(answers: &[(u16, serde_json::Value)], refused: &[u16]) -> serde_json::Value {
        let won: Vec<_> = answers.iter().filter(|a| a.0 == 200).collect();
        assert_eq!(won.len(), 1, "{answers:?}");
        assert!(
            answers.iter().all(|a| a.0 == 200 || refused.contains(&a.0)),
            "{answers:?}"
        );
        won[0].1.clone()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn three_replicas_behind_nginx_keep_the_rules() {
        if !installed_or_skip("the fleet behind nginx") {
            return;
        }
        let Some(bin) = support::nginx::binary() else {
            return;
        };
        let cluster = Cluster::start().unwrap();
        cluster.create_database("three");
        let (_a_dir, a) = replica(&cluster, "three");
        let (_b_dir, b) = replica(&cluster, "three");
        let (_c_dir, mut c3) = replica(&cluster, "three");
        let front = support::nginx::Nginx::start(bin, &[&a.url, &b.url, &c3.url]).await;
        let url = |path: &str| format!("{}{path}", front.url);
        let http = support::client();

        // Requests reach every replica.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..12 {
            seen.insert(get_json(&http, &url("/_berth/health")).await.1["replica"].clone());
        }
        assert_eq!(seen.len(), 3, "{seen:?}");

        // 50 racing creations per uniqueness rule, over the replicas: one
        // wins, the others are refused, and the winner is what is stored.
        let answers = race50(|i| {
            let body =
                serde_json::json!({ "Username": format!("admin{i}"), "Password": "secret-pass" });
            http.post(url("/api/users/admin/init")).json(&body)
        })
        .await;
        let won = one_wins(&answers, &[409]);
        let winner = won["Username"].as_str().unwrap().to_string();
        let auth = support::json_of(
            http.post(url("/api/auth"))
                .json(&serde_json::json!({ "Username": winner, "Password": "secret-pass" })),
        )
        .await;
        let jwt = auth["jwt"]
            .as_str()
            .expect("the winner logs in")
            .to_string();
        let users = support::json_of(http.get(url("/api/users")).bearer_auth(&jwt)).await;
        assert_eq!(users.as_array().unwrap().len(), 1, "{users}");
        assert_eq!(users[0]["Username"], winner.as_str());

        // Portainer: one user per name whatever its case, one team per name.
        let answers = race50(|i| {
            let name = if i % 2 == 0 { "dupe" } else { "DuPe" };
            let body =
                serde_json::json!({ "Username": name, "Password": "pw-long-enough", "Role": 2 });
            http.post(url("/api/users")).bearer_auth(&jwt).json(&body)
        })
        .await;
        let won = one_wins(&answers, &[409]);
        let users = support::json_of(http.get(url("/api/users")).bearer_auth(&jwt)).await;
        let dupes: Vec<_> = users
            .as_array()
            .unwrap()
            .iter()
            .filter(|u| u["Username"].as_str().unwrap().eq_ignore_ascii_case("dupe"))
            .collect();
        assert_eq!(dupes.len(), 1, "{users}");
        assert_eq!(
            (&dupes[0]["Id"], &dupes[0]["Username"]),
            (&won["Id"], &won["Username"])
        );
        let answers = race50(|_| {
            let body = serde_json::json!({ "Name": "ops" });
            http.post(url("/api/teams")).bearer_auth(&jwt).json(&body)
        })
        .await;
        let won = one_wins(&answers, &[409]);
        let teams = support::json_of(http.get(url("/api/teams")).bearer_auth(&jwt)).await;
        assert_eq!(teams.as_array().map(Vec::len), Some(1), "{teams}");
        assert_eq!(teams[0]["Id"], won["Id"]);

        // Lighthouse: one user per email.
        let cookie = support::lighthouse_admin(&a).await;
        let answers = race50(|_| {
            let body =
                serde_json::json!({ "Email": "same@example.com", "Password": "pw-long-enough" });
            http.post(url("/api/v0.2/users/create"))
                .header("cookie", &cookie)
                .json(&body)
        })
        .await;
        one_wins(&answers, &(400..500).collect::<Vec<u16>>());
        let users = support::json_of(
            http.get(url("/api/v0.2/users/list"))
                .header("cookie", &cookie),
        )
        .await;
        let same = users
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| **e == "same@example.com")
            .count();
        assert_eq!(same, 1, "{users}");

        // CIKit: one user per name.
        let secret = b.cikit_user("boss", "owner");
        let login = serde_json::json!({ "username": "boss", "code": support::totp(&secret, 0) });
        let auth = support::json_of(http.post(url("/api/v1/user/auth")).json(&login)).await;
        let token = auth["access_token"]
            .as_str()
            .expect("a CIKit token")
            .to_string();
        let answers = race50(|_| {
            let body = serde_json::json!({ "username": "twin", "group": "viewer" });
            http.post(url("/api/v1/user/add"))
                .bearer_auth(&token)
                .json(&body)
        })
        .await;
        one_wins(&answers, &[400]);
        assert!(
            answers
                .iter()
                .filter(|a| a.0 != 200)
                .all(|a| a.1["errorId"] == 914),
            "{answers:?}"
        );
        let users = support::json_of(http.get(url("/api/v1/user/list")).bearer_auth(&token)).await;
        let twins = users
            .as_array()
            .unwrap()
            .iter()
            .filter(|u| u["username"] == "twin")
            .count();
        assert_eq!(twins, 1, "{users}");

        // 3 x 1000 increments of one counter over the replicas: exact.
        let writers = (0..3).map(|_| {
            let (http, target) = (http.clone(), url("/hello/shared/visits"));
            async move {
                for _ in 0..1000 {
                    loop {
                        let r = http.post(&target).send().await.unwrap();
                        match r.status().as_u16() {
                            200 => break,
                            // Not done (a conflict's retry-later): send it again.
                            503 => tokio::time::sleep(Duration::from_millis(5)).await,
                            other => panic!("{other}: {:?}", r.text().await),
                        }
                    }
                }
            }
        });
        futures_util::future::join_all(writers).await;
        let (_, body) = get_json(&http, &url("/hello/shared/visits")).await;
        assert_eq!(body["visits"], 3000, "{body}");

        // kill -9 of one replica under five writers: every acknowledged write
        // is kept, and the other two keep serving through nginx.
        // Cut off with its replica (nginx's 502), or not done: may or may not
        // have been kept.
        let urls = (0..5)
            .map(|i| url(&format!("/hello/k{i}/visits")))
            .collect();
        let writers = Writers::start(&http, urls, |r| r.status() == 502 || r.status() == 503);
        writers
            .served(20, Duration::from_secs(30), "every writer is served")
            .await;
        c3.kill9();
        writers
            .served(
                50,
                Duration::from_secs(60),
                "the two left serve every writer",
            )
            .await;
        writers.stop_and_check(&http).await;
        drop(front);
    }
}
