//! The store's contract, the same on both backends: the embedded redb file
//! and a private PostgreSQL cluster. Racing transactions keep their rules
//! (no lost update, no write skew, no phantom), a conflict rolls back and
//! refuses until restart, limits give the same errors, and nothing is
//! visible before commit.
//!
//! PostgreSQL comes from Debian (`postgresql`); without it these tests skip
//! unless `BERTH_REQUIRE_POSTGRES=1` (CI), where that is a failure.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth::store::{PgOptions, Store, StoreError, Table, TxnError};
use support::postgres::Cluster;

/// Both stores, fresh: the embedded one in `dir`, PostgreSQL on `cluster`.
async fn stores(dir: &std::path::Path, cluster: Option<&Cluster>) -> Vec<Arc<Store>> {
    let mut out = vec![Store::open(&dir.join("t.redb")).unwrap()];
    if let Some(cluster) = cluster {
        let name = format!(
            "s{}",
            COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        cluster.create_database(&name);
        out.push(
            Store::connect(&pg_options(&cluster.url(&name)))
                .await
                .unwrap(),
        );
    }
    out
}

static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn pg_options(url: &str) -> PgOptions {
    PgOptions {
        url: url.to_string(),
        password: None,
        pool_size: 32,
        connect_timeout: Duration::from_secs(5),
        tls_ca: Default::default(),
    }
}

/// The private cluster, or None (and a note) when PostgreSQL is missing
/// and not required.
fn cluster() -> Option<&'static Cluster> {
    support::postgres::installed_or_skip("the PostgreSQL half").then(support::postgres::shared)
}

/// Run `$body` in a transaction until it commits, restarting on a conflict
/// as the SDK does (a conflict at commit runs it again too, as the host
/// does for a call that did not act outside KV).
macro_rules! until_committed {
    ($store:expr, |$t:ident, $attempt:ident| $body:expr) => {{
        let mut $attempt = 0u32;
        loop {
            let mut $t = $store.begin("a");
            let result: Result<(), TxnError> = loop {
                let result: Result<(), TxnError> = async { $body }.await;
                match result {
                    Err(TxnError::Conflict(_)) => {
                        $t.restart().await;
                        $attempt += 1;
                    }
                    other => break other,
                }
            };
            result.unwrap();
            match $t.commit().await {
                Ok(()) => break,
                Err(StoreError::Conflict(_)) => $attempt += 1,
                Err(e) => panic!("{e}"),
            }
        }
        $attempt
    }};
}

async fn number(t: &mut berth::store::Txn, key: &str) -> Result<i64, TxnError> {
    Ok(t.get(key)
        .await?
        .map_or(0, |v| String::from_utf8(v).unwrap().parse().unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_are_seen_by_their_own_txn_and_by_others_after_commit() {
    let dir = tempfile::tempdir().unwrap();
    for store in stores(dir.path(), cluster()).await {
        let kind = store.kind();
        let mut t = store.begin("a");
        t.set("k", b"v".to_vec()).await.unwrap();
        assert_eq!(t.get("k").await.unwrap(), Some(b"v".to_vec()), "{kind}");
        t.commit().await.unwrap();
        let mut t = store.begin("a");
        assert_eq!(t.get("k").await.unwrap(), Some(b"v".to_vec()), "{kind}");
        assert!(t.delete("k").await.unwrap(), "{kind}");
        assert!(!t.delete("k").await.unwrap(), "{kind}");
        drop(t);
        let mut other = store.begin("b");
        assert_eq!(
            other.get("k").await.unwrap(),
            None,
            "{kind}: namespaces are separate"
        );
        drop(other);
        let mut t = store.begin("a");
        assert_eq!(
            t.get("k").await.unwrap(),
            Some(b"v".to_vec()),
            "{kind}: a dropped transaction deleted nothing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_increments_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for store in stores(dir.path(), cluster()).await {
        let mut tasks = Vec::new();
        for _ in 0..40 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                until_committed!(store, |t, attempt| {
                    let _ = attempt;
                    t.increment("n", 1).await.map(drop)
                })
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let mut t = store.begin("a");
        assert_eq!(number(&mut t, "n").await.unwrap(), 40, "{}", store.kind());
    }
}

/// Two calls that each wrote a key of their own and cannot run again
/// (they acted outside KV) count down one counter (the deploy jobs of one
/// application on two instances): the later one waits for the earlier
/// one's commit, and neither is refused, whichever keys they wrote. A
/// write never waits for another call's write of another key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pinned_calls_that_wrote_their_own_keys_share_a_counter() {
    let dir = tempfile::tempdir().unwrap();
    for store in stores(dir.path(), cluster()).await {
        let kind = store.kind();
        for i in 0..64 {
            // Past the deadline a wait is refused: a failure, not a hang.
            let deadline = Instant::now() + Duration::from_secs(10);
            let counter = format!("run/{i}/left");
            let mut first = store.begin("a").until(deadline);
            let mut second = store.begin("a").until(deadline);
            first.pin();
            second.pin();
            first
                .set(&format!("lock/app/{i}/local"), vec![])
                .await
                .unwrap();
            let own = second.set(&format!("lock/app/{i}/second"), vec![]).await;
            assert!(own.is_ok(), "{kind}: {i}: {own:?}");
            let counted = second.increment(&counter, -1).await;
            assert!(matches!(counted, Ok(-1)), "{kind}: {i}: {counted:?}");
            let waiting = tokio::spawn(async move {
                let left = first.increment(&counter, -1).await;
                first.commit().await.map(|()| left)
            });
            second.commit().await.unwrap();
            let left = waiting.await.unwrap();
            assert!(
                matches!(left, Ok(Ok(-2))),
                "{kind}: {i}: the first counted after the second: {left:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_then_set_by_racing_calls_loses_no_update() {
    let dir = tempfile::tempdir().unwrap();
    for store in stores(dir.path(), cluster()).await {
        let all_read = Arc::new(tokio::sync::Barrier::new(10));
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (store, all_read) = (store.clone(), all_read.clone());
            tasks.push(tokio::spawn(async move {
                until_committed!(store, |t, attempt| {
                    let n = number(&mut t, "n").await?;
                    if attempt == 0 {
                        // Every call has read before any writes.
                        all_read.wait().await;
                    }
                    t.set("n", (n + 1).to_string().into_bytes()).await
                })
            }));
        }
        let mut reruns = 0;
        for task in tasks {
            reruns += task.await.unwrap();
        }
        let mut t = store.begin("a");
        assert_eq!(number(&mut t, "n").await.unwrap(), 10, "{}", store.kind());
        assert!(
            reruns >= 9,
            "{}: every loser ran again ({reruns})",
            store.kind()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn write_skew_is_prevented() {
    // Two on call, each may go off call if the other stays: at least one
    // must remain, whatever the interleaving.
    let dir = tempfile::tempdir().unwrap();
    for store in stores(dir.path(), cluster()).await {
        let mut t = store.begin("a");
        t.set("on/ann", b"1".to_vec()).await.unwrap();
        t.set("on/bob", b"1".to_vec()).await.unwrap();
        t.commit().await.unwrap();
        let both_read = Arc::new(tokio::sync::Barrier::new(2));
        let mut tasks = Vec::new();
        for me in ["on/ann", "on/bob"] {
            let (store, both_read) = (store.clone(), both_read.clone());
            tasks.push(tokio::spawn(async move {
                until_committed!(store, |t, attempt| {
                    let on = number(&mut t, "on/ann").await? + number(&mut t, "on/bob").await?;
                    if attempt == 0 {
                        both_read.wait().await;
                    }
                    if on >= 2 {
                        t.set(me, b"0".to_vec()).await?;
                    }
                    Ok(())
                })
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let mut t = store.begin("a");
        let on = number(&mut t, "on/ann").await.unwrap() + number(&mut t, "on/bob").await.unwrap();
        assert_eq!(on, 1, "{}: exactly one went off call", store.kind());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_listed_prefix_gains_no_phantom() {
    // Each call adds a user only if there is none yet.
    let dir = tempfile::tempdir().unwrap();
    for store in stores(dir.path(), cluster()).await {
        let all_read = Arc::new(tokio::sync::Barrier::new(5));
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (store, all_read) = (store.clone(), all_read.clone());
            tasks.push(tokio::spawn(async move {
                until_committed!(store, |t, attempt| {
                    let none = t.list("user/", None, 0).await?.entries.is_empty();
                    if attempt == 0 {
                        all_read.wait().await;
                    }
                    if none {
                        t.set(&format!("user/{i}"), b"admin".to_vec()).await?;
                    }
                    Ok(())
                })
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let mut t = store.begin("a");
        let users = t.list("user/", None, 0).await.unwrap().entries.len();
        assert_eq!(users, 1, "{}", store.kind());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lock_held_past_the_deadline_rolls_back_and_refuses_until_restart() {
    let dir = tempfile::tempdir().unwrap();
    for store in stores(dir.path(), cluster()).await {
        let kind = store.kind();
        let mut holder = store.begin("a");
        holder.set("k", b"1".to_vec()).await.unwrap();
        let started = Instant::now();
        let mut t = store
            .begin("a")
            .until(Instant::now() + Duration::from_millis(300));
        t.set("mine", b"x".to_vec()).await.unwrap();
        t.enqueue("job", b"", 0).await.unwrap();
        let refused = t.set("k", b"2".to_vec()).await;
        assert!(
            matches!(refused, Err(TxnError::Conflict(_))),
            "{kind}: {refused:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{kind}: bounded by the deadline"
        );
        assert!(t.aborted().is_some(), "{kind}");
        assert!(
            matches!(t.get("mine").await, Err(TxnError::Conflict(_))),
            "{kind}: every later call answers conflict"
        );
        drop(holder);
        t.restart().await;
        assert_eq!(
            t.get("mine").await.unwrap(),
            None,
            "{kind}: the write was dropped"
        );
        assert!(t.is_empty(), "{kind}: and the job too");
        t.set("mine", b"y".to_vec()).await.unwrap();
        t.commit().await.unwrap();
        let mut t = store.begin("a");
        assert_eq!(t.get("mine").await.unwrap(), Some(b"y".to_vec()), "{kind}");
        assert_eq!(
            t.get("k").await.unwrap(),
            None,
            "{kind}: the holder never committed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listings_merge_own_writes_and_page() {
    let dir = tempfile::tempdir().unwrap();
    for store in stores(dir.path(), cluster()).await {
        let kind = store.kind();
        let mut t = store.begin("a");
        for i in 0..5u8 {
            t.set(&format!("p/{i}"), vec![i]).await.unwrap();
        }
        t.set("q/0", vec![9]).await.unwrap();
        t.set("p", vec![9]).await.unwrap();
        t.set("é/0", vec![9]).await.unwrap();
        t.commit().await.unwrap();
        let mut t = store.begin("a");
        t.delete("p/1").await.unwrap();
        t.set("p/5", vec![5]).await.unwrap();
        let page = t.list("p/", None, 3).await.unwrap();
        let keys: Vec<_> = page.entries.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["p/0", "p/2", "p/3"], "{kind}");
        let page = t.list("p/", page.next.as_deref(), 3).await.unwrap();
        let keys: Vec<_> = page.entries.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["p/4", "p/5"], "{kind}");
        assert_eq!(page.next, None, "{kind}");
        let all = t.list("", None, 0).await.unwrap();
        let keys: Vec<_> = all.entries.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["p", "p/0", "p/2", "p/3", "p/4", "p/5", "q/0", "é/0"],
            "{kind}: byte order"
        );
        let page = t.list("é", None, 0).await.unwrap();
        assert_eq!(page.entries.len(), 1, "{kind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limits_give_the_same_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut answers = Vec::new();
    for store in stores(dir.path(), cluster()).await {
        let mut t = store.begin("a");
        let long_key = "k".repeat(1025);
        let errors = [
            t.get("").await.unwrap_err().to_string(),
            t.set(&long_key, vec![]).await.unwrap_err().to_string(),
            t.set("v", vec![0; (4 << 20) + 1])
                .await
                .unwrap_err()
                .to_string(),
            {
                t.set("text", b"abc".to_vec()).await.unwrap();
                t.increment("text", 1).await.unwrap_err().to_string()
            },
            t.enqueue("", b"", 0).await.unwrap_err().to_string(),
        ];
        // Refused inputs leave the transaction usable.
        t.set("ok", b"1".to_vec()).await.unwrap();
        t.commit().await.unwrap();
        answers.push(errors);
    }
    assert!(answers[0][0].contains("keys must be 1 to 1024 bytes"));
    assert!(answers[0][2].contains("values are at most"));
    for other in &answers[1..] {
        assert_eq!(other, &answers[0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn increments_read_and_refuse_the_same_values() {
    let dir = tempfile::tempdir().unwrap();
    let mut answers = Vec::new();
    for store in stores(dir.path(), cluster()).await {
        let mut t = store.begin("inc");
        let mut got = Vec::new();
        for (value, delta) in [
            (&b" +41 \n"[..], 1),
            (b"-7", -3),
            (b"0009", 1),
            (b"9223372036854775807", 1),
            (b"-9223372036854775808", -1),
            (b"99999999999999999999", 0),
            (b"4 2", 1),
            (b"", 1),
            (b"\xff1", 1),
        ] {
            t.set("k", value.to_vec()).await.unwrap();
            got.push(match t.increment("k", delta).await {
                Ok(n) => n.to_string(),
                Err(e) => e.to_string(),
            });
        }
        t.delete("k").await.unwrap();
        got.push(t.increment("k", 5).await.unwrap().to_string());
        assert_eq!(t.get("k").await.unwrap(), Some(b"5".to_vec()));
        t.commit().await.unwrap();
        answers.push(got);
    }
    assert_eq!(answers[0][..3], ["42", "-10", "10"]);
    assert!(answers[0][3].contains("overflows"), "{:?}", answers[0]);
    assert!(
        answers[0][5].contains("not a decimal integer"),
        "{:?}",
        answers[0]
    );
    for other in &answers[1..] {
        assert_eq!(other, &answers[0], "PostgreSQL as redb");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_sequences_and_metadata_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster();
    let name = "reopen";
    if let Some(c) = cluster {
        c.create_database(name);
    }
    let open = |i: usize| {
        let path = dir.path().join("r.redb");
        async move {
            if i == 0 {
                // The writer thread holds the file until it sees the store
                // dropped.
                loop {
                    match Store::open(&path) {
                        Ok(s) => break s,
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            } else {
                let url = cluster.unwrap().url(name);
                Store::connect(&pg_options(&url)).await.unwrap()
            }
        }
    };
    for i in 0..1 + cluster.is_some() as usize {
        let store = open(i).await;
        let kind = store.kind();
        let (sink, mut queued) = tokio::sync::mpsc::unbounded_channel();
        store.set_job_sink(sink);
        let mut t = store.begin("a");
        let first = t.enqueue("run", b"1", 0).await.unwrap();
        let second = t.enqueue("run", b"2", 0).await.unwrap();
        assert_ne!(first, second, "{kind}");
        t.commit().await.unwrap();
        assert_eq!(queued.recv().await.unwrap().id, first, "{kind}: announced");
        for expected in 1..=150 {
            assert_eq!(
                store.next_in_sequence("a", "ids").await.unwrap(),
                expected,
                "{kind}"
            );
        }
        store.meta_set("m", "key", b"value".to_vec()).await.unwrap();
        drop(store);
        let store = open(i).await;
        assert_eq!(
            store.meta_get("m", "key").await.unwrap(),
            Some(b"value".to_vec()),
            "{kind}"
        );
        assert_eq!(store.meta_list("m").await.unwrap().len(), 1, "{kind}");
        let jobs = store.jobs().await.unwrap();
        assert_eq!(jobs.len(), 2, "{kind}");
        assert_eq!(
            store.job("a", second).await.unwrap().unwrap().payload,
            "Mg==",
            "{kind}"
        );
        let next = store.next_in_sequence("a", "ids").await.unwrap();
        assert!(next > 150, "{kind}: never reused after a restart: {next}");
        let lease = Duration::from_secs(60);
        let (_, token) = store.claim_job("a", first, lease).await.unwrap().unwrap();
        if store.shared() {
            assert!(
                store.claim_job("a", first, lease).await.unwrap().is_none(),
                "{kind}: one claim at a time"
            );
            // A run whose claim another replica replaced commits nothing.
            let mut stale = store.begin("a");
            stale.set("from-a-stale-run", b"x".to_vec()).await.unwrap();
            stale.finish_job(first, token ^ 2);
            assert!(
                matches!(stale.commit().await, Err(StoreError::Aborted(_))),
                "{kind}"
            );
            let mut t = store.begin("a");
            assert_eq!(t.get("from-a-stale-run").await.unwrap(), None, "{kind}");
        }
        let mut t = store.begin("a");
        let third = t.enqueue("run", b"3", 0).await.unwrap();
        assert!(third > second, "{kind}: job ids go on: {third}");
        t.finish_job(first, token);
        t.commit().await.unwrap();
        assert_eq!(
            store.jobs().await.unwrap().len(),
            2,
            "{kind}: finished with the commit"
        );
        assert_eq!(store.dump(Table::Jobs).await.unwrap().len(), 2, "{kind}");
    }
}

/// Wait until no store in this process holds the redb file at `path` (a
/// dropped store's writer thread lets it go once it sees its channel
/// close), so another process can open it.
async fn released(path: &std::path::Path) {
    support::poll(
        Duration::from_secs(60),
        "the redb file to be let go",
        || async { redb::Database::open(path).ok().map(drop) },
    )
    .await;
}

/// `berth store copy`: a redb store to PostgreSQL and back, every table and
/// namespace counted and checksummed equal on both sides; a copy into a
/// store that holds something is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_copies_to_postgres_and_back_unchanged() {
    let Some(cluster) = cluster() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (first, last) = (dir.path().join("first.redb"), dir.path().join("last.redb"));
    {
        let store = Store::open(&first).unwrap();
        for (ns, n) in [("hello", 3), ("beacons", 40)] {
            let mut t = store.begin(ns);
            for i in 0..n {
                t.set(
                    &format!("key/{i}"),
                    format!("value {i} of {ns}").into_bytes(),
                )
                .await
                .unwrap();
            }
            t.enqueue("run", ns.as_bytes(), 60_000).await.unwrap();
            t.commit().await.unwrap();
        }
        store
            .meta_set("hmac-key/hello", "session", vec![7; 32])
            .await
            .unwrap();
    }
    released(&first).await;
    cluster.create_database("copied");
    let url = cluster.url("copied");
    let copy = |from: &str, to: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["store", "copy", "--from", from, "--to", to])
            .output()
            .unwrap()
    };
    let there = copy(first.to_str().unwrap(), &url);
    let text = String::from_utf8_lossy(&there.stdout).into_owned();
    assert!(
        there.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&there.stderr)
    );
    assert!(
        text.contains("copied: both stores hold the same entries"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("kv") && l.contains("beacons") && l.contains(" 40 ")),
        "{text}"
    );
    let back = copy(&url, last.to_str().unwrap());
    assert!(
        back.status.success(),
        "{}",
        String::from_utf8_lossy(&back.stderr)
    );

    let (first, last) = (Store::open(&first).unwrap(), Store::open(&last).unwrap());
    for table in Table::ALL {
        let before = first.census(table).await.unwrap();
        assert!(!before.is_empty(), "{}", table.name());
        assert_eq!(
            before,
            last.census(table).await.unwrap(),
            "{}",
            table.name()
        );
    }
    drop((first, last));

    let last = dir.path().join("last.redb");
    released(&last).await;
    let again = copy(last.to_str().unwrap(), &url);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("copy into an empty store"),
        "{again:?}"
    );
}
