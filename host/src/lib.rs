//! vipd: a programmable Layer-4 director after US 6,061,349 ("multiple IP addresses on multiple ports").
//!
//! # Layout
//!
//! Pure parts (no I/O, no clock: `now` is always a parameter):
//! - [`wire`]: Ethernet/IPv4/TCP/UDP/ICMP/ARP parsing on borrowed bytes, in-place NAT rewrites with
//!   incremental checksums, and builders for the frames the director generates (RST, ICMP, ARP).
//! - [`config`]: the TOML configuration users write, validated with file, line and key in every error.
//! - [`binding`]: the virtual machines, real servers and port bindings compiled from a config
//!   (patent FIGS. 4A, 4B, 6A, 6B, 6D): which virtual ports exist and which real ports serve them.
//! - [`conntable`]: the connection objects (patent FIG. 6C), found by hash in both directions.
//! - [`syncookie`]: the SYN cookies of the SYN proxy (`[director] syn_proxy`): stateless handshakes.
//! - [`policy`]: the session distribution seam ([`policy::Selector`]) and the built-in policies.
//! - [`director`]: one frame and `now` in, a [`director::Verdict`] out; one job per file:
//!   `director/path.rs` the packet path (patent FIGS. 7, 8, 9), `director/select.rs` how a SYN picks a
//!   server (FIG. 5), `director/reals.rs` real-server state and failure handling (FIG. 6B),
//!   `director/synproxy.rs` the SYN proxy (handshakes answered with cookies, then joined to the server's),
//!   `director/neighbours.rs` ARP, `director/stats.rs` counters and the published snapshot,
//!   `director/install.rs` bindings put in place at start and reload.
//! - [`status`]: the `/status` document, shared by the admin server and `vipd status`.
//!
//! Assembly, the one way a config becomes a director:
//! - [`assemble`]: config, bindings, binder plugins and one selector per virtual port (a plugin or a
//!   built-in); `vipd run`, `vipd replay`, `vipd check`, the benchmarks and the fuzzer all use it.
//!
//! I/O at the edge:
//! - [`capture`]: libpcap on the outside and inside interfaces, one thread polling both, batches per wake-up.
//! - [`ifcheck`]: start-up checks of the interfaces (present, up, offloads off) and of `ip_forward`.
//! - [`plugin`]: the WebAssembly plugin host (wasmtime): selection and binding policies, sandboxed, hot reloaded.
//! - [`replay`]: drives the director from pcap files and writes what it sends to pcap files.
//! - [`shadow`]: shadow policies: asked beside the live policy off the data-path thread, answers counted.
//! - [`sync`]: connection sync between directors (`[sync]`): the datagram format, and the `vipd-sync`
//!   thread that batches the data path's records to the peers and hands theirs back to be installed.
//! - [`compare`]: `vipd replay --policy`: the same capture through several policies, side by side.
//! - [`health`]: active health checks (TCP connect, HTTP GET), one thread per checked real server; their
//!   verdicts reach the director between batches.
//! - [`daemon`]: `vipd run`, the live director: config, interface checks, signals, reload.
//! - [`privileges`]: the capabilities `vipd run` needs (CAP_NET_RAW; CAP_NET_ADMIN for `--fix-offloads`).
//! - [`service`]: systemd readiness and watchdog, from the data-path thread.
//! - [`metrics`]: Prometheus rendering of the director's published snapshot.
//! - [`admin`]: the HTTP server on `[director] listen`: `/metrics`, `/status`, `/connections`, operator
//!   commands to the data path.
//!
//! Imports point one way: the pure parts import no I/O module, and no two modules import each other.
//!
//! # The path of a packet
//!
//! A frame from the outside interface is parsed by [`wire`], looked up in the [`conntable`] by
//! (client, virtual address); a SYN with no connection asks [`binding`] whether the virtual port exists and
//! the port's [`policy::Selector`] which real server takes it. The frame's destination is rewritten in place
//! to the real server and it leaves on the inside interface. A frame from the inside interface is looked up by
//! (real server, client) and its source is rewritten back to the virtual address before it leaves outside.

pub mod admin;
pub mod announce;
pub mod assemble;
pub mod binding;
pub mod capture;
pub mod compare;
pub mod config;
pub mod conntable;
pub mod daemon;
pub mod director;
pub mod health;
pub mod ifcheck;
pub mod metrics;
pub mod offload;
pub mod plugin;
pub mod policy;
pub mod privileges;
pub mod replay;
pub mod service;
pub mod shadow;
pub mod status;
pub mod sync;
pub mod syncookie;
pub mod wire;

/// The two sides of the director.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Interface {
    /// Faces the clients; virtual addresses live here.
    Outside,
    /// Faces the real servers.
    Inside,
}

impl Interface {
    /// The interface a translated frame leaves by.
    pub fn other(self) -> Interface {
        match self {
            Interface::Outside => Interface::Inside,
            Interface::Inside => Interface::Outside,
        }
    }

    /// The name used in config keys, metric labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Interface::Outside => "outside",
            Interface::Inside => "inside",
        }
    }
}

/// One `T` for each side of the director, indexed by [`Interface`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Sides<T> {
    pub outside: T,
    pub inside: T,
}

impl<T> Sides<T> {
    pub const fn new(outside: T, inside: T) -> Sides<T> {
        Sides { outside, inside }
    }

    /// Both sides, outside first.
    pub fn iter(&self) -> impl Iterator<Item = (Interface, &T)> {
        [
            (Interface::Outside, &self.outside),
            (Interface::Inside, &self.inside),
        ]
        .into_iter()
    }

    /// Both sides, outside first, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (Interface, &mut T)> {
        [
            (Interface::Outside, &mut self.outside),
            (Interface::Inside, &mut self.inside),
        ]
        .into_iter()
    }

    pub fn map<U>(self, mut f: impl FnMut(Interface, T) -> U) -> Sides<U> {
        Sides {
            outside: f(Interface::Outside, self.outside),
            inside: f(Interface::Inside, self.inside),
        }
    }
}

impl<T> std::ops::Index<Interface> for Sides<T> {
    type Output = T;

    fn index(&self, side: Interface) -> &T {
        match side {
            Interface::Outside => &self.outside,
            Interface::Inside => &self.inside,
        }
    }
}

impl<T> std::ops::IndexMut<Interface> for Sides<T> {
    fn index_mut(&mut self, side: Interface) -> &mut T {
        match side {
            Interface::Outside => &mut self.outside,
            Interface::Inside => &mut self.inside,
        }
    }
}
