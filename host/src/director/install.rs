//! Putting a binding table and its selectors in place, at start and on every reload.
//!
//! Connections in progress keep their servers: they carry the real address and port, and the live state of
//! a real server and its counters follow it by name. A server removed from the config stays, draining,
//! while it has connections. Runs between batches on the data-path thread; allocates, never per packet.

use std::sync::Arc;
use std::time::Duration;

use strum::EnumCount;

use super::neighbours::{ANNOUNCE_COUNT, ANNOUNCE_INTERVAL, neighbours_for};
use super::reals::Health;
use super::stats::flow_mut;
use super::synproxy::SynProxy;
use super::{Director, DropReason, FlowCount, RealLive, StateReason};
use crate::binding::{BindingTable, Lookup};
use crate::config::Config;
use crate::policy::Selector;

impl Director {
    /// Puts a new binding table in place (config reload). Connections in progress keep their servers: they
    /// carry the real address and port, and the live state of a real server follows it by name. The new
    /// selectors are new instances: the connections the old ones placed end without notices (stale).
    pub fn install(&mut self, bindings: BindingTable, selectors: Vec<Box<dyn Selector>>) {
        // The selectors about to be replaced hear first about the connections they placed.
        self.deliver_notices();
        let mut reals = Vec::with_capacity(bindings.reals.len());
        let mut health = Vec::with_capacity(bindings.reals.len());
        for r in &bindings.reals {
            let old = self.reals.iter().position(|o| o.name == r.name);
            let mut h = old
                .and_then(|i| self.health.get(i).cloned())
                .unwrap_or_else(|| Health::new(&r.name));
            h.failure_threshold = r.failure_threshold;
            h.retry_after = r.retry_after;
            h.config_drain = r.weight == 0;
            let old = old.and_then(|i| self.reals.get(i));
            reals.push(RealLive {
                name: r.name.clone(),
                address: r.address,
                state: old.map_or(h.state(), |o| o.state),
                weight: r.weight,
                active: old.map_or(0, |o| o.active),
                closing: old.map_or(0, |o| o.closing),
                total: old.map_or(0, |o| o.total),
                syn_rtt_us: old.map_or(0, |o| o.syn_rtt_us),
                ditched: old.map_or(0, |o| o.ditched),
                ditched_total: old.map_or(0, |o| o.ditched_total),
            });
            health.push(h);
        }
        // A server removed from the config keeps its connections until they end, and gets no new ones.
        for (old, h) in self.reals.iter().zip(&self.health) {
            if old.active > 0 && !reals.iter().any(|r| r.name == old.name) {
                reals.push(RealLive {
                    weight: 0,
                    ..old.clone()
                });
                health.push(Health {
                    config_drain: true,
                    ..h.clone()
                });
            }
        }
        // Re-point live connections at the new indexes.
        let old_reals = std::mem::take(&mut self.reals);
        let remap: Vec<u32> = old_reals
            .iter()
            .map(|o| {
                reals
                    .iter()
                    .position(|r| r.name == o.name)
                    .map_or(u32::MAX, |i| i as u32)
            })
            .collect();
        // Per-pair counters follow (virtual address, protocol, port, real name); active counts are recounted.
        let mut flows = vec![FlowCount::default(); bindings.ports.len() * reals.len()];
        for (old_port_id, old_port) in self.bindings.ports.iter().enumerate() {
            let Some(vm) = self.bindings.virtuals.get(old_port.virtual_id as usize) else {
                continue;
            };
            let Lookup::Port(new_port_id) =
                bindings.lookup(vm.address, old_port.protocol, old_port.port)
            else {
                continue;
            };
            for (old_real_id, &new_real_id) in remap.iter().enumerate() {
                let old = self
                    .flows
                    .get(old_port_id * old_reals.len() + old_real_id)
                    .copied()
                    .unwrap_or_default();
                if let Some(f) =
                    flows.get_mut(new_port_id as usize * reals.len() + new_real_id as usize)
                {
                    f.total = old.total;
                    f.syn_resends = old.syn_resends;
                }
            }
        }
        let mut rejected = vec![[0; DropReason::COUNT]; bindings.virtuals.len()];
        for (old_id, vm) in self.bindings.virtuals.iter().enumerate() {
            if let Some(new_id) = bindings.virtual_by_address(vm.address)
                && let (Some(new), Some(old)) =
                    (rejected.get_mut(new_id as usize), self.rejected.get(old_id))
            {
                *new = *old;
            }
        }
        let reals_len = reals.len();
        self.table.for_each_mut(|conn| {
            conn.real_id = remap
                .get(conn.real_id as usize)
                .copied()
                .unwrap_or(u32::MAX);
            conn.port_id = match bindings.lookup(
                conn.virtual_addr.ip(),
                conn.protocol,
                conn.virtual_addr.port(),
            ) {
                Lookup::Port(id) => id,
                _ => u32::MAX,
            };
            if let Some(f) = flow_mut(&mut flows, reals_len, conn) {
                f.active += 1;
            }
        });
        self.flows = flows;
        self.rejected = rejected;
        self.publish_due = true;

        let neighbours = neighbours_for(&self.neighbours, &bindings, &reals);
        let max_targets = bindings
            .ports
            .iter()
            .map(|p| p.targets.len())
            .max()
            .unwrap_or(0);
        self.candidates.reserve(max_targets);
        self.reals = reals;
        self.health = health;
        self.sync_names();
        for real_id in 0..self.reals.len() {
            self.update_state(real_id, StateReason::Config);
        }
        self.neighbours = neighbours;
        self.selectors = selectors;
        self.shadowed = bindings.ports.iter().map(|p| p.shadow.is_some()).collect();
        self.shadow_generation += 1;
        self.returns = if self.cluster {
            bindings.returns()
        } else {
            crate::binding::Returns::new()
        };
        self.bindings = Arc::new(bindings);
        self.mark_placeable();
        self.announce_left = ANNOUNCE_COUNT;
        self.announce_next = Duration::ZERO;
        self.announce_every = ANNOUNCE_INTERVAL;
    }

    /// Applies the tunables of a config (at start and on reload): timeouts, SYN retries and the defences
    /// against floods. Connections the SYN proxy opened stay proxied when it is turned off.
    pub fn set_limits(&mut self, config: &Config) {
        let d = &config.director;
        self.table.set_timeouts(config.timeouts);
        self.syn_retries = d.syn_retries.min(254) as u8;
        self.syn_proxy = d.syn_proxy.then_some(SynProxy {
            mss: d.syn_proxy_mss,
            wscale: d.syn_proxy_wscale,
        });
        self.new_per_wakeup = d.new_per_wakeup;
        self.keep_warm = d.plugin_keep_warm;
        if let Some(sync) = &config.sync {
            self.garp = (sync.garp_repeat, sync.garp_interval);
        }
        let cluster = config.cluster.is_some();
        if cluster != self.cluster {
            self.cluster = cluster;
            self.returns = if cluster {
                self.bindings.returns()
            } else {
                crate::binding::Returns::new()
            };
        }
        self.consistent = config
            .cluster
            .as_ref()
            .map(|c| c.consistent_policies.clone())
            .unwrap_or_default();
        self.mark_placeable();
    }

    /// Which virtual ports place a moved flow by their policy: those of a cluster whose policy is
    /// consistent (`[cluster] consistent_policies`).
    fn mark_placeable(&mut self) {
        self.placeable = self
            .bindings
            .ports
            .iter()
            .map(|p| self.cluster && self.consistent.contains(&p.policy))
            .collect();
    }
}
