//! A selector built against `vipd:policy@0.1.0` (`wit/0.1.0/`) with wit-bindgen directly, as plugins were
//! written before the 0.2.0 SDK: the host's tests load it to prove that 0.1.0 components still serve IPv4
//! virtual machines and are refused for IPv6 ones. Frozen with its interface; never ship it.
//!
//! It answers the candidate at `client address % candidates` (so a test sees the address cross), refuses any
//! argument, and counts any `connection-closed` or `connection-ditched` it is given (`closed`, `ditched`):
//! vipd never calls them on 0.1.0, which the tests check.

wit_bindgen::generate!({
    path: "../../../wit/0.1.0",
    world: "selector",
});

use exports::vipd::policy::selection::{Guest, SelectError};
use vipd::policy::host;
use vipd::policy::types::{Candidate, Connection, InitError, ServerState};

// Only its `Guest` impl is used, by the export below (on wasm only: native builds export nothing).
#[allow(dead_code)]
struct Fixture;

impl Guest for Fixture {
    fn init(args: Vec<(String, String)>) -> Result<(), InitError> {
        match args.into_iter().next() {
            Some((key, _)) => Err(InitError::UnknownArgument(key)),
            None => Ok(()),
        }
    }

    fn select(conn: Connection, candidates: Vec<Candidate>) -> Result<u32, SelectError> {
        match candidates.len() as u32 {
            0 => Err(SelectError::NoServer),
            n => Ok(conn.client_addr % n),
        }
    }

    fn connection_closed(_conn: Connection, _real_id: u32) {
        host::counter_add("closed", 1);
    }

    fn connection_ditched(_conn: Connection, _real_id: u32) {
        host::counter_add("ditched", 1);
    }

    fn server_state_changed(_real_id: u32, _state: ServerState) {}
}

#[cfg(target_family = "wasm")]
export!(Fixture);
