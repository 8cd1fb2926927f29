//! [`Binder`]: runs a binding plugin when the configuration or the set of real servers changes (never per
//! connection). Its answer is checked against what it was given before anyone uses it.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, anyhow, bail};
use wasmtime::Store;

use super::bindings::{BinderWorld, WitProtocol, wit_binding};
use super::sandbox::PluginState;
use super::selector::init_error;
use super::{HostInner, PluginHandle, Version};
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

/// A binding plugin instance.
pub struct Binder {
    host: Arc<HostInner>,
    plugin: PluginHandle,
    args: Vec<(String, String)>,
    version: u64,
    live: Option<(Store<PluginState>, BinderWorld)>,
}

impl Binder {
    pub(crate) fn new(
        host: Arc<HostInner>,
        plugin: PluginHandle,
        args: Vec<(String, String)>,
    ) -> Result<Binder> {
        let current = plugin
            .slot
            .current
            .load_full()
            .with_context(|| plugin.unloaded())?;
        let live = instantiate(&host, &plugin, &current, &args)?;
        Ok(Binder {
            host,
            version: current.version.load(Ordering::Relaxed),
            plugin,
            args,
            live: Some(live),
        })
    }

    /// The bindings the plugin gives `vm` over `reals`; an error (trap, timeout, refusal or a binding naming
    /// a port or server it was not given) leaves the caller's previous bindings in force.
    pub fn bind(&mut self, vm: &VirtualInfo, reals: &[RealInfo]) -> Result<Vec<BindingOut>> {
        let current = self
            .plugin
            .slot
            .current
            .load_full()
            .with_context(|| self.plugin.unloaded())?;
        let file = current.path.display().to_string();
        if current.version.load(Ordering::Relaxed) != self.version || self.live.is_none() {
            self.live = Some(instantiate(&self.host, &self.plugin, &current, &self.args)?);
            self.version = current.version.load(Ordering::Relaxed);
        }
        let (store, world) = self.live.as_mut().expect("instantiated above");
        let wit_vm = wit_binding::VirtualMachineInfo {
            id: vm.id,
            name: vm.name.clone(),
            addr: ipv4_bits(vm.addr),
            ports: vm
                .ports
                .iter()
                .map(|&(port, p)| wit_binding::VirtualPort {
                    port,
                    protocol: wit_protocol(p),
                })
                .collect(),
        };
        let wit_reals: Vec<_> = reals
            .iter()
            .map(|r| wit_binding::RealInfo {
                id: r.id,
                name: r.name.clone(),
                addr: ipv4_bits(r.addr),
                port: r.port,
                weight: r.weight,
            })
            .collect();
        let _armed = self.host.arm();
        store.set_epoch_deadline(self.host.slow_ticks);
        let answer = match world
            .vipd_policy_binding()
            .call_bind(&mut *store, &wit_vm, &wit_reals)
        {
            Ok(a) => a,
            Err(e) => {
                self.live = None;
                return Err(anyhow::Error::from(e).context(format!(
                    "{file}: bind trapped for virtual machine {}",
                    vm.name
                )));
            }
        };
        let bindings = answer.map_err(|e| {
            let why = match e {
                wit_binding::BindError::InvalidInput(m) | wit_binding::BindError::Other(m) => m,
            };
            anyhow!("{file}: bind refused virtual machine {}: {why}", vm.name)
        })?;
        let mut out = Vec::with_capacity(bindings.len());
        for b in bindings {
            let protocol = match b.protocol {
                WitProtocol::Tcp => Protocol::Tcp,
                WitProtocol::Udp => Protocol::Udp,
            };
            if !vm.ports.contains(&(b.virtual_port, protocol)) {
                bail!(
                    "{file}: bound {} port {}/{}, which virtual machine {} does not have",
                    vm.name,
                    b.virtual_port,
                    protocol.as_str(),
                    vm.name
                );
            }
            if !reals.iter().any(|r| r.id == b.real_id) {
                bail!(
                    "{file}: bound to real server id {}, which it was not given",
                    b.real_id
                );
            }
            out.push(BindingOut {
                virtual_port: b.virtual_port,
                protocol,
                real_id: b.real_id,
                real_port: b.real_port,
                weight: b.weight,
            });
        }
        Ok(out)
    }
}

fn wit_protocol(p: Protocol) -> WitProtocol {
    match p {
        Protocol::Tcp => WitProtocol::Tcp,
        Protocol::Udp => WitProtocol::Udp,
    }
}

fn instantiate(
    host: &HostInner,
    plugin: &PluginHandle,
    version: &Version,
    args: &[(String, String)],
) -> Result<(Store<PluginState>, BinderWorld)> {
    let file = version.path.display();
    let pre = version.binder.as_ref().with_context(|| {
        format!("{file}: not a binder plugin (does not export vipd:policy/binding)")
    })?;
    let mut store = host.new_store(plugin);
    let _armed = host.arm();
    store.set_epoch_deadline(host.slow_ticks);
    let world = pre
        .instantiate(&mut store)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("{file}: instantiating"))?;
    world
        .vipd_policy_binding()
        .call_init(&mut store, args)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("{file}: init trapped"))?
        .map_err(|e| anyhow!("{file}: init refused the arguments: {}", init_error(&e)))?;
    Ok((store, world))
}

/// The 0.1.0 interface's address: an IPv4 address as a number. An IPv6 virtual machine never reaches a 0.1.0
/// plugin (refused at load), so its addresses have no number here.
fn ipv4_bits(ip: std::net::IpAddr) -> u32 {
    match ip {
        std::net::IpAddr::V4(a) => u32::from(a),
        std::net::IpAddr::V6(_) => 0,
    }
}
