//! Scale-out (issue 15): three active vipd directors behind a router that spreads flows over them by ECMP,
//! each announcing the virtual address with BGP through its own BIRD, with the shipped examples/ecmp files.
//! The servers send their replies to a gateway address that keepalived keeps on one director's inside
//! (examples/ecmp/keepalived-inside.conf), so most replies reach a director that did not see the SYN.
//! Real BIRD, keepalived, nginx, curl and wrk in namespaces:
//!
//! ```text
//! client 198.51.100.2 -- router (BIRD, ECMP, L4 hash) 10.30.0.1 -- wan bridge --+-- director 1 .11 -- lan --+-- web-1
//!                                                                               +-- director 2 .12 --       +-- web-2
//!                                                                               +-- director 3 .13 --
//! ```
//!
//! Checked: the router installs one next hop per director; under wrk from many client ports every director
//! carries a share (printed); 20 long downloads survive a drain of one director, a SIGKILL of another, and
//! its return; every director announces, withdraws and re-announces as it should.

mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const KEY: &[u8] = b"the cluster's shared secret, 32b";
const BIG: usize = 2 << 20;
const N: usize = 3;

struct Cluster {
    client: Netns,
    router: Netns,
    _wan: Netns,
    _lan: Netns,
    directors: Vec<Netns>,
    servers: Vec<Netns>,
}

fn outside(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 30, 0, 11 + i as u8)
}

fn inside(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 20, 0, 2 + i as u8)
}

impl Cluster {
    fn new() -> Cluster {
        let c = Cluster {
            client: Netns::new("client"),
            router: Netns::new("router"),
            _wan: Netns::new("wan"),
            _lan: Netns::new("lan"),
            directors: (0..N).map(|i| Netns::new(&format!("dir{i}"))).collect(),
            servers: (0..2).map(|i| Netns::new(&format!("web{i}"))).collect(),
        };
        veth(&c.client, "eth0", &c.router, "down0");
        c.client.addr("eth0", "198.51.100.2/24");
        c.client
            .ip(&["route", "add", "default", "via", "198.51.100.1"]);
        c.router.addr("down0", "198.51.100.1/24");
        c.router.sysctl("net.ipv4.ip_forward", "1");
        c.router.sysctl("net.ipv4.fib_multipath_hash_policy", "1");
        for bridge in [&c._wan, &c._lan] {
            bridge.ip(&["link", "add", "br0", "type", "bridge"]);
            bridge.ip(&["link", "set", "br0", "up"]);
        }
        let port = |bridge: &Netns, ns: &Netns, dev: &str, name: &str| {
            veth(ns, dev, bridge, name);
            bridge.ip(&["link", "set", name, "master", "br0"]);
        };
        port(&c._wan, &c.router, "up0", "port-router");
        c.router.addr("up0", "10.30.0.1/24");
        for (i, d) in c.directors.iter().enumerate() {
            port(&c._wan, d, "vipd-out", &format!("port-out{i}"));
            port(&c._lan, d, "vipd-in", &format!("port-in{i}"));
            d.addr("vipd-out", &format!("{}/24", outside(i)));
            d.addr("vipd-in", &format!("{}/24", inside(i)));
            d.sysctl("net.ipv4.ip_forward", "0");
            d.sysctl("net.ipv4.conf.all.arp_ignore", "1");
        }
        for (i, s) in c.servers.iter().enumerate() {
            port(&c._lan, s, "eth0", &format!("port-web{i}"));
            s.addr("eth0", &format!("10.20.0.{}/24", 10 + i));
            // keepalived's gateway address on the directors' inside (examples/ecmp/keepalived-inside.conf).
            s.ip(&["route", "add", "default", "via", "10.20.0.1"]);
        }
        c
    }
}

fn example(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/ecmp")
            .join(name),
    )
    .unwrap()
}

/// The shipped vipd config for director `i`: its own sync address, the others as peers.
fn vipd_config(dir: &TempDir, i: usize) -> PathBuf {
    std::fs::write(dir.join("sync.key"), KEY).unwrap();
    let peers: Vec<String> = (0..N)
        .filter(|&j| j != i)
        .map(|j| format!("\"{}:8848\"", inside(j)))
        .collect();
    let text = example("vipd.toml")
        .replace(
            "listen = \"10.20.0.2:8848\"",
            &format!("listen = \"{}:8848\"", inside(i)),
        )
        .replace(
            "peers = [\"10.20.0.3:8848\", \"10.20.0.4:8848\"]",
            &format!("peers = [{}]", peers.join(", ")),
        );
    let path = dir.join(&format!("vipd-{i}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn start_vipd(c: &Cluster, dir: &TempDir, i: usize, label: &str) -> Proc {
    let config = vipd_config(dir, i);
    let mut vipd = c.directors[i].spawn(
        dir,
        label,
        env!("CARGO_BIN_EXE_vipd"),
        &["run", "--config", config.to_str().unwrap()],
    );
    vipd.wait_log("data path running", Duration::from_secs(20));
    vipd
}

fn start_bird(ns: &Netns, dir: &TempDir, label: &str, config: String) -> Proc {
    let conf = dir.join(&format!("{label}.conf"));
    std::fs::write(&conf, config).unwrap();
    let sock = dir.join(&format!("{label}.ctl"));
    ns.spawn(
        dir,
        label,
        "bird",
        &[
            "-f",
            "-c",
            conf.to_str().unwrap(),
            "-s",
            sock.to_str().unwrap(),
        ],
    )
}

/// The router's next hops for the virtual address.
fn next_hops(c: &Cluster) -> Vec<String> {
    let out = c.router.exec("ip", &["route", "show", "192.0.2.1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut hops: Vec<String> = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "via")
        .map(|w| w[1].to_owned())
        .collect();
    hops.sort();
    hops
}

fn hops_of(directors: &[usize]) -> Vec<String> {
    let mut v: Vec<String> = directors.iter().map(|&i| outside(i).to_string()).collect();
    v.sort();
    v
}

fn connections_total(ns: &Netns) -> f64 {
    Metrics::scrape(ns).get("vipd_connections_total", &[])
}

fn downloads(c: &Cluster, dir: &TempDir, tag: &str, n: usize, seconds: usize) -> Vec<Proc> {
    let rate = format!("{}", BIG / seconds);
    (0..n)
        .map(|i| {
            c.client.spawn(
                dir,
                &format!("{tag}-{i}"),
                "curl",
                &[
                    "-sS",
                    "--max-time",
                    "120",
                    "--limit-rate",
                    &rate,
                    "-o",
                    "/dev/null",
                    "-w",
                    "downloaded %{size_download} bytes, HTTP %{http_code}\n",
                    "http://192.0.2.1/files/big",
                ],
            )
        })
        .collect()
}

/// Waits for every download; returns how many got all of the file, printing the others.
fn completed(downloads: Vec<Proc>) -> usize {
    downloads
        .into_iter()
        .filter_map(|mut d| {
            let status = d.child.wait().unwrap();
            let ok = status.success()
                && d.log()
                    .contains(&format!("downloaded {BIG} bytes, HTTP 200"));
            if !ok {
                println!("{}: {status}: {}", d.label, d.log());
            }
            ok.then_some(())
        })
        .count()
}

#[test]
fn ecmp_cluster_spreads_drains_survives_a_crash_and_rejoins() {
    let _serial = serial();
    let c = Cluster::new();
    let big = "x".repeat(BIG);
    let _sites: Vec<Nginx> = c
        .servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let nginx = Nginx::start(s, &[(80, &format!("web-{}", i + 1))]);
            std::fs::create_dir_all(nginx.dir.join("files")).unwrap();
            std::fs::write(nginx.dir.join("files/big"), &big).unwrap();
            nginx
        })
        .collect();
    let dir = TempDir::new("vipd-ecmp");
    let _router_bird = start_bird(&c.router, &dir, "bird-router", example("bird-router.conf"));
    let mut vipd: Vec<Proc> = (0..N)
        .map(|i| start_vipd(&c, &dir, i, &format!("vipd-{i}")))
        .collect();
    let _keepalived: Vec<Proc> = (0..N)
        .map(|i| {
            let conf = dir.join(&format!("keepalived-{i}.conf"));
            let text = example("keepalived-inside.conf")
                .replace("/usr/bin/vipd", env!("CARGO_BIN_EXE_vipd"))
                .replace(
                    "router_id vipd-cluster-1",
                    &format!("router_id vipd-cluster-{i}"),
                )
                .replace("priority 150", &format!("priority {}", 150 - 10 * i));
            std::fs::write(&conf, text).unwrap();
            let pid = |what: &str| dir.join(&format!("keepalived-{i}{what}.pid"));
            c.directors[i].spawn(
                &dir,
                &format!("keepalived-{i}"),
                "keepalived",
                &[
                    "--dont-fork",
                    "--log-console",
                    "--no-syslog",
                    "--vrrp",
                    "--use-file",
                    conf.to_str().unwrap(),
                    "--pid",
                    pid("").to_str().unwrap(),
                    "--vrrp_pid",
                    pid("-vrrp").to_str().unwrap(),
                ],
            )
        })
        .collect();
    let _birds: Vec<Proc> = (0..N)
        .map(|i| {
            let me = outside(i).to_string();
            let config = example("bird-director.conf")
                .replace("router id 10.30.0.11;", &format!("router id {me};"))
                .replace("local 10.30.0.11 as", &format!("local {me} as"));
            start_bird(&c.directors[i], &dir, &format!("bird-{i}"), config)
        })
        .collect();

    // Announced: the router has one next hop per director.
    let all = hops_of(&[0, 1, 2]);
    wait_for(
        "three next hops on the router",
        Duration::from_secs(30),
        || next_hops(&c) == all,
    );
    wait_for(
        "the virtual address serves",
        Duration::from_secs(10),
        || {
            c.client
                .curl("http://192.0.2.1/", Duration::from_secs(2))
                .status
                == 200
        },
    );

    // Spread: new connections from many client ports reach every director.
    let before: Vec<f64> = c.directors.iter().map(connections_total).collect();
    let w = c.client.wrk(
        "http://192.0.2.1/",
        2,
        32,
        Duration::from_secs(4),
        &["-H", "Connection: close"],
    );
    assert_eq!(w.errors(), 0, "{}", w.text);
    assert_eq!(w.non_2xx, 0, "{}", w.text);
    let shares: Vec<f64> = c
        .directors
        .iter()
        .zip(&before)
        .map(|(d, b)| connections_total(d) - b)
        .collect();
    let total: f64 = shares.iter().sum();
    println!(
        "spread of {total} new connections over 3 directors: {:?} ({:?} %)",
        shares,
        shares
            .iter()
            .map(|s| (100.0 * s / total).round())
            .collect::<Vec<_>>()
    );
    assert!(
        shares.iter().all(|&s| s > total / 10.0),
        "every director carries a share: {shares:?}"
    );
    let returns: f64 = c
        .directors
        .iter()
        .map(|d| Metrics::scrape(d).get("vipd_cluster_returns_total", &[]))
        .sum();
    println!("server replies translated without a connection (by the binding table): {returns}");

    // Graceful removal: director 0 drains under 20 long downloads.
    let held = downloads(&c, &dir, "drain", 20, 10);
    let established = |d: &Netns| -> usize {
        let v: serde_json::Value =
            serde_json::from_str(&admin_get(d, "/connections?state=established&limit=10000"))
                .unwrap_or_default();
        v["connections"].as_array().map_or(0, Vec::len)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.directors.iter().all(|d| established(d) >= 20) {
        if Instant::now() > deadline {
            for d in &c.directors {
                println!("{}: {} established", d.name, established(d));
            }
            panic!("the downloads' connections were not synced everywhere");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = c.directors[0].exec(env!("CARGO_BIN_EXE_vipd"), &["ha", "drain"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started = Instant::now();
    wait_for("director 0 withdrawn", Duration::from_secs(10), || {
        next_hops(&c) == hops_of(&[1, 2])
    });
    println!(
        "drain: the router dropped director 0 after {:?}",
        started.elapsed()
    );
    let w = c.client.wrk(
        "http://192.0.2.1/",
        1,
        8,
        Duration::from_secs(2),
        &["-H", "Connection: close"],
    );
    assert_eq!(w.errors(), 0, "new connections while draining: {}", w.text);
    let ok = completed(held);
    println!("drain: {ok} of 20 downloads completed");
    assert_eq!(ok, 20, "downloads broken by a drain");
    vipd[0].wait_log("drained", Duration::from_secs(20));

    // Crash: director 1's vipd is killed under 20 long downloads; its routes go with it.
    let held = downloads(&c, &dir, "crash", 20, 10);
    std::thread::sleep(Duration::from_secs(1));
    let killed = Instant::now();
    vipd[1].signal(libc::SIGKILL);
    wait_for("director 1 withdrawn", Duration::from_secs(15), || {
        next_hops(&c) == hops_of(&[2])
    });
    println!(
        "crash: the router dropped director 1 after {:?}",
        killed.elapsed()
    );
    let ok = completed(held);
    println!("crash: {ok} of 20 downloads completed");
    assert!(ok >= 18, "downloads through a crashed director: {ok} of 20");

    // Joining: directors 0 and 1 come back under load; nothing established breaks.
    let held = downloads(&c, &dir, "join", 20, 10);
    std::thread::sleep(Duration::from_secs(1));
    vipd[0] = start_vipd(&c, &dir, 0, "vipd-0-again");
    vipd[1] = start_vipd(&c, &dir, 1, "vipd-1-again");
    wait_for("all three announced again", Duration::from_secs(30), || {
        next_hops(&c) == all
    });
    let ok = completed(held);
    println!("join: {ok} of 20 downloads completed");
    assert_eq!(ok, 20, "downloads broken by directors joining");
    for v in vipd.iter_mut() {
        v.assert_running();
    }
}
