//! What the packet path counts, and the [`Snapshot`] of it that other threads read.
//!
//! Counters are plain integers written by the data-path thread only. Every label list (drop reasons, what
//! became of a frame) is derived from its enum, so a new variant is counted and exported without a second
//! list to keep. [`Director::tick`] publishes a copy every [`PUBLISH_INTERVAL`] through an [`ArcSwap`]: the
//! readers (metrics, admin API) load it without a lock and never hold up the data path.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use strum::{EnumCount, IntoStaticStr, VariantArray};

use super::{Director, NoticeResult, RealLive};
use crate::binding::BindingTable;
use crate::conntable::Connection;
use crate::{Sides, wire};

/// How often [`Director::tick`] publishes a [`Snapshot`] (cloning it allocates; scrapes are seconds apart).
pub(super) const PUBLISH_INTERVAL: Duration = Duration::from_millis(250);

/// Why a frame was not forwarded. One variant per reason; each is a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumCount, VariantArray, IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum DropReason {
    NotIp,
    ExtensionHeader,
    Truncated,
    BadIpHeader,
    BadIpChecksum,
    Fragment,
    UnsupportedProtocol,
    BadTcpHeader,
    BadUdpHeader,
    BadIcmp,
    /// A frame that would create a connection (a SYN, a first UDP datagram) with a wrong TCP/UDP checksum.
    BadChecksum,
    /// A TCP segment whose flags no connection can have: SYN with RST or FIN (conntrack calls it invalid).
    BadTcpFlags,
    /// A unicast frame addressed to another host's MAC (the capture is promiscuous: a bridge flooding a
    /// frame for a host whose port it has not learned, or for another director on the segment).
    OtherHost,
    /// A standby director (`[sync]`, `vipd ha standby`) forwards nothing and answers nothing on the outside;
    /// it only learns the real servers' MACs from ARP and neighbour discovery on the inside.
    Standby,
    /// From the outside, to an address that is no virtual machine.
    NotVirtual,
    /// Not a connection-opening packet and no connection object matches.
    NoConnection,
    /// A SYN or datagram to a port the virtual machine does not support (answered with RST or ICMP).
    UnsupportedPort,
    /// No eligible server for the virtual port (answered with RST).
    NoServer,
    /// The connection table is full of live connections (answered with RST).
    TableFull,
    /// The real server would see two connections with the same addresses and ports.
    Collision,
    /// The real server's MAC address is not known yet; an ARP request went out instead.
    NoNeighbour,
    /// ARP or ICMP the director does not answer, or a SYN repeated on a connection the SYN proxy opened.
    Ignored,
    /// An ACK with no connection, while the SYN proxy is on, that acknowledges no valid SYN cookie: not
    /// the end of a handshake the director answered (a spoofed or stale ACK, an ACK flood).
    BadCookie,
    /// A client's frame on a connection the SYN proxy opened whose server has not answered yet (a zero
    /// window probe, a repeated ACK); it paces the director's SYN retransmissions to the server.
    AwaitingServer,
    /// A SYN, first datagram or cookie-completing ACK (a new connection) not served because the data path was behind and this wake-up's
    /// `new_per_wakeup` were used up: new-connection work is shed before frames of existing connections.
    Shed,
}

impl DropReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl From<wire::Error> for DropReason {
    fn from(e: wire::Error) -> DropReason {
        match e {
            wire::Error::NotIp => DropReason::NotIp,
            wire::Error::Truncated => DropReason::Truncated,
            wire::Error::BadIpHeader => DropReason::BadIpHeader,
            wire::Error::BadIpChecksum => DropReason::BadIpChecksum,
            wire::Error::Fragment => DropReason::Fragment,
            wire::Error::ExtensionHeader => DropReason::ExtensionHeader,
            wire::Error::UnsupportedProtocol => DropReason::UnsupportedProtocol,
            wire::Error::BadTcpHeader => DropReason::BadTcpHeader,
            wire::Error::BadUdpHeader => DropReason::BadUdpHeader,
            wire::Error::BadIcmp => DropReason::BadIcmp,
        }
    }
}

/// A count per [`DropReason`], indexed by `reason as usize`.
pub type PerReason = [u64; DropReason::COUNT];

/// Counters of the packet path. Written by the data-path thread only; read through [`Director::published`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames and bytes received on each interface.
    pub rx_frames: Sides<u64>,
    pub rx_bytes: Sides<u64>,
    /// Frames forwarded out of each interface (translated), and generated frames sent (RST, ICMP, ARP).
    pub forwarded: Sides<u64>,
    pub generated: Sides<u64>,
    /// By the interface the frame came in on and [`DropReason`].
    pub drops: Sides<PerReason>,
    /// Connection attempts answered with RST or ICMP, by [`DropReason`] (unsupported port, no server, ...).
    pub refused: PerReason,
    pub connections_created: u64,
    pub syn_resends: u64,
    /// SYNs repeated sooner than a retransmission, or after the server's SYN-ACK: forwarded, not resends.
    pub syn_duplicates: u64,
    /// SYN proxy: SYNs answered with a cookie, and handshakes completed with a valid one (each opened a
    /// connection to a server). Invalid cookies are drops for [`DropReason::BadCookie`].
    pub syn_cookies_sent: u64,
    pub syn_cookies_accepted: u64,
    /// New connections a shadow policy was not asked about: its queue was full, or the port had more
    /// candidates than a job carries.
    pub shadow_dropped: u64,
    pub evicted_half_open: u64,
    pub evicted_closing: u64,
    pub expired: u64,
    /// Frames received on each interface, by what became of them ([`Handled`]).
    pub handled: Sides<[u64; Handled::COUNT]>,
    /// Bytes sent out of each interface by [`Director::handle`] (forwarded and generated frames).
    pub tx_bytes: Sides<u64>,
    /// Connections ditched by their server: no SYN-ACK after `syn_retries` resends, or an RST to the SYN.
    pub ditched: u64,
    /// Ditched connections given to another server.
    pub reselected: u64,
    /// Trial connections given to a failed server after its `retry_after`.
    pub trials: u64,
    /// Real server state changes, and those dropped from a full event queue before anyone drained them.
    pub state_changes: u64,
    pub events_lost: u64,
    /// Notices to policies about the connections they placed, by what became of them ([`NoticeResult`]).
    pub notices: [u64; NoticeResult::COUNT],
    /// Connection sync: peers' records put into the table (created, updated or deleted), and records
    /// dropped on this side (unknown port or real server, a full queue), by [`crate::sync::Dropped`].
    pub sync_installed: u64,
    /// `[cluster]`: server replies translated by the binding table, no connection object having them
    /// (the SYN went through another director); connections made established by the client's ACK, their
    /// server's SYN-ACK having gone through another director.
    pub cluster_returns: u64,
    pub cluster_client_established: u64,
    /// Flows the router moved here that a peer's record placed (the first client frame of a connection
    /// installed by sync).
    pub cluster_moved_synced: u64,
    /// `[cluster]`: flows the router moved here that no peer's record had, placed by the port's consistent
    /// policy.
    pub cluster_moved_policy: u64,
    /// `[cluster]`: frames of moved flows not placed, because the consistent policy did not answer itself
    /// (it failed or deferred, and a fallback would pick what other directors would not): dropped, for the
    /// client's retransmission to try again.
    pub cluster_moved_unplaced: u64,
    pub sync_dropped: crate::sync::PerDropped,
    /// `[director] offload`: connections handed to the kernel, and those kept here because its flow map
    /// was full or it refused them; frames the kernel translated, by the interface they arrived on (also
    /// in `rx_frames`, `forwarded` and the byte counts).
    pub offloaded: u64,
    pub offload_full: u64,
    pub offload_failed: u64,
    pub offload_frames: Sides<u64>,
}

impl Counters {
    /// Frames dropped for `reason`, both interfaces together.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops
            .iter()
            .map(|(_, side)| side[reason as usize])
            .sum()
    }
}

/// What became of a received frame: the `result` label of `vipd_packets_total{direction="in"}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumCount, VariantArray, IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Handled {
    Forwarded,
    Replied,
    Dropped,
    Consumed,
}

impl Handled {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Connections of one (virtual port, real server) pair: the labels of `vipd_connections_*`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCount {
    /// Connection objects in the table now.
    pub active: u32,
    /// Connections created since start (kept across reloads while the pair exists).
    pub total: u64,
    /// SYNs resent by clients of this pair.
    pub syn_resends: u64,
}

/// A copy of the director's state for metrics and the admin API, published by [`Director::tick`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub now: Duration,
    pub counters: Counters,
    pub reals: Vec<RealLive>,
    pub connections: usize,
    pub capacity: usize,
    /// The binding table in force: names for the indexes below.
    pub bindings: Arc<BindingTable>,
    /// Indexed by `port_id * reals.len() + real_id` (see [`Snapshot::flow`]).
    pub flows: Vec<FlowCount>,
    /// Refused connection attempts per virtual machine (`virtual_id`), by [`DropReason`].
    pub rejected: Vec<PerReason>,
    /// The install `bindings` belong to: shadow counts of the same generation name the same ports.
    pub shadow_generation: u64,
    /// `[director] offload`: how it runs (`native` or `generic` XDP), connections in the kernel now, and
    /// what the program did with the frames it saw, by interface and verdict.
    pub offload_mode: Option<&'static str>,
    pub offloaded_now: usize,
    pub offload_verdicts: Vec<(crate::Interface, &'static str, u64)>,
}

impl Snapshot {
    /// The counts of (virtual port `port_id`, real server `real_id`).
    pub fn flow(&self, port_id: usize, real_id: usize) -> FlowCount {
        self.flows
            .get(port_id * self.reals.len() + real_id)
            .copied()
            .unwrap_or_default()
    }
}

/// Where the data path publishes its [`Snapshot`]; readers `load()` it without a lock.
pub type Published = Arc<ArcSwap<Snapshot>>;

impl Director {
    /// Where [`Director::tick`] publishes its [`Snapshot`] for other threads.
    pub fn published(&self) -> Published {
        Arc::clone(&self.published)
    }

    /// Publishes a [`Snapshot`] now (after an operator command, so a read after the write sees it).
    pub fn publish_now(&mut self, now: Duration) {
        self.publish(now);
    }

    /// Publishes when one is due: after a change that readers must see, or every [`PUBLISH_INTERVAL`].
    pub(super) fn publish_if_due(&mut self, now: Duration) {
        if self.publish_due
            || self
                .published_at
                .is_none_or(|t| now >= t + PUBLISH_INTERVAL)
        {
            self.publish(now);
        }
    }

    fn publish(&mut self, now: Duration) {
        self.published_at = Some(now);
        self.publish_due = false;
        self.published.store(Arc::new(Snapshot {
            now,
            counters: self.counters.clone(),
            reals: self.reals.clone(),
            connections: self.table.len(),
            capacity: self.table.capacity(),
            bindings: Arc::clone(&self.bindings),
            flows: self.flows.clone(),
            rejected: self.rejected.clone(),
            shadow_generation: self.shadow_generation,
            offload_mode: self.offload.as_deref().map(|o| o.mode()),
            offloaded_now: self.offload.as_deref().map_or(0, |o| o.held()),
            offload_verdicts: self
                .offload
                .as_deref_mut()
                .map(|o| o.verdicts())
                .unwrap_or_default(),
        }));
    }
}

/// A connection left the table: its server has one connection fewer.
pub(super) fn release(
    reals: &mut [RealLive],
    flows: &mut [FlowCount],
    offload: &mut Option<Box<dyn crate::offload::Offload>>,
    conn: &Connection,
) {
    if conn.offloaded
        && let Some(o) = offload
    {
        o.remove(conn);
    }
    if let Some(f) = flow_mut(flows, reals.len(), conn) {
        f.active = f.active.saturating_sub(1);
    }
    if let Some(r) = reals.get_mut(conn.real_id as usize) {
        r.active = r.active.saturating_sub(1);
        if conn.state == crate::conntable::ConnState::Closing {
            r.closing = r.closing.saturating_sub(1);
        }
    }
}

/// The counters of a connection's (virtual port, real server) pair, if both are still configured.
pub(super) fn flow_mut<'a>(
    flows: &'a mut [FlowCount],
    reals: usize,
    conn: &Connection,
) -> Option<&'a mut FlowCount> {
    if conn.port_id == u32::MAX || conn.real_id as usize >= reals {
        return None;
    }
    flows.get_mut(conn.port_id as usize * reals + conn.real_id as usize)
}
