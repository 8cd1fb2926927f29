//! The `/status` document: one typed [`Status`] that the admin server builds from a [`Snapshot`] and
//! serializes, and that `vipd status` deserializes and prints as a table like `ipvsadm -Ln --stats`.
//! Pure: no I/O.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::director::Snapshot;
use crate::plugin::PluginEntry;
use crate::policy::ServerState;
use crate::shadow::{ShadowOutcome, ShadowSnapshot};
use crate::wire::Protocol;

/// What `GET /status` answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub uptime_seconds: f64,
    /// Connection objects in the table now, and the table's size (`max_connections`).
    pub connections: usize,
    pub capacity: usize,
    pub virtual_machines: Vec<VirtualStatus>,
    pub reals: Vec<RealStatus>,
    pub plugins: Vec<PluginStatus>,
    /// Connection sync (`[sync]`); absent without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncStatus>,
}

/// Connection sync's state: the role, whether the table holds the peers' connections, and the counts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyncStatus {
    pub role: String,
    /// Active, or a peer's bulk resync ended since start.
    pub synced: bool,
    pub peers: Vec<SocketAddr>,
    pub records_sent: u64,
    pub records_received: u64,
    pub records_installed: u64,
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
    pub resyncs: u64,
    /// By `vipd_sync_dropped_total` reason.
    pub dropped: std::collections::BTreeMap<String, u64>,
}

impl SyncStatus {
    /// The thread's counts in `view` and the data path's in `s`.
    pub fn new(view: &crate::sync::SyncView, s: &Snapshot) -> SyncStatus {
        use crate::sync::{Dropped, SyncStats};
        use strum::VariantArray;
        let st = &view.stats;
        let thread = st.dropped();
        SyncStatus {
            role: view.role().as_str().to_owned(),
            synced: view.synced(),
            peers: view.peers.clone(),
            records_sent: SyncStats::get(&st.records_sent),
            records_received: SyncStats::get(&st.records_received),
            records_installed: s.counters.sync_installed,
            datagrams_sent: SyncStats::get(&st.datagrams_sent),
            datagrams_received: SyncStats::get(&st.datagrams_received),
            resyncs: SyncStats::get(&st.resyncs),
            dropped: Dropped::VARIANTS
                .iter()
                .map(|&d| {
                    let i = d as usize;
                    (
                        d.as_str().to_owned(),
                        thread[i] + s.counters.sync_dropped[i],
                    )
                })
                .collect(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VirtualStatus {
    pub name: String,
    pub address: IpAddr,
    pub ports: Vec<PortStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PortStatus {
    pub port: u16,
    pub protocol: Protocol,
    /// The policy name in the config (a built-in or a plugin).
    pub policy: String,
    /// Connections open now and created since start, over all its bindings.
    pub active: u64,
    pub total: u64,
    pub bindings: Vec<BindingStatus>,
    /// The shadow policy asked beside `policy`, and how its answers compared (`shadow_policy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowStatus>,
}

/// A shadow policy's answers so far, by agreement with the live choice.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShadowStatus {
    pub policy: String,
    pub same: u64,
    pub different: u64,
    pub reject: u64,
    pub defer: u64,
    pub error: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BindingStatus {
    /// The real server's name.
    pub real: String,
    /// Where its connections go.
    pub address: Option<SocketAddr>,
    pub port: u16,
    pub active: u32,
    pub total: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RealStatus {
    pub name: String,
    pub address: IpAddr,
    pub state: ServerState,
    pub weight: u32,
    pub active: u32,
    pub total: u64,
    pub syn_rtt_seconds: f64,
    /// Ditched connections in a row now, and since start.
    pub ditched: u32,
    pub ditched_total: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PluginStatus {
    pub name: String,
    /// The version serving, `none` when no version of the file ever loaded.
    pub version: String,
    pub file: String,
    /// File modification time, seconds since the Unix epoch.
    pub modified: u64,
}

impl Status {
    /// The document for snapshot `s`, the plugins listed now and the shadow policies' counts.
    pub fn new(s: &Snapshot, plugins: &[PluginEntry], shadows: Option<&ShadowSnapshot>) -> Status {
        let shadow_of = |port_id: usize| {
            let shadows = shadows.filter(|sh| sh.generation == s.shadow_generation)?;
            let p = shadows
                .ports
                .iter()
                .find(|p| p.port_id as usize == port_id)?;
            Some(ShadowStatus {
                policy: p.shadow.clone(),
                same: p.outcome(ShadowOutcome::Same),
                different: p.outcome(ShadowOutcome::Different),
                reject: p.outcome(ShadowOutcome::Reject),
                defer: p.outcome(ShadowOutcome::Defer),
                error: p.outcome(ShadowOutcome::Error),
            })
        };
        let b = &s.bindings;
        let virtual_machines = b
            .virtuals
            .iter()
            .map(|vm| VirtualStatus {
                name: vm.name.clone(),
                address: vm.address,
                ports: vm
                    .ports
                    .iter()
                    .filter_map(|&id| b.ports.get(id as usize).map(|p| (id as usize, p)))
                    .map(|(port_id, p)| {
                        let bindings = p
                            .targets
                            .iter()
                            .map(|t| {
                                let real = s.reals.get(t.real_id as usize);
                                let f = s.flow(port_id, t.real_id as usize);
                                BindingStatus {
                                    real: real.map_or_else(String::new, |r| r.name.clone()),
                                    address: real.map(|r| SocketAddr::new(r.address, t.port)),
                                    port: t.port,
                                    active: f.active,
                                    total: f.total,
                                }
                            })
                            .collect();
                        let (active, total) = (0..s.reals.len())
                            .map(|r| s.flow(port_id, r))
                            .fold((0, 0), |(a, t), f| (a + u64::from(f.active), t + f.total));
                        PortStatus {
                            port: p.port,
                            protocol: p.protocol,
                            policy: p.policy.clone(),
                            active,
                            total,
                            bindings,
                            shadow: shadow_of(port_id),
                        }
                    })
                    .collect(),
            })
            .collect();
        let reals = s
            .reals
            .iter()
            .map(|r| RealStatus {
                name: r.name.clone(),
                address: r.address,
                state: r.state,
                weight: r.weight,
                active: r.active,
                total: r.total,
                syn_rtt_seconds: f64::from(r.syn_rtt_us) / 1e6,
                ditched: r.ditched,
                ditched_total: r.ditched_total,
            })
            .collect();
        let plugins = plugins
            .iter()
            .map(|p| PluginStatus {
                name: p.name.clone(),
                version: p.version.clone(),
                file: p.file.clone(),
                modified: p.modified,
            })
            .collect();
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_seconds: s.now.as_secs_f64(),
            connections: s.connections,
            capacity: s.capacity,
            virtual_machines,
            reals,
            plugins,
            sync: None,
        }
    }
}

/// `vipd status`: one line per virtual port, one indented line per binding, then the real servers and the
/// plugins.
impl fmt::Display for Status {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            out,
            "vipd {}  connections {}/{}  up {:.0}s",
            self.version, self.connections, self.capacity, self.uptime_seconds
        )?;
        writeln!(
            out,
            "Prot LocalAddress:Port          Virtual        Policy          ActiveConn      Conns"
        )?;
        writeln!(
            out,
            "  -> RemoteAddress:Port        Real           State            ActiveConn      Conns"
        )?;
        let state_of = |name: &str| {
            self.reals
                .iter()
                .find(|r| r.name == name)
                .map_or("?", |r| r.state.as_str())
        };
        let mut addr = String::new();
        for vm in &self.virtual_machines {
            for p in &vm.ports {
                addr.clear();
                let _ = write!(addr, "{}", SocketAddr::new(vm.address, p.port));
                writeln!(
                    out,
                    "{:<4} {:<25} {:<14} {:<15} {:>10} {:>10}",
                    p.protocol.as_str().to_uppercase(),
                    addr,
                    vm.name,
                    p.policy,
                    p.active,
                    p.total
                )?;
                if let Some(sh) = &p.shadow {
                    let judged = sh.same + sh.different;
                    writeln!(
                        out,
                        "     shadow {}: same {} different {} ({:.1} % agree), reject {} defer {} error {}",
                        sh.policy,
                        sh.same,
                        sh.different,
                        if judged == 0 {
                            0.0
                        } else {
                            100.0 * sh.same as f64 / judged as f64
                        },
                        sh.reject,
                        sh.defer,
                        sh.error
                    )?;
                }
                for b in &p.bindings {
                    addr.clear();
                    match b.address {
                        Some(a) => {
                            let _ = write!(addr, "{a}");
                        }
                        None => addr.push('?'),
                    }
                    writeln!(
                        out,
                        "  -> {:<25} {:<14} {:<15} {:>11} {:>10}",
                        addr,
                        b.real,
                        state_of(&b.real),
                        b.active,
                        b.total
                    )?;
                }
            }
        }
        writeln!(out)?;
        writeln!(
            out,
            "Real           Address          State      Weight ActiveConn      Conns  SynRtt(ms) Ditched"
        )?;
        for r in &self.reals {
            writeln!(
                out,
                "{:<14} {:<16} {:<10} {:>6} {:>10} {:>10} {:>11.3} {:>7}",
                r.name,
                r.address.to_string(),
                r.state.as_str(),
                r.weight,
                r.active,
                r.total,
                r.syn_rtt_seconds * 1e3,
                r.ditched_total
            )?;
        }
        if !self.plugins.is_empty() {
            writeln!(out, "\nPlugin         Version    File")?;
            for p in &self.plugins {
                writeln!(out, "{:<14} {:<10} {}", p.name, p.version, p.file)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/status` lists virtual machines with their ports and bindings, and the reals with live state; the
    /// JSON names are the documented ones, and `vipd status` reads back what the server wrote.
    #[test]
    fn status_document() {
        let s = crate::metrics::tests::snapshot();
        let status = Status::new(&s, &[], None);
        let v = serde_json::to_value(&status).unwrap();
        let port = &v["virtual_machines"][0]["ports"][0];
        assert_eq!(v["virtual_machines"][0]["name"], "web");
        assert_eq!(v["virtual_machines"][0]["address"], "192.0.2.1");
        assert_eq!(port["port"], 80);
        assert_eq!(port["protocol"], "tcp");
        assert_eq!(port["total"], 12);
        assert_eq!(port["bindings"][0]["real"], "a");
        assert_eq!(port["bindings"][0]["address"], "10.0.0.1:8080");
        assert_eq!(port["bindings"][0]["active"], 2);
        assert_eq!(v["reals"][1]["state"], "draining");
        assert_eq!(v["reals"][0]["syn_rtt_seconds"], 0.0015);
        assert_eq!(v["plugins"], serde_json::json!([]));
        let back: Status = serde_json::from_value(v).unwrap();
        assert_eq!(back, status);
        let table = back.to_string();
        assert!(table.contains("TCP  192.0.2.1:80"), "{table}");
        assert!(table.contains("  -> 10.0.0.1:8080"), "{table}");
        assert!(table.contains("draining"), "{table}");
    }

    /// A port with a shadow policy shows it, with its agreement, in `/status` and under the port in
    /// `vipd status`; counts of another install (an older generation) are not shown.
    #[test]
    fn shadow_in_status() {
        let s = crate::metrics::tests::snapshot();
        let mut shadows = ShadowSnapshot {
            generation: s.shadow_generation,
            ports: vec![crate::shadow::PortShadow {
                port_id: 0,
                shadow: "source-affinity".into(),
                outcomes: [3, 1, 0, 0, 2],
                picks: vec![4, 0],
            }],
        };
        let status = Status::new(&s, &[], Some(&shadows));
        let v = serde_json::to_value(&status).unwrap();
        let shadow = &v["virtual_machines"][0]["ports"][0]["shadow"];
        assert_eq!(shadow["policy"], "source-affinity");
        assert_eq!(
            (shadow["same"].as_u64(), shadow["error"].as_u64()),
            (Some(3), Some(2))
        );
        let table = status.to_string();
        assert!(
            table.contains(
                "shadow source-affinity: same 3 different 1 (75.0 % agree), reject 0 defer 0 error 2"
            ),
            "{table}"
        );
        shadows.generation += 1;
        let stale = Status::new(&s, &[], Some(&shadows));
        assert_eq!(stale.virtual_machines[0].ports[0].shadow, None);
    }
}
