//! End to end: `[director] offload = "xdp"` on the patent's FIG. 3 in namespaces. Established connections
//! are translated by the XDP program in the kernel (native or generic mode), and the counters, idle expiry
//! and start-up refusals read as without it. (The other live tests run in both modes too: `make test` runs
//! live.rs and failure.rs again with `VIPD_TEST_OFFLOAD`.)

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

const ADMIN: &str = "http://127.0.0.1:9469";
/// The download: big enough that nearly all of its frames go through the kernel.
const FILE_BYTES: usize = 4 << 20;

/// One virtual address, 192.0.2.1: port 80 to host A's site 1 (8001), port 7000 to its file server.
fn config(dir: &TempDir, director: &str, timeouts: &str) -> std::path::PathBuf {
    let text = format!(
        r#"[director]
outside = "vipd-out"
inside = "vipd-in"
listen = "127.0.0.1:9469"
{director}

[timeouts]
{timeouts}

[[real]]
name = "host-a"
address = "10.20.0.10"

[[real]]
name = "host-a-site1"
address = "10.20.0.10"
port = 8001

[[virtual]]
name = "site1"
address = "192.0.2.1"
  [[virtual.port]]
  port = 80
  bind = ["host-a-site1"]
  [[virtual.port]]
  port = 7000
  bind = ["host-a"]
"#
    );
    let path = dir.join("vipd.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// FIG. 3 with host A's sites, a file server on host A's 7000, and vipd.
struct Setup {
    fig: Fig3,
    vipd: Proc,
    _sites: Vec<Nginx>,
    _files: (Proc, TempDir),
    _root: TempDir,
    dir: TempDir,
}

impl Setup {
    /// `gro_peers`: GRO on at the peers of the director's veths, which native XDP needs to redirect into
    /// them.
    fn start(director: &str, timeouts: &str, gro_peers: bool) -> Setup {
        let fig = Fig3::new();
        if gro_peers {
            fig.client.exec_ok("ethtool", &["-K", "eth0", "gro", "on"]);
            fig.lan.exec_ok("ethtool", &["-K", "port-d", "gro", "on"]);
        }
        let sites = fig.start_sites();
        let root = TempDir::new("vipd-offload-files");
        let body: Vec<u8> = (0..FILE_BYTES).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(root.join("file"), &body).unwrap();
        let files = file_server(&fig.servers[0], 7000, "A", &root.0);
        let dir = TempDir::new("vipd-offload");
        let cfg = config(&dir, director, timeouts);
        let mut vipd = fig.start_vipd(&dir, &cfg, &[]);
        vipd.wait_log("data path running", Duration::from_secs(20));
        wait_for("site 1 serving", Duration::from_secs(20), || {
            vipd.assert_running();
            let c = fig.client.curl("http://192.0.2.1/", Duration::from_secs(2));
            c.exit == 0 && c.status == 200
        });
        Setup {
            fig,
            vipd,
            _sites: sites,
            _files: files,
            _root: root,
            dir,
        }
    }

    fn metrics(&self) -> String {
        let out = self.fig.director.exec(
            "curl",
            &["-sS", "--max-time", "5", &format!("{ADMIN}/metrics")],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The value of the series `name{labels}`, 0 when absent.
fn series(text: &str, name_and_labels: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

/// Frames and bytes vipd received on `interface`, whichever path (libpcap or the kernel) carried them.
fn received(text: &str, interface: &str) -> (u64, u64) {
    let frames = ["forwarded", "replied", "dropped", "consumed"]
        .iter()
        .map(|r| {
            series(
                text,
                &format!(
                    "vipd_packets_total{{interface=\"{interface}\",direction=\"in\",result=\"{r}\"}}"
                ),
            )
        })
        .sum();
    let bytes = series(
        text,
        &format!("vipd_bytes_total{{interface=\"{interface}\",direction=\"in\"}}"),
    );
    (frames, bytes)
}

/// Frames and bytes `dev` in `ns` sent: what arrived at the director's end of the pair.
fn sent(ns: &Netns, dev: &str) -> (u64, u64) {
    let read = |what: &str| -> u64 {
        let out = ns.exec_ok("cat", &[&format!("/sys/class/net/{dev}/statistics/{what}")]);
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (read("tx_packets"), read("tx_bytes"))
}

/// (frames, bytes).
type Count = (u64, u64);

/// Both ends' counts once they stop moving (the director publishes every 250 ms): vipd's outside, the
/// client's, vipd's inside, the bridge's.
fn settled(s: &Setup) -> (Count, Count, Count, Count) {
    let read = || {
        let m = s.metrics();
        (
            received(&m, "outside"),
            sent(&s.fig.client, "eth0"),
            received(&m, "inside"),
            sent(&s.fig.lan, "port-d"),
        )
    };
    let mut last = read();
    let start = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(600));
        let now = read();
        if now == last {
            return now;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the counts never settled: vipd outside {:?} / client sent {:?}, vipd inside {:?} / lan sent {:?}",
            now.0,
            now.1,
            now.2,
            now.3
        );
        last = now;
    }
}

/// Downloads, keep-alive requests and new connections through the director; then every frame each
/// peer sent the director is counted exactly once by vipd, though most of them never reached it.
fn counted_once(director: &str, gro_peers: bool, mode: &str) {
    let _lock = serial();
    let s = Setup::start(director, "", gro_peers);
    let m = s.metrics();
    assert_eq!(
        series(&m, &format!("vipd_offload_info{{mode=\"{mode}\"}}")),
        1,
        "{m}"
    );
    let before = settled(&s);
    let out = s.dir.join("got");
    for _ in 0..3 {
        let c = s.fig.client.exec(
            "curl",
            &[
                "-sS",
                "--max-time",
                "30",
                "-o",
                out.to_str().unwrap(),
                "-w",
                "%{size_download}",
                "http://192.0.2.1:7000/file",
            ],
        );
        assert!(c.status.success(), "{c:?}\n{}", s.vipd.log());
        assert_eq!(
            std::fs::read(&out).unwrap(),
            std::fs::read(s._root.join("file")).unwrap(),
            "the download arrived changed"
        );
    }
    // 20 requests on one keep-alive connection, and 10 connections of one request each.
    let urls: Vec<&str> = std::iter::repeat_n("http://192.0.2.1/", 20).collect();
    let mut args = vec!["-sS", "--max-time", "20", "-o", "/dev/null"];
    args.extend(urls.iter().flat_map(|u| ["-o", "/dev/null", *u]));
    assert!(s.fig.client.exec("curl", &args).status.success());
    for _ in 0..10 {
        let c = s
            .fig
            .client
            .curl("http://192.0.2.1/", Duration::from_secs(5));
        assert_eq!((c.exit, c.status), (0, 200), "{c:?}");
    }
    let after = settled(&s);
    let m = s.metrics();
    let redirected = |iface: &str| {
        series(
            &m,
            &format!("vipd_xdp_frames_total{{interface=\"{iface}\",verdict=\"redirected\"}}"),
        )
    };
    let client_frames = after.1.0 - before.1.0;
    let server_frames = after.3.0 - before.3.0;
    eprintln!(
        "{mode}: client sent {client_frames} frames, {} redirected by the kernel; the servers' side {server_frames}, {} redirected; {} connections offloaded",
        redirected("outside"),
        redirected("inside"),
        series(&m, "vipd_offload_connections_total{result=\"offloaded\"}")
    );
    // Exactly once: the director's in-counts moved as much as the peers' out-counts (settled() waited
    // for equality; here the deltas are checked to have been large and carried by the kernel).
    let delta = |a: Count, b: Count| (a.0 - b.0, a.1 - b.1);
    eprintln!(
        "vipd outside {:?} client {:?}; vipd inside {:?} lan {:?}",
        delta(after.0, before.0),
        delta(after.1, before.1),
        delta(after.2, before.2),
        delta(after.3, before.3)
    );
    assert_eq!(after.0.0 - before.0.0, client_frames);
    assert_eq!(after.2.0 - before.2.0, server_frames);
    // Bytes too. A veth whose peer runs native XDP reports what it sent from the peer's XDP receive
    // statistics, which leave out the 14-byte Ethernet header; vipd counts whole frames, as without XDP.
    let header = if mode == "native" { 14 } else { 0 };
    assert_eq!(
        after.0.1 - before.0.1,
        after.1.1 - before.1.1 + header * client_frames
    );
    assert_eq!(
        after.2.1 - before.2.1,
        after.3.1 - before.3.1 + header * server_frames
    );
    assert!(server_frames > 2000, "{server_frames}");
    assert!(
        // (The first 10 ms of each download, and the single requests, stay in user space.)
        redirected("inside") * 2 > server_frames,
        "most of the servers' frames should have gone through the kernel: {} of {server_frames}",
        redirected("inside")
    );
    assert!(redirected("outside") > 0);
    // At least the 3 downloads (a single request is over before OFFLOAD_AFTER).
    assert!(series(&m, "vipd_offload_connections_total{result=\"offloaded\"}") >= 3);
    // Every connection closed: none is left in the kernel.
    wait_for(
        "no connection left in the kernel",
        Duration::from_secs(10),
        || series(&s.metrics(), "vipd_offload_connections") == 0,
    );
}

#[test]
/// Native XDP (the peers have GRO on): frames counted once, downloads intact.
fn native_frames_are_counted_once_whichever_path_carried_them() {
    counted_once("offload = \"xdp\"\nxdp_mode = \"native\"", true, "native");
}

#[test]
/// `xdp_mode = "auto"` where the peers cannot take natively redirected frames (GRO off): generic XDP,
/// frames counted once, downloads intact.
fn auto_falls_back_to_generic_and_counts_once() {
    counted_once("offload = \"xdp\"", false, "generic");
}

#[test]
/// `xdp_mode = "native"` where a peer cannot take redirected frames: vipd refuses to start, and says why.
fn native_mode_is_refused_where_frames_would_be_lost() {
    let fig = Fig3::new();
    let dir = TempDir::new("vipd-offload");
    let cfg = config(&dir, "offload = \"xdp\"\nxdp_mode = \"native\"", "");
    let mut vipd = fig.start_vipd(&dir, &cfg, &[]);
    vipd.wait_log("cannot start", Duration::from_secs(20));
    let log = vipd.log();
    assert!(log.contains("ndo-xmit") && log.contains("gro on"), "{log}");
    assert!(!log.contains("data path running"), "{log}");
}

#[test]
/// A keep-alive connection whose frames flow only through the kernel is not expired by the idle timeout
/// (3 s here) while it is used, and is expired once it is really idle.
fn offloaded_connection_expires_only_when_idle() {
    let s = Setup::start("offload = \"xdp\"", "established = \"3s\"", false);
    let request = b"GET / HTTP/1.1\r\nHost: 192.0.2.1\r\n\r\n";
    let mut conn = s.fig.client.run_in(|| {
        TcpStream::connect_timeout(
            &SocketAddr::from(([192, 0, 2, 1], 80)),
            Duration::from_secs(5),
        )
        .unwrap()
    });
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let ask = |conn: &mut TcpStream| -> std::io::Result<String> {
        conn.write_all(request)?;
        let mut buf = [0u8; 4096];
        let n = conn.read(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    // 9 requests 1 s apart: 9 s of use, three times the idle timeout, all of it through the kernel.
    let before = s.metrics();
    for i in 0..9 {
        let answer =
            ask(&mut conn).unwrap_or_else(|e| panic!("request {i}: {e}\n{}", s.vipd.log()));
        assert!(answer.contains("site 1 on host A"), "{answer}");
        std::thread::sleep(Duration::from_secs(1));
    }
    let during = s.metrics();
    let redirected = |m: &str| {
        series(
            m,
            "vipd_xdp_frames_total{interface=\"outside\",verdict=\"redirected\"}",
        )
    };
    assert!(
        redirected(&during) >= redirected(&before) + 9,
        "the requests should have gone through the kernel"
    );
    assert_eq!(series(&during, "vipd_offload_connections"), 1);
    // Idle now: expired after the timeout, and out of the kernel.
    wait_for(
        "the idle connection expired",
        Duration::from_secs(10),
        || series(&s.metrics(), "vipd_offload_connections") == 0,
    );
    let m = s.metrics();
    // Its next frame reaches the director, which has no connection for it.
    let dropped = |m: &str| {
        series(
            m,
            "vipd_drops_total{interface=\"outside\",reason=\"no_connection\"}",
        )
    };
    let before_drop = dropped(&m);
    assert!(ask(&mut conn).is_err(), "an expired connection answered");
    assert!(dropped(&s.metrics()) > before_drop);

    // A vipd that dies, however it dies, leaves no translation behind: the program is attached through
    // BPF links, which the kernel removes with the process.
    let attached = |dev: &str| {
        let out = s.fig.director.exec_ok("ip", &["link", "show", "dev", dev]);
        String::from_utf8_lossy(&out.stdout).contains("xdp")
    };
    assert!(attached("vipd-out") && attached("vipd-in"));
    s.vipd.signal(libc::SIGKILL);
    wait_for(
        "the XDP program gone with vipd",
        Duration::from_secs(10),
        || !attached("vipd-out") && !attached("vipd-in"),
    );
}
