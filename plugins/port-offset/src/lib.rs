//! `port-offset` (binder): the patent's shared-host layout. Port `port` (default 80) of the Nth virtual
//! machine goes to port `base + N` on every real server, so many sites share the same hosts; every other
//! virtual port goes to the real server's configured port, or the same port number if none is configured.
//!
//! Arguments: `base` (default 8000), `port` (default 80).

use vipd_plugin_sdk::{
    Args, BindError, Binder, Binding, InitError, RealInfo, VirtualMachineInfo, export_binder,
};

/// The policy.
pub struct PortOffset {
    base: u16,
    port: u16,
}

/// The bindings for `vm` over `reals`.
pub fn layout(
    base: u16,
    port: u16,
    vm: &VirtualMachineInfo,
    reals: &[RealInfo],
) -> Result<Vec<Binding>, BindError> {
    let offset_port = u16::try_from(vm.id)
        .ok()
        .and_then(|n| base.checked_add(n))
        .ok_or_else(|| {
            BindError::InvalidInput(format!(
                "virtual machine {} (number {}): port {base} + {} is beyond 65535",
                vm.name, vm.id, vm.id
            ))
        })?;
    let mut out = Vec::with_capacity(vm.ports.len() * reals.len());
    for p in &vm.ports {
        for r in reals {
            let real_port = if p.port == port {
                offset_port
            } else {
                r.port.unwrap_or(p.port)
            };
            out.push(Binding {
                virtual_port: p.port,
                protocol: p.protocol,
                real_id: r.id,
                real_port,
                weight: r.weight,
            });
        }
    }
    Ok(out)
}

impl Binder for PortOffset {
    fn init(args: &Args) -> Result<Self, InitError> {
        args.only(&["base", "port"])?;
        Ok(PortOffset {
            base: args.parse_or("base", 8000)?,
            port: args.parse_or("port", 80)?,
        })
    }

    fn bind(
        &mut self,
        vm: &VirtualMachineInfo,
        reals: &[RealInfo],
    ) -> Result<Vec<Binding>, BindError> {
        layout(self.base, self.port, vm, reals)
    }
}

export_binder!(PortOffset);

#[cfg(test)]
mod tests {
    use vipd_plugin_sdk::{IpAddress, Protocol, VirtualPort};

    use super::*;

    fn vm(id: u32) -> VirtualMachineInfo {
        VirtualMachineInfo {
            id,
            name: format!("site{id}"),
            addr: IpAddress::Ipv4(0xc000_0201 + id),
            ports: vec![
                VirtualPort {
                    port: 80,
                    protocol: Protocol::Tcp,
                },
                VirtualPort {
                    port: 443,
                    protocol: Protocol::Tcp,
                },
            ],
        }
    }

    fn reals() -> Vec<RealInfo> {
        vec![
            RealInfo {
                id: 0,
                name: "a".into(),
                addr: IpAddress::Ipv4(0x0a00_0001),
                port: None,
                weight: 1,
            },
            RealInfo {
                id: 1,
                name: "b".into(),
                addr: IpAddress::Ipv4(0x0a00_0002),
                port: Some(8443),
                weight: 2,
            },
        ]
    }

    /// Port 80 of the third site goes to 8003 on each host; 443 keeps the real's port or its own.
    #[test]
    fn nth_site_gets_base_plus_n() {
        let b = layout(8000, 80, &vm(3), &reals()).unwrap();
        let ports: Vec<_> = b
            .iter()
            .map(|b| (b.virtual_port, b.real_id, b.real_port, b.weight))
            .collect();
        assert_eq!(
            ports,
            [
                (80, 0, 8003, 1),
                (80, 1, 8003, 2),
                (443, 0, 443, 1),
                (443, 1, 8443, 2)
            ]
        );
    }

    /// An offset past 65535 is refused with the site's name.
    #[test]
    fn overflow_refused() {
        assert!(
            matches!(layout(65535, 80, &vm(1), &reals()), Err(BindError::InvalidInput(m)) if m.contains("site1"))
        );
    }
}
