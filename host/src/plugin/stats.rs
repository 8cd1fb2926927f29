//! Per-plugin counters, kept in plain atomics so the metrics code reads them without locks on the call path.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use strum::{EnumCount, VariantArray};

/// How one `select` call ended; each is a `result` label of `vipd_plugin_calls_total`.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    strum::EnumCount,
    strum::VariantArray,
    strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum CallResult {
    /// The plugin picked an eligible candidate.
    Ok,
    /// The plugin rejected the connection (`reject` or `no-server`).
    Reject,
    /// The plugin deferred to the built-in round-robin (`defer`).
    Deferred,
    /// The plugin trapped (panic, unreachable, failed `init`, ...): round-robin served the connection.
    Trap,
    /// The plugin ran past its CPU deadline: round-robin served the connection.
    Timeout,
    /// The plugin hit its memory limit: round-robin served the connection.
    Memory,
    /// The plugin answered an index out of range or an ineligible server: round-robin served it.
    BadAnswer,
    /// The plugin is quarantined and was not called: round-robin served the connection.
    Quarantined,
    /// No instance was ready (one is being made off the data path, after a trap): round-robin served the
    /// connection. Not a failure.
    Starting,
}

impl CallResult {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Whether the built-in round-robin served the connection instead of the plugin.
    pub fn is_fallback(self) -> bool {
        !matches!(self, CallResult::Ok | CallResult::Reject)
    }

    /// Whether it counts towards quarantine.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            CallResult::Trap | CallResult::Timeout | CallResult::Memory | CallResult::BadAnswer
        )
    }
}

/// Upper bounds, in seconds, of the `vipd_plugin_call_duration_seconds` histogram buckets (+Inf implied).
pub const DURATION_BUCKETS: [f64; 10] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2,
];

/// A metric a plugin defined through `counter-add` or `gauge-set`.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginMetric {
    pub name: String,
    pub kind: MetricKind,
    pub value: f64,
}

/// Counter or gauge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
}

/// Counters of one plugin (by name, across its versions and all virtual ports using it).
#[derive(Debug, Default)]
pub struct PluginStats {
    calls: [AtomicU64; CallResult::COUNT],
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    duration_sum_ns: AtomicU64,
    /// Cumulative-free counts per bucket; the last is +Inf.
    duration_buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    /// Keep-warm calls (not connections: not in `calls` or the durations).
    keep_warm: AtomicU64,
    /// Plugin-defined metrics: written by plugin host calls (once per connection at most), never per packet.
    metrics: Mutex<Vec<PluginMetric>>,
}

/// Most plugin-defined metrics a plugin may create; more are ignored (a plugin must not grow host memory).
pub const MAX_PLUGIN_METRICS: usize = 64;

impl PluginStats {
    /// Counts one keep-warm call.
    pub fn record_keep_warm(&self) {
        self.keep_warm.fetch_add(1, Ordering::Relaxed);
    }

    /// Keep-warm calls so far.
    pub fn keep_warm_calls(&self) -> u64 {
        self.keep_warm.load(Ordering::Relaxed)
    }

    /// Counts one call and its duration.
    pub fn record_call(&self, result: CallResult, took: Duration) {
        self.calls[result as usize].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.duration_sum_ns.fetch_add(ns, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        let b = DURATION_BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(DURATION_BUCKETS.len());
        self.duration_buckets[b].fetch_add(1, Ordering::Relaxed);
    }

    /// Calls that ended with `result`.
    pub fn calls(&self, result: CallResult) -> u64 {
        self.calls[result as usize].load(Ordering::Relaxed)
    }

    /// Calls that round-robin served instead of the plugin.
    pub fn fallbacks(&self) -> u64 {
        CallResult::VARIANTS
            .iter()
            .filter(|r| r.is_fallback())
            .map(|&r| self.calls(r))
            .sum()
    }

    /// Counts a reload attempt (the first load counts as a reload too).
    pub fn record_reload(&self, ok: bool) {
        let c = if ok {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Successful loads of a new version.
    pub fn reloads_ok(&self) -> u64 {
        self.reloads_ok.load(Ordering::Relaxed)
    }

    /// Versions refused (compile or validation failed).
    pub fn reloads_failed(&self) -> u64 {
        self.reloads_failed.load(Ordering::Relaxed)
    }

    /// Sum of call durations in seconds.
    pub fn duration_sum_seconds(&self) -> f64 {
        self.duration_sum_ns.load(Ordering::Relaxed) as f64 / 1e9
    }

    /// Call counts per bucket of [`DURATION_BUCKETS`] plus +Inf, not cumulative.
    pub fn duration_buckets(&self) -> [u64; DURATION_BUCKETS.len() + 1] {
        std::array::from_fn(|i| self.duration_buckets[i].load(Ordering::Relaxed))
    }

    /// A snapshot of the plugin-defined metrics.
    pub fn plugin_metrics(&self) -> Vec<PluginMetric> {
        self.metrics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn update_metric(&self, name: &str, kind: MetricKind, f: impl FnOnce(&mut f64)) {
        let mut m = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(metric) = m.iter_mut().find(|m| m.name == name && m.kind == kind) {
            f(&mut metric.value);
        } else if m.len() < MAX_PLUGIN_METRICS {
            let mut value = 0.0;
            f(&mut value);
            m.push(PluginMetric {
                name: name.to_string(),
                kind,
                value,
            });
        }
    }
}
