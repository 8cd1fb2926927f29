//! `fastest`: the patent's "predicted fastest server": the eligible server with the lowest smoothed SYN to
//! SYN-ACK time. Servers not yet measured (`syn-rtt-us` 0) are tried first, and now and then a random
//! eligible server is re-probed so a server that got faster is noticed.
//!
//! Arguments: `explore_every` (default 20: one new connection in 20 goes to a random server; 0 never).

use vipd_plugin_sdk::{
    Args, Candidate, Connection, InitError, SelectError, Selector, export_selector, host,
};

/// The policy.
pub struct Fastest {
    explore_every: u64,
}

/// The position to pick; `roll` is a random number deciding exploration.
pub fn pick(candidates: &[Candidate], roll: u64, explore_every: u64) -> Option<usize> {
    let eligible = || candidates.iter().enumerate().filter(|(_, c)| c.eligible());
    // Never measured: the one given the fewest connections, so each gets a measurement soon.
    if let Some((i, _)) = eligible()
        .filter(|(_, c)| c.syn_rtt_us == 0)
        .min_by_key(|(_, c)| c.total)
    {
        return Some(i);
    }
    let n = eligible().count() as u64;
    if n == 0 {
        return None;
    }
    if explore_every > 0 && roll.is_multiple_of(explore_every) {
        return eligible()
            .nth(((roll / explore_every) % n) as usize)
            .map(|(i, _)| i);
    }
    eligible()
        .min_by_key(|(_, c)| (c.syn_rtt_us, c.active))
        .map(|(i, _)| i)
}

impl Selector for Fastest {
    fn init(args: &Args) -> Result<Self, InitError> {
        args.only(&["explore_every"])?;
        Ok(Fastest {
            explore_every: args.parse_or("explore_every", 20)?,
        })
    }

    fn select(&mut self, _conn: &Connection, candidates: &[Candidate]) -> Result<u32, SelectError> {
        let roll = if self.explore_every > 0 {
            host::random_u64()
        } else {
            1
        };
        pick(candidates, roll, self.explore_every)
            .map(|i| candidates[i].index)
            .ok_or(SelectError::NoServer)
    }
}

export_selector!(Fastest);

#[cfg(test)]
mod tests {
    use vipd_plugin_sdk::ServerState;
    use vipd_plugin_sdk::testing::candidate;

    use super::*;

    fn measured(rtts: &[u32]) -> Vec<Candidate> {
        rtts.iter()
            .enumerate()
            .map(|(i, &r)| {
                let mut c = candidate(i as u32, 1, ServerState::Up);
                c.syn_rtt_us = r;
                c.total = 10;
                c
            })
            .collect()
    }

    /// The lowest SYN RTT wins unless the roll says explore.
    #[test]
    fn lowest_rtt_wins() {
        let c = measured(&[900, 300, 5000]);
        assert_eq!(pick(&c, 1, 20), Some(1));
        assert_eq!(pick(&c, 1, 0), Some(1));
        // A roll divisible by 20 explores: (40 / 20) % 3 = 2.
        assert_eq!(pick(&c, 40, 20), Some(2));
    }

    /// Unmeasured servers go first; a failed fast one is skipped.
    #[test]
    fn explore_unmeasured_then_skip_failed() {
        let mut c = measured(&[300, 0, 900]);
        assert_eq!(pick(&c, 1, 20), Some(1));
        c[1].syn_rtt_us = 2000;
        c[0].state = ServerState::Failed;
        assert_eq!(pick(&c, 1, 20), Some(2));
        c[1].state = ServerState::Failed;
        c[2].state = ServerState::Draining;
        assert_eq!(pick(&c, 1, 20), None);
    }
}
