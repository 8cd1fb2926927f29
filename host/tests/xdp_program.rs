//! The XDP offload program (`bpf/vipd_xdp.c`, as build.rs compiled it) run by the kernel on frames with
//! `BPF_PROG_TEST_RUN`: `bpf/test.py` feeds it hits in both directions and families, every kind of frame
//! it must leave to the libpcap path, every truncation, 1,000 random mutations of hits, and every frame of
//! the replay fixtures, and compares each verdict and output byte with a model of vipd's own rewrite.
//! Nothing is redirected that should not be, and the per-flow and per-CPU counters add up.

mod common;

use std::path::Path;

#[test]
fn program_verdicts_match_the_model_on_fuzzed_and_malformed_frames() {
    common::require_root();
    let object = concat!(env!("OUT_DIR"), "/vipd_xdp.o");
    assert!(
        std::fs::metadata(object).is_ok_and(|m| m.len() > 0),
        "build.rs did not compile the XDP program (is clang installed?)"
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bpf/test.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .env("VIPD_XDP_OBJ", object)
        .env(
            "VIPD_FIXTURES",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures"),
        )
        .output()
        .expect("python3 runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "{}",
        text.lines()
            .rev()
            .take(8)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains(" passed, 0 failed"), "{text}");
    assert!(!text.contains("no fixtures"), "{text}");
}
