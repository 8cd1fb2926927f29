//! Cost of the whole packet path per frame, counters included: `Director::handle` on established
//! connections (lookup, state tracking, rewrite, MACs, counters), and the cost of opening a connection
//! (SYN: binding lookup, policy, table insert).
//!
//! `cargo bench -p vipd --bench director`. The table holds `TABLE` connections so lookups miss caches as
//! they would in production.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use etherparse::PacketBuilder;
use vipd::Interface;
use vipd::assemble::Assembly;
use vipd::config::Config;
use vipd::director::{Director, Layer2, Verdict};
use vipd::wire::MacAddr;

const TABLE: u16 = 50_000;
const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
const L2: Layer2 = Layer2 {
    outside_mac: MacAddr([2, 0, 0, 0, 0, 1]),
    inside_mac: MacAddr([2, 0, 0, 0, 0, 2]),
    inside_ip: Ipv4Addr::UNSPECIFIED,
};
const HOST_A: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 10);
const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

/// The patent fixture's director, assembled as `vipd run` would (its policies are built-in).
fn director() -> Director {
    let text = include_str!("../../tests/fixtures/patent.toml");
    let path = Path::new("patent.toml");
    let mut config = Config::parse(text, path).expect("fixture config");
    config.director.max_connections = 1 << 20;
    Assembly::new(path, config, None)
        .expect("fixture assembles")
        .director(L2)
}

/// A TCP segment from client `n` (by address and port) to the VIP, or from host-a back to it.
fn segment(n: u16, inbound: bool, syn: bool, ack: bool) -> Vec<u8> {
    let client = Ipv4Addr::new(198, 51, (n >> 8) as u8 + 1, n as u8);
    let port = 10_000 + n;
    let mut v = Vec::new();
    let b = if inbound {
        PacketBuilder::ethernet2(CLIENT_MAC, L2.outside_mac.0)
            .ipv4(client.octets(), VIP.octets(), 64)
            .tcp(port, 80, 1, 64240)
    } else {
        PacketBuilder::ethernet2([2, 0, 0, 0, 2, 0x0a], L2.inside_mac.0)
            .ipv4(HOST_A.octets(), client.octets(), 64)
            .tcp(8001, port, 1, 64240)
    };
    let b = if syn { b.syn() } else { b };
    let b = if ack { b.ack(2) } else { b };
    b.write(&mut v, &[]).expect("frame builds");
    v
}

fn established(c: &mut Criterion) {
    let mut director = director();
    let now = Duration::from_secs(1);
    for n in 0..TABLE {
        let mut syn = segment(n, true, true, false);
        assert_eq!(
            director.handle(Interface::Outside, &mut syn, now),
            Verdict::Forward(Interface::Inside)
        );
        let mut syn_ack = segment(n, false, true, true);
        director.handle(Interface::Inside, &mut syn_ack, now);
    }
    let inbound: Vec<Vec<u8>> = (0..TABLE).map(|n| segment(n, true, false, true)).collect();
    let outbound: Vec<Vec<u8>> = (0..TABLE).map(|n| segment(n, false, false, true)).collect();
    let mut g = c.benchmark_group("director");
    g.throughput(Throughput::Elements(1));
    let mut frame = [0u8; 64];
    let mut i = 0usize;
    g.bench_function(format!("established inbound, {TABLE} connections"), |b| {
        b.iter(|| {
            i = (i + 7919) % inbound.len();
            let src = &inbound[i];
            frame[..src.len()].copy_from_slice(src);
            black_box(director.handle(Interface::Outside, &mut frame[..src.len()], now))
        })
    });
    g.bench_function(format!("established outbound, {TABLE} connections"), |b| {
        b.iter(|| {
            i = (i + 7919) % outbound.len();
            let src = &outbound[i];
            frame[..src.len()].copy_from_slice(src);
            black_box(director.handle(Interface::Inside, &mut frame[..src.len()], now))
        })
    });
    g.finish();
}

fn new_connection(c: &mut Criterion) {
    let mut director = director();
    let syns: Vec<Vec<u8>> = (0..TABLE).map(|n| segment(n, true, true, false)).collect();
    let mut g = c.benchmark_group("director");
    g.throughput(Throughput::Elements(1));
    let mut frame = [0u8; 64];
    let mut i = 0usize;
    let mut now = Duration::from_secs(1);
    // Each SYN opens a connection; the 10 s SYN timeout and `expire` keep the table from filling.
    g.bench_function("SYN opening a connection (built-in round-robin)", |b| {
        b.iter(|| {
            i += 1;
            if i == syns.len() {
                i = 0;
                now += Duration::from_secs(60);
                director.expire(now, usize::MAX);
            }
            let src = &syns[i];
            frame[..src.len()].copy_from_slice(src);
            black_box(director.handle(Interface::Outside, &mut frame[..src.len()], now))
        })
    });
    g.finish();
}

criterion_group!(benches, established, new_connection);
criterion_main!(benches);
