//! In-place NAT rewrites with incremental checksums (RFC 1624).
//!
//! Each rewrite writes new address/port bytes at the offsets [`parse`](super::parse) found and adjusts every
//! checksum that covers them by the one's complement difference, without summing the payload. Offsets are
//! still checked: a mismatched `Packet` leaves the frame unchanged from the first missing field on.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::checksum;
use super::{Icmp, MacAddr, Packet, Protocol, Transport, be16};

const IP_CHECKSUM: usize = 10;
const IP_SRC: usize = 12;
const IP_DST: usize = 16;
const TCP_CHECKSUM: usize = 16;
const UDP_CHECKSUM: usize = 6;
const ICMP_CHECKSUM: usize = 2;

/// Which end of a packet a rewrite changes.
#[derive(Clone, Copy)]
enum End {
    Source,
    Destination,
}

impl End {
    fn addr_offset(self) -> usize {
        match self {
            End::Source => IP_SRC,
            End::Destination => IP_DST,
        }
    }

    fn port_offset(self) -> usize {
        match self {
            End::Source => 0,
            End::Destination => 2,
        }
    }
}

fn read_addr(frame: &[u8], off: usize) -> Option<Ipv4Addr> {
    let b = frame.get(off..off.checked_add(4)?)?;
    Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
}

pub(super) fn write_bytes(frame: &mut [u8], off: usize, bytes: &[u8]) -> Option<()> {
    frame
        .get_mut(off..off.checked_add(bytes.len())?)?
        .copy_from_slice(bytes);
    Some(())
}

fn write16(frame: &mut [u8], off: usize, v: u16) -> Option<()> {
    write_bytes(frame, off, &v.to_be_bytes())
}

/// Applies `delta` to the checksum at `off`; `udp` keeps a zero (absent) checksum zero.
pub(super) fn adjust(frame: &mut [u8], off: usize, delta: u32, udp: bool) -> Option<()> {
    let hc = be16(frame, off)?;
    let new = if udp {
        checksum::apply_udp(hc, delta)
    } else {
        checksum::apply(hc, delta)
    };
    write16(frame, off, new)
}

/// Offset of the checksum of a transport header at `l4`.
fn transport_checksum(protocol: Protocol, l4: usize) -> usize {
    l4 + match protocol {
        Protocol::Tcp => TCP_CHECKSUM,
        Protocol::Udp => UDP_CHECKSUM,
    }
}

/// Where an IP packet lies in a frame: the outer one, or the one quoted in an ICMP error.
#[derive(Clone, Copy)]
struct Site {
    ip: usize,
    l4: usize,
    /// One past the last byte present.
    limit: usize,
    /// `None`: leave the transport header alone.
    protocol: Option<Protocol>,
}

/// Sets one end's address (and, for TCP/UDP, port) of the IP packet at `ip`/`l4`; returns the checksum
/// difference of the bytes it changed that lie inside the transport header (port and transport checksum),
/// plus the address difference, for an enclosing ICMP checksum.
///
/// `limit` is one past the last byte that belongs to the packet: a transport checksum beyond it (a quote
/// truncated to 8 bytes in an ICMP error) is left alone, as its value is unknown anyway.
fn rewrite_end(frame: &mut [u8], site: Site, end: End, addr: Ipv4Addr, port: u16) -> Option<u32> {
    let Site {
        ip,
        l4,
        limit,
        protocol,
    } = site;
    let addr_off = ip + end.addr_offset();
    let old_addr = read_addr(frame, addr_off)?;
    let addr_delta = checksum::delta_addr(old_addr, addr);
    // Delta of all bytes changed, as seen by a checksum covering the whole packet (the ICMP one).
    let mut outer = addr_delta;

    write_bytes(frame, addr_off, &addr.octets())?;
    let old_ip_ck = be16(frame, ip + IP_CHECKSUM)?;
    adjust(frame, ip + IP_CHECKSUM, addr_delta, false)?;
    outer += checksum::delta_u16(old_ip_ck, be16(frame, ip + IP_CHECKSUM)?);

    let Some(protocol) = protocol else {
        return Some(outer);
    };
    let port_off = l4 + end.port_offset();
    let old_port = be16(frame, port_off)?;
    let port_delta = checksum::delta_u16(old_port, port);
    write16(frame, port_off, port)?;
    outer += port_delta;

    let ck_off = transport_checksum(protocol, l4);
    if ck_off + 2 <= limit {
        let old_ck = be16(frame, ck_off)?;
        // The pseudo-header carries the address, so the transport checksum sees both changes.
        adjust(
            frame,
            ck_off,
            addr_delta + port_delta,
            protocol == Protocol::Udp,
        )?;
        outer += checksum::delta_u16(old_ck, be16(frame, ck_off)?);
    }
    Some(outer)
}

fn rewrite(frame: &mut [u8], p: &Packet, end: End, addr: Ipv4Addr, port: u16) {
    let site = Site {
        ip: p.ip,
        l4: p.l4,
        limit: p.end,
        protocol: p.protocol(),
    };
    let _ = rewrite_end(frame, site, end, addr, port);
}

/// Rewrites the destination address and (TCP/UDP) port: a client's packet to a virtual address goes to a
/// real server.
pub fn rewrite_destination(frame: &mut [u8], p: &Packet, addr: Ipv4Addr, port: u16) {
    rewrite(frame, p, End::Destination, addr, port);
}

/// Rewrites the source address and (TCP/UDP) port: a real server's reply leaves as the virtual address.
pub fn rewrite_source(frame: &mut [u8], p: &Packet, addr: Ipv4Addr, port: u16) {
    rewrite(frame, p, End::Source, addr, port);
}

/// Sets the Ethernet source and destination addresses.
pub fn set_macs(frame: &mut [u8], src: MacAddr, dst: MacAddr) {
    let _ = write_bytes(frame, 0, &dst.0);
    let _ = write_bytes(frame, 6, &src.0);
}

/// Translates an ICMP error: one end of the outer packet (optional) and one end of the quoted one.
fn rewrite_icmp_error(
    frame: &mut [u8],
    p: &Packet,
    outer: Option<(End, Ipv4Addr)>,
    quoted: End,
    to: SocketAddrV4,
) -> Option<()> {
    let Transport::Icmp(Icmp::Error { embedded, .. }) = p.transport else {
        return None;
    };
    // The quoted packet lies inside the ICMP message at even offsets (8 + 4*IHL), so its word changes
    // add to the ICMP checksum directly (ICMP has no pseudo-header, RFC 792).
    let site = Site {
        ip: embedded.ip,
        l4: embedded.l4,
        limit: p.end,
        protocol: Some(embedded.protocol),
    };
    let delta = rewrite_end(frame, site, quoted, *to.ip(), to.port())?;
    adjust(frame, p.l4 + ICMP_CHECKSUM, delta, false)?;
    if let Some((end, addr)) = outer {
        let site = Site {
            ip: p.ip,
            l4: p.l4,
            limit: p.end,
            protocol: None,
        };
        rewrite_end(frame, site, end, addr, 0)?;
    }
    Some(())
}

/// An ICMP error from outside about a packet a real server sent (quoted: virtual address:port -> client)
/// goes to the real server: outer destination -> `outer_dst`, quoted source -> `embedded_src`
/// (real address:port), with the outer IP, quoted IP, quoted transport (if quoted in full) and ICMP
/// checksums adjusted. Does nothing unless `p` is an ICMP error.
pub fn rewrite_icmp_error_inbound(
    frame: &mut [u8],
    p: &Packet,
    outer_dst: Ipv4Addr,
    embedded_src: SocketAddrV4,
) {
    let _ = rewrite_icmp_error(
        frame,
        p,
        Some((End::Destination, outer_dst)),
        End::Source,
        embedded_src,
    );
}

/// An ICMP error from inside about a packet sent to a real server (quoted: client -> real address:port)
/// goes to the client: quoted destination -> `embedded_dst` (virtual address:port), and the outer source
/// -> `outer_src` when the error came from the real server itself. Does nothing unless `p` is an ICMP error.
pub fn rewrite_icmp_error_outbound(
    frame: &mut [u8],
    p: &Packet,
    outer_src: Option<Ipv4Addr>,
    embedded_dst: SocketAddrV4,
) {
    let _ = rewrite_icmp_error(
        frame,
        p,
        outer_src.map(|a| (End::Source, a)),
        End::Destination,
        embedded_dst,
    );
}
