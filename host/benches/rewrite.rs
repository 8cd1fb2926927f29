//! Per-packet cost of the translation fast path: parse, rewrite in place with incremental checksums, set MACs;
//! and of the full transport checksum check that frames creating state pay on top. Each for IPv4 and IPv6.
//!
//! `cargo bench -p vipd --bench rewrite`. Frames are built once; each iteration translates the same buffer,
//! alternating between two targets so every rewrite really changes bytes and checksums stay valid.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use etherparse::{IpHeaders, PacketBuilder, PacketBuilderStep};
use vipd::wire;

const PORTS: [u16; 2] = [8001, 8002];
const DIRECTOR_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xd1];
const SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x51];

/// The addresses of one family's run.
#[derive(Clone, Copy)]
struct Family {
    name: &'static str,
    client: IpAddr,
    vip: IpAddr,
    reals: [IpAddr; 2],
    /// Ethernet, IP and TCP header bytes of a frame without options.
    headers: usize,
}

fn families() -> [Family; 2] {
    let v6 = |last| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, last));
    [
        Family {
            name: "ipv4",
            client: Ipv4Addr::new(198, 51, 100, 7).into(),
            vip: Ipv4Addr::new(203, 0, 113, 10).into(),
            reals: [
                Ipv4Addr::new(10, 1, 0, 21).into(),
                Ipv4Addr::new(10, 1, 0, 22).into(),
            ],
            headers: 54,
        },
        Family {
            name: "ipv6",
            client: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 7)),
            vip: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 10)),
            reals: [v6(21), v6(22)],
            headers: 74,
        },
    ]
}

fn ip(src: IpAddr, dst: IpAddr) -> PacketBuilderStep<IpHeaders> {
    let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xc1], DIRECTOR_MAC);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("one family"),
    }
}

/// A TCP ACK frame of exactly `frame_len` bytes (headers plus payload).
fn tcp_frame(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, frame_len: usize) -> Vec<u8> {
    let headers = if src.is_ipv6() { 74 } else { 54 };
    let payload = vec![0x5a; frame_len - headers];
    let mut v = Vec::with_capacity(frame_len);
    ip(src, dst)
        .tcp(sport, dport, 1, 64240)
        .ack(1)
        .write(&mut v, &payload)
        .expect("frame builds");
    v
}

/// A SYN frame of exactly `frame_len` bytes: headers plus data (as with TCP Fast Open), the same shape as
/// [`tcp_frame`]; the checksum's cost depends only on the length.
fn syn_frame(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, frame_len: usize) -> Vec<u8> {
    let headers = if src.is_ipv6() { 74 } else { 54 };
    let payload = vec![0x5a; frame_len - headers];
    let mut v = Vec::with_capacity(frame_len);
    ip(src, dst)
        .tcp(sport, dport, 1, 64240)
        .syn()
        .write(&mut v, &payload)
        .expect("frame builds");
    v
}

/// A UDP frame with `payload_len` bytes of payload.
fn udp_frame(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, payload_len: usize) -> Vec<u8> {
    let payload = vec![0xa5; payload_len];
    let mut v = Vec::new();
    ip(src, dst)
        .udp(sport, dport)
        .write(&mut v, &payload)
        .expect("frame builds");
    v
}

fn verify(c: &mut Criterion) {
    let mut g = c.benchmark_group("verify transport_checksum_ok");
    for f in families() {
        let (small, udp_len) = (f.headers + 10, f.headers - 12 + 1200);
        let cases = [
            (
                format!("{} tcp syn {small} B", f.name),
                syn_frame(f.client, f.vip, 40000, 80, small),
            ),
            (
                format!("{} tcp 1514 B", f.name),
                tcp_frame(f.client, f.vip, 40000, 80, 1514),
            ),
            // A QUIC client's first datagram carries at least 1200 bytes (RFC 9000 §14.1).
            (
                format!("{} udp {udp_len} B", f.name),
                udp_frame(f.client, f.vip, 40000, 443, 1200),
            ),
        ];
        for (name, frame) in cases {
            let p = wire::parse(&frame).expect("valid frame");
            assert!(wire::transport_checksum_ok(&frame, &p), "{name} verifies");
            g.throughput(Throughput::Elements(1));
            g.bench_function(name, |b| {
                b.iter(|| wire::transport_checksum_ok(black_box(&frame), black_box(&p)))
            });
        }
    }
    g.finish();
}

/// (family, frame length) of the translation benches: the smallest frame of each family (64 B for IPv4,
/// 84 B for IPv6: same 10-byte payload) and a full 1514-byte one.
fn sizes() -> Vec<(Family, usize)> {
    families()
        .into_iter()
        .flat_map(|f| {
            let small = f.headers + 10;
            [small, 1514].map(|len| (f, len))
        })
        .collect()
}

fn inbound(c: &mut Criterion) {
    let mut g = c.benchmark_group("inbound parse+rewrite_destination+set_macs");
    for (f, len) in sizes() {
        let mut frame = tcp_frame(f.client, f.vip, 40000, 80, len);
        let reals = f.reals;
        let mut i = 0usize;
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("{} tcp {len} B", f.name), |b| {
            b.iter(|| {
                i ^= 1;
                let p = wire::parse(black_box(&frame)).expect("valid frame");
                wire::rewrite_destination(&mut frame, &p, reals[i], PORTS[i]);
                wire::set_macs(&mut frame, DIRECTOR_MAC.into(), SERVER_MAC.into());
                black_box(&frame);
            })
        });
    }
    g.finish();
}

fn outbound(c: &mut Criterion) {
    let mut g = c.benchmark_group("outbound parse+rewrite_source+set_macs");
    for (f, len) in sizes() {
        let mut frame = tcp_frame(f.reals[0], f.client, 8001, 40000, len);
        let sources = [f.vip, f.reals[0]];
        let ports = [80, 8001];
        let mut i = 0usize;
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("{} tcp {len} B", f.name), |b| {
            b.iter(|| {
                i ^= 1;
                let p = wire::parse(black_box(&frame)).expect("valid frame");
                wire::rewrite_source(&mut frame, &p, sources[i], ports[i]);
                wire::set_macs(&mut frame, SERVER_MAC.into(), DIRECTOR_MAC.into());
                black_box(&frame);
            })
        });
    }
    g.finish();
}

fn steps(c: &mut Criterion) {
    let mut g = c.benchmark_group("steps smallest frame");
    for f in families() {
        let mut frame = tcp_frame(f.client, f.vip, 40000, 80, f.headers + 10);
        let p = wire::parse(&frame).expect("valid frame");
        let name = f.name;
        g.bench_function(format!("{name} parse"), |b| {
            b.iter(|| wire::parse(black_box(&frame)))
        });
        let mut i = 0usize;
        let reals = f.reals;
        g.bench_function(format!("{name} rewrite_destination"), |b| {
            b.iter(|| {
                i ^= 1;
                wire::rewrite_destination(black_box(&mut frame), &p, reals[i], PORTS[i]);
            })
        });
        g.bench_function(format!("{name} rewrite_source"), |b| {
            b.iter(|| {
                i ^= 1;
                wire::rewrite_source(black_box(&mut frame), &p, reals[i], PORTS[i]);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, inbound, outbound, steps, verify);
criterion_main!(benches);
