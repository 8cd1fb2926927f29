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
//! - Failure handling (patent FIG. 6B: state, ditched connections, failure threshold, backup): a connection
//!   whose SYN was resent `syn_retries` times without a SYN-ACK, or that its server answered with RST, is
//!   ditched: counted against the server and given to another one (the policy is asked again without it).
//!   `failure_threshold` ditched connections in a row fail the server; its `backup` stands in for it in every
//!   binding; after `retry_after` it gets one trial connection, and a SYN-ACK restores it. Active health
//!   checks ([`Director::set_check_result`]) and the operator ([`Director::set_real_state`]) feed the same
//!   state; every change is queued once, with its reason, for [`Director::drain_events`]. The rules are in
//!   docs/failure-handling.md.
//!
//! What fails: every frame that cannot be translated is dropped with a [`DropReason`] and counted; nothing on
//! this path panics on packet bytes.

use std::collections::VecDeque;
use std::fmt;
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
/// `Connection::syn_resends` of a connection re-given after an RST, until the client's next SYN: that SYN is
/// the first the new server sees, not a resend. `syn_retries` stays below it.
const REGIVEN: u8 = u8::MAX;
/// State changes kept for [`Director::drain_events`]; when full, the oldest is dropped (and counted).
const EVENT_CAPACITY: usize = 256;

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
    /// By the interface the frame came in on and [`DropReason`] (in the order of [`DropReason::ALL`]).
    pub drops: [[u64; DropReason::ALL.len()]; 2],
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
    /// Connections ditched by their server: no SYN-ACK after `syn_retries` resends, or an RST to the SYN.
    pub ditched: u64,
    /// Ditched connections given to another server.
    pub reselected: u64,
    /// Trial connections given to a failed server after its `retry_after`.
    pub trials: u64,
    /// Real server state changes, and those dropped from a full event queue before anyone drained them.
    pub state_changes: u64,
    pub events_lost: u64,
}

impl Counters {
    /// Frames dropped for `reason`, both interfaces together.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops.iter().map(|side| side[reason as usize]).sum()
    }
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

/// Why a real server changed state. Each is a log field and a plugin event argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StateReason {
    /// `failure_threshold` connections in a row were ditched (no SYN-ACK after `syn_retries` resends, or RST).
    Ditched,
    /// It answered a SYN with SYN-ACK (a trial connection after `retry_after`, or a late answer).
    Answered,
    /// The active health check failed `fall` times in a row.
    CheckFailed,
    /// The active health check passed `rise` times in a row.
    CheckPassed,
    /// The operator set the state ([`Director::set_real_state`]).
    Operator,
    /// A config reload changed its weight, its check, or removed it.
    Config,
}

impl StateReason {
    /// The log and label name.
    pub fn as_str(self) -> &'static str {
        match self {
            StateReason::Ditched => "ditched",
            StateReason::Answered => "answered",
            StateReason::CheckFailed => "check_failed",
            StateReason::CheckPassed => "check_passed",
            StateReason::Operator => "operator",
            StateReason::Config => "config",
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

/// One change of a real server's state, queued for [`Director::drain_events`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateChange {
    /// The real server's name.
    pub real: Arc<str>,
    pub from: ServerState,
    pub to: ServerState,
    pub reason: StateReason,
    /// Its consecutive ditched connections at the time.
    pub ditched: u32,
    pub at: Duration,
}

/// [`Director::set_real_state`] or [`Director::set_check_result`] named no real server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownReal(pub String);

impl fmt::Display for UnknownReal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no real server is named \"{}\"", self.0)
    }
}

impl std::error::Error for UnknownReal {}

/// What decides a real server's state, besides its live counters. [`Health::state`] combines them.
#[derive(Clone, Debug)]
struct Health {
    name: Arc<str>,
    failure_threshold: u32,
    retry_after: Duration,
    /// Failed by ditched connections; cleared by a SYN-ACK from it.
    ditch_failed: bool,
    /// Has an active health check in the config in force; verdicts for others are ignored.
    checked: bool,
    /// Failed by its active health check; cleared by the check only.
    check_failed: bool,
    /// Set by the operator: `Draining` or `Failed`; `None` follows the rest.
    operator: Option<ServerState>,
    /// Weight 0, or removed from the config.
    config_drain: bool,
    /// When a ditch-failed server gets its next trial connection.
    retry_at: Duration,
}

impl Health {
    fn new(name: &str) -> Health {
        Health {
            name: Arc::from(name),
            failure_threshold: crate::config::DEFAULT_FAILURE_THRESHOLD,
            retry_after: crate::config::DEFAULT_RETRY_AFTER,
            ditch_failed: false,
            checked: false,
            check_failed: false,
            operator: None,
            config_drain: false,
            retry_at: Duration::ZERO,
        }
    }

    /// Failed by any source wins over draining, which wins over up.
    fn state(&self) -> ServerState {
        if self.ditch_failed || self.check_failed || self.operator == Some(ServerState::Failed) {
            ServerState::Failed
        } else if self.config_drain || self.operator == Some(ServerState::Draining) {
            ServerState::Draining
        } else {
            ServerState::Up
        }
    }

    /// Whether the next connection bound to it is its trial: only ditched connections failed it, and
    /// `retry_after` has passed since.
    fn trial_due(&self, now: Duration) -> bool {
        self.ditch_failed
            && !self.check_failed
            && !self.config_drain
            && self.operator.is_none()
            && now >= self.retry_at
    }
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
    /// Ask again at the next tick although the entry is fresh (see `Director::reask_neighbour`).
    suspect: bool,
}

/// The packet path. See the module documentation.
pub struct Director {
    bindings: Arc<BindingTable>,
    selectors: Vec<Box<dyn Selector>>,
    reals: Vec<RealLive>,
    /// Parallel to `reals`.
    health: Vec<Health>,
    events: VecDeque<StateChange>,
    /// The latest `now` seen, for state changes made without one (a reload).
    now: Duration,
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
            health: Vec::new(),
            events: VecDeque::with_capacity(EVENT_CAPACITY),
            now: Duration::ZERO,
            neighbours: HashMap::new(),
            table: ConnTable::new(config.director.max_connections as usize, config.timeouts),
            l2,
            syn_retries: config.director.syn_retries.min(254) as u8,
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
        director.set_checked(config);
        director
    }

    /// Puts a new binding table in place (config reload). Connections in progress keep their servers: they
    /// carry the real address and port, and the live state of a real server follows it by name.
    pub fn install(&mut self, bindings: BindingTable, selectors: Vec<Box<dyn Selector>>) {
        let mut reals = Vec::with_capacity(bindings.reals.len());
        let mut health = Vec::with_capacity(bindings.reals.len());
        for r in &bindings.reals {
            let old = self.reals.iter().position(|o| o.name == r.name);
            let mut h = old
                .and_then(|i| self.health.get(i).cloned())
                .unwrap_or_else(|| Health::new(&r.name));
            h.failure_threshold = r.failure_threshold;
            h.retry_after = r.retry_after;
            h.config_drain = r.weight == 0;
            let old = old.and_then(|i| self.reals.get(i));
            reals.push(RealLive {
                name: r.name.clone(),
                address: r.address,
                state: old.map_or(h.state(), |o| o.state),
                weight: r.weight,
                active: old.map_or(0, |o| o.active),
                total: old.map_or(0, |o| o.total),
                syn_rtt_us: old.map_or(0, |o| o.syn_rtt_us),
                ditched: old.map_or(0, |o| o.ditched),
                ditched_total: old.map_or(0, |o| o.ditched_total),
            });
            health.push(h);
        }
        // A server removed from the config keeps its connections until they end, and gets no new ones.
        for (old, h) in self.reals.iter().zip(&self.health) {
            if old.active > 0 && !reals.iter().any(|r| r.name == old.name) {
                reals.push(RealLive {
                    weight: 0,
                    ..old.clone()
                });
                health.push(Health {
                    config_drain: true,
                    ..h.clone()
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
                    suspect: false,
                },
                None => old.filter(|n| !n.static_entry).unwrap_or(Neighbour {
                    mac: None,
                    updated: Duration::ZERO,
                    asked: Duration::ZERO,
                    static_entry: false,
                    suspect: false,
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
        self.health = health;
        for real_id in 0..self.reals.len() {
            self.update_state(real_id, StateReason::Config);
        }
        self.neighbours = neighbours;
        self.selectors = selectors;
        self.bindings = Arc::new(bindings);
        self.announce_left = ANNOUNCE_COUNT;
        self.announce_next = Duration::ZERO;
    }

    /// Applies the tunables of a reloaded config that the table holds.
    pub fn set_limits(&mut self, config: &Config) {
        self.table.set_timeouts(config.timeouts);
        self.syn_retries = config.director.syn_retries.min(254) as u8;
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

    /// Operator control (admin API): `Draining` stops new connections and lets existing ones finish, `Failed`
    /// fails the server (its backup stands in), `Up` lifts both and forgets its ditched connections. An
    /// active check failure or `weight = 0` still applies after `Up`.
    pub fn set_real_state(
        &mut self,
        name: &str,
        state: ServerState,
        now: Duration,
    ) -> Result<(), UnknownReal> {
        let real_id = self.real_named(name)?;
        self.now = self.now.max(now);
        let (h, live) = (&mut self.health[real_id], &mut self.reals[real_id]);
        match state {
            ServerState::Up => {
                h.operator = None;
                h.ditch_failed = false;
                live.ditched = 0;
            }
            other => h.operator = Some(other),
        }
        self.update_state(real_id, StateReason::Operator);
        Ok(())
    }

    /// The active health check of `name` came to a verdict: `up` after `rise` successes in a row, down
    /// after `fall` failures. A check that passes also clears a failure by ditched connections. Ignored for
    /// a server without a check in the config in force (a verdict from before a reload).
    pub fn set_check_result(
        &mut self,
        name: &str,
        up: bool,
        now: Duration,
    ) -> Result<(), UnknownReal> {
        let real_id = self.real_named(name)?;
        self.now = self.now.max(now);
        let (h, live) = (&mut self.health[real_id], &mut self.reals[real_id]);
        if !h.checked {
            return Ok(());
        }
        if up {
            h.check_failed = false;
            h.ditch_failed = false;
            live.ditched = 0;
            self.update_state(real_id, StateReason::CheckPassed);
        } else {
            h.check_failed = true;
            self.update_state(real_id, StateReason::CheckFailed);
        }
        Ok(())
    }

    /// Tells the director which real servers have an active check in `config` (call after each
    /// [`Director::install`]); the others forget any check failure, so none waits for a check that no
    /// longer runs.
    pub fn set_checked(&mut self, config: &Config) {
        for real_id in 0..self.health.len() {
            let checked = config
                .reals
                .iter()
                .any(|r| *r.name == *self.health[real_id].name && r.check.is_some());
            self.health[real_id].checked = checked;
            if !checked && self.health[real_id].check_failed {
                self.health[real_id].check_failed = false;
                self.update_state(real_id, StateReason::Config);
            }
        }
    }

    /// Takes the queued state changes, oldest first. The caller logs them and passes them to plugins.
    pub fn drain_events(&mut self) -> std::collections::vec_deque::Drain<'_, StateChange> {
        self.events.drain(..)
    }

    fn real_named(&self, name: &str) -> Result<usize, UnknownReal> {
        self.health
            .iter()
            .position(|h| *h.name == *name)
            .ok_or_else(|| UnknownReal(name.to_owned()))
    }

    /// Puts the state [`Health`] says in force; queues the change, with `reason`, when there is one.
    fn update_state(&mut self, real_id: usize, reason: StateReason) {
        let (Some(h), Some(live)) = (self.health.get(real_id), self.reals.get_mut(real_id)) else {
            return;
        };
        let to = h.state();
        if live.state == to {
            return;
        }
        let change = StateChange {
            real: Arc::clone(&h.name),
            from: live.state,
            to,
            reason,
            ditched: live.ditched,
            at: self.now,
        };
        live.state = to;
        self.counters.state_changes += 1;
        // Rare (a state change), never per packet: plugins may keep per-server state.
        for selector in &mut self.selectors {
            selector.server_state_changed(real_id as u32, to);
        }
        if self.events.len() == EVENT_CAPACITY {
            self.events.pop_front();
            self.counters.events_lost += 1;
        }
        self.events.push_back(change);
    }

    /// A connection of `real_id` was ditched: one more in a row; the threshold fails the server, and a
    /// failed one (its trial connection went unanswered) waits another `retry_after`.
    fn count_ditched(&mut self, real_id: usize, now: Duration) {
        self.counters.ditched += 1;
        let (Some(h), Some(live)) = (self.health.get_mut(real_id), self.reals.get_mut(real_id))
        else {
            return;
        };
        live.ditched = live.ditched.saturating_add(1);
        live.ditched_total += 1;
        if live.ditched >= h.failure_threshold {
            if !h.ditch_failed {
                h.ditch_failed = true;
                h.retry_at = now + h.retry_after;
                self.update_state(real_id, StateReason::Ditched);
            } else {
                h.retry_at = h.retry_at.max(now + h.retry_after);
            }
        }
    }

    /// `real_id` answered a SYN: its ditched count starts over, and a failure by ditched connections ends.
    fn answered(&mut self, real_id: usize) {
        let (Some(h), Some(live)) = (self.health.get_mut(real_id), self.reals.get_mut(real_id))
        else {
            return;
        };
        live.ditched = 0;
        if h.ditch_failed {
            h.ditch_failed = false;
            self.update_state(real_id, StateReason::Answered);
        }
    }

    /// Handles one frame that arrived on `from` at `now`.
    pub fn handle(&mut self, from: Interface, frame: &mut [u8], now: Duration) -> Verdict {
        let side = from as usize;
        self.now = now;
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
                self.counters.drops[side][reason as usize] += 1;
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
        self.now = now;
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
                Some(_) => {
                    (n.suspect || now >= n.updated + NEIGHBOUR_REFRESH)
                        && now >= n.asked + NEIGHBOUR_RETRY
                }
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
                    // The first SYN to the server that took over after an RST: not a resend to it.
                    ConnState::SynSent if self.table.get(id).syn_resends == REGIVEN => {
                        self.counters.syn_resends += 1;
                        let conn = self.table.get_mut(id);
                        conn.syn_resends = 0;
                        if let Some(f) = flow_mut(&mut self.flows, self.reals.len(), conn) {
                            f.syn_resends += 1;
                        }
                        id
                    }
                    // Resent `syn_retries` times and still no SYN-ACK: ditched; this SYN goes elsewhere.
                    ConnState::SynSent if self.table.get(id).syn_resends >= self.syn_retries => {
                        self.counters.syn_resends += 1;
                        if let Some(f) =
                            flow_mut(&mut self.flows, self.reals.len(), self.table.get(id))
                        {
                            f.syn_resends += 1;
                        }
                        match self.ditch(id, now) {
                            Ditch::Moved | Ditch::Kept => id,
                            Ditch::Nowhere => {
                                self.close(id);
                                let virtual_id =
                                    self.bindings.virtual_by_address(p.dst).unwrap_or(u32::MAX);
                                return self.refuse(
                                    frame,
                                    p,
                                    protocol,
                                    virtual_id,
                                    DropReason::NoServer,
                                );
                            }
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
                        let real = *conn.real.ip();
                        self.reask_neighbour(real);
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
        let Some((real_id, target)) = self.select(port_id, client, virt, protocol, None, now)
        else {
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

    /// The server of connection `id` ditched it: count that, and give the connection to another server
    /// (the policy is asked again with the ditching server left out).
    fn ditch(&mut self, id: ConnId, now: Duration) -> Ditch {
        let conn = *self.table.get(id);
        let old = conn.real_id;
        self.count_ditched(old as usize, now);
        let port_id = match self.bindings.lookup(
            *conn.virtual_addr.ip(),
            conn.protocol,
            conn.virtual_addr.port(),
        ) {
            Lookup::Port(port_id) => Some(port_id),
            _ => None,
        };
        let picked = port_id.and_then(|port_id| {
            self.select(
                port_id,
                conn.client,
                conn.virtual_addr,
                conn.protocol,
                Some(old),
                now,
            )
            .map(|picked| (port_id, picked))
        });
        if let Some((port_id, (real_id, target))) = picked
            && self.table.retarget(id, target, real_id).is_ok()
        {
            self.counters.reselected += 1;
            release(&mut self.reals, &mut self.flows, &conn);
            if let Some(r) = self.reals.get_mut(real_id as usize) {
                r.active += 1;
                r.total += 1;
            }
            let moved = self.table.get_mut(id);
            moved.port_id = port_id;
            if let Some(f) = flow_mut(&mut self.flows, self.reals.len(), moved) {
                f.active += 1;
                f.total += 1;
            }
            moved.syn_resends = 0;
            // The new server's SYN round trip is measured from here.
            moved.created = now;
            return Ditch::Moved;
        }
        let keep = self
            .reals
            .get(old as usize)
            .is_some_and(|r| r.state == ServerState::Up);
        if keep {
            self.table.get_mut(id).syn_resends = 0;
            Ditch::Kept
        } else {
            Ditch::Nowhere
        }
    }

    /// Asks the virtual port's policy for a server among its bound targets, with live state. A failed
    /// server's backup stands in for it (following the chain); `exclude` (a server that just ditched this
    /// connection) is offered as failed. A failed server whose trial is due gets the connection outright.
    fn select(
        &mut self,
        port_id: u32,
        client: SocketAddrV4,
        virt: SocketAddrV4,
        protocol: Protocol,
        exclude: Option<u32>,
        now: Duration,
    ) -> Option<(u32, SocketAddrV4)> {
        let bindings = &self.bindings;
        let port = bindings.ports.get(port_id as usize)?;
        self.candidates.clear();
        let mut trial = None;
        for t in &port.targets {
            let mut real_id = t.real_id;
            let mut target_port = t.port;
            // Cycles are refused by the config; the bound only guards against a bug.
            for _ in 0..bindings.reals.len() {
                if self.reals.get(real_id as usize)?.state != ServerState::Failed {
                    break;
                }
                if trial.is_none()
                    && exclude != Some(real_id)
                    && self.health.get(real_id as usize)?.trial_due(now)
                {
                    trial = Some(self.candidates.len());
                    break;
                }
                let Some(b) = bindings.reals.get(real_id as usize)?.backup else {
                    break;
                };
                let backup = bindings.reals.get(b as usize)?;
                real_id = b;
                target_port = backup.port.unwrap_or(target_port);
            }
            let live = self.reals.get(real_id as usize)?;
            // A binding's own weight applies to its own server (not to a backup standing in); a drained
            // server (weight 0) stays drained.
            let weight = match t.weight {
                Some(w) if real_id == t.real_id && live.weight > 0 => w,
                _ => live.weight,
            };
            self.candidates.push(Candidate {
                real_id,
                target: SocketAddrV4::new(live.address, target_port),
                weight,
                state: if exclude == Some(real_id) {
                    ServerState::Failed
                } else {
                    live.state
                },
                active: live.active,
                total: live.total,
                syn_rtt_us: live.syn_rtt_us,
                ditched: live.ditched,
            });
        }
        if let Some(i) = trial {
            let c = self.candidates.get(i)?;
            let h = self.health.get_mut(c.real_id as usize)?;
            h.retry_at = now + h.retry_after;
            self.counters.trials += 1;
            return Some((c.real_id, c.target));
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
            // A server refusing the SYN ditches the connection like one that never answers. When another
            // server takes it, the RST stays here and the client's SYN retransmission goes there.
            if flags.contains(TcpFlags::RST)
                && self.table.get(id).state == ConnState::SynSent
                && self.ditch(id, now) == Ditch::Moved
            {
                self.table.get_mut(id).syn_resends = REGIVEN;
                return Verdict::Consumed;
            }
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
            }
            self.answered(conn.real_id as usize);
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
                n.suspect = false;
                Verdict::Consumed
            }
            _ => Verdict::Drop(DropReason::Ignored),
        }
    }

    /// A resent SYN may mean the real server's MAC changed (a new NIC, a recreated veth) and our frames go
    /// nowhere: make its entry due for an ARP request at the next tick (at most one per
    /// [`NEIGHBOUR_RETRY`]). The old MAC stays in use until the answer replaces it.
    fn reask_neighbour(&mut self, ip: Ipv4Addr) {
        if let Some(n) = self.neighbours.get_mut(&ip)
            && !n.static_entry
            && n.mac.is_some()
        {
            n.suspect = true;
        }
    }

    fn neighbour(&self, ip: Ipv4Addr) -> Option<[u8; 6]> {
        self.neighbours.get(&ip).and_then(|n| n.mac)
    }
}

/// What became of a ditched connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ditch {
    /// Another server has it now.
    Moved,
    /// No other server can take it; its own server is still up, so it stays there.
    Kept,
    /// No server can take it.
    Nowhere,
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

    use super::*;

    const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
    const L2: Layer2 = Layer2 {
        outside_mac: [2, 0, 0, 0, 0, 1],
        inside_mac: [2, 0, 0, 0, 0, 2],
        inside_ip: Ipv4Addr::UNSPECIFIED,
    };
    const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
    const WEB: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const SOLO: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

    /// Servers a, b, c behind `web`; `primary` with backup `spare` behind `solo`. Static MACs: no ARP.
    fn config(syn_retries: u32, weight_a: u32, with_a: bool, checks: bool) -> Config {
        let check = if checks {
            "check = { kind = \"tcp\", port = 80 }\n"
        } else {
            ""
        };
        let a = if with_a {
            format!(
                "[[real]]\nname = \"a\"\naddress = \"10.0.0.1\"\nmac = \"02:00:00:00:02:01\"\n\
                 weight = {weight_a}\nfailure_threshold = 2\nretry_after = \"10s\"\n"
            )
        } else {
            String::new()
        };
        let bind = if with_a {
            "\"a\", \"b\", \"c\""
        } else {
            "\"b\", \"c\""
        };
        let text = format!(
            "[director]\noutside = \"o\"\ninside = \"i\"\nsyn_retries = {syn_retries}\n{a}\
             [[real]]\nname = \"b\"\naddress = \"10.0.0.2\"\nmac = \"02:00:00:00:02:02\"\nfailure_threshold = 2\n{check}\
             [[real]]\nname = \"c\"\naddress = \"10.0.0.3\"\nmac = \"02:00:00:00:02:03\"\nfailure_threshold = 2\n{check}\
             [[real]]\nname = \"primary\"\naddress = \"10.0.0.4\"\nmac = \"02:00:00:00:02:04\"\n\
             backup = \"spare\"\nfailure_threshold = 1\nretry_after = \"10s\"\n\
             [[real]]\nname = \"spare\"\naddress = \"10.0.0.5\"\nmac = \"02:00:00:00:02:05\"\n\
             [[virtual]]\nname = \"web\"\naddress = \"192.0.2.1\"\n  [[virtual.port]]\n  port = 80\n  bind = [{bind}]\n\
             [[virtual]]\nname = \"solo\"\naddress = \"192.0.2.2\"\n  [[virtual.port]]\n  port = 80\n  bind = [\"primary\"]\n"
        );
        Config::parse(&text, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn director(syn_retries: u32) -> Director {
        let config = config(syn_retries, 1, true, true);
        let bindings = BindingTable::from_config(&config);
        Director::new(&config, bindings, L2)
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// A TCP frame from the client to `vip`:80.
    fn client(vip: Ipv4Addr, cport: u16, syn: bool, rst: bool) -> Vec<u8> {
        let mut b = PacketBuilder::ethernet2(CLIENT_MAC, L2.outside_mac)
            .ipv4(CLIENT.octets(), vip.octets(), 64)
            .tcp(cport, 80, 1000, 64240);
        if syn {
            b = b.syn();
        } else {
            b = b.ack(1);
        }
        if rst {
            b = b.rst();
        }
        let mut v = Vec::new();
        b.write(&mut v, &[]).unwrap();
        v
    }

    /// A TCP frame from a real server port to the client: SYN-ACK, or RST-ACK.
    fn server(real: SocketAddrV4, cport: u16, rst: bool) -> Vec<u8> {
        let mut b = PacketBuilder::ethernet2([2, 0, 0, 0, 2, 9], L2.inside_mac)
            .ipv4(real.ip().octets(), CLIENT.octets(), 64)
            .tcp(real.port(), cport, 5000, 64240)
            .ack(1001);
        b = if rst { b.rst() } else { b.syn() };
        let mut v = Vec::new();
        b.write(&mut v, &[]).unwrap();
        v
    }

    /// (destination, TCP flags syn/ack/rst) of a frame.
    fn dest(frame: &[u8]) -> (SocketAddrV4, (bool, bool, bool)) {
        let p = SlicedPacket::from_ethernet(frame).unwrap();
        let (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Tcp(t))) = (&p.net, &p.transport)
        else {
            panic!("not TCP/IPv4");
        };
        (
            SocketAddrV4::new(ip.header().destination_addr(), t.destination_port()),
            (t.syn(), t.ack(), t.rst()),
        )
    }

    /// Sends a client SYN; returns the real server it was forwarded to.
    fn syn_to(d: &mut Director, vip: Ipv4Addr, cport: u16, now: Duration) -> SocketAddrV4 {
        let mut f = client(vip, cport, true, false);
        assert_eq!(
            d.handle(Interface::Outside, &mut f, now),
            Verdict::Forward(Interface::Inside),
            "SYN from port {cport}"
        );
        dest(&f).0
    }

    fn real(d: &Director, name: &str) -> RealLive {
        d.reals().iter().find(|r| r.name == name).unwrap().clone()
    }

    fn events(d: &mut Director) -> Vec<(String, ServerState, ServerState, StateReason)> {
        d.drain_events()
            .map(|e| (e.real.to_string(), e.from, e.to, e.reason))
            .collect()
    }

    fn addr(last: u8, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, last), port)
    }

    /// After `syn_retries` resends without a SYN-ACK, the next SYN goes to another server; the first
    /// server's late SYN-ACK no longer matches; the new server's does.
    /// A binding's own weight (from a binder plugin) overrides the real server's weight for that binding.
    #[test]
    fn binding_weight_overrides_real_weight() {
        let config = config(2, 1, true, false);
        let mut bindings = BindingTable::from_config(&config);
        for t in &mut bindings.ports[0].targets {
            t.weight = Some(if bindings.reals[t.real_id as usize].name == "a" {
                3
            } else {
                0
            });
        }
        let mut d = Director::new(&config, bindings, L2);
        let a = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 80);
        for port in 0..8 {
            assert_eq!(
                syn_to(&mut d, WEB, 2000 + port, secs(0)),
                a,
                "weights 3:0:0"
            );
        }
    }

    #[test]
    fn ditch_after_syn_retries_reselects() {
        let mut d = director(1);
        let first = syn_to(&mut d, WEB, 1000, secs(0));
        assert_eq!(
            syn_to(&mut d, WEB, 1000, secs(1)),
            first,
            "one resend allowed"
        );
        let second = syn_to(&mut d, WEB, 1000, secs(3));
        assert_ne!(second, first, "ditched: re-given to another server");
        assert_eq!((d.counters().ditched, d.counters().reselected), (1, 1));
        let first_name = d.reals().iter().find(|r| r.address == *first.ip()).unwrap();
        assert_eq!(first_name.ditched, 1);
        assert_eq!(first_name.state, ServerState::Up, "threshold is 2");
        assert_eq!(
            d.handle(Interface::Inside, &mut server(first, 1000, false), secs(3)),
            Verdict::Drop(DropReason::NoConnection)
        );
        let mut synack = server(second, 1000, false);
        assert_eq!(
            d.handle(Interface::Inside, &mut synack, secs(3)),
            Verdict::Forward(Interface::Outside)
        );
        assert_eq!(dest(&synack).0, SocketAddrV4::new(CLIENT, 1000));
        // The new server counts one active connection, the old one none.
        let active: u32 = d.reals().iter().map(|r| r.active).sum();
        assert_eq!(active, 1);
        assert!(events(&mut d).is_empty());
    }

    /// An RST answering a SYN ditches the connection: the RST stays with the director and the client's
    /// retransmission goes to another server, even with `syn_retries = 0`.
    #[test]
    fn rst_from_server_counts_and_is_held() {
        let mut d = director(0);
        let first = syn_to(&mut d, WEB, 1000, secs(0));
        assert_eq!(
            d.handle(Interface::Inside, &mut server(first, 1000, true), secs(0)),
            Verdict::Consumed
        );
        assert_eq!(d.counters().ditched, 1);
        let second = syn_to(&mut d, WEB, 1000, secs(1));
        assert_ne!(second, first);
        assert_eq!(
            d.counters().ditched,
            1,
            "the first SYN to the new server is no resend"
        );
        // The new server answers: the connection is established there.
        assert_eq!(
            d.handle(Interface::Inside, &mut server(second, 1000, false), secs(1)),
            Verdict::Forward(Interface::Outside)
        );
    }

    /// A SYN-ACK resets the consecutive ditched count.
    #[test]
    fn synack_resets_ditched() {
        let mut d = director(0);
        let first = syn_to(&mut d, WEB, 1000, secs(0));
        d.handle(Interface::Inside, &mut server(first, 1000, true), secs(0));
        let name = d
            .reals()
            .iter()
            .find(|r| r.address == *first.ip())
            .unwrap()
            .name
            .clone();
        assert_eq!(real(&d, &name).ditched, 1);
        // Round robin comes back to the same server within a few new connections.
        for cport in 2000..2006 {
            let to = syn_to(&mut d, WEB, cport, secs(1));
            if to == first {
                d.handle(Interface::Inside, &mut server(to, cport, false), secs(1));
            }
        }
        assert_eq!(real(&d, &name).ditched, 0);
    }

    /// `failure_threshold` ditched in a row fail the server; its backup takes its connections; after
    /// `retry_after` one trial connection goes to it, and its SYN-ACK restores it.
    #[test]
    fn threshold_fails_backup_takes_over_trial_restores() {
        let mut d = director(0);
        let primary = addr(4, 80);
        let spare = addr(5, 80);
        assert_eq!(syn_to(&mut d, SOLO, 1000, secs(0)), primary);
        assert_eq!(
            d.handle(Interface::Inside, &mut server(primary, 1000, true), secs(0)),
            Verdict::Consumed,
            "the backup stands in, so the RST is held"
        );
        assert_eq!(real(&d, "primary").state, ServerState::Failed);
        assert_eq!(
            events(&mut d),
            [(
                "primary".into(),
                ServerState::Up,
                ServerState::Failed,
                StateReason::Ditched
            )]
        );
        assert_eq!(
            syn_to(&mut d, SOLO, 1000, secs(1)),
            spare,
            "retransmission to the backup"
        );
        for cport in 1001..1005 {
            assert_eq!(syn_to(&mut d, SOLO, cport, secs(2)), spare);
        }
        // Not yet 10 s: still the backup. At 10 s: one trial, then the backup again while it runs.
        assert_eq!(syn_to(&mut d, SOLO, 1100, secs(9)), spare);
        assert_eq!(syn_to(&mut d, SOLO, 1101, secs(10)), primary);
        assert_eq!(syn_to(&mut d, SOLO, 1102, secs(10)), spare);
        assert_eq!(d.counters().trials, 1);
        d.handle(
            Interface::Inside,
            &mut server(primary, 1101, false),
            secs(10),
        );
        assert_eq!(real(&d, "primary").state, ServerState::Up);
        assert_eq!(
            events(&mut d),
            [(
                "primary".into(),
                ServerState::Failed,
                ServerState::Up,
                StateReason::Answered
            )]
        );
        assert_eq!(syn_to(&mut d, SOLO, 1103, secs(11)), primary);
    }

    /// A refused trial keeps the server failed for another `retry_after`, and its client goes to the backup.
    #[test]
    fn failed_trial_waits_another_retry_after() {
        let mut d = director(0);
        let (primary, spare) = (addr(4, 80), addr(5, 80));
        syn_to(&mut d, SOLO, 1000, secs(0));
        d.handle(Interface::Inside, &mut server(primary, 1000, true), secs(0));
        assert_eq!(syn_to(&mut d, SOLO, 1001, secs(10)), primary, "trial");
        assert_eq!(
            d.handle(
                Interface::Inside,
                &mut server(primary, 1001, true),
                secs(10)
            ),
            Verdict::Consumed
        );
        assert_eq!(
            syn_to(&mut d, SOLO, 1001, secs(11)),
            spare,
            "trial client retransmits to backup"
        );
        assert_eq!(syn_to(&mut d, SOLO, 1002, secs(19)), spare);
        assert_eq!(syn_to(&mut d, SOLO, 1003, secs(20)), primary, "next trial");
        assert_eq!(real(&d, "primary").state, ServerState::Failed);
        assert_eq!(events(&mut d).len(), 1, "one change: up to failed");
    }

    /// With every server of a virtual port failed, a new SYN is answered with RST at once; a resend whose
    /// server ditched it and has no replacement gets an RST too.
    #[test]
    fn all_failed_refuses_with_rst() {
        let mut d = director(0);
        let first = syn_to(&mut d, WEB, 1000, secs(0));
        for name in ["a", "b", "c"] {
            if real(&d, name).address != *first.ip() {
                d.set_real_state(name, ServerState::Failed, secs(0))
                    .unwrap();
            }
        }
        // Its server still up (one ditch of two): the resend stays with it.
        assert_eq!(syn_to(&mut d, WEB, 1000, secs(1)), first);
        // Second ditch fails it; nobody is left.
        let mut f = client(WEB, 1000, true, false);
        assert_eq!(
            d.handle(Interface::Outside, &mut f, secs(3)),
            Verdict::Reply(Interface::Outside)
        );
        assert_eq!(
            dest(d.reply()),
            (SocketAddrV4::new(CLIENT, 1000), (false, true, true))
        );
        let mut f = client(WEB, 1001, true, false);
        assert_eq!(
            d.handle(Interface::Outside, &mut f, secs(3)),
            Verdict::Reply(Interface::Outside)
        );
        assert_eq!(d.counters().refused[DropReason::NoServer as usize], 2);
        assert_eq!(d.table().len(), 0);
        assert!(d.reals().iter().all(|r| r.active == 0));
    }

    /// A draining server (operator or `weight = 0` on reload) keeps its connections and gets no new ones;
    /// one removed from the config keeps its connections the same way.
    #[test]
    fn drain_keeps_existing_connections() {
        let mut d = director(2);
        let mut to_a = None;
        for cport in 1000..1003 {
            let to = syn_to(&mut d, WEB, cport, secs(0));
            d.handle(Interface::Inside, &mut server(to, cport, false), secs(0));
            if to.ip() == &Ipv4Addr::new(10, 0, 0, 1) {
                to_a = Some((to, cport));
            }
        }
        let (a, cport) = to_a.expect("round robin gave one to a");
        let data = |d: &mut Director, now| {
            let mut f = client(WEB, cport, false, false);
            assert_eq!(
                d.handle(Interface::Outside, &mut f, now),
                Verdict::Forward(Interface::Inside)
            );
            dest(&f).0
        };
        d.set_real_state("a", ServerState::Draining, secs(1))
            .unwrap();
        assert_eq!(
            events(&mut d),
            [(
                "a".into(),
                ServerState::Up,
                ServerState::Draining,
                StateReason::Operator
            )]
        );
        assert_eq!(data(&mut d, secs(1)), a);
        for p in 2000..2010 {
            assert_ne!(syn_to(&mut d, WEB, p, secs(1)).ip(), a.ip());
        }
        d.set_real_state("a", ServerState::Up, secs(2)).unwrap();
        assert_eq!(events(&mut d)[0].3, StateReason::Operator);

        // Reload with weight 0: draining, by config.
        let c = config(2, 0, true, true);
        d.install(
            BindingTable::from_config(&c),
            vec![Box::new(RoundRobin::new()), Box::new(RoundRobin::new())],
        );
        assert_eq!(
            events(&mut d),
            [(
                "a".into(),
                ServerState::Up,
                ServerState::Draining,
                StateReason::Config
            )]
        );
        assert_eq!(data(&mut d, secs(3)), a);
        for p in 3000..3010 {
            assert_ne!(syn_to(&mut d, WEB, p, secs(3)).ip(), a.ip());
        }

        // Reload without a: it stays, draining, while its connection lives.
        let c = config(2, 1, false, true);
        d.install(
            BindingTable::from_config(&c),
            vec![Box::new(RoundRobin::new()), Box::new(RoundRobin::new())],
        );
        assert_eq!(real(&d, "a").state, ServerState::Draining);
        assert_eq!(data(&mut d, secs(4)), a);
        let mut rst = client(WEB, cport, false, true);
        d.handle(Interface::Outside, &mut rst, secs(4));
        d.expire(secs(4) + Duration::from_secs(3600), usize::MAX);
        assert_eq!(real(&d, "a").active, 0);
        d.install(
            BindingTable::from_config(&c),
            vec![Box::new(RoundRobin::new()), Box::new(RoundRobin::new())],
        );
        assert!(
            d.reals().iter().all(|r| r.name != "a"),
            "gone once its connections ended"
        );
    }

    /// Active check verdicts fail and restore a server; an unknown name is an error; a reload that removes
    /// the check forgets its failure.
    #[test]
    fn check_results_and_operator() {
        let mut d = director(2);
        d.set_check_result("b", false, secs(1)).unwrap();
        d.set_check_result("b", false, secs(2)).unwrap();
        assert_eq!(
            events(&mut d),
            [(
                "b".into(),
                ServerState::Up,
                ServerState::Failed,
                StateReason::CheckFailed
            )]
        );
        for p in 1000..1010 {
            assert_ne!(
                *syn_to(&mut d, WEB, p, secs(2)).ip(),
                Ipv4Addr::new(10, 0, 0, 2)
            );
        }
        // A trial is for ditched failures only: a check failure waits for the check.
        for p in 1010..1020 {
            assert_ne!(
                *syn_to(&mut d, WEB, p, secs(60)).ip(),
                Ipv4Addr::new(10, 0, 0, 2)
            );
        }
        d.set_check_result("b", true, secs(3)).unwrap();
        assert_eq!(events(&mut d)[0].3, StateReason::CheckPassed);
        assert_eq!(
            d.set_real_state("nope", ServerState::Draining, secs(3)),
            Err(UnknownReal("nope".into()))
        );
        assert!(d.set_check_result("nope", true, secs(3)).is_err());

        d.set_check_result("c", false, secs(4)).unwrap();
        d.set_real_state("c", ServerState::Up, secs(4)).unwrap();
        assert_eq!(
            real(&d, "c").state,
            ServerState::Failed,
            "the check still says down"
        );
        d.set_checked(&config(2, 1, true, false));
        assert_eq!(
            real(&d, "c").state,
            ServerState::Up,
            "no check in the config: forgotten"
        );
        assert_eq!(events(&mut d).len(), 2);
        d.set_check_result("c", false, secs(5)).unwrap();
        assert_eq!(
            real(&d, "c").state,
            ServerState::Up,
            "a late verdict of a check that no longer runs"
        );
    }

    /// The event queue keeps the newest changes and counts the ones it dropped.
    #[test]
    fn event_queue_is_bounded() {
        let mut d = director(2);
        for i in 0..EVENT_CAPACITY + 10 {
            let state = if i % 2 == 0 {
                ServerState::Draining
            } else {
                ServerState::Up
            };
            d.set_real_state("b", state, secs(i as u64)).unwrap();
        }
        assert_eq!(d.drain_events().count(), EVENT_CAPACITY);
        assert_eq!(d.counters().events_lost, 10);
        assert_eq!(d.counters().state_changes, (EVENT_CAPACITY + 10) as u64);
    }
}
