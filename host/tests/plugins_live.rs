//! End-to-end tests of policy plugins in `vipd run`: the real daemon, the real components built by
//! `plugins/build.sh target/plugins --testing` (`make plugins`; `VIPD_TEST_PLUGINS` overrides the folder),
//! nginx on the FIG. 3 servers and curl and wrk clients. Each test copies a config of `tests/configs/`
//! (`plugins = "plugins"`) into a temp dir next to a `plugins` folder holding the components it needs.
//! Servers answer `host X` on port 80 and `port N on host X` on 8000 and 8001.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// The built component `name` (`testing/misbehave` for a test plugin).
fn component(name: &str) -> PathBuf {
    built_plugins().join(format!("{name}.wasm"))
}

/// Puts `bytes` at `to` the way an operator should: a temporary name in the same folder, then a rename.
fn install(to: &Path, bytes: &[u8]) {
    let tmp = to.with_extension("part");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

/// FIG. 3 with nginx on A, B, C and `vipd run` serving a copy of a test config with its own plugins folder.
struct PluginLive {
    fig: Fig3,
    _sites: Vec<Nginx>,
    _slow: Option<SlowLink>,
    vipd: Proc,
    /// Holds `vipd.toml` and the `plugins` folder.
    dir: TempDir,
}

impl PluginLive {
    /// Starts everything with the components `plugins` (names as in `target/plugins`, placed as their
    /// file name) and waits until `ready` answers from the client. `slow`: a server to delay by 20 ms.
    fn start(config: &str, plugins: &[&str], ready: &str, slow: Option<usize>) -> PluginLive {
        let fig = Fig3::new();
        let sites = ["A", "B", "C"]
            .iter()
            .zip(&fig.servers)
            .map(|(x, ns)| {
                let bodies = [
                    format!("host {x}"),
                    format!("port 8000 on host {x}"),
                    format!("port 8001 on host {x}"),
                ];
                Nginx::start(
                    ns,
                    &[(80, &bodies[0]), (8000, &bodies[1]), (8001, &bodies[2])],
                )
            })
            .collect();
        let slow = slow.map(|i| fig.slow_down(i, Duration::from_millis(20)));
        let dir = TempDir::new("vipd-plugins");
        std::fs::create_dir(dir.join("plugins")).unwrap();
        for name in plugins {
            let file = Path::new(name).file_name().unwrap().to_str().unwrap();
            std::fs::copy(component(name), dir.join(&format!("plugins/{file}.wasm"))).unwrap();
        }
        let repo = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        std::fs::copy(repo.join(config), dir.join("vipd.toml")).unwrap();
        let mut vipd = fig.start_vipd(&dir, &dir.join("vipd.toml"), &[]);
        // Large components (Python, JavaScript) take tens of seconds to compile in a debug build.
        vipd.wait_log("data path running", Duration::from_secs(300));
        let live = PluginLive {
            fig,
            _sites: sites,
            _slow: slow,
            vipd,
            dir,
        };
        live.wait_ready(ready);
        live
    }

    fn wait_ready(&self, url: &str) {
        let start = Instant::now();
        loop {
            let c = self.fig.client.curl(url, Duration::from_secs(2));
            if c.exit == 0 && c.status == 200 {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{url} never answered: {c:?}\n{}",
                self.vipd.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The body of one curl GET of `url` from the client (from `source` if given), which must answer 200.
    fn get_from(&self, source: Option<Ipv4Addr>, url: &str) -> String {
        let src = source.map(|s| s.to_string());
        let mut args = vec!["-sS", "--max-time", "5", "-w", "\n%{http_code}"];
        if let Some(s) = &src {
            args.extend(["--interface", s.as_str()]);
        }
        args.push(url);
        let out = self.fig.client.exec("curl", &args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        assert!(
            out.status.success() && code.trim() == "200",
            "GET {url} from {source:?}: {text}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.vipd.log()
        );
        body.trim().to_owned()
    }

    fn get(&self, url: &str) -> String {
        self.get_from(None, url)
    }

    /// How many of `n` sequential GETs of `url` each body answered.
    fn split(&self, url: &str, n: usize) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for _ in 0..n {
            *m.entry(self.get(url)).or_default() += 1;
        }
        m
    }

    fn metrics(&self) -> Metrics {
        Metrics::scrape(&self.fig.director)
    }

    /// `select` calls of `plugin` that round-robin served instead (every result but ok and reject).
    fn fallbacks(&self, plugin: &str) -> f64 {
        let m = self.metrics();
        [
            "deferred",
            "trap",
            "timeout",
            "memory",
            "bad_answer",
            "quarantined",
            "starting",
        ]
        .iter()
        .map(|r| {
            m.get(
                "vipd_plugin_calls_total",
                &[("plugin", plugin), ("result", r)],
            )
        })
        .sum()
    }

    fn keep_warm_calls(&self, plugin: &str) -> f64 {
        self.metrics()
            .get("vipd_plugin_keep_warm_calls_total", &[("plugin", plugin)])
    }

    fn calls(&self, plugin: &str, result: &str) -> f64 {
        self.metrics().get(
            "vipd_plugin_calls_total",
            &[("plugin", plugin), ("result", result)],
        )
    }
}

fn counts(items: &[(&str, usize)]) -> BTreeMap<String, usize> {
    items.iter().map(|(k, n)| (k.to_string(), *n)).collect()
}

const POLICIES: &str = "tests/configs/plugins-policies.toml";
const ALL: [&str; 6] = [
    "round-robin",
    "least-connections",
    "fastest",
    "maglev",
    "source-affinity",
    "port-offset",
];

#[test]
/// round-robin.wasm with weights 3:1: 40 new connections split exactly 30:10 (smooth weighted round-robin
/// gives each server exactly its weight in any 4 consecutive picks), every one decided by the plugin. The
/// plugin is kept warm between connections, and that changes none of its picks.
fn round_robin_plugin_splits_by_weight() {
    let live = PluginLive::start(POLICIES, &ALL, "http://192.0.2.1/", None);
    let ok = live.calls("round-robin", "ok");
    let fallbacks = live.fallbacks("round-robin");
    let split = live.split("http://192.0.2.1/", 40);
    assert_eq!(split, counts(&[("host A", 30), ("host B", 10)]));
    assert_eq!(
        live.fallbacks("round-robin"),
        fallbacks,
        "round-robin served some"
    );
    wait_for("40 ok calls on /metrics", Duration::from_secs(5), || {
        live.calls("round-robin", "ok") >= ok + 40.0
    });
    // Kept warm every 2 ms for the second after the last connection: the data path wakes up for it, so
    // there are far more keep-warm calls than its 10 ms tick alone would make (at most 100).
    let mut last = live.keep_warm_calls("round-robin");
    let start = std::time::Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = live.keep_warm_calls("round-robin");
        if now == last || start.elapsed() > Duration::from_secs(5) {
            break;
        }
        last = now;
    }
    println!("keep-warm calls of round-robin: {last}");
    assert!(last >= 150.0, "{last} keep-warm calls");
}

#[test]
/// least-connections: while host A holds 12 long (keep-alive) connections, every new connection goes to
/// host B; once they are gone (and expired) new connections go to both.
fn least_connections_steers_away_from_held_connections() {
    let live = PluginLive::start(POLICIES, &ALL, "http://192.0.2.4/", None);
    // 192.0.2.4 is bound to host A only: hold 12 connections there, each with one answered request.
    let held: Vec<TcpStream> = live.fig.client.run_in(|| {
        (0..12)
            .map(|_| {
                let mut s = TcpStream::connect_timeout(
                    &SocketAddr::from((Ipv4Addr::new(192, 0, 2, 4), 80)),
                    Duration::from_secs(5),
                )
                .unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                write!(s, "GET / HTTP/1.1\r\nHost: hold\r\n\r\n").unwrap();
                let body = read_response(&mut s);
                assert_eq!(body.trim(), "host A");
                s
            })
            .collect()
    });
    wait_for("12 active on host A", Duration::from_secs(5), || {
        live.metrics()
            .get("vipd_connections_active", &[("real", "host-a")])
            >= 12.0
    });
    let split = live.split("http://192.0.2.3/", 10);
    assert_eq!(split, counts(&[("host B", 10)]), "while A holds 12");
    drop(held);
    wait_for("no active connections", Duration::from_secs(10), || {
        live.metrics().get("vipd_connections_active", &[]) == 0.0
    });
    let split = live.split("http://192.0.2.3/", 10);
    assert!(
        split.get("host A").copied().unwrap_or(0) >= 3
            && split.get("host B").copied().unwrap_or(0) >= 3,
        "after release: {split:?}"
    );
    assert_eq!(live.fallbacks("least-connections"), 0.0);
}

/// Reads one HTTP/1.1 response with a Content-Length and returns its body.
fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed mid-response");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("content-length");
            if body.len() >= len {
                return body[..len].to_owned();
            }
        }
    }
}

#[test]
/// fastest: with host B's replies delayed by 20 ms, new connections go to host A, bar the plugin's
/// exploration (1 in 20 to a random server) and the first measurement of each server.
fn fastest_prefers_the_quicker_server() {
    let live = PluginLive::start(POLICIES, &ALL, "http://192.0.2.1/", Some(1));
    let split = live.split("http://192.0.2.5/", 40);
    let a = split.get("host A").copied().unwrap_or(0);
    assert!(a >= 32, "host A got {a} of 40: {split:?}");
    let m = live.metrics();
    let rtt_a = m.get("vipd_real_server_syn_rtt_seconds", &[("real", "host-a")]);
    let rtt_b = m.get("vipd_real_server_syn_rtt_seconds", &[("real", "host-b")]);
    assert!(
        rtt_b >= 0.02 && rtt_a < rtt_b,
        "SYN RTT A {rtt_a} s, B {rtt_b} s"
    );
    assert_eq!(live.fallbacks("fastest"), 0.0);
}

/// The client's extra addresses for the hashing tests.
fn clients(n: u8) -> Vec<Ipv4Addr> {
    (0..n).map(|i| Ipv4Addr::new(198, 51, 100, 2 + i)).collect()
}

fn add_client_addrs(live: &PluginLive, addrs: &[Ipv4Addr]) {
    for a in addrs.iter().skip(1) {
        live.fig
            .client
            .ip(&["addr", "add", &format!("{a}/24"), "dev", "eth0"]);
    }
}

#[test]
/// maglev: once its table is built, each of 6 client addresses always reaches the same server, and the
/// clients spread over more than one server. (While the first table is being built, a slice per call over
/// about 50 calls, the plugin answers a plain hash that differs from the table's: clients move once.)
fn maglev_maps_each_client_to_one_server() {
    let live = PluginLive::start(POLICIES, &ALL, "http://192.0.2.1/", None);
    let addrs = clients(6);
    add_client_addrs(&live, &addrs);
    let url = "http://192.0.2.6/";
    // Enough connections to finish building the 65537-slot table.
    for _ in 0..60 {
        live.get(url);
    }
    let round = |live: &PluginLive| -> Vec<String> {
        addrs.iter().map(|a| live.get_from(Some(*a), url)).collect()
    };
    let first = round(&live);
    for _ in 0..3 {
        assert_eq!(round(&live), first, "clients {addrs:?}");
    }
    let servers: BTreeSet<_> = first.iter().collect();
    assert!(servers.len() >= 2, "all clients on {servers:?}");
    assert_eq!(live.fallbacks("maglev"), 0.0);
}

#[test]
/// source-affinity: a client's connections stick to the server its first one got; a second client is
/// placed by the rotation on another server and sticks there.
fn source_affinity_sticks() {
    let live = PluginLive::start(POLICIES, &ALL, "http://192.0.2.1/", None);
    let addrs = clients(2);
    add_client_addrs(&live, &addrs);
    let url = "http://192.0.2.7/";
    let mut seen: Vec<BTreeSet<String>> = vec![BTreeSet::new(); 2];
    for _ in 0..8 {
        for (i, a) in addrs.iter().enumerate() {
            seen[i].insert(live.get_from(Some(*a), url));
        }
    }
    assert!(seen.iter().all(|s| s.len() == 1), "{seen:?}");
    assert_ne!(seen[0], seen[1]);
    assert_eq!(live.fallbacks("source-affinity"), 0.0);
}

#[test]
/// port-offset binder: port 80 of the second virtual machine (number 1), `base = "8000"`, reaches port 8001
/// on every real server, and nothing else.
fn port_offset_binder_reaches_base_plus_n() {
    let live = PluginLive::start(POLICIES, &ALL, "http://192.0.2.2/", None);
    // 5 real entries on 3 hosts, weights 1, 1, 1, 3, 1: 14 picks reach every one.
    let bodies: BTreeSet<String> = (0..14).map(|_| live.get("http://192.0.2.2/")).collect();
    let expect: BTreeSet<String> = ["A", "B", "C"]
        .iter()
        .map(|x| format!("port 8001 on host {x}"))
        .collect();
    assert_eq!(bodies, expect);
    assert!(live.vipd.log().contains("bindings from plugin"));
}

#[test]
/// A policy that is neither built in nor a plugin in the folder: `vipd run` refuses to start, naming the
/// config file, the virtual machine, the port and the policy.
fn unknown_policy_is_refused_at_start() {
    let ns = Netns::new("refuse");
    let dir = TempDir::new("vipd-plugins");
    std::fs::create_dir(dir.join("plugins")).unwrap();
    std::fs::copy(
        component("round-robin"),
        dir.join("plugins/round-robin.wasm"),
    )
    .unwrap();
    let repo = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let config = dir.join("vipd.toml");
    std::fs::copy(repo.join("tests/configs/plugins-unknown.toml"), &config).unwrap();
    let mut vipd = ns.spawn(
        &dir,
        "vipd",
        env!("CARGO_BIN_EXE_vipd"),
        &["run", "--config", config.to_str().unwrap()],
    );
    let start = Instant::now();
    let status = loop {
        if let Some(st) = vipd.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "still running:\n{}",
            vipd.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = vipd.log();
    assert!(!status.success(), "{log}");
    for needle in [
        config.to_str().unwrap(),
        "virtual machine \"site1\"",
        "port 80",
        "\"no-such-policy\"",
        "no-such-policy.wasm",
    ] {
        assert!(log.contains(needle), "no {needle:?} in:\n{log}");
    }
}

/// New connections of `site1` on host A and host B so far.
fn site1_totals(live: &PluginLive) -> (f64, f64) {
    let m = live.metrics();
    let t = |real| {
        m.get(
            "vipd_connections_total",
            &[("virtual", "site1"), ("real", real)],
        )
    };
    (t("host-a"), t("host-b"))
}

/// The split of the next `min` (at least) new connections of `site1`: (on host A, on host B).
fn window(live: &PluginLive, min: f64) -> (f64, f64) {
    let (a0, b0) = site1_totals(live);
    let start = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let (a, b) = site1_totals(live);
        if (a - a0) + (b - b0) >= min {
            return (a - a0, b - b0);
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "traffic stopped:\n{}",
            live.vipd.log()
        );
    }
}

/// The share of the smaller side of a split.
fn minority((a, b): (f64, f64)) -> f64 {
    a.min(b) / (a + b)
}

#[test]
/// Hot reload under wrk (a new connection per request, the default 1 ms plugin deadline): round-robin.wasm
/// replaced by maglev changes the split from half and half to one server within 2 s; then a garbage file,
/// a binder in its place, a new garbage file, a plugin that loops forever and one that allocates without
/// bound are each refused or contained and reported (log, /metrics), the traffic never fails and no
/// request waits 500 ms or more.
fn hot_reload_under_load_and_misbehaving_plugins() {
    let _serial = serial();
    raise_nofile(65536);
    let mut live = PluginLive::start(
        "tests/configs/plugins-reload.toml",
        &["round-robin"],
        "http://192.0.2.1/",
        None,
    );
    let plugins = live.dir.join("plugins");
    let rr = plugins.join("round-robin.wasm");
    let wrk_for = Duration::from_secs(12);
    let (wrk, phases_done) = std::thread::scope(|s| {
        let client = &live.fig.client;
        let wrk = s.spawn(move || {
            client.wrk(
                "http://192.0.2.1/",
                2,
                8,
                wrk_for,
                &["-H", "Connection: close"],
            )
        });
        let started = Instant::now();

        // Round-robin: both servers.
        let before = window(&live, 100.0);
        assert!(minority(before) > 0.3, "round-robin split {before:?}");

        // round-robin.wasm becomes maglev: one client address, one server.
        let swapped = Instant::now();
        install(&rr, &std::fs::read(component("maglev")).unwrap());
        let mut after;
        loop {
            after = window(&live, 30.0);
            if minority(after) <= 0.05 {
                break;
            }
            assert!(
                swapped.elapsed() < Duration::from_secs(2),
                "split still {after:?}:\n{}",
                live.vipd.log()
            );
        }
        let took = swapped.elapsed();
        assert!(
            took <= Duration::from_secs(2),
            "split changed after {took:?}"
        );
        let maglev_on_a = after.0 > after.1;
        let still_maglev = |what: &str| {
            let w = window(&live, 30.0);
            assert!(
                minority(w) <= 0.05 && (w.0 > w.1) == maglev_on_a,
                "{what}: split {w:?}"
            );
        };
        let reload_errors = || {
            live.metrics().get(
                "vipd_plugin_reloads_total",
                &[("plugin", "round-robin"), ("result", "error")],
            )
        };

        // Garbage in its place: refused, reported, maglev keeps serving.
        install(&rr, b"this is not a WebAssembly component\n");
        wait_for(
            "a reload error for the garbage",
            Duration::from_secs(5),
            || reload_errors() >= 1.0,
        );
        let log = live.vipd.log();
        assert!(
            log.contains(&format!("{}: not a WebAssembly file", rr.display())),
            "{log}"
        );
        still_maglev("after the garbage file");

        // A binder in its place: the wrong world, refused.
        install(&rr, &std::fs::read(component("port-offset")).unwrap());
        wait_for(
            "the binder refused in the log",
            Duration::from_secs(5),
            || {
                live.vipd
                    .log()
                    .contains("the previous version is a selector plugin and this one is not")
            },
        );
        wait_for(
            "a reload error for the binder",
            Duration::from_secs(5),
            || reload_errors() >= 2.0,
        );
        still_maglev("after the binder");
        assert_eq!(reload_errors(), 2.0, "one error per refused file");

        // A new garbage file: refused and logged, naming the file.
        let junk = plugins.join("junk.wasm");
        install(&junk, b"\0asm garbage");
        wait_for(
            "junk.wasm refused in the log",
            Duration::from_secs(5),
            || {
                live.vipd
                    .log()
                    .lines()
                    .any(|l| l.contains("plugin refused") && l.contains(junk.to_str().unwrap()))
            },
        );
        still_maglev("after junk.wasm");

        // A plugin that loops forever, named by a reloaded config: each call stopped at the deadline,
        // round-robin serves, quarantined after 5.
        install(
            &plugins.join("misbehave.wasm"),
            &std::fs::read(component("testing/misbehave")).unwrap(),
        );
        wait_for("misbehave.wasm loaded", Duration::from_secs(5), || {
            live.vipd
                .log()
                .lines()
                .any(|l| l.contains("plugin loaded") && l.contains("misbehave"))
        });
        let config = live.dir.join("vipd.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        let with_mode = |mode: &str| {
            text.replace(
                "policy = \"round-robin\"",
                &format!("policy = \"misbehave\"\npolicy_args = {{ mode = \"{mode}\" }}"),
            )
        };
        std::fs::write(&config, with_mode("spin")).unwrap();
        live.vipd.signal(libc::SIGHUP);
        let calls = |result: &str| {
            live.metrics().get(
                "vipd_plugin_calls_total",
                &[("plugin", "misbehave"), ("result", result)],
            )
        };
        wait_for(
            "5 timeouts, then quarantine",
            Duration::from_secs(5),
            || calls("timeout") >= 5.0 && calls("quarantined") >= 1.0,
        );
        let w = window(&live, 30.0);
        assert!(minority(w) > 0.3, "quarantined: round-robin split {w:?}");

        // One that allocates without bound: stopped at the memory limit (or at the deadline, when the
        // allocating takes longer than it), quarantined after 5.
        let failures = || calls("memory") + calls("timeout") + calls("trap");
        let before = failures();
        std::fs::write(&config, with_mode("hog")).unwrap();
        live.vipd.signal(libc::SIGHUP);
        let start = Instant::now();
        while live.vipd.log().matches("plugin quarantined").count() < 2 {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "hog not quarantined: memory {}, timeout {}, trap {}:\n{}",
                calls("memory"),
                calls("timeout"),
                calls("trap"),
                live.vipd.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        wait_for(
            "5 more failures on /metrics",
            Duration::from_secs(5),
            || failures() >= before + 5.0,
        );
        assert!(
            calls("memory") >= 1.0,
            "no memory failure: timeout {}",
            calls("timeout")
        );
        window(&live, 30.0);
        let phases_done = started.elapsed();
        eprintln!("split changed {took:?} after the swap");
        (wrk.join().unwrap(), phases_done)
    });
    let m = live.metrics();
    let slow = |p: &str| {
        m.get("vipd_plugin_call_duration_seconds_count", &[("plugin", p)])
            - m.get(
                "vipd_plugin_call_duration_seconds_bucket",
                &[("plugin", p), ("le", "0.01")],
            )
    };
    eprintln!(
        "phases {phases_done:?}; wrk: {} requests, max latency {:?}; calls over 10 ms: round-robin {}, misbehave {}; \
         misbehave memory {} timeout {}; junk on /metrics: {}",
        wrk.requests,
        wrk.latency_max(),
        slow("round-robin"),
        slow("misbehave"),
        m.get(
            "vipd_plugin_calls_total",
            &[("plugin", "misbehave"), ("result", "memory")]
        ),
        m.get(
            "vipd_plugin_calls_total",
            &[("plugin", "misbehave"), ("result", "timeout")]
        ),
        m.0.contains("plugin=\"junk\"")
    );
    assert!(
        phases_done < wrk_for,
        "the phases took {phases_done:?}, longer than wrk ran"
    );
    assert_eq!(
        m.get(
            "vipd_plugin_reloads_total",
            &[("plugin", "junk"), ("result", "error")]
        ),
        1.0,
        "a file that never loaded still shows its refusal on /metrics"
    );
    assert_eq!(wrk.errors(), 0, "{}", wrk.text);
    assert_eq!(wrk.non_2xx, 0, "{}", wrk.text);
    let max = wrk.latency_max().expect("wrk latency");
    assert!(
        max < Duration::from_millis(500),
        "a request waited {max:?}:\n{}",
        wrk.text
    );
    live.vipd.assert_running();
}

#[test]
/// Shadow policies: beside the live round-robin, source affinity is asked about every new connection and
/// never applied. One client's connections: the shadow would have put all of them on one server, so it
/// agrees with round-robin exactly on the connections round-robin gave that server; `/metrics` and
/// `/status` say so. A shadow that loops until the sandbox stops it changes nothing for live traffic.
fn shadow_policy_is_asked_and_never_applied() {
    let live = PluginLive::start(
        "tests/configs/plugins-shadow.toml",
        &["round-robin", "source-affinity", "testing/misbehave"],
        "http://192.0.2.1/",
        None,
    );
    let served = live.split("http://192.0.2.1/", 30);
    assert_eq!(served.len(), 3, "round-robin still decides: {served:?}");

    let shadowed = [("virtual", "shadowed"), ("shadow", "source-affinity")];
    let mut m = live.metrics();
    let start = Instant::now();
    loop {
        let total = m.get("vipd_connections_total", &[("virtual", "shadowed")]);
        let judged = m.get("vipd_shadow_decisions_total", &shadowed);
        if total >= 31.0 && judged == total {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the shadow judged {judged} of {total} connections"
        );
        std::thread::sleep(Duration::from_millis(100));
        m = live.metrics();
    }
    let total = m.get("vipd_connections_total", &[("virtual", "shadowed")]);
    let picks = |real: &str| {
        m.get(
            "vipd_shadow_picks_total",
            &[shadowed[0], shadowed[1], ("real", real)],
        )
    };
    let chosen = ["host-a", "host-b", "host-c"]
        .into_iter()
        .find(|r| picks(r) == total)
        .unwrap_or_else(|| panic!("source affinity split one client: {}", m.0));
    let outcome = |o: &str| {
        m.get(
            "vipd_shadow_decisions_total",
            &[shadowed[0], shadowed[1], ("outcome", o)],
        )
    };
    let live_on_chosen = m.get(
        "vipd_connections_total",
        &[("virtual", "shadowed"), ("real", chosen)],
    );
    assert_eq!(outcome("same"), live_on_chosen, "{}", m.0);
    assert_eq!(outcome("different"), total - live_on_chosen);
    assert!(outcome("different") > 0.0);
    assert_eq!(outcome("error") + outcome("reject") + outcome("defer"), 0.0);

    let status: serde_json::Value =
        serde_json::from_str(&admin_get(&live.fig.director, "/status")).unwrap();
    let shadow = &status["virtual_machines"][0]["ports"][0]["shadow"];
    assert_eq!(shadow["policy"], "source-affinity", "{status}");
    assert_eq!(shadow["same"].as_f64(), Some(live_on_chosen));

    // The looping shadow: every live request is served, by round-robin over both servers.
    let served = live.split("http://192.0.2.2/", 10);
    assert_eq!(served.values().sum::<usize>(), 10);
    assert_eq!(served.len(), 2, "{served:?}");
    wait_for(
        "the looping shadow's errors",
        Duration::from_secs(10),
        || {
            live.metrics().get(
                "vipd_shadow_decisions_total",
                &[("virtual", "misbehaving"), ("outcome", "error")],
            ) >= 10.0
        },
    );
}

#[test]
/// The least-connections policy written in Python (componentize-py) and in JavaScript (componentize-js)
/// serves live connections exactly as the Rust plugin does: the same servers, in the same order, with no
/// fallback. Built by `make plugins` (examples/policies/*/build.sh).
fn python_and_javascript_policies_serve_like_rust() {
    let live = PluginLive::start(
        "tests/configs/plugins-languages.toml",
        &[
            "least-connections",
            "examples/least-connections-py",
            "examples/least-connections-js",
        ],
        "http://192.0.2.1/",
        None,
    );
    let order = |vip: &str| -> Vec<String> {
        (0..6)
            .map(|_| live.get(&format!("http://{vip}/")))
            .collect()
    };
    let rust = order("192.0.2.1");
    assert_eq!(
        rust.iter().collect::<BTreeSet<_>>().len(),
        2,
        "least-connections alternates over idle servers: {rust:?}"
    );
    for (vip, plugin) in [
        ("192.0.2.2", "least-connections-py"),
        ("192.0.2.3", "least-connections-js"),
    ] {
        let served = order(vip);
        assert_eq!(
            served.iter().collect::<BTreeSet<_>>().len(),
            2,
            "{plugin}: {served:?}"
        );
        assert!(live.calls(plugin, "ok") >= 6.0, "{plugin} decided");
        assert_eq!(live.fallbacks(plugin), 0.0, "{plugin}: no fallback");
    }
    // The plugins are kept warm between connections (a plugin too dear to keep warm is a unit test's).
    wait_for("keep-warm calls", Duration::from_secs(5), || {
        live.keep_warm_calls("least-connections") >= 10.0
    });
}
