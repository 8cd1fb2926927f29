//! Live frames through libpcap: the `outside` and `inside` interfaces and the one thread that serves both.
//!
//! Owns the two capture handles and the data path loop ([`DataPath::run`]). Each interface is opened in
//! immediate mode with a large kernel buffer, a fixed snap length, direction `In` and non-blocking; the
//! socket also gets `PACKET_IGNORE_OUTGOING`, so the kernel does not copy the frames we inject back into
//! our own capture (libpcap's direction filter alone runs after that copy). One thread polls both
//! descriptors plus a wake-up eventfd; per wake-up it reads at most [`CaptureConfig::batch`] frames from
//! each interface, alternating, so a flood on one side cannot starve the other and the work per wake-up is
//! bounded (what is not read stays in the kernel ring; the kernel counts what the ring cannot hold, which
//! we read back from `pcap_stats`).
//!
//! Per frame: one copy out of the ring into a slot of the wake-up's transmit batch, one [`Handler::handle`]
//! call that rewrites it there. The frames to send stay in their slots until the wake-up's batch ends; then
//! each interface gets them with `sendmmsg(2)` on its packet socket, [`SEND_CHUNK`] frames per system call,
//! in the order they were handled. (Profile: the cost of a frame is the `send` and the receivers' kernel work
//! it runs, not the rewrite; batching removes most per-frame system-call overhead.) An interface can instead
//! have a sender thread of its own ([`CaptureConfig::send_threads`]): the batch's frames for it are copied
//! into a single-producer single-consumer ring (`ring`) and the sender thread makes the `sendmmsg`
//! calls, so the kernel work a send triggers runs on another core; a frame that finds the ring full is shed
//! and counted. No allocation, no lock, no formatting on the way. Frames cut by the snap length or larger than the interface's MTU allows (GRO/LRO
//! super-frames) never reach the handler: they are counted and dropped.
//!
//! What may fail: opening an interface (missing, no permission: an error naming the interface), `poll`
//! (fatal, returned). A failed send is counted, never fatal: the frame is skipped and the rest of the batch
//! still goes out.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use pcap::{Active, Capture, Direction};

use crate::config::SendThreads;
use crate::{Interface, Sides};

/// What the data path does with a frame after the handler has seen it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send the frame (rewritten in place by the handler) out of that interface.
    Send(Interface),
    /// Send the frame in [`Handler::reply`] out of that interface; the received frame is dropped.
    SendReply(Interface),
    /// Send the rewritten frame out of `forward` and the one in [`Handler::reply`] out of `reply`.
    SendBoth {
        forward: Interface,
        reply: Interface,
    },
    /// Nothing to send: the frame was dropped (counted by the handler) or consumed (e.g. an ARP reply).
    Done,
}

/// The packet path as the data path loop sees it; the director implements it.
pub trait Handler {
    /// Decide about one frame received on `from`; may rewrite it in place.
    fn handle(&mut self, from: Interface, frame: &mut [u8], now: Duration) -> Action;
    /// The generated frame of the last [`Action::SendReply`].
    fn reply(&self) -> &[u8];
    /// Periodic work, called about every [`CaptureConfig::tick`]; frames to send go through `send`.
    fn tick(&mut self, now: Duration, send: &mut dyn FnMut(Interface, &[u8]));
    /// A wake-up begins; `behind`: the previous one stopped at its batch bound with frames left in a ring
    /// (the handler may then bound its new-connection work).
    fn wakeup(&mut self, behind: bool) {
        let _ = behind;
    }
    /// Light work between wake-ups (keeping the policy plugins warm); when it wants to run again, if
    /// before the next tick: the loop then wakes up for it.
    fn upkeep(&mut self, now: Duration) -> Option<Duration> {
        let _ = now;
        None
    }
}

/// What the control callback tells the loop between batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Keep serving.
    Continue,
    /// Return from [`DataPath::run`].
    Stop,
}

/// How the interfaces are opened and the loop is paced.
#[derive(Clone, Debug)]
pub struct CaptureConfig {
    /// Kernel ring size per interface, bytes.
    pub buffer_bytes: usize,
    /// Bytes captured per frame; a longer frame is counted as truncated and dropped.
    pub snaplen: usize,
    /// Most frames read per interface per wake-up.
    pub batch: usize,
    /// Interval of [`Handler::tick`] and of the control callback when idle.
    pub tick: Duration,
    /// Interval at which pcap's drop counters are read and logged when they grew.
    pub stats_every: Duration,
    /// After a wake-up that handled frames, keep looking (non-blocking `poll`) this long before sleeping:
    /// the answer to a frame just sent often arrives within microseconds. Zero: always sleep at once.
    pub busy_poll: Duration,
    /// Interfaces whose frames a sender thread of their own sends: the data path thread hands the frames of
    /// each wake-up over to it through a ring (one copy) instead of running `sendmmsg` itself.
    pub send_threads: SendThreads,
    /// Slots of each sender thread's ring; a frame that finds it full is shed (counted, not sent).
    pub send_ring: usize,
    /// Send with `PACKET_QDISC_BYPASS`: frames go straight to the driver, past the qdisc layer (and past
    /// the taps, so a `tcpdump` on the director's own interfaces no longer sees what vipd sends).
    pub qdisc_bypass: bool,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            buffer_bytes: 32 << 20,
            snaplen: 2048,
            batch: 256,
            tick: Duration::from_millis(10),
            stats_every: Duration::from_secs(1),
            busy_poll: Duration::ZERO,
            send_threads: crate::config::DEFAULT_SEND_THREADS,
            send_ring: 4096,
            qdisc_bypass: true,
        }
    }
}

/// Counters of one interface, published by the loop once per wake-up (readers see them a batch late).
#[derive(Debug, Default)]
pub struct PortStats {
    /// Frames read from the capture.
    pub received: AtomicU64,
    /// Frames sent out of this interface.
    pub sent: AtomicU64,
    /// Sends that failed (e.g. `ENOBUFS`, `EMSGSIZE`).
    pub send_errors: AtomicU64,
    /// Frames not sent because this interface's sender thread had no room left in its ring.
    pub send_shed: AtomicU64,
    /// Frames longer than the snap length or the interface's MTU (offloads on): dropped.
    pub oversize: AtomicU64,
    /// Wake-ups that stopped at the batch bound with frames left in the ring.
    pub batch_full: AtomicU64,
    /// pcap's `ps_drop`: frames the kernel ring had no room for.
    pub pcap_drop: AtomicU64,
    /// pcap's `ps_ifdrop`: frames the interface dropped.
    pub pcap_ifdrop: AtomicU64,
}

/// Counters of both interfaces; shared with whoever reports them (logs, metrics).
#[derive(Debug, Default)]
pub struct CaptureStats {
    /// The outside interface.
    pub outside: PortStats,
    /// The inside interface.
    pub inside: PortStats,
}

impl CaptureStats {
    /// The counters of one interface.
    pub fn port(&self, iface: Interface) -> &PortStats {
        match iface {
            Interface::Outside => &self.outside,
            Interface::Inside => &self.inside,
        }
    }
}

/// Plain counters kept by the loop; published into [`PortStats`] once per wake-up.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    received: u64,
    sent: u64,
    send_errors: u64,
    /// Sent and failed by the sender thread (copied from its ring's counters before publishing).
    sender_sent: u64,
    sender_errors: u64,
    /// Frames the sender thread's ring had no room for.
    send_shed: u64,
    oversize: u64,
    batch_full: u64,
    pcap_drop: u64,
    pcap_ifdrop: u64,
}

impl Counts {
    fn publish(&self, to: &PortStats) {
        to.received.store(self.received, Ordering::Relaxed);
        to.sent
            .store(self.sent + self.sender_sent, Ordering::Relaxed);
        to.send_errors
            .store(self.send_errors + self.sender_errors, Ordering::Relaxed);
        to.send_shed.store(self.send_shed, Ordering::Relaxed);
        to.oversize.store(self.oversize, Ordering::Relaxed);
        to.batch_full.store(self.batch_full, Ordering::Relaxed);
        to.pcap_drop.store(self.pcap_drop, Ordering::Relaxed);
        to.pcap_ifdrop.store(self.pcap_ifdrop, Ordering::Relaxed);
    }
}

/// One opened interface.
struct Port {
    name: String,
    iface: Interface,
    cap: Capture<Active>,
    /// Longest frame accepted: MTU + Ethernet header + one VLAN tag.
    max_frame: usize,
    counts: Counts,
    /// Counts as of the last log line, to log growth only.
    logged: Counts,
}

impl Port {
    fn open(name: &str, iface: Interface, mtu: usize, cfg: &CaptureConfig) -> anyhow::Result<Port> {
        let what = || format!("opening {} interface {name:?} with libpcap", iface.as_str());
        let cap = Capture::from_device(name)
            .with_context(what)?
            .immediate_mode(true)
            .buffer_size(i32::try_from(cfg.buffer_bytes).unwrap_or(i32::MAX))
            .snaplen(i32::try_from(cfg.snaplen).unwrap_or(i32::MAX))
            .promisc(true)
            .open()
            .with_context(what)?
            .setnonblock()
            .with_context(what)?;
        cap.direction(Direction::In).with_context(what)?;
        ignore_outgoing(cap.as_fd()).with_context(what)?;
        if cfg.qdisc_bypass {
            const PACKET_QDISC_BYPASS: libc::c_int = 20;
            if let Err(e) = set_packet_option(cap.as_fd(), PACKET_QDISC_BYPASS) {
                tracing::warn!(interface = %name, "PACKET_QDISC_BYPASS refused, sending through the qdisc: {e}");
            }
        }
        Ok(Port {
            name: name.to_owned(),
            iface,
            cap,
            max_frame: mtu + 18,
            counts: Counts::default(),
            logged: Counts::default(),
        })
    }

    fn send(&mut self, frame: &[u8]) {
        match self.cap.sendpacket(frame) {
            Ok(()) => self.counts.sent += 1,
            Err(_) => self.counts.send_errors += 1,
        }
    }

    /// Sends `frames` (at most [`SEND_CHUNK`]) with as few `sendmmsg` calls as the kernel allows; a frame
    /// the kernel refuses is counted and skipped.
    fn send_many(&mut self, frames: &mut [libc::iovec], msgs: &mut [libc::mmsghdr]) {
        let n = frames.len().min(msgs.len());
        for (msg, iov) in msgs.iter_mut().zip(frames.iter_mut()) {
            msg.msg_hdr.msg_iov = iov;
            msg.msg_hdr.msg_iovlen = 1;
            msg.msg_len = 0;
        }
        let (sent, failed) = sendmmsg_all(self.cap.as_fd(), msgs, n);
        self.counts.sent += sent;
        self.counts.send_errors += failed;
    }

    /// Reads pcap's counters and logs what grew since the last call.
    fn report(&mut self) {
        if let Ok(s) = self.cap.stats() {
            self.counts.pcap_drop = u64::from(s.dropped);
            self.counts.pcap_ifdrop = u64::from(s.if_dropped);
        }
        let (now, was) = (self.counts, self.logged);
        if now.pcap_drop > was.pcap_drop || now.pcap_ifdrop > was.pcap_ifdrop {
            tracing::warn!(
                interface = %self.name,
                side = self.iface.as_str(),
                ring_drops = now.pcap_drop - was.pcap_drop,
                interface_drops = now.pcap_ifdrop - was.pcap_ifdrop,
                "capture dropped frames (kernel ring full: the loop is not keeping up)"
            );
        }
        let errors = |c: Counts| c.send_errors + c.sender_errors;
        if errors(now) > errors(was) {
            tracing::warn!(
                interface = %self.name,
                side = self.iface.as_str(),
                errors = errors(now) - errors(was),
                "sending frames failed"
            );
        }
        if now.send_shed > was.send_shed {
            tracing::warn!(
                interface = %self.name,
                side = self.iface.as_str(),
                frames = now.send_shed - was.send_shed,
                "shed frames: the sender thread's ring was full (the sender is not keeping up)"
            );
        }
        if now.oversize > was.oversize {
            tracing::warn!(
                interface = %self.name,
                side = self.iface.as_str(),
                frames = now.oversize - was.oversize,
                "dropped frames larger than the MTU: turn GRO/LRO off on this interface"
            );
        }
        self.logged = now;
    }
}

/// Asks the kernel not to loop our own sent frames back into this packet socket.
fn ignore_outgoing(fd: BorrowedFd<'_>) -> anyhow::Result<()> {
    const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
    set_packet_option(fd, PACKET_IGNORE_OUTGOING)
        .map_err(anyhow::Error::from)
        .context("setsockopt(PACKET_IGNORE_OUTGOING)")
}

/// Turns the `SOL_PACKET` boolean option `option` on for the packet socket `fd`.
fn set_packet_option(fd: BorrowedFd<'_>, option: libc::c_int) -> std::io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: `fd` is pcap's open packet socket; we pass a pointer to a live c_int and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            option,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// An eventfd owned by the data path; [`Waker`]s write to it to end a `poll` early.
struct EventFd(OwnedFd);

impl EventFd {
    fn new() -> anyhow::Result<Arc<EventFd>> {
        // SAFETY: plain syscall with constant flags, no pointers.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("eventfd");
        }
        // SAFETY: `fd` is a fresh descriptor that nobody else owns.
        Ok(Arc::new(EventFd(unsafe { OwnedFd::from_raw_fd(fd) })))
    }

    fn drain(&self) {
        let mut v = 0u64;
        // SAFETY: reads 8 bytes into a live u64 from our own non-blocking eventfd.
        unsafe { libc::read(self.0.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }
}

/// Wakes the data path loop from another thread (a signal handler thread, a reload): the loop then calls
/// its control callback at once instead of at the next tick.
#[derive(Clone)]
pub struct Waker(Arc<EventFd>);

impl Waker {
    /// Wakes the loop; cheap, never blocks.
    pub fn wake(&self) {
        let one = 1u64;
        // SAFETY: writes 8 bytes from a live u64 to the eventfd, which the Arc keeps open.
        unsafe { libc::write(self.0.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

/// Most frames handed to one `sendmmsg(2)` call.
pub const SEND_CHUNK: usize = 64;

/// The shortest sleep of the capture loop when no frame waits and no busy polling is on: work that is
/// already due (a tick, a keep-warm call) runs first, so this only bounds a loop that would otherwise spin.
const MIN_WAIT: Duration = Duration::from_micros(50);

/// Sends `msgs[..n]` on `fd` with as few `sendmmsg` calls as the kernel allows; a frame the kernel refuses
/// is skipped. Returns (sent, failed).
fn sendmmsg_all(fd: BorrowedFd<'_>, msgs: &mut [libc::mmsghdr], n: usize) -> (u64, u64) {
    let (mut sent, mut failed) = (0, 0);
    let mut done = 0;
    while done < n {
        // SAFETY: `msgs[done..n]` are initialised headers, each pointing at one live iovec that points at
        // frame bytes which outlive the call (the caller's contract). No address: the socket is bound.
        let rc = unsafe {
            libc::sendmmsg(
                fd.as_raw_fd(),
                msgs[done..].as_mut_ptr(),
                (n - done) as libc::c_uint,
                0,
            )
        };
        if rc > 0 {
            done += rc as usize;
            sent += rc as u64;
        } else {
            // The frame at `done` failed (or nothing was sent): count it and go on with the next.
            done += 1;
            failed += 1;
        }
    }
    (sent, failed)
}

/// The ring between the data path thread and one sender thread, as two ends that cannot be duplicated.
///
/// [`channel`](ring::channel) is the only way to make a [`Producer`](ring::Producer) and a
/// [`Consumer`](ring::Consumer), one of each per ring; neither is `Clone`, and writing or freeing slots takes
/// `&mut` of its end, so one thread at a time writes slots and one at a time frees them.
mod ring {
    use std::cell::UnsafeCell;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

    /// The storage both ends share.
    ///
    /// Slot `i % slots` holds a frame while `tail <= i < head`: the producer writes a slot only when it is
    /// free (`head - tail < slots`) and then publishes it by advancing `head` (Release); the consumer reads
    /// the slots below `head` (Acquire) and frees them by advancing `tail` (Release) after they were sent.
    pub(super) struct TxRing {
        arena: Box<[UnsafeCell<u8>]>,
        lens: Box<[UnsafeCell<u32>]>,
        slot_len: usize,
        head: AtomicUsize,
        tail: AtomicUsize,
        /// Set when the producer's owner goes away: the consumer returns once the ring is empty.
        pub(super) stop: AtomicBool,
        /// Frames sent, counted by the consumer.
        pub(super) sent: AtomicU64,
        /// Frames the kernel refused, counted by the consumer.
        pub(super) failed: AtomicU64,
    }

    // SAFETY: slots are written only through the one `Producer` and read only through the one `Consumer`
    // (`channel` makes one of each, neither is `Clone`, the fields are private to this module), which by the
    // head/tail protocol above never access the same slot at the same time; everything else is atomic.
    unsafe impl Sync for TxRing {}

    impl TxRing {
        fn slots(&self) -> usize {
            self.lens.len()
        }
    }

    /// A ring of `slots` frames of at most `slot_len` bytes each, allocated once, and its two ends.
    pub(super) fn channel(slots: usize, slot_len: usize) -> (Producer, Consumer) {
        let ring = Arc::new(TxRing {
            arena: (0..slots * slot_len).map(|_| UnsafeCell::new(0)).collect(),
            lens: (0..slots).map(|_| UnsafeCell::new(0)).collect(),
            slot_len,
            head: AtomicUsize::new(0),
            tail: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        });
        (
            Producer {
                ring: Arc::clone(&ring),
            },
            Consumer { ring },
        )
    }

    /// The data path thread's end: the only one that writes slots and advances `head`.
    pub(super) struct Producer {
        ring: Arc<TxRing>,
    }

    impl Producer {
        /// The shared storage, for its counters and its stop flag.
        pub(super) fn ring(&self) -> &Arc<TxRing> {
            &self.ring
        }

        /// True when every frame handed over has been sent and counted (the consumer counts before it
        /// frees the slots).
        pub(super) fn is_drained(&self) -> bool {
            self.ring.tail.load(Ordering::Acquire) == self.ring.head.load(Ordering::Relaxed)
        }

        /// Copies `frame` into the next free slot; false when the ring is full.
        pub(super) fn push(&mut self, frame: &[u8]) -> bool {
            let ring = &*self.ring;
            let head = ring.head.load(Ordering::Relaxed);
            if head - ring.tail.load(Ordering::Acquire) >= ring.slots() {
                return false;
            }
            let slot = head % ring.slots();
            let len = frame.len().min(ring.slot_len);
            // SAFETY: slot `head` is free (checked above): the consumer does not read it until `head` moves
            // past it, and this producer (`&mut self`) is the only writer.
            unsafe {
                let at = ring.arena.as_ptr().add(slot * ring.slot_len) as *mut u8;
                std::ptr::copy_nonoverlapping(frame.as_ptr(), at, len);
                *ring.lens[slot].get() = len as u32;
            }
            ring.head.store(head + 1, Ordering::Release);
            true
        }
    }

    /// The sender thread's end: the only one that reads slots and advances `tail`.
    pub(super) struct Consumer {
        ring: Arc<TxRing>,
    }

    impl Consumer {
        /// The shared storage, for its counters and its stop flag.
        pub(super) fn ring(&self) -> &Arc<TxRing> {
            &self.ring
        }

        /// The oldest published frames, at most `max`, oldest first; they stay valid until [`Self::done`].
        pub(super) fn published(&self, max: usize) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
            let ring = &*self.ring;
            let tail = ring.tail.load(Ordering::Relaxed);
            let head = ring.head.load(Ordering::Acquire);
            (tail..tail + (head - tail).min(max)).map(move |i| {
                let slot = i % ring.slots();
                // SAFETY: slots tail..head were published by the producer (Acquire above) and stay the
                // consumer's until `tail` moves past them, which takes `&mut self` after this borrow ends.
                unsafe {
                    let len = *ring.lens[slot].get() as usize;
                    let at = ring.arena.as_ptr().add(slot * ring.slot_len) as *const u8;
                    std::slice::from_raw_parts(at, len)
                }
            })
        }

        /// Counts the oldest `n` published frames as `sent` and `failed`, then frees their slots (in that
        /// order, so [`Producer::is_drained`] implies whole counters).
        pub(super) fn done(&mut self, n: usize, sent: u64, failed: u64) {
            let ring = &*self.ring;
            let tail = ring.tail.load(Ordering::Relaxed);
            debug_assert!(n <= ring.head.load(Ordering::Relaxed) - tail);
            ring.sent.fetch_add(sent, Ordering::Relaxed);
            ring.failed.fetch_add(failed, Ordering::Relaxed);
            ring.tail.store(tail + n, Ordering::Release);
        }
    }
}

/// A thread that sends the frames of one interface, handed over through its ring's [`ring::Producer`].
struct Sender {
    producer: ring::Producer,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sender {
    /// Starts the thread that sends on `fd`.
    ///
    /// # Safety
    ///
    /// `fd` must stay open until the returned `Sender` is dropped: the thread sends on it until then.
    unsafe fn spawn(
        name: &str,
        fd: BorrowedFd<'_>,
        slots: usize,
        slot_len: usize,
    ) -> anyhow::Result<Sender> {
        let (producer, consumer) = ring::channel(slots, slot_len);
        let raw = fd.as_raw_fd();
        let thread = std::thread::Builder::new()
            .name(format!("vipd-tx-{name}"))
            .spawn(move || {
                // SAFETY: the caller keeps the descriptor open until the `Sender` is dropped, and dropping
                // it joins this thread.
                let fd = unsafe { BorrowedFd::borrow_raw(raw) };
                sender_loop(consumer, fd)
            })
            .with_context(|| format!("starting the sender thread of {name:?}"))?;
        Ok(Sender {
            producer,
            thread: Some(thread),
        })
    }

    /// Wakes the thread if it sleeps; a few atomic operations when it does not.
    fn wake(&self) {
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.producer.ring().stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// The sender thread: sends what the ring holds, [`SEND_CHUNK`] frames per `sendmmsg`, and sleeps when it is
/// empty until the data path wakes it (after new frames, or to stop: it returns once the ring is empty and
/// `stop` is set, so what was handed over before the stop still goes out).
fn sender_loop(mut consumer: ring::Consumer, fd: BorrowedFd<'_>) {
    // SAFETY: iovec and mmsghdr are plain C structs for which all-zero bytes are valid values.
    let mut iov: [libc::iovec; SEND_CHUNK] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut msgs: [libc::mmsghdr; SEND_CHUNK] = unsafe { std::mem::zeroed() };
    loop {
        let frames = consumer.published(SEND_CHUNK);
        let n = frames.len();
        if n == 0 {
            if consumer.ring().stop.load(Ordering::Acquire) {
                return;
            }
            // An `unpark` that came before this call makes it return at once: no wake-up is lost.
            std::thread::park();
            continue;
        }
        for ((io, msg), frame) in iov.iter_mut().zip(msgs.iter_mut()).zip(frames) {
            *io = libc::iovec {
                iov_base: frame.as_ptr() as *mut libc::c_void,
                iov_len: frame.len(),
            };
            msg.msg_hdr.msg_iov = io;
            msg.msg_hdr.msg_iovlen = 1;
            msg.msg_len = 0;
        }
        let (sent, failed) = sendmmsg_all(fd, &mut msgs, n);
        consumer.done(n, sent, failed);
    }
}

/// The frames of one wake-up: each is read into a slot, handled in place and, when it is to be sent, stays
/// there until [`DataPath::flush`] sends every pending slot out of its interface.
struct TxBatch {
    /// `slots` × `slot_len` bytes, allocated once.
    arena: Box<[u8]>,
    slot_len: usize,
    /// Destination and length of the slots in use, in handling order (capacity: `slots`, never grown).
    pending: Vec<(Interface, usize)>,
}

impl TxBatch {
    fn new(slots: usize, slot_len: usize) -> TxBatch {
        TxBatch {
            arena: vec![0; slots * slot_len].into_boxed_slice(),
            slot_len,
            pending: Vec::with_capacity(slots),
        }
    }

    fn is_full(&self) -> bool {
        self.pending.len() == self.pending.capacity()
    }

    /// The next free slot.
    fn slot(&mut self) -> &mut [u8] {
        let at = self.pending.len() * self.slot_len;
        &mut self.arena[at..at + self.slot_len]
    }
}

/// Both interfaces and the loop that serves them on one thread.
pub struct DataPath {
    outside: Port,
    inside: Port,
    wake: Arc<EventFd>,
    stats: Arc<CaptureStats>,
    cfg: CaptureConfig,
    epoch: Instant,
    /// The frames being handled in this wake-up, and those waiting to be sent.
    tx: TxBatch,
    /// The sender thread of each interface that has one (index: `Interface as usize`).
    senders: Sides<Option<Sender>>,
    /// The last wake-up stopped at its batch bound with frames left in a ring.
    behind: bool,
}

impl DataPath {
    /// Opens both interfaces. `*_mtu` bound the frames accepted (see [`crate::ifcheck`]); `epoch` is the
    /// instant `now` counts from, shared with whoever else hands `now` to the director.
    pub fn open(
        outside: (&str, usize),
        inside: (&str, usize),
        cfg: CaptureConfig,
        epoch: Instant,
    ) -> anyhow::Result<DataPath> {
        if cfg.batch == 0 || cfg.snaplen < 64 {
            bail!("capture: batch must be > 0 and snaplen >= 64");
        }
        let outside = Port::open(outside.0, Interface::Outside, outside.1, &cfg)?;
        let inside = Port::open(inside.0, Interface::Inside, inside.1, &cfg)?;
        let mut senders = Sides::new(None, None);
        for port in [&outside, &inside] {
            if cfg.send_threads[port.iface] {
                // SAFETY: the thread sends on the capture's own packet socket, which outlives it: `Drop for
                // DataPath` joins the senders before the captures close, and here `senders` is dropped
                // before `outside` and `inside` if opening fails half-way.
                let sender = unsafe {
                    Sender::spawn(
                        port.iface.as_str(),
                        port.cap.as_fd(),
                        cfg.send_ring.max(SEND_CHUNK),
                        cfg.snaplen,
                    )
                }?;
                senders[port.iface] = Some(sender);
            }
        }
        Ok(DataPath {
            outside,
            inside,
            senders,
            wake: EventFd::new()?,
            stats: Arc::new(CaptureStats::default()),
            // One wake-up reads at most `batch` frames from each interface.
            tx: TxBatch::new(2 * cfg.batch, cfg.snaplen),
            cfg,
            epoch,
            behind: false,
        })
    }

    /// A handle that ends the loop's current wait.
    pub fn waker(&self) -> Waker {
        Waker(self.wake.clone())
    }

    /// The counters of both interfaces, updated once per wake-up.
    pub fn stats(&self) -> Arc<CaptureStats> {
        self.stats.clone()
    }

    /// Publishes both interfaces' counters, the sender threads' included.
    fn publish(&mut self) {
        for (port, sender) in [
            (&mut self.outside, &self.senders.outside),
            (&mut self.inside, &self.senders.inside),
        ] {
            if let Some(sender) = sender {
                let ring = sender.producer.ring();
                port.counts.sender_sent = ring.sent.load(Ordering::Relaxed);
                port.counts.sender_errors = ring.failed.load(Ordering::Relaxed);
            }
        }
        self.outside.counts.publish(&self.stats.outside);
        self.inside.counts.publish(&self.stats.inside);
    }

    fn port(&mut self, iface: Interface) -> &mut Port {
        match iface {
            Interface::Outside => &mut self.outside,
            Interface::Inside => &mut self.inside,
        }
    }

    /// Serves both interfaces until `control` returns [`Control::Stop`].
    ///
    /// `control` runs on this thread between batches: at every wake-up and at least every tick. It gets the
    /// handler, so a reload (a new config published by another thread) is applied here, between frames.
    pub fn run<H: Handler + ?Sized>(
        &mut self,
        handler: &mut H,
        control: &mut dyn FnMut(&mut H) -> Control,
    ) -> anyhow::Result<()> {
        let mut fds = [
            pollfd(self.outside.cap.as_fd()),
            pollfd(self.inside.cap.as_fd()),
            pollfd(self.wake.0.as_fd()),
        ];
        let mut next_tick = self.epoch.elapsed();
        let mut next_stats = next_tick + self.cfg.stats_every;
        // Until then the loop polls without sleeping (see `CaptureConfig::busy_poll`).
        let mut spin_until = next_tick;
        tracing::info!(
            outside = %self.outside.name,
            inside = %self.inside.name,
            batch = self.cfg.batch,
            sender_threads = match (
                self.senders.outside.is_some(),
                self.senders.inside.is_some(),
            ) {
                (false, false) => "none",
                (true, false) => "outside",
                (false, true) => "inside",
                (true, true) => "both",
            },
            qdisc_bypass = self.cfg.qdisc_bypass,
            "data path running"
        );
        loop {
            if control(handler) == Control::Stop {
                break;
            }
            let now = self.epoch.elapsed();
            if now >= next_tick {
                let (outside, inside) = (&mut self.outside, &mut self.inside);
                handler.tick(now, &mut |iface, frame| match iface {
                    Interface::Outside => outside.send(frame),
                    Interface::Inside => inside.send(frame),
                });
                next_tick = now + self.cfg.tick;
            }
            if now >= next_stats {
                self.publish();
                self.outside.report();
                self.inside.report();
                next_stats = now + self.cfg.stats_every;
            }
            let now = self.epoch.elapsed();
            let wake_by = handler.upkeep(now).map_or(next_tick, |t| t.min(next_tick));
            // To the microsecond (ppoll): keep-warm calls come every `plugin_keep_warm`, not every whole
            // millisecond above it.
            let wait = if now < spin_until {
                Duration::ZERO
            } else {
                wake_by.saturating_sub(now).max(MIN_WAIT)
            };
            let timeout = libc::timespec {
                tv_sec: wait.as_secs().min(i32::MAX as u64) as libc::time_t,
                tv_nsec: wait.subsec_nanos() as libc::c_long,
            };
            for fd in &mut fds {
                fd.revents = 0;
            }
            // SAFETY: `fds` is a live array of 3 pollfd and `timeout` a valid timespec for the duration of
            // the call; no signal mask is passed.
            let rc = unsafe {
                libc::ppoll(
                    fds.as_mut_ptr(),
                    fds.len() as libc::nfds_t,
                    &timeout,
                    std::ptr::null(),
                )
            };
            if rc < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err).context("poll on the capture descriptors");
            }
            if fds[2].revents != 0 {
                self.wake.drain();
            }
            if (fds[0].revents != 0 || fds[1].revents != 0)
                && self.drain(handler) > 0
                && !self.cfg.busy_poll.is_zero()
            {
                spin_until = self.epoch.elapsed() + self.cfg.busy_poll;
            }
        }
        // Let the sender threads finish what was handed to them, so the last counters are whole.
        let deadline = Instant::now() + Duration::from_millis(100);
        for sender in [&self.senders.outside, &self.senders.inside]
            .into_iter()
            .flatten()
        {
            while !sender.producer.is_drained() && Instant::now() < deadline {
                std::thread::yield_now();
            }
        }
        self.publish();
        self.outside.report();
        self.inside.report();
        Ok(())
    }

    /// Reads up to `batch` frames from each interface, alternating, and handles them; returns how many.
    fn drain<H: Handler + ?Sized>(&mut self, handler: &mut H) -> u64 {
        let before = self.outside.counts.received + self.inside.counts.received;
        let now = self.epoch.elapsed();
        let mut open = [true, true];
        let mut n = 0;
        handler.wakeup(self.behind);
        while n < self.cfg.batch && (open[0] || open[1]) {
            for (i, iface) in [Interface::Outside, Interface::Inside]
                .into_iter()
                .enumerate()
            {
                if open[i] {
                    open[i] = self.one(iface, handler, now);
                }
            }
            n += 1;
        }
        self.flush();
        self.behind = open[0] || open[1];
        for (i, iface) in [Interface::Outside, Interface::Inside]
            .into_iter()
            .enumerate()
        {
            if open[i] {
                self.port(iface).counts.batch_full += 1;
            }
        }
        self.publish();
        self.outside.counts.received + self.inside.counts.received - before
    }

    /// Handles one frame from `iface` in the next transmit slot; false when its ring is empty (or failed).
    fn one<H: Handler + ?Sized>(
        &mut self,
        iface: Interface,
        handler: &mut H,
        now: Duration,
    ) -> bool {
        if self.tx.is_full() {
            self.flush();
        }
        let frame = self.tx.slot();
        let port = match iface {
            Interface::Outside => &mut self.outside,
            Interface::Inside => &mut self.inside,
        };
        let len = match port.cap.next_packet() {
            Ok(p) => {
                port.counts.received += 1;
                let wire_len = p.header.len as usize;
                if wire_len > p.data.len() || wire_len > port.max_frame {
                    port.counts.oversize += 1;
                    return true;
                }
                frame[..p.data.len()].copy_from_slice(p.data);
                p.data.len()
            }
            // Non-blocking: nothing left in the ring.
            Err(_) => return false,
        };
        match handler.handle(iface, &mut frame[..len], now) {
            Action::Send(to) => self.tx.pending.push((to, len)),
            Action::SendBoth { forward, reply: to } => {
                self.tx.pending.push((forward, len));
                if self.tx.is_full() {
                    self.flush();
                }
                let reply = handler.reply();
                let slot = self.tx.slot();
                if reply.len() <= slot.len() {
                    slot[..reply.len()].copy_from_slice(reply);
                    self.tx.pending.push((to, reply.len()));
                } else {
                    self.port(to).send(reply);
                }
            }
            Action::SendReply(to) => {
                let reply = handler.reply();
                if reply.len() <= frame.len() {
                    frame[..reply.len()].copy_from_slice(reply);
                    self.tx.pending.push((to, reply.len()));
                } else {
                    self.port(to).send(reply);
                }
            }
            Action::Done => {}
        }
        true
    }

    /// Sends every pending frame out of its interface, in handling order per interface, and empties the batch.
    fn flush(&mut self) {
        let DataPath {
            outside,
            inside,
            tx,
            senders,
            ..
        } = self;
        for (iface, port) in [(Interface::Outside, outside), (Interface::Inside, inside)] {
            if let Some(sender) = &mut senders[iface] {
                let mut handed = false;
                for (slot, &(to, len)) in tx.pending.iter().enumerate() {
                    if to == iface {
                        let at = slot * tx.slot_len;
                        if sender.producer.push(&tx.arena[at..at + len]) {
                            handed = true;
                        } else {
                            port.counts.send_shed += 1;
                        }
                    }
                }
                if handed {
                    sender.wake();
                }
                continue;
            }
            // SAFETY: iovec and mmsghdr are plain C structs for which all-zero bytes (null pointers, zero
            // lengths) are valid values.
            let mut iov: [libc::iovec; SEND_CHUNK] = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            let mut msgs: [libc::mmsghdr; SEND_CHUNK] = unsafe { std::mem::zeroed() };
            let mut n = 0;
            for (slot, &(to, len)) in tx.pending.iter().enumerate() {
                if to != iface {
                    continue;
                }
                let at = slot * tx.slot_len;
                iov[n] = libc::iovec {
                    iov_base: tx.arena[at..at + len].as_ptr() as *mut libc::c_void,
                    iov_len: len,
                };
                n += 1;
                if n == SEND_CHUNK {
                    port.send_many(&mut iov, &mut msgs);
                    n = 0;
                }
            }
            if n > 0 {
                port.send_many(&mut iov[..n], &mut msgs[..n]);
            }
        }
        tx.pending.clear();
    }
}

impl Drop for DataPath {
    fn drop(&mut self) {
        // Stop and join the sender threads while the packet sockets they send on are still open.
        self.senders = Sides::new(None, None);
    }
}

fn pollfd(fd: BorrowedFd<'_>) -> libc::pollfd {
    libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    /// The defaults follow the measured design: immediate mode sizes, a bounded batch, a 10 ms tick.
    fn defaults_are_sane() {
        let c = CaptureConfig::default();
        assert!(c.snaplen >= 1518 + 4 && c.batch >= 64 && c.tick <= Duration::from_millis(100));
    }

    /// A datagram socket pair standing in for a packet socket: `sendmmsg` works the same on it.
    fn socket_pair() -> (OwnedFd, OwnedFd) {
        let (a, b) = std::os::unix::net::UnixDatagram::pair().expect("socketpair");
        (a.into(), b.into())
    }

    fn recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> usize {
        // SAFETY: reads into a live buffer of its own length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        assert!(n >= 0, "recv: {}", std::io::Error::last_os_error());
        n as usize
    }

    #[test]
    /// Every frame handed to a sender thread goes out once, whole and in order, through a ring much smaller
    /// than the number of frames (so slots are reused many times); a full ring refuses instead of blocking.
    fn sender_thread_sends_everything_in_order() {
        let (tx_fd, rx_fd) = socket_pair();
        // SAFETY: `tx_fd` is declared first, so it outlives `sender` even when the test panics.
        let mut sender = unsafe { Sender::spawn("test", tx_fd.as_fd(), 8, 64) }.unwrap();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 128];
            (0..5000u32)
                .map(|_| {
                    let n = recv(rx_fd.as_fd(), &mut buf);
                    buf[..n].to_vec()
                })
                .collect::<Vec<_>>()
        });
        let mut refused = 0;
        for i in 0..5000u32 {
            let frame: Vec<u8> = i
                .to_be_bytes()
                .iter()
                .copied()
                .cycle()
                .take(4 + (i % 60) as usize)
                .collect();
            while !sender.producer.push(&frame) {
                refused += 1;
                sender.wake();
                std::thread::yield_now();
            }
            sender.wake();
        }
        let got = reader.join().unwrap();
        for (i, frame) in got.iter().enumerate() {
            let i = i as u32;
            assert_eq!(frame.len(), 4 + (i % 60) as usize, "frame {i}");
            assert_eq!(frame[..4], i.to_be_bytes(), "frame {i} out of order");
        }
        // The thread counts a batch after its `sendmmsg` returned, which can be after the reader got it:
        // join the thread (drop) before reading its counters.
        let ring = Arc::clone(sender.producer.ring());
        drop(sender);
        assert_eq!(ring.sent.load(Ordering::Relaxed), 5000);
        assert_eq!(ring.failed.load(Ordering::Relaxed), 0);
        assert!(
            refused > 0,
            "an 8-slot ring never filled up with 5000 frames"
        );
    }

    #[test]
    /// Dropping a sender joins its thread, also while it sleeps on an empty ring (it is woken, not
    /// waited out).
    fn sender_thread_stops_when_dropped() {
        let (tx_fd, _rx_fd) = socket_pair();
        // SAFETY: `tx_fd` is declared first, so it outlives `sender` even when the test panics.
        let sender = unsafe { Sender::spawn("test", tx_fd.as_fd(), 8, 64) }.unwrap();
        let ring = Arc::clone(sender.producer.ring());
        drop(sender);
        assert!(ring.stop.load(Ordering::Relaxed));
        assert_eq!(
            Arc::strong_count(&ring),
            1,
            "the sender thread still holds the ring"
        );
    }

    #[test]
    /// A waker can be used from another thread and drained without blocking.
    fn waker_wakes_poll() {
        let fd = EventFd::new().unwrap();
        let w = Waker(fd.clone());
        std::thread::spawn(move || w.wake()).join().unwrap();
        let mut p = [pollfd(fd.0.as_fd())];
        // SAFETY: one live pollfd.
        let rc = unsafe { libc::poll(p.as_mut_ptr(), 1, 1000) };
        assert_eq!(rc, 1);
        fd.drain();
        // SAFETY: one live pollfd.
        let rc = unsafe { libc::poll(p.as_mut_ptr(), 1, 0) };
        assert_eq!(rc, 0);
    }
}
