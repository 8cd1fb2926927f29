//! Arbitrary frames into the packet path, from either side, with time moving forward: nothing may panic,
//! and every frame the director sends must parse as the frame it claims to be. The config serves IPv4 and
//! IPv6 virtual machines (one IPv6 real server resolved by neighbour discovery, one static), so IPv6 frames,
//! neighbour discovery and ICMPv6 reach the same paths.
#![no_main]

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use vipd::Interface;
use vipd::assemble::Assembly;
use vipd::config::Config;
use vipd::director::{Layer2, Verdict};
use vipd::wire::MacAddr;

const CONFIG: &str = concat!(
    include_str!("../../../tests/fixtures/binding-modes.toml"),
    r#"
[[real]]
name = "host-a6"
address = "2001:db8:1::10"
mac = "02:00:00:00:02:0a"

[[real]]
name = "host-b6"
address = "2001:db8:1::11"

[[virtual]]
name = "v6"
address = "2001:db8:f::1"
bind = ["host-a6:8001", "host-b6"]
  [[virtual.port]]
  port = 80
  [[virtual.port]]
  port = 53
  protocol = "udp"
"#
);

fn config() -> &'static Config {
    static CONFIG_ONCE: OnceLock<Config> = OnceLock::new();
    CONFIG_ONCE.get_or_init(|| Config::parse(CONFIG, Path::new("binding-modes.toml")).expect("fixture config"))
}

fuzz_target!(|data: &[u8]| {
    let config = config();
    let l2 = Layer2 {
        outside_mac: MacAddr([2, 0, 0, 0, 0, 1]),
        inside_mac: MacAddr([2, 0, 0, 0, 0, 2]),
        inside_ip: Ipv4Addr::UNSPECIFIED,
    };
    let assembly = Assembly::new(Path::new("binding-modes.toml"), config.clone(), None).expect("fixture assembles");
    let mut director = assembly.director(l2);
    let mut now = Duration::ZERO;
    // The input is a sequence of frames: [side+time byte][len hi][len lo][frame bytes...].
    let mut rest = data;
    let mut frame = [0u8; 2048];
    while rest.len() >= 3 {
        let control = rest[0];
        let len = (usize::from(rest[1]) << 8 | usize::from(rest[2])).min(rest.len() - 3).min(frame.len());
        let bytes = &rest[3..3 + len];
        rest = &rest[3 + len..];
        now += Duration::from_millis(u64::from(control >> 1) * 50);
        let from = if control & 1 == 0 { Interface::Outside } else { Interface::Inside };
        frame[..len].copy_from_slice(bytes);
        match director.handle(from, &mut frame[..len], now) {
            Verdict::Forward(_) | Verdict::ForwardAndReply { .. } => assert!(vipd::wire::parse(&frame[..len]).is_ok(), "a forwarded frame must still parse"),
            Verdict::Reply(_) => assert!(!director.reply().is_empty()),
            Verdict::Drop(_) | Verdict::Consumed => {}
        }
        director.tick(now, &mut |_, f| assert!(!f.is_empty()));
    }
});
