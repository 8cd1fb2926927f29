//! Prometheus metrics: the names and labels operators build dashboards and alerts on (docs/metrics.md).
//!
//! The packet path keeps plain `u64` counters in the [`Director`](crate::director::Director), which
//! publishes a [`Snapshot`] every 250 ms. At scrape time [`render`] folds the latest snapshot (and
//! libpcap's own counters) into a fresh recorder of `metrics-exporter-prometheus` with `absolute` and `set`,
//! and renders it: nothing is counted twice, and series of servers or ports removed by a reload vanish.
//! Config reloads and refused admin API connections are counted off the packet path through the `metrics`
//! facade into the process-wide recorder [`install`]s, whose output is appended. Plugin calls are counted by the plugin host in plain
//! atomics ([`PluginStats`](crate::plugin::PluginStats)); [`render`] writes them as they are.

use std::sync::OnceLock;

use crate::plugin::{CallResult, DURATION_BUCKETS, MetricKind, PluginEntry, PluginMetric};

use metrics::{Counter, Gauge, Label};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::Interface;
use crate::capture::CaptureStats;
use crate::director::{DropReason, Handled, NoticeResult, Snapshot};
use crate::policy::ServerState;
use crate::shadow::{ShadowOutcome, ShadowSnapshot};
use crate::wire::Protocol;
use strum::VariantArray;

/// Every metric name vipd exports: the user contract (docs/metrics.md), and what the dashboard may query.
pub const NAMES: &[&str] = &[
    "vipd_packets_total",
    "vipd_bytes_total",
    "vipd_drops_total",
    "vipd_connections_active",
    "vipd_connections_total",
    "vipd_connections_rejected_total",
    "vipd_syn_resends_total",
    "vipd_ditched_connections_total",
    "vipd_syn_cookies_total",
    "vipd_real_server_state",
    "vipd_real_server_syn_rtt_seconds",
    "vipd_conntrack_entries",
    "vipd_conntrack_capacity",
    "vipd_conntrack_evictions_total",
    "vipd_pcap_dropped_total",
    "vipd_send_failures_total",
    "vipd_plugin_calls_total",
    "vipd_plugin_call_duration_seconds",
    "vipd_plugin_keep_warm_calls_total",
    "vipd_plugin_reloads_total",
    "vipd_plugin_metric",
    "vipd_plugin_counter_total",
    "vipd_plugin_notices_total",
    "vipd_shadow_decisions_total",
    "vipd_shadow_picks_total",
    "vipd_shadow_dropped_total",
    "vipd_build_info",
    "vipd_config_reloads_total",
    "vipd_admin_connections_refused_total",
];

/// Why the HTTP server gave up on a client; each is a `reason` label of
/// `vipd_admin_connections_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, strum::VariantArray, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Refusal {
    /// [`crate::admin::AdminLimits::max_connections`] were open: answered 503 and closed (in a flood, closed unanswered).
    TooMany,
    /// No whole request head within [`crate::admin::AdminLimits::header_read`] on a new connection or one that began a
    /// head: closed. An idle keep-alive connection closed after that time is not counted.
    HeaderTimeout,
    /// A request head over [`crate::admin::MAX_HEADER_BYTES`] or 100 headers: answered 431 and closed.
    HeaderTooLarge,
    /// Still open [`crate::admin::AdminLimits::grace`] after it was asked to close (a slow body or reader): cut.
    Deadline,
}

impl Refusal {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Refusal reasons of `vipd_connections_rejected_total`: the [`DropReason`]s answered with RST or ICMP.
const REJECT_REASONS: [DropReason; 4] = [
    DropReason::UnsupportedPort,
    DropReason::NoServer,
    DropReason::TableFull,
    DropReason::Collision,
];

static GLOBAL: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder for metrics counted off the packet path (once; later calls return
/// the same handle). If another recorder is already installed, returns a handle that renders nothing.
pub fn install() -> &'static PrometheusHandle {
    GLOBAL.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            return PrometheusBuilder::new().build_recorder().handle();
        }
        metrics::describe_counter!(
            "vipd_config_reloads_total",
            "Config reloads (SIGHUP), by result: ok (installed) or error (refused, the running config stays)."
        );
        for result in ["ok", "error"] {
            metrics::counter!("vipd_config_reloads_total", "result" => result).increment(0);
        }
        metrics::describe_counter!(
            "vipd_admin_connections_refused_total",
            "Admin API connections refused or closed early, by reason: too_many (503), header_timeout, \
             header_too_large (431), deadline."
        );
        for &reason in Refusal::VARIANTS {
            admin_refused_by(reason, 0);
        }
        handle
    })
}

/// Counts one config reload: installed (`ok`) or refused (`error`).
pub fn config_reloaded(ok: bool) {
    let result = if ok { "ok" } else { "error" };
    metrics::counter!("vipd_config_reloads_total", "result" => result).increment(1);
}

/// Counts one admin API connection refused or closed early.
pub fn admin_refused(reason: Refusal) {
    admin_refused_by(reason, 1);
}

fn admin_refused_by(reason: Refusal, n: u64) {
    metrics::counter!("vipd_admin_connections_refused_total", "reason" => reason.as_str())
        .increment(n);
}

/// The Prometheus text of a snapshot, libpcap's counters and whatever [`install`]'s recorder holds.
pub fn render(
    snapshot: &Snapshot,
    capture: Option<&CaptureStats>,
    plugins: &[PluginEntry],
    shadows: Option<&ShadowSnapshot>,
) -> String {
    let recorder = PrometheusBuilder::new().build_recorder();
    metrics::with_local_recorder(&recorder, || record(snapshot, capture));
    let mut text = recorder.handle().render();
    if let Some(global) = GLOBAL.get() {
        text.push_str(&global.render());
    }
    render_plugins(&mut text, plugins);
    render_offload(&mut text, snapshot);
    if let Some(shadows) = shadows {
        render_shadows(&mut text, snapshot, shadows);
    }
    text
}

/// `[director] offload = "xdp"`: `vipd_offload_info{mode}` (native or generic XDP),
/// `vipd_offload_connections` (in the kernel now), `vipd_offload_connections_total{result}` (offloaded, or
/// kept on the libpcap path: full, failed) and `vipd_xdp_frames_total{interface, verdict}` (what the program
/// did with each frame it saw: `redirected`, translated in the kernel; any other verdict passed the frame
/// to the libpcap path). Nothing without the offload.
pub fn render_offload(out: &mut String, snapshot: &Snapshot) {
    use std::fmt::Write as _;
    let Some(mode) = snapshot.offload_mode else {
        return;
    };
    let c = &snapshot.counters;
    let _ = writeln!(
        out,
        "# HELP vipd_offload_info 1, labelled with how the XDP offload runs (native or generic).\n\
         # TYPE vipd_offload_info gauge\nvipd_offload_info{{mode=\"{mode}\"}} 1\n\
         # HELP vipd_offload_connections Connections translated in the kernel now.\n\
         # TYPE vipd_offload_connections gauge\nvipd_offload_connections {}\n\
         # HELP vipd_offload_connections_total Established connections handed to the kernel (offloaded), or kept on the libpcap path (full, failed).\n\
         # TYPE vipd_offload_connections_total counter\n\
         vipd_offload_connections_total{{result=\"offloaded\"}} {}\n\
         vipd_offload_connections_total{{result=\"full\"}} {}\n\
         vipd_offload_connections_total{{result=\"failed\"}} {}\n\
         # HELP vipd_xdp_frames_total Frames the XDP program saw, by interface and verdict (redirected: translated in the kernel; the rest went to the libpcap path).\n\
         # TYPE vipd_xdp_frames_total counter",
        snapshot.offloaded_now, c.offloaded, c.offload_full, c.offload_failed
    );
    for (iface, verdict, n) in &snapshot.offload_verdicts {
        let _ = writeln!(
            out,
            "vipd_xdp_frames_total{{interface=\"{}\",verdict=\"{verdict}\"}} {n}",
            iface.as_str()
        );
    }
}

/// Connection sync (`[sync]`): `vipd_sync_synced`, `vipd_sync_records_total{direction}` (sent, received,
/// installed), `vipd_sync_datagrams_total{direction}`, `vipd_sync_dropped_total{reason}` (the sync
/// thread's and the data path's together) and `vipd_sync_resyncs_total`; the pair's role:
/// `vipd_ha_role{role}` (1 for the role in force) and `vipd_ha_role_changes_total`.
pub fn render_sync(out: &mut String, snapshot: &Snapshot, view: &crate::sync::SyncView) {
    use crate::config::Role;
    use crate::sync::{Dropped, SyncStats};
    use std::fmt::Write as _;
    use strum::VariantArray;
    let st = &view.stats;
    let role = view.role();
    let _ = writeln!(
        out,
        "# HELP vipd_ha_role 1 for the role this director has now (active forwards and sends sync; standby holds a copy).\n\
         # TYPE vipd_ha_role gauge\n\
         vipd_ha_role{{role=\"active\"}} {}\n\
         vipd_ha_role{{role=\"standby\"}} {}",
        u8::from(role == Role::Active),
        u8::from(role == Role::Standby)
    );
    let _ = writeln!(
        out,
        "# HELP vipd_ha_role_changes_total Role changes since start (vipd ha, POST /ha/...).\n\
         # TYPE vipd_ha_role_changes_total counter\nvipd_ha_role_changes_total {}",
        SyncStats::get(&st.role_changes)
    );
    let _ = writeln!(
        out,
        "# HELP vipd_sync_synced 1 when this director holds its peers' connections (active, or a peer's bulk resync ended).\n\
         # TYPE vipd_sync_synced gauge\nvipd_sync_synced {}",
        u8::from(view.synced())
    );
    let _ = writeln!(
        out,
        "# HELP vipd_sync_records_total Connection records sent to peers, received from them, and installed.\n\
         # TYPE vipd_sync_records_total counter\n\
         vipd_sync_records_total{{direction=\"sent\"}} {}\n\
         vipd_sync_records_total{{direction=\"received\"}} {}\n\
         vipd_sync_records_total{{direction=\"installed\"}} {}",
        SyncStats::get(&st.records_sent),
        SyncStats::get(&st.records_received),
        snapshot.counters.sync_installed
    );
    let _ = writeln!(
        out,
        "# HELP vipd_sync_datagrams_total Sync datagrams sent (one per peer) and accepted.\n\
         # TYPE vipd_sync_datagrams_total counter\n\
         vipd_sync_datagrams_total{{direction=\"sent\"}} {}\n\
         vipd_sync_datagrams_total{{direction=\"received\"}} {}",
        SyncStats::get(&st.datagrams_sent),
        SyncStats::get(&st.datagrams_received)
    );
    let _ = writeln!(
        out,
        "# HELP vipd_sync_bytes_total UDP payload bytes of the sync datagrams sent (per peer) and accepted.\n\
         # TYPE vipd_sync_bytes_total counter\n\
         vipd_sync_bytes_total{{direction=\"sent\"}} {}\n\
         vipd_sync_bytes_total{{direction=\"received\"}} {}",
        SyncStats::get(&st.bytes_sent),
        SyncStats::get(&st.bytes_received)
    );
    let _ = writeln!(
        out,
        "# HELP vipd_sync_dropped_total Sync datagrams (bad_tag, replay, malformed) and records dropped, by reason.\n\
         # TYPE vipd_sync_dropped_total counter"
    );
    let thread = st.dropped();
    for &d in Dropped::VARIANTS {
        let i = d as usize;
        let _ = writeln!(
            out,
            "vipd_sync_dropped_total{{reason=\"{}\"}} {}",
            d.as_str(),
            thread[i] + snapshot.counters.sync_dropped[i]
        );
    }
    let _ = writeln!(
        out,
        "# HELP vipd_sync_resyncs_total Bulk resyncs this director asked of its peers.\n\
         # TYPE vipd_sync_resyncs_total counter\nvipd_sync_resyncs_total {}",
        SyncStats::get(&st.resyncs)
    );
}

/// The shadow policies' counts: `vipd_shadow_decisions_total{virtual, port, shadow, outcome}` (agreement
/// with the live choice), `vipd_shadow_picks_total{virtual, port, shadow, real}` (where the shadow would have
/// sent the connections; the live side is `vipd_connections_total`) and `vipd_shadow_dropped_total`.
pub fn render_shadows(out: &mut String, snapshot: &Snapshot, shadows: &ShadowSnapshot) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "# HELP vipd_shadow_dropped_total New connections no shadow policy was asked about (queue full).\n\
         # TYPE vipd_shadow_dropped_total counter\nvipd_shadow_dropped_total {}",
        snapshot.counters.shadow_dropped
    );
    if shadows.generation != snapshot.shadow_generation || shadows.ports.is_empty() {
        return;
    }
    let b = &snapshot.bindings;
    let port_labels = |port_id: u32| {
        let port = b.ports.get(port_id as usize)?;
        let vm = b.virtuals.get(port.virtual_id as usize)?;
        Some(format!("virtual=\"{}\",port=\"{}\"", vm.name, port.port))
    };
    let _ = writeln!(
        out,
        "# HELP vipd_shadow_decisions_total Shadow policy answers, by agreement with the live policy's choice.\n\
         # TYPE vipd_shadow_decisions_total counter"
    );
    for p in &shadows.ports {
        let Some(labels) = port_labels(p.port_id) else {
            continue;
        };
        for o in ShadowOutcome::VARIANTS {
            let _ = writeln!(
                out,
                "vipd_shadow_decisions_total{{{labels},shadow=\"{}\",outcome=\"{}\"}} {}",
                p.shadow,
                o.as_str(),
                p.outcome(*o)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP vipd_shadow_picks_total Connections a shadow policy would have given each real server.\n\
         # TYPE vipd_shadow_picks_total counter"
    );
    for p in &shadows.ports {
        let Some(labels) = port_labels(p.port_id) else {
            continue;
        };
        for (real_id, n) in p.picks.iter().enumerate() {
            let Some(real) = b.reals.get(real_id) else {
                continue;
            };
            let _ = writeln!(
                out,
                "vipd_shadow_picks_total{{{labels},shadow=\"{}\",real=\"{}\"}} {n}",
                p.shadow, real.name
            );
        }
    }
}

/// The plugins' counters, in the Prometheus text format: `vipd_plugin_calls_total{plugin, result}`,
/// `vipd_plugin_call_duration_seconds{plugin}` (histogram), `vipd_plugin_reloads_total{plugin, result}` and
/// the plugin-defined `vipd_plugin_counter_total{plugin, name}` (counter-add) and `vipd_plugin_metric{plugin,
/// name}` (gauge-set).
pub fn render_plugins(out: &mut String, plugins: &[PluginEntry]) {
    use std::fmt::Write as _;
    if plugins.is_empty() {
        return;
    }
    let results = CallResult::VARIANTS
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        out,
        "# HELP vipd_plugin_calls_total Policy plugin calls, by plugin and result ({results})."
    );
    let _ = writeln!(out, "# TYPE vipd_plugin_calls_total counter");
    for p in plugins {
        for &result in CallResult::VARIANTS {
            let n = p.stats.calls(result);
            let _ = writeln!(
                out,
                "vipd_plugin_calls_total{{plugin=\"{}\",result=\"{}\"}} {n}",
                p.name,
                result.as_str()
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP vipd_plugin_keep_warm_calls_total Warm-up calls that kept a policy plugin's code in the CPU's caches between connections ([director] plugin_keep_warm)."
    );
    let _ = writeln!(out, "# TYPE vipd_plugin_keep_warm_calls_total counter");
    for p in plugins {
        let _ = writeln!(
            out,
            "vipd_plugin_keep_warm_calls_total{{plugin=\"{}\"}} {}",
            p.name,
            p.stats.keep_warm_calls()
        );
    }
    let _ = writeln!(
        out,
        "# HELP vipd_plugin_call_duration_seconds Time of one policy plugin call."
    );
    let _ = writeln!(out, "# TYPE vipd_plugin_call_duration_seconds histogram");
    for p in plugins {
        let buckets = p.stats.duration_buckets();
        let mut cumulative = 0;
        for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
            cumulative += buckets[i];
            let _ = writeln!(
                out,
                "vipd_plugin_call_duration_seconds_bucket{{plugin=\"{}\",le=\"{bound}\"}} {cumulative}",
                p.name
            );
        }
        cumulative += buckets[DURATION_BUCKETS.len()];
        let _ = writeln!(
            out,
            "vipd_plugin_call_duration_seconds_bucket{{plugin=\"{}\",le=\"+Inf\"}} {cumulative}",
            p.name
        );
        let _ = writeln!(
            out,
            "vipd_plugin_call_duration_seconds_sum{{plugin=\"{}\"}} {}",
            p.name,
            p.stats.duration_sum_seconds()
        );
        let _ = writeln!(
            out,
            "vipd_plugin_call_duration_seconds_count{{plugin=\"{}\"}} {cumulative}",
            p.name
        );
    }
    let _ = writeln!(
        out,
        "# HELP vipd_plugin_reloads_total Plugin loads and reloads, by plugin and result (ok, error)."
    );
    let _ = writeln!(out, "# TYPE vipd_plugin_reloads_total counter");
    for p in plugins {
        let _ = writeln!(
            out,
            "vipd_plugin_reloads_total{{plugin=\"{}\",result=\"ok\"}} {}",
            p.name,
            p.stats.reloads_ok()
        );
        let _ = writeln!(
            out,
            "vipd_plugin_reloads_total{{plugin=\"{}\",result=\"error\"}} {}",
            p.name,
            p.stats.reloads_failed()
        );
    }
    let defined: Vec<_> = plugins
        .iter()
        .map(|p| (p, p.stats.plugin_metrics()))
        .collect();
    for (kind, metric, help) in [
        (
            MetricKind::Counter,
            "vipd_plugin_counter_total",
            "counter Counts a plugin adds to itself (counter-add), by plugin and name.",
        ),
        (
            MetricKind::Gauge,
            "vipd_plugin_metric",
            "gauge Values a plugin sets itself (gauge-set), by plugin and name.",
        ),
    ] {
        let of_kind = |m: &&PluginMetric| m.kind == kind;
        if !defined.iter().any(|(_, m)| m.iter().any(|m| of_kind(&m))) {
            continue;
        }
        let (prom_type, help) = help.split_once(' ').unwrap_or((help, ""));
        let _ = writeln!(out, "# HELP {metric} {help}");
        let _ = writeln!(out, "# TYPE {metric} {prom_type}");
        for (p, metrics) in &defined {
            for m in metrics.iter().filter(of_kind) {
                let _ = writeln!(
                    out,
                    "{metric}{{plugin=\"{}\",name=\"{}\"}} {}",
                    p.name,
                    label_value(&m.name),
                    m.value
                );
            }
        }
    }
}

/// A plugin-chosen metric name as a label value: printable ASCII other than `"` and `\` (docs/plugins.md);
/// other characters are dropped.
fn label_value(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\')
        .collect()
}

/// Just the snapshot's part, without the process-wide recorder (for tests).
pub fn render_snapshot(snapshot: &Snapshot, capture: Option<&CaptureStats>) -> String {
    let recorder: PrometheusRecorder = PrometheusBuilder::new().build_recorder();
    metrics::with_local_recorder(&recorder, || record(snapshot, capture));
    recorder.handle().render()
}

fn counter(name: &'static str, labels: Vec<Label>) -> Counter {
    metrics::counter!(name, labels)
}

fn gauge(name: &'static str, labels: Vec<Label>) -> Gauge {
    metrics::gauge!(name, labels)
}

fn label(key: &'static str, value: impl Into<String>) -> Label {
    Label::new(key, value.into())
}

/// The `port` label: "80/tcp", "53/udp".
pub fn port_label(port: u16, protocol: Protocol) -> String {
    let proto = match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    };
    format!("{port}/{proto}")
}

fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        "vipd_packets_total",
        "Frames by interface, direction (in, out) and result (in: forwarded, replied, dropped, consumed; out: forwarded, generated)."
    );
    describe_counter!(
        "vipd_bytes_total",
        metrics::Unit::Bytes,
        "Bytes of frames by interface and direction."
    );
    describe_counter!(
        "vipd_drops_total",
        "Frames not forwarded, by the interface they came in on and the reason of the packet path."
    );
    describe_gauge!(
        "vipd_connections_active",
        "Connection objects in the table, by virtual machine, virtual port and real server."
    );
    describe_counter!(
        "vipd_connections_total",
        "Connections created, by virtual machine, virtual port and real server."
    );
    describe_counter!(
        "vipd_connections_rejected_total",
        "Connection attempts answered with RST or ICMP, by virtual machine and reason."
    );
    describe_counter!(
        "vipd_syn_resends_total",
        "SYNs resent by clients before the server answered, by virtual machine and real server."
    );
    describe_counter!(
        "vipd_ditched_connections_total",
        "Connections a real server never answered (SYN resent syn_retries times, or RST to a SYN)."
    );
    describe_counter!(
        "vipd_syn_cookies_total",
        "SYN proxy: SYNs answered with a cookie (sent), and handshakes completed with a valid one (accepted)."
    );
    describe_gauge!(
        "vipd_real_server_state",
        "1 for the real server's current state (up, draining, failed), 0 for the others."
    );
    describe_gauge!(
        "vipd_real_server_syn_rtt_seconds",
        metrics::Unit::Seconds,
        "Smoothed time from the client's SYN to the server's SYN-ACK (0 before the first)."
    );
    describe_gauge!("vipd_conntrack_entries", "Connection objects in the table.");
    describe_gauge!(
        "vipd_conntrack_capacity",
        "Connection objects the table holds at most (max_connections)."
    );
    describe_counter!(
        "vipd_conntrack_evictions_total",
        "Connection objects removed before their end: half_open and closing (table full), idle (timeout)."
    );
    describe_counter!(
        "vipd_pcap_dropped_total",
        "Frames libpcap reports dropped (kernel ring full plus interface drops), by interface."
    );
    describe_counter!(
        "vipd_send_failures_total",
        "Frames the data path did not send, by interface: error (the kernel refused the send) and shed (the \
         interface's sender thread had no room left in its ring)."
    );
    describe_counter!(
        "vipd_plugin_notices_total",
        "Notices to policies about the connections they placed (closed, ditched): delivered, or dropped \
         (queue_full, stale: the policy instance that placed the connection no longer serves its port)."
    );
    describe_gauge!(
        "vipd_build_info",
        "Always 1; the version label says which vipd runs."
    );
}

fn record(s: &Snapshot, capture: Option<&CaptureStats>) {
    describe();
    let c = &s.counters;
    for iface in [Interface::Outside, Interface::Inside] {
        let i = iface;
        let name = iface.as_str();
        for &h in Handled::VARIANTS {
            counter(
                "vipd_packets_total",
                vec![
                    label("interface", name),
                    label("direction", "in"),
                    label("result", h.as_str()),
                ],
            )
            .absolute(c.handled[i][h as usize]);
        }
        for (result, v) in [("forwarded", c.forwarded[i]), ("generated", c.generated[i])] {
            counter(
                "vipd_packets_total",
                vec![
                    label("interface", name),
                    label("direction", "out"),
                    label("result", result),
                ],
            )
            .absolute(v);
        }
        for (direction, v) in [("in", c.rx_bytes[i]), ("out", c.tx_bytes[i])] {
            counter(
                "vipd_bytes_total",
                vec![label("interface", name), label("direction", direction)],
            )
            .absolute(v);
        }
        if let Some(stats) = capture {
            let port = stats.port(iface);
            let dropped = port.pcap_drop.load(std::sync::atomic::Ordering::Relaxed)
                + port.pcap_ifdrop.load(std::sync::atomic::Ordering::Relaxed);
            counter("vipd_pcap_dropped_total", vec![label("interface", name)]).absolute(dropped);
            for (reason, v) in [("error", &port.send_errors), ("shed", &port.send_shed)] {
                counter(
                    "vipd_send_failures_total",
                    vec![label("interface", name), label("reason", reason)],
                )
                .absolute(v.load(std::sync::atomic::Ordering::Relaxed));
            }
        }
    }
    for iface in [Interface::Outside, Interface::Inside] {
        for &reason in DropReason::VARIANTS {
            counter(
                "vipd_drops_total",
                vec![
                    label("interface", iface.as_str()),
                    label("reason", reason.as_str()),
                ],
            )
            .absolute(c.drops[iface][reason as usize]);
        }
    }

    let b = &s.bindings;
    let reals = s.reals.len();
    // (virtual_id, real_id) -> SYN resends, summed over the virtual machine's ports.
    let mut resends = vec![None::<u64>; b.virtuals.len() * reals];
    for (port_id, port) in b.ports.iter().enumerate() {
        let Some(vm) = b.virtuals.get(port.virtual_id as usize) else {
            continue;
        };
        let port_label = port_label(port.port, port.protocol);
        for (real_id, real) in s.reals.iter().enumerate() {
            let f = s.flow(port_id, real_id);
            let bound = port.targets.iter().any(|t| t.real_id as usize == real_id);
            if !bound && f == Default::default() {
                continue;
            }
            let labels = vec![
                label("virtual", vm.name.as_str()),
                label("port", port_label.as_str()),
                label("real", real.name.as_str()),
            ];
            gauge("vipd_connections_active", labels.clone()).set(f64::from(f.active));
            counter("vipd_connections_total", labels).absolute(f.total);
            if let Some(r) = resends.get_mut(port.virtual_id as usize * reals + real_id) {
                *r = Some(r.unwrap_or(0) + f.syn_resends);
            }
        }
    }
    for (virtual_id, vm) in b.virtuals.iter().enumerate() {
        for (real_id, real) in s.reals.iter().enumerate() {
            if let Some(Some(v)) = resends.get(virtual_id * reals + real_id) {
                counter(
                    "vipd_syn_resends_total",
                    vec![
                        label("virtual", vm.name.as_str()),
                        label("real", real.name.as_str()),
                    ],
                )
                .absolute(*v);
            }
        }
        let rejected = s.rejected.get(virtual_id);
        for reason in REJECT_REASONS {
            counter(
                "vipd_connections_rejected_total",
                vec![
                    label("virtual", vm.name.as_str()),
                    label("reason", reason.as_str()),
                ],
            )
            .absolute(rejected.map_or(0, |r| r[reason as usize]));
        }
    }
    for real in &s.reals {
        counter(
            "vipd_ditched_connections_total",
            vec![label("real", real.name.as_str())],
        )
        .absolute(real.ditched_total);
        for &state in ServerState::VARIANTS {
            gauge(
                "vipd_real_server_state",
                vec![
                    label("real", real.name.as_str()),
                    label("state", state.as_str()),
                ],
            )
            .set(if real.state == state { 1.0 } else { 0.0 });
        }
        gauge(
            "vipd_real_server_syn_rtt_seconds",
            vec![label("real", real.name.as_str())],
        )
        .set(f64::from(real.syn_rtt_us) / 1e6);
    }
    for (result, v) in [
        ("sent", c.syn_cookies_sent),
        ("accepted", c.syn_cookies_accepted),
    ] {
        counter("vipd_syn_cookies_total", vec![label("result", result)]).absolute(v);
    }
    gauge("vipd_conntrack_entries", vec![]).set(s.connections as f64);
    gauge("vipd_conntrack_capacity", vec![]).set(s.capacity as f64);
    for (reason, v) in [
        ("half_open", c.evicted_half_open),
        ("closing", c.evicted_closing),
        ("idle", c.expired),
    ] {
        counter(
            "vipd_conntrack_evictions_total",
            vec![label("reason", reason)],
        )
        .absolute(v);
    }
    for r in NoticeResult::VARIANTS {
        counter(
            "vipd_plugin_notices_total",
            vec![label("result", r.as_str())],
        )
        .absolute(c.notices[*r as usize]);
    }
    gauge(
        "vipd_build_info",
        vec![label("version", env!("CARGO_PKG_VERSION"))],
    )
    .set(1.0);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::binding::BindingTable;
    use crate::config::Config;
    use crate::director::{FlowCount, RealLive};
    use std::sync::Arc;

    const CONFIG: &str = r#"
[director]
outside = "o"
inside = "i"

[[real]]
name = "a"
address = "10.0.0.1"

[[real]]
name = "b"
address = "10.0.0.2"

[[virtual]]
name = "web"
address = "192.0.2.1"

  [[virtual.port]]
  port = 80
  bind = ["a:8080", "b:8080"]

  [[virtual.port]]
  port = 53
  protocol = "udp"
  bind = ["b"]
"#;

    /// A snapshot of the config above with known counts.
    pub(crate) fn snapshot() -> Snapshot {
        let config = Config::parse(CONFIG, "test.toml".as_ref()).expect("valid config");
        let bindings = BindingTable::from_config(&config);
        let reals: Vec<RealLive> = bindings
            .reals
            .iter()
            .map(|r| RealLive {
                name: r.name.clone(),
                address: r.address,
                state: ServerState::Up,
                weight: r.weight,
                active: 0,
                closing: 0,
                total: 0,
                syn_rtt_us: 0,
                ditched: 0,
                ditched_total: 0,
            })
            .collect();
        let mut s = Snapshot {
            flows: vec![FlowCount::default(); bindings.ports.len() * reals.len()],
            rejected: vec![[0; <DropReason as strum::EnumCount>::COUNT]; bindings.virtuals.len()],
            reals,
            connections: 3,
            capacity: 1000,
            bindings: Arc::new(bindings),
            ..Snapshot::default()
        };
        s.flows[0] = FlowCount {
            active: 2,
            total: 7,
            syn_resends: 1,
        };
        s.flows[1] = FlowCount {
            active: 1,
            total: 5,
            syn_resends: 0,
        };
        s.reals[1].state = ServerState::Draining;
        s.reals[0].syn_rtt_us = 1500;
        s.reals[1].ditched_total = 4;
        s.rejected[0][DropReason::NoServer as usize] = 3;
        s.counters.drops.inside[DropReason::NoConnection as usize] = 9;
        s.counters.handled.outside[Handled::Forwarded as usize] = 100;
        s.counters.rx_bytes.outside = 6400;
        s.counters.expired = 2;
        s
    }

    fn has(text: &str, line: &str) -> bool {
        text.lines().any(|l| l == line)
    }

    /// Every labelled series of a hand-made snapshot renders with its exact value.
    #[test]
    fn renders_snapshot_values() {
        let text = render_snapshot(&snapshot(), None);
        for line in [
            r#"vipd_connections_active{virtual="web",port="80/tcp",real="a"} 2"#,
            r#"vipd_connections_total{virtual="web",port="80/tcp",real="a"} 7"#,
            r#"vipd_connections_total{virtual="web",port="80/tcp",real="b"} 5"#,
            r#"vipd_connections_total{virtual="web",port="53/udp",real="b"} 0"#,
            r#"vipd_syn_resends_total{virtual="web",real="a"} 1"#,
            r#"vipd_connections_rejected_total{virtual="web",reason="no_server"} 3"#,
            r#"vipd_drops_total{interface="inside",reason="no_connection"} 9"#,
            r#"vipd_drops_total{interface="outside",reason="no_connection"} 0"#,
            r#"vipd_packets_total{interface="outside",direction="in",result="forwarded"} 100"#,
            r#"vipd_bytes_total{interface="outside",direction="in"} 6400"#,
            r#"vipd_real_server_state{real="b",state="draining"} 1"#,
            r#"vipd_real_server_state{real="b",state="up"} 0"#,
            r#"vipd_real_server_syn_rtt_seconds{real="a"} 0.0015"#,
            r#"vipd_ditched_connections_total{real="b"} 4"#,
            "vipd_conntrack_entries 3",
            "vipd_conntrack_capacity 1000",
            r#"vipd_conntrack_evictions_total{reason="idle"} 2"#,
            r#"vipd_build_info{version="0.1.0"} 1"#,
        ] {
            assert!(has(&text, line), "missing {line:?} in:\n{text}");
        }
        // a is not bound to the UDP port and has no connections there: no series.
        assert!(!text.contains(r#"port="53/udp",real="a""#), "{text}");
    }

    /// Each metric has one TYPE line and its HELP; label sets are never repeated.
    #[test]
    fn renders_valid_exposition() {
        let text = render_snapshot(&snapshot(), None);
        let mut seen = std::collections::HashSet::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            if line.starts_with('#') {
                assert!(seen.insert(line.to_owned()), "repeated {line:?}");
            } else {
                let series = line.rsplit_once(' ').expect("value").0;
                assert!(seen.insert(series.to_owned()), "repeated series {series}");
            }
        }
        assert!(text.contains("# TYPE vipd_connections_active gauge"));
        assert!(text.contains("# TYPE vipd_packets_total counter"));
        assert!(text.contains("# HELP vipd_drops_total"));
    }

    /// A plugin's counter-add values are exported as a counter (so `rate()` works), its gauge-set values as
    /// a gauge; names lose the characters a label value cannot hold.
    #[test]
    fn plugin_counters_are_counters() {
        let stats = std::sync::Arc::new(crate::plugin::PluginStats::default());
        stats.update_metric("picks", MetricKind::Counter, |v| *v += 3.0);
        stats.update_metric("picks", MetricKind::Counter, |v| *v += 2.0);
        stats.update_metric("load \"now\"", MetricKind::Gauge, |v| *v = 0.5);
        let plugin = PluginEntry {
            name: "p".into(),
            version: "1".into(),
            file: "p.wasm".into(),
            modified: 0,
            stats,
        };
        let mut text = String::new();
        render_plugins(&mut text, &[plugin]);
        for line in [
            "# TYPE vipd_plugin_counter_total counter",
            "vipd_plugin_counter_total{plugin=\"p\",name=\"picks\"} 5",
            "# TYPE vipd_plugin_metric gauge",
            "vipd_plugin_metric{plugin=\"p\",name=\"loadnow\"} 0.5",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }

    /// Every metric name the Grafana dashboard queries is exported by vipd (plugins included).
    #[test]
    fn dashboard_queries_existing_metrics() {
        install();
        let stats = std::sync::Arc::new(crate::plugin::PluginStats::default());
        stats.record_call(CallResult::Ok, std::time::Duration::from_micros(5));
        stats.record_reload(true);
        let plugin = PluginEntry {
            name: "test-plugin".into(),
            version: "1".into(),
            file: "test-plugin.wasm".into(),
            modified: 0,
            stats,
        };
        let snap = snapshot();
        let shadows = ShadowSnapshot {
            generation: snap.shadow_generation,
            ports: vec![crate::shadow::PortShadow {
                port_id: 0,
                shadow: "source-affinity".into(),
                outcomes: [3, 1, 0, 0, 0],
                picks: vec![4; snap.reals.len()],
            }],
        };
        let text = render(
            &snap,
            Some(&CaptureStats::default()),
            &[plugin],
            Some(&shadows),
        );
        assert!(
            text.contains(
                "vipd_shadow_decisions_total{virtual=\"web\",port=\"80\",shadow=\"source-affinity\",outcome=\"same\"} 3"
            ),
            "{text}"
        );
        let dashboard = include_str!("../../examples/grafana/vipd-dashboard.json");
        let json: serde_json::Value = serde_json::from_str(dashboard).expect("dashboard is JSON");
        let mut exprs = Vec::new();
        collect_exprs(&json, &mut exprs);
        assert!(exprs.len() >= 8, "dashboard has {} queries", exprs.len());
        let mut names = std::collections::BTreeSet::new();
        for expr in &exprs {
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("vipd_") {
                    names.insert(word.to_owned());
                }
            }
        }
        for name in &names {
            let base = name
                .strip_suffix("_bucket")
                .or_else(|| name.strip_suffix("_sum"))
                .or_else(|| name.strip_suffix("_count"))
                .unwrap_or(name);
            assert!(NAMES.contains(&base), "{name} is not a vipd metric");
            assert!(
                text.lines().any(
                    |l| l.starts_with(name.as_str()) && l[name.len()..].starts_with(['{', ' '])
                ),
                "{name} queried by the dashboard is not in vipd's output:\n{text}"
            );
        }
        for name in NAMES {
            assert!(
                names.iter().any(|n| n.starts_with(name))
                    || [
                        "vipd_build_info",
                        "vipd_plugin_metric",
                        "vipd_plugin_counter_total"
                    ]
                    .contains(name),
                "the dashboard does not show {name}"
            );
        }
    }

    fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                        _ => collect_exprs(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
            _ => {}
        }
    }
}
