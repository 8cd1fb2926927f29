//! `round-robin`: smooth weighted round-robin. Over any window of `sum(weight)` new connections every
//! eligible server gets exactly its weight, interleaved. No arguments.

use vipd_plugin_sdk::rr::SmoothWeighted;
use vipd_plugin_sdk::{
    Args, Candidate, Connection, InitError, SelectError, Selector, export_selector,
};

/// The policy: one rotation per virtual port.
pub struct RoundRobin(SmoothWeighted);

impl Selector for RoundRobin {
    fn init(args: &Args) -> Result<Self, InitError> {
        args.only(&[])?;
        Ok(RoundRobin(SmoothWeighted::new()))
    }

    fn select(&mut self, conn: &Connection, candidates: &[Candidate]) -> Result<u32, SelectError> {
        // Nothing to build; the rotation starts with the first client.
        if conn.is_warm_up() {
            return Err(SelectError::Defer);
        }
        self.0
            .next(candidates)
            .map(|i| candidates[i].index)
            .ok_or(SelectError::NoServer)
    }
}

export_selector!(RoundRobin);

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use vipd_plugin_sdk::ServerState;
    use vipd_plugin_sdk::testing::{candidate, connection};

    use super::*;

    /// Weights 3:1 give 3:1, interleaved; a failed server gets nothing; none eligible is no-server.
    #[test]
    fn weighted() {
        let c = [
            candidate(0, 3, ServerState::Up),
            candidate(1, 1, ServerState::Up),
            candidate(2, 1, ServerState::Failed),
        ];
        let mut p = RoundRobin::init(&Args::default()).unwrap();
        let picks: Vec<_> = (0..8)
            .map(|_| {
                p.select(&connection(Ipv4Addr::new(198, 51, 100, 1)), &c)
                    .unwrap()
            })
            .collect();
        assert_eq!(picks, [0, 0, 1, 0, 0, 0, 1, 0]);
        assert_eq!(
            p.select(&connection(Ipv4Addr::new(198, 51, 100, 1)), &c[2..]),
            Err(SelectError::NoServer)
        );
    }

    /// Unknown arguments are refused by name.
    #[test]
    fn no_args() {
        let a = Args::new(vec![("x".into(), "1".into())]);
        assert!(matches!(RoundRobin::init(&a), Err(InitError::UnknownArgument(k)) if k == "x"));
    }
}
