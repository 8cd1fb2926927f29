//! In-place NAT rewrites with incremental checksums (RFC 1624), for IPv4 and IPv6.
//!
//! Each rewrite writes new address/port bytes at the offsets [`parse`](super::parse) found and adjusts every
//! checksum that covers them by the one's complement difference, without summing the payload. IPv4 has a
//! header checksum over the addresses; IPv6 has none, but its pseudo-header (RFC 8200 §8.1) puts the
//! addresses under the TCP, UDP and ICMPv6 checksums, so an address change reaches those the same way.
//! Offsets are still checked: a mismatched `Packet` (or an address of the other family) leaves the frame
//! unchanged from the first missing field on.

use std::net::{IpAddr, SocketAddr};

use super::checksum;
use super::{Icmp, MacAddr, Packet, Protocol, Transport, be16};

const IP_CHECKSUM: usize = 10;
const IPV4_SRC: usize = 12;
const IPV4_DST: usize = 16;
const IPV6_SRC: usize = 8;
const IPV6_DST: usize = 24;
const TCP_CHECKSUM: usize = 16;
const UDP_CHECKSUM: usize = 6;
const ICMP_CHECKSUM: usize = 2;

/// Which end of a packet a rewrite changes.
#[derive(Clone, Copy)]
pub(super) enum End {
    Source,
    Destination,
}

impl End {
    fn addr_offset(self, v6: bool) -> usize {
        match (self, v6) {
            (End::Source, false) => IPV4_SRC,
            (End::Destination, false) => IPV4_DST,
            (End::Source, true) => IPV6_SRC,
            (End::Destination, true) => IPV6_DST,
        }
    }

    fn port_offset(self) -> usize {
        match self {
            End::Source => 0,
            End::Destination => 2,
        }
    }
}

/// The address at `end` of the IP header at `ip`, IPv6 if `v6`.
pub(super) fn read_addr(frame: &[u8], ip: usize, end: End, v6: bool) -> Option<IpAddr> {
    let off = ip + end.addr_offset(v6);
    if v6 {
        let b: [u8; 16] = frame.get(off..off.checked_add(16)?)?.try_into().ok()?;
        Some(IpAddr::from(b))
    } else {
        let b: [u8; 4] = frame.get(off..off.checked_add(4)?)?.try_into().ok()?;
        Some(IpAddr::from(b))
    }
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
    /// IPv6 (no header checksum, 16-byte addresses).
    v6: bool,
}

/// Sets one end's address (and, for TCP/UDP, port) of the IP packet at `site`; returns the checksum
/// difference of the bytes it changed that an enclosing ICMP checksum covers (address, IPv4 header
/// checksum, port and transport checksum), and the difference of the address alone (what an ICMPv6
/// checksum also sees through its pseudo-header when the packet is the outer one).
///
/// `limit` is one past the last byte that belongs to the packet: a transport checksum beyond it (a quote
/// truncated to 8 bytes in an ICMP error) is left alone, as its value is unknown anyway.
fn rewrite_end(
    frame: &mut [u8],
    site: Site,
    end: End,
    addr: IpAddr,
    port: u16,
) -> Option<(u32, u32)> {
    let Site {
        ip,
        l4,
        limit,
        protocol,
        v6,
    } = site;
    if addr.is_ipv6() != v6 {
        return None;
    }
    let addr_off = ip + end.addr_offset(v6);
    let new = match addr {
        IpAddr::V4(a) => &a.octets()[..],
        IpAddr::V6(ref a) => &a.octets()[..],
    };
    let old = frame.get(addr_off..addr_off.checked_add(new.len())?)?;
    let addr_delta = checksum::delta_bytes(old, new);
    // Delta of all bytes changed, as seen by a checksum covering the whole packet (the ICMP one).
    let mut outer = addr_delta;

    write_bytes(frame, addr_off, new)?;
    if !v6 {
        let old_ip_ck = be16(frame, ip + IP_CHECKSUM)?;
        adjust(frame, ip + IP_CHECKSUM, addr_delta, false)?;
        outer += checksum::delta_u16(old_ip_ck, be16(frame, ip + IP_CHECKSUM)?);
    }

    let Some(protocol) = protocol else {
        return Some((outer, addr_delta));
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
    Some((outer, addr_delta))
}

fn rewrite(frame: &mut [u8], p: &Packet, end: End, addr: IpAddr, port: u16) {
    let site = Site {
        ip: p.ip,
        l4: p.l4,
        limit: p.end,
        protocol: p.protocol(),
        v6: p.src.is_ipv6(),
    };
    let _ = rewrite_end(frame, site, end, addr, port);
}

/// Rewrites the destination address and (TCP/UDP) port: a client's packet to a virtual address goes to a
/// real server. Does nothing if `addr` is not of the packet's family.
pub fn rewrite_destination(frame: &mut [u8], p: &Packet, addr: IpAddr, port: u16) {
    rewrite(frame, p, End::Destination, addr, port);
}

/// Rewrites the source address and (TCP/UDP) port: a real server's reply leaves as the virtual address.
/// Does nothing if `addr` is not of the packet's family.
pub fn rewrite_source(frame: &mut [u8], p: &Packet, addr: IpAddr, port: u16) {
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
    outer: Option<(End, IpAddr)>,
    quoted: End,
    to: SocketAddr,
) -> Option<()> {
    let Transport::Icmp(Icmp::Error { embedded, .. }) = p.transport else {
        return None;
    };
    let v6 = p.src.is_ipv6();
    // The quoted packet lies inside the ICMP message at even offsets (8 + 4*IHL, or 8 + 40), so its word
    // changes add to the ICMP checksum directly.
    let site = Site {
        ip: embedded.ip,
        l4: embedded.l4,
        limit: p.end,
        protocol: Some(embedded.protocol),
        v6,
    };
    let (mut delta, _) = rewrite_end(frame, site, quoted, to.ip(), to.port())?;
    if let Some((end, addr)) = outer {
        let site = Site {
            ip: p.ip,
            l4: p.l4,
            limit: p.end,
            protocol: None,
            v6,
        };
        let (_, addr_delta) = rewrite_end(frame, site, end, addr, 0)?;
        // ICMP has no pseudo-header (RFC 792); ICMPv6 has one (RFC 4443 §2.3), over the outer addresses.
        if v6 {
            delta += addr_delta;
        }
    }
    adjust(frame, p.l4 + ICMP_CHECKSUM, delta, false)
}

/// An ICMP error from outside about a packet a real server sent (quoted: virtual address:port -> client)
/// goes to the real server: outer destination -> `outer_dst`, quoted source -> `embedded_src`
/// (real address:port), with the outer IPv4 header, quoted IPv4 header, quoted transport (if quoted in
/// full) and ICMP checksums adjusted. Does nothing unless `p` is an ICMP error of the addresses' family.
pub fn rewrite_icmp_error_inbound(
    frame: &mut [u8],
    p: &Packet,
    outer_dst: IpAddr,
    embedded_src: SocketAddr,
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
/// -> `outer_src` when the error came from the real server itself. Does nothing unless `p` is an ICMP error
/// of the addresses' family.
pub fn rewrite_icmp_error_outbound(
    frame: &mut [u8],
    p: &Packet,
    outer_src: Option<IpAddr>,
    embedded_dst: SocketAddr,
) {
    let _ = rewrite_icmp_error(
        frame,
        p,
        outer_src.map(|a| (End::Source, a)),
        End::Destination,
        embedded_dst,
    );
}
