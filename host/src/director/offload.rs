//! `[director] offload`: established connections translated in the kernel ([`crate::offload`]).
//!
//! A connection goes to the kernel when the director has seen it established (the client acknowledged the
//! server's SYN-ACK, or a UDP server replied) and it has been open for [`OFFLOAD_AFTER`]: at its first frame
//! after both. A SYN-proxied connection never goes (its sequence
//! numbers are translated here). It comes back when it starts closing (the kernel passes FIN and RST up and
//! stops translating that direction at once), and it leaves the kernel with the table in every other way:
//! expiry, eviction, a client reusing its port, a peer's word, becoming standby. Each tick folds the frames
//! the kernel translated into the counters. An offloaded connection's last frame in the kernel is asked for
//! when the idle expiry finds it due, and before the sync refresh sends its idle time to a peer: the cost
//! is two map lookups per such connection, never a walk of the kernel's map.

use super::Director;
use crate::Interface;
use crate::config::Role;
use crate::conntable::{ConnId, ConnState};
use crate::offload::{Offload, Refused};
use crate::wire::Protocol;

/// How long a connection must have been open before it goes to the kernel. Handing one over and taking it
/// back costs four map updates (system calls); a short connection (one request, `Connection: close`) is
/// over before its frames could repay them: with no delay, new connections/s fell by a sixth to a quarter
/// in the comparison (docs/benchmarks.md). A bulk transfer or a keep-alive connection still goes after
/// 10 ms.
pub const OFFLOAD_AFTER: std::time::Duration = std::time::Duration::from_millis(10);

impl Director {
    /// Translates established connections in the kernel from now on (`vipd run` with `offload = "xdp"`).
    pub fn set_offload(&mut self, offload: Box<dyn Offload>) {
        self.offload = Some(offload);
        self.offload_folded = crate::Sides::new((0, 0), (0, 0));
    }

    /// Hands connection `id` to the kernel if it is ready: established TCP (`from_server` or not), or UDP
    /// whose server replied (`from_server`), open for [`OFFLOAD_AFTER`] at least. Once per connection; one
    /// branch when the offload is off.
    pub(super) fn offload_if_ready(&mut self, id: ConnId, from_server: bool) {
        if self.offload.is_none() || self.role != Role::Active {
            return;
        }
        let conn = self.table.get(id);
        let ready = match conn.protocol {
            Protocol::Tcp => conn.state == ConnState::Established,
            Protocol::Udp => from_server,
        };
        if !ready
            || conn.offloaded
            || conn.proxy.is_some()
            || self.now < conn.created.get() + OFFLOAD_AFTER
        {
            return;
        }
        let Some(real_mac) = self.neighbour(conn.real.ip()) else {
            return;
        };
        let Some(offload) = self.offload.as_deref_mut() else {
            return;
        };
        match offload.insert(conn, real_mac) {
            Ok(()) => {
                self.table.get_mut(id).offloaded = true;
                self.counters.offloaded += 1;
            }
            Err(Refused::Full) => self.counters.offload_full += 1,
            Err(Refused::Failed) => self.counters.offload_failed += 1,
        }
    }

    /// Takes connection `id` back from the kernel, if it is there.
    pub(super) fn unoffload(&mut self, id: ConnId) {
        let conn = self.table.get_mut(id);
        if !conn.offloaded {
            return;
        }
        conn.offloaded = false;
        if let Some(o) = self.offload.as_deref_mut() {
            o.remove(self.table.get(id));
        }
    }

    /// Takes every connection back from the kernel (becoming standby: a standby forwards nothing).
    pub(super) fn unoffload_all(&mut self) {
        let Some(offload) = self.offload.as_deref_mut() else {
            return;
        };
        self.table.for_each_mut(|conn| {
            if conn.offloaded {
                offload.remove(conn);
                conn.offloaded = false;
            }
        });
    }

    /// A real server's MAC changed: its connections in the kernel are given the new one.
    pub(super) fn reoffload_real(&mut self, ip: std::net::IpAddr, mac: crate::wire::MacAddr) {
        let Some(offload) = self.offload.as_deref_mut() else {
            return;
        };
        self.table.for_each_mut(|conn| {
            if conn.offloaded && conn.real.ip() == ip {
                offload.remove(conn);
                conn.offloaded = offload.insert(conn, mac).is_ok();
            }
        });
    }

    /// Folds what the kernel translated into the counters.
    pub(super) fn offload_tick(&mut self) {
        let Some(offload) = self.offload.as_deref_mut() else {
            return;
        };
        let totals = offload.totals();
        for (side, other) in [
            (Interface::Outside, Interface::Inside),
            (Interface::Inside, Interface::Outside),
        ] {
            let (frames, bytes) = totals[side];
            let (old_frames, old_bytes) = self.offload_folded[side];
            let (df, db) = (
                frames.saturating_sub(old_frames),
                bytes.saturating_sub(old_bytes),
            );
            self.counters.rx_frames[side] += df;
            self.counters.rx_bytes[side] += db;
            self.counters.handled[side][super::Handled::Forwarded as usize] += df;
            self.counters.forwarded[other] += df;
            self.counters.tx_bytes[other] += db;
            self.counters.offload_frames[side] += df;
        }
        self.offload_folded = totals;
    }

    /// Brings connection `id`'s last-seen time up to the kernel's, if it is offloaded (before its idle time
    /// is sent to a sync peer).
    pub(super) fn freshen(&mut self, id: ConnId) {
        let Some(offload) = self.offload.as_deref_mut() else {
            return;
        };
        let conn = self.table.get(id);
        if !conn.offloaded {
            return;
        }
        if let Some(age) = offload.seen(conn) {
            let seen = self.now.saturating_sub(age);
            if seen > conn.last_seen.get() {
                self.table.touch(id, seen);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::super::tests::{WEB, client, config, secs, server, syn_to};
    use super::*;
    use crate::Sides;
    use crate::binding::BindingTable;
    use crate::conntable::{Connection, Timeouts};
    use crate::director::Verdict;
    use crate::wire::MacAddr;

    /// What the kernel would hold: connections by client port, with the MAC given and the age to report.
    #[derive(Default)]
    struct Kernel {
        held: BTreeMap<u16, (MacAddr, Duration)>,
        inserts: u32,
        removes: u32,
        totals: Sides<(u64, u64)>,
    }

    struct Recording(Arc<Mutex<Kernel>>);

    impl Offload for Recording {
        fn insert(&mut self, conn: &Connection, real_mac: MacAddr) -> Result<(), Refused> {
            let mut k = self.0.lock().unwrap();
            k.inserts += 1;
            assert!(
                k.held
                    .insert(conn.client.port(), (real_mac, Duration::MAX))
                    .is_none()
            );
            Ok(())
        }
        fn remove(&mut self, conn: &Connection) {
            let mut k = self.0.lock().unwrap();
            k.removes += 1;
            assert!(
                k.held.remove(&conn.client.port()).is_some(),
                "removed twice"
            );
        }
        fn totals(&mut self) -> Sides<(u64, u64)> {
            self.0.lock().unwrap().totals
        }
        fn seen(&mut self, conn: &Connection) -> Option<Duration> {
            let k = self.0.lock().unwrap();
            let age = k.held.get(&conn.client.port())?.1;
            (age != Duration::MAX).then_some(age)
        }
        fn mode(&self) -> &'static str {
            "test"
        }
        fn held(&self) -> usize {
            self.0.lock().unwrap().held.len()
        }
    }

    fn offloading() -> (Director, Arc<Mutex<Kernel>>) {
        let config = config(2, 1, true, false);
        let mut d = Director::new(
            &config,
            BindingTable::from_config(&config),
            super::super::tests::L2,
        );
        let kernel = Arc::new(Mutex::new(Kernel::default()));
        d.set_offload(Box::new(Recording(Arc::clone(&kernel))));
        (d, kernel)
    }

    /// SYN, SYN-ACK, and the client's ACK [`OFFLOAD_AFTER`] later: the connection goes to the kernel.
    fn establish(d: &mut Director, cport: u16, now: Duration) {
        let to = syn_to(d, WEB, cport, now);
        d.handle(Interface::Inside, &mut server(to, cport, false), now);
        let mut ack = client(WEB, cport, false, false);
        assert_eq!(
            d.handle(Interface::Outside, &mut ack, now + OFFLOAD_AFTER),
            Verdict::Forward(Interface::Inside)
        );
    }

    /// A connection over within [`OFFLOAD_AFTER`] never goes to the kernel.
    #[test]
    fn a_short_connection_stays_here() {
        let (mut d, kernel) = offloading();
        let to = syn_to(&mut d, WEB, 1000, secs(0));
        d.handle(Interface::Inside, &mut server(to, 1000, false), secs(0));
        let half = OFFLOAD_AFTER / 2;
        d.handle(
            Interface::Outside,
            &mut client(WEB, 1000, false, false),
            half,
        );
        d.handle(
            Interface::Outside,
            &mut client(WEB, 1000, false, true),
            half,
        );
        assert_eq!(kernel.lock().unwrap().inserts, 0);
        assert_eq!(d.counters().offloaded, 0);
    }

    #[test]
    fn established_goes_to_the_kernel_once_and_comes_back_when_closing() {
        let (mut d, kernel) = offloading();
        let to = syn_to(&mut d, WEB, 1000, secs(0));
        d.handle(Interface::Inside, &mut server(to, 1000, false), secs(1));
        assert_eq!(
            kernel.lock().unwrap().inserts,
            0,
            "not before the client's ACK"
        );
        let mut ack = client(WEB, 1000, false, false);
        d.handle(Interface::Outside, &mut ack, secs(1));
        let real_mac = kernel.lock().unwrap().held.get(&1000).map(|h| h.0);
        assert!(
            real_mac.is_some_and(|m| m.0[..5] == [2, 0, 0, 0, 2]),
            "{real_mac:?}"
        );
        // A frame that still reaches the director (one in flight) offloads nothing again.
        d.handle(
            Interface::Outside,
            &mut client(WEB, 1000, false, false),
            secs(1),
        );
        assert_eq!(kernel.lock().unwrap().inserts, 1);
        assert_eq!(d.counters().offloaded, 1);
        // The client's RST: closing is handled here again.
        d.handle(
            Interface::Outside,
            &mut client(WEB, 1000, false, true),
            secs(2),
        );
        let k = kernel.lock().unwrap();
        assert_eq!((k.removes, k.held.len()), (1, 0));
        assert!(d.table().iter().all(|(_, c)| !c.offloaded));
    }

    #[test]
    fn leaving_the_table_leaves_the_kernel() {
        let (mut d, kernel) = offloading();
        establish(&mut d, 1000, secs(0));
        establish(&mut d, 1001, secs(0));
        assert_eq!(kernel.lock().unwrap().held.len(), 2);
        let timeouts = Timeouts::default();
        d.expire(secs(1) + timeouts.established, usize::MAX);
        let k = kernel.lock().unwrap();
        assert_eq!((k.removes, k.held.len(), d.table().len()), (2, 0, 0));
    }

    /// A connection whose frames flow only through the kernel is kept as long as the kernel saw one
    /// within the idle timeout, and expires once it did not.
    #[test]
    fn the_kernels_last_seen_keeps_a_connection_alive() {
        let (mut d, kernel) = offloading();
        establish(&mut d, 1000, secs(0));
        let established = Timeouts::default().established;
        let mut now = secs(0);
        for _ in 0..3 {
            now += established - secs(1);
            kernel.lock().unwrap().held.get_mut(&1000).unwrap().1 = secs(1);
            d.tick(now, &mut |_, _| {});
            assert_eq!(
                d.table().len(),
                1,
                "expired while the kernel carried its frames"
            );
        }
        // Due now, but the kernel saw a frame a second ago: kept, with that time.
        now += secs(2);
        d.tick(now, &mut |_, _| {});
        assert_eq!(d.table().len(), 1);
        // Idle in the kernel too: the last frame it saw was a whole timeout ago.
        now += established;
        kernel.lock().unwrap().held.get_mut(&1000).unwrap().1 = established;
        d.tick(now, &mut |_, _| {});
        assert_eq!(d.table().len(), 0);
        assert_eq!(kernel.lock().unwrap().held.len(), 0);
    }

    #[test]
    fn the_kernels_frames_are_folded_into_the_counters() {
        let (mut d, kernel) = offloading();
        let before = d.counters().clone();
        kernel.lock().unwrap().totals = Sides::new((10, 1000), (30, 45000));
        d.tick(secs(1), &mut |_, _| {});
        kernel.lock().unwrap().totals = Sides::new((12, 1200), (30, 45000));
        d.tick(secs(2), &mut |_, _| {});
        let c = d.counters();
        assert_eq!(c.rx_frames.outside - before.rx_frames.outside, 12);
        assert_eq!(c.rx_bytes.inside - before.rx_bytes.inside, 45000);
        assert_eq!(c.forwarded.inside - before.forwarded.inside, 12);
        assert_eq!(c.forwarded.outside - before.forwarded.outside, 30);
        assert_eq!(c.tx_bytes.outside - before.tx_bytes.outside, 45000);
        assert_eq!(c.offload_frames, Sides::new(12, 30));
    }
}
