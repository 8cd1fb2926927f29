//! Notices to a port's selection policy about the connections it placed ([`Selector::connection_closed`],
//! [`Selector::connection_ditched`]), delivered between packet batches: no policy call on the packet path.
//!
//! A connection remembers the policy instance that picked its server (`Connection::placed_by`: only for the
//! policy's own pick, [`crate::policy::Outcome::Picked`], by a policy that asks for notices,
//! [`Selector::instance`]). When the placement ends, the packet path or expiry pushes a [`Notice`] into
//! [`Notices`], a queue allocated once with room for [`NOTICE_CAPACITY`]:
//! - closed: the connection object was removed while on that server (after a FIN or RST and the closing
//!   timeout, idle expiry, eviction from a full table, or a client reusing the port of a closed one);
//! - ditched: its server left the SYN unanswered `syn_retries` times or refused it with an RST. That ends
//!   the placement whatever becomes of the connection (moved to another server, kept, or refused), so no
//!   closed notice follows for it.
//!
//! [`Director::deliver_notices`] runs at every [`Director::wakeup`] and [`Director::tick`], and before a new
//! binding table is installed. It hands each notice to its port's selector if that selector's instance is
//! still the one that placed the connection; otherwise (a new plugin version, a config reload, an instance
//! made anew after a trap, a quarantine) the notice is dropped. A full queue drops the notice too. Every
//! notice is counted by what became of it ([`NoticeResult`]).
//!
//! [`Selector::connection_closed`]: crate::policy::Selector::connection_closed
//! [`Selector::connection_ditched`]: crate::policy::Selector::connection_ditched
//! [`Selector::instance`]: crate::policy::Selector::instance

use std::collections::VecDeque;
use std::net::SocketAddr;

use strum::{EnumCount, IntoStaticStr, VariantArray};

use super::{Counters, Director};
use crate::conntable::Connection;
use crate::policy::{InstanceId, NewConnection};
use crate::wire::Protocol;

/// Notices waiting for the next wake-up or tick, at most. A tick expires at most `EXPIRE_BUDGET` (4096)
/// connections, so one tick's expiries fit.
pub const NOTICE_CAPACITY: usize = 4096;

/// How a placement ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ended {
    Closed,
    Ditched,
}

/// What became of a notice: the `result` label of `vipd_plugin_notices_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumCount, VariantArray, IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum NoticeResult {
    /// Handed to the instance that placed the connection.
    Delivered,
    /// Dropped when it was queued: the queue held [`NOTICE_CAPACITY`] notices.
    QueueFull,
    /// Dropped at delivery: the port's policy instance is no longer the one that placed the connection.
    Stale,
}

impl NoticeResult {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// One ended placement, with what the policy is told about it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Notice {
    ended: Ended,
    instance: InstanceId,
    port_id: u32,
    real_id: u32,
    protocol: Protocol,
    client: SocketAddr,
    virtual_addr: SocketAddr,
}

/// The queue of notices; see the module documentation.
#[derive(Debug)]
pub(super) struct Notices {
    queue: VecDeque<Notice>,
}

impl Notices {
    pub(super) fn new() -> Notices {
        Notices {
            queue: VecDeque::with_capacity(NOTICE_CAPACITY),
        }
    }

    /// The placement of `conn` on its server ended: queues a notice if a policy placed it and wants one.
    /// Never allocates: a full queue drops the notice and counts it.
    pub(super) fn push(&mut self, ended: Ended, conn: &Connection, counters: &mut Counters) {
        let Some(instance) = conn.placed_by else {
            return;
        };
        if self.queue.len() == NOTICE_CAPACITY {
            counters.notices[NoticeResult::QueueFull as usize] += 1;
            return;
        }
        self.queue.push_back(Notice {
            ended,
            instance,
            port_id: conn.port_id,
            real_id: conn.real_id,
            protocol: conn.protocol,
            client: conn.client.into(),
            virtual_addr: conn.virtual_addr.into(),
        });
    }
}

impl Director {
    /// Hands the queued notices to their ports' selectors (see the module documentation). Between packet
    /// batches only: it calls policies.
    pub(super) fn deliver_notices(&mut self) {
        let Director {
            notices,
            selectors,
            bindings,
            counters,
            ..
        } = self;
        for n in notices.queue.drain(..) {
            let port = n.port_id as usize;
            let (Some(selector), Some(port)) = (selectors.get_mut(port), bindings.ports.get(port))
            else {
                counters.notices[NoticeResult::Stale as usize] += 1;
                continue;
            };
            if selector.instance() != Some(n.instance) {
                counters.notices[NoticeResult::Stale as usize] += 1;
                continue;
            }
            // The port's virtual machine now is the one of the placement: the same instance means the same
            // install (a reload makes new instances).
            let conn = NewConnection {
                client: n.client,
                virtual_addr: n.virtual_addr,
                protocol: n.protocol,
                virtual_id: port.virtual_id,
            };
            match n.ended {
                Ended::Closed => selector.connection_closed(&conn, n.real_id),
                Ended::Ditched => selector.connection_ditched(&conn, n.real_id),
            }
            counters.notices[NoticeResult::Delivered as usize] += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::super::tests::{L2, WEB, client, config, real, secs, server, syn_to};
    use super::*;
    use crate::Interface;
    use crate::binding::BindingTable;
    use crate::config::Config;
    use crate::director::Verdict;
    use crate::policy::{Candidate, Outcome, RoundRobin, Selection, Selector, ServerState};

    /// What a [`Recording`] selector was told: (ended, client port, real id).
    type Told = Arc<Mutex<Vec<(Ended, u16, u32)>>>;

    /// Round-robin that asks for notices and records them; `picks: false` makes every answer a fallback.
    struct Recording {
        rr: RoundRobin,
        id: InstanceId,
        picks: bool,
        told: Told,
    }

    impl Selector for Recording {
        fn select(&mut self, conn: &NewConnection, candidates: &[Candidate]) -> Selection {
            self.rr.select(conn, candidates)
        }

        fn select_outcome(
            &mut self,
            conn: &NewConnection,
            candidates: &[Candidate],
        ) -> (Selection, Outcome) {
            let outcome = if self.picks {
                Outcome::Picked
            } else {
                Outcome::Failed
            };
            (self.rr.select(conn, candidates), outcome)
        }

        fn instance(&self) -> Option<InstanceId> {
            Some(self.id)
        }

        fn connection_closed(&mut self, conn: &NewConnection, real_id: u32) {
            let told = (Ended::Closed, conn.client.port(), real_id);
            self.told.lock().unwrap().push(told);
        }

        fn connection_ditched(&mut self, conn: &NewConnection, real_id: u32) {
            let told = (Ended::Ditched, conn.client.port(), real_id);
            self.told.lock().unwrap().push(told);
        }
    }

    /// Recording selectors for every port of `bindings`, one instance, and what they will hear.
    fn recorders(bindings: &BindingTable, picks: bool) -> (Vec<Box<dyn Selector>>, Told) {
        let told = Told::default();
        let id = InstanceId::next();
        let selectors = bindings
            .ports
            .iter()
            .map(|_| {
                Box::new(Recording {
                    rr: RoundRobin::new(),
                    id,
                    picks,
                    told: Arc::clone(&told),
                }) as Box<dyn Selector>
            })
            .collect();
        (selectors, told)
    }

    /// A director for `config` whose ports are served by recording selectors.
    fn recording(config: &Config, picks: bool) -> (Director, Told) {
        let bindings = BindingTable::from_config(config);
        let (selectors, told) = recorders(&bindings, picks);
        (
            Director::with_selectors(config, bindings, selectors, L2),
            told,
        )
    }

    fn told(t: &Told) -> Vec<(Ended, u16, u32)> {
        t.lock().unwrap().clone()
    }

    fn count(d: &Director, r: NoticeResult) -> u64 {
        d.counters().notices[r as usize]
    }

    /// A connection reset by its client is closed for the policy once its closing entry expires, told at
    /// that tick; one left idle once it expires. Nothing is told while frames are handled.
    #[test]
    fn closed_after_rst_and_after_idle_expiry() {
        let (mut d, t) = recording(&config(2, 1, true, false), true);
        let mut nothing = |_: Interface, _: &[u8]| {};
        syn_to(&mut d, WEB, 4000, secs(0));
        syn_to(&mut d, WEB, 4001, secs(0));
        let mut rst = client(WEB, 4000, false, true);
        d.handle(Interface::Outside, &mut rst, secs(1));
        d.wakeup(false);
        d.tick(secs(2), &mut nothing);
        assert!(told(&t).is_empty(), "closing is not closed yet");
        // The untouched SYN_SENT one times out after 10 s; closing after 30 s.
        d.tick(secs(12), &mut nothing);
        assert_eq!(told(&t), [(Ended::Closed, 4001, 1)], "the idle one");
        d.tick(secs(32), &mut nothing);
        assert_eq!(told(&t)[1], (Ended::Closed, 4000, 0), "the reset one");
        assert_eq!(count(&d, NoticeResult::Delivered), 2);
        assert_eq!(d.table().len(), 0);
    }

    /// A server that leaves the SYN unanswered `syn_retries` times ditches the connection: the policy is
    /// told at the next wake-up, not while the SYN is handled; the new server's placement ends with a
    /// closed notice of its own.
    #[test]
    fn ditched_after_syn_retries_told_at_wakeup() {
        let (mut d, t) = recording(&config(1, 1, true, false), true);
        let first = syn_to(&mut d, WEB, 5000, secs(0));
        syn_to(&mut d, WEB, 5000, secs(1));
        let second = syn_to(&mut d, WEB, 5000, secs(3));
        assert_ne!(first, second);
        assert!(told(&t).is_empty(), "no policy call on the packet path");
        d.wakeup(false);
        assert_eq!(told(&t), [(Ended::Ditched, 5000, 0)]);
        // The second server answers and the client resets; once the closing entry expires, the second
        // placement ends.
        d.handle(Interface::Inside, &mut server(second, 5000, false), secs(3));
        let mut rst = client(WEB, 5000, false, true);
        d.handle(Interface::Outside, &mut rst, secs(4));
        d.tick(secs(40), &mut |_, _| {});
        assert_eq!(
            told(&t),
            [(Ended::Ditched, 5000, 0), (Ended::Closed, 5000, 1)]
        );
    }

    /// An RST to the SYN ditches the connection too. With no other server to take it, the connection stays
    /// on its server until it expires, and no closed notice follows: the ditch ended the placement.
    #[test]
    fn ditched_by_rst_ends_the_placement() {
        let (mut d, t) = recording(&config(0, 1, true, true), true);
        for other in ["b", "c"] {
            d.set_check_result(other, false, secs(0)).unwrap();
            assert_eq!(real(&d, other).state, ServerState::Failed);
        }
        let first = syn_to(&mut d, WEB, 6000, secs(0));
        assert_eq!(
            d.handle(Interface::Inside, &mut server(first, 6000, true), secs(0)),
            Verdict::Forward(Interface::Outside),
            "kept: the RST goes to the client"
        );
        d.tick(secs(100), &mut |_, _| {});
        assert_eq!(d.table().len(), 0);
        assert_eq!(told(&t), [(Ended::Ditched, 6000, 0)]);
    }

    /// A connection the policy did not pick itself (its fallback did) gets no notice.
    #[test]
    fn fallback_placements_get_none() {
        let (mut d, t) = recording(&config(2, 1, true, false), false);
        syn_to(&mut d, WEB, 7000, secs(0));
        d.tick(secs(100), &mut |_, _| {});
        assert_eq!(d.table().len(), 0);
        assert!(told(&t).is_empty());
        assert_eq!(d.counters().notices, [0; NoticeResult::COUNT]);
    }

    /// After a reload the new instances do not hear about the old ones' connections: dropped and counted.
    /// Notices queued before the reload still reach the instance that placed them.
    #[test]
    fn reload_makes_older_notices_stale() {
        let config = config(0, 1, true, false);
        let (mut d, t) = recording(&config, true);
        syn_to(&mut d, WEB, 8000, secs(0));
        let second = syn_to(&mut d, WEB, 8001, secs(0));
        d.handle(Interface::Inside, &mut server(second, 8001, true), secs(0));
        let bindings = BindingTable::from_config(&config);
        let (selectors, fresh) = recorders(&bindings, true);
        d.install(bindings, selectors);
        assert_eq!(
            told(&t)[0],
            (Ended::Ditched, 8001, 1),
            "told before the swap"
        );
        d.tick(secs(100), &mut |_, _| {});
        assert_eq!(told(&t).len(), 1);
        assert_eq!(d.table().len(), 0);
        assert_eq!(
            count(&d, NoticeResult::Stale),
            2,
            "8000's close, and 8001's on the server that took it over"
        );
        assert!(told(&fresh).is_empty());
    }

    /// The queue never grows: past its capacity a notice is dropped and counted.
    #[test]
    fn full_queue_drops_and_counts() {
        let (mut d, _) = recording(&config(2, 1, true, false), true);
        syn_to(&mut d, WEB, 9000, secs(0));
        let conn = *d.table().iter().next().unwrap().1;
        let mut counters = Counters::default();
        let mut notices = Notices::new();
        let capacity = notices.queue.capacity();
        for _ in 0..NOTICE_CAPACITY + 3 {
            notices.push(Ended::Closed, &conn, &mut counters);
        }
        assert_eq!(notices.queue.len(), NOTICE_CAPACITY);
        assert_eq!(notices.queue.capacity(), capacity, "never reallocated");
        assert_eq!(counters.notices[NoticeResult::QueueFull as usize], 3);
    }
}
