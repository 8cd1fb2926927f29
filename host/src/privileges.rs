//! Which Linux capabilities `vipd run` needs, and a clear refusal when one is missing.
//!
//! vipd does not need to be root. What it does that the kernel guards:
//! - **`CAP_NET_RAW`**: opening the packet sockets (libpcap) that capture and send frames on the outside
//!   and inside interfaces. Always needed.
//! - **`CAP_NET_ADMIN`**: changing interface settings: `--fix-offloads` turns GRO/GSO/TSO and checksum
//!   offloads off with ethtool ioctls. Reading them (the start-up check) needs nothing, so the shipped
//!   systemd unit grants only `CAP_NET_RAW`; add `CAP_NET_ADMIN` to it when you use `--fix-offloads`.
//!
//! Everything else (the config and plugin folders, the admin listener on a port above 1023, `/proc/sys`
//! reads) needs only file permissions. The check reads the effective set from `/proc/self/status`, as
//! `capsh --print` does; when it cannot be read the check passes and the kernel has the last word.

use anyhow::{Result, bail};

/// A capability vipd may need (the numbers of `linux/capability.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capability {
    NetAdmin = 12,
    NetRaw = 13,
    /// Loading BPF programs and maps (Linux 5.8).
    Bpf = 39,
}

impl Capability {
    pub fn name(self) -> &'static str {
        match self {
            Capability::NetAdmin => "CAP_NET_ADMIN",
            Capability::NetRaw => "CAP_NET_RAW",
            Capability::Bpf => "CAP_BPF",
        }
    }
}

/// The effective capability set of this process, if `/proc/self/status` says.
pub fn effective() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_effective(&status)
}

fn parse_effective(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Refuses with a message naming `cap` and `why` when this process does not hold it.
pub fn require(cap: Capability, why: &str) -> Result<()> {
    require_in(effective(), cap, why)
}

fn require_in(effective: Option<u64>, cap: Capability, why: &str) -> Result<()> {
    match effective {
        Some(set) if set & (1 << cap as u32) == 0 => bail!(
            "{} is missing: vipd needs it {why}. Run as root, or grant it: the systemd unit's \
             AmbientCapabilities=, `setpriv --ambient-caps +{}`, or `setcap {}+ep` on the binary",
            cap.name(),
            cap.name().trim_start_matches("CAP_").to_lowercase(),
            cap.name().to_lowercase(),
        ),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    /// The effective set comes from the CapEff line; a missing capability is named with the reason.
    fn missing_capability_is_named() {
        let status = "Name:\tvipd\nCapInh:\t0000000000000000\nCapEff:\t0000000000002000\n";
        let set = parse_effective(status);
        assert_eq!(set, Some(1 << 13));
        assert!(require_in(set, Capability::NetRaw, "to capture").is_ok());
        let e = require_in(set, Capability::NetAdmin, "to turn offloads off").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("CAP_NET_ADMIN is missing: vipd needs it to turn offloads off"),
            "{msg}"
        );
        assert!(msg.contains("--ambient-caps +net_admin"), "{msg}");
        assert!(
            require_in(None, Capability::NetRaw, "x").is_ok(),
            "unknown: the kernel decides"
        );
    }
}
