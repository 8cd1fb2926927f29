//! The Internet checksum: RFC 1071 sums, full TCP/UDP verification over a pseudo-header, and RFC 1624
//! incremental updates.
//!
//! Small free functions on 16-bit one's complement arithmetic, after smoltcp's `wire::ip::checksum`.
//! Sums are carried in a `u32` accumulator and folded at the end; a checksum field holds the one's
//! complement (`!`) of the folded sum. A transport checksum covers a pseudo-header too: its folded sum is
//! an input of [`transport`], so an IPv6 pseudo-header (RFC 8200 §8.1) only needs a function of its own
//! beside [`pseudo_header_ipv4`]. Every function is total: no panic on any input.

use std::net::Ipv4Addr;

/// One's complement sum of `data` as big-endian 16-bit words, not yet folded.
///
/// RFC 1071 §4.1: "Adjacent octets to be checksummed are paired to form 16-bit integers"; an odd
/// last octet is padded on the right with zero ("if a byte is left over, add it").
pub fn sum(data: &[u8]) -> u32 {
    let mut acc: u64 = 0;
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc += u64::from(u16::from_be_bytes([*last, 0]));
    }
    // Fold the 64-bit accumulator into 32 bits; the end-around carry keeps the value mod 0xFFFF.
    while acc >> 32 != 0 {
        acc = (acc & 0xFFFF_FFFF) + (acc >> 32);
    }
    acc as u32
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
    let acc = sum(&src.octets()) + sum(&dst.octets()) + u32::from(protocol) + u32::from(length);
    fold(acc)
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

/// The difference of an IPv4 address changing from `old` to `new`.
pub fn delta_addr(old: Ipv4Addr, new: Ipv4Addr) -> u32 {
    delta_u32(u32::from(old), u32::from(new))
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
