//! How a SYN picks a server (patent FIG. 5, with the failure handling of FIG. 6B).
//!
//! A connection-opening frame whose virtual port exists ([`crate::binding::BindingTable::lookup`]) comes
//! here from the packet path ([`super::path`]). [`Director::select`] lists the port's bound targets as
//! [`Candidate`]s with their live state: a failed server's `backup` stands in for it (following the chain),
//! and a failed server whose trial is due gets the connection outright. Otherwise the port's [`Selector`]
//! (the built-in round-robin, or a WebAssembly policy from [`crate::plugin`], chosen per port by
//! [`crate::assemble`]) picks one, once per connection; its choice is stored in the connection object.
//!
//! When the chosen server ditches the connection (no SYN-ACK after `syn_retries` resends, or an RST to the
//! SYN), [`Director::ditch`] counts it against the server, ends the policy's placement ([`super::notify`])
//! and asks again with that server left out.

use std::time::Duration;

use super::Director;
use super::notify::Ended;
use super::stats::{flow_mut, release};
use crate::binding::Lookup;
use crate::conntable::{ConnId, Endpoint};
use crate::policy::{Candidate, InstanceId, NewConnection, Outcome, Selection, ServerState};
use crate::shadow::{Job, MAX_CANDIDATES};
use crate::wire::Protocol;

/// What became of a ditched connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ditch {
    /// Another server has it now.
    Moved,
    /// No other server can take it; its own server is still up, so it stays there.
    Kept,
    /// No server can take it.
    Nowhere,
}

impl Director {
    /// The server of connection `id` ditched it: count that, and give the connection to another server
    /// (the policy is asked again with the ditching server left out).
    pub(super) fn ditch(&mut self, id: ConnId, now: Duration) -> Ditch {
        let conn = *self.table.get(id);
        let old = conn.real_id;
        self.count_ditched(old as usize, now);
        self.notices.push(Ended::Ditched, &conn, &mut self.counters);
        self.table.get_mut(id).placed_by = None;
        let port_id = match self.bindings.lookup(
            conn.virtual_addr.ip(),
            conn.protocol,
            conn.virtual_addr.port(),
        ) {
            Lookup::Port(port_id) => Some(port_id),
            _ => None,
        };
        let picked = port_id.and_then(|port_id| {
            self.select(
                port_id,
                conn.client,
                conn.virtual_addr,
                conn.protocol,
                Some(old),
                now,
            )
            .map(|picked| (port_id, picked))
        });
        if let Some((port_id, (real_id, target, placed_by))) = picked
            && self.table.retarget(id, target, real_id).is_ok()
        {
            self.counters.reselected += 1;
            release(&mut self.reals, &mut self.flows, &mut self.offload, &conn);
            if let Some(r) = self.reals.get_mut(real_id as usize) {
                r.active += 1;
                r.total += 1;
            }
            let moved = self.table.get_mut(id);
            moved.port_id = port_id;
            moved.placed_by = placed_by;
            if let Some(f) = flow_mut(&mut self.flows, self.reals.len(), moved) {
                f.active += 1;
                f.total += 1;
            }
            moved.syn_resends = 0;
            // The new server's SYN round trip is measured from here.
            moved.created = now.into();
            return Ditch::Moved;
        }
        let keep = self
            .reals
            .get(old as usize)
            .is_some_and(|r| r.state == ServerState::Up);
        if keep {
            self.table.get_mut(id).syn_resends = 0;
            Ditch::Kept
        } else {
            Ditch::Nowhere
        }
    }

    /// Asks the virtual port's policy for a server among its bound targets, with live state. A failed
    /// server's backup stands in for it (following the chain); `exclude` (a server that just ditched this
    /// connection) is offered as failed. A failed server whose trial is due gets the connection outright.
    /// Returns the server, and the policy instance to tell when the connection ends there if the policy
    /// picked it itself and asks for notices.
    pub(super) fn select(
        &mut self,
        port_id: u32,
        client: Endpoint,
        virt: Endpoint,
        protocol: Protocol,
        exclude: Option<u32>,
        now: Duration,
    ) -> Option<(u32, Endpoint, Option<InstanceId>)> {
        let trial = self.fill_candidates(port_id, exclude, now)?;
        // A moved flow is placed only where every director would place it: no trial connection.
        if let Some(i) = trial.filter(|_| !self.placing_moved) {
            let c = self.candidates.get(i)?;
            let h = self.health.get_mut(c.real_id as usize)?;
            h.retry_at = now + h.retry_after;
            self.counters.trials += 1;
            return Some((c.real_id, c.target.into(), None));
        }
        let port = self.bindings.ports.get(port_id as usize)?;
        let new = NewConnection {
            client: client.into(),
            virtual_addr: virt.into(),
            protocol,
            virtual_id: port.virtual_id,
        };
        let selector = self.selectors.get_mut(port_id as usize)?;
        let (selection, outcome) = selector.select_outcome(&new, &self.candidates);
        self.last_select = Some(now);
        // The call just warmed what a keep-warm call would.
        self.keep_warm_next = now + self.keep_warm;
        if self.placing_moved && outcome != Outcome::Picked {
            // A fallback (the policy failed, or deferred) picks what other directors would not.
            return None;
        }
        let placed_by = match outcome {
            Outcome::Picked => selector.instance(),
            _ => None,
        };
        let chosen = match selection {
            Selection::Pick(i) => self
                .candidates
                .get(i)
                .filter(|c| c.eligible())
                .map(|c| (c.real_id, c.target.into(), placed_by)),
            Selection::Reject => None,
        };
        if exclude.is_none() {
            self.shadow(port_id, new, chosen.map(|c| c.0));
        }
        chosen
    }

    /// Asks the policies that want it to keep warm ([`crate::policy::Selector::keep_warm`]), each with its
    /// port's candidates as they are now.
    pub(super) fn keep_policies_warm(&mut self, now: Duration) {
        for port_id in 0..self.selectors.len() {
            if !self.selectors[port_id].wants_warm(self.keep_warm) {
                continue;
            }
            let Some(port) = self.bindings.ports.get(port_id) else {
                continue;
            };
            let Some(vm) = self.bindings.virtuals.get(port.virtual_id as usize) else {
                continue;
            };
            let conn = NewConnection::warm_up(
                std::net::SocketAddr::new(vm.address, port.port),
                port.protocol,
                port.virtual_id,
            );
            if self.fill_candidates(port_id as u32, None, now).is_none() {
                continue;
            }
            self.selectors[port_id].keep_warm(&conn, &self.candidates);
        }
    }

    /// Fills `self.candidates` with port `port_id`'s bound targets and their live state (see
    /// [`Director::select`]); the index of a failed server whose trial is due, if any. `None`: no such port.
    fn fill_candidates(
        &mut self,
        port_id: u32,
        exclude: Option<u32>,
        now: Duration,
    ) -> Option<Option<usize>> {
        let bindings = &self.bindings;
        let port = bindings.ports.get(port_id as usize)?;
        self.candidates.clear();
        let mut trial = None;
        for t in &port.targets {
            let mut real_id = t.real_id;
            let mut target_port = t.port;
            // Cycles are refused by the config; the bound only guards against a bug.
            for _ in 0..bindings.reals.len() {
                if self.reals.get(real_id as usize)?.state != ServerState::Failed {
                    break;
                }
                if trial.is_none()
                    && exclude != Some(real_id)
                    && self.health.get(real_id as usize)?.trial_due(now)
                {
                    trial = Some(self.candidates.len());
                    break;
                }
                let Some(b) = bindings.reals.get(real_id as usize)?.backup else {
                    break;
                };
                let backup = bindings.reals.get(b as usize)?;
                real_id = b;
                target_port = backup.port.unwrap_or(target_port);
            }
            let live = self.reals.get(real_id as usize)?;
            // A binding's own weight applies to its own server, not to a backup standing in.
            let weight = if real_id == t.real_id {
                t.weight_on(live.weight)
            } else {
                live.weight
            };
            self.candidates.push(Candidate {
                real_id,
                target: std::net::SocketAddr::new(live.address, target_port),
                weight,
                state: if exclude == Some(real_id) {
                    ServerState::Failed
                } else {
                    live.state
                },
                // Open now: a closing connection no longer loads the server (issue 16).
                active: live.active.saturating_sub(live.closing),
                total: live.total,
                syn_rtt_us: live.syn_rtt_us,
                ditched: live.ditched,
            });
        }
        Some(trial)
    }

    /// Hands a new connection and the live choice to the port's shadow policy, if it has one: a copy into
    /// a bounded queue, never a wait; a full queue (or too many candidates) is counted.
    fn shadow(&mut self, port_id: u32, conn: NewConnection, live: Option<u32>) {
        if !self
            .shadowed
            .get(port_id as usize)
            .copied()
            .unwrap_or(false)
        {
            return;
        }
        let Some(sender) = self.shadow_tx.as_mut() else {
            return;
        };
        if self.candidates.len() > MAX_CANDIDATES {
            self.counters.shadow_dropped += 1;
            return;
        }
        let mut candidates = [None; MAX_CANDIDATES];
        for (slot, c) in candidates.iter_mut().zip(&self.candidates) {
            *slot = Some(*c);
        }
        let job = Job {
            generation: self.shadow_generation,
            port_id,
            conn,
            candidates,
            live,
        };
        if !sender.send(job) {
            self.counters.shadow_dropped += 1;
        }
    }
}
