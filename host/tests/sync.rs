//! Connection sync between two real directors: FIG. 3 with `vipd run` as the active director, and a second
//! `vipd run` as standby in a namespace of its own, joined to the active one by a veth for sync only (its own
//! outside and inside lead nowhere: sync alone is under test here; the pair on shared segments under
//! keepalived is host/tests/ha.rs). The standby's table must follow the active's, and datagrams with another
//! key, replayed or random must install nothing and be counted.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use common::*;
use vipd::conntable::ConnState;
use vipd::sync::wire::{self, Header, Key, Kind, Record};
use vipd::wire::{MacAddr, Protocol};

const KEY: &[u8] = b"a shared secret of more than 16 bytes";
const ACTIVE_SYNC: &str = "10.99.0.1:8848";
const STANDBY_SYNC: &str = "10.99.0.2:8848";

/// examples/fig3.toml with `[sync]` added, written into `dir` with the key file beside it.
fn config(dir: &TempDir, name: &str, listen: &str, peer: &str, role: &str) -> std::path::PathBuf {
    let fig3 = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fig3.toml"),
    )
    .unwrap();
    std::fs::write(dir.join("sync.key"), KEY).unwrap();
    let path = dir.join(&format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "{fig3}\n[sync]\nlisten = \"{listen}\"\npeers = [\"{peer}\"]\nkey_file = \"sync.key\"\nrole = \"{role}\"\n"
        ),
    )
    .unwrap();
    path
}

/// (client, virtual, real) of every connection the director in `ns` lists.
fn connections(ns: &Netns) -> Vec<(String, String, String)> {
    let body = admin_get(ns, "/connections?limit=10000");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let mut rows: Vec<_> = v["connections"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|c| c["state"] == "established")
                .map(|c| {
                    let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
                    (s("client"), s("virtual_address"), s("real_address"))
                })
                .collect()
        })
        .unwrap_or_default();
    rows.sort();
    rows
}

fn synced(ns: &Netns) -> bool {
    let v: serde_json::Value = serde_json::from_str(&admin_get(ns, "/status")).unwrap_or_default();
    v["sync"]["synced"] == true
}

#[test]
fn standby_follows_the_active_table_and_refuses_forged_datagrams() {
    let fig = Fig3::new();
    let sites = fig.start_sites();
    let big: String = (0..65536).map(|i| format!("{i:063}\n")).collect();
    for site in &sites {
        std::fs::create_dir_all(site.dir.join("files")).unwrap();
        std::fs::write(site.dir.join("files/big"), &big).unwrap();
    }

    // The standby: its own namespace, interfaces to a namespace of their own, and the sync link.
    let standby = Netns::new("standby");
    let void = Netns::new("void");
    veth(&standby, "vipd-out", &void, "o");
    veth(&standby, "vipd-in", &void, "i");
    veth(&fig.director, "sync", &standby, "sync");
    fig.director.addr("sync", "10.99.0.1/30");
    standby.addr("sync", "10.99.0.2/30");

    let dir = TempDir::new("vipd-sync");
    let standby_config = config(&dir, "standby", STANDBY_SYNC, ACTIVE_SYNC, "standby");
    let active_config = config(&dir, "active", ACTIVE_SYNC, STANDBY_SYNC, "active");
    let mut standby_vipd = standby.spawn(
        &dir,
        "vipd-standby",
        env!("CARGO_BIN_EXE_vipd"),
        &["run", "--config", standby_config.to_str().unwrap()],
    );
    standby_vipd.wait_log("data path running", Duration::from_secs(20));
    let mut active = fig.start_vipd(&dir, &active_config, &[]);
    active.wait_log("data path running", Duration::from_secs(20));
    wait_for("the standby synced", Duration::from_secs(10), || {
        standby_vipd.assert_running();
        synced(&standby)
    });
    wait_for("the VIP answers", Duration::from_secs(20), || {
        fig.client
            .curl("http://192.0.2.1/", Duration::from_secs(2))
            .status
            == 200
    });

    // Connections that stay established: slow downloads.
    let held: Vec<Proc> = (0..6)
        .map(|i| {
            fig.client.spawn(
                &dir,
                &format!("held-{i}"),
                "curl",
                &[
                    "-sS",
                    "--limit-rate",
                    "16k",
                    "-o",
                    "/dev/null",
                    "http://192.0.2.1/files/big",
                ],
            )
        })
        .collect();
    wait_for(
        "six established connections",
        Duration::from_secs(10),
        || connections(&fig.director).len() >= 6,
    );
    let on_active = connections(&fig.director);
    wait_for(
        "the standby's table to match the active's",
        Duration::from_secs(5),
        || connections(&standby) == on_active,
    );
    assert_eq!(connections(&standby), on_active);
    drop(held);

    // Forged datagrams to the standby's sync port, from the active's namespace: a record under another key,
    // the same authentic datagram twice (the second is a replay), and random bytes. Then an authentic
    // marker record: datagrams are handled in order, so once the marker is installed the forged record
    // would have been too, had it been accepted.
    let record = |client: &str| Record {
        protocol: Protocol::Tcp,
        state: ConnState::Established,
        client: client.parse::<SocketAddr>().unwrap().into(),
        virtual_addr: "192.0.2.1:80".parse::<SocketAddr>().unwrap().into(),
        real: "10.20.0.10:8001".parse::<SocketAddr>().unwrap().into(),
        real_name: wire::name_id("host-a"),
        client_mac: MacAddr([2, 0, 0, 0, 1, 1]),
        idle_ms: 60_000,
        syn_resends: 0,
        fin_seen: 0,
        delete: false,
    };
    const FORGED: &str = "198.51.100.99:4444";
    const MARKER: &str = "198.51.100.98:4444";
    fig.director.run_in(|| {
        let socket = UdpSocket::bind("10.99.0.1:0").unwrap();
        let to: SocketAddr = STANDBY_SYNC.parse().unwrap();
        let mut buf = [0u8; 512];
        let header = |sender, sequence| Header {
            kind: Kind::Records,
            sender,
            sequence,
        };
        let wrong = Key::new(b"another key of 16 bytes+");
        let n = wire::encode(&header(7, 1), &[record(FORGED)], &wrong, &mut buf).unwrap();
        socket.send_to(&buf[..n], to).unwrap();
        let n = wire::encode(&header(8, 1 << 40), &[], &Key::new(KEY), &mut buf).unwrap();
        socket.send_to(&buf[..n], to).unwrap();
        socket.send_to(&buf[..n], to).unwrap();
        socket
            .send_to(b"random bytes, not a sync datagram", to)
            .unwrap();
        let n = wire::encode(&header(9, 1), &[record(MARKER)], &Key::new(KEY), &mut buf).unwrap();
        socket.send_to(&buf[..n], to).unwrap();
    });
    let clients = |ns: &Netns| -> Vec<String> {
        let v: serde_json::Value =
            serde_json::from_str(&admin_get(ns, "/connections?limit=10000")).unwrap_or_default();
        v["connections"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| c["client"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    wait_for("the marker installed", Duration::from_secs(5), || {
        clients(&standby).iter().any(|c| c == MARKER)
    });
    assert!(
        !clients(&standby).iter().any(|c| c == FORGED),
        "a record under another key was installed"
    );
    wait_for(
        "bad_tag, replay and malformed counted",
        Duration::from_secs(5),
        || {
            let m = Metrics::scrape(&standby);
            ["bad_tag", "replay", "malformed"]
                .iter()
                .all(|&reason| m.get("vipd_sync_dropped_total", &[("reason", reason)]) >= 1.0)
        },
    );
    standby_vipd.assert_running();
    active.assert_running();
}
