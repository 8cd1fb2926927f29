//! IPv6 end to end (issue 13): the real daemon between IPv6 clients and IPv6 real servers, in namespaces
//! with IPv6 on, beside IPv4 clients of the same director.
//!
//! ```text
//!  client (2001:db8:c::2, 198.51.100.2) ─┐
//!                                        wan bridge ── vipd-out [director] vipd-in ── lan bridge ─┬─ A (2001:db8:1::10, 10.20.0.10)
//!  far (2001:db8:e::2) ─ R1 ═1280═ R2 ───┘                (2001:db8:1::1)                         ├─ B (2001:db8:1::11)
//!                                                                                                  └─ R3 ═1280═ R4 ─ C (2001:db8:4::10)
//! ```
//!
//! Every end host has an MTU of 1500; the links R1═R2 and R3═R4 have 1280 (IPv6's minimum). IPv6 routers
//! never fragment, so a full-sized packet crossing one of those links only gets through once its sender
//! learned the path MTU from an ICMPv6 packet-too-big message, and in both cases that message has to cross
//! the director, which must translate it:
//! - a download by `far`: A's 1500-byte segments (sent as the VIP once translated) stop at R2, whose
//!   packet-too-big goes to the VIP: the director translates it back to A (inbound ICMP error);
//! - an upload by `client` to C: its segments to the VIP (sent to C once translated) stop at R3, whose
//!   packet-too-big about "client -> C" goes to the client through the director, which translates the
//!   quoted destination back to the VIP (outbound ICMP error).
//!
//! Negotiated MSS cannot avoid it: every end host announces 1440.

mod common;

use std::time::Duration;

use common::*;

const VIP_WHOLE: &str = "2001:db8:f::1";
const VIP_ONE_PORT: &str = "2001:db8:f::2";
const VIP_PORTS: &str = "2001:db8:f::3";
const VIP_C: &str = "2001:db8:f::4";
const VIP_FAILOVER: &str = "2001:db8:f::5";
const FAR: &str = "2001:db8:e::2";
const CLIENT6: &str = "2001:db8:c::2";

/// The topology above, its sites and the director.
struct Topology {
    client: Netns,
    far: Netns,
    routers: [Netns; 4],
    wan: Netns,
    director: Netns,
    lan: Netns,
    servers: [Netns; 3],
}

/// A bridge in `ns` called `br0`, up.
fn bridge(ns: &Netns) {
    ns.ip(&["link", "add", "br0", "type", "bridge"]);
    ns.ip(&["link", "set", "br0", "up"]);
}

/// A veth from `a` (device `a_dev`) to a port of the bridge in `br`.
fn to_bridge(a: &Netns, a_dev: &str, br: &Netns, port: &str) {
    veth(a, a_dev, br, port);
    br.ip(&["link", "set", port, "master", "br0"]);
}

/// A 1280-byte link between routers `a` and `b`: `a_addr` and `b_addr` on a /64.
fn narrow(a: &Netns, b: &Netns, a_addr: &str, b_addr: &str) {
    veth(a, "narrow", b, "narrow");
    for (ns, addr) in [(a, a_addr), (b, b_addr)] {
        ns.ip(&["link", "set", "narrow", "mtu", "1280"]);
        ns.addr6("narrow", addr);
    }
}

impl Topology {
    fn new() -> Topology {
        let t = Topology {
            client: Netns::new_v6("client"),
            far: Netns::new_v6("far"),
            routers: [
                Netns::new_v6("r1"),
                Netns::new_v6("r2"),
                Netns::new_v6("r3"),
                Netns::new_v6("r4"),
            ],
            wan: Netns::new_v6("wan"),
            director: Netns::new_v6("director"),
            lan: Netns::new_v6("lan"),
            servers: [Netns::new_v6("a"), Netns::new_v6("b"), Netns::new_v6("c")],
        };
        let [r1, r2, r3, r4] = &t.routers;
        for r in &t.routers {
            r.sysctl("net.ipv6.conf.all.forwarding", "1");
        }

        // Outside: the client and R2 on the wan bridge with the director; the virtual addresses on-link.
        bridge(&t.wan);
        to_bridge(&t.director, "vipd-out", &t.wan, "port-d");
        to_bridge(&t.client, "eth0", &t.wan, "port-c");
        to_bridge(r2, "wan", &t.wan, "port-r");
        t.client.addr6("eth0", &format!("{CLIENT6}/64"));
        t.client.addr("eth0", "198.51.100.2/24");
        t.client
            .ip(&["-6", "route", "add", "2001:db8:f::/64", "dev", "eth0"]);
        t.client.ip(&["route", "add", VIP_NET, "dev", "eth0"]);
        r2.addr6("wan", "2001:db8:c::3/64");
        r2.ip(&["-6", "route", "add", "2001:db8:f::/64", "dev", "wan"]);
        narrow(r1, r2, "2001:db8:d::1/64", "2001:db8:d::2/64");
        r2.ip(&[
            "-6",
            "route",
            "add",
            "2001:db8:e::/64",
            "via",
            "2001:db8:d::1",
        ]);
        r1.ip(&["-6", "route", "add", "default", "via", "2001:db8:d::2"]);
        veth(r1, "far", &t.far, "eth0");
        r1.addr6("far", "2001:db8:e::1/64");
        t.far.addr6("eth0", &format!("{FAR}/64"));
        t.far
            .ip(&["-6", "route", "add", "default", "via", "2001:db8:e::1"]);

        // Inside: A, B and R3 on the lan bridge with the director's inside (their gateway).
        bridge(&t.lan);
        to_bridge(&t.director, "vipd-in", &t.lan, "port-d");
        t.director.addr6("vipd-in", "2001:db8:1::1/64");
        t.director.addr("vipd-in", "10.20.0.1/24");
        t.director.sysctl("net.ipv4.ip_forward", "0");
        t.director.sysctl("net.ipv6.conf.all.forwarding", "0");
        t.director.sysctl("net.ipv4.conf.all.arp_ignore", "1");
        t.director.ip(&["link", "set", "vipd-out", "up"]);
        let [a, b, c] = &t.servers;
        for (i, (s, addr6)) in [(a, "2001:db8:1::10/64"), (b, "2001:db8:1::11/64")]
            .into_iter()
            .enumerate()
        {
            to_bridge(s, "eth0", &t.lan, ["port-a", "port-b"][i]);
            s.addr6("eth0", addr6);
            s.ip(&["-6", "route", "add", "default", "via", "2001:db8:1::1"]);
        }
        a.addr("eth0", "10.20.0.10/24");
        a.ip(&["route", "add", "default", "via", "10.20.0.1"]);
        to_bridge(r3, "lan", &t.lan, "port-r");
        r3.addr6("lan", "2001:db8:1::20/64");
        r3.ip(&["-6", "route", "add", "default", "via", "2001:db8:1::1"]);
        narrow(r3, r4, "2001:db8:3::1/64", "2001:db8:3::2/64");
        r3.ip(&[
            "-6",
            "route",
            "add",
            "2001:db8:4::/64",
            "via",
            "2001:db8:3::2",
        ]);
        r4.ip(&["-6", "route", "add", "default", "via", "2001:db8:3::1"]);
        veth(r4, "srv", c, "eth0");
        r4.addr6("srv", "2001:db8:4::1/64");
        c.addr6("eth0", "2001:db8:4::10/64");
        c.ip(&["-6", "route", "add", "default", "via", "2001:db8:4::1"]);
        t
    }

    /// The director's config: three IPv6 virtual machines, one per binding mode, on A and B (no static
    /// MAC: found by solicitation); a fourth on C behind R3 (not on-link: its static `mac` is R3's); an
    /// IPv4 virtual machine on A beside them.
    fn config(&self, dir: &TempDir) -> std::path::PathBuf {
        let r3_mac = format_mac(mac_of(&self.routers[2], "lan"));
        let text = format!(
            r#"[director]
outside = "vipd-out"
inside = "vipd-in"
syn_retries = 0

[[real]]
name = "a"
address = "2001:db8:1::10"
check = {{ kind = "http", port = 80, path = "/", interval = "200ms", rise = 1, fall = 1 }}

[[real]]
name = "b"
address = "2001:db8:1::11"
check = {{ kind = "tcp", port = 9001, interval = "200ms", rise = 1, fall = 1 }}

[[real]]
name = "gone"
address = "2001:db8:1::99"
mac = "02:00:00:00:09:99"
backup = "b"
failure_threshold = 1
retry_after = "1h"

[[real]]
name = "unchecked"
address = "2001:db8:1::98"
check = {{ kind = "tcp", port = 80, interval = "200ms", timeout = "100ms", rise = 1, fall = 1 }}

[[real]]
name = "c"
address = "2001:db8:4::10"
mac = "{r3_mac}"

[[real]]
name = "a4"
address = "10.20.0.10"

[[virtual]]
name = "whole"
address = "{VIP_WHOLE}"
bind = ["a"]
  [[virtual.port]]
  port = 80

[[virtual]]
name = "one-port"
address = "{VIP_ONE_PORT}"
bind = ["a:8001"]
  [[virtual.port]]
  port = 80

[[virtual]]
name = "ports"
address = "{VIP_PORTS}"
  [[virtual.port]]
  port = 80
  bind = ["b:9001"]
  [[virtual.port]]
  port = 8080
  bind = ["b:9002"]

[[virtual]]
name = "far-server"
address = "{VIP_C}"
bind = ["c"]
  [[virtual.port]]
  port = 80

[[virtual]]
name = "failover"
address = "{VIP_FAILOVER}"
bind = ["gone:9001"]
  [[virtual.port]]
  port = 80

[[virtual]]
name = "checked"
address = "2001:db8:f::6"
bind = ["unchecked"]
  [[virtual.port]]
  port = 80

[[virtual]]
name = "legacy"
address = "192.0.2.1"
bind = ["a4:80"]
  [[virtual.port]]
  port = 80
"#
        );
        let path = dir.join("ipv6.toml");
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// The body of a curl from `ns` to `url`, which must answer 200.
fn get(ns: &Netns, vipd: &Proc, url: &str) -> String {
    let c = ns.curl(url, Duration::from_secs(10));
    assert!(
        c.exit == 0 && c.status == 200,
        "GET {url}: {c:?}\n{}",
        vipd.log()
    );
    c.body.trim().to_owned()
}

/// `ip -6 route get DST` in `ns`: the route and its cached path MTU, if any.
fn route_get(ns: &Netns, dst: &str) -> String {
    String::from_utf8_lossy(&ns.exec_ok("ip", &["-6", "route", "get", dst]).stdout).into_owned()
}

/// IPv6 through every binding mode, ping and refusal of the VIP, real servers found by neighbour
/// discovery, IPv4 and IPv6 clients side by side, and path MTU discovery through the director in both
/// directions (see the module documentation).
#[test]
fn ipv6_end_to_end() {
    let t = Topology::new();
    let [a, b, c] = &t.servers;
    let _sites = [
        Nginx::start_dual(a, &[(80, "whole on A"), (8001, "one port on A")]),
        Nginx::start_dual(b, &[(9001, "port 80 on B"), (9002, "port 8080 on B")]),
        Nginx::start_dual(c, &[(80, "far server C")]),
    ];
    // A 4 MiB file on A for the download.
    let big: Vec<u8> = (0..4u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::create_dir_all(_sites[0].dir.join("files")).unwrap();
    std::fs::write(_sites[0].dir.join("files/big"), &big).unwrap();

    let dir = TempDir::new("vipd-ipv6");
    let config = with_test_offload(&dir, &t.config(&dir));
    let mut vipd = t.director.spawn(
        &dir,
        "vipd",
        env!("CARGO_BIN_EXE_vipd"),
        &["run", "--config", config.to_str().unwrap()],
    );
    vipd.wait_log("data path running", Duration::from_secs(20));

    // The first request also waits for A to be found by solicitation.
    wait_for("the IPv6 VIP answers", Duration::from_secs(20), || {
        vipd.assert_running();
        t.client
            .curl(&format!("http://[{VIP_WHOLE}]/"), Duration::from_secs(2))
            .status
            == 200
    });
    assert_eq!(
        get(&t.client, &vipd, &format!("http://[{VIP_WHOLE}]/")),
        "whole on A"
    );
    assert_eq!(
        get(&t.client, &vipd, &format!("http://[{VIP_ONE_PORT}]/")),
        "one port on A"
    );
    assert_eq!(
        get(&t.client, &vipd, &format!("http://[{VIP_PORTS}]/")),
        "port 80 on B"
    );
    assert_eq!(
        get(&t.client, &vipd, &format!("http://[{VIP_PORTS}]:8080/")),
        "port 8080 on B"
    );

    // The client learned the VIP's MAC from the director's neighbour advertisement.
    let neigh = String::from_utf8_lossy(
        &t.client
            .exec_ok("ip", &["-6", "neigh", "show", VIP_WHOLE])
            .stdout,
    )
    .into_owned();
    let outside_mac = format_mac(mac_of(&t.director, "vipd-out"));
    assert!(neigh.contains(&outside_mac), "{neigh} has {outside_mac}");

    // ping -6 the VIP: the director answers.
    let ping = t.client.exec(
        "ping",
        &["-6", "-c", "2", "-i", "0.2", "-W", "2", VIP_WHOLE],
    );
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );

    // A port the VIP does not support is refused at once (RST), not timed out.
    let refused = t
        .client
        .curl(&format!("http://[{VIP_WHOLE}]:81/"), Duration::from_secs(5));
    assert_eq!(refused.exit, 7, "connection refused: {refused:?}");

    // Health checks over IPv6: a (HTTP) and b (TCP) are up, nothing answers at "unchecked"'s address.
    wait_for("the checks' verdicts", Duration::from_secs(10), || {
        let status: serde_json::Value =
            serde_json::from_str(&admin_get(&t.director, "/status")).unwrap_or_default();
        let state = |name: &str| {
            status["reals"]
                .as_array()
                .and_then(|r| r.iter().find(|r| r["name"] == name))
                .map(|r| r["state"].as_str().unwrap_or_default().to_owned())
        };
        state("unchecked").as_deref() == Some("failed")
            && state("a").as_deref() == Some("up")
            && state("b").as_deref() == Some("up")
    });
    // Failure handling: "gone" never answers the SYN; it is ditched and failed, and the client's
    // retransmitted SYN goes to its backup b (port 9001 as bound).
    assert_eq!(
        get(&t.client, &vipd, &format!("http://[{VIP_FAILOVER}]/")),
        "port 80 on B"
    );

    // The admin API and metrics name IPv6 addresses as such.
    let status = admin_get(&t.director, "/status");
    assert!(
        status.contains(&format!("\"address\": \"{VIP_WHOLE}\"")),
        "{status}"
    );
    assert!(
        status.contains("\"address\": \"[2001:db8:1::11]:9001\""),
        "{status}"
    );
    let held = t.client.spawn(
        &dir,
        "held",
        "curl",
        &[
            "-sS",
            "--limit-rate",
            "64k",
            "-o",
            "/dev/null",
            &format!("http://[{VIP_WHOLE}]/files/big"),
        ],
    );
    wait_for("a connection listed", Duration::from_secs(10), || {
        admin_get(&t.director, "/connections").contains(&format!("[{CLIENT6}]:"))
    });
    let conns = admin_get(&t.director, "/connections");
    assert!(conns.contains(&format!("[{VIP_WHOLE}]:80")), "{conns}");
    assert!(conns.contains("[2001:db8:1::10]:80"), "{conns}");
    drop(held);

    // IPv4 and IPv6 clients side by side, many requests each, concurrently.
    let (v4, v6) = std::thread::scope(|s| {
        let v4 = s.spawn(|| {
            (0..20)
                .filter(|_| {
                    t.client
                        .curl("http://192.0.2.1/", Duration::from_secs(5))
                        .status
                        == 200
                })
                .count()
        });
        let v6 = s.spawn(|| {
            (0..20)
                .filter(|_| {
                    t.client
                        .curl(&format!("http://[{VIP_WHOLE}]/"), Duration::from_secs(5))
                        .status
                        == 200
                })
                .count()
        });
        (v4.join().unwrap(), v6.join().unwrap())
    });
    assert_eq!((v4, v6), (20, 20), "{}", vipd.log());

    // Download across R1═R2: only the translated packet-too-big lets it complete.
    let out = t.far.exec(
        "curl",
        &[
            "-sS",
            "--max-time",
            "30",
            "-o",
            "/dev/stdout",
            &format!("http://[{VIP_WHOLE}]/files/big"),
        ],
    );
    assert!(
        out.status.success() && out.stdout == big,
        "download of {} bytes, got {}: {}\n{}",
        big.len(),
        out.stdout.len(),
        String::from_utf8_lossy(&out.stderr),
        vipd.log()
    );
    let pmtu = route_get(a, FAR);
    assert!(pmtu.contains("mtu 1280"), "A learned the path MTU: {pmtu}");

    // Upload across R3═R4: R3's packet-too-big reaches the client about the VIP.
    let upload = dir.join("upload");
    std::fs::write(&upload, &big).unwrap();
    let out = t.client.exec(
        "curl",
        &[
            "-sS",
            "--max-time",
            "30",
            "-T",
            upload.to_str().unwrap(),
            "-w",
            "\n%{http_code} %{size_upload}",
            &format!("http://[{VIP_C}]/up"),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.ends_with(&format!("200 {}", big.len())),
        "upload: {text} {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        vipd.log()
    );
    let pmtu = route_get(&t.client, VIP_C);
    assert!(
        pmtu.contains("mtu 1280"),
        "the client learned the path MTU: {pmtu}"
    );

    let stats = vipd.vipd_stop();
    assert_eq!(stats.drop("bad_icmp"), 0, "{:?}", stats.drops());
}
