//! The SYN proxy (`[director] syn_proxy`): the director completes each client's handshake itself, with a
//! SYN cookie, and opens the server connection only for a client that answered it. A spoofed SYN costs
//! one SYN-ACK and no state, no policy call and nothing at the server (iptables SYNPROXY, LocalDirector's
//! SynGuard).
//!
//! The handshakes, for one connection (`c` the client's ISN, `k` the cookie, `s` the server's ISN):
//!
//! ```text
//! client                     director                         server
//!   SYN c           ->   cookie k from (tuple, c, options, time)
//!                   <-   SYN-ACK k, ack c+1, window 0
//!   ACK c+1, k+1    ->   cookie valid: connection object, server picked (policy called here, once)
//!                        SYN c, the client's MSS/wscale/SACK  ->
//!                                                         <-  SYN-ACK s, ack c+1
//!                        ACK c+1, s+1                      ->
//!                   <-   the SYN-ACK turned into ACK k+1 with the server's window: the client may send
//! ```
//!
//! The SYN-ACK to the client announces a zero window, so the client sends nothing until the server's
//! connection exists; then the server's SYN-ACK, rewritten in place, is the window update that opens it.
//! From there the client's sequence numbers pass unchanged and the server's are shifted by `s - k`
//! ([`Proxied::delta`]): every server segment's sequence number, every client segment's acknowledgment
//! number and SACK blocks. Windows are re-expressed when the server's scale differs from the one the
//! director announced (`syn_proxy_wscale`). TCP timestamps are not negotiated (like Linux SYN cookies
//! without timestamps); MSS, window scale and SACK are what the client asked for.
//!
//! Failures keep the patent's rules: while the server has not answered, the client's frames (its
//! zero-window probes) pace the director's SYN retransmissions as a client's SYN resends would; after
//! `syn_retries` of them, or an RST from the server, the connection is ditched and re-given; when no server
//! can take it the client gets an RST.

use std::time::Duration;

use super::path::MIN_SYN_RESEND;
use super::select::Ditch;
use super::stats::flow_mut;
use super::{Director, DropReason, Verdict};
use crate::Interface;
use crate::binding::Lookup;
use crate::conntable::{ConnId, ConnState, Connection, Endpoint, Proxied};
use crate::wire::tcp::{self, Segment};
use crate::wire::{self, Packet, Protocol, SynOptions, TcpFlags, Translation};

/// `[director] syn_proxy` when on: what the director announces to clients on the servers' behalf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SynProxy {
    pub mss: u16,
    pub wscale: u8,
}

impl Proxied {
    /// Whether window scaling is in effect between the director (as the client) and the server: both
    /// SYN and SYN-ACK carried the option (RFC 7323 §2.2).
    fn server_scaling(&self) -> bool {
        self.options.wscale.is_some() && self.server_wscale.is_some()
    }

    /// Client to server: the client scales by its own shift; the server applies it only if it scales.
    fn inbound(&self) -> Translation {
        let client = self.options.wscale.unwrap_or(0);
        Translation {
            seq: 0,
            ack: self.delta,
            window_from: client,
            window_to: if self.server_scaling() { client } else { 0 },
        }
    }

    /// Server to client: the server scales by its shift (if scaling is on); the client applies the one
    /// the director announced.
    fn outbound(&self) -> Translation {
        Translation {
            seq: self.delta.wrapping_neg(),
            ack: 0,
            window_from: if self.server_scaling() {
                self.server_wscale.unwrap_or(0)
            } else {
                0
            },
            window_to: self.announced_wscale,
        }
    }
}

/// How much longer an IPv6 header (40 bytes) is than an IPv4 one without options (20).
const IPV6_EXTRA_HEADER: u16 = 20;

impl Director {
    /// A SYN to a virtual address with no connection, SYN proxy on: answered with a SYN-ACK whose sequence
    /// number is the cookie; no state is kept.
    pub(super) fn cookie_answer(
        &mut self,
        frame: &[u8],
        p: &Packet,
        client: Endpoint,
        virt: Endpoint,
        seq: u32,
        now: Duration,
    ) -> Verdict {
        let Some(proxy) = self.syn_proxy else {
            return Verdict::Drop(DropReason::Ignored);
        };
        if !wire::transport_checksum_ok(frame, p) {
            return Verdict::Drop(DropReason::BadChecksum);
        }
        match self.bindings.lookup(virt.ip(), Protocol::Tcp, virt.port()) {
            Lookup::Port(_) => {}
            Lookup::UnsupportedPort { virtual_id } => {
                return self.refuse(
                    frame,
                    p,
                    Protocol::Tcp,
                    virtual_id,
                    DropReason::UnsupportedPort,
                );
            }
            Lookup::NotVirtual => return Verdict::Drop(DropReason::NotVirtual),
        }
        let asked = tcp::syn_options(frame, p);
        let cookie = self.cookie_key.make(client, virt, seq, &asked, now);
        // `syn_proxy_mss` is for IPv4; an IPv6 header is 20 bytes longer, so the same path carries 20 fewer
        // bytes of segment.
        let mss = if client.ip().is_ipv6() {
            proxy.mss.saturating_sub(IPV6_EXTRA_HEADER)
        } else {
            proxy.mss
        };
        let ours = SynOptions {
            mss: Some(mss),
            wscale: asked.wscale.map(|_| proxy.wscale),
            sack: asked.sack,
        };
        let synack = Segment {
            src_mac: self.l2.outside_mac,
            dst_mac: p.src_mac,
            src: virt.into(),
            dst: client.into(),
            seq: cookie,
            ack: Some(seq.wrapping_add(1)),
            syn: true,
            rst: false,
            window: 0,
        };
        self.reply_len = tcp::build_tcp(&synack, &ours, &mut self.reply);
        self.counters.syn_cookies_sent += 1;
        self.generated(Interface::Outside)
    }

    /// An ACK with no connection, SYN proxy on: if it acknowledges a valid cookie, the client completed
    /// the handshake: the connection is opened (its server picked) and the director sends the server the
    /// client's SYN. Its own zero-window probes (sequence number one lower) are recognised the same way, so
    /// a lost handshake ACK costs the client a probe interval, not the connection.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn cookie_accept(
        &mut self,
        frame: &[u8],
        p: &Packet,
        client: Endpoint,
        virt: Endpoint,
        seq: u32,
        ack: u32,
        now: Duration,
    ) -> Verdict {
        let cookie = ack.wrapping_sub(1);
        let found = [seq.wrapping_sub(1), seq].into_iter().find_map(|isn| {
            self.cookie_key
                .check(client, virt, isn, cookie, now)
                .map(|options| (isn, options))
        });
        let (Some(proxy), Some((client_isn, options))) = (self.syn_proxy, found) else {
            return Verdict::Drop(DropReason::BadCookie);
        };
        // The stateful part (connection object, policy call, SYN to the server) is what a wake-up bounds;
        // a cookie answer costs what forwarding a frame costs and keeps nothing, so it is never shed.
        if !self.take_new() {
            return Verdict::Drop(DropReason::Shed);
        }
        let proxied = Proxied {
            client_isn,
            cookie,
            options,
            client_window: tcp::window(frame, p).unwrap_or(0),
            announced_wscale: options.wscale.map_or(0, |_| proxy.wscale),
            delta: 0,
            server_wscale: None,
        };
        let id = match self.open(frame, p, Protocol::Tcp, client, virt, Some(proxied), now) {
            Ok(id) => id,
            Err(v) => return v,
        };
        self.counters.syn_cookies_accepted += 1;
        self.syn_to_server(id)
    }

    /// The client's SYN, as its cookie kept it, from the client to the connection's server.
    fn syn_to_server(&mut self, id: ConnId) -> Verdict {
        let conn = *self.table.get(id);
        let Some(px) = conn.proxy else {
            return Verdict::Drop(DropReason::Ignored);
        };
        let Some(mac) = self.neighbour(conn.real.ip()) else {
            return Verdict::Drop(DropReason::NoNeighbour);
        };
        let syn = Segment {
            src_mac: self.l2.inside_mac,
            dst_mac: mac,
            src: conn.client.into(),
            dst: conn.real.into(),
            seq: px.client_isn,
            ack: None,
            syn: true,
            rst: false,
            // A SYN's window is never scaled.
            window: tcp::rescale_window(px.client_window, px.options.wscale.unwrap_or(0), 0),
        };
        self.reply_len = tcp::build_tcp(&syn, &px.options, &mut self.reply);
        self.generated(Interface::Inside)
    }

    /// The ACK that completes the server's handshake: from the client, acknowledging the server's ISN.
    fn ack_to_server(&mut self, conn: &Connection, px: &Proxied, server_isn: u32) -> bool {
        let Some(mac) = self.neighbour(conn.real.ip()) else {
            return false;
        };
        let t = px.inbound();
        let ack = Segment {
            src_mac: self.l2.inside_mac,
            dst_mac: mac,
            src: conn.client.into(),
            dst: conn.real.into(),
            seq: px.client_isn.wrapping_add(1),
            ack: Some(server_isn.wrapping_add(1)),
            syn: false,
            rst: false,
            window: tcp::rescale_window(px.client_window, t.window_from, t.window_to),
        };
        self.reply_len = tcp::build_tcp(&ack, &SynOptions::default(), &mut self.reply);
        self.reply_len > 0
    }

    /// An RST to the client of a proxied connection no server can take.
    fn rst_to_client(&mut self, conn: &Connection, px: &Proxied) -> Verdict {
        let rst = Segment {
            src_mac: self.l2.outside_mac,
            dst_mac: conn.client_mac,
            src: conn.virtual_addr.into(),
            dst: conn.client.into(),
            seq: px.cookie.wrapping_add(1),
            ack: Some(px.client_isn.wrapping_add(1)),
            syn: false,
            rst: true,
            window: 0,
        };
        self.reply_len = tcp::build_tcp(&rst, &SynOptions::default(), &mut self.reply);
        self.generated(Interface::Outside)
    }

    /// A client's frame on a connection the SYN proxy opened.
    pub(super) fn proxy_inbound(
        &mut self,
        id: ConnId,
        frame: &mut [u8],
        p: &Packet,
        flags: TcpFlags,
        now: Duration,
    ) -> Verdict {
        let conn = *self.table.get(id);
        let Some(px) = conn.proxy else {
            return Verdict::Drop(DropReason::Ignored);
        };
        if conn.state == ConnState::SynSent {
            if flags.contains(TcpFlags::RST) {
                self.close(id);
                return Verdict::Consumed;
            }
            return self.server_silent(id, &conn, &px, now);
        }
        self.table.touch(id, now);
        self.track_client_flags(id, flags, now);
        let Some(mac) = self.neighbour(conn.real.ip()) else {
            return Verdict::Drop(DropReason::NoNeighbour);
        };
        wire::rewrite_destination(frame, p, conn.real.ip(), conn.real.port());
        tcp::translate(frame, p, &px.inbound());
        wire::set_macs(frame, self.l2.inside_mac, mac);
        Verdict::Forward(Interface::Inside)
    }

    /// The server has not answered the director's SYN and the client sent something (a zero-window
    /// probe): past [`MIN_SYN_RESEND`] that is the patent's SYN resend, and the SYN goes again; after
    /// `syn_retries` of them the server has ditched the connection.
    fn server_silent(
        &mut self,
        id: ConnId,
        conn: &Connection,
        px: &Proxied,
        now: Duration,
    ) -> Verdict {
        if now < conn.last_seen.get() + MIN_SYN_RESEND {
            return Verdict::Drop(DropReason::AwaitingServer);
        }
        self.counters.syn_resends += 1;
        if let Some(f) = flow_mut(&mut self.flows, self.reals.len(), conn) {
            f.syn_resends += 1;
        }
        if conn.syn_resends >= self.syn_retries {
            // Kept: no other server, its own is still up; the SYN goes to it again.
            if self.ditch(id, now) == Ditch::Nowhere {
                self.close(id);
                return self.rst_to_client(conn, px);
            }
        } else {
            let c = self.table.get_mut(id);
            c.syn_resends = c.syn_resends.saturating_add(1);
            self.reask_neighbour(conn.real.ip());
        }
        self.table.touch(id, now);
        self.syn_to_server(id)
    }

    /// A server's frame on a connection the SYN proxy opened.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn proxy_outbound(
        &mut self,
        id: ConnId,
        frame: &mut [u8],
        p: &Packet,
        flags: TcpFlags,
        seq: u32,
        ack: u32,
        now: Duration,
    ) -> Verdict {
        let conn = *self.table.get(id);
        let Some(mut px) = conn.proxy else {
            return Verdict::Drop(DropReason::Ignored);
        };
        if flags.contains(TcpFlags::SYN) && flags.contains(TcpFlags::ACK) {
            if ack != px.client_isn.wrapping_add(1) {
                return Verdict::Drop(DropReason::NoConnection);
            }
            if conn.state != ConnState::SynSent {
                // Our ACK was lost and the server repeats its SYN-ACK: acknowledge it again.
                return if self.ack_to_server(&conn, &px, seq) {
                    Verdict::Reply(Interface::Inside)
                } else {
                    Verdict::Drop(DropReason::NoNeighbour)
                };
            }
            px.delta = seq.wrapping_sub(px.cookie);
            px.server_wscale = tcp::syn_options(frame, p).wscale;
            self.table.get_mut(id).proxy = Some(px);
            self.server_answered(id, now);
            self.table.set_state(id, ConnState::Established, now);
            // The SYN-ACK's window is unscaled (RFC 7323 §2.2); the client applies the announced scale.
            let window = tcp::window(frame, p).unwrap_or(0);
            let window = tcp::rescale_window(window, 0, px.announced_wscale);
            wire::rewrite_source(frame, p, conn.virtual_addr.ip(), conn.virtual_addr.port());
            tcp::synack_to_ack(frame, p, px.cookie.wrapping_add(1), window);
            wire::set_macs(frame, self.l2.outside_mac, conn.client_mac);
            return if self.ack_to_server(&conn, &px, seq) {
                Verdict::ForwardAndReply {
                    forward: Interface::Outside,
                    reply: Interface::Inside,
                }
            } else {
                Verdict::Forward(Interface::Outside)
            };
        }
        if conn.state == ConnState::SynSent {
            // The server refused the SYN: ditched, as in the unproxied path; the SYN goes to the next server.
            if flags.contains(TcpFlags::RST) {
                return match self.ditch(id, now) {
                    Ditch::Moved => {
                        self.table.touch(id, now);
                        self.syn_to_server(id)
                    }
                    Ditch::Kept | Ditch::Nowhere => {
                        self.close(id);
                        self.rst_to_client(&conn, &px)
                    }
                };
            }
            return Verdict::Drop(DropReason::NoConnection);
        }
        self.table.touch(id, now);
        self.track_server_flags(id, flags, now);
        wire::rewrite_source(frame, p, conn.virtual_addr.ip(), conn.virtual_addr.port());
        tcp::translate(frame, p, &px.outbound());
        wire::set_macs(frame, self.l2.outside_mac, conn.client_mac);
        Verdict::Forward(Interface::Outside)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    /// The octets of an IPv4 test address.
    fn v4(a: IpAddr) -> [u8; 4] {
        match a {
            IpAddr::V4(a) => a.octets(),
            IpAddr::V6(_) => panic!("an IPv4 test address"),
        }
    }
    use std::path::Path;

    use etherparse::{PacketBuilder, TcpOptionElement, TcpSlice};

    use super::*;
    use crate::binding::BindingTable;
    use crate::config::Config;
    use crate::director::Layer2;
    use crate::wire::MacAddr;

    const L2: Layer2 = Layer2 {
        outside_mac: MacAddr([2, 0, 0, 0, 0, 1]),
        inside_mac: MacAddr([2, 0, 0, 0, 0, 2]),
        inside_ip: Ipv4Addr::UNSPECIFIED,
    };
    const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
    const SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 2, 1];
    const CLIENT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)), 40000);
    const VIP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 80);
    const REAL: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 8080);

    /// The SYN proxy on, and `extra` `[director]` lines.
    fn director(extra: &str) -> Director {
        director_with(&format!("syn_proxy = true\n{extra}"))
    }

    fn director_with(extra: &str) -> Director {
        let text = format!(
            "[director]\noutside = \"o\"\ninside = \"i\"\nsyn_retries = 1\n{extra}\n\
             [[real]]\nname = \"a\"\naddress = \"10.0.0.1\"\nport = 8080\nmac = \"02:00:00:00:02:01\"\nfailure_threshold = 1\n\
             [[virtual]]\nname = \"web\"\naddress = \"192.0.2.1\"\n  [[virtual.port]]\n  port = 80\n  bind = [\"a\"]\n"
        );
        let config = Config::parse(&text, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"));
        let bindings = BindingTable::from_config(&config);
        Director::new(&config, bindings, L2)
    }

    struct Tcp<'a> {
        seq: u32,
        ack: Option<u32>,
        syn: bool,
        window: u16,
        options: &'a [TcpOptionElement],
        payload: &'a [u8],
    }

    fn frame(from: SocketAddr, to: SocketAddr, macs: ([u8; 6], [u8; 6]), t: Tcp) -> Vec<u8> {
        let mut b = PacketBuilder::ethernet2(macs.0, macs.1)
            .ipv4(v4(from.ip()), v4(to.ip()), 64)
            .tcp(from.port(), to.port(), t.seq, t.window);
        if t.syn {
            b = b.syn();
        }
        if let Some(ack) = t.ack {
            b = b.ack(ack);
        }
        let b = b.options(t.options).unwrap();
        let mut v = Vec::new();
        b.write(&mut v, t.payload).unwrap();
        v
    }

    fn from_client(t: Tcp) -> Vec<u8> {
        frame(CLIENT, VIP, (CLIENT_MAC, L2.outside_mac.0), t)
    }

    fn from_server(t: Tcp) -> Vec<u8> {
        frame(REAL, CLIENT, (SERVER_MAC, L2.inside_mac.0), t)
    }

    /// The parsed TCP header of a frame the director sent; its checksum must verify.
    fn tcp_of(frame: &[u8]) -> (SocketAddr, SocketAddr, etherparse::TcpHeader) {
        let p = wire::parse(frame).expect("a frame the director sent parses");
        assert!(wire::transport_checksum_ok(frame, &p), "checksum of {p:?}");
        let t = TcpSlice::from_slice(&frame[p.l4..p.end]).unwrap();
        let Transport::Tcp {
            src_port, dst_port, ..
        } = p.transport
        else {
            panic!("not TCP")
        };
        (
            SocketAddr::new(p.src, src_port),
            SocketAddr::new(p.dst, dst_port),
            t.to_header(),
        )
    }

    use crate::wire::Transport;

    fn options(h: &etherparse::TcpHeader) -> Vec<TcpOptionElement> {
        h.options_iterator().map(|o| o.unwrap()).collect()
    }

    /// The options `build_tcp` writes for MSS 1460, window scale `ws` and SACK, as etherparse reads them.
    fn built_options(ws: u8) -> [TcpOptionElement; 6] {
        [
            TcpOptionElement::MaximumSegmentSize(1460),
            TcpOptionElement::Noop,
            TcpOptionElement::WindowScale(ws),
            TcpOptionElement::Noop,
            TcpOptionElement::Noop,
            TcpOptionElement::SelectiveAcknowledgementPermitted,
        ]
    }

    const SYN_OPTIONS: [TcpOptionElement; 4] = [
        TcpOptionElement::MaximumSegmentSize(1460),
        TcpOptionElement::SelectiveAcknowledgementPermitted,
        TcpOptionElement::Noop,
        TcpOptionElement::WindowScale(6),
    ];

    /// Client SYN and ACK: returns the cookie, after checking the SYN-ACK and the SYN the server gets.
    fn handshake(d: &mut Director, now: Duration) -> u32 {
        let mut syn = from_client(Tcp {
            seq: 1000,
            ack: None,
            syn: true,
            window: 64240,
            options: &SYN_OPTIONS,
            payload: &[],
        });
        assert_eq!(
            d.handle(Interface::Outside, &mut syn, now),
            Verdict::Reply(Interface::Outside)
        );
        assert_eq!(d.table().len(), 0, "a SYN alone keeps no state");
        let (src, dst, synack) = tcp_of(d.reply());
        assert_eq!((src, dst), (VIP, CLIENT));
        assert!(synack.syn && synack.ack);
        assert_eq!(
            (synack.acknowledgment_number, synack.window_size),
            (1001, 0)
        );
        assert_eq!(
            options(&synack),
            built_options(7),
            "ours: the proxy's MSS and scale"
        );
        let cookie = synack.sequence_number;
        let mut ack = from_client(Tcp {
            seq: 1001,
            ack: Some(cookie.wrapping_add(1)),
            syn: false,
            window: 502,
            options: &[],
            payload: &[],
        });
        assert_eq!(
            d.handle(Interface::Outside, &mut ack, now),
            Verdict::Reply(Interface::Inside)
        );
        let (src, dst, syn) = tcp_of(d.reply());
        assert_eq!((src, dst), (CLIENT, REAL));
        assert!(syn.syn && !syn.ack);
        assert_eq!(syn.sequence_number, 1000);
        assert_eq!(options(&syn), built_options(6), "the client's, sent on");
        assert_eq!(d.table().len(), 1);
        cookie
    }

    #[test]
    /// The whole proxied life of a connection: cookie handshake, the server's handshake joined to it, and
    /// sequence numbers, SACK blocks and windows translated both ways, every checksum still valid.
    fn proxied_connection_is_translated_both_ways() {
        let mut d = director("");
        let now = Duration::from_secs(100);
        let cookie = handshake(&mut d, now);

        // The server answers with its own ISN and window scale 9.
        let mut synack = from_server(Tcp {
            seq: 5000,
            ack: Some(1001),
            syn: true,
            window: 65160,
            options: &[
                TcpOptionElement::MaximumSegmentSize(1460),
                TcpOptionElement::Noop,
                TcpOptionElement::WindowScale(9),
            ],
            payload: &[],
        });
        assert_eq!(
            d.handle(Interface::Inside, &mut synack, now),
            Verdict::ForwardAndReply {
                forward: Interface::Outside,
                reply: Interface::Inside
            }
        );
        let (src, dst, update) = tcp_of(&synack);
        assert_eq!((src, dst), (VIP, CLIENT));
        assert!(update.ack && !update.syn);
        assert_eq!(update.sequence_number, cookie.wrapping_add(1));
        assert_eq!(update.acknowledgment_number, 1001);
        assert_eq!(
            update.window_size,
            65160 >> 7,
            "unscaled SYN-ACK window, client scale 7"
        );
        let (src, dst, ack) = tcp_of(d.reply());
        assert_eq!((src, dst), (CLIENT, REAL));
        assert!(ack.ack && !ack.syn);
        assert_eq!(
            (ack.sequence_number, ack.acknowledgment_number),
            (1001, 5001)
        );
        assert_eq!(ack.window_size, 502, "both sides scale by the client's 6");

        // Server data: sequence number into the cookie's space, window from scale 9 to 7.
        let mut data = from_server(Tcp {
            seq: 5001,
            ack: Some(1001),
            syn: false,
            window: 100,
            options: &[],
            payload: b"hello",
        });
        assert_eq!(
            d.handle(Interface::Inside, &mut data, now),
            Verdict::Forward(Interface::Outside)
        );
        let (src, _, h) = tcp_of(&data);
        assert_eq!(src, VIP);
        assert_eq!(h.sequence_number, cookie.wrapping_add(1));
        assert_eq!(h.window_size, 400);

        // Client data acknowledging it, with a SACK block: both into the server's space.
        let edge = cookie.wrapping_add(50);
        let mut data = from_client(Tcp {
            seq: 1001,
            ack: Some(cookie.wrapping_add(6)),
            syn: false,
            window: 300,
            options: &[
                TcpOptionElement::Noop,
                TcpOptionElement::Noop,
                TcpOptionElement::SelectiveAcknowledgement(
                    (edge, edge.wrapping_add(10)),
                    [None, None, None],
                ),
            ],
            payload: b"GET / HTTP/1.0\r\n\r\n",
        });
        assert_eq!(
            d.handle(Interface::Outside, &mut data, now),
            Verdict::Forward(Interface::Inside)
        );
        let (_, dst, h) = tcp_of(&data);
        assert_eq!(dst, REAL);
        assert_eq!((h.sequence_number, h.acknowledgment_number), (1001, 5006));
        assert_eq!(h.window_size, 300);
        assert_eq!(
            options(&h)[2],
            TcpOptionElement::SelectiveAcknowledgement((5050, 5060), [None, None, None])
        );
        assert_eq!(d.counters().syn_cookies_accepted, 1);

        // A router on the client's side cannot pass the server's segment: its "fragmentation needed" must
        // reach the server with the server's own sequence number quoted (Linux checks it).
        let mut data = from_server(Tcp {
            seq: 5006,
            ack: Some(1019),
            syn: false,
            window: 100,
            options: &[],
            payload: &[0; 1400],
        });
        let sent = data.clone();
        d.handle(Interface::Inside, &mut data, now);
        let quoted = &data[14..14 + 40];
        let mut icmp = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, L2.outside_mac.0)
            .ipv4([198, 51, 100, 254], v4(VIP.ip()), 64)
            .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: 1280,
                },
            ))
            .write(&mut icmp, quoted)
            .unwrap();
        assert_eq!(
            d.handle(Interface::Outside, &mut icmp, now),
            Verdict::Forward(Interface::Inside)
        );
        let p = wire::parse(&icmp).unwrap();
        assert!(wire::checksum::verify(&icmp[p.l4..p.end]), "ICMP checksum");
        let inner = &icmp[p.l4 + 8..p.end];
        let quoted_tcp = TcpSlice::from_slice(&inner[20..]).unwrap();
        assert_eq!(quoted_tcp.source_port(), REAL.port());
        assert_eq!(
            quoted_tcp.sequence_number(),
            5006,
            "the server's sequence space"
        );
        // The quoted TCP checksum is the server's own again, but for the window, which stays as the client
        // saw it (100 at scale 9 is 400 at scale 7): nobody checks a quoted window.
        let server_ck = u16::from_be_bytes([sent[14 + 36], sent[14 + 37]]);
        assert_eq!(
            u16::from_be_bytes([inner[36], inner[37]]),
            wire::checksum::update(server_ck, 100, 400),
        );
    }

    #[test]
    /// An ACK that acknowledges no cookie of ours opens nothing.
    fn ack_without_valid_cookie_is_dropped() {
        let mut d = director("");
        let now = Duration::from_secs(100);
        let cookie = handshake(&mut director(""), now);
        for ack in [cookie.wrapping_add(1), 12345] {
            let mut f = from_client(Tcp {
                seq: 1001,
                ack: Some(ack),
                syn: false,
                window: 502,
                options: &[],
                payload: &[],
            });
            assert_eq!(
                d.handle(Interface::Outside, &mut f, now),
                Verdict::Drop(DropReason::BadCookie),
                "another director's cookie, or none"
            );
        }
        assert_eq!(d.table().len(), 0);
    }

    #[test]
    /// A server that never answers: the client's probes pace the SYN retransmissions; after syn_retries
    /// the connection is ditched, and with no other server the client gets an RST.
    fn silent_server_is_retried_then_ditched() {
        let mut d = director("");
        let now = Duration::from_secs(100);
        let cookie = handshake(&mut d, now);
        let probe = |d: &mut Director, at: Duration| {
            let mut f = from_client(Tcp {
                seq: 1000,
                ack: Some(cookie.wrapping_add(1)),
                syn: false,
                window: 502,
                options: &[],
                payload: &[],
            });
            d.handle(Interface::Outside, &mut f, at)
        };
        assert_eq!(
            probe(&mut d, now + Duration::from_millis(200)),
            Verdict::Drop(DropReason::AwaitingServer)
        );
        assert_eq!(
            probe(&mut d, now + Duration::from_secs(1)),
            Verdict::Reply(Interface::Inside),
            "the SYN again"
        );
        assert!(tcp_of(d.reply()).2.syn);
        assert_eq!(
            probe(&mut d, now + Duration::from_secs(3)),
            Verdict::Reply(Interface::Outside),
            "ditched, the server failed (threshold 1), nowhere else: RST"
        );
        let (_, dst, rst) = tcp_of(d.reply());
        assert_eq!(dst, CLIENT);
        assert!(rst.rst);
        assert_eq!(rst.sequence_number, cookie.wrapping_add(1));
        assert_eq!(d.table().len(), 0);
        assert_eq!(d.counters().syn_resends, 2);
        assert_eq!(d.reals()[0].ditched_total, 1);
    }

    #[test]
    /// Behind for SHED_AFTER wake-ups in a row, a wake-up opens at most new_per_wakeup connections and
    /// sheds the rest; behind for fewer (a burst), or not behind, no bound. With the SYN proxy on, cookie answers (stateless) are never shed; handshakes completing
    /// with a valid cookie are.
    fn new_connections_are_shed_when_behind() {
        let now = Duration::from_secs(100);
        let from = |port: u16, seq: u32, ack: Option<u32>| {
            frame(
                SocketAddr::new(CLIENT.ip(), port),
                VIP,
                (CLIENT_MAC, L2.outside_mac.0),
                Tcp {
                    seq,
                    ack,
                    syn: ack.is_none(),
                    window: 1000,
                    options: &[],
                    payload: &[],
                },
            )
        };
        let mut plain = director_with("new_per_wakeup = 2");
        // A burst (fewer behind wake-ups in a row than SHED_AFTER) sheds nothing.
        for _ in 1..crate::director::SHED_AFTER {
            plain.wakeup(true);
        }
        assert!((100..110).all(
            |p| plain.handle(Interface::Outside, &mut from(p, 1, None), now)
                == Verdict::Forward(Interface::Inside)
        ));
        for _ in 0..crate::director::SHED_AFTER {
            plain.wakeup(true);
        }
        let verdicts: Vec<Verdict> = (1..=3)
            .map(|p| plain.handle(Interface::Outside, &mut from(p, 1, None), now))
            .collect();
        let open = Verdict::Forward(Interface::Inside);
        assert_eq!(verdicts, [open, open, Verdict::Drop(DropReason::Shed)]);
        plain.wakeup(false);
        assert!(
            (4..100).all(|p| plain.handle(Interface::Outside, &mut from(p, 1, None), now) == open)
        );
        assert_eq!(plain.counters().dropped(DropReason::Shed), 1);

        let mut proxy = director("new_per_wakeup = 2");
        for _ in 0..crate::director::SHED_AFTER {
            proxy.wakeup(true);
        }
        let mut acks = Vec::new();
        for port in 1..=3 {
            let verdict = proxy.handle(Interface::Outside, &mut from(port, 1, None), now);
            assert_eq!(verdict, Verdict::Reply(Interface::Outside), "never shed");
            let cookie = tcp_of(proxy.reply()).2.sequence_number;
            acks.push(from(port, 2, Some(cookie.wrapping_add(1))));
        }
        let verdicts: Vec<Verdict> = acks
            .iter_mut()
            .map(|ack| proxy.handle(Interface::Outside, ack, now))
            .collect();
        let open = Verdict::Reply(Interface::Inside);
        assert_eq!(verdicts, [open, open, Verdict::Drop(DropReason::Shed)]);
    }
}
