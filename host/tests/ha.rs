//! An active/standby pair under keepalived (issue 14): two real directors, each running `vipd run` and
//! `keepalived` with the shipped examples/ha files, on a shared outside segment (a bridge with the client) and
//! a shared inside segment (a bridge with two nginx servers whose default route is keepalived's inside VRRP
//! address). Long downloads and a keep-alive wrk run through the virtual address while the active director
//! fails; every download must complete with all its bytes, wrk must see no socket errors beyond the requests
//! in flight at the switch, and new connections must succeed again within keepalived's takeover time
//! (printed). A director that comes back takes over again only once it is synced.
//!
//! - `failover_and_failback_vrrp2`: VRRPv2, `advert_int 1`; the active vipd is killed with SIGKILL (the
//!   track script notices), then restarted: it bulk-resyncs and preempts.
//! - `director_lost_vrrp2`, `director_lost_vrrp3`: the active director loses its links (no resignation).
//! - `keepalived_stop_vrrp3`: VRRPv3, `advert_int 0.1`; the active director's keepalived is stopped.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

const KEY: &[u8] = b"the pair's shared secret, 32 b..";
/// The download every slow client fetches: 2 MiB.
const BIG: usize = 2 << 20;

/// Client, outside bridge, two directors, inside bridge, two servers.
struct Pair {
    client: Netns,
    _wan: Netns,
    _lan: Netns,
    directors: [Netns; 2],
    servers: [Netns; 2],
}

impl Pair {
    fn new() -> Pair {
        let p = Pair {
            client: Netns::new("client"),
            _wan: Netns::new("wan"),
            _lan: Netns::new("lan"),
            directors: [Netns::new("dir-a"), Netns::new("dir-b")],
            servers: [Netns::new("web-1"), Netns::new("web-2")],
        };
        bridge(&p._wan);
        bridge(&p._lan);
        bridge_port(&p._wan, &p.client, "eth0", "port-client");
        p.client.addr("eth0", "198.51.100.2/24");
        p.client.ip(&["route", "add", VIP_NET, "dev", "eth0"]);
        for (i, d) in p.directors.iter().enumerate() {
            let outside = format!("198.51.100.{}/24", 11 + i);
            let inside = format!("10.20.0.{}/24", 2 + i);
            director_ports(d, i, &p._wan, &p._lan, &outside, &inside);
        }
        servers_behind_gateway(&p.servers, &p._lan);
        p
    }
}

/// The shipped vipd config of director `i` (0: A, 1: B), with the key beside it.
fn vipd_config(dir: &TempDir, i: usize) -> PathBuf {
    std::fs::write(dir.join("sync.key"), KEY).unwrap();
    let name = ["vipd-a.toml", "vipd-b.toml"][i];
    let path = dir.join(name);
    std::fs::write(&path, example(&format!("ha/{name}"))).unwrap();
    with_test_offload(dir, &path)
}

/// The shipped keepalived config of director `i`, calling this build's vipd; VRRPv3 with `advert_int`
/// seconds when `v3` is given.
fn keepalived_config(dir: &TempDir, i: usize, v3: Option<&str>) -> PathBuf {
    let name = ["keepalived-a.conf", "keepalived-b.conf"][i];
    let mut text =
        example(&format!("ha/{name}")).replace("/usr/bin/vipd", env!("CARGO_BIN_EXE_vipd"));
    if let Some(advert) = v3 {
        text = text.replace(
            "    advert_int 1\n",
            &format!("    version 3\n    advert_int {advert}\n"),
        );
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn start_vipd(p: &Pair, dir: &TempDir, i: usize, label: &str) -> Proc {
    start_vipd_in(&p.directors[i], dir, label, &vipd_config(dir, i))
}

fn start_keepalived(p: &Pair, dir: &TempDir, i: usize, v3: Option<&str>) -> Proc {
    let config = keepalived_config(dir, i, v3);
    let label = ["keepalived-a", "keepalived-b"][i];
    start_keepalived_in(&p.directors[i], dir, label, &config)
}

/// `GET /ha` of the director in `ns`: (role, synced, connections); ("", false, 0) when it does not answer.
fn ha(ns: &Netns) -> (String, bool, u64) {
    let v: serde_json::Value = serde_json::from_str(&admin_get(ns, "/ha")).unwrap_or_default();
    (
        v["role"].as_str().unwrap_or_default().to_owned(),
        v["synced"] == true,
        v["connections"].as_u64().unwrap_or(0),
    )
}

/// A keep-alive wrk through the virtual address for `seconds`, on its own thread (8 connections; a
/// request waits up to 15 s, longer than any takeover).
fn wrk(p: &Pair, seconds: u64) -> std::thread::JoinHandle<Wrk> {
    let name = p.client.name.clone();
    std::thread::spawn(move || {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &name, "wrk", "-t1", "-c8"])
            .args(["-d", &format!("{seconds}s"), "--timeout", "15s"])
            .arg("http://192.0.2.1/")
            .output()
            .unwrap();
        Wrk::parse(&String::from_utf8_lossy(&out.stdout))
    })
}

/// 20 downloads of about `seconds` and a keep-alive wrk through the virtual address, the standby holding
/// their connections, then `fail` the active director. Every download completes with all its bytes; wrk
/// sees no socket errors beyond its 8 requests in flight. Returns how long after `fail` began a new
/// connection first succeeded again (attempts of 0.2 s, one after the other).
fn through_failover(
    p: &Pair,
    dir: &TempDir,
    what: &str,
    seconds: usize,
    fail: impl FnOnce(),
) -> Duration {
    let held = paced_downloads(&p.client, dir, what, 20, BIG, seconds);
    let load = wrk(p, seconds as u64 - 2);
    // The downloads' 20 connections and wrk's 8: a connection whose handshake ended within the last sync
    // batch (20 ms) before the failure is not on the standby, and its client would wait in vain.
    wait_for(
        "the standby holds the downloads' and wrk's connections",
        Duration::from_secs(10),
        || established(&p.directors[1]) >= 28,
    );
    let failed = Instant::now();
    fail();
    let mut b_active = None;
    wait_for(
        "new connections through the virtual address",
        Duration::from_secs(30),
        || {
            if b_active.is_none() && ha(&p.directors[1]).0 == "active" {
                b_active = Some(failed.elapsed());
            }
            vip_serves(&p.client, Duration::from_millis(200))
        },
    );
    let takeover = failed.elapsed();
    assert_eq!(ha(&p.directors[1]).0, "active");
    println!(
        "{what}: B active after {:.2} s",
        b_active.unwrap_or(takeover).as_secs_f64()
    );
    let w = load.join().unwrap();
    assert_eq!(
        downloads_complete(held, BIG),
        20,
        "downloads broken by the failover"
    );
    println!(
        "{what}: new connections back after {:.2} s; 20 downloads complete; wrk {} requests, {} socket errors",
        takeover.as_secs_f64(),
        w.requests,
        w.errors()
    );
    assert!(w.requests > 0, "wrk ran: {}", w.text);
    assert!(
        w.errors() <= 8,
        "socket errors beyond the 8 requests in flight: {}",
        w.text
    );
    takeover
}

/// Both directors and both keepalived running; A active, B a synced standby, the virtual address serving.
fn pair_up(p: &Pair, dir: &TempDir, v3: Option<&str>) -> ([Proc; 2], [Proc; 2]) {
    let vipd = [
        start_vipd(p, dir, 0, "vipd-a"),
        start_vipd(p, dir, 1, "vipd-b"),
    ];
    let keepalived = [
        start_keepalived(p, dir, 0, v3),
        start_keepalived(p, dir, 1, v3),
    ];
    wait_for(
        "A active, B a synced standby",
        Duration::from_secs(30),
        || {
            let (a, b) = (ha(&p.directors[0]), ha(&p.directors[1]));
            a.0 == "active" && b.0 == "standby" && b.1
        },
    );
    wait_for(
        "the virtual address serves",
        Duration::from_secs(20),
        || vip_serves(&p.client, Duration::from_secs(2)),
    );
    (vipd, keepalived)
}

#[test]
fn failover_and_failback_vrrp2() {
    let _serial = serial();
    let p = Pair::new();
    let _sites = web_sites(&p.servers, BIG);
    let dir = TempDir::new("vipd-ha");
    let ([vipd_a, mut vipd_b], [mut ka_a, mut ka_b]) = pair_up(&p, &dir, None);

    // Failover: the active vipd dies; keepalived's track script notices.
    through_failover(
        &p,
        &dir,
        "VRRPv2 advert_int 1, active vipd killed",
        12,
        || vipd_a.signal(libc::SIGKILL),
    );
    drop(vipd_a);
    vipd_b.assert_running();

    // Failback: A comes back as a standby, bulk-resyncs from B, and only then takes over (it has the
    // higher priority). Downloads started through B meanwhile complete.
    let held = paced_downloads(&p.client, &dir, "failback", 20, BIG, 12);
    wait_for("downloads through B", Duration::from_secs(10), || {
        established(&p.directors[1]) >= 20
    });
    let mut vipd_a = start_vipd(&p, &dir, 0, "vipd-a-again");
    wait_for("A active again, B standby", Duration::from_secs(30), || {
        ha(&p.directors[0]).0 == "active" && ha(&p.directors[1]).0 == "standby"
    });
    let log = vipd_a.log();
    let synced = log.find("synced").expect("A logged its sync");
    let active = log.find("role changed").expect("A logged its role change");
    assert!(synced < active, "A took over before it was synced:\n{log}");
    assert_eq!(
        downloads_complete(held, BIG),
        20,
        "downloads broken by the failback"
    );
    assert!(vip_serves(&p.client, Duration::from_secs(2)), "A serves");
    for v in [&mut vipd_a, &mut vipd_b] {
        v.assert_running();
    }
    for k in [&mut ka_a, &mut ka_b] {
        k.assert_running();
    }
}

/// The active director is lost as a whole (its links go down, as at a power cut): no resignation reaches
/// the standby, which takes over when three adverts are missed.
fn director_lost(v3: Option<&str>, what: &str) -> Duration {
    let _serial = serial();
    let p = Pair::new();
    let _sites = web_sites(&p.servers, BIG);
    let dir = TempDir::new("vipd-ha-lost");
    let (mut vipd, _keepalived) = pair_up(&p, &dir, v3);
    let takeover = through_failover(&p, &dir, what, 14, || {
        for dev in ["vipd-out", "vipd-in"] {
            p.directors[0].ip(&["link", "set", dev, "down"]);
        }
    });
    vipd[1].assert_running();
    takeover
}

#[test]
fn director_lost_vrrp2() {
    let takeover = director_lost(None, "VRRPv2 advert_int 1, active director lost");
    assert!(
        takeover > Duration::from_secs(2),
        "the standby waited for missed adverts: {takeover:?}"
    );
}

#[test]
fn director_lost_vrrp3() {
    director_lost(Some("0.1"), "VRRPv3 advert_int 0.1, active director lost");
}

/// VRRPv3 with sub-second adverts; the active director's keepalived is stopped (its notify_stop makes vipd
/// a standby).
#[test]
fn keepalived_stop_vrrp3() {
    let _serial = serial();
    let p = Pair::new();
    let _sites = web_sites(&p.servers, BIG);
    let dir = TempDir::new("vipd-ha3");
    let ([mut vipd_a, mut vipd_b], [mut ka_a, _ka_b]) = pair_up(&p, &dir, Some("0.1"));
    through_failover(
        &p,
        &dir,
        "VRRPv3 advert_int 0.1, active keepalived stopped",
        8,
        || {
            assert!(
                ka_a.stop(Duration::from_secs(10)).is_some(),
                "keepalived A stopped"
            )
        },
    );
    wait_for("A standby", Duration::from_secs(10), || {
        ha(&p.directors[0]).0 == "standby"
    });

    vipd_a.assert_running();
    vipd_b.assert_running();
}
