//! Write vipd policies as WebAssembly components, against the policy interface `vipd:policy@0.2.0` (`wit/`):
//! addresses of either family ([`IpAddress`], which converts to and from `std::net::IpAddr`), and the
//! notices [`Selector::connection_closed`] and [`Selector::connection_ditched`] delivered.
//!
//! A selector plugin is a type implementing [`Selector`] and one [`export_selector!`]:
//!
//! ```ignore
//! use vipd_plugin_sdk::{export_selector, Args, Candidate, Connection, InitError, SelectError, Selector};
//!
//! struct First;
//!
//! impl Selector for First {
//!     fn init(_args: &Args) -> Result<Self, InitError> {
//!         Ok(First)
//!     }
//!     fn select(&mut self, _conn: &Connection, candidates: &[Candidate]) -> Result<u32, SelectError> {
//!         candidates.iter().find(|c| c.eligible()).map(|c| c.index).ok_or(SelectError::NoServer)
//!     }
//! }
//!
//! export_selector!(First);
//! ```
//!
//! Build it with `cargo build --target wasm32-wasip2 --release`, check it with `vipd plugin check`, and drop the
//! `.wasm` into vipd's plugins folder. A binding plugin implements [`Binder`] with [`export_binder!`] and turns on
//! this crate's `binder` feature instead of `selector` (one world per component).
//!
//! The decision logic should be a plain function over [`Candidate`]s, so it can be unit-tested natively with
//! `cargo test`; the host functions in [`host`] only work inside vipd.

extern crate self as vipd_plugin_sdk;

pub mod maglev;
pub mod rr;

mod args;
pub use args::Args;

#[cfg(not(any(feature = "selector", feature = "binder")))]
compile_error!("vipd-plugin-sdk: enable the `selector` or the `binder` feature");

/// Bindings generated from `wit/` for the `selector` world.
#[cfg(feature = "selector")]
#[doc(hidden)]
pub mod selector_bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "selector",
        pub_export_macro: true,
        export_macro_name: "__export_selector_world",
        default_bindings_module: "::vipd_plugin_sdk::selector_bindings",
        runtime_path: "::vipd_plugin_sdk::__private::wit_bindgen::rt",
        additional_derives: [PartialEq, Eq, Hash],
    });
}

/// Bindings generated from `wit/` for the `binder` world.
#[cfg(all(feature = "binder", not(feature = "selector")))]
#[doc(hidden)]
pub mod binder_bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "binder",
        pub_export_macro: true,
        export_macro_name: "__export_binder_world",
        default_bindings_module: "::vipd_plugin_sdk::binder_bindings",
        runtime_path: "::vipd_plugin_sdk::__private::wit_bindgen::rt",
        additional_derives: [PartialEq, Eq, Hash],
    });
}

/// Bindings generated from `wit/` for the `binder` world, sharing the selector's types (both features on,
/// which happens in a native workspace build; a component must have one world only).
#[cfg(all(feature = "binder", feature = "selector"))]
#[doc(hidden)]
pub mod binder_bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "binder",
        pub_export_macro: true,
        export_macro_name: "__export_binder_world",
        default_bindings_module: "::vipd_plugin_sdk::binder_bindings",
        runtime_path: "::vipd_plugin_sdk::__private::wit_bindgen::rt",
        additional_derives: [PartialEq, Eq, Hash],
        with: {
            "vipd:policy/types@0.2.0": crate::selector_bindings::vipd::policy::types,
            "vipd:policy/host@0.2.0": crate::selector_bindings::vipd::policy::host,
        },
    });
}

#[cfg(feature = "selector")]
use selector_bindings::vipd::policy as wit;

#[cfg(all(feature = "binder", not(feature = "selector")))]
use binder_bindings::vipd::policy as wit;

pub use wit::types::{Candidate, Connection, InitError, IpAddress, Protocol, ServerState};

#[cfg(feature = "selector")]
pub use selector_bindings::exports::vipd::policy::selection::SelectError;

#[cfg(feature = "binder")]
pub use binder_bindings::exports::vipd::policy::binding::{
    BindError, Binding, RealInfo, VirtualMachineInfo, VirtualPort,
};

/// Not part of the API: used by the export macros.
#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    #[cfg(feature = "binder")]
    pub use crate::binder_bindings::exports::vipd::policy::binding::Guest as BindingGuest;
    #[cfg(feature = "selector")]
    pub use crate::selector_bindings::exports::vipd::policy::selection::Guest as SelectionGuest;
}

impl From<IpAddress> for std::net::IpAddr {
    fn from(addr: IpAddress) -> std::net::IpAddr {
        match addr {
            IpAddress::Ipv4(a) => std::net::Ipv4Addr::from_bits(a).into(),
            IpAddress::Ipv6((high, low)) => {
                std::net::Ipv6Addr::from_bits(u128::from(high) << 64 | u128::from(low)).into()
            }
        }
    }
}

impl From<std::net::IpAddr> for IpAddress {
    fn from(addr: std::net::IpAddr) -> IpAddress {
        match addr {
            std::net::IpAddr::V4(a) => IpAddress::Ipv4(a.to_bits()),
            std::net::IpAddr::V6(a) => {
                let bits = a.to_bits();
                IpAddress::Ipv6(((bits >> 64) as u64, bits as u64))
            }
        }
    }
}

impl From<std::net::Ipv4Addr> for IpAddress {
    fn from(addr: std::net::Ipv4Addr) -> IpAddress {
        IpAddress::Ipv4(addr.to_bits())
    }
}

impl From<std::net::Ipv6Addr> for IpAddress {
    fn from(addr: std::net::Ipv6Addr) -> IpAddress {
        std::net::IpAddr::from(addr).into()
    }
}

impl Candidate {
    /// Whether the host accepts this candidate as an answer: `up` with a weight above 0.
    pub fn eligible(&self) -> bool {
        self.state == ServerState::Up && self.weight > 0
    }

    /// The real server's address.
    pub fn ip(&self) -> std::net::IpAddr {
        self.addr.into()
    }

    /// Where the connection would go.
    pub fn target(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.ip(), self.port)
    }
}

impl Connection {
    /// The client's address and port.
    pub fn client(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.client_addr.into(), self.client_port)
    }

    /// The virtual address and port the client asked for.
    pub fn virtual_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.virtual_addr.into(), self.virtual_port)
    }

    /// Whether this is the host's warm-up call rather than a client: before an instance takes traffic
    /// the host calls `select` once with the port's candidates and a connection from the unspecified
    /// address (`0.0.0.0` or `::`) and port 0, under the init deadline (50 times a call's), and does not
    /// use the answer. Build there what the candidates need (a consistent-hashing table), so the first
    /// client is answered as every later one, and as every other director answers it. Later warm-up
    /// calls, with a call's deadline, keep the plugin's code in the CPU's caches between connections
    /// (`[director] plugin_keep_warm`): answer them as cheaply as a client.
    pub fn is_warm_up(&self) -> bool {
        self.client_port == 0 && std::net::IpAddr::from(self.client_addr).is_unspecified()
    }
}

/// A server selection policy. The host keeps one instance per virtual port and calls [`Selector::select`]
/// once per new connection.
#[cfg(feature = "selector")]
pub trait Selector: Sized + 'static {
    /// Builds the policy from the `policy_args` of the configuration.
    fn init(args: &Args) -> Result<Self, InitError>;

    /// Picks the `index` of one eligible candidate (see [`Candidate::eligible`]).
    fn select(&mut self, conn: &Connection, candidates: &[Candidate]) -> Result<u32, SelectError>;

    /// A connection this instance placed on `real_id` (its own `select` answer) ended there: closed after
    /// a FIN or RST, expired idle, or evicted. Called between the host's packet batches, so a little after
    /// the fact; not called when the instance was replaced in between (new version, reload, trap) or the
    /// host's queue of notices was full, so do not count on it for exact bookkeeping ([`Candidate`]'s
    /// `active` and `total` are exact at every `select`). Default: ignored.
    fn connection_closed(&mut self, _conn: &Connection, _real_id: u32) {}

    /// A connection this instance placed on `real_id` was ditched by it: the SYN went unanswered
    /// `syn_retries` times or was refused with an RST. Ends the placement: no `connection_closed` follows
    /// for it. Delivered like [`Selector::connection_closed`]. Default: ignored.
    fn connection_ditched(&mut self, _conn: &Connection, _real_id: u32) {}

    /// Real server `real_id` changed state. Default: ignored.
    fn server_state_changed(&mut self, _real_id: u32, _state: ServerState) {}
}

/// A binding policy: lays out a virtual machine's ports over the real servers.
#[cfg(feature = "binder")]
pub trait Binder: Sized + 'static {
    /// Builds the policy from the `binder_args` of the configuration.
    fn init(args: &Args) -> Result<Self, InitError>;

    /// The bindings for one virtual machine.
    fn bind(
        &mut self,
        vm: &VirtualMachineInfo,
        reals: &[RealInfo],
    ) -> Result<Vec<Binding>, BindError>;
}

/// Exports a [`Selector`] type as the component's `selection` interface.
#[cfg(feature = "selector")]
#[macro_export]
macro_rules! export_selector {
    ($ty:ty) => {
        const _: () = {
            ::std::thread_local! {
                static STATE: ::core::cell::RefCell<::core::option::Option<$ty>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }
            #[allow(dead_code)]
            struct __VipdSelector;
            impl $crate::__private::SelectionGuest for __VipdSelector {
                fn init(
                    args: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                ) -> ::core::result::Result<(), $crate::InitError> {
                    let policy = <$ty as $crate::Selector>::init(&$crate::Args::new(args))?;
                    STATE.with(|s| *s.borrow_mut() = ::core::option::Option::Some(policy));
                    Ok(())
                }
                fn select(
                    conn: $crate::Connection,
                    candidates: ::std::vec::Vec<$crate::Candidate>,
                ) -> ::core::result::Result<u32, $crate::SelectError> {
                    STATE.with(|s| match s.borrow_mut().as_mut() {
                        ::core::option::Option::Some(p) => {
                            $crate::Selector::select(p, &conn, &candidates)
                        }
                        ::core::option::Option::None => Err($crate::SelectError::Defer),
                    })
                }
                fn connection_closed(conn: $crate::Connection, real_id: u32) {
                    STATE.with(|s| {
                        if let ::core::option::Option::Some(p) = s.borrow_mut().as_mut() {
                            $crate::Selector::connection_closed(p, &conn, real_id)
                        }
                    })
                }
                fn connection_ditched(conn: $crate::Connection, real_id: u32) {
                    STATE.with(|s| {
                        if let ::core::option::Option::Some(p) = s.borrow_mut().as_mut() {
                            $crate::Selector::connection_ditched(p, &conn, real_id)
                        }
                    })
                }
                fn server_state_changed(real_id: u32, state: $crate::ServerState) {
                    STATE.with(|s| {
                        if let ::core::option::Option::Some(p) = s.borrow_mut().as_mut() {
                            $crate::Selector::server_state_changed(p, real_id, state)
                        }
                    })
                }
            }
            // Native builds (unit tests) export nothing: the Wasm export names are no valid native symbols.
            #[cfg(target_family = "wasm")]
            $crate::selector_bindings::__export_selector_world!(__VipdSelector);
        };
    };
}

/// Exports a [`Binder`] type as the component's `binding` interface.
#[cfg(feature = "binder")]
#[macro_export]
macro_rules! export_binder {
    ($ty:ty) => {
        const _: () = {
            ::std::thread_local! {
                static STATE: ::core::cell::RefCell<::core::option::Option<$ty>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }
            #[allow(dead_code)]
            struct __VipdBinder;
            impl $crate::__private::BindingGuest for __VipdBinder {
                fn init(
                    args: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                ) -> ::core::result::Result<(), $crate::InitError> {
                    let policy = <$ty as $crate::Binder>::init(&$crate::Args::new(args))?;
                    STATE.with(|s| *s.borrow_mut() = ::core::option::Option::Some(policy));
                    Ok(())
                }
                fn bind(
                    vm: $crate::VirtualMachineInfo,
                    reals: ::std::vec::Vec<$crate::RealInfo>,
                ) -> ::core::result::Result<::std::vec::Vec<$crate::Binding>, $crate::BindError>
                {
                    STATE.with(|s| match s.borrow_mut().as_mut() {
                        ::core::option::Option::Some(p) => $crate::Binder::bind(p, &vm, &reals),
                        ::core::option::Option::None => {
                            Err($crate::BindError::Other("bind called before init".into()))
                        }
                    })
                }
            }
            // Native builds (unit tests) export nothing: the Wasm export names are no valid native symbols.
            #[cfg(target_family = "wasm")]
            $crate::binder_bindings::__export_binder_world!(__VipdBinder);
        };
    };
}

/// What the host gives a plugin: log, clock, randomness and plugin-defined metrics. Inside vipd only: called
/// from a native test these panic, so keep them out of the decision functions you unit-test.
pub mod host {
    use crate::wit::host as raw;

    pub use raw::Level;

    /// Writes a line to vipd's log, tagged with the plugin's name.
    pub fn log(level: Level, message: &str) {
        raw::log(level, message)
    }

    /// Monotonic microseconds since the host started.
    pub fn now_us() -> u64 {
        raw::now_us()
    }

    /// A random number (not for cryptography).
    pub fn random_u64() -> u64 {
        raw::random_u64()
    }

    /// Adds to the plugin-defined counter `name` (`vipd_plugin_metric{plugin, name}`).
    pub fn counter_add(name: &str, delta: u64) {
        raw::counter_add(name, delta)
    }

    /// Sets the plugin-defined gauge `name` (`vipd_plugin_metric{plugin, name}`).
    pub fn gauge_set(name: &str, value: f64) {
        raw::gauge_set(name, value)
    }

    /// The configured name of real server `real_id` (a [`Candidate`](crate::Candidate)'s `real_id`), for
    /// the plugin's own logs and metrics; `None` for an unknown id. Copies a string: ask once and keep it.
    pub fn real_name(real_id: u32) -> Option<String> {
        raw::real_name(real_id)
    }
}

/// Builders for native unit tests of decision logic.
pub mod testing {
    use crate::{Candidate, Connection, IpAddress, Protocol, ServerState};

    /// Candidate at position `index` (also its real id), 10.0.0.(index+1):80, nothing open, not measured.
    pub fn candidate(index: u32, weight: u32, state: ServerState) -> Candidate {
        Candidate {
            index,
            real_id: index,
            addr: IpAddress::Ipv4(u32::from(std::net::Ipv4Addr::new(10, 0, 0, 1)) + index),
            port: 80,
            weight,
            state,
            active: 0,
            total: 0,
            syn_rtt_us: 0,
            ditched: 0,
        }
    }

    /// A TCP connection from `client` port 40000 to 192.0.2.1:80.
    pub fn connection(client: impl Into<std::net::IpAddr>) -> Connection {
        Connection {
            client_addr: client.into().into(),
            client_port: 40000,
            virtual_addr: std::net::Ipv4Addr::new(192, 0, 2, 1).into(),
            virtual_port: 80,
            protocol: Protocol::Tcp,
            virtual_id: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::*;

    /// Both families convert to the WIT address in host order (IPv6 as high and low halves) and back.
    #[test]
    fn addresses_convert_both_ways() {
        assert_eq!(
            IpAddress::from(Ipv4Addr::new(192, 0, 2, 1)),
            IpAddress::Ipv4(0xc000_0201)
        );
        let v6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
        assert_eq!(
            IpAddress::from(v6),
            IpAddress::Ipv6((0x2001_0db8_0000_0000, 1))
        );
        for a in [IpAddr::from(Ipv4Addr::new(10, 0, 0, 1)), IpAddr::from(v6)] {
            assert_eq!(IpAddr::from(IpAddress::from(a)), a);
        }
        let c = testing::connection(v6);
        assert_eq!(c.client(), "[2001:db8::1]:40000".parse().unwrap());
    }
}
