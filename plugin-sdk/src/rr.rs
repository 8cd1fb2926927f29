//! Smooth weighted round-robin, the building block of several policies.

use crate::Candidate;

/// Smooth weighted round-robin (the nginx algorithm): over any `sum(weight)` picks every eligible candidate
/// gets exactly its weight, interleaved rather than in bursts. State is per candidate position and restarts
/// when the number of candidates changes.
#[derive(Clone, Debug, Default)]
pub struct SmoothWeighted {
    current: Vec<i64>,
}

impl SmoothWeighted {
    /// A fresh rotation.
    pub fn new() -> SmoothWeighted {
        SmoothWeighted::default()
    }

    /// The index (position in `candidates`) of the next eligible candidate, or `None` when none is eligible.
    pub fn next(&mut self, candidates: &[Candidate]) -> Option<usize> {
        if self.current.len() != candidates.len() {
            self.current.clear();
            self.current.resize(candidates.len(), 0);
        }
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, c) in candidates.iter().enumerate() {
            if !c.eligible() {
                continue;
            }
            let w = i64::from(c.weight);
            self.current[i] += w;
            total += w;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        self.current[b] -= total;
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ServerState;
    use crate::testing::candidate;

    /// 3:1 weights give exactly 3:1 in every window of four, interleaved; ineligible ones get nothing.
    #[test]
    fn weighted_and_smooth() {
        let c = [
            candidate(0, 3, ServerState::Up),
            candidate(1, 1, ServerState::Up),
            candidate(2, 5, ServerState::Failed),
        ];
        let mut rr = SmoothWeighted::new();
        let picks: Vec<_> = (0..8).map(|_| rr.next(&c).unwrap()).collect();
        assert_eq!(picks, [0, 0, 1, 0, 0, 0, 1, 0]);
        assert_eq!(rr.next(&c[2..]), None);
    }
}
