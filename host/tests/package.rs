//! The Debian package (issue 18): built with cargo-deb from the binary under test, inspected (files,
//! conffiles, dependencies), then installed for real: the `vipd` user exists, the unit passes
//! `systemd-analyze verify`, the installed vipd runs, and a purge removes it all.
//!
//! Needs root and cargo-deb (`make test` installs it). The install step is skipped when a vipd package is
//! already installed on this machine: a test must not replace or purge an operator's real one.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn workspace() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What `make deb` does, with the test's own (debug) binary: man pages, completions, cargo deb.
fn build_package(out: &Path) -> PathBuf {
    let root = workspace();
    let assets = root.join("target/deb-assets");
    let vipd = env!("CARGO_BIN_EXE_vipd");
    let _ = std::fs::remove_dir_all(&assets);
    std::fs::create_dir_all(assets.join("completions")).unwrap();
    ok(Command::new(vipd)
        .args(["man", "--out"])
        .arg(assets.join("man")));
    for (shell, file) in [
        ("bash", "vipd.bash"),
        ("zsh", "_vipd"),
        ("fish", "vipd.fish"),
    ] {
        let script = ok(Command::new(vipd).args(["completions", shell]));
        std::fs::write(assets.join("completions").join(file), script).unwrap();
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    ok(Command::new(cargo)
        .current_dir(&root)
        .args([
            "deb",
            "-p",
            "vipd",
            "--no-build",
            "--profile",
            "dev",
            "--output",
        ])
        .arg(out));
    std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("cargo deb wrote no .deb")
}

#[test]
fn package_installs_a_hardened_service() {
    require_root();
    let dir = TempDir::new("vipd-deb");
    let deb = build_package(&dir.0);

    let info = ok(Command::new("dpkg-deb").arg("--info").arg(&deb));
    let depends = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .unwrap_or_else(|| panic!("no Depends:\n{info}"));
    assert!(depends.contains("libpcap0.8"), "{depends}");
    let conffiles = ok(Command::new("dpkg-deb")
        .arg("--info")
        .arg(&deb)
        .arg("conffiles"));
    assert_eq!(conffiles.trim(), "/etc/vipd/vipd.toml");

    let contents = ok(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    let files: Vec<&str> = contents
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .collect();
    for want in [
        "./usr/bin/vipd",
        "./usr/lib/systemd/system/vipd.service",
        "./etc/vipd/vipd.toml",
        "./usr/lib/vipd/plugins/round-robin.wasm",
        "./usr/lib/vipd/plugins/least-connections.wasm",
        "./usr/share/man/man8/vipd.8.gz",
        "./usr/share/man/man8/vipd-run.8.gz",
        "./usr/share/bash-completion/completions/vipd",
        "./usr/share/doc/vipd/operations.md",
    ] {
        assert!(
            files.contains(&want),
            "{want} not in the package:\n{contents}"
        );
    }

    if Command::new("dpkg")
        .args(["-s", "vipd"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("a vipd package is installed on this machine: install step skipped");
        return;
    }
    ok(Command::new("dpkg").arg("-i").arg(&deb));
    let installed = std::panic::catch_unwind(|| {
        let user = ok(Command::new("getent").args(["passwd", "vipd"]));
        assert!(user.contains(":/nonexistent:"), "{user}");
        ok(Command::new("systemd-analyze").args(["verify", "vipd.service"]));
        let security = ok(Command::new("systemd-analyze").args([
            "security",
            "--offline=true",
            "vipd.service",
        ]));
        let exposure = security
            .lines()
            .find_map(|l| l.split("Overall exposure level for vipd.service: ").nth(1))
            .unwrap_or_else(|| panic!("{security}"));
        eprintln!("systemd-analyze security: exposure {exposure}");
        let score: f64 = exposure.split_whitespace().next().unwrap().parse().unwrap();
        assert!(score < 3.0, "exposure {exposure}");
        // The shipped config is valid and readable by the service user.
        ok(Command::new("setpriv").args([
            "--reuid=vipd",
            "--regid=vipd",
            "--clear-groups",
            "/usr/bin/vipd",
            "check",
            "--config",
            "/etc/vipd/vipd.toml",
        ]));
    });
    ok(Command::new("dpkg").args(["--purge", "vipd"]));
    if let Err(e) = installed {
        std::panic::resume_unwind(e);
    }
    assert!(!Path::new("/usr/bin/vipd").exists());
    assert!(!Path::new("/etc/vipd/vipd.toml").exists());
    let gone = Command::new("getent")
        .args(["passwd", "vipd"])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "the vipd user outlived the purge");
}
