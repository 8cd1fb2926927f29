//! `[director] offload = "xdp"`: established connections translated in the kernel (docs/offload.md).
//!
//! The libpcap path stays the place where every decision is made: SYNs, policies, ARP, ICMP, failure
//! handling, closing. Once a connection is established (the client acknowledged the server's SYN-ACK, or a
//! UDP server replied), the director puts its two directions in the XDP program's flow map
//! (`bpf/vipd_xdp.c`); from then on the program rewrites their frames (addresses, ports, incremental
//! checksums, MACs) and redirects them to the other interface, and they never reach user space. A SYN, FIN
//! or RST still goes up, and the director takes the connection out of the map when it starts closing, so
//! the patent's state handling and the timeouts stay in one place. The connection table stays the truth.
//!
//! What the kernel did comes back in two ways: the program's per-CPU counters of redirected frames and
//! bytes are folded into the director's counters ([`Offload::totals`]), so `vipd_packets_total` and
//! `vipd_bytes_total` read the same with and without the offload; and each flow's last-seen time
//! ([`Offload::seen`]) is asked for when the idle expiry or the sync refresh looks at its connection.
//!
//! The director sees the kernel through the [`Offload`] trait: [`Xdp`] is the real one; the director's
//! unit tests use a recording one.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::Sides;
use crate::config::XdpMode;
use crate::conntable::Connection;
use crate::wire::{MacAddr, Protocol};

/// Why a connection was not offloaded; it stays on the libpcap path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The flow map holds `[director] offload_connections` connections already.
    Full,
    /// The kernel refused the entry (the error is logged once).
    Failed,
}

/// The kernel half of the offload, as the director uses it: once per connection, never per frame.
pub trait Offload: Send {
    /// Puts an established connection's two directions in the kernel: frames from `conn.client` to
    /// `conn.virtual_addr` go to `conn.real` at `real_mac`, and the replies back to `conn.client_mac`.
    fn insert(&mut self, conn: &Connection, real_mac: MacAddr) -> Result<(), Refused>;
    /// Takes a connection's two directions out; its frames reach the director again.
    fn remove(&mut self, conn: &Connection);
    /// Frames and bytes the kernel translated since the offload started, by the interface they arrived on.
    fn totals(&mut self) -> Sides<(u64, u64)>;
    /// How long ago the kernel last translated a frame of `conn` (its client's or its server's); `None`
    /// if it never did.
    fn seen(&mut self, conn: &Connection) -> Option<Duration>;
    /// How it runs, for the metrics (`vipd_offload_info{mode}`): `native` or `generic` XDP.
    fn mode(&self) -> &'static str;
    /// Connections in the kernel now.
    fn held(&self) -> usize;
    /// Frames the program looked at, by the interface they arrived on and what it did with them: for the
    /// metrics (`vipd_xdp_frames_total`). Empty where there is no program.
    fn verdicts(&mut self) -> Vec<(crate::Interface, &'static str, u64)> {
        Vec::new()
    }
}

/// The attach mode in use, for the start log and `vipd_offload_info`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    Native,
    Generic,
}

impl Attached {
    pub fn as_str(self) -> &'static str {
        match self {
            Attached::Native => "native",
            Attached::Generic => "generic",
        }
    }
}

// ------------------------------------------------------------------------------------------------------
// The map layouts of bpf/vipd_xdp.c, byte for byte (no implicit padding on either side).

const SIDE_OUTSIDE: u8 = 0;
const SIDE_INSIDE: u8 = 1;
const STAT_SLOTS: u32 = 16;
const STAT_REDIRECT: u32 = 0;
/// The program's stat reasons, by index (`enum stat_reason`).
const STAT_NAMES: [&str; 13] = [
    "redirected",
    "disabled",
    "not_ip",
    "not_for_us",
    "malformed",
    "ip_options",
    "fragment",
    "ext_header",
    "other_proto",
    "tcp_control",
    "miss",
    "no_egress",
    "slow",
];
const CONFIG_ENABLED: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
struct FlowKey {
    side: u8,
    proto: u8,
    family: u8,
    pad0: u8,
    src: [u8; 16],
    dst: [u8; 16],
    sport: [u8; 2],
    dport: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct FlowValue {
    addr: [u8; 16],
    port: [u8; 2],
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    pad0: u16,
    egress_ifindex: u32,
    flags: u32,
    packets: u64,
    bytes: u64,
    last_seen_ns: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct ProgramConfig {
    mac: [[u8; 6]; 2],
    flags: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Stat {
    packets: u64,
    bytes: u64,
}

const _: () = assert!(size_of::<FlowKey>() == 40);
const _: () = assert!(size_of::<FlowValue>() == 64);
const _: () = assert!(size_of::<ProgramConfig>() == 16);
const _: () = assert!(size_of::<Stat>() == 16);

// SAFETY: plain `repr(C)` structs of integers and byte arrays with no padding (sizes asserted above): every
// bit pattern is a valid value, which is what aya's `Pod` asks.
unsafe impl aya::Pod for FlowKey {}
// SAFETY: as above.
unsafe impl aya::Pod for FlowValue {}
// SAFETY: as above.
unsafe impl aya::Pod for ProgramConfig {}
// SAFETY: as above.
unsafe impl aya::Pod for Stat {}

fn family_and_bytes(ip: IpAddr) -> (u8, [u8; 16]) {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => {
            out[..4].copy_from_slice(&v4.octets());
            (4, out)
        }
        IpAddr::V6(v6) => (6, v6.octets()),
    }
}

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
    }
}

/// The keys of a connection's two directions: what `xdp_outside` looks up (client -> virtual address) and
/// what `xdp_inside` looks up (real server -> client).
fn keys(conn: &Connection) -> (FlowKey, FlowKey) {
    let proto = proto_number(conn.protocol);
    let (family, client) = family_and_bytes(conn.client.ip());
    let (_, virt) = family_and_bytes(conn.virtual_addr.ip());
    let (_, real) = family_and_bytes(conn.real.ip());
    let outside = FlowKey {
        side: SIDE_OUTSIDE,
        proto,
        family,
        pad0: 0,
        src: client,
        dst: virt,
        sport: conn.client.port().to_be_bytes(),
        dport: conn.virtual_addr.port().to_be_bytes(),
    };
    let inside = FlowKey {
        side: SIDE_INSIDE,
        proto,
        family,
        pad0: 0,
        src: real,
        dst: client,
        sport: conn.real.port().to_be_bytes(),
        dport: conn.client.port().to_be_bytes(),
    };
    (outside, inside)
}

/// `CLOCK_MONOTONIC` now, the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// The program, compiled by build.rs; empty when clang was not there, and then why.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vipd_xdp.o"));
static NOT_BUILT: &str = include_str!(concat!(env!("OUT_DIR"), "/vipd_xdp.missing"));

/// Whether this build carries the XDP program (`vipd check` warns when it does not).
pub fn built() -> Result<(), String> {
    if OBJECT.is_empty() {
        Err(format!(
            "this vipd was built without its XDP program: {}",
            NOT_BUILT.lines().next().unwrap_or("clang was not found")
        ))
    } else {
        Ok(())
    }
}

/// The interfaces the program runs on.
pub struct Interfaces<'a> {
    pub outside: &'a str,
    pub inside: &'a str,
    pub outside_mac: MacAddr,
    pub inside_mac: MacAddr,
}

/// The XDP offload: the loaded program, attached to both interfaces, and its maps. Dropping it detaches
/// the program; the kernel then passes every frame to the libpcap path again.
pub struct Xdp {
    // Field order is drop order: the maps, then the programs (detached when `ebpf` drops).
    flows: aya::maps::HashMap<aya::maps::MapData, FlowKey, FlowValue>,
    stats: aya::maps::PerCpuArray<aya::maps::MapData, Stat>,
    _ebpf: aya::Ebpf,
    ifindex: Sides<u32>,
    macs: Sides<MacAddr>,
    capacity: u32,
    held: u32,
    mode: Attached,
    logged_failure: bool,
}

impl Xdp {
    /// Loads the program, fills its maps and attaches it to both interfaces in the mode `mode` asks for.
    /// Holds at most `connections` connections. Any failure is an error that names what failed.
    pub fn start(ifs: &Interfaces<'_>, mode: XdpMode, connections: u32) -> Result<Xdp> {
        built().map_err(anyhow::Error::msg)?;
        let outside_index = crate::ifcheck::index(ifs.outside)?;
        let inside_index = crate::ifcheck::index(ifs.inside)?;
        let attach = choose_mode(ifs, mode, Sides::new(outside_index, inside_index))?;
        let mut ebpf = aya::EbpfLoader::new()
            .map_max_entries("flows", connections.saturating_mul(2))
            .load(OBJECT)
            .context("loading the XDP program failed")?;
        let mut map = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("the XDP object has no map named {name}"))
        };
        let flows = aya::maps::HashMap::try_from(map("flows")?).context("the flows map")?;
        let stats = aya::maps::PerCpuArray::try_from(map("stats")?).context("the stats map")?;
        let mut config: aya::maps::Array<_, ProgramConfig> =
            aya::maps::Array::try_from(map("config")?).context("the config map")?;
        let mut ports =
            aya::maps::DevMapHash::try_from(map("tx_ports")?).context("the tx_ports map")?;
        for index in [outside_index, inside_index] {
            ports
                .insert(index, index, None, 0)
                .with_context(|| format!("adding interface {index} to tx_ports"))?;
        }
        let enabled = ProgramConfig {
            mac: [ifs.outside_mac.0, ifs.inside_mac.0],
            flags: CONFIG_ENABLED,
        };
        config.set(0, enabled, 0).context("the config map")?;
        let flags = match attach {
            Attached::Native => aya::programs::XdpMode::Driver,
            Attached::Generic => aya::programs::XdpMode::Skb,
        };
        for (program, interface) in [("xdp_outside", ifs.outside), ("xdp_inside", ifs.inside)] {
            let prog: &mut aya::programs::Xdp = ebpf
                .program_mut(program)
                .with_context(|| format!("the XDP object has no program {program}"))?
                .try_into()
                .context(program)?;
            prog.load()
                .with_context(|| format!("the kernel refused {program}"))?;
            prog.attach(interface, flags).with_context(|| {
                format!(
                    "attaching {program} to {interface} in {} mode failed",
                    attach.as_str()
                )
            })?;
        }
        Ok(Xdp {
            flows,
            stats,
            _ebpf: ebpf,
            ifindex: Sides::new(outside_index, inside_index),
            macs: Sides::new(ifs.outside_mac, ifs.inside_mac),
            capacity: connections,
            held: 0,
            mode: attach,
            logged_failure: false,
        })
    }

    /// The attach mode in use.
    pub fn mode(&self) -> Attached {
        self.mode
    }

    fn stat(&self, side: u8, reason: u32) -> (u64, u64) {
        let index = u32::from(side) * STAT_SLOTS + reason;
        match self.stats.get(&index, 0) {
            Ok(per_cpu) => per_cpu
                .iter()
                .fold((0, 0), |(p, b), s| (p + s.packets, b + s.bytes)),
            Err(_) => (0, 0),
        }
    }
}

impl Offload for Xdp {
    fn mode(&self) -> &'static str {
        self.mode.as_str()
    }

    fn held(&self) -> usize {
        self.held as usize
    }

    fn insert(&mut self, conn: &Connection, real_mac: MacAddr) -> Result<(), Refused> {
        if self.held >= self.capacity {
            return Err(Refused::Full);
        }
        let (out_key, in_key) = keys(conn);
        let (_, real) = family_and_bytes(conn.real.ip());
        let (_, virt) = family_and_bytes(conn.virtual_addr.ip());
        let to_real = FlowValue {
            addr: real,
            port: conn.real.port().to_be_bytes(),
            dst_mac: real_mac.0,
            src_mac: self.macs.inside.0,
            egress_ifindex: self.ifindex.inside,
            ..FlowValue::default()
        };
        let to_client = FlowValue {
            addr: virt,
            port: conn.virtual_addr.port().to_be_bytes(),
            dst_mac: conn.client_mac.0,
            src_mac: self.macs.outside.0,
            egress_ifindex: self.ifindex.outside,
            ..FlowValue::default()
        };
        // The inside direction first: the server's replies must be translated before the client's frames
        // stop reaching the director.
        let result = self
            .flows
            .insert(in_key, to_client, 0)
            .and_then(|()| self.flows.insert(out_key, to_real, 0));
        match result {
            Ok(()) => {
                self.held += 1;
                Ok(())
            }
            Err(e) => {
                let _ = self.flows.remove(&in_key);
                if !self.logged_failure {
                    self.logged_failure = true;
                    tracing::warn!(
                        "the kernel refused an offloaded connection ({:#}); such connections stay on the \
                         libpcap path (this is logged once)",
                        anyhow::Error::new(e)
                    );
                }
                Err(Refused::Failed)
            }
        }
    }

    fn remove(&mut self, conn: &Connection) {
        let (out_key, in_key) = keys(conn);
        let removed = self.flows.remove(&out_key).is_ok();
        let _ = self.flows.remove(&in_key);
        if removed {
            self.held = self.held.saturating_sub(1);
        }
    }

    fn totals(&mut self) -> Sides<(u64, u64)> {
        Sides::new(
            self.stat(SIDE_OUTSIDE, STAT_REDIRECT),
            self.stat(SIDE_INSIDE, STAT_REDIRECT),
        )
    }

    fn seen(&mut self, conn: &Connection) -> Option<Duration> {
        let (out_key, in_key) = keys(conn);
        let last = |key: &FlowKey| self.flows.get(key, 0).map_or(0, |v| v.last_seen_ns);
        let seen = last(&out_key).max(last(&in_key));
        (seen != 0).then(|| Duration::from_nanos(monotonic_ns().saturating_sub(seen)))
    }

    fn verdicts(&mut self) -> Vec<(crate::Interface, &'static str, u64)> {
        let mut out = Vec::with_capacity(2 * STAT_NAMES.len());
        for (side, interface) in [
            (SIDE_OUTSIDE, crate::Interface::Outside),
            (SIDE_INSIDE, crate::Interface::Inside),
        ] {
            for (reason, name) in STAT_NAMES.iter().enumerate() {
                out.push((interface, *name, self.stat(side, reason as u32).0));
            }
        }
        out
    }
}

/// The attach mode for `mode`: native needs both drivers to run XDP and to take redirected frames
/// (`xdp_features` basic and ndo-xmit; a veth takes them only while its peer has GRO on or an XDP program
/// of its own, and drops them otherwise). `auto` falls back to generic, and says why in the log.
fn choose_mode(ifs: &Interfaces<'_>, mode: XdpMode, index: Sides<u32>) -> Result<Attached> {
    if mode == XdpMode::Generic {
        return Ok(Attached::Generic);
    }
    let mut missing = Vec::new();
    for (name, i) in [(ifs.outside, index.outside), (ifs.inside, index.inside)] {
        match netdev::xdp_features(i) {
            Ok(features) => {
                if features & netdev::XDP_ACT_BASIC == 0 {
                    missing.push(format!("{name}'s driver does not run XDP programs"));
                } else if features & netdev::XDP_ACT_NDO_XMIT == 0 {
                    missing.push(format!(
                        "{name} cannot take redirected frames (xdp_features lacks ndo-xmit; for a veth, \
                         turn GRO on at its peer: ethtool -K PEER gro on)"
                    ));
                }
            }
            Err(e) => missing.push(format!("{name}'s xdp_features could not be read: {e}")),
        }
    }
    if missing.is_empty() {
        return Ok(Attached::Native);
    }
    let why = missing.join("; ");
    match mode {
        XdpMode::Native => bail!("xdp_mode = \"native\" is not possible: {why}"),
        _ => {
            tracing::info!("offload: generic XDP, not native: {why}");
            Ok(Attached::Generic)
        }
    }
}

/// The kernel's `netdev` generic netlink family (Linux 6.3): a device's `xdp_features`.
mod netdev {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    pub const XDP_ACT_BASIC: u64 = 1;
    pub const XDP_ACT_NDO_XMIT: u64 = 4;

    const GENL_ID_CTRL: u16 = 0x10;
    const CTRL_CMD_GETFAMILY: u8 = 3;
    const CTRL_ATTR_FAMILY_ID: u16 = 1;
    const CTRL_ATTR_FAMILY_NAME: u16 = 2;
    const NETDEV_CMD_DEV_GET: u8 = 1;
    const NETDEV_A_DEV_IFINDEX: u16 = 1;
    const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
    const NLMSG_ERROR: u16 = 2;

    /// Interface `ifindex`'s `NETDEV_A_DEV_XDP_FEATURES`.
    pub fn xdp_features(ifindex: u32) -> io::Result<u64> {
        // SAFETY: plain socket(2); the result is checked before it is owned.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_GENERIC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let reply = request(
            &fd,
            GENL_ID_CTRL,
            CTRL_CMD_GETFAMILY,
            CTRL_ATTR_FAMILY_NAME,
            b"netdev\0",
        )?;
        let family = attribute(&reply, CTRL_ATTR_FAMILY_ID)
            .and_then(|a| a.get(..2))
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
            .ok_or_else(|| {
                io::Error::other("the kernel has no netdev netlink family (Linux 6.3 or later)")
            })?;
        let reply = request(
            &fd,
            family,
            NETDEV_CMD_DEV_GET,
            NETDEV_A_DEV_IFINDEX,
            &ifindex.to_ne_bytes(),
        )?;
        attribute(&reply, NETDEV_A_DEV_XDP_FEATURES)
            .and_then(|a| a.get(..8))
            .map(|b| u64::from_ne_bytes(b.try_into().expect("8 bytes")))
            .ok_or_else(|| io::Error::other("no xdp-features in the kernel's answer"))
    }

    /// Sends one request with one attribute and returns the attributes of the answer.
    fn request(fd: &OwnedFd, family: u16, cmd: u8, attr: u16, value: &[u8]) -> io::Result<Vec<u8>> {
        let attr_len = 4 + value.len();
        let padded = attr_len.div_ceil(4) * 4;
        let len = 16 + 4 + padded;
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&family.to_ne_bytes());
        msg.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
        msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
        msg.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel
        msg.extend_from_slice(&[cmd, 1, 0, 0]); // genlmsghdr: command, version
        msg.extend_from_slice(&(attr_len as u16).to_ne_bytes());
        msg.extend_from_slice(&attr.to_ne_bytes());
        msg.extend_from_slice(value);
        msg.resize(len, 0);
        // SAFETY: `msg` is a valid buffer of `msg.len()` bytes for the duration of the call.
        let sent = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 8192];
        // SAFETY: `buf` is a valid writable buffer of `buf.len()` bytes for the duration of the call.
        let got = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(got as usize);
        if buf.len() < 20 {
            return Err(io::Error::other("short netlink answer"));
        }
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        if kind == NLMSG_ERROR {
            let errno = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
            return Err(io::Error::from_raw_os_error(-errno));
        }
        let msg_len =
            (u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize).min(buf.len());
        Ok(buf.get(20..msg_len).unwrap_or_default().to_vec())
    }

    /// The payload of attribute `kind` in a list of netlink attributes.
    fn attribute(attrs: &[u8], kind: u16) -> Option<&[u8]> {
        let mut rest = attrs;
        while rest.len() >= 4 {
            let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
            let t = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
            if len < 4 || len > rest.len() {
                return None;
            }
            if t == kind {
                return rest.get(4..len);
            }
            rest = rest.get(len.div_ceil(4) * 4..).unwrap_or_default();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_both_directions() {
        let conn = crate::conntable::tests::conn(
            40000,
            80,
            8001,
            crate::conntable::ConnState::Established,
            Duration::ZERO,
        );
        let (out, inside) = keys(&conn);
        assert_eq!((out.side, out.proto, out.family), (0, 6, 4));
        assert_eq!(&out.src[..4], &[198, 51, 100, 7]);
        assert_eq!(&out.src[4..], &[0; 12]);
        assert_eq!(&out.dst[..4], &[192, 0, 2, 1]);
        assert_eq!(
            (out.sport, out.dport),
            (40000u16.to_be_bytes(), 80u16.to_be_bytes())
        );
        assert_eq!(inside.side, 1);
        assert_eq!(&inside.src[..4], &[10, 0, 0, 1]);
        assert_eq!(&inside.dst[..4], &[198, 51, 100, 7]);
        assert_eq!(
            (inside.sport, inside.dport),
            (8001u16.to_be_bytes(), 40000u16.to_be_bytes())
        );
    }
}
