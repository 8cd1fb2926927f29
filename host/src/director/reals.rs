//! The real servers' live state (patent FIG. 6B): up, draining or failed, with the reason.
//!
//! Three sources feed it: ditched connections (a connection whose SYN was resent `syn_retries` times without
//! a SYN-ACK, or that its server answered with RST; `failure_threshold` in a row fail the server, its `backup`
//! stands in, and after `retry_after` it gets one trial connection whose SYN-ACK restores it), active health
//! checks ([`Director::set_check_result`]) and the operator ([`Director::set_real_state`]). [`Health::state`]
//! combines them; every change is queued once, with its reason, for [`Director::drain_events`].

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::Director;
use crate::config::Config;
use crate::policy::ServerState;

/// State changes kept for [`Director::drain_events`]; when full, the oldest is dropped (and counted).
pub(super) const EVENT_CAPACITY: usize = 256;

/// Why a real server changed state. Each is a log field and a plugin event argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StateReason {
    /// `failure_threshold` connections in a row were ditched (no SYN-ACK after `syn_retries` resends, or RST).
    Ditched,
    /// It answered a SYN with SYN-ACK (a trial connection after `retry_after`, or a late answer).
    Answered,
    /// The active health check failed `fall` times in a row.
    CheckFailed,
    /// The active health check passed `rise` times in a row.
    CheckPassed,
    /// The operator set the state ([`Director::set_real_state`]).
    Operator,
    /// A config reload changed its weight, its check, or removed it.
    Config,
}

impl StateReason {
    /// The log and label name.
    pub fn as_str(self) -> &'static str {
        match self {
            StateReason::Ditched => "ditched",
            StateReason::Answered => "answered",
            StateReason::CheckFailed => "check_failed",
            StateReason::CheckPassed => "check_passed",
            StateReason::Operator => "operator",
            StateReason::Config => "config",
        }
    }
}

/// One change of a real server's state, queued for [`Director::drain_events`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateChange {
    /// The real server's name.
    pub real: Arc<str>,
    pub from: ServerState,
    pub to: ServerState,
    pub reason: StateReason,
    /// Its consecutive ditched connections at the time.
    pub ditched: u32,
    pub at: Duration,
}

/// [`Director::set_real_state`] or [`Director::set_check_result`] named no real server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownReal(pub String);

impl fmt::Display for UnknownReal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no real server is named \"{}\"", self.0)
    }
}

impl std::error::Error for UnknownReal {}

/// What decides a real server's state, besides its live counters. [`Health::state`] combines them.
#[derive(Clone, Debug)]
pub(super) struct Health {
    pub(super) name: Arc<str>,
    pub(super) failure_threshold: u32,
    pub(super) retry_after: Duration,
    /// Failed by ditched connections; cleared by a SYN-ACK from it.
    pub(super) ditch_failed: bool,
    /// Has an active health check in the config in force; verdicts for others are ignored.
    pub(super) checked: bool,
    /// Failed by its active health check; cleared by the check only.
    pub(super) check_failed: bool,
    /// Set by the operator: `Draining` or `Failed`; `None` follows the rest.
    pub(super) operator: Option<ServerState>,
    /// Weight 0, or removed from the config.
    pub(super) config_drain: bool,
    /// When a ditch-failed server gets its next trial connection.
    pub(super) retry_at: Duration,
}

impl Health {
    pub(super) fn new(name: &str) -> Health {
        Health {
            name: Arc::from(name),
            failure_threshold: crate::config::DEFAULT_FAILURE_THRESHOLD,
            retry_after: crate::config::DEFAULT_RETRY_AFTER,
            ditch_failed: false,
            checked: false,
            check_failed: false,
            operator: None,
            config_drain: false,
            retry_at: Duration::ZERO,
        }
    }

    /// Failed by any source wins over draining, which wins over up.
    pub(super) fn state(&self) -> ServerState {
        if self.ditch_failed || self.check_failed || self.operator == Some(ServerState::Failed) {
            ServerState::Failed
        } else if self.config_drain || self.operator == Some(ServerState::Draining) {
            ServerState::Draining
        } else {
            ServerState::Up
        }
    }

    /// Whether the next connection bound to it is its trial: only ditched connections failed it, and
    /// `retry_after` has passed since.
    pub(super) fn trial_due(&self, now: Duration) -> bool {
        self.ditch_failed
            && !self.check_failed
            && !self.config_drain
            && self.operator.is_none()
            && now >= self.retry_at
    }
}

/// Live state of one real server (patent FIG. 6B: state, ditched connections).
#[derive(Clone, Debug, PartialEq)]
pub struct RealLive {
    pub name: String,
    pub address: IpAddr,
    pub state: ServerState,
    pub weight: u32,
    /// Connection objects in the table (closing ones included).
    pub active: u32,
    /// Of those, the ones closing (a FIN or RST seen): candidates get `active - closing`, the connections
    /// open to the server now.
    pub closing: u32,
    pub total: u64,
    pub syn_rtt_us: u32,
    pub ditched: u32,
    /// Ditched connections since start: unlike `ditched`, never reset (the metric counter).
    pub ditched_total: u64,
}

impl Director {
    /// Operator control (admin API): `Draining` stops new connections and lets existing ones finish, `Failed`
    /// fails the server (its backup stands in), `Up` lifts both and forgets its ditched connections. An
    /// active check failure or `weight = 0` still applies after `Up`.
    pub fn set_real_state(
        &mut self,
        name: &str,
        state: ServerState,
        now: Duration,
    ) -> Result<(), UnknownReal> {
        let real_id = self.real_named(name)?;
        self.now = self.now.max(now);
        let (h, live) = (&mut self.health[real_id], &mut self.reals[real_id]);
        match state {
            ServerState::Up => {
                h.operator = None;
                h.ditch_failed = false;
                live.ditched = 0;
            }
            other => h.operator = Some(other),
        }
        self.update_state(real_id, StateReason::Operator);
        Ok(())
    }

    /// The active health check of `name` came to a verdict: `up` after `rise` successes in a row, down
    /// after `fall` failures. A check that passes also clears a failure by ditched connections. Ignored for
    /// a server without a check in the config in force (a verdict from before a reload).
    pub fn set_check_result(
        &mut self,
        name: &str,
        up: bool,
        now: Duration,
    ) -> Result<(), UnknownReal> {
        let real_id = self.real_named(name)?;
        self.now = self.now.max(now);
        let (h, live) = (&mut self.health[real_id], &mut self.reals[real_id]);
        if !h.checked {
            return Ok(());
        }
        if up {
            h.check_failed = false;
            h.ditch_failed = false;
            live.ditched = 0;
            self.update_state(real_id, StateReason::CheckPassed);
        } else {
            h.check_failed = true;
            self.update_state(real_id, StateReason::CheckFailed);
        }
        Ok(())
    }

    /// Tells the director which real servers have an active check in `config` (call after each
    /// [`Director::install`]); the others forget any check failure, so none waits for a check that no
    /// longer runs.
    pub fn set_checked(&mut self, config: &Config) {
        for real_id in 0..self.health.len() {
            let checked = config
                .reals
                .iter()
                .any(|r| *r.name == *self.health[real_id].name && r.check.is_some());
            self.health[real_id].checked = checked;
            if !checked && self.health[real_id].check_failed {
                self.health[real_id].check_failed = false;
                self.update_state(real_id, StateReason::Config);
            }
        }
    }

    /// Takes the queued state changes, oldest first. The caller logs them and passes them to plugins.
    pub fn drain_events(&mut self) -> std::collections::vec_deque::Drain<'_, StateChange> {
        self.events.drain(..)
    }

    fn real_named(&self, name: &str) -> Result<usize, UnknownReal> {
        self.health
            .iter()
            .position(|h| *h.name == *name)
            .ok_or_else(|| UnknownReal(name.to_owned()))
    }

    /// Puts the state [`Health`] says in force; queues the change, with `reason`, when there is one.
    pub(super) fn update_state(&mut self, real_id: usize, reason: StateReason) {
        let (Some(h), Some(live)) = (self.health.get(real_id), self.reals.get_mut(real_id)) else {
            return;
        };
        let to = h.state();
        if live.state == to {
            return;
        }
        let change = StateChange {
            real: Arc::clone(&h.name),
            from: live.state,
            to,
            reason,
            ditched: live.ditched,
            at: self.now,
        };
        live.state = to;
        self.counters.state_changes += 1;
        // Rare (a state change), never per packet: plugins may keep per-server state.
        for selector in &mut self.selectors {
            selector.server_state_changed(real_id as u32, to);
        }
        if self.events.len() == EVENT_CAPACITY {
            self.events.pop_front();
            self.counters.events_lost += 1;
        }
        self.events.push_back(change);
    }

    /// A connection of `real_id` was ditched: one more in a row; the threshold fails the server, and a
    /// failed one (its trial connection went unanswered) waits another `retry_after`.
    pub(super) fn count_ditched(&mut self, real_id: usize, now: Duration) {
        self.counters.ditched += 1;
        let (Some(h), Some(live)) = (self.health.get_mut(real_id), self.reals.get_mut(real_id))
        else {
            return;
        };
        live.ditched = live.ditched.saturating_add(1);
        live.ditched_total += 1;
        if live.ditched >= h.failure_threshold {
            if !h.ditch_failed {
                h.ditch_failed = true;
                h.retry_at = now + h.retry_after;
                self.update_state(real_id, StateReason::Ditched);
            } else {
                h.retry_at = h.retry_at.max(now + h.retry_after);
            }
        }
    }

    /// `real_id` answered a SYN: its ditched count starts over, and a failure by ditched connections ends.
    pub(super) fn answered(&mut self, real_id: usize) {
        let (Some(h), Some(live)) = (self.health.get_mut(real_id), self.reals.get_mut(real_id))
        else {
            return;
        };
        live.ditched = 0;
        if h.ditch_failed {
            h.ditch_failed = false;
            self.update_state(real_id, StateReason::Answered);
        }
    }
}
