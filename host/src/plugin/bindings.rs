//! Host bindings generated from the WIT packages the host loads: `wit/` (`vipd:policy@0.2.0`, the current
//! one) and `wit/0.1.0/` (kept so plugins built against it still load). One module per package and world,
//! each binder's sharing its package's selector types and host interface. Only the short list below is used
//! by the rest of `plugin`, with the conversions from the host's types.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::policy::ServerState;
use crate::wire::Protocol;

/// `vipd:policy@0.2.0`: addresses of either family.
pub(crate) mod v0_2 {
    pub(crate) mod selector {
        wasmtime::component::bindgen!({
            path: "../wit",
            world: "selector",
        });
    }

    pub(crate) mod binder {
        wasmtime::component::bindgen!({
            path: "../wit",
            world: "binder",
            with: {
                "vipd:policy/types": super::selector::vipd::policy::types,
                "vipd:policy/host": super::selector::vipd::policy::host,
            },
        });
    }

    pub(crate) use binder::exports::vipd::policy::binding as wit_binding;
    pub(crate) use binder::{Binder as BinderWorld, BinderPre};
    pub(crate) use selector::exports::vipd::policy::selection::SelectError;
    pub(crate) use selector::vipd::policy::host::{Host as HostFunctions, Level};
    pub(crate) use selector::vipd::policy::types::{
        Candidate, Connection, Host as Types, InitError, IpAddress, Protocol, ServerState,
    };
    pub(crate) use selector::{Selector as SelectorWorld, SelectorPre};
}

/// `vipd:policy@0.1.0`: IPv4 addresses only, as `u32`.
pub(crate) mod v0_1 {
    pub(crate) mod selector {
        wasmtime::component::bindgen!({
            path: "../wit/0.1.0",
            world: "selector",
        });
    }

    pub(crate) mod binder {
        wasmtime::component::bindgen!({
            path: "../wit/0.1.0",
            world: "binder",
            with: {
                "vipd:policy/types": super::selector::vipd::policy::types,
                "vipd:policy/host": super::selector::vipd::policy::host,
            },
        });
    }

    pub(crate) use binder::exports::vipd::policy::binding as wit_binding;
    pub(crate) use binder::{Binder as BinderWorld, BinderPre};
    pub(crate) use selector::exports::vipd::policy::selection::SelectError;
    pub(crate) use selector::vipd::policy::host::{Host as HostFunctions, Level};
    pub(crate) use selector::vipd::policy::types::{
        Candidate, Connection, Host as Types, InitError, Protocol, ServerState,
    };
    pub(crate) use selector::{Selector as SelectorWorld, SelectorPre};
}

// Conversions from the host's types. Each version's generated types are their own, so each gets its own.

impl From<IpAddr> for v0_2::IpAddress {
    fn from(addr: IpAddr) -> v0_2::IpAddress {
        match addr {
            IpAddr::V4(a) => v0_2::IpAddress::Ipv4(a.to_bits()),
            IpAddr::V6(a) => {
                let bits = a.to_bits();
                v0_2::IpAddress::Ipv6(((bits >> 64) as u64, bits as u64))
            }
        }
    }
}

impl From<v0_2::IpAddress> for IpAddr {
    fn from(addr: v0_2::IpAddress) -> IpAddr {
        match addr {
            v0_2::IpAddress::Ipv4(a) => Ipv4Addr::from_bits(a).into(),
            v0_2::IpAddress::Ipv6((high, low)) => {
                Ipv6Addr::from_bits(u128::from(high) << 64 | u128::from(low)).into()
            }
        }
    }
}

/// An address as 0.1.0 carries it; `None` for IPv6, which it cannot carry ([`super::supports`]).
pub(crate) fn ipv4(addr: IpAddr) -> Option<u32> {
    match addr {
        IpAddr::V4(a) => Some(a.to_bits()),
        IpAddr::V6(_) => None,
    }
}

macro_rules! enum_conversions {
    ($($v:ident),*) => {$(
        impl From<Protocol> for $v::Protocol {
            fn from(p: Protocol) -> $v::Protocol {
                match p {
                    Protocol::Tcp => $v::Protocol::Tcp,
                    Protocol::Udp => $v::Protocol::Udp,
                }
            }
        }

        impl From<$v::Protocol> for Protocol {
            fn from(p: $v::Protocol) -> Protocol {
                match p {
                    $v::Protocol::Tcp => Protocol::Tcp,
                    $v::Protocol::Udp => Protocol::Udp,
                }
            }
        }

        impl From<ServerState> for $v::ServerState {
            fn from(s: ServerState) -> $v::ServerState {
                match s {
                    ServerState::Up => $v::ServerState::Up,
                    ServerState::Draining => $v::ServerState::Draining,
                    ServerState::Failed => $v::ServerState::Failed,
                }
            }
        }
    )*};
}

enum_conversions!(v0_1, v0_2);
