//! `maglev`: Maglev consistent hashing on the client address (either family), weighted. The same client goes to the same
//! server while the set of eligible servers stays the same; when one of N servers leaves, only about 1/N of
//! the clients move.
//!
//! Arguments: `table_size` (default 65537, rounded up to a prime; at least 100 x the number of servers);
//! `key`: what is hashed, `client` (default: the client address, so a client keeps its server) or
//! `connection` (the client address and port, as Katran does: each connection of a client may go to another
//! server, and every director still agrees on it).
//!
//! The first table is built whole in the host's first warm-up call, before the instance takes traffic, so every
//! director (every instance) answers a client the same from its first connection on. A later table (the
//! set of eligible servers changed) takes about a million steps, more than one call's CPU deadline, so it is
//! built a slice per call ([`BUILD_STEPS_PER_CALL`]) while the previous table keeps serving; a client whose
//! server of the old table is no longer eligible is rehashed over the eligible ones until the new table is
//! ready.

use vipd_plugin_sdk::maglev::{self, Builder, Table};
use vipd_plugin_sdk::{
    Args, Candidate, Connection, InitError, SelectError, Selector, export_selector,
};

/// Probes of table building done per `select` call: well under a millisecond.
pub const BUILD_STEPS_PER_CALL: u64 = 20_000;

/// The policy state.
pub struct Maglev {
    size: usize,
    /// Hash the client port too (`key = "connection"`).
    by_connection: bool,
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
            by_connection: false,
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
        args.only(&["table_size", "key"])?;
        let size: usize = args.parse_or("table_size", maglev::DEFAULT_SIZE)?;
        if !(7..=(1 << 24)).contains(&size) {
            return Err(InitError::InvalidArgument(format!(
                "table_size = {size}: must be between 7 and 16777216"
            )));
        }
        let by_connection = match args.get("key").unwrap_or("client") {
            "client" => false,
            "connection" => true,
            other => {
                return Err(InitError::InvalidArgument(format!(
                    "key = {other:?}: must be \"client\" or \"connection\""
                )));
            }
        };
        Ok(Maglev {
            by_connection,
            ..Maglev::new(size)
        })
    }

    fn select(&mut self, conn: &Connection, candidates: &[Candidate]) -> Result<u32, SelectError> {
        // The first warm-up call has the init deadline: the whole first table fits in it. Later ones
        // (keeping the plugin warm) have a call's deadline, like a client's.
        let steps = if conn.is_warm_up() && self.table.is_none() {
            u64::MAX
        } else {
            BUILD_STEPS_PER_CALL
        };
        let mut hash = maglev::hash_ip(conn.client_addr);
        if self.by_connection {
            hash = maglev::mix(hash ^ u64::from(conn.client_port));
        }
        self.pick(hash, candidates, steps)
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

    /// The host's warm-up call builds the whole table, so two instances warmed up alike answer every client
    /// the same from the first call on; a client's call builds only a slice.
    #[test]
    fn warm_up_builds_the_whole_table() {
        let c = servers(3);
        let mut warm_up = vipd_plugin_sdk::testing::connection(Ipv4Addr::UNSPECIFIED);
        warm_up.client_port = 0;
        assert!(warm_up.is_warm_up());
        let (mut a, mut b) = (
            Maglev::new(maglev::DEFAULT_SIZE),
            Maglev::new(maglev::DEFAULT_SIZE),
        );
        a.select(&warm_up, &c).unwrap();
        assert!(a.table.is_some() && a.building.is_none());
        b.select(&warm_up, &c).unwrap();
        for i in 0..1000u32 {
            let conn = vipd_plugin_sdk::testing::connection(Ipv4Addr::from(0xc633_0000 + i));
            assert!(!conn.is_warm_up());
            assert_eq!(a.select(&conn, &c), b.select(&conn, &c));
        }
        let mut cold = Maglev::new(maglev::DEFAULT_SIZE);
        cold.select(
            &vipd_plugin_sdk::testing::connection(Ipv4Addr::LOCALHOST),
            &c,
        )
        .unwrap();
        assert!(
            cold.building.is_some(),
            "a client's call builds a slice only"
        );
    }

    /// `key = "connection"` spreads one client's connections over the servers; `client` keeps them on one.
    #[test]
    fn key_connection_spreads_one_client() {
        let c = servers(2);
        let mut warm_up = vipd_plugin_sdk::testing::connection(Ipv4Addr::UNSPECIFIED);
        warm_up.client_port = 0;
        let picks = |key: &str| {
            let mut m = Maglev::init(&Args::new(vec![("key".into(), key.into())])).unwrap();
            m.select(&warm_up, &c).unwrap();
            let mut seen = [0; 2];
            for port in 1000..1200 {
                let mut conn = vipd_plugin_sdk::testing::connection(Ipv4Addr::new(198, 51, 100, 2));
                conn.client_port = port;
                seen[m.select(&conn, &c).unwrap() as usize] += 1;
            }
            seen
        };
        assert!(picks("client").contains(&0), "one client, one server");
        assert!(
            picks("connection").iter().all(|&n| n > 60),
            "{:?}",
            picks("connection")
        );
        assert!(Maglev::init(&Args::new(vec![("key".into(), "port".into())])).is_err());
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
