//! End to end: `/metrics` of the live director (promtool, a real Prometheus, exact counts) and the admin API
//! (status, drain, token, bad requests), on the patent's FIG. 3 in namespaces.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Fig3, Netns, Proc, TempDir, wait_for};
use serde_json::Value;

const ADMIN: &str = "http://127.0.0.1:9469";
const TOKEN: &str = "s3cret-token";

/// examples/fig3.toml with `extra` added to `[director]`.
fn config(dir: &TempDir, extra: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fig3.toml"),
    )
    .unwrap();
    let text = text.replacen("[director]\n", &format!("[director]\n{extra}\n"), 1);
    let path = dir.join("vipd.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// An HTTP request from inside `ns` with curl: (status, body).
fn api(
    ns: &Netns,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut args = vec![
        "-sS",
        "--max-time",
        "10",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
    ];
    if let Some(a) = &auth {
        args.extend(["-H", a.as_str()]);
    }
    if let Some(b) = body {
        args.extend(["-H", "Content-Type: application/json", "--data-raw", b]);
    }
    args.push(url);
    let out = ns.exec("curl", &args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The value of one series line `name{labels} value` in Prometheus text, 0 when absent.
fn series(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Starts the sites and vipd, and waits until the admin API answers and a VIP serves.
fn start(f: &Fig3, dir: &TempDir, extra: &str, token: Option<&str>) -> Proc {
    let cfg = config(dir, extra);
    let mut vipd = f.start_vipd(dir, &cfg, &[]);
    vipd.wait_log("metrics and admin API", Duration::from_secs(20));
    wait_for("the admin API", Duration::from_secs(10), || {
        api(&f.director, "GET", &format!("{ADMIN}/status"), token, None).0 == 200
    });
    // Neighbours resolved and serving: site 1 answers (no SYN of the measured requests waits for ARP).
    wait_for("site 1 serving", Duration::from_secs(20), || {
        vipd.assert_running();
        f.client
            .curl("http://192.0.2.1/", Duration::from_secs(2))
            .status
            == 200
    });
    vipd
}

fn metrics(f: &Fig3, token: Option<&str>) -> String {
    let (code, text) = api(&f.director, "GET", &format!("{ADMIN}/metrics"), token, None);
    assert_eq!(code, 200, "{text}");
    text
}

/// promtool accepts the live /metrics; N requests to site 2 give exactly N new connections on the right
/// labels; a real Prometheus scraping vipd returns the same numbers through its query API.
#[test]
fn metrics_count_connections_and_prometheus_scrapes() {
    let f = Fig3::new();
    let _sites = f.start_sites();
    let dir = TempDir::new("vipd-metrics");
    let mut vipd = start(&f, &dir, "", None);

    // A real Prometheus in the director namespace, scraping vipd every second.
    let prom_cfg = dir.join("prometheus.yml");
    std::fs::write(
        &prom_cfg,
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: vipd\n    static_configs:\n      - targets: ['127.0.0.1:9469']\n",
    )
    .unwrap();
    let storage = dir.join("tsdb");
    let _prometheus = f.director.spawn(
        &dir,
        "prometheus",
        "prometheus",
        &[
            &format!("--config.file={}", prom_cfg.display()),
            &format!("--storage.tsdb.path={}", storage.display()),
            "--web.listen-address=127.0.0.1:9090",
        ],
    );

    const N: u64 = 6;
    let before = metrics(&f, None);
    let label = |real: &str| {
        format!(r#"vipd_connections_total{{virtual="site2",port="80/tcp",real="{real}"}}"#)
    };
    assert_eq!(series(&before, &label("host-a")), 0.0, "{before}");
    for _ in 0..N {
        let c = f.client.curl("http://192.0.2.2/", Duration::from_secs(5));
        assert_eq!(c.status, 200, "{c:?}");
    }
    let mut text = String::new();
    wait_for(
        "the snapshot with the new connections",
        Duration::from_secs(5),
        || {
            text = metrics(&f, None);
            series(&text, &label("host-a")) + series(&text, &label("host-c")) >= N as f64
        },
    );
    // Round robin over two servers: exactly N/2 each, nothing on site 1 or 3 from these.
    assert_eq!(series(&text, &label("host-a")), (N / 2) as f64, "{text}");
    assert_eq!(series(&text, &label("host-c")), (N / 2) as f64, "{text}");
    assert_eq!(
        series(
            &text,
            r#"vipd_connections_rejected_total{virtual="site2",reason="no_server"}"#
        ),
        0.0
    );
    assert_eq!(
        series(&text, r#"vipd_real_server_state{real="host-a",state="up"}"#),
        1.0
    );
    assert!(series(&text, "vipd_conntrack_capacity") > 0.0);
    assert!(
        series(
            &text,
            r#"vipd_packets_total{interface="outside",direction="in",result="forwarded"}"#
        ) >= 3.0 * N as f64,
        "{text}"
    );
    assert_eq!(series(&text, r#"vipd_build_info{version="0.1.0"}"#), 1.0);
    assert_eq!(
        series(&text, r#"vipd_config_reloads_total{result="ok"}"#),
        0.0
    );
    assert!(
        text.contains(r#"vipd_pcap_dropped_total{interface="outside"}"#),
        "{text}"
    );
    // Every frame handled was sent: nothing refused by the kernel, nothing shed by the sender thread.
    for iface in ["outside", "inside"] {
        for reason in ["error", "shed"] {
            let name =
                format!(r#"vipd_send_failures_total{{interface="{iface}",reason="{reason}"}}"#);
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{name} "))),
                "{name} missing:\n{text}"
            );
            assert_eq!(series(&text, &name), 0.0, "{name}\n{text}");
        }
    }

    // promtool lints the exposition format (names, HELP, TYPE, units).
    let file = dir.join("metrics.txt");
    std::fs::write(&file, &text).unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("promtool check metrics < {}", file.display()))
        .output()
        .expect("promtool (Debian package prometheus)");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Prometheus has scraped vipd: the query API returns the exact counts.
    let query = |q: &str| -> Vec<Value> {
        let (code, body) = api(
            &f.director,
            "GET",
            &format!("http://127.0.0.1:9090/api/v1/query?query={q}"),
            None,
            None,
        );
        if code != 200 {
            return Vec::new();
        }
        json(&body)["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let mut result = Vec::new();
    wait_for("Prometheus to scrape vipd", Duration::from_secs(60), || {
        vipd.assert_running();
        result = query("vipd_connections_total%7Bvirtual%3D%22site2%22%7D");
        result.len() == 2
            && result
                .iter()
                .all(|r| r["value"][1].as_str() == Some(&(N / 2).to_string()))
    });
    let mut reals: Vec<&str> = result
        .iter()
        .map(|r| r["metric"]["real"].as_str().unwrap())
        .collect();
    reals.sort();
    assert_eq!(reals, ["host-a", "host-c"]);
    let up = query("up%7Bjob%3D%22vipd%22%7D");
    assert_eq!(up[0]["value"][1], "1", "{up:?}");
    let states = query("vipd_real_server_state%3D%3D1");
    assert_eq!(
        states.len(),
        6,
        "one current state per real server: {states:?}"
    );
    vipd.assert_running();
}

/// The admin API with a token: 401 without it (nothing changes), status as configured, bad requests get
/// 4xx, drain via the CLI moves new connections off the server, enable brings them back.
#[test]
fn admin_api_status_drain_token_and_bad_requests() {
    let f = Fig3::new();
    let _sites = f.start_sites();
    let dir = TempDir::new("vipd-admin");
    let _vipd = start(&f, &dir, &format!("admin_token = \"{TOKEN}\""), Some(TOKEN));
    let d = &f.director;
    let url = |p: &str| format!("{ADMIN}{p}");
    let state = |name: &str| -> String {
        let (_, body) = api(d, "GET", &url("/status"), Some(TOKEN), None);
        let v = json(&body);
        v["reals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()["state"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    // Token enforced everywhere; a refused drain changes nothing.
    for (method, path, token) in [
        ("GET", "/status", None),
        ("GET", "/metrics", None),
        ("GET", "/metrics", Some("wrong")),
        ("POST", "/reals/host-a/drain", None),
        ("POST", "/reals/host-a/drain", Some("wrong")),
    ] {
        let (code, body) = api(d, method, &url(path), token, None);
        assert_eq!(code, 401, "{method} {path} with {token:?}: {body}");
    }
    assert_eq!(state("host-a"), "up");

    // Status shows what the config says.
    let (code, body) = api(d, "GET", &url("/status"), Some(TOKEN), None);
    assert_eq!(code, 200);
    let v = json(&body);
    let vms: Vec<&str> = v["virtual_machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|vm| vm["name"].as_str().unwrap())
        .collect();
    assert_eq!(vms, ["site1", "site2", "site3", "site1-v6"]);
    let site1 = &v["virtual_machines"][0];
    assert_eq!(site1["address"], "192.0.2.1");
    let port80 = &site1["ports"][0];
    assert_eq!(
        (&port80["port"], &port80["protocol"]),
        (&Value::from(80), &Value::from("tcp"))
    );
    let bound: Vec<&str> = port80["bindings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["address"].as_str().unwrap())
        .collect();
    assert_eq!(
        bound,
        ["10.20.0.10:8001", "10.20.0.11:80", "10.20.0.12:9001"]
    );
    assert_eq!(site1["ports"][1]["protocol"], "udp");
    let reals: Vec<&str> = v["reals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        reals,
        [
            "host-a",
            "host-a-site3",
            "host-b",
            "host-c",
            "host-a6",
            "host-c6"
        ]
    );
    assert!(
        v["reals"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["state"] == "up")
    );

    // Bad requests: clear 4xx, nothing changed.
    for (method, path, body, want) in [
        ("POST", "/reals/no-such-host/drain", None, 404),
        ("POST", "/reals/host-a/explode", None, 404),
        ("POST", "/reals/host-a/drain", Some("{not json"), 400),
        ("POST", "/reals/host-a/drain", Some("[1,2]"), 400),
        ("GET", "/reals/host-a/drain", None, 405),
        ("POST", "/metrics", None, 405),
        ("DELETE", "/status", None, 405),
        ("GET", "/connections?limit=0", None, 400),
        ("GET", "/connections?limit=20000", None, 400),
        ("GET", "/connections?virtual=nowhere", None, 404),
        ("GET", "/nothing-here", None, 404),
    ] {
        let (code, text) = api(d, method, &url(path), Some(TOKEN), body);
        assert_eq!(code, want, "{method} {path} {body:?}: {text}");
        assert!(json(&text)["error"].is_string(), "{text}");
    }
    assert_eq!(state("host-a"), "up");

    // `vipd status` prints the table.
    let out = d.exec_ok(env!("CARGO_BIN_EXE_vipd"), &["status", "--token", TOKEN]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("TCP  192.0.2.2:80"), "{table}");
    assert!(table.contains("  -> 10.20.0.12:9002"), "{table}");

    // Drain host-a through the CLI: site 2's new connections all go to host C.
    d.exec_ok(
        env!("CARGO_BIN_EXE_vipd"),
        &["real", "drain", "host-a", "--token", TOKEN],
    );
    assert_eq!(state("host-a"), "draining");
    for _ in 0..4 {
        let c = f.client.curl("http://192.0.2.2/", Duration::from_secs(5));
        assert_eq!(
            (c.status, c.body.trim()),
            (200, "site 2 on host C"),
            "{c:?}"
        );
    }
    let text = metrics(&f, Some(TOKEN));
    assert_eq!(
        series(
            &text,
            r#"vipd_real_server_state{real="host-a",state="draining"}"#
        ),
        1.0
    );

    // The flow dump sees those connections, bounded by limit.
    let (code, body) = api(
        d,
        "GET",
        &url("/connections?virtual=site2&limit=2"),
        Some(TOKEN),
        None,
    );
    assert_eq!(code, 200, "{body}");
    let rows = json(&body)["connections"].as_array().cloned().unwrap();
    assert_eq!(rows.len(), 2, "{body}");
    assert!(
        rows.iter()
            .all(|r| r["virtual"] == "site2" && r["real"] == "host-c"),
        "{body}"
    );

    // Enable: host A takes connections again.
    let (code, body) = api(
        d,
        "POST",
        &url("/reals/host-a/enable"),
        Some(TOKEN),
        Some("{}"),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(state("host-a"), "up");
    let hosts: Vec<String> = (0..4)
        .map(|_| {
            f.client
                .curl("http://192.0.2.2/", Duration::from_secs(5))
                .body
        })
        .collect();
    assert!(hosts.iter().any(|b| b.contains("host A")), "{hosts:?}");
}
