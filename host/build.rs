//! Compiles the XDP offload program (`bpf/vipd_xdp.c`, `[director] offload = "xdp"`) with clang into
//! `$OUT_DIR/vipd_xdp.o`, which `src/offload.rs` embeds. Nothing prebuilt is in the repository.
//!
//! Without clang (or the kernel and libbpf headers: Debian's `clang`, `libbpf-dev`, `linux-libc-dev`) the
//! object is left empty and a warning says why: vipd builds and runs as before, and `offload = "xdp"` is
//! refused at start with that reason. `make test` installs the packages, so CI always builds the program.

use std::path::PathBuf;
use std::process::Command;

const SOURCE: &str = "bpf/vipd_xdp.c";

fn main() {
    println!("cargo::rerun-if-changed={SOURCE}");
    println!("cargo::rerun-if-env-changed=CLANG");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out.join("vipd_xdp.o");
    // Why the object is empty; empty when it was built.
    let missing = out.join("vipd_xdp.missing");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    // Debian keeps <asm/types.h> under the multiarch folder, which `clang -target bpf` does not search.
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = format!("/usr/include/{arch}-linux-gnu");
    let result = Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Wextra", "-Werror", "-target", "bpf"])
        .arg(format!("-I{multiarch}"))
        .arg("-c")
        .arg(SOURCE)
        .arg("-o")
        .arg(&object)
        .output();
    let why = match result {
        Ok(o) if o.status.success() => {
            std::fs::write(&missing, b"").expect("OUT_DIR is writable");
            return;
        }
        Ok(o) => format!(
            "`{clang}` could not compile {SOURCE}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => {
            format!("`{clang}` could not be run ({e}); install Debian's clang and libbpf-dev")
        }
    };
    println!(
        "cargo::warning=the XDP offload is not built: {}",
        why.lines().next().unwrap_or("")
    );
    std::fs::write(&object, b"").expect("OUT_DIR is writable");
    std::fs::write(&missing, why).expect("OUT_DIR is writable");
}
