//! From a config to a running director, once for every entry point: `vipd run` (at start and on each
//! reload), `vipd replay`, `vipd check`, the benchmarks and the tests all call [`Assembly::load`] or
//! [`Assembly::new`], so what replay tries is exactly what run would serve.
//!
//! The steps: the config is parsed and validated ([`Config`]); its bindings are compiled
//! ([`BindingTable::from_config`]); virtual machines with a `binder` get their bindings from that plugin;
//! each virtual port gets its selector: the plugin `NAME.wasm` from the plugins folder if there is one, else
//! the built-in of that name, else the config is refused with the file, the virtual machine, the port and
//! the name. Nothing here touches an interface.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::binding::{BindingTable, Target};
use crate::config::Config;
use crate::director::{Director, Layer2};
use crate::plugin::{PluginDir, PluginHost, PluginLimits, RealInfo, VirtualInfo, WarmUp};
use crate::policy::{Candidate, RoundRobin, Selector};
use crate::shadow::ShadowPort;
use crate::wire::Protocol;

/// The built-in policy's name.
pub const BUILTIN_ROUND_ROBIN: &str = "round-robin";

/// The plugin host and its watched folder, made once per process: the folder is watched and its plugins
/// hot-reloaded for the daemon's whole life; every reload's [`Assembly`] takes its plugins from it.
pub struct Plugins {
    host: PluginHost,
    dir: Arc<PluginDir>,
}

impl Plugins {
    /// The plugins of `folder`, or of `[director] plugins` when `folder` is `None`; `None` when neither
    /// names one. What the folder holds now is loaded before this returns.
    pub fn start(config: &Config, folder: Option<&Path>) -> Result<Option<Plugins>> {
        let Some(folder) = folder.or(config.director.plugins.as_deref()) else {
            return Ok(None);
        };
        let limits = PluginLimits {
            memory_bytes: usize::try_from(config.director.plugin_memory).unwrap_or(usize::MAX),
            deadline: config.director.plugin_deadline,
        };
        let host = PluginHost::new(limits).context("starting the plugin host")?;
        let dir = host
            .watch_dir(folder)
            .with_context(|| format!("plugins folder {}", folder.display()))?;
        Ok(Some(Plugins {
            host,
            dir: Arc::new(dir),
        }))
    }

    /// The plugin host.
    pub fn host(&self) -> &PluginHost {
        &self.host
    }

    /// The watched folder (for `/status` and `/metrics`).
    pub fn dir(&self) -> &Arc<PluginDir> {
        &self.dir
    }
}

/// Which policy serves one virtual port, for the start log and `vipd replay`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyUse {
    pub virtual_name: String,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub policy: String,
    /// The plugin file and its version, `None` for a built-in.
    pub plugin: Option<(PathBuf, u64)>,
}

impl fmt::Display for PolicyUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}/{}: policy {}",
            self.virtual_name,
            std::net::SocketAddr::new(self.address, self.port),
            self.protocol.as_str(),
            self.policy
        )?;
        match &self.plugin {
            Some((file, version)) => write!(f, " (plugin {}, version {version})", file.display()),
            None => write!(f, " (built-in)"),
        }
    }
}

/// The plugin file and version serving a port, `None` for a built-in.
type PluginVersion = Option<(PathBuf, u64)>;

/// One selector per virtual port, in the order of the binding table's ports.
pub type Selectors = Vec<Box<dyn Selector>>;

/// A validated config with everything the director needs to serve it.
pub struct Assembly {
    pub config: Config,
    pub bindings: BindingTable,
    /// One per virtual port, in the order of `bindings.ports`.
    pub selectors: Selectors,
    /// Parallel to `selectors`.
    pub policies: Vec<PolicyUse>,
    /// The shadow policies: `(port id, name, selector)` for each port with a `shadow_policy`. Each
    /// selector is an instance of its own, for the shadow thread ([`crate::shadow`]).
    pub shadows: Vec<ShadowPort>,
}

impl Assembly {
    /// What `vipd check` and `vipd run` warn about in a `[cluster]` config: no `[sync]` (a flow the router
    /// moves loses its connection), and ports whose policy is not consistent (each director would choose
    /// on its own for a flow it has no connection for). Empty without `[cluster]`.
    pub fn cluster_warnings(&self) -> Vec<String> {
        let Some(cluster) = &self.config.cluster else {
            return Vec::new();
        };
        let mut warnings = Vec::new();
        if self
            .config
            .sync
            .as_ref()
            .is_some_and(|s| s.role == crate::config::Role::Standby)
        {
            warnings.push(
                "[cluster] with [sync] role \"standby\": every director of a cluster is active (role = \"active\"); \
                 a standby forwards nothing and answers no bulk resync with its table"
                    .to_owned(),
            );
        }
        if self.config.sync.is_none() {
            warnings.push(
                "[cluster] without [sync]: a flow the router moves to another director (a director added, \
                 removed or restarted) reaches one that has no connection for it and is dropped; add [sync] \
                 with every other director as a peer"
                    .to_owned(),
            );
        }
        for used in &self.policies {
            if !cluster.consistent_policies.contains(&used.policy) {
                warnings.push(format!(
                    "{} {}/{}: policy {} on a cluster is not in [cluster] consistent_policies: directors \
                     choose servers independently, and connections move with the router's flows only by \
                     sync (a flow moved within the first 20 ms of its life, before its record left, is \
                     lost); a consistent policy (the maglev plugin) chooses the same server on every \
                     director, and places a moved flow that has no record",
                    used.virtual_name,
                    std::net::SocketAddr::new(used.address, used.port),
                    used.protocol.as_str(),
                    used.policy
                ));
            }
        }
        warnings
    }

    /// Reads and validates the config file at `path`, then assembles it.
    pub fn load(path: &Path, plugins: Option<&Plugins>) -> Result<Assembly> {
        let config = Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
        Assembly::new(path, config, plugins)
    }

    /// Assembles `config` (read from `path`, which error messages name) with the policies and binders of
    /// `plugins`.
    pub fn new(path: &Path, config: Config, plugins: Option<&Plugins>) -> Result<Assembly> {
        let mut bindings = BindingTable::from_config(&config);
        bind_by_plugins(path, &config, &mut bindings, plugins)?;
        let (selectors, policies) = selectors_for(path, &bindings, plugins)?;
        let shadows = shadows_for(path, &bindings, plugins)?;
        Ok(Assembly {
            config,
            bindings,
            selectors,
            policies,
            shadows,
        })
    }

    /// The shadow selectors, for the shadow thread, numbered with the install `generation` they go with.
    pub fn take_shadows(&mut self, generation: u64) -> crate::shadow::ShadowSet {
        crate::shadow::ShadowSet {
            generation,
            ports: std::mem::take(&mut self.shadows),
            reals: self.bindings.reals.len(),
        }
    }

    /// A director serving this assembly.
    pub fn director(self, l2: Layer2) -> Director {
        Director::with_selectors(&self.config, self.bindings, self.selectors, l2)
    }

    /// Puts this assembly in place in a running director (reload): limits, bindings, selectors, checks.
    pub fn install(self, director: &mut Director) {
        director.set_limits(&self.config);
        director.install(self.bindings, self.selectors);
        director.set_checked(&self.config);
    }
}

/// Fills the ports of virtual machines with a `binder` that have no `bind` of their own.
fn bind_by_plugins(
    path: &Path,
    config: &Config,
    bindings: &mut BindingTable,
    plugins: Option<&Plugins>,
) -> Result<()> {
    let reals: Vec<RealInfo> = bindings
        .reals
        .iter()
        .enumerate()
        .map(|(id, r)| RealInfo {
            id: id as u32,
            name: r.name.clone(),
            addr: r.address,
            port: r.port,
            weight: r.weight,
        })
        .collect();
    for (virtual_id, vm) in config.virtuals.iter().enumerate() {
        let Some(name) = &vm.binder else { continue };
        let where_ = || {
            format!(
                "{}: virtual machine {:?}: binder {name:?}",
                path.display(),
                vm.name
            )
        };
        let Some(p) = plugins else {
            anyhow::bail!(
                "{}: no plugins folder is configured ([director] plugins)",
                where_()
            );
        };
        let handle = p.dir.get(name).with_context(|| {
            format!("{}: no {name}.wasm in {}", where_(), p.dir.dir().display())
        })?;
        let args: Vec<(String, String)> = vm.binder_args.clone().into_iter().collect();
        let mut binder = p
            .host
            .binder_named(&handle, &args, real_names(bindings))
            .with_context(where_)?;
        let info = VirtualInfo {
            id: virtual_id as u32,
            name: vm.name.clone(),
            addr: vm.address,
            ports: vm
                .ports
                .iter()
                .map(|port| (port.port, port.protocol))
                .collect(),
        };
        // The binder offers the plugin the servers of the virtual address's family only.
        let out = binder.bind(&info, &reals).with_context(where_)?;
        let vm_ports = bindings.virtuals[virtual_id].ports.clone();
        for port_id in vm_ports {
            let port = &mut bindings.ports[port_id as usize];
            if !port.targets.is_empty() {
                continue;
            }
            port.targets = out
                .iter()
                .filter(|b| b.virtual_port == port.port && b.protocol == port.protocol)
                .map(|b| Target {
                    real_id: b.real_id,
                    port: b.real_port,
                    weight: Some(b.weight),
                })
                .collect();
            tracing::info!(
                virtual_machine = %vm.name,
                port = port.port,
                targets = port.targets.len(),
                binder = %name,
                "bindings from plugin"
            );
        }
    }
    Ok(())
}

/// One selector per virtual port: the plugin `NAME.wasm` if the folder has it, else the built-in `NAME`.
fn selectors_for(
    path: &Path,
    bindings: &BindingTable,
    plugins: Option<&Plugins>,
) -> Result<(Selectors, Vec<PolicyUse>)> {
    let mut selectors: Selectors = Vec::with_capacity(bindings.ports.len());
    let mut policies = Vec::with_capacity(bindings.ports.len());
    for port in &bindings.ports {
        let vm = &bindings.virtuals[port.virtual_id as usize];
        let name = port.policy.as_str();
        let (selector, used) = selector(
            path,
            bindings,
            port,
            name,
            &port.policy_args,
            "policy",
            plugins,
        )?;
        selectors.push(selector);
        policies.push(PolicyUse {
            virtual_name: vm.name.clone(),
            address: vm.address,
            port: port.port,
            protocol: port.protocol,
            policy: name.to_string(),
            plugin: used,
        });
    }
    Ok((selectors, policies))
}

/// A selector of its own for each port's `shadow_policy`, found the same way as its policy.
fn shadows_for(
    path: &Path,
    bindings: &BindingTable,
    plugins: Option<&Plugins>,
) -> Result<Vec<ShadowPort>> {
    let mut shadows = Vec::new();
    for (port_id, port) in bindings.ports.iter().enumerate() {
        if let Some((name, args)) = &port.shadow {
            let (selector, _) =
                selector(path, bindings, port, name, args, "shadow_policy", plugins)?;
            shadows.push(ShadowPort {
                port_id: port_id as u32,
                name: name.clone(),
                selector,
            });
        }
    }
    Ok(shadows)
}

/// The selector `name` for `port`: the plugin `NAME.wasm` if the folder has it, else the built-in; `key`
/// names the config key in the refusal.
/// The real servers' names by id, as plugins ask for them (`real-name`).
fn real_names(bindings: &BindingTable) -> crate::plugin::RealNames {
    bindings
        .reals
        .iter()
        .map(|r| Arc::from(r.name.as_str()))
        .collect()
}

/// What a plugin selector of `port` is warmed up with: its bound servers as they are configured, all up
/// (a director that has just started, or reloaded, knows no failure yet that it would not learn again).
fn warm_up(bindings: &BindingTable, port: &crate::binding::VirtualPort) -> WarmUp {
    let vm = &bindings.virtuals[port.virtual_id as usize];
    let candidates = port
        .targets
        .iter()
        .filter_map(|t| {
            let real = bindings.reals.get(t.real_id as usize)?;
            let target = std::net::SocketAddr::new(real.address, t.port);
            Some(Candidate::up(t.real_id, target, t.weight_on(real.weight)))
        })
        .collect();
    WarmUp::new(
        std::net::SocketAddr::new(vm.address, port.port),
        port.protocol,
        port.virtual_id,
        candidates,
    )
}

fn selector(
    path: &Path,
    bindings: &BindingTable,
    port: &crate::binding::VirtualPort,
    name: &str,
    args: &std::collections::BTreeMap<String, String>,
    key: &str,
    plugins: Option<&Plugins>,
) -> Result<(Box<dyn Selector>, PluginVersion)> {
    let vm = &bindings.virtuals[port.virtual_id as usize];
    let plugin = plugins.and_then(|p| Some((p, p.dir.get(name)?)));
    Ok(match plugin {
        Some((p, handle)) => {
            let args: Vec<(String, String)> = args.clone().into_iter().collect();
            let serves = vm.address;
            let reals = real_names(bindings);
            let selector = p
                .host
                .selector_named(&handle, &args, serves, reals, warm_up(bindings, port))
                .map(|s| {
                    // The shadow thread may wait for its instances; the data path never does.
                    if key == "shadow_policy" {
                        s.in_call()
                    } else {
                        s
                    }
                })
                .with_context(|| {
                    format!(
                        "{}: virtual machine {:?} port {}: {key} {name:?}",
                        path.display(),
                        vm.name,
                        port.port
                    )
                })?;
            let used = handle
                .current()
                .map(|l| (l.path().to_path_buf(), l.version()));
            (Box::new(selector), used)
        }
        None if name == BUILTIN_ROUND_ROBIN => (Box::new(RoundRobin::new()), None),
        None => anyhow::bail!(
            "{}: virtual machine {:?} port {}: {key} {name:?} is no built-in ({BUILTIN_ROUND_ROBIN}) and no \
             plugin {name}.wasm is loaded{}",
            path.display(),
            vm.name,
            port.port,
            plugins.map_or(" (no [director] plugins folder)".to_string(), |p| format!(
                " from {}",
                p.dir.dir().display()
            ))
        ),
    })
}
