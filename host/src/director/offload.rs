//! `[director] offload`: established connections translated in the kernel ([`crate::offload`]).
//!
//! A connection goes to the kernel when the director has seen it established: the client acknowledged the
//! server's SYN-ACK (TCP), or its server replied (UDP). A SYN-proxied connection never goes (its sequence
//! numbers are translated here). It comes back when it starts closing (the kernel passes FIN and RST up and
//! stops translating that direction at once), and it leaves the kernel with the table in every other way:
//! expiry, eviction, a client reusing its port, a peer's word, becoming standby. Each tick folds the frames
//! the kernel translated into the counters, and once a second each offloaded connection's last frame in the
//! kernel into its idle time, before the expiry looks at it.

use std::time::Duration;

use super::Director;
use crate::Interface;
use crate::config::Role;
use crate::conntable::{ConnId, ConnState};
use crate::offload::{Offload, Refused};
use crate::wire::Protocol;

/// How often the kernel's last-seen times are read into the table: an offloaded connection's idle time is
/// known to within this.
pub const SEEN_INTERVAL: Duration = Duration::from_secs(1);

impl Director {
    /// Translates established connections in the kernel from now on (`vipd run` with `offload = "xdp"`).
    pub fn set_offload(&mut self, offload: Box<dyn Offload>) {
        self.offload = Some(offload);
        self.offload_folded = crate::Sides::new((0, 0), (0, 0));
    }

    /// The offload in use, if any.
    pub fn offload(&mut self) -> Option<&mut (dyn Offload + 'static)> {
        self.offload.as_deref_mut()
    }

    /// Hands connection `id` to the kernel if it is ready: established TCP (`from_server` or not), or UDP
    /// whose server replied (`from_server`). Once per connection; one branch when the offload is off.
    pub(super) fn offload_if_ready(&mut self, id: ConnId, from_server: bool) {
        if self.offload.is_none() || self.role != Role::Active {
            return;
        }
        let conn = self.table.get(id);
        let ready = match conn.protocol {
            Protocol::Tcp => conn.state == ConnState::Established,
            Protocol::Udp => from_server,
        };
        if !ready || conn.offloaded || conn.proxy.is_some() {
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

    /// Folds what the kernel translated into the counters, and (every [`SEEN_INTERVAL`]) the kernel's
    /// last-seen times into the connections' idle times.
    pub(super) fn offload_tick(&mut self, now: Duration) {
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
        if now < self.offload_seen_next {
            return;
        }
        self.offload_seen_next = now + SEEN_INTERVAL;
        let table = &mut self.table;
        offload.for_each_seen(&mut |protocol, client, virt, age| {
            let Some(id) = table.lookup_inbound(protocol, client, virt) else {
                return;
            };
            let seen = now.saturating_sub(age);
            if seen > table.get(id).last_seen.get() {
                table.touch(id, seen);
            }
        });
    }
}
