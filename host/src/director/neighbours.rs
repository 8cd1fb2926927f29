//! Layer 2 on both sides, ARP for IPv4 and neighbour discovery (RFC 4861) for IPv6: answers for the virtual
//! addresses and gratuitous ARP / unsolicited neighbour advertisements after start or reload (outside), and
//! the real servers' MAC addresses, learned from ARP replies and requests, neighbour advertisements and
//! solicitations, and asked for again when they get old or a resent SYN suggests they changed (inside).
//! Static `mac` entries from the config are never asked for.

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use hashbrown::HashMap;

use super::{Director, DropReason, RealLive, Verdict};
use crate::Interface;
use crate::binding::BindingTable;
use crate::config::Role;
use crate::wire::{self, ArpOp, MacAddr};

/// How often a resolved neighbour entry is refreshed by a new ARP request.
const NEIGHBOUR_REFRESH: Duration = Duration::from_secs(30);
/// How often an unresolved neighbour is asked again.
const NEIGHBOUR_RETRY: Duration = Duration::from_secs(1);
/// Gratuitous ARP (unsolicited neighbour advertisements) for virtual addresses this often after start or
/// reload, this many times (RFC 4861 §7.2.6: MAX_NEIGHBOR_ADVERTISEMENT is 3).
pub(super) const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(1);
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
    old: &HashMap<IpAddr, Neighbour>,
    bindings: &BindingTable,
    reals: &[RealLive],
) -> HashMap<IpAddr, Neighbour> {
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
    /// Announces the virtual addresses (gratuitous ARP, unsolicited neighbour advertisements)
    /// [`ANNOUNCE_COUNT`] times after start or reload, and `[sync] garp_repeat` times on becoming active.
    /// A standby announces nothing.
    pub(super) fn announce(&mut self, now: Duration, send: &mut dyn FnMut(Interface, &[u8])) {
        if self.announce_left == 0 || now < self.announce_next || self.role == Role::Standby {
            return;
        }
        self.announce_left -= 1;
        self.announce_next = now + self.announce_every;
        let mut buf = [0u8; 128];
        for vm in self.bindings.virtuals.iter().filter(|vm| vm.announce) {
            let n = match vm.address {
                IpAddr::V4(a) => wire::build_gratuitous_arp(self.l2.outside_mac, a, &mut buf),
                IpAddr::V6(a) => {
                    wire::build_neighbour_advertisement(self.l2.outside_mac, a, None, &mut buf)
                }
            };
            send(Interface::Outside, &buf[..n]);
        }
    }

    /// Asks for the MAC of each real server that has none yet, or whose entry is old or suspect.
    pub(super) fn resolve_neighbours(
        &mut self,
        now: Duration,
        send: &mut dyn FnMut(Interface, &[u8]),
    ) {
        let mut buf = [0u8; 128];
        let link_local = wire::ndp::link_local(self.l2.inside_mac);
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
                let len = match *ip {
                    IpAddr::V4(ip) => {
                        wire::build_arp_request(self.l2.inside_mac, self.l2.inside_ip, ip, &mut buf)
                    }
                    IpAddr::V6(ip) => match n.mac {
                        // A known neighbour is asked directly (RFC 4861 §7.3.3), not the whole link.
                        Some(mac) if !n.suspect => wire::ndp::build_neighbour_probe(
                            self.l2.inside_mac,
                            link_local,
                            ip,
                            mac,
                            &mut buf,
                        ),
                        _ => wire::build_neighbour_solicitation(
                            self.l2.inside_mac,
                            link_local,
                            ip,
                            &mut buf,
                        ),
                    },
                };
                send(Interface::Inside, &buf[..len]);
            }
        }
    }

    pub(super) fn arp_outside(&mut self, arp: &wire::Arp) -> Verdict {
        if arp.operation != ArpOp::Request {
            return Verdict::Drop(DropReason::Ignored);
        }
        if !self.announced(arp.target_ip.into()) {
            return Verdict::Drop(DropReason::Ignored);
        }
        self.reply_len =
            wire::build_arp_reply(self.l2.outside_mac, arp.target_ip, arp, &mut self.reply);
        self.generated(Interface::Outside)
    }

    /// Whether `addr` is a virtual address the director answers ARP and neighbour solicitations for.
    fn announced(&self, addr: IpAddr) -> bool {
        self.bindings
            .virtual_by_address(addr)
            .and_then(|id| self.bindings.virtuals.get(id as usize))
            .is_some_and(|vm| vm.announce)
    }

    /// A neighbour solicitation from the outside: answered for an announced virtual address, from it, to
    /// the solicitor (RFC 4861 §7.2.4).
    pub(super) fn solicited_outside(
        &mut self,
        p: &wire::Packet,
        target: Ipv6Addr,
        mac: Option<MacAddr>,
    ) -> Verdict {
        if !self.announced(target.into()) {
            return Verdict::Drop(DropReason::Ignored);
        }
        let to = match p.src {
            // The answer goes where the solicitation's link-layer option says, else where it came from.
            IpAddr::V6(src) => (src, mac.unwrap_or(p.src_mac)),
            IpAddr::V4(_) => return Verdict::Drop(DropReason::Ignored),
        };
        self.reply_len = wire::build_neighbour_advertisement(
            self.l2.outside_mac,
            target,
            Some(to),
            &mut self.reply,
        );
        self.generated(Interface::Outside)
    }

    /// A frame reaching a standby: the inside's ARP and neighbour discovery are learned from (so that the
    /// real servers' MACs are known at the takeover); nothing else is answered or forwarded.
    pub(super) fn standby(&mut self, from: Interface, frame: &[u8], now: Duration) -> Verdict {
        if from == Interface::Outside {
            return Verdict::Drop(DropReason::Standby);
        }
        if let Some(arp) = wire::parse_arp(frame) {
            return self.arp_inside(&arp, now);
        }
        match wire::parse(frame) {
            Ok(
                p @ wire::Packet {
                    transport:
                        wire::Transport::Icmp(
                            wire::Icmp::NeighbourAdvertisement { .. }
                            | wire::Icmp::NeighbourSolicitation { .. },
                        ),
                    ..
                },
            ) => self.ndp_inside(&p, now),
            _ => Verdict::Drop(DropReason::Standby),
        }
    }

    pub(super) fn arp_inside(&mut self, arp: &wire::Arp, now: Duration) -> Verdict {
        // Learn from replies and from requests alike: both carry the sender's binding.
        self.learn(arp.sender_ip.into(), arp.sender_mac, now)
    }

    /// Neighbour discovery from the inside: an advertisement tells where its target is; a solicitation
    /// carries its sender's link-layer address (RFC 4861 §7.2.3: a node may learn from it too).
    pub(super) fn ndp_inside(&mut self, p: &wire::Packet, now: Duration) -> Verdict {
        match p.transport {
            wire::Transport::Icmp(wire::Icmp::NeighbourAdvertisement {
                target,
                mac: Some(mac),
            }) => self.learn(target.into(), mac, now),
            wire::Transport::Icmp(wire::Icmp::NeighbourSolicitation { mac: Some(mac), .. }) => {
                self.learn(p.src, mac, now)
            }
            _ => Verdict::Drop(DropReason::Ignored),
        }
    }

    fn learn(&mut self, ip: IpAddr, mac: MacAddr, now: Duration) -> Verdict {
        match self.neighbours.get_mut(&ip) {
            Some(n) if !n.static_entry => {
                let moved = n.mac.is_some_and(|old| old != mac);
                n.mac = Some(mac);
                n.updated = now;
                n.suspect = false;
                if moved {
                    self.reoffload_real(ip, mac);
                }
                Verdict::Consumed
            }
            _ => Verdict::Drop(DropReason::Ignored),
        }
    }

    /// A resent SYN may mean the real server's MAC changed (a new NIC, a recreated veth) and our frames go
    /// nowhere: make its entry due for an ARP request at the next tick (at most one per
    /// [`NEIGHBOUR_RETRY`]). The old MAC stays in use until the answer replaces it.
    pub(super) fn reask_neighbour(&mut self, ip: IpAddr) {
        if let Some(n) = self.neighbours.get_mut(&ip)
            && !n.static_entry
            && n.mac.is_some()
        {
            n.suspect = true;
        }
    }

    pub(super) fn neighbour(&self, ip: IpAddr) -> Option<MacAddr> {
        self.neighbours.get(&ip).and_then(|n| n.mac)
    }
}
