//! Session distribution: the seam between the packet path and whoever picks a real server.
//!
//! The director asks a [`Selector`] once per new connection, never per packet. Built-in policies live here;
//! the plugin host puts WebAssembly components behind the same trait. A selector that wants to hear how the
//! connections it placed end names its instance ([`Selector::instance`]); the director then queues a notice
//! when one closes or is ditched and calls [`Selector::connection_closed`] or
//! [`Selector::connection_ditched`] between packet batches, never on the packet path.

use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::wire::Protocol;

/// Health of a real server as the director sees it.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    strum::VariantArray,
)]
#[serde(rename_all = "lowercase")]
pub enum ServerState {
    /// Takes new connections.
    Up,
    /// Keeps its connections, takes no new ones (weight 0, removed from config, or operator drain).
    Draining,
    /// Ditched too many connections or failed its health check; its backup stands in.
    Failed,
}

impl ServerState {
    /// The name used in metric labels and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Up => "up",
            ServerState::Draining => "draining",
            ServerState::Failed => "failed",
        }
    }
}

/// A new connection waiting for a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewConnection {
    pub client: SocketAddr,
    /// The virtual address and port the client asked for.
    pub virtual_addr: SocketAddr,
    pub protocol: Protocol,
    /// Index of the virtual machine in the binding table.
    pub virtual_id: u32,
}

impl NewConnection {
    /// The warm-up connection to `virtual_addr` (docs/plugins.md, "Warm-up"): from the unspecified
    /// address of its family, port 0.
    pub fn warm_up(virtual_addr: SocketAddr, protocol: Protocol, virtual_id: u32) -> NewConnection {
        let client = match virtual_addr {
            SocketAddr::V4(_) => std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            SocketAddr::V6(_) => std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        };
        NewConnection {
            client: SocketAddr::new(client, 0),
            virtual_addr,
            protocol,
            virtual_id,
        }
    }
}

/// One real server port a virtual port is bound to, with its live state.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    /// Index of the real server in the binding table.
    pub real_id: u32,
    /// Where the connection would go.
    pub target: SocketAddr,
    pub weight: u32,
    pub state: ServerState,
    /// Connections open now.
    pub active: u32,
    /// Connections given to it since start.
    pub total: u64,
    /// Smoothed time from SYN to SYN-ACK, microseconds; 0 when not yet measured.
    pub syn_rtt_us: u32,
    /// Connections it ditched in a row.
    pub ditched: u32,
}

impl Candidate {
    /// A candidate that is up, with nothing measured yet: no connections, no SYN round trip, no ditches.
    pub fn up(real_id: u32, target: SocketAddr, weight: u32) -> Candidate {
        Candidate {
            real_id,
            target,
            weight,
            state: ServerState::Up,
            active: 0,
            total: 0,
            syn_rtt_us: 0,
            ditched: 0,
        }
    }

    /// Whether a policy may give it a new connection.
    pub fn eligible(&self) -> bool {
        self.state == ServerState::Up && self.weight > 0
    }
}

/// What a policy decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Index into the candidate slice.
    Pick(usize),
    /// No server for this connection; the client gets an RST.
    Reject,
}

/// How a policy came to its [`Selection`]: its own answer, or a fallback standing in for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The policy picked a candidate.
    Picked,
    /// The policy refused the connection.
    Rejected,
    /// The policy deferred the decision (round-robin decided).
    Deferred,
    /// The policy failed (trap, timeout, memory, a bad answer, quarantine): round-robin decided.
    Failed,
}

/// One instance of a policy, as the connections it placed remember it: unique in the process and never
/// reused, so a notice reaches only the instance that placed its connection (not a successor that never
/// saw it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InstanceId(NonZeroU64);

impl InstanceId {
    /// A number no other instance has had (a 64-bit count never wraps).
    pub fn next() -> InstanceId {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        InstanceId(NonZeroU64::MIN.saturating_add(NEXT.fetch_add(1, Ordering::Relaxed)))
    }
}

/// How long after its last connection a plugin is kept warm ([`Selector::keep_warm`]).
pub const KEEP_WARM_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// Picks a real server for each new connection (the patent's session distribution scheme).
pub trait Selector: Send {
    /// Called once per new connection with the candidates bound to its virtual port.
    fn select(&mut self, conn: &NewConnection, candidates: &[Candidate]) -> Selection;

    /// [`Selector::select`], and whether the policy itself decided. A shadow policy's answer is judged
    /// by it; a built-in always decides itself.
    fn select_outcome(
        &mut self,
        conn: &NewConnection,
        candidates: &[Candidate],
    ) -> (Selection, Outcome) {
        let selection = self.select(conn, candidates);
        let outcome = match selection {
            Selection::Pick(_) => Outcome::Picked,
            Selection::Reject => Outcome::Rejected,
        };
        (selection, outcome)
    }

    /// A real server's state changed (by its index in the binding table). Optional.
    fn server_state_changed(&mut self, _real_id: u32, _state: ServerState) {}

    /// The instance that the connections placed by the last [`Selector::select_outcome`] belong to, if
    /// it wants [`Selector::connection_closed`] and [`Selector::connection_ditched`] for them; `None` (the
    /// default): no notices are queued for this policy.
    fn instance(&self) -> Option<InstanceId> {
        None
    }

    /// A connection this policy placed on `real_id` (its own [`Outcome::Picked`]) ended there: closed
    /// after a FIN or RST, expired idle, or evicted. Called between packet batches, only while
    /// [`Selector::instance`] is still the instance that placed it. Optional.
    fn connection_closed(&mut self, _conn: &NewConnection, _real_id: u32) {}

    /// A connection this policy placed on `real_id` was ditched by that server (SYN unanswered, or refused
    /// with an RST); no [`Selector::connection_closed`] follows for that placement. Called like
    /// [`Selector::connection_closed`]. Optional.
    fn connection_ditched(&mut self, _conn: &NewConnection, _real_id: u32) {}

    /// Whether the policy is to be kept warm now ([`Selector::keep_warm`]): a plugin that served a
    /// connection in the last [`KEEP_WARM_FOR`] and was not called for half of `period`. The built-ins
    /// have nothing to keep warm.
    fn wants_warm(&self, period: std::time::Duration) -> bool {
        let _ = period;
        false
    }

    /// Keeps the policy's code in the CPU's caches between connections: one call with the warm-up
    /// connection `conn` (docs/plugins.md, "Warm-up") and the port's `candidates`, its answer unused.
    /// Whether it called.
    fn keep_warm(&mut self, conn: &NewConnection, candidates: &[Candidate]) -> bool {
        let _ = (conn, candidates);
        false
    }
}

/// Smooth weighted round-robin (the nginx algorithm): over any window of `sum(weight)` picks every eligible
/// server gets exactly its weight, interleaved rather than in bursts.
#[derive(Debug, Default)]
pub struct RoundRobin {
    /// Running score per candidate position; resized only when the candidate count changes.
    current: Vec<i64>,
}

impl RoundRobin {
    pub fn new() -> RoundRobin {
        RoundRobin::default()
    }
}

impl Selector for RoundRobin {
    fn select(&mut self, _conn: &NewConnection, candidates: &[Candidate]) -> Selection {
        if self.current.len() != candidates.len() {
            self.current.clear();
            self.current.resize(candidates.len(), 0);
        }
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, c) in candidates.iter().enumerate() {
            if !c.eligible() {
                continue;
            }
            let w = i64::from(c.weight);
            self.current[i] += w;
            total += w;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        match best {
            Some(b) => {
                self.current[b] -= total;
                Selection::Pick(b)
            }
            None => Selection::Reject,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use super::*;

    fn candidate(real_id: u32, weight: u32, state: ServerState) -> Candidate {
        Candidate {
            real_id,
            target: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, real_id as u8), 80).into(),
            weight,
            state,
            active: 0,
            total: 0,
            syn_rtt_us: 0,
            ditched: 0,
        }
    }

    fn conn() -> NewConnection {
        NewConnection {
            client: SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 1), 40000).into(),
            virtual_addr: SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 80).into(),
            protocol: Protocol::Tcp,
            virtual_id: 0,
        }
    }

    /// Weights 3:1 give exactly 3:1 over every window of four picks, interleaved.
    #[test]
    fn weighted_split_is_exact_and_smooth() {
        let cands = [
            candidate(0, 3, ServerState::Up),
            candidate(1, 1, ServerState::Up),
        ];
        let mut rr = RoundRobin::new();
        let picks: Vec<_> = (0..8).map(|_| rr.select(&conn(), &cands)).collect();
        let p = |i| Selection::Pick(i);
        assert_eq!(picks, [p(0), p(0), p(1), p(0), p(0), p(0), p(1), p(0)]);
    }

    /// Failed, draining and zero-weight servers get nothing; none left means reject.
    #[test]
    fn skips_ineligible_and_rejects_when_none() {
        let cands = [
            candidate(0, 1, ServerState::Failed),
            candidate(1, 0, ServerState::Up),
            candidate(2, 1, ServerState::Draining),
            candidate(3, 1, ServerState::Up),
        ];
        let mut rr = RoundRobin::new();
        for _ in 0..4 {
            assert_eq!(rr.select(&conn(), &cands), Selection::Pick(3));
        }
        assert_eq!(rr.select(&conn(), &cands[..3]), Selection::Reject);
    }
}
