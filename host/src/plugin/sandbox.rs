//! The store a plugin instance lives in: its memory limit, the host functions it may call, and the WASI
//! imports a `wasm32-wasip2` guest links against, granting nothing (no preopened directory, no environment,
//! no arguments, no network, stdio discarded) and trapping where WASI would block the calling thread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::PluginLimits;
use super::bindings::{v0_1, v0_2};
use super::stats::{MetricKind, PluginStats};

/// What one plugin instance's `Store` holds.
pub(crate) struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: Limiter,
    stats: Arc<PluginStats>,
    name: Arc<str>,
    /// The real servers' names by id, for `real-name`.
    reals: RealNames,
    start: Instant,
    rng: u64,
    deadline: Deadline,
}

/// The epoch deadline of the call in progress. A call is first interrupted at the next epoch tick: the few
/// calls that run that long note the thread's CPU time there and go on for the rest of their ticks. One
/// interrupted at its deadline tells from that note whether it burned the time or was descheduled. Calls
/// that end before a tick (nearly all) read no clock: the thread's CPU clock is a system call, which cost
/// a live call more than the call itself.
#[derive(Default)]
struct Deadline {
    /// Ticks left after the first one.
    rest: u64,
    /// Thread CPU time and wall time at the first tick.
    mark: Option<(Duration, Instant)>,
    /// The last call interrupted at its deadline ran under half of the time since its first tick.
    descheduled: bool,
}

/// Arms the deadline of one call into `store`: interrupted after `ticks` epoch ticks.
pub(crate) fn set_deadline(store: &mut Store<PluginState>, ticks: u64) {
    store.data_mut().deadline = Deadline {
        rest: ticks.saturating_sub(1),
        ..Deadline::default()
    };
    store.set_epoch_deadline(1);
}

/// Whether the last call interrupted at its deadline spent most of it descheduled (a busy machine, not a
/// stuck plugin).
pub(crate) fn descheduled(store: &Store<PluginState>) -> bool {
    store.data().deadline.descheduled
}

/// The epoch callback: the first tick of a call notes the clocks, the last interrupts it.
fn on_deadline(state: &mut PluginState) -> wasmtime::Result<UpdateDeadline> {
    let d = &mut state.deadline;
    if d.mark.is_none() && d.rest > 0 {
        d.mark = Some((thread_cpu_time(), Instant::now()));
        return Ok(UpdateDeadline::Continue(std::mem::take(&mut d.rest)));
    }
    d.descheduled = d
        .mark
        .is_some_and(|(cpu, wall)| thread_cpu_time().saturating_sub(cpu) < wall.elapsed() / 2);
    Err(wasmtime::Trap::Interrupt.into())
}

/// CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`).
pub(crate) fn thread_cpu_time() -> Duration {
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

/// The real servers' names by their id in the binding table, as plugins ask for them (`real-name`).
pub type RealNames = Arc<[Arc<str>]>;

/// Caps linear memory and tables; remembers a refusal so a trap can be reported as the memory limit.
pub(crate) struct Limiter {
    memory_bytes: usize,
    pub(crate) hit: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = desired <= self.memory_bytes;
        self.hit |= !ok;
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = desired <= 100_000;
        self.hit |= !ok;
        Ok(ok)
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl v0_2::Types for PluginState {}
impl v0_1::Types for PluginState {}

impl v0_2::HostFunctions for PluginState {
    fn log(&mut self, level: v0_2::Level, message: String) {
        use v0_2::Level;
        let plugin = &*self.name;
        match level {
            Level::Trace => tracing::trace!(plugin, "{message}"),
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
    }

    fn now_us(&mut self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn random_u64(&mut self) -> u64 {
        // splitmix64: fast, and plugins are promised nothing stronger.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn counter_add(&mut self, name: String, delta: u64) {
        self.stats
            .update_metric(&name, MetricKind::Counter, |v| *v += delta as f64);
    }

    fn gauge_set(&mut self, name: String, value: f64) {
        self.stats
            .update_metric(&name, MetricKind::Gauge, |v| *v = value);
    }

    fn real_name(&mut self, real_id: u32) -> Option<String> {
        let id = usize::try_from(real_id).ok()?;
        self.reals.get(id).map(|n| n.to_string())
    }
}

/// The host interface of 0.1.0 is the same as 0.2.0's: each call goes to the 0.2.0 implementation.
impl v0_1::HostFunctions for PluginState {
    fn log(&mut self, level: v0_1::Level, message: String) {
        use v0_1::Level as Old;
        use v0_2::Level;
        let level = match level {
            Old::Trace => Level::Trace,
            Old::Debug => Level::Debug,
            Old::Info => Level::Info,
            Old::Warn => Level::Warn,
            Old::Error => Level::Error,
        };
        v0_2::HostFunctions::log(self, level, message)
    }

    fn now_us(&mut self) -> u64 {
        v0_2::HostFunctions::now_us(self)
    }

    fn random_u64(&mut self) -> u64 {
        v0_2::HostFunctions::random_u64(self)
    }

    fn counter_add(&mut self, name: String, delta: u64) {
        v0_2::HostFunctions::counter_add(self, name, delta)
    }

    fn gauge_set(&mut self, name: String, value: f64) {
        v0_2::HostFunctions::gauge_set(self, name, value)
    }
}

/// A fresh store for one instance of plugin `name`.
pub(crate) fn new_store(
    engine: &Engine,
    limits: &PluginLimits,
    name: Arc<str>,
    stats: Arc<PluginStats>,
    reals: RealNames,
    start: Instant,
) -> Store<PluginState> {
    use std::hash::BuildHasher;
    let seed = std::collections::hash_map::RandomState::new().hash_one(start.elapsed());
    let state = PluginState {
        wasi: WasiCtx::builder().build(),
        table: ResourceTable::new(),
        limiter: Limiter {
            memory_bytes: limits.memory_bytes,
            hit: false,
        },
        stats,
        name,
        reals,
        start,
        rng: seed,
        deadline: Deadline::default(),
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);
    store.epoch_deadline_callback(|mut cx| on_deadline(cx.data_mut()));
    store
}

/// The linker every plugin is instantiated with: the host functions of both worlds of both interface
/// versions, and a powerless WASI.
pub(crate) fn linker(engine: &Engine) -> Result<Linker<PluginState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    // The binder world imports the same interfaces, so the selector world's linking serves both.
    v0_2::SelectorWorld::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)?;
    v0_1::SelectorWorld::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)?;
    // Blocking in WASI (sleep, waiting on a stream) would stall the caller past the epoch deadline, which
    // only interrupts Wasm code: make it a trap instead.
    linker.allow_shadowing(true);
    let mut poll = linker.instance("wasi:io/poll@0.2.12")?;
    for f in ["poll", "[method]pollable.block"] {
        poll.func_new(f, |_, _, _, _| {
            Err(wasmtime::Error::msg("plugins may not block (wasi:io/poll)"))
        })?;
    }
    linker.allow_shadowing(false);
    Ok(linker)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Store<PluginState> {
        let engine = Engine::default();
        let limits = PluginLimits::default();
        let stats = Arc::new(PluginStats::default());
        new_store(
            &engine,
            &limits,
            "t".into(),
            stats,
            Arc::new([]),
            Instant::now(),
        )
    }

    /// One call's deadline: the first tick notes the clocks and grants the rest of the ticks, the last
    /// interrupts. Returns whether it judged the call descheduled.
    fn deadline_after(work: impl FnOnce()) -> bool {
        let mut store = store();
        set_deadline(&mut store, 3);
        let first = on_deadline(store.data_mut()).expect("the first tick continues");
        assert!(matches!(first, UpdateDeadline::Continue(2)));
        work();
        let Err(e) = on_deadline(store.data_mut()) else {
            panic!("the deadline continued instead of interrupting");
        };
        assert_eq!(
            e.downcast_ref::<wasmtime::Trap>(),
            Some(&wasmtime::Trap::Interrupt)
        );
        descheduled(&store)
    }

    /// A call off the CPU until its deadline was descheduled; one that ran was not (on a loaded machine the
    /// running one may really be descheduled: one of a few tries must be judged running).
    #[test]
    fn the_deadline_tells_descheduled_from_running() {
        assert!(deadline_after(|| std::thread::sleep(
            Duration::from_millis(20)
        )));
        let spin = || {
            let cpu = thread_cpu_time();
            while thread_cpu_time() < cpu + Duration::from_millis(20) {
                std::hint::spin_loop();
            }
        };
        assert!((0..5).any(|_| !deadline_after(spin)));
    }

    /// A call armed for one tick is interrupted at it, as run by a clock nobody read.
    #[test]
    fn one_tick_interrupts_at_once() {
        let mut store = store();
        set_deadline(&mut store, 1);
        assert!(on_deadline(store.data_mut()).is_err());
        assert!(!descheduled(&store));
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
