//! Builders for the frames the director sends itself, of the family of the packet they answer: TCP RST,
//! ICMP or ICMPv6 port unreachable, ICMP or ICMPv6 echo reply.
//!
//! Written with etherparse's `PacketBuilder` straight into the caller's buffer (no allocation); each returns
//! the frame length, or 0 when `out` cannot hold it (or the minimum frame) or `p` is not the right kind.

use std::net::IpAddr;

use etherparse::{
    Ethernet2Header, Icmpv4Type, Icmpv6Type, IpHeaders, PacketBuilder, PacketBuilderStep,
    icmpv4::DestUnreachableHeader, icmpv6::DestUnreachableCode,
};

use super::{
    ICMP_HEADER_LEN, ICMP_QUOTED_DATA_LEN, IPV6_HEADER_LEN, Icmp, MIN_FRAME_LEN, MacAddr, Packet,
    TcpFlags, Transport, be16,
};

/// TTL (IPv4) and hop limit (IPv6) of generated packets.
pub(crate) const TTL: u8 = 64;
/// RFC 4443 §2.4(c): an ICMPv6 error carries "as much of invoking packet as possible without the ICMPv6
/// packet exceeding the minimum IPv6 MTU" (1280 bytes, RFC 8200 §5).
const ICMPV6_ERROR_MAX: usize = 1280;

/// An Ethernet frame from `src_mac` to `dst_mac` with an IP header from `src` to `dst` of their family;
/// `None` when the two are of different families.
pub(crate) fn ip_frame(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: IpAddr,
    dst: IpAddr,
    hop_limit: u8,
) -> Option<PacketBuilderStep<IpHeaders>> {
    let eth: PacketBuilderStep<Ethernet2Header> = PacketBuilder::ethernet2(src_mac.0, dst_mac.0);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Some(eth.ipv4(s.octets(), d.octets(), hop_limit)),
        (IpAddr::V6(s), IpAddr::V6(d)) => Some(eth.ipv6(s.octets(), d.octets(), hop_limit)),
        _ => None,
    }
}

/// Zero-pads a frame of `len` bytes in `out` to the Ethernet minimum; 0 if `out` is too small.
pub(crate) fn pad(out: &mut [u8], len: usize) -> usize {
    if len >= MIN_FRAME_LEN {
        return len;
    }
    match out.get_mut(len..MIN_FRAME_LEN) {
        Some(tail) => {
            tail.fill(0);
            MIN_FRAME_LEN
        }
        None => 0,
    }
}

/// A RST+ACK answering the TCP segment `p` (RFC 793 "Reset Generation"): from `p.dst:dport` to
/// `p.src:sport`, seq = `p.ack` if ACK was set else 0, ack = `p.seq` + the segment's length (payload, plus
/// one each for SYN and FIN).
pub fn build_tcp_rst(p: &Packet, our_mac: MacAddr, out: &mut [u8]) -> usize {
    let Transport::Tcp {
        src_port,
        dst_port,
        flags,
        seq,
        ack,
        payload_len,
    } = p.transport
    else {
        return 0;
    };
    let rst_seq = if flags.contains(TcpFlags::ACK) {
        ack
    } else {
        0
    };
    let seg_len = u32::from(payload_len)
        + u32::from(flags.contains(TcpFlags::SYN))
        + u32::from(flags.contains(TcpFlags::FIN));
    let Some(ip) = ip_frame(our_mac, p.src_mac, p.dst, p.src, TTL) else {
        return 0;
    };
    let len = ip
        .tcp(dst_port, src_port, rst_seq, 0)
        .rst()
        .ack(seq.wrapping_add(seg_len))
        .write_to_slice(out, &[]);
    len.map_or(0, |len| pad(out, len))
}

/// A port unreachable from `p.dst` to `p.src`. IPv4: ICMP destination unreachable code 3, quoting the IP
/// header and the first 8 bytes of data of `p` (RFC 792). IPv6: ICMPv6 destination unreachable code 4,
/// quoting as much of `p` as fits in 1280 bytes (RFC 4443 §3.1).
pub fn build_icmp_port_unreachable(
    frame: &[u8],
    p: &Packet,
    our_mac: MacAddr,
    out: &mut [u8],
) -> usize {
    let quote_end = if p.src.is_ipv6() {
        p.end
            .min(p.ip + ICMPV6_ERROR_MAX - IPV6_HEADER_LEN - ICMP_HEADER_LEN)
    } else {
        p.end.min(p.l4.saturating_add(ICMP_QUOTED_DATA_LEN))
    };
    let Some(quoted) = frame.get(p.ip..quote_end) else {
        return 0;
    };
    let Some(ip) = ip_frame(our_mac, p.src_mac, p.dst, p.src, TTL) else {
        return 0;
    };
    let len = if p.src.is_ipv6() {
        ip.icmpv6(Icmpv6Type::DestinationUnreachable(
            DestUnreachableCode::Port,
        ))
        .write_to_slice(out, quoted)
    } else {
        ip.icmpv4(Icmpv4Type::DestinationUnreachable(
            DestUnreachableHeader::Port,
        ))
        .write_to_slice(out, quoted)
    };
    len.map_or(0, |len| pad(out, len))
}

/// An echo reply to the echo request `p`, from `p.dst` to `p.src`, with its identifier, sequence number
/// and data (RFC 792; RFC 4443 §4.2).
pub fn build_icmp_echo_reply(frame: &[u8], p: &Packet, our_mac: MacAddr, out: &mut [u8]) -> usize {
    if p.transport != Transport::Icmp(Icmp::EchoRequest) {
        return 0;
    }
    let (Some(id), Some(seq)) = (be16(frame, p.l4 + 4), be16(frame, p.l4 + 6)) else {
        return 0;
    };
    let Some(data) = frame.get(p.l4 + ICMP_HEADER_LEN..p.end) else {
        return 0;
    };
    let Some(ip) = ip_frame(our_mac, p.src_mac, p.dst, p.src, TTL) else {
        return 0;
    };
    let len = if p.src.is_ipv6() {
        ip.icmpv6_echo_reply(id, seq).write_to_slice(out, data)
    } else {
        ip.icmpv4_echo_reply(id, seq).write_to_slice(out, data)
    };
    len.map_or(0, |len| pad(out, len))
}
