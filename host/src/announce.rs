//! Announcing the virtual addresses to the routers (`[cluster]`, docs/scale-out.md): one kernel route per
//! routed virtual address in routing table `route_table`, which BIRD's `kernel` protocol learns and exports
//! over BGP. Nothing here speaks BGP.
//!
//! The routes point at a TUN device this process creates without persisting it (`vipd-announce`): the
//! kernel deletes the device when its last descriptor closes, and every route through it with it. So the
//! announcements end whenever vipd ends, however it ends (SIGTERM, a panic, SIGKILL, the OOM killer), and
//! BIRD withdraws them at once, without waiting for a BGP hold timer. The routes are in their own table, so
//! they change no forwarding (no rule points at it); the device carries no traffic.
//!
//! A thread of its own (`vipd-routes`, a current-thread tokio runtime for the netlink crate) does the
//! netlink work, so that neither the data path nor a signal handler waits on it: [`Routes::announce`]
//! replaces the set of announced addresses (start, reload), [`Routes::withdraw`] removes them (SIGTERM,
//! `vipd ha drain`) and waits until the kernel has.
//!
//! What can fail: creating the device (no `CAP_NET_ADMIN`, another vipd holding the name in this namespace)
//! refuses the start with the reason; a route the kernel refuses is logged, and the others stay.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use rtnetlink::{LinkUnspec, RouteMessageBuilder};

/// The TUN device the routes go through; it lives as long as the process.
pub const DEVICE: &str = "vipd-announce";

/// What the routes thread is asked to do.
enum Command {
    /// Make these the announced addresses (adding and removing routes as needed).
    Announce(Vec<IpAddr>),
    /// Remove every route; answers when done.
    Withdraw(mpsc::Sender<()>),
}

/// The announced addresses now, for `/ha` and `/status`.
#[derive(Debug, Default)]
pub struct Announced {
    pub addresses: Mutex<BTreeSet<IpAddr>>,
}

/// The handle to the routes thread. Cloneable; the thread ends when the last handle is dropped (its device
/// and routes with it).
#[derive(Clone)]
pub struct Routes {
    tx: mpsc::Sender<Command>,
    announced: Arc<Announced>,
}

impl Routes {
    /// Creates the device, brings it up, and starts the thread that keeps routes in `table`.
    pub fn start(table: u32) -> Result<Routes> {
        let device = create_tun(DEVICE)?;
        let index = crate::ifcheck::index(DEVICE).context("the announcement device")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the routes thread's runtime")?;
        let (connection, handle, _) = runtime
            .block_on(async { rtnetlink::new_connection() })
            .context("opening a netlink socket for the announced routes")?;
        runtime.spawn(connection);
        runtime
            .block_on(
                handle
                    .link()
                    .set(LinkUnspec::new_with_index(index).up().build())
                    .execute(),
            )
            .with_context(|| format!("bringing {DEVICE} up"))?;
        let (tx, rx) = mpsc::channel();
        let announced = Arc::new(Announced::default());
        let mut keeper = Keeper {
            runtime,
            handle,
            table,
            index,
            announced: Arc::clone(&announced),
            _device: device,
        };
        std::thread::Builder::new()
            .name("vipd-routes".into())
            .spawn(move || {
                for command in rx {
                    match command {
                        Command::Announce(addresses) => keeper.announce(addresses),
                        Command::Withdraw(done) => {
                            keeper.announce(Vec::new());
                            let _ = done.send(());
                        }
                    }
                }
            })?;
        Ok(Routes { tx, announced })
    }

    /// Makes `addresses` the announced ones (at start and on every reload).
    pub fn announce(&self, addresses: Vec<IpAddr>) {
        let _ = self.tx.send(Command::Announce(addresses));
    }

    /// Withdraws every route, and returns once the kernel has removed them (BIRD sees the removal at once).
    pub fn withdraw(&self) {
        let (done, wait) = mpsc::channel();
        if self.tx.send(Command::Withdraw(done)).is_ok() {
            let _ = wait.recv();
        }
    }

    /// The addresses announced now.
    pub fn announced(&self) -> Vec<IpAddr> {
        self.announced
            .addresses
            .lock()
            .map(|a| a.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// The routes thread's state.
struct Keeper {
    runtime: tokio::runtime::Runtime,
    handle: rtnetlink::Handle,
    table: u32,
    index: u32,
    announced: Arc<Announced>,
    /// Closing it removes the device and every route through it.
    _device: OwnedFd,
}

impl Keeper {
    fn announce(&mut self, addresses: Vec<IpAddr>) {
        let wanted: BTreeSet<IpAddr> = addresses.into_iter().collect();
        let have = self
            .announced
            .addresses
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default();
        for &addr in have.difference(&wanted) {
            let route = self.route(addr);
            match self
                .runtime
                .block_on(self.handle.route().del(route).execute())
            {
                Ok(()) => tracing::info!(%addr, table = self.table, "route withdrawn"),
                Err(e) => tracing::warn!(%addr, table = self.table, "route not withdrawn: {e}"),
            }
        }
        for &addr in wanted.difference(&have) {
            let route = self.route(addr);
            match self
                .runtime
                .block_on(self.handle.route().add(route).replace().execute())
            {
                Ok(()) => tracing::info!(%addr, table = self.table, "route announced"),
                Err(e) => tracing::error!(%addr, table = self.table, "route not announced: {e}"),
            }
        }
        if let Ok(mut a) = self.announced.addresses.lock() {
            *a = wanted;
        }
    }

    fn route(&self, addr: IpAddr) -> rtnetlink::packet_route::route::RouteMessage {
        match addr {
            IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(a, 32)
                .output_interface(self.index)
                .table_id(self.table)
                .build(),
            IpAddr::V6(a) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(a, 128)
                .output_interface(self.index)
                .table_id(self.table)
                .build(),
        }
    }
}

/// `TUNSETIFF` (`_IOW('T', 202, int)`) and its flags, from `linux/if_tun.h`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags (the union is 24 bytes).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Whether the interface `name` exists in this namespace, and if so whether it is up with a carrier
/// (`IFF_UP` and `IFF_RUNNING`): `None` when it is gone.
pub fn link_state(name: &str) -> Option<bool> {
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: socket(2) with constant arguments; the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is a descriptor we just opened and own from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags of one `struct ifreq`, laid out as `req`.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req as *mut IfReq) };
    if rc < 0 {
        return None;
    }
    let up = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    Some(req.flags & up == up)
}

/// Creates the non-persistent TUN device `name`: it exists as long as the returned descriptor.
fn create_tun(name: &str) -> Result<OwnedFd> {
    // SAFETY: open(2) with a NUL-terminated path; the descriptor is owned below.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        bail!(
            "cannot open /dev/net/tun for the announcement device {name}: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: fd is a descriptor we just opened and own from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TUN | IFF_NO_PI,
        _pad: [0; 22],
    };
    if name.len() >= libc::IFNAMSIZ {
        bail!("device name {name} is too long");
    }
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req` is laid out as.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        bail!(
            "cannot create the announcement device {name}: {e}{}",
            if e.raw_os_error() == Some(libc::EBUSY) {
                " (another vipd with [cluster] runs in this network namespace?)"
            } else {
                " (vipd needs CAP_NET_ADMIN for [cluster])"
            }
        );
    }
    Ok(fd)
}
