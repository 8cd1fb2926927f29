//! `least-connections`: the eligible server with the fewest open connections per unit of weight
//! (`active / weight`). Ties go to the one given the fewest connections per weight so far (`total / weight`),
//! so equal load still splits by weight. No arguments.

use vipd_plugin_sdk::{
    Args, Candidate, Connection, InitError, SelectError, Selector, export_selector,
};

/// The policy; stateless, the host's live counts are the state.
pub struct LeastConnections;

/// The position of the least loaded eligible candidate.
pub fn pick(candidates: &[Candidate]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, c) in candidates.iter().enumerate() {
        if !c.eligible() {
            continue;
        }
        let better = best.is_none_or(|b| {
            let b = &candidates[b];
            // active_c / w_c < active_b / w_b, in integers; then total likewise.
            let (lc, lb) = (
                u128::from(c.active) * u128::from(b.weight),
                u128::from(b.active) * u128::from(c.weight),
            );
            lc < lb
                || (lc == lb
                    && u128::from(c.total) * u128::from(b.weight)
                        < u128::from(b.total) * u128::from(c.weight))
        });
        if better {
            best = Some(i);
        }
    }
    best
}

impl Selector for LeastConnections {
    fn init(args: &Args) -> Result<Self, InitError> {
        args.only(&[])?;
        Ok(LeastConnections)
    }

    fn select(&mut self, _conn: &Connection, candidates: &[Candidate]) -> Result<u32, SelectError> {
        pick(candidates)
            .map(|i| candidates[i].index)
            .ok_or(SelectError::NoServer)
    }
}

export_selector!(LeastConnections);

#[cfg(test)]
mod tests {
    use vipd_plugin_sdk::ServerState;
    use vipd_plugin_sdk::testing::candidate;

    use super::*;

    /// The server holding long connections is avoided; weight scales what "few" means.
    #[test]
    fn fewest_per_weight() {
        let mut c = [
            candidate(0, 1, ServerState::Up),
            candidate(1, 1, ServerState::Up),
            candidate(2, 4, ServerState::Up),
        ];
        c[0].active = 10;
        c[1].active = 3;
        c[2].active = 8; // 8/4 = 2 per weight: least loaded
        assert_eq!(pick(&c), Some(2));
        c[2].state = ServerState::Draining;
        assert_eq!(pick(&c), Some(1));
    }

    /// With no connections held open, picks follow the weights 3:1 through the running totals.
    #[test]
    fn short_connections_split_by_weight() {
        let mut c = [
            candidate(0, 3, ServerState::Up),
            candidate(1, 1, ServerState::Up),
        ];
        let mut n = [0; 2];
        for _ in 0..400 {
            let i = pick(&c).unwrap();
            c[i].total += 1;
            n[i] += 1;
        }
        assert_eq!(n, [300, 100]);
    }
}
