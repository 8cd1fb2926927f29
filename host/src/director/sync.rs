//! The data path's side of connection sync (`[sync]`, [`crate::sync`]): what it sends, and installing what
//! peers sent.
//!
//! Sent (only by an active director, through [`crate::sync::SyncSender`], never blocking): a connection once
//! its server answered (SYN-ACK: SYN received, never on the SYN alone, as IPVS), on every state change after
//! that, and a delete when it leaves the table; a UDP flow when it is created. [`Director::tick`] walks a
//! bounded slice of the table ([`REFRESH_BUDGET`] slots) and re-sends connections last synced more than a
//! third of their state's timeout ago, so a long idle connection never expires on a peer; and, when a peer
//! asked for a bulk resync, walks the whole table in bounded steps, then marks its end.
//!
//! Not synced: connections the SYN proxy opened (their sequence translation is not in the record), and
//! connections on a real server the config no longer has. Ditching and re-selection happen before the
//! server answers, so nothing about them is ever synced.
//!
//! Installed (in the tick, at most [`INSTALL_BUDGET`] per tick): a record is keyed by (protocol, client,
//! virtual address); its virtual port is looked up in the binding table in force and its real server by
//! name ([`crate::sync::wire::name_id`]); either unknown drops the record, counted. Installed connections
//! expire by the same timeouts as any other, no later than the sender's copy would plus one timeout.
//! When no `[sync]` is configured, none of this runs: every hook is one `Option` check.

use std::sync::atomic::Ordering;
use std::time::Duration;

use hashbrown::HashMap;

use super::notify::Ended;
use super::stats::{flow_mut, release};
use super::{Counters, Director};
use crate::binding::Lookup;
use crate::config::Role;
use crate::conntable::{ConnId, ConnState, Connection, SyncMark, Timeouts};
use crate::sync::{Dropped, Incoming, Outgoing, Record, SyncInbox, SyncSender, wire};

/// Table slots the refresh walk looks at per tick (every 10 ms: 100,000 slots a second).
pub(super) const REFRESH_BUDGET: usize = 1024;
/// Table slots a bulk resync walks per tick.
pub(super) const BULK_BUDGET: usize = 1024;
/// Received records installed per tick at most; the rest wait in the queue.
pub(super) const INSTALL_BUDGET: usize = 4096;

/// The director's sync state; `None` in the director without `[sync]`.
pub(super) struct Syncing {
    tx: SyncSender,
    inbox: SyncInbox,
    /// An active director sends its connections; a standby only installs.
    sends: bool,
    /// [`wire::name_id`] of each real server's name, by `real_id` (set at install).
    names: Vec<u64>,
    by_name: HashMap<u64, u32>,
    /// The next slot the refresh walk looks at.
    refresh_at: u32,
    /// The next slot of a bulk resync in progress.
    bulk_at: Option<u32>,
}

impl Syncing {
    /// Queues a message, counting it when the queue is full.
    fn send(&mut self, message: Outgoing, counters: &mut Counters) -> bool {
        let sent = self.tx.send(message);
        if !sent {
            counters.sync_dropped[Dropped::QueueFull as usize] += 1;
        }
        sent
    }

    /// The record of `conn` at `now`, if it may be synced.
    fn record(
        &self,
        conn: &Connection,
        timeouts: &Timeouts,
        now: Duration,
        delete: bool,
    ) -> Option<Record> {
        if conn.proxy.is_some() {
            return None;
        }
        let real_name = *self.names.get(conn.real_id as usize)?;
        let idle = timeouts
            .of(conn.state)
            .saturating_sub(now.saturating_sub(conn.last_seen.get()));
        let record = Record {
            protocol: conn.protocol,
            state: conn.state,
            client: conn.client,
            virtual_addr: conn.virtual_addr,
            real: conn.real,
            real_name,
            client_mac: conn.client_mac,
            idle_ms: idle.as_millis().min(u128::from(u32::MAX)) as u32,
            syn_resends: conn.syn_resends,
            fin_seen: conn.fin_seen,
            delete,
        };
        record.wire_len().map(|_| record)
    }
}

/// A role change ([`Director::set_role`]): what it was, what it is, and the connections in the table at the
/// change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoleChange {
    pub from: Role,
    pub to: Role,
    pub connections: usize,
}

/// [`Director::set_role`] without `[sync]`: a director alone is always active.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoSync;

impl std::fmt::Display for NoSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "this director has no [sync] table: it is not part of a pair and is always active",
        )
    }
}

/// Whether a connection in its present state and sync history is sent: not before its server answered,
/// and a closing one only if it was sent before (a SYN reset by its client never is).
fn syncable(conn: &Connection) -> bool {
    match conn.state {
        ConnState::SynSent => false,
        ConnState::Closing => !conn.synced.is_never(),
        ConnState::SynRecv | ConnState::Established | ConnState::Udp => true,
    }
}

/// A connection left the table: a delete for the peers if they were ever sent it. A free function so that
/// expiry, which borrows the table, can call it.
pub(super) fn sync_removed(
    sync: &mut Option<Syncing>,
    counters: &mut Counters,
    conn: &Connection,
    timeouts: &Timeouts,
    now: Duration,
) {
    let Some(s) = sync else { return };
    if !s.sends || conn.synced.is_never() {
        return;
    }
    if let Some(record) = s.record(conn, timeouts, now, true) {
        s.send(Outgoing::Record(record), counters);
    }
}

impl Director {
    /// Connection sync (`[sync]`): `tx` towards the sync thread, `inbox` from it, starting in `role`. Only
    /// an active director forwards and sends; every director installs what it receives.
    pub fn set_sync(&mut self, tx: SyncSender, inbox: SyncInbox, role: Role) {
        tx.stats()
            .active
            .store(role == Role::Active, Ordering::Relaxed);
        self.sync = Some(Syncing {
            tx,
            inbox,
            sends: role == Role::Active,
            names: Vec::new(),
            by_name: HashMap::new(),
            refresh_at: 0,
            bulk_at: None,
        });
        self.role = role;
        self.sync_names();
    }

    /// The role in force: always active without `[sync]`.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Makes this director active or standby (`vipd ha`, keepalived's notify scripts). Becoming active:
    /// forwarding with the table as synced, gratuitous ARP (`[sync] garp_repeat` rounds `garp_interval`
    /// apart) from the next tick, and sending sync. Becoming standby: forwarding, announcing and sending
    /// stop; the table stays, kept by the new active director's records, and counts as synced (it was
    /// the truth until now). Without `[sync]` a director is always active: refused.
    pub fn set_role(&mut self, role: Role, now: Duration) -> Result<RoleChange, NoSync> {
        let Some(s) = &mut self.sync else {
            return Err(NoSync);
        };
        let change = RoleChange {
            from: self.role,
            to: role,
            connections: self.table.len(),
        };
        if role == self.role {
            return Ok(change);
        }
        self.role = role;
        s.sends = role == Role::Active;
        s.bulk_at = None;
        let stats = s.tx.stats();
        stats.active.store(role == Role::Active, Ordering::Relaxed);
        stats.role_changes.fetch_add(1, Ordering::Relaxed);
        match role {
            Role::Active => {
                (self.announce_left, self.announce_every) = self.garp;
                self.announce_next = now;
            }
            Role::Standby => {
                stats.synced.store(true, Ordering::Relaxed);
                self.announce_left = 0;
                self.unoffload_all();
            }
        }
        self.publish_due = true;
        Ok(change)
    }

    /// The real servers' name ids, after `reals` changed (start and reload).
    pub(super) fn sync_names(&mut self) {
        let Some(s) = &mut self.sync else { return };
        s.names = self.reals.iter().map(|r| wire::name_id(&r.name)).collect();
        s.by_name = s
            .names
            .iter()
            .enumerate()
            .map(|(real_id, &id)| (id, real_id as u32))
            .collect();
    }

    /// Hook of the packet path: connection `id` was created or changed state; sent if it is due.
    #[inline]
    pub(super) fn sync_conn(&mut self, id: ConnId, now: Duration) {
        if self.sync.is_some() {
            self.sync_send(id, now);
        }
    }

    fn sync_send(&mut self, id: ConnId, now: Duration) -> bool {
        let Some(s) = &mut self.sync else {
            return false;
        };
        let conn = self.table.get(id);
        if !s.sends || !syncable(conn) {
            return true;
        }
        let Some(record) = s.record(conn, &self.table.timeouts(), now, false) else {
            return true;
        };
        if !s.send(Outgoing::Record(record), &mut self.counters) {
            return false;
        }
        self.table.get_mut(id).synced = SyncMark::at(now);
        true
    }

    /// Periodic sync work of [`Director::tick`]: install what peers sent, go on with a bulk resync, and
    /// refresh a slice of the table. Bounded per call.
    pub(super) fn sync_tick(&mut self, now: Duration) {
        if self.sync.is_none() {
            return;
        }
        for _ in 0..INSTALL_BUDGET {
            let Some(message) = self.sync.as_mut().and_then(|s| s.inbox.take()) else {
                break;
            };
            match message {
                Incoming::Record(record) => self.install_record(&record, now),
                Incoming::BulkEnd => {
                    if let Some(s) = &self.sync {
                        s.tx.stats().synced.store(true, Ordering::Relaxed);
                    }
                }
                Incoming::BulkRequest => {
                    // An active director answers with its table; a standby holds a copy, not the truth,
                    // and answers with the end alone (so that two standbys starting together both count
                    // as synced and keepalived can elect one).
                    let Director { sync, counters, .. } = self;
                    if let Some(s) = sync {
                        if s.sends {
                            s.bulk_at = Some(0);
                        } else {
                            s.send(Outgoing::BulkEnd, counters);
                        }
                    }
                }
            }
        }
        self.bulk_step(now);
        self.refresh_step(now);
    }

    /// Sends the next [`BULK_BUDGET`] slots of a bulk resync, and its end after the last; stops at a full
    /// queue and goes on from there at the next tick.
    fn bulk_step(&mut self, now: Duration) {
        let Some(start) = self.sync.as_ref().and_then(|s| s.bulk_at) else {
            return;
        };
        let end = (start as usize + BULK_BUDGET).min(self.table.slots());
        for slot in start..end as u32 {
            if self.table.slot(slot).is_some() && !self.sync_send(slot, now) {
                if let Some(s) = &mut self.sync {
                    s.bulk_at = Some(slot);
                }
                return;
            }
        }
        let Some(s) = &mut self.sync else { return };
        s.bulk_at = Some(end as u32);
        if end == self.table.slots() && s.send(Outgoing::BulkEnd, &mut self.counters) {
            s.bulk_at = None;
        }
    }

    /// Re-sends the connections of the next [`REFRESH_BUDGET`] slots last synced more than a third of their
    /// state's timeout ago.
    fn refresh_step(&mut self, now: Duration) {
        let Some(start) = self.sync.as_ref().filter(|s| s.sends).map(|s| s.refresh_at) else {
            return;
        };
        let slots = self.table.slots();
        let start = if start as usize >= slots { 0 } else { start };
        let end = (start as usize + REFRESH_BUDGET).min(slots);
        let timeouts = self.table.timeouts();
        for slot in start..end as u32 {
            let due = self
                .table
                .slot(slot)
                .is_some_and(|c| c.synced.older_than(now, timeouts.of(c.state) / 3));
            if due {
                self.freshen(slot);
                if !self.sync_send(slot, now) {
                    break;
                }
            }
        }
        if let Some(s) = &mut self.sync {
            s.refresh_at = end as u32;
        }
    }

    /// Puts a peer's record into the table: creates, updates or deletes the connection it names.
    fn install_record(&mut self, r: &Record, now: Duration) {
        let existing = self
            .table
            .lookup_inbound(r.protocol, r.client, r.virtual_addr);
        if r.delete {
            if let Some(id) = existing {
                self.remove_synced(id);
                self.counters.sync_installed += 1;
            }
            return;
        }
        let Lookup::Port(port_id) =
            self.bindings
                .lookup(r.virtual_addr.ip(), r.protocol, r.virtual_addr.port())
        else {
            self.counters.sync_dropped[Dropped::UnknownPort as usize] += 1;
            return;
        };
        let real_id = self
            .sync
            .as_ref()
            .and_then(|s| s.by_name.get(&r.real_name).copied())
            .filter(|&id| {
                self.reals
                    .get(id as usize)
                    .is_some_and(|real| real.address == r.real.ip())
            });
        let Some(real_id) = real_id else {
            self.counters.sync_dropped[Dropped::UnknownReal as usize] += 1;
            return;
        };
        let idle = Duration::from_millis(r.idle_ms.into());
        let last_seen = now.saturating_sub(self.table.timeouts().of(r.state).saturating_sub(idle));
        let id = match existing {
            Some(id) if self.table.get(id).real == r.real => id,
            other => {
                // New, or on another real server than the peer says: the peer's copy wins.
                if let Some(id) = other {
                    self.remove_synced(id);
                }
                let conn = Connection {
                    protocol: r.protocol,
                    client: r.client,
                    virtual_addr: r.virtual_addr,
                    real: r.real,
                    client_mac: r.client_mac,
                    real_id,
                    port_id,
                    state: r.state,
                    syn_resends: r.syn_resends,
                    fin_seen: r.fin_seen,
                    created: now.into(),
                    last_seen: last_seen.into(),
                    proxy: None,
                    placed_by: None,
                    synced: SyncMark::at(now),
                    adopted: true,
                    offloaded: false,
                };
                if self.admit(conn).is_err() {
                    // Full of established connections, or a collision: counted like a full queue.
                    self.counters.sync_dropped[Dropped::QueueFull as usize] += 1;
                    return;
                }
                self.counters.sync_installed += 1;
                return;
            }
        };
        let old = *self.table.get(id);
        if old.state != r.state {
            self.table.set_state(id, r.state, now);
            if let Some(real) = self.reals.get_mut(real_id as usize) {
                match (
                    old.state == ConnState::Closing,
                    r.state == ConnState::Closing,
                ) {
                    (false, true) => real.closing += 1,
                    (true, false) => real.closing = real.closing.saturating_sub(1),
                    _ => {}
                }
            }
        }
        let conn = self.table.get_mut(id);
        conn.last_seen = last_seen.into();
        conn.fin_seen = r.fin_seen;
        conn.syn_resends = r.syn_resends;
        conn.client_mac = r.client_mac;
        conn.synced = SyncMark::at(now);
        self.counters.sync_installed += 1;
    }

    /// Inserts a connection that exists elsewhere already (a peer's), with the accounting of a new one.
    pub(super) fn admit(
        &mut self,
        conn: Connection,
    ) -> Result<ConnId, crate::conntable::InsertError> {
        let inserted = self.table.insert(conn)?;
        if let Some(evicted) = inserted.evicted {
            self.evicted(&evicted);
        }
        if let Some(r) = self.reals.get_mut(conn.real_id as usize) {
            r.active += 1;
            if conn.state == ConnState::Closing {
                r.closing += 1;
            }
        }
        if let Some(f) = flow_mut(&mut self.flows, self.reals.len(), &conn) {
            f.active += 1;
        }
        Ok(inserted.id)
    }

    /// Removes a connection on a peer's word: no delete is sent back.
    fn remove_synced(&mut self, id: ConnId) {
        let conn = self.table.remove(id);
        release(&mut self.reals, &mut self.flows, &mut self.offload, &conn);
        self.notices.push(Ended::Closed, &conn, &mut self.counters);
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::mpsc::{Receiver, SyncSender as ChannelSender};

    use super::super::Verdict;
    use super::super::tests::{L2, WEB, client, config, secs, server, syn_to};
    use super::*;
    use crate::Interface;
    use crate::binding::BindingTable;
    use crate::conntable::Endpoint;
    use crate::sync::queues;

    struct Peer {
        d: Director,
        out: Receiver<Outgoing>,
        inbox: ChannelSender<Incoming>,
    }

    fn peer(role: Role) -> Peer {
        let config = config(2, 1, true, false);
        let mut d = Director::new(&config, BindingTable::from_config(&config), L2);
        let ((tx, inbox), (out, in_tx)) = queues(crate::sync::SyncStats::new(role));
        d.set_sync(tx, inbox, role);
        Peer {
            d,
            out,
            inbox: in_tx,
        }
    }

    fn records(p: &Peer) -> Vec<Record> {
        p.out
            .try_iter()
            .map(|m| match m {
                Outgoing::Record(r) => r,
                Outgoing::BulkEnd => panic!("unexpected bulk end"),
            })
            .collect()
    }

    fn tick(d: &mut Director, now: Duration) {
        d.tick(now, &mut |_, _| {});
    }

    /// Opens a connection from client port `cport` through the handshake; returns its real server.
    fn establish(d: &mut Director, cport: u16, now: Duration) -> SocketAddr {
        let real = syn_to(d, WEB, cport, now);
        d.handle(Interface::Inside, &mut server(real, cport, false), now);
        d.handle(
            Interface::Outside,
            &mut client(WEB, cport, false, false),
            now,
        );
        real
    }

    /// A SYN alone sends nothing; the server's SYN-ACK sends one record, the client's ACK one more, the
    /// client's RST one (closing), and the connection's removal a delete.
    #[test]
    fn records_at_the_moments_peers_must_hear_of() {
        let mut a = peer(Role::Active);
        let real = syn_to(&mut a.d, WEB, 1000, secs(0));
        assert!(records(&a).is_empty(), "no record on the SYN alone");
        a.d.handle(Interface::Inside, &mut server(real, 1000, false), secs(0));
        let r = records(&a);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].state, r[0].delete), (ConnState::SynRecv, false));
        assert_eq!(r[0].real, Endpoint::from(real));
        let named = a.d.reals().iter().find(|s| s.address == real.ip()).unwrap();
        assert_eq!(r[0].real_name, wire::name_id(&named.name));
        a.d.handle(
            Interface::Outside,
            &mut client(WEB, 1000, false, false),
            secs(1),
        );
        let r = records(&a);
        assert_eq!(r.len(), 1, "exactly one record when established");
        assert_eq!(r[0].state, ConnState::Established);
        assert_eq!(r[0].idle_ms, 15 * 60 * 1000);
        a.d.handle(
            Interface::Outside,
            &mut client(WEB, 1000, false, true),
            secs(2),
        );
        assert_eq!(records(&a)[0].state, ConnState::Closing);
        tick(&mut a.d, secs(100));
        let r = records(&a);
        assert_eq!(r.len(), 1);
        assert!(r[0].delete, "expiry sends a delete");
        // A SYN its client resets before the server answers is never heard of.
        syn_to(&mut a.d, WEB, 1001, secs(100));
        a.d.handle(
            Interface::Outside,
            &mut client(WEB, 1001, false, true),
            secs(100),
        );
        tick(&mut a.d, secs(200));
        assert!(records(&a).is_empty());
        assert_eq!(a.d.table().len(), 0);
    }

    /// A standby sends nothing; the active one's records create the same connections in its table, and a
    /// delete removes them.
    #[test]
    fn installed_records_copy_the_table() {
        let mut a = peer(Role::Active);
        // The standby was active a moment ago: its own connections stay.
        let mut s = peer(Role::Active);
        for cport in 1000..1006 {
            establish(&mut a.d, cport, secs(0));
            establish(&mut s.d, cport + 100, secs(0));
        }
        let _ = records(&s);
        s.d.set_role(Role::Standby, secs(0)).unwrap();
        tick(&mut s.d, secs(0));
        assert!(records(&s).is_empty(), "a standby sends nothing");
        // The standby's own connections stay; the active's arrive beside them.
        for r in records(&a) {
            s.inbox.send(Incoming::Record(r)).unwrap();
        }
        tick(&mut s.d, secs(1));
        let key = |c: &Connection| {
            (
                c.protocol,
                c.client,
                c.virtual_addr,
                c.real,
                c.state,
                c.real_id,
                c.port_id,
            )
        };
        for (_, c) in a.d.table().iter() {
            let id =
                s.d.table()
                    .lookup_inbound(c.protocol, c.client, c.virtual_addr)
                    .expect("installed");
            assert_eq!(key(s.d.table().get(id)), key(c));
            assert_eq!(s.d.table().get(id).client_mac, c.client_mac);
        }
        assert_eq!(s.d.table().len(), 12);
        assert_eq!(
            s.d.counters().sync_installed,
            12,
            "6 syn_recv then 6 established"
        );
        let active: u32 = s.d.reals().iter().map(|r| r.active).sum();
        assert_eq!(active, 12);
        // A reset on the active: closing, then removed (a client SYN reusing the port closes it at once).
        a.d.handle(
            Interface::Outside,
            &mut client(WEB, 1000, false, true),
            secs(2),
        );
        let real = syn_to(&mut a.d, WEB, 1000, secs(3));
        let r = records(&a);
        assert_eq!(
            r.iter().map(|r| (r.state, r.delete)).collect::<Vec<_>>(),
            [(ConnState::Closing, false), (ConnState::Closing, true)]
        );
        for r in r {
            s.inbox.send(Incoming::Record(r)).unwrap();
        }
        tick(&mut s.d, secs(3));
        assert_eq!(s.d.table().len(), 11);
        let client_1000 = Endpoint::new(super::super::tests::CLIENT.into(), 1000);
        assert_eq!(
            s.d.table().lookup_inbound(
                crate::wire::Protocol::Tcp,
                client_1000,
                Endpoint::new(WEB.into(), 80)
            ),
            None
        );
        let _ = real;
    }

    /// Records naming a port or real server the receiver does not have are dropped and counted.
    #[test]
    fn unknown_port_and_real_dropped() {
        let mut a = peer(Role::Active);
        let mut s = peer(Role::Standby);
        establish(&mut a.d, 1000, secs(0));
        let good = records(&a)[1];
        let port = Record {
            virtual_addr: Endpoint::new(WEB.into(), 81),
            ..good
        };
        let real = Record {
            real_name: wire::name_id("nobody"),
            ..good
        };
        let moved = Record {
            real: Endpoint::new([10, 9, 9, 9].into(), 80),
            ..good
        };
        for r in [port, real, moved] {
            s.inbox.send(Incoming::Record(r)).unwrap();
        }
        tick(&mut s.d, secs(1));
        let dropped = s.d.counters().sync_dropped;
        assert_eq!(
            (
                dropped[Dropped::UnknownPort as usize],
                dropped[Dropped::UnknownReal as usize]
            ),
            (1, 2)
        );
        assert_eq!(s.d.table().len(), 0);
    }

    /// The refresh walk re-sends an idle established connection once a third of its timeout passed, and
    /// keeps the standby's copy from expiring.
    #[test]
    fn refresh_resends_idle_connections() {
        let mut a = peer(Role::Active);
        let mut s = peer(Role::Standby);
        establish(&mut a.d, 1000, secs(0));
        for r in records(&a) {
            s.inbox.send(Incoming::Record(r)).unwrap();
        }
        tick(&mut s.d, secs(0));
        tick(&mut a.d, secs(299));
        assert!(records(&a).is_empty(), "synced 299 s ago: not due");
        // Traffic keeps it alive on the active; the standby's copy lives by the refreshes.
        for t in [300, 600, 900, 1200] {
            a.d.handle(
                Interface::Outside,
                &mut client(WEB, 1000, false, false),
                secs(t),
            );
            tick(&mut a.d, secs(t + 1));
            let r = records(&a);
            assert_eq!(r.len(), 1, "refreshed at {t}");
            assert_eq!(r[0].state, ConnState::Established);
            s.inbox.send(Incoming::Record(r[0])).unwrap();
            tick(&mut s.d, secs(t + 1));
            tick(&mut a.d, secs(t + 2));
            assert!(records(&a).is_empty(), "once");
        }
        assert_eq!(
            s.d.table().len(),
            1,
            "still there after 20 minutes (timeout 15)"
        );
    }

    /// A bulk request makes the active send its whole table, then the end marker.
    #[test]
    fn bulk_resync_sends_everything_then_ends() {
        let mut a = peer(Role::Active);
        for cport in 1000..1010 {
            establish(&mut a.d, cport, secs(0));
        }
        syn_to(&mut a.d, WEB, 2000, secs(0));
        let _ = records(&a);
        a.inbox.send(Incoming::BulkRequest).unwrap();
        tick(&mut a.d, secs(1));
        let all: Vec<Outgoing> = a.out.try_iter().collect();
        assert_eq!(
            all.len(),
            11,
            "10 established, no SYN-only one, and the end"
        );
        assert_eq!(all.last(), Some(&Outgoing::BulkEnd));
        assert!(
            all[..10]
                .iter()
                .all(|m| matches!(m, Outgoing::Record(r) if r.state == ConnState::Established))
        );
    }

    /// A standby forwards nothing and answers no ARP for virtual addresses, connections included; made
    /// active, it announces the virtual addresses `garp_repeat` times and forwards the connections it holds
    /// by sync to the servers the active director chose.
    #[test]
    fn standby_takes_over_with_the_synced_table() {
        let mut a = peer(Role::Active);
        let mut s = peer(Role::Standby);
        let real = establish(&mut a.d, 1000, secs(0));
        for r in records(&a) {
            s.inbox.send(Incoming::Record(r)).unwrap();
        }
        let mut outside = 0;
        s.d.tick(secs(1), &mut |to, _| {
            outside += usize::from(to == Interface::Outside)
        });
        assert_eq!(
            (s.d.table().len(), outside),
            (1, 0),
            "installed; no announcement"
        );
        let standby = Verdict::Drop(super::super::DropReason::Standby);
        assert_eq!(
            s.d.handle(
                Interface::Outside,
                &mut client(WEB, 1000, false, false),
                secs(1)
            ),
            standby
        );
        assert_eq!(
            s.d.handle(
                Interface::Outside,
                &mut client(WEB, 2000, true, false),
                secs(1)
            ),
            standby,
            "a SYN opens nothing"
        );
        assert_eq!(
            s.d.handle(Interface::Inside, &mut server(real, 1000, false), secs(1)),
            standby
        );
        let mut arp = [0u8; 64];
        let n = crate::wire::build_arp_request(
            crate::wire::MacAddr([2, 0, 0, 0, 1, 1]),
            super::super::tests::CLIENT,
            WEB,
            &mut arp,
        );
        assert_eq!(
            s.d.handle(Interface::Outside, &mut arp[..n], secs(1)),
            standby
        );
        // The inside's ARP is still learned from (here a static entry: ignored, not refused).
        let n = crate::wire::build_arp_request(
            crate::wire::MacAddr([2, 0, 0, 0, 2, 1]),
            [10, 0, 0, 1].into(),
            [10, 0, 0, 254].into(),
            &mut arp,
        );
        assert_ne!(
            s.d.handle(Interface::Inside, &mut arp[..n], secs(1)),
            standby
        );
        assert_eq!(s.d.table().len(), 1);

        let change = s.d.set_role(Role::Active, secs(2)).unwrap();
        assert_eq!(
            change,
            RoleChange {
                from: Role::Standby,
                to: Role::Active,
                connections: 1
            }
        );
        assert!(
            s.d.sync
                .as_ref()
                .unwrap()
                .tx
                .stats()
                .active
                .load(Ordering::Relaxed)
        );
        // Gratuitous ARP for both virtual addresses, 5 rounds 200 ms apart (the defaults).
        let mut rounds = Vec::new();
        for ms in (2000..4000).step_by(10) {
            let mut n = 0;
            s.d.tick(Duration::from_millis(ms), &mut |to, frame| {
                if to == Interface::Outside && crate::wire::parse_arp(frame).is_some() {
                    n += 1;
                }
            });
            if n > 0 {
                rounds.push((ms, n));
            }
        }
        assert_eq!(
            rounds,
            [(2000, 2), (2200, 2), (2400, 2), (2600, 2), (2800, 2)]
        );
        let mut f = client(WEB, 1000, false, false);
        assert_eq!(
            s.d.handle(Interface::Outside, &mut f, secs(4)),
            Verdict::Forward(Interface::Inside),
            "the synced connection goes on"
        );
        assert_eq!(super::super::tests::dest(&f).0, real);
        assert_eq!(
            s.d.set_role(Role::Active, secs(4)).unwrap().from,
            Role::Active,
            "no change"
        );
    }

    /// A standby answers a bulk request with the end alone; without `[sync]` there is no role to change.
    #[test]
    fn standby_answers_bulk_with_its_end_and_no_sync_has_no_role() {
        let mut s = peer(Role::Standby);
        s.inbox.send(Incoming::BulkRequest).unwrap();
        tick(&mut s.d, secs(1));
        assert_eq!(s.out.try_iter().collect::<Vec<_>>(), [Outgoing::BulkEnd]);
        let config = config(2, 1, true, false);
        let mut alone = Director::new(&config, BindingTable::from_config(&config), L2);
        assert_eq!(alone.role(), Role::Active);
        assert_eq!(alone.set_role(Role::Standby, secs(1)), Err(NoSync));
        // Demoted, a director counts as synced: it held the truth until now.
        let a = peer(Role::Active);
        let stats = std::sync::Arc::clone(a.d.sync.as_ref().unwrap().tx.stats());
        let mut a = a;
        assert!(!stats.synced.load(Ordering::Relaxed));
        a.d.set_role(Role::Standby, secs(1)).unwrap();
        assert!(stats.is_synced() && stats.role() == Role::Standby);
        assert_eq!(stats.role_changes.load(Ordering::Relaxed), 1);
    }

    /// A peer's bulk end makes this director synced only when the data path takes it from the inbox, after
    /// every record queued before it is installed.
    #[test]
    fn synced_once_the_bulk_before_its_end_is_installed() {
        let mut a = peer(Role::Active);
        let mut s = peer(Role::Standby);
        for cport in 1000..1003 {
            establish(&mut a.d, cport, secs(0));
        }
        for r in records(&a) {
            s.inbox.send(Incoming::Record(r)).unwrap();
        }
        s.inbox.send(Incoming::BulkEnd).unwrap();
        let stats = std::sync::Arc::clone(s.d.sync.as_ref().unwrap().tx.stats());
        assert!(!stats.is_synced());
        tick(&mut s.d, secs(1));
        assert!(stats.is_synced());
        assert_eq!(s.d.table().len(), 3);
    }
}
