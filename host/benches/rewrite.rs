//! Per-packet cost of the translation fast path: parse, rewrite in place with incremental checksums, set MACs;
//! and of the full transport checksum check that frames creating state pay on top.
//!
//! `cargo bench -p vipd --bench rewrite`. Frames are built once; each iteration translates the same buffer,
//! alternating between two targets so every rewrite really changes bytes and checksums stay valid.

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use etherparse::PacketBuilder;
use vipd::wire;

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const REALS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 1, 0, 21), Ipv4Addr::new(10, 1, 0, 22)];
const PORTS: [u16; 2] = [8001, 8002];
const DIRECTOR_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xd1];
const SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x51];

/// A TCP ACK frame of exactly `frame_len` bytes (54 bytes of headers plus payload).
fn tcp_frame(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, frame_len: usize) -> Vec<u8> {
    let payload = vec![0x5a; frame_len - 54];
    let mut v = Vec::with_capacity(frame_len);
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xc1], DIRECTOR_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1, 64240)
        .ack(1)
        .write(&mut v, &payload)
        .expect("frame builds");
    v
}

/// A SYN frame of exactly `frame_len` bytes: 54 bytes of headers plus data (as with TCP Fast Open), the
/// same shape as [`tcp_frame`]; the checksum's cost depends only on the length.
fn syn_frame(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, frame_len: usize) -> Vec<u8> {
    let payload = vec![0x5a; frame_len - 54];
    let mut v = Vec::with_capacity(frame_len);
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xc1], DIRECTOR_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1, 64240)
        .syn()
        .write(&mut v, &payload)
        .expect("frame builds");
    v
}

/// A UDP frame with `payload_len` bytes of payload.
fn udp_frame(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload_len: usize) -> Vec<u8> {
    let payload = vec![0xa5; payload_len];
    let mut v = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xc1], DIRECTOR_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(sport, dport)
        .write(&mut v, &payload)
        .expect("frame builds");
    v
}

fn verify(c: &mut Criterion) {
    let mut g = c.benchmark_group("verify transport_checksum_ok");
    let cases = [
        ("tcp syn 64 B", syn_frame(CLIENT, VIP, 40000, 80, 64)),
        ("tcp 1514 B", tcp_frame(CLIENT, VIP, 40000, 80, 1514)),
        // A QUIC client's first datagram carries at least 1200 bytes (RFC 9000 §14.1).
        ("udp 1242 B", udp_frame(CLIENT, VIP, 40000, 443, 1200)),
    ];
    for (name, frame) in cases {
        let p = wire::parse(&frame).expect("valid frame");
        assert!(wire::transport_checksum_ok(&frame, &p), "{name} verifies");
        g.throughput(Throughput::Elements(1));
        g.bench_function(name, |b| {
            b.iter(|| wire::transport_checksum_ok(black_box(&frame), black_box(&p)))
        });
    }
    g.finish();
}

fn inbound(c: &mut Criterion) {
    let mut g = c.benchmark_group("inbound parse+rewrite_destination+set_macs");
    for len in [64usize, 1514] {
        let mut frame = tcp_frame(CLIENT, VIP, 40000, 80, len);
        let mut i = 0usize;
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("tcp {len} B"), |b| {
            b.iter(|| {
                i ^= 1;
                let p = wire::parse(black_box(&frame)).expect("valid frame");
                wire::rewrite_destination(&mut frame, &p, REALS[i], PORTS[i]);
                wire::set_macs(&mut frame, DIRECTOR_MAC.into(), SERVER_MAC.into());
                black_box(&frame);
            })
        });
    }
    g.finish();
}

fn outbound(c: &mut Criterion) {
    let mut g = c.benchmark_group("outbound parse+rewrite_source+set_macs");
    for len in [64usize, 1514] {
        let mut frame = tcp_frame(REALS[0], CLIENT, 8001, 40000, len);
        let sources = [VIP, REALS[0]];
        let ports = [80, 8001];
        let mut i = 0usize;
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("tcp {len} B"), |b| {
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
    let mut g = c.benchmark_group("steps 64 B");
    let mut frame = tcp_frame(CLIENT, VIP, 40000, 80, 64);
    let p = wire::parse(&frame).expect("valid frame");
    g.bench_function("parse", |b| b.iter(|| wire::parse(black_box(&frame))));
    let mut i = 0usize;
    g.bench_function("rewrite_destination", |b| {
        b.iter(|| {
            i ^= 1;
            wire::rewrite_destination(black_box(&mut frame), &p, REALS[i], PORTS[i]);
        })
    });
    g.bench_function("rewrite_source", |b| {
        b.iter(|| {
            i ^= 1;
            wire::rewrite_source(black_box(&mut frame), &p, REALS[i], PORTS[i]);
        })
    });
    g.finish();
}

criterion_group!(benches, inbound, outbound, steps, verify);
criterion_main!(benches);
