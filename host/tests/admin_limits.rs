//! The admin HTTP server against slow and hostile clients (issue 12): the header read timeout, the bound on
//! open connections, 431 for oversized request heads and the connection deadline. The server runs in this
//! process on 127.0.0.1 with short limits; no namespaces, no root.
//!
//! Also here, in the same in-process harness: the `/ha` endpoints of a director alone.
//!
//! The tests take turns ([`serial`]) so that each can check exact counts of
//! `vipd_admin_connections_refused_total`, which is process-wide.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};

use arc_swap::ArcSwap;
use std::time::{Duration, Instant};

use common::wait_for;
use serde_json::Value;
use vipd::admin::{self, Admin, AdminLimits};

/// Longest any wait here may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);

fn serial() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts the admin server on a free loopback port with `limits` and a director that publishes nothing.
fn start(limits: AdminLimits) -> SocketAddr {
    vipd::metrics::install();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (commands, _) = mpsc::channel();
    let admin = Admin {
        snapshot: Arc::new(ArcSwap::from_pointee(Default::default())),
        capture: None,
        commands,
        waker: None,
        token: None,
        plugins: None,
        shadow: None,
        sync: None,
        cluster: None,
    };
    admin::spawn_on(listener, admin, limits).unwrap();
    addr
}

/// `vipd_admin_connections_refused_total{reason}` as the server reports it.
fn refused(addr: SocketAddr, reason: &str) -> u64 {
    let (code, text) = admin::request(addr, "GET", "/metrics", None).unwrap();
    assert_eq!(code, 200, "{text}");
    let series = format!("vipd_admin_connections_refused_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no {series}in:\n{text}"))
        .parse()
        .unwrap()
}

fn counts(addr: SocketAddr) -> [u64; 4] {
    ["too_many", "header_timeout", "header_too_large", "deadline"].map(|r| refused(addr, r))
}

/// Reads until the server closes the connection (EOF or reset), dropping any bytes; how long that took.
/// Fails the test if it is still open after [`PATIENCE`].
fn wait_closed(stream: &mut TcpStream) -> Duration {
    let start = Instant::now();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return start.elapsed(),
            Err(e) => panic!("still open after {:?}: {e}", start.elapsed()),
        }
    }
}

/// One response on a keep-alive connection: (status line, head, body), framed by `content-length`.
fn read_response(stream: &mut TcpStream) -> (String, String, String) {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed before a whole response: {raw:?}");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8(raw[..head_end].to_vec()).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .expect("content-length")
        .trim()
        .parse()
        .unwrap();
    while raw.len() < head_end + len {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the whole body");
        raw.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8(raw[head_end..head_end + len].to_vec()).unwrap();
    let status = head.lines().next().unwrap_or("").to_owned();
    (status, head, body)
}

fn json_error(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    v["error"].as_str().expect("an error message").to_owned()
}

/// A request with a header line of 1 MiB.
fn oversized_request() -> Vec<u8> {
    format!(
        "GET /status HTTP/1.1\r\nHost: vipd\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(1 << 20)
    )
    .into_bytes()
}

/// A client that sends half a header line and stops is disconnected after the header read timeout, and
/// counted.
#[test]
fn half_a_header_line_is_closed_after_the_timeout() {
    let _turn = serial();
    let header_read = Duration::from_millis(500);
    let addr = start(AdminLimits {
        header_read,
        ..AdminLimits::default()
    });
    let before = counts(addr);
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"GET /status HTTP/1.1\r\nHos").unwrap();
    let waited = wait_closed(&mut slow);
    assert!(
        waited >= header_read - Duration::from_millis(100),
        "closed after {waited:?}, before the timeout"
    );
    let after = counts(addr);
    assert_eq!(after[1] - before[1], 1, "header_timeout");
    // A connection that sends nothing at all is no better.
    let mut silent = TcpStream::connect(addr).unwrap();
    wait_closed(&mut silent);
    assert_eq!(counts(addr)[1] - after[1], 1, "header_timeout");
}

/// A keep-alive connection idle after its answer is closed after the header read timeout too, and that
/// ordinary end is not counted as a refusal.
#[test]
fn idle_keep_alive_connection_is_closed_quietly() {
    let _turn = serial();
    let header_read = Duration::from_millis(500);
    let addr = start(AdminLimits {
        header_read,
        ..AdminLimits::default()
    });
    let before = counts(addr);
    let mut client = TcpStream::connect(addr).unwrap();
    for _ in 0..2 {
        client
            .write_all(b"GET /status HTTP/1.1\r\nHost: vipd\r\n\r\n")
            .unwrap();
        let (status, _, body) = read_response(&mut client);
        assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    }
    let waited = wait_closed(&mut client);
    assert!(
        waited >= header_read - Duration::from_millis(100),
        "{waited:?}"
    );
    assert_eq!(counts(addr), before);
}

/// Slow clients fill the bound and no more: connections beyond it, a normal `GET /status` included, are
/// answered 503 with a JSON error and counted; once the server has timed the slow ones out, `/status`
/// answers 200 again.
#[test]
fn connections_beyond_the_bound_get_503_until_slow_ones_time_out() {
    let _turn = serial();
    const BOUND: usize = 4;
    const EXTRA: u64 = 20;
    let header_read = Duration::from_secs(2);
    let addr = start(AdminLimits {
        max_connections: BOUND,
        header_read,
        ..AdminLimits::default()
    });
    let before = counts(addr);
    let mut slow: Vec<TcpStream> = (0..BOUND)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /status HTTP/1.1\r\n").unwrap();
            s
        })
        .collect();
    let filled = Instant::now();
    for _ in 0..EXTRA {
        let (code, body) = admin::request(addr, "GET", "/status", None).unwrap();
        assert_eq!(code, 503, "{body}");
        assert!(json_error(&body).contains("too many connections"), "{body}");
    }
    assert!(
        filled.elapsed() < header_read,
        "too slow to test the bound: {:?}",
        filled.elapsed()
    );
    let mut refused_while_waiting = 0;
    wait_for(
        "/status to answer 200 again",
        PATIENCE,
        || match admin::request(addr, "GET", "/status", None) {
            Ok((200, _)) => true,
            Ok((503, _)) => {
                refused_while_waiting += 1;
                false
            }
            other => panic!("{other:?}"),
        },
    );
    for s in &mut slow {
        wait_closed(s);
    }
    let after = counts(addr);
    assert_eq!(
        after[0] - before[0],
        EXTRA + refused_while_waiting,
        "too_many"
    );
    assert_eq!(after[1] - before[1], BOUND as u64, "header_timeout");
}

/// A request head of 1 MiB gets `431 Request Header Fields Too Large` with a JSON error, as the first request
/// of a connection and after a served one; the client can send all of it and read the answer.
#[test]
fn oversized_head_gets_431_with_a_json_error() {
    let _turn = serial();
    let addr = start(AdminLimits::default());
    let before = counts(addr);

    let mut client = TcpStream::connect(addr).unwrap();
    client.write_all(&oversized_request()).unwrap();
    let (status, head, body) = read_response(&mut client);
    assert_eq!(status, "HTTP/1.1 431 Request Header Fields Too Large");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(json_error(&body).contains("request head over"), "{body}");
    wait_closed(&mut client);

    let mut client = TcpStream::connect(addr).unwrap();
    client
        .write_all(b"GET /status HTTP/1.1\r\nHost: vipd\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut client).0, "HTTP/1.1 200 OK");
    client.write_all(&oversized_request()).unwrap();
    let (status, _, body) = read_response(&mut client);
    assert_eq!(status, "HTTP/1.1 431 Request Header Fields Too Large");
    json_error(&body);
    wait_closed(&mut client);

    let after = counts(addr);
    assert_eq!(after[2] - before[2], 2, "header_too_large");
}

/// A request whose body never arrives is cut at the connection deadline (lifetime, then grace).
#[test]
fn stalled_body_is_cut_at_the_deadline() {
    let _turn = serial();
    let (lifetime, grace) = (Duration::from_millis(300), Duration::from_millis(300));
    let addr = start(AdminLimits {
        lifetime,
        grace,
        ..AdminLimits::default()
    });
    let before = counts(addr);
    let mut client = TcpStream::connect(addr).unwrap();
    client
        .write_all(b"POST /reals/a/drain HTTP/1.1\r\nHost: vipd\r\nContent-Length: 100\r\n\r\n{")
        .unwrap();
    let waited = wait_closed(&mut client);
    assert!(
        waited >= lifetime + grace - Duration::from_millis(100),
        "{waited:?}"
    );
    let after = counts(addr);
    assert_eq!(after[3] - before[3], 1, "deadline");
}

/// `/ha` on a director without `[sync]` or `[cluster]`: it is active and alone, a drain is refused with 409
/// (nothing to withdraw), an unknown role is 404 and a GET of a role change 405.
#[test]
fn ha_endpoints_of_a_director_alone() {
    let _turn = serial();
    let addr = start(AdminLimits::default());
    let (code, body) = admin::request(addr, "GET", "/ha", None).unwrap();
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (&v["role"], &v["synced"], &v["pair"]),
        (&"active".into(), &true.into(), &false.into())
    );
    assert!(v.get("announced").is_none(), "{body}");
    let (code, body) = admin::request(addr, "POST", "/ha/drain", None).unwrap();
    assert_eq!(code, 409, "{body}");
    assert!(json_error(&body).contains("no [cluster]"), "{body}");
    let (code, _) = admin::request(addr, "POST", "/ha/primary", None).unwrap();
    assert_eq!(code, 404);
    let (code, _) = admin::request(addr, "GET", "/ha/active", None).unwrap();
    assert_eq!(code, 405);
}
