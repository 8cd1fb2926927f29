//! `maglev`: Maglev consistent hashing on the client address (either family), weighted. The same client goes to the same
//! server while the set of eligible servers stays the same; when one of N servers leaves, only about 1/N of
//! the clients move.
//!
//! Arguments: `table_size` (default 65537, rounded up to a prime; at least 100 x the number of servers).
//!
//! A new table takes about a million steps to build, more than one call's CPU deadline, so it is built a
//! slice per call ([`BUILD_STEPS_PER_CALL`]) while the previous table keeps serving; a client whose server of
//! the old table is no longer eligible is rehashed over the eligible ones until the new table is ready.

use vipd_plugin_sdk::maglev::{self, Builder, Table};
use vipd_plugin_sdk::{
    Args, Candidate, Connection, InitError, SelectError, Selector, export_selector,
};

/// Probes of table building done per `select` call: well under a millisecond.
pub const BUILD_STEPS_PER_CALL: u64 = 20_000;

/// The policy state.
pub struct Maglev {
    size: usize,
    /// The table serving now and the backend keys of its positions.
    table: Option<(Table, Vec<u64>)>,
    /// The table being built and the (key, weight) set it is for.
    building: Option<(Builder, Vec<(u64, u32)>)>,
    /// The eligible (key, weight) set of the last call, reused to avoid allocating per call.
    scratch: Vec<(u64, u32)>,
    /// The set the serving table was built for.
    built_for: Vec<(u64, u32)>,
}

impl Maglev {
    /// A policy with tables of `size` slots.
    pub fn new(size: usize) -> Maglev {
        Maglev {
            size,
            table: None,
            building: None,
            scratch: Vec::new(),
            built_for: Vec::new(),
        }
    }

    /// The position in `candidates` for a client hash, doing up to `steps` of table building.
    pub fn pick(&mut self, hash: u64, candidates: &[Candidate], steps: u64) -> Option<usize> {
        self.scratch.clear();
        self.scratch.extend(
            candidates
                .iter()
                .filter(|c| c.eligible())
                .map(|c| (maglev::backend_key(c.addr, c.port), c.weight)),
        );
        if self.scratch.is_empty() {
            return None;
        }
        if self.scratch != self.built_for {
            let stale = self.building.as_ref().is_none_or(|b| b.1 != self.scratch);
            if stale {
                self.building =
                    Builder::new(&self.scratch, self.size).map(|b| (b, self.scratch.clone()));
            }
            if let Some((builder, set)) = self.building.as_mut()
                && let Some(table) = builder.fill(steps)
            {
                let keys = set.iter().map(|b| b.0).collect();
                self.built_for = std::mem::take(set);
                self.table = Some((table, keys));
                self.building = None;
            }
        }
        let key_of = |c: &Candidate| maglev::backend_key(c.addr, c.port);
        if let Some((table, keys)) = &self.table {
            // Current table: its backend is eligible. Old table: rehash a few times past departed backends.
            let mut h = hash;
            for _ in 0..8 {
                let key = keys[table.lookup(h)];
                if let Some(i) = candidates
                    .iter()
                    .position(|c| c.eligible() && key_of(c) == key)
                {
                    return Some(i);
                }
                h = maglev::mix(h);
            }
        }
        // No usable table yet: a plain hash over the eligible ones.
        let n = self.scratch.len() as u64;
        let nth = (hash % n) as usize;
        candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.eligible())
            .nth(nth)
            .map(|(i, _)| i)
    }
}

impl Selector for Maglev {
    fn init(args: &Args) -> Result<Self, InitError> {
        args.only(&["table_size"])?;
        let size: usize = args.parse_or("table_size", maglev::DEFAULT_SIZE)?;
        if !(7..=(1 << 24)).contains(&size) {
            return Err(InitError::InvalidArgument(format!(
                "table_size = {size}: must be between 7 and 16777216"
            )));
        }
        Ok(Maglev::new(size))
    }

    fn select(&mut self, conn: &Connection, candidates: &[Candidate]) -> Result<u32, SelectError> {
        self.pick(
            maglev::hash_ip(conn.client_addr),
            candidates,
            BUILD_STEPS_PER_CALL,
        )
        .map(|i| candidates[i].index)
        .ok_or(SelectError::NoServer)
    }
}

export_selector!(Maglev);

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use vipd_plugin_sdk::ServerState;
    use vipd_plugin_sdk::testing::candidate;

    use super::*;

    fn client(n: u32) -> u64 {
        maglev::hash_ip(Ipv4Addr::from(n))
    }

    fn servers(n: u32) -> Vec<Candidate> {
        (0..n).map(|i| candidate(i, 1, ServerState::Up)).collect()
    }

    fn warm(m: &mut Maglev, c: &[Candidate]) {
        for _ in 0..200 {
            m.pick(0, c, BUILD_STEPS_PER_CALL);
        }
        assert!(m.building.is_none() && m.table.is_some());
    }

    /// Failing one of N servers remaps about 1/N of the clients (those it had), not more.
    #[test]
    fn removing_one_of_n_remaps_about_one_nth() {
        let n = 8;
        let mut c = servers(n);
        let mut m = Maglev::new(maglev::DEFAULT_SIZE);
        warm(&mut m, &c);
        let clients: Vec<u64> = (0..20_000u32).map(|i| client(0xc633_0000 + i)).collect();
        let before: Vec<_> = clients.iter().map(|&h| m.pick(h, &c, 0).unwrap()).collect();
        c[5].state = ServerState::Failed;
        warm(&mut m, &c);
        let after: Vec<_> = clients.iter().map(|&h| m.pick(h, &c, 0).unwrap()).collect();
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        let frac = moved as f64 / clients.len() as f64;
        let ideal = 1.0 / f64::from(n);
        assert!((frac - ideal).abs() < 0.03, "moved {frac}, ideal {ideal}");
        assert!(after.iter().all(|&i| i != 5));
    }

    /// While a new table is being built the old one serves; clients of a failed server go elsewhere at once.
    #[test]
    fn old_table_serves_during_rebuild() {
        let mut c = servers(4);
        let mut m = Maglev::new(maglev::DEFAULT_SIZE);
        warm(&mut m, &c);
        let h = (0..)
            .map(client)
            .find(|&h| m.pick(h, &c, 0) == Some(2))
            .unwrap();
        let other = client(7777);
        let other_before = m.pick(other, &c, 0).unwrap();
        c[2].state = ServerState::Failed;
        let moved = m.pick(h, &c, 10).unwrap();
        assert_ne!(moved, 2);
        assert!(m.building.is_some());
        if other_before != 2 {
            assert_eq!(m.pick(other, &c, 10), Some(other_before));
        }
    }

    /// Weights 3:1 give about 3:1 of the clients.
    #[test]
    fn weighted_share() {
        let c = [
            candidate(0, 3, ServerState::Up),
            candidate(1, 1, ServerState::Up),
        ];
        let mut m = Maglev::new(maglev::DEFAULT_SIZE);
        warm(&mut m, &c);
        let heavy = (0..40_000u32)
            .filter(|&i| m.pick(client(i), &c, 0) == Some(0))
            .count();
        let share = heavy as f64 / 40_000.0;
        assert!((share - 0.75).abs() < 0.02, "{share}");
    }

    /// A bad table size is refused with the reason.
    #[test]
    fn bad_size_refused() {
        let a = Args::new(vec![("table_size".into(), "3".into())]);
        assert!(matches!(
            Maglev::init(&a),
            Err(InitError::InvalidArgument(_))
        ));
    }
}
