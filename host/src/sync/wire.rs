//! The sync datagram: encoding, authenticated decoding and replay protection. Pure: no I/O, no clock.
//!
//! A datagram is a header, records, and an HMAC-SHA256 tag over everything before it (all integers
//! big-endian):
//!
//! ```text
//! header (20 bytes)  magic "VIPS" | version u8 = 1 | kind u8 | count u16 | sender u32 | sequence u64
//! record (42 / 78)   protocol u8 (6, 17) | state u8 | family u8 (4, 6) | flags u8 | syn_resends u8 |
//!                    reserved u8 = 0 | idle_ms u32 | real server name id u64 | client MAC (6 bytes) |
//!                    client ip, port | virtual ip, port | real ip, port   (4 or 16 address bytes each)
//! tag (32 bytes)     HMAC-SHA256(key, header and records)
//! ```
//!
//! States: 0 SYN sent, 1 SYN received, 2 established, 3 closing, 4 UDP. `kind` 0 carries `count` records; 1 asks the receiver for a bulk resync and 2 ends one (both with no
//! records). Record flags: bit 0 delete, bit 1 the client sent a FIN, bit 2 the real server did. The three
//! addresses of a record are of one family. The real server is named by [`name_id`] of its name, which the
//! receiver resolves against its own config (both directors load the same one).
//!
//! Contract: [`encode`] writes into the caller's buffer and never allocates; [`decode`] checks the tag
//! before it reads a record, rejects the whole datagram on any inconsistency and never panics, whatever
//! the bytes. [`ReplayWindow`] rejects a sequence number seen already or older than [`REPLAY_WINDOW`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use strum::{EnumCount, IntoStaticStr, VariantArray};

use crate::conntable::{ConnState, Endpoint};
use crate::wire::{MacAddr, Protocol};

/// The first bytes of every sync datagram.
pub const MAGIC: [u8; 4] = *b"VIPS";
/// The format described in the module documentation.
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 20;
pub const TAG_LEN: usize = 32;
/// A record before its three endpoints.
const RECORD_FIXED: usize = 24;
/// The longest record (IPv6).
pub const MAX_RECORD_LEN: usize = RECORD_FIXED + 3 * (16 + 2);
/// Sequence numbers accepted behind the highest seen, if not seen yet.
pub const REPLAY_WINDOW: u64 = 64;

const FLAG_DELETE: u8 = 1;
const FLAG_CLIENT_FIN: u8 = 2;
const FLAG_SERVER_FIN: u8 = 4;

type HmacSha256 = Hmac<Sha256>;

/// What a datagram carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Connection records.
    Records,
    /// "Send me your whole table" (at start, and after a gap in the sender's sequence numbers).
    BulkRequest,
    /// The whole table has been sent since the last bulk request.
    BulkEnd,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Records => 0,
            Kind::BulkRequest => 1,
            Kind::BulkEnd => 2,
        }
    }

    fn from_code(code: u8) -> Option<Kind> {
        match code {
            0 => Some(Kind::Records),
            1 => Some(Kind::BulkRequest),
            2 => Some(Kind::BulkEnd),
            _ => None,
        }
    }
}

/// A datagram's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    /// Drawn by each director at start: which peer, and which run of it, sent the datagram.
    pub sender: u32,
    pub sequence: u64,
}

/// One connection as a peer's table should hold it (or no longer hold it, when `delete`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub protocol: Protocol,
    pub state: ConnState,
    pub client: Endpoint,
    pub virtual_addr: Endpoint,
    pub real: Endpoint,
    /// [`name_id`] of the real server's name.
    pub real_name: u64,
    /// Where frames back to the client go (the router's MAC, the same for every director on the segment).
    pub client_mac: MacAddr,
    /// Milliseconds left before the connection expires idle on the sender.
    pub idle_ms: u32,
    pub syn_resends: u8,
    /// As `Connection::fin_seen`: bit 0 the client sent a FIN, bit 1 the real server did.
    pub fin_seen: u8,
    pub delete: bool,
}

impl Record {
    /// Bytes of this record on the wire; `None` when its addresses are not of one family (not encodable).
    pub fn wire_len(&self) -> Option<usize> {
        let family = |e: Endpoint| e.ip().is_ipv6();
        let v6 = family(self.client);
        if family(self.virtual_addr) != v6 || family(self.real) != v6 {
            return None;
        }
        Some(RECORD_FIXED + 3 * (if v6 { 16 } else { 4 } + 2))
    }
}

/// Why a datagram was refused; each is a label of `vipd_sync_dropped_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumCount, VariantArray, IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Error {
    /// Shorter than a header and a tag.
    Truncated,
    /// Not a sync datagram (wrong magic).
    BadMagic,
    /// A sync datagram of another format version.
    BadVersion,
    /// The tag does not match: another key, or altered bytes.
    BadTag,
    /// Authentic but inconsistent (record count, kind, family, protocol or state).
    Malformed,
    /// Its sequence number was seen already, or is older than the window.
    Replay,
}

impl Error {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Why [`encode`] could not write a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// The buffer is too short for the header, the records and the tag.
    TooLong,
    /// A record whose addresses are not of one family, or more than `u16::MAX` records.
    Unencodable,
}

/// The HMAC key, prepared once: each datagram clones it (no allocation).
#[derive(Clone)]
pub struct Key(HmacSha256);

impl Key {
    /// Any length is accepted by HMAC; the config demands at least 16 bytes.
    pub fn new(secret: &[u8]) -> Key {
        Key(<HmacSha256 as Mac>::new_from_slice(secret).expect("HMAC takes keys of any length"))
    }
}

/// The id a record names a real server by: the first 8 bytes of SHA-256 of its name. Computed at install,
/// never per packet; the same name gives the same id on every director.
pub fn name_id(name: &str) -> u64 {
    let digest = Sha256::digest(name.as_bytes());
    let mut id = [0; 8];
    id.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(id)
}

/// Bytes of a datagram with these records, or `None` if one is not encodable.
pub fn datagram_len(records: &[Record]) -> Option<usize> {
    records
        .iter()
        .try_fold(HEADER_LEN + TAG_LEN, |n, r| Some(n + r.wire_len()?))
}

/// Writes a datagram into `buf`; returns its length.
pub fn encode(
    header: &Header,
    records: &[Record],
    key: &Key,
    buf: &mut [u8],
) -> Result<usize, EncodeError> {
    let count = u16::try_from(records.len()).map_err(|_| EncodeError::Unencodable)?;
    let len = datagram_len(records).ok_or(EncodeError::Unencodable)?;
    if len > buf.len() {
        return Err(EncodeError::TooLong);
    }
    buf[..4].copy_from_slice(&MAGIC);
    buf[4] = VERSION;
    buf[5] = header.kind.code();
    buf[6..8].copy_from_slice(&count.to_be_bytes());
    buf[8..12].copy_from_slice(&header.sender.to_be_bytes());
    buf[12..20].copy_from_slice(&header.sequence.to_be_bytes());
    let mut at = HEADER_LEN;
    for r in records {
        at += write_record(r, &mut buf[at..]);
    }
    let mut mac = key.0.clone();
    mac.update(&buf[..at]);
    buf[at..at + TAG_LEN].copy_from_slice(&mac.finalize().into_bytes());
    Ok(at + TAG_LEN)
}

/// The wire's state numbers, fixed here rather than taken from the enum's order.
fn state_code(state: ConnState) -> u8 {
    match state {
        ConnState::SynSent => 0,
        ConnState::SynRecv => 1,
        ConnState::Established => 2,
        ConnState::Closing => 3,
        ConnState::Udp => 4,
    }
}

fn state_from_code(code: u8) -> Option<ConnState> {
    ConnState::VARIANTS
        .iter()
        .copied()
        .find(|&s| state_code(s) == code)
}

fn write_record(r: &Record, buf: &mut [u8]) -> usize {
    let v6 = r.client.ip().is_ipv6();
    buf[0] = match r.protocol {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
    };
    buf[1] = state_code(r.state);
    buf[2] = if v6 { 6 } else { 4 };
    let mut flags = 0;
    if r.delete {
        flags |= FLAG_DELETE;
    }
    if r.fin_seen & 1 != 0 {
        flags |= FLAG_CLIENT_FIN;
    }
    if r.fin_seen & 2 != 0 {
        flags |= FLAG_SERVER_FIN;
    }
    buf[3] = flags;
    buf[4] = r.syn_resends;
    buf[5] = 0;
    buf[6..10].copy_from_slice(&r.idle_ms.to_be_bytes());
    buf[10..18].copy_from_slice(&r.real_name.to_be_bytes());
    buf[18..24].copy_from_slice(&r.client_mac.0);
    let mut at = RECORD_FIXED;
    for e in [r.client, r.virtual_addr, r.real] {
        match e.ip() {
            IpAddr::V4(a) => {
                buf[at..at + 4].copy_from_slice(&a.octets());
                at += 4;
            }
            IpAddr::V6(a) => {
                buf[at..at + 16].copy_from_slice(&a.octets());
                at += 16;
            }
        }
        buf[at..at + 2].copy_from_slice(&e.port().to_be_bytes());
        at += 2;
    }
    at
}

/// Checks `datagram` with `key` and decodes it: its header, and its records into `records` (cleared
/// first; on an error it may hold some records and must not be used). Replay is the caller's check, with
/// a [`ReplayWindow`] per sender, after this one.
pub fn decode(datagram: &[u8], key: &Key, records: &mut Vec<Record>) -> Result<Header, Error> {
    records.clear();
    if datagram.len() < HEADER_LEN + TAG_LEN {
        return Err(Error::Truncated);
    }
    if datagram[..4] != MAGIC {
        return Err(Error::BadMagic);
    }
    if datagram[4] != VERSION {
        return Err(Error::BadVersion);
    }
    let (body, tag) = datagram.split_at(datagram.len() - TAG_LEN);
    let mut mac = key.0.clone();
    mac.update(body);
    mac.verify_slice(tag).map_err(|_| Error::BadTag)?;
    let kind = Kind::from_code(body[5]).ok_or(Error::Malformed)?;
    let count = u16::from_be_bytes([body[6], body[7]]);
    let sender = u32::from_be_bytes([body[8], body[9], body[10], body[11]]);
    let mut sequence = [0; 8];
    sequence.copy_from_slice(&body[12..20]);
    let header = Header {
        kind,
        sender,
        sequence: u64::from_be_bytes(sequence),
    };
    if kind != Kind::Records && count != 0 {
        return Err(Error::Malformed);
    }
    let mut rest = &body[HEADER_LEN..];
    for _ in 0..count {
        let (record, len) = read_record(rest).ok_or(Error::Malformed)?;
        records.push(record);
        rest = &rest[len..];
    }
    if !rest.is_empty() {
        return Err(Error::Malformed);
    }
    Ok(header)
}

fn read_record(buf: &[u8]) -> Option<(Record, usize)> {
    let fixed = buf.get(..RECORD_FIXED)?;
    let protocol = match fixed[0] {
        6 => Protocol::Tcp,
        17 => Protocol::Udp,
        _ => return None,
    };
    let state = state_from_code(fixed[1])?;
    // A TCP connection in the UDP state or a UDP flow in a TCP state is no connection vipd makes.
    if (state == ConnState::Udp) != (protocol == Protocol::Udp) {
        return None;
    }
    let addr_len = match fixed[2] {
        4 => 4,
        6 => 16,
        _ => return None,
    };
    let flags = fixed[3];
    if flags & !(FLAG_DELETE | FLAG_CLIENT_FIN | FLAG_SERVER_FIN) != 0 || fixed[5] != 0 {
        return None;
    }
    let len = RECORD_FIXED + 3 * (addr_len + 2);
    let mut endpoints = buf
        .get(RECORD_FIXED..len)?
        .chunks_exact(addr_len + 2)
        .map(|e| {
            let ip = match e.len() {
                6 => IpAddr::V4(Ipv4Addr::new(e[0], e[1], e[2], e[3])),
                _ => {
                    let mut octets = [0; 16];
                    octets.copy_from_slice(&e[..16]);
                    IpAddr::V6(Ipv6Addr::from(octets))
                }
            };
            Endpoint::new(ip, u16::from_be_bytes([e[addr_len], e[addr_len + 1]]))
        });
    let (client, virtual_addr, real) = (endpoints.next()?, endpoints.next()?, endpoints.next()?);
    let mut real_name = [0; 8];
    real_name.copy_from_slice(&fixed[10..18]);
    let mut mac = [0; 6];
    mac.copy_from_slice(&fixed[18..24]);
    let record = Record {
        protocol,
        state,
        client,
        virtual_addr,
        real,
        real_name: u64::from_be_bytes(real_name),
        client_mac: MacAddr(mac),
        idle_ms: u32::from_be_bytes([fixed[6], fixed[7], fixed[8], fixed[9]]),
        syn_resends: fixed[4],
        fin_seen: u8::from(flags & FLAG_CLIENT_FIN != 0)
            | u8::from(flags & FLAG_SERVER_FIN != 0) << 1,
        delete: flags & FLAG_DELETE != 0,
    };
    Some((record, len))
}

/// What [`ReplayWindow::check`] found about a new sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fresh {
    /// The next one, the first one, or a late one inside the window: nothing missed that is known yet.
    InOrder,
    /// Numbers between the highest seen and this one are missing (lost, or yet to arrive out of order).
    Gap,
}

/// The sequence numbers seen from one sender: the highest, and which of the [`REPLAY_WINDOW`] below it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    /// `None` before the first datagram.
    highest: Option<u64>,
    /// Bit `i`: `highest - i` was seen.
    seen: u64,
}

impl ReplayWindow {
    /// Accepts `sequence` once (recording it), or refuses it with [`Error::Replay`].
    pub fn check(&mut self, sequence: u64) -> Result<Fresh, Error> {
        let Some(highest) = self.highest else {
            self.highest = Some(sequence);
            self.seen = 1;
            return Ok(Fresh::InOrder);
        };
        if sequence > highest {
            let ahead = sequence - highest;
            self.seen = if ahead >= REPLAY_WINDOW {
                1
            } else {
                self.seen << ahead | 1
            };
            self.highest = Some(sequence);
            return Ok(if ahead == 1 {
                Fresh::InOrder
            } else {
                Fresh::Gap
            });
        }
        let behind = highest - sequence;
        if behind >= REPLAY_WINDOW || self.seen & (1 << behind) != 0 {
            return Err(Error::Replay);
        }
        self.seen |= 1 << behind;
        Ok(Fresh::InOrder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> Key {
        Key::new(b"0123456789abcdef-shared")
    }

    fn record_v4() -> Record {
        Record {
            protocol: Protocol::Tcp,
            state: ConnState::Established,
            client: Endpoint::new([198, 51, 100, 2].into(), 40000),
            virtual_addr: Endpoint::new([192, 0, 2, 1].into(), 80),
            real: Endpoint::new([10, 0, 0, 2].into(), 8080),
            real_name: name_id("b"),
            client_mac: MacAddr([2, 0, 0, 0, 0, 9]),
            idle_ms: 900_000,
            syn_resends: 1,
            fin_seen: 2,
            delete: false,
        }
    }

    fn header(sequence: u64) -> Header {
        Header {
            kind: Kind::Records,
            sender: 0xdead_beef,
            sequence,
        }
    }

    /// A record of each family, encoded and decoded, comes back the same; lengths are as documented.
    #[test]
    fn round_trip_both_families() {
        let v4 = record_v4();
        let v6 = Record {
            protocol: Protocol::Udp,
            state: ConnState::Udp,
            client: Endpoint::new("2001:db8::2".parse().unwrap(), 5353),
            virtual_addr: Endpoint::new("2001:db8:1::1".parse().unwrap(), 53),
            real: Endpoint::new("fd00::3".parse().unwrap(), 53),
            delete: true,
            ..v4
        };
        assert_eq!((v4.wire_len(), v6.wire_len()), (Some(42), Some(78)));
        let mut buf = [0; 1400];
        let n = encode(&header(7), &[v4, v6], &key(), &mut buf).unwrap();
        assert_eq!(n, HEADER_LEN + 42 + 78 + TAG_LEN);
        let mut out = Vec::new();
        assert_eq!(decode(&buf[..n], &key(), &mut out), Ok(header(7)));
        assert_eq!(out, [v4, v6]);
    }

    /// Mixed families cannot be encoded; a buffer too small is refused, never overrun.
    #[test]
    fn unencodable_and_too_long() {
        let mixed = Record {
            real: Endpoint::new("fd00::3".parse().unwrap(), 53),
            ..record_v4()
        };
        let mut buf = [0; 1400];
        assert_eq!(
            encode(&header(1), &[mixed], &key(), &mut buf),
            Err(EncodeError::Unencodable)
        );
        let mut small = [0; HEADER_LEN + TAG_LEN + 41];
        assert_eq!(
            encode(&header(1), &[record_v4()], &key(), &mut small),
            Err(EncodeError::TooLong)
        );
    }

    /// Control datagrams carry no records; the errors name what is wrong.
    #[test]
    fn control_kinds_and_errors() {
        let mut buf = [0; 128];
        let mut out = Vec::new();
        for kind in [Kind::BulkRequest, Kind::BulkEnd] {
            let h = Header { kind, ..header(3) };
            let n = encode(&h, &[], &key(), &mut buf).unwrap();
            assert_eq!(decode(&buf[..n], &key(), &mut out), Ok(h));
        }
        let n = encode(&header(3), &[], &key(), &mut buf).unwrap();
        assert_eq!(
            decode(&buf[..n - 1], &key(), &mut out),
            Err(Error::Truncated)
        );
        assert_eq!(decode(&buf[..10], &key(), &mut out), Err(Error::Truncated));
        assert_eq!(decode(&[0; 64], &key(), &mut out), Err(Error::BadMagic));
        let mut other = buf;
        other[4] = 2;
        assert_eq!(
            decode(&other[..n], &key(), &mut out),
            Err(Error::BadVersion)
        );
        assert_eq!(
            decode(&buf[..n], &Key::new(b"another key of 16+ bytes"), &mut out),
            Err(Error::BadTag)
        );
    }

    /// An authentic datagram whose count disagrees with its length, or with an unknown state, is malformed.
    #[test]
    fn authentic_but_malformed() {
        let mut out = Vec::new();
        let sign = |body: &mut Vec<u8>| {
            let mut mac = key().0.clone();
            mac.update(body);
            let tag = mac.finalize().into_bytes();
            body.extend_from_slice(&tag);
        };
        let mut buf = [0; 256];
        let n = encode(&header(1), &[record_v4()], &key(), &mut buf).unwrap();
        let body = &buf[..n - TAG_LEN];
        let mut more = body.to_vec();
        more[7] = 2; // two records announced, one present
        sign(&mut more);
        assert_eq!(decode(&more, &key(), &mut out), Err(Error::Malformed));
        let mut state = body.to_vec();
        state[HEADER_LEN + 1] = 9;
        sign(&mut state);
        assert_eq!(decode(&state, &key(), &mut out), Err(Error::Malformed));
        let mut kind = body.to_vec();
        kind[5] = 1; // a bulk request with a record
        sign(&mut kind);
        assert_eq!(decode(&kind, &key(), &mut out), Err(Error::Malformed));
    }

    /// Replays and numbers older than the window are refused; late ones inside it pass once; jumps are gaps.
    #[test]
    fn replay_window() {
        let mut w = ReplayWindow::default();
        assert_eq!(w.check(100), Ok(Fresh::InOrder));
        assert_eq!(w.check(100), Err(Error::Replay));
        assert_eq!(w.check(101), Ok(Fresh::InOrder));
        assert_eq!(w.check(105), Ok(Fresh::Gap));
        assert_eq!(w.check(103), Ok(Fresh::InOrder));
        assert_eq!(w.check(103), Err(Error::Replay));
        assert_eq!(w.check(105 - REPLAY_WINDOW), Err(Error::Replay));
        assert_eq!(w.check(106 - REPLAY_WINDOW), Ok(Fresh::InOrder));
        assert_eq!(w.check(1000), Ok(Fresh::Gap));
        assert_eq!(w.check(999), Ok(Fresh::InOrder));
        assert_eq!(w.check(105), Err(Error::Replay));
    }

    fn endpoint(v6: bool) -> impl Strategy<Value = Endpoint> {
        (any::<[u8; 16]>(), any::<u16>()).prop_map(move |(b, port)| {
            let ip = if v6 {
                IpAddr::V6(Ipv6Addr::from(b))
            } else {
                IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
            };
            Endpoint::new(ip, port)
        })
    }

    fn record() -> impl Strategy<Value = Record> {
        any::<bool>().prop_flat_map(|v6| {
            (
                endpoint(v6),
                endpoint(v6),
                endpoint(v6),
                prop::sample::select(ConnState::VARIANTS.to_vec()),
                (
                    any::<u64>(),
                    any::<[u8; 6]>(),
                    any::<u32>(),
                    any::<u8>(),
                    0..4u8,
                    any::<bool>(),
                ),
            )
                .prop_map(
                    |(
                        client,
                        virtual_addr,
                        real,
                        state,
                        (real_name, mac, idle_ms, syn_resends, fin_seen, delete),
                    )| Record {
                        protocol: if state == ConnState::Udp {
                            Protocol::Udp
                        } else {
                            Protocol::Tcp
                        },
                        state,
                        client,
                        virtual_addr,
                        real,
                        real_name,
                        client_mac: MacAddr(mac),
                        idle_ms,
                        syn_resends,
                        fin_seen,
                        delete,
                    },
                )
        })
    }

    proptest! {
        /// Random records of both families survive a round trip.
        #[test]
        fn round_trip(records in prop::collection::vec(record(), 0..30), sequence in any::<u64>(), sender in any::<u32>()) {
            let h = Header { kind: Kind::Records, sender, sequence };
            let mut buf = [0; 4096];
            let n = encode(&h, &records, &key(), &mut buf).unwrap();
            let mut out = Vec::new();
            prop_assert_eq!(decode(&buf[..n], &key(), &mut out), Ok(h));
            prop_assert_eq!(out, records);
        }

        /// Any truncation and any single bit flip of a valid datagram is refused, never a panic.
        #[test]
        fn truncation_and_bit_flips_refused(records in prop::collection::vec(record(), 1..5), cut in any::<prop::sample::Index>(), bit in any::<prop::sample::Index>()) {
            let mut buf = [0; 1024];
            let n = encode(&header(9), &records, &key(), &mut buf).unwrap();
            let mut out = Vec::new();
            prop_assert!(decode(&buf[..cut.index(n)], &key(), &mut out).is_err());
            let flip = bit.index(n * 8);
            buf[flip / 8] ^= 1 << (flip % 8);
            prop_assert!(decode(&buf[..n], &key(), &mut out).is_err());
        }

        /// Random bytes are refused without a panic; with the magic and version in front, by the tag.
        #[test]
        fn garbage_refused(mut bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let mut out = Vec::new();
            prop_assert!(decode(&bytes, &key(), &mut out).is_err());
            if bytes.len() >= HEADER_LEN + TAG_LEN {
                bytes[..4].copy_from_slice(&MAGIC);
                bytes[4] = VERSION;
                prop_assert_eq!(decode(&bytes, &key(), &mut out), Err(Error::BadTag));
            }
        }

        /// Whatever order sequence numbers arrive in, each is accepted at most once, and none older than the
        /// window below the highest accepted so far.
        #[test]
        fn replay_window_accepts_each_once(sequences in prop::collection::vec(0..200u64, 1..300)) {
            let mut w = ReplayWindow::default();
            let mut accepted = std::collections::HashSet::new();
            let mut highest: Option<u64> = None;
            for s in sequences {
                let too_old = highest.is_some_and(|h| s + REPLAY_WINDOW <= h);
                match w.check(s) {
                    Ok(_) => {
                        prop_assert!(accepted.insert(s), "{} accepted twice", s);
                        prop_assert!(!too_old);
                        highest = Some(highest.map_or(s, |h| h.max(s)));
                    }
                    Err(e) => {
                        prop_assert_eq!(e, Error::Replay);
                        prop_assert!(too_old || accepted.contains(&s));
                    }
                }
            }
        }
    }
}
