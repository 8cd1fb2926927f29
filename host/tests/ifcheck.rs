//! Interface checks on real veths: refusal with offloads on, `--fix-offloads`, a down interface.
//!
//! `/sys/class/net` shows the namespace `/sys` was mounted in, so the checks run in a child process under
//! `ip netns exec` (this test binary again, selecting `child` with `VIPD_IFCHECK_CHILD`).

mod common;

use common::*;
use vipd::ifcheck::{self, Offloads};

/// The part that runs inside the namespace; prints its findings for the parent to judge.
#[test]
#[ignore = "run by the other tests inside a namespace"]
fn child() {
    let Ok(what) = std::env::var("VIPD_IFCHECK_CHILD") else {
        return;
    };
    let (mode, dev) = what.split_once(':').unwrap();
    let r = match mode {
        "refuse" => ifcheck::check(dev, Offloads::Refuse),
        "fix" => ifcheck::check(dev, Offloads::Disable),
        _ => unreachable!(),
    };
    match r {
        Ok(info) => println!("RESULT ok {info:?}"),
        Err(e) => println!("RESULT err {e:#}"),
    }
}

fn in_ns(ns: &Netns, mode: &str, dev: &str) -> String {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(exe)
        .args([
            "--exact",
            "child",
            "--include-ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("VIPD_IFCHECK_CHILD", format!("{mode}:{dev}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r))
        .unwrap_or_else(|| {
            panic!(
                "child printed no result: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .to_owned()
}

#[test]
/// A veth with the default offloads (TSO, GSO, checksums on) is refused with the exact ethtool command;
/// `--fix-offloads` turns them off, after which the plain check passes and reads MAC, MTU and address.
fn offloads_refused_then_fixed() {
    require_root();
    let a = Netns::new("ifa");
    let b = Netns::new("ifb");
    a.ip(&[
        "link", "add", "vipd-out", "type", "veth", "peer", "name", "peer", "netns", &b.name,
    ]);
    a.ip(&["link", "set", "vipd-out", "up"]);
    b.ip(&["link", "set", "peer", "up"]);
    a.ip(&["addr", "add", "10.9.0.1/24", "dev", "vipd-out"]);

    let r = in_ns(&a, "refuse", "vipd-out");
    assert!(r.starts_with("err"), "{r}");
    assert!(
        r.contains("ethtool -K vipd-out gro off lro off gso off tso off rx off tx off"),
        "{r}"
    );

    let r = in_ns(&a, "fix", "vipd-out");
    assert!(r.starts_with("ok"), "{r}");
    let r = in_ns(&a, "refuse", "vipd-out");
    assert!(r.starts_with("ok"), "{r}");
    assert!(
        r.contains("offloads_on: []") && r.contains("mtu: 1500"),
        "{r}"
    );
    assert!(r.contains("ipv4: Some(10.9.0.1)"), "{r}");
}

#[test]
/// An interface that is administratively down is refused with the command that brings it up; a missing one
/// is refused by name.
fn down_or_missing_refused() {
    require_root();
    let a = Netns::new("ifd");
    let b = Netns::new("ife");
    veth(&a, "vipd-in", &b, "peer");
    a.ip(&["link", "set", "vipd-in", "down"]);
    let r = in_ns(&a, "refuse", "vipd-in");
    assert!(
        r.contains("is down") && r.contains("ip link set vipd-in up"),
        "{r}"
    );
    let r = in_ns(&a, "refuse", "vipd-nope");
    assert!(r.contains("does not exist"), "{r}");
}
