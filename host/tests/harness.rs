//! The e2e harness itself: the FIG. 3 topology comes up, serves, and leaves nothing behind.

mod common;

use std::time::Duration;

use common::*;

#[test]
/// FIG. 3 is built, every site answers from its server's own namespace and from the director's inside, and
/// dropping it removes every namespace (and the processes in them).
fn fig3_up_serves_and_cleans_up() {
    require_root();
    let before = netns_list();
    let names;
    {
        let f = Fig3::new();
        names = f.names();
        assert!(names.iter().all(|n| netns_list().contains(n)));
        let _sites = f.start_sites();
        // Each server answers its sites; the director reaches them over the inside LAN.
        let expect = [
            (0, 8001, "site 1 on host A"),
            (0, 8003, "site 3 on host A"),
            (1, 80, "site 1 on host B"),
            (2, 9002, "site 2 on host C"),
        ];
        for (i, port, body) in expect {
            let (status, got) = f.servers[i].http_get(SERVERS[i], port, "/").unwrap();
            assert_eq!((status, got.trim()), (200, body));
            let (status, got) = f.director.http_get(SERVERS[i], port, "/").unwrap();
            assert_eq!((status, got.trim()), (200, body));
        }
        // The client has its address and the on-link route to the VIPs, and nobody answers for them yet.
        let routes = String::from_utf8_lossy(&f.client.ip(&["route"]).stdout).into_owned();
        assert!(routes.contains("192.0.2.0/24 dev eth0"), "{routes}");
        let c = f
            .client
            .curl("http://192.0.2.1/", Duration::from_millis(300));
        assert_ne!(c.exit, 0);
        // The director's kernel must not forward.
        let fwd = f.director.exec_ok("sysctl", &["-n", "net.ipv4.ip_forward"]);
        assert_eq!(String::from_utf8_lossy(&fwd.stdout).trim(), "0");
    }
    let after = netns_list();
    for n in &names {
        assert!(!after.contains(n), "namespace {n} left behind");
    }
    assert!(
        before
            .iter()
            .all(|n| after.contains(n) || n.starts_with("vt"))
    );
}

#[test]
/// A panic while a topology exists still removes its namespaces.
fn cleanup_on_panic() {
    require_root();
    let names = std::sync::Mutex::new(Vec::new());
    let r = std::panic::catch_unwind(|| {
        let a = Netns::new("pa");
        let b = Netns::new("pb");
        veth(&a, "x0", &b, "x1");
        names
            .lock()
            .unwrap()
            .extend([a.name.clone(), b.name.clone()]);
        panic!("on purpose");
    });
    assert!(r.is_err());
    let after = netns_list();
    for n in names.lock().unwrap().iter() {
        assert!(
            !after.contains(n),
            "namespace {n} left behind after a panic"
        );
    }
}

#[test]
/// wrk's summary is parsed, including socket errors and non-2xx lines.
fn parses_wrk() {
    let w = Wrk::parse(
        "Running 1s test @ http://x/\n  2 threads and 10 connections\n  1234 requests in 1.00s, 1 MB read\n  \
         Socket errors: connect 1, read 2, write 3, timeout 4\n  Non-2xx or 3xx responses: 5\n\
         Requests/sec:   1234.50\nTransfer/sec: 1MB\n",
    );
    assert_eq!(
        (w.requests, w.socket_errors, w.non_2xx, w.errors()),
        (1234, [1, 2, 3, 4], 5, 10)
    );
    assert!((w.rps - 1234.5).abs() < 1e-9);
}
