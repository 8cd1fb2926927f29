//! Connection objects (patent FIG. 6C), found by hash in both directions.
//!
//! Contract: [`ConnTable`] owns every connection object of the director. It is pure (no I/O, no clock: `now`
//! is a parameter), single-threaded (owned by the data-path thread, no locks) and allocates only in
//! [`ConnTable::new`]: the slab of entries and both hash indexes are sized there for `capacity` connections and
//! never grow, so nothing on the packet path allocates.
//!
//! - Lookup is O(1) in both directions: inbound by (protocol, client, virtual address) for frames from the
//!   outside, outbound by (protocol, real server, client) for frames from the inside. Keys are attacker-chosen,
//!   so the hasher is seeded per table.
//! - Idle timeouts per state ([`Timeouts`]). Each timeout class keeps an intrusive list ordered by enqueue
//!   time; [`ConnTable::touch`] only writes `last_seen`, and [`ConnTable::expire`] re-queues entries that were
//!   touched since they were enqueued (lazy LRU). So an idle connection is removed no earlier than
//!   `last_seen + timeout`, exactly then if it saw no packet after it was enqueued, and at the latest
//!   `last_seen + 2 × timeout` (given `expire` is called often enough with enough budget).
//! - When full, [`ConnTable::insert`] evicts the oldest half-open connection (no SYN-ACK yet,
//!   [`ConnState::SynSent`], then SYN-ACK not yet acknowledged, [`ConnState::SynRecv`]), then the oldest
//!   [`ConnState::Closing`] one, and otherwise refuses: established connections and UDP flows are never
//!   broken to make room, and half-open ones (what a SYN flood makes) never pin the table.
//! - What may fail: [`ConnTable::insert`] and [`ConnTable::retarget`] ([`InsertError`]). A [`ConnId`] is valid
//!   from its insert until its removal (by [`ConnTable::remove`], expiry or eviction); using it afterwards is a
//!   bug of the caller (it may name another connection by then).

use std::fmt;
use std::hash::BuildHasher;
use std::mem::size_of;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hashbrown::{DefaultHashBuilder, HashTable};

use strum::{EnumCount, VariantArray};

use crate::wire::Protocol;

/// An address of either family and a port, as a connection object keeps them: 20 bytes, where
/// `SocketAddr` takes 32 for the IPv6 flow label and scope id the director never uses. Three per connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    ip: IpAddr,
    port: u16,
}

/// Two hasher writes per IPv4 endpoint's worth of key instead of the derived four (variant, length,
/// bytes, port): the table hashes a key for every lookup, insert and removal. Equal endpoints hash equally;
/// an IPv4 and an IPv6 endpoint are never equal, whatever their hashes.
impl std::hash::Hash for Endpoint {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        match self.ip {
            IpAddr::V4(a) => h.write_u64(u64::from(u32::from(a)) << 16 | u64::from(self.port)),
            IpAddr::V6(a) => {
                h.write_u128(u128::from(a));
                h.write_u16(self.port);
            }
        }
    }
}

impl Endpoint {
    pub const fn new(ip: IpAddr, port: u16) -> Endpoint {
        Endpoint { ip, port }
    }

    pub const fn ip(&self) -> IpAddr {
        self.ip
    }

    pub const fn port(&self) -> u16 {
        self.port
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(a: SocketAddr) -> Endpoint {
        Endpoint::new(a.ip(), a.port())
    }
}

impl From<Endpoint> for SocketAddr {
    fn from(e: Endpoint) -> SocketAddr {
        SocketAddr::new(e.ip, e.port)
    }
}

/// As `SocketAddr` prints it: `192.0.2.1:80`, `[2001:db8::1]:80`.
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        SocketAddr::from(*self).fmt(f)
    }
}

/// A point in time on the director's clock (the `now` its callers pass), in 8 bytes where a `Duration`
/// takes 16: two per connection. Nanoseconds, saturating at about 584 years.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp(u64);

impl Stamp {
    /// As the `Duration` since the clock's start that it was made from.
    pub const fn get(self) -> Duration {
        Duration::from_nanos(self.0)
    }
}

impl From<Duration> for Stamp {
    fn from(d: Duration) -> Stamp {
        Stamp(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }
}

/// Idle timeouts per connection state (config section `[timeouts]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// A TCP connection that has seen a SYN but no SYN-ACK yet.
    pub syn: Duration,
    /// A TCP connection whose server answered with SYN-ACK but whose client has not acknowledged it yet
    /// (half-open, as conntrack's SYN_RECV): what a spoofed SYN becomes, so it is short.
    pub syn_recv: Duration,
    /// A TCP connection whose client acknowledged the server's SYN-ACK.
    pub established: Duration,
    /// After a FIN or RST from either side.
    pub closing: Duration,
    /// A UDP flow.
    pub udp: Duration,
}

impl Timeouts {
    /// The idle timeout of a connection in `state` (an exhaustive match: a new state cannot go without one).
    pub fn of(&self, state: ConnState) -> Duration {
        match state {
            ConnState::SynSent => self.syn,
            ConnState::SynRecv => self.syn_recv,
            ConnState::Established => self.established,
            ConnState::Closing => self.closing,
            ConnState::Udp => self.udp,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            syn: Duration::from_secs(10),
            syn_recv: Duration::from_secs(10),
            established: Duration::from_secs(15 * 60),
            closing: Duration::from_secs(30),
            udp: Duration::from_secs(60),
        }
    }
}

/// Index of a connection object in its [`ConnTable`]; valid until the connection is removed.
pub type ConnId = u32;

/// The state of a connection, tracked from TCP flags; each state is one timeout class.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    strum::EnumCount,
    strum::VariantArray,
    strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum ConnState {
    /// The client's SYN went to the real server; no SYN-ACK yet (half-open).
    SynSent,
    /// The real server answered with a SYN-ACK; the client has not acknowledged it yet (half-open).
    SynRecv,
    /// The client acknowledged the server's SYN-ACK.
    Established,
    /// A FIN or RST was seen from either side.
    Closing,
    /// A UDP flow (no handshake, one timeout).
    Udp,
}

impl ConnState {
    /// The name used in metric labels and the admin API.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// The index of this state among the variants, in declaration order (and of its timeout list).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A connection object (patent FIG. 6C): who talks to whom through which virtual port, and what the
/// director decided for it.
///
/// `protocol`, `client`, `virtual_addr` and `real` are the table's keys and `state` picks the timeout
/// list: through [`ConnTable::get_mut`] change only the other fields; use [`ConnTable::retarget`],
/// [`ConnTable::set_state`] and [`ConnTable::touch`] for those.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    pub protocol: Protocol,
    /// The client's address and port as seen on the outside interface.
    pub client: Endpoint,
    /// The virtual address and port the client connected to.
    pub virtual_addr: Endpoint,
    /// The real server address and port the connection was given to.
    pub real: Endpoint,
    /// Frames back to the client go to the MAC its frames came from.
    pub client_mac: crate::wire::MacAddr,
    /// Index of the real server in the binding table.
    pub real_id: u32,
    /// Index of the virtual port in the binding table.
    pub port_id: u32,
    /// Change through [`ConnTable::set_state`] only.
    pub state: ConnState,
    /// SYN resends seen for this connection (patent: SynResends), saturating.
    pub syn_resends: u8,
    /// Bit 0: the client sent a FIN; bit 1: the real server sent a FIN.
    pub fin_seen: u8,
    /// When the connection object was created.
    pub created: Stamp,
    /// When the last frame of this connection was seen.
    pub last_seen: Stamp,
    /// Set when the director completed the client's handshake itself (`[director] syn_proxy`).
    pub proxy: Option<Proxied>,
    /// The policy instance that picked `real_id` itself and wants to hear when the connection ends there
    /// (`Selector::instance`); `None` when a fallback, a trial or a policy that wants no notices chose it.
    pub placed_by: Option<crate::policy::InstanceId>,
    /// When the connection was last sent to sync peers or received from one (`[sync]`).
    pub synced: SyncMark,
    /// Installed from a peer's record and no client frame of it seen here yet (`[sync]`): the first one
    /// that arrives is a flow the router moved to this director.
    pub adopted: bool,
    /// Its two directions are in the kernel's flow map (`[director] offload`): their frames are translated
    /// there and reach the director only when they open or close it.
    pub offloaded: bool,
}

/// When a connection was last synced, to a tenth of a second (four bytes: it is in every connection).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncMark(u32);

impl SyncMark {
    /// Never sent to a peer nor received from one.
    pub const NEVER: SyncMark = SyncMark(0);

    /// Synced at `now` (saturating after 13 years of uptime).
    pub fn at(now: Duration) -> SyncMark {
        let tenths = (now.as_millis() / 100).min(u128::from(u32::MAX - 1)) as u32;
        SyncMark(tenths + 1)
    }

    pub fn is_never(self) -> bool {
        self == SyncMark::NEVER
    }

    /// Synced at least `age` before `now` (or never).
    pub fn older_than(self, now: Duration, age: Duration) -> bool {
        self.is_never()
            || now
                .checked_sub(age)
                .is_some_and(|then| SyncMark::at(then).0 >= self.0)
    }
}

/// What a connection opened by the SYN proxy needs: the two handshakes it joins and how to translate
/// between them. The client's sequence numbers pass unchanged; the server's are shifted by `delta` into
/// the cookie's space, and windows are re-expressed for the scale each side applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proxied {
    /// The client's initial sequence number.
    pub client_isn: u32,
    /// The director's initial sequence number towards the client (the SYN cookie).
    pub cookie: u32,
    /// What the client's SYN asked for, as the cookie carried it; sent on to the server.
    pub options: crate::wire::SynOptions,
    /// The window of the client's handshake ACK, for the ACK the director sends the server.
    pub client_window: u16,
    /// The window scale the director announced to the client (0 when the client asked for none).
    pub announced_wscale: u8,
    /// The server's initial sequence number minus the cookie; set with `server_wscale` by its SYN-ACK.
    pub delta: u32,
    /// The window scale the server announced, if it did.
    pub server_wscale: Option<u8>,
}

impl Connection {
    fn inbound_key(&self) -> Key {
        inbound_key(self.protocol, self.client, self.virtual_addr)
    }

    fn outbound_key(&self) -> Key {
        outbound_key(self.protocol, self.real, self.client)
    }
}

/// Why [`ConnTable::insert`] or [`ConnTable::retarget`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InsertError {
    /// The table is full of established connections and UDP flows: nothing may be evicted.
    Full,
    /// Another connection already has the same client, real server and protocol (through another virtual
    /// address): the real server could not tell their frames apart.
    Collision,
    /// A connection with this client, virtual address and protocol already exists.
    Exists,
}

impl InsertError {
    /// The name used in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            InsertError::Full => "full",
            InsertError::Collision => "collision",
            InsertError::Exists => "exists",
        }
    }
}

impl std::fmt::Display for InsertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InsertError::Full => "connection table full of established connections",
            InsertError::Collision => "another connection has the same client and real server",
            InsertError::Exists => "connection already exists",
        })
    }
}

impl std::error::Error for InsertError {}

/// A successful [`ConnTable::insert`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inserted {
    /// The new connection.
    pub id: ConnId,
    /// The connection evicted to make room (the table was full), for the caller to count.
    pub evicted: Option<Connection>,
}

/// End of a list (and "no entry").
const NIL: u32 = u32::MAX;
/// The `list` of a free slot.
const FREE: u64 = ConnState::COUNT as u64;
const _: () = assert!(FREE < 1 << LIST_BITS, "the lists and FREE fit LIST_BITS");
/// Low bits of `Entry::meta` holding the list.
const LIST_BITS: u32 = 3;
/// Largest enqueue time in nanoseconds that fits `Entry::meta` (about 73 years).
const MAX_NANOS: u64 = u64::MAX >> LIST_BITS;

/// One slot of the slab.
#[derive(Clone, Copy)]
struct Entry {
    conn: Connection,
    /// Enqueue time in nanoseconds `<< LIST_BITS | list` (a state index, or `FREE`). The list is kept here,
    /// not read from `conn.state`, so a state written through `get_mut` cannot corrupt the lists.
    meta: u64,
    /// Neighbours in the timeout list; `next` also links the free list.
    prev: u32,
    next: u32,
}

impl Entry {
    fn list(&self) -> u64 {
        self.meta & ((1 << LIST_BITS) - 1)
    }

    fn enqueued(&self) -> u64 {
        self.meta >> LIST_BITS
    }

    fn is_live(&self) -> bool {
        self.list() != FREE
    }
}

/// Bytes of one slab entry.
pub const ENTRY_SIZE: usize = size_of::<Entry>();

fn nanos(t: Duration) -> u64 {
    t.as_nanos().min(MAX_NANOS as u128) as u64
}

/// A lookup key: the protocol and the two ends a frame of one direction carries (either family).
type Key = (Protocol, Endpoint, Endpoint);

fn inbound_key(protocol: Protocol, client: Endpoint, virtual_addr: Endpoint) -> Key {
    (protocol, client, virtual_addr)
}

fn outbound_key(protocol: Protocol, real: Endpoint, client: Endpoint) -> Key {
    (protocol, real, client)
}

/// The connection objects of the director, preallocated for `capacity` connections.
pub struct ConnTable {
    /// The slab; grows by push up to `capacity` (reserved in `new`, never reallocated).
    entries: Vec<Entry>,
    capacity: usize,
    len: usize,
    /// Head of the free list of slots below `entries.len()`.
    free: u32,
    /// Per timeout list: oldest entry, newest entry, number of entries.
    heads: [u32; ConnState::COUNT],
    tails: [u32; ConnState::COUNT],
    counts: [usize; ConnState::COUNT],
    /// Ids by inbound key; sized for 2 × capacity so that deleted-slot cleanup rehashes in place.
    inbound: HashTable<ConnId>,
    /// Ids by outbound key; sized like `inbound`.
    outbound: HashTable<ConnId>,
    hasher: DefaultHashBuilder,
    timeouts: Timeouts,
}

impl std::fmt::Debug for ConnTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnTable")
            .field("capacity", &self.capacity)
            .field("len", &self.len)
            .field("count_by_state", &self.counts)
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

impl ConnTable {
    /// A table for at most `capacity` connections; allocates everything it will ever use.
    ///
    /// Panics if `capacity` does not fit a [`ConnId`] (configuration validation bounds it first).
    pub fn new(capacity: usize, timeouts: Timeouts) -> ConnTable {
        assert!(
            capacity < NIL as usize,
            "connection table capacity {capacity} too large"
        );
        // hashbrown rehashes in place (no allocation) when live items fit in half its capacity; with at most
        // `capacity` live keys, 2 × capacity guarantees that.
        let index_capacity = capacity.saturating_mul(2);
        ConnTable {
            entries: Vec::with_capacity(capacity),
            capacity,
            len: 0,
            free: NIL,
            heads: [NIL; ConnState::COUNT],
            tails: [NIL; ConnState::COUNT],
            counts: [0; ConnState::COUNT],
            inbound: HashTable::with_capacity(index_capacity),
            outbound: HashTable::with_capacity(index_capacity),
            hasher: DefaultHashBuilder::default(),
            timeouts,
        }
    }

    /// Applies new idle timeouts (on config reload); they hold for existing connections too.
    pub fn set_timeouts(&mut self, timeouts: Timeouts) {
        self.timeouts = timeouts;
    }

    /// The idle timeouts in force.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// The most connections the table holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The number of live connections.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no connection is live.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes allocated by the table (slab plus both indexes), for docs and metrics.
    pub fn memory_bytes(&self) -> usize {
        self.entries.capacity() * ENTRY_SIZE
            + self.inbound.allocation_size()
            + self.outbound.allocation_size()
    }

    /// The connection a frame from the outside interface belongs to.
    pub fn lookup_inbound(
        &self,
        protocol: Protocol,
        client: Endpoint,
        virtual_addr: Endpoint,
    ) -> Option<ConnId> {
        let key = inbound_key(protocol, client, virtual_addr);
        self.inbound
            .find(self.hasher.hash_one(key), |&id| {
                self.entries[id as usize].conn.inbound_key() == key
            })
            .copied()
    }

    /// The connection a frame from the inside interface (source `real`, destination `client`) belongs to.
    pub fn lookup_outbound(
        &self,
        protocol: Protocol,
        real: Endpoint,
        client: Endpoint,
    ) -> Option<ConnId> {
        let key = outbound_key(protocol, real, client);
        self.outbound
            .find(self.hasher.hash_one(key), |&id| {
                self.entries[id as usize].conn.outbound_key() == key
            })
            .copied()
    }

    /// Adds a connection (`created` and `last_seen` set by the caller; it is enqueued at `last_seen`).
    ///
    /// When the table is full the oldest half-open connection (SYN sent, then SYN received), else the oldest
    /// closing one, is evicted and
    /// returned in [`Inserted::evicted`].
    pub fn insert(&mut self, conn: Connection) -> Result<Inserted, InsertError> {
        let in_key = conn.inbound_key();
        let out_key = conn.outbound_key();
        let in_hash = self.hasher.hash_one(in_key);
        let out_hash = self.hasher.hash_one(out_key);
        let entries = &self.entries;
        if self
            .inbound
            .find(in_hash, |&id| {
                entries[id as usize].conn.inbound_key() == in_key
            })
            .is_some()
        {
            return Err(InsertError::Exists);
        }
        if self
            .outbound
            .find(out_hash, |&id| {
                entries[id as usize].conn.outbound_key() == out_key
            })
            .is_some()
        {
            return Err(InsertError::Collision);
        }
        let mut evicted = None;
        if self.len == self.capacity {
            let victim = [ConnState::SynSent, ConnState::SynRecv, ConnState::Closing]
                .into_iter()
                .map(|s| self.heads[s.index()])
                .find(|&head| head != NIL)
                .ok_or(InsertError::Full)?;
            evicted = Some(self.remove(victim));
        }

        let entry = Entry {
            conn,
            meta: FREE,
            prev: NIL,
            next: NIL,
        };
        let id = if self.free != NIL {
            let id = self.free;
            self.free = self.entries[id as usize].next;
            self.entries[id as usize] = entry;
            id
        } else {
            debug_assert!(self.entries.len() < self.capacity);
            self.entries.push(entry);
            (self.entries.len() - 1) as ConnId
        };
        self.len += 1;
        self.link_tail(id, conn.state.index(), nanos(conn.last_seen.get()));

        let (entries, hasher) = (&self.entries, &self.hasher);
        self.inbound.insert_unique(in_hash, id, |&i| {
            hasher.hash_one(entries[i as usize].conn.inbound_key())
        });
        self.outbound.insert_unique(out_hash, id, |&i| {
            hasher.hash_one(entries[i as usize].conn.outbound_key())
        });
        Ok(Inserted { id, evicted })
    }

    /// The connection `id`.
    pub fn get(&self, id: ConnId) -> &Connection {
        let entry = &self.entries[id as usize];
        debug_assert!(entry.is_live(), "stale connection id {id}");
        &entry.conn
    }

    /// The connection `id`, to update the fields that are not keys or state (see [`Connection`]).
    pub fn get_mut(&mut self, id: ConnId) -> &mut Connection {
        let entry = &mut self.entries[id as usize];
        debug_assert!(entry.is_live(), "stale connection id {id}");
        &mut entry.conn
    }

    /// Records a frame of connection `id` at `now` (only writes `last_seen`).
    pub fn touch(&mut self, id: ConnId, now: Duration) {
        let conn = &mut self.entries[id as usize].conn;
        conn.last_seen = conn.last_seen.max(now.into());
    }

    /// Moves connection `id` to `state` (and its timeout class); counts as a frame at `now`.
    pub fn set_state(&mut self, id: ConnId, state: ConnState, now: Duration) {
        self.touch(id, now);
        let entry = &mut self.entries[id as usize];
        debug_assert!(entry.is_live(), "stale connection id {id}");
        entry.conn.state = state;
        if entry.list() != state.index() as u64 {
            self.unlink(id);
            self.link_tail(id, state.index(), nanos(now));
        }
    }

    /// Gives connection `id` to another real server (a SYN re-given after the first server ditched it).
    ///
    /// Refuses with [`InsertError::Collision`] if another connection already has that client and real
    /// server; the connection is then unchanged.
    pub fn retarget(
        &mut self,
        id: ConnId,
        real: Endpoint,
        real_id: u32,
    ) -> Result<(), InsertError> {
        let old = self.entries[id as usize].conn;
        debug_assert!(
            self.entries[id as usize].is_live(),
            "stale connection id {id}"
        );
        let new_key = outbound_key(old.protocol, real, old.client);
        let new_hash = self.hasher.hash_one(new_key);
        let entries = &self.entries;
        match self.outbound.find(new_hash, |&i| {
            entries[i as usize].conn.outbound_key() == new_key
        }) {
            Some(&other) if other != id => return Err(InsertError::Collision),
            Some(_) => {
                self.entries[id as usize].conn.real_id = real_id;
                return Ok(());
            }
            None => {}
        }
        self.unindex_outbound(id, &old);
        let conn = &mut self.entries[id as usize].conn;
        conn.real = real;
        conn.real_id = real_id;
        let (entries, hasher) = (&self.entries, &self.hasher);
        self.outbound.insert_unique(new_hash, id, |&i| {
            hasher.hash_one(entries[i as usize].conn.outbound_key())
        });
        Ok(())
    }

    /// Removes connection `id` and returns it.
    pub fn remove(&mut self, id: ConnId) -> Connection {
        let entry = self.entries[id as usize];
        assert!(entry.is_live(), "stale connection id {id}");
        let conn = entry.conn;
        if let Ok(found) = self
            .inbound
            .find_entry(self.hasher.hash_one(conn.inbound_key()), |&i| i == id)
        {
            found.remove();
        } else {
            debug_assert!(false, "connection {id} missing from the inbound index");
        }
        self.unindex_outbound(id, &conn);
        self.unlink(id);
        let entry = &mut self.entries[id as usize];
        entry.meta = FREE;
        entry.prev = NIL;
        entry.next = self.free;
        self.free = id;
        self.len -= 1;
        conn
    }

    /// Removes up to `budget` expired connections, calling `on_expired` for each; returns how many it
    /// removed.
    ///
    /// `budget` bounds the entries examined (removed or re-queued), so the data path never stalls; call
    /// again (see [`ConnTable::next_expiry`]) to finish. The four timeout lists are served in turn.
    pub fn expire(
        &mut self,
        now: Duration,
        budget: usize,
        on_expired: impl FnMut(&Connection),
    ) -> usize {
        self.expire_checked(now, budget, |_| None, on_expired)
    }

    /// [`ConnTable::expire`], asking `seen` of each connection about to expire whether it saw a frame
    /// later than its `last_seen` (one that went elsewhere: the kernel's offload); if that is recent enough,
    /// the connection is kept with that time.
    pub fn expire_checked(
        &mut self,
        now: Duration,
        budget: usize,
        mut seen: impl FnMut(&Connection) -> Option<Duration>,
        mut on_expired: impl FnMut(&Connection),
    ) -> usize {
        let now_ns = nanos(now);
        let timeouts = self.timeout_nanos();
        let mut pending = [true; ConnState::COUNT];
        let mut steps = 0;
        let mut removed = 0;
        while pending.iter().any(|&p| p) {
            for list in 0..ConnState::COUNT {
                if !pending[list] {
                    continue;
                }
                if steps == budget {
                    return removed;
                }
                let head = self.heads[list];
                if head == NIL {
                    pending[list] = false;
                    continue;
                }
                let entry = &self.entries[head as usize];
                let timeout = timeouts[list];
                if entry.enqueued().saturating_add(timeout) > now_ns {
                    // Ordered by enqueue time and last_seen >= enqueued: nothing further is due.
                    pending[list] = false;
                    continue;
                }
                steps += 1;
                let mut due = nanos(entry.conn.last_seen.get()).saturating_add(timeout) <= now_ns;
                if due
                    && let Some(later) = seen(&entry.conn)
                    && later > entry.conn.last_seen.get()
                {
                    self.entries[head as usize].conn.last_seen = later.into();
                    due = nanos(later).saturating_add(timeout) <= now_ns;
                }
                if due {
                    let conn = self.remove(head);
                    on_expired(&conn);
                    removed += 1;
                } else {
                    self.unlink(head);
                    self.link_tail(head, list, now_ns);
                }
            }
        }
        removed
    }

    /// The earliest time at which [`ConnTable::expire`] has work to do (a list head is due), if any.
    pub fn next_expiry(&self) -> Option<Duration> {
        let timeouts = self.timeout_nanos();
        (0..ConnState::COUNT)
            .filter(|&list| self.heads[list] != NIL)
            .map(|list| {
                let head = &self.entries[self.heads[list] as usize];
                Duration::from_nanos(head.enqueued().saturating_add(timeouts[list]))
            })
            .min()
    }

    /// Slots in use or freed so far: the bound of [`ConnTable::slot`] (for walks spread over ticks).
    pub fn slots(&self) -> usize {
        self.entries.len()
    }

    /// The connection in slot `id`, if one is live there (slots below [`ConnTable::slots`]; any other id
    /// is `None`).
    pub fn slot(&self, id: ConnId) -> Option<&Connection> {
        self.entries
            .get(id as usize)
            .filter(|entry| entry.is_live())
            .map(|entry| &entry.conn)
    }

    /// Every live connection, in slot order (for the admin API flow dump; not for the packet path).
    pub fn iter(&self) -> impl Iterator<Item = (ConnId, &Connection)> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, entry)| entry.is_live())
            .map(|(id, entry)| (id as ConnId, &entry.conn))
    }

    /// Calls `f` on every live connection (config reload re-points `real_id` and `port_id`). `f` must not
    /// change the key fields (`protocol`, `client`, `virtual_addr`, `real`): those go through [`ConnTable::retarget`].
    pub fn for_each_mut(&mut self, mut f: impl FnMut(&mut Connection)) {
        for entry in self.entries.iter_mut().filter(|entry| entry.is_live()) {
            f(&mut entry.conn);
        }
    }

    /// Live connections per state, indexed by [`ConnState::index`].
    pub fn count_by_state(&self) -> [usize; ConnState::COUNT] {
        self.counts
    }

    /// The idle timeout of each state's list, indexed by [`ConnState::index`].
    fn timeout_nanos(&self) -> [u64; ConnState::COUNT] {
        std::array::from_fn(|i| nanos(self.timeouts.of(ConnState::VARIANTS[i])))
    }

    fn unindex_outbound(&mut self, id: ConnId, conn: &Connection) {
        if let Ok(found) = self
            .outbound
            .find_entry(self.hasher.hash_one(conn.outbound_key()), |&i| i == id)
        {
            found.remove();
        } else {
            debug_assert!(false, "connection {id} missing from the outbound index");
        }
    }

    fn link_tail(&mut self, id: ConnId, list: usize, enqueued: u64) {
        let tail = self.tails[list];
        let entry = &mut self.entries[id as usize];
        entry.meta = (enqueued << LIST_BITS) | list as u64;
        entry.prev = tail;
        entry.next = NIL;
        if tail == NIL {
            self.heads[list] = id;
        } else {
            self.entries[tail as usize].next = id;
        }
        self.tails[list] = id;
        self.counts[list] += 1;
    }

    fn unlink(&mut self, id: ConnId) {
        let entry = &self.entries[id as usize];
        let (list, prev, next) = (entry.list() as usize, entry.prev, entry.next);
        if prev == NIL {
            self.heads[list] = next;
        } else {
            self.entries[prev as usize].next = next;
        }
        if next == NIL {
            self.tails[list] = prev;
        } else {
            self.entries[next as usize].prev = prev;
        }
        self.counts[list] -= 1;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::net::{IpAddr, Ipv4Addr};

    const SYN: Duration = Duration::from_secs(10);
    const EST: Duration = Duration::from_secs(900);
    const CLOSING: Duration = Duration::from_secs(30);
    const UDP: Duration = Duration::from_secs(60);

    fn timeouts() -> Timeouts {
        Timeouts {
            syn: SYN,
            syn_recv: SYN,
            established: EST,
            closing: CLOSING,
            udp: UDP,
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn addr(ip: [u8; 4], port: u16) -> Endpoint {
        Endpoint::new(IpAddr::V4(Ipv4Addr::from(ip)), port)
    }

    /// A connection from client port `c` to VIP 192.0.2.1:`v`, given to 10.0.0.1:`r`.
    /// Client 198.51.100.7:`c`, virtual 192.0.2.1:`v`, real 10.0.0.1:`r`, in `state` since `now`.
    pub(crate) fn conn(c: u16, v: u16, r: u16, state: ConnState, now: Duration) -> Connection {
        Connection {
            protocol: if state == ConnState::Udp {
                Protocol::Udp
            } else {
                Protocol::Tcp
            },
            client: addr([198, 51, 100, 7], c),
            virtual_addr: addr([192, 0, 2, 1], v),
            real: addr([10, 0, 0, 1], r),
            client_mac: crate::wire::MacAddr([2, 0, 0, 0, 0, 1]),
            real_id: r as u32,
            port_id: v as u32,
            state,
            syn_resends: 0,
            fin_seen: 0,
            created: now.into(),
            last_seen: now.into(),
            proxy: None,
            placed_by: None,
            synced: SyncMark::NEVER,
            adopted: false,
            offloaded: false,
        }
    }

    fn expire_all(table: &mut ConnTable, now: Duration) -> Vec<Connection> {
        let mut out = Vec::new();
        table.expire(now, usize::MAX, |c| out.push(*c));
        out
    }

    /// A connection is found by its inbound key and by its outbound key, and nothing else matches.
    #[test]
    fn lookups_both_ways() {
        let mut table = ConnTable::new(8, timeouts());
        let c = conn(40000, 80, 8001, ConnState::SynSent, secs(0));
        let id = table.insert(c).unwrap().id;
        assert_eq!(
            table.lookup_inbound(Protocol::Tcp, c.client, c.virtual_addr),
            Some(id)
        );
        assert_eq!(
            table.lookup_outbound(Protocol::Tcp, c.real, c.client),
            Some(id)
        );
        assert_eq!(
            table.lookup_inbound(Protocol::Udp, c.client, c.virtual_addr),
            None
        );
        assert_eq!(
            table.lookup_inbound(Protocol::Tcp, c.virtual_addr, c.client),
            None
        );
        assert_eq!(table.lookup_outbound(Protocol::Tcp, c.client, c.real), None);
        assert_eq!(table.get(id), &c);
        assert_eq!(table.len(), 1);
        assert_eq!(table.iter().collect::<Vec<_>>(), vec![(id, &c)]);
    }

    /// Removing a connection frees both keys and its slot, and returns it.
    #[test]
    fn remove_frees_both_keys() {
        let mut table = ConnTable::new(1, timeouts());
        let c = conn(40000, 80, 8001, ConnState::Established, secs(0));
        let id = table.insert(c).unwrap().id;
        assert_eq!(table.remove(id), c);
        assert!(table.is_empty());
        assert_eq!(table.count_by_state(), [0; ConnState::COUNT]);
        assert_eq!(
            table.lookup_inbound(Protocol::Tcp, c.client, c.virtual_addr),
            None
        );
        assert_eq!(table.lookup_outbound(Protocol::Tcp, c.real, c.client), None);
        assert_eq!(table.iter().count(), 0);
        // The slot and both keys can be used again, even at capacity 1.
        let again = table.insert(c).unwrap();
        assert_eq!(again.evicted, None);
    }

    /// Each timeout class expires an idle connection exactly at its timeout, not a nanosecond before.
    #[test]
    fn each_class_expires_at_its_timeout() {
        for (state, timeout) in [
            (ConnState::SynSent, SYN),
            (ConnState::Established, EST),
            (ConnState::Closing, CLOSING),
            (ConnState::Udp, UDP),
        ] {
            let mut table = ConnTable::new(4, timeouts());
            let start = secs(100);
            let c = conn(40000, 80, 8001, state, start);
            table.insert(c).unwrap();
            assert_eq!(table.next_expiry(), Some(start + timeout));
            let just_before = start + timeout - Duration::from_nanos(1);
            assert!(expire_all(&mut table, just_before).is_empty(), "{state:?}");
            assert_eq!(
                expire_all(&mut table, start + timeout),
                vec![c],
                "{state:?}"
            );
            assert!(table.is_empty());
            assert_eq!(table.next_expiry(), None);
        }
    }

    /// A touch extends the life: kept at the first timeout, removed no later than one timeout after requeue.
    #[test]
    fn touch_extends() {
        let mut table = ConnTable::new(4, timeouts());
        let id = table
            .insert(conn(40000, 80, 8001, ConnState::SynSent, secs(0)))
            .unwrap()
            .id;
        table.touch(id, secs(5));
        assert_eq!(table.get(id).last_seen.get(), secs(5));
        // An older `now` never moves last_seen back.
        table.touch(id, secs(1));
        assert_eq!(table.get(id).last_seen.get(), secs(5));
        assert!(expire_all(&mut table, secs(10)).is_empty());
        assert!(expire_all(&mut table, secs(15) - Duration::from_nanos(1)).is_empty());
        assert!(expire_all(&mut table, secs(19)).is_empty());
        assert_eq!(expire_all(&mut table, secs(20)).len(), 1);
    }

    /// A state change moves the connection to the new state's timeout class and counts as activity.
    #[test]
    fn state_change_moves_between_classes() {
        let mut table = ConnTable::new(4, timeouts());
        let id = table
            .insert(conn(40000, 80, 8001, ConnState::SynSent, secs(0)))
            .unwrap()
            .id;
        assert_eq!(table.count_by_state(), [1, 0, 0, 0, 0]);
        table.set_state(id, ConnState::SynRecv, secs(1));
        assert_eq!(table.count_by_state(), [0, 1, 0, 0, 0]);
        table.set_state(id, ConnState::Established, secs(1));
        assert_eq!(table.count_by_state(), [0, 0, 1, 0, 0]);
        assert_eq!(table.get(id).state, ConnState::Established);
        assert_eq!(table.get(id).last_seen.get(), secs(1));
        // Far beyond the SYN timeout, well within the established one.
        assert!(expire_all(&mut table, secs(500)).is_empty());
        table.set_state(id, ConnState::Closing, secs(600));
        assert_eq!(table.count_by_state(), [0, 0, 0, 1, 0]);
        assert!(expire_all(&mut table, secs(629)).is_empty());
        assert_eq!(expire_all(&mut table, secs(630)).len(), 1);
        assert_eq!(table.count_by_state(), [0; ConnState::COUNT]);
    }

    /// Expiry re-queues a connection touched since it was enqueued and removes the idle one behind it.
    #[test]
    fn lazy_requeue_keeps_recently_touched() {
        let mut table = ConnTable::new(4, timeouts());
        let a = table
            .insert(conn(1, 80, 8001, ConnState::SynSent, secs(0)))
            .unwrap()
            .id;
        table
            .insert(conn(2, 80, 8001, ConnState::SynSent, secs(1)))
            .unwrap();
        table.touch(a, secs(9));
        assert!(expire_all(&mut table, secs(10)).is_empty());
        let gone = expire_all(&mut table, secs(11));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].client.port(), 2);
        assert_eq!(
            table.lookup_inbound(Protocol::Tcp, gone[0].client, gone[0].virtual_addr),
            None
        );
        // a was re-queued at 10: kept until 20 even though idle since 9.
        assert!(expire_all(&mut table, secs(19)).is_empty());
        assert_eq!(
            table.lookup_inbound(
                Protocol::Tcp,
                table.get(a).client,
                table.get(a).virtual_addr
            ),
            Some(a)
        );
        assert_eq!(expire_all(&mut table, secs(20)).len(), 1);
    }

    /// Expiry examines at most `budget` entries per call and serves every class.
    #[test]
    fn expire_respects_budget() {
        let mut table = ConnTable::new(16, timeouts());
        for c in 0..5 {
            table
                .insert(conn(c, 80, 8001, ConnState::SynSent, secs(0)))
                .unwrap();
        }
        table
            .insert(conn(100, 53, 53, ConnState::Udp, secs(0)))
            .unwrap();
        let mut seen = Vec::new();
        assert_eq!(table.expire(secs(100), 2, |c| seen.push(c.state)), 2);
        // Round-robin over the lists: the UDP flow is served in the first round.
        assert_eq!(seen, vec![ConnState::SynSent, ConnState::Udp]);
        assert_eq!(table.expire(secs(100), 3, |_| {}), 3);
        assert_eq!(table.expire(secs(100), 3, |_| {}), 1);
        assert!(table.is_empty());
        assert_eq!(table.expire(secs(100), 0, |_| {}), 0);
    }

    /// A full table evicts the oldest SYN-sent connection, then the oldest SYN-received (half-open) one,
    /// then the oldest closing one, then refuses.
    #[test]
    fn full_table_evicts_half_open_then_closing_then_refuses() {
        let mut table = ConnTable::new(5, timeouts());
        let est = conn(1, 80, 8001, ConnState::Established, secs(0));
        let closing = conn(2, 80, 8001, ConnState::Closing, secs(0));
        let syn_old = conn(3, 80, 8001, ConnState::SynSent, secs(1));
        let syn_new = conn(4, 80, 8001, ConnState::SynSent, secs(2));
        let syn_recv = conn(5, 80, 8001, ConnState::SynRecv, secs(0));
        for c in [est, closing, syn_old, syn_new, syn_recv] {
            assert_eq!(table.insert(c).unwrap().evicted, None);
        }
        let evicted = |table: &mut ConnTable, port| {
            table
                .insert(conn(port, 80, 8001, ConnState::Established, secs(3)))
                .map(|i| i.evicted)
        };
        assert_eq!(evicted(&mut table, 10), Ok(Some(syn_old)));
        assert_eq!(evicted(&mut table, 11), Ok(Some(syn_new)));
        assert_eq!(evicted(&mut table, 12), Ok(Some(syn_recv)));
        assert_eq!(evicted(&mut table, 13), Ok(Some(closing)));
        assert_eq!(evicted(&mut table, 14), Err(InsertError::Full));
        let udp = conn(15, 53, 53, ConnState::Udp, secs(3));
        assert_eq!(table.insert(udp), Err(InsertError::Full));
        assert_eq!(table.len(), 5);
        assert_eq!(table.count_by_state(), [0, 0, 5, 0, 0]);

        // Only UDP flows: refused too.
        let mut table = ConnTable::new(1, timeouts());
        table.insert(udp).unwrap();
        assert_eq!(
            table.insert(conn(16, 53, 53, ConnState::Udp, secs(3))),
            Err(InsertError::Full)
        );
    }

    /// A second connection with the same client and real server via another VIP is refused; a duplicate too.
    #[test]
    fn collision_and_duplicate_refused() {
        let mut table = ConnTable::new(4, timeouts());
        let c = conn(40000, 80, 8001, ConnState::SynSent, secs(0));
        table.insert(c).unwrap();
        let mut other_vip = c;
        other_vip.virtual_addr = addr([192, 0, 2, 2], 80);
        assert_eq!(table.insert(other_vip), Err(InsertError::Collision));
        let mut other_real = c;
        other_real.real = addr([10, 0, 0, 2], 8001);
        assert_eq!(table.insert(other_real), Err(InsertError::Exists));
        assert_eq!(table.len(), 1);
        // Same addresses over UDP are a different connection.
        let mut udp = c;
        udp.protocol = Protocol::Udp;
        udp.state = ConnState::Udp;
        assert!(table.insert(udp).is_ok());
    }

    /// Retargeting moves the outbound key to the new real server; a colliding target is refused.
    #[test]
    fn retarget_moves_outbound_key() {
        let mut table = ConnTable::new(4, timeouts());
        let c = conn(40000, 80, 8001, ConnState::SynSent, secs(0));
        let id = table.insert(c).unwrap().id;
        let new_real = addr([10, 0, 0, 2], 8002);
        table.retarget(id, new_real, 7).unwrap();
        assert_eq!(table.get(id).real, new_real);
        assert_eq!(table.get(id).real_id, 7);
        assert_eq!(table.lookup_outbound(Protocol::Tcp, c.real, c.client), None);
        assert_eq!(
            table.lookup_outbound(Protocol::Tcp, new_real, c.client),
            Some(id)
        );
        assert_eq!(
            table.lookup_inbound(Protocol::Tcp, c.client, c.virtual_addr),
            Some(id)
        );
        // Another connection of the same client already on the old real server (via another VIP).
        let mut other = c;
        other.virtual_addr = addr([192, 0, 2, 2], 80);
        let other_id = table.insert(other).unwrap().id;
        assert_eq!(
            table.retarget(other_id, new_real, 7),
            Err(InsertError::Collision)
        );
        assert_eq!(table.get(other_id).real, c.real);
        // Retargeting to the server it already has is a no-op.
        table.retarget(id, new_real, 7).unwrap();
        assert_eq!(table.remove(id).real, new_real);
        assert_eq!(
            table.lookup_outbound(Protocol::Tcp, new_real, c.client),
            None
        );
    }

    /// Shorter timeouts from a config reload apply to existing connections.
    #[test]
    fn set_timeouts_applies_to_existing() {
        let mut table = ConnTable::new(4, timeouts());
        table
            .insert(conn(1, 80, 8001, ConnState::Established, secs(0)))
            .unwrap();
        assert!(expire_all(&mut table, secs(60)).is_empty());
        table.set_timeouts(Timeouts {
            established: secs(60),
            ..timeouts()
        });
        assert_eq!(expire_all(&mut table, secs(60)).len(), 1);
    }

    /// Ten times capacity of insert/remove churn never reallocates the slab or either index.
    #[test]
    fn no_reallocation_after_construction() {
        let cap = 1000;
        let mut table = ConnTable::new(cap, timeouts());
        let sizes = |t: &ConnTable| {
            (
                t.entries.capacity(),
                // Not `capacity()`: that counts tombstones out and moves without any reallocation.
                t.inbound.allocation_size(),
                t.outbound.allocation_size(),
                t.memory_bytes(),
            )
        };
        let before = sizes(&table);
        let mut live = std::collections::VecDeque::new();
        for i in 0..(10 * cap as u32) {
            let mut c = conn(
                (i % 60000) as u16,
                80,
                8001,
                ConnState::Established,
                secs(0),
            );
            c.client = addr(i.to_be_bytes(), 1024);
            live.push_back(table.insert(c).unwrap().id);
            if live.len() == cap {
                // Remove in a scattered order to leave deleted slots all over the index.
                for _ in 0..cap / 2 {
                    let id = live.remove(live.len() / 3).unwrap();
                    table.remove(id);
                }
            }
        }
        assert_eq!(sizes(&table), before);
    }

    /// The entry stays compact (see docs for bytes per connection).
    #[test]
    fn entry_is_compact() {
        const { assert!(ENTRY_SIZE <= 152) };
        println!(
            "entry {ENTRY_SIZE} bytes, connection {} bytes",
            size_of::<Connection>()
        );
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert {
            client: u8,
            vip: u8,
            real: u8,
            state: ConnState,
        },
        Remove(usize),
        Touch(usize),
        SetState(usize, ConnState),
        Retarget(usize, u8),
        Expire,
        Advance(u64),
    }

    fn state() -> impl Strategy<Value = ConnState> {
        prop::sample::select(ConnState::VARIANTS.to_vec())
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..6u8, 0..2u8, 0..3u8, state())
                .prop_map(|(client, vip, real, state)| Op::Insert { client, vip, real, state }),
            1 => any::<usize>().prop_map(Op::Remove),
            2 => any::<usize>().prop_map(Op::Touch),
            2 => (any::<usize>(), state()).prop_map(|(i, s)| Op::SetState(i, s)),
            1 => (any::<usize>(), 0..3u8).prop_map(|(i, r)| Op::Retarget(i, r)),
            1 => Just(Op::Expire),
            2 => (1..20_000u64).prop_map(Op::Advance),
        ]
    }

    /// What the table should hold: a connection plus its place in its timeout list.
    #[derive(Clone, Debug)]
    struct Modelled {
        conn: Connection,
        enqueued: Duration,
        seq: u64,
    }

    fn model_conn(client: u8, vip: u8, real: u8, state: ConnState, now: Duration) -> Connection {
        let protocol = if state == ConnState::Udp {
            Protocol::Udp
        } else {
            Protocol::Tcp
        };
        Connection {
            protocol,
            client: addr([198, 51, 100, client % 3], 1000 + (client / 3) as u16),
            virtual_addr: addr([192, 0, 2, 1 + vip], 80),
            real: addr([10, 0, 0, 1 + real], 8001),
            client_mac: crate::wire::MacAddr([2, 0, 0, 0, 0, client]),
            real_id: real as u32,
            port_id: vip as u32,
            state,
            syn_resends: 0,
            fin_seen: 0,
            created: now.into(),
            last_seen: now.into(),
            proxy: None,
            placed_by: None,
            synced: SyncMark::NEVER,
            adopted: false,
            offloaded: false,
        }
    }

    fn model_timeout(state: ConnState) -> Duration {
        // Short timeouts (ms) so that Advance makes things expire.
        match state {
            ConnState::SynSent => Duration::from_millis(10_000),
            ConnState::SynRecv => Duration::from_millis(5_000),
            ConnState::Established => Duration::from_millis(40_000),
            ConnState::Closing => Duration::from_millis(15_000),
            ConnState::Udp => Duration::from_millis(25_000),
        }
    }

    proptest! {
        /// Random insert/remove/touch/set_state/retarget/expire sequences agree with a HashMap model.
        #[test]
        fn agrees_with_model(ops in prop::collection::vec(op(), 1..200)) {
            let cap = 5;
            let mut table = ConnTable::new(cap, Timeouts {
                syn: model_timeout(ConnState::SynSent),
                syn_recv: model_timeout(ConnState::SynRecv),
                established: model_timeout(ConnState::Established),
                closing: model_timeout(ConnState::Closing),
                udp: model_timeout(ConnState::Udp),
            });
            let mut model: HashMap<ConnId, Modelled> = HashMap::new();
            let mut now = Duration::ZERO;
            let mut seq = 0u64;
            let pick = |model: &HashMap<ConnId, Modelled>, i: usize| {
                let mut ids: Vec<ConnId> = model.keys().copied().collect();
                ids.sort();
                (!ids.is_empty()).then(|| ids[i % ids.len()])
            };
            for op in ops {
                match op {
                    Op::Insert { client, vip, real, state } => {
                        let c = model_conn(client, vip, real, state, now);
                        let expected = if model.values().any(|m| m.conn.inbound_key() == c.inbound_key()) {
                            Err(InsertError::Exists)
                        } else if model.values().any(|m| m.conn.outbound_key() == c.outbound_key()) {
                            Err(InsertError::Collision)
                        } else if model.len() == cap {
                            let victim = [ConnState::SynSent, ConnState::SynRecv, ConnState::Closing].into_iter().find_map(|s| {
                                model.iter().filter(|(_, m)| m.conn.state == s).min_by_key(|(_, m)| m.seq).map(|(&id, _)| id)
                            });
                            match victim {
                                Some(v) => Ok(Some(model.remove(&v).unwrap().conn)),
                                None => Err(InsertError::Full),
                            }
                        } else {
                            Ok(None)
                        };
                        let got = table.insert(c);
                        prop_assert_eq!(got.map(|i| i.evicted), expected);
                        if let Ok(inserted) = got {
                            prop_assert!(!model.contains_key(&inserted.id));
                            seq += 1;
                            model.insert(inserted.id, Modelled { conn: c, enqueued: now, seq });
                        }
                    }
                    Op::Remove(i) => if let Some(id) = pick(&model, i) {
                        prop_assert_eq!(table.remove(id), model.remove(&id).unwrap().conn);
                    },
                    Op::Touch(i) => if let Some(id) = pick(&model, i) {
                        table.touch(id, now);
                        model.get_mut(&id).unwrap().conn.last_seen = now.into();
                    },
                    Op::SetState(i, state) => if let Some(id) = pick(&model, i) {
                        table.set_state(id, state, now);
                        let m = model.get_mut(&id).unwrap();
                        m.conn.last_seen = now.into();
                        if m.conn.state != state {
                            m.conn.state = state;
                            seq += 1;
                            m.seq = seq;
                            m.enqueued = now;
                        }
                    },
                    Op::Retarget(i, real) => if let Some(id) = pick(&model, i) {
                        let mut moved = model[&id].conn;
                        moved.real = addr([10, 0, 0, 1 + real], 8001);
                        moved.real_id = real as u32;
                        let clash = model.iter().any(|(&other, m)| other != id && m.conn.outbound_key() == moved.outbound_key());
                        let got = table.retarget(id, moved.real, moved.real_id);
                        if clash {
                            prop_assert_eq!(got, Err(InsertError::Collision));
                        } else {
                            prop_assert_eq!(got, Ok(()));
                            model.get_mut(&id).unwrap().conn = moved;
                        }
                    },
                    Op::Expire => {
                        // Lists in enqueue order; due heads are removed if idle, else re-queued at `now`.
                        let mut due: Vec<(ConnId, u64)> = model.iter()
                            .filter(|(_, m)| m.enqueued + model_timeout(m.conn.state) <= now)
                            .map(|(&id, m)| (id, m.seq)).collect();
                        due.sort_by_key(|&(_, s)| s);
                        let mut expected = Vec::new();
                        for (id, _) in due {
                            let m = model.get_mut(&id).unwrap();
                            if m.conn.last_seen.get() + model_timeout(m.conn.state) <= now {
                                expected.push(model.remove(&id).unwrap().conn);
                            } else {
                                seq += 1;
                                m.seq = seq;
                                m.enqueued = now;
                            }
                        }
                        let mut got = Vec::new();
                        let n = table.expire(now, usize::MAX, |c| got.push(*c));
                        prop_assert_eq!(n, got.len());
                        let key = |c: &Connection| c.inbound_key();
                        got.sort_by_key(key);
                        expected.sort_by_key(key);
                        prop_assert_eq!(got, expected);
                    }
                    Op::Advance(ms) => now += Duration::from_millis(ms),
                }

                // Contents, counts and every possible lookup agree.
                prop_assert_eq!(table.len(), model.len());
                let mut counts = [0; ConnState::COUNT];
                for (&id, m) in &model {
                    prop_assert_eq!(table.get(id), &m.conn);
                    counts[m.conn.state.index()] += 1;
                }
                prop_assert_eq!(table.count_by_state(), counts);
                prop_assert_eq!(table.iter().count(), model.len());
                for client in 0..6 {
                    for vip in 0..2 {
                        for real in 0..3 {
                            for state in [ConnState::SynSent, ConnState::Udp] {
                                let c = model_conn(client, vip, real, state, now);
                                let by_in = model.iter().find(|(_, m)| m.conn.inbound_key() == c.inbound_key()).map(|(&id, _)| id);
                                let by_out = model.iter().find(|(_, m)| m.conn.outbound_key() == c.outbound_key()).map(|(&id, _)| id);
                                prop_assert_eq!(table.lookup_inbound(c.protocol, c.client, c.virtual_addr), by_in);
                                prop_assert_eq!(table.lookup_outbound(c.protocol, c.real, c.client), by_out);
                            }
                        }
                    }
                }
            }
        }
    }
}
