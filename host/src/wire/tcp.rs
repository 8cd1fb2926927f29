//! What the SYN proxy does to TCP headers: read a SYN's options, build its own segments, translate sequence
//! numbers, SACK blocks and windows with incremental checksums, and turn a server's SYN-ACK into the ACK
//! that opens the client's window.
//!
//! Same contract as the rest of `wire`: offsets come from [`parse`](super::parse), every index is checked,
//! nothing allocates or panics on any bytes; a `Packet` of another frame makes a function do nothing.

use std::net::SocketAddr;

use super::build::{TTL, ip_frame, pad};
use super::rewrite::{End, adjust, read_addr, write_bytes};
use super::{MacAddr, Packet, TcpFlags, Transport, be16, checksum};

const SEQ: usize = 4;
const ACK: usize = 8;
const DATA_OFFSET: usize = 12;
const FLAGS: usize = 13;
const WINDOW: usize = 14;
const CHECKSUM: usize = 16;
const FIXED_LEN: usize = 20;

const OPT_END: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;
const OPT_WSCALE: u8 = 3;
const OPT_SACK_PERMITTED: u8 = 4;
const OPT_SACK: u8 = 5;
/// RFC 7323 §2.3: "If a Window Scale option is received with a shift.cnt value larger than 14, the TCP
/// SHOULD log the error but MUST use 14 instead of the specified value."
pub const MAX_WSCALE: u8 = 14;

/// The options of a SYN or SYN-ACK that shape the connection (RFC 9293 MSS, RFC 7323 window scale, RFC
/// 2018 SACK). Timestamps are not carried: the SYN proxy does not negotiate them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynOptions {
    pub mss: Option<u16>,
    /// The shift count, at most [`MAX_WSCALE`].
    pub wscale: Option<u8>,
    pub sack: bool,
}

/// The TCP options area of the parsed segment: between the fixed header and the data offset.
fn options_range(frame: &[u8], p: &Packet) -> Option<(usize, usize)> {
    if !matches!(p.transport, Transport::Tcp { .. }) {
        return None;
    }
    let header_len = usize::from(*frame.get(p.l4 + DATA_OFFSET)? >> 4) * 4;
    let end = p.l4 + header_len;
    (header_len >= FIXED_LEN && end <= p.end && end <= frame.len())
        .then_some((p.l4 + FIXED_LEN, end))
}

/// Calls `each(kind, offset of the option's data, data length)` for every option until End; stops at the
/// first malformed one (a length below 2 or past the header).
fn walk_options(frame: &[u8], p: &Packet, mut each: impl FnMut(u8, usize, usize)) {
    let Some((mut at, end)) = options_range(frame, p) else {
        return;
    };
    while at < end {
        match frame[at] {
            OPT_END => return,
            OPT_NOP => at += 1,
            kind => {
                let Some(&len) = frame.get(at + 1) else {
                    return;
                };
                let len = usize::from(len);
                if len < 2 || at + len > end {
                    return;
                }
                each(kind, at + 2, len - 2);
                at += len;
            }
        }
    }
}

/// The MSS, window scale and SACK-permitted options of a SYN or SYN-ACK; malformed options are ignored as
/// a TCP receiver ignores them.
pub fn syn_options(frame: &[u8], p: &Packet) -> SynOptions {
    let mut opts = SynOptions::default();
    walk_options(frame, p, |kind, at, len| match (kind, len) {
        (OPT_MSS, 2) => opts.mss = be16(frame, at),
        (OPT_WSCALE, 1) => opts.wscale = frame.get(at).map(|&s| s.min(MAX_WSCALE)),
        (OPT_SACK_PERMITTED, 0) => opts.sack = true,
        _ => {}
    });
    opts
}

/// The addresses and header fields of a segment the director sends itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    /// Both of one family.
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    /// Sent (with the ACK flag) when `Some`.
    pub ack: Option<u32>,
    pub syn: bool,
    pub rst: bool,
    pub window: u16,
}

/// Writes `segment` with `options` (only meaningful on a SYN) into `out`; returns the frame length, 0 if it
/// does not fit or its addresses are of different families.
pub fn build_tcp(segment: &Segment, options: &SynOptions, out: &mut [u8]) -> usize {
    // MSS (4) + NOP WS (4) + NOP NOP SACK-permitted (4): a multiple of 4, as the data offset needs.
    let mut raw = [0u8; 12];
    let mut n = 0;
    if let Some(mss) = options.mss {
        raw[..4].copy_from_slice(&[OPT_MSS, 4, (mss >> 8) as u8, mss as u8]);
        n = 4;
    }
    if let Some(ws) = options.wscale {
        raw[n..n + 4].copy_from_slice(&[OPT_NOP, OPT_WSCALE, 3, ws.min(MAX_WSCALE)]);
        n += 4;
    }
    if options.sack {
        raw[n..n + 4].copy_from_slice(&[OPT_NOP, OPT_NOP, OPT_SACK_PERMITTED, 2]);
        n += 4;
    }
    let Some(ip) = ip_frame(
        segment.src_mac,
        segment.dst_mac,
        segment.src.ip(),
        segment.dst.ip(),
        TTL,
    ) else {
        return 0;
    };
    let mut tcp = ip.tcp(
        segment.src.port(),
        segment.dst.port(),
        segment.seq,
        segment.window,
    );
    if segment.syn {
        tcp = tcp.syn();
    }
    if segment.rst {
        tcp = tcp.rst();
    }
    if let Some(ack) = segment.ack {
        tcp = tcp.ack(ack);
    }
    let Ok(tcp) = tcp.options_raw(&raw[..n]) else {
        return 0;
    };
    tcp.write_to_slice(out, &[]).map_or(0, |len| pad(out, len))
}

fn read32(frame: &[u8], off: usize) -> Option<u32> {
    let b = frame.get(off..off.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Adds `add` to the 32-bit field at `off`; returns the checksum difference.
fn add32(frame: &mut [u8], off: usize, add: u32) -> Option<u32> {
    let old = read32(frame, off)?;
    let new = old.wrapping_add(add);
    write_bytes(frame, off, &new.to_be_bytes())?;
    Some(checksum::delta_u32(old, new))
}

/// A window field of a sender that scales by `from` bits, re-expressed for a receiver that scales by `to`:
/// rounded down, and at most 65535 (a window announced smaller than it is is always safe).
pub fn rescale_window(window: u16, from: u8, to: u8) -> u16 {
    let bytes = u64::from(window) << from.min(MAX_WSCALE);
    (bytes >> to.min(MAX_WSCALE)).min(u64::from(u16::MAX)) as u16
}

/// How [`translate`] changes a segment of a proxied connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Translation {
    /// Added to the sequence number.
    pub seq: u32,
    /// Added to the acknowledgment number (when ACK is set) and to every SACK block edge.
    pub ack: u32,
    /// The window field's scale as sent and as the receiver applies it.
    pub window_from: u8,
    pub window_to: u8,
}

/// Translates sequence space, SACK blocks and window of the parsed TCP segment in place, adjusting its
/// checksum incrementally.
pub fn translate(frame: &mut [u8], p: &Packet, t: &Translation) {
    let _ = translate_inner(frame, p, t);
}

fn translate_inner(frame: &mut [u8], p: &Packet, t: &Translation) -> Option<()> {
    let Transport::Tcp { flags, .. } = p.transport else {
        return None;
    };
    let mut delta = 0u32;
    if t.seq != 0 {
        delta += add32(frame, p.l4 + SEQ, t.seq)?;
    }
    if t.ack != 0 && flags.contains(TcpFlags::ACK) {
        delta += add32(frame, p.l4 + ACK, t.ack)?;
        // SACK blocks name the same sequence space as the acknowledgment number (RFC 2018 §3).
        let mut blocks = [(0usize, 0usize); 4];
        let mut found = 0;
        walk_options(frame, p, |kind, at, len| {
            if kind == OPT_SACK && found < blocks.len() {
                blocks[found] = (at, len);
                found += 1;
            }
        });
        for &(at, len) in &blocks[..found] {
            for edge in (at..at + len - len % 4).step_by(4) {
                delta += add32(frame, edge, t.ack)?;
            }
        }
    }
    if t.window_from != t.window_to {
        let off = p.l4 + WINDOW;
        let old = be16(frame, off)?;
        let new = rescale_window(old, t.window_from, t.window_to);
        write_bytes(frame, off, &new.to_be_bytes())?;
        delta += checksum::delta_u16(old, new);
    }
    if delta != 0 {
        adjust(frame, p.l4 + CHECKSUM, delta, false)?;
    }
    Some(())
}

/// Turns a server's SYN-ACK (already given the virtual source address) into a plain ACK with sequence
/// number `seq` and window `window`: SYN cleared, options replaced by NOPs, length unchanged, checksum
/// recomputed over the frame's current addresses. The client gets it as the window update that ends the
/// proxied handshake.
pub fn synack_to_ack(frame: &mut [u8], p: &Packet, seq: u32, window: u16) {
    let _ = synack_to_ack_inner(frame, p, seq, window);
}

fn synack_to_ack_inner(frame: &mut [u8], p: &Packet, seq: u32, window: u16) -> Option<()> {
    let (start, end) = options_range(frame, p)?;
    frame.get_mut(start..end)?.fill(OPT_NOP);
    write_bytes(frame, p.l4 + SEQ, &seq.to_be_bytes())?;
    *frame.get_mut(p.l4 + FLAGS)? = TcpFlags::ACK.0;
    write_bytes(frame, p.l4 + WINDOW, &window.to_be_bytes())?;
    write_bytes(frame, p.l4 + CHECKSUM, &[0, 0])?;
    let v6 = p.src.is_ipv6();
    let src = read_addr(frame, p.ip, End::Source, v6)?;
    let dst = read_addr(frame, p.ip, End::Destination, v6)?;
    let segment = frame.get(p.l4..p.end)?;
    let pseudo = checksum::pseudo_header(src, dst, super::IP_PROTO_TCP, segment.len())?;
    let sum = checksum::finish(checksum::transport(pseudo, segment));
    write_bytes(frame, p.l4 + CHECKSUM, &sum.to_be_bytes())
}

/// The window field of the parsed TCP segment.
pub fn window(frame: &[u8], p: &Packet) -> Option<u16> {
    matches!(p.transport, Transport::Tcp { .. })
        .then(|| be16(frame, p.l4 + WINDOW))
        .flatten()
}

/// Adds `add` to the sequence number of the TCP segment quoted in an ICMP error (RFC 792: at least its
/// first 8 bytes are quoted, so the sequence number always is), adjusting the quoted TCP checksum when it
/// is quoted too and the ICMP checksum over both. A proxied connection's server must find its own
/// sequence numbers in a "fragmentation needed" about the segments it sent (Linux checks them).
pub fn translate_quoted_seq(frame: &mut [u8], p: &Packet, add: u32) {
    let _ = translate_quoted_seq_inner(frame, p, add);
}

fn translate_quoted_seq_inner(frame: &mut [u8], p: &Packet, add: u32) -> Option<()> {
    let Transport::Icmp(super::Icmp::Error { embedded, .. }) = p.transport else {
        return None;
    };
    if embedded.protocol != super::Protocol::Tcp || add == 0 {
        return None;
    }
    // The quote starts at an even offset (8 + 4*IHL into the ICMP message), so its words add to the ICMP
    // checksum as they are.
    let mut icmp_delta = add32(frame, embedded.l4 + SEQ, add)?;
    let ck = embedded.l4 + CHECKSUM;
    if ck + 2 <= p.end {
        let old = be16(frame, ck)?;
        adjust(frame, ck, icmp_delta, false)?;
        icmp_delta += checksum::delta_u16(old, be16(frame, ck)?);
    }
    adjust(frame, p.l4 + 2, icmp_delta, false)
}
