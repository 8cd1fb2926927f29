//! Tests on the real plugin components, built by `plugins/build.sh target/plugins --testing` (the Makefile's
//! `make test` does it first). `VIPD_TEST_PLUGINS` overrides the folder.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::*;
use crate::policy::{Candidate, NewConnection, Outcome, Selection, Selector, ServerState};
use crate::wire::Protocol;
use strum::VariantArray;

fn plugins_dir() -> PathBuf {
    let dir = std::env::var_os("VIPD_TEST_PLUGINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins"));
    assert!(
        dir.join("round-robin.wasm").exists() && dir.join("testing/v0-1.wasm").exists(),
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

/// The address of the IPv4 virtual machine the tests' selectors serve.
const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// And of an IPv6 one.
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

fn selector(name: &str, a: &[(&str, &str)]) -> PluginSelector {
    host()
        .selector(&PluginHandle::new(loaded(name)), &args(a), VIP.into())
        .unwrap()
}

fn candidate(real_id: u32, weight: u32) -> Candidate {
    let target = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1 + real_id as u8), 80);
    Candidate::up(real_id, target.into(), weight)
}

fn conn(client: u32) -> NewConnection {
    NewConnection {
        client: SocketAddrV4::new(Ipv4Addr::from(0xc633_0000 + client), 40000).into(),
        virtual_addr: SocketAddrV4::new(VIP, 80).into(),
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
    let mut s = host
        .selector(&h, &args(&[("mode", "spin")]), VIP.into())
        .unwrap();
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
    let mut s = host
        .selector(&h, &args(&[("mode", "spin")]), VIP.into())
        .unwrap();
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
        .selector(&handle, &args(&[("mode", "trap")]), VIP.into())
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
        .selector(&h, &args(&[("mode", "fail-init")]), VIP.into())
        .err()
        .unwrap();
    assert!(format!("{e:#}").contains("asked to fail"), "{e:#}");
    let h = PluginHandle::new(loaded("round-robin"));
    let e = host()
        .selector(&h, &args(&[("colour", "red")]), VIP.into())
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
    assert_eq!(info.worlds, [(World::Binder, InterfaceVersion::V0_2)]);
    assert_eq!(info.missing[0].0, World::Selector);
    let e = host()
        .selector(&PluginHandle::new(loaded("port-offset")), &[], VIP.into())
        .err()
        .unwrap();
    assert!(format!("{e:#}").contains("not a selector plugin"), "{e:#}");
    assert_eq!(
        host().check_file(&path("maglev")).unwrap().worlds,
        [(World::Selector, InterfaceVersion::V0_2)]
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
    let mut s = host().selector(&handle, &[], VIP.into()).unwrap();
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

/// The one rule of which interface may serve which family: 0.1.0 IPv4 only, 0.2.0 both; the refusal names
/// the file and says what to do.
#[test]
fn interface_supports_family() {
    let (v4, v6) = (IpAddr::from(VIP), IpAddr::from(VIP6));
    assert!(supports(InterfaceVersion::V0_1, v4));
    assert!(!supports(InterfaceVersion::V0_1, v6));
    assert!(supports(InterfaceVersion::V0_2, v4));
    assert!(supports(InterfaceVersion::V0_2, v6));
    let e = check_supports(InterfaceVersion::V0_1, Path::new("/p/old.wasm"), v6).unwrap_err();
    assert_eq!(
        e.to_string(),
        "plugin /p/old.wasm implements vipd:policy@0.1.0, which has IPv4 addresses only; virtual address \
         2001:db8::1 is IPv6: rebuild it against the 0.2.0 SDK"
    );
    assert!(check_supports(InterfaceVersion::V0_2, Path::new("/p/new.wasm"), v6).is_ok());
}

/// Addresses cross into 0.2.0 as numbers in host order, IPv6 as (high, low) halves, and come back the same.
#[test]
fn address_variant_in_host_order() {
    use super::bindings::v0_2::IpAddress;
    assert!(matches!(
        IpAddress::from(IpAddr::from(VIP)),
        IpAddress::Ipv4(0xc000_0201)
    ));
    assert!(matches!(
        IpAddress::from(IpAddr::from(VIP6)),
        IpAddress::Ipv6((0x2001_0db8_0000_0000, 1))
    ));
    for a in [
        IpAddr::from(VIP),
        IpAddr::from(Ipv6Addr::new(0xfe80, 1, 2, 3, 4, 5, 6, 0xffff)),
        IpAddr::from(Ipv6Addr::UNSPECIFIED),
    ] {
        assert_eq!(IpAddr::from(IpAddress::from(a)), a);
    }
}

/// A plugin built against vipd:policy@0.1.0 (the fixture, no SDK) still loads and selects for an IPv4
/// virtual machine, the addresses crossing as before; it is never told of a connection's end.
#[test]
fn v0_1_plugin_serves_ipv4() {
    let info = host().check_file(&path("testing/v0-1")).unwrap();
    assert_eq!(info.worlds, [(World::Selector, InterfaceVersion::V0_1)]);
    let text = info.to_string();
    assert!(
        text.contains("world selector (vipd:policy@0.1.0)")
            && text.contains("IPv4 virtual machines only"),
        "{text}"
    );
    let mut s = selector("testing/v0-1", &[]);
    assert_eq!(s.interface(), Some(InterfaceVersion::V0_1));
    let c = [candidate(0, 1), candidate(1, 1)];
    // The fixture answers the candidate at (client address % candidates).
    assert_eq!(pick(&mut s, 4, &c), 0);
    assert_eq!(pick(&mut s, 5, &c), 1);
    assert_eq!(s.plugin().stats().calls(CallResult::Ok), 2);
    assert_eq!(s.instance(), None, "0.1.0 asks for no notices");
    s.connection_closed(&conn(4), 0);
    assert!(s.plugin().stats().plugin_metrics().is_empty(), "not called");
}

/// The 0.1.0 fixture is refused for an IPv6 virtual machine, with the file and what to do.
#[test]
fn v0_1_plugin_refused_for_ipv6() {
    let h = PluginHandle::new(loaded("testing/v0-1"));
    let e = host().selector(&h, &[], VIP6.into()).err().unwrap();
    let e = format!("{e:#}");
    assert!(
        e.contains("v0-1.wasm implements vipd:policy@0.1.0, which has IPv4 addresses only")
            && e.contains("virtual address 2001:db8::1 is IPv6: rebuild it against the 0.2.0 SDK"),
        "{e}"
    );
}

fn candidate6(real_id: u32) -> Candidate {
    let addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1 + real_id as u16);
    Candidate {
        target: SocketAddrV6::new(addr, 80, 0, 0).into(),
        ..candidate(real_id, 1)
    }
}

fn conn6(client: u16) -> NewConnection {
    let addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0xc633, client);
    NewConnection {
        client: SocketAddrV6::new(addr, 40000, 0, 0).into(),
        virtual_addr: SocketAddr::from((VIP6, 80)),
        ..conn(0)
    }
}

/// 0.2.0 plugins serve an IPv6 virtual machine: maglev and source-affinity hash IPv6 clients (the same client
/// keeps its server, many clients spread), with no fallback.
#[test]
fn v0_2_plugins_serve_ipv6() {
    let c: Vec<_> = (0..4).map(candidate6).collect();
    for name in ["maglev", "source-affinity"] {
        let h = PluginHandle::new(loaded(name));
        let mut s = host().selector(&h, &[], VIP6.into()).unwrap();
        for _ in 0..200 {
            s.select(&conn6(0), &c); // let maglev's table build
        }
        let picks = |s: &mut PluginSelector| -> Vec<Selection> {
            (0..64).map(|n| s.select(&conn6(n), &c)).collect()
        };
        let first = picks(&mut s);
        assert_eq!(first, picks(&mut s), "{name}: a client keeps its server");
        let mut servers: Vec<_> = first.clone();
        servers.sort_by_key(|p| format!("{p:?}"));
        servers.dedup();
        assert_eq!(servers.len(), 4, "{name}: {first:?}");
        assert_eq!(h.stats().fallbacks(), 0, "{name}");
    }
}

/// A 0.2.0 plugin is told, on the instance that placed a connection, how it ended: the `notices` test plugin
/// counts the calls with `counter-add`, and the IPv6 ones apart. A new version answers with a new instance
/// (whose id the notices of the old one do not match).
#[test]
fn notices_reach_the_placing_instance() {
    let metric = |s: &PluginSelector, name: &str| {
        s.plugin()
            .stats()
            .plugin_metrics()
            .iter()
            .find(|m| m.name == name)
            .map_or(0.0, |m| m.value)
    };
    let h = PluginHandle::new(host().load_file(&path("testing/notices")).unwrap());
    let mut s = host().selector(&h, &[], VIP6.into()).unwrap();
    let c = [candidate6(0), candidate6(1)];
    assert_eq!(s.select_outcome(&conn6(1), &c).1, Outcome::Picked);
    let id = s.instance().expect("a 0.2.0 instance asks for notices");
    s.connection_closed(&conn6(1), 0);
    s.connection_ditched(&conn6(2), 1);
    s.connection_closed(&conn(3), 1);
    assert_eq!(metric(&s, "closed"), 2.0);
    assert_eq!(metric(&s, "ditched"), 1.0);
    assert_eq!(metric(&s, "ipv6"), 2.0);
    // A new version means a new instance: the director drops notices for the old one.
    h.publish(host().load_file(&path("testing/notices")).unwrap());
    s.select(&conn6(1), &c);
    assert!(s.instance().is_some_and(|new| new != id));
}

/// A new version that cannot carry the family of the virtual machine a selector serves is not used by it:
/// the version already serving goes on (and a new 0.2.0 version is taken up again).
#[test]
fn ipv6_selector_keeps_serving_when_a_0_1_0_version_is_published() {
    let h = PluginHandle::new(host().load_file(&path("testing/notices")).unwrap());
    let mut s = host().selector(&h, &[], VIP6.into()).unwrap();
    let c = [candidate6(0), candidate6(1)];
    let serving = s.instance();
    h.publish(host().load_file(&path("testing/v0-1")).unwrap());
    assert_eq!(s.select_outcome(&conn6(1), &c).1, Outcome::Picked);
    assert_eq!(s.interface(), Some(InterfaceVersion::V0_2));
    assert_eq!(s.instance(), serving, "the same instance");
    assert_eq!(h.stats().fallbacks(), 0);
    h.publish(host().load_file(&path("round-robin")).unwrap());
    assert_eq!(s.select_outcome(&conn6(1), &c).1, Outcome::Picked);
    assert_ne!(s.instance(), serving, "the newest version serves");
}

/// A binder gets the real servers of its virtual machine's family only; the 0.1.0 rule applies to binders
/// too.
#[test]
fn binder_gets_servers_of_its_family() {
    let h = PluginHandle::new(loaded("port-offset"));
    let mut b = host().binder(&h, &args(&[("base", "8000")])).unwrap();
    let vm = VirtualInfo {
        id: 1,
        name: "site6".into(),
        addr: VIP6.into(),
        ports: vec![(80, Protocol::Tcp)],
    };
    let reals = [
        RealInfo {
            id: 0,
            name: "four".into(),
            addr: Ipv4Addr::new(10, 0, 0, 1).into(),
            port: None,
            weight: 1,
        },
        RealInfo {
            id: 1,
            name: "six".into(),
            addr: Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1).into(),
            port: None,
            weight: 1,
        },
    ];
    let out = b.bind(&vm, &reals).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].real_id, out[0].real_port), (1, 8001));
}

/// `real-name` answers a candidate's configured server name from the names the selector was given (as
/// `vipd run` gives them), and `none` for an id it does not know.
#[test]
fn real_name_answers_the_configured_names() {
    let names: crate::plugin::RealNames = ["web-a", "web-b"].iter().map(|&n| n.into()).collect();
    let h = PluginHandle::new(loaded("testing/misbehave"));
    let mut s = host()
        .selector_named(
            &h,
            &args(&[("mode", "named")]),
            VIP.into(),
            names,
            WarmUp::none(),
        )
        .unwrap();
    let metric = |name: &str| {
        h.stats()
            .plugin_metrics()
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.value)
    };
    pick(&mut s, 1, &[candidate(1, 1), candidate(0, 1)]);
    pick(&mut s, 2, &[candidate(1, 1), candidate(0, 1)]);
    pick(&mut s, 3, &[candidate(0, 1)]);
    pick(&mut s, 4, &[candidate(7, 1)]);
    assert_eq!(metric("picked-web-b"), Some(2.0));
    assert_eq!(metric("picked-web-a"), Some(1.0));
    assert_eq!(metric("picked-unknown"), Some(1.0));
}

/// The warm-up before the first call builds Maglev's whole table: two selectors (two directors) answer every
/// client alike from the first connection on; without it the first clients are placed by a plain hash.
#[test]
fn maglev_agrees_from_the_first_connection() {
    let c: Vec<Candidate> = (0..3).map(|i| candidate(i, 1)).collect();
    let warm = || {
        let w = WarmUp::new(
            SocketAddrV4::new(VIP, 80).into(),
            Protocol::Tcp,
            0,
            c.clone(),
        );
        let h = PluginHandle::new(loaded("maglev"));
        host()
            .selector_named(&h, &[], VIP.into(), RealNames::default(), w)
            .unwrap()
    };
    let (mut a, mut b) = (warm(), warm());
    let mut cold = selector("maglev", &[]);
    let (mut same_as_cold, mut moved) = (0, 0);
    for client in 0..300 {
        let picked = pick(&mut a, client, &c);
        assert_eq!(picked, pick(&mut b, client, &c), "client {client}");
        same_as_cold += usize::from(picked == pick(&mut cold, client, &c));
        moved += usize::from(picked != pick(&mut a, client, &c));
    }
    assert_eq!(moved, 0, "a warmed-up Maglev never moves a client");
    assert!(
        same_as_cold < 300,
        "the cold selector answered alike: the test proves nothing"
    );
    assert_eq!(a.plugin().stats().calls(CallResult::Starting), 0);
}

/// A warm-up call that traps makes the selector a configuration error that says so.
#[test]
fn warm_up_trap_is_a_config_error() {
    let h = PluginHandle::new(loaded("testing/misbehave"));
    let w = WarmUp::new(
        SocketAddrV4::new(VIP, 80).into(),
        Protocol::Tcp,
        0,
        vec![candidate(0, 1)],
    );
    let e = host()
        .selector_named(
            &h,
            &args(&[("mode", "trap-warm-up")]),
            VIP.into(),
            RealNames::default(),
            w,
        )
        .err()
        .unwrap();
    assert!(format!("{e:#}").contains("warm-up call trapped"), "{e:#}");
}

/// With preparation off the data path, a selector never makes an instance in a call: after a trap the
/// next connection is served by round-robin (`starting`) while the preparation thread makes one, and a
/// new version is served by the old one until its own instance is ready.
#[test]
fn instances_are_made_off_the_data_path() {
    let host = PluginHost::new(PluginLimits {
        deadline: Duration::from_millis(50),
        ..PluginLimits::default()
    })
    .unwrap();
    host.prepare_off_path().unwrap();
    let h = PluginHandle::new(host.load_file(&path("testing/misbehave")).unwrap());
    let mut s = host
        .selector(
            &h,
            &args(&[("mode", "trap"), ("after", "1"), ("slow_warm_up", "20")]),
            VIP.into(),
        )
        .unwrap();
    let c = [candidate(0, 1), candidate(1, 1)];
    let stats = h.stats().clone();
    pick(&mut s, 0, &c);
    assert_eq!(stats.calls(CallResult::Ok), 1);
    pick(&mut s, 1, &c);
    assert_eq!(stats.calls(CallResult::Trap), 1);
    pick(&mut s, 2, &c);
    assert_eq!(
        stats.calls(CallResult::Starting),
        1,
        "no instance was made in the call"
    );
    assert!(s.wait_ready(Duration::from_secs(10)));
    pick(&mut s, 3, &c);
    assert_eq!(
        stats.calls(CallResult::Ok),
        2,
        "the fresh instance behaves for one call"
    );

    // A new version: the old instance goes on serving until the new one is ready (its warm-up takes 20 ms).
    let v1 = s.version();
    let starting = stats.calls(CallResult::Starting);
    h.publish(host.load_file(&path("testing/misbehave")).unwrap());
    pick(&mut s, 4, &c);
    assert_eq!(stats.calls(CallResult::Starting), starting);
    assert_eq!(
        s.version(),
        v1,
        "switched before the new instance was ready"
    );
    assert!(s.wait_ready(Duration::from_secs(10)));
    assert_eq!(s.version(), v1 + 1);
    let ok = stats.calls(CallResult::Ok);
    pick(&mut s, 5, &c);
    assert_eq!(
        stats.calls(CallResult::Ok),
        ok + 1,
        "the new version's fresh instance serves"
    );
    assert!(!s.is_quarantined());
}

/// Keeping warm: nothing before the first connection or within half a period of the last call; a warm-up
/// call after it, counted apart from the connections' calls; never a plugin whose warm-up calls are dear.
#[test]
fn keep_warm_calls_between_connections() {
    let period = Duration::from_millis(2);
    let warm = NewConnection::warm_up(SocketAddrV4::new(VIP, 80).into(), Protocol::Tcp, 0);
    let h = PluginHandle::new(loaded("round-robin"));
    let mut s = host().selector(&h, &[], VIP.into()).unwrap();
    let c = [candidate(0, 1), candidate(1, 1)];
    assert!(!s.wants_warm(period), "no connection yet");
    pick(&mut s, 0, &c);
    assert!(!s.wants_warm(period), "just called");
    std::thread::sleep(period / 2);
    assert!(s.wants_warm(period));
    let calls = h.stats().calls(CallResult::Ok);
    assert!(s.keep_warm(&warm, &c));
    assert!(!s.wants_warm(period), "just warmed");
    assert_eq!(h.stats().keep_warm_calls(), 1);
    assert_eq!(
        h.stats().calls(CallResult::Ok),
        calls,
        "not a connection's call"
    );
    // The rotation is the connections' own: round-robin answers the warm-up with `defer`.
    assert_eq!(pick(&mut s, 1, &c), 1);

    // A plugin whose warm-up takes 1 ms is tried a few times, then left cold.
    let h = PluginHandle::new(loaded("testing/misbehave"));
    let mut s = host()
        .selector(&h, &args(&[("slow_warm_up", "1")]), VIP.into())
        .unwrap();
    pick(&mut s, 0, &c);
    for _ in 0..selector::KEEP_WARM_TRIALS {
        assert!(s.keep_warm(&warm, &c));
    }
    std::thread::sleep(period);
    assert!(!s.wants_warm(period), "warming it costs more than it saves");
}
