//! [`PluginSelector`]: a [`Selector`] backed by a plugin instance, with fallback to round-robin and
//! quarantine, for a component of either interface version ([`SelectorPre`], [`Instance`]).
//!
//! A selector serves one virtual port, so one address family: a version of the plugin that cannot carry it
//! ([`super::supports`]) is refused when the selector is made (a config error) and, published later by the
//! plugins folder, not used: the version already serving goes on, and the log says why.
//!
//! Every instance is warmed up before it takes traffic ([`WarmUp`]): one `select` call with the port's
//! candidates under the init deadline, so a policy that builds something from them (Maglev's table) answers
//! the same from its first real connection on, on every director. In the daemon
//! ([`super::PluginHost::prepare_off_path`]) the instances made after start (after a trap, for a new
//! version) are made and warmed on the `vipd-plugin-prep` thread ([`Prepare`]), never on the data path:
//! meanwhile the previous version serves, or round-robin (counted as `starting`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use wasmtime::Store;
use wasmtime::component::InstancePre;

use super::bindings::{ipv4, v0_1, v0_2};
use super::sandbox::{PluginState, RealNames, descheduled, set_deadline, thread_cpu_time};
use super::stats::CallResult;
use super::{HostInner, InterfaceVersion, PluginHandle, Version, check_supports};
use crate::policy::{
    Candidate, InstanceId, NewConnection, Outcome, RoundRobin, Selection, Selector, ServerState,
};

/// Failures in a row (trap, timeout, memory, bad answer) after which a selector stops calling its plugin
/// until a new version of the file is loaded.
pub const QUARANTINE_AFTER: u32 = 5;

/// A plugin whose keep-warm calls cost more than this share of the keep-warm period, in CPU time, is not
/// kept warm: a quarter of a core while connections come. At the default 1 ms, 250 µs: far above a cold call
/// of a Rust plugin (about 65 µs) and a warm one in Python or JavaScript (26 and 63 µs). Judged by the
/// cheapest of its first [`KEEP_WARM_TRIALS`] keep-warm calls.
pub const KEEP_WARM_MAX_SHARE: u32 = 4;
/// Keep-warm calls made before a plugin's cost is judged ([`KEEP_WARM_MAX_SHARE`]).
pub const KEEP_WARM_TRIALS: u32 = 8;

/// What a selector's instances are warmed up with before they take traffic: one `select` call, under the
/// init deadline, with a warm-up connection to the virtual port (the client address unspecified, `0.0.0.0`
/// or `::`, and the client port 0) and the port's candidates. Its answer is not used and no notice follows
/// it. No candidates: no warm-up call.
#[derive(Clone, Debug, Default)]
pub struct WarmUp {
    conn: Option<NewConnection>,
    candidates: Vec<Candidate>,
}

impl WarmUp {
    /// No warm-up call.
    pub fn none() -> WarmUp {
        WarmUp::default()
    }

    /// A warm-up with `candidates` for the virtual port `virtual_addr` of virtual machine `virtual_id`.
    pub fn new(
        virtual_addr: SocketAddr,
        protocol: crate::wire::Protocol,
        virtual_id: u32,
        candidates: Vec<Candidate>,
    ) -> WarmUp {
        WarmUp {
            conn: Some(NewConnection::warm_up(virtual_addr, protocol, virtual_id)),
            candidates,
        }
    }

    /// The warm-up for an instance made when `conn` arrived to find none.
    fn like(conn: &NewConnection, candidates: &[Candidate]) -> WarmUp {
        WarmUp::new(
            conn.virtual_addr,
            conn.protocol,
            conn.virtual_id,
            candidates.to_vec(),
        )
    }
}

/// Instances waiting to be made on the preparation thread at most; a selector that finds the queue full
/// asks again at its next call.
pub(crate) const PREPARE_QUEUE: usize = 64;

/// An instance to make and warm up on the preparation thread, for a selector that keeps serving meanwhile.
pub(crate) struct Prepare {
    host: Arc<HostInner>,
    plugin: PluginHandle,
    version: Arc<Version>,
    args: Vec<(String, String)>,
    reals: RealNames,
    warm_up: WarmUp,
    reply: SyncSender<Result<Live>>,
}

/// The `vipd-plugin-prep` thread: makes instances until the host is gone.
pub(crate) fn preparer(jobs: Receiver<Prepare>) {
    while let Ok(job) = jobs.recv() {
        let made = make(
            &job.host,
            &job.plugin,
            &job.version,
            &job.args,
            &job.reals,
            &job.warm_up,
        );
        // The selector may be gone (a reload replaced it): the instance is dropped with the reply.
        let _ = job.reply.try_send(made);
    }
}

/// An instance on its way from the preparation thread, of `version`.
struct Coming {
    version: Arc<Version>,
    reply: Receiver<Result<Live>>,
}

/// A compiled selector component, linked and ready to instantiate, of the newest interface it implements.
pub(crate) enum SelectorPre {
    V0_1(v0_1::SelectorPre<PluginState>),
    V0_2(v0_2::SelectorPre<PluginState>),
}

impl SelectorPre {
    /// The selector world `pre` implements; the error says why it implements none (in terms of the current
    /// interface, which is what a plugin author should build against).
    pub(crate) fn new(pre: &InstancePre<PluginState>) -> wasmtime::Result<SelectorPre> {
        match v0_2::SelectorPre::new(pre.clone()) {
            Ok(p) => Ok(SelectorPre::V0_2(p)),
            Err(e) => v0_1::SelectorPre::new(pre.clone())
                .map(SelectorPre::V0_1)
                .map_err(|_| e),
        }
    }

    pub(crate) fn interface(&self) -> InterfaceVersion {
        match self {
            SelectorPre::V0_1(_) => InterfaceVersion::V0_1,
            SelectorPre::V0_2(_) => InterfaceVersion::V0_2,
        }
    }
}

/// A selector instance: the calls of `wit/selection.wit`, the host's types converted for its version.
enum Instance {
    V0_1 {
        world: v0_1::SelectorWorld,
        /// Candidates in WIT form, reused between calls.
        scratch: Vec<v0_1::Candidate>,
    },
    V0_2 {
        world: v0_2::SelectorWorld,
        scratch: Vec<v0_2::Candidate>,
    },
}

impl Instance {
    fn init(
        &self,
        store: &mut Store<PluginState>,
        args: &[(String, String)],
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(match self {
            Instance::V0_1 { world, .. } => world
                .vipd_policy_selection()
                .call_init(store, args)?
                .map_err(|e| init_error_v0_1(&e)),
            Instance::V0_2 { world, .. } => world
                .vipd_policy_selection()
                .call_init(store, args)?
                .map_err(|e| init_error(&e)),
        })
    }

    /// `select`; an error of 0.1.0's is given as 0.2.0's (they are the same).
    fn select(
        &mut self,
        store: &mut Store<PluginState>,
        conn: &NewConnection,
        candidates: &[Candidate],
    ) -> wasmtime::Result<Result<u32, v0_2::SelectError>> {
        match self {
            Instance::V0_1 { world, scratch } => {
                // Never an IPv6 address here: a 0.1.0 version is not used for an IPv6 virtual machine,
                // and its connections and servers are of its family. Were one to come, round-robin serves.
                let Some(c) = connection_v0_1(conn) else {
                    return Ok(Err(v0_2::SelectError::Defer));
                };
                scratch.clear();
                for (i, candidate) in candidates.iter().enumerate() {
                    let Some(w) = candidate_v0_1(i, candidate) else {
                        return Ok(Err(v0_2::SelectError::Defer));
                    };
                    scratch.push(w);
                }
                Ok(world
                    .vipd_policy_selection()
                    .call_select(store, c, scratch)?
                    .map_err(|e| match e {
                        v0_1::SelectError::Reject => v0_2::SelectError::Reject,
                        v0_1::SelectError::NoServer => v0_2::SelectError::NoServer,
                        v0_1::SelectError::Defer => v0_2::SelectError::Defer,
                    }))
            }
            Instance::V0_2 { world, scratch } => {
                scratch.clear();
                scratch.extend(
                    candidates
                        .iter()
                        .enumerate()
                        .map(|(i, c)| candidate_v0_2(i, c)),
                );
                world
                    .vipd_policy_selection()
                    .call_select(store, connection_v0_2(conn), scratch)
            }
        }
    }

    /// `connection-closed` (`ditched: false`) or `connection-ditched`; 0.1.0 never gets them.
    fn connection_ended(
        &self,
        store: &mut Store<PluginState>,
        conn: &NewConnection,
        real_id: u32,
        ditched: bool,
    ) -> wasmtime::Result<()> {
        match self {
            Instance::V0_1 { .. } => Ok(()),
            Instance::V0_2 { world, .. } => {
                let (selection, c) = (world.vipd_policy_selection(), connection_v0_2(conn));
                if ditched {
                    selection.call_connection_ditched(store, c, real_id)
                } else {
                    selection.call_connection_closed(store, c, real_id)
                }
            }
        }
    }

    fn server_state_changed(
        &self,
        store: &mut Store<PluginState>,
        real_id: u32,
        state: ServerState,
    ) -> wasmtime::Result<()> {
        match self {
            Instance::V0_1 { world, .. } => world
                .vipd_policy_selection()
                .call_server_state_changed(store, real_id, state.into()),
            Instance::V0_2 { world, .. } => world
                .vipd_policy_selection()
                .call_server_state_changed(store, real_id, state.into()),
        }
    }

    fn interface(&self) -> InterfaceVersion {
        match self {
            Instance::V0_1 { .. } => InterfaceVersion::V0_1,
            Instance::V0_2 { .. } => InterfaceVersion::V0_2,
        }
    }
}

/// Runs a selector plugin once per new connection. Keeps its instance between calls (plugins keep state);
/// after a trap the instance is discarded and a fresh one is created and initialised at the next call.
pub struct PluginSelector {
    host: Arc<HostInner>,
    plugin: PluginHandle,
    args: Vec<(String, String)>,
    /// The virtual machine's address: a version must support its family to serve.
    serves: IpAddr,
    /// The real servers' names, for every instance's `real-name`.
    reals: RealNames,
    /// The version serving (`live` and the failures belong to it): the plugin's current one, unless that
    /// one cannot serve `serves`.
    running: Arc<Version>,
    /// The last version refused for `serves` (logged once).
    refused: u64,
    live: Option<Live>,
    /// An instance being made off the data path.
    coming: Option<Coming>,
    /// Why the last instance made for `running` could not be (counted at the next call).
    unmade: Option<String>,
    /// Makes its instances in the call that needs them even when the host prepares them off the path.
    in_call: bool,
    /// Keeping warm ([`Selector::keep_warm`]): the last connection's call, the last call of any kind, and
    /// the cheapest keep-warm call so far (the first after a pause is a cold one: what a warm call costs
    /// is the least seen).
    last_call: Option<Instant>,
    last_any: Option<Instant>,
    warm_cost: Option<Duration>,
    warm_calls: u32,
    failures: u32,
    quarantined: bool,
    fallback: RoundRobin,
}

pub(crate) struct Live {
    store: Store<PluginState>,
    instance: Instance,
    id: InstanceId,
}

impl PluginSelector {
    pub(crate) fn new(
        host: Arc<HostInner>,
        plugin: PluginHandle,
        args: Vec<(String, String)>,
        serves: IpAddr,
        reals: RealNames,
        warm_up: WarmUp,
    ) -> Result<PluginSelector> {
        let current = plugin
            .slot
            .current
            .load_full()
            .with_context(|| plugin.unloaded())?;
        if let Some(pre) = &current.selector {
            check_supports(pre.interface(), &current.path, serves)?;
        }
        let live = make(&host, &plugin, &current, &args, &reals, &warm_up)?;
        Ok(PluginSelector {
            host,
            plugin,
            args,
            serves,
            reals,
            running: current,
            refused: 0,
            live: Some(live),
            coming: None,
            unmade: None,
            in_call: false,
            last_call: None,
            last_any: None,
            warm_cost: None,
            warm_calls: 0,
            failures: 0,
            quarantined: false,
            fallback: RoundRobin::new(),
        })
    }

    /// Makes its instances in the call that needs them, also when the host prepares them off the data path
    /// ([`super::PluginHost::prepare_off_path`]): for a thread that may wait, like the shadow thread, whose
    /// every call must reach the plugin.
    pub fn in_call(mut self) -> PluginSelector {
        self.in_call = true;
        self
    }

    /// Blocks until an instance being made off the data path has arrived (or `timeout` passed); whether
    /// none is on its way any more. For tests and tools that need the next call to reach the plugin.
    pub fn wait_ready(&mut self, timeout: Duration) -> bool {
        if let Some(c) = self.coming.as_ref() {
            match c.reply.recv_timeout(timeout) {
                Ok(made) => self.arrived(made),
                Err(_) => return false,
            }
        }
        true
    }

    /// Asks the preparation thread for an instance of `version`, warmed up like `conn` and `candidates`;
    /// `false` when there is no such thread (the caller makes it) or its queue is full (asked again at the
    /// next call).
    fn prepare(
        &mut self,
        version: &Arc<Version>,
        conn: &NewConnection,
        candidates: &[Candidate],
    ) -> bool {
        let Some(preparer) = self.host.preparer.get().filter(|_| !self.in_call) else {
            return false;
        };
        let (reply, receive) = sync_channel(1);
        let job = Prepare {
            host: Arc::clone(&self.host),
            plugin: self.plugin.clone(),
            version: Arc::clone(version),
            args: self.args.clone(),
            reals: self.reals.clone(),
            warm_up: WarmUp::like(conn, candidates),
            reply,
        };
        if preparer.try_send(job).is_err() {
            return false;
        }
        self.coming = Some(Coming {
            version: Arc::clone(version),
            reply: receive,
        });
        true
    }

    /// Takes the instance made off the data path, if it is there.
    fn arrive(&mut self) {
        let Some(c) = self.coming.as_ref() else {
            return;
        };
        match c.reply.try_recv() {
            Ok(made) => self.arrived(made),
            Err(TryRecvError::Empty) => {}
            Err(TryRecvError::Disconnected) => self.coming = None,
        }
    }

    fn arrived(&mut self, made: Result<Live>) {
        let Some(coming) = self.coming.take() else {
            return;
        };
        let new_version = !Arc::ptr_eq(&coming.version, &self.running);
        match made {
            Ok(live) => {
                if new_version {
                    self.running = coming.version;
                    self.failures = 0;
                    self.quarantined = false;
                }
                self.live = Some(live);
            }
            // A new version that cannot start: the one serving goes on.
            Err(e) if new_version && self.live.is_some() => {
                self.refused = coming.version.version.load(Ordering::Relaxed);
                tracing::error!(
                    plugin = self.plugin.name(),
                    "{e:#}; version {} keeps serving",
                    self.running.version.load(Ordering::Relaxed)
                );
            }
            Err(e) => {
                if new_version {
                    self.running = coming.version;
                    self.failures = 0;
                    self.quarantined = false;
                }
                self.unmade = Some(format!("{e:#}"));
            }
        }
    }

    /// The number of the plugin version serving.
    pub fn version(&self) -> u64 {
        self.running.version.load(Ordering::Relaxed)
    }

    /// The plugin this selector runs.
    pub fn plugin(&self) -> &PluginHandle {
        &self.plugin
    }

    /// The interface version of the plugin version serving.
    pub fn interface(&self) -> Option<InterfaceVersion> {
        self.running.selector.as_ref().map(SelectorPre::interface)
    }

    /// Whether repeated failures made it stop calling the plugin (until a new version is loaded).
    pub fn is_quarantined(&self) -> bool {
        self.quarantined
    }

    /// Moves to the plugin's current version if it is another one and can serve this virtual machine: at
    /// once when making instances in the call, else once its instance is ready (the live one serves until
    /// then).
    fn follow(&mut self, current: &Arc<Version>, conn: &NewConnection, candidates: &[Candidate]) {
        let number = current.version.load(Ordering::Relaxed);
        let coming = self
            .coming
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(&c.version, current));
        if Arc::ptr_eq(current, &self.running) || number == self.refused || coming {
            return;
        }
        let interface = current.selector.as_ref().map(SelectorPre::interface);
        if let Some(interface) = interface
            && let Err(e) = check_supports(interface, &current.path, self.serves)
        {
            self.refused = number;
            tracing::error!(
                plugin = self.plugin.name(),
                "{e:#}; version {} keeps serving",
                self.running.version.load(Ordering::Relaxed)
            );
            return;
        }
        // A new version was published: start over with it.
        if self.live.is_some() && !self.quarantined && self.prepare(current, conn, candidates) {
            return;
        }
        self.running = Arc::clone(current);
        self.live = None;
        self.coming = None;
        self.failures = 0;
        self.quarantined = false;
    }

    /// One notification to the live instance, if there is one and the plugin is not quarantined. A trap
    /// discards the instance, as in `select`.
    fn notify(
        &mut self,
        call: impl FnOnce(&Instance, &mut Store<PluginState>) -> wasmtime::Result<()>,
    ) {
        if self.quarantined {
            return;
        }
        if let Some(live) = self.live.as_mut() {
            let _armed = self.host.arm();
            set_deadline(&mut live.store, self.host.call_ticks);
            if let Err(e) = call(&live.instance, &mut live.store) {
                tracing::debug!(plugin = self.plugin.name(), "notification failed: {e:#}");
                self.live = None;
            }
        }
    }

    /// One call into the plugin; `Err` carries how it failed.
    fn call(
        &mut self,
        conn: &NewConnection,
        candidates: &[Candidate],
    ) -> Result<Selection, Failure> {
        if let Some(why) = self.unmade.take() {
            return Err(Failure::new(CallResult::Trap, why));
        }
        if self.live.is_none() {
            if self.coming.is_some() {
                return Err(Failure::new(CallResult::Starting, String::new()));
            }
            let running = Arc::clone(&self.running);
            if self.prepare(&running, conn, candidates) {
                return Err(Failure::new(CallResult::Starting, String::new()));
            }
            let live = make(
                &self.host,
                &self.plugin,
                &self.running,
                &self.args,
                &self.reals,
                &WarmUp::like(conn, candidates),
            )
            .map_err(|e| Failure::new(CallResult::Trap, format!("{e:#}")))?;
            self.live = Some(live);
        }
        let live = self.live.as_mut().expect("instantiated above");
        live.store.data_mut().limiter.hit = false;
        let _armed = self.host.arm();
        set_deadline(&mut live.store, self.host.call_ticks);
        let answer = live.instance.select(&mut live.store, conn, candidates);
        match answer {
            Ok(Ok(i)) => match candidates.get(i as usize) {
                Some(c) if c.eligible() => Ok(Selection::Pick(i as usize)),
                Some(c) => Err(Failure::new(
                    CallResult::BadAnswer,
                    format!(
                        "picked candidate {i}, which is {} with weight {}",
                        c.state.as_str(),
                        c.weight
                    ),
                )),
                None => Err(Failure::new(
                    CallResult::BadAnswer,
                    format!("picked candidate {i} of {}", candidates.len()),
                )),
            },
            Ok(Err(v0_2::SelectError::Reject | v0_2::SelectError::NoServer)) => {
                Ok(Selection::Reject)
            }
            Ok(Err(v0_2::SelectError::Defer)) => {
                Err(Failure::new(CallResult::Deferred, String::new()))
            }
            Err(e) => {
                let kind = if e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt)
                {
                    CallResult::Timeout
                } else if live.store.data().limiter.hit {
                    CallResult::Memory
                } else {
                    CallResult::Trap
                };
                let failure = Failure {
                    result: kind,
                    why: format!("{:#}", anyhow::Error::from(e)),
                    descheduled: descheduled(&live.store),
                };
                // A trapped component instance may not be entered again.
                self.live = None;
                Err(failure)
            }
        }
    }
}

impl Selector for PluginSelector {
    fn server_state_changed(&mut self, real_id: u32, state: ServerState) {
        self.notify(|i, s| i.server_state_changed(s, real_id, state));
    }

    /// The live instance, while it is of 0.2.0 (0.1.0 never gets the notices) and not quarantined.
    fn instance(&self) -> Option<InstanceId> {
        self.live
            .as_ref()
            .filter(|l| !self.quarantined && l.instance.interface() >= InterfaceVersion::V0_2)
            .map(|l| l.id)
    }

    fn connection_closed(&mut self, conn: &NewConnection, real_id: u32) {
        self.notify(|i, s| i.connection_ended(s, conn, real_id, false));
    }

    fn connection_ditched(&mut self, conn: &NewConnection, real_id: u32) {
        self.notify(|i, s| i.connection_ended(s, conn, real_id, true));
    }

    fn select(&mut self, conn: &NewConnection, candidates: &[Candidate]) -> Selection {
        self.select_outcome(conn, candidates).0
    }

    fn wants_warm(&self, period: Duration) -> bool {
        let now = Instant::now();
        let recent = |t: Option<Instant>, within: Duration| {
            t.is_some_and(|t| now.saturating_duration_since(t) < within)
        };
        // The caller paces the calls; half a period is its leeway (its clock reads a frame's arrival,
        // before the call it measures from).
        recent(self.last_call, crate::policy::KEEP_WARM_FOR)
            && !recent(self.last_any, period / 2)
            && !self.quarantined
            && self.live.is_some()
            && !(self.warm_calls >= KEEP_WARM_TRIALS
                && self
                    .warm_cost
                    .is_some_and(|c| c > period / KEEP_WARM_MAX_SHARE))
    }

    fn keep_warm(&mut self, conn: &NewConnection, candidates: &[Candidate]) -> bool {
        let Some(live) = self.live.as_mut() else {
            return false;
        };
        // Its cost is judged in CPU time (on a busy machine the wall clock also counts other threads), by
        // the first calls only: the clock is a system call, which would cool the caches this call warms.
        let judging = self.warm_calls < KEEP_WARM_TRIALS;
        let cpu = judging.then(thread_cpu_time);
        let _armed = self.host.arm();
        set_deadline(&mut live.store, self.host.call_ticks);
        let answer = live.instance.select(&mut live.store, conn, candidates);
        if let Some(cpu) = cpu {
            let cost = thread_cpu_time().saturating_sub(cpu);
            self.warm_cost = Some(self.warm_cost.map_or(cost, |c| c.min(cost)));
        }
        self.last_any = Some(Instant::now());
        self.warm_calls = self.warm_calls.saturating_add(1);
        self.plugin.stats().record_keep_warm();
        if let Err(e) = answer {
            // As after a failed connection call: the next connection gets a fresh instance.
            tracing::debug!(plugin = self.plugin.name(), "keep-warm call failed: {e:#}");
            self.live = None;
        }
        true
    }

    fn select_outcome(
        &mut self,
        conn: &NewConnection,
        candidates: &[Candidate],
    ) -> (Selection, Outcome) {
        let start = Instant::now();
        self.last_call = Some(start);
        self.last_any = Some(start);
        let Some(current) = self.plugin.slot.current.load_full() else {
            return (self.fallback.select(conn, candidates), Outcome::Failed);
        };
        self.follow(&current, conn, candidates);
        self.arrive();
        let stats = self.plugin.stats().clone();
        if self.quarantined {
            let s = self.fallback.select(conn, candidates);
            stats.record_call(CallResult::Quarantined, start.elapsed());
            return (s, Outcome::Failed);
        }
        let answer = self.call(conn, candidates);
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
            Err(Failure {
                result,
                why,
                descheduled,
            }) => {
                if counts_towards_quarantine(result, descheduled) {
                    self.failures += 1;
                    tracing::warn!(
                        plugin = self.plugin.name(),
                        file = %self.running.path.display(),
                        result = result.as_str(),
                        "plugin failed, round-robin serves this connection: {why}"
                    );
                    if self.failures >= QUARANTINE_AFTER {
                        self.quarantined = true;
                        self.live = None;
                        tracing::error!(
                            plugin = self.plugin.name(),
                            file = %self.running.path.display(),
                            "plugin quarantined after {} failures in a row; round-robin serves until the file changes",
                            self.failures
                        );
                    }
                }
                let s = self.fallback.select(conn, candidates);
                stats.record_call(result, start.elapsed());
                let outcome = if matches!(result, CallResult::Deferred | CallResult::Starting) {
                    Outcome::Deferred
                } else {
                    Outcome::Failed
                };
                (s, outcome)
            }
        }
    }
}

/// A fresh instance of `version`, initialised with `args` and warmed up with `warm_up`.
fn make(
    host: &HostInner,
    plugin: &PluginHandle,
    version: &Version,
    args: &[(String, String)],
    reals: &RealNames,
    warm_up: &WarmUp,
) -> Result<Live> {
    let mut live = instantiate(host, plugin, version, args, reals)?;
    if let Some(conn) = &warm_up.conn
        && !warm_up.candidates.is_empty()
    {
        let _armed = host.arm();
        set_deadline(&mut live.store, host.slow_ticks);
        // Its answer (a pick, a refusal, a deferral) is not used; only a trap matters.
        let _answer = live
            .instance
            .select(&mut live.store, conn, &warm_up.candidates)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("{}: the warm-up call trapped", version.path.display()))?;
    }
    Ok(live)
}

/// A fresh instance of `version` in its own store, initialised with `args`.
fn instantiate(
    host: &HostInner,
    plugin: &PluginHandle,
    version: &Version,
    args: &[(String, String)],
    reals: &RealNames,
) -> Result<Live> {
    let file = version.path.display();
    let pre = version.selector.as_ref().with_context(|| {
        format!("{file}: not a selector plugin (does not export vipd:policy/selection)")
    })?;
    let mut store = host.new_store(plugin, reals.clone());
    let _armed = host.arm();
    set_deadline(&mut store, host.slow_ticks);
    let instance = match pre {
        SelectorPre::V0_1(pre) => pre.instantiate(&mut store).map(|world| Instance::V0_1 {
            world,
            scratch: Vec::new(),
        }),
        SelectorPre::V0_2(pre) => pre.instantiate(&mut store).map(|world| Instance::V0_2 {
            world,
            scratch: Vec::new(),
        }),
    }
    .map_err(anyhow::Error::from)
    .with_context(|| format!("{file}: instantiating"))?;
    instance
        .init(&mut store, args)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("{file}: init trapped"))?
        .map_err(|e| anyhow!("{file}: init refused the arguments: {e}"))?;
    Ok(Live {
        store,
        instance,
        id: InstanceId::next(),
    })
}

pub(crate) fn init_error(e: &v0_2::InitError) -> String {
    match e {
        v0_2::InitError::UnknownArgument(k) => format!("unknown argument {k:?}"),
        v0_2::InitError::InvalidArgument(m) => format!("invalid argument: {m}"),
        v0_2::InitError::Other(m) => m.clone(),
    }
}

pub(crate) fn init_error_v0_1(e: &v0_1::InitError) -> String {
    match e {
        v0_1::InitError::UnknownArgument(k) => format!("unknown argument {k:?}"),
        v0_1::InitError::InvalidArgument(m) => format!("invalid argument: {m}"),
        v0_1::InitError::Other(m) => m.clone(),
    }
}

fn connection_v0_2(c: &NewConnection) -> v0_2::Connection {
    v0_2::Connection {
        client_addr: c.client.ip().into(),
        client_port: c.client.port(),
        virtual_addr: c.virtual_addr.ip().into(),
        virtual_port: c.virtual_addr.port(),
        protocol: c.protocol.into(),
        virtual_id: c.virtual_id,
    }
}

fn candidate_v0_2(index: usize, c: &Candidate) -> v0_2::Candidate {
    v0_2::Candidate {
        index: index as u32,
        real_id: c.real_id,
        addr: c.target.ip().into(),
        port: c.target.port(),
        weight: c.weight,
        state: c.state.into(),
        active: c.active,
        total: c.total,
        syn_rtt_us: c.syn_rtt_us,
        ditched: c.ditched,
    }
}

/// The connection as 0.1.0 carries it; `None` if an address is IPv6.
fn connection_v0_1(c: &NewConnection) -> Option<v0_1::Connection> {
    Some(v0_1::Connection {
        client_addr: ipv4(c.client.ip())?,
        client_port: c.client.port(),
        virtual_addr: ipv4(c.virtual_addr.ip())?,
        virtual_port: c.virtual_addr.port(),
        protocol: c.protocol.into(),
        virtual_id: c.virtual_id,
    })
}

fn candidate_v0_1(index: usize, c: &Candidate) -> Option<v0_1::Candidate> {
    Some(v0_1::Candidate {
        index: index as u32,
        real_id: c.real_id,
        addr: ipv4(c.target.ip())?,
        port: c.target.port(),
        weight: c.weight,
        state: c.state.into(),
        active: c.active,
        total: c.total,
        syn_rtt_us: c.syn_rtt_us,
        ditched: c.ditched,
    })
}

/// How a call into the plugin failed.
struct Failure {
    result: CallResult,
    /// For the log.
    why: String,
    /// It timed out having run under half of its deadline (see [`descheduled`]).
    descheduled: bool,
}

impl Failure {
    fn new(result: CallResult, why: String) -> Failure {
        Failure {
            result,
            why,
            descheduled: false,
        }
    }
}

/// Whether a failed call counts towards quarantine. The deadline is wall-clock time: a call that timed out
/// having run under half of it was descheduled (a busy machine), not stuck. It falls back like any failure,
/// but does not count.
fn counts_towards_quarantine(result: CallResult, descheduled: bool) -> bool {
    result.is_failure() && !(result == CallResult::Timeout && descheduled)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A timeout that burned its deadline counts; one spent descheduled does not; traps always count.
    #[test]
    fn preempted_timeouts_do_not_count_towards_quarantine() {
        assert!(counts_towards_quarantine(CallResult::Timeout, false));
        assert!(!counts_towards_quarantine(CallResult::Timeout, true));
        assert!(counts_towards_quarantine(CallResult::Trap, true));
        assert!(!counts_towards_quarantine(CallResult::Reject, false));
    }
}
