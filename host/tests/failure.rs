//! End-to-end tests of failure handling (issue 5, docs/failure-handling.md): `vipd run` between a client and
//! the FIG. 3 servers (real nginx, real curl and wrk), with servers stopped (RST), black-holed (their bridge
//! port down), backed up, health-checked and drained. Every test takes the e2e lock (`/tmp/vipd-e2e.lock`) so
//! timing-sensitive checks never share the machine with another heavy test. Configs use `syn_retries = 0`:
//! a client's first SYN retransmission already goes to another server.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use common::*;

const SITE1: &str = "http://192.0.2.1/";
const HEAD: &str = "[director]\noutside = \"vipd-out\"\ninside = \"vipd-in\"\nsyn_retries = 0\n\n";

/// `[[real]]` tables for hosts A, B, C named a, b, c, each with `extra` lines.
fn reals(extra: &str) -> String {
    ["a", "b", "c"]
        .iter()
        .zip(SERVERS)
        .map(|(name, addr)| format!("[[real]]\nname = \"{name}\"\naddress = \"{addr}\"\n{extra}\n"))
        .collect()
}

/// site1 (192.0.2.1:80) bound to A:8001, B:80, C:9001 as in FIG. 3.
const SITE1_VIRTUAL: &str = "[[virtual]]\nname = \"site1\"\naddress = \"192.0.2.1\"\n  [[virtual.port]]\n  \
                             port = 80\n  bind = [\"a:8001\", \"b:80\", \"c:9001\"]\n";

/// vipd serving a config, and where the config lives (to rewrite it for a reload).
struct Vipd {
    proc: Proc,
    config: PathBuf,
    _dir: TempDir,
}

impl Vipd {
    /// Writes `config`, starts `vipd run` in the director namespace and waits until `ready` answers 200.
    fn start(fig: &Fig3, config: &str, ready: &str) -> Vipd {
        let dir = TempDir::new("vipd-failure");
        let path = dir.join("vipd.toml");
        std::fs::write(&path, config).unwrap();
        let mut proc = fig.start_vipd(&dir, &path, &[]);
        proc.wait_log("data path running", Duration::from_secs(20));
        let start = Instant::now();
        loop {
            let c = fig.client.curl(ready, Duration::from_secs(2));
            if c.exit == 0 && c.status == 200 {
                break;
            }
            proc.assert_running();
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{ready} never answered: {c:?}\n{}",
                proc.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Vipd {
            proc,
            config: path,
            _dir: dir,
        }
    }

    /// The "real server state changed" log lines about `real`.
    fn changes(&self, real: &str) -> Vec<String> {
        let needle = format!("real={real} ");
        self.proc
            .log()
            .lines()
            .filter(|l| l.contains("real server state changed") && l.contains(&needle))
            .map(str::to_owned)
            .collect()
    }

    /// Waits for the state change of `real` to `to` for `reason`; returns its log line.
    fn wait_change(&mut self, real: &str, to: &str, reason: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let (to_, reason_) = (format!("to={to} "), format!("reason={reason} "));
            if let Some(line) = self
                .changes(real)
                .into_iter()
                .find(|l| l.contains(&to_) && l.contains(&reason_))
            {
                return line;
            }
            self.proc.assert_running();
            assert!(
                start.elapsed() < timeout,
                "no change of {real} to {to} ({reason}) after {timeout:?}:\n{}",
                self.proc.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Rewrites the config and reloads it (`SIGHUP`).
    fn reload(&mut self, config: &str) {
        std::fs::write(&self.config, config).unwrap();
        let before = self.proc.log().matches("config reloaded").count();
        self.proc.signal(libc::SIGHUP);
        let start = Instant::now();
        while self.proc.log().matches("config reloaded").count() == before {
            self.proc.assert_running();
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{}",
                self.proc.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A GET of `url` from the client that must succeed; returns the body.
fn get(fig: &Fig3, vipd: &Vipd, url: &str) -> String {
    let c = fig.client.curl(url, Duration::from_secs(10));
    assert!(
        c.exit == 0 && c.status == 200,
        "GET {url}: {c:?}\n{}",
        vipd.proc.log()
    );
    c.body.trim().to_owned()
}

/// Kills an nginx at once (its listening sockets close: new SYNs get RST).
fn kill(nginx: &mut Nginx) {
    let _ = nginx.proc.child.kill();
    let _ = nginx.proc.child.wait();
}

/// Stopping B's nginx while wrk runs (a new connection per request): the RSTs to SYNs ditch B, which is
/// failed after `failure_threshold`; only requests in flight on B when it died fail, and after it is failed
/// no request fails and none reaches it. The log says why.
#[test]
fn stopped_server_under_wrk_is_failed_and_no_request_fails() {
    let _lock = serial();
    let fig = Fig3::new();
    let mut sites = fig.start_sites();
    let config = format!(
        "{HEAD}{}{SITE1_VIRTUAL}",
        reals("failure_threshold = 2\nretry_after = \"60s\"")
    );
    let mut vipd = Vipd::start(&fig, &config, SITE1);
    let hosts: std::collections::BTreeSet<String> =
        (0..6).map(|_| get(&fig, &vipd, SITE1)).collect();
    assert_eq!(hosts.len(), 3, "{hosts:?}");

    let connections = 8;
    let wrk = std::thread::scope(|s| {
        let load = s.spawn(|| {
            fig.client.wrk(
                SITE1,
                2,
                connections,
                Duration::from_secs(4),
                &["-H", "Connection: close"],
            )
        });
        std::thread::sleep(Duration::from_secs(1));
        kill(&mut sites[1]);
        load.join().unwrap()
    });
    eprintln!(
        "wrk across the kill: {} requests, socket errors {:?}",
        wrk.requests, wrk.socket_errors
    );
    assert_eq!(wrk.non_2xx, 0, "{}", wrk.text);
    assert!(
        wrk.errors() <= u64::from(connections),
        "more failures than requests in flight on B when it died: {}",
        wrk.text
    );
    assert!(wrk.requests > 0, "{}", wrk.text);
    let line = vipd.wait_change("b", "failed", "ditched", Duration::from_secs(10));
    assert!(
        line.contains("from=up") && line.contains("ditched=2"),
        "{line}"
    );

    for _ in 0..20 {
        let body = get(&fig, &vipd, SITE1);
        assert_ne!(body, "site 1 on host B");
    }
    let wrk = fig.client.wrk(
        SITE1,
        2,
        connections,
        Duration::from_secs(2),
        &["-H", "Connection: close"],
    );
    assert_eq!(
        (wrk.errors(), wrk.non_2xx),
        (0, 0),
        "after B failed: {}",
        wrk.text
    );
    assert!(wrk.requests > 0);
    assert_eq!(vipd.changes("b").len(), 1, "{:?}", vipd.changes("b"));
}

/// B's bridge port goes down (no answer at all): SYNs to it go unanswered, their retransmissions go to A
/// or C, so every request succeeds; B is failed. Its port comes back: after `retry_after` a trial
/// connection reaches it, its SYN-ACK restores it, and requests reach B again.
#[test]
fn black_hole_is_detected_and_trial_restores() {
    let _lock = serial();
    let fig = Fig3::new();
    let _sites = fig.start_sites();
    let config = format!(
        "{HEAD}{}{SITE1_VIRTUAL}",
        reals("failure_threshold = 2\nretry_after = \"2s\"")
    );
    let mut vipd = Vipd::start(&fig, &config, SITE1);

    fig.lan.ip(&["link", "set", "port-b", "down"]);
    for _ in 0..12 {
        assert_ne!(get(&fig, &vipd, SITE1), "site 1 on host B");
    }
    vipd.wait_change("b", "failed", "ditched", Duration::from_secs(10));

    fig.lan.ip(&["link", "set", "port-b", "up"]);
    let start = Instant::now();
    while get(&fig, &vipd, SITE1) != "site 1 on host B" {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "B never came back:\n{}",
            vipd.proc.log()
        );
    }
    vipd.wait_change("b", "up", "answered", Duration::from_secs(5));
    let hosts: std::collections::BTreeSet<String> =
        (0..6).map(|_| get(&fig, &vipd, SITE1)).collect();
    assert_eq!(hosts.len(), 3, "{hosts:?}");
}

/// site2 is bound to A alone, with C (port 9002) as A's backup: A stops, its traffic goes to C without a
/// failed request; A starts again, and after `retry_after` its traffic comes back.
#[test]
fn backup_takes_over_and_primary_returns() {
    let _lock = serial();
    let fig = Fig3::new();
    let mut sites = fig.start_sites();
    let site2 = "http://192.0.2.2/";
    let config = format!(
        "{HEAD}[[real]]\nname = \"a\"\naddress = \"10.20.0.10\"\nbackup = \"c-site2\"\n\
         failure_threshold = 1\nretry_after = \"1s\"\n\n\
         [[real]]\nname = \"c-site2\"\naddress = \"10.20.0.12\"\nport = 9002\n\n\
         [[virtual]]\nname = \"site2\"\naddress = \"192.0.2.2\"\n  [[virtual.port]]\n  port = 80\n  \
         bind = [\"a:8002\"]\n"
    );
    let mut vipd = Vipd::start(&fig, &config, site2);
    assert_eq!(get(&fig, &vipd, site2), "site 2 on host A");

    kill(&mut sites[0]);
    for _ in 0..8 {
        assert_eq!(get(&fig, &vipd, site2), "site 2 on host C");
    }
    vipd.wait_change("a", "failed", "ditched", Duration::from_secs(5));

    sites[0] = Nginx::start(
        &fig.servers[0],
        &[
            (8001, "site 1 on host A"),
            (8002, "site 2 on host A"),
            (8003, "site 3 on host A"),
        ],
    );
    let start = Instant::now();
    while get(&fig, &vipd, site2) != "site 2 on host A" {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "A never came back:\n{}",
            vipd.proc.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    vipd.wait_change("a", "up", "answered", Duration::from_secs(5));
    for _ in 0..5 {
        assert_eq!(get(&fig, &vipd, site2), "site 2 on host A");
    }
}

/// A health endpoint in B's namespace whose answers the test controls: alternating 200/503 never changes
/// B's state (rise = fall = 3); three 503s in a row fail it (no request reaches B); alternating again
/// keeps it failed; 200s bring it back. Exactly two state changes.
#[test]
fn active_check_rise_fall_does_not_flap() {
    const ALTERNATE: u8 = 0;
    const DOWN: u8 = 1;
    const UP: u8 = 2;
    let _lock = serial();
    let fig = Fig3::new();
    let _sites = fig.start_sites();
    let mode = Arc::new(AtomicU8::new(UP));
    let listener = fig.servers[1].run_in(|| TcpListener::bind("10.20.0.11:8080").unwrap());
    {
        let mode = Arc::clone(&mode);
        std::thread::spawn(move || {
            let mut n = 0u64;
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf);
                n += 1;
                let ok = match mode.load(Ordering::Relaxed) {
                    ALTERNATE => n.is_multiple_of(2),
                    DOWN => false,
                    _ => true,
                };
                let status = if ok { "200 OK" } else { "503 Unavailable" };
                let _ = write!(s, "HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
            }
        });
    }
    let check = "check = { kind = \"http\", port = 8080, path = \"/health\", expect = 200, \
                 interval = \"50ms\", timeout = \"1s\", rise = 3, fall = 3 }";
    let config = format!(
        "{HEAD}[[real]]\nname = \"a\"\naddress = \"10.20.0.10\"\n\n\
         [[real]]\nname = \"b\"\naddress = \"10.20.0.11\"\n{check}\n\n\
         [[real]]\nname = \"c\"\naddress = \"10.20.0.12\"\n\n{SITE1_VIRTUAL}"
    );
    let mut vipd = Vipd::start(&fig, &config, SITE1);
    vipd.proc.wait_log(
        "health check verdict real=b up=true",
        Duration::from_secs(10),
    );

    mode.store(ALTERNATE, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(vipd.changes("b").is_empty(), "{:?}", vipd.changes("b"));

    mode.store(DOWN, Ordering::Relaxed);
    vipd.wait_change("b", "failed", "check_failed", Duration::from_secs(10));
    for _ in 0..9 {
        assert_ne!(get(&fig, &vipd, SITE1), "site 1 on host B");
    }
    mode.store(ALTERNATE, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(vipd.changes("b").len(), 1, "{:?}", vipd.changes("b"));

    mode.store(UP, Ordering::Relaxed);
    vipd.wait_change("b", "up", "check_passed", Duration::from_secs(10));
    let hosts: std::collections::BTreeSet<String> =
        (0..6).map(|_| get(&fig, &vipd, SITE1)).collect();
    assert!(hosts.contains("site 1 on host B"), "{hosts:?}");
    assert_eq!(vipd.changes("b").len(), 2, "{:?}", vipd.changes("b"));
}

/// A rate-limited 3 MiB download runs while its server is drained by a reload (`weight = 0`): the
/// download completes intact, and every new connection goes to the other server.
#[test]
fn drain_during_long_download() {
    let _lock = serial();
    let fig = Fig3::new();
    let files = TempDir::new("vipd-big");
    let big: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(files.join("big.bin"), &big).unwrap();
    let _a = file_server(&fig.servers[0], 8004, "A", &files.0);
    let _c = file_server(&fig.servers[2], 9004, "C", &files.0);
    let dl = "http://192.0.2.4/";
    let config = |weight_a: u32, weight_c: u32| {
        format!(
            "{HEAD}[[real]]\nname = \"a\"\naddress = \"10.20.0.10\"\nweight = {weight_a}\n\n\
             [[real]]\nname = \"c\"\naddress = \"10.20.0.12\"\nweight = {weight_c}\n\n\
             [[virtual]]\nname = \"dl\"\naddress = \"192.0.2.4\"\n  [[virtual.port]]\n  port = 80\n  \
             bind = [\"a:8004\", \"c:9004\"]\n"
        )
    };
    let mut vipd = Vipd::start(&fig, &config(1, 1), dl);
    let out = TempDir::new("vipd-dl");
    let target = out.join("big.bin");

    std::thread::scope(|s| {
        let download = s.spawn(|| {
            fig.client.exec(
                "curl",
                &[
                    "-sS",
                    "--limit-rate",
                    "1M",
                    "--max-time",
                    "30",
                    "-o",
                    target.to_str().unwrap(),
                    "-w",
                    "%{http_code} %{size_download}",
                    &format!("{dl}big.bin"),
                ],
            )
        });
        // Which server holds the download?
        let holds = |ns: &Netns, port: u16| {
            let out = ns.exec(
                "ss",
                &[
                    "-Htn",
                    "state",
                    "established",
                    &format!("( sport = :{port} )"),
                ],
            );
            !String::from_utf8_lossy(&out.stdout).trim().is_empty()
        };
        let start = Instant::now();
        let (holder, other) = loop {
            if holds(&fig.servers[0], 8004) {
                break ("a", "dl on host C");
            }
            if holds(&fig.servers[2], 9004) {
                break ("c", "dl on host A");
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no download seen"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        vipd.reload(&if holder == "a" {
            config(0, 1)
        } else {
            config(1, 0)
        });
        vipd.wait_change(holder, "draining", "config", Duration::from_secs(5));
        for _ in 0..10 {
            assert_eq!(
                get(&fig, &vipd, dl),
                other,
                "a new connection on the drained server"
            );
        }
        let result = download.join().unwrap();
        let summary = String::from_utf8_lossy(&result.stdout).into_owned();
        assert!(
            result.status.success() && summary == format!("200 {}", big.len()),
            "download: {summary} {}",
            String::from_utf8_lossy(&result.stderr)
        );
    });
    assert!(
        std::fs::read(&target).unwrap() == big,
        "downloaded bytes differ"
    );
}

/// Every server of site1 stops: the connection that finds the last one gone is refused, and from then on
/// every new connection is refused at once (curl exit 7, connection refused; not a timeout).
#[test]
fn all_servers_down_refused_at_once() {
    let _lock = serial();
    let fig = Fig3::new();
    let sites = fig.start_sites();
    let config = format!(
        "{HEAD}{}{SITE1_VIRTUAL}",
        reals("failure_threshold = 1\nretry_after = \"60s\"")
    );
    let mut vipd = Vipd::start(&fig, &config, SITE1);
    drop(sites);
    let start = Instant::now();
    while ["a", "b", "c"].iter().any(|r| vipd.changes(r).is_empty()) {
        let c = fig.client.curl(SITE1, Duration::from_secs(10));
        assert_eq!(c.exit, 7, "{c:?}");
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}",
            vipd.proc.log()
        );
    }
    for r in ["a", "b", "c"] {
        vipd.wait_change(r, "failed", "ditched", Duration::from_secs(1));
    }
    for _ in 0..5 {
        let c = fig.client.curl(SITE1, Duration::from_secs(5));
        assert_eq!(c.exit, 7, "refused at once, not left hanging: {c:?}");
    }
}
