//! `two-choices`: the "power of two random choices". For each new connection pick two eligible servers at
//! random and give the connection to the one with fewer open connections per unit of weight. Nearly as
//! even as least-connections, without every director herding onto the same "least" server.
//!
//! Arguments: `log_every` (default 0 = never): log a line every N connections.

use vipd_plugin_sdk::host::{self, Level};
use vipd_plugin_sdk::{
    Args, Candidate, Connection, InitError, SelectError, Selector, export_selector,
};

/// The policy's state, kept between calls.
pub struct TwoChoices {
    log_every: u64,
    calls: u64,
}

/// The decision, pure: `a` and `b` are random numbers. Tested natively below.
pub fn pick(candidates: &[Candidate], a: u64, b: u64) -> Option<usize> {
    let eligible: Vec<usize> = (0..candidates.len())
        .filter(|&i| candidates[i].eligible())
        .collect();
    if eligible.is_empty() {
        return None;
    }
    let n = eligible.len() as u64;
    let (x, y) = (eligible[(a % n) as usize], eligible[(b % n) as usize]);
    // Fewer active per weight wins: compare active_x / w_x with active_y / w_y without dividing.
    let load =
        |i: usize, j: usize| u64::from(candidates[i].active) * u64::from(candidates[j].weight);
    Some(if load(x, y) <= load(y, x) { x } else { y })
}

impl Selector for TwoChoices {
    fn init(args: &Args) -> Result<Self, InitError> {
        args.only(&["log_every"])?;
        Ok(TwoChoices {
            log_every: args.parse_or("log_every", 0)?,
            calls: 0,
        })
    }

    fn select(&mut self, conn: &Connection, candidates: &[Candidate]) -> Result<u32, SelectError> {
        self.calls += 1;
        let i = pick(candidates, host::random_u64(), host::random_u64())
            .ok_or(SelectError::NoServer)?;
        host::counter_add("picks", 1);
        if self.log_every > 0 && self.calls % self.log_every == 0 {
            host::log(
                Level::Info,
                &format!("{} -> {}", conn.client(), candidates[i].target()),
            );
        }
        Ok(candidates[i].index)
    }

    /// A server this policy chose left the connection's SYN unanswered (or refused it): count it. The host
    /// also calls `connection_closed` when a connection it placed ends; both have no-op defaults.
    fn connection_ditched(&mut self, _conn: &Connection, _real_id: u32) {
        host::counter_add("ditched", 1);
    }
}

export_selector!(TwoChoices);

#[cfg(test)]
mod tests {
    use vipd_plugin_sdk::ServerState;
    use vipd_plugin_sdk::testing::candidate;

    use super::*;

    /// Of the two drawn, the less loaded per weight wins; failed servers are never drawn.
    #[test]
    fn less_loaded_of_two() {
        let mut c = [
            candidate(0, 1, ServerState::Up),
            candidate(1, 2, ServerState::Up),
            candidate(2, 1, ServerState::Failed),
        ];
        c[0].active = 5;
        c[1].active = 6; // 3 per weight: less loaded than 5
        assert_eq!(pick(&c, 0, 1), Some(1));
        assert_eq!(pick(&c, 0, 0), Some(0));
        c[0].state = ServerState::Draining;
        c[1].state = ServerState::Failed;
        assert_eq!(pick(&c, 0, 1), None);
    }
}
