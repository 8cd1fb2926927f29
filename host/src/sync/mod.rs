//! Connection sync between directors (`[sync]`, docs/high-availability.md): the active director's
//! connections are copied into its peers' tables, so that a standby holds a live copy.
//!
//! - [`wire`]: the datagram format, its HMAC tag and the replay window (pure).
//! - The data path (the [`crate::director::Director`]) never blocks on sync: it hands [`Outgoing`] records to
//!   the sync thread through a bounded queue ([`SyncSender::send`] is a `try_send`; a full queue drops the
//!   record and counts it, and the periodic refresh repairs it), and takes [`Incoming`] records from a second
//!   bounded queue in its tick ([`SyncInbox`]).
//! - [`thread`] (`vipd-sync`, I/O): batches outgoing records into datagrams sent to every peer within
//!   [`thread::FLUSH_AFTER`] of the first record, verifies incoming datagrams (tag, replay) and passes their
//!   records on, and asks for a bulk resync at start and after a gap.
//!
//! What fails: a datagram that is not authentic, is replayed or is malformed installs nothing and is
//! counted by [`Dropped`] reason; a record naming a virtual port or real server the receiver does not
//! have is dropped and counted the same way. Nothing here panics on received bytes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TrySendError};
use std::sync::{Arc, mpsc};

use strum::{EnumCount, IntoStaticStr, VariantArray};

use crate::config::Role;

pub mod thread;
pub mod wire;

pub use wire::Record;

/// Records waiting for the sync thread at most (each about 90 bytes); more are dropped and counted.
pub const QUEUE: usize = 16384;
/// Messages waiting for the data path at most; the sync thread drops (and counts) what does not fit.
pub const INBOX: usize = 16384;

/// What the data path hands the sync thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outgoing {
    /// A connection to send to the peers (or to delete there).
    Record(Record),
    /// A bulk resync asked for by a peer is complete: every connection before this was sent.
    BulkEnd,
}

/// What the sync thread hands the data path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A verified record from a peer, to install.
    Record(Record),
    /// A peer asked for the whole table.
    BulkRequest,
    /// A peer's bulk resync ended: once this is taken, every record it sent before is installed.
    BulkEnd,
}

/// Why a sync datagram or record was dropped: the `reason` label of `vipd_sync_dropped_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumCount, VariantArray, IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Dropped {
    /// The tag does not match (another key, altered bytes).
    BadTag,
    /// A sequence number seen already, or older than the replay window.
    Replay,
    /// Truncated, not a sync datagram, another version, or inconsistent inside.
    Malformed,
    /// A record for a virtual address, protocol and port this director does not have.
    UnknownPort,
    /// A record naming a real server this director does not have (or at another address).
    UnknownReal,
    /// A record the data path could not queue for the sync thread, or the sync thread for the data path.
    QueueFull,
}

impl Dropped {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl From<wire::Error> for Dropped {
    fn from(e: wire::Error) -> Dropped {
        match e {
            wire::Error::BadTag => Dropped::BadTag,
            wire::Error::Replay => Dropped::Replay,
            wire::Error::Truncated
            | wire::Error::BadMagic
            | wire::Error::BadVersion
            | wire::Error::Malformed => Dropped::Malformed,
        }
    }
}

/// A count per [`Dropped`] reason, indexed by `reason as usize`.
pub type PerDropped = [u64; Dropped::COUNT];

/// The data path's end towards the sync thread: never blocks.
pub struct SyncSender {
    tx: mpsc::SyncSender<Outgoing>,
    stats: Arc<SyncStats>,
}

impl SyncSender {
    /// What the sync thread, `/status` and `/metrics` read of this director's role and sync state.
    pub fn stats(&self) -> &Arc<SyncStats> {
        &self.stats
    }

    /// Queues `message`; false when the queue is full or the thread is gone (the caller counts it).
    pub fn send(&mut self, message: Outgoing) -> bool {
        match self.tx.try_send(message) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}

/// The data path's end from the sync thread.
pub struct SyncInbox {
    rx: Receiver<Incoming>,
}

impl SyncInbox {
    /// The next message, if one is waiting.
    pub fn take(&mut self) -> Option<Incoming> {
        self.rx.try_recv().ok()
    }
}

/// Both queues between the data path and the sync thread, for tests and [`thread::start`]; `stats` is
/// shared by both ends.
pub fn queues(
    stats: Arc<SyncStats>,
) -> (
    (SyncSender, SyncInbox),
    (Receiver<Outgoing>, mpsc::SyncSender<Incoming>),
) {
    let (out_tx, out_rx) = mpsc::sync_channel(QUEUE);
    let (in_tx, in_rx) = mpsc::sync_channel(INBOX);
    (
        (SyncSender { tx: out_tx, stats }, SyncInbox { rx: in_rx }),
        (out_rx, in_tx),
    )
}

/// What the sync thread counts, read by `/metrics` and `/status` without a lock. The data path's own sync
/// counters (installed, unknown port or real, queue full) are in [`crate::director::Counters`].
#[derive(Debug, Default)]
pub struct SyncStats {
    /// The role in force: written by the data path (start, `vipd ha`), read by the sync thread and the
    /// admin API.
    pub active: AtomicBool,
    /// A peer's bulk resync ended since start, or no peer answered within `resync_timeout`, or this
    /// director was active (its table was the truth). An active director is synced by definition.
    pub synced: AtomicBool,
    /// Role changes since start.
    pub role_changes: AtomicU64,
    /// One of several active directors (`[cluster]`): active, yet synced only once a peer's table arrived
    /// (or none answered), so that keepalived's track script and the route announcement wait for it.
    pub cluster: AtomicBool,
    pub records_sent: AtomicU64,
    pub records_received: AtomicU64,
    pub datagrams_sent: AtomicU64,
    pub datagrams_received: AtomicU64,
    /// UDP payload bytes of those datagrams.
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    /// Bulk resyncs asked of peers.
    pub resyncs: AtomicU64,
    /// By [`Dropped`] index.
    pub dropped: [AtomicU64; Dropped::COUNT],
    /// Datagrams that could not be sent (the socket refused them).
    pub send_errors: AtomicU64,
}

impl SyncStats {
    /// Counts for a director starting in `role`.
    pub fn new(role: Role) -> Arc<SyncStats> {
        let stats = SyncStats::default();
        stats.active.store(role == Role::Active, Ordering::Relaxed);
        Arc::new(stats)
    }

    pub fn role(&self) -> Role {
        if self.active.load(Ordering::Relaxed) {
            Role::Active
        } else {
            Role::Standby
        }
    }

    /// Whether this director holds its peers' connections (see [`SyncStats::synced`]).
    pub fn is_synced(&self) -> bool {
        (self.active.load(Ordering::Relaxed) && !self.cluster.load(Ordering::Relaxed))
            || self.synced.load(Ordering::Relaxed)
    }

    pub fn count(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn dropped(&self) -> PerDropped {
        std::array::from_fn(|i| Self::get(&self.dropped[i]))
    }
}

/// What `/status` and `/metrics` show of sync: the config and the thread's counts.
#[derive(Clone, Debug)]
pub struct SyncView {
    pub peers: Vec<std::net::SocketAddr>,
    pub stats: Arc<SyncStats>,
}

impl SyncView {
    /// The role in force.
    pub fn role(&self) -> Role {
        self.stats.role()
    }

    /// Whether this director holds its peers' connections: active, or synced (see [`SyncStats::synced`]).
    pub fn synced(&self) -> bool {
        self.stats.is_synced()
    }
}
