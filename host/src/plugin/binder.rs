//! [`Binder`]: runs a binding plugin when the configuration or the set of real servers changes (never per
//! connection), for a component of either interface version. Its answer is checked against what it was
//! given before anyone uses it. A binder is given the real servers of its virtual machine's address family
//! only (a binding never mixes families), and a version that cannot carry that family
//! ([`super::supports`]) is refused.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, anyhow, bail};
use wasmtime::Store;
use wasmtime::component::InstancePre;

use super::bindings::{ipv4, v0_1, v0_2};
use super::sandbox::{PluginState, RealNames, set_deadline};
use super::selector::{init_error, init_error_v0_1};
use super::{HostInner, InterfaceVersion, PluginHandle, Version, check_supports};
use crate::wire::Protocol;

/// The virtual machine a binder lays out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualInfo {
    /// Its index in the binding table ("the Nth virtual machine").
    pub id: u32,
    pub name: String,
    pub addr: IpAddr,
    pub ports: Vec<(u16, Protocol)>,
}

/// A real server a binder may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealInfo {
    /// Its index in the binding table.
    pub id: u32,
    pub name: String,
    pub addr: IpAddr,
    /// The port configured for it, if any.
    pub port: Option<u16>,
    pub weight: u32,
}

/// One binding a binder returned: virtual port to real server port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindingOut {
    pub virtual_port: u16,
    pub protocol: Protocol,
    pub real_id: u32,
    pub real_port: u16,
    pub weight: u32,
}

/// A compiled binder component, linked and ready to instantiate, of the newest interface it implements.
pub(crate) enum BinderPre {
    V0_1(v0_1::BinderPre<PluginState>),
    V0_2(v0_2::BinderPre<PluginState>),
}

impl BinderPre {
    /// The binder world `pre` implements; the error says why it implements none (in terms of the current
    /// interface).
    pub(crate) fn new(pre: &InstancePre<PluginState>) -> wasmtime::Result<BinderPre> {
        match v0_2::BinderPre::new(pre.clone()) {
            Ok(p) => Ok(BinderPre::V0_2(p)),
            Err(e) => v0_1::BinderPre::new(pre.clone())
                .map(BinderPre::V0_1)
                .map_err(|_| e),
        }
    }

    pub(crate) fn interface(&self) -> InterfaceVersion {
        match self {
            BinderPre::V0_1(_) => InterfaceVersion::V0_1,
            BinderPre::V0_2(_) => InterfaceVersion::V0_2,
        }
    }
}

/// A binder instance of either version.
enum Instance {
    V0_1(v0_1::BinderWorld),
    V0_2(v0_2::BinderWorld),
}

/// What `bind` answered, converted from either version; `Err` is the plugin's refusal.
type Answer = Result<Vec<BindingOut>, String>;

impl Instance {
    fn bind(
        &self,
        store: &mut Store<PluginState>,
        vm: &VirtualInfo,
        reals: &[&RealInfo],
    ) -> wasmtime::Result<Answer> {
        match self {
            Instance::V0_1(world) => {
                // `bind` checked the family and filtered the servers: every address here is IPv4.
                let addr = |a| ipv4(a).unwrap_or_default();
                let wit_vm = v0_1::wit_binding::VirtualMachineInfo {
                    id: vm.id,
                    name: vm.name.clone(),
                    addr: addr(vm.addr),
                    ports: vm
                        .ports
                        .iter()
                        .map(|&(port, p)| v0_1::wit_binding::VirtualPort {
                            port,
                            protocol: p.into(),
                        })
                        .collect(),
                };
                let wit_reals: Vec<_> = reals
                    .iter()
                    .map(|r| v0_1::wit_binding::RealInfo {
                        id: r.id,
                        name: r.name.clone(),
                        addr: addr(r.addr),
                        port: r.port,
                        weight: r.weight,
                    })
                    .collect();
                let answer = world
                    .vipd_policy_binding()
                    .call_bind(store, &wit_vm, &wit_reals)?;
                Ok(match answer {
                    Ok(out) => Ok(out
                        .into_iter()
                        .map(|b| BindingOut {
                            virtual_port: b.virtual_port,
                            protocol: b.protocol.into(),
                            real_id: b.real_id,
                            real_port: b.real_port,
                            weight: b.weight,
                        })
                        .collect()),
                    Err(
                        v0_1::wit_binding::BindError::InvalidInput(m)
                        | v0_1::wit_binding::BindError::Other(m),
                    ) => Err(m),
                })
            }
            Instance::V0_2(world) => {
                let wit_vm = v0_2::wit_binding::VirtualMachineInfo {
                    id: vm.id,
                    name: vm.name.clone(),
                    addr: vm.addr.into(),
                    ports: vm
                        .ports
                        .iter()
                        .map(|&(port, p)| v0_2::wit_binding::VirtualPort {
                            port,
                            protocol: p.into(),
                        })
                        .collect(),
                };
                let wit_reals: Vec<_> = reals
                    .iter()
                    .map(|r| v0_2::wit_binding::RealInfo {
                        id: r.id,
                        name: r.name.clone(),
                        addr: r.addr.into(),
                        port: r.port,
                        weight: r.weight,
                    })
                    .collect();
                let answer = world
                    .vipd_policy_binding()
                    .call_bind(store, &wit_vm, &wit_reals)?;
                Ok(match answer {
                    Ok(out) => Ok(out
                        .into_iter()
                        .map(|b| BindingOut {
                            virtual_port: b.virtual_port,
                            protocol: b.protocol.into(),
                            real_id: b.real_id,
                            real_port: b.real_port,
                            weight: b.weight,
                        })
                        .collect()),
                    Err(
                        v0_2::wit_binding::BindError::InvalidInput(m)
                        | v0_2::wit_binding::BindError::Other(m),
                    ) => Err(m),
                })
            }
        }
    }
}

/// A binding plugin instance.
pub struct Binder {
    host: Arc<HostInner>,
    plugin: PluginHandle,
    args: Vec<(String, String)>,
    /// The real servers' names, for the instance's `real-name`.
    reals: RealNames,
    version: u64,
    live: Option<(Store<PluginState>, Instance)>,
}

impl Binder {
    pub(crate) fn new(
        host: Arc<HostInner>,
        plugin: PluginHandle,
        args: Vec<(String, String)>,
        reals: RealNames,
    ) -> Result<Binder> {
        let current = plugin
            .slot
            .current
            .load_full()
            .with_context(|| plugin.unloaded())?;
        let live = instantiate(&host, &plugin, &current, &args, &reals)?;
        Ok(Binder {
            host,
            reals,
            version: current.version.load(Ordering::Relaxed),
            plugin,
            args,
            live: Some(live),
        })
    }

    /// The bindings the plugin gives `vm` over those of `reals` of its address family; an error (a version
    /// that cannot carry the family, a trap, timeout, refusal or a binding naming a port or server it was
    /// not given) leaves the caller's previous bindings in force.
    pub fn bind(&mut self, vm: &VirtualInfo, reals: &[RealInfo]) -> Result<Vec<BindingOut>> {
        let current = self
            .plugin
            .slot
            .current
            .load_full()
            .with_context(|| self.plugin.unloaded())?;
        let file = current.path.display().to_string();
        if let Some(pre) = &current.binder {
            check_supports(pre.interface(), &current.path, vm.addr)?;
        }
        if current.version.load(Ordering::Relaxed) != self.version || self.live.is_none() {
            self.live = Some(instantiate(
                &self.host,
                &self.plugin,
                &current,
                &self.args,
                &self.reals,
            )?);
            self.version = current.version.load(Ordering::Relaxed);
        }
        let (store, instance) = self.live.as_mut().expect("instantiated above");
        let reals: Vec<&RealInfo> = reals
            .iter()
            .filter(|r| r.addr.is_ipv6() == vm.addr.is_ipv6())
            .collect();
        let _armed = self.host.arm();
        set_deadline(store, self.host.slow_ticks);
        let answer = match instance.bind(&mut *store, vm, &reals) {
            Ok(a) => a,
            Err(e) => {
                self.live = None;
                return Err(anyhow::Error::from(e).context(format!(
                    "{file}: bind trapped for virtual machine {}",
                    vm.name
                )));
            }
        };
        let bindings = answer
            .map_err(|why| anyhow!("{file}: bind refused virtual machine {}: {why}", vm.name))?;
        for b in &bindings {
            if !vm.ports.contains(&(b.virtual_port, b.protocol)) {
                bail!(
                    "{file}: bound {} port {}/{}, which virtual machine {} does not have",
                    vm.name,
                    b.virtual_port,
                    b.protocol.as_str(),
                    vm.name
                );
            }
            if !reals.iter().any(|r| r.id == b.real_id) {
                bail!(
                    "{file}: bound to real server id {}, which it was not given",
                    b.real_id
                );
            }
        }
        Ok(bindings)
    }
}

fn instantiate(
    host: &HostInner,
    plugin: &PluginHandle,
    version: &Version,
    args: &[(String, String)],
    reals: &RealNames,
) -> Result<(Store<PluginState>, Instance)> {
    let file = version.path.display();
    let pre = version.binder.as_ref().with_context(|| {
        format!("{file}: not a binder plugin (does not export vipd:policy/binding)")
    })?;
    let mut store = host.new_store(plugin, reals.clone());
    let _armed = host.arm();
    set_deadline(&mut store, host.slow_ticks);
    let instance = match pre {
        BinderPre::V0_1(pre) => pre.instantiate(&mut store).map(Instance::V0_1),
        BinderPre::V0_2(pre) => pre.instantiate(&mut store).map(Instance::V0_2),
    }
    .map_err(anyhow::Error::from)
    .with_context(|| format!("{file}: instantiating"))?;
    let init = match &instance {
        Instance::V0_1(world) => world
            .vipd_policy_binding()
            .call_init(&mut store, args)
            .map(|r| r.map_err(|e| init_error_v0_1(&e))),
        Instance::V0_2(world) => world
            .vipd_policy_binding()
            .call_init(&mut store, args)
            .map(|r| r.map_err(|e| init_error(&e))),
    };
    init.map_err(anyhow::Error::from)
        .with_context(|| format!("{file}: init trapped"))?
        .map_err(|e| anyhow!("{file}: init refused the arguments: {e}"))?;
    Ok((store, instance))
}
