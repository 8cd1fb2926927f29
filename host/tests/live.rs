//! End-to-end tests of `vipd run`: the real daemon between a client and the FIG. 3 servers, each test in
//! its own network namespaces (see `common::Fig3`). Configs live in `tests/configs/`. Heavy tests (wrk) take
//! `common::serial()`. Counters come from the daemon's `SIGUSR1` (`vipd stats`) and exit (`vipd stopped`)
//! log lines.

mod common;

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

/// A config file of the repository, by path from its root.
fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join(path)
}

/// FIG. 3 with its sites and `vipd run` serving `config`.
struct Live {
    fig: Fig3,
    _sites: Vec<Nginx>,
    vipd: Proc,
    _dir: TempDir,
}

impl Live {
    /// Builds FIG. 3, starts the sites and vipd, and waits until `ready` (a URL) answers from the client.
    fn start(config: &str, ready: &str) -> Live {
        let fig = Fig3::new();
        let sites = fig.start_sites();
        Live::with(fig, sites, &repo_file(config), ready)
    }

    fn with(fig: Fig3, sites: Vec<Nginx>, config: &std::path::Path, ready: &str) -> Live {
        let dir = TempDir::new("vipd-live");
        let mut vipd = fig.start_vipd(&dir, config, &[]);
        vipd.wait_log("data path running", Duration::from_secs(20));
        let mut live = Live {
            fig,
            _sites: sites,
            vipd,
            _dir: dir,
        };
        live.wait_ready(ready);
        live
    }

    /// Waits until a GET of `url` from the client answers 200.
    fn wait_ready(&mut self, url: &str) {
        let start = Instant::now();
        loop {
            let c = self.fig.client.curl(url, Duration::from_secs(2));
            if c.exit == 0 && c.status == 200 {
                return;
            }
            self.vipd.assert_running();
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{url} never answered: {c:?}\n{}",
                self.vipd.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The body of a GET of `url` from the client, which must answer 200.
    fn get(&self, url: &str) -> String {
        let c = self.fig.client.curl(url, Duration::from_secs(5));
        assert!(
            c.exit == 0 && c.status == 200,
            "GET {url}: {c:?}\n{}",
            self.vipd.log()
        );
        c.body.trim().to_owned()
    }

    /// The bodies of `n` GETs of `url`.
    fn bodies(&self, url: &str, n: usize) -> BTreeSet<String> {
        (0..n).map(|_| self.get(url)).collect()
    }
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
/// examples/fig3.toml: every VIP answers with its own site, from exactly the hosts bound to its port.
fn fig3_each_vip_reaches_its_site_on_a_bound_host() {
    let live = Live::start("examples/fig3.toml", "http://192.0.2.1/");
    let expect = [
        (
            "http://192.0.2.1/",
            set(&["site 1 on host A", "site 1 on host B", "site 1 on host C"]),
        ),
        (
            "http://192.0.2.2/",
            set(&["site 2 on host A", "site 2 on host C"]),
        ),
        (
            "http://192.0.2.3/",
            set(&["site 3 on host A", "site 3 on host C"]),
        ),
    ];
    for (url, hosts) in expect {
        // Round-robin: 2 rounds reach every bound host, and nothing else may answer.
        let got = live.bodies(url, 2 * hosts.len());
        assert_eq!(got, hosts, "{url}");
    }
}

#[test]
/// tests/configs/modes.toml: whole machine to whole machine, every port to one real port, and port by port
/// each reach exactly the real port their binding names.
fn binding_modes_reach_the_bound_real_ports() {
    let live = Live::start("tests/configs/modes.toml", "http://192.0.2.10:9001/");
    let expect: [(&str, &[&str]); 9] = [
        // Mode 1: whole machine, same port numbers.
        ("http://192.0.2.10:9001/", &["site 1 on host C"]),
        ("http://192.0.2.10:9002/", &["site 2 on host C"]),
        ("http://192.0.2.10:9003/", &["site 3 on host C"]),
        // Mode 2: every port to host A's 8002.
        ("http://192.0.2.11:80/", &["site 2 on host A"]),
        ("http://192.0.2.11:443/", &["site 2 on host A"]),
        ("http://192.0.2.11:8080/", &["site 2 on host A"]),
        // Mode 3: port by port; port 80 falls back to the virtual machine's bind.
        ("http://192.0.2.12:80/", &["site 1 on host B"]),
        ("http://192.0.2.12:81/", &["site 3 on host A"]),
        (
            "http://192.0.2.12:82/",
            &["site 1 on host A", "site 1 on host C"],
        ),
    ];
    for (url, hosts) in expect {
        assert_eq!(live.bodies(url, 2 * hosts.len()), set(hosts), "{url}");
    }
}

#[test]
/// A port the virtual machine does not support is refused at once: TCP gets a RST (connection refused,
/// curl exit 7), UDP an ICMP port unreachable; no timeout.
fn unsupported_port_is_refused_at_once() {
    let live = Live::start("examples/fig3.toml", "http://192.0.2.1/");
    let start = Instant::now();
    let c = live
        .fig
        .client
        .curl("http://192.0.2.1:81/", Duration::from_secs(10));
    let took = start.elapsed();
    assert_eq!(c.exit, 7, "{c:?}");
    assert!(took < Duration::from_secs(1), "curl took {took:?}");

    let (tcp, udp) = live.fig.client.run_in(|| {
        let start = Instant::now();
        let tcp = TcpStream::connect_timeout(
            &SocketAddr::from(([192, 0, 2, 3], 8080)),
            Duration::from_secs(5),
        )
        .map(|_| ())
        .map_err(|e| e.kind());
        let tcp_took = start.elapsed();
        let udp = UdpSocket::bind("0.0.0.0:0").unwrap();
        udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        udp.connect("192.0.2.1:54").unwrap();
        let start = Instant::now();
        udp.send(b"hello").unwrap();
        let r = udp.recv(&mut [0u8; 64]).map(|_| ()).map_err(|e| e.kind());
        ((tcp, tcp_took), (r, start.elapsed()))
    });
    assert_eq!(tcp.0, Err(ErrorKind::ConnectionRefused), "tcp {tcp:?}");
    assert!(tcp.1 < Duration::from_secs(1), "tcp {tcp:?}");
    assert_eq!(udp.0, Err(ErrorKind::ConnectionRefused), "udp {udp:?}");
    assert!(udp.1 < Duration::from_secs(1), "udp {udp:?}");
    // And the supported port still serves.
    assert_eq!(
        live.get("http://192.0.2.1:80/").split(' ').next(),
        Some("site")
    );
}

#[test]
/// wrk with 1,000 concurrent keep-alive connections for 10 s through one VIP (three servers): no socket
/// error, no non-2xx answer, and neither capture ring dropped a frame.
fn load_1000_connections_without_errors_or_capture_drops() {
    let _serial = serial();
    raise_nofile(65536);
    let mut live = Live::start("examples/fig3.toml", "http://192.0.2.1/");
    let w = live
        .fig
        .client
        .wrk("http://192.0.2.1/", 2, 1000, Duration::from_secs(10), &[]);
    let stats = live.vipd.vipd_stop();
    eprintln!("{}", w.text);
    eprintln!("{stats:?}");
    assert!(w.requests > 1000, "{}", w.text);
    assert_eq!((w.errors(), w.non_2xx), (0, 0), "{}", w.text);
    for key in [
        "pcap_drop_outside",
        "pcap_drop_inside",
        "pcap_ifdrop_outside",
        "pcap_ifdrop_inside",
        "send_errors_outside",
        "send_errors_inside",
    ] {
        assert_eq!(stats.get(key), 0, "{key}: {stats:?}");
    }
    assert!(stats.get("connections_created") >= 1000, "{stats:?}");
}
