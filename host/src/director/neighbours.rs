//! Layer 2 on both sides: ARP answers for the virtual addresses and gratuitous ARP after start or reload
//! (outside), and the real servers' MAC addresses, learned from ARP and asked for again when they get old or
//! a resent SYN suggests they changed (inside). Static `mac` entries from the config are never asked for.

use std::net::Ipv4Addr;
use std::time::Duration;

use hashbrown::HashMap;

use super::{Director, DropReason, RealLive, Verdict};
use crate::Interface;
use crate::binding::BindingTable;
use crate::wire::{self, ArpOp, MacAddr};

/// How often a resolved neighbour entry is refreshed by a new ARP request.
const NEIGHBOUR_REFRESH: Duration = Duration::from_secs(30);
/// How often an unresolved neighbour is asked again.
const NEIGHBOUR_RETRY: Duration = Duration::from_secs(1);
/// Gratuitous ARP for virtual addresses this often after start or reload, this many times.
const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(1);
pub(super) const ANNOUNCE_COUNT: u8 = 3;

/// The MAC address of one real server.
#[derive(Clone, Copy, Debug)]
pub(super) struct Neighbour {
    mac: Option<MacAddr>,
    /// When the MAC was last learned, or when it was last asked for while unknown.
    updated: Duration,
    asked: Duration,
    static_entry: bool,
    /// Ask again at the next tick although the entry is fresh (see `Director::reask_neighbour`).
    suspect: bool,
}

impl Neighbour {
    fn unknown() -> Neighbour {
        Neighbour {
            mac: None,
            updated: Duration::ZERO,
            asked: Duration::ZERO,
            static_entry: false,
            suspect: false,
        }
    }
}

/// The neighbour table for a new binding table: static entries from the config, learned ones kept for
/// servers still configured (`reals` past `bindings.reals` are removed servers whose connections live on).
pub(super) fn neighbours_for(
    old: &HashMap<Ipv4Addr, Neighbour>,
    bindings: &BindingTable,
    reals: &[RealLive],
) -> HashMap<Ipv4Addr, Neighbour> {
    let mut neighbours = HashMap::new();
    for (r, live) in bindings.reals.iter().zip(reals) {
        let entry = match r.mac {
            Some(mac) => Neighbour {
                mac: Some(mac),
                static_entry: true,
                ..Neighbour::unknown()
            },
            None => old
                .get(&live.address)
                .copied()
                .filter(|n| !n.static_entry)
                .unwrap_or_else(Neighbour::unknown),
        };
        neighbours.entry(live.address).or_insert(entry);
    }
    for live in reals.get(bindings.reals.len()..).unwrap_or_default() {
        if let Some(n) = old.get(&live.address) {
            neighbours.entry(live.address).or_insert(*n);
        }
    }
    neighbours
}

impl Director {
    /// Announces the virtual addresses (gratuitous ARP) [`ANNOUNCE_COUNT`] times after start or reload.
    pub(super) fn announce(&mut self, now: Duration, send: &mut dyn FnMut(Interface, &[u8])) {
        if self.announce_left == 0 || now < self.announce_next {
            return;
        }
        self.announce_left -= 1;
        self.announce_next = now + ANNOUNCE_INTERVAL;
        let mut buf = [0u8; 64];
        for vm in self.bindings.virtuals.iter().filter(|vm| vm.announce) {
            let n = wire::build_gratuitous_arp(self.l2.outside_mac, vm.address, &mut buf);
            send(Interface::Outside, &buf[..n]);
        }
    }

    /// Asks for the MAC of each real server that has none yet, or whose entry is old or suspect.
    pub(super) fn resolve_neighbours(
        &mut self,
        now: Duration,
        send: &mut dyn FnMut(Interface, &[u8]),
    ) {
        let mut buf = [0u8; 64];
        for (ip, n) in self.neighbours.iter_mut() {
            if n.static_entry {
                continue;
            }
            let due = match n.mac {
                None => n.asked == Duration::ZERO || now >= n.asked + NEIGHBOUR_RETRY,
                Some(_) => {
                    (n.suspect || now >= n.updated + NEIGHBOUR_REFRESH)
                        && now >= n.asked + NEIGHBOUR_RETRY
                }
            };
            if due {
                n.asked = now.max(Duration::from_nanos(1));
                let len =
                    wire::build_arp_request(self.l2.inside_mac, self.l2.inside_ip, *ip, &mut buf);
                send(Interface::Inside, &buf[..len]);
            }
        }
    }

    pub(super) fn arp_outside(&mut self, arp: &wire::Arp) -> Verdict {
        if arp.operation != ArpOp::Request {
            return Verdict::Drop(DropReason::Ignored);
        }
        let announced = self
            .bindings
            .virtual_by_address(arp.target_ip)
            .and_then(|id| self.bindings.virtuals.get(id as usize))
            .is_some_and(|vm| vm.announce);
        if !announced {
            return Verdict::Drop(DropReason::Ignored);
        }
        self.reply_len =
            wire::build_arp_reply(self.l2.outside_mac, arp.target_ip, arp, &mut self.reply);
        self.generated(Interface::Outside)
    }

    pub(super) fn arp_inside(&mut self, arp: &wire::Arp, now: Duration) -> Verdict {
        // Learn from replies and from requests alike: both carry the sender's binding.
        match self.neighbours.get_mut(&arp.sender_ip) {
            Some(n) if !n.static_entry => {
                n.mac = Some(arp.sender_mac);
                n.updated = now;
                n.suspect = false;
                Verdict::Consumed
            }
            _ => Verdict::Drop(DropReason::Ignored),
        }
    }

    /// A resent SYN may mean the real server's MAC changed (a new NIC, a recreated veth) and our frames go
    /// nowhere: make its entry due for an ARP request at the next tick (at most one per
    /// [`NEIGHBOUR_RETRY`]). The old MAC stays in use until the answer replaces it.
    pub(super) fn reask_neighbour(&mut self, ip: Ipv4Addr) {
        if let Some(n) = self.neighbours.get_mut(&ip)
            && !n.static_entry
            && n.mac.is_some()
        {
            n.suspect = true;
        }
    }

    pub(super) fn neighbour(&self, ip: Ipv4Addr) -> Option<MacAddr> {
        self.neighbours.get(&ip).and_then(|n| n.mac)
    }
}
