//! A bounded SYN flooder for the flood benchmark (`host/benches/compare/compare.sh` with `FLOOD_RATES`):
//! TCP SYNs from spoofed sources to one address and port, at a target rate, for a given time, then it stops
//! by itself and prints how many it sent and at what rate.
//!
//! Run it inside the benchmark's client namespace only: the sources are `PREFIX.100` to `PREFIX.249` with
//! pseudo-random ports (addresses of the benchmark's own client network that no host holds, so the servers'
//! SYN-ACKs are dropped by the client's kernel and every SYN leaves a half-open connection), and the
//! destination is the benchmark's virtual address. Raw IPv4 socket (`IP_HDRINCL`), `sendmmsg` in batches,
//! paced against the clock; TCP checksums are correct, so the SYNs are valid.
//!
//! Usage: synflood DST PORT RATE SECONDS [PREFIX=198.51.100]

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

const BATCH: usize = 64;
const FRAME: usize = 40;

fn sum16(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// One IPv4 + TCP SYN (no options) from `src:sport` to `dst:dport` with sequence number `seq`.
fn syn(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, seq: u32, out: &mut [u8; FRAME]) {
    out.fill(0);
    out[0] = 0x45;
    out[2..4].copy_from_slice(&(FRAME as u16).to_be_bytes());
    out[8] = 64;
    out[9] = 6;
    out[12..16].copy_from_slice(&src.octets());
    out[16..20].copy_from_slice(&dst.octets());
    let ip_sum = fold(sum16(&out[..20]));
    out[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    let t = &mut out[20..];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x02;
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    let pseudo = sum16(&src.octets()) + sum16(&dst.octets()) + 6 + 20;
    let tcp_sum = fold(pseudo + sum16(&out[20..]));
    out[36..38].copy_from_slice(&tcp_sum.to_be_bytes());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: synflood DST PORT RATE SECONDS [PREFIX=198.51.100]");
        std::process::exit(2);
    }
    let dst: Ipv4Addr = args[1].parse().expect("DST is an IPv4 address");
    let port: u16 = args[2].parse().expect("PORT");
    let rate: f64 = args[3].parse().expect("RATE (SYN/s)");
    let seconds: f64 = args[4].parse().expect("SECONDS");
    let prefix: [u8; 3] = {
        let p = args.get(5).map_or("198.51.100", String::as_str);
        let v: Vec<u8> = p.split('.').map(|x| x.parse().expect("PREFIX")).collect();
        [v[0], v[1], v[2]]
    };
    // SAFETY: a plain socket(2) call; the descriptor is checked and closed at exit.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    let sndbuf: libc::c_int = 4 << 20;
    // SAFETY: setsockopt with a pointer to a live c_int of the size given.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&sndbuf as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    // SAFETY: sockaddr_in is a plain C struct for which all-zero bytes are a valid value.
    let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    to.sin_family = libc::AF_INET as libc::sa_family_t;
    to.sin_addr.s_addr = u32::from_ne_bytes(dst.octets());
    let mut frames = [[0u8; FRAME]; BATCH];
    // SAFETY: iovec and mmsghdr are plain C structs for which all-zero bytes are valid values.
    let mut iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    let (mut state, mut sent, mut failed) = (0x9e37_79b9_u32, 0u64, 0u64);
    let start = Instant::now();
    let end = Duration::from_secs_f64(seconds);
    loop {
        let elapsed = start.elapsed();
        if elapsed >= end {
            break;
        }
        let due = (rate * elapsed.as_secs_f64()) as u64;
        if sent + failed >= due {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        let n = ((due - sent - failed) as usize).min(BATCH);
        for k in 0..n {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let host = 100 + (state >> 24) as u8 % 150;
            let sport = 1024 + (state & 0xffff) as u16 % 60000;
            let src = Ipv4Addr::new(prefix[0], prefix[1], prefix[2], host);
            syn(src, sport, dst, port, state, &mut frames[k]);
            iov[k] = libc::iovec {
                iov_base: frames[k].as_mut_ptr().cast(),
                iov_len: FRAME,
            };
            msgs[k].msg_hdr.msg_iov = &mut iov[k];
            msgs[k].msg_hdr.msg_iovlen = 1;
            msgs[k].msg_hdr.msg_name = (&mut to as *mut libc::sockaddr_in).cast();
            msgs[k].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
        }
        // SAFETY: msgs[..n] point at live iovecs, frames and `to`, all outliving the call.
        let r = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), n as u32, 0) };
        if r > 0 {
            sent += r as u64;
        } else {
            // A full socket buffer: count the batch as not sent and go on (the rate is a target).
            failed += n as u64;
        }
    }
    // SAFETY: closing the descriptor this program opened.
    unsafe { libc::close(fd) };
    let secs = start.elapsed().as_secs_f64();
    println!(
        "sent {sent} SYNs in {secs:.1} s ({:.0}/s), {failed} not sent (socket buffer full)",
        sent as f64 / secs
    );
}
