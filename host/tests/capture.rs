//! The capture loop on real veths with a "wire" handler: every frame leaves by the other interface
//! unchanged. Proves capture, injection and that our own sent frames are not captured again.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use vipd::Interface;
use vipd::capture::{Action, CaptureConfig, CaptureStats, Control, DataPath, Handler};

/// Forwards every frame to the other side; counts ticks.
struct Wire {
    ticks: u64,
}

impl Handler for Wire {
    fn handle(&mut self, from: Interface, _frame: &mut [u8], _now: Duration) -> Action {
        Action::Send(from.other())
    }
    fn reply(&self) -> &[u8] {
        &[]
    }
    fn tick(&mut self, _now: Duration, _send: &mut dyn FnMut(Interface, &[u8])) {
        self.ticks += 1;
    }
}

/// client (198.51.100.2) -- [w-out  DataPath  w-in] -- server (198.51.100.3), one subnet.
struct WireSetup {
    client: Netns,
    wire: Netns,
    server: Netns,
    stop: Arc<AtomicBool>,
    stats: Arc<CaptureStats>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl WireSetup {
    fn new(cfg: CaptureConfig) -> WireSetup {
        require_root();
        let client = Netns::new("wc");
        let wire = Netns::new("ww");
        let server = Netns::new("ws");
        veth(&client, "eth0", &wire, "w-out");
        veth(&wire, "w-in", &server, "eth0");
        client.addr("eth0", "198.51.100.2/24");
        server.addr("eth0", "198.51.100.3/24");
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let s = stop.clone();
        let thread = wire.thread(move || {
            let mut dp = DataPath::open(("w-out", 1500), ("w-in", 1500), cfg, Instant::now())
                .expect("open the wire");
            tx.send((dp.stats(), dp.waker())).unwrap();
            let mut wire = Wire { ticks: 0 };
            dp.run(&mut wire, &mut |_| {
                if s.load(Ordering::Relaxed) {
                    Control::Stop
                } else {
                    Control::Continue
                }
            })
            .unwrap();
            wire.ticks
        });
        let (stats, waker) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("data path started");
        drop(waker);
        WireSetup {
            client,
            wire,
            server,
            stop,
            stats,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

fn get(s: &CaptureStats, i: Interface) -> [u64; 5] {
    let p = s.port(i);
    [
        p.received.load(Ordering::Relaxed),
        p.sent.load(Ordering::Relaxed),
        p.send_errors.load(Ordering::Relaxed),
        p.oversize.load(Ordering::Relaxed),
        p.pcap_drop.load(Ordering::Relaxed),
    ]
}

#[test]
/// ARP, ping and HTTP cross the wire; each frame received on one side is sent once on the other, none
/// is captured twice, no send fails; the loop ticks while traffic flows and stops when told.
fn wire_forwards_unchanged() {
    let w = WireSetup::new(CaptureConfig::default());
    let _site = Nginx::start(&w.server, &[(80, "behind the wire")]);
    let ping = w
        .client
        .exec("ping", &["-c", "3", "-i", "0.2", "-W", "2", "198.51.100.3"]);
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    for _ in 0..5 {
        let c = w
            .client
            .curl("http://198.51.100.3/", Duration::from_secs(5));
        assert_eq!(
            (c.exit, c.status, c.body.trim()),
            (0, 200, "behind the wire"),
            "{}",
            c.stderr
        );
    }
    let stats = w.stats.clone();
    let ticks = w.finish();
    let (o, i) = (
        get(&stats, Interface::Outside),
        get(&stats, Interface::Inside),
    );
    eprintln!("outside [rx, tx, err, oversize, drop] = {o:?}; inside = {i:?}; ticks = {ticks}");
    assert!(o[0] > 20 && i[0] > 20, "{o:?} {i:?}");
    assert_eq!(o[0], i[1], "every outside frame sent inside once");
    assert_eq!(i[0], o[1], "every inside frame sent outside once");
    assert_eq!([o[2], o[3], o[4], i[2], i[3], i[4]], [0; 6]);
    assert!(ticks > 10);
}

#[test]
/// Super-frames (GRO on the wire's outside merges the client's segments into frames larger than the MTU)
/// are counted as oversize and never forwarded truncated.
fn oversize_frames_counted() {
    let w = WireSetup::new(CaptureConfig::default());
    w.wire
        .exec_ok("ethtool", &["-K", "w-out", "gro", "on", "rx", "on"]);
    let _site = Nginx::start(&w.server, &[(80, "x")]);
    let body = "y".repeat(200_000);
    let path = std::env::temp_dir().join(format!("vipd-post-{}", std::process::id()));
    std::fs::write(&path, body).unwrap();
    let _ = w.client.exec(
        "curl",
        &[
            "-s",
            "--max-time",
            "3",
            "--data-binary",
            &format!("@{}", path.display()),
            "http://198.51.100.3/",
        ],
    );
    let _ = std::fs::remove_file(&path);
    let stats = w.stats.clone();
    w.finish();
    let o = get(&stats, Interface::Outside);
    eprintln!("outside [rx, tx, err, oversize, drop] = {o:?}");
    assert!(o[3] > 0, "no oversize frame counted: {o:?}");
}

#[test]
/// Throughput of the bare loop: wrk through the wire for 3 s with keep-alive and 3 s with a connection per
/// request; zero socket errors with keep-alive; prints the figures.
fn wire_load() {
    let w = WireSetup::new(CaptureConfig::default());
    let _site = Nginx::start(&w.server, &[(80, "ok")]);
    w.client
        .wait_port("198.51.100.3".parse().unwrap(), 80, Duration::from_secs(10));
    let url = "http://198.51.100.3/";
    let r = w.client.wrk(url, 2, 100, Duration::from_secs(3), &[]);
    let c = w.client.wrk(
        url,
        2,
        100,
        Duration::from_secs(3),
        &["-H", "Connection: close"],
    );
    eprintln!(
        "wire, a new connection per request: {:.0} conn/s, socket errors {:?}",
        c.rps, c.socket_errors
    );
    let stats = w.stats.clone();
    w.finish();
    let (o, i) = (
        get(&stats, Interface::Outside),
        get(&stats, Interface::Inside),
    );
    let full = stats.outside.batch_full.load(Ordering::Relaxed)
        + stats.inside.batch_full.load(Ordering::Relaxed);
    eprintln!(
        "wire: {} requests, {:.0} req/s, socket errors {:?}, non-2xx {}; outside {o:?} inside {i:?}, \
         batch_full {full}",
        r.requests, r.rps, r.socket_errors, r.non_2xx
    );
    assert!(r.requests > 0, "{}", r.text);
    assert_eq!((r.errors(), r.non_2xx), (0, 0), "{}", r.text);
    assert_eq!([o[2], o[4], i[2], i[4]], [0; 4]);
}
