//! Tests on the real plugin components, built by `plugins/build.sh target/plugins --testing` (the Makefile's
//! `make test` does it first). `VIPD_TEST_PLUGINS` overrides the folder.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::*;
use crate::policy::{Candidate, NewConnection, Selection, Selector, ServerState};
use crate::wire::Protocol;
use strum::VariantArray;

fn plugins_dir() -> PathBuf {
    let dir = std::env::var_os("VIPD_TEST_PLUGINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins"));
    assert!(
        dir.join("round-robin.wasm").exists() && dir.join("testing/misbehave.wasm").exists(),
        "the plugin components are not built in {}: run `plugins/build.sh target/plugins --testing` \
         (or `make test`) first",
        dir.display()
    );
    dir
}

fn path(name: &str) -> PathBuf {
    plugins_dir().join(format!("{name}.wasm"))
}

/// One host for all tests, and each file compiled once (compiling is the slow part). Its deadline is generous
/// so a busy test machine does not turn slow calls into timeouts; the deadline test has its own host.
fn host() -> &'static PluginHost {
    static HOST: OnceLock<PluginHost> = OnceLock::new();
    HOST.get_or_init(|| {
        PluginHost::new(PluginLimits {
            deadline: Duration::from_millis(50),
            ..PluginLimits::default()
        })
        .unwrap()
    })
}

fn loaded(name: &str) -> LoadedPlugin {
    static CACHE: OnceLock<Mutex<HashMap<String, LoadedPlugin>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    if let Some(p) = cache.lock().unwrap().get(name) {
        return p.clone();
    }
    let p = host().load_file(&path(name)).unwrap();
    cache.lock().unwrap().insert(name.to_string(), p.clone());
    p
}

fn args(kv: &[(&str, &str)]) -> Vec<(String, String)> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn selector(name: &str, a: &[(&str, &str)]) -> PluginSelector {
    host()
        .selector(&PluginHandle::new(loaded(name)), &args(a))
        .unwrap()
}

fn candidate(real_id: u32, weight: u32) -> Candidate {
    Candidate {
        real_id,
        target: SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1 + real_id as u8), 80)),
        weight,
        state: ServerState::Up,
        active: 0,
        total: 0,
        syn_rtt_us: 0,
        ditched: 0,
    }
}

fn conn(client: u32) -> NewConnection {
    NewConnection {
        client: SocketAddr::from((Ipv4Addr::from(0xc633_0000 + client), 40000)),
        virtual_addr: SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 80)),
        protocol: Protocol::Tcp,
        virtual_id: 0,
    }
}

fn pick(s: &mut PluginSelector, client: u32, c: &[Candidate]) -> usize {
    match s.select(&conn(client), c) {
        Selection::Pick(i) => i,
        Selection::Reject => panic!("rejected"),
    }
}

/// Picks per candidate over `n` new connections from distinct clients, counting them into `total`.
fn split(s: &mut PluginSelector, c: &mut [Candidate], n: u32) -> Vec<u32> {
    let mut count = vec![0; c.len()];
    for client in 0..n {
        let i = pick(s, client, c);
        c[i].total += 1;
        count[i] += 1;
    }
    count
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// round-robin: weights 3:1 give exactly 3:1.
#[test]
fn round_robin_weighted() {
    let mut s = selector("round-robin", &[]);
    let mut c = [candidate(0, 3), candidate(1, 1)];
    assert_eq!(split(&mut s, &mut c, 400), [300, 100]);
    assert_eq!(s.plugin().stats().calls(CallResult::Ok), 400);
    assert_eq!(s.plugin().stats().fallbacks(), 0);
}

/// least-connections: short connections split 3:1 by weight; a server holding connections is avoided.
#[test]
fn least_connections_weighted_and_avoids_busy() {
    let mut s = selector("least-connections", &[]);
    let mut c = [candidate(0, 3), candidate(1, 1)];
    assert_eq!(split(&mut s, &mut c, 400), [300, 100]);
    c[0].active = 100;
    assert_eq!(pick(&mut s, 1, &c), 1);
}

/// fastest: the lower SYN RTT takes nearly everything (1 in 20 explores).
#[test]
fn fastest_prefers_low_rtt() {
    let mut s = selector("fastest", &[]);
    let mut c = [candidate(0, 1), candidate(1, 1)];
    c[0].syn_rtt_us = 4000;
    c[1].syn_rtt_us = 300;
    let n = split(&mut s, &mut c, 400);
    assert!(n[1] >= 340, "{n:?}");
}

/// source-affinity: a client comes back to its server; many clients split 3:1.
#[test]
fn source_affinity_sticky() {
    let mut s = selector("source-affinity", &[("timeout_secs", "60")]);
    let mut c = [candidate(0, 3), candidate(1, 1)];
    let first: Vec<_> = (0..50).map(|client| pick(&mut s, client, &c)).collect();
    let again: Vec<_> = (0..50).map(|client| pick(&mut s, client, &c)).collect();
    assert_eq!(first, again);
    let n = split(&mut s, &mut c, 400);
    assert_eq!(n, [300, 100]);
}

/// maglev: the same client keeps its server; 3:1 weights give about 3:1 of the clients; failing one of 8
/// servers moves about 1/8 of the clients.
#[test]
fn maglev_consistent() {
    let mut s = selector("maglev", &[]);
    let mut c = [candidate(0, 3), candidate(1, 1)];
    for _ in 0..200 {
        pick(&mut s, 0, &c); // let the table build
    }
    let n = split(&mut s, &mut c, 4000);
    let share = f64::from(n[0]) / 4000.0;
    assert!((share - 0.75).abs() < 0.03, "{n:?}");
    assert_eq!(s.plugin().stats().fallbacks(), 0);

    let mut c: Vec<_> = (0..8).map(|i| candidate(i, 1)).collect();
    for _ in 0..200 {
        pick(&mut s, 0, &c);
    }
    let before: Vec<_> = (0..4000).map(|client| pick(&mut s, client, &c)).collect();
    assert_eq!(
        before,
        (0..4000)
            .map(|client| pick(&mut s, client, &c))
            .collect::<Vec<_>>()
    );
    c[3].state = ServerState::Failed;
    for _ in 0..200 {
        pick(&mut s, 0, &c);
    }
    let after: Vec<_> = (0..4000).map(|client| pick(&mut s, client, &c)).collect();
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    let frac = moved as f64 / 4000.0;
    assert!((frac - 0.125).abs() < 0.04, "moved {frac}");
}

fn misbehave(mode: &str) -> PluginSelector {
    selector("testing/misbehave", &[("mode", mode)])
}

/// A plugin that traps: round-robin serves the connection and the trap is counted.
#[test]
fn trap_falls_back() {
    let mut s = misbehave("trap");
    let c = [candidate(0, 1), candidate(1, 1)];
    let picks: Vec<_> = (0..2).map(|i| pick(&mut s, i, &c)).collect();
    assert_eq!(picks, [0, 1]);
    assert_eq!(s.plugin().stats().calls(CallResult::Trap), 2);
}

/// A plugin that loops forever is stopped at its deadline (the default, 1 ms): the call returns within a
/// few ms.
#[test]
fn endless_loop_hits_deadline() {
    let host = PluginHost::new(PluginLimits::default()).unwrap();
    let h = PluginHandle::new(host.load_file(&path("testing/misbehave")).unwrap());
    let mut s = host.selector(&h, &args(&[("mode", "spin")])).unwrap();
    let c = [candidate(0, 1)];
    let t = Instant::now();
    assert_eq!(pick(&mut s, 0, &c), 0);
    let took = t.elapsed();
    assert!(took < Duration::from_millis(30), "took {took:?}");
    assert_eq!(s.plugin().stats().calls(CallResult::Timeout), 1);
}

/// The epoch ticker ticks while a plugin runs and for `LINGER` after (so calls under load need not wake it),
/// and sleeps once no plugin has run for that long.
#[test]
fn epoch_ticker_ticks_only_during_calls_and_linger() {
    let host = PluginHost::new(PluginLimits::default()).unwrap();
    let h = PluginHandle::new(host.load_file(&path("testing/misbehave")).unwrap());
    let before = host.epoch_ticks();
    // `init` is a call: the ticker lingers after it.
    let mut s = host.selector(&h, &args(&[("mode", "spin")])).unwrap();
    std::thread::sleep(super::LINGER / 2);
    assert!(host.epoch_ticks() > before + 2, "no ticks while lingering");
    std::thread::sleep(super::LINGER);
    let idle = host.epoch_ticks();
    // A window in which a free-running ticker (every 500 µs) would tick about 100 times.
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        host.epoch_ticks() <= idle + 1,
        "ticked {} times while idle",
        host.epoch_ticks() - idle
    );
    let c = [candidate(0, 1)];
    assert_eq!(pick(&mut s, 0, &c), 0);
    assert_eq!(
        s.plugin().stats().calls(CallResult::Timeout),
        1,
        "the spinning call was interrupted"
    );
    assert!(host.epoch_ticks() >= idle + 2);
}

/// A plugin that allocates without bound hits its memory limit and traps; counted as memory.
#[test]
fn unbounded_allocation_hits_memory_limit() {
    let mut s = misbehave("hog");
    let c = [candidate(0, 1)];
    assert_eq!(pick(&mut s, 0, &c), 0);
    let st = s.plugin().stats();
    let r: Vec<_> = CallResult::VARIANTS
        .iter()
        .map(|&r| (r, st.calls(r)))
        .collect();
    assert_eq!(st.calls(CallResult::Memory), 1, "{r:?}");
}

/// An index out of range or an ineligible server is a bad answer: round-robin serves an eligible one.
#[test]
fn bad_answers_fall_back() {
    let mut c = [candidate(0, 1), candidate(1, 1)];
    let mut s = misbehave("out-of-range");
    assert!(pick(&mut s, 0, &c) < 2);
    c[0].state = ServerState::Failed;
    let mut s = misbehave("ineligible");
    assert_eq!(pick(&mut s, 0, &c), 1);
    assert_eq!(s.plugin().stats().calls(CallResult::BadAnswer), 1);
}

/// After QUARANTINE_AFTER failures in a row the plugin is not called any more, until a new version loads.
#[test]
fn quarantine_until_new_version() {
    let handle = PluginHandle::new(loaded("testing/misbehave"));
    let mut s = host()
        .selector(&handle, &args(&[("mode", "trap")]))
        .unwrap();
    let c = [candidate(0, 1)];
    for i in 0..10 {
        pick(&mut s, i, &c);
    }
    let stats = handle.stats();
    assert!(s.is_quarantined());
    assert_eq!(stats.calls(CallResult::Trap), u64::from(QUARANTINE_AFTER));
    assert_eq!(
        stats.calls(CallResult::Quarantined),
        10 - u64::from(QUARANTINE_AFTER)
    );
    handle.publish(host().load_file(&path("testing/misbehave")).unwrap());
    pick(&mut s, 0, &c);
    assert!(!s.is_quarantined());
    assert_eq!(
        stats.calls(CallResult::Trap),
        u64::from(QUARANTINE_AFTER) + 1
    );
}

/// A refused init is an error at configuration time, with the plugin's reason.
#[test]
fn init_refusal_is_a_config_error() {
    let h = PluginHandle::new(loaded("testing/misbehave"));
    let e = host()
        .selector(&h, &args(&[("mode", "fail-init")]))
        .err()
        .unwrap();
    assert!(format!("{e:#}").contains("asked to fail"), "{e:#}");
    let h = PluginHandle::new(loaded("round-robin"));
    let e = host()
        .selector(&h, &args(&[("colour", "red")]))
        .err()
        .unwrap();
    assert!(
        format!("{e:#}").contains("unknown argument \"colour\""),
        "{e:#}"
    );
}

/// Garbage, a core module and a component of the wrong world are refused with a message saying why.
#[test]
fn bad_files_refused_clearly() {
    let tmp = temp_dir("bad");
    let dir = tmp.path();
    let garbage = dir.join("garbage.wasm");
    std::fs::write(&garbage, b"this is not wasm at all").unwrap();
    let e = format!("{:#}", host().load_file(&garbage).unwrap_err());
    assert!(
        e.contains("garbage.wasm") && e.contains("not a WebAssembly file"),
        "{e}"
    );

    let core = dir.join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let e = format!("{:#}", host().check_file(&core).unwrap_err());
    assert!(e.contains("core WebAssembly module"), "{e}");

    let info = host().check_file(&path("port-offset")).unwrap();
    assert_eq!(info.worlds, [World::Binder]);
    assert_eq!(info.missing[0].0, World::Selector);
    let e = host()
        .selector(&PluginHandle::new(loaded("port-offset")), &[])
        .err()
        .unwrap();
    assert!(format!("{e:#}").contains("not a selector plugin"), "{e:#}");
    assert_eq!(
        host().check_file(&path("maglev")).unwrap().worlds,
        [World::Selector]
    );
}

/// port-offset: port 80 of the 3rd virtual machine goes to base+3 on each real server.
#[test]
fn port_offset_binder() {
    let h = PluginHandle::new(loaded("port-offset"));
    let mut b = host().binder(&h, &args(&[("base", "8000")])).unwrap();
    let vm = VirtualInfo {
        id: 3,
        name: "site3".into(),
        addr: Ipv4Addr::new(192, 0, 2, 3).into(),
        ports: vec![(80, Protocol::Tcp)],
    };
    let reals: Vec<_> = (0..2)
        .map(|i| RealInfo {
            id: i,
            name: format!("host{i}"),
            addr: Ipv4Addr::new(10, 0, 0, 1 + i as u8).into(),
            port: None,
            weight: 1,
        })
        .collect();
    let out = b.bind(&vm, &reals).unwrap();
    assert_eq!(out.len(), 2);
    assert!(
        out.iter()
            .all(|o| o.virtual_port == 80 && o.real_port == 8003)
    );
}

/// A folder of its own, removed when the guard drops (also when the test fails).
fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("vipd-plugin-test-{tag}-"))
        .tempdir()
        .unwrap()
}

/// Hot reload: a new version copied in slowly is loaded once complete (never half-written) and the selector
/// switches at its next call; garbage leaves it serving; a deleted file keeps its last good version.
#[test]
fn hot_reload() {
    let tmp = temp_dir("reload");
    let dir = tmp.path();
    let file = dir.join("p.wasm");
    std::fs::copy(path("round-robin"), &file).unwrap();
    let pdir = host().watch_dir(dir).unwrap();
    let handle = pdir.get("p").expect("p.wasm loaded at start");
    let mut s = host().selector(&handle, &[]).unwrap();
    let mut c = [candidate(0, 1), candidate(1, 1)];
    c[0].syn_rtt_us = 5000;
    c[1].syn_rtt_us = 200;
    assert_eq!(split(&mut s, &mut c, 100), [50, 50]);
    // Versions are numbered per plugin (other plugins loaded by other tests do not count).
    let v1 = handle.current().unwrap().version();
    assert_eq!(v1, 1);

    // Copy fastest.wasm in slowly: chunks 50 ms apart, under the settle time.
    let bytes = std::fs::read(path("fastest")).unwrap();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&file).unwrap();
        for chunk in bytes.chunks(bytes.len() / 8 + 1) {
            f.write_all(chunk).unwrap();
            f.flush().unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    wait_for("the new version", || {
        handle.current().unwrap().version() != v1
    });
    assert_eq!(
        handle.stats().reloads_failed(),
        0,
        "a partial file was loaded"
    );
    let n = split(&mut s, &mut c, 100);
    assert!(n[1] >= 80, "still round-robin: {n:?}");

    // Garbage: refused, counted, the previous version keeps serving.
    let v2 = handle.current().unwrap().version();
    assert_eq!(v2, 2);
    std::fs::write(&file, b"garbage").unwrap();
    wait_for("the refusal", || handle.stats().reloads_failed() == 1);
    assert_eq!(handle.current().unwrap().version(), v2);
    // A component of the wrong world: refused too.
    std::fs::copy(path("port-offset"), &file).unwrap();
    wait_for("the second refusal", || {
        handle.stats().reloads_failed() == 2
    });
    assert_eq!(handle.current().unwrap().version(), v2);

    // Deleted: the last good version stays.
    std::fs::remove_file(&file).unwrap();
    std::thread::sleep(SETTLE);
    assert_eq!(handle.current().unwrap().version(), v2);
    assert!(pick(&mut s, 0, &c) < 2);
    drop(pdir);
}

/// A plugin whose first version is still compiling says so when a reload names it, instead of the bare "no
/// valid version loaded" (issue 16 newcomer finding).
#[test]
fn unloaded_plugin_says_it_is_still_compiling() {
    let handle = PluginHandle::empty("slow");
    assert_eq!(handle.unloaded(), "plugin slow: no valid version loaded");
    handle.set_compiling(true);
    assert!(
        handle
            .unloaded()
            .starts_with("plugin slow: still compiling its first version"),
        "{}",
        handle.unloaded()
    );
}
