//! ARP for Ethernet/IPv4 (RFC 826): parsing requests and replies, building requests, replies and
//! gratuitous announcements (RFC 5227 §3: an ARP request with sender and target IP both set to the
//! announced address).
//!
//! Parsing uses etherparse's `ArpPacketSlice` (no copy); building uses its `PacketBuilder` writing into the
//! caller's buffer, padded to the Ethernet minimum. Builders return 0 when `out` is too small.

use std::net::Ipv4Addr;

use etherparse::{
    ArpHardwareId, ArpOperation, ArpPacket, ArpPacketSlice, EtherType, Ethernet2HeaderSlice,
    PacketBuilder,
};

use super::build::pad;
use super::{ETHERNET_HEADER_LEN, ETHERTYPE_ARP, ETHERTYPE_IPV4, MacAddr};

/// The ARP operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArpOp {
    Request,
    Reply,
}

/// An Ethernet/IPv4 ARP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arp {
    pub operation: ArpOp,
    pub sender_mac: MacAddr,
    pub sender_ip: Ipv4Addr,
    pub target_mac: MacAddr,
    pub target_ip: Ipv4Addr,
}

fn ipv4(b: &[u8]) -> Option<Ipv4Addr> {
    let a: [u8; 4] = b.try_into().ok()?;
    Some(Ipv4Addr::from(a))
}

/// Parses an Ethernet frame carrying an Ethernet/IPv4 ARP request or reply; `None` for anything else.
pub fn parse_arp(frame: &[u8]) -> Option<Arp> {
    let eth = Ethernet2HeaderSlice::from_slice(frame).ok()?;
    if eth.ether_type().0 != ETHERTYPE_ARP {
        return None;
    }
    let arp = ArpPacketSlice::from_slice(frame.get(ETHERNET_HEADER_LEN..)?).ok()?;
    if arp.hw_addr_type() != ArpHardwareId::ETHERNET
        || arp.proto_addr_type().0 != ETHERTYPE_IPV4
        || arp.hw_addr_size() != 6
        || arp.proto_addr_size() != 4
    {
        return None;
    }
    let operation = match arp.operation() {
        ArpOperation::REQUEST => ArpOp::Request,
        ArpOperation::REPLY => ArpOp::Reply,
        _ => return None,
    };
    Some(Arp {
        operation,
        sender_mac: MacAddr::from_slice(arp.sender_hw_addr())?,
        sender_ip: ipv4(arp.sender_protocol_addr())?,
        target_mac: MacAddr::from_slice(arp.target_hw_addr())?,
        target_ip: ipv4(arp.target_protocol_addr())?,
    })
}

/// Writes one ARP frame; 0 if `out` is too small.
fn build(eth_dst: MacAddr, arp: &Arp, out: &mut [u8]) -> usize {
    let operation = match arp.operation {
        ArpOp::Request => ArpOperation::REQUEST,
        ArpOp::Reply => ArpOperation::REPLY,
    };
    let Ok(packet) = ArpPacket::new(
        ArpHardwareId::ETHERNET,
        EtherType::IPV4,
        operation,
        &arp.sender_mac.0,
        &arp.sender_ip.octets(),
        &arp.target_mac.0,
        &arp.target_ip.octets(),
    ) else {
        return 0;
    };
    PacketBuilder::ethernet2(arp.sender_mac.0, eth_dst.0)
        .arp(packet)
        .write_to_slice(out)
        .map_or(0, |len| pad(out, len))
}

/// A broadcast request asking who has `target_ip`.
pub fn build_arp_request(
    our_mac: MacAddr,
    our_ip: Ipv4Addr,
    target_ip: Ipv4Addr,
    out: &mut [u8],
) -> usize {
    let arp = Arp {
        operation: ArpOp::Request,
        sender_mac: our_mac,
        sender_ip: our_ip,
        target_mac: MacAddr::ZERO,
        target_ip,
    };
    build(MacAddr::BROADCAST, &arp, out)
}

/// The reply to the request `to`: `our_ip` is at `our_mac`, sent to the requester's MAC.
pub fn build_arp_reply(our_mac: MacAddr, our_ip: Ipv4Addr, to: &Arp, out: &mut [u8]) -> usize {
    let arp = Arp {
        operation: ArpOp::Reply,
        sender_mac: our_mac,
        sender_ip: our_ip,
        target_mac: to.sender_mac,
        target_ip: to.sender_ip,
    };
    build(to.sender_mac, &arp, out)
}

/// A gratuitous ARP announcing that `ip` is at `our_mac`: a broadcast request with sender = target = `ip`.
pub fn build_gratuitous_arp(our_mac: MacAddr, ip: Ipv4Addr, out: &mut [u8]) -> usize {
    let arp = Arp {
        operation: ArpOp::Request,
        sender_mac: our_mac,
        sender_ip: ip,
        target_mac: MacAddr::ZERO,
        target_ip: ip,
    };
    build(MacAddr::BROADCAST, &arp, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket};

    const OUR_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    const PEER_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);
    const OUR_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    fn etherparse_arp(frame: &[u8]) -> etherparse::ArpEthIpv4Packet {
        let sliced = SlicedPacket::from_ethernet(frame).expect("etherparse parses it");
        match sliced.net {
            Some(NetSlice::Arp(a)) => a.to_packet().try_eth_ipv4().expect("Ethernet/IPv4 ARP"),
            other => panic!("not ARP: {other:?}"),
        }
    }

    /// A request we build is broadcast, padded to 60 bytes, and parses back (ours and etherparse's).
    #[test]
    fn request_round_trip() {
        let mut out = [0xAAu8; 128];
        let n = build_arp_request(OUR_MAC, OUR_IP, PEER_IP, &mut out);
        assert_eq!(n, 60);
        assert_eq!(&out[0..6], &MacAddr::BROADCAST.0);
        assert!(out[42..60].iter().all(|&b| b == 0), "padding is zero");
        let a = parse_arp(&out[..n]).unwrap();
        assert_eq!(
            a,
            Arp {
                operation: ArpOp::Request,
                sender_mac: OUR_MAC,
                sender_ip: OUR_IP,
                target_mac: MacAddr::ZERO,
                target_ip: PEER_IP
            }
        );
        let e = etherparse_arp(&out[..n]);
        assert_eq!(e.operation, ArpOperation::REQUEST);
        assert_eq!(e.target_ipv4, PEER_IP.octets());
    }

    /// A reply answers the requester at its MAC with our address.
    #[test]
    fn reply_answers_request() {
        let mut req = [0u8; 60];
        let n = build_arp_request(PEER_MAC, PEER_IP, OUR_IP, &mut req);
        let request = parse_arp(&req[..n]).unwrap();
        let mut out = [0u8; 60];
        let n = build_arp_reply(OUR_MAC, OUR_IP, &request, &mut out);
        assert_eq!(n, 60);
        assert_eq!(&out[0..6], &PEER_MAC.0);
        assert_eq!(&out[6..12], &OUR_MAC.0);
        let a = parse_arp(&out[..n]).unwrap();
        assert_eq!(
            a,
            Arp {
                operation: ArpOp::Reply,
                sender_mac: OUR_MAC,
                sender_ip: OUR_IP,
                target_mac: PEER_MAC,
                target_ip: PEER_IP
            }
        );
        assert_eq!(etherparse_arp(&out[..n]).operation, ArpOperation::REPLY);
    }

    /// A gratuitous ARP is a broadcast request with sender and target IP equal.
    #[test]
    fn gratuitous() {
        let mut out = [0u8; 60];
        let n = build_gratuitous_arp(OUR_MAC, OUR_IP, &mut out);
        let a = parse_arp(&out[..n]).unwrap();
        assert_eq!(a.operation, ArpOp::Request);
        assert_eq!(a.sender_ip, OUR_IP);
        assert_eq!(a.target_ip, OUR_IP);
        assert_eq!(&out[0..6], &MacAddr::BROADCAST.0);
    }

    /// A buffer shorter than the padded frame yields 0.
    #[test]
    fn too_small() {
        let mut out = [0u8; 59];
        assert_eq!(build_gratuitous_arp(OUR_MAC, OUR_IP, &mut out), 0);
        assert_eq!(
            build_arp_request(OUR_MAC, OUR_IP, PEER_IP, &mut out[..10]),
            0
        );
    }

    /// Non-ARP, truncated, and non-Ethernet/IPv4 ARP frames are rejected.
    #[test]
    fn rejects() {
        let mut out = [0u8; 60];
        let n = build_gratuitous_arp(OUR_MAC, OUR_IP, &mut out);
        assert!(parse_arp(&out[..20]).is_none(), "truncated");
        let mut ipv4 = out;
        ipv4[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        assert!(parse_arp(&ipv4[..n]).is_none(), "not ARP");
        let mut hw = out;
        hw[15] = 6; // hardware type IEEE 802
        assert!(parse_arp(&hw[..n]).is_none(), "not Ethernet");
        let mut op = out;
        op[21] = 3; // RARP request
        assert!(parse_arp(&op[..n]).is_none(), "unknown operation");
        assert!(parse_arp(&[]).is_none());
    }
}
