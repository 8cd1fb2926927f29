//! `vipd replay`: drives the director from pcap files, as if each file's frames arrived on that interface,
//! and writes every frame the director sends to pcap files.
//!
//! Frames of the two inputs are merged in timestamp order and the capture's timestamps are the director's
//! `now`, so timeouts behave as they would have live. What the director generates on its periodic tick (ARP
//! requests, gratuitous ARP) is written too, stamped with the time of the frame that preceded it.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use pcap::{Capture, Linktype, Offline, PacketHeader, Savefile};

use crate::assemble::Assembly;
use crate::director::{Counters, Layer2, Verdict};
use crate::wire::{self, Transport};
use crate::{Interface, Sides};

/// How often, in capture time, the director's tick runs during a replay.
const TICK: Duration = Duration::from_millis(100);

/// What to replay and where to write it.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    pub outside: Option<PathBuf>,
    pub inside: Option<PathBuf>,
    pub write_outside: Option<PathBuf>,
    pub write_inside: Option<PathBuf>,
    pub layer2: Layer2,
}

/// What happened to one input frame; `vipd replay` prints one line per frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub time: Duration,
    pub from: Interface,
    pub verdict: Verdict,
    /// The frame as it arrived and, for a forwarded or generated frame, as it left.
    pub before: String,
    pub after: Option<String>,
    /// The connection this frame opened, if it opened one.
    pub opened: Option<Opened>,
}

/// A connection a frame opened: who, to which virtual port, and the real server the policy chose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    pub client: SocketAddr,
    pub virtual_addr: SocketAddr,
    pub real: SocketAddr,
    /// The real server's name in the config.
    pub real_name: String,
}

/// Totals of a replay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub frames_in: Sides<u64>,
    pub frames_out: Sides<u64>,
    /// The director's counters at the end of the replay.
    pub counters: Counters,
}

/// Replays the inputs through a director built from `assembly` (exactly as `vipd run` would serve it:
/// the same bindings, binders and policies), calling `on_event` per input frame.
pub fn replay(
    assembly: Assembly,
    options: &ReplayOptions,
    mut on_event: impl FnMut(&Event),
) -> Result<Summary> {
    let mut director = assembly.director(options.layer2);
    let mut inputs = Sides::new(
        open_input(options.outside.as_deref())?,
        open_input(options.inside.as_deref())?,
    );
    let mut outputs = Sides::new(
        open_output(options.write_outside.as_deref())?,
        open_output(options.write_inside.as_deref())?,
    );
    let mut heads = Sides::new(
        next_frame(&mut inputs.outside)?,
        next_frame(&mut inputs.inside)?,
    );
    let mut summary = Summary::default();
    let mut next_tick = Duration::ZERO;
    let mut buf = Vec::with_capacity(65536);

    loop {
        // The earlier of the two heads; on a tie the outside goes first.
        let from = match (&heads.outside, &heads.inside) {
            (Some(a), Some(b)) if b.0 < a.0 => Interface::Inside,
            (Some(_), _) => Interface::Outside,
            (None, Some(_)) => Interface::Inside,
            (None, None) => break,
        };
        let Some((time, header, data)) = heads[from].take() else {
            break;
        };
        heads[from] = next_frame(&mut inputs[from])?;
        summary.frames_in[from] += 1;

        if time >= next_tick {
            next_tick = time + TICK;
            let mut sent: Vec<(Interface, Vec<u8>)> = Vec::new();
            director.tick(time, &mut |to, frame| sent.push((to, frame.to_vec())));
            for (to, frame) in sent {
                write_frame(&mut outputs, &mut summary, to, &header, &frame);
            }
        }

        buf.clear();
        buf.extend_from_slice(&data);
        let before = describe(&buf);
        let created = director.counters().connections_created;
        let key = wire::parse(&buf).ok().and_then(|p| {
            let protocol = p.protocol()?;
            let (sport, dport) = p.ports()?;
            Some((
                protocol,
                SocketAddr::new(p.src, sport),
                SocketAddr::new(p.dst, dport),
            ))
        });
        let verdict = director.handle(from, &mut buf, time);
        let opened = key
            .filter(|_| director.counters().connections_created > created)
            .and_then(|(protocol, client, virtual_addr)| {
                let id = director.table().lookup_inbound(
                    protocol,
                    client.into(),
                    virtual_addr.into(),
                )?;
                let conn = director.table().get(id);
                let real_name = director
                    .bindings()
                    .reals
                    .get(conn.real_id as usize)?
                    .name
                    .clone();
                Some(Opened {
                    client,
                    virtual_addr,
                    real: conn.real.into(),
                    real_name,
                })
            });
        let after = match verdict {
            Verdict::Forward(to) => {
                write_frame(&mut outputs, &mut summary, to, &header, &buf);
                Some(describe(&buf))
            }
            Verdict::Reply(to) => {
                let reply = director.reply().to_vec();
                write_frame(&mut outputs, &mut summary, to, &header, &reply);
                Some(describe(&reply))
            }
            Verdict::ForwardAndReply { forward, reply } => {
                write_frame(&mut outputs, &mut summary, forward, &header, &buf);
                let generated = director.reply().to_vec();
                write_frame(&mut outputs, &mut summary, reply, &header, &generated);
                Some(describe(&buf))
            }
            Verdict::Drop(_) | Verdict::Consumed => None,
        };
        on_event(&Event {
            time,
            from,
            verdict,
            before,
            after,
            opened,
        });
    }
    for out in outputs.iter_mut().filter_map(|(_, out)| out.as_mut()) {
        out.flush().context("flushing an output capture")?;
    }
    summary.counters = director.counters().clone();
    Ok(summary)
}

fn open_input(path: Option<&Path>) -> Result<Option<Capture<Offline>>> {
    let Some(path) = path else { return Ok(None) };
    let capture = Capture::from_file(path)
        .with_context(|| format!("{}: cannot open as a pcap capture", path.display()))?;
    anyhow::ensure!(
        capture.get_datalink() == Linktype::ETHERNET,
        "{}: link type {:?} is not Ethernet",
        path.display(),
        capture.get_datalink()
    );
    Ok(Some(capture))
}

fn open_output(path: Option<&Path>) -> Result<Option<Savefile>> {
    let Some(path) = path else { return Ok(None) };
    let dead =
        Capture::dead(Linktype::ETHERNET).context("libpcap: cannot create a capture to write")?;
    let file = dead
        .savefile(path)
        .with_context(|| format!("{}: cannot create", path.display()))?;
    Ok(Some(file))
}

type Frame = (Duration, PacketHeader, Vec<u8>);

fn next_frame(input: &mut Option<Capture<Offline>>) -> Result<Option<Frame>> {
    let Some(capture) = input else {
        return Ok(None);
    };
    match capture.next_packet() {
        Ok(packet) => {
            let h = *packet.header;
            let time = Duration::new(
                h.ts.tv_sec.max(0) as u64,
                (h.ts.tv_usec.max(0) as u32).min(999_999) * 1000,
            );
            Ok(Some((time, h, packet.data.to_vec())))
        }
        Err(pcap::Error::NoMorePackets) => Ok(None),
        Err(e) => Err(e).context("reading an input capture"),
    }
}

fn write_frame(
    outputs: &mut Sides<Option<Savefile>>,
    summary: &mut Summary,
    to: Interface,
    at: &PacketHeader,
    frame: &[u8],
) {
    summary.frames_out[to] += 1;
    if let Some(out) = &mut outputs[to] {
        let header = PacketHeader {
            ts: at.ts,
            caplen: frame.len() as u32,
            len: frame.len() as u32,
        };
        out.write(&pcap::Packet::new(&header, frame));
    }
}

/// One line for a frame: `TCP 198.51.100.2:40000 > 192.0.2.1:80 [S]`.
pub fn describe(frame: &[u8]) -> String {
    if let Some(arp) = wire::parse_arp(frame) {
        return format!(
            "ARP {:?} who-has {} tell {}",
            arp.operation, arp.target_ip, arp.sender_ip
        );
    }
    let p = match wire::parse(frame) {
        Ok(p) => p,
        Err(e) => return format!("malformed ({})", e.as_str()),
    };
    match p.transport {
        Transport::Tcp {
            src_port,
            dst_port,
            flags,
            ..
        } => {
            let mut f = String::new();
            for (bit, c) in [
                (wire::TcpFlags::SYN, 'S'),
                (wire::TcpFlags::FIN, 'F'),
                (wire::TcpFlags::RST, 'R'),
                (wire::TcpFlags::PSH, 'P'),
                (wire::TcpFlags::ACK, '.'),
            ] {
                if flags.contains(bit) {
                    f.push(c);
                }
            }
            let mut s = String::new();
            let _ = write!(
                s,
                "TCP {} > {} [{}]",
                SocketAddr::new(p.src, src_port),
                SocketAddr::new(p.dst, dst_port),
                f
            );
            s
        }
        Transport::Udp { src_port, dst_port } => {
            format!(
                "UDP {} > {}",
                SocketAddr::new(p.src, src_port),
                SocketAddr::new(p.dst, dst_port)
            )
        }
        Transport::Icmp(icmp) => format!("ICMP {} > {} {:?}", p.src, p.dst, icmp),
    }
}
