//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load Balancer",
//! NSDI 2016, section 3.4), weighted.
//!
//! Each backend walks its own permutation of the table's slots (`offset + j * skip mod size`, with `size`
//! prime) and the backends take turns claiming their next free slot until the table is full. Removing one of
//! N backends moves only about 1/N of the slots. Weights: in each round a backend earns its weight in credit
//! and claims one slot per `max_weight` of credit, so slot shares follow the weights.

use std::net::IpAddr;

/// The table size the paper recommends for up to a few hundred backends: a prime well above 100 x N.
pub const DEFAULT_SIZE: usize = 65537;

/// A Maglev lookup table: slot to backend position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    slots: Vec<u32>,
}

impl Table {
    /// Builds the table for `backends` given as (stable key, weight); the key (for example
    /// [`backend_key`] of the server's address and port) decides where the backend's slots lie, so it must
    /// not change when other backends come and go. Backends of weight 0 get no slots. `size` should be prime;
    /// it is rounded up to the next prime if not. Returns `None` when no backend has a weight.
    ///
    /// A 65537-slot table takes around a million steps (milliseconds); inside a plugin, whose calls have a
    /// CPU deadline, build it a slice at a time with [`Builder`] instead.
    pub fn new(backends: &[(u64, u32)], size: usize) -> Option<Table> {
        Builder::new(backends, size)?.fill(u64::MAX)
    }

    /// The position (in the `backends` given to [`Table::new`]) of the backend for `hash`.
    pub fn lookup(&self, hash: u64) -> usize {
        self.slots[(hash % self.slots.len() as u64) as usize] as usize
    }

    /// The number of slots.
    pub fn size(&self) -> usize {
        self.slots.len()
    }
}

/// A [`Table`] under construction, filled a bounded number of steps at a time.
#[derive(Clone, Debug)]
pub struct Builder {
    weights: Vec<u32>,
    max_weight: u32,
    m: u64,
    /// Per backend: the next slot of its permutation, its skip, and its credit.
    walk: Vec<(u64, u64, u64)>,
    slots: Vec<u32>,
    filled: usize,
    /// Where the round of turns stopped.
    turn: usize,
}

impl Builder {
    /// Starts a table for `backends` (see [`Table::new`]); `None` when no backend has a weight.
    pub fn new(backends: &[(u64, u32)], size: usize) -> Option<Builder> {
        let size = next_prime(size.max(2));
        let max_weight = backends.iter().map(|b| b.1).max().filter(|&w| w > 0)?;
        let m = size as u64;
        let walk = backends
            .iter()
            .map(|&(key, _)| {
                let offset = mix(key ^ 0x6d61_676c_6576_6f66) % m;
                let skip = mix(key ^ 0x736b_6970_736b_6970) % (m - 1) + 1;
                (offset, skip, 0)
            })
            .collect();
        Some(Builder {
            weights: backends.iter().map(|b| b.1).collect(),
            max_weight,
            m,
            walk,
            slots: vec![u32::MAX; size],
            filled: 0,
            turn: 0,
        })
    }

    /// Goes on for about `steps` probes; the finished table once every slot is claimed.
    pub fn fill(&mut self, mut steps: u64) -> Option<Table> {
        let size = self.slots.len();
        let max_weight = u64::from(self.max_weight);
        while self.filled < size {
            let i = self.turn;
            let (next, skip, credit) = &mut self.walk[i];
            if *credit < max_weight {
                *credit += u64::from(self.weights[i]);
            }
            if *credit >= max_weight {
                // Walk the permutation (offset + j * skip) mod m without a division per step.
                while self.slots[*next as usize] != u32::MAX {
                    *next += *skip;
                    if *next >= self.m {
                        *next -= self.m;
                    }
                    steps = steps.saturating_sub(1);
                }
                self.slots[*next as usize] = i as u32;
                self.filled += 1;
                *credit -= max_weight;
                if *credit >= max_weight {
                    // More turns owed this round: stay on this backend.
                    steps = steps.saturating_sub(1);
                    if steps == 0 {
                        return None;
                    }
                    continue;
                }
            }
            self.turn = (i + 1) % self.walk.len();
            steps = steps.saturating_sub(1);
            if steps == 0 && self.filled < size {
                return None;
            }
        }
        Some(Table {
            slots: std::mem::take(&mut self.slots),
        })
    }
}

/// A well-mixed 64-bit hash of a client address, for [`Table::lookup`]. Takes the `addr` fields of
/// [`crate::Connection`] as they are (or a `std::net::IpAddr`). An IPv4 address hashes as it did in the
/// 0.1.0 SDK, so upgrading a plugin moves no client.
pub fn hash_ip(addr: impl Into<IpAddr>) -> u64 {
    match addr.into() {
        IpAddr::V4(a) => mix(u64::from(a.to_bits()) ^ 0x7669_7064_6970_7634),
        IpAddr::V6(a) => {
            let bits = a.to_bits();
            mix(mix((bits >> 64) as u64 ^ 0x7669_7064_6970_7636) ^ bits as u64)
        }
    }
}

/// A stable key for a backend from its address and port, for [`Table::new`]. An IPv4 backend's key is the
/// one of the 0.1.0 SDK.
pub fn backend_key(addr: impl Into<IpAddr>, port: u16) -> u64 {
    match addr.into() {
        IpAddr::V4(a) => mix((u64::from(a.to_bits()) << 16) | u64::from(port)),
        IpAddr::V6(a) => {
            let bits = a.to_bits();
            mix(mix((bits >> 64) as u64 ^ u64::from(port)) ^ bits as u64)
        }
    }
}

/// The splitmix64 finalizer: every input bit affects every output bit.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn next_prime(mut n: usize) -> usize {
    while !is_prime(n) {
        n += 1;
    }
    n
}

fn is_prime(n: usize) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn backends(n: u32) -> Vec<(u64, u32)> {
        (0..n)
            .map(|i| (backend_key(Ipv4Addr::from(0x0a00_0001 + i), 80), 1))
            .collect()
    }

    /// Equal weights give each backend about 1/N of the slots.
    #[test]
    fn slots_are_balanced() {
        let t = Table::new(&backends(8), DEFAULT_SIZE).unwrap();
        let mut count = [0usize; 8];
        for s in &t.slots {
            count[*s as usize] += 1;
        }
        let ideal = DEFAULT_SIZE / 8;
        for c in count {
            assert!(c.abs_diff(ideal) < ideal / 50, "{count:?}");
        }
    }

    /// Weights 3:1 give slot shares 3:1.
    #[test]
    fn weights_shape_shares() {
        let b = [
            (backend_key(Ipv4Addr::from(1), 80), 3),
            (backend_key(Ipv4Addr::from(2), 80), 1),
        ];
        let t = Table::new(&b, DEFAULT_SIZE).unwrap();
        let heavy = t.slots.iter().filter(|&&s| s == 0).count() as f64;
        let share = heavy / DEFAULT_SIZE as f64;
        assert!((share - 0.75).abs() < 0.01, "{share}");
    }

    /// Removing one of N backends moves about 1/N of the clients, and only those of the removed one move
    /// much: Maglev's minimal disruption.
    #[test]
    fn removing_one_remaps_about_one_nth() {
        let n = 10;
        let all = backends(n);
        let fewer: Vec<_> = all.iter().copied().filter(|b| b.0 != all[3].0).collect();
        let t1 = Table::new(&all, DEFAULT_SIZE).unwrap();
        let t2 = Table::new(&fewer, DEFAULT_SIZE).unwrap();
        let clients = 100_000u32;
        let moved = (0..clients)
            .filter(|&c| {
                let h = hash_ip(Ipv4Addr::from(0xc633_0000 + c));
                all[t1.lookup(h)].0 != fewer[t2.lookup(h)].0
            })
            .count();
        let frac = moved as f64 / f64::from(clients);
        // 1/N must move; Maglev moves a little more than that, never much more.
        assert!((0.09..0.13).contains(&frac), "moved {frac}");
    }

    /// IPv4 keeps the 0.1.0 SDK's hashes (upgrading moves no client); IPv6 addresses that differ in either
    /// half hash apart.
    #[test]
    fn hashes_of_both_families() {
        assert_eq!(
            hash_ip(Ipv4Addr::new(198, 51, 100, 7)),
            mix(0xc633_6407 ^ 0x7669_7064_6970_7634)
        );
        assert_eq!(
            backend_key(Ipv4Addr::new(10, 0, 0, 1), 80),
            mix(0x0a00_0001 << 16 | 80)
        );
        let v6 = |high: u16, low: u16| Ipv6Addr::new(0x2001, 0xdb8, high, 0, 0, 0, 0, low);
        let hashes = [
            hash_ip(v6(0, 1)),
            hash_ip(v6(1, 1)),
            hash_ip(v6(0, 2)),
            hash_ip(Ipv4Addr::new(0, 0, 0, 1)),
        ];
        for (i, a) in hashes.iter().enumerate() {
            assert!(hashes[i + 1..].iter().all(|b| a != b), "{hashes:x?}");
        }
        assert_ne!(backend_key(v6(0, 1), 80), backend_key(v6(0, 1), 81));
        assert_ne!(backend_key(v6(0, 1), 80), backend_key(v6(1, 1), 80));
    }

    /// No weight, no table; sizes round up to a prime.
    #[test]
    fn empty_and_prime() {
        assert!(Table::new(&[(1, 0)], 7).is_none());
        assert_eq!(Table::new(&[(1, 1)], 100).unwrap().size(), 101);
    }
}

#[cfg(test)]
mod timing {
    /// How long a full build takes (run with --release --ignored --nocapture).
    #[test]
    #[ignore]
    fn build_time() {
        for n in [2u32, 16, 64] {
            let b: Vec<_> = (0..n)
                .map(|i| {
                    (
                        super::backend_key(std::net::Ipv4Addr::from(i), 80),
                        1 + i % 3,
                    )
                })
                .collect();
            let t = std::time::Instant::now();
            let _ = super::Table::new(&b, super::DEFAULT_SIZE);
            println!("n={n} {:?}", t.elapsed());
        }
    }
}

#[cfg(test)]
mod builder_tests {
    use std::net::Ipv4Addr;

    use super::*;

    /// Building in slices gives exactly the table built at once.
    #[test]
    fn sliced_build_is_identical() {
        let b: Vec<_> = (0..7u32)
            .map(|i| (backend_key(Ipv4Addr::from(i), 80), 1 + i % 3))
            .collect();
        let whole = Table::new(&b, 1009).unwrap();
        let mut builder = Builder::new(&b, 1009).unwrap();
        let mut slices = 0;
        let sliced = loop {
            slices += 1;
            if let Some(t) = builder.fill(100) {
                break t;
            }
        };
        assert!(slices > 5);
        assert_eq!(whole, sliced);
    }
}
