//! Builders for the IPv4 frames the director sends itself: TCP RST, ICMP port unreachable, ICMP echo reply.
//!
//! Written with etherparse's `PacketBuilder` straight into the caller's buffer (no allocation); each returns
//! the frame length, or 0 when `out` cannot hold it (or the minimum frame) or `p` is not the right kind.

use etherparse::{Icmpv4Type, PacketBuilder, icmpv4::DestUnreachableHeader};

use super::{
    ICMP_HEADER_LEN, ICMP_QUOTED_DATA_LEN, Icmp, MIN_FRAME_LEN, MacAddr, Packet, TcpFlags,
    Transport, be16,
};

/// TTL of generated packets.
pub(crate) const TTL: u8 = 64;

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
    let len = PacketBuilder::ethernet2(our_mac.0, p.src_mac.0)
        .ipv4(p.dst.octets(), p.src.octets(), TTL)
        .tcp(dst_port, src_port, rst_seq, 0)
        .rst()
        .ack(seq.wrapping_add(seg_len))
        .write_to_slice(out, &[]);
    len.map_or(0, |len| pad(out, len))
}

/// An ICMP destination unreachable, code 3 (port), from `p.dst` to `p.src`, quoting the IP header and the
/// first 8 bytes of data of `p` (RFC 792).
pub fn build_icmp_port_unreachable(
    frame: &[u8],
    p: &Packet,
    our_mac: MacAddr,
    out: &mut [u8],
) -> usize {
    let quote_end = p.end.min(p.l4.saturating_add(ICMP_QUOTED_DATA_LEN));
    let Some(quoted) = frame.get(p.ip..quote_end) else {
        return 0;
    };
    let len = PacketBuilder::ethernet2(our_mac.0, p.src_mac.0)
        .ipv4(p.dst.octets(), p.src.octets(), TTL)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            DestUnreachableHeader::Port,
        ))
        .write_to_slice(out, quoted);
    len.map_or(0, |len| pad(out, len))
}

/// An ICMP echo reply to the echo request `p`, from `p.dst` to `p.src`, with its identifier, sequence
/// number and data (RFC 792).
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
    let len = PacketBuilder::ethernet2(our_mac.0, p.src_mac.0)
        .ipv4(p.dst.octets(), p.src.octets(), TTL)
        .icmpv4_echo_reply(id, seq)
        .write_to_slice(out, data);
    len.map_or(0, |len| pad(out, len))
}
