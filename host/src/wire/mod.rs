//! Packet parsing, in-place rewriting and frame building. Pure: bytes in, bytes out.
//!
//! Contract:
//! - [`parse`] validates an untagged Ethernet II / IPv4 frame with etherparse slices (no copies) and returns a
//!   small `Copy` [`Packet`]: offsets into the frame plus the header fields the director decides on, or the
//!   one [`Error`] that makes the frame untranslatable. It checks the IPv4 header checksum but not the
//!   TCP/UDP/ICMP ones: the NAT rewrites adjust checksums incrementally (RFC 1624), so a bad transport
//!   checksum stays bad and the end host drops the segment, as it would without the director.
//! - [`transport_checksum_ok`] verifies a TCP or UDP checksum in full. It costs a pass over the payload, so
//!   the packet path calls it only for frames that would create state (a SYN, a first UDP datagram): a bad
//!   one must not fill the connection table with entries the end host never sees (issue 12).
//! - The rewrites ([`rewrite_destination`], [`rewrite_source`], [`set_macs`], the ICMP error translations)
//!   change the frame in place at the offsets `parse` found. They trust those offsets but still index with
//!   checks: a `Packet` from another frame makes them do nothing or write garbage, never panic.
//! - The builders write frames the director itself sends (RST, ICMP, ARP) into a caller's buffer and return
//!   the length, 0 when the buffer is too small. Frames shorter than the Ethernet minimum are zero-padded to
//!   [`MIN_FRAME_LEN`].
//!
//! Nothing here allocates, locks, formats or does I/O; nothing panics on any bytes.

pub mod arp;
mod build;
pub mod checksum;
mod ethernet;
mod rewrite;
pub mod tcp;

use std::net::Ipv4Addr;

use etherparse::{
    Ethernet2HeaderSlice, Ipv4HeaderSlice, TcpHeaderSlice, err::ipv4::HeaderSliceError,
};

pub use arp::{Arp, ArpOp, build_arp_reply, build_arp_request, build_gratuitous_arp, parse_arp};
pub use build::{build_icmp_echo_reply, build_icmp_port_unreachable, build_tcp_rst};
pub use ethernet::{MacAddr, ParseMacError};
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
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;

const TCP_MIN_HEADER_LEN: usize = 20;
const UDP_HEADER_LEN: usize = 8;
const ICMP_HEADER_LEN: usize = 8;
/// RFC 792: an ICMP error quotes "the internet header plus the first 64 bits of the original datagram's data".
const ICMP_QUOTED_DATA_LEN: usize = 8;

const IP_PROTO_ICMP: u8 = 1;
const IP_PROTO_TCP: u8 = 6;
const IP_PROTO_UDP: u8 = 17;

const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;

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
    /// The EtherType is not IPv4 (ARP is handled by [`parse_arp`]; VLAN-tagged frames land here too).
    NotIpv4,
    /// The frame ends before a fixed-size header it announces (Ethernet, IPv4 incl. options, TCP, UDP, ICMP).
    Truncated,
    /// IPv4 version is not 4, IHL < 5, or total length < IHL*4 or beyond the frame.
    BadIpHeader,
    /// The IPv4 header checksum does not verify.
    BadIpChecksum,
    /// A fragment (MF set or offset != 0): its transport header may be elsewhere.
    Fragment,
    /// Not TCP, UDP or ICMP.
    UnsupportedProtocol,
    /// TCP data offset < 5 or the header runs past the IP packet.
    BadTcpHeader,
    /// UDP length field < 8 or beyond the IP packet.
    BadUdpHeader,
    /// An ICMP error whose quoted packet is shorter than an IPv4 header plus 8 bytes, or not IPv4.
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
    /// Offset of the IPv4 header (14: untagged Ethernet).
    pub ip: usize,
    /// Offset of the transport header (`ip + IHL*4`).
    pub l4: usize,
    /// One past the IP packet (`ip + total_length`); Ethernet padding may follow.
    pub end: usize,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
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

/// The ICMP messages the director tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Icmp {
    EchoRequest,
    /// Destination unreachable (incl. fragmentation needed, code 4) or time exceeded about a TCP or UDP
    /// packet, with the quoted packet's header.
    Error {
        kind: u8,
        code: u8,
        embedded: Embedded,
    },
    /// Anything else, including errors quoting neither TCP nor UDP.
    Other,
}

/// The packet quoted in an ICMP error (RFC 792: its IP header and at least 8 bytes of its data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Embedded {
    /// Offset of the quoted IPv4 header in the frame.
    pub ip: usize,
    /// Offset of the quoted transport header in the frame; at least its 8 first bytes are present.
    pub l4: usize,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
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

/// Parses and validates an Ethernet II / IPv4 frame carrying TCP, UDP or ICMP.
pub fn parse(frame: &[u8]) -> Result<Packet, Error> {
    let eth = Ethernet2HeaderSlice::from_slice(frame).map_err(|_| Error::Truncated)?;
    if eth.ether_type().0 != ETHERTYPE_IPV4 {
        return Err(Error::NotIpv4);
    }
    let ip = ETHERNET_HEADER_LEN;
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
    let l4 = ip + header_len;
    let end = ip + total_len;
    let segment = frame.get(l4..end).ok_or(Error::Truncated)?;
    let transport = match hdr.protocol().0 {
        IP_PROTO_TCP => parse_tcp(segment)?,
        IP_PROTO_UDP => parse_udp(segment)?,
        IP_PROTO_ICMP => Transport::Icmp(parse_icmp(frame, l4, end)?),
        _ => return Err(Error::UnsupportedProtocol),
    };
    Ok(Packet {
        src_mac: MacAddr(eth.source()),
        dst_mac: MacAddr(eth.destination()),
        ip,
        l4,
        end,
        src: hdr.source_addr(),
        dst: hdr.destination_addr(),
        transport,
    })
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
            match parse_embedded(frame, l4 + ICMP_HEADER_LEN, end)? {
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

/// The quoted packet of an ICMP error starting at `ip`; `None` if it is neither TCP nor UDP.
fn parse_embedded(frame: &[u8], ip: usize, end: usize) -> Result<Option<Embedded>, Error> {
    let quoted = frame.get(ip..end).ok_or(Error::BadIcmp)?;
    let hdr = Ipv4HeaderSlice::from_slice(quoted).map_err(|_| Error::BadIcmp)?;
    let l4 = ip + hdr.slice().len();
    if end.saturating_sub(l4) < ICMP_QUOTED_DATA_LEN {
        return Err(Error::BadIcmp);
    }
    let protocol = match hdr.protocol().0 {
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
        src: hdr.source_addr(),
        dst: hdr.destination_addr(),
        protocol,
        src_port,
        dst_port,
    }))
}

/// Offset of the UDP length field.
const UDP_LENGTH: usize = 4;
/// Offset of the UDP checksum field.
const UDP_CHECKSUM: usize = 6;

/// Whether the TCP or UDP checksum of the parsed frame verifies in full (RFC 793 §3.1, RFC 768), over the
/// IPv4 pseudo-header and the segment as the IP header delimits it: Ethernet padding does not count.
///
/// - TCP: the segment runs to the end of the IP packet (`p.end`).
/// - UDP: the datagram is as long as its length field says (RFC 768: the pseudo-header carries "the UDP
///   length"; Linux trims the packet to it before checking). A zero checksum means the sender computed
///   none ("An all zero transmitted checksum value means that the transmitter generated no checksum") and
///   is accepted; this holds over IPv4 only (RFC 8200 §8.1 requires one over IPv6).
/// - ICMP: `true`, not checked. ICMP creates no state; the end host checks it.
///
/// `false` when `p` does not fit `frame` (a `Packet` from another frame); never panics.
pub fn transport_checksum_ok(frame: &[u8], p: &Packet) -> bool {
    let (protocol, segment_end) = match p.transport {
        Transport::Tcp { .. } => (IP_PROTO_TCP, Some(p.end)),
        Transport::Udp { .. } => {
            let field = |off: usize| be16(frame, p.l4.saturating_add(off));
            if field(UDP_CHECKSUM) == Some(0) {
                return true;
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
    let Some((segment, Ok(len))) = segment.map(|s| (s, u16::try_from(s.len()))) else {
        return false;
    };
    let pseudo_header = checksum::pseudo_header_ipv4(p.src, p.dst, protocol, len);
    checksum::verify_transport(pseudo_header, segment)
}

#[cfg(test)]
mod tests;
