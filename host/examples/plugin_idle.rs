//! What one `select` call costs after the director was idle for a while: the round-robin plugin, 2
//! candidates, calls after pauses of several lengths (sleeping, or spinning on the same thread), as
//! `vipd_plugin_call_duration_seconds` would see them, and the page faults the calls took (none: the time
//! is not the kernel's). Needs `plugins/build.sh target/plugins`.
//!
//! `cargo run --release -p vipd --example plugin_idle [ROUNDS]` (`PAUSES=1,2,5` sets the pauses, in ms)

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};

use vipd::plugin::{PluginHandle, PluginHost, PluginLimits};
use vipd::policy::{Candidate, NewConnection, Selector};
use vipd::wire::Protocol;

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins");
    let host = PluginHost::new(PluginLimits::default()).unwrap();
    let plugin = host.load_file(&dir.join("round-robin.wasm")).unwrap();
    let handle = PluginHandle::new(plugin);
    let mut s = host
        .selector(&handle, &[], Ipv4Addr::new(192, 0, 2, 1).into())
        .unwrap();
    // Another instance of the same plugin: its call before a timed one warms what the two share (the
    // compiled code, the host's call path), not the timed instance's own memory.
    let other_plugin = std::env::var("OTHER").unwrap_or("round-robin".into());
    let other_handle = PluginHandle::new(
        host.load_file(&dir.join(format!("{other_plugin}.wasm")))
            .unwrap(),
    );
    let mut other = host
        .selector(&other_handle, &[], Ipv4Addr::new(192, 0, 2, 1).into())
        .unwrap();
    let cands: Vec<Candidate> = (0..2)
        .map(|i| {
            let target = SocketAddrV4::new(Ipv4Addr::from(0x0a00_0001 + i), 80);
            Candidate::up(i, target.into(), 1)
        })
        .collect();
    let conn = |i: u32| NewConnection {
        client: SocketAddrV4::new(Ipv4Addr::from(0xc633_0000 + (i & 0xffff)), 40000).into(),
        virtual_addr: SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 80).into(),
        protocol: Protocol::Tcp,
        virtual_id: 0,
    };
    for i in 0..10_000 {
        s.select(&conn(i), &cands);
    }
    let faults = || {
        // SAFETY: a zeroed rusage (integers and timevals) is a valid value.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `u` is a live, writable rusage; getrusage only writes it.
        unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
        u.ru_minflt + u.ru_majflt
    };
    let fault_count = std::cell::Cell::new(0);
    let mut timed = |i: u32| {
        let f = faults();
        let t = Instant::now();
        s.select(&conn(i), &cands);
        let e = t.elapsed();
        fault_count.set(fault_count.get() + faults() - f);
        e
    };
    for i in 0..10_000 {
        other.select(&conn(i), &cands);
    }
    let mut other_first = Vec::new();
    for r in 0..rounds {
        std::thread::sleep(Duration::from_millis(150));
        other.select(&conn(r as u32), &cands);
        other_first.push(timed(r as u32));
    }
    other_first.sort();
    println!(
        "after 150 ms asleep, with another instance called just before: {:.1?} (median)",
        other_first[rounds / 2]
    );
    println!("pause       how     first call   second call   (medians of {rounds})");
    let report_faults = || {
        println!(
            "page faults (minor and major) in all the timed calls: {}",
            fault_count.get()
        )
    };
    let pauses: Vec<u64> = std::env::var("PAUSES")
        .map(|p| p.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|_| vec![0, 1, 10, 50, 150, 300]);
    for pause_ms in pauses {
        for spin in [false, true] {
            let (mut first, mut second) = (Vec::new(), Vec::new());
            for r in 0..rounds {
                let pause = Duration::from_millis(pause_ms);
                if spin {
                    let until = Instant::now() + pause;
                    while Instant::now() < until {
                        std::hint::spin_loop();
                    }
                } else {
                    std::thread::sleep(pause);
                }
                first.push(timed(r as u32));
                second.push(timed(r as u32 + 1));
            }
            first.sort();
            second.sort();
            println!(
                "{pause_ms:>4} ms  {:>6}  {:>10.1?}  {:>12.1?}",
                if spin { "spin" } else { "sleep" },
                first[rounds / 2],
                second[rounds / 2]
            );
        }
    }
    report_faults();
}
