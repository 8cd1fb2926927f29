//! vipd as a service (issue 18): it runs as an unprivileged user holding only CAP_NET_RAW, refuses clearly
//! without it, tells systemd it is ready only once its interfaces are open, and its watchdog pings come
//! from the data path: a stuck data path stops them while the process lives.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

fn fig3_config() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/fig3.toml"
    ))
}

/// `setpriv` arguments that make the command run as nobody with exactly `caps` (e.g. `["net_raw"]`), as
/// the systemd unit's `User=` and `AmbientCapabilities=` do.
fn unprivileged(caps: &[&str]) -> Vec<String> {
    let list: String = caps.iter().map(|c| format!(",+{c}")).collect();
    let mut args = vec![
        "--reuid=65534".to_owned(),
        "--regid=65534".to_owned(),
        "--clear-groups".to_owned(),
        format!("--bounding-set=-all{list}"),
    ];
    if !caps.is_empty() {
        args.push(format!("--inh-caps={}", &list[1..]));
        args.push(format!("--ambient-caps={}", &list[1..]));
    }
    args
}

#[test]
/// As nobody with only CAP_NET_RAW (the unit's capability), vipd serves FIG. 3; with no capability it
/// refuses at start, naming CAP_NET_RAW and what it is for.
fn runs_as_nobody_with_only_cap_net_raw() {
    let fig = Fig3::new();
    let _sites = fig.start_sites();
    let dir = TempDir::new("vipd-unprivileged");
    let config = fig3_config();

    let mut args = unprivileged(&[]);
    args.extend(
        [
            env!("CARGO_BIN_EXE_vipd"),
            "run",
            "--config",
            config.to_str().unwrap(),
        ]
        .map(String::from),
    );
    let refused = fig.director.exec(
        "setpriv",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "CAP_NET_RAW is missing: vipd needs it to open packet sockets on vipd-out and vipd-in"
        ),
        "{stderr}"
    );

    let mut args = unprivileged(&["net_raw"]);
    args.extend(
        [
            env!("CARGO_BIN_EXE_vipd"),
            "run",
            "--config",
            config.to_str().unwrap(),
        ]
        .map(String::from),
    );
    let mut vipd = fig.director.spawn(
        &dir,
        "vipd",
        "setpriv",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    vipd.wait_log("data path running", Duration::from_secs(20));
    let status = std::fs::read_to_string(format!("/proc/{}/status", vipd.child.id())).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l == "Uid:\t65534\t65534\t65534\t65534"),
        "{status}"
    );
    assert!(
        status.lines().any(|l| l == "CapEff:\t0000000000002000"),
        "{status}"
    );
    wait_for(
        "a GET through the unprivileged director",
        Duration::from_secs(20),
        || {
            let c = fig.client.curl("http://192.0.2.1/", Duration::from_secs(2));
            c.exit == 0 && c.status == 200 && c.body.starts_with("site 1 on host")
        },
    );
    vipd.assert_running();
    assert!(
        vipd.stop(Duration::from_secs(5))
            .is_some_and(|s| s.success())
    );
}

/// A fake systemd notify socket: what vipd sends to `NOTIFY_SOCKET`.
struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn bind(dir: &TempDir) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        NotifySocket { sock, path }
    }

    /// The next message within `timeout`, if any.
    fn next(&self, timeout: Duration) -> Option<String> {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        while start.elapsed() < timeout {
            if let Ok(n) = self.sock.recv(&mut buf) {
                return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        None
    }

    /// Messages until one contains `needle` (returned), failing after `timeout`.
    fn until(&self, needle: &str, timeout: Duration) -> String {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(m) = self.next(timeout - start.elapsed())
                && m.contains(needle)
            {
                return m;
            }
        }
        panic!("no {needle:?} on the notify socket within {timeout:?}");
    }
}

#[test]
/// READY=1 comes once the data path runs (its interfaces are open); WATCHDOG=1 comes every half
/// WATCHDOG_USEC from the data path, and stops when the data path is stuck (the test hook stalls it)
/// although the process still runs; STOPPING=1 on SIGTERM.
fn readiness_and_watchdog_come_from_the_data_path() {
    let fig = Fig3::new();
    let dir = TempDir::new("vipd-notify");
    let notify = NotifySocket::bind(&dir);
    let config = fig3_config();
    // systemd names the watched process in WATCHDOG_PID; the shell's pid is vipd's after `exec`.
    let script = format!(
        "WATCHDOG_PID=$$ exec {} run --config {}",
        env!("CARGO_BIN_EXE_vipd"),
        config.display()
    );
    let mut vipd = fig.director.spawn_env(
        &dir,
        "vipd",
        "sh",
        &["-c", &script],
        &[
            ("NOTIFY_SOCKET", notify.path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
            ("VIPD_TEST_HOOKS", "1"),
        ],
    );
    let ready = notify.until("READY=1", Duration::from_secs(20));
    assert!(
        vipd.log().contains("data path running"),
        "READY=1 ({ready:?}) before the data path ran:\n{}",
        vipd.log()
    );
    // Pings every 200 ms: five within 2 s.
    let start = Instant::now();
    let mut pings = 0;
    while pings < 5 {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "only {pings} watchdog pings in 2 s"
        );
        if notify
            .next(Duration::from_millis(500))
            .is_some_and(|m| m.contains("WATCHDOG=1"))
        {
            pings += 1;
        }
    }

    vipd.signal(libc::SIGUSR2);
    vipd.wait_log("test hook: stalling the data path", Duration::from_secs(5));
    // A ping already on its way may still arrive; after that, silence for 5 intervals.
    for _ in 0..3 {
        if notify.next(Duration::from_millis(300)).is_none() {
            break;
        }
    }
    let silent = notify.next(Duration::from_secs(1));
    assert_eq!(silent, None, "pings from a stuck data path");
    vipd.assert_running();

    vipd.signal(libc::SIGTERM);
    notify.until("STOPPING=1", Duration::from_secs(5));
    assert!(
        vipd.stop(Duration::from_secs(5))
            .is_some_and(|s| s.success())
    );
}
