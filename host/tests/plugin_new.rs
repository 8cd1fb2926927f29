//! `vipd plugin new NAME`: from nothing to a policy that passes `vipd plugin check` in one command and one
//! build. The generated project's native unit tests pass and its component is a valid selector plugin.

use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?}: {}\n{text}", out.status);
    text
}

#[test]
fn generated_policy_builds_and_passes_plugin_check() {
    let dir = tempfile::tempdir().unwrap();
    let vipd = env!("CARGO_BIN_EXE_vipd");
    let said = run(Command::new(vipd)
        .args(["plugin", "new", "my-policy", "--dir"])
        .arg(dir.path()));
    assert!(
        said.contains("cargo build --target wasm32-wasip2 --release"),
        "{said}"
    );
    let project = dir.path().join("my-policy");

    // The workspace's lock file pins the same dependency versions the shipped plugins build with; the
    // builds share a target folder across runs.
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::copy(workspace.join("Cargo.lock"), project.join("Cargo.lock")).unwrap();
    let target = workspace.join("target/plugin-new");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let tests = run(Command::new(&cargo)
        .current_dir(&project)
        .env("CARGO_TARGET_DIR", &target)
        .args(["test", "--quiet"]));
    assert!(tests.contains("test result: ok"), "{tests}");
    run(Command::new(&cargo)
        .current_dir(&project)
        .env("CARGO_TARGET_DIR", &target)
        .args(["build", "--quiet", "--target", "wasm32-wasip2", "--release"]));
    let wasm = target.join("wasm32-wasip2/release/my_policy.wasm");
    let check = run(Command::new(vipd).args(["plugin", "check"]).arg(&wasm));
    assert!(check.contains("world selector"), "{check}");

    // A second time: refused, nothing overwritten; a bad name: refused.
    let out = Command::new(vipd)
        .args(["plugin", "new", "my-policy", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists already"));
    let out = Command::new(vipd)
        .args(["plugin", "new", "My_Policy", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
}
