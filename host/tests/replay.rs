//! Replay tests: the fixtures in tests/fixtures/ run through the real packet path, and every frame the
//! director sends is parsed back and checked (addresses, ports, MACs, checksums).

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use vipd::Interface;
use vipd::assemble::Assembly;
use vipd::director::{DropReason, Layer2, Verdict};
use vipd::replay::{Event, ReplayOptions, Summary, replay};
use vipd::wire::MacAddr;

use common::built_plugins;

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
const HOST_A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x0a];
const L2: Layer2 = Layer2 {
    outside_mac: MacAddr([0x02, 0, 0, 0, 0, 0x01]),
    inside_mac: MacAddr([0x02, 0, 0, 0, 0, 0x02]),
    inside_ip: Ipv4Addr::UNSPECIFIED,
};
const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2));
const HOST_A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 20, 0, 10));
const CLIENT6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 2));
/// host-a6 in ipv6.toml: host-a's IPv6 address, same MAC.
const HOST_A6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x1, 0, 0, 0, 0, 0x10));

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn vip(n: u8) -> IpAddr {
    Ipv4Addr::new(192, 0, 2, n).into()
}

fn vip6(n: u16) -> IpAddr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, n).into()
}

/// A frame the director sent, decoded.
#[derive(Debug)]
struct Sent {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: (IpAddr, u16),
    dst: (IpAddr, u16),
    /// IPv4 TTL or IPv6 hop limit.
    hop_limit: u8,
    /// syn, ack, fin, rst
    tcp_flags: Option<(bool, bool, bool, bool)>,
    tcp_ack: u32,
    /// ICMP or ICMPv6 type and code.
    icmp: Option<(u8, u8)>,
    /// The TCP payload, or the ICMP message after its first 8 bytes.
    data: Vec<u8>,
}

struct Run {
    events: Vec<Event>,
    summary: Summary,
    outside: Vec<Sent>,
    inside: Vec<Sent>,
}

fn run(scenario: &str, config: &str) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let assembly =
        Assembly::load(&fixtures().join(config), None).unwrap_or_else(|e| panic!("{e:#}"));
    let options = ReplayOptions {
        outside: Some(fixtures().join(format!("{scenario}.outside.pcap"))),
        inside: Some(fixtures().join(format!("{scenario}.inside.pcap"))),
        write_outside: Some(dir.path().join("out.pcap")),
        write_inside: Some(dir.path().join("in.pcap")),
        layer2: L2,
    };
    let mut events = Vec::new();
    let summary = replay(assembly, &options, |e| events.push(e.clone())).unwrap();
    Run {
        events,
        summary,
        outside: read_sent(&dir.path().join("out.pcap")),
        inside: read_sent(&dir.path().join("in.pcap")),
    }
}

/// Reads back a capture the director wrote; checks every IPv4, TCP, UDP, ICMP and ICMPv6 checksum on the way
/// (over the pseudo-header of the frame's family). ARP and other non-IP frames are skipped.
fn read_sent(path: &Path) -> Vec<Sent> {
    let mut capture = pcap::Capture::from_file(path).unwrap();
    let mut out = Vec::new();
    while let Ok(packet) = capture.next_packet() {
        let Ok(sliced) = SlicedPacket::from_ethernet(packet.data) else {
            continue;
        };
        let Some(etherparse::LinkSlice::Ethernet2(eth)) = &sliced.link else {
            continue;
        };
        let (src, dst, hop_limit) = match &sliced.net {
            Some(NetSlice::Ipv4(ip)) => {
                let h = ip.header().to_header();
                assert_eq!(
                    h.calc_header_checksum(),
                    h.header_checksum,
                    "IPv4 header checksum of a sent frame"
                );
                (h.source.into(), h.destination.into(), h.time_to_live)
            }
            Some(NetSlice::Ipv6(ip)) => {
                let h = ip.header();
                (
                    h.source_addr().into(),
                    h.destination_addr().into(),
                    h.hop_limit(),
                )
            }
            _ => continue,
        };
        let mut sent = Sent {
            src_mac: eth.source(),
            dst_mac: eth.destination(),
            src: (src, 0),
            dst: (dst, 0),
            hop_limit,
            tcp_flags: None,
            tcp_ack: 0,
            icmp: None,
            data: Vec::new(),
        };
        match &sliced.transport {
            Some(TransportSlice::Tcp(t)) => {
                let th = t.to_header();
                let sum = match (src, dst) {
                    (IpAddr::V4(s), IpAddr::V4(d)) => {
                        th.calc_checksum_ipv4_raw(s.octets(), d.octets(), t.payload())
                    }
                    (IpAddr::V6(s), IpAddr::V6(d)) => {
                        th.calc_checksum_ipv6_raw(s.octets(), d.octets(), t.payload())
                    }
                    _ => unreachable!("one header, one family"),
                };
                assert_eq!(sum.unwrap(), th.checksum, "TCP checksum of a sent frame");
                sent.src.1 = th.source_port;
                sent.dst.1 = th.destination_port;
                sent.tcp_flags = Some((th.syn, th.ack, th.fin, th.rst));
                sent.tcp_ack = th.acknowledgment_number;
                sent.data = t.payload().to_vec();
            }
            Some(TransportSlice::Udp(u)) => {
                let uh = u.to_header();
                sent.src.1 = uh.source_port;
                sent.dst.1 = uh.destination_port;
                let sum = match (src, dst) {
                    (IpAddr::V4(_), _) if uh.checksum == 0 => None,
                    (IpAddr::V4(s), IpAddr::V4(d)) => {
                        Some(uh.calc_checksum_ipv4_raw(s.octets(), d.octets(), u.payload()))
                    }
                    // RFC 8200 §8.1: over IPv6 the UDP checksum is not optional.
                    (IpAddr::V6(s), IpAddr::V6(d)) => {
                        Some(uh.calc_checksum_ipv6_raw(s.octets(), d.octets(), u.payload()))
                    }
                    _ => unreachable!("one header, one family"),
                };
                if let Some(sum) = sum {
                    assert_eq!(sum.unwrap(), uh.checksum, "UDP checksum of a sent frame");
                }
            }
            Some(TransportSlice::Icmpv4(i)) => {
                let bytes = i.slice();
                assert_eq!(internet_checksum(bytes), 0, "ICMP checksum of a sent frame");
                sent.icmp = Some((bytes[0], bytes[1]));
                sent.data = i.payload().to_vec();
            }
            Some(TransportSlice::Icmpv6(i)) => {
                let (IpAddr::V6(s), IpAddr::V6(d)) = (src, dst) else {
                    panic!("ICMPv6 over IPv4 in a sent frame");
                };
                let sum = i
                    .icmp_type()
                    .calc_checksum(s.octets(), d.octets(), i.payload())
                    .unwrap();
                assert_eq!(sum, i.checksum(), "ICMPv6 checksum of a sent frame");
                sent.icmp = Some((i.type_u8(), i.code_u8()));
                sent.data = i.payload().to_vec();
            }
            _ => {}
        }
        out.push(sent);
    }
    out
}

/// RFC 1071 sum over `bytes`; 0 when they carry a valid checksum.
fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in bytes.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from(chunk[0]) << 8
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn drops(run: &Run, reason: DropReason) -> u64 {
    run.summary.counters.dropped(reason)
}

/// The patent's example: three sites on port 80 reach one host on 8001-8003, and answers come back from the sites.
#[test]
fn patent_example_round_trip() {
    let r = run("patent", "patent.toml");
    assert_eq!(
        r.inside.len(),
        9,
        "three segments per connection reach the server"
    );
    assert_eq!(
        r.outside.len(),
        9,
        "three segments per connection reach the client"
    );
    for s in &r.inside {
        let n = s.src.1 - 40000;
        assert_eq!(s.src, (CLIENT, 40000 + n));
        assert_eq!(s.dst, (HOST_A, 8000 + n), "site{n} goes to port 800{n}");
        assert_eq!(s.dst_mac, HOST_A_MAC);
        assert_eq!(s.src_mac, L2.inside_mac.0);
    }
    for s in &r.outside {
        let n = s.dst.1 - 40000;
        assert_eq!(
            s.src,
            (vip(n as u8), 80),
            "the answer comes from the virtual machine"
        );
        assert_eq!(s.dst, (CLIENT, 40000 + n));
        assert_eq!(
            s.dst_mac, CLIENT_MAC,
            "back to the MAC the client's frames came from"
        );
        assert_eq!(s.src_mac, L2.outside_mac.0);
    }
    let bodies: Vec<_> = r
        .outside
        .iter()
        .filter(|s| !s.data.is_empty())
        .map(|s| s.data.clone())
        .collect();
    assert_eq!(
        bodies,
        [
            b"site1\n".to_vec(),
            b"site2\n".to_vec(),
            b"site3\n".to_vec()
        ]
    );
    assert_eq!(r.summary.counters.connections_created, 3);
    assert!(
        r.events
            .iter()
            .all(|e| matches!(e.verdict, Verdict::Forward(_))),
        "{:#?}",
        r.events
    );
}

/// A resent SYN finds its connection object: same server, counted as a resend.
#[test]
fn syn_resend_goes_to_the_same_server() {
    let r = run("syn-resend", "patent.toml");
    let syns: Vec<_> = r
        .inside
        .iter()
        .filter(|s| s.tcp_flags.is_some_and(|f| f.0))
        .collect();
    assert_eq!(syns.len(), 2);
    assert!(syns.iter().all(|s| s.dst == (HOST_A, 8001)));
    assert_eq!(r.summary.counters.syn_resends, 1);
    assert_eq!(r.summary.counters.connections_created, 1);
    assert_eq!(
        r.inside.len(),
        3,
        "the ACK after the handshake goes through too"
    );
}

/// An unsupported port is refused at once: RST (ack = seq + 1) for TCP, ICMP port unreachable for UDP.
#[test]
fn unsupported_port_is_refused() {
    let r = run("unsupported-port", "patent.toml");
    assert!(r.inside.is_empty());
    assert_eq!(r.outside.len(), 2);
    let rst = &r.outside[0];
    assert_eq!(rst.tcp_flags, Some((false, true, false, true)), "RST+ACK");
    assert_eq!(rst.tcp_ack, 1235);
    assert_eq!(rst.src, (vip(1), 81));
    assert_eq!(rst.dst, (CLIENT, 40200));
    assert_eq!(rst.dst_mac, CLIENT_MAC);
    let icmp = &r.outside[1];
    assert_eq!(
        icmp.icmp,
        Some((3, 3)),
        "destination unreachable, port unreachable"
    );
    assert_eq!(icmp.src.0, vip(1));
    assert_eq!(
        r.summary.counters.refused[DropReason::UnsupportedPort as usize],
        2
    );
}

/// Stray and malformed frames are dropped and counted by reason; the director still serves afterwards.
#[test]
fn stray_and_malformed_frames_are_dropped() {
    let r = run("stray", "patent.toml");
    let verdicts: Vec<_> = r.events.iter().map(|e| e.verdict).collect();
    assert_eq!(
        verdicts[0],
        Verdict::Drop(DropReason::NoConnection),
        "ACK without a connection"
    );
    assert_eq!(verdicts[1], Verdict::Drop(DropReason::NotVirtual));
    assert_eq!(verdicts[2], Verdict::Drop(DropReason::Truncated));
    assert_eq!(verdicts[3], Verdict::Drop(DropReason::Fragment));
    assert_eq!(verdicts[4], Verdict::Drop(DropReason::BadIpHeader));
    assert_eq!(verdicts[5], Verdict::Drop(DropReason::NotIp));
    assert!(matches!(verdicts[6], Verdict::Drop(_)), "random bytes");
    assert_eq!(
        verdicts[7],
        Verdict::Forward(Interface::Inside),
        "a SYN with IP options is served"
    );
    assert_eq!(r.inside.len(), 1);
    assert_eq!(r.inside[0].dst, (HOST_A, 8001));
    assert_eq!(drops(&r, DropReason::NoConnection), 1);
    assert_eq!(drops(&r, DropReason::Fragment), 1);
}

/// The three binding modes of FIG. 4A: whole machine, one physical port, port by port.
#[test]
fn binding_modes() {
    let r = run("binding-modes", "binding-modes.toml");
    let targets: Vec<_> = r.inside.iter().map(|s| s.dst).collect();
    let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
        HOST_A,
        Ipv4Addr::new(10, 20, 0, 11).into(),
        Ipv4Addr::new(10, 20, 0, 12).into(),
    );
    assert_eq!(
        targets,
        [
            (b, 80),
            (b, 443),
            (a, 8001),
            (a, 8001),
            (a, 8080),
            (c, 8443)
        ]
    );
}

/// Idle connections expire: a half-open one after the SYN timeout, an established one after its idle timeout.
#[test]
fn idle_connections_expire() {
    let r = run("timeouts", "timeouts.toml");
    let verdicts: Vec<_> = r.events.iter().map(|e| e.verdict).collect();
    let fwd = Verdict::Forward(Interface::Inside);
    assert_eq!(verdicts[0], fwd, "SYN");
    assert_eq!(
        verdicts[1],
        Verdict::Drop(DropReason::NoConnection),
        "ACK after the 2 s SYN timeout"
    );
    assert_eq!(verdicts[5], fwd, "established, idle 3.9 s of 5 s");
    assert_eq!(
        verdicts[6],
        Verdict::Drop(DropReason::NoConnection),
        "idle 6 s of 5 s"
    );
    assert_eq!(r.summary.counters.expired, 2);
}

/// A full table evicts the oldest half-open connection, and refuses a new one when all are established.
#[test]
fn full_table_evicts_half_open_then_refuses() {
    let r = run("table-full", "table-full.toml");
    let verdicts: Vec<_> = r.events.iter().map(|e| e.verdict).collect();
    let fwd = Verdict::Forward(Interface::Inside);
    assert_eq!(verdicts[..3], [fwd, fwd, fwd]);
    assert_eq!(
        verdicts[3],
        Verdict::Drop(DropReason::NoConnection),
        "the evicted connection is gone"
    );
    assert_eq!(verdicts[4], Verdict::Forward(Interface::Outside));
    assert_eq!(verdicts[5], Verdict::Forward(Interface::Outside));
    assert_eq!(verdicts[6..8], [fwd, fwd], "the clients' ACKs: established");
    assert_eq!(
        verdicts[8],
        Verdict::Reply(Interface::Outside),
        "RST when full of established connections"
    );
    assert_eq!(r.summary.counters.evicted_half_open, 1);
    assert_eq!(
        r.summary.counters.refused[DropReason::TableFull as usize],
        1
    );
    let rst = r.outside.last().unwrap();
    assert_eq!(rst.tcp_flags.map(|f| f.3), Some(true));
}

/// IPv6: the patent's exchanges to two virtual machines pass translated both ways; unsupported ports get an
/// RST and ICMPv6 port unreachable, a solicitation for a VIP a neighbour advertisement, a ping an echo
/// reply; a routing header, a fragment and a segment of no connection are dropped and counted by reason.
#[test]
fn ipv6_round_trip() {
    let r = run("ipv6", "ipv6.toml");
    assert_eq!(
        r.inside.len(),
        6,
        "three segments per connection reach the server"
    );
    for s in &r.inside {
        let n = s.src.1 - 40000;
        assert_eq!(s.src, (CLIENT6, 40000 + n));
        assert_eq!(s.dst, (HOST_A6, 8000 + n), "site{n} goes to port 800{n}");
        assert_eq!(s.dst_mac, HOST_A_MAC, "host-a6's static MAC");
        assert_eq!(s.src_mac, L2.inside_mac.0);
    }

    let all_nodes = IpAddr::V6(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1));
    let (to_client, unsolicited): (Vec<&Sent>, Vec<&Sent>) =
        r.outside.iter().partition(|s| s.dst.0 == CLIENT6);
    assert!(
        unsolicited
            .iter()
            .all(|s| s.dst.0 == all_nodes && s.icmp == Some((136, 0))),
        "besides the client's frames, only unsolicited advertisements of the VIPs: {unsolicited:#?}"
    );
    for s in &to_client {
        assert_eq!(
            s.dst_mac, CLIENT_MAC,
            "back to the MAC the client's frames came from"
        );
        assert_eq!(s.src_mac, L2.outside_mac.0);
    }
    assert_eq!(to_client.len(), 10, "{to_client:#?}");
    let (exchanges, generated) = to_client.split_at(6);
    for s in exchanges {
        let n = s.dst.1 - 40000;
        assert_eq!(
            s.src,
            (vip6(n), 80),
            "the answer comes from the virtual machine"
        );
        assert_eq!(s.dst, (CLIENT6, 40000 + n));
    }
    let bodies: Vec<_> = exchanges
        .iter()
        .filter(|s| !s.data.is_empty())
        .map(|s| s.data.clone())
        .collect();
    assert_eq!(bodies, [b"site1\n".to_vec(), b"site2\n".to_vec()]);

    let [rst, unreachable, advertisement, echo] = generated else {
        panic!("{generated:#?}");
    };
    assert_eq!(rst.tcp_flags, Some((false, true, false, true)), "RST+ACK");
    assert_eq!(rst.tcp_ack, 1235);
    assert_eq!(rst.src, (vip6(1), 81));
    assert_eq!(rst.dst, (CLIENT6, 40200));
    assert_eq!(
        unreachable.icmp,
        Some((1, 4)),
        "destination unreachable, port unreachable"
    );
    assert_eq!(unreachable.src.0, vip6(1));
    assert_eq!(
        advertisement.icmp,
        Some((136, 0)),
        "neighbour advertisement"
    );
    assert_eq!(advertisement.src.0, vip6(1));
    assert_eq!(advertisement.hop_limit, 255, "RFC 4861 §7.1.2");
    let IpAddr::V6(target) = vip6(1) else {
        unreachable!()
    };
    assert_eq!(advertisement.data[..16], target.octets(), "target: the VIP");
    assert_eq!(
        advertisement.data[16..18],
        [2, 1],
        "a target link-layer address option, 8 bytes"
    );
    assert_eq!(
        advertisement.data[18..24],
        L2.outside_mac.0,
        "at the outside MAC"
    );
    assert_eq!(echo.icmp, Some((129, 0)), "echo reply");
    assert_eq!(echo.src.0, vip6(1));
    assert_eq!(echo.data, b"ping");

    assert_eq!(r.summary.counters.connections_created, 2);
    assert_eq!(
        r.summary.counters.refused[DropReason::UnsupportedPort as usize],
        2
    );
    let verdicts: Vec<_> = r.events.iter().map(|e| e.verdict).collect();
    assert_eq!(
        verdicts[verdicts.len() - 3..],
        [
            Verdict::Drop(DropReason::ExtensionHeader),
            Verdict::Drop(DropReason::Fragment),
            Verdict::Drop(DropReason::NoConnection),
        ]
    );
    assert_eq!(drops(&r, DropReason::ExtensionHeader), 1, "routing header");
    assert_eq!(drops(&r, DropReason::Fragment), 1);
    assert_eq!(
        drops(&r, DropReason::NoConnection),
        1,
        "ACK without a connection"
    );
}

/// `vipd replay` on the command line prints one line per frame and writes both captures.
#[test]
fn replay_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vipd"))
        .arg("replay")
        .arg("--config")
        .arg(fixtures().join("patent.toml"))
        .arg("--outside")
        .arg(fixtures().join("patent.outside.pcap"))
        .arg("--inside")
        .arg(fixtures().join("patent.inside.pcap"))
        .arg("--write-outside")
        .arg(dir.path().join("o.pcap"))
        .arg("--write-inside")
        .arg(dir.path().join("i.pcap"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("198.51.100.2:40001 > 192.0.2.1:80"),
        "{stdout}"
    );
    assert!(stdout.contains("10.20.0.10:8001"), "{stdout}");
    assert_eq!(read_sent(&dir.path().join("i.pcap")).len(), 9);
    assert_eq!(read_sent(&dir.path().join("o.pcap")).len(), 9);
}

/// `vipd replay` of the IPv6 fixture prints socket addresses bracketed, the port outside the brackets.
#[test]
fn replay_command_line_ipv6() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vipd"))
        .arg("replay")
        .arg("--config")
        .arg(fixtures().join("ipv6.toml"))
        .arg("--outside")
        .arg(fixtures().join("ipv6.outside.pcap"))
        .arg("--inside")
        .arg(fixtures().join("ipv6.inside.pcap"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("site1 [2001:db8:f::1]:80/tcp: policy round-robin"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[2001:db8:c::2]:40001 > [2001:db8:f::1]:80 [S]  -> inside  TCP [2001:db8:c::2]:40001 > [2001:db8:1::10]:8001 [S]"),
        "{stdout}"
    );
    assert!(stdout.contains("drop extension_header"), "{stdout}");
}

// ------------------------------------------------------------ replay with the configured policies

/// A capture of `n` SYNs from one client (ports 40000..) to 192.0.2.1:80, 10 ms apart.
fn write_syns(path: &Path, n: u16) {
    let dead = pcap::Capture::dead(pcap::Linktype::ETHERNET).unwrap();
    let mut out = dead.savefile(path).unwrap();
    let (IpAddr::V4(client), IpAddr::V4(vip)) = (CLIENT, vip(1)) else {
        unreachable!("IPv4 addresses");
    };
    for i in 0..n {
        let mut frame = Vec::new();
        etherparse::PacketBuilder::ethernet2(CLIENT_MAC, L2.outside_mac.0)
            .ipv4(client.octets(), vip.octets(), 64)
            .tcp(40000 + i, 80, 1000, 64240)
            .syn()
            .write(&mut frame, &[])
            .unwrap();
        let header = pcap::PacketHeader {
            ts: libc::timeval {
                tv_sec: 1,
                tv_usec: libc::suseconds_t::from(i) * 10_000,
            },
            caplen: frame.len() as u32,
            len: frame.len() as u32,
        };
        out.write(&pcap::Packet::new(&header, &frame));
    }
    out.flush().unwrap();
}

/// A config with one virtual machine on two real servers, served by `policy`, plugins in `plugins`.
fn policy_config(dir: &Path, policy: &str, plugins: Option<&Path>) -> PathBuf {
    let plugins = plugins.map_or(String::new(), |p| {
        format!("plugins = {:?}\n", p.display().to_string())
    });
    // A generous deadline: these tests check the policies' answers, and a debug build on a loaded machine
    // (CI) has taken more than the default 1 ms for a call, which the round-robin fallback then answered.
    let text = format!(
        "[director]\noutside = \"o\"\ninside = \"i\"\nplugin_deadline = \"100ms\"\n{plugins}\
         [[real]]\nname = \"a\"\naddress = \"10.20.0.10\"\nmac = \"02:00:00:00:02:0a\"\n\
         [[real]]\nname = \"b\"\naddress = \"10.20.0.11\"\nmac = \"02:00:00:00:02:0b\"\n\
         [[virtual]]\nname = \"web\"\naddress = \"192.0.2.1\"\nbind = [\"a:8080\", \"b:8080\"]\n\
           [[virtual.port]]\n  port = 80\n  policy = \"{policy}\"\n"
    );
    let path = dir.join(format!("{policy}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// `vipd replay` of `capture` with `config` (and `extra` arguments): exit status, stdout, stderr.
fn vipd_replay(config: &Path, capture: &Path, extra: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vipd"))
        .arg("replay")
        .arg("--config")
        .arg(config)
        .arg("--outside")
        .arg(capture)
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The real server each forwarded SYN went to, in order (from `vipd replay`'s per-frame lines).
fn servers(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter(|l| l.contains("-> inside"))
        .filter_map(|l| l.rsplit(" > ").next())
        .filter_map(|s| s.split(':').next())
        .map(str::to_owned)
        .collect()
}

/// `vipd replay` runs the policy the config names, as `vipd run` would: a plugin policy (source affinity)
/// keeps one client on one server where the built-in round-robin alternates, and the output says which
/// policy served the port.
#[test]
fn replay_runs_the_configured_plugin_policy() {
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("syns.pcap");
    write_syns(&capture, 6);
    let plugins = built_plugins();

    let (ok, stdout, stderr) = vipd_replay(
        &policy_config(dir.path(), "round-robin", None),
        &capture,
        &[],
    );
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("web 192.0.2.1:80/tcp: policy round-robin (built-in)"),
        "{stdout}"
    );
    let rr = servers(&stdout);
    assert_eq!(rr.len(), 6, "{stdout}");
    assert_eq!(
        rr.iter().collect::<std::collections::BTreeSet<_>>().len(),
        2,
        "round-robin uses both servers: {rr:?}"
    );

    let config = policy_config(dir.path(), "source-affinity", Some(&plugins));
    let (ok, stdout, stderr) = vipd_replay(&config, &capture, &[]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("web 192.0.2.1:80/tcp: policy source-affinity (plugin "),
        "{stdout}"
    );
    let affine = servers(&stdout);
    assert_eq!(affine.len(), 6, "{stdout}");
    assert!(
        affine.iter().all(|s| s == &affine[0]),
        "one client, one server: {affine:?}"
    );

    // --plugins DIR serves a config that names no folder.
    let bare = policy_config(dir.path(), "source-affinity", None);
    let plugins_arg = plugins.display().to_string();
    let (ok, stdout, stderr) = vipd_replay(&bare, &capture, &["--plugins", &plugins_arg]);
    assert!(ok, "{stderr}");
    assert_eq!(servers(&stdout).len(), 6, "{stdout}");
}

/// A policy that is neither built in nor a plugin is refused, with the file, the port and the name, as
/// `vipd run` refuses it; nothing is replayed.
#[test]
fn replay_refuses_an_unknown_policy() {
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("syns.pcap");
    write_syns(&capture, 1);
    let config = policy_config(dir.path(), "no-such-policy", Some(&built_plugins()));
    let (ok, stdout, stderr) = vipd_replay(&config, &capture, &[]);
    assert!(!ok, "refused: {stdout}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("no-such-policy.toml")
            && stderr.contains("port 80")
            && stderr.contains("policy \"no-such-policy\" is no built-in"),
        "{stderr}"
    );
}

/// `vipd replay --policy`: the same capture through round-robin and source affinity, side by side. Round
/// robin spreads one client's 8 connections evenly, source affinity puts them all on one server, so they
/// agree on half of them; each policy's calls are counted and timed; `--json` gives the same for scripts.
#[test]
fn replay_compares_policies_on_a_capture() {
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("syns.pcap");
    write_syns(&capture, 8);
    let plugins = built_plugins();
    let config = policy_config(dir.path(), "round-robin", None);
    let rr = format!("rr={}", plugins.join("round-robin.wasm").display());
    let affine = format!("affine={}", plugins.join("source-affinity.wasm").display());
    let (ok, stdout, stderr) = vipd_replay(
        &config,
        &capture,
        &["--policy", &rr, "--policy", &affine, "--json"],
    );
    assert!(ok, "{stderr}");
    let v: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    let per_real = |i: usize| -> Vec<u64> {
        let m = runs[i]["per_real"].as_object().unwrap();
        let mut counts: Vec<u64> = m.values().map(|c| c.as_u64().unwrap()).collect();
        counts.sort();
        counts
    };
    assert_eq!(per_real(0), [4, 4], "round-robin: {stdout}");
    assert_eq!(per_real(1), [8], "source affinity: {stdout}");
    for run in runs {
        assert_eq!(run["calls"], 8, "one call per connection: {stdout}");
        assert!(run["mean_call_us"].as_f64().unwrap() > 0.0);
    }
    let agreement = &v["agreement"][0];
    assert_eq!(
        (agreement["a"].as_str(), agreement["b"].as_str()),
        (Some("rr"), Some("affine"))
    );
    assert_eq!(
        (agreement["same"].as_u64(), agreement["both"].as_u64()),
        (Some(4), Some(8))
    );

    let (ok, stdout, stderr) =
        vipd_replay(&config, &capture, &["--policy", &rr, "--policy", &affine]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("rr and affine chose the same server for 4 of 8 connections (50.0 %)"),
        "{stdout}"
    );

    let (ok, _, stderr) = vipd_replay(&config, &capture, &["--policy", "bad label=x.wasm"]);
    assert!(!ok);
    assert!(stderr.contains("a label is letters, digits"), "{stderr}");
}
