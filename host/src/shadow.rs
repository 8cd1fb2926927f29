//! Shadow policies (`shadow_policy` on a virtual machine or port): for each new connection the shadow is
//! asked too, with the same inputs as the live policy, and its answer is recorded, never applied.
//!
//! The data path pays one bounded-queue send per new connection of a shadowed port: it copies the
//! connection, its candidates (at most [`MAX_CANDIDATES`]) and the live choice into a [`Job`] and
//! `try_send`s it (no allocation: the queue's slots are allocated once). A full queue drops the job and
//! counts it. The shadow thread owns its own selector per shadowed port (its own plugin instance), asks it,
//! and counts the outcome against the live choice ([`ShadowOutcome`]) and the server it would have picked.
//! A shadow that traps, loops or runs out of memory is stopped by the plugin sandbox as a live one would
//! be; none of it reaches the data path. Counts are published every [`PUBLISH_EVERY`] as a
//! [`ShadowSnapshot`] for `/metrics` and `/status`.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use strum::{EnumCount, IntoStaticStr, VariantArray};

use crate::policy::{Candidate, NewConnection, Outcome, Selection, Selector};

/// Jobs waiting for the shadow thread at most; more are dropped and counted.
pub const QUEUE: usize = 4096;
/// Candidates a job carries at most; a port with more is not shadowed (counted as dropped).
pub const MAX_CANDIDATES: usize = 32;
/// How often the shadow thread publishes its counts.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(250);
/// The shadow thread's pause after a batch of jobs: at most this many wake-ups a second under load, and
/// the queue ([`QUEUE`]) holds far more than one pause's worth of new connections.
pub const BATCH_PAUSE: Duration = Duration::from_millis(10);

/// How a shadow's answer compares with the live policy's choice; each is an `outcome` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumCount, VariantArray, IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum ShadowOutcome {
    /// It picked the server the live policy picked.
    Same,
    /// It picked another server, or picked one where the live policy found none.
    Different,
    /// It refused the connection.
    Reject,
    /// It deferred the decision.
    Defer,
    /// It failed (trap, timeout, memory, a bad answer, quarantine).
    Error,
}

impl ShadowOutcome {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// The outcome of a shadow that answered `outcome` with `selection` over `candidates`, against the
    /// live choice `live` (a real server id, or `None` when the connection found no server).
    pub fn judge(
        selection: Selection,
        outcome: Outcome,
        candidates: &[Candidate],
        live: Option<u32>,
    ) -> (ShadowOutcome, Option<u32>) {
        match (outcome, selection) {
            (Outcome::Picked, Selection::Pick(i)) => {
                let real = candidates.get(i).map(|c| c.real_id);
                if real.is_some() && real == live {
                    (ShadowOutcome::Same, real)
                } else {
                    (ShadowOutcome::Different, real)
                }
            }
            (Outcome::Rejected, _) | (Outcome::Picked, Selection::Reject) => {
                (ShadowOutcome::Reject, None)
            }
            (Outcome::Deferred, _) => (ShadowOutcome::Defer, None),
            (Outcome::Failed, _) => (ShadowOutcome::Error, None),
        }
    }
}

/// One new connection to judge: what the live policy saw and chose.
#[derive(Clone, Copy, Debug)]
pub struct Job {
    /// The install it belongs to; jobs of an older one are dropped.
    pub generation: u64,
    pub port_id: u32,
    pub conn: NewConnection,
    pub candidates: [Option<Candidate>; MAX_CANDIDATES],
    /// The live choice: a real server id, or `None` when the connection found no server.
    pub live: Option<u32>,
}

/// Counts of one shadowed port.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PortShadow {
    pub port_id: u32,
    pub shadow: String,
    /// By [`ShadowOutcome`] index.
    pub outcomes: [u64; ShadowOutcome::COUNT],
    /// Connections the shadow would have given each real server, by real id.
    pub picks: Vec<u64>,
}

impl PortShadow {
    pub fn outcome(&self, o: ShadowOutcome) -> u64 {
        self.outcomes[o as usize]
    }
}

/// What the shadow thread publishes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShadowSnapshot {
    pub generation: u64,
    /// One per shadowed port of the current install.
    pub ports: Vec<PortShadow>,
}

/// The shadow policy of one virtual port: its name and a selector of its own.
pub struct ShadowPort {
    pub port_id: u32,
    pub name: String,
    pub selector: Box<dyn Selector>,
}

/// The shadows of one install.
pub struct ShadowSet {
    pub generation: u64,
    pub ports: Vec<ShadowPort>,
    /// Real servers in the binding table (for the per-server picks).
    pub reals: usize,
}

/// The data path's end: sends jobs, never blocks.
pub struct ShadowSender {
    tx: SyncSender<Job>,
}

impl ShadowSender {
    /// Queues `job`; false when the queue is full (the caller counts it).
    pub fn send(&mut self, job: Job) -> bool {
        match self.tx.try_send(job) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}

/// The shadow thread's handles. The thread ends when the director's [`ShadowSender`] is dropped.
pub struct Shadows {
    install: SyncSender<ShadowSet>,
    published: Arc<ArcSwap<ShadowSnapshot>>,
}

impl Shadows {
    /// Starts the shadow thread; the sender goes to the director.
    pub fn start() -> std::io::Result<(Shadows, ShadowSender)> {
        let (tx, rx) = sync_channel::<Job>(QUEUE);
        let (install_tx, install_rx) = sync_channel::<ShadowSet>(4);
        let published = Arc::new(ArcSwap::from_pointee(ShadowSnapshot::default()));
        {
            let published = Arc::clone(&published);
            std::thread::Builder::new()
                .name("vipd-shadow".into())
                .spawn(move || run(rx, install_rx, published))?;
        }
        Ok((
            Shadows {
                install: install_tx,
                published,
            },
            ShadowSender { tx },
        ))
    }

    /// Hands the shadows of a new install to the thread (start and reload).
    pub fn install(&self, set: ShadowSet) {
        let _ = self.install.send(set);
    }

    /// The latest published counts.
    pub fn snapshot(&self) -> Arc<ArcSwap<ShadowSnapshot>> {
        Arc::clone(&self.published)
    }
}

fn run(
    jobs: Receiver<Job>,
    installs: Receiver<ShadowSet>,
    published: Arc<ArcSwap<ShadowSnapshot>>,
) {
    let mut set: Option<ShadowSet> = None;
    let mut counts = ShadowSnapshot::default();
    let mut next_publish = Instant::now() + PUBLISH_EVERY;
    let mut candidates = Vec::with_capacity(MAX_CANDIDATES);
    loop {
        take_installs(&installs, &mut set, &mut counts, &published);
        match jobs.recv_timeout(PUBLISH_EVERY) {
            Ok(first) => {
                // The install a job belongs to is sent before any of its jobs: take it before judging.
                take_installs(&installs, &mut set, &mut counts, &published);
                judge(&mut set, &mut counts, &mut candidates, first);
                // Then whatever else is queued, and a pause: under load the jobs are judged in batches,
                // one wake-up per BATCH_PAUSE instead of one per new connection (and a sender finds no
                // receiver to wake).
                while let Ok(job) = jobs.try_recv() {
                    judge(&mut set, &mut counts, &mut candidates, job);
                }
                std::thread::sleep(BATCH_PAUSE);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        if now >= next_publish {
            published.store(Arc::new(counts.clone()));
            next_publish = now + PUBLISH_EVERY;
        }
    }
}

/// Puts the latest install in place, with fresh counts for its ports (published at once).
fn take_installs(
    installs: &Receiver<ShadowSet>,
    set: &mut Option<ShadowSet>,
    counts: &mut ShadowSnapshot,
    published: &ArcSwap<ShadowSnapshot>,
) {
    while let Ok(new) = installs.try_recv() {
        *counts = ShadowSnapshot {
            generation: new.generation,
            ports: new
                .ports
                .iter()
                .map(|p| PortShadow {
                    port_id: p.port_id,
                    shadow: p.name.clone(),
                    outcomes: [0; ShadowOutcome::COUNT],
                    picks: vec![0; new.reals],
                })
                .collect(),
        };
        *set = Some(new);
        published.store(Arc::new(counts.clone()));
    }
}

/// Asks the shadow of `job`'s port (if it belongs to the current install) and counts its answer.
fn judge(
    set: &mut Option<ShadowSet>,
    counts: &mut ShadowSnapshot,
    candidates: &mut Vec<Candidate>,
    job: Job,
) {
    let Some(set) = set.as_mut().filter(|s| s.generation == job.generation) else {
        return;
    };
    let Some(i) = set.ports.iter().position(|p| p.port_id == job.port_id) else {
        return;
    };
    candidates.clear();
    candidates.extend(job.candidates.iter().flatten().copied());
    let (selection, outcome) = set.ports[i].selector.select_outcome(&job.conn, candidates);
    let (judged, real) = ShadowOutcome::judge(selection, outcome, candidates, job.live);
    let port = &mut counts.ports[i];
    port.outcomes[judged as usize] += 1;
    if let Some(slot) = real.and_then(|r| port.picks.get_mut(r as usize)) {
        *slot += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    fn candidate(real_id: u32) -> Candidate {
        let address = IpAddr::V4(Ipv4Addr::new(10, 0, 0, real_id as u8 + 1));
        Candidate::up(real_id, SocketAddr::new(address, 80), 1)
    }

    #[test]
    /// Agreement is judged by real server, not by candidate position; refusals, deferrals and failures
    /// are told apart.
    fn outcomes_are_judged_against_the_live_choice() {
        let c = [candidate(4), candidate(7)];
        let judge = |s, o, live| ShadowOutcome::judge(s, o, &c, live).0;
        assert_eq!(
            judge(Selection::Pick(1), Outcome::Picked, Some(7)),
            ShadowOutcome::Same
        );
        assert_eq!(
            judge(Selection::Pick(0), Outcome::Picked, Some(7)),
            ShadowOutcome::Different
        );
        assert_eq!(
            judge(Selection::Pick(0), Outcome::Picked, None),
            ShadowOutcome::Different
        );
        assert_eq!(
            judge(Selection::Reject, Outcome::Rejected, Some(7)),
            ShadowOutcome::Reject
        );
        assert_eq!(
            judge(Selection::Pick(0), Outcome::Deferred, Some(4)),
            ShadowOutcome::Defer
        );
        assert_eq!(
            judge(Selection::Pick(0), Outcome::Failed, Some(4)),
            ShadowOutcome::Error
        );
    }

    #[test]
    /// The thread judges queued jobs with the shadow of their port and publishes the counts; jobs of an
    /// older install are ignored.
    fn thread_counts_what_the_shadow_would_have_done() {
        let (shadows, mut tx) = Shadows::start().unwrap();
        shadows.install(ShadowSet {
            generation: 1,
            ports: vec![ShadowPort {
                port_id: 0,
                name: "rr".into(),
                selector: Box::new(crate::policy::RoundRobin::new()),
            }],
            reals: 2,
        });
        let mut candidates = [None; MAX_CANDIDATES];
        candidates[0] = Some(candidate(0));
        candidates[1] = Some(candidate(1));
        let conn = NewConnection {
            client: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)), 1),
            virtual_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 80),
            protocol: crate::wire::Protocol::Tcp,
            virtual_id: 0,
        };
        for generation in [0, 1, 1, 1, 1] {
            assert!(tx.send(Job {
                generation,
                port_id: 0,
                conn,
                candidates,
                live: Some(0),
            }));
        }
        let snapshot = shadows.snapshot();
        let start = Instant::now();
        while snapshot
            .load()
            .ports
            .first()
            .map_or(0, |p| p.outcomes.iter().sum::<u64>())
            < 4
        {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{:?}",
                snapshot.load()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let s = snapshot.load();
        // Round-robin over two servers against a live policy that always picked server 0.
        assert_eq!(s.ports[0].outcome(ShadowOutcome::Same), 2);
        assert_eq!(s.ports[0].outcome(ShadowOutcome::Different), 2);
        assert_eq!(s.ports[0].picks, [2, 2]);
    }
}
