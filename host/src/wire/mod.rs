//! Packet parsing, in-place rewriting and frame building. Pure: bytes in, bytes out.
//!
//! Contract:
//! - [`parse`] validates an untagged Ethernet II frame carrying IPv4 or IPv6 with etherparse slices (no
//!   copies) and returns a small `Copy` [`Packet`]: offsets into the frame plus the header fields the
//!   director decides on, or the one [`Error`] that makes the frame untranslatable. It checks the IPv4
//!   header checksum (IPv6 has none) but not the TCP/UDP/ICMP ones: the NAT rewrites adjust checksums
//!   incrementally (RFC 1624), so a bad transport checksum stays bad and the end host drops the segment, as
//!   it would without the director. Neighbour discovery messages are the exception: they create neighbour
//!   state, so their ICMPv6 checksum and hop limit are checked in full ([`ndp`]).
//! - IPv6 extension headers: Hop-by-Hop and Destination Options headers are stepped over (they change
//!   neither the addresses nor the pseudo-header); a fragment is [`Error::Fragment`] and any other extension
//!   header (routing, which changes the pseudo-header's destination; AH and ESP, which a rewrite would
//!   break; mobility, HIP, shim6, experimental) is [`Error::ExtensionHeader`]: dropped and counted, never
//!   misparsed.
//! - [`transport_checksum_ok`] verifies a TCP or UDP checksum in full. It costs a pass over the payload, so
//!   the packet path calls it only for frames that would create state (a SYN, a first UDP datagram): a bad
//!   one must not fill the connection table with entries the end host never sees (issue 12).
//! - The rewrites ([`rewrite_destination`], [`rewrite_source`], [`set_macs`], the ICMP error translations)
//!   change the frame in place at the offsets `parse` found. They trust those offsets but still index with
//!   checks: a `Packet` from another frame makes them do nothing or write garbage, never panic.
//! - The builders write frames the director itself sends (RST, ICMP, ARP, neighbour discovery) into a caller's buffer and return
//!   the length, 0 when the buffer is too small. Frames shorter than the Ethernet minimum are zero-padded to
//!   [`MIN_FRAME_LEN`].
//!
//! Nothing here allocates, locks, formats or does I/O; nothing panics on any bytes.

pub mod arp;
mod build;
pub mod checksum;
mod ethernet;
pub mod ndp;
mod rewrite;
pub mod tcp;

use std::net::{IpAddr, Ipv6Addr};

use etherparse::{
    Ethernet2HeaderSlice, Ipv4HeaderSlice, Ipv6HeaderSlice, TcpHeaderSlice,
    err::ipv4::HeaderSliceError,
};

pub use arp::{Arp, ArpOp, build_arp_reply, build_arp_request, build_gratuitous_arp, parse_arp};
pub use build::{build_icmp_echo_reply, build_icmp_port_unreachable, build_tcp_rst};
pub use ethernet::{MacAddr, ParseMacError};
pub use ndp::{build_neighbour_advertisement, build_neighbour_solicitation};
pub use rewrite::{
    rewrite_destination, rewrite_icmp_error_inbound, rewrite_icmp_error_outbound, rewrite_source,
    set_macs,
};
pub use tcp::{SynOptions, Translation};

/// Length of an untagged Ethernet II header.
pub const ETHERNET_HEADER_LEN: usize = 14;
/// Minimum Ethernet frame length without the FCS; shorter frames we build are zero-padded to it.
pub const MIN_FRAME_LEN: usize = 60;
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86DD;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// Length of the fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;

const TCP_MIN_HEADER_LEN: usize = 20;
const UDP_HEADER_LEN: usize = 8;
const ICMP_HEADER_LEN: usize = 8;
/// RFC 792: an ICMP error quotes "the internet header plus the first 64 bits of the original datagram's data".
const ICMP_QUOTED_DATA_LEN: usize = 8;

const IP_PROTO_ICMP: u8 = 1;
const IP_PROTO_TCP: u8 = 6;
const IP_PROTO_UDP: u8 = 17;
const IP_PROTO_ICMPV6: u8 = 58;

const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;

/// ICMPv6 types (RFC 4443, RFC 4861).
const ICMPV6_DEST_UNREACHABLE: u8 = 1;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const ICMPV6_TIME_EXCEEDED: u8 = 3;
const ICMPV6_PARAMETER_PROBLEM: u8 = 4;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_NEIGHBOUR_SOLICITATION: u8 = 135;
const ICMPV6_NEIGHBOUR_ADVERTISEMENT: u8 = 136;

/// IPv6 next-header values of extension headers (RFC 8200 §4, IANA "IPv6 Extension Header Types").
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_ESP: u8 = 50;
const IPV6_AH: u8 = 51;
const IPV6_DEST_OPTIONS: u8 = 60;
const IPV6_MOBILITY: u8 = 135;
const IPV6_HIP: u8 = 139;
const IPV6_SHIM6: u8 = 140;
const IPV6_EXPERIMENTAL: [u8; 2] = [253, 254];
/// Extension headers stepped over before the transport header; a longer chain is refused.
const MAX_SKIPPED_EXTENSIONS: usize = 4;

/// Transport protocols the director translates.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The name used in config files and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// Why a frame cannot be translated; each variant is a drop-reason metric label.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    strum::EnumCount,
    strum::VariantArray,
    strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum Error {
    /// The EtherType is neither IPv4 nor IPv6 (ARP is handled by [`parse_arp`]; VLAN-tagged frames land
    /// here too).
    NotIp,
    /// The frame ends before a fixed-size header it announces (Ethernet, IPv4 incl. options, IPv6 and its
    /// extension headers, TCP, UDP, ICMP).
    Truncated,
    /// IPv4 version is not 4, IHL < 5, or total length < IHL*4 or beyond the frame; IPv6 version is not 6
    /// or the payload length runs beyond the frame (a jumbogram's 0 included).
    BadIpHeader,
    /// The IPv4 header checksum does not verify.
    BadIpChecksum,
    /// A fragment (IPv4: MF set or offset != 0; IPv6: a Fragment header): its transport header may be
    /// elsewhere.
    Fragment,
    /// An IPv6 extension header the director does not step over (routing, AH, ESP, mobility, ...), or a
    /// chain of more than four stepped-over ones.
    ExtensionHeader,
    /// Not TCP, UDP, ICMP or ICMPv6.
    UnsupportedProtocol,
    /// TCP data offset < 5 or the header runs past the IP packet.
    BadTcpHeader,
    /// UDP length field < 8 or beyond the IP packet.
    BadUdpHeader,
    /// An ICMP error whose quoted packet is shorter than an IP header plus 8 bytes, or not of the outer
    /// packet's family; a neighbour discovery message that fails its checks (RFC 4861 §7.1.1, §7.1.2: hop
    /// limit 255, code 0, ICMPv6 checksum, length, a multicast target, malformed options).
    BadIcmp,
}

impl Error {
    /// The metric label (snake_case).
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The flags byte of a TCP header (byte 13: CWR ECE URG ACK PSH RST SYN FIN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: TcpFlags = TcpFlags(0x01);
    pub const SYN: TcpFlags = TcpFlags(0x02);
    pub const RST: TcpFlags = TcpFlags(0x04);
    pub const PSH: TcpFlags = TcpFlags(0x08);
    pub const ACK: TcpFlags = TcpFlags(0x10);
    pub const URG: TcpFlags = TcpFlags(0x20);

    /// Whether every flag of `f` is set.
    pub fn contains(self, f: TcpFlags) -> bool {
        self.0 & f.0 == f.0
    }

    /// A connection request: SYN without ACK, RST or FIN.
    pub fn is_syn_only(self) -> bool {
        self.0 & (Self::SYN.0 | Self::ACK.0 | Self::RST.0 | Self::FIN.0) == Self::SYN.0
    }

    /// A server's answer to a connection request: SYN and ACK, no RST or FIN.
    pub fn is_syn_ack(self) -> bool {
        self.0 & (Self::SYN.0 | Self::ACK.0 | Self::RST.0 | Self::FIN.0)
            == Self::SYN.0 | Self::ACK.0
    }

    /// RST set.
    pub fn is_rst(self) -> bool {
        self.contains(Self::RST)
    }

    /// FIN set.
    pub fn is_fin(self) -> bool {
        self.contains(Self::FIN)
    }
}

impl std::ops::BitOr for TcpFlags {
    type Output = TcpFlags;
    fn bitor(self, rhs: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | rhs.0)
    }
}

/// What parsing found: offsets into the frame and the header fields the director decides on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    /// Offset of the IP header (14: untagged Ethernet).
    pub ip: usize,
    /// Offset of the transport header (IPv4: `ip + IHL*4`; IPv6: after the fixed header and the extension
    /// headers stepped over).
    pub l4: usize,
    /// One past the IP packet (IPv4: `ip + total_length`; IPv6: `ip + 40 + payload_length`); Ethernet
    /// padding may follow.
    pub end: usize,
    /// Both of one family: the packet's.
    pub src: IpAddr,
    pub dst: IpAddr,
    pub transport: Transport,
}

/// The transport header's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp {
        src_port: u16,
        dst_port: u16,
        flags: TcpFlags,
        seq: u32,
        ack: u32,
        payload_len: u16,
    },
    Udp {
        src_port: u16,
        dst_port: u16,
    },
    Icmp(Icmp),
}

/// The ICMP and ICMPv6 messages the director tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Icmp {
    EchoRequest,
    /// An error about a TCP or UDP packet, with the quoted packet's header. ICMP: destination unreachable
    /// (incl. fragmentation needed, code 4) or time exceeded; ICMPv6: destination unreachable, packet too
    /// big, time exceeded or parameter problem. `kind` is the ICMP or ICMPv6 type.
    Error {
        kind: u8,
        code: u8,
        embedded: Embedded,
    },
    /// An ICMPv6 neighbour solicitation that passed RFC 4861 §7.1.1's checks: who has `target`? `mac` is
    /// the source link-layer address option (absent when the source is unspecified, duplicate address
    /// detection).
    NeighbourSolicitation {
        target: Ipv6Addr,
        mac: Option<MacAddr>,
    },
    /// An ICMPv6 neighbour advertisement that passed RFC 4861 §7.1.2's checks: `target` is at `mac` (the
    /// target link-layer address option, if present).
    NeighbourAdvertisement {
        target: Ipv6Addr,
        mac: Option<MacAddr>,
    },
    /// Anything else, including errors quoting neither TCP nor UDP.
    Other,
}

/// The packet quoted in an ICMP error (RFC 792: its IP header and at least 8 bytes of its data; RFC 4443:
/// as much of it as fits), always of the outer packet's family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Embedded {
    /// Offset of the quoted IP header in the frame.
    pub ip: usize,
    /// Offset of the quoted transport header in the frame; at least its 8 first bytes are present.
    pub l4: usize,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: Protocol,
    pub src_port: u16,
    pub dst_port: u16,
}

impl Packet {
    /// TCP or UDP; `None` for ICMP.
    pub fn protocol(&self) -> Option<Protocol> {
        match self.transport {
            Transport::Tcp { .. } => Some(Protocol::Tcp),
            Transport::Udp { .. } => Some(Protocol::Udp),
            Transport::Icmp(_) => None,
        }
    }

    /// (source port, destination port) of TCP or UDP.
    pub fn ports(&self) -> Option<(u16, u16)> {
        match self.transport {
            Transport::Tcp {
                src_port, dst_port, ..
            }
            | Transport::Udp { src_port, dst_port } => Some((src_port, dst_port)),
            Transport::Icmp(_) => None,
        }
    }
}

/// Big-endian u16 at `off`, if present.
pub(crate) fn be16(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

/// Parses and validates an Ethernet II frame carrying IPv4 or IPv6 with TCP, UDP, ICMP or ICMPv6.
pub fn parse(frame: &[u8]) -> Result<Packet, Error> {
    let eth = Ethernet2HeaderSlice::from_slice(frame).map_err(|_| Error::Truncated)?;
    let (src_mac, dst_mac) = (MacAddr(eth.source()), MacAddr(eth.destination()));
    let ip = ETHERNET_HEADER_LEN;
    let (src, dst, l4, end, next) = match eth.ether_type().0 {
        ETHERTYPE_IPV4 => parse_ipv4(frame, ip)?,
        ETHERTYPE_IPV6 => parse_ipv6(frame, ip)?,
        _ => return Err(Error::NotIp),
    };
    let segment = frame.get(l4..end).ok_or(Error::Truncated)?;
    let transport = match (next, src) {
        (IP_PROTO_TCP, _) => parse_tcp(segment)?,
        (IP_PROTO_UDP, _) => parse_udp(segment)?,
        (IP_PROTO_ICMP, IpAddr::V4(_)) => Transport::Icmp(parse_icmp(frame, l4, end)?),
        (IP_PROTO_ICMPV6, IpAddr::V6(_)) => Transport::Icmp(parse_icmpv6(frame, ip, l4, end)?),
        _ => return Err(Error::UnsupportedProtocol),
    };
    Ok(Packet {
        src_mac,
        dst_mac,
        ip,
        l4,
        end,
        src,
        dst,
        transport,
    })
}

/// The IPv4 header at `ip`: (source, destination, transport offset, end of packet, protocol).
fn parse_ipv4(frame: &[u8], ip: usize) -> Result<(IpAddr, IpAddr, usize, usize, u8), Error> {
    let rest = frame.get(ip..).ok_or(Error::Truncated)?;
    let hdr = Ipv4HeaderSlice::from_slice(rest).map_err(|e| match e {
        HeaderSliceError::Len(_) => Error::Truncated,
        HeaderSliceError::Content(_) => Error::BadIpHeader,
    })?;
    let header_len = hdr.slice().len();
    let total_len = usize::from(hdr.total_len());
    if total_len < header_len || total_len > rest.len() {
        return Err(Error::BadIpHeader);
    }
    if !checksum::verify(hdr.slice()) {
        return Err(Error::BadIpChecksum);
    }
    if hdr.is_fragmenting_payload() {
        return Err(Error::Fragment);
    }
    Ok((
        hdr.source_addr().into(),
        hdr.destination_addr().into(),
        ip + header_len,
        ip + total_len,
        hdr.protocol().0,
    ))
}

/// The IPv6 header at `ip` and the extension headers after it: (source, destination, transport offset,
/// end of packet, transport protocol).
fn parse_ipv6(frame: &[u8], ip: usize) -> Result<(IpAddr, IpAddr, usize, usize, u8), Error> {
    let rest = frame.get(ip..).ok_or(Error::Truncated)?;
    let hdr = Ipv6HeaderSlice::from_slice(rest).map_err(|e| match e {
        etherparse::err::ipv6::HeaderSliceError::Len(_) => Error::Truncated,
        etherparse::err::ipv6::HeaderSliceError::Content(_) => Error::BadIpHeader,
    })?;
    let payload_len = usize::from(hdr.payload_length());
    // A zero payload length is a jumbogram (RFC 2675), which an Ethernet frame cannot carry.
    if payload_len == 0 || IPV6_HEADER_LEN + payload_len > rest.len() {
        return Err(Error::BadIpHeader);
    }
    let end = ip + IPV6_HEADER_LEN + payload_len;
    let (l4, next) = skip_extensions(frame, ip + IPV6_HEADER_LEN, end, hdr.next_header().0)?;
    Ok((
        hdr.source_addr().into(),
        hdr.destination_addr().into(),
        l4,
        end,
        next,
    ))
}

/// Steps over Hop-by-Hop and Destination Options headers from `at` (whose type is `next`); returns the
/// transport header's offset and protocol, or the error for a header the director does not handle.
fn skip_extensions(
    frame: &[u8],
    mut at: usize,
    end: usize,
    mut next: u8,
) -> Result<(usize, u8), Error> {
    for _ in 0..=MAX_SKIPPED_EXTENSIONS {
        match next {
            IPV6_HOP_BY_HOP | IPV6_DEST_OPTIONS => {
                // RFC 8200 §4.3: next header, length in 8-octet units not counting the first 8.
                let (Some(&following), Some(&units)) = (frame.get(at), frame.get(at + 1)) else {
                    return Err(Error::Truncated);
                };
                at += (usize::from(units) + 1) * 8;
                if at > end {
                    return Err(Error::Truncated);
                }
                next = following;
            }
            IPV6_FRAGMENT => return Err(Error::Fragment),
            IPV6_ROUTING | IPV6_ESP | IPV6_AH | IPV6_MOBILITY | IPV6_HIP | IPV6_SHIM6 => {
                return Err(Error::ExtensionHeader);
            }
            n if IPV6_EXPERIMENTAL.contains(&n) => return Err(Error::ExtensionHeader),
            _ => return Ok((at, next)),
        }
    }
    Err(Error::ExtensionHeader)
}

fn parse_tcp(segment: &[u8]) -> Result<Transport, Error> {
    if segment.len() < TCP_MIN_HEADER_LEN {
        return Err(Error::Truncated);
    }
    // The 20 fixed bytes are present, so etherparse only fails on the data offset.
    let tcp = TcpHeaderSlice::from_slice(segment).map_err(|_| Error::BadTcpHeader)?;
    let payload_len = segment.len() - tcp.slice().len();
    Ok(Transport::Tcp {
        src_port: tcp.source_port(),
        dst_port: tcp.destination_port(),
        flags: TcpFlags(segment[13]),
        seq: tcp.sequence_number(),
        ack: tcp.acknowledgment_number(),
        // An IPv4 packet is at most 65535 bytes long.
        payload_len: u16::try_from(payload_len).unwrap_or(u16::MAX),
    })
}

fn parse_udp(segment: &[u8]) -> Result<Transport, Error> {
    let (Some(src_port), Some(dst_port), Some(len)) =
        (be16(segment, 0), be16(segment, 2), be16(segment, 4))
    else {
        return Err(Error::Truncated);
    };
    if segment.len() < UDP_HEADER_LEN {
        return Err(Error::Truncated);
    }
    let len = usize::from(len);
    if len < UDP_HEADER_LEN || len > segment.len() {
        return Err(Error::BadUdpHeader);
    }
    Ok(Transport::Udp { src_port, dst_port })
}

fn parse_icmp(frame: &[u8], l4: usize, end: usize) -> Result<Icmp, Error> {
    if end.saturating_sub(l4) < ICMP_HEADER_LEN {
        return Err(Error::Truncated);
    }
    let (Some(&kind), Some(&code)) = (frame.get(l4), frame.get(l4 + 1)) else {
        return Err(Error::Truncated);
    };
    match kind {
        ICMP_ECHO_REQUEST => Ok(Icmp::EchoRequest),
        ICMP_DEST_UNREACHABLE | ICMP_TIME_EXCEEDED => {
            match parse_embedded(frame, l4 + ICMP_HEADER_LEN, end, false)? {
                Some(embedded) => Ok(Icmp::Error {
                    kind,
                    code,
                    embedded,
                }),
                None => Ok(Icmp::Other),
            }
        }
        _ => Ok(Icmp::Other),
    }
}

/// ICMPv6 (RFC 4443) at `l4` of the IPv6 packet at `ip`.
fn parse_icmpv6(frame: &[u8], ip: usize, l4: usize, end: usize) -> Result<Icmp, Error> {
    if end.saturating_sub(l4) < ICMP_HEADER_LEN {
        return Err(Error::Truncated);
    }
    let (Some(&kind), Some(&code)) = (frame.get(l4), frame.get(l4 + 1)) else {
        return Err(Error::Truncated);
    };
    match kind {
        ICMPV6_ECHO_REQUEST => Ok(Icmp::EchoRequest),
        ICMPV6_DEST_UNREACHABLE
        | ICMPV6_PACKET_TOO_BIG
        | ICMPV6_TIME_EXCEEDED
        | ICMPV6_PARAMETER_PROBLEM => match parse_embedded(frame, l4 + ICMP_HEADER_LEN, end, true)?
        {
            Some(embedded) => Ok(Icmp::Error {
                kind,
                code,
                embedded,
            }),
            None => Ok(Icmp::Other),
        },
        ICMPV6_NEIGHBOUR_SOLICITATION | ICMPV6_NEIGHBOUR_ADVERTISEMENT => {
            ndp::parse(frame, ip, l4, end).ok_or(Error::BadIcmp)
        }
        _ => Ok(Icmp::Other),
    }
}

/// The quoted packet of an ICMP error starting at `ip`, of the outer packet's family (`v6`); `None` if it
/// is neither TCP nor UDP (or, for IPv6, quotes extension headers).
fn parse_embedded(
    frame: &[u8],
    ip: usize,
    end: usize,
    v6: bool,
) -> Result<Option<Embedded>, Error> {
    let quoted = frame.get(ip..end).ok_or(Error::BadIcmp)?;
    let (src, dst, l4, protocol): (IpAddr, IpAddr, usize, u8) = if v6 {
        let hdr = Ipv6HeaderSlice::from_slice(quoted).map_err(|_| Error::BadIcmp)?;
        (
            hdr.source_addr().into(),
            hdr.destination_addr().into(),
            ip + IPV6_HEADER_LEN,
            hdr.next_header().0,
        )
    } else {
        let hdr = Ipv4HeaderSlice::from_slice(quoted).map_err(|_| Error::BadIcmp)?;
        (
            hdr.source_addr().into(),
            hdr.destination_addr().into(),
            ip + hdr.slice().len(),
            hdr.protocol().0,
        )
    };
    if end.saturating_sub(l4) < ICMP_QUOTED_DATA_LEN {
        return Err(Error::BadIcmp);
    }
    let protocol = match protocol {
        IP_PROTO_TCP => Protocol::Tcp,
        IP_PROTO_UDP => Protocol::Udp,
        _ => return Ok(None),
    };
    let (Some(src_port), Some(dst_port)) = (be16(frame, l4), be16(frame, l4 + 2)) else {
        return Err(Error::BadIcmp);
    };
    Ok(Some(Embedded {
        ip,
        l4,
        src,
        dst,
        protocol,
        src_port,
        dst_port,
    }))
}

/// Offset of the UDP length field.
const UDP_LENGTH: usize = 4;
/// Offset of the UDP checksum field.
const UDP_CHECKSUM: usize = 6;

/// Whether the TCP or UDP checksum of the parsed frame verifies in full (RFC 793 §3.1, RFC 768, RFC 8200
/// §8.1), over the pseudo-header of the packet's family and the segment as the IP header delimits it:
/// Ethernet padding does not count.
///
/// - TCP: the segment runs to the end of the IP packet (`p.end`).
/// - UDP: the datagram is as long as its length field says (RFC 768: the pseudo-header carries "the UDP
///   length"; Linux trims the packet to it before checking). Over IPv4 a zero checksum means the sender
///   computed none ("An all zero transmitted checksum value means that the transmitter generated no
///   checksum") and is accepted; over IPv6 it is not (RFC 8200 §8.1: "IPv6 receivers must discard UDP
///   packets containing a zero checksum").
/// - ICMP: `true`, not checked. ICMP creates no state; the end host checks it. (Neighbour discovery, which
///   does, is checked by [`ndp`] while parsing.)
///
/// `false` when `p` does not fit `frame` (a `Packet` from another frame); never panics.
pub fn transport_checksum_ok(frame: &[u8], p: &Packet) -> bool {
    let (protocol, segment_end) = match p.transport {
        Transport::Tcp { .. } => (IP_PROTO_TCP, Some(p.end)),
        Transport::Udp { .. } => {
            let field = |off: usize| be16(frame, p.l4.saturating_add(off));
            if field(UDP_CHECKSUM) == Some(0) {
                return p.src.is_ipv4();
            }
            let len = field(UDP_LENGTH);
            (
                IP_PROTO_UDP,
                len.and_then(|len| p.l4.checked_add(usize::from(len))),
            )
        }
        Transport::Icmp(_) => return true,
    };
    // With `p` from `parse(frame)` the segment always lies inside the IP packet and the frame.
    let segment = segment_end
        .filter(|&end| end <= p.end)
        .and_then(|end| frame.get(p.l4..end));
    let Some(segment) = segment else {
        return false;
    };
    let Some(pseudo_header) = checksum::pseudo_header(p.src, p.dst, protocol, segment.len()) else {
        return false;
    };
    checksum::verify_transport(pseudo_header, segment)
}

#[cfg(test)]
mod tests;
