//! The director (patent FIGS. 5 to 9): one frame and `now` in, a [`Verdict`] out.
//!
//! The director owns the connection table, the live state of every real server and its neighbour (MAC)
//! entries, and one [`Selector`] per virtual port. It is driven by one thread: the live capture loop, the pcap
//! replay, a test or a fuzzer, all the same way. Pure: no I/O, no clock, no allocation per packet, no lock.
//!
//! One job per file, all of them `impl Director`:
//! - `path.rs`: the packet path. From the outside, a frame to a virtual address is looked up by (client,
//!   virtual address); a SYN with no connection opens one, or is refused (RST; ICMP port unreachable for UDP);
//!   the destination is rewritten to the real server and the frame leaves on the inside. From the inside, a
//!   frame from a real server is looked up by (real server, client), its source is rewritten to the virtual
//!   address and it leaves on the outside. ICMP errors about a connection are translated both ways.
//! - `select.rs`: how a SYN picks a server: the bound targets with live state, backups standing in for failed
//!   servers, trial connections, the port's policy, and re-selection when a server ditches a connection.
//! - `notify.rs`: telling a policy how the connections it placed ended (closed, ditched): queued on the
//!   packet path, delivered to the policy between packet batches.
//! - `reals.rs`: the real servers' live state (patent FIG. 6B: state, ditched connections, failure threshold,
//!   backup), fed by ditched connections, active health checks and the operator; every change is queued with
//!   its reason for [`Director::drain_events`]. The rules are in docs/failure-handling.md.
//! - `synproxy.rs`: the SYN proxy (`[director] syn_proxy`): SYNs answered with cookies, a connection opened
//!   only by a client's valid ACK, then joined to the server's handshake and translated for its lifetime.
//! - `neighbours.rs`: Layer 2: ARP and neighbour discovery answers for virtual addresses, gratuitous ARP and
//!   unsolicited neighbour advertisements, the real servers' MACs.
//! - `stats.rs`: counters, drop reasons, and the [`Snapshot`] published for metrics and the admin API.
//! - `sync.rs`: connection sync (`[sync]`): records for the peers at the moments they must hear of, the
//!   refresh and bulk-resync walks, and installing the peers' records.
//! - `offload.rs`: `[director] offload`: established connections handed to the kernel's XDP program and
//!   taken back when they close, and what the kernel did folded into the counters and the idle expiry.
//! - `install.rs`: putting a new binding table and its selectors in place (start and reload).
//!
//! What fails: every frame that cannot be translated is dropped with a [`DropReason`] and counted; nothing on
//! this path panics on packet bytes.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hashbrown::HashMap;

use crate::Interface;
use crate::binding::BindingTable;
use crate::config::{Config, Role};
use crate::conntable::ConnTable;
use crate::policy::{Candidate, Selector};
use crate::shadow::ShadowSender;
use crate::syncookie::CookieKey;
use crate::wire::MacAddr;

mod install;
mod neighbours;
mod notify;
mod offload;
mod path;
mod reals;
mod select;
mod stats;
mod sync;
mod synproxy;
#[cfg(test)]
mod tests;

pub use notify::{NOTICE_CAPACITY, NoticeResult};
pub use reals::{RealLive, StateChange, StateReason, UnknownReal};
pub use stats::{Counters, DropReason, FlowCount, Handled, PerReason, Published, Snapshot};
pub use sync::{NoSync, RoleChange};

use neighbours::Neighbour;
use notify::{Ended, Notices};
use reals::{EVENT_CAPACITY, Health};
use stats::release;
use synproxy::SynProxy;

/// Largest frame the director generates (an ICMP echo reply to a full-size request).
const REPLY_CAPACITY: usize = 2048;
/// Wake-ups in a row that stop at their batch bound before new connections are shed: 8 x 256 frames of
/// backlog is a flood, not a crowd of clients connecting at once (1,000 SYNs in one burst fill about 4).
pub const SHED_AFTER: u32 = 8;
/// Connections examined per tick at most, so a tick never stalls the data path.
const EXPIRE_BUDGET: usize = 4096;

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
    /// The frame was rewritten in place and leaves by `forward`, and a generated frame in
    /// [`Director::reply`] leaves by `reply` (the SYN proxy joining a server's handshake to the client's).
    ForwardAndReply {
        forward: Interface,
        reply: Interface,
    },
}

/// The director's own Layer-2 identity on each side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layer2 {
    pub outside_mac: MacAddr,
    pub inside_mac: MacAddr,
    /// Sender address of ARP requests for real servers; `0.0.0.0` (an ARP probe) when the inside has none.
    /// Neighbour solicitations for IPv6 real servers come from the link-local address of `inside_mac`.
    pub inside_ip: std::net::Ipv4Addr,
}

/// The packet path. See the module documentation.
pub struct Director {
    bindings: Arc<BindingTable>,
    selectors: Vec<Box<dyn Selector>>,
    reals: Vec<RealLive>,
    /// Parallel to `reals`.
    health: Vec<Health>,
    events: VecDeque<StateChange>,
    /// How the connections policies placed ended, until the policies are told between batches.
    notices: Notices,
    /// The latest `now` seen, for state changes made without one (a reload).
    now: Duration,
    neighbours: HashMap<IpAddr, Neighbour>,
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
    published: Published,
    /// When the last snapshot was published, and whether one is due at the next tick regardless.
    published_at: Option<Duration>,
    publish_due: bool,
    /// Per (virtual port, real server): `port_id * reals.len() + real_id`; sized at install, never per packet.
    flows: Vec<FlowCount>,
    /// Per virtual machine, by [`DropReason`] index; sized at install.
    rejected: Vec<PerReason>,
    /// `Some` while `[director] syn_proxy` is on; set at start and reload.
    syn_proxy: Option<SynProxy>,
    /// The secret of the SYN cookies, drawn once: a reload keeps accepting the cookies already sent.
    cookie_key: CookieKey,
    /// `[director] new_per_wakeup`, and what is left of it in this wake-up (`u32::MAX`: no bound).
    new_per_wakeup: u32,
    new_budget: u32,
    /// Wake-ups in a row that stopped at their batch bound.
    behind_streak: u32,
    /// Where shadow policies' jobs go (`vipd run`), which ports have one (sized at install), and the
    /// install they belong to.
    shadow_tx: Option<ShadowSender>,
    shadowed: Vec<bool>,
    shadow_generation: u64,
    /// `Some` with `[sync]` (`vipd run`): the queues to and from the sync thread.
    sync: Option<sync::Syncing>,
    /// Active serves; a standby (`[sync] role`, `vipd ha`) forwards nothing and only installs sync.
    role: Role,
    /// Gratuitous ARP rounds on becoming active, and how far apart (`[sync] garp_repeat`, `garp_interval`);
    /// the interval of the rounds in progress.
    garp: (u8, Duration),
    announce_every: Duration,
    /// `[cluster]`: one of several active directors behind ECMP. A server's reply may reach this director
    /// without its connection (translated by `returns`), and a client's ACK may be the first this director
    /// hears of a handshake whose SYN-ACK went through another one.
    cluster: bool,
    /// `[cluster] consistent_policies`, and per virtual port whether its policy is one: a client frame
    /// there with no connection (a flow the router moved) is placed by the policy rather than dropped.
    consistent: Vec<String>,
    placeable: Vec<bool>,
    /// Set while a moved flow is being placed: only the consistent policy's own answer will do.
    placing_moved: bool,
    returns: crate::binding::Returns,
    /// `[director] plugin_keep_warm` (zero: off), when the policies are next asked to keep warm, and when
    /// one was last asked for a connection.
    keep_warm: Duration,
    keep_warm_next: Duration,
    last_select: Option<Duration>,
    /// The MAC the latest unicast frame on the outside came from (the router, behind ECMP): where a reply
    /// translated without a connection goes.
    outside_peer: Option<MacAddr>,
    /// `[director] offload`: where established connections go to be translated in the kernel, the kernel's
    /// totals already folded into `counters`, and when the kernel's last-seen times are next read.
    offload: Option<Box<dyn crate::offload::Offload>>,
    offload_folded: crate::Sides<(u64, u64)>,
}

/// Whether a frame is for the director: unicast to `ours`, or broadcast or multicast (the group bit: ARP
/// requests, neighbour solicitations). The capture is promiscuous, so a bridge that floods a unicast frame
/// for another host (one whose port it has not learned yet, another director on the segment) hands it to
/// the director too; translating that would send a second copy.
fn for_us(frame: &[u8], ours: MacAddr) -> bool {
    match frame.get(..6) {
        Some(dst) => dst == ours.0 || dst[0] & 1 == 1,
        None => true,
    }
}

impl Director {
    /// A director for `bindings` with the built-in round-robin on every port, for unit tests. Everything
    /// else assembles its director from a config with [`crate::assemble::Assembly`].
    #[cfg(test)]
    pub(crate) fn new(config: &Config, bindings: BindingTable, l2: Layer2) -> Director {
        let selectors = bindings
            .ports
            .iter()
            .map(|_| Box::new(crate::policy::RoundRobin::new()) as Box<dyn Selector>)
            .collect();
        Director::with_selectors(config, bindings, selectors, l2)
    }

    /// A director whose virtual port `i` is served by `selectors[i]` ([`crate::assemble::Assembly::director`]
    /// makes them from a config).
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
        let mut director = Director {
            bindings: Arc::new(BindingTable::default()),
            selectors: Vec::new(),
            reals: Vec::new(),
            health: Vec::new(),
            events: VecDeque::with_capacity(EVENT_CAPACITY),
            notices: Notices::new(),
            now: Duration::ZERO,
            neighbours: HashMap::new(),
            table: ConnTable::new(config.director.max_connections as usize, config.timeouts),
            l2,
            syn_retries: config.director.syn_retries.min(254) as u8,
            counters: Counters::default(),
            reply: vec![0; REPLY_CAPACITY].into_boxed_slice(),
            reply_len: 0,
            // Sized by `install`, for the binding table it puts in place.
            candidates: Vec::new(),
            announce_left: 0,
            announce_next: Duration::ZERO,
            published: Arc::new(ArcSwap::from_pointee(Snapshot::default())),
            published_at: None,
            publish_due: true,
            flows: Vec::new(),
            rejected: Vec::new(),
            syn_proxy: None,
            cookie_key: CookieKey::new(),
            new_per_wakeup: 0,
            new_budget: u32::MAX,
            behind_streak: 0,
            shadow_tx: None,
            shadowed: Vec::new(),
            shadow_generation: 0,
            sync: None,
            role: Role::Active,
            garp: (
                crate::config::DEFAULT_GARP_REPEAT,
                crate::config::DEFAULT_GARP_INTERVAL,
            ),
            announce_every: Duration::ZERO,
            cluster: false,
            consistent: Vec::new(),
            placeable: Vec::new(),
            placing_moved: false,
            returns: crate::binding::Returns::new(),
            keep_warm: Duration::ZERO,
            keep_warm_next: Duration::ZERO,
            last_select: None,
            outside_peer: None,
            offload: None,
            offload_folded: crate::Sides::new((0, 0), (0, 0)),
        };
        director.install(bindings, selectors);
        director.set_checked(config);
        director.set_limits(config);
        director
    }

    /// Sends the new connections of ports with a shadow policy to the shadow thread (`vipd run`).
    pub fn set_shadow(&mut self, sender: ShadowSender) {
        self.shadow_tx = Some(sender);
    }

    /// The install the shadow jobs now belong to: [`crate::shadow::ShadowSet::generation`] of the
    /// shadows that go with the bindings in force.
    pub fn shadow_generation(&self) -> u64 {
        self.shadow_generation
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

    /// Handles one frame that arrived on `from` at `now`.
    pub fn handle(&mut self, from: Interface, frame: &mut [u8], now: Duration) -> Verdict {
        let side = from;
        self.now = now;
        self.counters.rx_frames[side] += 1;
        self.counters.rx_bytes[side] += frame.len() as u64;
        let ours = match from {
            Interface::Outside => self.l2.outside_mac,
            Interface::Inside => self.l2.inside_mac,
        };
        if self.cluster
            && from == Interface::Outside
            && frame.first().is_some_and(|b| b & 1 == 0)
            && let Some(src) = frame.get(6..12)
        {
            // Behind ECMP every unicast frame on the outside comes from the router (client flows, its BGP
            // session): where replies translated without a connection go.
            let mut mac = [0u8; 6];
            mac.copy_from_slice(src);
            self.outside_peer = Some(MacAddr(mac));
        }
        let verdict = if !for_us(frame, ours) {
            Verdict::Drop(DropReason::OtherHost)
        } else if self.role == Role::Standby {
            self.standby(from, frame, now)
        } else {
            match from {
                Interface::Outside => self.inbound(frame, now),
                Interface::Inside => self.outbound(frame, now),
            }
        };
        let handled = match verdict {
            Verdict::Forward(to) => {
                self.counters.forwarded[to] += 1;
                self.counters.tx_bytes[to] += frame.len() as u64;
                Handled::Forwarded
            }
            Verdict::Reply(to) => {
                self.counters.generated[to] += 1;
                self.counters.tx_bytes[to] += self.reply_len as u64;
                Handled::Replied
            }
            Verdict::Drop(reason) => {
                self.counters.drops[side][reason as usize] += 1;
                Handled::Dropped
            }
            Verdict::Consumed => Handled::Consumed,
            Verdict::ForwardAndReply { forward, reply } => {
                self.counters.forwarded[forward] += 1;
                self.counters.tx_bytes[forward] += frame.len() as u64;
                self.counters.generated[reply] += 1;
                self.counters.tx_bytes[reply] += self.reply_len as u64;
                Handled::Forwarded
            }
        };
        self.counters.handled[side][handled as usize] += 1;
        verdict
    }

    /// A wake-up of the data path begins. `behind`: the last one stopped at its batch bound with frames
    /// left in a ring. After [`SHED_AFTER`] such wake-ups in a row (a sustained overload, not the burst of a
    /// crowd of clients connecting at once), at most `[director] new_per_wakeup` connections are opened in this one (SYNs,
    /// first datagrams, ACKs that complete a cookie handshake); the rest are dropped as
    /// [`DropReason::Shed`], so frames of existing connections keep flowing when new-connection work alone
    /// could fill the wake-up. The SYN proxy's cookie answers are stateless and never shed.
    /// Policies are told here how the connections they placed ended since the last wake-up or tick.
    pub fn wakeup(&mut self, behind: bool) {
        self.deliver_notices();
        self.behind_streak = if behind {
            self.behind_streak.saturating_add(1)
        } else {
            0
        };
        self.new_budget = if self.behind_streak >= SHED_AFTER && self.new_per_wakeup > 0 {
            self.new_per_wakeup
        } else {
            u32::MAX
        };
    }

    /// Takes one new connection's worth of this wake-up's budget; false: shed it.
    fn take_new(&mut self) -> bool {
        if self.new_budget == 0 {
            return false;
        }
        self.new_budget -= 1;
        true
    }

    /// Between wake-ups: asks the policies to keep warm (`[director] plugin_keep_warm`) while one served a
    /// connection in the last [`crate::policy::KEEP_WARM_FOR`]. The time it wants to run again, if any.
    pub fn upkeep(&mut self, now: Duration) -> Option<Duration> {
        let active = !self.keep_warm.is_zero()
            && self
                .last_select
                .is_some_and(|t| now.saturating_sub(t) < crate::policy::KEEP_WARM_FOR);
        if !active {
            return None;
        }
        if now >= self.keep_warm_next {
            self.keep_policies_warm(now);
            self.keep_warm_next = now + self.keep_warm;
        }
        Some(self.keep_warm_next)
    }

    /// Periodic work: expires idle connections (bounded), syncs connections with peers (bounded), tells policies how the connections they placed
    /// ended, refreshes neighbours, announces virtual addresses, and publishes a [`Snapshot`]. Frames to
    /// send go through `send`.
    pub fn tick(&mut self, now: Duration, send: &mut dyn FnMut(Interface, &[u8])) {
        self.now = now;
        self.offload_tick();
        self.expire(now, EXPIRE_BUDGET);
        self.sync_tick(now);
        self.deliver_notices();
        self.resolve_neighbours(now, send);
        self.announce(now, send);
        self.publish_if_due(now);
    }

    /// Removes up to `budget` idle connections.
    pub fn expire(&mut self, now: Duration, budget: usize) {
        let Director {
            table,
            reals,
            counters,
            flows,
            notices,
            sync,
            offload,
            ..
        } = self;
        let timeouts = table.timeouts();
        // An offloaded connection's frames may have gone through the kernel only: ask it before expiring.
        let kernel = std::cell::RefCell::new(offload);
        let seen = |conn: &crate::conntable::Connection| {
            let age = kernel
                .borrow_mut()
                .as_deref_mut()
                .filter(|_| conn.offloaded)?
                .seen(conn)?;
            Some(now.saturating_sub(age))
        };
        table.expire_checked(now, budget, seen, |conn| {
            counters.expired += 1;
            release(reals, flows, &mut kernel.borrow_mut(), conn);
            notices.push(Ended::Closed, conn, counters);
            sync::sync_removed(sync, counters, conn, &timeouts, now);
        });
    }
}
