//! The Internet checksum: RFC 1071 sums, full TCP/UDP verification over a pseudo-header, and RFC 1624
//! incremental updates.
//!
//! Small free functions on 16-bit one's complement arithmetic, after smoltcp's `wire::ip::checksum`.
//! Sums are carried in a `u32` accumulator and folded at the end; a checksum field holds the one's
//! complement (`!`) of the folded sum. A transport checksum covers a pseudo-header too: its folded sum is
//! an input of [`transport`], so the IPv6 pseudo-header (RFC 8200 §8.1, [`pseudo_header_ipv6`]) is a
//! function beside [`pseudo_header_ipv4`]. Every function is total: no panic on any input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Words summed per block, one accumulator each: independent additions the compiler can vectorize.
const LANES: usize = 8;
/// Bytes per block: `LANES` 32-bit words.
const BLOCK_LEN: usize = 4 * LANES;
/// Bytes summed before the accumulators are folded; a lane then holds less than 2^15 words of less than
/// 2^32 each, so no addition can overflow on any input length.
const PART_LEN: usize = 1 << 20;

/// One's complement sum of `data` as big-endian 16-bit words, in a `u32` to be [`fold`]ed.
///
/// RFC 1071 §4.1: "Adjacent octets to be checksummed are paired to form 16-bit integers"; an odd
/// last octet is padded on the right with zero ("if a byte is left over, add it"). For speed this adds
/// 32-bit words in native byte order into 64-bit accumulators (the tail of less than a block 16 bits at a
/// time) and swaps once at the end, as RFC 1071 §2 allows: "(B) Byte Order Independence ... the sum of 16-bit integers can be computed in either byte
/// order", "(C) Parallel Summation: On machines that have word-sizes that are multiples of 16 bits, it is
/// possible to develop even more efficient implementations", and "(D) Deferred Carries".
pub fn sum(data: &[u8]) -> u32 {
    let mut acc: u64 = 0;
    for part in data.chunks(PART_LEN) {
        let mut lanes = [0u64; LANES];
        let mut blocks = part.chunks_exact(BLOCK_LEN);
        for block in &mut blocks {
            for (lane, w) in lanes.iter_mut().zip(block.chunks_exact(4)) {
                *lane += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
            }
        }
        acc += lanes.iter().sum::<u64>();
        let mut words = blocks.remainder().chunks_exact(2);
        for w in &mut words {
            acc += u64::from(u16::from_ne_bytes([w[0], w[1]]));
        }
        if let [last] = words.remainder() {
            // Zero padding on the right, in either byte order.
            acc += u64::from(u16::from_ne_bytes([*last, 0]));
        }
        acc = fold64(acc);
    }
    // Byte order independence holds for the folded 16-bit sum, so fold before swapping to big-endian.
    u32::from(u16::from_be(fold(fold64(acc) as u32)))
}

/// Folds a 64-bit accumulator to 32 bits; the end-around carry keeps the value mod 0xFFFF.
fn fold64(mut acc: u64) -> u64 {
    while acc >> 32 != 0 {
        acc = (acc & 0xFFFF_FFFF) + (acc >> 32);
    }
    acc
}

/// Folds a 32-bit accumulator to 16 bits with end-around carries.
///
/// RFC 1071 §4.1: "while (sum>>16) sum = (sum & 0xffff) + (sum >> 16);"
pub fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    sum as u16
}

/// The folded one's complement sum of `data` (RFC 1071), not complemented.
pub fn data(data: &[u8]) -> u16 {
    fold(sum(data))
}

/// Adds already folded sums together (RFC 1071 §2(B): the sum is associative, so parts can be summed
/// separately and combined), not complemented.
pub fn combine(sums: &[u16]) -> u16 {
    fold(sums.iter().map(|&s| u32::from(s)).sum())
}

/// The folded sum of the IPv4 pseudo-header of TCP and UDP (RFC 793 §3.1, RFC 768): source, destination,
/// zero, protocol, transport length.
pub fn pseudo_header_ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, length: u16) -> u16 {
    let (src, dst) = (u32::from(src), u32::from(dst));
    let acc = (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF);
    fold(acc + u32::from(protocol) + u32::from(length))
}

/// The folded sum of the IPv6 pseudo-header of TCP, UDP and ICMPv6 (RFC 8200 §8.1): source, destination,
/// upper-layer packet length (32 bits), three zero bytes, next header.
pub fn pseudo_header_ipv6(src: Ipv6Addr, dst: Ipv6Addr, protocol: u8, length: u32) -> u16 {
    let acc = sum(&src.octets()) + sum(&dst.octets());
    fold(acc + (length >> 16) + (length & 0xFFFF) + u32::from(protocol))
}

/// The pseudo-header of the family of `src` and `dst` for a transport `length` bytes long; `None` for
/// mixed families or a length the family's pseudo-header cannot carry.
pub fn pseudo_header(src: IpAddr, dst: IpAddr, protocol: u8, length: usize) -> Option<u16> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Some(pseudo_header_ipv4(
            s,
            d,
            protocol,
            u16::try_from(length).ok()?,
        )),
        (IpAddr::V6(s), IpAddr::V6(d)) => Some(pseudo_header_ipv6(
            s,
            d,
            protocol,
            u32::try_from(length).ok()?,
        )),
        _ => None,
    }
}

/// The folded sum of a TCP or UDP `segment` (header with its checksum field, and payload) and of the
/// pseudo-header whose folded sum is `pseudo_header`, not complemented.
///
/// RFC 793 §3.1: "The checksum field is the 16 bit one's complement of the one's complement sum of all 16
/// bit words in the header and text. ... The checksum also covers a 96 bit pseudo header conceptually
/// prefixed to the TCP header"; RFC 768 the same for UDP.
pub fn transport(pseudo_header: u16, segment: &[u8]) -> u16 {
    combine(&[pseudo_header, data(segment)])
}

/// Whether a TCP or UDP `segment`, its checksum field included, verifies against the pseudo-header whose
/// folded sum is `pseudo_header` (RFC 1071 §1(3): the sum of all of it is all ones). Both encodings of
/// zero, 0x0000 and 0xFFFF, verify in the checksum field. UDP's "no checksum" (a zero field) is the
/// caller's rule, not this function's.
pub fn verify_transport(pseudo_header: u16, segment: &[u8]) -> bool {
    transport(pseudo_header, segment) == 0xFFFF
}

/// The value to store in a checksum field for data (and pseudo-header) whose folded sum is `sum`.
pub fn finish(sum: u16) -> u16 {
    !sum
}

/// Whether data including its own checksum field sums to all ones, i.e. the checksum is valid
/// (RFC 1071 §1(3): "the result is checked ... if the result is all 1 bits (-0 in 1's complement
/// arithmetic), the check succeeds").
pub fn verify(data: &[u8]) -> bool {
    self::data(data) == 0xFFFF
}

/// The one's complement difference of one 16-bit word changing from `old` to `new`: `~m + m'`, to be
/// accumulated and applied with [`apply`].
pub fn delta_u16(old: u16, new: u16) -> u32 {
    u32::from(!old) + u32::from(new)
}

/// The difference of a 32-bit field (two words) changing from `old` to `new`.
pub fn delta_u32(old: u32, new: u32) -> u32 {
    delta_u16((old >> 16) as u16, (new >> 16) as u16) + delta_u16(old as u16, new as u16)
}

/// The difference of an address changing from `old` to `new` (both of one family: the bytes of a field
/// that keeps its length), word by word: two words for IPv4, eight for IPv6. The accumulator holds it:
/// eight words of at most 0x1FFFE each. Bytes past the shorter of the two are not counted.
pub fn delta_bytes(old: &[u8], new: &[u8]) -> u32 {
    old.chunks_exact(2)
        .zip(new.chunks_exact(2))
        .map(|(o, n)| {
            delta_u16(
                u16::from_be_bytes([o[0], o[1]]),
                u16::from_be_bytes([n[0], n[1]]),
            )
        })
        .sum()
}

/// Applies an accumulated difference to a stored checksum.
///
/// RFC 1624 §3, eqn. 3: `HC' = ~(~HC + ~m + m')`. Unlike eqn. 2 of RFC 1141 (`HC' = HC + m + ~m'`) this
/// never turns a checksum into 0xFFFF (-0) where a full recompute gives 0x0000 (RFC 1624 §4). The
/// accumulator holds at most a few dozen words, so it cannot overflow a `u32`.
pub fn apply(hc: u16, delta: u32) -> u16 {
    !fold(u32::from(!hc) + u32::from(fold(delta)))
}

/// RFC 1624 incremental update of checksum `hc` for one 16-bit word changing from `old` to `new`.
pub fn update(hc: u16, old: u16, new: u16) -> u16 {
    apply(hc, delta_u16(old, new))
}

/// Like [`apply`] for a UDP checksum: RFC 768 "If the computed checksum is zero, it is transmitted as
/// all ones", and a transmitted zero means "no checksum", which stays zero.
pub fn apply_udp(hc: u16, delta: u32) -> u16 {
    if hc == 0 {
        return 0;
    }
    match apply(hc, delta) {
        0 => 0xFFFF,
        c => c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The worked example of RFC 1071 §3: words 0001 f203 f4f5 f6f7 sum to ddf2.
    #[test]
    fn rfc1071_example() {
        let bytes = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(data(&bytes), 0xddf2);
        assert_eq!(finish(data(&bytes)), 0x220d);
    }

    /// An odd trailing byte counts as the high byte of a zero-padded word.
    #[test]
    fn odd_length_pads_right() {
        assert_eq!(data(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }

    /// The RFC 1624 §4 example: eqn. 3 gives 0x0000 where RFC 1141's eqn. 2 gave 0xFFFF.
    #[test]
    fn rfc1624_example() {
        // HC = 0xDD2F, m = 0x5555, m' = 0x3285 -> HC' = 0x0000.
        assert_eq!(update(0xDD2F, 0x5555, 0x3285), 0x0000);
    }

    /// A zero UDP checksum (no checksum) stays zero; a computed zero becomes 0xFFFF.
    #[test]
    fn udp_zero_rules() {
        assert_eq!(apply_udp(0, delta_u16(1, 2)), 0);
        assert_eq!(apply_udp(0xDD2F, delta_u16(0x5555, 0x3285)), 0xFFFF);
    }

    /// RFC 1071 §4.1 word by word, the reference for the lane-parallel [`sum`].
    fn reference(data: &[u8]) -> u16 {
        let mut acc: u64 = 0;
        for w in data.chunks(2) {
            acc += u64::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)]));
        }
        while acc >> 16 != 0 {
            acc = (acc & 0xFFFF) + (acc >> 16);
        }
        acc as u16
    }

    /// Past the point where the lane accumulators are folded, with every word at its maximum.
    #[test]
    fn long_input_matches_reference() {
        let ones = vec![0xFFu8; 2 * PART_LEN + 3];
        assert_eq!(data(&ones), reference(&ones));
        let bytes: Vec<u8> = (0..PART_LEN + 77).map(|i| (i * 31 % 251) as u8).collect();
        assert_eq!(data(&bytes), reference(&bytes));
    }

    /// Verifying a segment against its pseudo-header: the RFC 793 sum of a hand-checked SYN.
    #[test]
    fn transport_of_a_syn() {
        // 10.0.0.1:1024 -> 10.0.0.2:80, seq 1, SYN, window 1024, checksum computed by hand below.
        let mut seg = [
            0x04, 0x00, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0x04, 0x00, 0, 0, 0, 0,
        ];
        let ph = pseudo_header_ipv4(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            6,
            20,
        );
        // Pseudo-header 0a00+0001+0a00+0002+0006+0014 = 0x141d; segment 0400+0050+0001+5002+0400 = 0x5853.
        assert_eq!(ph, 0x141d);
        assert_eq!(transport(ph, &seg), 0x6c70);
        seg[16..18].copy_from_slice(&finish(0x6c70).to_be_bytes());
        assert!(verify_transport(ph, &seg));
        seg[19] ^= 1;
        assert!(!verify_transport(ph, &seg));
    }

    /// Splitting data at an even offset and combining the sums equals summing the whole.
    #[test]
    fn combine_equals_whole() {
        let bytes: Vec<u8> = (0..=255u8).collect();
        assert_eq!(
            combine(&[data(&bytes[..100]), data(&bytes[100..])]),
            data(&bytes)
        );
    }

    proptest! {
        /// The lane-parallel sum equals the word-by-word one for every length and alignment of the tail.
        #[test]
        fn sum_matches_reference(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert_eq!(data(&bytes), reference(&bytes));
        }

        /// For random data and a random change of one aligned word, the incremental update equals a
        /// full recompute, including the 0x0000/0xFFFF edges.
        #[test]
        fn update_matches_recompute(
            mut bytes in proptest::collection::vec(any::<u8>(), 2..64),
            idx in any::<prop::sample::Index>(),
            new in prop_oneof![Just(0u16), Just(0xFFFFu16), any::<u16>()],
        ) {
            let words = bytes.len() / 2;
            let i = idx.index(words) * 2;
            let before = finish(data(&bytes));
            let old = u16::from_be_bytes([bytes[i], bytes[i + 1]]);
            bytes[i..i + 2].copy_from_slice(&new.to_be_bytes());
            let after = finish(data(&bytes));
            // A full recompute never yields 0xFFFF unless the data is all zeros; skip that degenerate case.
            prop_assume!(bytes.iter().any(|&b| b != 0));
            prop_assert_eq!(update(before, old, new), after);
        }

        /// A checksum written into data makes the data verify.
        #[test]
        fn finish_then_verify(mut bytes in proptest::collection::vec(any::<u8>(), 4..64)) {
            bytes[0] = 0;
            bytes[1] = 0;
            let c = finish(data(&bytes));
            bytes[..2].copy_from_slice(&c.to_be_bytes());
            prop_assert!(verify(&bytes));
        }
    }
}
