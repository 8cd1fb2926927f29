//! A selector that misbehaves on demand, for the host's sandbox and fallback tests. Never ship it.
//!
//! Argument `mode`: `trap` (panics, a Wasm trap), `spin` (loops forever), `hog` (allocates without bound),
//! `out-of-range` (answers an index past the list), `ineligible` (answers a failed server), `named`
//! (answers index 0 and counts `picked-NAME` with the server's configured name), `fail-init`
//! (refuses `init`), `first` (answers index 0: behaves), `trap-warm-up` (panics in the host's warm-up call,
//! behaves after). `after` (default 0): behave like `first` for that many calls before misbehaving. The
//! host's warm-up call is answered with index 0 and not counted, except by `trap-warm-up`; `slow_warm_up`
//! (milliseconds, default 0) makes it take that long first.

use vipd_plugin_sdk::{
    Args, Candidate, Connection, InitError, SelectError, Selector, export_selector, host,
};

/// The test plugin.
pub struct Misbehave {
    mode: String,
    after: u64,
    slow_warm_up_us: u64,
    calls: u64,
}

impl Selector for Misbehave {
    fn init(args: &Args) -> Result<Self, InitError> {
        let mode = args.get("mode").unwrap_or("first").to_string();
        if mode == "fail-init" {
            return Err(InitError::Other("asked to fail".into()));
        }
        Ok(Misbehave {
            mode,
            after: args.parse_or("after", 0)?,
            slow_warm_up_us: args
                .parse_or::<u64>("slow_warm_up", 0)?
                .saturating_mul(1000),
            calls: 0,
        })
    }

    fn select(&mut self, conn: &Connection, candidates: &[Candidate]) -> Result<u32, SelectError> {
        if conn.is_warm_up() {
            let until = host::now_us() + self.slow_warm_up_us;
            while host::now_us() < until {
                std::hint::spin_loop();
            }
            if self.mode == "trap-warm-up" {
                panic!("asked to trap in the warm-up");
            }
            return Ok(0);
        }
        if self.mode == "trap-warm-up" {
            return Ok(0);
        }
        self.calls += 1;
        if self.calls <= self.after {
            return Ok(0);
        }
        match self.mode.as_str() {
            "trap" => panic!("asked to trap"),
            "spin" => {
                let mut x = 0u64;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "hog" => {
                let mut keep: Vec<Vec<u8>> = Vec::new();
                loop {
                    keep.push(Vec::<u8>::with_capacity(1 << 20));
                    std::hint::black_box(&keep);
                }
            }
            "out-of-range" => Ok(candidates.len() as u32 + 10),
            // Picks the first candidate and counts the pick under its server's name.
            "named" => {
                let first = candidates.first().ok_or(SelectError::NoServer)?;
                let name = host::real_name(first.real_id).unwrap_or_else(|| "unknown".into());
                host::counter_add(&format!("picked-{name}"), 1);
                Ok(first.index)
            }
            "ineligible" => candidates
                .iter()
                .find(|c| !c.eligible())
                .map(|c| c.index)
                .ok_or(SelectError::NoServer),
            _ => Ok(0),
        }
    }
}

export_selector!(Misbehave);
