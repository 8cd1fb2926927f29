//! Byte-level and property tests of parsing, rewriting and building, on frames built with etherparse.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use etherparse::{
    Icmpv4Type, Icmpv6Type, IpHeaders, PacketBuilder, PacketBuilderStep, SlicedPacket,
    TransportSlice,
    icmpv4::{DestUnreachableHeader, TimeExceededCode},
    icmpv6,
};
use proptest::prelude::*;

use strum::VariantArray;

use super::*;

const CLIENT_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xc1]);
const DIRECTOR_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xd1]);
const SERVER_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 0x51]);
const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10));
const REAL: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 1, 0, 21));
const ROUTER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 254));
const CLIENT6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 7));
const VIP6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 10));
const REAL6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x1, 0, 0, 0, 0, 21));
const ROUTER6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xe, 0, 0, 0, 0, 254));

// ---------------------------------------------------------------- frame makers

/// An Ethernet frame from the client's MAC to the director's with an IP header of the addresses' family.
fn ip_step(src: IpAddr, dst: IpAddr) -> PacketBuilderStep<IpHeaders> {
    let eth = PacketBuilder::ethernet2(CLIENT_MAC.0, DIRECTOR_MAC.0);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("test addresses of one family"),
    }
}

/// The octets of an IPv4 test address.
fn v4(a: impl Into<IpAddr>) -> [u8; 4] {
    match a.into() {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(_) => panic!("an IPv4 test address"),
    }
}

fn tcp_frame(
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    flags: TcpFlags,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = ip_step(src, dst).tcp(sport, dport, 1000, 64240);
    if flags.contains(TcpFlags::SYN) {
        b = b.syn();
    }
    if flags.contains(TcpFlags::FIN) {
        b = b.fin();
    }
    if flags.contains(TcpFlags::RST) {
        b = b.rst();
    }
    if flags.contains(TcpFlags::PSH) {
        b = b.psh();
    }
    if flags.contains(TcpFlags::ACK) {
        b = b.ack(5000);
    }
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

fn udp_frame(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    ip_step(src, dst)
        .udp(sport, dport)
        .write(&mut v, payload)
        .unwrap();
    v
}

fn echo_request(src: IpAddr, dst: IpAddr, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    if src.is_ipv6() {
        ip_step(src, dst)
            .icmpv6_echo_request(id, seq)
            .write(&mut v, payload)
            .unwrap();
    } else {
        ip_step(src, dst)
            .icmpv4_echo_request(id, seq)
            .write(&mut v, payload)
            .unwrap();
    }
    v
}

/// An ICMP error from `src` to `dst` quoting `quote_len` bytes (None: all) of the IP packet in `inner`.
fn icmp_error(
    src: IpAddr,
    dst: IpAddr,
    kind: Icmpv4Type,
    inner: &[u8],
    quote_len: Option<usize>,
) -> Vec<u8> {
    let mut v = Vec::new();
    ip_step(src, dst)
        .icmpv4(kind)
        .write(&mut v, quote(inner, quote_len))
        .unwrap();
    v
}

/// The first `quote_len` bytes (None: all) of the IP packet in the frame `inner`, as an ICMP error quotes it.
fn quote(inner: &[u8], quote_len: Option<usize>) -> &[u8] {
    let ip = &inner[ETHERNET_HEADER_LEN..];
    match quote_len {
        Some(n) => &ip[..n.min(ip.len())],
        None => ip,
    }
}

/// An ICMPv6 error from `src` to `dst` quoting `quote_len` bytes (None: all) of the IPv6 packet in `inner`.
fn icmpv6_error(
    src: IpAddr,
    dst: IpAddr,
    kind: Icmpv6Type,
    inner: &[u8],
    quote_len: Option<usize>,
) -> Vec<u8> {
    let mut v = Vec::new();
    ip_step(src, dst)
        .icmpv6(kind)
        .write(&mut v, quote(inner, quote_len))
        .unwrap();
    v
}

fn packet_too_big() -> Icmpv6Type {
    Icmpv6Type::PacketTooBig { mtu: 1280 }
}

fn frag_needed() -> Icmpv4Type {
    Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
        next_hop_mtu: 1400,
    })
}

/// Recomputes the IPv4 header checksum of the packet at `ip` after a test changed header bytes.
fn fix_ip_checksum(frame: &mut [u8], ip: usize) {
    let ihl = usize::from(frame[ip] & 0x0f) * 4;
    frame[ip + 10..ip + 12].copy_from_slice(&[0, 0]);
    let c = checksum::finish(checksum::data(&frame[ip..ip + ihl]));
    frame[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
}

/// Inserts IPv4 options after the fixed header of the frame's packet, fixing IHL, length and checksum.
fn with_ip_options(frame: &[u8], options: &[u8]) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let mut v = frame[..34].to_vec();
    v.extend_from_slice(options);
    v.extend_from_slice(&frame[34..]);
    v[14] = 0x40 | (5 + options.len() / 4) as u8;
    let total = u16::from_be_bytes([v[16], v[17]]) + options.len() as u16;
    v[16..18].copy_from_slice(&total.to_be_bytes());
    fix_ip_checksum(&mut v, 14);
    v
}

// ---------------------------------------------------------------- reference checks

/// The IPv4 header at `ip` verifies (RFC 1071); an IPv6 header has no checksum.
fn ip_checksum_ok(frame: &[u8], ip: usize) -> bool {
    if frame[ip] >> 4 == 6 {
        return true;
    }
    let ihl = usize::from(frame[ip] & 0x0f) * 4;
    checksum::verify(&frame[ip..ip + ihl])
}

/// The stored TCP/UDP checksum of a whole parsed frame equals etherparse's full recompute.
fn transport_checksum_matches_recompute(frame: &[u8]) -> bool {
    let sliced = SlicedPacket::from_ethernet(frame).unwrap();
    let addrs = match &sliced.net {
        Some(etherparse::NetSlice::Ipv4(ip)) => {
            Err((ip.header().source(), ip.header().destination()))
        }
        Some(etherparse::NetSlice::Ipv6(ip)) => {
            Ok((ip.header().source(), ip.header().destination()))
        }
        other => panic!("not IP: {other:?}"),
    };
    match sliced.transport {
        Some(TransportSlice::Tcp(t)) => {
            let h = t.to_header();
            let expect = match addrs {
                Err((s, d)) => h.calc_checksum_ipv4_raw(s, d, t.payload()).unwrap(),
                Ok((s, d)) => h.calc_checksum_ipv6_raw(s, d, t.payload()).unwrap(),
            };
            t.checksum() == expect
        }
        Some(TransportSlice::Udp(u)) => {
            if u.checksum() == 0 {
                return addrs.is_err();
            }
            let h = u.to_header();
            let expect = match addrs {
                Err((s, d)) => h.calc_checksum_ipv4_raw(s, d, u.payload()).unwrap(),
                Ok((s, d)) => h.calc_checksum_ipv6_raw(s, d, u.payload()).unwrap(),
            };
            u.checksum() == expect
        }
        other => panic!("not TCP/UDP: {other:?}"),
    }
}

/// The ICMP message of an (outer) ICMP packet verifies; ICMPv6's over its pseudo-header too.
fn icmp_checksum_ok(frame: &[u8], p: &Packet) -> bool {
    let message = &frame[p.l4..p.end];
    if p.src.is_ipv6() {
        segment_checksum_ok(p.src, p.dst, 58, message)
    } else {
        checksum::verify(message)
    }
}

/// A TCP/UDP/ICMPv6 segment (quoted in full or not) verifies against its pseudo-header.
fn segment_checksum_ok(src: IpAddr, dst: IpAddr, proto: u8, seg: &[u8]) -> bool {
    let ph = checksum::pseudo_header(src, dst, proto, seg.len()).unwrap();
    checksum::combine(&[ph, checksum::data(seg)]) == 0xFFFF
}

// ---------------------------------------------------------------- parse

/// A client's SYN to a VIP parses with its addresses, ports, flags, sequence numbers and offsets.
#[test]
fn parse_tcp_syn() {
    let f = tcp_frame(CLIENT, VIP, 40000, 80, TcpFlags::SYN, &[]);
    let p = parse(&f).unwrap();
    assert_eq!((p.src_mac, p.dst_mac), (CLIENT_MAC, DIRECTOR_MAC));
    assert_eq!((p.ip, p.l4, p.end), (14, 34, 54));
    assert_eq!((p.src, p.dst), (CLIENT, VIP));
    assert_eq!(
        p.transport,
        Transport::Tcp {
            src_port: 40000,
            dst_port: 80,
            flags: TcpFlags::SYN,
            seq: 1000,
            ack: 0,
            payload_len: 0
        }
    );
    assert_eq!(p.protocol(), Some(Protocol::Tcp));
    assert_eq!(p.ports(), Some((40000, 80)));
    let Transport::Tcp { flags, .. } = p.transport else {
        unreachable!()
    };
    assert!(flags.is_syn_only() && !flags.is_syn_ack() && !flags.is_rst() && !flags.is_fin());
}

/// A data segment with ACK and PSH reports its payload length.
#[test]
fn parse_tcp_data() {
    let f = tcp_frame(
        CLIENT,
        VIP,
        40000,
        80,
        TcpFlags::ACK | TcpFlags::PSH,
        b"GET / HTTP/1.0\r\n\r\n",
    );
    let p = parse(&f).unwrap();
    let Transport::Tcp {
        flags,
        ack,
        payload_len,
        ..
    } = p.transport
    else {
        panic!()
    };
    assert!(flags.contains(TcpFlags::ACK) && flags.contains(TcpFlags::PSH) && !flags.is_syn_only());
    assert_eq!((ack, payload_len), (5000, 18));
    assert_eq!(p.end, f.len());
}

/// A server's SYN-ACK is recognised as such.
#[test]
fn parse_tcp_syn_ack() {
    let f = tcp_frame(
        REAL,
        CLIENT,
        8001,
        40000,
        TcpFlags::SYN | TcpFlags::ACK,
        &[],
    );
    let Transport::Tcp { flags, .. } = parse(&f).unwrap().transport else {
        panic!()
    };
    assert!(flags.is_syn_ack() && !flags.is_syn_only());
}

/// A UDP datagram parses with its ports.
#[test]
fn parse_udp() {
    let f = udp_frame(CLIENT, VIP, 5353, 53, b"query");
    let p = parse(&f).unwrap();
    assert_eq!(
        p.transport,
        Transport::Udp {
            src_port: 5353,
            dst_port: 53
        }
    );
    assert_eq!(p.protocol(), Some(Protocol::Udp));
    assert_eq!((p.l4, p.end), (34, 34 + 8 + 5));
}

/// An echo request parses as such; ICMP has no protocol or ports for the director.
#[test]
fn parse_icmp_echo() {
    let f = echo_request(CLIENT, VIP, 7, 1, b"ping");
    let p = parse(&f).unwrap();
    assert_eq!(p.transport, Transport::Icmp(Icmp::EchoRequest));
    assert_eq!((p.protocol(), p.ports()), (None, None));
}

/// A fragmentation-needed error quoting IP header + 8 bytes of a server's TCP reply carries the quote.
#[test]
fn parse_icmp_frag_needed() {
    let inner = tcp_frame(VIP, CLIENT, 80, 40000, TcpFlags::ACK, &[0; 100]);
    let f = icmp_error(ROUTER, VIP, frag_needed(), &inner, Some(28));
    let p = parse(&f).unwrap();
    let Transport::Icmp(Icmp::Error {
        kind,
        code,
        embedded,
    }) = p.transport
    else {
        panic!("{p:?}")
    };
    assert_eq!((kind, code), (3, 4));
    assert_eq!(
        embedded,
        Embedded {
            ip: 42,
            l4: 62,
            src: VIP,
            dst: CLIENT,
            protocol: Protocol::Tcp,
            src_port: 80,
            dst_port: 40000
        }
    );
}

/// A time-exceeded error quoting a whole UDP datagram parses.
#[test]
fn parse_icmp_time_exceeded() {
    let inner = udp_frame(CLIENT, REAL, 5353, 53, b"q");
    let f = icmp_error(
        ROUTER,
        CLIENT,
        Icmpv4Type::TimeExceeded(TimeExceededCode::TtlExceededInTransit),
        &inner,
        None,
    );
    let Transport::Icmp(Icmp::Error {
        kind,
        code,
        embedded,
    }) = parse(&f).unwrap().transport
    else {
        panic!()
    };
    assert_eq!((kind, code, embedded.protocol), (11, 0, Protocol::Udp));
    assert_eq!((embedded.src_port, embedded.dst_port), (5353, 53));
}

/// An ICMP error quoting an ICMP echo is `Other`, not an error.
#[test]
fn parse_icmp_error_about_icmp() {
    let inner = echo_request(VIP, CLIENT, 1, 2, &[0; 16]);
    let f = icmp_error(ROUTER, VIP, frag_needed(), &inner, Some(28));
    assert_eq!(parse(&f).unwrap().transport, Transport::Icmp(Icmp::Other));
}

/// An echo reply (and other ICMP types) is `Other`.
#[test]
fn parse_icmp_other() {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC.0, DIRECTOR_MAC.0)
        .ipv4(v4(CLIENT), v4(VIP), 64)
        .icmpv4_echo_reply(1, 1)
        .write(&mut v, &[])
        .unwrap();
    assert_eq!(parse(&v).unwrap().transport, Transport::Icmp(Icmp::Other));
}

/// IPv4 options move the transport header; parse and rewrite follow them.
#[test]
fn parse_ip_options() {
    let plain = tcp_frame(CLIENT, VIP, 40000, 80, TcpFlags::SYN, &[]);
    // Router alert (4 bytes) + NOP + NOP + NOP + EOL.
    let mut f = with_ip_options(&plain, &[148, 4, 0, 0, 1, 1, 1, 0]);
    let p = parse(&f).unwrap();
    assert_eq!((p.l4, p.end), (42, 62));
    assert_eq!(p.ports(), Some((40000, 80)));
    rewrite_destination(&mut f, &p, REAL, 8001);
    let q = parse(&f).unwrap();
    assert_eq!((q.dst, q.ports()), (REAL, Some((40000, 8001))));
    assert!(transport_checksum_matches_recompute(&f));
}

/// Ethernet padding after a short IP packet is outside `end` and survives a rewrite untouched.
#[test]
fn parse_ethernet_padding() {
    let mut f = udp_frame(CLIENT, VIP, 5353, 53, b"x");
    let ip_end = f.len();
    f.resize(60, 0xEE);
    let p = parse(&f).unwrap();
    assert_eq!(p.end, ip_end);
    rewrite_destination(&mut f, &p, REAL, 5300);
    assert!(f[ip_end..].iter().all(|&b| b == 0xEE));
    assert!(transport_checksum_matches_recompute(&f[..ip_end]));
}

// ---------------------------------------------------------------- errors

/// Every error label is distinct snake_case, and `ALL` lists each variant once.
#[test]
fn error_labels() {
    let mut seen = std::collections::HashSet::new();
    for &e in Error::VARIANTS {
        let s = e.as_str();
        assert!(
            s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{s}"
        );
        assert!(seen.insert(s), "duplicate {s}");
    }
}

/// VLAN-tagged, ARP and other frames are neither IPv4 nor IPv6.
#[test]
fn error_not_ip() {
    let mut f = udp_frame(CLIENT, VIP, 1, 2, &[]);
    for et in [0x8100u16, ETHERTYPE_ARP, 0x88b5] {
        f[12..14].copy_from_slice(&et.to_be_bytes());
        assert_eq!(parse(&f), Err(Error::NotIp));
    }
}

/// Frames ending inside the Ethernet, IPv4 (with options), TCP, UDP or ICMP header are truncated.
#[test]
fn error_truncated() {
    let f = tcp_frame(CLIENT, VIP, 1, 2, TcpFlags::SYN, &[]);
    assert_eq!(parse(&f[..10]), Err(Error::Truncated));
    assert_eq!(parse(&f[..30]), Err(Error::Truncated));
    let opts = with_ip_options(&f, &[1, 1, 1, 0]);
    assert_eq!(parse(&opts[..36]), Err(Error::Truncated));
    for (proto, short) in [(6u8, 19u16), (17, 7), (1, 7)] {
        let mut g = f.clone();
        g[23] = proto;
        g[16..18].copy_from_slice(&(20 + short).to_be_bytes());
        fix_ip_checksum(&mut g, 14);
        assert_eq!(parse(&g), Err(Error::Truncated), "protocol {proto}");
    }
}

/// Version != 4, IHL < 5, total length below the header or beyond the frame are bad IP headers.
#[test]
fn error_bad_ip_header() {
    let f = udp_frame(CLIENT, VIP, 1, 2, &[0; 4]);
    let mut v6 = f.clone();
    v6[14] = 0x65;
    assert_eq!(parse(&v6), Err(Error::BadIpHeader));
    let mut ihl = f.clone();
    ihl[14] = 0x44;
    assert_eq!(parse(&ihl), Err(Error::BadIpHeader));
    for total in [19u16, f.len() as u16 - 14 + 1] {
        let mut g = f.clone();
        g[16..18].copy_from_slice(&total.to_be_bytes());
        fix_ip_checksum(&mut g, 14);
        assert_eq!(parse(&g), Err(Error::BadIpHeader), "total length {total}");
    }
}

/// A corrupted IPv4 header checksum is reported.
#[test]
fn error_bad_ip_checksum() {
    let mut f = udp_frame(CLIENT, VIP, 1, 2, &[]);
    f[24] ^= 0x01;
    assert_eq!(parse(&f), Err(Error::BadIpChecksum));
}

/// A first fragment (MF) and a later fragment (offset) are both fragments.
#[test]
fn error_fragment() {
    let f = udp_frame(CLIENT, VIP, 1, 2, &[]);
    for flags in [[0x20u8, 0x00], [0x00, 0x10]] {
        let mut g = f.clone();
        g[20..22].copy_from_slice(&flags);
        fix_ip_checksum(&mut g, 14);
        assert_eq!(parse(&g), Err(Error::Fragment));
    }
}

/// GRE is not a protocol the director translates.
#[test]
fn error_unsupported_protocol() {
    let mut f = udp_frame(CLIENT, VIP, 1, 2, &[]);
    f[23] = 47;
    fix_ip_checksum(&mut f, 14);
    assert_eq!(parse(&f), Err(Error::UnsupportedProtocol));
}

/// TCP data offset below 5, or pointing past the packet, is a bad TCP header.
#[test]
fn error_bad_tcp_header() {
    let f = tcp_frame(CLIENT, VIP, 1, 2, TcpFlags::SYN, &[0; 8]);
    for offset in [4u8, 15] {
        let mut g = f.clone();
        g[34 + 12] = offset << 4;
        assert_eq!(parse(&g), Err(Error::BadTcpHeader), "data offset {offset}");
    }
}

/// A UDP length below 8 or beyond the IP packet is a bad UDP header.
#[test]
fn error_bad_udp_header() {
    let f = udp_frame(CLIENT, VIP, 1, 2, &[0; 4]);
    for len in [7u16, 13] {
        let mut g = f.clone();
        g[38..40].copy_from_slice(&len.to_be_bytes());
        assert_eq!(parse(&g), Err(Error::BadUdpHeader), "length {len}");
    }
}

/// An ICMP error quoting less than an IP header + 8 bytes, or not IPv4, is bad ICMP.
#[test]
fn error_bad_icmp() {
    let inner = tcp_frame(VIP, CLIENT, 80, 40000, TcpFlags::ACK, &[]);
    let short = icmp_error(ROUTER, VIP, frag_needed(), &inner, Some(27));
    assert_eq!(parse(&short), Err(Error::BadIcmp));
    let mut not_v4 = icmp_error(ROUTER, VIP, frag_needed(), &inner, Some(28));
    not_v4[42] = 0x65;
    assert_eq!(parse(&not_v4), Err(Error::BadIcmp));
}

// ---------------------------------------------------------------- rewrites

/// Inbound NAT: VIP:80 -> real:8001, new MACs; all checksums stay valid.
#[test]
fn rewrite_destination_tcp() {
    let mut f = tcp_frame(CLIENT, VIP, 40000, 80, TcpFlags::ACK, b"hello");
    let p = parse(&f).unwrap();
    rewrite_destination(&mut f, &p, REAL, 8001);
    set_macs(&mut f, DIRECTOR_MAC, SERVER_MAC);
    let q = parse(&f).unwrap();
    assert_eq!(
        (q.src, q.dst, q.ports()),
        (CLIENT, REAL, Some((40000, 8001)))
    );
    assert_eq!((q.src_mac, q.dst_mac), (DIRECTOR_MAC, SERVER_MAC));
    assert!(ip_checksum_ok(&f, 14));
    assert!(transport_checksum_matches_recompute(&f));
}

/// Outbound NAT: real:8001 -> VIP:80 on a UDP reply.
#[test]
fn rewrite_source_udp() {
    let mut f = udp_frame(REAL, CLIENT, 8001, 40000, b"answer");
    let p = parse(&f).unwrap();
    rewrite_source(&mut f, &p, VIP, 80);
    let q = parse(&f).unwrap();
    assert_eq!((q.src, q.ports()), (VIP, Some((80, 40000))));
    assert!(ip_checksum_ok(&f, 14));
    assert!(transport_checksum_matches_recompute(&f));
}

/// A UDP checksum of zero (none) stays zero.
#[test]
fn rewrite_udp_zero_checksum() {
    let mut f = udp_frame(CLIENT, VIP, 5353, 53, b"q");
    f[40..42].copy_from_slice(&[0, 0]);
    let p = parse(&f).unwrap();
    rewrite_destination(&mut f, &p, REAL, 5300);
    assert_eq!(&f[40..42], &[0, 0]);
    assert!(ip_checksum_ok(&f, 14));
}

/// A rewrite given a `Packet` of a longer frame does not panic on a short one.
#[test]
fn rewrite_mismatched_packet_no_panic() {
    let big = tcp_frame(CLIENT, VIP, 1, 2, TcpFlags::ACK, &[0; 1400]);
    let p = parse(&big).unwrap();
    for n in 0..60 {
        let mut small = vec![0u8; n];
        rewrite_destination(&mut small, &p, REAL, 1);
        rewrite_source(&mut small, &p, REAL, 1);
        set_macs(&mut small, DIRECTOR_MAC, SERVER_MAC);
    }
    let inner = tcp_frame(VIP, CLIENT, 80, 40000, TcpFlags::ACK, &[]);
    let e = icmp_error(ROUTER, VIP, frag_needed(), &inner, None);
    let pe = parse(&e).unwrap();
    for n in 0..e.len() {
        let mut cut = e[..n].to_vec();
        rewrite_icmp_error_inbound(&mut cut, &pe, REAL, SocketAddr::new(REAL, 8001));
        rewrite_icmp_error_outbound(&mut cut, &pe, Some(VIP), SocketAddr::new(VIP, 80));
    }
}

/// Checks every checksum of a translated ICMP error: outer IP, ICMP, quoted IP, quoted transport if whole.
fn assert_icmp_error_checksums(f: &[u8]) -> (Packet, Embedded) {
    let p = parse(f).unwrap();
    let Transport::Icmp(Icmp::Error { embedded: e, .. }) = p.transport else {
        panic!("{p:?}")
    };
    assert!(ip_checksum_ok(f, p.ip), "outer IP");
    assert!(icmp_checksum_ok(f, &p), "ICMP");
    assert!(ip_checksum_ok(f, e.ip), "quoted IP");
    let quoted_total = if p.src.is_ipv6() {
        IPV6_HEADER_LEN + usize::from(u16::from_be_bytes([f[e.ip + 4], f[e.ip + 5]]))
    } else {
        usize::from(u16::from_be_bytes([f[e.ip + 2], f[e.ip + 3]]))
    };
    let udp_without_checksum = e.protocol == Protocol::Udp && f[e.l4 + 6..e.l4 + 8] == [0, 0];
    if e.ip + quoted_total == p.end && !udp_without_checksum {
        let proto = match e.protocol {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        };
        assert!(
            segment_checksum_ok(e.src, e.dst, proto, &f[e.l4..p.end]),
            "quoted transport"
        );
    }
    (p, e)
}

/// Fragmentation needed from a router about the VIP's reply reaches the real server with the quote
/// translated back to real:8001 (Path MTU discovery through the director).
#[test]
fn icmp_error_inbound_frag_needed() {
    let inner = tcp_frame(VIP, CLIENT, 80, 40000, TcpFlags::ACK, &[0; 1000]);
    for quote in [Some(28), Some(60), None] {
        let mut f = icmp_error(ROUTER, VIP, frag_needed(), &inner, quote);
        let p = parse(&f).unwrap();
        rewrite_icmp_error_inbound(&mut f, &p, REAL, SocketAddr::new(REAL, 8001));
        let (q, e) = assert_icmp_error_checksums(&f);
        assert_eq!((q.src, q.dst), (ROUTER, REAL));
        assert_eq!(
            (e.src, e.src_port, e.dst, e.dst_port),
            (REAL, 8001, CLIENT, 40000)
        );
        // The MTU stays where it was.
        assert_eq!(&f[q.l4 + 6..q.l4 + 8], &1400u16.to_be_bytes());
    }
}

/// Port unreachable from the real server about a client's UDP datagram reaches the client as from the VIP.
#[test]
fn icmp_error_outbound_from_server() {
    let inner = udp_frame(CLIENT, REAL, 5353, 5300, b"query");
    let kind = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port);
    for quote in [Some(28), None] {
        let mut f = icmp_error(REAL, CLIENT, kind.clone(), &inner, quote);
        let p = parse(&f).unwrap();
        rewrite_icmp_error_outbound(&mut f, &p, Some(VIP), SocketAddr::new(VIP, 53));
        let (q, e) = assert_icmp_error_checksums(&f);
        assert_eq!((q.src, q.dst), (VIP, CLIENT));
        assert_eq!(
            (e.src, e.src_port, e.dst, e.dst_port),
            (CLIENT, 5353, VIP, 53)
        );
    }
}

/// Time exceeded from a router on the inside keeps its own source address.
#[test]
fn icmp_error_outbound_from_router() {
    let inner = tcp_frame(CLIENT, REAL, 40000, 8001, TcpFlags::SYN, &[]);
    let kind = Icmpv4Type::TimeExceeded(TimeExceededCode::TtlExceededInTransit);
    let mut f = icmp_error(ROUTER, CLIENT, kind, &inner, None);
    let p = parse(&f).unwrap();
    rewrite_icmp_error_outbound(&mut f, &p, None, SocketAddr::new(VIP, 80));
    let (q, e) = assert_icmp_error_checksums(&f);
    assert_eq!((q.src, q.dst), (ROUTER, CLIENT));
    assert_eq!((e.dst, e.dst_port), (VIP, 80));
}

/// An ICMP error rewrite on a frame that is not an ICMP error leaves it unchanged.
#[test]
fn icmp_error_rewrite_ignores_other_packets() {
    let f = tcp_frame(CLIENT, VIP, 1, 2, TcpFlags::SYN, &[]);
    let p = parse(&f).unwrap();
    let mut g = f.clone();
    rewrite_icmp_error_inbound(&mut g, &p, REAL, SocketAddr::new(REAL, 1));
    rewrite_icmp_error_outbound(&mut g, &p, Some(VIP), SocketAddr::new(VIP, 1));
    assert_eq!(f, g);
}

// ---------------------------------------------------------------- builders

/// Parses a frame we built with etherparse and checks IP and transport checksums.
fn check_built(out: &[u8]) -> SlicedPacket<'_> {
    let sliced = SlicedPacket::from_ethernet(out).expect("etherparse parses it");
    assert!(ip_checksum_ok(out, 14));
    sliced
}

/// A SYN to an unsupported port gets RST+ACK: seq 0, ack = seq + 1, ports and addresses swapped, padded to 60.
#[test]
fn rst_for_syn() {
    let f = tcp_frame(CLIENT, VIP, 40000, 81, TcpFlags::SYN, &[]);
    let p = parse(&f).unwrap();
    let mut out = [0xAAu8; 100];
    let n = build_tcp_rst(&p, DIRECTOR_MAC, &mut out);
    assert_eq!(n, 60);
    assert!(out[54..60].iter().all(|&b| b == 0));
    let out = &out[..n];
    check_built(out);
    let r = parse(out).unwrap();
    assert_eq!(
        (r.src_mac, r.dst_mac, r.src, r.dst),
        (DIRECTOR_MAC, CLIENT_MAC, VIP, CLIENT)
    );
    assert_eq!(
        r.transport,
        Transport::Tcp {
            src_port: 81,
            dst_port: 40000,
            flags: TcpFlags::RST | TcpFlags::ACK,
            seq: 0,
            ack: 1001,
            payload_len: 0
        }
    );
    assert!(transport_checksum_matches_recompute(&out[..r.end]));
}

/// A stray data segment with ACK gets seq = its ack, ack = seq + payload (+1 for FIN).
#[test]
fn rst_for_data_and_fin() {
    let f = tcp_frame(
        CLIENT,
        VIP,
        40000,
        80,
        TcpFlags::ACK | TcpFlags::FIN,
        &[1, 2, 3],
    );
    let p = parse(&f).unwrap();
    let mut out = [0u8; 60];
    let n = build_tcp_rst(&p, DIRECTOR_MAC, &mut out);
    let Transport::Tcp {
        seq, ack, flags, ..
    } = parse(&out[..n]).unwrap().transport
    else {
        panic!()
    };
    assert_eq!(
        (seq, ack, flags),
        (5000, 1000 + 3 + 1, TcpFlags::RST | TcpFlags::ACK)
    );
}

/// Builders return 0 for a buffer too small and for the wrong kind of packet.
#[test]
fn builders_too_small_or_wrong_kind() {
    let syn = tcp_frame(CLIENT, VIP, 40000, 81, TcpFlags::SYN, &[]);
    let p = parse(&syn).unwrap();
    let mut small = [0u8; 59];
    assert_eq!(build_tcp_rst(&p, DIRECTOR_MAC, &mut small), 0);
    assert_eq!(
        build_icmp_port_unreachable(&syn, &p, DIRECTOR_MAC, &mut small[..40]),
        0
    );
    let mut out = [0u8; 200];
    assert_eq!(
        build_icmp_echo_reply(&syn, &p, DIRECTOR_MAC, &mut out),
        0,
        "not an echo request"
    );
    let udp = udp_frame(CLIENT, VIP, 1, 2, &[]);
    assert_eq!(
        build_tcp_rst(&parse(&udp).unwrap(), DIRECTOR_MAC, &mut out),
        0,
        "not TCP"
    );
}

/// A UDP datagram to an unsupported port gets port unreachable quoting its IP header and 8 bytes.
#[test]
fn icmp_port_unreachable() {
    let f = udp_frame(CLIENT, VIP, 5353, 54, b"0123456789abcdef");
    let p = parse(&f).unwrap();
    let mut out = [0u8; 200];
    let n = build_icmp_port_unreachable(&f, &p, DIRECTOR_MAC, &mut out);
    assert_eq!(n, 14 + 20 + 8 + 28);
    let out = &out[..n];
    let sliced = check_built(out);
    let Some(TransportSlice::Icmpv4(icmp)) = sliced.transport else {
        panic!()
    };
    assert_eq!(
        icmp.icmp_type(),
        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port)
    );
    let r = parse(out).unwrap();
    assert!(icmp_checksum_ok(out, &r));
    assert_eq!((r.src, r.dst, r.dst_mac), (VIP, CLIENT, CLIENT_MAC));
    let Transport::Icmp(Icmp::Error {
        kind: 3,
        code: 3,
        embedded,
    }) = r.transport
    else {
        panic!()
    };
    assert_eq!(
        (
            embedded.src,
            embedded.dst,
            embedded.src_port,
            embedded.dst_port
        ),
        (CLIENT, VIP, 5353, 54)
    );
    assert_eq!(&out[42..70], &f[14..42]);
}

/// An echo request to a VIP gets a reply with the same identifier, sequence number and data.
#[test]
fn icmp_echo_reply() {
    let f = echo_request(CLIENT, VIP, 0x1234, 7, b"abcdefgh-payload");
    let p = parse(&f).unwrap();
    let mut out = [0u8; 200];
    let n = build_icmp_echo_reply(&f, &p, DIRECTOR_MAC, &mut out);
    assert_eq!(n, MIN_FRAME_LEN, "58 bytes padded to 60");
    let out = &out[..n];
    let sliced = check_built(out);
    let Some(TransportSlice::Icmpv4(icmp)) = sliced.transport else {
        panic!()
    };
    let Icmpv4Type::EchoReply(echo) = icmp.icmp_type() else {
        panic!()
    };
    assert_eq!((echo.id, echo.seq), (0x1234, 7));
    assert_eq!(icmp.payload(), b"abcdefgh-payload");
    let r = parse(out).unwrap();
    assert!(icmp_checksum_ok(out, &r));
    assert_eq!((r.src, r.dst), (VIP, CLIENT));
}

// ---------------------------------------------------------------- properties

fn arb_addr4() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        1 => Just(Ipv4Addr::UNSPECIFIED),
        1 => Just(Ipv4Addr::BROADCAST),
        8 => any::<u32>().prop_map(Ipv4Addr::from),
    ]
    .prop_map(IpAddr::V4)
}

fn arb_addr6() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        1 => Just(Ipv6Addr::UNSPECIFIED),
        1 => Just(Ipv6Addr::from(u128::MAX)),
        8 => any::<u128>().prop_map(Ipv6Addr::from),
    ]
    .prop_map(IpAddr::V6)
}

/// An address of each family: the property tests pick the one of the frame's family.
fn arb_addr() -> impl Strategy<Value = (IpAddr, IpAddr)> {
    (arb_addr4(), arb_addr6())
}

/// Of `(v4, v6)`, the one of `like`'s family.
fn same_family(addrs: (IpAddr, IpAddr), like: IpAddr) -> IpAddr {
    if like.is_ipv6() { addrs.1 } else { addrs.0 }
}

fn arb_port() -> impl Strategy<Value = u16> {
    prop_oneof![1 => Just(0u16), 1 => Just(u16::MAX), 8 => any::<u16>()]
}

/// A random TCP or UDP frame over IPv4 (with random IP options) or IPv6.
fn arb_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        (arb_addr(), arb_addr(), any::<bool>())
            .prop_map(|(s, d, v6)| if v6 { (s.1, d.1) } else { (s.0, d.0) }),
        arb_port(),
        arb_port(),
        proptest::collection::vec(any::<u8>(), 0..80),
        0u8..3,
        any::<u8>(),
        any::<u32>(),
        proptest::option::of(prop::sample::select(vec![0u8, 4, 8, 20])),
        any::<bool>(),
    )
        .prop_map(
            |((src, dst), sp, dp, payload, kind, flags, seq, options, pad)| {
                let l4 = if src.is_ipv6() { 54 } else { 34 };
                let mut f = match kind {
                    0 => {
                        let mut v = Vec::new();
                        ip_step(src, dst)
                            .tcp(sp, dp, seq, 1024)
                            .write(&mut v, &payload)
                            .unwrap();
                        v[l4 + 13] = flags;
                        // Flags are covered by the TCP checksum: recompute it.
                        v[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
                        let seg = &v[l4..];
                        let c = checksum::finish(checksum::combine(&[
                            checksum::pseudo_header(src, dst, 6, seg.len()).unwrap(),
                            checksum::data(seg),
                        ]));
                        v[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
                        v
                    }
                    1 => udp_frame(src, dst, sp, dp, &payload),
                    // A zero UDP checksum ("none") is IPv4 only: an IPv6 one would not parse as valid.
                    _ if src.is_ipv6() => udp_frame(src, dst, sp, dp, &payload),
                    _ => {
                        let mut v = udp_frame(src, dst, sp, dp, &payload);
                        v[40..42].copy_from_slice(&[0, 0]);
                        v
                    }
                };
                if let Some(n) = options.filter(|_| src.is_ipv4()) {
                    let mut opts = vec![1u8; usize::from(n)];
                    if let Some(last) = opts.last_mut() {
                        *last = 0;
                    }
                    f = with_ip_options(&f, &opts);
                }
                if pad && f.len() < 60 {
                    f.resize(60, 0);
                }
                f
            },
        )
}

/// An ICMP error frame quoting a random TCP/UDP packet, 8 bytes or whole, as seen inbound or outbound.
fn arb_icmp_error() -> impl Strategy<Value = Vec<u8>> {
    (
        arb_frame(),
        arb_addr(),
        arb_addr(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(inner, src, dst, short, te)| {
            let p = parse(&inner).unwrap();
            let inner = &inner[..p.end];
            let quote = if short { Some(p.l4 - p.ip + 8) } else { None };
            let (src, dst) = (same_family(src, p.src), same_family(dst, p.src));
            if p.src.is_ipv6() {
                let kind = if te {
                    Icmpv6Type::TimeExceeded(icmpv6::TimeExceededCode::HopLimitExceeded)
                } else {
                    packet_too_big()
                };
                return icmpv6_error(src, dst, kind, inner, quote);
            }
            let kind = if te {
                Icmpv4Type::TimeExceeded(TimeExceededCode::TtlExceededInTransit)
            } else {
                frag_needed()
            };
            icmp_error(src, dst, kind, inner, quote)
        })
}

proptest! {
    /// Parse never panics on arbitrary bytes, IPv4 EtherType or not.
    #[test]
    fn parse_arbitrary_bytes(mut bytes in proptest::collection::vec(any::<u8>(), 0..200), ipv4 in any::<bool>()) {
        if ipv4 && bytes.len() >= 15 {
            bytes[12] = 0x08;
            bytes[13] = 0x00;
            bytes[14] = 0x45;
        }
        let _ = parse(&bytes);
        let _ = parse_arp(&bytes);
    }

    /// Parse never panics on a valid frame with random bytes corrupted or cut, and rewrites on what
    /// still parses never panic.
    #[test]
    fn parse_corrupted_frames(
        mut f in prop_oneof![arb_frame(), arb_icmp_error()],
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        for (i, b) in flips {
            let i = i.index(f.len());
            f[i] = b;
        }
        let n = cut.index(f.len() + 1);
        f.truncate(n);
        if let Ok(p) = parse(&f) {
            let (real, vip) = if p.src.is_ipv6() { (REAL6, VIP6) } else { (REAL, VIP) };
            let mut g = f.clone();
            rewrite_destination(&mut g, &p, real, 1);
            rewrite_source(&mut g, &p, vip, 2);
            rewrite_icmp_error_inbound(&mut g, &p, real, SocketAddr::new(real, 3));
            rewrite_icmp_error_outbound(&mut g, &p, Some(vip), SocketAddr::new(vip, 4));
            let _ = transport_checksum_ok(&g, &p);
        }
    }

    /// For random TCP/UDP frames and rewrites, incremental IP and transport checksums equal a full
    /// recompute, the new fields parse back, and the reverse rewrite restores the original bytes.
    #[test]
    fn rewrite_matches_recompute_and_reverses(
        f in arb_frame(),
        addr in arb_addr(),
        port in arb_port(),
        source in any::<bool>(),
    ) {
        let p = parse(&f).unwrap();
        let addr = same_family(addr, p.src);
        let mut g = f.clone();
        if source {
            rewrite_source(&mut g, &p, addr, port);
        } else {
            rewrite_destination(&mut g, &p, addr, port);
        }
        let q = parse(&g).unwrap();
        prop_assert!(ip_checksum_ok(&g, 14));
        prop_assert!(transport_checksum_matches_recompute(&g[..q.end]));
        let udp_zero = p.protocol() == Some(Protocol::Udp) && f[p.l4 + 6..p.l4 + 8] == [0, 0];
        if udp_zero {
            prop_assert_eq!(&g[q.l4 + 6..q.l4 + 8], &[0u8, 0][..]);
        }
        let (sp, dp) = p.ports().unwrap();
        if source {
            prop_assert_eq!((q.src, q.dst, q.ports()), (addr, p.dst, Some((port, dp))));
            rewrite_source(&mut g, &q, p.src, sp);
        } else {
            prop_assert_eq!((q.src, q.dst, q.ports()), (p.src, addr, Some((sp, port))));
            rewrite_destination(&mut g, &q, p.dst, dp);
        }
        prop_assert_eq!(g, f);
    }

    /// For random ICMP errors and translations, the outer IP, ICMP, quoted IP and (whole) quoted transport
    /// checksums stay valid, and translating back restores the original bytes.
    #[test]
    fn icmp_error_matches_recompute_and_reverses(
        f in arb_icmp_error(),
        addr in arb_addr(),
        to in (arb_addr(), arb_port()),
        inbound in any::<bool>(),
        from_server in any::<bool>(),
    ) {
        let p = parse(&f).unwrap();
        let Transport::Icmp(Icmp::Error { embedded: e, .. }) = p.transport else { panic!() };
        let addr = same_family(addr, p.src);
        let to = SocketAddr::new(same_family(to.0, p.src), to.1);
        let mut g = f.clone();
        if inbound {
            rewrite_icmp_error_inbound(&mut g, &p, addr, to);
        } else {
            rewrite_icmp_error_outbound(&mut g, &p, from_server.then_some(addr), to);
        }
        let (q, qe) = assert_icmp_error_checksums(&g);
        if inbound {
            prop_assert_eq!((q.src, q.dst), (p.src, addr));
            prop_assert_eq!((qe.src, qe.src_port, qe.dst, qe.dst_port), (to.ip(), to.port(), e.dst, e.dst_port));
            rewrite_icmp_error_inbound(&mut g, &q, p.dst, SocketAddr::new(e.src, e.src_port));
        } else {
            let outer_src = if from_server { addr } else { p.src };
            prop_assert_eq!((q.src, q.dst), (outer_src, p.dst));
            prop_assert_eq!((qe.src, qe.src_port, qe.dst, qe.dst_port), (e.src, e.src_port, to.ip(), to.port()));
            rewrite_icmp_error_outbound(&mut g, &q, from_server.then_some(p.src), SocketAddr::new(e.dst, e.dst_port));
        }
        prop_assert_eq!(g, f);
    }

    /// Generated RSTs parse back (ours and etherparse's) with valid checksums, for any TCP segment.
    #[test]
    fn rst_always_valid(f in arb_frame()) {
        let p = parse(&f).unwrap();
        let mut out = [0u8; 128];
        let n = build_tcp_rst(&p, DIRECTOR_MAC, &mut out);
        if p.protocol() == Some(Protocol::Tcp) {
            prop_assert_eq!(n, if p.src.is_ipv6() { 74 } else { 60 });
            let r = parse(&out[..n]).unwrap();
            prop_assert!(ip_checksum_ok(&out, 14));
            prop_assert!(transport_checksum_matches_recompute(&out[..r.end]));
            prop_assert_eq!((r.src, r.dst), (p.dst, p.src));
        } else {
            prop_assert_eq!(n, 0);
        }
    }
}

/// The incremental update hits the 0x0000 checksum edge: a rewrite whose result must be 0x0000 is 0x0000,
/// not 0xFFFF (RFC 1624 §4), checked against a recompute on a real frame.
#[test]
fn rewrite_checksum_zero_edge() {
    // Search destination ports until the recomputed TCP checksum is 0x0000, then rewrite to that port.
    let f = tcp_frame(CLIENT, VIP, 40000, 80, TcpFlags::ACK, b"edge");
    let p = parse(&f).unwrap();
    let found = (0..=u16::MAX).find(|&port| {
        let mut g = f.clone();
        g[36..38].copy_from_slice(&port.to_be_bytes());
        g[50..52].copy_from_slice(&[0, 0]);
        let seg = &g[34..];
        let ck = checksum::finish(checksum::combine(&[
            checksum::pseudo_header(CLIENT, VIP, 6, seg.len()).unwrap(),
            checksum::data(seg),
        ]));
        ck == 0
    });
    let port = found.expect("some port gives a zero checksum");
    let mut g = f.clone();
    rewrite_destination(&mut g, &p, VIP, port);
    assert_eq!(&g[50..52], &[0, 0]);
    assert!(transport_checksum_matches_recompute(&g));
}

// ---------------------------------------------------------------- full transport checksums

/// Offset of the IPv4 source address in a frame; the destination follows it.
const IP_ADDRS: usize = ETHERNET_HEADER_LEN + 12;

/// Whether `f` is a UDP frame whose checksum field is zero ("no checksum", RFC 768).
fn udp_without_checksum(f: &[u8], p: &Packet) -> bool {
    p.protocol() == Some(Protocol::Udp) && f[p.l4 + 6..p.l4 + 8] == [0, 0]
}

/// A random TCP or UDP frame that carries a transport checksum.
fn arb_checksummed_frame() -> impl Strategy<Value = Vec<u8>> {
    arb_frame().prop_filter("UDP without a checksum", |f| {
        !udp_without_checksum(f, &parse(f).unwrap())
    })
}

/// Frames etherparse built verify: a SYN, a SYN-ACK, a data segment, UDP, and a SYN with IP options.
#[test]
fn full_checksum_built_frames_verify() {
    let frames = [
        tcp_frame(CLIENT, VIP, 40000, 80, TcpFlags::SYN, &[]),
        tcp_frame(
            REAL,
            CLIENT,
            8001,
            40000,
            TcpFlags::SYN | TcpFlags::ACK,
            &[],
        ),
        tcp_frame(
            CLIENT,
            VIP,
            40000,
            80,
            TcpFlags::ACK | TcpFlags::PSH,
            b"odd",
        ),
        udp_frame(CLIENT, VIP, 5353, 53, b"query"),
        with_ip_options(
            &tcp_frame(CLIENT, VIP, 40000, 80, TcpFlags::SYN, &[]),
            &[1, 1, 1, 0],
        ),
    ];
    for f in frames {
        let p = parse(&f).unwrap();
        assert!(transport_checksum_ok(&f, &p), "{p:?}");
    }
}

/// A SYN whose TCP checksum is off by one is rejected, as the kernel rejects it (issue 12).
#[test]
fn full_checksum_bad_syn() {
    let mut f = tcp_frame(CLIENT, VIP, 40000, 80, TcpFlags::SYN, &[]);
    let ck = u16::from_be_bytes([f[50], f[51]]);
    f[50..52].copy_from_slice(&ck.wrapping_add(1).to_be_bytes());
    let p = parse(&f).unwrap();
    assert!(!transport_checksum_ok(&f, &p));
}

/// UDP with checksum 0 ("the transmitter generated no checksum", RFC 768) verifies, whatever the payload.
#[test]
fn full_checksum_udp_zero() {
    let mut f = udp_frame(CLIENT, VIP, 5353, 53, b"query");
    f[40..42].copy_from_slice(&[0, 0]);
    f[42] ^= 0xFF;
    let p = parse(&f).unwrap();
    assert!(transport_checksum_ok(&f, &p));
}

/// A checksum field holding 0xFFFF where a recompute gives 0x0000 verifies: both are zero in one's
/// complement (RFC 1624 §3), and UDP sends a computed zero as all ones (RFC 768).
#[test]
fn full_checksum_both_zeros() {
    // Search destination ports until the TCP checksum is 0x0000, as in `rewrite_checksum_zero_edge`.
    let port = (0..=u16::MAX)
        .find(|&port| {
            let f = tcp_frame(CLIENT, VIP, 40000, port, TcpFlags::SYN, b"zero");
            f[50..52] == [0, 0]
        })
        .expect("some port gives a zero checksum");
    let mut f = tcp_frame(CLIENT, VIP, 40000, port, TcpFlags::SYN, b"zero");
    let p = parse(&f).unwrap();
    assert!(transport_checksum_ok(&f, &p));
    f[50..52].copy_from_slice(&[0xFF, 0xFF]);
    assert!(transport_checksum_ok(&f, &p));
    // The same for UDP: etherparse sends the computed zero as 0xFFFF.
    let port = (0..=u16::MAX)
        .find(|&port| udp_frame(CLIENT, VIP, 5353, port, b"zero")[40..42] == [0xFF, 0xFF])
        .expect("some port gives a zero checksum");
    let f = udp_frame(CLIENT, VIP, 5353, port, b"zero");
    assert!(transport_checksum_ok(&f, &parse(&f).unwrap()));
}

/// Bytes after the UDP length but inside the IP packet are not the datagram's (RFC 768); for TCP the
/// segment is the whole IP payload, so they count.
#[test]
fn full_checksum_segment_length() {
    for f in [
        udp_frame(CLIENT, VIP, 5353, 53, b"query"),
        tcp_frame(CLIENT, VIP, 40000, 80, TcpFlags::SYN, &[]),
    ] {
        let mut g = f.clone();
        g.extend_from_slice(&[0xAB, 0xCD]);
        let total = u16::from_be_bytes([g[16], g[17]]) + 2;
        g[16..18].copy_from_slice(&total.to_be_bytes());
        fix_ip_checksum(&mut g, ETHERNET_HEADER_LEN);
        let p = parse(&g).unwrap();
        assert_eq!(p.end, g.len());
        let udp = p.protocol() == Some(Protocol::Udp);
        assert_eq!(transport_checksum_ok(&g, &p), udp, "{p:?}");
    }
}

/// An ICMP message is not checked: ICMP creates no state.
#[test]
fn full_checksum_icmp_not_checked() {
    let mut f = echo_request(CLIENT, VIP, 7, 1, b"ping");
    f[36] ^= 0xFF;
    let p = parse(&f).unwrap();
    assert!(transport_checksum_ok(&f, &p));
}

proptest! {
    /// Random valid frames verify, with or without Ethernet padding.
    #[test]
    fn full_checksum_valid_frames(f in arb_frame()) {
        let p = parse(&f).unwrap();
        prop_assert!(transport_checksum_ok(&f, &p));
    }

    /// Flipping any one bit of the TCP/UDP header or payload, or of the IPv4 source or destination (the
    /// pseudo-header; the IP header checksum is fixed so that parse accepts it), fails verification.
    ///
    /// Two flips RFC 768 lets through are checked as such: one that zeroes the UDP checksum field ("no
    /// checksum") verifies, and one that shortens the UDP length field verifies exactly when the shorter
    /// datagram's checksum does (as etherparse recomputes it; Linux checks UDP the same way).
    #[test]
    fn full_checksum_single_bit_flip_fails(
        f in arb_checksummed_frame(),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let p = parse(&f).unwrap();
        let i = at.index(8 + p.end - p.l4);
        let off = if i < 8 { IP_ADDRS + i } else { p.l4 + i - 8 };
        let mut g = f.clone();
        g[off] ^= 1 << bit;
        if i < 8 {
            fix_ip_checksum(&mut g, ETHERNET_HEADER_LEN);
        }
        // A header field turned invalid (TCP data offset, UDP length) is dropped by parse already.
        let Ok(q) = parse(&g) else { return Ok(()) };
        let ok = transport_checksum_ok(&g, &q);
        let udp = q.protocol() == Some(Protocol::Udp);
        if udp && udp_without_checksum(&g, &q) {
            prop_assert!(ok);
        } else if udp && (q.l4 + 4..q.l4 + 6).contains(&off) {
            prop_assert_eq!(ok, transport_checksum_matches_recompute(&g[..q.end]));
        } else {
            prop_assert!(!ok, "bit {} of byte {} flipped", bit, off);
        }
    }

    /// Ethernet padding after the IP packet, whatever its bytes, changes no verdict, good or bad.
    #[test]
    fn full_checksum_ignores_padding(
        f in arb_frame(),
        padding in proptest::collection::vec(any::<u8>(), 1..40),
        corrupt in any::<bool>(),
    ) {
        let p = parse(&f).unwrap();
        let mut f = f[..p.end].to_vec();
        if corrupt {
            // The last byte of the segment: payload, or the end of the TCP/UDP header.
            f[p.end - 1] ^= 0x01;
        }
        let verdict = transport_checksum_ok(&f, &p);
        prop_assert_eq!(verdict, !corrupt || udp_without_checksum(&f, &p));
        f.extend_from_slice(&padding);
        let q = parse(&f).unwrap();
        prop_assert_eq!(q.end, p.end);
        prop_assert_eq!(transport_checksum_ok(&f, &q), verdict);
    }

    /// The incremental NAT rewrites (RFC 1624) keep the full check's verdict: a valid frame still verifies
    /// after `rewrite_destination` or `rewrite_source`, a corrupted one still fails.
    #[test]
    fn full_checksum_survives_rewrite(
        f in arb_frame(),
        addr in arb_addr(),
        port in arb_port(),
        source in any::<bool>(),
        corrupt in any::<bool>(),
    ) {
        let p = parse(&f).unwrap();
        let addr = same_family(addr, p.src);
        let mut g = f.clone();
        if corrupt {
            g[p.end - 1] ^= 0x80;
        }
        let verdict = transport_checksum_ok(&g, &p);
        prop_assert_eq!(verdict, !corrupt || udp_without_checksum(&g, &p));
        if source {
            rewrite_source(&mut g, &p, addr, port);
        } else {
            rewrite_destination(&mut g, &p, addr, port);
        }
        let q = parse(&g).unwrap();
        prop_assert_eq!(transport_checksum_ok(&g, &q), verdict);
    }

    /// Never a panic: on corrupted and cut frames that still parse, and with a `Packet` whose offsets
    /// do not fit the frame at all.
    #[test]
    fn full_checksum_never_panics(
        mut f in prop_oneof![arb_frame(), arb_icmp_error()],
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        l4 in prop_oneof![any::<usize>(), 0usize..200],
        end in prop_oneof![any::<usize>(), 0usize..200],
    ) {
        let p = parse(&f).unwrap();
        for (i, b) in flips {
            let i = i.index(f.len());
            f[i] = b;
        }
        if let Ok(q) = parse(&f) {
            let _ = transport_checksum_ok(&f, &q);
        }
        f.truncate(cut.index(f.len() + 1));
        let _ = transport_checksum_ok(&f, &p);
        let _ = transport_checksum_ok(&f, &Packet { l4, end, ..p });
    }
}

// ---------------------------------------------------------------- IPv6

/// The bytes of an IPv6 frame with `ext` (raw extension headers, the first of type `first`) between the
/// fixed header and a TCP SYN from the client to the VIP.
fn ipv6_with_extensions(first: u8, ext: &[u8]) -> Vec<u8> {
    let f = tcp_frame(CLIENT6, VIP6, 40000, 80, TcpFlags::SYN, &[]);
    let mut v = f[..54].to_vec();
    v.extend_from_slice(ext);
    v.extend_from_slice(&f[54..]);
    v[20] = first;
    let len = u16::from_be_bytes([v[18], v[19]]) + ext.len() as u16;
    v[18..20].copy_from_slice(&len.to_be_bytes());
    v
}

/// A TCP SYN over IPv6 parses with its addresses, ports and offsets (no header checksum to check).
#[test]
fn parse_ipv6_tcp_syn() {
    let f = tcp_frame(CLIENT6, VIP6, 40000, 80, TcpFlags::SYN, &[]);
    let p = parse(&f).unwrap();
    assert_eq!((p.ip, p.l4, p.end), (14, 54, 74));
    assert_eq!(
        (p.src, p.dst, p.ports()),
        (CLIENT6, VIP6, Some((40000, 80)))
    );
    assert!(transport_checksum_ok(&f, &p));
}

/// Hop-by-Hop and Destination Options headers are stepped over; routing, fragment, AH and ESP headers,
/// over-long chains and truncated headers are refused by reason, never parsed as the transport header.
#[test]
fn ipv6_extension_headers() {
    // Hop-by-Hop (8 bytes, PadN) then TCP.
    let hbh = [6u8, 0, 1, 4, 0, 0, 0, 0];
    let f = ipv6_with_extensions(0, &hbh);
    let p = parse(&f).unwrap();
    assert_eq!(p.l4, 62);
    assert_eq!(p.ports(), Some((40000, 80)));
    assert!(transport_checksum_ok(&f, &p));
    // Hop-by-Hop then Destination Options (16 bytes) then TCP.
    let mut two = vec![60u8, 0, 1, 4, 0, 0, 0, 0];
    two.extend_from_slice(&[6, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(parse(&ipv6_with_extensions(0, &two)).unwrap().l4, 54 + 24);
    // Routing, AH, ESP: refused; a fragment is a fragment.
    for (kind, expect) in [
        (43u8, Error::ExtensionHeader),
        (51, Error::ExtensionHeader),
        (50, Error::ExtensionHeader),
        (44, Error::Fragment),
    ] {
        let ext = [6u8, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            parse(&ipv6_with_extensions(kind, &ext)),
            Err(expect),
            "{kind}"
        );
    }
    // Hop-by-Hop, then a fragment header.
    let mut frag = vec![44u8, 0, 1, 4, 0, 0, 0, 0];
    frag.extend_from_slice(&[6, 0, 0, 1, 0, 0, 0, 1]);
    assert_eq!(parse(&ipv6_with_extensions(0, &frag)), Err(Error::Fragment));
    // Five Destination Options headers in a row: longer than the director steps over.
    let mut chain = Vec::new();
    for i in 0..5 {
        chain.extend_from_slice(&[if i < 4 { 60 } else { 6 }, 0, 1, 4, 0, 0, 0, 0]);
    }
    assert_eq!(
        parse(&ipv6_with_extensions(60, &chain)),
        Err(Error::ExtensionHeader)
    );
    // A Hop-by-Hop header whose length runs past the packet.
    let long = [6u8, 200, 1, 4, 0, 0, 0, 0];
    assert_eq!(
        parse(&ipv6_with_extensions(0, &long)),
        Err(Error::Truncated)
    );
}

/// A payload length beyond the frame, or zero (a jumbogram), and a version other than 6 are bad headers;
/// a cut header is truncated.
#[test]
fn ipv6_bad_headers() {
    let f = tcp_frame(CLIENT6, VIP6, 40000, 80, TcpFlags::SYN, &[]);
    let mut g = f.clone();
    g[18..20].copy_from_slice(&100u16.to_be_bytes());
    assert_eq!(parse(&g), Err(Error::BadIpHeader));
    let mut g = f.clone();
    g[18..20].copy_from_slice(&[0, 0]);
    assert_eq!(parse(&g), Err(Error::BadIpHeader));
    let mut g = f.clone();
    g[14] = 0x40;
    assert_eq!(parse(&g), Err(Error::BadIpHeader));
    assert_eq!(parse(&f[..40]), Err(Error::Truncated));
}

/// RFC 8200 §8.1: a zero UDP checksum is no checksum over IPv4 but invalid over IPv6.
#[test]
fn ipv6_udp_zero_checksum_is_invalid() {
    let mut f = udp_frame(CLIENT6, VIP6, 5353, 53, b"query");
    let p = parse(&f).unwrap();
    assert!(transport_checksum_ok(&f, &p));
    f[60..62].copy_from_slice(&[0, 0]);
    assert!(!transport_checksum_ok(&f, &p));
}

/// An IPv6 rewrite changes 16-byte addresses and the port, and the TCP checksum (over the pseudo-header)
/// equals a full recompute; there is no IP header checksum to touch.
#[test]
fn ipv6_rewrite_destination_and_source() {
    let mut f = tcp_frame(
        CLIENT6,
        VIP6,
        40000,
        80,
        TcpFlags::ACK,
        b"GET / HTTP/1.1\r\n\r\n",
    );
    let p = parse(&f).unwrap();
    rewrite_destination(&mut f, &p, REAL6, 8001);
    let q = parse(&f).unwrap();
    assert_eq!((q.dst, q.ports()), (REAL6, Some((40000, 8001))));
    assert!(transport_checksum_matches_recompute(&f));
    rewrite_source(&mut f, &q, VIP6, 81);
    assert_eq!(parse(&f).unwrap().src, VIP6);
    assert!(transport_checksum_matches_recompute(&f));
    // An address of the other family changes nothing.
    let before = f.clone();
    rewrite_destination(&mut f, &q, REAL, 1);
    assert_eq!(f, before);
}

/// Packet too big from a router about the VIP's reply reaches the real server with the quote translated
/// back to real:8001, and every checksum (ICMPv6 over its pseudo-header, the quoted TCP) stays valid; the
/// real server's own error to the client leaves as the VIP. Path MTU discovery through the director.
#[test]
fn icmpv6_packet_too_big_both_ways() {
    let inner = tcp_frame(VIP6, CLIENT6, 80, 40000, TcpFlags::ACK, &[7; 1200]);
    for quote in [Some(48), Some(200), None] {
        let mut f = icmpv6_error(ROUTER6, VIP6, packet_too_big(), &inner, quote);
        let p = parse(&f).unwrap();
        let Transport::Icmp(Icmp::Error { kind, .. }) = p.transport else {
            panic!("{p:?}")
        };
        assert_eq!(kind, 2);
        rewrite_icmp_error_inbound(&mut f, &p, REAL6, SocketAddr::new(REAL6, 8001));
        let (q, e) = assert_icmp_error_checksums(&f);
        assert_eq!((q.src, q.dst), (ROUTER6, REAL6));
        assert_eq!(
            (e.src, e.src_port, e.dst, e.dst_port),
            (REAL6, 8001, CLIENT6, 40000)
        );
    }
    let inner = tcp_frame(CLIENT6, REAL6, 40000, 8001, TcpFlags::ACK, &[1; 100]);
    let mut f = icmpv6_error(REAL6, CLIENT6, packet_too_big(), &inner, None);
    let p = parse(&f).unwrap();
    rewrite_icmp_error_outbound(&mut f, &p, Some(VIP6), SocketAddr::new(VIP6, 80));
    let (q, e) = assert_icmp_error_checksums(&f);
    assert_eq!((q.src, q.dst), (VIP6, CLIENT6));
    assert_eq!((e.dst, e.dst_port), (VIP6, 80));
}

/// The frames the director answers IPv6 clients with: RST, port unreachable (quoting at most 1280 bytes
/// in all), echo reply; each parses back with valid checksums.
#[test]
fn ipv6_generated_frames() {
    let mut out = [0u8; 2048];
    let syn = tcp_frame(CLIENT6, VIP6, 40000, 81, TcpFlags::SYN, &[]);
    let n = build_tcp_rst(&parse(&syn).unwrap(), DIRECTOR_MAC, &mut out);
    let r = parse(&out[..n]).unwrap();
    assert_eq!(
        (r.src, r.dst, r.ports()),
        (VIP6, CLIENT6, Some((81, 40000)))
    );
    assert!(transport_checksum_matches_recompute(&out[..n]));

    let big = udp_frame(CLIENT6, VIP6, 5353, 53, &[9; 1400]);
    let n = build_icmp_port_unreachable(&big, &parse(&big).unwrap(), DIRECTOR_MAC, &mut out);
    assert_eq!(n, ETHERNET_HEADER_LEN + 1280);
    let u = parse(&out[..n]).unwrap();
    assert!(icmp_checksum_ok(&out, &u));
    let Transport::Icmp(Icmp::Error {
        kind,
        code,
        embedded,
    }) = u.transport
    else {
        panic!("{u:?}")
    };
    assert_eq!((kind, code, embedded.dst_port), (1, 4, 53));

    let ping = echo_request(CLIENT6, VIP6, 0x1234, 7, b"ping6");
    let n = build_icmp_echo_reply(&ping, &parse(&ping).unwrap(), DIRECTOR_MAC, &mut out);
    let e = parse(&out[..n]).unwrap();
    assert_eq!((e.src, e.dst), (VIP6, CLIENT6));
    assert!(icmp_checksum_ok(&out, &e));
    assert_eq!(&out[e.l4..e.l4 + 2], &[129, 0]);
}

/// The addresses neighbour discovery is built on, against RFC 4291's and RFC 2464's worked forms.
#[test]
fn ndp_addresses() {
    let a: Ipv6Addr = "2001:db8::12:3456".parse().unwrap();
    assert_eq!(
        ndp::solicited_node(a),
        "ff02::1:ff12:3456".parse::<Ipv6Addr>().unwrap()
    );
    assert_eq!(
        ndp::multicast_mac(ndp::solicited_node(a)),
        MacAddr([0x33, 0x33, 0xff, 0x12, 0x34, 0x56])
    );
    assert_eq!(
        ndp::link_local(MacAddr([0x00, 0x1b, 0x21, 0x3a, 0x4b, 0x5c])),
        "fe80::21b:21ff:fe3a:4b5c".parse::<Ipv6Addr>().unwrap()
    );
}

/// Solicitations and advertisements we build parse back as valid (hop limit 255, checksum, options);
/// one forwarded by a router (hop limit 254), with a bad checksum, a multicast target or a zero-length
/// option is refused as `bad_icmp`.
#[test]
fn ndp_frames_and_validity() {
    let IpAddr::V6(real6) = REAL6 else { panic!() };
    let IpAddr::V6(vip6) = VIP6 else { panic!() };
    let ll = ndp::link_local(DIRECTOR_MAC);
    let mut out = [0u8; 128];
    let n = build_neighbour_solicitation(DIRECTOR_MAC, ll, real6, &mut out);
    let ns = out[..n].to_vec();
    let p = parse(&ns).unwrap();
    assert_eq!(p.dst, IpAddr::V6(ndp::solicited_node(real6)));
    assert_eq!(p.dst_mac, ndp::multicast_mac(ndp::solicited_node(real6)));
    assert_eq!(
        p.transport,
        Transport::Icmp(Icmp::NeighbourSolicitation {
            target: real6,
            mac: Some(DIRECTOR_MAC)
        })
    );

    // The answer for a VIP, to the solicitor, and the unsolicited announcement to all nodes.
    let n = build_neighbour_advertisement(DIRECTOR_MAC, vip6, Some((ll, CLIENT_MAC)), &mut out);
    let na = parse(&out[..n]).unwrap();
    assert_eq!(
        (na.src, na.dst, na.dst_mac),
        (VIP6, IpAddr::V6(ll), CLIENT_MAC)
    );
    assert_eq!(out[na.l4 + 4], 0x60, "solicited and override");
    assert_eq!(
        na.transport,
        Transport::Icmp(Icmp::NeighbourAdvertisement {
            target: vip6,
            mac: Some(DIRECTOR_MAC)
        })
    );
    let n = build_neighbour_advertisement(DIRECTOR_MAC, vip6, None, &mut out);
    let una = parse(&out[..n]).unwrap();
    assert_eq!(una.dst, "ff02::1".parse::<IpAddr>().unwrap());
    assert_eq!(out[una.l4 + 4], 0x20, "override only");

    let bad = |f: Vec<u8>| assert_eq!(parse(&f), Err(Error::BadIcmp));
    let mut forwarded = ns.clone();
    forwarded[21] = 254;
    bad(forwarded);
    let mut corrupt = ns.clone();
    corrupt[p.l4 + 10] ^= 1;
    bad(corrupt);
    let mut zero_option = ns.clone();
    zero_option[p.l4 + 25] = 0;
    bad(zero_option);
    // A multicast target, with the checksum made right: refused for the target, not the checksum.
    let mut multicast = ns.clone();
    multicast[p.l4 + 8] = 0xff;
    multicast[p.l4 + 2..p.l4 + 4].copy_from_slice(&[0, 0]);
    let ph = checksum::pseudo_header(p.src, p.dst, 58, p.end - p.l4).unwrap();
    let c = checksum::finish(checksum::combine(&[
        ph,
        checksum::data(&multicast[p.l4..p.end]),
    ]));
    multicast[p.l4 + 2..p.l4 + 4].copy_from_slice(&c.to_be_bytes());
    bad(multicast);
}
