//! [`PluginSelector`]: a [`Selector`] backed by a plugin instance, with fallback to round-robin and
//! quarantine.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use wasmtime::Store;

use super::bindings::{
    InitError, SelectError, SelectorWorld, WitCandidate, WitConnection, WitProtocol, WitServerState,
};
use super::sandbox::PluginState;
use super::stats::CallResult;
use super::{HostInner, PluginHandle, Version};
use crate::policy::{
    Candidate, NewConnection, Outcome, RoundRobin, Selection, Selector, ServerState,
};
use crate::wire::Protocol;

/// Failures in a row (trap, timeout, memory, bad answer) after which a selector stops calling its plugin
/// until a new version of the file is loaded.
pub const QUARANTINE_AFTER: u32 = 5;

/// Runs a selector plugin once per new connection. Keeps its instance between calls (plugins keep state);
/// after a trap the instance is discarded and a fresh one is created and initialised at the next call.
pub struct PluginSelector {
    host: Arc<HostInner>,
    plugin: PluginHandle,
    args: Vec<(String, String)>,
    /// The version `live` (or the failures) belong to.
    version: u64,
    live: Option<Live>,
    failures: u32,
    quarantined: bool,
    fallback: RoundRobin,
    /// Candidates in WIT form, reused between calls.
    scratch: Vec<WitCandidate>,
}

struct Live {
    store: Store<PluginState>,
    world: SelectorWorld,
}

impl PluginSelector {
    pub(crate) fn new(
        host: Arc<HostInner>,
        plugin: PluginHandle,
        args: Vec<(String, String)>,
    ) -> Result<PluginSelector> {
        let current = plugin
            .slot
            .current
            .load_full()
            .with_context(|| plugin.unloaded())?;
        let live = instantiate(&host, &plugin, &current, &args)?;
        Ok(PluginSelector {
            host,
            version: current.version.load(Ordering::Relaxed),
            plugin,
            args,
            live: Some(live),
            failures: 0,
            quarantined: false,
            fallback: RoundRobin::new(),
            scratch: Vec::new(),
        })
    }

    /// The plugin this selector runs.
    pub fn plugin(&self) -> &PluginHandle {
        &self.plugin
    }

    /// Whether repeated failures made it stop calling the plugin (until a new version is loaded).
    pub fn is_quarantined(&self) -> bool {
        self.quarantined
    }

    /// Tells the plugin a connection it placed on `real_id` closed.
    pub fn connection_closed(&mut self, conn: &NewConnection, real_id: u32) {
        let c = wit_connection(conn);
        self.notify(|w, s| {
            w.vipd_policy_selection()
                .call_connection_closed(s, c, real_id)
        });
    }

    /// Tells the plugin a connection it placed on `real_id` was ditched.
    pub fn connection_ditched(&mut self, conn: &NewConnection, real_id: u32) {
        let c = wit_connection(conn);
        self.notify(|w, s| {
            w.vipd_policy_selection()
                .call_connection_ditched(s, c, real_id)
        });
    }

    /// Tells the plugin real server `real_id` changed state.
    pub fn server_state_changed(&mut self, real_id: u32, state: ServerState) {
        let st = wit_state(state);
        self.notify(|w, s| {
            w.vipd_policy_selection()
                .call_server_state_changed(s, real_id, st)
        });
    }

    fn notify(
        &mut self,
        call: impl FnOnce(&SelectorWorld, &mut Store<PluginState>) -> wasmtime::Result<()>,
    ) {
        if self.quarantined
            || self
                .plugin
                .slot
                .current
                .load()
                .as_ref()
                .map(|v| v.version.load(Ordering::Relaxed))
                != Some(self.version)
        {
            return;
        }
        if let Some(live) = self.live.as_mut() {
            let _armed = self.host.arm();
            live.store.set_epoch_deadline(self.host.call_ticks);
            if let Err(e) = call(&live.world, &mut live.store) {
                tracing::debug!(plugin = self.plugin.name(), "notification failed: {e:#}");
                self.live = None;
            }
        }
    }

    /// One call into the plugin; `Err` carries how it failed.
    fn call(
        &mut self,
        current: &Version,
        conn: &NewConnection,
        candidates: &[Candidate],
    ) -> Result<Selection, (CallResult, String)> {
        if self.live.is_none() {
            let live = instantiate(&self.host, &self.plugin, current, &self.args)
                .map_err(|e| (CallResult::Trap, format!("{e:#}")))?;
            self.live = Some(live);
        }
        let live = self.live.as_mut().expect("instantiated above");
        self.scratch.clear();
        self.scratch.extend(
            candidates
                .iter()
                .enumerate()
                .map(|(i, c)| wit_candidate(i, c)),
        );
        live.store.data_mut().limiter.hit = false;
        let _armed = self.host.arm();
        live.store.set_epoch_deadline(self.host.call_ticks);
        let answer = live.world.vipd_policy_selection().call_select(
            &mut live.store,
            wit_connection(conn),
            &self.scratch,
        );
        match answer {
            Ok(Ok(i)) => match candidates.get(i as usize) {
                Some(c) if c.eligible() => Ok(Selection::Pick(i as usize)),
                Some(c) => Err((
                    CallResult::BadAnswer,
                    format!(
                        "picked candidate {i}, which is {} with weight {}",
                        c.state.as_str(),
                        c.weight
                    ),
                )),
                None => Err((
                    CallResult::BadAnswer,
                    format!("picked candidate {i} of {}", candidates.len()),
                )),
            },
            Ok(Err(SelectError::Reject | SelectError::NoServer)) => Ok(Selection::Reject),
            Ok(Err(SelectError::Defer)) => Err((CallResult::Deferred, String::new())),
            Err(e) => {
                let kind = if e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt)
                {
                    CallResult::Timeout
                } else if live.store.data().limiter.hit {
                    CallResult::Memory
                } else {
                    CallResult::Trap
                };
                // A trapped component instance may not be entered again.
                self.live = None;
                Err((kind, format!("{:#}", anyhow::Error::from(e))))
            }
        }
    }
}

impl Selector for PluginSelector {
    fn server_state_changed(&mut self, real_id: u32, state: ServerState) {
        PluginSelector::server_state_changed(self, real_id, state);
    }

    fn select(&mut self, conn: &NewConnection, candidates: &[Candidate]) -> Selection {
        self.select_outcome(conn, candidates).0
    }

    fn select_outcome(
        &mut self,
        conn: &NewConnection,
        candidates: &[Candidate],
    ) -> (Selection, Outcome) {
        let start = Instant::now();
        let guard = self.plugin.slot.current.load();
        let Some(current) = guard.as_ref() else {
            return (self.fallback.select(conn, candidates), Outcome::Failed);
        };
        if current.version.load(Ordering::Relaxed) != self.version {
            // A new version was published: start over with it.
            self.version = current.version.load(Ordering::Relaxed);
            self.live = None;
            self.failures = 0;
            self.quarantined = false;
        }
        let stats = self.plugin.stats().clone();
        if self.quarantined {
            let s = self.fallback.select(conn, candidates);
            stats.record_call(CallResult::Quarantined, start.elapsed());
            return (s, Outcome::Failed);
        }
        let current = Arc::clone(current);
        drop(guard);
        let cpu_before = thread_cpu_time();
        let answer = self.call(&current, conn, candidates);
        match answer {
            Ok(selection) => {
                self.failures = 0;
                let (r, outcome) = match selection {
                    Selection::Pick(_) => (CallResult::Ok, Outcome::Picked),
                    Selection::Reject => (CallResult::Reject, Outcome::Rejected),
                };
                stats.record_call(r, start.elapsed());
                (selection, outcome)
            }
            Err((result, why)) => {
                let cpu = thread_cpu_time().saturating_sub(cpu_before);
                if counts_towards_quarantine(result, cpu, self.host.limits.deadline) {
                    self.failures += 1;
                    tracing::warn!(
                        plugin = self.plugin.name(),
                        file = %current.path.display(),
                        result = result.as_str(),
                        "plugin failed, round-robin serves this connection: {why}"
                    );
                    if self.failures >= QUARANTINE_AFTER {
                        self.quarantined = true;
                        self.live = None;
                        tracing::error!(
                            plugin = self.plugin.name(),
                            file = %current.path.display(),
                            "plugin quarantined after {} failures in a row; round-robin serves until the file changes",
                            self.failures
                        );
                    }
                }
                let s = self.fallback.select(conn, candidates);
                stats.record_call(result, start.elapsed());
                let outcome = if result == CallResult::Deferred {
                    Outcome::Deferred
                } else {
                    Outcome::Failed
                };
                (s, outcome)
            }
        }
    }
}

/// A fresh instance of `version` in its own store, initialised with `args`.
fn instantiate(
    host: &HostInner,
    plugin: &PluginHandle,
    version: &Version,
    args: &[(String, String)],
) -> Result<Live> {
    let file = version.path.display();
    let pre = version.selector.as_ref().with_context(|| {
        format!("{file}: not a selector plugin (does not export vipd:policy/selection)")
    })?;
    let mut store = host.new_store(plugin);
    let _armed = host.arm();
    store.set_epoch_deadline(host.slow_ticks);
    let world = pre
        .instantiate(&mut store)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("{file}: instantiating"))?;
    world
        .vipd_policy_selection()
        .call_init(&mut store, args)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("{file}: init trapped"))?
        .map_err(|e| anyhow!("{file}: init refused the arguments: {}", init_error(&e)))?;
    Ok(Live { store, world })
}

pub(crate) fn init_error(e: &InitError) -> String {
    match e {
        InitError::UnknownArgument(k) => format!("unknown argument {k:?}"),
        InitError::InvalidArgument(m) => format!("invalid argument: {m}"),
        InitError::Other(m) => m.clone(),
    }
}

fn wit_connection(c: &NewConnection) -> WitConnection {
    WitConnection {
        client_addr: ipv4_bits(c.client.ip()),
        client_port: c.client.port(),
        virtual_addr: ipv4_bits(c.virtual_addr.ip()),
        virtual_port: c.virtual_addr.port(),
        protocol: match c.protocol {
            Protocol::Tcp => WitProtocol::Tcp,
            Protocol::Udp => WitProtocol::Udp,
        },
        virtual_id: c.virtual_id,
    }
}

fn wit_state(s: ServerState) -> WitServerState {
    match s {
        ServerState::Up => WitServerState::Up,
        ServerState::Draining => WitServerState::Draining,
        ServerState::Failed => WitServerState::Failed,
    }
}

fn wit_candidate(index: usize, c: &Candidate) -> WitCandidate {
    WitCandidate {
        index: index as u32,
        real_id: c.real_id,
        addr: ipv4_bits(c.target.ip()),
        port: c.target.port(),
        weight: c.weight,
        state: wit_state(c.state),
        active: c.active,
        total: c.total,
        syn_rtt_us: c.syn_rtt_us,
        ditched: c.ditched,
    }
}

/// Whether a failed call counts towards quarantine. The deadline is wall-clock time: a call that timed out
/// having used under half its deadline in CPU was descheduled (a busy machine), not stuck. It falls back like
/// any failure, but does not count.
fn counts_towards_quarantine(result: CallResult, cpu: Duration, deadline: Duration) -> bool {
    result.is_failure() && !(result == CallResult::Timeout && cpu < deadline / 2)
}

/// CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`).
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// The 0.1.0 interface's address: an IPv4 address as a number. An IPv6 virtual machine never reaches a 0.1.0
/// plugin (refused at load), so its addresses have no number here.
fn ipv4_bits(ip: std::net::IpAddr) -> u32 {
    match ip {
        std::net::IpAddr::V4(a) => u32::from(a),
        std::net::IpAddr::V6(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A timeout that burned its deadline counts; one spent descheduled does not; traps always count.
    #[test]
    fn preempted_timeouts_do_not_count_towards_quarantine() {
        let ms = Duration::from_millis;
        assert!(counts_towards_quarantine(CallResult::Timeout, ms(1), ms(1)));
        assert!(!counts_towards_quarantine(
            CallResult::Timeout,
            Duration::from_micros(100),
            ms(1)
        ));
        assert!(counts_towards_quarantine(
            CallResult::Trap,
            Duration::ZERO,
            ms(1)
        ));
        assert!(!counts_towards_quarantine(CallResult::Reject, ms(5), ms(1)));
    }

    /// The thread CPU clock moves with work done on this thread.
    #[test]
    fn thread_cpu_time_advances() {
        let before = thread_cpu_time();
        let mut x = 0u64;
        while thread_cpu_time() < before + Duration::from_millis(2) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(thread_cpu_time() >= before + Duration::from_millis(2));
    }
}
