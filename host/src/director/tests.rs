//! Unit tests of the director: the packet path, selection and failure handling, on hand-built frames.

use std::path::Path;

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

use std::net::{Ipv4Addr, SocketAddr};

use super::*;
use crate::conntable::{ConnState, Timeouts};
use crate::policy::{RoundRobin, ServerState};
use crate::wire::{self, MacAddr, TcpFlags};

const CLIENT_MAC: MacAddr = MacAddr([2, 0, 0, 0, 1, 1]);
pub(super) const L2: Layer2 = Layer2 {
    outside_mac: MacAddr([2, 0, 0, 0, 0, 1]),
    inside_mac: MacAddr([2, 0, 0, 0, 0, 2]),
    inside_ip: Ipv4Addr::UNSPECIFIED,
};
pub(super) const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub(super) const WEB: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const SOLO: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

/// Servers a, b, c behind `web`; `primary` with backup `spare` behind `solo`. Static MACs: no ARP.
pub(super) fn config(syn_retries: u32, weight_a: u32, with_a: bool, checks: bool) -> Config {
    let check = if checks {
        "check = { kind = \"tcp\", port = 80 }\n"
    } else {
        ""
    };
    let a = if with_a {
        format!(
            "[[real]]\nname = \"a\"\naddress = \"10.0.0.1\"\nmac = \"02:00:00:00:02:01\"\n\
             weight = {weight_a}\nfailure_threshold = 2\nretry_after = \"10s\"\n"
        )
    } else {
        String::new()
    };
    let bind = if with_a {
        "\"a\", \"b\", \"c\""
    } else {
        "\"b\", \"c\""
    };
    let text = format!(
        "[director]\noutside = \"o\"\ninside = \"i\"\nsyn_retries = {syn_retries}\n{a}\
         [[real]]\nname = \"b\"\naddress = \"10.0.0.2\"\nmac = \"02:00:00:00:02:02\"\nfailure_threshold = 2\n{check}\
         [[real]]\nname = \"c\"\naddress = \"10.0.0.3\"\nmac = \"02:00:00:00:02:03\"\nfailure_threshold = 2\n{check}\
         [[real]]\nname = \"primary\"\naddress = \"10.0.0.4\"\nmac = \"02:00:00:00:02:04\"\n\
         backup = \"spare\"\nfailure_threshold = 1\nretry_after = \"10s\"\n\
         [[real]]\nname = \"spare\"\naddress = \"10.0.0.5\"\nmac = \"02:00:00:00:02:05\"\n\
         [[virtual]]\nname = \"web\"\naddress = \"192.0.2.1\"\n  [[virtual.port]]\n  port = 80\n  bind = [{bind}]\n\
         [[virtual]]\nname = \"solo\"\naddress = \"192.0.2.2\"\n  [[virtual.port]]\n  port = 80\n  bind = [\"primary\"]\n"
    );
    Config::parse(&text, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"))
}

fn director(syn_retries: u32) -> Director {
    let config = config(syn_retries, 1, true, true);
    let bindings = BindingTable::from_config(&config);
    Director::new(&config, bindings, L2)
}

pub(super) fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A TCP frame from the client to `vip`:80.
pub(super) fn client(vip: Ipv4Addr, cport: u16, syn: bool, rst: bool) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(CLIENT_MAC.0, L2.outside_mac.0)
        .ipv4(CLIENT.octets(), vip.octets(), 64)
        .tcp(cport, 80, 1000, 64240);
    if syn {
        b = b.syn();
    } else {
        b = b.ack(1);
    }
    if rst {
        b = b.rst();
    }
    let mut v = Vec::new();
    b.write(&mut v, &[]).unwrap();
    v
}

/// A TCP frame from a real server port to the client: SYN-ACK, or RST-ACK.
pub(super) fn server(real: SocketAddr, cport: u16, rst: bool) -> Vec<u8> {
    let SocketAddr::V4(real) = real else {
        panic!("an IPv4 real server");
    };
    let mut b = PacketBuilder::ethernet2([2, 0, 0, 0, 2, 9], L2.inside_mac.0)
        .ipv4(real.ip().octets(), CLIENT.octets(), 64)
        .tcp(real.port(), cport, 5000, 64240)
        .ack(1001);
    b = if rst { b.rst() } else { b.syn() };
    let mut v = Vec::new();
    b.write(&mut v, &[]).unwrap();
    v
}

/// (destination, TCP flags syn/ack/rst) of a frame.
pub(super) fn dest(frame: &[u8]) -> (SocketAddr, (bool, bool, bool)) {
    let p = SlicedPacket::from_ethernet(frame).unwrap();
    let (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Tcp(t))) = (&p.net, &p.transport) else {
        panic!("not TCP/IPv4");
    };
    (
        SocketAddr::from((ip.header().destination_addr(), t.destination_port())),
        (t.syn(), t.ack(), t.rst()),
    )
}

/// Sends a client SYN; returns the real server it was forwarded to.
pub(super) fn syn_to(d: &mut Director, vip: Ipv4Addr, cport: u16, now: Duration) -> SocketAddr {
    let mut f = client(vip, cport, true, false);
    assert_eq!(
        d.handle(Interface::Outside, &mut f, now),
        Verdict::Forward(Interface::Inside),
        "SYN from port {cport}"
    );
    dest(&f).0
}

pub(super) fn real(d: &Director, name: &str) -> RealLive {
    d.reals().iter().find(|r| r.name == name).unwrap().clone()
}

fn events(d: &mut Director) -> Vec<(String, ServerState, ServerState, StateReason)> {
    d.drain_events()
        .map(|e| (e.real.to_string(), e.from, e.to, e.reason))
        .collect()
}

fn addr(last: u8, port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 0, 0, last), port))
}

/// After `syn_retries` resends without a SYN-ACK, the next SYN goes to another server; the first
/// server's late SYN-ACK no longer matches; the new server's does.
/// A binding's own weight (from a binder plugin) overrides the real server's weight for that binding.
#[test]
fn binding_weight_overrides_real_weight() {
    let config = config(2, 1, true, false);
    let mut bindings = BindingTable::from_config(&config);
    for t in &mut bindings.ports[0].targets {
        t.weight = Some(if bindings.reals[t.real_id as usize].name == "a" {
            3
        } else {
            0
        });
    }
    let mut d = Director::new(&config, bindings, L2);
    let a = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 80));
    for port in 0..8 {
        assert_eq!(
            syn_to(&mut d, WEB, 2000 + port, secs(0)),
            a,
            "weights 3:0:0"
        );
    }
}

#[test]
fn ditch_after_syn_retries_reselects() {
    let mut d = director(1);
    let first = syn_to(&mut d, WEB, 1000, secs(0));
    assert_eq!(
        syn_to(&mut d, WEB, 1000, secs(1)),
        first,
        "one resend allowed"
    );
    let second = syn_to(&mut d, WEB, 1000, secs(3));
    assert_ne!(second, first, "ditched: re-given to another server");
    assert_eq!((d.counters().ditched, d.counters().reselected), (1, 1));
    let first_name = d.reals().iter().find(|r| r.address == first.ip()).unwrap();
    assert_eq!(first_name.ditched, 1);
    assert_eq!(first_name.state, ServerState::Up, "threshold is 2");
    assert_eq!(
        d.handle(Interface::Inside, &mut server(first, 1000, false), secs(3)),
        Verdict::Drop(DropReason::NoConnection)
    );
    let mut synack = server(second, 1000, false);
    assert_eq!(
        d.handle(Interface::Inside, &mut synack, secs(3)),
        Verdict::Forward(Interface::Outside)
    );
    assert_eq!(dest(&synack).0, SocketAddr::from((CLIENT, 1000)));
    // The new server counts one active connection, the old one none.
    let active: u32 = d.reals().iter().map(|r| r.active).sum();
    assert_eq!(active, 1);
    assert!(events(&mut d).is_empty());
}

/// An RST answering a SYN ditches the connection: the RST stays with the director and the client's
/// retransmission goes to another server, even with `syn_retries = 0`.
#[test]
fn rst_from_server_counts_and_is_held() {
    let mut d = director(0);
    let first = syn_to(&mut d, WEB, 1000, secs(0));
    assert_eq!(
        d.handle(Interface::Inside, &mut server(first, 1000, true), secs(0)),
        Verdict::Consumed
    );
    assert_eq!(d.counters().ditched, 1);
    let second = syn_to(&mut d, WEB, 1000, secs(1));
    assert_ne!(second, first);
    assert_eq!(
        d.counters().ditched,
        1,
        "the first SYN to the new server is no resend"
    );
    // The new server answers: the connection is established there.
    assert_eq!(
        d.handle(Interface::Inside, &mut server(second, 1000, false), secs(1)),
        Verdict::Forward(Interface::Outside)
    );
}

/// A SYN-ACK resets the consecutive ditched count.
#[test]
fn synack_resets_ditched() {
    let mut d = director(0);
    let first = syn_to(&mut d, WEB, 1000, secs(0));
    d.handle(Interface::Inside, &mut server(first, 1000, true), secs(0));
    let name = d
        .reals()
        .iter()
        .find(|r| r.address == first.ip())
        .unwrap()
        .name
        .clone();
    assert_eq!(real(&d, &name).ditched, 1);
    // Round robin comes back to the same server within a few new connections.
    for cport in 2000..2006 {
        let to = syn_to(&mut d, WEB, cport, secs(1));
        if to == first {
            d.handle(Interface::Inside, &mut server(to, cport, false), secs(1));
        }
    }
    assert_eq!(real(&d, &name).ditched, 0);
}

/// `failure_threshold` ditched in a row fail the server; its backup takes its connections; after
/// `retry_after` one trial connection goes to it, and its SYN-ACK restores it.
#[test]
fn threshold_fails_backup_takes_over_trial_restores() {
    let mut d = director(0);
    let primary = addr(4, 80);
    let spare = addr(5, 80);
    assert_eq!(syn_to(&mut d, SOLO, 1000, secs(0)), primary);
    assert_eq!(
        d.handle(Interface::Inside, &mut server(primary, 1000, true), secs(0)),
        Verdict::Consumed,
        "the backup stands in, so the RST is held"
    );
    assert_eq!(real(&d, "primary").state, ServerState::Failed);
    assert_eq!(
        events(&mut d),
        [(
            "primary".into(),
            ServerState::Up,
            ServerState::Failed,
            StateReason::Ditched
        )]
    );
    assert_eq!(
        syn_to(&mut d, SOLO, 1000, secs(1)),
        spare,
        "retransmission to the backup"
    );
    for cport in 1001..1005 {
        assert_eq!(syn_to(&mut d, SOLO, cport, secs(2)), spare);
    }
    // Not yet 10 s: still the backup. At 10 s: one trial, then the backup again while it runs.
    assert_eq!(syn_to(&mut d, SOLO, 1100, secs(9)), spare);
    assert_eq!(syn_to(&mut d, SOLO, 1101, secs(10)), primary);
    assert_eq!(syn_to(&mut d, SOLO, 1102, secs(10)), spare);
    assert_eq!(d.counters().trials, 1);
    d.handle(
        Interface::Inside,
        &mut server(primary, 1101, false),
        secs(10),
    );
    assert_eq!(real(&d, "primary").state, ServerState::Up);
    assert_eq!(
        events(&mut d),
        [(
            "primary".into(),
            ServerState::Failed,
            ServerState::Up,
            StateReason::Answered
        )]
    );
    assert_eq!(syn_to(&mut d, SOLO, 1103, secs(11)), primary);
}

/// A refused trial keeps the server failed for another `retry_after`, and its client goes to the backup.
#[test]
fn failed_trial_waits_another_retry_after() {
    let mut d = director(0);
    let (primary, spare) = (addr(4, 80), addr(5, 80));
    syn_to(&mut d, SOLO, 1000, secs(0));
    d.handle(Interface::Inside, &mut server(primary, 1000, true), secs(0));
    assert_eq!(syn_to(&mut d, SOLO, 1001, secs(10)), primary, "trial");
    assert_eq!(
        d.handle(
            Interface::Inside,
            &mut server(primary, 1001, true),
            secs(10)
        ),
        Verdict::Consumed
    );
    assert_eq!(
        syn_to(&mut d, SOLO, 1001, secs(11)),
        spare,
        "trial client retransmits to backup"
    );
    assert_eq!(syn_to(&mut d, SOLO, 1002, secs(19)), spare);
    assert_eq!(syn_to(&mut d, SOLO, 1003, secs(20)), primary, "next trial");
    assert_eq!(real(&d, "primary").state, ServerState::Failed);
    assert_eq!(events(&mut d).len(), 1, "one change: up to failed");
}

/// With every server of a virtual port failed, a new SYN is answered with RST at once; a resend whose
/// server ditched it and has no replacement gets an RST too.
#[test]
fn all_failed_refuses_with_rst() {
    let mut d = director(0);
    let first = syn_to(&mut d, WEB, 1000, secs(0));
    for name in ["a", "b", "c"] {
        if real(&d, name).address != first.ip() {
            d.set_real_state(name, ServerState::Failed, secs(0))
                .unwrap();
        }
    }
    // Its server still up (one ditch of two): the resend stays with it.
    assert_eq!(syn_to(&mut d, WEB, 1000, secs(1)), first);
    // Second ditch fails it; nobody is left.
    let mut f = client(WEB, 1000, true, false);
    assert_eq!(
        d.handle(Interface::Outside, &mut f, secs(3)),
        Verdict::Reply(Interface::Outside)
    );
    assert_eq!(
        dest(d.reply()),
        (SocketAddr::from((CLIENT, 1000)), (false, true, true))
    );
    let mut f = client(WEB, 1001, true, false);
    assert_eq!(
        d.handle(Interface::Outside, &mut f, secs(3)),
        Verdict::Reply(Interface::Outside)
    );
    assert_eq!(d.counters().refused[DropReason::NoServer as usize], 2);
    assert_eq!(d.table().len(), 0);
    assert!(d.reals().iter().all(|r| r.active == 0));
}

/// A draining server (operator or `weight = 0` on reload) keeps its connections and gets no new ones;
/// one removed from the config keeps its connections the same way.
#[test]
fn drain_keeps_existing_connections() {
    let mut d = director(2);
    let mut to_a = None;
    for cport in 1000..1003 {
        let to = syn_to(&mut d, WEB, cport, secs(0));
        d.handle(Interface::Inside, &mut server(to, cport, false), secs(0));
        if to.ip() == Ipv4Addr::new(10, 0, 0, 1) {
            to_a = Some((to, cport));
        }
    }
    let (a, cport) = to_a.expect("round robin gave one to a");
    let data = |d: &mut Director, now| {
        let mut f = client(WEB, cport, false, false);
        assert_eq!(
            d.handle(Interface::Outside, &mut f, now),
            Verdict::Forward(Interface::Inside)
        );
        dest(&f).0
    };
    d.set_real_state("a", ServerState::Draining, secs(1))
        .unwrap();
    assert_eq!(
        events(&mut d),
        [(
            "a".into(),
            ServerState::Up,
            ServerState::Draining,
            StateReason::Operator
        )]
    );
    assert_eq!(data(&mut d, secs(1)), a);
    for p in 2000..2010 {
        assert_ne!(syn_to(&mut d, WEB, p, secs(1)).ip(), a.ip());
    }
    d.set_real_state("a", ServerState::Up, secs(2)).unwrap();
    assert_eq!(events(&mut d)[0].3, StateReason::Operator);

    // Reload with weight 0: draining, by config.
    let c = config(2, 0, true, true);
    d.install(
        BindingTable::from_config(&c),
        vec![Box::new(RoundRobin::new()), Box::new(RoundRobin::new())],
    );
    assert_eq!(
        events(&mut d),
        [(
            "a".into(),
            ServerState::Up,
            ServerState::Draining,
            StateReason::Config
        )]
    );
    assert_eq!(data(&mut d, secs(3)), a);
    for p in 3000..3010 {
        assert_ne!(syn_to(&mut d, WEB, p, secs(3)).ip(), a.ip());
    }

    // Reload without a: it stays, draining, while its connection lives.
    let c = config(2, 1, false, true);
    d.install(
        BindingTable::from_config(&c),
        vec![Box::new(RoundRobin::new()), Box::new(RoundRobin::new())],
    );
    assert_eq!(real(&d, "a").state, ServerState::Draining);
    assert_eq!(data(&mut d, secs(4)), a);
    let mut rst = client(WEB, cport, false, true);
    d.handle(Interface::Outside, &mut rst, secs(4));
    d.expire(secs(4) + Duration::from_secs(3600), usize::MAX);
    assert_eq!(real(&d, "a").active, 0);
    d.install(
        BindingTable::from_config(&c),
        vec![Box::new(RoundRobin::new()), Box::new(RoundRobin::new())],
    );
    assert!(
        d.reals().iter().all(|r| r.name != "a"),
        "gone once its connections ended"
    );
}

/// Active check verdicts fail and restore a server; an unknown name is an error; a reload that removes
/// the check forgets its failure.
#[test]
fn check_results_and_operator() {
    let mut d = director(2);
    d.set_check_result("b", false, secs(1)).unwrap();
    d.set_check_result("b", false, secs(2)).unwrap();
    assert_eq!(
        events(&mut d),
        [(
            "b".into(),
            ServerState::Up,
            ServerState::Failed,
            StateReason::CheckFailed
        )]
    );
    for p in 1000..1010 {
        assert_ne!(
            syn_to(&mut d, WEB, p, secs(2)).ip(),
            Ipv4Addr::new(10, 0, 0, 2)
        );
    }
    // A trial is for ditched failures only: a check failure waits for the check.
    for p in 1010..1020 {
        assert_ne!(
            syn_to(&mut d, WEB, p, secs(60)).ip(),
            Ipv4Addr::new(10, 0, 0, 2)
        );
    }
    d.set_check_result("b", true, secs(3)).unwrap();
    assert_eq!(events(&mut d)[0].3, StateReason::CheckPassed);
    assert_eq!(
        d.set_real_state("nope", ServerState::Draining, secs(3)),
        Err(UnknownReal("nope".into()))
    );
    assert!(d.set_check_result("nope", true, secs(3)).is_err());

    d.set_check_result("c", false, secs(4)).unwrap();
    d.set_real_state("c", ServerState::Up, secs(4)).unwrap();
    assert_eq!(
        real(&d, "c").state,
        ServerState::Failed,
        "the check still says down"
    );
    d.set_checked(&config(2, 1, true, false));
    assert_eq!(
        real(&d, "c").state,
        ServerState::Up,
        "no check in the config: forgotten"
    );
    assert_eq!(events(&mut d).len(), 2);
    d.set_check_result("c", false, secs(5)).unwrap();
    assert_eq!(
        real(&d, "c").state,
        ServerState::Up,
        "a late verdict of a check that no longer runs"
    );
}

/// The event queue keeps the newest changes and counts the ones it dropped.
#[test]
fn event_queue_is_bounded() {
    let mut d = director(2);
    for i in 0..EVENT_CAPACITY + 10 {
        let state = if i.is_multiple_of(2) {
            ServerState::Draining
        } else {
            ServerState::Up
        };
        d.set_real_state("b", state, secs(i as u64)).unwrap();
    }
    assert_eq!(d.drain_events().count(), EVENT_CAPACITY);
    assert_eq!(d.counters().events_lost, 10);
    assert_eq!(d.counters().state_changes, (EVENT_CAPACITY + 10) as u64);
}

/// A frame with SYN and RST, or SYN and FIN, opens no connection, is counted as `bad_tcp_flags`, and does
/// not touch an existing connection in either direction.
#[test]
fn syn_with_rst_or_fin_opens_nothing() {
    let mut d = director(2);
    let flagged = |cport: u16, extra: u8| {
        let mut f = client(WEB, cport, true, false);
        let p = wire::parse(&f).unwrap();
        // Byte 13 of the TCP header holds the flags; the checksum does not matter to the director here.
        f[p.l4 + 13] |= extra;
        f
    };
    for (cport, extra) in [(1000, TcpFlags::RST.0), (1001, TcpFlags::FIN.0)] {
        let mut f = flagged(cport, extra);
        assert_eq!(
            d.handle(Interface::Outside, &mut f, secs(0)),
            Verdict::Drop(DropReason::BadTcpFlags)
        );
    }
    assert_eq!(d.table().len(), 0, "nothing opened");
    assert_eq!(d.counters().connections_created, 0);
    assert_eq!(
        d.counters().drops.outside[DropReason::BadTcpFlags as usize],
        2
    );

    // An open connection: a SYN+FIN from the client with its tuple neither resends nor closes it.
    let to = syn_to(&mut d, WEB, 2000, secs(1));
    let mut f = flagged(2000, TcpFlags::FIN.0);
    assert_eq!(
        d.handle(Interface::Outside, &mut f, secs(1)),
        Verdict::Drop(DropReason::BadTcpFlags)
    );
    assert_eq!(d.counters().syn_resends, 0);
    // The same from the server side.
    let mut f = server(to, 2000, false);
    let p = wire::parse(&f).unwrap();
    f[p.l4 + 13] |= TcpFlags::RST.0;
    assert_eq!(
        d.handle(Interface::Inside, &mut f, secs(1)),
        Verdict::Drop(DropReason::BadTcpFlags)
    );
    assert_eq!(d.table().len(), 1, "still open");
    assert_eq!(d.counters().ditched, 0);
    assert_eq!(
        d.counters().drops.inside[DropReason::BadTcpFlags as usize],
        1
    );
}

/// Every drop reason has a distinct snake_case label, derived from the enum.
#[test]
fn drop_reason_labels() {
    use strum::VariantArray;
    let labels: std::collections::BTreeSet<_> =
        DropReason::VARIANTS.iter().map(|r| r.as_str()).collect();
    assert_eq!(labels.len(), DropReason::VARIANTS.len());
    assert_eq!(DropReason::NotIp.as_str(), "not_ip");
    assert_eq!(DropReason::BadTcpFlags.as_str(), "bad_tcp_flags");
    assert_eq!(Handled::Forwarded.as_str(), "forwarded");
}

/// The same SYN repeated back to back (sooner than any TCP retransmission) is a duplicate, not a resend:
/// a burst of them on many tuples ditches nothing and fails no server (issue 12's "80 frames fail every
/// server").
#[test]
fn duplicate_syn_bursts_are_not_resends() {
    let mut d = director(0);
    for cport in 1000..1020 {
        let first = syn_to(&mut d, WEB, cport, secs(1));
        for k in 1..4u64 {
            let at = secs(1) + Duration::from_millis(100 * k);
            assert_eq!(syn_to(&mut d, WEB, cport, at), first, "same server");
        }
    }
    assert_eq!(d.counters().syn_resends, 0);
    assert_eq!(d.counters().syn_duplicates, 60);
    assert_eq!(d.counters().ditched, 0);
    assert!(d.reals().iter().all(|r| r.state == ServerState::Up));
    // Still a resend when it comes a retransmission timeout later: with syn_retries = 0, ditched.
    let first = syn_to(&mut d, WEB, 1000, secs(1));
    let second = syn_to(&mut d, WEB, 1000, secs(3));
    assert_ne!(first, second);
    assert_eq!(d.counters().ditched, 1);
}

/// A SYN repeated after the server's SYN-ACK was seen is not a resend (the server answered): it is
/// forwarded to the same server and ditches nothing, however late it comes.
#[test]
fn syn_after_synack_is_not_a_resend() {
    let mut d = director(0);
    let to = syn_to(&mut d, WEB, 1000, secs(0));
    assert_eq!(
        d.handle(Interface::Inside, &mut server(to, 1000, false), secs(0)),
        Verdict::Forward(Interface::Outside)
    );
    for t in [2, 5, 9] {
        assert_eq!(syn_to(&mut d, WEB, 1000, secs(t)), to);
    }
    assert_eq!(d.counters().syn_resends, 0);
    assert_eq!(d.counters().ditched, 0);
}

/// Conntrack's states: SYN sent, SYN-ACK seen (half-open, its own short timeout), established only when the
/// client acknowledges the SYN-ACK. A spoofed SYN's connection (the server answers, the client never does)
/// expires by the SYN-received timeout, not the established one.
#[test]
fn established_only_after_the_clients_ack() {
    let mut d = director(2);
    let state = |d: &Director| d.table().iter().next().map(|(_, c)| c.state);
    let to = syn_to(&mut d, WEB, 1000, secs(0));
    assert_eq!(state(&d), Some(ConnState::SynSent));
    d.handle(Interface::Inside, &mut server(to, 1000, false), secs(0));
    assert_eq!(state(&d), Some(ConnState::SynRecv));
    let mut ack = client(WEB, 1000, false, false);
    assert_eq!(
        d.handle(Interface::Outside, &mut ack, secs(1)),
        Verdict::Forward(Interface::Inside)
    );
    assert_eq!(state(&d), Some(ConnState::Established));

    // The spoofed one: answered, never acknowledged.
    let to = syn_to(&mut d, WEB, 2000, secs(1));
    d.handle(Interface::Inside, &mut server(to, 2000, false), secs(1));
    let timeouts = Timeouts::default();
    d.expire(secs(1) + timeouts.syn_recv, usize::MAX);
    assert_eq!(
        d.table().len(),
        1,
        "only the established connection is left"
    );
    assert_eq!(state(&d), Some(ConnState::Established));
}

/// A SYN with a wrong TCP checksum opens nothing and gets no answer (the end host would drop it): dropped as
/// `bad_checksum`. The same SYN with the right checksum is served.
#[test]
fn bad_checksum_syn_opens_nothing() {
    let mut d = director(2);
    let mut f = client(WEB, 1000, true, false);
    let p = wire::parse(&f).unwrap();
    f[p.l4 + 16] ^= 0x01;
    assert_eq!(
        d.handle(Interface::Outside, &mut f, secs(0)),
        Verdict::Drop(DropReason::BadChecksum)
    );
    assert_eq!(d.table().len(), 0);
    assert_eq!(d.counters().refused.iter().sum::<u64>(), 0, "no RST either");
    syn_to(&mut d, WEB, 1000, secs(0));
    assert_eq!(d.table().len(), 1);
}

/// A selector that always picks the first candidate and remembers the `active` counts it was shown.
struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<Vec<u32>>>>);

impl Selector for Recorder {
    fn select(
        &mut self,
        _conn: &crate::policy::NewConnection,
        candidates: &[Candidate],
    ) -> crate::policy::Selection {
        self.0
            .lock()
            .unwrap()
            .push(candidates.iter().map(|c| c.active).collect());
        crate::policy::Selection::Pick(0)
    }
}

/// A candidate's `active` is the connections open to it now: a connection stops counting when it closes
/// (FIN or RST), not when its closing entry expires 30 s later (issue 16: least-connections was misled).
#[test]
fn closing_connections_are_not_active() {
    let config = config(2, 1, true, false);
    let bindings = BindingTable::from_config(&config);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let selectors = bindings
        .ports
        .iter()
        .map(|_| Box::new(Recorder(std::sync::Arc::clone(&seen))) as Box<dyn Selector>)
        .collect();
    let mut d = Director::with_selectors(&config, bindings, selectors, L2);
    syn_to(&mut d, WEB, 3000, secs(0));
    syn_to(&mut d, WEB, 3001, secs(0));
    // The client resets its first connection: closing, still in the table.
    let mut rst = client(WEB, 3000, false, true);
    assert_eq!(
        d.handle(Interface::Outside, &mut rst, secs(1)),
        Verdict::Forward(Interface::Inside)
    );
    assert_eq!(d.table().len(), 2);
    syn_to(&mut d, WEB, 3002, secs(1));
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0][0], 0);
    assert_eq!(seen[1][0], 1, "one open");
    assert_eq!(seen[2][0], 1, "one open, one closing");
    assert_eq!(real(&d, "a").active, 3, "connection objects");
    assert_eq!(real(&d, "a").closing, 1);
}

// ---------------------------------------------------------------- IPv6

mod ipv6 {
    use std::net::{IpAddr, Ipv6Addr, SocketAddr};

    use super::*;
    use crate::wire::{Icmp, Packet, Transport, ndp};

    const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 2);
    const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 1);
    const REAL_A: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x1, 0, 0, 0, 0, 1);
    const REAL_B: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x1, 0, 0, 0, 0, 2);
    const MAC_B: MacAddr = MacAddr([2, 0, 0, 0, 2, 0xb]);

    /// An IPv6 virtual machine (TCP 80, UDP 53) on `a` (static MAC) and `b` (resolved by solicitation),
    /// beside an IPv4 one: one director, one table.
    fn dual_stack() -> Director {
        let text = format!(
            "[director]\noutside = \"o\"\ninside = \"i\"\n\
             [[real]]\nname = \"a\"\naddress = \"{REAL_A}\"\nmac = \"02:00:00:00:02:0a\"\n\
             [[real]]\nname = \"b\"\naddress = \"{REAL_B}\"\n\
             [[real]]\nname = \"v4\"\naddress = \"10.0.0.1\"\nmac = \"02:00:00:00:02:01\"\n\
             [[virtual]]\nname = \"web6\"\naddress = \"{VIP6}\"\n\
               [[virtual.port]]\n  port = 80\n  bind = [\"a:8080\", \"b:8080\"]\n\
               [[virtual.port]]\n  port = 53\n  protocol = \"udp\"\n  bind = [\"a\"]\n\
             [[virtual]]\nname = \"web4\"\naddress = \"192.0.2.1\"\n\
               [[virtual.port]]\n  port = 80\n  bind = [\"v4\"]\n"
        );
        let config = Config::parse(&text, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"));
        let bindings = BindingTable::from_config(&config);
        Director::new(&config, bindings, L2)
    }

    fn frame(src: SocketAddr, dst: SocketAddr, macs: ([u8; 6], [u8; 6]), syn: bool) -> Vec<u8> {
        let (IpAddr::V6(s), IpAddr::V6(d)) = (src.ip(), dst.ip()) else {
            panic!("IPv6 test addresses")
        };
        let mut b = PacketBuilder::ethernet2(macs.0, macs.1)
            .ipv6(s.octets(), d.octets(), 64)
            .tcp(src.port(), dst.port(), 1000, 64240);
        b = if syn { b.syn() } else { b.ack(1) };
        let mut v = Vec::new();
        b.write(&mut v, &[]).unwrap();
        v
    }

    fn from_client(port: u16, cport: u16, syn: bool) -> Vec<u8> {
        frame(
            SocketAddr::new(CLIENT6.into(), cport),
            SocketAddr::new(VIP6.into(), port),
            (CLIENT_MAC.0, L2.outside_mac.0),
            syn,
        )
    }

    fn parsed(f: &[u8]) -> Packet {
        wire::parse(f).unwrap()
    }

    /// Sent frames of a tick, parsed.
    fn tick(d: &mut Director, now: Duration) -> Vec<(Interface, Vec<u8>)> {
        let mut sent = Vec::new();
        d.tick(now, &mut |to, f| sent.push((to, f.to_vec())));
        sent
    }

    /// A SYN to the IPv6 VIP goes to a real server with only the destination rewritten; the server's
    /// SYN-ACK goes back as the VIP; checksums stay valid both ways.
    #[test]
    fn syn_is_translated_both_ways() {
        let mut d = dual_stack();
        let mut f = from_client(80, 40000, true);
        assert_eq!(
            d.handle(Interface::Outside, &mut f, secs(1)),
            Verdict::Forward(Interface::Inside)
        );
        let p = parsed(&f);
        assert_eq!(
            (p.src, p.dst, p.ports()),
            (CLIENT6.into(), REAL_A.into(), Some((40000, 8080)))
        );
        assert!(wire::transport_checksum_ok(&f, &p));
        assert_eq!(p.dst_mac, MacAddr([2, 0, 0, 0, 2, 0xa]));

        let mut back = frame(
            SocketAddr::new(REAL_A.into(), 8080),
            SocketAddr::new(CLIENT6.into(), 40000),
            ([2, 0, 0, 0, 2, 0xa], L2.inside_mac.0),
            true,
        );
        assert_eq!(
            d.handle(Interface::Inside, &mut back, secs(1)),
            Verdict::Forward(Interface::Outside)
        );
        let q = parsed(&back);
        assert_eq!((q.src, q.ports()), (VIP6.into(), Some((80, 40000))));
        assert_eq!(q.dst_mac, CLIENT_MAC);
        assert!(wire::transport_checksum_ok(&back, &q));
        let conn = d.table().iter().next().unwrap().1;
        assert_eq!(
            SocketAddr::from(conn.client),
            SocketAddr::new(CLIENT6.into(), 40000)
        );
    }

    /// A SYN to a port the IPv6 VIP does not support gets an RST at once; a datagram to an unsupported
    /// UDP port gets ICMPv6 port unreachable; a ping gets an echo reply.
    #[test]
    fn refusals_and_echo() {
        let mut d = dual_stack();
        let mut f = from_client(81, 40001, true);
        assert_eq!(
            d.handle(Interface::Outside, &mut f, secs(1)),
            Verdict::Reply(Interface::Outside)
        );
        let r = parsed(d.reply());
        assert_eq!((r.src, r.dst), (VIP6.into(), CLIENT6.into()));
        assert!(matches!(r.transport, Transport::Tcp { flags, .. } if flags.is_rst()));

        let mut udp = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC.0, L2.outside_mac.0)
            .ipv6(CLIENT6.octets(), VIP6.octets(), 64)
            .udp(5353, 54)
            .write(&mut udp, b"q")
            .unwrap();
        assert_eq!(
            d.handle(Interface::Outside, &mut udp, secs(1)),
            Verdict::Reply(Interface::Outside)
        );
        let u = parsed(d.reply());
        assert!(matches!(
            u.transport,
            Transport::Icmp(Icmp::Error {
                kind: 1,
                code: 4,
                ..
            })
        ));

        let mut ping = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC.0, L2.outside_mac.0)
            .ipv6(CLIENT6.octets(), VIP6.octets(), 64)
            .icmpv6_echo_request(1, 1)
            .write(&mut ping, b"ping")
            .unwrap();
        assert_eq!(
            d.handle(Interface::Outside, &mut ping, secs(1)),
            Verdict::Reply(Interface::Outside)
        );
        assert_eq!(parsed(d.reply()).src, IpAddr::V6(VIP6));
    }

    /// Neighbour discovery: a solicitation for the VIP (to its solicited-node address) is answered with
    /// the outside MAC; the VIP is announced unsolicited after start; real server `b` (no static MAC) is
    /// solicited on the inside, and its advertisement makes its connections flow.
    #[test]
    fn neighbour_discovery() {
        let mut d = dual_stack();
        let client_ll = ndp::link_local(CLIENT_MAC);
        let mut ns = vec![0u8; 128];
        let n = wire::build_neighbour_solicitation(CLIENT_MAC, client_ll, VIP6, &mut ns);
        ns.truncate(n);
        assert_eq!(
            d.handle(Interface::Outside, &mut ns, secs(1)),
            Verdict::Reply(Interface::Outside)
        );
        let na = parsed(d.reply());
        assert_eq!(
            (na.src, na.dst, na.dst_mac),
            (VIP6.into(), client_ll.into(), CLIENT_MAC)
        );
        assert_eq!(
            na.transport,
            Transport::Icmp(Icmp::NeighbourAdvertisement {
                target: VIP6,
                mac: Some(L2.outside_mac)
            })
        );
        // Not for a VIP: ignored.
        let mut other = vec![0u8; 128];
        let n = wire::build_neighbour_solicitation(CLIENT_MAC, client_ll, CLIENT6, &mut other);
        other.truncate(n);
        assert_eq!(
            d.handle(Interface::Outside, &mut other, secs(1)),
            Verdict::Drop(DropReason::Ignored)
        );

        let sent = tick(&mut d, secs(1));
        let announced = sent.iter().any(|(to, f)| {
            *to == Interface::Outside
                && matches!(parsed(f).transport, Transport::Icmp(Icmp::NeighbourAdvertisement { target, .. }) if target == VIP6)
        });
        assert!(announced, "unsolicited advertisement for the VIP");
        let solicited = sent.iter().any(|(to, f)| {
            *to == Interface::Inside
                && matches!(parsed(f).transport, Transport::Icmp(Icmp::NeighbourSolicitation { target, .. }) if target == REAL_B)
        });
        assert!(solicited, "solicitation for real server b");

        // b answers; a connection placed on b now leaves with b's MAC.
        let mut adv = vec![0u8; 128];
        let n = wire::build_neighbour_advertisement(
            MAC_B,
            REAL_B,
            Some((ndp::link_local(L2.inside_mac), L2.inside_mac)),
            &mut adv,
        );
        adv.truncate(n);
        assert_eq!(
            d.handle(Interface::Inside, &mut adv, secs(1)),
            Verdict::Consumed
        );
        let mut to_b = None;
        for cport in 41000..41010 {
            let mut f = from_client(80, cport, true);
            if d.handle(Interface::Outside, &mut f, secs(2)) == Verdict::Forward(Interface::Inside)
                && parsed(&f).dst == IpAddr::V6(REAL_B)
            {
                to_b = Some(f);
                break;
            }
        }
        assert_eq!(parsed(&to_b.expect("a SYN placed on b")).dst_mac, MAC_B);
    }

    /// Both families in one table: an IPv4 client of the IPv4 VIP and an IPv6 client of the IPv6 VIP are
    /// served side by side, each to a server of its own family.
    #[test]
    fn dual_stack_side_by_side() {
        let mut d = dual_stack();
        let mut f6 = from_client(80, 40000, true);
        let mut f4 = client(Ipv4Addr::new(192, 0, 2, 1), 40000, true, false);
        assert_eq!(
            d.handle(Interface::Outside, &mut f6, secs(1)),
            Verdict::Forward(Interface::Inside)
        );
        assert_eq!(
            d.handle(Interface::Outside, &mut f4, secs(1)),
            Verdict::Forward(Interface::Inside)
        );
        assert!(parsed(&f6).dst.is_ipv6());
        assert_eq!(parsed(&f4).dst, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(d.table().len(), 2);
    }
}

/// The SYN proxy over IPv6: the cookie SYN-ACK announces 20 bytes less MSS than for IPv4 (the header is
/// longer), and the client's ACK with the cookie opens the connection and sends the server the client's SYN.
#[test]
fn syn_proxy_over_ipv6() {
    use std::net::Ipv6Addr;

    let text = "[director]\noutside = \"o\"\ninside = \"i\"\nsyn_proxy = true\n\
                [[real]]\nname = \"a\"\naddress = \"2001:db8:1::1\"\nmac = \"02:00:00:00:02:0a\"\n\
                [[virtual]]\nname = \"v6\"\naddress = \"2001:db8:f::1\"\nbind = [\"a:8080\"]\n\
                [[virtual.port]]\nport = 80\n";
    let config = Config::parse(text, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"));
    let bindings = BindingTable::from_config(&config);
    let mut d = Director::new(&config, bindings, L2);
    let client = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 2);
    let vip = Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 1);
    let segment = |syn: bool, seq: u32, ack: Option<u32>| {
        let mut b = PacketBuilder::ethernet2(CLIENT_MAC.0, L2.outside_mac.0)
            .ipv6(client.octets(), vip.octets(), 64)
            .tcp(40000, 80, seq, 64240);
        if syn {
            b = b.syn();
        }
        if let Some(a) = ack {
            b = b.ack(a);
        }
        let b = b
            .options(&[etherparse::TcpOptionElement::MaximumSegmentSize(1440)])
            .unwrap();
        let mut v = Vec::new();
        b.write(&mut v, &[]).unwrap();
        v
    };
    let mut syn = segment(true, 1000, None);
    assert_eq!(
        d.handle(Interface::Outside, &mut syn, secs(1)),
        Verdict::Reply(Interface::Outside)
    );
    let reply = d.reply().to_vec();
    let r = wire::parse(&reply).unwrap();
    let wire::Transport::Tcp {
        flags,
        seq: cookie,
        ack,
        ..
    } = r.transport
    else {
        panic!("{r:?}")
    };
    assert!(flags.is_syn_ack() && ack == 1001);
    assert_eq!(wire::tcp::syn_options(&reply, &r).mss, Some(1440));
    assert!(wire::transport_checksum_ok(&reply, &r));

    let mut ack = segment(false, 1001, Some(cookie.wrapping_add(1)));
    assert_eq!(
        d.handle(Interface::Outside, &mut ack, secs(1)),
        Verdict::Reply(Interface::Inside)
    );
    let to_server = wire::parse(d.reply()).unwrap();
    assert_eq!(
        to_server.dst,
        std::net::IpAddr::V6("2001:db8:1::1".parse().unwrap())
    );
    assert!(
        matches!(to_server.transport, wire::Transport::Tcp { flags, seq: 1000, dst_port: 8080, .. } if flags.is_syn_only())
    );
    assert!(wire::transport_checksum_ok(d.reply(), &to_server));
}

/// A unicast frame for another host's MAC (flooded to the promiscuous capture by a bridge) is dropped as
/// `other_host` from either side, never translated; the same frame to the director's MAC is served, and
/// broadcast ARP still reaches it.
#[test]
fn frames_for_other_hosts_are_not_translated() {
    let mut d = director(2);
    let mut f = client(WEB, 40000, true, false);
    f[..6].copy_from_slice(&[2, 0, 0, 0, 7, 7]);
    assert_eq!(
        d.handle(Interface::Outside, &mut f, secs(1)),
        Verdict::Drop(DropReason::OtherHost)
    );
    let mut back = server(addr(1, 80), 40000, false);
    back[..6].copy_from_slice(&[2, 0, 0, 0, 7, 7]);
    assert_eq!(
        d.handle(Interface::Inside, &mut back, secs(1)),
        Verdict::Drop(DropReason::OtherHost)
    );
    assert_eq!(d.table().len(), 0);
    let mut f = client(WEB, 40000, true, false);
    assert_eq!(
        d.handle(Interface::Outside, &mut f, secs(1)),
        Verdict::Forward(Interface::Inside)
    );
    let mut arp = [0u8; 64];
    let n = wire::build_arp_request(CLIENT_MAC, CLIENT, WEB, &mut arp);
    assert_eq!(
        d.handle(Interface::Outside, &mut arp[..n], secs(1)),
        Verdict::Reply(Interface::Outside)
    );
}

/// `[cluster]`: a server's reply this director has no connection for (the SYN went through another
/// director) is translated by the binding table and sent to the router (the MAC client frames come from);
/// a client's ACK makes a connection established whose SYN-ACK went back through another director.
/// Without `[cluster]` the same reply is dropped.
#[test]
fn cluster_translates_replies_of_connections_placed_elsewhere() {
    let plain = config(2, 1, true, false);
    let mut cluster = plain.clone();
    cluster.cluster = Some(crate::config::ClusterConfig {
        route_table: 100,
        drain_time: secs(10),
        consistent_policies: Vec::new(),
    });
    let mut d = Director::new(&cluster, BindingTable::from_config(&cluster), L2);
    assert_eq!(
        d.handle(
            Interface::Inside,
            &mut server(addr(1, 80), 2000, false),
            secs(1)
        ),
        Verdict::Drop(DropReason::NoConnection),
        "no client frame yet: no router to send it to"
    );
    let real = syn_to(&mut d, WEB, 1000, secs(1));
    let mut reply = server(addr(1, 80), 2000, false);
    assert_eq!(
        d.handle(Interface::Inside, &mut reply, secs(1)),
        Verdict::Forward(Interface::Outside)
    );
    let p = SlicedPacket::from_ethernet(&reply).unwrap();
    let (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Tcp(t))) = (&p.net, &p.transport) else {
        panic!("not TCP/IPv4");
    };
    assert_eq!(
        (ip.header().source_addr(), t.source_port()),
        (WEB, 80),
        "the reply comes from the virtual address"
    );
    assert_eq!(&reply[..6], &CLIENT_MAC.0, "to the router");
    assert_eq!(&reply[6..12], &L2.outside_mac.0);
    assert_eq!(d.counters().cluster_returns, 1);
    // Connection 1000's SYN-ACK went back through another director: the client's ACK establishes it.
    assert_eq!(d.table().len(), 1);
    d.handle(
        Interface::Outside,
        &mut client(WEB, 1000, false, false),
        secs(2),
    );
    let (_, conn) = d.table().iter().next().unwrap();
    assert_eq!(
        (conn.state, conn.real),
        (ConnState::Established, real.into())
    );
    assert_eq!(d.counters().cluster_client_established, 1);

    let mut alone = Director::new(&plain, BindingTable::from_config(&plain), L2);
    syn_to(&mut alone, WEB, 1000, secs(1));
    assert_eq!(
        alone.handle(
            Interface::Inside,
            &mut server(addr(1, 80), 2000, false),
            secs(1)
        ),
        Verdict::Drop(DropReason::NoConnection)
    );
    alone.handle(
        Interface::Outside,
        &mut client(WEB, 1000, false, false),
        secs(2),
    );
    let (_, conn) = alone.table().iter().next().unwrap();
    assert_eq!(
        conn.state,
        ConnState::SynSent,
        "only a cluster believes the client's ACK"
    );
}

/// On a cluster a resent SYN is a resend to the same server, never a ditch: the SYN-ACKs go back through
/// another director, so their absence here says nothing about the server.
#[test]
fn cluster_never_ditches_on_resent_syns() {
    let mut config = config(1, 1, true, false);
    config.cluster = Some(crate::config::ClusterConfig {
        route_table: 100,
        drain_time: secs(10),
        consistent_policies: Vec::new(),
    });
    let mut d = Director::new(&config, BindingTable::from_config(&config), L2);
    let first = syn_to(&mut d, WEB, 1000, secs(1));
    for t in 2..8 {
        assert_eq!(syn_to(&mut d, WEB, 1000, secs(t)), first, "resend at {t} s");
    }
    assert!(d.reals().iter().all(|r| r.ditched_total == 0));
}

/// `[cluster]`: a client frame of a flow the router moved here, with no connection and no peer's record, is
/// placed by the port's policy when it is consistent (`[cluster] consistent_policies`), held in SYN_SENT
/// until the client's next frame, and counted; an RST, or a port whose policy is not consistent, is
/// dropped as before.
#[test]
fn cluster_places_moved_flows_by_a_consistent_policy() {
    let mut config = config(1, 1, true, false);
    let policy = BindingTable::from_config(&config).ports[0].policy.clone();
    config.cluster = Some(crate::config::ClusterConfig {
        route_table: 100,
        drain_time: secs(10),
        consistent_policies: Vec::new(),
    });
    let mut d = Director::new(&config, BindingTable::from_config(&config), L2);
    assert_eq!(
        d.handle(
            Interface::Outside,
            &mut client(WEB, 1000, false, false),
            secs(1)
        ),
        Verdict::Drop(DropReason::NoConnection),
        "not a consistent policy"
    );
    config.cluster.as_mut().unwrap().consistent_policies = vec![policy];
    d.set_limits(&config);
    assert_eq!(
        d.handle(
            Interface::Outside,
            &mut client(WEB, 1000, false, true),
            secs(1)
        ),
        Verdict::Drop(DropReason::NoConnection),
        "an RST is never placed"
    );
    let mut moved = client(WEB, 1000, false, false);
    assert_eq!(
        d.handle(Interface::Outside, &mut moved, secs(1)),
        Verdict::Forward(Interface::Inside)
    );
    assert_eq!(d.counters().cluster_moved_policy, 1);
    let (_, conn) = d.table().iter().next().unwrap();
    assert_eq!(conn.state, ConnState::SynSent, "held until confirmed");
    let real = conn.real;
    let p = SlicedPacket::from_ethernet(&moved).unwrap();
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        panic!("not IPv4");
    };
    assert_eq!(
        SocketAddr::from((ip.header().destination_addr(), 80)),
        real.into()
    );
    d.handle(
        Interface::Outside,
        &mut client(WEB, 1000, false, false),
        secs(2),
    );
    let (_, conn) = d.table().iter().next().unwrap();
    assert_eq!((conn.state, conn.real), (ConnState::Established, real));
    assert_eq!(d.counters().cluster_moved_policy, 1, "placed once");
    // A corrupted frame creates nothing.
    let mut bad = client(WEB, 1001, false, false);
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    let _ = d.handle(Interface::Outside, &mut bad, secs(3));
    assert_eq!(d.table().len(), 1);
}

/// A selector that always wants to be kept warm and records the keep-warm calls (connection, candidates).
struct Warm(std::sync::Arc<std::sync::Mutex<Vec<(crate::policy::NewConnection, usize)>>>);

impl Selector for Warm {
    fn select(
        &mut self,
        _conn: &crate::policy::NewConnection,
        _candidates: &[Candidate],
    ) -> crate::policy::Selection {
        crate::policy::Selection::Pick(0)
    }

    fn wants_warm(&self, _period: Duration) -> bool {
        true
    }

    fn keep_warm(&mut self, conn: &crate::policy::NewConnection, candidates: &[Candidate]) -> bool {
        self.0.lock().unwrap().push((*conn, candidates.len()));
        true
    }
}

/// Keeping the policies warm runs only within `KEEP_WARM_FOR` of the last connection a policy placed, every
/// `plugin_keep_warm`, with each port's warm-up connection and candidates, and never with
/// `plugin_keep_warm = "off"`.
#[test]
fn keep_warm_follows_the_last_connection() {
    let mut config = config(1, 1, true, false);
    let bindings = BindingTable::from_config(&config);
    let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let selectors = bindings
        .ports
        .iter()
        .map(|_| Box::new(Warm(std::sync::Arc::clone(&calls))) as Box<dyn Selector>)
        .collect();
    let mut d = Director::with_selectors(&config, bindings, selectors, L2);
    assert_eq!(d.upkeep(secs(1)), None, "no connection yet");
    syn_to(&mut d, WEB, 1000, secs(1));
    let period = crate::config::DEFAULT_PLUGIN_KEEP_WARM;
    assert_eq!(d.upkeep(secs(1)), Some(secs(1) + period));
    assert!(
        calls.lock().unwrap().is_empty(),
        "the connection's call just warmed it"
    );
    assert_eq!(d.upkeep(secs(1) + period), Some(secs(1) + 2 * period));
    {
        let calls = calls.lock().unwrap();
        assert_eq!(calls.len(), 2, "one per port: {calls:?}");
        let (conn, candidates) = calls[0];
        assert_eq!(
            (conn.client.port(), conn.client.ip().is_unspecified()),
            (0, true)
        );
        assert_eq!(
            (conn.virtual_addr, candidates),
            (SocketAddr::from((WEB, 80)), 3)
        );
    }
    assert_eq!(d.upkeep(secs(1) + crate::policy::KEEP_WARM_FOR), None);
    config.director.plugin_keep_warm = Duration::ZERO;
    d.set_limits(&config);
    syn_to(&mut d, WEB, 1001, secs(5));
    assert_eq!(d.upkeep(secs(5)), None, "off");
}
