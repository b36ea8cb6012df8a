//! Berth's benchmarks, in one run (`cargo bench --profile dist --bench berth`; needs `wrk`).
//!
//! 1. instantiate + dispatch of the hello plugin in-process (median, p99),
//!    and the teardown of its spent store, timed apart;
//! 2. hello-route req/s through the real berth binary vs a native hyper
//!    hello server, both driven by wrk on loopback;
//! 3. time from dropping a .wasm into the plugins folder to its first 200,
//!    with the compile cache cold and warm;
//! 4. req/s and errors while the plugin is hot-swapped under load.
//!
//! Knobs: BENCH_SECONDS (default 10), BENCH_CONNECTIONS (default 64).

/// The allocator the `berth` binary uses, so in-process figures match it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// The end-to-end tests' harness: start the real binary, read its address.
#[path = "../../tests/support/mod.rs"]
mod support;

mod shared;
use shared::{native_hello, wrk, wrk_script};

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth::bindings::Request;
use berth::caps::{CallCx, PluginEnv};
use berth::runtime::Runtime;

fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let connections: u64 = std::env::var("BENCH_CONNECTIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut report = Vec::new();

    let (median, p99, inst, teardown, parallel) = rt.block_on(instantiate_and_dispatch(
        std::env::var("BENCH_CALLS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20_000),
    ))?;
    report.push(format!("instantiate+dispatch (in-process, hello GET): median {median:.1} us, p99 {p99:.1} us (instantiate alone: median {inst:.1} us)"));
    report.push(format!(
        "store teardown after the answer (memory reset, slots back to the pool): median {teardown:.1} us"
    ));
    report.push(format!(
        "fresh instance per call, one task per core: {parallel:.0} calls/s"
    ));

    if std::env::var_os("BENCH_DISPATCH_ONLY").is_some() {
        print_report(&report);
        return Ok(());
    }
    let wrk_available = Command::new("wrk").arg("--version").output().is_ok();
    if !wrk_available {
        report.push("wrk not found (apt-get install wrk): HTTP figures skipped".into());
        print_report(&report);
        return Ok(());
    }

    // Native hyper hello server, in this process.
    let native = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(native_hello(listener));
        anyhow::Ok((addr, task))
    })?;
    let native_run = wrk(
        &format!("http://{}/hello/bench", native.0),
        seconds,
        connections,
    )?;
    native.1.abort();
    report.push(format!(
        "native hyper hello:  {:>9.0} req/s  (non-2xx {}, socket errors {})",
        native_run.rps, native_run.non_2xx, native_run.errors
    ));

    let dir = tempfile::tempdir()?;
    let berth = support::Berth::start(dir.path(), "");
    let hello_url = format!("{}/hello/bench", berth.url);
    let berth_run = wrk(&hello_url, seconds, connections)?;
    report.push(format!(
        "berth hello route:   {:>9.0} req/s  (non-2xx {}, socket errors {})",
        berth_run.rps, berth_run.non_2xx, berth_run.errors
    ));
    report.push(format!(
        "  = {:.2}x native hyper (`--bench peers` measures wasmtime serve in the same run)",
        berth_run.rps / native_run.rps,
    ));
    // Durable writes: each 200 comes after its commit is on disk. Distinct
    // keys share group commits; one hot key is serialised by its lock.
    let spread = wrk_script(
        &berth.url,
        seconds,
        connections,
        "counter = 0\nrequest = function()\n  counter = counter + 1\n  \
         return wrk.format(\"POST\", \"/hello/k\" .. counter .. \"/visits\")\nend\n",
    )?;
    report.push(format!(
        "berth KV increment, distinct keys (POST, durable before 200): {:>6.0} req/s  (non-2xx {}, errors {})",
        spread.rps, spread.non_2xx, spread.errors
    ));
    let hot = wrk_script(
        &format!("{}/hello/hot/visits", berth.url),
        seconds,
        connections,
        "wrk.method = \"POST\"\n",
    )?;
    report.push(format!(
        "berth KV increment, one hot key (serialised by its lock):   {:>6.0} req/s  (non-2xx {}, errors {})",
        hot.rps, hot.non_2xx, hot.errors
    ));
    drop(berth);

    // Drop-to-first-200, cold then warm compile cache.
    let dir = tempfile::tempdir()?;
    let berth = support::Berth::start(dir.path(), "install_bundled = false\n");
    let hello = berth::BUNDLED
        .iter()
        .find(|(n, _)| *n == "hello.wasm")
        .map(|(_, b)| *b)
        .unwrap();
    let target = berth.plugins_dir().join("hello.wasm");
    let probe = format!("{}/hello/x", berth.url);
    let cold = rt.block_on(drop_to_200(hello, &target, &probe))?;
    std::fs::remove_file(&target)?;
    rt.block_on(wait_status(&probe, 404))?;
    let warm = rt.block_on(drop_to_200(hello, &target, &probe))?;
    report.push(format!(
        "drop .wasm -> first 200 (watch interval 200 ms): cold cache {:.0} ms, warm cache {:.0} ms",
        cold.as_secs_f64() * 1e3,
        warm.as_secs_f64() * 1e3
    ));

    // Hot swap under load: alternate two versions while wrk runs.
    let hello2 = std::fs::read(Path::new(env!("BERTH_TEST_PLUGINS")).join("hello2.wasm"))?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let stop = stop.clone();
        let target = target.clone();
        let versions = [hello.to_vec(), hello2];
        std::thread::spawn(move || {
            let mut swaps = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(300));
                let tmp = target.with_file_name(".hello.wasm.tmp");
                std::fs::write(&tmp, &versions[swaps % 2]).unwrap();
                std::fs::rename(&tmp, &target).unwrap();
                swaps += 1;
            }
            swaps
        })
    };
    let swap_run = wrk(&probe, seconds, connections)?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    let mounted = berth.log().matches("plugin mounted").count();
    report.push(format!(
        "hot swap under load: {:.0} req/s, non-2xx {}, socket errors {}, {swaps} file swaps ({mounted} mounts logged)",
        swap_run.rps, swap_run.non_2xx, swap_run.errors
    ));
    drop(berth);

    print_report(&report);
    Ok(())
}

fn print_report(lines: &[String]) {
    println!(
        "\n== berth benchmark ({} cores)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    for line in lines {
        println!("{line}");
    }
}

/// Median and p99 of one sequential call (instantiate + dispatch, up to the
/// outcome), median instantiation alone, median teardown of the spent
/// store, and calls per second (teardown included) with one task per core.
async fn instantiate_and_dispatch(n: usize) -> anyhow::Result<(f64, f64, f64, f64, f64)> {
    let runtime = Arc::new(Runtime::new(None)?);
    let hello = berth::BUNDLED
        .iter()
        .find(|(n, _)| *n == "hello.wasm")
        .map(|(_, b)| *b)
        .unwrap();
    let prepared = runtime.prepare(hello)?;
    let dir = tempfile::tempdir()?;
    let db = berth::store::Store::open(&dir.path().join("b.redb"))?;
    let config = berth::config::Config::embedded();
    let services = berth::caps::Services::new(&config, db.clone(), runtime.lanes())?;
    let describing = Arc::new(PluginEnv::describing(&services, "hello"));
    let manifest = runtime
        .describe(&prepared.pre, describing, &config.limits(""))
        .await?;
    let env = Arc::new(PluginEnv::new(&services, &manifest, &config));
    let limits = config.limits("hello");
    let mut total = Vec::with_capacity(n);
    let mut inst = Vec::with_capacity(n);
    let mut teardown = Vec::with_capacity(n);
    for i in 0..n + 1000 {
        let request = greet_request();
        let cx = CallCx::new(
            env.clone(),
            "bench".into(),
            Some(db.begin("hello")),
            Instant::now() + limits.deadline,
        );
        let started = Instant::now();
        let called = runtime.handle(&prepared.pre, cx, &limits, request).await?;
        let took = started.elapsed();
        let started = Instant::now();
        drop(called.spent);
        let torn = started.elapsed();
        if i >= 1000 {
            total.push(took.as_secs_f64() * 1e6);
            inst.push(called.instantiate.unwrap_or_default().as_secs_f64() * 1e6);
            teardown.push(torn.as_secs_f64() * 1e6);
        }
    }
    // Throughput with one task per core, as the server runs it.
    let tasks = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (runtime, pre, env, db) = (
            runtime.clone(),
            prepared.pre.clone(),
            env.clone(),
            db.clone(),
        );
        handles.push(tokio::spawn(async move {
            for _ in 0..n / tasks {
                let request = greet_request();
                let cx = CallCx::new(
                    env.clone(),
                    "bench".into(),
                    Some(db.begin("hello")),
                    Instant::now() + limits.deadline,
                );
                let called = runtime.handle(&pre, cx, &limits, request).await.unwrap();
                drop(called.spent);
            }
        }));
    }
    for h in handles {
        h.await?;
    }
    let parallel_rate = (n / tasks * tasks) as f64 / started.elapsed().as_secs_f64();
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[((v.len() as f64 - 1.0) * p) as usize]
    };
    let median = pct(&mut total, 0.5);
    let p99 = pct(&mut total, 0.99);
    Ok((
        median,
        p99,
        pct(&mut inst, 0.5),
        pct(&mut teardown, 0.5),
        parallel_rate,
    ))
}

/// What dispatch builds for `GET /hello/bench`.
fn greet_request() -> Request {
    Request {
        id: "bench".into(),
        method: "GET".into(),
        path: "/hello/bench".into(),
        route: "hello.greet".into(),
        params: vec![("name".into(), "bench".into())],
        query: vec![],
        headers: vec![("host".into(), "localhost".into())],
        body: vec![],
        client: "127.0.0.1:1".into(),
    }
}

async fn drop_to_200(wasm: &[u8], target: &Path, probe: &str) -> anyhow::Result<Duration> {
    let tmp = target.with_file_name(".drop.tmp");
    std::fs::write(&tmp, wasm)?;
    let started = Instant::now();
    std::fs::rename(&tmp, target)?;
    wait_status(probe, 200).await?;
    Ok(started.elapsed())
}

async fn wait_status(url: &str, status: u16) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(r) = client.get(url).send().await
            && r.status().as_u16() == status
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    anyhow::bail!("{url} never answered {status}")
}
