//! The packet path (patent FIGS. 5, 7, 8 and 9): one frame and `now` in, a [`Verdict`] out.
//!
//! The director owns the connection table, the live state of every real server and its neighbour (MAC)
//! entries, and one [`Selector`] per virtual port. It is driven by one thread: the live capture loop, the pcap
//! replay, a test or a fuzzer, all the same way. Pure: no I/O, no clock, no allocation per packet, no lock.
//!
//! - From the outside: ARP requests for virtual addresses are answered; a frame to a virtual address is
//!   looked up by (client, virtual address); a SYN with no connection asks [`BindingTable::lookup`] whether the
//!   port is supported (no: RST, or ICMP port unreachable for UDP) and the port's selector for a server; the
//!   destination is rewritten to the real server and the frame leaves on the inside.
//! - From the inside: ARP answers refresh the neighbour table; a frame from a real server is looked up by
//!   (real server, client), its source is rewritten to the virtual address and it leaves on the outside,
//!   addressed to the MAC the client's frames came from.
//! - ICMP errors that belong to a connection are translated both ways, embedded header included.
//!
//! What fails: every frame that cannot be translated is dropped with a [`DropReason`] and counted; nothing on
//! this path panics on packet bytes.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hashbrown::HashMap;

use crate::Interface;
use crate::binding::{BindingTable, Lookup};
use crate::config::Config;
use crate::conntable::{ConnId, ConnState, ConnTable, Connection, InsertError};
use crate::policy::{Candidate, NewConnection, RoundRobin, Selection, Selector, ServerState};
use crate::wire::{self, ArpOp, Icmp, Packet, Protocol, TcpFlags, Transport};

/// Largest frame the director generates (an ICMP echo reply to a full-size request).
const REPLY_CAPACITY: usize = 2048;
/// How often a resolved neighbour entry is refreshed by a new ARP request.
const NEIGHBOUR_REFRESH: Duration = Duration::from_secs(30);
/// How often an unresolved neighbour is asked again.
const NEIGHBOUR_RETRY: Duration = Duration::from_secs(1);
/// Gratuitous ARP for virtual addresses this often after start or reload, this many times.
const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(1);
const ANNOUNCE_COUNT: u8 = 3;
/// Connections examined per tick at most, so a tick never stalls the data path.
const EXPIRE_BUDGET: usize = 4096;
/// How often [`Director::tick`] publishes a [`Snapshot`] (cloning it allocates; scrapes are seconds apart).
const PUBLISH_INTERVAL: Duration = Duration::from_millis(250);

/// Why a frame was not forwarded. One variant per reason; each is a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    NotIpv4,
    Truncated,
    BadIpHeader,
    BadIpChecksum,
    Fragment,
    UnsupportedProtocol,
    BadTcpHeader,
    BadUdpHeader,
    BadIcmp,
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
    /// ARP or ICMP the director does not answer.
    Ignored,
}

impl DropReason {
    pub const ALL: [DropReason; 17] = [
        DropReason::NotIpv4,
        DropReason::Truncated,
        DropReason::BadIpHeader,
        DropReason::BadIpChecksum,
        DropReason::Fragment,
        DropReason::UnsupportedProtocol,
        DropReason::BadTcpHeader,
        DropReason::BadUdpHeader,
        DropReason::BadIcmp,
        DropReason::NotVirtual,
        DropReason::NoConnection,
        DropReason::UnsupportedPort,
        DropReason::NoServer,
        DropReason::TableFull,
        DropReason::Collision,
        DropReason::NoNeighbour,
        DropReason::Ignored,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::NotIpv4 => "not_ipv4",
            DropReason::Truncated => "truncated",
            DropReason::BadIpHeader => "bad_ip_header",
            DropReason::BadIpChecksum => "bad_ip_checksum",
            DropReason::Fragment => "fragment",
            DropReason::UnsupportedProtocol => "unsupported_protocol",
            DropReason::BadTcpHeader => "bad_tcp_header",
            DropReason::BadUdpHeader => "bad_udp_header",
            DropReason::BadIcmp => "bad_icmp",
            DropReason::NotVirtual => "not_virtual",
            DropReason::NoConnection => "no_connection",
            DropReason::UnsupportedPort => "unsupported_port",
            DropReason::NoServer => "no_server",
            DropReason::TableFull => "table_full",
            DropReason::Collision => "collision",
            DropReason::NoNeighbour => "no_neighbour",
            DropReason::Ignored => "ignored",
        }
    }
}

impl From<wire::Error> for DropReason {
    fn from(e: wire::Error) -> DropReason {
        match e {
            wire::Error::NotIpv4 => DropReason::NotIpv4,
            wire::Error::Truncated => DropReason::Truncated,
            wire::Error::BadIpHeader => DropReason::BadIpHeader,
            wire::Error::BadIpChecksum => DropReason::BadIpChecksum,
            wire::Error::Fragment => DropReason::Fragment,
            wire::Error::UnsupportedProtocol => DropReason::UnsupportedProtocol,
            wire::Error::BadTcpHeader => DropReason::BadTcpHeader,
            wire::Error::BadUdpHeader => DropReason::BadUdpHeader,
            wire::Error::BadIcmp => DropReason::BadIcmp,
        }
    }
}

/// What to do with a frame after [`Director::handle`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The frame was rewritten in place; send it out of this interface.
    Forward(Interface),
    /// A generated frame is in [`Director::reply`]; send it out of this interface. The original is dropped.
    Reply(Interface),
    /// The frame is dropped, for this reason.
    Drop(DropReason),
    /// The frame was for the director itself (an ARP answer) and has been taken in.
    Consumed,
}

/// The director's own Layer-2 identity on each side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layer2 {
    pub outside_mac: [u8; 6],
    pub inside_mac: [u8; 6],
    /// Sender address of ARP requests for real servers; `0.0.0.0` (an ARP probe) when the inside has none.
    pub inside_ip: Ipv4Addr,
}

/// Counters of the packet path. Written by the data-path thread only; read through [`Director::snapshot`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames and bytes received, by [`Interface`] (outside, inside).
    pub rx_frames: [u64; 2],
    pub rx_bytes: [u64; 2],
    /// Frames forwarded out of each interface (translated), and generated frames sent (RST, ICMP, ARP).
    pub forwarded: [u64; 2],
    pub generated: [u64; 2],
    /// By [`DropReason`], in the order of [`DropReason::ALL`].
    pub drops: [u64; DropReason::ALL.len()],
    /// Connection attempts answered with RST or ICMP, by [`DropReason`] (unsupported port, no server, ...).
    pub refused: [u64; DropReason::ALL.len()],
    pub connections_created: u64,
    pub syn_resends: u64,
    pub evicted_half_open: u64,
    pub evicted_closing: u64,
    pub expired: u64,
    /// Frames received on each [`Interface`], by what became of them: the index of [`Handled`].
    pub handled: [[u64; Handled::ALL.len()]; 2],
    /// Bytes sent out of each interface by [`Director::handle`] (forwarded and generated frames).
    pub tx_bytes: [u64; 2],
}

/// What became of a received frame: the `result` label of `vipd_packets_total{direction="in"}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handled {
    Forwarded,
    Replied,
    Dropped,
    Consumed,
}

impl Handled {
    pub const ALL: [Handled; 4] = [
        Handled::Forwarded,
        Handled::Replied,
        Handled::Dropped,
        Handled::Consumed,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Handled::Forwarded => "forwarded",
            Handled::Replied => "replied",
            Handled::Dropped => "dropped",
            Handled::Consumed => "consumed",
        }
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

/// Live state of one real server (patent FIG. 6B: state, ditched connections).
#[derive(Clone, Debug, PartialEq)]
pub struct RealLive {
    pub name: String,
    pub address: Ipv4Addr,
    pub state: ServerState,
    pub weight: u32,
    pub active: u32,
    pub total: u64,
    pub syn_rtt_us: u32,
    pub ditched: u32,
    /// Ditched connections since start: unlike `ditched`, never reset (the metric counter).
    pub ditched_total: u64,
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
    /// Refused connection attempts per virtual machine (`virtual_id`), by [`DropReason`] index.
    pub rejected: Vec<[u64; DropReason::ALL.len()]>,
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

#[derive(Clone, Copy, Debug)]
struct Neighbour {
    mac: Option<[u8; 6]>,
    /// When the MAC was last learned, or when it was last asked for while unknown.
    updated: Duration,
    asked: Duration,
    static_entry: bool,
}

/// The packet path. See the module documentation.
pub struct Director {
    bindings: Arc<BindingTable>,
    selectors: Vec<Box<dyn Selector>>,
    reals: Vec<RealLive>,
    neighbours: HashMap<Ipv4Addr, Neighbour>,
    table: ConnTable,
    l2: Layer2,
    syn_retries: u8,
    counters: Counters,
    /// Scratch for generated frames, and for the candidates of a new connection: reused, never reallocated.
    reply: Box<[u8]>,
    reply_len: usize,
    candidates: Vec<Candidate>,
    announce_left: u8,
    announce_next: Duration,
    published: Arc<Mutex<Snapshot>>,
    /// When the last snapshot was published, and whether one is due at the next tick regardless.
    published_at: Option<Duration>,
    publish_due: bool,
    /// Per (virtual port, real server): `port_id * reals.len() + real_id`; sized at install, never per packet.
    flows: Vec<FlowCount>,
    /// Per virtual machine, by [`DropReason`] index; sized at install.
    rejected: Vec<[u64; DropReason::ALL.len()]>,
}

impl Director {
    /// A director for `bindings`, with the built-in policy (or the given selectors, one per virtual port).
    pub fn new(config: &Config, bindings: BindingTable, l2: Layer2) -> Director {
        let selectors = bindings
            .ports
            .iter()
            .map(|_| Box::new(RoundRobin::new()) as Box<dyn Selector>)
            .collect();
        Director::with_selectors(config, bindings, selectors, l2)
    }

    /// A director whose virtual port `i` is served by `selectors[i]`.
    pub fn with_selectors(
        config: &Config,
        bindings: BindingTable,
        selectors: Vec<Box<dyn Selector>>,
        l2: Layer2,
    ) -> Director {
        assert_eq!(
            selectors.len(),
            bindings.ports.len(),
            "one selector per virtual port"
        );
        let max_targets = bindings
            .ports
            .iter()
            .map(|p| p.targets.len())
            .max()
            .unwrap_or(0);
        let mut director = Director {
            bindings: Arc::new(BindingTable::default()),
            selectors: Vec::new(),
            reals: Vec::new(),
            neighbours: HashMap::new(),
            table: ConnTable::new(config.director.max_connections as usize, config.timeouts),
            l2,
            syn_retries: config.director.syn_retries.min(255) as u8,
            counters: Counters::default(),
            reply: vec![0; REPLY_CAPACITY].into_boxed_slice(),
            reply_len: 0,
            candidates: Vec::with_capacity(max_targets),
            announce_left: 0,
            announce_next: Duration::ZERO,
            published: Arc::new(Mutex::new(Snapshot::default())),
            published_at: None,
            publish_due: true,
            flows: Vec::new(),
            rejected: Vec::new(),
        };
        director.install(bindings, selectors);
        director
    }

    /// Puts a new binding table in place (config reload). Connections in progress keep their servers: they
    /// carry the real address and port, and the live state of a real server follows it by name.
    pub fn install(&mut self, bindings: BindingTable, selectors: Vec<Box<dyn Selector>>) {
        let mut reals: Vec<RealLive> = bindings
            .reals
            .iter()
            .map(|r| {
                let old = self.reals.iter().find(|o| o.name == r.name);
                RealLive {
                    name: r.name.clone(),
                    address: r.address,
                    state: match old.map(|o| o.state) {
                        Some(ServerState::Failed) => ServerState::Failed,
                        _ if r.weight == 0 => ServerState::Draining,
                        _ => ServerState::Up,
                    },
                    weight: r.weight,
                    active: old.map_or(0, |o| o.active),
                    total: old.map_or(0, |o| o.total),
                    syn_rtt_us: old.map_or(0, |o| o.syn_rtt_us),
                    ditched: old.map_or(0, |o| o.ditched),
                    ditched_total: old.map_or(0, |o| o.ditched_total),
                }
            })
            .collect();
        // A server removed from the config keeps its connections until they end, and gets no new ones.
        for old in &self.reals {
            if old.active > 0 && !reals.iter().any(|r| r.name == old.name) {
                reals.push(RealLive {
                    state: ServerState::Draining,
                    weight: 0,
                    ..old.clone()
                });
            }
        }
        // Re-point live connections at the new indexes.
        let old_reals = std::mem::take(&mut self.reals);
        let remap: Vec<u32> = old_reals
            .iter()
            .map(|o| {
                reals
                    .iter()
                    .position(|r| r.name == o.name)
                    .map_or(u32::MAX, |i| i as u32)
            })
            .collect();
        // Per-pair counters follow (virtual address, protocol, port, real name); active counts are recounted.
        let mut flows = vec![FlowCount::default(); bindings.ports.len() * reals.len()];
        for (old_port_id, old_port) in self.bindings.ports.iter().enumerate() {
            let Some(vm) = self.bindings.virtuals.get(old_port.virtual_id as usize) else {
                continue;
            };
            let Lookup::Port(new_port_id) =
                bindings.lookup(vm.address, old_port.protocol, old_port.port)
            else {
                continue;
            };
            for (old_real_id, &new_real_id) in remap.iter().enumerate() {
                let old = self
                    .flows
                    .get(old_port_id * old_reals.len() + old_real_id)
                    .copied()
                    .unwrap_or_default();
                if let Some(f) =
                    flows.get_mut(new_port_id as usize * reals.len() + new_real_id as usize)
                {
                    f.total = old.total;
                    f.syn_resends = old.syn_resends;
                }
            }
        }
        let mut rejected = vec![[0; DropReason::ALL.len()]; bindings.virtuals.len()];
        for (old_id, vm) in self.bindings.virtuals.iter().enumerate() {
            if let Some(new_id) = bindings.virtual_by_address(vm.address)
                && let (Some(new), Some(old)) =
                    (rejected.get_mut(new_id as usize), self.rejected.get(old_id))
            {
                *new = *old;
            }
        }
        let reals_len = reals.len();
        self.table.for_each_mut(|conn| {
            conn.real_id = remap
                .get(conn.real_id as usize)
                .copied()
                .unwrap_or(u32::MAX);
            conn.port_id = match bindings.lookup(
                *conn.virtual_addr.ip(),
                conn.protocol,
                conn.virtual_addr.port(),
            ) {
                Lookup::Port(id) => id,
                _ => u32::MAX,
            };
            if let Some(f) = flow_mut(&mut flows, reals_len, conn) {
                f.active += 1;
            }
        });
        self.flows = flows;
        self.rejected = rejected;
        self.publish_due = true;

        let mut neighbours = HashMap::new();
        for (r, live) in bindings.reals.iter().zip(&reals) {
            let old = self.neighbours.get(&live.address).copied();
            let entry = match r.mac {
                Some(mac) => Neighbour {
                    mac: Some(mac),
                    updated: Duration::ZERO,
                    asked: Duration::ZERO,
                    static_entry: true,
                },
                None => old.filter(|n| !n.static_entry).unwrap_or(Neighbour {
                    mac: None,
                    updated: Duration::ZERO,
                    asked: Duration::ZERO,
                    static_entry: false,
                }),
            };
            neighbours.entry(live.address).or_insert(entry);
        }
        for live in &reals[bindings.reals.len()..] {
            if let Some(n) = self.neighbours.get(&live.address) {
                neighbours.entry(live.address).or_insert(*n);
            }
        }
        let max_targets = bindings
            .ports
            .iter()
            .map(|p| p.targets.len())
            .max()
            .unwrap_or(0);
        self.candidates.reserve(max_targets);
        self.reals = reals;
        self.neighbours = neighbours;
        self.selectors = selectors;
        self.bindings = Arc::new(bindings);
        self.announce_left = ANNOUNCE_COUNT;
        self.announce_next = Duration::ZERO;
    }

    /// Applies the tunables of a reloaded config that the table holds.
    pub fn set_limits(&mut self, config: &Config) {
        self.table.set_timeouts(config.timeouts);
        self.syn_retries = config.director.syn_retries.min(255) as u8;
    }

    /// The binding table in force.
    pub fn bindings(&self) -> &Arc<BindingTable> {
        &self.bindings
    }

    /// The frame generated by the last [`Verdict::Reply`].
    pub fn reply(&self) -> &[u8] {
        &self.reply[..self.reply_len]
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn reals(&self) -> &[RealLive] {
        &self.reals
    }

    pub fn table(&self) -> &ConnTable {
        &self.table
    }

    /// Where [`Director::tick`] publishes its [`Snapshot`] for other threads.
    pub fn published(&self) -> Arc<Mutex<Snapshot>> {
        Arc::clone(&self.published)
    }

    /// Sets a real server's state by name (operator drain, enable, disable); false when no server has
    /// that name. Connections in progress are not touched.
    pub fn set_real_state(&mut self, name: &str, state: ServerState, now: Duration) -> bool {
        let _ = now;
        match self.reals.iter_mut().find(|r| r.name == name) {
            Some(r) => {
                if r.state != state {
                    tracing::info!(
                        real = name,
                        from = r.state.as_str(),
                        to = state.as_str(),
                        "real server state changed"
                    );
                }
                r.state = state;
                self.publish_due = true;
                true
            }
            None => false,
        }
    }

    /// Handles one frame that arrived on `from` at `now`.
    pub fn handle(&mut self, from: Interface, frame: &mut [u8], now: Duration) -> Verdict {
        let side = from as usize;
        self.counters.rx_frames[side] += 1;
        self.counters.rx_bytes[side] += frame.len() as u64;
        let verdict = match from {
            Interface::Outside => self.inbound(frame, now),
            Interface::Inside => self.outbound(frame, now),
        };
        let handled = match verdict {
            Verdict::Forward(to) => {
                self.counters.forwarded[to as usize] += 1;
                self.counters.tx_bytes[to as usize] += frame.len() as u64;
                Handled::Forwarded
            }
            Verdict::Reply(to) => {
                self.counters.generated[to as usize] += 1;
                self.counters.tx_bytes[to as usize] += self.reply_len as u64;
                Handled::Replied
            }
            Verdict::Drop(reason) => {
                self.counters.drops[reason as usize] += 1;
                Handled::Dropped
            }
            Verdict::Consumed => Handled::Consumed,
        };
        self.counters.handled[side][handled as usize] += 1;
        verdict
    }

    /// Periodic work: expires idle connections (bounded), refreshes neighbours, announces virtual
    /// addresses, and publishes a [`Snapshot`]. Frames to send go through `send`.
    pub fn tick(&mut self, now: Duration, send: &mut dyn FnMut(Interface, &[u8])) {
        self.expire(now, EXPIRE_BUDGET);
        self.resolve_neighbours(now, send);
        if self.announce_left > 0 && now >= self.announce_next {
            self.announce_left -= 1;
            self.announce_next = now + ANNOUNCE_INTERVAL;
            let mut buf = [0u8; 64];
            for vm in self.bindings.virtuals.iter().filter(|vm| vm.announce) {
                let n = wire::build_gratuitous_arp(self.l2.outside_mac, vm.address, &mut buf);
                send(Interface::Outside, &buf[..n]);
            }
        }
        if self.publish_due
            || self
                .published_at
                .is_none_or(|t| now >= t + PUBLISH_INTERVAL)
        {
            self.publish(now);
        }
    }

    /// Removes up to `budget` idle connections.
    pub fn expire(&mut self, now: Duration, budget: usize) {
        let Director {
            table,
            reals,
            counters,
            flows,
            ..
        } = self;
        table.expire(now, budget, |conn| {
            counters.expired += 1;
            release(reals, flows, conn);
        });
    }

    /// Publishes a [`Snapshot`] now (after an operator command, so a read after the write sees it).
    pub fn publish_now(&mut self, now: Duration) {
        self.publish(now);
    }

    fn publish(&mut self, now: Duration) {
        self.published_at = Some(now);
        self.publish_due = false;
        let snapshot = Snapshot {
            now,
            counters: self.counters.clone(),
            reals: self.reals.clone(),
            connections: self.table.len(),
            capacity: self.table.capacity(),
            bindings: Arc::clone(&self.bindings),
            flows: self.flows.clone(),
            rejected: self.rejected.clone(),
        };
        if let Ok(mut published) = self.published.lock() {
            *published = snapshot;
        }
    }

    fn resolve_neighbours(&mut self, now: Duration, send: &mut dyn FnMut(Interface, &[u8])) {
        let mut buf = [0u8; 64];
        for (ip, n) in self.neighbours.iter_mut() {
            if n.static_entry {
                continue;
            }
            let due = match n.mac {
                None => n.asked == Duration::ZERO || now >= n.asked + NEIGHBOUR_RETRY,
                Some(_) => now >= n.updated + NEIGHBOUR_REFRESH && now >= n.asked + NEIGHBOUR_RETRY,
            };
            if due {
                n.asked = now.max(Duration::from_nanos(1));
                let len =
                    wire::build_arp_request(self.l2.inside_mac, self.l2.inside_ip, *ip, &mut buf);
                send(Interface::Inside, &buf[..len]);
            }
        }
    }

    /// Frames from clients (patent FIGS. 7 and 8).
    fn inbound(&mut self, frame: &mut [u8], now: Duration) -> Verdict {
        if let Some(arp) = wire::parse_arp(frame) {
            return self.arp_outside(&arp);
        }
        let p = match wire::parse(frame) {
            Ok(p) => p,
            Err(e) => return Verdict::Drop(e.into()),
        };
        if self.bindings.virtual_by_address(p.dst).is_none() {
            return Verdict::Drop(DropReason::NotVirtual);
        }
        match p.transport {
            Transport::Tcp {
                src_port,
                dst_port,
                flags,
                ..
            } => self.inbound_flow(frame, &p, Protocol::Tcp, src_port, dst_port, flags, now),
            Transport::Udp { src_port, dst_port } => self.inbound_flow(
                frame,
                &p,
                Protocol::Udp,
                src_port,
                dst_port,
                TcpFlags(0),
                now,
            ),
            Transport::Icmp(Icmp::EchoRequest) => {
                self.reply_len =
                    wire::build_icmp_echo_reply(frame, &p, self.l2.outside_mac, &mut self.reply);
                self.generated(Interface::Outside)
            }
            Transport::Icmp(Icmp::Error { embedded, .. }) => {
                // The error is about a packet the client side saw from us: virtual -> client.
                let client = SocketAddrV4::new(embedded.dst, embedded.dst_port);
                let virt = SocketAddrV4::new(embedded.src, embedded.src_port);
                let Some(id) = self.table.lookup_inbound(embedded.protocol, client, virt) else {
                    return Verdict::Drop(DropReason::NoConnection);
                };
                let real = self.table.get(id).real;
                let Some(mac) = self.neighbour(*real.ip()) else {
                    return Verdict::Drop(DropReason::NoNeighbour);
                };
                wire::rewrite_icmp_error_inbound(frame, &p, *real.ip(), real);
                wire::set_macs(frame, self.l2.inside_mac, mac);
                Verdict::Forward(Interface::Inside)
            }
            Transport::Icmp(Icmp::Other) => Verdict::Drop(DropReason::Ignored),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn inbound_flow(
        &mut self,
        frame: &mut [u8],
        p: &Packet,
        protocol: Protocol,
        src_port: u16,
        dst_port: u16,
        flags: TcpFlags,
        now: Duration,
    ) -> Verdict {
        let client = SocketAddrV4::new(p.src, src_port);
        let virt = SocketAddrV4::new(p.dst, dst_port);
        let opens = match protocol {
            Protocol::Tcp => flags.contains(TcpFlags::SYN) && !flags.contains(TcpFlags::ACK),
            Protocol::Udp => true,
        };
        let id = match self.table.lookup_inbound(protocol, client, virt) {
            Some(id) if opens && protocol == Protocol::Tcp => {
                match self.table.get(id).state {
                    // A SYN for a connection that already closed: the client reuses its port. Start over.
                    ConnState::Closing => {
                        self.close(id);
                        match self.open(frame, p, protocol, client, virt, now) {
                            Ok(id) => id,
                            Err(v) => return v,
                        }
                    }
                    // The patent's SYN resend: same connection, same server.
                    _ => {
                        self.counters.syn_resends += 1;
                        let conn = self.table.get_mut(id);
                        conn.syn_resends = conn.syn_resends.saturating_add(1);
                        if let Some(f) = flow_mut(&mut self.flows, self.reals.len(), conn) {
                            f.syn_resends += 1;
                        }
                        id
                    }
                }
            }
            Some(id) => id,
            None if opens => match self.open(frame, p, protocol, client, virt, now) {
                Ok(id) => id,
                Err(v) => return v,
            },
            None => return Verdict::Drop(DropReason::NoConnection),
        };
        self.table.touch(id, now);
        if protocol == Protocol::Tcp {
            self.track_client_flags(id, flags, now);
        }
        let conn = self.table.get(id);
        let real = conn.real;
        let Some(mac) = self.neighbour(*real.ip()) else {
            return Verdict::Drop(DropReason::NoNeighbour);
        };
        wire::rewrite_destination(frame, p, *real.ip(), real.port());
        wire::set_macs(frame, self.l2.inside_mac, mac);
        Verdict::Forward(Interface::Inside)
    }

    /// Creates the connection object for a new connection (patent FIG. 5), or says why not.
    fn open(
        &mut self,
        frame: &[u8],
        p: &Packet,
        protocol: Protocol,
        client: SocketAddrV4,
        virt: SocketAddrV4,
        now: Duration,
    ) -> Result<ConnId, Verdict> {
        let port_id = match self.bindings.lookup(*virt.ip(), protocol, virt.port()) {
            Lookup::Port(id) => id,
            Lookup::UnsupportedPort { virtual_id } => {
                return Err(self.refuse(
                    frame,
                    p,
                    protocol,
                    virtual_id,
                    DropReason::UnsupportedPort,
                ));
            }
            Lookup::NotVirtual => return Err(Verdict::Drop(DropReason::NotVirtual)),
        };
        let virtual_id = self
            .bindings
            .ports
            .get(port_id as usize)
            .map_or(u32::MAX, |port| port.virtual_id);
        let Some((real_id, target)) = self.select(port_id, client, virt, protocol) else {
            return Err(self.refuse(frame, p, protocol, virtual_id, DropReason::NoServer));
        };
        let state = match protocol {
            Protocol::Tcp => ConnState::SynSent,
            Protocol::Udp => ConnState::Udp,
        };
        let conn = Connection {
            protocol,
            client,
            virtual_addr: virt,
            real: target,
            client_mac: p.src_mac,
            real_id,
            port_id,
            state,
            syn_resends: 0,
            fin_seen: 0,
            created: now,
            last_seen: now,
        };
        match self.table.insert(conn) {
            Ok(inserted) => {
                if let Some(evicted) = inserted.evicted {
                    match evicted.state {
                        ConnState::Closing => self.counters.evicted_closing += 1,
                        _ => self.counters.evicted_half_open += 1,
                    }
                    release(&mut self.reals, &mut self.flows, &evicted);
                }
                self.counters.connections_created += 1;
                if let Some(r) = self.reals.get_mut(real_id as usize) {
                    r.active += 1;
                    r.total += 1;
                }
                if let Some(f) = flow_mut(&mut self.flows, self.reals.len(), &conn) {
                    f.active += 1;
                    f.total += 1;
                }
                Ok(inserted.id)
            }
            Err(InsertError::Full) => {
                Err(self.refuse(frame, p, protocol, virtual_id, DropReason::TableFull))
            }
            Err(InsertError::Collision) => {
                Err(self.refuse(frame, p, protocol, virtual_id, DropReason::Collision))
            }
            // Unreachable: the caller looked the connection up first. Treat as a stray packet.
            Err(InsertError::Exists) => Err(Verdict::Drop(DropReason::NoConnection)),
        }
    }

    /// Asks the virtual port's policy for a server among its bound targets, with live state.
    fn select(
        &mut self,
        port_id: u32,
        client: SocketAddrV4,
        virt: SocketAddrV4,
        protocol: Protocol,
    ) -> Option<(u32, SocketAddrV4)> {
        let bindings = &self.bindings;
        let port = bindings.ports.get(port_id as usize)?;
        self.candidates.clear();
        for t in &port.targets {
            // A failed server with a backup: the backup stands in, on the same port unless it has its own.
            let mut real_id = t.real_id;
            let mut target_port = t.port;
            let primary = bindings.reals.get(real_id as usize)?;
            if self.reals.get(real_id as usize)?.state == ServerState::Failed
                && let Some(b) = primary.backup
                && let Some(backup) = bindings.reals.get(b as usize)
            {
                real_id = b;
                target_port = backup.port.unwrap_or(target_port);
            }
            let live = self.reals.get(real_id as usize)?;
            self.candidates.push(Candidate {
                real_id,
                target: SocketAddrV4::new(live.address, target_port),
                weight: live.weight,
                state: live.state,
                active: live.active,
                total: live.total,
                syn_rtt_us: live.syn_rtt_us,
                ditched: live.ditched,
            });
        }
        let new = NewConnection {
            client,
            virtual_addr: virt,
            protocol,
            virtual_id: port.virtual_id,
        };
        let selector = self.selectors.get_mut(port_id as usize)?;
        match selector.select(&new, &self.candidates) {
            Selection::Pick(i) => self
                .candidates
                .get(i)
                .filter(|c| c.eligible())
                .map(|c| (c.real_id, c.target)),
            Selection::Reject => None,
        }
    }

    /// Answers a connection attempt that cannot be served: RST for TCP, ICMP port unreachable for UDP.
    fn refuse(
        &mut self,
        frame: &[u8],
        p: &Packet,
        protocol: Protocol,
        virtual_id: u32,
        reason: DropReason,
    ) -> Verdict {
        self.counters.refused[reason as usize] += 1;
        if let Some(r) = self.rejected.get_mut(virtual_id as usize) {
            r[reason as usize] += 1;
        }
        let mac = self.l2.outside_mac;
        self.reply_len = match protocol {
            Protocol::Tcp => wire::build_tcp_rst(p, mac, &mut self.reply),
            Protocol::Udp => wire::build_icmp_port_unreachable(frame, p, mac, &mut self.reply),
        };
        if self.reply_len == 0 {
            Verdict::Drop(reason)
        } else {
            Verdict::Reply(Interface::Outside)
        }
    }

    fn generated(&self, to: Interface) -> Verdict {
        if self.reply_len == 0 {
            Verdict::Drop(DropReason::Truncated)
        } else {
            Verdict::Reply(to)
        }
    }

    fn track_client_flags(&mut self, id: ConnId, flags: TcpFlags, now: Duration) {
        if flags.contains(TcpFlags::RST) || flags.contains(TcpFlags::FIN) {
            let conn = self.table.get_mut(id);
            if flags.contains(TcpFlags::FIN) {
                conn.fin_seen |= 1;
            }
            if conn.state != ConnState::Closing {
                self.table.set_state(id, ConnState::Closing, now);
            }
        }
    }

    /// Frames from real servers (patent FIG. 9).
    fn outbound(&mut self, frame: &mut [u8], now: Duration) -> Verdict {
        if let Some(arp) = wire::parse_arp(frame) {
            return self.arp_inside(&arp, now);
        }
        let p = match wire::parse(frame) {
            Ok(p) => p,
            Err(e) => return Verdict::Drop(e.into()),
        };
        let (protocol, src_port, dst_port, flags) = match p.transport {
            Transport::Tcp {
                src_port,
                dst_port,
                flags,
                ..
            } => (Protocol::Tcp, src_port, dst_port, flags),
            Transport::Udp { src_port, dst_port } => {
                (Protocol::Udp, src_port, dst_port, TcpFlags(0))
            }
            Transport::Icmp(Icmp::Error { embedded, .. }) => {
                // About a packet the server got from the client: client -> real.
                let real = SocketAddrV4::new(embedded.dst, embedded.dst_port);
                let client = SocketAddrV4::new(embedded.src, embedded.src_port);
                let Some(id) = self.table.lookup_outbound(embedded.protocol, real, client) else {
                    return Verdict::Drop(DropReason::NoConnection);
                };
                let conn = self.table.get(id);
                let (virt, client_mac) = (conn.virtual_addr, conn.client_mac);
                let outer_src = (p.src == *real.ip()).then_some(*virt.ip());
                wire::rewrite_icmp_error_outbound(frame, &p, outer_src, virt);
                wire::set_macs(frame, self.l2.outside_mac, client_mac);
                return Verdict::Forward(Interface::Outside);
            }
            Transport::Icmp(_) => return Verdict::Drop(DropReason::Ignored),
        };
        let real = SocketAddrV4::new(p.src, src_port);
        let client = SocketAddrV4::new(p.dst, dst_port);
        let Some(id) = self.table.lookup_outbound(protocol, real, client) else {
            return Verdict::Drop(DropReason::NoConnection);
        };
        self.table.touch(id, now);
        if protocol == Protocol::Tcp {
            self.track_server_flags(id, flags, now);
        }
        let conn = self.table.get(id);
        let (virt, client_mac) = (conn.virtual_addr, conn.client_mac);
        wire::rewrite_source(frame, &p, *virt.ip(), virt.port());
        wire::set_macs(frame, self.l2.outside_mac, client_mac);
        Verdict::Forward(Interface::Outside)
    }

    fn track_server_flags(&mut self, id: ConnId, flags: TcpFlags, now: Duration) {
        let conn = self.table.get(id);
        let state = conn.state;
        if state == ConnState::SynSent
            && flags.contains(TcpFlags::SYN)
            && flags.contains(TcpFlags::ACK)
        {
            let rtt = now
                .saturating_sub(conn.created)
                .as_micros()
                .min(u128::from(u32::MAX)) as u32;
            if let Some(r) = self.reals.get_mut(conn.real_id as usize) {
                // Smoothed like TCP's SRTT (RFC 6298): 7/8 old + 1/8 sample.
                r.syn_rtt_us = if r.syn_rtt_us == 0 {
                    rtt.max(1)
                } else {
                    (r.syn_rtt_us / 8 * 7 + rtt / 8).max(1)
                };
                r.ditched = 0;
            }
            self.table.set_state(id, ConnState::Established, now);
        } else if flags.contains(TcpFlags::RST) || flags.contains(TcpFlags::FIN) {
            if flags.contains(TcpFlags::FIN) {
                self.table.get_mut(id).fin_seen |= 2;
            }
            if state != ConnState::Closing {
                self.table.set_state(id, ConnState::Closing, now);
            }
        }
    }

    fn close(&mut self, id: ConnId) {
        let conn = self.table.remove(id);
        release(&mut self.reals, &mut self.flows, &conn);
    }

    fn arp_outside(&mut self, arp: &wire::Arp) -> Verdict {
        if arp.operation != ArpOp::Request {
            return Verdict::Drop(DropReason::Ignored);
        }
        let announced = self
            .bindings
            .virtual_by_address(arp.target_ip)
            .and_then(|id| self.bindings.virtuals.get(id as usize))
            .is_some_and(|vm| vm.announce);
        if !announced {
            return Verdict::Drop(DropReason::Ignored);
        }
        self.reply_len =
            wire::build_arp_reply(self.l2.outside_mac, arp.target_ip, arp, &mut self.reply);
        self.generated(Interface::Outside)
    }

    fn arp_inside(&mut self, arp: &wire::Arp, now: Duration) -> Verdict {
        // Learn from replies and from requests alike: both carry the sender's binding.
        match self.neighbours.get_mut(&arp.sender_ip) {
            Some(n) if !n.static_entry => {
                n.mac = Some(arp.sender_mac);
                n.updated = now;
                Verdict::Consumed
            }
            _ => Verdict::Drop(DropReason::Ignored),
        }
    }

    fn neighbour(&self, ip: Ipv4Addr) -> Option<[u8; 6]> {
        self.neighbours.get(&ip).and_then(|n| n.mac)
    }
}

/// A connection left the table: its server has one connection fewer.
fn release(reals: &mut [RealLive], flows: &mut [FlowCount], conn: &Connection) {
    if let Some(f) = flow_mut(flows, reals.len(), conn) {
        f.active = f.active.saturating_sub(1);
    }
    if let Some(r) = reals.get_mut(conn.real_id as usize) {
        r.active = r.active.saturating_sub(1);
    }
}

/// The counters of a connection's (virtual port, real server) pair, if both are still configured.
fn flow_mut<'a>(
    flows: &'a mut [FlowCount],
    reals: usize,
    conn: &Connection,
) -> Option<&'a mut FlowCount> {
    if conn.port_id == u32::MAX || conn.real_id as usize >= reals {
        return None;
    }
    flows.get_mut(conn.port_id as usize * reals + conn.real_id as usize)
}
