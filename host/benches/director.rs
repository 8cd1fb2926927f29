//! Cost of the whole packet path per frame, counters included: `Director::handle` on established
//! connections (lookup, state tracking, rewrite, MACs, counters), and the cost of opening a connection
//! (SYN: binding lookup, policy, table insert), and what connection sync adds to a connection's handshake
//! (`[sync]` as an active director: the SYN-ACK's record and, at expiry, the delete, handed to a thread that
//! takes them as the sync thread would).
//!
//! `cargo bench -p vipd --bench director`. The table holds `TABLE` connections so lookups miss caches as
//! they would in production. Each for IPv4 (the patent fixture) and IPv6 (its IPv6 twin).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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

/// One family's run: its fixture and addresses.
#[derive(Clone, Copy)]
struct Family {
    name: &'static str,
    config: &'static str,
    host_a: IpAddr,
    vip: IpAddr,
}

const FAMILIES: [Family; 2] = [
    Family {
        name: "ipv4",
        config: include_str!("../../tests/fixtures/patent.toml"),
        host_a: IpAddr::V4(Ipv4Addr::new(10, 20, 0, 10)),
        vip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
    },
    Family {
        name: "ipv6",
        config: include_str!("../../tests/fixtures/ipv6.toml"),
        host_a: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10)),
        vip: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 1)),
    },
];

/// The fixture's director, assembled as `vipd run` would (its policies are built-in).
fn director(f: Family) -> Director {
    let path = Path::new("fixture.toml");
    let mut config = Config::parse(f.config, path).expect("fixture config");
    config.director.max_connections = 1 << 20;
    Assembly::new(path, config, None)
        .expect("fixture assembles")
        .director(L2)
}

/// Client `n`'s address in the family of `f`.
fn client(f: Family, n: u16) -> IpAddr {
    match f.vip {
        IpAddr::V4(_) => Ipv4Addr::new(198, 51, (n >> 8) as u8 + 1, n as u8).into(),
        IpAddr::V6(_) => Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 1, n).into(),
    }
}

/// A TCP segment from client `n` (by address and port) to the VIP, or from host-a back to it.
fn segment(f: Family, n: u16, inbound: bool, syn: bool, ack: bool) -> Vec<u8> {
    let client = client(f, n);
    let port = 10_000 + n;
    let (src_mac, dst_mac, src, dst) = if inbound {
        (CLIENT_MAC, L2.outside_mac.0, client, f.vip)
    } else {
        ([2, 0, 0, 0, 2, 0x0a], L2.inside_mac.0, f.host_a, client)
    };
    let eth = PacketBuilder::ethernet2(src_mac, dst_mac);
    let ip = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => unreachable!("one family"),
    };
    let b = if inbound {
        ip.tcp(port, 80, 1, 64240)
    } else {
        ip.tcp(8001, port, 1, 64240)
    };
    let b = if syn { b.syn() } else { b };
    let b = if ack { b.ack(2) } else { b };
    let mut v = Vec::new();
    b.write(&mut v, &[]).expect("frame builds");
    v
}

fn established(c: &mut Criterion) {
    for f in FAMILIES {
        established_of(c, f);
    }
}

fn established_of(c: &mut Criterion, f: Family) {
    let mut director = director(f);
    let now = Duration::from_secs(1);
    for n in 0..TABLE {
        let mut syn = segment(f, n, true, true, false);
        assert_eq!(
            director.handle(Interface::Outside, &mut syn, now),
            Verdict::Forward(Interface::Inside)
        );
        let mut syn_ack = segment(f, n, false, true, true);
        director.handle(Interface::Inside, &mut syn_ack, now);
    }
    let inbound: Vec<Vec<u8>> = (0..TABLE)
        .map(|n| segment(f, n, true, false, true))
        .collect();
    let outbound: Vec<Vec<u8>> = (0..TABLE)
        .map(|n| segment(f, n, false, false, true))
        .collect();
    let mut g = c.benchmark_group("director");
    g.throughput(Throughput::Elements(1));
    let mut frame = [0u8; 128];
    let mut i = 0usize;
    let name = f.name;
    g.bench_function(
        format!("{name} established inbound, {TABLE} connections"),
        |b| {
            b.iter(|| {
                i = (i + 7919) % inbound.len();
                let src = &inbound[i];
                frame[..src.len()].copy_from_slice(src);
                black_box(director.handle(Interface::Outside, &mut frame[..src.len()], now))
            })
        },
    );
    g.bench_function(
        format!("{name} established outbound, {TABLE} connections"),
        |b| {
            b.iter(|| {
                i = (i + 7919) % outbound.len();
                let src = &outbound[i];
                frame[..src.len()].copy_from_slice(src);
                black_box(director.handle(Interface::Inside, &mut frame[..src.len()], now))
            })
        },
    );
    g.finish();
}

fn new_connection(c: &mut Criterion) {
    for f in FAMILIES {
        new_connection_of(c, f);
    }
}

fn new_connection_of(c: &mut Criterion, f: Family) {
    let mut director = director(f);
    let syns: Vec<Vec<u8>> = (0..TABLE)
        .map(|n| segment(f, n, true, true, false))
        .collect();
    let mut g = c.benchmark_group("director");
    g.throughput(Throughput::Elements(1));
    let mut frame = [0u8; 128];
    let mut i = 0usize;
    let mut now = Duration::from_secs(1);
    // Each SYN opens a connection; the 10 s SYN timeout and `expire` keep the table from filling.
    let name = format!("{} SYN opening a connection (built-in round-robin)", f.name);
    g.bench_function(name, |b| {
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

/// SYN and SYN-ACK of a new connection (the SYN-ACK is when an active director sends the connection to its
/// peers), without and with `[sync]`; expiry (a delete record each, with sync) is in the measurement.
fn handshake_sync(c: &mut Criterion) {
    let f = FAMILIES[0];
    let mut g = c.benchmark_group("director");
    g.throughput(Throughput::Elements(1));
    for synced in [false, true] {
        let mut director = director(f);
        let taker = synced.then(|| {
            let stats = vipd::sync::SyncStats::new(vipd::config::Role::Active);
            let ((tx, inbox), (out, _in_tx)) = vipd::sync::queues(stats);
            director.set_sync(tx, inbox, vipd::config::Role::Active);
            // As the sync thread: it polls the queue between waits on its socket (never blocked on the
            // queue, so a send wakes nobody).
            std::thread::spawn(move || {
                let mut taken = 0usize;
                loop {
                    loop {
                        match out.try_recv() {
                            Ok(m) => {
                                black_box(m);
                                taken += 1;
                            }
                            Err(std::sync::mpsc::TryRecvError::Empty) => break,
                            Err(std::sync::mpsc::TryRecvError::Disconnected) => return taken,
                        }
                    }
                    std::thread::sleep(Duration::from_micros(500));
                }
            })
        });
        let syns: Vec<Vec<u8>> = (0..TABLE)
            .map(|n| segment(f, n, true, true, false))
            .collect();
        let syn_acks: Vec<Vec<u8>> = (0..TABLE)
            .map(|n| segment(f, n, false, true, true))
            .collect();
        let mut frame = [0u8; 128];
        let mut i = 0usize;
        let mut now = Duration::from_secs(1);
        let name = format!(
            "{} SYN + SYN-ACK, sync {}",
            f.name,
            if synced { "on (active)" } else { "off" }
        );
        g.bench_function(name, |b| {
            b.iter(|| {
                i += 1;
                if i == syns.len() {
                    i = 0;
                    now += Duration::from_secs(60);
                    director.expire(now, usize::MAX);
                }
                let src = &syns[i];
                frame[..src.len()].copy_from_slice(src);
                black_box(director.handle(Interface::Outside, &mut frame[..src.len()], now));
                let src = &syn_acks[i];
                frame[..src.len()].copy_from_slice(src);
                black_box(director.handle(Interface::Inside, &mut frame[..src.len()], now))
            })
        });
        let dropped = director.counters().sync_dropped;
        drop(director);
        if let Some(taker) = taker {
            let taken = taker.join().unwrap_or(0);
            println!("sync: {taken} messages taken, dropped (queue full) {dropped:?}");
        }
    }
    g.finish();
}

criterion_group!(benches, established, new_connection, handshake_sync);
criterion_main!(benches);
