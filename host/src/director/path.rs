//! The packet path (patent FIGS. 7, 8 and 9): frames from clients and from real servers.
//!
//! - From the outside: ARP requests for virtual addresses are answered ([`super::neighbours`]); a frame to a
//!   virtual address is looked up by (client, virtual address); a SYN with no connection opens one, its
//!   server chosen by [`super::select`], or is refused (no such port: RST, or ICMP port unreachable for UDP);
//!   the destination is rewritten to the real server and the frame leaves on the inside.
//! - From the inside: a frame from a real server is looked up by (real server, client), its source is
//!   rewritten to the virtual address and it leaves on the outside, addressed to the MAC the client's frames
//!   came from. A SYN-ACK establishes the connection; an RST to a SYN ditches it.
//! - ICMP errors that belong to a connection are translated both ways, embedded header included.
//!
//! Any other frame is dropped with its [`DropReason`]. No allocation, lock or plugin call happens here
//! except through [`Director::select`], once per new connection. With `[sync]`, the moments a peer must
//! hear of (the server answered, a state change, a removal, a new UDP flow) call [`super::sync`]'s hooks.

use std::time::Duration;

use super::notify::Ended;
use super::select::Ditch;
use super::stats::{flow_mut, release};
use super::sync::sync_removed;
use super::{Director, DropReason, Verdict};
use crate::Interface;
use crate::binding::Lookup;
use crate::conntable::{ConnId, ConnState, Connection, Endpoint, InsertError, Proxied, SyncMark};
use crate::wire::{self, Icmp, Packet, Protocol, TcpFlags, Transport};

/// `Connection::syn_resends` of a connection re-given after an RST, until the client's next SYN: that SYN is
/// the first the new server sees, not a resend. `syn_retries` stays below it.
const REGIVEN: u8 = u8::MAX;
/// The shortest interval after which a repeated SYN counts as a resend (patent FIG. 6C's SYN resends, and
/// so towards ditching the server). TCP's first retransmission comes after the initial RTO, 1 s (RFC 6298
/// 2.1; Linux `TCP_TIMEOUT_INIT`), and later ones after longer; 800 ms leaves room for timer slack. Anything
/// sooner is the same SYN twice: a duplicate on the path, or an attacker repeating it to fail servers.
pub(super) const MIN_SYN_RESEND: Duration = Duration::from_millis(800);

impl Director {
    /// Frames from clients (patent FIGS. 7 and 8).
    pub(super) fn inbound(&mut self, frame: &mut [u8], now: Duration) -> Verdict {
        if let Some(arp) = wire::parse_arp(frame) {
            return self.arp_outside(&arp);
        }
        let p = match wire::parse(frame) {
            Ok(p) => p,
            Err(e) => return Verdict::Drop(e.into()),
        };
        // A solicitation for a virtual address goes to its solicited-node multicast address.
        if let Transport::Icmp(Icmp::NeighbourSolicitation { target, mac }) = p.transport {
            return self.solicited_outside(&p, target, mac);
        }
        if self.bindings.virtual_by_address(p.dst).is_none() {
            return Verdict::Drop(DropReason::NotVirtual);
        }
        match p.transport {
            Transport::Tcp {
                src_port,
                dst_port,
                flags,
                ..
            } => self.inbound_flow(frame, &p, Protocol::Tcp, src_port, dst_port, flags, now),
            Transport::Udp { src_port, dst_port } => self.inbound_flow(
                frame,
                &p,
                Protocol::Udp,
                src_port,
                dst_port,
                TcpFlags(0),
                now,
            ),
            Transport::Icmp(Icmp::EchoRequest) => {
                self.reply_len =
                    wire::build_icmp_echo_reply(frame, &p, self.l2.outside_mac, &mut self.reply);
                self.generated(Interface::Outside)
            }
            Transport::Icmp(Icmp::Error { embedded, .. }) => {
                // The error is about a packet the client side saw from us: virtual -> client.
                let client = Endpoint::new(embedded.dst, embedded.dst_port);
                let virt = Endpoint::new(embedded.src, embedded.src_port);
                let Some(id) = self.table.lookup_inbound(embedded.protocol, client, virt) else {
                    return Verdict::Drop(DropReason::NoConnection);
                };
                let conn = self.table.get(id);
                let (real, proxy) = (conn.real, conn.proxy);
                let Some(mac) = self.neighbour(real.ip()) else {
                    return Verdict::Drop(DropReason::NoNeighbour);
                };
                wire::rewrite_icmp_error_inbound(frame, &p, real.ip(), real.into());
                if let Some(px) = proxy {
                    // The quoted segment went out in the cookie's sequence space; the server knows its own.
                    wire::tcp::translate_quoted_seq(frame, &p, px.delta);
                }
                wire::set_macs(frame, self.l2.inside_mac, mac);
                Verdict::Forward(Interface::Inside)
            }
            Transport::Icmp(
                Icmp::Other
                | Icmp::NeighbourAdvertisement { .. }
                | Icmp::NeighbourSolicitation { .. },
            ) => Verdict::Drop(DropReason::Ignored),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn inbound_flow(
        &mut self,
        frame: &mut [u8],
        p: &Packet,
        protocol: Protocol,
        src_port: u16,
        dst_port: u16,
        flags: TcpFlags,
        now: Duration,
    ) -> Verdict {
        let client = Endpoint::new(p.src, src_port);
        let virt = Endpoint::new(p.dst, dst_port);
        if protocol == Protocol::Tcp && invalid_flags(flags) {
            return Verdict::Drop(DropReason::BadTcpFlags);
        }
        let opens = match protocol {
            Protocol::Tcp => flags.contains(TcpFlags::SYN) && !flags.contains(TcpFlags::ACK),
            Protocol::Udp => true,
        };
        let mut found = self.table.lookup_inbound(protocol, client, virt);
        if let Some(id) = found
            && self.table.get(id).proxy.is_some()
        {
            if !opens {
                return self.proxy_inbound(id, frame, p, flags, now);
            }
            if self.table.get(id).state != ConnState::Closing {
                self.counters.syn_duplicates += 1;
                return Verdict::Drop(DropReason::Ignored);
            }
            // The client reuses the port of a connection that closed: start over.
            self.close(id);
            found = None;
        }
        if found.is_none()
            && self.syn_proxy.is_some()
            && let Transport::Tcp { seq, ack, .. } = p.transport
        {
            if opens {
                return self.cookie_answer(frame, p, client, virt, seq, now);
            }
            if flags.contains(TcpFlags::ACK) && !flags.contains(TcpFlags::RST) {
                return self.cookie_accept(frame, p, client, virt, seq, ack, now);
            }
        }
        let id = match found {
            Some(id) if opens && protocol == Protocol::Tcp => {
                let conn = self.table.get(id);
                match conn.state {
                    // A SYN for a connection that already closed: the client reuses its port. Start over.
                    ConnState::Closing => {
                        self.close(id);
                        match self.open(frame, p, protocol, client, virt, None, now) {
                            Ok(id) => id,
                            Err(v) => return v,
                        }
                    }
                    // The first SYN to the server that took over after an RST: not a resend to it.
                    ConnState::SynSent if self.table.get(id).syn_resends == REGIVEN => {
                        self.counters.syn_resends += 1;
                        let conn = self.table.get_mut(id);
                        conn.syn_resends = 0;
                        if let Some(f) = flow_mut(&mut self.flows, self.reals.len(), conn) {
                            f.syn_resends += 1;
                        }
                        id
                    }
                    // Sooner after the last SYN than any TCP retransmits one: the same SYN twice (a
                    // duplicate, or a flood repeating it), not a resend. Forwarded, counted as nothing.
                    ConnState::SynSent if now < conn.last_seen.get() + MIN_SYN_RESEND => {
                        self.counters.syn_duplicates += 1;
                        id
                    }
                    // Resent `syn_retries` times and still no SYN-ACK: ditched; this SYN goes elsewhere.
                    // Not on a cluster: the SYN-ACKs go back through another director, so a resent SYN
                    // may mean a lost reply on the way back (a gateway moving), not a server ditching;
                    // health checks fail servers there.
                    ConnState::SynSent if conn.syn_resends >= self.syn_retries && !self.cluster => {
                        self.counters.syn_resends += 1;
                        if let Some(f) =
                            flow_mut(&mut self.flows, self.reals.len(), self.table.get(id))
                        {
                            f.syn_resends += 1;
                        }
                        match self.ditch(id, now) {
                            Ditch::Moved | Ditch::Kept => id,
                            Ditch::Nowhere => {
                                self.close(id);
                                let virtual_id =
                                    self.bindings.virtual_by_address(p.dst).unwrap_or(u32::MAX);
                                return self.refuse(
                                    frame,
                                    p,
                                    protocol,
                                    virtual_id,
                                    DropReason::NoServer,
                                );
                            }
                        }
                    }
                    // The patent's SYN resend: same connection, same server.
                    ConnState::SynSent => {
                        self.counters.syn_resends += 1;
                        let conn = self.table.get_mut(id);
                        conn.syn_resends = conn.syn_resends.saturating_add(1);
                        if let Some(f) = flow_mut(&mut self.flows, self.reals.len(), conn) {
                            f.syn_resends += 1;
                        }
                        let real = conn.real.ip();
                        self.reask_neighbour(real);
                        id
                    }
                    // The server answered already (its SYN-ACK is on its way or was lost): not a resend,
                    // and nothing the server is to blame for. Forwarded; the server answers it again.
                    ConnState::SynRecv | ConnState::Established | ConnState::Udp => {
                        self.counters.syn_duplicates += 1;
                        id
                    }
                }
            }
            Some(id) => id,
            None if opens => {
                if !self.take_new() {
                    return Verdict::Drop(DropReason::Shed);
                }
                match self.open(frame, p, protocol, client, virt, None, now) {
                    Ok(id) => id,
                    Err(v) => return v,
                }
            }
            None if !flags.contains(TcpFlags::RST) && self.is_placeable(virt, protocol) => {
                // A flow the router moved here from another director, with no peer's record of it: the
                // consistent policy places it where every director would (Maglev, Katran). It stays
                // SYN_SENT, whose timeout is short, until the client's next frame confirms it: one
                // spoofed frame holds no slot for long.
                if !self.take_new() {
                    return Verdict::Drop(DropReason::Shed);
                }
                self.placing_moved = true;
                let opened = self.open(frame, p, protocol, client, virt, None, now);
                self.placing_moved = false;
                let id = match opened {
                    Ok(id) => id,
                    Err(v) => return v,
                };
                self.counters.cluster_moved_policy += 1;
                return self.forward_inbound(id, frame, p);
            }
            None => return Verdict::Drop(DropReason::NoConnection),
        };
        self.table.touch(id, now);
        let conn = self.table.get_mut(id);
        if conn.adopted {
            conn.adopted = false;
            self.counters.cluster_moved_synced += 1;
        }
        if protocol == Protocol::Tcp {
            self.track_client_flags(id, flags, now);
        }
        self.offload_if_ready(id, false);
        self.forward_inbound(id, frame, p)
    }

    /// Whether a TCP client frame with no connection, to `virt`, is of a flow to place by the port's
    /// consistent policy ([`Director::mark_placeable`]).
    fn is_placeable(&self, virt: Endpoint, protocol: Protocol) -> bool {
        protocol == Protocol::Tcp
            && self.cluster
            && matches!(
                self.bindings.lookup(virt.ip(), protocol, virt.port()),
                Lookup::Port(id) if self.placeable.get(id as usize).copied().unwrap_or(false)
            )
    }

    /// Rewrites a client frame of connection `id` to its real server and sends it inside.
    fn forward_inbound(&mut self, id: ConnId, frame: &mut [u8], p: &Packet) -> Verdict {
        let conn = self.table.get(id);
        let real = conn.real;
        let Some(mac) = self.neighbour(real.ip()) else {
            return Verdict::Drop(DropReason::NoNeighbour);
        };
        wire::rewrite_destination(frame, p, real.ip(), real.port());
        wire::set_macs(frame, self.l2.inside_mac, mac);
        Verdict::Forward(Interface::Inside)
    }

    /// Creates the connection object for a new connection (patent FIG. 5), or says why not. `proxy`: the
    /// SYN proxy completed the client's handshake (`frame` is its ACK).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn open(
        &mut self,
        frame: &[u8],
        p: &Packet,
        protocol: Protocol,
        client: Endpoint,
        virt: Endpoint,
        proxy: Option<Proxied>,
        now: Duration,
    ) -> Result<ConnId, Verdict> {
        // The frame would create state: its checksum is verified in full, as the end host would (frames of
        // existing connections keep the incremental path and the end host's own check).
        if !wire::transport_checksum_ok(frame, p) {
            return Err(Verdict::Drop(DropReason::BadChecksum));
        }
        let port_id = match self.bindings.lookup(virt.ip(), protocol, virt.port()) {
            Lookup::Port(id) => id,
            Lookup::UnsupportedPort { virtual_id } => {
                return Err(self.refuse(
                    frame,
                    p,
                    protocol,
                    virtual_id,
                    DropReason::UnsupportedPort,
                ));
            }
            Lookup::NotVirtual => return Err(Verdict::Drop(DropReason::NotVirtual)),
        };
        let virtual_id = self
            .bindings
            .ports
            .get(port_id as usize)
            .map_or(u32::MAX, |port| port.virtual_id);
        let Some((real_id, target, placed_by)) =
            self.select(port_id, client, virt, protocol, None, now)
        else {
            if self.placing_moved {
                // Not the consistent policy's own answer: no RST for a connection that lives elsewhere.
                self.counters.cluster_moved_unplaced += 1;
                return Err(Verdict::Drop(DropReason::NoConnection));
            }
            return Err(self.refuse(frame, p, protocol, virtual_id, DropReason::NoServer));
        };
        let state = match protocol {
            Protocol::Tcp => ConnState::SynSent,
            Protocol::Udp => ConnState::Udp,
        };
        let conn = Connection {
            protocol,
            client,
            virtual_addr: virt,
            real: target,
            client_mac: p.src_mac,
            real_id,
            port_id,
            state,
            syn_resends: 0,
            fin_seen: 0,
            created: now.into(),
            last_seen: now.into(),
            proxy,
            placed_by,
            synced: SyncMark::NEVER,
            adopted: false,
            offloaded: false,
        };
        match self.table.insert(conn) {
            Ok(inserted) => {
                if let Some(evicted) = inserted.evicted {
                    self.evicted(&evicted);
                }
                self.counters.connections_created += 1;
                if let Some(r) = self.reals.get_mut(real_id as usize) {
                    r.active += 1;
                    r.total += 1;
                }
                if let Some(f) = flow_mut(&mut self.flows, self.reals.len(), &conn) {
                    f.active += 1;
                    f.total += 1;
                }
                if protocol == Protocol::Udp {
                    self.sync_conn(inserted.id, now);
                }
                Ok(inserted.id)
            }
            Err(InsertError::Full) => {
                Err(self.refuse(frame, p, protocol, virtual_id, DropReason::TableFull))
            }
            Err(InsertError::Collision) => {
                Err(self.refuse(frame, p, protocol, virtual_id, DropReason::Collision))
            }
            // Unreachable: the caller looked the connection up first. Treat as a stray packet.
            Err(InsertError::Exists) => Err(Verdict::Drop(DropReason::NoConnection)),
        }
    }

    /// Answers a connection attempt that cannot be served: RST for TCP, ICMP port unreachable for UDP.
    pub(super) fn refuse(
        &mut self,
        frame: &[u8],
        p: &Packet,
        protocol: Protocol,
        virtual_id: u32,
        reason: DropReason,
    ) -> Verdict {
        self.counters.refused[reason as usize] += 1;
        if let Some(r) = self.rejected.get_mut(virtual_id as usize) {
            r[reason as usize] += 1;
        }
        let mac = self.l2.outside_mac;
        self.reply_len = match protocol {
            Protocol::Tcp => wire::build_tcp_rst(p, mac, &mut self.reply),
            Protocol::Udp => wire::build_icmp_port_unreachable(frame, p, mac, &mut self.reply),
        };
        if self.reply_len == 0 {
            Verdict::Drop(reason)
        } else {
            Verdict::Reply(Interface::Outside)
        }
    }

    pub(super) fn generated(&self, to: Interface) -> Verdict {
        if self.reply_len == 0 {
            Verdict::Drop(DropReason::Truncated)
        } else {
            Verdict::Reply(to)
        }
    }

    pub(super) fn track_client_flags(&mut self, id: ConnId, flags: TcpFlags, now: Duration) {
        let state = self.table.get(id).state;
        if self.cluster
            && state == ConnState::SynSent
            && flags.contains(TcpFlags::ACK)
            && !flags.contains(TcpFlags::SYN)
            && !flags.contains(TcpFlags::RST)
        {
            // Behind ECMP the server's SYN-ACK went back through another director: the client's ACK
            // is how this one learns that the server answered.
            self.server_answered(id, now);
            self.table.set_state(id, ConnState::Established, now);
            self.counters.cluster_client_established += 1;
            self.sync_conn(id, now);
        } else if state == ConnState::SynRecv
            && flags.contains(TcpFlags::ACK)
            && !flags.contains(TcpFlags::SYN)
            && !flags.contains(TcpFlags::RST)
        {
            // The client acknowledged the server's SYN-ACK: the handshake is complete.
            self.table.set_state(id, ConnState::Established, now);
            self.sync_conn(id, now);
        }
        if flags.contains(TcpFlags::RST) || flags.contains(TcpFlags::FIN) {
            let conn = self.table.get_mut(id);
            if flags.contains(TcpFlags::FIN) {
                conn.fin_seen |= 1;
            }
            if conn.state != ConnState::Closing {
                self.closing(id, now);
            }
        }
    }

    /// Frames from real servers (patent FIG. 9).
    pub(super) fn outbound(&mut self, frame: &mut [u8], now: Duration) -> Verdict {
        if let Some(arp) = wire::parse_arp(frame) {
            return self.arp_inside(&arp, now);
        }
        let p = match wire::parse(frame) {
            Ok(p) => p,
            Err(e) => return Verdict::Drop(e.into()),
        };
        if let Transport::Icmp(
            Icmp::NeighbourAdvertisement { .. } | Icmp::NeighbourSolicitation { .. },
        ) = p.transport
        {
            return self.ndp_inside(&p, now);
        }
        let (protocol, src_port, dst_port, flags) = match p.transport {
            Transport::Tcp {
                src_port,
                dst_port,
                flags,
                ..
            } => (Protocol::Tcp, src_port, dst_port, flags),
            Transport::Udp { src_port, dst_port } => {
                (Protocol::Udp, src_port, dst_port, TcpFlags(0))
            }
            Transport::Icmp(Icmp::Error { embedded, .. }) => {
                // About a packet the server got from the client: client -> real.
                let real = Endpoint::new(embedded.dst, embedded.dst_port);
                let client = Endpoint::new(embedded.src, embedded.src_port);
                let Some(id) = self.table.lookup_outbound(embedded.protocol, real, client) else {
                    return Verdict::Drop(DropReason::NoConnection);
                };
                let conn = self.table.get(id);
                let (virt, client_mac) = (conn.virtual_addr, conn.client_mac);
                let outer_src = (p.src == real.ip()).then_some(virt.ip());
                wire::rewrite_icmp_error_outbound(frame, &p, outer_src, virt.into());
                wire::set_macs(frame, self.l2.outside_mac, client_mac);
                return Verdict::Forward(Interface::Outside);
            }
            Transport::Icmp(_) => return Verdict::Drop(DropReason::Ignored),
        };
        if protocol == Protocol::Tcp && invalid_flags(flags) {
            return Verdict::Drop(DropReason::BadTcpFlags);
        }
        let real = Endpoint::new(p.src, src_port);
        let client = Endpoint::new(p.dst, dst_port);
        let Some(id) = self.table.lookup_outbound(protocol, real, client) else {
            return self.stateless_return(frame, &p, protocol, real);
        };
        if let Transport::Tcp { seq, ack, .. } = p.transport
            && self.table.get(id).proxy.is_some()
        {
            return self.proxy_outbound(id, frame, &p, flags, seq, ack, now);
        }
        self.table.touch(id, now);
        if protocol == Protocol::Tcp {
            // A server refusing the SYN ditches the connection like one that never answers. When another
            // server takes it, the RST stays here and the client's SYN retransmission goes there.
            if flags.contains(TcpFlags::RST)
                && self.table.get(id).state == ConnState::SynSent
                && self.ditch(id, now) == Ditch::Moved
            {
                self.table.get_mut(id).syn_resends = REGIVEN;
                return Verdict::Consumed;
            }
            self.track_server_flags(id, flags, now);
        }
        self.offload_if_ready(id, true);
        let conn = self.table.get(id);
        let (virt, client_mac) = (conn.virtual_addr, conn.client_mac);
        wire::rewrite_source(frame, &p, virt.ip(), virt.port());
        wire::set_macs(frame, self.l2.outside_mac, client_mac);
        Verdict::Forward(Interface::Outside)
    }

    /// A server's frame with no connection here. On a cluster director it is a reply to a connection
    /// another director placed (the servers spread their replies over the directors): translated by the
    /// binding table when its (real address, port) serves exactly one virtual port, sent to the router.
    /// Elsewhere, and when ambiguous, dropped.
    fn stateless_return(
        &mut self,
        frame: &mut [u8],
        p: &Packet,
        protocol: Protocol,
        real: Endpoint,
    ) -> Verdict {
        if !self.cluster {
            return Verdict::Drop(DropReason::NoConnection);
        }
        let (Some(&Some((vip, vport))), Some(peer)) = (
            self.returns.get(&(protocol, real.ip(), real.port())),
            self.outside_peer,
        ) else {
            return Verdict::Drop(DropReason::NoConnection);
        };
        self.counters.cluster_returns += 1;
        wire::rewrite_source(frame, p, vip, vport);
        wire::set_macs(frame, self.l2.outside_mac, peer);
        Verdict::Forward(Interface::Outside)
    }

    pub(super) fn track_server_flags(&mut self, id: ConnId, flags: TcpFlags, now: Duration) {
        let state = self.table.get(id).state;
        if state == ConnState::SynSent
            && flags.contains(TcpFlags::SYN)
            && flags.contains(TcpFlags::ACK)
        {
            self.server_answered(id, now);
            // Half-open until the client acknowledges it (a spoofed SYN's client never does).
            self.table.set_state(id, ConnState::SynRecv, now);
            self.sync_conn(id, now);
        } else if flags.contains(TcpFlags::RST) || flags.contains(TcpFlags::FIN) {
            if flags.contains(TcpFlags::FIN) {
                self.table.get_mut(id).fin_seen |= 2;
            }
            if state != ConnState::Closing {
                self.closing(id, now);
            }
        }
    }

    /// The server answered connection `id`'s SYN: its SYN round trip is sampled and its ditched count
    /// cleared.
    pub(super) fn server_answered(&mut self, id: ConnId, now: Duration) {
        let conn = self.table.get(id);
        let real_id = conn.real_id as usize;
        let rtt = now
            .saturating_sub(conn.created.get())
            .as_micros()
            .min(u128::from(u32::MAX)) as u32;
        if let Some(r) = self.reals.get_mut(real_id) {
            // Smoothed like TCP's SRTT (RFC 6298): 7/8 old + 1/8 sample.
            r.syn_rtt_us = if r.syn_rtt_us == 0 {
                rtt.max(1)
            } else {
                (r.syn_rtt_us / 8 * 7 + rtt / 8).max(1)
            };
        }
        self.answered(real_id);
    }

    /// Connection `id` saw a FIN or RST: closing, and no longer open to its server.
    fn closing(&mut self, id: ConnId, now: Duration) {
        self.table.set_state(id, ConnState::Closing, now);
        // Closing is handled here, frame by frame: the kernel stops translating it.
        self.unoffload(id);
        let real_id = self.table.get(id).real_id as usize;
        if let Some(r) = self.reals.get_mut(real_id) {
            r.closing += 1;
        }
        self.sync_conn(id, now);
    }

    pub(super) fn close(&mut self, id: ConnId) {
        let conn = self.table.remove(id);
        release(&mut self.reals, &mut self.flows, &mut self.offload, &conn);
        self.notices.push(Ended::Closed, &conn, &mut self.counters);
        let timeouts = self.table.timeouts();
        sync_removed(
            &mut self.sync,
            &mut self.counters,
            &conn,
            &timeouts,
            self.now,
        );
    }

    /// A connection was evicted to make room for another.
    pub(super) fn evicted(&mut self, evicted: &Connection) {
        match evicted.state {
            ConnState::Closing => self.counters.evicted_closing += 1,
            _ => self.counters.evicted_half_open += 1,
        }
        release(&mut self.reals, &mut self.flows, &mut self.offload, evicted);
        self.notices
            .push(Ended::Closed, evicted, &mut self.counters);
        let timeouts = self.table.timeouts();
        sync_removed(
            &mut self.sync,
            &mut self.counters,
            evicted,
            &timeouts,
            self.now,
        );
    }
}

/// SYN with RST or FIN: a segment no TCP state allows (conntrack's `tcp_valid_flags` calls it invalid). It
/// opens nothing and changes no connection; scanners and floods send it.
fn invalid_flags(flags: TcpFlags) -> bool {
    flags.contains(TcpFlags::SYN)
        && (flags.contains(TcpFlags::RST) || flags.contains(TcpFlags::FIN))
}
