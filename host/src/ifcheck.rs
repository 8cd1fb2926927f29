//! Start-up checks of the director's interfaces, before any frame is captured.
//!
//! An interface must exist and be administratively up. Its receive offloads must be off: with GRO or LRO
//! the capture sees super-frames larger than the MTU, and with checksum offload frames whose checksums are
//! unfinished; GSO/TSO and tx checksumming make the same trouble on the peer, so they are checked too (turn
//! them off on the peers yourself: the director cannot see them). [`check`] refuses with the exact
//! `ethtool -K` command, or with [`Offloads::Disable`] turns them off itself through the same ioctls
//! `ethtool` uses. [`forwarding_enabled`] tells whether the kernel would forward a second copy of what we
//! forward. Reads `/sys/class/net`, `/proc/sys` and `SIOCETHTOOL`; no subprocess.

use std::ffi::CStr;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use anyhow::{Context, bail};

use crate::wire::MacAddr;

/// `SIOCETHTOOL` from `<linux/sockios.h>`.
const SIOCETHTOOL: libc::c_ulong = 0x8946;
/// `ETH_FLAG_LRO` in the `ETHTOOL_GFLAGS` word.
const ETH_FLAG_LRO: u32 = 1 << 15;
const ETHTOOL_GFLAGS: u32 = 0x25;
const ETHTOOL_SFLAGS: u32 = 0x26;

/// `IFF_UP` in `/sys/class/net/DEV/flags`.
const IFF_UP: u32 = 0x1;

/// One offload feature: its `ethtool -K` name and its get/set commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offload {
    /// The name `ethtool -K` takes.
    pub name: &'static str,
    get: u32,
    set: u32,
}

/// The offloads that must be off, in the order of the `ethtool -K` command we print.
pub const OFFLOADS: [Offload; 6] = [
    Offload {
        name: "gro",
        get: 0x2b,
        set: 0x2c,
    },
    Offload {
        name: "lro",
        get: ETHTOOL_GFLAGS,
        set: ETHTOOL_SFLAGS,
    },
    Offload {
        name: "gso",
        get: 0x23,
        set: 0x24,
    },
    Offload {
        name: "tso",
        get: 0x1e,
        set: 0x1f,
    },
    Offload {
        name: "rx",
        get: 0x14,
        set: 0x15,
    },
    Offload {
        name: "tx",
        get: 0x16,
        set: 0x17,
    },
];

/// What [`check`] does about offloads that are on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offloads {
    /// Refuse to start, naming the `ethtool -K` command.
    Refuse,
    /// Turn them off (the `--fix-offloads` switch).
    Disable,
}

/// What the director needs to know about an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceInfo {
    /// The interface name.
    pub name: String,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// `/sys/class/net/DEV/operstate`: `up`, `down` (no carrier, e.g. veth peer down), `unknown`, ...
    pub operstate: String,
    /// Its MAC address: the source of every frame the director sends from it.
    pub mac: MacAddr,
    /// Its first IPv4 address, if any (the inside interface uses it as the source of ARP requests).
    pub ipv4: Option<Ipv4Addr>,
    /// Its MTU.
    pub mtu: usize,
    /// The offloads (by [`Offload::name`]) that are on.
    pub offloads_on: Vec<&'static str>,
}

/// The command that turns every checked offload off on `dev`.
pub fn ethtool_command(dev: &str) -> String {
    let features: Vec<String> = OFFLOADS.iter().map(|o| format!("{} off", o.name)).collect();
    format!("ethtool -K {dev} {}", features.join(" "))
}

/// Reads everything about `dev` without judging it.
pub fn inspect(dev: &str) -> anyhow::Result<InterfaceInfo> {
    if dev.is_empty() || dev.len() > 15 || dev.contains('/') {
        bail!("{dev:?} is not a valid interface name");
    }
    let sys = format!("/sys/class/net/{dev}");
    if !std::path::Path::new(&sys).exists() {
        bail!("interface {dev:?} does not exist in this network namespace");
    }
    let read = |f: &str| {
        std::fs::read_to_string(format!("{sys}/{f}"))
            .map(|s| s.trim().to_owned())
            .with_context(|| format!("reading {sys}/{f}"))
    };
    let flags = read("flags")?;
    let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16)
        .with_context(|| format!("{sys}/flags: {flags:?} is not hexadecimal"))?;
    let mac = parse_mac(&read("address")?).with_context(|| format!("{sys}/address"))?;
    let mtu = read("mtu")?.parse().with_context(|| format!("{sys}/mtu"))?;
    let sock = ioctl_socket()?;
    let mut offloads_on = Vec::new();
    for o in OFFLOADS {
        if offload_on(sock.as_fd(), dev, o)? {
            offloads_on.push(o.name);
        }
    }
    Ok(InterfaceInfo {
        name: dev.to_owned(),
        up: flags & IFF_UP != 0,
        operstate: read("operstate")?,
        mac,
        ipv4: ipv4_of(dev)?,
        mtu,
        offloads_on,
    })
}

/// Checks `dev` for the director: present, up, offloads off (or turned off, per `offloads`).
/// A missing carrier is only warned about: it may come later.
pub fn check(dev: &str, offloads: Offloads) -> anyhow::Result<InterfaceInfo> {
    let mut info = inspect(dev)?;
    if !info.up {
        bail!("interface {dev:?} is down: run `ip link set {dev} up`");
    }
    if !matches!(info.operstate.as_str(), "up" | "unknown") {
        tracing::warn!(interface = dev, operstate = %info.operstate, "interface has no carrier yet");
    }
    if !info.offloads_on.is_empty() {
        match offloads {
            Offloads::Refuse => bail!(
                "interface {dev:?} has offloads on ({}): the capture would see frames larger than the \
                 MTU or with unfinished checksums. Run `{}` (and the same on the peers facing it), \
                 or start vipd with --fix-offloads",
                info.offloads_on.join(", "),
                ethtool_command(dev)
            ),
            Offloads::Disable => {
                disable_offloads(dev)?;
                tracing::info!(interface = dev, turned_off = ?info.offloads_on, "offloads turned off");
                info = inspect(dev)?;
                if !info.offloads_on.is_empty() {
                    bail!(
                        "interface {dev:?}: could not turn off {} (the driver refuses); run `{}`",
                        info.offloads_on.join(", "),
                        ethtool_command(dev)
                    );
                }
            }
        }
    }
    Ok(info)
}

/// Turns every offload in [`OFFLOADS`] off on `dev`; features the driver does not have are skipped.
pub fn disable_offloads(dev: &str) -> anyhow::Result<()> {
    let sock = ioctl_socket()?;
    for o in OFFLOADS {
        if !offload_on(sock.as_fd(), dev, o)? {
            continue;
        }
        let data = if o.get == ETHTOOL_GFLAGS {
            ethtool(sock.as_fd(), dev, ETHTOOL_GFLAGS, 0)?.unwrap_or(0) & !ETH_FLAG_LRO
        } else {
            0
        };
        ethtool(sock.as_fd(), dev, o.set, data)
            .with_context(|| format!("turning {} off on {dev:?}", o.name))?;
    }
    Ok(())
}

/// The forwarding switches that are on in this network namespace, by sysctl name
/// (`net.ipv4.ip_forward`, `net.ipv6.conf.all.forwarding`): with one on, the kernel would forward a second
/// copy of the frames of that family addressed through the director. A switch that cannot be read (IPv6
/// disabled) counts as off.
pub fn forwarding_enabled() -> Vec<&'static str> {
    [
        ("net.ipv4.ip_forward", "/proc/sys/net/ipv4/ip_forward"),
        (
            "net.ipv6.conf.all.forwarding",
            "/proc/sys/net/ipv6/conf/all/forwarding",
        ),
    ]
    .into_iter()
    .filter(|(_, path)| std::fs::read_to_string(path).is_ok_and(|v| v.trim() != "0"))
    .map(|(name, _)| name)
    .collect()
}

/// The kernel's index of interface `dev` in this namespace.
pub fn index(dev: &str) -> anyhow::Result<u32> {
    let name =
        std::ffi::CString::new(dev).with_context(|| format!("{dev:?} is not an interface name"))?;
    // SAFETY: a NUL-terminated name that outlives the call; if_nametoindex only reads it.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        bail!("no interface {dev}: {}", std::io::Error::last_os_error());
    }
    Ok(index)
}

fn parse_mac(s: &str) -> anyhow::Result<MacAddr> {
    Ok(s.trim().parse::<MacAddr>()?)
}

fn ioctl_socket() -> anyhow::Result<OwnedFd> {
    // SAFETY: plain syscall; a non-negative result is a descriptor we now own.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket for SIOCETHTOOL");
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `struct ifreq` with the `ifr_data` member of its union, padded to the kernel's size.
#[repr(C)]
struct IfreqData {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

/// `struct ethtool_value`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// One `SIOCETHTOOL` with an `ethtool_value`; `Ok(None)` when the driver does not support `cmd`.
fn ethtool(sock: BorrowedFd<'_>, dev: &str, cmd: u32, data: u32) -> anyhow::Result<Option<u32>> {
    let mut value = EthtoolValue { cmd, data };
    let mut req = IfreqData {
        name: [0; libc::IFNAMSIZ],
        data: (&mut value as *mut EthtoolValue).cast(),
        _pad: [0; 16],
    };
    for (d, s) in req
        .name
        .iter_mut()
        .zip(dev.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s as libc::c_char;
    }
    // SAFETY: `req` is a properly sized ifreq whose data pointer refers to `value`, both live for the call.
    let rc = unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            SIOCETHTOOL as _,
            &mut req as *mut IfreqData,
        )
    };
    if rc < 0 {
        let err = std::io::Error::last_os_error();
        if matches!(
            err.raw_os_error(),
            Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)
        ) {
            return Ok(None);
        }
        return Err(err).with_context(|| format!("SIOCETHTOOL {cmd:#x} on {dev:?}"));
    }
    Ok(Some(value.data))
}

fn offload_on(sock: BorrowedFd<'_>, dev: &str, o: Offload) -> anyhow::Result<bool> {
    let v = ethtool(sock, dev, o.get, 0)?;
    Ok(match v {
        None => false,
        Some(flags) if o.get == ETHTOOL_GFLAGS => flags & ETH_FLAG_LRO != 0,
        Some(on) => on != 0,
    })
}

/// The first IPv4 address of `dev`, from getifaddrs(3).
fn ipv4_of(dev: &str) -> anyhow::Result<Option<Ipv4Addr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getifaddrs");
    }
    let mut found = None;
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) };
        // SAFETY: ifa_addr is non-null and points to a sockaddr of at least sa_family's size.
        let family = unsafe { (*ifa.ifa_addr).sa_family };
        if name.to_bytes() == dev.as_bytes() && i32::from(family) == libc::AF_INET {
            // SAFETY: AF_INET means the sockaddr is a sockaddr_in.
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            found = Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            break;
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    /// The refusal names one command that turns every checked offload off.
    fn ethtool_command_names_all_offloads() {
        assert_eq!(
            ethtool_command("vipd-out"),
            "ethtool -K vipd-out gro off lro off gso off tso off rx off tx off"
        );
    }

    #[test]
    /// MAC addresses parse as sysfs writes them and bad ones are refused.
    fn parses_mac() {
        assert_eq!(
            parse_mac("02:00:00:00:00:0a").unwrap(),
            MacAddr([2, 0, 0, 0, 0, 0x0a])
        );
        assert!(parse_mac("02:00:00:00:00").is_err());
        assert!(parse_mac("02:00:00:00:00:0a:01").is_err());
        assert!(parse_mac("zz:00:00:00:00:0a").is_err());
    }

    #[test]
    /// The loopback interface exists everywhere: it is up, has 127.0.0.1 once up, and an MTU.
    fn inspects_loopback() {
        let lo = inspect("lo").unwrap();
        assert!(lo.mtu > 0);
        if lo.up {
            assert_eq!(lo.ipv4, Some(Ipv4Addr::LOCALHOST));
        }
    }

    #[test]
    /// A missing interface is refused with its name.
    fn missing_interface() {
        let e = check("vipd-nosuch0", Offloads::Refuse)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("vipd-nosuch0") && e.contains("does not exist"),
            "{e}"
        );
        assert!(inspect("../etc").is_err());
    }
}
