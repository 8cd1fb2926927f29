//! SYN cookies for the SYN proxy (`[director] syn_proxy`): the director answers a SYN with a SYN-ACK whose
//! sequence number encodes everything it needs, keeps no state, and recognises the client's ACK by it.
//!
//! A cookie is 32 bits (the initial sequence number of the director's SYN-ACK):
//!
//! | bits  | what                                                                 |
//! |-------|----------------------------------------------------------------------|
//! | 0-1   | time slot (64 s) the cookie was made in, modulo 4                    |
//! | 2-3   | the client's MSS, as an index into [`MSS_TABLE`] (rounded down)      |
//! | 4-7   | the client's window scale, 15 when it sent none                      |
//! | 8     | whether the client allows SACK                                       |
//! | 9-31  | 23 bits of a keyed hash of all the above and the connection's tuple and the client's ISN |
//!
//! So, like Linux's cookies (`net/ipv4/syncookies.c`), a cookie is only accepted in its own time slot or
//! the next (an ACK within 64 to 128 s of the SYN-ACK), for the same addresses, ports and client ISN, and an
//! off-path attacker who cannot see the SYN-ACK guesses a valid ACK with odds of 2^-23 per try. Unlike the
//! kernel's cookies without timestamps, window scale and SACK survive: the server gets the options the
//! client asked for. The hash is SipHash-1-3 with a key drawn from the OS at start (std's `RandomState`): a
//! restarted director does not accept the cookies of the one before, whose SYN-ACKs the clients answer
//! within seconds anyway.

use crate::conntable::Endpoint;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::time::Duration;

use crate::wire::SynOptions;

/// The MSS values a cookie can carry (the kernel's `msstab` choice of common path MTUs): the client's MSS
/// rounded down to one of them. 536 is also the MSS of a client that announces none (RFC 9293 §3.7.1).
pub const MSS_TABLE: [u16; 4] = [536, 1300, 1440, 1460];
/// A cookie's lifetime unit.
pub const SLOT: Duration = Duration::from_secs(64);
const DATA_BITS: u32 = 9;
const DATA_MASK: u32 = (1 << DATA_BITS) - 1;
const NO_WSCALE: u32 = 15;

/// The secret key of the cookies.
#[derive(Clone, Debug)]
pub struct CookieKey(RandomState);

impl Default for CookieKey {
    fn default() -> Self {
        CookieKey::new()
    }
}

impl CookieKey {
    /// A fresh random key.
    pub fn new() -> CookieKey {
        CookieKey(RandomState::new())
    }

    fn hash(&self, client: Endpoint, virt: Endpoint, isn: u32, slot: u64, data: u32) -> u32 {
        let mut h = self.0.build_hasher();
        client.ip().hash(&mut h);
        h.write_u16(client.port());
        virt.ip().hash(&mut h);
        h.write_u16(virt.port());
        h.write_u32(isn);
        h.write_u64(slot);
        h.write_u32(data);
        h.finish() as u32 & !DATA_MASK
    }

    /// The cookie for a SYN from `client` to `virt` with initial sequence number `isn` and `options`, at
    /// `now` (the director's clock).
    pub fn make(
        &self,
        client: Endpoint,
        virt: Endpoint,
        isn: u32,
        options: &SynOptions,
        now: Duration,
    ) -> u32 {
        let slot = now.as_secs() / SLOT.as_secs();
        let data = encode(options, slot);
        self.hash(client, virt, isn, slot, data) | data
    }

    /// The options of the SYN whose cookie `cookie` is, if it is one of ours for this tuple and ISN and
    /// not older than its slot and the next.
    pub fn check(
        &self,
        client: Endpoint,
        virt: Endpoint,
        isn: u32,
        cookie: u32,
        now: Duration,
    ) -> Option<SynOptions> {
        let data = cookie & DATA_MASK;
        let current = now.as_secs() / SLOT.as_secs();
        [Some(current), current.checked_sub(1)]
            .into_iter()
            .flatten()
            .find(|&slot| {
                slot & 3 == u64::from(data & 3)
                    && self.hash(client, virt, isn, slot, data) == cookie & !DATA_MASK
            })
            .map(|_| decode(data))
    }
}

fn encode(options: &SynOptions, slot: u64) -> u32 {
    let mss = options.mss.unwrap_or(MSS_TABLE[0]);
    let mss_index = MSS_TABLE.iter().rposition(|&m| m <= mss).unwrap_or(0) as u32;
    let wscale = options.wscale.map_or(NO_WSCALE, |w| u32::from(w.min(14)));
    (slot & 3) as u32 | mss_index << 2 | wscale << 4 | u32::from(options.sack) << 8
}

fn decode(data: u32) -> SynOptions {
    let wscale = (data >> 4) & 0xF;
    SynOptions {
        mss: Some(MSS_TABLE[((data >> 2) & 3) as usize]),
        wscale: (wscale != NO_WSCALE).then_some(wscale as u8),
        sack: data & (1 << 8) != 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(ip: [u8; 4], port: u16) -> Endpoint {
        Endpoint::new(ip.into(), port)
    }

    const CLIENT: Endpoint = Endpoint::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7)),
        40000,
    );
    const VIRT: Endpoint = Endpoint::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)),
        80,
    );

    #[test]
    /// A cookie is accepted in its slot and the next, and not two slots later.
    fn cookie_lives_one_to_two_slots() {
        let key = CookieKey::new();
        let opts = SynOptions {
            mss: Some(1460),
            wscale: Some(7),
            sack: true,
        };
        let made = Duration::from_secs(1000);
        let cookie = key.make(CLIENT, VIRT, 12345, &opts, made);
        assert_eq!(key.check(CLIENT, VIRT, 12345, cookie, made), Some(opts));
        assert_eq!(
            key.check(CLIENT, VIRT, 12345, cookie, made + SLOT),
            Some(opts)
        );
        assert_eq!(
            key.check(CLIENT, VIRT, 12345, cookie, made + 2 * SLOT),
            None
        );
    }

    #[test]
    /// The options come back rounded to what a cookie can carry; none at all means MSS 536, no scaling, no SACK.
    fn options_round_down_to_the_table() {
        let key = CookieKey::new();
        let now = Duration::from_secs(5);
        for (mss, want) in [
            (Some(1400), 1300),
            (Some(9000), 1460),
            (Some(100), 536),
            (None, 536),
        ] {
            let opts = SynOptions {
                mss,
                wscale: None,
                sack: false,
            };
            let cookie = key.make(CLIENT, VIRT, 1, &opts, now);
            let back = key.check(CLIENT, VIRT, 1, cookie, now).unwrap();
            assert_eq!(back.mss, Some(want));
            assert_eq!((back.wscale, back.sack), (None, false));
        }
    }

    #[test]
    /// Another key (a restarted director) does not accept the cookie.
    fn another_key_refuses() {
        let now = Duration::from_secs(5);
        let cookie = CookieKey::new().make(CLIENT, VIRT, 9, &SynOptions::default(), now);
        assert_eq!(CookieKey::new().check(CLIENT, VIRT, 9, cookie, now), None);
    }

    proptest! {
        #[test]
        /// Any change of tuple, ISN or cookie bits is refused (with 2^-23 odds of a false accept, which
        /// 256 cases cannot hit in practice).
        fn cookie_binds_tuple_isn_and_bits(
            cip in any::<[u8; 4]>(), cport in any::<u16>(), isn in any::<u32>(), flip in 0u32..32,
            secs in 64u64..1_000_000, ws in proptest::option::of(0u8..=14), sack in any::<bool>(),
        ) {
            let key = CookieKey::new();
            let client = addr(cip, cport);
            let now = Duration::from_secs(secs);
            let opts = SynOptions { mss: Some(1460), wscale: ws, sack };
            let cookie = key.make(client, VIRT, isn, &opts, now);
            prop_assert_eq!(key.check(client, VIRT, isn, cookie, now), Some(opts));
            prop_assert_eq!(key.check(client, VIRT, isn, cookie ^ (1 << flip), now), None);
            prop_assert_eq!(key.check(client, VIRT, isn.wrapping_add(1), cookie, now), None);
            prop_assert_eq!(key.check(addr(cip, cport ^ 1), VIRT, isn, cookie, now), None);
        }
    }
}
