//! `vipd check --config FILE` run as a user would: exit codes, summary and problem lines.

mod common;

use std::path::PathBuf;
use std::process::Command;

fn vipd_check(config: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vipd"))
        .args(["check", "--config"])
        .arg(config)
        .output()
        .expect("vipd runs")
}

fn write(name: &str, text: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, text).expect("temp file written");
    path
}

/// The bundled FIG. 3 example passes with a one-line summary and exit 0.
#[test]
fn good_config_exits_zero() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/fig3.toml");
    let out = vipd_check(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ok: 4 virtual machines, 5 ports, 6 real servers"),
        "{stdout}"
    );
}

/// A broken config exits 1 and names file, line, column and key for every problem on stderr.
#[test]
fn bad_config_exits_one_with_every_problem() {
    let path = write(
        "check-bad.toml",
        r#"[director]
outside = "eth0"
inside = "eth1"

[[real]]
name = "host-a"
address = "10.0.0.1"
backup = "host-z"

[[virtual]]
name = "site1"
address = "192.0.2.1"
  [[virtual.port]]
  port = 80
  bind = ["host-a", "ghost:8080"]
"#,
    );
    let out = vipd_check(&path);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let file = path.display().to_string();
    assert_eq!(
        lines,
        [
            format!("{file}:8:10: real[0].backup: \"host-z\" is not a defined real server"),
            format!(
                "{file}:15:21: virtual[0].port[0].bind[1]: \"ghost\" is not a defined real server"
            ),
        ],
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

/// A syntax error exits 1 with its line.
#[test]
fn syntax_error_exits_one() {
    let path = write(
        "check-syntax.toml",
        "[director]\noutside = \"eth0\ninside = \"eth1\"\n",
    );
    let out = vipd_check(&path);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!("{}:2:", path.display())),
        "{stderr}"
    );
}

/// `vipd check` assembles the config as `vipd run` does: a policy that is neither built in nor a plugin
/// in the config's plugins folder is refused (exit 1, naming the file, port and name), and the policy of
/// every port is listed when it passes.
#[test]
fn unknown_policy_is_refused_like_run_refuses_it() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("check-policy");
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugins folder");
    let config = |policy: &str| {
        let path = dir.join(format!("{policy}.toml"));
        std::fs::write(
            &path,
            format!(
                "[director]\noutside = \"o\"\ninside = \"i\"\nplugins = \"plugins\"\n\
                 [[real]]\nname = \"a\"\naddress = \"10.20.0.10\"\n\
                 [[virtual]]\nname = \"web\"\naddress = \"192.0.2.1\"\nbind = [\"a\"]\n\
                 [[virtual.port]]\nport = 80\npolicy = \"{policy}\"\n"
            ),
        )
        .expect("config written");
        path
    };
    let out = vipd_check(&config("no-such-policy"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no-such-policy.toml")
            && stderr.contains("port 80")
            && stderr.contains("policy \"no-such-policy\" is no built-in"),
        "{stderr}"
    );
    let out = vipd_check(&config("round-robin"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("web 192.0.2.1:80/tcp: policy round-robin (built-in)"),
        "{stdout}"
    );
}

/// A plugin built against vipd:policy@0.1.0 (the fixture `testing/v0-1.wasm`) still serves an IPv4 virtual
/// machine, and `vipd check` refuses it for an IPv6 one, naming the file, the interface and what to do.
#[test]
fn old_interface_plugin_is_refused_for_ipv6_only() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("check-v0-1");
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugins folder");
    std::fs::copy(
        common::built_plugins().join("testing/v0-1.wasm"),
        plugins.join("old.wasm"),
    )
    .expect("fixture copied");
    let config = |name: &str, real: &str, vip: &str| {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "[director]\noutside = \"o\"\ninside = \"i\"\nplugins = \"plugins\"\n\
                 [[real]]\nname = \"a\"\naddress = \"{real}\"\n\
                 [[virtual]]\nname = \"web\"\naddress = \"{vip}\"\nbind = [\"a\"]\npolicy = \"old\"\n\
                 [[virtual.port]]\nport = 80\n"
            ),
        )
        .expect("config written");
        path
    };
    let out = vipd_check(&config("v4", "10.20.0.10", "192.0.2.1"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = vipd_check(&config("v6", "2001:db8:1::10", "2001:db8:f::1"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("old.wasm implements vipd:policy@0.1.0, which has IPv4 addresses only")
            && stderr.contains("2001:db8:f::1")
            && stderr.contains("rebuild it against the 0.2.0 SDK"),
        "{stderr}"
    );
}

/// The shipped cluster and pair configs pass `vipd check` without warnings; a cluster port whose policy is
/// round-robin (not consistent across directors) is warned about, and so is a cluster director made a
/// standby.
#[test]
fn shipped_ha_and_ecmp_configs_pass_and_cluster_warnings_are_printed() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let key = write("sync.key", "a shared secret of 32 bytes.....");
    let with_key = |from: &str, name: &str, edit: &dyn Fn(String) -> String| {
        let text = std::fs::read_to_string(examples.join(from)).unwrap();
        let text = edit(
            text.replace(
                "key_file = \"sync.key\"",
                &format!("key_file = \"{}\"", key.display()),
            )
            .replace(
                "plugins = \"/usr/lib/vipd/plugins\"",
                &format!(
                    "plugins = {:?}",
                    common::built_plugins().display().to_string()
                ),
            ),
        );
        write(name, &text)
    };
    for (from, name) in [
        ("ha/vipd-a.toml", "ha-a.toml"),
        ("ha/vipd-b.toml", "ha-b.toml"),
        ("ecmp/vipd.toml", "ecmp.toml"),
    ] {
        let out = vipd_check(&with_key(from, name, &|t| t));
        assert!(
            out.status.success(),
            "{from}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!stdout.contains("warning"), "{from}: {stdout}");
    }
    let out = vipd_check(&with_key("ecmp/vipd.toml", "ecmp-rr.toml", &|t| {
        t.replace("policy = \"maglev\"", "policy = \"round-robin\"")
            .replace("policy_args = { key = \"connection\" }", "")
    }));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && stdout.contains(
                "policy round-robin on a cluster is not in [cluster] consistent_policies"
            ),
        "{stdout}"
    );
    let out = vipd_check(&with_key("ecmp/vipd.toml", "ecmp-standby.toml", &|t| {
        t.replace("role = \"active\"", "role = \"standby\"")
    }));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("[cluster] with [sync] role \"standby\""),
        "{stdout}"
    );
}
