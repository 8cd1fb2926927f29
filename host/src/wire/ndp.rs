//! IPv6 neighbour discovery (RFC 4861), the part a director needs: answering solicitations for the virtual
//! addresses, announcing them unsolicited (as gratuitous ARP does for IPv4), and asking for the real
//! servers' link-layer addresses.
//!
//! Neighbour discovery creates state (a real server's MAC, a client's belief about where a virtual address
//! is), so parsing applies RFC 4861's validity checks in full before the director believes a message:
//! hop limit 255 (the message was not forwarded by a router: it comes from the link), code 0, the ICMPv6
//! checksum, the length, a unicast target, well-formed options. Builders write into the caller's buffer and
//! return the frame length, 0 when `out` is too small.

use std::net::{IpAddr, Ipv6Addr};

use etherparse::{Icmpv6Type, icmpv6::NeighborAdvertisementHeader};

use super::build::{ip_frame, pad};
use super::{
    ICMPV6_NEIGHBOUR_ADVERTISEMENT, ICMPV6_NEIGHBOUR_SOLICITATION, IP_PROTO_ICMPV6, Icmp, MacAddr,
    checksum,
};

/// RFC 4861 §7.1: neighbour discovery messages are sent and accepted with hop limit 255 only.
pub const HOP_LIMIT: u8 = 255;
/// The fixed part of a solicitation or advertisement: ICMPv6 header (4), flags or reserved (4), target (16).
const FIXED_LEN: usize = 24;
/// Option types (RFC 4861 §4.6).
const OPT_SOURCE_LL: u8 = 1;
const OPT_TARGET_LL: u8 = 2;
/// The IPv6 header's hop limit field.
const IPV6_HOP_LIMIT: usize = 7;
/// The advertisement's flags byte: Router, Solicited, Override.
const NA_SOLICITED: u8 = 0x40;

/// The solicited-node multicast address of `addr` (RFC 4291 §2.7.1): ff02::1:ff00:0/104 and its low 24
/// bits. A solicitation for `addr` goes there.
pub fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// The Ethernet address of an IPv6 multicast address (RFC 2464 §7): 33:33 and its low 32 bits.
pub fn multicast_mac(addr: Ipv6Addr) -> MacAddr {
    let o = addr.octets();
    MacAddr([0x33, 0x33, o[12], o[13], o[14], o[15]])
}

/// The link-local address an interface with `mac` forms by modified EUI-64 (RFC 4291 §2.5.1, appendix A):
/// fe80::/64 and the MAC with the universal/local bit inverted and ff:fe in the middle. The director sends
/// its solicitations from it.
pub fn link_local(mac: MacAddr) -> Ipv6Addr {
    let m = mac.0;
    let id = [m[0] ^ 0x02, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]];
    let mut o = [0u8; 16];
    o[0] = 0xfe;
    o[1] = 0x80;
    o[8..].copy_from_slice(&id);
    Ipv6Addr::from(o)
}

/// The neighbour solicitation or advertisement of the IPv6 packet at `ip` whose ICMPv6 message lies at
/// `l4..end`, if it is valid (RFC 4861 §7.1.1, §7.1.2); `None` otherwise.
pub(super) fn parse(frame: &[u8], ip: usize, l4: usize, end: usize) -> Option<Icmp> {
    let message = frame.get(l4..end)?;
    if message.len() < FIXED_LEN || *frame.get(ip + IPV6_HOP_LIMIT)? != HOP_LIMIT || message[1] != 0
    {
        return None;
    }
    let src = addr_at(frame, ip + 8)?;
    let dst = addr_at(frame, ip + 24)?;
    let pseudo_header =
        checksum::pseudo_header(src.into(), dst.into(), IP_PROTO_ICMPV6, message.len())?;
    if !checksum::verify_transport(pseudo_header, message) {
        return None;
    }
    let target = addr_at(message, 8)?;
    if target.is_multicast() {
        return None;
    }
    let wanted = match message[0] {
        ICMPV6_NEIGHBOUR_SOLICITATION => OPT_SOURCE_LL,
        _ => OPT_TARGET_LL,
    };
    let mac = link_layer_option(&message[FIXED_LEN..], wanted)?;
    match message[0] {
        ICMPV6_NEIGHBOUR_SOLICITATION => {
            // Duplicate address detection: from ::, to a solicited-node address, no source address option.
            if src.is_unspecified() && (mac.is_some() || dst != solicited_node(target)) {
                return None;
            }
            Some(Icmp::NeighbourSolicitation { target, mac })
        }
        ICMPV6_NEIGHBOUR_ADVERTISEMENT => {
            if dst.is_multicast() && message[4] & NA_SOLICITED != 0 {
                return None;
            }
            Some(Icmp::NeighbourAdvertisement { target, mac })
        }
        _ => None,
    }
}

fn addr_at(b: &[u8], off: usize) -> Option<Ipv6Addr> {
    let a: [u8; 16] = b.get(off..off.checked_add(16)?)?.try_into().ok()?;
    Some(Ipv6Addr::from(a))
}

/// The link-layer address of the first option of type `wanted` (`Some(None)` when there is none);
/// `None` when an option is malformed (RFC 4861 §4.6: a zero length is invalid, and the message is
/// silently discarded).
fn link_layer_option(mut options: &[u8], wanted: u8) -> Option<Option<MacAddr>> {
    let mut found = None;
    while !options.is_empty() {
        let (&kind, &units) = (options.first()?, options.get(1)?);
        let len = usize::from(units) * 8;
        if len == 0 || len > options.len() {
            return None;
        }
        if kind == wanted && found.is_none() {
            found = Some(MacAddr::from_slice(options.get(2..8)?)?);
        }
        options = &options[len..];
    }
    Some(found)
}

/// Writes one neighbour discovery message: ICMPv6 `kind` about `target` with a link-layer address
/// option of type `option` carrying `our_mac`.
#[allow(clippy::too_many_arguments)]
fn build(
    our_mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    kind: Icmpv6Type,
    target: Ipv6Addr,
    option: u8,
    out: &mut [u8],
) -> usize {
    let mut body = [0u8; 24];
    body[..16].copy_from_slice(&target.octets());
    body[16] = option;
    body[17] = 1;
    body[18..].copy_from_slice(&our_mac.0);
    let Some(ip) = ip_frame(
        our_mac,
        dst_mac,
        IpAddr::V6(src),
        IpAddr::V6(dst),
        HOP_LIMIT,
    ) else {
        return 0;
    };
    ip.icmpv6(kind)
        .write_to_slice(out, &body)
        .map_or(0, |len| pad(out, len))
}

/// A neighbour advertisement: `target` (a virtual address) is at `our_mac`, sent from `target` (RFC 4861
/// §7.2.4). An answer to a solicitation from `to` at `to_mac` is solicited; with `to` = `None` it is
/// unsolicited, to all nodes (RFC 4861 §7.2.6, what a virtual address that appears sends). Override is
/// set either way: the director owns the address.
pub fn build_neighbour_advertisement(
    our_mac: MacAddr,
    target: Ipv6Addr,
    to: Option<(Ipv6Addr, MacAddr)>,
    out: &mut [u8],
) -> usize {
    let (dst, dst_mac, solicited) = match to {
        // RFC 4861 §7.2.4: a solicitation from :: (duplicate address detection) is answered to all nodes.
        Some((addr, mac)) if !addr.is_unspecified() => (addr, mac, true),
        _ => {
            let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
            (all_nodes, multicast_mac(all_nodes), false)
        }
    };
    let header = NeighborAdvertisementHeader {
        router: false,
        solicited,
        r#override: true,
    };
    build(
        our_mac,
        dst_mac,
        target,
        dst,
        Icmpv6Type::NeighborAdvertisement(header),
        target,
        OPT_TARGET_LL,
        out,
    )
}

/// A neighbour solicitation for `target` (a real server) from `src` (the inside interface's link-local
/// address) to the target's solicited-node multicast address, with our link-layer address (RFC 4861
/// §7.2.2).
pub fn build_neighbour_solicitation(
    our_mac: MacAddr,
    src: Ipv6Addr,
    target: Ipv6Addr,
    out: &mut [u8],
) -> usize {
    let dst = solicited_node(target);
    build(
        our_mac,
        multicast_mac(dst),
        src,
        dst,
        Icmpv6Type::NeighborSolicitation,
        target,
        OPT_SOURCE_LL,
        out,
    )
}

/// Sends a neighbour solicitation for `target` to the neighbour itself (unicast, RFC 4861 §7.3.3 probe)
/// when its MAC is known: refreshing an entry without disturbing every node on the link.
pub fn build_neighbour_probe(
    our_mac: MacAddr,
    src: Ipv6Addr,
    target: Ipv6Addr,
    target_mac: MacAddr,
    out: &mut [u8],
) -> usize {
    build(
        our_mac,
        target_mac,
        src,
        target,
        Icmpv6Type::NeighborSolicitation,
        target,
        OPT_SOURCE_LL,
        out,
    )
}
