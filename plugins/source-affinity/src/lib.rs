//! `source-affinity`: a client address (either family) keeps going to the server it first got, as long as it
//! comes back within `timeout` and that server stays eligible; new clients are spread by smooth weighted
//! round-robin.
//!
//! Arguments: `timeout_secs` (default 300), `max_clients` (default 100000: beyond it, expired clients are
//! swept and, if still full, the map restarts).

use std::collections::HashMap;

use vipd_plugin_sdk::rr::SmoothWeighted;
use vipd_plugin_sdk::{
    Args, Candidate, Connection, InitError, IpAddress, SelectError, Selector, export_selector, host,
};

/// The policy state: client address (either family) to (real id, last seen in µs).
pub struct SourceAffinity {
    timeout_us: u64,
    max_clients: usize,
    clients: HashMap<IpAddress, (u32, u64)>,
    rr: SmoothWeighted,
}

impl SourceAffinity {
    /// A policy remembering clients for `timeout_us`.
    pub fn new(timeout_us: u64, max_clients: usize) -> SourceAffinity {
        SourceAffinity {
            timeout_us,
            max_clients,
            clients: HashMap::new(),
            rr: SmoothWeighted::new(),
        }
    }

    /// The position for `client` at `now_us`.
    pub fn pick(
        &mut self,
        client: IpAddress,
        candidates: &[Candidate],
        now_us: u64,
    ) -> Option<usize> {
        if let Some(&(real, seen)) = self.clients.get(&client)
            && now_us.saturating_sub(seen) <= self.timeout_us
            && let Some(i) = candidates
                .iter()
                .position(|c| c.real_id == real && c.eligible())
        {
            self.clients.insert(client, (real, now_us));
            return Some(i);
        }
        let i = self.rr.next(candidates)?;
        if self.clients.len() >= self.max_clients {
            let timeout = self.timeout_us;
            self.clients
                .retain(|_, (_, seen)| now_us.saturating_sub(*seen) <= timeout);
            if self.clients.len() >= self.max_clients {
                self.clients.clear();
            }
        }
        self.clients.insert(client, (candidates[i].real_id, now_us));
        Some(i)
    }
}

impl Selector for SourceAffinity {
    fn init(args: &Args) -> Result<Self, InitError> {
        args.only(&["timeout_secs", "max_clients"])?;
        let secs: u64 = args.parse_or("timeout_secs", 300)?;
        Ok(SourceAffinity::new(
            secs.saturating_mul(1_000_000),
            args.parse_or("max_clients", 100_000)?,
        ))
    }

    fn select(&mut self, conn: &Connection, candidates: &[Candidate]) -> Result<u32, SelectError> {
        self.pick(conn.client_addr, candidates, host::now_us())
            .map(|i| candidates[i].index)
            .ok_or(SelectError::NoServer)
    }
}

export_selector!(SourceAffinity);

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use vipd_plugin_sdk::ServerState;
    use vipd_plugin_sdk::testing::candidate;

    use super::*;

    const S: u64 = 1_000_000;

    /// Client `n`: an IPv4 address for even `n`, an IPv6 one for odd `n`.
    fn client(n: u16) -> IpAddress {
        if n.is_multiple_of(2) {
            IpAddress::Ipv4(0xc633_0000 + u32::from(n))
        } else {
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n).into()
        }
    }

    /// A client sticks to its server within the timeout, and is placed anew after it.
    #[test]
    fn sticky_until_timeout() {
        let c = [
            candidate(0, 1, ServerState::Up),
            candidate(1, 1, ServerState::Up),
        ];
        let mut p = SourceAffinity::new(10 * S, 100);
        let first = p.pick(client(7), &c, 0).unwrap();
        for t in 1..=5 {
            assert_eq!(p.pick(client(7), &c, t * S), Some(first));
        }
        // Another client takes the other server; after the timeout client 7 is placed anew by the rotation.
        assert_ne!(p.pick(client(8), &c, 5 * S), Some(first));
        p.pick(client(7), &c, 30 * S).unwrap();
        assert_eq!(p.clients[&client(7)].1, 30 * S);
    }

    /// A client whose server failed moves, and then sticks to the new one.
    #[test]
    fn moves_off_failed_server() {
        let mut c = [
            candidate(0, 1, ServerState::Up),
            candidate(1, 1, ServerState::Up),
        ];
        let mut p = SourceAffinity::new(10 * S, 100);
        let first = p.pick(client(7), &c, 0).unwrap();
        c[first].state = ServerState::Failed;
        let second = p.pick(client(7), &c, S).unwrap();
        assert_ne!(first, second);
        c[first].state = ServerState::Up;
        assert_eq!(p.pick(client(7), &c, 2 * S), Some(second));
    }

    /// The map stays bounded.
    #[test]
    fn bounded() {
        let c = [candidate(0, 1, ServerState::Up)];
        let mut p = SourceAffinity::new(10 * S, 50);
        for n in 0..1000 {
            p.pick(client(n), &c, 0);
        }
        assert!(p.clients.len() <= 50);
    }
}
