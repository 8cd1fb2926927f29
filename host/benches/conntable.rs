//! Connection table with 1,000,000 connections (capacity 1M): lookups both ways, insert+remove, touch.
//!
//! Run with `cargo bench -p vipd --bench conntable`. Before the benchmarks it prints the bytes per
//! connection: slab entry, index overhead and the measured resident-set growth of a full table.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use vipd::conntable::{ConnId, ConnState, ConnTable, Connection, ENTRY_SIZE, Timeouts};
use vipd::wire::Protocol;

const CAPACITY: usize = 1_000_000;

/// Connection `i` of the benchmark: unique client, one of 4 VIPs, one of 8 real servers.
fn connection(i: u32) -> Connection {
    let client = SocketAddr::from((Ipv4Addr::from(0x0a00_0000 + i), 1024 + (i % 50_000) as u16));
    Connection {
        protocol: Protocol::Tcp,
        client: client.into(),
        virtual_addr: SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1 + (i % 4) as u8), 80)).into(),
        real: SocketAddr::from((Ipv4Addr::new(10, 20, 0, 10 + (i % 8) as u8), 8001)).into(),
        client_mac: vipd::wire::MacAddr([2, 0, 0, 0, 0, 1]),
        real_id: i % 8,
        port_id: i % 4,
        state: ConnState::Established,
        syn_resends: 0,
        fin_seen: 0,
        created: Duration::ZERO.into(),
        last_seen: Duration::ZERO.into(),
        proxy: None,
        placed_by: None,
        adopted: false,
        offloaded: false,
        synced: vipd::conntable::SyncMark::NEVER,
    }
}

/// A fixed pseudo-random permutation of 0..n (xorshift, Fisher-Yates), so lookups miss the cache as
/// traffic from a million clients would.
fn shuffled(n: u32) -> Vec<u32> {
    let mut v: Vec<u32> = (0..n).collect();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    pages * page
}

fn bench(c: &mut Criterion) {
    let rss_before = rss_bytes();
    let started = Instant::now();
    let mut table = ConnTable::new(CAPACITY, Timeouts::default());
    // Full but one: the insert+remove pair keeps the table at 1M at most, with nothing to evict.
    let ids: Vec<ConnId> = (0..CAPACITY as u32 - 1)
        .map(|i| table.insert(connection(i)).unwrap().id)
        .collect();
    let filled = started.elapsed();
    let rss_after = rss_bytes();
    let memory = table.memory_bytes();
    println!(
        "conntable: {} connections filled in {:.0} ms; entry {} B; allocated {} B/connection \
         (entry + {} B index); RSS grew {} B/connection",
        table.len(),
        filled.as_secs_f64() * 1e3,
        ENTRY_SIZE,
        memory / CAPACITY,
        (memory - CAPACITY * ENTRY_SIZE) / CAPACITY,
        (rss_after - rss_before) / CAPACITY,
    );

    let order = shuffled(CAPACITY as u32 - 1);
    let hits: Vec<Connection> = order.iter().map(|&i| connection(i)).collect();
    let misses: Vec<Connection> = order
        .iter()
        .map(|&i| {
            let mut c = connection(i);
            c.client = SocketAddr::from((Ipv4Addr::from(0x0b00_0000 + i), c.client.port())).into();
            c
        })
        .collect();
    let touch_ids: Vec<ConnId> = order.iter().map(|&i| ids[i as usize]).collect();
    let n = hits.len();

    let mut group = c.benchmark_group("conntable_1M");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    let mut i = 0;
    group.bench_function("lookup_inbound_hit", |b| {
        b.iter(|| {
            let k = &hits[i];
            i = if i + 1 == n { 0 } else { i + 1 };
            black_box(table.lookup_inbound(k.protocol, k.client, k.virtual_addr))
        })
    });
    let mut i = 0;
    group.bench_function("lookup_inbound_miss", |b| {
        b.iter(|| {
            let k = &misses[i];
            i = if i + 1 == n { 0 } else { i + 1 };
            black_box(table.lookup_inbound(k.protocol, k.client, k.virtual_addr))
        })
    });
    let mut i = 0;
    group.bench_function("lookup_outbound_hit", |b| {
        b.iter(|| {
            let k = &hits[i];
            i = if i + 1 == n { 0 } else { i + 1 };
            black_box(table.lookup_outbound(k.protocol, k.real, k.client))
        })
    });
    let mut i = 0;
    let mut now = Duration::ZERO;
    group.bench_function("touch", |b| {
        b.iter(|| {
            now += Duration::from_nanos(1);
            table.touch(touch_ids[i], now);
            i = if i + 1 == n { 0 } else { i + 1 };
        })
    });
    let mut i = 0;
    group.bench_function("insert_remove", |b| {
        b.iter(|| {
            let id = table.insert(misses[i]).unwrap().id;
            i = if i + 1 == n { 0 } else { i + 1 };
            black_box(table.remove(id))
        })
    });
    group.finish();
    assert_eq!(table.len(), CAPACITY - 1);
}

criterion_group!(benches, bench);
criterion_main!(benches);
