//! The `vipd-sync` thread: one UDP socket bound to `[sync] listen`, sending to and receiving from the peers.
//!
//! - Out: records from the data path are batched into datagrams of at most `[sync] max_datagram` bytes;
//!   a datagram leaves when the next record would not fit, or [`FLUSH_AFTER`] after its first record
//!   (the socket's read timeout, [`POLL`], paces the check), and goes to every peer with one sequence
//!   number. A bulk end from the data path flushes the batch and then sends the end marker.
//! - In: each datagram is verified ([`wire::decode`]: tag first) and its sequence number checked against
//!   the sender's [`ReplayWindow`]; its records go to the data path's inbox (a full inbox drops and counts
//!   them). A datagram from this director itself (a multicast group loops back) is ignored.
//! - Bulk resync: asked of the peers at start, again every [`RESYNC_RETRY`] until one ends (a standby), and
//!   whenever a gap shows in a peer's sequence numbers. A peer's bulk end makes this director synced; so
//!   does `[sync] resync_timeout` without an answer (a director alone). An active peer answers with its
//!   table, a standby one with the end alone (it holds a copy, not the truth).
//!
//! Sequence numbers start at the wall clock's microseconds, so a restarted director continues above its
//! earlier run; the sender id is drawn at start. A receiver keeps no state across its own restarts: the
//! first authentic datagram it sees from a sender id sets that sender's window (replay protection holds
//! from there on). Drops are logged at most once per reason every [`LOG_EVERY`].

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender as ChannelSender, TryRecvError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use strum::EnumCount;

use super::wire::{self, Fresh, Header, Key, Kind, Record, ReplayWindow};
use super::{Dropped, Incoming, Outgoing, SyncInbox, SyncSender, SyncStats, SyncView};
use crate::config::SyncConfig;

/// A batch leaves at most this long after its first record.
pub const FLUSH_AFTER: Duration = Duration::from_millis(20);
/// How long the thread waits for a datagram before it looks at the queue and the batch again.
pub const POLL: Duration = Duration::from_millis(2);
/// A standby asks again for a bulk resync this often until one ends.
pub const RESYNC_RETRY: Duration = Duration::from_secs(1);
/// Each drop reason is logged at most this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// Outgoing messages taken from the queue per turn, so that receiving is never starved.
const TAKE_PER_TURN: usize = 4096;

/// Starts the sync thread for `config`: binds `listen`, joins multicast groups among the peers. Returns
/// what `/status` and `/metrics` show, and the data path's two ends.
pub fn start(config: &SyncConfig) -> Result<(SyncView, SyncSender, SyncInbox)> {
    let socket = UdpSocket::bind(config.listen)
        .with_context(|| format!("binding the sync socket to {}", config.listen))?;
    socket.set_read_timeout(Some(POLL))?;
    for peer in &config.peers {
        match peer.ip() {
            IpAddr::V4(group) if group.is_multicast() => {
                socket
                    .join_multicast_v4(&group, &Ipv4Addr::UNSPECIFIED)
                    .with_context(|| format!("joining the sync multicast group {group}"))?;
                socket.set_multicast_loop_v4(false)?;
            }
            IpAddr::V6(group) if group.is_multicast() => {
                socket
                    .join_multicast_v6(&group, 0)
                    .with_context(|| format!("joining the sync multicast group {group}"))?;
                socket.set_multicast_loop_v6(false)?;
            }
            _ => {}
        }
    }
    let stats = SyncStats::new(config.role);
    let ((tx, inbox), (out_rx, in_tx)) = super::queues(Arc::clone(&stats));
    let view = SyncView {
        peers: config.peers.clone(),
        stats: Arc::clone(&stats),
    };
    let mut link = Link::new(config, socket, stats);
    std::thread::Builder::new()
        .name("vipd-sync".into())
        .spawn(move || link.run(&out_rx, &in_tx))?;
    Ok((view, tx, inbox))
}

/// The thread's state.
struct Link {
    socket: UdpSocket,
    peers: Vec<SocketAddr>,
    key: Key,
    sender: u32,
    sequence: u64,
    max_datagram: usize,
    stats: Arc<SyncStats>,
    /// Records waiting to leave, and when the first of them came.
    batch: Vec<Record>,
    batch_len: usize,
    batch_since: Option<Instant>,
    /// One datagram out, one in; allocated once.
    out: Vec<u8>,
    inbuf: Vec<u8>,
    received: Vec<Record>,
    windows: HashMap<u32, ReplayWindow>,
    last_request: Option<Instant>,
    /// Since when this director has been an unsynced standby, and how long it waits for a peer's answer.
    unsynced_since: Option<Instant>,
    resync_timeout: Duration,
    logged: [Option<Instant>; Dropped::COUNT],
}

impl Link {
    fn new(config: &SyncConfig, socket: UdpSocket, stats: Arc<SyncStats>) -> Link {
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let max_datagram = usize::from(config.max_datagram);
        Link {
            socket,
            peers: config.peers.clone(),
            key: Key::new(&config.key.0),
            sender: RandomState::new().hash_one(start) as u32,
            sequence: start,
            max_datagram,
            stats,
            batch: Vec::with_capacity(max_datagram / 42 + 1),
            batch_len: 0,
            batch_since: None,
            out: vec![0; max_datagram],
            inbuf: vec![0; 65536],
            received: Vec::with_capacity(65536 / 42),
            windows: HashMap::new(),
            last_request: None,
            unsynced_since: None,
            resync_timeout: config.resync_timeout,
            logged: [None; Dropped::COUNT],
        }
    }

    fn run(&mut self, out_rx: &Receiver<Outgoing>, in_tx: &ChannelSender<Incoming>) {
        self.request_bulk();
        loop {
            for _ in 0..TAKE_PER_TURN {
                match out_rx.try_recv() {
                    Ok(Outgoing::Record(record)) => self.push(record),
                    Ok(Outgoing::BulkEnd) => {
                        self.flush();
                        self.control(Kind::BulkEnd);
                    }
                    Err(TryRecvError::Empty) => break,
                    // The director is gone: the daemon is stopping.
                    Err(TryRecvError::Disconnected) => {
                        self.flush();
                        return;
                    }
                }
            }
            if self.batch_since.is_some_and(|t| t.elapsed() >= FLUSH_AFTER) {
                self.flush();
            }
            self.wait_for_sync();
            match self.socket.recv_from(&mut self.inbuf) {
                Ok((n, from)) => self.receive(n, from, in_tx),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => {
                    tracing::warn!("sync socket: {e}");
                    std::thread::sleep(POLL);
                }
            }
        }
    }

    /// A director that holds no peer's table yet asks its peers for a bulk resync every [`RESYNC_RETRY`]; when none answered
    /// within `resync_timeout` (a director alone: its peer is down), it counts as synced with what it has,
    /// so that keepalived's track script lets it serve.
    fn wait_for_sync(&mut self) {
        // The flag, not the role: a cluster director is active and still waits for its peers' tables
        // before it announces routes.
        if self.stats.synced.load(Ordering::Relaxed) {
            if self.unsynced_since.take().is_some() {
                tracing::info!("sync: a peer's bulk resync is installed; synced");
            }
            return;
        }
        let since = *self.unsynced_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= self.resync_timeout {
            self.stats.synced.store(true, Ordering::Relaxed);
            self.unsynced_since = None;
            tracing::warn!(
                timeout = ?self.resync_timeout,
                "sync: no peer answered a bulk resync; synced with the connections this director has"
            );
        } else if self
            .last_request
            .is_none_or(|t| t.elapsed() >= RESYNC_RETRY)
        {
            self.request_bulk();
        }
    }

    /// Adds a record to the batch, sending the batch first if the record would not fit.
    fn push(&mut self, record: Record) {
        let Some(len) = record.wire_len() else { return };
        if wire::HEADER_LEN + self.batch_len + len + wire::TAG_LEN > self.max_datagram {
            self.flush();
        }
        self.batch.push(record);
        self.batch_len += len;
        self.batch_since.get_or_insert_with(Instant::now);
    }

    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let header = self.next_header(Kind::Records);
        match wire::encode(&header, &self.batch, &self.key, &mut self.out) {
            Ok(n) => {
                self.send_to_peers(n);
                SyncStats::count(&self.stats.records_sent, self.batch.len() as u64);
            }
            Err(e) => tracing::error!("sync batch not encoded: {e:?}"),
        }
        self.batch.clear();
        self.batch_len = 0;
        self.batch_since = None;
    }

    fn control(&mut self, kind: Kind) {
        let header = self.next_header(kind);
        if let Ok(n) = wire::encode(&header, &[], &self.key, &mut self.out) {
            self.send_to_peers(n);
        }
    }

    fn request_bulk(&mut self) {
        self.last_request = Some(Instant::now());
        SyncStats::count(&self.stats.resyncs, 1);
        self.control(Kind::BulkRequest);
    }

    fn next_header(&mut self, kind: Kind) -> Header {
        self.sequence += 1;
        Header {
            kind,
            sender: self.sender,
            sequence: self.sequence,
        }
    }

    fn send_to_peers(&mut self, n: usize) {
        for peer in &self.peers {
            match self.socket.send_to(&self.out[..n], peer) {
                Ok(_) => {
                    SyncStats::count(&self.stats.datagrams_sent, 1);
                    SyncStats::count(&self.stats.bytes_sent, n as u64);
                }
                Err(e) => {
                    SyncStats::count(&self.stats.send_errors, 1);
                    tracing::debug!(%peer, "sync datagram not sent: {e}");
                }
            }
        }
    }

    fn receive(&mut self, n: usize, from: SocketAddr, in_tx: &ChannelSender<Incoming>) {
        let header = match wire::decode(&self.inbuf[..n], &self.key, &mut self.received) {
            Ok(header) => header,
            Err(e) => return self.dropped(Dropped::from(e), 1, from),
        };
        if header.sender == self.sender {
            return;
        }
        let fresh = match self
            .windows
            .entry(header.sender)
            .or_default()
            .check(header.sequence)
        {
            Ok(fresh) => fresh,
            Err(e) => return self.dropped(Dropped::from(e), 1, from),
        };
        SyncStats::count(&self.stats.datagrams_received, 1);
        SyncStats::count(&self.stats.bytes_received, n as u64);
        if fresh == Fresh::Gap
            && self
                .last_request
                .is_none_or(|t| t.elapsed() >= RESYNC_RETRY)
        {
            tracing::info!(%from, "sync: gap in a peer's sequence numbers; asking for a bulk resync");
            self.request_bulk();
        }
        match header.kind {
            Kind::Records => {
                SyncStats::count(&self.stats.records_received, self.received.len() as u64);
                let mut full = 0;
                for &record in &self.received {
                    if in_tx.try_send(Incoming::Record(record)).is_err() {
                        full += 1;
                    }
                }
                if full > 0 {
                    self.dropped(Dropped::QueueFull, full, from);
                }
            }
            Kind::BulkRequest => {
                if in_tx.try_send(Incoming::BulkRequest).is_err() {
                    self.dropped(Dropped::QueueFull, 1, from);
                }
            }
            // The data path marks this director synced when it takes the end from its inbox: every
            // record of the bulk resync, queued before it, is installed by then.
            Kind::BulkEnd => {
                if !self.stats.synced.load(Ordering::Relaxed)
                    && in_tx.try_send(Incoming::BulkEnd).is_err()
                {
                    self.dropped(Dropped::QueueFull, 1, from);
                }
            }
        }
    }

    /// Counts `n` drops for `reason`, and logs the first in every [`LOG_EVERY`].
    fn dropped(&mut self, reason: Dropped, n: u64, from: SocketAddr) {
        SyncStats::count(&self.stats.dropped[reason as usize], n);
        let last = &mut self.logged[reason as usize];
        if last.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(%from, reason = reason.as_str(), "sync datagram dropped (logged once per 10 s per reason)");
        }
    }
}
