//! End-to-end harness: network namespaces, veth pairs, processes and servers that are always removed.
//!
//! Every resource is an RAII value whose `Drop` removes it, also while a test panics. Namespace names carry
//! the test process id and a counter (`vt<pid>x<n>-<role>`), so tests running in parallel, in this or another
//! test binary, never collide; namespaces left by a killed test run (their pid is gone) are removed by the
//! next run. Waiting is by polling a condition, never by a fixed sleep. Needs root (CI runs as root).
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Fails the test at once with a clear message when not root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "this end-to-end test creates network namespaces and needs root: run `sudo -E cargo test` \
             (CI runs as root)"
        );
    }
}

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    if !out.status.success() {
        panic!(
            "`{cmd} {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Polls `cond` every 20 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The namespace names present now (`ip netns list`).
pub fn netns_list() -> BTreeSet<String> {
    let out = run("ip", &["netns", "list"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Removes namespaces left by test processes that no longer exist.
fn reap_stale() {
    for name in netns_list() {
        let Some(rest) = name.strip_prefix("vt") else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('x') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            kill_all_in(&name);
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}

fn kill_all_in(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: plain syscall on a process that lives in our test namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh directory under /tmp named after `prefix`, the pid and a counter.
    pub fn new(prefix: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A network namespace, deleted (after killing what runs in it) on drop. Loopback is up; IPv6 is off,
/// so the director sees no router solicitations.
pub struct Netns {
    /// The name `ip netns` knows it by.
    pub name: String,
}

impl Netns {
    /// A new namespace whose name ends with `role`.
    pub fn new(role: &str) -> Netns {
        require_root();
        if COUNTER.load(Ordering::Relaxed) == 0 {
            reap_stale();
        }
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("vt{}x{n}-{role}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
        ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1");
        ns
    }

    /// A new namespace with IPv6 on and duplicate address detection off (addresses usable at once),
    /// for the IPv6 tests. Call before adding its interfaces.
    pub fn new_v6(role: &str) -> Netns {
        let ns = Netns::new(role);
        for key in ["all", "default"] {
            ns.sysctl(&format!("net.ipv6.conf.{key}.disable_ipv6"), "0");
            ns.sysctl(&format!("net.ipv6.conf.{key}.accept_dad"), "0");
        }
        ns.sysctl("net.ipv6.conf.lo.disable_ipv6", "0");
        ns
    }

    /// Adds the IPv6 `cidr` to `dev` without duplicate address detection, and brings `dev` up.
    pub fn addr6(&self, dev: &str, cidr: &str) {
        self.ip(&["-6", "addr", "add", cidr, "dev", dev, "nodad"]);
        self.ip(&["link", "set", dev, "up"]);
    }

    /// `ip -n NAME ARGS...`
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut a = vec!["-n", &self.name];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    /// Runs `cmd` inside the namespace and returns its output, whatever its exit status.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, cmd])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd} in {}: {e}", self.name))
    }

    /// Runs `cmd` inside the namespace, panicking with its output when it fails.
    pub fn exec_ok(&self, cmd: &str, args: &[&str]) -> Output {
        let mut a = vec!["netns", "exec", &self.name, cmd];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    /// `sysctl -w KEY=VALUE` inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec_ok("sysctl", &["-qw", &format!("{key}={value}")]);
    }

    /// Adds `addr` (CIDR) to `dev` and brings it up.
    pub fn addr(&self, dev: &str, cidr: &str) {
        self.ip(&["addr", "add", cidr, "dev", dev]);
        self.ip(&["link", "set", dev, "up"]);
    }

    /// `ethtool -K DEV gro off lro off gso off tso off rx off tx off` inside the namespace (features a
    /// driver lacks are ignored by ethtool's exit status for veth).
    pub fn offloads_off(&self, dev: &str) {
        self.exec_ok(
            "ethtool",
            &[
                "-K", dev, "gro", "off", "gso", "off", "tso", "off", "rx", "off", "tx", "off",
            ],
        );
    }

    /// Starts `cmd` inside the namespace, its output going to a log file in `dir`.
    pub fn spawn(&self, dir: &TempDir, label: &str, cmd: &str, args: &[&str]) -> Proc {
        self.spawn_env(dir, label, cmd, args, &[])
    }

    /// [`Netns::spawn`] with `env` added to the environment.
    pub fn spawn_env(
        &self,
        dir: &TempDir,
        label: &str,
        cmd: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Proc {
        let log = dir.join(&format!("{label}.log"));
        let f = File::create(&log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, cmd])
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd} in {}: {e}", self.name));
        Proc {
            label: label.to_owned(),
            child,
            log,
        }
    }

    /// Runs `f` on a thread that has entered this namespace: its sockets live here.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                // SAFETY: setns on this thread only, with a namespace file descriptor we hold open.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// Starts `f` on a new thread that has entered this namespace (sockets, packet captures and ioctls
    /// live here; `/sys` does not follow: run a subprocess with [`Netns::exec`] for that).
    pub fn thread<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: setns on this thread only, with a namespace file descriptor we hold open.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
    }

    /// True when a TCP connect to `addr:port` from this namespace succeeds within 200 ms.
    pub fn port_open(&self, addr: Ipv4Addr, port: u16) -> bool {
        self.run_in(|| {
            TcpStream::connect_timeout(&SocketAddr::from((addr, port)), Duration::from_millis(200))
                .is_ok()
        })
    }

    /// Waits until `addr:port` accepts connections from this namespace.
    pub fn wait_port(&self, addr: Ipv4Addr, port: u16, timeout: Duration) {
        wait_for(
            &format!("{addr}:{port} open from {}", self.name),
            timeout,
            || self.port_open(addr, port),
        );
    }

    /// A GET of `path` on `addr:port` from this namespace: (status, body).
    pub fn http_get(
        &self,
        addr: Ipv4Addr,
        port: u16,
        path: &str,
    ) -> std::io::Result<(u16, String)> {
        self.run_in(|| http_get(addr, port, path))
    }

    /// `curl` from this namespace.
    pub fn curl(&self, url: &str, timeout: Duration) -> Curl {
        let t = format!("{}", timeout.as_secs_f64());
        let out = self.exec(
            "curl",
            &["-sS", "--max-time", &t, "-w", "\n%{http_code}", url],
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        Curl {
            exit: out.status.code().unwrap_or(-1),
            status: code.trim().parse().unwrap_or(0),
            body: body.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `wrk` from this namespace; `extra` goes before the URL (e.g. `["-H", "Connection: close"]` for a new
    /// connection per request).
    pub fn wrk(
        &self,
        url: &str,
        threads: u32,
        connections: u32,
        duration: Duration,
        extra: &[&str],
    ) -> Wrk {
        let out = self.exec(
            "wrk",
            &[
                "-t",
                &threads.to_string(),
                "-c",
                &connections.to_string(),
                "-d",
                &format!("{}s", duration.as_secs().max(1)),
                "--timeout",
                "5s",
            ]
            .into_iter()
            .chain(extra.iter().copied())
            .chain([url])
            .collect::<Vec<_>>(),
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "wrk failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Wrk::parse(&text)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_all_in(&self.name);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A minimal HTTP/1.0 GET on the calling thread's namespace.
pub fn http_get(addr: Ipv4Addr, port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s =
        TcpStream::connect_timeout(&SocketAddr::from((addr, port)), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// What one curl run gave.
#[derive(Debug)]
pub struct Curl {
    /// curl's exit code (0 ok, 7 connection refused, 28 timeout).
    pub exit: i32,
    /// The HTTP status, 0 when none.
    pub status: u16,
    /// The response body.
    pub body: String,
    /// curl's error message.
    pub stderr: String,
}

/// The parts of wrk's summary the tests judge.
#[derive(Debug, Default)]
pub struct Wrk {
    /// Completed requests.
    pub requests: u64,
    /// Requests per second.
    pub rps: f64,
    /// Socket errors: connect, read, write, timeout.
    pub socket_errors: [u64; 4],
    /// Non-2xx or 3xx responses.
    pub non_2xx: u64,
    /// The whole output, for messages.
    pub text: String,
}

impl Wrk {
    /// Parses wrk's summary.
    pub fn parse(text: &str) -> Wrk {
        let mut w = Wrk {
            text: text.to_owned(),
            ..Wrk::default()
        };
        for line in text.lines().map(str::trim) {
            if line.contains(" requests in ") {
                w.requests = line
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
            } else if let Some(r) = line.strip_prefix("Requests/sec:") {
                w.rps = r.trim().parse().unwrap_or(0.0);
            } else if let Some(r) = line.strip_prefix("Non-2xx or 3xx responses:") {
                w.non_2xx = r.trim().parse().unwrap_or(0);
            } else if let Some(r) = line.strip_prefix("Socket errors:") {
                // "connect 0, read 0, write 0, timeout 0"
                for (i, part) in r.split(',').enumerate().take(4) {
                    w.socket_errors[i] = part
                        .split_whitespace()
                        .nth(1)
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                }
            }
        }
        w
    }

    /// Total socket errors.
    pub fn errors(&self) -> u64 {
        self.socket_errors.iter().sum()
    }
}

/// A process started in a namespace; killed and reaped on drop.
pub struct Proc {
    /// What it is, for messages.
    pub label: String,
    /// The child (`ip netns exec` execs the command, so this is its pid).
    pub child: Child,
    /// Its stdout and stderr.
    pub log: PathBuf,
}

impl Proc {
    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `sig` (e.g. `libc::SIGHUP`).
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Panics with the log when it has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!("{} exited ({st}):\n{}", self.label, self.log());
        }
    }

    /// Waits until the log contains `needle`, failing early (with the log) when the process exits.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        while !self.log().contains(needle) {
            self.assert_running();
            if start.elapsed() > timeout {
                panic!(
                    "{}: no {needle:?} in its log after {timeout:?}:\n{}",
                    self.label,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status.
    pub fn stop(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.signal(libc::SIGTERM);
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx answering a fixed body per port, one process (`master_process off`), config in its own temp dir.
pub struct Nginx {
    /// The running nginx.
    pub proc: Proc,
    /// Its config, pid file and logs.
    pub dir: TempDir,
}

impl Nginx {
    /// Starts nginx in `ns` answering `body` on each `(port, body)` and waits until every port is open.
    pub fn start(ns: &Netns, sites: &[(u16, &str)]) -> Nginx {
        Nginx::start_in(ns, sites, false)
    }

    /// [`Nginx::start`] listening on IPv6 too (the namespace must have IPv6 on: [`Netns::new_v6`]).
    pub fn start_dual(ns: &Netns, sites: &[(u16, &str)]) -> Nginx {
        Nginx::start_in(ns, sites, true)
    }

    fn start_in(ns: &Netns, sites: &[(u16, &str)], ipv6: bool) -> Nginx {
        let dir = TempDir::new("vipd-nginx");
        let conf = nginx_conf_in(&dir.0, sites, ipv6);
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let proc = ns.spawn(
            &dir,
            "nginx",
            "nginx",
            &[
                "-p",
                dir.0.to_str().unwrap(),
                "-c",
                dir.join("nginx.conf").to_str().unwrap(),
            ],
        );
        let mut n = Nginx { proc, dir };
        for &(port, _) in sites {
            let start = Instant::now();
            while !ns.port_open(Ipv4Addr::LOCALHOST, port) {
                n.proc.assert_running();
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "nginx port {port}:\n{}",
                    n.proc.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        n
    }
}

/// An nginx config answering `body` (plus a newline) on each port, and files under `DIR/files/` at `/files/`.
pub fn nginx_conf(dir: &Path, sites: &[(u16, &str)]) -> String {
    nginx_conf_in(dir, sites, false)
}

/// [`nginx_conf`], listening on `[::]` too when `ipv6`. Request bodies of any size are read and
/// discarded (uploads answer 200).
pub fn nginx_conf_in(dir: &Path, sites: &[(u16, &str)], ipv6: bool) -> String {
    let d = dir.display();
    let mut c = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         worker_rlimit_nofile 65536;\nevents {{ worker_connections 16384; }}\nhttp {{\n  access_log off;\n  \
         client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
         uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  keepalive_requests 1000000;\n"
    );
    for (port, body) in sites {
        let v6 = if ipv6 {
            format!("listen [::]:{port} reuseport backlog=4096; ")
        } else {
            String::new()
        };
        c += &format!(
            "  server {{ listen {port} reuseport backlog=4096; {v6}client_max_body_size 0; \
             location / {{ default_type text/plain; return 200 \"{body}\\n\"; }} \
             location /files/ {{ root {d}; if ($arg_rate) {{ set $limit_rate $arg_rate; }} }} }}\n"
        );
    }
    c += "}\n";
    c
}

/// A veth pair between two namespaces, offloads off on both ends, both ends up. Removed with the namespaces.
pub fn veth(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str) {
    a.ip(&[
        "link", "add", a_dev, "type", "veth", "peer", "name", b_dev, "netns", &b.name,
    ]);
    a.offloads_off(a_dev);
    b.offloads_off(b_dev);
    a.ip(&["link", "set", a_dev, "up"]);
    b.ip(&["link", "set", b_dev, "up"]);
}

/// The client's address in [`Fig3`].
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// The director's inside address, the real servers' default gateway.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 1);
/// Real servers A, B, C.
pub const SERVERS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 20, 0, 10),
    Ipv4Addr::new(10, 20, 0, 11),
    Ipv4Addr::new(10, 20, 0, 12),
];
/// The virtual addresses' network, on-link for the client (so it ARPs for each VIP: proxy ARP).
pub const VIP_NET: &str = "192.0.2.0/24";

/// The patent's FIG. 3: a client, the director (outside `vipd-out` without an address, inside `vipd-in`
/// 10.20.0.1/24, `ip_forward=0`), and servers A, B, C (10.20.0.10-12, gateway 10.20.0.1) on a bridge in
/// the `lan` namespace. The client reaches 192.0.2.0/24 on-link through `eth0`.
pub struct Fig3 {
    /// 198.51.100.2/24 on `eth0`.
    pub client: Netns,
    /// `vipd-out` faces the client, `vipd-in` the bridge.
    pub director: Netns,
    /// The bridge `br0` joining the director and the servers.
    pub lan: Netns,
    /// Servers A, B, C, each with `eth0`.
    pub servers: [Netns; 3],
}

impl Fig3 {
    /// Builds the topology.
    pub fn new() -> Fig3 {
        let f = Fig3 {
            client: Netns::new("client"),
            director: Netns::new("director"),
            lan: Netns::new("lan"),
            servers: [Netns::new("a"), Netns::new("b"), Netns::new("c")],
        };
        veth(&f.client, "eth0", &f.director, "vipd-out");
        f.client.addr("eth0", "198.51.100.2/24");
        f.client.ip(&["route", "add", VIP_NET, "dev", "eth0"]);

        f.lan.ip(&["link", "add", "br0", "type", "bridge"]);
        f.lan.ip(&["link", "set", "br0", "up"]);
        veth(&f.director, "vipd-in", &f.lan, "port-d");
        f.lan.ip(&["link", "set", "port-d", "master", "br0"]);
        f.director.addr("vipd-in", "10.20.0.1/24");
        f.director.sysctl("net.ipv4.ip_forward", "0");
        // The kernel answers ARP only for the inside address on the inside interface.
        f.director.sysctl("net.ipv4.conf.all.arp_ignore", "1");

        if std::env::var("VIPD_TEST_OFFLOAD").as_deref() == Ok("xdp") {
            // Native XDP redirects into a veth only while its peer has GRO on (or an XDP program).
            f.client.exec_ok("ethtool", &["-K", "eth0", "gro", "on"]);
            f.lan.exec_ok("ethtool", &["-K", "port-d", "gro", "on"]);
        }
        for (i, s) in f.servers.iter().enumerate() {
            let port = ["port-a", "port-b", "port-c"][i];
            veth(s, "eth0", &f.lan, port);
            f.lan.ip(&["link", "set", port, "master", "br0"]);
            s.addr("eth0", &format!("{}/24", SERVERS[i]));
            s.ip(&["route", "add", "default", "via", "10.20.0.1"]);
        }
        f
    }

    /// The namespaces' names.
    pub fn names(&self) -> Vec<String> {
        let mut v = vec![
            self.client.name.clone(),
            self.director.name.clone(),
            self.lan.name.clone(),
        ];
        v.extend(self.servers.iter().map(|s| s.name.clone()));
        v
    }

    /// Starts the sites of FIG. 3: A serves sites 1-3 on 8001-8003, B site 1 on 80, C sites 1-3 on
    /// 9001-9003; each answers "site N on host X".
    pub fn start_sites(&self) -> Vec<Nginx> {
        vec![
            Nginx::start(
                &self.servers[0],
                &[
                    (8001, "site 1 on host A"),
                    (8002, "site 2 on host A"),
                    (8003, "site 3 on host A"),
                ],
            ),
            Nginx::start(&self.servers[1], &[(80, "site 1 on host B")]),
            Nginx::start(
                &self.servers[2],
                &[
                    (9001, "site 1 on host C"),
                    (9002, "site 2 on host C"),
                    (9003, "site 3 on host C"),
                ],
            ),
        ]
    }

    /// Starts `vipd run --config CONFIG` in the director namespace (with the offload of
    /// `VIPD_TEST_OFFLOAD`, see [`with_test_offload`]).
    pub fn start_vipd(&self, dir: &TempDir, config: &Path, extra: &[&str]) -> Proc {
        let config = with_test_offload(dir, config);
        let mut args = vec!["run", "--config", config.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.director
            .spawn(dir, "vipd", env!("CARGO_BIN_EXE_vipd"), &args)
    }
}

/// `VIPD_TEST_OFFLOAD`: `xdp` (native: [`Fig3::new`] turns GRO on at the peers, which native XDP needs to
/// redirect into a veth) or `generic` (peers as usual) runs the live tests with `[director] offload = "xdp"`
/// (`make test` runs live.rs in generic and failure.rs in native mode); unset or `none`: without.
pub fn test_offload() -> Option<&'static str> {
    match std::env::var("VIPD_TEST_OFFLOAD").as_deref() {
        Ok("xdp") => Some("offload = \"xdp\"\n"),
        Ok("generic") => Some("offload = \"xdp\"\nxdp_mode = \"generic\"\n"),
        Ok("none") | Ok("") | Err(_) => None,
        Ok(other) => panic!("VIPD_TEST_OFFLOAD={other}: use xdp, generic or none"),
    }
}

/// `config` with [`test_offload`]'s keys added to its `[director]` table; `config` itself when the
/// offload is off. A repository file is copied into `dir` (its relative paths would then be resolved
/// against `dir`: the configs of the tests run this way have none).
pub fn with_test_offload(dir: &TempDir, config: &Path) -> PathBuf {
    let Some(keys) = test_offload() else {
        return config.to_path_buf();
    };
    let text = std::fs::read_to_string(config).unwrap();
    assert!(
        text.contains("[director]\n"),
        "{}: no [director] table",
        config.display()
    );
    let text = text.replacen("[director]\n", &format!("[director]\n{keys}"), 1);
    // A test's own config (in the temporary folder) is changed in place: the test may rewrite it and
    // reload, and the offload, a start-only key, stays as it started.
    let path = if config.starts_with(std::env::temp_dir()) {
        config.to_path_buf()
    } else {
        dir.join(&format!(
            "offload-{}",
            config.file_name().unwrap().to_string_lossy()
        ))
    };
    std::fs::write(&path, text).unwrap();
    path
}

/// An nginx in `ns` on `port` serving the files of `root`, and "dl on host NAME" at `/`; its config dir.
pub fn file_server(ns: &Netns, port: u16, name: &str, root: &Path) -> (Proc, TempDir) {
    let dir = TempDir::new("vipd-files");
    let d = dir.0.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 1024; }}\nhttp {{\n  access_log off;\n  \
         client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
         uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
         server {{ listen {port}; root {}; location = / {{ default_type text/plain; \
         return 200 \"dl on host {name}\\n\"; }} }}\n}}\n",
        root.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let proc = ns.spawn(
        &dir,
        "nginx-files",
        "nginx",
        &[
            "-p",
            &d.to_string(),
            "-c",
            dir.join("nginx.conf").to_str().unwrap(),
        ],
    );
    ns.wait_port(std::net::Ipv4Addr::LOCALHOST, port, Duration::from_secs(10));
    (proc, dir)
}

// ---- Live-director helpers (host/tests/live*.rs) ----------------------------------------------------------

/// A process-wide lock (flock on `/tmp/vipd-e2e.lock`) held by heavy tests (wrk load) so they never run at
/// the same time, in this or another test binary. Released on drop.
pub struct Serial(File);

/// Takes the heavy-test lock, waiting for it.
pub fn serial() -> Serial {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/tmp/vipd-e2e.lock")
        .expect("/tmp/vipd-e2e.lock");
    // SAFETY: flock on a descriptor we own; the lock goes with the open file description.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
    Serial(f)
}

/// Raises this process's open-file limit (inherited by the wrk and nginx it starts) to `n`, or the hard
/// limit when lower.
pub fn raise_nofile(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit with a live rlimit struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        if lim.rlim_cur < n {
            lim.rlim_cur = n.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The MAC address of `dev` in `ns`.
pub fn mac_of(ns: &Netns, dev: &str) -> [u8; 6] {
    let out = ns.ip(&["-o", "link", "show", "dev", dev]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mac = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC for {dev} in {}: {text}", ns.name));
    parse_mac(mac)
}

/// `aa:bb:cc:dd:ee:ff` to bytes.
pub fn parse_mac(s: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).unwrap_or_else(|_| panic!("bad MAC {s}")))
        .collect();
    assert_eq!(parts.len(), 6, "bad MAC {s}");
    mac.copy_from_slice(&parts);
    mac
}

/// Bytes to `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Sends each frame as is (Ethernet header included) out of `dev` in `ns`, through an `AF_PACKET` raw socket.
pub fn send_frames(ns: &Netns, dev: &str, frames: &[Vec<u8>]) {
    let dev = std::ffi::CString::new(dev).unwrap();
    ns.run_in(|| {
        // SAFETY: plain syscalls; every pointer passed is to a live local of the size given.
        unsafe {
            let ifindex = libc::if_nametoindex(dev.as_ptr());
            assert_ne!(ifindex, 0, "no interface {dev:?}");
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex as i32;
            addr.sll_halen = 6;
            for frame in frames {
                let rc = libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                );
                assert_eq!(
                    rc as usize,
                    frame.len(),
                    "sending a {}-byte frame: {}",
                    frame.len(),
                    std::io::Error::last_os_error()
                );
            }
            libc::close(fd);
        }
    })
}

/// The fields of one `vipd stats` / `vipd stopped` log line (`key=value` after the message).
#[derive(Clone, Debug, Default)]
pub struct VipdStats {
    pub fields: std::collections::BTreeMap<String, String>,
}

impl VipdStats {
    /// Parses the last line of `log` that contains `message`.
    pub fn last(log: &str, message: &str) -> Option<VipdStats> {
        let line = log.lines().rev().find(|l| l.contains(message))?;
        let fields = line
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect();
        Some(VipdStats { fields })
    }

    /// A numeric field, 0 when absent.
    pub fn get(&self, key: &str) -> u64 {
        self.fields
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// The drops by reason (`drops=reason:n,...`).
    pub fn drops(&self) -> std::collections::BTreeMap<String, u64> {
        self.fields
            .get("drops")
            .map(|d| {
                d.split(',')
                    .filter_map(|p| p.split_once(':'))
                    .map(|(k, v)| (k.to_owned(), v.parse().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The drops of one reason.
    pub fn drop(&self, reason: &str) -> u64 {
        self.drops().get(reason).copied().unwrap_or(0)
    }
}

impl Proc {
    /// Asks a running `vipd run` for its counters (`SIGUSR1`) and waits for the `vipd stats` line.
    pub fn vipd_stats(&mut self) -> VipdStats {
        let before = self.log().matches("vipd stats").count();
        self.signal(libc::SIGUSR1);
        let start = Instant::now();
        loop {
            let log = self.log();
            if log.matches("vipd stats").count() > before {
                return VipdStats::last(&log, "vipd stats").unwrap();
            }
            self.assert_running();
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{}: no stats line after SIGUSR1:\n{log}",
                self.label
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops `vipd run` with `SIGTERM` and returns its final `vipd stopped` counters.
    pub fn vipd_stop(&mut self) -> VipdStats {
        let st = self.stop(Duration::from_secs(10));
        let log = self.log();
        assert!(
            st.is_some_and(|s| s.success()),
            "{} did not exit cleanly ({st:?}):\n{log}",
            self.label
        );
        VipdStats::last(&log, "vipd stopped")
            .unwrap_or_else(|| panic!("no final stats line:\n{log}"))
    }
}

// ---- Plugin e2e helpers (host/tests/plugins_live.rs) --------------------------------------------------------

/// The admin API's address inside the director namespace (`[director] listen` by default).
pub const ADMIN: &str = "http://127.0.0.1:9469";

/// A GET of `path` on the admin API from inside `ns` (the director's namespace): the body, or "" when it
/// does not answer 200.
pub fn admin_get(ns: &Netns, path: &str) -> String {
    let url = format!("{ADMIN}{path}");
    let out = ns.exec("curl", &["-sS", "--fail", "--max-time", "5", &url]);
    if out.status.success() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        String::new()
    }
}

/// One scrape of `/metrics` (the Prometheus text format), with lookups by name and labels.
#[derive(Clone, Debug, Default)]
pub struct Metrics(pub String);

impl Metrics {
    /// Scrapes the daemon running in `director`.
    pub fn scrape(director: &Netns) -> Metrics {
        Metrics(admin_get(director, "/metrics"))
    }

    /// The sum of the series named `name` whose labels include every `(key, value)` of `labels`; 0 when none.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
                if n != name {
                    return None;
                }
                let have = rest.trim_end_matches('}');
                let all = labels
                    .iter()
                    .all(|(k, v)| have.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
                all.then(|| value.parse::<f64>().ok()).flatten()
            })
            .sum()
    }
}

impl Wrk {
    /// The largest request latency wrk saw (the `Max` column of its `Latency` line).
    pub fn latency_max(&self) -> Option<Duration> {
        let line = self
            .text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("Latency"))?;
        parse_wrk_duration(line.split_whitespace().nth(3)?)
    }
}

/// wrk's `12.34us`, `5.67ms`, `1.20s`, `2.00m` to a duration.
pub fn parse_wrk_duration(s: &str) -> Option<Duration> {
    let unit_at = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = s.split_at(unit_at);
    let n: f64 = n.parse().ok()?;
    let secs = match unit {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

/// A userspace relay that delays every frame one real server sends by a fixed time (the kernel of the test
/// machine has no `netem`): the server's `eth0` goes to `r0` in a relay namespace, and `r1` there to the
/// server's bridge port. A thread moves frames between `r0` and `r1` through `AF_PACKET` sockets, holding
/// those from the server for `delay`. Stopped on drop.
pub struct SlowLink {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The relay's namespace.
    pub ns: Netns,
}

impl Fig3 {
    /// Re-plumbs server `i` (0 = A) through a [`SlowLink`] delaying what it sends by `delay`. Its MAC and
    /// address stay the same. Call it before the director starts.
    pub fn slow_down(&self, i: usize, delay: Duration) -> SlowLink {
        let server = &self.servers[i];
        let port = ["port-a", "port-b", "port-c"][i];
        let mac = format_mac(mac_of(server, "eth0"));
        let relay = Netns::new("slow");
        self.lan.ip(&["link", "del", port]);
        veth(server, "eth0", &relay, "r0");
        server.ip(&["link", "set", "eth0", "address", &mac]);
        veth(&relay, "r1", &self.lan, port);
        self.lan.ip(&["link", "set", port, "master", "br0"]);
        for dev in ["r0", "r1"] {
            relay.ip(&["link", "set", dev, "promisc", "on"]);
        }
        server.addr("eth0", &format!("{}/24", SERVERS[i]));
        server.ip(&["route", "add", "default", "via", "10.20.0.1"]);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = {
            let stop = stop.clone();
            relay.thread(move || {
                let r0 = packet_socket("r0");
                let r1 = packet_socket("r1");
                tx.send(()).unwrap();
                relay_frames(r0, r1, delay, &stop);
            })
        };
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the relay's sockets did not open");
        SlowLink {
            stop,
            thread: Some(thread),
            ns: relay,
        }
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A raw `AF_PACKET` socket bound to `dev` of the calling thread's namespace, all protocols.
fn packet_socket(dev: &str) -> i32 {
    let name = std::ffi::CString::new(dev).unwrap();
    let all = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain syscalls with live, correctly sized arguments.
    unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr());
        assert_ne!(ifindex, 0, "no interface {dev}");
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(all));
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = all;
        addr.sll_ifindex = ifindex as i32;
        let rc = libc::bind(
            fd,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "bind to {dev}: {}", std::io::Error::last_os_error());
        fd
    }
}

/// Moves frames `r1 -> r0` at once and `r0 -> r1` after `delay`, until `stop`.
fn relay_frames(r0: i32, r1: i32, delay: Duration, stop: &std::sync::atomic::AtomicBool) {
    let mut held: std::collections::VecDeque<(Instant, Vec<u8>)> = Default::default();
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            let (_, frame) = held.pop_front().unwrap();
            // SAFETY: sending a live buffer on our bound socket.
            unsafe { libc::send(r1, frame.as_ptr().cast(), frame.len(), 0) };
        }
        let wait = held
            .front()
            .map_or(Duration::from_millis(10), |(due, _)| {
                due.saturating_duration_since(now)
            })
            .min(Duration::from_millis(10));
        let mut fds = [
            libc::pollfd {
                fd: r0,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: r1,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll on two live descriptors.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, wait.as_millis().max(1) as i32) };
        if n <= 0 {
            continue;
        }
        for (i, p) in fds.iter().enumerate() {
            if p.revents & libc::POLLIN == 0 {
                continue;
            }
            // SAFETY: sockaddr_ll is a plain C struct for which all-zero bytes are a valid value.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: receiving into a live buffer and address of the sizes given.
            let got = unsafe {
                libc::recvfrom(
                    p.fd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            // Our own sends come back as outgoing frames: skip them.
            if got <= 0 || from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let frame = &buf[..got as usize];
            if i == 0 {
                held.push_back((Instant::now() + delay, frame.to_vec()));
            } else {
                // SAFETY: sending a live buffer on our bound socket.
                unsafe { libc::send(r0, frame.as_ptr().cast(), frame.len(), 0) };
            }
        }
    }
    // SAFETY: closing the descriptors this function was given.
    unsafe {
        libc::close(r0);
        libc::close(r1);
    }
}

/// The built plugin components (`make plugins`; `VIPD_TEST_PLUGINS` overrides the folder).
pub fn built_plugins() -> PathBuf {
    let dir = std::env::var_os("VIPD_TEST_PLUGINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/plugins"))
        });
    assert!(
        dir.join("round-robin.wasm").exists() && dir.join("testing/misbehave.wasm").exists(),
        "the plugin components are not built in {}: run `make plugins` \
         (plugins/build.sh target/plugins --testing) first",
        dir.display()
    );
    dir
}

// ---- Several directors on shared segments (host/tests/ha.rs, ecmp.rs) ------------------------------------

/// A bridge `br0` in `ns`, up.
pub fn bridge(ns: &Netns) {
    ns.ip(&["link", "add", "br0", "type", "bridge"]);
    ns.ip(&["link", "set", "br0", "up"]);
}

/// A veth from `dev` in `ns` to a port `name` of `bridge`'s `br0`.
pub fn bridge_port(bridge: &Netns, ns: &Netns, dev: &str, name: &str) {
    veth(ns, dev, bridge, name);
    bridge.ip(&["link", "set", name, "master", "br0"]);
}

/// Director `i`: `vipd-out` on the `wan` bridge with `outside` (CIDR), `vipd-in` on the `lan` bridge with
/// `inside`; `ip_forward=0`, and the kernel answers ARP only for an interface's own addresses.
pub fn director_ports(d: &Netns, i: usize, wan: &Netns, lan: &Netns, outside: &str, inside: &str) {
    bridge_port(wan, d, "vipd-out", &format!("port-out{i}"));
    bridge_port(lan, d, "vipd-in", &format!("port-in{i}"));
    d.addr("vipd-out", outside);
    d.addr("vipd-in", inside);
    d.sysctl("net.ipv4.ip_forward", "0");
    d.sysctl("net.ipv4.conf.all.arp_ignore", "1");
}

/// Servers 10.20.0.10, .11, ... on the `lan` bridge, their default route via 10.20.0.1 (keepalived's inside
/// address on the directors).
pub fn servers_behind_gateway(servers: &[Netns], lan: &Netns) {
    for (i, s) in servers.iter().enumerate() {
        bridge_port(lan, s, "eth0", &format!("port-web{i}"));
        s.addr("eth0", &format!("10.20.0.{}/24", 10 + i));
        s.ip(&["route", "add", "default", "via", "10.20.0.1"]);
    }
}

/// nginx on each server answering `web-N` on port 80, with `/files/big` of `size` bytes.
pub fn web_sites(servers: &[Netns], size: usize) -> Vec<Nginx> {
    let big = "x".repeat(size);
    servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let nginx = Nginx::start(s, &[(80, &format!("web-{}", i + 1))]);
            std::fs::create_dir_all(nginx.dir.join("files")).unwrap();
            std::fs::write(nginx.dir.join("files/big"), &big).unwrap();
            nginx
        })
        .collect()
}

/// A shipped example file, `path` under examples/.
pub fn example(path: &str) -> String {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// `vipd run --config CONFIG` in `ns`, once its data path runs.
pub fn start_vipd_in(ns: &Netns, dir: &TempDir, label: &str, config: &Path) -> Proc {
    let mut vipd = ns.spawn(
        dir,
        label,
        env!("CARGO_BIN_EXE_vipd"),
        &["run", "--config", config.to_str().unwrap()],
    );
    vipd.wait_log("data path running", Duration::from_secs(20));
    vipd
}

/// keepalived (VRRP only, in the foreground, logging to its log file) in `ns` with `config`; its pid files
/// in `dir`.
pub fn start_keepalived_in(ns: &Netns, dir: &TempDir, label: &str, config: &Path) -> Proc {
    let pid = |what: &str| dir.join(&format!("{label}{what}.pid"));
    ns.spawn(
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

/// Established connections in the table of the director in `ns`.
pub fn established(ns: &Netns) -> usize {
    let v: serde_json::Value =
        serde_json::from_str(&admin_get(ns, "/connections?state=established&limit=10000"))
            .unwrap_or_default();
    v["connections"].as_array().map_or(0, Vec::len)
}

/// Whether a new connection from `client` to http://192.0.2.1/ is answered 200 within `timeout`.
pub fn vip_serves(client: &Netns, timeout: Duration) -> bool {
    client.curl("http://192.0.2.1/", timeout).status == 200
}

/// `n` downloads of http://192.0.2.1/files/big (`size` bytes) from `client`, each paced by nginx to last
/// about `seconds` (`?rate=`, its `limit_rate`: curl 7.88's `--limit-rate` does not hold).
pub fn paced_downloads(
    client: &Netns,
    dir: &TempDir,
    tag: &str,
    n: usize,
    size: usize,
    seconds: usize,
) -> Vec<Proc> {
    let url = format!("http://192.0.2.1/files/big?rate={}", size / seconds);
    (0..n)
        .map(|i| {
            client.spawn(
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

/// Waits for every download; returns how many got all `size` bytes, printing the others.
pub fn downloads_complete(downloads: Vec<Proc>, size: usize) -> usize {
    downloads
        .into_iter()
        .filter_map(|mut d| {
            let status = d.child.wait().unwrap();
            let ok = status.success()
                && d.log()
                    .contains(&format!("downloaded {size} bytes, HTTP 200"));
            if !ok {
                println!("{}: {status}: {}", d.label, d.log());
            }
            ok.then_some(())
        })
        .count()
}
