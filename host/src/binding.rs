//! The binding table (patent FIG. 4B): virtual machines, their ports, and the real server ports bound to
//! each, compiled once from a validated [`Config`] (at start and on reload, never per packet).
//!
//! Contract: [`BindingTable::lookup`] is the per-packet question "is this a virtual address, and does it
//! support this protocol and port?"; it allocates nothing and costs one or two hash probes on integer keys.
//! Everything is addressed by `u32` index (`real_id`, `virtual_id`, port id) so connection objects and
//! policies carry numbers, not names.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use hashbrown::HashMap;

use crate::config::{Announce, Config, resolve_port};
use crate::wire::Protocol;

/// The compiled bindings of one configuration.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BindingTable {
    /// Indexed by `real_id`, in config order.
    pub reals: Vec<RealServer>,
    /// Indexed by `virtual_id`, in config order.
    pub virtuals: Vec<VirtualMachine>,
    /// Indexed by port id; a virtual machine's ports are contiguous and in config order.
    pub ports: Vec<VirtualPort>,
    /// Virtual address to `virtual_id`.
    by_address: HashMap<IpAddr, u32>,
    /// [`port_key`] to port id.
    by_port: HashMap<PortKey, u32>,
    /// Real server name to `real_id`.
    real_names: HashMap<String, u32>,
}

/// A physical machine, or one port of it (patent FIG. 6B).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealServer {
    pub name: String,
    pub address: IpAddr,
    /// Set when this object stands for one port of the machine.
    pub port: Option<u16>,
    /// 0 drains it.
    pub weight: u32,
    /// `real_id` of the server that takes over while this one is failed.
    pub backup: Option<u32>,
    pub failure_threshold: u32,
    pub retry_after: Duration,
    pub mac: Option<crate::wire::MacAddr>,
}

/// A virtual address and the ports it supports (patent FIG. 6A).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualMachine {
    pub name: String,
    pub address: IpAddr,
    /// Whether the director answers ARP for the address.
    pub announce: bool,
    /// Port ids, exactly the supported ports.
    pub ports: Vec<u32>,
}

/// A supported port of a virtual machine and where its connections may go (patent FIG. 6D).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualPort {
    pub virtual_id: u32,
    pub port: u16,
    pub protocol: Protocol,
    /// The policy that applies here (the port's own or the virtual machine's).
    pub policy: String,
    pub policy_args: BTreeMap<String, String>,
    /// The shadow policy asked beside `policy`, and its arguments (`shadow_policy`).
    pub shadow: Option<(String, BTreeMap<String, String>)>,
    /// In bind-list order. Empty when a binder plugin is to fill it.
    pub targets: Vec<Target>,
}

/// One real server port bound to a virtual port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub real_id: u32,
    pub port: u16,
    /// A weight for this binding alone (a binder plugin's answer); `None`: the real server's `weight`.
    pub weight: Option<u32>,
}

impl Target {
    /// The weight of this binding on its own server, whose weight is now `server`: the binding's own, unless
    /// the server is drained (weight 0), which stays drained.
    pub fn weight_on(&self, server: u32) -> u32 {
        match self.weight {
            Some(w) if server > 0 => w,
            _ => server,
        }
    }
}

/// The answer to "where does this packet's destination belong?".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Not a virtual address.
    NotVirtual,
    /// A virtual address, but not one of its ports: TCP gets an RST, UDP an ICMP port unreachable.
    UnsupportedPort { virtual_id: u32 },
    /// The port id of a supported virtual port.
    Port(u32),
}

/// A virtual port's key: (address, protocol, port).
type PortKey = (IpAddr, Protocol, u16);

fn port_key(addr: IpAddr, protocol: Protocol, port: u16) -> PortKey {
    (addr, protocol, port)
}

fn index(i: usize) -> u32 {
    u32::try_from(i).expect("fewer than 2^32 entries")
}

/// What a server's reply is translated by when no connection object has it (a cluster director that did not
/// see the SYN): its (protocol, real address, real port) and the one virtual address and port it serves,
/// or `None` where it serves several (ambiguous: never translated without a connection).
pub type Returns = HashMap<(Protocol, IpAddr, u16), Option<(IpAddr, u16)>>;

impl BindingTable {
    /// [`Returns`] of this table: every bound (real server, port), and its backup at the same port.
    pub fn returns(&self) -> Returns {
        let mut map = Returns::new();
        for port in &self.ports {
            let Some(vm) = self.virtuals.get(port.virtual_id as usize) else {
                continue;
            };
            let virt = (vm.address, port.port);
            for t in &port.targets {
                let Some(real) = self.reals.get(t.real_id as usize) else {
                    continue;
                };
                let backup = real.backup.and_then(|b| self.reals.get(b as usize));
                for r in std::iter::once(real).chain(backup) {
                    map.entry((port.protocol, r.address, t.port))
                        .and_modify(|v| {
                            if *v != Some(virt) {
                                *v = None;
                            }
                        })
                        .or_insert(Some(virt));
                }
            }
        }
        map
    }

    /// Compiles a configuration. It expects one that [`Config::parse`] accepted: bind entries naming no
    /// defined real server, or a port other than the real server's fixed one, are skipped.
    pub fn from_config(config: &Config) -> BindingTable {
        let mut real_names = HashMap::with_capacity(config.reals.len());
        for (i, real) in config.reals.iter().enumerate() {
            real_names.entry(real.name.clone()).or_insert(index(i));
        }
        let reals = config
            .reals
            .iter()
            .map(|real| RealServer {
                name: real.name.clone(),
                address: real.address,
                port: real.port,
                weight: real.weight,
                backup: real
                    .backup
                    .as_ref()
                    .and_then(|b| real_names.get(b.as_str()).copied()),
                failure_threshold: real.failure_threshold,
                retry_after: real.retry_after,
                mac: real.mac,
            })
            .collect();

        let port_count = config.virtuals.iter().map(|v| v.ports.len()).sum();
        let mut virtuals = Vec::with_capacity(config.virtuals.len());
        let mut ports = Vec::with_capacity(port_count);
        let mut by_address = HashMap::with_capacity(config.virtuals.len());
        let mut by_port = HashMap::with_capacity(port_count);
        for (v, vm) in config.virtuals.iter().enumerate() {
            let virtual_id = index(v);
            by_address.entry(vm.address).or_insert(virtual_id);
            let mut port_ids = Vec::with_capacity(vm.ports.len());
            for port in &vm.ports {
                let port_id = index(ports.len());
                let targets = vm
                    .effective_bind(port)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|entry| {
                        let real_id = *real_names.get(entry.real.as_str())?;
                        let fixed = config.reals[real_id as usize].port;
                        let port = resolve_port(fixed, entry.port, port.port)?;
                        Some(Target {
                            real_id,
                            port,
                            weight: None,
                        })
                    })
                    .collect();
                let (policy, args) = vm.effective_policy(port);
                ports.push(VirtualPort {
                    virtual_id,
                    port: port.port,
                    protocol: port.protocol,
                    policy: policy.to_owned(),
                    policy_args: args.clone(),
                    shadow: vm
                        .effective_shadow(port)
                        .map(|(s, a)| (s.to_owned(), a.clone())),
                    targets,
                });
                by_port
                    .entry(port_key(vm.address, port.protocol, port.port))
                    .or_insert(port_id);
                port_ids.push(port_id);
            }
            virtuals.push(VirtualMachine {
                name: vm.name.clone(),
                address: vm.address,
                announce: vm.announce == Announce::Arp,
                ports: port_ids,
            });
        }
        BindingTable {
            reals,
            virtuals,
            ports,
            by_address,
            by_port,
            real_names,
        }
    }

    /// Per packet: is `addr` a virtual address, and does it support (`protocol`, `port`)?
    pub fn lookup(&self, addr: IpAddr, protocol: Protocol, port: u16) -> Lookup {
        if let Some(&port_id) = self.by_port.get(&port_key(addr, protocol, port)) {
            return Lookup::Port(port_id);
        }
        match self.by_address.get(&addr) {
            Some(&virtual_id) => Lookup::UnsupportedPort { virtual_id },
            None => Lookup::NotVirtual,
        }
    }

    /// The `virtual_id` of the virtual machine at `addr`.
    pub fn virtual_by_address(&self, addr: IpAddr) -> Option<u32> {
        self.by_address.get(&addr).copied()
    }

    /// The `real_id` of the real server called `name`.
    pub fn real_by_name(&self, name: &str) -> Option<u32> {
        self.real_names.get(name).copied()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn table(text: &str) -> BindingTable {
        BindingTable::from_config(&Config::parse(text, Path::new("test.toml")).unwrap())
    }

    fn fig3() -> BindingTable {
        table(include_str!("../../examples/fig3.toml"))
    }

    /// A cluster's replies without a connection: each (real, port) of FIG. 3 serves one virtual port; one
    /// bound to two virtual ports is ambiguous; backups answer at their primary's port.
    #[test]
    fn returns_map_each_real_port_to_its_one_virtual_port() {
        let r = fig3().returns();
        let at = |a: &str, p: u16| r.get(&(Protocol::Tcp, a.parse().unwrap(), p)).copied();
        assert_eq!(
            at("10.20.0.10", 8002),
            Some(Some(("192.0.2.2".parse().unwrap(), 80)))
        );
        assert_eq!(
            at("10.20.0.11", 80),
            Some(Some(("192.0.2.1".parse().unwrap(), 80)))
        );
        assert_eq!(at("10.20.0.10", 80), None, "not bound");
        let two = table(
            "[director]\noutside = \"o\"\ninside = \"i\"\n\
             [[real]]\nname = \"x\"\naddress = \"10.0.0.1\"\nbackup = \"y\"\n\
             [[real]]\nname = \"y\"\naddress = \"10.0.0.2\"\n\
             [[virtual]]\nname = \"a\"\naddress = \"192.0.2.1\"\n  [[virtual.port]]\n  port = 80\n  bind = [\"x\"]\n\
             [[virtual]]\nname = \"b\"\naddress = \"192.0.2.2\"\n  [[virtual.port]]\n  port = 80\n  bind = [\"x\"]\n\
             [[virtual]]\nname = \"c\"\naddress = \"192.0.2.3\"\n  [[virtual.port]]\n  port = 81\n  bind = [\"x:8081\"]\n",
        )
        .returns();
        let at = |a: &str, p: u16| two.get(&(Protocol::Tcp, a.parse().unwrap(), p)).copied();
        assert_eq!(
            at("10.0.0.1", 80),
            Some(None),
            "serves two virtual machines: ambiguous"
        );
        assert_eq!(
            at("10.0.0.1", 8081),
            Some(Some(("192.0.2.3".parse().unwrap(), 81)))
        );
        assert_eq!(
            at("10.0.0.2", 8081),
            Some(Some(("192.0.2.3".parse().unwrap(), 81))),
            "the backup, at its primary's port"
        );
    }

    /// (real name, port) of each target of the port `addr`:`port`/`protocol`.
    fn targets(t: &BindingTable, addr: &str, protocol: Protocol, port: u16) -> Vec<(String, u16)> {
        let Lookup::Port(id) = t.lookup(addr.parse().unwrap(), protocol, port) else {
            panic!("{addr}:{port} is not a virtual port");
        };
        t.ports[id as usize]
            .targets
            .iter()
            .map(|target| (t.reals[target.real_id as usize].name.clone(), target.port))
            .collect()
    }

    fn named(list: &[(&str, u16)]) -> Vec<(String, u16)> {
        list.iter().map(|(n, p)| (n.to_string(), *p)).collect()
    }

    /// FIG. 3: every site's port 80 reaches the right host ports, in bind order.
    #[test]
    fn fig3_bindings() {
        let t = fig3();
        assert_eq!(
            targets(&t, "192.0.2.1", Protocol::Tcp, 80),
            named(&[("host-a", 8001), ("host-b", 80), ("host-c", 9001)])
        );
        assert_eq!(
            targets(&t, "192.0.2.2", Protocol::Tcp, 80),
            named(&[("host-a", 8002), ("host-c", 9002)])
        );
        assert_eq!(
            targets(&t, "192.0.2.3", Protocol::Tcp, 80),
            named(&[("host-a-site3", 8003), ("host-c", 9003)])
        );
        assert_eq!(
            t.reals[t.real_by_name("host-a-site3").unwrap() as usize].address,
            t.reals[0].address
        );
    }

    /// Whole virtual machine to whole physical machine: every port keeps its number.
    #[test]
    fn whole_machine_binding() {
        let t = table(
            "[director]\noutside = \"o\"\ninside = \"i\"\n[[real]]\nname = \"b\"\naddress = \"10.0.0.2\"\n\
             [[virtual]]\nname = \"v\"\naddress = \"192.0.2.1\"\nbind = [\"b\"]\n\
             [[virtual.port]]\nport = 80\n[[virtual.port]]\nport = 443\n[[virtual.port]]\nport = 53\nprotocol = \"udp\"\n",
        );
        assert_eq!(
            targets(&t, "192.0.2.1", Protocol::Tcp, 80),
            named(&[("b", 80)])
        );
        assert_eq!(
            targets(&t, "192.0.2.1", Protocol::Tcp, 443),
            named(&[("b", 443)])
        );
        assert_eq!(
            targets(&t, "192.0.2.1", Protocol::Udp, 53),
            named(&[("b", 53)])
        );
    }

    /// Virtual-level "REAL:PORT" and a real with a fixed port send every virtual port to that one port.
    #[test]
    fn every_port_to_one_port() {
        let t = table(
            "[director]\noutside = \"o\"\ninside = \"i\"\n[[real]]\nname = \"a\"\naddress = \"10.0.0.1\"\n\
             [[real]]\nname = \"a8\"\naddress = \"10.0.0.1\"\nport = 8080\n\
             [[virtual]]\nname = \"v\"\naddress = \"192.0.2.1\"\nbind = [\"a:9000\", \"a8\"]\n\
             [[virtual.port]]\nport = 80\n[[virtual.port]]\nport = 81\n",
        );
        for port in [80, 81] {
            assert_eq!(
                targets(&t, "192.0.2.1", Protocol::Tcp, port),
                named(&[("a", 9000), ("a8", 8080)])
            );
        }
    }

    /// A port's own bind overrides the virtual machine's; other ports keep the virtual machine's.
    #[test]
    fn port_bind_overrides() {
        let t = table(
            "[director]\noutside = \"o\"\ninside = \"i\"\n[[real]]\nname = \"a\"\naddress = \"10.0.0.1\"\n\
             [[real]]\nname = \"b\"\naddress = \"10.0.0.2\"\n\
             [[virtual]]\nname = \"v\"\naddress = \"192.0.2.1\"\nbind = [\"b\"]\n\
             [[virtual.port]]\nport = 80\nbind = [\"a:8001\"]\n[[virtual.port]]\nport = 22\n",
        );
        assert_eq!(
            targets(&t, "192.0.2.1", Protocol::Tcp, 80),
            named(&[("a", 8001)])
        );
        assert_eq!(
            targets(&t, "192.0.2.1", Protocol::Tcp, 22),
            named(&[("b", 22)])
        );
    }

    /// Lookup tells a non-virtual address, an unsupported port (also the wrong protocol) and a supported port apart.
    #[test]
    fn lookup_answers() {
        let t = fig3();
        let site1: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(
            t.lookup("10.20.0.10".parse().unwrap(), Protocol::Tcp, 80),
            Lookup::NotVirtual
        );
        assert_eq!(
            t.lookup(site1, Protocol::Tcp, 81),
            Lookup::UnsupportedPort { virtual_id: 0 }
        );
        assert_eq!(
            t.lookup(site1, Protocol::Udp, 80),
            Lookup::UnsupportedPort { virtual_id: 0 }
        );
        assert_eq!(
            t.lookup(site1, Protocol::Tcp, 53),
            Lookup::UnsupportedPort { virtual_id: 0 }
        );
        let Lookup::Port(id) = t.lookup(site1, Protocol::Udp, 53) else {
            panic!()
        };
        let port = &t.ports[id as usize];
        assert_eq!(
            (port.virtual_id, port.port, port.protocol),
            (0, 53, Protocol::Udp)
        );
        let Lookup::Port(id) = t.lookup("192.0.2.3".parse().unwrap(), Protocol::Tcp, 80) else {
            panic!()
        };
        assert_eq!(t.ports[id as usize].virtual_id, 2);
        assert_eq!(t.virtual_by_address("192.0.2.2".parse().unwrap()), Some(1));
        assert_eq!(t.virtual_by_address("192.0.2.9".parse().unwrap()), None);
    }

    /// Indexes: virtual machines list their port ids, backups and names resolve to real ids.
    #[test]
    fn indexes() {
        let t = table(
            "[director]\noutside = \"o\"\ninside = \"i\"\n[[real]]\nname = \"a\"\naddress = \"10.0.0.1\"\nbackup = \"b\"\n\
             [[real]]\nname = \"b\"\naddress = \"10.0.0.2\"\nweight = 0\n\
             [[virtual]]\nname = \"v\"\naddress = \"192.0.2.1\"\nannounce = \"none\"\nbind = [\"a\"]\npolicy = \"maglev\"\n\
             [[virtual.port]]\nport = 80\n[[virtual.port]]\nport = 81\npolicy = \"fastest\"\n",
        );
        assert_eq!(t.real_by_name("b"), Some(1));
        assert_eq!(t.real_by_name("c"), None);
        assert_eq!(
            (t.reals[0].backup, t.reals[1].backup, t.reals[1].weight),
            (Some(1), None, 0)
        );
        assert_eq!(t.virtuals[0].ports, [0, 1]);
        assert!(!t.virtuals[0].announce);
        assert_eq!(
            (t.ports[0].policy.as_str(), t.ports[1].policy.as_str()),
            ("maglev", "fastest")
        );
    }

    /// A port left to a binder plugin compiles with no targets yet.
    #[test]
    fn binder_port_has_no_targets() {
        let t = table(
            "[director]\noutside = \"o\"\ninside = \"i\"\n[[virtual]]\nname = \"v\"\naddress = \"192.0.2.1\"\nbinder = \"port-offset\"\n\
             [[virtual.port]]\nport = 80\n",
        );
        assert!(targets(&t, "192.0.2.1", Protocol::Tcp, 80).is_empty());
    }
}
