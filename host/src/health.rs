//! Active health checks: a TCP connect or an HTTP `GET` to each real server that has a `check`, every
//! `interval`, from the director's own network namespace (through its kernel, not through the packet path).
//!
//! Contract: one plain thread per checked real server probes it with a bound of `timeout` per probe;
//! [`Hysteresis`] turns probe results into a verdict: `rise` successes in a row make it up, `fall` failures in
//! a row make it down, so a flapping server never changes verdict faster than that. Only verdict changes
//! leave a checker (the first verdict too), as a [`Report`] through the callback given to
//! [`Checker::start`]; the daemon queues them for the data path, which applies them with
//! [`crate::director::Director::set_check_result`] between batches. Nothing here touches the packet path.
//! [`Checker`] stops and joins its threads when dropped (within one probe timeout).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::config::{CheckKind, Config, HealthCheck};

/// A change of a checked real server's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The real server's name.
    pub real: String,
    /// Up after `rise` successes in a row, down after `fall` failures.
    pub up: bool,
    /// The last probe's outcome, for the log ("ok", "connect: Connection refused", "status 503", ...).
    pub detail: String,
}

/// Where a [`Checker`] sends its reports; called from the checker threads.
pub type Notify = Arc<dyn Fn(Report) + Send + Sync>;

/// Successes and failures in a row, and the verdict they give. Pure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hysteresis {
    rise: u32,
    fall: u32,
    successes: u32,
    failures: u32,
    up: Option<bool>,
}

impl Hysteresis {
    /// No verdict until `rise` successes or `fall` failures in a row.
    pub fn new(rise: u32, fall: u32) -> Hysteresis {
        Hysteresis {
            rise: rise.max(1),
            fall: fall.max(1),
            successes: 0,
            failures: 0,
            up: None,
        }
    }

    /// The verdict so far: `None` before the first.
    pub fn up(&self) -> Option<bool> {
        self.up
    }

    /// Records one probe; returns the new verdict when it changed (or is the first).
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        let verdict = if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            (self.successes >= self.rise).then_some(true)
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            (self.failures >= self.fall).then_some(false)
        };
        match verdict {
            Some(v) if self.up != Some(v) => {
                self.up = Some(v);
                Some(v)
            }
            _ => None,
        }
    }
}

/// Probes `addr` once, within `timeout`: `Ok` when a TCP connection opens (and, for HTTP, the status line
/// carries the expected status), else what went wrong.
pub fn probe(addr: SocketAddr, kind: &CheckKind, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    let (path, expect) = match kind {
        CheckKind::Tcp => return Ok(()),
        CheckKind::Http { path, expect } => (path, *expect),
    };
    let left = |what| {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("{what}: timed out"))
    };
    stream
        .set_write_timeout(Some(left("write")?))
        .map_err(|e| format!("write: {e}"))?;
    // RFC 3986 §3.2.2: an IPv6 literal in a Host header is bracketed.
    let host = match addr.ip() {
        std::net::IpAddr::V4(a) => a.to_string(),
        std::net::IpAddr::V6(a) => format!("[{a}]"),
    };
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: vipd-health\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut head = [0u8; 256];
    let mut len = 0;
    while !head[..len].contains(&b'\n') && len < head.len() {
        stream
            .set_read_timeout(Some(left("read")?))
            .map_err(|e| format!("read: {e}"))?;
        match stream.read(&mut head[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    // "HTTP/1.1 200 OK"
    let status = std::str::from_utf8(&head[..len])
        .ok()
        .and_then(|s| s.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or("no HTTP status line")?;
    if status == expect {
        Ok(())
    } else {
        Err(format!("status {status}, expected {expect}"))
    }
}

/// The running checks of one configuration. Dropping it stops them.
pub struct Checker {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Checker {
    /// Starts one thread per real server of `config` that has a `check`.
    pub fn start(config: &Config, notify: Notify) -> Result<Checker> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for real in &config.reals {
            let Some(check) = real.check.clone() else {
                continue;
            };
            let target = SocketAddr::new(real.address, check.port);
            let (name, stop, notify) = (real.name.clone(), Arc::clone(&stop), Arc::clone(&notify));
            let thread = std::thread::Builder::new()
                .name(format!("vipd-check-{name}"))
                .spawn(move || run(&name, target, &check, &stop, &notify))
                .with_context(|| {
                    format!("starting the health check of real server {}", real.name)
                })?;
            threads.push(thread);
        }
        Ok(Checker { stop, threads })
    }

    /// How many real servers are checked.
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    /// True when no real server has a check.
    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.threads {
            t.thread().unpark();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One checker thread: probe, record, report a change, sleep until the next interval.
fn run(name: &str, target: SocketAddr, check: &HealthCheck, stop: &AtomicBool, notify: &Notify) {
    let mut hysteresis = Hysteresis::new(check.rise, check.fall);
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let result = probe(target, &check.kind, check.timeout);
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if let Err(e) = &result {
            tracing::debug!(real = name, %target, error = %e, "health check probe failed");
        }
        if let Some(up) = hysteresis.record(result.is_ok()) {
            notify(Report {
                real: name.to_owned(),
                up,
                detail: result.err().unwrap_or_else(|| "ok".to_owned()),
            });
        }
        let next = started + check.interval;
        while !stop.load(Ordering::Relaxed) {
            match next.checked_duration_since(Instant::now()) {
                Some(wait) if !wait.is_zero() => std::thread::park_timeout(wait),
                _ => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::path::Path;
    use std::sync::mpsc;

    use super::*;

    /// Alternating results never change a rise 2 / fall 3 verdict; runs of `rise` and `fall` do, once each.
    #[test]
    fn flapping_does_not_flap_the_verdict() {
        let mut h = Hysteresis::new(2, 3);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), Some(false), "third failure in a row: down");
        assert_eq!(h.record(false), None, "no repeat");
        for _ in 0..20 {
            assert_eq!(h.record(true), None);
            assert_eq!(h.record(false), None);
        }
        assert_eq!(h.up(), Some(false));
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(true), Some(true), "second success in a row: up");
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(true), None, "two failures are not three");
        assert_eq!(h.up(), Some(true));
    }

    /// The first verdict is reported whichever it is.
    #[test]
    fn first_verdict_is_reported() {
        let mut h = Hysteresis::new(1, 1);
        assert_eq!(h.record(true), Some(true));
        let mut h = Hysteresis::new(1, 1);
        assert_eq!(h.record(false), Some(false));
    }

    /// A TCP probe succeeds on an open port and fails on a closed one; an HTTP probe compares the status.
    #[test]
    fn probes_tcp_and_http() {
        let t = Duration::from_secs(2);
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(probe(tcp.local_addr().unwrap(), &CheckKind::Tcp, t), Ok(()));
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(
            probe(closed, &CheckKind::Tcp, t)
                .unwrap_err()
                .starts_with("connect:")
        );

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = [0u8; 512];
                let n = s.read(&mut buf).unwrap();
                assert!(buf[..n].starts_with(b"GET /health HTTP/1.0\r\n"));
                write!(s, "HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").unwrap();
            }
        });
        let http = CheckKind::Http {
            path: "/health".into(),
            expect: 200,
        };
        assert_eq!(probe(addr, &http, t), Ok(()));
        assert_eq!(
            probe(addr, &http, t),
            Err("status 503, expected 200".into())
        );
        server.join().unwrap();
    }

    /// A checker reports down, then up when its port opens, and stops when dropped.
    #[test]
    fn checker_reports_changes() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let text = format!(
            "[director]\noutside = \"o\"\ninside = \"i\"\n[[real]]\nname = \"r\"\naddress = \"127.0.0.1\"\n\
             check = {{ kind = \"tcp\", port = {port}, interval = \"20ms\", timeout = \"200ms\", rise = 2, fall = 2 }}\n"
        );
        let config = Config::parse(&text, Path::new("t.toml")).unwrap();
        let (tx, rx) = mpsc::channel();
        let tx = std::sync::Mutex::new(tx);
        let checker = Checker::start(
            &config,
            Arc::new(move |r| {
                let _ = tx.lock().unwrap().send(r);
            }),
        )
        .unwrap();
        assert_eq!(checker.len(), 1);
        let down = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!((down.real.as_str(), down.up), ("r", false));
        let _listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let up = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!((up.up, up.detail.as_str()), (true, "ok"));
        let started = Instant::now();
        drop(checker);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(rx.try_recv().is_err());
    }
}
