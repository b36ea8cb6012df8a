//! Prometheus metrics, per plugin: requests by status class, latency and
//! instantiation histograms, traps, timeouts, refusals.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds, in seconds, of the request latency buckets.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];
/// Upper bounds, in seconds, of the instantiation time buckets.
const INSTANTIATE_BUCKETS: [f64; 10] = [
    0.000005, 0.00001, 0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005, 0.05,
];

struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        self.sum_nanos.fetch_add(d.as_nanos() as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, plugin: &str) {
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count.load(Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{plugin=\"{plugin}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        let total = self.count.load(Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{plugin=\"{plugin}\",le=\"+Inf\"}} {total}"
        );
        let sum = self.sum_nanos.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{plugin=\"{plugin}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{plugin=\"{plugin}\"}} {total}");
    }
}

/// One plugin's counters; kept across versions of the plugin.
pub struct PluginMetrics {
    by_class: [AtomicU64; 5],
    latency: Histogram,
    instantiate: Histogram,
    pub traps: AtomicU64,
    pub timeouts: AtomicU64,
    /// Requests refused before the plugin ran (413, 503 busy).
    pub refused: AtomicU64,
    /// Calls running now.
    pub in_flight: AtomicU64,
    /// Proxied Docker streams open now (answers still streaming, and
    /// upgraded connections).
    pub proxied: AtomicU64,
    /// Proxied connections the engine upgraded (attach, exec), in all.
    pub upgrades: AtomicU64,
    /// Calls served by an instance kept from an earlier call.
    pub reused: AtomicU64,
}

impl PluginMetrics {
    fn new() -> Self {
        PluginMetrics {
            by_class: Default::default(),
            latency: Histogram::new(&LATENCY_BUCKETS),
            instantiate: Histogram::new(&INSTANTIATE_BUCKETS),
            traps: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            proxied: AtomicU64::new(0),
            upgrades: AtomicU64::new(0),
            reused: AtomicU64::new(0),
        }
    }

    pub fn request(&self, status: u16, latency: Duration) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].fetch_add(1, Relaxed);
        self.latency.observe(latency);
    }

    /// Count a call as running until the returned guard drops.
    pub fn running(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Relaxed);
        InFlight(&self.in_flight)
    }

    /// Count a proxied stream as open until the returned guard drops.
    pub fn proxying(self: &Arc<Self>) -> Proxying {
        self.proxied.fetch_add(1, Relaxed);
        Proxying(self.clone())
    }

    /// Count a call's instance: made for it in `took`, or reused (none).
    pub fn instantiated(&self, took: Option<Duration>) {
        match took {
            Some(took) => self.instantiate.observe(took),
            None => {
                self.reused.fetch_add(1, Relaxed);
            }
        }
    }
}

/// Decrements the in-flight gauge when dropped.
pub struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Decrements the open proxied streams gauge when dropped.
pub struct Proxying(Arc<PluginMetrics>);

impl Drop for Proxying {
    fn drop(&mut self) {
        self.0.proxied.fetch_sub(1, Relaxed);
    }
}

/// All plugins' metrics plus host-level counters.
#[derive(Default)]
pub struct Metrics {
    plugins: Mutex<BTreeMap<String, Arc<PluginMetrics>>>,
    pub unrouted: AtomicU64,
    /// Client connections open now (upgraded ones included).
    pub connections: AtomicU64,
    /// Bytes of request bodies held in memory now.
    pub body_bytes: AtomicU64,
}

impl Metrics {
    /// The metrics of plugin `name`, created on first use.
    pub fn plugin(&self, name: &str) -> Arc<PluginMetrics> {
        let mut plugins = self.plugins.lock().unwrap_or_else(|p| p.into_inner());
        plugins
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(PluginMetrics::new()))
            .clone()
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let plugins: Vec<(String, Arc<PluginMetrics>)> = {
            let map = self.plugins.lock().unwrap_or_else(|p| p.into_inner());
            map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let mut out = String::new();
        out.push_str(
            "# HELP berth_requests_total Requests answered, by plugin and status class.\n",
        );
        out.push_str("# TYPE berth_requests_total counter\n");
        for (name, m) in &plugins {
            for (i, count) in m.by_class.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "berth_requests_total{{plugin=\"{name}\",code=\"{}xx\"}} {}",
                    i + 1,
                    count.load(Relaxed)
                );
            }
        }
        out.push_str(
            "# HELP berth_request_duration_seconds Time from routing to response, by plugin.\n",
        );
        out.push_str("# TYPE berth_request_duration_seconds histogram\n");
        for (name, m) in &plugins {
            m.latency
                .render(&mut out, "berth_request_duration_seconds", name);
        }
        out.push_str("# HELP berth_instantiate_duration_seconds Time to instantiate a plugin for one call.\n");
        out.push_str("# TYPE berth_instantiate_duration_seconds histogram\n");
        for (name, m) in &plugins {
            m.instantiate
                .render(&mut out, "berth_instantiate_duration_seconds", name);
        }
        type Field = fn(&PluginMetrics) -> &AtomicU64;
        let per_plugin: [(&str, &str, &str, Field); 7] = [
            ("berth_traps_total", "counter", "Calls that trapped.", |m| {
                &m.traps
            }),
            (
                "berth_timeouts_total",
                "counter",
                "Calls stopped at their deadline.",
                |m| &m.timeouts,
            ),
            (
                "berth_refused_total",
                "counter",
                "Requests refused before the plugin ran (body too large, busy).",
                |m| &m.refused,
            ),
            (
                "berth_instances_reused_total",
                "counter",
                "Calls served by an instance kept from an earlier call (instance_reuse).",
                |m| &m.reused,
            ),
            (
                "berth_docker_upgrades_total",
                "counter",
                "Proxied Docker connections the engine upgraded (attach, exec).",
                |m| &m.upgrades,
            ),
            (
                "berth_in_flight_requests",
                "gauge",
                "Plugin calls running now.",
                |m| &m.in_flight,
            ),
            (
                "berth_docker_streams",
                "gauge",
                "Proxied Docker streams open now.",
                |m| &m.proxied,
            ),
        ];
        for (metric, kind, help, field) in per_plugin {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} {kind}");
            for (name, m) in &plugins {
                let _ = writeln!(
                    out,
                    "{metric}{{plugin=\"{name}\"}} {}",
                    field(m).load(Relaxed)
                );
            }
        }
        out.push_str("# HELP berth_unrouted_requests_total Requests that matched no route.\n");
        out.push_str("# TYPE berth_unrouted_requests_total counter\n");
        let _ = writeln!(
            out,
            "berth_unrouted_requests_total {}",
            self.unrouted.load(Relaxed)
        );
        let host: [(&str, &str, &AtomicU64); 2] = [
            (
                "berth_connections",
                "Client connections open now, upgraded ones included.",
                &self.connections,
            ),
            (
                "berth_request_body_bytes",
                "Bytes of request bodies held in memory now (see [server] max_body_memory_mib).",
                &self.body_bytes,
            ),
        ];
        for (metric, help, value) in host {
            let _ = writeln!(
                out,
                "# HELP {metric} {help}\n# TYPE {metric} gauge\n{metric} {}",
                value.load(Relaxed)
            );
        }
        out
    }
}
