//! The cost of one selection call (once per new connection) for each shipped selector plugin with 2, 16
//! and 64 candidates, next to the built-in native round-robin. Needs the components built:
//! `plugins/build.sh target/plugins`.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;

use strum::VariantArray;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use vipd::plugin::{CallResult, PluginHandle, PluginHost, PluginLimits};
use vipd::policy::{Candidate, NewConnection, RoundRobin, Selector, ServerState};
use vipd::wire::Protocol;

fn candidates(n: u32) -> Vec<Candidate> {
    (0..n)
        .map(|i| Candidate {
            real_id: i,
            target: SocketAddrV4::new(Ipv4Addr::from(0x0a00_0001 + i), 80).into(),
            weight: 1 + i % 3,
            state: ServerState::Up,
            active: i * 7 % 13,
            total: u64::from(i) * 100,
            syn_rtt_us: 200 + i * 37 % 500,
            ditched: 0,
        })
        .collect()
}

fn conn(i: u32) -> NewConnection {
    NewConnection {
        client: SocketAddrV4::new(Ipv4Addr::from(0xc633_0000 + (i & 0xffff)), 40000).into(),
        virtual_addr: SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 80).into(),
        protocol: Protocol::Tcp,
        virtual_id: 0,
    }
}

fn bench(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins");
    assert!(
        dir.join("round-robin.wasm").exists(),
        "build the plugins first: plugins/build.sh target/plugins"
    );
    // A deadline far above the call cost, so the benchmark measures calls, not fallbacks.
    let host = PluginHost::new(PluginLimits {
        deadline: std::time::Duration::from_millis(100),
        ..PluginLimits::default()
    })
    .unwrap();
    let mut g = c.benchmark_group("select");
    for n in [2u32, 16, 64] {
        let cands = candidates(n);
        let mut i = 0u32;
        let mut native = RoundRobin::new();
        g.bench_with_input(
            BenchmarkId::new("native-round-robin", n),
            &cands,
            |b, cands| {
                b.iter(|| {
                    i = i.wrapping_add(1);
                    native.select(&conn(i), cands)
                })
            },
        );
        for name in [
            "round-robin",
            "least-connections",
            "fastest",
            "maglev",
            "source-affinity",
        ] {
            let plugin = host.load_file(&dir.join(format!("{name}.wasm"))).unwrap();
            let handle = PluginHandle::new(plugin);
            let mut s = host
                .selector(&handle, &[], Ipv4Addr::new(192, 0, 2, 1).into())
                .unwrap();
            for w in 0..500 {
                s.select(&conn(w), &cands); // maglev builds its table over the first calls
            }
            g.bench_with_input(BenchmarkId::new(name, n), &cands, |b, cands| {
                b.iter(|| {
                    i = i.wrapping_add(1);
                    s.select(&conn(i), cands)
                })
            });
            let st = handle.stats();
            let by: Vec<_> = CallResult::VARIANTS
                .iter()
                .map(|&r| (r.as_str(), st.calls(r)))
                .collect();
            if st.fallbacks() > 0 {
                // Only a descheduled thread makes a call outlive a 100 ms deadline; say so, do not hide it.
                eprintln!("note: {name}/{n} fell back during the benchmark: {by:?}");
            }
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
