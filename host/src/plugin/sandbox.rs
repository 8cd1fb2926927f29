//! The store a plugin instance lives in: its memory limit, the host functions it may call, and the WASI
//! imports a `wasm32-wasip2` guest links against, granting nothing (no preopened directory, no environment,
//! no arguments, no network, stdio discarded) and trapping where WASI would block the calling thread.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, Store};
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
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);
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
