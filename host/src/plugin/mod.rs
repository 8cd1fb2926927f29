//! The plugin host: server-selection and binding policies as sandboxed WebAssembly components (`wit/`,
//! package `vipd:policy@0.2.0`; components of `vipd:policy@0.1.0`, `wit/0.1.0/`, still load).
//!
//! Owns the wasmtime [`Engine`] and its epoch ticker ([`PluginHost`]); compiles plugin files off the packet
//! path and validates them against the worlds of both interface versions ([`PluginHost::load_file`],
//! [`PluginHost::check_file`]); runs them behind the [`crate::policy::Selector`] seam ([`PluginSelector`])
//! and as binders ([`Binder`]); and swaps new versions in from a watched folder ([`PluginDir`]). Which
//! interface version may serve which virtual machine is decided in one place, [`supports`]: a 0.1.0
//! component carries IPv4 addresses only and is refused, with the file named, for an IPv6 one.
//!
//! Sandbox: a plugin gets the host functions of `wit/host.wit` and nothing else: WASI imports resolve but
//! grant no files, environment, arguments or network, and blocking traps. Each instance has a memory limit
//! and each call a CPU deadline (epoch interruption). A trap, timeout, memory exhaustion or bad answer is
//! counted ([`PluginStats`]) and that connection goes to the built-in [`crate::policy::RoundRobin`]; after
//! [`QUARANTINE_AFTER`] failures in a row a selector stops calling the plugin until a new version is loaded.
//! Nothing here panics on what a plugin does; loading errors are `anyhow` errors naming the file.

mod binder;
mod bindings;
mod dir;
mod sandbox;
mod selector;
mod stats;

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use arc_swap::ArcSwapOption;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};

pub use binder::{Binder, BindingOut, RealInfo, VirtualInfo};
pub use dir::{PluginDir, SETTLE};
pub use selector::{PluginSelector, QUARANTINE_AFTER, WarmUp};
pub use stats::{CallResult, DURATION_BUCKETS, MetricKind, PluginMetric, PluginStats};

use binder::BinderPre;
use sandbox::PluginState;
pub use sandbox::RealNames;
use selector::SelectorPre;

/// The sandbox limits every plugin instance runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PluginLimits {
    /// Most linear memory one instance may have.
    pub memory_bytes: usize,
    /// CPU time one `select` may take; `init`, `bind` and instantiation get [`SLOW_CALL_FACTOR`] times it.
    pub deadline: Duration,
}

impl Default for PluginLimits {
    fn default() -> PluginLimits {
        PluginLimits {
            memory_bytes: 16 << 20,
            deadline: Duration::from_millis(1),
        }
    }
}

/// How many deadlines `init`, `bind` and instantiation may take: they run rarely, off the connection rate.
pub const SLOW_CALL_FACTOR: u32 = 50;

/// Epoch ticks per deadline: a call is interrupted between 1 and 1.5 deadlines after it starts.
const TICKS_PER_DEADLINE: u32 = 2;

/// The versions of the policy interface the host loads, oldest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InterfaceVersion {
    /// `vipd:policy@0.1.0` (`wit/0.1.0/`): IPv4 addresses only, as `u32`; `connection-closed` and
    /// `connection-ditched` are never called.
    V0_1,
    /// `vipd:policy@0.2.0` (`wit/`): addresses of either family; the notices delivered.
    V0_2,
}

impl InterfaceVersion {
    /// The version the SDK, the shipped plugins and the template build against.
    pub const CURRENT: InterfaceVersion = InterfaceVersion::V0_2;

    /// The version number, as the SDK's is named.
    pub fn number(self) -> &'static str {
        match self {
            InterfaceVersion::V0_1 => "0.1.0",
            InterfaceVersion::V0_2 => "0.2.0",
        }
    }
}

/// The WIT package and version, as `vipd plugin check` prints it: `vipd:policy@0.2.0`.
impl fmt::Display for InterfaceVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vipd:policy@{}", self.number())
    }
}

/// Whether a plugin of interface `version` can serve a virtual machine with address `addr`: 0.1.0 carries
/// IPv4 addresses only; 0.2.0 either family. Every place that gives a plugin a virtual machine asks this.
pub fn supports(version: InterfaceVersion, addr: IpAddr) -> bool {
    match version {
        InterfaceVersion::V0_1 => addr.is_ipv4(),
        InterfaceVersion::V0_2 => true,
    }
}

/// [`supports`] as the refusal an operator reads: the file, its interface, the address and what to do.
pub(crate) fn check_supports(version: InterfaceVersion, file: &Path, addr: IpAddr) -> Result<()> {
    if !supports(version, addr) {
        bail!(
            "plugin {} implements {version}, which has IPv4 addresses only; virtual address {addr} is \
             IPv6: rebuild it against the {} SDK",
            file.display(),
            InterfaceVersion::CURRENT.number(),
        );
    }
    Ok(())
}

/// The worlds of `wit/worlds.wit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum World {
    /// Exports `vipd:policy/selection`: usable as `policy = "NAME"`.
    Selector,
    /// Exports `vipd:policy/binding`: usable as `binder = "NAME"`.
    Binder,
}

impl World {
    /// The world's name in `wit/`.
    pub fn as_str(self) -> &'static str {
        match self {
            World::Selector => "selector",
            World::Binder => "binder",
        }
    }
}

/// Owns the wasmtime engine, the linker and the epoch ticker thread; cheap to clone, Send + Sync.
#[derive(Clone)]
pub struct PluginHost {
    inner: Arc<HostInner>,
}

pub(crate) struct HostInner {
    engine: Engine,
    linker: Linker<PluginState>,
    limits: PluginLimits,
    /// Epoch ticks for one call's deadline, and for slow calls.
    call_ticks: u64,
    slow_ticks: u64,
    /// Zero point of the plugins' `now-us`.
    start: Instant,
    stop: Arc<AtomicBool>,
    ticking: Arc<Ticking>,
    ticker: Option<JoinHandle<()>>,
    /// Where selectors send the making of a new instance (after a trap, for a new version) once
    /// [`PluginHost::prepare_off_path`] started the thread that does it; unset, they make it themselves.
    preparer: std::sync::OnceLock<std::sync::mpsc::SyncSender<selector::Prepare>>,
}

/// How long the epoch ticker keeps ticking after the last plugin call before it parks. Under load (a call
/// at least this often) no call has to wake it: waking it cost each call a futex wake and the ticker a
/// context switch, which made a live call several times dearer than the same call back to back.
pub const LINGER: Duration = Duration::from_millis(100);

/// What the epoch ticker shares with the callers: it ticks while a call is in progress and for [`LINGER`]
/// after the last one, so an idle director (or one serving long-lived connections) has no thread waking
/// every half deadline.
#[derive(Default)]
struct Ticking {
    /// Plugin calls in progress.
    active: AtomicU64,
    /// Plugin calls started so far (the ticker sees from it that calls went on while it ticked).
    started: AtomicU64,
    /// The ticker is parked (or about to park) until a call starts.
    idle: AtomicBool,
    /// Epoch ticks so far.
    ticks: AtomicU64,
}

/// A plugin call in progress: the epoch ticker runs until the last one is dropped.
pub(crate) struct Armed<'a>(&'a HostInner);

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        self.0.ticking.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl HostInner {
    /// A store for one instance of `plugin`, with its limits, its counters and the real servers' names.
    pub(crate) fn new_store(
        &self,
        plugin: &PluginHandle,
        reals: RealNames,
    ) -> wasmtime::Store<PluginState> {
        sandbox::new_store(
            &self.engine,
            &self.limits,
            plugin.name().into(),
            plugin.stats().clone(),
            reals,
            self.start,
        )
    }

    /// Call before setting a store's epoch deadline and calling into it; keep the guard over the call.
    pub(crate) fn arm(&self) -> Armed<'_> {
        self.ticking.active.fetch_add(1, Ordering::SeqCst);
        self.ticking.started.fetch_add(1, Ordering::Relaxed);
        if self.ticking.idle.load(Ordering::SeqCst)
            && let Some(t) = &self.ticker
        {
            t.thread().unpark();
        }
        Armed(self)
    }
}

impl Drop for HostInner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// One compiled and validated version of a plugin file.
#[derive(Clone)]
pub struct LoadedPlugin(Arc<Version>);

pub(crate) struct Version {
    name: String,
    path: PathBuf,
    /// 1 for the first version published on its handle, then one more per publication (0 before): a
    /// selector notices a swap by comparing this number.
    version: AtomicU64,
    /// Size and modification time of the file it was compiled from.
    signature: (u64, Option<SystemTime>),
    selector: Option<SelectorPre>,
    binder: Option<BinderPre>,
}

impl LoadedPlugin {
    /// The plugin's name: the file name without `.wasm`.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The file it was compiled from.
    pub fn path(&self) -> &Path {
        &self.0.path
    }

    /// A number unique to this load, increasing.
    pub fn version(&self) -> u64 {
        self.0.version.load(Ordering::Relaxed)
    }

    /// The file's modification time when it was loaded.
    pub fn modified(&self) -> Option<SystemTime> {
        self.0.signature.1
    }

    /// The worlds it implements.
    pub fn worlds(&self) -> Vec<World> {
        self.interfaces().into_iter().map(|(w, _)| w).collect()
    }

    /// The worlds it implements, each with the interface version it implements it in.
    pub fn interfaces(&self) -> Vec<(World, InterfaceVersion)> {
        let selector = self
            .0
            .selector
            .as_ref()
            .map(|p| (World::Selector, p.interface()));
        let binder = self
            .0
            .binder
            .as_ref()
            .map(|p| (World::Binder, p.interface()));
        selector.into_iter().chain(binder).collect()
    }
}

impl fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.0.name)
            .field("path", &self.0.path)
            .field("version", &self.0.version)
            .field("worlds", &self.interfaces())
            .finish()
    }
}

/// What `vipd plugin check` reports about a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginInfo {
    pub path: PathBuf,
    /// Worlds the component implements, each with its interface version.
    pub worlds: Vec<(World, InterfaceVersion)>,
    /// Worlds it does not implement, with the reason.
    pub missing: Vec<(World, String)>,
}

impl fmt::Display for PluginInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self
            .worlds
            .iter()
            .map(|(w, v)| format!("{} ({v})", w.as_str()))
            .collect();
        writeln!(
            f,
            "{}: a valid vipd plugin, world {}",
            self.path.display(),
            names.join(", ")
        )?;
        if self
            .worlds
            .iter()
            .any(|&(_, v)| v < InterfaceVersion::CURRENT)
        {
            writeln!(
                f,
                "  {}: IPv4 virtual machines only; rebuild it against the {} SDK to serve IPv6 ones",
                InterfaceVersion::V0_1,
                InterfaceVersion::CURRENT.number(),
            )?;
        }
        for (w, why) in &self.missing {
            writeln!(f, "  not a {}: {why}", w.as_str())?;
        }
        Ok(())
    }
}

/// A plugin of the watched folder as `/status` and `/metrics` list it ([`PluginDir::entries`]).
#[derive(Clone, Debug)]
pub struct PluginEntry {
    pub name: String,
    /// The version serving, `none` when no version of the file ever loaded.
    pub version: String,
    pub file: String,
    /// File modification time, seconds since the Unix epoch.
    pub modified: u64,
    /// Its calls, reloads and plugin-defined metrics, for `/metrics`.
    pub stats: Arc<PluginStats>,
}

/// A plugin by name whose current version may be swapped ([`PluginDir`]); what selectors and binders hold.
#[derive(Clone)]
pub struct PluginHandle {
    slot: Arc<Slot>,
}

struct Slot {
    name: String,
    current: ArcSwapOption<Version>,
    stats: Arc<PluginStats>,
    /// Versions published so far: the next one gets this plus one.
    published: AtomicU64,
    /// A version of the file is being compiled now.
    compiling: AtomicBool,
}

impl PluginHandle {
    /// A handle serving `plugin` until something publishes another version.
    pub fn new(plugin: LoadedPlugin) -> PluginHandle {
        let h = PluginHandle::empty(plugin.name());
        h.publish(plugin);
        h
    }

    fn empty(name: &str) -> PluginHandle {
        PluginHandle {
            slot: Arc::new(Slot {
                name: name.to_string(),
                current: ArcSwapOption::empty(),
                stats: Arc::new(PluginStats::default()),
                published: AtomicU64::new(0),
                compiling: AtomicBool::new(false),
            }),
        }
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.slot.name
    }

    /// The version serving now, if one loaded.
    pub fn current(&self) -> Option<LoadedPlugin> {
        self.slot.current.load_full().map(LoadedPlugin)
    }

    /// The plugin's counters (shared by all its versions and users).
    pub fn stats(&self) -> &Arc<PluginStats> {
        &self.slot.stats
    }

    /// Marks the start or end of compiling a version of this plugin's file.
    pub(crate) fn set_compiling(&self, compiling: bool) {
        self.slot.compiling.store(compiling, Ordering::Relaxed);
    }

    /// Why no version can serve: none ever loaded, or the first is still compiling.
    pub(crate) fn unloaded(&self) -> String {
        if self.slot.compiling.load(Ordering::Relaxed) {
            format!(
                "plugin {}: still compiling its first version; reload again once the log says \"plugin loaded\"",
                self.name()
            )
        } else {
            format!("plugin {}: no valid version loaded", self.name())
        }
    }

    /// Makes `plugin` the version new calls use, numbered after the versions this handle served before.
    pub fn publish(&self, plugin: LoadedPlugin) {
        let number = self.slot.published.fetch_add(1, Ordering::Relaxed) + 1;
        plugin.0.version.store(number, Ordering::Relaxed);
        self.slot.current.store(Some(plugin.0));
    }
}

impl PluginHost {
    /// An engine with the component model and epoch interruption, and its ticker thread.
    pub fn new(limits: PluginLimits) -> Result<PluginHost> {
        if limits.deadline.is_zero() {
            bail!("plugin deadline must be above zero");
        }
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        let engine = Engine::new(&config)
            .map_err(anyhow::Error::from)
            .context("creating the WebAssembly engine")?;
        let linker = sandbox::linker(&engine).context("linking the plugin host functions")?;
        let tick = (limits.deadline / TICKS_PER_DEADLINE).max(Duration::from_micros(50));
        let stop = Arc::new(AtomicBool::new(false));
        let ticking = Arc::new(Ticking::default());
        let ticker = {
            let (engine, stop, ticking) = (engine.clone(), stop.clone(), ticking.clone());
            std::thread::Builder::new()
                .name("vipd-plugin-epoch".into())
                .spawn(move || {
                    let (mut seen, mut last_call) = (0, Instant::now());
                    while !stop.load(Ordering::Relaxed) {
                        let started = ticking.started.load(Ordering::Relaxed);
                        if started != seen || ticking.active.load(Ordering::SeqCst) > 0 {
                            (seen, last_call) = (started, Instant::now());
                        }
                        if ticking.active.load(Ordering::SeqCst) == 0
                            && last_call.elapsed() >= LINGER
                        {
                            ticking.idle.store(true, Ordering::SeqCst);
                            // Checked again after `idle` is visible: a call that started in between
                            // either sees `idle` and unparks us, or is seen here.
                            if ticking.active.load(Ordering::SeqCst) == 0 {
                                std::thread::park_timeout(Duration::from_secs(1));
                            }
                            ticking.idle.store(false, Ordering::SeqCst);
                            continue;
                        }
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                        ticking.ticks.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .context("starting the plugin epoch ticker")?
        };
        let call_ticks = u64::from(TICKS_PER_DEADLINE) + 1;
        Ok(PluginHost {
            inner: Arc::new(HostInner {
                engine,
                linker,
                limits,
                call_ticks,
                slow_ticks: call_ticks * u64::from(SLOW_CALL_FACTOR),
                start: Instant::now(),
                stop,
                ticking,
                ticker: Some(ticker),
                preparer: std::sync::OnceLock::new(),
            }),
        })
    }

    /// From now on, selectors make their new instances (after a trap, for a new version of the plugin) on a
    /// thread of their own, `vipd-plugin-prep`, and serve with what they have (the previous version, or
    /// round-robin) until the instance is ready: the director's data path never compiles, instantiates or
    /// initialises a plugin. Without it (`vipd replay`, tests) a selector makes them in the call that
    /// needs them, which keeps a replay deterministic. Idempotent.
    pub fn prepare_off_path(&self) -> Result<()> {
        if self.inner.preparer.get().is_some() {
            return Ok(());
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(selector::PREPARE_QUEUE);
        std::thread::Builder::new()
            .name("vipd-plugin-prep".into())
            .spawn(move || selector::preparer(rx))
            .context("starting the plugin preparation thread")?;
        // A second caller racing this one leaves its thread without a sender: it ends at once.
        let _ = self.inner.preparer.set(tx);
        Ok(())
    }

    /// Epoch ticks since start: they advance only while a plugin call is in progress.
    pub fn epoch_ticks(&self) -> u64 {
        self.inner.ticking.ticks.load(Ordering::Relaxed)
    }

    /// The limits plugins run under.
    pub fn limits(&self) -> PluginLimits {
        self.inner.limits
    }

    /// Compiles `path` and validates it against the worlds; the error names the file and what is wrong.
    pub fn load_file(&self, path: &Path) -> Result<LoadedPlugin> {
        Ok(self.compile_plugin(path)?.0)
    }

    /// Says which worlds `path` implements and why not the others; an error if it is no component at all.
    pub fn check_file(&self, path: &Path) -> Result<PluginInfo> {
        Ok(self.compile_plugin(path)?.1)
    }

    /// [`PluginHost::compile`], refusing a component that implements none of the worlds.
    fn compile_plugin(&self, path: &Path) -> Result<(LoadedPlugin, PluginInfo)> {
        let (compiled, info) = self.compile(path)?;
        if info.worlds.is_empty() {
            let why: Vec<_> = info
                .missing
                .iter()
                .map(|(w, why)| format!("not a {}: {why}", w.as_str()))
                .collect();
            bail!(
                "{}: not a vipd plugin ({} or {}): {}",
                path.display(),
                InterfaceVersion::CURRENT,
                InterfaceVersion::V0_1,
                why.join("; ")
            );
        }
        Ok((compiled, info))
    }

    fn compile(&self, path: &Path) -> Result<(LoadedPlugin, PluginInfo)> {
        let name = plugin_name(path)?;
        let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
        let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
        check_header(&bytes).with_context(|| format!("{}", path.display()))?;
        let component = Component::new(&self.inner.engine, &bytes)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("{}: not a valid WebAssembly component", path.display()))?;
        let pre = self.inner.linker.instantiate_pre(&component).map_err(anyhow::Error::from).with_context(|| {
            format!(
                "{}: imports something vipd does not give plugins (only vipd:policy/host and powerless WASI)",
                path.display()
            )
        })?;
        let mut missing = Vec::new();
        let selector = SelectorPre::new(&pre)
            .map_err(|e| missing.push((World::Selector, format!("{:#}", anyhow::Error::from(e)))))
            .ok();
        let binder = BinderPre::new(&pre)
            .map_err(|e| missing.push((World::Binder, format!("{:#}", anyhow::Error::from(e)))))
            .ok();
        let version = Version {
            name,
            path: path.to_path_buf(),
            version: AtomicU64::new(0),
            signature: (meta.len(), meta.modified().ok()),
            selector,
            binder,
        };
        let plugin = LoadedPlugin(Arc::new(version));
        let info = PluginInfo {
            path: path.to_path_buf(),
            worlds: plugin.interfaces(),
            missing,
        };
        Ok((plugin, info))
    }

    /// A selector running `plugin` with `args` for the virtual machine at `serves`, instantiated and
    /// initialised now so a bad argument, or a plugin whose interface cannot carry the virtual machine's
    /// address family ([`supports`]), is an error here, at configuration time.
    pub fn selector(
        &self,
        plugin: &PluginHandle,
        args: &[(String, String)],
        serves: IpAddr,
    ) -> Result<PluginSelector> {
        self.selector_named(plugin, args, serves, RealNames::default(), WarmUp::none())
    }

    /// [`PluginHost::selector`] whose instances answer `real-name` from `reals` (the binding table's
    /// real servers by id; `vipd run` and `vipd replay` pass them) and are warmed up with `warm_up` before
    /// they take traffic.
    pub fn selector_named(
        &self,
        plugin: &PluginHandle,
        args: &[(String, String)],
        serves: IpAddr,
        reals: RealNames,
        warm_up: WarmUp,
    ) -> Result<PluginSelector> {
        PluginSelector::new(
            self.inner.clone(),
            plugin.clone(),
            args.to_vec(),
            serves,
            reals,
            warm_up,
        )
    }

    /// A binder running `plugin` with `args`, instantiated and initialised now.
    pub fn binder(&self, plugin: &PluginHandle, args: &[(String, String)]) -> Result<Binder> {
        self.binder_named(plugin, args, RealNames::default())
    }

    /// [`PluginHost::binder`] whose instance answers `real-name` from `reals`.
    pub fn binder_named(
        &self,
        plugin: &PluginHandle,
        args: &[(String, String)],
        reals: RealNames,
    ) -> Result<Binder> {
        Binder::new(self.inner.clone(), plugin.clone(), args.to_vec(), reals)
    }

    /// Loads every `NAME.wasm` in `dir` and watches it for new, changed and deleted files.
    pub fn watch_dir(&self, dir: &Path) -> Result<PluginDir> {
        PluginDir::watch(self.clone(), dir)
    }
}

fn plugin_name(path: &Path) -> Result<String> {
    match (path.file_stem(), path.extension()) {
        (Some(stem), Some(ext)) if ext == "wasm" => stem
            .to_str()
            .map(str::to_string)
            .with_context(|| format!("{}: plugin name is not UTF-8", path.display())),
        _ => bail!("{}: a plugin file must be named NAME.wasm", path.display()),
    }
}

/// Tells a core module or a non-Wasm file from a component with a message that says what to do.
fn check_header(bytes: &[u8]) -> Result<()> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        bail!("not a WebAssembly file (no \\0asm header; truncated or not Wasm)");
    }
    if bytes[4..8] == [1, 0, 0, 0] {
        bail!(
            "a core WebAssembly module, not a component: build the plugin with \
             `cargo build --target wasm32-wasip2 --release`"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests;
