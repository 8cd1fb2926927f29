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

use std::path::{Path, PathBuf};
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
        for bridge in [&p._wan, &p._lan] {
            bridge.ip(&["link", "add", "br0", "type", "bridge"]);
            bridge.ip(&["link", "set", "br0", "up"]);
        }
        let port = |bridge: &Netns, ns: &Netns, dev: &str, name: &str| {
            veth(ns, dev, bridge, name);
            bridge.ip(&["link", "set", name, "master", "br0"]);
        };
        port(&p._wan, &p.client, "eth0", "port-client");
        p.client.addr("eth0", "198.51.100.2/24");
        p.client.ip(&["route", "add", VIP_NET, "dev", "eth0"]);
        for (i, d) in p.directors.iter().enumerate() {
            port(&p._wan, d, "vipd-out", &format!("port-out{i}"));
            port(&p._lan, d, "vipd-in", &format!("port-in{i}"));
            d.addr("vipd-out", &format!("198.51.100.{}/24", 11 + i));
            d.addr("vipd-in", &format!("10.20.0.{}/24", 2 + i));
            d.sysctl("net.ipv4.ip_forward", "0");
            d.sysctl("net.ipv4.conf.all.arp_ignore", "1");
        }
        for (i, s) in p.servers.iter().enumerate() {
            port(&p._lan, s, "eth0", &format!("port-web{i}"));
            s.addr("eth0", &format!("10.20.0.{}/24", 10 + i));
            // keepalived's inside VRRP address: the active director.
            s.ip(&["route", "add", "default", "via", "10.20.0.1"]);
        }
        p
    }
}

fn example(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/ha")
            .join(name),
    )
    .unwrap()
}

/// The shipped vipd config of director `i` (0: A, 1: B), with the key beside it.
fn vipd_config(dir: &TempDir, i: usize) -> PathBuf {
    std::fs::write(dir.join("sync.key"), KEY).unwrap();
    let name = ["vipd-a.toml", "vipd-b.toml"][i];
    let path = dir.join(name);
    std::fs::write(&path, example(name)).unwrap();
    path
}

/// The shipped keepalived config of director `i`, calling this build's vipd; VRRPv3 with `advert_int`
/// seconds when `v3` is given.
fn keepalived_config(dir: &TempDir, i: usize, v3: Option<&str>) -> PathBuf {
    let name = ["keepalived-a.conf", "keepalived-b.conf"][i];
    let mut text = example(name).replace("/usr/bin/vipd", env!("CARGO_BIN_EXE_vipd"));
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
    let config = vipd_config(dir, i);
    let mut vipd = p.directors[i].spawn(
        dir,
        label,
        env!("CARGO_BIN_EXE_vipd"),
        &["run", "--config", config.to_str().unwrap()],
    );
    vipd.wait_log("data path running", Duration::from_secs(20));
    vipd
}

fn start_keepalived(p: &Pair, dir: &TempDir, i: usize, v3: Option<&str>) -> Proc {
    let config = keepalived_config(dir, i, v3);
    let label = ["keepalived-a", "keepalived-b"][i];
    let pid = |what: &str| dir.join(&format!("{label}{what}.pid"));
    p.directors[i].spawn(
        dir,
        label,
        "keepalived",
        &[
            "--dont-fork",
            "--log-console",
            "--log-detail",
            "--no-syslog",
            "--vrrp",
            "--use-file",
            config.to_str().unwrap(),
            "--pid",
            pid("").to_str().unwrap(),
            "--vrrp_pid",
            pid("-vrrp").to_str().unwrap(),
        ],
    )
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

fn established(ns: &Netns) -> usize {
    let v: serde_json::Value =
        serde_json::from_str(&admin_get(ns, "/connections?limit=10000")).unwrap_or_default();
    v["connections"].as_array().map_or(0, |a| {
        a.iter().filter(|c| c["state"] == "established").count()
    })
}

/// `n` slow downloads of /files/big (about `seconds` each, paced by nginx) from the client.
fn downloads(p: &Pair, dir: &TempDir, tag: &str, n: usize, seconds: usize) -> Vec<Proc> {
    // nginx paces the download (`?rate=`, its limit_rate): curl 7.88's --limit-rate does not hold.
    let url = format!("http://192.0.2.1/files/big?rate={}", BIG / seconds);
    (0..n)
        .map(|i| {
            p.client.spawn(
                dir,
                &format!("{tag}-{i}"),
                "curl",
                &[
                    "-sS",
                    "--max-time",
                    "120",
                    "-o",
                    "/dev/null",
                    "-w",
                    "downloaded %{size_download} bytes, HTTP %{http_code}\n",
                    &url,
                ],
            )
        })
        .collect()
}

/// Waits for every download and asserts each got all of the file.
fn all_complete(downloads: Vec<Proc>) {
    for mut d in downloads {
        let status = d.child.wait().unwrap();
        let log = d.log();
        assert!(
            status.success() && log.contains(&format!("downloaded {BIG} bytes, HTTP 200")),
            "{}: {status}: {log}",
            d.label
        );
    }
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
    let held = downloads(p, dir, what, 20, seconds);
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
            p.client
                .curl("http://192.0.2.1/", Duration::from_millis(200))
                .status
                == 200
        },
    );
    let takeover = failed.elapsed();
    assert_eq!(ha(&p.directors[1]).0, "active");
    println!(
        "{what}: B active after {:.2} s",
        b_active.unwrap_or(takeover).as_secs_f64()
    );
    let w = load.join().unwrap();
    all_complete(held);
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

fn start_sites(p: &Pair) -> Vec<Nginx> {
    let big = "x".repeat(BIG);
    p.servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let text = format!("web-{}", i + 1);
            let nginx = Nginx::start(s, &[(80, &text)]);
            std::fs::create_dir_all(nginx.dir.join("files")).unwrap();
            std::fs::write(nginx.dir.join("files/big"), &big).unwrap();
            nginx
        })
        .collect()
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
        || {
            p.client
                .curl("http://192.0.2.1/", Duration::from_secs(2))
                .status
                == 200
        },
    );
    (vipd, keepalived)
}

#[test]
fn failover_and_failback_vrrp2() {
    let _serial = serial();
    let p = Pair::new();
    let _sites = start_sites(&p);
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
    let held = downloads(&p, &dir, "failback", 20, 12);
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
    all_complete(held);
    assert_eq!(
        p.client
            .curl("http://192.0.2.1/", Duration::from_secs(2))
            .status,
        200,
        "A serves"
    );
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
    let _sites = start_sites(&p);
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
    let _sites = start_sites(&p);
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
