//! Writes the replay fixtures in tests/fixtures/: for each scenario, the frames that arrive on the outside
//! (`NAME.outside.pcap`) and on the inside (`NAME.inside.pcap`) of the director.
//!
//! Run: `cargo run -p vipd --example make_fixtures -- tests/fixtures`. Deterministic: the same bytes every run.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use etherparse::{Ethernet2Header, Icmpv6Type, IpHeaders, PacketBuilder, PacketBuilderStep};
use pcap::{Capture, Linktype, Packet, PacketHeader};

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
const OUTSIDE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const INSIDE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const HOST_A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x0a];
const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2));
const HOST_A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 20, 0, 10));
const CLIENT6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 2));
/// host-a6: host-a's IPv6 address (same MAC).
const HOST_A6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x1, 0, 0, 0, 0, 0x10));
/// IPv6 next-header values of the extension headers the `ipv6` scenario sends (RFC 8200 §4).
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;

#[derive(Clone, Copy)]
enum Side {
    Outside,
    Inside,
}

#[derive(Default)]
struct Scenario {
    frames: Vec<(u64, Side, Vec<u8>)>,
}

#[derive(Clone, Copy, Default)]
struct Flags {
    syn: bool,
    ack: bool,
    fin: bool,
    rst: bool,
}

const SYN: Flags = Flags {
    syn: true,
    ack: false,
    fin: false,
    rst: false,
};
const SYN_ACK: Flags = Flags {
    syn: true,
    ack: true,
    fin: false,
    rst: false,
};
const ACK: Flags = Flags {
    syn: false,
    ack: true,
    fin: false,
    rst: false,
};
const FIN_ACK: Flags = Flags {
    syn: false,
    ack: true,
    fin: true,
    rst: false,
};

impl Scenario {
    fn push(&mut self, ms: u64, side: Side, frame: Vec<u8>) {
        self.frames.push((ms, side, frame));
    }

    /// A TCP segment from a client (outside) or a server (inside).
    #[allow(clippy::too_many_arguments)]
    fn tcp(
        &mut self,
        ms: u64,
        side: Side,
        src: (IpAddr, u16),
        dst: (IpAddr, u16),
        flags: Flags,
        seq: u32,
        ack: u32,
        payload: &[u8],
    ) {
        let (smac, dmac) = match side {
            Side::Outside => (CLIENT_MAC, OUTSIDE_MAC),
            Side::Inside => (HOST_A_MAC, INSIDE_MAC),
        };
        let mut b =
            ip(PacketBuilder::ethernet2(smac, dmac), src.0, dst.0).tcp(src.1, dst.1, seq, 64240);
        if flags.syn {
            b = b.syn();
        }
        if flags.ack {
            b = b.ack(ack);
        }
        if flags.fin {
            b = b.fin();
        }
        if flags.rst {
            b = b.rst();
        }
        let mut v = Vec::new();
        b.write(&mut v, payload).expect("build tcp");
        self.push(ms, side, v);
    }

    fn udp(&mut self, ms: u64, src: (IpAddr, u16), dst: (IpAddr, u16), payload: &[u8]) {
        let mut v = Vec::new();
        ip(
            PacketBuilder::ethernet2(CLIENT_MAC, OUTSIDE_MAC),
            src.0,
            dst.0,
        )
        .udp(src.1, dst.1)
        .write(&mut v, payload)
        .expect("build udp");
        self.push(ms, Side::Outside, v);
    }

    /// A whole HTTP/1.0 exchange between a client and a virtual port, answered by `real`.
    fn exchange(
        &mut self,
        start: u64,
        c: (IpAddr, u16),
        vip: (IpAddr, u16),
        real: (IpAddr, u16),
        body: &[u8],
    ) {
        let o = Side::Outside;
        let i = Side::Inside;
        let req = b"GET / HTTP/1.0\r\n\r\n";
        let (cs, ss) = (1000u32, 5000u32);
        self.tcp(start, o, c, vip, SYN, cs, 0, &[]);
        self.tcp(start + 1, i, real, c, SYN_ACK, ss, cs + 1, &[]);
        self.tcp(start + 2, o, c, vip, ACK, cs + 1, ss + 1, req);
        self.tcp(
            start + 3,
            i,
            real,
            c,
            FIN_ACK,
            ss + 1,
            cs + 1 + req.len() as u32,
            body,
        );
        let sfin = ss + 2 + body.len() as u32;
        self.tcp(
            start + 4,
            o,
            c,
            vip,
            FIN_ACK,
            cs + 1 + req.len() as u32,
            sfin,
            &[],
        );
        self.tcp(
            start + 5,
            i,
            real,
            c,
            ACK,
            sfin,
            cs + 2 + req.len() as u32,
            &[],
        );
    }

    fn write(mut self, dir: &Path, name: &str) {
        self.frames.sort_by_key(|f| f.0);
        for (side, suffix) in [(0, "outside"), (1, "inside")] {
            let path: PathBuf = dir.join(format!("{name}.{suffix}.pcap"));
            let mut out = Capture::dead(Linktype::ETHERNET)
                .unwrap()
                .savefile(&path)
                .unwrap();
            for (ms, s, frame) in &self.frames {
                if (*s as usize) != side {
                    continue;
                }
                let ts = libc::timeval {
                    tv_sec: (ms / 1000) as _,
                    tv_usec: ((ms % 1000) * 1000) as _,
                };
                let h = PacketHeader {
                    ts,
                    caplen: frame.len() as u32,
                    len: frame.len() as u32,
                };
                out.write(&Packet::new(&h, frame));
            }
            out.flush().unwrap();
        }
    }
}

/// The IP header of either family (TTL or hop limit 64) after an Ethernet header.
fn ip(
    eth: PacketBuilderStep<Ethernet2Header>,
    src: IpAddr,
    dst: IpAddr,
) -> PacketBuilderStep<IpHeaders> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("{src} > {dst}: one frame, one family"),
    }
}

fn vip(n: u8) -> IpAddr {
    Ipv4Addr::new(192, 0, 2, n).into()
}

fn vip6(n: u16) -> IpAddr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, n).into()
}

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "tests/fixtures".into()),
    );
    std::fs::create_dir_all(&dir).unwrap();

    // The patent's example: three sites on port 80, one host serving them on 8001, 8002, 8003.
    let mut s = Scenario::default();
    for n in 1..=3u8 {
        let body = format!("site{n}\n");
        s.exchange(
            u64::from(n) * 100,
            (CLIENT, 40000 + u16::from(n)),
            (vip(n), 80),
            (HOST_A, 8000 + u16::from(n)),
            body.as_bytes(),
        );
    }
    s.write(&dir, "patent");

    // A SYN resent after a second: same connection, same server; then the handshake completes.
    let mut s = Scenario::default();
    let c = (CLIENT, 40100);
    s.tcp(0, Side::Outside, c, (vip(1), 80), SYN, 7000, 0, &[]);
    s.tcp(1000, Side::Outside, c, (vip(1), 80), SYN, 7000, 0, &[]);
    s.tcp(
        1001,
        Side::Inside,
        (HOST_A, 8001),
        c,
        SYN_ACK,
        9000,
        7001,
        &[],
    );
    s.tcp(1002, Side::Outside, c, (vip(1), 80), ACK, 7001, 9001, &[]);
    s.write(&dir, "syn-resend");

    // Unsupported ports: a TCP SYN gets an RST, a UDP datagram an ICMP port unreachable.
    let mut s = Scenario::default();
    s.tcp(
        0,
        Side::Outside,
        (CLIENT, 40200),
        (vip(1), 81),
        SYN,
        1234,
        0,
        &[],
    );
    s.udp(1, (CLIENT, 40201), (vip(1), 5353), b"query");
    s.write(&dir, "unsupported-port");

    // Stray and malformed frames, then one good SYN with IP options to show the director still serves.
    let mut s = Scenario::default();
    let o = Side::Outside;
    s.tcp(0, o, (CLIENT, 40300), (vip(1), 80), ACK, 1, 1, b"stray");
    s.tcp(
        1,
        o,
        (CLIENT, 40301),
        (Ipv4Addr::new(203, 0, 113, 9).into(), 80),
        SYN,
        1,
        0,
        &[],
    );
    let mut good = Vec::new();
    ip(
        PacketBuilder::ethernet2(CLIENT_MAC, OUTSIDE_MAC),
        CLIENT,
        vip(1),
    )
    .tcp(40302, 80, 1, 64240)
    .syn()
    .write(&mut good, &[])
    .unwrap();
    s.push(2, o, good[..30].to_vec()); // truncated inside the IPv4 header
    let mut frag = good.clone();
    frag[14 + 6] = 0x20; // more fragments
    fix_ip_checksum(&mut frag);
    s.push(3, o, frag);
    let mut badlen = good.clone();
    badlen[14 + 2] = 0x05; // total length 0x05xx: longer than the frame
    fix_ip_checksum(&mut badlen);
    s.push(4, o, badlen);
    let mut lldp = good.clone();
    lldp[12] = 0x88;
    lldp[13] = 0xcc;
    s.push(5, o, lldp);
    s.push(
        6,
        o,
        (0..60u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect(),
    );
    s.push(7, o, with_ip_options(&good));
    s.write(&dir, "stray");

    // The three binding modes of FIG. 4A; one SYN to each virtual port.
    let mut s = Scenario::default();
    let targets = [
        (10u8, 80u16),
        (10, 443),
        (11, 80),
        (11, 443),
        (12, 80),
        (12, 443),
    ];
    for (port, (n, vport)) in (40400u16..).zip(targets) {
        let ms = u64::from(port - 40400);
        s.tcp(
            ms,
            Side::Outside,
            (CLIENT, port),
            (vip(n), vport),
            SYN,
            1,
            0,
            &[],
        );
    }
    s.write(&dir, "binding-modes");

    // Idle timeouts (syn 2s, established 5s): a handshake that never completes, and an idle connection.
    let mut s = Scenario::default();
    let (a, b) = ((CLIENT, 40500), (CLIENT, 40501));
    s.tcp(0, Side::Outside, a, (vip(1), 80), SYN, 1, 0, &[]);
    s.tcp(3000, Side::Outside, a, (vip(1), 80), ACK, 2, 1, &[]);
    s.tcp(3100, Side::Outside, b, (vip(1), 80), SYN, 1, 0, &[]);
    s.tcp(3101, Side::Inside, (HOST_A, 8001), b, SYN_ACK, 1, 2, &[]);
    s.tcp(3102, Side::Outside, b, (vip(1), 80), ACK, 2, 2, &[]);
    s.tcp(
        7000,
        Side::Outside,
        b,
        (vip(1), 80),
        ACK,
        2,
        2,
        b"still here",
    );
    s.tcp(
        13000,
        Side::Outside,
        b,
        (vip(1), 80),
        ACK,
        12,
        2,
        b"too late",
    );
    s.write(&dir, "timeouts");

    // A table of two: a third half-open connection evicts the oldest; with both established (SYN-ACK and the
    // client's ACK), a new SYN is refused.
    let mut s = Scenario::default();
    let cl = |p: u16| (CLIENT, p);
    s.tcp(0, Side::Outside, cl(40600), (vip(1), 80), SYN, 1, 0, &[]);
    s.tcp(1, Side::Outside, cl(40601), (vip(1), 80), SYN, 1, 0, &[]);
    s.tcp(2, Side::Outside, cl(40602), (vip(1), 80), SYN, 1, 0, &[]);
    s.tcp(3, Side::Outside, cl(40600), (vip(1), 80), ACK, 2, 1, &[]);
    s.tcp(
        4,
        Side::Inside,
        (HOST_A, 8001),
        cl(40601),
        SYN_ACK,
        1,
        2,
        &[],
    );
    s.tcp(
        5,
        Side::Inside,
        (HOST_A, 8001),
        cl(40602),
        SYN_ACK,
        1,
        2,
        &[],
    );
    // The clients acknowledge the SYN-ACKs: established (until then they are half-open too).
    s.tcp(6, Side::Outside, cl(40601), (vip(1), 80), ACK, 2, 2, &[]);
    s.tcp(7, Side::Outside, cl(40602), (vip(1), 80), ACK, 2, 2, &[]);
    s.tcp(8, Side::Outside, cl(40603), (vip(1), 80), SYN, 1, 0, &[]);
    s.write(&dir, "table-full");

    // IPv6 (ipv6.toml): the patent's exchanges with two virtual machines, the refusals, neighbour discovery,
    // a ping, and frames the director must not parse past.
    let mut s = Scenario::default();
    for n in 1..=2u16 {
        let body = format!("site{n}\n");
        s.exchange(
            u64::from(n) * 100,
            (CLIENT6, 40000 + n),
            (vip6(n), 80),
            (HOST_A6, 8000 + n),
            body.as_bytes(),
        );
    }
    let o = Side::Outside;
    s.tcp(300, o, (CLIENT6, 40200), (vip6(1), 81), SYN, 1234, 0, &[]);
    s.udp(301, (CLIENT6, 40201), (vip6(1), 5353), b"query");
    s.push(400, o, neighbour_solicitation(CLIENT6, vip6(1)));
    let mut ping = Vec::new();
    ip(
        PacketBuilder::ethernet2(CLIENT_MAC, OUTSIDE_MAC),
        CLIENT6,
        vip6(1),
    )
    .icmpv6_echo_request(1, 1)
    .write(&mut ping, b"ping")
    .unwrap();
    s.push(401, o, ping);
    let mut syn = Vec::new();
    ip(
        PacketBuilder::ethernet2(CLIENT_MAC, OUTSIDE_MAC),
        CLIENT6,
        vip6(1),
    )
    .tcp(40300, 80, 1, 64240)
    .syn()
    .write(&mut syn, &[])
    .unwrap();
    // Type 0 routing, no segments left: the destination stays; the director still must not step over it.
    s.push(500, o, with_ipv6_extension(&syn, IPV6_ROUTING, [0; 6]));
    // The first fragment (offset 0, more fragments) of a datagram, identification 1.
    s.push(
        501,
        o,
        with_ipv6_extension(&syn, IPV6_FRAGMENT, [0, 1, 0, 0, 0, 1]),
    );
    s.tcp(502, o, (CLIENT6, 40301), (vip6(1), 80), ACK, 1, 1, b"stray");
    s.write(&dir, "ipv6");
}

fn fix_ip_checksum(frame: &mut [u8]) {
    let ip = &mut frame[14..34];
    ip[10] = 0;
    ip[11] = 0;
    let mut sum = 0u32;
    for pair in ip.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let c = !(sum as u16);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
}

/// The same SYN with 4 bytes of IP options (NOP NOP NOP EOL): IHL 6.
fn with_ip_options(frame: &[u8]) -> Vec<u8> {
    let mut v = frame[..34].to_vec();
    v.extend_from_slice(&[1, 1, 1, 0]);
    v.extend_from_slice(&frame[34..]);
    v[14] = 0x46;
    let total = u16::from_be_bytes([v[16], v[17]]) + 4;
    v[16..18].copy_from_slice(&total.to_be_bytes());
    let mut hdr = v[14..38].to_vec();
    hdr[10] = 0;
    hdr[11] = 0;
    let mut sum = 0u32;
    for pair in hdr.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    v[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    v
}

/// A neighbour solicitation from the client for `target`, to its solicited-node multicast address (RFC 4861
/// §7.2.2: hop limit 255, the client's link-layer address as an option).
fn neighbour_solicitation(src: IpAddr, target: IpAddr) -> Vec<u8> {
    let (IpAddr::V6(src), IpAddr::V6(target)) = (src, target) else {
        panic!("neighbour discovery is IPv6");
    };
    let t = target.octets();
    let dst = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(t[13]),
        u16::from_be_bytes([t[14], t[15]]),
    );
    let d = dst.octets();
    let mut body = t.to_vec();
    body.extend_from_slice(&[1, 1]); // source link-layer address, 8 bytes
    body.extend_from_slice(&CLIENT_MAC);
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, [0x33, 0x33, d[12], d[13], d[14], d[15]])
        .ipv6(src.octets(), d, 255)
        .icmpv6(Icmpv6Type::NeighborSolicitation)
        .write(&mut v, &body)
        .unwrap();
    v
}

/// The same IPv6 frame with an 8-byte extension header of type `kind` (its last six bytes `rest`) between
/// the IPv6 header and the transport header.
fn with_ipv6_extension(frame: &[u8], kind: u8, rest: [u8; 6]) -> Vec<u8> {
    let (eth, ip) = (14, 14 + 40);
    let mut v = frame[..ip].to_vec();
    v.extend_from_slice(&[frame[eth + 6], 0]); // next header: the transport; length: 8 bytes
    v.extend_from_slice(&rest);
    v.extend_from_slice(&frame[ip..]);
    v[eth + 6] = kind;
    let len = u16::from_be_bytes([v[eth + 4], v[eth + 5]]) + 8;
    v[eth + 4..eth + 6].copy_from_slice(&len.to_be_bytes());
    v
}
